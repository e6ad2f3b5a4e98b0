/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * readiness: the migration-readiness verdict (DESIGN.md "Readiness") and the threshold
 * alerts. A pure core: plain numbers in, a report out; no clocks, no locks, no stats.
 * The shell fills a struct readiness_input (stats_readiness_input does it from the
 * agent's stats), evaluates, and renders the report as text (GET /readiness,
 * SHOW MIRROR READINESS) or JSON (GET /readiness?format=json).
 *
 * Criteria (each one passes, fails, or has no data yet; "no data" deducts nothing, says
 * so in its reason, and does not stop READY):
 *   error_rate  (errors_connection + errors_query + errors_timeout) / attempted
 *               <= max_error_rate; attempted = mirrored + those errors. No data: nothing
 *               attempted. Deducts 30.
 *   latency     mirror average <= max_latency_ms, and mirror p99 <= max_p99_ratio x source
 *               p99 over the same requests unless |mirror p99 - source p99| <
 *               latency_floor_ms. No data: no mirror latency; the p99 part alone has no
 *               data while either p99 is missing. Deducts 20.
 *   runtime     runtime_seconds (since the agent started or the last RESET MIRROR STATS)
 *               >= min_runtime_hours. Deducts 25.
 *   volume      attempted >= min_requests. Deducts 25.
 *   streak      consecutive_successes >= consecutive_success. Deducts 10.
 *   coverage    dropped / selected <= max_drop_rate. No data: nothing selected. Deducts 10.
 *   parity      mismatched / compared <= max_mismatch_rate. No data: nothing compared
 *               (e.g. mirror_compare = none). Deducts 30.
 * Score = 100 - deductions, clamped to [0, 100]. READY only when no criterion fails.
 *
 * The Recommendation is the seed's decision matrix, advice only. Band edges are lower
 * bounds that must be reached: score >= 95 "Highly Confident", >= 80 "Confident", >= 60
 * "Moderate", >= 40 "Low", else "Very Low" — a fractional score never rounds up into a
 * better band (94.9 is "Confident"). With the fixed integer deductions the score is
 * always a whole number; the rule is there so the bands stay total over [0, 100].
 *
 * Wiring (the shell, e.g. main's once-a-second tick; all calls are thread-safe on the
 * stats side, the alert state belongs to the tick's thread):
 *	stats_readiness_input(st, now, &in);
 *	readiness_evaluate(&in, &criteria, &report);
 *	stats_set_readiness(st, report.ready, report.score);
 *	stats_alert_input(st, now, &ain);
 *	n = readiness_alerts_update(&alerts, &alert_cfg, &ain, ev);
 *	for each ev[i]: log ev[i].message (WARN when FIRED, INFO when CLEARED) and
 *		stats_set_alert(st, ev[i].alert, ev[i].change == READINESS_ALERT_FIRED);
 * GET /readiness evaluates afresh the same way and answers readiness_render_text
 * (text/plain; charset=utf-8) or, for Accept: application/json or ?format=json,
 * readiness_render_json (application/json); status 200 either way (the verdict is in
 * the body: "Status: READY" / "ready": true), so `pgshadow readiness` can tell "NOT
 * READY" (exit 1) from "cannot reach the agent" (exit 2).
 */
#ifndef PGSHADOW_READINESS_H
#define PGSHADOW_READINESS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"

/* The thresholds (config keys mirror_<name>; defaults in readiness_criteria_default). */
struct readiness_criteria {
	double max_error_rate;		  /* 0.01 */
	double max_latency_ms;		  /* 1000 */
	double min_runtime_hours;	  /* 24 */
	uint64_t min_requests;		  /* 100000 */
	uint64_t consecutive_success;	  /* 10000 */
	double max_p99_ratio;		  /* 2.0 */
	double latency_floor_ms;	  /* 5 */
	double max_drop_rate;		  /* 0.01 */
	double max_mismatch_rate;	  /* 0.001 */
	int64_t max_regressed_statements; /* -1: not judged */
};

void readiness_criteria_default(struct readiness_criteria *c);

/*
 * What readiness is computed from: the readiness window (since the agent started or the
 * last RESET MIRROR STATS). Latencies are milliseconds; NaN means "no data".
 */
/* One of the top regressions (SHOW MIRROR QUERIES' first rows). */
#define READINESS_TOP 5
struct readiness_regression {
	char database[64];
	char query[121];  /* normalized text cut to a line */
	char why[48];	  /* "slower", "fails_on_mirror 42703", "mismatch", comma-joined */
	double p99_ratio; /* NaN: no latency on both sides */
	uint64_t calls;
	double impact_ms;
	char plan[240]; /* the mirror's plan (--explain-regressions), "" if none */
};

struct readiness_input {
	uint64_t total;	   /* requests of mirrored databases the source completed */
	uint64_t selected; /* total - not_sampled: requests chosen for mirroring */
	uint64_t mirrored; /* replayed with the expected outcome */
	uint64_t errors_connection, errors_query, errors_timeout;
	uint64_t dropped;		     /* queue full (buffer_full) */
	uint64_t compared, mismatched;	     /* answers compared; those that differed */
	uint64_t consecutive_successes;	     /* mirrored since the last error */
	double runtime_seconds;		     /* age of the readiness window */
	double uptime_seconds;		     /* since the agent started */
	double mirror_avg_ms, mirror_p99_ms; /* over the mirrored requests */
	double source_avg_ms, source_p99_ms; /* the same requests on the source */
	int64_t regressed_statements;	     /* -1: not known (max_query_stats = 0) */
	uint32_t n_top;
	struct readiness_regression top[READINESS_TOP];
};

enum readiness_criterion_id {
	READINESS_ERROR_RATE = 0,
	READINESS_LATENCY,
	READINESS_RUNTIME,
	READINESS_VOLUME,
	READINESS_STREAK,
	READINESS_COVERAGE,
	READINESS_PARITY,
	READINESS_STATEMENTS, /* regressed statements (mirror_max_regressed_statements) */
	READINESS_CRITERIA,
};

enum readiness_verdict {
	READINESS_PASS = 0,
	READINESS_FAIL,
	READINESS_NO_DATA,
};

/* "pass", "fail", "no_data" */
const char *readiness_verdict_name(enum readiness_verdict v);

#define READINESS_REASON_MAX 256

struct readiness_criterion {
	const char *name; /* error_rate, latency, runtime, volume, streak, coverage, parity */
	enum readiness_verdict verdict;
	double deduction;		   /* points taken from the score (0 unless it failed) */
	double value;			   /* what was measured (NaN: no data); unit as threshold */
	double threshold;		   /* the criterion's limit */
	char reason[READINESS_REASON_MAX]; /* one human sentence */
};

/* Derived numbers shown in the report's Metrics section (NaN: no data). */
struct readiness_metrics {
	uint64_t attempted;
	double error_rate, success_rate; /* fractions of attempted */
	double drop_rate, mismatch_rate; /* of selected, of compared */
	double runtime_hours, uptime_hours;
};

struct readiness_report {
	char database[64]; /* "" for the whole agent; else the report of this database */
	bool ready;
	double score;		    /* 0-100 */
	const char *recommendation; /* decision matrix: "Highly Confident" ... "Very Low" */
	const char *action;	    /* its Action column */
	struct readiness_input input;
	struct readiness_criteria criteria;
	struct readiness_metrics metrics;
	struct readiness_criterion criterion[READINESS_CRITERIA];
};

/* Evaluates in against c into *out (every field written). Pure; never fails. */
void readiness_evaluate(const struct readiness_input *in, const struct readiness_criteria *c,
			struct readiness_report *out);

/* The decision matrix: recommendation and action for a score (see the bands above). */
void readiness_recommendation(double score, const char **recommendation, const char **action);

/*
 * Appends the text report (the seed's show_mirror_readiness: Status, Confidence Score,
 * Recommendation, Metrics, Assessment with one marked line per criterion) to out, lines
 * ending in '\n'. Returns false when out refused to grow.
 */
bool readiness_render_text(const struct readiness_report *r, struct buf *out);

/* Appends the report as one JSON object (cJSON; every number and reason; "no data"
 * numbers are null). Returns false on ENOMEM or when out refused to grow. */
bool readiness_render_json(const struct readiness_report *r, struct buf *out);

/*
 * Reads a report readiness_render_json wrote back into *out (every field
 * readiness_render_text uses: verdict, score, recommendation, metrics, each criterion's
 * verdict, numbers and reason), so a client can print the text report of the very
 * answer it judged (`pgshadow readiness`). Strings point to static text or into out.
 * Returns false, with a one-line reason in err, when text is not such a report.
 */
bool readiness_parse_json(const char *text, struct readiness_report *out, char *err, size_t errlen);

/*
 * Threshold alerts (issue 6 item 5). The shell samples stats every tick, calls
 * readiness_alerts_update, logs one WARN line per event and sets
 * mirror_alert_active{alert} (stats_set_alert).
 */
enum readiness_alert {
	READINESS_ALERT_CONSECUTIVE_ERRORS = 0, /* consecutive errors >= mirror_error_threshold */
	READINESS_ALERT_LATENCY,		/* window p99 > mirror_latency_threshold_ms */
	READINESS_ALERTS,
};

/* The label value of mirror_alert_active{alert}. */
static inline const char *readiness_alert_name(enum readiness_alert a)
{
	return a == READINESS_ALERT_LATENCY ? "latency" : "consecutive_errors";
}

struct readiness_alert_config {
	uint64_t error_threshold;    /* mirror_error_threshold (100); 0 disables */
	double latency_threshold_ms; /* mirror_latency_threshold_ms (5000); 0 disables */
};

struct readiness_alert_input {
	uint64_t consecutive_errors; /* errors (drops included) since the last success */
	double window_p99_ms;	     /* mirror p99 over the current reset interval; NaN: none */
};

/* Which alerts are active now. Zero-initialise: nothing active. Owned by one thread. */
struct readiness_alert_state {
	bool active[READINESS_ALERTS];
};

enum readiness_alert_change { READINESS_ALERT_FIRED = 1, READINESS_ALERT_CLEARED };

struct readiness_alert_event {
	enum readiness_alert alert;
	enum readiness_alert_change change;
	double value, threshold;
	char message[READINESS_REASON_MAX]; /* the log line, without a level prefix */
};

/*
 * Moves the alert state to what in says and reports each change: an alert fires when it
 * crosses its threshold and clears when it is back under it, so a lasting condition
 * gives one FIRED and one CLEARED, never one per request. A disabled alert (threshold 0)
 * that was active clears. The latency alert keeps its state while the window has no
 * samples (NaN): nothing says it recovered. Returns the number of events written to
 * events (at most READINESS_ALERTS).
 */
int readiness_alerts_update(struct readiness_alert_state *s,
			    const struct readiness_alert_config *cfg,
			    const struct readiness_alert_input *in,
			    struct readiness_alert_event events[READINESS_ALERTS]);

#endif /* PGSHADOW_READINESS_H */
