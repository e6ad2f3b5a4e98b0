// SPDX-License-Identifier: BSD-2-Clause
/* admin.c — the PostgreSQL-protocol console: a pure protocol core and a poll-loop shell.
 * See include/admin.h. */
#define _GNU_SOURCE /* accept4 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <time.h>
#include <unistd.h>

#include "admin.h"
#include "http.h"

/* Type OIDs of the result columns. */
#define OID_TEXT   25
#define OID_INT8   20
#define OID_FLOAT8 701

/* Startup packet codes. */
#define CODE_CANCEL  80877102u
#define CODE_SSL     80877103u
#define CODE_GSSENC  80877104u
#define PROTOCOL_3_0 0x30000u

#define COMMAND_MAX 96 /* longest command text we try to match (one with a database name) */

enum conn_state { ST_STARTUP = 0, ST_SASL_INIT, ST_SASL_CONT, ST_READY, ST_CLOSED };

struct admin_conn {
	const struct admin_provider *p;
	enum conn_state state;
	uint32_t pid, secret;
	bool read_only; /* came over TCP without authentication, or a stats role: no RESET */
	const struct admin_auth *auth; /* must authenticate (SCRAM) before anything else */
	char user[SCRAM_NAME_MAX];     /* the startup packet's user */
	char nonce[48];		       /* the server's nonce for this exchange */
	struct scram_exchange x;
	char arg[ADMIN_ARG_MAX + 1]; /* the running command's argument ("" if none) */
	size_t in_len;
	unsigned char in[ADMIN_MAX_MESSAGE + 1]; /* one whole message and its type byte */
};

struct column {
	const char *name;
	uint32_t oid;
};

struct admin_rows {
	struct buf *b;
	size_t ncols;
	bool bad; /* a row had the wrong width, or the reply grew too big */
};

/* Why a command could not answer: SQLSTATE and message. */
struct cmd_error {
	const char *code;
	char msg[256];
};

/* ---- message writers ---- */

static void put_u16(struct buf *b, uint16_t v)
{
	v = htons(v);
	buf_append(b, &v, 2);
}

static void put_u32(struct buf *b, uint32_t v)
{
	v = htonl(v);
	buf_append(b, &v, 4);
}

static void put_str(struct buf *b, const char *s)
{
	buf_append(b, s, strlen(s) + 1);
}

/* Starts a message: returns where its length goes (msg_end fills it in). */
static size_t msg_begin(struct buf *b, char type)
{
	size_t at;

	buf_append(b, &type, 1);
	at = b->len;
	put_u32(b, 0);
	return at;
}

static void msg_end(struct buf *b, size_t at)
{
	uint32_t n;

	if (b->overflow || at + 4 > b->len)
		return;
	n = htonl((uint32_t)(b->len - at));
	memcpy(b->data + at, &n, 4);
}

static void error_response(struct buf *b, const char *severity, const char *code, const char *msg)
{
	size_t at = msg_begin(b, 'E');

	buf_append(b, "S", 1);
	put_str(b, severity);
	buf_append(b, "V", 1);
	put_str(b, severity);
	buf_append(b, "C", 1);
	put_str(b, code);
	buf_append(b, "M", 1);
	put_str(b, msg);
	buf_append(b, "", 1);
	msg_end(b, at);
}

static void ready_for_query(struct buf *b)
{
	size_t at = msg_begin(b, 'Z');

	buf_append(b, "I", 1);
	msg_end(b, at);
}

static void command_complete(struct buf *b, const char *tag)
{
	size_t at = msg_begin(b, 'C');

	put_str(b, tag);
	msg_end(b, at);
}

static void parameter_status(struct buf *b, const char *name, const char *value)
{
	size_t at = msg_begin(b, 'S');

	put_str(b, name);
	put_str(b, value);
	msg_end(b, at);
}

static void row_description(struct buf *b, const struct column *cols, size_t n)
{
	size_t at = msg_begin(b, 'T'), i;

	put_u16(b, (uint16_t)n);
	for (i = 0; i < n; i++) {
		put_str(b, cols[i].name);
		put_u32(b, 0); /* table */
		put_u16(b, 0); /* column number */
		put_u32(b, cols[i].oid);
		put_u16(b, cols[i].oid == OID_TEXT ? 0xffff : 8); /* typlen: -1 or 8 */
		put_u32(b, 0xffffffffu);			  /* typmod -1 */
		put_u16(b, 0);					  /* text format */
	}
	msg_end(b, at);
}

static void data_row(struct buf *b, const char *const *values, size_t n)
{
	size_t at = msg_begin(b, 'D'), i, len;

	put_u16(b, (uint16_t)n);
	for (i = 0; i < n; i++) {
		if (!values[i]) {
			put_u32(b, 0xffffffffu);
			continue;
		}
		len = strlen(values[i]);
		put_u32(b, (uint32_t)len);
		buf_append(b, values[i], len);
	}
	msg_end(b, at);
}

/* A fatal error: sent, then the connection closes. */
static void fatal(struct admin_conn *c, struct buf *out, const char *code, const char *msg)
{
	error_response(out, "FATAL", code, msg);
	c->state = ST_CLOSED;
}

static uint32_t get_u32(const unsigned char *p)
{
	uint32_t v;

	memcpy(&v, p, 4);
	return ntohl(v);
}

/* ---- result sets ---- */

bool admin_rows_add(struct admin_rows *rows, const char *const *values, size_t n)
{
	if (rows->bad)
		return false;
	if (n != rows->ncols) {
		rows->bad = true;
		return false;
	}
	data_row(rows->b, values, n);
	if (rows->b->overflow)
		rows->bad = true;
	return !rows->bad;
}

static void fmt_u64(char *s, size_t len, uint64_t v)
{
	snprintf(s, len, "%llu", (unsigned long long)v);
}

/* A millisecond figure, or NULL (SQL NULL) for NaN. */
static const char *fmt_ms(char *s, size_t len, double v)
{
	if (isnan(v))
		return NULL;
	snprintf(s, len, "%.3f", v);
	return s;
}

static void unavailable(struct cmd_error *e, const char *what)
{
	e->code = "0A000";
	snprintf(e->msg, sizeof(e->msg), "%s is not available in this agent", what);
}

static int provider_failed(struct cmd_error *e, const char *what, int rc)
{
	e->code = "XX000";
	snprintf(e->msg, sizeof(e->msg), "%s failed: %s", what, strerror(rc < 0 ? -rc : rc));
	return -1;
}

/* Checks a finished result set. */
static int rows_done(struct admin_rows *rows, struct cmd_error *e, const char *what)
{
	if (!rows->bad)
		return 0;
	if (rows->b->overflow) {
		e->code = "54000";
		snprintf(e->msg, sizeof(e->msg), "%s: the reply exceeds %u bytes", what,
			 ADMIN_MAX_REPLY);
	} else {
		e->code = "XX000";
		snprintf(e->msg, sizeof(e->msg), "%s: the agent gave a row without its %zu values",
			 what, rows->ncols);
	}
	return -1;
}

/* ---- commands ---- */

struct command {
	const char *name;
	int (*fn)(struct admin_conn *c, struct buf *reply, struct cmd_error *e);
	const char *help;
};

static const struct command commands[];

static int cmd_readiness(struct admin_conn *c, struct buf *reply, struct cmd_error *e)
{
	static const struct column cols[] = {{"mirror_readiness", OID_TEXT}};
	struct admin_rows rows = {.b = reply, .ncols = 1};
	const char *line, *end, *nl;
	struct buf text;
	char *copy;
	size_t len;
	int rc;

	if (!c->p->readiness) {
		unavailable(e, "SHOW MIRROR READINESS");
		return -1;
	}
	buf_init(&text, ADMIN_MAX_REPLY / 2);
	rc = c->p->readiness(c->p->ctx, c->arg[0] ? c->arg : NULL, &text);
	if (rc == -ENOENT) {
		buf_free(&text);
		e->code = "42704"; /* undefined_object */
		snprintf(e->msg, sizeof(e->msg),
			 "SHOW MIRROR READINESS: no database \"%s\" seen by this agent", c->arg);
		return -1;
	}
	if (rc < 0 || text.overflow) {
		buf_free(&text);
		return provider_failed(e, "the readiness report", rc < 0 ? rc : -ENOMEM);
	}
	row_description(reply, cols, 1);
	line = text.data ? text.data : "";
	end = line + text.len;
	while (line < end) { /* one row per line; the last may lack its '\n' */
		nl = memchr(line, '\n', end - line);
		len = nl ? (size_t)(nl - line) : (size_t)(end - line);
		copy = strndup(line, len);
		if (!copy) {
			buf_free(&text);
			return provider_failed(e, "the readiness report", -ENOMEM);
		}
		admin_rows_add(&rows, (const char *const *)&copy, 1);
		free(copy);
		line += len + (nl ? 1 : 0);
	}
	buf_free(&text);
	if (rows_done(&rows, e, "SHOW MIRROR READINESS"))
		return -1;
	command_complete(reply, "SHOW");
	return 0;
}

/* The databases' rows from the provider (caller frees *rows). Returns how many. */
static int get_db_rows(struct admin_conn *c, struct stats_db_row **rows, size_t *n,
		       struct cmd_error *e, const char *what)
{
	size_t cap = 64, total;

	*rows = NULL;
	if (!c->p->db_rows) {
		unavailable(e, what);
		return -1;
	}
	for (;;) {
		free(*rows);
		*rows = calloc(cap, sizeof(**rows));
		if (!*rows)
			return provider_failed(e, what, -ENOMEM);
		total = c->p->db_rows(c->p->ctx, *rows, cap);
		if (total <= cap || cap >= 65536)
			break;
		cap = total < 65536 ? total : 65536;
	}
	*n = total < cap ? total : cap;
	return 0;
}

static int cmd_mirror_stats(struct admin_conn *c, struct buf *reply, struct cmd_error *e)
{
	static const struct column cols[] = {
	    {"database", OID_TEXT},	     {"requests", OID_INT8},
	    {"mirrored", OID_INT8},	     {"not_sampled", OID_INT8},
	    {"skipped", OID_INT8},	     {"dropped", OID_INT8},
	    {"errors_connection", OID_INT8}, {"errors_query", OID_INT8},
	    {"errors_timeout", OID_INT8},    {"in_flight", OID_INT8},
	    {"compared", OID_INT8},	     {"mismatches", OID_INT8},
	    {"source_avg_ms", OID_FLOAT8},   {"source_p99_ms", OID_FLOAT8},
	    {"mirror_avg_ms", OID_FLOAT8},   {"mirror_p99_ms", OID_FLOAT8},
	};
	enum { NCOLS = sizeof(cols) / sizeof(cols[0]) };
	struct admin_rows rows = {.b = reply, .ncols = NCOLS};
	struct stats_db_row *dbs;
	char s[NCOLS][32];
	const char *v[NCOLS];
	size_t n, i;

	if (get_db_rows(c, &dbs, &n, e, "SHOW MIRROR STATS"))
		return -1;
	row_description(reply, cols, NCOLS);
	for (i = 0; i < n; i++) {
		const struct stats_db_row *d = &dbs[i];
		const uint64_t counts[] = {
		    d->requests,
		    d->mirrored,
		    d->not_sampled,
		    d->skipped,
		    d->dropped,
		    d->errors[STATS_ERR_CONNECTION],
		    d->errors[STATS_ERR_QUERY],
		    d->errors[STATS_ERR_TIMEOUT],
		    d->in_flight,
		    d->compared,
		    d->mismatched,
		};
		size_t k;

		v[0] = d->name;
		for (k = 0; k < sizeof(counts) / sizeof(counts[0]); k++) {
			fmt_u64(s[k + 1], sizeof(s[0]), counts[k]);
			v[k + 1] = s[k + 1];
		}
		v[12] = fmt_ms(s[12], sizeof(s[0]), d->source_avg_ms);
		v[13] = fmt_ms(s[13], sizeof(s[0]), d->source_p99_ms);
		v[14] = fmt_ms(s[14], sizeof(s[0]), d->mirror_avg_ms);
		v[15] = fmt_ms(s[15], sizeof(s[0]), d->mirror_p99_ms);
		if (!admin_rows_add(&rows, v, NCOLS))
			break;
	}
	free(dbs);
	if (rows_done(&rows, e, "SHOW MIRROR STATS"))
		return -1;
	command_complete(reply, "SHOW");
	return 0;
}

/* PgDog's SHOW MIRRORS columns. Stats are kept per database, not per user (a user label
 * would multiply the series), so user is "*"; error_count is connection + query +
 * timeout (drops are dropped_count); queue_length is the database's requests waiting
 * for or running on the mirror. */
static int cmd_mirrors(struct admin_conn *c, struct buf *reply, struct cmd_error *e)
{
	static const struct column cols[] = {
	    {"database", OID_TEXT},	  {"user", OID_TEXT},	       {"total_count", OID_INT8},
	    {"mirrored_count", OID_INT8}, {"dropped_count", OID_INT8}, {"error_count", OID_INT8},
	    {"queue_length", OID_INT8},
	};
	enum { NCOLS = sizeof(cols) / sizeof(cols[0]) };
	struct admin_rows rows = {.b = reply, .ncols = NCOLS};
	struct stats_db_row *dbs;
	char s[NCOLS][32];
	const char *v[NCOLS];
	size_t n, i;

	if (get_db_rows(c, &dbs, &n, e, "SHOW MIRRORS"))
		return -1;
	row_description(reply, cols, NCOLS);
	for (i = 0; i < n; i++) {
		const struct stats_db_row *d = &dbs[i];

		v[0] = d->name;
		v[1] = "*";
		fmt_u64(s[2], sizeof(s[0]), d->requests);
		fmt_u64(s[3], sizeof(s[0]), d->mirrored);
		fmt_u64(s[4], sizeof(s[0]), d->dropped);
		fmt_u64(s[5], sizeof(s[0]),
			d->errors[STATS_ERR_CONNECTION] + d->errors[STATS_ERR_QUERY] +
			    d->errors[STATS_ERR_TIMEOUT]);
		fmt_u64(s[6], sizeof(s[0]), d->in_flight);
		v[2] = s[2];
		v[3] = s[3];
		v[4] = s[4];
		v[5] = s[5];
		v[6] = s[6];
		if (!admin_rows_add(&rows, v, NCOLS))
			break;
	}
	free(dbs);
	if (rows_done(&rows, e, "SHOW MIRRORS"))
		return -1;
	command_complete(reply, "SHOW");
	return 0;
}

/* A command whose rows come from a provider callback. */
static int provider_table(struct admin_conn *c, struct buf *reply, struct cmd_error *e,
			  const char *what, int (*fn)(void *, struct admin_rows *),
			  const struct column *cols, size_t ncols)
{
	struct admin_rows rows = {.b = reply, .ncols = ncols};
	int rc;

	if (!fn) {
		unavailable(e, what);
		return -1;
	}
	row_description(reply, cols, ncols);
	rc = fn(c->p->ctx, &rows);
	if (rc < 0)
		return provider_failed(e, what, rc);
	if (rows_done(&rows, e, what))
		return -1;
	command_complete(reply, "SHOW");
	return 0;
}

static int cmd_databases(struct admin_conn *c, struct buf *reply, struct cmd_error *e)
{
	static const struct column cols[] = {
	    {"database", OID_TEXT}, {"mirror_database", OID_TEXT}, {"exposure", OID_FLOAT8}};

	return provider_table(c, reply, e, "SHOW MIRROR DATABASES", c->p->databases, cols, 3);
}

static int cmd_sessions(struct admin_conn *c, struct buf *reply, struct cmd_error *e)
{
	static const struct column cols[] = {
	    {"client", OID_TEXT},      {"database", OID_TEXT},	    {"user", OID_TEXT},
	    {"state", OID_TEXT},       {"queue_length", OID_INT8},  {"mirrored_count", OID_INT8},
	    {"error_count", OID_INT8}, {"dropped_count", OID_INT8},
	};

	return provider_table(c, reply, e, "SHOW MIRROR SESSIONS", c->p->sessions, cols,
			      sizeof(cols) / sizeof(cols[0]));
}

static int cmd_pools(struct admin_conn *c, struct buf *reply, struct cmd_error *e)
{
	static const struct column cols[] = {
	    {"database", OID_TEXT},   {"user", OID_TEXT},	{"application_name", OID_TEXT},
	    {"cl_active", OID_INT8},  {"cl_waiting", OID_INT8}, {"sv_active", OID_INT8},
	    {"sv_idle", OID_INT8},    {"sv_login", OID_INT8},	{"sv_pinned", OID_INT8},
	    {"maxwait_ms", OID_INT8}, {"pool_mode", OID_TEXT},
	};

	return provider_table(c, reply, e, "SHOW MIRROR POOLS", c->p->pools, cols,
			      sizeof(cols) / sizeof(cols[0]));
}

static int cmd_queries(struct admin_conn *c, struct buf *reply, struct cmd_error *e)
{
	static const struct column cols[] = {
	    {"database", OID_TEXT},	      {"query", OID_TEXT},
	    {"regressed", OID_TEXT},	      {"source_calls", OID_INT8},
	    {"mirror_calls", OID_INT8},	      {"source_p50_ms", OID_FLOAT8},
	    {"source_p95_ms", OID_FLOAT8},    {"source_p99_ms", OID_FLOAT8},
	    {"mirror_p50_ms", OID_FLOAT8},    {"mirror_p95_ms", OID_FLOAT8},
	    {"mirror_p99_ms", OID_FLOAT8},    {"p99_ratio", OID_FLOAT8},
	    {"extra_ms", OID_FLOAT8},	      {"impact_ms", OID_FLOAT8},
	    {"source_errors", OID_TEXT},      {"mirror_errors", OID_TEXT},
	    {"mirror_only_errors", OID_INT8}, {"mirror_only_sqlstate", OID_TEXT},
	    {"mismatches", OID_INT8},	      {"fingerprint", OID_TEXT},
	    {"mirror_plan", OID_TEXT},
	};
	struct admin_rows rows = {.b = reply, .ncols = sizeof(cols) / sizeof(cols[0])};
	int rc;

	if (!c->p->queries) {
		unavailable(e, "SHOW MIRROR QUERIES");
		return -1;
	}
	row_description(reply, cols, rows.ncols);
	rc = c->p->queries(c->p->ctx, c->arg[0] ? c->arg : NULL, &rows);
	if (rc < 0)
		return provider_failed(e, "SHOW MIRROR QUERIES", rc);
	if (rows_done(&rows, e, "SHOW MIRROR QUERIES"))
		return -1;
	command_complete(reply, "SHOW");
	return 0;
}

static int cmd_reset(struct admin_conn *c, struct buf *reply, struct cmd_error *e)
{
	int rc;

	if (!c->p->reset) {
		unavailable(e, "RESET MIRROR STATS");
		return -1;
	}
	if (c->read_only) {
		e->code = "42501"; /* insufficient_privilege */
		snprintf(e->msg, sizeof(e->msg),
			 "RESET MIRROR STATS needs the console's Unix socket (its permissions are "
			 "the access control): over TCP the console only reads");
		return -1;
	}
	rc = c->p->reset(c->p->ctx);
	if (rc < 0)
		return provider_failed(e, "RESET MIRROR STATS", rc);
	command_complete(reply, "RESET");
	return 0;
}

static int cmd_version(struct admin_conn *c, struct buf *reply, struct cmd_error *e)
{
	static const struct column cols[] = {{"version", OID_TEXT}};
	const char *v = c->p->version ? c->p->version : "pgshadow";

	(void)e;
	row_description(reply, cols, 1);
	data_row(reply, &v, 1);
	command_complete(reply, "SHOW");
	return 0;
}

static int cmd_help(struct admin_conn *c, struct buf *reply, struct cmd_error *e)
{
	static const struct column cols[] = {{"command", OID_TEXT}, {"description", OID_TEXT}};
	const struct command *k;

	(void)c;
	(void)e;
	row_description(reply, cols, 2);
	for (k = commands; k->name; k++) {
		const char *v[2] = {k->name, k->help};

		data_row(reply, v, 2);
	}
	command_complete(reply, "SHOW");
	return 0;
}

static const struct command commands[] = {
    {"SHOW MIRROR READINESS", cmd_readiness,
     "the migration readiness report (Status, Confidence Score, Metrics, Assessment). "
     "SHOW MIRROR READINESS db: one database's"},
    {"SHOW MIRROR STATS", cmd_mirror_stats,
     "per database: requests, outcomes, errors by type, source vs mirror latency, mismatches"},
    {"SHOW MIRRORS", cmd_mirrors,
     "per database: total, mirrored, dropped and error counts, queue length"},
    {"SHOW MIRROR DATABASES", cmd_databases,
     "mirrored databases, the mirror database each replays to, and their exposure"},
    {"SHOW MIRROR SESSIONS", cmd_sessions,
     "mirrored source sessions and the state of their mirror connections"},
    {"SHOW MIRROR POOLS", cmd_pools,
     "pools of mirror connections (PgBouncer's SHOW POOLS): sessions active and waiting, "
     "connections in use, idle, being made and pinned"},
    {"SHOW MIRROR QUERIES", cmd_queries,
     "per statement (normalized text), source vs mirror: calls, latency quantiles, errors, "
     "mismatches; regressions first, by impact. SHOW MIRROR QUERIES db: one database"},
    {"RESET MIRROR STATS", cmd_reset,
     "restart the readiness window and the per-statement figures (counters keep counting)"},
    {"SHOW VERSION", cmd_version, "the agent's version"},
    {"SHOW HELP", cmd_help, "this list"},
    {NULL, NULL, NULL},
};

/* ---- queries ---- */

static bool is_space(char ch)
{
	return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' || ch == '\f' || ch == '\v';
}

/* Upper-cases s[0..len) with runs of whitespace made one space and the ends trimmed,
 * into out (COMMAND_MAX + 1 bytes). False when it is longer than COMMAND_MAX. */
static bool normalize(const char *s, size_t len, char *out)
{
	size_t i, n = 0;
	bool space = false;

	for (i = 0; i < len; i++) {
		char ch = s[i];

		if (is_space(ch)) {
			space = n > 0;
			continue;
		}
		if (space && n < COMMAND_MAX)
			out[n++] = ' ';
		space = false;
		if (n >= COMMAND_MAX)
			return false;
		out[n++] = (ch >= 'a' && ch <= 'z') ? ch - 'a' + 'A' : ch;
	}
	out[n] = '\0';
	return true;
}

/*
 * Is name (normalized) the command k followed by one argument (SHOW MIRROR QUERIES and
 * SHOW MIRROR READINESS take a database name)? Then the argument, as
 * typed in s[0..len) (its case kept; double quotes around it removed), goes to c->arg.
 */
static bool take_arg(struct admin_conn *c, const char *k, const char *name, const char *s,
		     size_t len)
{
	size_t klen = strlen(k), words = 0, i = 0, n;
	const char *a;

	if (strncmp(name, k, klen) || name[klen] != ' ')
		return false;
	for (n = 0; k[n]; n++) /* the command's words */
		words += k[n] == ' ';
	words++;
	while (words--) { /* skip them in s, with the blanks after each */
		while (i < len && !is_space(s[i]))
			i++;
		while (i < len && is_space(s[i]))
			i++;
	}
	a = s + i;
	n = len - i;
	if (n >= 2 && a[0] == '"' && a[n - 1] == '"') {
		a++;
		n -= 2;
	} else if (memchr(a, ' ', n) || memchr(a, '\t', n)) {
		return false; /* one word, or a quoted name */
	}
	if (!n || n > ADMIN_ARG_MAX || memchr(a, '"', n))
		return false;
	memcpy(c->arg, a, n);
	c->arg[n] = '\0';
	return true;
}

/* Runs one command (s[0..len): trimmed, not empty) with at most *budget bytes of reply
 * (what is left of ADMIN_MAX_REPLY for the whole Query). Returns false when it failed:
 * the rest of the Query is not run, as PostgreSQL aborts a multi-statement Query. */
static bool run_command(struct admin_conn *c, const char *s, size_t len, size_t *budget,
			struct buf *out)
{
	char name[COMMAND_MAX + 1], shown[COMMAND_MAX + 4], msg[COMMAND_MAX + 96];
	struct cmd_error e = {.code = "XX000", .msg = ""};
	const struct command *k = NULL;
	struct buf reply;
	size_t i, n;

	c->arg[0] = '\0';
	if (normalize(s, len, name))
		for (k = commands; k->name && strcmp(k->name, name); k++)
			if ((k->fn == cmd_queries || k->fn == cmd_readiness) &&
			    take_arg(c, k->name, name, s, len))
				break;
	if (!k || !k->name) {
		/* echo what was sent, printable and bounded */
		for (i = n = 0; i < len && n < COMMAND_MAX; i++)
			shown[n++] = (s[i] >= 0x20 && s[i] < 0x7f) ? s[i] : ' ';
		strcpy(shown + n, i < len ? "..." : "");
		snprintf(msg, sizeof(msg),
			 "unrecognized command \"%s\": SHOW HELP lists the commands", shown);
		error_response(out, "ERROR", "42601", msg);
		return false;
	}
	buf_init(&reply, *budget);
	if (k->fn(c, &reply, &e) == 0 && !reply.overflow) {
		buf_append(out, reply.data, reply.len);
		*budget -= reply.len;
		buf_free(&reply);
		return true;
	}
	if (reply.overflow) {
		e.code = "54000";
		snprintf(e.msg, sizeof(e.msg), "%s: the reply exceeds %u bytes", k->name,
			 ADMIN_MAX_REPLY);
	}
	buf_free(&reply);
	error_response(out, "ERROR", e.code, e.msg);
	return false;
}

/* A simple Query: its ';'-separated commands, then ReadyForQuery. */
static void handle_query(struct admin_conn *c, const char *q, size_t len, struct buf *out)
{
	size_t start = 0, budget = ADMIN_MAX_REPLY, i, j, k;
	bool any = false;

	for (i = 0; i <= len; i++) {
		if (i < len && q[i] != ';')
			continue;
		for (j = start; j < i && is_space(q[j]); j++)
			;
		for (k = i; k > j && is_space(q[k - 1]); k--)
			;
		start = i + 1;
		if (j == k)
			continue;
		any = true;
		if (!run_command(c, q + j, k - j, &budget, out))
			break;
	}
	if (!any) {
		size_t at = msg_begin(out, 'I');

		msg_end(out, at);
	}
	ready_for_query(out);
}

/* ---- startup ---- */

/* Checks the startup parameters (name\0value\0 ... \0) and lists the _pq_ options in
 * opts (NUL-separated) for NegotiateProtocolVersion. False when malformed. */
static bool startup_params(const unsigned char *p, size_t len, struct buf *opts, uint32_t *nopts)
{
	size_t off = 0, n;
	int field = 0;

	*nopts = 0;
	while (off < len) {
		if (p[off] == '\0' && field == 0)
			return off == len - 1; /* the terminator, and nothing after it */
		n = strnlen((const char *)p + off, len - off);
		if (n == len - off)
			return false; /* unterminated */
		if (field == 0 && n > 5 && !memcmp(p + off, "_pq_.", 5)) {
			buf_append(opts, p + off, n + 1);
			(*nopts)++;
		}
		off += n + 1;
		field ^= 1;
	}
	return false; /* no terminator */
}

/* The value of "user" among the startup parameters (checked by startup_params). */
static void startup_user(const unsigned char *p, size_t len, char *out, size_t cap)
{
	size_t off = 0, n;

	out[0] = '\0';
	while (off < len && p[off]) {
		n = strnlen((const char *)p + off, len - off);
		if (off + n + 1 >= len)
			return;
		if (!strcmp((const char *)p + off, "user"))
			snprintf(out, cap, "%s", (const char *)p + off + n + 1);
		off += n + 1;
		off += strnlen((const char *)p + off, len - off) + 1;
	}
}

static void welcome(struct admin_conn *c, struct buf *out);

static void handle_startup(struct admin_conn *c, const unsigned char *p, size_t len,
			   struct buf *out)
{
	uint32_t code = get_u32(p + 4), nopts;
	char version[160];
	struct buf opts;
	size_t at;

	if (code == CODE_SSL || code == CODE_GSSENC) {
		if (len != 8)
			fatal(c, out, "08P01", "invalid SSL/GSS encryption request length");
		else
			buf_append(out, "N", 1);
		return;
	}
	if (code == CODE_CANCEL) {
		c->state = ST_CLOSED; /* nothing here to cancel */
		return;
	}
	if (code >> 16 != 3) {
		snprintf(version, sizeof(version),
			 "unsupported frontend protocol %u.%u: the pgshadow console speaks 3.0",
			 code >> 16, code & 0xffff);
		fatal(c, out, "0A000", version);
		return;
	}
	buf_init(&opts, ADMIN_MAX_STARTUP);
	if (!startup_params(p + 8, len - 8, &opts, &nopts)) {
		buf_free(&opts);
		fatal(c, out, "08P01", "invalid startup packet layout: expected name/value pairs");
		return;
	}
	if ((code & 0xffff) != 0 || nopts) {
		at = msg_begin(out, 'v');
		put_u32(out, PROTOCOL_3_0);
		put_u32(out, nopts);
		if (opts.len)
			buf_append(out, opts.data, opts.len);
		msg_end(out, at);
	}
	buf_free(&opts);
	startup_user(p + 8, len - 8, c->user, sizeof(c->user));
	if (c->auth) { /* AuthenticationSASL: the one mechanism */
		at = msg_begin(out, 'R');
		put_u32(out, 10);
		buf_append(out, "SCRAM-SHA-256\0", 14);
		buf_append(out, "", 1);
		msg_end(out, at);
		c->state = ST_SASL_INIT;
		return;
	}
	welcome(c, out);
}

/* AuthenticationOk, the parameters, BackendKeyData and ReadyForQuery. */
static void welcome(struct admin_conn *c, struct buf *out)
{
	char version[160];
	size_t at;

	at = msg_begin(out, 'R');
	put_u32(out, 0); /* AuthenticationOk */
	msg_end(out, at);
	snprintf(version, sizeof(version), "15.0 (%s)", c->p->version ? c->p->version : "pgshadow");
	parameter_status(out, "server_version", version);
	parameter_status(out, "server_encoding", "UTF8");
	parameter_status(out, "client_encoding", "UTF8");
	parameter_status(out, "DateStyle", "ISO");
	parameter_status(out, "integer_datetimes", "on");
	parameter_status(out, "standard_conforming_strings", "on");
	at = msg_begin(out, 'K');
	put_u32(out, c->pid);
	put_u32(out, c->secret);
	msg_end(out, at);
	ready_for_query(out);
	c->state = ST_READY;
}

/* ---- the core ---- */

struct admin_conn *admin_conn_new(const struct admin_provider *p, uint32_t pid, uint32_t secret)
{
	struct admin_conn *c = malloc(sizeof(*c));

	if (!c)
		return NULL;
	c->p = p;
	c->state = ST_STARTUP;
	c->pid = pid;
	c->secret = secret;
	c->read_only = false;
	c->auth = NULL;
	c->user[0] = '\0';
	c->nonce[0] = '\0';
	c->in_len = 0;
	return c;
}

void admin_conn_require_auth(struct admin_conn *c, const struct admin_auth *auth,
			     const char *server_nonce)
{
	c->auth = auth;
	snprintf(c->nonce, sizeof(c->nonce), "%s", server_nonce);
}

void admin_conn_set_read_only(struct admin_conn *c, bool read_only)
{
	c->read_only = read_only;
}

void admin_conn_free(struct admin_conn *c)
{
	free(c);
}

size_t admin_conn_space(const struct admin_conn *c)
{
	return c->state == ST_CLOSED ? 0 : sizeof(c->in) - c->in_len;
}

bool admin_conn_started(const struct admin_conn *c)
{
	return c->state == ST_READY;
}

/* A typed message whose header (type, length) is in: false (and a fatal error sent)
 * when it cannot be right, before waiting for its body. */
static bool check_header(struct admin_conn *c, unsigned char type, uint32_t len, struct buf *out)
{
	char msg[96];

	if (c->state == ST_SASL_INIT || c->state == ST_SASL_CONT) {
		if (type != 'p' && type != 'X') {
			fatal(c, out, "08P01",
			      "expected a SASL response (the console authenticates "
			      "with SCRAM-SHA-256)");
			return false;
		}
		type = 'Q'; /* its length is checked below like a Query's */
	}
	switch (type) {
	case 'Q':
	case 'X':
		break;
	case 'P': /* Parse, Bind, Execute, Describe, Close, Sync, Flush, FunctionCall */
	case 'B':
	case 'E':
	case 'D':
	case 'C':
	case 'S':
	case 'H':
	case 'F':
		fatal(c, out, "0A000",
		      "the pgshadow console supports the simple query protocol only (e.g. psql "
		      "-c 'SHOW HELP')");
		return false;
	default:
		snprintf(msg, sizeof(msg), "invalid frontend message type %u", type);
		fatal(c, out, "08P01", msg);
		return false;
	}
	if (len < 4 || len > ADMIN_MAX_MESSAGE) {
		snprintf(msg, sizeof(msg), "invalid message length %u (at most %u)", len,
			 ADMIN_MAX_MESSAGE);
		fatal(c, out, "08P01", msg);
		return false;
	}
	return true;
}

static bool in_list(const char *name, const char *const *list, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (!strcmp(name, list[i]))
			return true;
	return false;
}

/* One SASL message: SASLInitialResponse (mechanism, length, client-first-message), then
 * SASLResponse (client-final-message). */
static void sasl(struct admin_conn *c, const unsigned char *body, size_t len, struct buf *out)
{
	char answer[SCRAM_MESSAGE_MAX], msg[SCRAM_MESSAGE_MAX + 96];
	const unsigned char *data = body;
	uint32_t dlen = (uint32_t)len;
	const char *mech;
	size_t at, n;
	int rc;

	if (c->state == ST_SASL_INIT) {
		mech = (const char *)body;
		n = strnlen(mech, len);
		if (n + 5 > len || strcmp(mech, "SCRAM-SHA-256")) {
			fatal(c, out, "28000",
			      "the pgshadow console authenticates with SCRAM-SHA-256 "
			      "only");
			return;
		}
		dlen = get_u32(body + n + 1);
		data = body + n + 5;
		if (dlen != len - n - 5) {
			fatal(c, out, "08P01", "malformed SASLInitialResponse");
			return;
		}
		if (!scram_server_first(&c->x, scram_users_find(c->auth->users, c->user),
					(const char *)data, dlen, c->nonce, answer,
					sizeof(answer))) {
			fatal(c, out, "08P01", answer);
			return;
		}
		at = msg_begin(out, 'R');
		put_u32(out, 11); /* AuthenticationSASLContinue */
		buf_append(out, answer, strlen(answer));
		msg_end(out, at);
		c->state = ST_SASL_CONT;
		return;
	}
	rc = scram_server_final(&c->x, (const char *)data, dlen, answer, sizeof(answer));
	explicit_bzero(&c->x, sizeof(c->x));
	if (rc < 0) {
		fatal(c, out, "08P01", answer);
		return;
	}
	if (rc == 0) {
		snprintf(msg, sizeof(msg), "password authentication failed for user \"%s\"",
			 c->user);
		fatal(c, out, "28P01", msg);
		return;
	}
	if (in_list(c->user, c->auth->admin_roles, c->auth->n_admin_roles)) {
		c->read_only = false;
	} else if (in_list(c->user, c->auth->stats_roles, c->auth->n_stats_roles)) {
		c->read_only = true;
	} else {
		snprintf(msg, sizeof(msg),
			 "role \"%s\" may not use the pgshadow console (admin_users and "
			 "stats_users name the roles that may)",
			 c->user);
		fatal(c, out, "28000", msg);
		return;
	}
	at = msg_begin(out, 'R');
	put_u32(out, 12); /* AuthenticationSASLFinal */
	buf_append(out, answer, strlen(answer));
	msg_end(out, at);
	welcome(c, out);
}

static void handle_message(struct admin_conn *c, unsigned char type, const unsigned char *body,
			   size_t len, struct buf *out)
{
	const unsigned char *nul;

	if (type == 'X') {
		c->state = ST_CLOSED;
		return;
	}
	if (c->state == ST_SASL_INIT || c->state == ST_SASL_CONT) {
		sasl(c, body, len, out);
		return;
	}
	nul = memchr(body, '\0', len);
	if (!nul || (size_t)(nul - body) != len - 1) {
		fatal(c, out, "08P01", "invalid Query message: the text must end in one NUL");
		return;
	}
	handle_query(c, (const char *)body, len - 1, out);
}

/* Answers every complete message in the input buffer (see admin_conn_feed). */
static void process(struct admin_conn *c, struct buf *out)
{
	size_t off = 0, avail;
	const unsigned char *p;
	uint32_t len;

	while (c->state != ST_CLOSED && out->len < ADMIN_OUT_HIGH) {
		p = c->in + off;
		avail = c->in_len - off;
		if (c->state == ST_STARTUP) {
			if (avail < 4)
				break;
			len = get_u32(p);
			if (len < 8 || len > ADMIN_MAX_STARTUP) {
				fatal(c, out, "08P01", "invalid startup packet length");
				break;
			}
			if (avail < len)
				break;
			handle_startup(c, p, len, out);
			off += len;
			continue;
		}
		if (avail < 5)
			break;
		len = get_u32(p + 1);
		if (!check_header(c, p[0], len, out))
			break;
		if (avail < 1 + (size_t)len)
			break;
		handle_message(c, p[0], p + 5, len - 4, out);
		off += 1 + len;
	}
	memmove(c->in, c->in + off, c->in_len - off);
	c->in_len -= off;
	if (out->overflow)
		c->state = ST_CLOSED;
}

bool admin_conn_feed(struct admin_conn *c, const void *in, size_t len, struct buf *out)
{
	if (c->state == ST_CLOSED)
		return false;
	if (len > admin_conn_space(c)) {
		fatal(c, out, "08P01", "input beyond the console's buffer");
		return false;
	}
	if (len)
		memcpy(c->in + c->in_len, in, len);
	c->in_len += len;
	process(c, out);
	return c->state != ST_CLOSED;
}

/* ---- the shell ---- */

#define STARTUP_TIMEOUT_MS 30000
#define POLL_MS		   1000
#define READ_CHUNK	   16384

struct client {
	int fd;
	struct admin_conn *conn;
	struct buf out;
	size_t out_off;
	bool closing; /* close once out is sent */
	uint64_t since_ms;
};

struct admin {
	struct admin_provider p;
	int listen_fd[2];
	bool listen_tcp[2]; /* its clients are read-only */
	int n_listen;
	int wake_fd;
	char sock_path[sizeof(((struct sockaddr_un *)0)->sun_path)];
	ino_t sock_ino;
	dev_t sock_dev;
	bool have_sock;
	uint32_t max_conn;
	uid_t admin_uids[ADMIN_USERS_MAX], stats_uids[ADMIN_USERS_MAX];
	size_t n_admin_uids, n_stats_uids;
	const struct admin_auth *auth; /* TCP clients authenticate (NULL: read-only) */
	struct client *clients;
	size_t n_clients;
	uint32_t next_pid;
	uint64_t rng; /* BackendKeyData secrets (nothing can be cancelled; just not 0) */
	pthread_t thread;
	bool running;
};

void admin_config_default(struct admin_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg)); /* no uid lists, no authentication */
	cfg->unix_dir = "/run/pgshadow";
	cfg->port = 6433;
	cfg->listen = NULL;
	cfg->max_connections = 64;
}

static uint64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void client_close(struct admin *a, size_t i)
{
	struct client *cl = &a->clients[i];

	close(cl->fd);
	admin_conn_free(cl->conn);
	buf_free(&cl->out);
	a->clients[i] = a->clients[--a->n_clients];
}

/* Empties a client's output buffer (and gives back memory a big reply took). */
static void out_reset(struct client *cl)
{
	if (cl->out.cap > 65536) {
		buf_free(&cl->out);
		buf_init(&cl->out, ADMIN_OUT_HIGH + ADMIN_MAX_REPLY + 65536);
	}
	cl->out.len = 0;
	cl->out.overflow = false;
	if (cl->out.data)
		cl->out.data[0] = '\0';
	cl->out_off = 0;
}

/* Refuses a connection beyond max_connections (best effort: one non-blocking send). */
static void refuse(int fd, const char *code, const char *why)
{
	struct buf b;

	buf_init(&b, 512);
	error_response(&b, "FATAL", code, why);
	if (b.data && send(fd, b.data, b.len, MSG_NOSIGNAL | MSG_DONTWAIT) < 0)
		(void)0; /* it was a courtesy */
	buf_free(&b);
	close(fd);
}

enum access { ACCESS_NONE, ACCESS_READ, ACCESS_FULL };

static bool uid_in(uid_t uid, const uid_t *list, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (list[i] == uid)
			return true;
	return false;
}

/* A Unix socket peer: root and the agent's own user in full, admin_users too,
 * stats_users read-only, anyone else not at all (PgBouncer's console model). */
static enum access peer_access(const struct admin *a, int fd)
{
	struct ucred cred;
	socklen_t len = sizeof(cred);

	if (getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len))
		return ACCESS_NONE;
	if (cred.uid == 0 || cred.uid == geteuid() ||
	    uid_in(cred.uid, a->admin_uids, a->n_admin_uids))
		return ACCESS_FULL;
	return uid_in(cred.uid, a->stats_uids, a->n_stats_uids) ? ACCESS_READ : ACCESS_NONE;
}

static void accept_clients(struct admin *a, int lfd, bool tcp)
{
	struct client *cl;
	bool read_only = false;
	int fd, k;

	for (k = 0; k < 16; k++) {
		fd = accept4(lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd < 0)
			return;
		if (a->n_clients >= a->max_conn) {
			refuse(fd, "53300", "too many connections to the pgshadow console");
			continue;
		}
		if (!tcp) {
			switch (peer_access(a, fd)) {
			case ACCESS_NONE:
				refuse(
				    fd, "28000",
				    "this user may not use the pgshadow console (root, the agent's "
				    "user, admin_users and stats_users may)");
				continue;
			case ACCESS_READ:
				read_only = true;
				break;
			default:
				read_only = false;
			}
		}
		cl = &a->clients[a->n_clients];
		memset(cl, 0, sizeof(*cl));
		cl->fd = fd;
		a->rng ^= a->rng << 13; /* xorshift64 */
		a->rng ^= a->rng >> 7;
		a->rng ^= a->rng << 17;
		cl->conn = admin_conn_new(&a->p, ++a->next_pid, (uint32_t)a->rng);
		if (!cl->conn) {
			close(fd);
			continue;
		}
		admin_conn_set_read_only(cl->conn, tcp || read_only);
		if (tcp && a->auth) {
			uint8_t raw[SCRAM_NONCE_RAW];
			char nonce[4 * SCRAM_NONCE_RAW / 3 + 4];

			if (getrandom(raw, sizeof(raw), 0) != (ssize_t)sizeof(raw)) {
				admin_conn_free(cl->conn);
				refuse(fd, "58000", "the console cannot draw random bytes");
				continue;
			}
			scram_b64(raw, sizeof(raw), nonce);
			admin_conn_require_auth(cl->conn, a->auth, nonce);
		}
		buf_init(&cl->out, ADMIN_OUT_HIGH + ADMIN_MAX_REPLY + 65536);
		cl->since_ms = now_ms();
		a->n_clients++;
	}
}

/* Reads and answers. False when the client is gone. */
static bool client_read(struct client *cl)
{
	unsigned char tmp[READ_CHUNK];
	size_t room = admin_conn_space(cl->conn);
	ssize_t n;

	if (room > sizeof(tmp))
		room = sizeof(tmp);
	if (!room)
		return false;
	n = recv(cl->fd, tmp, room, 0);
	if (n == 0)
		return false;
	if (n < 0)
		return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
	if (!admin_conn_feed(cl->conn, tmp, (size_t)n, &cl->out))
		cl->closing = true;
	return true;
}

/* Sends what is pending; once all is sent, answers any buffered input. False when the
 * client is done (closing and flushed, or gone). */
static bool client_write(struct client *cl)
{
	ssize_t n;

	while (cl->out_off < cl->out.len) {
		n = send(cl->fd, cl->out.data + cl->out_off, cl->out.len - cl->out_off,
			 MSG_NOSIGNAL);
		if (n < 0)
			return errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR;
		cl->out_off += (size_t)n;
	}
	out_reset(cl);
	if (cl->closing)
		return false;
	if (!admin_conn_feed(cl->conn, NULL, 0, &cl->out))
		cl->closing = true;
	return !(cl->closing && !cl->out.len);
}

static void *admin_thread(void *arg)
{
	struct admin *a = arg;
	struct pollfd *fds = calloc(a->max_conn + 3, sizeof(*fds));
	size_t i, nfd, first;
	uint64_t now;
	bool keep;
	int l;

	if (!fds)
		return NULL; /* the console is down; the agent keeps working */
	for (;;) {
		nfd = 0;
		fds[nfd++] = (struct pollfd){.fd = a->wake_fd, .events = POLLIN};
		for (l = 0; l < a->n_listen; l++)
			fds[nfd++] = (struct pollfd){.fd = a->listen_fd[l], .events = POLLIN};
		first = nfd;
		for (i = 0; i < a->n_clients; i++) {
			struct client *cl = &a->clients[i];

			fds[nfd++] = (struct pollfd){
			    .fd = cl->fd, .events = cl->out.len > cl->out_off ? POLLOUT : POLLIN};
		}
		if (poll(fds, nfd, POLL_MS) < 0 && errno != EINTR)
			break;
		if (fds[0].revents)
			break;
		now = now_ms();
		/* clients first (indices match fds), from the end: closing swaps in the last */
		for (i = a->n_clients; i-- > 0;) {
			struct client *cl = &a->clients[i];
			short re = fds[first + i].revents;

			keep = true;
			if (re & POLLOUT)
				keep = client_write(cl);
			else if (re & POLLIN)
				keep = client_read(cl) && (cl->out.len || !cl->closing);
			else if (re & (POLLERR | POLLHUP | POLLNVAL))
				keep = false;
			if (keep && !admin_conn_started(cl->conn) &&
			    now - cl->since_ms > STARTUP_TIMEOUT_MS)
				keep = false;
			if (!keep)
				client_close(a, i);
		}
		for (l = 0; l < a->n_listen; l++)
			if (fds[1 + l].revents & POLLIN)
				accept_clients(a, a->listen_fd[l], a->listen_tcp[l]);
	}
	free(fds);
	return NULL;
}

/* Creates dir (one level, 0755) when it is missing. */
static int ensure_dir(const char *dir, char *err, size_t errlen)
{
	struct stat sb;

	if (!stat(dir, &sb)) {
		if (S_ISDIR(sb.st_mode))
			return 0;
		snprintf(err, errlen, "admin console: %s exists and is not a directory", dir);
		return -ENOTDIR;
	}
	if (errno == ENOENT && !mkdir(dir, 0755))
		return 0;
	snprintf(err, errlen, "admin console: cannot create directory %s: %s", dir,
		 strerror(errno));
	return -errno;
}

/* Removes a stale socket file at path; fails when an agent still accepts on it or the
 * file is not a socket. */
static int clear_stale(const struct sockaddr_un *sun, char *err, size_t errlen)
{
	struct stat sb;
	int fd, rc;

	if (lstat(sun->sun_path, &sb))
		return 0; /* nothing there */
	if (!S_ISSOCK(sb.st_mode)) {
		snprintf(err, errlen, "admin console: %s exists and is not a socket",
			 sun->sun_path);
		return -EEXIST;
	}
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(err, errlen, "admin console: socket: %s", strerror(errno));
		return -errno;
	}
	rc = connect(fd, (const struct sockaddr *)sun, sizeof(*sun));
	close(fd);
	if (!rc) {
		snprintf(err, errlen,
			 "admin console: another process (a running pgshadow?) is listening on %s",
			 sun->sun_path);
		return -EADDRINUSE;
	}
	if (errno != ECONNREFUSED) {
		snprintf(err, errlen, "admin console: cannot check %s: %s", sun->sun_path,
			 strerror(errno));
		return -errno;
	}
	if (unlink(sun->sun_path) && errno != ENOENT) {
		snprintf(err, errlen, "admin console: cannot remove stale socket %s: %s",
			 sun->sun_path, strerror(errno));
		return -errno;
	}
	return 0;
}

static int open_unix(struct admin *a, const struct admin_config *cfg, char *err, size_t errlen)
{
	struct sockaddr_un sun = {.sun_family = AF_UNIX};
	struct stat sb;
	int fd, rc;

	rc = ensure_dir(cfg->unix_dir, err, errlen);
	if (rc)
		return rc;
	if ((size_t)snprintf(sun.sun_path, sizeof(sun.sun_path), "%s/.s.PGSQL.%u", cfg->unix_dir,
			     cfg->port) >= sizeof(sun.sun_path)) {
		snprintf(err, errlen, "admin console: socket path under %s is too long",
			 cfg->unix_dir);
		return -ENAMETOOLONG;
	}
	rc = clear_stale(&sun, err, errlen);
	if (rc)
		return rc;
	fd = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(err, errlen, "admin console: socket: %s", strerror(errno));
		return -errno;
	}
	/* bind creates the file as 0777 & ~umask (0755 under the usual 022: only the owner
	 * can connect), so tightening/opening it to 0660 right after leaves no window in
	 * which others can connect; umask itself is per process, not ours to change */
	if (bind(fd, (struct sockaddr *)&sun, sizeof(sun)) ||
	    chmod(sun.sun_path, a->n_admin_uids || a->n_stats_uids ? 0666 : 0660) ||
	    listen(fd, 64) || stat(sun.sun_path, &sb)) {
		rc = -errno;
		snprintf(err, errlen, "admin console: cannot listen on %s: %s", sun.sun_path,
			 strerror(errno));
		close(fd);
		return rc;
	}
	snprintf(a->sock_path, sizeof(a->sock_path), "%s", sun.sun_path);
	a->sock_ino = sb.st_ino;
	a->sock_dev = sb.st_dev;
	a->have_sock = true;
	a->listen_fd[a->n_listen++] = fd;
	return 0;
}

static bool loopback(const struct sockaddr_storage *ss)
{
	const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)ss;
	const uint8_t *b = s6->sin6_addr.s6_addr;

	if (ss->ss_family == AF_INET)
		return (ntohl(((const struct sockaddr_in *)ss)->sin_addr.s_addr) >> 24) == 127;
	if (IN6_IS_ADDR_LOOPBACK(&s6->sin6_addr))
		return true;
	return IN6_IS_ADDR_V4MAPPED(&s6->sin6_addr) && b[12] == 127;
}

static int open_tcp(struct admin *a, const char *listen_addr, char *err, size_t errlen)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int fd, one = 1, rc;

	if (http_parse_listen(listen_addr, &ss, &len, err, errlen))
		return -EINVAL;
	if (!a->auth && !loopback(&ss)) {
		snprintf(err, errlen,
			 "admin console: --admin-listen %s is not a loopback address and no "
			 "admin_auth_file is set: without one the console cannot authenticate "
			 "(set admin_auth_file, or listen on 127.0.0.1 or [::1] and reach it "
			 "through SSH, or use the Unix socket)",
			 listen_addr);
		return -EINVAL;
	}
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
	if (fd < 0) {
		snprintf(err, errlen, "admin console: socket: %s", strerror(errno));
		return -errno;
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&ss, len) || listen(fd, 64)) {
		rc = -errno;
		snprintf(err, errlen, "admin console: cannot listen on %s: %s", listen_addr,
			 strerror(errno));
		close(fd);
		return rc;
	}
	a->listen_tcp[a->n_listen] = true;
	a->listen_fd[a->n_listen++] = fd;
	return 0;
}

/* Removes the socket file if it is still the one we created. */
static void remove_socket(struct admin *a)
{
	struct stat sb;

	if (a->have_sock && !lstat(a->sock_path, &sb) && sb.st_ino == a->sock_ino &&
	    sb.st_dev == a->sock_dev)
		unlink(a->sock_path);
	a->have_sock = false;
}

struct admin *admin_start(const struct admin_config *cfg, const struct admin_provider *p, char *err,
			  size_t errlen)
{
	struct admin *a = calloc(1, sizeof(*a));
	int rc;

	if (!a) {
		snprintf(err, errlen, "admin console: out of memory");
		return NULL;
	}
	a->p = *p;
	a->wake_fd = -1;
	a->listen_fd[0] = a->listen_fd[1] = -1;
	a->max_conn = cfg->max_connections ? cfg->max_connections : 64;
	a->auth = cfg->auth && cfg->auth->users && cfg->auth->users->n ? cfg->auth : NULL;
	a->n_admin_uids = cfg->n_admin_uids < ADMIN_USERS_MAX ? cfg->n_admin_uids : ADMIN_USERS_MAX;
	a->n_stats_uids = cfg->n_stats_uids < ADMIN_USERS_MAX ? cfg->n_stats_uids : ADMIN_USERS_MAX;
	if (a->n_admin_uids)
		memcpy(a->admin_uids, cfg->admin_uids, a->n_admin_uids * sizeof(uid_t));
	if (a->n_stats_uids)
		memcpy(a->stats_uids, cfg->stats_uids, a->n_stats_uids * sizeof(uid_t));
	a->clients = calloc(a->max_conn, sizeof(*a->clients));
	a->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
	if (!a->clients || a->wake_fd < 0) {
		snprintf(err, errlen, "admin console: %s", strerror(errno ? errno : ENOMEM));
		goto cleanup;
	}
	if (cfg->unix_dir && cfg->unix_dir[0] && open_unix(a, cfg, err, errlen))
		goto cleanup;
	if (cfg->listen && cfg->listen[0] && open_tcp(a, cfg->listen, err, errlen))
		goto cleanup;
	if (!a->n_listen) {
		snprintf(err, errlen,
			 "admin console: neither a socket directory nor a listen "
			 "address is set");
		goto cleanup;
	}
	a->rng = (now_ms() << 16) ^ (uint64_t)getpid() ^ 0x9e3779b97f4a7c15ULL;
	rc = pthread_create(&a->thread, NULL, admin_thread, a);
	if (rc) {
		snprintf(err, errlen, "admin console: cannot start its thread: %s", strerror(rc));
		goto cleanup;
	}
	pthread_setname_np(a->thread, "pgshadow-admin");
	a->running = true;
	return a;
cleanup:
	admin_stop(a);
	return NULL;
}

void admin_stop(struct admin *a)
{
	uint64_t one = 1;
	int l;

	if (!a)
		return;
	if (a->running) {
		if (write(a->wake_fd, &one, sizeof(one)) != sizeof(one))
			(void)0; /* an eventfd write of 1 cannot fail short of overflow */
		pthread_join(a->thread, NULL);
	}
	while (a->n_clients)
		client_close(a, a->n_clients - 1);
	for (l = 0; l < 2; l++)
		if (a->listen_fd[l] >= 0)
			close(a->listen_fd[l]);
	remove_socket(a);
	if (a->wake_fd >= 0)
		close(a->wake_fd);
	free(a->clients);
	free(a);
}
