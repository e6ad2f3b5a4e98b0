// SPDX-License-Identifier: BSD-2-Clause
/* Dumps never store a password: authentication bodies zeroed, lengths kept, the rest
 * byte for byte, whatever the chunking. */
#define _GNU_SOURCE /* memmem */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "authblank.h"
#include "pgwire.h"
#include "wire_script.h"

/* SSLRequest (refused), StartupMessage, SASLInitialResponse, SASLResponse, then queries
 * that happen to contain a 'p' message shape in their text. */
static void client_stream(struct bb *b, size_t *secret_at, size_t *secret_len)
{
	static const char startup[] = "\0\x03\0\0user\0alice\0database\0app\0\0";
	uint8_t hdr[4];
	size_t start;

	put(b, "\0\0\0\x08\x04\xd2\x16\x2f", 8); /* SSLRequest */
	hdr[0] = 0;
	hdr[1] = 0;
	hdr[2] = 0;
	hdr[3] = (uint8_t)(4 + sizeof(startup) - 1);
	put(b, hdr, 4);
	put(b, startup, sizeof(startup) - 1);
	start = b->len;
	m_str(b, 'p', "SCRAM-SHA-256 n,,n=,r=clientnonceSECRET1");
	m_str(b, 'p', "c=biws,r=nonce,p=proofSECRET2");
	*secret_at = start;
	*secret_len = b->len - start;
	m_str(b, 'Q', "SELECT 'p' AS password_SECRET_NOT"); /* not authentication */
	m_str(b, 'p', "late");				    /* after a query: not walked any more */
}

static uint32_t be32_of(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

static void check(size_t chunk)
{
	struct bb b = {0};
	struct authblank a;
	uint8_t *out;
	size_t at, n, i, k;

	client_stream(&b, &at, &n);
	out = malloc(b.len);
	authblank_init(&a, true);
	for (i = 0; i < b.len; i += chunk) {
		size_t len = b.len - i < chunk ? b.len - i : chunk;

		authblank_feed(&a, b.p + i, len, out + i);
	}
	assert_true(authblank_done(&a));
	assert_memory_equal(out, b.p, at);				 /* startup untouched */
	assert_memory_equal(out + at + n, b.p + at + n, b.len - at - n); /* the rest too */
	assert_null(memmem(out, b.len, "SECRET1", 7));
	assert_null(memmem(out, b.len, "SECRET2", 7));
	/* headers kept ('p' and its length), bodies zeroed */
	assert_int_equal(out[at], 'p');
	assert_memory_equal(out + at + 1, b.p + at + 1, 4);
	for (k = at + 5; k < at + 5 + be32_of(b.p + at + 1) - 4; k++)
		assert_int_equal(out[k], 0);
	assert_int_equal(a.blanked, n - 10);
	free(out);
	free(b.p);
}

static void test_every_chunking(void **state)
{
	size_t c;

	(void)state;
	for (c = 1; c <= 64; c++)
		check(c);
	check(1u << 20);
}

static void test_not_walked(void **state)
{
	struct authblank a;
	struct bb b = {0};
	uint8_t out[64];
	size_t at, n;

	(void)state;
	client_stream(&b, &at, &n);
	authblank_init(&a, false); /* seen mid-stream */
	assert_false(authblank_feed(&a, b.p, 64, out));
	assert_memory_equal(out, b.p, 64);
	authblank_init(&a, true);
	authblank_gap(&a);
	assert_false(authblank_feed(&a, b.p, 64, out));
	/* a TLS ClientHello after SSLRequest is no startup packet: nothing touched */
	authblank_init(&a, true);
	assert_false(authblank_feed(
	    &a, (const uint8_t *)"\0\0\0\x08\x04\xd2\x16\x2f\x16\x03\x01\x02\x00xxxxxxxx", 21,
	    out));
	assert_true(authblank_done(&a));
	free(b.p);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_every_chunking),
	    cmocka_unit_test(test_not_walked),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
