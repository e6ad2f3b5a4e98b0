// SPDX-License-Identifier: BSD-2-Clause
/*
 * main.c — command line, signals, and the capture loop that wires
 * capture -> tcpstream -> consumers (for now the --dump-streams view).
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
#include "tcpstream.h"

#ifndef PGSHADOW_VERSION
#define PGSHADOW_VERSION "unknown"
#endif

#define EXIT_RUNTIME 1
#define EXIT_USAGE 2

/* The reader polls on this timeout when no wakeup comes (records are submitted without
 * one until the ring holds wakeup_bytes, see bpf/capture.bpf.c). */
#define POLL_TIMEOUT_MS 10
#define TICK_INTERVAL_NS 100000000ULL /* hole timeouts and idle expiry every 100 ms */

static volatile sig_atomic_t exiting;

struct options {
	unsigned long port;
	const char *interfaces[CAPTURE_MAX_INTERFACES];
	int n_interfaces;
	enum capture_attach_mode attach;
	const char *dump_dir;
	unsigned long ringbuf_mb;
	struct tcpstream_config ts;
	int verbose;
};

struct app {
	struct tcpstream *ts;
	uint64_t max_ts; /* latest capture timestamp fed */
};

static const char usage_text[] =
	"Usage: pgshadow --port PORT [OPTIONS]\n"
	"\n"
	"Passively captures the PostgreSQL traffic of a TCP port with an eBPF program and\n"
	"rebuilds each connection's byte streams. Needs root, or CAP_BPF + CAP_NET_ADMIN +\n"
	"CAP_PERFMON, and a kernel with BTF (tcx attach needs Linux >= 6.6).\n"
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

/* Interim consumer until the decoder lands: the dump view only. */
static void dump_on_open(void *ctx, struct tcpstream_flow *flow, uint64_t ts_ns)
{
	(void)ts_ns;
	flow->user = dump_flow_open(ctx, flow);
}

static void dump_on_data(void *ctx, struct tcpstream_flow *flow, enum tcpstream_dir dir,
			 const uint8_t *data, size_t len, uint64_t ts_ns)
{
	(void)ts_ns;
	dump_flow_data(ctx, flow->user, dir, data, len);
}

static void dump_on_gap(void *ctx, struct tcpstream_flow *flow, enum tcpstream_dir dir,
			uint64_t missing, uint64_t ts_ns)
{
	(void)ts_ns;
	dump_flow_gap(ctx, flow->user, dir, missing);
}

static void dump_on_close(void *ctx, struct tcpstream_flow *flow,
			  enum tcpstream_close_reason reason, uint64_t ts_ns)
{
	(void)reason;
	(void)ts_ns;
	dump_flow_close(ctx, flow->user);
	flow->user = NULL;
}

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
		fprintf(stderr, "pgshadow: invalid value '%s' for %s: expected an integer from %lu "
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
	enum { OPT_ATTACH = 256, OPT_DUMP, OPT_RINGBUF, OPT_MAX_FLOWS, OPT_FLOW_BUF, OPT_HOLE,
	       OPT_IDLE };
	static const struct option longopts[] = {
		{ "port", required_argument, NULL, 'p' },
		{ "interface", required_argument, NULL, 'i' },
		{ "attach", required_argument, NULL, OPT_ATTACH },
		{ "dump-streams", required_argument, NULL, OPT_DUMP },
		{ "ringbuf-mb", required_argument, NULL, OPT_RINGBUF },
		{ "max-flows", required_argument, NULL, OPT_MAX_FLOWS },
		{ "flow-buffer-kb", required_argument, NULL, OPT_FLOW_BUF },
		{ "hole-timeout-ms", required_argument, NULL, OPT_HOLE },
		{ "idle-timeout-s", required_argument, NULL, OPT_IDLE },
		{ "verbose", no_argument, NULL, 'v' },
		{ "version", no_argument, NULL, 'V' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	unsigned long v;
	int c;

	tcpstream_config_default(&o->ts);
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
				fprintf(stderr, "pgshadow: invalid value '%s' for --attach: expected "
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
				fprintf(stderr, "pgshadow: invalid value '%s' for --ringbuf-mb: "
						"expected a power of two from 1 to 1024\n",
					optarg);
				return EXIT_USAGE;
			}
			break;
		case OPT_MAX_FLOWS:
			if (!parse_ulong("--max-flows", optarg, 1, 4000000, &v))
				return EXIT_USAGE;
			o->ts.max_flows = v;
			break;
		case OPT_FLOW_BUF:
			if (!parse_ulong("--flow-buffer-kb", optarg, 1, 1048576, &v))
				return EXIT_USAGE;
			o->ts.max_flow_buffer = v * 1024;
			break;
		case OPT_HOLE:
			if (!parse_ulong("--hole-timeout-ms", optarg, 1, 3600000, &v))
				return EXIT_USAGE;
			o->ts.hole_timeout_ns = v * 1000000ULL;
			break;
		case OPT_IDLE:
			if (!parse_ulong("--idle-timeout-s", optarg, 1, 86400 * 30, &v))
				return EXIT_USAGE;
			o->ts.idle_timeout_ns = v * 1000000000ULL;
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

/* Turns one ring-buffer record into a tcpstream segment, oriented client/server. */
static void on_record(void *ctx, const struct capture_event *ev, const uint8_t *data)
{
	struct app *app = ctx;
	struct tcpstream_segment seg = {
		.ts_ns = ev->ts_ns,
		.dir = ev->dir == CAPTURE_DIR_C2S ? TCPSTREAM_C2S : TCPSTREAM_S2C,
		.data = data,
		.len = ev->chunk_len,
	};
	const uint8_t *client = ev->dir == CAPTURE_DIR_C2S ? ev->saddr : ev->daddr;
	const uint8_t *server = ev->dir == CAPTURE_DIR_C2S ? ev->daddr : ev->saddr;
	uint32_t syn = ev->tcp_flags & CAPTURE_TCP_SYN ? 1 : 0;

	memcpy(seg.client.addr, client, 16);
	memcpy(seg.server.addr, server, 16);
	seg.client.family = seg.server.family = ev->family;
	seg.client.port = ev->dir == CAPTURE_DIR_C2S ? ev->sport : ev->dport;
	seg.server.port = ev->dir == CAPTURE_DIR_C2S ? ev->dport : ev->sport;
	/* A SYN consumes one sequence number before the payload: the first chunk carries
	 * the SYN itself (tcpstream skips it), later chunks start past it. */
	seg.seq = ev->seq + (ev->chunk_off ? syn + ev->chunk_off : 0);
	seg.ack = ev->ack;
	seg.flags = ev->tcp_flags & CAPTURE_TCP_ACK;
	if (ev->chunk_off == 0)
		seg.flags |= ev->tcp_flags & CAPTURE_TCP_SYN;
	if (ev->chunk_off + ev->chunk_len == ev->payload_len)
		seg.flags |= ev->tcp_flags & (CAPTURE_TCP_FIN | CAPTURE_TCP_RST);
	if (ev->ts_ns > app->max_ts)
		app->max_ts = ev->ts_ns;
	tcpstream_feed(app->ts, &seg);
}

static void print_stats(struct capture *c, const struct tcpstream_stats *s,
			uint64_t dump_errs)
{
	uint64_t k[CAPTURE_COUNTERS] = {};

	capture_read_counters(c, k);
	fprintf(stderr,
		"pgshadow: stats packets=%llu bytes=%llu records=%llu ringbuf_drops=%llu "
		"truncated=%llu copy_errors=%llu malformed=%llu excluded=%llu local_client=%llu "
		"pure_acks=%llu flows=%llu flows_refused=%llu flows_midstream=%llu "
		"flows_expired=%llu views_merged=%llu delivered=%llu dup_segments=%llu "
		"ooo_segments=%llu buffer_cap_hits=%llu hole_timeouts=%llu late_segments=%llu "
		"gaps=%llu gap_bytes=%llu dump_errors=%llu\n",
		(unsigned long long)k[CAPTURE_CNT_PACKETS], (unsigned long long)k[CAPTURE_CNT_BYTES],
		(unsigned long long)k[CAPTURE_CNT_RECORDS],
		(unsigned long long)k[CAPTURE_CNT_RB_DROPS],
		(unsigned long long)k[CAPTURE_CNT_TRUNCATED],
		(unsigned long long)k[CAPTURE_CNT_COPY_ERRORS],
		(unsigned long long)k[CAPTURE_USER_MALFORMED], (unsigned long long)k[CAPTURE_CNT_EXCLUDED],
		(unsigned long long)k[CAPTURE_CNT_LOCAL_CLIENT],
		(unsigned long long)k[CAPTURE_CNT_PURE_ACKS], (unsigned long long)s->flows_opened,
		(unsigned long long)s->flows_refused, (unsigned long long)s->flows_midstream,
		(unsigned long long)s->flows_expired, (unsigned long long)s->views_merged,
		(unsigned long long)s->bytes_delivered, (unsigned long long)s->dup_segments,
		(unsigned long long)s->ooo_segments, (unsigned long long)s->buffer_cap_hits,
		(unsigned long long)s->hole_timeouts, (unsigned long long)s->late_segments,
		(unsigned long long)s->gaps, (unsigned long long)s->gap_bytes,
		(unsigned long long)dump_errs);
}

/* Polls until a signal; ticks tcpstream on capture time while records flow and on the
 * clock when the ring is empty (then nothing older is still on its way). */
static int run(struct capture *c, struct app *app)
{
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
		now = n > 0 ? app->max_ts : monotonic_ns();
		if (now - last_tick >= TICK_INTERVAL_NS || now < last_tick) {
			tcpstream_tick(app->ts, now);
			last_tick = now;
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	struct options o = {};
	struct app app = {};
	struct capture_config cc = {};
	struct capture_error cerr = {};
	struct tcpstream_handler handler = {};
	struct capture *c = NULL;
	struct dump *dump = NULL;
	struct sigaction sa = { .sa_handler = on_signal };
	struct rlimit rl;
	int err;

	err = parse_args(argc, argv, &o);
	if (err >= 0)
		return err;

	if (o.dump_dir) {
		struct stat st;

		if (stat(o.dump_dir, &st) || !S_ISDIR(st.st_mode)) {
			fprintf(stderr, "pgshadow: --dump-streams %s: not a directory\n", o.dump_dir);
			return EXIT_USAGE;
		}
		dump = dump_open(o.dump_dir);
		if (!dump) {
			fprintf(stderr, "pgshadow: --dump-streams %s: %s\n", o.dump_dir,
				strerror(errno));
			return EXIT_USAGE;
		}
		handler.open = dump_on_open;
		handler.data = dump_on_data;
		handler.gap = dump_on_gap;
		handler.close = dump_on_close;
		/* two files per open connection */
		if (!getrlimit(RLIMIT_NOFILE, &rl) && rl.rlim_cur < rl.rlim_max) {
			rl.rlim_cur = rl.rlim_max;
			setrlimit(RLIMIT_NOFILE, &rl);
		}
	}
	app.ts = tcpstream_new(&o.ts, &handler, dump);
	if (!app.ts) {
		fprintf(stderr, "pgshadow: cannot create the flow table: %s\n", strerror(errno));
		err = EXIT_USAGE;
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
	c = capture_open(&cc, on_record, &app, &cerr);
	if (!c) {
		fprintf(stderr, "pgshadow: %s\n", cerr.msg);
		err = EXIT_USAGE;
		goto cleanup;
	}
	fprintf(stderr, "pgshadow: capturing port %lu on %s (%s)\n", o.port,
		capture_interfaces(c), o.attach == CAPTURE_ATTACH_TCX ? "tcx" : "tc");

	err = run(c, &app);
	capture_detach_and_drain(c);
	tcpstream_close_all(app.ts, app.max_ts > monotonic_ns() ? app.max_ts : monotonic_ns());
	print_stats(c, tcpstream_stats(app.ts), dump ? dump_errors(dump) : 0);
cleanup:
	capture_close(c);
	tcpstream_free(app.ts);
	dump_close(dump);
	return err;
}
