// SPDX-License-Identifier: BSD-2-Clause
/*
 * explain and ownconn: which regressions are wanted, what an offer keeps, the EXPLAIN
 * sent to the mirror (its text, parameters, database, options, statement_timeout) and
 * every way it fails; the agent's own connection kept out of capture. The mirror is a
 * scripted PostgreSQL backend on loopback (enough of protocol 3 for libpq), the capture
 * a recording stub of capture_exclude_add/remove.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include "peer.h"

#include "explain.h"
#include "ownconn.h"

/* ---- the capture: a recording stub ---- */

static char capture_token;
#define CAP ((struct capture *)&capture_token)

static struct {
	pthread_mutex_t lock;
	struct capture_tuple set[8]; /* excluded now */
	int n, adds, removes;
	struct capture_tuple last; /* the last one added */
} excl = {.lock = PTHREAD_MUTEX_INITIALIZER};

int capture_exclude_add(struct capture *c, const struct capture_tuple *t)
{
	if (c != CAP)
		abort();
	pthread_mutex_lock(&excl.lock);
	if (excl.n < 8)
		excl.set[excl.n++] = *t;
	excl.adds++;
	excl.last = *t;
	pthread_mutex_unlock(&excl.lock);
	return 0;
}

int capture_exclude_remove(struct capture *c, const struct capture_tuple *t)
{
	int i;

	if (c != CAP)
		abort();
	pthread_mutex_lock(&excl.lock);
	excl.removes++;
	for (i = 0; i < excl.n; i++) {
		if (!memcmp(&excl.set[i], t, sizeof(*t))) {
			excl.set[i] = excl.set[--excl.n];
			break;
		}
	}
	pthread_mutex_unlock(&excl.lock);
	return 0;
}

static int excluded_now(void)
{
	int n;

	pthread_mutex_lock(&excl.lock);
	n = excl.n;
	pthread_mutex_unlock(&excl.lock);
	return n;
}

static void excl_reset(void)
{
	pthread_mutex_lock(&excl.lock);
	memset(excl.set, 0, sizeof(excl.set));
	excl.n = excl.adds = excl.removes = 0;
	memset(&excl.last, 0, sizeof(excl.last));
	pthread_mutex_unlock(&excl.lock);
}

/* ---- the mirror: a scripted PostgreSQL backend, one connection ---- */

enum pg_mode {
	PG_PLAN,	  /* SET and EXPLAIN answered; the EXPLAIN with f->plan */
	PG_EXPLAIN_ERROR, /* the EXPLAIN fails: SQLSTATE 42601 */
	PG_SET_ERROR,	  /* the SET fails */
	PG_SILENT,	  /* the EXPLAIN is never answered */
	PG_MUTE,	  /* the startup packet is never answered */
};

struct pgfake {
	int lfd;
	uint16_t port;
	pthread_t thread;
	enum pg_mode mode;
	const char *plan; /* PG_PLAN: the EXPLAIN's one value */
	/* what it saw */
	_Atomic bool explain_seen;
	int excluded_at_startup; /* exclusions in place when the startup packet came */
	char database[64], options[64], application_name[64];
	char set_sql[128], explain_sql[1024];
	int n_params;
	int param_len[4], param_format[4];
	char param[4][16];
};

/* An ErrorResponse and ReadyForQuery: the answer to a failing Sync'ed statement. */
static void pg_fail(int fd, const char *code)
{
	pg_error(fd, code);
	pg_ready(fd);
}

static void pg_plan_answer(int fd, const char *plan)
{
	static const char name[] = "QUERY PLAN";
	char row[4096], *w = row;
	uint16_t u16;
	uint32_t u32;

	pg_send(fd, '1', NULL, 0);
	pg_send(fd, '2', NULL, 0);
	/* RowDescription: one json column */
	u16 = htons(1);
	memcpy(w, &u16, 2), w += 2;
	memcpy(w, name, sizeof(name)), w += sizeof(name);
	u32 = 0, memcpy(w, &u32, 4), w += 4; /* table */
	u16 = 0, memcpy(w, &u16, 2), w += 2; /* column */
	u32 = htonl(114), memcpy(w, &u32, 4), w += 4;
	u16 = htons(0xffff), memcpy(w, &u16, 2), w += 2;
	u32 = htonl(0xffffffff), memcpy(w, &u32, 4), w += 4;
	u16 = 0, memcpy(w, &u16, 2), w += 2;
	pg_send(fd, 'T', row, w - row);
	w = row;
	u16 = htons(1), memcpy(w, &u16, 2), w += 2;
	u32 = htonl(strlen(plan)), memcpy(w, &u32, 4), w += 4;
	memcpy(w, plan, strlen(plan)), w += strlen(plan);
	pg_send(fd, 'D', row, w - row);
	pg_send(fd, 'C', "EXPLAIN", 8);
	pg_ready(fd);
}

/* The startup packet's parameters. */
static void pg_startup(struct pgfake *f, const char *body, size_t len)
{
	size_t i = 4; /* the protocol version */

	while (i < len && body[i]) {
		const char *k = body + i, *v = k + strlen(k) + 1;

		if (!strcmp(k, "database"))
			snprintf(f->database, sizeof(f->database), "%s", v);
		else if (!strcmp(k, "options"))
			snprintf(f->options, sizeof(f->options), "%s", v);
		else if (!strcmp(k, "application_name"))
			snprintf(f->application_name, sizeof(f->application_name), "%s", v);
		i = (size_t)(v - body) + strlen(v) + 1;
	}
}

/* Bind: portal, statement, formats, values (kept for the test). */
static void pg_bind(struct pgfake *f, const char *b)
{
	uint16_t nf, np, u16;
	uint32_t u32;
	int i, len;

	b += strlen(b) + 1;
	b += strlen(b) + 1;
	memcpy(&u16, b, 2), nf = ntohs(u16), b += 2;
	for (i = 0; i < nf; i++, b += 2)
		if (i < 4)
			memcpy(&u16, b, 2), f->param_format[i] = ntohs(u16);
	memcpy(&u16, b, 2), np = ntohs(u16), b += 2;
	f->n_params = np;
	for (i = 0; i < np; i++) {
		memcpy(&u32, b, 4), len = (int32_t)ntohl(u32), b += 4;
		if (i < 4) {
			f->param_len[i] = len;
			if (len > 0)
				memcpy(f->param[i], b, len < 15 ? len : 15);
		}
		if (len > 0)
			b += len;
	}
}

static void *pg_run(void *arg)
{
	struct pgfake *f = arg;
	bool explain = false;
	uint32_t len;
	char type, *body = NULL;
	int fd = accept(f->lfd, NULL, NULL);

	if (fd < 0)
		return NULL;
	body = pg_read_startup(fd, &len);
	if (!body)
		goto out;
	f->excluded_at_startup = excluded_now();
	pg_startup(f, body, len);
	if (f->mode == PG_MUTE) {
		while (recv(fd, &type, 1, 0) > 0)
			;
		goto out;
	}
	pg_hello(fd);
	for (;;) {
		free(body);
		body = pg_read_message(fd, &type, &len);
		if (!body || type == 'X')
			break;
		if (type == 'P') { /* statement name, then the text */
			const char *sql = body + strlen(body) + 1;

			explain = !strncmp(sql, "EXPLAIN", 7);
			if (explain)
				snprintf(f->explain_sql, sizeof(f->explain_sql), "%s", sql);
			else
				snprintf(f->set_sql, sizeof(f->set_sql), "%s", sql);
		} else if (type == 'B' && explain) {
			pg_bind(f, body);
		} else if (type == 'S' && !explain) {
			if (f->mode == PG_SET_ERROR) {
				pg_fail(fd, "22023");
			} else {
				pg_send(fd, '1', NULL, 0);
				pg_send(fd, '2', NULL, 0);
				pg_send(fd, 'n', NULL, 0);
				pg_send(fd, 'C', "SET", 4);
				pg_ready(fd);
			}
		} else if (type == 'S') {
			f->explain_seen = true;
			if (f->mode == PG_EXPLAIN_ERROR)
				pg_fail(fd, "42601");
			else if (f->mode == PG_PLAN)
				pg_plan_answer(fd, f->plan);
			/* PG_SILENT: nothing, until the client goes */
		}
	}
out:
	free(body);
	close(fd);
	return NULL;
}

static struct pgfake *pg_start(enum pg_mode mode, const char *plan)
{
	struct pgfake *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	f->mode = mode;
	f->plan = plan;
	f->lfd = listen_on(AF_INET, 4, &f->port);
	assert_int_equal(pthread_create(&f->thread, NULL, pg_run, f), 0);
	return f;
}

static void pg_join(struct pgfake *f)
{
	shutdown(f->lfd, SHUT_RDWR); /* a backend never connected to stops waiting */
	pthread_join(f->thread, NULL);
	close(f->lfd);
}

/* ---- the querystats side: the top regressions, the plans kept ---- */

#define DB   "app"
#define FP_A 0xa1a1a1a1ull
#define PLAN_JSON                                                                                  \
	"[{\"Plan\": {\"Node Type\": \"Index Scan\", \"Index Name\": \"t_pkey\", \"Relation "      \
	"Name\": \"t\", \"Total Cost\": 8.29, \"Plan Rows\": 1, \"Index Cond\": \"(id = $1)\"}}]"
#define PLAN_TEXT "Index Scan using t_pkey on t rows=1 cost=8.29"

static struct {
	pthread_mutex_t lock;
	struct querystats_row rows[8];
	size_t n_rows; /* what top reports (it copies at most cap) */
	int top_calls;
	int plans; /* set_plan calls */
	char database[QUERYSTATS_DB_MAX];
	uint64_t fingerprint;
	char plan[PLAN_SUMMARY_MAX];
} qs = {.lock = PTHREAD_MUTEX_INITIALIZER};

static size_t top_cb(void *ctx, struct querystats_row *out, size_t cap)
{
	size_t n;

	(void)ctx;
	pthread_mutex_lock(&qs.lock);
	n = qs.n_rows;
	memcpy(out, qs.rows, (n < cap ? n : cap) * sizeof(*out));
	qs.top_calls++;
	pthread_mutex_unlock(&qs.lock);
	return n;
}

static void plan_cb(void *ctx, const char *database, uint64_t fingerprint, const char *plan)
{
	size_t i;

	(void)ctx;
	pthread_mutex_lock(&qs.lock);
	qs.plans++;
	snprintf(qs.database, sizeof(qs.database), "%s", database);
	qs.fingerprint = fingerprint;
	snprintf(qs.plan, sizeof(qs.plan), "%s", plan);
	for (i = 0; i < qs.n_rows && i < 8; i++) /* kept with the statement, as querystats does */
		if (qs.rows[i].fingerprint == fingerprint && !strcmp(qs.rows[i].database, database))
			snprintf(qs.rows[i].plan, sizeof(qs.rows[i].plan), "%s", plan);
	pthread_mutex_unlock(&qs.lock);
}

static void row(size_t i, const char *db, uint64_t fp, unsigned int regressed, const char *plan)
{
	struct querystats_row *r = &qs.rows[i];

	pthread_mutex_lock(&qs.lock); /* the explain thread reads them */
	memset(r, 0, sizeof(*r));
	snprintf(r->database, sizeof(r->database), "%s", db);
	r->fingerprint = fp;
	r->regressed = regressed;
	snprintf(r->plan, sizeof(r->plan), "%s", plan);
	pthread_mutex_unlock(&qs.lock);
}

static void set_rows(size_t n)
{
	pthread_mutex_lock(&qs.lock);
	qs.n_rows = n;
	pthread_mutex_unlock(&qs.lock);
}

static int reset(void **state)
{
	(void)state;
	pthread_mutex_lock(&qs.lock);
	memset(qs.rows, 0, sizeof(qs.rows));
	qs.n_rows = 0;
	qs.top_calls = qs.plans = 0;
	qs.database[0] = qs.plan[0] = '\0';
	qs.fingerprint = 0;
	pthread_mutex_unlock(&qs.lock);
	excl_reset();
	return 0;
}

static int top_calls(void)
{
	int n;

	pthread_mutex_lock(&qs.lock);
	n = qs.top_calls;
	pthread_mutex_unlock(&qs.lock);
	return n;
}

static int plans(void)
{
	int n;

	pthread_mutex_lock(&qs.lock);
	n = qs.plans;
	pthread_mutex_unlock(&qs.lock);
	return n;
}

/* Waits until two more rounds have begun: one whole round has run since. */
static void next_round(void)
{
	int until = top_calls() + 2, i;

	for (i = 0; i < 1000 && top_calls() < until; i++)
		usleep(5000);
	assert_true(top_calls() >= until);
}

static void wait_wanted(struct explain *ex, const char *db, uint64_t fp)
{
	int i;

	for (i = 0; i < 1000 && !explain_wants(ex, db, fp); i++)
		usleep(5000);
	assert_true(explain_wants(ex, db, fp));
}

/* Waits for the n-th plan (or failure) to be kept. */
static void wait_plans(int n, int ms)
{
	int i;

	for (i = 0; i < ms / 5 && plans() < n; i++)
		usleep(5000);
	assert_int_equal(plans(), n);
}

static struct explain *start(uint16_t port, uint32_t timeout_ms)
{
	char mirror[256], err[160] = "";
	struct explain_config cfg = {.cap = CAP,
				     .capture_port = port,
				     .interval_ms = 20,
				     .timeout_ms = timeout_ms,
				     .top = top_cb,
				     .set_plan = plan_cb};
	struct explain *ex;

	snprintf(mirror, sizeof(mirror),
		 "host=127.0.0.1 port=%u user=pgshadow dbname=ignored sslmode=disable "
		 "gssencmode=disable",
		 port);
	cfg.mirror = mirror;
	ex = explain_start(&cfg, err, sizeof(err));
	if (!ex)
		fail_msg("explain_start: %s", err);
	return ex;
}

/* One execution of A: SELECT with a text, a NULL and a binary parameter. */
static const char *const A_TEXT = "SELECT * FROM t WHERE id = $1 AND note = $2 AND raw = $3";

static void offer_a(struct explain *ex)
{
	static const char bin[3] = {0x00, 0x01, (char)0xff};
	const char *const values[3] = {"42", NULL, bin};
	const int lengths[3] = {2, 0, 3}, formats[3] = {0, 0, 1};

	explain_offer(ex, DB, FP_A, "app_mirror", "-c search_path=s1", A_TEXT, 3, values, lengths,
		      formats);
}

/* ---- explain ---- */

static void test_explain_plan(void **state)
{
	struct pgfake *f = pg_start(PG_PLAN, PLAN_JSON);
	uint64_t explained = 9, failed = 9;
	struct explain *ex;
	char big[EXPLAIN_SAMPLE_MAX];

	(void)state;
	/* only slower statements without a plan are wanted; at most EXPLAIN_TOP looked at */
	row(0, DB, FP_A, QUERYSTATS_SLOWER, "");
	row(1, DB, 0xb, 0, "");					    /* not slower */
	row(2, DB, 0xc, QUERYSTATS_SLOWER, "Seq Scan on c rows=1"); /* has a plan */
	row(3, DB, 0, QUERYSTATS_SLOWER, "");			    /* unparsed */
	row(4, "other", 0xe, QUERYSTATS_SLOWER, "");
	row(5, DB, 0xf, QUERYSTATS_SLOWER, ""); /* sixth: beyond EXPLAIN_TOP */
	set_rows(6);
	ex = start(f->port, 3000);
	wait_wanted(ex, DB, FP_A);
	wait_wanted(ex, "other", 0xe);
	assert_false(explain_wants(ex, DB, 0xb));
	assert_false(explain_wants(ex, DB, 0xc));
	assert_false(explain_wants(ex, DB, 0));
	assert_false(explain_wants(ex, DB, 0xf));
	assert_false(explain_wants(ex, "other", FP_A)); /* the database counts too */
	assert_false(explain_wants(ex, DB, 0xe));

	/* offers that are not kept: too large, nonsense, not wanted */
	memset(big, 'x', sizeof(big) - 1);
	big[sizeof(big) - 1] = '\0';
	explain_offer(ex, "other", 0xe, "m", "", big, 0, NULL, NULL, NULL);
	explain_offer(ex, "other", 0xe, "m", "", "SELECT 1", -1, NULL, NULL, NULL);
	explain_offer(ex, DB, 0xb, "m", "", "SELECT 1", 0, NULL, NULL, NULL);
	assert_true(explain_wants(ex, "other", 0xe));

	offer_a(ex);
	offer_a(ex); /* already has one: ignored */
	wait_plans(1, 5000);
	pg_join(f);
	assert_string_equal(qs.database, DB);
	assert_true(qs.fingerprint == FP_A);
	assert_string_equal(qs.plan, PLAN_TEXT);

	/* what the mirror was asked: never ANALYZE; that execution's parameters */
	assert_string_equal(f->database, "app_mirror");
	assert_string_equal(f->options, "-c search_path=s1");
	assert_string_equal(f->application_name, "pgshadow-explain");
	assert_string_equal(f->set_sql, "SET statement_timeout = 3000");
	assert_string_equal(f->explain_sql,
			    "EXPLAIN (FORMAT JSON) SELECT * FROM t WHERE id = $1 AND note = $2 AND "
			    "raw = $3");
	assert_int_equal(f->n_params, 3);
	assert_int_equal(f->param_len[0], 2);
	assert_string_equal(f->param[0], "42");
	assert_int_equal(f->param_format[0], 0);
	assert_int_equal(f->param_len[1], -1); /* SQL NULL */
	assert_int_equal(f->param_len[2], 3);
	assert_int_equal(f->param_format[2], 1);
	assert_memory_equal(f->param[2], "\x00\x01\xff", 3);

	/* its connection was out of capture before its startup packet, and is no more */
	assert_int_equal(f->excluded_at_startup, 2);
	assert_int_equal(excl.last.sport, f->port); /* the mirror's direction, added last */
	assert_int_equal(excluded_now(), 0);

	/* explained once: the plan is kept, the statement no longer wanted */
	next_round();
	assert_false(explain_wants(ex, DB, FP_A));
	assert_int_equal(plans(), 1);
	explain_counts(ex, &explained, &failed);
	assert_int_equal(explained, 1);
	assert_int_equal(failed, 0);

	/* a statement that left the top is forgotten */
	assert_true(explain_wants(ex, "other", 0xe));
	row(4, DB, 0xb, 0, "");
	next_round();
	assert_false(explain_wants(ex, "other", 0xe));

	explain_stop(ex);
	explain_stop(ex); /* idempotent */
	explain_free(ex);
	free(f);
}

/* One EXPLAIN against a mirror that fails as mode says; the reason kept as the plan. */
static void expect_failure(enum pg_mode mode, const char *plan, uint32_t timeout_ms,
			   const char *want)
{
	struct pgfake *f = pg_start(mode, plan);
	uint64_t explained = 9, failed = 9;
	struct explain *ex;

	reset(NULL);
	row(0, DB, FP_A, QUERYSTATS_SLOWER, "");
	set_rows(1);
	ex = start(f->port, timeout_ms);
	wait_wanted(ex, DB, FP_A);
	offer_a(ex);
	wait_plans(1, 5000);
	assert_string_equal(qs.plan, want);
	explain_counts(ex, &explained, &failed);
	assert_int_equal(explained, 0);
	assert_int_equal(failed, 1);
	assert_int_equal(excluded_now(), 0);
	explain_free(ex); /* stops */
	pg_join(f);
	free(f);
}

static void test_explain_failures(void **state)
{
	(void)state;
	expect_failure(PG_EXPLAIN_ERROR, NULL, 3000, "EXPLAIN failed: SQLSTATE 42601");
	expect_failure(PG_SET_ERROR, NULL, 3000, "EXPLAIN failed: cannot set statement_timeout");
	expect_failure(PG_PLAN, "[{\"Plan\": {}}]", 3000, "EXPLAIN failed: not a plan");
	expect_failure(PG_SILENT, NULL, 300, "EXPLAIN failed: no answer in time");
	expect_failure(PG_MUTE, NULL, 300, "EXPLAIN failed: connection timed out");
}

static void test_explain_refused(void **state)
{
	uint64_t explained, failed;
	struct explain *ex;

	(void)state;
	row(0, DB, FP_A, QUERYSTATS_SLOWER, "");
	set_rows(1);
	ex = start(closed_port(), 3000);
	wait_wanted(ex, DB, FP_A);
	offer_a(ex);
	wait_plans(1, 5000);
	assert_string_equal(qs.plan, "EXPLAIN failed: cannot connect");
	explain_counts(ex, &explained, &failed);
	assert_int_equal(failed, 1);
	assert_int_equal(excluded_now(), 0);
	explain_free(ex);
}

/* A stop does not wait for the mirror's answer. */
static void test_explain_stop_during_explain(void **state)
{
	struct pgfake *f = pg_start(PG_SILENT, NULL);
	struct timespec t0, t1;
	struct explain *ex;
	long ms;
	int i;

	(void)state;
	row(0, DB, FP_A, QUERYSTATS_SLOWER, "");
	set_rows(1);
	ex = start(f->port, 30000);
	wait_wanted(ex, DB, FP_A);
	offer_a(ex);
	for (i = 0; i < 1000 && !f->explain_seen; i++)
		usleep(5000);
	assert_true(f->explain_seen);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	explain_stop(ex);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
	assert_true(ms < 2000);
	assert_int_equal(plans(), 1);
	assert_string_equal(qs.plan, "EXPLAIN failed: no answer in time");
	assert_int_equal(excluded_now(), 0);
	explain_free(ex);
	pg_join(f);
	free(f);
}

static void test_explain_null_and_refusals(void **state)
{
	struct explain_config cfg = {.mirror = "host=x", .top = top_cb};
	uint64_t explained = 9, failed = 9;
	char err[160] = "";

	(void)state;
	assert_null(explain_start(&cfg, err, sizeof(err))); /* no set_plan */
	assert_string_equal(err, "--explain-regressions: out of memory");
	cfg.set_plan = plan_cb;
	cfg.top = NULL;
	err[0] = '\0';
	assert_null(explain_start(&cfg, err, sizeof(err)));
	assert_true(err[0] != '\0');

	assert_false(explain_wants(NULL, DB, FP_A));
	explain_offer(NULL, DB, FP_A, "m", "", "SELECT 1", 0, NULL, NULL, NULL);
	explain_counts(NULL, &explained, &failed);
	assert_int_equal(explained, 0);
	assert_int_equal(failed, 0);
	explain_stop(NULL);
	explain_free(NULL);
}

/* ---- ownconn ---- */

/* A libpq connection being made to the local listener at port (never completed: the
 * listener does not answer). */
static PGconn *dial(const char *host, uint16_t port)
{
	char conninfo[256];
	PGconn *c;

	snprintf(conninfo, sizeof(conninfo),
		 "host=%s port=%u user=pgshadow sslmode=disable gssencmode=disable", host, port);
	c = PQconnectStart(conninfo);
	assert_non_null(c);
	assert_int_not_equal(PQstatus(c), CONNECTION_BAD);
	return c;
}

static void local_of(PGconn *c, struct sockaddr_storage *ss)
{
	socklen_t len = sizeof(*ss);

	assert_int_equal(getsockname(PQsocket(c), (struct sockaddr *)ss, &len), 0);
}

static void test_ownconn_ipv4(void **state)
{
	static const uint8_t lo4[16] = {[10] = 0xff, [11] = 0xff, [12] = 127, [15] = 1};
	struct ownconn x = {0};
	struct sockaddr_storage local;
	uint16_t port;
	int lfd = listen_on(AF_INET, 4, &port);
	PGconn *c = dial("127.0.0.1", port);

	(void)state;
	usleep(20000); /* the handshake is done: getpeername answers */
	local_of(c, &local);
	ownconn_exclude(CAP, c, port, &x);
	assert_true(x.active);
	assert_memory_equal(x.dir[0].saddr, lo4, 16);
	assert_memory_equal(x.dir[0].daddr, lo4, 16);
	assert_int_equal(x.dir[0].sport, ntohs(((struct sockaddr_in *)&local)->sin_port));
	assert_int_equal(x.dir[0].dport, port);
	assert_memory_equal(x.dir[1].saddr, lo4, 16); /* the other way */
	assert_int_equal(x.dir[1].sport, port);
	assert_int_equal(x.dir[1].dport, x.dir[0].sport);
	assert_int_equal(excluded_now(), 2);

	ownconn_exclude(CAP, c, port, &x); /* the same socket: nothing new */
	assert_int_equal(excl.adds, 2);
	assert_int_equal(excl.removes, 0);

	ownconn_exclude(CAP, c, port + 1, &x); /* not to the captured port: released */
	assert_false(x.active);
	assert_int_equal(excluded_now(), 0);
	ownconn_release(CAP, &x); /* twice: nothing */
	assert_int_equal(excl.removes, 2);

	ownconn_exclude(NULL, c, 0, &x); /* no capture */
	ownconn_exclude(CAP, NULL, 0, &x);
	assert_false(x.active);
	PQfinish(c);
	close(lfd);
}

static void test_ownconn_ipv6_and_pending(void **state)
{
	struct ownconn x = {0};
	struct sockaddr_storage local;
	uint16_t port;
	int lfd = listen_on(AF_INET6, 0, &port), fill[3], i;
	PGconn *c = dial("::1", port);

	(void)state;
	usleep(20000);
	local_of(c, &local);
	ownconn_exclude(CAP, c, 0, &x);
	assert_true(x.active);
	assert_memory_equal(x.dir[0].saddr, &in6addr_loopback, 16);
	assert_memory_equal(x.dir[0].daddr, &in6addr_loopback, 16);
	assert_int_equal(x.dir[0].sport, ntohs(((struct sockaddr_in6 *)&local)->sin6_port));
	assert_int_equal(x.dir[0].dport, port);
	PQfinish(c);

	/* the accept queue full: the SYN is dropped and getpeername cannot tell the server
	 * yet, libpq's address does */
	for (i = 0; i < 3; i++) {
		struct sockaddr_in6 in6 = {.sin6_family = AF_INET6, .sin6_port = htons(port)};

		in6.sin6_addr = in6addr_loopback;
		fill[i] = socket(AF_INET6, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		connect(fill[i], (struct sockaddr *)&in6, sizeof(in6));
	}
	usleep(50000);
	c = dial("::1", port);
	assert_int_not_equal(
	    getpeername(PQsocket(c), (struct sockaddr *)&local, &(socklen_t){sizeof(local)}), 0);
	local_of(c, &local);
	ownconn_exclude(CAP, c, port, &x); /* a new socket: replaces the old exclusion */
	assert_true(x.active);
	assert_memory_equal(x.dir[0].daddr, &in6addr_loopback, 16);
	assert_int_equal(x.dir[0].dport, port);
	assert_int_equal(x.dir[0].sport, ntohs(((struct sockaddr_in6 *)&local)->sin6_port));
	assert_int_equal(excluded_now(), 2);
	ownconn_release(CAP, &x);
	assert_int_equal(excluded_now(), 0);
	PQfinish(c);
	for (i = 0; i < 3; i++)
		close(fill[i]);
	close(lfd);
}

/* A Unix socket is never captured: nothing to exclude. */
static void test_ownconn_unix(void **state)
{
	char dir[] = "/tmp/pgshadow-ownconn-XXXXXX", path[64];
	struct sockaddr_un un = {.sun_family = AF_UNIX};
	struct ownconn x = {0};
	int lfd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	PGconn *c;

	(void)state;
	assert_non_null(mkdtemp(dir));
	snprintf(path, sizeof(path), "%s/.s.PGSQL.5432", dir);
	snprintf(un.sun_path, sizeof(un.sun_path), "%s", path);
	assert_int_equal(bind(lfd, (struct sockaddr *)&un, sizeof(un)), 0);
	assert_int_equal(listen(lfd, 4), 0);
	c = dial(dir, 5432);
	ownconn_exclude(CAP, c, 0, &x);
	assert_false(x.active);
	assert_int_equal(excl.adds, 0);
	PQfinish(c);
	close(lfd);
	unlink(path);
	rmdir(dir);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup(test_explain_plan, reset),
	    cmocka_unit_test_setup(test_explain_failures, reset),
	    cmocka_unit_test_setup(test_explain_refused, reset),
	    cmocka_unit_test_setup(test_explain_stop_during_explain, reset),
	    cmocka_unit_test_setup(test_explain_null_and_refusals, reset),
	    cmocka_unit_test_setup(test_ownconn_ipv4, reset),
	    cmocka_unit_test_setup(test_ownconn_ipv6_and_pending, reset),
	    cmocka_unit_test_setup(test_ownconn_unix, reset),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
