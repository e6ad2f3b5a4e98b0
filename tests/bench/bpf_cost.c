// SPDX-License-Identifier: BSD-2-Clause
/*
 * bpf_cost — what the kernel program costs per packet, next to an empty program in the
 * same run (the figures are ratios: absolute times differ 3x between machines).
 *
 *   bpf_cost run [REPEAT]
 *	BPF_PROG_TEST_RUN of capture_ingress on synthetic frames (a pure ACK, a 100-byte
 *	query, a 1448-byte and a 3000-byte segment (the largest a test run takes), each
 *	way) and of an
 *	empty program that returns TCX_NEXT, REPEAT times each (default 20,000: what a 64 MiB ring holds of the largest), in
 *	alternating rounds; prints ns per packet, the ratio to the empty program and the
 *	ring bytes per packet. The ring is drained between rounds, so no record is dropped.
 *
 *   bpf_cost attach-empty IFACE SECONDS
 *	Attaches the empty program with tcx to IFACE's ingress and egress for SECONDS (or
 *	until SIGINT/SIGTERM) and prints "empty run_cnt=N run_time_ns=T" of the time it
 *	was attached (kernel.bpf_stats_enabled must be 1): the same-run baseline of
 *	tests/bench/overhead.py, which runs the source with it attached and the agent not.
 *
 *   bpf_cost attach-floor IFACE PORT SECONDS ports|copy|copy_percpu [RING_MB]
 *	A floor from tests/bench/floor.bpf.c (build/floor.bpf.o, beside this program) on
 *	IFACE's ingress for PORT, as the agent attaches on lo, its ring (RING_MB, default 64)
 *	read like attach-capture's; prints "floor_KIND run_cnt=N run_time_ns=T": what any
 *	port filter (ports), and any program copying each packet into such a ring (copy),
 *	costs per packet under the same traffic.
 *
 *   bpf_cost attach-capture IFACE PORT SECONDS [RING_MB]
 *	The capture program alone on IFACE's ingress for PORT, its ring read by a loop like
 *	the agent's, without the agent's decoding: for bisecting the program's cost under
 *	real traffic (variants of bpf/capture.bpf.c built against this file). RING_MB: the
 *	ring's size (default 64, the agent's default).
 *
 * Needs root. Built by `make bench` into build/bpf_cost.
 */
#include <errno.h>
#include <net/if.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>
#include <linux/bpf.h>

#include "capture_event.h"
#include "capture.skel.h"

#define PORT 5432
enum { TCX_INGRESS = 46, TCX_EGRESS = 47 }; /* Debian 12's uapi headers predate tcx */

static uint64_t ring_bytes;

static int on_record(void *ctx, void *data, size_t size)
{
	(void)ctx;
	(void)data;
	ring_bytes += size + 8; /* the ring's record header */
	return 0;
}

/* An empty program: r0 = -1 (TCX_NEXT); exit. */
static int load_empty(void)
{
	struct bpf_insn insns[] = {
	    {.code = BPF_ALU64 | BPF_MOV | BPF_K, .dst_reg = BPF_REG_0, .imm = -1},
	    {.code = BPF_JMP | BPF_EXIT},
	};

	return bpf_prog_load(BPF_PROG_TYPE_SCHED_CLS, "empty", "GPL", insns, 2, NULL);
}

static size_t build_frame(uint8_t *buf, bool c2s, size_t plen, uint8_t flags)
{
	uint8_t *ip = buf + 14, *tcp = ip + 20;
	uint16_t sport = c2s ? 40000 : PORT, dport = c2s ? PORT : 40000;

	memset(buf, 0, 14 + 20 + 20);
	buf[12] = 0x08;
	ip[0] = 0x45;
	ip[2] = (20 + 20 + plen) >> 8;
	ip[3] = (20 + 20 + plen) & 0xff;
	ip[8] = 64;
	ip[9] = 6;
	inet_pton(AF_INET, c2s ? "127.0.0.1" : "127.0.0.2", ip + 12);
	inet_pton(AF_INET, c2s ? "127.0.0.2" : "127.0.0.1", ip + 16);
	tcp[0] = sport >> 8;
	tcp[1] = sport & 0xff;
	tcp[2] = dport >> 8;
	tcp[3] = dport & 0xff;
	tcp[7] = 1;
	tcp[12] = 5 << 4;
	tcp[13] = flags;
	tcp[14] = 0xff;
	memset(tcp + 20, 'Q', plen);
	return 14 + 20 + 20 + plen;
}

static double run(int prog, const uint8_t *frame, size_t len, int repeat)
{
	DECLARE_LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = frame, .data_size_in = len,
			    .repeat = repeat);

	if (bpf_prog_test_run_opts(prog, &opts)) {
		fprintf(stderr, "bpf_cost: BPF_PROG_TEST_RUN: %s\n", strerror(errno));
		exit(1);
	}
	return opts.duration; /* ns per run, averaged by the kernel */
}

static int cmd_run(int repeat)
{
	static uint8_t frame[14 + 40 + 4096];
	static const struct {
		const char *name;
		size_t plen;
		uint8_t flags;
	} cases[] = {
	    {"pure ACK", 0, 0x10},
	    {"100 B", 100, 0x18},
	    {"1448 B", 1448, 0x18},
	    {"3000 B", 3000, 0x18},
	};
	struct capture_bpf *skel;
	struct ring_buffer *rb;
	int empty, prog, rounds = 20;
	size_t i, d;

	skel = capture_bpf__open();
	if (!skel)
		return 1;
	skel->rodata->server_port = PORT;
	/* No wakeups: nobody reads during a run, so the agent's "wake once 1 MiB waits"
	 * would wake on every record here, which a reading agent does not do. */
	skel->rodata->wakeup_bytes = UINT64_MAX;
	bpf_map__set_max_entries(skel->maps.events, 64u << 20);
	if (capture_bpf__load(skel)) {
		fprintf(stderr, "bpf_cost: cannot load the capture program\n");
		return 1;
	}
	rb = ring_buffer__new(bpf_map__fd(skel->maps.events), on_record, NULL, NULL);
	empty = load_empty();
	if (!rb || empty < 0) {
		fprintf(stderr, "bpf_cost: setup failed: %s\n", strerror(errno));
		return 1;
	}
	prog = bpf_program__fd(skel->progs.capture_ingress);
	printf("%-10s %-4s %10s %10s %8s %12s\n", "payload", "dir", "empty ns", "capture ns",
	       "ratio", "ring B/pkt");
	/* A first pass over the whole ring: its pages' first touch is not per-packet cost. */
	for (i = 0; i < 64; i++) {
		size_t len = build_frame(frame, true, 3000, 0x18);

		run(prog, frame, len, 20000);
		ring_buffer__consume(rb);
	}
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		for (d = 0; d < 2; d++) {
			size_t len = build_frame(frame, d == 0, cases[i].plen, cases[i].flags);
			int n = repeat, r;
			double e = 0, c = 0;

			ring_bytes = 0;
			for (r = 0; r < rounds; r++) {
				e += run(empty, frame, len, n);
				c += run(prog, frame, len, n);
				ring_buffer__consume(rb);
			}
			printf("%-10s %-4s %10.1f %10.1f %8.2f %12.0f\n", cases[i].name,
			       d == 0 ? "c2s" : "s2c", e / rounds, c / rounds, c / e,
			       (double)ring_bytes / ((double)n * rounds));
		}
	}
	ring_buffer__free(rb);
	close(empty);
	capture_bpf__destroy(skel);
	return 0;
}

static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

/* Says "attached", then waits until end or a signal, reading rb (if any) as the agent does. */
static void hold(struct ring_buffer *rb, time_t end)
{
	signal(SIGINT, on_signal);
	signal(SIGTERM, on_signal);
	printf("attached\n");
	fflush(stdout);
	while (!stop && time(NULL) < end) {
		if (rb)
			ring_buffer__poll(rb, 10);
		else
			usleep(50000);
	}
}

static int cmd_attach_empty(const char *iface, int seconds)
{
	struct bpf_prog_info info = {};
	uint32_t info_len = sizeof(info);
	int prog, links[2], ifindex = if_nametoindex(iface), i;
	time_t end = time(NULL) + seconds;

	if (!ifindex) {
		fprintf(stderr, "bpf_cost: no interface %s\n", iface);
		return 2;
	}
	prog = load_empty();
	if (prog < 0) {
		fprintf(stderr, "bpf_cost: cannot load the empty program: %s\n", strerror(errno));
		return 1;
	}
	for (i = 0; i < 2; i++) {
		links[i] = bpf_link_create(prog, ifindex,
					   (enum bpf_attach_type)(i ? TCX_EGRESS : TCX_INGRESS), NULL);
		if (links[i] < 0) {
			fprintf(stderr, "bpf_cost: tcx attach on %s: %s\n", iface, strerror(errno));
			return 1;
		}
	}
	hold(NULL, end);
	if (bpf_obj_get_info_by_fd(prog, &info, &info_len))
		return 1;
	printf("empty run_cnt=%llu run_time_ns=%llu\n", (unsigned long long)info.run_cnt,
	       (unsigned long long)info.run_time_ns);
	close(links[0]);
	close(links[1]);
	close(prog);
	return 0;
}

/* The capture program attached to IFACE's ingress for PORT, its ring read as the agent
 * reads it (poll, then consume everything); prints its program statistics. */
static int cmd_attach_capture(const char *iface, int port, int seconds, int ring_mb)
{
	struct bpf_prog_info info = {};
	uint32_t info_len = sizeof(info);
	int ifindex = if_nametoindex(iface), link;
	time_t end = time(NULL) + seconds;
	struct capture_bpf *skel;
	struct ring_buffer *rb;

	if (!ifindex) {
		fprintf(stderr, "bpf_cost: no interface %s\n", iface);
		return 2;
	}
	skel = capture_bpf__open();
	if (!skel)
		return 1;
	skel->rodata->server_port = port;
	bpf_map__set_max_entries(skel->maps.events, (uint32_t)ring_mb << 20);
	if (capture_bpf__load(skel))
		return 1;
	rb = ring_buffer__new(bpf_map__fd(skel->maps.events), on_record, NULL, NULL);
	link = bpf_link_create(bpf_program__fd(skel->progs.capture_ingress), ifindex,
			       (enum bpf_attach_type)TCX_INGRESS, NULL);
	if (!rb || link < 0) {
		fprintf(stderr, "bpf_cost: attach on %s: %s\n", iface, strerror(errno));
		return 1;
	}
	hold(rb, end);
	if (bpf_obj_get_info_by_fd(bpf_program__fd(skel->progs.capture_ingress), &info, &info_len))
		return 1;
	printf("capture run_cnt=%llu run_time_ns=%llu ring_bytes=%llu\n",
	       (unsigned long long)info.run_cnt, (unsigned long long)info.run_time_ns,
	       (unsigned long long)ring_bytes);
	close(link);
	ring_buffer__free(rb);
	capture_bpf__destroy(skel);
	return 0;
}

/* A floor program from floor.bpf.o beside this binary, attached like cmd_attach_capture. */
static int cmd_attach_floor(const char *self, const char *iface, int port, int seconds,
			    const char *kind, int ring_mb)
{
	struct bpf_prog_info info = {};
	uint32_t info_len = sizeof(info);
	int ifindex = if_nametoindex(iface), link;
	time_t end = time(NULL) + seconds;
	char path[4096], name[32];
	const char *slash = strrchr(self, '/');
	struct bpf_object *obj;
	struct bpf_program *prog;
	struct bpf_map *rodata, *ring, *cpu_rings[2];
	struct ring_buffer *rb;
	uint16_t port16 = (uint16_t)port;

	if (!ifindex) {
		fprintf(stderr, "bpf_cost: no interface %s\n", iface);
		return 2;
	}
	snprintf(path, sizeof(path), "%.*sfloor.bpf.o", slash ? (int)(slash - self + 1) : 0, self);
	snprintf(name, sizeof(name), "floor_%s", kind);
	obj = bpf_object__open_file(path, NULL);
	if (!obj) {
		fprintf(stderr, "bpf_cost: cannot open %s: %s\n", path, strerror(errno));
		return 1;
	}
	prog = bpf_object__find_program_by_name(obj, name);
	rodata = bpf_object__find_map_by_name(obj, ".rodata");
	ring = bpf_object__find_map_by_name(obj, "events");
	cpu_rings[0] = bpf_object__find_map_by_name(obj, "rb0");
	cpu_rings[1] = bpf_object__find_map_by_name(obj, "rb1");
	if (!prog || !rodata || !ring || !cpu_rings[0] || !cpu_rings[1]) {
		fprintf(stderr, "bpf_cost: %s has no program %s (ports or copy)\n", path, name);
		return 2;
	}
	bpf_map__set_initial_value(rodata, &port16, sizeof(port16));
	bpf_map__set_max_entries(ring, (uint32_t)ring_mb << 20);
	bpf_map__set_max_entries(cpu_rings[0], (uint32_t)ring_mb << 19);
	bpf_map__set_max_entries(cpu_rings[1], (uint32_t)ring_mb << 19);
	if (bpf_object__load(obj))
		return 1;
	rb = ring_buffer__new(bpf_map__fd(ring), on_record, NULL, NULL);
	if (rb && (ring_buffer__add(rb, bpf_map__fd(cpu_rings[0]), on_record, NULL) ||
		   ring_buffer__add(rb, bpf_map__fd(cpu_rings[1]), on_record, NULL))) {
		ring_buffer__free(rb);
		rb = NULL;
	}
	link = bpf_link_create(bpf_program__fd(prog), ifindex, (enum bpf_attach_type)TCX_INGRESS,
			       NULL);
	if (!rb || link < 0) {
		fprintf(stderr, "bpf_cost: attach on %s: %s\n", iface, strerror(errno));
		return 1;
	}
	hold(rb, end);
	if (bpf_obj_get_info_by_fd(bpf_program__fd(prog), &info, &info_len))
		return 1;
	printf("%s run_cnt=%llu run_time_ns=%llu\n", name, (unsigned long long)info.run_cnt,
	       (unsigned long long)info.run_time_ns);
	close(link);
	ring_buffer__free(rb);
	bpf_object__close(obj);
	return 0;
}

int main(int argc, char **argv)
{
	if ((argc == 5 || argc == 6) && !strcmp(argv[1], "attach-capture"))
		return cmd_attach_capture(argv[2], atoi(argv[3]), atoi(argv[4]),
					  argc == 6 ? atoi(argv[5]) : 64);
	if (argc >= 2 && !strcmp(argv[1], "run"))
		return cmd_run(argc >= 3 ? atoi(argv[2]) : 20000);
	if (argc == 4 && !strcmp(argv[1], "attach-empty"))
		return cmd_attach_empty(argv[2], atoi(argv[3]));
	if ((argc == 6 || argc == 7) && !strcmp(argv[1], "attach-floor"))
		return cmd_attach_floor(argv[0], argv[2], atoi(argv[3]), atoi(argv[4]), argv[5],
					argc == 7 ? atoi(argv[6]) : 64);
	fprintf(stderr,
		"usage: bpf_cost run [REPEAT] | bpf_cost attach-empty IFACE SECONDS | "
		"bpf_cost attach-floor IFACE PORT SECONDS ports|copy|copy_percpu [RING_MB] | "
		"bpf_cost attach-capture IFACE PORT SECONDS [RING_MB]\n");
	return 2;
}
