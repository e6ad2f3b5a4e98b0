/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * buf: a growable byte buffer for building text responses (metrics, reports). Bounded:
 * it refuses to grow past a cap given at init, and remembers that it did.
 */
#ifndef PGSHADOW_BUF_H
#define PGSHADOW_BUF_H

#include <stdbool.h>
#include <stddef.h>

struct buf {
	char *data; /* NUL-terminated while len < cap */
	size_t len;
	size_t cap;
	size_t max;    /* growth limit */
	bool overflow; /* an append did not fit under max and was dropped */
};

/* Starts an empty buffer that may grow up to max bytes. No allocation yet. */
void buf_init(struct buf *b, size_t max);

/* Appends formatted text / raw bytes; false (and overflow set) when it cannot. */
bool buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
bool buf_append(struct buf *b, const void *data, size_t len);

/* Appends s with Prometheus label-value escaping (\\, \", \n). */
bool buf_append_label_value(struct buf *b, const char *s);

/* Hands the data to the caller (who frees it) and resets b. */
char *buf_steal(struct buf *b, size_t *len);

/* Frees the data. NULL-safe on an empty buffer. */
void buf_free(struct buf *b);

#endif /* PGSHADOW_BUF_H */
