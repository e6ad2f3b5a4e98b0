// SPDX-License-Identifier: BSD-2-Clause
/*
 * statefile.h — the readiness window in a small text file (state_file), so that a restart
 * does not start a 24-hour observation window over. Pure: main.c reads and writes the
 * file (atomically: a temporary file, fsync, rename) and decides what to do with one
 * this refuses.
 *
 * The text, one "key value" per line, in this order:
 *   pgshadow-state 1
 *   version <the agent's version>
 *   mirror <16 hex digits: which mirror it judged (statefile_mirror_id)>
 *   runtime_ns, total, not_sampled, compared, mismatched, mirrored,
 *   errors_connection, errors_query, errors_timeout, errors_buffer_full, streak,
 *   mirror_sum_ns, source_sum_ns, mirror_max_ns, source_max_ns <a decimal each>
 *   mirror_hist, source_hist <STATS_BUCKETS + 1 decimals>
 *   checksum <16 hex digits: XXH64 of every byte before this line>
 * A file from another format or agent version, for another mirror, or whose checksum,
 * keys or numbers are not exactly these is refused with the reason.
 */
#ifndef PGSHADOW_STATEFILE_H
#define PGSHADOW_STATEFILE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "buf.h"
#include "stats.h"

#define STATEFILE_FORMAT 1
#define STATEFILE_MAX	 8192 /* a state file is never longer */

/* Which mirror a window judged: a hash of the --mirror conninfo with any password
 * left out (its host, port, database and user). */
uint64_t statefile_mirror_id(const char *conninfo);

/* Appends the file's text to out; false when out refused to grow. */
bool statefile_encode(const struct stats_readiness_state *s, const char *version, uint64_t mirror,
		      struct buf *out);

/* Reads text (len bytes) into *out. Returns 0, or -1 with why (one line) filled. */
int statefile_decode(const char *text, size_t len, const char *version, uint64_t mirror,
		     struct stats_readiness_state *out, char *why, size_t whylen);

#endif /* PGSHADOW_STATEFILE_H */
