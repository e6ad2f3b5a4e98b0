// SPDX-License-Identifier: BSD-2-Clause
/* stats.c — counters, histograms and their Prometheus rendering. See include/stats.h. */
#include <errno.h>
#include <math.h>
#include <stddef.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "stats.h"

#define OTHER_DB "other"

const double stats_bucket_bounds[STATS_BUCKETS] = {
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
    0.05,    0.1,    0.25,    0.5,    1,     2.5,    5,	    10,	  30,
};

/* Bucket bounds in nanoseconds, for observe() without floating point. */
static const uint64_t bucket_ns[STATS_BUCKETS] = {
    50000,     100000,	   250000,     500000,	   1000000,	2500000,
    5000000,   10000000,   25000000,   50000000,   100000000,	250000000,
    500000000, 1000000000, 2500000000, 5000000000, 10000000000, 30000000000,
};

const char *const stats_skip_reason_names[STATS_SKIP_MAX] = {
    [STATS_SKIP_UNKNOWN_DATABASE] = "unknown_database",
    [STATS_SKIP_NO_PARSE] = "no_parse",
    [STATS_SKIP_FUNCTION_CALL] = "function_call",
    [STATS_SKIP_COPY_TOO_BIG] = "copy_too_big",
    [STATS_SKIP_SHUTDOWN] = "shutdown",
    [STATS_SKIP_SESSION_STATE] = "session_state",
    [STATS_SKIP_WRITE] = "write",
    [STATS_SKIP_READ_ONLY] = "read_only",
    [STATS_SKIP_LEVEL] = "level",
    [STATS_SKIP_ABORTED] = "aborted",
    [STATS_SKIP_NO_TRANSACTION] = "no_transaction",
};

const char *const stats_mismatch_kind_names[STATS_MISMATCH_MAX] = {
    [STATS_MISMATCH_TAG] = "tag",
    [STATS_MISMATCH_ROWCOUNT] = "rowcount",
    [STATS_MISMATCH_SQLSTATE] = "sqlstate",
    [STATS_MISMATCH_ROWS] = "rows",
};

const char *const stats_drop_reason_names[STATS_DROP_MAX] = {
    [STATS_DROP_BUFFER_FULL] = "buffer_full",
    [STATS_DROP_UNIT_ABORTED] = "unit_aborted",
    [STATS_DROP_PARTIAL] = "partial_unit",
    [STATS_DROP_POOL_WAIT] = "pool_wait",
};

const char *const stats_abort_reason_names[STATS_ABORT_MAX] = {
    [STATS_ABORT_QUEUE_FULL] = "queue_full",	 [STATS_ABORT_CAPTURE_GAP] = "capture_gap",
    [STATS_ABORT_CONNECTION] = "connection",	 [STATS_ABORT_SESSION_END] = "session_end",
    [STATS_ABORT_UNREPLAYABLE] = "unreplayable", [STATS_ABORT_POOL_WAIT] = "pool_wait",
};

const char *const stats_unrecovered_reason_names[STATS_UNRECOVERED_MAX] = {
    [STATS_UNRECOVERED_NO_SOURCE_DSN] = "no_source_dsn",
    [STATS_UNRECOVERED_NOT_FOUND] = "not_found",
    [STATS_UNRECOVERED_NO_MATCH] = "no_match",
    [STATS_UNRECOVERED_TRUNCATED] = "truncated",
    [STATS_UNRECOVERED_TOO_LONG] = "too_long",
    [STATS_UNRECOVERED_QUERY_FAILED] = "query_failed",
};

const char *const stats_error_type_names[STATS_ERR_MAX] = {
    [STATS_ERR_CONNECTION] = "connection",
    [STATS_ERR_QUERY] = "query",
    [STATS_ERR_TIMEOUT] = "timeout",
    [STATS_ERR_BUFFER_FULL] = "buffer_full",
};

/* The readiness window (see stats_readiness_reset). Counters that are bumped under
 * win_lock anyway are counted here; the others are the global atomics minus their value
 * when the window started (base_*), so the capture path takes no lock for them. */
struct readiness_window {
	uint64_t start_ns;
	uint64_t base_total, base_not_sampled, base_compared, base_mismatched;
	uint64_t mirrored, errors[STATS_ERR_MAX], streak;
	uint64_t mirror_hist[STATS_BUCKETS + 1], source_hist[STATS_BUCKETS + 1];
	uint64_t mirror_sum_ns, source_sum_ns, mirror_max_ns, source_max_ns;
	/* restored from a state file (stats_readiness_restore): counted before this start */
	uint64_t carry_runtime_ns, carry_total, carry_not_sampled, carry_compared;
	uint64_t carry_mismatched;
};

/* Global mirror numbers. Counters are atomics; the latency window, the streaks and the
 * time of the last success move together under win_lock. */
struct mirror {
	_Atomic uint64_t total, mirrored, not_sampled, skipped, order_waits;
	_Atomic uint64_t lock_waits, order_timeouts, queue_bytes, queue_bytes_peak;
	_Atomic uint64_t aborted[STATS_ABORT_MAX];
	_Atomic uint64_t pool[STATS_POOL_STATE_MAX], pool_waiting, pool_peak;
	_Atomic uint64_t pipelined, converted, raised;
	_Atomic uint64_t answer_clock[2]; /* answers timed at the read, by the kernel */
	_Atomic uint64_t compared, mismatched;
	_Atomic uint64_t errors[STATS_ERR_MAX];
	_Atomic uint64_t recovered, unrecovered[STATS_UNRECOVERED_MAX];
	_Atomic unsigned int buffer_utilization;
	pthread_mutex_t win_lock;
	uint64_t interval_ns, win_start_ns, win_sum_ns, win_count, win_max_ns;
	uint64_t consecutive_errors, consecutive_successes;
	uint64_t last_success_ns; /* 0 before the first */
	uint64_t start_ns;
	uint64_t win_hist[STATS_BUCKETS + 1]; /* mirror latency over the window (alert p99) */
	struct readiness_window rd;	      /* under win_lock */
	_Atomic bool ready;		      /* last verdict (stats_set_readiness) */
	_Atomic double score;
	_Atomic bool alert[READINESS_ALERTS];
	bool enabled;
};

struct stats {
	pthread_mutex_t lock; /* guards creation in dbs[]; readers use n_dbs */
	struct stats_db **dbs;
	_Atomic uint32_t n_dbs;
	uint32_t max_dbs;
	struct stats_db *other;
	_Atomic uint64_t db_overflow;
	struct stats_capture capture;
	struct mirror mirror;
	uint32_t limits_said; /* stats_limit_first_hit: bit i, limit_metrics[i] (last: databases) */
	/* published copies (stats_set_resolver, stats_set_fingerprint); shown once set */
	_Atomic bool resolver_set, fingerprint_set;
	_Atomic uint64_t resolver[STATS_RESOLVER_MAX], fingerprint[STATS_FP_MAX];
	stats_queries_fn queries; /* set before serving (stats_set_queries) */
	void *queries_ctx;
};

#define RELAXED memory_order_relaxed

static struct stats_db *db_new(const char *name)
{
	struct stats_db *db = calloc(1, sizeof(*db));

	if (!db)
		return NULL;
	db->rd = calloc(1, sizeof(*db->rd)); /* its counters start at 0: so do the bases */
	if (!db->rd) {
		free(db);
		return NULL;
	}
	snprintf(db->name, sizeof(db->name), "%s", name);
	return db;
}

static void db_free(struct stats_db *db)
{
	if (db)
		free(db->rd);
	free(db);
}

struct stats *stats_new(const struct stats_config *cfg)
{
	struct stats *st;

	if (!cfg->max_databases) {
		errno = EINVAL;
		return NULL;
	}
	st = calloc(1, sizeof(*st));
	if (!st)
		return NULL;
	pthread_mutex_init(&st->lock, NULL);
	pthread_mutex_init(&st->mirror.win_lock, NULL);
	st->mirror.interval_ns =
	    cfg->reset_interval_ns ? cfg->reset_interval_ns : 3600ULL * 1000000000ULL;
	st->mirror.start_ns = cfg->start_ns;
	st->mirror.rd.start_ns = cfg->start_ns;
	st->mirror.enabled = cfg->mirror_enabled;
	st->max_dbs = cfg->max_databases;
	st->dbs = calloc(cfg->max_databases, sizeof(*st->dbs));
	st->other = db_new(OTHER_DB);
	if (!st->dbs || !st->other) {
		stats_free(st);
		errno = ENOMEM;
		return NULL;
	}
	return st;
}

void stats_free(struct stats *st)
{
	uint32_t i;

	if (!st)
		return;
	for (i = 0; st->dbs && i < atomic_load(&st->n_dbs); i++)
		db_free(st->dbs[i]);
	free(st->dbs);
	db_free(st->other);
	pthread_mutex_destroy(&st->mirror.win_lock);
	pthread_mutex_destroy(&st->lock);
	free(st);
}

struct stats_db *stats_db(struct stats *st, const char *name)
{
	struct stats_db *db = NULL;
	uint32_t i, n;

	pthread_mutex_lock(&st->lock);
	n = atomic_load(&st->n_dbs);
	for (i = 0; i < n; i++) {
		if (!strncmp(st->dbs[i]->name, name, STATS_DB_NAME_MAX - 1)) {
			db = st->dbs[i];
			break;
		}
	}
	if (!db && !strcmp(name, OTHER_DB))
		db = st->other;
	if (!db && n < st->max_dbs) {
		db = db_new(name);
		if (db) {
			st->dbs[n] = db;
			atomic_store(&st->n_dbs, n + 1); /* publish after the entry is filled */
		}
	}
	if (!db) {
		atomic_fetch_add_explicit(&st->db_overflow, 1, RELAXED);
		db = st->other;
	}
	pthread_mutex_unlock(&st->lock);
	return db;
}

uint64_t stats_database_overflow(const struct stats *st)
{
	return atomic_load_explicit(&st->db_overflow, RELAXED);
}

static int class_char(char c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'A' && c <= 'Z')
		return 10 + c - 'A';
	return -1;
}

unsigned int stats_sqlstate_class(const char *sqlstate)
{
	int a, b;

	if (!sqlstate || !sqlstate[0] || !sqlstate[1])
		return STATS_SQLSTATE_CLASSES - 1;
	a = class_char(sqlstate[0]);
	b = class_char(sqlstate[1]);
	if (a < 0 || b < 0)
		return STATS_SQLSTATE_CLASSES - 1;
	return a * 36 + b;
}

static void class_name(unsigned int idx, char out[8])
{
	static const char digits[] = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ";

	if (idx >= STATS_SQLSTATE_CLASSES - 1) {
		strcpy(out, "unknown");
		return;
	}
	out[0] = digits[idx / 36];
	out[1] = digits[idx % 36];
	out[2] = '\0';
}

static unsigned int bucket_index(uint64_t ns)
{
	unsigned int i = 0;

	while (i < STATS_BUCKETS && ns > bucket_ns[i])
		i++;
	return i;
}

void stats_histogram_observe(struct stats_histogram *h, uint64_t ns)
{
	unsigned int i = bucket_index(ns);

	atomic_fetch_add_explicit(&h->bucket[i], 1, RELAXED);
	atomic_fetch_add_explicit(&h->sum_ns, ns, RELAXED);
}

/*
 * A counter with one writer: a relaxed load and store, where atomic_fetch_add is a locked
 * instruction (three per request here; measured only together with the 100 ms observing
 * poll, not alone). Readers still load whole values; the writer never races itself.
 */
static void add_one_writer(_Atomic uint64_t *x, uint64_t v)
{
	atomic_store_explicit(x, atomic_load_explicit(x, RELAXED) + v, RELAXED);
}

/* The source's figures have one writer, the capture thread (include/stats.h). */
void stats_source_request(struct stats_db *db, uint64_t latency_ns, bool error,
			  const char *sqlstate)
{
	add_one_writer(&db->source_requests, 1);
	if (error)
		add_one_writer(&db->source_errors[stats_sqlstate_class(sqlstate)], 1);
	add_one_writer(&db->source_latency.bucket[bucket_index(latency_ns)], 1);
	add_one_writer(&db->source_latency.sum_ns, latency_ns);
}

/* ---- mirror outcomes ---- */

/* Starts a new window when the current one is older than the reset interval. The
 * window of the first record starts at that record. Caller holds win_lock. */
static void roll_window(struct stats *st, uint64_t now_ns)
{
	struct mirror *m = &st->mirror;
	uint32_t i, n;

	if (m->win_start_ns &&
	    (now_ns < m->win_start_ns || now_ns - m->win_start_ns < m->interval_ns))
		return;
	if (!m->win_start_ns) {
		m->win_start_ns = now_ns;
		return;
	}
	m->win_start_ns = now_ns;
	m->win_sum_ns = m->win_count = m->win_max_ns = 0;
	memset(m->win_hist, 0, sizeof(m->win_hist));
	n = atomic_load(&st->n_dbs);
	for (i = 0; i < n; i++)
		st->dbs[i]->win_latency_sum_ns = st->dbs[i]->win_latency_count = 0;
	st->other->win_latency_sum_ns = st->other->win_latency_count = 0;
}

void stats_mirror_request(struct stats *st, struct stats_db *db)
{
	atomic_fetch_add_explicit(&st->mirror.total, 1, RELAXED);
	atomic_fetch_add_explicit(&db->mirror_requests, 1, RELAXED);
}

void stats_mirror_not_sampled(struct stats *st, struct stats_db *db)
{
	atomic_fetch_add_explicit(&st->mirror.not_sampled, 1, RELAXED);
	atomic_fetch_add_explicit(&db->mirror_not_sampled, 1, RELAXED);
}

void stats_mirror_skipped(struct stats *st, struct stats_db *db, enum stats_skip_reason why)
{
	if ((unsigned int)why >= STATS_SKIP_MAX)
		why = STATS_SKIP_SESSION_STATE;
	atomic_fetch_add_explicit(&st->mirror.skipped, 1, RELAXED);
	atomic_fetch_add_explicit(&db->mirror_skipped[why], 1, RELAXED);
}

/* A readiness window counts an error (caller holds win_lock). */
static void rd_error(struct readiness_window *rd, enum stats_error_type type)
{
	rd->errors[type]++;
	if (type != STATS_ERR_BUFFER_FULL)
		rd->streak = 0; /* a drop was never attempted: coverage judges it */
}

/* A readiness window counts a success: the mirror and the source latency of the same
 * request (caller holds win_lock). */
static void rd_success(struct readiness_window *rd, uint64_t latency_ns, uint64_t source_latency_ns)
{
	rd->mirrored++;
	rd->streak++;
	rd->mirror_hist[bucket_index(latency_ns)]++;
	rd->source_hist[bucket_index(source_latency_ns)]++;
	rd->mirror_sum_ns += latency_ns;
	rd->source_sum_ns += source_latency_ns;
	if (latency_ns > rd->mirror_max_ns)
		rd->mirror_max_ns = latency_ns;
	if (source_latency_ns > rd->source_max_ns)
		rd->source_max_ns = source_latency_ns;
}

static void count_error(struct stats *st, struct stats_db *db, enum stats_error_type type,
			uint64_t now_ns)
{
	struct mirror *m = &st->mirror;

	atomic_fetch_add_explicit(&m->errors[type], 1, RELAXED);
	atomic_fetch_add_explicit(&db->mirror_errors, 1, RELAXED);
	atomic_fetch_add_explicit(&db->mirror_errors_by_type[type], 1, RELAXED);
	pthread_mutex_lock(&m->win_lock);
	roll_window(st, now_ns);
	m->consecutive_errors++;
	m->consecutive_successes = 0;
	rd_error(&m->rd, type);
	rd_error(db->rd, type);
	pthread_mutex_unlock(&m->win_lock);
}

void stats_mirror_dropped(struct stats *st, struct stats_db *db, uint64_t now_ns)
{
	stats_mirror_dropped_why(st, db, STATS_DROP_BUFFER_FULL, now_ns);
}

void stats_mirror_dropped_why(struct stats *st, struct stats_db *db, enum stats_drop_reason why,
			      uint64_t now_ns)
{
	if ((unsigned int)why >= STATS_DROP_MAX)
		why = STATS_DROP_BUFFER_FULL;
	atomic_fetch_add_explicit(&db->mirror_dropped[why], 1, RELAXED);
	count_error(st, db, STATS_ERR_BUFFER_FULL, now_ns);
}

void stats_mirror_unit_aborted(struct stats *st, enum stats_abort_reason why)
{
	if ((unsigned int)why < STATS_ABORT_MAX)
		atomic_fetch_add_explicit(&st->mirror.aborted[why], 1, RELAXED);
}

const char *const stats_pool_state_names[STATS_POOL_STATE_MAX] = {
    [STATS_POOL_IN_USE] = "in_use",
    [STATS_POOL_IDLE] = "idle",
    [STATS_POOL_PINNED] = "pinned",
    [STATS_POOL_CONNECTING] = "connecting",
};

void stats_mirror_set_pool(struct stats *st, const struct stats_pool *p)
{
	int i;

	for (i = 0; i < STATS_POOL_STATE_MAX; i++)
		atomic_store_explicit(&st->mirror.pool[i], p->connections[i], RELAXED);
	atomic_store_explicit(&st->mirror.pool_waiting, p->waiting, RELAXED);
	atomic_store_explicit(&st->mirror.pool_peak, p->peak, RELAXED);
}

void stats_mirror_set_queue_bytes(struct stats *st, uint64_t bytes, uint64_t peak)
{
	atomic_store_explicit(&st->mirror.queue_bytes, bytes, RELAXED);
	atomic_store_explicit(&st->mirror.queue_bytes_peak, peak, RELAXED);
}

void stats_mirror_lock_wait(struct stats *st)
{
	atomic_fetch_add_explicit(&st->mirror.lock_waits, 1, RELAXED);
}

void stats_mirror_order_timeout(struct stats *st)
{
	atomic_fetch_add_explicit(&st->mirror.order_timeouts, 1, RELAXED);
}

void stats_mirror_error(struct stats *st, struct stats_db *db, enum stats_error_type type,
			uint64_t now_ns)
{
	if ((unsigned int)type >= STATS_ERR_MAX)
		type = STATS_ERR_QUERY;
	count_error(st, db, type, now_ns);
}

void stats_mirror_success(struct stats *st, struct stats_db *db, uint64_t latency_ns,
			  uint64_t source_latency_ns, uint64_t delay_ns, uint64_t now_ns)
{
	struct mirror *m = &st->mirror;

	atomic_fetch_add_explicit(&m->mirrored, 1, RELAXED);
	atomic_fetch_add_explicit(&db->mirror_mirrored, 1, RELAXED);
	stats_histogram_observe(&db->mirror_latency, latency_ns);
	stats_histogram_observe(&db->mirrored_source_latency, source_latency_ns);
	stats_histogram_observe(&db->replay_delay, delay_ns);
	pthread_mutex_lock(&m->win_lock);
	roll_window(st, now_ns);
	m->win_sum_ns += latency_ns;
	m->win_count++;
	if (latency_ns > m->win_max_ns)
		m->win_max_ns = latency_ns;
	m->win_hist[bucket_index(latency_ns)]++;
	rd_success(&m->rd, latency_ns, source_latency_ns);
	rd_success(db->rd, latency_ns, source_latency_ns);
	db->win_latency_sum_ns += latency_ns;
	db->win_latency_count++;
	m->consecutive_errors = 0;
	m->consecutive_successes++;
	m->last_success_ns = now_ns;
	pthread_mutex_unlock(&m->win_lock);
}

void stats_mirror_compared(struct stats *st, struct stats_db *db, unsigned int kinds)
{
	int k;

	atomic_fetch_add_explicit(&st->mirror.compared, 1, RELAXED);
	atomic_fetch_add_explicit(&db->mirror_compared, 1, RELAXED);
	if (!kinds)
		return;
	atomic_fetch_add_explicit(&st->mirror.mismatched, 1, RELAXED);
	atomic_fetch_add_explicit(&db->mirror_mismatched, 1, RELAXED);
	for (k = 0; k < STATS_MISMATCH_MAX; k++)
		if (kinds & (1u << k))
			atomic_fetch_add_explicit(&db->mirror_mismatches[k], 1, RELAXED);
}

void stats_mirror_order_wait(struct stats *st)
{
	atomic_fetch_add_explicit(&st->mirror.order_waits, 1, RELAXED);
}

void stats_mirror_piped(struct stats *st, bool behind, bool converted)
{
	if (behind)
		atomic_fetch_add_explicit(&st->mirror.pipelined, 1, RELAXED);
	if (converted)
		atomic_fetch_add_explicit(&st->mirror.converted, 1, RELAXED);
}

void stats_mirror_raised(struct stats *st)
{
	atomic_fetch_add_explicit(&st->mirror.raised, 1, RELAXED);
}

void stats_mirror_answer_clock(struct stats *st, bool kernel)
{
	atomic_fetch_add_explicit(&st->mirror.answer_clock[kernel], 1, RELAXED);
}

void stats_mirror_set_buffer_utilization(struct stats *st, unsigned int percent)
{
	atomic_store_explicit(&st->mirror.buffer_utilization, percent > 100 ? 100 : percent,
			      RELAXED);
}

void stats_statement_recovered(struct stats *st)
{
	atomic_fetch_add_explicit(&st->mirror.recovered, 1, RELAXED);
}

void stats_statement_unrecovered(struct stats *st, enum stats_unrecovered_reason why)
{
	if (why < STATS_UNRECOVERED_MAX)
		atomic_fetch_add_explicit(&st->mirror.unrecovered[why], 1, RELAXED);
}

void stats_mirror_snapshot(struct stats *st, uint64_t now_ns, struct stats_mirror_snapshot *out)
{
	struct mirror *m = &st->mirror;
	uint64_t done;
	int i;

	memset(out, 0, sizeof(*out));
	/* read the outcomes before the total: a request is counted in total first, so
	 * in_flight never goes negative */
	out->mirrored = atomic_load_explicit(&m->mirrored, RELAXED);
	out->not_sampled = atomic_load_explicit(&m->not_sampled, RELAXED);
	out->skipped = atomic_load_explicit(&m->skipped, RELAXED);
	for (i = 0; i < STATS_ERR_MAX; i++)
		out->errors[i] = atomic_load_explicit(&m->errors[i], RELAXED);
	out->dropped = out->errors[STATS_ERR_BUFFER_FULL];
	atomic_thread_fence(memory_order_seq_cst);
	out->total = atomic_load_explicit(&m->total, RELAXED);
	done = out->mirrored + out->not_sampled + out->skipped + out->dropped +
	       out->errors[STATS_ERR_CONNECTION] + out->errors[STATS_ERR_QUERY] +
	       out->errors[STATS_ERR_TIMEOUT];
	out->in_flight = out->total > done ? out->total - done : 0;
	out->order_waits = atomic_load_explicit(&m->order_waits, RELAXED);
	out->pipelined = atomic_load_explicit(&m->pipelined, RELAXED);
	out->converted = atomic_load_explicit(&m->converted, RELAXED);
	out->raised = atomic_load_explicit(&m->raised, RELAXED);
	out->answers_read_timed = atomic_load_explicit(&m->answer_clock[0], RELAXED);
	out->answers_kernel_timed = atomic_load_explicit(&m->answer_clock[1], RELAXED);
	out->compared = atomic_load_explicit(&m->compared, RELAXED);
	out->mismatched = atomic_load_explicit(&m->mismatched, RELAXED);
	out->buffer_utilization = atomic_load_explicit(&m->buffer_utilization, RELAXED);
	out->lock_waits = atomic_load_explicit(&m->lock_waits, RELAXED);
	out->order_timeouts = atomic_load_explicit(&m->order_timeouts, RELAXED);
	out->queue_bytes = atomic_load_explicit(&m->queue_bytes, RELAXED);
	out->queue_bytes_peak = atomic_load_explicit(&m->queue_bytes_peak, RELAXED);
	for (i = 0; i < STATS_ABORT_MAX; i++)
		out->aborted[i] = atomic_load_explicit(&m->aborted[i], RELAXED);
	for (i = 0; i < STATS_POOL_STATE_MAX; i++)
		out->pool.connections[i] = atomic_load_explicit(&m->pool[i], RELAXED);
	out->pool.waiting = atomic_load_explicit(&m->pool_waiting, RELAXED);
	out->pool.peak = atomic_load_explicit(&m->pool_peak, RELAXED);
	pthread_mutex_lock(&m->win_lock);
	roll_window(st, now_ns);
	out->latency_avg_ms = m->win_count ? m->win_sum_ns / 1e6 / m->win_count : 0;
	out->latency_max_ms = m->win_max_ns / 1e6;
	out->consecutive_errors = m->consecutive_errors;
	out->consecutive_successes = m->consecutive_successes;
	/* before the first success: since the agent started (so an alert on a mirror that
	 * never worked fires) */
	out->last_success_seconds_ago =
	    (now_ns - (m->last_success_ns ? m->last_success_ns : m->start_ns)) / 1e9;
	pthread_mutex_unlock(&m->win_lock);
}

/* ---- readiness ---- */

double stats_quantile_ms(const uint64_t bucket[STATS_BUCKETS + 1], double q, uint64_t max_ns)
{
	uint64_t total = 0, cum = 0;
	double rank, lo, hi, v;
	unsigned int i;

	for (i = 0; i <= STATS_BUCKETS; i++)
		total += bucket[i];
	if (!total)
		return NAN;
	rank = q * total;
	for (i = 0; i < STATS_BUCKETS; i++) {
		if (bucket[i] && cum + bucket[i] >= rank)
			break;
		cum += bucket[i];
	}
	lo = i ? bucket_ns[i - 1] : 0;
	hi = i < STATS_BUCKETS ? bucket_ns[i] : (max_ns > lo ? max_ns : lo);
	v = bucket[i] ? lo + (hi - lo) * (rank - cum) / bucket[i] : hi;
	if (max_ns && v > max_ns)
		v = max_ns;
	return v / 1e6;
}

static uint64_t load(const _Atomic uint64_t *a)
{
	return atomic_load_explicit(a, RELAXED);
}

/* The monotonic counters a readiness window counts from: the agent's, or a database's. */
struct window_counters {
	uint64_t total, not_sampled, compared, mismatched;
};

static struct window_counters agent_counters(struct mirror *m)
{
	return (struct window_counters){load(&m->total), load(&m->not_sampled), load(&m->compared),
					load(&m->mismatched)};
}

static struct window_counters db_counters(struct stats_db *db)
{
	return (struct window_counters){load(&db->mirror_requests), load(&db->mirror_not_sampled),
					load(&db->mirror_compared), load(&db->mirror_mismatched)};
}

/* A window starts now from counters c (caller holds win_lock). */
static void window_restart(struct readiness_window *rd, uint64_t now_ns, struct window_counters c)
{
	memset(rd, 0, sizeof(*rd));
	rd->start_ns = now_ns;
	rd->base_total = c.total;
	rd->base_not_sampled = c.not_sampled;
	rd->base_compared = c.compared;
	rd->base_mismatched = c.mismatched;
}

/* Every database's window restarts with the agent's (caller holds win_lock). */
static void dbs_readiness_restart(struct stats *st, uint64_t now_ns)
{
	uint32_t i, n = atomic_load(&st->n_dbs);

	for (i = 0; i < n; i++)
		window_restart(st->dbs[i]->rd, now_ns, db_counters(st->dbs[i]));
	window_restart(st->other->rd, now_ns, db_counters(st->other));
}

void stats_readiness_reset(struct stats *st, uint64_t now_ns)
{
	pthread_mutex_lock(&st->mirror.win_lock);
	window_restart(&st->mirror.rd, now_ns, agent_counters(&st->mirror));
	dbs_readiness_restart(st, now_ns);
	pthread_mutex_unlock(&st->mirror.win_lock);
}

/* a - b for counters read at different moments (never below 0). */
static uint64_t since(uint64_t a, uint64_t b)
{
	return a > b ? a - b : 0;
}

/* The input of a window rd (a copy) over counters c now; runtime from the agent's
 * window (a database's runs with it). */
static void window_input(struct stats *st, const struct readiness_window *rd,
			 const struct readiness_window *agent, struct window_counters c,
			 uint64_t now_ns, struct readiness_input *in)
{
	uint64_t not_sampled = since(c.not_sampled, rd->base_not_sampled) + rd->carry_not_sampled;

	memset(in, 0, sizeof(*in));
	in->total = since(c.total, rd->base_total) + rd->carry_total;
	in->selected = since(in->total, not_sampled);
	in->mirrored = rd->mirrored;
	in->errors_connection = rd->errors[STATS_ERR_CONNECTION];
	in->errors_query = rd->errors[STATS_ERR_QUERY];
	in->errors_timeout = rd->errors[STATS_ERR_TIMEOUT];
	in->dropped = rd->errors[STATS_ERR_BUFFER_FULL];
	in->compared = since(c.compared, rd->base_compared) + rd->carry_compared;
	in->mismatched = since(c.mismatched, rd->base_mismatched) + rd->carry_mismatched;
	in->consecutive_successes = rd->streak;
	in->runtime_seconds = (since(now_ns, agent->start_ns) + agent->carry_runtime_ns) / 1e9;
	in->uptime_seconds = since(now_ns, st->mirror.start_ns) / 1e9;
	in->mirror_avg_ms = rd->mirrored ? rd->mirror_sum_ns / 1e6 / rd->mirrored : NAN;
	in->source_avg_ms = rd->mirrored ? rd->source_sum_ns / 1e6 / rd->mirrored : NAN;
	in->mirror_p99_ms = stats_quantile_ms(rd->mirror_hist, 0.99, rd->mirror_max_ns);
	in->source_p99_ms = stats_quantile_ms(rd->source_hist, 0.99, rd->source_max_ns);
}

void stats_readiness_input(struct stats *st, uint64_t now_ns, struct readiness_input *in)
{
	struct readiness_window rd;

	pthread_mutex_lock(&st->mirror.win_lock);
	rd = st->mirror.rd;
	pthread_mutex_unlock(&st->mirror.win_lock);
	window_input(st, &rd, &rd, agent_counters(&st->mirror), now_ns, in);
}

int stats_readiness_input_db(struct stats *st, const char *database, uint64_t now_ns,
			     struct readiness_input *in)
{
	struct readiness_window rd, agent;
	struct stats_db *db = NULL;
	uint32_t i, n = atomic_load(&st->n_dbs);

	for (i = 0; i < n && !db; i++)
		if (!strcmp(st->dbs[i]->name, database))
			db = st->dbs[i];
	if (!db && !strcmp(database, OTHER_DB))
		db = st->other;
	if (!db)
		return -ENOENT;
	pthread_mutex_lock(&st->mirror.win_lock);
	rd = *db->rd;
	agent = st->mirror.rd;
	pthread_mutex_unlock(&st->mirror.win_lock);
	window_input(st, &rd, &agent, db_counters(db), now_ns, in);
	return 0;
}

void stats_readiness_save(struct stats *st, uint64_t now_ns, struct stats_readiness_state *out)
{
	struct mirror *m = &st->mirror;
	struct readiness_window rd;

	pthread_mutex_lock(&m->win_lock);
	rd = m->rd;
	pthread_mutex_unlock(&m->win_lock);
	memset(out, 0, sizeof(*out));
	out->runtime_ns = since(now_ns, rd.start_ns) + rd.carry_runtime_ns;
	out->total = since(load(&m->total), rd.base_total) + rd.carry_total;
	out->not_sampled = since(load(&m->not_sampled), rd.base_not_sampled) + rd.carry_not_sampled;
	out->compared = since(load(&m->compared), rd.base_compared) + rd.carry_compared;
	out->mismatched = since(load(&m->mismatched), rd.base_mismatched) + rd.carry_mismatched;
	out->mirrored = rd.mirrored;
	memcpy(out->errors, rd.errors, sizeof(out->errors));
	out->streak = rd.streak;
	memcpy(out->mirror_hist, rd.mirror_hist, sizeof(out->mirror_hist));
	memcpy(out->source_hist, rd.source_hist, sizeof(out->source_hist));
	out->mirror_sum_ns = rd.mirror_sum_ns;
	out->source_sum_ns = rd.source_sum_ns;
	out->mirror_max_ns = rd.mirror_max_ns;
	out->source_max_ns = rd.source_max_ns;
}

void stats_readiness_restore(struct stats *st, uint64_t now_ns,
			     const struct stats_readiness_state *s)
{
	struct mirror *m = &st->mirror;
	struct readiness_window *rd = &m->rd;

	pthread_mutex_lock(&m->win_lock);
	window_restart(&m->rd, now_ns, agent_counters(m));
	dbs_readiness_restart(st, now_ns);
	rd->carry_runtime_ns = s->runtime_ns;
	rd->carry_total = s->total;
	rd->carry_not_sampled = s->not_sampled;
	rd->carry_compared = s->compared;
	rd->carry_mismatched = s->mismatched;
	rd->mirrored = s->mirrored;
	memcpy(rd->errors, s->errors, sizeof(rd->errors));
	rd->streak = s->streak;
	memcpy(rd->mirror_hist, s->mirror_hist, sizeof(rd->mirror_hist));
	memcpy(rd->source_hist, s->source_hist, sizeof(rd->source_hist));
	rd->mirror_sum_ns = s->mirror_sum_ns;
	rd->source_sum_ns = s->source_sum_ns;
	rd->mirror_max_ns = s->mirror_max_ns;
	rd->source_max_ns = s->source_max_ns;
	pthread_mutex_unlock(&m->win_lock);
}

void stats_alert_input(struct stats *st, uint64_t now_ns, struct readiness_alert_input *in)
{
	struct mirror *m = &st->mirror;

	pthread_mutex_lock(&m->win_lock);
	roll_window(st, now_ns);
	in->consecutive_errors = m->consecutive_errors;
	in->window_p99_ms = stats_quantile_ms(m->win_hist, 0.99, m->win_max_ns);
	pthread_mutex_unlock(&m->win_lock);
}

void stats_set_readiness(struct stats *st, bool ready, double score)
{
	atomic_store_explicit(&st->mirror.ready, ready, RELAXED);
	atomic_store_explicit(&st->mirror.score, score, RELAXED);
}

void stats_set_alert(struct stats *st, enum readiness_alert a, bool active)
{
	if ((unsigned int)a < READINESS_ALERTS)
		atomic_store_explicit(&st->mirror.alert[a], active, RELAXED);
}

/* Copies an atomic histogram's buckets; returns the sum of the observations. */
static uint64_t hist_copy(const struct stats_histogram *h, uint64_t out[STATS_BUCKETS + 1],
			  uint64_t *count)
{
	unsigned int i;

	*count = 0;
	for (i = 0; i <= STATS_BUCKETS; i++) {
		out[i] = load(&h->bucket[i]);
		*count += out[i];
	}
	return load(&h->sum_ns);
}

static void db_row(const struct stats_db *db, struct stats_db_row *r)
{
	uint64_t b[STATS_BUCKETS + 1], n, sum, done;
	int i;

	memset(r, 0, sizeof(*r));
	snprintf(r->name, sizeof(r->name), "%s", db->name);
	/* outcomes before requests, as in stats_mirror_snapshot: in_flight never < 0 */
	r->mirrored = load(&db->mirror_mirrored);
	r->not_sampled = load(&db->mirror_not_sampled);
	for (i = 0; i < STATS_SKIP_MAX; i++)
		r->skipped += load(&db->mirror_skipped[i]);
	for (i = 0; i < STATS_ERR_MAX; i++)
		r->errors[i] = load(&db->mirror_errors_by_type[i]);
	r->dropped = r->errors[STATS_ERR_BUFFER_FULL];
	atomic_thread_fence(memory_order_seq_cst);
	r->requests = load(&db->mirror_requests);
	r->source_requests = load(&db->source_requests);
	done = r->mirrored + r->not_sampled + r->skipped;
	for (i = 0; i < STATS_ERR_MAX; i++)
		done += r->errors[i];
	r->in_flight = since(r->requests, done);
	r->compared = load(&db->mirror_compared);
	r->mismatched = load(&db->mirror_mismatched);
	sum = hist_copy(&db->mirror_latency, b, &n);
	r->mirror_avg_ms = n ? sum / 1e6 / n : NAN;
	r->mirror_p99_ms = stats_quantile_ms(b, 0.99, 0);
	sum = hist_copy(&db->mirrored_source_latency, b, &n);
	r->source_avg_ms = n ? sum / 1e6 / n : NAN;
	r->source_p99_ms = stats_quantile_ms(b, 0.99, 0);
}

struct stats_capture *stats_capture(struct stats *st)
{
	return &st->capture;
}

/* ---- rendering ---- */

/* A consistent view of the database list: entries are never freed, so pointers taken
 * under the lock stay valid while we render. "other" comes last, only if used. */
static uint32_t db_snapshot(struct stats *st, struct stats_db **out, uint32_t cap)
{
	uint32_t n, i;

	pthread_mutex_lock(&st->lock);
	n = atomic_load(&st->n_dbs);
	for (i = 0; i < n && i < cap; i++)
		out[i] = st->dbs[i];
	pthread_mutex_unlock(&st->lock);
	if (i < cap && (atomic_load_explicit(&st->other->source_requests, RELAXED) ||
			atomic_load_explicit(&st->db_overflow, RELAXED)))
		out[i++] = st->other;
	return i;
}

size_t stats_db_rows(struct stats *st, struct stats_db_row *out, size_t cap)
{
	struct stats_db *dbs[st->max_dbs + 1];
	uint32_t n = db_snapshot(st, dbs, st->max_dbs + 1), i;

	for (i = 0; i < n && i < cap; i++)
		db_row(dbs[i], &out[i]);
	return n;
}

static bool header(struct buf *b, const char *name, const char *type, const char *help)
{
	return buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

/* Appends `name{database="<escaped db>` (the caller closes the label set). */
static bool db_label(struct buf *b, const char *name, const char *suffix, const struct stats_db *db)
{
	bool ok = buf_printf(b, "%s%s{database=\"", name, suffix);

	ok &= buf_append_label_value(b, db->name);
	return ok;
}

static bool render_histogram(struct buf *b, const char *name, const struct stats_db *db,
			     const struct stats_histogram *h)
{
	uint64_t cum = 0;
	bool ok = true;
	int i;

	for (i = 0; i <= STATS_BUCKETS; i++) {
		cum += atomic_load_explicit(&h->bucket[i], RELAXED);
		ok &= db_label(b, name, "_bucket", db);
		if (i < STATS_BUCKETS)
			ok &= buf_printf(b, "\",le=\"%g\"} %llu\n", stats_bucket_bounds[i],
					 (unsigned long long)cum);
		else
			ok &= buf_printf(b, "\",le=\"+Inf\"} %llu\n", (unsigned long long)cum);
	}
	ok &= db_label(b, name, "_sum", db);
	ok &= buf_printf(b, "\"} %.9f\n", atomic_load_explicit(&h->sum_ns, RELAXED) / 1e9);
	ok &= db_label(b, name, "_count", db);
	ok &= buf_printf(b, "\"} %llu\n", (unsigned long long)cum);
	return ok;
}

/* A counter with one sample per database: the _Atomic uint64_t at offset in stats_db. */
static bool db_counter(struct buf *b, const char *name, const char *help, struct stats_db **dbs,
		       uint32_t n, size_t offset)
{
	bool ok = header(b, name, "counter", help);
	uint32_t i;

	for (i = 0; i < n; i++) {
		ok &= db_label(b, name, "", dbs[i]);
		ok &= buf_printf(b, "\"} %llu\n",
				 (unsigned long long)atomic_load_explicit(
				     (_Atomic uint64_t *)((char *)dbs[i] + offset), RELAXED));
	}
	return ok;
}

/* A counter per database and reason: the _Atomic uint64_t array at offset in stats_db,
 * one sample per name of names (label label); zero samples left out unless all. */
static bool db_reasons(struct buf *b, const char *name, const char *help, struct stats_db **dbs,
		       uint32_t n, size_t offset, const char *label, const char *const *names,
		       unsigned int n_names, bool all)
{
	bool ok = header(b, name, "counter", help);
	unsigned int r;
	uint32_t i;
	uint64_t v;

	for (i = 0; i < n; i++) {
		const _Atomic uint64_t *c = (const _Atomic uint64_t *)((char *)dbs[i] + offset);

		for (r = 0; r < n_names; r++) {
			v = atomic_load_explicit(&c[r], RELAXED);
			if (!v && !all)
				continue;
			ok &= db_label(b, name, "", dbs[i]);
			ok &= buf_printf(b, "\",%s=\"%s\"} %llu\n", label, names[r],
					 (unsigned long long)v);
		}
	}
	return ok;
}

static bool render_source(struct buf *b, struct stats_db **dbs, uint32_t n)
{
	char cls[8];
	uint32_t i, c;
	uint64_t v;
	bool ok = true;

	ok &=
	    db_counter(b, "mirror_source_requests_total",
		       "Requests (Query, Execute, FunctionCall) the source completed, by database.",
		       dbs, n, offsetof(struct stats_db, source_requests));
	ok &= header(b, "mirror_source_errors_total", "counter",
		     "Requests the source answered with an error, by database and SQLSTATE class.");
	for (i = 0; i < n; i++) {
		for (c = 0; c < STATS_SQLSTATE_CLASSES; c++) {
			v = atomic_load_explicit(&dbs[i]->source_errors[c], RELAXED);
			if (!v)
				continue;
			class_name(c, cls);
			ok &= db_label(b, "mirror_source_errors_total", "", dbs[i]);
			ok &= buf_printf(b, "\",sqlstate_class=\"%s\"} %llu\n", cls,
					 (unsigned long long)v);
		}
	}
	ok &= header(b, "mirror_source_latency_seconds", "histogram",
		     "Source latency from the client's request packet to the server's completing "
		     "packet (kernel timestamps), by database.");
	for (i = 0; i < n; i++)
		ok &= render_histogram(b, "mirror_source_latency_seconds", dbs[i],
				       &dbs[i]->source_latency);
	return ok;
}

struct capture_metric {
	const char *name;
	const char *type;
	const char *help;
	size_t offset;
};

#define CAP(field) offsetof(struct stats_capture, field)

static const struct capture_metric capture_metrics[] = {
    {"mirror_capture_packets_total", "counter",
     "Packets of the server port the kernel program reported.", CAP(packets)},
    {"mirror_capture_bytes_total", "counter", "TCP payload bytes of those packets.", CAP(bytes)},
    {"mirror_capture_ringbuf_drops_total", "counter",
     "Records lost because the ring buffer was full (each shows up as a stream gap).",
     CAP(ringbuf_drops)},
    {"mirror_capture_truncated_total", "counter",
     "Packets whose payload exceeded the 64 KiB copy limit.", CAP(truncated)},
    {"mirror_capture_stream_gaps_total", "counter",
     "Holes in reassembled streams reported to the decoder (missed starts included).",
     CAP(stream_gaps)},
    {"mirror_capture_resyncs_total", "counter",
     "Times the decoder found message boundaries again after a gap or a missed start.",
     CAP(resyncs)},
    {"mirror_capture_sessions_active", "gauge", "PostgreSQL sessions being decoded now.",
     CAP(sessions_active)},
    {"mirror_capture_encrypted_sessions_total", "counter",
     "Sessions the server accepted SSL/GSS encryption for (decoded only through the TLS "
     "probes, --tls on).",
     CAP(encrypted_sessions)},
    {"mirror_capture_tls_sessions_total", "counter",
     "TLS sessions decoded from the plaintext the server's libssl read and wrote (--tls on).",
     CAP(tls_sessions)},
    {"mirror_capture_tls_probed_servers", "gauge",
     "Postmasters on the port whose libssl is probed (--tls on).", CAP(tls_probed_servers)},
    {"mirror_capture_tls_calls_total", "counter",
     "SSL_read/SSL_write calls of probed backends that returned data.", CAP(tls_calls)},
    {"mirror_capture_tls_bytes_total", "counter", "Plaintext bytes of those calls.",
     CAP(tls_bytes)},
    {"mirror_capture_tls_unmapped_calls_total", "counter",
     "Such calls made before the backend's connection was known (not decoded).", CAP(tls_unmapped)},
    {"mirror_capture_replication_sessions_total", "counter",
     "Replication connections (counted, never decoded).", CAP(replication_sessions)},
};

/* help: what reaching the cap means, for the log (stats_limit_first_hit) */
static const struct capture_metric limit_metrics[] = {
    {"flows", NULL, "more connections than max_flows at once: the others are not captured",
     CAP(flows_refused)},
    {"flow_buffer", NULL,
     "a connection held more out-of-order bytes than flow_buffer_kb: it has a gap",
     CAP(flow_buffer_full)},
    {"hole_timeout", NULL,
     "a missing segment never came within hole_timeout_ms: its stream has a gap",
     CAP(hole_timeouts)},
    {"statements", NULL,
     "a session prepared more than 1000 named statements: the oldest were forgotten",
     CAP(statements_evicted)},
    {"inflight", NULL, "a session had more requests in flight than the decoder keeps",
     CAP(inflight_overflow)},
    {"message_size", NULL,
     "a message was longer than max_message_kb: counted, its body not decoded",
     CAP(bodies_too_big)},
    {"decode_buffer", NULL,
     "the decoders held decode_buffer_mb of messages split across packets: a message was "
     "counted without its body (not mirrored), or bytes of a stream being searched for a "
     "message boundary were skipped",
     CAP(decode_buffer_full)},
    {"portals", NULL, "a session had more than 100 portals open: the oldest were forgotten",
     CAP(portals_evicted)},
    {"copy_bytes", NULL, "a COPY carried more data than is kept for replay", CAP(copy_truncated)},
};

static uint64_t cap_field(const struct stats_capture *c, size_t offset)
{
	return atomic_load_explicit((_Atomic uint64_t *)((char *)c + offset), RELAXED);
}

static uint64_t cap_field_of(struct stats *st, size_t offset)
{
	return cap_field(&st->capture, offset);
}

#define N_LIMITS (sizeof(limit_metrics) / sizeof(limit_metrics[0]))

bool stats_limit_first_hit(struct stats *st, const char **name, const char **meaning)
{
	size_t i;

	for (i = 0; i <= N_LIMITS; i++) {
		bool hit = i < N_LIMITS ? cap_field_of(st, limit_metrics[i].offset) > 0
					: stats_database_overflow(st) > 0;

		if (!hit || (st->limits_said & (1u << i)))
			continue;
		st->limits_said |= 1u << i;
		*name = i < N_LIMITS ? limit_metrics[i].name : "databases";
		*meaning = i < N_LIMITS ? limit_metrics[i].help
					: "more databases than max_databases: the others are "
					  "counted as database=\"other\"";
		return true;
	}
	return false;
}

static const struct capture_metric malformed_kinds[] = {
    {"bad_length", NULL, NULL, CAP(bad_lengths)},
    {"protocol_error", NULL, NULL, CAP(protocol_errors)},
    {"unmatched_response", NULL, NULL, CAP(unmatched_responses)},
};

static const struct capture_metric undecoded_reasons[] = {
    {"tls_off", NULL, NULL, CAP(undecoded_tls_off)},
    {"no_probe", NULL, NULL, CAP(undecoded_no_probe)},
    {"no_plaintext", NULL, NULL, CAP(undecoded_no_plaintext)},
    {"gss", NULL, NULL, CAP(undecoded_gss)},
};

static const struct capture_metric irregular_kinds[] = {
    {"duplicate", NULL, NULL, CAP(dup_segments)},
    {"out_of_order", NULL, NULL, CAP(ooo_segments)},
};

/* One sample of metric name per entry of m, labelled label="<entry's name>". */
static bool render_labelled(struct buf *b, const char *name, const char *label,
			    const struct capture_metric *m, size_t n, const struct stats_capture *c)
{
	bool ok = true;
	size_t i;

	for (i = 0; i < n; i++)
		ok &= buf_printf(b, "%s{%s=\"%s\"} %llu\n", name, label, m[i].name,
				 (unsigned long long)cap_field(c, m[i].offset));
	return ok;
}

static bool render_capture(struct buf *b, struct stats *st)
{
	const struct stats_capture *c = &st->capture;
	size_t i;
	bool ok = true;

	for (i = 0; i < sizeof(capture_metrics) / sizeof(capture_metrics[0]); i++) {
		const struct capture_metric *m = &capture_metrics[i];

		ok &= header(b, m->name, m->type, m->help);
		ok &= buf_printf(b, "%s %llu\n", m->name,
				 (unsigned long long)cap_field(c, m->offset));
	}
	ok &= header(b, "mirror_capture_limit_hits_total", "counter",
		     "Times a configured cap was reached (flows, flow_buffer, hole_timeout, "
		     "statements, inflight, message_size, decode_buffer, portals, copy_bytes, "
		     "databases).");
	ok &= render_labelled(b, "mirror_capture_limit_hits_total", "limit", limit_metrics,
			      sizeof(limit_metrics) / sizeof(limit_metrics[0]), c);
	ok &= buf_printf(b, "mirror_capture_limit_hits_total{limit=\"databases\"} %llu\n",
			 (unsigned long long)stats_database_overflow(st));
	ok &= header(b, "mirror_capture_abandoned_requests_total", "counter",
		     "Requests whose answer was never seen (session ended, gap, or skipped by the "
		     "server after an error in a pipeline).");
	ok &= buf_printf(b, "mirror_capture_abandoned_requests_total %llu\n",
			 (unsigned long long)cap_field(c, CAP(abandoned_requests)));
	ok &= header(b, "mirror_capture_malformed_total", "counter",
		     "What the decoders could not read: bad_length (a length, type or startup code "
		     "that cannot be: the direction hunts for a boundary), protocol_error (a "
		     "message that breaks the protocol's rules), unmatched_response (a server "
		     "message no request waited for: the session realigns).");
	ok &= render_labelled(b, "mirror_capture_malformed_total", "kind", malformed_kinds,
			      sizeof(malformed_kinds) / sizeof(malformed_kinds[0]), c);
	ok &= header(b, "mirror_capture_irregular_segments_total", "counter",
		     "Segments showing loss or reordering on the path: duplicate (a "
		     "retransmission carrying no new byte), out_of_order (arrived before an "
		     "earlier byte and held until the hole filled).");
	ok &= render_labelled(b, "mirror_capture_irregular_segments_total", "kind", irregular_kinds,
			      sizeof(irregular_kinds) / sizeof(irregular_kinds[0]), c);
	ok &= header(b, "mirror_capture_undecoded_sessions_total", "counter",
		     "Encrypted sessions that could not be decoded: tls_off (TLS while --tls is "
		     "off), no_probe (the server's libssl could not be probed: linked statically, "
		     "another TLS library, replaced on disk), no_plaintext (probed, but no "
		     "plaintext came: a session older than the probes that stayed idle, or calls "
		     "the probes missed), gss (GSS encryption).");
	ok &= render_labelled(b, "mirror_capture_undecoded_sessions_total", "reason",
			      undecoded_reasons,
			      sizeof(undecoded_reasons) / sizeof(undecoded_reasons[0]), c);
	ok &= header(b, "mirror_capture_skipped_bytes_total", "counter",
		     "Stream bytes the decoders skipped while hunting for a message boundary.");
	ok &= buf_printf(b, "mirror_capture_skipped_bytes_total %llu\n",
			 (unsigned long long)cap_field(c, CAP(skipped_bytes)));
	return ok;
}

static bool render_process(struct buf *b, const struct stats_process *p, const char *version)
{
	bool ok = true;

	ok &= header(b, "process_cpu_seconds_total", "counter",
		     "Total user and system CPU time spent in seconds.");
	ok &= buf_printf(b, "process_cpu_seconds_total %.3f\n", p->cpu_seconds);
	ok &= header(b, "process_resident_memory_bytes", "gauge", "Resident memory size in bytes.");
	ok &= buf_printf(b, "process_resident_memory_bytes %llu\n",
			 (unsigned long long)p->resident_bytes);
	ok &= header(b, "process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.");
	ok &= buf_printf(b, "process_virtual_memory_bytes %llu\n",
			 (unsigned long long)p->virtual_bytes);
	ok &= header(b, "process_open_fds", "gauge", "Number of open file descriptors.");
	ok &= buf_printf(b, "process_open_fds %llu\n", (unsigned long long)p->open_fds);
	ok &= header(b, "process_max_fds", "gauge", "Maximum number of open file descriptors.");
	ok &= buf_printf(b, "process_max_fds %llu\n", (unsigned long long)p->max_fds);
	ok &= header(b, "process_start_time_seconds", "gauge",
		     "Start time of the process since unix epoch in seconds.");
	ok &= buf_printf(b, "process_start_time_seconds %.3f\n", p->start_time_seconds);
	ok &= header(b, "mirror_build_info", "gauge", "pgshadow build information (always 1).");
	ok &= buf_printf(b, "mirror_build_info{version=\"");
	ok &= buf_append_label_value(b, version);
	ok &= buf_printf(b, "\"} 1\n");
	return ok;
}

static bool gauge_or_counter(struct buf *b, const char *name, const char *type, const char *help,
			     double v)
{
	return header(b, name, type, help) && buf_printf(b, "%s %.17g\n", name, v);
}

/* The seed's metric tables (names and types are the user's contract) and ours. */
static bool render_mirror(struct buf *b, struct stats *st, struct stats_db **dbs, uint32_t n,
			  uint64_t now_ns)
{
	struct stats_mirror_snapshot m;
	bool ok = true;
	uint32_t i;

	stats_mirror_snapshot(st, now_ns, &m);
	ok &= gauge_or_counter(b, "mirror_requests_total", "counter",
			       "Requests of mirrored databases the source completed (each ends in "
			       "one outcome: not sampled, skipped, dropped, mirrored, error, or in "
			       "flight).",
			       m.total);
	ok &= gauge_or_counter(b, "mirror_requests_mirrored", "counter",
			       "Requests replayed on the mirror with the expected outcome.",
			       m.mirrored);
	ok &= gauge_or_counter(b, "mirror_requests_dropped", "counter",
			       "Requests dropped: queue full, or their transaction could not be "
			       "replayed whole (mirror_dropped_requests_total has the reasons).",
			       m.dropped);
	ok &= gauge_or_counter(b, "mirror_errors_connection", "counter",
			       "Requests lost to mirror connection errors.",
			       m.errors[STATS_ERR_CONNECTION]);
	ok &= gauge_or_counter(
	    b, "mirror_errors_query", "counter",
	    "Requests the mirror answered with an error the source did not return.",
	    m.errors[STATS_ERR_QUERY]);
	ok &= gauge_or_counter(b, "mirror_errors_timeout", "counter",
			       "Requests cancelled by the mirror's statement_timeout (57014).",
			       m.errors[STATS_ERR_TIMEOUT]);
	ok &= gauge_or_counter(b, "mirror_errors_buffer_full", "counter",
			       "Requests dropped because their session's queue was full (= "
			       "mirror_requests_dropped).",
			       m.errors[STATS_ERR_BUFFER_FULL]);
	ok &= header(b, "mirror_errors_total", "counter", "Mirror errors by type.");
	for (i = 0; i < STATS_ERR_MAX; i++)
		ok &= buf_printf(b, "mirror_errors_total{error_type=\"%s\"} %llu\n",
				 stats_error_type_names[i], (unsigned long long)m.errors[i]);
	ok &= gauge_or_counter(b, "mirror_requests_in_flight", "gauge",
			       "Requests submitted for replay whose outcome is not known yet.",
			       m.in_flight);
	ok &= gauge_or_counter(b, "mirror_latency_avg_ms", "gauge",
			       "Average mirror latency over the current reset interval.",
			       m.latency_avg_ms);
	ok &= gauge_or_counter(b, "mirror_latency_max_ms", "gauge",
			       "Largest mirror latency over the current reset interval.",
			       m.latency_max_ms);
	ok &= gauge_or_counter(b, "mirror_consecutive_errors", "gauge",
			       "Mirror errors since the last success.", m.consecutive_errors);
	ok &= gauge_or_counter(b, "mirror_last_success_seconds_ago", "gauge",
			       "Seconds since the last mirrored request (since start before the "
			       "first).",
			       m.last_success_seconds_ago);
	ok &= gauge_or_counter(b, "mirror_buffer_utilization", "gauge",
			       "Fill of the fullest per-session replay queue, percent.",
			       m.buffer_utilization);
	ok &= gauge_or_counter(b, "mirror_replay_order_waits_total", "counter",
			       "Times a request waited for an earlier one (causal order).",
			       m.order_waits);
	ok &= gauge_or_counter(b, "mirror_replay_lock_waits_total", "counter",
			       "Of the order waits, those for lock order: a write waited for "
			       "another session's transaction end that fell while it ran on the "
			       "source.",
			       m.lock_waits);
	ok &= gauge_or_counter(b, "mirror_replay_order_timeouts_total", "counter",
			       "Order waits given up at their bound (the request went ahead "
			       "unordered).",
			       m.order_timeouts);
	ok &= gauge_or_counter(b, "mirror_queue_bytes", "gauge",
			       "Bytes of requests waiting for or running on the mirror, all "
			       "sessions (bounded by mirror_queue_mb).",
			       m.queue_bytes);
	ok &= gauge_or_counter(b, "mirror_queue_bytes_peak", "gauge",
			       "Largest mirror_queue_bytes since the agent started.",
			       m.queue_bytes_peak);
	ok &= header(b, "mirror_pool_connections", "gauge",
		     "Pooled mirror connections by state: in_use (borrowed by a session; pinned "
		     "and connecting are part of it), idle, pinned (kept by one session until it "
		     "ends), connecting.");
	for (i = 0; i < STATS_POOL_STATE_MAX; i++)
		ok &= buf_printf(b, "mirror_pool_connections{state=\"%s\"} %llu\n",
				 stats_pool_state_names[i],
				 (unsigned long long)m.pool.connections[i]);
	ok &= gauge_or_counter(b, "mirror_pool_waiting", "gauge",
			       "Source sessions waiting for a pooled mirror connection.",
			       m.pool.waiting);
	ok &= gauge_or_counter(b, "mirror_pool_connections_peak", "gauge",
			       "Most mirror connections open at once since the agent started "
			       "(bounded by mirror_max_connections).",
			       m.pool.peak);
	ok &= header(b, "mirror_units_aborted_total", "counter",
		     "Mirror transactions the agent rolled back because their source "
		     "transaction could not be replayed whole, by reason.");
	for (i = 0; i < STATS_ABORT_MAX; i++)
		ok &= buf_printf(b, "mirror_units_aborted_total{reason=\"%s\"} %llu\n",
				 stats_abort_reason_names[i], (unsigned long long)m.aborted[i]);
	ok &= gauge_or_counter(b, "mirror_replay_pipelined_total", "counter",
			       "Requests sent to the mirror behind another one still in flight on "
			       "the same connection (a session's backlog, pipelined).",
			       m.pipelined);
	ok &= header(b, "mirror_replay_answers_timed_total", "counter",
		     "Mirror answers by the clock that ended their latency: kernel (the "
		     "receive time of their last segment) or read (the replay thread's "
		     "wakeup: no receive time for the connection).");
	ok &= buf_printf(b, "mirror_replay_answers_timed_total{clock=\"kernel\"} %llu\n",
			 (unsigned long long)m.answers_kernel_timed);
	ok &= buf_printf(b, "mirror_replay_answers_timed_total{clock=\"read\"} %llu\n",
			 (unsigned long long)m.answers_read_timed);
	ok &= gauge_or_counter(
	    b, "mirror_replay_converted_total", "counter",
	    "Simple-protocol statements sent as unnamed extended-protocol statements to "
	    "pipeline a backlog (libpq pipelines only the extended protocol).",
	    m.converted);
	ok &= gauge_or_counter(
	    b, "mirror_replay_raised_total", "counter",
	    "Requests the source failed because of other sessions (40001 serialization "
	    "failure, 40P01 deadlock victim, 55P03 lock not available): not run on the mirror, "
	    "their SQLSTATE raised there instead, so the transaction aborts as on the source.",
	    m.raised);
	ok &= gauge_or_counter(b, "mirror_statements_recovered_total", "counter",
			       "Statements prepared before capture began whose text was recovered "
			       "from the source's pg_stat_activity (--source-dsn); their later "
			       "Executes are replayed.",
			       atomic_load_explicit(&st->mirror.recovered, RELAXED));
	ok &= header(b, "mirror_statements_unrecovered_total", "counter",
		     "Lookups of the text of a statement prepared before capture began that did "
		     "not recover it, by reason (no_source_dsn: once per session and statement).");
	for (i = 0; i < STATS_UNRECOVERED_MAX; i++)
		ok &= buf_printf(
		    b, "mirror_statements_unrecovered_total{reason=\"%s\"} %llu\n",
		    stats_unrecovered_reason_names[i],
		    (unsigned long long)atomic_load_explicit(&st->mirror.unrecovered[i], RELAXED));
	ok &= gauge_or_counter(b, "mirror_readiness_ready", "gauge",
			       "1 when the last readiness evaluation said READY, else 0.",
			       atomic_load_explicit(&st->mirror.ready, RELAXED));
	ok &= gauge_or_counter(b, "mirror_readiness_confidence_score", "gauge",
			       "Confidence score (0-100) of the last readiness evaluation.",
			       atomic_load_explicit(&st->mirror.score, RELAXED));
	ok &= header(b, "mirror_alert_active", "gauge",
		     "1 while a threshold alert is active (consecutive_errors, latency).");
	for (i = 0; i < READINESS_ALERTS; i++)
		ok &=
		    buf_printf(b, "mirror_alert_active{alert=\"%s\"} %d\n", readiness_alert_name(i),
			       atomic_load_explicit(&st->mirror.alert[i], RELAXED) ? 1 : 0);

	ok &= db_counter(b, "mirror_database_requests",
			 "Requests of the database submitted for mirroring.", dbs, n,
			 offsetof(struct stats_db, mirror_requests));
	ok &= db_counter(b, "mirror_database_errors", "Mirror errors of the database.", dbs, n,
			 offsetof(struct stats_db, mirror_errors));
	ok &= header(b, "mirror_database_latency_ms", "gauge",
		     "Average mirror latency of the database over the current reset interval.");
	pthread_mutex_lock(&st->mirror.win_lock);
	for (i = 0; i < n; i++) {
		ok &= db_label(b, "mirror_database_latency_ms", "", dbs[i]);
		ok &= buf_printf(b, "\"} %.6f\n",
				 dbs[i]->win_latency_count
				     ? dbs[i]->win_latency_sum_ns / 1e6 / dbs[i]->win_latency_count
				     : 0.0);
	}
	pthread_mutex_unlock(&st->mirror.win_lock);
	ok &= db_counter(b, "mirror_requests_not_sampled_total",
			 "Requests not selected by mirror_exposure, by database.", dbs, n,
			 offsetof(struct stats_db, mirror_not_sampled));
	ok &= db_reasons(b, "mirror_requests_skipped_total",
			 "Requests not replayed, by database and reason.", dbs, n,
			 offsetof(struct stats_db, mirror_skipped), "reason",
			 stats_skip_reason_names, STATS_SKIP_MAX, false);
	ok &= db_reasons(b, "mirror_dropped_requests_total",
			 "Requests dropped, by database and reason (their sum is "
			 "mirror_requests_dropped).",
			 dbs, n, offsetof(struct stats_db, mirror_dropped), "reason",
			 stats_drop_reason_names, STATS_DROP_MAX, false);
	ok &= db_counter(b, "mirror_compared_total",
			 "Mirrored answers compared with the source's, by database.", dbs, n,
			 offsetof(struct stats_db, mirror_compared));
	ok &= db_reasons(b, "mirror_mismatches_total",
			 "Mirrored answers that differed from the source's, by database and kind "
			 "(tag, rowcount, sqlstate, rows; one answer can differ in several).",
			 dbs, n, offsetof(struct stats_db, mirror_mismatches), "kind",
			 stats_mismatch_kind_names, STATS_MISMATCH_MAX, true);
	ok &= header(b, "mirror_latency_seconds", "histogram",
		     "Mirror latency, from sending a request to its last result, by database.");
	for (i = 0; i < n; i++)
		ok &=
		    render_histogram(b, "mirror_latency_seconds", dbs[i], &dbs[i]->mirror_latency);
	ok &= header(b, "mirror_replay_delay_seconds", "histogram",
		     "Source completion to mirror completion, by database.");
	for (i = 0; i < n; i++)
		ok &= render_histogram(b, "mirror_replay_delay_seconds", dbs[i],
				       &dbs[i]->replay_delay);
	return ok;
}

void stats_set_resolver(struct stats *st, const uint64_t v[STATS_RESOLVER_MAX])
{
	int i;

	for (i = 0; i < STATS_RESOLVER_MAX; i++)
		atomic_store_explicit(&st->resolver[i], v[i], RELAXED);
	atomic_store(&st->resolver_set, true);
}

void stats_set_fingerprint(struct stats *st, const uint64_t v[STATS_FP_MAX])
{
	int i;

	for (i = 0; i < STATS_FP_MAX; i++)
		atomic_store_explicit(&st->fingerprint[i], v[i], RELAXED);
	atomic_store(&st->fingerprint_set, true);
}

void stats_set_queries(struct stats *st, stats_queries_fn fn, void *ctx)
{
	st->queries = fn;
	st->queries_ctx = ctx;
}

static bool render_queries(struct buf *b, struct stats *st)
{
	uint64_t v[STATS_QS_MAX] = {0};
	size_t cap = st->max_dbs + 1, n, i;
	char(*names)[64] = calloc(cap, sizeof(*names));
	uint64_t *regressed = calloc(cap, sizeof(*regressed));
	bool ok = names && regressed;

	n = ok ? st->queries(st->queries_ctx, v, names, regressed, cap) : 0;
	ok &= header(b, "mirror_regressed_statements", "gauge",
		     "Statements that regress on the mirror (SHOW MIRROR QUERIES), per database: "
		     "slower past mirror_max_p99_ratio, failing only there, or answering "
		     "differently.");
	for (i = 0; ok && i < n && i < cap; i++) {
		ok &= buf_printf(b, "mirror_regressed_statements{database=\"");
		ok &= buf_append_label_value(b, names[i]);
		ok &= buf_printf(b, "\"} %llu\n", (unsigned long long)regressed[i]);
	}
	ok &= gauge_or_counter(b, "mirror_query_stats_entries", "gauge",
			       "Statements compared one by one now (max_query_stats bounds them).",
			       v[STATS_QS_ENTRIES]);
	ok &= gauge_or_counter(b, "mirror_query_stats_evictions_total", "counter",
			       "Statements forgotten to make room (max_query_stats).",
			       v[STATS_QS_EVICTIONS]);
	ok &= gauge_or_counter(b, "mirror_query_stats_unparsed_total", "counter",
			       "Mirrored requests whose text libpg_query did not parse or was not "
			       "known: counted in one entry per database that shows no text.",
			       v[STATS_QS_UNPARSED]);
	free(names);
	free(regressed);
	return ok;
}

static bool render_aux(struct buf *b, struct stats *st)
{
	static const char *const lookups[] = {"resolved", "not_found", "queue_full"};
	static const char *const cache[] = {"hit", "miss", "eviction"};
	static const char *const unparsed[] = {"parse_error", "too_deep"};
	bool ok = true;
	int i;

	if (atomic_load(&st->resolver_set)) {
		ok &= header(b, "mirror_resolver_lookups_total", "counter",
			     "--source-dsn: sessions whose start was missed looked up in "
			     "pg_stat_activity, by result.");
		for (i = 0; i < 3; i++)
			ok &= buf_printf(b, "mirror_resolver_lookups_total{result=\"%s\"} %llu\n",
					 lookups[i],
					 (unsigned long long)atomic_load(&st->resolver[i]));
		ok &= gauge_or_counter(b, "mirror_resolver_queries_total", "counter",
				       "--source-dsn: queries of pg_stat_activity.",
				       atomic_load(&st->resolver[STATS_RESOLVER_QUERIES]));
		ok &= gauge_or_counter(b, "mirror_resolver_query_errors_total", "counter",
				       "--source-dsn: those that failed.",
				       atomic_load(&st->resolver[STATS_RESOLVER_QUERY_ERRORS]));
		ok &= gauge_or_counter(b, "mirror_resolver_reconnects_total", "counter",
				       "--source-dsn: connections to the source made again.",
				       atomic_load(&st->resolver[STATS_RESOLVER_RECONNECTS]));
	}
	if (atomic_load(&st->fingerprint_set)) {
		ok &= header(b, "mirror_fingerprint_cache_total", "counter",
			     "Statement classification cache (libpg_query parses), by result.");
		for (i = 0; i < 3; i++)
			ok &= buf_printf(b, "mirror_fingerprint_cache_total{result=\"%s\"} %llu\n",
					 cache[i],
					 (unsigned long long)atomic_load(&st->fingerprint[i]));
		ok &= header(b, "mirror_fingerprint_unparsed_total", "counter",
			     "Statement texts libpg_query could not classify (replayed as writes "
			     "of unknown class), by reason.");
		for (i = 0; i < 2; i++)
			ok &=
			    buf_printf(b, "mirror_fingerprint_unparsed_total{reason=\"%s\"} %llu\n",
				       unparsed[i],
				       (unsigned long long)atomic_load(
					   &st->fingerprint[STATS_FP_PARSE_ERRORS + i]));
	}
	return ok;
}

bool stats_render(struct stats *st, const struct stats_process *proc, const char *version,
		  uint64_t now_ns, struct buf *out)
{
	struct stats_db *dbs[st->max_dbs + 1];
	uint32_t n = db_snapshot(st, dbs, st->max_dbs + 1);
	bool ok = true;

	ok &= render_source(out, dbs, n);
	if (st->mirror.enabled)
		ok &= render_mirror(out, st, dbs, n, now_ns);
	ok &= render_capture(out, st);
	ok &= render_aux(out, st);
	if (st->mirror.enabled && st->queries)
		ok &= render_queries(out, st);
	if (proc)
		ok &= render_process(out, proc, version);
	return ok;
}
