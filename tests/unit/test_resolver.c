// SPDX-License-Identifier: BSD-2-Clause
/*
 * resolver: identities and statement texts from pg_stat_activity — found, retried, not
 * found, cut, held back until the capture has caught up; the source's clock; lookups sent
 * whole when they cannot be prepared; a source that goes away, comes back or does not;
 * full queues; a stop while the source is slow. The source is a scripted PostgreSQL
 * backend on loopback (protocol 3, simple and extended queries), the capture a recording
 * stub of capture_exclude_add/remove.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
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
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include "peer.h"

#include "resolver.h"

/* ---- the capture: a recording stub ---- */

static char capture_token;
#define CAP ((struct capture *)&capture_token)
static _Atomic int excluded; /* tuples excluded now */

int capture_exclude_add(struct capture *c, const struct capture_tuple *t)
{
	(void)t;
	if (c != CAP)
		abort();
	excluded++;
	return 0;
}

int capture_exclude_remove(struct capture *c, const struct capture_tuple *t)
{
	(void)t;
	if (c != CAP)
		abort();
	excluded--;
	return 0;
}

/* ---- clocks ---- */

static uint64_t clock_ns(clockid_t clk)
{
	struct timespec t;

	clock_gettime(clk, &t);
	return (uint64_t)t.tv_sec * 1000000000ull + (uint64_t)t.tv_nsec;
}

static long ms_since(uint64_t t0)
{
	return (long)((clock_ns(CLOCK_MONOTONIC) - t0) / 1000000);
}

/* ---- the source: a scripted PostgreSQL backend ---- */

enum kind { K_OTHER, K_IDENTITY, K_STATEMENT, K_CLOCK };

struct ident_row {
	const char *addr; /* host(client_addr); NULL: SQL NULL */
	int port;
	const char *db, *user;
};

struct stmt_row {
	const char *addr;
	int port;
	const char *query;
	long long len;	    /* octet_length(query) */
	long long start_us; /* query_start; 0: SQL NULL (never ran anything) */
};

struct source {
	int lfd;
	uint16_t port;
	pthread_t thread;
	pthread_mutex_t lock;
	/* the script (under lock) */
	long long query_size, max_char;
	bool refuse_prepare;  /* named statements are refused (a pooler) */
	bool kill_next;	      /* the next lookup: the connection is closed instead */
	bool gone_after_kill; /* and no connection is accepted after it */
	int hold_next_ms;     /* the next lookup is answered that late (or never) */
	struct ident_row ident[4];
	int n_ident;
	struct stmt_row stmt[4];
	int n_stmt;
	/* what it saw (under lock) */
	int connections, identity_queries, statement_queries, clock_queries, named_parses;
	int unnamed_lookups; /* lookups sent whole (Parse of the unnamed statement) */
	char ports[8192];    /* $1 of the last statement lookup */
};

static void pg_columns(int fd, int n)
{
	char body[512], *w = body;
	uint16_t u16 = htons(n);
	int i;

	memcpy(w, &u16, 2), w += 2;
	for (i = 0; i < n; i++) {
		static const char meta[18] = {
		    0,		0,	    0,		0,	    0,		0,
		    0,		0,	    0,		25,	    (char)0xff, (char)0xff,
		    (char)0xff, (char)0xff, (char)0xff, (char)0xff, 0,		0};

		w += sprintf(w, "c%d", i) + 1;
		memcpy(w, meta, sizeof(meta)), w += sizeof(meta);
	}
	pg_send(fd, 'T', body, w - body);
}

/* DataRow of n text values (NULL: SQL NULL). */
static void pg_row(int fd, int n, const char *const *v)
{
	char body[4096], *w = body;
	uint16_t u16 = htons(n);
	uint32_t u32;
	int i;

	memcpy(w, &u16, 2), w += 2;
	for (i = 0; i < n; i++) {
		u32 = htonl(v[i] ? (uint32_t)strlen(v[i]) : 0xffffffffu);
		memcpy(w, &u32, 4), w += 4;
		if (v[i])
			memcpy(w, v[i], strlen(v[i])), w += strlen(v[i]);
	}
	pg_send(fd, 'D', body, w - body);
}

static enum kind kind_of(const char *sql)
{
	if (strstr(sql, "datname, usename"))
		return K_IDENTITY;
	if (strstr(sql, "query_start"))
		return K_STATEMENT;
	if (strstr(sql, "clock_timestamp()"))
		return K_CLOCK;
	return K_OTHER;
}

static void answer(struct source *s, int fd, enum kind k)
{
	char now[32], port[16], len[32], start[32];
	int i;

	snprintf(now, sizeof(now), "%llu", (unsigned long long)(clock_ns(CLOCK_REALTIME) / 1000));
	if (k == K_CLOCK) {
		const char *v[1] = {now};

		pg_columns(fd, 1);
		pg_row(fd, 1, v);
		pg_send(fd, 'C', "SELECT 1", 9);
		return;
	}
	if (k == K_IDENTITY) {
		pg_columns(fd, 4);
		for (i = 0; i < s->n_ident; i++) {
			const char *v[4] = {s->ident[i].addr, port, s->ident[i].db,
					    s->ident[i].user};

			snprintf(port, sizeof(port), "%d", s->ident[i].port);
			pg_row(fd, 4, v);
		}
	} else {
		pg_columns(fd, 6);
		for (i = 0; i < s->n_stmt; i++) {
			const char *v[6] = {s->stmt[i].addr,
					    port,
					    s->stmt[i].query,
					    len,
					    s->stmt[i].start_us ? start : NULL,
					    now};

			snprintf(port, sizeof(port), "%d", s->stmt[i].port);
			snprintf(len, sizeof(len), "%lld", s->stmt[i].len);
			snprintf(start, sizeof(start), "%lld", s->stmt[i].start_us);
			pg_row(fd, 6, v);
		}
	}
	pg_send(fd, 'C', "SELECT", 7);
}

/* Waits ms for the client to go away; true when it did. */
static bool client_gone_within(int fd, int ms)
{
	struct pollfd p = {.fd = fd, .events = POLLIN};
	char c;

	return poll(&p, 1, ms) > 0 && recv(fd, &c, 1, MSG_PEEK) <= 0;
}

/* One connection, until the client or the script ends it. Returns false when the source
 * is to accept no more. */
static bool serve(struct source *s, int fd)
{
	enum kind named[4] = {K_OTHER}, unnamed = K_OTHER, cur = K_OTHER;
	bool parsed = false, bound = false, refused = false, more = true;
	char type, *body = NULL;
	uint32_t len;

	body = pg_read_startup(fd, &len);
	if (!body)
		return true;
	pg_hello(fd);
	for (;;) {
		free(body);
		body = pg_read_message(fd, &type, &len);
		if (!body || type == 'X')
			break;
		pthread_mutex_lock(&s->lock);
		if (type == 'Q') {
			if (strstr(body, "track_activity_query_size")) {
				char a[32], b[32];
				const char *v[2] = {a, b};

				snprintf(a, sizeof(a), "%lld", s->query_size);
				snprintf(b, sizeof(b), "%lld", s->max_char);
				pg_columns(fd, 2);
				pg_row(fd, 2, v);
				pg_send(fd, 'C', "SELECT 1", 9);
			} else {
				pg_error(fd, "42601");
			}
			pg_ready(fd);
		} else if (type == 'P') {
			const char *name = body, *sql = body + strlen(body) + 1;

			parsed = true;
			if (*name) {
				s->named_parses++;
				refused |= s->refuse_prepare;
				named[kind_of(sql)] = kind_of(sql);
			} else {
				unnamed = kind_of(sql);
				s->unnamed_lookups += unnamed != K_CLOCK;
			}
		} else if (type == 'B') {
			const char *stmt = body + strlen(body) + 1;
			int k;

			bound = true;
			cur = unnamed;
			if (*stmt) { /* pgshadow_identity, _statement, _clock */
				for (k = 0; k < 4; k++)
					if (named[k] != K_OTHER &&
					    strstr(stmt, k == K_IDENTITY    ? "identity"
							 : k == K_STATEMENT ? "statement"
									    : "clock"))
						cur = named[k];
			}
			if (cur == K_STATEMENT) { /* $1: one text value, the ports */
				const char *b = stmt + strlen(stmt) + 1;
				uint16_t nf, u16;
				uint32_t u32;

				memcpy(&u16, b, 2), nf = ntohs(u16), b += 2 + 2 * nf + 2;
				memcpy(&u32, b, 4), u32 = ntohl(u32), b += 4;
				snprintf(s->ports, sizeof(s->ports), "%.*s", (int)u32, b);
			}
		} else if (type == 'S') {
			if (refused) {
				pg_error(fd, "26000");
			} else if (bound) {
				s->identity_queries += cur == K_IDENTITY;
				s->statement_queries += cur == K_STATEMENT;
				s->clock_queries += cur == K_CLOCK;
				if (cur != K_CLOCK && s->kill_next) {
					s->kill_next = false;
					more = !s->gone_after_kill;
					pthread_mutex_unlock(&s->lock);
					goto out;
				}
				if (cur != K_CLOCK && s->hold_next_ms) {
					int ms = s->hold_next_ms;

					s->hold_next_ms = 0;
					pthread_mutex_unlock(&s->lock);
					if (client_gone_within(fd, ms))
						goto out;
					pthread_mutex_lock(&s->lock);
				}
				if (parsed)
					pg_send(fd, '1', NULL, 0);
				pg_send(fd, '2', NULL, 0);
				answer(s, fd, cur);
			} else if (parsed) {
				pg_send(fd, '1', NULL, 0);
			}
			pg_ready(fd);
			parsed = bound = refused = false;
		}
		pthread_mutex_unlock(&s->lock);
	}
out:
	free(body);
	return more;
}

static void *source_run(void *arg)
{
	struct source *s = arg;
	int fd;

	while ((fd = accept(s->lfd, NULL, NULL)) >= 0) {
		bool more;

		pthread_mutex_lock(&s->lock);
		s->connections++;
		pthread_mutex_unlock(&s->lock);
		more = serve(s, fd);
		close(fd);
		if (!more) {
			pthread_mutex_lock(&s->lock);
			close(s->lfd); /* gone: connections are refused from now on */
			s->lfd = -1;
			pthread_mutex_unlock(&s->lock);
			break;
		}
	}
	return NULL;
}

static struct source *source_start(void)
{
	struct source *s = calloc(1, sizeof(*s));

	assert_non_null(s);
	pthread_mutex_init(&s->lock, NULL);
	s->query_size = 1024;
	s->max_char = 4;
	s->lfd = listen_on(AF_INET, 8, &s->port);
	assert_int_equal(pthread_create(&s->thread, NULL, source_run, s), 0);
	return s;
}

static void source_stop(struct source *s)
{
	pthread_mutex_lock(&s->lock);
	if (s->lfd >= 0)
		shutdown(s->lfd, SHUT_RDWR);
	pthread_mutex_unlock(&s->lock);
	pthread_join(s->thread, NULL);
	if (s->lfd >= 0)
		close(s->lfd);
	pthread_mutex_destroy(&s->lock);
	free(s);
}

static int seen(struct source *s, const int *counter)
{
	int n;

	pthread_mutex_lock(&s->lock);
	n = *counter;
	pthread_mutex_unlock(&s->lock);
	return n;
}

static const char *dsn(struct source *s)
{
	static char text[256];

	snprintf(text, sizeof(text),
		 "host=127.0.0.1 port=%u user=pgshadow password=hunter2 sslmode=disable "
		 "gssencmode=disable",
		 s->port);
	return text;
}

static struct resolver *start(struct source *s)
{
	char err[512] = "";
	struct resolver *r = resolver_start(dsn(s), CAP, err, sizeof(err));

	if (!r)
		fail_msg("resolver_start: %s", err);
	return r;
}

static struct tcpstream_addr client(const char *ip, uint16_t port)
{
	struct tcpstream_addr a = {.port = port, .family = 4};

	a.addr[10] = a.addr[11] = 0xff;
	assert_int_equal(inet_pton(AF_INET, ip, a.addr + 12), 1);
	return a;
}

/* Waits (up to ms) until n answers have been taken into out[0..n). */
static void take(struct resolver *r, struct resolver_result *out, int n, int ms)
{
	uint64_t t0 = clock_ns(CLOCK_MONOTONIC);
	int got = 0;

	while (got < n && ms_since(t0) < ms) {
		got += resolver_results(r, out + got, n - got, UINT64_MAX);
		if (got < n)
			usleep(5000);
	}
	assert_int_equal(got, n);
}

static void stats_of(struct resolver *r, struct resolver_stats *st)
{
	memset(st, 0xff, sizeof(*st));
	resolver_stats(r, st);
}

/* ---- identities ---- */

static void test_identity(void **state)
{
	struct source *s = source_start();
	struct tcpstream_addr a = client("10.0.0.7", 40001), b = client("10.0.0.8", 40002);
	struct resolver_result out[2];
	struct resolver_stats st;
	uint64_t t0;
	struct resolver *r;

	(void)state;
	s->ident[0] = (struct ident_row){"10.0.0.9", 40001, "wrongaddr", "x"}; /* same port */
	s->ident[1] = (struct ident_row){NULL, 40001, "noaddr", "x"};
	s->ident[2] = (struct ident_row){"10.0.0.7", 40001, "appdb", "alice"};
	s->n_ident = 3;
	r = start(s);
	assert_int_equal(excluded, 2); /* its connection, both ways */
	assert_int_equal(seen(s, &s->named_parses), 3);

	t0 = clock_ns(CLOCK_MONOTONIC);
	resolver_request(r, 7, &a);
	resolver_request(r, 8, &b); /* never in pg_stat_activity */
	take(r, out, 1, 3000);
	assert_true(out[0].flow_id == 7);
	assert_int_equal(out[0].kind, RESOLVER_IDENTITY);
	assert_true(out[0].found);
	assert_string_equal(out[0].database, "appdb");
	assert_string_equal(out[0].user, "alice");

	/* asked again every 200 ms, five times in all, then answered not found */
	take(r, out + 1, 1, 5000);
	assert_true(out[1].flow_id == 8);
	assert_false(out[1].found);
	assert_true(ms_since(t0) >= 4 * 200 - 50);
	assert_int_equal(seen(s, &s->identity_queries), 5);
	assert_int_equal(seen(s, &s->unnamed_lookups), 0); /* all prepared */
	stats_of(r, &st);
	assert_int_equal(st.requests, 2);
	assert_int_equal(st.resolved, 1);
	assert_int_equal(st.not_found, 1);
	assert_int_equal(st.queries, 5);
	assert_int_equal(st.query_errors, 0);
	assert_int_equal(st.reconnects, 0);
	resolver_stop(r);
	assert_int_equal(excluded, 0);
	source_stop(s);
}

/* A pooler that refuses prepared statements: every lookup is sent whole. */
static void test_unprepared(void **state)
{
	struct source *s = source_start();
	struct tcpstream_addr a = client("10.0.0.7", 40001);
	struct resolver_result out[1];
	struct resolver *r;

	(void)state;
	s->refuse_prepare = true;
	s->ident[0] = (struct ident_row){"10.0.0.7", 40001, "appdb", "alice"};
	s->n_ident = 1;
	r = start(s);
	assert_int_equal(seen(s, &s->named_parses), 1); /* it stopped at the first refusal */
	resolver_request(r, 1, &a);
	take(r, out, 1, 3000);
	assert_true(out[0].found);
	assert_string_equal(out[0].user, "alice");
	assert_int_equal(seen(s, &s->unnamed_lookups), 1);
	resolver_stop(r);
	source_stop(s);
}

/* ---- statements ---- */

static void test_statement(void **state)
{
	struct source *s = source_start();
	struct tcpstream_addr a = client("10.0.0.7", 40001), b = client("10.0.0.7", 40002);
	struct tcpstream_addr c = client("10.0.0.7", 40003), d = client("10.0.0.7", 40004);
	struct resolver_result out[4], *found = NULL, *never = NULL, *cut = NULL, *none = NULL;
	uint64_t real = clock_ns(CLOCK_REALTIME), mono = clock_ns(CLOCK_MONOTONIC);
	long long start_us = (long long)(real / 1000) - 1500; /* 1.5 ms ago */
	uint64_t expect = mono - 1500000;		      /* the same moment, our clock */
	struct resolver_stats st;
	struct resolver *r;
	int i;

	(void)state;
	s->stmt[0] = (struct stmt_row){"10.0.0.7", 40001, "SELECT $1", 9, start_us};
	s->stmt[1] = (struct stmt_row){"10.0.0.7", 40002, "BEGIN", 5, 0};
	s->stmt[2] = (struct stmt_row){"10.0.0.7", 40003, "SELECT 'long...'", 1020, start_us};
	s->n_stmt = 3;
	r = start(s);
	assert_int_equal(seen(s, &s->clock_queries), 4); /* the clock, read at connect */

	assert_true(resolver_request_statement(r, 1, &a));
	assert_true(resolver_request_statement(r, 2, &b));
	assert_true(resolver_request_statement(r, 3, &c));
	assert_true(resolver_request_statement(r, 4, &d));
	/* held back until the capture has fed what came before the row was read */
	for (i = 0; i < 600; i++) {
		stats_of(r, &st);
		if (st.queries >= 1)
			break;
		usleep(5000);
	}
	assert_int_equal(st.queries, 1); /* answered */
	assert_int_equal(resolver_results(r, out, 4, 0), 0);
	take(r, out, 4, 3000);
	assert_int_equal(seen(s, &s->statement_queries), 1); /* one query for the batch */
	assert_string_equal(s->ports, "{40001,40002,40003,40004}");
	for (i = 0; i < 4; i++) {
		assert_int_equal(out[i].kind, RESOLVER_STATEMENT);
		assert_true(out[i].ready_ns > 0);
		found = out[i].flow_id == 1 ? &out[i] : found;
		never = out[i].flow_id == 2 ? &out[i] : never;
		cut = out[i].flow_id == 3 ? &out[i] : cut;
		none = out[i].flow_id == 4 ? &out[i] : none;
	}
	assert_non_null(found);
	assert_non_null(never);
	assert_non_null(cut);
	assert_non_null(none);

	assert_int_equal(found->status, RESOLVER_STMT_FOUND);
	assert_false(found->truncated);
	assert_int_equal(found->text_len, 9);
	assert_string_equal(found->text, "SELECT $1");
	/* query_start on our clock: the window holds it and is narrow (same host) */
	assert_true(found->lo_ns <= expect && expect <= found->hi_ns);
	assert_true(found->hi_ns - found->lo_ns < 100000000ull);

	assert_int_equal(never->status, RESOLVER_STMT_FOUND); /* ran nothing: no window */
	assert_true(never->lo_ns == 0 && never->hi_ns == 0);
	assert_null(never->text);

	assert_int_equal(cut->status, RESOLVER_STMT_FOUND); /* at track_activity_query_size */
	assert_true(cut->truncated);
	assert_null(cut->text);
	assert_true(cut->lo_ns <= expect && expect <= cut->hi_ns);

	assert_int_equal(none->status, RESOLVER_STMT_NOT_FOUND);
	assert_null(none->text);
	free(found->text);

	stats_of(r, &st);
	assert_int_equal(st.statements, 4);
	assert_int_equal(st.queries, 1);
	resolver_stop(r);
	source_stop(s);
}

/* ---- a source that goes away ---- */

static void test_source_comes_back(void **state)
{
	struct source *s = source_start();
	struct tcpstream_addr a = client("10.0.0.7", 40001);
	struct resolver_result out[2], *stmt, *ident;
	struct resolver_stats st;
	struct resolver *r;

	(void)state;
	s->ident[0] = (struct ident_row){"10.0.0.7", 40001, "appdb", "alice"};
	s->n_ident = 1;
	s->stmt[0] = (struct stmt_row){"10.0.0.7", 40001, "SELECT 1", 8, 0};
	s->n_stmt = 1;
	r = start(s);

	pthread_mutex_lock(&s->lock);
	s->kill_next = true; /* the connection drops at the next lookup */
	pthread_mutex_unlock(&s->lock);
	resolver_request_statement(r, 1, &a);
	resolver_request(r, 2, &a);
	take(r, out, 2, 5000);
	stmt = out[0].kind == RESOLVER_STATEMENT ? &out[0] : &out[1];
	ident = out[0].kind == RESOLVER_STATEMENT ? &out[1] : &out[0];
	/* the statement is answered failed (the session asks again); the identity waits for
	 * the new connection */
	assert_int_equal(stmt->status, RESOLVER_STMT_FAILED);
	assert_null(stmt->text);
	assert_true(ident->flow_id == 2);
	assert_true(ident->found);
	assert_string_equal(ident->database, "appdb");
	assert_int_equal(seen(s, &s->connections), 2);
	stats_of(r, &st);
	assert_int_equal(st.reconnects, 1);
	assert_true(st.query_errors >= 1);
	assert_int_equal(st.resolved, 1);
	assert_int_equal(excluded, 2); /* the new connection's tuple, the old one's released */
	resolver_stop(r);
	assert_int_equal(excluded, 0);
	source_stop(s);
}

static void test_source_gone(void **state)
{
	struct source *s = source_start();
	struct tcpstream_addr a = client("10.0.0.7", 40001);
	struct resolver_result out[1];
	struct resolver_stats st;
	struct resolver *r;
	uint64_t t0;
	int i;

	(void)state;
	r = start(s);
	pthread_mutex_lock(&s->lock);
	s->kill_next = true;
	s->gone_after_kill = true;
	pthread_mutex_unlock(&s->lock);
	resolver_request_statement(r, 1, &a);
	take(r, out, 1, 3000);
	assert_int_equal(out[0].status, RESOLVER_STMT_FAILED);

	/* no connection: statements are answered failed at once, identities wait */
	resolver_request(r, 2, &a);
	resolver_request_statement(r, 3, &a);
	take(r, out, 1, 3000);
	assert_true(out[0].flow_id == 3);
	assert_int_equal(out[0].status, RESOLVER_STMT_FAILED);
	for (i = 0; i < 200; i++) { /* reconnects, backing off */
		stats_of(r, &st);
		if (st.reconnects >= 2)
			break;
		usleep(10000);
	}
	assert_true(st.reconnects >= 2);
	assert_int_equal(st.resolved, 0);
	assert_int_equal(st.not_found, 0);
	assert_int_equal(resolver_results(r, out, 1, UINT64_MAX), 0); /* the identity waits */
	assert_int_equal(excluded, 0);
	t0 = clock_ns(CLOCK_MONOTONIC);
	resolver_stop(r);
	assert_true(ms_since(t0) < 1500);
	source_stop(s);
}

static void test_start_failures(void **state)
{
	struct source *s = source_start();
	char err[512] = "";
	uint16_t port;
	int fd;

	(void)state;
	s->query_size = 0; /* not a setting a server has */
	assert_null(resolver_start(dsn(s), CAP, err, sizeof(err)));
	assert_string_equal(err, "--source-dsn: cannot read track_activity_query_size: "
				 "unexpected answer");
	assert_int_equal(excluded, 0);
	source_stop(s);

	fd = listen_on(AF_INET, 8, &port);
	close(fd);
	{
		char conninfo[256];

		snprintf(conninfo, sizeof(conninfo),
			 "host=127.0.0.1 port=%u password=hunter2 sslmode=disable", port);
		err[0] = '\0';
		assert_null(resolver_start(conninfo, CAP, err, sizeof(err)));
		assert_true(!strncmp(err, "--source-dsn: cannot connect: ", 30));
		assert_null(strstr(err, "hunter2"));
	}
	resolver_stop(NULL); /* NULL-safe */
}

/* ---- bounds and stops ---- */

static void test_full_queues(void **state)
{
	struct source *s = source_start();
	struct tcpstream_addr a = client("10.0.0.7", 40001);
	struct resolver_result *out = calloc(2048, sizeof(*out));
	struct resolver_stats st;
	struct resolver *r;
	int i, refused = 0, n;

	(void)state;
	assert_non_null(out);
	r = start(s);
	pthread_mutex_lock(&s->lock);
	s->hold_next_ms = 500; /* the first lookup is slow: the queue fills meanwhile */
	pthread_mutex_unlock(&s->lock);
	assert_true(resolver_request_statement(r, 0, &a));
	for (i = 0; i < 600 && seen(s, &s->statement_queries) < 1; i++)
		usleep(5000);
	for (i = 1; i <= 1100; i++) {
		struct tcpstream_addr c = client("10.0.0.8", (uint16_t)(20000 + i));

		refused += !resolver_request_statement(r, (uint64_t)i, &c);
	}
	assert_int_equal(refused, 1100 - 1024); /* the queue holds 1024 */
	resolver_request(r, 5000, &a);		/* full as well: counted, dropped */

	/* the 1024 answers of the next round meet the 1 not yet taken: one is dropped */
	for (i = 0; i < 600; i++) {
		stats_of(r, &st);
		if (st.queries >= 2)
			break;
		usleep(5000);
	}
	assert_int_equal(st.queries, 2);
	n = resolver_results(r, out, 2048, UINT64_MAX);
	assert_int_equal(n, 1024);
	assert_int_equal(st.queue_full, 1100 - 1024 + 1 + 1);
	assert_int_equal(st.statements, 1101);
	assert_int_equal(st.requests, 1);
	for (i = 0; i < n; i++)
		assert_int_equal(out[i].status, RESOLVER_STMT_NOT_FOUND);
	resolver_stop(r);
	source_stop(s);
	free(out);
}

static void test_stop_while_source_is_slow(void **state)
{
	struct source *s = source_start();
	struct tcpstream_addr a = client("10.0.0.7", 40001);
	struct resolver *r;
	uint64_t t0;
	int i;

	(void)state;
	r = start(s);
	pthread_mutex_lock(&s->lock);
	s->hold_next_ms = 10000;
	pthread_mutex_unlock(&s->lock);
	resolver_request_statement(r, 1, &a);
	for (i = 0; i < 600 && seen(s, &s->statement_queries) < 1; i++)
		usleep(5000);
	assert_int_equal(seen(s, &s->statement_queries), 1);
	t0 = clock_ns(CLOCK_MONOTONIC);
	resolver_stop(r); /* answers not taken are freed too */
	assert_true(ms_since(t0) < 1000);
	assert_int_equal(excluded, 0);
	source_stop(s);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_identity),	cmocka_unit_test(test_unprepared),
	    cmocka_unit_test(test_statement),	cmocka_unit_test(test_source_comes_back),
	    cmocka_unit_test(test_source_gone), cmocka_unit_test(test_start_failures),
	    cmocka_unit_test(test_full_queues), cmocka_unit_test(test_stop_while_source_is_slow),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
