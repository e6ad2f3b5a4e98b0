// SPDX-License-Identifier: BSD-2-Clause
/* resolver.c — pg_stat_activity lookups: identities of sessions whose start was missed,
 * texts of statements prepared before capture. See include/resolver.h. */
#define _GNU_SOURCE /* pthread_setname_np */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <libpq-fe.h>

#include "ownconn.h"
#include "redact.h"
#include "resolver.h"

#define QUEUE_MAX	  1024 /* pending lookups; more are refused and counted */
#define ATTEMPTS	  5    /* a session may appear in pg_stat_activity a little late */
#define INTERVAL_MS	  200  /* identity retries are batched: one query per interval */
#define CONNECT_TIMEOUT_S 5
#define QUERY_TIMEOUT_MS  5000 /* then the connection is dropped and made again */
#define STEP_MS		  100  /* longest wait before looking at `stopping` again */
#define BACKOFF_MIN_MS	  500
#define BACKOFF_MAX_MS	  30000

/* Statement lookups: the source's clock against ours (see skew_add). */
#define SKEW_SAMPLES   16
#define SKEW_WINDOW_NS 10000000000LL /* samples older than 10 s are not intersected */
#define SKEW_MIN       4	     /* fewer recent samples: a few clock readings first */
#define MATCH_SLACK_NS 20000LL	     /* clock-offset reading error, rounding */
#define US	       1000LL

/* The lookups, prepared on each connection (a lookup is then one round trip, no
 * planning: the sooner it reads the row, the likelier the session is still there). */
enum query {
	Q_IDENTITY = 0,
	Q_STATEMENT, /* $1: the client ports */
	Q_CLOCK,
	Q_MAX,
};

static const char *const query_sql[Q_MAX] = {
    [Q_IDENTITY] = "SELECT host(client_addr), client_port, datname, usename "
		   "FROM pg_stat_activity WHERE client_port IS NOT NULL AND datname IS NOT NULL",
    /* query_start and clock_timestamp() in µs since the epoch: both the server's clock */
    [Q_STATEMENT] = "SELECT host(client_addr), client_port, query, octet_length(query), "
		    "(extract(epoch FROM query_start) * 1000000)::int8, "
		    "(extract(epoch FROM clock_timestamp()) * 1000000)::int8 "
		    "FROM pg_stat_activity WHERE client_port = ANY ($1::int4[])",
    [Q_CLOCK] = "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8",
};

static const char *const query_name[Q_MAX] = {
    [Q_IDENTITY] = "pgshadow_identity",
    [Q_STATEMENT] = "pgshadow_statement",
    [Q_CLOCK] = "pgshadow_clock",
};

/* A text this close to track_activity_query_size may have been cut: the server keeps
 * size - 1 bytes and clips to whole characters (of up to max_char bytes) when read. */
static const char settings_sql[] =
    "SELECT setting::int8, pg_encoding_max_length(pg_char_to_encoding(getdatabaseencoding())) "
    "FROM pg_settings WHERE name = 'track_activity_query_size'";

struct pending {
	uint64_t flow_id;
	enum resolver_kind kind;
	uint8_t addr[16];
	uint16_t port;
	int attempts;
};

/* What the source's clock reads minus ours, known to lie within [lo, hi] (ns). */
struct skew_sample {
	int64_t lo, hi;
	uint64_t at; /* CLOCK_MONOTONIC */
};

struct resolver {
	char *dsn;
	struct capture *capture;
	PGconn *conn;
	struct ownconn excl; /* conn, out of capture */
	pthread_t thread;
	bool thread_started;
	pthread_mutex_t lock;
	pthread_cond_t wake;
	_Atomic bool stopping;
	struct pending queue[QUEUE_MAX]; /* waiting for a lookup (guarded by lock) */
	int n_queue;
	struct resolver_result done[QUEUE_MAX]; /* finished (guarded by lock) */
	int n_done;
	struct resolver_stats stats; /* guarded by lock */

	/* the thread's own */
	int64_t query_size, max_char; /* track_activity_query_size; longest character */
	bool prepared;		      /* the lookups are prepared on conn */
	struct skew_sample skew[SKEW_SAMPLES];
	int n_skew;
	int64_t skew_lo, skew_hi; /* the samples' intersection */
};

static uint64_t now_ns(clockid_t clk)
{
	struct timespec t;

	clock_gettime(clk, &t);
	return (uint64_t)t.tv_sec * 1000000000ULL + (uint64_t)t.tv_nsec;
}

/* CLOCK_REALTIME minus CLOCK_MONOTONIC, read between two monotonic readings (the closest
 * pair of three tries). */
static int64_t realtime_offset(void)
{
	int64_t best = 0, width = INT64_MAX;
	int i;

	for (i = 0; i < 3; i++) {
		uint64_t m1 = now_ns(CLOCK_MONOTONIC), rt = now_ns(CLOCK_REALTIME);
		uint64_t m2 = now_ns(CLOCK_MONOTONIC);

		if ((int64_t)(m2 - m1) < width) {
			width = (int64_t)(m2 - m1);
			best = (int64_t)rt - (int64_t)(m1 + (m2 - m1) / 2);
		}
	}
	return best;
}

static bool stopping(struct resolver *r)
{
	return atomic_load_explicit(&r->stopping, memory_order_relaxed);
}

/* Waits on the condition up to ms (lock held); false once stopping. */
static bool wait_ms(struct resolver *r, int ms)
{
	struct timespec until;

	clock_gettime(CLOCK_REALTIME, &until);
	until.tv_sec += ms / 1000;
	until.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (until.tv_nsec >= 1000000000L) {
		until.tv_sec++;
		until.tv_nsec -= 1000000000L;
	}
	if (!stopping(r))
		pthread_cond_timedwait(&r->wake, &r->lock, &until);
	return !stopping(r);
}

static void disconnect(struct resolver *r)
{
	PQfinish(r->conn);
	r->conn = NULL;
	ownconn_release(r->capture, &r->excl);
}

/*
 * Waits for the last result of what was sent, STEP_MS at a time so that resolver_stop is
 * never held up by the source; past QUERY_TIMEOUT_MS (or when stopping) the connection is
 * dropped. Returns the last result (the caller clears it) or NULL.
 */
static PGresult *wait_result(struct resolver *r)
{
	uint64_t deadline = now_ns(CLOCK_MONOTONIC) + QUERY_TIMEOUT_MS * 1000000ULL;
	PGresult *res, *last = NULL;
	struct pollfd pfd;

	for (;;) {
		while (PQisBusy(r->conn)) {
			if (stopping(r) || now_ns(CLOCK_MONOTONIC) > deadline)
				goto drop;
			pfd = (struct pollfd){.fd = PQsocket(r->conn), .events = POLLIN};
			if (poll(&pfd, 1, STEP_MS) < 0 && errno != EINTR)
				goto drop;
			if (!PQconsumeInput(r->conn))
				goto drop;
		}
		res = PQgetResult(r->conn);
		if (!res)
			return last;
		PQclear(last);
		last = res;
	}
drop:
	PQclear(last);
	disconnect(r);
	return NULL;
}

/* Runs a lookup, prepared when it could be (see wait_result). */
static PGresult *run_query(struct resolver *r, enum query q, const char *const *values)
{
	int n = q == Q_STATEMENT;

	if (!r->conn)
		return NULL;
	if (r->prepared ? !PQsendQueryPrepared(r->conn, query_name[q], n, values, NULL, NULL, 0)
			: !PQsendQueryParams(r->conn, query_sql[q], n, NULL, values, NULL, NULL, 0))
		return NULL;
	return wait_result(r);
}

/* Prepares the lookups on a new connection; a pooler in transaction mode may refuse, then
 * they are sent whole each time. */
static void prepare_queries(struct resolver *r)
{
	PGresult *res;
	int q;

	r->prepared = true;
	for (q = 0; q < Q_MAX && r->prepared && r->conn; q++) {
		res = PQsendPrepare(r->conn, query_name[q], query_sql[q], 0, NULL) ? wait_result(r)
										   : NULL;
		r->prepared = res && PQresultStatus(res) == PGRES_COMMAND_OK;
		PQclear(res);
	}
}

/* track_activity_query_size and the longest character of our database's encoding. */
static int read_settings(struct resolver *r)
{
	PGresult *res = NULL;
	int rc = -1;

	if (PQsendQuery(r->conn, settings_sql))
		res = wait_result(r);
	if (res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
		r->query_size = atoll(PQgetvalue(res, 0, 0));
		r->max_char = atoll(PQgetvalue(res, 0, 1));
		rc = r->query_size > 0 && r->max_char > 0 ? 0 : -1;
	}
	PQclear(res);
	return rc;
}

static void calibrate(struct resolver *r);

/* Connects without blocking libpq's handshake on us, so the socket can be excluded
 * before the startup packet leaves, then reads the settings and the source's clock.
 * Returns 0 or -1 with err filled. */
static int connect_source(struct resolver *r, char *err, size_t errlen)
{
	PostgresPollingStatusType st = PGRES_POLLING_WRITING;
	time_t deadline = time(NULL) + CONNECT_TIMEOUT_S;
	struct pollfd pfd;
	const char *msg;
	char why[512];
	int rc;

	r->conn = PQconnectStart(r->dsn);
	if (!r->conn || PQstatus(r->conn) == CONNECTION_BAD)
		goto fail;
	while (st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED) {
		pfd.fd = PQsocket(r->conn);
		ownconn_exclude(r->capture, r->conn, 0, &r->excl);
		pfd.events = st == PGRES_POLLING_READING ? POLLIN : POLLOUT;
		if (time(NULL) > deadline || stopping(r)) {
			snprintf(err, errlen, "--source-dsn: connection timed out after %d s",
				 CONNECT_TIMEOUT_S);
			goto out;
		}
		rc = poll(&pfd, 1, STEP_MS);
		if (rc < 0 && errno != EINTR)
			goto fail;
		if (rc > 0)
			st = PQconnectPoll(r->conn);
	}
	if (st != PGRES_POLLING_OK)
		goto fail;
	if (read_settings(r) == 0) {
		prepare_queries(r);
		calibrate(r);
		if (r->conn)
			return 0;
	}
	/* no error message when the query worked but its answer is of no use (no row, 0) */
	msg = r->conn ? strtok(PQerrorMessage(r->conn), "\n") : NULL;
	snprintf(err, errlen, "--source-dsn: cannot read track_activity_query_size: %s",
		 msg	   ? msg
		 : r->conn ? "unexpected answer"
			   : "connection lost");
	goto out;
fail:
	if (r->conn)
		redact_libpq_message(r->dsn, PQerrorMessage(r->conn), why, sizeof(why));
	snprintf(err, errlen, "--source-dsn: cannot connect: %s", r->conn ? why : "out of memory");
out:
	disconnect(r);
	return -1;
}

static void skew_add(struct resolver *r, int64_t lo, int64_t hi, uint64_t at);

/* A skew sample from c_us, the source's clock_timestamp() read between sent and got. */
static void skew_sample(struct resolver *r, const char *c_us, uint64_t sent, uint64_t got)
{
	int64_t c = atoll(c_us) * US - realtime_offset();

	skew_add(r, c - (int64_t)got, c + US - (int64_t)sent, got);
}

/* Reads the source's clock until SKEW_MIN recent samples bound the skew (at most
 * SKEW_MIN queries): the first lookups on a connection are slow, and a wide bound
 * would leave a statement's query_start matching its neighbours too. */
static void calibrate(struct resolver *r)
{
	uint64_t now = now_ns(CLOCK_MONOTONIC), sent, got;
	int i, recent = 0;

	for (i = 0; i < r->n_skew; i++)
		recent += (int64_t)(now - r->skew[i].at) < SKEW_WINDOW_NS;
	for (i = recent; i < SKEW_MIN && r->conn; i++) {
		PGresult *res;

		sent = now_ns(CLOCK_MONOTONIC);
		res = run_query(r, Q_CLOCK, NULL);
		got = now_ns(CLOCK_MONOTONIC);
		if (res && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1)
			skew_sample(r, PQgetvalue(res, 0, 0), sent, got);
		PQclear(res);
	}
}

static void parse_addr(const char *s, uint8_t out[16])
{
	memset(out, 0, 16);
	if (inet_pton(AF_INET, s, out + 12) == 1) {
		out[10] = out[11] = 0xff;
		return;
	}
	if (inet_pton(AF_INET6, s, out) != 1)
		memset(out, 0, 16);
}

/* The row of res (address in column 0, port in 1) of p's client, or -1. */
static int find_row(PGresult *res, const struct pending *p)
{
	int row, rows = PQntuples(res);
	uint8_t addr[16];

	for (row = 0; row < rows; row++) {
		if (atoi(PQgetvalue(res, row, 1)) != p->port)
			continue;
		parse_addr(PQgetvalue(res, row, 0), addr);
		if (!memcmp(addr, p->addr, 16))
			return row;
	}
	return -1;
}

/* The thread's state between rounds. */
struct round {
	struct pending *batch, *retry; /* 2 * QUEUE_MAX, QUEUE_MAX */
	int n_retry;
	uint64_t retry_at, connect_at; /* CLOCK_MONOTONIC */
	int backoff_ms;
	struct resolver_result *out; /* 2 * QUEUE_MAX: a round's answers, before publish */
	int n_out;
	struct resolver_stats add; /* a round's counts, before publish */
};

/* A new answer of the round to p. */
static struct resolver_result *answer(struct round *w, const struct pending *p)
{
	struct resolver_result *out = &w->out[w->n_out++];

	memset(out, 0, sizeof(*out));
	out->flow_id = p->flow_id;
	out->kind = p->kind;
	return out;
}

/* Hands the round's answers to the capture thread and adds its counts: the lock is held
 * for copies only, never while matching rows or waiting for the source. */
static void publish(struct resolver *r, struct round *w)
{
	int i;

	pthread_mutex_lock(&r->lock);
	for (i = 0; i < w->n_out; i++) {
		if (r->n_done == QUEUE_MAX) {
			r->stats.queue_full++;
			free(w->out[i].text);
			continue;
		}
		r->done[r->n_done++] = w->out[i];
	}
	r->stats.resolved += w->add.resolved;
	r->stats.not_found += w->add.not_found;
	r->stats.queue_full += w->add.queue_full;
	r->stats.queries += w->add.queries;
	r->stats.query_errors += w->add.query_errors;
	r->stats.reconnects += w->add.reconnects;
	pthread_mutex_unlock(&r->lock);
	memset(&w->add, 0, sizeof(w->add));
	w->n_out = 0;
}

/* An identity lookup to make again later; dropped and counted when full. */
static void retry_push(struct round *w, const struct pending *p)
{
	if (w->n_retry == QUEUE_MAX)
		w->add.queue_full++;
	else
		w->retry[w->n_retry++] = *p;
}

/* One query for the identities of the batch; matches by client address and port. Those
 * not found yet go to retry (up to ATTEMPTS); all of them when the connection was lost. */
static void lookup_identities(struct resolver *r, struct pending *batch, int n, struct round *w)
{
	PGresult *res = run_query(r, Q_IDENTITY, NULL);
	bool ok = res && PQresultStatus(res) == PGRES_TUPLES_OK;
	int i, row = -1;

	w->add.queries++;
	w->add.query_errors += !ok;
	for (i = 0; i < n; i++) {
		struct resolver_result *out;

		if (!ok && !r->conn) { /* the source went away: when it is back */
			retry_push(w, &batch[i]);
			continue;
		}
		if (ok)
			row = find_row(res, &batch[i]);
		batch[i].attempts++;
		if (row < 0 && batch[i].attempts < ATTEMPTS) {
			retry_push(w, &batch[i]);
			continue;
		}
		out = answer(w, &batch[i]);
		out->found = row >= 0;
		if (out->found) {
			snprintf(out->database, sizeof(out->database), "%s",
				 PQgetvalue(res, row, 2));
			snprintf(out->user, sizeof(out->user), "%s", PQgetvalue(res, row, 3));
			w->add.resolved++;
		} else {
			w->add.not_found++;
		}
	}
	PQclear(res);
}

/*
 * A new bound of the skew (the source's clock minus ours): its clock_timestamp() was read
 * between our sending and our receiving. Samples of the last SKEW_WINDOW_NS are
 * intersected — the same host's clock gives a window around 0 as narrow as the fastest
 * lookups; when they disagree (a clock was stepped or slewed) only the latest is kept.
 */
static void skew_add(struct resolver *r, int64_t lo, int64_t hi, uint64_t at)
{
	int64_t ilo = lo, ihi = hi;
	int i, k = 0;

	for (i = 0; i < r->n_skew; i++)
		if ((int64_t)(at - r->skew[i].at) < SKEW_WINDOW_NS && k < SKEW_SAMPLES - 1)
			r->skew[k++] = r->skew[i];
	r->skew[k++] = (struct skew_sample){.lo = lo, .hi = hi, .at = at};
	r->n_skew = k;
	for (i = 0; i < k; i++) {
		ilo = r->skew[i].lo > ilo ? r->skew[i].lo : ilo;
		ihi = r->skew[i].hi < ihi ? r->skew[i].hi : ihi;
	}
	if (ilo > ihi) {
		r->skew[0] = r->skew[k - 1];
		r->n_skew = 1;
		ilo = lo;
		ihi = hi;
	}
	r->skew_lo = ilo;
	r->skew_hi = ihi;
}

/* One matched row of a statement lookup into out. off: CLOCK_REALTIME - CLOCK_MONOTONIC. */
static void statement_row(struct resolver *r, PGresult *res, int row, int64_t off,
			  struct resolver_result *out)
{
	int64_t len = atoll(PQgetvalue(res, row, 3)), t;

	out->status = RESOLVER_STMT_FOUND;
	if (PQgetisnull(res, row, 4))
		return; /* never ran anything: lo = hi = 0 matches nothing */
	/* query_start in µs, on our clock: the true time is within the skew's bounds */
	t = atoll(PQgetvalue(res, row, 4)) * US - off;
	out->lo_ns = (uint64_t)(t - r->skew_hi - MATCH_SLACK_NS);
	out->hi_ns = (uint64_t)(t + US - r->skew_lo + MATCH_SLACK_NS);
	out->truncated = len >= r->query_size - r->max_char;
	if (out->truncated)
		return;
	out->text_len = (size_t)PQgetlength(res, row, 2);
	out->text = malloc(out->text_len + 1);
	if (!out->text) {
		out->status = RESOLVER_STMT_FAILED;
		return;
	}
	memcpy(out->text, PQgetvalue(res, row, 2), out->text_len + 1);
}

/* The ports of the batch as an int4[] literal; NULL on ENOMEM. */
static char *port_array(const struct pending *batch, int n)
{
	char *s = malloc((size_t)n * 7 + 3), *p = s;
	int i;

	if (!s)
		return NULL;
	*p++ = '{';
	for (i = 0; i < n; i++)
		p += sprintf(p, i ? ",%u" : "%u", batch[i].port);
	*p++ = '}';
	*p = 0;
	return s;
}

/* One query for the statement lookups of the batch, each answered once. */
static void lookup_statements(struct resolver *r, struct pending *batch, int n, struct round *w)
{
	char *ports = port_array(batch, n);
	uint64_t sent, got;
	PGresult *res = NULL;
	int64_t off;
	bool ok;
	int i, row;

	calibrate(r);
	sent = now_ns(CLOCK_MONOTONIC);
	if (ports)
		res = run_query(r, Q_STATEMENT, (const char *const *)&ports);
	got = now_ns(CLOCK_MONOTONIC);
	ok = res && PQresultStatus(res) == PGRES_TUPLES_OK;
	off = realtime_offset();
	if (ok && PQntuples(res) > 0 && !PQgetisnull(res, 0, 5))
		skew_sample(r, PQgetvalue(res, 0, 5), sent, got);
	w->add.queries++;
	w->add.query_errors += !ok;
	for (i = 0; i < n; i++) {
		struct resolver_result *out = answer(w, &batch[i]);

		out->ready_ns = got;
		row = ok ? find_row(res, &batch[i]) : -1;
		if (!ok)
			out->status = RESOLVER_STMT_FAILED;
		else if (row < 0)
			out->status = RESOLVER_STMT_NOT_FOUND;
		else
			statement_row(r, res, row, off, out);
	}
	PQclear(res);
	free(ports);
}

/* Statement lookups that cannot be made now (no connection) are answered failed. */
static void fail_statements(struct round *w, struct pending *batch, int n)
{
	uint64_t now = now_ns(CLOCK_MONOTONIC);
	int i;

	for (i = 0; i < n; i++) {
		struct resolver_result *out = answer(w, &batch[i]);

		out->status = RESOLVER_STMT_FAILED;
		out->ready_ns = now;
	}
}

/* Splits the batch: statement lookups first, identities after; returns how many are
 * statement lookups. */
static int split(struct pending *batch, int n)
{
	int i, k = 0;

	for (i = 0; i < n; i++) {
		if (batch[i].kind == RESOLVER_STATEMENT) {
			struct pending t = batch[k];

			batch[k++] = batch[i];
			batch[i] = t;
		}
	}
	return k;
}

/* Milliseconds from now to at, within [1, 1000]. */
static int ms_until(uint64_t at, uint64_t now)
{
	uint64_t ms = at > now ? (at - now + 999999) / 1000000 : 1;

	return ms > 1000 ? 1000 : (int)ms;
}

/* Waits for work; takes the queue and the due retries into the batch. Returns its size,
 * or -1 when stopping. */
static int take(struct resolver *r, struct round *w)
{
	uint64_t now;
	int n, i;

	pthread_mutex_lock(&r->lock);
	for (;;) {
		now = now_ns(CLOCK_MONOTONIC);
		if (stopping(r)) {
			pthread_mutex_unlock(&r->lock);
			return -1;
		}
		if (r->n_queue || (w->n_retry && now >= w->retry_at && now >= w->connect_at))
			break;
		wait_ms(r, w->n_retry
			       ? ms_until(w->retry_at > w->connect_at ? w->retry_at : w->connect_at,
					  now)
			       : 1000);
	}
	n = r->n_queue;
	memcpy(w->batch, r->queue, (size_t)n * sizeof(*w->batch));
	r->n_queue = 0;
	pthread_mutex_unlock(&r->lock);
	if (w->n_retry && now >= w->retry_at) {
		for (i = 0; i < w->n_retry; i++)
			w->batch[n++] = w->retry[i];
		w->n_retry = 0;
	}
	return n;
}

/*
 * Makes sure there is a connection: the source may have restarted. Reconnects with capped
 * exponential backoff; meanwhile statement lookups are answered failed (the session asks
 * again later) and identity lookups wait. Returns whether the batch can be looked up.
 */
static bool ensure_connected(struct resolver *r, struct round *w, int n, int k)
{
	uint64_t now = now_ns(CLOCK_MONOTONIC);
	char err[256];
	int i;

	if (r->conn && PQstatus(r->conn) == CONNECTION_OK)
		return true;
	if (now >= w->connect_at) {
		disconnect(r);
		w->add.reconnects++;
		if (connect_source(r, err, sizeof(err)) == 0) {
			w->backoff_ms = BACKOFF_MIN_MS;
			return true;
		}
		w->connect_at = now + (uint64_t)w->backoff_ms * 1000000ULL;
		w->backoff_ms =
		    w->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : w->backoff_ms * 2;
	}
	fail_statements(w, w->batch, k);
	for (i = k; i < n; i++)
		retry_push(w, &w->batch[i]);
	publish(r, w);
	return false;
}

static void *run(void *arg)
{
	struct resolver *r = arg;
	struct round w = {.backoff_ms = BACKOFF_MIN_MS};
	int n, k;

	w.batch = calloc(2 * QUEUE_MAX, sizeof(*w.batch));
	w.retry = calloc(QUEUE_MAX, sizeof(*w.retry));
	w.out = calloc(2 * QUEUE_MAX, sizeof(*w.out));
	while (w.batch && w.retry && w.out && (n = take(r, &w)) >= 0) {
		k = split(w.batch, n);
		if (!ensure_connected(r, &w, n, k))
			continue;
		if (k) { /* first, and published at once: the session is moving on */
			lookup_statements(r, w.batch, k, &w);
			publish(r, &w);
		}
		if (n > k) {
			lookup_identities(r, w.batch + k, n - k, &w);
			publish(r, &w);
			w.retry_at = now_ns(CLOCK_MONOTONIC) + INTERVAL_MS * 1000000ULL;
		}
	}
	free(w.batch);
	free(w.retry);
	free(w.out);
	return NULL;
}

struct resolver *resolver_start(const char *dsn, struct capture *c, char *err, size_t errlen)
{
	struct resolver *r = calloc(1, sizeof(*r));

	if (!r) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	r->capture = c;
	r->dsn = strdup(dsn);
	pthread_mutex_init(&r->lock, NULL);
	pthread_cond_init(&r->wake, NULL);
	if (!r->dsn || connect_source(r, err, errlen))
		goto fail;
	if (pthread_create(&r->thread, NULL, run, r)) {
		snprintf(err, errlen, "--source-dsn: cannot start a thread");
		goto fail;
	}
	pthread_setname_np(r->thread, "pgshadow-resolve");
	r->thread_started = true;
	return r;
fail:
	resolver_stop(r);
	return NULL;
}

/* Queues one lookup (lock held); false when the queue is full (counted). */
static bool enqueue(struct resolver *r, enum resolver_kind kind, uint64_t flow_id,
		    const struct tcpstream_addr *client)
{
	struct pending *p;

	if (r->n_queue == QUEUE_MAX) {
		r->stats.queue_full++;
		return false;
	}
	p = &r->queue[r->n_queue++];
	p->flow_id = flow_id;
	p->kind = kind;
	memcpy(p->addr, client->addr, 16);
	p->port = client->port;
	p->attempts = 0;
	pthread_cond_signal(&r->wake);
	return true;
}

void resolver_request(struct resolver *r, uint64_t flow_id, const struct tcpstream_addr *client)
{
	pthread_mutex_lock(&r->lock);
	r->stats.requests++;
	enqueue(r, RESOLVER_IDENTITY, flow_id, client);
	pthread_mutex_unlock(&r->lock);
}

bool resolver_request_statement(struct resolver *r, uint64_t flow_id,
				const struct tcpstream_addr *client)
{
	bool ok;

	pthread_mutex_lock(&r->lock);
	r->stats.statements++;
	ok = enqueue(r, RESOLVER_STATEMENT, flow_id, client);
	pthread_mutex_unlock(&r->lock);
	return ok;
}

int resolver_results(struct resolver *r, struct resolver_result *out, int max, uint64_t now_ns)
{
	int i, n = 0, kept = 0;

	pthread_mutex_lock(&r->lock);
	for (i = 0; i < r->n_done; i++) {
		const struct resolver_result *d = &r->done[i];

		if (n < max && (d->kind != RESOLVER_STATEMENT || d->ready_ns <= now_ns))
			out[n++] = *d;
		else
			r->done[kept++] = *d;
	}
	r->n_done = kept;
	pthread_mutex_unlock(&r->lock);
	return n;
}

void resolver_stats(struct resolver *r, struct resolver_stats *out)
{
	pthread_mutex_lock(&r->lock);
	*out = r->stats;
	pthread_mutex_unlock(&r->lock);
}

void resolver_stop(struct resolver *r)
{
	int i;

	if (!r)
		return;
	if (r->thread_started) {
		pthread_mutex_lock(&r->lock);
		atomic_store(&r->stopping, true);
		pthread_cond_signal(&r->wake);
		pthread_mutex_unlock(&r->lock);
		pthread_join(r->thread, NULL);
	}
	disconnect(r);
	for (i = 0; i < r->n_done; i++)
		free(r->done[i].text);
	pthread_cond_destroy(&r->wake);
	pthread_mutex_destroy(&r->lock);
	free(r->dsn);
	free(r);
}
