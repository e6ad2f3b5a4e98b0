/* SPDX-License-Identifier: BSD-2-Clause */
/* explain.c — --explain-regressions: the mirror's plans of regressed statements; see
 * explain.h. */
#define _GNU_SOURCE /* pthread_setname_np */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <libpq-fe.h>

#include "explain.h"
#include "ownconn.h"
#include "plan.h"

#define STEP_MS 100 /* poll granularity: how soon a stop is noticed */

/* One execution of a wanted statement (a slot of the want list). */
struct sample {
	bool wanted, filled, busy; /* busy: the thread is explaining it */
	char database[QUERYSTATS_DB_MAX];
	uint64_t fingerprint;
	/* filled: one allocation (mem) holding all of these */
	void *mem;
	const char *mirror_db, *options, *text;
	int n;
	const char **values;
	int *lengths, *formats;
};

struct explain {
	struct explain_config cfg;
	char *mirror;
	pthread_t thread;
	bool started;
	pthread_mutex_t lock; /* the slots, stop */
	pthread_cond_t wake;
	bool stop;
	_Atomic int wanted; /* slots wanted and not filled: explain_wants' fast path */
	struct sample slot[EXPLAIN_TOP];
	_Atomic uint64_t explained, failed;
};

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}

static bool stopping(struct explain *ex)
{
	bool s;

	pthread_mutex_lock(&ex->lock);
	s = ex->stop;
	pthread_mutex_unlock(&ex->lock);
	return s;
}

static void slot_clear(struct explain *ex, struct sample *s)
{
	if (s->wanted && !s->filled)
		atomic_fetch_sub(&ex->wanted, 1);
	free(s->mem);
	memset(s, 0, sizeof(*s));
}

static struct sample *slot_find(struct explain *ex, const char *database, uint64_t fingerprint)
{
	int i;

	for (i = 0; i < EXPLAIN_TOP; i++)
		if (ex->slot[i].wanted && ex->slot[i].fingerprint == fingerprint &&
		    !strcmp(ex->slot[i].database, database))
			return &ex->slot[i];
	return NULL;
}

bool explain_wants(struct explain *ex, const char *database, uint64_t fingerprint)
{
	struct sample *s;
	bool want;

	if (!ex || !fingerprint || !atomic_load_explicit(&ex->wanted, memory_order_relaxed))
		return false;
	pthread_mutex_lock(&ex->lock);
	s = slot_find(ex, database, fingerprint);
	want = s && !s->filled;
	pthread_mutex_unlock(&ex->lock);
	return want;
}

void explain_offer(struct explain *ex, const char *database, uint64_t fingerprint,
		   const char *mirror_db, const char *options, const char *text, int n_params,
		   const char *const *values, const int *lengths, const int *formats)
{
	size_t size, ldb = strlen(mirror_db) + 1, lopt = strlen(options) + 1;
	size_t ltext = strlen(text) + 1;
	struct sample *s;
	char *w;
	int i;

	if (!ex || n_params < 0)
		return;
	size = ldb + lopt + ltext + (size_t)n_params * (sizeof(char *) + 2 * sizeof(int));
	for (i = 0; i < n_params; i++)
		if (values[i])
			size += (size_t)lengths[i] + 1;
	if (size > EXPLAIN_SAMPLE_MAX)
		return;
	pthread_mutex_lock(&ex->lock);
	s = slot_find(ex, database, fingerprint);
	if (!s || s->filled || !(s->mem = malloc(size))) {
		pthread_mutex_unlock(&ex->lock);
		return;
	}
	s->values = s->mem;
	s->lengths = (int *)(s->values + n_params);
	s->formats = s->lengths + n_params;
	w = (char *)(s->formats + n_params);
	s->mirror_db = memcpy(w, mirror_db, ldb);
	w += ldb;
	s->options = memcpy(w, options, lopt);
	w += lopt;
	s->text = memcpy(w, text, ltext);
	w += ltext;
	s->n = n_params;
	for (i = 0; i < n_params; i++) {
		s->formats[i] = formats ? formats[i] : 0;
		s->lengths[i] = values[i] ? lengths[i] : 0;
		s->values[i] = NULL;
		if (values[i]) {
			memcpy(w, values[i], (size_t)lengths[i]);
			w[lengths[i]] = '\0';
			s->values[i] = w;
			w += lengths[i] + 1;
		}
	}
	s->filled = true;
	atomic_fetch_sub(&ex->wanted, 1);
	pthread_mutex_unlock(&ex->lock);
}

/* The mirror connection for a sample, made without blocking so that it is excluded from
 * capture before its startup packet leaves. NULL on failure (why: its reason). */
static PGconn *connect_mirror(struct explain *ex, const struct sample *s, struct ownconn *x,
			      const char **why)
{
	const char *kw[] = {"dbname", "dbname", "options", "application_name", NULL};
	const char *val[] = {ex->mirror, s->mirror_db, s->options, "pgshadow-explain", NULL};
	PostgresPollingStatusType st = PGRES_POLLING_WRITING;
	uint64_t deadline = now_ms() + ex->cfg.timeout_ms;
	PGconn *c = PQconnectStartParams(kw, val, 1);
	struct pollfd pfd;

	*why = "cannot connect";
	if (!c || PQstatus(c) == CONNECTION_BAD)
		goto fail;
	while (st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED) {
		ownconn_exclude(ex->cfg.cap, c, ex->cfg.capture_port, x);
		if (now_ms() > deadline || stopping(ex)) {
			*why = "connection timed out";
			goto fail;
		}
		pfd.fd = PQsocket(c);
		pfd.events = st == PGRES_POLLING_READING ? POLLIN : POLLOUT;
		if (poll(&pfd, 1, STEP_MS) > 0)
			st = PQconnectPoll(c);
	}
	if (st == PGRES_POLLING_OK)
		return c;
fail:
	PQfinish(c);
	ownconn_release(ex->cfg.cap, x);
	return NULL;
}

/* One statement, waited for at most until deadline (or a stop): its last result, or NULL. */
static PGresult *run(struct explain *ex, PGconn *c, const char *sql, const struct sample *s,
		     uint64_t deadline)
{
	PGresult *last = NULL, *r;
	struct pollfd pfd = {.fd = PQsocket(c), .events = POLLIN};

	if (!PQsendQueryParams(c, sql, s ? s->n : 0, NULL, s ? s->values : NULL,
			       s ? s->lengths : NULL, s ? s->formats : NULL, 0))
		return NULL;
	for (;;) {
		while (!PQisBusy(c)) {
			r = PQgetResult(c);
			if (!r)
				return last;
			PQclear(last);
			last = r;
		}
		if (now_ms() > deadline || stopping(ex))
			break;
		if (poll(&pfd, 1, STEP_MS) < 0 && errno != EINTR)
			break;
		if (!PQconsumeInput(c))
			break;
	}
	PQclear(last);
	return NULL;
}

/* EXPLAIN of one sample on the mirror: its summary, or why it failed, in out. */
static bool explain_one(struct explain *ex, const struct sample *s, char *out, size_t cap)
{
	uint64_t deadline = now_ms() + ex->cfg.timeout_ms;
	struct ownconn x = {0};
	const char *why = "";
	PGresult *res = NULL;
	char set[64], *sql = NULL;
	bool ok = false;
	PGconn *c = connect_mirror(ex, s, &x, &why);

	if (!c)
		goto out;
	snprintf(set, sizeof(set), "SET statement_timeout = %u", ex->cfg.timeout_ms);
	res = run(ex, c, set, NULL, deadline);
	if (!res || PQresultStatus(res) != PGRES_COMMAND_OK) {
		why = "cannot set statement_timeout";
		goto out;
	}
	PQclear(res);
	if (asprintf(&sql, "EXPLAIN (FORMAT JSON) %s", s->text) < 0) {
		sql = NULL;
		why = "out of memory";
		goto out;
	}
	res = run(ex, c, sql, s, deadline);
	if (!res) {
		why = "no answer in time";
	} else if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
		const char *code = PQresultErrorField(res, PG_DIAG_SQLSTATE);

		snprintf(out, cap, "EXPLAIN failed: SQLSTATE %s", code ? code : "unknown");
		why = NULL;
	} else if (plan_summarize(PQgetvalue(res, 0, 0), out, cap)) {
		ok = true;
		why = NULL;
	} else {
		why = "not a plan";
	}
out:
	if (why)
		snprintf(out, cap, "EXPLAIN failed: %s", why);
	PQclear(res);
	free(sql);
	PQfinish(c);
	ownconn_release(ex->cfg.cap, &x);
	return ok;
}

/* One round: want the top slower regressions without a plan; explain one held sample. */
static void round_once(struct explain *ex)
{
	struct querystats_row rows[EXPLAIN_TOP];
	struct sample *todo = NULL;
	char plan[PLAN_SUMMARY_MAX];
	size_t n, i;
	int k;

	n = ex->cfg.top(ex->cfg.ctx, rows, EXPLAIN_TOP);
	if (n > EXPLAIN_TOP)
		n = EXPLAIN_TOP;
	pthread_mutex_lock(&ex->lock);
	for (k = 0; k < EXPLAIN_TOP; k++) { /* forget what is no longer wanted */
		struct sample *s = &ex->slot[k];
		bool keep = false;

		for (i = 0; s->wanted && i < n; i++)
			keep |= rows[i].fingerprint == s->fingerprint &&
				!strcmp(rows[i].database, s->database) && !rows[i].plan[0] &&
				(rows[i].regressed & QUERYSTATS_SLOWER);
		if (s->wanted && !keep)
			slot_clear(ex, s);
	}
	for (i = 0; i < n; i++) {
		if (!(rows[i].regressed & QUERYSTATS_SLOWER) || rows[i].plan[0] ||
		    !rows[i].fingerprint || slot_find(ex, rows[i].database, rows[i].fingerprint))
			continue;
		for (k = 0; k < EXPLAIN_TOP && ex->slot[k].wanted; k++)
			;
		if (k == EXPLAIN_TOP)
			break;
		ex->slot[k].wanted = true;
		ex->slot[k].fingerprint = rows[i].fingerprint;
		memcpy(ex->slot[k].database, rows[i].database, sizeof(ex->slot[k].database));
		atomic_fetch_add(&ex->wanted, 1);
	}
	for (k = 0; k < EXPLAIN_TOP && !todo; k++)
		if (ex->slot[k].filled)
			todo = &ex->slot[k];
	if (todo)
		todo->busy = true;
	pthread_mutex_unlock(&ex->lock);
	if (!todo)
		return;
	/* the slot is busy: offers skip it (filled), rounds keep it (only this thread
	 * clears slots); its contents are read without the lock */
	if (explain_one(ex, todo, plan, sizeof(plan)))
		atomic_fetch_add(&ex->explained, 1);
	else
		atomic_fetch_add(&ex->failed, 1);
	ex->cfg.set_plan(ex->cfg.ctx, todo->database, todo->fingerprint, plan);
	pthread_mutex_lock(&ex->lock);
	slot_clear(ex, todo);
	pthread_mutex_unlock(&ex->lock);
}

static void *main_loop(void *arg)
{
	struct explain *ex = arg;
	struct timespec until;

	pthread_mutex_lock(&ex->lock);
	while (!ex->stop) {
		pthread_mutex_unlock(&ex->lock);
		round_once(ex);
		pthread_mutex_lock(&ex->lock);
		clock_gettime(CLOCK_MONOTONIC, &until);
		until.tv_sec += ex->cfg.interval_ms / 1000;
		until.tv_nsec += (long)(ex->cfg.interval_ms % 1000) * 1000000;
		if (until.tv_nsec >= 1000000000) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000;
		}
		while (!ex->stop && pthread_cond_timedwait(&ex->wake, &ex->lock, &until) == 0)
			;
	}
	pthread_mutex_unlock(&ex->lock);
	return NULL;
}

struct explain *explain_start(const struct explain_config *cfg, char *err, size_t errlen)
{
	struct explain *ex = calloc(1, sizeof(*ex));
	pthread_condattr_t ca;

	if (!ex || !cfg->top || !cfg->set_plan || !(ex->mirror = strdup(cfg->mirror))) {
		snprintf(err, errlen, "--explain-regressions: out of memory");
		free(ex);
		return NULL;
	}
	ex->cfg = *cfg;
	if (!ex->cfg.interval_ms)
		ex->cfg.interval_ms = 2000;
	if (!ex->cfg.timeout_ms)
		ex->cfg.timeout_ms = 10000;
	pthread_mutex_init(&ex->lock, NULL);
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	pthread_cond_init(&ex->wake, &ca);
	pthread_condattr_destroy(&ca);
	if (pthread_create(&ex->thread, NULL, main_loop, ex)) {
		snprintf(err, errlen, "--explain-regressions: cannot start a thread");
		explain_free(ex);
		return NULL;
	}
	pthread_setname_np(ex->thread, "pgshadow-explai");
	ex->started = true;
	return ex;
}

void explain_counts(struct explain *ex, uint64_t *explained, uint64_t *failed)
{
	*explained = ex ? atomic_load(&ex->explained) : 0;
	*failed = ex ? atomic_load(&ex->failed) : 0;
}

void explain_stop(struct explain *ex)
{
	if (!ex || !ex->started)
		return;
	pthread_mutex_lock(&ex->lock);
	ex->stop = true;
	pthread_cond_signal(&ex->wake);
	pthread_mutex_unlock(&ex->lock);
	pthread_join(ex->thread, NULL);
	ex->started = false;
}

void explain_free(struct explain *ex)
{
	int k;

	if (!ex)
		return;
	explain_stop(ex);
	for (k = 0; k < EXPLAIN_TOP; k++)
		slot_clear(ex, &ex->slot[k]);
	pthread_cond_destroy(&ex->wake);
	pthread_mutex_destroy(&ex->lock);
	free(ex->mirror);
	free(ex);
}
