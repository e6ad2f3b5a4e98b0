/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * replay: the mirror. Replays completed source requests to the mirror cluster through
 * libpq, one mirror connection per mirrored source session, in causal order, on its own
 * thread (an epoll loop over non-blocking libpq sockets). A shell: it touches sockets.
 *
 * Threads. The capture thread calls replay_session_open / replay_submit /
 * replay_session_close; they never block and never wait for the mirror: they copy the
 * request into an item and pass it to the replay thread through a lock-free
 * single-producer list (an eventfd wakes the replay thread). Per-session queue fill is an
 * atomic the capture thread reads to drop items when a session already has `queue` items
 * waiting (counted as dropped = buffer_full); items are also dropped beyond 65536 or
 * 256 MiB waiting in all. The replay thread owns every mirror connection.
 *
 * Outcomes. Every request submitted for a mirrored session is counted once in
 * stats (mirror_requests_total) at submit and ends in exactly one outcome: skipped (with
 * a reason), dropped, mirrored, or an error (connection, query, timeout); until then it
 * is in flight.
 *
 * Replay. Query -> PQsendQuery (COPY FROM STDIN data through PQputCopyData). Execute
 * of the unnamed statement -> PQsendQueryParams; of a named one -> PQsendPrepare the
 * first time that name is needed on that mirror connection (from the captured Parse
 * text and types), then PQsendQueryPrepared; in libpq pipeline mode, each Execute ending
 * in PQpipelineSync. Parameter types, values, lengths and formats are the captured ones.
 * FunctionCall, an Execute whose Parse was never seen, and sessions of database
 * "unknown" are skipped with a reason.
 *
 * Causal order. Items are submitted at source completion. An item B does not start on
 * the mirror before every item submitted earlier whose source completion precedes B's
 * source start has completed on the mirror; a wait longer than order_wait_ms is given up
 * (the item proceeds) and every wait is counted (mirror_replay_order_waits_total).
 *
 * Faults. statement_timeout = timeout_ms on every mirror session (57014 counts as a
 * timeout). A connection that cannot be made or is lost counts its items as connection
 * errors and is retried with capped exponential backoff. Nothing here can stall the
 * capture thread.
 */
#ifndef PGSHADOW_REPLAY_H
#define PGSHADOW_REPLAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "capture.h"
#include "explain.h"
#include "sampler.h" /* the policy enums and struct replay_db_map */
#include "session.h"
#include "querystats.h"
#include "stats.h"

struct replay_config {
	const char *mirror;	       /* libpq conninfo or URI (mirror_of); dbname is replaced */
	uint32_t queue;		       /* a transaction is admitted while fewer requests of its
					* session wait (mirror_queue, default 1000) */
	uint64_t queue_bytes;	       /* bytes of requests waiting, all sessions (mirror_queue_mb,
					* default 64 MiB) */
	const char *compare_ignore;    /* mirror_compare_ignore: fingerprints (hex), comma-
					* separated, whose answers are not compared */
	uint32_t pipeline;	       /* items in flight per connection (mirror_pipeline, 16) */
	uint32_t max_connections;      /* mirror connections at once (default 100) */
	uint32_t pool_wait_ms;	       /* longest wait for a pooled connection (5000) */
	int nice;		       /* the replay thread's nice value (0: unchanged) */
	uint32_t timeout_ms;	       /* mirror statement_timeout (default 30000) */
	bool set_role;		       /* SET ROLE to the source user after connecting */
	uint32_t order_wait_ms;	       /* longest causal-order wait (default 1000) */
	uint32_t backoff_max_ms;       /* reconnect backoff cap (default 30000) */
	uint16_t capture_port;	       /* mirror connections to this port are excluded
					* (default 5432: set it to the captured port) */
	double exposure;	       /* mirror_exposure 0.0-1.0 (default 1.0) */
	enum replay_sampling sampling; /* mirror_sampling (default transaction) */
	enum replay_aborted aborted;   /* mirror_aborted (default replay) */
	enum replay_level level;       /* mirror_level (default all) */
	bool replay_timing;	       /* mirror_replay_timing (default off) */
	enum replay_mode mode;	       /* mirror_mode (default all) */
	enum replay_compare compare;   /* mirror_compare (default status) */
	uint32_t log_mismatches;       /* log the first N mismatches (default 0) */
	const struct replay_db_map *databases; /* [databases]; copied by replay_start */
	size_t n_databases;
	uint32_t max_query_stats; /* statements compared one by one (querystats.h); 0: none */
};

void replay_config_default(struct replay_config *cfg);

/* Starts the replay thread. Returns NULL with a one-line reason in err (a bad or empty
 * conninfo is reported here; an unreachable mirror is not fatal: it is counted and
 * retried). st and cap (may be NULL: nothing is excluded) must outlive it. */
struct replay *replay_start(const struct replay_config *cfg, struct stats *st, struct capture *cap,
			    char *err, size_t errlen);

/* Changes the exposure at run time (SIGHUP): db NULL sets the global one, else that
 * database's own (< 0 returns it to the global one). Any thread. */
void replay_set_exposure(struct replay *r, const char *db, double exposure);

/*
 * The per-statement comparison (querystats.h), judged with thresholds th (the reloadable
 * mirror_min_statement_calls, mirror_max_p99_ratio, mirror_latency_floor_ms). Any thread;
 * each takes the table's lock for one scan. NULL-safe (nothing: 0).
 */
size_t replay_query_rows(struct replay *r, const struct querystats_config *th, const char *database,
			 enum querystats_sort sort, struct querystats_row *out, size_t cap);
/* Regressed statements per database: up to cap (names, counts); returns how many. */
size_t replay_query_regressed(struct replay *r, const struct querystats_config *th,
			      char (*names)[QUERYSTATS_DB_MAX], uint64_t *counts, size_t cap);
uint64_t replay_query_regressed_total(struct replay *r, const struct querystats_config *th,
				      const char *database);
void replay_query_counts(struct replay *r, struct querystats_counts *out);
/* Keeps a statement's mirror plan (explain.h). */
void replay_query_set_plan(struct replay *r, const char *database, uint64_t fingerprint,
			   const char *plan);
/* Hands the next executions of statements ex wants to it (NULL: none). Any thread. */
void replay_set_explain(struct replay *r, struct explain *ex);
/* RESET MIRROR STATS forgets them. */
void replay_query_reset(struct replay *r);

/* Wakes the replay thread for what the capture thread submitted since the last call
 * (sessions, requests, closes are posted without a system call). Call it from the capture
 * thread after each batch of records; NULL-safe. */
void replay_wake(struct replay *r);

struct fingerprint_stats;

/* The classification cache's counters (hits, misses, ...). The capture thread (the
 * cache's owner). */
void replay_fingerprint_stats(const struct replay *r, struct fingerprint_stats *out);

/* Changes mirror_log_mismatches at run time (SIGHUP). Any thread. */
void replay_set_log_mismatches(struct replay *r, uint32_t n);

/* One mirrored session, for SHOW MIRROR SESSIONS. */
struct replay_session_row {
	uint64_t id; /* the source connection's flow id */
	char database[64], user[64];
	const char *state; /* idle, connecting, setup, ready, busy, backoff, waiting */
	uint32_t queued;   /* items waiting or in flight */
	uint64_t mirrored, errors, dropped, skipped;
};

/* Copies up to cap sessions into out; returns how many there are (call again with a
 * larger array when that exceeds cap). Any thread (takes the session list's lock). */
size_t replay_sessions(struct replay *r, struct replay_session_row *out, size_t cap);

/* One pool of mirror connections (SHOW MIRROR POOLS, PgBouncer's SHOW POOLS columns). */
struct replay_pool_row {
	char database[64], user[64], application_name[64];
	uint32_t cl_active;  /* sessions holding one of its connections */
	uint32_t cl_waiting; /* sessions waiting for one */
	uint32_t sv_active;  /* connections borrowed and made */
	uint32_t sv_idle;    /* free */
	uint32_t sv_login;   /* being made */
	uint32_t sv_pinned;  /* kept by one session to its end */
	uint64_t maxwait_ms; /* how long its first waiter has waited */
};

/* Fills up to cap rows; returns how many pools there are (any thread). */
size_t replay_pools(struct replay *r, struct replay_pool_row *out, size_t cap);

/* A source session (capture thread). Returns the replay's handle for it, or NULL when
 * it is not mirrored (encrypted, replication or cancel sessions; ENOMEM): its items are
 * then counted as skipped by replay_submit. The handle stays valid until
 * replay_session_close or replay_stop, whichever comes first. */
struct replay_session *replay_session_open(struct replay *r, const struct session_info *s);

/* The session's database/user became known (session_identify, StartupMessage seen). */
void replay_session_identified(struct replay *r, struct replay_session *rs,
			       const struct session_info *s);

/* One completed source request (capture thread). db is the request's stats entry. */
void replay_submit(struct replay *r, struct replay_session *rs, struct stats_db *db,
		   const struct session_request *req);

/* SESSION_EV_SYNC (a Sync answered: an open Sync group may commit) and SESSION_EV_RESYNC
 * (bytes were lost: a transaction in progress is cut) of a session (capture thread). */
void replay_session_event(struct replay *r, struct replay_session *rs, const struct session_info *s,
			  enum session_event ev);

/* The source session ended; its mirror connection is closed after its queue drains. */
void replay_session_close(struct replay *r, struct replay_session *rs);

/* Stops the thread, closes every mirror connection, frees. NULL-safe. Items still
 * queued or in flight are counted as skipped (reason "shutdown"). Call it after the
 * capture thread's last call into replay: it also frees the handles of sessions that
 * were never closed, so no handle may be used afterwards. */
void replay_stop(struct replay *r);

#endif /* PGSHADOW_REPLAY_H */
