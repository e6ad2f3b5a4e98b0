// SPDX-License-Identifier: BSD-2-Clause
/* buf.c — see include/buf.h. */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"

void buf_init(struct buf *b, size_t max)
{
	memset(b, 0, sizeof(*b));
	b->max = max;
}

/* Makes room for n more bytes plus a NUL. */
static bool reserve(struct buf *b, size_t n)
{
	size_t want = b->len + n + 1, cap;
	char *p;

	if (want <= b->cap)
		return true;
	if (want > b->max) {
		b->overflow = true;
		return false;
	}
	cap = b->cap ? b->cap : 4096;
	while (cap < want)
		cap *= 2;
	if (cap > b->max)
		cap = b->max;
	p = realloc(b->data, cap);
	if (!p) {
		b->overflow = true;
		return false;
	}
	b->data = p;
	b->cap = cap;
	return true;
}

bool buf_append(struct buf *b, const void *data, size_t len)
{
	if (!reserve(b, len))
		return false;
	memcpy(b->data + b->len, data, len);
	b->len += len;
	b->data[b->len] = '\0';
	return true;
}

bool buf_printf(struct buf *b, const char *fmt, ...)
{
	size_t avail = b->data ? b->cap - b->len : 0;
	va_list ap;
	int n;

	/* Format into the space there is; if it did not fit, grow exactly and redo. */
	va_start(ap, fmt);
	n = vsnprintf(avail ? b->data + b->len : NULL, avail, fmt, ap);
	va_end(ap);
	if (n < 0)
		return false;
	if ((size_t)n >= avail) {
		if (!reserve(b, n)) {
			if (avail)
				b->data[b->len] = '\0'; /* drop the partial output */
			return false;
		}
		va_start(ap, fmt);
		vsnprintf(b->data + b->len, b->cap - b->len, fmt, ap);
		va_end(ap);
	}
	b->len += n;
	return true;
}

bool buf_append_label_value(struct buf *b, const char *s)
{
	const char *run = s;
	bool ok = true;

	for (; *s; s++) {
		const char *esc = *s == '\\'   ? "\\\\"
				  : *s == '"'  ? "\\\""
				  : *s == '\n' ? "\\n"
					       : NULL;

		if (!esc)
			continue;
		ok &= buf_append(b, run, s - run);
		ok &= buf_append(b, esc, 2);
		run = s + 1;
	}
	ok &= buf_append(b, run, s - run);
	return ok;
}

char *buf_steal(struct buf *b, size_t *len)
{
	char *p = b->data;

	if (len)
		*len = b->len;
	b->data = NULL;
	b->len = b->cap = 0;
	return p;
}

void buf_free(struct buf *b)
{
	free(b->data);
	b->data = NULL;
	b->len = b->cap = 0;
}
