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

#define VOL FINGERPRINT_NONDET_VOLATILE
#define ORD FINGERPRINT_NONDET_ORDER
#define TSM FINGERPRINT_NONDET_TABLESAMPLE

static const struct {
	const char *sql;
	unsigned int nondet;
} nondet_cases[] = {
    {"SELECT now()", VOL},
    {"SELECT pg_catalog.NOW()", VOL},
    {"SELECT CURRENT_TIMESTAMP", VOL},
    {"SELECT 1 WHERE CURRENT_DATE > '2020-01-01'", VOL},
    {"SELECT nextval('s')", VOL},
    {"INSERT INTO t (id) VALUES (public.uuid_generate_v4())", VOL},
    {"SELECT random() * 10", VOL},
    {"SELECT txid_current(), pg_backend_pid()", VOL},
    {"SELECT age(created) FROM t", VOL},
    {"SELECT 'now'::timestamptz", VOL},
    {"SELECT * FROM t WHERE d < ' Today '", VOL},
    {"INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) "
     "VALUES ($1, $2, $3, $4, CURRENT_TIMESTAMP)",
     VOL},
    {"UPDATE t SET v = 1 WHERE id IN (SELECT id FROM u WHERE ts > now() - interval '1 day')", VOL},
    {"SELECT abalance FROM pgbench_accounts LIMIT 1", ORD},
    {"SELECT a FROM t OFFSET 10", ORD},
    {"SELECT a FROM t FETCH FIRST 3 ROWS ONLY", ORD},
    {"SELECT DISTINCT ON (a) a, b FROM t", ORD},
    {"SELECT * FROM (SELECT a FROM t LIMIT 5) s ORDER BY a", ORD},
    {"SELECT a FROM t WHERE a = (SELECT b FROM u LIMIT 1)", ORD},
    {"SELECT a FROM t UNION SELECT b FROM u LIMIT 3", ORD},
    {"(SELECT a FROM t LIMIT 1) UNION ALL (SELECT b FROM u ORDER BY b LIMIT 1)", ORD},
    {"WITH x AS (SELECT a FROM t LIMIT 2) SELECT * FROM x ORDER BY a", ORD},
    {"INSERT INTO t SELECT * FROM u LIMIT 10", ORD},
    {"SELECT * FROM t TABLESAMPLE BERNOULLI (10)", TSM},
    {"SELECT * FROM t TABLESAMPLE SYSTEM (1) REPEATABLE (7)", TSM},
    {"SELECT now() FROM t TABLESAMPLE SYSTEM (1) LIMIT 1", VOL | ORD | TSM},
    /* several statements: the union */
    {"SELECT now(); SELECT a FROM t LIMIT 1", VOL | ORD},
    {"BEGIN; SELECT * FROM t TABLESAMPLE SYSTEM (5); COMMIT", TSM},
    {"SELECT 1; SELECT 2", 0},
    /* deterministic */
    {"SELECT a FROM t ORDER BY a LIMIT 1", 0},
    {"SELECT a FROM t ORDER BY a OFFSET 5 FETCH NEXT 2 ROWS ONLY", 0},
    {"SELECT DISTINCT ON (a) a, b FROM t ORDER BY a, b", 0},
    {"SELECT DISTINCT a FROM t", 0},
    {"SELECT a FROM t LIMIT ALL", 0},
    {"SELECT a FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.a = t.a LIMIT 1)", 0},
    {"UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2", 0},
    {"SELECT abalance FROM pgbench_accounts WHERE aid = 1", 0},
    {"select abalance from pgbench_accounts where aid = $1", 0},
    {"SELECT now_x(), mynow(), s.now_y(a), now FROM t", 0},
    {"SELECT t.now, \"now\" FROM t", 0},
    {"SELECT age(a, b), 'nowhere', 'today is'::text FROM t", 0},
    {"SELECT '2024-01-01'::timestamptz", 0},
    {"INSERT INTO t VALUES ($1, $2)", 0},
    {"CREATE TABLE t (a timestamptz DEFAULT now())", VOL},
    {"this is not sql", 0},
};

static void test_nondet(void **state)
{
	struct fingerprint_info fi;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(nondet_cases) / sizeof(nondet_cases[0]); i++) {
		fingerprint_compute(nondet_cases[i].sql, &fi);
		if (fi.nondet != nondet_cases[i].nondet)
			fail_msg("%s: nondet %#x, expected %#x", nondet_cases[i].sql, fi.nondet,
				 nondet_cases[i].nondet);
	}
}

/* A tree nested deeper than the walk goes is reported, not walked. 800 terms of a + chain
 * are 1600 levels (Node, A_Expr); far longer chains crash protobuf-c's unpacking itself. */
static void test_nondet_deep(void **state)
{
	static char sql[16 + 2 * 800];
	struct fingerprint_info fi;
	size_t o;
	int i;

	(void)state;
	o = (size_t)snprintf(sql, sizeof(sql), "SELECT 1");
	for (i = 0; i < 800; i++)
		o += (size_t)snprintf(sql + o, sizeof(sql) - o, "+a");
	fingerprint_compute(sql, &fi);
	assert_true(fi.parsed);
	assert_int_equal(fi.nondet, FINGERPRINT_NONDET_UNKNOWN);
	fingerprint_compute("SELECT 1+a+a+a+a+a+a+a+a+a+a+a+a+a+a+a+a+a+a+a+a+a+a+a", &fi);
	assert_int_equal(fi.nondet, 0);
}

/* nondet is cached with the rest; a literal that reads as the current time is not a
 * constant, so it keeps its value in the cache key. */
static void test_nondet_cached(void **state)
{
	struct fingerprint_cache *c = fingerprint_cache_new(64);
	struct fingerprint_info fi;
	static const char *const a = "SELECT * FROM t WHERE ts < '2020-01-01'::timestamptz";
	static const char *const b = "SELECT * FROM t WHERE ts < 'now'::timestamptz";
	static const char *const d = "SELECT * FROM t WHERE ts < $x$now$x$::timestamptz";
	static const char *const e = "SELECT * FROM t WHERE ts < '2021-06-30'::timestamptz";
	static const char *const h = "SELECT * FROM t WHERE ts < $x$2020-01-01$x$::timestamptz";
	static const char *const f = "SELECT nextval('s') LIMIT 1";
	static const char *const g = "SELECT nextval('other_seq') LIMIT 1";

	(void)state;
	assert_non_null(c);
	fingerprint_lookup(c, a, strlen(a), &fi);
	assert_int_equal(fi.nondet, 0);
	fingerprint_lookup(c, b, strlen(b), &fi);
	assert_int_equal(fi.nondet, FINGERPRINT_NONDET_VOLATILE);
	fingerprint_lookup(c, d, strlen(d), &fi);
	assert_int_equal(fi.nondet, FINGERPRINT_NONDET_VOLATILE);
	fingerprint_lookup(c, e, strlen(e), &fi);
	assert_int_equal(fi.nondet, 0);
	assert_int_equal(fingerprint_cache_stats(c)->hits, 1); /* e shares a's shape */
	fingerprint_lookup(c, h, strlen(h), &fi);	       /* not d's shape */
	assert_int_equal(fi.nondet, 0);
	assert_int_equal(fingerprint_cache_stats(c)->hits, 1);
	fingerprint_lookup(c, f, strlen(f), &fi);
	fingerprint_lookup(c, g, strlen(g), &fi);
	assert_int_equal(fingerprint_cache_stats(c)->hits, 2); /* g hits f's entry */
	assert_int_equal(fi.nondet, FINGERPRINT_NONDET_VOLATILE | FINGERPRINT_NONDET_ORDER);
	fingerprint_cache_free(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_classification),
	    cmocka_unit_test(test_fingerprint_ignores_constants),
	    cmocka_unit_test(test_cache_hits_and_evictions),
	    cmocka_unit_test(test_classes),
	    cmocka_unit_test(test_cache_by_shape),
	    cmocka_unit_test(test_nondet),
	    cmocka_unit_test(test_nondet_deep),
	    cmocka_unit_test(test_nondet_cached),
	};

	return cmocka_run_group_tests_name("fingerprint", tests, NULL, NULL);
}
