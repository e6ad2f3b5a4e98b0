// SPDX-License-Identifier: BSD-2-Clause
/* The plan summary: node types, relations, indexes and estimates, never a condition. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "plan.h"

/* PostgreSQL 15's EXPLAIN (FORMAT JSON) of a join, with conditions holding literals. */
static const char join_plan[] =
    "[{\"Plan\": {\"Node Type\": \"Nested Loop\", \"Parallel Aware\": false, \"Async "
    "Capable\": false, \"Join Type\": \"Inner\", \"Startup Cost\": 0.29, \"Total Cost\": 40.1, "
    "\"Plan Rows\": 5, \"Plan Width\": 8, \"Inner Unique\": true, \"Plans\": [{\"Node Type\": "
    "\"Seq Scan\", \"Parent Relationship\": \"Outer\", \"Relation Name\": \"a\", \"Alias\": "
    "\"a\", \"Startup Cost\": 0.0, \"Total Cost\": 1.05, \"Plan Rows\": 5, \"Plan Width\": 4, "
    "\"Filter\": \"(a.secret = 'hunter2'::text)\"}, {\"Node Type\": \"Index Scan\", "
    "\"Parent Relationship\": \"Inner\", \"Scan Direction\": \"Forward\", \"Index Name\": "
    "\"b_pkey\", \"Relation Name\": \"b\", \"Alias\": \"b\", \"Startup Cost\": 0.29, \"Total "
    "Cost\": 7.01, \"Plan Rows\": 1, \"Plan Width\": 4, \"Index Cond\": \"(b.id = 4217)\"}]}}]";

static void test_join(void **state)
{
	char out[PLAN_SUMMARY_MAX];

	(void)state;
	assert_true(plan_summarize(join_plan, out, sizeof(out)));
	assert_string_equal(out, "Nested Loop rows=5 cost=40.10; >Seq Scan on a rows=5 cost=1.05; "
				 ">Index Scan using b_pkey on b rows=1 cost=7.01");
	assert_null(strstr(out, "hunter2"));
	assert_null(strstr(out, "4217"));
}

static void test_cut(void **state)
{
	char out[32];

	(void)state;
	/* cut between the pieces of a node, never inside a name */
	assert_true(plan_summarize(join_plan, out, sizeof(out)));
	assert_string_equal(out, "Nested Loop rows=5...");
}

static void test_not_a_plan(void **state)
{
	char out[64];

	(void)state;
	assert_false(plan_summarize("[]", out, sizeof(out)));
	assert_false(plan_summarize("{\"Plan\": {}}", out, sizeof(out)));
	assert_false(plan_summarize("[{\"Plan\": {\"Total Cost\": 1}}]", out, sizeof(out)));
	assert_false(plan_summarize("not json", out, sizeof(out)));
	assert_false(plan_summarize(NULL, out, sizeof(out)));
	assert_true(plan_summarize("[{\"Plan\": {\"Node Type\": \"Result\"}}]", out, sizeof(out)));
	assert_string_equal(out, "Result");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_join),
	    cmocka_unit_test(test_cut),
	    cmocka_unit_test(test_not_a_plan),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
