// SPDX-License-Identifier: BSD-2-Clause
/* admission.c — transactions whole or not at all. See include/admission.h. */
#include "admission.h"
#include "fingerprint.h"

void admission_begin(struct admission *a, const struct admission_start *st,
		     const struct admission_load *l)
{
	/* with no ReadyForQuery seen before it (the first request of a session caught
	 * mid-way), only a Query that left the source idle is known to be its own unit */
	bool partial = st->txn_before == 'T' || st->txn_before == 'E' ||
		       (!st->txn_before && (!st->query || st->txn_after != 'I'));
	bool busy =
	    l->session_waiting && (l->bytes > l->bytes_max / 2 || l->items > l->items_max / 2);

	a->unit++;
	a->state = ADMISSION_OK;
	a->posted = 0;
	a->open = true;
	if (partial) {
		a->state = ADMISSION_DROP;
		a->drop = STATS_DROP_PARTIAL;
	} else if (l->session_waiting >= l->queue || busy) {
		a->state = ADMISSION_DROP;
		a->drop = STATS_DROP_BUFFER_FULL;
	}
}

enum admission_action admission_request(struct admission *a, bool fits, enum stats_drop_reason *why)
{
	if (a->state == ADMISSION_DROP) {
		*why = (enum stats_drop_reason)a->drop;
		return ADMISSION_SKIP;
	}
	if (a->state == ADMISSION_CUT) {
		*why = STATS_DROP_UNIT_ABORTED;
		return ADMISSION_SKIP;
	}
	if (fits)
		return ADMISSION_POST;
	*why = STATS_DROP_BUFFER_FULL;
	if (admission_cut(a))
		return ADMISSION_ABORT;
	a->drop = STATS_DROP_BUFFER_FULL; /* nothing ran: the whole unit is a queue drop */
	return ADMISSION_SKIP;
}

void admission_posted(struct admission *a, bool execute, bool group_end, bool error,
		      uint64_t sync_group)
{
	a->posted++;
	a->group_pending = execute && !group_end && !error;
	a->group = sync_group;
}

bool admission_cut(struct admission *a)
{
	bool abort = a->state == ADMISSION_OK && a->posted;

	if (a->state == ADMISSION_OK) {
		a->state = abort ? ADMISSION_CUT : ADMISSION_DROP;
		a->drop = STATS_DROP_UNIT_ABORTED;
	}
	a->group_pending = false;
	return abort;
}

bool admission_sync(struct admission *a, char txn_status)
{
	bool pending = a->group_pending;

	a->group_pending = false;
	if (txn_status == 'I')
		a->open = false;
	return pending;
}

void admission_query_done(struct admission *a, char txn_status)
{
	if (txn_status == 'I')
		a->open = false;
}

bool admission_open(const struct admission *a)
{
	return a->open || a->group_pending;
}

bool admission_ends_unit(bool kind_execute, char txn_before, char txn_status, bool group_end,
			 unsigned int txn)
{
	bool idle_before = txn_before == 'I' || !txn_before;

	if (!kind_execute)
		return txn_status == 'I';
	return group_end && (txn == FINGERPRINT_TXN_COMMIT || txn == FINGERPRINT_TXN_ROLLBACK ||
			     (idle_before && txn != FINGERPRINT_TXN_BEGIN));
}
