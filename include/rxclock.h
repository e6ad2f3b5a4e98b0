/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * rxclock: when a mirror answer reached this host (pure).
 *
 * The mirror_rx socket filter records, per mirror connection, when each answer ended (a
 * segment ending with ReadyForQuery) and when the last segment carrying data came
 * (struct capture_rx_slot). The replay times an answer from the item's send to the end
 * that belongs to it: the connection's ends are taken in order, one per answer that ends
 * with ReadyForQuery (a cursor per connection). An end before the send belongs to an
 * earlier exchange and is passed over; an end after the wakeup that read the answer
 * belongs to a later one and is left. An answer with no recorded end (it shared a segment
 * with the next one, or ends a pipelined Execute of an open Sync group without
 * ReadyForQuery) takes the last data segment's time when that lies between its send and
 * the wakeup; otherwise the wakeup's time stands in, as before the kernel timed answers.
 */
#ifndef PGSHADOW_RXCLOCK_H
#define PGSHADOW_RXCLOCK_H

#include <stdbool.h>
#include <stdint.h>

#include "capture_event.h"

/* True when t (0: none) can end the answer to a request sent at sent and read at now. */
static inline bool rxclock_usable(uint64_t sent, uint64_t t, uint64_t now)
{
	return t && t >= sent && t <= now;
}

/*
 * The answer's time: the kernel's (*kernel set) or now. v: what the filter recorded;
 * *next: the connection's cursor into v->ends (starts at the ends recorded when the
 * filter was attached); rfq: the answer ends with ReadyForQuery.
 */
static inline uint64_t rxclock_pick(const struct capture_rx_slot *v, uint64_t *next, bool rfq,
				    uint64_t sent, uint64_t now, bool *kernel)
{
	uint64_t t;

	if (v->ends - *next > CAPTURE_RX_ENDS) /* the oldest were overwritten */
		*next = v->ends - CAPTURE_RX_ENDS;
	while (rfq && *next < v->ends) {
		t = v->end_ns[*next % CAPTURE_RX_ENDS];
		if (t > now)
			break; /* a later answer's */
		(*next)++;
		if (t >= sent) {
			*kernel = true;
			return t;
		}
	}
	*kernel = rxclock_usable(sent, v->last, now);
	return *kernel ? v->last : now;
}

#endif /* PGSHADOW_RXCLOCK_H */
