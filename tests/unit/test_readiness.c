// SPDX-License-Identifier: BSD-2-Clause
/* readiness: the verdict (every criterion alone, no data, clamping, decision-matrix
 * bands), the text and JSON reports, the alert state machine, and the stats it is fed
 * from (readiness window, reset, p99 from buckets, per-database rows, gauges). */
#include <math.h>
#include <regex.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <cjson/cJSON.h>

#include "buf.h"
#include "readiness.h"
#include "stats.h"

#define MS  1000000ULL
#define SEC (1000 * MS)

static void assert_contains(const char *text, const char *want)
{
	if (!strstr(text, want))
		fail_msg("missing: %s\nin: %s", want, text);
}

static void assert_matches(const char *text, const char *pattern)
{
	regex_t re;

	assert_int_equal(regcomp(&re, pattern, REG_EXTENDED | REG_NEWLINE | REG_NOSUB), 0);
	if (regexec(&re, text, 0, NULL, 0))
		fail_msg("no line matches /%s/ in:\n%s", pattern, text);
	regfree(&re);
}

static char *render_text(const struct readiness_report *r)
{
	struct buf b;

	buf_init(&b, 1 << 20);
	assert_true(readiness_render_text(r, &b));
	return buf_steal(&b, NULL);
}

/* An input that passes every default criterion with room to spare. */
static void good_input(struct readiness_input *in)
{
	memset(in, 0, sizeof(*in));
	in->total = 250000;
	in->selected = 200000;
	in->mirrored = 200000;
	in->compared = 200000;
	in->consecutive_successes = 20000;
	in->runtime_seconds = 25 * 3600;
	in->uptime_seconds = 30 * 3600;
	in->mirror_avg_ms = 10;
	in->mirror_p99_ms = 20;
	in->source_avg_ms = 8;
	in->source_p99_ms = 15;
	in->regressed_statements = 0;
}

/* Evaluates in with the default criteria and checks that only `which` failed. */
static void expect_only_failure(const struct readiness_input *in, int which, double score,
				const char *recommendation, const char *reason)
{
	struct readiness_criteria c;
	struct readiness_report r;
	char *text;
	int i;

	readiness_criteria_default(&c);
	c.max_regressed_statements = 0; /* judged */
	readiness_evaluate(in, &c, &r);
	assert_false(r.ready);
	assert_true(r.score == score);
	assert_string_equal(r.recommendation, recommendation);
	for (i = 0; i < READINESS_CRITERIA; i++) {
		if (i == which) {
			assert_int_equal(r.criterion[i].verdict, READINESS_FAIL);
			assert_true(r.criterion[i].deduction == 100 - score);
		} else {
			assert_int_equal(r.criterion[i].verdict, READINESS_PASS);
			assert_true(r.criterion[i].deduction == 0);
		}
	}
	assert_string_equal(r.criterion[which].reason, reason);
	text = render_text(&r);
	assert_contains(text, "Status: NOT READY\n");
	assert_contains(text, "1 of 8 criteria failed\n");
	free(text);
}

static void test_all_pass(void **state)
{
	struct readiness_criteria c;
	struct readiness_input in;
	struct readiness_report r;
	int i;

	(void)state;
	good_input(&in);
	readiness_criteria_default(&c);
	c.max_regressed_statements = 0; /* judged */
	readiness_evaluate(&in, &c, &r);
	assert_true(r.ready);
	assert_true(r.score == 100);
	assert_string_equal(r.recommendation, "Highly Confident");
	assert_string_equal(r.action, "Safe to migrate immediately");
	for (i = 0; i < READINESS_CRITERIA; i++)
		assert_int_equal(r.criterion[i].verdict, READINESS_PASS);
	assert_string_equal(r.criterion[READINESS_ERROR_RATE].name, "error_rate");
	assert_string_equal(r.criterion[READINESS_PARITY].name, "parity");
	assert_string_equal(r.criterion[READINESS_LATENCY].reason,
			    "Average latency 10.00ms within threshold 1000ms; p99 20.00ms within "
			    "2x source p99 15.00ms");
}

static void test_error_rate_fails_alone(void **state)
{
	struct readiness_input in;

	(void)state;
	good_input(&in);
	in.errors_query = 3000;
	in.errors_connection = 1000;
	in.errors_timeout = 1000; /* 5000 of 205000 attempted */
	in.consecutive_successes = 10000;
	expect_only_failure(&in, READINESS_ERROR_RATE, 70, "Moderate",
			    "Error rate 2.439% exceeds threshold 1.000%");
}

static void test_error_rate_at_threshold_passes(void **state)
{
	struct readiness_criteria c;
	struct readiness_input in;
	struct readiness_report r;

	(void)state;
	good_input(&in);
	in.mirrored = 198000;
	in.errors_query = 2000; /* exactly 1% */
	readiness_criteria_default(&c);
	c.max_regressed_statements = 0; /* judged */
	readiness_evaluate(&in, &c, &r);
	assert_true(r.ready);
	assert_string_equal(r.criterion[READINESS_ERROR_RATE].reason,
			    "Error rate 1.000% within threshold 1.000%");
	assert_true(r.metrics.success_rate == 0.99);
}

static void test_latency_average_fails_alone(void **state)
{
	struct readiness_input in;

	(void)state;
	good_input(&in);
	in.mirror_avg_ms = 1500;
	in.mirror_p99_ms = 25;
	expect_only_failure(&in, READINESS_LATENCY, 80, "Confident",
			    "Average latency 1500.00ms exceeds threshold 1000ms; p99 25.00ms "
			    "within 2x source p99 15.00ms");
}

static void test_latency_p99_fails_alone(void **state)
{
	struct readiness_input in;

	(void)state;
	good_input(&in);
	in.mirror_p99_ms = 100;
	in.source_p99_ms = 20;
	expect_only_failure(&in, READINESS_LATENCY, 80, "Confident",
			    "Average latency 10.00ms within threshold 1000ms; p99 100.00ms "
			    "exceeds 2x source p99 20.00ms");
}

/* A p99 four times the source's but only 3 ms apart: under the 5 ms floor, no verdict
 * against the mirror. */
static void test_latency_floor(void **state)
{
	struct readiness_criteria c;
	struct readiness_input in;
	struct readiness_report r;

	(void)state;
	good_input(&in);
	in.mirror_p99_ms = 4;
	in.source_p99_ms = 1;
	readiness_criteria_default(&c);
	c.max_regressed_statements = 0; /* judged */
	readiness_evaluate(&in, &c, &r);
	assert_true(r.ready);
	assert_string_equal(r.criterion[READINESS_LATENCY].reason,
			    "Average latency 10.00ms within threshold 1000ms; p99 4.00ms vs source "
			    "1.00ms: difference under the 5ms floor");
	/* 5 ms apart is no longer noise */
	in.mirror_p99_ms = 6;
	readiness_evaluate(&in, &c, &r);
	assert_false(r.ready);
	assert_int_equal(r.criterion[READINESS_LATENCY].verdict, READINESS_FAIL);
}

static void test_runtime_fails_alone(void **state)
{
	struct readiness_input in;

	(void)state;
	good_input(&in);
	in.runtime_seconds = 3600;
	expect_only_failure(&in, READINESS_RUNTIME, 75, "Moderate",
			    "Runtime 1.00 hours below minimum 24 hours");
}

static void test_volume_fails_alone(void **state)
{
	struct readiness_input in;

	(void)state;
	good_input(&in);
	in.total = in.selected = in.mirrored = in.compared = 50000;
	expect_only_failure(&in, READINESS_VOLUME, 75, "Moderate",
			    "Attempted requests 50000 below minimum 100000");
}

static void test_streak_fails_alone(void **state)
{
	struct readiness_input in;

	(void)state;
	good_input(&in);
	in.consecutive_successes = 500;
	expect_only_failure(&in, READINESS_STREAK, 90, "Confident",
			    "Consecutive successes 500 below required 10000");
}

static void test_coverage_fails_alone(void **state)
{
	struct readiness_input in;

	(void)state;
	good_input(&in);
	in.dropped = 4000;
	expect_only_failure(
	    &in, READINESS_COVERAGE, 90, "Confident",
	    "Drop rate 2.000% (4000 of 200000 selected requests dropped) exceeds threshold 1.000%");
}

static void test_parity_fails_alone(void **state)
{
	struct readiness_input in;

	(void)state;
	good_input(&in);
	in.mismatched = 1000;
	expect_only_failure(
	    &in, READINESS_PARITY, 70, "Moderate",
	    "Mismatch rate 0.500% (1000 of 200000 compared answers differ) exceeds threshold "
	    "0.100%");
}

/* Every criterion failing takes 150 points: the score stops at 0. */
static void test_score_clamped(void **state)
{
	struct readiness_criteria c;
	struct readiness_input in;
	struct readiness_report r;
	int i;

	(void)state;
	memset(&in, 0, sizeof(in));
	in.total = in.selected = 100;
	in.mirrored = 10;
	in.errors_query = 50;
	in.dropped = 40;
	in.compared = 10;
	in.mismatched = 5;
	in.mirror_avg_ms = 5000;
	in.mirror_p99_ms = 9000;
	in.source_avg_ms = 1;
	in.source_p99_ms = 2;
	in.regressed_statements = 3;
	readiness_criteria_default(&c);
	c.max_regressed_statements = 0; /* judged */
	readiness_evaluate(&in, &c, &r);
	for (i = 0; i < READINESS_CRITERIA; i++)
		assert_int_equal(r.criterion[i].verdict, READINESS_FAIL);
	assert_false(r.ready);
	assert_true(r.score == 0);
	assert_string_equal(r.recommendation, "Very Low");
	assert_string_equal(r.action, "Do not migrate, major problems");
}

/* Nothing measured yet: the criteria without data deduct nothing and say so; with the
 * count criteria lowered to 0 the verdict is READY. */
static void test_no_data(void **state)
{
	struct readiness_criteria c;
	struct readiness_input in;
	struct readiness_report r;
	char *text;

	(void)state;
	memset(&in, 0, sizeof(in));
	in.mirror_avg_ms = in.mirror_p99_ms = in.source_avg_ms = in.source_p99_ms = NAN;
	readiness_criteria_default(&c);
	c.max_regressed_statements = 0; /* judged */
	c.min_runtime_hours = 0;
	c.min_requests = 0;
	c.consecutive_success = 0;
	readiness_evaluate(&in, &c, &r);
	assert_true(r.ready);
	assert_true(r.score == 100);
	assert_int_equal(r.criterion[READINESS_ERROR_RATE].verdict, READINESS_NO_DATA);
	assert_int_equal(r.criterion[READINESS_LATENCY].verdict, READINESS_NO_DATA);
	assert_int_equal(r.criterion[READINESS_COVERAGE].verdict, READINESS_NO_DATA);
	assert_int_equal(r.criterion[READINESS_PARITY].verdict, READINESS_NO_DATA);
	assert_int_equal(r.criterion[READINESS_RUNTIME].verdict, READINESS_PASS);
	assert_string_equal(
	    r.criterion[READINESS_ERROR_RATE].reason,
	    "Error rate: no data yet (no request attempted on the mirror), deducts nothing");
	assert_string_equal(r.criterion[READINESS_LATENCY].reason,
			    "Latency: no data yet (no request mirrored), deducts nothing");
	assert_string_equal(
	    r.criterion[READINESS_COVERAGE].reason,
	    "Drop rate: no data yet (no request selected for mirroring), deducts nothing");
	assert_string_equal(
	    r.criterion[READINESS_PARITY].reason,
	    "Mismatch rate: no data yet (no answer compared with the source's), deducts nothing");
	assert_true(isnan(r.criterion[READINESS_PARITY].value));
	text = render_text(&r);
	assert_contains(text, "  Error Rate: n/a (nothing attempted yet)\n");
	assert_contains(text, "  Avg Latency: n/a (source n/a)\n");
	assert_contains(text, "  \u25cb Mismatch rate: no data yet");
	free(text);

	/* with the default criteria, no traffic is NOT READY: runtime, volume, streak */
	readiness_criteria_default(&c);
	c.max_regressed_statements = 0; /* judged */
	readiness_evaluate(&in, &c, &r);
	assert_false(r.ready);
	assert_true(r.score == 40);
	assert_string_equal(r.recommendation, "Low");

	/* a mirrored average but no source p99 yet: only the average is judged */
	good_input(&in);
	in.source_p99_ms = NAN;
	readiness_evaluate(&in, &c, &r);
	assert_true(r.ready);
	assert_string_equal(r.criterion[READINESS_LATENCY].reason,
			    "Average latency 10.00ms within threshold 1000ms; p99: no source data "
			    "yet");
}

static void test_decision_matrix_bands(void **state)
{
	static const struct {
		double score;
		const char *want;
	} cases[] = {
	    {100, "Highly Confident"},
	    {95, "Highly Confident"},
	    {94.99, "Confident"},
	    {94, "Confident"},
	    {80, "Confident"},
	    {79.9, "Moderate"},
	    {60, "Moderate"},
	    {59.5, "Low"},
	    {40, "Low"},
	    {39.99, "Very Low"},
	    {0, "Very Low"},
	    {NAN, "Very Low"},
	};
	const char *rec, *action;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		readiness_recommendation(cases[i].score, &rec, &action);
		if (strcmp(rec, cases[i].want))
			fail_msg("score %g: %s, want %s", cases[i].score, rec, cases[i].want);
	}
	readiness_recommendation(80, &rec, &action);
	assert_string_equal(action, "Review specific issues, likely safe");
	readiness_recommendation(60, &rec, &action);
	assert_string_equal(action, "Address issues before migration");
	readiness_recommendation(40, &rec, &action);
	assert_string_equal(action, "Significant issues need resolution");
}

/* The seed's test_readiness_calculation, through stats: 1000 successes at 50 ms and 10
 * query errors, criteria 2% / 100 ms / 0 h / 500 requests and no streak required. */
static void test_readiness_calculation(void **state)
{
	struct stats_config cfg = {.max_databases = 4, .mirror_enabled = true};
	struct stats *st = stats_new(&cfg);
	struct stats_db *db = stats_db(st, "test_db");
	struct readiness_criteria c;
	struct readiness_input in;
	struct readiness_report r;
	char *text;
	int i;

	(void)state;
	for (i = 0; i < 1000; i++) {
		stats_mirror_request(st, db);
		stats_mirror_success(st, db, 50 * MS, 50 * MS, 60 * MS, SEC + i);
	}
	for (i = 0; i < 10; i++) {
		stats_mirror_request(st, db);
		stats_mirror_error(st, db, STATS_ERR_QUERY, 2 * SEC + i);
	}
	readiness_criteria_default(&c);
	c.max_regressed_statements = 0; /* judged */
	c.max_error_rate = 0.02;
	c.max_latency_ms = 100;
	c.min_runtime_hours = 0;
	c.min_requests = 500;
	c.consecutive_success = 0;
	stats_readiness_input(st, 3 * SEC, &in);
	assert_int_equal(in.mirrored, 1000);
	assert_int_equal(in.errors_query, 10);
	assert_int_equal(in.total, 1010);
	assert_int_equal(in.selected, 1010);
	assert_int_equal(in.consecutive_successes, 0);
	readiness_evaluate(&in, &c, &r);
	assert_true(r.ready);
	assert_true(r.metrics.error_rate < 0.02);
	assert_true(in.mirror_avg_ms == 50.0);
	assert_true(r.score == 100);
	text = render_text(&r);
	assert_matches(text, "^Status: (READY|NOT READY)$");
	assert_contains(text, "Status: READY\n");
	assert_matches(text, "Error Rate: [0-9]+\\.[0-9]+%");
	assert_matches(text, "Success Rate: [0-9]+\\.[0-9]+%");
	assert_contains(text, "  Error Rate: 0.990%\n");
	assert_contains(text, "  Success Rate: 99.010%\n");
	assert_contains(text, "  Avg Latency: 50.00ms (source 50.00ms)\n");
	assert_contains(text, "  Total Requests: 1010\n");
	assert_contains(text, "  All migration criteria met\n");
	free(text);
	stats_free(st);
}

/* The whole text report, line by line. */
static void test_text_report(void **state)
{
	struct readiness_criteria c;
	struct readiness_input in;
	struct readiness_report r;
	char *text;

	(void)state;
	good_input(&in);
	in.errors_query = 10;
	in.dropped = 4000;
	in.mismatched = 20;
	in.regressed_statements = 1;
	in.n_top = 1;
	snprintf(in.top[0].database, sizeof(in.top[0].database), "app");
	snprintf(in.top[0].query, sizeof(in.top[0].query), "SELECT * FROM t WHERE id = $1");
	snprintf(in.top[0].why, sizeof(in.top[0].why), "slower");
	in.top[0].p99_ratio = 12.5;
	in.top[0].calls = 600;
	in.top[0].impact_ms = 5400;
	readiness_criteria_default(&c);
	c.max_regressed_statements = 1;
	readiness_evaluate(&in, &c, &r);
	text = render_text(&r);
	assert_string_equal(
	    text,
	    "=== Mirror Migration Readiness Report ===\n"
	    "\n"
	    "Status: NOT READY\n"
	    "Confidence Score: 90.0%\n"
	    "Recommendation: Confident (Review specific issues, likely safe)\n"
	    "\n"
	    "Metrics:\n"
	    "  Error Rate: 0.005%\n"
	    "  Success Rate: 99.995%\n"
	    "  Avg Latency: 10.00ms (source 8.00ms)\n"
	    "  P99 Latency: 20.00ms (source 15.00ms)\n"
	    "  Uptime: 30.0 hours\n"
	    "  Runtime: 25.0 hours (since start or the last RESET MIRROR STATS)\n"
	    "  Total Requests: 250000\n"
	    "  Attempted Requests: 200010\n"
	    "  Consecutive Successes: 20000\n"
	    "  Drop Rate: 2.000%\n"
	    "  Mismatch Rate: 0.010%\n"
	    "\n"
	    "Top regressions (1 regressed; SHOW MIRROR QUERIES lists all):\n"
	    "  1. [app] slower: SELECT * FROM t WHERE id = $1 (p99 12.5x, 600 calls, +5400 ms "
	    "in all)\n"
	    "\n"
	    "Assessment:\n"
	    "  \u2713 Error rate 0.005% within threshold 1.000%\n"
	    "  \u2713 Average latency 10.00ms within threshold 1000ms; p99 20.00ms within 2x "
	    "source p99 15.00ms\n"
	    "  \u2713 Runtime 25.00 hours meets minimum 24 hours\n"
	    "  \u2713 Attempted requests 200010 meets minimum 100000\n"
	    "  \u2713 Consecutive successes 20000 meet required 10000\n"
	    "  \u2717 Drop rate 2.000% (4000 of 200000 selected requests dropped) exceeds "
	    "threshold 1.000% (-10)\n"
	    "  \u2713 Mismatch rate 0.010% (20 of 200000 compared answers differ) within "
	    "threshold 0.100%\n"
	    "  \u2713 Regressed statements 1 within threshold 1\n"
	    "  1 of 8 criteria failed\n");
	assert_matches(text, "Error Rate: [0-9]+\\.[0-9]+%");
	free(text);
}

static double num(const cJSON *o, const char *name)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, name);

	if (!cJSON_IsNumber(v))
		fail_msg("%s is not a number", name);
	return v->valuedouble;
}

static void test_json_report(void **state)
{
	struct readiness_criteria c;
	struct readiness_input in;
	struct readiness_report r;
	const cJSON *m, *t, *a, *k;
	struct buf b;
	cJSON *root;
	int i;

	(void)state;
	good_input(&in);
	in.errors_timeout = 7;
	in.dropped = 4000;
	in.compared = 0; /* parity: no data */
	readiness_criteria_default(&c);
	c.max_regressed_statements = 0; /* judged */
	readiness_evaluate(&in, &c, &r);
	buf_init(&b, 1 << 20);
	assert_true(readiness_render_json(&r, &b));
	root = cJSON_Parse(b.data);
	assert_non_null(root);
	assert_string_equal(cJSON_GetObjectItem(root, "status")->valuestring, "NOT READY");
	assert_true(cJSON_IsFalse(cJSON_GetObjectItem(root, "ready")));
	assert_true(num(root, "confidence_score") == 90);
	assert_string_equal(cJSON_GetObjectItem(root, "recommendation")->valuestring, "Confident");
	m = cJSON_GetObjectItem(root, "metrics");
	/* cJSON prints 15 significant digits unless that reads back within its epsilon */
	assert_true(fabs(num(m, "error_rate") - r.metrics.error_rate) < 1e-12);
	assert_true(fabs(num(m, "success_rate") - r.metrics.success_rate) < 1e-12);
	assert_true(num(m, "mirror_avg_latency_ms") == 10);
	assert_true(num(m, "mirror_p99_latency_ms") == 20);
	assert_true(num(m, "source_avg_latency_ms") == 8);
	assert_true(num(m, "source_p99_latency_ms") == 15);
	assert_true(num(m, "uptime_hours") == 30);
	assert_true(num(m, "runtime_hours") == 25);
	assert_true(num(m, "total_requests") == 250000);
	assert_true(num(m, "selected_requests") == 200000);
	assert_true(num(m, "attempted_requests") == 200007);
	assert_true(num(m, "mirrored") == 200000);
	assert_true(num(m, "errors_timeout") == 7);
	assert_true(num(m, "dropped") == 4000);
	assert_true(num(m, "consecutive_successes") == 20000);
	assert_true(num(m, "drop_rate") == 0.02);
	assert_true(cJSON_IsNull(cJSON_GetObjectItem(m, "mismatch_rate")));
	t = cJSON_GetObjectItem(root, "thresholds");
	assert_true(num(t, "max_error_rate") == 0.01);
	assert_true(num(t, "min_requests") == 100000);
	assert_true(num(t, "max_p99_ratio") == 2);
	assert_true(num(t, "max_mismatch_rate") == 0.001);
	a = cJSON_GetObjectItem(root, "criteria");
	assert_int_equal(cJSON_GetArraySize(a), READINESS_CRITERIA);
	for (i = 0; i < READINESS_CRITERIA; i++) {
		k = cJSON_GetArrayItem(a, i);
		assert_string_equal(cJSON_GetObjectItem(k, "name")->valuestring,
				    r.criterion[i].name);
		assert_string_equal(cJSON_GetObjectItem(k, "reason")->valuestring,
				    r.criterion[i].reason);
		assert_string_equal(cJSON_GetObjectItem(k, "result")->valuestring,
				    readiness_verdict_name(r.criterion[i].verdict));
		assert_true(num(k, "deduction") == r.criterion[i].deduction);
		assert_true(num(k, "threshold") == r.criterion[i].threshold);
	}
	k = cJSON_GetArrayItem(a, READINESS_COVERAGE);
	assert_string_equal(cJSON_GetObjectItem(k, "result")->valuestring, "fail");
	assert_true(num(k, "value") == 0.02);
	assert_true(num(k, "deduction") == 10);
	k = cJSON_GetArrayItem(a, READINESS_PARITY);
	assert_string_equal(cJSON_GetObjectItem(k, "result")->valuestring, "no_data");
	assert_true(cJSON_IsNull(cJSON_GetObjectItem(k, "value")));
	cJSON_Delete(root);
	buf_free(&b);
}

/* readiness_parse_json reads back what readiness_render_json wrote: the text report
 * rendered from the parsed JSON equals the one rendered from the original report
 * (`pgshadow readiness` prints the text of the very answer it judged). */
static void test_json_round_trip(void **state)
{
	struct readiness_report r, back;
	struct readiness_criteria c;
	struct readiness_input in[4];
	char err[256], *want, *got;
	struct buf b;
	int i, k;

	(void)state;
	good_input(&in[0]); /* READY */
	good_input(&in[1]);
	in[1].errors_query = 3000; /* error rate fails */
	in[1].dropped = 123;
	in[1].runtime_seconds = 1234.5678;
	in[1].mirror_p99_ms = 1e-3 / 3;
	in[1].regressed_statements = 2; /* the statements criterion fails; two regressions */
	in[1].n_top = 2;
	snprintf(in[1].top[0].database, sizeof(in[1].top[0].database), "app");
	snprintf(in[1].top[0].query, sizeof(in[1].top[0].query),
		 "SELECT pad FROM big WHERE k = $1");
	snprintf(in[1].top[0].why, sizeof(in[1].top[0].why), "slower");
	snprintf(in[1].top[0].plan, sizeof(in[1].top[0].plan), "Seq Scan on big rows=1 cost=5.5");
	in[1].top[0].p99_ratio = 31.25;
	in[1].top[0].calls = 60;
	in[1].top[0].impact_ms = 1234;
	snprintf(in[1].top[1].database, sizeof(in[1].top[1].database), "app");
	snprintf(in[1].top[1].query, sizeof(in[1].top[1].query), "SELECT note FROM small");
	snprintf(in[1].top[1].why, sizeof(in[1].top[1].why), "fails_on_mirror 42703");
	in[1].top[1].p99_ratio = NAN;
	in[1].top[1].calls = 10;
	memset(&in[2], 0, sizeof(in[2])); /* no data at all */
	in[2].mirror_avg_ms = in[2].mirror_p99_ms = NAN;
	in[2].source_avg_ms = in[2].source_p99_ms = NAN;
	good_input(&in[3]);
	in[3].mismatched = 77777; /* parity fails; fractional rates */
	in[3].uptime_seconds = 1.0 / 7;
	readiness_criteria_default(&c);
	c.max_regressed_statements = 0; /* judged */
	c.max_error_rate = 0.0123;
	for (i = 0; i < 4; i++) {
		readiness_evaluate(&in[i], &c, &r);
		if (i == 1)
			snprintf(r.database, sizeof(r.database), "app"); /* one database's */
		buf_init(&b, 1 << 20);
		assert_true(readiness_render_json(&r, &b));
		if (!readiness_parse_json(b.data, &back, err, sizeof(err)))
			fail_msg("input %d: %s\n%s", i, err, b.data);
		assert_int_equal(back.ready, r.ready);
		assert_true(back.score == r.score);
		assert_ptr_equal(back.recommendation, r.recommendation);
		assert_ptr_equal(back.action, r.action);
		assert_int_equal(back.metrics.attempted, r.metrics.attempted);
		assert_int_equal(back.input.total, r.input.total);
		assert_int_equal(back.criteria.min_requests, r.criteria.min_requests);
		for (k = 0; k < READINESS_CRITERIA; k++) {
			assert_int_equal(back.criterion[k].verdict, r.criterion[k].verdict);
			assert_string_equal(back.criterion[k].name, r.criterion[k].name);
		}
		want = render_text(&r);
		got = render_text(&back);
		assert_string_equal(got, want);
		if (i == 1) {
			assert_string_equal(back.database, "app");
			assert_int_equal(back.input.n_top, 2);
			assert_string_equal(back.input.top[0].plan,
					    "Seq Scan on big rows=1 cost=5.5");
			assert_non_null(strstr(got, "     mirror plan: Seq Scan on big"));
			assert_non_null(strstr(got, "Database: app\n"));
		}
		free(want);
		free(got);
		buf_free(&b);
	}
}

/* Anything that is not such a report is refused with a reason. */
static void test_json_parse_refuses(void **state)
{
	static const char *const bad[] = {
	    "",
	    "not json",
	    "[]",
	    "{\"ready\": \"yes\"}",
	    "{\"ready\": true, \"confidence_score\": 100}",
	    "{\"ready\": true, \"confidence_score\": 100, \"recommendation\": \"Low\"}",
	    "{\"ready\": true, \"confidence_score\": 101, \"recommendation\": \"Highly "
	    "Confident\"}",
	};
	struct readiness_criteria c;
	struct readiness_input in;
	struct readiness_report r;
	char err[256], *p;
	struct buf b;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err[0] = '\0';
		assert_false(readiness_parse_json(bad[i], &r, err, sizeof(err)));
		assert_true(err[0] != '\0');
	}
	/* a valid report with one criterion renamed, one count missing */
	good_input(&in);
	readiness_criteria_default(&c);
	c.max_regressed_statements = 0; /* judged */
	readiness_evaluate(&in, &c, &r);
	buf_init(&b, 1 << 20);
	assert_true(readiness_render_json(&r, &b));
	assert_true(readiness_parse_json(b.data, &r, err, sizeof(err)));
	p = strstr(b.data, "\"streak\"");
	assert_non_null(p);
	memcpy(p + 1, "strike", 6);
	assert_false(readiness_parse_json(b.data, &r, err, sizeof(err)));
	assert_string_equal(err, "criteria: entry 4 (streak) missing or malformed");
	memcpy(p + 1, "streak", 6);
	p = strstr(b.data, "\"dropped\":");
	assert_non_null(p);
	memcpy(p + 1, "dropper", 7);
	assert_false(readiness_parse_json(b.data, &r, err, sizeof(err)));
	assert_string_equal(err, "metrics missing or malformed");
	buf_free(&b);
}

static void test_alerts_fire_and_clear_once(void **state)
{
	struct readiness_alert_config cfg = {.error_threshold = 100, .latency_threshold_ms = 5000};
	struct readiness_alert_state s = {0};
	struct readiness_alert_event ev[READINESS_ALERTS];
	struct readiness_alert_input in = {.window_p99_ms = NAN};
	static const uint64_t errs[] = {0, 50, 99, 100, 150, 1000, 0, 0, 3};
	int fired = 0, cleared = 0, n;
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(errs) / sizeof(errs[0]); i++) {
		in.consecutive_errors = errs[i];
		n = readiness_alerts_update(&s, &cfg, &in, ev);
		assert_true(n <= 1);
		if (!n)
			continue;
		assert_int_equal(ev[0].alert, READINESS_ALERT_CONSECUTIVE_ERRORS);
		if (ev[0].change == READINESS_ALERT_FIRED) {
			assert_int_equal(errs[i], 100);
			assert_string_equal(
			    ev[0].message, "mirror alert consecutive_errors fired: 100 consecutive "
					   "mirror errors (threshold 100)");
			fired++;
		} else {
			assert_int_equal(errs[i], 0);
			cleared++;
		}
	}
	assert_int_equal(fired, 1);
	assert_int_equal(cleared, 1);
	assert_false(s.active[READINESS_ALERT_CONSECUTIVE_ERRORS]);

	/* latency: NaN (empty window) keeps the state */
	in.consecutive_errors = 0;
	in.window_p99_ms = 4000;
	assert_int_equal(readiness_alerts_update(&s, &cfg, &in, ev), 0);
	in.window_p99_ms = 6000;
	assert_int_equal(readiness_alerts_update(&s, &cfg, &in, ev), 1);
	assert_int_equal(ev[0].alert, READINESS_ALERT_LATENCY);
	assert_int_equal(ev[0].change, READINESS_ALERT_FIRED);
	assert_string_equal(ev[0].message, "mirror alert latency fired: mirror p99 latency "
					   "6000.00ms over the current window exceeds 5000ms");
	in.window_p99_ms = NAN;
	assert_int_equal(readiness_alerts_update(&s, &cfg, &in, ev), 0);
	assert_true(s.active[READINESS_ALERT_LATENCY]);
	in.window_p99_ms = 7000;
	assert_int_equal(readiness_alerts_update(&s, &cfg, &in, ev), 0);
	in.window_p99_ms = 5000; /* not above the threshold any more */
	assert_int_equal(readiness_alerts_update(&s, &cfg, &in, ev), 1);
	assert_int_equal(ev[0].change, READINESS_ALERT_CLEARED);
	assert_false(s.active[READINESS_ALERT_LATENCY]);

	/* both at once, then disabling clears */
	in.consecutive_errors = 500;
	in.window_p99_ms = 9000;
	assert_int_equal(readiness_alerts_update(&s, &cfg, &in, ev), 2);
	cfg.error_threshold = 0;
	cfg.latency_threshold_ms = 0;
	assert_int_equal(readiness_alerts_update(&s, &cfg, &in, ev), 2);
	assert_int_equal(ev[0].change, READINESS_ALERT_CLEARED);
	assert_int_equal(ev[1].change, READINESS_ALERT_CLEARED);
	assert_int_equal(readiness_alerts_update(&s, &cfg, &in, ev), 0);
}

static void test_quantile(void **state)
{
	uint64_t b[STATS_BUCKETS + 1] = {0};

	(void)state;
	assert_true(isnan(stats_quantile_ms(b, 0.99, 0)));
	/* 100 observations in (25 ms, 50 ms]: p99 at 99% of the bucket's width */
	b[9] = 100;
	assert_true(fabs(stats_quantile_ms(b, 0.99, 0) - 49.75) < 1e-9);
	assert_true(fabs(stats_quantile_ms(b, 0.5, 0) - 37.5) < 1e-9);
	/* the largest observation caps it */
	assert_true(fabs(stats_quantile_ms(b, 0.99, 40 * MS) - 40) < 1e-9);
	/* 98 fast, 2 slow: p99 falls in the slow bucket */
	memset(b, 0, sizeof(b));
	b[0] = 98;
	b[13] = 2; /* (500 ms, 1 s] */
	assert_true(fabs(stats_quantile_ms(b, 0.99, 0) - 750) < 1e-9);
	/* the overflow bucket tops at the largest observation, else at 30 s */
	memset(b, 0, sizeof(b));
	b[STATS_BUCKETS] = 10;
	assert_true(stats_quantile_ms(b, 0.99, 0) == 30000);
	assert_true(fabs(stats_quantile_ms(b, 0.5, 40 * SEC) - 35000) < 1e-6);
}

static char *render_metrics(struct stats *st, uint64_t now)
{
	struct buf b;

	buf_init(&b, 1 << 24);
	assert_true(stats_render(st, NULL, "test", now, &b));
	return buf_steal(&b, NULL);
}

/* RESET MIRROR STATS restarts the readiness window; counters keep counting. */
static void test_stats_readiness_window_reset(void **state)
{
	struct stats_config cfg = {.max_databases = 4, .mirror_enabled = true, .start_ns = SEC};
	struct stats *st = stats_new(&cfg);
	struct stats_db *db = stats_db(st, "app");
	struct stats_mirror_snapshot snap;
	struct readiness_input in;
	char *text;
	int i;

	(void)state;
	for (i = 0; i < 10; i++) {
		stats_mirror_request(st, db);
		if (i < 2) {
			stats_mirror_not_sampled(st, db);
			continue;
		}
		stats_mirror_success(st, db, 40 * MS, 10 * MS, 0, 2 * SEC);
		stats_mirror_compared(st, db, i == 5 ? 1u << STATS_MISMATCH_ROWCOUNT : 0);
	}
	stats_mirror_request(st, db);
	stats_mirror_dropped(st, db, 2 * SEC);
	stats_readiness_input(st, 11 * SEC, &in);
	assert_int_equal(in.total, 11);
	assert_int_equal(in.selected, 9);
	assert_int_equal(in.mirrored, 8);
	assert_int_equal(in.dropped, 1);
	assert_int_equal(in.compared, 8);
	assert_int_equal(in.mismatched, 1);
	assert_int_equal(in.consecutive_successes, 8); /* a drop does not break the run */
	assert_true(in.runtime_seconds == 10);
	assert_true(in.uptime_seconds == 10);
	assert_true(in.mirror_avg_ms == 40);
	assert_true(in.source_avg_ms == 10);
	assert_true(in.mirror_p99_ms <= 40 && in.mirror_p99_ms > 25);
	assert_true(in.source_p99_ms <= 10 && in.source_p99_ms > 5);

	stats_readiness_reset(st, 20 * SEC);
	stats_readiness_input(st, 21 * SEC, &in);
	assert_int_equal(in.total, 0);
	assert_int_equal(in.selected, 0);
	assert_int_equal(in.mirrored, 0);
	assert_int_equal(in.dropped, 0);
	assert_int_equal(in.compared, 0);
	assert_int_equal(in.consecutive_successes, 0);
	assert_true(in.runtime_seconds == 1);
	assert_true(in.uptime_seconds == 20);
	assert_true(isnan(in.mirror_avg_ms) && isnan(in.mirror_p99_ms));
	assert_true(isnan(in.source_p99_ms));
	/* the counters did not move back */
	stats_mirror_snapshot(st, 21 * SEC, &snap);
	assert_int_equal(snap.total, 11);
	assert_int_equal(snap.mirrored, 8);
	/* after the reset, the window counts again; a query error breaks the run */
	stats_mirror_request(st, db);
	stats_mirror_success(st, db, 2 * MS, MS, 0, 22 * SEC);
	stats_mirror_request(st, db);
	stats_mirror_error(st, db, STATS_ERR_QUERY, 22 * SEC);
	stats_mirror_request(st, db);
	stats_mirror_success(st, db, 2 * MS, MS, 0, 22 * SEC);
	stats_readiness_input(st, 23 * SEC, &in);
	assert_int_equal(in.total, 3);
	assert_int_equal(in.mirrored, 2);
	assert_int_equal(in.errors_query, 1);
	assert_int_equal(in.consecutive_successes, 1);

	/* the gauges show what the shell set */
	text = render_metrics(st, 23 * SEC);
	assert_contains(text, "# TYPE mirror_readiness_ready gauge\nmirror_readiness_ready 0\n");
	assert_contains(text, "mirror_alert_active{alert=\"latency\"} 0\n");
	free(text);
	stats_set_readiness(st, true, 90);
	stats_set_alert(st, READINESS_ALERT_LATENCY, true);
	text = render_metrics(st, 23 * SEC);
	assert_contains(text, "mirror_readiness_ready 1\n");
	assert_contains(text, "# TYPE mirror_readiness_confidence_score gauge\n"
			      "mirror_readiness_confidence_score 90\n");
	assert_contains(text, "mirror_alert_active{alert=\"consecutive_errors\"} 0\n");
	assert_contains(text, "mirror_alert_active{alert=\"latency\"} 1\n");
	free(text);
	stats_free(st);
}

/* The latency alert's p99 covers the current reset interval only. */
static void test_stats_alert_window(void **state)
{
	struct stats_config cfg = {
	    .max_databases = 4, .mirror_enabled = true, .reset_interval_ns = 10 * SEC};
	struct stats *st = stats_new(&cfg);
	struct stats_db *db = stats_db(st, "app");
	struct readiness_alert_input in;
	int i;

	(void)state;
	stats_alert_input(st, SEC, &in);
	assert_true(isnan(in.window_p99_ms));
	for (i = 0; i < 100; i++)
		stats_mirror_success(st, db, 7 * SEC, MS, 0, SEC);
	stats_alert_input(st, 2 * SEC, &in);
	assert_true(in.window_p99_ms > 5000 && in.window_p99_ms <= 7000);
	stats_alert_input(st, 12 * SEC, &in); /* a new window, empty */
	assert_true(isnan(in.window_p99_ms));
	stats_mirror_success(st, db, 3 * MS, MS, 0, 13 * SEC);
	stats_alert_input(st, 13 * SEC, &in);
	assert_true(in.window_p99_ms <= 3);
	for (i = 0; i < 3; i++)
		stats_mirror_error(st, db, STATS_ERR_CONNECTION, 14 * SEC);
	stats_mirror_dropped(st, db, 14 * SEC);
	stats_alert_input(st, 14 * SEC, &in);
	assert_int_equal(in.consecutive_errors, 4);
	stats_free(st);
}

static void test_stats_db_rows(void **state)
{
	struct stats_config cfg = {.max_databases = 4, .mirror_enabled = true};
	struct stats *st = stats_new(&cfg);
	struct stats_db *a = stats_db(st, "a"), *b = stats_db(st, "b");
	struct stats_db_row rows[4];
	int i;

	(void)state;
	for (i = 0; i < 6; i++) {
		stats_source_request(a, MS, false, "");
		stats_mirror_request(st, a);
	}
	stats_mirror_success(st, a, 4 * MS, 2 * MS, 0, 1);
	stats_mirror_success(st, a, 4 * MS, 2 * MS, 0, 1);
	stats_mirror_compared(st, a, 3);
	stats_mirror_not_sampled(st, a);
	stats_mirror_skipped(st, a, STATS_SKIP_WRITE);
	stats_mirror_error(st, a, STATS_ERR_TIMEOUT, 1);
	/* one in flight */
	stats_mirror_request(st, b);
	stats_mirror_dropped(st, b, 1);
	assert_int_equal(stats_db_rows(st, rows, 1), 2);
	assert_int_equal(stats_db_rows(st, rows, 4), 2);
	assert_string_equal(rows[0].name, "a");
	assert_int_equal(rows[0].source_requests, 6);
	assert_int_equal(rows[0].requests, 6);
	assert_int_equal(rows[0].mirrored, 2);
	assert_int_equal(rows[0].not_sampled, 1);
	assert_int_equal(rows[0].skipped, 1);
	assert_int_equal(rows[0].errors[STATS_ERR_TIMEOUT], 1);
	assert_int_equal(rows[0].in_flight, 1);
	assert_int_equal(rows[0].compared, 1);
	assert_int_equal(rows[0].mismatched, 1);
	assert_true(rows[0].mirror_avg_ms == 4);
	assert_true(rows[0].source_avg_ms == 2);
	assert_true(rows[0].mirror_p99_ms > 2.5 && rows[0].mirror_p99_ms <= 5);
	assert_string_equal(rows[1].name, "b");
	assert_int_equal(rows[1].dropped, 1);
	assert_int_equal(rows[1].errors[STATS_ERR_BUFFER_FULL], 1);
	assert_int_equal(rows[1].in_flight, 0);
	assert_true(isnan(rows[1].mirror_avg_ms) && isnan(rows[1].source_p99_ms));
	stats_free(st);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_all_pass),
	    cmocka_unit_test(test_error_rate_fails_alone),
	    cmocka_unit_test(test_error_rate_at_threshold_passes),
	    cmocka_unit_test(test_latency_average_fails_alone),
	    cmocka_unit_test(test_latency_p99_fails_alone),
	    cmocka_unit_test(test_latency_floor),
	    cmocka_unit_test(test_runtime_fails_alone),
	    cmocka_unit_test(test_volume_fails_alone),
	    cmocka_unit_test(test_streak_fails_alone),
	    cmocka_unit_test(test_coverage_fails_alone),
	    cmocka_unit_test(test_parity_fails_alone),
	    cmocka_unit_test(test_score_clamped),
	    cmocka_unit_test(test_no_data),
	    cmocka_unit_test(test_decision_matrix_bands),
	    cmocka_unit_test(test_readiness_calculation),
	    cmocka_unit_test(test_text_report),
	    cmocka_unit_test(test_json_report),
	    cmocka_unit_test(test_json_round_trip),
	    cmocka_unit_test(test_json_parse_refuses),
	    cmocka_unit_test(test_alerts_fire_and_clear_once),
	    cmocka_unit_test(test_quantile),
	    cmocka_unit_test(test_stats_readiness_window_reset),
	    cmocka_unit_test(test_stats_alert_window),
	    cmocka_unit_test(test_stats_db_rows),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
