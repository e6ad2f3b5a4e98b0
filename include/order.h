/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * order: the rules that decide when a replayed request may start on the mirror, given
 * what is still outstanding there. Pure: no clocks, threads or sockets; the replay
 * thread owns one struct order and embeds a struct order_item in every request it has
 * not finished. Times are the source's capture times (CLOCK_MONOTONIC ns).
 *
 * Two rules (docs/DESIGN.md, "Ordering and atomicity"). B waits on the mirror for every
 * outstanding request A of another session when
 *
 *  1. causal order: A completed on the source before B started there
 *     (A.ts_end < B.ts_start). A read B (it changes nothing others see) waits only for
 *     writes: two reads commute.
 *  2. lock order: B is a write, A is a write that ended its transaction (it released
 *     its locks: COMMIT, ROLLBACK, an autocommit statement), and A.key < B.key. A write
 *     blocked on the source by another transaction's row lock completes only after that
 *     transaction's commit, and the commit only after the client's COMMIT reached the
 *     server: so the COMMIT's start precedes B's completion, whatever the noise in the
 *     capture times of the answers (the committing backend sends its ReadyForQuery after
 *     releasing its locks; the woken one may answer first). Nothing else orders the two
 *     on the mirror, which may grant the lock in the other order and deadlock. Waiting
 *     for every such end reproduces the source's grant order.
 *
 * The key (ts_start for a COMMIT/ROLLBACK statement, else ts_end) grows along each
 * session's requests and every wait points at a smaller key: waits cannot form a cycle,
 * and the outstanding request with the smallest key never waits.
 *
 * A session's own outstanding requests are never waited for (they run before B on its
 * own mirror connection, in order), but the search walks past them to other sessions'
 * requests below them in the heaps.
 */
#ifndef PGSHADOW_ORDER_H
#define PGSHADOW_ORDER_H

#include <stdbool.h>
#include <stdint.h>

enum { ORDER_ALL = 0, ORDER_WRITES, ORDER_ENDS, ORDER_HEAPS };

struct order_item {
	uint64_t ts_start, ts_end; /* on the source */
	const void *owner;	   /* its session: never waits for its own */
	bool read;		   /* changes nothing others see */
	bool ends_txn;		   /* a write that ended its transaction (released locks) */
	uint64_t key;		   /* its place in the order: ts_start for a COMMIT/ROLLBACK
				    * statement ending a transaction block, ts_end otherwise */
	uint32_t idx[ORDER_HEAPS]; /* positions in the heaps (owned by order) */
};

/* Outstanding items: min-heaps on ts_end of all of them and of the writes, and on key of
 * the writes that ended a transaction. */
struct order {
	struct order_item **heap[ORDER_HEAPS];
	uint32_t n[ORDER_HEAPS];
	uint32_t cap;
};

/* Room for cap outstanding items. -ENOMEM or 0. */
int order_init(struct order *o, uint32_t cap);
void order_free(struct order *o);

/* Adds / removes an outstanding item. Adding fails (false) only beyond cap. */
bool order_track(struct order *o, struct order_item *it);
void order_untrack(struct order *o, struct order_item *it);

/* Why b must wait now: ORDER_WAIT_NONE, or the rule that holds it. */
enum order_wait { ORDER_WAIT_NONE = 0, ORDER_WAIT_CAUSAL, ORDER_WAIT_LOCK };

enum order_wait order_blocked(const struct order *o, const struct order_item *b);

/* The same, and one of the items b waits for (NULL when it need not wait). */
const struct order_item *order_blocker(const struct order *o, const struct order_item *b,
				       enum order_wait *why);

/* Calls fn for every item b waits for, until fn returns false. Returns how many it was
 * called for. */
unsigned int order_each_blocker(const struct order *o, const struct order_item *b,
				bool (*fn)(void *ctx, const struct order_item *a), void *ctx);

#endif /* PGSHADOW_ORDER_H */
