/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * stats: the agent's numbers and their Prometheus rendering.
 *
 * Threads: the capture thread writes (per-database counters and histograms are C11
 * atomics, relaxed; the capture-health block is published by it every tick); the HTTP
 * thread reads and renders. The database table is append-only: entries are created
 * under a mutex and never freed, so a struct stats_db pointer stays valid for the life
 * of the instance and can be cached per session.
 *
 * Label values are bounded: after max_databases names, new databases fold into
 * "other" (counted in database_overflow).
 */
#ifndef PGSHADOW_STATS_H
#define PGSHADOW_STATS_H

#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "buf.h"
#include "readiness.h"

/* Latency histogram buckets (upper bounds, seconds): log-spaced, 50 µs to 30 s. */
#define STATS_BUCKETS 18
extern const double stats_bucket_bounds[STATS_BUCKETS];

struct stats_histogram {
	_Atomic uint64_t bucket[STATS_BUCKETS + 1]; /* last one: above the largest bound */
	_Atomic uint64_t sum_ns;
};

/* SQLSTATE classes: two characters of [0-9A-Z]; one more slot for a missing code. */
#define STATS_SQLSTATE_CLASSES (36 * 36 + 1)

#define STATS_DB_NAME_MAX 64 /* longer names are cut (labels stay bounded) */

/* Why a request was not replayed (mirror_requests_skipped_total{reason}). */
enum stats_skip_reason {
	STATS_SKIP_UNKNOWN_DATABASE = 0, /* session of database "unknown" */
	STATS_SKIP_NO_PARSE,		 /* Execute whose Parse was never seen */
	STATS_SKIP_FUNCTION_CALL,	 /* FunctionCall: not replayed */
	STATS_SKIP_COPY_TOO_BIG,	 /* COPY data beyond the byte cap */
	STATS_SKIP_SHUTDOWN,		 /* still queued when the agent stopped */
	STATS_SKIP_SESSION_STATE,	 /* the session could not be replayed (e.g. encrypted) */
	STATS_SKIP_WRITE,		 /* mirror_mode = read_only and the request writes */
	STATS_SKIP_READ_ONLY,		 /* read_only: the mirror answered 25006 */
	STATS_SKIP_LEVEL,		 /* filtered out by mirror_level */
	STATS_SKIP_ABORTED,		 /* mirror_aborted = skip: the source rolled it back */
	STATS_SKIP_NO_TRANSACTION,	 /* failed on the source; cannot run in BEGIN..ROLLBACK */
	STATS_SKIP_MAX,
};

extern const char *const stats_skip_reason_names[STATS_SKIP_MAX];

/* Why a request was dropped (mirror_dropped_requests_total{reason}); every drop is also
 * a buffer_full error, the seed's mirror_errors_buffer_full = mirror_requests_dropped. */
enum stats_drop_reason {
	STATS_DROP_BUFFER_FULL = 0, /* its session's queue or the byte budget was full */
	STATS_DROP_UNIT_ABORTED,    /* the rest of a transaction cut by a fault (queue full,
				     * capture gap): its mirror transaction was rolled back */
	STATS_DROP_PARTIAL,	    /* its transaction began before the agent saw it (agent
				     * start, capture gap): it cannot be replayed whole */
	STATS_DROP_POOL_WAIT,	    /* its transaction waited mirror_pool_wait_ms for a
				     * pooled mirror connection and none became free */
	STATS_DROP_MAX,
};

extern const char *const stats_drop_reason_names[STATS_DROP_MAX];

/* Why a mirror transaction was rolled back by the agent (mirror_units_aborted_total). */
enum stats_abort_reason {
	STATS_ABORT_QUEUE_FULL = 0, /* a request of it did not fit in the queue */
	STATS_ABORT_CAPTURE_GAP,    /* the capture lost bytes of its session */
	STATS_ABORT_CONNECTION,	    /* the mirror connection was lost inside it */
	STATS_ABORT_SESSION_END,    /* the source session ended inside it */
	STATS_ABORT_UNREPLAYABLE,   /* a request of it cannot be replayed (no_parse,
				     * function_call, copy_too_big) */
	STATS_ABORT_POOL_WAIT,	    /* no pooled mirror connection within mirror_pool_wait_ms */
	STATS_ABORT_MAX,
};

extern const char *const stats_abort_reason_names[STATS_ABORT_MAX];

/* Why the text of a statement prepared before capture began was not recovered from the
 * source's pg_stat_activity (mirror_statements_unrecovered_total{reason}). */
enum stats_unrecovered_reason {
	STATS_UNRECOVERED_NO_SOURCE_DSN = 0, /* no --source-dsn: once per session and name */
	STATS_UNRECOVERED_NOT_FOUND,	     /* no backend of that client in pg_stat_activity */
	STATS_UNRECOVERED_NO_MATCH,	     /* its query_start matched no Execute of an unknown
					      * statement of the session, or other messages too */
	STATS_UNRECOVERED_TRUNCATED,	     /* cut at track_activity_query_size */
	STATS_UNRECOVERED_TOO_LONG,	     /* longer than max_message_kb */
	STATS_UNRECOVERED_QUERY_FAILED,	     /* the lookup failed (connection, error, timeout,
					      * queue full) */
	STATS_UNRECOVERED_MAX,
};

extern const char *const stats_unrecovered_reason_names[STATS_UNRECOVERED_MAX];

/* Mirror error types (mirror_errors_total{error_type}). */
enum stats_error_type {
	STATS_ERR_CONNECTION = 0,
	STATS_ERR_QUERY,
	STATS_ERR_TIMEOUT,
	STATS_ERR_BUFFER_FULL,
	STATS_ERR_MAX,
};

extern const char *const stats_error_type_names[STATS_ERR_MAX];

/* How a mirror answer differed from the source's (mirror_mismatches_total{kind}). */
enum stats_mismatch_kind {
	STATS_MISMATCH_TAG = 0,	 /* command tag verb */
	STATS_MISMATCH_ROWCOUNT, /* rows affected or returned */
	STATS_MISMATCH_SQLSTATE, /* error code (or one side failed) */
	STATS_MISMATCH_ROWS,	 /* order-insensitive hash of the returned rows */
	STATS_MISMATCH_MAX,
};

extern const char *const stats_mismatch_kind_names[STATS_MISMATCH_MAX];

struct readiness_window;

struct stats_db {
	char name[STATS_DB_NAME_MAX];
	_Atomic uint64_t source_requests;
	_Atomic uint64_t source_errors[STATS_SQLSTATE_CLASSES];
	struct stats_histogram source_latency;
	/* mirror (all counters; windowed latency lives in struct stats under its lock) */
	_Atomic uint64_t mirror_requests; /* mirror_database_requests */
	_Atomic uint64_t mirror_errors;	  /* mirror_database_errors (all error types) */
	_Atomic uint64_t mirror_not_sampled;
	_Atomic uint64_t mirror_skipped[STATS_SKIP_MAX];
	_Atomic uint64_t mirror_compared; /* answers compared with the source's */
	_Atomic uint64_t mirror_mismatches[STATS_MISMATCH_MAX];
	_Atomic uint64_t mirror_mirrored;		       /* successes */
	_Atomic uint64_t mirror_errors_by_type[STATS_ERR_MAX]; /* buffer_full = dropped */
	_Atomic uint64_t mirror_mismatched;		       /* answers with any difference */
	_Atomic uint64_t mirror_dropped[STATS_DROP_MAX];
	struct stats_histogram mirror_latency;
	struct stats_histogram mirrored_source_latency; /* the mirrored requests, on the source */
	struct stats_histogram replay_delay;
	uint64_t win_latency_sum_ns, win_latency_count; /* guarded by the stats lock */
	struct readiness_window *rd; /* its readiness window (stats.c, under win_lock) */
};

/* Capture health, published by the capture thread (each field a running total unless
 * marked as a gauge). */
struct stats_capture {
	_Atomic uint64_t packets, bytes, records, ringbuf_drops, truncated, copy_errors;
	_Atomic uint64_t stream_gaps, gap_bytes, resyncs;
	/* loss and reordering on the path (mirror_capture_irregular_segments_total{kind}) */
	_Atomic uint64_t dup_segments, ooo_segments;
	_Atomic uint64_t sessions_active; /* gauge */
	_Atomic uint64_t flows_active;	  /* gauge */
	_Atomic uint64_t encrypted_sessions, replication_sessions;
	/* --tls on: sessions decoded through the probes; postmasters probed (gauge); the
	 * plaintext records and bytes the probes reported, and those lost before the backend's
	 * connection was known */
	_Atomic uint64_t tls_sessions, tls_probed_servers, tls_calls, tls_bytes, tls_unmapped;
	/* encrypted sessions not decoded (mirror_capture_undecoded_sessions_total{reason}) */
	_Atomic uint64_t undecoded_tls_off, undecoded_no_probe, undecoded_no_plaintext,
	    undecoded_gss;
	/* caps hit (mirror_capture_limit_hits_total{limit}) */
	_Atomic uint64_t flows_refused, flow_buffer_full, hole_timeouts, statements_evicted,
	    inflight_overflow, bodies_too_big, decode_buffer_full, abandoned_requests,
	    unmatched_responses, portals_evicted, copy_truncated;
	/* what the decoders could not read (mirror_capture_malformed_total{kind}) */
	_Atomic uint64_t bad_lengths, protocol_errors, skipped_bytes;
};

/* Process figures gathered by the shell at scrape time. */
struct stats_process {
	double cpu_seconds;
	uint64_t resident_bytes, virtual_bytes;
	uint64_t open_fds, max_fds;
	double start_time_seconds;
};

struct stats_config {
	uint32_t max_databases;	    /* distinct database labels before "other" */
	uint64_t reset_interval_ns; /* window of the windowed mirror gauges (3600 s) */
	uint64_t start_ns;	    /* CLOCK_MONOTONIC at agent start */
	bool mirror_enabled;	    /* render the mirror metrics (--mirror given) */
};

/* A consistent copy of the global mirror numbers (for rendering and readiness). */
/* The pooled mirror connections, all pools together (replay thread). */
enum stats_pool_state {
	STATS_POOL_IN_USE = 0, /* borrowed by a session */
	STATS_POOL_IDLE,       /* in a pool, free */
	STATS_POOL_PINNED,     /* kept by one session until it ends (of in_use) */
	STATS_POOL_CONNECTING, /* being made for a session (of in_use) */
	STATS_POOL_STATE_MAX,
};

extern const char *const stats_pool_state_names[STATS_POOL_STATE_MAX];

struct stats_pool {
	uint64_t connections[STATS_POOL_STATE_MAX];
	uint64_t waiting; /* sessions waiting for a connection */
	uint64_t peak;	  /* most mirror connections at once */
};

struct stats_mirror_snapshot {
	uint64_t total, mirrored, dropped, not_sampled, skipped, in_flight;
	uint64_t errors[STATS_ERR_MAX];
	uint64_t consecutive_errors;
	uint64_t consecutive_successes;
	double latency_avg_ms, latency_max_ms; /* current window */
	double last_success_seconds_ago;       /* -1 before the first success */
	uint64_t order_waits;
	uint64_t pipelined, converted; /* sent behind another; simple queries sent extended */
	uint64_t raised;	       /* not run: the source's concurrency error raised */
	uint64_t answers_kernel_timed, answers_read_timed; /* mirror latency's end clock */
	uint64_t compared, mismatched;	 /* answers compared; those with any difference */
	unsigned int buffer_utilization; /* 0-100 */
	uint64_t lock_waits;		 /* of order_waits, for lock order */
	uint64_t order_timeouts;	 /* waits given up (order not kept) */
	uint64_t queue_bytes, queue_bytes_peak;
	uint64_t aborted[STATS_ABORT_MAX];
	struct stats_pool pool;
};

struct stats *stats_new(const struct stats_config *cfg);
void stats_free(struct stats *st);

/* Returns the entry for a database name, creating it; "other" beyond the cap. Never
 * NULL (falls back to "other" on ENOMEM too). Takes the table mutex: cache the result. */
struct stats_db *stats_db(struct stats *st, const char *name);

/* One request the source completed. sqlstate: "" when it succeeded. Called from one
 * thread only (the capture thread): its counters are written without locked
 * instructions. */
void stats_source_request(struct stats_db *db, uint64_t latency_ns, bool error,
			  const char *sqlstate);

void stats_histogram_observe(struct stats_histogram *h, uint64_t ns);

/* The capture-health block, written by the capture thread. */
struct stats_capture *stats_capture(struct stats *st);

/* Databases folded into "other" so far. */
uint64_t stats_database_overflow(const struct stats *st);

/* The resolver's and the fingerprint cache's counters, published by the capture thread's
 * tick (their owners keep them unlocked or under their own lock); rendered once set. */
enum {
	STATS_RESOLVER_RESOLVED = 0,
	STATS_RESOLVER_NOT_FOUND,
	STATS_RESOLVER_QUEUE_FULL,
	STATS_RESOLVER_QUERIES,
	STATS_RESOLVER_QUERY_ERRORS,
	STATS_RESOLVER_RECONNECTS,
	STATS_RESOLVER_MAX,
};
enum {
	STATS_FP_HITS = 0,
	STATS_FP_MISSES,
	STATS_FP_EVICTIONS,
	STATS_FP_PARSE_ERRORS,
	STATS_FP_TOO_DEEP,
	STATS_FP_MAX,
};
void stats_set_resolver(struct stats *st, const uint64_t v[STATS_RESOLVER_MAX]);
void stats_set_fingerprint(struct stats *st, const uint64_t v[STATS_FP_MAX]);

/*
 * The per-statement comparison's figures (querystats.h), asked for at each scrape: fills
 * v (entries, evictions, calls of texts that did not parse) and, per database with
 * statements, its name (up to 63 bytes) and regressed statements, up to cap; returns how
 * many databases it filled. Called on the scraping thread; must be thread-safe.
 */
enum { STATS_QS_ENTRIES = 0, STATS_QS_EVICTIONS, STATS_QS_UNPARSED, STATS_QS_MAX };
typedef size_t (*stats_queries_fn)(void *ctx, uint64_t v[STATS_QS_MAX], char (*names)[64],
				   uint64_t *regressed, size_t cap);
void stats_set_queries(struct stats *st, stats_queries_fn fn, void *ctx);

/* A cap reached (mirror_capture_limit_hits_total{limit} > 0) not yet named: its name and
 * what reaching it means, once per cap in the stats' life; false when none is left.
 * One thread (the capture thread's tick). */
bool stats_limit_first_hit(struct stats *st, const char **name, const char **meaning);

/*
 * Mirror outcomes. stats_mirror_request counts a request in mirror_requests_total (at
 * source completion); each such request later gets exactly one of not_sampled, skipped,
 * dropped (= buffer_full error), success, or error (connection/query/timeout). now_ns
 * is CLOCK_MONOTONIC. Any thread.
 */
void stats_mirror_request(struct stats *st, struct stats_db *db);
void stats_mirror_not_sampled(struct stats *st, struct stats_db *db);
void stats_mirror_skipped(struct stats *st, struct stats_db *db, enum stats_skip_reason why);
void stats_mirror_dropped(struct stats *st, struct stats_db *db, uint64_t now_ns);
void stats_mirror_dropped_why(struct stats *st, struct stats_db *db, enum stats_drop_reason why,
			      uint64_t now_ns);
/* The agent rolled a mirror transaction back (its source transaction was not replayed
 * whole). */
void stats_mirror_unit_aborted(struct stats *st, enum stats_abort_reason why);
/* The pools' gauges, published by the replay thread. */
void stats_mirror_set_pool(struct stats *st, const struct stats_pool *p);
/* Bytes of requests waiting for the mirror (all sessions), and their peak. */
void stats_mirror_set_queue_bytes(struct stats *st, uint64_t bytes, uint64_t peak);
/* source_latency_ns: the same request's latency on the source (readiness compares the
 * two over the same requests). */
void stats_mirror_success(struct stats *st, struct stats_db *db, uint64_t latency_ns,
			  uint64_t source_latency_ns, uint64_t delay_ns, uint64_t now_ns);
/* One mirrored answer compared with the source's: kinds is a bit mask of
 * (1 << enum stats_mismatch_kind), 0 when they agreed. */
void stats_mirror_compared(struct stats *st, struct stats_db *db, unsigned int kinds);
void stats_mirror_error(struct stats *st, struct stats_db *db, enum stats_error_type type,
			uint64_t now_ns);
void stats_mirror_order_wait(struct stats *st);
/* Of those, a wait for lock order (order.h rule 2); a wait given up at its bound. */
void stats_mirror_lock_wait(struct stats *st);
void stats_mirror_order_timeout(struct stats *st);
/* A request sent in pipeline mode for a backlog: behind another in flight on its mirror
 * connection (or the first of the pipeline); converted: a simple-protocol query sent as an
 * unnamed extended-protocol statement. */
void stats_mirror_piped(struct stats *st, bool behind, bool converted);
/* A request the source failed for its concurrency, raised on the mirror instead of run. */
void stats_mirror_raised(struct stats *st);
/* A mirror answer timed by the kernel's receive time (kernel) or at the replay's read. */
void stats_mirror_answer_clock(struct stats *st, bool kernel);
void stats_mirror_set_buffer_utilization(struct stats *st, unsigned int percent);
/* A statement prepared before capture: its text recovered and defined, or one lookup (or,
 * without --source-dsn, one statement of one session) that did not recover it. Capture
 * thread. */
void stats_statement_recovered(struct stats *st);
void stats_statement_unrecovered(struct stats *st, enum stats_unrecovered_reason why);

/* Snapshot of the global mirror numbers at now_ns (rolls the window if it expired). */
void stats_mirror_snapshot(struct stats *st, uint64_t now_ns, struct stats_mirror_snapshot *out);

/* Appends the Prometheus text exposition (format 0.0.4) of everything to out. */
bool stats_render(struct stats *st, const struct stats_process *proc, const char *version,
		  uint64_t now_ns, struct buf *out);

/* Index of a SQLSTATE's class in source_errors (the last slot when it is malformed). */
unsigned int stats_sqlstate_class(const char *sqlstate);

/*
 * Readiness. The readiness window starts at cfg->start_ns and restarts at
 * stats_readiness_reset (RESET MIRROR STATS); inside it stats keeps the outcome counts,
 * the run of successes (broken by connection, query and timeout errors; drops are
 * judged by coverage instead), and histograms of the mirror latency and of the source
 * latency of the same mirrored requests. The monotonic counters are never touched.
 * Any thread.
 */
void stats_readiness_reset(struct stats *st, uint64_t now_ns);

/* The readiness window as a state file keeps it (statefile.h): what it has counted,
 * since it started, however many agent runs ago. */
struct stats_readiness_state {
	uint64_t runtime_ns; /* its age, counting only the time an agent observed */
	uint64_t total, not_sampled, compared, mismatched, mirrored;
	uint64_t errors[STATS_ERR_MAX];
	uint64_t streak;
	uint64_t mirror_hist[STATS_BUCKETS + 1], source_hist[STATS_BUCKETS + 1];
	uint64_t mirror_sum_ns, source_sum_ns, mirror_max_ns, source_max_ns;
};

/* The window at now_ns, for saving. Any thread. */
void stats_readiness_save(struct stats *st, uint64_t now_ns, struct stats_readiness_state *out);

/* Continues a saved window: it restarts at now_ns carrying what s counted (and its age).
 * The monotonic counters are not touched. Any thread. */
void stats_readiness_restore(struct stats *st, uint64_t now_ns,
			     const struct stats_readiness_state *s);

/* Fills in from the readiness window at now_ns (p99 from the window's histograms, see
 * stats_quantile_ms; NaN latencies when nothing was mirrored). */
void stats_readiness_input(struct stats *st, uint64_t now_ns, struct readiness_input *in);

/* The same for one database: its own counts, streak and histograms since the window
 * started (or since the database first appeared), the window's runtime. A window carried
 * from a state file carries the total only: the databases' own start with the agent.
 * -ENOENT when no such database has been seen. */
int stats_readiness_input_db(struct stats *st, const char *database, uint64_t now_ns,
			     struct readiness_input *in);

/* The alert inputs at now_ns: the current run of errors (drops included, as
 * mirror_consecutive_errors) and the mirror p99 over the current reset interval (rolls
 * the window when it expired; NaN when it has no sample yet). */
void stats_alert_input(struct stats *st, uint64_t now_ns, struct readiness_alert_input *in);

/* The last evaluated verdict and alert states, rendered (when mirror_enabled) as
 * mirror_readiness_ready, mirror_readiness_confidence_score and
 * mirror_alert_active{alert}. All 0 until first set. Any thread. */
void stats_set_readiness(struct stats *st, bool ready, double score);
void stats_set_alert(struct stats *st, enum readiness_alert a, bool active);

/*
 * The q-quantile (0..1), in milliseconds, of a histogram's bucket counts (the
 * STATS_BUCKETS bounds, then the overflow bucket); NaN when it is empty. Interpolated
 * linearly inside the bucket holding rank q x count, between its lower and upper bound
 * (as Prometheus' histogram_quantile does), so the error is at most the bucket's width.
 * max_ns, when not 0, is the largest observation: it tops the overflow bucket (else the
 * result there is the largest bound, 30 s) and caps the result.
 */
double stats_quantile_ms(const uint64_t bucket[STATS_BUCKETS + 1], double q, uint64_t max_ns);

/* One database's numbers since the agent started (monotonic counters), for the admin
 * console (SHOW MIRROR STATS, SHOW MIRRORS). Latencies in ms; NaN without samples. */
struct stats_db_row {
	char name[STATS_DB_NAME_MAX];
	uint64_t source_requests; /* everything the source completed */
	uint64_t requests;	  /* submitted for mirroring (mirror_database_requests) */
	uint64_t mirrored, not_sampled, skipped, dropped;
	uint64_t errors[STATS_ERR_MAX]; /* errors[STATS_ERR_BUFFER_FULL] == dropped */
	uint64_t in_flight;		/* requests minus every outcome: queued or running */
	uint64_t compared, mismatched;
	double source_avg_ms, source_p99_ms; /* the mirrored requests, on the source */
	double mirror_avg_ms, mirror_p99_ms;
};

/* Copies up to cap databases' rows ("other" last, when used) into out; returns how many
 * databases there are (more than cap: call again with room for that many). */
size_t stats_db_rows(struct stats *st, struct stats_db_row *out, size_t cap);

#endif /* PGSHADOW_STATS_H */
