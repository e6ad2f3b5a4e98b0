// SPDX-License-Identifier: BSD-2-Clause
/* compare.c — source and mirror answers. See include/compare.h. */
#include <string.h>

#include "compare.h"

void compare_scope_of(struct compare_scope *sc, bool want_rows, bool suspended, uint32_t max_rows,
		      bool nondeterministic)
{
	(void)max_rows; /* a row limit the source did not reach cut nothing */
	memset(sc, 0, sizeof(*sc));
	if (suspended) {
		sc->at_least = true;
		return;
	}
	sc->tag = true;
	sc->rowcount = true;
	sc->rows = want_rows && !nondeterministic;
}

unsigned int compare_answers(const struct compare_scope *sc, const struct compare_answer *source,
			     const struct compare_answer *mirror)
{
	unsigned int k = 0;

	if (source->error || mirror->error) {
		if (!source->error || !mirror->error || strcmp(source->sqlstate, mirror->sqlstate))
			k |= 1u << COMPARE_SQLSTATE;
		return k;
	}
	if (sc->tag && strcmp(source->verb, mirror->verb))
		k |= 1u << COMPARE_TAG;
	if (sc->rowcount && source->rows != mirror->rows)
		k |= 1u << COMPARE_ROWCOUNT;
	if (sc->at_least && mirror->rows < source->rows)
		k |= 1u << COMPARE_ROWCOUNT;
	if (sc->rows && source->hashed && mirror->hashed && source->hash != mirror->hash)
		k |= 1u << COMPARE_ROWS;
	return k;
}
