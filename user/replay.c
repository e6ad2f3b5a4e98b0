// SPDX-License-Identifier: BSD-2-Clause
/*
 * replay.c — the replay thread: channel, session state machine, ordering waits, control
 * messages, the epoll loop, SHOW MIRROR SESSIONS, start and stop. See replay_int.h.
 */
#define _GNU_SOURCE /* pthread_setname_np */
#include <sys/resource.h>

#include "redact.h"
#include "replay_int.h"

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

void replay_activate(struct replay *r, struct replay_session *s)
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

struct item *replay_queue_pop(struct replay_session *s)
{
	struct item *it = s->head;

	if (it) {
		s->head = it->next;
		if (!s->head)
			s->tail = NULL;
		it->next = NULL;
		if (it->unit_first) /* its transaction left the queue (started, or ended) */
			atomic_fetch_sub(&s->units, 1);
	}
	return it;
}

/* The item's time on the mirror: from its send to its answer (done_ns, else now); 0 when
 * it ended before the clock read at its send. */
static uint64_t mirror_elapsed(const struct item *it, uint64_t now)
{
	uint64_t done = it->done_ns ? it->done_ns : now;

	return done > it->sent_ns ? done - it->sent_ns : 0;
}

/*
 * The item's figures per statement: requests selected for the mirror (attempted, or
 * dropped waiting for a connection) count on the source; those the mirror answered
 * (success, query error, timeout) on the mirror as well. Skipped ones are not mirrored
 * requests.
 */
static void query_record(struct replay *r, const struct replay_session *s, const struct item *it,
			 enum outcome o, uint64_t now)
{
	struct explain *ex = atomic_load_explicit(&r->explain, memory_order_relaxed);
	struct querystats_obs ob;

	if (!r->qs || it->as_rollback || (o >= OUT_SKIP_STATE && o <= OUT_SKIP_ABORTED))
		return;
	memset(&ob, 0, sizeof(ob));
	ob.database = it->db->name;
	ob.fingerprint = it->text ? it->fingerprint : 0;
	ob.text = it->text;
	ob.source_ns = it->ord.ts_end > it->ord.ts_start ? it->ord.ts_end - it->ord.ts_start : 0;
	ob.source_error = it->src.error;
	ob.source_sqlstate = it->src.sqlstate;
	ob.mirror_answered = o == OUT_SUCCESS || o == OUT_QUERY || o == OUT_TIMEOUT;
	ob.mirror_ns = mirror_elapsed(it, now);
	ob.mirror_error = it->m_error || o == OUT_TIMEOUT;
	ob.mirror_sqlstate = o == OUT_TIMEOUT && !it->m_error ? "57014" : it->m_sqlstate;
	ob.mirror_only = o == OUT_QUERY || o == OUT_TIMEOUT;
	/* failing where the source did not is counted once, as mirror_only, not also as
	 * an sqlstate mismatch */
	ob.mismatch_kinds = ob.mirror_only ? it->m_kinds & ~(1u << COMPARE_SQLSTATE) : it->m_kinds;
	pthread_mutex_lock(&r->qs_lock);
	querystats_record(r->qs, &ob);
	pthread_mutex_unlock(&r->qs_lock);
	if (ex && ob.mirror_answered && s->params &&
	    explain_wants(ex, it->db->name, ob.fingerprint))
		explain_offer(ex, it->db->name, ob.fingerprint, s->params->database,
			      s->params->options, it->text, it->n_params, it->values, it->lengths,
			      it->formats);
}

/*
 * Gives an item its one outcome, then frees it: out of the heap, out of the session's
 * and the global counts. The caller has already unlinked it (queue_pop or s->cur).
 */
void replay_item_finish(struct replay *r, struct replay_session *s, struct item *it, enum outcome o,
			uint64_t now)
{
	if (it->ctl)
		goto release;
	if (o == OUT_CONNECTION && !it->unit_last) {
		s->dead_unit = it->unit; /* never run the rest of it on another connection */
		s->dead_outcome = OUT_CONNECTION;
	}
	if (o == OUT_SUCCESS && it->pool_act)
		replay_pool_note(s, it); /* a SET to carry, or state that pins */
	if (s->sets_pending && it->unit == s->sets_unit && it->unit_last)
		replay_pool_settle(s, !it->src.error && strcmp(it->src.verb, "ROLLBACK"),
				   o == OUT_SUCCESS && strcmp(s->run.verb, "ROLLBACK"));
	query_record(r, s, it, o, now);
	if (o == OUT_SUCCESS)
		atomic_fetch_add_explicit(&s->n_mirrored, 1, memory_order_relaxed);
	else if (o == OUT_QUERY || o == OUT_TIMEOUT || o == OUT_CONNECTION)
		atomic_fetch_add_explicit(&s->n_errors, 1, memory_order_relaxed);
	else if (o == OUT_POOL_WAIT)
		atomic_fetch_add_explicit(&s->n_dropped, 1, memory_order_relaxed);
	else
		atomic_fetch_add_explicit(&s->n_skipped, 1, memory_order_relaxed);
	switch (o) {
	case OUT_SUCCESS:
		stats_mirror_success(r->st, it->db, mirror_elapsed(it, now),
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
	case OUT_POOL_WAIT:
		stats_mirror_dropped_why(r->st, it->db, STATS_DROP_POOL_WAIT, now);
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
void replay_queue_finish_all(struct replay *r, struct replay_session *s, enum outcome o,
			     uint64_t now)
{
	struct item *it;

	while ((it = replay_queue_pop(s)))
		replay_item_finish(r, s, it, o, now);
}

/* ---- sessions (replay thread) ---- */

static void sess_free(struct replay *r, struct replay_session *s)
{
	if (replay_pool_can_release(s))
		replay_pool_release(r, s, now_ns());
	replay_conn_close(r, s); /* pinned, or inside a transaction: not reusable */
	replay_pool_leave(r, s);
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
	free(s);
}

/* Does the item belong to the Sync group left open on the connection? */
static bool group_continues(const struct replay_session *s, const struct item *it)
{
	return it && it->kind == SESSION_REQ_EXECUTE && it->sync_group == s->group_id &&
	       !it->as_rollback && !replay_is_copy(it) && !replay_susp_resumes(s, it);
}

/* Ends an open Sync group (its implicit transaction commits, as on the source). */
static void group_close(struct replay *r, struct replay_session *s, uint64_t now)
{
	replay_run_reset(s);
	s->run.pipeline = true;
	s->run.synced = true;
	if (!PQpipelineSync(s->c->conn) || !replay_conn_flush(s)) {
		replay_conn_lost(r, s, OUT_CONNECTION, now);
		return;
	}
	s->state = CONN_SETUP;
	s->deadline = replay_reply_deadline(r, now);
	s->unit_open = false;
	replay_conn_rewatch(r, s);
}

/* Is the mirror connection inside a transaction block? */
static bool in_txn(const struct replay_session *s)
{
	PGTransactionStatusType ts = s->c ? PQtransactionStatus(s->c->conn) : PQTRANS_UNKNOWN;

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
	replay_pool_settle(s, false, false); /* the source never committed it */
	replay_run_reset(s);
	if (s->group_open) {
		s->run.pipeline = true;
		s->run.synced = true;
		ok = PQsendQueryParams(s->c->conn, FORCE_ROLLBACK_SQL, 0, NULL, NULL, NULL, NULL,
				       0) &&
		     PQpipelineSync(s->c->conn);
	} else if (in_txn(s)) {
		ok = PQsendQuery(s->c->conn, "ROLLBACK");
	} else {
		return; /* nothing open here */
	}
	if (!ok || !replay_conn_flush(s)) {
		replay_conn_lost(r, s, OUT_CONNECTION, now);
		return;
	}
	s->state = CONN_SETUP;
	s->deadline = replay_reply_deadline(r, now);
	replay_conn_rewatch(r, s);
}

/* A control message at the head of an idle connection's queue. */
static void ctl_run(struct replay *r, struct replay_session *s, uint64_t now)
{
	struct item *it = replay_queue_pop(s);
	uint8_t ctl = it->ctl;
	uint64_t unit = it->unit, group = it->sync_group;

	replay_item_finish(r, s, it, OUT_SUCCESS, now); /* counts nothing: not a request */
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
	bool holding;		  /* the waiter holds its connection inside a transaction */
};

/* Does the session hold its mirror connection inside a transaction (it cannot give it
 * back before the transaction ends)? */
static bool holds_unit(const struct replay_session *s)
{
	return s->c && (s->unit_open || s->group_open || in_txn(s));
}

/* Keeps looking while every blocker seen has started on the mirror. A blocker whose
 * session waits for a pooled connection cannot start while the waiter holds one inside
 * a transaction (with every connection so held, never): it is passed over. */
static bool blocker_started(void *ctx, const struct order_item *a)
{
	struct stuck *k = ctx;
	const struct item *it = item_of(a);

	if (!it->sent_ns) {
		if (k->holding && it->m.rs->state == CONN_WAIT)
			return true;
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
 * start. When every one of them has been running on the mirror for order_wait_ms (or
 * waits for a pooled connection while this session holds one inside a transaction: see
 * blocker_started), the wait is given up (counted): the mirror's own lock waits are invisible here,
 * and a workload the replay cannot reproduce exactly (unsampled transactions, skipped statements)
 * could otherwise stall a session behind a mirror lock its own transaction holds.
 */
static bool must_wait(struct replay *r, struct item *it, uint64_t now, uint64_t *until)
{
	enum order_wait w;
	const struct order_item *a = order_blocker(&r->order, &it->ord, &w);
	struct stuck k = {.bound_ns = r->cfg.order_wait_ms * MS, .holding = holds_unit(it->m.rs)};

	*until = NEVER;
	if (!a)
		return false;
	if (!it->waited) {
		it->waited = true;
		stats_mirror_order_wait(r->st);
		if (w == ORDER_WAIT_LOCK)
			stats_mirror_lock_wait(r->st);
	}
	if (!item_of(a)->sent_ns && !k.holding) /* the common case, without a walk */
		return true;
	order_each_blocker(&r->order, &it->ord, blocker_started, &k);
	*until = k.until;
	if (now < k.until)
		return true;
	stats_mirror_order_timeout(r->st);
	return false;
}

static uint64_t sess_run(struct replay *r, struct replay_session *s, uint64_t now, bool *freed);

/* The session waited mirror_pool_wait_ms for a pooled connection: its head transaction
 * is dropped, with every later one whose first request the source completed at least
 * that long ago. */
static void pool_timeout(struct replay *r, struct replay_session *s, uint64_t now)
{
	uint64_t bound = (uint64_t)r->cfg.pool_wait_ms * MS;
	struct item *it;

	do {
		s->dead_unit = s->head->unit;
		s->dead_outcome = OUT_POOL_WAIT;
		stats_mirror_unit_aborted(r->st, STATS_ABORT_POOL_WAIT);
		while ((it = s->head) && (it->ctl || it->unit == s->dead_unit))
			replay_item_finish(r, s, replay_queue_pop(s),
					   it->ctl ? OUT_SUCCESS : OUT_POOL_WAIT, now);
	} while (s->head && s->head->ord.ts_end + bound <= now);
}

/* Must the session's head item wait before it starts: the source's gap
 * (mirror_replay_timing), or causal order? Until when (*until)? */
static bool due_later(struct replay *r, struct replay_session *s, struct item *it, uint64_t now,
		      uint64_t *until)
{
	if (r->cfg.replay_timing && !it->txn_start && s->last_sent &&
	    it->ord.ts_start > s->last_ts_start) { /* keep the source's gap */
		uint64_t due = s->last_sent + (it->ord.ts_start - s->last_ts_start);

		if (now < due) {
			*until = due;
			return true;
		}
	}
	return must_wait(r, it, now, until);
}

/* sess_run, then the step's pipelined sends leave (uncork). */
static uint64_t sess_step(struct replay *r, struct replay_session *s, uint64_t now, bool *freed)
{
	uint64_t d = sess_run(r, s, now, freed);

	if (!*freed)
		replay_uncork(s);
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
	bool wait;

	*freed = false;
	for (;;) {
		while ((it = s->head) && !it->ctl && s->dead_unit && it->unit == s->dead_unit)
			replay_item_finish(r, s, replay_queue_pop(s), (enum outcome)s->dead_outcome,
					   now); /* its transaction is lost */
		if (it && it->ctl && s->state != CONN_IDLE && s->state != CONN_BUSY &&
		    s->state != CONN_SETUP && s->state != CONN_CONNECTING) {
			replay_item_finish(r, s, replay_queue_pop(s), OUT_SUCCESS,
					   now); /* no transaction here */
			continue;
		}
		switch (s->state) {
		case CONN_BACKOFF:
			if (now < s->deadline) {
				replay_queue_finish_all(r, s, OUT_CONNECTION, now);
				goto settled;
			}
			s->state = CONN_NONE;
			continue;
		case CONN_NONE:
			if (!s->head) {
				if (!s->preconnect || s->closed)
					goto settled;
				s->preconnect = false; /* warm the pool: its first connection */
				if (!replay_pool_warm(r, s))
					goto settled;
			} else if (due_later(r, s, s->head, now, &until)) {
				return until; /* no connection is held while it waits */
			}
			s->preconnect = false;
			s->ever_connected = true;
			replay_pool_acquire(r, s, now);
			continue;
		case CONN_WAIT:
			if (!s->head) {
				replay_pool_unwait(r, s);
				s->state = CONN_NONE;
				goto settled;
			}
			replay_pool_acquire(r, s, now);
			if (s->state != CONN_WAIT)
				continue;
			if (now < s->deadline && s != s->pool->wait_head) {
				/* only the first waiter is stepped each pass (the others are
				 * activated when they come first, or by a new item) */
				deactivate(r, s);
				return NEVER;
			}
			if (now < s->deadline)
				return s->deadline;
			/* no connection in time: the transaction is dropped whole, and so is
			 * every one queued behind it that the source completed longer ago than
			 * the bound (they have waited as long) */
			replay_pool_unwait(r, s);
			s->state = CONN_NONE;
			pool_timeout(r, s, now);
			continue;
		case CONN_CONNECTING:
		case CONN_SETUP:
		case CONN_BUSY:
			if (s->state == CONN_BUSY && s->piping && s->n_sent + 1 < r->cfg.pipeline &&
			    replay_pipelinable(r, s, s->head) &&
			    !must_wait(r, s->head, now, &until)) {
				replay_pipe_append(r, s, now);
				continue;
			}
			if (now < s->deadline)
				return s->deadline;
			if (s->state == CONN_CONNECTING)
				replay_conn_failed(r, s, now);
			else /* no answer long past statement_timeout */
				replay_conn_lost(r, s, OUT_TIMEOUT, now);
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
			/* between transactions the connection goes back when there is nothing
			 * to run, causal order makes the next request wait, or another
			 * session waits for the pool */
			if (!it) {
				if (!replay_pool_can_release(s))
					goto settled;
				replay_pool_release(r, s, now);
				continue;
			}
			wait = due_later(r, s, it, now, &until);
			if ((wait || replay_pool_contended(s)) && replay_pool_can_release(s)) {
				replay_pool_release(r, s, now);
				continue;
			}
			if (wait)
				return until;
			replay_item_start(r, s, now);
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

/*
 * True when the session's answer, if one is coming, can be read late: nothing of the
 * session is queued behind it (so no request, no causal-order waiter of another session
 * and no pool waiter depends on it: those are queued items of active sessions), it is a
 * plain request with a small answer ending with ReadyForQuery (which mirror_rx sees), and
 * the connection is neither being made nor set up. Its latency does not move: the kernel
 * timed its arrival.
 */
static bool answer_can_wait(const struct replay_session *s)
{
	const struct item *it = s->cur;

	if (s->head)
		return false;
	if (s->state == CONN_NONE || s->state == CONN_IDLE)
		return true;
	return s->state == CONN_BUSY && it && s->c && s->c->rx_slot >= 0 &&
	       it->stage == STAGE_MAIN && !s->run.copy_in && !s->run.copy_out &&
	       (!s->run.pipeline || s->run.synced) && it->src.rows <= LAZY_MAX_ROWS;
}

/* Steps every active session; returns the epoll timeout (ms) until the next deadline. */
static int step_all(struct replay *r, uint64_t now)
{
	struct replay_session *s, *next;
	uint64_t wake = NEVER, d;
	unsigned int util = 0, u;
	bool freed, lazy_busy;

	r->rerun = false;
	r->lazy_ok = true;
	r->lazy_txn = false;
	lazy_busy = false;
	for (s = r->active; s; s = next) {
		next = s->act_next;
		d = sess_step(r, s, now, &freed);
		if (d < wake)
			wake = d;
		if (freed)
			continue;
		if (r->lazy_ok && !answer_can_wait(s))
			r->lazy_ok = false;
		else if (s->state == CONN_BUSY)
			lazy_busy = true;
		if (s->unit_open && s->c)
			r->lazy_txn = true;
		atomic_store_explicit(&s->pub_state, (int)s->state, memory_order_relaxed);
		u = (unsigned int)((uint64_t)atomic_load_explicit(&s->units, memory_order_relaxed) *
				   100 / r->cfg.queue);
		if (u > util)
			util = u;
	}
	r->lazy_ok = r->lazy_ok && lazy_busy; /* idle: the usual sleep */
	if (util > 100)
		util = 100;
	if (util != r->last_util) {
		stats_mirror_set_buffer_utilization(r->st, util);
		r->last_util = util;
	}
	stats_mirror_set_queue_bytes(r->st, atomic_load(&r->item_bytes),
				     atomic_load(&r->bytes_peak));
	replay_pool_publish(r);
	/* a pooled connection was handed to a session during the pass, which may have been
	 * stepped already: step it again without waiting for an event */
	if (r->rerun)
		return 0;
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
	double e;

	for (m = chan_take(r); m; m = next) {
		next = m->next;
		s = m->rs;
		switch (m->kind) {
		case MSG_OPEN:
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
			/* connect now: a session's first requests (a pool's burst) must not
			 * pile up behind its connection being made; unless the session may
			 * well never be replayed (exposure 0, or sampled per session) */
			e = replay_exposure_of(r, s);
			s->preconnect = !s->ever_connected && e > 0 &&
					(r->cfg.sampling == REPLAY_SAMPLE_TRANSACTION || e >= 1);
			replay_activate(r, s);
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
			replay_activate(r, s);
			break;
		case MSG_CLOSE:
			s->closed = true;
			replay_activate(r, s);
			break;
		}
	}
}

/*
 * The replay thread needs a few percent of a CPU, promptly: on a CPU saturated by the
 * source (hundreds of runnable backends) it waited 100-370 ms per wakeup at nice 0
 * (measured, tests/bench/scale.py), and its pooled connections idled meanwhile. A nice
 * value changes when it runs, not how much it runs.
 */
static void set_nice(const struct replay *r)
{
	if (r->cfg.nice && setpriority(PRIO_PROCESS, (id_t)gettid(), r->cfg.nice))
		fprintf(stderr,
			"pgshadow: WARN: mirror: cannot set the replay thread's nice value to %d: "
			"%s (it keeps %d; needs CAP_SYS_NICE)\n",
			r->cfg.nice, strerror(errno), getpriority(PRIO_PROCESS, (id_t)gettid()));
}

/*
 * The lazy tick (lazy_wait): reads the busy connections mirror_rx saw an answer end (or
 * the connection end) on since their last read, known from its shared memory rather than
 * from epoll, so a connection with nothing to read costs no system call.
 */
static void read_arrived(struct replay *r, uint64_t now)
{
	struct replay_session *s, *next;
	struct capture_rx_slot v;

	for (s = r->active; s; s = next) {
		next = s->act_next; /* reading s may activate others, never removes next */
		if (s->state == CONN_BUSY && s->c && capture_rx_read(r->cap, s->c->rx_slot, &v) &&
		    (v.ends > s->c->rx_next || v.fin != s->c->rx_fin))
			replay_conn_event(r, s, EPOLLIN, now);
	}
}

/* Handles the n events epoll returned, then frees the connections closed meanwhile. */
static void handle_events(struct replay *r, const struct epoll_event *ev, int n)
{
	uint64_t now = now_ns();
	struct mconn *c;
	int i;

	for (i = 0; i < n; i++) {
		if (!ev[i].data.ptr)
			continue; /* the eventfd (edge-triggered: never read) */
		c = ev[i].data.ptr;
		if (!c->conn)
			continue; /* closed earlier in this batch */
		if (c->owner)
			replay_conn_event(r, c->owner, ev[i].events, now);
		else
			replay_pool_idle_event(r, c);
	}
	replay_pool_bury(r);
}

/*
 * Asleep while every answer in flight can wait (step_all's lazy_ok): for one capture poll
 * at most, without telling the capture thread unless a transaction is open on the mirror
 * (sleeping stays false, so it posts new requests without writing the eventfd: they are
 * taken when this returns). Then the answers mirror_rx saw come are read, and every
 * LAZY_WAKE_MS every other event is collected from epoll. Returns those events' count
 * (ev).
 */
static int lazy_wait(struct replay *r, struct epoll_event *ev, int timeout)
{
	uint64_t now;
	int n = 0;

	if (timeout < 0 || timeout > LAZY_TICK_MS)
		timeout = LAZY_TICK_MS;
	/* a transaction open on the mirror holds its locks until its next statement comes:
	 * that one is sent at once (the capture thread wakes us, as in the epoll sleep) */
	if (r->lazy_txn)
		atomic_store(&r->sleeping, true);
	if (!atomic_load(&r->chan))
		n = epoll_wait(r->ev_ep, ev, 1, timeout);
	atomic_store(&r->sleeping, false);
	if (n < 0)
		return 0; /* EINTR: the loop goes on */
	now = now_ns();
	read_arrived(r, now);
	if (now - r->last_harvest < LAZY_WAKE_MS * MS)
		return 0;
	r->last_harvest = now;
	return epoll_wait(r->epfd, ev, EVENTS_MAX, 0);
}

static void *run(void *arg)
{
	struct replay *r = arg;
	struct epoll_event ev[EVENTS_MAX];
	int n, timeout;

	set_nice(r);
	sem_post(&r->running);

	while (!atomic_load(&r->stop)) {
		drain(r);
		timeout = step_all(r, now_ns());
		if (r->lazy_ok && timeout != 0) {
			n = lazy_wait(r, ev, timeout);
			handle_events(r, ev, n);
			continue;
		}
		/* asleep from here: a message posted after this store wakes us (replay_wake);
		 * one posted before it is seen here, and we only look for events */
		atomic_store(&r->sleeping, true);
		if (atomic_load(&r->chan))
			timeout = 0;
		n = epoll_wait(r->epfd, ev, EVENTS_MAX, timeout);
		atomic_store(&r->sleeping, false);
		r->last_harvest = now_ns();
		handle_events(r, ev, n);
	}
	return NULL;
}

/* ---- SHOW MIRROR SESSIONS ---- */

static const char *const state_names[] = {
    [CONN_NONE] = "idle",    [CONN_CONNECTING] = "connecting",
    [CONN_SETUP] = "setup",  [CONN_IDLE] = "ready",
    [CONN_BUSY] = "busy",    [CONN_BACKOFF] = "backoff",
    [CONN_WAIT] = "waiting",
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
		row->state = st >= 0 && st <= CONN_WAIT ? state_names[st] : "?";
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

/* ---- per-statement figures (any thread) ---- */

size_t replay_query_rows(struct replay *r, const struct querystats_config *th, const char *database,
			 enum querystats_sort sort, struct querystats_row *out, size_t cap)
{
	size_t n;

	if (!r || !r->qs)
		return 0;
	pthread_mutex_lock(&r->qs_lock);
	querystats_set_thresholds(r->qs, th);
	n = querystats_rows(r->qs, database, sort, out, cap);
	pthread_mutex_unlock(&r->qs_lock);
	return n;
}

size_t replay_query_regressed(struct replay *r, const struct querystats_config *th,
			      char (*names)[QUERYSTATS_DB_MAX], uint64_t *counts, size_t cap)
{
	size_t n;

	if (!r || !r->qs)
		return 0;
	pthread_mutex_lock(&r->qs_lock);
	querystats_set_thresholds(r->qs, th);
	n = querystats_regressed_by_db(r->qs, names, counts, cap);
	pthread_mutex_unlock(&r->qs_lock);
	return n;
}

uint64_t replay_query_regressed_total(struct replay *r, const struct querystats_config *th,
				      const char *database)
{
	uint64_t n;

	if (!r || !r->qs)
		return 0;
	pthread_mutex_lock(&r->qs_lock);
	querystats_set_thresholds(r->qs, th);
	n = querystats_regressed(r->qs, database);
	pthread_mutex_unlock(&r->qs_lock);
	return n;
}

void replay_query_counts(struct replay *r, struct querystats_counts *out)
{
	memset(out, 0, sizeof(*out));
	if (!r || !r->qs)
		return;
	pthread_mutex_lock(&r->qs_lock);
	querystats_counts(r->qs, out);
	pthread_mutex_unlock(&r->qs_lock);
}

void replay_query_set_plan(struct replay *r, const char *database, uint64_t fingerprint,
			   const char *plan)
{
	if (!r || !r->qs)
		return;
	pthread_mutex_lock(&r->qs_lock);
	querystats_set_plan(r->qs, database, fingerprint, plan);
	pthread_mutex_unlock(&r->qs_lock);
}

void replay_set_explain(struct replay *r, struct explain *ex)
{
	if (r)
		atomic_store(&r->explain, ex);
}

void replay_query_reset(struct replay *r)
{
	if (!r || !r->qs)
		return;
	pthread_mutex_lock(&r->qs_lock);
	querystats_reset(r->qs);
	pthread_mutex_unlock(&r->qs_lock);
}

/* ---- lifecycle ---- */

void replay_config_default(struct replay_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->queue = 1000;
	cfg->queue_bytes = 64ull << 20;
	cfg->pipeline = 16;
	cfg->max_connections = 100;
	cfg->pool_wait_ms = 5000;
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
		char why[512];

		redact_libpq_message(r->mirror,
				     msg ? msg : "cannot parse the conninfo (out of memory)", why,
				     sizeof(why));
		snprintf(err, errlen, "--mirror: %s", why);
		PQfreemem(msg);
		return -EINVAL;
	}
	for (o = opts; o->keyword; o++)
		if (!strcmp(o->keyword, "options") && o->val)
			r->mirror_options = strdup(o->val);
		else if (!strcmp(o->keyword, "password") && o->val && *o->val)
			r->password = strdup(o->val);
	PQconninfoFree(opts);
	if (!r->mirror_options)
		r->mirror_options = strdup("");
	if (!r->mirror_options) {
		snprintf(err, errlen, "mirror: out of memory");
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
		snprintf(err, errlen, "mirror: out of memory");
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
	struct epoll_event ev = {.events = EPOLLIN | EPOLLET, .data.ptr = NULL};
	struct replay *r = calloc(1, sizeof(*r));

	if (!r) {
		snprintf(err, errlen, "mirror: out of memory");
		return NULL;
	}
	r->epfd = r->efd = r->ev_ep = -1;
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
	pthread_mutex_init(&r->qs_lock, NULL);
	if (cfg->max_query_stats) {
		struct querystats_config qc;

		querystats_config_default(&qc);
		qc.max_entries = cfg->max_query_stats;
		r->qs = querystats_new(&qc, fingerprint_normalize);
		if (!r->qs) {
			snprintf(err, errlen, "mirror: out of memory (max_query_stats)");
			goto fail;
		}
	}
	buf_init(&r->row, 16u << 20);
	r->seed = now_ns() | 1;
	r->cfg.databases = NULL;
	r->cfg.n_databases = 0;
	r->cfg.compare_ignore = NULL;
	if (!r->cfg.queue_bytes)
		r->cfg.queue_bytes = 1;
	if (!r->mirror || order_init(&r->order, CHANNEL_ITEMS_MAX) || !r->fp ||
	    replay_map_copy(r, cfg)) {
		snprintf(err, errlen, "mirror: out of memory");
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
	r->ev_ep = epoll_create1(EPOLL_CLOEXEC);
	if (r->efd < 0 || r->epfd < 0 || r->ev_ep < 0 ||
	    epoll_ctl(r->epfd, EPOLL_CTL_ADD, r->efd, &ev) ||
	    epoll_ctl(r->ev_ep, EPOLL_CTL_ADD, r->efd, &ev)) {
		snprintf(err, errlen, "mirror: cannot set up epoll: %s", strerror(errno));
		goto fail;
	}
	sem_init(&r->running, 0, 0);
	if (pthread_create(&r->thread, NULL, run, r)) {
		snprintf(err, errlen, "mirror: cannot start a thread");
		goto fail;
	}
	/* its nice value is set before the caller may give up the privilege (--user) */
	while (sem_wait(&r->running) && errno == EINTR)
		;
	pthread_setname_np(r->thread, "pgshadow-replay"); /* top -H, perf, /proc */
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

		replay_inflight_finish(r, s, OUT_SKIP_SHUTDOWN, now);
		replay_queue_finish_all(r, s, OUT_SKIP_SHUTDOWN, now);
		sess_free(r, s);
	}
	replay_pool_free_all(r);
	if (r->started)
		stats_mirror_set_buffer_utilization(r->st, 0);
	if (r->epfd >= 0)
		close(r->epfd);
	if (r->ev_ep >= 0)
		close(r->ev_ep);
	if (r->efd >= 0)
		close(r->efd);
	if (r->lock_init)
		pthread_mutex_destroy(&r->list_lock);
	order_free(&r->order);
	free(r->ignore);
	fingerprint_cache_free(r->fp);
	querystats_free(r->qs);
	pthread_mutex_destroy(&r->qs_lock);
	buf_free(&r->row);
	replay_map_free(r);
	sem_destroy(&r->running);
	free(r->mirror_options);
	free(r->password);
	free(r->mirror);
	free(r);
}
