/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * fingerprint: query fingerprints and read/write classification through libpg_query
 * (PostgreSQL's own parser; no hand-written SQL tokenizer), with a bounded cache keyed
 * by a hash of the query text, so each distinct text is parsed once (~2 µs for the
 * fingerprint, more for the parse tree). Kept off the per-request hot path: callers
 * ask only for requests that need it (sampling, filters, mismatch logs).
 *
 * A read is, from the parse tree (DESIGN.md): SELECT without INTO or locking clauses
 * (and without data-modifying WITH), set operations of such SELECTs, VALUES, SHOW, and
 * EXPLAIN without ANALYZE. A text with several statements is a read only if every
 * statement is. Everything else, and anything that does not parse, is a write.
 *
 * Classes (several statements: the union): FINGERPRINT_DML (SELECT, VALUES, INSERT,
 * UPDATE, DELETE, MERGE, COPY, EXPLAIN, CALL, DO, LOCK, cursors), FINGERPRINT_DDL (what
 * defines or changes objects and privileges, TRUNCATE, VACUUM, ANALYZE, REINDEX, CLUSTER,
 * ...), FINGERPRINT_SESSION (changes the session's state: SET/RESET, PREPARE, DEALLOCATE,
 * LISTEN/UNLISTEN, DISCARD, LOAD, CREATE TEMP ..., DECLARE ... WITH HOLD),
 * FINGERPRINT_TXN (BEGIN, COMMIT, ROLLBACK, SAVEPOINT ...), FINGERPRINT_NO_TXN_BLOCK
 * (cannot run inside a transaction block: VACUUM, CREATE/DROP INDEX CONCURRENTLY,
 * REINDEX CONCURRENTLY, CREATE/DROP DATABASE or TABLESPACE, ALTER SYSTEM, CLUSTER without
 * a table, COMMIT/ROLLBACK PREPARED, subscriptions).
 *
 * Non-determinism (nondet, enum fingerprint_nondet bits; several statements: the union):
 * whether the ANSWER may differ between two clusters holding the same data, so comparing
 * the returned rows would report a false mismatch. Read from the same parse tree, by a walk
 * over every node:
 * - FINGERPRINT_NONDET_VOLATILE: a call of now(), random(), setseed, nextval, currval,
 *   lastval, setval, clock_timestamp, statement_timestamp, transaction_timestamp,
 *   timeofday, gen_random_uuid, uuid_generate_v1/v1mc/v4, txid_current[_if_assigned],
 *   txid_current_snapshot, pg_current_xact_id[_if_assigned], pg_current_snapshot,
 *   pg_backend_pid, inet_{server,client}_{addr,port}, pg_postmaster_start_time,
 *   pg_conf_load_time, pg_current_wal_{,insert_,flush_}lsn, version, random_normal, or
 *   age() with one argument (any schema; the last name component, any case); any SQL
 *   value function (CURRENT_TIMESTAMP, CURRENT_DATE, LOCALTIME, ... and also CURRENT_USER,
 *   CURRENT_SCHEMA, CURRENT_CATALOG, SESSION_USER); a string constant the date/time input
 *   reads as the current moment or day ('now', 'today', 'tomorrow', 'yesterday', e.g.
 *   'now'::timestamptz). A column DEFAULT, a function's body and a prepared statement
 *   run by EXECUTE are not in the text and are not seen.
 * - FINGERPRINT_NONDET_ORDER: a SELECT at any level (set operations, subqueries, CTEs,
 *   INSERT ... SELECT) with LIMIT, OFFSET or FETCH FIRST, or with DISTINCT ON, and no ORDER
 *   BY of its own: which rows it keeps is not determined. LIMIT ALL/NULL is no limit; the
 *   SELECT of an EXISTS is exempt (its rows do not matter). An ORDER BY that does not
 *   decide ties, ARRAY(SELECT ...) and array_agg/string_agg/json_agg without ORDER BY are
 *   not detected.
 * - FINGERPRINT_NONDET_TABLESAMPLE: TABLESAMPLE (even REPEATABLE: the pages differ).
 * - FINGERPRINT_NONDET_UNKNOWN: the tree is nested too deep to inspect (see below); treat
 *   as non-deterministic.
 * A text that does not parse has no bits.
 *
 * Pooling (pool, enum fingerprint_pool bits; several statements: the union): what a text
 * does to its session that a mirror connection pooled per transaction must know, because it
 * outlives the transaction:
 * - FINGERPRINT_POOL_SET: a session-level SET or RESET (SET x = y, SET SESSION x, SET TIME
 *   ZONE, SET ROLE, SET SESSION AUTHORIZATION, SET SESSION CHARACTERISTICS AS TRANSACTION,
 *   RESET x, RESET ALL), which another connection can be given by running it again. Not SET
 *   LOCAL (of any of these), SET TRANSACTION [SNAPSHOT], nor the SET of ALTER
 *   ROLE/DATABASE/SYSTEM or of a function's definition.
 * - FINGERPRINT_POOL_DISCARD: DISCARD ALL, which resets everything a session carries (its
 *   settings, and every kind of state that pins).
 * - FINGERPRINT_POOL_PIN: state that cannot move to another connection: a temporary
 *   relation (CREATE TEMP TABLE [AS], SELECT ... INTO TEMP, CREATE TEMP VIEW or SEQUENCE, at
 *   any depth, e.g. under EXPLAIN ANALYZE; also any relation named in a pg_temp schema, and
 *   CREATE FUNCTION or PROCEDURE pg_temp.f), DECLARE ... WITH HOLD, LISTEN, PREPARE, LOAD,
 *   or a call anywhere in the tree of a session-level advisory lock function
 *   (pg_advisory_lock, pg_advisory_lock_shared, pg_try_advisory_lock,
 *   pg_try_advisory_lock_shared; any schema, the last name component, any case; the _xact_
 *   ones end with the transaction and do not pin), or of set_config() (matched the same way)
 *   whose third argument, is_local, is not the constant true as written: false, a parameter,
 *   a column, any expression, a string ('t', 'true'::bool: literal values are not in the
 *   cache key, see below) or a call with other than three arguments. Its setting outlives
 *   the transaction and the text does not say, safely, what to run again. set_config(n, v,
 *   true) is local to the transaction and sets no bits.
 * UNLISTEN, DEALLOCATE and DISCARD set no bits. What a function's body, a DO block or a
 * prepared statement run by EXECUTE does is not seen. A text that does not parse, or is too
 * deep, has no bits: a caller should take too_deep as unknown.
 *
 * Too deep: a parse tree nested more than FINGERPRINT_MAX_DEPTH messages (about 500 levels
 * of SQL expressions: `SELECT 1+a+a+...` of 495 terms, 165 nested subqueries) is not
 * unpacked, because protobuf-c's unpacking recurses once per level and overflows the stack
 * a few thousand levels down (any client could crash the agent with one query). Such a
 * text is reported as too_deep: not parsed (a write, no classes, no fingerprint) with
 * FINGERPRINT_NONDET_UNKNOWN, counted in too_deep rather than parse_errors, and cached like
 * any other answer. fingerprint_wire_depth bounds the nesting without recursion first.
 * libpg_query's own protobuf output recurses as well, and takes time quadratic in the
 * depth: a text longer than 4 KiB is first parsed into JSON (linear) on a stack of its own
 * sized to the text, and refused as too deep from the JSON's nesting (fingerprint.c). A text
 * for which no such stack can be mapped is too deep as well. The JSON parse of a 1 MB
 * text as deep as can be takes ~2 s and ~400 MB at its peak (of a flat one, 0.2 s).
 *
 * The cache is keyed by the text's shape: the text with the contents of its string,
 * number and dollar-quoted literals left out (comments too), so `... WHERE aid = 1` and
 * `... WHERE aid = 2` are parsed once. A literal's value cannot change a statement's
 * kind, with two exceptions handled by not normalising: EXPLAIN's options, and string
 * literals such as 'now' that read as the current time (nondet). Texts the
 * shape lexer does not know well enough (U&'', B'', X'' literals, unterminated quotes)
 * and texts longer than 8 KiB are keyed by their full text.
 *
 * Not thread-safe: one cache per thread (libpg_query keeps per-thread memory).
 */
#ifndef PGSHADOW_FINGERPRINT_H
#define PGSHADOW_FINGERPRINT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum fingerprint_class {
	FINGERPRINT_DML = 1 << 0,
	FINGERPRINT_DDL = 1 << 1,
	FINGERPRINT_SESSION = 1 << 2,
	FINGERPRINT_TXN = 1 << 3,
	FINGERPRINT_NO_TXN_BLOCK = 1 << 4,
};

/* The transaction statement of a text that is exactly one. */
enum fingerprint_txn {
	FINGERPRINT_TXN_NONE = 0,
	FINGERPRINT_TXN_BEGIN,	  /* BEGIN, START TRANSACTION */
	FINGERPRINT_TXN_COMMIT,	  /* COMMIT, END (not COMMIT PREPARED) */
	FINGERPRINT_TXN_ROLLBACK, /* ROLLBACK, ABORT (not ROLLBACK TO, ROLLBACK PREPARED) */
	FINGERPRINT_TXN_OTHER,	  /* SAVEPOINT, RELEASE, ROLLBACK TO, PREPARE TRANSACTION... */
};

/* Why an answer may differ between two clusters with the same data (see above). */
enum fingerprint_nondet {
	FINGERPRINT_NONDET_VOLATILE = 1 << 0,	 /* now(), nextval(), CURRENT_TIMESTAMP, ... */
	FINGERPRINT_NONDET_ORDER = 1 << 1,	 /* LIMIT/OFFSET/DISTINCT ON without ORDER BY */
	FINGERPRINT_NONDET_TABLESAMPLE = 1 << 2, /* TABLESAMPLE */
	FINGERPRINT_NONDET_UNKNOWN = 1 << 3,	 /* too deep to inspect */
};

/* What a text does to its session that a pooled mirror connection must know (bits;
 * several statements: the union). */
enum fingerprint_pool {
	FINGERPRINT_POOL_SET = 1 << 0,	   /* a session-level SET or RESET, SET SESSION
					    * CHARACTERISTICS included (not SET LOCAL, not SET
					    * TRANSACTION): re-applied on another connection */
	FINGERPRINT_POOL_PIN = 1 << 1,	   /* state that cannot move to another connection, a
					    * session-level set_config() included */
	FINGERPRINT_POOL_DISCARD = 1 << 2, /* DISCARD ALL: the session starts over */
};

/* Levels of message nesting a parse tree may have to be unpacked (see above). protobuf-c's
 * unpack takes ~960 bytes of stack a level: at 1000, classifying needs ~0.95 MiB of the
 * caller's stack (the main, capture, thread: 8 MiB by RLIMIT_STACK), where ~8,700 levels
 * crash. */
#define FINGERPRINT_MAX_DEPTH 1000

struct fingerprint_info {
	uint64_t fingerprint; /* libpg_query's fingerprint; 0 when it did not parse */
	bool parsed;	      /* the text parsed (and was not too deep) */
	bool read_only;	      /* every statement is a read (see above) */
	/* a statement calls a function that takes or releases an advisory lock
	 * (pg_advisory_lock, pg_advisory_xact_lock, pg_try_..., pg_advisory_unlock, ...): not
	 * a read. The replay orders it as a write (order.h rule 2): a lock the source granted
	 * after another session's release is asked for on the mirror after that release too.
	 * Ordered as reads, sessions were granted such a lock in another order on the mirror,
	 * each then waiting for the other (one behind the lock, the other behind the
	 * ordering) until the order wait's bound (1 s a transaction). */
	bool advisory;
	/* a statement calls pg_advisory_unlock, _unlock_shared or _unlock_all: as its own
	 * transaction it is a release point keyed on its start, as a COMMIT is (the session
	 * granted the lock may answer before it) */
	bool unlocks;
	uint16_t statements; /* statements in the text */
	uint8_t classes;     /* enum fingerprint_class bits */
	uint8_t txn;	     /* enum fingerprint_txn */
	uint8_t nondet;	     /* enum fingerprint_nondet bits; 0 when it did not parse */
	uint8_t pool;	     /* enum fingerprint_pool bits; 0 when it did not parse */
	bool too_deep;	     /* too deep to inspect (see above): parsed is false */
};

struct fingerprint_stats {
	uint64_t hits, misses, evictions;
	uint64_t parse_errors; /* texts that did not parse (too deep ones aside) */
	uint64_t too_deep;     /* texts nested deeper than FINGERPRINT_MAX_DEPTH */
};

/* Computes the info of one text (NUL-terminated), uncached. */
void fingerprint_compute(const char *text, struct fingerprint_info *out);

/* A cache of at most max_entries texts (rounded up to a multiple of 4). NULL on ENOMEM
 * or max_entries == 0 (EINVAL). */
struct fingerprint_cache *fingerprint_cache_new(uint32_t max_entries);

/* Looks text[0..len) up, computing and remembering it on a miss. text need not be
 * NUL-terminated. */
void fingerprint_lookup(struct fingerprint_cache *c, const char *text, size_t len,
			struct fingerprint_info *out);

const struct fingerprint_stats *fingerprint_cache_stats(const struct fingerprint_cache *c);

/*
 * How deep the protobuf message buf[0..len) nests, read iteratively (no recursion, no
 * allocation, bytes read at most twice). The message itself is level 1. A length-delimited
 * field counts as a nested message when its bytes read completely as fields protobuf-c
 * would accept (so a string that happens to look like a message counts: an over-estimate,
 * never an under-estimate); else it is a string or bytes. Sets *depth to the levels, or to
 * max_depth + 1 when deeper than max_depth. Returns false when buf is not a message, when
 * len > UINT32_MAX, or when max_depth is 0 or more than FINGERPRINT_MAX_DEPTH.
 */
bool fingerprint_wire_depth(const uint8_t *buf, size_t len, unsigned int max_depth,
			    unsigned int *depth) __attribute__((warn_unused_result));

/*
 * text's form for display per statement: every constant replaced by $n (libpg_query's
 * pg_query_normalize), comments and a trailing ';' dropped, runs of whitespace made one
 * space, cut to cap - 1
 * bytes at a character boundary. False when it does not parse or nothing is left. Only
 * for texts with a fingerprint (parsed, not too deep): the normalizer recurses.
 */
bool fingerprint_normalize(const char *text, char *out, size_t cap);

/* NULL-safe. */
void fingerprint_cache_free(struct fingerprint_cache *c);

#endif /* PGSHADOW_FINGERPRINT_H */
