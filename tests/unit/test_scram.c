// SPDX-License-Identifier: BSD-2-Clause
/* SCRAM-SHA-256 server side (RFC 7677's example) and the console's user list. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include "scram.h"

static const char client_first[] = "n,,n=user,r=rOprNGfwEbeRWgbNEkqO";
static const char snonce[] = "%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0";
static const char client_final[] = "c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
				   "p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=";

static void rfc_verifier(struct scram_verifier *v)
{
	/* W22ZaJ0SNY7soEsUEjb6gQ== */
	static const uint8_t salt[16] = {0x5b, 0x6d, 0x99, 0x68, 0x9d, 0x12, 0x35, 0x8e,
					 0xec, 0xa0, 0x4b, 0x14, 0x12, 0x36, 0xfa, 0x81};

	memset(v, 0, sizeof(*v)); /* compared whole below: the unused salt bytes too */
	assert_true(scram_make_verifier("pencil", salt, sizeof(salt), 4096, v));
}

static void test_rfc7677(void **state)
{
	struct scram_verifier v, parsed;
	struct scram_exchange x;
	char out[512], stored[64], server[64], text[256];

	(void)state;
	rfc_verifier(&v);
	assert_true(scram_server_first(&x, &v, client_first, strlen(client_first), snonce, out,
				       sizeof(out)));
	assert_string_equal(out, "r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
				 "s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096");
	assert_int_equal(
	    scram_server_final(&x, client_final, strlen(client_final), out, sizeof(out)), 1);
	assert_string_equal(out, "v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=");
	/* the verifier as PostgreSQL stores it reads back the same */
	scram_b64(v.stored_key, 32, stored);
	scram_b64(v.server_key, 32, server);
	snprintf(text, sizeof(text), "SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$%s:%s", stored,
		 server);
	memset(&parsed, 0, sizeof(parsed));
	assert_true(scram_parse_verifier(text, &parsed));
	assert_memory_equal(&parsed, &v, sizeof(v));
}

static void test_wrong_proof_and_unknown_user(void **state)
{
	struct scram_verifier v;
	struct scram_exchange x;
	char out[512], bad[sizeof(client_final)];

	(void)state;
	rfc_verifier(&v);
	memcpy(bad, client_final, sizeof(bad));
	bad[sizeof(bad) - 6] ^= 1; /* one bit of the proof */
	assert_true(scram_server_first(&x, &v, client_first, strlen(client_first), snonce, out,
				       sizeof(out)));
	assert_int_equal(scram_server_final(&x, bad, strlen(bad), out, sizeof(out)), 0);
	/* an unknown user gets the same shape of answer, and fails */
	assert_true(scram_server_first(&x, NULL, client_first, strlen(client_first), snonce, out,
				       sizeof(out)));
	assert_non_null(strstr(out, ",i=4096"));
	assert_int_equal(
	    scram_server_final(&x, client_final, strlen(client_final), out, sizeof(out)), 0);
	/* malformed: channel binding asked, another nonce */
	assert_false(scram_server_first(&x, &v, "p=tls-server-end-point,,n=,r=x", 30, snonce, out,
					sizeof(out)));
	assert_true(scram_server_first(&x, &v, client_first, strlen(client_first), "other", out,
				       sizeof(out)));
	assert_int_equal(
	    scram_server_final(&x, client_final, strlen(client_final), out, sizeof(out)), -1);
}

static void test_users(void **state)
{
	static const char text[] = "; PgBouncer's userlist.txt format\n"
				   "\"alice\" \"SCRAM-SHA-256$4096:W22ZaJ0SNY7soEsUEjb6gQ==$"
				   "WG5d8oPm3OtcPnkdi4Uo7BkeZkBFzpcXkuLmtbsT4qY=:"
				   "wfPLwcE6nTWhTAmQ7tl2KeoiWGPlZqQxSrmfPwDl2dU=\"\n"
				   "\n"
				   "# a password in clear\n"
				   "\"bob\"  \"s3cret\"\r\n";
	uint8_t salts[6 * SCRAM_SALT_MAX] = {1, 2, 3};
	struct scram_users u;
	struct scram_verifier v;
	char err[256];

	(void)state;
	assert_true(scram_users_parse(text, salts, 6, &u, err, sizeof(err)));
	assert_int_equal(u.n, 2);
	assert_non_null(scram_users_find(&u, "alice"));
	assert_int_equal(scram_users_find(&u, "alice")->iterations, 4096);
	assert_non_null(scram_users_find(&u, "bob"));
	assert_true(scram_make_verifier("s3cret", salts + 5 * SCRAM_SALT_MAX, 16, 4096, &v));
	assert_memory_equal(scram_users_find(&u, "bob")->stored_key, v.stored_key, 32);
	assert_null(scram_users_find(&u, "carol"));
	scram_users_free(&u);

	assert_false(scram_users_parse("\"a\" \"md5aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\"\n", salts, 6,
				       &u, err, sizeof(err)));
	assert_non_null(strstr(err, "line 1: an md5 hash cannot answer SCRAM-SHA-256"));
	assert_false(scram_users_parse("\n\nalice secret\n", salts, 6, &u, err, sizeof(err)));
	assert_non_null(strstr(err, "line 3: expected \"name\" \"secret\""));
	assert_false(
	    scram_users_parse("\"a\" \"x\"\n\"a\" \"y\"\n", salts, 6, &u, err, sizeof(err)));
	assert_string_equal(err, "line 2: user \"a\" listed twice");
	assert_false(scram_users_parse("\"a\" \"SCRAM-SHA-256$4096:!!$x:y\"\n", salts, 6, &u, err,
				       sizeof(err)));
	assert_non_null(strstr(err, "line 1: a malformed SCRAM-SHA-256 verifier"));
	assert_false(scram_users_parse("\"a\" \"x\" extra\n", salts, 6, &u, err, sizeof(err)));
	assert_string_equal(err, "line 1: unexpected text after the secret");
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_rfc7677),
	    cmocka_unit_test(test_wrong_proof_and_unknown_user),
	    cmocka_unit_test(test_users),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
