// SPDX-License-Identifier: BSD-2-Clause
/* sampler: transactions (simple Query, Execute sync groups, the first request seen
 * mid-transaction), exposure (0, 1, 0.25 over whole transactions, per session), write
 * safety (COMMIT answered ROLLBACK, failed standalone statements wrapped or skipped),
 * mirror_aborted = skip (hold, release, discard, session end), the level and mode filters
 * and the read flag. Every text is classified by the real fingerprint_compute(). */
#include <ctype.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "fingerprint.h"
#include "sampler.h"

#define GOLDEN 0x9e3779b97f4a7c15ull /* replay_session_open's seed step */

/* fingerprint_compute() once per distinct text: the exposure tests decide 140000 times. */
#define MEMO_MAX 64

static struct {
	const char *sql;
	struct fingerprint_info info;
} memo[MEMO_MAX];
static size_t n_memo;

static const struct fingerprint_info *info_of(const char *sql)
{
	size_t i;

	for (i = 0; i < n_memo; i++)
		if (!strcmp(memo[i].sql, sql))
			return &memo[i].info;
	assert_true(n_memo < MEMO_MAX);
	memo[n_memo].sql = sql;
	fingerprint_compute(sql, &memo[n_memo].info);
	return &memo[n_memo++].info;
}

/* One completed source request, as replay_submit describes it to the sampler. */
struct req {
	enum session_req_kind kind;
	char before;	/* txn_before */
	char after;	/* Query: txn_status */
	uint64_t group; /* Execute: sync_group */
	bool error;
	const char *sqlstate; /* of the error (NULL: none given) */
	const char *tag;      /* NULL: the text's first word, or "" when it failed */
	const char *sql;
};

/* A Query that took the source from status b to a; an Execute of sync group g. */
#define Q(b, a, text)                                                                              \
	((struct req){.kind = SESSION_REQ_QUERY, .before = b, .after = a, .sql = text})
#define QERR(b, a, text)                                                                           \
	((struct req){                                                                             \
	    .kind = SESSION_REQ_QUERY, .before = b, .after = a, .error = true, .sql = text})
#define QTAG(b, a, text, t)                                                                        \
	((struct req){.kind = SESSION_REQ_QUERY, .before = b, .after = a, .tag = t, .sql = text})
#define E(b, g, text)                                                                              \
	((struct req){.kind = SESSION_REQ_EXECUTE, .before = b, .group = g, .sql = text})
#define EERR(b, g, text)                                                                           \
	((struct req){                                                                             \
	    .kind = SESSION_REQ_EXECUTE, .before = b, .group = g, .error = true, .sql = text})
#define ETAG(b, g, text, t)                                                                        \
	((struct req){.kind = SESSION_REQ_EXECUTE, .before = b, .group = g, .tag = t, .sql = text})

static struct sampler_decision decide(const struct sampler_config *cfg, struct sampler_session *ss,
				      struct req r)
{
	struct sampler_request q;
	struct sampler_decision d;
	char tag[64] = "";
	size_t i;

	if (r.tag)
		snprintf(tag, sizeof(tag), "%s", r.tag);
	else if (!r.error)
		for (i = 0; i < sizeof(tag) - 1 && isalpha((unsigned char)r.sql[i]); i++)
			tag[i] = (char)toupper((unsigned char)r.sql[i]);
	memset(&q, 0, sizeof(q));
	q.kind = r.kind;
	q.txn_before = r.before;
	q.txn_after = r.kind == SESSION_REQ_EXECUTE ? 0 : r.after;
	q.sync_group = r.group;
	q.error = r.error;
	q.sqlstate = r.sqlstate;
	q.tag = tag;
	q.info = info_of(r.sql);
	memset(&d, 0x5a, sizeof(d)); /* sampler_decide sets every field */
	sampler_decide(cfg, ss, &q, &d);
	return d;
}

static struct sampler_config config(double exposure)
{
	struct sampler_config c = {
	    .exposure = exposure,
	    .sampling = REPLAY_SAMPLE_TRANSACTION,
	    .level = REPLAY_LEVEL_ALL,
	    .mode = REPLAY_MODE_ALL,
	    .aborted = REPLAY_ABORTED_REPLAY,
	};

	return c;
}

static void session_init(struct sampler_session *ss, uint64_t seed)
{
	memset(ss, 0, sizeof(*ss));
	ss->rng = seed | 1;
}

static const char *verdict_name(enum sampler_verdict v)
{
	return v == SAMPLER_REPLAY ? "replay" : v == SAMPLER_NOT_SAMPLED ? "not_sampled" : "skip";
}

static void check_verdict(const struct sampler_decision *d, enum sampler_verdict want,
			  const char *sql)
{
	if (d->verdict != want)
		fail_msg("%s: verdict %s, want %s", sql, verdict_name(d->verdict),
			 verdict_name(want));
}

static void check_skip(const struct sampler_decision *d, enum stats_skip_reason why,
		       const char *sql)
{
	check_verdict(d, SAMPLER_SKIP, sql);
	if (d->skip != why)
		fail_msg("%s: skip reason %d, want %d (enum stats_skip_reason)", sql, d->skip, why);
}

/* ---- transactions ---- */

static void test_query_transactions(void **state)
{
	struct sampler_config cfg = config(1.0);
	struct sampler_session ss;

	(void)state;
	session_init(&ss, 1);
	/* explicit: BEGIN starts it, everything until the source is idle again belongs */
	assert_true(decide(&cfg, &ss, Q('I', 'T', "BEGIN")).txn_start);
	assert_false(decide(&cfg, &ss, Q('T', 'T', "INSERT INTO t VALUES (1)")).txn_start);
	assert_false(decide(&cfg, &ss, Q('T', 'T', "SELECT * FROM t")).txn_start);
	assert_false(decide(&cfg, &ss, Q('T', 'I', "COMMIT")).txn_start);
	/* autocommit: each statement is its own transaction */
	assert_true(decide(&cfg, &ss, Q('I', 'I', "INSERT INTO t VALUES (1)")).txn_start);
	assert_true(decide(&cfg, &ss, Q('I', 'I', "SELECT * FROM t")).txn_start);
	assert_true(decide(&cfg, &ss, QERR('I', 'I', "INSERT INTO t VALUES (1)")).txn_start);
	/* failed inside, then rolled back */
	assert_true(decide(&cfg, &ss, Q('I', 'T', "BEGIN")).txn_start);
	assert_false(decide(&cfg, &ss, QERR('T', 'E', "INSERT INTO t VALUES (1)")).txn_start);
	assert_false(decide(&cfg, &ss, QERR('E', 'E', "SELECT * FROM t")).txn_start);
	assert_false(decide(&cfg, &ss, Q('E', 'I', "ROLLBACK")).txn_start);
	assert_true(decide(&cfg, &ss, Q('I', 'I', "SELECT * FROM t")).txn_start);

	/* nothing seen before (txn_before 0): idle */
	session_init(&ss, 2);
	assert_true(decide(&cfg, &ss, Q(0, 'I', "SELECT 1")).txn_start);
	assert_true(decide(&cfg, &ss, Q('I', 'I', "SELECT 1")).txn_start);
}

static void test_execute_sync_groups(void **state)
{
	struct sampler_config cfg = config(1.0);
	struct sampler_session ss;

	(void)state;
	session_init(&ss, 1);
	/* several Executes before one Sync: one implicit transaction */
	assert_true(decide(&cfg, &ss, E('I', 1, "INSERT INTO t VALUES ($1)")).txn_start);
	assert_false(decide(&cfg, &ss, E('I', 1, "UPDATE t SET a = $1")).txn_start);
	assert_false(decide(&cfg, &ss, E('I', 1, "SELECT * FROM t")).txn_start);
	/* a new group starts a new one */
	assert_true(decide(&cfg, &ss, E('I', 2, "UPDATE t SET a = $1")).txn_start);
	assert_false(decide(&cfg, &ss, E('I', 2, "SELECT * FROM t")).txn_start);
	assert_true(decide(&cfg, &ss, E('I', 3, "SELECT * FROM t")).txn_start);
	/* a Query after them, and Executes after the Query */
	assert_true(decide(&cfg, &ss, Q('I', 'I', "SELECT 1")).txn_start);
	assert_true(decide(&cfg, &ss, E('I', 4, "SELECT * FROM t")).txn_start);
	assert_false(decide(&cfg, &ss, E('I', 4, "SELECT * FROM t")).txn_start);

	/* explicit through the extended protocol, one Sync per statement */
	assert_true(decide(&cfg, &ss, E('I', 5, "BEGIN")).txn_start);
	assert_false(decide(&cfg, &ss, E('T', 6, "INSERT INTO t VALUES ($1)")).txn_start);
	assert_false(decide(&cfg, &ss, E('T', 7, "COMMIT")).txn_start);
	assert_true(decide(&cfg, &ss, E('I', 8, "SELECT * FROM t")).txn_start);
	/* BEGIN pipelined with the statements after it */
	assert_true(decide(&cfg, &ss, E('I', 9, "BEGIN")).txn_start);
	assert_false(decide(&cfg, &ss, E('I', 9, "INSERT INTO t VALUES ($1)")).txn_start);
	assert_false(decide(&cfg, &ss, E('T', 10, "COMMIT")).txn_start);
	assert_true(decide(&cfg, &ss, E('I', 11, "SELECT * FROM t")).txn_start);
}

static void test_first_request_mid_transaction(void **state)
{
	struct sampler_config cfg = config(1.0);
	struct sampler_config none = config(0.0);
	struct sampler_session ss;
	struct sampler_decision d;

	(void)state;
	/* capture began inside a transaction: its first request starts one (dice rolled) */
	session_init(&ss, 1);
	d = decide(&cfg, &ss, Q('T', 'T', "UPDATE t SET a = 1"));
	assert_true(d.txn_start);
	check_verdict(&d, SAMPLER_REPLAY, "UPDATE t SET a = 1");
	assert_false(decide(&cfg, &ss, Q('T', 'T', "SELECT * FROM t")).txn_start);
	assert_false(decide(&cfg, &ss, Q('T', 'I', "COMMIT")).txn_start);
	assert_true(decide(&cfg, &ss, Q('I', 'I', "SELECT * FROM t")).txn_start);

	session_init(&ss, 2);
	d = decide(&none, &ss, Q('T', 'T', "UPDATE t SET a = 1"));
	assert_true(d.txn_start);
	check_verdict(&d, SAMPLER_NOT_SAMPLED, "UPDATE t SET a = 1");
	d = decide(&none, &ss, Q('T', 'I', "COMMIT"));
	check_verdict(&d, SAMPLER_NOT_SAMPLED, "COMMIT");

	/* the same through Executes */
	session_init(&ss, 3);
	assert_true(decide(&cfg, &ss, E('T', 1, "UPDATE t SET a = $1")).txn_start);
	assert_false(decide(&cfg, &ss, E('T', 2, "SELECT * FROM t")).txn_start);
	assert_false(decide(&cfg, &ss, E('T', 3, "COMMIT")).txn_start);
	assert_true(decide(&cfg, &ss, E('I', 4, "SELECT * FROM t")).txn_start);
}

/* ---- exposure ---- */

static const struct {
	struct req r;
	bool session_state; /* replayed even when not sampled */
} mix[] = {
    {Q('I', 'I', "SET search_path = public"), true},
    {Q('I', 'I', "SELECT 1"), false},
    {Q('I', 'T', "BEGIN"), false},
    {Q('T', 'T', "PREPARE p AS SELECT 1"), true},
    {Q('T', 'T', "CREATE TEMP TABLE tt (a int)"), true},
    {Q('T', 'T', "INSERT INTO t VALUES (1)"), false},
    {Q('T', 'T', "LISTEN ch"), true},
    {Q('T', 'I', "COMMIT"), false},
    {E('I', 1, "UPDATE t SET a = $1"), false},
    {E('I', 1, "SET search_path = public"), true},
    {E('I', 2, "SELECT * FROM t"), false},
    {Q('I', 'I', "CREATE TABLE t2 (a int)"), false},
    {Q('I', 'I', "VACUUM t"), false},
    {Q('I', 'T', "BEGIN"), false},
    {Q('T', 'T', "SELECT * FROM t FOR UPDATE"), false},
    {Q('T', 'I', "ROLLBACK"), false},
};

/* exposure 0 or 1, both sampling kinds, many seeds: never a coin that lands otherwise */
static void run_mix(double exposure)
{
	struct sampler_config cfg = config(exposure);
	struct sampler_session ss;
	struct sampler_decision d;
	uint64_t seed = 0;
	size_t i;
	int s, n;

	for (s = 0; s < 2; s++) {
		cfg.sampling = s ? REPLAY_SAMPLE_SESSION : REPLAY_SAMPLE_TRANSACTION;
		for (n = 0; n < 500; n++) {
			seed += GOLDEN;
			session_init(&ss, seed);
			for (i = 0; i < sizeof(mix) / sizeof(mix[0]); i++) {
				d = decide(&cfg, &ss, mix[i].r);
				check_verdict(&d,
					      exposure > 0 || mix[i].session_state
						  ? SAMPLER_REPLAY
						  : SAMPLER_NOT_SAMPLED,
					      mix[i].r.sql);
			}
		}
	}
}

static void test_exposure_zero_keeps_session_state(void **state)
{
	(void)state;
	run_mix(0.0);
}

static void test_exposure_one_replays_everything(void **state)
{
	(void)state;
	run_mix(1.0);
}

/* |got/n - p| within 4 standard deviations of a binomial(n, p) fraction */
static void check_fraction(unsigned int got, unsigned int n, double p)
{
	double frac = (double)got / n, dev = frac - p;

	if (dev * dev > 16 * p * (1 - p) / n)
		fail_msg("sampled %u of %u (%.4f), want %.4f within 4 sd", got, n, frac, p);
}

/* 7 statements: BEGIN, five TPC-B-like statements, COMMIT — or 7 Executes of one Sync */
static const char *const tpcb[] = {
    "UPDATE pgbench_accounts SET abalance = abalance + $1 WHERE aid = $2",
    "SELECT abalance FROM pgbench_accounts WHERE aid = $1",
    "UPDATE pgbench_tellers SET tbalance = tbalance + $1 WHERE tid = $2",
    "UPDATE pgbench_branches SET bbalance = bbalance + $1 WHERE bid = $2",
    "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES ($1, $2, $3, $4, now())",
};

static struct req tpcb_step(unsigned int t, unsigned int i)
{
	if (t % 2)
		return E('I', t, i < 5 ? tpcb[i] : "SELECT 1");
	if (i == 0)
		return Q('I', 'T', "BEGIN");
	if (i == 6)
		return Q('T', 'I', "COMMIT");
	return Q('T', 'T', tpcb[i - 1]);
}

static void test_exposure_quarter_whole_transactions(void **state)
{
	struct sampler_config cfg = config(0.25);
	struct sampler_session ss;
	struct sampler_decision d;
	enum sampler_verdict first = SAMPLER_REPLAY;
	unsigned int t, i, sampled = 0, runs = 0;
	bool prev = false;

	(void)state;
	session_init(&ss, GOLDEN);
	for (t = 0; t < 20000; t++) {
		for (i = 0; i < 7; i++) {
			d = decide(&cfg, &ss, tpcb_step(t, i));
			if (d.txn_start != (i == 0))
				fail_msg("transaction %u statement %u: txn_start %d", t, i,
					 d.txn_start);
			if (i == 0)
				first = d.verdict;
			else if (d.verdict != first)
				fail_msg("transaction %u cut in half at statement %u", t, i);
		}
		if (first == SAMPLER_REPLAY)
			sampled++;
		else
			assert_int_equal(first, SAMPLER_NOT_SAMPLED);
		/* decided per transaction, not once: both outcomes follow each other */
		if (t && (first == SAMPLER_REPLAY) != prev)
			runs++;
		prev = first == SAMPLER_REPLAY;
	}
	check_fraction(sampled, 20000, 0.25);
	assert_true(runs > 1000);
}

static void test_sampling_session(void **state)
{
	struct sampler_config cfg = config(0.25);
	struct sampler_session ss;
	struct sampler_decision d;
	enum sampler_verdict first;
	unsigned int n, t, i, sampled = 0;
	uint64_t seed = 0;

	(void)state;
	cfg.sampling = REPLAY_SAMPLE_SESSION;
	for (n = 0; n < 4000; n++) {
		seed += GOLDEN;
		session_init(&ss, seed);
		first = decide(&cfg, &ss, Q('I', 'I', "SELECT 1")).verdict;
		for (t = 0; t < 8; t++)
			for (i = 0; i < 7; i++) {
				d = decide(&cfg, &ss, tpcb_step(t, i));
				if (d.verdict != first)
					fail_msg("session %u: transaction %u differs", n, t);
			}
		/* session state is replayed whatever the session's decision */
		d = decide(&cfg, &ss, Q('I', 'I', "SET search_path = public"));
		check_verdict(&d, SAMPLER_REPLAY, "SET search_path = public");
		if (first == SAMPLER_REPLAY)
			sampled++;
		else
			assert_int_equal(first, SAMPLER_NOT_SAMPLED);
	}
	check_fraction(sampled, 4000, 0.25);
}

/* ---- write safety ---- */

static void test_commit_answered_rollback(void **state)
{
	struct sampler_config cfg = config(1.0);
	struct sampler_session ss;
	struct sampler_decision d;

	(void)state;
	session_init(&ss, 1);
	decide(&cfg, &ss, Q('I', 'T', "BEGIN"));
	decide(&cfg, &ss, QERR('T', 'E', "INSERT INTO t VALUES (1)"));
	d = decide(&cfg, &ss, QTAG('E', 'I', "COMMIT", "ROLLBACK"));
	check_verdict(&d, SAMPLER_REPLAY, "COMMIT");
	assert_true(d.as_rollback);
	assert_false(d.wrap);

	decide(&cfg, &ss, Q('I', 'T', "BEGIN"));
	decide(&cfg, &ss, QERR('T', 'E', "INSERT INTO t VALUES (1)"));
	assert_true(decide(&cfg, &ss, QTAG('E', 'I', "END", "ROLLBACK")).as_rollback);

	/* a COMMIT answered COMMIT is sent as it is */
	decide(&cfg, &ss, Q('I', 'T', "BEGIN"));
	decide(&cfg, &ss, Q('T', 'T', "INSERT INTO t VALUES (1)"));
	d = decide(&cfg, &ss, QTAG('T', 'I', "COMMIT", "COMMIT"));
	assert_false(d.as_rollback);
	assert_false(d.wrap);

	/* extended protocol */
	decide(&cfg, &ss, E('I', 1, "BEGIN"));
	decide(&cfg, &ss, EERR('T', 2, "INSERT INTO t VALUES ($1)"));
	d = decide(&cfg, &ss, ETAG('E', 3, "COMMIT", "ROLLBACK"));
	check_verdict(&d, SAMPLER_REPLAY, "COMMIT");
	assert_true(d.as_rollback);
}

/* A COMMIT that failed (a deferred constraint fired) rolled the transaction back on the
 * source, which answered ErrorResponse and no tag: the mirror must not commit it. */
static void test_failed_commit_replayed_as_rollback(void **state)
{
	struct sampler_config cfg = config(1.0);
	struct sampler_session ss;
	struct sampler_decision d;

	(void)state;
	session_init(&ss, 1);
	decide(&cfg, &ss, Q('I', 'T', "BEGIN"));
	decide(&cfg, &ss, Q('T', 'T', "INSERT INTO t VALUES (1)"));
	d = decide(&cfg, &ss, QERR('T', 'I', "COMMIT"));
	check_verdict(&d, SAMPLER_REPLAY, "COMMIT");
	assert_true(d.as_rollback);
	assert_false(d.wrap);

	decide(&cfg, &ss, E('I', 1, "BEGIN"));
	decide(&cfg, &ss, E('T', 2, "INSERT INTO t VALUES ($1)"));
	d = decide(&cfg, &ss, EERR('T', 3, "COMMIT"));
	check_verdict(&d, SAMPLER_REPLAY, "COMMIT");
	assert_true(d.as_rollback);
}

static void test_failed_standalone_wrapped(void **state)
{
	struct sampler_config cfg = config(1.0);
	struct sampler_session ss;
	struct sampler_decision d;

	(void)state;
	session_init(&ss, 1);
	d = decide(&cfg, &ss, QERR('I', 'I', "INSERT INTO t VALUES (1)"));
	check_verdict(&d, SAMPLER_REPLAY, "INSERT");
	assert_true(d.wrap);
	assert_false(d.as_rollback);

	d = decide(&cfg, &ss, EERR('I', 1, "INSERT INTO t VALUES ($1)"));
	check_verdict(&d, SAMPLER_REPLAY, "INSERT");
	assert_true(d.wrap);

	d = decide(&cfg, &ss, QERR('I', 'I', "SELECT 1/0"));
	check_verdict(&d, SAMPLER_REPLAY, "SELECT 1/0");
	assert_true(d.wrap);

	/* the first request of the session */
	session_init(&ss, 2);
	assert_true(decide(&cfg, &ss, QERR(0, 'I', "INSERT INTO t VALUES (1)")).wrap);

	/* succeeded: sent as it is */
	assert_false(decide(&cfg, &ss, Q('I', 'I', "INSERT INTO t VALUES (1)")).wrap);
	assert_false(decide(&cfg, &ss, E('I', 2, "INSERT INTO t VALUES ($1)")).wrap);
}

static void test_failed_in_explicit_txn_not_wrapped(void **state)
{
	struct sampler_config cfg = config(1.0);
	struct sampler_session ss;
	struct sampler_decision d;

	(void)state;
	session_init(&ss, 1);
	assert_false(decide(&cfg, &ss, Q('I', 'T', "BEGIN")).wrap);
	d = decide(&cfg, &ss, QERR('T', 'E', "INSERT INTO t VALUES (1)"));
	check_verdict(&d, SAMPLER_REPLAY, "INSERT");
	assert_false(d.wrap);
	d = decide(&cfg, &ss, QTAG('E', 'I', "COMMIT", "ROLLBACK"));
	assert_false(d.wrap);
	assert_true(d.as_rollback);

	decide(&cfg, &ss, Q('I', 'T', "BEGIN"));
	decide(&cfg, &ss, Q('T', 'T', "INSERT INTO t VALUES (1)"));
	assert_false(decide(&cfg, &ss, QERR('T', 'E', "UPDATE t SET a = 1")).wrap);
	assert_false(decide(&cfg, &ss, Q('E', 'I', "ROLLBACK")).wrap);

	/* extended protocol: after a BEGIN of its own Sync, and in the same Sync */
	decide(&cfg, &ss, E('I', 1, "BEGIN"));
	assert_false(decide(&cfg, &ss, EERR('T', 2, "INSERT INTO t VALUES ($1)")).wrap);
	decide(&cfg, &ss, Q('E', 'I', "ROLLBACK"));
	decide(&cfg, &ss, E('I', 3, "BEGIN"));
	assert_false(decide(&cfg, &ss, EERR('I', 3, "INSERT INTO t VALUES ($1)")).wrap);
	decide(&cfg, &ss, Q('E', 'I', "ROLLBACK"));

	/* a Query that opened the transaction itself and failed in it: left open ('E') */
	d = decide(&cfg, &ss, QERR('I', 'E', "BEGIN; INSERT INTO t VALUES (1)"));
	check_verdict(&d, SAMPLER_REPLAY, "BEGIN; INSERT");
	assert_false(d.wrap);
	decide(&cfg, &ss, Q('E', 'I', "ROLLBACK"));

	/* the first request seen, mid-transaction */
	session_init(&ss, 2);
	assert_false(decide(&cfg, &ss, QERR('T', 'E', "INSERT INTO t VALUES (1)")).wrap);
}

/* A deadlock victim, a serialization failure, a lock not available: the source's
 * concurrency, not the statement, made them fail. Raised on the mirror, not run; its
 * abort releases locks, so it is not a read. Any other error runs the statement. */
static void test_concurrency_error_raised(void **state)
{
	struct sampler_config cfg = config(1.0);
	struct sampler_session ss;
	struct sampler_decision d;
	struct req q;

	(void)state;
	session_init(&ss, 1);
	decide(&cfg, &ss, Q('I', 'T', "BEGIN"));
	q = QERR('T', 'E', "UPDATE t SET a = 1 WHERE id = 2");
	q.sqlstate = "40P01";
	d = decide(&cfg, &ss, q);
	check_verdict(&d, SAMPLER_REPLAY, q.sql);
	assert_non_null(d.raise);
	assert_string_equal(d.raise, "40P01");
	assert_false(d.read);
	assert_false(d.wrap);
	assert_null(decide(&cfg, &ss, Q('E', 'I', "ROLLBACK")).raise);

	/* a read in a serializable transaction, an Execute */
	decide(&cfg, &ss, E('I', 1, "BEGIN ISOLATION LEVEL SERIALIZABLE"));
	q = EERR('T', 2, "SELECT sum(a) FROM t");
	q.sqlstate = "40001";
	d = decide(&cfg, &ss, q);
	assert_string_equal(d.raise, "40001");
	assert_false(d.read);
	decide(&cfg, &ss, Q('E', 'I', "ROLLBACK"));

	/* NOWAIT on its own: raised, inside BEGIN ... ROLLBACK as every failed one */
	q = QERR('I', 'I', "SELECT * FROM t WHERE id = 1 FOR UPDATE NOWAIT");
	q.sqlstate = "55P03";
	d = decide(&cfg, &ss, q);
	assert_string_equal(d.raise, "55P03");
	assert_true(d.wrap);

	/* errors of the statement itself run it: the mirror must show the same */
	q = QERR('I', 'I', "INSERT INTO t VALUES (1)");
	q.sqlstate = "23505";
	assert_null(decide(&cfg, &ss, q).raise);
	q = QERR('I', 'I', "SELECT 1/0");
	assert_null(decide(&cfg, &ss, q).raise); /* no SQLSTATE known */
	/* a Query of two statements: which one failed is not known */
	q = QERR('I', 'I', "UPDATE t SET a = 1; UPDATE t SET a = 2");
	q.sqlstate = "40P01";
	assert_null(decide(&cfg, &ss, q).raise);
}

static void test_failed_no_txn_block_skipped(void **state)
{
	static const char *const texts[] = {"VACUUM t", "CREATE INDEX CONCURRENTLY i ON t (a)"};
	struct sampler_config cfg = config(1.0);
	struct sampler_session ss;
	struct sampler_decision d;
	size_t i;

	(void)state;
	session_init(&ss, 1);
	for (i = 0; i < 2; i++) {
		d = decide(&cfg, &ss, QERR('I', 'I', texts[i]));
		check_skip(&d, STATS_SKIP_NO_TRANSACTION, texts[i]);
		assert_false(d.wrap);
		d = decide(&cfg, &ss, EERR('I', 10 + i, texts[i]));
		check_skip(&d, STATS_SKIP_NO_TRANSACTION, texts[i]);
		/* succeeded: replayed as it is */
		d = decide(&cfg, &ss, Q('I', 'I', texts[i]));
		check_verdict(&d, SAMPLER_REPLAY, texts[i]);
		assert_false(d.wrap);
	}
}

/* sampler.h: a failed standalone statement that controls transactions itself is skipped
 * too (no BEGIN ... ROLLBACK can hold it). */
static void test_failed_standalone_txn_control_skipped(void **state)
{
	static const char *const texts[] = {"SAVEPOINT a", "COMMIT PREPARED 'x'",
					    "ROLLBACK PREPARED 'x'"};
	struct sampler_config cfg = config(1.0);
	struct sampler_session ss;
	struct sampler_decision d;
	size_t i;

	(void)state;
	session_init(&ss, 1);
	for (i = 0; i < sizeof(texts) / sizeof(texts[0]); i++) {
		d = decide(&cfg, &ss, QERR('I', 'I', texts[i]));
		check_skip(&d, STATS_SKIP_NO_TRANSACTION, texts[i]);
		assert_false(d.wrap);
		d = decide(&cfg, &ss, EERR('I', 10 + i, texts[i]));
		check_skip(&d, STATS_SKIP_NO_TRANSACTION, texts[i]);
	}
	/* inside an explicit transaction: replayed, the mirror fails the same way */
	decide(&cfg, &ss, Q('I', 'T', "BEGIN"));
	d = decide(&cfg, &ss, QERR('T', 'E', "RELEASE a"));
	check_verdict(&d, SAMPLER_REPLAY, "RELEASE a");
	assert_false(d.wrap);
}

/* ---- mirror_aborted = skip ---- */

static void expect_flush(const struct sampler_decision *d, enum sampler_flush before, bool hold,
			 enum sampler_flush after, const char *what)
{
	if (d->before != before || d->hold != hold || d->after != after)
		fail_msg("%s: before %d hold %d after %d, want %d %d %d", what, d->before, d->hold,
			 d->after, before, hold, after);
}

static void test_aborted_skip_query(void **state)
{
	struct sampler_config cfg = config(1.0);
	struct sampler_session ss;
	struct sampler_decision d;

	(void)state;
	cfg.aborted = REPLAY_ABORTED_SKIP;
	session_init(&ss, 1);
	/* committed: held until the COMMIT, then released */
	d = decide(&cfg, &ss, Q('I', 'T', "BEGIN"));
	expect_flush(&d, SAMPLER_KEEP, true, SAMPLER_KEEP, "BEGIN");
	d = decide(&cfg, &ss, Q('T', 'T', "INSERT INTO t VALUES (1)"));
	expect_flush(&d, SAMPLER_KEEP, true, SAMPLER_KEEP, "INSERT");
	d = decide(&cfg, &ss, QTAG('T', 'I', "COMMIT", "COMMIT"));
	expect_flush(&d, SAMPLER_KEEP, true, SAMPLER_RELEASE, "COMMIT");
	/* autocommit that succeeded */
	d = decide(&cfg, &ss, Q('I', 'I', "INSERT INTO t VALUES (1)"));
	expect_flush(&d, SAMPLER_KEEP, true, SAMPLER_RELEASE, "autocommit INSERT");

	/* rolled back */
	decide(&cfg, &ss, Q('I', 'T', "BEGIN"));
	decide(&cfg, &ss, Q('T', 'T', "INSERT INTO t VALUES (1)"));
	d = decide(&cfg, &ss, Q('T', 'I', "ROLLBACK"));
	expect_flush(&d, SAMPLER_KEEP, true, SAMPLER_DISCARD, "ROLLBACK");
	/* COMMIT answered ROLLBACK */
	decide(&cfg, &ss, Q('I', 'T', "BEGIN"));
	decide(&cfg, &ss, QERR('T', 'E', "INSERT INTO t VALUES (1)"));
	d = decide(&cfg, &ss, QTAG('E', 'I', "COMMIT", "ROLLBACK"));
	expect_flush(&d, SAMPLER_KEEP, true, SAMPLER_DISCARD, "COMMIT answered ROLLBACK");
	/* a failed autocommit statement */
	d = decide(&cfg, &ss, QERR('I', 'I', "INSERT INTO t VALUES (1)"));
	expect_flush(&d, SAMPLER_KEEP, true, SAMPLER_DISCARD, "failed autocommit INSERT");
	/* and the next one starts clean */
	d = decide(&cfg, &ss, Q('I', 'I', "SELECT 1"));
	expect_flush(&d, SAMPLER_KEEP, true, SAMPLER_RELEASE, "SELECT 1");
	/* a savepoint rolled back to does not abort the transaction */
	decide(&cfg, &ss, Q('I', 'T', "BEGIN"));
	decide(&cfg, &ss, Q('T', 'T', "SAVEPOINT a"));
	decide(&cfg, &ss, QERR('T', 'E', "INSERT INTO t VALUES (1)"));
	decide(&cfg, &ss, Q('E', 'T', "ROLLBACK TO a"));
	d = decide(&cfg, &ss, QTAG('T', 'I', "COMMIT", "COMMIT"));
	expect_flush(&d, SAMPLER_KEEP, true, SAMPLER_RELEASE, "COMMIT after ROLLBACK TO");
}

static void test_aborted_skip_execute(void **state)
{
	struct sampler_config cfg = config(1.0);
	struct sampler_session ss;
	struct sampler_decision d;

	(void)state;
	cfg.aborted = REPLAY_ABORTED_SKIP;
	session_init(&ss, 1);
	/* an implicit transaction ends at its Sync: known at the next transaction's start */
	d = decide(&cfg, &ss, E('I', 1, "INSERT INTO t VALUES ($1)"));
	expect_flush(&d, SAMPLER_KEEP, true, SAMPLER_KEEP, "group 1 #1");
	d = decide(&cfg, &ss, E('I', 1, "UPDATE t SET a = $1"));
	expect_flush(&d, SAMPLER_KEEP, true, SAMPLER_KEEP, "group 1 #2");
	d = decide(&cfg, &ss, E('I', 2, "SELECT * FROM t"));
	expect_flush(&d, SAMPLER_RELEASE, true, SAMPLER_KEEP, "group 2");
	d = decide(&cfg, &ss, E('I', 3, "INSERT INTO t VALUES ($1)"));
	expect_flush(&d, SAMPLER_RELEASE, true, SAMPLER_KEEP, "group 3 #1");
	d = decide(&cfg, &ss, EERR('I', 3, "INSERT INTO t VALUES ($1)"));
	expect_flush(&d, SAMPLER_KEEP, true, SAMPLER_KEEP, "group 3 #2 failed");
	d = decide(&cfg, &ss, E('I', 4, "SELECT * FROM t"));
	expect_flush(&d, SAMPLER_DISCARD, true, SAMPLER_KEEP, "group 4");
	/* a Query after an Execute */
	d = decide(&cfg, &ss, Q('I', 'I', "SELECT 1"));
	expect_flush(&d, SAMPLER_RELEASE, true, SAMPLER_RELEASE, "Query after group 4");

	/* explicit through Executes: committed */
	d = decide(&cfg, &ss, E('I', 5, "BEGIN"));
	expect_flush(&d, SAMPLER_KEEP, true, SAMPLER_KEEP, "BEGIN");
	decide(&cfg, &ss, E('T', 6, "INSERT INTO t VALUES ($1)"));
	d = decide(&cfg, &ss, ETAG('T', 7, "COMMIT", "COMMIT"));
	expect_flush(&d, SAMPLER_KEEP, true, SAMPLER_KEEP, "COMMIT");
	d = decide(&cfg, &ss, E('I', 8, "SELECT * FROM t"));
	expect_flush(&d, SAMPLER_RELEASE, true, SAMPLER_KEEP, "after COMMIT");
	/* answered ROLLBACK */
	decide(&cfg, &ss, E('I', 9, "BEGIN"));
	decide(&cfg, &ss, EERR('T', 10, "INSERT INTO t VALUES ($1)"));
	decide(&cfg, &ss, ETAG('E', 11, "COMMIT", "ROLLBACK"));
	d = decide(&cfg, &ss, E('I', 12, "SELECT * FROM t"));
	expect_flush(&d, SAMPLER_DISCARD, true, SAMPLER_KEEP, "after COMMIT answered ROLLBACK");
	/* rolled back */
	decide(&cfg, &ss, E('I', 13, "BEGIN"));
	decide(&cfg, &ss, E('T', 14, "INSERT INTO t VALUES ($1)"));
	decide(&cfg, &ss, E('T', 15, "ROLLBACK"));
	d = decide(&cfg, &ss, E('I', 16, "SELECT * FROM t"));
	expect_flush(&d, SAMPLER_DISCARD, true, SAMPLER_KEEP, "after ROLLBACK");
}

static void test_aborted_skip_holds_only_replayed(void **state)
{
	struct sampler_config cfg = config(0.0);
	struct sampler_session ss;
	struct sampler_decision d;

	(void)state;
	cfg.aborted = REPLAY_ABORTED_SKIP;
	session_init(&ss, 1);
	d = decide(&cfg, &ss, Q('I', 'T', "BEGIN"));
	check_verdict(&d, SAMPLER_NOT_SAMPLED, "BEGIN");
	assert_false(d.hold);
	d = decide(&cfg, &ss, Q('T', 'T', "SET search_path = public"));
	check_verdict(&d, SAMPLER_REPLAY, "SET");
	assert_true(d.hold);
	d = decide(&cfg, &ss, Q('T', 'I', "ROLLBACK"));
	assert_false(d.hold);
	assert_int_equal(d.after, SAMPLER_DISCARD); /* the SET was rolled back too */

	cfg.exposure = 1.0;
	cfg.level = REPLAY_LEVEL_DML;
	d = decide(&cfg, &ss, Q('I', 'I', "CREATE TABLE t2 (a int)"));
	check_verdict(&d, SAMPLER_SKIP, "CREATE TABLE");
	assert_false(d.hold);
	d = decide(&cfg, &ss, QERR('I', 'I', "VACUUM t"));
	check_verdict(&d, SAMPLER_SKIP, "VACUUM");
	assert_false(d.hold);

	/* mirror_aborted = replay holds nothing */
	cfg = config(1.0);
	session_init(&ss, 2);
	assert_false(decide(&cfg, &ss, Q('I', 'T', "BEGIN")).hold);
	assert_false(decide(&cfg, &ss, Q('T', 'T', "INSERT INTO t VALUES (1)")).hold);
	assert_false(decide(&cfg, &ss, Q('T', 'I', "COMMIT")).hold);
	assert_false(decide(&cfg, &ss, E('I', 1, "INSERT INTO t VALUES ($1)")).hold);
}

static void test_session_end(void **state)
{
	struct sampler_config cfg = config(1.0);
	struct sampler_session ss;

	(void)state;
	cfg.aborted = REPLAY_ABORTED_SKIP;
	session_init(&ss, 1);
	assert_int_equal(sampler_session_end(&ss), SAMPLER_KEEP); /* nothing seen */

	/* an explicit transaction left open rolled back */
	decide(&cfg, &ss, Q('I', 'T', "BEGIN"));
	decide(&cfg, &ss, Q('T', 'T', "INSERT INTO t VALUES (1)"));
	assert_int_equal(sampler_session_end(&ss), SAMPLER_DISCARD);
	assert_int_equal(sampler_session_end(&ss), SAMPLER_KEEP); /* once */

	session_init(&ss, 2);
	decide(&cfg, &ss, E('I', 1, "BEGIN"));
	decide(&cfg, &ss, E('T', 2, "INSERT INTO t VALUES ($1)"));
	assert_int_equal(sampler_session_end(&ss), SAMPLER_DISCARD);

	session_init(&ss, 3); /* first seen mid-transaction */
	decide(&cfg, &ss, Q('T', 'T', "INSERT INTO t VALUES (1)"));
	assert_int_equal(sampler_session_end(&ss), SAMPLER_DISCARD);

	/* an implicit one committed at its Sync, unless it failed */
	session_init(&ss, 4);
	decide(&cfg, &ss, E('I', 1, "INSERT INTO t VALUES ($1)"));
	decide(&cfg, &ss, E('I', 1, "UPDATE t SET a = $1"));
	assert_int_equal(sampler_session_end(&ss), SAMPLER_RELEASE);

	session_init(&ss, 5);
	decide(&cfg, &ss, E('I', 1, "INSERT INTO t VALUES ($1)"));
	decide(&cfg, &ss, EERR('I', 1, "UPDATE t SET a = $1"));
	assert_int_equal(sampler_session_end(&ss), SAMPLER_DISCARD);

	/* a Query already ended its transaction */
	session_init(&ss, 6);
	decide(&cfg, &ss, Q('I', 'I', "INSERT INTO t VALUES (1)"));
	assert_int_equal(sampler_session_end(&ss), SAMPLER_KEEP);
	decide(&cfg, &ss, Q('I', 'T', "BEGIN"));
	decide(&cfg, &ss, Q('T', 'I', "COMMIT"));
	assert_int_equal(sampler_session_end(&ss), SAMPLER_KEEP);
}

/* ---- filters ---- */

/* A request and what the filter does with it: PASSES, or the skip reason. */
#define PASSES (-1)

struct filter_case {
	struct req r;
	int why;
};

static void run_filter(const struct sampler_config *cfg, const struct filter_case *c, size_t n)
{
	struct sampler_session ss;
	struct sampler_decision d;
	size_t i;

	session_init(&ss, 1);
	for (i = 0; i < n; i++) {
		d = decide(cfg, &ss, c[i].r);
		if (c[i].why == PASSES)
			check_verdict(&d, SAMPLER_REPLAY, c[i].r.sql);
		else
			check_skip(&d, (enum stats_skip_reason)c[i].why, c[i].r.sql);
	}
}

#define N_CASES(a) (sizeof(a) / sizeof((a)[0]))

static void test_level_dml(void **state)
{
	static const struct filter_case c[] = {
	    {Q('I', 'I', "CREATE TABLE t2 (a int)"), STATS_SKIP_LEVEL},
	    {Q('I', 'I', "ALTER TABLE t ADD COLUMN b int"), STATS_SKIP_LEVEL},
	    {E('I', 1, "CREATE TABLE t2 (a int)"), STATS_SKIP_LEVEL},
	    {Q('I', 'I', "this is not sql"), STATS_SKIP_LEVEL},
	    {Q('I', 'I', "SELECT * FROM t"), PASSES},
	    {Q('I', 'I', "INSERT INTO t VALUES (1)"), PASSES},
	    {Q('I', 'I', "SET search_path = public"), PASSES},
	    {Q('I', 'T', "BEGIN"), PASSES},
	    {Q('T', 'T', "UPDATE t SET a = 1"), PASSES},
	    {Q('T', 'I', "COMMIT"), PASSES},
	    {E('I', 2, "SELECT * FROM t"), PASSES},
	    /* several statements: passes when any does */
	    {Q('I', 'I', "CREATE TABLE t3 (a int); INSERT INTO t3 VALUES (1)"), PASSES},
	};
	struct sampler_config cfg = config(1.0);

	(void)state;
	cfg.level = REPLAY_LEVEL_DML;
	run_filter(&cfg, c, N_CASES(c));
}

static void test_level_ddl(void **state)
{
	static const struct filter_case c[] = {
	    {Q('I', 'I', "CREATE TABLE t2 (a int)"), PASSES},
	    {Q('I', 'I', "ALTER TABLE t ADD COLUMN b int"), PASSES},
	    {E('I', 1, "CREATE TABLE t2 (a int)"), PASSES},
	    {Q('I', 'I', "SELECT * FROM t"), STATS_SKIP_LEVEL},
	    {Q('I', 'I', "INSERT INTO t VALUES (1)"), STATS_SKIP_LEVEL},
	    {E('I', 2, "UPDATE t SET a = $1"), STATS_SKIP_LEVEL},
	    {Q('I', 'I', "this is not sql"), STATS_SKIP_LEVEL},
	    /* session state and transaction control always pass */
	    {Q('I', 'I', "SET search_path = public"), PASSES},
	    {Q('I', 'T', "BEGIN"), PASSES},
	    {Q('T', 'I', "COMMIT"), PASSES},
	};
	struct sampler_config cfg = config(1.0);

	(void)state;
	cfg.level = REPLAY_LEVEL_DDL;
	run_filter(&cfg, c, N_CASES(c));
}

static void test_mode_read_only(void **state)
{
	static const struct filter_case c[] = {
	    {Q('I', 'I', "INSERT INTO t VALUES (1)"), STATS_SKIP_WRITE},
	    {Q('I', 'I', "UPDATE t SET a = 1"), STATS_SKIP_WRITE},
	    {Q('I', 'I', "SELECT * FROM t FOR UPDATE"), STATS_SKIP_WRITE},
	    {Q('I', 'I', "DELETE FROM t"), STATS_SKIP_WRITE},
	    {Q('I', 'I', "CREATE TABLE t2 (a int)"), STATS_SKIP_WRITE},
	    {Q('I', 'I', "SELECT 1; DELETE FROM t"), STATS_SKIP_WRITE},
	    {Q('I', 'I', "this is not sql"), STATS_SKIP_WRITE},
	    {E('I', 1, "INSERT INTO t VALUES ($1)"), STATS_SKIP_WRITE},
	    {Q('I', 'I', "SELECT * FROM t"), PASSES},
	    {Q('I', 'I', "SHOW work_mem"), PASSES},
	    {Q('I', 'I', "SET search_path = public"), PASSES},
	    {Q('I', 'T', "BEGIN"), PASSES},
	    {Q('T', 'T', "SELECT * FROM t"), PASSES},
	    {Q('T', 'T', "SELECT * FROM t FOR UPDATE"), STATS_SKIP_WRITE},
	    {Q('T', 'I', "COMMIT"), PASSES},
	    {E('I', 2, "SELECT * FROM t"), PASSES},
	};
	struct sampler_config cfg = config(1.0);

	(void)state;
	cfg.mode = REPLAY_MODE_READ_ONLY;
	run_filter(&cfg, c, N_CASES(c));
}

/* ---- read flag ---- */

static void test_read_flag(void **state)
{
	static const struct {
		struct req r;
		bool read;
	} c[] = {
	    {Q('I', 'I', "SELECT * FROM t"), true},
	    {Q('I', 'I', "SHOW work_mem"), true},
	    {Q('I', 'I', "SET search_path = public"), true},
	    {E('I', 1, "SELECT * FROM t WHERE a = $1"), true},
	    {Q('I', 'T', "BEGIN"), true},
	    {Q('T', 'T', "INSERT INTO t VALUES (1)"), false},
	    {Q('T', 'T', "SELECT * FROM t FOR UPDATE"), false},
	    {Q('T', 'I', "COMMIT"), false},
	    {E('I', 2, "UPDATE t SET a = $1"), false},
	    {QERR('I', 'I', "SELECT 1/0"), false}, /* wrapped */
	    {Q('I', 'T', "BEGIN"), true},
	    {QERR('T', 'E', "SELECT 1/0"), true}, /* not wrapped: a read */
	    {QTAG('E', 'I', "COMMIT", "ROLLBACK"), false},
	};
	struct sampler_config cfg = config(1.0);
	struct sampler_session ss;
	struct sampler_decision d;
	size_t i;

	(void)state;
	session_init(&ss, 1);
	for (i = 0; i < N_CASES(c); i++) {
		d = decide(&cfg, &ss, c[i].r);
		check_verdict(&d, SAMPLER_REPLAY, c[i].r.sql);
		if (d.read != c[i].read)
			fail_msg("%s (#%zu): read %d, want %d", c[i].r.sql, i, d.read, c[i].read);
	}
	/* the wrapped one and the rolled-back COMMIT are what make them not reads */
	session_init(&ss, 2);
	d = decide(&cfg, &ss, QERR('I', 'I', "SELECT 1/0"));
	assert_true(d.wrap);
	decide(&cfg, &ss, Q('I', 'T', "BEGIN"));
	d = decide(&cfg, &ss, QTAG('T', 'I', "COMMIT", "ROLLBACK"));
	assert_true(d.as_rollback);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_query_transactions),
	    cmocka_unit_test(test_execute_sync_groups),
	    cmocka_unit_test(test_first_request_mid_transaction),
	    cmocka_unit_test(test_exposure_zero_keeps_session_state),
	    cmocka_unit_test(test_exposure_one_replays_everything),
	    cmocka_unit_test(test_exposure_quarter_whole_transactions),
	    cmocka_unit_test(test_sampling_session),
	    cmocka_unit_test(test_commit_answered_rollback),
	    cmocka_unit_test(test_failed_commit_replayed_as_rollback),
	    cmocka_unit_test(test_failed_standalone_wrapped),
	    cmocka_unit_test(test_failed_in_explicit_txn_not_wrapped),
	    cmocka_unit_test(test_concurrency_error_raised),
	    cmocka_unit_test(test_failed_no_txn_block_skipped),
	    cmocka_unit_test(test_failed_standalone_txn_control_skipped),
	    cmocka_unit_test(test_aborted_skip_query),
	    cmocka_unit_test(test_aborted_skip_execute),
	    cmocka_unit_test(test_aborted_skip_holds_only_replayed),
	    cmocka_unit_test(test_session_end),
	    cmocka_unit_test(test_level_dml),
	    cmocka_unit_test(test_level_ddl),
	    cmocka_unit_test(test_mode_read_only),
	    cmocka_unit_test(test_read_flag),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
