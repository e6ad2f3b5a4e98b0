// SPDX-License-Identifier: BSD-2-Clause
/*
 * tcpstream: TCP reassembly (see include/tcpstream.h for the contract).
 *
 * Shape of the state:
 *   - a chained hash table of flows keyed by (client address+family, client port, server
 *     port), sized once from max_flows;
 *   - every open flow on an LRU list ordered by last activity (tick expires idle flows
 *     from its head), every closed-but-lingering flow (tombstone) on a FIFO ordered by
 *     close time (tick forgets them from its head, a new flow at the cap evicts the head);
 *   - per half-stream (direction), a sorted list of held out-of-order pieces that never
 *     overlap each other and all start past the next expected byte;
 *   - every half-stream holding something on a "holes" list ordered by the capture time of
 *     its oldest held piece, so tick gives up timed-out holes from its head;
 *   - per half-stream, the highest offset the other side acknowledged, which bounds the RSTs
 *     taken and tells, at close, how much of a lost tail to report as a gap.
 *
 * Sequence numbers are mapped to 64-bit stream offsets: `base` is the sequence number of
 * offset 0 and an incoming sequence number is read as a signed 32-bit distance from the
 * next expected byte, which is exact as long as a segment is within 2 GiB of it (TCP windows
 * are at most 1 GiB).
 *
 * The in-order fast path (one hash lookup, one LRU move, one data callback straight from the
 * caller's buffer) allocates nothing. Memory is allocated per flow and per held piece only.
 *
 * Callbacks must not call back into the same instance: they run in the middle of updates.
 */
#include <errno.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "tcpstream.h"

#define MIB	     (1024ULL * 1024ULL)
#define NSEC_PER_SEC 1000000000ULL

/* A segment within this distance of a half-stream's next expected byte may belong to it
 * (the largest TCP window, 2^30 with window scaling). */
#define PLAUSIBLE_WINDOW (1U << 30)
/*
 * How far an RST's sequence number may lie past the furthest point its direction is known to
 * have reached: bytes sent but lost to the capture, bounded by the peer's receive window since
 * the last acknowledgment seen. 64 MiB is above what Linux autotuning grants even with raised
 * tcp_rmem limits; an RST further out is not this connection's (RFC 5961, seen from outside).
 */
#define RST_WINDOW (1U << 26)
/* No capture chunk is anywhere near this long; longer would break the 2^31 arithmetic. */
#define MAX_SEGMENT_LEN (1U << 30)
/* Buckets of the flow table: one per flow up to this many, then chains grow. */
#define MAX_BUCKETS (1U << 20)

#define container_of(ptr, type, member) ((type *)((char *)(ptr)-offsetof(type, member)))

/* Intrusive circular doubly-linked list; a head is a link that points to itself when empty. */
struct link {
	struct link *prev, *next;
};

static void link_init(struct link *l)
{
	l->prev = l->next = l;
}

static bool link_empty(const struct link *head)
{
	return head->next == head;
}

static void link_add_after(struct link *pos, struct link *l)
{
	l->prev = pos;
	l->next = pos->next;
	pos->next->prev = l;
	pos->next = l;
}

static void link_add_tail(struct link *head, struct link *l)
{
	link_add_after(head->prev, l);
}

/* Unlinks l and leaves it pointing to itself, so a second link_del is harmless. */
static void link_del(struct link *l)
{
	l->prev->next = l->next;
	l->next->prev = l->prev;
	link_init(l);
}

/* One held out-of-order piece: a copy of the new bytes of one early segment. */
struct held {
	struct link node; /* in half->held, sorted by off */
	uint64_t off;	  /* stream offset of data[0] */
	uint64_t ts_ns;	  /* capture time of the segment it came from */
	uint32_t len;
	uint8_t data[];
};

/*
 * What a held piece costs against max_flow_buffer and max_total_buffer: its payload plus its
 * header, so that a peer sending one-byte segments out of order cannot make a 4 MiB cap cost
 * forty times that. buffered_bytes still reports payload only.
 */
#define HELD_COST(len) ((uint64_t)(len) + sizeof(struct held))

struct flow;

/* One direction of a flow. */
struct half {
	struct flow *flow;
	enum tcpstream_dir dir;
	bool started;	/* base is known: SYN seen, or first data taken as the start */
	bool isn_known; /* a SYN was seen in this direction */
	bool fin_known;
	uint32_t isn;
	uint32_t base;	  /* sequence number of stream offset 0 */
	uint64_t next;	  /* next expected stream offset: everything before is delivered */
	uint64_t fin_off; /* the direction ends here (the FIN's own sequence number) */
	struct link held; /* struct held, sorted by off, all with off > next */
	uint64_t held_bytes;
	uint64_t held_cost;
	struct link hole_node; /* in ts->holes while held is not empty */
	uint64_t hole_ts;      /* a lower bound of the oldest held piece's ts_ns */
	bool ack_known;	       /* the other side acknowledged something of this direction */
	bool ack_fin;	       /* acked was first carried by a segment sent with or after the
				* other side's FIN: it is read as covering this direction's FIN */
	uint64_t acked;	       /* highest stream offset the other side acknowledged */
};

struct flow {
	struct tcpstream_flow pub; /* the key is pub.client and pub.server.port */
	struct flow *hnext;	   /* hash chain */
	struct link lru;	   /* in ts->lru while open, in ts->linger while lingering */
	uint64_t last_ts;	   /* open: last activity; lingering: close time */
	uint32_t hash;
	bool lingering;
	bool rst_closed; /* lingering after a close by RST */
	struct half half[2];
};

struct tcpstream {
	struct tcpstream_config cfg;
	const struct tcpstream_handler *handler;
	void *ctx;
	struct flow **buckets;
	uint32_t mask;
	uint64_t seed;
	struct link lru;    /* open flows, least recently active first */
	struct link linger; /* lingering flows, closed first first */
	struct link holes;  /* halves holding data, oldest held piece first */
	uint64_t lingering;
	uint64_t held_cost; /* sum of half->held_cost */
	uint64_t next_id;
	uint64_t now; /* latest time seen, for tcpstream_free's close events */
	struct tcpstream_stats st;
};

void tcpstream_config_default(struct tcpstream_config *cfg)
{
	*cfg = (struct tcpstream_config){
	    .max_flows = 65536,
	    .max_flow_buffer = 4 * MIB,
	    .max_total_buffer = 256 * MIB,
	    .hole_timeout_ns = 1 * NSEC_PER_SEC,
	    .idle_timeout_ns = 600 * NSEC_PER_SEC,
	    .linger_ns = 5 * NSEC_PER_SEC,
	};
}

/* Time since t, 0 if t is in the future (capture timestamps from several CPUs interleave). */
static uint64_t elapsed(uint64_t now, uint64_t t)
{
	return now > t ? now - t : 0;
}

static void note_time(struct tcpstream *ts, uint64_t t)
{
	if (t > ts->now)
		ts->now = t;
}

/* ---- callbacks and the events they report ------------------------------------------- */

static void emit_data(struct tcpstream *ts, struct half *h, const uint8_t *data, size_t len,
		      uint64_t ts_ns)
{
	ts->st.bytes_delivered += len;
	if (ts->handler->data)
		ts->handler->data(ts->ctx, &h->flow->pub, h->dir, data, len, ts_ns);
}

static void emit_gap(struct tcpstream *ts, struct half *h, uint64_t missing, uint64_t ts_ns)
{
	ts->st.gaps++;
	ts->st.gap_bytes += missing;
	if (ts->handler->gap)
		ts->handler->gap(ts->ctx, &h->flow->pub, h->dir, missing, ts_ns);
}

/* ---- flow table --------------------------------------------------------------------- */

/* murmur3's 64-bit finaliser: cheap, and every input bit affects every output bit. */
static uint64_t mix64(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return x;
}

static uint32_t flow_hash(const struct tcpstream *ts, const struct tcpstream_addr *client,
			  uint16_t server_port)
{
	uint64_t a, b, h;

	memcpy(&a, client->addr, 8);
	memcpy(&b, client->addr + 8, 8);
	h = mix64(ts->seed ^ a);
	h = mix64(h ^ b);
	h = mix64(h ^ ((uint64_t)client->port << 24 | (uint64_t)server_port << 8 | client->family));
	return (uint32_t)h;
}

static bool flow_matches(const struct flow *f, uint32_t hash, const struct tcpstream_segment *seg)
{
	return f->hash == hash && f->pub.client.port == seg->client.port &&
	       f->pub.server.port == seg->server.port &&
	       f->pub.client.family == seg->client.family &&
	       !memcmp(f->pub.client.addr, seg->client.addr, sizeof(seg->client.addr));
}

static bool same_server(const struct flow *f, const struct tcpstream_segment *seg)
{
	return f->pub.server.family == seg->server.family &&
	       !memcmp(f->pub.server.addr, seg->server.addr, sizeof(seg->server.addr));
}

/*
 * The flow of seg's key: the one under seg's own server address if there is one (a client
 * port may talk to two server addresses on the captured port at once, e.g. a VIP and the
 * host's address), else any (another view of it: DNAT, a bridge; flow_classify decides).
 */
static struct flow *flow_lookup(struct tcpstream *ts, uint32_t hash,
				const struct tcpstream_segment *seg)
{
	struct flow *f, *first = NULL;

	for (f = ts->buckets[hash & ts->mask]; f; f = f->hnext) {
		if (!flow_matches(f, hash, seg))
			continue;
		if (same_server(f, seg))
			return f;
		if (!first)
			first = f;
	}
	return first;
}

struct tcpstream_flow *tcpstream_find(struct tcpstream *ts, const struct tcpstream_addr *client,
				      const struct tcpstream_addr *server)
{
	struct tcpstream_segment key = {.client = *client, .server = *server};
	struct flow *f = flow_lookup(ts, flow_hash(ts, client, server->port), &key);

	return f && !f->lingering ? &f->pub : NULL;
}

static void flow_unhash(struct tcpstream *ts, struct flow *f)
{
	struct flow **pp = &ts->buckets[f->hash & ts->mask];

	while (*pp != f)
		pp = &(*pp)->hnext;
	*pp = f->hnext;
}

/* Removes a flow whose held data is gone and that is on no list but lru/linger, and frees
 * it. Lingering flows leave the linger list; open ones must have been closed already. */
static void flow_destroy(struct tcpstream *ts, struct flow *f)
{
	if (f->lingering)
		ts->lingering--;
	link_del(&f->lru);
	flow_unhash(ts, f);
	free(f);
}

/* ---- holes list --------------------------------------------------------------------- */

/* (Re)places h in ts->holes by hole_ts. Walks from the tail: new holes are usually the
 * newest. */
static void holes_place(struct tcpstream *ts, struct half *h)
{
	struct link *pos;

	link_del(&h->hole_node);
	for (pos = ts->holes.prev; pos != &ts->holes; pos = pos->prev)
		if (container_of(pos, struct half, hole_node)->hole_ts <= h->hole_ts)
			break;
	link_add_after(pos, &h->hole_node);
}

/* The exact capture time of h's oldest held piece; h holds at least one. */
static uint64_t held_oldest_ts(const struct half *h)
{
	uint64_t oldest = UINT64_MAX;
	const struct link *l;

	for (l = h->held.next; l != &h->held; l = l->next)
		if (container_of(l, struct held, node)->ts_ns < oldest)
			oldest = container_of(l, struct held, node)->ts_ns;
	return oldest;
}

/* ---- held pieces -------------------------------------------------------------------- */

static struct held *held_first(struct half *h)
{
	return link_empty(&h->held) ? NULL : container_of(h->held.next, struct held, node);
}

static void held_free(struct tcpstream *ts, struct half *h, struct held *p)
{
	link_del(&p->node);
	h->held_bytes -= p->len;
	h->held_cost -= HELD_COST(p->len);
	ts->st.buffered_bytes -= p->len;
	ts->held_cost -= HELD_COST(p->len);
	free(p);
	if (link_empty(&h->held))
		link_del(&h->hole_node);
}

/*
 * Delivers held pieces that the next expected offset has reached, in order, trimming what
 * was already delivered (counted as duplicate bytes). Stops at the next hole. h stays on the
 * holes list with a stale (lower) hole_ts if something is still held; tick refreshes it.
 */
static void half_drain(struct tcpstream *ts, struct half *h)
{
	struct held *p;
	uint64_t end, skip;

	while ((p = held_first(h)) && p->off <= h->next) {
		end = p->off + p->len;
		if (end > h->next) {
			skip = h->next - p->off;
			ts->st.dup_bytes += skip;
			h->next = end;
			emit_data(ts, h, p->data + skip, p->len - skip, p->ts_ns);
		} else {
			ts->st.dup_bytes += p->len;
		}
		held_free(ts, h, p);
	}
}

/* Gives up the first hole of h, which holds something: reports the missing bytes, then
 * delivers from the first held piece up to the next hole. */
static void half_skip_hole(struct tcpstream *ts, struct half *h)
{
	struct held *p = held_first(h);

	emit_gap(ts, h, p->off - h->next, p->ts_ns);
	h->next = p->off;
	half_drain(ts, h);
}

/* Gives up every hole of h, delivering all it holds (flow close). */
static void half_flush(struct tcpstream *ts, struct half *h)
{
	while (!link_empty(&h->held))
		half_skip_hole(ts, h);
}

/* The last held piece starting at or before off, or NULL. Walks from the tail because after
 * a hole the following segments mostly arrive in ascending order. */
static struct held *held_pred(struct half *h, uint64_t off)
{
	struct link *l;

	for (l = h->held.prev; l != &h->held; l = l->prev)
		if (container_of(l, struct held, node)->off <= off)
			return container_of(l, struct held, node);
	return NULL;
}

/*
 * Walks the bytes [off, end) of an early segment against what h already holds. Returns the
 * number of bytes not held yet and adds to *cost what holding them costs. With commit, also
 * copies them into new pieces (stamped ts_ns) in their sorted places. A failed allocation
 * leaves its bytes out: they become a hole that tick reports as a gap of exact size.
 */
static uint64_t held_walk(struct tcpstream *ts, struct half *h, uint64_t off, uint64_t end,
			  const uint8_t *data, uint64_t ts_ns, bool commit, uint64_t *cost)
{
	struct held *pred = held_pred(h, off), *n, *p;
	struct link *pos = pred ? &pred->node : &h->held;
	uint64_t cur = off, stop, fresh = 0;

	if (pred && pred->off + pred->len > cur)
		cur = pred->off + pred->len;
	while (cur < end) {
		n = pos->next != &h->held ? container_of(pos->next, struct held, node) : NULL;
		stop = n && n->off < end ? n->off : end;
		if (stop > cur) {
			fresh += stop - cur;
			*cost += HELD_COST(stop - cur);
			if (commit && (p = malloc(sizeof(*p) + (stop - cur)))) {
				p->off = cur;
				p->ts_ns = ts_ns;
				p->len = (uint32_t)(stop - cur);
				memcpy(p->data, data + (cur - off), p->len);
				link_add_after(pos, &p->node);
				pos = &p->node;
				h->held_bytes += p->len;
				h->held_cost += HELD_COST(p->len);
				ts->st.buffered_bytes += p->len;
				ts->held_cost += HELD_COST(p->len);
			}
		}
		if (stop == end)
			break;
		/* n starts inside [cur, end): its bytes are held already. */
		cur = n->off + n->len;
		pos = &n->node;
	}
	return fresh;
}

/* ---- flows: open, close ------------------------------------------------------------- */

static void half_init(struct half *h, struct flow *f, enum tcpstream_dir dir)
{
	h->flow = f;
	h->dir = dir;
	link_init(&h->held);
	link_init(&h->hole_node);
}

/*
 * Creates and hashes a flow for seg (calls the open callback), evicting the oldest lingering
 * flow if the table is full. Returns NULL when the table is full of open flows (counted in
 * flows_refused, once per segment that would have opened the flow: refused flows are not
 * remembered, since remembering them would need the table that is full) or memory is short.
 */
static struct flow *flow_open(struct tcpstream *ts, const struct tcpstream_segment *seg,
			      uint32_t hash)
{
	struct flow *f;

	if (ts->st.flows_active + ts->lingering >= ts->cfg.max_flows) {
		if (!ts->lingering) {
			ts->st.flows_refused++;
			return NULL;
		}
		flow_destroy(ts, container_of(ts->linger.next, struct flow, lru));
	}
	f = calloc(1, sizeof(*f));
	if (!f)
		return NULL;
	f->pub.id = ++ts->next_id;
	f->pub.client = seg->client;
	f->pub.server = seg->server;
	f->pub.open_ts_ns = seg->ts_ns;
	f->pub.saw_syn = seg->flags & TCPSTREAM_SYN;
	f->hash = hash;
	f->last_ts = seg->ts_ns;
	half_init(&f->half[TCPSTREAM_C2S], f, TCPSTREAM_C2S);
	half_init(&f->half[TCPSTREAM_S2C], f, TCPSTREAM_S2C);
	f->hnext = ts->buckets[hash & ts->mask];
	ts->buckets[hash & ts->mask] = f;
	link_add_tail(&ts->lru, &f->lru);
	ts->st.flows_opened++;
	ts->st.flows_active++;
	if (!f->pub.saw_syn)
		ts->st.flows_midstream++;
	if (ts->handler->open)
		ts->handler->open(ts->ctx, &f->pub, seg->ts_ns);
	return f;
}

/*
 * At close, after h's held data is delivered: reports as a trailing gap the bytes between what
 * was delivered and h's known end (its FIN, else the acknowledged position, less one for a
 * FIN it is read as covering; see the header), and moves next there, so that late segments
 * are measured against what was accounted for.
 */
static void half_close_tail(struct tcpstream *ts, struct half *h, uint64_t ts_ns)
{
	uint64_t end = h->next;

	if (!h->started)
		return;
	if (h->fin_known)
		end = h->fin_off;
	else if (h->ack_known)
		end = h->acked - (h->ack_fin && h->acked ? 1 : 0);
	if (end <= h->next)
		return;
	ts->st.tail_gaps++;
	emit_gap(ts, h, end - h->next, ts_ns);
	h->next = end;
}

/*
 * Closes an open flow: delivers what it holds (each hole reported as a gap), reports a missing
 * tail, calls the close callback, then either keeps it as a tombstone for linger_ns (to absorb
 * late duplicates from another interface) or frees it. The flow must not be used afterwards
 * unless linger.
 */
static void flow_close(struct tcpstream *ts, struct flow *f, enum tcpstream_close_reason reason,
		       uint64_t ts_ns, bool linger)
{
	half_flush(ts, &f->half[TCPSTREAM_C2S]);
	half_flush(ts, &f->half[TCPSTREAM_S2C]);
	half_close_tail(ts, &f->half[TCPSTREAM_C2S], ts_ns);
	half_close_tail(ts, &f->half[TCPSTREAM_S2C], ts_ns);
	if (ts->handler->close)
		ts->handler->close(ts->ctx, &f->pub, reason, ts_ns);
	ts->st.flows_closed++;
	ts->st.flows_active--;
	link_del(&f->lru);
	if (!linger || !ts->cfg.linger_ns) {
		flow_destroy(ts, f);
		return;
	}
	f->lingering = true;
	f->rst_closed = reason == TCPSTREAM_CLOSE_RST;
	f->last_ts = ts_ns;
	link_add_tail(&ts->linger, &f->lru);
	ts->lingering++;
}

static bool half_finished(const struct half *h)
{
	return h->fin_known && h->next >= h->fin_off;
}

/* Closes f (reason FIN) if both directions have ended; returns whether it did. */
static bool flow_close_if_finished(struct tcpstream *ts, struct flow *f, uint64_t ts_ns)
{
	if (!half_finished(&f->half[0]) || !half_finished(&f->half[1]))
		return false;
	flow_close(ts, f, TCPSTREAM_CLOSE_FIN, ts_ns, true);
	return true;
}

static void flow_touch(struct tcpstream *ts, struct flow *f, uint64_t ts_ns)
{
	if (ts_ns > f->last_ts)
		f->last_ts = ts_ns;
	link_del(&f->lru);
	link_add_tail(&ts->lru, &f->lru);
}

/* ---- sequence numbers --------------------------------------------------------------- */

/* Signed distance from h's next expected byte to seq (h started). */
static int32_t seq_dist(const struct half *h, uint32_t seq)
{
	return (int32_t)(seq - (h->base + (uint32_t)h->next));
}

/* Stream offset of seq read near the offset ref (exact within 2 GiB of it); negative if
 * before the stream's start. */
static int64_t seq_off_near(const struct half *h, uint32_t seq, uint64_t ref)
{
	return (int64_t)ref + (int32_t)(seq - (h->base + (uint32_t)ref));
}

/* Stream offset of seq; negative if before the stream's start. */
static int64_t seq_off(const struct half *h, uint32_t seq)
{
	return seq_off_near(h, seq, h->next);
}

/* The furthest stream offset h is known to reach: delivered, held, its FIN's sequence
 * number consumed, or acknowledged by the other side (h started). */
static uint64_t half_far(const struct half *h)
{
	const struct held *last;
	uint64_t far = h->next;

	if (!link_empty(&h->held)) {
		last = container_of(h->held.prev, struct held, node); /* sorted, disjoint */
		if (last->off + last->len > far)
			far = last->off + last->len;
	}
	if (h->fin_known && h->fin_off + 1 > far)
		far = h->fin_off + 1;
	if (h->ack_known && h->acked > far)
		far = h->acked;
	return far;
}

static bool seq_plausible(const struct half *h, uint32_t seq)
{
	int32_t d = seq_dist(h, seq);

	return d >= -(int32_t)PLAUSIBLE_WINDOW && d <= (int32_t)PLAUSIBLE_WINDOW;
}

/*
 * Whether seq is a sequence number h (started) could be at now: not before the offset lo,
 * nor past the furthest point h is known to reach plus RST_WINDOW of bytes the capture may
 * have lost; a direction that has carried nothing but its SYN (nothing delivered, held,
 * finished or acknowledged past it) is exactly at its ISN + 1.
 */
static bool half_could_be_at(const struct half *h, uint32_t seq, uint64_t lo)
{
	uint64_t far = half_far(h);
	int64_t off = seq_off_near(h, seq, far);

	if (off < (int64_t)lo)
		return false;
	return (uint64_t)off <= far + (far ? RST_WINDOW : 0);
}

/*
 * Whether the RST seg may end the open flow f: its sequence number must be one its direction
 * could send now (not before the next byte expected); if that direction was never seen, its
 * ACK, if any, must acknowledge a point the other direction reached (see the header).
 */
static bool rst_acceptable(const struct flow *f, const struct tcpstream_segment *seg)
{
	const struct half *h = &f->half[seg->dir], *o = &f->half[!seg->dir];

	if (h->started)
		return half_could_be_at(h, seg->seq, h->next);
	if ((seg->flags & TCPSTREAM_ACK) && o->started)
		return half_could_be_at(o, seg->ack, 0);
	return true;
}

/*
 * Takes the acknowledgment of seg (already applied to f) into the other direction: the
 * highest acknowledged offset, if plausible (see the header). The acknowledging direction
 * must have started and seg's sequence number be plausible for it: an ACK from elsewhere
 * (a TIME_WAIT answer of the previous connection) tells nothing about this one.
 */
static void flow_ack(struct flow *f, const struct tcpstream_segment *seg)
{
	const struct half *acker = &f->half[seg->dir];
	struct half *h = &f->half[!seg->dir];
	uint64_t far;
	int64_t off;

	if (!(seg->flags & TCPSTREAM_ACK) || !h->started)
		return;
	/* The acknowledgment of the segment before (most of a one-way transfer): nothing new. */
	if (h->ack_known && seg->ack == h->base + (uint32_t)h->acked)
		return;
	if (!acker->started || !seq_plausible(acker, seg->seq + !!(seg->flags & TCPSTREAM_SYN)))
		return;
	far = half_far(h);
	off = seq_off_near(h, seg->ack, far);
	if (off < 0 || off > (int64_t)(far + PLAUSIBLE_WINDOW))
		return; /* behind the start, or more than any window ahead */
	if (h->fin_known && (uint64_t)off > h->fin_off + 1)
		return; /* past the FIN: nothing is sent there */
	if (h->ack_known && (uint64_t)off <= h->acked)
		return;
	h->ack_known = true;
	h->acked = off;
	h->ack_fin = acker->fin_known;
}

/* ---- one segment -------------------------------------------------------------------- */

enum verdict {
	SEG_TAKE,   /* belongs to the flow */
	SEG_REUSED, /* a new connection on the same tuple: the flow must be closed first */
	SEG_REJECT, /* does not fit the flow; dropped */
	SEG_OTHER,  /* another connection of the client port, to another server address: a
		     * flow of its own, the flow stays */
};

/* A direction that has carried nothing but its SYN (or nothing at all). */
static bool half_quiet(const struct half *h)
{
	return !h->started || (h->isn_known && !h->next && link_empty(&h->held) && !h->fin_known);
}

/*
 * A client SYN (no ACK) on an open flow starts a new connection on the tuple unless it is
 * this connection's own: the same ISN, or (ISN unknown) the SYN just before the client's
 * first byte seen, or a client SYN arriving while nothing but the SYN-ACK was seen.
 */
static bool client_syn_reuses(const struct flow *f, uint32_t seq)
{
	const struct half *c = &f->half[TCPSTREAM_C2S];

	if (c->isn_known)
		return seq != c->isn;
	if (c->started)
		return seq + 1 != c->base;
	return !half_quiet(&f->half[TCPSTREAM_S2C]);
}

/*
 * Decides whether seg belongs to the open flow f. A client SYN with another ISN than the
 * flow's (or arriving after the flow's own traffic without being its late first SYN) starts
 * a new connection: on the flow's own server address it replaces the flow, on another one
 * it is another connection of the same client port (a flow of its own; the client's SYN is
 * the only proof of that: a midstream segment under another address that does not fit is
 * dropped, as a view of the flow that cannot be placed). A SYN of a known direction with
 * another ISN is not this connection.
 */
static enum verdict flow_classify(struct tcpstream *ts, struct flow *f,
				  const struct tcpstream_segment *seg)
{
	const struct half *h = &f->half[seg->dir];
	bool syn = seg->flags & TCPSTREAM_SYN;
	bool client_syn = syn && seg->dir == TCPSTREAM_C2S && !(seg->flags & TCPSTREAM_ACK);
	uint32_t data_seq = seg->seq + syn;

	bool same = same_server(f, seg);

	if (client_syn) {
		if (client_syn_reuses(f, seg->seq))
			return same ? SEG_REUSED : SEG_OTHER;
	} else if (syn && h->isn_known && seg->seq != h->isn) {
		return SEG_REJECT;
	}
	if (same)
		return SEG_TAKE;
	/* Another view of the connection (DNAT, a bridge): same ISN, or a sequence number the
	 * direction could carry. A direction with nothing seen yet cannot contradict it. */
	if (syn && h->isn_known ? seg->seq != h->isn : h->started && !seq_plausible(h, data_seq))
		return SEG_REJECT;
	ts->st.views_merged++;
	return SEG_TAKE;
}

/*
 * Takes the SYN of seg's direction into h. Returns true if it told something new (the
 * direction's start), false for a retransmitted or late SYN.
 */
static bool half_syn(struct half *h, uint32_t isn)
{
	if (h->isn_known)
		return false; /* same ISN: flow_classify turned the others away */
	h->isn_known = true;
	h->isn = isn;
	if (h->started)
		return false; /* late: the direction was already taken up midstream */
	h->started = true;
	h->base = isn + 1;
	h->next = 0;
	return true;
}

/*
 * A byte cap would be exceeded by holding an early segment of h at off: gives up one hole,
 * h's first for the per-flow cap, the oldest in the instance (maybe another flow's) for the
 * total cap; if there is none, skips h to off so that the segment becomes in order. Another
 * flow whose end the skip reached is closed; h's own flow never is (its caller still uses it).
 */
static void make_room(struct tcpstream *ts, struct half *h, uint64_t off, uint64_t ts_ns,
		      bool total)
{
	struct half *victim = h;

	ts->st.buffer_cap_hits++;
	if (total && !link_empty(&ts->holes))
		victim = container_of(ts->holes.next, struct half, hole_node);
	if (!link_empty(&victim->held)) {
		half_skip_hole(ts, victim);
		if (victim->flow != h->flow)
			flow_close_if_finished(ts, victim->flow, ts_ns);
		return;
	}
	/* Nothing held anywhere that could make room: skip h straight to this segment. */
	emit_gap(ts, h, off - h->next, ts_ns);
	h->next = off;
}

/*
 * Takes the payload of one segment at stream offset off into h: delivers what is in order
 * (straight from the caller's buffer), holds what is early, counts what is duplicate, and
 * gives up holes when a cap would be exceeded. Returns whether any byte was new.
 */
static bool half_data(struct tcpstream *ts, struct half *h, int64_t off, const uint8_t *data,
		      uint32_t len, uint64_t ts_ns)
{
	int64_t end = off + len, fin = h->fin_off;
	uint64_t cost, fresh;

	/* Nothing of a direction goes past its FIN: a stack does not send it, so it is noise. */
	if (h->fin_known && end > fin) {
		ts->st.dup_bytes += end - (off > fin ? off : fin);
		end = off > fin ? off : fin;
		if (end <= off)
			return false;
	}
	for (;;) {
		if (end <= (int64_t)h->next) {
			ts->st.dup_bytes += end - off;
			return false;
		}
		if (off < (int64_t)h->next) {
			ts->st.dup_bytes += h->next - off;
			data += h->next - off;
			off = h->next;
		}
		if (off == (int64_t)h->next) {
			h->next = end;
			emit_data(ts, h, data, end - off, ts_ns);
			half_drain(ts, h);
			return true;
		}
		cost = 0;
		fresh = held_walk(ts, h, off, end, data, ts_ns, false, &cost);
		if (!fresh) {
			ts->st.dup_bytes += end - off;
			return false;
		}
		if (h->held_cost + cost > ts->cfg.max_flow_buffer) {
			make_room(ts, h, off, ts_ns, false);
			continue;
		}
		if (ts->held_cost + cost > ts->cfg.max_total_buffer) {
			make_room(ts, h, off, ts_ns, true);
			continue;
		}
		ts->st.dup_bytes += end - off - fresh;
		ts->st.ooo_segments++;
		cost = 0;
		held_walk(ts, h, off, end, data, ts_ns, true, &cost);
		if (link_empty(&h->held)) /* every allocation failed */
			return true;
		if (link_empty(&h->hole_node)) {
			h->hole_ts = ts_ns;
			holes_place(ts, h);
		} else if (ts_ns < h->hole_ts) {
			h->hole_ts = ts_ns;
			holes_place(ts, h);
		}
		return true;
	}
}

/*
 * Applies seg (already matched to the open flow f) to its direction: SYN, payload, FIN.
 * Counts it as a duplicate if it told nothing new. RST is left to the caller.
 */
static void flow_segment(struct tcpstream *ts, struct flow *f, const struct tcpstream_segment *seg)
{
	struct half *h = &f->half[seg->dir];
	bool syn = seg->flags & TCPSTREAM_SYN, fin = seg->flags & TCPSTREAM_FIN, news = false;
	uint32_t data_seq = seg->seq + syn;
	int64_t off;

	if (syn)
		news = half_syn(h, seg->seq);
	if (seg->len || fin) {
		if (!h->started) {
			/* The direction's start was not seen: what came before is unknown. */
			h->started = true;
			h->base = data_seq;
			h->next = 0;
			emit_gap(ts, h, 0, seg->ts_ns);
		}
		off = seq_off(h, data_seq);
		if (seg->len && half_data(ts, h, off, seg->data, seg->len, seg->ts_ns))
			news = true;
		/* A FIN behind bytes already delivered cannot be this direction's end. */
		if (fin && !h->fin_known && off + seg->len >= (int64_t)h->next) {
			h->fin_known = true;
			h->fin_off = off + seg->len;
			news = true;
		}
	}
	if (!news && (syn || seg->len || fin) && !(seg->flags & TCPSTREAM_RST))
		ts->st.dup_segments++;
}

static bool segment_valid(const struct tcpstream_segment *seg)
{
	return (seg->dir == TCPSTREAM_C2S || seg->dir == TCPSTREAM_S2C) &&
	       (seg->client.family == 4 || seg->client.family == 6) &&
	       seg->server.family == seg->client.family && seg->len <= MAX_SEGMENT_LEN &&
	       (seg->data || !seg->len);
}

/*
 * Counts seg, which belongs to the lingering flow f, as late, and its payload bytes past what
 * f delivered or reported missing in their direction (all of them if the direction was never
 * started, or if seg cannot be placed in it) as undelivered.
 */
static void flow_late(struct tcpstream *ts, const struct flow *f,
		      const struct tcpstream_segment *seg)
{
	const struct half *h = &f->half[seg->dir];
	uint32_t data_seq = seg->seq + !!(seg->flags & TCPSTREAM_SYN);
	int64_t off, end, lo;

	ts->st.late_segments++;
	if (!seg->len)
		return;
	if (!h->started || !seq_plausible(h, data_seq)) {
		ts->st.late_bytes_undelivered += seg->len;
		return;
	}
	off = seq_off(h, data_seq);
	end = off + seg->len;
	lo = off > (int64_t)h->next ? off : (int64_t)h->next;
	if (h->fin_known && end > (int64_t)h->fin_off)
		end = h->fin_off; /* nothing goes past a FIN (see half_data) */
	if (end > lo)
		ts->st.late_bytes_undelivered += end - lo;
}

/*
 * Whether seg, for the lingering flow f, starts a flow of its own: a client SYN with another
 * ISN (a new connection on the tuple), or with f's ISN if an RST closed f before anything was
 * delivered or reported missing (that RST was not the connection's end; see the header).
 */
static bool lingering_yields(struct tcpstream *ts, const struct flow *f,
			     const struct tcpstream_segment *seg, bool client_syn)
{
	const struct half *c = &f->half[TCPSTREAM_C2S];

	if (!client_syn)
		return false;
	if (!c->isn_known || c->isn != seg->seq)
		return true;
	if (!f->rst_closed || f->half[TCPSTREAM_C2S].next || f->half[TCPSTREAM_S2C].next)
		return false;
	ts->st.flows_reopened++;
	return true;
}

void tcpstream_feed(struct tcpstream *ts, const struct tcpstream_segment *seg)
{
	bool syn = seg->flags & TCPSTREAM_SYN;
	bool client_syn = syn && seg->dir == TCPSTREAM_C2S && !(seg->flags & TCPSTREAM_ACK);
	struct flow *f;
	uint32_t hash;

	ts->st.segments++;
	if (!segment_valid(seg)) {
		ts->st.segments_rejected++;
		return;
	}
	note_time(ts, seg->ts_ns);
	hash = flow_hash(ts, &seg->client, seg->server.port);
	f = flow_lookup(ts, hash, seg);
	if (f && f->lingering) {
		if (!lingering_yields(ts, f, seg, client_syn)) {
			flow_late(ts, f, seg);
			return;
		}
		flow_destroy(ts, f);
		f = NULL;
	}
	if (f) {
		switch (flow_classify(ts, f, seg)) {
		case SEG_TAKE:
			break;
		case SEG_REUSED:
			/* The old connection is over; its tombstone would be this key's. */
			flow_close(ts, f, TCPSTREAM_CLOSE_REUSED, seg->ts_ns, false);
			f = NULL;
			break;
		case SEG_REJECT:
			ts->st.segments_rejected++;
			return;
		case SEG_OTHER:
			f = NULL; /* opened below, under its own server address */
			break;
		}
	}
	if (f && (seg->flags & TCPSTREAM_RST) && !rst_acceptable(f, seg)) {
		ts->st.rst_ignored++;
		return;
	}
	if (!f) {
		/* A pure ACK, lone FIN or RST of an unknown connection has nothing to tell. */
		if (!syn && !seg->len)
			return;
		f = flow_open(ts, seg, hash);
		if (!f)
			return;
	}
	flow_touch(ts, f, seg->ts_ns);
	flow_segment(ts, f, seg);
	flow_ack(f, seg);
	if (seg->flags & TCPSTREAM_RST)
		flow_close(ts, f, TCPSTREAM_CLOSE_RST, seg->ts_ns, true);
	else
		flow_close_if_finished(ts, f, seg->ts_ns);
}

/* ---- time --------------------------------------------------------------------------- */

/* Gives up holes whose oldest held piece is older than hole_timeout_ns. */
static void tick_holes(struct tcpstream *ts, uint64_t now)
{
	struct half *h;
	uint64_t oldest;

	while (!link_empty(&ts->holes)) {
		h = container_of(ts->holes.next, struct half, hole_node);
		if (elapsed(now, h->hole_ts) <= ts->cfg.hole_timeout_ns)
			break;
		/* hole_ts may be stale (the oldest piece was delivered): refresh and requeue. */
		oldest = held_oldest_ts(h);
		if (oldest != h->hole_ts) {
			h->hole_ts = oldest;
			holes_place(ts, h);
			continue;
		}
		ts->st.hole_timeouts++;
		half_skip_hole(ts, h);
		flow_close_if_finished(ts, h->flow, now);
	}
}

void tcpstream_tick(struct tcpstream *ts, uint64_t now_ns)
{
	struct flow *f;

	note_time(ts, now_ns);
	tick_holes(ts, now_ns);
	while (!link_empty(&ts->lru)) {
		f = container_of(ts->lru.next, struct flow, lru);
		if (elapsed(now_ns, f->last_ts) <= ts->cfg.idle_timeout_ns)
			break;
		ts->st.flows_expired++;
		/* No linger: a connection silent this long has no late copies in flight, and if
		 * it speaks again it should be picked up at once. */
		flow_close(ts, f, TCPSTREAM_CLOSE_IDLE, now_ns, false);
	}
	while (!link_empty(&ts->linger)) {
		f = container_of(ts->linger.next, struct flow, lru);
		if (elapsed(now_ns, f->last_ts) <= ts->cfg.linger_ns)
			break;
		flow_destroy(ts, f);
	}
}

void tcpstream_close_all(struct tcpstream *ts, uint64_t now_ns)
{
	note_time(ts, now_ns);
	while (!link_empty(&ts->lru))
		flow_close(ts, container_of(ts->lru.next, struct flow, lru),
			   TCPSTREAM_CLOSE_SHUTDOWN, now_ns, true);
}

/* ---- instance ----------------------------------------------------------------------- */

struct tcpstream *tcpstream_new(const struct tcpstream_config *cfg,
				const struct tcpstream_handler *handler, void *ctx)
{
	static const struct tcpstream_handler no_handler;
	struct tcpstream *ts;
	uint32_t n = 16;

	if (!cfg || !cfg->max_flows || !cfg->max_flow_buffer || !cfg->max_total_buffer ||
	    !cfg->idle_timeout_ns) {
		errno = EINVAL;
		return NULL;
	}
	ts = calloc(1, sizeof(*ts));
	if (!ts)
		return NULL;
	while (n < cfg->max_flows && n < MAX_BUCKETS)
		n <<= 1;
	ts->buckets = calloc(n, sizeof(*ts->buckets));
	if (!ts->buckets) {
		free(ts);
		errno = ENOMEM;
		return NULL;
	}
	ts->mask = n - 1;
	ts->cfg = *cfg;
	ts->handler = handler ? handler : &no_handler;
	ts->ctx = ctx;
	/* Client addresses and ports are chosen by the peers; a seed they cannot see (the
	 * instance's address, randomised by ASLR) keeps them from aiming at one bucket. */
	ts->seed = mix64((uint64_t)(uintptr_t)ts ^ 0x9e3779b97f4a7c15ULL);
	link_init(&ts->lru);
	link_init(&ts->linger);
	link_init(&ts->holes);
	return ts;
}

void tcpstream_free(struct tcpstream *ts)
{
	if (!ts)
		return;
	tcpstream_close_all(ts, ts->now);
	while (!link_empty(&ts->linger))
		flow_destroy(ts, container_of(ts->linger.next, struct flow, lru));
	free(ts->buckets);
	free(ts);
}

const struct tcpstream_stats *tcpstream_stats(const struct tcpstream *ts)
{
	return &ts->st;
}
