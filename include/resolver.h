/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * resolver: --source-dsn. Looks sessions up in the source's pg_stat_activity by client
 * address and port, for two things the capture cannot see:
 * - identity: the database and user of a session whose start was missed (open before
 *   the agent started, or resynchronised);
 * - statement: the text of a statement prepared before capture began — the query and
 *   query_start of the session's backend, which are those of the last Parse, Bind,
 *   Execute or Query it processed. The answer says when, on the capture clock, the server
 *   set query_start (a window: the source's clock is compared with ours at each lookup),
 *   and whether the text was cut at track_activity_query_size.
 * Best effort: it needs a role that may read other sessions' rows (pg_read_all_stats or
 * superuser).
 *
 * A shell with its own thread and one libpq connection to the source, which is
 * excluded from capture. The capture thread calls resolver_request, resolver_request_statement
 * and resolver_results; they only take a mutex, never wait on the network. Identity
 * lookups are batched (one query per 200 ms, up to 5 attempts); statement lookups are
 * made at once and tried once (the session asks again at a later Execute).
 */
#ifndef PGSHADOW_RESOLVER_H
#define PGSHADOW_RESOLVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "capture.h"
#include "tcpstream.h"

#define RESOLVER_NAME_MAX 64

enum resolver_kind {
	RESOLVER_IDENTITY = 0,
	RESOLVER_STATEMENT,
};

enum resolver_stmt_status {
	RESOLVER_STMT_FOUND = 0,
	RESOLVER_STMT_NOT_FOUND, /* no backend of that client */
	RESOLVER_STMT_FAILED,	 /* no connection, an error, a timeout */
};

struct resolver_result {
	uint64_t flow_id;
	enum resolver_kind kind;
	/* RESOLVER_IDENTITY */
	bool found;
	char database[RESOLVER_NAME_MAX];
	char user[RESOLVER_NAME_MAX];
	/* RESOLVER_STATEMENT */
	enum resolver_stmt_status status;
	char *text; /* FOUND, not truncated: the query (NUL-terminated); the caller frees */
	size_t text_len;
	bool truncated;	       /* FOUND: it reached track_activity_query_size, cut */
	uint64_t lo_ns, hi_ns; /* FOUND: CLOCK_MONOTONIC window holding query_start (0, 0
				* when the backend has not run anything) */
	uint64_t ready_ns;     /* CLOCK_MONOTONIC when it was read */
};

struct resolver_stats {
	uint64_t requests, resolved, not_found, queue_full, queries, query_errors, reconnects;
	uint64_t statements; /* statement lookups asked */
};

/*
 * Connects to the source with dsn (libpq conninfo or URI), excludes that connection from
 * capture, and starts the thread. Returns NULL with a one-line reason in err when the
 * first connection fails.
 */
struct resolver *resolver_start(const char *dsn, struct capture *c, char *err, size_t errlen);

/* Asks for the identity of one session (capture thread; never blocks on the network). */
void resolver_request(struct resolver *r, uint64_t flow_id, const struct tcpstream_addr *client);

/* Asks for the statement text of one session's backend; false when the queue is full
 * (capture thread; never blocks on the network). */
bool resolver_request_statement(struct resolver *r, uint64_t flow_id,
				const struct tcpstream_addr *client);

/*
 * Moves up to max finished lookups into out; returns how many. A statement answer is
 * held back until now_ns (the capture clock up to which every record has been fed) has
 * passed its ready_ns: a message the server processed before the lookup read its row must
 * have reached the session first.
 */
int resolver_results(struct resolver *r, struct resolver_result *out, int max, uint64_t now_ns);

/* A copy of the counters. */
void resolver_stats(struct resolver *r, struct resolver_stats *out);

/* Stops the thread (within about 100 ms, whatever the source does), closes the
 * connection, frees (answers not taken included). NULL-safe. */
void resolver_stop(struct resolver *r);

#endif /* PGSHADOW_RESOLVER_H */
