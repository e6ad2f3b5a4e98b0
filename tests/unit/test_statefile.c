// SPDX-License-Identifier: BSD-2-Clause
/* The readiness window's state file: a round trip keeps every number; anything else is
 * refused with its reason; the mirror id ignores the password only. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "statefile.h"

#define VERSION "1.0-test"
#define MIRROR	0x0123456789abcdefULL

static void sample(struct stats_readiness_state *s)
{
	int k;

	memset(s, 0, sizeof(*s));
	s->runtime_ns = 86399000000000ULL;
	s->total = 1000000;
	s->not_sampled = 10;
	s->compared = 999000;
	s->mismatched = 3;
	s->mirrored = 998000;
	s->errors[STATS_ERR_CONNECTION] = 1;
	s->errors[STATS_ERR_QUERY] = 2;
	s->errors[STATS_ERR_TIMEOUT] = 3;
	s->errors[STATS_ERR_BUFFER_FULL] = 4;
	s->streak = 500000;
	for (k = 0; k <= STATS_BUCKETS; k++) {
		s->mirror_hist[k] = 1000u * (unsigned)k + 1;
		s->source_hist[k] = 7u * (unsigned)k;
	}
	s->mirror_sum_ns = UINT64_MAX - 1;
	s->source_sum_ns = 12345;
	s->mirror_max_ns = 999;
	s->source_max_ns = 888;
}

static char *encode(const struct stats_readiness_state *s, struct buf *b)
{
	buf_init(b, STATEFILE_MAX);
	assert_true(statefile_encode(s, VERSION, MIRROR, b));
	assert_true(b->len < STATEFILE_MAX);
	assert_true(buf_append(b, "", 1));
	b->len--;
	return b->data;
}

static void test_round_trip(void **state)
{
	struct stats_readiness_state s, got;
	struct buf b;
	char why[256] = "";

	(void)state;
	sample(&s);
	encode(&s, &b);
	assert_int_equal(statefile_decode(b.data, b.len, VERSION, MIRROR, &got, why, sizeof(why)),
			 0);
	assert_memory_equal(&s, &got, sizeof(s));
	assert_non_null(strstr(b.data, "pgshadow-state 1\nversion 1.0-test\nmirror "
				       "0123456789abcdef\nruntime_ns 86399000000000\n"));
	buf_free(&b);
}

static void expect_refused(const char *text, size_t len, const char *version, uint64_t mirror,
			   const char *reason)
{
	struct stats_readiness_state got;
	char why[256] = "";

	assert_int_equal(statefile_decode(text, len, version, mirror, &got, why, sizeof(why)), -1);
	if (!strstr(why, reason))
		fail_msg("refused with \"%s\", expected \"%s\"", why, reason);
}

static void test_refusals(void **state)
{
	struct stats_readiness_state s;
	struct buf b;
	char copy[STATEFILE_MAX + 16], *p;
	size_t n;

	(void)state;
	sample(&s);
	encode(&s, &b);
	n = b.len;
	expect_refused(b.data, n, "2.0", MIRROR, "written by version 1.0-test, this is 2.0");
	expect_refused(b.data, n, VERSION, MIRROR + 1, "another mirror");
	expect_refused("", 0, VERSION, MIRROR, "not a pgshadow state file");
	expect_refused("garbage\n", 8, VERSION, MIRROR, "not a pgshadow state file");
	expect_refused("pgshadow-state 9\n", 17, VERSION, MIRROR, "format 9");
	expect_refused(b.data, n - 30, VERSION, MIRROR, "no source_hist line"); /* cut short */
	expect_refused(b.data, n - 1, VERSION, MIRROR, "no checksum line");
	expect_refused(b.data, STATEFILE_MAX + 1, VERSION, MIRROR, "longer");
	memcpy(copy, b.data, n); /* a digit changed: the checksum tells */
	p = strstr(copy, "total 1000000");
	p[6] = '2';
	expect_refused(copy, n, VERSION, MIRROR, "checksum mismatch");
	memcpy(copy, b.data, n);
	memcpy(copy + n, "x\n", 2);
	expect_refused(copy, n + 2, VERSION, MIRROR, "after the checksum");
	memcpy(copy, b.data, n);
	p = strstr(copy, "streak");
	p[0] = 'S';
	expect_refused(copy, n, VERSION, MIRROR, "is not streak");
	buf_free(&b);
	s.streak = s.mirrored + 1; /* consistent checksum, impossible numbers */
	encode(&s, &b);
	expect_refused(b.data, b.len, VERSION, MIRROR, "contradict");
	buf_free(&b);
}

static void test_mirror_id(void **state)
{
	(void)state;
	assert_int_equal(statefile_mirror_id("host=a port=5432 user=u password=x"),
			 statefile_mirror_id("host=a port=5432 user=u password=y"));
	assert_int_equal(statefile_mirror_id("postgresql://u:x@a:5432/db"),
			 statefile_mirror_id("postgresql://u:other@a:5432/db"));
	assert_int_not_equal(statefile_mirror_id("postgresql://u:x@a:5432/db"),
			     statefile_mirror_id("postgresql://v:x@a:5432/db"));
	assert_int_not_equal(statefile_mirror_id("host=a port=5432"),
			     statefile_mirror_id("host=a port=5433"));
	assert_int_not_equal(statefile_mirror_id("host=a"), statefile_mirror_id("host=b"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_round_trip),
	    cmocka_unit_test(test_refusals),
	    cmocka_unit_test(test_mirror_id),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
