// SPDX-License-Identifier: BSD-2-Clause
/*
 * main.c — command line, signals, and the capture loop: records from capture go to the
 * pipeline (tcpstream -> session -> stats); the HTTP server reads stats on its thread.
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>

#include "capture.h"
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

static volatile sig_atomic_t exiting;

struct options {
	unsigned long port;
	const char *interfaces[CAPTURE_MAX_INTERFACES];
	int n_interfaces;
	enum capture_attach_mode attach;
	const char *dump_dir;
	unsigned long ringbuf_mb;
	struct pipeline_config pipe;
	struct stats_config stats;
	const char *metrics_listen;
	const char *source_dsn;
	struct replay_config mirror;
	int verbose;
};

static const char usage_text[] =
    "Usage: pgshadow --port PORT [OPTIONS]\n"
    "\n"
    "Passively captures the PostgreSQL traffic of a TCP port with an eBPF program,\n"
    "rebuilds each connection's byte streams, decodes the wire protocol and serves\n"
    "per-database request, error and latency metrics of the source on /metrics.\n"
    "Needs root, or CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON, and a kernel with BTF (tcx\n"
    "attach needs Linux >= 6.6).\n"
    "\n"
    "Options:\n"
    "  -p, --port PORT          server port to capture, 1-65535 (required)\n"
    "  -i, --interface NAME     interface to attach to; repeat or comma-separate for\n"
    "                           several (default: every interface that is up)\n"
    "      --attach MODE        tcx (default; kernel >= 6.6) or tc (clsact filters, for\n"
    "                           older kernels; stale filters of ours are replaced)\n"
    "      --dump-streams DIR   write each reassembled half-stream to\n"
    "                           DIR/<client>-<server>.c2s and .s2c (gaps in .gaps)\n"
    "      --ringbuf-mb N       ring buffer size in MiB, a power of two 1-1024 (default 64)\n"
    "      --max-flows N        connections tracked at once (default 65536)\n"
    "      --flow-buffer-kb N   out-of-order bytes held per direction of a connection,\n"
    "                           in KiB (default 4096)\n"
    "      --hole-timeout-ms N  how long a missing segment is waited for before it is\n"
    "                           reported as a gap (default 1000)\n"
    "      --idle-timeout-s N   close connections silent for this long (default 600)\n"
    "      --metrics-listen ADDR  serve /metrics and /healthz on ADDR, IPv4:PORT or\n"
    "                           [IPv6]:PORT (default 127.0.0.1:9930)\n"
    "      --max-databases N    distinct database labels before the rest are counted as\n"
    "                           database=\"other\" (default 100)\n"
    "      --max-message-kb N   largest protocol message body decoded, in KiB; longer\n"
    "                           ones are counted and skipped (default 1024)\n"
    "      --mirror CONNINFO    replay every request to this mirror (libpq conninfo or URI;\n"
    "                           its dbname is replaced by each session's database).\n"
    "                           Same as --mirror-of. Default: observe only\n"
    "      --mirror-queue N     requests waiting per session before new ones are dropped\n"
    "                           (default 100)\n"
    "      --mirror-max-connections N  mirror connections at once; sessions beyond are\n"
    "                           skipped (default 100)\n"
    "      --mirror-timeout-ms N  statement_timeout of mirror sessions (default 30000)\n"
    "      --mirror-set-role on|off  SET ROLE to the source session's user (default off)\n"
    "      --mirror-metrics-reset-interval S  window of the windowed mirror gauges, in\n"
    "                           seconds (default 3600); counters never reset\n"
    "      --source-dsn DSN     libpq conninfo of the source, used to name the database\n"
    "                           and user of sessions open before the agent started\n"
    "                           (pg_stat_activity; needs pg_read_all_stats). Its own\n"
    "                           connection is excluded from capture. Default: off, such\n"
    "                           sessions are counted as database=\"unknown\"\n"
    "  -v, --verbose            also print libbpf's messages\n"
    "  -V, --version            print the version and exit\n"
    "  -h, --help               print this help and exit\n"
    "\n"
    "Exit status: 0 after SIGINT/SIGTERM, 1 on a runtime failure, 2 when it cannot start\n"
    "(bad option, missing interface, not privileged, kernel without BPF/BTF).\n"
    "\n"
    "Examples:\n"
    "  pgshadow --port 5432\n"
    "  pgshadow --port 5432 --interface lo --dump-streams /tmp/streams\n";

static void on_signal(int sig)
{
	(void)sig;
	exiting = 1;
}

static uint64_t monotonic_ns(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t); /* the clock of bpf_ktime_get_ns() */
	return (uint64_t)t.tv_sec * 1000000000ULL + t.tv_nsec;
}

/* Parses a decimal integer in [min, max]; prints one line naming the option if not. */
static bool parse_ulong(const char *opt, const char *arg, unsigned long min, unsigned long max,
			unsigned long *out)
{
	char *end;
	unsigned long v;

	errno = 0;
	v = strtoul(arg, &end, 10);
	if (errno || end == arg || *end || arg[0] == '-' || v < min || v > max) {
		fprintf(stderr,
			"pgshadow: invalid value '%s' for %s: expected an integer from %lu "
			"to %lu\n",
			arg, opt, min, max);
		return false;
	}
	*out = v;
	return true;
}

static bool add_interfaces(struct options *o, char *arg)
{
	char *save = NULL, *name;

	for (name = strtok_r(arg, ",", &save); name; name = strtok_r(NULL, ",", &save)) {
		if (o->n_interfaces == CAPTURE_MAX_INTERFACES) {
			fprintf(stderr, "pgshadow: too many interfaces (at most %d)\n",
				CAPTURE_MAX_INTERFACES);
			return false;
		}
		o->interfaces[o->n_interfaces++] = name;
	}
	return true;
}

/* Returns 0 to run, or an exit status (0 for --help/--version). -1 means run. */
static int parse_args(int argc, char **argv, struct options *o)
{
	enum {
		OPT_ATTACH = 256,
		OPT_DUMP,
		OPT_RINGBUF,
		OPT_MAX_FLOWS,
		OPT_FLOW_BUF,
		OPT_HOLE,
		OPT_IDLE,
		OPT_METRICS,
		OPT_MAX_DBS,
		OPT_MAX_MSG,
		OPT_SOURCE_DSN,
		OPT_MIRROR,
		OPT_MQUEUE,
		OPT_MMAXCONN,
		OPT_MTIMEOUT,
		OPT_MROLE,
		OPT_MRESET
	};
	static const struct option longopts[] = {
	    {"port", required_argument, NULL, 'p'},
	    {"interface", required_argument, NULL, 'i'},
	    {"attach", required_argument, NULL, OPT_ATTACH},
	    {"dump-streams", required_argument, NULL, OPT_DUMP},
	    {"ringbuf-mb", required_argument, NULL, OPT_RINGBUF},
	    {"max-flows", required_argument, NULL, OPT_MAX_FLOWS},
	    {"flow-buffer-kb", required_argument, NULL, OPT_FLOW_BUF},
	    {"hole-timeout-ms", required_argument, NULL, OPT_HOLE},
	    {"idle-timeout-s", required_argument, NULL, OPT_IDLE},
	    {"metrics-listen", required_argument, NULL, OPT_METRICS},
	    {"max-databases", required_argument, NULL, OPT_MAX_DBS},
	    {"max-message-kb", required_argument, NULL, OPT_MAX_MSG},
	    {"source-dsn", required_argument, NULL, OPT_SOURCE_DSN},
	    {"mirror", required_argument, NULL, OPT_MIRROR},
	    {"mirror-of", required_argument, NULL, OPT_MIRROR},
	    {"mirror-queue", required_argument, NULL, OPT_MQUEUE},
	    {"mirror-max-connections", required_argument, NULL, OPT_MMAXCONN},
	    {"mirror-timeout-ms", required_argument, NULL, OPT_MTIMEOUT},
	    {"mirror-set-role", required_argument, NULL, OPT_MROLE},
	    {"mirror-metrics-reset-interval", required_argument, NULL, OPT_MRESET},
	    {"verbose", no_argument, NULL, 'v'},
	    {"version", no_argument, NULL, 'V'},
	    {"help", no_argument, NULL, 'h'},
	    {NULL, 0, NULL, 0},
	};
	unsigned long v;
	int c;

	pipeline_config_default(&o->pipe);
	o->stats.max_databases = 100;
	o->stats.reset_interval_ns = 3600ULL * 1000000000ULL;
	replay_config_default(&o->mirror);
	o->metrics_listen = "127.0.0.1:9930";
	o->ringbuf_mb = 64;
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":p:i:vVh", longopts, NULL)) != -1) {
		switch (c) {
		case 'p':
			if (!parse_ulong("--port", optarg, 1, 65535, &o->port))
				return EXIT_USAGE;
			break;
		case 'i':
			if (!add_interfaces(o, optarg))
				return EXIT_USAGE;
			break;
		case OPT_ATTACH:
			if (!strcmp(optarg, "tcx")) {
				o->attach = CAPTURE_ATTACH_TCX;
			} else if (!strcmp(optarg, "tc")) {
				o->attach = CAPTURE_ATTACH_TC;
			} else {
				fprintf(stderr,
					"pgshadow: invalid value '%s' for --attach: expected "
					"tcx or tc\n",
					optarg);
				return EXIT_USAGE;
			}
			break;
		case OPT_DUMP:
			o->dump_dir = optarg;
			break;
		case OPT_RINGBUF:
			if (!parse_ulong("--ringbuf-mb", optarg, 1, 1024, &o->ringbuf_mb))
				return EXIT_USAGE;
			if (o->ringbuf_mb & (o->ringbuf_mb - 1)) {
				fprintf(stderr,
					"pgshadow: invalid value '%s' for --ringbuf-mb: "
					"expected a power of two from 1 to 1024\n",
					optarg);
				return EXIT_USAGE;
			}
			break;
		case OPT_MAX_FLOWS:
			if (!parse_ulong("--max-flows", optarg, 1, 4000000, &v))
				return EXIT_USAGE;
			o->pipe.tcp.max_flows = v;
			break;
		case OPT_FLOW_BUF:
			if (!parse_ulong("--flow-buffer-kb", optarg, 1, 1048576, &v))
				return EXIT_USAGE;
			o->pipe.tcp.max_flow_buffer = v * 1024;
			break;
		case OPT_HOLE:
			if (!parse_ulong("--hole-timeout-ms", optarg, 1, 3600000, &v))
				return EXIT_USAGE;
			o->pipe.tcp.hole_timeout_ns = v * 1000000ULL;
			break;
		case OPT_IDLE:
			if (!parse_ulong("--idle-timeout-s", optarg, 1, 86400 * 30, &v))
				return EXIT_USAGE;
			o->pipe.tcp.idle_timeout_ns = v * 1000000000ULL;
			break;
		case OPT_METRICS:
			o->metrics_listen = optarg;
			break;
		case OPT_MAX_DBS:
			if (!parse_ulong("--max-databases", optarg, 1, 10000, &v))
				return EXIT_USAGE;
			o->stats.max_databases = v;
			break;
		case OPT_MAX_MSG:
			if (!parse_ulong("--max-message-kb", optarg, 1, 1048576, &v))
				return EXIT_USAGE;
			o->pipe.session.wire.max_body = v * 1024;
			break;
		case OPT_SOURCE_DSN:
			o->source_dsn = optarg;
			break;
		case OPT_MIRROR:
			o->mirror.mirror = optarg;
			break;
		case OPT_MQUEUE:
			if (!parse_ulong("--mirror-queue", optarg, 1, 1000000, &v))
				return EXIT_USAGE;
			o->mirror.queue = v;
			break;
		case OPT_MMAXCONN:
			if (!parse_ulong("--mirror-max-connections", optarg, 1, 10000, &v))
				return EXIT_USAGE;
			o->mirror.max_connections = v;
			break;
		case OPT_MTIMEOUT:
			if (!parse_ulong("--mirror-timeout-ms", optarg, 1, 86400000, &v))
				return EXIT_USAGE;
			o->mirror.timeout_ms = v;
			break;
		case OPT_MROLE:
			if (!strcmp(optarg, "on") || !strcmp(optarg, "true")) {
				o->mirror.set_role = true;
			} else if (!strcmp(optarg, "off") || !strcmp(optarg, "false")) {
				o->mirror.set_role = false;
			} else {
				fprintf(stderr,
					"pgshadow: invalid value '%s' for --mirror-set-role: "
					"expected on or off\n",
					optarg);
				return EXIT_USAGE;
			}
			break;
		case OPT_MRESET:
			if (!parse_ulong("--mirror-metrics-reset-interval", optarg, 1, 86400 * 365,
					 &v))
				return EXIT_USAGE;
			o->stats.reset_interval_ns = v * 1000000000ULL;
			break;
		case 'v':
			o->verbose = 1;
			break;
		case 'V':
			printf("pgshadow %s\n", PGSHADOW_VERSION);
			return 0;
		case 'h':
			fputs(usage_text, stdout);
			return 0;
		case ':':
			fprintf(stderr, "pgshadow: option %s needs a value (see --help)\n",
				argv[optind - 1]);
			return EXIT_USAGE;
		default:
			fprintf(stderr, "pgshadow: unknown option '%s' (see --help)\n",
				argv[optind - 1]);
			return EXIT_USAGE;
		}
	}
	if (optind < argc) {
		fprintf(stderr, "pgshadow: unexpected argument '%s' (see --help)\n", argv[optind]);
		return EXIT_USAGE;
	}
	if (!o->port) {
		fprintf(stderr, "pgshadow: --port is required (see --help)\n");
		return EXIT_USAGE;
	}
	return -1;
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
static int run(struct capture *c, struct pipeline *p, struct resolver *r)
{
	uint64_t k[CAPTURE_COUNTERS] = {};
	uint64_t last_tick = 0, now;
	int n;

	while (!exiting) {
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

int main(int argc, char **argv)
{
	struct options o = {};
	struct capture_config cc = {};
	struct capture_error cerr = {};
	uint64_t k[CAPTURE_COUNTERS] = {};
	struct capture *c = NULL;
	struct dump *dump = NULL;
	struct stats *st = NULL;
	struct pipeline *pipe = NULL;
	struct http *http = NULL;
	struct resolver *resolver = NULL;
	struct replay *replay = NULL;
	struct pipeline_hooks hooks = {};
	struct sigaction sa = {.sa_handler = on_signal};
	struct rlimit rl;
	char herr[256];
	uint64_t now;
	int err;

	err = parse_args(argc, argv, &o);
	if (err >= 0)
		return err;

	if (o.dump_dir) {
		struct stat sb;

		if (stat(o.dump_dir, &sb) || !S_ISDIR(sb.st_mode)) {
			fprintf(stderr, "pgshadow: --dump-streams %s: not a directory\n",
				o.dump_dir);
			return EXIT_USAGE;
		}
		dump = dump_open(o.dump_dir);
		if (!dump) {
			fprintf(stderr, "pgshadow: --dump-streams %s: %s\n", o.dump_dir,
				strerror(errno));
			return EXIT_USAGE;
		}
		/* two files per open connection */
		if (!getrlimit(RLIMIT_NOFILE, &rl) && rl.rlim_cur < rl.rlim_max) {
			rl.rlim_cur = rl.rlim_max;
			setrlimit(RLIMIT_NOFILE, &rl);
		}
	}
	err = EXIT_USAGE;
	o.stats.start_ns = monotonic_ns();
	o.stats.mirror_enabled = o.mirror.mirror != NULL;
	st = stats_new(&o.stats);
	if (!st) {
		fprintf(stderr, "pgshadow: cannot create stats: %s\n", strerror(errno));
		goto cleanup;
	}
	pipe = pipeline_new(&o.pipe, st, dump);
	if (!pipe) {
		fprintf(stderr, "pgshadow: cannot create the flow table: %s\n", strerror(errno));
		goto cleanup;
	}
	http = http_start(o.metrics_listen, st, PGSHADOW_VERSION, herr, sizeof(herr));
	if (!http) {
		fprintf(stderr, "pgshadow: --metrics-listen: %s\n", herr);
		goto cleanup;
	}

	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);

	cc.port = o.port;
	cc.interfaces = o.n_interfaces ? o.interfaces : NULL;
	cc.n_interfaces = o.n_interfaces;
	cc.mode = o.attach;
	cc.ringbuf_bytes = o.ringbuf_mb << 20;
	cc.wakeup_bytes = cc.ringbuf_bytes / 8;
	cc.verbose = o.verbose;
	c = capture_open(&cc, on_record, pipe, &cerr);
	if (!c) {
		fprintf(stderr, "pgshadow: %s\n", cerr.msg);
		goto cleanup;
	}
	if (o.source_dsn) {
		resolver = resolver_start(o.source_dsn, c, herr, sizeof(herr));
		if (!resolver) {
			fprintf(stderr, "pgshadow: %s\n", herr);
			goto cleanup;
		}
		hooks.want_identity = want_identity;
		hooks.ctx = resolver;
	}
	if (o.mirror.mirror) {
		o.mirror.capture_port = o.port;
		replay = replay_start(&o.mirror, st, c, herr, sizeof(herr));
		if (!replay) {
			fprintf(stderr, "pgshadow: --mirror: %s\n", herr);
			goto cleanup;
		}
		hooks.session_open = mirror_session_open;
		hooks.session_identified = mirror_session_identified;
		hooks.request = mirror_request;
		hooks.session_close = mirror_session_close;
		hooks.sink = replay;
	}
	pipeline_set_hooks(pipe, &hooks);
	fprintf(stderr, "pgshadow: capturing port %lu on %s (%s), metrics on http://%s/metrics\n",
		o.port, capture_interfaces(c), o.attach == CAPTURE_ATTACH_TCX ? "tcx" : "tc",
		o.metrics_listen);

	err = run(c, pipe, resolver);
	capture_detach_and_drain(c);
	capture_read_counters(c, k);
	now = monotonic_ns();
	pipeline_close_all(pipe, pipeline_last_ts(pipe) > now ? pipeline_last_ts(pipe) : now, k);
	print_stats(k, pipeline_tcp_stats(pipe), pipeline_session_stats(pipe),
		    dump ? dump_errors(dump) : 0);
cleanup:
	replay_stop(replay); /* after close_all: sessions closed, queues counted */
	resolver_stop(resolver);
	http_stop(http);
	capture_close(c);
	pipeline_free(pipe);
	stats_free(st);
	dump_close(dump);
	return err;
}
