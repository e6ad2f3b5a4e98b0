/* SPDX-License-Identifier: BSD-2-Clause */
/* rxclock: which clock ends a mirror answer's latency. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include "rxclock.h"

/* sent at 1000, the replay woke to read at 5000 */
static void test_kernel_time_between_send_and_read(void **state)
{
	(void)state;
	assert_true(rxclock_usable(1000, 1300, 5000));
	assert_int_equal(rxclock_answer_time(1000, 1300, 5000), 1300);
	/* the bounds belong to the answer */
	assert_int_equal(rxclock_answer_time(1000, 1000, 5000), 1000);
	assert_int_equal(rxclock_answer_time(1000, 5000, 5000), 5000);
}

static void test_other_times_fall_back_to_the_read(void **state)
{
	(void)state;
	/* no segment yet on this connection */
	assert_false(rxclock_usable(1000, 0, 5000));
	assert_int_equal(rxclock_answer_time(1000, 0, 5000), 5000);
	/* an older answer's segment (before the send): this answer's time is unknown */
	assert_false(rxclock_usable(1000, 999, 5000));
	assert_int_equal(rxclock_answer_time(1000, 999, 5000), 5000);
	/* a segment that came after the wakeup (the next pipelined answer) */
	assert_false(rxclock_usable(1000, 5001, 5000));
	assert_int_equal(rxclock_answer_time(1000, 5001, 5000), 5000);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_kernel_time_between_send_and_read),
	    cmocka_unit_test(test_other_times_fall_back_to_the_read),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
