/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * session: what one captured PostgreSQL connection is doing. Consumes the messages of
 * pgwire and turns them into sessions (database, user, startup settings, prepared
 * statements, portals, transaction status) and completed requests with their source
 * timings and outcomes — the one narrow interface later stages (stats, replay) consume.
 *
 * A request is one simple Query ('Q'), one Execute ('E', with the Parse/Bind before
 * it), or one FunctionCall ('F'). COPY FROM STDIN data belongs to the request that
 * started it. Latency runs from the capture time of the first byte of the client
 * message that started the request to the capture time of the last byte of the server
 * message that completed it: CommandComplete / EmptyQueryResponse / ErrorResponse /
 * PortalSuspended for an Execute, ReadyForQuery for a Query or FunctionCall.
 *
 * Pure: no sockets, threads or clocks. Owned by the capture thread.
 */
#ifndef PGSHADOW_SESSION_H
#define PGSHADOW_SESSION_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pgwire.h"

#define SESSION_UNKNOWN "unknown" /* database/user of a session whose start was missed */

enum session_req_kind {
	SESSION_REQ_QUERY = 0, /* simple query protocol */
	SESSION_REQ_EXECUTE,   /* extended protocol */
	SESSION_REQ_FUNCTION,  /* FunctionCall */
};

/* A completed request: everything needed to replay it and its outcome on the source.
 * Pointers are valid only during the callback; a consumer copies what it keeps. */
struct session_request {
	enum session_req_kind kind;
	uint64_t ts_start; /* capture time, first byte of the starting client message: the
			    * Query / FunctionCall, or for an Execute the first Parse, Bind
			    * or Describe sent since the previous Execute or Sync (the batch
			    * that prepared it), else the Execute itself */
	uint64_t ts_end;   /* capture time, last byte of the completing server message */

	/* What was asked. text: the Query's text, or the text of the Parse of the executed
	 * statement; NULL when that Parse was never seen (prepared before capture began,
	 * evicted at max_statements, closed) or was longer than max_body. NUL-terminated at
	 * text_len. */
	const char *text;
	size_t text_len;
	const char *stmt_name; /* Execute: statement name ("" = unnamed); else NULL */
	const char *portal;    /* Execute: portal name; else NULL */
	uint16_t n_param_types;
	const uint32_t *param_types; /* OIDs from Parse (0 = unspecified) */
	uint16_t n_param_formats;
	const int16_t *param_formats; /* from Bind: 0 text, 1 binary (0 or 1 entry = all) */
	uint16_t n_params;
	const int32_t *param_lengths;	    /* -1 = NULL */
	const uint8_t *const *param_values; /* each param_lengths[i] bytes */
	uint16_t n_result_formats;
	const int16_t *result_formats;
	uint32_t function_oid;	  /* FunctionCall: the function called; else 0 */
	uint32_t max_rows;	  /* Execute's row limit (0 = all) */
	uint64_t sync_group;	  /* Executes before the same Sync share it (implicit txn) */
	bool group_more;	  /* Execute: the client sent another Execute before the Sync
				   * of this one (known when it completed; false if not yet) */
	bool group_end;		  /* Execute: the client's Sync came right after it (seen when
				   * it completed): the last Execute of its Sync group. False
				   * when not known yet: SESSION_EV_SYNC then tells */
	const uint8_t *copy_data; /* COPY FROM STDIN payload (CopyData bodies joined) */
	size_t copy_len;
	bool copy_truncated; /* more than max_copy_bytes: copy_data holds only a prefix */

	/* What the source answered. */
	char tag[64];	    /* last CommandComplete tag ("SELECT 3"), "" if none */
	uint64_t rows;	    /* row count of that tag (INSERT/UPDATE/DELETE/SELECT/MOVE/FETCH/
			     * COPY/MERGE), else the DataRows of its statement; without any
			     * tag (PortalSuspended, error) the DataRows seen */
	uint64_t datarows;  /* DataRow messages seen */
	uint32_t commands;  /* CommandCompletes (a multi-statement Query has several) */
	bool empty;	    /* EmptyQueryResponse */
	bool suspended;	    /* PortalSuspended (row limit reached) */
	bool error;	    /* an ErrorResponse ended it (an Execute also takes the error of
			     * the Parse/Bind/Describe of its batch: it never ran) */
	char sqlstate[6];   /* of the (first) ErrorResponse, "" if none or malformed */
	char txn_status;    /* 'I', 'T' or 'E' from the ReadyForQuery that completed a Query
			     * or FunctionCall; 0 for an Execute */
	char txn_before;    /* 'I', 'T' or 'E' from the last ReadyForQuery before the one that
			     * completes it (for an Execute: the last one seen when it
			     * completed); 0 before the first */
	uint64_t rows_hash; /* keep_datarows: sum of XXH3 hashes of the DataRow bodies */
	bool rows_unhashed; /* keep_datarows: a DataRow body was too long to hash */
};

struct session_param {
	const char *name;
	const char *value;
};

enum session_state {
	SESSION_STARTUP = 0, /* before the StartupMessage was answered */
	SESSION_READY,	     /* decoding requests */
	SESSION_HUNTING,     /* lost boundaries, resynchronising */
	SESSION_ENCRYPTED,   /* SSL/GSS accepted: not decoded */
	SESSION_REPLICATION, /* replication connection: not decoded */
	SESSION_CANCEL,	     /* a CancelRequest connection */
};

/* What a consumer sees of a session. Strings are owned by the session. */
struct session_info {
	uint64_t id;	      /* the tcpstream flow id */
	const char *database; /* SESSION_UNKNOWN until known */
	const char *user;
	const char *application_name;	    /* "" if not given */
	const struct session_param *params; /* every StartupMessage parameter */
	uint16_t n_params;
	enum session_state state;
	bool resynced;	 /* its start was missed or it lost boundaries once */
	char txn_status; /* from the last ReadyForQuery; 0 before the first */
	char encryption; /* SESSION_ENCRYPTED: 'S' (TLS) or 'G' (GSS); else 0 */
	void *user_ptr;	 /* the consumer's own per-session pointer */
};

enum session_event {
	SESSION_EV_OPEN,	/* session created (database may be unknown) */
	SESSION_EV_IDENTIFIED,	/* database/user became known (StartupMessage) */
	SESSION_EV_RESYNC,	/* requests can be matched to answers again after a gap, a
				 * missed start or an answer that fit nothing (the session
				 * waits for a point where nothing can be outstanding) */
	SESSION_EV_ENCRYPTED,	/* SSL/GSS accepted by the server */
	SESSION_EV_REPLICATION, /* a replication connection (never decoded) */
	SESSION_EV_SYNC,	/* the ReadyForQuery answering a Sync (extended protocol): the
				 * Sync group's implicit transaction, if any, ended; txn_status
				 * is its status */
	SESSION_EV_CLOSE,	/* the connection ended */
};

/* Callbacks run inside session_feed/session_gap/session_identify/session_free; they may
 * read and change session_info (user_ptr) and call session_unknown_first/_due, but must
 * not feed or free the session. */
struct session_handler {
	void (*request)(void *ctx, struct session_info *s, const struct session_request *r);
	void (*event)(void *ctx, struct session_info *s, enum session_event ev, uint64_t ts_ns);
};

struct session_config {
	struct pgwire_config wire;
	uint32_t max_statements; /* prepared statements remembered per session */
	uint32_t max_portals;	 /* portals per session */
	uint32_t max_inflight;	 /* requests awaiting their answer per session */
	uint32_t max_copy_bytes; /* COPY FROM STDIN bytes kept per request */
	bool track_activity;	 /* remember when the server may have processed each message
				  * that sets pg_stat_activity.query, for session_attribute
				  * (--source-dsn); only in sessions whose start was missed or
				  * that lost their boundaries (where unknown statements occur) */
};

/* Counters summed over all sessions of one owner; every cap has one. */
struct session_stats {
	uint64_t sessions_opened;
	uint64_t sessions_active;
	uint64_t requests;
	uint64_t resyncs;
	uint64_t encrypted;
	uint64_t replication;
	uint64_t statements_evicted;  /* max_statements reached */
	uint64_t inflight_overflow;   /* max_inflight reached: request not timed */
	uint64_t unmatched_responses; /* server answers with no request to match */
	uint64_t protocol_errors;     /* messages that failed validation */
	uint64_t abandoned;	      /* requests never completed: in flight when their session
				       * ended or lost boundaries, or skipped by the server
				       * after an error earlier in their pipeline */
	uint64_t portals_evicted;     /* max_portals reached */
	uint64_t copy_truncated;      /* COPY FROM STDIN requests beyond max_copy_bytes */
	struct pgwire_stats wire;     /* the decoders' counters, summed over sessions */
};

void session_config_default(struct session_config *cfg);

/*
 * Creates the state for one connection (flow id, whether its first bytes will be
 * seen). Reports SESSION_EV_OPEN. Returns NULL on ENOMEM. stats is the owner's shared
 * counter block (not thread-safe, the capture thread owns it).
 */
struct session *session_new(const struct session_config *cfg, const struct session_handler *h,
			    void *ctx, struct session_stats *stats, uint64_t id, bool from_start,
			    uint64_t ts_ns);

/* Feeds reassembled bytes / a gap of one direction (from tcpstream). */
void session_feed(struct session *s, enum pgwire_dir dir, const uint8_t *data, size_t len,
		  uint64_t ts_ns);
void session_gap(struct session *s, enum pgwire_dir dir, uint64_t ts_ns);

/*
 * The session's bytes come from elsewhere from now on (the plaintext of a TLS session,
 * read through the server's libssl, instead of its TCP payload): decoding starts over,
 * from the StartupMessage when from_start (the session's SSLRequest was seen), else by
 * hunting for boundaries as for a session caught mid-way. What was in flight is abandoned,
 * the statements and portals decoded so far are forgotten. Database, user and the handle
 * stay; the StartupMessage read from the new bytes names the session as usual.
 */
void session_restart(struct session *s, bool from_start, uint64_t ts_ns);

/* Sets database and user of a session whose start was missed (resolved elsewhere,
 * e.g. pg_stat_activity); reports SESSION_EV_IDENTIFIED. Ignored if already known. */
void session_identify(struct session *s, const char *database, const char *user, uint64_t ts_ns);

struct session_info *session_info(struct session *s);

/*
 * Statements prepared before capture began. An Execute of a named statement whose Parse
 * was never seen is reported with text NULL and stmt_name set (an "unknown statement").
 * Its text can be found elsewhere — in the source's pg_stat_activity, whose query and
 * query_start are those of the last Parse, Bind, Execute or Query the server processed.
 * The session remembers, per unknown name, what the consumer needs to ask for it (at most
 * SESSION_UNKNOWN_NAMES names, least recently used forgotten; names of 256 bytes or more
 * are not remembered), and, with track_activity,
 * when the server may have processed each such message (the last SESSION_ACTIVITY_MAX,
 * plus those still awaiting their answer), so that a query_start can be attributed.
 */
#define SESSION_UNKNOWN_NAMES 8
#define SESSION_ACTIVITY_MAX  64

/*
 * Defines a named statement as if its Parse had been seen: the text known, no parameter
 * types (all unspecified). Only when no statement of that name is known — what a real
 * Parse defined is never overwritten — and within max_body (text) and max_statements (the
 * least recently used one is evicted, as for a Parse). Returns true when defined. Later
 * Binds of that name carry the text; portals bound before do not.
 */
bool session_define_statement(struct session *s, const char *name, const char *text, size_t len);

/* True the first time the consumer reports name as an unknown statement of s (to count
 * such statements once per session and name). */
bool session_unknown_first(struct session *s, const char *name);

/* Whether a lookup of name's text is due at now_ns: true (and now_ns recorded as the last
 * lookup) when none was asked for the last interval_ns. */
bool session_unknown_due(struct session *s, const char *name, uint64_t now_ns,
			 uint64_t interval_ns);

/* Makes every unknown name of s due again (a lookup that found one statement's text
 * says nothing about the others'). */
void session_unknown_rearm(struct session *s);

/*
 * Which unknown statement set pg_stat_activity.query at a time known to lie within
 * [lo_ns, hi_ns] (capture clock)? Returns its name (owned by the session, valid until the
 * next call that feeds or changes it) when every message of s that sets the query text
 * and may have been processed then — between its capture and that of its answer, or
 * since its capture when unanswered — runs that one unknown statement; NULL when none
 * does, when others may have too, or when the session cannot tell (no track_activity,
 * boundaries lost since, or the messages of that time forgotten).
 */
const char *session_attribute(const struct session *s, uint64_t lo_ns, uint64_t hi_ns);

/* Reports SESSION_EV_CLOSE and frees. Requests still awaiting their answer never
 * completed: they are counted in stats->abandoned, not reported. NULL-safe. */
void session_free(struct session *s, uint64_t ts_ns);

#endif /* PGSHADOW_SESSION_H */
