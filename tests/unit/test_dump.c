// SPDX-License-Identifier: BSD-2-Clause
/* dump: files per half-stream (0600), their names, reused tuples, gaps, errors. */
#include <dirent.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmocka.h>

#include "dump.h"

static char dir[64];

static void v4(struct tcpstream_addr *a, uint8_t last, uint16_t port)
{
	memset(a, 0, sizeof(*a));
	a->family = 4;
	a->addr[10] = a->addr[11] = 0xff;
	a->addr[12] = 10;
	a->addr[15] = last;
	a->port = port;
}

static char *slurp(const char *name)
{
	static char text[4096];
	char path[256];
	size_t n;
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", dir, name);
	f = fopen(path, "r");
	if (!f)
		return NULL;
	n = fread(text, 1, sizeof(text) - 1, f);
	fclose(f);
	text[n] = '\0';
	return text;
}

static int setup(void **state)
{
	(void)state;
	snprintf(dir, sizeof(dir), "/tmp/pgshadow-dump-XXXXXX");
	return mkdtemp(dir) ? 0 : -1;
}

static int teardown(void **state)
{
	char cmd[128];

	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	return system(cmd) == 0 ? 0 : -1;
}

static void test_streams_gaps_and_modes(void **state)
{
	struct tcpstream_flow flow = {.id = 1};
	struct dump *d = dump_open(dir);
	struct dump_flow *f;
	struct stat sb;
	char path[256];

	(void)state;
	assert_non_null(d);
	v4(&flow.client, 7, 40001);
	v4(&flow.server, 1, 5432);
	f = dump_flow_open(d, &flow);
	assert_non_null(f);
	dump_flow_data(d, f, TCPSTREAM_C2S, (const uint8_t *)"Qhello", 6);
	dump_flow_gap(d, f, TCPSTREAM_S2C, 0);
	dump_flow_data(d, f, TCPSTREAM_S2C, (const uint8_t *)"Z", 1);
	dump_flow_gap(d, f, TCPSTREAM_C2S, 100);
	dump_flow_close(d, f);
	assert_string_equal(slurp("10.0.0.7:40001-10.0.0.1:5432.c2s"), "Qhello");
	assert_string_equal(slurp("10.0.0.7:40001-10.0.0.1:5432.s2c"), "Z");
	assert_string_equal(slurp("10.0.0.7:40001-10.0.0.1:5432.gaps"),
			    "s2c offset=0 missing=unknown\nc2s offset=6 missing=100\n");
	snprintf(path, sizeof(path), "%s/10.0.0.7:40001-10.0.0.1:5432.c2s", dir);
	assert_int_equal(stat(path, &sb), 0);
	assert_int_equal(sb.st_mode & 0777, 0600); /* every byte of a session: root's alone */
	assert_int_equal(dump_errors(d), 0);

	/* the tuple reused: .2; then a clash on .s2c alone: .c2s given back, .3 taken */
	f = dump_flow_open(d, &flow);
	assert_non_null(f);
	dump_flow_close(d, f);
	assert_non_null(slurp("10.0.0.7:40001-10.0.0.1:5432.2.c2s"));
	snprintf(path, sizeof(path), "%s/10.0.0.7:40001-10.0.0.1:5432.3.s2c", dir);
	fclose(fopen(path, "w"));
	f = dump_flow_open(d, &flow);
	assert_non_null(f);
	dump_flow_close(d, f);
	assert_null(slurp("10.0.0.7:40001-10.0.0.1:5432.3.c2s"));
	assert_non_null(slurp("10.0.0.7:40001-10.0.0.1:5432.4.c2s"));
	dump_close(d);
}

static void test_endpoints_and_errors(void **state)
{
	struct tcpstream_flow flow = {.id = 2};
	struct tcpstream_addr a;
	char buf[64], sub[96];
	struct dump *d;

	(void)state;
	memset(&a, 0, sizeof(a));
	a.family = 6;
	a.addr[15] = 1;
	a.port = 5432;
	dump_format_endpoint(&a, buf, sizeof(buf));
	assert_string_equal(buf, "[::1]:5432");
	assert_null(dump_open("/nonexistent/pgshadow-dump"));
	/* the directory goes away under the dumper: counted, nothing opened */
	snprintf(sub, sizeof(sub), "%s/gone", dir);
	assert_int_equal(mkdir(sub, 0700), 0);
	d = dump_open(sub);
	assert_non_null(d);
	assert_int_equal(rmdir(sub), 0);
	v4(&flow.client, 8, 40002);
	v4(&flow.server, 1, 5432);
	assert_null(dump_flow_open(d, &flow));
	assert_null(dump_flow_open(d, &flow));
	assert_int_equal(dump_errors(d), 2);
	/* NULL flows are accepted and do nothing */
	dump_flow_data(d, NULL, TCPSTREAM_C2S, (const uint8_t *)"x", 1);
	dump_flow_gap(d, NULL, TCPSTREAM_C2S, 1);
	dump_flow_close(d, NULL);
	dump_close(d);
	dump_close(NULL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup_teardown(test_streams_gaps_and_modes, setup, teardown),
	    cmocka_unit_test_setup_teardown(test_endpoints_and_errors, setup, teardown),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
