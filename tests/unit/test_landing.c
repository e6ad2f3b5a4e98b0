// SPDX-License-Identifier: BSD-2-Clause
/* The landing page: what it shows with and without a mirror, every text escaped. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "landing.h"

static char *render(const struct landing *l, struct buf *b)
{
	buf_init(b, 1 << 20);
	assert_true(landing_render(l, b));
	assert_true(buf_append(b, "", 1));
	return b->data;
}

static void test_with_mirror(void **state)
{
	struct landing l = {.version = "1.2.3",
			    .captured = "port 5432 on lo (tcx)",
			    .mirror = "PostgreSQL 15.4 at 10.0.0.2:5432",
			    .has_readiness = true,
			    .has_queries = true,
			    .ready = true,
			    .score = 92.46,
			    .recommendation = "Highly Confident",
			    .requests = 12345};
	struct buf b;
	char *p;

	(void)state;
	p = render(&l, &b);
	assert_non_null(strstr(p, "<!DOCTYPE html>"));
	assert_non_null(strstr(p, "<td>1.2.3</td>"));
	assert_non_null(strstr(p, "<td>port 5432 on lo (tcx)</td>"));
	assert_non_null(strstr(p, "<td>12345</td>"));
	assert_non_null(strstr(p, "class=\"ready\">Status: <strong>READY</strong>"));
	assert_non_null(strstr(p, "<strong>92.5</strong> / 100 (Highly Confident)"));
	assert_non_null(strstr(p, "<a href=\"/metrics\">"));
	assert_non_null(strstr(p, "<a href=\"/readiness\">"));
	assert_non_null(strstr(p, "<a href=\"/readiness?format=json\">"));
	assert_non_null(strstr(p, "<a href=\"/queries\">"));
	assert_non_null(strstr(p, "</html>\n"));
	buf_free(&b);
}

static void test_observing_only_and_escaping(void **state)
{
	struct landing l = {.version = "<script>alert(1)</script>",
			    .captured = "port 1 on a&b \"x\" 'y'"};
	struct buf b;
	char *p;

	(void)state;
	p = render(&l, &b);
	assert_null(strstr(p, "<script>"));
	assert_non_null(strstr(p, "&lt;script&gt;alert(1)&lt;/script&gt;"));
	assert_non_null(strstr(p, "a&amp;b &quot;x&quot; &#39;y&#39;"));
	assert_non_null(strstr(p, "none (observing only)"));
	assert_null(strstr(p, "readiness")); /* no report without a mirror */
	assert_non_null(strstr(p, "<a href=\"/metrics\">"));
	buf_free(&b);
}

static void test_refused_growth(void **state)
{
	struct landing l = {.version = "v", .captured = "c"};
	struct buf b;

	(void)state;
	buf_init(&b, 64); /* far too small for the page */
	assert_false(landing_render(&l, &b));
	buf_free(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_with_mirror),
	    cmocka_unit_test(test_observing_only_and_escaping),
	    cmocka_unit_test(test_refused_growth),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
