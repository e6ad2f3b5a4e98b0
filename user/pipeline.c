// SPDX-License-Identifier: BSD-2-Clause
/* pipeline.c — records -> tcpstream -> session -> stats. See include/pipeline.h. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "authblank.h"
#include "pipeline.h"

struct pipeline {
	struct tcpstream *tcp;
	struct session_config session_cfg;
	struct session_stats session_stats;
	struct stats *stats;
	struct dump *dump;
	uint64_t last_ts;
	struct pipeline_hooks hooks;
	struct conn *unnamed;	     /* sessions waiting for want_identity's answer */
	struct conn *asking;	     /* sessions waiting for want_statement's answer */
	struct pgwire_budget budget; /* every session's decoder draws on it */
	bool tls;		     /* the probes are loaded */
	int tls_servers;	     /* ... and watch this many servers */
	uint64_t tls_sessions, tls_orphans;
	uint64_t undecoded_tls_off, undecoded_no_probe, undecoded_no_plaintext, undecoded_gss;
};

/* Per-flow state, hung on tcpstream_flow.user and session_info.user_ptr. */
struct conn {
	struct session *session;
	struct dump_flow *dump;
	struct authblank auth; /* the client's authentication bodies kept out of the dump */
	struct stats_db *db;
	uint64_t flow_id;
	void *sink_handle; /* the mirror's handle of this session */
	bool sink_open;
	struct conn *next_unnamed, **prev_unnamed; /* on p->unnamed while waiting */
	struct tcpstream_addr client;
	uint64_t asked_ns;  /* capture time of the outstanding lookup */
	uint8_t quick_asks; /* no_match answers in a row, asked again at once (at most 3) */
	struct conn *next_asking, **prev_asking; /* on p->asking while waiting */
	bool tls;	      /* decoding TLS plaintext (CAPTURE_ORIGIN_TLS records) */
	bool tls_awaited;     /* encrypted, probed: plaintext expected */
	bool tls_known[2];    /* tls_next[dir] is set */
	uint32_t tls_next[2]; /* the seq the direction's next record should carry */
};

static void unnamed_remove(struct conn *c)
{
	if (!c->prev_unnamed)
		return;
	*c->prev_unnamed = c->next_unnamed;
	if (c->next_unnamed)
		c->next_unnamed->prev_unnamed = c->prev_unnamed;
	c->next_unnamed = NULL;
	c->prev_unnamed = NULL;
}

static void asking_remove(struct conn *c)
{
	if (!c->prev_asking)
		return;
	*c->prev_asking = c->next_asking;
	if (c->next_asking)
		c->next_asking->prev_asking = c->prev_asking;
	c->next_asking = NULL;
	c->prev_asking = NULL;
}

static void asking_add(struct pipeline *p, struct conn *c, uint64_t ts)
{
	c->asked_ns = ts;
	c->next_asking = p->asking;
	if (p->asking)
		p->asking->prev_asking = &c->next_asking;
	c->prev_asking = &p->asking;
	p->asking = c;
}

#define RELAXED memory_order_relaxed

void pipeline_config_default(struct pipeline_config *cfg)
{
	tcpstream_config_default(&cfg->tcp);
	session_config_default(&cfg->session);
	cfg->decode_buffer_bytes = 64ull << 20;
}

/* ---- session -> stats ---- */

/*
 * A completed Execute of a statement whose Parse was never seen, in a mirrored session:
 * without want_statement counted once per name (no_source_dsn); with it, the session asks
 * for the text unless it is waiting for an answer or asked for that name recently.
 */
static void unknown_statement(struct pipeline *p, struct conn *c, const struct session_request *r)
{
	if (r->kind != SESSION_REQ_EXECUTE || r->text || !r->stmt_name || !r->stmt_name[0] ||
	    !c->sink_open)
		return;
	if (!p->hooks.want_statement) {
		if (session_unknown_first(c->session, r->stmt_name))
			stats_statement_unrecovered(p->stats, STATS_UNRECOVERED_NO_SOURCE_DSN);
		return;
	}
	if (c->prev_asking) {
		if (r->ts_end - c->asked_ns < PIPELINE_LOOKUP_TIMEOUT_NS)
			return;
		asking_remove(c); /* its answer was lost */
		stats_statement_unrecovered(p->stats, STATS_UNRECOVERED_QUERY_FAILED);
	}
	if (!session_unknown_due(c->session, r->stmt_name, r->ts_end, PIPELINE_LOOKUP_INTERVAL_NS))
		return;
	if (p->hooks.want_statement(p->hooks.ctx, c->flow_id, &c->client))
		asking_add(p, c, r->ts_end);
	else
		stats_statement_unrecovered(p->stats, STATS_UNRECOVERED_QUERY_FAILED);
}

static void on_request(void *ctx, struct session_info *s, const struct session_request *r)
{
	struct conn *c = s->user_ptr;

	struct pipeline *p = ctx;

	if (!c)
		return;
	if (!c->db) /* looked up once per session, not per request */
		c->db = stats_db(p->stats, s->database);
	stats_source_request(c->db, r->ts_end > r->ts_start ? r->ts_end - r->ts_start : 0, r->error,
			     r->sqlstate);
	if (c->sink_open && p->hooks.request)
		p->hooks.request(p->hooks.sink, c->sink_handle, c->db, r);
	unknown_statement(p, c, r);
}

static void on_session_event(void *ctx, struct session_info *s, enum session_event ev,
			     uint64_t ts_ns)
{
	struct pipeline *p = ctx;
	struct conn *c = s->user_ptr;

	(void)ts_ns;
	switch (ev) {
	case SESSION_EV_IDENTIFIED:
		if (!c)
			break;
		c->db = stats_db(p->stats, s->database);
		if (c->sink_open && p->hooks.session_identified)
			p->hooks.session_identified(p->hooks.sink, c->sink_handle, s);
		break;
	case SESSION_EV_ENCRYPTED:
		if (!c || c->tls)
			break;
		if (s->encryption == 'G')
			p->undecoded_gss++;
		else if (!p->tls)
			p->undecoded_tls_off++;
		else if (!p->tls_servers)
			p->undecoded_no_probe++;
		else
			c->tls_awaited = true; /* counted at close if nothing comes */
		break;
	case SESSION_EV_SYNC:
	case SESSION_EV_RESYNC:
		if (c && c->sink_open && p->hooks.session_event)
			p->hooks.session_event(p->hooks.sink, c->sink_handle, s, ev);
		break;
	default:
		break;
	}
}

static const struct session_handler session_handler = {
    .request = on_request,
    .event = on_session_event,
};

/* ---- tcpstream -> session + dump ---- */

static void on_open(void *ctx, struct tcpstream_flow *flow, uint64_t ts_ns)
{
	struct pipeline *p = ctx;
	struct conn *c = calloc(1, sizeof(*c));

	if (!c)
		return; /* this flow is then not decoded; nothing else depends on it */
	flow->user = c;
	c->flow_id = flow->id;
	c->client = flow->client;
	if (p->dump)
		c->dump = dump_flow_open(p->dump, flow);
	authblank_init(&c->auth, flow->saw_syn);
	c->session = session_new(&p->session_cfg, &session_handler, p, &p->session_stats, flow->id,
				 flow->saw_syn, ts_ns);
	if (c->session) {
		session_info(c->session)->user_ptr = c;
		if (p->hooks.session_open) {
			c->sink_handle =
			    p->hooks.session_open(p->hooks.sink, session_info(c->session));
			c->sink_open = true;
		}
		if (!flow->saw_syn && p->hooks.want_identity) {
			c->next_unnamed = p->unnamed;
			if (p->unnamed)
				p->unnamed->prev_unnamed = &c->next_unnamed;
			c->prev_unnamed = &p->unnamed;
			p->unnamed = c;
			p->hooks.want_identity(p->hooks.ctx, flow->id, &flow->client);
		}
	}
}

/* A flow's bytes (of its TCP stream, or a TLS session's plaintext) to the dump and the
 * session. */
static void conn_data(struct pipeline *p, struct conn *c, enum tcpstream_dir dir,
		      const uint8_t *data, size_t len, uint64_t ts_ns)
{
	if (c->dump && dir == TCPSTREAM_C2S && !authblank_done(&c->auth)) {
		uint8_t copy[4096]; /* authentication: a few small messages */
		size_t off, n;

		for (off = 0; off < len; off += n) {
			n = len - off < sizeof(copy) ? len - off : sizeof(copy);
			authblank_feed(&c->auth, data + off, n, copy);
			dump_flow_data(p->dump, c->dump, dir, copy, n);
		}
	} else if (c->dump) {
		dump_flow_data(p->dump, c->dump, dir, data, len);
	}
	if (c->session)
		session_feed(c->session, (enum pgwire_dir)dir, data, len, ts_ns);
}

static void conn_gap(struct pipeline *p, struct conn *c, enum tcpstream_dir dir, uint64_t missing,
		     uint64_t ts_ns)
{
	if (c->dump)
		dump_flow_gap(p->dump, c->dump, dir, missing);
	if (dir == TCPSTREAM_C2S)
		authblank_gap(&c->auth);
	if (c->session)
		session_gap(c->session, (enum pgwire_dir)dir, ts_ns);
}

static void on_data(void *ctx, struct tcpstream_flow *flow, enum tcpstream_dir dir,
		    const uint8_t *data, size_t len, uint64_t ts_ns)
{
	struct conn *c = flow->user;

	if (c && !c->tls) /* a TLS session's bytes come from the probes */
		conn_data(ctx, c, dir, data, len, ts_ns);
}

static void on_gap(void *ctx, struct tcpstream_flow *flow, enum tcpstream_dir dir, uint64_t missing,
		   uint64_t ts_ns)
{
	struct conn *c = flow->user;

	if (c && !c->tls)
		conn_gap(ctx, c, dir, missing, ts_ns);
}

static void on_close(void *ctx, struct tcpstream_flow *flow, enum tcpstream_close_reason reason,
		     uint64_t ts_ns)
{
	struct pipeline *p = ctx;
	struct conn *c = flow->user;

	(void)reason;
	if (!c)
		return;
	unnamed_remove(c);
	asking_remove(c);
	if (c->tls_awaited && !c->tls)
		p->undecoded_no_plaintext++;
	session_free(c->session, ts_ns);
	if (c->sink_open && p->hooks.session_close)
		p->hooks.session_close(p->hooks.sink, c->sink_handle);
	dump_flow_close(p->dump, c->dump);
	free(c);
	flow->user = NULL;
}

static const struct tcpstream_handler tcp_handler = {
    .open = on_open,
    .data = on_data,
    .gap = on_gap,
    .close = on_close,
};

struct pipeline *pipeline_new(const struct pipeline_config *cfg, struct stats *st,
			      struct dump *dump)
{
	struct pipeline *p = calloc(1, sizeof(*p));

	if (!p)
		return NULL;
	p->stats = st;
	p->dump = dump;
	p->session_cfg = cfg->session;
	p->budget.max_bytes = cfg->decode_buffer_bytes;
	p->session_cfg.wire.budget = &p->budget;
	p->tls = cfg->tls;
	p->tcp = tcpstream_new(&cfg->tcp, &tcp_handler, p);
	if (!p->tcp) {
		free(p);
		return NULL;
	}
	return p;
}

/* The first plaintext of a flow's TLS session: its bytes come from the probes now. */
static void tls_begin(struct pipeline *p, struct tcpstream_flow *flow, struct conn *c,
		      uint64_t ts_ns)
{
	struct session_info *si = c->session ? session_info(c->session) : NULL;
	/* its SSLRequest was seen: the plaintext starts with the StartupMessage */
	bool from_start = flow->saw_syn && si && si->state == SESSION_ENCRYPTED;

	c->tls = true;
	c->tls_awaited = false;
	p->tls_sessions++;
	authblank_init(&c->auth, from_start);
	if (c->dump)
		dump_flow_gap(p->dump, c->dump, TCPSTREAM_C2S, 0);
	if (c->dump)
		dump_flow_gap(p->dump, c->dump, TCPSTREAM_S2C, 0);
	if (c->session)
		session_restart(c->session, from_start, ts_ns);
}

static void tls_record(struct pipeline *p, const struct capture_event *ev, const uint8_t *data)
{
	struct tcpstream_addr client, server;
	bool c2s = ev->dir == CAPTURE_DIR_C2S;
	enum tcpstream_dir dir = c2s ? TCPSTREAM_C2S : TCPSTREAM_S2C;
	struct tcpstream_flow *flow;
	struct conn *c;
	uint32_t seq = ev->seq + ev->chunk_off;

	memcpy(client.addr, c2s ? ev->saddr : ev->daddr, 16);
	memcpy(server.addr, c2s ? ev->daddr : ev->saddr, 16);
	client.family = server.family = ev->family;
	client.port = c2s ? ev->sport : ev->dport;
	server.port = c2s ? ev->dport : ev->sport;
	flow = tcpstream_find(p->tcp, &client, &server);
	c = flow ? flow->user : NULL;
	if (!c) {
		p->tls_orphans++;
		return;
	}
	if (!c->tls)
		tls_begin(p, flow, c, ev->ts_ns);
	if (c->tls_known[dir] && seq != c->tls_next[dir])
		conn_gap(p, c, dir, (uint32_t)(seq - c->tls_next[dir]), ev->ts_ns);
	c->tls_known[dir] = true;
	c->tls_next[dir] = seq + ev->chunk_len;
	if (ev->chunk_len)
		conn_data(p, c, dir, data, ev->chunk_len, ev->ts_ns);
}

void pipeline_set_tls_servers(struct pipeline *p, int probed)
{
	p->tls_servers = probed;
}

uint64_t pipeline_tls_orphans(const struct pipeline *p)
{
	return p->tls_orphans;
}

void pipeline_record(struct pipeline *p, const struct capture_event *ev, const uint8_t *data)
{
	struct tcpstream_segment seg = {
	    .ts_ns = ev->ts_ns,
	    .dir = ev->dir == CAPTURE_DIR_C2S ? TCPSTREAM_C2S : TCPSTREAM_S2C,
	    .data = data,
	    .len = ev->chunk_len,
	};
	bool c2s = ev->dir == CAPTURE_DIR_C2S;
	uint32_t syn = ev->tcp_flags & CAPTURE_TCP_SYN ? 1 : 0;

	if (ev->ts_ns > p->last_ts)
		p->last_ts = ev->ts_ns;
	if (ev->origin == CAPTURE_ORIGIN_TLS) {
		tls_record(p, ev, data);
		return;
	}

	memcpy(seg.client.addr, c2s ? ev->saddr : ev->daddr, 16);
	memcpy(seg.server.addr, c2s ? ev->daddr : ev->saddr, 16);
	seg.client.family = seg.server.family = ev->family;
	seg.client.port = c2s ? ev->sport : ev->dport;
	seg.server.port = c2s ? ev->dport : ev->sport;
	/* A SYN consumes one sequence number before the payload: the first chunk carries
	 * the SYN itself (tcpstream skips it), later chunks start past it. */
	seg.seq = ev->seq + (ev->chunk_off ? syn + ev->chunk_off : 0);
	seg.ack = ev->ack;
	seg.flags = ev->tcp_flags & CAPTURE_TCP_ACK;
	if (ev->chunk_off == 0)
		seg.flags |= ev->tcp_flags & CAPTURE_TCP_SYN;
	if (ev->chunk_off + ev->chunk_len == ev->payload_len)
		seg.flags |= ev->tcp_flags & (CAPTURE_TCP_FIN | CAPTURE_TCP_RST);
	tcpstream_feed(p->tcp, &seg);
}

static void publish(struct pipeline *p, const uint64_t *k)
{
	struct stats_capture *c = stats_capture(p->stats);
	const struct tcpstream_stats *t = tcpstream_stats(p->tcp);
	const struct session_stats *s = &p->session_stats;

	if (k) {
		atomic_store_explicit(&c->packets, k[CAPTURE_CNT_PACKETS], RELAXED);
		atomic_store_explicit(&c->bytes, k[CAPTURE_CNT_BYTES], RELAXED);
		atomic_store_explicit(&c->records, k[CAPTURE_CNT_RECORDS], RELAXED);
		atomic_store_explicit(&c->ringbuf_drops, k[CAPTURE_CNT_RB_DROPS], RELAXED);
		atomic_store_explicit(&c->truncated, k[CAPTURE_CNT_TRUNCATED], RELAXED);
		atomic_store_explicit(&c->copy_errors, k[CAPTURE_CNT_COPY_ERRORS], RELAXED);
		atomic_store_explicit(&c->tls_calls, k[CAPTURE_CNT_TLS_CALLS], RELAXED);
		atomic_store_explicit(&c->tls_bytes, k[CAPTURE_CNT_TLS_BYTES], RELAXED);
		atomic_store_explicit(&c->tls_unmapped, k[CAPTURE_CNT_TLS_UNMAPPED], RELAXED);
	}
	atomic_store_explicit(&c->stream_gaps, t->gaps, RELAXED);
	atomic_store_explicit(&c->gap_bytes, t->gap_bytes, RELAXED);
	atomic_store_explicit(&c->dup_segments, t->dup_segments, RELAXED);
	atomic_store_explicit(&c->ooo_segments, t->ooo_segments, RELAXED);
	atomic_store_explicit(&c->flows_active, t->flows_active, RELAXED);
	atomic_store_explicit(&c->flows_refused, t->flows_refused, RELAXED);
	atomic_store_explicit(&c->flow_buffer_full, t->buffer_cap_hits, RELAXED);
	atomic_store_explicit(&c->hole_timeouts, t->hole_timeouts, RELAXED);
	atomic_store_explicit(&c->resyncs, s->resyncs, RELAXED);
	atomic_store_explicit(&c->sessions_active, s->sessions_active, RELAXED);
	atomic_store_explicit(&c->encrypted_sessions, s->encrypted, RELAXED);
	atomic_store_explicit(&c->tls_sessions, p->tls_sessions, RELAXED);
	atomic_store_explicit(&c->tls_probed_servers, (uint64_t)p->tls_servers, RELAXED);
	atomic_store_explicit(&c->undecoded_tls_off, p->undecoded_tls_off, RELAXED);
	atomic_store_explicit(&c->undecoded_no_probe, p->undecoded_no_probe, RELAXED);
	atomic_store_explicit(&c->undecoded_no_plaintext, p->undecoded_no_plaintext, RELAXED);
	atomic_store_explicit(&c->undecoded_gss, p->undecoded_gss, RELAXED);
	atomic_store_explicit(&c->replication_sessions, s->replication, RELAXED);
	atomic_store_explicit(&c->statements_evicted, s->statements_evicted, RELAXED);
	atomic_store_explicit(&c->inflight_overflow, s->inflight_overflow, RELAXED);
	atomic_store_explicit(&c->abandoned_requests, s->abandoned, RELAXED);
	atomic_store_explicit(&c->unmatched_responses, s->unmatched_responses, RELAXED);
	atomic_store_explicit(&c->bodies_too_big, s->wire.bodies_too_big, RELAXED);
	atomic_store_explicit(&c->decode_buffer_full, s->wire.over_budget, RELAXED);
	atomic_store_explicit(&c->bad_lengths, s->wire.bad_lengths, RELAXED);
	atomic_store_explicit(&c->protocol_errors, s->protocol_errors, RELAXED);
	atomic_store_explicit(&c->skipped_bytes, s->wire.bytes_skipped, RELAXED);
	atomic_store_explicit(&c->portals_evicted, s->portals_evicted, RELAXED);
	atomic_store_explicit(&c->copy_truncated, s->copy_truncated, RELAXED);
}

void pipeline_tick(struct pipeline *p, uint64_t now_ns, const uint64_t *kernel)
{
	tcpstream_tick(p->tcp, now_ns);
	publish(p, kernel);
}

void pipeline_close_all(struct pipeline *p, uint64_t now_ns, const uint64_t *kernel)
{
	tcpstream_close_all(p->tcp, now_ns);
	publish(p, kernel);
}

void pipeline_set_hooks(struct pipeline *p, const struct pipeline_hooks *hooks)
{
	p->hooks = *hooks;
	p->session_cfg.track_activity = hooks->want_statement != NULL;
}

bool pipeline_identify(struct pipeline *p, uint64_t flow_id, const char *database, const char *user,
		       uint64_t now_ns)
{
	struct conn *c;

	for (c = p->unnamed; c; c = c->next_unnamed)
		if (c->flow_id == flow_id)
			break;
	if (!c)
		return false; /* closed meanwhile */
	unnamed_remove(c);
	if (strcmp(session_info(c->session)->database, SESSION_UNKNOWN))
		return false; /* its StartupMessage was seen after all */
	session_identify(c->session, database, user, now_ns); /* IDENTIFIED updates c->db */
	return true;
}

bool pipeline_statement(struct pipeline *p, const struct pipeline_statement *a)
{
	enum stats_unrecovered_reason why = STATS_UNRECOVERED_NO_MATCH;
	const char *name;
	struct conn *c;

	for (c = p->asking; c; c = c->next_asking)
		if (c->flow_id == a->flow_id)
			break;
	if (!c)
		return false; /* closed meanwhile, or given up */
	asking_remove(c);
	if (a->status == PIPELINE_STMT_NOT_FOUND) {
		why = STATS_UNRECOVERED_NOT_FOUND;
	} else if (a->status != PIPELINE_STMT_FOUND) {
		why = STATS_UNRECOVERED_QUERY_FAILED;
	} else if ((name = session_attribute(c->session, a->lo_ns, a->hi_ns)) != NULL) {
		/* only now: a truncated text may not even be this statement's */
		if (a->truncated)
			why = STATS_UNRECOVERED_TRUNCATED;
		else if (!a->text || a->len > p->session_cfg.wire.max_body)
			why = STATS_UNRECOVERED_TOO_LONG;
		else if (session_define_statement(c->session, name, a->text, a->len)) {
			stats_statement_recovered(p->stats);
			session_unknown_rearm(c->session); /* perhaps not the one asked for */
			c->quick_asks = 0;
			return true;
		}
	} else if (c->quick_asks < 3) {
		/* another statement ran in the window (the session went on while the row was
		 * read): the next execution asks again, not PIPELINE_LOOKUP_INTERVAL_NS later
		 * (at 10,000 executions a second that would be 1,000 unmirrored) */
		c->quick_asks++;
		session_unknown_rearm(c->session);
	}
	stats_statement_unrecovered(p->stats, why);
	return false;
}

uint64_t pipeline_last_ts(const struct pipeline *p)
{
	return p->last_ts;
}

const struct tcpstream_stats *pipeline_tcp_stats(const struct pipeline *p)
{
	return tcpstream_stats(p->tcp);
}

const struct session_stats *pipeline_session_stats(const struct pipeline *p)
{
	return &p->session_stats;
}

void pipeline_free(struct pipeline *p)
{
	if (!p)
		return;
	tcpstream_free(p->tcp);
	free(p);
}
