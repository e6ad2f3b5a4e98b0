/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * sampler: which completed source requests of a mirrored session go to the mirror, and
 * how. Pure: no clocks, threads or sockets; the randomness is a per-session xorshift
 * seeded by the caller. Owned by the capture thread (one struct sampler_session per
 * source session).
 *
 * Transactions. A request starts a transaction when the source was idle before it
 * (txn_before 'I', or nothing seen yet) — except an Execute of the same Sync as the
 * Execute before it (one implicit transaction). Everything until the source is idle
 * again belongs to it. With mirror_sampling = transaction the dice are rolled at each
 * start (exposure = probability); with session, once per session.
 *
 * Always replayed, sampled or not: statements that change session state (SET, PREPARE,
 * LISTEN, CREATE TEMP ..., see fingerprint.h), so a sampled request never fails for lack
 * of context. Named prepared statements need nothing here: the replay prepares them
 * lazily from the captured Parse.
 *
 * Write safety (DESIGN.md "Replay"): a COMMIT the source answered with ROLLBACK (or
 * with an error: a deferred constraint, a serialization failure) is replayed as ROLLBACK
 * and not compared; a standalone statement (its own transaction) that failed on the
 * source is replayed inside BEGIN ... ROLLBACK, unless it cannot run in a transaction
 * block (skipped, reason no_transaction) or controls transactions itself (skipped too).
 * mirror_aborted = skip holds a transaction's requests until its end is seen: released
 * when it committed, discarded (skipped, reason aborted) when it rolled back.
 *
 * Filters: mirror_level dml passes DML, ddl passes DDL; transaction control and session
 * state always pass (a text with several statements passes when any of them does).
 * mirror_mode read_only passes reads (fingerprint.h's definition) plus transaction
 * control and session state; other statements are skipped (reason write).
 */
#ifndef PGSHADOW_SAMPLER_H
#define PGSHADOW_SAMPLER_H

#include <stdbool.h>
#include <stdint.h>

#include "fingerprint.h"
#include "session.h"
#include "stats.h"

/* The replay policy (configuration keys mirror_*; the names keep the replay_ prefix of the
 * keys' documentation). */
enum replay_sampling { REPLAY_SAMPLE_TRANSACTION = 0, REPLAY_SAMPLE_SESSION };
enum replay_aborted { REPLAY_ABORTED_REPLAY = 0, REPLAY_ABORTED_SKIP };
enum replay_level { REPLAY_LEVEL_ALL = 0, REPLAY_LEVEL_DML, REPLAY_LEVEL_DDL };
enum replay_mode { REPLAY_MODE_ALL = 0, REPLAY_MODE_READ_ONLY };
enum replay_compare { REPLAY_COMPARE_STATUS = 0, REPLAY_COMPARE_ROWS, REPLAY_COMPARE_NONE };

/* [databases] line: source database -> mirror dbname and/or its own exposure. */
struct replay_db_map {
	const char *source_db;
	const char *mirror_dbname; /* NULL: same name as the source's */
	double exposure;	   /* < 0: the global mirror_exposure */
};

struct sampler_config {
	double exposure; /* 0.0-1.0 */
	enum replay_sampling sampling;
	enum replay_level level;
	enum replay_mode mode;
	enum replay_aborted aborted;
};

/* Per source session. Zero it, then set rng to a nonzero seed. */
struct sampler_session {
	uint64_t rng;
	bool decided;	   /* a decision exists (sampling = session: for good) */
	bool sampled;	   /* of the current transaction (or the session) */
	bool group_open;   /* the last request was an Execute in an implicit transaction */
	uint64_t group;	   /* its sync group */
	bool in_txn;	   /* inside a transaction (held items belong to it) */
	bool txn_explicit; /* it began with BEGIN or the source reported it open */
	bool txn_failed;   /* implicit transaction: an error in it */
	bool last_ok;	   /* the last request did not roll back or fail */
};

/* What the sampler needs of one request. */
struct sampler_request {
	enum session_req_kind kind;
	char txn_before;     /* session_request.txn_before */
	char txn_after;	     /* Query: session_request.txn_status; 0 for an Execute */
	uint64_t sync_group; /* Execute */
	bool error;
	const char *sqlstate;		     /* of that error ("" or NULL if none) */
	const char *tag;		     /* the source's last command tag ("" if none) */
	const struct fingerprint_info *info; /* of the request's text */
};

enum sampler_verdict {
	SAMPLER_REPLAY = 0,
	SAMPLER_NOT_SAMPLED,
	SAMPLER_SKIP,
};

/* What to do with held items (mirror_aborted = skip). */
enum sampler_flush {
	SAMPLER_KEEP = 0, /* nothing */
	SAMPLER_RELEASE,  /* the transaction committed: replay them */
	SAMPLER_DISCARD,  /* it rolled back: skip them (reason aborted) */
};

struct sampler_decision {
	enum sampler_verdict verdict;
	enum stats_skip_reason skip; /* SAMPLER_SKIP */
	enum sampler_flush before;   /* for items held before this request, first */
	bool hold;		     /* hold this one (with the others) */
	enum sampler_flush after;    /* for every held item, this one included, after */
	bool txn_start;		     /* the first request of a transaction */
	bool as_rollback;	     /* send ROLLBACK instead of the text */
	bool wrap;		     /* run inside BEGIN ... ROLLBACK */
	/* the source failed it for a reason of its concurrency, not of the statement (a
	 * deadlock victim, a serialization failure, a lock not available): not run on the
	 * mirror, where this SQLSTATE is raised instead, so that the transaction aborts
	 * there too and releases what it holds. NULL: run the statement. */
	const char *raise;
	bool read; /* changes nothing others see: waits only for writes */
};

void sampler_decide(const struct sampler_config *cfg, struct sampler_session *ss,
		    const struct sampler_request *q, struct sampler_decision *d);

/* The source session ended: what to do with its held items (an explicit transaction
 * left open rolled back; an implicit one without error committed at its Sync). */
enum sampler_flush sampler_session_end(struct sampler_session *ss);

/* A uniform double in [0, 1) from the session's generator (exposure dice). */
double sampler_random(struct sampler_session *ss);

#endif /* PGSHADOW_SAMPLER_H */
