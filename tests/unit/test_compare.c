// SPDX-License-Identifier: BSD-2-Clause
/* Unit tests of answer comparison (compare.c). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "compare.h"

#define TAG	 (1u << COMPARE_TAG)
#define ROWCOUNT (1u << COMPARE_ROWCOUNT)
#define SQLSTATE (1u << COMPARE_SQLSTATE)
#define ROWS	 (1u << COMPARE_ROWS)

static struct compare_answer ok(const char *verb, uint64_t rows, uint64_t hash)
{
	struct compare_answer a = {.rows = rows, .hash = hash, .hashed = true};

	strcpy(a.verb, verb);
	return a;
}

static struct compare_answer failed(const char *sqlstate)
{
	struct compare_answer a = {.error = true};

	strcpy(a.sqlstate, sqlstate);
	return a;
}

static void equal_answers(void **state)
{
	struct compare_scope sc;
	struct compare_answer a = ok("SELECT", 3, 42), b = ok("SELECT", 3, 42);

	(void)state;
	compare_scope_of(&sc, true, false, 0, false);
	assert_int_equal(compare_answers(&sc, &a, &b), 0);
}

static void each_kind(void **state)
{
	struct compare_scope sc;
	struct compare_answer src = ok("UPDATE", 1, 7), m;

	(void)state;
	compare_scope_of(&sc, true, false, 0, false);
	m = ok("INSERT", 1, 7);
	assert_int_equal(compare_answers(&sc, &src, &m), TAG);
	m = ok("UPDATE", 0, 7);
	assert_int_equal(compare_answers(&sc, &src, &m), ROWCOUNT);
	m = ok("UPDATE", 1, 8);
	assert_int_equal(compare_answers(&sc, &src, &m), ROWS);
	m = failed("23505");
	assert_int_equal(compare_answers(&sc, &src, &m), SQLSTATE);
	src = failed("23505");
	m = failed("23505");
	assert_int_equal(compare_answers(&sc, &src, &m), 0);
	m = failed("40P01");
	assert_int_equal(compare_answers(&sc, &src, &m), SQLSTATE);
	m = ok("UPDATE", 1, 7);
	assert_int_equal(compare_answers(&sc, &src, &m), SQLSTATE);
}

static void status_mode_ignores_rows(void **state)
{
	struct compare_scope sc;
	struct compare_answer a = ok("SELECT", 3, 1), b = ok("SELECT", 3, 2);

	(void)state;
	compare_scope_of(&sc, false, false, 0, false);
	assert_int_equal(compare_answers(&sc, &a, &b), 0);
}

/* asyncpg's fetchrow(): Execute with a row limit, answered PortalSuspended on the source
 * (no tag, the first rows only); the mirror runs the portal to completion. */
static void suspended_portal(void **state)
{
	struct compare_scope sc;
	struct compare_answer src = ok("", 1, 5), m = ok("SELECT", 10, 99);

	(void)state;
	compare_scope_of(&sc, true, true, 1, false);
	assert_int_equal(compare_answers(&sc, &src, &m), 0);
	m = ok("SELECT", 0, 0); /* fewer rows than the source sent: a real difference */
	assert_int_equal(compare_answers(&sc, &src, &m), ROWCOUNT);
	m = failed("42P01");
	assert_int_equal(compare_answers(&sc, &src, &m), SQLSTATE);
}

/* A row limit the source did not reach (it completed) compares in full. */
static void row_limit_not_reached(void **state)
{
	struct compare_scope sc;
	struct compare_answer src = ok("SELECT", 1, 5), m = ok("SELECT", 2, 5);

	(void)state;
	compare_scope_of(&sc, true, false, 1, false);
	assert_int_equal(compare_answers(&sc, &src, &m), ROWCOUNT);
}

static void nondeterministic_rows(void **state)
{
	struct compare_scope sc;
	struct compare_answer src = ok("SELECT", 1, 5), m = ok("SELECT", 1, 6);

	(void)state;
	compare_scope_of(&sc, true, false, 0, true);
	assert_int_equal(compare_answers(&sc, &src, &m), 0); /* now(): rows differ */
	m = ok("SELECT", 2, 6);
	assert_int_equal(compare_answers(&sc, &src, &m), ROWCOUNT); /* counts still compare */
}

static void unhashed_rows_do_not_compare(void **state)
{
	struct compare_scope sc;
	struct compare_answer src = ok("SELECT", 1, 5), m = ok("SELECT", 1, 6);

	(void)state;
	compare_scope_of(&sc, true, false, 0, false);
	src.hashed = false;
	assert_int_equal(compare_answers(&sc, &src, &m), 0);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(equal_answers),
	    cmocka_unit_test(each_kind),
	    cmocka_unit_test(status_mode_ignores_rows),
	    cmocka_unit_test(suspended_portal),
	    cmocka_unit_test(row_limit_not_reached),
	    cmocka_unit_test(nondeterministic_rows),
	    cmocka_unit_test(unhashed_rows_do_not_compare),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
