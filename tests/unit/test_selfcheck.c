// SPDX-License-Identifier: BSD-2-Clause
/* selfcheck: the /proc and pg_control parsers, password redaction, and the decision —
 * one source postmaster (the mirror its child or not, with and without system
 * identifiers), several postmasters on the port (with and without --source-dsn), none
 * (system identifiers from --source-dsn), an unreachable mirror. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "selfcheck.h"

#define SYSID	 7716255559246785429ull
#define OTHER_ID 7312000000000000001ull

/* ---- /proc/net/tcp ---- */

static const char tcp_header[] =
    "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  "
    "timeout inode\n";
static const char tcp_listen[] = "   0: 0100007F:176F 00000000:0000 0A 00000000:00000000 "
				 "00:00000000 00000000   108        0 10953536 1 "
				 "0000000000000000 100 0 0 10 0\n";
static const char tcp_established[] = "   1: 0100007F:176F 0100007F:D2A4 01 00000000:00000000 "
				      "00:00000000 00000000   108        0 10953999 1 "
				      "0000000000000000 20 4 30 10 -1\n";
static const char tcp6_listen[] =
    "   0: 00000000000000000000000001000000:176f 00000000000000000000000000000000:0000 0A "
    "00000000:00000000 00:00000000 00000000   108        0 10953537 1 0000000000000000 100 "
    "0 0 10 0\n";

static void test_parse_listen(void **state)
{
	uint64_t ino = 0;

	(void)state;
	assert_true(selfcheck_parse_listen(tcp_listen, 5999, &ino));
	assert_int_equal(ino, 10953536);
	assert_true(selfcheck_parse_listen(tcp6_listen, 5999, &ino)); /* lower-case hex too */
	assert_int_equal(ino, 10953537);
	ino = 0;
	assert_false(selfcheck_parse_listen(tcp_listen, 5432, &ino));	   /* another port */
	assert_false(selfcheck_parse_listen(tcp_established, 5999, &ino)); /* not LISTEN */
	assert_false(selfcheck_parse_listen(tcp_header, 5999, &ino));
	assert_false(selfcheck_parse_listen("", 5999, &ino));
	assert_false(selfcheck_parse_listen("   0: 0100007F:176F 00000000:0000 0A", 5999, &ino));
	/* an address that is not 8 or 32 hex digits, a bad digit, inode 0 or not a number */
	assert_false(selfcheck_parse_listen("   0: 100007F:176F 00000000:0000 0A 0:0 0:0 0 1 0 7",
					    5999, &ino));
	assert_false(selfcheck_parse_listen("   0: 0100007G:176F 00000000:0000 0A 0:0 0:0 0 1 0 7",
					    5999, &ino));
	assert_false(selfcheck_parse_listen("   0: 0100007F:176F 00000000:0000 0A 0:0 0:0 0 1 0 0",
					    5999, &ino));
	assert_false(selfcheck_parse_listen(
	    "   0: 0100007F:176F 00000000:0000 0A 0:0 0:0 0 1 0 12x", 5999, &ino));
	assert_false(selfcheck_parse_listen(
	    "   0: 0100007F:176F 00000000:0000 0A 0:0 0:0 0 1 0 99999999999999999999", 5999, &ino));
	assert_int_equal(ino, 0); /* untouched when false */
	assert_true(selfcheck_parse_listen("0: 0100007F:176F 0:0 0A 0:0 0:0 0 1 0 7", 5999, &ino));
	assert_int_equal(ino, 7);
}

static void test_parse_socket_link(void **state)
{
	uint64_t ino = 0;

	(void)state;
	assert_true(selfcheck_parse_socket_link("socket:[10953536]", &ino));
	assert_int_equal(ino, 10953536);
	ino = 0;
	assert_false(selfcheck_parse_socket_link("pipe:[10953536]", &ino));
	assert_false(selfcheck_parse_socket_link("socket:[]", &ino));
	assert_false(selfcheck_parse_socket_link("socket:[0]", &ino));
	assert_false(selfcheck_parse_socket_link("socket:[12a]", &ino));
	assert_false(selfcheck_parse_socket_link("socket:[123", &ino));
	assert_false(selfcheck_parse_socket_link("/dev/null", &ino));
	assert_int_equal(ino, 0);
}

/* ---- global/pg_control ---- */

static void control(uint8_t *b, uint64_t id, uint32_t version, uint32_t catversion)
{
	memset(b, 0xee, 64);
	memcpy(b, &id, 8);
	memcpy(b + 8, &version, 4);
	memcpy(b + 12, &catversion, 4);
}

static void test_parse_pg_control(void **state)
{
	uint8_t b[64];
	uint64_t id = 0;

	(void)state;
	control(b, SYSID, 1300, 202209061); /* PostgreSQL 15 */
	assert_true(selfcheck_parse_pg_control(b, sizeof(b), &id));
	assert_true(id == SYSID);
	assert_true(selfcheck_parse_pg_control(b, SELFCHECK_PG_CONTROL_MIN, &id));
	id = 0;
	assert_false(selfcheck_parse_pg_control(b, SELFCHECK_PG_CONTROL_MIN - 1, &id));
	control(b, 0, 1300, 202209061);
	assert_false(selfcheck_parse_pg_control(b, sizeof(b), &id));
	control(b, SYSID, 13, 202209061);
	assert_false(selfcheck_parse_pg_control(b, sizeof(b), &id));
	control(b, SYSID, 1300, 42);
	assert_false(selfcheck_parse_pg_control(b, sizeof(b), &id));
	memset(b, 'x', sizeof(b)); /* text, say a config file */
	assert_false(selfcheck_parse_pg_control(b, sizeof(b), &id));
	assert_true(id == 0);
	control(b, SYSID, 942, 201409291); /* 9.4 */
	assert_true(selfcheck_parse_pg_control(b, sizeof(b), &id));
}

/* ---- /proc/PID/status ---- */

static void test_parse_status(void **state)
{
	int ppid = -1, nspid = -1;

	(void)state;
	assert_true(selfcheck_parse_status("Name:\tpostgres\nUmask:\t0077\nState:\tS (sleeping)\n"
					   "Tgid:\t7101\nNgid:\t0\nPid:\t7101\nPPid:\t7069\n"
					   "TracerPid:\t0\nNStgid:\t7101\nNSpid:\t7101\n",
					   &ppid, &nspid));
	assert_int_equal(ppid, 7069);
	assert_int_equal(nspid, 7101);
	/* a backend in a container: its pid there is the last one */
	assert_true(selfcheck_parse_status("Pid:\t93011\nPPid:\t92970\nTracerPid:\t0\n"
					   "NSpid:\t93011\t48\n",
					   &ppid, &nspid));
	assert_int_equal(ppid, 92970);
	assert_int_equal(nspid, 48);
	/* no NSpid line (kernels before 4.1): Pid, never TracerPid */
	assert_true(selfcheck_parse_status("TracerPid:\t5\nPid:\t42\nPPid:\t1\n", &ppid, &nspid));
	assert_int_equal(ppid, 1);
	assert_int_equal(nspid, 42);
	assert_false(selfcheck_parse_status("Pid:\t42\nTracerPid:\t1\n", &ppid, &nspid));
	assert_false(selfcheck_parse_status("PPid:\t1\nTracerPid:\t9\n", &ppid, &nspid));
	assert_false(selfcheck_parse_status("PPid:\tx\nPid:\t42\n", &ppid, &nspid));
	assert_false(selfcheck_parse_status("PPid:\t1\nNSpid:\t42\t99999999999\n", &ppid, &nspid));
	assert_false(selfcheck_parse_status("", &ppid, &nspid));
}

/* ---- redaction ---- */

static void test_redact(void **state)
{
	char m[128], tiny[12];

	(void)state;
	snprintf(m, sizeof(m), "failed for user \"app\" with s3cret, s3cret again");
	selfcheck_redact(m, sizeof(m), "s3cret");
	assert_string_equal(m, "failed for user \"app\" with ***, *** again");
	snprintf(m, sizeof(m), "nothing to hide");
	selfcheck_redact(m, sizeof(m), "s3cret");
	assert_string_equal(m, "nothing to hide");
	selfcheck_redact(m, sizeof(m), "");
	selfcheck_redact(m, sizeof(m), NULL);
	assert_string_equal(m, "nothing to hide");
	snprintf(m, sizeof(m), "pw");
	selfcheck_redact(m, sizeof(m), "pw");
	assert_string_equal(m, "***");
	/* "***" is longer than "p": truncated, never overflowing, never leaking */
	snprintf(tiny, sizeof(tiny), "ppppppppppp");
	selfcheck_redact(tiny, sizeof(tiny), "p");
	assert_string_equal(tiny, "***********");
	assert_null(strchr(tiny, 'p'));
}

/* ---- the decision ---- */

static struct selfcheck_postmaster pms[3];
static struct selfcheck_facts facts;

/* Facts: n postmasters on port 5999 (pid 100 + i, system identifier SYSID + i), the
 * mirror reached with backend pid 4242 at 127.0.0.1, child of postmaster mirror_parent
 * (-1: none), with its system identifier (0: not permitted). */
static struct selfcheck_facts *setup(size_t n, int mirror_parent, uint64_t mirror_sysid)
{
	size_t i;

	memset(pms, 0, sizeof(pms));
	memset(&facts, 0, sizeof(facts));
	for (i = 0; i < n; i++) {
		pms[i].pid = 100 + (int)i;
		pms[i].has_sysid = true;
		pms[i].sysid = SYSID + i;
		snprintf(pms[i].datadir, sizeof(pms[i].datadir), "/srv/pg%zu", i);
	}
	facts.port = 5999;
	facts.pm = pms;
	facts.n_pm = n;
	if (!n)
		snprintf(facts.scan_note, sizeof(facts.scan_note),
			 "nothing listens on port 5999 in the agent's network namespace");
	facts.mirror.reached = true;
	facts.mirror.backend_pid = 4242;
	facts.mirror.has_sysid = mirror_sysid != 0;
	facts.mirror.sysid = mirror_sysid;
	facts.mirror.peer_local = true;
	snprintf(facts.mirror.peer, sizeof(facts.mirror.peer), "127.0.0.1");
	facts.mirror.parent = mirror_parent;
	facts.source.parent = -1;
	return &facts;
}

/* --source-dsn reached, backend child of postmaster parent (-1: none). */
static void with_source(int parent, uint64_t sysid)
{
	facts.has_source = true;
	facts.source.reached = true;
	facts.source.backend_pid = 777;
	facts.source.has_sysid = sysid != 0;
	facts.source.sysid = sysid;
	facts.source.peer_local = true;
	facts.source.parent = parent;
}

static enum selfcheck_verdict decide(char *msg, size_t len)
{
	return selfcheck_decide(&facts, msg, len);
}

static void test_unreachable_mirror(void **state)
{
	char m[1024];

	(void)state;
	setup(1, -1, 0);
	facts.mirror.reached = false;
	snprintf(facts.mirror.error, sizeof(facts.mirror.error),
		 "connection to server at \"127.0.0.1\", port 1 failed: Connection refused");
	assert_int_equal(decide(m, sizeof(m)), SELFCHECK_UNCHECKED);
	assert_string_equal(m, "could not check whether --mirror is the source cluster: the "
			       "mirror: connection to server at \"127.0.0.1\", port 1 failed: "
			       "Connection refused; going on");
}

static void test_the_source_itself(void **state)
{
	char m[1024];

	(void)state;
	setup(1, 0, SYSID);
	assert_int_equal(decide(m, sizeof(m)), SELFCHECK_SOURCE);
	assert_string_equal(m, "--mirror reaches the source cluster itself (system identifier "
			       "7716255559246785429 on both, postmaster pid 100, data directory "
			       "/srv/pg0): refusing to replay every write twice");
	/* the same through a remote address (a proxy, a VIP): the identifiers agree */
	facts.mirror.peer_local = false;
	assert_int_equal(decide(m, sizeof(m)), SELFCHECK_SOURCE);
	/* pg_control unreadable: the pid, at a local address */
	pms[0].has_sysid = false;
	facts.mirror.peer_local = true;
	assert_int_equal(decide(m, sizeof(m)), SELFCHECK_SOURCE);
	assert_non_null(strstr(m, "(system identifier 7716255559246785429 on both, postmaster pid "
				  "100"));
	facts.mirror.peer_local = false;
	assert_int_equal(decide(m, sizeof(m)), SELFCHECK_UNCHECKED);
	assert_non_null(strstr(m, "but the source's global/pg_control cannot be read and the "
				  "mirror's address 127.0.0.1 is not local"));
}

static void test_the_source_without_sysid(void **state)
{
	char m[1024];

	(void)state;
	setup(1, 0, 0); /* pg_control_system() not permitted: the pid and a local address */
	assert_int_equal(decide(m, sizeof(m)), SELFCHECK_SOURCE);
	assert_string_equal(m, "--mirror reaches the source cluster itself (the mirror's backend "
			       "pid 4242 is a child of the source's postmaster pid 100, data "
			       "directory /srv/pg0, at local address 127.0.0.1): refusing to "
			       "replay every write twice");
	facts.mirror.peer[0] = '\0'; /* a Unix socket */
	assert_int_equal(decide(m, sizeof(m)), SELFCHECK_SOURCE);
	assert_non_null(strstr(m, "data directory /srv/pg0, at a Unix socket): refusing"));
	/* a remote address: the pid could be another host's by chance */
	facts.mirror.peer_local = false;
	snprintf(facts.mirror.peer, sizeof(facts.mirror.peer), "10.1.2.3");
	assert_int_equal(decide(m, sizeof(m)), SELFCHECK_UNCHECKED);
	assert_non_null(strstr(m, "backend pid 4242 is a child of the source's postmaster pid "
				  "100, but pg_control_system() is not permitted on the mirror "
				  "and the mirror's address 10.1.2.3 is not local"));
}

static void test_another_cluster(void **state)
{
	char m[1024];

	(void)state;
	setup(1, -1, OTHER_ID);
	assert_int_equal(decide(m, sizeof(m)), SELFCHECK_DISTINCT);
	assert_string_equal(m, "");
	setup(1, -1, 0); /* no identifier: the pid is not the source's child, enough */
	assert_int_equal(decide(m, sizeof(m)), SELFCHECK_DISTINCT);
	assert_string_equal(m, "");
	/* a remote mirror whose backend pid is, by chance, a backend of the source here */
	setup(1, 0, OTHER_ID);
	assert_int_equal(decide(m, sizeof(m)), SELFCHECK_DISTINCT);
	assert_string_equal(m, "");
}

static void test_standby_or_copy(void **state)
{
	char m[1024];

	(void)state;
	setup(1, -1, SYSID); /* the source's identifier, another postmaster */
	assert_int_equal(decide(m, sizeof(m)), SELFCHECK_DISTINCT);
	assert_string_equal(m, "--mirror has the source's system identifier 7716255559246785429 "
			       "but is another server (a standby or a copy of the source): "
			       "replaying to it");
}

static void test_several_postmasters(void **state)
{
	char m[1024];

	(void)state;
	/* the mirror is the second of two servers on the port: which is the source? */
	setup(2, 1, SYSID + 1);
	assert_int_equal(decide(m, sizeof(m)), SELFCHECK_UNCHECKED);
	assert_string_equal(m, "could not check whether --mirror is the source cluster: 2 "
			       "PostgreSQL servers listen on port 5999 here (postmaster pids 100, "
			       "101) and the mirror is one of them; set --source-dsn to name the "
			       "source; going on");
	/* --source-dsn names the first: the mirror is the other one */
	with_source(0, SYSID);
	assert_int_equal(decide(m, sizeof(m)), SELFCHECK_DISTINCT);
	assert_string_equal(m, "");
	/* ... or the second: the mirror is the source */
	with_source(1, SYSID + 1);
	assert_int_equal(decide(m, sizeof(m)), SELFCHECK_SOURCE);
	assert_non_null(strstr(m, "postmaster pid 101, data directory /srv/pg1"));
	/* a mirror under none of them is not the source, whichever it is */
	setup(2, -1, OTHER_ID);
	assert_int_equal(decide(m, sizeof(m)), SELFCHECK_DISTINCT);
	assert_string_equal(m, "");
}

static void test_source_not_found(void **state)
{
	char m[1024];

	(void)state;
	setup(0, -1, SYSID);
	assert_int_equal(decide(m, sizeof(m)), SELFCHECK_UNCHECKED);
	assert_string_equal(m, "could not check whether --mirror is the source cluster: nothing "
			       "listens on port 5999 in the agent's network namespace, and without "
			       "--source-dsn there is nothing to compare; going on");
	/* --source-dsn: the system identifiers decide */
	with_source(-1, SYSID);
	assert_int_equal(decide(m, sizeof(m)), SELFCHECK_SOURCE);
	assert_string_equal(m, "--mirror reaches the source cluster itself (system identifier "
			       "7716255559246785429 on both, the source as --source-dsn reaches "
			       "it): refusing to replay every write twice");
	facts.mirror.in_recovery = true; /* a standby of the source */
	assert_int_equal(decide(m, sizeof(m)), SELFCHECK_DISTINCT);
	assert_non_null(strstr(m, "a standby or a copy"));
	with_source(-1, OTHER_ID);
	facts.mirror.in_recovery = false;
	assert_int_equal(decide(m, sizeof(m)), SELFCHECK_DISTINCT);
	assert_string_equal(m, "");
	with_source(-1, 0);
	assert_int_equal(decide(m, sizeof(m)), SELFCHECK_UNCHECKED);
	assert_non_null(strstr(m, "pg_control_system() is not permitted on the source"));
	with_source(-1, SYSID);
	facts.source.reached = false;
	snprintf(facts.source.error, sizeof(facts.source.error), "no answer within 5 s");
	assert_int_equal(decide(m, sizeof(m)), SELFCHECK_UNCHECKED);
	assert_non_null(strstr(m, "and --source-dsn: no answer within 5 s; going on"));
}

static void test_short_buffer(void **state)
{
	char m[16];

	(void)state;
	setup(1, 0, SYSID);
	assert_int_equal(decide(m, sizeof(m)), SELFCHECK_SOURCE);
	assert_int_equal(strlen(m), sizeof(m) - 1);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_parse_listen),
	    cmocka_unit_test(test_parse_socket_link),
	    cmocka_unit_test(test_parse_pg_control),
	    cmocka_unit_test(test_parse_status),
	    cmocka_unit_test(test_redact),
	    cmocka_unit_test(test_unreachable_mirror),
	    cmocka_unit_test(test_the_source_itself),
	    cmocka_unit_test(test_the_source_without_sysid),
	    cmocka_unit_test(test_another_cluster),
	    cmocka_unit_test(test_standby_or_copy),
	    cmocka_unit_test(test_several_postmasters),
	    cmocka_unit_test(test_source_not_found),
	    cmocka_unit_test(test_short_buffer),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
