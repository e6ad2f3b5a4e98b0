// SPDX-License-Identifier: BSD-2-Clause
/*
 * pipeline: capture records in, per-database source stats out — the whole capture
 * thread (tcpstream -> session -> stats) driven with hand-built records and bytes.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "pipeline.h"

#define PORT 5432
#define MS   1000000ULL

struct wire {
	uint8_t b[4096];
	size_t n;
};

static void put8(struct wire *w, uint8_t v)
{
	w->b[w->n++] = v;
}

static void put32(struct wire *w, uint32_t v)
{
	put8(w, v >> 24);
	put8(w, v >> 16);
	put8(w, v >> 8);
	put8(w, v);
}

static void puts0(struct wire *w, const char *s)
{
	memcpy(w->b + w->n, s, strlen(s) + 1);
	w->n += strlen(s) + 1;
}

/* Starts a typed message; msg_end fills its length. */
static size_t msg_begin(struct wire *w, char type)
{
	size_t at;

	put8(w, type);
	at = w->n;
	put32(w, 0);
	return at;
}

static void msg_end(struct wire *w, size_t at)
{
	uint32_t len = w->n - at;

	w->b[at] = len >> 24;
	w->b[at + 1] = len >> 16;
	w->b[at + 2] = len >> 8;
	w->b[at + 3] = len;
}

static void startup(struct wire *w, const char *user, const char *db)
{
	size_t at = w->n;

	put32(w, 0);
	put32(w, 196608);
	puts0(w, "user");
	puts0(w, user);
	puts0(w, "database");
	puts0(w, db);
	put8(w, 0);
	w->b[at + 3] = w->n - at; /* short packet: length fits one byte */
}

static void query(struct wire *w, const char *sql)
{
	size_t at = msg_begin(w, 'Q');

	puts0(w, sql);
	msg_end(w, at);
}

static void ready(struct wire *w, char status)
{
	size_t at = msg_begin(w, 'Z');

	put8(w, status);
	msg_end(w, at);
}

static void auth_ok(struct wire *w)
{
	size_t at = msg_begin(w, 'R');

	put32(w, 0);
	msg_end(w, at);
}

static void complete(struct wire *w, const char *tag)
{
	size_t at = msg_begin(w, 'C');

	puts0(w, tag);
	msg_end(w, at);
}

static void error(struct wire *w, const char *sqlstate)
{
	size_t at = msg_begin(w, 'E');

	put8(w, 'S');
	puts0(w, "ERROR");
	put8(w, 'C');
	puts0(w, sqlstate);
	put8(w, 'M');
	puts0(w, "boom");
	put8(w, 0);
	msg_end(w, at);
}

struct conn_sim {
	struct pipeline *p;
	uint16_t cport;
	uint32_t seq[2];     /* next sequence number per direction */
	uint32_t tls_seq[2]; /* plaintext bytes reported per direction (TLS records) */
};

/* A record of c in dir at ts carrying the bytes of w (NULL: none), into buf. */
static struct capture_event *event_init(uint8_t *buf, const struct conn_sim *c, int dir,
					const struct wire *w, uint64_t ts)
{
	struct capture_event *ev = (struct capture_event *)buf;
	uint8_t lo[16] = {[10] = 0xff, [11] = 0xff, 127, 0, 0, 1};
	size_t len = w ? w->n : 0;

	memset(ev, 0, sizeof(*ev));
	ev->ts_ns = ts;
	memcpy(ev->saddr, lo, 16);
	memcpy(ev->daddr, lo, 16);
	ev->sport = dir == CAPTURE_DIR_C2S ? c->cport : PORT;
	ev->dport = dir == CAPTURE_DIR_C2S ? PORT : c->cport;
	ev->payload_len = len;
	ev->chunk_len = len;
	ev->family = 4;
	ev->dir = dir;
	if (len)
		memcpy(buf + sizeof(*ev), w->b, len);
	return ev;
}

/* Sends one record (one packet) in dir with flags and the bytes of w. */
static void send_rec(struct conn_sim *c, int dir, uint8_t flags, const struct wire *w, uint64_t ts)
{
	uint8_t buf[sizeof(struct capture_event) + 4096];
	struct capture_event *ev = event_init(buf, c, dir, w, ts);

	ev->seq = c->seq[dir];
	ev->ack = c->seq[!dir];
	ev->tcp_flags = flags | (flags & CAPTURE_TCP_SYN && dir == CAPTURE_DIR_C2S ? 0 : 0x10);
	pipeline_record(c->p, ev, buf + sizeof(*ev));
	c->seq[dir] += ev->payload_len + ((flags & (CAPTURE_TCP_SYN | CAPTURE_TCP_FIN)) ? 1 : 0);
}

static char *render(struct stats *st)
{
	struct buf b;

	buf_init(&b, 1 << 24);
	assert_true(stats_render(st, NULL, "test", 0, &b));
	return buf_steal(&b, NULL);
}

static void assert_contains(const char *text, const char *line)
{
	if (!strstr(text, line))
		fail_msg("missing: %s\n--- metrics:\n%s", line, text);
}

static struct stats *new_stats(void)
{
	struct stats_config cfg = {.max_databases = 10};

	return stats_new(&cfg);
}

static void test_session_from_start(void **state)
{
	struct pipeline_config cfg;
	struct stats *st = new_stats();
	struct conn_sim c = {.cport = 40001, .seq = {1000, 9000}};
	struct wire w;
	char *text;

	(void)state;
	pipeline_config_default(&cfg);
	c.p = pipeline_new(&cfg, st, NULL);
	assert_non_null(c.p);
	send_rec(&c, CAPTURE_DIR_C2S, CAPTURE_TCP_SYN, NULL, 1 * MS);
	send_rec(&c, CAPTURE_DIR_S2C, CAPTURE_TCP_SYN, NULL, 1 * MS);
	w.n = 0;
	startup(&w, "alice", "app");
	send_rec(&c, CAPTURE_DIR_C2S, 0, &w, 2 * MS);
	w.n = 0;
	auth_ok(&w);
	ready(&w, 'I');
	send_rec(&c, CAPTURE_DIR_S2C, 0, &w, 3 * MS);

	/* a query answered in 3 ms */
	w.n = 0;
	query(&w, "SELECT 1");
	send_rec(&c, CAPTURE_DIR_C2S, 0, &w, 10 * MS);
	w.n = 0;
	complete(&w, "SELECT 1");
	ready(&w, 'I');
	send_rec(&c, CAPTURE_DIR_S2C, 0, &w, 13 * MS);

	/* a unique violation answered in 40 ms */
	w.n = 0;
	query(&w, "INSERT INTO t VALUES (1)");
	send_rec(&c, CAPTURE_DIR_C2S, 0, &w, 20 * MS);
	w.n = 0;
	error(&w, "23505");
	ready(&w, 'I');
	send_rec(&c, CAPTURE_DIR_S2C, 0, &w, 60 * MS);

	pipeline_tick(c.p, 61 * MS, NULL);
	text = render(st);
	assert_contains(text, "mirror_source_requests_total{database=\"app\"} 2\n");
	assert_contains(text,
			"mirror_source_errors_total{database=\"app\",sqlstate_class=\"23\"} 1\n");
	assert_contains(text,
			"mirror_source_latency_seconds_bucket{database=\"app\",le=\"0.0025\"} 0\n");
	assert_contains(text,
			"mirror_source_latency_seconds_bucket{database=\"app\",le=\"0.005\"} 1\n");
	assert_contains(text,
			"mirror_source_latency_seconds_bucket{database=\"app\",le=\"0.05\"} 2\n");
	assert_contains(text, "mirror_source_latency_seconds_sum{database=\"app\"} 0.043000000\n");
	assert_contains(text, "mirror_capture_sessions_active 1\n");
	free(text);

	send_rec(&c, CAPTURE_DIR_C2S, CAPTURE_TCP_FIN, NULL, 70 * MS);
	send_rec(&c, CAPTURE_DIR_S2C, CAPTURE_TCP_FIN, NULL, 70 * MS);
	pipeline_tick(c.p, 71 * MS, NULL);
	text = render(st);
	assert_contains(text, "mirror_capture_sessions_active 0\n");
	free(text);
	pipeline_free(c.p);
	stats_free(st);
}

struct ident_ctx {
	int calls;
	uint64_t flow_id;
	uint16_t port;
};

static void want_identity(void *ctx, uint64_t flow_id, const struct tcpstream_addr *client)
{
	struct ident_ctx *ic = ctx;

	ic->calls++;
	ic->flow_id = flow_id;
	ic->port = client->port;
}

/* A session open before capture: resynchronised on ReadyForQuery, counted as unknown,
 * then named through the identity hook. */
static void test_midstream_session_resync_and_identify(void **state)
{
	struct pipeline_config cfg;
	struct stats *st = new_stats();
	struct conn_sim c = {.cport = 40002, .seq = {5000, 7000}};
	struct ident_ctx ic = {};
	struct pipeline_hooks hooks = {.want_identity = want_identity, .ctx = &ic};
	struct wire w;
	uint64_t unknown;
	char *text;
	int i;

	(void)state;
	pipeline_config_default(&cfg);
	c.p = pipeline_new(&cfg, st, NULL);
	pipeline_set_hooks(c.p, &hooks);

	/* the tail of an answer whose start was missed, then a ReadyForQuery */
	w.n = 0;
	complete(&w, "UPDATE 1");
	ready(&w, 'I');
	send_rec(&c, CAPTURE_DIR_S2C, 0, &w, 1 * MS);
	assert_int_equal(ic.calls, 1);
	assert_int_equal(ic.port, 40002);
	for (i = 0; i < 3; i++) {
		w.n = 0;
		query(&w, "SELECT 1");
		send_rec(&c, CAPTURE_DIR_C2S, 0, &w, (10 + 10 * i) * MS);
		w.n = 0;
		complete(&w, "SELECT 1");
		ready(&w, 'I');
		send_rec(&c, CAPTURE_DIR_S2C, 0, &w, (11 + 10 * i) * MS);
	}
	pipeline_tick(c.p, 50 * MS, NULL);
	/* The decoder may spend the first request after a missed start on confirming the
	 * client's message boundary (session.c, "Alignment"); every later one counts. */
	unknown = atomic_load(&stats_db(st, "unknown")->source_requests);
	assert_true(unknown >= 2 && unknown <= 3);
	text = render(st);
	assert_contains(text, "mirror_capture_resyncs_total 1\n");
	free(text);

	assert_true(pipeline_identify(c.p, ic.flow_id, "billing", "bob", 51 * MS));
	assert_false(pipeline_identify(c.p, ic.flow_id, "billing", "bob", 51 * MS));
	w.n = 0;
	query(&w, "SELECT 2");
	send_rec(&c, CAPTURE_DIR_C2S, 0, &w, 60 * MS);
	w.n = 0;
	complete(&w, "SELECT 1");
	ready(&w, 'I');
	send_rec(&c, CAPTURE_DIR_S2C, 0, &w, 61 * MS);
	pipeline_tick(c.p, 62 * MS, NULL);
	text = render(st);
	assert_contains(text, "mirror_source_requests_total{database=\"billing\"} 1\n");
	assert_int_equal(atomic_load(&stats_db(st, "unknown")->source_requests), unknown);
	free(text);
	pipeline_close_all(c.p, 70 * MS, NULL);
	pipeline_free(c.p);
	stats_free(st);
}

/* ---- statements prepared before capture ---- */

struct sink {
	int asks, requests, opened;
	uint64_t flow_id;
	bool refuse;	/* want_statement: queue full */
	char text[128]; /* of the last request ("" when NULL) */
};

static bool want_statement(void *ctx, uint64_t flow_id, const struct tcpstream_addr *client)
{
	struct sink *k = ctx;

	(void)client;
	k->asks++;
	k->flow_id = flow_id;
	return !k->refuse;
}

static void *sink_open(void *sink, const struct session_info *s)
{
	struct sink *k = sink;

	(void)s;
	k->opened++;
	return k;
}

static void sink_request(void *sink, void *handle, struct stats_db *db,
			 const struct session_request *r)
{
	struct sink *k = sink;

	(void)handle;
	(void)db;
	k->requests++;
	snprintf(k->text, sizeof(k->text), "%s", r->text ? r->text : "");
}

/* Bind of stmt to the unnamed portal (no parameters), Execute, Sync. */
static void bind_execute(struct wire *w, const char *stmt)
{
	size_t at = msg_begin(w, 'B');

	puts0(w, "");
	puts0(w, stmt);
	put8(w, 0), put8(w, 0); /* no formats */
	put8(w, 0), put8(w, 0); /* no parameters */
	put8(w, 0), put8(w, 0); /* no result formats */
	msg_end(w, at);
	at = msg_begin(w, 'E');
	puts0(w, "");
	put32(w, 0);
	msg_end(w, at);
	at = msg_begin(w, 'S');
	msg_end(w, at);
}

/* One execution of stmt sent at t ms, answered at t + 1 ms. */
static void execute_at(struct conn_sim *c, const char *stmt, uint64_t t)
{
	struct wire w = {.n = 0};
	size_t at;

	bind_execute(&w, stmt);
	send_rec(c, CAPTURE_DIR_C2S, 0, &w, t * MS);
	w.n = 0;
	at = msg_begin(&w, '2');
	msg_end(&w, at);
	complete(&w, "INSERT 0 1");
	ready(&w, 'I');
	send_rec(c, CAPTURE_DIR_S2C, 0, &w, (t + 1) * MS);
}

/* A session open before capture, aligned by two simple queries (10..21 ms). */
static void midstream_start(struct conn_sim *c)
{
	struct wire w;
	int i;

	for (i = 0; i < 2; i++) {
		w.n = 0;
		query(&w, "SELECT 1");
		send_rec(c, CAPTURE_DIR_C2S, 0, &w, (10 + 10 * i) * MS);
		w.n = 0;
		complete(&w, "SELECT 1");
		ready(&w, 'I');
		send_rec(c, CAPTURE_DIR_S2C, 0, &w, (11 + 10 * i) * MS);
	}
}

static struct pipeline_statement found(uint64_t flow_id, const char *text, uint64_t lo_ms,
				       uint64_t hi_ms)
{
	return (struct pipeline_statement){.flow_id = flow_id,
					   .status = PIPELINE_STMT_FOUND,
					   .text = text,
					   .len = strlen(text),
					   .lo_ns = lo_ms * MS,
					   .hi_ns = hi_ms * MS};
}

/*
 * A mirrored session open before capture executes S_1, prepared before: it asks for the
 * text once (one lookup outstanding, one per name per 100 ms), an answer whose window
 * holds that Execute defines it, and the next Execute carries the text. Answers that
 * cannot be used are counted by reason.
 */
static void test_statement_recovery(void **state)
{
	static const char text[] = "INSERT INTO t VALUES (1)";
	struct stats_config scfg = {.max_databases = 10, .mirror_enabled = true};
	struct stats *st = stats_new(&scfg);
	struct conn_sim c = {.cport = 40003, .seq = {5000, 7000}};
	struct sink k = {};
	struct pipeline_hooks hooks = {.want_statement = want_statement,
				       .ctx = &k,
				       .session_open = sink_open,
				       .request = sink_request,
				       .sink = &k};
	struct pipeline_config cfg;
	struct pipeline_statement a;
	char *metrics;

	(void)state;
	pipeline_config_default(&cfg);
	c.p = pipeline_new(&cfg, st, NULL);
	pipeline_set_hooks(c.p, &hooks);
	midstream_start(&c);

	execute_at(&c, "S_1", 100); /* processed within [100, 101] ms */
	assert_string_equal(k.text, "");
	assert_int_equal(k.asks, 1);
	execute_at(&c, "S_2", 110); /* waiting for the first answer: no second lookup */
	assert_int_equal(k.asks, 1);
	a = found(k.flow_id, "SELECT 1", 100, 112); /* S_1's or S_2's? */
	assert_false(pipeline_statement(c.p, &a));
	assert_false(pipeline_statement(c.p, &a)); /* answered already */
	execute_at(&c, "S_1", 150);		   /* after a no_match: asked again at once */
	assert_int_equal(k.asks, 2);
	a = (struct pipeline_statement){.flow_id = k.flow_id, .status = PIPELINE_STMT_NOT_FOUND};
	assert_false(pipeline_statement(c.p, &a));
	execute_at(&c, "S_2", 160); /* S_2 was never asked */
	assert_int_equal(k.asks, 3);
	a = found(k.flow_id, "SELECT 'cut", 160, 161);
	a.truncated = true;
	assert_false(pipeline_statement(c.p, &a));
	execute_at(&c, "S_1", 210); /* 60 ms after S_1's lookup: not yet */
	assert_int_equal(k.asks, 3);
	execute_at(&c, "S_1", 320);
	assert_int_equal(k.asks, 4);
	a = found(k.flow_id, text, 320, 321);
	a.lo_ns += 100000; /* within: 320.1 .. 320.9 ms */
	a.hi_ns -= 100000;
	assert_true(pipeline_statement(c.p, &a));
	execute_at(&c, "S_1", 330);
	assert_string_equal(k.text, text);
	assert_int_equal(k.asks, 4);
	k.refuse = true; /* the resolver's queue is full: counted, asked again later */
	execute_at(&c, "S_2", 340);
	assert_int_equal(k.asks, 5);

	metrics = render(st);
	assert_contains(metrics, "mirror_statements_recovered_total 1\n");
	assert_contains(metrics, "mirror_statements_unrecovered_total{reason=\"no_match\"} 1\n");
	assert_contains(metrics, "mirror_statements_unrecovered_total{reason=\"not_found\"} 1\n");
	assert_contains(metrics, "mirror_statements_unrecovered_total{reason=\"truncated\"} 1\n");
	assert_contains(metrics,
			"mirror_statements_unrecovered_total{reason=\"query_failed\"} 1\n");
	assert_contains(metrics,
			"mirror_statements_unrecovered_total{reason=\"no_source_dsn\"} 0\n");
	free(metrics);
	pipeline_close_all(c.p, 400 * MS, NULL);
	a = found(k.flow_id, text, 320, 321); /* the session is gone */
	assert_false(pipeline_statement(c.p, &a));
	pipeline_free(c.p);
	stats_free(st);

	/* without --source-dsn: counted once per session and name */
	st = stats_new(&scfg);
	hooks.want_statement = NULL;
	memset(&k, 0, sizeof(k));
	c = (struct conn_sim){.cport = 40004, .seq = {5000, 7000}};
	c.p = pipeline_new(&cfg, st, NULL);
	pipeline_set_hooks(c.p, &hooks);
	midstream_start(&c);
	execute_at(&c, "S_1", 100);
	execute_at(&c, "S_1", 200);
	execute_at(&c, "S_2", 300);
	/* and midstream_start's two SELECT 1: the first, the flow's first bytes, counts
	 * once its answer (the server's first bytes) confirms it */
	assert_int_equal(k.requests, 3 + 2);
	metrics = render(st);
	assert_contains(metrics,
			"mirror_statements_unrecovered_total{reason=\"no_source_dsn\"} 2\n");
	assert_contains(metrics, "mirror_statements_recovered_total 0\n");
	free(metrics);
	pipeline_close_all(c.p, 400 * MS, NULL);
	pipeline_free(c.p);
	stats_free(st);
}

/* ---- TLS sessions: plaintext records from the probes ---- */

/* One TLS record: the plaintext of one SSL_read (C2S) or SSL_write (S2C). */
static void send_tls(struct conn_sim *c, int dir, const struct wire *w, uint64_t ts)
{
	uint8_t buf[sizeof(struct capture_event) + 4096];
	struct capture_event *ev = event_init(buf, c, dir, w, ts);

	ev->seq = c->tls_seq[dir];
	ev->origin = CAPTURE_ORIGIN_TLS;
	ev->pid = 4242;
	pipeline_record(c->p, ev, buf + sizeof(*ev));
	c->tls_seq[dir] += w->n;
}

/* Ciphertext-like bytes on the TCP stream: no PostgreSQL message. */
static void send_cipher(struct conn_sim *c, int dir, uint64_t ts)
{
	struct wire w = {.n = 0};
	int i;

	put8(&w, 0x17); /* TLS application data, version 1.2, 64 bytes */
	put8(&w, 0x03);
	put8(&w, 0x03);
	put8(&w, 0x00);
	put8(&w, 64);
	for (i = 0; i < 64; i++)
		put8(&w, (uint8_t)(i * 37 + dir * 11 + 0x80));
	send_rec(c, dir, 0, &w, ts);
}

static void ssl_request(struct conn_sim *c, char answer, uint64_t ts)
{
	struct wire w = {.n = 0};

	put32(&w, 8);
	put32(&w, answer == 'G' ? 80877104 : 80877103);
	send_rec(c, CAPTURE_DIR_C2S, 0, &w, ts);
	w.n = 0;
	put8(&w, (uint8_t)answer);
	send_rec(c, CAPTURE_DIR_S2C, 0, &w, ts + 1);
}

static void tls_query(struct conn_sim *c, const char *sql, const char *sqlstate, uint64_t ts)
{
	struct wire w = {.n = 0};

	query(&w, sql);
	send_tls(c, CAPTURE_DIR_C2S, &w, ts);
	w.n = 0;
	if (sqlstate)
		error(&w, sqlstate);
	else
		complete(&w, "SELECT 1");
	ready(&w, 'I');
	send_tls(c, CAPTURE_DIR_S2C, &w, ts + 2 * MS);
}

/* SSLRequest accepted, the handshake and everything after it encrypted on the wire: the
 * session is decoded from the plaintext, from its StartupMessage; the ciphertext the TCP
 * capture keeps delivering is ignored; a call the probes lost is a gap. */
static void test_tls_session_from_start(void **state)
{
	struct pipeline_config cfg;
	struct stats *st = new_stats();
	struct conn_sim c = {.cport = 40010, .seq = {1000, 9000}};
	struct wire w;
	char *text;

	(void)state;
	pipeline_config_default(&cfg);
	cfg.tls = true;
	c.p = pipeline_new(&cfg, st, NULL);
	pipeline_set_tls_servers(c.p, 1);
	send_rec(&c, CAPTURE_DIR_C2S, CAPTURE_TCP_SYN, NULL, 1 * MS);
	send_rec(&c, CAPTURE_DIR_S2C, CAPTURE_TCP_SYN, NULL, 1 * MS);
	ssl_request(&c, 'S', 2 * MS);
	send_cipher(&c, CAPTURE_DIR_C2S, 3 * MS); /* the handshake, then the StartupMessage */
	send_cipher(&c, CAPTURE_DIR_S2C, 3 * MS);
	w.n = 0;
	startup(&w, "alice", "secure");
	send_tls(&c, CAPTURE_DIR_C2S, &w, 4 * MS);
	w.n = 0;
	auth_ok(&w);
	ready(&w, 'I');
	send_tls(&c, CAPTURE_DIR_S2C, &w, 5 * MS);
	send_cipher(&c, CAPTURE_DIR_C2S, 9 * MS);
	tls_query(&c, "SELECT 1", NULL, 10 * MS);
	send_cipher(&c, CAPTURE_DIR_S2C, 12 * MS);
	tls_query(&c, "SELECT 1/0", "22012", 20 * MS);
	pipeline_tick(c.p, 25 * MS, NULL);
	text = render(st);
	assert_contains(text, "mirror_source_requests_total{database=\"secure\"} 2\n");
	assert_contains(
	    text, "mirror_source_errors_total{database=\"secure\",sqlstate_class=\"22\"} 1\n");
	assert_contains(text, "mirror_capture_encrypted_sessions_total 1\n");
	assert_contains(text, "mirror_capture_tls_sessions_total 1\n");
	assert_contains(text, "mirror_capture_tls_probed_servers 1\n");
	assert_contains(text, "mirror_capture_malformed_total{kind=\"bad_length\"} 0\n");
	assert_contains(text, "mirror_capture_skipped_bytes_total 0\n");
	free(text);

	/* a lost SSL_write: the answer of SELECT 3 never arrives; SELECT 4, asked before the
	 * gap shows, goes with it */
	w.n = 0;
	query(&w, "SELECT 3");
	send_tls(&c, CAPTURE_DIR_C2S, &w, 30 * MS);
	c.tls_seq[CAPTURE_DIR_S2C] += 100;
	tls_query(&c, "SELECT 4", NULL, 40 * MS);
	pipeline_tick(c.p, 50 * MS, NULL);
	text = render(st);
	assert_contains(text, "mirror_source_requests_total{database=\"secure\"} 2\n");
	assert_contains(text, "mirror_capture_abandoned_requests_total 2\n");
	free(text);

	send_rec(&c, CAPTURE_DIR_C2S, CAPTURE_TCP_FIN, NULL, 60 * MS);
	send_rec(&c, CAPTURE_DIR_S2C, CAPTURE_TCP_FIN, NULL, 60 * MS);
	pipeline_tick(c.p, 61 * MS, NULL);
	text = render(st);
	assert_contains(text, "mirror_capture_sessions_active 0\n");
	assert_contains(text,
			"mirror_capture_undecoded_sessions_total{reason=\"no_plaintext\"} 0\n");
	free(text);
	pipeline_free(c.p);
	stats_free(st);
}

/* A TLS session older than the capture: its TCP bytes are ciphertext (hunted through
 * in vain); the plaintext, from the middle of the session, resynchronises as a plaintext
 * session caught mid-way does. A record of a connection never captured is dropped. */
static void test_tls_session_midstream(void **state)
{
	struct pipeline_config cfg;
	struct stats *st = new_stats();
	struct conn_sim c = {.cport = 40011, .seq = {5000, 7000}};
	struct conn_sim other = {.cport = 40012};
	struct wire w;
	uint64_t unknown;
	int i;

	(void)state;
	pipeline_config_default(&cfg);
	cfg.tls = true;
	c.p = other.p = pipeline_new(&cfg, st, NULL);
	pipeline_set_tls_servers(c.p, 1);
	send_cipher(&c, CAPTURE_DIR_S2C, 1 * MS);
	c.tls_seq[0] = 123456; /* wherever the counts stand */
	c.tls_seq[1] = 654321;
	w.n = 0;
	complete(&w, "UPDATE 1");
	ready(&w, 'I');
	send_tls(&c, CAPTURE_DIR_S2C, &w, 2 * MS);
	for (i = 0; i < 4; i++) {
		send_cipher(&c, CAPTURE_DIR_C2S, (10 + 10 * i) * MS);
		tls_query(&c, "SELECT 1", NULL, (10 + 10 * i) * MS);
	}
	w.n = 0;
	query(&w, "SELECT 1");
	send_tls(&other, CAPTURE_DIR_C2S, &w, 60 * MS);
	assert_int_equal(pipeline_tls_orphans(c.p), 1);
	pipeline_tick(c.p, 61 * MS, NULL);
	unknown = atomic_load(&stats_db(st, "unknown")->source_requests);
	assert_true(unknown >= 3 && unknown <= 4);
	assert_int_equal(atomic_load(&stats_capture(st)->tls_sessions), 1);
	assert_int_equal(atomic_load(&stats_capture(st)->resyncs), 1);
	pipeline_close_all(c.p, 70 * MS, NULL);
	pipeline_free(c.p);
	stats_free(st);
}

/* Encrypted sessions that cannot be decoded, each counted with its reason. */
static void test_tls_undecoded_reasons(void **state)
{
	static const struct {
		bool tls;
		int servers;
		char answer;
		size_t field;
	} cases[] = {
	    {false, 0, 'S', offsetof(struct stats_capture, undecoded_tls_off)},
	    {true, 0, 'S', offsetof(struct stats_capture, undecoded_no_probe)},
	    {true, 1, 'S', offsetof(struct stats_capture, undecoded_no_plaintext)},
	    {true, 1, 'G', offsetof(struct stats_capture, undecoded_gss)},
	    {false, 0, 'G', offsetof(struct stats_capture, undecoded_gss)},
	};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct pipeline_config cfg;
		struct stats *st = new_stats();
		struct conn_sim c = {.cport = (uint16_t)(40020 + i), .seq = {1000, 9000}};
		const struct stats_capture *sc = stats_capture(st);
		uint64_t sum;

		pipeline_config_default(&cfg);
		cfg.tls = cases[i].tls;
		c.p = pipeline_new(&cfg, st, NULL);
		pipeline_set_tls_servers(c.p, cases[i].servers);
		send_rec(&c, CAPTURE_DIR_C2S, CAPTURE_TCP_SYN, NULL, 1 * MS);
		send_rec(&c, CAPTURE_DIR_S2C, CAPTURE_TCP_SYN, NULL, 1 * MS);
		ssl_request(&c, cases[i].answer, 2 * MS);
		send_cipher(&c, CAPTURE_DIR_C2S, 3 * MS);
		send_rec(&c, CAPTURE_DIR_C2S, CAPTURE_TCP_FIN, NULL, 4 * MS);
		send_rec(&c, CAPTURE_DIR_S2C, CAPTURE_TCP_FIN, NULL, 4 * MS);
		pipeline_close_all(c.p, 5 * MS, NULL);
		sum = atomic_load(&sc->undecoded_tls_off) + atomic_load(&sc->undecoded_no_probe) +
		      atomic_load(&sc->undecoded_no_plaintext) + atomic_load(&sc->undecoded_gss);
		assert_int_equal(
		    atomic_load((const _Atomic uint64_t *)((const char *)sc + cases[i].field)), 1);
		assert_int_equal(sum, 1);
		assert_int_equal(atomic_load(&sc->encrypted_sessions), 1);
		pipeline_free(c.p);
		stats_free(st);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_session_from_start),
	    cmocka_unit_test(test_midstream_session_resync_and_identify),
	    cmocka_unit_test(test_statement_recovery),
	    cmocka_unit_test(test_tls_session_from_start),
	    cmocka_unit_test(test_tls_session_midstream),
	    cmocka_unit_test(test_tls_undecoded_reasons),
	};

	return cmocka_run_group_tests_name("pipeline", tests, NULL, NULL);
}
