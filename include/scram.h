/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * scram: the server side of SCRAM-SHA-256 (RFC 5802, RFC 7677) as PostgreSQL speaks it,
 * for the admin console's TCP listener, and the PgBouncer-style user list it checks
 * against (pure: computation only; the caller supplies the random nonce and salts).
 *
 * A user list (admin_auth_file) has one user per line, `"name" "secret"`, blank lines and
 * lines starting with `;` or `#` ignored. A secret is a SCRAM verifier as PostgreSQL
 * stores it (`SCRAM-SHA-256$<iterations>:<salt>$<StoredKey>:<ServerKey>`, what
 * `SELECT rolpassword FROM pg_authid` shows) or a password in clear, from which a verifier
 * is made at load (4096 iterations, the caller's salt). An md5 hash cannot answer SCRAM and
 * is refused with the line's number.
 *
 * Channel binding is not offered (the console has no TLS): the client must send "n,,".
 */
#ifndef PGSHADOW_SCRAM_H
#define PGSHADOW_SCRAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SCRAM_KEY_LEN	  32
#define SCRAM_SALT_MAX	  64
#define SCRAM_NONCE_RAW	  18 /* random bytes of the server's nonce (base64: 24 chars) */
#define SCRAM_NAME_MAX	  64
#define SCRAM_USERS_MAX	  256
#define SCRAM_ITERATIONS  4096 /* for verifiers made from a password */
#define SCRAM_MESSAGE_MAX 1024

struct scram_verifier {
	uint32_t iterations;
	uint8_t salt[SCRAM_SALT_MAX];
	size_t salt_len;
	uint8_t stored_key[SCRAM_KEY_LEN], server_key[SCRAM_KEY_LEN];
};

/* Parses "SCRAM-SHA-256$<iter>:<salt b64>$<StoredKey b64>:<ServerKey b64>". */
bool scram_parse_verifier(const char *s, struct scram_verifier *v);

/* A verifier for password (PBKDF2-HMAC-SHA-256 with salt). false on failure. */
bool scram_make_verifier(const char *password, const uint8_t *salt, size_t salt_len,
			 uint32_t iterations, struct scram_verifier *v);

struct scram_user {
	char name[SCRAM_NAME_MAX];
	struct scram_verifier v;
};

struct scram_users {
	struct scram_user *user; /* cap entries allocated, n of them filled */
	size_t n, cap;
};

/*
 * Parses a user list (text, NUL-terminated). salts: SCRAM_SALT_MAX bytes of randomness per
 * line (the salt of a verifier made from a clear password is the first 16 of its line's).
 * Returns false with "line N: what is wrong" in err. The secrets are not kept.
 */
bool scram_users_parse(const char *text, const uint8_t *salts, size_t n_salts,
		       struct scram_users *out, char *err, size_t errlen);

const struct scram_verifier *scram_users_find(const struct scram_users *u, const char *name);

/* Wipes and frees. */
void scram_users_free(struct scram_users *u);

/* One exchange, server side. */
struct scram_exchange {
	struct scram_verifier v; /* the user's, or a made-up one (the exchange then fails) */
	bool known;		 /* the user is in the list */
	char client_first_bare[SCRAM_MESSAGE_MAX];
	char server_first[SCRAM_MESSAGE_MAX];
	char nonce[2 * SCRAM_MESSAGE_MAX / 4]; /* client nonce + server nonce */
};

/*
 * The client's first message ("n,,n=<ignored>,r=<client nonce>") -> the server's first
 * ("r=<nonce>,s=<salt>,i=<iterations>") into out. server_nonce: printable, no ','. v NULL:
 * an unknown user, answered like a known one (a fixed made-up salt) and refused at the
 * end. false when the message is malformed (then out holds why).
 */
bool scram_server_first(struct scram_exchange *x, const struct scram_verifier *v,
			const char *client_first, size_t len, const char *server_nonce, char *out,
			size_t cap);

/*
 * The client's final message ("c=biws,r=<nonce>,p=<proof>") -> 1 and the server's final
 * ("v=<signature>") in out when the proof is right; 0 when it is wrong (or the user
 * unknown); -1 when the message is malformed. out holds why when not 1.
 */
int scram_server_final(struct scram_exchange *x, const char *client_final, size_t len, char *out,
		       size_t cap);

/* Base64 of n bytes into out (cap >= 4 * ((n + 2) / 3) + 1). */
void scram_b64(const uint8_t *in, size_t n, char *out);

#endif /* PGSHADOW_SCRAM_H */
