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

static const struct {
	const char *sql;
	unsigned int classes;
	enum fingerprint_txn txn;
} class_cases[] = {
    {"SELECT 1", FINGERPRINT_DML, 0},
    {"INSERT INTO t VALUES (1)", FINGERPRINT_DML, 0},
    {"COPY t FROM STDIN", FINGERPRINT_DML, 0},
    {"CREATE TABLE t (a int)", FINGERPRINT_DDL, 0},
    {"CREATE TEMP TABLE t (a int)", FINGERPRINT_SESSION, 0},
    {"CREATE TEMPORARY TABLE t AS SELECT 1", FINGERPRINT_SESSION, 0},
    {"ALTER TABLE t ADD COLUMN b int", FINGERPRINT_DDL, 0},
    {"TRUNCATE t", FINGERPRINT_DDL, 0},
    {"SET DateStyle = 'ISO, DMY'", FINGERPRINT_SESSION, 0},
    {"RESET ALL", FINGERPRINT_SESSION, 0},
    {"PREPARE p AS SELECT 1", FINGERPRINT_SESSION, 0},
    {"DEALLOCATE ALL", FINGERPRINT_SESSION, 0},
    {"LISTEN chan", FINGERPRINT_SESSION, 0},
    {"BEGIN", FINGERPRINT_TXN, FINGERPRINT_TXN_BEGIN},
    {"START TRANSACTION ISOLATION LEVEL SERIALIZABLE", FINGERPRINT_TXN, FINGERPRINT_TXN_BEGIN},
    {"COMMIT", FINGERPRINT_TXN, FINGERPRINT_TXN_COMMIT},
    {"END", FINGERPRINT_TXN, FINGERPRINT_TXN_COMMIT},
    {"ROLLBACK", FINGERPRINT_TXN, FINGERPRINT_TXN_ROLLBACK},
    {"ABORT", FINGERPRINT_TXN, FINGERPRINT_TXN_ROLLBACK},
    {"ROLLBACK TO SAVEPOINT a", FINGERPRINT_TXN, FINGERPRINT_TXN_OTHER},
    {"COMMIT PREPARED 'x'", FINGERPRINT_TXN | FINGERPRINT_NO_TXN_BLOCK, FINGERPRINT_TXN_OTHER},
    {"VACUUM t", FINGERPRINT_DDL | FINGERPRINT_NO_TXN_BLOCK, 0},
    {"ANALYZE t", FINGERPRINT_DDL, 0},
    {"CREATE INDEX CONCURRENTLY i ON t (a)", FINGERPRINT_DDL | FINGERPRINT_NO_TXN_BLOCK, 0},
    {"CREATE INDEX i ON t (a)", FINGERPRINT_DDL, 0},
    {"DROP INDEX CONCURRENTLY i", FINGERPRINT_DDL | FINGERPRINT_NO_TXN_BLOCK, 0},
    {"REINDEX (CONCURRENTLY) TABLE t", FINGERPRINT_DDL | FINGERPRINT_NO_TXN_BLOCK, 0},
    {"CREATE DATABASE x", FINGERPRINT_DDL | FINGERPRINT_NO_TXN_BLOCK, 0},
    {"BEGIN; INSERT INTO t VALUES (1); COMMIT", FINGERPRINT_TXN | FINGERPRINT_DML, 0},
};

static void test_classes(void **state)
{
	struct fingerprint_info fi;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(class_cases) / sizeof(class_cases[0]); i++) {
		fingerprint_compute(class_cases[i].sql, &fi);
		if (fi.classes != class_cases[i].classes || fi.txn != class_cases[i].txn)
			fail_msg("%s: classes %#x txn %d, expected %#x %d", class_cases[i].sql,
				 fi.classes, fi.txn, class_cases[i].classes, class_cases[i].txn);
	}
}

/* Texts that differ only in literal values share a cache entry; anything else does not. */
static void test_cache_by_shape(void **state)
{
	static const char *const same[][2] = {
	    {"SELECT abalance FROM pgbench_accounts WHERE aid = 1;",
	     "SELECT abalance FROM pgbench_accounts WHERE aid = 987654;"},
	    {"SELECT * FROM t WHERE s = 'a''b' AND x = 1.5e3",
	     "SELECT * FROM t WHERE s = 'zz' AND x = .5"},
	    {"SELECT E'\\'' -- c\n, $$x$$", "SELECT E'y' /* a /* nested */ b */, $q$it's$q$"},
	    {"INSERT INTO t VALUES (1, 'x')", "INSERT INTO t VALUES (22, 'yyy')"},
	};
	static const char *const differ[][2] = {
	    {"EXPLAIN (ANALYZE 0) DELETE FROM t", "EXPLAIN (ANALYZE 1) DELETE FROM t"},
	    {"SELECT * FROM t1", "SELECT * FROM t2"},
	    {"SELECT \"a1\" FROM t", "SELECT \"a2\" FROM t"},
	    {"SELECT $1", "SELECT $2"},
	    {"SELECT x'1F'", "SELECT x'2F'"},
	};
	struct fingerprint_cache *c;
	struct fingerprint_info a, b;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(same) / sizeof(same[0]); i++) {
		c = fingerprint_cache_new(64);
		fingerprint_lookup(c, same[i][0], strlen(same[i][0]), &a);
		fingerprint_lookup(c, same[i][1], strlen(same[i][1]), &b);
		if (fingerprint_cache_stats(c)->hits != 1)
			fail_msg("not one shape: %s | %s", same[i][0], same[i][1]);
		assert_true(a.parsed);
		assert_int_equal(a.fingerprint, b.fingerprint);
		fingerprint_cache_free(c);
	}
	for (i = 0; i < sizeof(differ) / sizeof(differ[0]); i++) {
		c = fingerprint_cache_new(64);
		fingerprint_lookup(c, differ[i][0], strlen(differ[i][0]), &a);
		fingerprint_lookup(c, differ[i][1], strlen(differ[i][1]), &b);
		if (fingerprint_cache_stats(c)->hits != 0)
			fail_msg("one shape: %s | %s", differ[i][0], differ[i][1]);
		fingerprint_cache_free(c);
	}
	/* the EXPLAIN pair really differs in kind */
	fingerprint_compute(differ[0][0], &a);
	fingerprint_compute(differ[0][1], &b);
	assert_true(a.read_only);
	assert_false(b.read_only);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_classification),
	    cmocka_unit_test(test_fingerprint_ignores_constants),
	    cmocka_unit_test(test_cache_hits_and_evictions),
	    cmocka_unit_test(test_classes),
	    cmocka_unit_test(test_cache_by_shape),
	};

	return cmocka_run_group_tests_name("fingerprint", tests, NULL, NULL);
}
