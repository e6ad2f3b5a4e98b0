/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * explain: --explain-regressions (a shell: a thread and libpq). For the statements that
 * regress by latency, the mirror's plan: EXPLAIN (FORMAT JSON), never ANALYZE, run on the
 * MIRROR ONLY with the text and parameters of one execution the replay captured, summed
 * up by plan.h (node types, relations, indexes, estimates; never a condition, which would
 * print the parameters) and kept with the statement (querystats_set_plan).
 *
 * Every interval the thread asks for the top QUERYSTATS_TOP_EXPLAINED regressions
 * (explain_config.top); for each slower one without a plan it either runs EXPLAIN with
 * the execution it holds, or asks the replay for the next one (explain_wants /
 * explain_offer: the replay thread copies that item's text and parameters; nothing is
 * kept for statements nobody asked about). It connects to the statement's mirror
 * database with the mirror conninfo and the session's options, excluded from capture
 * (ownconn), and disconnects after each EXPLAIN: this is the agent's own connection,
 * outside the pools and mirror_max_connections, at most one at a time.
 *
 * EXPLAIN is sent as one extended-protocol statement (PQexecParams), which PostgreSQL
 * refuses to hold more than one command: a text of several statements fails instead of
 * running the others. Only the answer's SQLSTATE is kept when it fails (a message can
 * quote a value).
 */
#ifndef PGSHADOW_EXPLAIN_H
#define PGSHADOW_EXPLAIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "capture.h"
#include "querystats.h"

#define EXPLAIN_TOP	   5	       /* regressions looked at each round */
#define EXPLAIN_SAMPLE_MAX (64u << 10) /* bytes of text and parameters kept per execution */

/* The current top regressions (querystats rows sorted by impact), up to cap. */
typedef size_t (*explain_top_fn)(void *ctx, struct querystats_row *out, size_t cap);
/* Keeps a statement's plan summary. */
typedef void (*explain_plan_fn)(void *ctx, const char *database, uint64_t fingerprint,
				const char *plan);

struct explain_config {
	const char *mirror;    /* the mirror conninfo (mirror_of) */
	struct capture *cap;   /* to exclude its connection (may be NULL) */
	uint16_t capture_port; /* ownconn_exclude's only_port */
	uint32_t interval_ms;  /* between rounds (default 2000) */
	uint32_t timeout_ms;   /* connect and statement timeout (default 10000) */
	explain_top_fn top;
	explain_plan_fn set_plan;
	void *ctx;
};

struct explain;

/* Starts the thread; NULL with a reason in err. */
struct explain *explain_start(const struct explain_config *cfg, char *err, size_t errlen);

/* Does the thread want the next execution of this statement? Any thread; cheap (an
 * atomic when nothing is wanted). NULL-safe. */
bool explain_wants(struct explain *ex, const char *database, uint64_t fingerprint);

/*
 * One execution of a wanted statement (the replay thread): its source database and
 * fingerprint, the mirror database and options its session connects with, its text and
 * parameters (text or binary per formats; NULL formats: all text; a NULL value is SQL
 * NULL). Copied when still wanted and not larger than EXPLAIN_SAMPLE_MAX.
 */
void explain_offer(struct explain *ex, const char *database, uint64_t fingerprint,
		   const char *mirror_db, const char *options, const char *text, int n_params,
		   const char *const *values, const int *lengths, const int *formats);

/* Statements explained, and those whose EXPLAIN failed. */
void explain_counts(struct explain *ex, uint64_t *explained, uint64_t *failed);

/* Stops and joins the thread (an EXPLAIN under way ends within STEP_MS): no callback
 * runs after it. Offers are still taken until explain_free. NULL-safe, idempotent. */
void explain_stop(struct explain *ex);

/* Frees it, after explain_stop and once no thread offers any more. NULL-safe. */
void explain_free(struct explain *ex);

#endif /* PGSHADOW_EXPLAIN_H */
