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

struct stats_db {
	char name[STATS_DB_NAME_MAX];
	_Atomic uint64_t source_requests;
	_Atomic uint64_t source_errors[STATS_SQLSTATE_CLASSES];
	struct stats_histogram source_latency;
};

/* Capture health, published by the capture thread (each field a running total unless
 * marked as a gauge). */
struct stats_capture {
	_Atomic uint64_t packets, bytes, records, ringbuf_drops, truncated, copy_errors;
	_Atomic uint64_t stream_gaps, gap_bytes, resyncs;
	_Atomic uint64_t sessions_active; /* gauge */
	_Atomic uint64_t flows_active;	  /* gauge */
	_Atomic uint64_t encrypted_sessions, replication_sessions;
	/* caps hit (mirror_capture_limit_hits_total{limit}) */
	_Atomic uint64_t flows_refused, flow_buffer_full, hole_timeouts, statements_evicted,
		inflight_overflow, bodies_too_big, abandoned_requests, unmatched_responses;
};

/* Process figures gathered by the shell at scrape time. */
struct stats_process {
	double cpu_seconds;
	uint64_t resident_bytes, virtual_bytes;
	uint64_t open_fds, max_fds;
	double start_time_seconds;
};

struct stats_config {
	uint32_t max_databases; /* distinct database labels before "other" */
};

struct stats *stats_new(const struct stats_config *cfg);
void stats_free(struct stats *st);

/* Returns the entry for a database name, creating it; "other" beyond the cap. Never
 * NULL (falls back to "other" on ENOMEM too). Takes the table mutex: cache the result. */
struct stats_db *stats_db(struct stats *st, const char *name);

/* One request the source completed. sqlstate: "" when it succeeded. */
void stats_source_request(struct stats_db *db, uint64_t latency_ns, bool error,
			  const char *sqlstate);

void stats_histogram_observe(struct stats_histogram *h, uint64_t ns);

/* The capture-health block, written by the capture thread. */
struct stats_capture *stats_capture(struct stats *st);

/* Databases folded into "other" so far. */
uint64_t stats_database_overflow(const struct stats *st);

/* Appends the Prometheus text exposition (format 0.0.4) of everything to out. */
bool stats_render(struct stats *st, const struct stats_process *proc, const char *version,
		  struct buf *out);

/* Index of a SQLSTATE's class in source_errors (the last slot when it is malformed). */
unsigned int stats_sqlstate_class(const char *sqlstate);

#endif /* PGSHADOW_STATS_H */
