/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * compare: how a mirror's answer differs from the source's, and what of it can be
 * compared at all. Pure; the replay thread calls it once per replayed request.
 *
 * What is comparable (docs/DESIGN.md, "Compare"):
 * - an error on either side compares only the SQLSTATE (one side failing is a
 *   difference);
 * - otherwise the command tag's verb, the row count, and with mirror_compare = rows an
 *   order-insensitive hash of the rows;
 * - an Execute with a row limit that the source answered with PortalSuspended: the
 *   source sent only the first max_rows rows and no command tag, while the mirror (libpq
 *   has no row limit) runs the portal to completion. Only "the mirror returned at least
 *   as many rows" and the error status are comparable; not the tag, not the rows' hash.
 *   A row-limited Execute the source completed (fewer rows than the limit) compares in
 *   full;
 * - a statement whose rows are not deterministic (volatile functions, LIMIT without
 *   ORDER BY, TABLESAMPLE; fingerprint.h) compares everything but the rows' hash;
 * - statements the user declared as expected to differ (mirror_compare_ignore, by
 *   fingerprint), a COMMIT replayed as ROLLBACK and the resumptions of a suspended
 *   portal are not compared.
 */
#ifndef PGSHADOW_COMPARE_H
#define PGSHADOW_COMPARE_H

#include <stdbool.h>
#include <stdint.h>

/* One side's answer. */
struct compare_answer {
	bool error;
	char sqlstate[6]; /* "" when none or unknown */
	char verb[16];	  /* first word of the last command tag, "" if none */
	uint64_t rows;	  /* row count of the last command (its tag's, else its rows) */
	uint64_t hash;	  /* sum of the rows' DataRow hashes */
	bool hashed;	  /* hash covers every row (none too big, one result format) */
};

/* What of the source's answer may be compared. */
struct compare_scope {
	bool tag;      /* the command tag */
	bool rowcount; /* rows must be equal */
	bool at_least; /* instead: the mirror's rows >= the source's (suspended portal) */
	bool rows;     /* the rows' hash (mirror_compare = rows, deterministic rows) */
};

/* Mismatch kinds, as bits (1 << kind); the same order as stats' kinds. */
enum compare_kind {
	COMPARE_TAG = 0,
	COMPARE_ROWCOUNT,
	COMPARE_SQLSTATE,
	COMPARE_ROWS,
	COMPARE_KINDS,
};

/* The scope of a request, from what the source did and how it was asked. */
void compare_scope_of(struct compare_scope *sc, bool want_rows, bool suspended, uint32_t max_rows,
		      bool nondeterministic);

/* The kinds in which mirror differs from source (0: equal). */
unsigned int compare_answers(const struct compare_scope *sc, const struct compare_answer *source,
			     const struct compare_answer *mirror);

#endif /* PGSHADOW_COMPARE_H */
