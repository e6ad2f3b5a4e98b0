/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * querystats: per-statement comparison of source and mirror (pure; no locking: the caller
 * serialises, see replay.c). Which statements get slower, fail, or answer differently on
 * the mirror.
 *
 * An entry is keyed by (database, libpg_query fingerprint), so `... WHERE id = 1` and
 * `... WHERE id = 2` are one statement. Its text is the first text seen, normalized by
 * the caller's function (pg_query_normalize: every constant replaced by $n, comments and
 * runs of whitespace dropped, cut to QUERYSTATS_TEXT_MAX bytes): never a literal value.
 * A text libpg_query cannot parse (fingerprint 0) goes to its database's "unparsed"
 * entry, which shows no text at all.
 *
 * Every observation is one mirrored request, paired: the source's figures cover the
 * requests the replay finished (sampled, admitted, given an outcome), not every request
 * the source served, so both sides count the same executions.
 *   - calls: the source's and, of them, those the mirror answered (a query error
 *     included; connection errors, timeouts, drops and skips are not answers);
 *   - errors per side, by SQLSTATE class (the first QUERYSTATS_CLASSES classes seen
 *     have their own count, the rest go to "other"); mirror_only: the mirror failed where
 *     the source did not fail the same way;
 *   - mismatches by kind (bits of compare.h's kinds, QUERYSTATS_KINDS of them);
 *   - latency per side in a log-bucketed histogram (four buckets per octave from 1 µs:
 *     a quantile is known within 19%, the same on both sides), and the paired sum of
 *     (mirror - source) over answered calls: the extra time.
 *
 * A statement regresses when its mirror p99 is more than max_p99_ratio times its source
 * p99 and more than latency_floor_ms above it, over at least min_calls answered calls; or
 * when it failed on the mirror only; or when an answer mismatched. Its impact is calls x
 * extra time per call (ms): the rows sort by it.
 *
 * Bounded: at most max_entries entries (1.4 KiB each, taken in order from one zeroed allocation, so
 * only the ones used are resident: 5,000 take up to 7 MiB). A new statement when full evicts the
 * least used of QUERYSTATS_EVICT_SAMPLE entries (fewest calls; a regressed one only when all
 * sampled are), counted in evictions.
 */
#ifndef PGSHADOW_QUERYSTATS_H
#define PGSHADOW_QUERYSTATS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "plan.h"

#define QUERYSTATS_TEXT_MAX	200 /* bytes of normalized text kept (then "...") */
#define QUERYSTATS_DB_MAX	64  /* a database name (NAMEDATALEN) */
#define QUERYSTATS_BUCKETS	112 /* 1 µs .. 2^27.75 µs (~4 min), four per octave */
#define QUERYSTATS_CLASSES	4   /* SQLSTATE classes counted one by one, per side */
#define QUERYSTATS_KINDS	4   /* mismatch kinds (compare.h) */
#define QUERYSTATS_EVICT_SAMPLE 8
#define QUERYSTATS_PLANS	16 /* mirror plans kept (--explain-regressions), newest */

struct querystats_config {
	uint32_t max_entries;	 /* max_query_stats (default 5000) */
	uint64_t min_calls;	 /* mirror_min_statement_calls (default 50) */
	double max_p99_ratio;	 /* mirror_max_p99_ratio (default 2) */
	double latency_floor_ms; /* mirror_latency_floor_ms (default 5) */
};

void querystats_config_default(struct querystats_config *c);

/*
 * Writes text's normalized form into out (cap bytes, NUL-terminated, cut at a character
 * boundary); false when it cannot (then the entry shows no text). The agent's is
 * fingerprint_normalize.
 */
typedef bool (*querystats_normalize_fn)(const char *text, char *out, size_t cap);

/* One mirrored request with both outcomes. */
struct querystats_obs {
	const char *database;
	uint64_t fingerprint; /* 0: did not parse (the database's unparsed entry) */
	const char *text;     /* normalized when its entry is made; may be NULL */
	uint64_t source_ns;
	bool source_error;
	const char *source_sqlstate; /* "" or NULL when unknown */
	bool mirror_answered;	     /* the mirror answered (success or query error) */
	uint64_t mirror_ns;
	bool mirror_error;
	const char *mirror_sqlstate;
	bool mirror_only; /* the mirror failed where the source did not fail the same way */
	unsigned int mismatch_kinds; /* bits (1 << kind), kind < QUERYSTATS_KINDS */
};

struct querystats_class {
	char cls[3]; /* the SQLSTATE's first two characters, "" = other / unknown */
	uint64_t n;
};

/* Why a statement regresses (bits). */
enum {
	QUERYSTATS_SLOWER = 1 << 0,
	QUERYSTATS_FAILS = 1 << 1,
	QUERYSTATS_MISMATCH = 1 << 2,
};

/* An entry as shown (quantiles in ms; NaN when that side has no calls). */
struct querystats_row {
	char database[QUERYSTATS_DB_MAX];
	uint64_t fingerprint; /* 0: the unparsed entry */
	char text[QUERYSTATS_TEXT_MAX + 4];
	uint64_t source_calls, mirror_calls;
	uint64_t source_errors, mirror_errors, mirror_only_errors;
	struct querystats_class source_classes[QUERYSTATS_CLASSES + 1]; /* last: other */
	struct querystats_class mirror_classes[QUERYSTATS_CLASSES + 1];
	char mirror_only_sqlstate[6]; /* the last one */
	uint64_t mismatches[QUERYSTATS_KINDS];
	double source_p50_ms, source_p95_ms, source_p99_ms;
	double mirror_p50_ms, mirror_p95_ms, mirror_p99_ms;
	double p99_ratio;	     /* mirror p99 / source p99 (NaN without both) */
	double extra_ms;	     /* mean (mirror - source) over answered calls (NaN: none) */
	double impact_ms;	     /* calls x extra time per call, >= 0 */
	unsigned int regressed;	     /* QUERYSTATS_* bits; 0: does not regress */
	char plan[PLAN_SUMMARY_MAX]; /* the mirror's plan (plan.h), "" if none */
};

struct querystats_counts {
	uint64_t entries, evictions;
	uint64_t unparsed_calls; /* observations of texts that did not parse */
};

struct querystats;

/* NULL on ENOMEM, or when max_entries is 0 (EINVAL). normalize may be NULL (no text). */
struct querystats *querystats_new(const struct querystats_config *cfg, querystats_normalize_fn fn);

/* Judges with th's min_calls, max_p99_ratio and latency_floor_ms from now on (they are
 * reloadable; max_entries is not). */
void querystats_set_thresholds(struct querystats *qs, const struct querystats_config *th);

/* Records one observation (a database name longer than QUERYSTATS_DB_MAX - 1 is cut). */
void querystats_record(struct querystats *qs, const struct querystats_obs *o);

/* Keeps a plan summary of a statement (the newest QUERYSTATS_PLANS are kept); its rows
 * show it. */
void querystats_set_plan(struct querystats *qs, const char *database, uint64_t fingerprint,
			 const char *plan);

/* Has this statement a plan kept? */
bool querystats_has_plan(const struct querystats *qs, const char *database, uint64_t fingerprint);

/* Forgets every entry and plan (RESET MIRROR STATS); evictions keep counting. */
void querystats_reset(struct querystats *qs);

enum querystats_sort {
	QUERYSTATS_SORT_IMPACT = 0, /* regressed first, then by impact, then by calls */
	QUERYSTATS_SORT_CALLS,
	QUERYSTATS_SORT_RATIO, /* p99 ratio, highest first */
	QUERYSTATS_SORT_ERRORS,
};

/* "impact", "calls", "ratio", "errors" -> sort; false for anything else. */
bool querystats_sort_parse(const char *s, enum querystats_sort *out);

/*
 * Copies the rows of database (NULL: every database) sorted, the first cap of them, into
 * out; returns how many match (may exceed cap). out may be NULL when cap is 0.
 */
size_t querystats_rows(const struct querystats *qs, const char *database, enum querystats_sort sort,
		       struct querystats_row *out, size_t cap);

/* Regressed statements of one database (NULL: all). */
uint64_t querystats_regressed(const struct querystats *qs, const char *database);

/* Every database with entries, with its regressed statements (0 included), up to cap;
 * returns how many databases there are. */
size_t querystats_regressed_by_db(const struct querystats *qs, char (*names)[QUERYSTATS_DB_MAX],
				  uint64_t *counts, size_t cap);

void querystats_counts(const struct querystats *qs, struct querystats_counts *out);

/* Row helpers: the mismatches in all, and "42:3 22:1 other:2"-style class lists. */
uint64_t querystats_row_mismatched(const struct querystats_row *r);
void querystats_classes_text(const struct querystats_class *c, char *out, size_t cap);

/*
 * Appends rows as a JSON object {"sort": ..., "database": ..., "matching": n,
 * "statements": [...]} (cJSON). kind_names names the mismatch kinds. False on ENOMEM.
 */
bool querystats_render_json(const struct querystats_row *rows, size_t n, size_t matching,
			    const char *database, enum querystats_sort sort,
			    const char *const *kind_names, struct buf *out);

/* NULL-safe. */
void querystats_free(struct querystats *qs);

#endif /* PGSHADOW_QUERYSTATS_H */
