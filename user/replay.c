// SPDX-License-Identifier: BSD-2-Clause
/*
 * replay.c — the mirror: replays completed source requests to the mirror cluster through
 * non-blocking libpq on its own thread. See include/replay.h.
 *
 * Two threads meet here.
 *
 * The capture thread (replay_session_open / _identified / replay_submit /
 * replay_session_close) never blocks and makes no system call except one eventfd write
 * to wake the replay thread, and only when that thread may be asleep. It copies each
 * request into one allocation (struct item) and posts it on the channel.
 *
 * The channel is an intrusive lock-free list of messages (OPEN, PARAMS, ITEM, CLOSE):
 * the capture thread pushes with a CAS, the replay thread takes the whole list with one
 * exchange and reverses it, so messages arrive in the order they were posted. It is a
 * list rather than a ring so that OPEN and CLOSE, which live inside the session handle,
 * can never be refused; items are bounded instead by counters the capture thread checks
 * before posting: `queue` per session, CHANNEL_ITEMS_MAX items and ITEM_BYTES_MAX bytes
 * in all (more are dropped and counted).
 *
 * Ownership of a struct replay_session: the capture thread writes its c_* fields and
 * nothing else; after replay_session_close has posted CLOSE it never touches it again.
 * The replay thread owns every other field and frees the session once it has processed
 * CLOSE and finished (or given up) every item of it. Two fields are shared, both atomics:
 * queued (items submitted and not finished; the capture thread adds, the replay thread
 * subtracts) and capped (set by the replay thread when the session could not get a
 * mirror connection, so the capture thread skips its items without copying them).
 *
 * The replay thread runs one epoll loop over the eventfd and every mirror socket. Each
 * iteration it takes the channel, steps every active session (one with queued items, a
 * connection being made, an item in flight, or a pending close) and sleeps until the
 * nearest deadline (connect timeout, item timeout, backoff end, causal-order wait end).
 *
 * Per session, in source order. An Execute runs in libpq pipeline mode (Prepare if
 * needed, then the execution, then PQpipelineSync; pipeline mode is left again once the
 * sync result is read), a Query outside it. Results are read in single-row mode where
 * libpq allows it, so a huge result never sits in memory.
 *
 * Backlog pipelining. One request at a time bounds a session's replay rate by the
 * mirror's round trip. When a session has a backlog (another item queued behind the
 * head), plain items (pipelinable()) go into the pipeline one after another, each with
 * its own Sync, up to mirror_pipeline in flight: the mirror's backend still runs them
 * one by one in source order, each in its own implicit transaction as on the source, and
 * an error ends only its own Sync segment. Plain: an Execute of the unnamed statement or
 * of one already prepared on this connection, not part of a Sync group, not suspended,
 * not wrapped, not COPY; or a simple Query holding one read statement (fingerprint.h),
 * which libpq can pipeline only as an unnamed extended-protocol statement without
 * parameters (text results, the same answer; counted in mirror_replay_converted_total).
 * The first non-plain item waits until the pipeline is empty. A pipelined item's mirror
 * latency is measured from when the mirror could start it: the later of its sending and
 * its predecessor's answer.
 *
 * Causal order: every item not yet finished is in a min-heap on its source completion
 * time (ts_end). The head item B of a session may start when the smallest outstanding
 * ts_end is not before B's source start (ts_start); otherwise it waits, at most
 * order_wait_ms, and the wait is counted once. Waits only point at items with an earlier
 * source completion, so they cannot form a cycle.
 *
 * Sync groups. Executes the source sent before one Sync (session_request.group_more)
 * are one implicit transaction there, and here: they go into one pipeline, each
 * followed by a Flush (the server answers it at once) instead of a Sync; the group ends
 * with PQpipelineSync after its last Execute, after a failed one, or when the next item
 * is not of the group or does not come within GROUP_WAIT_MS. An Execute that failed on
 * the source is followed by a forced error before its Sync, so its implicit transaction
 * (the whole group) rolls back on the mirror too.
 *
 * Known limitations (documented, deliberate):
 * - libpq cannot express an Execute row limit: a suspended portal runs to completion on
 *   the mirror, and the Executes that resume it on the source (same portal, statement text
 *   and parameters, right after a suspended one) are counted as mirrored without running.
 * - A named statement re-parsed with another text is prepared on the mirror under a new
 *   name ("pgshadow#<n>"); one whose name is reused after a DEALLOCATE or DISCARD in a
 *   simple query is prepared under a new name too. At most STMTS_MAX statements are kept
 *   per mirror connection; beyond that Executes use the unnamed statement.
 * - A COPY through the extended protocol runs outside pipeline mode as an unnamed
 *   statement.
 * - Host names in the mirror conninfo are resolved by libpq synchronously on this thread
 *   (use an address to avoid it).
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <pthread.h>
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

#include "buf.h"
#include "compare.h"
#include "fingerprint.h"
#include "order.h"
#include "ownconn.h"
#include "replay.h"
#include "sampler.h"

#define CHANNEL_ITEMS_MAX  (1u << 20) /* items submitted and not finished, all sessions */
#define BACKOFF_MIN_MS	   100	      /* first reconnect delay */
#define CONNECT_TIMEOUT_MS 10000      /* libpq ignores connect_timeout in PQconnectPoll */
#define REPLY_GRACE_MS	   5000	      /* past statement_timeout: the mirror went silent */
#define STMTS_MAX	   1024	      /* prepared statements kept per mirror connection */
#define STMT_BUCKETS	   64
#define COPY_CHUNK	   65536 /* bytes per PQputCopyData */
#define OPTIONS_MAX	   65536 /* the mirror connection's options string */
#define EVENTS_MAX	   64
#define IDLE_WAKE_MS	   1000
#define NEVER		   UINT64_MAX
#define MS		   1000000ull
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
	bool as_rollback;    /* send ROLLBACK instead of the text */
	bool txn_start;	     /* first of a transaction (mirror_replay_timing) */
	bool pipe_ok;	     /* an Execute, or a Query of one read statement */
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
};

/* Control messages that travel in a session's queue, in order with its requests. */
enum {
	CTL_NONE = 0,
	CTL_ABORT, /* roll back the mirror's transaction of unit (it was cut by a fault) */
	CTL_SYNC,  /* the source answered the Sync of group sync_group: commit it here */
};

/* A source transaction's admission (capture thread). */
enum {
	UNIT_OK = 0, /* replayed */
	UNIT_DROP,   /* dropped whole: nothing of it was posted */
	UNIT_CUT,    /* a fault cut it: CTL_ABORT posted, the rest is dropped */
};

/* A statement prepared on a mirror connection: source name + text -> mirror name. */
struct stmt {
	struct stmt *next;
	uint64_t text_hash;
	const char *mname;
	char name[];
};

enum conn_state {
	CONN_NONE = 0,	 /* no connection: none needed yet, or lost (made again on demand) */
	CONN_CONNECTING, /* PQconnectPoll in progress */
	CONN_SETUP,	 /* SET ROLE in flight */
	CONN_IDLE,	 /* ready for the next item */
	CONN_BUSY,	 /* an item in flight */
	CONN_BACKOFF,	 /* connecting failed: items are connection errors until deadline */
	CONN_CAPPED,	 /* no connection slot: every item is skipped */
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
	uint64_t c_unit;		   /* the current transaction (unit), from 1 */
	uint8_t c_unit_state;		   /* UNIT_* */
	uint8_t c_unit_drop;		   /* UNIT_DROP: enum stats_drop_reason */
	bool c_unit_open;		   /* its end not seen yet */
	uint32_t c_unit_posted;		   /* its items posted to the replay thread */
	bool c_group_pending;		   /* an Execute posted whose Sync is not known */
	uint64_t c_group;		   /* its sync group */
	struct msg open_msg, close_msg;
	/* both threads */
	_Atomic uint32_t queued; /* items submitted and not finished */
	_Atomic bool capped;	 /* no mirror connection slot (set once, replay thread) */
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
	bool piping; /* cur was pipelined: more may follow it (pipelinable()) */
	enum conn_state state;
	bool closed, active, has_slot;
	PGconn *conn;
	int fd;
	uint32_t events;
	bool watched;	   /* fd is in the epoll set */
	bool corked;	   /* TCP_CORK set for this step's sends (cork()) */
	bool want_write;   /* libpq has unsent output */
	uint64_t deadline; /* connect / reply timeout, backoff end (NEVER = none) */
	uint32_t backoff_ms;
	struct ownconn excl; /* this session's mirror connection, out of capture */
	struct stmt *stmts[STMT_BUCKETS];
	uint32_t n_stmts, mangle;
	bool mangle_all; /* the mirror may hold names we forgot: always use new ones */
	struct run run;
	bool susp; /* the last Execute of portal susp_key was suspended on the source */
	uint64_t susp_key;
	uint64_t last_sent, last_ts_start; /* mirror_replay_timing: the previous item */
	bool group_open;    /* in pipeline mode, Executes of one Sync sent, no Sync yet */
	uint64_t group_id;  /* their sync group */
	uint64_t last_unit; /* of the last item started */
	bool unit_open;	    /* that item did not end its unit */
	uint64_t dead_unit; /* a unit whose mirror transaction was lost: its rest fails */
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
	int epfd, efd;
	pthread_t thread;
	bool started;
	_Atomic bool stop;
	_Atomic(struct msg *) chan; /* newest first */
	_Atomic bool wake_pending;
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
	struct buf row;	    /* a mirror row in DataRow layout, to hash it */
	uint32_t mismatches_logged;
	_Atomic uint32_t log_mismatches; /* reloadable */
	struct replay_session *active, *all;
	uint32_t n_slots; /* sessions holding a mirror connection slot */
	unsigned int last_util;
};

_Static_assert((int)COMPARE_TAG == (int)STATS_MISMATCH_TAG &&
		   (int)COMPARE_ROWCOUNT == (int)STATS_MISMATCH_ROWCOUNT &&
		   (int)COMPARE_SQLSTATE == (int)STATS_MISMATCH_SQLSTATE &&
		   (int)COMPARE_ROWS == (int)STATS_MISMATCH_ROWS,
	       "compare.h kinds are stats' mismatch kinds");

enum outcome {
	OUT_SUCCESS,
	OUT_QUERY,
	OUT_TIMEOUT,
	OUT_CONNECTION,
	OUT_SKIP_CAP,
	OUT_SKIP_STATE,
	OUT_SKIP_SHUTDOWN,
	OUT_SKIP_READ_ONLY,
	OUT_SKIP_ABORTED,
};

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

#define FNV_INIT 0xcbf29ce484222325ull

static uint64_t fnv(uint64_t h, const void *p, size_t n)
{
	const uint8_t *b = p;

	while (n--) {
		h ^= *b++;
		h *= 0x100000001b3ull;
	}
	return h;
}

/* ---- channel (capture thread -> replay thread) ---- */

/*
 * Posts a message (capture thread). Lock-free and without a system call: replay_wake
 * wakes the replay thread once per batch of capture records, not once per message. It
 * writes the eventfd only when the replay thread has taken everything posted before (that
 * thread clears wake_pending before it takes the list, so a message pushed after that
 * point either sees the flag cleared and wakes it, or is taken by the take that follows
 * the clearing).
 */
static void chan_post(struct replay *r, struct msg *m)
{
	struct msg *head = atomic_load(&r->chan);

	do {
		m->next = head;
	} while (!atomic_compare_exchange_weak(&r->chan, &head, m));
	r->c_posted = true;
}

void replay_wake(struct replay *r)
{
	uint64_t one = 1;

	if (!r || !r->c_posted)
		return;
	r->c_posted = false;
	if (!atomic_exchange(&r->wake_pending, true) && write(r->efd, &one, sizeof(one)) < 0) {
		/* EAGAIN: the counter is full, so the thread is awake anyway */
	}
}

/* Takes every posted message, oldest first (replay thread). */
static struct msg *chan_take(struct replay *r)
{
	struct msg *m, *next, *fifo = NULL;

	atomic_store(&r->wake_pending, false);
	m = atomic_exchange(&r->chan, NULL);
	for (; m; m = next) {
		next = m->next;
		m->next = fifo;
		fifo = m;
	}
	return fifo;
}

/* ---- ordering (order.h): every outstanding request is tracked ---- */

static void items_track(struct replay *r, struct item *it)
{
	if (!it->ctl)
		order_track(&r->order, &it->ord); /* room: items are bounded by the same cap */
}

static void items_untrack(struct replay *r, struct item *it)
{
	if (!it->ctl)
		order_untrack(&r->order, &it->ord);
}

/* ---- session lists (replay thread) ---- */

static void activate(struct replay *r, struct replay_session *s)
{
	if (s->active)
		return;
	s->active = true;
	s->act_prev = NULL;
	s->act_next = r->active;
	if (r->active)
		r->active->act_prev = s;
	r->active = s;
}

static void deactivate(struct replay *r, struct replay_session *s)
{
	if (!s->active)
		return;
	if (s->act_prev)
		s->act_prev->act_next = s->act_next;
	else
		r->active = s->act_next;
	if (s->act_next)
		s->act_next->act_prev = s->act_prev;
	s->active = false;
	s->act_prev = s->act_next = NULL;
}

static struct item *queue_pop(struct replay_session *s)
{
	struct item *it = s->head;

	if (it) {
		s->head = it->next;
		if (!s->head)
			s->tail = NULL;
		it->next = NULL;
	}
	return it;
}

/*
 * Gives an item its one outcome, then frees it: out of the heap, out of the session's
 * and the global counts. The caller has already unlinked it (queue_pop or s->cur).
 */
static void item_finish(struct replay *r, struct replay_session *s, struct item *it, enum outcome o,
			uint64_t now)
{
	if (it->ctl)
		goto release;
	if (o == OUT_CONNECTION && !it->unit_last)
		s->dead_unit = it->unit; /* never run the rest of it on another connection */
	if (o == OUT_SUCCESS)
		atomic_fetch_add_explicit(&s->n_mirrored, 1, memory_order_relaxed);
	else if (o == OUT_QUERY || o == OUT_TIMEOUT || o == OUT_CONNECTION)
		atomic_fetch_add_explicit(&s->n_errors, 1, memory_order_relaxed);
	else
		atomic_fetch_add_explicit(&s->n_skipped, 1, memory_order_relaxed);
	switch (o) {
	case OUT_SUCCESS:
		stats_mirror_success(r->st, it->db, (it->done_ns ? it->done_ns : now) - it->sent_ns,
				     it->ord.ts_end - it->ord.ts_start,
				     now > it->ord.ts_end ? now - it->ord.ts_end : 0, now);
		break;
	case OUT_QUERY:
		stats_mirror_error(r->st, it->db, STATS_ERR_QUERY, now);
		break;
	case OUT_TIMEOUT:
		stats_mirror_error(r->st, it->db, STATS_ERR_TIMEOUT, now);
		break;
	case OUT_CONNECTION:
		stats_mirror_error(r->st, it->db, STATS_ERR_CONNECTION, now);
		break;
	case OUT_SKIP_CAP:
		stats_mirror_skipped(r->st, it->db, STATS_SKIP_CONNECTION_CAP);
		break;
	case OUT_SKIP_STATE:
		stats_mirror_skipped(r->st, it->db, STATS_SKIP_SESSION_STATE);
		break;
	case OUT_SKIP_SHUTDOWN:
		stats_mirror_skipped(r->st, it->db, STATS_SKIP_SHUTDOWN);
		break;
	case OUT_SKIP_READ_ONLY:
		stats_mirror_skipped(r->st, it->db, STATS_SKIP_READ_ONLY);
		break;
	case OUT_SKIP_ABORTED:
		stats_mirror_skipped(r->st, it->db, STATS_SKIP_ABORTED);
		break;
	}
release:
	items_untrack(r, it);
	atomic_fetch_sub(&r->item_bytes, it->bytes);
	atomic_fetch_sub(&r->items, 1);
	atomic_fetch_sub(&s->queued, 1);
	free(it);
}

/* Finishes every queued (not started) item of a session with one outcome. */
static void queue_finish_all(struct replay *r, struct replay_session *s, enum outcome o,
			     uint64_t now)
{
	struct item *it;

	while ((it = queue_pop(s)))
		item_finish(r, s, it, o, now);
}

/* ---- prepared statements of a mirror connection ---- */

static struct stmt **stmt_bucket(struct replay_session *s, const char *name)
{
	return &s->stmts[fnv(FNV_INIT, name, strlen(name)) % STMT_BUCKETS];
}

static struct stmt *stmt_find(struct replay_session *s, const char *name, uint64_t hash,
			      bool *name_used)
{
	struct stmt *st;

	*name_used = false;
	for (st = *stmt_bucket(s, name); st; st = st->next) {
		if (strcmp(st->name, name))
			continue;
		if (st->text_hash == hash)
			return st;
		*name_used = true;
	}
	return NULL;
}

/* A new entry (not linked yet): the mirror name is the source's unless that could clash
 * with something already prepared on this connection. NULL on ENOMEM or at STMTS_MAX. */
static struct stmt *stmt_new(struct replay_session *s, const char *name, uint64_t hash,
			     bool name_used)
{
	size_t nlen = strlen(name);
	char mname[32];
	struct stmt *st;

	if (s->n_stmts >= STMTS_MAX)
		return NULL;
	if (name_used || s->mangle_all)
		snprintf(mname, sizeof(mname), "pgshadow#%u", ++s->mangle);
	else
		mname[0] = 0;
	st = malloc(sizeof(*st) + nlen + 1 + strlen(mname) + 1);
	if (!st)
		return NULL;
	memcpy(st->name, name, nlen + 1);
	st->mname = mname[0] ? strcpy(st->name + nlen + 1, mname) : st->name;
	st->text_hash = hash;
	st->next = NULL;
	return st;
}

static void stmt_link(struct replay_session *s, struct stmt *st)
{
	struct stmt **b = stmt_bucket(s, st->name);

	st->next = *b;
	*b = st;
	s->n_stmts++;
}

static void stmt_unlink(struct replay_session *s, struct stmt *st)
{
	struct stmt **p;

	for (p = stmt_bucket(s, st->name); *p; p = &(*p)->next) {
		if (*p == st) {
			*p = st->next;
			s->n_stmts--;
			free(st);
			return;
		}
	}
}

static void stmts_clear(struct replay_session *s)
{
	struct stmt *st, *next;
	int i;

	for (i = 0; i < STMT_BUCKETS; i++) {
		for (st = s->stmts[i]; st; st = next) {
			next = st->next;
			free(st);
		}
		s->stmts[i] = NULL;
	}
	s->n_stmts = 0;
}

static void run_reset(struct replay_session *s)
{
	free(s->run.prep);
	memset(&s->run, 0, sizeof(s->run));
}

/* ---- mirror connections: epoll ---- */

/*
 * Makes the epoll set watch the connection's current socket for events (EPOLLIN, plus
 * EPOLLOUT while libpq has output it could not send). libpq may have closed the
 * registered socket and opened another under the same number (a closed fd leaves the
 * epoll set by itself), so while connecting it always re-registers, falling back from
 * MOD to ADD.
 */
static void conn_watch(struct replay *r, struct replay_session *s, uint32_t events)
{
	struct epoll_event ev = {.events = events, .data.ptr = s};
	int fd = PQsocket(s->conn);

	if (fd < 0)
		return;
	if (s->watched && s->fd == fd && s->events == events && s->state != CONN_CONNECTING)
		return;
	if (s->watched && s->fd != fd)
		epoll_ctl(r->epfd, EPOLL_CTL_DEL, s->fd, NULL); /* may be closed already */
	if (epoll_ctl(r->epfd, s->watched && s->fd == fd ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev) <
	    0) {
		if (errno == ENOENT)
			epoll_ctl(r->epfd, EPOLL_CTL_ADD, fd, &ev);
		else if (errno == EEXIST)
			epoll_ctl(r->epfd, EPOLL_CTL_MOD, fd, &ev);
	}
	s->watched = true;
	s->fd = fd;
	s->events = events;
}

static void conn_rewatch(struct replay *r, struct replay_session *s)
{
	if (s->conn && s->state != CONN_CONNECTING)
		conn_watch(r, s, EPOLLIN | (s->want_write ? EPOLLOUT : 0));
}

/* Closes the mirror connection (if any) and forgets what lived on it. */
static void conn_close(struct replay *r, struct replay_session *s)
{
	if (s->conn) {
		if (s->watched)
			epoll_ctl(r->epfd, EPOLL_CTL_DEL, s->fd, NULL);
		PQfinish(s->conn);
		s->conn = NULL;
	}
	s->watched = false;
	s->want_write = false;
	ownconn_release(r->cap, &s->excl);
	stmts_clear(s);
	s->mangle_all = false;
	s->susp = false;
	s->group_open = false;
	run_reset(s);
}

/* Everything in flight ends: cur gets o, the items pipelined behind it never got an
 * answer (connection errors, or skipped at shutdown). */
static void inflight_finish(struct replay *r, struct replay_session *s, enum outcome o,
			    uint64_t now)
{
	struct item *it;

	if (s->cur) {
		item_finish(r, s, s->cur, o, now);
		s->cur = NULL;
	}
	while ((it = s->sent_head)) {
		s->sent_head = it->next;
		item_finish(r, s, it, o == OUT_SKIP_SHUTDOWN ? o : OUT_CONNECTION, now);
	}
	s->sent_tail = NULL;
	s->n_sent = 0;
	s->piping = false;
}

/* Connecting failed: the item in flight (if any) is a connection error; the items that
 * come due before the backoff ends are too. */
/* The connection (and with it the mirror's open transaction, if any) is gone: the rest of
 * the unit it was running must not run elsewhere. */
static void unit_lost(struct replay *r, struct replay_session *s)
{
	if (s->unit_open || s->group_open) {
		s->dead_unit = s->last_unit;
		stats_mirror_unit_aborted(r->st, STATS_ABORT_CONNECTION);
	}
	s->unit_open = false;
}

static void conn_failed(struct replay *r, struct replay_session *s, uint64_t now)
{
	unit_lost(r, s);
	inflight_finish(r, s, OUT_CONNECTION, now);
	conn_close(r, s);
	s->state = CONN_BACKOFF;
	s->deadline = now + s->backoff_ms * MS;
	s->backoff_ms =
	    s->backoff_ms * 2 > r->cfg.backoff_max_ms ? r->cfg.backoff_max_ms : s->backoff_ms * 2;
	activate(r, s);
}

/* An established connection was lost or had to be reset: the item in flight gets o; the
 * next item connects again (at once: only failing to connect backs off). */
static void conn_lost(struct replay *r, struct replay_session *s, enum outcome o, uint64_t now)
{
	unit_lost(r, s);
	inflight_finish(r, s, o, now);
	conn_close(r, s);
	s->state = CONN_NONE;
	s->deadline = NEVER;
	activate(r, s);
}

static void notice_ignore(void *arg, const char *message)
{
	(void)arg;
	(void)message;
}

/*
 * Starts the session's mirror connection: takes a connection slot (or caps the session
 * for good when there is none), then PQconnectStartParams with the mirror conninfo
 * expanded first and the session's own settings after it (later keywords win; a second
 * dbname is not expanded again).
 */
static void conn_open(struct replay *r, struct replay_session *s, uint64_t now)
{
	const char *kw[6], *val[6];
	const struct params *p = s->params;

	if (!p) { /* items are posted only after PARAMS: cannot happen */
		queue_finish_all(r, s, OUT_SKIP_STATE, now);
		return;
	}
	if (!s->has_slot) {
		if (r->n_slots >= r->cfg.max_connections) {
			s->state = CONN_CAPPED;
			atomic_store(&s->capped, true);
			return;
		}
		s->has_slot = true;
		r->n_slots++;
	}
	kw[0] = "dbname";
	val[0] = r->mirror;
	kw[1] = "dbname";
	val[1] = p->database;
	kw[2] = "options";
	val[2] = p->options;
	kw[3] = "client_encoding";
	val[3] = p->client_encoding;
	kw[4] = "application_name";
	val[4] = p->application_name;
	kw[5] = val[5] = NULL;
	s->conn = PQconnectStartParams(kw, val, 1);
	if (!s->conn || PQstatus(s->conn) == CONNECTION_BAD) {
		conn_failed(r, s, now);
		return;
	}
	PQsetNoticeProcessor(s->conn, notice_ignore, NULL);
	ownconn_exclude(r->cap, s->conn, r->cfg.capture_port, &s->excl);
	s->state = CONN_CONNECTING;
	s->deadline = now + CONNECT_TIMEOUT_MS * MS;
	conn_watch(r, s, EPOLLOUT);
}

static uint64_t reply_deadline(const struct replay *r, uint64_t now)
{
	return r->cfg.timeout_ms ? now + (r->cfg.timeout_ms + (uint64_t)REPLY_GRACE_MS) * MS
				 : NEVER;
}

static bool conn_flush(struct replay_session *s)
{
	int rc = PQflush(s->conn);

	s->want_write = rc == 1;
	return rc >= 0;
}

/* The connection is up: non-blocking from now on, then SET ROLE if asked. */
static void conn_ready(struct replay *r, struct replay_session *s, uint64_t now)
{
	const char *user = s->params->user;
	char *ident, *sql;

	s->backoff_ms = BACKOFF_MIN_MS;
	if (PQsetnonblocking(s->conn, 1)) {
		conn_lost(r, s, OUT_CONNECTION, now);
		return;
	}
	s->state = CONN_IDLE;
	s->deadline = NEVER;
	if (!r->cfg.set_role || !*user || !strcmp(user, SESSION_UNKNOWN)) {
		conn_rewatch(r, s);
		return;
	}
	ident = PQescapeIdentifier(s->conn, user, strlen(user));
	sql = ident ? malloc(strlen(ident) + 10) : NULL;
	if (sql) {
		sprintf(sql, "SET ROLE %s", ident);
		run_reset(s);
		if (PQsendQuery(s->conn, sql)) {
			s->state = CONN_SETUP;
			s->deadline = reply_deadline(r, now);
		}
	}
	free(sql);
	PQfreemem(ident);
	if (PQstatus(s->conn) == CONNECTION_BAD || !conn_flush(s)) {
		conn_lost(r, s, OUT_CONNECTION, now);
		return;
	}
	conn_rewatch(r, s);
}

/* One PQconnectPoll step, when the socket is ready for what the last one asked. */
static void conn_poll(struct replay *r, struct replay_session *s, uint64_t now)
{
	PostgresPollingStatusType st = PQconnectPoll(s->conn);

	switch (st) {
	case PGRES_POLLING_READING:
		ownconn_exclude(r->cap, s->conn, r->cfg.capture_port, &s->excl);
		conn_watch(r, s, EPOLLIN);
		break;
	case PGRES_POLLING_WRITING:
		ownconn_exclude(r->cap, s->conn, r->cfg.capture_port, &s->excl);
		conn_watch(r, s, EPOLLOUT);
		break;
	case PGRES_POLLING_OK:
		ownconn_exclude(r->cap, s->conn, r->cfg.capture_port, &s->excl);
		conn_ready(r, s, now);
		break;
	default:
		conn_failed(r, s, now);
		break;
	}
}

/* ---- running an item ---- */

/* COPY runs outside pipeline mode (libpq cannot queue commands behind it). */
static bool is_copy(const struct item *it)
{
	const char *p = it->text;

	if (it->copy_len)
		return true;
	while (isspace((unsigned char)*p) || *p == '(')
		p++;
	return !strncasecmp(p, "copy", 4) && !isalnum((unsigned char)p[4]) && p[4] != '_';
}

/* A simple query with a statement (at its start or after a ';') that may drop
 * protocol-level prepared statements on the mirror: DEALLOCATE or DISCARD. */
static bool drops_statements(const char *text)
{
	const char *p = text;

	for (;;) {
		while (isspace((unsigned char)*p))
			p++;
		if ((!strncasecmp(p, "deallocate", 10) && !isalnum((unsigned char)p[10])) ||
		    (!strncasecmp(p, "discard", 7) && !isalnum((unsigned char)p[7])))
			return true;
		p = strchr(p, ';');
		if (!p)
			return false;
		p++;
	}
}

/* Sends an Execute: [Prepare] + execution + Sync in pipeline mode, or an unnamed
 * execution outside it for COPY. False when libpq refused. */
static bool send_execute(struct replay_session *s, struct item *it)
{
	PGconn *c = s->conn;
	struct stmt *st = NULL;
	bool name_used;

	if (is_copy(it)) {
		if (!PQsendQueryParams(c, it->text, it->n_params, it->types, it->values,
				       it->lengths, it->formats, it->result_format))
			return false;
		PQsetSingleRowMode(c);
		return true;
	}
	if (!s->group_open && !PQenterPipelineMode(c))
		return false;
	s->run.pipeline = true;
	s->run.sets = 1;
	if (it->stmt_name[0]) {
		st = stmt_find(s, it->stmt_name, it->text_hash, &name_used);
		if (!st) {
			s->run.prep = stmt_new(s, it->stmt_name, it->text_hash, name_used);
			if (s->run.prep &&
			    !PQsendPrepare(c, s->run.prep->mname, it->text, it->n_types, it->types))
				return false;
			if (s->run.prep)
				s->run.sets = 2;
		}
	}
	if (st || s->run.prep) {
		if (!PQsendQueryPrepared(c, st ? st->mname : s->run.prep->mname, it->n_params,
					 it->values, it->lengths, it->formats, it->result_format))
			return false;
	} else if (!PQsendQueryParams(c, it->text, it->n_params, it->types, it->values, it->lengths,
				      it->formats, it->result_format)) {
		return false;
	}
	if (it->wrap && !PQsendQueryParams(c, FORCE_ROLLBACK_SQL, 0, NULL, NULL, NULL, NULL, 0))
		return false;
	/* more Executes of this Sync follow: leave the implicit transaction open */
	s->run.synced = it->group_end || it->src.error || it->wrap;
	if (s->run.synced ? !PQpipelineSync(c) : !PQsendFlushRequest(c))
		return false; /* without Sync, only a Flush makes the server answer now */
	if (!s->run.prep)
		PQsetSingleRowMode(c);
	return true;
}

/* Sends BEGIN or ROLLBACK around a wrapped item; its result is ignored. */
static bool send_aux(struct replay_session *s, const char *sql)
{
	run_reset(s);
	s->run.aux = true;
	return PQsendQuery(s->conn, sql);
}

/* Sends the item itself (after its BEGIN, when wrapped). */
static bool send_main(struct replay *r, struct replay_session *s, struct item *it, uint64_t now)
{
	run_reset(s);
	it->stage = STAGE_MAIN;
	it->sent_ns = now;
	if (it->as_rollback) { /* the source rolled this COMMIT back */
		s->susp = false;
		return PQsendQuery(s->conn, "ROLLBACK");
	}
	if (it->kind == SESSION_REQ_QUERY) {
		s->susp = false;
		if (drops_statements(it->text)) {
			stmts_clear(s);
			s->mangle_all = true;
		}
		if (!PQsendQuery(s->conn, it->text))
			return false;
		PQsetSingleRowMode(s->conn);
		return true;
	}
	(void)r;
	s->susp = it->suspended;
	s->susp_key = it->portal_key;
	return send_execute(s, it);
}

/* After sending: the connection is busy until the answer, or lost if libpq refused. */
static void sent(struct replay *r, struct replay_session *s, bool ok, uint64_t now)
{
	if (!ok || !conn_flush(s)) {
		conn_lost(r, s, PQstatus(s->conn) == CONNECTION_BAD ? OUT_CONNECTION : OUT_QUERY,
			  now);
		return;
	}
	s->state = CONN_BUSY;
	s->deadline = reply_deadline(r, now);
	conn_rewatch(r, s);
}

/* May it be sent behind another item in flight (see "Backlog pipelining" above)? */
static bool pipelinable(const struct replay *r, const struct replay_session *s,
			const struct item *it)
{
	bool used;

	if (!it || r->cfg.pipeline < 2 || r->cfg.replay_timing || !it->pipe_ok || it->wrap ||
	    it->as_rollback || s->group_open || s->susp)
		return false;
	if (it->kind == SESSION_REQ_QUERY)
		return true;
	if (it->kind != SESSION_REQ_EXECUTE || !it->group_end || it->suspended || is_copy(it))
		return false;
	return !it->stmt_name[0] ||
	       stmt_find((struct replay_session *)s, it->stmt_name, it->text_hash, &used);
}

/* Sends a pipelinable item in pipeline mode, with its own Sync. */
static bool send_piped(struct replay_session *s, const struct item *it)
{
	PGconn *c = s->conn;
	struct stmt *st = NULL;
	bool used;

	if (PQpipelineStatus(c) == PQ_PIPELINE_OFF && !PQenterPipelineMode(c))
		return false;
	s->susp = false;
	if (it->kind == SESSION_REQ_QUERY) {
		if (!PQsendQueryParams(c, it->text, 0, NULL, NULL, NULL, NULL, 0))
			return false;
	} else if (it->stmt_name[0]) {
		st = stmt_find(s, it->stmt_name, it->text_hash, &used);
		if (!st || !PQsendQueryPrepared(c, st->mname, it->n_params, it->values, it->lengths,
						it->formats, it->result_format))
			return false;
	} else if (!PQsendQueryParams(c, it->text, it->n_params, it->types, it->values, it->lengths,
				      it->formats, it->result_format)) {
		return false;
	}
	return PQpipelineSync(c);
}

/* Results of the item at the head of the pipeline: one result set, then the sync. */
static void run_piped(struct replay_session *s)
{
	run_reset(s);
	s->run.pipeline = true;
	s->run.synced = true;
	s->run.sets = 1;
}

/*
 * Corking. libpq 15's PQpipelineSync flushes, so every pipelined request is a send() of
 * its own, and on loopback each send also runs the mirror's receive path and wakes its
 * backend. When a pipelined request is sent and the next one queued may follow it in
 * the same step (pipelinable, room in the pipeline), the socket is corked (TCP_CORK):
 * the sends only copy into the socket, and uncork() at the end of the step (sess_step)
 * transmits them as one segment. The bytes on the wire are the same.
 */
static void cork(const struct replay *r, struct replay_session *s)
{
	int one = 1;

	if (s->corked || !s->head || s->n_sent + 1 >= r->cfg.pipeline ||
	    !pipelinable(r, s, s->head))
		return;
	s->corked = !setsockopt(PQsocket(s->conn), IPPROTO_TCP, TCP_CORK, &one, sizeof(one));
}

static void uncork(struct replay_session *s)
{
	int zero = 0;

	if (!s->corked)
		return;
	s->corked = false;
	if (s->conn && PQsocket(s->conn) >= 0) /* else closed in this step: nothing to send */
		setsockopt(PQsocket(s->conn), IPPROTO_TCP, TCP_CORK, &zero, sizeof(zero));
}

/* Sends a pipelinable item and counts it: behind another in flight, or the first. */
static bool pipe_send(struct replay *r, struct replay_session *s, const struct item *it,
		      bool behind)
{
	cork(r, s);
	if (!send_piped(s, it))
		return false;
	stats_mirror_piped(r->st, behind, it->kind == SESSION_REQ_QUERY);
	return true;
}

/* Sends the session's head item behind what is in flight. */
static void pipe_append(struct replay *r, struct replay_session *s, uint64_t now)
{
	struct item *it = queue_pop(s);

	it->stage = STAGE_MAIN;
	it->sent_ns = now;
	s->last_sent = now;
	s->last_ts_start = it->ord.ts_start;
	s->last_unit = it->unit;
	s->unit_open = !it->unit_last;
	if (s->sent_tail)
		s->sent_tail->next = it;
	else
		s->sent_head = it;
	s->sent_tail = it;
	s->n_sent++;
	if (!pipe_send(r, s, it, true) || !conn_flush(s)) {
		conn_lost(r, s, OUT_CONNECTION, now);
		return;
	}
	conn_rewatch(r, s); /* the deadline stays cur's: pipe_advance sets the next one */
}

/* The next pipelined item's answer is read now. Its service on the mirror began when
 * its predecessor's ended, if that was after it was sent. */
static void pipe_advance(struct replay *r, struct replay_session *s, uint64_t now)
{
	struct item *it = s->sent_head;

	s->sent_head = it->next;
	if (!s->sent_head)
		s->sent_tail = NULL;
	it->next = NULL;
	s->n_sent--;
	if (it->sent_ns < now)
		it->sent_ns = now;
	s->cur = it;
	run_piped(s);
	PQsetSingleRowMode(s->conn); /* refused once its rows arrived: still correct */
	s->deadline = reply_deadline(r, now);
}

/*
 * Starts the session's head item on its idle connection. A resumption of a portal the
 * mirror already ran to completion finishes at once. When libpq refuses to send, the item
 * fails and the connection is reset (its state is unknown).
 */
static void item_start(struct replay *r, struct replay_session *s, uint64_t now)
{
	struct item *it = queue_pop(s);

	run_reset(s);
	it->sent_ns = now;
	s->last_sent = now;
	s->last_ts_start = it->ord.ts_start;
	s->last_unit = it->unit;
	s->unit_open = !it->unit_last;

	if (it->kind == SESSION_REQ_EXECUTE && s->susp && it->portal_key == s->susp_key) {
		s->susp = it->suspended;
		item_finish(r, s, it, OUT_SUCCESS, now);
		return;
	}
	s->cur = it;
	if (s->head && pipelinable(r, s, it)) { /* a backlog: the first of a pipeline */
		it->stage = STAGE_MAIN;
		run_piped(s);
		s->piping = pipe_send(r, s, it, false);
		if (s->piping)
			PQsetSingleRowMode(s->conn);
		sent(r, s, s->piping, now);
		return;
	}
	if (it->wrap && it->kind == SESSION_REQ_QUERY) {
		it->stage = STAGE_BEGIN;
		sent(r, s, send_aux(s, "BEGIN"), now);
		return;
	}
	sent(r, s, send_main(r, s, it, now), now);
}

/* Sends the item's COPY data, then CopyDone. 1 done, 0 blocked (wait for EPOLLOUT),
 * -1 failed. A second COPY FROM STDIN in the same query gets no data. */
static int copy_send(struct replay_session *s)
{
	const struct item *it = s->cur;
	int rc;

	while (it && s->run.copy_off < it->copy_len) {
		size_t n = it->copy_len - s->run.copy_off;

		if (n > COPY_CHUNK)
			n = COPY_CHUNK;
		rc = PQputCopyData(s->conn, it->copy + s->run.copy_off, (int)n);
		if (rc <= 0) {
			s->want_write = rc == 0;
			return rc;
		}
		s->run.copy_off += n;
	}
	rc = PQputCopyEnd(s->conn, NULL);
	if (rc <= 0) {
		s->want_write = rc == 0;
		return rc;
	}
	s->run.copy_in = false;
	return conn_flush(s) ? 1 : -1;
}

/* Discards COPY TO STDOUT rows. 1 done, 0 wait for input, -1 failed. */
static int copy_discard(struct replay_session *s)
{
	char *row;
	int n;

	while ((n = PQgetCopyData(s->conn, &row, 1)) > 0)
		PQfreemem(row);
	if (n == 0)
		return 0;
	if (n == -1) {
		s->run.copy_out = false;
		return 1;
	}
	return -1;
}

static void run_error(struct replay_session *s, const PGresult *res)
{
	const char *code = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

	if (s->run.error)
		return;
	s->run.error = true;
	snprintf(s->run.sqlstate, sizeof(s->run.sqlstate), "%s", code ? code : "");
}

/* The first result after a Prepare is the Prepare's own: keep the statement if it
 * worked. A name already taken on the mirror means it holds names we do not know of. */
static void run_prepared(struct replay_session *s, const PGresult *res)
{
	const char *code;

	if (PQresultStatus(res) == PGRES_COMMAND_OK) {
		stmt_link(s, s->run.prep);
	} else {
		code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
		if (code && !strcmp(code, "42P05"))
			s->mangle_all = true;
		free(s->run.prep);
	}
	s->run.prep = NULL;
}

/* Adds the rows of a result to the answer: counted, and hashed in the DataRow layout
 * (int16 column count, then per column an int32 length, -1 for NULL, and the bytes, all
 * big-endian) so that the sum equals the source's hash of the same rows. */
static void note_rows(struct replay *r, struct replay_session *s, const PGresult *res)
{
	int n = PQntuples(res), nf = PQnfields(res), i, f;
	struct buf *b = &r->row;
	unsigned char hdr[4];

	s->run.stmt_rows += (uint64_t)n;
	if (r->cfg.compare != REPLAY_COMPARE_ROWS)
		return;
	for (i = 0; i < n; i++) {
		b->len = 0;
		b->overflow = false;
		hdr[0] = (unsigned char)(nf >> 8);
		hdr[1] = (unsigned char)nf;
		buf_append(b, hdr, 2);
		for (f = 0; f < nf; f++) {
			int32_t len = PQgetisnull(res, i, f) ? -1 : PQgetlength(res, i, f);
			uint32_t u = (uint32_t)len;

			hdr[0] = (unsigned char)(u >> 24);
			hdr[1] = (unsigned char)(u >> 16);
			hdr[2] = (unsigned char)(u >> 8);
			hdr[3] = (unsigned char)u;
			buf_append(b, hdr, 4);
			if (len > 0)
				buf_append(b, PQgetvalue(res, i, f), (size_t)len);
		}
		if (b->overflow)
			s->run.unhashed = true;
		else
			s->run.hash += XXH3_64bits(b->data, b->len);
	}
}

/* A command's completion: its tag verb and row count (the tag's, else its rows). */
static void note_command(struct replay_session *s, const PGresult *res)
{
	const char *tag = PQcmdStatus((PGresult *)res), *n = PQcmdTuples((PGresult *)res);
	size_t len = strcspn(tag, " ");

	if (len >= sizeof(s->run.verb))
		len = sizeof(s->run.verb) - 1;
	memcpy(s->run.verb, tag, len);
	s->run.verb[len] = 0;
	s->run.rows = n && *n ? strtoull(n, NULL, 10) : s->run.stmt_rows;
	s->run.stmt_rows = 0;
}

/*
 * Reads what the mirror has answered to what is in flight (an item or SET ROLE),
 * pumping COPY data both ways. Returns true when it is complete (including on a broken
 * connection: the caller checks), false when more input or output room is needed.
 */
static bool run_results(struct replay *r, struct replay_session *s)
{
	PGconn *c = s->conn;
	PGresult *res;
	bool was_prep;
	int rc;

	for (;;) {
		if (PQstatus(c) == CONNECTION_BAD)
			return true;
		if (s->run.copy_in) {
			rc = copy_send(s);
			if (rc == 0)
				return false;
			/* refused: the server ended the COPY (an error follows) */
			s->run.copy_in = false;
			continue;
		}
		if (s->run.copy_out) {
			rc = copy_discard(s);
			if (rc < 0) {
				s->run.broken = true;
				return true;
			}
			if (rc == 0)
				return false;
		}
		if (PQisBusy(c))
			return false;
		res = PQgetResult(c);
		if (!res) {
			/* pipeline mode: the end of one query's results */
			if (!s->run.pipeline)
				return true;
			s->run.ends++;
			if (!s->run.synced && s->run.ends >= s->run.sets)
				return true; /* the group stays open */
			if (++s->run.nulls > 1)
				return true;
			PQsetSingleRowMode(c);
			continue;
		}
		s->run.nulls = 0;
		if (s->run.pipeline && s->run.ends >= s->run.sets &&
		    PQresultStatus(res) != PGRES_PIPELINE_SYNC) {
			PQclear(res); /* the forced rollback's own (error) result */
			continue;
		}
		was_prep = s->run.prep != NULL;
		if (was_prep)
			run_prepared(s, res);
		switch (PQresultStatus(res)) {
		case PGRES_SINGLE_TUPLE:
			note_rows(r, s, res);
			break;
		case PGRES_TUPLES_OK:
		case PGRES_COMMAND_OK:
			if (!was_prep && !s->run.aux && s->state == CONN_BUSY) {
				note_rows(r, s, res);
				note_command(s, res);
			}
			break;
		case PGRES_COPY_IN:
			s->run.copy_in = true;
			break;
		case PGRES_COPY_OUT:
			s->run.copy_out = true;
			break;
		case PGRES_COPY_BOTH:
			s->run.broken = true;
			run_error(s, NULL);
			PQclear(res);
			return true;
		case PGRES_PIPELINE_SYNC:
			PQclear(res);
			return true; /* libpq returns no NULL after a sync */
		case PGRES_BAD_RESPONSE:
		case PGRES_FATAL_ERROR:
			run_error(s, res);
			break;
		case PGRES_PIPELINE_ABORTED: /* an earlier error of this item already counted */
			run_error(s, NULL);
			break;
		default:
			break;
		}
		PQclear(res);
	}
}

/* What the mirror's answer means, given the source's. */
static enum outcome run_outcome(const struct replay *r, const struct replay_session *s,
				const struct item *it)
{
	if (!s->run.error)
		return OUT_SUCCESS;
	if (it->src.error && s->run.sqlstate[0] && !strcmp(s->run.sqlstate, it->src.sqlstate))
		return OUT_SUCCESS; /* the expected outcome */
	if (!strcmp(s->run.sqlstate, "57014"))
		return OUT_TIMEOUT;
	if (r->cfg.mode == REPLAY_MODE_READ_ONLY && !strcmp(s->run.sqlstate, "25006"))
		return OUT_SKIP_READ_ONLY; /* a write the parse tree did not reveal */
	return OUT_QUERY;
}

/*
 * How the mirror's answer differs from the source's (bits of 1 << enum
 * stats_mismatch_kind, the same as compare.h's kinds), within the item's scope.
 */
static unsigned int compare(const struct replay *r, const struct replay_session *s,
			    const struct item *it)
{
	struct compare_answer m = {.error = s->run.error,
				   .rows = s->run.rows,
				   .hash = s->run.hash,
				   .hashed = !s->run.unhashed};

	(void)r;
	memcpy(m.sqlstate, s->run.sqlstate, sizeof(m.sqlstate));
	memcpy(m.verb, s->run.verb, sizeof(m.verb));
	return compare_answers(&it->scope, &it->src, &m);
}

/* Logs one mismatch (the first log_mismatches): fingerprint and both outcomes, never
 * the text or parameter values. */
static void log_mismatch(struct replay *r, const struct replay_session *s, const struct item *it,
			 unsigned int kinds)
{
	char what[64] = "";
	int k;

	uint32_t limit = atomic_load_explicit(&r->log_mismatches, memory_order_relaxed);

	if (r->mismatches_logged >= limit)
		return;
	r->mismatches_logged++;
	for (k = 0; k < STATS_MISMATCH_MAX; k++)
		if (kinds & (1u << k))
			snprintf(what + strlen(what), sizeof(what) - strlen(what), "%s%s",
				 what[0] ? "," : "", stats_mismatch_kind_names[k]);
	fprintf(stderr,
		"pgshadow: mismatch %u/%u database=%s fingerprint=%016llx kind=%s source: %s "
		"rows=%llu sqlstate=%s mirror: %s rows=%llu sqlstate=%s\n",
		r->mismatches_logged, limit, it->db->name, (unsigned long long)it->fingerprint,
		what, it->src.verb[0] ? it->src.verb : "-", (unsigned long long)it->src.rows,
		it->src.error ? it->src.sqlstate : "-", s->run.verb[0] ? s->run.verb : "-",
		(unsigned long long)s->run.rows, s->run.error ? s->run.sqlstate : "-");
}

/* The aux statement of a wrapped item completed: run the item, or finish it. */
static void aux_complete(struct replay *r, struct replay_session *s, struct item *it, uint64_t now)
{
	if (s->run.broken) { /* a reset connection ends its transaction too */
		conn_lost(r, s, it->stage == STAGE_ROLLBACK ? it->saved : OUT_CONNECTION, now);
		return;
	}
	if (it->stage == STAGE_BEGIN) {
		sent(r, s, send_main(r, s, it, now), now);
		return;
	}
	s->cur = NULL;
	item_finish(r, s, it, it->saved, now);
	run_reset(s);
	s->state = CONN_IDLE;
	s->deadline = NEVER;
}

/* What was in flight is complete: give the item its outcome, leave pipeline mode. */
static void run_complete(struct replay *r, struct replay_session *s, uint64_t now)
{
	struct item *it = s->cur;
	unsigned int kinds;
	enum outcome o;

	if (PQstatus(s->conn) == CONNECTION_BAD) {
		conn_lost(r, s, OUT_CONNECTION, now);
		return;
	}
	if (s->state == CONN_SETUP) { /* SET ROLE or a group's Sync: result ignored */
		if (s->group_open) {
			s->group_open = false;
			if (!PQexitPipelineMode(s->conn))
				s->run.broken = true;
		}
		if (s->run.broken) {
			conn_lost(r, s, OUT_CONNECTION, now);
			return;
		}
		run_reset(s);
		s->state = CONN_IDLE;
		s->deadline = NEVER;
		return;
	}
	if (s->run.aux) {
		aux_complete(r, s, it, now);
		return;
	}
	if (s->run.pipeline && !s->run.synced && (s->run.error || s->run.broken)) {
		/* the group failed on the mirror: end it now (the server skips to the Sync) */
		s->run.synced = true;
		s->run.nulls = 0;
		if (!PQpipelineSync(s->conn) || !conn_flush(s))
			s->run.broken = true;
		else
			return; /* complete at the sync */
	}
	o = run_outcome(r, s, it);
	if (s->run.pipeline && !s->run.synced) {
		s->group_open = true;
		s->group_id = it->sync_group;
	} else if (s->run.pipeline && !s->n_sent) {
		s->group_open = false;
		if (PQpipelineStatus(s->conn) != PQ_PIPELINE_OFF && !PQexitPipelineMode(s->conn))
			s->run.broken = true;
	}
	if (s->run.broken) {
		conn_lost(r, s, o, now);
		return;
	}
	if (s->run.error && !strcmp(s->run.sqlstate, "26000") && it->kind == SESSION_REQ_EXECUTE &&
	    it->stmt_name[0]) { /* the mirror lost it: prepare it again */
		bool used;
		struct stmt *st = stmt_find(s, it->stmt_name, it->text_hash, &used);

		if (st)
			stmt_unlink(s, st);
	}
	/* a COMMIT replayed as ROLLBACK has no answer of its own to compare */
	if (r->cfg.compare != REPLAY_COMPARE_NONE && !it->as_rollback && !it->no_compare &&
	    (o == OUT_SUCCESS || o == OUT_QUERY)) {
		kinds = compare(r, s, it);
		stats_mirror_compared(r->st, it->db, kinds);
		if (kinds)
			log_mismatch(r, s, it, kinds);
	}
	if (it->wrap &&
	    it->kind == SESSION_REQ_QUERY) { /* roll back what the source did not keep */
		it->saved = (uint8_t)o;
		it->done_ns = now;
		it->stage = STAGE_ROLLBACK;
		sent(r, s, send_aux(s, "ROLLBACK"), now);
		return;
	}
	s->cur = NULL;
	item_finish(r, s, it, o, now);
	run_reset(s);
	if (s->n_sent) {
		pipe_advance(r, s, now);
		return;
	}
	s->piping = false;
	s->state = CONN_IDLE;
	s->deadline = NEVER;
}

/* Frees notifications a replayed LISTEN may bring (libpq would keep them forever). */
static void drain_notifies(PGconn *c)
{
	PGnotify *n;

	while ((n = PQnotifies(c)))
		PQfreemem(n);
}

/* The session's socket is ready (epoll). */
static void conn_event(struct replay *r, struct replay_session *s, uint32_t events, uint64_t now)
{
	(void)events;
	if (!s->conn)
		return; /* closed earlier in this batch of events */
	activate(r, s);
	if (s->state == CONN_CONNECTING) {
		conn_poll(r, s, now);
		return;
	}
	if (!PQconsumeInput(s->conn)) {
		conn_lost(r, s, OUT_CONNECTION, now);
		return;
	}
	if (s->want_write && !s->run.copy_in && !conn_flush(s)) {
		conn_lost(r, s, OUT_CONNECTION, now);
		return;
	}
	/* a pipeline may have several answers in: each completes in turn */
	while (s->conn && (s->state == CONN_SETUP || s->state == CONN_BUSY) && run_results(r, s))
		run_complete(r, s, now);
	if (!s->conn)
		return;
	drain_notifies(s->conn);
	if (PQstatus(s->conn) == CONNECTION_BAD) {
		conn_lost(r, s, OUT_CONNECTION, now);
		return;
	}
	conn_rewatch(r, s);
}

/* ---- sessions (replay thread) ---- */

static void sess_free(struct replay *r, struct replay_session *s)
{
	conn_close(r, s);
	deactivate(r, s);
	pthread_mutex_lock(&r->list_lock);
	if (s->all_prev)
		s->all_prev->all_next = s->all_next;
	else if (r->all == s)
		r->all = s->all_next;
	if (s->all_next)
		s->all_next->all_prev = s->all_prev;
	free(s->params);
	pthread_mutex_unlock(&r->list_lock);
	if (s->has_slot)
		r->n_slots--;
	free(s);
}

/* Does the item belong to the Sync group left open on the connection? */
static bool group_continues(const struct replay_session *s, const struct item *it)
{
	return it && it->kind == SESSION_REQ_EXECUTE && it->sync_group == s->group_id &&
	       !it->as_rollback && !is_copy(it) && !(s->susp && it->portal_key == s->susp_key);
}

/* Ends an open Sync group (its implicit transaction commits, as on the source). */
static void group_close(struct replay *r, struct replay_session *s, uint64_t now)
{
	run_reset(s);
	s->run.pipeline = true;
	s->run.synced = true;
	if (!PQpipelineSync(s->conn) || !conn_flush(s)) {
		conn_lost(r, s, OUT_CONNECTION, now);
		return;
	}
	s->state = CONN_SETUP;
	s->deadline = reply_deadline(r, now);
	s->unit_open = false;
	conn_rewatch(r, s);
}

/* Is the mirror connection inside a transaction block? */
static bool in_txn(const struct replay_session *s)
{
	PGTransactionStatusType ts = s->conn ? PQtransactionStatus(s->conn) : PQTRANS_UNKNOWN;

	return ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR;
}

/*
 * Rolls back the mirror's transaction of a unit the source did not (or could not be
 * seen to) run whole: an open Sync group gets a forced error before its Sync (the
 * server then rolls the implicit transaction back), a transaction block a ROLLBACK.
 * Results are ignored (CONN_SETUP).
 */
static void txn_abort(struct replay *r, struct replay_session *s, uint64_t now)
{
	bool ok;

	s->unit_open = false;
	run_reset(s);
	if (s->group_open) {
		s->run.pipeline = true;
		s->run.synced = true;
		ok = PQsendQueryParams(s->conn, FORCE_ROLLBACK_SQL, 0, NULL, NULL, NULL, NULL, 0) &&
		     PQpipelineSync(s->conn);
	} else if (in_txn(s)) {
		ok = PQsendQuery(s->conn, "ROLLBACK");
	} else {
		return; /* nothing open here */
	}
	if (!ok || !conn_flush(s)) {
		conn_lost(r, s, OUT_CONNECTION, now);
		return;
	}
	s->state = CONN_SETUP;
	s->deadline = reply_deadline(r, now);
	conn_rewatch(r, s);
}

/* A control message at the head of an idle connection's queue. */
static void ctl_run(struct replay *r, struct replay_session *s, uint64_t now)
{
	struct item *it = queue_pop(s);
	uint8_t ctl = it->ctl;
	uint64_t unit = it->unit, group = it->sync_group;

	item_finish(r, s, it, OUT_SUCCESS, now); /* counts nothing: not a request */
	if (ctl == CTL_SYNC) {
		if (s->group_open && s->group_id == group)
			group_close(r, s, now);
	} else if (unit == s->last_unit && unit != s->dead_unit) {
		txn_abort(r, s, now);
	}
}

static const struct item *item_of(const struct order_item *a)
{
	return (const struct item *)((const char *)a - offsetof(struct item, ord));
}

struct stuck {
	uint64_t bound_ns, until; /* the latest end of a started blocker's bound */
};

/* Keeps looking while every blocker seen has started on the mirror. */
static bool blocker_started(void *ctx, const struct order_item *a)
{
	struct stuck *k = ctx;
	const struct item *it = item_of(a);

	if (!it->sent_ns) {
		k->until = NEVER;
		return false;
	}
	if (it->sent_ns + k->bound_ns > k->until)
		k->until = it->sent_ns + k->bound_ns;
	return true;
}

/*
 * Must it wait for ordering (order.h) now? Until when (*until; NEVER: until an item
 * finishes)? The first wait is counted. While any item it waits for has not started on
 * the mirror, it waits: that item's own waits point at still earlier ones, so it will
 * start. When every one of them has been running on the mirror for order_wait_ms, the
 * wait is given up (counted): the mirror's own lock waits are invisible here, and a
 * workload the replay cannot reproduce exactly (unsampled transactions, skipped
 * statements) could otherwise stall a session behind a mirror lock its own transaction
 * holds.
 */
static bool must_wait(struct replay *r, struct item *it, uint64_t now, uint64_t *until)
{
	enum order_wait w;
	const struct order_item *a = order_blocker(&r->order, &it->ord, &w);
	struct stuck k = {.bound_ns = r->cfg.order_wait_ms * MS};

	*until = NEVER;
	if (!a)
		return false;
	if (!it->waited) {
		it->waited = true;
		stats_mirror_order_wait(r->st);
		if (w == ORDER_WAIT_LOCK)
			stats_mirror_lock_wait(r->st);
	}
	if (!item_of(a)->sent_ns) /* the common case, without a walk */
		return true;
	order_each_blocker(&r->order, &it->ord, blocker_started, &k);
	*until = k.until;
	if (now < k.until)
		return true;
	stats_mirror_order_timeout(r->st);
	return false;
}

static uint64_t sess_run(struct replay *r, struct replay_session *s, uint64_t now, bool *freed);

/* sess_run, then the step's pipelined sends leave (uncork). */
static uint64_t sess_step(struct replay *r, struct replay_session *s, uint64_t now, bool *freed)
{
	uint64_t d = sess_run(r, s, now, freed);

	if (!*freed)
		uncork(s);
	return d;
}

/*
 * Moves one session as far as it can go now: fails or skips what its connection state
 * dictates, connects, starts its head item when causal order allows. Returns the next
 * time it needs a step without an event (NEVER if none); frees the session once it is
 * closed and has nothing left (then *freed is set).
 */
static uint64_t sess_run(struct replay *r, struct replay_session *s, uint64_t now, bool *freed)
{
	uint64_t until;
	struct item *it;

	*freed = false;
	for (;;) {
		while ((it = s->head) && !it->ctl && s->dead_unit && it->unit == s->dead_unit)
			item_finish(r, s, queue_pop(s), OUT_CONNECTION, now); /* its txn is lost */
		if (it && it->ctl && s->state != CONN_IDLE && s->state != CONN_BUSY &&
		    s->state != CONN_SETUP && s->state != CONN_CONNECTING) {
			item_finish(r, s, queue_pop(s), OUT_SUCCESS, now); /* no transaction here */
			continue;
		}
		switch (s->state) {
		case CONN_CAPPED:
			queue_finish_all(r, s, OUT_SKIP_CAP, now);
			goto settled;
		case CONN_BACKOFF:
			if (now < s->deadline) {
				queue_finish_all(r, s, OUT_CONNECTION, now);
				goto settled;
			}
			s->state = CONN_NONE;
			continue;
		case CONN_NONE:
			if (!s->head)
				goto settled;
			conn_open(r, s, now);
			continue;
		case CONN_CONNECTING:
		case CONN_SETUP:
		case CONN_BUSY:
			if (s->state == CONN_BUSY && s->piping && s->n_sent + 1 < r->cfg.pipeline &&
			    pipelinable(r, s, s->head) && !must_wait(r, s->head, now, &until)) {
				pipe_append(r, s, now);
				continue;
			}
			if (now < s->deadline)
				return s->deadline;
			if (s->state == CONN_CONNECTING)
				conn_failed(r, s, now);
			else /* no answer long past statement_timeout */
				conn_lost(r, s, OUT_TIMEOUT, now);
			continue;
		case CONN_IDLE:
			it = s->head;
			if (it && it->ctl) {
				ctl_run(r, s, now);
				continue;
			}
			if (s->group_open && !group_continues(s, it)) {
				if (!it && !s->closed)
					goto settled; /* its rest, or its Sync (CTL_SYNC), will come
						       */
				if (it)
					group_close(r, s, now); /* the client sent the Sync */
				else
					txn_abort(r, s, now); /* the client left before the Sync */
				continue;
			}
			if (!it)
				goto settled;
			if (r->cfg.replay_timing && !it->txn_start && s->last_sent &&
			    it->ord.ts_start > s->last_ts_start) { /* keep the source's gap */
				uint64_t due = s->last_sent + (it->ord.ts_start - s->last_ts_start);

				if (now < due)
					return due;
			}
			if (must_wait(r, it, now, &until))
				return until;
			item_start(r, s, now);
			continue;
		}
	}
settled:
	if (s->closed && !s->head && !s->cur) {
		sess_free(r, s);
		*freed = true;
	} else if (!s->head && !s->cur) {
		deactivate(r, s); /* nothing to do until an event or a message */
	}
	return NEVER;
}

/* Steps every active session; returns the epoll timeout (ms) until the next deadline. */
static int step_all(struct replay *r, uint64_t now)
{
	struct replay_session *s, *next;
	uint64_t wake = NEVER, d;
	unsigned int util = 0, u;
	bool freed;

	for (s = r->active; s; s = next) {
		next = s->act_next;
		d = sess_step(r, s, now, &freed);
		if (d < wake)
			wake = d;
		if (freed)
			continue;
		atomic_store_explicit(&s->pub_state, (int)s->state, memory_order_relaxed);
		u = (unsigned int)((uint64_t)atomic_load_explicit(&s->queued,
								  memory_order_relaxed) *
				   100 / r->cfg.queue);
		if (u > util)
			util = u;
	}
	if (util > 100)
		util = 100;
	if (util != r->last_util) {
		stats_mirror_set_buffer_utilization(r->st, util);
		r->last_util = util;
	}
	stats_mirror_set_queue_bytes(r->st, atomic_load(&r->item_bytes),
				     atomic_load(&r->bytes_peak));
	if (wake == NEVER)
		return IDLE_WAKE_MS;
	if (wake <= now)
		return 0;
	d = (wake - now + MS - 1) / MS;
	return d > IDLE_WAKE_MS ? IDLE_WAKE_MS : (int)d;
}

/* Takes the channel: sessions appear, learn their settings, queue items, close. */
static void drain(struct replay *r)
{
	struct msg *m, *next;
	struct replay_session *s;
	struct item *it;

	for (m = chan_take(r); m; m = next) {
		next = m->next;
		s = m->rs;
		switch (m->kind) {
		case MSG_OPEN:
			s->fd = -1;
			s->deadline = NEVER;
			s->backoff_ms = BACKOFF_MIN_MS;
			pthread_mutex_lock(&r->list_lock);
			s->all_prev = NULL;
			s->all_next = r->all;
			if (r->all)
				r->all->all_prev = s;
			r->all = s;
			pthread_mutex_unlock(&r->list_lock);
			break;
		case MSG_PARAMS:
			pthread_mutex_lock(&r->list_lock);
			free(s->params);
			s->params = (struct params *)m;
			pthread_mutex_unlock(&r->list_lock);
			break;
		case MSG_ITEM:
			it = (struct item *)m;
			it->next = NULL;
			if (s->tail)
				s->tail->next = it;
			else
				s->head = it;
			s->tail = it;
			items_track(r, it);
			activate(r, s);
			break;
		case MSG_CLOSE:
			s->closed = true;
			activate(r, s);
			break;
		}
	}
}

static void *run(void *arg)
{
	struct replay *r = arg;
	struct epoll_event ev[EVENTS_MAX];
	uint64_t counter, now;
	int i, n, timeout;

	while (!atomic_load(&r->stop)) {
		drain(r);
		timeout = step_all(r, now_ns());
		n = epoll_wait(r->epfd, ev, EVENTS_MAX, timeout);
		now = now_ns();
		for (i = 0; i < n; i++) {
			if (!ev[i].data.ptr) {
				if (read(r->efd, &counter, sizeof(counter)) < 0) {
					/* EAGAIN: already read */
				}
				continue;
			}
			conn_event(r, ev[i].data.ptr, ev[i].events, now);
		}
	}
	return NULL;
}

/* ---- [databases] and exposure ---- */

static uint64_t double_bits(double d)
{
	uint64_t u;

	memcpy(&u, &d, sizeof(u));
	return u;
}

static double bits_double(uint64_t u)
{
	double d;

	memcpy(&d, &u, sizeof(d));
	return d;
}

static void map_free(struct replay *r)
{
	size_t i;

	for (i = 0; i < r->n_map; i++) {
		free(r->map[i].source_db);
		free(r->map[i].mirror_dbname);
	}
	free(r->map);
	r->map = NULL;
	r->n_map = 0;
}

/* Copies the [databases] lines (at most DB_MAP_MAX). -ENOMEM on failure. */
static int map_copy(struct replay *r, const struct replay_config *cfg)
{
	size_t i, n = cfg->n_databases > DB_MAP_MAX ? DB_MAP_MAX : cfg->n_databases;

	if (!n || !cfg->databases)
		return 0;
	r->map = calloc(n, sizeof(*r->map));
	if (!r->map)
		return -ENOMEM;
	r->n_map = n;
	for (i = 0; i < n; i++) {
		const struct replay_db_map *d = &cfg->databases[i];

		r->map[i].source_db = strdup(d->source_db ? d->source_db : "");
		r->map[i].mirror_dbname = d->mirror_dbname ? strdup(d->mirror_dbname) : NULL;
		atomic_init(&r->map[i].exposure, double_bits(d->exposure));
		if (!r->map[i].source_db || (d->mirror_dbname && !r->map[i].mirror_dbname))
			return -ENOMEM;
	}
	return 0;
}

static int map_find(const struct replay *r, const char *db)
{
	size_t i;

	for (i = 0; db && i < r->n_map; i++)
		if (!strcmp(r->map[i].source_db, db))
			return (int)i;
	return -1;
}

void replay_set_exposure(struct replay *r, const char *db, double exposure)
{
	int i;

	if (!r)
		return;
	if (!db) {
		if (exposure < 0)
			exposure = 0;
		atomic_store(&r->exposure, double_bits(exposure > 1 ? 1 : exposure));
		return;
	}
	i = map_find(r, db);
	if (i >= 0)
		atomic_store(&r->map[i].exposure, double_bits(exposure > 1 ? 1 : exposure));
}

/* The exposure of a session's database now. */
static double exposure_of(const struct replay *r, const struct replay_session *rs)
{
	double e = -1;

	if (rs->c_map >= 0)
		e = bits_double(
		    atomic_load_explicit(&r->map[rs->c_map].exposure, memory_order_relaxed));
	if (e < 0)
		e = bits_double(atomic_load_explicit(&r->exposure, memory_order_relaxed));
	return e;
}

/* ---- capture thread ---- */

static const char *param_get(const struct session_info *si, const char *name)
{
	uint16_t i;

	for (i = 0; si->params && i < si->n_params; i++)
		if (si->params[i].name && !strcasecmp(si->params[i].name, name))
			return si->params[i].value ? si->params[i].value : "";
	return NULL;
}

/* The server's own reading of a boolean "false" (any prefix of false/no/off, or 0). */
static bool is_false(const char *v)
{
	size_t n = strlen(v);

	if (!n)
		return false;
	if (!strncasecmp(v, "false", n) || !strncasecmp(v, "no", n) || !strcmp(v, "0"))
		return true;
	return n >= 2 && !strncasecmp(v, "off", n);
}

/* Appends " -c name=value", escaping whitespace and backslashes as libpq's options
 * splitting expects. */
static void options_setting(struct buf *b, const char *name, const char *value)
{
	const char *p;

	if (!value)
		return;
	buf_printf(b, "%s-c %s=", b->len ? " " : "", name);
	for (p = value; *p; p++) {
		if (isspace((unsigned char)*p) || *p == '\\')
			buf_append(b, "\\", 1);
		buf_append(b, p, 1);
	}
}

/*
 * The mirror connection's settings for a session (capture thread): its database and
 * user, client_encoding and application_name as keywords, and an options string made of
 * the source's options, its DateStyle / TimeZone / extra_float_digits startup
 * parameters, the mirror conninfo's own options, and statement_timeout last (later -c
 * win). NULL on ENOMEM or an absurd size.
 */
static struct params *params_new(const struct replay *r, const struct session_info *si)
{
	static const char *const carried[] = {"DateStyle", "TimeZone", "extra_float_digits"};
	const char *enc = param_get(si, "client_encoding"), *opts = param_get(si, "options");
	int map = map_find(r, si->database);
	const char *db =
	    map >= 0 && r->map[map].mirror_dbname ? r->map[map].mirror_dbname : si->database;
	const char *user = si->user ? si->user : "";
	const char *app = si->application_name ? si->application_name : "";
	size_t ldb, luser, lenc, lapp, lopt;
	struct params *p = NULL;
	struct buf o;
	char *w;
	size_t i;

	buf_init(&o, OPTIONS_MAX);
	if (opts && *opts)
		buf_printf(&o, "%s", opts);
	for (i = 0; i < sizeof(carried) / sizeof(carried[0]); i++)
		options_setting(&o, carried[i], param_get(si, carried[i]));
	if (r->mirror_options[0])
		buf_printf(&o, "%s%s", o.len ? " " : "", r->mirror_options);
	buf_printf(&o, "%s-c statement_timeout=%u", o.len ? " " : "", r->cfg.timeout_ms);
	if (r->cfg.mode == REPLAY_MODE_READ_ONLY)
		buf_printf(&o, " -c default_transaction_read_only=on");
	if (o.overflow || !o.data)
		goto out;
	enc = enc ? enc : "";
	ldb = strlen(db);
	luser = strlen(user);
	lenc = strlen(enc);
	lapp = strlen(app);
	lopt = o.len;
	p = malloc(sizeof(*p) + ldb + luser + lenc + lapp + lopt + 5);
	if (!p)
		goto out;
	memset(p, 0, sizeof(*p));
	w = p->strings;
	p->database = memcpy(w, db, ldb + 1);
	w += ldb + 1;
	p->user = memcpy(w, user, luser + 1);
	w += luser + 1;
	p->client_encoding = memcpy(w, enc, lenc + 1);
	w += lenc + 1;
	p->application_name = memcpy(w, app, lapp + 1);
	w += lapp + 1;
	p->options = memcpy(w, o.data, lopt + 1);
out:
	buf_free(&o);
	return p;
}

/* Posts the session's settings once its database is known (capture thread). */
static void sess_learn(struct replay *r, struct replay_session *rs, const struct session_info *si)
{
	const char *repl = param_get(si, "replication");
	struct params *p;

	if (rs->c_known || rs->c_off)
		return;
	if (si->state == SESSION_REPLICATION || (repl && !is_false(repl))) {
		rs->c_off = true;
		return;
	}
	if (!si->database || !strcmp(si->database, SESSION_UNKNOWN))
		return;
	p = params_new(r, si);
	if (!p)
		return; /* stays unknown: its items are skipped */
	rs->c_map = map_find(r, si->database);
	p->m.kind = MSG_PARAMS;
	p->m.rs = rs;
	rs->c_known = true;
	chan_post(r, &p->m);
}

/* Frees an item that never reached the replay thread (capture thread); its outcome is
 * the caller's. */
static void item_unqueue(struct replay *r, struct replay_session *rs, struct item *it)
{
	atomic_fetch_sub(&r->item_bytes, it->bytes);
	atomic_fetch_sub(&r->items, 1);
	atomic_fetch_sub(&rs->queued, 1);
	free(it);
}

/* Posts a control message in the session's queue (capture thread). It is not a request:
 * it counts in no outcome and takes no room in the session's queue limits. */
static void post_ctl(struct replay *r, struct replay_session *rs, uint8_t ctl, uint64_t unit,
		     uint64_t group, uint8_t reason)
{
	struct item *it = calloc(1, sizeof(*it));

	if (!it)
		return; /* ENOMEM: the session's close rolls the mirror back anyway */
	it->m.kind = MSG_ITEM;
	it->m.rs = rs;
	it->ctl = ctl;
	it->ctl_reason = reason;
	it->unit = unit;
	it->sync_group = group;
	it->bytes = sizeof(*it);
	atomic_fetch_add(&rs->queued, 1);
	atomic_fetch_add(&r->items, 1);
	atomic_fetch_add(&r->item_bytes, it->bytes);
	chan_post(r, &it->m);
}

/* Posts an item of the current unit. */
static void post_item(struct replay *r, struct replay_session *rs, struct item *it)
{
	rs->c_unit_posted++;
	rs->c_group_pending = it->kind == SESSION_REQ_EXECUTE && !it->group_end && !it->src.error;
	rs->c_group = it->sync_group;
	chan_post(r, &it->m);
}

/* mirror_aborted = skip: the held transaction's outcome is known. */
static void held_flush(struct replay *r, struct replay_session *rs, enum sampler_flush f)
{
	struct item *it, *next;

	if (f == SAMPLER_KEEP)
		return;
	for (it = rs->c_held; it; it = next) {
		next = it->next;
		it->next = NULL;
		if (f == SAMPLER_RELEASE) {
			post_item(r, rs, it);
			continue;
		}
		stats_mirror_skipped(r->st, it->db, STATS_SKIP_ABORTED);
		item_unqueue(r, rs, it);
	}
	rs->c_held = rs->c_held_tail = NULL;
	if (f == SAMPLER_RELEASE && rs->c_group_pending) { /* it committed: its Sync came */
		post_ctl(r, rs, CTL_SYNC, rs->c_unit, rs->c_group, 0);
		rs->c_group_pending = false;
	}
}

/*
 * A fault cut the current unit (capture thread): what of it was posted is rolled back
 * on the mirror (CTL_ABORT, after it in the queue), what is held is dropped, and the
 * rest of it will be dropped as it completes on the source.
 */
static void unit_cut(struct replay *r, struct replay_session *rs, enum stats_abort_reason why)
{
	struct item *it, *next;

	if (rs->c_unit_state != UNIT_OK)
		return;
	for (it = rs->c_held; it; it = next) {
		next = it->next;
		stats_mirror_dropped_why(r->st, it->db, STATS_DROP_UNIT_ABORTED, now_ns());
		item_unqueue(r, rs, it);
	}
	rs->c_held = rs->c_held_tail = NULL;
	if (rs->c_unit_posted) {
		post_ctl(r, rs, CTL_ABORT, rs->c_unit, 0, (uint8_t)why);
		stats_mirror_unit_aborted(r->st, why);
		rs->c_unit_state = UNIT_CUT;
	} else {
		rs->c_unit_state = UNIT_DROP;
		rs->c_unit_drop = STATS_DROP_UNIT_ABORTED;
	}
	rs->c_group_pending = false;
}

struct replay_session *replay_session_open(struct replay *r, const struct session_info *s)
{
	struct replay_session *rs;

	if (!r || !s || s->state == SESSION_ENCRYPTED || s->state == SESSION_REPLICATION ||
	    s->state == SESSION_CANCEL)
		return NULL;
	rs = calloc(1, sizeof(*rs));
	if (!rs)
		return NULL;
	rs->r = r;
	rs->id = s->id;
	rs->c_map = -1;
	r->seed += 0x9e3779b97f4a7c15ull; /* a different sequence per session */
	rs->c_ss.rng = r->seed | 1;
	atomic_init(&rs->queued, 0);
	atomic_init(&rs->capped, false);
	rs->open_msg.kind = MSG_OPEN;
	rs->open_msg.rs = rs;
	rs->close_msg.kind = MSG_CLOSE;
	rs->close_msg.rs = rs;
	chan_post(r, &rs->open_msg);
	sess_learn(r, rs, s);
	return rs;
}

void replay_session_identified(struct replay *r, struct replay_session *rs,
			       const struct session_info *s)
{
	if (r && rs && s)
		sess_learn(r, rs, s);
}

void replay_session_close(struct replay *r, struct replay_session *rs)
{
	enum sampler_flush f;

	if (!r || !rs)
		return;
	f = sampler_session_end(&rs->c_ss);
	held_flush(r, rs, f == SAMPLER_RELEASE ? f : SAMPLER_DISCARD);
	if (rs->c_unit_open || rs->c_group_pending) /* the server rolled it back */
		unit_cut(r, rs, STATS_ABORT_SESSION_END);
	chan_post(r, &rs->close_msg);
}

/* Identifies a resumption of a suspended portal: same portal, text and parameters. */
static uint64_t portal_key(const struct session_request *q)
{
	uint64_t h = FNV_INIT;
	uint16_t i;

	if (q->portal)
		h = fnv(h, q->portal, strlen(q->portal) + 1);
	h = fnv(h, q->text, q->text_len);
	for (i = 0; i < q->n_params; i++) {
		h = fnv(h, &q->param_lengths[i], sizeof(q->param_lengths[i]));
		if (q->param_lengths[i] > 0 && q->param_values[i])
			h = fnv(h, q->param_values[i], (size_t)q->param_lengths[i]);
	}
	return h;
}

/*
 * Deep-copies a request into one allocation laid out as struct item, value pointers,
 * lengths, formats, types, then bytes (text, statement name, values, COPY data). Returns
 * NULL on ENOMEM. Its size is left in it->bytes.
 */
static struct item *item_new(struct stats_db *db, const struct session_request *q)
{
	const char *name = q->stmt_name ? q->stmt_name : "";
	int np = q->n_params, nt = q->n_param_types, ntypes = np > nt ? np : nt;
	size_t nlen = strlen(name), size, vbytes = 0;
	struct item *it;
	char **values;
	int *lengths, *formats;
	Oid *types;
	char *w;
	int i;

	for (i = 0; i < np; i++)
		if (q->param_lengths[i] >= 0)
			vbytes += (size_t)q->param_lengths[i] + 1;
	size = sizeof(*it) + np * (sizeof(char *) + 2 * sizeof(int)) + ntypes * sizeof(Oid) +
	       q->text_len + 1 + nlen + 1 + vbytes + q->copy_len;
	it = malloc(size);
	if (!it)
		return NULL;
	memset(it, 0, sizeof(*it));
	values = (char **)(it + 1);
	lengths = (int *)(values + np);
	formats = lengths + np;
	types = (Oid *)(formats + np);
	w = (char *)(types + ntypes);

	it->m.kind = MSG_ITEM;
	it->db = db;
	it->kind = q->kind;
	it->ord.ts_start = q->ts_start;
	it->ord.ts_end = q->ts_end;
	it->bytes = size;
	it->text = memcpy(w, q->text, q->text_len);
	w[q->text_len] = 0;
	w += q->text_len + 1;
	it->text_hash = fnv(FNV_INIT, q->text, q->text_len);
	it->stmt_name = memcpy(w, name, nlen + 1);
	w += nlen + 1;
	it->n_params = np;
	it->n_types = nt;
	for (i = 0; i < ntypes; i++)
		types[i] = i < nt ? q->param_types[i] : 0;
	it->types = ntypes ? types : NULL;
	for (i = 0; i < np; i++) {
		int32_t len = q->param_lengths[i];

		lengths[i] = len < 0 ? 0 : len;
		formats[i] = q->n_param_formats == 1  ? q->param_formats[0]
			     : i < q->n_param_formats ? q->param_formats[i]
						      : 0;
		if (len < 0) {
			values[i] = NULL;
			continue;
		}
		if (len && q->param_values[i])
			memcpy(w, q->param_values[i], (size_t)len);
		else
			memset(w, 0, (size_t)len);
		w[len] = 0; /* text values are read up to a NUL */
		values[i] = w;
		w += (size_t)len + 1;
	}
	it->values = (const char *const *)values;
	it->lengths = lengths;
	it->formats = q->n_param_formats ? formats : NULL;
	it->result_format = q->n_result_formats ? q->result_formats[0] : 0;
	it->src.hashed = !q->rows_unhashed;
	for (i = 1; i < q->n_result_formats; i++) {
		if (q->result_formats[i] != q->result_formats[0]) {
			it->result_format = 0;	/* libpq has one format per query */
			it->src.hashed = false; /* so only tag and row count compare */
		}
	}
	i = (int)strcspn(q->tag, " ");
	if (i >= (int)sizeof(it->src.verb))
		i = sizeof(it->src.verb) - 1;
	memcpy(it->src.verb, q->tag, (size_t)i);
	it->src.verb[i] = 0;
	it->src.rows = q->rows;
	it->src.hash = q->rows_hash;
	if (q->copy_len)
		memcpy(w, q->copy_data, q->copy_len);
	it->copy = w;
	it->copy_len = q->copy_len;
	if (q->kind == SESSION_REQ_EXECUTE) {
		it->portal_key = portal_key(q);
		it->sync_group = q->sync_group;
		it->group_more = q->group_more;
		it->group_end = q->group_end;
	}
	it->suspended = q->suspended;
	it->src.error = q->error;
	memcpy(it->src.sqlstate, q->sqlstate, sizeof(it->src.sqlstate));
	it->src.sqlstate[sizeof(it->src.sqlstate) - 1] = 0;
	return it;
}

/* Why a request cannot be replayed at all (STATS_SKIP_MAX: it can). */
static enum stats_skip_reason unreplayable(const struct session_request *req)
{
	if (req->kind == SESSION_REQ_FUNCTION)
		return STATS_SKIP_FUNCTION_CALL;
	if (!req->text)
		return STATS_SKIP_NO_PARSE;
	if (req->copy_truncated)
		return STATS_SKIP_COPY_TOO_BIG;
	return STATS_SKIP_MAX;
}

/* Does the request end its transaction on the source (as far as known now)? */
static bool ends_unit(const struct session_request *req, const struct fingerprint_info *fi)
{
	bool idle_before = req->txn_before == 'I' || !req->txn_before;

	if (req->kind != SESSION_REQ_EXECUTE)
		return req->txn_status == 'I';
	return req->group_end &&
	       (fi->txn == FINGERPRINT_TXN_COMMIT || fi->txn == FINGERPRINT_TXN_ROLLBACK ||
		(idle_before && fi->txn != FINGERPRINT_TXN_BEGIN));
}

/*
 * A transaction's first request (capture thread): admission of the whole unit. It is
 * dropped whole when it began before the agent saw it (the source was already inside a
 * transaction: agent start, a capture gap), or when its session already has `queue`
 * requests waiting or the byte budget is half spent: what is admitted is rarely cut
 * later by the budget.
 */
static void unit_begin(struct replay *r, struct replay_session *rs,
		       const struct session_request *req)
{
	bool partial = req->txn_before == 'T' || req->txn_before == 'E' ||
		       (req->kind == SESSION_REQ_QUERY && !req->txn_before && req->txn_status &&
			req->txn_status != 'I');

	rs->c_unit++;
	rs->c_unit_state = UNIT_OK;
	rs->c_unit_posted = 0;
	rs->c_unit_open = true;
	if (partial) {
		rs->c_unit_state = UNIT_DROP;
		rs->c_unit_drop = STATS_DROP_PARTIAL;
	} else if (atomic_load(&rs->queued) >= r->cfg.queue ||
		   (atomic_load(&rs->queued) &&
		    (atomic_load(&r->item_bytes) > r->cfg.queue_bytes / 2 ||
		     atomic_load(&r->items) > CHANNEL_ITEMS_MAX / 2))) {
		rs->c_unit_state = UNIT_DROP;
		rs->c_unit_drop = STATS_DROP_BUFFER_FULL;
	}
}

static void drop(struct replay *r, struct replay_session *rs, struct stats_db *db,
		 enum stats_drop_reason why)
{
	atomic_fetch_add_explicit(&rs->n_dropped, 1, memory_order_relaxed);
	stats_mirror_dropped_why(r->st, db, why, now_ns());
}

static bool ignored(const struct replay *r, uint64_t fingerprint)
{
	size_t lo = 0, hi = r->n_ignore;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;

		if (r->ignore[mid] == fingerprint)
			return true;
		if (r->ignore[mid] < fingerprint)
			lo = mid + 1;
		else
			hi = mid;
	}
	return false;
}

/* Counts an item's bytes in the budget and its peak. */
static void bytes_add(struct replay *r, size_t bytes)
{
	uint64_t now = atomic_fetch_add(&r->item_bytes, bytes) + bytes;
	uint64_t peak = atomic_load_explicit(&r->bytes_peak, memory_order_relaxed);

	while (now > peak && !atomic_compare_exchange_weak(&r->bytes_peak, &peak, now))
		;
}

/*
 * Copies the request into an item of the current unit and queues it (or holds it).
 * When it does not fit in the budget the unit is cut (unit_cut): it is never replayed
 * in part.
 */
static void enqueue(struct replay *r, struct replay_session *rs, struct stats_db *db,
		    const struct session_request *req, const struct sampler_decision *d,
		    const struct fingerprint_info *fi)
{
	struct item *it;

	if (rs->c_unit_state != UNIT_OK) {
		drop(r, rs, db,
		     rs->c_unit_state == UNIT_CUT ? STATS_DROP_UNIT_ABORTED
						  : (enum stats_drop_reason)rs->c_unit_drop);
		return;
	}
	it = item_new(db, req);
	if (!it || atomic_load(&r->items) >= CHANNEL_ITEMS_MAX ||
	    atomic_load(&r->item_bytes) + it->bytes > r->cfg.queue_bytes) {
		free(it);
		unit_cut(r, rs, STATS_ABORT_QUEUE_FULL);
		if (rs->c_unit_state == UNIT_DROP)
			rs->c_unit_drop = STATS_DROP_BUFFER_FULL;
		drop(r, rs, db, STATS_DROP_BUFFER_FULL);
		return;
	}
	it->m.rs = rs;
	it->unit = rs->c_unit;
	it->unit_last = ends_unit(req, fi);
	it->read = d->read;
	it->ord.read = d->read;
	it->ord.owner = rs;
	it->ord.ends_txn = it->unit_last && !d->read;
	it->ord.key = it->unit_last && (fi->txn == FINGERPRINT_TXN_COMMIT ||
					fi->txn == FINGERPRINT_TXN_ROLLBACK)
			  ? it->ord.ts_start
			  : it->ord.ts_end;
	it->wrap = d->wrap;
	it->as_rollback = d->as_rollback;
	it->txn_start = d->txn_start;
	it->fingerprint = fi->fingerprint;
	it->no_compare = r->n_ignore && ignored(r, fi->fingerprint);
	compare_scope_of(&it->scope, r->cfg.compare == REPLAY_COMPARE_ROWS, req->suspended,
			 req->max_rows, fi->nondet != 0);
	it->pipe_ok =
	    req->kind == SESSION_REQ_EXECUTE ||
	    (req->kind == SESSION_REQ_QUERY && fi->parsed && fi->read_only && fi->statements == 1);
	/* counted before it is visible to the replay thread, which subtracts */
	atomic_fetch_add(&rs->queued, 1);
	atomic_fetch_add(&r->items, 1);
	bytes_add(r, it->bytes);
	if (d->hold) {
		if (rs->c_held_tail)
			rs->c_held_tail->next = it;
		else
			rs->c_held = it;
		rs->c_held_tail = it;
		return;
	}
	post_item(r, rs, it);
}

void replay_submit(struct replay *r, struct replay_session *rs, struct stats_db *db,
		   const struct session_request *req)
{
	struct fingerprint_info fi = {0};
	struct sampler_decision d;
	struct sampler_config sc;
	struct sampler_request sq;
	enum stats_skip_reason why;

	if (!r || !db || !req)
		return;
	stats_mirror_request(r->st, db);
	if (!rs || rs->c_off) {
		stats_mirror_skipped(r->st, db, STATS_SKIP_SESSION_STATE);
		return;
	}
	if (!rs->c_known) {
		stats_mirror_skipped(r->st, db, STATS_SKIP_UNKNOWN_DATABASE);
		return;
	}
	if (req->text)
		fingerprint_lookup(r->fp, req->text, req->text_len, &fi);
	sc.exposure = exposure_of(r, rs);
	sc.sampling = r->cfg.sampling;
	sc.level = r->cfg.level;
	sc.mode = r->cfg.mode;
	sc.aborted = r->cfg.aborted;
	sq.kind = req->kind;
	sq.txn_before = req->txn_before;
	sq.txn_after = req->kind == SESSION_REQ_EXECUTE ? 0 : req->txn_status;
	sq.sync_group = req->sync_group;
	sq.error = req->error;
	sq.tag = req->tag;
	sq.info = req->text ? &fi : NULL;
	sampler_decide(&sc, &rs->c_ss, &sq, &d);
	held_flush(r, rs, d.before);
	if (d.txn_start)
		unit_begin(r, rs, req);

	why = unreplayable(req);
	if (d.verdict == SAMPLER_NOT_SAMPLED) {
		stats_mirror_not_sampled(r->st, db);
	} else if (d.verdict == SAMPLER_SKIP) {
		stats_mirror_skipped(r->st, db, d.skip);
	} else if (why != STATS_SKIP_MAX) {
		stats_mirror_skipped(r->st, db, why);
		if (!(d.txn_start && ends_unit(req, &fi))) /* the rest would diverge */
			unit_cut(r, rs, STATS_ABORT_UNREPLAYABLE);
	} else if (atomic_load_explicit(&rs->capped, memory_order_relaxed)) {
		stats_mirror_skipped(r->st, db, STATS_SKIP_CONNECTION_CAP);
	} else {
		enqueue(r, rs, db, req, &d, &fi);
	}
	held_flush(r, rs, d.after);
	if (req->kind != SESSION_REQ_EXECUTE && req->txn_status == 'I')
		rs->c_unit_open = false;
}

void replay_session_event(struct replay *r, struct replay_session *rs, const struct session_info *s,
			  enum session_event ev)
{
	if (!r || !rs || !rs->c_known || rs->c_off)
		return;
	if (ev == SESSION_EV_SYNC) {
		if (rs->c_group_pending) /* the rest of its Sync group will not come */
			post_ctl(r, rs, CTL_SYNC, rs->c_unit, rs->c_group, 0);
		rs->c_group_pending = false;
		if (s->txn_status == 'I')
			rs->c_unit_open = false;
	} else if (ev == SESSION_EV_RESYNC && (rs->c_unit_open || rs->c_group_pending)) {
		unit_cut(r, rs, STATS_ABORT_CAPTURE_GAP); /* requests of it were lost */
	}
}

/* ---- SHOW MIRROR SESSIONS ---- */

static const char *const state_names[] = {
    [CONN_NONE] = "idle",     [CONN_CONNECTING] = "connecting",
    [CONN_SETUP] = "setup",   [CONN_IDLE] = "ready",
    [CONN_BUSY] = "busy",     [CONN_BACKOFF] = "backoff",
    [CONN_CAPPED] = "capped",
};

size_t replay_sessions(struct replay *r, struct replay_session_row *out, size_t cap)
{
	struct replay_session *s;
	size_t n = 0;
	int st;

	if (!r)
		return 0;
	pthread_mutex_lock(&r->list_lock);
	for (s = r->all; s; s = s->all_next, n++) {
		struct replay_session_row *row = &out[n];

		if (n >= cap)
			continue;
		memset(row, 0, sizeof(*row));
		row->id = s->id;
		snprintf(row->database, sizeof(row->database), "%s",
			 s->params ? s->params->database : "");
		snprintf(row->user, sizeof(row->user), "%s", s->params ? s->params->user : "");
		st = atomic_load_explicit(&s->pub_state, memory_order_relaxed);
		row->state = st >= 0 && st <= CONN_CAPPED ? state_names[st] : "?";
		row->queued = atomic_load_explicit(&s->queued, memory_order_relaxed);
		row->mirrored = atomic_load_explicit(&s->n_mirrored, memory_order_relaxed);
		row->errors = atomic_load_explicit(&s->n_errors, memory_order_relaxed);
		row->dropped = atomic_load_explicit(&s->n_dropped, memory_order_relaxed);
		row->skipped = atomic_load_explicit(&s->n_skipped, memory_order_relaxed);
	}
	pthread_mutex_unlock(&r->list_lock);
	return n;
}

void replay_set_log_mismatches(struct replay *r, uint32_t n)
{
	if (r)
		atomic_store(&r->log_mismatches, n);
}

/* ---- lifecycle ---- */

void replay_config_default(struct replay_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->queue = 100;
	cfg->queue_bytes = 64ull << 20;
	cfg->pipeline = 16;
	cfg->max_connections = 100;
	cfg->timeout_ms = 30000;
	cfg->order_wait_ms = 1000;
	cfg->backoff_max_ms = 30000;
	cfg->capture_port = DEFAULT_PGPORT;
	cfg->exposure = 1.0;
}

/* Checks the conninfo (libpq's own parser) and keeps its options setting. */
static int parse_mirror(struct replay *r, char *err, size_t errlen)
{
	PQconninfoOption *opts, *o;
	char *msg = NULL;

	opts = PQconninfoParse(r->mirror, &msg);
	if (!opts) {
		snprintf(err, errlen, "--mirror: %s",
			 msg ? strtok(msg, "\n") : "cannot parse the conninfo (out of memory)");
		PQfreemem(msg);
		return -EINVAL;
	}
	for (o = opts; o->keyword; o++)
		if (!strcmp(o->keyword, "options") && o->val)
			r->mirror_options = strdup(o->val);
	PQconninfoFree(opts);
	if (!r->mirror_options)
		r->mirror_options = strdup("");
	if (!r->mirror_options) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	return 0;
}

static int cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* mirror_compare_ignore: comma-separated fingerprints, 1-16 hex digits each, as
 * --log-mismatches prints them. */
static int parse_ignore(struct replay *r, const char *list, char *err, size_t errlen)
{
	const char *p = list;
	size_t n = 0;

	if (!list || !*list)
		return 0;
	for (; *p; p++)
		n += *p == ',';
	r->ignore = calloc(n + 1, sizeof(*r->ignore));
	if (!r->ignore) {
		snprintf(err, errlen, "out of memory");
		return -ENOMEM;
	}
	for (p = list; *p;) {
		size_t len;
		char *end;

		while (*p == ' ' || *p == ',')
			p++;
		len = strcspn(p, ", ");
		if (!len)
			break;
		errno = 0;
		r->ignore[r->n_ignore] = strtoull(p, &end, 16);
		if (len > 16 || end != p + len || errno || !isxdigit((unsigned char)*p)) {
			snprintf(err, errlen,
				 "mirror_compare_ignore: '%.*s' is not a fingerprint (1 to 16 hex "
				 "digits, as --log-mismatches prints them)",
				 (int)(len > 40 ? 40 : len), p);
			return -EINVAL;
		}
		r->n_ignore++;
		p += len;
	}
	qsort(r->ignore, r->n_ignore, sizeof(*r->ignore), cmp_u64);
	return 0;
}

struct replay *replay_start(const struct replay_config *cfg, struct stats *st, struct capture *cap,
			    char *err, size_t errlen)
{
	struct epoll_event ev = {.events = EPOLLIN, .data.ptr = NULL};
	struct replay *r = calloc(1, sizeof(*r));

	if (!r) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	r->epfd = r->efd = -1;
	pthread_mutex_init(&r->list_lock, NULL);
	r->lock_init = true;
	r->cfg = *cfg;
	if (!r->cfg.queue)
		r->cfg.queue = 1;
	if (r->cfg.backoff_max_ms < BACKOFF_MIN_MS)
		r->cfg.backoff_max_ms = BACKOFF_MIN_MS;
	r->st = st;
	r->cap = cap;
	r->mirror = strdup(cfg->mirror ? cfg->mirror : "");
	r->fp = fingerprint_cache_new(FP_CACHE_ENTRIES);
	buf_init(&r->row, 16u << 20);
	r->seed = now_ns() | 1;
	r->cfg.databases = NULL;
	r->cfg.n_databases = 0;
	r->cfg.compare_ignore = NULL;
	if (!r->cfg.queue_bytes)
		r->cfg.queue_bytes = 1;
	if (!r->mirror || order_init(&r->order, CHANNEL_ITEMS_MAX) || !r->fp || map_copy(r, cfg)) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	replay_set_exposure(r, NULL, cfg->exposure);
	replay_set_log_mismatches(r, cfg->log_mismatches);
	if (!cfg->mirror || !*cfg->mirror) {
		snprintf(err, errlen, "--mirror: empty conninfo");
		goto fail;
	}
	if (parse_mirror(r, err, errlen) || parse_ignore(r, cfg->compare_ignore, err, errlen))
		goto fail;
	r->cfg.mirror = r->mirror;
	r->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	r->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (r->efd < 0 || r->epfd < 0 || epoll_ctl(r->epfd, EPOLL_CTL_ADD, r->efd, &ev)) {
		snprintf(err, errlen, "mirror: cannot set up epoll: %s", strerror(errno));
		goto fail;
	}
	if (pthread_create(&r->thread, NULL, run, r)) {
		snprintf(err, errlen, "mirror: cannot start a thread");
		goto fail;
	}
	r->started = true;
	return r;
fail:
	replay_stop(r);
	return NULL;
}

void replay_stop(struct replay *r)
{
	uint64_t one = 1, now;

	if (!r)
		return;
	if (r->started) {
		atomic_store(&r->stop, true);
		if (write(r->efd, &one, sizeof(one)) < 0) {
			/* the counter is full: the thread is awake */
		}
		pthread_join(r->thread, NULL);
	}
	/* Single-threaded from here: whatever is still queued or in flight was not
	 * replayed. */
	drain(r);
	now = now_ns();
	while (r->all) {
		struct replay_session *s = r->all;

		inflight_finish(r, s, OUT_SKIP_SHUTDOWN, now);
		queue_finish_all(r, s, OUT_SKIP_SHUTDOWN, now);
		sess_free(r, s);
	}
	if (r->started)
		stats_mirror_set_buffer_utilization(r->st, 0);
	if (r->epfd >= 0)
		close(r->epfd);
	if (r->efd >= 0)
		close(r->efd);
	if (r->lock_init)
		pthread_mutex_destroy(&r->list_lock);
	order_free(&r->order);
	free(r->ignore);
	fingerprint_cache_free(r->fp);
	buf_free(&r->row);
	map_free(r);
	free(r->mirror_options);
	free(r->mirror);
	free(r);
}
