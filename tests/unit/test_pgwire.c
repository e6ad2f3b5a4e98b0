// SPDX-License-Identifier: BSD-2-Clause
/*
 * Unit tests of pgwire (the PostgreSQL protocol decoder), driven with hand-built byte
 * sequences. Every conversation is fed whole, split in two at every byte of every chunk,
 * and one byte at a time; all three must give the same messages, events and timestamps.
 *
 * PGWIRE_BENCH=1 ./build/test_pgwire also prints the decoder's throughput on a
 * pgbench-like stream (no timed assertion: machines differ); PGWIRE_TEST=<name> runs the
 * tests matching name only.
 */
#include <malloc.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "pgwire.h"

#define FE PGWIRE_FRONTEND
#define BE PGWIRE_BACKEND

#include "wire_script.h"

static uint32_t be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* ---- recording what the decoder reports --------------------------------------------------- */

struct msgrec {
	enum pgwire_dir dir;
	uint8_t type;
	uint32_t len;
	bool kept;
	uint8_t *body;
	uint64_t ts_start, ts_end;
};

struct rec {
	char *log;
	size_t len, cap;
	struct msgrec *m;
	int nm, capm;
	int desync[2], resync[2], encrypted;
	int after_resync[2]; /* messages reported before the first RESYNC of a direction */
	int before_resync[2];
	struct pgwire_conn *c;
	/* callback hooks */
	int gap_after_type; /* call pgwire_gap(BE) when this backend type is reported */
	bool stop_after_z;
};

static void logf_(struct rec *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void logf_(struct rec *r, const char *fmt, ...)
{
	va_list ap;
	int n;

	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(r->log ? r->log + r->len : NULL, r->log ? r->cap - r->len : 0, fmt,
			      ap);
		va_end(ap);
		if (r->log && (size_t)n < r->cap - r->len)
			break;
		r->cap = r->cap ? r->cap * 2 + (size_t)n : 4096 + (size_t)n;
		r->log = realloc(r->log, r->cap);
		assert_non_null(r->log);
	}
	r->len += (size_t)n;
}

static void on_msg(void *ctx, const struct pgwire_msg *m)
{
	struct rec *r = ctx;
	struct msgrec *x;
	uint32_t i;

	if (m->body_kept)
		assert_non_null(m->body);
	else
		assert_null(m->body);
	logf_(r, "%c %02x len=%u kept=%d ts=%llu..%llu ", m->dir == FE ? 'F' : 'B', m->type, m->len,
	      m->body_kept, (unsigned long long)m->ts_start, (unsigned long long)m->ts_end);
	if (m->body_kept)
		for (i = 0; i < m->len; i++)
			logf_(r, "%02x", m->body[i]);
	logf_(r, "\n");
	if (r->nm == r->capm) {
		r->capm = r->capm ? r->capm * 2 : 64;
		r->m = realloc(r->m, (size_t)r->capm * sizeof(*r->m));
		assert_non_null(r->m);
	}
	x = &r->m[r->nm++];
	*x = (struct msgrec){.dir = m->dir,
			     .type = m->type,
			     .len = m->len,
			     .kept = m->body_kept,
			     .ts_start = m->ts_start,
			     .ts_end = m->ts_end};
	if (m->body_kept) {
		x->body = malloc(m->len ? m->len : 1);
		assert_non_null(x->body);
		memcpy(x->body, m->body, m->len);
	}
	if (r->resync[m->dir])
		r->after_resync[m->dir]++;
	else
		r->before_resync[m->dir]++;
	if (r->c && m->dir == BE && r->gap_after_type && m->type == r->gap_after_type) {
		r->gap_after_type = 0;
		pgwire_gap(r->c, BE, m->ts_end);
	}
	if (r->c && m->dir == BE && r->stop_after_z && m->type == 'Z')
		pgwire_stop(r->c);
}

static void on_event(void *ctx, enum pgwire_event ev, enum pgwire_dir dir, uint64_t ts)
{
	struct rec *r = ctx;
	static const char *const names[] = {"DESYNC", "RESYNC", "ENCRYPTED"};

	logf_(r, "EV %s %c ts=%llu\n", names[ev], dir == FE ? 'F' : 'B', (unsigned long long)ts);
	if (ev == PGWIRE_EV_DESYNC)
		r->desync[dir]++;
	else if (ev == PGWIRE_EV_RESYNC)
		r->resync[dir]++;
	else
		r->encrypted++;
}

static const struct pgwire_handler handler = {.message = on_msg, .event = on_event};

static void rec_free(struct rec *r)
{
	int i;

	for (i = 0; i < r->nm; i++)
		free(r->m[i].body);
	free(r->m);
	free(r->log);
	memset(r, 0, sizeof(*r));
}

/* ---- feeding -------------------------------------------------------------------------------- */

enum mode {
	WHOLE,
	SPLIT, /* chunk `which` split at `at` */
	BYTES, /* one byte at a time */
};

/* Feeds the script into a new decoder; returns its counters in st (if given). */
static void run(const struct script *sc, const struct pgwire_config *cfg, bool from_start,
		enum mode mode, int which, size_t at, struct rec *r, struct pgwire_stats *st)
{
	struct pgwire_conn *c = pgwire_conn_new(cfg, &handler, r, from_start);
	int i;

	assert_non_null(c);
	r->c = c;
	for (i = 0; i < sc->n; i++) {
		const struct chunk *ch = &sc->ch[i];
		const uint8_t *d = sc->s[ch->dir].p + ch->off;
		size_t k;

		if (mode == BYTES) {
			for (k = 0; k < ch->len; k++)
				pgwire_feed(c, ch->dir, d + k, 1, ch->ts);
		} else if (mode == SPLIT && i == which) {
			pgwire_feed(c, ch->dir, d, at, ch->ts);
			pgwire_feed(c, ch->dir, d + at, ch->len - at, ch->ts);
		} else {
			pgwire_feed(c, ch->dir, d, ch->len, ch->ts);
		}
	}
	if (st)
		*st = *pgwire_conn_stats(c);
	r->c = NULL;
	pgwire_conn_free(c);
}

/* Whole, every split of every chunk, and byte by byte all report the same. Returns the
 * whole run's record (caller frees). */
static void check_split_invariance(const struct script *sc, const struct pgwire_config *cfg,
				   bool from_start, struct rec *whole)
{
	struct rec r = {0};
	int i;
	size_t at;

	run(sc, cfg, from_start, WHOLE, 0, 0, whole, NULL);
	assert_non_null(whole->log);
	for (i = 0; i < sc->n; i++) {
		for (at = 1; at < sc->ch[i].len; at++) {
			run(sc, cfg, from_start, SPLIT, i, at, &r, NULL);
			if (strcmp(whole->log, r.log) != 0) {
				fprintf(
				    stderr,
				    "chunk %d split at %zu differs:\n--- whole\n%s--- split\n%s", i,
				    at, whole->log, r.log);
				fail();
			}
			rec_free(&r);
		}
	}
	run(sc, cfg, from_start, BYTES, 0, 0, &r, NULL);
	if (strcmp(whole->log, r.log) != 0) {
		fprintf(stderr, "byte by byte differs:\n--- whole\n%s--- bytes\n%s", whole->log,
			r.log);
		fail();
	}
	rec_free(&r);
}

/* The messages of one direction in a stream, as the builder laid them out. */
struct orig {
	size_t off;
	uint8_t type;
	uint32_t len;
	const uint8_t *body;
};

static int split_typed(const uint8_t *p, size_t len, struct orig *o, int max)
{
	size_t off = 0;
	int n = 0;

	while (off + 5 <= len) {
		uint32_t l = (uint32_t)p[off + 1] << 24 | (uint32_t)p[off + 2] << 16 |
			     (uint32_t)p[off + 3] << 8 | p[off + 4];

		assert_true(n < max);
		o[n++] =
		    (struct orig){.off = off, .type = p[off], .len = l - 4, .body = p + off + 5};
		off += 1 + l;
	}
	assert_int_equal(off, len);
	return n;
}

/* ---- the conversation with every message type -------------------------------------------------
 */

static const char *const startup_kv[] = {
    "user", "alice", "database", "app", "application_name", "psql", "options", "-c geqo=off", NULL};

/* Every frontend and backend message type, from startup to Terminate. */
static void build_all_types(struct script *sc)
{
	struct bb *f = &sc->s[FE], *b = &sc->s[BE];
	static const uint32_t oids[] = {23, 25, 17};
	static const int16_t fmts[] = {0, 0, 1};
	static const int32_t lens[] = {2, -1, 4};
	static const char *const vals[] = {"42", NULL, "\x00\x01\x02\x03"};
	static const int16_t rf[] = {1};
	static const char *const row[] = {"1", NULL, "x"};

	m_startup(f, startup_kv);
	cut(sc, FE);
	msg_begin(b, 'R'); /* AuthenticationMD5Password */
	put32(b, 5);
	put(b, "salt", 4);
	msg_end(b);
	cut(sc, BE);
	m_str(f, 'p', "md5secretsecretsecret");
	cut(sc, FE);
	msg_begin(b, 'R');
	put32(b, 0);
	msg_end(b);
	msg_begin(b, 'v'); /* NegotiateProtocolVersion */
	put32(b, 0);
	put32(b, 0);
	msg_end(b);
	msg_begin(b, 'S');
	puts0(b, "server_version");
	puts0(b, "16.4");
	msg_end(b);
	msg_begin(b, 'K');
	put32(b, 4242);
	put32(b, 0xdeadbeef);
	msg_end(b);
	m_ready(b, 'I');
	cut(sc, BE);

	/* simple query with rows, a notice and a notification */
	m_str(f, 'Q', "SELECT 1, NULL, 'x'");
	cut(sc, FE);
	m_rowdesc(b, 3);
	m_datarow(b, 3, row);
	m_error(b, 'N', "01000", "a notice");
	m_str(b, 'C', "SELECT 1");
	msg_begin(b, 'A');
	put32(b, 4242);
	puts0(b, "chan");
	puts0(b, "payload");
	msg_end(b);
	m_ready(b, 'I');
	cut(sc, BE);

	/* empty query, error */
	m_str(f, 'Q', "");
	cut(sc, FE);
	m_empty(b, 'I');
	m_ready(b, 'I');
	cut(sc, BE);
	m_str(f, 'Q', "SELECT 1/0");
	cut(sc, FE);
	m_error(b, 'E', "22012", "division by zero");
	m_ready(b, 'I');
	cut(sc, BE);

	/* extended protocol, everything in one batch */
	m_parse(f, "s1", "SELECT $1::int, $2::text, $3::bytea", 3, oids);
	m_describe(f, 'S', "s1");
	m_bind(f, "p1", "s1", 3, fmts, 3, lens, vals, 1, rf);
	m_describe(f, 'P', "p1");
	m_execute(f, "p1", 1);
	m_execute(f, "p1", 0);
	m_empty(f, 'H');
	m_close(f, 'P', "p1");
	m_close(f, 'S', "s1");
	m_empty(f, 'S');
	cut(sc, FE);
	m_empty(b, '1');
	msg_begin(b, 't');
	put16(b, 3);
	put32(b, 23);
	put32(b, 25);
	put32(b, 17);
	msg_end(b);
	m_rowdesc(b, 3);
	m_empty(b, '2');
	m_rowdesc(b, 3);
	m_datarow(b, 3, row);
	m_empty(b, 's');
	m_str(b, 'C', "SELECT 0");
	m_empty(b, '3');
	m_empty(b, '3');
	m_ready(b, 'I');
	cut(sc, BE);

	/* a statement without result columns */
	m_parse(f, "", "SET x = 1", 0, NULL);
	m_describe(f, 'S', "");
	m_empty(f, 'S');
	cut(sc, FE);
	m_empty(b, '1');
	msg_begin(b, 't');
	put16(b, 0);
	msg_end(b);
	m_empty(b, 'n');
	m_ready(b, 'I');
	cut(sc, BE);

	/* COPY FROM STDIN, then one that fails */
	m_str(f, 'Q', "COPY t FROM STDIN");
	cut(sc, FE);
	msg_begin(b, 'G');
	put8(b, 0);
	put16(b, 2);
	put16(b, 0);
	put16(b, 0);
	msg_end(b);
	cut(sc, BE);
	msg_begin(f, 'd');
	put(f, "1\tfoo\n", 6);
	msg_end(f);
	msg_begin(f, 'd');
	put(f, "2\tbar\n", 6);
	msg_end(f);
	m_empty(f, 'c');
	cut(sc, FE);
	m_str(b, 'C', "COPY 2");
	m_ready(b, 'I');
	cut(sc, BE);
	m_str(f, 'Q', "COPY t FROM STDIN");
	cut(sc, FE);
	msg_begin(b, 'G');
	put8(b, 0);
	put16(b, 0);
	msg_end(b);
	cut(sc, BE);
	m_str(f, 'f', "aborted by user");
	cut(sc, FE);
	m_error(b, 'E', "57014", "COPY from stdin failed");
	m_ready(b, 'I');
	cut(sc, BE);

	/* COPY TO STDOUT, COPY BOTH's response shape */
	m_str(f, 'Q', "COPY t TO STDOUT");
	cut(sc, FE);
	msg_begin(b, 'H');
	put8(b, 0);
	put16(b, 1);
	put16(b, 0);
	msg_end(b);
	msg_begin(b, 'd');
	put(b, "1\tfoo\n", 6);
	msg_end(b);
	m_empty(b, 'c');
	m_str(b, 'C', "COPY 1");
	m_ready(b, 'I');
	cut(sc, BE);
	m_str(f, 'Q', "START_REPLICATION");
	cut(sc, FE);
	msg_begin(b, 'W');
	put8(b, 0);
	put16(b, 0);
	msg_end(b);
	m_error(b, 'E', "0A000", "not really");
	m_ready(b, 'I');
	cut(sc, BE);

	/* FunctionCall */
	msg_begin(f, 'F');
	put32(f, 1598);
	put16(f, 1);
	put16(f, 1);
	put16(f, 1);
	put32(f, 4);
	put32(f, 7);
	put16(f, 1);
	msg_end(f);
	cut(sc, FE);
	msg_begin(b, 'V');
	put32(b, 4);
	put32(b, 99);
	msg_end(b);
	m_ready(b, 'I');
	cut(sc, BE);

	m_empty(f, 'X');
	cut(sc, FE);
}

static void free_rec_and_script(struct rec *r, struct script *sc)
{
	rec_free(r);
	script_free(sc);
}

static void test_all_types(void **state)
{
	struct script *sc = calloc(1, sizeof(*sc));
	struct pgwire_config cfg;
	struct pgwire_stats st;
	struct rec r = {0}, r2 = {0};
	struct orig fo[64], bo[128];
	int nf, nb, i, fi = 0, bi = 0;

	(void)state;
	assert_non_null(sc);
	pgwire_config_default(&cfg);
	build_all_types(sc);
	check_split_invariance(sc, &cfg, true, &r);

	/* the startup packet first, then every typed message in order, nothing else */
	assert_true(r.nm > 0);
	assert_int_equal(r.m[0].type, PGWIRE_MSG_STARTUP);
	assert_int_equal(r.m[0].len, be32(sc->s[FE].p) - 4);
	assert_memory_equal(r.m[0].body, sc->s[FE].p + 4, r.m[0].len);
	nf =
	    split_typed(sc->s[FE].p + be32(sc->s[FE].p), sc->s[FE].len - be32(sc->s[FE].p), fo, 64);
	nb = split_typed(sc->s[BE].p, sc->s[BE].len, bo, 128);
	for (i = 1; i < r.nm; i++) {
		const struct msgrec *m = &r.m[i];
		const struct orig *o = m->dir == FE ? &fo[fi++] : &bo[bi++];
		bool skipped = (m->dir == FE && m->type == 'p') ||
			       (m->dir == BE && (m->type == 'D' || m->type == 'd'));

		assert_int_equal(m->type, o->type);
		assert_int_equal(m->len, o->len);
		assert_int_equal(m->kept, !skipped);
		if (m->kept)
			assert_memory_equal(m->body, o->body, o->len);
	}
	assert_int_equal(fi, nf);
	assert_int_equal(bi, nb);
	assert_int_equal(r.desync[FE] + r.desync[BE] + r.encrypted, 0);

	/* DataRow bodies come with keep_datarows; counters */
	cfg.keep_datarows = true;
	run(sc, &cfg, true, WHOLE, 0, 0, &r2, &st);
	for (i = 0; i < r2.nm; i++)
		if (r2.m[i].dir == BE && r2.m[i].type == 'D')
			assert_true(r2.m[i].kept);
	assert_int_equal(st.messages, (uint64_t)(1 + nf + nb));
	assert_int_equal(st.bytes, sc->s[FE].len + sc->s[BE].len);
	assert_int_equal(st.bytes_skipped, 0);
	assert_int_equal(st.bad_lengths, 0);
	assert_int_equal(st.resyncs, 0);
	rec_free(&r2);
	free_rec_and_script(&r, sc);
	free(sc);
}

/* SSLRequest answered 'N', then GSSENCRequest answered 'N', then a normal startup. */
static void test_ssl_refused(void **state)
{
	struct script *sc = calloc(1, sizeof(*sc));
	struct pgwire_config cfg;
	struct rec r = {0};

	(void)state;
	pgwire_config_default(&cfg);
	m_code(&sc->s[FE], 80877103);
	cut(sc, FE);
	put8(&sc->s[BE], 'N');
	cut(sc, BE);
	m_code(&sc->s[FE], 80877104);
	cut(sc, FE);
	put8(&sc->s[BE], 'N');
	cut(sc, BE);
	m_startup(&sc->s[FE], startup_kv);
	cut(sc, FE);
	msg_begin(&sc->s[BE], 'R');
	put32(&sc->s[BE], 0);
	msg_end(&sc->s[BE]);
	m_ready(&sc->s[BE], 'I');
	cut(sc, BE);
	m_str(&sc->s[FE], 'Q', "SELECT 1");
	cut(sc, FE);
	check_split_invariance(sc, &cfg, true, &r);
	assert_int_equal(r.nm, 8);
	assert_int_equal(r.m[0].type, PGWIRE_MSG_SSL_REQUEST);
	assert_int_equal(r.m[1].type, PGWIRE_MSG_ENC_RESPONSE);
	assert_int_equal(r.m[1].body[0], 'N');
	assert_int_equal(r.m[2].type, PGWIRE_MSG_GSSENC_REQUEST);
	assert_int_equal(r.m[3].type, PGWIRE_MSG_ENC_RESPONSE);
	assert_int_equal(r.m[4].type, PGWIRE_MSG_STARTUP);
	assert_int_equal(r.m[5].type, 'R');
	assert_int_equal(r.m[6].type, 'Z');
	assert_int_equal(r.m[7].type, 'Q');
	assert_int_equal(r.encrypted, 0);
	free_rec_and_script(&r, sc);

	/* the client's startup packet captured before the server's 'N': held, then decoded */
	memset(sc, 0, sizeof(*sc));
	m_code(&sc->s[FE], 80877103);
	m_startup(&sc->s[FE], startup_kv);
	cut(sc, FE);
	put8(&sc->s[BE], 'N');
	msg_begin(&sc->s[BE], 'R');
	put32(&sc->s[BE], 0);
	msg_end(&sc->s[BE]);
	cut(sc, BE);
	check_split_invariance(sc, &cfg, true, &r);
	assert_int_equal(r.nm, 4);
	assert_int_equal(r.m[0].type, PGWIRE_MSG_SSL_REQUEST);
	assert_int_equal(r.m[1].type, PGWIRE_MSG_ENC_RESPONSE);
	assert_int_equal(r.m[2].type, PGWIRE_MSG_STARTUP);
	assert_int_equal(r.m[2].ts_start, sc->ch[0].ts);
	assert_int_equal(r.m[3].type, 'R');
	free_rec_and_script(&r, sc);
	free(sc);
}

/* SSLRequest answered 'S' (and GSSENCRequest answered 'G'): encrypted, nothing decoded. */
static void test_ssl_accepted(void **state)
{
	static const uint32_t codes[] = {80877103, 80877104};
	static const char answers[] = {'S', 'G'};
	struct pgwire_config cfg;
	struct pgwire_stats st;
	int k;

	(void)state;
	pgwire_config_default(&cfg);
	for (k = 0; k < 2; k++) {
		struct script *sc = calloc(1, sizeof(*sc));
		struct rec r = {0};
		int i;

		m_code(&sc->s[FE], codes[k]);
		cut(sc, FE);
		put8(&sc->s[BE], (uint8_t)answers[k]);
		cut(sc, BE);
		/* a TLS ClientHello, then records that happen to look like messages */
		put(&sc->s[FE], "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11);
		for (i = 0; i < 50; i++)
			m_str(&sc->s[FE], 'Q', "SELECT 1");
		cut(sc, FE);
		for (i = 0; i < 50; i++)
			m_ready(&sc->s[BE], 'I');
		cut(sc, BE);
		check_split_invariance(sc, &cfg, true, &r);
		assert_int_equal(r.encrypted, 1);
		assert_int_equal(r.nm, 2);
		assert_int_equal(r.m[0].type,
				 k ? PGWIRE_MSG_GSSENC_REQUEST : PGWIRE_MSG_SSL_REQUEST);
		assert_int_equal(r.m[1].type, PGWIRE_MSG_ENC_RESPONSE);
		assert_int_equal(r.m[1].body[0], answers[k]);
		assert_int_equal(r.desync[FE] + r.desync[BE], 0);
		rec_free(&r);
		run(sc, &cfg, true, WHOLE, 0, 0, &r, &st);
		assert_int_equal(st.messages, 2);
		assert_int_equal(st.bad_lengths, 0);
		free_rec_and_script(&r, sc);
		free(sc);
	}
}

/* PostgreSQL 17's direct SSL: the client opens with a TLS ClientHello. */
static void test_direct_tls(void **state)
{
	struct script *sc = calloc(1, sizeof(*sc));
	struct pgwire_config cfg;
	struct rec r = {0};

	(void)state;
	pgwire_config_default(&cfg);
	put(&sc->s[FE], "\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03", 11);
	cut(sc, FE);
	put(&sc->s[BE], "\x16\x03\x03\x00\x7a\x02\x00\x00\x76", 9);
	cut(sc, BE);
	check_split_invariance(sc, &cfg, true, &r);
	assert_int_equal(r.encrypted, 1);
	assert_int_equal(r.nm, 0);
	free_rec_and_script(&r, sc);
	free(sc);
}

static void test_cancel_request(void **state)
{
	struct script *sc = calloc(1, sizeof(*sc));
	struct pgwire_config cfg;
	struct rec r = {0};

	(void)state;
	pgwire_config_default(&cfg);
	put32(&sc->s[FE], 16);
	put32(&sc->s[FE], 80877102);
	put32(&sc->s[FE], 4242);
	put32(&sc->s[FE], 0xdeadbeef);
	cut(sc, FE);
	check_split_invariance(sc, &cfg, true, &r);
	assert_int_equal(r.nm, 1);
	assert_int_equal(r.m[0].type, PGWIRE_MSG_CANCEL);
	assert_int_equal(r.m[0].len, 8);
	assert_memory_equal(r.m[0].body, "\x00\x00\x10\x92\xde\xad\xbe\xef", 8);
	free_rec_and_script(&r, sc);
	free(sc);
}

/* Bytes allocated by malloc right now (glibc; valgrind's allocator reports 0: harmless). */
static size_t heap_in_use(void)
{
	struct mallinfo2 mi = mallinfo2();

	return mi.uordblks + mi.hblkhd;
}

struct bad_case {
	const char *what;
	bool startup; /* in the startup phase (from the connection's start) */
	enum pgwire_dir dir;
	uint8_t type;
	uint32_t declared;
};

/* Lengths that cannot be right: rejected from the header, nothing allocated, hunting. */
static void test_nonsense_lengths(void **state)
{
	static const struct bad_case cases[] = {
	    {"startup 7", true, FE, 0, 7},
	    {"startup 20000", true, FE, 0, 20000},
	    {"startup negative", true, FE, 0, 0x80000000U},
	    {"query negative", false, FE, 'Q', 0xffffffffU},
	    {"query 3", false, FE, 'Q', 3},
	    {"query 1 GiB + 1", false, FE, 'Q', (1U << 30) + 1},
	    {"query huge", false, FE, 'Q', 0x7fffffffU},
	    {"sync 5", false, FE, 'S', 5},
	    {"execute 5", false, FE, 'E', 5},
	    {"unknown type", false, FE, '!', 8},
	    {"ready 4", false, BE, 'Z', 4},
	    {"ready 6", false, BE, 'Z', 6},
	    {"bindcomplete 5", false, BE, '2', 5},
	    {"auth 7", false, BE, 'R', 7},
	    {"keydata 11", false, BE, 'K', 11},
	    {"datarow 2 GiB", false, BE, 'D', 0x80000005U},
	    {"backend unknown", false, BE, 'q', 5},
	};
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		const struct bad_case *bc = &cases[i];
		struct pgwire_config cfg;
		struct rec r = {0};
		struct pgwire_conn *c;
		struct bb b = {0};
		size_t before;
		uint8_t junk[64];

		pgwire_config_default(&cfg);
		memset(junk, 'x', sizeof(junk));
		c = pgwire_conn_new(&cfg, &handler, &r, true);
		assert_non_null(c);
		if (!bc->startup && bc->dir == FE) {
			m_startup(&b, startup_kv);
			pgwire_feed(c, FE, b.p, b.len, 1);
			b.len = 0;
		}
		if (!bc->startup)
			put8(&b, bc->type);
		put32(&b, bc->declared);
		before = heap_in_use();
		pgwire_feed(c, bc->dir, b.p, b.len, 2);
		pgwire_feed(c, bc->dir, junk, sizeof(junk), 3);
		if (heap_in_use() > before + 256 * 1024) {
			fprintf(stderr, "%s: allocated %zu bytes\n", bc->what,
				heap_in_use() - before);
			fail();
		}
		assert_int_equal(pgwire_conn_stats(c)->bad_lengths, 1);
		assert_int_equal(r.desync[bc->dir], 1);
		assert_int_equal(r.nm, bc->startup || bc->dir == BE ? 0 : 1);
		assert_int_equal(pgwire_conn_stats(c)->bodies_too_big, 0);
		pgwire_conn_free(c);
		rec_free(&r);
		free(b.p);
	}
}

/* A possible but huge length: counted, skipped unread, never allocated; the next message
 * is decoded normally. Also bodies above max_body whole in one chunk. */
static void test_bodies_too_big(void **state)
{
	struct pgwire_config cfg;
	struct rec r = {0};
	struct pgwire_conn *c;
	struct bb b = {0};
	uint8_t *junk = calloc(1, 1 << 20);
	size_t before;
	int i;

	(void)state;
	assert_non_null(junk);
	pgwire_config_default(&cfg);
	c = pgwire_conn_new(&cfg, &handler, &r, false);
	/* frontend hunting: resync on a batch at the start of a chunk */
	m_str(&b, 'Q', "SELECT 1");
	pgwire_feed(c, FE, b.p, b.len, 1);
	assert_int_equal(r.resync[FE], 1);
	b.len = 0;
	put8(&b, 'Q');
	put32(&b, (500U << 20) + 4); /* a 500 MiB Query */
	before = heap_in_use();
	pgwire_feed(c, FE, b.p, b.len, 2);
	for (i = 0; i < 500; i++)
		pgwire_feed(c, FE, junk, 1 << 20, 3);
	assert_true(heap_in_use() < before + 256 * 1024);
	assert_int_equal(pgwire_conn_stats(c)->bodies_too_big, 1);
	b.len = 0;
	m_empty(&b, 'S');
	pgwire_feed(c, FE, b.p, b.len, 4);
	assert_int_equal(r.nm, 3);
	assert_int_equal(r.m[1].type, 'Q');
	assert_false(r.m[1].kept);
	assert_int_equal(r.m[1].len, 500U << 20);
	assert_int_equal(r.m[1].ts_start, 2);
	assert_int_equal(r.m[1].ts_end, 3);
	assert_int_equal(r.m[2].type, 'S');
	pgwire_conn_free(c);
	rec_free(&r);

	/* max_body 16: a 17-byte body whole in a chunk, and split across two */
	cfg.max_body = 16;
	c = pgwire_conn_new(&cfg, &handler, &r, true);
	b.len = 0;
	m_startup(&b, startup_kv);
	m_str(&b, 'Q', "SELECT 123456789");
	m_str(&b, 'Q', "SELECT 12345678");
	m_str(&b, 'Q', "SELECT 123456789");
	m_empty(&b, 'S');
	pgwire_feed(c, FE, b.p, b.len - 25, 1);
	pgwire_feed(c, FE, b.p + b.len - 25, 25, 2);
	assert_int_equal(r.nm, 5);
	assert_false(r.m[1].kept);
	assert_int_equal(r.m[1].len, 17);
	assert_true(r.m[2].kept);
	assert_false(r.m[3].kept);
	assert_int_equal(r.m[3].ts_start, 1);
	assert_int_equal(r.m[3].ts_end, 2);
	assert_int_equal(r.m[4].type, 'S');
	assert_int_equal(pgwire_conn_stats(c)->bodies_too_big, 2);
	pgwire_conn_free(c);
	rec_free(&r);
	free(b.p);
	free(junk);
}

/* Capture times come from the chunks holding the first and last bytes; a message whole in
 * its chunk is reported in place. */
static void test_timestamps_and_zero_copy(void **state)
{
	struct pgwire_config cfg;
	struct rec r = {0};
	struct pgwire_conn *c;
	struct bb b = {0};
	size_t q;

	(void)state;
	pgwire_config_default(&cfg);
	c = pgwire_conn_new(&cfg, &handler, &r, true);
	m_startup(&b, startup_kv);
	pgwire_feed(c, FE, b.p, b.len, 100);
	b.len = 0;
	m_str(&b, 'Q', "SELECT 1");
	q = b.len;
	m_str(&b, 'Q', "SELECT 2");
	/* first query whole, the second's header split after 2 bytes, its body in 3 chunks */
	pgwire_feed(c, FE, b.p, q + 2, 200);
	pgwire_feed(c, FE, b.p + q + 2, 4, 300);
	pgwire_feed(c, FE, b.p + q + 6, 3, 400);
	pgwire_feed(c, FE, b.p + q + 9, b.len - q - 9, 500);
	assert_int_equal(r.nm, 3);
	assert_int_equal(r.m[0].ts_start, 100);
	assert_int_equal(r.m[0].ts_end, 100);
	assert_int_equal(r.m[1].ts_start, 200);
	assert_int_equal(r.m[1].ts_end, 200);
	assert_int_equal(r.m[2].ts_start, 200);
	assert_int_equal(r.m[2].ts_end, 500);
	assert_memory_equal(r.m[2].body, "SELECT 2", 9);
	/* a message with an empty body ends with its header */
	b.len = 0;
	m_empty(&b, 'S');
	pgwire_feed(c, FE, b.p, 3, 600);
	pgwire_feed(c, FE, b.p + 3, 2, 700);
	assert_int_equal(r.m[3].ts_start, 600);
	assert_int_equal(r.m[3].ts_end, 700);
	pgwire_conn_free(c);
	rec_free(&r);
	free(b.p);
}

static const uint8_t *zc_base;
static size_t zc_len;
static int zc_inside;

static void on_msg_zc(void *ctx, const struct pgwire_msg *m)
{
	(void)ctx;
	if (m->body && m->body >= zc_base && m->body + m->len <= zc_base + zc_len)
		zc_inside++;
}

static void test_zero_copy(void **state)
{
	static const struct pgwire_handler h = {.message = on_msg_zc};
	struct pgwire_conn *c = pgwire_conn_new(NULL, &h, NULL, true);
	struct bb b = {0};

	(void)state;
	m_startup(&b, startup_kv);
	m_str(&b, 'Q', "SELECT 1");
	m_str(&b, 'Q', "SELECT 2");
	zc_base = b.p;
	zc_len = b.len;
	pgwire_feed(c, FE, b.p, b.len, 1);
	assert_int_equal(zc_inside, 3);
	pgwire_conn_free(c);
	free(b.p);
}

/* A gap puts the direction into hunting; the server side finds the next ReadyForQuery. */
static void test_gap_backend(void **state)
{
	struct pgwire_config cfg;
	struct rec r = {0};
	struct pgwire_conn *c;
	struct bb b = {0};

	(void)state;
	pgwire_config_default(&cfg);
	c = pgwire_conn_new(&cfg, &handler, &r, true);
	m_rowdesc(&b, 2);
	pgwire_feed(c, BE, b.p, b.len, 1);
	pgwire_gap(c, BE, 2);
	pgwire_gap(c, BE, 3); /* already hunting: no second DESYNC */
	assert_int_equal(r.desync[BE], 1);
	b.len = 0;
	/* the tail of some DataRow, a DataRow holding "Z\0\0\0\5I" text, C, Z */
	put(&b, "\x00\x00\x00\x01x", 5);
	msg_begin(&b, 'D'); /* a DataRow whose first column reads like ReadyForQuery */
	put16(&b, 2);
	put32(&b, 6);
	put(&b, "Z\x00\x00\x00\x05I", 6);
	put32(&b, 1);
	put8(&b, 'x');
	msg_end(&b);
	m_str(&b, 'C', "SELECT 2");
	m_ready(&b, 'T');
	m_empty(&b, '1');
	pgwire_feed(c, BE, b.p, b.len, 4);
	assert_int_equal(r.resync[BE], 1);
	assert_int_equal(r.nm, 3); /* T, then Z and '1' after the resync */
	assert_int_equal(r.m[1].type, 'Z');
	assert_int_equal(r.m[1].body[0], 'T');
	assert_int_equal(r.m[2].type, '1');
	assert_int_equal(pgwire_conn_stats(c)->resyncs, 1);
	pgwire_conn_free(c);
	rec_free(&r);
	free(b.p);
}

/* A callback may call pgwire_gap / pgwire_stop in the middle of a chunk. */
static void test_callback_reentry(void **state)
{
	struct pgwire_config cfg;
	struct rec r = {0};
	struct pgwire_conn *c;
	struct bb b = {0};

	(void)state;
	pgwire_config_default(&cfg);
	c = pgwire_conn_new(&cfg, &handler, &r, true);
	r.c = c;
	r.gap_after_type = '2';
	m_empty(&b, '1');
	m_empty(&b, '2');
	m_str(&b, 'C', "SELECT 1"); /* dropped: after the gap */
	m_ready(&b, 'I');
	m_empty(&b, '1');
	pgwire_feed(c, BE, b.p, b.len, 1);
	assert_int_equal(r.desync[BE], 1);
	assert_int_equal(r.resync[BE], 1);
	assert_int_equal(r.nm, 4); /* 1 2 | Z 1 */
	assert_int_equal(r.m[2].type, 'Z');
	r.stop_after_z = true;
	pgwire_feed(c, BE, b.p, b.len, 2); /* 1 2 C Z, then stopped */
	assert_int_equal(r.nm, 8);
	pgwire_feed(c, BE, b.p, b.len, 3);
	pgwire_feed(c, FE, b.p, b.len, 3);
	assert_int_equal(r.nm, 8);
	r.c = NULL;
	pgwire_conn_free(c);
	rec_free(&r);
	free(b.p);
}

/* Bytes that parse as a client message at the very end of a chunk prove nothing: neither
 * the end of the data nor the real message starting the next chunk confirms them. */
static void test_resync_chunk_edges(void **state)
{
	struct pgwire_config cfg;
	struct rec r = {0};
	struct pgwire_conn *c;
	struct bb b = {0};
	int k;

	(void)state;
	pgwire_config_default(&cfg);
	for (k = 0; k < 2; k++) {
		c = pgwire_conn_new(&cfg, &handler, &r, false);
		/* the tail of a binary CopyData that ends with what reads as Sync / a Query */
		put(&b, "\xff\xfe\x01\x02\x03", 5);
		if (k == 0)
			m_empty(&b, 'S');
		else
			m_str(&b, 'Q', "SELECT 1");
		pgwire_feed(c, FE, b.p, b.len, 1);
		assert_int_equal(r.nm, 0);
		assert_int_equal(r.resync[FE], 0);
		b.len = 0;
		m_str(&b, 'Q', "SELECT 2");
		pgwire_feed(c, FE, b.p, b.len, 2);
		assert_int_equal(r.resync[FE], 1);
		assert_int_equal(r.nm, 1);
		assert_int_equal(r.m[0].type, 'Q');
		assert_memory_equal(r.m[0].body, "SELECT 2", 9);
		assert_int_equal(r.m[0].ts_start, 2);
		pgwire_conn_free(c);
		rec_free(&r);
		b.len = 0;
	}
	/* a batch at the start of a chunk and ending it is trusted at once */
	c = pgwire_conn_new(&cfg, &handler, &r, false);
	m_str(&b, 'Q', "SELECT 3");
	pgwire_feed(c, FE, b.p, b.len, 3);
	assert_int_equal(r.nm, 1);
	pgwire_conn_free(c);
	rec_free(&r);
	free(b.p);
}

/*
 * A server's first bytes seen mid-session: decoded from the first byte when they are whole
 * messages up to a ReadyForQuery, even split across chunks (pgwire_whole stays true);
 * hunted for a ReadyForQuery otherwise (what precedes it is skipped: not whole). Bytes
 * after a first ReadyForQuery found only later (a DataRow tail) never count as the start.
 */
static void test_backend_from_first_byte(void **state)
{
	struct pgwire_config cfg;
	struct rec r = {0};
	struct pgwire_conn *c;
	struct bb b = {0};
	size_t half;

	(void)state;
	pgwire_config_default(&cfg);
	c = pgwire_conn_new(&cfg, &handler, &r, false);
	m_empty(&b, '2');
	m_str(&b, 'C', "INSERT 0 1");
	m_ready(&b, 'I');
	half = b.len / 2; /* the answer in two chunks: it waits for the rest */
	pgwire_feed(c, BE, b.p, half, 1);
	assert_int_equal(r.nm, 0);
	pgwire_feed(c, BE, b.p + half, b.len - half, 2);
	assert_int_equal(r.resync[BE], 1);
	assert_int_equal(r.nm, 3);
	assert_int_equal(r.m[0].type, '2');
	assert_int_equal(r.m[1].type, 'C');
	assert_int_equal(r.m[2].type, 'Z');
	assert_true(pgwire_whole(c, BE));
	assert_true(pgwire_whole(c, FE));
	pgwire_conn_free(c);
	rec_free(&r);
	b.len = 0;

	c = pgwire_conn_new(&cfg, &handler, &r, false);
	put(&b, "\x00\x00\x00\x01", 4); /* the middle of a DataRow */
	m_str(&b, 'C', "SELECT 2");
	m_ready(&b, 'I');
	pgwire_feed(c, BE, b.p, b.len, 1);
	assert_int_equal(r.resync[BE], 1);
	assert_int_equal(r.nm, 1);
	assert_int_equal(r.m[0].type, 'Z');
	assert_false(pgwire_whole(c, BE));
	pgwire_conn_free(c);
	rec_free(&r);
	free(b.p);
}

/* Hunting through a flood of bytes that never holds a boundary stays bounded. */
static void test_hunting_bounded(void **state)
{
	struct pgwire_config cfg;
	struct rec r = {0};
	struct pgwire_conn *c;
	uint8_t *junk = malloc(1 << 20);
	uint64_t x = 88172645463325252ULL;
	size_t i, before;

	(void)state;
	assert_non_null(junk);
	for (i = 0; i < (1 << 20); i++) {
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		junk[i] = (uint8_t)x;
	}
	/* windows full of candidates that wait for long bodies: 'Q' 00 00 ff e0 ... */
	for (i = 0; i + 5 < 65536; i += 5)
		memcpy(junk + i, "Q\x00\x00\xff\xe0", 5);
	pgwire_config_default(&cfg);
	c = pgwire_conn_new(&cfg, &handler, &r, false);
	before = heap_in_use();
	for (i = 0; i < 8; i++) {
		pgwire_feed(c, FE, junk, 1 << 20, i);
		pgwire_feed(c, BE, junk, 1 << 20, i);
	}
	assert_true(heap_in_use() < before + 512 * 1024);
	assert_int_equal(r.nm, 0);
	assert_int_equal(r.resync[FE] + r.resync[BE], 0);
	/* everything but the bytes still waiting in the two windows was skipped */
	assert_true(pgwire_conn_stats(c)->bytes_skipped >= 16ULL * (1 << 20) - 2 * 65536);
	pgwire_conn_free(c);
	free(junk);
}

/* ---- resynchronisation from random offsets into a recorded-like stream ---------------------- */

struct rng {
	uint64_t s;
};

static uint64_t rnd(struct rng *g)
{
	g->s ^= g->s << 13;
	g->s ^= g->s >> 7;
	g->s ^= g->s << 17;
	return g->s;
}

static uint32_t rnd_below(struct rng *g, uint32_t n)
{
	return (uint32_t)(rnd(g) % n);
}

/* Random bytes of every value, zeros included (binary parameters, bytea). */
static void rnd_bytes(struct rng *g, char *p, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		p[i] = (char)rnd(g);
}

static void rnd_text(struct rng *g, char *p, size_t n)
{
	static const char cs[] = "abcdefghijklmnopqrstuvwxyzQPBESZTDC0123456789 _,.'()=*";
	size_t i;

	for (i = 0; i < n; i++)
		p[i] = cs[rnd_below(g, sizeof(cs) - 1)];
	p[n] = 0;
}

/* Appends one realistic exchange: the client's batch, cut into MSS-sized chunks, then the
 * server's answer, cut likewise. */
static void cut_mss(struct script *sc, enum pgwire_dir dir, size_t start)
{
	struct bb *s = &sc->s[dir];
	size_t end = s->len, off = start;

	while (off < end) {
		size_t n = end - off > 1448 ? 1448 : end - off;

		s->len = off + n;
		cut(sc, dir);
		off += n;
	}
	s->len = end;
}

static void build_exchange(struct script *sc, struct rng *g)
{
	struct bb *f = &sc->s[FE], *b = &sc->s[BE];
	size_t f0 = f->len, b0 = b->len;
	char text[3000], v0[4096], v1[16], v2[64];
	const char *vals[3] = {v0, v1, v2};
	const char *row[3];
	int32_t lens[3];
	static const int16_t fmts[3] = {1, 0, 1};
	static const uint32_t oids[3] = {17, 23, 25};
	int kind = (int)rnd_below(g, 5), i, nrows;

	switch (kind) {
	case 0: /* simple query */
		rnd_text(g, text, 20 + rnd_below(g, 200));
		m_str(f, 'Q', text);
		break;
	case 1: /* unnamed extended, binary parameters */
	case 2:
		rnd_text(g, text, 20 + rnd_below(g, 100));
		lens[0] = (int32_t)rnd_below(g, kind == 1 ? 4000 : 40);
		rnd_bytes(g, v0, (size_t)lens[0]);
		lens[1] = rnd_below(g, 4) ? 4 : -1;
		rnd_bytes(g, v1, 4);
		lens[2] = (int32_t)rnd_below(g, 60);
		rnd_bytes(g, v2, (size_t)lens[2]);
		m_parse(f, "", text, 3, oids);
		m_bind(f, "", "", 3, fmts, 3, lens, vals, 1, fmts);
		m_describe(f, 'P', "");
		m_execute(f, "", 0);
		m_empty(f, 'S');
		break;
	case 3: /* prepared */
		lens[0] = 4;
		rnd_bytes(g, v0, 4);
		m_bind(f, "", "P0_1", 1, fmts, 1, lens, vals, 0, NULL);
		m_execute(f, "", 0);
		m_empty(f, 'S');
		break;
	default: /* a pipelined pair */
		m_bind(f, "", "P0_2", 0, NULL, 0, NULL, NULL, 0, NULL);
		m_execute(f, "", 0);
		m_bind(f, "", "P0_3", 0, NULL, 0, NULL, NULL, 0, NULL);
		m_execute(f, "", 0);
		m_empty(f, 'S');
		break;
	}
	cut_mss(sc, FE, f0);
	if (kind == 1 || kind == 2) {
		m_empty(b, '1');
		m_empty(b, '2');
	}
	if (kind == 3)
		m_empty(b, '2');
	if (kind < 3)
		m_rowdesc(b, 3);
	nrows = (int)rnd_below(g, 20);
	for (i = 0; i < nrows; i++) {
		static char cell[3][300];
		int k;

		for (k = 0; k < 3; k++) {
			rnd_text(g, cell[k], rnd_below(g, k == 2 ? 300 : 12));
			row[k] = rnd_below(g, 8) ? cell[k] : NULL;
		}
		if (rnd_below(g, 4) == 0) /* text that looks like a ReadyForQuery */
			row[1] = "Z";
		m_datarow(b, 3, row);
	}
	if (kind == 4) {
		m_empty(b, '2');
		m_str(b, 'C', "UPDATE 1");
		m_empty(b, '2');
		m_error(b, 'E', "40001", "could not serialize");
		m_ready(b, 'I');
	} else {
		snprintf(text, sizeof(text), "SELECT %d", nrows);
		m_str(b, 'C', text);
		m_ready(b, rnd_below(g, 3) ? 'I' : 'T');
	}
	cut_mss(sc, BE, b0);
}

/* Feeds one direction of sc from stream offset `from` into a hunting decoder; checks that
 * after the resync every message is the next original one (no garbage: up to limit of them,
 * or to the end) and that the boundary was found within `within` messages. */
static void resync_from(const struct script *sc, enum pgwire_dir dir, size_t from,
			const struct orig *o, int no, int within, int limit)
{
	struct pgwire_config cfg;
	struct rec r = {0};
	struct pgwire_conn *c;
	int i, first = -1, next_after = no;

	pgwire_config_default(&cfg);
	cfg.keep_datarows = true;
	c = pgwire_conn_new(&cfg, &handler, &r, false);
	for (i = 0; i < sc->n; i++) {
		const struct chunk *ch = &sc->ch[i];
		size_t s = ch->off, e = ch->off + ch->len;

		if (r.nm >= limit)
			break; /* enough to see it is in step; the rest is ordinary decoding */
		if (ch->dir != dir || e <= from)
			continue;
		if (s < from)
			s = from;
		pgwire_feed(c, dir, sc->s[dir].p + s, e - s, ch->ts);
	}
	for (i = 0; i < no; i++)
		if (o[i].off >= from) {
			next_after = i;
			break;
		}
	assert_int_equal(r.before_resync[dir], 0);
	if (r.nm > 0) {
		/* the first reported message is an original one at or after the offset ... */
		for (i = next_after; i < no; i++)
			if (o[i].type == r.m[0].type && o[i].len == r.m[0].len &&
			    !memcmp(o[i].body, r.m[0].body, o[i].len))
				break;
		if (i == no) {
			fprintf(stderr, "garbage after resync at offset %zu: type %02x len %u\n",
				from, r.m[0].type, r.m[0].len);
			fail();
		}
		first = i;
		/* ... and everything after it follows the originals in order */
		for (i = 0; i < r.nm; i++) {
			const struct orig *x = &o[first + i];

			assert_true(first + i < no);
			if (x->type != r.m[i].type || x->len != r.m[i].len ||
			    memcmp(x->body, r.m[i].body, x->len)) {
				fprintf(stderr, "offset %zu: message %d after resync differs\n",
					from, i);
				fail();
			}
		}
		if (r.nm < limit)
			assert_int_equal(first + r.nm, no);
	}
	if (next_after < no - within) {
		if (first < 0 || first - next_after > within) {
			fprintf(stderr, "offset %zu (%s): resync at %d, first message after %d\n",
				from, dir == FE ? "frontend" : "backend", first, next_after);
			fail();
		}
	}
	assert_true(r.resync[dir] <= 1);
	if (r.nm > 0)
		assert_int_equal(r.resync[dir], 1);
	assert_int_equal(pgwire_conn_stats(c)->bad_lengths, 0);
	pgwire_conn_free(c);
	rec_free(&r);
}

static void test_resync_random_offsets(void **state)
{
	struct script *sc = calloc(1, sizeof(*sc));
	struct rng g = {0x9e3779b97f4a7c15ULL};
	static struct orig fo[8192], bo[16384];
	int nf, nb, i, k;

	(void)state;
	assert_non_null(sc);
	while (sc->n < 2000)
		build_exchange(sc, &g);
	nf = split_typed(sc->s[FE].p, sc->s[FE].len, fo, 8192);
	nb = split_typed(sc->s[BE].p, sc->s[BE].len, bo, 16384);
	for (k = 0; k < 250; k++) {
		size_t off = rnd(&g) % (sc->s[FE].len * 9 / 10);

		resync_from(sc, FE, off, fo, nf, 12, 60);
		off = rnd(&g) % (sc->s[BE].len * 9 / 10);
		resync_from(sc, BE, off, bo, nb, 60, 60);
	}
	/* offsets right at message boundaries, and chunk starts */
	for (i = 0; i < 100; i++) {
		resync_from(sc, FE, fo[rnd_below(&g, (uint32_t)nf * 9 / 10)].off, fo, nf, 12, 60);
		resync_from(sc, BE, bo[rnd_below(&g, (uint32_t)nb * 9 / 10)].off, bo, nb, 60, 60);
	}
	script_free(sc);
	free(sc);
}

/* Resync from every offset of a small conversation, chunked by exchange. */
static void test_resync_every_offset(void **state)
{
	struct script *sc = calloc(1, sizeof(*sc));
	struct rng g = {12345};
	static struct orig fo[1024], bo[4096];
	int nf, nb;
	size_t off;

	(void)state;
	while (sc->n < 24)
		build_exchange(sc, &g);
	nf = split_typed(sc->s[FE].p, sc->s[FE].len, fo, 1024);
	nb = split_typed(sc->s[BE].p, sc->s[BE].len, bo, 4096);
	for (off = 0; off < sc->s[FE].len * 3 / 4; off++)
		resync_from(sc, FE, off, fo, nf, 12, 20);
	for (off = 0; off < sc->s[BE].len * 3 / 4; off += 3)
		resync_from(sc, BE, off, bo, nb, 60, 30);
	script_free(sc);
	free(sc);
}

/* ---- throughput ------------------------------------------------------------------------------ */

static uint64_t bench_msgs;

static void on_msg_count(void *ctx, const struct pgwire_msg *m)
{
	(void)ctx;
	(void)m;
	bench_msgs++;
}

static double now_s(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* pgbench -M prepared -S: Bind/Execute/Sync; BindComplete, DataRow, CommandComplete, Z. */
static void test_throughput(void **state)
{
	static const struct pgwire_handler h = {.message = on_msg_count};
	static const int16_t fmt[] = {1};
	static const int32_t len[] = {4};
	static const char *const val[] = {"\x00\x00\x01\x02"};
	static const char *const row[] = {"-2811"};
	const char *env = getenv("PGWIRE_BENCH");
	uint64_t target = env && *env == '1' ? 100ULL << 20 : 4ULL << 20;
	struct bb f = {0}, b = {0};
	struct pgwire_conn *c;
	uint64_t fed = 0, n = 0, msgs_per_round;
	double t0, dt;

	(void)state;
	m_bind(&f, "", "P0_1", 1, fmt, 1, len, val, 1, fmt);
	m_execute(&f, "", 0);
	m_empty(&f, 'S');
	m_empty(&b, '2');
	m_datarow(&b, 1, row);
	m_str(&b, 'C', "SELECT 1");
	m_ready(&b, 'I');
	msgs_per_round = 7;
	c = pgwire_conn_new(NULL, &h, NULL, false);
	pgwire_feed(c, FE, f.p, f.len, 0); /* resync on the first batch */
	pgwire_feed(c, BE, b.p, b.len, 0);
	bench_msgs = 0;
	t0 = now_s();
	while (fed < target) {
		pgwire_feed(c, FE, f.p, f.len, n);
		pgwire_feed(c, BE, b.p, b.len, n + 1);
		fed += f.len + b.len;
		n++;
	}
	dt = now_s() - t0;
	assert_int_equal(bench_msgs, n * msgs_per_round);
	assert_int_equal(pgwire_conn_stats(c)->bad_lengths, 0);
	if (env && *env == '1')
		printf(
		    "pgwire: %.1f MB in %.3f s: %.0f MB/s, %.2f M messages/s, %.2f M requests/s\n",
		    (double)fed / 1e6, dt, (double)fed / 1e6 / dt, (double)bench_msgs / 1e6 / dt,
		    (double)n / 1e6 / dt);
	pgwire_conn_free(c);
	free(f.p);
	free(b.p);
}

/* The decoders' shared budget: a body split across chunks is assembled while the budget
 * holds it, reported without its bytes (counted) once it does not, and given back. */
static void test_budget(void **state)
{
	static const uint8_t startup[] = {0,   0,   0,	 17, 0,	  3, 0, 0, 'u',
					  's', 'e', 'r', 0,  'u', 0, 0, 0};
	struct pgwire_budget b = {.max_bytes = 300 * 1024};
	struct pgwire_config cfg;
	struct rec r1 = {0}, r2 = {0};
	struct pgwire_conn *c1, *c2;
	uint32_t body = 200 * 1024;
	uint8_t *q = calloc(1, 5 + body);

	(void)state;
	assert_non_null(q);
	q[0] = 'Q';
	q[1] = (uint8_t)((body + 4) >> 24);
	q[2] = (uint8_t)((body + 4) >> 16);
	q[3] = (uint8_t)((body + 4) >> 8);
	q[4] = (uint8_t)(body + 4);
	memset(q + 5, 'x', body - 1); /* the text, NUL-terminated */
	pgwire_config_default(&cfg);
	cfg.budget = &b;
	c1 = pgwire_conn_new(&cfg, &handler, &r1, true);
	c2 = pgwire_conn_new(&cfg, &handler, &r2, true);
	assert_non_null(c1);
	assert_non_null(c2);
	pgwire_feed(c1, FE, startup, sizeof(startup), 1);
	pgwire_feed(c2, FE, startup, sizeof(startup), 1);
	/* both send the first half: the first holds 200 KiB of the 300 */
	pgwire_feed(c1, FE, q, 5 + body / 2, 2);
	pgwire_feed(c2, FE, q, 5 + body / 2, 2);
	assert_true(b.used >= body && b.used < 2 * body);
	assert_int_equal(pgwire_conn_stats(c1)->over_budget, 0);
	assert_int_equal(pgwire_conn_stats(c2)->over_budget, 1);
	pgwire_feed(c1, FE, q + 5 + body / 2, body / 2, 3);
	pgwire_feed(c2, FE, q + 5 + body / 2, body / 2, 3);
	assert_int_equal(r1.nm, 2);
	assert_int_equal(r2.nm, 2);
	assert_true(r1.m[1].kept && r1.m[1].len == body);
	assert_false(r2.m[1].kept); /* counted, its length known, its bytes not kept */
	assert_int_equal(r2.m[1].len, body);
	assert_int_equal(b.used, 0); /* a large body's buffer is freed once reported */
	assert_true(b.peak >= body && b.peak <= b.max_bytes);
	pgwire_conn_free(c1);
	pgwire_conn_free(c2);
	assert_int_equal(b.used, 0);
	rec_free(&r1);
	rec_free(&r2);
	free(q);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_all_types),
	    cmocka_unit_test(test_ssl_refused),
	    cmocka_unit_test(test_budget),
	    cmocka_unit_test(test_ssl_accepted),
	    cmocka_unit_test(test_direct_tls),
	    cmocka_unit_test(test_cancel_request),
	    cmocka_unit_test(test_nonsense_lengths),
	    cmocka_unit_test(test_bodies_too_big),
	    cmocka_unit_test(test_timestamps_and_zero_copy),
	    cmocka_unit_test(test_zero_copy),
	    cmocka_unit_test(test_gap_backend),
	    cmocka_unit_test(test_callback_reentry),
	    cmocka_unit_test(test_resync_chunk_edges),
	    cmocka_unit_test(test_backend_from_first_byte),
	    cmocka_unit_test(test_hunting_bounded),
	    cmocka_unit_test(test_resync_random_offsets),
	    cmocka_unit_test(test_resync_every_offset),
	    cmocka_unit_test(test_throughput),
	};

	if (getenv("PGWIRE_TEST"))
		cmocka_set_test_filter(getenv("PGWIRE_TEST"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
