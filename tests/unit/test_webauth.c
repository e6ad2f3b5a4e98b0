// SPDX-License-Identifier: BSD-2-Clause
/* Basic-auth users: bcrypt hashes checked, the file's mistakes named by line. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "webauth.h"

/* htpasswd -B -C 4 style, password "s3cret" (cost 4: the test stays fast) */
#define ALICE "alice:$2b$04$abcdefghijklmnopqrstuuLZYjhNQAOdpbzt4WxWlUHjv1wsyH5DG"

static void test_check(void **state)
{
	char err[160] = "";
	struct webauth *w =
	    webauth_parse("# users\n\n" ALICE "\r\nbob:"
			  "$2y$04$abcdefghijklmnopqrstuuLZYjhNQAOdpbzt4WxWlUHjv1wsyH5DG\n",
			  err, sizeof(err));

	(void)state;
	assert_non_null(w);
	assert_true(webauth_check(w, "alice", "s3cret"));
	assert_true(webauth_check(w, "alice", "s3cret")); /* remembered */
	assert_false(webauth_check(w, "alice", "s3cret "));
	assert_false(webauth_check(w, "alice", ""));
	assert_false(webauth_check(w, "carol", "s3cret"));
	assert_false(webauth_check(w, NULL, "s3cret"));
	assert_true(webauth_check(w, "bob", "s3cret")); /* $2y$ as $2b$ */
	assert_false(webauth_check(w, "bob", "other"));
	webauth_free(w);
}

static void expect_refused(const char *text, const char *reason)
{
	char err[160] = "";

	assert_null(webauth_parse(text, err, sizeof(err)));
	if (!strstr(err, reason))
		fail_msg("refused with \"%s\", expected \"%s\"", err, reason);
}

static void test_refused(void **state)
{
	(void)state;
	expect_refused("", "no user");
	expect_refused("# only a comment\n", "no user");
	expect_refused("alice\n", "line 1: expected user:bcrypt-hash");
	expect_refused(ALICE "\n:$2b$04$x\n", "line 2: expected user:bcrypt-hash");
	expect_refused("alice:secret\n", "line 1: user alice: not a bcrypt hash");
	expect_refused("alice:$1$abc$def\n", "not a bcrypt hash");
	expect_refused("alice:$2b$20$abcdefghijklmnopqrstuuLZYjhNQAOdpbzt4WxWlUHjv1wsyH5DG\n",
		       "bcrypt cost above 16");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_check),
	    cmocka_unit_test(test_refused),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
