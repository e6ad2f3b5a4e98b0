// SPDX-License-Identifier: BSD-2-Clause
/* Unit tests of atomic admission (admission.c): a transaction reaches the mirror whole or
 * not at all, under every fault. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "admission.h"
#include "fingerprint.h"

static const struct admission_load idle_load = {.queue = 100, .bytes_max = 1000, .items_max = 1000};

static const struct admission_start from_idle = {.txn_before = 'I'};

/* Posts n requests of the current unit; returns how many were posted. */
static int post(struct admission *a, int n, bool fits)
{
	enum stats_drop_reason why;
	int posted = 0, i;

	for (i = 0; i < n; i++) {
		if (admission_request(a, fits, &why) == ADMISSION_POST) {
			admission_posted(a, false, false, false, 0);
			posted++;
		}
	}
	return posted;
}

static void admitted_unit_is_posted_whole(void **state)
{
	struct admission a = {0};

	(void)state;
	admission_begin(&a, &from_idle, &idle_load);
	assert_int_equal(a.unit, 1);
	assert_int_equal(post(&a, 7, true), 7);
	admission_query_done(&a, 'I');
	assert_false(admission_open(&a));
}

/* The budget fills in the middle of a transaction: the rest is dropped and the mirror
 * rolls back what it ran. */
static void budget_full_mid_unit_aborts(void **state)
{
	struct admission a = {0};
	enum stats_drop_reason why;

	(void)state;
	admission_begin(&a, &from_idle, &idle_load);
	assert_int_equal(post(&a, 3, true), 3);
	assert_int_equal(admission_request(&a, false, &why), ADMISSION_ABORT);
	assert_int_equal(why, STATS_DROP_BUFFER_FULL);
	/* the rest, even if it would fit again */
	assert_int_equal(admission_request(&a, true, &why), ADMISSION_SKIP);
	assert_int_equal(why, STATS_DROP_UNIT_ABORTED);
	assert_int_equal(admission_request(&a, true, &why), ADMISSION_SKIP);
	/* the next unit starts afresh */
	admission_begin(&a, &from_idle, &idle_load);
	assert_int_equal(a.unit, 2);
	assert_int_equal(post(&a, 2, true), 2);
}

/* Nothing of the unit ran yet: it is dropped whole, no abort needed. */
static void budget_full_at_first_request_drops_whole(void **state)
{
	struct admission a = {0};
	enum stats_drop_reason why;

	(void)state;
	admission_begin(&a, &from_idle, &idle_load);
	assert_int_equal(admission_request(&a, false, &why), ADMISSION_SKIP);
	assert_int_equal(why, STATS_DROP_BUFFER_FULL);
	assert_int_equal(admission_request(&a, true, &why), ADMISSION_SKIP);
	assert_int_equal(why, STATS_DROP_BUFFER_FULL);
}

static void queue_full_at_start_drops_whole(void **state)
{
	struct admission a = {0};
	struct admission_load l = idle_load;
	enum stats_drop_reason why;

	(void)state;
	l.session_waiting = 100; /* mirror_queue transactions already wait */
	admission_begin(&a, &from_idle, &l);
	assert_int_equal(admission_request(&a, true, &why), ADMISSION_SKIP);
	assert_int_equal(why, STATS_DROP_BUFFER_FULL);
	/* half the budget spent and the session has a backlog: not admitted either */
	l.session_waiting = 1;
	l.bytes = 501;
	admission_begin(&a, &from_idle, &l);
	assert_int_equal(admission_request(&a, true, &why), ADMISSION_SKIP);
	/* the same load with an empty session queue: admitted (it cannot starve) */
	l.session_waiting = 0;
	admission_begin(&a, &from_idle, &l);
	assert_int_equal(admission_request(&a, true, &why), ADMISSION_POST);
}

/* A transaction that began before the agent saw it (agent start, capture gap). */
static void partial_units_are_dropped(void **state)
{
	struct admission a = {0};
	struct admission_start st = {.txn_before = 'T'};
	enum stats_drop_reason why;

	(void)state;
	admission_begin(&a, &st, &idle_load);
	assert_int_equal(admission_request(&a, true, &why), ADMISSION_SKIP);
	assert_int_equal(why, STATS_DROP_PARTIAL);
	st = (struct admission_start){.txn_before = 0, .query = true, .txn_after = 'T'};
	admission_begin(&a, &st, &idle_load);
	assert_int_equal(admission_request(&a, true, &why), ADMISSION_SKIP);
	assert_int_equal(why, STATS_DROP_PARTIAL);
	/* no ReadyForQuery seen yet: an Execute may be inside a transaction block */
	st = (struct admission_start){.txn_before = 0};
	admission_begin(&a, &st, &idle_load);
	assert_int_equal(admission_request(&a, true, &why), ADMISSION_SKIP);
	assert_int_equal(why, STATS_DROP_PARTIAL);
	/* no ReadyForQuery seen yet, but the Query left the source idle: its own unit */
	st = (struct admission_start){.txn_before = 0, .query = true, .txn_after = 'I'};
	admission_begin(&a, &st, &idle_load);
	assert_int_equal(admission_request(&a, true, &why), ADMISSION_POST);
}

static void gap_and_session_end_cut_open_units(void **state)
{
	struct admission a = {0};
	enum stats_drop_reason why;

	(void)state;
	admission_begin(&a, &from_idle, &idle_load);
	assert_int_equal(post(&a, 2, true), 2);
	assert_true(admission_open(&a));
	assert_true(admission_cut(&a));	 /* the gap: abort what was posted */
	assert_false(admission_cut(&a)); /* once */
	assert_int_equal(admission_request(&a, true, &why), ADMISSION_SKIP);
	assert_int_equal(why, STATS_DROP_UNIT_ABORTED);

	/* a gap before anything was posted drops the unit without an abort */
	admission_begin(&a, &from_idle, &idle_load);
	assert_false(admission_cut(&a));
	assert_int_equal(admission_request(&a, true, &why), ADMISSION_SKIP);
	assert_int_equal(why, STATS_DROP_UNIT_ABORTED);
}

/* Sync groups commit at the source's Sync, not on a timer. */
static void sync_groups(void **state)
{
	struct admission a = {0};
	enum stats_drop_reason why;

	(void)state;
	admission_begin(&a, &from_idle, &idle_load);
	assert_int_equal(admission_request(&a, true, &why), ADMISSION_POST);
	admission_posted(&a, true, false, false, 7); /* its Sync not seen yet */
	assert_true(admission_open(&a));
	assert_true(admission_sync(&a, 'I')); /* commit it on the mirror */
	assert_false(admission_open(&a));
	assert_false(admission_sync(&a, 'I'));

	/* the Sync seen with the Execute: the mirror syncs it itself */
	admission_begin(&a, &from_idle, &idle_load);
	assert_int_equal(admission_request(&a, true, &why), ADMISSION_POST);
	admission_posted(&a, true, true, false, 8);
	assert_false(admission_sync(&a, 'I'));

	/* a group whose source session ends before its Sync: cut, never committed */
	admission_begin(&a, &from_idle, &idle_load);
	assert_int_equal(admission_request(&a, true, &why), ADMISSION_POST);
	admission_posted(&a, true, false, false, 9);
	assert_true(admission_open(&a));
	assert_true(admission_cut(&a));
	assert_false(admission_sync(&a, 'I')); /* no sync after the abort */
}

static void ends_unit(void **state)
{
	(void)state;
	assert_true(admission_ends_unit(false, 'T', 'I', false, FINGERPRINT_TXN_COMMIT));
	assert_false(admission_ends_unit(false, 'I', 'T', false, FINGERPRINT_TXN_BEGIN));
	/* autocommit Execute with its Sync */
	assert_true(admission_ends_unit(true, 'I', 0, true, FINGERPRINT_TXN_NONE));
	assert_false(admission_ends_unit(true, 'I', 0, false, FINGERPRINT_TXN_NONE));
	/* inside a transaction block */
	assert_false(admission_ends_unit(true, 'T', 0, true, FINGERPRINT_TXN_NONE));
	assert_true(admission_ends_unit(true, 'T', 0, true, FINGERPRINT_TXN_COMMIT));
	assert_false(admission_ends_unit(true, 'I', 0, true, FINGERPRINT_TXN_BEGIN));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(admitted_unit_is_posted_whole),
	    cmocka_unit_test(budget_full_mid_unit_aborts),
	    cmocka_unit_test(budget_full_at_first_request_drops_whole),
	    cmocka_unit_test(queue_full_at_start_drops_whole),
	    cmocka_unit_test(partial_units_are_dropped),
	    cmocka_unit_test(gap_and_session_end_cut_open_units),
	    cmocka_unit_test(sync_groups),
	    cmocka_unit_test(ends_unit),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
