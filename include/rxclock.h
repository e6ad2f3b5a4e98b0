/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * rxclock: when a mirror answer reached this host (pure).
 *
 * The replay times an answer from the item's send to the kernel's receive time of the
 * connection's last segment carrying data (capture_rx_time), read once libpq has the
 * answer. That time belongs to this answer only when it lies between the send and the
 * wakeup that read it: an earlier one is an older answer's, a later one (after the
 * wakeup) a segment that came while the thread was reading. Otherwise the wakeup's time
 * stands in, as it did before the kernel timed answers.
 */
#ifndef PGSHADOW_RXCLOCK_H
#define PGSHADOW_RXCLOCK_H

#include <stdbool.h>
#include <stdint.h>

/* True when rx (0: none) times the answer of a request sent at sent and read at now. */
static inline bool rxclock_usable(uint64_t sent, uint64_t rx, uint64_t now)
{
	return rx && rx >= sent && rx <= now;
}

/* The answer's time: rx when usable, else now. */
static inline uint64_t rxclock_answer_time(uint64_t sent, uint64_t rx, uint64_t now)
{
	return rxclock_usable(sent, rx, now) ? rx : now;
}

#endif /* PGSHADOW_RXCLOCK_H */
