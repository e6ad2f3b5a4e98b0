// SPDX-License-Identifier: BSD-2-Clause
/* statefile.c — the readiness window's state file, encoded and checked. See
 * include/statefile.h. */
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <xxhash.h>

#include "statefile.h"

struct field {
	const char *key;
	size_t offset;
};

#define F(k, m)                                                                                    \
	{                                                                                          \
		k, offsetof(struct stats_readiness_state, m)                                       \
	}

static const struct field fields[] = {
    F("runtime_ns", runtime_ns),
    F("total", total),
    F("not_sampled", not_sampled),
    F("compared", compared),
    F("mismatched", mismatched),
    F("mirrored", mirrored),
    F("errors_connection", errors[STATS_ERR_CONNECTION]),
    F("errors_query", errors[STATS_ERR_QUERY]),
    F("errors_timeout", errors[STATS_ERR_TIMEOUT]),
    F("errors_buffer_full", errors[STATS_ERR_BUFFER_FULL]),
    F("streak", streak),
    F("mirror_sum_ns", mirror_sum_ns),
    F("source_sum_ns", source_sum_ns),
    F("mirror_max_ns", mirror_max_ns),
    F("source_max_ns", source_max_ns),
};

static const struct field hists[] = {
    F("mirror_hist", mirror_hist),
    F("source_hist", source_hist),
};

#define N(a) (sizeof(a) / sizeof((a)[0]))

/* The conninfo's keywords that name the server and the session, in key=value or URI
 * form, without the password: the same mirror gives the same id. */
uint64_t statefile_mirror_id(const char *conninfo)
{
	XXH64_state_t *h = XXH64_createState();
	const char *p = conninfo ? conninfo : "";
	uint64_t id;

	XXH64_reset(h, 0);
	while (*p) {
		size_t n = strcspn(p, " \t\n");
		bool secret = (n >= 9 && !strncmp(p, "password=", 9)) ||
			      (n >= 9 && !strncmp(p, "passfile=", 9));

		if (!secret) {
			const char *at = memchr(p, '@', n), *scheme = strstr(p, "://");

			/* postgresql://user:password@host: keep the user, not the password */
			if (at && scheme && scheme < at) {
				const char *colon =
				    memchr(scheme + 3, ':', (size_t)(at - scheme - 3));

				XXH64_update(h, p, (size_t)((colon ? colon : at) - p));
				XXH64_update(h, at, n - (size_t)(at - p));
			} else {
				XXH64_update(h, p, n);
			}
			XXH64_update(h, "\n", 1);
		}
		p += n;
		p += strspn(p, " \t\n");
	}
	id = XXH64_digest(h);
	XXH64_freeState(h);
	return id;
}

static uint64_t *at(struct stats_readiness_state *s, size_t offset)
{
	return (uint64_t *)((char *)s + offset);
}

bool statefile_encode(const struct stats_readiness_state *s, const char *version, uint64_t mirror,
		      struct buf *out)
{
	struct stats_readiness_state c = *s;
	size_t start = out->len, i, k;

	buf_printf(out, "pgshadow-state %d\nversion %s\nmirror %016" PRIx64 "\n", STATEFILE_FORMAT,
		   version, mirror);
	for (i = 0; i < N(fields); i++)
		buf_printf(out, "%s %" PRIu64 "\n", fields[i].key, *at(&c, fields[i].offset));
	for (i = 0; i < N(hists); i++) {
		buf_printf(out, "%s", hists[i].key);
		for (k = 0; k <= STATS_BUCKETS; k++)
			buf_printf(out, " %" PRIu64, at(&c, hists[i].offset)[k]);
		buf_printf(out, "\n");
	}
	if (out->overflow)
		return false;
	buf_printf(out, "checksum %016" PRIx64 "\n",
		   (uint64_t)XXH64(out->data + start, out->len - start, 0));
	return !out->overflow;
}

/* The next line of text (without its '\n') as a NUL-terminated copy in line; false at
 * the end or when a line is too long or unterminated. */
static bool next_line(const char *text, size_t len, size_t *pos, char *line, size_t cap)
{
	const char *nl;
	size_t n;

	if (*pos >= len)
		return false;
	nl = memchr(text + *pos, '\n', len - *pos);
	if (!nl)
		return false;
	n = (size_t)(nl - (text + *pos));
	if (n >= cap)
		return false;
	memcpy(line, text + *pos, n);
	line[n] = 0;
	*pos += n + 1;
	return true;
}

/* A decimal at *p (advanced past it); false unless digits only, in range. */
static bool number(char **p, uint64_t *v)
{
	char *end;

	if (**p < '0' || **p > '9')
		return false;
	errno = 0;
	*v = strtoull(*p, &end, 10);
	if (errno)
		return false;
	*p = end;
	return true;
}

#define REFUSE(...)                                                                                \
	do {                                                                                       \
		snprintf(why, whylen, __VA_ARGS__);                                                \
		return -1;                                                                         \
	} while (0)

int statefile_decode(const char *text, size_t len, const char *version, uint64_t mirror,
		     struct stats_readiness_state *out, char *why, size_t whylen)
{
	char line[512], *p;
	size_t pos = 0, sum_end, i, k, klen;
	uint64_t v, got;
	int format;

	memset(out, 0, sizeof(*out));
	if (len > STATEFILE_MAX)
		REFUSE("longer than %d bytes", STATEFILE_MAX);
	if (!next_line(text, len, &pos, line, sizeof(line)) ||
	    sscanf(line, "pgshadow-state %d", &format) != 1)
		REFUSE("not a pgshadow state file");
	if (format != STATEFILE_FORMAT)
		REFUSE("format %d, this agent writes format %d", format, STATEFILE_FORMAT);
	if (!next_line(text, len, &pos, line, sizeof(line)) || strncmp(line, "version ", 8))
		REFUSE("no version line");
	if (strcmp(line + 8, version))
		REFUSE("written by version %s, this is %s", line + 8, version);
	if (!next_line(text, len, &pos, line, sizeof(line)) ||
	    sscanf(line, "mirror %16" SCNx64, &got) != 1 || strlen(line) != 7 + 16)
		REFUSE("no mirror line");
	if (got != mirror)
		REFUSE("it judged another mirror (the --mirror conninfo changed)");
	for (i = 0; i < N(fields); i++) {
		klen = strlen(fields[i].key);
		if (!next_line(text, len, &pos, line, sizeof(line)) ||
		    strncmp(line, fields[i].key, klen) || line[klen] != ' ')
			REFUSE("line %zu is not %s", i + 4, fields[i].key);
		p = line + klen + 1;
		if (!number(&p, &v) || *p)
			REFUSE("%s is not a number", fields[i].key);
		*at(out, fields[i].offset) = v;
	}
	for (i = 0; i < N(hists); i++) {
		klen = strlen(hists[i].key);
		if (!next_line(text, len, &pos, line, sizeof(line)) ||
		    strncmp(line, hists[i].key, klen))
			REFUSE("no %s line", hists[i].key);
		p = line + klen;
		for (k = 0; k <= STATS_BUCKETS; k++) {
			if (*p++ != ' ' || !number(&p, &v))
				REFUSE("%s: %d numbers expected", hists[i].key, STATS_BUCKETS + 1);
			at(out, hists[i].offset)[k] = v;
		}
		if (*p)
			REFUSE("%s: %d numbers expected", hists[i].key, STATS_BUCKETS + 1);
	}
	sum_end = pos;
	if (!next_line(text, len, &pos, line, sizeof(line)) ||
	    sscanf(line, "checksum %16" SCNx64, &got) != 1 || strlen(line) != 9 + 16)
		REFUSE("no checksum line");
	if (pos != len)
		REFUSE("text after the checksum");
	if (got != (uint64_t)XXH64(text, sum_end, 0))
		REFUSE("checksum mismatch (the file was changed or cut short)");
	if (out->mirrored > out->total || out->streak > out->mirrored ||
	    out->not_sampled > out->total || out->mismatched > out->compared)
		REFUSE("counts that contradict each other");
	return 0;
}
