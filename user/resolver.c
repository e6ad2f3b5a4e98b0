// SPDX-License-Identifier: BSD-2-Clause
/* resolver.c — pg_stat_activity lookups for sessions of unknown database. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>

#include <libpq-fe.h>

#include "ownconn.h"
#include "resolver.h"

#define QUEUE_MAX	  1024 /* pending lookups; more are refused and counted */
#define ATTEMPTS	  5    /* a session may appear in pg_stat_activity a little late */
#define INTERVAL_MS	  200  /* lookups are batched: one query per interval */
#define CONNECT_TIMEOUT_S 5
#define BACKOFF_MAX_MS	  30000

struct pending {
	uint64_t flow_id;
	uint8_t addr[16];
	uint16_t port;
	int attempts;
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
	bool stopping;
	struct pending queue[QUEUE_MAX]; /* waiting for a lookup (guarded by lock) */
	int n_queue;
	struct resolver_result done[QUEUE_MAX]; /* finished (guarded by lock) */
	int n_done;
	struct resolver_stats stats; /* guarded by lock */
};

/* Connects without blocking libpq's handshake on us, so the socket can be excluded
 * before the startup packet leaves. Returns 0 or -1 with err filled. */
static int connect_source(struct resolver *r, char *err, size_t errlen)
{
	PostgresPollingStatusType st = PGRES_POLLING_WRITING;
	time_t deadline = time(NULL) + CONNECT_TIMEOUT_S;
	struct pollfd pfd;

	r->conn = PQconnectStart(r->dsn);
	if (!r->conn || PQstatus(r->conn) == CONNECTION_BAD)
		goto fail;
	while (st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED) {
		pfd.fd = PQsocket(r->conn);
		ownconn_exclude(r->capture, r->conn, 0, &r->excl);
		pfd.events = st == PGRES_POLLING_READING ? POLLIN : POLLOUT;
		if (time(NULL) > deadline) {
			snprintf(err, errlen, "--source-dsn: connection timed out after %d s",
				 CONNECT_TIMEOUT_S);
			goto out;
		}
		if (poll(&pfd, 1, 1000) < 0 && errno != EINTR)
			goto fail;
		st = PQconnectPoll(r->conn);
	}
	if (st == PGRES_POLLING_OK)
		return 0;
fail:
	snprintf(err, errlen, "--source-dsn: cannot connect: %s",
		 r->conn ? strtok(PQerrorMessage(r->conn), "\n") : "out of memory");
out:
	PQfinish(r->conn);
	r->conn = NULL;
	ownconn_release(r->capture, &r->excl);
	return -1;
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

/* One query for the whole batch; matches by client address and port. */
static void lookup(struct resolver *r, struct pending *batch, int n)
{
	PGresult *res;
	int i, row, rows;
	uint8_t addr[16];

	res = PQexec(r->conn, "SELECT host(client_addr), client_port, datname, usename "
			      "FROM pg_stat_activity WHERE client_port IS NOT NULL "
			      "AND datname IS NOT NULL");
	pthread_mutex_lock(&r->lock);
	r->stats.queries++;
	if (PQresultStatus(res) != PGRES_TUPLES_OK) {
		r->stats.query_errors++;
		pthread_mutex_unlock(&r->lock);
		PQclear(res);
		return;
	}
	rows = PQntuples(res);
	for (i = 0; i < n; i++) {
		struct resolver_result *out;

		for (row = 0; row < rows; row++) {
			parse_addr(PQgetvalue(res, row, 0), addr);
			if (atoi(PQgetvalue(res, row, 1)) == batch[i].port &&
			    !memcmp(addr, batch[i].addr, 16))
				break;
		}
		batch[i].attempts++;
		if (row == rows && batch[i].attempts < ATTEMPTS && r->n_queue < QUEUE_MAX) {
			r->queue[r->n_queue++] = batch[i]; /* try again next round */
			continue;
		}
		if (r->n_done == QUEUE_MAX) {
			r->stats.queue_full++;
			continue;
		}
		out = &r->done[r->n_done++];
		memset(out, 0, sizeof(*out));
		out->flow_id = batch[i].flow_id;
		out->found = row < rows;
		if (out->found) {
			snprintf(out->database, sizeof(out->database), "%s",
				 PQgetvalue(res, row, 2));
			snprintf(out->user, sizeof(out->user), "%s", PQgetvalue(res, row, 3));
			r->stats.resolved++;
		} else {
			r->stats.not_found++;
		}
	}
	pthread_mutex_unlock(&r->lock);
	PQclear(res);
}

static void *run(void *arg)
{
	struct resolver *r = arg;
	struct pending *batch = calloc(QUEUE_MAX, sizeof(*batch));
	int backoff_ms = 500, n;
	struct timespec until;
	char err[256];

	while (batch) {
		pthread_mutex_lock(&r->lock);
		clock_gettime(CLOCK_REALTIME, &until);
		until.tv_nsec += INTERVAL_MS * 1000000L;
		if (until.tv_nsec >= 1000000000L) {
			until.tv_sec++;
			until.tv_nsec -= 1000000000L;
		}
		while (!r->stopping && !r->n_queue)
			if (pthread_cond_timedwait(&r->wake, &r->lock, &until) == ETIMEDOUT)
				break;
		if (r->stopping) {
			pthread_mutex_unlock(&r->lock);
			break;
		}
		n = r->n_queue;
		memcpy(batch, r->queue, n * sizeof(*batch));
		r->n_queue = 0;
		pthread_mutex_unlock(&r->lock);
		if (!n)
			continue;
		if (!r->conn || PQstatus(r->conn) != CONNECTION_OK) {
			/* the source restarted: reconnect with capped exponential backoff */
			PQfinish(r->conn);
			r->conn = NULL;
			ownconn_release(r->capture, &r->excl);
			if (connect_source(r, err, sizeof(err))) {
				pthread_mutex_lock(&r->lock);
				memcpy(r->queue, batch, n * sizeof(*batch)); /* keep them */
				r->n_queue = n;
				r->stats.reconnects++;
				pthread_mutex_unlock(&r->lock);
				poll(NULL, 0, backoff_ms);
				backoff_ms = backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS
									     : backoff_ms * 2;
				continue;
			}
			backoff_ms = 500;
		}
		lookup(r, batch, n);
	}
	free(batch);
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
	r->thread_started = true;
	return r;
fail:
	resolver_stop(r);
	return NULL;
}

void resolver_request(struct resolver *r, uint64_t flow_id, const struct tcpstream_addr *client)
{
	pthread_mutex_lock(&r->lock);
	r->stats.requests++;
	if (r->n_queue == QUEUE_MAX) {
		r->stats.queue_full++;
	} else {
		struct pending *p = &r->queue[r->n_queue++];

		p->flow_id = flow_id;
		memcpy(p->addr, client->addr, 16);
		p->port = client->port;
		p->attempts = 0;
		pthread_cond_signal(&r->wake);
	}
	pthread_mutex_unlock(&r->lock);
}

int resolver_results(struct resolver *r, struct resolver_result *out, int max)
{
	int n;

	pthread_mutex_lock(&r->lock);
	n = r->n_done < max ? r->n_done : max;
	memcpy(out, r->done, n * sizeof(*out));
	memmove(r->done, r->done + n, (r->n_done - n) * sizeof(*out));
	r->n_done -= n;
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
	if (!r)
		return;
	if (r->thread_started) {
		pthread_mutex_lock(&r->lock);
		r->stopping = true;
		pthread_cond_signal(&r->wake);
		pthread_mutex_unlock(&r->lock);
		pthread_join(r->thread, NULL);
	}
	PQfinish(r->conn);
	ownconn_release(r->capture, &r->excl);
	pthread_cond_destroy(&r->wake);
	pthread_mutex_destroy(&r->lock);
	free(r->dsn);
	free(r);
}
