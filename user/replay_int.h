/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * replay_int.h — what the replay's files share (not a public interface: include/replay.h
 * is). The replay is a shell over four pure cores: sampler (which requests), admission
 * (transactions whole or not at all), order (when a request may start on the mirror) and
 * compare (what of an answer is comparable). Its files:
 *
 *   replay_submit.c  the capture thread's half: sessions appear, requests are sampled,
 *                    admitted, copied into items and posted; [databases] and exposure
 *   replay.c         the replay thread: the channel, the session state machine
 *                    (sess_run), ordering waits, control messages, the epoll loop,
 *                    SHOW MIRROR SESSIONS, start and stop
 *   replay_conn.c    libpq: mirror connections, sending (pipelines, corking, Sync
 *                    groups), reading and comparing answers
 *
 * Two threads meet here. The capture thread never blocks and makes no system call except
 * one eventfd write per batch of capture records to wake the replay thread. It copies
 * each request into one allocation (struct item) and posts it on the channel: an
 * intrusive lock-free list of messages (OPEN, PARAMS, ITEM, CLOSE) that the capture thread
 * pushes with a CAS and the replay thread takes whole with one exchange, reversing it, so
 * messages arrive in posting order. It is a list rather than a ring so that OPEN and CLOSE,
 * which live inside the session handle, can never be refused; items are bounded instead
 * by admission (admission.h: mirror_queue per session at a transaction's start, the byte
 * budget mirror_queue_mb and CHANNEL_ITEMS_MAX items in all).
 *
 * Ownership of a struct replay_session: the capture thread writes its c_* fields and
 * nothing else; after replay_session_close has posted CLOSE it never touches it again.
 * The replay thread owns every other field and frees the session once it has processed
 * CLOSE and finished (or given up) every item of it. Shared fields are atomics: queued
 * (items submitted and not finished), units and the SHOW MIRROR SESSIONS counters.
 * Mirror connections are pooled (replay_pool.c): a session borrows a struct mconn for a
 * transaction or a run of autocommit statements.
 *
 * The replay thread runs one epoll loop over the eventfd and every mirror socket. Each
 * iteration it takes the channel, steps every active session (queued items, a connection
 * being made, an item in flight, a pending close) and sleeps until the nearest deadline.
 *
 * Per session, in source order. An Execute runs in libpq pipeline mode (Prepare if
 * needed, the execution, then PQpipelineSync, or a Flush while its Sync group is open),
 * a Query outside it. Results are read in single-row mode where libpq allows it.
 * Control messages travel in the same queue: CTL_ABORT rolls back the mirror's
 * transaction of a unit a fault cut, CTL_SYNC commits a Sync group once the source
 * answered its Sync. A lost connection marks its open unit dead: the rest of it fails
 * instead of autocommitting on a new connection.
 *
 * Backlog pipelining: while a session has a backlog, plain items (replay_pipelinable) are
 * sent one after another, each with its own Sync, up to mirror_pipeline in flight, corked
 * so that one pass leaves in one segment. Order (order.h) is checked for each of them.
 *
 * Known limitations (documented, deliberate):
 * - libpq cannot express an Execute row limit: a suspended portal runs to completion on
 *   the mirror (compare.h compares it as "at least as many rows"), and the Executes that
 *   resume it on the source are counted as mirrored without running, also after other
 *   statements of the unit (REPLAY_SUSP_MAX portals per unit).
 * - A named statement re-parsed with another text is prepared on the mirror under a new
 *   name ("pgshadow#<n>"); so is one whose name is reused after a DEALLOCATE or DISCARD (a
 *   simple query or an Execute). At most STMTS_MAX statements are kept per mirror
 *   connection; beyond that Executes use the unnamed statement.
 * - A COPY through the extended protocol runs outside pipeline mode as an unnamed
 *   statement.
 * - Host names in the mirror conninfo are resolved by libpq synchronously on the replay
 *   thread (use an address to avoid it).
 */
#ifndef PGSHADOW_REPLAY_INT_H
#define PGSHADOW_REPLAY_INT_H

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include <xxhash.h>

#include "admission.h"
#include "buf.h"
#include "compare.h"
#include "explain.h"
#include "fingerprint.h"
#include "order.h"
#include "ownconn.h"
#include "replay.h"
#include "rxclock.h"
#include "sampler.h"

#define CHANNEL_ITEMS_MAX  (1u << 20) /* items submitted and not finished, all sessions */
#define BACKOFF_MIN_MS	   100	      /* first reconnect delay */
#define CONNECT_TIMEOUT_MS 10000      /* libpq ignores connect_timeout in PQconnectPoll */
#define REPLY_GRACE_MS	   5000	      /* past statement_timeout: the mirror went silent */
#define STMTS_MAX	   1024	      /* prepared statements kept per mirror connection */
#define STMT_BUCKETS	   64
#define REPLAY_SUSP_MAX	   8	 /* suspended portals remembered per session (a unit's cursors) */
#define COPY_CHUNK	   65536 /* bytes per PQputCopyData */
#define OPTIONS_MAX	   65536 /* the mirror connection's options string */
#define EVENTS_MAX	   64
#define IDLE_WAKE_MS	   1000
/* Answers nothing waits for are read at the next wakeup for new requests (every poll
 * of the capture thread while traffic flows), or after this long */
#define LAZY_WAKE_MS 5
/* ... and new requests are taken this often meanwhile: the capture thread's poll while
 * traffic flows (POLL_MIRROR_MS in main.c), so they come no later than they are posted */
#define LAZY_TICK_MS 2
/* ... when they are small: the source's answer had at most this many rows (a larger one
 * could fill the socket's receive window and hold the mirror back until the read) */
#define LAZY_MAX_ROWS 64
#define NEVER	      UINT64_MAX
#define MS	      1000000ull
/* Forces an error after an Execute that failed on the source, so that its implicit
 * transaction (and every Execute of its Sync) rolls back on the mirror too. */
#define FORCE_ROLLBACK_SQL "SELECT 1/0 AS pgshadow_rollback"
#define DEFAULT_PGPORT	   5432
#define FP_CACHE_ENTRIES   4096 /* statement shapes classified (capture thread) */
#define DB_MAP_MAX	   1000

enum msg_kind {
	MSG_OPEN,   /* a session handle exists (embedded in it) */
	MSG_PARAMS, /* its database and startup settings (struct params) */
	MSG_ITEM,   /* a request to replay (struct item) */
	MSG_CLOSE,  /* the source session ended (embedded in the handle) */
};

struct msg {
	struct msg *next; /* channel link */
	struct replay_session *rs;
	enum msg_kind kind;
};

/* What a mirror connection of one session needs; built on the capture thread, read-only
 * after it is posted, freed by the replay thread. */
struct params {
	struct msg m;
	const char *database;
	const char *user;
	const char *client_encoding;  /* "" = not given (libpq ignores empty values) */
	const char *application_name; /* "" = not given */
	const char *options;	      /* the mirror connection's complete options */
	char strings[];
};

/* One request to replay: the header, then (one allocation) the parameter arrays, the
 * text, the statement name, the parameter values (NUL-terminated) and the COPY data. */
struct item {
	struct msg m;
	struct stats_db *db;
	enum session_req_kind kind;
	struct order_item ord; /* source capture times (CLOCK_MONOTONIC), ordering (order.h) */
	size_t bytes;	       /* the allocation, for the global byte budget */
	uint64_t unit;	       /* its transaction on the source (per session, from 1) */
	uint8_t ctl;	       /* CTL_*: a control message, not a request */
	uint8_t ctl_reason;    /* CTL_ABORT: enum stats_abort_reason */
	bool unit_last;	       /* ends its transaction (as far as known when submitted) */
	bool unit_first;       /* the first of its transaction posted (counted in units) */
	bool sent_sync;	       /* sent with a Sync (else a Flush: its group goes on) */
	const char *text;
	const char *stmt_name; /* "" = unnamed */
	uint64_t text_hash;
	uint64_t portal_key; /* portal, text and parameters (Execute) */
	bool suspended;	     /* the source stopped it at its row limit */
	int n_params;
	int n_types;	  /* types given by the Parse */
	const Oid *types; /* n_params entries (0 = unspecified), or NULL */
	const char *const *values;
	const int *lengths;
	const int *formats; /* n_params entries, or NULL = all text */
	int result_format;
	const char *copy;
	size_t copy_len;
	/* the source's answer, for comparison */
	struct compare_answer src;
	struct compare_scope scope;
	bool no_compare;      /* mirror_compare_ignore lists its fingerprint */
	uint64_t fingerprint; /* of the text (mismatch logs) */
	/* how to replay it (sampler) */
	bool read;	     /* waits only for writes */
	bool wrap;	     /* inside BEGIN ... ROLLBACK */
	const char *raise;   /* not run: this SQLSTATE raised instead (sampler_decision) */
	bool as_rollback;    /* send ROLLBACK instead of the text */
	bool txn_start;	     /* first of a transaction (mirror_replay_timing) */
	bool pipe_ok;	     /* an Execute, or a Query of one statement (replay_submit.c) */
	uint8_t pool_act;    /* POOL_ACT_*: what it does to its session's pooled state */
	uint64_t sync_group; /* Execute: its Sync's group (CTL_SYNC: the group synced) */
	bool group_more;     /* Execute: more Executes of its Sync follow */
	bool group_end;	     /* Execute: the last of its Sync (else the group stays open) */
	/* replay thread */
	struct item *next; /* the session's queue */
	uint8_t stage;	   /* STAGE_* */
	uint8_t saved;	   /* enum outcome of the main stage (wrapped items) */
	uint64_t done_ns;  /* when the main stage completed (wrapped items) */
	bool waited;
	uint64_t sent_ns;
	/* the mirror's answer, kept for the per-statement figures (querystats.h) */
	bool m_error;
	char m_sqlstate[6];
	uint8_t m_kinds; /* mismatch bits */
};

/* What a request does to the state a pooled connection must carry (fingerprint.h). */
enum {
	POOL_ACT_NONE = 0,
	POOL_ACT_SET,	  /* one session-level SET/RESET: re-applied on the next connections */
	POOL_ACT_PIN,	  /* state that cannot move: its connection stays with the session */
	POOL_ACT_DISCARD, /* DISCARD ALL: no settings to carry, nothing pins any more */
};

/* Control messages that travel in a session's queue, in order with its requests. */
enum {
	CTL_NONE = 0,
	CTL_ABORT, /* roll back the mirror's transaction of unit (it was cut by a fault) */
	CTL_SYNC,  /* the source answered the Sync of group sync_group: commit it here */
};

/* A statement prepared on a mirror connection: source name + text -> mirror name. */
struct stmt {
	struct stmt *next;
	uint64_t text_hash;
	const char *mname;
	char name[];
};

enum conn_state {
	CONN_NONE = 0,	 /* no connection: none needed now (borrowed again on demand) */
	CONN_CONNECTING, /* PQconnectPoll in progress */
	CONN_SETUP,	 /* SET ROLE, the session's settings or a group's Sync in flight */
	CONN_IDLE,	 /* ready for the next item */
	CONN_BUSY,	 /* an item in flight */
	CONN_BACKOFF,	 /* connecting failed: items are connection errors until deadline */
	CONN_WAIT,	 /* waiting for a pooled connection (until deadline) */
};

/*
 * A mirror connection (replay_pool.c). While a session borrows it, owner is that session
 * and every field below is the session's to use; otherwise it is idle in its pool (still
 * watched by epoll, so a connection the mirror closes is noticed and dropped). It is
 * epoll's data.ptr, and is freed only after the batch of events that may name it.
 */
struct mconn {
	struct pool *pool;
	struct replay_session *owner; /* NULL: idle in its pool */
	struct mconn *next;	      /* the pool's idle list, or the graveyard */
	PGconn *conn;		      /* NULL once closed (in the graveyard) */
	int fd;
	int rx_slot;	  /* its receive times (capture_rx_attach), -1: none */
	uint64_t rx_next; /* answer ends taken from the slot (rxclock_pick) */
	uint64_t rx_fin;  /* the slot's fin when attached (a reused slot keeps its last) */
	uint32_t events;
	bool watched;	     /* fd is in the epoll set */
	bool corked;	     /* TCP_CORK set for this step's sends (cork()) */
	bool want_write;     /* libpq has unsent output */
	bool connecting;     /* not made yet (counted as connecting) */
	bool pinned;	     /* kept by its session until the session ends */
	uint64_t sets;	     /* hash of the session settings applied on it (0: none) */
	struct ownconn excl; /* out of capture */
	struct stmt *stmts[STMT_BUCKETS];
	uint32_t n_stmts, mangle;
	bool mangle_all; /* the mirror may hold names we forgot: always use new ones */
};

/*
 * A pool: the mirror connections of one startup identity (database, user, options,
 * client_encoding, application_name: struct params), shared by every session with that
 * identity. Counters are atomics: SHOW MIRROR POOLS reads them under list_lock, which
 * guards the list of pools.
 */
struct pool {
	struct pool *next;
	uint64_t key;			  /* hash of the identity */
	struct params *params;		  /* the first session's, kept (the identity's strings) */
	struct mconn *idle;		  /* free connections, most recently used first */
	struct replay_session *wait_head; /* sessions waiting, by their next request's start */
	_Atomic uint32_t n_idle, n_active, n_login, n_pinned, n_waiting;
	uint32_t n_clients;	      /* sessions whose pool it is */
	_Atomic uint64_t oldest_wait; /* when the first waiter began waiting (0: none) */
};

/* Progress of what is in flight on a connection (an item, or SET ROLE). */
struct run {
	bool pipeline;	   /* sent in pipeline mode: complete at PGRES_PIPELINE_SYNC */
	bool copy_in;	   /* sending COPY data */
	bool copy_out;	   /* discarding COPY TO STDOUT data */
	bool broken;	   /* libpq state we cannot continue from: reset the connection */
	bool error;	   /* an error result was seen */
	char sqlstate[6];  /* of the first one */
	size_t copy_off;   /* COPY data sent so far */
	int nulls;	   /* consecutive NULL results (pipeline mode) */
	bool synced;	   /* pipeline mode: PQpipelineSync sent after it */
	int sets;	   /* its result sets (Prepare, execution): results after them
			    * belong to the trailer */
	int ends;	   /* result sets ended so far */
	struct stmt *prep; /* being prepared: kept on success */
	bool aux;	   /* BEGIN/ROLLBACK around a wrapped item: results ignored */
	/* the mirror's answer, for comparison */
	char verb[16];	    /* first word of the last command tag */
	uint64_t rows;	    /* of the last command: its tag's count, else its rows */
	uint64_t stmt_rows; /* rows since the last command tag */
	uint64_t hash;	    /* sum of the rows' DataRow hashes (mirror_compare = rows) */
	bool unhashed;	    /* a row too big to hash */
};

/* Stages of an item wrapped in BEGIN ... ROLLBACK. */
enum { STAGE_MAIN = 0, STAGE_BEGIN, STAGE_ROLLBACK };

struct replay_session {
	struct replay *r;
	/* capture thread only */
	bool c_known; /* PARAMS posted: the database is known */
	bool c_off;   /* a replication connection: never mirrored */
	struct sampler_session c_ss;
	int c_map;			   /* its [databases] entry, -1 if none */
	struct item *c_held, *c_held_tail; /* mirror_aborted = skip: until the txn ends */
	struct admission c_adm;		   /* the current transaction (unit) */
	struct msg open_msg, close_msg;
	/* both threads */
	_Atomic uint32_t queued; /* items submitted and not finished */
	_Atomic uint32_t units;	 /* transactions whose first item has not left the queue */
	/* for replay_sessions (SHOW MIRROR SESSIONS) */
	_Atomic uint64_t n_mirrored, n_errors, n_dropped, n_skipped;
	_Atomic int pub_state; /* enum conn_state, published by the replay thread */
	uint64_t id;	       /* the source session's flow id */
	/* replay thread only */
	struct params *params;
	struct item *head, *tail;	    /* waiting, in source order */
	struct item *cur;		    /* in flight: the one whose answer is read now */
	struct item *sent_head, *sent_tail; /* pipelined behind cur, in order */
	uint32_t n_sent;
	bool piping; /* cur was pipelined: more may follow it (replay_pipelinable()) */
	enum conn_state state;
	bool closed, active;
	struct mconn *c;		  /* the borrowed mirror connection, or NULL */
	struct pool *pool;		  /* its pool (set at the first borrow) */
	const struct params *pool_params; /* the params pool was chosen by */
	uint64_t wait_since;
	bool pinned;  /* state that cannot move lives on c: keep it to the end */
	bool waiting; /* in pool->wait list (CONN_WAIT) */
	struct replay_session *wait_next;
	char *sets; /* its session-level SET/RESET statements, "; "-separated */
	size_t sets_len;
	uint64_t sets_hash; /* of sets (0: none) */
	/* SETs of a transaction still open (sets_unit): the script before them, kept
	 * unless the transaction commits */
	bool sets_pending;
	uint64_t sets_unit;
	size_t sets_kept_len;
	uint64_t sets_kept_hash;
	uint64_t deadline; /* connect / reply timeout, backoff end, pool wait (NEVER = none) */
	uint32_t backoff_ms;
	struct run run;
	/* portals of the unit susp_unit that the source suspended at their row limit and
	 * the mirror ran to completion (portal_key): their resumptions are not sent, also
	 * after other statements of the unit (a driver's cursor fetched between writes).
	 * A portal ends with its transaction, so another unit forgets them. */
	uint64_t susp_keys[REPLAY_SUSP_MAX];
	uint8_t n_susp;
	uint64_t susp_unit;
	uint64_t last_sent, last_ts_start; /* mirror_replay_timing: the previous item */
	bool group_open;    /* in pipeline mode, Executes of one Sync sent, no Sync yet */
	uint64_t group_id;  /* their sync group */
	uint64_t last_unit; /* of the last item started */
	bool unit_open;	    /* that item did not end its unit */
	bool preconnect, ever_connected; /* connect before the first item (once) */
	uint64_t dead_unit;   /* a unit whose mirror transaction was lost: its rest fails */
	uint8_t dead_outcome; /* with this outcome (enum outcome) */
	struct replay_session *act_prev, *act_next, *all_prev, *all_next;
};

/* A [databases] line: its own exposure may change at run time. */
struct db_map {
	char *source_db, *mirror_dbname;
	_Atomic uint64_t exposure; /* bits of a double; < 0: the global one */
};

struct replay {
	struct replay_config cfg;
	char *mirror;
	char *mirror_options; /* the conninfo's own options ("" if none) */
	struct stats *st;
	struct capture *cap;
	bool rx_warned; /* said once that a connection's answers are timed at the read */
	int epfd, efd;
	int ev_ep;     /* an epoll set of the eventfd alone: asleep while answers can wait */
	bool lazy_ok;  /* the last pass left nothing that waits for an answer (lazy reads) */
	bool lazy_txn; /* ... and a session's transaction is open on the mirror */
	uint64_t last_harvest; /* the last epoll_wait on epfd (lazy_wait) */
	pthread_t thread;
	sem_t running; /* posted by the thread once its nice value is set */
	bool started;
	_Atomic bool stop;
	_Atomic(struct msg *) chan; /* newest first */
	_Atomic bool wake_pending;
	_Atomic bool sleeping;	   /* the replay thread is in (or entering) epoll_wait */
	_Atomic uint32_t items;	   /* submitted and not finished */
	pthread_mutex_t list_lock; /* the list of all sessions and their params, for
				    * replay_sessions (the replay thread changes them) */
	bool lock_init;
	_Atomic uint64_t item_bytes; /* their allocations */
	_Atomic uint64_t bytes_peak; /* the largest item_bytes */
	uint64_t *ignore;	     /* mirror_compare_ignore: fingerprints, sorted */
	size_t n_ignore;
	_Atomic uint64_t exposure; /* bits of the global mirror_exposure (a double) */
	struct db_map *map;	   /* [databases], copied */
	size_t n_map;
	/* capture thread */
	bool c_posted; /* messages posted since the last replay_wake */
	struct fingerprint_cache *fp;
	uint64_t seed;
	/* replay thread */
	struct order order; /* outstanding items (order.h) */
	char *password;	    /* the conninfo's password, masked in logged libpq messages */
	/* why the mirror cannot be reached, as last logged (replay_conn.c) */
	char fail_reason[200];
	bool failing;
	uint64_t fail_count, fail_logged_ns;
	struct buf row; /* a mirror row in DataRow layout, to hash it */
	uint32_t mismatches_logged;
	_Atomic uint32_t log_mismatches; /* reloadable */
	struct replay_session *active, *all;
	struct pool *pools;	      /* under list_lock (replay_pools reads them) */
	struct mconn *graveyard;      /* closed in this pass: freed after its events */
	uint32_t n_conns;	      /* mirror connections open, all pools */
	struct stats_pool pool_stats; /* published each pass */
	unsigned int last_util;
	bool rerun; /* a session was handed a connection: step again at once */
	/* per-statement figures (querystats.h): written by the replay thread as items
	 * finish, read by the console, /queries, /metrics and readiness under qs_lock */
	struct querystats *qs;
	pthread_mutex_t qs_lock;
	struct explain *_Atomic explain; /* --explain-regressions (replay_set_explain) */
};

_Static_assert((int)COMPARE_TAG == (int)STATS_MISMATCH_TAG &&
		   (int)COMPARE_ROWCOUNT == (int)STATS_MISMATCH_ROWCOUNT &&
		   (int)COMPARE_SQLSTATE == (int)STATS_MISMATCH_SQLSTATE &&
		   (int)COMPARE_ROWS == (int)STATS_MISMATCH_ROWS,
	       "compare.h kinds are stats' mismatch kinds");
_Static_assert(STATS_MISMATCH_MAX == QUERYSTATS_KINDS, "querystats keeps every mismatch kind");

enum outcome {
	OUT_SUCCESS,
	OUT_QUERY,
	OUT_TIMEOUT,
	OUT_CONNECTION,
	OUT_SKIP_STATE,
	OUT_SKIP_SHUTDOWN,
	OUT_SKIP_READ_ONLY,
	OUT_SKIP_ABORTED,
	OUT_POOL_WAIT, /* no pooled connection in time: dropped (pool_wait) */
};

static inline uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#define FNV_INIT 0xcbf29ce484222325ull

static inline uint64_t fnv(uint64_t h, const void *p, size_t n)
{
	const uint8_t *b = p;

	while (n--) {
		h ^= *b++;
		h *= 0x100000001b3ull;
	}
	return h;
}

/* ---- across the replay files ---- */

/* The exposure of a session's database now (any thread once PARAMS was posted). */
double replay_exposure_of(const struct replay *r, const struct replay_session *rs);

int replay_map_copy(struct replay *r, const struct replay_config *cfg);
void replay_map_free(struct replay *r);
void replay_activate(struct replay *r, struct replay_session *s);
void replay_item_finish(struct replay *r, struct replay_session *s, struct item *it, enum outcome o,
			uint64_t now);
void replay_queue_finish_all(struct replay *r, struct replay_session *s, enum outcome o,
			     uint64_t now);
struct item *replay_queue_pop(struct replay_session *s);
void replay_conn_close(struct replay *r, struct replay_session *s);
void replay_conn_event(struct replay *r, struct replay_session *s, uint32_t events, uint64_t now);
void replay_conn_failed(struct replay *r, struct replay_session *s, uint64_t now);
bool replay_conn_flush(struct replay_session *s);
void replay_conn_lost(struct replay *r, struct replay_session *s, enum outcome o, uint64_t now);
void replay_conn_open(struct replay *r, struct replay_session *s, uint64_t now);
void replay_conn_rewatch(struct replay *r, struct replay_session *s);
void replay_inflight_finish(struct replay *r, struct replay_session *s, enum outcome o,
			    uint64_t now);
bool replay_is_copy(const struct item *it);
void replay_item_start(struct replay *r, struct replay_session *s, uint64_t now);
void replay_pipe_append(struct replay *r, struct replay_session *s, uint64_t now);
bool replay_susp_resumes(const struct replay_session *s, const struct item *it);
void replay_susp_sent(struct replay_session *s, const struct item *it);
bool replay_pipelinable(const struct replay *r, const struct replay_session *s,
			const struct item *it);
uint64_t replay_reply_deadline(const struct replay *r, uint64_t now);
void replay_run_reset(struct replay_session *s);
void replay_uncork(struct replay_session *s);

/* ---- pools (replay_pool.c) ---- */

/* A connection for the session's head item: borrowed (CONN_IDLE, or CONN_SETUP while
 * its settings are applied), being made (CONN_CONNECTING), or none free (CONN_WAIT, at
 * most pool_wait_ms). */
void replay_pool_acquire(struct replay *r, struct replay_session *s, uint64_t now);
/* The session gives its idle connection back (not inside a transaction, not pinned);
 * the pool's first waiter gets it at once. */
void replay_pool_release(struct replay *r, struct replay_session *s, uint64_t now);
/* May the session give its connection back now? */
bool replay_pool_can_release(const struct replay_session *s);
/* Does another session wait for a connection of the session's pool? */
bool replay_pool_contended(const struct replay_session *s);
/* The session stops waiting (it has nothing left to run, or gave up). */
void replay_pool_unwait(struct replay *r, struct replay_session *s);
/* A session's item completed on its connection: SET recorded, PIN pins, DISCARD ALL
 * forgets both. */
void replay_pool_note(struct replay_session *s, const struct item *it);
/* The transaction whose SETs are pending ended: the script keeps them if the source
 * committed it, the connection has them if the mirror did. */
void replay_pool_settle(struct replay_session *s, bool source_kept, bool mirror_kept);
/* Should a session with nothing queued warm its pool (its first connection)? */
bool replay_pool_warm(const struct replay *r, const struct replay_session *s);
/* An event on a connection no session borrows. */
void replay_pool_idle_event(struct replay *r, struct mconn *c);
/* Frees the connections closed in the last pass (after its events). */
void replay_pool_bury(struct replay *r);
/* Publishes the gauges (each pass). */
void replay_pool_publish(struct replay *r);
/* Frees every pool and idle connection (stop). */
void replay_pool_free_all(struct replay *r);
/* The connection is gone: the pool's counts drop it (replay_conn_close). */
void replay_pool_forget(struct replay *r, struct mconn *c);
/* The session's new connection is made. */
void replay_pool_connected(struct replay *r, struct replay_session *s, uint64_t now);
/* A session goes: it stops waiting and lets go of its pool. */
void replay_pool_leave(struct replay *r, struct replay_session *s);
/* Closes a connection (borrowed or idle, unlinked from its pool's list): libpq, epoll,
 * the capture exclusion, its statements; then replay_pool_forget. */
void replay_mconn_close(struct replay *r, struct mconn *c);

#endif /* PGSHADOW_REPLAY_INT_H */
