// SPDX-License-Identifier: BSD-2-Clause
/* redact.c — libpq's messages without the conninfo's secret. See include/redact.h. */
#define _GNU_SOURCE /* memmem */
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "redact.h"

#define SECRETS_MAX 8

struct span {
	const char *p;
	size_t n;
};

/* The secrets of a conninfo: a URI's password (userinfo after ':'), password= values. */
static size_t secrets(const char *ci, struct span *out)
{
	const char *s = strstr(ci, "://"), *at, *colon, *p;
	size_t n = 0, len;

	if (s) {
		s += 3;
		len = strcspn(s, "/?#");
		at = memchr(s, '@', len);
		if (at) {
			colon = memchr(s, ':', (size_t)(at - s));
			if (colon && at > colon + 1)
				out[n++] = (struct span){colon + 1, (size_t)(at - colon - 1)};
		}
	}
	for (p = ci; n < SECRETS_MAX && (p = strstr(p, "password")); p += 8) {
		const char *v = p + 8;

		if (p > ci && p[-1] != ' ' && p[-1] != '\t' && p[-1] != '?' && p[-1] != '&')
			continue;
		v += strspn(v, " \t");
		if (*v != '=')
			continue;
		v++;
		v += strspn(v, " \t'");
		len = strcspn(v, " \t'&");
		if (len)
			out[n++] = (struct span){v, len};
	}
	return n;
}

/* Does [a, a+an) overlap any secret's text (one contains the other)? */
static bool secret_like(const char *a, size_t an, const struct span *sec, size_t ns)
{
	size_t i;

	for (i = 0; i < ns; i++) {
		if (!an || !sec[i].n)
			continue;
		if (an <= sec[i].n ? memmem(sec[i].p, sec[i].n, a, an) != NULL
				   : memmem(a, an, sec[i].p, sec[i].n) != NULL)
			return true;
	}
	return false;
}

void redact_libpq_message(const char *conninfo, const char *msg, char *out, size_t len)
{
	struct span sec[SECRETS_MAX];
	size_t ns = conninfo ? secrets(conninfo, sec) : 0, o = 0, i, end, k;
	const char *q;

	if (!len)
		return;
	end = msg ? strcspn(msg, "\n") : 0;
	for (i = 0; i < end && o + 1 < len;) {
		if (msg[i] == '"' && (q = memchr(msg + i + 1, '"', end - i - 1)) &&
		    secret_like(msg + i + 1, (size_t)(q - msg - i - 1), sec, ns)) {
			o += (size_t)snprintf(out + o, len - o, "\"(withheld)\"");
			if (o >= len)
				o = len - 1;
			i = (size_t)(q - msg) + 1;
			continue;
		}
		for (k = 0; k < ns; k++)
			if (sec[k].n >= 3 && i + sec[k].n <= end &&
			    !memcmp(msg + i, sec[k].p, sec[k].n))
				break;
		if (k < ns) {
			o += (size_t)snprintf(out + o, len - o, "(withheld)");
			if (o >= len)
				o = len - 1;
			i += sec[k].n;
			continue;
		}
		out[o++] = msg[i++];
	}
	out[o] = 0;
}
