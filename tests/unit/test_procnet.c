// SPDX-License-Identifier: BSD-2-Clause
/* procnet: the /proc texts the TLS probes read, parsed from bytes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "procnet.h"

static const char tcp4[] =
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
    "timeout inode                                                     \n"
    "   0: 0100007F:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000   101        "
    "0 5140384 1 0000000036af8039 100 0 0 10 0                   \n"
    /* the same port, established: not a listener */
    "   1: 0100007F:1538 0100007F:A2B4 01 00000000:00000000 00:00000000 00000000   101        "
    "0 5140999 1 0000000036af8039 100 0 0 10 0                   \n"
    /* another port */
    "   2: 0100007F:5DF7 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        "
    "0 5140399 1 000000006507c54f 100 0 0 10 0                   \n"
    /* 0.0.0.0:5432, a second listener */
    "   3: 00000000:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000   101        "
    "0 5140400 1 000000006507c54f 100 0 0 10 0                   \n"
    "garbage line\n"
    /* a listener whose socket is gone (inode 0) */
    "   4: 00000000:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000   101        "
    "0 0 1 000000006507c54f 100 0 0 10 0";

static const char tcp6[] =
    "  sl  local_address                         remote_address                        st "
    "tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
    "   0: 00000000000000000000000001000000:1538 00000000000000000000000000000000:0000 0A "
    "00000000:00000000 00:00000000 00000000   101        0 7777 1 0000000000000000 100 0 0 10 "
    "0\n";

static void test_listen_inodes(void **state)
{
	uint64_t inodes[4];
	size_t n = 0;

	(void)state;
	assert_int_equal(procnet_listen_inodes(tcp4, strlen(tcp4), 5432, inodes, &n, 4), 2);
	assert_int_equal(n, 2);
	assert_int_equal(inodes[0], 5140384);
	assert_int_equal(inodes[1], 5140400);
	/* tcp6 appends; a repeated inode is kept once */
	assert_int_equal(procnet_listen_inodes(tcp6, strlen(tcp6), 5432, inodes, &n, 4), 1);
	assert_int_equal(procnet_listen_inodes(tcp6, strlen(tcp6), 5432, inodes, &n, 4), 1);
	assert_int_equal(n, 3);
	assert_int_equal(inodes[2], 7777);
	/* no room: found, not stored */
	n = 3;
	assert_int_equal(procnet_listen_inodes(tcp4, strlen(tcp4), 5432, inodes, &n, 3), 2);
	assert_int_equal(n, 3);
	n = 0;
	assert_int_equal(procnet_listen_inodes(tcp4, strlen(tcp4), 24055, inodes, &n, 4), 1);
	assert_int_equal(inodes[0], 5140399);
	n = 0;
	assert_int_equal(procnet_listen_inodes(tcp4, strlen(tcp4), 1, inodes, &n, 4), 0);
	assert_int_equal(n, 0);
	/* not such a table, and a truncated text */
	assert_int_equal(procnet_listen_inodes("hello\n", 6, 5432, inodes, &n, 4), -1);
	assert_int_equal(procnet_listen_inodes("", 0, 5432, inodes, &n, 4), -1);
	assert_int_equal(procnet_listen_inodes(tcp4, 200, 5432, inodes, &n, 4), 0);
}

static void test_socket_inode(void **state)
{
	(void)state;
	assert_int_equal(procnet_socket_inode("socket:[5140384]"), 5140384);
	assert_int_equal(procnet_socket_inode("socket:[]"), 0);
	assert_int_equal(procnet_socket_inode("socket:[12a]"), 0);
	assert_int_equal(procnet_socket_inode("socket:[123"), 0);
	assert_int_equal(procnet_socket_inode("pipe:[123]"), 0);
	assert_int_equal(procnet_socket_inode("/dev/null"), 0);
	assert_int_equal(procnet_socket_inode(""), 0);
}

static void test_stat_ppid(void **state)
{
	static const char plain[] = "21126 (postgres) S 21118 21118 15215 0 -1 4194304 124";
	static const char odd[] = "77 (a) b) (c ) R 1 77 77 0";

	(void)state;
	assert_int_equal(procnet_stat_ppid(plain, strlen(plain)), 21118);
	assert_int_equal(procnet_stat_ppid(odd, strlen(odd)), 1);
	assert_int_equal(procnet_stat_ppid("12 (x) S", 8), -1);
	assert_int_equal(procnet_stat_ppid("12 x S 3", 8), -1);
	assert_int_equal(procnet_stat_ppid("12 (x) S -3", 11), -1);
}

static void test_maps_libssl(void **state)
{
	static const char maps[] =
	    "55d0c0a00000-55d0c0b00000 r--p 00000000 fe:00 1000 "
	    "/usr/lib/postgresql/15/bin/postgres\n"
	    "7ffb76000000-7ffb76100000 r--p 00000000 fe:00 2000 "
	    "/usr/lib/x86_64-linux-gnu/libsslx.so\n"
	    "7ffb76131000-7ffb76150000 r--p 00000000 fe:00 333427                     "
	    "/usr/lib/x86_64-linux-gnu/libssl.so.3\n"
	    "7ffb76150000-7ffb761ad000 r-xp 0001f000 fe:00 333427                     "
	    "/usr/lib/x86_64-linux-gnu/libssl.so.3\n"
	    "7ffc00000000-7ffc00021000 rw-p 00000000 00:00 0                          [stack]\n";
	static const char spaces[] = "7f-8f r-xp 0 fe:00 5 /opt/my ssl/lib/libssl.so.1.1\n";
	static const char deleted[] =
	    "7f-8f r-xp 0 fe:00 5 /usr/lib/x86_64-linux-gnu/libssl.so.3 (deleted)\n";
	static const char none[] = "7f-8f r-xp 0 fe:00 5 /usr/lib/x86_64-linux-gnu/libc.so.6\n"
				   "7f-8f r-xp 0 00:00 0\n";
	char path[64];

	(void)state;
	assert_int_equal(procnet_maps_libssl(maps, strlen(maps), path, sizeof(path)), 37);
	assert_string_equal(path, "/usr/lib/x86_64-linux-gnu/libssl.so.3");
	assert_int_equal(procnet_maps_libssl(spaces, strlen(spaces), path, sizeof(path)), 29);
	assert_string_equal(path, "/opt/my ssl/lib/libssl.so.1.1");
	assert_int_equal(procnet_maps_libssl(deleted, strlen(deleted), path, sizeof(path)), -1);
	assert_int_equal(procnet_maps_libssl(none, strlen(none), path, sizeof(path)), 0);
	assert_int_equal(procnet_maps_libssl(maps, strlen(maps), path, 20), -1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_listen_inodes),
	    cmocka_unit_test(test_socket_inode),
	    cmocka_unit_test(test_stat_ppid),
	    cmocka_unit_test(test_maps_libssl),
	};

	return cmocka_run_group_tests_name("procnet", tests, NULL, NULL);
}
