// SPDX-License-Identifier: BSD-2-Clause
/* libpq's messages about a conninfo never carry its password. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "redact.h"

static void expect(const char *ci, const char *msg, const char *want)
{
	char out[256];

	redact_libpq_message(ci, msg, out, sizeof(out));
	assert_string_equal(out, want);
}

static void test_redact(void **state)
{
	(void)state;
	expect("postgresql://u:pa%zzsecret@h:5432/db",
	       "invalid percent-encoded token: \"pa%zzsecret\"\nmore",
	       "invalid percent-encoded token: \"(withheld)\"");
	/* a token that is part of the password, or contains it */
	expect("postgresql://u:abc%zz@h/db", "invalid token \"%zz\"",
	       "invalid token \"(withheld)\"");
	expect("host=h password=s3cr3t port=x", "invalid port \"x\"", "invalid port \"x\"");
	expect("host=h password=s3cr3t", "password s3cr3t was wrong",
	       "password (withheld) was wrong");
	expect("host=h password='s3 cr3t'", "\"s3\" unexpected", "\"(withheld)\" unexpected");
	expect("postgresql://u@h/db?password=qwerty&sslmode=x", "bad \"qwerty&x\"",
	       "bad \"(withheld)\"");
	/* nothing secret: unchanged; the user name is not a secret */
	expect("postgresql://alice:pw1@h/db", "role \"alice\" does not exist",
	       "role \"alice\" does not exist");
	expect("host=h", "invalid connection option \"bogus\"",
	       "invalid connection option \"bogus\"");
	expect(NULL, "x", "x");
}

static void test_small_out(void **state)
{
	char out[8];

	(void)state;
	redact_libpq_message("postgresql://u:longsecret@h", "bad \"longsecret\" here", out,
			     sizeof(out));
	assert_int_equal(strlen(out), 7);
	assert_null(strstr(out, "long"));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_redact),
	    cmocka_unit_test(test_small_out),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
