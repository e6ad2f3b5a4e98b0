// SPDX-License-Identifier: BSD-2-Clause
/* fingerprint: read/write classification from libpg_query's parse tree, and the cache. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
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
    {"SELECT pg_advisory_xact_lock(42)", false},
    {"SELECT pg_catalog.pg_advisory_lock($1), n FROM ctr", false},
    {"SELECT pg_try_advisory_lock_shared(1, 2)", false},
    {"SELECT count(*) FROM t WHERE pg_advisory_unlock(id)", false},
    {"SELECT pg_advisory_unlock_all()", false},
    {"SELECT pg_advisory_lock_not_a_lock(1)", true},
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
	/* advisory locks: taken, released, neither */
	fingerprint_compute("SELECT pg_advisory_xact_lock(42)", &info);
	assert_true(info.advisory);
	assert_false(info.unlocks);
	fingerprint_compute("SELECT PG_ADVISORY_UNLOCK(42)", &info);
	assert_true(info.advisory);
	assert_true(info.unlocks);
	fingerprint_compute("SELECT n FROM ctr WHERE id = 1", &info);
	assert_false(info.advisory);
	assert_false(info.unlocks);
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

#define SET FINGERPRINT_POOL_SET
#define PIN FINGERPRINT_POOL_PIN

static const struct {
	const char *sql;
	unsigned int pool;
} pool_cases[] = {
    /* session-level SET and RESET */
    {"SET search_path = a", SET},
    {"SET SESSION statement_timeout = 1000", SET},
    {"SET TIME ZONE 'UTC'", SET},
    {"SET ROLE r", SET},
    {"SET SESSION AUTHORIZATION u", SET},
    {"RESET work_mem", SET},
    {"RESET ALL", SET},
    {"SET LOCAL x.y = 1", 0},
    {"SET LOCAL TIME ZONE 'UTC'", 0},
    {"SET TRANSACTION ISOLATION LEVEL SERIALIZABLE", 0},
    {"SET TRANSACTION SNAPSHOT '00000003-0000001B-1'", 0},
    {"SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", SET},
    {"SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE", SET},
    {"SET SESSION SESSION CHARACTERISTICS AS TRANSACTION READ WRITE", SET},
    {"SET LOCAL SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", 0},
    {"ALTER ROLE r SET work_mem = '1MB'", 0},
    {"CREATE FUNCTION f() RETURNS int LANGUAGE sql SET search_path = a AS 'SELECT 1'", 0},
    /* temporary relations */
    {"CREATE TEMP TABLE t (a int)", PIN},
    {"CREATE TEMPORARY TABLE t (a int) ON COMMIT DROP", PIN},
    {"CREATE TABLE t (a int)", 0},
    {"CREATE UNLOGGED TABLE t (a int)", 0},
    {"CREATE TABLE pg_temp.t (a int)", PIN},
    {"CREATE TEMP TABLE t2 AS SELECT 1 AS a", PIN},
    {"CREATE TABLE t2 AS SELECT 1 AS a", 0},
    {"SELECT 1 INTO TEMP t2", PIN},
    {"SELECT 1 INTO t2", 0},
    {"EXPLAIN ANALYZE CREATE TEMP TABLE t2 AS SELECT 1", PIN},
    {"CREATE TEMP VIEW v AS SELECT 1", PIN},
    {"CREATE VIEW v AS SELECT 1", 0},
    {"CREATE TEMP SEQUENCE s", PIN},
    {"CREATE SEQUENCE s", 0},
    {"CREATE FUNCTION pg_temp.f() RETURNS int LANGUAGE sql AS 'SELECT 1'", PIN},
    /* cursors, LISTEN, PREPARE, LOAD */
    {"DECLARE c CURSOR WITH HOLD FOR SELECT 1", PIN},
    {"DECLARE c CURSOR FOR SELECT 1", 0},
    {"LISTEN ch", PIN},
    {"UNLISTEN ch", 0},
    {"UNLISTEN *", 0},
    {"PREPARE p AS SELECT 1", PIN},
    {"EXECUTE p", 0},
    {"DEALLOCATE p", 0},
    {"DEALLOCATE ALL", 0},
    /* DISCARD ALL starts the session over; the partial forms do not touch settings */
    {"DISCARD ALL", FINGERPRINT_POOL_DISCARD},
    {"discard all", FINGERPRINT_POOL_DISCARD},
    {"DISCARD PLANS", 0},
    {"DISCARD SEQUENCES", 0},
    {"DISCARD TEMP", 0},
    {"LOAD 'auto_explain'", PIN},
    /* session-level advisory locks, at any depth */
    {"SELECT pg_advisory_lock(1)", PIN},
    {"SELECT pg_catalog.PG_TRY_ADVISORY_LOCK_SHARED(1,2)", PIN},
    {"SELECT pg_try_advisory_lock(1)", PIN},
    {"SELECT pg_advisory_lock_shared(1)", PIN},
    {"SELECT x FROM (SELECT pg_advisory_lock(3) AS x) s", PIN},
    {"WITH l AS (SELECT pg_advisory_lock(4)) SELECT * FROM l", PIN},
    {"SELECT a FROM t WHERE pg_try_advisory_lock(a) LIMIT 1", PIN},
    {"SELECT pg_advisory_xact_lock(1)", 0},
    {"SELECT pg_try_advisory_xact_lock_shared(1)", 0},
    {"SELECT pg_advisory_unlock(1)", 0},
    {"SELECT my_pg_advisory_lock(1), \"pg_advisory_lock\" FROM t", 0},
    /* set_config() unless is_local is the constant true, at any depth */
    {"SELECT set_config('a.b', 'x', false)", PIN},
    {"SELECT set_config('a.b', 'x', $3)", PIN},
    {"SELECT set_config($1, $2, $3)", PIN},
    {"SELECT set_config('a.b', v, l) FROM t", PIN},
    {"SELECT pg_catalog.SET_CONFIG('a.b', 'x', false)", PIN},
    {"SELECT set_config('a.b', 'x', NOT true)", PIN},
    {"SELECT set_config('a.b', 'x', 't'::bool)", PIN},
    {"SELECT set_config('a.b', 'x', 'true')", PIN},
    {"SELECT set_config('a.b', 'x', NULL)", PIN},
    {"SELECT set_config('a.b', 'x')", PIN},
    {"SELECT * FROM t WHERE a = (SELECT set_config('a.b', 'x', false))", PIN},
    {"UPDATE t SET a = 1 WHERE set_config('a.b', 'x', false) IS NOT NULL", PIN},
    {"SELECT set_config('a.b', 'x', true)", 0},
    {"SELECT set_config('a.b', 'x', TRUE), Set_Config($1, $2, true)", 0},
    {"SELECT pg_catalog.set_config('search_path', '', true)", 0},
    {"SELECT current_setting('a.b'), my_set_config('a.b', 'x', false)", 0},
    {"SELECT set_config('a.b', 'x', true), set_config('c.d', 'y', false)", PIN},
    /* several statements: the union */
    {"SET a.b = 1; SELECT 1", SET},
    {"SET a.b = 1; CREATE TEMP TABLE x(a int)", SET | PIN},
    {"BEGIN; SET LOCAL a.b = 1; COMMIT", 0},
    /* nothing */
    {"SELECT 1", 0},
    {"INSERT INTO t VALUES (1)", 0},
    {"BEGIN", 0},
    {"", 0},
    {"this is not sql", 0},
    {"SET search_path =", 0},
};

static void test_pool(void **state)
{
	struct fingerprint_info fi;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(pool_cases) / sizeof(pool_cases[0]); i++) {
		fingerprint_compute(pool_cases[i].sql, &fi);
		if (fi.pool != pool_cases[i].pool)
			fail_msg("%s: pool %#x, expected %#x", pool_cases[i].sql, fi.pool,
				 pool_cases[i].pool);
	}
}

/* pool is cached with the rest: a hit returns the bits the miss computed. */
static void test_pool_cached(void **state)
{
	struct fingerprint_cache *c = fingerprint_cache_new(64);
	struct fingerprint_info fi;
	static const char *const texts[][2] = {
	    {"SET statement_timeout = 1000", "SET statement_timeout = 5000"},
	    {"SELECT pg_advisory_lock(1)", "SELECT pg_advisory_lock(2)"},
	    {"SET a.b = 1; CREATE TEMP TABLE x(a int)", "SET a.b = 2; CREATE TEMP TABLE x(a int)"},
	    {"SELECT pg_advisory_xact_lock(1)", "SELECT pg_advisory_xact_lock(2)"},
	    {"SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY",
	     "SET  SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"},
	    {"SELECT set_config('a.b', 'x', true)", "SELECT set_config('a.b', 'y', true)"},
	    {"SELECT set_config('a.b', 'x', false)", "SELECT set_config('a.b', 'y', false)"},
	    /* the strings share a shape, so neither is taken for the constant true */
	    {"SELECT set_config('a.b', 'x', 't'::bool)",
	     "SELECT set_config('a.b', 'x', 'f'::bool)"},
	};
	static const unsigned int want[] = {SET, PIN, SET | PIN, 0, SET, 0, PIN, PIN};
	size_t i, j;

	(void)state;
	assert_non_null(c);
	for (i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
		for (j = 0; j < 2; j++) {
			fingerprint_lookup(c, texts[i][j], strlen(texts[i][j]), &fi);
			if (fi.pool != want[i])
				fail_msg("%s: pool %#x, expected %#x", texts[i][j], fi.pool,
					 want[i]);
		}
		/* the second text hit the first one's entry */
		assert_int_equal(fingerprint_cache_stats(c)->hits, i + 1);
	}
	/* the bits a hit returns are the ones computed */
	fingerprint_compute(texts[2][1], &fi);
	assert_int_equal(fi.pool, SET | PIN);
	fingerprint_cache_free(c);
}

/* head, n times pre, mid, n times post (malloc'd). */
static char *nest(const char *head, const char *pre, const char *mid, const char *post, int n)
{
	size_t lp = strlen(pre), lq = strlen(post);
	char *t = malloc(strlen(head) + strlen(mid) + (size_t)n * (lp + lq) + 1), *o;
	int i;

	assert_non_null(t);
	o = stpcpy(t, head);
	for (i = 0; i < n; i++)
		o = stpcpy(o, pre);
	o = stpcpy(o, mid);
	for (i = 0; i < n; i++)
		o = stpcpy(o, post);
	return t;
}

/* `SELECT 1` and n terms `+a`: 2 levels a term, 10 around them. */
static char *plus_chain(int n)
{
	return nest("SELECT 1", "", "", "+a", n);
}

static void assert_too_deep(const char *sql)
{
	struct fingerprint_info fi;

	fingerprint_compute(sql, &fi);
	if (!fi.too_deep)
		fail_msg("not too deep (parsed %d): %.60s... (%zu bytes)", fi.parsed, sql,
			 strlen(sql));
	assert_false(fi.parsed);
	assert_false(fi.read_only);
	assert_int_equal(fi.classes, 0);
	assert_int_equal(fi.statements, 0);
	assert_int_equal(fi.fingerprint, 0);
	assert_int_equal(fi.nondet, FINGERPRINT_NONDET_UNKNOWN);
	assert_int_equal(fi.pool, 0);
}

static void assert_read(const char *sql, unsigned int nondet)
{
	struct fingerprint_info fi;

	fingerprint_compute(sql, &fi);
	if (!fi.parsed || fi.too_deep)
		fail_msg("not parsed (too deep %d): %.60s... (%zu bytes)", fi.too_deep, sql,
			 strlen(sql));
	assert_true(fi.read_only);
	assert_int_equal(fi.classes, FINGERPRINT_DML);
	assert_int_equal(fi.nondet, nondet);
	assert_true(fi.fingerprint != 0);
}

/*
 * Trees nested deeper than FINGERPRINT_MAX_DEPTH are reported as too deep instead of being
 * unpacked (protobuf-c's unpack overflowed 8 MiB at ~4,400 terms) or, past 4 KiB of text,
 * even parsed into protobuf (libpg_query's packing overflowed at ~24,000 terms).
 */
static void test_deep_chains(void **state)
{
	static const int too_deep[] = {496, 800, 2040, 4400, 50000};
	char *sql;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(too_deep) / sizeof(too_deep[0]); i++) {
		sql = plus_chain(too_deep[i]);
		assert_too_deep(sql);
		free(sql);
	}
	sql = plus_chain(495); /* 1000 levels exactly */
	assert_read(sql, 0);
	free(sql);
	assert_read("SELECT 1+a+a+a+a+a+a+a+a+a+a+a+a+a+a+a+a+a+a+a+a+a+a+a", 0);
}

/* Parenthesised expressions and subqueries; under the limit they are walked to the end. */
static void test_deep_nesting(void **state)
{
	struct fingerprint_info fi;
	char *sql;

	(void)state;
	sql = nest("SELECT ", "a+(", "1", ")", 100);
	assert_read(sql, 0);
	free(sql);
	sql = nest("SELECT ", "a+(", "1", ")", 600); /* 2.4 KB: parsed, then too deep */
	assert_too_deep(sql);
	free(sql);
	sql = nest("SELECT ", "a+(", "1", ")", 3000); /* 12 KB: refused from the JSON */
	assert_too_deep(sql);
	free(sql);
	/* past bison's stack (10,000) PostgreSQL's parser itself gives up */
	sql = nest("SELECT ", "a+(", "1", ")", 5000);
	fingerprint_compute(sql, &fi);
	assert_false(fi.parsed);
	assert_false(fi.too_deep);
	free(sql);

	sql = nest("SELECT ", "(SELECT ", "now()", ")", 150); /* 909 levels */
	assert_read(sql, FINGERPRINT_NONDET_VOLATILE);
	free(sql);
	sql = nest("SELECT ", "(SELECT ", "1", ")", 200);
	assert_too_deep(sql);
	free(sql);
	sql = nest("SELECT ", "(SELECT ", "1", ")", 1000);
	assert_too_deep(sql);
	free(sql);
	sql = nest("SELECT * FROM t WHERE a IN ", "(SELECT a FROM t WHERE a IN ", "(1)", ")", 400);
	assert_too_deep(sql);
	free(sql);
}

/* Whether a text is parsed on the caller's stack (up to 4 KiB) or first into JSON does
 * not change the answer. */
static void test_deep_long_or_short(void **state)
{
	struct fingerprint_info a, b;
	char *pad = nest("", "", "", "/* padding */ ", 400), *sql, *padded;
	int n[] = {400, 495, 496, 600};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(n) / sizeof(n[0]); i++) {
		sql = plus_chain(n[i]);
		padded = malloc(strlen(pad) + strlen(sql) + 1);
		assert_non_null(padded);
		strcpy(stpcpy(padded, pad), sql);
		assert_true(strlen(sql) <= 4096 && strlen(padded) > 4096);
		fingerprint_compute(sql, &a);
		fingerprint_compute(padded, &b);
		if (a.parsed != b.parsed || a.too_deep != b.too_deep || a.nondet != b.nondet ||
		    a.fingerprint != b.fingerprint)
			fail_msg("%d terms: parsed %d/%d too deep %d/%d", n[i], a.parsed, b.parsed,
				 a.too_deep, b.too_deep);
		assert_int_equal(a.too_deep, n[i] > 495);
		free(sql);
		free(padded);
	}
	free(pad);
}

/* Long texts that are not deep are classified as before. */
static void test_long_shallow(void **state)
{
	struct fingerprint_info fi;
	char *sql = nest("INSERT INTO t VALUES (1, 'x', 2.5)", "", "", ", (1, 'x', now())", 2000);

	(void)state;
	fingerprint_compute(sql, &fi);
	assert_true(fi.parsed);
	assert_false(fi.too_deep);
	assert_false(fi.read_only);
	assert_int_equal(fi.classes, FINGERPRINT_DML);
	assert_int_equal(fi.statements, 1);
	assert_int_equal(fi.nondet, FINGERPRINT_NONDET_VOLATILE);
	free(sql);
	sql = nest("SELECT 1 FROM t WHERE ", "", "", "x = 1 OR ", 2000); /* OR is one list */
	sql[strlen(sql) - 4] = '\0';
	assert_read(sql, 0);
	free(sql);
	sql = nest("SELECT 1 FROM t WHERE ", "", "", "x = 1 AND ", 2000);
	strcpy(sql + strlen(sql) - 4, "x ("); /* does not parse */
	fingerprint_compute(sql, &fi);
	assert_false(fi.parsed);
	assert_false(fi.too_deep);
	assert_int_equal(fi.nondet, 0);
	free(sql);
}

static const char *const twenty_lines =
    "WITH recent AS (\n"
    "    SELECT o.customer_id, sum(o.amount) AS total, count(*) AS n\n"
    "    FROM orders o\n"
    "    WHERE o.created_at >= $1 AND o.status IN ('paid', 'shipped')\n"
    "    GROUP BY o.customer_id\n"
    "), ranked AS (\n"
    "    SELECT r.*, rank() OVER (ORDER BY r.total DESC) AS rk\n"
    "    FROM recent r\n"
    ")\n"
    "SELECT c.id, c.name, k.total, k.n,\n"
    "       CASE WHEN k.total > 1000 THEN 'gold'\n"
    "            WHEN k.total > 100 THEN 'silver'\n"
    "            ELSE 'bronze' END AS tier,\n"
    "       coalesce(a.city, '-') AS city\n"
    "FROM ranked k\n"
    "JOIN customers c ON c.id = k.customer_id\n"
    "LEFT JOIN addresses a ON a.customer_id = c.id AND a.kind = 'billing'\n"
    "WHERE k.rk <= 50\n"
    "  AND NOT EXISTS (SELECT 1 FROM blocked b WHERE b.customer_id = c.id)\n"
    "ORDER BY k.total DESC, c.id\n";

static void test_twenty_lines(void **state)
{
	(void)state;
	assert_read(twenty_lines, 0);
}

/* A too deep text is counted apart from parse errors and cached like any other answer. */
static void test_deep_cached(void **state)
{
	struct fingerprint_cache *c = fingerprint_cache_new(64);
	struct fingerprint_info fi;
	char *sql = plus_chain(4400);

	(void)state;
	assert_non_null(c);
	fingerprint_lookup(c, sql, strlen(sql), &fi);
	assert_true(fi.too_deep);
	fingerprint_lookup(c, sql, strlen(sql), &fi);
	assert_true(fi.too_deep);
	assert_false(fi.parsed);
	assert_int_equal(fi.nondet, FINGERPRINT_NONDET_UNKNOWN);
	free(sql);
	sql = plus_chain(600); /* short enough to be keyed by its shape */
	fingerprint_lookup(c, sql, strlen(sql), &fi);
	assert_true(fi.too_deep);
	sql[7] = '2';
	fingerprint_lookup(c, sql, strlen(sql), &fi);
	assert_true(fi.too_deep);
	assert_int_equal(fingerprint_cache_stats(c)->misses, 2);
	assert_int_equal(fingerprint_cache_stats(c)->hits, 2);
	assert_int_equal(fingerprint_cache_stats(c)->too_deep, 2);
	assert_int_equal(fingerprint_cache_stats(c)->parse_errors, 0);
	fingerprint_lookup(c, "SELEKT", 6, &fi);
	assert_int_equal(fingerprint_cache_stats(c)->parse_errors, 1);
	assert_int_equal(fingerprint_cache_stats(c)->too_deep, 2);
	free(sql);
	fingerprint_cache_free(c);
}

/* ---- the wire scanner, on hand-made bytes ---- */

static bool depth_of(const uint8_t *b, size_t len, unsigned int max, unsigned int *depth)
{
	*depth = 0;
	return fingerprint_wire_depth(b, len, max, depth);
}

#define DEPTH(bytes, max, want)                                                                    \
	do {                                                                                       \
		static const uint8_t b_[] = bytes;                                                 \
		unsigned int d_;                                                                   \
                                                                                                   \
		if (!depth_of(b_, sizeof(b_), max, &d_) || d_ != (want))                           \
			fail_msg("line %d: depth %u, want %u", __LINE__, d_,                       \
				 (unsigned int)(want));                                            \
	} while (0)

#define INVALID(bytes)                                                                             \
	do {                                                                                       \
		static const uint8_t b_[] = bytes;                                                 \
		unsigned int d_;                                                                   \
                                                                                                   \
		if (depth_of(b_, sizeof(b_), FINGERPRINT_MAX_DEPTH, &d_))                          \
			fail_msg("line %d: read as a message of depth %u", __LINE__, d_);          \
	} while (0)

#define B(...)                                                                                     \
	{                                                                                          \
		__VA_ARGS__                                                                        \
	}

static void test_wire_fields(void **state)
{
	unsigned int d;

	(void)state;
	assert_true(depth_of((const uint8_t *)"", 0, 10, &d));
	assert_int_equal(d, 1);						 /* empty message */
	DEPTH(B(0x08, 0x96, 0x01), 10, 1);				 /* 1: varint 150 */
	DEPTH(B(0x09, 1, 2, 3, 4, 5, 6, 7, 8, 0x15, 1, 2, 3, 4), 10, 1); /* fixed64, fixed32 */
	DEPTH(B(0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01), 10, 1);
	DEPTH(B(0x80, 0x01, 0x00), 10, 1);		     /* a two-byte tag: field 16 */
	DEPTH(B(0x0a, 0x00), 10, 2);			     /* an empty length-delimited field */
	DEPTH(B(0x0a, 0x04, 0x0a, 0x02, 0x08, 0x01), 10, 3); /* 1 { 1 { 1: 1 } } */
	DEPTH(B(0x0a, 0x02, 0x08, 0x01, 0x12, 0x04, 0x0a, 0x02, 0x08, 0x01), 10, 3);

	INVALID(B(0x08));	/* a tag, no value */
	INVALID(B(0x08, 0x96)); /* truncated varint */
	INVALID(B(0x80));	/* truncated tag */
	INVALID(B(0x08, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01));
	INVALID(B(0x09, 1, 2, 3, 4, 5, 6, 7));		      /* fixed64 cut short */
	INVALID(B(0x15, 1, 2, 3));			      /* fixed32 cut short */
	INVALID(B(0x0a, 0x05, 0x08, 0x01));		      /* a length past the end */
	INVALID(B(0x0a, 0xff, 0xff, 0xff, 0xff, 0x0f, 0x00)); /* a 4 GB length */
	INVALID(B(0x0a));				      /* a length missing */
	INVALID(B(0x00, 0x01));				      /* field number 0 */
	INVALID(B(0x0b, 0x0c));				      /* groups */
	INVALID(B(0x0e, 0x00));				      /* wire type 6 */
	INVALID(B(0x08, 0x01, 0x0f));			      /* wire type 7 after a good field */

	assert_false(fingerprint_wire_depth((const uint8_t *)"", 0, 0, &d));
	assert_false(fingerprint_wire_depth((const uint8_t *)"", 0, FINGERPRINT_MAX_DEPTH + 1, &d));
}

/* A length-delimited field is a message when its bytes read as fields, else a string. */
static void test_wire_strings(void **state)
{
	(void)state;
	/* 2: "hello": 'h' is field 13 varint, 'e' its value, 'l' a group end: a string */
	DEPTH(B(0x12, 5, 'h', 'e', 'l', 'l', 'o'), 10, 1);
	/* 2: "\b\1" happens to read as a message (1: 1): counted, an over-estimate */
	DEPTH(B(0x12, 2, 0x08, 0x01), 10, 2);
	/* a string whose start reads as a deep message, its last byte not: a string, and
	 * what was read inside it does not count */
	DEPTH(B(0x12, 9, 0x0a, 0x06, 0x0a, 0x04, 0x0a, 0x02, 0x08, 0x01, 0x07), 10, 1);
	/* a field inside claims more bytes than its parent has: the parent is a string */
	DEPTH(B(0x0a, 0x03, 0x0a, 0x05, 0x08), 10, 1);
	/* ... and the message's next field is read as usual */
	DEPTH(B(0x0a, 0x03, 0x0a, 0x05, 0x08, 0x12, 0x02, 0x08, 0x01), 10, 2);
	/* a string with a message beside it */
	DEPTH(B(0x12, 3, 'a', 'b', 'c', 0x1a, 0x04, 0x0a, 0x02, 0x08, 0x01), 10, 3);
}

/* Beyond max_depth only whether there is a deeper message matters. */
static void test_wire_limit(void **state)
{
	(void)state;
	DEPTH(B(0x0a, 0x04, 0x0a, 0x02, 0x08, 0x01), 3, 3);
	DEPTH(B(0x0a, 0x04, 0x0a, 0x02, 0x08, 0x01), 2, 3); /* max_depth + 1 */
	DEPTH(B(0x0a, 0x04, 0x0a, 0x02, 0x08, 0x01), 1, 2);
	/* at the limit, a child that is a string is not deeper */
	DEPTH(B(0x0a, 0x04, 0x0a, 0x02, 0x09, 0x07), 2, 2); /* fixed64 cut short */
	DEPTH(B(0x0a, 0x04, 0x0a, 0x02, 0x00, 0x01), 2, 2);
}

/* Writes a message nested n deep (the innermost holds 1: 1) at the end of buf[0..cap);
 * returns where it starts. */
static size_t wire_chain(uint8_t *buf, size_t cap, int n)
{
	size_t p = cap - 2, len;
	uint8_t v[10];
	int i, k;

	buf[p] = 0x08;
	buf[p + 1] = 0x01;
	for (i = 1; i < n; i++) {
		len = cap - p;
		for (k = 0; len >= 0x80; len >>= 7)
			v[k++] = (uint8_t)(len | 0x80);
		v[k++] = (uint8_t)len;
		assert_true(p >= (size_t)k + 1);
		p -= (size_t)k;
		memcpy(buf + p, v, (size_t)k);
		buf[--p] = 0x0a;
	}
	return p;
}

/* Nesting far beyond the limit is read without recursion, in one pass. */
static void test_wire_deep(void **state)
{
	static uint8_t buf[1 << 20];
	unsigned int d;
	size_t p;

	(void)state;
	p = wire_chain(buf, sizeof(buf), 1000);
	assert_true(fingerprint_wire_depth(buf + p, sizeof(buf) - p, FINGERPRINT_MAX_DEPTH, &d));
	assert_int_equal(d, 1000);
	p = wire_chain(buf, sizeof(buf), 1001);
	assert_true(fingerprint_wire_depth(buf + p, sizeof(buf) - p, FINGERPRINT_MAX_DEPTH, &d));
	assert_int_equal(d, FINGERPRINT_MAX_DEPTH + 1);
	p = wire_chain(buf, sizeof(buf), 200000);
	assert_true(fingerprint_wire_depth(buf + p, sizeof(buf) - p, FINGERPRINT_MAX_DEPTH, &d));
	assert_int_equal(d, FINGERPRINT_MAX_DEPTH + 1);
	assert_true(fingerprint_wire_depth(buf + p, sizeof(buf) - p, 7, &d));
	assert_int_equal(d, 8);
	/* the innermost field broken: the innermost level is a string, the one above still a
	 * message (its own field reads) */
	p = wire_chain(buf, sizeof(buf), 1000);
	buf[sizeof(buf) - 2] = 0x07;
	assert_true(fingerprint_wire_depth(buf + p, sizeof(buf) - p, FINGERPRINT_MAX_DEPTH, &d));
	assert_int_equal(d, 999);
	p = wire_chain(buf, sizeof(buf), 200000);
	/* cut short: not a message */
	assert_false(
	    fingerprint_wire_depth(buf + p, sizeof(buf) - p - 1, FINGERPRINT_MAX_DEPTH, &d));
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
	    cmocka_unit_test(test_nondet_cached),
	    cmocka_unit_test(test_pool),
	    cmocka_unit_test(test_pool_cached),
	    cmocka_unit_test(test_deep_chains),
	    cmocka_unit_test(test_deep_nesting),
	    cmocka_unit_test(test_deep_long_or_short),
	    cmocka_unit_test(test_long_shallow),
	    cmocka_unit_test(test_twenty_lines),
	    cmocka_unit_test(test_deep_cached),
	    cmocka_unit_test(test_wire_fields),
	    cmocka_unit_test(test_wire_strings),
	    cmocka_unit_test(test_wire_limit),
	    cmocka_unit_test(test_wire_deep),
	};

	return cmocka_run_group_tests_name("fingerprint", tests, NULL, NULL);
}
