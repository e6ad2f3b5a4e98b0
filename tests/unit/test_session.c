// SPDX-License-Identifier: BSD-2-Clause
/*
 * Unit tests of session (connections, prepared statements, requests and their outcomes),
 * driven by hand-built conversations through the real decoder. Every conversation is fed
 * whole, split in two at every byte of every chunk, and one byte at a time; all must give
 * the same requests, events and timestamps. Request contents (text, parameters, COPY
 * data) are compared byte for byte with what the client sent.
 *
 * SESSION_BENCH=1 ./build/test_session also prints the throughput of decoder + session on
 * a pgbench-like stream (no timed assertion: machines differ); SESSION_TEST=<name> runs the
 * tests matching name only; SESSION_DEBUG=1 prints the event logs of test_gap and
 * test_unmatched.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <cmocka.h>

#include "session.h"

#define FE PGWIRE_FRONTEND
#define BE PGWIRE_BACKEND

#include "wire_script.h"

/* ---- recording what the decoder reports --------------------------------------------------- */
/* ---- recording what the session reports ---------------------------------------------------- */

struct reqrec {
	struct session_request r; /* pointers below replaced by copies */
	char *text;
	char *stmt_name, *portal;
	uint32_t *types;
	int16_t *pformats, *rformats;
	int32_t *lens;
	uint8_t **vals;
	uint8_t *copy;
	char db[64];
};

struct col {
	char *log;
	size_t len, cap;
	struct reqrec *q;
	int nq, capq;
	int ev[SESSION_EV_CLOSE + 1];
	struct session *s;
};

static void logf_(struct col *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void logf_(struct col *c, const char *fmt, ...)
{
	va_list ap;
	int n;

	for (;;) {
		va_start(ap, fmt);
		n = vsnprintf(c->log ? c->log + c->len : NULL, c->log ? c->cap - c->len : 0, fmt,
			      ap);
		va_end(ap);
		if (c->log && (size_t)n < c->cap - c->len)
			break;
		c->cap = c->cap ? c->cap * 2 + (size_t)n : 4096 + (size_t)n;
		c->log = realloc(c->log, c->cap);
		assert_non_null(c->log);
	}
	c->len += (size_t)n;
}

static void loghex(struct col *c, const void *p, size_t n)
{
	const uint8_t *b = p;
	size_t i;

	if (!p) {
		logf_(c, "NULL");
		return;
	}
	for (i = 0; i < n; i++)
		logf_(c, "%02x", b[i]);
}

static void *dup(const void *p, size_t n)
{
	void *d;

	if (!p)
		return NULL;
	d = malloc(n ? n : 1);
	assert_non_null(d);
	memcpy(d, p, n);
	return d;
}

static char *dupstr(const char *s)
{
	return s ? dup(s, strlen(s) + 1) : NULL;
}

static void on_request(void *ctx, struct session_info *s, const struct session_request *r)
{
	struct col *c = ctx;
	struct reqrec *x;
	int i;

	logf_(c, "REQ k=%d ts=%llu..%llu db=%s text=", r->kind, (unsigned long long)r->ts_start,
	      (unsigned long long)r->ts_end, s->database);
	loghex(c, r->text, r->text_len);
	logf_(c, " stmt=%s portal=%s types=", r->stmt_name ? r->stmt_name : "-",
	      r->portal ? r->portal : "-");
	for (i = 0; i < r->n_param_types; i++)
		logf_(c, "%u,", r->param_types[i]);
	logf_(c, " pf=");
	for (i = 0; i < r->n_param_formats; i++)
		logf_(c, "%d,", r->param_formats[i]);
	logf_(c, " params=");
	for (i = 0; i < r->n_params; i++) {
		logf_(c, "%d:", r->param_lengths[i]);
		if (r->param_lengths[i] >= 0)
			loghex(c, r->param_values[i], (size_t)r->param_lengths[i]);
		logf_(c, ",");
	}
	logf_(c, " rf=");
	for (i = 0; i < r->n_result_formats; i++)
		logf_(c, "%d,", r->result_formats[i]);
	logf_(c, " fn=%u max=%u sg=%llu copy=", r->function_oid, r->max_rows,
	      (unsigned long long)r->sync_group);
	loghex(c, r->copy_data, r->copy_len);
	logf_(c, "%s tag=%s rows=%llu dr=%llu cmds=%u empty=%d susp=%d err=%d state=%s txn=%d\n",
	      r->copy_truncated ? "(truncated)" : "", r->tag, (unsigned long long)r->rows,
	      (unsigned long long)r->datarows, r->commands, r->empty, r->suspended, r->error,
	      r->sqlstate, r->txn_status);

	if (r->text)
		assert_int_equal(r->text[r->text_len], 0);
	if (c->nq == c->capq) {
		c->capq = c->capq ? c->capq * 2 : 32;
		c->q = realloc(c->q, (size_t)c->capq * sizeof(*c->q));
		assert_non_null(c->q);
	}
	x = &c->q[c->nq++];
	memset(x, 0, sizeof(*x));
	x->r = *r;
	x->text = r->text ? dup(r->text, r->text_len + 1) : NULL;
	x->stmt_name = dupstr(r->stmt_name);
	x->portal = dupstr(r->portal);
	x->types = dup(r->param_types, r->n_param_types * sizeof(uint32_t));
	x->pformats = dup(r->param_formats, r->n_param_formats * sizeof(int16_t));
	x->rformats = dup(r->result_formats, r->n_result_formats * sizeof(int16_t));
	x->lens = dup(r->param_lengths, r->n_params * sizeof(int32_t));
	x->vals = calloc(r->n_params + 1, sizeof(*x->vals));
	assert_non_null(x->vals);
	for (i = 0; i < r->n_params; i++)
		x->vals[i] = r->param_lengths[i] >= 0
				 ? dup(r->param_values[i], (size_t)r->param_lengths[i])
				 : NULL;
	x->copy = dup(r->copy_data, r->copy_len);
	snprintf(x->db, sizeof(x->db), "%s", s->database);
}

static void on_event(void *ctx, struct session_info *s, enum session_event ev, uint64_t ts)
{
	static const char *const names[SESSION_EV_CLOSE + 1] = {
	    [SESSION_EV_OPEN] = "OPEN",
	    [SESSION_EV_IDENTIFIED] = "IDENTIFIED",
	    [SESSION_EV_RESYNC] = "RESYNC",
	    [SESSION_EV_ENCRYPTED] = "ENCRYPTED",
	    [SESSION_EV_REPLICATION] = "REPLICATION",
	    [SESSION_EV_SYNC] = "SYNC",
	    [SESSION_EV_CLOSE] = "CLOSE"};
	struct col *c = ctx;

	logf_(c, "EV %s ts=%llu db=%s user=%s state=%d\n", names[ev], (unsigned long long)ts,
	      s->database, s->user, s->state);
	c->ev[ev]++;
}

static const struct session_handler handler = {.request = on_request, .event = on_event};

static void col_free(struct col *c)
{
	int i, k;

	for (i = 0; i < c->nq; i++) {
		struct reqrec *x = &c->q[i];

		free(x->text);
		free(x->stmt_name);
		free(x->portal);
		free(x->types);
		free(x->pformats);
		free(x->rformats);
		free(x->lens);
		for (k = 0; k < x->r.n_params; k++)
			free(x->vals[k]);
		free(x->vals);
		free(x->copy);
	}
	free(c->q);
	free(c->log);
	memset(c, 0, sizeof(*c));
}

/* ---- feeding --------------------------------------------------------------------------------- */

enum mode {
	WHOLE,
	SPLIT, /* chunk `which` split at `at` */
	BYTES, /* one byte at a time */
};

/* Feeds a script to a new session and frees it; leaves the counters in st. Gaps: a chunk
 * of length 0 stands for a gap in its direction. */
static void run(const struct script *sc, const struct session_config *cfg, bool from_start,
		enum mode mode, int which, size_t at, struct col *c, struct session_stats *st)
{
	struct session *s;
	int i;

	memset(st, 0, sizeof(*st));
	s = session_new(cfg, &handler, c, st, 7, from_start, 1);
	assert_non_null(s);
	c->s = s;
	for (i = 0; i < sc->n; i++) {
		const struct chunk *ch = &sc->ch[i];
		const uint8_t *d = sc->s[ch->dir].p + ch->off;
		size_t k;

		if (ch->len == 0) {
			session_gap(s, ch->dir, ch->ts);
		} else if (mode == BYTES) {
			for (k = 0; k < ch->len; k++)
				session_feed(s, ch->dir, d + k, 1, ch->ts);
		} else if (mode == SPLIT && i == which) {
			session_feed(s, ch->dir, d, at, ch->ts);
			session_feed(s, ch->dir, d + at, ch->len - at, ch->ts);
		} else {
			session_feed(s, ch->dir, d, ch->len, ch->ts);
		}
	}
	logf_(c, "END state=%d txn=%d\n", session_info(s)->state, session_info(s)->txn_status);
	c->s = NULL;
	session_free(s, 999999999);
	logf_(c,
	      "STATS req=%llu abandoned=%llu unmatched=%llu proto=%llu overflow=%llu "
	      "evicted=%llu resyncs=%llu active=%llu\n",
	      (unsigned long long)st->requests, (unsigned long long)st->abandoned,
	      (unsigned long long)st->unmatched_responses, (unsigned long long)st->protocol_errors,
	      (unsigned long long)st->inflight_overflow, (unsigned long long)st->statements_evicted,
	      (unsigned long long)st->resyncs, (unsigned long long)st->sessions_active);
}

/* Whole, every split of every chunk, and byte by byte give the same log. */
static void check_split_invariance(const struct script *sc, const struct session_config *cfg,
				   bool from_start, struct col *whole, struct session_stats *st)
{
	struct session_stats st2;
	struct col c = {0};
	size_t at;
	int i;

	run(sc, cfg, from_start, WHOLE, 0, 0, whole, st);
	for (i = 0; i < sc->n; i++) {
		for (at = 1; at < sc->ch[i].len; at++) {
			run(sc, cfg, from_start, SPLIT, i, at, &c, &st2);
			if (strcmp(whole->log, c.log) != 0) {
				fprintf(
				    stderr,
				    "chunk %d split at %zu differs:\n--- whole\n%s--- split\n%s", i,
				    at, whole->log, c.log);
				fail();
			}
			col_free(&c);
		}
	}
	run(sc, cfg, from_start, BYTES, 0, 0, &c, &st2);
	if (strcmp(whole->log, c.log) != 0) {
		fprintf(stderr, "byte by byte differs:\n--- whole\n%s--- bytes\n%s", whole->log,
			c.log);
		fail();
	}
	col_free(&c);
}

static void gap(struct script *sc, enum pgwire_dir dir)
{
	assert_true(sc->n < 4096);
	sc->ts += 1000;
	sc->ch[sc->n++] = (struct chunk){.dir = dir, .ts = sc->ts, .off = sc->s[dir].len};
}

/* The last chunk's capture time. */
static uint64_t last_ts(const struct script *sc)
{
	return sc->ch[sc->n - 1].ts;
}

/* ---- conversations ------------------------------------------------------------------------------
 */

static const char *const startup_kv[] = {
    "user", "alice", "database", "app", "application_name", "psql", "options", "-c geqo=off", NULL};

static void auth_ok(struct script *sc)
{
	struct bb *b = &sc->s[BE];

	msg_begin(b, 'R');
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
}

static void startup(struct script *sc, const char *const *kv)
{
	m_startup(&sc->s[FE], kv);
	cut(sc, FE);
	auth_ok(sc);
}

static void simple(struct script *sc, const char *q)
{
	m_str(&sc->s[FE], 'Q', q);
	cut(sc, FE);
}

static void copy_in_response(struct bb *b)
{
	msg_begin(b, 'G');
	put8(b, 0);
	put16(b, 2);
	put16(b, 0);
	put16(b, 0);
	msg_end(b);
}

static void copy_data(struct bb *b, const char *s)
{
	msg_begin(b, 'd');
	put(b, s, strlen(s));
	msg_end(b);
}

/* Timestamps of interest in the big conversation. */
struct marks {
	uint64_t ext_parse, ext_c;
	uint64_t q_select, q_z;
};

/* Everything a request can be, in one conversation (see the comments per request). */
static void build_conversation(struct script *sc, struct marks *mk)
{
	struct bb *f = &sc->s[FE], *b = &sc->s[BE];
	static const char *const one[] = {"1"};
	static const char *const two[] = {"2"};
	static const uint32_t oids[] = {23, 25, 17};
	static const int16_t fmts[] = {0, 0, 1};
	static const int32_t lens[] = {2, -1, 4};
	static const char *const vals[] = {"42", NULL, "\x00\x01\x02\x03"};
	static const int16_t rf[] = {1};
	static const uint32_t oid23[] = {23};
	static const int32_t len7[] = {1};
	static const char *const val7[] = {"7"};

	startup(sc, startup_kv);

	/* 1: a simple SELECT; its answer in two chunks */
	simple(sc, "SELECT 1");
	mk->q_select = last_ts(sc);
	m_rowdesc(b, 1);
	m_datarow(b, 1, one);
	cut(sc, BE);
	m_str(b, 'C', "SELECT 1");
	m_ready(b, 'I');
	cut(sc, BE);
	mk->q_z = last_ts(sc);

	/* 2: two statements in one Query */
	simple(sc, "INSERT INTO t VALUES (1); SELECT * FROM t");
	m_str(b, 'C', "INSERT 0 1");
	m_rowdesc(b, 1);
	m_datarow(b, 1, one);
	m_datarow(b, 1, two);
	m_str(b, 'C', "SELECT 2");
	m_ready(b, 'I');
	cut(sc, BE);

	/* 3: an empty query */
	simple(sc, "");
	m_empty(b, 'I');
	m_ready(b, 'I');
	cut(sc, BE);

	/* 4-7: errors inside a transaction block */
	simple(sc, "BEGIN");
	m_str(b, 'C', "BEGIN");
	m_ready(b, 'T');
	cut(sc, BE);
	simple(sc, "SELECT 1/0");
	m_error(b, 'E', "22012", "division by zero");
	m_ready(b, 'E');
	cut(sc, BE);
	simple(sc, "SELECT 1");
	m_error(b, 'N', "01000", "a notice first");
	m_error(b, 'E', "25P02", "current transaction is aborted");
	m_ready(b, 'E');
	cut(sc, BE);
	simple(sc, "ROLLBACK");
	m_str(b, 'C', "ROLLBACK");
	m_ready(b, 'I');
	cut(sc, BE);

	/* 8: COPY FROM STDIN */
	simple(sc, "COPY t FROM STDIN");
	copy_in_response(b);
	cut(sc, BE);
	copy_data(f, "1\tfoo\n");
	cut(sc, FE);
	copy_data(f, "2\tbar\n");
	m_empty(f, 'c');
	cut(sc, FE);
	m_str(b, 'C', "COPY 2");
	m_ready(b, 'I');
	cut(sc, BE);

	/* 9: COPY TO STDOUT */
	simple(sc, "COPY t TO STDOUT");
	msg_begin(b, 'H');
	put8(b, 0);
	put16(b, 0);
	msg_end(b);
	copy_data(b, "1\tfoo\n");
	copy_data(b, "2\tbar\n");
	m_empty(b, 'c');
	m_str(b, 'C', "COPY 2");
	m_ready(b, 'I');
	cut(sc, BE);

	/* 10: extended, unnamed, three parameters (text, NULL, binary); Parse/Bind in an
	 * earlier chunk than Execute; CommandComplete in an earlier chunk than Z */
	m_parse(f, "", "SELECT $1::int, $2::text, $3::bytea", 3, oids);
	m_bind(f, "", "", 3, fmts, 3, lens, vals, 1, rf);
	cut(sc, FE);
	mk->ext_parse = last_ts(sc);
	m_describe(f, 'P', "");
	m_execute(f, "", 0);
	m_empty(f, 'S');
	cut(sc, FE);
	m_empty(b, '1');
	m_empty(b, '2');
	m_rowdesc(b, 3);
	m_datarow(b, 1, one);
	m_str(b, 'C', "SELECT 1");
	cut(sc, BE);
	mk->ext_c = last_ts(sc);
	m_ready(b, 'I');
	cut(sc, BE);

	/* 11: a named statement prepared alone, executed, closed, executed again (fails) */
	m_parse(f, "s1", "SELECT $1", 1, oid23);
	m_describe(f, 'S', "s1");
	m_empty(f, 'S');
	cut(sc, FE);
	m_empty(b, '1');
	msg_begin(b, 't');
	put16(b, 1);
	put32(b, 23);
	msg_end(b);
	m_rowdesc(b, 1);
	m_ready(b, 'I');
	cut(sc, BE);
	m_bind(f, "", "s1", 0, NULL, 1, len7, val7, 0, NULL);
	m_execute(f, "", 0);
	m_empty(f, 'S');
	cut(sc, FE);
	m_empty(b, '2');
	m_datarow(b, 1, val7);
	m_str(b, 'C', "SELECT 1");
	m_ready(b, 'I');
	cut(sc, BE);
	m_close(f, 'S', "s1");
	m_empty(f, 'S');
	cut(sc, FE);
	m_empty(b, '3');
	m_ready(b, 'I');
	cut(sc, BE);
	m_bind(f, "", "s1", 0, NULL, 1, len7, val7, 0, NULL);
	m_execute(f, "", 0);
	m_empty(f, 'S');
	cut(sc, FE);
	m_error(b, 'E', "26000", "prepared statement \"s1\" does not exist");
	m_ready(b, 'I');
	cut(sc, BE);

	/* 12: three Executes pipelined before one Sync, the second fails */
	m_parse(f, "", "UPDATE a SET x = 1", 0, NULL);
	m_bind(f, "", "", 0, NULL, 0, NULL, NULL, 0, NULL);
	m_execute(f, "", 0);
	m_parse(f, "", "UPDATE b SET x = 1", 0, NULL);
	m_bind(f, "", "", 0, NULL, 0, NULL, NULL, 0, NULL);
	m_execute(f, "", 0);
	m_parse(f, "", "UPDATE c SET x = 1", 0, NULL);
	m_bind(f, "", "", 0, NULL, 0, NULL, NULL, 0, NULL);
	m_execute(f, "", 0);
	m_empty(f, 'S');
	cut(sc, FE);
	m_empty(b, '1');
	m_empty(b, '2');
	m_str(b, 'C', "UPDATE 1");
	m_empty(b, '1');
	m_empty(b, '2');
	m_error(b, 'E', "40001", "could not serialize access");
	m_ready(b, 'I');
	cut(sc, BE);

	/* 13: a row limit: PortalSuspended, then the rest of the portal */
	simple(sc, "BEGIN");
	m_str(b, 'C', "BEGIN");
	m_ready(b, 'T');
	cut(sc, BE);
	m_parse(f, "s2", "SELECT generate_series(1, 3)", 0, NULL);
	m_bind(f, "c1", "s2", 0, NULL, 0, NULL, NULL, 0, NULL);
	m_execute(f, "c1", 2);
	m_empty(f, 'H');
	cut(sc, FE);
	m_empty(b, '1');
	m_empty(b, '2');
	m_datarow(b, 1, one);
	m_datarow(b, 1, two);
	m_empty(b, 's');
	cut(sc, BE);
	m_execute(f, "c1", 2);
	m_empty(f, 'S');
	cut(sc, FE);
	m_datarow(b, 1, vals);
	m_str(b, 'C', "SELECT 1");
	m_ready(b, 'T');
	cut(sc, BE);
	simple(sc, "COMMIT");
	m_str(b, 'C', "COMMIT");
	m_ready(b, 'I');
	cut(sc, BE);

	/* 14: FunctionCall, one NULL and one binary argument */
	msg_begin(f, 'F');
	put32(f, 1598);
	put16(f, 1);
	put16(f, 1);
	put16(f, 2);
	put32(f, 0xffffffffU);
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

	/* 15: COPY FROM STDIN through the extended protocol, as libpq does it: the Sync after
	 * Execute is swallowed by the server, another follows CopyDone */
	m_parse(f, "", "COPY t FROM STDIN", 0, NULL);
	m_bind(f, "", "", 0, NULL, 0, NULL, NULL, 0, NULL);
	m_execute(f, "", 0);
	m_empty(f, 'S');
	cut(sc, FE);
	m_empty(b, '1');
	m_empty(b, '2');
	copy_in_response(b);
	cut(sc, BE);
	copy_data(f, "3\tbaz\n");
	m_empty(f, 'S'); /* ignored by the server during COPY FROM STDIN, as is Flush */
	m_empty(f, 'H');
	copy_data(f, "4\tqux\n");
	m_empty(f, 'c');
	m_empty(f, 'S');
	cut(sc, FE);
	m_str(b, 'C', "COPY 2");
	m_ready(b, 'I');
	cut(sc, BE);

	/* 16: a Parse that fails alone is no request; the Sync after it still matches */
	m_parse(f, "", "SELEC 1", 0, NULL);
	m_empty(f, 'S');
	cut(sc, FE);
	m_error(b, 'E', "42601", "syntax error");
	m_ready(b, 'I');
	cut(sc, BE);

	/* 17: an error answered before the client sent the rest of its pipeline: the server
	 * ignores everything up to the Sync, the later Execute never runs */
	m_parse(f, "", "SELECT 1/0", 0, NULL);
	m_bind(f, "", "", 0, NULL, 0, NULL, NULL, 0, NULL);
	m_execute(f, "", 0);
	m_empty(f, 'H');
	cut(sc, FE);
	m_empty(b, '1');
	m_empty(b, '2');
	m_error(b, 'E', "22012", "division by zero");
	cut(sc, BE);
	m_parse(f, "", "SELECT 2", 0, NULL);
	m_bind(f, "", "", 0, NULL, 0, NULL, NULL, 0, NULL);
	m_execute(f, "", 0);
	m_empty(f, 'S');
	cut(sc, FE);
	m_ready(b, 'I');
	cut(sc, BE);

	/* 18: and the simple protocol still lines up after all that */
	simple(sc, "SELECT 18");
	m_str(b, 'C', "SELECT 0");
	m_ready(b, 'I');
	cut(sc, BE);

	m_empty(f, 'X');
	cut(sc, FE);
}

static void assert_params(const struct reqrec *x, int n, const int32_t *lens,
			  const char *const *vals)
{
	int i;

	assert_int_equal(x->r.n_params, n);
	for (i = 0; i < n; i++) {
		assert_int_equal(x->lens[i], lens[i]);
		if (lens[i] < 0)
			assert_null(x->vals[i]);
		else
			assert_memory_equal(x->vals[i], vals[i], (size_t)lens[i]);
	}
}

static void test_conversation(void **state)
{
	struct script *sc = calloc(1, sizeof(*sc));
	struct session_config cfg;
	struct session_stats st;
	struct col c = {0};
	struct marks mk;
	const struct reqrec *q;
	static const int32_t lens[] = {2, -1, 4};
	static const char *const vals[] = {"42", NULL, "\x00\x01\x02\x03"};
	static const int32_t flens[] = {-1, 4};
	static const char *const fvals[] = {NULL, "\x00\x00\x00\x07"};

	(void)state;
	assert_non_null(sc);
	session_config_default(&cfg);
	build_conversation(sc, &mk);
	check_split_invariance(sc, &cfg, true, &c, &st);

	assert_int_equal(c.ev[SESSION_EV_OPEN], 1);
	assert_int_equal(c.ev[SESSION_EV_IDENTIFIED], 1);
	assert_int_equal(c.ev[SESSION_EV_CLOSE], 1);
	assert_int_equal(c.ev[SESSION_EV_RESYNC], 0);
	assert_int_equal(c.nq, 22);
	assert_int_equal(st.requests, 22);
	assert_int_equal(st.abandoned, 2); /* the third pipelined Execute, and 17's second */
	assert_int_equal(st.unmatched_responses, 0);
	assert_int_equal(st.protocol_errors, 0);
	assert_int_equal(st.inflight_overflow, 0);
	assert_int_equal(st.resyncs, 0);
	assert_int_equal(st.sessions_opened, 1);
	assert_int_equal(st.sessions_active, 0);
	assert_true(st.wire.messages > 100);
	assert_int_equal(st.wire.bytes, sc->s[FE].len + sc->s[BE].len);
	assert_int_equal(st.wire.bad_lengths, 0);

	/* 1 */
	q = &c.q[0];
	assert_int_equal(q->r.kind, SESSION_REQ_QUERY);
	assert_string_equal(q->text, "SELECT 1");
	assert_int_equal(q->r.text_len, 8);
	assert_string_equal(q->db, "app");
	assert_int_equal(q->r.ts_start, mk.q_select);
	assert_int_equal(q->r.ts_end, mk.q_z);
	assert_string_equal(q->r.tag, "SELECT 1");
	assert_int_equal(q->r.rows, 1);
	assert_int_equal(q->r.datarows, 1);
	assert_int_equal(q->r.commands, 1);
	assert_int_equal(q->r.txn_status, 'I');
	assert_false(q->r.error);
	assert_null(q->stmt_name);
	assert_null(q->portal);
	/* 2 */
	q = &c.q[1];
	assert_int_equal(q->r.commands, 2);
	assert_string_equal(q->r.tag, "SELECT 2");
	assert_int_equal(q->r.rows, 2);
	assert_int_equal(q->r.datarows, 2);
	/* 3 */
	q = &c.q[2];
	assert_true(q->r.empty);
	assert_int_equal(q->r.commands, 0);
	assert_string_equal(q->r.tag, "");
	assert_int_equal(q->r.text_len, 0);
	/* 4-7 */
	assert_int_equal(c.q[3].r.txn_status, 'T');
	q = &c.q[4];
	assert_true(q->r.error);
	assert_string_equal(q->r.sqlstate, "22012");
	assert_int_equal(q->r.txn_status, 'E');
	q = &c.q[5];
	assert_true(q->r.error);
	assert_string_equal(q->r.sqlstate, "25P02");
	assert_int_equal(q->r.txn_status, 'E');
	q = &c.q[6];
	assert_false(q->r.error);
	assert_string_equal(q->r.sqlstate, "");
	assert_int_equal(q->r.txn_status, 'I');
	/* 8: COPY FROM STDIN data, exactly */
	q = &c.q[7];
	assert_int_equal(q->r.copy_len, 12);
	assert_memory_equal(q->copy, "1\tfoo\n2\tbar\n", 12);
	assert_false(q->r.copy_truncated);
	assert_int_equal(q->r.rows, 2);
	/* 9 */
	q = &c.q[8];
	assert_int_equal(q->r.rows, 2);
	assert_int_equal(q->r.datarows, 0);
	assert_null(q->copy);
	/* 10: extended */
	q = &c.q[9];
	assert_int_equal(q->r.kind, SESSION_REQ_EXECUTE);
	assert_string_equal(q->text, "SELECT $1::int, $2::text, $3::bytea");
	assert_string_equal(q->stmt_name, "");
	assert_string_equal(q->portal, "");
	assert_int_equal(q->r.n_param_types, 3);
	assert_int_equal(q->types[0], 23);
	assert_int_equal(q->types[1], 25);
	assert_int_equal(q->types[2], 17);
	assert_int_equal(q->r.n_param_formats, 3);
	assert_int_equal(q->pformats[2], 1);
	assert_params(q, 3, lens, vals);
	assert_int_equal(q->r.n_result_formats, 1);
	assert_int_equal(q->rformats[0], 1);
	assert_int_equal(q->r.ts_start, mk.ext_parse); /* the Parse's chunk, not the Execute's */
	assert_int_equal(q->r.ts_end, mk.ext_c);       /* CommandComplete, not ReadyForQuery */
	assert_int_equal(q->r.txn_status, 0);
	assert_int_equal(q->r.rows, 1);
	/* 11 */
	q = &c.q[10];
	assert_string_equal(q->stmt_name, "s1");
	assert_string_equal(q->text, "SELECT $1");
	assert_int_equal(q->r.n_param_types, 1);
	q = &c.q[11];
	assert_string_equal(q->stmt_name, "s1");
	assert_null(q->text); /* closed: its Parse is gone */
	assert_true(q->r.error);
	assert_string_equal(q->r.sqlstate, "26000");
	/* 12: pipelined */
	q = &c.q[12];
	assert_string_equal(q->text, "UPDATE a SET x = 1");
	assert_false(q->r.error);
	assert_string_equal(q->r.tag, "UPDATE 1");
	assert_int_equal(q->r.rows, 1);
	assert_string_equal(c.q[13].text, "UPDATE b SET x = 1");
	assert_true(c.q[13].r.error);
	assert_string_equal(c.q[13].r.sqlstate, "40001");
	assert_int_equal(q->r.sync_group, c.q[13].r.sync_group);
	assert_true(c.q[13].r.sync_group > c.q[11].r.sync_group);
	assert_int_equal(q->r.ts_end, c.q[13].r.ts_end); /* both answered in one chunk */
	/* 13: row limit */
	q = &c.q[15];
	assert_string_equal(q->portal, "c1");
	assert_string_equal(q->stmt_name, "s2");
	assert_true(q->r.suspended);
	assert_int_equal(q->r.max_rows, 2);
	assert_int_equal(q->r.rows, 2);
	assert_int_equal(q->r.datarows, 2);
	q = &c.q[16];
	assert_false(q->r.suspended);
	assert_string_equal(q->r.tag, "SELECT 1");
	assert_string_equal(q->text, "SELECT generate_series(1, 3)");
	/* 14: FunctionCall */
	q = &c.q[18];
	assert_int_equal(q->r.kind, SESSION_REQ_FUNCTION);
	assert_int_equal(q->r.function_oid, 1598);
	assert_params(q, 2, flens, fvals);
	assert_int_equal(q->r.n_param_formats, 1);
	assert_int_equal(q->r.n_result_formats, 1);
	assert_null(q->text);
	assert_int_equal(q->r.txn_status, 'I');
	/* 15: COPY through the extended protocol */
	q = &c.q[19];
	assert_int_equal(q->r.kind, SESSION_REQ_EXECUTE);
	assert_string_equal(q->text, "COPY t FROM STDIN");
	assert_int_equal(q->r.copy_len, 12);
	assert_memory_equal(q->copy, "3\tbaz\n4\tqux\n", 12);
	assert_string_equal(q->r.tag, "COPY 2");
	/* 17 */
	q = &c.q[20];
	assert_string_equal(q->text, "SELECT 1/0");
	assert_string_equal(q->r.sqlstate, "22012");
	/* 18 */
	q = &c.q[21];
	assert_string_equal(q->text, "SELECT 18");
	assert_false(q->r.error);
	assert_int_equal(q->r.txn_status, 'I');
	col_free(&c);
	script_free(sc);
	free(sc);
}

/* Parameters, database defaulting to the user, state changes. */
static void test_startup(void **state)
{
	static const char *const kv[] = {"user", "bob", "client_encoding", "UTF8", NULL};
	struct script *sc = calloc(1, sizeof(*sc));
	struct session_config cfg;
	struct session_stats st;
	struct session *s;
	struct col c = {0};

	(void)state;
	session_config_default(&cfg);
	m_startup(&sc->s[FE], kv);
	cut(sc, FE);
	auth_ok(sc);
	s = session_new(&cfg, &handler, &c, &st, 1, true, 5);
	memset(&st, 0, sizeof(st)); /* counters are the owner's: start from zero here */
	assert_int_equal(session_info(s)->state, SESSION_STARTUP);
	assert_string_equal(session_info(s)->database, SESSION_UNKNOWN);
	session_feed(s, FE, sc->s[FE].p, sc->s[FE].len, 10);
	assert_int_equal(c.ev[SESSION_EV_IDENTIFIED], 1);
	assert_string_equal(session_info(s)->database, "bob");
	assert_string_equal(session_info(s)->user, "bob");
	assert_string_equal(session_info(s)->application_name, "");
	assert_int_equal(session_info(s)->n_params, 2);
	assert_string_equal(session_info(s)->params[1].name, "client_encoding");
	assert_string_equal(session_info(s)->params[1].value, "UTF8");
	assert_int_equal(session_info(s)->state, SESSION_STARTUP);
	session_feed(s, BE, sc->s[BE].p, sc->s[BE].len, 20);
	assert_int_equal(session_info(s)->state, SESSION_READY);
	assert_int_equal(session_info(s)->txn_status, 'I');
	assert_false(session_info(s)->resynced);
	/* identify is for sessions whose start was missed: ignored here */
	session_identify(s, "other", "carol", 30);
	assert_string_equal(session_info(s)->database, "bob");
	session_free(s, 40);
	col_free(&c);
	script_free(sc);
	free(sc);
}

/* SSLRequest answered 'N', then a normal session. */
static void test_ssl_refused(void **state)
{
	struct script *sc = calloc(1, sizeof(*sc));
	struct session_config cfg;
	struct session_stats st;
	struct col c = {0};

	(void)state;
	session_config_default(&cfg);
	m_code(&sc->s[FE], 80877103);
	cut(sc, FE);
	put8(&sc->s[BE], 'N');
	cut(sc, BE);
	startup(sc, startup_kv);
	simple(sc, "SELECT 1");
	m_empty(&sc->s[BE], 'I');
	m_ready(&sc->s[BE], 'I');
	cut(sc, BE);
	check_split_invariance(sc, &cfg, true, &c, &st);
	assert_int_equal(c.nq, 1);
	assert_true(c.q[0].r.empty);
	assert_int_equal(st.encrypted, 0);
	assert_int_equal(c.ev[SESSION_EV_ENCRYPTED], 0);
	col_free(&c);
	script_free(sc);
	free(sc);
}

/* SSLRequest answered 'S': counted as encrypted, nothing decoded after. */
static void test_ssl_encrypted(void **state)
{
	struct script *sc = calloc(1, sizeof(*sc));
	struct session_config cfg;
	struct session_stats st;
	struct col c = {0};
	int i;

	(void)state;
	session_config_default(&cfg);
	m_code(&sc->s[FE], 80877103);
	cut(sc, FE);
	put8(&sc->s[BE], 'S');
	cut(sc, BE);
	put(&sc->s[FE], "\x16\x03\x01\x00\x20", 5);
	for (i = 0; i < 10; i++)
		m_str(&sc->s[FE], 'Q', "SELECT 1"); /* would be requests if decoded */
	cut(sc, FE);
	for (i = 0; i < 10; i++) {
		m_empty(&sc->s[BE], 'I');
		m_ready(&sc->s[BE], 'I');
	}
	cut(sc, BE);
	gap(sc, BE);
	check_split_invariance(sc, &cfg, true, &c, &st);
	assert_int_equal(c.nq, 0);
	assert_int_equal(c.ev[SESSION_EV_ENCRYPTED], 1);
	assert_int_equal(st.encrypted, 1);
	assert_non_null(strstr(c.log, "END state=3"));
	col_free(&c);
	script_free(sc);
	free(sc);
}

/* replication=database (or true/on/1/yes): counted, never decoded as queries. */
static void test_replication(void **state)
{
	static const char *const on[] = {"database", "true", "on", "1", "yes", "TRUE"};
	static const char *const off[] = {"false", "off", "0", "no", "f", "OFF"};
	size_t i;

	(void)state;
	for (i = 0; i < 12; i++) {
		const char *v = i < 6 ? on[i] : off[i - 6];
		const char *kv[] = {"user", "rep", "replication", v, NULL};
		struct script *sc = calloc(1, sizeof(*sc));
		struct session_config cfg;
		struct session_stats st;
		struct col c = {0};

		session_config_default(&cfg);
		startup(sc, kv);
		simple(sc, "IDENTIFY_SYSTEM");
		m_rowdesc(&sc->s[BE], 4);
		m_str(&sc->s[BE], 'C', "IDENTIFY_SYSTEM");
		m_ready(&sc->s[BE], 'I');
		cut(sc, BE);
		if (i == 0)
			check_split_invariance(sc, &cfg, true, &c, &st);
		else
			run(sc, &cfg, true, WHOLE, 0, 0, &c, &st);
		if (i < 6) {
			assert_int_equal(c.nq, 0);
			assert_int_equal(c.ev[SESSION_EV_REPLICATION], 1);
			assert_int_equal(st.replication, 1);
			assert_non_null(strstr(c.log, "END state=4"));
		} else {
			assert_int_equal(c.nq, 1);
			assert_int_equal(st.replication, 0);
		}
		col_free(&c);
		script_free(sc);
		free(sc);
	}
}

static void test_cancel(void **state)
{
	struct script *sc = calloc(1, sizeof(*sc));
	struct session_config cfg;
	struct session_stats st;
	struct col c = {0};

	(void)state;
	session_config_default(&cfg);
	put32(&sc->s[FE], 16);
	put32(&sc->s[FE], 80877102);
	put32(&sc->s[FE], 4242);
	put32(&sc->s[FE], 0xdeadbeef);
	cut(sc, FE);
	check_split_invariance(sc, &cfg, true, &c, &st);
	assert_int_equal(c.nq, 0);
	assert_non_null(strstr(c.log, "END state=5"));
	assert_int_equal(st.requests + st.encrypted + st.replication + st.resyncs, 0);
	assert_int_equal(c.ev[SESSION_EV_IDENTIFIED], 0);
	col_free(&c);
	script_free(sc);
	free(sc);
}

/* A gap abandons what was in flight; the session resynchronises at a quiet point. */
static void test_gap(void **state)
{
	static const char *const one[] = {"1"};
	struct session_config cfg;
	int dir;

	(void)state;
	session_config_default(&cfg);
	for (dir = 0; dir < 2; dir++) {
		struct script *sc = calloc(1, sizeof(*sc));
		struct session_stats st;
		struct col c = {0};
		uint64_t ts_q3;

		startup(sc, startup_kv);
		simple(sc, "SELECT 1"); /* in flight when the gap hits */
		if (dir == FE) {
			gap(sc, FE); /* the client's next bytes are lost ... */
			m_rowdesc(&sc->s[BE], 1);
			m_datarow(&sc->s[BE], 1, one);
			m_str(&sc->s[BE], 'C', "SELECT 1");
			m_ready(&sc->s[BE], 'I');
			cut(sc, BE);
			m_str(&sc->s[BE], 'C', "SELECT 1"); /* ... the answer to a lost query */
			m_ready(&sc->s[BE], 'I');
			cut(sc, BE);
		} else {
			m_rowdesc(&sc->s[BE], 1);
			cut(sc, BE);
			gap(sc, BE);
			put(&sc->s[BE], "\x00\x00\x00\x01", 4); /* the middle of a DataRow */
			m_str(&sc->s[BE], 'C', "SELECT 1");
			m_ready(&sc->s[BE], 'I');
			cut(sc, BE);
		}
		simple(sc, "SELECT 3");
		ts_q3 = last_ts(sc);
		m_str(&sc->s[BE], 'C', "SELECT 0");
		m_ready(&sc->s[BE], 'I');
		cut(sc, BE);
		check_split_invariance(sc, &cfg, true, &c, &st);
		if (getenv("SESSION_DEBUG"))
			fprintf(stderr, "%s", c.log);
		assert_int_equal(st.abandoned, 1);
		assert_int_equal(c.nq, 1);
		assert_string_equal(c.q[0].text, "SELECT 3");
		assert_int_equal(c.q[0].r.ts_start, ts_q3);
		assert_string_equal(c.q[0].db, "app"); /* still known after a gap */
		assert_int_equal(c.ev[SESSION_EV_RESYNC], 1);
		assert_int_equal(st.resyncs, 1);
		assert_non_null(strstr(c.log, "END state=1"));
		col_free(&c);
		script_free(sc);
		free(sc);
	}
}

/* Requests still in flight when the session ends are abandoned, not reported. */
static void test_free_abandons(void **state)
{
	struct session_config cfg;
	struct session_stats st = {0};
	struct col c = {0};
	struct session *s;
	struct bb b = {0};

	(void)state;
	session_config_default(&cfg);
	s = session_new(&cfg, &handler, &c, &st, 1, true, 1);
	m_startup(&b, startup_kv);
	m_str(&b, 'Q', "SELECT pg_sleep(10)");
	session_feed(s, FE, b.p, b.len, 2);
	session_free(s, 3);
	assert_int_equal(c.nq, 0);
	assert_int_equal(st.abandoned, 1);
	assert_int_equal(st.sessions_active, 0);
	assert_int_equal(c.ev[SESSION_EV_CLOSE], 1);
	col_free(&c);
	free(b.p);
}

/* An answer nothing asked for: counted, the session realigns at the next quiet point. */
static void test_unmatched(void **state)
{
	struct script *sc = calloc(1, sizeof(*sc));
	struct session_config cfg;
	struct session_stats st;
	struct col c = {0};

	(void)state;
	session_config_default(&cfg);
	startup(sc, startup_kv);
	simple(sc, "SELECT 1");
	m_empty(&sc->s[BE], '2'); /* BindComplete for a Query: nothing matches */
	m_str(&sc->s[BE], 'C', "SELECT 0");
	m_ready(&sc->s[BE], 'I');
	cut(sc, BE);
	simple(sc, "SELECT 2");
	m_str(&sc->s[BE], 'C', "SELECT 0");
	m_ready(&sc->s[BE], 'I');
	cut(sc, BE);
	m_empty(&sc->s[BE], '1'); /* with nothing in flight */
	cut(sc, BE);
	simple(sc, "SELECT 3");
	m_str(&sc->s[BE], 'C', "SELECT 0");
	m_ready(&sc->s[BE], 'I');
	cut(sc, BE);
	check_split_invariance(sc, &cfg, true, &c, &st);
	if (getenv("SESSION_DEBUG"))
		fprintf(stderr, "%s", c.log);
	assert_int_equal(st.unmatched_responses, 2);
	assert_int_equal(st.abandoned, 1);
	assert_int_equal(c.nq, 1);
	assert_string_equal(c.q[0].text, "SELECT 2");
	assert_int_equal(st.resyncs, 1); /* realigned before SELECT 2 only: SELECT 3's answer
					  * follows an unexpected message, no Z before it */
	col_free(&c);
	script_free(sc);
	free(sc);
}

/* Caps: requests in flight, statements, portals, COPY bytes. */
static void test_caps(void **state)
{
	struct script *sc = calloc(1, sizeof(*sc));
	struct session_config cfg;
	struct session_stats st;
	struct col c = {0};
	struct bb *f = &sc->s[FE], *b = &sc->s[BE];
	int i;

	(void)state;
	session_config_default(&cfg);
	cfg.max_inflight = 2;
	cfg.max_statements = 2;
	cfg.max_portals = 1;
	cfg.max_copy_bytes = 8;
	startup(sc, startup_kv);
	/* three Executes in flight: the third is not timed, matching goes on */
	for (i = 0; i < 3; i++) {
		m_bind(f, "", "", 0, NULL, 0, NULL, NULL, 0, NULL);
		m_execute(f, "", 0);
	}
	m_empty(f, 'S');
	cut(sc, FE);
	for (i = 0; i < 3; i++) {
		m_empty(b, '2');
		m_str(b, 'C', "UPDATE 1");
	}
	m_ready(b, 'I');
	cut(sc, BE);
	/* three named statements: the least recently used is forgotten */
	m_parse(f, "s1", "SELECT 1", 0, NULL);
	m_parse(f, "s2", "SELECT 2", 0, NULL);
	m_parse(f, "s3", "SELECT 3", 0, NULL);
	m_bind(f, "", "s1", 0, NULL, 0, NULL, NULL, 0, NULL);
	m_execute(f, "", 0);
	m_bind(f, "", "s3", 0, NULL, 0, NULL, NULL, 0, NULL);
	m_execute(f, "", 0);
	m_empty(f, 'S');
	cut(sc, FE);
	m_empty(b, '1');
	m_empty(b, '1');
	m_empty(b, '1');
	m_empty(b, '2');
	m_str(b, 'C', "SELECT 1");
	m_empty(b, '2');
	m_str(b, 'C', "SELECT 1");
	m_ready(b, 'I');
	cut(sc, BE);
	/* two named portals */
	simple(sc, "BEGIN");
	m_str(b, 'C', "BEGIN");
	m_ready(b, 'T');
	cut(sc, BE);
	m_bind(f, "c1", "s3", 0, NULL, 0, NULL, NULL, 0, NULL);
	m_bind(f, "c2", "s3", 0, NULL, 0, NULL, NULL, 0, NULL);
	m_execute(f, "c1", 0);
	m_empty(f, 'S');
	cut(sc, FE);
	m_empty(b, '2');
	m_empty(b, '2');
	m_error(b, 'E', "34000", "portal \"c1\" does not exist");
	m_ready(b, 'E');
	cut(sc, BE);
	simple(sc, "ROLLBACK");
	m_str(b, 'C', "ROLLBACK");
	m_ready(b, 'I');
	cut(sc, BE);
	/* COPY beyond max_copy_bytes */
	simple(sc, "COPY t FROM STDIN");
	copy_in_response(b);
	cut(sc, BE);
	copy_data(f, "1\tfoo\n");
	copy_data(f, "2\tbar\n");
	m_empty(f, 'c');
	cut(sc, FE);
	m_str(b, 'C', "COPY 2");
	m_ready(b, 'I');
	cut(sc, BE);
	check_split_invariance(sc, &cfg, true, &c, &st);
	assert_int_equal(st.inflight_overflow, 1);
	assert_int_equal(st.statements_evicted, 1);
	assert_int_equal(st.portals_evicted, 1);
	assert_int_equal(st.copy_truncated, 1);
	assert_int_equal(st.unmatched_responses, 0);
	assert_int_equal(c.nq, 2 + 2 + 1 + 1 + 1 + 1);
	assert_null(c.q[2].text); /* s1 was evicted */
	assert_string_equal(c.q[3].text, "SELECT 3");
	assert_string_equal(c.q[5].portal, "c1");
	assert_null(c.q[5].text); /* c1 was evicted by c2: unknown portal */
	assert_null(c.q[5].stmt_name);
	assert_int_equal(c.q[7].r.copy_len, 8);
	assert_true(c.q[7].r.copy_truncated);
	assert_memory_equal(c.q[7].copy, "1\tfoo\n2\t", 8);
	col_free(&c);
	script_free(sc);
	free(sc);
}

/* Malformed client messages: counted; the server's answers still line up. */
/* A Query, then bytes that are no message, in one write (nothing lost before them): the
 * Query is still answered by the server, in order, and counted; then the server ends the
 * connection. Later client bytes found to be messages again give alignment up. */
static void test_garbage_after_query(void **state)
{
	static const uint8_t junk[] = {0xff, 0x7f, 0xff, 0xff, 0xff, 'j', 'u', 'n', 'k'};
	static const char *const one[] = {"1"};
	struct script *sc = calloc(1, sizeof(*sc));
	struct session_config cfg;
	struct session_stats st;
	struct col c = {0};
	struct bb *f = &sc->s[FE], *b = &sc->s[BE];

	(void)state;
	session_config_default(&cfg);
	startup(sc, startup_kv);
	m_str(f, 'Q', "SELECT 1");
	put(f, junk, sizeof(junk));
	cut(sc, FE);
	m_rowdesc(b, 1);
	m_datarow(b, 1, one);
	m_str(b, 'C', "SELECT 1");
	m_ready(b, 'I');
	m_error(b, 'E', "08P01", "invalid frontend message type 255");
	cut(sc, BE);
	check_split_invariance(sc, &cfg, true, &c, &st);
	assert_int_equal(c.nq, 1);
	assert_false(c.q[0].r.error);
	assert_string_equal(c.q[0].r.tag, "SELECT 1");
	assert_int_equal(st.abandoned, 0);
	col_free(&c);
	script_free(sc);
	free(sc);
}

static void test_malformed(void **state)
{
	struct script *sc = calloc(1, sizeof(*sc));
	struct session_config cfg;
	struct session_stats st;
	struct col c = {0};
	struct bb *f = &sc->s[FE], *b = &sc->s[BE];

	(void)state;
	session_config_default(&cfg);
	startup(sc, startup_kv);
	msg_begin(f, 'B'); /* claims 5 parameters, carries one */
	puts0(f, "");
	puts0(f, "");
	put16(f, 0);
	put16(f, 5);
	put32(f, 1);
	put8(f, 'x');
	put16(f, 0);
	msg_end(f);
	m_execute(f, "", 0);
	m_empty(f, 'S');
	cut(sc, FE);
	m_error(b, 'E', "08P01", "insufficient data left in message");
	m_ready(b, 'I');
	cut(sc, BE);
	simple(sc, "SELECT 1");
	m_error(b, 'E', "XXXXXX", "a bad SQLSTATE");
	m_ready(b, 'I');
	cut(sc, BE);
	check_split_invariance(sc, &cfg, true, &c, &st);
	assert_int_equal(st.protocol_errors, 2);
	assert_int_equal(c.nq, 2);
	assert_true(c.q[0].r.error);
	assert_string_equal(c.q[0].r.sqlstate, "08P01");
	assert_true(c.q[1].r.error);
	assert_string_equal(c.q[1].r.sqlstate, "");
	col_free(&c);
	script_free(sc);
	free(sc);
}

/* A Query and a FunctionCall sent in the middle of a pipeline that fails: the server
 * ignores both up to the Sync; they are abandoned, not reported, not leaked. */
static void test_error_skips_query(void **state)
{
	struct script *sc = calloc(1, sizeof(*sc));
	struct session_config cfg;
	struct session_stats st;
	struct col c = {0};
	struct bb *f = &sc->s[FE], *b = &sc->s[BE];

	(void)state;
	session_config_default(&cfg);
	startup(sc, startup_kv);
	m_parse(f, "", "SELECT 1/0", 0, NULL);
	m_bind(f, "", "", 0, NULL, 0, NULL, NULL, 0, NULL);
	m_execute(f, "", 0);
	m_str(f, 'Q', "SELECT 2");
	msg_begin(f, 'F');
	put32(f, 1598);
	put16(f, 0);
	put16(f, 0);
	put16(f, 0);
	msg_end(f);
	m_empty(f, 'S');
	cut(sc, FE);
	m_empty(b, '1');
	m_empty(b, '2');
	m_error(b, 'E', "22012", "division by zero");
	m_ready(b, 'I');
	cut(sc, BE);
	simple(sc, "SELECT 3");
	m_str(b, 'C', "SELECT 0");
	m_ready(b, 'I');
	cut(sc, BE);
	check_split_invariance(sc, &cfg, true, &c, &st);
	assert_int_equal(c.nq, 2);
	assert_string_equal(c.q[0].r.sqlstate, "22012");
	assert_string_equal(c.q[1].text, "SELECT 3");
	assert_int_equal(st.abandoned, 2);
	assert_int_equal(st.unmatched_responses, 0);
	col_free(&c);
	script_free(sc);
	free(sc);
}

/* ---- sessions first seen mid-stream ------------------------------------------------------------
 */

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

struct expected {
	enum session_req_kind kind;
	char text[128]; /* "" for a statement prepared before the conversation */
	uint64_t ts_start, ts_end;
	bool error;
	int chunk; /* index of the client chunk that starts it */
};

static const char *const prepared_text = "SELECT abalance FROM accounts WHERE aid = $1";

/* One exchange of a pgbench-like client that also sends simple queries and errors. */
static void gen_exchange(struct script *sc, struct rng *g, struct expected *ex, int *nex)
{
	struct bb *f = &sc->s[FE], *b = &sc->s[BE];
	static const int16_t fmt1[] = {1};
	static const uint32_t oid[] = {23};
	char text[128], val[8], tag[32];
	const char *vals[1] = {val};
	const char *row[1] = {"Z\x01"};
	int32_t len[1] = {4};
	int kind = (int)rnd_below(g, 5), i, nrows = (int)rnd_below(g, 4), fc;

	for (i = 0; i < 4; i++)
		val[i] = (char)rnd(g);
	snprintf(text, sizeof(text), "SELECT %u FROM t%u", rnd_below(g, 1000), rnd_below(g, 9));
	snprintf(tag, sizeof(tag), "SELECT %d", nrows);
	switch (kind) {
	case 0:
		m_str(f, 'Q', text);
		break;
	case 1:
		m_parse(f, "", text, 1, oid);
		m_bind(f, "", "", 1, fmt1, 1, len, vals, 1, fmt1);
		m_describe(f, 'P', "");
		m_execute(f, "", 0);
		m_empty(f, 'S');
		break;
	case 2:
		m_bind(f, "", "P0_1", 1, fmt1, 1, len, vals, 1, fmt1);
		m_execute(f, "", 0);
		m_empty(f, 'S');
		break;
	case 3:
		m_bind(f, "", "P0_1", 1, fmt1, 1, len, vals, 1, fmt1);
		m_execute(f, "", 0);
		m_bind(f, "", "P0_1", 1, fmt1, 1, len, vals, 1, fmt1);
		m_execute(f, "", 0);
		m_empty(f, 'S');
		break;
	default:
		m_str(f, 'Q', "SELECT * FROM missing");
		break;
	}
	cut(sc, FE);
	fc = sc->n - 1;
	if (kind == 1) {
		m_empty(b, '1');
		m_empty(b, '2');
		m_rowdesc(b, 1);
	}
	if (kind == 2 || kind == 3)
		m_empty(b, '2');
	if (kind == 0)
		m_rowdesc(b, 1);
	if (kind != 4) {
		for (i = 0; i < nrows; i++)
			m_datarow(b, 1, row);
		m_str(b, 'C', tag);
	}
	if (kind == 3) {
		m_empty(b, '2');
		m_str(b, 'C', "SELECT 0");
	}
	if (kind == 4)
		m_error(b, 'E', "42P01", "relation does not exist");
	m_ready(b, 'I');
	cut(sc, BE);
	for (i = 0; i < (kind == 3 ? 2 : 1); i++) {
		struct expected *e = &ex[(*nex)++];

		e->kind = kind == 0 || kind == 4 ? SESSION_REQ_QUERY : SESSION_REQ_EXECUTE;
		snprintf(e->text, sizeof(e->text), "%s",
			 kind == 4   ? "SELECT * FROM missing"
			 : kind >= 2 ? prepared_text
				     : text);
		e->ts_start = sc->ch[fc].ts;
		e->ts_end = last_ts(sc);
		e->error = kind == 4;
		e->chunk = fc;
	}
}

/* Feeds sc from chunk k (its first `skip` bytes dropped) to a session that missed the start;
 * checks the requests it reports against the expected ones. */
static void midstream_from(const struct script *sc, int k, size_t skip, const struct expected *ex,
			   int nex, int *first_out)
{
	struct session_config cfg;
	struct session_stats st = {0};
	struct col c = {0};
	struct session *s;
	int i, first = -1;

	session_config_default(&cfg);
	s = session_new(&cfg, &handler, &c, &st, 1, false, sc->ch[k].ts);
	assert_string_equal(session_info(s)->database, SESSION_UNKNOWN);
	assert_true(session_info(s)->resynced);
	for (i = k; i < sc->n; i++) {
		const struct chunk *ch = &sc->ch[i];
		size_t sk = i == k ? skip : 0;

		session_feed(s, ch->dir, sc->s[ch->dir].p + ch->off + sk, ch->len - sk, ch->ts);
	}
	session_free(s, 0);
	for (i = 0; i < c.nq; i++) {
		const struct reqrec *q = &c.q[i];
		const struct expected *e;

		if (first < 0) {
			for (first = 0; first < nex; first++)
				if (ex[first].ts_start == q->r.ts_start)
					break;
			assert_true(first < nex);
			/* the first request of that batch, unless pipelined ones share the ts */
		}
		assert_true(first + i < nex);
		e = &ex[first + i];
		if (e->ts_start != q->r.ts_start || e->ts_end != q->r.ts_end ||
		    e->kind != q->r.kind || e->error != q->r.error ||
		    (q->text && strcmp(q->text, e->text))) {
			fprintf(stderr,
				"start chunk %d+%zu: request %d is %s %llu..%llu, expected %s "
				"%llu..%llu\n",
				k, skip, i, q->text ? q->text : "(null)",
				(unsigned long long)q->r.ts_start, (unsigned long long)q->r.ts_end,
				e->text, (unsigned long long)e->ts_start,
				(unsigned long long)e->ts_end);
			fail();
		}
		assert_string_equal(q->db, SESSION_UNKNOWN);
	}
	assert_int_equal(st.unmatched_responses, 0);
	assert_true(st.resyncs <= 1);
	if (c.nq)
		assert_int_equal(first + c.nq, nex);
	*first_out = first;
	col_free(&c);
}

static void test_midstream_random(void **state)
{
	struct script *sc = calloc(1, sizeof(*sc));
	static struct expected ex[2048];
	struct rng g = {0x243f6a8885a308d3ULL};
	int nex = 0, trial;

	(void)state;
	/* the prepared statement is created at the start (usually missed) */
	m_parse(&sc->s[FE], "P0_1", prepared_text, 0, NULL);
	m_empty(&sc->s[FE], 'S');
	cut(sc, FE);
	m_empty(&sc->s[BE], '1');
	m_ready(&sc->s[BE], 'I');
	cut(sc, BE);
	while (sc->n < 600)
		gen_exchange(sc, &g, ex, &nex);
	for (trial = 0; trial < 300; trial++) {
		int k = (int)rnd_below(&g, (uint32_t)sc->n - 40), first, next = nex, i;
		size_t skip = rnd_below(&g, (uint32_t)sc->ch[k].len);

		midstream_from(sc, k, skip, ex, nex, &first);
		for (i = 0; i < nex; i++)
			if (ex[i].chunk > k) {
				next = i;
				break;
			}
		/* aligned within a few exchanges */
		if (first < 0 || first - next > 6) {
			fprintf(stderr, "start chunk %d: first request %d, next possible %d\n", k,
				first, next);
			fail();
		}
	}
	script_free(sc);
	free(sc);
}

/* A session seen mid-stream, later identified by the shell (pg_stat_activity). */
static void test_midstream_identify(void **state)
{
	struct session_config cfg;
	struct session_stats st = {0};
	struct col c = {0};
	struct session *s;
	struct bb f = {0}, b = {0};

	(void)state;
	session_config_default(&cfg);
	s = session_new(&cfg, &handler, &c, &st, 1, false, 1);
	assert_int_equal(session_info(s)->state, SESSION_HUNTING);
	m_str(&f, 'Q', "SELECT 1");
	m_str(&b, 'C', "SELECT 1");
	m_ready(&b, 'I');
	/* the client's first bytes, decoded from the first byte while the server had sent
	 * nothing: a request, confirmed by its answer decoded from the server's first byte */
	session_feed(s, FE, f.p, f.len, 10);
	session_feed(s, BE, b.p, b.len, 20);
	assert_int_equal(c.nq, 1);
	assert_string_equal(c.q[0].db, SESSION_UNKNOWN);
	assert_int_equal(c.q[0].r.ts_start, 10);
	assert_int_equal(c.q[0].r.ts_end, 20);
	assert_int_equal(st.unmatched_responses, 0);
	session_identify(s, "shop", "app_user", 25);
	assert_int_equal(c.ev[SESSION_EV_IDENTIFIED], 1);
	session_identify(s, "other", "x", 26); /* only once */
	session_feed(s, FE, f.p, f.len, 30);
	session_feed(s, BE, b.p, b.len, 40);
	assert_int_equal(c.nq, 2);
	assert_string_equal(c.q[1].db, "shop");
	assert_int_equal(c.q[1].r.ts_start, 30);
	assert_int_equal(c.q[1].r.ts_end, 40);
	assert_int_equal(c.ev[SESSION_EV_RESYNC], 1);
	assert_int_equal(session_info(s)->state, SESSION_READY);
	assert_string_equal(session_info(s)->user, "app_user");
	session_free(s, 50);
	assert_int_equal(st.resyncs, 1);
	assert_int_equal(st.wire.resyncs, 2);
	col_free(&c);
	free(f.p);
	free(b.p);
}

/* Feeds bytes built by fn-style code: one chunk. */
static void feed_bb(struct session *s, enum pgwire_dir dir, struct bb *b, uint64_t ts)
{
	session_feed(s, dir, b->p, b->len, ts);
	b->len = 0;
}

static void answer(struct session *s, struct bb *b, uint64_t ts)
{
	m_str(b, 'C', "SELECT 0");
	m_ready(b, 'I');
	feed_bb(s, BE, b, ts);
}

/*
 * Each guard of the alignment rule, with a conversation that would pair a request with
 * another one's answer without it. A session seen mid-stream; only the last query may be
 * reported, with its own timings.
 */
static void test_alignment_guards(void **state)
{
	struct session_config cfg;
	int k;

	(void)state;
	session_config_default(&cfg);
	for (k = 0; k < 4; k++) {
		struct session_stats st = {0};
		struct col c = {0};
		struct bb f = {0}, b = {0};
		struct session *s = session_new(&cfg, &handler, &c, &st, 1, false, 1);

		switch (k) {
		case 0:
			/* capture order differs from time order: the answer (20) is fed before the
			 * query it answers (15), which must not be paired with a later answer, nor
			 * keep the session from aligning afterwards */
			answer(s, &b, 20);
			m_str(&f, 'Q', "SELECT 15");
			feed_bb(s, FE, &f, 15);
			m_str(&f, 'Q', "SELECT 25");
			feed_bb(s, FE, &f, 25);
			answer(s, &b, 30);
			break;
		case 1:
			/* the resync chunk starts with the tail of a query sent with the next two:
			 * its answer is still owed */
			answer(s, &b, 5);
			put(&f, "ECT 1", 6);
			m_str(&f, 'Q', "SELECT 2");
			m_str(&f, 'Q', "SELECT 3");
			feed_bb(s, FE, &f, 10);
			answer(s, &b, 20);
			answer(s, &b, 21);
			answer(s, &b, 22);
			break;
		case 2:
			/* two queries seen before the first answer: one answer still owed when
			 * the third is sent */
			m_str(&f, 'Q', "SELECT 10");
			feed_bb(s, FE, &f, 10);
			m_str(&f, 'Q', "SELECT 11");
			feed_bb(s, FE, &f, 11);
			answer(s, &b, 20);
			m_str(&f, 'Q', "SELECT 25");
			feed_bb(s, FE, &f, 25);
			answer(s, &b, 30);
			answer(s, &b, 35);
			break;
		case 3:
			/* an Execute in the middle of a batch is no place to start */
			m_parse(&f, "", "SELECT 10", 0, NULL);
			m_bind(&f, "", "", 0, NULL, 0, NULL, NULL, 0, NULL);
			feed_bb(s, FE, &f, 10);
			m_ready(&b, 'I');
			feed_bb(s, BE, &b, 12);
			m_execute(&f, "", 0);
			m_empty(&f, 'S');
			feed_bb(s, FE, &f, 15);
			m_empty(&b, '1');
			m_empty(&b, '2');
			answer(s, &b, 20);
			break;
		}
		m_str(&f, 'Q', "SELECT 40");
		feed_bb(s, FE, &f, 40);
		answer(s, &b, 45);
		session_free(s, 50);
		/* SELECT 40 is always paired right; in case 0, SELECT 25 may be too (it is, in
		 * fact: 15 was answered at 20, 25 at 30), but never SELECT 15 */
		if (c.nq < 1 || c.q[c.nq - 1].r.ts_start != 40 || c.q[c.nq - 1].r.ts_end != 45 ||
		    c.nq > (k == 0 ? 2 : 1) ||
		    (c.nq == 2 && (c.q[0].r.ts_start != 25 || c.q[0].r.ts_end != 30))) {
			fprintf(stderr, "case %d:\n%s", k, c.log);
			fail();
		}
		assert_int_equal(st.unmatched_responses, 0);
		assert_int_equal(st.resyncs, 1);
		col_free(&c);
		free(f.p);
		free(b.p);
	}
}

/* ---- statements prepared before capture ------------------------------------------------------ */

/* An Execute of named statement stmt through the unnamed portal, one Sync group, sent at
 * t and answered at t + 10 (no answer when answered is false). */
static void run_named(struct session *s, struct bb *f, struct bb *b, const char *stmt, uint64_t t,
		      bool answered)
{
	static const int32_t len[] = {1};
	static const char *const val[] = {"7"};

	m_bind(f, "", stmt, 0, NULL, 1, len, val, 0, NULL);
	m_execute(f, "", 0);
	m_empty(f, 'S');
	feed_bb(s, FE, f, t);
	if (!answered)
		return;
	m_empty(b, '2');
	m_str(b, 'C', "INSERT 0 1");
	m_ready(b, 'I');
	feed_bb(s, BE, b, t + 10);
}

/*
 * A session caught mid-way whose first bytes are a client batch while the server had
 * sent nothing: that batch is a request when the server's first bytes decode as its
 * whole answer (an Execute's ReadyForQuery status before it is unknown: txn_before 0). It
 * is not (abandoned, no unmatched answer counted) when the server's first bytes are the
 * middle of a message, when the client sends another batch before the answer (a pipeline
 * may have been under way), or when the answer does not fit it. A later query counts
 * either way, with its own timings.
 */
static void test_first_batch_of_caught_session(void **state)
{
	struct session_config cfg;
	int k;

	(void)state;
	session_config_default(&cfg);
	for (k = 0; k < 5; k++) {
		struct session_stats st = {0};
		struct col c = {0};
		struct bb f = {0}, b = {0};
		struct session *s = session_new(&cfg, &handler, &c, &st, 1, false, 1);
		int first = k <= 1 ? 1 : 0;

		switch (k) {
		case 0: /* a named statement prepared before capture */
			run_named(s, &f, &b, "S_1", 10, true);
			break;
		case 1:
			m_str(&f, 'Q', "SELECT 1");
			feed_bb(s, FE, &f, 10);
			answer(s, &b, 20);
			break;
		case 2: /* the server's first bytes: the middle of a DataRow */
			m_str(&f, 'Q', "SELECT 1");
			feed_bb(s, FE, &f, 10);
			put(&b, "\x00\x00\x00\x01", 4);
			answer(s, &b, 20);
			break;
		case 3: /* two batches before the first answer */
			m_str(&f, 'Q', "SELECT 1");
			feed_bb(s, FE, &f, 10);
			m_str(&f, 'Q', "SELECT 2");
			feed_bb(s, FE, &f, 12);
			answer(s, &b, 20);
			answer(s, &b, 30);
			break;
		case 4: /* an answer that is not a Query's (ParseComplete first) */
			m_str(&f, 'Q', "SELECT 1");
			feed_bb(s, FE, &f, 10);
			m_empty(&b, '1');
			answer(s, &b, 20);
			break;
		}
		m_str(&f, 'Q', "SELECT 40");
		feed_bb(s, FE, &f, 40);
		answer(s, &b, 45);
		session_free(s, 50);
		if (c.nq != first + 1 || c.q[c.nq - 1].r.ts_start != 40 ||
		    c.q[c.nq - 1].r.ts_end != 45 ||
		    (first && (c.q[0].r.ts_start != 10 || c.q[0].r.txn_before != 0))) {
			fprintf(stderr, "case %d:\n%s", k, c.log);
			fail();
		}
		if (k == 0)
			assert_int_equal(c.q[0].r.kind, SESSION_REQ_EXECUTE);
		assert_int_equal(st.unmatched_responses, 0);
		assert_int_equal(st.abandoned, k >= 2 ? 1 : 0);
		assert_int_equal(st.resyncs, 1);
		col_free(&c);
		free(f.p);
		free(b.p);
	}
}

/* A session seen mid-stream (aligned at 10, its first batch, once its answer at 20
 * confirmed it), with or without track_activity. */
static struct session *midstream(struct session_config *cfg, struct col *c,
				 struct session_stats *st, struct bb *f, struct bb *b)
{
	struct session *s = session_new(cfg, &handler, c, st, 1, false, 1);

	m_str(f, 'Q', "SELECT 1");
	feed_bb(s, FE, f, 10);
	answer(s, b, 20);
	m_str(f, 'Q', "SELECT 1");
	feed_bb(s, FE, f, 30);
	answer(s, b, 40);
	assert_int_equal(c->ev[SESSION_EV_RESYNC], 1);
	return s;
}

/*
 * What session_attribute may say: the one unknown statement the server may have been
 * running in a window, never when another message (a Query, another statement, one
 * still unanswered) may have set the text then, nor for times it no longer knows.
 */
static void test_attribute(void **state)
{
	static const char text[] = "INSERT INTO t VALUES ($1)";
	struct session_config cfg;
	struct session_stats st = {0};
	struct col c = {0};
	struct bb f = {0}, b = {0};
	struct session *s;
	int i;

	(void)state;
	session_config_default(&cfg);
	cfg.track_activity = true;
	s = midstream(&cfg, &c, &st, &f, &b);

	run_named(s, &f, &b, "S_1", 100, true); /* processed within [100, 110] */
	assert_int_equal(c.nq, 3);
	assert_null(c.q[2].text);
	assert_string_equal(c.q[2].stmt_name, "S_1");
	assert_string_equal(session_attribute(s, 101, 105), "S_1");
	assert_string_equal(session_attribute(s, 95, 115), "S_1");
	assert_null(session_attribute(s, 111, 115)); /* nothing ran then */
	assert_null(session_attribute(s, 25, 35));   /* a Query ran then */
	assert_null(session_attribute(s, 105, 101));

	/* a Query right after: a window reaching it is not S_1's alone */
	m_str(&f, 'Q', "SELECT 2");
	feed_bb(s, FE, &f, 112);
	answer(s, &b, 120);
	assert_null(session_attribute(s, 109, 113));
	assert_string_equal(session_attribute(s, 104, 106), "S_1");

	/* two unknown statements in one Sync group: either may have set the text */
	m_bind(&f, "", "S_1", 0, NULL, 0, NULL, NULL, 0, NULL);
	m_execute(&f, "", 0);
	m_bind(&f, "", "S_2", 0, NULL, 0, NULL, NULL, 0, NULL);
	m_execute(&f, "", 0);
	m_empty(&f, 'S');
	feed_bb(s, FE, &f, 200);
	m_empty(&b, '2');
	m_str(&b, 'C', "INSERT 0 1");
	m_empty(&b, '2');
	m_str(&b, 'C', "INSERT 0 1");
	m_ready(&b, 'I');
	feed_bb(s, BE, &b, 210);
	assert_null(session_attribute(s, 204, 206));
	/* the same statement twice in a group is one statement */
	m_bind(&f, "", "S_2", 0, NULL, 0, NULL, NULL, 0, NULL);
	m_execute(&f, "", 0);
	m_bind(&f, "", "S_2", 0, NULL, 0, NULL, NULL, 0, NULL);
	m_execute(&f, "", 0);
	m_empty(&f, 'S');
	feed_bb(s, FE, &f, 300);
	m_empty(&b, '2');
	m_str(&b, 'C', "INSERT 0 1");
	m_empty(&b, '2');
	m_str(&b, 'C', "INSERT 0 1");
	m_ready(&b, 'I');
	feed_bb(s, BE, &b, 310);
	assert_string_equal(session_attribute(s, 304, 306), "S_2");

	/* unanswered: processed any time since its capture */
	run_named(s, &f, &b, "S_3", 400, false);
	assert_string_equal(session_attribute(s, 405, 900), "S_3");
	assert_null(session_attribute(s, 305, 900)); /* S_2 too */
	m_str(&f, 'Q', "SELECT 3");		     /* pipelined behind it */
	feed_bb(s, FE, &f, 420);
	assert_null(session_attribute(s, 405, 900));
	assert_string_equal(session_attribute(s, 405, 415), "S_3");
	m_empty(&b, '2');
	m_str(&b, 'C', "INSERT 0 1");
	m_ready(&b, 'I');
	feed_bb(s, BE, &b, 430);
	answer(s, &b, 440);
	assert_string_equal(session_attribute(s, 405, 415), "S_3");

	/* defined: its text is known, what ran it no longer attributes */
	assert_true(session_define_statement(s, "S_1", text, strlen(text)));
	assert_false(session_define_statement(s, "S_1", "SELECT 0", 8)); /* never overwritten */
	assert_null(session_attribute(s, 101, 105));
	run_named(s, &f, &b, "S_1", 500, true);
	assert_non_null(c.q[c.nq - 1].text);
	assert_string_equal(c.q[c.nq - 1].text, text);
	assert_int_equal(c.q[c.nq - 1].r.text_len, strlen(text));
	assert_int_equal(c.q[c.nq - 1].r.n_param_types, 0);
	assert_int_equal(c.q[c.nq - 1].r.n_params, 1);
	assert_null(session_attribute(s, 501, 505)); /* a known statement ran */

	/* a real Parse is never overwritten, and makes its name known */
	m_parse(&f, "S_4", "SELECT $1", 0, NULL);
	m_empty(&f, 'S');
	feed_bb(s, FE, &f, 600);
	m_empty(&b, '1');
	m_ready(&b, 'I');
	feed_bb(s, BE, &b, 610);
	assert_false(session_define_statement(s, "S_4", text, strlen(text)));
	assert_false(session_define_statement(s, "", text, strlen(text)));

	/* forgotten: 64 later messages push S_3's out; the time is no longer covered */
	for (i = 0; i < SESSION_ACTIVITY_MAX; i++) {
		m_str(&f, 'Q', "SELECT 4");
		feed_bb(s, FE, &f, 1000 + 10 * (uint64_t)i);
		answer(s, &b, 1005 + 10 * (uint64_t)i);
	}
	assert_null(session_attribute(s, 405, 415));
	run_named(s, &f, &b, "S_3", 2000, true);
	assert_string_equal(session_attribute(s, 2001, 2002), "S_3");

	/* a gap: nothing can be placed until alignment comes back */
	session_gap(s, FE, 2100);
	assert_null(session_attribute(s, 2001, 2002));
	m_str(&f, 'Q', "SELECT 5"); /* realigns at the next batch */
	feed_bb(s, FE, &f, 2200);
	answer(s, &b, 2210);
	run_named(s, &f, &b, "S_3", 2300, true);
	assert_string_equal(session_attribute(s, 2301, 2302), "S_3");
	assert_null(session_attribute(s, 2199, 2302)); /* not since alignment */
	/* realigned at 2300 after the ReadyForQuery at 2210: what ran since is known */
	assert_string_equal(session_attribute(s, 2211, 2302), "S_3");

	session_free(s, 3000);
	assert_int_equal(st.unmatched_responses, 0);
	col_free(&c);
	free(f.p);
	free(b.p);
}

/* The bookkeeping the consumer uses (first report, lookup due), the limits of
 * session_define_statement, and a session without track_activity. */
static void test_define_limits(void **state)
{
	struct session_config cfg;
	struct session_stats st = {0};
	struct col c = {0};
	struct bb f = {0}, b = {0};
	struct session *s;
	char name[16];
	int i;

	(void)state;
	session_config_default(&cfg);
	cfg.wire.max_body = 64;
	cfg.max_statements = 4;
	s = midstream(&cfg, &c, &st, &f, &b);
	run_named(s, &f, &b, "S_1", 100, true);
	assert_null(session_attribute(s, 101, 105)); /* not tracked */
	assert_true(session_unknown_first(s, "S_1"));
	assert_false(session_unknown_first(s, "S_1"));
	assert_true(session_unknown_first(s, "S_2"));
	assert_false(session_unknown_first(s, ""));
	assert_true(session_unknown_due(s, "S_1", 1000, 100));
	assert_false(session_unknown_due(s, "S_1", 1050, 100));
	assert_true(session_unknown_due(s, "S_2", 1050, 100));
	assert_true(session_unknown_due(s, "S_1", 1100, 100));
	/* names beyond SESSION_UNKNOWN_NAMES push the least recently used out */
	for (i = 0; i < SESSION_UNKNOWN_NAMES; i++) {
		snprintf(name, sizeof(name), "N_%d", i);
		assert_true(session_unknown_first(s, name));
	}
	assert_true(session_unknown_first(s, "S_1")); /* forgotten, so reported again */

	assert_false(session_define_statement(s, "S_1",
					      "SELECT '0123456789012345678901234567890123"
					      "4567890123456789012345678901234'",
					      76)); /* over max_body */
	assert_false(session_define_statement(s, "S_1", "SELECT\0 1", 9));
	for (i = 0; i < 5; i++) { /* max_statements: the least recently used goes */
		snprintf(name, sizeof(name), "D_%d", i);
		assert_true(session_define_statement(s, name, "SELECT 1", 8));
	}
	assert_int_equal(st.statements_evicted, 1);
	assert_true(session_define_statement(s, "D_0", "SELECT 2", 8)); /* evicted: free */
	run_named(s, &f, &b, "D_4", 200, true);
	assert_string_equal(c.q[c.nq - 1].text, "SELECT 1");
	session_free(s, 300);

	cfg.max_statements = 0; /* remembers nothing */
	s = session_new(&cfg, &handler, &c, &st, 2, true, 1);
	assert_false(session_define_statement(s, "S_1", "SELECT 1", 8));
	session_free(s, 2);
	col_free(&c);
	free(f.p);
	free(b.p);
}

/* ---- throughput ------------------------------------------------------------------------------ */

static uint64_t bench_reqs;

static void on_request_count(void *ctx, struct session_info *s, const struct session_request *r)
{
	(void)ctx;
	(void)s;
	(void)r;
	bench_reqs++;
}

static double now_s(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

/* pgbench -M prepared -S through decoder + session. */
static void test_throughput(void **state)
{
	static const struct session_handler h = {.request = on_request_count};
	static const int16_t fmt[] = {1};
	static const int32_t len[] = {4};
	static const char *const val[] = {"\x00\x00\x01\x02"};
	static const char *const row[] = {"-2811"};
	const char *env = getenv("SESSION_BENCH");
	uint64_t target = env && *env == '1' ? 100ULL << 20 : 4ULL << 20;
	struct session_stats st = {0};
	struct bb f = {0}, b = {0}, init = {0}, initb = {0};
	struct session *s;
	uint64_t fed = 0, n = 0;
	double t0, dt;

	(void)state;
	m_startup(&init, startup_kv);
	m_parse(&init, "P0_1", "SELECT abalance FROM pgbench_accounts WHERE aid = $1", 0, NULL);
	m_empty(&init, 'S');
	msg_begin(&initb, 'R');
	put32(&initb, 0);
	msg_end(&initb);
	m_ready(&initb, 'I');
	m_empty(&initb, '1');
	m_ready(&initb, 'I');
	m_bind(&f, "", "P0_1", 1, fmt, 1, len, val, 1, fmt);
	m_execute(&f, "", 0);
	m_empty(&f, 'S');
	m_empty(&b, '2');
	m_datarow(&b, 1, row);
	m_str(&b, 'C', "SELECT 1");
	m_ready(&b, 'I');
	s = session_new(NULL, &h, NULL, &st, 1, true, 0);
	session_feed(s, FE, init.p, init.len, 0);
	session_feed(s, BE, initb.p, initb.len, 0);
	bench_reqs = 0;
	t0 = now_s();
	while (fed < target) {
		session_feed(s, FE, f.p, f.len, n);
		session_feed(s, BE, b.p, b.len, n + 1);
		fed += f.len + b.len;
		n++;
	}
	dt = now_s() - t0;
	assert_int_equal(bench_reqs, n);
	assert_int_equal(st.unmatched_responses, 0);
	if (env && *env == '1')
		printf("pgwire+session: %.1f MB in %.3f s: %.0f MB/s, %.2f M messages/s, "
		       "%.2f M requests/s (%.0f ns per request)\n",
		       (double)fed / 1e6, dt, (double)fed / 1e6 / dt, (double)n * 7 / 1e6 / dt,
		       (double)n / 1e6 / dt, dt * 1e9 / (double)n);
	session_free(s, 0);
	free(f.p);
	free(b.p);
	free(init.p);
	free(initb.p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_conversation),
	    cmocka_unit_test(test_startup),
	    cmocka_unit_test(test_ssl_refused),
	    cmocka_unit_test(test_ssl_encrypted),
	    cmocka_unit_test(test_replication),
	    cmocka_unit_test(test_cancel),
	    cmocka_unit_test(test_gap),
	    cmocka_unit_test(test_free_abandons),
	    cmocka_unit_test(test_unmatched),
	    cmocka_unit_test(test_caps),
	    cmocka_unit_test(test_malformed),
	    cmocka_unit_test(test_garbage_after_query),
	    cmocka_unit_test(test_error_skips_query),
	    cmocka_unit_test(test_midstream_random),
	    cmocka_unit_test(test_midstream_identify),
	    cmocka_unit_test(test_alignment_guards),
	    cmocka_unit_test(test_first_batch_of_caught_session),
	    cmocka_unit_test(test_attribute),
	    cmocka_unit_test(test_define_limits),
	    cmocka_unit_test(test_throughput),
	};

	if (getenv("SESSION_TEST"))
		cmocka_set_test_filter(getenv("SESSION_TEST"));
	return cmocka_run_group_tests(tests, NULL, NULL);
}
