/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * resolver: --source-dsn. Names the database and user of sessions whose start was
 * missed (open before the agent started, or resynchronised) by looking their client
 * address and port up in the source's pg_stat_activity. Best effort: it needs a role
 * that may read other sessions' client addresses (pg_read_all_stats or superuser).
 *
 * A shell with its own thread and one libpq connection to the source, which is
 * excluded from capture. The capture thread calls resolver_request and
 * resolver_results; both only take a mutex, never wait on the network.
 */
#ifndef PGSHADOW_RESOLVER_H
#define PGSHADOW_RESOLVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "capture.h"
#include "tcpstream.h"

#define RESOLVER_NAME_MAX 64

struct resolver_result {
	uint64_t flow_id;
	bool found;
	char database[RESOLVER_NAME_MAX];
	char user[RESOLVER_NAME_MAX];
};

struct resolver_stats {
	uint64_t requests, resolved, not_found, queue_full, queries, query_errors, reconnects;
};

/*
 * Connects to the source with dsn (libpq conninfo or URI), excludes that connection from
 * capture, and starts the thread. Returns NULL with a one-line reason in err when the
 * first connection fails.
 */
struct resolver *resolver_start(const char *dsn, struct capture *c, char *err, size_t errlen);

/* Asks for the identity of one session (capture thread; never blocks on the network). */
void resolver_request(struct resolver *r, uint64_t flow_id, const struct tcpstream_addr *client);

/* Moves up to max finished lookups into out; returns how many. */
int resolver_results(struct resolver *r, struct resolver_result *out, int max);

/* A copy of the counters. */
void resolver_stats(struct resolver *r, struct resolver_stats *out);

/* Stops the thread, closes the connection, frees. NULL-safe. */
void resolver_stop(struct resolver *r);

#endif /* PGSHADOW_RESOLVER_H */
