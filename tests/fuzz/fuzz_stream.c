// SPDX-License-Identifier: BSD-2-Clause
/*
 * fuzz_stream — tcpstream's reassembly under random segment sequences, each flow decoded
 * by a session (pgwire inside). Input: segments, each 6 header bytes — flags and
 * direction (bit 7: server to client; TCPSTREAM_* bits), client port low byte (a few
 * flows), a sequence offset (2 bytes, relative to the direction's start), a length byte,
 * a time step — then that many payload bytes.
 */
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "fuzz_session.h"
#include "tcpstream.h"

static struct session_stats sst;

static void on_open(void *ctx, struct tcpstream_flow *f, uint64_t ts)
{
	struct session_config cfg;

	(void)ctx;
	session_config_default(&cfg);
	f->user = session_new(&cfg, &fuzz_session_handler, NULL, &sst, f->id, f->saw_syn, ts);
}

static void on_data(void *ctx, struct tcpstream_flow *f, enum tcpstream_dir dir,
		    const uint8_t *data, size_t len, uint64_t ts)
{
	(void)ctx;
	if (f->user)
		session_feed(f->user, (enum pgwire_dir)dir, data, len, ts);
}

static void on_gap(void *ctx, struct tcpstream_flow *f, enum tcpstream_dir dir, uint64_t missing,
		   uint64_t ts)
{
	(void)ctx;
	(void)missing;
	if (f->user)
		session_gap(f->user, (enum pgwire_dir)dir, ts);
}

static void on_close(void *ctx, struct tcpstream_flow *f, enum tcpstream_close_reason r,
		     uint64_t ts)
{
	(void)ctx;
	(void)r;
	session_free(f->user, ts);
	f->user = NULL;
}

static const struct tcpstream_handler th = {on_open, on_data, on_gap, on_close};

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct tcpstream_config cfg;
	struct tcpstream *ts;
	struct tcpstream_segment seg;
	uint64_t now = 1000;
	size_t i = 0;

	tcpstream_config_default(&cfg);
	cfg.max_flows = 4;
	cfg.max_flow_buffer = 4096;
	ts = tcpstream_new(&cfg, &th, NULL);
	if (!ts)
		return 0;
	while (i + 6 <= size) {
		const uint8_t *h = data + i;

		memset(&seg, 0, sizeof(seg));
		seg.dir = h[0] & 0x80 ? TCPSTREAM_S2C : TCPSTREAM_C2S;
		seg.flags = h[0] & (TCPSTREAM_FIN | TCPSTREAM_SYN | TCPSTREAM_RST | TCPSTREAM_ACK);
		seg.client.family = seg.server.family = 4;
		seg.client.addr[10] = seg.client.addr[11] = seg.server.addr[10] =
		    seg.server.addr[11] = 0xff;
		seg.client.addr[12] = seg.server.addr[12] = 127;
		seg.client.addr[15] = seg.server.addr[15] = 1;
		seg.client.port = (uint16_t)(40000 + (h[1] & 3));
		seg.server.port = 5432;
		seg.seq = (seg.dir == TCPSTREAM_C2S ? 1000u : 9000000u) + ((uint32_t)h[2] << 8 | h[3]);
		seg.ack = seg.dir == TCPSTREAM_C2S ? 9000001u : 1001u;
		seg.len = h[4];
		now += (uint64_t)h[5] * 1000000u;
		seg.ts_ns = now;
		i += 6;
		if (seg.len > size - i)
			seg.len = (uint32_t)(size - i);
		seg.data = data + i;
		i += seg.len;
		tcpstream_feed(ts, &seg);
		if (h[5] == 0xff)
			tcpstream_tick(ts, now);
	}
	tcpstream_free(ts);
	return 0;
}
