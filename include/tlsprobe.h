/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * tlsprobe: --tls on. Finds the postmaster(s) listening on the captured port and the libssl
 * each maps, and has capture probe them (capture_tls_add); notices a postmaster that exited
 * and probes its successor. A shell: it reads /proc (the parsing is procnet's).
 */
#ifndef PGSHADOW_TLSPROBE_H
#define PGSHADOW_TLSPROBE_H

#include <stdint.h>

#include "capture.h"

struct tlsprobe;

/* Nothing is probed before the first tlsprobe_scan. NULL on ENOMEM. */
struct tlsprobe *tlsprobe_new(struct capture *c, uint16_t port);

/*
 * Looks for the listening postmasters not probed yet and probes them; forgets those that
 * exited. Says on stderr what it probed and what it could not (no libssl mapped, a deleted
 * one, attach errors), once per postmaster. Returns how many are probed now.
 */
int tlsprobe_scan(struct tlsprobe *t);

/* Called often (the capture thread's tick): every 5 s checks that the probed postmasters
 * live, and rescans when one exited or none is probed. Returns tlsprobe_servers. */
int tlsprobe_tick(struct tlsprobe *t, uint64_t now_ns);

/* Postmasters probed now. */
int tlsprobe_servers(const struct tlsprobe *t);

/* Postmasters found that cannot be probed (no dynamic libssl, attach failed). */
int tlsprobe_unprobed(const struct tlsprobe *t);

void tlsprobe_free(struct tlsprobe *t);

#endif /* PGSHADOW_TLSPROBE_H */
