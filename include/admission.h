/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * admission: which requests of a source transaction reach the mirror, so that each
 * transaction (a *unit*) is replayed whole or not at all (docs/DESIGN.md, "Ordering and
 * atomicity"). Pure: no clocks, threads or sockets. The capture thread keeps one struct
 * admission per mirrored session and asks it about every request the sampler replays;
 * the replay shell does what it answers.
 *
 * A unit is one explicit transaction (BEGIN ... COMMIT/ROLLBACK), or one implicit one: the
 * Executes of one Sync, or one simple Query (several statements included). It begins at
 * the request the sampler marks as a transaction's start.
 *
 * - Admission at the first request: a unit that began before the agent saw it (the
 *   source was already inside a transaction: agent start, a capture gap) is dropped whole
 *   (STATS_DROP_PARTIAL). So is one whose session already has `queue` transactions waiting
 *   to start on the mirror, or that begins while the byte budget or the item cap is half
 *   spent and its session has one waiting (STATS_DROP_BUFFER_FULL): what is admitted is
 *   rarely cut later. The count is of transactions, not requests: one long transaction
 *   ahead (a 10,000-row batch) does not keep the next ones out.
 * - A fault inside an admitted unit cuts it: a request that does not fit in the budget,
 *   a capture gap, a request that cannot be replayed, the source session ending before
 *   the unit's end. When requests of the unit were already posted, the shell posts an
 *   abort after them (the mirror rolls the transaction back) and every later request of
 *   the unit is dropped (STATS_DROP_UNIT_ABORTED); when none was, the unit is simply
 *   dropped whole.
 * - Sync groups: an Execute whose Sync had not been seen when it completed leaves its
 *   group open on the mirror; when the source answers that Sync, the shell posts a sync
 *   so the mirror commits the group (never on a timer).
 */
#ifndef PGSHADOW_ADMISSION_H
#define PGSHADOW_ADMISSION_H

#include <stdbool.h>
#include <stdint.h>

#include "stats.h"

enum admission_state {
	ADMISSION_OK = 0, /* its requests are posted */
	ADMISSION_DROP,	  /* dropped whole: nothing of it was posted */
	ADMISSION_CUT,	  /* cut by a fault after some of it was posted */
};

struct admission {
	uint64_t unit;	    /* the current unit, from 1 (0: none yet) */
	uint8_t state;	    /* enum admission_state */
	uint8_t drop;	    /* ADMISSION_DROP: enum stats_drop_reason */
	bool open;	    /* the unit's end has not been seen */
	uint32_t posted;    /* its requests posted to the mirror */
	bool group_pending; /* an Execute was posted whose Sync is not known yet */
	uint64_t group;	    /* its sync group */
};

/* How full the queues are when a unit begins. */
struct admission_load {
	uint32_t session_waiting; /* the session's transactions waiting to start */
	uint32_t queue;		  /* mirror_queue */
	uint64_t bytes, bytes_max;
	uint32_t items, items_max;
};

/* What the first request of a unit says about where the source stood. */
struct admission_start {
	char txn_before; /* session_request.txn_before */
	bool query;	 /* a simple Query (its txn_after is known) */
	char txn_after;	 /* Query: session_request.txn_status */
};

/* A unit begins (the sampler's txn_start). */
void admission_begin(struct admission *a, const struct admission_start *st,
		     const struct admission_load *l);

enum admission_action {
	ADMISSION_POST = 0, /* post it; then call admission_posted */
	ADMISSION_SKIP,	    /* drop it (*why) */
	ADMISSION_ABORT,    /* drop it (*why), and post an abort of the unit first */
};

/* A request of the current unit that the sampler replays: fits says whether its copy fits
 * in the budget. */
enum admission_action admission_request(struct admission *a, bool fits,
					enum stats_drop_reason *why);

/* It was posted: an Execute whose Sync was not seen yet leaves its group pending. */
void admission_posted(struct admission *a, bool execute, bool group_end, bool error,
		      uint64_t sync_group);

/* A fault inside the unit (capture gap, a request that cannot be replayed, the session
 * ending): true when an abort must be posted (something of it was). Later requests of
 * the unit are dropped. No effect outside a unit or on a unit already cut or dropped. */
bool admission_cut(struct admission *a);

/* The source answered a Sync (txn_status from its ReadyForQuery): true when a pending
 * group must be committed on the mirror (post a sync). */
bool admission_sync(struct admission *a, char txn_status);

/* A simple Query completed with txn_status: its unit ended when the source is idle. */
void admission_query_done(struct admission *a, char txn_status);

/* Is the unit still open on the mirror side (a gap or the session's end must cut it)? */
bool admission_open(const struct admission *a);

/* Does this request end its transaction on the source, as far as known when it
 * completed? kind_execute: an Execute (else a Query); txn: enum fingerprint_txn of its
 * text. */
bool admission_ends_unit(bool kind_execute, char txn_before, char txn_status, bool group_end,
			 unsigned int txn);

#endif /* PGSHADOW_ADMISSION_H */
