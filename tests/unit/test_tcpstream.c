// SPDX-License-Identifier: BSD-2-Clause
/*
 * Unit tests of tcpstream (TCP reassembly). Every test rebuilds the byte streams the data
 * callback delivers and compares them with what was sent, byte for byte, and checks gap
 * events and counters exactly.
 *
 * TCPSTREAM_BENCH=1 ./build/test_tcpstream also prints the in-order throughput (no timed
 * assertion: machines differ).
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

#include <cmocka.h>

#include "tcpstream.h"

#define SEC	 1000000000ULL
#define MS	 1000000ULL
#define MAX_REC	 64
#define MAX_GAPS 256

/* ---- a collector of callback events ------------------------------------------------- */

struct gap_ev {
	uint64_t at; /* bytes delivered in this direction before the gap */
	uint64_t missing;
	uint64_t ts_ns;
};

struct dirlog {
	uint8_t *buf;
	uint64_t *ts; /* capture time of every delivered byte, when the collector tracks it */
	size_t len, cap;
	struct gap_ev gaps[MAX_GAPS];
	int ngaps;
};

struct rec {
	bool opened;
	int closes;
	enum tcpstream_close_reason reason;
	uint64_t open_ts, close_ts;
	struct tcpstream_flow at_open; /* copy of what open saw */
	struct dirlog d[2];
};

struct col {
	struct rec rec[MAX_REC];
	bool track_ts;
	int opens, closes;
};

static struct rec *rec_of(struct tcpstream_flow *flow)
{
	struct rec *r = flow->user;

	assert_non_null(r);
	assert_true(r->opened);
	/* nothing may follow the close callback */
	assert_int_equal(r->closes, 0);
	return r;
}

static void on_open(void *ctx, struct tcpstream_flow *flow, uint64_t ts_ns)
{
	struct col *c = ctx;
	struct rec *r;

	assert_in_range(flow->id, 1, MAX_REC - 1);
	r = &c->rec[flow->id];
	assert_false(r->opened);
	assert_null(flow->user);
	r->opened = true;
	r->open_ts = ts_ns;
	r->at_open = *flow;
	flow->user = r;
	c->opens++;
}

static void on_data(void *ctx, struct tcpstream_flow *flow, enum tcpstream_dir dir,
		    const uint8_t *data, size_t len, uint64_t ts_ns)
{
	struct col *c = ctx;
	struct dirlog *d = &rec_of(flow)->d[dir];
	size_t i;

	assert_true(len > 0);
	if (d->len + len > d->cap) {
		d->cap = (d->len + len) * 2;
		d->buf = realloc(d->buf, d->cap);
		assert_non_null(d->buf);
		if (c->track_ts) {
			d->ts = realloc(d->ts, d->cap * sizeof(*d->ts));
			assert_non_null(d->ts);
		}
	}
	memcpy(d->buf + d->len, data, len);
	if (c->track_ts)
		for (i = 0; i < len; i++)
			d->ts[d->len + i] = ts_ns;
	d->len += len;
}

static void on_gap(void *ctx, struct tcpstream_flow *flow, enum tcpstream_dir dir, uint64_t missing,
		   uint64_t ts_ns)
{
	struct dirlog *d = &rec_of(flow)->d[dir];

	(void)ctx;
	assert_true(d->ngaps < MAX_GAPS);
	d->gaps[d->ngaps++] = (struct gap_ev){.at = d->len, .missing = missing, .ts_ns = ts_ns};
}

static void on_close(void *ctx, struct tcpstream_flow *flow, enum tcpstream_close_reason reason,
		     uint64_t ts_ns)
{
	struct col *c = ctx;
	struct rec *r = rec_of(flow);

	r->closes++;
	r->reason = reason;
	r->close_ts = ts_ns;
	c->closes++;
}

static const struct tcpstream_handler handler = {
    .open = on_open,
    .data = on_data,
    .gap = on_gap,
    .close = on_close,
};

static struct col *col_new(bool track_ts)
{
	struct col *c = calloc(1, sizeof(*c));

	assert_non_null(c);
	c->track_ts = track_ts;
	return c;
}

static void col_free(struct col *c)
{
	int i, d;

	for (i = 0; i < MAX_REC; i++)
		for (d = 0; d < 2; d++) {
			free(c->rec[i].d[d].buf);
			free(c->rec[i].d[d].ts);
		}
	free(c);
}

static struct tcpstream *new_ts(const struct tcpstream_config *cfg, struct col *c)
{
	struct tcpstream_config def;
	struct tcpstream *ts;

	if (!cfg) {
		tcpstream_config_default(&def);
		cfg = &def;
	}
	ts = tcpstream_new(cfg, &handler, c);
	assert_non_null(ts);
	return ts;
}

/* Asserts that dir of flow id delivered exactly want[0..len) and no gap. */
static void assert_stream(struct col *c, int id, int dir, const uint8_t *want, size_t len)
{
	struct dirlog *d = &c->rec[id].d[dir];

	assert_int_equal(d->ngaps, 0);
	assert_int_equal(d->len, len);
	if (len)
		assert_memory_equal(d->buf, want, len);
}

/*
 * Rebuilds dir of flow id against orig, where every gap must report its exact size: each
 * delivered run must equal orig at the offset the gaps before it imply. Returns the stream
 * offset reached (delivered + gap bytes).
 */
static uint64_t check_with_gaps(struct col *c, int id, int dir, const uint8_t *orig,
				size_t orig_len)
{
	struct dirlog *d = &c->rec[id].d[dir];
	uint64_t pos = 0, from = 0, run;
	int g;

	for (g = 0; g <= d->ngaps; g++) {
		uint64_t to = g < d->ngaps ? d->gaps[g].at : d->len;

		run = to - from;
		assert_true(pos + run <= orig_len);
		if (run)
			assert_memory_equal(d->buf + from, orig + pos, run);
		pos += run;
		from = to;
		if (g < d->ngaps) {
			assert_true(d->gaps[g].missing > 0);
			pos += d->gaps[g].missing;
		}
	}
	return pos;
}

/* ---- making traffic ----------------------------------------------------------------- */

static uint64_t rng_next(uint64_t *s)
{
	/* xorshift64*: fixed seeds make every run of the suite identical */
	*s ^= *s >> 12;
	*s ^= *s << 25;
	*s ^= *s >> 27;
	return *s * 2685821657736338717ULL;
}

static uint64_t rng_range(uint64_t *s, uint64_t lo, uint64_t hi)
{
	return lo + rng_next(s) % (hi - lo + 1);
}

static uint8_t *make_bytes(size_t n, uint64_t seed)
{
	uint8_t *b = malloc(n ? n : 1);
	uint64_t s = seed * 0x9e3779b97f4a7c15ULL + 1;
	size_t i;

	assert_non_null(b);
	for (i = 0; i < n; i++)
		b[i] = (uint8_t)(rng_next(&s) >> 56);
	return b;
}

struct conn {
	struct tcpstream_addr client, server;
	uint32_t isn[2];
	uint32_t ack[2]; /* acknowledgment number each direction's segments carry */
};

static void addr4(struct tcpstream_addr *a, uint8_t a0, uint8_t a1, uint8_t a2, uint8_t a3,
		  uint16_t port)
{
	memset(a, 0, sizeof(*a));
	a->addr[10] = a->addr[11] = 0xff;
	a->addr[12] = a0;
	a->addr[13] = a1;
	a->addr[14] = a2;
	a->addr[15] = a3;
	a->port = port;
	a->family = 4;
}

static void conn_init(struct conn *c, uint16_t cport, uint32_t isn_c, uint32_t isn_s)
{
	addr4(&c->client, 10, 1, 2, 3, cport);
	addr4(&c->server, 10, 0, 0, 1, 5432);
	c->isn[TCPSTREAM_C2S] = isn_c;
	c->isn[TCPSTREAM_S2C] = isn_s;
	/* each side acknowledges the other's SYN and nothing more, unless a test says so */
	c->ack[TCPSTREAM_C2S] = isn_s + 1;
	c->ack[TCPSTREAM_S2C] = isn_c + 1;
}

/* Makes dir's segments acknowledge the other direction's stream up to offset off. */
static void conn_ack(struct conn *c, int dir, uint64_t off)
{
	c->ack[dir] = c->isn[!dir] + 1 + (uint32_t)off;
}

static void feed_seq(struct tcpstream *ts, const struct conn *c, int dir, uint32_t seq,
		     uint8_t flags, const uint8_t *data, uint32_t len, uint64_t t)
{
	struct tcpstream_segment seg = {
	    .ts_ns = t,
	    .client = c->client,
	    .server = c->server,
	    .dir = dir,
	    .seq = seq,
	    .ack = c->ack[dir],
	    .flags = flags,
	    .data = len ? data : NULL,
	    .len = len,
	};

	tcpstream_feed(ts, &seg);
}

/* Feeds stream bytes [off, off+len) of dir (data points at them); ACK set on all but SYN. */
static void feed_off(struct tcpstream *ts, const struct conn *c, int dir, uint64_t off,
		     uint8_t flags, const uint8_t *data, uint32_t len, uint64_t t)
{
	feed_seq(ts, c, dir, c->isn[dir] + 1 + (uint32_t)off, flags | TCPSTREAM_ACK, data, len, t);
}

static void handshake(struct tcpstream *ts, const struct conn *c, uint64_t t)
{
	feed_seq(ts, c, TCPSTREAM_C2S, c->isn[0], TCPSTREAM_SYN, NULL, 0, t);
	feed_seq(ts, c, TCPSTREAM_S2C, c->isn[1], TCPSTREAM_SYN | TCPSTREAM_ACK, NULL, 0, t + 1);
	feed_seq(ts, c, TCPSTREAM_C2S, c->isn[0] + 1, TCPSTREAM_ACK, NULL, 0, t + 2);
}

/* Both FINs at the end of streams of c2s_len and s2c_len bytes. */
static void finish(struct tcpstream *ts, const struct conn *c, uint64_t c2s_len, uint64_t s2c_len,
		   uint64_t t)
{
	feed_off(ts, c, TCPSTREAM_C2S, c2s_len, TCPSTREAM_FIN, NULL, 0, t);
	feed_off(ts, c, TCPSTREAM_S2C, s2c_len, TCPSTREAM_FIN, NULL, 0, t + 1);
}

struct piece {
	uint64_t off;
	uint32_t len;
	uint8_t flags;
	uint64_t ts;
};

/* Cuts [0, total) into pieces of minlen..maxlen bytes; returns a malloc'd array. */
static struct piece *split(uint64_t total, uint32_t minlen, uint32_t maxlen, uint64_t *rng,
			   size_t *n)
{
	struct piece *p = malloc(sizeof(*p) * (total / minlen + 1));
	uint64_t off = 0;
	uint32_t len;

	assert_non_null(p);
	*n = 0;
	while (off < total) {
		len = (uint32_t)rng_range(rng, minlen, maxlen);
		if (len > total - off)
			len = (uint32_t)(total - off);
		p[(*n)++] = (struct piece){.off = off, .len = len};
		off += len;
	}
	return p;
}

static void shuffle(struct piece *p, size_t n, uint64_t *rng)
{
	struct piece t;
	size_t i, j;

	for (i = n; i > 1; i--) {
		j = rng_next(rng) % i;
		t = p[i - 1];
		p[i - 1] = p[j];
		p[j] = t;
	}
}

/* ---- tests -------------------------------------------------------------------------- */

static void test_config_and_new(void **state)
{
	struct tcpstream_config cfg, bad;
	struct tcpstream *ts;
	struct conn c;
	uint8_t x = 'x';

	(void)state;
	tcpstream_config_default(&cfg);
	assert_int_equal(cfg.max_flows, 65536);
	assert_int_equal(cfg.max_flow_buffer, 4 << 20);
	assert_int_equal(cfg.max_total_buffer, 256ULL << 20);
	assert_int_equal(cfg.hole_timeout_ns, 1 * SEC);
	assert_int_equal(cfg.idle_timeout_ns, 600 * SEC);
	assert_int_equal(cfg.linger_ns, 5 * SEC);

	bad = cfg;
	bad.max_flows = 0;
	errno = 0;
	assert_null(tcpstream_new(&bad, &handler, NULL));
	assert_int_equal(errno, EINVAL);
	bad = cfg;
	bad.max_flow_buffer = 0;
	errno = 0;
	assert_null(tcpstream_new(&bad, &handler, NULL));
	assert_int_equal(errno, EINVAL);
	bad = cfg;
	bad.max_total_buffer = 0;
	errno = 0;
	assert_null(tcpstream_new(&bad, &handler, NULL));
	assert_int_equal(errno, EINVAL);
	bad = cfg;
	bad.idle_timeout_ns = 0;
	errno = 0;
	assert_null(tcpstream_new(&bad, &handler, NULL));
	assert_int_equal(errno, EINVAL);
	errno = 0;
	assert_null(tcpstream_new(NULL, &handler, NULL));
	assert_int_equal(errno, EINVAL);

	tcpstream_free(NULL);

	/* no handler at all, and no linger: still counts */
	cfg.linger_ns = 0;
	ts = tcpstream_new(&cfg, NULL, NULL);
	assert_non_null(ts);
	conn_init(&c, 40000, 1, 2);
	handshake(ts, &c, 1);
	feed_off(ts, &c, TCPSTREAM_C2S, 0, 0, &x, 1, 5);
	finish(ts, &c, 1, 0, 6);
	assert_int_equal(tcpstream_stats(ts)->bytes_delivered, 1);
	assert_int_equal(tcpstream_stats(ts)->flows_closed, 1);
	tcpstream_free(ts);
}

static void test_in_order(void **state)
{
	const size_t lc = 100000, ls = 300000;
	uint8_t *bc = make_bytes(lc, 1), *bs = make_bytes(ls, 2);
	struct col *col = col_new(true);
	struct tcpstream *ts = new_ts(NULL, col);
	const struct tcpstream_stats *st = tcpstream_stats(ts);
	uint64_t oc = 0, os = 0, t = 1000, nseg = 3;
	struct conn c;
	uint32_t n;
	size_t i;

	(void)state;
	conn_init(&c, 40001, 123456789, 987654321);
	handshake(ts, &c, t);
	assert_int_equal(col->opens, 1);
	assert_true(col->rec[1].at_open.saw_syn);
	assert_int_equal(col->rec[1].open_ts, t);
	assert_memory_equal(&col->rec[1].at_open.server, &c.server, sizeof(c.server));
	assert_memory_equal(&col->rec[1].at_open.client, &c.client, sizeof(c.client));
	while (oc < lc || os < ls) {
		if (oc < lc) {
			n = lc - oc < 1448 ? lc - oc : 1448;
			feed_off(ts, &c, TCPSTREAM_C2S, oc, 0, bc + oc, n, ++t);
			oc += n;
			nseg++;
		}
		for (i = 0; i < 3 && os < ls; i++) {
			n = ls - os < 1448 ? ls - os : 1448;
			feed_off(ts, &c, TCPSTREAM_S2C, os, 0, bs + os, n, ++t);
			os += n;
			nseg++;
		}
	}
	/* everything is delivered at once, from the caller's segments */
	assert_int_equal(st->buffered_bytes, 0);
	assert_int_equal(col->rec[1].d[0].len, lc);
	assert_int_equal(col->closes, 0);
	finish(ts, &c, lc, ls, ++t);
	nseg += 2;

	assert_stream(col, 1, TCPSTREAM_C2S, bc, lc);
	assert_stream(col, 1, TCPSTREAM_S2C, bs, ls);
	assert_int_equal(col->rec[1].closes, 1);
	assert_int_equal(col->rec[1].reason, TCPSTREAM_CLOSE_FIN);
	assert_int_equal(col->rec[1].close_ts, t + 1);
	assert_int_equal(st->segments, nseg);
	assert_int_equal(st->flows_opened, 1);
	assert_int_equal(st->flows_closed, 1);
	assert_int_equal(st->flows_active, 0);
	assert_int_equal(st->flows_midstream, 0);
	assert_int_equal(st->bytes_delivered, lc + ls);
	assert_int_equal(st->dup_segments, 0);
	assert_int_equal(st->dup_bytes, 0);
	assert_int_equal(st->ooo_segments, 0);
	assert_int_equal(st->gaps, 0);
	assert_int_equal(st->views_merged, 0);
	assert_int_equal(st->segments_rejected, 0);
	tcpstream_free(ts);
	col_free(col);
	free(bc);
	free(bs);
}

/* Random permutations of one direction's segments, FIN on the last one. */
static void test_shuffled(void **state)
{
	int run;

	(void)state;
	for (run = 0; run < 60; run++) {
		uint64_t rng = 1000 + run, prefix = 0, want_ooo = 0;
		size_t len = rng_range(&rng, 1, 80000), n, i, j;
		uint8_t *orig = make_bytes(len, run);
		struct piece *p = split(len, 1, run % 2 ? 2000 : 200, &rng, &n);
		bool *got = calloc(n, sizeof(*got));
		uint64_t *want_ts = malloc(len * sizeof(*want_ts));
		struct col *col = col_new(true);
		struct tcpstream *ts = new_ts(NULL, col);
		const struct tcpstream_stats *st = tcpstream_stats(ts);
		uint64_t *offs = malloc((n + 1) * sizeof(*offs));
		size_t next_piece = 0;
		struct conn c;

		assert_non_null(got);
		assert_non_null(want_ts);
		assert_non_null(offs);
		conn_init(&c, 40002, (uint32_t)rng_next(&rng), (uint32_t)rng_next(&rng));
		p[n - 1].flags = TCPSTREAM_FIN;
		/* remember each piece's index in stream order (in .ts) before shuffling */
		for (i = 0; i < n; i++) {
			p[i].ts = i;
			offs[i] = p[i].off;
		}
		offs[n] = len;
		shuffle(p, n, &rng);
		handshake(ts, &c, 10);
		for (i = 0; i < n; i++) {
			uint64_t t = 100 + i;

			if (p[i].off > prefix)
				want_ooo++;
			/* the contiguous prefix: up to the first piece not fed yet */
			got[p[i].ts] = true;
			while (next_piece < n && got[next_piece])
				next_piece++;
			prefix = offs[next_piece];
			for (j = 0; j < p[i].len; j++)
				want_ts[p[i].off + j] = t;
			feed_off(ts, &c, TCPSTREAM_C2S, p[i].off, p[i].flags, orig + p[i].off,
				 p[i].len, t);
		}
		assert_int_equal(col->closes, 0);
		assert_int_equal(st->buffered_bytes, 0);
		feed_off(ts, &c, TCPSTREAM_S2C, 0, TCPSTREAM_FIN, (const uint8_t *)"ok", 2, 10000);

		assert_stream(col, 1, TCPSTREAM_C2S, orig, len);
		assert_stream(col, 1, TCPSTREAM_S2C, (const uint8_t *)"ok", 2);
		/* each byte carries the capture time of the segment that brought it */
		assert_memory_equal(col->rec[1].d[0].ts, want_ts, len * sizeof(*want_ts));
		assert_int_equal(col->rec[1].closes, 1);
		assert_int_equal(col->rec[1].reason, TCPSTREAM_CLOSE_FIN);
		assert_int_equal(st->ooo_segments, want_ooo);
		assert_int_equal(st->dup_segments, 0);
		assert_int_equal(st->dup_bytes, 0);
		assert_int_equal(st->gaps, 0);
		assert_int_equal(st->bytes_delivered, len + 2);
		assert_int_equal(st->segments, n + 4);
		tcpstream_free(ts);
		col_free(col);
		free(orig);
		free(p);
		free(got);
		free(want_ts);
		free(offs);
	}
}

/*
 * Byte-level model of what tcpstream must count for a sequence of possibly overlapping
 * segments of one direction with no loss: a segment is a duplicate if it brings no byte not
 * yet received (and no first FIN), out of order if it brings some and starts past the
 * contiguous prefix.
 */
struct model {
	bool *recv;
	uint64_t len, prefix;
	bool fin;
	uint64_t dup_segments, dup_bytes, ooo;
};

static void model_feed(struct model *m, const struct piece *p)
{
	uint64_t fresh = 0, i;
	bool fin_new = (p->flags & TCPSTREAM_FIN) && !m->fin;

	for (i = p->off; i < p->off + p->len; i++)
		if (!m->recv[i]) {
			m->recv[i] = true;
			fresh++;
		}
	m->dup_bytes += p->len - fresh;
	if (fresh && p->off > m->prefix)
		m->ooo++;
	if (!fresh && !fin_new)
		m->dup_segments++;
	if (p->flags & TCPSTREAM_FIN)
		m->fin = true;
	while (m->prefix < m->len && m->recv[m->prefix])
		m->prefix++;
}

static void test_duplicates(void **state)
{
	int run;

	(void)state;
	for (run = 0; run < 40; run++) {
		uint64_t rng = 5000 + run;
		size_t len = rng_range(&rng, 1000, 60000), n, i, k, nc = 0;
		uint8_t *orig = make_bytes(len, 100 + run);
		struct piece *p = split(len, 1, 1500, &rng, &n);
		struct piece *copies = malloc(sizeof(*copies) * n * 3);
		struct model m = {.recv = calloc(len, 1), .len = len};
		struct col *col = col_new(false);
		struct tcpstream *ts = new_ts(NULL, col);
		const struct tcpstream_stats *st = tcpstream_stats(ts);
		uint64_t extra_bytes = 0;
		struct conn c;

		p[n - 1].flags = TCPSTREAM_FIN;
		for (i = 0; i < n; i++) {
			k = rng_range(&rng, 1, 3);
			while (k--) {
				copies[nc++] = p[i];
				extra_bytes += p[i].len;
			}
			extra_bytes -= p[i].len;
		}
		shuffle(copies, nc, &rng);
		conn_init(&c, 40003, (uint32_t)rng_next(&rng), 7);
		handshake(ts, &c, 10);
		for (i = 0; i < nc; i++) {
			model_feed(&m, &copies[i]);
			feed_off(ts, &c, TCPSTREAM_C2S, copies[i].off, copies[i].flags,
				 orig + copies[i].off, copies[i].len, 100 + i);
		}
		assert_int_equal(st->dup_segments, nc - n);
		assert_int_equal(st->dup_segments, m.dup_segments);
		assert_int_equal(st->dup_bytes, extra_bytes);
		assert_int_equal(st->ooo_segments, m.ooo);
		assert_int_equal(st->buffered_bytes, 0);
		finish(ts, &c, len, 0, 1000000);
		assert_stream(col, 1, TCPSTREAM_C2S, orig, len);
		assert_int_equal(col->rec[1].closes, 1);
		assert_int_equal(st->gaps, 0);
		tcpstream_free(ts);
		col_free(col);
		free(orig);
		free(p);
		free(copies);
		free(m.recv);
	}
}

/* The stream sent under three segmentations with different boundaries, all interleaved. */
static void test_overlaps(void **state)
{
	int run;

	(void)state;
	for (run = 0; run < 40; run++) {
		uint64_t rng = 9000 + run, fed = 0;
		size_t len = rng_range(&rng, 5000, 50000), na, nb, nr, n, i;
		uint8_t *orig = make_bytes(len, 200 + run);
		struct piece *a = split(len, 1, 1500, &rng, &na);
		struct piece *b = split(len, 700, 3000, &rng, &nb);
		struct piece *all;
		struct model m = {.recv = calloc(len, 1), .len = len};
		struct col *col = col_new(true);
		struct tcpstream *ts = new_ts(NULL, col);
		const struct tcpstream_stats *st = tcpstream_stats(ts);
		struct conn c;

		nr = rng_range(&rng, 0, 40);
		all = malloc(sizeof(*all) * (na + nb + nr));
		a[na - 1].flags = TCPSTREAM_FIN;
		memcpy(all, a, sizeof(*a) * na);
		memcpy(all + na, b, sizeof(*b) * nb);
		n = na + nb;
		for (i = 0; i < nr; i++) {
			uint64_t off = rng_range(&rng, 0, len - 1);
			uint64_t l = rng_range(&rng, 1, 4000);

			if (l > len - off)
				l = len - off;
			all[n++] = (struct piece){.off = off, .len = (uint32_t)l};
		}
		shuffle(all, n, &rng);
		conn_init(&c, 40004, (uint32_t)rng_next(&rng), 77);
		handshake(ts, &c, 10);
		for (i = 0; i < n; i++) {
			model_feed(&m, &all[i]);
			fed += all[i].len;
			feed_off(ts, &c, TCPSTREAM_C2S, all[i].off, all[i].flags, orig + all[i].off,
				 all[i].len, 100 + i);
		}
		assert_int_equal(st->buffered_bytes, 0);
		assert_int_equal(st->dup_bytes, fed - len);
		assert_int_equal(st->dup_bytes, m.dup_bytes);
		assert_int_equal(st->dup_segments, m.dup_segments);
		assert_int_equal(st->ooo_segments, m.ooo);
		finish(ts, &c, len, 0, 1000000);
		assert_stream(col, 1, TCPSTREAM_C2S, orig, len);
		assert_int_equal(col->rec[1].closes, 1);
		assert_int_equal(col->rec[1].reason, TCPSTREAM_CLOSE_FIN);
		assert_int_equal(st->gaps, 0);
		tcpstream_free(ts);
		col_free(col);
		free(orig);
		free(a);
		free(b);
		free(all);
		free(m.recv);
	}
}

/* Segment i of the hole tests: 1000 bytes, except segment 12 (500). */
static uint64_t hole_off(int i)
{
	return i <= 12 ? 1000ULL * i : 12500 + 1000ULL * (i - 13);
}

static uint32_t hole_len(int i)
{
	return i == 12 ? 500 : 1000;
}

static void test_hole_timeout(void **state)
{
	const size_t len = 19500;
	uint8_t *orig = make_bytes(len, 3), *want = malloc(len);
	struct col *col = col_new(false);
	struct tcpstream *ts = new_ts(NULL, col); /* hole_timeout 1 s */
	const struct tcpstream_stats *st = tcpstream_stats(ts);
	const uint64_t t0 = 10 * SEC;
	struct dirlog *d = &col->rec[1].d[0];
	struct conn c;
	int i;

	(void)state;
	conn_init(&c, 40005, 0x12345678, 0x9abcdef0);
	handshake(ts, &c, t0 - SEC);
	for (i = 0; i < 20; i++)
		if (i != 5 && i != 12)
			feed_off(ts, &c, TCPSTREAM_C2S, hole_off(i), 0, orig + hole_off(i),
				 hole_len(i), t0 + i * MS);
	assert_int_equal(d->len, 5000);
	assert_int_equal(st->ooo_segments, 13);
	assert_int_equal(st->buffered_bytes, 13000);

	/* not before the oldest held piece (segment 6) is more than 1 s old */
	tcpstream_tick(ts, t0 + 6 * MS + SEC);
	assert_int_equal(st->gaps, 0);
	assert_int_equal(d->len, 5000);
	tcpstream_tick(ts, t0 + 6 * MS + SEC + 1);
	assert_int_equal(st->hole_timeouts, 1);
	assert_int_equal(d->ngaps, 1);
	assert_int_equal(d->gaps[0].at, 5000);
	assert_int_equal(d->gaps[0].missing, 1000);
	assert_int_equal(d->gaps[0].ts_ns, t0 + 6 * MS);
	assert_int_equal(d->len, 11000); /* then 6..11, up to the second hole */
	assert_int_equal(st->buffered_bytes, 7000);

	/* the second hole has its own clock: segment 13's */
	tcpstream_tick(ts, t0 + 13 * MS + SEC);
	assert_int_equal(st->hole_timeouts, 1);
	tcpstream_tick(ts, t0 + 13 * MS + SEC + 1);
	assert_int_equal(st->hole_timeouts, 2);
	assert_int_equal(d->ngaps, 2);
	assert_int_equal(d->gaps[1].at, 11000);
	assert_int_equal(d->gaps[1].missing, 500);
	assert_int_equal(st->gaps, 2);
	assert_int_equal(st->gap_bytes, 1500);
	assert_int_equal(st->buffered_bytes, 0);
	assert_int_equal(st->buffer_cap_hits, 0);

	/* the lost segment showing up after all is only a duplicate now */
	feed_off(ts, &c, TCPSTREAM_C2S, hole_off(5), 0, orig + hole_off(5), 1000, t0 + 2 * SEC);
	assert_int_equal(st->dup_segments, 1);
	assert_int_equal(st->dup_bytes, 1000);
	finish(ts, &c, len, 0, t0 + 3 * SEC);

	memcpy(want, orig, 5000);
	memcpy(want + 5000, orig + 6000, 6000);
	memcpy(want + 11000, orig + 12500, 7000);
	assert_int_equal(d->len, 18000);
	assert_memory_equal(d->buf, want, 18000);
	assert_int_equal(check_with_gaps(col, 1, 0, orig, len), len);
	assert_int_equal(col->rec[1].reason, TCPSTREAM_CLOSE_FIN);
	tcpstream_free(ts);
	col_free(col);
	free(orig);
	free(want);
}

static void test_flow_buffer_cap(void **state)
{
	const size_t len = 40000;
	uint8_t *orig = make_bytes(len, 4);
	struct tcpstream_config cfg;
	struct col *col = col_new(false);
	struct tcpstream *ts;
	const struct tcpstream_stats *st;
	struct dirlog *d = &col->rec[1].d[0];
	struct conn c;
	int i;

	(void)state;
	tcpstream_config_default(&cfg);
	/* 9 held 1000-byte segments fit, a 10th does not (whatever a piece's small header) */
	cfg.max_flow_buffer = 9500;
	ts = new_ts(&cfg, col);
	st = tcpstream_stats(ts);
	conn_init(&c, 40006, 1, 2);
	handshake(ts, &c, 1);
	feed_off(ts, &c, TCPSTREAM_C2S, 0, 0, orig, 2000, 10);
	for (i = 3; i < 12; i++)
		feed_off(ts, &c, TCPSTREAM_C2S, i * 1000, 0, orig + i * 1000, 1000, 10 + i);
	assert_int_equal(st->buffered_bytes, 9000);
	assert_int_equal(st->gaps, 0);
	assert_int_equal(d->len, 2000);
	/* the 10th early segment gives the hole up: gap, then 3..11, then itself */
	feed_off(ts, &c, TCPSTREAM_C2S, 12000, 0, orig + 12000, 1000, 30);
	assert_int_equal(st->buffer_cap_hits, 1);
	assert_int_equal(d->ngaps, 1);
	assert_int_equal(d->gaps[0].at, 2000);
	assert_int_equal(d->gaps[0].missing, 1000);
	assert_int_equal(d->len, 12000);
	assert_int_equal(st->buffered_bytes, 0);

	/* an early segment bigger than the cap on its own, nothing held: skipped to at once */
	feed_off(ts, &c, TCPSTREAM_C2S, 20000, 0, orig + 20000, 10000, 40);
	assert_int_equal(st->buffer_cap_hits, 2);
	assert_int_equal(d->ngaps, 2);
	assert_int_equal(d->gaps[1].at, 12000);
	assert_int_equal(d->gaps[1].missing, 7000);
	assert_int_equal(d->gaps[1].ts_ns, 40);
	assert_int_equal(d->len, 22000);
	feed_off(ts, &c, TCPSTREAM_C2S, 30000, 0, orig + 30000, 10000, 50);
	finish(ts, &c, len, 0, 60);

	assert_int_equal(check_with_gaps(col, 1, 0, orig, len), len);
	assert_int_equal(d->len, len - 8000);
	assert_int_equal(st->gaps, 2);
	assert_int_equal(st->gap_bytes, 8000);
	assert_int_equal(st->hole_timeouts, 0);
	assert_int_equal(col->rec[1].reason, TCPSTREAM_CLOSE_FIN);
	tcpstream_free(ts);

	/* the caps bound memory, not payload: 100 one-byte pieces do not fit in 1000 bytes */
	col_free(col);
	col = col_new(false);
	cfg.max_flow_buffer = 1000;
	ts = new_ts(&cfg, col);
	st = tcpstream_stats(ts);
	handshake(ts, &c, 1);
	for (i = 0; i < 100; i++)
		feed_off(ts, &c, TCPSTREAM_C2S, 2 * i + 1, 0, orig + 2 * i + 1, 1, 10 + i);
	assert_true(st->buffer_cap_hits > 0);
	assert_true(st->buffered_bytes < 100);
	assert_int_equal(st->gaps, st->buffer_cap_hits);
	assert_int_equal(st->buffered_bytes + col->rec[1].d[0].len, 100);
	tcpstream_free(ts);
	col_free(col);
	free(orig);
}

static void test_total_buffer_cap(void **state)
{
	uint8_t *orig = make_bytes(20000, 5);
	struct tcpstream_config cfg;
	struct col *col = col_new(false);
	struct tcpstream *ts;
	const struct tcpstream_stats *st;
	struct conn x, y;
	int i;

	(void)state;
	tcpstream_config_default(&cfg);
	cfg.max_total_buffer = 9500; /* 9 pieces of 1000 across all flows */
	ts = new_ts(&cfg, col);
	st = tcpstream_stats(ts);
	conn_init(&x, 40007, 100, 200);
	conn_init(&y, 40008, 300, 400);
	handshake(ts, &x, 1);
	handshake(ts, &y, 2);
	/* x: hole at 0, holds 1..5 (oldest); y: hole at 0, holds 1..4 */
	for (i = 1; i <= 5; i++)
		feed_off(ts, &x, TCPSTREAM_C2S, i * 1000, 0, orig + i * 1000, 1000, 10 + i);
	for (i = 1; i <= 4; i++)
		feed_off(ts, &y, TCPSTREAM_C2S, i * 1000, 0, orig + i * 1000, 1000, 20 + i);
	assert_int_equal(st->buffered_bytes, 9000);
	assert_int_equal(st->buffer_cap_hits, 0);
	/* y's 5th held piece exceeds the total: the oldest hole (x's) is given up */
	feed_off(ts, &y, TCPSTREAM_C2S, 5000, 0, orig + 5000, 1000, 30);
	assert_int_equal(st->buffer_cap_hits, 1);
	assert_int_equal(st->buffered_bytes, 5000);
	assert_int_equal(col->rec[1].d[0].ngaps, 1);
	assert_int_equal(col->rec[1].d[0].gaps[0].at, 0);
	assert_int_equal(col->rec[1].d[0].gaps[0].missing, 1000);
	assert_int_equal(col->rec[1].d[0].len, 5000);
	assert_memory_equal(col->rec[1].d[0].buf, orig + 1000, 5000);
	assert_int_equal(col->rec[2].d[0].ngaps, 0);
	assert_int_equal(col->rec[2].d[0].len, 0);
	/* y's hole fills: all of y in order */
	feed_off(ts, &y, TCPSTREAM_C2S, 0, 0, orig, 1000, 31);
	assert_stream(col, 2, 0, orig, 6000);
	assert_int_equal(st->buffered_bytes, 0);
	assert_int_equal(st->gaps, 1);
	assert_int_equal(st->gap_bytes, 1000);
	tcpstream_free(ts);
	assert_int_equal(col->rec[1].reason, TCPSTREAM_CLOSE_SHUTDOWN);
	assert_int_equal(col->rec[2].reason, TCPSTREAM_CLOSE_SHUTDOWN);
	col_free(col);
	free(orig);
}

static void test_wraparound(void **state)
{
	const size_t lc = 8u << 20, ls = 3u << 20;
	uint8_t *bc = make_bytes(lc, 6), *bs = make_bytes(ls, 7);
	struct col *col = col_new(false);
	struct tcpstream *ts = new_ts(NULL, col);
	const struct tcpstream_stats *st = tcpstream_stats(ts);
	uint64_t rng = 42, t = 100;
	struct piece *p;
	size_t n, i, w;
	struct conn c;

	(void)state;
	conn_init(&c, 40009, 0xFFFFFF00, 0xFFFFFFFF);
	handshake(ts, &c, 1);
	/* c2s reordered within windows of 32 segments, across the wrap at byte 255 */
	p = split(lc, 1448, 1448, &rng, &n);
	for (w = 0; w < n; w += 32)
		shuffle(p + w, n - w < 32 ? n - w : 32, &rng);
	for (i = 0; i < n; i++) {
		feed_off(ts, &c, TCPSTREAM_C2S, p[i].off, 0, bc + p[i].off, p[i].len, ++t);
		if (i % 4 == 0 && i / 4 * 1448 < ls) {
			uint64_t off = i / 4 * 1448;
			uint32_t l = ls - off < 1448 ? ls - off : 1448;

			feed_off(ts, &c, TCPSTREAM_S2C, off, 0, bs + off, l, ++t);
		}
	}
	for (i = (n + 3) / 4 * 1448; i < ls; i += 1448)
		feed_off(ts, &c, TCPSTREAM_S2C, i, 0, bs + i, ls - i < 1448 ? ls - i : 1448, ++t);
	finish(ts, &c, lc, ls, ++t);
	assert_stream(col, 1, TCPSTREAM_C2S, bc, lc);
	assert_stream(col, 1, TCPSTREAM_S2C, bs, ls);
	assert_int_equal(col->rec[1].closes, 1);
	assert_int_equal(col->rec[1].reason, TCPSTREAM_CLOSE_FIN);
	assert_true(st->ooo_segments > 0);
	assert_int_equal(st->dup_bytes, 0);
	assert_int_equal(st->gaps, 0);
	assert_int_equal(st->buffered_bytes, 0);
	tcpstream_free(ts);
	col_free(col);
	free(p);
	free(bc);
	free(bs);
}

static void test_midstream(void **state)
{
	uint8_t *b = make_bytes(6000, 8);
	struct col *col = col_new(false);
	struct tcpstream *ts = new_ts(NULL, col);
	const struct tcpstream_stats *st = tcpstream_stats(ts);
	struct dirlog *dc = &col->rec[1].d[0], *ds = &col->rec[1].d[1];
	struct conn c, c2;

	(void)state;
	conn_init(&c, 40010, 0, 0);
	/* no SYN: the first data of each direction starts it, after an unknown gap */
	feed_seq(ts, &c, TCPSTREAM_C2S, 5000, TCPSTREAM_ACK, b, 1000, 10);
	assert_int_equal(col->opens, 1);
	assert_false(col->rec[1].at_open.saw_syn);
	assert_int_equal(st->flows_midstream, 1);
	feed_seq(ts, &c, TCPSTREAM_C2S, 7000, TCPSTREAM_ACK, b + 2000, 1000, 11); /* early */
	feed_seq(ts, &c, TCPSTREAM_C2S, 6000, TCPSTREAM_ACK, b + 1000, 1000, 12);
	feed_seq(ts, &c, TCPSTREAM_S2C, 900000, TCPSTREAM_ACK, b + 3000, 3000, 13);
	/* before the start: nothing can be done with it */
	feed_seq(ts, &c, TCPSTREAM_C2S, 4000, TCPSTREAM_ACK, b, 1000, 14);
	assert_int_equal(dc->ngaps, 1);
	assert_int_equal(dc->gaps[0].at, 0);
	assert_int_equal(dc->gaps[0].missing, 0);
	assert_int_equal(dc->gaps[0].ts_ns, 10);
	assert_int_equal(dc->len, 3000);
	assert_memory_equal(dc->buf, b, 3000);
	assert_int_equal(ds->ngaps, 1);
	assert_int_equal(ds->gaps[0].at, 0);
	assert_int_equal(ds->gaps[0].missing, 0);
	assert_int_equal(ds->len, 3000);
	assert_memory_equal(ds->buf, b + 3000, 3000);
	assert_int_equal(st->gaps, 2);
	assert_int_equal(st->gap_bytes, 0);
	assert_int_equal(st->dup_segments, 1);
	assert_int_equal(st->ooo_segments, 1);
	/* this connection's own first SYN, late: no new flow */
	feed_seq(ts, &c, TCPSTREAM_C2S, 4999, TCPSTREAM_SYN, NULL, 0, 15);
	assert_int_equal(st->flows_opened, 1);
	assert_int_equal(col->closes, 0);
	/* a FIN behind what was delivered is not this direction's end */
	feed_seq(ts, &c, TCPSTREAM_C2S, 1, TCPSTREAM_FIN | TCPSTREAM_ACK, NULL, 0, 20);
	feed_seq(ts, &c, TCPSTREAM_C2S, 8000, TCPSTREAM_FIN | TCPSTREAM_ACK, NULL, 0, 21);
	assert_int_equal(col->closes, 0);
	feed_seq(ts, &c, TCPSTREAM_S2C, 903000, TCPSTREAM_FIN | TCPSTREAM_ACK, NULL, 0, 22);
	assert_int_equal(col->rec[1].closes, 1);
	assert_int_equal(col->rec[1].reason, TCPSTREAM_CLOSE_FIN);

	/* the client's SYN was seen, the SYN-ACK was not: only s2c starts with a gap */
	conn_init(&c2, 40011, 1000, 0);
	feed_seq(ts, &c2, TCPSTREAM_C2S, 1000, TCPSTREAM_SYN, NULL, 0, 30);
	feed_seq(ts, &c2, TCPSTREAM_C2S, 1001, TCPSTREAM_ACK, b, 100, 31);
	feed_seq(ts, &c2, TCPSTREAM_S2C, 55555, TCPSTREAM_ACK, b + 100, 200, 32);
	assert_true(col->rec[2].at_open.saw_syn);
	assert_stream(col, 2, 0, b, 100);
	assert_int_equal(col->rec[2].d[1].ngaps, 1);
	assert_int_equal(col->rec[2].d[1].gaps[0].missing, 0);
	assert_int_equal(col->rec[2].d[1].len, 200);
	assert_memory_equal(col->rec[2].d[1].buf, b + 100, 200);
	assert_int_equal(st->flows_midstream, 1);
	assert_int_equal(st->gaps, 3);
	tcpstream_free(ts);
	assert_int_equal(col->rec[2].reason, TCPSTREAM_CLOSE_SHUTDOWN);
	col_free(col);
	free(b);
}

static void test_fin_out_of_order(void **state)
{
	uint8_t *b = make_bytes(5000, 9);
	struct col *col = col_new(false);
	struct tcpstream *ts = new_ts(NULL, col);
	const struct tcpstream_stats *st = tcpstream_stats(ts);
	struct conn c;

	(void)state;
	conn_init(&c, 40012, 0x7fffffff, 0x80000000);
	handshake(ts, &c, 1);
	feed_off(ts, &c, TCPSTREAM_C2S, 0, 0, b, 1000, 10);
	feed_off(ts, &c, TCPSTREAM_C2S, 4000, TCPSTREAM_FIN, b + 4000, 1000, 11);
	/* s2c: the empty FIN overtakes the last data */
	feed_off(ts, &c, TCPSTREAM_S2C, 0, 0, b, 500, 12);
	feed_off(ts, &c, TCPSTREAM_S2C, 1000, TCPSTREAM_FIN, NULL, 0, 13);
	feed_off(ts, &c, TCPSTREAM_S2C, 500, 0, b + 500, 500, 14);
	feed_off(ts, &c, TCPSTREAM_C2S, 2000, 0, b + 2000, 1000, 15);
	feed_off(ts, &c, TCPSTREAM_C2S, 1000, 0, b + 1000, 1000, 16);
	assert_int_equal(col->closes, 0);
	/* a retransmitted FIN tells nothing new */
	feed_off(ts, &c, TCPSTREAM_S2C, 1000, TCPSTREAM_FIN, NULL, 0, 17);
	assert_int_equal(st->dup_segments, 1);
	assert_int_equal(col->closes, 0);
	feed_off(ts, &c, TCPSTREAM_C2S, 3000, 0, b + 3000, 1000, 18);
	assert_int_equal(col->rec[1].closes, 1);
	assert_int_equal(col->rec[1].reason, TCPSTREAM_CLOSE_FIN);
	assert_int_equal(col->rec[1].close_ts, 18);
	assert_stream(col, 1, 0, b, 5000);
	assert_stream(col, 1, 1, b, 1000);
	assert_int_equal(st->flows_active, 0);
	assert_int_equal(st->flows_closed, 1);
	tcpstream_free(ts);
	assert_int_equal(col->rec[1].closes, 1);
	col_free(col);
	free(b);
}

static void test_rst(void **state)
{
	uint8_t *b = make_bytes(3000, 10);
	struct col *col = col_new(false);
	struct tcpstream *ts = new_ts(NULL, col);
	const struct tcpstream_stats *st = tcpstream_stats(ts);
	struct dirlog *d = &col->rec[1].d[0];
	struct conn c;

	(void)state;
	conn_init(&c, 40013, 11, 22);
	handshake(ts, &c, 1);
	feed_off(ts, &c, TCPSTREAM_C2S, 0, 0, b, 1000, 10);
	feed_off(ts, &c, TCPSTREAM_C2S, 2000, 0, b + 2000, 600, 11);
	feed_off(ts, &c, TCPSTREAM_C2S, 2700, 0, b + 2700, 300, 12);
	feed_off(ts, &c, TCPSTREAM_S2C, 0, 0, b, 10, 13);
	/* a reset behind what the server already sent cannot be its own: ignored */
	feed_off(ts, &c, TCPSTREAM_S2C, 0, TCPSTREAM_RST, NULL, 0, 14);
	assert_int_equal(st->rst_ignored, 1);
	assert_int_equal(col->closes, 0);
	feed_off(ts, &c, TCPSTREAM_S2C, 10, TCPSTREAM_RST, NULL, 0, 14);
	/* held data delivered, each hole reported, then the close */
	assert_int_equal(col->rec[1].closes, 1);
	assert_int_equal(col->rec[1].reason, TCPSTREAM_CLOSE_RST);
	assert_int_equal(col->rec[1].close_ts, 14);
	assert_int_equal(d->ngaps, 2);
	assert_int_equal(d->gaps[0].at, 1000);
	assert_int_equal(d->gaps[0].missing, 1000);
	assert_int_equal(d->gaps[1].at, 1600);
	assert_int_equal(d->gaps[1].missing, 100);
	assert_int_equal(check_with_gaps(col, 1, 0, b, 3000), 3000);
	assert_stream(col, 1, 1, b, 10);
	assert_int_equal(st->buffered_bytes, 0);
	assert_int_equal(st->flows_active, 0);
	/* the retransmission after the reset belongs to the closed flow */
	feed_off(ts, &c, TCPSTREAM_C2S, 1000, 0, b + 1000, 1000, 15);
	assert_int_equal(st->late_segments, 1);
	assert_int_equal(st->flows_opened, 1);
	/* an RST of a connection never seen opens nothing */
	conn_init(&c, 40014, 11, 22);
	feed_off(ts, &c, TCPSTREAM_S2C, 0, TCPSTREAM_RST, NULL, 0, 16);
	assert_int_equal(st->flows_opened, 1);
	tcpstream_free(ts);
	col_free(col);
	free(b);
}

static void test_idle(void **state)
{
	uint8_t *b = make_bytes(3000, 11);
	struct tcpstream_config cfg;
	struct col *col = col_new(false);
	struct tcpstream *ts;
	const struct tcpstream_stats *st;
	struct conn c, q;

	(void)state;
	tcpstream_config_default(&cfg);
	cfg.idle_timeout_ns = 10 * SEC;
	cfg.hole_timeout_ns = 100 * SEC;
	ts = new_ts(&cfg, col);
	st = tcpstream_stats(ts);
	conn_init(&c, 40015, 5, 6);
	conn_init(&q, 40016, 7, 8);
	handshake(ts, &c, 1 * SEC);
	handshake(ts, &q, 1 * SEC);
	feed_off(ts, &c, TCPSTREAM_C2S, 0, 0, b, 1000, 2 * SEC);
	feed_off(ts, &c, TCPSTREAM_C2S, 2000, 0, b + 2000, 1000, 3 * SEC);
	/* q only sees empty ACKs: they keep it alive */
	feed_off(ts, &q, TCPSTREAM_C2S, 0, 0, NULL, 0, 8 * SEC);
	tcpstream_tick(ts, 13 * SEC);
	assert_int_equal(col->closes, 0);
	tcpstream_tick(ts, 13 * SEC + 1);
	assert_int_equal(col->rec[1].closes, 1);
	assert_int_equal(col->rec[1].reason, TCPSTREAM_CLOSE_IDLE);
	assert_int_equal(col->rec[1].close_ts, 13 * SEC + 1);
	assert_int_equal(col->rec[1].d[0].ngaps, 1);
	assert_int_equal(col->rec[1].d[0].gaps[0].missing, 1000);
	assert_int_equal(check_with_gaps(col, 1, 0, b, 3000), 3000);
	assert_int_equal(col->rec[2].closes, 0);
	assert_int_equal(st->flows_expired, 1);
	assert_int_equal(st->flows_active, 1);
	assert_int_equal(st->buffered_bytes, 0);
	tcpstream_tick(ts, 18 * SEC + 1);
	assert_int_equal(col->rec[2].closes, 1);
	assert_int_equal(col->rec[2].reason, TCPSTREAM_CLOSE_IDLE);
	assert_int_equal(st->flows_expired, 2);
	/* an idle flow does not linger: its next segment opens a flow at once */
	feed_off(ts, &c, TCPSTREAM_C2S, 3000, 0, b, 10, 20 * SEC);
	assert_int_equal(st->flows_opened, 3);
	assert_int_equal(st->flows_midstream, 1);
	assert_int_equal(st->late_segments, 0);
	tcpstream_free(ts);
	col_free(col);
	free(b);
}

static void test_linger(void **state)
{
	uint8_t *b = make_bytes(2000, 12);
	struct col *col = col_new(false);
	struct tcpstream *ts = new_ts(NULL, col); /* linger 5 s */
	const struct tcpstream_stats *st = tcpstream_stats(ts);
	struct conn c;

	(void)state;
	conn_init(&c, 40017, 1000, 2000);
	handshake(ts, &c, 1 * SEC);
	feed_off(ts, &c, TCPSTREAM_C2S, 0, 0, b, 2000, 1 * SEC);
	finish(ts, &c, 2000, 0, 2 * SEC);
	assert_int_equal(col->rec[1].closes, 1);
	assert_int_equal(st->flows_active, 0);
	/* late copies (another interface): absorbed */
	feed_off(ts, &c, TCPSTREAM_C2S, 0, 0, b, 2000, 3 * SEC);
	feed_seq(ts, &c, TCPSTREAM_C2S, 1000, TCPSTREAM_SYN, NULL, 0, 3 * SEC);
	feed_off(ts, &c, TCPSTREAM_C2S, 2000, TCPSTREAM_FIN, NULL, 0, 3 * SEC);
	feed_off(ts, &c, TCPSTREAM_S2C, 0, 0, NULL, 0, 3 * SEC);
	assert_int_equal(st->late_segments, 4);
	assert_int_equal(st->flows_opened, 1);
	assert_int_equal(st->dup_segments, 0);
	tcpstream_tick(ts, 2 * SEC + 1 + 5 * SEC);
	feed_off(ts, &c, TCPSTREAM_C2S, 0, 0, b, 2000, 7 * SEC);
	assert_int_equal(st->late_segments, 5);
	assert_int_equal(st->flows_opened, 1);
	/* forgotten after linger_ns: the next copy starts a new (midstream) flow */
	tcpstream_tick(ts, 2 * SEC + 1 + 5 * SEC + 1);
	feed_off(ts, &c, TCPSTREAM_C2S, 0, 0, b, 2000, 8 * SEC);
	assert_int_equal(st->late_segments, 5);
	assert_int_equal(st->flows_opened, 2);
	assert_int_equal(st->flows_midstream, 1);
	assert_int_equal(col->rec[2].d[0].ngaps, 1);
	assert_int_equal(col->rec[2].d[0].gaps[0].missing, 0);
	tcpstream_free(ts);
	col_free(col);
	free(b);
}

/*
 * One connection seen on two interfaces under two server addresses: every segment fed once
 * per view, interleaved (the second view lagging by `lag` segments).
 */
static void run_two_views(size_t lag)
{
	const size_t lc = 30000, ls = 70000;
	uint8_t *bc = make_bytes(lc, 13), *bs = make_bytes(ls, 14);
	struct col *col = col_new(false);
	struct tcpstream *ts = new_ts(NULL, col);
	const struct tcpstream_stats *st = tcpstream_stats(ts);
	struct tcpstream_segment *segs, s;
	struct tcpstream_addr host, container;
	uint64_t rng = 77 + lag, oc = 0, os = 0;
	size_t n = 0, i, fed = 0, b_fed = 0, b_after_close = 0, b_bytes = 0;
	struct conn c;
	uint32_t l;

	conn_init(&c, 40018, 0xdead0000, 0xbeef0000);
	host = c.server;
	addr4(&container, 172, 17, 0, 2, 5432);
	segs = calloc(200, sizeof(*segs));
	assert_non_null(segs);
#define SEG(d, sq, fl, p, ln)                                                                      \
	segs[n++] = (struct tcpstream_segment){                                                    \
	    .client = c.client, .dir = (d), .seq = (sq), .flags = (fl), .data = (p), .len = (ln)}
	SEG(TCPSTREAM_C2S, c.isn[0], TCPSTREAM_SYN, NULL, 0);
	SEG(TCPSTREAM_S2C, c.isn[1], TCPSTREAM_SYN | TCPSTREAM_ACK, NULL, 0);
	while (oc < lc || os < ls) {
		if (oc < lc && rng_next(&rng) % 3 == 0) {
			l = (uint32_t)rng_range(&rng, 1, 1448);
			l = l > lc - oc ? lc - oc : l;
			SEG(TCPSTREAM_C2S, c.isn[0] + 1 + oc, TCPSTREAM_ACK, bc + oc, l);
			oc += l;
		} else if (os < ls) {
			l = (uint32_t)rng_range(&rng, 1, 1448);
			l = l > ls - os ? ls - os : l;
			SEG(TCPSTREAM_S2C, c.isn[1] + 1 + os, TCPSTREAM_ACK, bs + os, l);
			os += l;
		}
	}
	SEG(TCPSTREAM_C2S, c.isn[0] + 1 + lc, TCPSTREAM_FIN | TCPSTREAM_ACK, NULL, 0);
	SEG(TCPSTREAM_S2C, c.isn[1] + 1 + ls, TCPSTREAM_FIN | TCPSTREAM_ACK, NULL, 0);
#undef SEG
	assert_true(n < 200);
	/* view A (host address) segment i, then view B (container) segment i - lag */
	for (i = 0; i < n + lag; i++) {
		if (i < n) {
			s = segs[i];
			s.server = host;
			s.ts_ns = 100 + 2 * i;
			tcpstream_feed(ts, &s);
			fed++;
		}
		if (i >= lag) {
			s = segs[i - lag];
			s.server = container;
			s.ts_ns = 101 + 2 * i;
			if (col->rec[1].closes)
				b_after_close++;
			else
				b_bytes += s.len;
			tcpstream_feed(ts, &s);
			fed++;
			b_fed++;
		}
	}
	assert_stream(col, 1, TCPSTREAM_C2S, bc, lc);
	assert_stream(col, 1, TCPSTREAM_S2C, bs, ls);
	assert_int_equal(col->opens, 1);
	assert_int_equal(col->rec[1].closes, 1);
	assert_int_equal(col->rec[1].reason, TCPSTREAM_CLOSE_FIN);
	assert_memory_equal(&col->rec[1].at_open.server, &host, sizeof(host));
	assert_int_equal(st->segments, fed);
	assert_int_equal(st->views_merged, b_fed - b_after_close);
	assert_int_equal(st->late_segments, b_after_close);
	assert_int_equal(st->dup_segments, b_fed - b_after_close);
	assert_int_equal(st->dup_bytes, b_bytes);
	assert_true(lag || b_bytes == lc + ls);
	assert_int_equal(st->bytes_delivered, lc + ls);
	assert_int_equal(st->flows_opened, 1);
	assert_int_equal(st->gaps, 0);
	assert_int_equal(st->segments_rejected, 0);
	tcpstream_free(ts);
	col_free(col);
	free(segs);
	free(bc);
	free(bs);
}

static void test_two_views(void **state)
{
	uint8_t x[100] = {0};
	struct col *col;
	struct tcpstream *ts;
	const struct tcpstream_stats *st;
	struct conn c, other;

	(void)state;
	run_two_views(0);
	run_two_views(1);
	run_two_views(7);

	/* a segment under another server address that cannot be this connection's: dropped */
	col = col_new(false);
	ts = new_ts(NULL, col);
	st = tcpstream_stats(ts);
	conn_init(&c, 40019, 1000, 2000);
	handshake(ts, &c, 1);
	feed_off(ts, &c, TCPSTREAM_C2S, 0, 0, x, 100, 2);
	other = c;
	addr4(&other.server, 192, 168, 9, 9, 5432);
	feed_off(ts, &other, TCPSTREAM_C2S, 0x60000000, 0, x, 100, 3);
	assert_int_equal(st->segments_rejected, 1);
	assert_int_equal(st->ooo_segments, 0);
	/* nor one with another ISN */
	feed_seq(ts, &other, TCPSTREAM_S2C, 5, TCPSTREAM_SYN | TCPSTREAM_ACK, NULL, 0, 4);
	assert_int_equal(st->segments_rejected, 2);
	/* same address, but a SYN-ACK with another ISN: not this connection either */
	feed_seq(ts, &c, TCPSTREAM_S2C, 6, TCPSTREAM_SYN | TCPSTREAM_ACK, NULL, 0, 4);
	assert_int_equal(st->segments_rejected, 3);
	assert_int_equal(st->dup_segments, 0);
	/* within the window of the direction: the same connection */
	feed_off(ts, &other, TCPSTREAM_C2S, 100, 0, x, 100, 5);
	assert_int_equal(st->views_merged, 1);
	assert_int_equal(col->rec[1].d[0].len, 200);
	assert_int_equal(st->flows_opened, 1);
	tcpstream_free(ts);
	col_free(col);
}

/* One client port, two server addresses on the captured port, at once (a VIP and the
 * host's own address): two connections, each its own flow and stream, not views. */
static void test_client_port_two_servers(void **state)
{
	uint8_t *b = make_bytes(600, 21);
	struct col *col = col_new(false);
	struct tcpstream *ts = new_ts(NULL, col);
	const struct tcpstream_stats *st = tcpstream_stats(ts);
	struct conn a, v;

	(void)state;
	conn_init(&a, 40033, 1000, 2000);
	conn_init(&v, 40033, 777777, 888888);
	addr4(&v.server, 10, 0, 0, 99, 5432);
	handshake(ts, &a, 1);
	feed_off(ts, &a, TCPSTREAM_C2S, 0, 0, b, 100, 4);
	handshake(ts, &v, 5); /* another ISN: a new connection, not a reuse of a's tuple */
	feed_off(ts, &v, TCPSTREAM_C2S, 0, 0, b + 100, 200, 8);
	feed_off(ts, &a, TCPSTREAM_C2S, 100, 0, b + 300, 100, 9);
	feed_off(ts, &v, TCPSTREAM_S2C, 0, 0, b + 400, 50, 10);
	feed_off(ts, &a, TCPSTREAM_S2C, 0, 0, b + 450, 150, 11);
	assert_int_equal(st->flows_opened, 2);
	assert_int_equal(st->views_merged, 0);
	assert_int_equal(st->gaps, 0);
	assert_int_equal(col->opens, 2);
	assert_int_equal(col->closes, 0);
	assert_int_equal(col->rec[1].d[TCPSTREAM_C2S].len, 200);
	assert_memory_equal(col->rec[1].d[TCPSTREAM_C2S].buf, b, 100);
	assert_memory_equal(col->rec[1].d[TCPSTREAM_C2S].buf + 100, b + 300, 100);
	assert_int_equal(col->rec[1].d[TCPSTREAM_S2C].len, 150);
	assert_int_equal(col->rec[2].d[TCPSTREAM_C2S].len, 200);
	assert_memory_equal(col->rec[2].d[TCPSTREAM_C2S].buf, b + 100, 200);
	assert_int_equal(col->rec[2].d[TCPSTREAM_S2C].len, 50);
	tcpstream_free(ts);
	col_free(col);
	free(b);
}

static void test_tuple_reuse(void **state)
{
	uint8_t *b = make_bytes(4000, 15);
	struct col *col = col_new(false);
	struct tcpstream *ts = new_ts(NULL, col);
	const struct tcpstream_stats *st = tcpstream_stats(ts);
	struct conn c1, c2, c3, m;

	(void)state;
	conn_init(&c1, 40020, 1000, 2000);
	handshake(ts, &c1, 1);
	feed_off(ts, &c1, TCPSTREAM_C2S, 0, 0, b, 1000, 2);
	feed_off(ts, &c1, TCPSTREAM_C2S, 2000, 0, b + 2000, 1000, 3);
	/* the client retransmits its SYN: a duplicate, same flow */
	feed_seq(ts, &c1, TCPSTREAM_C2S, 1000, TCPSTREAM_SYN, NULL, 0, 4);
	assert_int_equal(st->dup_segments, 1);
	assert_int_equal(st->flows_opened, 1);
	/* a SYN with another ISN: the tuple is reused by a new connection */
	conn_init(&c2, 40020, 500000, 600000);
	handshake(ts, &c2, 5);
	assert_int_equal(col->rec[1].closes, 1);
	assert_int_equal(col->rec[1].reason, TCPSTREAM_CLOSE_REUSED);
	assert_int_equal(col->rec[1].close_ts, 5);
	assert_int_equal(col->rec[1].d[0].ngaps, 1);
	assert_int_equal(col->rec[1].d[0].gaps[0].missing, 1000);
	assert_int_equal(check_with_gaps(col, 1, 0, b, 3000), 3000);
	assert_int_equal(st->flows_opened, 2);
	assert_true(col->rec[2].at_open.saw_syn);
	feed_off(ts, &c2, TCPSTREAM_C2S, 0, 0, b + 3000, 1000, 6);
	finish(ts, &c2, 1000, 0, 7);
	assert_stream(col, 2, 0, b + 3000, 1000);
	assert_int_equal(col->rec[2].reason, TCPSTREAM_CLOSE_FIN);
	/* a third connection replaces the lingering second one: not a late segment */
	conn_init(&c3, 40020, 9000000, 1);
	handshake(ts, &c3, 8);
	assert_int_equal(st->late_segments, 0);
	assert_int_equal(st->flows_opened, 3);
	assert_int_equal(st->flows_active, 1);
	feed_seq(ts, &c3, TCPSTREAM_C2S, 9000000, TCPSTREAM_SYN, NULL, 0, 9);
	assert_int_equal(st->dup_segments, 2);
	assert_int_equal(st->flows_opened, 3);

	/* a midstream flow, then a SYN that is not its own: a new connection */
	conn_init(&m, 40021, 0, 0);
	feed_seq(ts, &m, TCPSTREAM_C2S, 70000, TCPSTREAM_ACK, b, 100, 10);
	feed_seq(ts, &m, TCPSTREAM_C2S, 123, TCPSTREAM_SYN, NULL, 0, 11);
	assert_int_equal(col->rec[4].reason, TCPSTREAM_CLOSE_REUSED);
	assert_int_equal(col->rec[4].closes, 1);
	assert_true(col->rec[5].opened);
	assert_int_equal(st->flows_opened, 5);
	assert_int_equal(st->flows_closed, 3);
	assert_int_equal(st->flows_active, 2);

	/* only the server was heard (midstream): a client SYN is a new connection */
	conn_init(&m, 40022, 0, 0);
	feed_seq(ts, &m, TCPSTREAM_S2C, 5000, TCPSTREAM_ACK, b, 100, 12);
	feed_seq(ts, &m, TCPSTREAM_C2S, 777, TCPSTREAM_SYN, NULL, 0, 13);
	assert_int_equal(col->rec[6].closes, 1);
	assert_int_equal(col->rec[6].reason, TCPSTREAM_CLOSE_REUSED);
	assert_true(col->rec[7].opened);
	/* only a SYN-ACK was heard (the SYN was missed): the client's SYN is not a new one */
	conn_init(&m, 40023, 888, 999);
	feed_seq(ts, &m, TCPSTREAM_S2C, 999, TCPSTREAM_SYN | TCPSTREAM_ACK, NULL, 0, 14);
	feed_seq(ts, &m, TCPSTREAM_C2S, 888, TCPSTREAM_SYN, NULL, 0, 15);
	feed_off(ts, &m, TCPSTREAM_C2S, 0, 0, b, 50, 16);
	assert_int_equal(col->rec[8].closes, 0);
	assert_stream(col, 8, 0, b, 50);
	assert_int_equal(st->flows_opened, 8);
	assert_int_equal(st->flows_active, 4);
	tcpstream_free(ts);
	assert_int_equal(col->rec[5].reason, TCPSTREAM_CLOSE_SHUTDOWN);
	col_free(col);
	free(b);
}

/*
 * Tuple reuse through TIME_WAIT assassination (clients without TCP timestamps), three
 * connections in a row from one port: each new SYN's ISN is below the previous connection's
 * last sequence number, so the server, in TIME_WAIT, answers it with an ACK of the old
 * connection; the client resets that with the old connection's sequence number and resends
 * the same SYN 10 ms later. The RST is not the new connection's: it must not end it.
 */
static void test_reuse_time_wait_rst(void **state)
{
	const uint32_t lc = 100000, ls = 3000;
	uint8_t *b = make_bytes(lc, 19);
	struct col *col = col_new(false);
	struct tcpstream *ts = new_ts(NULL, col);
	const struct tcpstream_stats *st = tcpstream_stats(ts);
	struct conn c[3], tw;
	uint64_t t = SEC, off;
	int i;

	(void)state;
	for (i = 0; i < 3; i++) {
		/* each ISN 20000 above the last: ~80000 below the previous connection's end */
		conn_init(&c[i], 40030, 1000000 + 20000 * i, 7000000 * (i + 1));
		if (i > 0) {
			feed_seq(ts, &c[i], TCPSTREAM_C2S, c[i].isn[0], TCPSTREAM_SYN, NULL, 0, t);
			assert_int_equal(col->rec[i + 1].opened, true);
			/* the TIME_WAIT answer: the old connection's sequence numbers */
			tw = c[i - 1];
			tw.ack[TCPSTREAM_S2C] = tw.isn[0] + 1 + lc + 1;
			feed_seq(ts, &tw, TCPSTREAM_S2C, tw.isn[1] + 1 + ls + 1, TCPSTREAM_ACK,
				 NULL, 0, t + MS);
			/* the client's reset of it, with the old connection's sequence number */
			feed_seq(ts, &c[i], TCPSTREAM_C2S, tw.isn[0] + 1 + lc + 1, TCPSTREAM_RST,
				 NULL, 0, t + 2 * MS);
			assert_int_equal(st->rst_ignored, i);
			assert_int_equal(col->rec[i + 1].closes, 0);
			t += 10 * MS; /* the SYN resent: handshake() sends it again */
		}
		handshake(ts, &c[i], t);
		for (off = 0; off < lc; off += 1000)
			feed_off(ts, &c[i], TCPSTREAM_C2S, off, 0, b + off, 1000, t + 3 + off);
		conn_ack(&c[i], TCPSTREAM_S2C, lc);
		feed_off(ts, &c[i], TCPSTREAM_S2C, 0, 0, b, ls, t + 200000);
		conn_ack(&c[i], TCPSTREAM_C2S, ls);
		feed_off(ts, &c[i], TCPSTREAM_C2S, lc, TCPSTREAM_FIN, NULL, 0, t + 200001);
		conn_ack(&c[i], TCPSTREAM_S2C, lc + 1);
		feed_off(ts, &c[i], TCPSTREAM_S2C, ls, TCPSTREAM_FIN, NULL, 0, t + 200002);
		assert_stream(col, i + 1, TCPSTREAM_C2S, b, lc);
		assert_stream(col, i + 1, TCPSTREAM_S2C, b, ls);
		assert_int_equal(col->rec[i + 1].closes, 1);
		assert_int_equal(col->rec[i + 1].reason, TCPSTREAM_CLOSE_FIN);
		t += SEC / 100;
	}
	assert_int_equal(st->flows_opened, 3);
	assert_int_equal(st->flows_closed, 3);
	assert_int_equal(st->flows_active, 0);
	assert_int_equal(st->late_segments, 0);
	assert_int_equal(st->late_bytes_undelivered, 0);
	assert_int_equal(st->rst_ignored, 2);
	assert_int_equal(st->dup_segments, 2); /* the resent SYNs */
	assert_int_equal(st->gaps, 0);
	assert_int_equal(st->bytes_delivered, 3 * (lc + ls));
	tcpstream_free(ts);
	col_free(col);
	free(b);
}

/* Which RSTs may end a flow: the sequence number its direction could send now. */
static void test_rst_acceptance(void **state)
{
	uint8_t *b = make_bytes(2000, 20);
	struct col *col = col_new(false);
	struct tcpstream *ts = new_ts(NULL, col);
	const struct tcpstream_stats *st = tcpstream_stats(ts);
	struct conn c, d, e, m;

	(void)state;
	/* flow 1, data both ways: not behind the next byte, not beyond 64 MiB past the end */
	conn_init(&c, 40031, 5000, 9000);
	handshake(ts, &c, 1);
	feed_off(ts, &c, TCPSTREAM_C2S, 0, 0, b, 1000, 2);
	feed_off(ts, &c, TCPSTREAM_S2C, 0, 0, b, 500, 3);
	feed_off(ts, &c, TCPSTREAM_C2S, 999, TCPSTREAM_RST, NULL, 0, 4);
	feed_off(ts, &c, TCPSTREAM_C2S, 1000 + (1 << 26) + 1, TCPSTREAM_RST, NULL, 0, 5);
	feed_seq(ts, &c, TCPSTREAM_C2S, 5000, TCPSTREAM_RST, NULL, 0, 6); /* the SYN's */
	assert_int_equal(st->rst_ignored, 3);
	assert_int_equal(col->closes, 0);
	/* the server lost bytes to the capture, then reset: within the window, taken */
	feed_off(ts, &c, TCPSTREAM_S2C, 500 + 10000, TCPSTREAM_RST, NULL, 0, 7);
	assert_int_equal(col->rec[1].closes, 1);
	assert_int_equal(col->rec[1].reason, TCPSTREAM_CLOSE_RST);
	assert_stream(col, 1, 0, b, 1000);
	assert_stream(col, 1, 1, b, 500);

	/* flow 2, nothing but the client's SYN: its RST is at ISN + 1 exactly; the server's
	 * RST must acknowledge the SYN */
	conn_init(&d, 40032, 777, 888);
	feed_seq(ts, &d, TCPSTREAM_C2S, 777, TCPSTREAM_SYN, NULL, 0, 10);
	feed_seq(ts, &d, TCPSTREAM_C2S, 779, TCPSTREAM_RST, NULL, 0, 11);
	feed_seq(ts, &d, TCPSTREAM_C2S, 777, TCPSTREAM_RST, NULL, 0, 11);
	d.ack[TCPSTREAM_S2C] = 779;
	feed_seq(ts, &d, TCPSTREAM_S2C, 0, TCPSTREAM_RST | TCPSTREAM_ACK, NULL, 0, 12);
	assert_int_equal(st->rst_ignored, 6);
	assert_int_equal(col->rec[2].closes, 0);
	d.ack[TCPSTREAM_S2C] = 778;
	feed_seq(ts, &d, TCPSTREAM_S2C, 0, TCPSTREAM_RST | TCPSTREAM_ACK, NULL, 0, 13);
	assert_int_equal(col->rec[2].closes, 1);
	assert_int_equal(col->rec[2].reason, TCPSTREAM_CLOSE_RST);
	assert_int_equal(col->rec[2].d[0].ngaps, 0);

	/* flow 3: the server acknowledged 5000 client bytes the capture lost; the client's RST
	 * past them is taken, and the bytes are reported missing before the close */
	conn_init(&e, 40033, 123, 456);
	handshake(ts, &e, 20);
	conn_ack(&e, TCPSTREAM_S2C, 5000);
	feed_off(ts, &e, TCPSTREAM_S2C, 0, 0, b, 100, 21);
	feed_off(ts, &e, TCPSTREAM_C2S, 5000, TCPSTREAM_RST, NULL, 0, 22);
	assert_int_equal(st->rst_ignored, 6);
	assert_int_equal(col->rec[3].reason, TCPSTREAM_CLOSE_RST);
	assert_int_equal(col->rec[3].d[0].ngaps, 1);
	assert_int_equal(col->rec[3].d[0].gaps[0].at, 0);
	assert_int_equal(col->rec[3].d[0].gaps[0].missing, 5000);
	assert_int_equal(col->rec[3].d[0].gaps[0].ts_ns, 22);
	assert_stream(col, 3, 1, b, 100);

	/* flow 4, only a SYN-ACK seen: the client's RST without ACK cannot be checked, taken */
	conn_init(&m, 40034, 31, 41);
	feed_seq(ts, &m, TCPSTREAM_S2C, 41, TCPSTREAM_SYN | TCPSTREAM_ACK, NULL, 0, 30);
	feed_seq(ts, &m, TCPSTREAM_C2S, 32, TCPSTREAM_RST, NULL, 0, 31);
	assert_int_equal(col->rec[4].reason, TCPSTREAM_CLOSE_RST);
	assert_int_equal(st->rst_ignored, 6);
	assert_int_equal(st->flows_opened, 4);
	assert_int_equal(st->flows_closed, 4);
	assert_int_equal(st->flows_active, 0);
	assert_int_equal(st->gaps, 1);
	assert_int_equal(st->tail_gaps, 1);
	tcpstream_free(ts);
	col_free(col);
	free(b);
}

/* What arrives for a closed (lingering) flow never vanishes uncounted. */
static void test_late_after_rst(void **state)
{
	uint8_t *b = make_bytes(4000, 21);
	struct col *col = col_new(false);
	struct tcpstream *ts = new_ts(NULL, col);
	const struct tcpstream_stats *st = tcpstream_stats(ts);
	struct conn c, g;

	(void)state;
	/* a SYN-only flow reset at ISN + 1, then the same SYN again: the RST was not the
	 * connection's end (a client never resends the SYN of an attempt it reset) */
	conn_init(&c, 40035, 7000, 8000);
	feed_seq(ts, &c, TCPSTREAM_C2S, 7000, TCPSTREAM_SYN, NULL, 0, 1);
	feed_seq(ts, &c, TCPSTREAM_C2S, 7001, TCPSTREAM_RST, NULL, 0, 2);
	assert_int_equal(col->rec[1].reason, TCPSTREAM_CLOSE_RST);
	assert_int_equal(st->flows_active, 0);
	handshake(ts, &c, 10 * MS);
	assert_int_equal(st->flows_reopened, 1);
	assert_int_equal(st->late_segments, 0);
	assert_true(col->rec[2].opened);
	assert_true(col->rec[2].at_open.saw_syn);
	feed_off(ts, &c, TCPSTREAM_C2S, 0, 0, b, 1000, 11 * MS);
	finish(ts, &c, 1000, 0, 12 * MS);
	assert_stream(col, 2, 0, b, 1000);
	assert_int_equal(col->rec[2].reason, TCPSTREAM_CLOSE_FIN);
	/* a FIN-closed flow does not reopen on its SYN: a late copy */
	feed_seq(ts, &c, TCPSTREAM_C2S, 7000, TCPSTREAM_SYN, NULL, 0, 13 * MS);
	assert_int_equal(st->late_segments, 1);
	assert_int_equal(st->flows_opened, 2);

	/* a flow with data, reset: late bytes past what was delivered or reported missing are
	 * counted as undelivered, the others are not */
	conn_init(&g, 40036, 100, 200);
	handshake(ts, &g, 20 * MS);
	feed_off(ts, &g, TCPSTREAM_C2S, 0, 0, b, 1000, 21 * MS);
	feed_off(ts, &g, TCPSTREAM_C2S, 2000, 0, b + 2000, 1000, 22 * MS);
	feed_off(ts, &g, TCPSTREAM_C2S, 3000, TCPSTREAM_RST, NULL, 0, 23 * MS);
	assert_int_equal(col->rec[3].reason, TCPSTREAM_CLOSE_RST);
	assert_int_equal(check_with_gaps(col, 3, 0, b, 4000), 3000);
	feed_off(ts, &g, TCPSTREAM_C2S, 1000, 0, b + 1000, 1000, 24 * MS); /* in the gap */
	assert_int_equal(st->late_bytes_undelivered, 0);
	feed_off(ts, &g, TCPSTREAM_C2S, 3000, 0, b + 3000, 500, 24 * MS);
	assert_int_equal(st->late_bytes_undelivered, 500);
	feed_off(ts, &g, TCPSTREAM_C2S, 2500, 0, b + 2500, 700, 24 * MS);
	assert_int_equal(st->late_bytes_undelivered, 700);
	feed_off(ts, &g, TCPSTREAM_S2C, 0, 0, b, 100, 24 * MS);
	assert_int_equal(st->late_bytes_undelivered, 800);
	/* its SYN again: the flow delivered data, so the RST was its end */
	feed_seq(ts, &g, TCPSTREAM_C2S, 100, TCPSTREAM_SYN, NULL, 0, 25 * MS);
	assert_int_equal(st->late_segments, 6);
	assert_int_equal(st->flows_reopened, 1);
	assert_int_equal(st->flows_opened, 4 - 1);
	assert_int_equal(st->flows_active, 0);
	assert_int_equal(st->flows_closed, 3);
	tcpstream_free(ts);
	col_free(col);
	free(b);
}

/*
 * A missing tail: the bytes the other side acknowledged (or a FIN showed) but the capture
 * lost are reported as a gap of exact size when the flow closes, for any reason. The SYN and
 * the FIN take a sequence number each, not a byte.
 */
static void test_ack_tail(void **state)
{
	uint8_t *b = make_bytes(8000, 22);
	struct tcpstream_config cfg;
	struct col *col = col_new(false);
	struct tcpstream *ts;
	const struct tcpstream_stats *st;
	struct dirlog *d;
	struct conn a, s, f, h, k, r, r2, mid, w;

	(void)state;
	tcpstream_config_default(&cfg);
	cfg.idle_timeout_ns = 10 * SEC;
	cfg.hole_timeout_ns = 100 * SEC;
	ts = new_ts(&cfg, col);
	st = tcpstream_stats(ts);

	/* 1: the client's last 2000 bytes and FIN lost; the server closes after reading them
	 * and its FIN acknowledges the client's FIN: 2000 bytes missing, not 2001 */
	conn_init(&a, 40040, 100, 200);
	handshake(ts, &a, 1 * SEC);
	feed_off(ts, &a, TCPSTREAM_C2S, 0, 0, b, 4000, 1 * SEC);
	conn_ack(&a, TCPSTREAM_S2C, 6000 + 1);
	feed_off(ts, &a, TCPSTREAM_S2C, 0, TCPSTREAM_FIN, NULL, 0, 1 * SEC + 1);
	/* 2: the server's last 2000 bytes and FIN lost; the client acknowledges them with its
	 * last request, then closes (its FIN carries the same ack): 2000 bytes missing */
	conn_init(&s, 40041, 300, 400);
	handshake(ts, &s, 1 * SEC);
	feed_off(ts, &s, TCPSTREAM_S2C, 0, 0, b, 3000, 1 * SEC);
	conn_ack(&s, TCPSTREAM_C2S, 5000);
	feed_off(ts, &s, TCPSTREAM_C2S, 0, 0, b, 5, 1 * SEC + 1);
	feed_off(ts, &s, TCPSTREAM_C2S, 5, TCPSTREAM_FIN, NULL, 0, 1 * SEC + 2);
	/* 3: the FIN seen, bytes before it lost: no ack needed */
	conn_init(&f, 40042, 500, 600);
	handshake(ts, &f, 1 * SEC);
	feed_off(ts, &f, TCPSTREAM_C2S, 0, 0, b, 1000, 1 * SEC);
	feed_off(ts, &f, TCPSTREAM_C2S, 3000, TCPSTREAM_FIN, NULL, 0, 1 * SEC);
	/* 4: held data, then a tail: the hole, the held bytes, then the tail */
	conn_init(&h, 40043, 700, 800);
	handshake(ts, &h, 1 * SEC);
	feed_off(ts, &h, TCPSTREAM_C2S, 0, 0, b, 1000, 1 * SEC);
	feed_off(ts, &h, TCPSTREAM_C2S, 2000, 0, b + 2000, 1000, 1 * SEC);
	conn_ack(&h, TCPSTREAM_S2C, 5000);
	feed_off(ts, &h, TCPSTREAM_S2C, 0, 0, b, 10, 1 * SEC);
	/* 5: only the client's SYN seen of its direction; the server answers 1234 bytes: the
	 * SYN is not one of them */
	conn_init(&k, 40044, 900, 1000);
	handshake(ts, &k, 1 * SEC);
	conn_ack(&k, TCPSTREAM_S2C, 1234);
	feed_off(ts, &k, TCPSTREAM_S2C, 0, 0, b, 10, 1 * SEC);
	/* 6: a midstream flow: acks behind its first byte seen tell nothing */
	conn_init(&mid, 40045, 0, 0);
	mid.ack[TCPSTREAM_C2S] = 70000;
	feed_seq(ts, &mid, TCPSTREAM_C2S, 50000, TCPSTREAM_ACK, b, 100, 1 * SEC);
	mid.ack[TCPSTREAM_S2C] = 49000;
	feed_seq(ts, &mid, TCPSTREAM_S2C, 70000, TCPSTREAM_ACK, b, 10, 1 * SEC);
	mid.ack[TCPSTREAM_S2C] = 50300;
	feed_seq(ts, &mid, TCPSTREAM_S2C, 70010, TCPSTREAM_ACK, b, 10, 1 * SEC);
	/* 7: across the wrap of the sequence numbers */
	conn_init(&w, 40046, 0xfffffff0, 5);
	handshake(ts, &w, 1 * SEC);
	feed_off(ts, &w, TCPSTREAM_C2S, 0, 0, b, 100, 1 * SEC);
	conn_ack(&w, TCPSTREAM_S2C, 500);
	feed_off(ts, &w, TCPSTREAM_S2C, 0, 0, b, 10, 1 * SEC);
	assert_int_equal(st->gaps, 2); /* the midstream starts */
	assert_int_equal(col->closes, 0);

	/* an idle close reports the tails of 2 (the server's: bytes only, its ack came before
	 * the client's FIN) */
	feed_off(ts, &a, TCPSTREAM_C2S, 4000, 0, NULL, 0, 5 * SEC); /* keep the others open */
	feed_off(ts, &f, TCPSTREAM_C2S, 1000, 0, NULL, 0, 5 * SEC);
	feed_off(ts, &h, TCPSTREAM_C2S, 1000, 0, NULL, 0, 5 * SEC);
	feed_off(ts, &k, TCPSTREAM_C2S, 0, 0, NULL, 0, 5 * SEC);
	feed_seq(ts, &mid, TCPSTREAM_C2S, 50100, TCPSTREAM_ACK, NULL, 0, 5 * SEC);
	feed_off(ts, &w, TCPSTREAM_C2S, 100, 0, NULL, 0, 5 * SEC);
	tcpstream_tick(ts, 11 * SEC + 10);
	assert_int_equal(col->rec[2].closes, 1);
	assert_int_equal(col->rec[2].reason, TCPSTREAM_CLOSE_IDLE);
	d = &col->rec[2].d[1];
	assert_int_equal(d->ngaps, 1);
	assert_int_equal(d->gaps[0].at, 3000);
	assert_int_equal(d->gaps[0].missing, 2000);
	assert_int_equal(d->gaps[0].ts_ns, 11 * SEC + 10);
	assert_int_equal(check_with_gaps(col, 2, 1, b, 8000), 5000);
	assert_stream(col, 2, 0, b, 5);
	assert_int_equal(col->closes, 1);

	/* shutdown reports the others */
	tcpstream_close_all(ts, 12 * SEC);
	assert_int_equal(col->rec[1].reason, TCPSTREAM_CLOSE_SHUTDOWN);
	assert_int_equal(col->rec[1].d[0].ngaps, 1);
	assert_int_equal(col->rec[1].d[0].gaps[0].at, 4000);
	assert_int_equal(col->rec[1].d[0].gaps[0].missing, 2000);
	assert_int_equal(check_with_gaps(col, 1, 0, b, 8000), 6000);
	assert_int_equal(col->rec[1].d[1].ngaps, 0);
	assert_int_equal(col->rec[3].d[0].ngaps, 1);
	assert_int_equal(col->rec[3].d[0].gaps[0].missing, 2000);
	assert_int_equal(check_with_gaps(col, 3, 0, b, 8000), 3000);
	d = &col->rec[4].d[0];
	assert_int_equal(d->ngaps, 2);
	assert_int_equal(d->gaps[0].at, 1000);
	assert_int_equal(d->gaps[0].missing, 1000);
	assert_int_equal(d->gaps[1].at, 2000);
	assert_int_equal(d->gaps[1].missing, 2000);
	assert_int_equal(check_with_gaps(col, 4, 0, b, 8000), 5000);
	assert_int_equal(col->rec[5].d[0].ngaps, 1);
	assert_int_equal(col->rec[5].d[0].gaps[0].at, 0);
	assert_int_equal(col->rec[5].d[0].gaps[0].missing, 1234);
	d = &col->rec[6].d[0];
	assert_int_equal(d->ngaps, 2);
	assert_int_equal(d->gaps[0].missing, 0);
	assert_int_equal(d->gaps[1].at, 100);
	assert_int_equal(d->gaps[1].missing, 200);
	assert_int_equal(col->rec[6].d[1].ngaps, 1); /* its unknown start only */
	assert_int_equal(col->rec[7].d[0].ngaps, 1);
	assert_int_equal(col->rec[7].d[0].gaps[0].missing, 400);
	assert_int_equal(st->tail_gaps, 7);
	assert_int_equal(st->gaps, 2 + 8);
	assert_int_equal(st->gap_bytes, 2000 + 2000 + 2000 + 3000 + 1234 + 200 + 400);
	assert_int_equal(st->flows_active, 0);
	assert_int_equal(st->buffered_bytes, 0);

	/* a new connection on the tuple closes the old one (REUSED) with its tail */
	conn_init(&r, 40047, 10, 20);
	handshake(ts, &r, 13 * SEC);
	feed_off(ts, &r, TCPSTREAM_C2S, 0, 0, b, 1000, 13 * SEC);
	conn_ack(&r, TCPSTREAM_S2C, 3000);
	feed_off(ts, &r, TCPSTREAM_S2C, 0, 0, b, 10, 13 * SEC);
	conn_init(&r2, 40047, 99999, 20);
	handshake(ts, &r2, 14 * SEC);
	assert_int_equal(col->rec[8].reason, TCPSTREAM_CLOSE_REUSED);
	assert_int_equal(col->rec[8].d[0].ngaps, 1);
	assert_int_equal(col->rec[8].d[0].gaps[0].missing, 2000);
	assert_int_equal(check_with_gaps(col, 8, 0, b, 8000), 3000);
	tcpstream_free(ts);
	col_free(col);
	free(b);
}

/* Acknowledgments that cannot be this connection's are ignored: no tail from them. */
static void test_ack_implausible(void **state)
{
	uint8_t *b = make_bytes(1000, 23);
	struct col *col = col_new(false);
	struct tcpstream *ts = new_ts(NULL, col);
	const struct tcpstream_stats *st = tcpstream_stats(ts);
	struct conn c, tw;

	(void)state;
	conn_init(&c, 40050, 1000, 2000);
	/* before the SYN-ACK, an ACK of another connection (TIME_WAIT): the server's direction
	 * has not started, its acks mean nothing yet */
	feed_seq(ts, &c, TCPSTREAM_C2S, 1000, TCPSTREAM_SYN, NULL, 0, 1);
	tw = c;
	tw.ack[TCPSTREAM_S2C] = 1000 + 1 + 50000;
	feed_seq(ts, &tw, TCPSTREAM_S2C, 123456, TCPSTREAM_ACK, NULL, 0, 2);
	feed_seq(ts, &c, TCPSTREAM_S2C, 2000, TCPSTREAM_SYN | TCPSTREAM_ACK, NULL, 0, 3);
	feed_off(ts, &c, TCPSTREAM_C2S, 0, 0, b, 100, 4);
	/* more than 1 GiB ahead, behind the start, from a segment out of the server's window */
	conn_ack(&c, TCPSTREAM_S2C, 100 + (1ULL << 30) + 1);
	feed_off(ts, &c, TCPSTREAM_S2C, 0, 0, b, 10, 5);
	c.ack[TCPSTREAM_S2C] = 1000 - 5;
	feed_off(ts, &c, TCPSTREAM_S2C, 10, 0, b + 10, 10, 6);
	conn_ack(&c, TCPSTREAM_S2C, 700);
	feed_off(ts, &c, TCPSTREAM_S2C, 0x60000000, 0, NULL, 0, 7);
	/* the client's FIN at 100: an ack past FIN + 1 is nonsense */
	feed_off(ts, &c, TCPSTREAM_C2S, 100, TCPSTREAM_FIN, NULL, 0, 8);
	conn_ack(&c, TCPSTREAM_S2C, 102);
	feed_off(ts, &c, TCPSTREAM_S2C, 20, 0, b + 20, 10, 9);
	tcpstream_close_all(ts, 10);
	assert_stream(col, 1, 0, b, 100);
	assert_stream(col, 1, 1, b, 30);
	assert_int_equal(st->gaps, 0);
	assert_int_equal(st->tail_gaps, 0);
	tcpstream_free(ts);
	col_free(col);
	free(b);
}

static void test_max_flows(void **state)
{
	uint8_t x[10] = "0123456789";
	struct tcpstream_config cfg;
	struct col *col = col_new(false);
	struct tcpstream *ts;
	const struct tcpstream_stats *st;
	struct conn c[5];
	int i;

	(void)state;
	tcpstream_config_default(&cfg);
	cfg.max_flows = 3;
	ts = new_ts(&cfg, col);
	st = tcpstream_stats(ts);
	for (i = 0; i < 5; i++)
		conn_init(&c[i], 41000 + i, 100 * i, 7);
	for (i = 0; i < 3; i++)
		handshake(ts, &c[i], 1);
	assert_int_equal(st->flows_active, 3);
	/* a fourth is refused, each segment that would open it counted; an empty ACK is not */
	feed_seq(ts, &c[3], TCPSTREAM_C2S, c[3].isn[0], TCPSTREAM_SYN, NULL, 0, 2);
	feed_off(ts, &c[3], TCPSTREAM_C2S, 0, 0, x, 10, 3);
	feed_off(ts, &c[3], TCPSTREAM_C2S, 0, 0, NULL, 0, 4);
	assert_int_equal(st->flows_refused, 2);
	assert_int_equal(st->flows_opened, 3);
	assert_int_equal(col->opens, 3);
	assert_int_equal(st->segments, 9 + 3);
	assert_int_equal(st->bytes_delivered, 0);
	/* one closes and lingers: a new flow evicts its tombstone */
	finish(ts, &c[0], 0, 0, 5);
	assert_int_equal(st->flows_active, 2);
	handshake(ts, &c[3], 6);
	assert_int_equal(st->flows_opened, 4);
	assert_int_equal(st->flows_active, 3);
	/* the evicted tombstone absorbs nothing any more, and the table is full again */
	feed_off(ts, &c[0], TCPSTREAM_C2S, 0, 0, x, 10, 7);
	assert_int_equal(st->late_segments, 0);
	assert_int_equal(st->flows_refused, 3);
	handshake(ts, &c[4], 8);
	assert_int_equal(st->flows_refused, 5);
	assert_int_equal(st->flows_opened, 4);
	tcpstream_free(ts);
	assert_int_equal(col->closes, 4);
	col_free(col);
}

/* A packet cut into chunks: SYN on the first chunk only, FIN on the last one only. */
static void test_chunked(void **state)
{
	uint8_t *b = make_bytes(9000, 16);
	struct col *col = col_new(false);
	struct tcpstream *ts = new_ts(NULL, col);
	const struct tcpstream_stats *st = tcpstream_stats(ts);
	struct conn c;

	(void)state;
	conn_init(&c, 40022, 0xfffffffe, 0x10);
	/* a SYN with 3000 bytes (TCP Fast Open) in chunks of 1024: data starts at ISN + 1 */
	feed_seq(ts, &c, TCPSTREAM_C2S, c.isn[0], TCPSTREAM_SYN, b, 1024, 1);
	feed_seq(ts, &c, TCPSTREAM_C2S, c.isn[0] + 1 + 1024, 0, b + 1024, 1024, 1);
	feed_seq(ts, &c, TCPSTREAM_C2S, c.isn[0] + 1 + 2048, 0, b + 2048, 952, 1);
	feed_seq(ts, &c, TCPSTREAM_S2C, c.isn[1], TCPSTREAM_SYN | TCPSTREAM_ACK, NULL, 0, 2);
	assert_int_equal(st->flows_midstream, 0);
	assert_true(col->rec[1].at_open.saw_syn);
	/* the response, 5000 bytes + FIN, its chunks in reverse order */
	feed_off(ts, &c, TCPSTREAM_S2C, 4096, TCPSTREAM_FIN, b + 4096, 904, 3);
	feed_off(ts, &c, TCPSTREAM_S2C, 2048, 0, b + 2048, 2048, 3);
	feed_off(ts, &c, TCPSTREAM_S2C, 0, 0, b, 2048, 3);
	/* the client's last packet, FIN on its last chunk */
	feed_off(ts, &c, TCPSTREAM_C2S, 3000, 0, b + 3000, 3000, 4);
	assert_int_equal(col->closes, 0);
	feed_off(ts, &c, TCPSTREAM_C2S, 6000, TCPSTREAM_FIN, b + 6000, 3000, 4);
	assert_stream(col, 1, 0, b, 9000);
	assert_stream(col, 1, 1, b, 5000);
	assert_int_equal(col->rec[1].closes, 1);
	assert_int_equal(col->rec[1].reason, TCPSTREAM_CLOSE_FIN);
	assert_int_equal(st->ooo_segments, 2);
	tcpstream_free(ts);
	col_free(col);
	free(b);
}

static void test_close_all_and_free(void **state)
{
	uint8_t *b = make_bytes(3000, 17);
	struct col *col = col_new(false);
	struct tcpstream *ts = new_ts(NULL, col);
	const struct tcpstream_stats *st = tcpstream_stats(ts);
	struct conn c, d;

	(void)state;
	conn_init(&c, 40023, 1, 2);
	conn_init(&d, 40024, 3, 4);
	handshake(ts, &c, 1);
	feed_off(ts, &c, TCPSTREAM_C2S, 1000, 0, b + 1000, 2000, 2);
	tcpstream_close_all(ts, 50);
	assert_int_equal(col->rec[1].reason, TCPSTREAM_CLOSE_SHUTDOWN);
	assert_int_equal(col->rec[1].close_ts, 50);
	assert_int_equal(col->rec[1].d[0].gaps[0].missing, 1000);
	assert_int_equal(check_with_gaps(col, 1, 0, b, 3000), 3000);
	assert_int_equal(st->flows_active, 0);
	assert_int_equal(st->buffered_bytes, 0);
	/* free closes what is left, at the latest time it saw */
	handshake(ts, &d, 60);
	feed_off(ts, &d, TCPSTREAM_S2C, 2000, 0, b + 2000, 1000, 70);
	tcpstream_free(ts);
	assert_int_equal(col->rec[2].closes, 1);
	assert_int_equal(col->rec[2].reason, TCPSTREAM_CLOSE_SHUTDOWN);
	assert_int_equal(col->rec[2].close_ts, 70);
	assert_int_equal(col->rec[2].d[1].gaps[0].missing, 2000);
	assert_int_equal(check_with_gaps(col, 2, 1, b, 3000), 3000);
	col_free(col);
	free(b);
}

static void test_empty_and_invalid(void **state)
{
	uint8_t x = 1;
	struct col *col = col_new(false);
	struct tcpstream *ts = new_ts(NULL, col);
	const struct tcpstream_stats *st = tcpstream_stats(ts);
	struct tcpstream_segment s;
	struct conn c;

	(void)state;
	conn_init(&c, 40025, 1, 2);
	/* what tells nothing about an unknown connection opens nothing */
	feed_off(ts, &c, TCPSTREAM_C2S, 0, 0, NULL, 0, 1);
	feed_off(ts, &c, TCPSTREAM_C2S, 0, TCPSTREAM_FIN, NULL, 0, 2);
	feed_off(ts, &c, TCPSTREAM_S2C, 0, TCPSTREAM_RST, NULL, 0, 3);
	assert_int_equal(st->flows_opened, 0);
	/* nonsense is counted and dropped */
	s = (struct tcpstream_segment){
	    .client = c.client, .server = c.server, .dir = 2, .data = &x, .len = 1};
	tcpstream_feed(ts, &s);
	s.dir = TCPSTREAM_C2S;
	s.data = NULL;
	tcpstream_feed(ts, &s);
	s.data = &x;
	s.client.family = 5;
	tcpstream_feed(ts, &s);
	s.client.family = 4;
	s.server.family = 6;
	tcpstream_feed(ts, &s);
	assert_int_equal(st->segments_rejected, 4);
	assert_int_equal(st->segments, 7);
	assert_int_equal(st->flows_opened, 0);
	assert_int_equal(col->opens, 0);
	/* IPv6 flows are keyed like IPv4 ones */
	s.server.family = 4;
	tcpstream_feed(ts, &s);
	s.client.family = s.server.family = 6;
	tcpstream_feed(ts, &s);
	assert_int_equal(st->flows_opened, 2);
	tcpstream_free(ts);
	col_free(col);
}

/*
 * Loss, duplication, reordering, both caps and hole timeouts at once, across several flows:
 * whatever happens, each direction must read as the original with exact-size gaps, and
 * delivered + gap bytes must reach the end of what was received, or, in odd runs where each
 * side acknowledges the whole of the other's stream before the end, the end of the stream.
 */
static void test_random_loss(void **state)
{
	int run;

	(void)state;
	for (run = 0; run < 30; run++) {
		enum { NFLOWS = 4 };
		uint64_t rng = 31337 + run, t = SEC, want_end[NFLOWS][2] = {{0}};
		size_t len = 60000, n[NFLOWS][2], i, k, total = 0, nq = 0;
		struct piece *p[NFLOWS][2];
		struct {
			int flow, dir;
			struct piece pc;
		} * q;
		uint8_t *orig = make_bytes(len, 300 + run);
		struct tcpstream_config cfg;
		struct col *col = col_new(false);
		struct tcpstream *ts;
		struct conn c[NFLOWS];
		int f, d;

		tcpstream_config_default(&cfg);
		cfg.max_flow_buffer = 12000;
		cfg.max_total_buffer = 30000;
		cfg.hole_timeout_ns = 50 * MS;
		ts = new_ts(&cfg, col);
		for (f = 0; f < NFLOWS; f++) {
			conn_init(&c[f], 42000 + f, (uint32_t)rng_next(&rng),
				  (uint32_t)rng_next(&rng));
			handshake(ts, &c[f], 1);
			for (d = 0; d < 2; d++) {
				p[f][d] = split(len, 1, 1500, &rng, &n[f][d]);
				total += n[f][d] * 3;
			}
		}
		q = malloc(sizeof(*q) * total);
		for (f = 0; f < NFLOWS; f++)
			for (d = 0; d < 2; d++)
				for (i = 0; i < n[f][d]; i++) {
					k = rng_next(&rng) % 10;
					if (k == 0)
						continue; /* lost */
					for (; k >= 8; k--)
						q[nq++] = (typeof(*q)){f, d, p[f][d][i]};
					q[nq++] = (typeof(*q)){f, d, p[f][d][i]};
					if (p[f][d][i].off + p[f][d][i].len > want_end[f][d])
						want_end[f][d] = p[f][d][i].off + p[f][d][i].len;
				}
		/* reorder locally: a random swap within 40 positions for each */
		for (i = 0; i < nq; i++) {
			size_t j = i + rng_next(&rng) % 40;

			if (j < nq) {
				typeof(*q) tmp = q[i];

				q[i] = q[j];
				q[j] = tmp;
			}
		}
		for (i = 0; i < nq; i++) {
			t += rng_range(&rng, 0, 2 * MS);
			feed_off(ts, &c[q[i].flow], q[i].dir, q[i].pc.off, 0, orig + q[i].pc.off,
				 q[i].pc.len, t);
			if (i % 16 == 0)
				tcpstream_tick(ts, t);
		}
		if (run % 2)
			for (f = 0; f < NFLOWS; f++)
				for (d = 0; d < 2; d++) {
					/* the other side's pure ACK of all of d */
					conn_ack(&c[f], !d, len);
					feed_off(ts, &c[f], !d, 0, 0, NULL, 0, t);
					want_end[f][d] = len;
				}
		tcpstream_close_all(ts, t + 1);
		for (f = 0; f < NFLOWS; f++)
			for (d = 0; d < 2; d++) {
				assert_int_equal(col->rec[f + 1].reason, TCPSTREAM_CLOSE_SHUTDOWN);
				assert_int_equal(check_with_gaps(col, f + 1, d, orig, len),
						 want_end[f][d]);
			}
		assert_int_equal(tcpstream_stats(ts)->buffered_bytes, 0);
		assert_true(tcpstream_stats(ts)->buffer_cap_hits > 0);
		assert_true(tcpstream_stats(ts)->hole_timeouts > 0);
		tcpstream_free(ts);
		col_free(col);
		free(q);
		free(orig);
		for (f = 0; f < NFLOWS; f++)
			for (d = 0; d < 2; d++)
				free(p[f][d]);
	}
}

static void bench_data(void *ctx, struct tcpstream_flow *flow, enum tcpstream_dir dir,
		       const uint8_t *data, size_t len, uint64_t ts_ns)
{
	(void)flow;
	(void)dir;
	(void)ts_ns;
	*(uint64_t *)ctx += len + data[0];
}

static void bench_report(const char *what, const struct timespec *a, uint64_t nseg, uint64_t bytes)
{
	struct timespec b;
	double secs;

	clock_gettime(CLOCK_MONOTONIC, &b);
	secs = (double)(b.tv_sec - a->tv_sec) + (double)(b.tv_nsec - a->tv_nsec) / 1e9;
	printf("tcpstream %s: %llu segments, %.2f GiB in %.3f s: %.2f GB/s, %.1f Msegments/s, "
	       "%.1f ns/segment\n",
	       what, (unsigned long long)nseg, (double)bytes / (1 << 30), secs,
	       (double)bytes / secs / 1e9, (double)nseg / secs / 1e6, secs * 1e9 / (double)nseg);
}

/*
 * Not a test: prints throughput when TCPSTREAM_BENCH is set. 1 GiB in 1448-byte segments:
 * one flow in order (the zero-copy fast path), 10000 flows in turn (hash lookups that miss
 * the cache), and one flow with every pair of segments swapped (each second segment copied,
 * held and released).
 */
static void test_throughput(void **state)
{
	enum { NFLOWS = 10000 };
	const uint64_t total = 1ULL << 30, per = 1448;
	const struct tcpstream_handler bh = {.data = bench_data};
	uint8_t *buf = make_bytes(2 * per, 18);
	struct tcpstream_config cfg;
	struct tcpstream *ts;
	struct timespec a;
	uint64_t sink = 0, off, nseg, i;
	struct conn *c = calloc(NFLOWS, sizeof(*c));

	(void)state;
	assert_non_null(c);
	if (!getenv("TCPSTREAM_BENCH")) {
		free(buf);
		free(c);
		skip();
	}
	tcpstream_config_default(&cfg);
	for (i = 0; i < NFLOWS; i++) {
		conn_init(&c[i], (uint16_t)(1024 + i), 0xfff00000 + (uint32_t)i, 5);
		c[i].client.addr[14] = (uint8_t)(i >> 8);
	}

	ts = tcpstream_new(&cfg, &bh, &sink);
	assert_non_null(ts);
	handshake(ts, &c[0], 1);
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (off = 0, nseg = 0; off < total; off += per, nseg++)
		feed_off(ts, &c[0], TCPSTREAM_C2S, off, 0, buf, per, 10 + nseg);
	bench_report("in order, 1 flow", &a, nseg, nseg * per);
	assert_int_equal(tcpstream_stats(ts)->bytes_delivered, nseg * per);
	tcpstream_free(ts);

	ts = tcpstream_new(&cfg, &bh, &sink);
	assert_non_null(ts);
	for (i = 0; i < NFLOWS; i++)
		handshake(ts, &c[i], 1);
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (off = 0, nseg = 0; nseg * per < total; off += per)
		for (i = 0; i < NFLOWS; i++, nseg++)
			feed_off(ts, &c[i], TCPSTREAM_C2S, off, 0, buf, per, 10 + nseg);
	bench_report("in order, 10000 flows in turn", &a, nseg, nseg * per);
	assert_int_equal(tcpstream_stats(ts)->bytes_delivered, nseg * per);
	assert_int_equal(tcpstream_stats(ts)->flows_active, NFLOWS);
	tcpstream_free(ts);

	ts = tcpstream_new(&cfg, &bh, &sink);
	assert_non_null(ts);
	handshake(ts, &c[0], 1);
	clock_gettime(CLOCK_MONOTONIC, &a);
	for (off = 0, nseg = 0; off < total; off += 2 * per, nseg += 2) {
		feed_off(ts, &c[0], TCPSTREAM_C2S, off + per, 0, buf + per, per, 10 + nseg);
		feed_off(ts, &c[0], TCPSTREAM_C2S, off, 0, buf, per, 11 + nseg);
	}
	bench_report("pairs swapped, 1 flow", &a, nseg, nseg * per);
	assert_int_equal(tcpstream_stats(ts)->bytes_delivered, nseg * per);
	assert_int_equal(tcpstream_stats(ts)->ooo_segments, nseg / 2);
	tcpstream_free(ts);
	free(buf);
	free(c);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_config_and_new),
	    cmocka_unit_test(test_in_order),
	    cmocka_unit_test(test_shuffled),
	    cmocka_unit_test(test_duplicates),
	    cmocka_unit_test(test_overlaps),
	    cmocka_unit_test(test_hole_timeout),
	    cmocka_unit_test(test_flow_buffer_cap),
	    cmocka_unit_test(test_total_buffer_cap),
	    cmocka_unit_test(test_wraparound),
	    cmocka_unit_test(test_midstream),
	    cmocka_unit_test(test_fin_out_of_order),
	    cmocka_unit_test(test_rst),
	    cmocka_unit_test(test_idle),
	    cmocka_unit_test(test_linger),
	    cmocka_unit_test(test_two_views),
	    cmocka_unit_test(test_client_port_two_servers),
	    cmocka_unit_test(test_tuple_reuse),
	    cmocka_unit_test(test_reuse_time_wait_rst),
	    cmocka_unit_test(test_rst_acceptance),
	    cmocka_unit_test(test_late_after_rst),
	    cmocka_unit_test(test_ack_tail),
	    cmocka_unit_test(test_ack_implausible),
	    cmocka_unit_test(test_max_flows),
	    cmocka_unit_test(test_chunked),
	    cmocka_unit_test(test_close_all_and_free),
	    cmocka_unit_test(test_empty_and_invalid),
	    cmocka_unit_test(test_random_loss),
	    cmocka_unit_test(test_throughput),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
