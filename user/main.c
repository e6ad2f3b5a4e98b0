// SPDX-License-Identifier: BSD-2-Clause
/*
 * main.c — configuration (config.c: defaults, --config file, flags), signals, and the
 * capture loop: records from capture go to the pipeline (tcpstream -> session -> stats);
 * the HTTP server (/metrics, /readiness) and the admin console read stats on their
 * threads. SIGHUP sets a flag; the loop then reloads the configuration (reload()). With
 * --mirror the loop also ticks readiness and the threshold alerts once a second.
 *
 * `pgshadow readiness [--url URL]` is a client of a running agent's GET /readiness
 * (readiness_command): no BPF, no root.
 */
#define _GNU_SOURCE /* setresuid, setresgid */
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <fcntl.h>
#include <getopt.h>
#include <limits.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <grp.h>
#include <linux/capability.h>
#include <pwd.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "admin.h"
#include "capture.h"
#include "config.h"
#include "dump.h"
#include "http.h"
#include "fleet.h"
#include "landing.h"
#include "webauth.h"
#include "statefile.h"
#include "tlsprobe.h"
#include "pipeline.h"
#include "readiness.h"
#include "replay.h"
#include "resolver.h"
#include "selfcheck.h"
#include "stats.h"

#ifndef PGSHADOW_VERSION
#define PGSHADOW_VERSION "unknown"
#endif

#define EXIT_RUNTIME 1
#define EXIT_USAGE   2

/* While records flow, the reader polls on this timeout (records are submitted without a
 * wakeup until the ring holds wakeup_bytes, see bpf/capture.bpf.c). Mirroring, it bounds
 * how long a completed request waits before replay sees it, and the burst a session's
 * replay queue must absorb: 10 ms left the replay benchmark at 98.7% mirrored (queue
 * bursts of ~30 requests per session), 2 ms at 99.4-100%. Only observing, nothing waits
 * on it (latencies are kernel timestamps, /metrics is scraped in seconds) and each wakeup
 * costs a context switch: at 10,000 requests/s the 2 ms poll was 45% of the agent's CPU
 * (3.3 us per request on this VM, where switches are expensive); at 6,000 requests/s,
 * 10 ms cost 1.5-1.7 us per request, 25 ms 1.0-1.5. Measured again in nanoseconds of
 * run time (schedstat, not 10 ms ticks) at 14,000 requests/s, three rounds: 25 ms
 * 0.74-0.91 us per request, 50 ms 0.70-0.77, 100 ms 0.69-0.73. 100 ms is the tick's
 * interval (timers run no later than before); /metrics lags by at most that. The ring's
 * forced wakeup (wakeup_bytes) bounds what one poll must hold. */
#define POLL_MIRROR_MS	 2
#define POLL_OBSERVE_MS	 100
#define TICK_INTERVAL_NS 100000000ULL /* hole timeouts and idle expiry every 100 ms */
/* Sparse traffic: fewer records than this in the last SPARSE_WINDOW_NS (and the one
 * before) are fewer wakeups asleep, woken by each record, than polls would be; and the
 * answer to a query that woke the reader is decoded at once, not a poll later. */
#define SPARSE_WINDOW_NS      100000000ULL
#define SPARSE_RECORDS	      10
#define SPARSE_POLL_MS	      100	    /* asleep: woken by the next record, or for the tick */
#define IDLE_AFTER_NS	      200000000ULL  /* no record for this long: ... */
#define IDLE_POLL_MS	      1000	    /* ... or after a second (timers run then) */
#define READINESS_INTERVAL_NS 1000000000ULL /* readiness gauges and alerts every second */
#define STATE_SAVE_NS	      5000000000ULL /* state_file written at most this often */

/* `pgshadow readiness` */
#define READINESS_DEFAULT_URL "http://127.0.0.1:9930/readiness"
#define READINESS_TIMEOUT_MS  10000
#define EXIT_READY	      0
#define EXIT_NOT_READY	      1
#define EXIT_NO_ANSWER	      2

static volatile sig_atomic_t exiting, reload_requested;

/* One [databases] line as SHOW MIRROR DATABASES shows it. */
struct db_line {
	char source[CONFIG_NAME_MAX + 1], mirror[CONFIG_NAME_MAX + 1];
	double exposure; /* < 0: the global mirror_exposure */
};

/*
 * The running agent. `cl`, `cfg` and `alerts` are owned by the main (capture) thread,
 * which also reloads the configuration on SIGHUP. Other threads (HTTP, admin console)
 * get the reloadable numbers (readiness criteria, alert thresholds, exposure) from
 * `shared` (config_shared_get) and the [databases] lines from `dbs` under `dbs_lock`,
 * both of which every reload updates; restart-only values (admin_*, metrics_listen ...)
 * are handed to their module at start. `st` is set before any other thread starts;
 * `replay` is published once replay runs (the console may already be serving).
 */
struct agent {
	struct config_cmdline cl; /* the command line, re-applied on every reload */
	struct pgshadow_config cfg;
	struct config_shared *shared;
	struct stats *st;
	struct replay *_Atomic replay; /* NULL without a mirror */
	struct explain *explain;       /* --explain-regressions, or NULL */
	struct tlsprobe *tls;	       /* --tls on, or NULL (capture thread) */
	bool tls_hinted;	       /* the --tls hint was logged */
	struct readiness_alert_state alerts;
	uint64_t last_readiness_ns;
	uint64_t last_state_ns;
	uint64_t mirror_id; /* statefile_mirror_id of mirror_of */
	int state_errno;    /* the last state_file write failure logged (0: none) */
	pthread_mutex_t dbs_lock;
	struct db_line *dbs; /* cfg.databases, copied (the main thread refreshes it) */
	size_t n_dbs;
	/* for the landing page (HTTP thread): written before attached is set */
	char captured[256];
	char mirror_desc[256];
	_Atomic bool attached;
};

static void on_signal(int sig)
{
	(void)sig;
	exiting = 1;
}

static void on_hup(int sig)
{
	(void)sig;
	reload_requested = 1;
}

static uint64_t monotonic_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t); /* the clock of bpf_ktime_get_ns() */
	return (uint64_t)t.tv_sec * 1000000000ULL + t.tv_nsec;
}

/* ---- the configuration, mapped onto each module's settings ---- */

static void pipeline_settings(const struct pgshadow_config *c, struct pipeline_config *p)
{
	pipeline_config_default(p);
	p->tcp.max_flows = c->max_flows;
	p->tcp.max_flow_buffer = c->flow_buffer_kb * 1024;
	p->tcp.hole_timeout_ns = c->hole_timeout_ms * 1000000ULL;
	p->tcp.idle_timeout_ns = c->idle_timeout_s * 1000000000ULL;
	p->session.wire.max_body = c->max_message_kb * 1024;
	p->decode_buffer_bytes = c->decode_buffer_mb << 20;
	p->tls = c->tls;
	/* the source's rows are hashed only when the mirror's are compared with them */
	p->session.wire.keep_datarows = c->mirror_of && c->mirror_compare == REPLAY_COMPARE_ROWS;
}

static void stats_settings(const struct pgshadow_config *c, struct stats_config *s)
{
	memset(s, 0, sizeof(*s));
	s->max_databases = c->max_databases;
	s->reset_interval_ns = c->mirror_metrics_reset_interval * 1000000000ULL;
	s->mirror_enabled = c->mirror_of && c->mirror_metrics_enabled;
}

static void replay_settings(const struct pgshadow_config *c, struct replay_config *r)
{
	replay_config_default(r);
	r->mirror = c->mirror_of;
	r->queue = c->mirror_queue;
	r->queue_bytes = c->mirror_queue_mb << 20;
	r->compare_ignore = c->mirror_compare_ignore;
	r->pipeline = (uint32_t)c->mirror_pipeline;
	r->max_connections = c->mirror_max_connections;
	r->pool_wait_ms = c->mirror_pool_wait_ms;
	r->nice = (int)c->mirror_replay_nice;
	r->timeout_ms = c->mirror_timeout_ms;
	r->set_role = c->mirror_set_role;
	r->capture_port = c->port;
	r->exposure = c->live.mirror_exposure;
	r->sampling = c->mirror_sampling;
	r->aborted = c->mirror_aborted;
	r->level = c->mirror_level;
	r->replay_timing = c->mirror_replay_timing;
	r->mode = c->mirror_mode;
	r->compare = c->mirror_compare;
	r->log_mismatches = c->live.log_mismatches;
	r->databases = c->databases;
	r->n_databases = c->n_databases;
	r->max_query_stats = (uint32_t)c->max_query_stats;
}

static void capture_settings(const struct pgshadow_config *c, struct capture_config *cc)
{
	memset(cc, 0, sizeof(*cc));
	cc->port = c->port;
	cc->interfaces = c->n_interfaces ? (const char *const *)c->interfaces : NULL;
	cc->n_interfaces = c->n_interfaces;
	cc->mode = c->attach;
	cc->ringbuf_bytes = c->ringbuf_mb << 20;
	cc->wakeup_bytes = cc->ringbuf_bytes / 8;
	cc->verbose = c->verbose;
	cc->tls = c->tls;
	/* every replay connection can be timed: the pools never hold more than
	 * mirror_max_connections at once (a few more while closed ones are being replaced) */
	cc->rx_slots = c->mirror_of ? (uint32_t)c->mirror_max_connections + 16 : 0;
}

static void admin_settings(const struct pgshadow_config *c, struct admin_config *ac)
{
	admin_config_default(ac);
	ac->unix_dir = c->admin_socket_dir;
	ac->port = c->admin_port;
	ac->listen = c->admin_listen;
}

/* ---- readiness and alerts ---- */

static void readiness_settings(const struct config_live *l, struct readiness_criteria *c)
{
	readiness_criteria_default(c);
	c->max_error_rate = l->mirror_max_error_rate;
	c->max_latency_ms = (double)l->mirror_max_latency_ms;
	c->min_runtime_hours = l->mirror_min_runtime_hours;
	c->min_requests = l->mirror_min_requests;
	c->consecutive_success = l->mirror_consecutive_success;
	c->max_p99_ratio = l->mirror_max_p99_ratio;
	c->latency_floor_ms = l->mirror_latency_floor_ms;
	c->max_drop_rate = l->mirror_max_drop_rate;
	c->max_mismatch_rate = l->mirror_max_mismatch_rate;
	c->max_regressed_statements = l->mirror_max_regressed_statements;
}

/* What makes a statement regress (querystats.h), from the reloadable keys. */
static void query_thresholds(const struct config_live *l, struct querystats_config *th)
{
	querystats_config_default(th);
	th->min_calls = l->mirror_min_statement_calls;
	th->max_p99_ratio = l->mirror_max_p99_ratio;
	th->latency_floor_ms = l->mirror_latency_floor_ms;
}

/* The reasons a row regresses, as the report and /queries name them. */
static void regression_why(const struct querystats_row *q, char *out, size_t cap)
{
	snprintf(
	    out, cap, "%s%s%s%s%s%s", q->regressed & QUERYSTATS_SLOWER ? "slower" : "",
	    (q->regressed & QUERYSTATS_SLOWER) && (q->regressed & ~QUERYSTATS_SLOWER) ? "," : "",
	    q->regressed & QUERYSTATS_FAILS ? "fails_on_mirror " : "",
	    q->regressed & QUERYSTATS_FAILS ? q->mirror_only_sqlstate : "",
	    (q->regressed & QUERYSTATS_FAILS) && (q->regressed & QUERYSTATS_MISMATCH) ? "," : "",
	    q->regressed & QUERYSTATS_MISMATCH ? "mismatch" : "");
}

_Static_assert(sizeof(((struct readiness_regression *)0)->plan) == PLAN_SUMMARY_MAX,
	       "a regression's plan holds a summary");

/* The readiness input's statement part: how many regress, and the first few. */
static void readiness_statements(struct agent *a, const struct config_live *live,
				 const char *database, struct readiness_input *in)
{
	struct querystats_row rows[READINESS_TOP];
	struct querystats_config th;
	struct replay *r = atomic_load(&a->replay);
	size_t n, i, cut;

	in->regressed_statements = -1;
	in->n_top = 0;
	if (!r || !a->cfg.max_query_stats)
		return;
	query_thresholds(live, &th);
	n = replay_query_rows(r, &th, database, QUERYSTATS_SORT_IMPACT, rows, READINESS_TOP);
	in->regressed_statements = 0;
	for (i = 0; i < n && i < READINESS_TOP && rows[i].regressed; i++) {
		struct readiness_regression *g = &in->top[in->n_top++];

		memcpy(g->database, rows[i].database, sizeof(g->database)); /* both 64 */
		cut = strlen(rows[i].text);
		if (cut > sizeof(g->query) - 4) /* one line: cut at a character boundary */
			for (cut = sizeof(g->query) - 4;
			     cut > 0 && ((unsigned char)rows[i].text[cut] & 0xc0) == 0x80; cut--)
				;
		snprintf(g->query, sizeof(g->query), "%.*s%s", (int)cut, rows[i].text,
			 rows[i].text[cut] ? "..." : "");
		regression_why(&rows[i], g->why, sizeof(g->why));
		g->p99_ratio = rows[i].p99_ratio;
		g->calls = rows[i].source_calls;
		g->impact_ms = rows[i].impact_ms;
		memcpy(g->plan, rows[i].plan, sizeof(g->plan));
	}
	in->regressed_statements = (int64_t)replay_query_regressed_total(r, &th, database);
}

/*
 * The verdict now (of one database, or of all when database is NULL). tick: for the
 * gauges, on the capture thread — the per-statement scan (thousands of entries) is left
 * out unless the statements criterion judges (it is shown only in the report). Any
 * thread. -ENOENT: no such database.
 */
static int evaluate_as(struct agent *a, uint64_t now, const char *database, bool tick,
		       struct readiness_report *r)
{
	struct readiness_criteria c;
	struct readiness_input in;
	struct config_live live;

	config_shared_get(a->shared, &live);
	readiness_settings(&live, &c);
	if (!database)
		stats_readiness_input(a->st, now, &in);
	else if (stats_readiness_input_db(a->st, database, now, &in))
		return -ENOENT;
	if (!tick || c.max_regressed_statements >= 0)
		readiness_statements(a, &live, database, &in);
	else
		in.regressed_statements = -1; /* not judged: not needed for the gauges */
	readiness_evaluate(&in, &c, r);
	if (database)
		snprintf(r->database, sizeof(r->database), "%s", database);
	return 0;
}

static int evaluate(struct agent *a, uint64_t now, const char *database, struct readiness_report *r)
{
	return evaluate_as(a, now, database, false, r);
}

/*
 * Once a second on the main thread (with --mirror): the readiness gauges, and the
 * threshold alerts — one WARN line when an alert fires, one line when it clears, never
 * one per request (readiness_alerts_update keeps the state).
 */
static void readiness_tick(struct agent *a, uint64_t now)
{
	struct readiness_alert_event ev[READINESS_ALERTS];
	struct readiness_alert_config acfg;
	struct readiness_alert_input ain;
	struct readiness_report r;
	struct config_live live;
	int n, i;

	evaluate_as(a, now, NULL, true, &r);
	stats_set_readiness(a->st, r.ready, r.score);
	config_shared_get(a->shared, &live);
	acfg.error_threshold = live.mirror_error_threshold;
	acfg.latency_threshold_ms = (double)live.mirror_latency_threshold_ms;
	stats_alert_input(a->st, now, &ain);
	n = readiness_alerts_update(&a->alerts, &acfg, &ain, ev);
	for (i = 0; i < n; i++) {
		bool fired = ev[i].change == READINESS_ALERT_FIRED;

		fprintf(stderr, "pgshadow: %s: %s\n", fired ? "WARN" : "INFO", ev[i].message);
		stats_set_alert(a->st, ev[i].alert, fired);
	}
}

/* GET /readiness (the HTTP thread). */
static int http_readiness(void *ctx, const char *database, bool json, struct buf *out)
{
	struct readiness_report r;

	if (evaluate(ctx, monotonic_ns(), database, &r))
		return -ENOENT;
	if (json ? !readiness_render_json(&r, out) : !readiness_render_text(&r, out))
		return -ENOMEM;
	return 0;
}

/*
 * state_file at start: the readiness window continues where the last run left it. A
 * file this agent refuses (another version, another mirror, damaged) is set aside as
 * FILE.refused-<unix time>, said, and a new window starts.
 */
static void state_load(struct agent *a, uint64_t now)
{
	const char *path = a->cfg.state_file;
	struct stats_readiness_state s;
	char text[STATEFILE_MAX + 1], why[256], aside[PATH_MAX];
	size_t len = 0;
	ssize_t n;
	int fd;

	a->mirror_id = statefile_mirror_id(a->cfg.mirror_of);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0) {
		if (errno != ENOENT)
			fprintf(stderr, "pgshadow: state_file %s: cannot read it: %s\n", path,
				strerror(errno));
		return;
	}
	while (len < sizeof(text) && (n = read(fd, text + len, sizeof(text) - len)) != 0) {
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			break;
		len += (size_t)n;
	}
	close(fd);
	if (!statefile_decode(text, len, PGSHADOW_VERSION, a->mirror_id, &s, why, sizeof(why))) {
		stats_readiness_restore(a->st, now, &s);
		fprintf(stderr,
			"pgshadow: readiness window restored from %s: %.0f s observed, %llu "
			"requests, %llu mirrored\n",
			path, s.runtime_ns / 1e9, (unsigned long long)s.total,
			(unsigned long long)s.mirrored);
		return;
	}
	snprintf(aside, sizeof(aside), "%s.refused-%lld", path, (long long)time(NULL));
	if (rename(path, aside))
		fprintf(stderr, "pgshadow: state_file %s: %s; cannot set it aside: %s\n", path, why,
			strerror(errno));
	else
		fprintf(stderr,
			"pgshadow: state_file %s: %s; set aside as %s, a new readiness window "
			"starts\n",
			path, why, aside);
}

/* state_file: the window now, through FILE.tmp (0600), fsync and rename. A failure is
 * said once per reason, and again after a success. */
static void state_save(struct agent *a, uint64_t now)
{
	const char *path = a->cfg.state_file;
	struct stats_readiness_state s;
	char tmp[PATH_MAX];
	struct buf b;
	size_t off = 0;
	ssize_t n;
	int fd, err = 0;

	stats_readiness_save(a->st, now, &s);
	buf_init(&b, STATEFILE_MAX);
	snprintf(tmp, sizeof(tmp), "%s.tmp", path);
	if (!statefile_encode(&s, PGSHADOW_VERSION, a->mirror_id, &b)) {
		err = ENOMEM;
		goto out;
	}
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0) {
		err = errno;
		goto out;
	}
	while (off < b.len && ((n = write(fd, b.data + off, b.len - off)) > 0 || errno == EINTR))
		off += n > 0 ? (size_t)n : 0;
	if (off < b.len || fsync(fd))
		err = errno ? errno : EIO;
	if (close(fd) && !err)
		err = errno;
	if (!err && rename(tmp, path))
		err = errno;
	if (err)
		unlink(tmp);
out:
	buf_free(&b);
	if (err && err != a->state_errno)
		fprintf(stderr, "pgshadow: state_file %s: cannot write it: %s\n", path,
			strerror(err));
	a->state_errno = err;
}

/* A small file's whole text (NUL-terminated, at most 1 MiB), or NULL after saying why. */
static char *read_small_file(const char *key, const char *path)
{
	FILE *f = fopen(path, "re");
	char *text = NULL;
	size_t len = 0, cap = 0, n;

	if (!f) {
		fprintf(stderr, "pgshadow: %s %s: %s\n", key, path, strerror(errno));
		return NULL;
	}
	do {
		if (len + 4096 + 1 > cap) {
			char *grown = cap >= (1u << 20) ? NULL : realloc(text, cap + 8192);

			if (!grown) {
				fprintf(stderr, "pgshadow: %s %s: %s\n", key, path,
					cap >= (1u << 20) ? "longer than 1 MiB" : "out of memory");
				free(text);
				fclose(f);
				return NULL;
			}
			text = grown;
			cap += 8192;
		}
		n = fread(text + len, 1, 4096, f);
		len += n;
	} while (n);
	if (ferror(f)) {
		fprintf(stderr, "pgshadow: %s %s: %s\n", key, path, strerror(errno));
		free(text);
		fclose(f);
		return NULL;
	}
	fclose(f);
	text[len] = 0;
	return text;
}

/* web_tls_cert_file, web_tls_key_file, web_basic_auth_file into hc (read before any
 * privilege is dropped). 0, or -1 after saying what is wrong. */
static int web_security(const struct pgshadow_config *cfg, struct http_config *hc, char **cert,
			char **key)
{
	char err[256], *users;

	if (!!cfg->web_tls_cert_file != !!cfg->web_tls_key_file) {
		fprintf(stderr, "pgshadow: web_tls_cert_file and web_tls_key_file go together\n");
		return -1;
	}
	if (cfg->web_tls_cert_file) {
		*cert = read_small_file("web_tls_cert_file", cfg->web_tls_cert_file);
		*key = *cert ? read_small_file("web_tls_key_file", cfg->web_tls_key_file) : NULL;
		if (!*key)
			return -1;
		hc->tls_cert_pem = *cert;
		hc->tls_key_pem = *key;
	}
	if (cfg->web_basic_auth_file) {
		users = read_small_file("web_basic_auth_file", cfg->web_basic_auth_file);
		if (!users)
			return -1;
		hc->auth = webauth_parse(users, err, sizeof(err));
		explicit_bzero(users, strlen(users));
		free(users);
		if (!hc->auth) {
			fprintf(stderr, "pgshadow: web_basic_auth_file %s: %s\n",
				cfg->web_basic_auth_file, err);
			return -1;
		}
	}
	return 0;
}

/* GET / (the HTTP thread). */
static int http_landing(void *ctx, struct buf *out)
{
	struct agent *a = ctx;
	bool attached = atomic_load(&a->attached);
	struct landing l = {.version = PGSHADOW_VERSION};
	struct stats_db_row *rows;
	struct readiness_report r;
	size_t n, i;

	l.captured = attached ? a->captured : "starting: not attached yet";
	if (a->cfg.mirror_of)
		l.mirror = attached && a->mirror_desc[0] ? a->mirror_desc : "configured";
	n = stats_db_rows(a->st, NULL, 0);
	rows = calloc(n ? n : 1, sizeof(*rows));
	if (!rows)
		return -ENOMEM;
	n = stats_db_rows(a->st, rows, n);
	for (i = 0; i < n; i++)
		l.requests += rows[i].source_requests;
	free(rows);
	if (a->cfg.mirror_of) {
		evaluate(a, monotonic_ns(), NULL, &r);
		l.has_readiness = true;
		l.has_queries = a->cfg.max_query_stats > 0;
		l.ready = r.ready;
		l.score = r.score;
		l.recommendation = r.recommendation;
	}
	return landing_render(&l, out) ? 0 : -ENOMEM;
}

/* ---- the admin console's provider (the console's thread) ---- */

static int console_readiness(void *ctx, const char *database, struct buf *text)
{
	return http_readiness(ctx, database, false, text);
}

static size_t console_db_rows(void *ctx, struct stats_db_row *out, size_t cap)
{
	struct agent *a = ctx;

	return stats_db_rows(a->st, out, cap);
}

static bool add_database_row(struct admin_rows *rows, const char *db, const char *mirror_db,
			     double exposure)
{
	const char *v[3];
	char e[32];

	snprintf(e, sizeof(e), "%g", exposure);
	v[0] = db;
	v[1] = mirror_db;
	v[2] = e;
	return admin_rows_add(rows, v, 3);
}

/* The [databases] lines (their mirror database and effective exposure), then "*": every
 * other database, replayed to the database of the same name at mirror_exposure. */
static int console_databases(void *ctx, struct admin_rows *rows)
{
	struct agent *a = ctx;
	struct config_live live;
	bool ok = true;
	size_t i;

	config_shared_get(a->shared, &live);
	pthread_mutex_lock(&a->dbs_lock);
	for (i = 0; ok && i < a->n_dbs; i++) {
		const struct db_line *d = &a->dbs[i];

		ok = add_database_row(rows, d->source, d->mirror,
				      d->exposure < 0 ? live.mirror_exposure : d->exposure);
	}
	pthread_mutex_unlock(&a->dbs_lock);
	if (ok)
		add_database_row(rows, "*", "*", live.mirror_exposure);
	return 0;
}

/* Rows from a replay lister with the replay_sessions contract (fills up to cap, returns
 * how many there are): grown until all fit, at most a million. NULL on ENOMEM. */
static void *replay_rows(struct replay *r, size_t size,
			 size_t (*list)(struct replay *, void *, size_t), size_t *n)
{
	size_t cap = 256;
	void *rows = NULL;

	*n = 0;
	while (r) {
		free(rows);
		rows = calloc(cap, size);
		if (!rows)
			return NULL;
		*n = list(r, rows, cap);
		if (*n <= cap)
			break;
		if (cap >= (1u << 20)) {
			*n = cap; /* bounded: the first million */
			break;
		}
		cap = *n + *n / 4;
	}
	return rows;
}

static size_t list_sessions(struct replay *r, void *out, size_t cap)
{
	return replay_sessions(r, out, cap);
}

static size_t list_pools(struct replay *r, void *out, size_t cap)
{
	return replay_pools(r, out, cap);
}

static int console_sessions(void *ctx, struct admin_rows *rows)
{
	struct agent *a = ctx;
	struct replay_session_row *s;
	size_t n, i;

	s = replay_rows(a->replay, sizeof(*s), list_sessions, &n);
	if (!s && a->replay)
		return -ENOMEM;
	for (i = 0; i < n; i++) {
		char num[5][24];
		const char *v[8] = {num[0], s[i].database, s[i].user, s[i].state,
				    num[1], num[2],	   num[3],    num[4]};

		snprintf(num[0], sizeof(num[0]), "%llu", (unsigned long long)s[i].id);
		snprintf(num[1], sizeof(num[1]), "%u", s[i].queued);
		snprintf(num[2], sizeof(num[2]), "%llu", (unsigned long long)s[i].mirrored);
		snprintf(num[3], sizeof(num[3]), "%llu", (unsigned long long)s[i].errors);
		snprintf(num[4], sizeof(num[4]), "%llu", (unsigned long long)s[i].dropped);
		if (!admin_rows_add(rows, v, 8))
			break;
	}
	free(s);
	return 0;
}

static int console_pools(void *ctx, struct admin_rows *rows)
{
	struct agent *a = ctx;
	struct replay_pool_row *p;
	size_t n, i;

	p = replay_rows(a->replay, sizeof(*p), list_pools, &n);
	if (!p && a->replay)
		return -ENOMEM;
	for (i = 0; i < n; i++) {
		char num[7][24];
		const char *v[11] = {p[i].database, p[i].user,	  p[i].application_name,
				     num[0],	    num[1],	  num[2],
				     num[3],	    num[4],	  num[5],
				     num[6],	    "transaction"};

		snprintf(num[0], sizeof(num[0]), "%u", p[i].cl_active);
		snprintf(num[1], sizeof(num[1]), "%u", p[i].cl_waiting);
		snprintf(num[2], sizeof(num[2]), "%u", p[i].sv_active);
		snprintf(num[3], sizeof(num[3]), "%u", p[i].sv_idle);
		snprintf(num[4], sizeof(num[4]), "%u", p[i].sv_login);
		snprintf(num[5], sizeof(num[5]), "%u", p[i].sv_pinned);
		snprintf(num[6], sizeof(num[6]), "%llu", (unsigned long long)p[i].maxwait_ms);
		if (!admin_rows_add(rows, v, 11))
			break;
	}
	free(p);
	return 0;
}

/* Rows of the per-statement figures, sorted, at most cap (NULL on ENOMEM: *n = 0). */
static struct querystats_row *query_rows(struct agent *a, const char *database,
					 enum querystats_sort sort, size_t cap, size_t *n,
					 size_t *matching)
{
	struct querystats_config th;
	struct config_live live;
	struct querystats_row *rows;
	struct replay *r = atomic_load(&a->replay);

	*n = *matching = 0;
	rows = calloc(cap ? cap : 1, sizeof(*rows));
	if (!rows)
		return NULL;
	config_shared_get(a->shared, &live);
	query_thresholds(&live, &th);
	*matching = replay_query_rows(r, &th, database, sort, rows, cap);
	*n = *matching < cap ? *matching : cap;
	return rows;
}

/* A figure for the console: "" (NULL) when there is none. */
static const char *ms_text(double v, char *buf, size_t cap)
{
	if (isnan(v))
		return NULL;
	snprintf(buf, cap, "%.3f", v);
	return buf;
}

static int console_queries(void *ctx, const char *database, struct admin_rows *rows)
{
	struct agent *a = ctx;
	struct querystats_row *q;
	size_t n, matching, i;

	q = query_rows(a, database, QUERYSTATS_SORT_IMPACT, a->cfg.max_query_stats, &n, &matching);
	if (!q)
		return -ENOMEM;
	for (i = 0; i < n; i++) {
		char num[16][32], why[48], fp[17], serr[96], merr[96];
		const char *v[21];

		regression_why(&q[i], why, sizeof(why));
		querystats_classes_text(q[i].source_classes, serr, sizeof(serr));
		querystats_classes_text(q[i].mirror_classes, merr, sizeof(merr));
		snprintf(fp, sizeof(fp), "%016llx", (unsigned long long)q[i].fingerprint);
		snprintf(num[0], sizeof(num[0]), "%llu", (unsigned long long)q[i].source_calls);
		snprintf(num[1], sizeof(num[1]), "%llu", (unsigned long long)q[i].mirror_calls);
		snprintf(num[2], sizeof(num[2]), "%llu",
			 (unsigned long long)q[i].mirror_only_errors);
		snprintf(num[3], sizeof(num[3]), "%llu",
			 (unsigned long long)querystats_row_mismatched(&q[i]));
		v[0] = q[i].database;
		v[1] = q[i].text;
		v[2] = why;
		v[3] = num[0];
		v[4] = num[1];
		v[5] = ms_text(q[i].source_p50_ms, num[4], sizeof(num[4]));
		v[6] = ms_text(q[i].source_p95_ms, num[5], sizeof(num[5]));
		v[7] = ms_text(q[i].source_p99_ms, num[6], sizeof(num[6]));
		v[8] = ms_text(q[i].mirror_p50_ms, num[7], sizeof(num[7]));
		v[9] = ms_text(q[i].mirror_p95_ms, num[8], sizeof(num[8]));
		v[10] = ms_text(q[i].mirror_p99_ms, num[9], sizeof(num[9]));
		v[11] = ms_text(q[i].p99_ratio, num[10], sizeof(num[10]));
		v[12] = ms_text(q[i].extra_ms, num[11], sizeof(num[11]));
		v[13] = ms_text(q[i].impact_ms, num[12], sizeof(num[12]));
		v[14] = serr;
		v[15] = merr;
		v[16] = num[2];
		v[17] = q[i].mirror_only_sqlstate;
		v[18] = num[3];
		v[19] = q[i].fingerprint ? fp : NULL;
		v[20] = q[i].plan[0] ? q[i].plan : NULL;
		if (!admin_rows_add(rows, v, 21))
			break;
	}
	free(q);
	return 0;
}

/* GET /queries (the HTTP thread): sort, limit, database from the query string. */
static int http_queries(void *ctx, const char *database, const char *sort, const char *limit,
			struct buf *out, char *err, size_t errlen)
{
	struct agent *a = ctx;
	struct querystats_row *q;
	enum querystats_sort by = QUERYSTATS_SORT_IMPACT;
	unsigned long long lim = 100;
	size_t n, matching;
	char *end;
	bool ok;

	if (sort && !querystats_sort_parse(sort, &by)) {
		snprintf(err, errlen, "sort=%.32s: use impact, calls, ratio or errors", sort);
		return -EINVAL;
	}
	if (limit) {
		errno = 0;
		lim = strtoull(limit, &end, 10);
		if (errno || end == limit || *end || limit[0] == '-' || lim < 1 ||
		    lim > a->cfg.max_query_stats) {
			snprintf(err, errlen,
				 "limit=%.32s: a whole number from 1 to %llu "
				 "(max_query_stats)",
				 limit, (unsigned long long)a->cfg.max_query_stats);
			return -EINVAL;
		}
	}
	if (database && (!*database || strlen(database) >= QUERYSTATS_DB_MAX)) {
		snprintf(err, errlen, "database: a name of 1 to %d bytes", QUERYSTATS_DB_MAX - 1);
		return -EINVAL;
	}
	q = query_rows(a, database, by, lim < a->cfg.max_query_stats ? lim : a->cfg.max_query_stats,
		       &n, &matching);
	if (!q)
		return -ENOMEM;
	ok = querystats_render_json(q, n, matching, database, by, stats_mismatch_kind_names, out);
	free(q);
	return ok ? 0 : -ENOMEM;
}

/* /metrics: the per-statement figures (the scraping thread). */
static size_t metrics_queries(void *ctx, uint64_t v[STATS_QS_MAX], char (*names)[64],
			      uint64_t *regressed, size_t cap)
{
	struct agent *a = ctx;
	struct querystats_config th;
	struct querystats_counts cnt;
	struct config_live live;
	struct replay *r = atomic_load(&a->replay);
	size_t n;

	replay_query_counts(r, &cnt);
	v[STATS_QS_ENTRIES] = cnt.entries;
	v[STATS_QS_EVICTIONS] = cnt.evictions;
	v[STATS_QS_UNPARSED] = cnt.unparsed_calls;
	config_shared_get(a->shared, &live);
	query_thresholds(&live, &th);
	n = replay_query_regressed(r, &th, names, regressed, cap);
	return n < cap ? n : cap;
}

/* --explain-regressions: the current top regressions (the explain thread). */
static size_t explain_top(void *ctx, struct querystats_row *out, size_t cap)
{
	struct agent *a = ctx;
	struct querystats_config th;
	struct config_live live;
	size_t n;

	config_shared_get(a->shared, &live);
	query_thresholds(&live, &th);
	n = replay_query_rows(atomic_load(&a->replay), &th, NULL, QUERYSTATS_SORT_IMPACT, out, cap);
	return n < cap ? n : cap;
}

static void explain_set_plan(void *ctx, const char *database, uint64_t fingerprint,
			     const char *plan)
{
	struct agent *a = ctx;

	replay_query_set_plan(atomic_load(&a->replay), database, fingerprint, plan);
}

static int start_explain(struct agent *a, struct capture *c)
{
	struct explain_config ec = {
	    .mirror = a->cfg.mirror_of,
	    .cap = c,
	    .capture_port = (uint16_t)a->cfg.port,
	    .top = explain_top,
	    .set_plan = explain_set_plan,
	    .ctx = a,
	};
	char err[256];

	if (!a->cfg.max_query_stats) {
		fprintf(stderr, "pgshadow: --explain-regressions needs max_query_stats above 0 "
				"(the statements it explains)\n");
		return -1;
	}
	a->explain = explain_start(&ec, err, sizeof(err));
	if (!a->explain) {
		fprintf(stderr, "pgshadow: %s\n", err);
		return -1;
	}
	replay_set_explain(a->replay, a->explain);
	return 0;
}

static int console_reset(void *ctx)
{
	struct agent *a = ctx;

	stats_readiness_reset(a->st, monotonic_ns());
	replay_query_reset(atomic_load(&a->replay));
	fprintf(stderr, "pgshadow: RESET MIRROR STATS: the readiness window restarts\n");
	return 0;
}

/* Copies cfg.databases for the console (main thread; at start and after a reload). */
static int publish_databases(struct agent *a)
{
	struct db_line *dbs = NULL;
	size_t i, n = a->cfg.n_databases;

	if (n) {
		dbs = calloc(n, sizeof(*dbs));
		if (!dbs)
			return -ENOMEM;
	}
	for (i = 0; i < n; i++) {
		const struct replay_db_map *m = &a->cfg.databases[i];

		snprintf(dbs[i].source, sizeof(dbs[i].source), "%s", m->source_db);
		snprintf(dbs[i].mirror, sizeof(dbs[i].mirror), "%s",
			 m->mirror_dbname ? m->mirror_dbname : m->source_db);
		dbs[i].exposure = m->exposure;
	}
	pthread_mutex_lock(&a->dbs_lock);
	free(a->dbs);
	a->dbs = dbs;
	a->n_dbs = n;
	pthread_mutex_unlock(&a->dbs_lock);
	return 0;
}

/* Starts the console unless neither a socket directory nor a TCP address is set. A
 * failure stops the agent at start (exit 2, before anything is attached): an operator
 * who configured a console expects it, and a second agent must choose its own port. */
/*
 * Loading and attaching the BPF program needs root, or CAP_BPF with CAP_PERFMON (or
 * CAP_SYS_ADMIN) and CAP_NET_ADMIN. Said first: without them every later step (the
 * admin socket in /run, the program load) fails with a message about itself.
 */
static bool privileged(void)
{
	struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3};
	struct __user_cap_data_struct d[2] = {{0}};
	static const struct {
		int cap;
		const char *name;
	} need[] = {
	    {CAP_BPF, "CAP_BPF"}, {CAP_PERFMON, "CAP_PERFMON"}, {CAP_NET_ADMIN, "CAP_NET_ADMIN"}};
	char missing[64] = "";
	uint64_t eff;
	size_t i;

	if (syscall(SYS_capget, &hdr, d))
		return true; /* cannot tell: the load will say */
	eff = (uint64_t)d[1].effective << 32 | d[0].effective;
	for (i = 0; i < sizeof(need) / sizeof(need[0]); i++) {
		bool has = eff >> need[i].cap & 1;

		if (need[i].cap != CAP_NET_ADMIN && eff >> CAP_SYS_ADMIN & 1)
			has = true;
		if (!has)
			snprintf(missing + strlen(missing), sizeof(missing) - strlen(missing),
				 "%s%s", *missing ? ", " : "", need[i].name);
	}
	if (!*missing)
		return true;
	fprintf(stderr,
		"pgshadow: not privileged: loading and attaching the BPF program needs root, or "
		"CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (uid %u lacks %s)\n",
		(unsigned int)geteuid(), missing);
	return false;
}

static int capset_self(uint64_t permitted, uint64_t effective)
{
	struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3};
	struct __user_cap_data_struct d[2] = {
	    {.permitted = (uint32_t)permitted, .effective = (uint32_t)effective},
	    {.permitted = (uint32_t)(permitted >> 32), .effective = (uint32_t)(effective >> 32)},
	};

	return (int)syscall(SYS_capset, &hdr, d);
}

/*
 * --user: everything privileged is done (the program attached, its maps and ring mapped,
 * sockets bound, the replay thread's nice value set): run on as pw with no capability,
 * every thread (glibc applies set*id to all of them). With --attach tc, the capturing
 * thread keeps CAP_NET_ADMIN permitted but not effective, to remove its filters at
 * exit (regain_net_admin). Returns 0, or -1 after saying why.
 */
static int drop_privileges(const struct passwd *pw, bool keep_net_admin)
{
	if (keep_net_admin && prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0))
		goto fail;
	if (setgroups(0, NULL) || setresgid(pw->pw_gid, pw->pw_gid, pw->pw_gid) ||
	    setresuid(pw->pw_uid, pw->pw_uid, pw->pw_uid))
		goto fail;
	if (keep_net_admin &&
	    (capset_self(1ull << CAP_NET_ADMIN, 0) || prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0)))
		goto fail;
	if (pw->pw_uid != 0 && !setresuid(0, 0, 0)) {
		errno = EPERM; /* it could become root again: not dropped */
		goto fail;
	}
	fprintf(stderr, "pgshadow: running as %s (uid %u), no capabilities%s\n", pw->pw_name,
		(unsigned int)pw->pw_uid,
		keep_net_admin ? " but CAP_NET_ADMIN permitted for the tc clean-up" : "");
	return 0;
fail:
	fprintf(stderr, "pgshadow: --user %s: cannot drop privileges: %s\n", pw->pw_name,
		strerror(errno));
	return -1;
}

/* --attach tc after --user: what removing the filters needs, for the exit only. */
static void regain_net_admin(void)
{
	if (capset_self(1ull << CAP_NET_ADMIN, 1ull << CAP_NET_ADMIN))
		fprintf(stderr,
			"pgshadow: WARN: cannot regain CAP_NET_ADMIN to remove the tc "
			"filters: %s (the next start replaces them)\n",
			strerror(errno));
}

/* admin_users / stats_users: comma-separated OS user names to uids. -1 after saying
 * which name is unknown — unless roles may be named too (admin_auth_file: the TCP
 * console's roles), then a name that is no OS user is a role only. */
static int console_uids(const char *key, const char *list, uid_t *out, size_t *n, bool roles)
{
	char *copy, *name, *save = NULL;
	struct passwd *pw;
	int rc = 0;

	*n = 0;
	if (!list || !*list)
		return 0;
	copy = strdup(list);
	if (!copy)
		return -1;
	for (name = strtok_r(copy, ", ", &save); name; name = strtok_r(NULL, ", ", &save)) {
		errno = 0;
		pw = getpwnam(name);
		if (!pw && roles)
			continue;
		if (!pw || *n == ADMIN_USERS_MAX) {
			fprintf(stderr, "pgshadow: %s: %s: %s\n", key, name,
				!pw ? (errno ? strerror(errno) : "no such user")
				    : "more users than the console keeps (64)");
			rc = -1;
			break;
		}
		out[(*n)++] = pw->pw_uid;
	}
	free(copy);
	return rc;
}

/* A comma-separated list into at most ADMIN_USERS_MAX names (pointers into copy). */
static size_t split_names(char *copy, const char **out)
{
	char *name, *save = NULL;
	size_t n = 0;

	for (name = strtok_r(copy, ", ", &save); name && n < ADMIN_USERS_MAX;
	     name = strtok_r(NULL, ", ", &save))
		out[n++] = name;
	return n;
}

/*
 * admin_auth_file: the TCP console's users (SCRAM verifiers, or passwords made into
 * verifiers with random salts), and the roles of admin_users and stats_users. Read once,
 * at start, before privileges are dropped (the file may be root's alone). -1 after
 * saying what is wrong, where.
 */
static int load_console_auth(struct agent *a, struct admin_config *ac)
{
	static struct scram_users users;
	static struct admin_auth auth;
	static const char *admin_roles[ADMIN_USERS_MAX], *stats_roles[ADMIN_USERS_MAX];
	static char *admin_copy, *stats_copy;
	const char *path = a->cfg.admin_auth_file;
	char err[256], *text = NULL;
	uint8_t *salts = NULL;
	size_t len = 0, lines = 1, i;
	FILE *f = fopen(path, "re");
	int rc = -1;

	if (!f) {
		fprintf(stderr, "pgshadow: admin_auth_file %s: %s\n", path, strerror(errno));
		return -1;
	}
	text = calloc(1, 1u << 20);
	if (text)
		len = fread(text, 1, (1u << 20) - 1, f);
	fclose(f);
	if (!text || len == (1u << 20) - 1) {
		fprintf(stderr, "pgshadow: admin_auth_file %s: %s\n", path,
			text ? "larger than 1 MiB" : "out of memory");
		goto out;
	}
	for (i = 0; i < len; i++)
		lines += text[i] == '\n';
	salts = malloc(lines * SCRAM_SALT_MAX);
	if (!salts ||
	    getrandom(salts, lines * SCRAM_SALT_MAX, 0) != (ssize_t)(lines * SCRAM_SALT_MAX)) {
		fprintf(stderr, "pgshadow: admin_auth_file %s: no random salts\n", path);
		goto out;
	}
	if (!scram_users_parse(text, salts, lines, &users, err, sizeof(err))) {
		fprintf(stderr, "pgshadow: admin_auth_file %s, %s\n", path, err);
		goto out;
	}
	if (!users.n) {
		fprintf(stderr,
			"pgshadow: admin_auth_file %s lists no user (\"name\" \"secret\" "
			"lines)\n",
			path);
		goto out;
	}
	admin_copy = strdup(a->cfg.admin_users ? a->cfg.admin_users : "");
	stats_copy = strdup(a->cfg.stats_users ? a->cfg.stats_users : "");
	if (!admin_copy || !stats_copy)
		goto out;
	auth.users = &users;
	auth.admin_roles = admin_roles;
	auth.n_admin_roles = split_names(admin_copy, admin_roles);
	auth.stats_roles = stats_roles;
	auth.n_stats_roles = split_names(stats_copy, stats_roles);
	ac->auth = &auth;
	rc = 0;
out:
	if (text)
		explicit_bzero(text, 1u << 20);
	free(text);
	free(salts);
	return rc;
}

static int start_console(struct agent *a, struct admin **out)
{
	static const char version[] = "pgshadow " PGSHADOW_VERSION;
	struct admin_provider p = {
	    .ctx = a,
	    .version = version,
	    .db_rows = console_db_rows,
	};
	struct admin_config ac;
	char err[512];

	static uid_t admin_uids[ADMIN_USERS_MAX], stats_uids[ADMIN_USERS_MAX];

	*out = NULL;
	admin_settings(&a->cfg, &ac);
	bool roles = a->cfg.admin_auth_file != NULL;

	if (console_uids("admin_users", a->cfg.admin_users, admin_uids, &ac.n_admin_uids, roles) ||
	    console_uids("stats_users", a->cfg.stats_users, stats_uids, &ac.n_stats_uids, roles))
		return -1;
	ac.admin_uids = admin_uids;
	ac.stats_uids = stats_uids;
	if (roles && load_console_auth(a, &ac))
		return -1;
	if (!ac.unix_dir && !ac.listen)
		return 0;
	if (a->cfg.mirror_of) {
		p.readiness = console_readiness;
		p.databases = console_databases;
		p.sessions = console_sessions;
		p.pools = console_pools;
		p.reset = console_reset;
		if (a->cfg.max_query_stats)
			p.queries = console_queries;
	}
	*out = admin_start(&ac, &p, err, sizeof(err));
	if (!*out) {
		fprintf(stderr,
			"pgshadow: %s (see --admin-socket-dir, --admin-port and --admin-listen; "
			"an empty --admin-socket-dir turns the socket off)\n",
			err);
		return -1;
	}
	return 0;
}

/* ---- SIGHUP ---- */

static void on_config_change(void *ctx, const struct config_change *c)
{
	struct agent *a = ctx;
	char line[1024];

	if (c->is_exposure && c->applied && a->replay)
		replay_set_exposure(a->replay, c->db, c->exposure);
	config_change_describe(c, line, sizeof(line));
	fprintf(stderr, "pgshadow: reload: %s\n", line);
}

/* Re-reads the file with the same flags on top, applies what can change at run time and
 * logs one line per difference. A bad file changes nothing. Main thread. */
static void reload(struct agent *a)
{
	struct pgshadow_config next;
	uint64_t log_mismatches = a->cfg.live.log_mismatches;
	char err[1024];

	if (!a->cl.config_file) {
		fprintf(stderr, "pgshadow: reload: no configuration file (--config), nothing to "
				"reload\n");
		return;
	}
	if (config_load(&next, &a->cl, err, sizeof(err))) {
		fprintf(stderr, "pgshadow: reload failed, nothing changed: %s\n", err);
		return;
	}
	if (!config_reload(&a->cfg, &next, on_config_change, a))
		fprintf(stderr, "pgshadow: reload: %s: no changes\n", a->cl.config_file);
	config_shared_set(a->shared, &a->cfg.live);
	if (a->replay && a->cfg.live.log_mismatches != log_mismatches)
		replay_set_log_mismatches(a->replay, (uint32_t)a->cfg.live.log_mismatches);
	if (publish_databases(a))
		fprintf(stderr, "pgshadow: reload: SHOW MIRROR DATABASES keeps the old lines: "
				"out of memory\n");
	config_free(&next);
}

static void on_record(void *ctx, const struct capture_event *ev, const uint8_t *data)
{
	pipeline_record(ctx, ev, data);
}

static void *mirror_session_open(void *sink, const struct session_info *s)
{
	return replay_session_open(sink, s);
}

static void mirror_session_identified(void *sink, void *handle, const struct session_info *s)
{
	replay_session_identified(sink, handle, s);
}

static void mirror_request(void *sink, void *handle, struct stats_db *db,
			   const struct session_request *r)
{
	replay_submit(sink, handle, db, r);
}

static void mirror_session_close(void *sink, void *handle)
{
	replay_session_close(sink, handle);
}

static void mirror_session_event(void *sink, void *handle, const struct session_info *s,
				 enum session_event ev)
{
	replay_session_event(sink, handle, s, ev);
}

static void want_identity(void *ctx, uint64_t flow_id, const struct tcpstream_addr *client)
{
	resolver_request(ctx, flow_id, client);
}

static bool want_statement(void *ctx, uint64_t flow_id, const struct tcpstream_addr *client)
{
	return resolver_request_statement(ctx, flow_id, client);
}

/* Whether --mirror is another cluster than the source (selfcheck.c): false refuses to
 * start. A check that cannot be made is logged, not fatal. Before capture attaches: the
 * check's connections are not source traffic. */
static bool mirror_not_source(struct agent *a)
{
	struct selfcheck_config sc = {
	    .mirror = a->cfg.mirror_of,
	    .source_dsn = a->cfg.source_dsn,
	    .port = (uint16_t)a->cfg.port,
	};
	struct selfcheck_probe m = {0};
	char msg[1024];
	enum selfcheck_verdict v = selfcheck_mirror(&sc, msg, sizeof(msg), &m);

	if (m.reached && v != SELFCHECK_SOURCE)
		fprintf(stderr, "pgshadow: mirror: PostgreSQL %s at %s\n", m.version, m.where);
	snprintf(a->mirror_desc, sizeof(a->mirror_desc), m.reached ? "PostgreSQL %s at %s" : "%s%s",
		 m.reached ? m.version : "not reached at start (replay keeps trying)",
		 m.reached ? m.where : "");
	if (msg[0])
		fprintf(stderr, "pgshadow: %s\n", msg);
	return v != SELFCHECK_SOURCE;
}

/* One statement-text answer to the pipeline; frees its text. */
static void apply_statement(struct pipeline *p, struct resolver_result *res)
{
	static const enum pipeline_stmt_status status[] = {
	    [RESOLVER_STMT_FOUND] = PIPELINE_STMT_FOUND,
	    [RESOLVER_STMT_NOT_FOUND] = PIPELINE_STMT_NOT_FOUND,
	    [RESOLVER_STMT_FAILED] = PIPELINE_STMT_FAILED,
	};
	struct pipeline_statement a = {
	    .flow_id = res->flow_id,
	    .status = status[res->status],
	    .text = res->text,
	    .len = res->text_len,
	    .truncated = res->truncated,
	    .lo_ns = res->lo_ns,
	    .hi_ns = res->hi_ns,
	};

	pipeline_statement(p, &a);
	free(res->text);
}

/* Hands finished pg_stat_activity lookups to their sessions (capture thread). now: the
 * capture clock up to which every record has been fed. Every pass of the loop, not at the
 * tick: a session's next Execute should find its statement's text already defined. */
static void apply_lookups(struct resolver *r, struct pipeline *p, uint64_t now)
{
	struct resolver_result res[64];
	int n, i;

	if (!r)
		return;
	while ((n = resolver_results(r, res, 64, now)) > 0)
		for (i = 0; i < n; i++)
			if (res[i].kind == RESOLVER_STATEMENT)
				apply_statement(p, &res[i]);
			else if (res[i].found)
				pipeline_identify(p, res[i].flow_id, res[i].database, res[i].user,
						  now);
}

static void print_stats(const uint64_t *k, const struct tcpstream_stats *s,
			const struct session_stats *ss, uint64_t dump_errs, uint64_t tls_orphans)
{
	fprintf(
	    stderr,
	    "pgshadow: stats packets=%llu bytes=%llu records=%llu ringbuf_drops=%llu "
	    "truncated=%llu copy_errors=%llu malformed=%llu excluded=%llu local_client=%llu "
	    "pure_acks=%llu flows=%llu flows_refused=%llu flows_midstream=%llu "
	    "flows_expired=%llu views_merged=%llu delivered=%llu dup_segments=%llu "
	    "ooo_segments=%llu buffer_cap_hits=%llu hole_timeouts=%llu late_segments=%llu "
	    "gaps=%llu gap_bytes=%llu dump_errors=%llu sessions=%llu requests=%llu "
	    "resyncs=%llu encrypted=%llu replication=%llu abandoned=%llu rst_ignored=%llu "
	    "late_bytes_undelivered=%llu flows_reopened=%llu tail_gaps=%llu "
	    "user_excluded=%llu tls_calls=%llu tls_unmapped=%llu tls_orphans=%llu\n",
	    (unsigned long long)k[CAPTURE_CNT_PACKETS], (unsigned long long)k[CAPTURE_CNT_BYTES],
	    (unsigned long long)k[CAPTURE_CNT_RECORDS], (unsigned long long)k[CAPTURE_CNT_RB_DROPS],
	    (unsigned long long)k[CAPTURE_CNT_TRUNCATED],
	    (unsigned long long)k[CAPTURE_CNT_COPY_ERRORS],
	    (unsigned long long)k[CAPTURE_USER_MALFORMED],
	    (unsigned long long)k[CAPTURE_CNT_EXCLUDED],
	    (unsigned long long)k[CAPTURE_CNT_LOCAL_CLIENT],
	    (unsigned long long)k[CAPTURE_CNT_PURE_ACKS], (unsigned long long)s->flows_opened,
	    (unsigned long long)s->flows_refused, (unsigned long long)s->flows_midstream,
	    (unsigned long long)s->flows_expired, (unsigned long long)s->views_merged,
	    (unsigned long long)s->bytes_delivered, (unsigned long long)s->dup_segments,
	    (unsigned long long)s->ooo_segments, (unsigned long long)s->buffer_cap_hits,
	    (unsigned long long)s->hole_timeouts, (unsigned long long)s->late_segments,
	    (unsigned long long)s->gaps, (unsigned long long)s->gap_bytes,
	    (unsigned long long)dump_errs, (unsigned long long)ss->sessions_opened,
	    (unsigned long long)ss->requests, (unsigned long long)ss->resyncs,
	    (unsigned long long)ss->encrypted, (unsigned long long)ss->replication,
	    (unsigned long long)ss->abandoned, (unsigned long long)s->rst_ignored,
	    (unsigned long long)s->late_bytes_undelivered, (unsigned long long)s->flows_reopened,
	    (unsigned long long)s->tail_gaps, (unsigned long long)k[CAPTURE_USER_EXCLUDED],
	    (unsigned long long)k[CAPTURE_CNT_TLS_CALLS],
	    (unsigned long long)k[CAPTURE_CNT_TLS_UNMAPPED], (unsigned long long)tls_orphans);
}

/* Polls until a signal; ticks the pipeline on capture time while records flow and on
 * the clock when the ring is empty (then nothing older is still on its way). */
/* The resolver's and the classification cache's counters to /metrics (capture thread). */
static void publish_aux(struct agent *a, struct resolver *r)
{
	struct resolver_stats rs;
	struct fingerprint_stats fs;

	if (r) {
		resolver_stats(r, &rs);
		stats_set_resolver(a->st, (const uint64_t[STATS_RESOLVER_MAX]){
					      [STATS_RESOLVER_RESOLVED] = rs.resolved,
					      [STATS_RESOLVER_NOT_FOUND] = rs.not_found,
					      [STATS_RESOLVER_QUEUE_FULL] = rs.queue_full,
					      [STATS_RESOLVER_QUERIES] = rs.queries,
					      [STATS_RESOLVER_QUERY_ERRORS] = rs.query_errors,
					      [STATS_RESOLVER_RECONNECTS] = rs.reconnects});
	}
	if (a->replay) {
		replay_fingerprint_stats(a->replay, &fs);
		stats_set_fingerprint(
		    a->st, (const uint64_t[STATS_FP_MAX]){[STATS_FP_HITS] = fs.hits,
							  [STATS_FP_MISSES] = fs.misses,
							  [STATS_FP_EVICTIONS] = fs.evictions,
							  [STATS_FP_PARSE_ERRORS] = fs.parse_errors,
							  [STATS_FP_TOO_DEEP] = fs.too_deep});
	}
}

/* --tls on: the probed servers (a restarted postmaster is probed again); off: one hint
 * when encrypted sessions go undecoded. */
static void tls_tick(struct agent *a, struct pipeline *p, uint64_t clock)
{
	if (a->tls) {
		pipeline_set_tls_servers(p, tlsprobe_tick(a->tls, clock));
		return;
	}
	if (!a->tls_hinted &&
	    atomic_load_explicit(&stats_capture(a->st)->undecoded_tls_off, memory_order_relaxed)) {
		a->tls_hinted = true;
		fprintf(stderr,
			"pgshadow: TLS sessions are counted but not decoded "
			"(mirror_capture_undecoded_sessions_total{reason=\"tls_off\"}): "
			"--tls on decodes them through uprobes on the server's libssl (said "
			"once)\n");
	}
}

static int run(struct agent *a, struct capture *c, struct pipeline *p, struct resolver *r)
{
	uint64_t k[CAPTURE_COUNTERS] = {};
	uint64_t last_tick = 0, now, clock, window_start = monotonic_ns(), last_record = 0;
	uint64_t recent = 0, before = 0; /* records in this sparse window and the previous */
	const char *limit, *meaning;
	int n;

	while (!exiting) {
		if (reload_requested) {
			reload_requested = 0;
			reload(a);
		}
		clock = monotonic_ns();
		/* busy: poll every POLL_MIRROR_MS or POLL_OBSERVE_MS (records come without
		 * wakeups); sparse: sleep until the next record wakes us, or the tick is due (a
		 * second when nothing came for IDLE_AFTER_NS) */
		if (clock - window_start >= SPARSE_WINDOW_NS) {
			before = clock - window_start < 2 * SPARSE_WINDOW_NS ? recent : 0;
			recent = 0;
			window_start = clock;
		}
		if (recent + before < SPARSE_RECORDS)
			n = capture_poll_idle(
			    c, clock - last_record > IDLE_AFTER_NS ? IDLE_POLL_MS : SPARSE_POLL_MS);
		else
			n = capture_poll(c, a->replay ? POLL_MIRROR_MS : POLL_OBSERVE_MS);
		if (n > 0) {
			recent += (uint64_t)n;
			last_record = monotonic_ns();
		}
		if (n == -EINTR)
			continue;
		if (n < 0) {
			fprintf(stderr, "pgshadow: ring buffer poll failed: %s\n", strerror(-n));
			return EXIT_RUNTIME;
		}
		clock = monotonic_ns();
		if (a->replay && a->cfg.state_file && clock - a->last_state_ns >= STATE_SAVE_NS) {
			state_save(a, clock);
			a->last_state_ns = clock;
		}
		if (a->replay && clock - a->last_readiness_ns >= READINESS_INTERVAL_NS) {
			readiness_tick(a, clock);
			a->last_readiness_ns = clock;
		}
		now = n > 0 ? pipeline_last_ts(p) : clock;
		apply_lookups(r, p, now);
		if (now - last_tick >= TICK_INTERVAL_NS || now < last_tick) {
			capture_read_counters(c, k);
			pipeline_tick(p, now, k);
			last_tick = now;
			publish_aux(a, r);
			tls_tick(a, p, clock);
			while (stats_limit_first_hit(a->st, &limit, &meaning))
				fprintf(
				    stderr,
				    "pgshadow: WARN: limit %s reached: %s (counted in "
				    "mirror_capture_limit_hits_total{limit=\"%s\"}; said once)\n",
				    limit, meaning, limit);
		}
		replay_wake(a->replay); /* once per batch: what the records above submitted */
	}
	return 0;
}

/* The command line and the configuration; returns -1 to run, else an exit status. */
static int configure(struct agent *a, int argc, char **argv)
{
	char err[1024];

	if (config_parse_args(argc, argv, &a->cl, err, sizeof(err))) {
		fprintf(stderr, "pgshadow: %s\n", err);
		return EXIT_USAGE;
	}
	switch (a->cl.action) {
	case CONFIG_HELP:
		config_usage(stdout);
		return 0;
	case CONFIG_VERSION:
		printf("pgshadow %s\n", PGSHADOW_VERSION);
		return 0;
	default:
		break;
	}
	if (config_load(&a->cfg, &a->cl, err, sizeof(err))) {
		fprintf(stderr, "pgshadow: %s\n", err);
		return EXIT_USAGE;
	}
	if (a->cl.action == CONFIG_PRINT_CONFIG) {
		config_print(stdout, &a->cfg);
		return 0;
	}
	a->shared = config_shared_new(&a->cfg.live);
	if (!a->shared || publish_databases(a)) {
		fprintf(stderr, "pgshadow: %s\n", strerror(errno ? errno : ENOMEM));
		return EXIT_RUNTIME;
	}
	return -1;
}

/* ---- `pgshadow readiness`: a client of a running agent ---- */

/* "name=value&" with value percent-encoded (RFC 3986 unreserved kept); -1 when value is
 * empty or longer than a database name. */
static int url_query_value(const char *name, const char *value, char *out, size_t cap)
{
	static const char hex[] = "0123456789ABCDEF";
	size_t n, len = strlen(value);
	const unsigned char *v;

	if (!len || len > 63)
		return -1;
	n = (size_t)snprintf(out, cap, "%s=", name);
	for (v = (const unsigned char *)value; *v && n + 4 < cap; v++) {
		if (isalnum(*v) || strchr("-._~", *v)) {
			out[n++] = (char)*v;
		} else {
			out[n++] = '%';
			out[n++] = hex[*v >> 4];
			out[n++] = hex[*v & 15];
		}
	}
	if (n + 2 > cap)
		return -1;
	out[n++] = '&';
	out[n] = '\0';
	return 0;
}

static const char readiness_usage[] =
    "Usage: pgshadow readiness [--url URL | --config FILE] [--database NAME] [--json]\n"
    "       pgshadow readiness --prometheus URL --hosts HOST:PORT[,HOST:PORT...]\n"
    "\n"
    "Prints the migration-readiness report of a running agent (its GET /readiness) and\n"
    "exits with its verdict, so a cut-over script can gate on it. Needs no privileges.\n"
    "With --prometheus it judges a fleet instead: READY only when every host of --hosts\n"
    "is (its target up, its agent READY); a host Prometheus has no verdict of (never\n"
    "scraped, down or stale) counts as NOT READY.\n"
    "\n"
    "      --url URL          the agent's readiness URL (default " READINESS_DEFAULT_URL ")\n"
    "      --config FILE      the agent's configuration file: use its metrics_listen\n"
    "      --database NAME    the report of one source database (its own counts and\n"
    "                         statements, the same criteria): ready before the others?\n"
    "      --json             print the report as JSON instead of text\n"
    "      --prometheus URL   a Prometheus that scrapes the fleet (http://host:9090)\n"
    "      --hosts LIST       the fleet: instance labels (HOST:PORT) that must be READY\n"
    "  -h, --help             print this help and exit\n"
    "\n"
    "Exit status: 0 READY, 1 NOT READY, 2 cannot tell: the agent (or Prometheus) cannot\n"
    "be reached, answered something that is not a readiness report, or runs without\n"
    "--mirror (also for a bad option), with one line on stderr saying why.\n"
    "\n"
    "Examples:\n"
    "  pgshadow readiness && ./cut-over.sh\n"
    "  pgshadow readiness --url http://10.0.0.5:9930/readiness --json\n"
    "  pgshadow readiness --database app && ./move-app.sh\n"
    "  pgshadow readiness --prometheus http://prom:9090 --hosts db1:9930,db2:9930,db3:9930\n";

/* One instant query of Prometheus (http://host:port, no path) into out; exit status
 * EXIT_NO_ANSWER after saying why, else 0. */
static int prometheus_vector(const char *base, const char *query, struct fleet_sample *out, int *n)
{
	char url[2048], err[512];
	unsigned int status = 0;
	struct buf body;
	int rc;

	if ((size_t)snprintf(url, sizeof(url), "%s%sapi/v1/query?query=%s", base,
			     base[strlen(base) - 1] == '/' ? "" : "/", query) >= sizeof(url)) {
		fprintf(stderr, "pgshadow readiness: --prometheus URL too long\n");
		return EXIT_NO_ANSWER;
	}
	buf_init(&body, HTTP_GET_MAX_BODY + 1);
	rc = http_get(url, "application/json", READINESS_TIMEOUT_MS, &status, &body, err,
		      sizeof(err));
	if (rc) {
		fprintf(stderr, "pgshadow readiness: cannot reach Prometheus at %s: %s\n", base,
			err);
	} else if (status != 200) {
		fprintf(stderr, "pgshadow readiness: Prometheus at %s answered HTTP %u to %s\n",
			base, status, query);
		rc = -1;
	} else if ((*n = fleet_vector(body.data ? body.data : "", out, FLEET_HOSTS_MAX, err,
				      sizeof(err))) < 0) {
		fprintf(stderr, "pgshadow readiness: Prometheus at %s, query %s: %s\n", base, query,
			err);
		rc = -1;
	}
	buf_free(&body);
	return rc ? EXIT_NO_ANSWER : 0;
}

/* --prometheus URL --hosts LIST: the fleet's verdict. */
static int fleet_command(const char *base, char *hosts)
{
	static struct fleet_sample up[FLEET_HOSTS_MAX], ready[FLEET_HOSTS_MAX];
	static const char *list[FLEET_HOSTS_MAX];
	static struct fleet_host out[FLEET_HOSTS_MAX];
	size_t n = 0;
	int n_up = 0, n_ready = 0, rc;
	struct buf text;
	bool all;
	char *h;

	for (h = strtok(hosts, ", "); h; h = strtok(NULL, ", ")) {
		if (n == FLEET_HOSTS_MAX) {
			fprintf(stderr, "pgshadow readiness: more than %d --hosts\n",
				FLEET_HOSTS_MAX);
			return EXIT_NO_ANSWER;
		}
		list[n++] = h;
	}
	if (!n) {
		fprintf(stderr, "pgshadow readiness: --hosts names no host\n");
		return EXIT_NO_ANSWER;
	}
	rc = prometheus_vector(base, "up", up, &n_up);
	if (!rc)
		rc = prometheus_vector(base, "mirror_readiness_ready", ready, &n_ready);
	if (rc)
		return rc;
	all = fleet_decide(list, n, up, (size_t)n_up, ready, (size_t)n_ready, out);
	buf_init(&text, 1u << 20);
	if (fleet_render_text(out, n, all, &text))
		fwrite(text.data, 1, text.len, stdout);
	buf_free(&text);
	if (fflush(stdout)) {
		fprintf(stderr, "pgshadow readiness: cannot write the report: %s\n",
			strerror(errno));
		return EXIT_NO_ANSWER;
	}
	return all ? EXIT_READY : EXIT_NOT_READY;
}

/* The agent's URL from its configuration file (metrics_listen). */
static int url_from_config(const char *file, char *url, size_t len)
{
	static struct config_cmdline cl; /* large: every flag */
	struct pgshadow_config cfg;
	char err[1024];

	memset(&cl, 0, sizeof(cl));
	cl.action = CONFIG_PRINT_CONFIG; /* the port is not needed to find the agent */
	cl.config_file = file;
	if (config_load(&cfg, &cl, err, sizeof(err))) {
		fprintf(stderr, "pgshadow readiness: %s\n", err);
		return -1;
	}
	snprintf(url, len, "http://%s/readiness", cfg.metrics_listen);
	config_free(&cfg);
	return 0;
}

/* Fetches url?format=json, prints the report (text rendered from that very answer, or the
 * JSON) and returns the exit status. */
static int readiness_command(int argc, char **argv)
{
	static const struct option opts[] = {
	    {"url", required_argument, NULL, 'u'},
	    {"config", required_argument, NULL, 'c'},
	    {"json", no_argument, NULL, 'j'},
	    {"database", required_argument, NULL, 'd'},
	    {"prometheus", required_argument, NULL, 'p'},
	    {"hosts", required_argument, NULL, 'H'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	struct readiness_report r;
	const char *url = READINESS_DEFAULT_URL, *config = NULL, *host, *prometheus = NULL;
	char *hosts = NULL;
	bool url_set = false;
	const char *database = NULL;
	char from_config[320], fetch[2048], err[512], dbq[200];
	struct buf body, text;
	unsigned int status = 0;
	bool json = false;
	int c, rc = EXIT_NO_ANSWER;

	opterr = 0;
	optind = 1;
	while ((c = getopt_long(argc, argv, ":h", opts, NULL)) != -1) {
		switch (c) {
		case 'u':
			url = optarg;
			url_set = true;
			break;
		case 'p':
			prometheus = optarg;
			break;
		case 'H':
			hosts = optarg;
			break;
		case 'c':
			config = optarg;
			break;
		case 'j':
			json = true;
			break;
		case 'd':
			database = optarg;
			break;
		case 'h':
			fputs(readiness_usage, stdout);
			return 0;
		case ':':
			fprintf(stderr, "pgshadow readiness: %s needs a value (see --help)\n",
				argv[optind - 1]);
			return EXIT_NO_ANSWER;
		default:
			fprintf(stderr, "pgshadow readiness: unknown option '%s' (see --help)\n",
				argv[optind - 1]);
			return EXIT_NO_ANSWER;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "pgshadow readiness: unexpected argument '%s' (see --help)\n",
			argv[optind]);
		return EXIT_NO_ANSWER;
	}
	if (prometheus || hosts) {
		if (!prometheus || !hosts || url_set || config || json || database) {
			fprintf(stderr, "pgshadow readiness: --prometheus and --hosts go together, "
					"without --url, --config, --database or --json (see "
					"--help)\n");
			return EXIT_NO_ANSWER;
		}
		return fleet_command(prometheus, hosts);
	}
	if (config) {
		if (url_from_config(config, from_config, sizeof(from_config)))
			return EXIT_NO_ANSWER;
		url = from_config;
	}
	/* no path: the agent's /readiness; always ask for JSON (the verdict is read from it) */
	host = strncasecmp(url, "http://", 7) ? url : url + 7;
	dbq[0] = '\0';
	if (database && url_query_value("database", database, dbq, sizeof(dbq))) {
		fprintf(stderr, "pgshadow readiness: --database: a name of 1 to 63 bytes\n");
		return EXIT_NO_ANSWER;
	}
	if ((size_t)snprintf(fetch, sizeof(fetch), "%s%s%s%sformat=json", url,
			     host[strcspn(host, "/?")] ? "" : "/readiness",
			     strchr(url, '?') ? "&" : "?", dbq) >= sizeof(fetch)) {
		fprintf(stderr, "pgshadow readiness: URL too long\n");
		return EXIT_NO_ANSWER;
	}
	buf_init(&body, HTTP_GET_MAX_BODY + 1);
	buf_init(&text, 1u << 20);
	c = http_get(fetch, "application/json", READINESS_TIMEOUT_MS, &status, &body, err,
		     sizeof(err));
	if (c == -EINVAL) {
		fprintf(stderr, "pgshadow readiness: %s: %s\n", url, err);
		goto cleanup;
	}
	if (c) {
		fprintf(stderr, "pgshadow readiness: cannot reach the agent at %s: %s\n", url, err);
		goto cleanup;
	}
	if (status != 200) {
		const char *b = body.data ? body.data : "";

		fprintf(stderr, "pgshadow readiness: %s answered HTTP %u: %.*s\n", url, status,
			(int)strcspn(b, "\r\n"), b);
		goto cleanup;
	}
	if (!readiness_parse_json(body.data ? body.data : "", &r, err, sizeof(err))) {
		fprintf(stderr, "pgshadow readiness: %s did not answer a readiness report: %s\n",
			url, err);
		goto cleanup;
	}
	if (json)
		fwrite(body.data, 1, body.len, stdout);
	else if (readiness_render_text(&r, &text))
		fwrite(text.data, 1, text.len, stdout);
	if (fflush(stdout)) {
		fprintf(stderr, "pgshadow readiness: cannot write the report: %s\n",
			strerror(errno));
		goto cleanup;
	}
	rc = r.ready ? EXIT_READY : EXIT_NOT_READY;
cleanup:
	buf_free(&body);
	buf_free(&text);
	return rc;
}

int main(int argc, char **argv)
{
	static struct agent a; /* the command line is large (every flag) */
	struct pipeline_config pc;
	struct stats_config sc;
	struct replay_config rc;
	struct capture_config cc;
	struct capture_error cerr = {};
	uint64_t k[CAPTURE_COUNTERS] = {};
	struct capture *c = NULL;
	struct dump *dump = NULL;
	struct stats *st = NULL;
	struct pipeline *pipe = NULL;
	struct passwd *pw, user = {0}; /* --user: its name set once resolved */
	char *tls_cert = NULL, *tls_key = NULL;
	struct http *http = NULL;
	struct http_config hc = {};
	struct admin *console = NULL;
	struct resolver *resolver = NULL;
	struct pipeline_hooks hooks = {};
	struct sigaction sa = {.sa_handler = on_signal}, hup = {.sa_handler = on_hup};
	struct rlimit rl;
	char herr[256];
	uint64_t now;
	int err;

	/* a client of a running agent: no BPF, no root, no configuration of its own */
	if (argc >= 2 && !strcmp(argv[1], "readiness"))
		return readiness_command(argc - 1, argv + 1);

	/* at once: a SIGHUP's default action would end the agent */
	sigemptyset(&hup.sa_mask);
	sigaction(SIGHUP, &hup, NULL);
	pthread_mutex_init(&a.dbs_lock, NULL);

	err = configure(&a, argc, argv);
	if (err >= 0)
		goto cleanup;
	if (!privileged()) {
		err = EXIT_USAGE;
		goto cleanup;
	}
	if (a.cfg.user && *a.cfg.user) {
		errno = 0;
		pw = getpwnam(a.cfg.user);
		if (!pw) {
			fprintf(stderr, "pgshadow: --user %s: %s\n", a.cfg.user,
				errno ? strerror(errno) : "no such user");
			err = EXIT_USAGE;
			goto cleanup;
		}
		user = *pw;
		user.pw_name = a.cfg.user;
	}

	if (a.cfg.dump_streams) {
		struct stat sb;

		/* created when missing: only root may read what it holds */
		if (stat(a.cfg.dump_streams, &sb) && errno == ENOENT &&
		    mkdir(a.cfg.dump_streams, 0700) && errno != EEXIST) {
			fprintf(stderr, "pgshadow: --dump-streams %s: cannot create it: %s\n",
				a.cfg.dump_streams, strerror(errno));
			err = EXIT_USAGE;
			goto cleanup;
		}
		if (stat(a.cfg.dump_streams, &sb) || !S_ISDIR(sb.st_mode)) {
			fprintf(stderr, "pgshadow: --dump-streams %s: not a directory\n",
				a.cfg.dump_streams);
			err = EXIT_USAGE;
			goto cleanup;
		}
		dump = dump_open(a.cfg.dump_streams);
		if (!dump) {
			fprintf(stderr, "pgshadow: --dump-streams %s: %s\n", a.cfg.dump_streams,
				strerror(errno));
			err = EXIT_USAGE;
			goto cleanup;
		}
		/* two files per open connection */
		if (!getrlimit(RLIMIT_NOFILE, &rl) && rl.rlim_cur < rl.rlim_max) {
			rl.rlim_cur = rl.rlim_max;
			setrlimit(RLIMIT_NOFILE, &rl);
		}
	}
	err = EXIT_USAGE;
	stats_settings(&a.cfg, &sc);
	sc.start_ns = monotonic_ns();
	st = stats_new(&sc);
	if (!st) {
		fprintf(stderr, "pgshadow: cannot create stats: %s\n", strerror(errno));
		goto cleanup;
	}
	a.st = st;
	if (a.cfg.state_file && *a.cfg.state_file) {
		if (!a.cfg.mirror_of) {
			fprintf(stderr,
				"pgshadow: state_file %s: it keeps the readiness window, "
				"which needs --mirror\n",
				a.cfg.state_file);
			goto cleanup;
		}
		state_load(&a, sc.start_ns);
	} else {
		free(a.cfg.state_file); /* "": off */
		a.cfg.state_file = NULL;
	}
	pipeline_settings(&a.cfg, &pc);
	pipe = pipeline_new(&pc, st, dump);
	if (!pipe) {
		fprintf(stderr, "pgshadow: cannot create the flow table: %s\n", strerror(errno));
		goto cleanup;
	}
	hc.listen = a.cfg.metrics_listen;
	hc.stats = st;
	hc.version = PGSHADOW_VERSION;
	if (a.cfg.mirror_of) {
		hc.readiness = http_readiness;
		hc.readiness_ctx = &a;
	}
	hc.landing = http_landing;
	hc.landing_ctx = &a;
	if (a.cfg.mirror_of && a.cfg.max_query_stats) {
		hc.queries = http_queries;
		hc.queries_ctx = &a;
		stats_set_queries(st, metrics_queries, &a);
	}
	if (web_security(&a.cfg, &hc, &tls_cert, &tls_key))
		goto cleanup;
	http = http_start(&hc, herr, sizeof(herr));
	if (!http) {
		fprintf(stderr, "pgshadow: --metrics-listen: %s\n", herr);
		goto cleanup;
	}
	/* before anything is attached: a console that cannot start stops the agent here */
	if (start_console(&a, &console))
		goto cleanup;

	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	/* exit 2 when --mirror is the source: replay would apply every write twice */
	if (a.cfg.mirror_of && !mirror_not_source(&a))
		goto cleanup;
	capture_settings(&a.cfg, &cc);
	c = capture_open(&cc, on_record, pipe, &cerr);
	if (!c) {
		fprintf(stderr, "pgshadow: %s\n", cerr.msg);
		goto cleanup;
	}
	if (a.cfg.tls) {
		a.tls = tlsprobe_new(c, (uint16_t)a.cfg.port);
		if (!a.tls) {
			fprintf(stderr, "pgshadow: --tls on: out of memory\n");
			goto cleanup;
		}
		if (!tlsprobe_scan(a.tls) && !tlsprobe_unprobed(a.tls))
			fprintf(stderr,
				"pgshadow: tls: no server listens on port %llu yet: looking "
				"again every 5 s\n",
				(unsigned long long)a.cfg.port);
		pipeline_set_tls_servers(pipe, tlsprobe_servers(a.tls));
	}
	if (a.cfg.source_dsn) {
		resolver = resolver_start(a.cfg.source_dsn, c, herr, sizeof(herr));
		if (!resolver) {
			fprintf(stderr, "pgshadow: %s\n", herr);
			goto cleanup;
		}
		hooks.want_identity = want_identity;
		if (a.cfg.mirror_of) /* texts only matter to the replay */
			hooks.want_statement = want_statement;
		hooks.ctx = resolver;
	}
	if (a.cfg.mirror_of) {
		replay_settings(&a.cfg, &rc);
		a.replay = replay_start(&rc, st, c, herr, sizeof(herr));
		if (!a.replay) {
			fprintf(stderr, "pgshadow: %s\n", herr); /* it names what failed */
			goto cleanup;
		}
		hooks.session_open = mirror_session_open;
		hooks.session_identified = mirror_session_identified;
		hooks.request = mirror_request;
		hooks.session_close = mirror_session_close;
		hooks.session_event = mirror_session_event;
		hooks.sink = a.replay;
		if (a.cfg.explain_regressions && start_explain(&a, c))
			goto cleanup;
	}
	pipeline_set_hooks(pipe, &hooks);
	if (user.pw_name && drop_privileges(&user, a.cfg.attach == CAPTURE_ATTACH_TC))
		goto cleanup;
	snprintf(a.captured, sizeof(a.captured), "port %llu on %s (%s)",
		 (unsigned long long)a.cfg.port, capture_interfaces(c),
		 a.cfg.attach == CAPTURE_ATTACH_TCX ? "tcx" : "tc");
	atomic_store(&a.attached, true);
	fprintf(stderr, "pgshadow: capturing %s, metrics on http://%s/metrics\n", a.captured,
		a.cfg.metrics_listen);
	if (console && a.cfg.admin_socket_dir)
		fprintf(stderr, "pgshadow: admin console: psql -h %s -p %llu pgshadow\n",
			a.cfg.admin_socket_dir, (unsigned long long)a.cfg.admin_port);
	if (console && a.cfg.admin_listen)
		fprintf(stderr, "pgshadow: admin console on TCP %s\n", a.cfg.admin_listen);

	err = run(&a, c, pipe, resolver);
	if (a.replay && a.cfg.state_file)
		state_save(&a, monotonic_ns()); /* what the last seconds counted */
	if (user.pw_name && a.cfg.attach == CAPTURE_ATTACH_TC)
		regain_net_admin();
	capture_detach_and_drain(c);
	capture_read_counters(c, k);
	now = monotonic_ns();
	pipeline_close_all(pipe, pipeline_last_ts(pipe) > now ? pipeline_last_ts(pipe) : now, k);
	print_stats(k, pipeline_tcp_stats(pipe), pipeline_session_stats(pipe),
		    dump ? dump_errors(dump) : 0, pipeline_tls_orphans(pipe));
cleanup:
	admin_stop(console);	 /* first: SHOW MIRROR SESSIONS reads the replay engine */
	http_stop(http);	 /* so do /metrics, /queries and /readiness */
	explain_stop(a.explain); /* it reads the replay's statements */
	replay_stop(a.replay);	 /* after close_all: sessions closed, queues counted */
	explain_free(a.explain); /* the replay thread, which offers it executions, is gone */
	resolver_stop(resolver);
	webauth_free(hc.auth);
	if (tls_key)
		explicit_bzero(tls_key, strlen(tls_key));
	free(tls_key);
	free(tls_cert);
	tlsprobe_free(a.tls);
	capture_close(c);
	pipeline_free(pipe);
	stats_free(st);
	dump_close(dump);
	config_shared_free(a.shared);
	config_free(&a.cfg);
	free(a.dbs);
	pthread_mutex_destroy(&a.dbs_lock);
	return err;
}
