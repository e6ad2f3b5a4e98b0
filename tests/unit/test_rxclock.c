/* SPDX-License-Identifier: BSD-2-Clause */
/* rxclock: which time ends a mirror answer's latency, from what mirror_rx recorded. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "rxclock.h"

/* A slot that recorded the given answer ends (in order) and last. */
static struct capture_rx_slot slot(uint64_t last, const uint64_t *ends, int n)
{
	struct capture_rx_slot v;
	int i;

	memset(&v, 0, sizeof(v));
	v.last = last;
	for (i = 0; i < n; i++)
		v.end_ns[i % CAPTURE_RX_ENDS] = ends[i];
	v.ends = (uint64_t)n;
	return v;
}

static void test_usable(void **state)
{
	(void)state;
	assert_true(rxclock_usable(1000, 1300, 5000));
	assert_true(rxclock_usable(1000, 1000, 5000));
	assert_true(rxclock_usable(1000, 5000, 5000));
	assert_false(rxclock_usable(1000, 0, 5000));
	assert_false(rxclock_usable(1000, 999, 5000));
	assert_false(rxclock_usable(1000, 5001, 5000));
}

/* Three answers pipelined on one connection, read together at 5000: each gets its end,
 * and the next one's service starts where the previous one's answer ended. */
static void test_pipelined_answers_read_together(void **state)
{
	const uint64_t ends[] = {1200, 1500, 2100};
	struct capture_rx_slot v = slot(2100, ends, 3);
	uint64_t next = 0, at;
	bool kernel = false;

	(void)state;
	at = rxclock_pick(&v, &next, true, 1000, 5000, &kernel);
	assert_int_equal(at, 1200);
	assert_true(kernel);
	at = rxclock_pick(&v, &next, true, at, 5000, &kernel);
	assert_int_equal(at, 1500);
	at = rxclock_pick(&v, &next, true, at, 5000, &kernel);
	assert_int_equal(at, 2100);
	assert_int_equal(next, 3);
}

/* Ends before the send belong to earlier exchanges; an end after the wakeup to a later
 * answer, which keeps it. */
static void test_other_exchanges_ends(void **state)
{
	const uint64_t ends[] = {100, 200, 1300, 6000};
	struct capture_rx_slot v = slot(6000, ends, 4);
	uint64_t next = 0, at;
	bool kernel = false;

	(void)state;
	at = rxclock_pick(&v, &next, true, 1000, 5000, &kernel);
	assert_int_equal(at, 1300);
	assert_true(kernel);
	assert_int_equal(next, 3);
	/* the next answer, read at 5500: 6000 is not its end yet; last (6000) neither */
	at = rxclock_pick(&v, &next, true, 1300, 5500, &kernel);
	assert_int_equal(at, 5500);
	assert_false(kernel);
	assert_int_equal(next, 3);
	/* read at 7000: it is */
	at = rxclock_pick(&v, &next, true, 1300, 7000, &kernel);
	assert_int_equal(at, 6000);
	assert_true(kernel);
}

/* No end recorded for the answer (two answers in one segment; an Execute of an open
 * Sync group ends without ReadyForQuery): the last data segment, if it is this answer's. */
static void test_fallbacks(void **state)
{
	const uint64_t ends[] = {1200};
	struct capture_rx_slot v = slot(1200, ends, 1);
	uint64_t next = 0, at;
	bool kernel = false;

	(void)state;
	/* no ReadyForQuery: the end stays for the answer that has one */
	at = rxclock_pick(&v, &next, false, 1000, 5000, &kernel);
	assert_int_equal(at, 1200);
	assert_true(kernel);
	assert_int_equal(next, 0);
	at = rxclock_pick(&v, &next, true, 1000, 5000, &kernel);
	assert_int_equal(at, 1200);
	assert_int_equal(next, 1);
	/* the second answer of the same segment: last is its time too */
	at = rxclock_pick(&v, &next, true, 1200, 5000, &kernel);
	assert_int_equal(at, 1200);
	assert_true(kernel);
	/* nothing recorded after the send: the wakeup's time */
	at = rxclock_pick(&v, &next, true, 3000, 5000, &kernel);
	assert_int_equal(at, 5000);
	assert_false(kernel);
}

/* More ends than the ring holds since the cursor: the overwritten ones are skipped. */
static void test_ring_overwritten(void **state)
{
	uint64_t ends[CAPTURE_RX_ENDS + 4], next = 0, at;
	struct capture_rx_slot v;
	bool kernel = false;
	int i;

	(void)state;
	for (i = 0; i < CAPTURE_RX_ENDS + 4; i++)
		ends[i] = 1000 + (uint64_t)i * 10;
	v = slot(ends[CAPTURE_RX_ENDS + 3], ends, CAPTURE_RX_ENDS + 4);
	at = rxclock_pick(&v, &next, true, 1000, 9000, &kernel);
	assert_int_equal(at, ends[4]);
	assert_int_equal(next, 5);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_usable),
	    cmocka_unit_test(test_pipelined_answers_read_together),
	    cmocka_unit_test(test_other_exchanges_ends),
	    cmocka_unit_test(test_fallbacks),
	    cmocka_unit_test(test_ring_overwritten),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
