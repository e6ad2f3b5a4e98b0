// SPDX-License-Identifier: BSD-2-Clause
/*
 * webauth.h — basic authentication for the HTTP endpoints (web_basic_auth_file), the way
 * node_exporter's web configuration does it: users with bcrypt hashes ($2a$, $2b$,
 * $2y$), one `user:hash` per line (htpasswd -B writes them; # starts a comment). Pure:
 * parsing and checking; http.c asks it for every request when users are configured.
 */
#ifndef PGSHADOW_WEBAUTH_H
#define PGSHADOW_WEBAUTH_H

#include <stdbool.h>
#include <stddef.h>

#define WEBAUTH_USERS_MAX 100

struct webauth;

/* Reads the file's text. NULL with err (which line, what is wrong) when it is not
 * users with bcrypt hashes, or names none. */
struct webauth *webauth_parse(const char *text, char *err, size_t errlen);

/* Is password user's? Constant work per attempt (bcrypt); false for an unknown user
 * (after hashing all the same). The last good pair is remembered, so a scraper's
 * repeated requests do not each pay for bcrypt. Not thread-safe (the HTTP thread). */
bool webauth_check(struct webauth *w, const char *user, const char *password);

void webauth_free(struct webauth *w);

#endif /* PGSHADOW_WEBAUTH_H */
