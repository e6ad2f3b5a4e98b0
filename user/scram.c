/* SPDX-License-Identifier: BSD-2-Clause */
/* scram.c — SCRAM-SHA-256, server side, and the console's user list; see scram.h. */
#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include "scram.h"

static const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

void scram_b64(const uint8_t *in, size_t n, char *out)
{
	size_t i, o = 0;

	for (i = 0; i + 2 < n; i += 3) {
		uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];

		out[o++] = b64chars[v >> 18];
		out[o++] = b64chars[(v >> 12) & 63];
		out[o++] = b64chars[(v >> 6) & 63];
		out[o++] = b64chars[v & 63];
	}
	if (i < n) {
		uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0);

		out[o++] = b64chars[v >> 18];
		out[o++] = b64chars[(v >> 12) & 63];
		out[o++] = i + 1 < n ? b64chars[(v >> 6) & 63] : '=';
		out[o++] = '=';
	}
	out[o] = '\0';
}

/* Strict base64 of s[0..len) into out (at most cap bytes); -1 when malformed. */
static long b64_decode(const char *s, size_t len, uint8_t *out, size_t cap)
{
	uint32_t acc = 0;
	size_t i, n = 0, pad = 0;
	int bits = 0;

	if (len % 4)
		return -1;
	for (i = 0; i < len; i++) {
		const char *p;

		if (s[i] == '=') {
			if (i < len - 2)
				return -1;
			pad++;
			continue;
		}
		if (pad || !(p = memchr(b64chars, s[i], 64)) || !s[i])
			return -1;
		acc = acc << 6 | (uint32_t)(p - b64chars);
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			if (n >= cap)
				return -1;
			out[n++] = (uint8_t)(acc >> bits);
		}
	}
	return (long)n;
}

static void hmac(const uint8_t *key, size_t klen, const void *data, size_t len,
		 uint8_t out[SCRAM_KEY_LEN])
{
	unsigned int olen = SCRAM_KEY_LEN;

	HMAC(EVP_sha256(), key, (int)klen, data, len, out, &olen);
}

static void sha256(const uint8_t *in, size_t n, uint8_t out[SCRAM_KEY_LEN])
{
	unsigned int olen = SCRAM_KEY_LEN;

	EVP_Digest(in, n, out, &olen, EVP_sha256(), NULL);
}

bool scram_make_verifier(const char *password, const uint8_t *salt, size_t salt_len,
			 uint32_t iterations, struct scram_verifier *v)
{
	uint8_t salted[SCRAM_KEY_LEN], client_key[SCRAM_KEY_LEN];

	if (!password || salt_len > SCRAM_SALT_MAX || !iterations)
		return false;
	if (!PKCS5_PBKDF2_HMAC(password, (int)strlen(password), salt, (int)salt_len,
			       (int)iterations, EVP_sha256(), SCRAM_KEY_LEN, salted))
		return false;
	v->iterations = iterations;
	memcpy(v->salt, salt, salt_len);
	v->salt_len = salt_len;
	hmac(salted, sizeof(salted), "Client Key", 10, client_key);
	sha256(client_key, sizeof(client_key), v->stored_key);
	hmac(salted, sizeof(salted), "Server Key", 10, v->server_key);
	OPENSSL_cleanse(salted, sizeof(salted));
	OPENSSL_cleanse(client_key, sizeof(client_key));
	return true;
}

bool scram_parse_verifier(const char *s, struct scram_verifier *v)
{
	const char *colon, *dollar, *colon2;
	char *end;
	unsigned long iter;
	long n;

	if (strncmp(s, "SCRAM-SHA-256$", 14))
		return false;
	s += 14;
	iter = strtoul(s, &end, 10);
	if (end == s || *end != ':' || iter == 0 || iter > 100000000)
		return false;
	colon = end;
	dollar = strchr(colon, '$');
	if (!dollar)
		return false;
	colon2 = strchr(dollar, ':');
	if (!colon2)
		return false;
	n = b64_decode(colon + 1, (size_t)(dollar - colon - 1), v->salt, sizeof(v->salt));
	if (n <= 0)
		return false;
	v->salt_len = (size_t)n;
	if (b64_decode(dollar + 1, (size_t)(colon2 - dollar - 1), v->stored_key,
		       sizeof(v->stored_key)) != SCRAM_KEY_LEN ||
	    b64_decode(colon2 + 1, strlen(colon2 + 1), v->server_key, sizeof(v->server_key)) !=
		SCRAM_KEY_LEN)
		return false;
	v->iterations = (uint32_t)iter;
	return true;
}

/* A double-quoted field at *p ("" inside for a quote) into out; false when malformed. */
static bool quoted(const char **p, char *out, size_t cap)
{
	const char *s = *p;
	size_t n = 0;

	if (*s != '"')
		return false;
	for (s++; *s && *s != '\n'; s++) {
		if (*s == '"' && s[1] == '"')
			s++;
		else if (*s == '"')
			break;
		if (n + 1 >= cap)
			return false;
		out[n++] = *s;
	}
	if (*s != '"')
		return false;
	out[n] = '\0';
	*p = s + 1;
	return true;
}

bool scram_users_parse(const char *text, const uint8_t *salts, size_t n_salts,
		       struct scram_users *out, char *err, size_t errlen)
{
	char secret[1024];
	const char *p = text;
	size_t line = 0;
	bool ok = true;

	memset(out, 0, sizeof(*out));
	out->user = calloc(SCRAM_USERS_MAX, sizeof(*out->user));
	out->cap = out->user ? SCRAM_USERS_MAX : 0;
	if (!out->user) {
		snprintf(err, errlen, "out of memory");
		return false;
	}
	while (ok && *p) {
		const char *eol = strchr(p, '\n'), *q = p;
		struct scram_user *u = &out->user[out->n];

		line++;
		while (*q == ' ' || *q == '\t' || *q == '\r')
			q++;
		if (*q == '\n' || !*q || *q == ';' || *q == '#') {
			p = eol ? eol + 1 : p + strlen(p);
			continue;
		}
		if (out->n == SCRAM_USERS_MAX) {
			snprintf(err, errlen, "line %zu: more than %d users", line,
				 SCRAM_USERS_MAX);
			ok = false;
			break;
		}
		if (!quoted(&q, u->name, sizeof(u->name)) || !u->name[0]) {
			snprintf(err, errlen,
				 "line %zu: expected \"name\" \"secret\" (a quoted name of "
				 "1 to %d bytes first)",
				 line, SCRAM_NAME_MAX - 1);
			ok = false;
			break;
		}
		while (*q == ' ' || *q == '\t')
			q++;
		if (!quoted(&q, secret, sizeof(secret))) {
			snprintf(err, errlen,
				 "line %zu: expected \"name\" \"secret\" (the secret "
				 "quoted, at most 1023 bytes)",
				 line);
			ok = false;
		} else if (!strncmp(secret, "SCRAM-SHA-256$", 14)) {
			if (!scram_parse_verifier(secret, &u->v)) {
				snprintf(
				    err, errlen,
				    "line %zu: a malformed SCRAM-SHA-256 verifier (expected "
				    "SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>)",
				    line);
				ok = false;
			}
		} else if (!strncmp(secret, "md5", 3) && strlen(secret) == 35) {
			snprintf(err, errlen,
				 "line %zu: an md5 hash cannot answer SCRAM-SHA-256: give the "
				 "password or its SCRAM verifier (pg_authid.rolpassword with "
				 "password_encryption = scram-sha-256)",
				 line);
			ok = false;
		} else if (!secret[0] || line > n_salts ||
			   !scram_make_verifier(secret, salts + (line - 1) * SCRAM_SALT_MAX, 16,
						SCRAM_ITERATIONS, &u->v)) {
			snprintf(err, errlen,
				 "line %zu: an empty password, or no verifier could be "
				 "made of it",
				 line);
			ok = false;
		}
		if (ok) {
			while (*q == ' ' || *q == '\t' || *q == '\r')
				q++;
			if (*q && *q != '\n') {
				snprintf(err, errlen, "line %zu: unexpected text after the secret",
					 line);
				ok = false;
			}
		}
		OPENSSL_cleanse(secret, sizeof(secret));
		if (ok && scram_users_find(out, u->name)) {
			snprintf(err, errlen, "line %zu: user \"%s\" listed twice", line, u->name);
			ok = false;
		}
		if (ok)
			out->n++;
		p = eol ? eol + 1 : p + strlen(p);
	}
	if (!ok)
		scram_users_free(out);
	return ok;
}

const struct scram_verifier *scram_users_find(const struct scram_users *u, const char *name)
{
	size_t i;

	for (i = 0; u && name && i < u->n; i++)
		if (!strcmp(u->user[i].name, name))
			return &u->user[i].v;
	return NULL;
}

void scram_users_free(struct scram_users *u)
{
	if (u->user)
		OPENSSL_cleanse(u->user, u->cap * sizeof(*u->user));
	free(u->user);
	u->user = NULL;
	u->n = u->cap = 0;
}

/* The value of attribute a ("a=value") in the comma-separated part list s; its length. */
static const char *attr(const char *s, char a, size_t *len)
{
	while (s && *s) {
		const char *comma = strchr(s, ',');

		if (s[0] == a && s[1] == '=') {
			*len = comma ? (size_t)(comma - s - 2) : strlen(s + 2);
			return s + 2;
		}
		s = comma ? comma + 1 : NULL;
	}
	return NULL;
}

bool scram_server_first(struct scram_exchange *x, const struct scram_verifier *v,
			const char *client_first, size_t len, const char *server_nonce, char *out,
			size_t cap)
{
	char msg[SCRAM_MESSAGE_MAX], salt[SCRAM_SALT_MAX * 2];
	const char *bare, *r;
	size_t rlen;

	memset(x, 0, sizeof(*x));
	if (len >= sizeof(msg) || memchr(client_first, '\0', len)) {
		snprintf(out, cap, "malformed SCRAM client-first-message");
		return false;
	}
	memcpy(msg, client_first, len);
	msg[len] = '\0';
	if (strncmp(msg, "n,", 2)) { /* y: wants binding we do not offer; p: binding */
		snprintf(out, cap, "channel binding is not supported by the pgshadow console");
		return false;
	}
	bare = strchr(msg + 2, ',');
	if (!bare || strncmp(bare + 1, "n=", 2) || !(r = attr(bare + 1, 'r', &rlen)) || !rlen ||
	    rlen + strlen(server_nonce) >= sizeof(x->nonce)) {
		snprintf(out, cap, "malformed SCRAM client-first-message");
		return false;
	}
	snprintf(x->client_first_bare, sizeof(x->client_first_bare), "%s", bare + 1);
	snprintf(x->nonce, sizeof(x->nonce), "%.*s%s", (int)rlen, r, server_nonce);
	if (v) {
		x->v = *v;
		x->known = true;
	} else { /* answered like a known user (same shape), refused at the end */
		memset(x->v.salt, 0x5a, 16);
		x->v.salt_len = 16;
		x->v.iterations = SCRAM_ITERATIONS;
	}
	scram_b64(x->v.salt, x->v.salt_len, salt);
	snprintf(x->server_first, sizeof(x->server_first), "r=%s,s=%s,i=%u", x->nonce, salt,
		 x->v.iterations);
	snprintf(out, cap, "%s", x->server_first);
	return true;
}

int scram_server_final(struct scram_exchange *x, const char *client_final, size_t len, char *out,
		       size_t cap)
{
	char msg[SCRAM_MESSAGE_MAX], auth[3 * SCRAM_MESSAGE_MAX], sig64[64];
	uint8_t proof[SCRAM_KEY_LEN + 4], csig[SCRAM_KEY_LEN], ckey[SCRAM_KEY_LEN];
	uint8_t stored[SCRAM_KEY_LEN], ssig[SCRAM_KEY_LEN];
	const char *c, *r, *p;
	size_t clen, rlen, plen, i;
	int ok;

	if (len >= sizeof(msg) || memchr(client_final, '\0', len)) {
		snprintf(out, cap, "malformed SCRAM client-final-message");
		return -1;
	}
	memcpy(msg, client_final, len);
	msg[len] = '\0';
	c = attr(msg, 'c', &clen);
	r = attr(msg, 'r', &rlen);
	p = strstr(msg, ",p=");
	if (!c || !r || !p || clen != 4 || strncmp(c, "biws", 4) || rlen != strlen(x->nonce) ||
	    strncmp(r, x->nonce, rlen)) {
		snprintf(out, cap,
			 "malformed SCRAM client-final-message (or another nonce, or "
			 "channel binding)");
		return -1;
	}
	plen = strlen(p + 3);
	if (b64_decode(p + 3, plen, proof, sizeof(proof)) != SCRAM_KEY_LEN) {
		snprintf(out, cap, "malformed SCRAM proof");
		return -1;
	}
	snprintf(auth, sizeof(auth), "%s,%s,%.*s", x->client_first_bare, x->server_first,
		 (int)(p - msg), msg);
	hmac(x->v.stored_key, SCRAM_KEY_LEN, auth, strlen(auth), csig);
	for (i = 0; i < SCRAM_KEY_LEN; i++)
		ckey[i] = proof[i] ^ csig[i];
	sha256(ckey, sizeof(ckey), stored);
	ok = x->known && CRYPTO_memcmp(stored, x->v.stored_key, SCRAM_KEY_LEN) == 0;
	OPENSSL_cleanse(ckey, sizeof(ckey));
	if (!ok) {
		snprintf(out, cap, "password authentication failed");
		return 0;
	}
	hmac(x->v.server_key, SCRAM_KEY_LEN, auth, strlen(auth), ssig);
	scram_b64(ssig, sizeof(ssig), sig64);
	snprintf(out, cap, "v=%s", sig64);
	return 1;
}
