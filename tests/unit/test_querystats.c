// SPDX-License-Identifier: BSD-2-Clause
/* Per-statement comparison: keys, normalized text, quantiles, regressions, bounds. */
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <cmocka.h>

#include "fingerprint.h"
#include "querystats.h"

static const char *const kinds[QUERYSTATS_KINDS] = {"tag", "rowcount", "rows", "error"};

static uint64_t fp_of(const char *text)
{
	struct fingerprint_info fi;

	fingerprint_compute(text, &fi);
	return fi.fingerprint;
}

/* n answered calls of text: source latency src_us, mirror mir_us. */
static void calls(struct querystats *qs, const char *db, const char *text, int n, double src_us,
		  double mir_us)
{
	struct querystats_obs o = {.database = db,
				   .fingerprint = fp_of(text),
				   .text = text,
				   .source_ns = (uint64_t)(src_us * 1000),
				   .mirror_answered = true,
				   .mirror_ns = (uint64_t)(mir_us * 1000)};
	int i;

	for (i = 0; i < n; i++)
		querystats_record(qs, &o);
}

static struct querystats *make(uint32_t max)
{
	struct querystats_config c;
	struct querystats *qs;

	querystats_config_default(&c);
	c.max_entries = max;
	qs = querystats_new(&c, fingerprint_normalize);
	assert_non_null(qs);
	return qs;
}

static void test_normalize(void **state)
{
	char out[64];

	(void)state;
	assert_true(fingerprint_normalize("SELECT  abalance\n FROM pgbench_accounts -- c 'x'\n"
					  " WHERE aid = 42 /* secret 'hunter2' */ AND x = 'lit'",
					  out, sizeof(out)));
	assert_string_equal(out, "SELECT abalance FROM pgbench_accounts WHERE aid = $1 AND x = $2");
	assert_true(fingerprint_normalize("SELECT * FROM t WHERE a = 1", out, 20));
	assert_string_equal(out, "SELECT * FROM t WHE");
	assert_true(
	    fingerprint_normalize("select \"a  b\" from t where s = 'p4ss'", out, sizeof(out)));
	assert_string_equal(out, "select \"a  b\" from t where s = $1");
	/* cut at a character boundary: "é" is two bytes */
	assert_true(fingerprint_normalize("select \"ééééé\"", out, 12));
	assert_string_equal(out, "select \"é"); /* 10 bytes: the next é would need 12 */
	assert_true(fingerprint_normalize("SELECT 1 ;  \n", out, sizeof(out)));
	assert_string_equal(out, "SELECT $1");
	assert_false(fingerprint_normalize("selec oops", out, sizeof(out)));
}

static void test_keyed_by_fingerprint_and_database(void **state)
{
	struct querystats_row rows[4];
	struct querystats *qs = make(100);

	(void)state;
	calls(qs, "app", "SELECT * FROM t WHERE id = 1", 3, 100, 100);
	calls(qs, "app", "SELECT * FROM t WHERE id = 2", 2, 100, 100);
	calls(qs, "other", "SELECT * FROM t WHERE id = 3", 1, 100, 100);
	assert_int_equal(querystats_rows(qs, NULL, QUERYSTATS_SORT_CALLS, rows, 4), 2);
	assert_int_equal(rows[0].source_calls, 5);
	assert_string_equal(rows[0].database, "app");
	assert_string_equal(rows[0].text, "SELECT * FROM t WHERE id = $1");
	assert_int_equal(querystats_rows(qs, "other", QUERYSTATS_SORT_CALLS, rows, 4), 1);
	assert_int_equal(rows[0].source_calls, 1);
	assert_int_equal(querystats_rows(qs, "none", QUERYSTATS_SORT_CALLS, rows, 4), 0);
	querystats_free(qs);
}

static void test_unparsed_shows_no_text(void **state)
{
	struct querystats_obs o = {.database = "app", .fingerprint = 0, .text = "selec 'hunter2'"};
	struct querystats_counts cnt;
	struct querystats_row row;
	struct querystats *qs = make(10);

	(void)state;
	querystats_record(qs, &o);
	querystats_record(qs, &o);
	assert_int_equal(querystats_rows(qs, NULL, QUERYSTATS_SORT_IMPACT, &row, 1), 1);
	assert_null(strstr(row.text, "hunter2"));
	assert_string_equal(row.text, "(statements that did not parse)");
	assert_int_equal(row.source_calls, 2);
	querystats_counts(qs, &cnt);
	assert_int_equal(cnt.unparsed_calls, 2);
	querystats_free(qs);
}

/* Under 300 calls the verdict's p99 is the third slowest call: one or two stalls of the
 * host do not make a statement regress, three do (and the row's p99 still shows them). */
static void test_verdict_needs_three_slow_calls(void **state)
{
	struct querystats_row rows[2];
	struct querystats *qs = make(10);

	(void)state;
	calls(qs, "app", "SELECT * FROM a WHERE x = 1", 58, 1000, 1000);
	calls(qs, "app", "SELECT * FROM a WHERE x = 1", 2, 1000, 50000);
	calls(qs, "app", "SELECT * FROM b WHERE x = 1", 57, 1000, 1000);
	calls(qs, "app", "SELECT * FROM b WHERE x = 1", 3, 1000, 50000);
	assert_int_equal(querystats_rows(qs, NULL, QUERYSTATS_SORT_CALLS, rows, 2), 2);
	if (strstr(rows[0].text, "FROM b")) { /* equal calls: either order */
		struct querystats_row t = rows[0];

		rows[0] = rows[1];
		rows[1] = t;
	}
	assert_true(rows[0].mirror_p99_ms > 40);
	assert_int_equal(rows[0].regressed, 0);
	assert_int_equal(rows[1].regressed, QUERYSTATS_SLOWER);
	querystats_free(qs);
}

static void test_quantiles_and_slower(void **state)
{
	struct querystats_row rows[3];
	struct querystats *qs = make(100);

	(void)state;
	/* 100 calls: 1 ms on the source, 20 ms on the mirror: 20x, 19 ms above */
	calls(qs, "app", "SELECT * FROM a WHERE x = 1", 100, 1000, 20000);
	/* the same ratio under the 5 ms floor: not a regression */
	calls(qs, "app", "SELECT * FROM b WHERE x = 1", 100, 100, 2000);
	/* 20x but only 10 calls (< min_calls 50) */
	calls(qs, "app", "SELECT * FROM c WHERE x = 1", 10, 1000, 20000);
	assert_int_equal(querystats_rows(qs, NULL, QUERYSTATS_SORT_IMPACT, rows, 3), 3);
	assert_string_equal(rows[0].text, "SELECT * FROM a WHERE x = $1");
	assert_int_equal(rows[0].regressed, QUERYSTATS_SLOWER);
	/* buckets are 19% wide: within that of the truth */
	assert_true(fabs(rows[0].source_p99_ms - 1.0) < 0.2);
	assert_true(fabs(rows[0].mirror_p99_ms - 20.0) < 4.0);
	assert_true(rows[0].p99_ratio > 15 && rows[0].p99_ratio < 25);
	assert_true(fabs(rows[0].extra_ms - 19.0) < 0.01);
	assert_true(fabs(rows[0].impact_ms - 1900.0) < 1);
	assert_int_equal(rows[1].regressed, 0);
	assert_int_equal(rows[2].regressed, 0);
	assert_int_equal(querystats_regressed(qs, NULL), 1);
	assert_int_equal(querystats_regressed(qs, "app"), 1);
	assert_int_equal(querystats_regressed(qs, "x"), 0);
	/* sorted by calls: a and b (100 each) before c */
	querystats_rows(qs, NULL, QUERYSTATS_SORT_CALLS, rows, 3);
	assert_int_equal(rows[2].source_calls, 10);
	querystats_free(qs);
}

static void test_errors_and_mismatches(void **state)
{
	struct querystats_obs o = {.database = "app",
				   .fingerprint = fp_of("SELECT missing FROM t"),
				   .text = "SELECT missing FROM t",
				   .source_ns = 1000,
				   .mirror_answered = true,
				   .mirror_ns = 1000,
				   .mirror_error = true,
				   .mirror_sqlstate = "42703",
				   .mirror_only = true};
	struct querystats_obs both = {.database = "app",
				      .fingerprint = fp_of("SELECT 1/0"),
				      .text = "SELECT 1/0",
				      .source_error = true,
				      .source_sqlstate = "22012",
				      .mirror_answered = true,
				      .mirror_error = true,
				      .mirror_sqlstate = "22012"};
	struct querystats_obs mm = {.database = "app",
				    .fingerprint = fp_of("SELECT * FROM u"),
				    .text = "SELECT * FROM u",
				    .mirror_answered = true,
				    .mismatch_kinds = 1u << 1};
	struct querystats_row rows[3];
	char text[64];
	struct querystats *qs = make(10);

	(void)state;
	querystats_record(qs, &o);
	querystats_record(qs, &both);
	querystats_record(qs, &both);
	querystats_record(qs, &mm);
	assert_int_equal(querystats_rows(qs, NULL, QUERYSTATS_SORT_IMPACT, rows, 3), 3);
	/* the two regressions first, the failing one (more failures) ahead */
	assert_string_equal(rows[0].text, "SELECT missing FROM t");
	assert_int_equal(rows[0].regressed, QUERYSTATS_FAILS);
	assert_string_equal(rows[0].mirror_only_sqlstate, "42703");
	querystats_classes_text(rows[0].mirror_classes, text, sizeof(text));
	assert_string_equal(text, "42:1");
	assert_int_equal(rows[1].regressed, QUERYSTATS_MISMATCH);
	assert_int_equal(rows[1].mismatches[1], 1);
	assert_int_equal(querystats_row_mismatched(&rows[1]), 1);
	/* an error on both sides is no regression */
	assert_int_equal(rows[2].regressed, 0);
	assert_int_equal(rows[2].source_errors, 2);
	querystats_classes_text(rows[2].source_classes, text, sizeof(text));
	assert_string_equal(text, "22:2");
	querystats_free(qs);
}

static void test_bounded_with_evictions(void **state)
{
	struct querystats_counts cnt;
	struct querystats_row rows[8];
	char text[64];
	int i;
	struct querystats *qs = make(8);

	(void)state;
	calls(qs, "app", "SELECT * FROM hot", 1000, 100, 100);
	for (i = 0; i < 100; i++) {
		/* libpg_query's fingerprint ignores digits in relation names */
		snprintf(text, sizeof(text), "SELECT * FROM t_%c%c", 'a' + i / 26, 'a' + i % 26);
		calls(qs, "app", text, 1, 100, 100);
	}
	querystats_counts(qs, &cnt);
	assert_int_equal(cnt.entries, 8);
	assert_int_equal(cnt.evictions, 93);
	/* the statement with the most calls survives */
	assert_int_equal(querystats_rows(qs, NULL, QUERYSTATS_SORT_CALLS, rows, 8), 8);
	assert_string_equal(rows[0].text, "SELECT * FROM hot");
	assert_int_equal(rows[0].source_calls, 1000);
	querystats_reset(qs);
	querystats_counts(qs, &cnt);
	assert_int_equal(cnt.entries, 0);
	assert_int_equal(cnt.evictions, 93);
	assert_int_equal(querystats_rows(qs, NULL, QUERYSTATS_SORT_CALLS, rows, 8), 0);
	querystats_free(qs);
}

static void test_json(void **state)
{
	struct querystats_row rows[2];
	struct buf b;
	cJSON *root, *st, *first;
	size_t n;
	struct querystats *qs = make(10);

	(void)state;
	calls(qs, "app", "SELECT * FROM a WHERE x = 'secret-literal'", 60, 1000, 30000);
	n = querystats_rows(qs, NULL, QUERYSTATS_SORT_IMPACT, rows, 2);
	buf_init(&b, 1 << 20);
	assert_true(querystats_render_json(rows, n, n, NULL, QUERYSTATS_SORT_IMPACT, kinds, &b));
	assert_null(strstr(b.data, "secret-literal"));
	root = cJSON_Parse(b.data);
	assert_non_null(root);
	st = cJSON_GetObjectItem(root, "statements");
	assert_int_equal(cJSON_GetArraySize(st), 1);
	first = cJSON_GetArrayItem(st, 0);
	assert_string_equal(cJSON_GetObjectItem(first, "query")->valuestring,
			    "SELECT * FROM a WHERE x = $1");
	assert_string_equal(
	    cJSON_GetArrayItem(cJSON_GetObjectItem(first, "regressed"), 0)->valuestring, "slower");
	assert_int_equal(
	    (int)cJSON_GetObjectItem(cJSON_GetObjectItem(first, "mirror"), "calls")->valuedouble,
	    60);
	cJSON_Delete(root);
	buf_free(&b);
	querystats_free(qs);
}

static void test_sort_parse(void **state)
{
	enum querystats_sort s = QUERYSTATS_SORT_IMPACT;

	(void)state;
	assert_true(querystats_sort_parse("ratio", &s));
	assert_int_equal(s, QUERYSTATS_SORT_RATIO);
	assert_false(querystats_sort_parse("Ratio", &s));
	assert_false(querystats_sort_parse(NULL, &s));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_normalize),
	    cmocka_unit_test(test_keyed_by_fingerprint_and_database),
	    cmocka_unit_test(test_unparsed_shows_no_text),
	    cmocka_unit_test(test_quantiles_and_slower),
	    cmocka_unit_test(test_verdict_needs_three_slow_calls),
	    cmocka_unit_test(test_errors_and_mismatches),
	    cmocka_unit_test(test_bounded_with_evictions),
	    cmocka_unit_test(test_json),
	    cmocka_unit_test(test_sort_parse),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
