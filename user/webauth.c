// SPDX-License-Identifier: BSD-2-Clause
/* webauth.c — bcrypt users for the HTTP endpoints. See include/webauth.h. */
#include <crypt.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "webauth.h"

struct user {
	char *name;
	char *hash;
};

struct webauth {
	struct user users[WEBAUTH_USERS_MAX];
	size_t n;
	struct crypt_data *cd;
	uint64_t good; /* XXH64 of the last user:password that checked out (0: none) */
	uint64_t seed;
};

static bool bcrypt_hash(const char *h)
{
	size_t i;

	/* $2a$, $2b$ or $2y$, two cost digits, $, 53 characters of salt and hash */
	if (strlen(h) != 60 || h[0] != '$' || h[1] != '2' || !strchr("aby", h[2]) || h[3] != '$' ||
	    h[4] < '0' || h[4] > '3' || h[5] < '0' || h[5] > '9' || h[6] != '$')
		return false;
	for (i = 7; i < 60; i++)
		if (!strchr("./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789",
			    h[i]))
			return false;
	return true;
}

struct webauth *webauth_parse(const char *text, char *err, size_t errlen)
{
	struct webauth *w = calloc(1, sizeof(*w));
	const char *p = text, *nl, *colon;
	unsigned int line = 0;
	size_t len;

	if (!w || !(w->cd = calloc(1, sizeof(*w->cd)))) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	w->seed = (uint64_t)(uintptr_t)w ^ 0x9e3779b97f4a7c15ULL;
	for (; *p; p = *nl ? nl + 1 : nl) {
		nl = p + strcspn(p, "\n");
		len = (size_t)(nl - p);
		line++;
		while (len && (p[len - 1] == '\r' || p[len - 1] == ' ' || p[len - 1] == '\t'))
			len--;
		if (!len || *p == '#')
			continue;
		colon = memchr(p, ':', len);
		if (!colon || colon == p) {
			snprintf(err, errlen, "line %u: expected user:bcrypt-hash", line);
			goto fail;
		}
		if (w->n == WEBAUTH_USERS_MAX) {
			snprintf(err, errlen, "line %u: more than %d users", line,
				 WEBAUTH_USERS_MAX);
			goto fail;
		}
		w->users[w->n].name = strndup(p, (size_t)(colon - p));
		w->users[w->n].hash = strndup(colon + 1, len - (size_t)(colon + 1 - p));
		if (!w->users[w->n].name || !w->users[w->n].hash) {
			snprintf(err, errlen, "out of memory");
			goto fail;
		}
		if (bcrypt_hash(w->users[w->n].hash) &&
		    (w->users[w->n].hash[4] - '0') * 10 + (w->users[w->n].hash[5] - '0') > 16) {
			snprintf(err, errlen,
				 "line %u: user %.64s: bcrypt cost above 16 (each check would take "
				 "seconds; htpasswd -B uses 5 to 10)",
				 line, w->users[w->n].name);
			w->n++;
			goto fail;
		}
		if (!bcrypt_hash(w->users[w->n].hash)) {
			snprintf(err, errlen,
				 "line %u: user %.64s: not a bcrypt hash ($2y$, $2b$ or $2a$, "
				 "as htpasswd -B writes it)",
				 line, w->users[w->n].name);
			w->n++;
			goto fail;
		}
		w->n++;
	}
	if (!w->n) {
		snprintf(err, errlen, "no user");
		goto fail;
	}
	return w;
fail:
	webauth_free(w);
	return NULL;
}

static uint64_t pair_hash(const struct webauth *w, const char *user, const char *password)
{
	XXH64_state_t *s = XXH64_createState();
	uint64_t h;

	XXH64_reset(s, w->seed);
	XXH64_update(s, user, strlen(user) + 1);
	XXH64_update(s, password, strlen(password));
	h = XXH64_digest(s);
	XXH64_freeState(s);
	return h ? h : 1;
}

bool webauth_check(struct webauth *w, const char *user, const char *password)
{
	const char *hash = w->users[0].hash, *got;
	bool known = false;
	uint64_t pair;
	size_t i;

	if (!user || !password)
		return false;
	pair = pair_hash(w, user, password);
	if (w->good && pair == w->good)
		return true;
	for (i = 0; i < w->n; i++)
		if (!strcmp(w->users[i].name, user)) {
			hash = w->users[i].hash;
			known = true;
			break;
		}
	/* an unknown user costs a bcrypt too: timing does not tell who exists */
	got = crypt_r(password, hash, w->cd);
	if (!known || !got || strcmp(got, hash))
		return false;
	w->good = pair;
	return true;
}

void webauth_free(struct webauth *w)
{
	size_t i;

	if (!w)
		return;
	for (i = 0; i < w->n; i++) {
		free(w->users[i].name);
		if (w->users[i].hash)
			explicit_bzero(w->users[i].hash, strlen(w->users[i].hash));
		free(w->users[i].hash);
	}
	free(w->cd);
	free(w);
}
