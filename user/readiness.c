// SPDX-License-Identifier: BSD-2-Clause
/* readiness.c — the migration-readiness verdict, its reports, the threshold alerts. See
 * include/readiness.h. */
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "readiness.h"

/* Points each failed criterion takes from the score (DESIGN.md "Readiness"). */
static const double deductions[READINESS_CRITERIA] = {
    [READINESS_ERROR_RATE] = 30, [READINESS_LATENCY] = 20,    [READINESS_RUNTIME] = 25,
    [READINESS_VOLUME] = 25,	 [READINESS_STREAK] = 10,     [READINESS_COVERAGE] = 10,
    [READINESS_PARITY] = 30,	 [READINESS_STATEMENTS] = 20,
};

static const char *const criterion_names[READINESS_CRITERIA] = {
    [READINESS_ERROR_RATE] = "error_rate", [READINESS_LATENCY] = "latency",
    [READINESS_RUNTIME] = "runtime",	   [READINESS_VOLUME] = "volume",
    [READINESS_STREAK] = "streak",	   [READINESS_COVERAGE] = "coverage",
    [READINESS_PARITY] = "parity",	   [READINESS_STATEMENTS] = "statements",
};

/* The seed's "Migration Decision Matrix": lower edge, recommendation, action. */
static const struct band {
	double min_score;
	const char *recommendation;
	const char *action;
} bands[] = {
    {95, "Highly Confident", "Safe to migrate immediately"},
    {80, "Confident", "Review specific issues, likely safe"},
    {60, "Moderate", "Address issues before migration"},
    {40, "Low", "Significant issues need resolution"},
    {0, "Very Low", "Do not migrate, major problems"},
};

void readiness_criteria_default(struct readiness_criteria *c)
{
	c->max_error_rate = 0.01;
	c->max_latency_ms = 1000;
	c->min_runtime_hours = 24;
	c->min_requests = 100000;
	c->consecutive_success = 10000;
	c->max_p99_ratio = 2.0;
	c->latency_floor_ms = 5;
	c->max_drop_rate = 0.01;
	c->max_mismatch_rate = 0.001;
	c->max_regressed_statements = -1;
}

const char *readiness_verdict_name(enum readiness_verdict v)
{
	switch (v) {
	case READINESS_PASS:
		return "pass";
	case READINESS_FAIL:
		return "fail";
	default:
		return "no_data";
	}
}

void readiness_recommendation(double score, const char **recommendation, const char **action)
{
	size_t i, n = sizeof(bands) / sizeof(bands[0]);

	/* lower edges are reached, never rounded up to: 94.9 stays "Confident" */
	for (i = 0; i < n - 1 && !(score >= bands[i].min_score); i++)
		;
	*recommendation = bands[i].recommendation;
	*action = bands[i].action;
}

/* Sets a criterion's verdict, value, threshold and reason (printf-style). */
static void judge(struct readiness_criterion *k, enum readiness_verdict v, double value,
		  double threshold, const char *fmt, ...) __attribute__((format(printf, 5, 6)));

static void judge(struct readiness_criterion *k, enum readiness_verdict v, double value,
		  double threshold, const char *fmt, ...)
{
	va_list ap;

	k->verdict = v;
	k->value = value;
	k->threshold = threshold;
	va_start(ap, fmt);
	vsnprintf(k->reason, sizeof(k->reason), fmt, ap);
	va_end(ap);
}

static double ratio(uint64_t part, uint64_t whole)
{
	return whole ? (double)part / whole : NAN;
}

static void eval_error_rate(const struct readiness_report *r, struct readiness_criterion *k)
{
	double rate = r->metrics.error_rate, max = r->criteria.max_error_rate;

	if (isnan(rate))
		judge(k, READINESS_NO_DATA, NAN, max,
		      "Error rate: no data yet (no request attempted on the mirror), deducts "
		      "nothing");
	else
		judge(k, rate > max ? READINESS_FAIL : READINESS_PASS, rate, max,
		      "Error rate %.3f%% %s threshold %.3f%%", rate * 100,
		      rate > max ? "exceeds" : "within", max * 100);
}

/* The p99 half of the latency criterion: appends its sentence to text; true when it
 * fails. *has_data says whether it could be judged at all. */
static bool p99_part(const struct readiness_report *r, char *text, size_t len, bool *has_data)
{
	const struct readiness_criteria *c = &r->criteria;
	double m = r->input.mirror_p99_ms, s = r->input.source_p99_ms;

	*has_data = !isnan(m) && !isnan(s);
	if (!*has_data) {
		snprintf(text, len, "p99: no %s data yet", isnan(m) ? "mirror" : "source");
		return false;
	}
	if (fabs(m - s) < c->latency_floor_ms) {
		snprintf(text, len, "p99 %.2fms vs source %.2fms: difference under the %gms floor",
			 m, s, c->latency_floor_ms);
		return false;
	}
	if (m > c->max_p99_ratio * s) {
		snprintf(text, len, "p99 %.2fms exceeds %gx source p99 %.2fms", m, c->max_p99_ratio,
			 s);
		return true;
	}
	snprintf(text, len, "p99 %.2fms within %gx source p99 %.2fms", m, c->max_p99_ratio, s);
	return false;
}

static void eval_latency(const struct readiness_report *r, struct readiness_criterion *k)
{
	double avg = r->input.mirror_avg_ms, max = r->criteria.max_latency_ms;
	char avg_text[96], p99_text[128];
	bool avg_fails = false, p99_fails, p99_data;

	p99_fails = p99_part(r, p99_text, sizeof(p99_text), &p99_data);
	if (isnan(avg) && !p99_data) {
		judge(k, READINESS_NO_DATA, NAN, max,
		      "Latency: no data yet (no request mirrored), deducts nothing");
		return;
	}
	if (isnan(avg)) {
		snprintf(avg_text, sizeof(avg_text), "Average latency: no data yet");
	} else {
		avg_fails = avg > max;
		snprintf(avg_text, sizeof(avg_text), "Average latency %.2fms %s threshold %gms",
			 avg, avg_fails ? "exceeds" : "within", max);
	}
	judge(k, avg_fails || p99_fails ? READINESS_FAIL : READINESS_PASS, avg, max, "%s; %s",
	      avg_text, p99_text);
}

static void eval_runtime(const struct readiness_report *r, struct readiness_criterion *k)
{
	double h = r->metrics.runtime_hours, min = r->criteria.min_runtime_hours;

	judge(k, h < min ? READINESS_FAIL : READINESS_PASS, h, min,
	      "Runtime %.2f hours %s %g hours", h, h < min ? "below minimum" : "meets minimum",
	      min);
}

static void eval_volume(const struct readiness_report *r, struct readiness_criterion *k)
{
	uint64_t n = r->metrics.attempted, min = r->criteria.min_requests;

	judge(k, n < min ? READINESS_FAIL : READINESS_PASS, (double)n, (double)min,
	      "Attempted requests %llu %s %llu", (unsigned long long)n,
	      n < min ? "below minimum" : "meets minimum", (unsigned long long)min);
}

static void eval_streak(const struct readiness_report *r, struct readiness_criterion *k)
{
	uint64_t n = r->input.consecutive_successes, min = r->criteria.consecutive_success;

	judge(k, n < min ? READINESS_FAIL : READINESS_PASS, (double)n, (double)min,
	      "Consecutive successes %llu %s %llu", (unsigned long long)n,
	      n < min ? "below required" : "meet required", (unsigned long long)min);
}

static void eval_coverage(const struct readiness_report *r, struct readiness_criterion *k)
{
	double rate = r->metrics.drop_rate, max = r->criteria.max_drop_rate;

	if (isnan(rate))
		judge(k, READINESS_NO_DATA, NAN, max,
		      "Drop rate: no data yet (no request selected for mirroring), deducts "
		      "nothing");
	else
		judge(k, rate > max ? READINESS_FAIL : READINESS_PASS, rate, max,
		      "Drop rate %.3f%% (%llu of %llu selected requests dropped) %s threshold "
		      "%.3f%%",
		      rate * 100, (unsigned long long)r->input.dropped,
		      (unsigned long long)r->input.selected, rate > max ? "exceeds" : "within",
		      max * 100);
}

static void eval_parity(const struct readiness_report *r, struct readiness_criterion *k)
{
	double rate = r->metrics.mismatch_rate, max = r->criteria.max_mismatch_rate;

	if (isnan(rate))
		judge(k, READINESS_NO_DATA, NAN, max,
		      "Mismatch rate: no data yet (no answer compared with the source's), deducts "
		      "nothing");
	else
		judge(k, rate > max ? READINESS_FAIL : READINESS_PASS, rate, max,
		      "Mismatch rate %.3f%% (%llu of %llu compared answers differ) %s threshold "
		      "%.3f%%",
		      rate * 100, (unsigned long long)r->input.mismatched,
		      (unsigned long long)r->input.compared, rate > max ? "exceeds" : "within",
		      max * 100);
}

static void eval_statements(const struct readiness_report *r, struct readiness_criterion *k)
{
	int64_t n = r->input.regressed_statements, max = r->criteria.max_regressed_statements;

	if (max < 0)
		judge(k, READINESS_NO_DATA, n < 0 ? NAN : (double)n, -1,
		      "Regressed statements: not judged (mirror_max_regressed_statements = -1), "
		      "deducts nothing");
	else if (n < 0)
		judge(k, READINESS_NO_DATA, NAN, (double)max,
		      "Regressed statements: not known (max_query_stats = 0), deducts nothing");
	else
		judge(k, n > max ? READINESS_FAIL : READINESS_PASS, (double)n, (double)max,
		      "Regressed statements %lld %s threshold %lld", (long long)n,
		      n > max ? "exceed" : "within", (long long)max);
}

void readiness_evaluate(const struct readiness_input *in, const struct readiness_criteria *c,
			struct readiness_report *out)
{
	static void (*const eval[READINESS_CRITERIA])(const struct readiness_report *,
						      struct readiness_criterion *) = {
	    [READINESS_ERROR_RATE] = eval_error_rate, [READINESS_LATENCY] = eval_latency,
	    [READINESS_RUNTIME] = eval_runtime,	      [READINESS_VOLUME] = eval_volume,
	    [READINESS_STREAK] = eval_streak,	      [READINESS_COVERAGE] = eval_coverage,
	    [READINESS_PARITY] = eval_parity,	      [READINESS_STATEMENTS] = eval_statements,
	};
	struct readiness_metrics *m = &out->metrics;
	uint64_t errors = in->errors_connection + in->errors_query + in->errors_timeout;
	double score = 100;
	int i;

	memset(out, 0, sizeof(*out)); /* database "": the caller names it afterwards */
	out->input = *in;
	out->criteria = *c;
	m->attempted = in->mirrored + errors;
	m->error_rate = ratio(errors, m->attempted);
	m->success_rate = ratio(in->mirrored, m->attempted);
	m->drop_rate = ratio(in->dropped, in->selected);
	m->mismatch_rate = ratio(in->mismatched, in->compared);
	m->runtime_hours = in->runtime_seconds / 3600;
	m->uptime_hours = in->uptime_seconds / 3600;
	out->ready = true;
	for (i = 0; i < READINESS_CRITERIA; i++) {
		struct readiness_criterion *k = &out->criterion[i];

		k->name = criterion_names[i];
		eval[i](out, k);
		if (k->verdict == READINESS_FAIL) {
			k->deduction = deductions[i];
			score -= k->deduction;
			out->ready = false;
		}
	}
	out->score = score < 0 ? 0 : score > 100 ? 100 : score;
	readiness_recommendation(out->score, &out->recommendation, &out->action);
}

/* ---- rendering ---- */

/* "12.345%" or "n/a" for a fraction. */
static bool pct(struct buf *b, const char *label, double v, const char *why)
{
	if (isnan(v))
		return buf_printf(b, "  %s: n/a (%s)\n", label, why);
	return buf_printf(b, "  %s: %.3f%%\n", label, v * 100);
}

static bool latency_line(struct buf *b, const char *label, double mirror, double source)
{
	bool ok = buf_printf(b, "  %s: ", label);

	ok &= isnan(mirror) ? buf_printf(b, "n/a") : buf_printf(b, "%.2fms", mirror);
	ok &= isnan(source) ? buf_printf(b, " (source n/a)\n")
			    : buf_printf(b, " (source %.2fms)\n", source);
	return ok;
}

/* "Top regressions": the statements that regress most (SHOW MIRROR QUERIES). */
static bool top_text(struct buf *out, const struct readiness_input *in)
{
	bool ok = true;
	uint32_t i;

	if (in->regressed_statements < 0)
		return true;
	ok &=
	    buf_printf(out, "\nTop regressions (%lld regressed; SHOW MIRROR QUERIES lists all):\n",
		       (long long)in->regressed_statements);
	if (!in->n_top)
		ok &= buf_printf(out, "  none\n");
	for (i = 0; i < in->n_top && i < READINESS_TOP; i++) {
		const struct readiness_regression *g = &in->top[i];

		ok &= buf_printf(out, "  %u. [%s] %s: %s", i + 1, g->database, g->why, g->query);
		ok &= isnan(g->p99_ratio) ? buf_printf(out, " (p99 ratio n/a")
					  : buf_printf(out, " (p99 %.1fx", g->p99_ratio);
		ok &= buf_printf(out, ", %llu calls, +%.0f ms in all)\n",
				 (unsigned long long)g->calls, g->impact_ms);
		if (g->plan[0])
			ok &= buf_printf(out, "     mirror plan: %s\n", g->plan);
	}
	return ok;
}

bool readiness_render_text(const struct readiness_report *r, struct buf *out)
{
	const struct readiness_input *in = &r->input;
	const struct readiness_metrics *m = &r->metrics;
	int i, failed = 0;
	bool ok = true;

	ok &= buf_printf(out, "=== Mirror Migration Readiness Report ===\n\n");
	if (r->database[0])
		ok &= buf_printf(out, "Database: %s\n", r->database);
	ok &= buf_printf(out, "Status: %s\n", r->ready ? "READY" : "NOT READY");
	ok &= buf_printf(out, "Confidence Score: %.1f%%\n", r->score);
	ok &= buf_printf(out, "Recommendation: %s (%s)\n\n", r->recommendation, r->action);
	ok &= buf_printf(out, "Metrics:\n");
	ok &= pct(out, "Error Rate", m->error_rate, "nothing attempted yet");
	ok &= pct(out, "Success Rate", m->success_rate, "nothing attempted yet");
	ok &= latency_line(out, "Avg Latency", in->mirror_avg_ms, in->source_avg_ms);
	ok &= latency_line(out, "P99 Latency", in->mirror_p99_ms, in->source_p99_ms);
	ok &= buf_printf(out, "  Uptime: %.1f hours\n", m->uptime_hours);
	ok &=
	    buf_printf(out, "  Runtime: %.1f hours (since start or the last RESET MIRROR STATS)\n",
		       m->runtime_hours);
	ok &= buf_printf(out, "  Total Requests: %llu\n", (unsigned long long)in->total);
	ok &= buf_printf(out, "  Attempted Requests: %llu\n", (unsigned long long)m->attempted);
	ok &= buf_printf(out, "  Consecutive Successes: %llu\n",
			 (unsigned long long)in->consecutive_successes);
	ok &= pct(out, "Drop Rate", m->drop_rate, "nothing selected yet");
	ok &= pct(out, "Mismatch Rate", m->mismatch_rate, "nothing compared yet");
	ok &= top_text(out, in);
	ok &= buf_printf(out, "\nAssessment:\n");
	for (i = 0; i < READINESS_CRITERIA; i++) {
		const struct readiness_criterion *k = &r->criterion[i];

		switch (k->verdict) {
		case READINESS_PASS:
			ok &= buf_printf(out, "  \u2713 %s\n", k->reason);
			break;
		case READINESS_FAIL:
			failed++;
			ok &= buf_printf(out, "  \u2717 %s (-%g)\n", k->reason, k->deduction);
			break;
		default:
			ok &= buf_printf(out, "  \u25cb %s\n", k->reason);
			break;
		}
	}
	if (!failed)
		ok &= buf_printf(out, "  All migration criteria met\n");
	else
		ok &= buf_printf(out, "  %d of %d criteria failed\n", failed, READINESS_CRITERIA);
	return ok;
}

/* Adds a number, or null for NaN ("no data"). */
static bool add_num(cJSON *o, const char *name, double v)
{
	return isnan(v) ? cJSON_AddNullToObject(o, name) != NULL
			: cJSON_AddNumberToObject(o, name, v) != NULL;
}

static bool json_metrics(cJSON *root, const struct readiness_report *r)
{
	const struct readiness_input *in = &r->input;
	const struct readiness_metrics *m = &r->metrics;
	cJSON *o = cJSON_AddObjectToObject(root, "metrics");
	bool ok = o != NULL;

	if (!ok)
		return false;
	ok &= add_num(o, "error_rate", m->error_rate);
	ok &= add_num(o, "success_rate", m->success_rate);
	ok &= add_num(o, "mirror_avg_latency_ms", in->mirror_avg_ms);
	ok &= add_num(o, "mirror_p99_latency_ms", in->mirror_p99_ms);
	ok &= add_num(o, "source_avg_latency_ms", in->source_avg_ms);
	ok &= add_num(o, "source_p99_latency_ms", in->source_p99_ms);
	ok &= add_num(o, "uptime_hours", m->uptime_hours);
	ok &= add_num(o, "runtime_hours", m->runtime_hours);
	ok &= add_num(o, "total_requests", (double)in->total);
	ok &= add_num(o, "selected_requests", (double)in->selected);
	ok &= add_num(o, "attempted_requests", (double)m->attempted);
	ok &= add_num(o, "mirrored", (double)in->mirrored);
	ok &= add_num(o, "errors_connection", (double)in->errors_connection);
	ok &= add_num(o, "errors_query", (double)in->errors_query);
	ok &= add_num(o, "errors_timeout", (double)in->errors_timeout);
	ok &= add_num(o, "dropped", (double)in->dropped);
	ok &= add_num(o, "compared", (double)in->compared);
	ok &= add_num(o, "mismatched", (double)in->mismatched);
	ok &= add_num(o, "consecutive_successes", (double)in->consecutive_successes);
	ok &= add_num(o, "drop_rate", m->drop_rate);
	ok &= add_num(o, "mismatch_rate", m->mismatch_rate);
	ok &= add_num(o, "regressed_statements",
		      in->regressed_statements < 0 ? NAN : (double)in->regressed_statements);
	return ok;
}

static bool json_top(cJSON *root, const struct readiness_input *in)
{
	cJSON *a = cJSON_AddArrayToObject(root, "top_regressions");
	bool ok = a != NULL;
	uint32_t i;

	for (i = 0; ok && i < in->n_top && i < READINESS_TOP; i++) {
		const struct readiness_regression *g = &in->top[i];
		cJSON *o = cJSON_CreateObject();

		if (!o || !cJSON_AddItemToArray(a, o)) {
			cJSON_Delete(o);
			return false;
		}
		ok &= cJSON_AddStringToObject(o, "database", g->database) != NULL;
		ok &= cJSON_AddStringToObject(o, "query", g->query) != NULL;
		ok &= cJSON_AddStringToObject(o, "why", g->why) != NULL;
		ok &= add_num(o, "p99_ratio", g->p99_ratio);
		ok &= add_num(o, "calls", (double)g->calls);
		ok &= add_num(o, "impact_ms", g->impact_ms);
		ok &= (g->plan[0] ? cJSON_AddStringToObject(o, "mirror_plan", g->plan)
				  : cJSON_AddNullToObject(o, "mirror_plan")) != NULL;
	}
	return ok;
}

static bool json_criteria(cJSON *root, const struct readiness_report *r)
{
	const struct readiness_criteria *c = &r->criteria;
	cJSON *t = cJSON_AddObjectToObject(root, "thresholds");
	cJSON *a = cJSON_AddArrayToObject(root, "criteria");
	bool ok = t && a;
	int i;

	if (!ok)
		return false;
	ok &= add_num(t, "max_error_rate", c->max_error_rate);
	ok &= add_num(t, "max_latency_ms", c->max_latency_ms);
	ok &= add_num(t, "min_runtime_hours", c->min_runtime_hours);
	ok &= add_num(t, "min_requests", (double)c->min_requests);
	ok &= add_num(t, "consecutive_success", (double)c->consecutive_success);
	ok &= add_num(t, "max_p99_ratio", c->max_p99_ratio);
	ok &= add_num(t, "latency_floor_ms", c->latency_floor_ms);
	ok &= add_num(t, "max_drop_rate", c->max_drop_rate);
	ok &= add_num(t, "max_mismatch_rate", c->max_mismatch_rate);
	ok &= add_num(t, "max_regressed_statements", (double)c->max_regressed_statements);
	for (i = 0; ok && i < READINESS_CRITERIA; i++) {
		const struct readiness_criterion *k = &r->criterion[i];
		cJSON *o = cJSON_CreateObject();

		if (!o || !cJSON_AddItemToArray(a, o)) {
			cJSON_Delete(o);
			return false;
		}
		ok &= cJSON_AddStringToObject(o, "name", k->name) != NULL;
		ok &= cJSON_AddStringToObject(o, "result", readiness_verdict_name(k->verdict)) !=
		      NULL;
		ok &= add_num(o, "deduction", k->deduction);
		ok &= add_num(o, "value", k->value);
		ok &= add_num(o, "threshold", k->threshold);
		ok &= cJSON_AddStringToObject(o, "reason", k->reason) != NULL;
	}
	return ok;
}

bool readiness_render_json(const struct readiness_report *r, struct buf *out)
{
	cJSON *root = cJSON_CreateObject();
	char *text = NULL;
	bool ok = root != NULL;

	if (ok) {
		ok &= cJSON_AddStringToObject(root, "status", r->ready ? "READY" : "NOT READY") !=
		      NULL;
		ok &= (r->database[0] ? cJSON_AddStringToObject(root, "database", r->database)
				      : cJSON_AddNullToObject(root, "database")) != NULL;
		ok &= cJSON_AddBoolToObject(root, "ready", r->ready) != NULL;
		ok &= add_num(root, "confidence_score", r->score);
		ok &= cJSON_AddStringToObject(root, "recommendation", r->recommendation) != NULL;
		ok &= cJSON_AddStringToObject(root, "action", r->action) != NULL;
		ok = ok && json_metrics(root, r) && json_criteria(root, r) &&
		     json_top(root, &r->input);
	}
	if (ok)
		text = cJSON_PrintUnformatted(root);
	ok = text && buf_printf(out, "%s\n", text);
	cJSON_free(text);
	cJSON_Delete(root);
	return ok;
}

/* ---- reading a JSON report back (the client side) ---- */

/* The number named name in o: NaN for null; false when absent or not a number. */
static bool get_num(const cJSON *o, const char *name, double *v)
{
	const cJSON *i = cJSON_GetObjectItemCaseSensitive(o, name);

	if (cJSON_IsNull(i)) {
		*v = NAN;
		return true;
	}
	if (!cJSON_IsNumber(i))
		return false;
	*v = i->valuedouble;
	return true;
}

/* A whole number, possibly negative; null (no data) reads as -1. */
static bool get_int(const cJSON *o, const char *name, int64_t *v)
{
	double d;

	if (!get_num(o, name, &d) || (!isnan(d) && (d < -1 || d > 9e15 || d != floor(d))))
		return false;
	*v = isnan(d) ? -1 : (int64_t)d;
	return true;
}

/* A count: a number >= 0 (no data is not a count). */
static bool get_count(const cJSON *o, const char *name, uint64_t *v)
{
	double d;

	if (!get_num(o, name, &d) || !(d >= 0) || d > 1.8e19)
		return false;
	*v = (uint64_t)d;
	return true;
}

static bool parse_metrics(const cJSON *o, struct readiness_report *r)
{
	struct readiness_input *in = &r->input;
	struct readiness_metrics *m = &r->metrics;
	bool ok = cJSON_IsObject(o);

	ok = ok && get_num(o, "error_rate", &m->error_rate) &&
	     get_num(o, "success_rate", &m->success_rate) &&
	     get_num(o, "mirror_avg_latency_ms", &in->mirror_avg_ms) &&
	     get_num(o, "mirror_p99_latency_ms", &in->mirror_p99_ms) &&
	     get_num(o, "source_avg_latency_ms", &in->source_avg_ms) &&
	     get_num(o, "source_p99_latency_ms", &in->source_p99_ms) &&
	     get_num(o, "uptime_hours", &m->uptime_hours) &&
	     get_num(o, "runtime_hours", &m->runtime_hours) &&
	     get_count(o, "total_requests", &in->total) &&
	     get_count(o, "selected_requests", &in->selected) &&
	     get_count(o, "attempted_requests", &m->attempted) &&
	     get_count(o, "mirrored", &in->mirrored) &&
	     get_count(o, "errors_connection", &in->errors_connection) &&
	     get_count(o, "errors_query", &in->errors_query) &&
	     get_count(o, "errors_timeout", &in->errors_timeout) &&
	     get_count(o, "dropped", &in->dropped) && get_count(o, "compared", &in->compared) &&
	     get_count(o, "mismatched", &in->mismatched) &&
	     get_count(o, "consecutive_successes", &in->consecutive_successes) &&
	     get_num(o, "drop_rate", &m->drop_rate) &&
	     get_num(o, "mismatch_rate", &m->mismatch_rate) &&
	     get_int(o, "regressed_statements", &in->regressed_statements);
	in->runtime_seconds = m->runtime_hours * 3600;
	in->uptime_seconds = m->uptime_hours * 3600;
	return ok;
}

static bool parse_thresholds(const cJSON *o, struct readiness_criteria *c)
{
	return cJSON_IsObject(o) && get_num(o, "max_error_rate", &c->max_error_rate) &&
	       get_num(o, "max_latency_ms", &c->max_latency_ms) &&
	       get_num(o, "min_runtime_hours", &c->min_runtime_hours) &&
	       get_count(o, "min_requests", &c->min_requests) &&
	       get_count(o, "consecutive_success", &c->consecutive_success) &&
	       get_num(o, "max_p99_ratio", &c->max_p99_ratio) &&
	       get_num(o, "latency_floor_ms", &c->latency_floor_ms) &&
	       get_num(o, "max_drop_rate", &c->max_drop_rate) &&
	       get_num(o, "max_mismatch_rate", &c->max_mismatch_rate) &&
	       get_int(o, "max_regressed_statements", &c->max_regressed_statements);
}

/* top_regressions: at most READINESS_TOP entries of strings and numbers. */
static bool parse_top(const cJSON *a, struct readiness_input *in)
{
	const cJSON *o;

	if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) > READINESS_TOP)
		return false;
	in->n_top = 0;
	cJSON_ArrayForEach(o, a)
	{
		struct readiness_regression *g = &in->top[in->n_top++];
		const cJSON *db = cJSON_GetObjectItemCaseSensitive(o, "database");
		const cJSON *q = cJSON_GetObjectItemCaseSensitive(o, "query");
		const cJSON *why = cJSON_GetObjectItemCaseSensitive(o, "why"), *plan;

		if (!cJSON_IsString(db) || !cJSON_IsString(q) || !cJSON_IsString(why) ||
		    !get_num(o, "p99_ratio", &g->p99_ratio) || !get_count(o, "calls", &g->calls) ||
		    !get_num(o, "impact_ms", &g->impact_ms))
			return false;
		snprintf(g->database, sizeof(g->database), "%s", db->valuestring);
		snprintf(g->query, sizeof(g->query), "%s", q->valuestring);
		snprintf(g->why, sizeof(g->why), "%s", why->valuestring);
		plan = cJSON_GetObjectItemCaseSensitive(o, "mirror_plan");
		if (cJSON_IsString(plan))
			snprintf(g->plan, sizeof(g->plan), "%s", plan->valuestring);
	}
	return true;
}

/* The criteria array: every criterion once, in order. Returns the failing index or -1. */
static int parse_criteria(const cJSON *a, struct readiness_report *r)
{
	const cJSON *o, *name, *result, *reason;
	int i;

	if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) != READINESS_CRITERIA)
		return 0;
	for (i = 0; i < READINESS_CRITERIA; i++) {
		struct readiness_criterion *k = &r->criterion[i];

		o = cJSON_GetArrayItem(a, i);
		name = cJSON_GetObjectItemCaseSensitive(o, "name");
		result = cJSON_GetObjectItemCaseSensitive(o, "result");
		reason = cJSON_GetObjectItemCaseSensitive(o, "reason");
		if (!cJSON_IsString(name) || strcmp(name->valuestring, criterion_names[i]) ||
		    !cJSON_IsString(result) || !cJSON_IsString(reason) ||
		    !get_num(o, "deduction", &k->deduction) || !get_num(o, "value", &k->value) ||
		    !get_num(o, "threshold", &k->threshold))
			return i;
		k->name = criterion_names[i];
		if (!strcmp(result->valuestring, "pass"))
			k->verdict = READINESS_PASS;
		else if (!strcmp(result->valuestring, "fail"))
			k->verdict = READINESS_FAIL;
		else if (!strcmp(result->valuestring, "no_data"))
			k->verdict = READINESS_NO_DATA;
		else
			return i;
		snprintf(k->reason, sizeof(k->reason), "%s", reason->valuestring);
	}
	return -1;
}

bool readiness_parse_json(const char *text, struct readiness_report *out, char *err, size_t errlen)
{
	cJSON *root = cJSON_Parse(text);
	const cJSON *ready, *rec, *db;
	bool ok = false;
	int bad;

	memset(out, 0, sizeof(*out));
	if (!cJSON_IsObject(root)) {
		snprintf(err, errlen, "not a JSON object");
		goto cleanup;
	}
	ready = cJSON_GetObjectItemCaseSensitive(root, "ready");
	rec = cJSON_GetObjectItemCaseSensitive(root, "recommendation");
	if (!cJSON_IsBool(ready) || !get_num(root, "confidence_score", &out->score) ||
	    !(out->score >= 0 && out->score <= 100) || !cJSON_IsString(rec)) {
		snprintf(err, errlen, "no ready, confidence_score or recommendation");
		goto cleanup;
	}
	out->ready = cJSON_IsTrue(ready);
	db = cJSON_GetObjectItemCaseSensitive(root, "database");
	if (cJSON_IsString(db))
		snprintf(out->database, sizeof(out->database), "%s", db->valuestring);
	/* the static strings of the band the score is in; the answer must agree */
	readiness_recommendation(out->score, &out->recommendation, &out->action);
	if (strcmp(rec->valuestring, out->recommendation)) {
		snprintf(err, errlen, "recommendation '%.64s' does not match the score %g",
			 rec->valuestring, out->score);
		goto cleanup;
	}
	if (!parse_metrics(cJSON_GetObjectItemCaseSensitive(root, "metrics"), out)) {
		snprintf(err, errlen, "metrics missing or malformed");
		goto cleanup;
	}
	if (!parse_thresholds(cJSON_GetObjectItemCaseSensitive(root, "thresholds"),
			      &out->criteria)) {
		snprintf(err, errlen, "thresholds missing or malformed");
		goto cleanup;
	}
	if (!parse_top(cJSON_GetObjectItemCaseSensitive(root, "top_regressions"), &out->input)) {
		snprintf(err, errlen, "top_regressions missing or malformed");
		goto cleanup;
	}
	bad = parse_criteria(cJSON_GetObjectItemCaseSensitive(root, "criteria"), out);
	if (bad >= 0) {
		snprintf(err, errlen, "criteria: entry %d (%s) missing or malformed", bad,
			 criterion_names[bad]);
		goto cleanup;
	}
	ok = true;
cleanup:
	cJSON_Delete(root);
	return ok;
}

/* ---- alerts ---- */

/* Records a change of one alert in events[*n]. */
static void alert_event(struct readiness_alert_state *s, enum readiness_alert a, bool active,
			double value, double threshold, struct readiness_alert_event *events,
			int *n)
{
	struct readiness_alert_event *e = &events[*n];

	if (s->active[a] == active)
		return;
	s->active[a] = active;
	e->alert = a;
	e->change = active ? READINESS_ALERT_FIRED : READINESS_ALERT_CLEARED;
	e->value = value;
	e->threshold = threshold;
	if (a == READINESS_ALERT_CONSECUTIVE_ERRORS && active)
		snprintf(e->message, sizeof(e->message),
			 "mirror alert consecutive_errors fired: %.0f consecutive mirror errors "
			 "(threshold %.0f)",
			 value, threshold);
	else if (a == READINESS_ALERT_CONSECUTIVE_ERRORS && threshold > 0)
		snprintf(e->message, sizeof(e->message),
			 "mirror alert consecutive_errors cleared: %.0f consecutive mirror errors "
			 "(threshold %.0f)",
			 value, threshold);
	else if (a == READINESS_ALERT_CONSECUTIVE_ERRORS)
		snprintf(e->message, sizeof(e->message),
			 "mirror alert consecutive_errors cleared: the alert was disabled");
	else if (active)
		snprintf(e->message, sizeof(e->message),
			 "mirror alert latency fired: mirror p99 latency %.2fms over the current "
			 "window exceeds %gms",
			 value, threshold);
	else if (threshold > 0)
		snprintf(e->message, sizeof(e->message),
			 "mirror alert latency cleared: mirror p99 latency %.2fms is within %gms",
			 value, threshold);
	else
		snprintf(e->message, sizeof(e->message),
			 "mirror alert latency cleared: the alert was disabled");
	(*n)++;
}

int readiness_alerts_update(struct readiness_alert_state *s,
			    const struct readiness_alert_config *cfg,
			    const struct readiness_alert_input *in,
			    struct readiness_alert_event events[READINESS_ALERTS])
{
	uint64_t errs = in->consecutive_errors;
	double p99 = in->window_p99_ms, lim = cfg->latency_threshold_ms;
	int n = 0;

	alert_event(s, READINESS_ALERT_CONSECUTIVE_ERRORS,
		    cfg->error_threshold && errs >= cfg->error_threshold, (double)errs,
		    (double)cfg->error_threshold, events, &n);
	if (!(lim > 0))
		alert_event(s, READINESS_ALERT_LATENCY, false, p99, 0, events, &n);
	else if (!isnan(p99))
		alert_event(s, READINESS_ALERT_LATENCY, p99 > lim, p99, lim, events, &n);
	return n;
}
