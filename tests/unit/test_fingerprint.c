// SPDX-License-Identifier: BSD-2-Clause
/* fingerprint: read/write classification from libpg_query's parse tree, and the cache. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "fingerprint.h"

static const struct {
	const char *sql;
	bool read;
} cases[] = {
    {"SELECT 1", true},
    {"select abalance from pgbench_accounts where aid = $1", true},
    {"SELECT * FROM a UNION ALL SELECT * FROM b", true},
    {"VALUES (1), (2)", true},
    {"SHOW work_mem", true},
    {"EXPLAIN SELECT * FROM t", true},
    {"EXPLAIN (ANALYZE false) SELECT * FROM t", true},
    {"WITH x AS (SELECT 1) SELECT * FROM x", true},
    {"SELECT 1; SELECT 2", true},
    {"", true},
    {"SELECT * INTO newtab FROM t", false},
    {"SELECT * FROM t FOR UPDATE", false},
    {"SELECT * FROM t FOR SHARE SKIP LOCKED", false},
    {"SELECT * FROM a UNION SELECT * FROM b FOR UPDATE", false},
    {"WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d", false},
    {"EXPLAIN ANALYZE SELECT * FROM t", false},
    {"EXPLAIN (ANALYZE, BUFFERS) DELETE FROM t", false},
    {"INSERT INTO t VALUES (1)", false},
    {"UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid = 1", false},
    {"DELETE FROM t", false},
    {"CREATE TABLE t (a int)", false},
    {"SET search_path = public", false},
    {"BEGIN", false},
    {"COPY t FROM STDIN", false},
    {"SELECT 1; DELETE FROM t", false},
    {"this is not sql", false},
};

static void test_classification(void **state)
{
	struct fingerprint_info info;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		fingerprint_compute(cases[i].sql, &info);
		if (info.read_only != cases[i].read)
			fail_msg("%s: read_only=%d, want %d", cases[i].sql, info.read_only,
				 cases[i].read);
	}
	fingerprint_compute("this is not sql", &info);
	assert_false(info.parsed);
	assert_int_equal(info.fingerprint, 0);
	fingerprint_compute("SELECT 1; SELECT 2; SELECT 3", &info);
	assert_true(info.parsed);
	assert_int_equal(info.statements, 3);
}

static void test_fingerprint_ignores_constants(void **state)
{
	struct fingerprint_info a, b, c;

	(void)state;
	fingerprint_compute("SELECT * FROM t WHERE id = 1", &a);
	fingerprint_compute("select *   from t where id = 42", &b);
	fingerprint_compute("SELECT * FROM u WHERE id = 1", &c);
	assert_true(a.fingerprint != 0);
	assert_int_equal(a.fingerprint, b.fingerprint);
	assert_true(a.fingerprint != c.fingerprint);
}

static void test_cache_hits_and_evictions(void **state)
{
	struct fingerprint_cache *c = fingerprint_cache_new(8);
	struct fingerprint_info info, direct;
	char sql[64];
	int i;

	(void)state;
	assert_non_null(c);
	/* not NUL-terminated: the cache copies exactly len bytes */
	fingerprint_lookup(c, "SELECT 1XXXX", 8, &info);
	fingerprint_compute("SELECT 1", &direct);
	assert_int_equal(info.fingerprint, direct.fingerprint);
	assert_true(info.read_only);
	fingerprint_lookup(c, "SELECT 1", 8, &info);
	assert_int_equal(fingerprint_cache_stats(c)->hits, 1);
	assert_int_equal(fingerprint_cache_stats(c)->misses, 1);
	for (i = 0; i < 100; i++) {
		snprintf(sql, sizeof(sql), "SELECT c%d FROM t", i);
		fingerprint_lookup(c, sql, strlen(sql), &info);
	}
	assert_int_equal(fingerprint_cache_stats(c)->misses, 101);
	assert_true(fingerprint_cache_stats(c)->evictions >= 101 - 8);
	fingerprint_lookup(c, "DELETE", 6, &info);
	assert_int_equal(fingerprint_cache_stats(c)->parse_errors, 1);
	assert_null(fingerprint_cache_new(0));
	fingerprint_cache_free(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_classification),
	    cmocka_unit_test(test_fingerprint_ignores_constants),
	    cmocka_unit_test(test_cache_hits_and_evictions),
	};

	return cmocka_run_group_tests_name("fingerprint", tests, NULL, NULL);
}
