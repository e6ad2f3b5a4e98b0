// SPDX-License-Identifier: BSD-2-Clause
/*
 * main.c — configuration (config.c: defaults, --config file, flags), signals, and the
 * capture loop: records from capture go to the pipeline (tcpstream -> session -> stats);
 * the HTTP server reads stats on its thread. SIGHUP sets a flag; the loop then reloads
 * the configuration (reload()).
 */
#include <errno.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>

#include "capture.h"
#include "config.h"
#include "dump.h"
#include "http.h"
#include "pipeline.h"
#include "replay.h"
#include "resolver.h"
#include "stats.h"

#ifndef PGSHADOW_VERSION
#define PGSHADOW_VERSION "unknown"
#endif

#define EXIT_RUNTIME 1
#define EXIT_USAGE   2

/* The reader polls on this timeout when no wakeup comes (records are submitted without
 * one until the ring holds wakeup_bytes, see bpf/capture.bpf.c). */
#define POLL_TIMEOUT_MS	 10
#define TICK_INTERVAL_NS 100000000ULL /* hole timeouts and idle expiry every 100 ms */

static volatile sig_atomic_t exiting, reload_requested;

/*
 * The running configuration. Owned by the main (capture) thread, which also reloads it
 * on SIGHUP. Other threads get the reloadable numbers (readiness criteria, alert
 * thresholds) from `shared` (config_shared_get), which every reload updates; restart-only
 * values (admin_*, metrics_listen ...) are handed to their module at start.
 */
struct agent {
	struct config_cmdline cl; /* the command line, re-applied on every reload */
	struct pgshadow_config cfg;
	struct config_shared *shared;
	struct replay *replay; /* NULL without a mirror */
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
	r->max_connections = c->mirror_max_connections;
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

static void want_identity(void *ctx, uint64_t flow_id, const struct tcpstream_addr *client)
{
	resolver_request(ctx, flow_id, client);
}

/* Hands finished pg_stat_activity lookups to their sessions (capture thread). */
static void apply_identities(struct resolver *r, struct pipeline *p, uint64_t now)
{
	struct resolver_result res[64];
	int n, i;

	if (!r)
		return;
	while ((n = resolver_results(r, res, 64)) > 0)
		for (i = 0; i < n; i++)
			if (res[i].found)
				pipeline_identify(p, res[i].flow_id, res[i].database, res[i].user,
						  now);
}

static void print_stats(const uint64_t *k, const struct tcpstream_stats *s,
			const struct session_stats *ss, uint64_t dump_errs)
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
	    "user_excluded=%llu\n",
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
	    (unsigned long long)s->tail_gaps, (unsigned long long)k[CAPTURE_USER_EXCLUDED]);
}

/* Polls until a signal; ticks the pipeline on capture time while records flow and on
 * the clock when the ring is empty (then nothing older is still on its way). */
static int run(struct agent *a, struct capture *c, struct pipeline *p, struct resolver *r)
{
	uint64_t k[CAPTURE_COUNTERS] = {};
	uint64_t last_tick = 0, now;
	int n;

	while (!exiting) {
		if (reload_requested) {
			reload_requested = 0;
			reload(a);
		}
		n = capture_poll(c, POLL_TIMEOUT_MS);
		if (n == -EINTR)
			continue;
		if (n < 0) {
			fprintf(stderr, "pgshadow: ring buffer poll failed: %s\n", strerror(-n));
			return EXIT_RUNTIME;
		}
		now = n > 0 ? pipeline_last_ts(p) : monotonic_ns();
		if (now - last_tick >= TICK_INTERVAL_NS || now < last_tick) {
			capture_read_counters(c, k);
			apply_identities(r, p, now);
			pipeline_tick(p, now, k);
			last_tick = now;
		}
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
	if (!a->shared) {
		fprintf(stderr, "pgshadow: %s\n", strerror(errno));
		return EXIT_RUNTIME;
	}
	return -1;
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
	struct http *http = NULL;
	struct resolver *resolver = NULL;
	struct pipeline_hooks hooks = {};
	struct sigaction sa = {.sa_handler = on_signal}, hup = {.sa_handler = on_hup};
	struct rlimit rl;
	char herr[256];
	uint64_t now;
	int err;

	/* at once: a SIGHUP's default action would end the agent */
	sigemptyset(&hup.sa_mask);
	sigaction(SIGHUP, &hup, NULL);

	err = configure(&a, argc, argv);
	if (err >= 0)
		goto cleanup;

	if (a.cfg.dump_streams) {
		struct stat sb;

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
	pipeline_settings(&a.cfg, &pc);
	pipe = pipeline_new(&pc, st, dump);
	if (!pipe) {
		fprintf(stderr, "pgshadow: cannot create the flow table: %s\n", strerror(errno));
		goto cleanup;
	}
	http = http_start(a.cfg.metrics_listen, st, PGSHADOW_VERSION, herr, sizeof(herr));
	if (!http) {
		fprintf(stderr, "pgshadow: --metrics-listen: %s\n", herr);
		goto cleanup;
	}

	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	capture_settings(&a.cfg, &cc);
	c = capture_open(&cc, on_record, pipe, &cerr);
	if (!c) {
		fprintf(stderr, "pgshadow: %s\n", cerr.msg);
		goto cleanup;
	}
	if (a.cfg.source_dsn) {
		resolver = resolver_start(a.cfg.source_dsn, c, herr, sizeof(herr));
		if (!resolver) {
			fprintf(stderr, "pgshadow: %s\n", herr);
			goto cleanup;
		}
		hooks.want_identity = want_identity;
		hooks.ctx = resolver;
	}
	if (a.cfg.mirror_of) {
		replay_settings(&a.cfg, &rc);
		a.replay = replay_start(&rc, st, c, herr, sizeof(herr));
		if (!a.replay) {
			fprintf(stderr, "pgshadow: --mirror: %s\n", herr);
			goto cleanup;
		}
		hooks.session_open = mirror_session_open;
		hooks.session_identified = mirror_session_identified;
		hooks.request = mirror_request;
		hooks.session_close = mirror_session_close;
		hooks.sink = a.replay;
	}
	pipeline_set_hooks(pipe, &hooks);
	fprintf(stderr, "pgshadow: capturing port %llu on %s (%s), metrics on http://%s/metrics\n",
		(unsigned long long)a.cfg.port, capture_interfaces(c),
		a.cfg.attach == CAPTURE_ATTACH_TCX ? "tcx" : "tc", a.cfg.metrics_listen);

	err = run(&a, c, pipe, resolver);
	capture_detach_and_drain(c);
	capture_read_counters(c, k);
	now = monotonic_ns();
	pipeline_close_all(pipe, pipeline_last_ts(pipe) > now ? pipeline_last_ts(pipe) : now, k);
	print_stats(k, pipeline_tcp_stats(pipe), pipeline_session_stats(pipe),
		    dump ? dump_errors(dump) : 0);
cleanup:
	replay_stop(a.replay); /* after close_all: sessions closed, queues counted */
	resolver_stop(resolver);
	http_stop(http);
	capture_close(c);
	pipeline_free(pipe);
	stats_free(st);
	dump_close(dump);
	config_shared_free(a.shared);
	config_free(&a.cfg);
	return err;
}
