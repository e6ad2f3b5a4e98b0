/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * pipeline: the capture thread's work, wired in one place — ring-buffer records ->
 * tcpstream (reassembly) -> session (decoding) -> stats, plus the --dump-streams view.
 *
 * Pure (no sockets, threads or clocks: time comes with every call), so tests can drive
 * it with capture records. Owned by the capture thread; it writes stats atomics that
 * the HTTP thread reads.
 */
#ifndef PGSHADOW_PIPELINE_H
#define PGSHADOW_PIPELINE_H

#include <stdint.h>

#include "capture_event.h"
#include "dump.h"
#include "session.h"
#include "stats.h"
#include "tcpstream.h"

struct pipeline_config {
	struct tcpstream_config tcp;
	struct session_config session; /* session.wire.budget is the pipeline's own */
	uint64_t decode_buffer_bytes;  /* the decoders' budget (struct pgwire_budget;
					* default 64 MiB; 0: none) */
	bool tls;		       /* --tls on: TLS records may come (the probes are loaded) */
};

void pipeline_config_default(struct pipeline_config *cfg);

/* dump may be NULL (no --dump-streams). Returns NULL with errno set. */
struct pipeline *pipeline_new(const struct pipeline_config *cfg, struct stats *st,
			      struct dump *dump);

/*
 * One ring-buffer record (ev followed by ev->chunk_len bytes at data).
 *
 * A CAPTURE_ORIGIN_TLS record carries a TLS session's plaintext. It joins the flow of its
 * connection (the TCP capture saw it first: at least the SSLRequest or the encrypted bytes
 * of the call's data), whose session then decodes the plaintext instead of the TCP payload
 * (session_restart: from the StartupMessage when the session's SSLRequest was seen, else
 * by hunting as for a session caught mid-way); the TCP capture of that flow then supplies
 * only its end. A jump in a direction's seq is a gap. A record whose flow is unknown is
 * counted (tls_orphans in the stop line) and dropped.
 */
void pipeline_record(struct pipeline *p, const struct capture_event *ev, const uint8_t *data);

/* How many servers the TLS probes watch now (for the undecoded reasons no_probe and
 * no_plaintext). */
void pipeline_set_tls_servers(struct pipeline *p, int probed);

/* TLS records whose connection the TCP capture had not seen: dropped. */
uint64_t pipeline_tls_orphans(const struct pipeline *p);

/* Gives up stale holes, expires idle flows, and publishes the capture-health numbers
 * (kernel: the CAPTURE_COUNTERS counters of capture_read_counters, or NULL). */
void pipeline_tick(struct pipeline *p, uint64_t now_ns, const uint64_t *kernel);

/* Ends every flow (at shutdown), then publishes. */
void pipeline_close_all(struct pipeline *p, uint64_t now_ns, const uint64_t *kernel);

/* Statements prepared before capture began (with want_statement): a mirrored session asks
 * for the text of an unknown statement at most once per interval per name, and has at
 * most one lookup outstanding (forgotten after the timeout: its answer was lost). */
#define PIPELINE_LOOKUP_INTERVAL_NS 100000000ULL   /* 100 ms */
#define PIPELINE_LOOKUP_TIMEOUT_NS  10000000000ULL /* 10 s */

/*
 * The shells the capture thread hands work to, all optional:
 * - want_identity: who can name the database of a session whose start was missed
 *   (--source-dsn);
 * - want_statement: who can find the text of a statement prepared before capture began
 *   (--source-dsn), for a mirrored session that executed it; false when it cannot take
 *   the request now. Its answer comes back through pipeline_statement;
 * - session_open/identified/close and request: the mirror (--mirror). session_open
 *   returns the sink's per-session handle (NULL: not mirrored), given back to the others.
 *   request receives every completed source request with its stats entry; session_event
 *   the Syncs answered and the resynchronisations after a gap.
 */
struct pipeline_hooks {
	void (*want_identity)(void *ctx, uint64_t flow_id, const struct tcpstream_addr *client);
	bool (*want_statement)(void *ctx, uint64_t flow_id, const struct tcpstream_addr *client);
	void *ctx;
	void *(*session_open)(void *sink, const struct session_info *s);
	void (*session_identified)(void *sink, void *handle, const struct session_info *s);
	void (*request)(void *sink, void *handle, struct stats_db *db,
			const struct session_request *r);
	void (*session_close)(void *sink, void *handle);
	/* SESSION_EV_SYNC and SESSION_EV_RESYNC of a session with a handle */
	void (*session_event)(void *sink, void *handle, const struct session_info *s,
			      enum session_event ev);
	void *sink;
};

/* Before the first record: want_statement turns session.track_activity on. */
void pipeline_set_hooks(struct pipeline *p, const struct pipeline_hooks *hooks);

/* The answer to want_identity: names the session of flow_id, if it still exists and is
 * still unnamed. Returns true when a session was named. */
bool pipeline_identify(struct pipeline *p, uint64_t flow_id, const char *database, const char *user,
		       uint64_t now_ns);

/* The answer to want_statement: what pg_stat_activity showed for the client's backend. */
enum pipeline_stmt_status {
	PIPELINE_STMT_FOUND = 0,
	PIPELINE_STMT_NOT_FOUND, /* no backend of that client */
	PIPELINE_STMT_FAILED,	 /* the lookup failed */
};

struct pipeline_statement {
	uint64_t flow_id;
	enum pipeline_stmt_status status;
	const char *text; /* FOUND and not truncated: query, len bytes */
	size_t len;
	bool truncated;	       /* it reached track_activity_query_size: cut */
	uint64_t lo_ns, hi_ns; /* capture clock: query_start lies within */
};

/*
 * Applies an answer to want_statement (after every record captured before the lookup
 * was read has been fed): when the window points at one unknown statement of the session
 * (session_attribute) and the text is whole, defines it (session_define_statement). Counts
 * the outcome (stats_statement_recovered/unrecovered). Returns true when defined; false
 * also when the session has ended or stopped waiting.
 */
bool pipeline_statement(struct pipeline *p, const struct pipeline_statement *a);

/* Latest capture timestamp seen in a record (0 before the first). */
uint64_t pipeline_last_ts(const struct pipeline *p);

const struct tcpstream_stats *pipeline_tcp_stats(const struct pipeline *p);
const struct session_stats *pipeline_session_stats(const struct pipeline *p);

/* NULL-safe; call pipeline_close_all first to see sessions end cleanly. */
void pipeline_free(struct pipeline *p);

#endif /* PGSHADOW_PIPELINE_H */
