// SPDX-License-Identifier: BSD-2-Clause
/* Unit tests of the replay's ordering rules (order.c), without a server. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>

#include <cmocka.h>

#include "order.h"

static int s1, s2, s3; /* sessions: only their addresses matter */

static struct order_item item(const void *owner, uint64_t start, uint64_t end, bool read,
			      bool ends_txn)
{
	struct order_item it = {.ts_start = start,
				.ts_end = end,
				.owner = owner,
				.read = read,
				.ends_txn = ends_txn,
				.key = end};
	return it;
}

static void causal_order(void **state)
{
	struct order o;
	struct order_item a = item(&s1, 0, 10, false, true);
	struct order_item b = item(&s2, 20, 30, false, true); /* started after a ended */
	struct order_item c = item(&s2, 5, 15, false, false); /* overlapped a, not a txn end */

	(void)state;
	assert_int_equal(order_init(&o, 16), 0);
	assert_true(order_track(&o, &a));
	assert_true(order_track(&o, &b));
	assert_int_equal(order_blocked(&o, &b), ORDER_WAIT_CAUSAL);
	assert_int_equal(order_blocked(&o, &a), ORDER_WAIT_NONE); /* the earliest never waits */
	order_untrack(&o, &a);
	assert_int_equal(order_blocked(&o, &b), ORDER_WAIT_NONE);
	/* c overlapped a; a ended the txn while c ran: lock order */
	assert_true(order_track(&o, &a));
	assert_true(order_track(&o, &c));
	assert_int_equal(order_blocked(&o, &c), ORDER_WAIT_LOCK);
	order_free(&o);
}

static void reads_commute(void **state)
{
	struct order o;
	struct order_item r1 = item(&s1, 0, 10, true, false);
	struct order_item r2 = item(&s2, 20, 30, true, false);
	struct order_item w = item(&s3, 21, 31, false, true);

	(void)state;
	assert_int_equal(order_init(&o, 16), 0);
	assert_true(order_track(&o, &r1));
	assert_true(order_track(&o, &r2));
	assert_true(order_track(&o, &w));
	assert_int_equal(order_blocked(&o, &r2), ORDER_WAIT_NONE);  /* a read after a read */
	assert_int_equal(order_blocked(&o, &w), ORDER_WAIT_CAUSAL); /* a write after a read */
	order_free(&o);
}

static void reads_wait_for_writes_not_for_lock_order(void **state)
{
	struct order o;
	struct order_item w = item(&s1, 0, 10, false, true);
	struct order_item r_after = item(&s2, 11, 20, true, false);
	struct order_item r_over = item(&s3, 5, 20, true, false);

	(void)state;
	assert_int_equal(order_init(&o, 16), 0);
	assert_true(order_track(&o, &w));
	assert_true(order_track(&o, &r_after));
	assert_true(order_track(&o, &r_over));
	assert_int_equal(order_blocked(&o, &r_after), ORDER_WAIT_CAUSAL);
	/* a read takes no row lock: an end inside its window does not order it */
	assert_int_equal(order_blocked(&o, &r_over), ORDER_WAIT_NONE);
	order_free(&o);
}

static void lock_order_needs_a_txn_end(void **state)
{
	struct order o;
	struct order_item mid = item(&s1, 0, 10, false, false); /* inside a txn: no release */
	struct order_item end = item(&s1, 11, 40, false, true);
	struct order_item b = item(&s2, 5, 30, false, false);

	(void)state;
	assert_int_equal(order_init(&o, 16), 0);
	assert_true(order_track(&o, &mid));
	assert_true(order_track(&o, &b));
	/* mid ended inside b's window but released nothing */
	assert_int_equal(order_blocked(&o, &b), ORDER_WAIT_NONE);
	/* an end after b completed does not order b either */
	assert_true(order_track(&o, &end));
	assert_int_equal(order_blocked(&o, &b), ORDER_WAIT_NONE);
	order_free(&o);
}

/* The committing backend answers after releasing its locks, and the backend it woke may
 * answer first: B's completion is captured before the COMMIT's. The COMMIT's start (its
 * client packet reached the server before the commit) still orders B after it. */
static void blocked_write_answers_before_the_commit(void **state)
{
	struct order o;
	struct order_item commit = item(&s1, 10, 40, false, true);
	struct order_item b = item(&s2, 5, 38, false, false);
	struct order_item unrelated = item(&s3, 42, 50, false, false); /* after b */

	(void)state;
	commit.key = commit.ts_start;
	assert_int_equal(order_init(&o, 16), 0);
	assert_true(order_track(&o, &commit));
	assert_true(order_track(&o, &b));
	assert_int_equal(order_blocked(&o, &b), ORDER_WAIT_LOCK);
	assert_int_equal(order_blocked(&o, &commit), ORDER_WAIT_NONE); /* never both ways */
	assert_true(order_track(&o, &unrelated));
	assert_int_equal(order_blocked(&o, &commit), ORDER_WAIT_NONE);
	order_free(&o);
}

static void own_items_are_walked_past(void **state)
{
	struct order o;
	struct order_item own[3];
	struct order_item other = item(&s2, 0, 8, false, true);
	struct order_item b = item(&s1, 9, 50, false, false);
	int i;

	(void)state;
	assert_int_equal(order_init(&o, 16), 0);
	for (i = 0; i < 3; i++) {
		own[i] = item(&s1, 0, (uint64_t)(i + 1), false, false);
		assert_true(order_track(&o, &own[i]));
	}
	assert_true(order_track(&o, &b));
	assert_int_equal(order_blocked(&o, &b), ORDER_WAIT_NONE); /* only its own before it */
	assert_true(order_track(&o, &other)); /* below its own items in the heap */
	assert_int_equal(order_blocked(&o, &b), ORDER_WAIT_CAUSAL);
	order_free(&o);
}

/* Each heap's parent precedes its children (ends: by key). */
static bool heap_ok(const struct order *o)
{
	uint32_t h, i;

	for (h = 0; h < ORDER_HEAPS; h++)
		for (i = 1; i < o->n[h]; i++)
			if ((h == ORDER_ENDS
				 ? o->heap[h][(i - 1) / 2]->key > o->heap[h][i]->key
				 : o->heap[h][(i - 1) / 2]->ts_end > o->heap[h][i]->ts_end) ||
			    o->heap[h][i]->idx[h] != i)
				return false;
	return true;
}

/* The rules of order.h, by brute force. */
static enum order_wait oracle(const struct order_item *all, int n, const struct order_item *b)
{
	enum order_wait w = ORDER_WAIT_NONE;
	int i;

	for (i = 0; i < n; i++) {
		const struct order_item *a = &all[i];

		if (a->owner == b->owner)
			continue;
		if (a->ts_end < b->ts_start && (!b->read || !a->read))
			return ORDER_WAIT_CAUSAL;
		if (!b->read && !a->read && a->ends_txn && a->key < b->key)
			w = ORDER_WAIT_LOCK;
	}
	return w;
}

/* Every wait points at an item with a smaller key: whatever the items, the one with the
 * smallest key is never blocked, so the replay always makes progress. */
static void no_cycles_random(void **state)
{
	enum { N = 200, ROUNDS = 50 };
	static struct order_item its[N];
	static int owners[8], perm[N];
	struct order o;
	unsigned int seed = 12345;
	int round, i;

	(void)state;
	assert_int_equal(order_init(&o, N), 0);
	for (round = 0; round < ROUNDS; round++) {
		struct order_item *min = NULL;

		for (i = 0; i < N; i++) {
			uint64_t start = (uint64_t)(rand_r(&seed) % 1000);

			its[i] = item(&owners[rand_r(&seed) % 8], start,
				      start + 1 + (uint64_t)(rand_r(&seed) % 100),
				      rand_r(&seed) % 3 == 0, rand_r(&seed) % 2 == 0);
			if (its[i].ends_txn && rand_r(&seed) % 2) /* an explicit COMMIT */
				its[i].key = its[i].ts_start;
			assert_true(order_track(&o, &its[i]));
		}
		for (i = 0; i < N; i++) {
			if (!min || its[i].key < min->key)
				min = &its[i];
			/* the heap walk agrees with a scan of every item by the two rules */
			assert_int_equal(order_blocked(&o, &its[i]), oracle(its, N, &its[i]));
		}
		assert_int_equal(order_blocked(&o, min), ORDER_WAIT_NONE);
		/* untrack in a random order; the heaps stay consistent (checked above in
		 * later rounds, and by the counts here) */
		for (i = 0; i < N; i++)
			perm[i] = i;
		for (i = N - 1; i > 0; i--) {
			int j = rand_r(&seed) % (i + 1), t = perm[i];

			perm[i] = perm[j];
			perm[j] = t;
		}
		for (i = 0; i < N; i++) {
			order_untrack(&o, &its[perm[i]]);
			if (o.n[ORDER_ALL]) /* the root is still the smallest */
				assert_true(heap_ok(&o));
		}
		for (i = 0; i < ORDER_HEAPS; i++)
			assert_int_equal(o.n[i], 0);
	}
	order_free(&o);
}

static void capacity_is_a_bound(void **state)
{
	struct order o;
	struct order_item a = item(&s1, 0, 1, false, false), b = item(&s1, 1, 2, false, false);

	(void)state;
	assert_int_equal(order_init(&o, 1), 0);
	assert_true(order_track(&o, &a));
	assert_false(order_track(&o, &b));
	order_free(&o);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(causal_order),
	    cmocka_unit_test(reads_commute),
	    cmocka_unit_test(reads_wait_for_writes_not_for_lock_order),
	    cmocka_unit_test(lock_order_needs_a_txn_end),
	    cmocka_unit_test(blocked_write_answers_before_the_commit),
	    cmocka_unit_test(own_items_are_walked_past),
	    cmocka_unit_test(no_cycles_random),
	    cmocka_unit_test(capacity_is_a_bound),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
