// SPDX-License-Identifier: BSD-2-Clause
/* admin: the console's protocol core, byte for byte (startup, every command, errors,
 * protocol violations, input split anywhere, output back-pressure), and its shell on a
 * Unix socket (mode, stale and live socket files). */
#define _GNU_SOURCE /* memmem */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <cmocka.h>

#include "admin.h"
#include "buf.h"
#include "stats.h"

/* ---- building wire bytes (independently of admin.c's writers) ---- */

struct bytes {
	unsigned char d[1 << 16];
	size_t n;
};

static void b_raw(struct bytes *b, const void *p, size_t n)
{
	assert_true(b->n + n <= sizeof(b->d));
	memcpy(b->d + b->n, p, n);
	b->n += n;
}

static void b_u8(struct bytes *b, unsigned char v)
{
	b_raw(b, &v, 1);
}

static void b_u16(struct bytes *b, uint16_t v)
{
	v = htons(v);
	b_raw(b, &v, 2);
}

static void b_u32(struct bytes *b, uint32_t v)
{
	v = htonl(v);
	b_raw(b, &v, 4);
}

static void b_str(struct bytes *b, const char *s)
{
	b_raw(b, s, strlen(s) + 1);
}

/* Message framing: b_begin writes the type (0: none) and a length placeholder. */
static size_t b_begin(struct bytes *b, char type)
{
	size_t at;

	if (type)
		b_u8(b, (unsigned char)type);
	at = b->n;
	b_u32(b, 0);
	return at;
}

static void b_end(struct bytes *b, size_t at)
{
	uint32_t n = htonl((uint32_t)(b->n - at));

	memcpy(b->d + at, &n, 4);
}

static void b_startup(struct bytes *b, uint32_t code, const char *user, const char *db)
{
	size_t at = b_begin(b, 0);

	b_u32(b, code);
	if (user) {
		b_str(b, "user");
		b_str(b, user);
	}
	if (db) {
		b_str(b, "database");
		b_str(b, db);
	}
	b_u8(b, 0);
	b_end(b, at);
}

static void b_request(struct bytes *b, uint32_t code)
{
	b_u32(b, 8);
	b_u32(b, code);
}

static void b_query(struct bytes *b, const char *q)
{
	size_t at = b_begin(b, 'Q');

	b_str(b, q);
	b_end(b, at);
}

static void b_param(struct bytes *b, const char *k, const char *v)
{
	size_t at = b_begin(b, 'S');

	b_str(b, k);
	b_str(b, v);
	b_end(b, at);
}

/* RowDescription: names and type OIDs. */
static void b_rowdesc(struct bytes *b, size_t n, const char *const *names, const uint32_t *oids)
{
	size_t at = b_begin(b, 'T'), i;

	b_u16(b, (uint16_t)n);
	for (i = 0; i < n; i++) {
		b_str(b, names[i]);
		b_u32(b, 0);
		b_u16(b, 0);
		b_u32(b, oids[i]);
		b_u16(b, oids[i] == 25 ? 0xffff : 8);
		b_u32(b, 0xffffffff);
		b_u16(b, 0);
	}
	b_end(b, at);
}

static void b_datarow(struct bytes *b, size_t n, const char *const *v)
{
	size_t at = b_begin(b, 'D'), i;

	b_u16(b, (uint16_t)n);
	for (i = 0; i < n; i++) {
		if (!v[i]) {
			b_u32(b, 0xffffffff);
			continue;
		}
		b_u32(b, (uint32_t)strlen(v[i]));
		b_raw(b, v[i], strlen(v[i]));
	}
	b_end(b, at);
}

static void b_complete(struct bytes *b, const char *tag)
{
	size_t at = b_begin(b, 'C');

	b_str(b, tag);
	b_end(b, at);
}

static void b_ready(struct bytes *b)
{
	size_t at = b_begin(b, 'Z');

	b_u8(b, 'I');
	b_end(b, at);
}

static void b_error(struct bytes *b, const char *sev, const char *code, const char *msg)
{
	size_t at = b_begin(b, 'E');

	b_u8(b, 'S');
	b_str(b, sev);
	b_u8(b, 'V');
	b_str(b, sev);
	b_u8(b, 'C');
	b_str(b, code);
	b_u8(b, 'M');
	b_str(b, msg);
	b_u8(b, 0);
	b_end(b, at);
}

/* What the console answers a StartupMessage with (pid 7, secret 99). */
static void b_welcome(struct bytes *b)
{
	size_t at = b_begin(b, 'R');

	b_u32(b, 0);
	b_end(b, at);
	b_param(b, "server_version", "15.0 (pgshadow test)");
	b_param(b, "server_encoding", "UTF8");
	b_param(b, "client_encoding", "UTF8");
	b_param(b, "DateStyle", "ISO");
	b_param(b, "integer_datetimes", "on");
	b_param(b, "standard_conforming_strings", "on");
	at = b_begin(b, 'K');
	b_u32(b, 7);
	b_u32(b, 99);
	b_end(b, at);
	b_ready(b);
}

/* ---- a fake provider ---- */

struct fake {
	int resets;
	int fail;	   /* callbacks return this when set */
	size_t rl_bytes;   /* readiness: this many bytes instead of the fixed report */
	bool wrong_width;  /* sessions: a row of the wrong width */
	bool endless_rows; /* sessions: rows until refused */
	int queries;	   /* SHOW MIRROR QUERIES calls */
	char query_db[80]; /* its database argument ("(all)" for NULL) */
};

static int fake_readiness(void *ctx, const char *database, struct buf *text)
{
	struct fake *f = ctx;
	size_t i;

	if (database && strcmp(database, "app"))
		return -ENOENT;
	if (database) {
		buf_printf(text, "Database: %s", database);
		return 0;
	}
	if (f->fail)
		return f->fail;
	if (f->rl_bytes) {
		for (i = 0; i + 100 <= f->rl_bytes; i += 100)
			buf_printf(text, "%099d\n", 0);
		return 0;
	}
	buf_printf(text, "Status: READY\n\nError Rate: 0.000%%\n\u2713 last");
	return 0;
}

static size_t fake_db_rows(void *ctx, struct stats_db_row *out, size_t cap)
{
	struct stats_db_row rows[2];

	(void)ctx;
	memset(rows, 0, sizeof(rows));
	strcpy(rows[0].name, "app");
	rows[0].requests = 100;
	rows[0].mirrored = 90;
	rows[0].not_sampled = 3;
	rows[0].skipped = 2;
	rows[0].dropped = rows[0].errors[STATS_ERR_BUFFER_FULL] = 1;
	rows[0].errors[STATS_ERR_CONNECTION] = 1;
	rows[0].errors[STATS_ERR_QUERY] = 2;
	rows[0].errors[STATS_ERR_TIMEOUT] = 0;
	rows[0].in_flight = 1;
	rows[0].compared = 90;
	rows[0].mismatched = 4;
	rows[0].source_avg_ms = 1.5;
	rows[0].source_p99_ms = 2.25;
	rows[0].mirror_avg_ms = 3;
	rows[0].mirror_p99_ms = 4.125;
	strcpy(rows[1].name, "other");
	rows[1].source_avg_ms = rows[1].source_p99_ms = NAN;
	rows[1].mirror_avg_ms = rows[1].mirror_p99_ms = NAN;
	memcpy(out, rows, (cap < 2 ? cap : 2) * sizeof(rows[0]));
	return 2;
}

static int fake_databases(void *ctx, struct admin_rows *rows)
{
	const char *v[3] = {"app", "app_v2", "0.25"};

	(void)ctx;
	admin_rows_add(rows, v, 3);
	return 0;
}

static int fake_sessions(void *ctx, struct admin_rows *rows)
{
	struct fake *f = ctx;
	const char *v[8] = {"10.0.0.1:5000", "app", "alice", "active", "2", "10", "1", NULL};

	if (f->fail)
		return f->fail;
	if (f->wrong_width) {
		admin_rows_add(rows, v, 7);
		return 0;
	}
	while (f->endless_rows && admin_rows_add(rows, v, 8))
		;
	admin_rows_add(rows, v, 8);
	return 0;
}

static int fake_pools(void *ctx, struct admin_rows *rows)
{
	const char *v[11] = {"app", "alice", "web", "3",   "2",		 "3",
			     "1",   "0",     "1",   "250", "transaction"};

	(void)ctx;
	return admin_rows_add(rows, v, 11) ? 0 : -1;
}

static int fake_queries(void *ctx, const char *database, struct admin_rows *rows)
{
	struct fake *f = ctx;
	const char *v[21] = {"app", "SELECT * FROM t WHERE id = $1", "slower"};
	int i;

	for (i = 3; i < 21; i++)
		v[i] = "1";
	f->queries++;
	snprintf(f->query_db, sizeof(f->query_db), "%s", database ? database : "(all)");
	return admin_rows_add(rows, v, 21) ? 0 : -1;
}

static int fake_reset(void *ctx)
{
	struct fake *f = ctx;

	f->resets++;
	return 0;
}

static struct fake fk;
static struct admin_provider provider = {
    .ctx = &fk,
    .version = "pgshadow test",
    .readiness = fake_readiness,
    .db_rows = fake_db_rows,
    .databases = fake_databases,
    .sessions = fake_sessions,
    .pools = fake_pools,
    .queries = fake_queries,
    .reset = fake_reset,
};

static int setup(void **state)
{
	(void)state;
	memset(&fk, 0, sizeof(fk));
	return 0;
}

/* ---- driving a connection ---- */

struct run {
	struct admin_conn *c;
	struct buf out;
	bool open;
};

static void run_start(struct run *r, const struct admin_provider *p)
{
	r->c = admin_conn_new(p, 7, 99);
	assert_non_null(r->c);
	buf_init(&r->out, 64u << 20);
	r->open = true;
}

static void run_feed(struct run *r, const struct bytes *in)
{
	r->open = admin_conn_feed(r->c, in->d, in->n, &r->out);
}

static void run_end(struct run *r)
{
	admin_conn_free(r->c);
	buf_free(&r->out);
}

static void dump(const char *what, const unsigned char *p, size_t n)
{
	size_t i;

	fprintf(stderr, "%s (%zu bytes):", what, n);
	for (i = 0; i < n; i++)
		fprintf(stderr, (p[i] >= 0x20 && p[i] < 0x7f) ? "%c" : "\\x%02x", p[i]);
	fprintf(stderr, "\n");
}

static void assert_out(struct run *r, const struct bytes *want)
{
	if (r->out.len != want->n || (want->n && memcmp(r->out.data, want->d, want->n))) {
		dump("got ", (const unsigned char *)r->out.data, r->out.len);
		dump("want", want->d, want->n);
		fail_msg("output differs");
	}
	r->out.len = 0;
}

/* A connection past startup, its welcome consumed. */
static void run_ready(struct run *r, const struct admin_provider *p)
{
	struct bytes in = {.n = 0}, want = {.n = 0};

	run_start(r, p);
	b_startup(&in, 0x30000, "u", "pgshadow");
	run_feed(r, &in);
	assert_true(r->open);
	b_welcome(&want);
	assert_out(r, &want);
	assert_true(admin_conn_started(r->c));
}

/* Sends one Query and checks the whole answer. */
static void expect_query(struct run *r, const char *q, const struct bytes *want)
{
	struct bytes in = {.n = 0};

	b_query(&in, q);
	run_feed(r, &in);
	assert_true(r->open);
	assert_out(r, want);
}

/* ---- tests ---- */

static void test_startup(void **state)
{
	struct bytes in = {.n = 0}, want = {.n = 0};
	struct run r;

	(void)state;
	run_start(&r, &provider);
	assert_false(admin_conn_started(r.c));
	b_startup(&in, 0x30000, "postgres", "pgshadow");
	run_feed(&r, &in);
	assert_true(r.open);
	b_welcome(&want);
	assert_out(&r, &want);
	run_end(&r);
}

/* SSLRequest and GSSENCRequest get 'N'; the StartupMessage then proceeds. */
static void test_ssl_and_gss_requests(void **state)
{
	struct bytes in = {.n = 0}, want = {.n = 0};
	struct run r;

	(void)state;
	run_start(&r, &provider);
	b_request(&in, 80877103);
	run_feed(&r, &in);
	b_u8(&want, 'N');
	assert_out(&r, &want);
	in.n = want.n = 0;
	b_request(&in, 80877104);
	b_startup(&in, 0x30000, NULL, NULL); /* any user and database, even none */
	run_feed(&r, &in);
	b_u8(&want, 'N');
	b_welcome(&want);
	assert_out(&r, &want);
	assert_true(r.open);
	run_end(&r);
}

/* A newer 3.x minor or _pq_ options: NegotiateProtocolVersion 3.0 listing them. */
static void test_protocol_negotiation(void **state)
{
	struct bytes in = {.n = 0}, want = {.n = 0};
	struct run r;
	size_t at;

	(void)state;
	run_start(&r, &provider);
	at = b_begin(&in, 0);
	b_u32(&in, 0x30002);
	b_str(&in, "user");
	b_str(&in, "u");
	b_str(&in, "_pq_.compression");
	b_str(&in, "on");
	b_u8(&in, 0);
	b_end(&in, at);
	run_feed(&r, &in);
	at = b_begin(&want, 'v');
	b_u32(&want, 0x30000);
	b_u32(&want, 1);
	b_str(&want, "_pq_.compression");
	b_end(&want, at);
	b_welcome(&want);
	assert_out(&r, &want);
	run_end(&r);

	/* protocol 2 is refused */
	run_start(&r, &provider);
	in.n = want.n = 0;
	b_startup(&in, 0x20000, "u", "d");
	run_feed(&r, &in);
	assert_false(r.open);
	b_error(&want, "FATAL", "0A000",
		"unsupported frontend protocol 2.0: the pgshadow console speaks 3.0");
	assert_out(&r, &want);
	run_end(&r);

	/* a CancelRequest just closes */
	run_start(&r, &provider);
	in.n = want.n = 0;
	b_u32(&in, 16);
	b_u32(&in, 80877102);
	b_u32(&in, 7);
	b_u32(&in, 99);
	run_feed(&r, &in);
	assert_false(r.open);
	assert_out(&r, &want);
	run_end(&r);
}

static void test_show_version_and_help(void **state)
{
	static const char *const vcol[] = {"version"}, *const hcol[] = {"command", "description"};
	static const uint32_t text1[] = {25}, text2[] = {25, 25};
	static const char *const help[][2] = {
	    {"SHOW MIRROR READINESS",
	     "the migration readiness report (Status, Confidence Score, Metrics, Assessment). "
	     "SHOW MIRROR READINESS db: one database's"},
	    {"SHOW MIRROR STATS", "per database: requests, outcomes, errors by type, source vs "
				  "mirror latency, mismatches"},
	    {"SHOW MIRRORS",
	     "per database: total, mirrored, dropped and error counts, queue length"},
	    {"SHOW MIRROR DATABASES",
	     "mirrored databases, the mirror database each replays to, and their exposure"},
	    {"SHOW MIRROR SESSIONS",
	     "mirrored source sessions and the state of their mirror connections"},
	    {"SHOW MIRROR POOLS",
	     "pools of mirror connections (PgBouncer's SHOW POOLS): sessions active and waiting, "
	     "connections in use, idle, being made and pinned"},
	    {"SHOW MIRROR QUERIES",
	     "per statement (normalized text), source vs mirror: calls, latency quantiles, "
	     "errors, mismatches; regressions first, by impact. SHOW MIRROR QUERIES db: one "
	     "database"},
	    {"RESET MIRROR STATS",
	     "restart the readiness window and the per-statement figures (counters keep "
	     "counting)"},
	    {"SHOW VERSION", "the agent's version"},
	    {"SHOW HELP", "this list"},
	};
	struct bytes want = {.n = 0};
	const char *v = "pgshadow test";
	struct run r;
	size_t i;

	(void)state;
	run_ready(&r, &provider);
	b_rowdesc(&want, 1, vcol, text1);
	b_datarow(&want, 1, &v);
	b_complete(&want, "SHOW");
	b_ready(&want);
	expect_query(&r, "SHOW VERSION", &want);
	/* case, spacing and trailing semicolons do not matter */
	expect_query(&r, "  show\n\tversion ;; ", &want);

	want.n = 0;
	b_rowdesc(&want, 2, hcol, text2);
	for (i = 0; i < sizeof(help) / sizeof(help[0]); i++)
		b_datarow(&want, 2, help[i]);
	b_complete(&want, "SHOW");
	b_ready(&want);
	expect_query(&r, "Show Help;", &want);
	run_end(&r);
}

static void test_show_mirror_readiness(void **state)
{
	static const char *const col[] = {"mirror_readiness"};
	static const uint32_t oid[] = {25};
	static const char *const lines[] = {"Status: READY", "", "Error Rate: 0.000%",
					    "\u2713 last"};
	struct bytes want = {.n = 0};
	struct run r;
	size_t i;

	(void)state;
	run_ready(&r, &provider);
	b_rowdesc(&want, 1, col, oid);
	for (i = 0; i < 4; i++)
		b_datarow(&want, 1, &lines[i]);
	b_complete(&want, "SHOW");
	b_ready(&want);
	expect_query(&r, "SHOW MIRROR READINESS", &want);

	/* a failing provider: XX000, and the session goes on */
	fk.fail = -EIO;
	want.n = 0;
	b_error(&want, "ERROR", "XX000", "the readiness report failed: Input/output error");
	b_ready(&want);
	expect_query(&r, "SHOW MIRROR READINESS", &want);
	run_end(&r);
}

static void test_show_mirror_stats(void **state)
{
	static const char *const cols[] = {
	    "database",	      "requests",      "mirrored",	    "not_sampled",
	    "skipped",	      "dropped",       "errors_connection", "errors_query",
	    "errors_timeout", "in_flight",     "compared",	    "mismatches",
	    "source_avg_ms",  "source_p99_ms", "mirror_avg_ms",	    "mirror_p99_ms",
	};
	static const uint32_t oids[] = {25, 20, 20, 20, 20,  20,  20,  20,
					20, 20, 20, 20, 701, 701, 701, 701};
	static const char *const app[] = {"app",   "100",   "90",    "3",    "2",  "1",
					  "1",	   "2",	    "0",     "1",    "90", "4",
					  "1.500", "2.250", "3.000", "4.125"};
	static const char *const other[] = {"other", "0", "0", "0", "0",  "0",	"0",  "0",
					    "0",     "0", "0", "0", NULL, NULL, NULL, NULL};
	struct bytes want = {.n = 0};
	struct run r;

	(void)state;
	run_ready(&r, &provider);
	b_rowdesc(&want, 16, cols, oids);
	b_datarow(&want, 16, app);
	b_datarow(&want, 16, other);
	b_complete(&want, "SHOW");
	b_ready(&want);
	expect_query(&r, "SHOW MIRROR STATS", &want);
	run_end(&r);
}

static void test_show_mirrors(void **state)
{
	static const char *const cols[] = {"database",	     "user",	      "total_count",
					   "mirrored_count", "dropped_count", "error_count",
					   "queue_length"};
	static const uint32_t oids[] = {25, 25, 20, 20, 20, 20, 20};
	static const char *const app[] = {"app", "*", "100", "90", "1", "3", "1"};
	static const char *const other[] = {"other", "*", "0", "0", "0", "0", "0"};
	struct bytes want = {.n = 0};
	struct run r;

	(void)state;
	run_ready(&r, &provider);
	b_rowdesc(&want, 7, cols, oids);
	b_datarow(&want, 7, app);
	b_datarow(&want, 7, other);
	b_complete(&want, "SHOW");
	b_ready(&want);
	expect_query(&r, "show mirrors", &want);
	run_end(&r);
}

static void test_show_databases_and_sessions(void **state)
{
	static const char *const dcols[] = {"database", "mirror_database", "exposure"};
	static const uint32_t doids[] = {25, 25, 701};
	static const char *const drow[] = {"app", "app_v2", "0.25"};
	static const char *const scols[] = {"client",	   "database",	   "user",
					    "state",	   "queue_length", "mirrored_count",
					    "error_count", "dropped_count"};
	static const uint32_t soids[] = {25, 25, 25, 25, 20, 20, 20, 20};
	static const char *const srow[] = {
	    "10.0.0.1:5000", "app", "alice", "active", "2", "10", "1", NULL};
	static const char *const pcols[] = {
	    "database", "user",	    "application_name", "cl_active",  "cl_waiting", "sv_active",
	    "sv_idle",	"sv_login", "sv_pinned",	"maxwait_ms", "pool_mode"};
	static const uint32_t poids[] = {25, 25, 25, 20, 20, 20, 20, 20, 20, 20, 25};
	static const char *const prow[] = {"app", "alice", "web", "3",	 "2",	       "3",
					   "1",	  "0",	   "1",	  "250", "transaction"};
	struct bytes want = {.n = 0};
	struct run r;

	(void)state;
	run_ready(&r, &provider);
	b_rowdesc(&want, 3, dcols, doids);
	b_datarow(&want, 3, drow);
	b_complete(&want, "SHOW");
	b_ready(&want);
	expect_query(&r, "SHOW MIRROR DATABASES", &want);

	want.n = 0;
	b_rowdesc(&want, 8, scols, soids);
	b_datarow(&want, 8, srow);
	b_complete(&want, "SHOW");
	b_ready(&want);
	expect_query(&r, "SHOW MIRROR SESSIONS", &want);

	/* PgBouncer's SHOW POOLS columns, counts as int8 */
	want.n = 0;
	b_rowdesc(&want, 11, pcols, poids);
	b_datarow(&want, 11, prow);
	b_complete(&want, "SHOW");
	b_ready(&want);
	expect_query(&r, "show mirror pools;", &want);

	/* a provider row of the wrong width is an error, not a broken result */
	fk.wrong_width = true;
	want.n = 0;
	b_error(&want, "ERROR", "XX000",
		"SHOW MIRROR SESSIONS: the agent gave a row without its 8 values");
	b_ready(&want);
	expect_query(&r, "SHOW MIRROR SESSIONS", &want);

	/* rows beyond ADMIN_MAX_REPLY: 54000 */
	fk.wrong_width = false;
	fk.endless_rows = true;
	want.n = 0;
	b_error(&want, "ERROR", "54000", "SHOW MIRROR SESSIONS: the reply exceeds 8388608 bytes");
	b_ready(&want);
	expect_query(&r, "SHOW MIRROR SESSIONS", &want);
	run_end(&r);
}

static void test_reset(void **state)
{
	struct bytes want = {.n = 0};
	struct run r;

	(void)state;
	run_ready(&r, &provider);
	b_complete(&want, "RESET");
	b_ready(&want);
	expect_query(&r, "RESET MIRROR STATS;", &want);
	assert_int_equal(fk.resets, 1);
	run_end(&r);
}

/* Over TCP (read-only): RESET is refused, reading still works. */
static void test_reset_read_only(void **state)
{
	struct bytes want = {.n = 0};
	struct run r;

	(void)state;
	fk.resets = 0;
	run_ready(&r, &provider);
	admin_conn_set_read_only(r.c, true);
	b_error(&want, "ERROR", "42501",
		"RESET MIRROR STATS needs the console's Unix socket (its permissions are the "
		"access control): over TCP the console only reads");
	b_ready(&want);
	expect_query(&r, "RESET MIRROR STATS", &want);
	assert_int_equal(fk.resets, 0);
	run_end(&r);
}

/* A provider without callbacks: 0A000 per command, and the session stays usable. */
static void test_unavailable(void **state)
{
	struct admin_provider bare = {.version = "pgshadow test"};
	struct bytes want = {.n = 0};
	struct run r;

	(void)state;
	run_ready(&r, &bare);
	b_error(&want, "ERROR", "0A000", "SHOW MIRROR SESSIONS is not available in this agent");
	b_ready(&want);
	expect_query(&r, "SHOW MIRROR SESSIONS", &want);
	want.n = 0;
	b_error(&want, "ERROR", "0A000", "SHOW MIRRORS is not available in this agent");
	b_ready(&want);
	expect_query(&r, "SHOW MIRRORS", &want);
	want.n = 0;
	b_error(&want, "ERROR", "0A000", "RESET MIRROR STATS is not available in this agent");
	b_ready(&want);
	expect_query(&r, "RESET MIRROR STATS", &want);
	run_end(&r);
}

/* SHOW MIRROR QUERIES takes one database name, its case kept, quoted or not. */
static void test_show_mirror_queries_argument(void **state)
{
	static const struct {
		const char *q, *db; /* db NULL: refused as unrecognized */
	} cases[] = {
	    {"SHOW MIRROR QUERIES", "(all)"},
	    {"show mirror queries", "(all)"},
	    {"show  mirror\tqueries   App_1", "App_1"},
	    {"SHOW MIRROR QUERIES \"my db\"", "my db"},
	    {"SHOW MIRROR QUERIES a b", NULL},
	    {"SHOW MIRROR QUERIES \"a\"b\"", NULL},
	    {"SHOW MIRROR QUERIESX", NULL},
	    {"SHOW MIRROR POOLS app", NULL}, /* only QUERIES and READINESS take one */
	};
	struct bytes in;
	struct run r;
	size_t i;

	(void)state;
	run_ready(&r, &provider);
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int before = fk.queries;

		in.n = 0;
		b_query(&in, cases[i].q);
		run_feed(&r, &in);
		assert_true(r.open);
		if (cases[i].db) {
			assert_int_equal(fk.queries, before + 1);
			assert_string_equal(fk.query_db, cases[i].db);
			assert_non_null(
			    memmem(r.out.data, r.out.len, "SELECT * FROM t WHERE id = $1", 29));
		} else {
			assert_int_equal(fk.queries, before);
			assert_non_null(memmem(r.out.data, r.out.len, "unrecognized command", 20));
		}
		r.out.len = 0;
	}
	run_end(&r);
}

/* SHOW MIRROR READINESS db: that database's report; an unknown one is 42704. */
static void test_show_mirror_readiness_of_a_database(void **state)
{
	static const char *const col[] = {"mirror_readiness"};
	static const uint32_t oid[] = {25};
	struct bytes want = {.n = 0};
	const char *v = "Database: app";
	struct run r;

	(void)state;
	run_ready(&r, &provider);
	b_rowdesc(&want, 1, col, oid);
	b_datarow(&want, 1, &v);
	b_complete(&want, "SHOW");
	b_ready(&want);
	expect_query(&r, "show mirror readiness app", &want);
	want.n = 0;
	b_error(&want, "ERROR", "42704",
		"SHOW MIRROR READINESS: no database \"nope\" seen by this agent");
	b_ready(&want);
	expect_query(&r, "SHOW MIRROR READINESS nope", &want);
	run_end(&r);
}

static void test_unknown_command_then_usable(void **state)
{
	static const char *const vcol[] = {"version"};
	static const uint32_t oid[] = {25};
	struct bytes want = {.n = 0};
	const char *v = "pgshadow test";
	char longq[300], msg[200];
	struct run r;

	(void)state;
	run_ready(&r, &provider);
	b_error(&want, "ERROR", "42601",
		"unrecognized command \"SELECT 1\": SHOW HELP lists the commands");
	b_ready(&want);
	expect_query(&r, "SELECT 1", &want);
	/* long and unprintable text is cut and cleaned in the message */
	memset(longq, 'x', sizeof(longq) - 1);
	longq[sizeof(longq) - 1] = '\0';
	longq[1] = '\t';
	want.n = 0;
	snprintf(msg, sizeof(msg),
		 "unrecognized command \"x %.94s...\": SHOW HELP lists the commands", longq + 2);
	b_error(&want, "ERROR", "42601", msg);
	b_ready(&want);
	expect_query(&r, longq, &want);
	/* a failing command stops the rest of its Query, as in PostgreSQL */
	want.n = 0;
	b_rowdesc(&want, 1, vcol, oid);
	b_datarow(&want, 1, &v);
	b_complete(&want, "SHOW");
	b_error(&want, "ERROR", "42601",
		"unrecognized command \"nope\": SHOW HELP lists the commands");
	b_ready(&want);
	expect_query(&r, "show version; nope; show version", &want);
	/* still usable */
	want.n = 0;
	b_rowdesc(&want, 1, vcol, oid);
	b_datarow(&want, 1, &v);
	b_complete(&want, "SHOW");
	b_ready(&want);
	expect_query(&r, "SHOW VERSION", &want);
	run_end(&r);
}

static void test_empty_query(void **state)
{
	struct bytes want = {.n = 0};
	struct run r;
	size_t at;

	(void)state;
	run_ready(&r, &provider);
	at = b_begin(&want, 'I');
	b_end(&want, at);
	b_ready(&want);
	expect_query(&r, "", &want);
	expect_query(&r, " ; ;\n", &want);
	run_end(&r);
}

static void test_terminate(void **state)
{
	struct bytes in = {.n = 0}, want = {.n = 0};
	struct run r;

	(void)state;
	run_ready(&r, &provider);
	b_u8(&in, 'X');
	b_u32(&in, 4);
	run_feed(&r, &in);
	assert_false(r.open);
	assert_out(&r, &want);
	assert_int_equal(admin_conn_space(r.c), 0);
	/* nothing more is taken */
	in.n = 0;
	b_query(&in, "SHOW VERSION");
	run_feed(&r, &in);
	assert_false(r.open);
	assert_out(&r, &want);
	run_end(&r);
}

/* Extended protocol: a FATAL 0A000 and the connection closes. */
static void test_extended_protocol_refused(void **state)
{
	static const char types[] = "PBEDCSHF";
	struct bytes in, want;
	struct run r;
	size_t i, at;

	(void)state;
	for (i = 0; types[i]; i++) {
		run_ready(&r, &provider);
		in.n = want.n = 0;
		at = b_begin(&in, types[i]);
		b_str(&in, "");
		b_str(&in, "SELECT 1");
		b_u16(&in, 0);
		b_end(&in, at);
		b_query(&in, "SHOW VERSION"); /* never answered */
		run_feed(&r, &in);
		assert_false(r.open);
		b_error(&want, "FATAL", "0A000",
			"the pgshadow console supports the simple query protocol only (e.g. psql "
			"-c 'SHOW HELP')");
		assert_out(&r, &want);
		run_end(&r);
	}
}

/* Nonsense gets a FATAL 08P01 and a close, decided from the header alone. */
static void test_garbage_closes(void **state)
{
	static const struct {
		bool startup; /* before or after the startup exchange */
		unsigned char bytes[8];
		size_t n;
		const char *msg;
	} cases[] = {
	    {true, {0, 0, 0, 4}, 4, "invalid startup packet length"},
	    {true, {0, 0, 0, 7}, 4, "invalid startup packet length"},
	    {true, {0x7f, 0xff, 0xff, 0xff}, 4, "invalid startup packet length"},
	    {true, {0, 0, 0x27, 0x11}, 4, "invalid startup packet length"}, /* 10001 */
	    {true,
	     {0, 0, 0, 8, 0, 3, 0, 0},
	     8,
	     "invalid startup packet layout: expected name/value pairs"},
	    {false, {'Q', 0, 0, 0, 3}, 5, "invalid message length 3 (at most 65536)"},
	    {false,
	     {'Q', 0xff, 0xff, 0xff, 0xff},
	     5,
	     "invalid message length 4294967295 (at most 65536)"},
	    {false, {'Q', 0, 1, 0, 1}, 5, "invalid message length 65537 (at most 65536)"},
	    {false, {'z', 0, 0, 0, 4}, 5, "invalid frontend message type 122"},
	    {false, {'p', 0, 0, 0, 5}, 5, "invalid frontend message type 112"},
	    {false, {0, 0, 0, 0, 0}, 5, "invalid frontend message type 0"},
	    {false,
	     {'Q', 0, 0, 0, 6, 'a', 'b'},
	     7,
	     "invalid Query message: the text must end in one NUL"},
	    {false,
	     {'Q', 0, 0, 0, 6, 0, 'b'},
	     7,
	     "invalid Query message: the text must end in one NUL"},
	};
	struct bytes in, want;
	struct run r;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		if (cases[i].startup)
			run_start(&r, &provider);
		else
			run_ready(&r, &provider);
		in.n = want.n = 0;
		b_raw(&in, cases[i].bytes, cases[i].n);
		run_feed(&r, &in);
		if (r.open)
			fail_msg("case %zu: still open", i);
		b_error(&want, "FATAL", "08P01", cases[i].msg);
		assert_out(&r, &want);
		run_end(&r);
	}
}

/* A whole session: what comes out does not depend on how the input is cut. */
static void test_split_at_every_byte(void **state)
{
	struct bytes in = {.n = 0};
	struct buf whole;
	struct admin_conn *c;
	size_t cut, i, n;
	bool open;

	(void)state;
	b_request(&in, 80877103);
	b_startup(&in, 0x30000, "u", "pgshadow");
	b_query(&in, "SHOW MIRROR READINESS");
	b_query(&in, "SHOW MIRROR STATS; SHOW MIRRORS");
	b_query(&in, "bogus");
	b_query(&in, "");
	b_query(&in, "SHOW MIRROR SESSIONS;SHOW VERSION");
	b_u8(&in, 'X');
	b_u32(&in, 4);

	buf_init(&whole, 1 << 20);
	c = admin_conn_new(&provider, 7, 99);
	assert_false(admin_conn_feed(c, in.d, in.n, &whole));
	admin_conn_free(c);
	assert_true(whole.len > 500);

	for (cut = 0; cut <= in.n; cut++) {
		struct buf out;

		buf_init(&out, 1 << 20);
		c = admin_conn_new(&provider, 7, 99);
		open = admin_conn_feed(c, in.d, cut, &out);
		assert_true(open == (cut < in.n)); /* the last byte completes Terminate */
		open = admin_conn_feed(c, in.d + cut, in.n - cut, &out);
		assert_false(open);
		if (out.len != whole.len || memcmp(out.data, whole.data, whole.len))
			fail_msg("cut at %zu: different output", cut);
		admin_conn_free(c);
		buf_free(&out);
	}
	/* one byte at a time */
	{
		struct buf out;

		buf_init(&out, 1 << 20);
		c = admin_conn_new(&provider, 7, 99);
		for (i = 0, open = true; i < in.n; i++) {
			n = admin_conn_space(c);
			assert_true(n > 0);
			open = admin_conn_feed(c, in.d + i, 1, &out);
			assert_true(open == (i + 1 < in.n));
		}
		assert_int_equal(out.len, whole.len);
		assert_memory_equal(out.data, whole.data, whole.len);
		admin_conn_free(c);
		buf_free(&out);
	}
	buf_free(&whole);
}

/* Past ADMIN_OUT_HIGH bytes of pending output the core stops answering and keeps the
 * rest of the input; feeding nothing once the output is gone continues. */
static void test_output_backpressure(void **state)
{
	struct bytes in = {.n = 0};
	struct admin_conn *c;
	struct buf out;
	size_t first;

	(void)state;
	fk.rl_bytes = 700000; /* one reply of ~750 KB */
	b_startup(&in, 0x30000, "u", "d");
	b_query(&in, "SHOW MIRROR READINESS");
	b_query(&in, "SHOW MIRROR READINESS");
	b_query(&in, "SHOW MIRROR READINESS");
	buf_init(&out, 64u << 20);
	c = admin_conn_new(&provider, 7, 99);
	assert_true(admin_conn_feed(c, in.d, in.n, &out));
	first = out.len;
	assert_true(first >= ADMIN_OUT_HIGH && first < 2 * ADMIN_OUT_HIGH); /* two answers */
	assert_true(admin_conn_space(c) < ADMIN_MAX_MESSAGE + 1);	    /* one kept */
	out.len = 0;
	assert_true(admin_conn_feed(c, NULL, 0, &out));
	assert_true(out.len > 700000 && out.len < first);
	out.len = 0;
	assert_true(admin_conn_feed(c, NULL, 0, &out));
	assert_int_equal(out.len, 0);
	assert_int_equal(admin_conn_space(c), ADMIN_MAX_MESSAGE + 1);
	/* input beyond the space it offers is refused */
	{
		static unsigned char big[ADMIN_MAX_MESSAGE + 2];

		assert_false(admin_conn_feed(c, big, sizeof(big), &out));
	}
	admin_conn_free(c);
	buf_free(&out);
}

/* ---- the shell ---- */

static int connect_unix(const char *path)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	int fd = socket(AF_UNIX, SOCK_STREAM, 0);

	snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
	if (connect(fd, (struct sockaddr *)&sun, sizeof(sun))) {
		close(fd);
		return -1;
	}
	return fd;
}

/* Reads until want bytes arrived (or EOF). */
static size_t read_n(int fd, unsigned char *p, size_t want)
{
	size_t got = 0;
	ssize_t n;

	while (got < want && (n = read(fd, p + got, want - got)) > 0)
		got += (size_t)n;
	return got;
}

static void test_shell_unix_socket(void **state)
{
	char base[] = "/tmp/pgshadow-admin-XXXXXX", dir[64], path[96], err[256];
	struct admin_config cfg;
	struct bytes in = {.n = 0}, want = {.n = 0};
	unsigned char got[4096];
	struct admin *a, *b;
	struct stat sb;
	int fd, i;

	(void)state;
	assert_non_null(mkdtemp(base));
	snprintf(dir, sizeof(dir), "%s/run", base); /* created by admin_start */
	admin_config_default(&cfg);
	cfg.unix_dir = dir;
	cfg.port = 16433;
	cfg.max_connections = 2;
	snprintf(path, sizeof(path), "%s/.s.PGSQL.16433", dir);

	a = admin_start(&cfg, &provider, err, sizeof(err));
	if (!a)
		fail_msg("%s", err);
	assert_int_equal(stat(dir, &sb), 0);
	assert_int_equal(sb.st_mode & 0777, 0755);
	assert_int_equal(stat(path, &sb), 0);
	assert_true(S_ISSOCK(sb.st_mode));
	assert_int_equal(sb.st_mode & 0777, 0660);

	/* a second console on the same socket is refused */
	b = admin_start(&cfg, &provider, err, sizeof(err));
	assert_null(b);
	assert_non_null(strstr(err, "is listening on"));

	/* a session over the socket */
	fd = connect_unix(path);
	assert_true(fd >= 0);
	b_request(&in, 80877103);
	b_startup(&in, 0x30000, "u", "pgshadow");
	b_query(&in, "SHOW VERSION");
	assert_int_equal(write(fd, in.d, in.n), (ssize_t)in.n);
	b_u8(&want, 'N');
	{
		size_t at = b_begin(&want, 'R');

		b_u32(&want, 0);
		b_end(&want, at);
	}
	assert_int_equal(read_n(fd, got, want.n), want.n);
	assert_memory_equal(got, want.d, want.n);
	close(fd);

	/* beyond max_connections: 53300 */
	{
		int held[2] = {connect_unix(path), connect_unix(path)};

		usleep(100000);
		fd = connect_unix(path);
		assert_true(fd >= 0);
		want.n = 0;
		b_error(&want, "FATAL", "53300", "too many connections to the pgshadow console");
		assert_int_equal(read_n(fd, got, want.n + 1), want.n); /* then EOF */
		assert_memory_equal(got, want.d, want.n);
		close(fd);
		for (i = 0; i < 2; i++)
			close(held[i]);
	}
	admin_stop(a);
	assert_int_equal(lstat(path, &sb), -1); /* removed */

	/* a stale socket file (nobody listening) is replaced */
	{
		struct sockaddr_un sun = {.sun_family = AF_UNIX};

		fd = socket(AF_UNIX, SOCK_STREAM, 0);
		snprintf(sun.sun_path, sizeof(sun.sun_path), "%s", path);
		assert_int_equal(bind(fd, (struct sockaddr *)&sun, sizeof(sun)), 0);
		close(fd);
	}
	a = admin_start(&cfg, &provider, err, sizeof(err));
	if (!a)
		fail_msg("%s", err);
	admin_stop(a);

	/* a regular file there is not ours to remove */
	fd = open(path, O_CREAT | O_WRONLY, 0600);
	assert_true(fd >= 0);
	close(fd);
	a = admin_start(&cfg, &provider, err, sizeof(err));
	assert_null(a);
	assert_non_null(strstr(err, "exists and is not a socket"));
	unlink(path);

	/* a bad TCP address is reported */
	cfg.listen = "localhost:notaport";
	a = admin_start(&cfg, &provider, err, sizeof(err));
	assert_null(a);
	assert_non_null(strstr(err, "invalid listen address"));
	rmdir(dir);
	rmdir(base);
}

/* SCRAM-SHA-256 on the console (RFC 7677's exchange: user "user", password "pencil"). */
static const char rfc_first[] = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
static const char rfc_final[] = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
				"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";

static void b_sasl_initial(struct bytes *b, const char *data)
{
	size_t at = b_begin(b, 'p');

	b_str(b, "SCRAM-SHA-256");
	b_u32(b, (uint32_t)strlen(data));
	b_raw(b, data, strlen(data));
	b_end(b, at);
}

static void b_sasl(struct bytes *b, const char *data)
{
	size_t at = b_begin(b, 'p');

	b_raw(b, data, strlen(data));
	b_end(b, at);
}

static bool has(const struct run *r, const char *s)
{
	return memmem(r->out.data, r->out.len, s, strlen(s)) != NULL;
}

/* One exchange as user (admin_roles: "user" when admin): what the console answered. */
static void scram_run(struct run *r, struct scram_users *users, struct admin_auth *auth,
		      const char *user, const char *final)
{
	static const uint8_t salt[16] = {0x5b, 0x6d, 0x99, 0x68, 0x9d, 0x12, 0x35, 0x8e,
					 0xec, 0xa0, 0x4b, 0x14, 0x12, 0x36, 0xfa, 0x81};
	struct bytes in = {.n = 0};

	users->n = users->cap = 1;
	users->user = calloc(1, sizeof(*users->user));
	assert_non_null(users->user);
	snprintf(users->user[0].name, sizeof(users->user[0].name), "user");
	assert_true(scram_make_verifier("pencil", salt, sizeof(salt), 4096, &users->user[0].v));
	auth->users = users;
	run_start(r, &provider);
	admin_conn_require_auth(r->c, auth, "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0");
	b_startup(&in, 0x30000, user, "pgshadow");
	run_feed(r, &in);
	assert_true(has(r, "SCRAM-SHA-256"));
	assert_false(admin_conn_started(r->c));
	in.n = 0;
	b_sasl_initial(&in, rfc_first);
	run_feed(r, &in);
	assert_true(has(r, "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
			   "s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"));
	r->out.len = 0;
	in.n = 0;
	b_sasl(&in, final);
	run_feed(r, &in);
}

static void test_scram_console(void **state)
{
	static const char *const roles[] = {"user"};
	struct scram_users users;
	struct admin_auth auth = {.admin_roles = roles, .n_admin_roles = 1};
	struct bytes in = {.n = 0};
	char bad[sizeof(rfc_final)];
	struct run r;

	(void)state;
	/* right proof, an admin role: the server's signature, then the console, RESET allowed */
	scram_run(&r, &users, &auth, "user", rfc_final);
	assert_true(has(&r, "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="));
	assert_true(admin_conn_started(r.c));
	b_query(&in, "RESET MIRROR STATS");
	run_feed(&r, &in);
	assert_int_equal(fk.resets, 1);
	run_end(&r);
	scram_users_free(&users);

	/* a stats role: SHOW only */
	auth.admin_roles = NULL;
	auth.n_admin_roles = 0;
	auth.stats_roles = roles;
	auth.n_stats_roles = 1;
	scram_run(&r, &users, &auth, "user", rfc_final);
	assert_true(admin_conn_started(r.c));
	in.n = 0;
	b_query(&in, "RESET MIRROR STATS");
	run_feed(&r, &in);
	assert_true(has(&r, "42501"));
	assert_int_equal(fk.resets, 1);
	run_end(&r);
	scram_users_free(&users);

	/* authenticated, but no role named: refused */
	auth.n_stats_roles = 0;
	scram_run(&r, &users, &auth, "user", rfc_final);
	assert_true(has(&r, "28000"));
	assert_false(r.open && admin_conn_started(r.c));
	run_end(&r);
	scram_users_free(&users);

	/* a wrong proof */
	auth.n_stats_roles = 1;
	memcpy(bad, rfc_final, sizeof(bad));
	bad[sizeof(bad) - 6] ^= 1;
	scram_run(&r, &users, &auth, "user", bad);
	assert_true(has(&r, "28P01"));
	assert_true(has(&r, "password authentication failed for user \"user\""));
	assert_false(admin_conn_started(r.c));
	run_end(&r);
	scram_users_free(&users);

	/* a query before authenticating */
	users.n = users.cap = 0;
	users.user = NULL;
	auth.users = &users;
	run_start(&r, &provider);
	admin_conn_require_auth(r.c, &auth, "n");
	in.n = 0;
	b_startup(&in, 0x30000, "user", "pgshadow");
	b_query(&in, "SHOW HELP");
	run_feed(&r, &in);
	assert_true(has(&r, "expected a SASL response"));
	assert_false(admin_conn_started(r.c));
	run_end(&r);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_setup(test_startup, setup),
	    cmocka_unit_test_setup(test_ssl_and_gss_requests, setup),
	    cmocka_unit_test_setup(test_protocol_negotiation, setup),
	    cmocka_unit_test_setup(test_show_version_and_help, setup),
	    cmocka_unit_test_setup(test_show_mirror_readiness, setup),
	    cmocka_unit_test_setup(test_show_mirror_stats, setup),
	    cmocka_unit_test_setup(test_show_mirrors, setup),
	    cmocka_unit_test_setup(test_show_databases_and_sessions, setup),
	    cmocka_unit_test_setup(test_reset, setup),
	    cmocka_unit_test_setup(test_reset_read_only, setup),
	    cmocka_unit_test_setup(test_unavailable, setup),
	    cmocka_unit_test_setup(test_unknown_command_then_usable, setup),
	    cmocka_unit_test_setup(test_show_mirror_queries_argument, setup),
	    cmocka_unit_test_setup(test_show_mirror_readiness_of_a_database, setup),
	    cmocka_unit_test_setup(test_scram_console, setup),
	    cmocka_unit_test_setup(test_empty_query, setup),
	    cmocka_unit_test_setup(test_terminate, setup),
	    cmocka_unit_test_setup(test_extended_protocol_refused, setup),
	    cmocka_unit_test_setup(test_garbage_closes, setup),
	    cmocka_unit_test_setup(test_split_at_every_byte, setup),
	    cmocka_unit_test_setup(test_output_backpressure, setup),
	    cmocka_unit_test_setup(test_shell_unix_socket, setup),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
