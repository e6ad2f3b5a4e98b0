/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * fingerprint: query fingerprints and read/write classification through libpg_query
 * (PostgreSQL's own parser; no hand-written SQL tokenizer), with a bounded cache keyed
 * by a hash of the query text, so each distinct text is parsed once (~2 µs for the
 * fingerprint, more for the parse tree). Kept off the per-request hot path: callers
 * ask only for requests that need it (sampling, filters, mismatch logs).
 *
 * A read is, from the parse tree (DESIGN.md): SELECT without INTO or locking clauses
 * (and without data-modifying WITH), set operations of such SELECTs, VALUES, SHOW, and
 * EXPLAIN without ANALYZE. A text with several statements is a read only if every
 * statement is. Everything else, and anything that does not parse, is a write.
 *
 * Not thread-safe: one cache per thread (libpg_query keeps per-thread memory).
 */
#ifndef PGSHADOW_FINGERPRINT_H
#define PGSHADOW_FINGERPRINT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct fingerprint_info {
	uint64_t fingerprint; /* libpg_query's fingerprint; 0 when it did not parse */
	bool parsed;	      /* the text parsed */
	bool read_only;	      /* every statement is a read (see above) */
	uint16_t statements;  /* statements in the text */
};

struct fingerprint_stats {
	uint64_t hits, misses, evictions, parse_errors;
};

/* Computes the info of one text (NUL-terminated), uncached. */
void fingerprint_compute(const char *text, struct fingerprint_info *out);

/* A cache of at most max_entries texts (rounded up to a multiple of 4). NULL on ENOMEM
 * or max_entries == 0 (EINVAL). */
struct fingerprint_cache *fingerprint_cache_new(uint32_t max_entries);

/* Looks text[0..len) up, computing and remembering it on a miss. text need not be
 * NUL-terminated. */
void fingerprint_lookup(struct fingerprint_cache *c, const char *text, size_t len,
			struct fingerprint_info *out);

const struct fingerprint_stats *fingerprint_cache_stats(const struct fingerprint_cache *c);

/* NULL-safe. */
void fingerprint_cache_free(struct fingerprint_cache *c);

#endif /* PGSHADOW_FINGERPRINT_H */
