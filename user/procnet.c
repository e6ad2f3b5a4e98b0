// SPDX-License-Identifier: BSD-2-Clause
/* procnet.c — parsers of /proc texts for the TLS probes. See include/procnet.h. */
#include <ctype.h>
#include <stdbool.h>
#include <string.h>

#include "procnet.h"

/* The next line of [*p, end): its start and length (without the newline); false at the end. */
static bool next_line(const char **p, const char *end, const char **line, size_t *n)
{
	const char *nl;

	if (*p >= end)
		return false;
	nl = memchr(*p, '\n', (size_t)(end - *p));
	*line = *p;
	*n = (size_t)((nl ? nl : end) - *p);
	*p = nl ? nl + 1 : end;
	return true;
}

/* Up to max whitespace-separated fields of a line. Returns how many. */
static int fields(const char *line, size_t n, const char **f, size_t *fl, int max)
{
	size_t i = 0;
	int k = 0;

	while (k < max) {
		while (i < n && (line[i] == ' ' || line[i] == '\t'))
			i++;
		if (i == n)
			break;
		f[k] = line + i;
		while (i < n && line[i] != ' ' && line[i] != '\t')
			i++;
		fl[k] = (size_t)(line + i - f[k]);
		k++;
	}
	return k;
}

/* n digits of base 10 or 16 at s, all of them. */
static bool parse_num(const char *s, size_t n, unsigned int base, uint64_t *out)
{
	uint64_t v = 0;
	size_t i;

	if (n == 0 || n > (base == 16 ? 16 : 19))
		return false;
	for (i = 0; i < n; i++) {
		int c = tolower((unsigned char)s[i]), d;

		if (isdigit(c))
			d = c - '0';
		else if (base == 16 && c >= 'a' && c <= 'f')
			d = c - 'a' + 10;
		else
			return false;
		v = v * base + (uint64_t)d;
	}
	*out = v;
	return true;
}

int procnet_listen_inodes(const char *text, size_t len, uint16_t port, uint64_t *out, size_t *n,
			  size_t cap)
{
	const char *p = text, *end = text + len, *line, *f[10];
	size_t ln, fl[10], i;
	int found = 0;

	/* "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid
	 * timeout inode" */
	if (!next_line(&p, end, &line, &ln) || fields(line, ln, f, fl, 2) != 2 || fl[0] != 2 ||
	    memcmp(f[0], "sl", 2) || fl[1] != 13 || memcmp(f[1], "local_address", 13))
		return -1;
	while (next_line(&p, end, &line, &ln)) {
		uint64_t lport, state, inode;
		const char *colon;

		/* sl local rem st queues tr:when retrnsmt uid timeout inode */
		if (fields(line, ln, f, fl, 10) != 10)
			continue;
		colon = memchr(f[1], ':', fl[1]);
		if (!colon ||
		    !parse_num(colon + 1, fl[1] - (size_t)(colon + 1 - f[1]), 16, &lport) ||
		    !parse_num(f[3], fl[3], 16, &state) || !parse_num(f[9], fl[9], 10, &inode))
			continue;
		if (lport != port || state != 0x0A /* TCP_LISTEN */ || inode == 0)
			continue;
		found++;
		for (i = 0; i < *n && out[i] != inode; i++)
			;
		if (i == *n && *n < cap)
			out[(*n)++] = inode;
	}
	return found;
}

uint64_t procnet_socket_inode(const char *link)
{
	size_t n = strlen(link);
	uint64_t inode;

	if (n < 10 || strncmp(link, "socket:[", 8) || link[n - 1] != ']' ||
	    !parse_num(link + 8, n - 9, 10, &inode))
		return 0;
	return inode;
}

long procnet_stat_ppid(const char *text, size_t len)
{
	const char *rp = NULL, *p, *end = text + len, *f[2];
	size_t fl[2];
	uint64_t ppid;
	size_t i;

	for (i = 0; i < len; i++) /* comm ends at the last ')' */
		if (text[i] == ')')
			rp = text + i;
	if (!rp)
		return -1;
	p = rp + 1;
	/* " S 1234 ..." */
	if (fields(p, (size_t)(end - p), f, fl, 2) != 2 || !parse_num(f[1], fl[1], 10, &ppid) ||
	    ppid > 0x7fffffff)
		return -1;
	return (long)ppid;
}

int procnet_maps_libssl(const char *text, size_t len, char *path, size_t cap)
{
	const char *p = text, *end = text + len, *line, *f[6];
	size_t ln, fl[6];

	while (next_line(&p, end, &line, &ln)) {
		const char *name, *slash, *pathp;
		size_t plen;

		/* address perms offset dev inode path (the path may hold spaces) */
		if (fields(line, ln, f, fl, 6) != 6 || f[5][0] != '/')
			continue;
		pathp = f[5];
		plen = (size_t)(line + ln - pathp);
		for (slash = name = pathp; slash < pathp + plen; slash++)
			if (*slash == '/')
				name = slash + 1;
		if ((size_t)(pathp + plen - name) < 9 || memcmp(name, "libssl.so", 9))
			continue;
		if (plen >= 10 && !memcmp(pathp + plen - 10, " (deleted)", 10))
			return -1;
		if (plen + 1 > cap)
			return -1;
		memcpy(path, pathp, plen);
		path[plen] = 0;
		return (int)plen;
	}
	return 0;
}
