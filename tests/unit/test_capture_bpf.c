// SPDX-License-Identifier: BSD-2-Clause
/*
 * The kernel program, driven through BPF_PROG_TEST_RUN with synthetic Ethernet frames:
 * port and direction filter, payload copy, pure-ACK drop, SYN/FIN reporting, the
 * exclude map, and that the packet is never changed. Needs root (skipped otherwise).
 */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <cmocka.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "capture_event.h"
#include "capture.skel.h"

#define PORT	     5432
#define MAX_RECORDS  16
#define RING_BYTES   (1 << 20)
#define RING_RESERVE (64 << 10) /* kept for records without payload (data_limit) */

struct record {
	struct capture_event ev;
	uint8_t data[CAPTURE_CHUNK_MAX];
};

struct fixture {
	struct capture_bpf *skel;
	struct ring_buffer *rb;
	struct record rec[MAX_RECORDS];
	int n;
	struct record last[2]; /* the last two records consumed, [1] the latest */
	long total;	       /* records consumed since the last reset */
};

static int on_record(void *ctx, void *data, size_t size)
{
	struct fixture *f = ctx;

	assert_true(size >= sizeof(struct capture_event));
	assert_true(size <= sizeof(struct record));
	if (f->n < MAX_RECORDS)
		memcpy(&f->rec[f->n++], data, size);
	f->last[0] = f->last[1];
	memcpy(&f->last[1], data, size);
	f->total++;
	return 0;
}

static int setup(void **state)
{
	struct fixture *f;

	if (geteuid() != 0)
		return 0; /* each test skips */
	f = calloc(1, sizeof(*f));
	if (!f)
		return -1;
	f->skel = capture_bpf__open();
	if (!f->skel)
		return -1;
	f->skel->rodata->server_port = PORT;
	f->skel->rodata->wakeup_bytes = 1;
	f->skel->rodata->data_limit = RING_BYTES - RING_RESERVE;
	bpf_map__set_max_entries(f->skel->maps.events, RING_BYTES);
	if (capture_bpf__load(f->skel))
		return -1;
	f->rb = ring_buffer__new(bpf_map__fd(f->skel->maps.events), on_record, f, NULL);
	if (!f->rb)
		return -1;
	*state = f;
	return 0;
}

static int teardown(void **state)
{
	struct fixture *f = *state;

	if (!f)
		return 0;
	ring_buffer__free(f->rb);
	capture_bpf__destroy(f->skel);
	free(f);
	return 0;
}

static struct fixture *get(void **state)
{
	if (geteuid() != 0 || !*state)
		skip();
	return *state;
}

/* Builds Ethernet + IPv4/IPv6 + TCP (+ payload) into buf; returns the frame length. */
static size_t build_frame(uint8_t *buf, int family, const char *src, const char *dst,
			  uint16_t sport, uint16_t dport, uint32_t seq, uint8_t flags,
			  const uint8_t *payload, size_t plen)
{
	uint8_t *ip = buf + 14, *tcp;
	size_t iplen;

	memset(buf, 0, 14 + 40 + 20 + plen);
	if (family == 4) {
		buf[12] = 0x08;
		buf[13] = 0x00;
		iplen = 20;
		ip[0] = 0x45;
		ip[2] = (iplen + 20 + plen) >> 8;
		ip[3] = (iplen + 20 + plen) & 0xff;
		ip[8] = 64;
		ip[9] = 6;
		inet_pton(AF_INET, src, ip + 12);
		inet_pton(AF_INET, dst, ip + 16);
	} else {
		buf[12] = 0x86;
		buf[13] = 0xdd;
		iplen = 40;
		ip[0] = 0x60;
		ip[4] = (20 + plen) >> 8;
		ip[5] = (20 + plen) & 0xff;
		ip[6] = 6;
		ip[7] = 64;
		inet_pton(AF_INET6, src, ip + 8);
		inet_pton(AF_INET6, dst, ip + 24);
	}
	tcp = ip + iplen;
	tcp[0] = sport >> 8;
	tcp[1] = sport & 0xff;
	tcp[2] = dport >> 8;
	tcp[3] = dport & 0xff;
	tcp[4] = seq >> 24;
	tcp[5] = seq >> 16;
	tcp[6] = seq >> 8;
	tcp[7] = seq;
	tcp[12] = 5 << 4;
	tcp[13] = flags;
	tcp[14] = 0xff;
	if (plen)
		memcpy(tcp + 20, payload, plen);
	return 14 + iplen + 20 + plen;
}

/* Runs the ingress program on one frame, checks it passed unchanged, drains records. */
static void run_frame(struct fixture *f, const uint8_t *frame, size_t len)
{
	uint8_t out[4096];
	DECLARE_LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = frame, .data_size_in = len,
			    .data_out = out, .data_size_out = sizeof(out), .repeat = 1);
	int err;

	f->n = 0;
	err = bpf_prog_test_run_opts(bpf_program__fd(f->skel->progs.capture_ingress), &opts);
	assert_int_equal(err, 0);
	assert_int_equal((int)opts.retval, -1); /* TCX_NEXT / TC_ACT_UNSPEC: never drop */
	assert_int_equal(opts.data_size_out, len);
	assert_memory_equal(out, frame, len); /* never modified */
	ring_buffer__consume(f->rb);
}

/* run_frame with the packet's skb->tstamp set. BPF_PROG_TEST_RUN takes no tstamp_type
 * (the field must be 0: real time), so the monotonic stamp a local TCP stack leaves is
 * not reachable here; tests/bench/bpf_cost.c measures that path under real traffic. */
static void run_frame_stamped(struct fixture *f, const uint8_t *frame, size_t len, uint64_t tstamp)
{
	struct __sk_buff ctx = {.tstamp = tstamp};
	DECLARE_LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = frame, .data_size_in = len,
			    .ctx_in = &ctx, .ctx_size_in = sizeof(ctx), .repeat = 1);
	int err;

	f->n = 0;
	err = bpf_prog_test_run_opts(bpf_program__fd(f->skel->progs.capture_ingress), &opts);
	assert_int_equal(err, 0);
	assert_int_equal((int)opts.retval, -1);
	ring_buffer__consume(f->rb);
}

static uint64_t counter(struct fixture *f, uint32_t idx)
{
	int ncpu = libbpf_num_possible_cpus();
	struct capture_counters vals[ncpu];
	uint64_t sum = 0;
	uint32_t zero = 0;
	int i;

	assert_int_equal(bpf_map_lookup_elem(bpf_map__fd(f->skel->maps.counters), &zero, vals), 0);
	for (i = 0; i < ncpu; i++)
		sum += vals[i].c[idx];
	return sum;
}

static void test_ipv4_client_payload(void **state)
{
	struct fixture *f = get(state);
	const uint8_t payload[] = "\0\0\0\x08\0\x03\0\0select 1";
	uint8_t frame[256], want_src[16] = {[10] = 0xff, [11] = 0xff, 10, 1, 2, 3};
	size_t len = build_frame(frame, 4, "10.1.2.3", "10.1.2.4", 40000, PORT, 0xfffffff0, 0x18,
				 payload, sizeof(payload));
	uint64_t pkts = counter(f, CAPTURE_CNT_PACKETS), bytes = counter(f, CAPTURE_CNT_BYTES);

	run_frame(f, frame, len);
	assert_int_equal(f->n, 1);
	assert_int_equal(f->rec[0].ev.dir, CAPTURE_DIR_C2S);
	assert_int_equal(f->rec[0].ev.family, 4);
	assert_int_equal(f->rec[0].ev.sport, 40000);
	assert_int_equal(f->rec[0].ev.dport, PORT);
	assert_int_equal(f->rec[0].ev.seq, 0xfffffff0);
	assert_int_equal(f->rec[0].ev.payload_len, sizeof(payload));
	assert_int_equal(f->rec[0].ev.chunk_off, 0);
	assert_int_equal(f->rec[0].ev.chunk_len, sizeof(payload));
	assert_int_equal(f->rec[0].ev.tcp_flags, 0x18);
	assert_int_equal(f->rec[0].ev.ifindex, 1);
	assert_true(f->rec[0].ev.ts_ns > 0);
	assert_memory_equal(f->rec[0].ev.saddr, want_src, 16);
	assert_memory_equal(f->rec[0].data, payload, sizeof(payload));
	assert_int_equal(counter(f, CAPTURE_CNT_PACKETS), pkts + 1);
	assert_int_equal(counter(f, CAPTURE_CNT_BYTES), bytes + sizeof(payload));
}

/* A packet with a real-time (receive) stamp, as from another host: the record's time is
 * the monotonic clock's, not the stamp. */
static void test_packet_time_real_time_stamp_not_taken(void **state)
{
	struct fixture *f = get(state);
	const uint8_t payload[] = "\0\0\0\x08\0\x03\0\0select 1";
	uint8_t frame[256];
	size_t len = build_frame(frame, 4, "10.1.2.3", "10.1.2.4", 40000, PORT, 1, 0x18, payload,
				 sizeof(payload));
	struct timespec now;
	uint64_t before;

	clock_gettime(CLOCK_MONOTONIC, &now);
	before = (uint64_t)now.tv_sec * 1000000000u + (uint64_t)now.tv_nsec;
	run_frame_stamped(f, frame, len, 1700000000000000000ull);
	assert_int_equal(f->n, 1);
	assert_true(f->rec[0].ev.ts_ns >= before);
	assert_true(f->rec[0].ev.ts_ns < before + 10000000000ull);
}

static void test_ipv6_server_payload(void **state)
{
	struct fixture *f = get(state);
	uint8_t payload[3000], frame[4096], want_dst[16];
	size_t len, i;

	for (i = 0; i < sizeof(payload); i++)
		payload[i] = (uint8_t)(i * 7 + 3);
	len = build_frame(frame, 6, "2001:db8::1", "2001:db8::2", PORT, 50123, 12345, 0x18, payload,
			  sizeof(payload));
	inet_pton(AF_INET6, "2001:db8::2", want_dst);
	run_frame(f, frame, len);
	assert_int_equal(f->n, 1);
	assert_int_equal(f->rec[0].ev.dir, CAPTURE_DIR_S2C);
	assert_int_equal(f->rec[0].ev.family, 6);
	assert_int_equal(f->rec[0].ev.sport, PORT);
	assert_int_equal(f->rec[0].ev.dport, 50123);
	assert_int_equal(f->rec[0].ev.chunk_len, sizeof(payload));
	assert_memory_equal(f->rec[0].ev.daddr, want_dst, 16);
	assert_memory_equal(f->rec[0].data, payload, sizeof(payload));
}

static void test_other_ports_ignored(void **state)
{
	struct fixture *f = get(state);
	uint8_t frame[256];
	uint64_t pkts = counter(f, CAPTURE_CNT_PACKETS);
	size_t len;

	len = build_frame(frame, 4, "127.0.0.1", "127.0.0.1", 40000, PORT + 1, 1, 0x18,
			  (const uint8_t *)"x", 1);
	run_frame(f, frame, len);
	assert_int_equal(f->n, 0);
	len =
	    build_frame(frame, 6, "::1", "::1", PORT - 1, 40000, 1, 0x18, (const uint8_t *)"x", 1);
	run_frame(f, frame, len);
	assert_int_equal(f->n, 0);
	assert_int_equal(counter(f, CAPTURE_CNT_PACKETS), pkts);
}

static void test_pure_ack_dropped_flags_kept(void **state)
{
	struct fixture *f = get(state);
	uint8_t frame[256];
	uint64_t acks = counter(f, CAPTURE_CNT_PURE_ACKS);
	size_t len;

	len = build_frame(frame, 4, "127.0.0.1", "127.0.0.1", 40000, PORT, 1, 0x10, NULL, 0);
	run_frame(f, frame, len);
	assert_int_equal(f->n, 0);
	assert_int_equal(counter(f, CAPTURE_CNT_PURE_ACKS), acks + 1);

	/* SYN, FIN and RST are reported even without payload */
	len = build_frame(frame, 4, "127.0.0.1", "127.0.0.1", 40000, PORT, 77, 0x02, NULL, 0);
	run_frame(f, frame, len);
	assert_int_equal(f->n, 1);
	assert_int_equal(f->rec[0].ev.tcp_flags, 0x02);
	assert_int_equal(f->rec[0].ev.chunk_len, 0);
	assert_int_equal(f->rec[0].ev.seq, 77);
	len = build_frame(frame, 6, "::1", "::1", PORT, 40000, 78, 0x11, NULL, 0);
	run_frame(f, frame, len);
	assert_int_equal(f->n, 1);
	assert_int_equal(f->rec[0].ev.tcp_flags, 0x11);
	assert_int_equal(f->rec[0].ev.dir, CAPTURE_DIR_S2C);
	len = build_frame(frame, 4, "127.0.0.1", "127.0.0.1", 40000, PORT, 79, 0x04, NULL, 0);
	run_frame(f, frame, len);
	assert_int_equal(f->n, 1);
	assert_int_equal(f->rec[0].ev.tcp_flags, 0x04);
}

/* A ring filled up to data_limit refuses payload (counted as drops), but a packet's FIN
 * still arrives, at the end of its lost payload, and so does a FIN without payload: the
 * reader learns where the stream ended, and the loss becomes a gap of known size. */
static void test_full_ring_keeps_packet_ends(void **state)
{
	struct fixture *f = get(state);
	uint8_t payload[3000], frame[3200];
	uint64_t drops = counter(f, CAPTURE_CNT_RB_DROPS);
	int prog = bpf_program__fd(f->skel->progs.capture_ingress);
	size_t len;

	memset(payload, 'x', sizeof(payload));
	len = build_frame(frame, 4, "127.0.0.1", "127.0.0.1", 40000, PORT, 1000, 0x18, payload,
			  sizeof(payload));
	{
		/* 400 x 3,152 ring bytes: past data_limit, not past the ring */
		DECLARE_LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = frame, .data_size_in = len,
				    .repeat = 400);
		assert_int_equal(bpf_prog_test_run_opts(prog, &opts), 0);
	}
	assert_true(counter(f, CAPTURE_CNT_RB_DROPS) > drops); /* payload refused */
	drops = counter(f, CAPTURE_CNT_RB_DROPS);

	/* the last data with FIN (less room is left than its record needs): its payload
	 * refused, its end and FIN kept */
	len = build_frame(frame, 4, "127.0.0.1", "127.0.0.1", 40000, PORT, 5000, 0x19, payload,
			  sizeof(payload));
	{
		DECLARE_LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = frame, .data_size_in = len,
				    .repeat = 1);
		assert_int_equal(bpf_prog_test_run_opts(prog, &opts), 0);
	}
	assert_int_equal(counter(f, CAPTURE_CNT_RB_DROPS), drops + 1);
	/* the other side's FIN, without payload */
	len = build_frame(frame, 4, "127.0.0.1", "127.0.0.1", PORT, 40000, 9000, 0x11, NULL, 0);
	{
		DECLARE_LIBBPF_OPTS(bpf_test_run_opts, opts, .data_in = frame, .data_size_in = len,
				    .repeat = 1);
		assert_int_equal(bpf_prog_test_run_opts(prog, &opts), 0);
	}

	f->n = 0;
	f->total = 0;
	ring_buffer__consume(f->rb);
	assert_true(f->total > 250 && f->total < 400);
	assert_int_equal(f->last[0].ev.seq, 5000);
	assert_int_equal(f->last[0].ev.chunk_off, 3000); /* at the end of the lost payload */
	assert_int_equal(f->last[0].ev.chunk_len, 0);
	assert_int_equal(f->last[0].ev.payload_len, 3000);
	assert_int_equal(f->last[0].ev.tcp_flags & 0x01, 0x01);
	assert_int_equal(f->last[1].ev.seq, 9000);
	assert_int_equal(f->last[1].ev.dir, CAPTURE_DIR_S2C);
	assert_int_equal(f->last[1].ev.tcp_flags, 0x11);
	assert_int_equal(counter(f, CAPTURE_CNT_RB_DROPS), drops + 1);
}

static void test_exclude_map(void **state)
{
	struct fixture *f = get(state);
	struct capture_tuple t = {.sport = 41000, .dport = PORT};
	uint8_t frame[256], one = 1;
	uint64_t excluded = counter(f, CAPTURE_CNT_EXCLUDED);
	size_t len;

	t.saddr[10] = t.saddr[11] = t.daddr[10] = t.daddr[11] = 0xff;
	inet_pton(AF_INET, "127.0.0.1", t.saddr + 12);
	inet_pton(AF_INET, "127.0.0.1", t.daddr + 12);
	assert_int_equal(bpf_map_update_elem(bpf_map__fd(f->skel->maps.exclude), &t, &one, BPF_ANY),
			 0);
	f->skel->bss->exclude_active = 1;
	len = build_frame(frame, 4, "127.0.0.1", "127.0.0.1", 41000, PORT, 5, 0x18,
			  (const uint8_t *)"abc", 3);
	run_frame(f, frame, len);
	assert_int_equal(f->n, 0);
	assert_int_equal(counter(f, CAPTURE_CNT_EXCLUDED), excluded + 1);
	/* another client port on the same addresses is still captured */
	len = build_frame(frame, 4, "127.0.0.1", "127.0.0.1", 41001, PORT, 5, 0x18,
			  (const uint8_t *)"abc", 3);
	run_frame(f, frame, len);
	assert_int_equal(f->n, 1);
	assert_memory_equal(f->rec[0].data, "abc", 3);
}

static void test_not_tcp_and_fragments_ignored(void **state)
{
	struct fixture *f = get(state);
	uint8_t frame[256];
	size_t len;

	len = build_frame(frame, 4, "127.0.0.1", "127.0.0.1", 40000, PORT, 1, 0x18,
			  (const uint8_t *)"x", 1);
	frame[14 + 9] = 17; /* UDP */
	run_frame(f, frame, len);
	assert_int_equal(f->n, 0);
	len = build_frame(frame, 4, "127.0.0.1", "127.0.0.1", 40000, PORT, 1, 0x18,
			  (const uint8_t *)"x", 1);
	frame[14 + 6] = 0x20; /* more fragments */
	run_frame(f, frame, len);
	assert_int_equal(f->n, 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_ipv4_client_payload),
	    cmocka_unit_test(test_packet_time_real_time_stamp_not_taken),
	    cmocka_unit_test(test_ipv6_server_payload),
	    cmocka_unit_test(test_other_ports_ignored),
	    cmocka_unit_test(test_pure_ack_dropped_flags_kept),
	    cmocka_unit_test(test_exclude_map),
	    cmocka_unit_test(test_full_ring_keeps_packet_ends),
	    cmocka_unit_test(test_not_tcp_and_fragments_ignored),
	};

	if (geteuid() != 0)
		fprintf(stderr, "test_capture_bpf: not root: BPF_PROG_TEST_RUN tests skipped\n");
	return cmocka_run_group_tests_name("capture_bpf", tests, setup, teardown);
}
