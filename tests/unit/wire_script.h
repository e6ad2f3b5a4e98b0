/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * Test helper shared by test_pgwire.c and test_session.c: builds PostgreSQL protocol
 * byte sequences and "scripts" (both directions of a conversation cut into chunks, each
 * with its own capture time) to feed the decoder or the session layer. Needs cmocka
 * (assert_true) and pgwire.h included first.
 */
#ifndef PGSHADOW_TEST_WIRE_SCRIPT_H
#define PGSHADOW_TEST_WIRE_SCRIPT_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

/* ---- building byte sequences ------------------------------------------------------------ */

struct bb {
	uint8_t *p;
	size_t len, cap;
	size_t mark; /* start of the message being built */
};

static inline void bb_reserve(struct bb *b, size_t n)
{
	if (b->len + n <= b->cap)
		return;
	while (b->cap < b->len + n)
		b->cap = b->cap ? b->cap * 2 : 256;
	b->p = realloc(b->p, b->cap);
	assert_non_null(b->p);
}

static inline void put(struct bb *b, const void *d, size_t n)
{
	bb_reserve(b, n);
	if (n)
		memcpy(b->p + b->len, d, n);
	b->len += n;
}

static inline void put8(struct bb *b, uint8_t v)
{
	put(b, &v, 1);
}

static inline void put16(struct bb *b, uint16_t v)
{
	uint8_t x[2] = {(uint8_t)(v >> 8), (uint8_t)v};

	put(b, x, 2);
}

static inline void put32(struct bb *b, uint32_t v)
{
	uint8_t x[4] = {(uint8_t)(v >> 24), (uint8_t)(v >> 16), (uint8_t)(v >> 8), (uint8_t)v};

	put(b, x, 4);
}

static inline void puts0(struct bb *b, const char *s)
{
	put(b, s, strlen(s) + 1);
}

static inline void msg_begin(struct bb *b, char type)
{
	put8(b, (uint8_t)type);
	b->mark = b->len;
	put32(b, 0);
}

static inline void msg_end(struct bb *b)
{
	uint32_t l = (uint32_t)(b->len - b->mark);

	b->p[b->mark] = (uint8_t)(l >> 24);
	b->p[b->mark + 1] = (uint8_t)(l >> 16);
	b->p[b->mark + 2] = (uint8_t)(l >> 8);
	b->p[b->mark + 3] = (uint8_t)l;
}

static inline void startup_begin(struct bb *b)
{
	b->mark = b->len;
	put32(b, 0);
}

static inline void startup_end(struct bb *b)
{
	uint32_t l = (uint32_t)(b->len - b->mark);
	uint8_t *q = b->p + b->mark;

	q[0] = (uint8_t)(l >> 24);
	q[1] = (uint8_t)(l >> 16);
	q[2] = (uint8_t)(l >> 8);
	q[3] = (uint8_t)l;
}

static inline void m_empty(struct bb *b, char type)
{
	msg_begin(b, type);
	msg_end(b);
}

static inline void m_str(struct bb *b, char type, const char *s)
{
	msg_begin(b, type);
	puts0(b, s);
	msg_end(b);
}

static inline void m_startup(struct bb *b, const char *const *kv)
{
	startup_begin(b);
	put32(b, 196608);
	for (; *kv; kv += 2) {
		puts0(b, kv[0]);
		puts0(b, kv[1]);
	}
	put8(b, 0);
	startup_end(b);
}

static inline void m_code(struct bb *b, uint32_t code)
{
	put32(b, 8);
	put32(b, code);
}

static inline void m_parse(struct bb *b, const char *name, const char *q, int n,
			   const uint32_t *oids)
{
	int i;

	msg_begin(b, 'P');
	puts0(b, name);
	puts0(b, q);
	put16(b, (uint16_t)n);
	for (i = 0; i < n; i++)
		put32(b, oids[i]);
	msg_end(b);
}

/* Bind with n params: lens[i] -1 = NULL; formats as given; result formats as given. */
static inline void m_bind(struct bb *b, const char *portal, const char *stmt, int nf,
			  const int16_t *fmts, int n, const int32_t *lens, const char *const *vals,
			  int nr, const int16_t *rf)
{
	int i;

	msg_begin(b, 'B');
	puts0(b, portal);
	puts0(b, stmt);
	put16(b, (uint16_t)nf);
	for (i = 0; i < nf; i++)
		put16(b, (uint16_t)fmts[i]);
	put16(b, (uint16_t)n);
	for (i = 0; i < n; i++) {
		put32(b, (uint32_t)lens[i]);
		if (lens[i] > 0)
			put(b, vals[i], (size_t)lens[i]);
	}
	put16(b, (uint16_t)nr);
	for (i = 0; i < nr; i++)
		put16(b, (uint16_t)rf[i]);
	msg_end(b);
}

static inline void m_describe(struct bb *b, char what, const char *name)
{
	msg_begin(b, 'D');
	put8(b, (uint8_t)what);
	puts0(b, name);
	msg_end(b);
}

static inline void m_close(struct bb *b, char what, const char *name)
{
	msg_begin(b, 'C');
	put8(b, (uint8_t)what);
	puts0(b, name);
	msg_end(b);
}

static inline void m_execute(struct bb *b, const char *portal, uint32_t max_rows)
{
	msg_begin(b, 'E');
	puts0(b, portal);
	put32(b, max_rows);
	msg_end(b);
}

static inline void m_ready(struct bb *b, char st)
{
	msg_begin(b, 'Z');
	put8(b, (uint8_t)st);
	msg_end(b);
}

static inline void m_rowdesc(struct bb *b, int n)
{
	int i;

	msg_begin(b, 'T');
	put16(b, (uint16_t)n);
	for (i = 0; i < n; i++) {
		char name[16];

		snprintf(name, sizeof(name), "col%d", i);
		puts0(b, name);
		put32(b, 16384);
		put16(b, (uint16_t)(i + 1));
		put32(b, 23);
		put16(b, 4);
		put32(b, 0xffffffffU);
		put16(b, 0);
	}
	msg_end(b);
}

static inline void m_datarow(struct bb *b, int n, const char *const *vals)
{
	int i;

	msg_begin(b, 'D');
	put16(b, (uint16_t)n);
	for (i = 0; i < n; i++) {
		if (!vals[i]) {
			put32(b, 0xffffffffU);
			continue;
		}
		put32(b, (uint32_t)strlen(vals[i]));
		put(b, vals[i], strlen(vals[i]));
	}
	msg_end(b);
}

static inline void m_error(struct bb *b, char type, const char *sqlstate, const char *text)
{
	msg_begin(b, type);
	puts0(b, "SERROR");
	puts0(b, "VERROR");
	put8(b, 'C');
	puts0(b, sqlstate);
	put8(b, 'M');
	puts0(b, text);
	put8(b, 0);
	msg_end(b);
}

/* ---- a conversation: chunks of either direction, each with its capture time ---------- */

struct chunk {
	enum pgwire_dir dir;
	uint64_t ts;
	size_t off, len; /* in the direction's stream */
};

struct script {
	struct bb s[2];	       /* the two streams */
	struct chunk ch[4096]; /* in feed order */
	int n;
	uint64_t ts;
};

/* The bytes appended to b since the last cut become one chunk. */
static inline void cut(struct script *sc, enum pgwire_dir dir)
{
	size_t start = 0;
	int i;

	for (i = sc->n - 1; i >= 0; i--)
		if (sc->ch[i].dir == dir) {
			start = sc->ch[i].off + sc->ch[i].len;
			break;
		}
	if (sc->s[dir].len == start)
		return;
	assert_true(sc->n < 4096);
	sc->ts += 1000;
	sc->ch[sc->n++] =
	    (struct chunk){.dir = dir, .ts = sc->ts, .off = start, .len = sc->s[dir].len - start};
}

static inline void script_free(struct script *sc)
{
	free(sc->s[0].p);
	free(sc->s[1].p);
}

#endif /* PGSHADOW_TEST_WIRE_SCRIPT_H */
