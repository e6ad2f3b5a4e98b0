// SPDX-License-Identifier: BSD-2-Clause
/* fuzz_session.h — the session handler the harnesses decode with: requests and events
 * are dropped (the decoders' own checks and the sanitizers are what is under test). */
#ifndef PGSHADOW_FUZZ_SESSION_H
#define PGSHADOW_FUZZ_SESSION_H

#include "session.h"

static void on_request(void *ctx, struct session_info *s, const struct session_request *r)
{
	(void)ctx;
	(void)s;
	(void)r;
}

static void on_event(void *ctx, struct session_info *s, enum session_event ev, uint64_t ts)
{
	(void)ctx;
	(void)s;
	(void)ev;
	(void)ts;
}

static const struct session_handler fuzz_session_handler = {on_request, on_event};

#endif /* PGSHADOW_FUZZ_SESSION_H */
