// SPDX-License-Identifier: BSD-2-Clause
/*
 * replay_pool.c — pooled mirror connections (transaction mode, as PgBouncer and PgDog
 * pool). See replay_int.h and docs/DESIGN.md, "Pooled mirror".
 *
 * A pool holds the mirror connections of one startup identity (struct params: database,
 * user, options, client_encoding, application_name), so that a borrowed connection
 * already has the session's startup settings. A session borrows a connection when its
 * head item is due, and gives it back when it is idle between transactions (no
 * transaction block or Sync group open on the mirror) and has nothing queued, must wait
 * for causal order, or another session waits for the pool. Its session-level SET/RESET
 * statements are recorded and applied (after RESET ALL) on a connection whose applied
 * settings differ; its named statements are prepared again, lazily, on a connection
 * that lacks them (replay_conn.c). State that cannot move (temporary objects, advisory
 * locks, WITH HOLD cursors, LISTEN, SQL PREPARE, set_config(..., false): fingerprint.h's
 * FINGERPRINT_POOL_PIN) pins the connection to the session until the session ends; it is then
 * closed.
 *
 * mirror_max_connections bounds every pool's connections together. At the cap a session
 * waits, in the source order of its next request, at most mirror_pool_wait_ms; an idle connection
 * of another pool is closed to make room. A session never holds a connection while it waits for
 * causal order outside a transaction, so pool waits and order waits cannot hold each other up for
 * longer than the pool wait.
 */
#include "replay_int.h"

#define SETS_MAX 8192 /* bytes of recorded SET statements; more pins the session */

/* ---- pools ---- */

static const char *const *identity(const struct params *p, const char *out[5])
{
	out[0] = p->database;
	out[1] = p->user;
	out[2] = p->options;
	out[3] = p->client_encoding;
	out[4] = p->application_name;
	return out;
}

static uint64_t identity_hash(const struct params *p)
{
	const char *id[5];
	uint64_t h = FNV_INIT;
	int i;

	identity(p, id);
	for (i = 0; i < 5; i++)
		h = fnv(h, id[i], strlen(id[i]) + 1);
	return h;
}

static bool identity_equal(const struct params *a, const struct params *b)
{
	const char *x[5], *y[5];
	int i;

	identity(a, x);
	identity(b, y);
	for (i = 0; i < 5; i++)
		if (strcmp(x[i], y[i]))
			return false;
	return true;
}

/* A copy of the identity strings the pool keeps (the session's params may go). */
static struct params *identity_copy(const struct params *p)
{
	const char *id[5];
	size_t len[5], total = 0;
	struct params *c;
	char *w;
	int i;

	identity(p, id);
	for (i = 0; i < 5; i++)
		total += (len[i] = strlen(id[i]) + 1);
	c = calloc(1, sizeof(*c) + total);
	if (!c)
		return NULL;
	w = c->strings;
	c->database = memcpy(w, id[0], len[0]);
	c->user = memcpy(w += len[0], id[1], len[1]);
	c->options = memcpy(w += len[1], id[2], len[2]);
	c->client_encoding = memcpy(w += len[2], id[3], len[3]);
	c->application_name = memcpy(w += len[3], id[4], len[4]);
	return c;
}

static void pool_unref(struct pool *p)
{
	p->n_clients--; /* freed by pools_collect once it holds nothing */
}

/* The pool of the session's current params (found, or made). NULL on ENOMEM. */
static struct pool *pool_of(struct replay *r, struct replay_session *s)
{
	uint64_t key;
	struct pool *p;

	if (s->pool && s->pool_params == s->params)
		return s->pool;
	if (s->pool) {
		s->pool_params = NULL;
		pool_unref(s->pool);
		s->pool = NULL;
	}
	key = identity_hash(s->params);
	for (p = r->pools; p; p = p->next)
		if (p->key == key && identity_equal(p->params, s->params))
			break;
	if (!p) {
		p = calloc(1, sizeof(*p));
		if (!p || !(p->params = identity_copy(s->params))) {
			free(p);
			return NULL;
		}
		p->key = key;
		pthread_mutex_lock(&r->list_lock);
		p->next = r->pools;
		r->pools = p;
		pthread_mutex_unlock(&r->list_lock);
	}
	p->n_clients++;
	s->pool = p;
	s->pool_params = s->params;
	return p;
}

/* ---- waiting ---- */

static void wait_publish(struct pool *p)
{
	atomic_store(&p->oldest_wait, p->wait_head ? p->wait_head->wait_since : 0);
}

/* When the session's next request started on the source (waiters are served in that
 * order: causal and lock order only ever make a request wait for earlier ones, so the
 * earliest waiter is never waiting for one behind it). */
static uint64_t wait_key(const struct replay_session *s)
{
	return s->head ? s->head->ord.ts_start : 0;
}

static void wait_enter(struct replay *r, struct replay_session *s, struct pool *p, uint64_t now)
{
	struct replay_session **pp;

	if (!s->waiting) {
		s->waiting = true;
		s->wait_since = now;
		for (pp = &p->wait_head; *pp && wait_key(*pp) <= wait_key(s);
		     pp = &(*pp)->wait_next)
			;
		s->wait_next = *pp;
		*pp = s;
		atomic_fetch_add(&p->n_waiting, 1);
		wait_publish(p);
		s->deadline = now + (uint64_t)r->cfg.pool_wait_ms * MS;
	}
	s->state = CONN_WAIT;
}

void replay_pool_unwait(struct replay *r, struct replay_session *s)
{
	struct pool *p = s->pool;
	struct replay_session **pp;

	if (!s->waiting)
		return;
	for (pp = &p->wait_head; *pp; pp = &(*pp)->wait_next) {
		if (*pp != s)
			continue;
		*pp = s->wait_next;
		break;
	}
	s->waiting = false;
	s->wait_next = NULL;
	atomic_fetch_sub(&p->n_waiting, 1);
	wait_publish(p);
	if (p->wait_head) { /* the next waiter may take what is left */
		replay_activate(r, p->wait_head);
		r->rerun = true;
	}
}

/* A connection was given back or closed: the first waiter of every pool tries again. */
static void wake_waiters(struct replay *r)
{
	struct pool *p;

	for (p = r->pools; p; p = p->next) {
		if (p->wait_head) {
			replay_activate(r, p->wait_head);
			r->rerun = true;
		}
	}
}

/* ---- connections ---- */

static void attach(struct replay *r, struct replay_session *s, struct mconn *c)
{
	c->owner = s;
	s->c = c;
	s->state = CONN_IDLE;
	s->deadline = NEVER;
	(void)r;
}

/* Closes an idle connection (unlinked from its pool's list by the caller). */
static void idle_close(struct replay *r, struct mconn *c)
{
	replay_mconn_close(r, c);
}

/* Takes the pool's most recently used idle connection that is still good. */
static struct mconn *idle_take(struct replay *r, struct pool *p)
{
	struct mconn *c;

	while ((c = p->idle)) {
		p->idle = c->next;
		c->next = NULL;
		if (PQstatus(c->conn) == CONNECTION_OK)
			break;
		idle_close(r, c); /* the mirror closed it while it was idle */
	}
	if (c) {
		atomic_fetch_sub(&p->n_idle, 1);
		atomic_fetch_add(&p->n_active, 1);
	}
	return c;
}

/* At the cap: closes one idle connection of another pool to make room. */
static bool evict_other(struct replay *r, const struct pool *mine)
{
	struct pool *p;
	struct mconn *c;

	for (p = r->pools; p; p = p->next) {
		if (p == mine || !p->idle)
			continue;
		c = p->idle;
		p->idle = c->next;
		c->next = NULL;
		idle_close(r, c);
		return true;
	}
	return false;
}

/* Makes a new connection for the session (CONN_CONNECTING, or CONN_BACKOFF). */
static void open_new(struct replay *r, struct replay_session *s, struct pool *p, uint64_t now)
{
	struct mconn *c = calloc(1, sizeof(*c));

	if (!c) {
		replay_queue_finish_all(r, s, OUT_CONNECTION, now);
		return;
	}
	c->pool = p;
	c->fd = -1;
	c->rx_slot = -1;
	c->connecting = true;
	atomic_fetch_add(&p->n_active, 1);
	atomic_fetch_add(&p->n_login, 1);
	if (++r->n_conns > r->pool_stats.peak)
		r->pool_stats.peak = r->n_conns;
	c->owner = s;
	s->c = c;
	replay_conn_open(r, s, now);
}

/* Sends the session's settings when the connection's differ (CONN_SETUP). */
static void settings_apply(struct replay *r, struct replay_session *s, uint64_t now)
{
	struct mconn *c = s->c;
	struct buf b;

	if (c->sets == s->sets_hash)
		return;
	buf_init(&b, SETS_MAX + 4096);
	/* RESET ALL leaves the role alone: SESSION AUTHORIZATION DEFAULT resets it */
	buf_printf(&b, "RESET ALL; SET SESSION AUTHORIZATION DEFAULT; ");
	if (r->cfg.set_role && *s->params->user && strcmp(s->params->user, SESSION_UNKNOWN)) {
		char *ident = PQescapeIdentifier(c->conn, s->params->user, strlen(s->params->user));

		if (ident)
			buf_printf(&b, "SET ROLE %s; ", ident);
		PQfreemem(ident);
	}
	if (s->sets_len)
		buf_append(&b, s->sets, s->sets_len);
	c->sets = s->sets_hash;
	if (b.overflow || !buf_append(&b, "", 1)) {
		buf_free(&b);
		replay_conn_lost(r, s, OUT_CONNECTION, now);
		return;
	}
	replay_run_reset(s);
	if (!PQsendQuery(c->conn, b.data) || !replay_conn_flush(s)) {
		buf_free(&b);
		replay_conn_lost(r, s, OUT_CONNECTION, now);
		return;
	}
	buf_free(&b);
	s->state = CONN_SETUP;
	s->deadline = replay_reply_deadline(r, now);
	replay_conn_rewatch(r, s);
}

void replay_pool_acquire(struct replay *r, struct replay_session *s, uint64_t now)
{
	struct pool *p = s->params ? pool_of(r, s) : NULL;
	struct mconn *c;

	if (!p) {
		replay_queue_finish_all(r, s, OUT_SKIP_STATE, now);
		return;
	}
	/* in source order: a session does not jump an earlier waiter */
	if (p->wait_head && p->wait_head != s && wait_key(p->wait_head) <= wait_key(s)) {
		wait_enter(r, s, p, now);
		return;
	}
	c = idle_take(r, p);
	if (c) {
		replay_pool_unwait(r, s);
		attach(r, s, c);
		settings_apply(r, s, now);
		return;
	}
	if (r->n_conns < r->cfg.max_connections || evict_other(r, p)) {
		replay_pool_unwait(r, s);
		open_new(r, s, p, now);
		return;
	}
	wait_enter(r, s, p, now);
}

/* The connection is made: settings, then ready (replay_conn.c's conn_ready). */
void replay_pool_connected(struct replay *r, struct replay_session *s, uint64_t now)
{
	struct mconn *c = s->c;

	c->connecting = false;
	atomic_fetch_sub(&c->pool->n_login, 1);
	if (s->state == CONN_IDLE && s->sets_hash)
		settings_apply(r, s, now);
}

bool replay_pool_can_release(const struct replay_session *s)
{
	PGTransactionStatusType ts;

	if (!s->c || s->state != CONN_IDLE || s->cur || s->sent_head || s->group_open ||
	    s->unit_open || s->pinned || s->c->connecting)
		return false;
	ts = PQtransactionStatus(s->c->conn);
	return ts == PQTRANS_IDLE;
}

bool replay_pool_contended(const struct replay_session *s)
{
	/* a waiter that would get the connection: one whose next request is earlier (a
	 * session earlier than every waiter would take it straight back) */
	return s->pool && s->pool->wait_head && wait_key(s->pool->wait_head) <= wait_key(s);
}

/* Gives the pool's first waiter an idle connection, now: a waiter is not stepped again
 * before the next pass, so leaving the connection idle for it to find would serve one
 * waiter per pass. */
static void serve_waiter(struct replay *r, struct pool *p, uint64_t now)
{
	struct replay_session *w = p->wait_head;
	struct mconn *c;

	if (!w || !(c = idle_take(r, p)))
		return;
	replay_pool_unwait(r, w);
	attach(r, w, c);
	replay_activate(r, w);
	r->rerun = true;
	settings_apply(r, w, now);
}

void replay_pool_release(struct replay *r, struct replay_session *s, uint64_t now)
{
	struct mconn *c = s->c;
	struct pool *p = c->pool;

	replay_uncork(s);
	c->owner = NULL;
	c->next = p->idle;
	p->idle = c;
	atomic_fetch_sub(&p->n_active, 1);
	atomic_fetch_add(&p->n_idle, 1);
	s->c = NULL;
	s->state = CONN_NONE;
	s->deadline = NEVER;
	s->n_susp = 0;
	replay_run_reset(s);
	if (p->wait_head)
		serve_waiter(r, p, now);
	else
		wake_waiters(r); /* another pool's waiter may close it to make room */
}

void replay_pool_forget(struct replay *r, struct mconn *c)
{
	struct pool *p = c->pool;

	if (c->owner) {
		atomic_fetch_sub(&p->n_active, 1);
		if (c->connecting)
			atomic_fetch_sub(&p->n_login, 1);
		if (c->pinned)
			atomic_fetch_sub(&p->n_pinned, 1);
		c->owner = NULL;
	} else {
		atomic_fetch_sub(&p->n_idle, 1);
	}
	r->n_conns--;
	c->next = r->graveyard;
	r->graveyard = c;
	wake_waiters(r);
}

/* DISCARD ALL ran: the session and its connection start over (nothing pins). */
static void discard(struct replay_session *s)
{
	s->sets_len = 0;
	s->sets_hash = 0;
	s->sets_pending = false;
	s->c->sets = 0;
	if (s->pinned) {
		s->pinned = false;
		s->c->pinned = false;
		atomic_fetch_sub(&s->c->pool->n_pinned, 1);
	}
}

void replay_pool_note(struct replay_session *s, const struct item *it)
{
	size_t len = strlen(it->text);
	char *grown;

	if (!s->c)
		return;
	if (it->pool_act == POOL_ACT_DISCARD) {
		discard(s);
		return;
	}
	if (s->pinned)
		return;
	if (it->pool_act == POOL_ACT_SET && s->sets_len + len + 2 <= SETS_MAX) {
		grown = realloc(s->sets, s->sets_len + len + 2);
		if (grown) {
			if (s->sets_pending && it->unit != s->sets_unit)
				s->sets_pending = false; /* its end went unseen: kept */
			if (!it->unit_last && !s->sets_pending) {
				/* inside a transaction: a rollback takes it back */
				s->sets_pending = true;
				s->sets_unit = it->unit;
				s->sets_kept_len = s->sets_len;
				s->sets_kept_hash = s->sets_hash;
			}
			s->sets = grown;
			memcpy(s->sets + s->sets_len, it->text, len);
			memcpy(s->sets + s->sets_len + len, "; ", 2);
			s->sets_len += len + 2;
			s->sets_hash =
			    fnv(s->sets_hash ? s->sets_hash : FNV_INIT, it->text, len + 1);
			if (!s->sets_hash)
				s->sets_hash = 1;
			s->c->sets = s->sets_hash; /* it ran here */
			return;
		}
	}
	s->pinned = true; /* a PIN, or more settings than we keep */
	s->c->pinned = true;
	atomic_fetch_add(&s->c->pool->n_pinned, 1);
}

void replay_pool_settle(struct replay_session *s, bool source_kept, bool mirror_kept)
{
	if (!s->sets_pending)
		return;
	s->sets_pending = false;
	if (s->c && !mirror_kept)
		s->c->sets = s->sets_kept_hash; /* the server took them back */
	if (!source_kept) {
		s->sets_len = s->sets_kept_len;
		s->sets_hash = s->sets_kept_hash;
	}
}

bool replay_pool_warm(const struct replay *r, const struct replay_session *s)
{
	const struct pool *p;

	if (r->n_conns >= r->cfg.max_connections || !s->params)
		return false;
	for (p = r->pools; p; p = p->next)
		if (identity_equal(p->params, s->params))
			return !p->idle && !atomic_load(&p->n_active);
	return true;
}

void replay_pool_idle_event(struct replay *r, struct mconn *c)
{
	struct pool *p = c->pool;
	struct mconn **pp;
	PGnotify *n;

	if (PQconsumeInput(c->conn) && PQstatus(c->conn) == CONNECTION_OK) {
		while ((n = PQnotifies(c->conn)))
			PQfreemem(n);
		return; /* a notice or a parameter status */
	}
	for (pp = &p->idle; *pp; pp = &(*pp)->next) {
		if (*pp == c) {
			*pp = c->next;
			break;
		}
	}
	c->next = NULL;
	idle_close(r, c);
}

void replay_pool_bury(struct replay *r)
{
	struct mconn *c, *next;

	for (c = r->graveyard; c; c = next) {
		next = c->next;
		free(c);
	}
	r->graveyard = NULL;
}

/* Frees the pools no session uses that hold no connection (their last one closed
 * after their last session left). */
static void pools_collect(struct replay *r)
{
	struct pool **pp = &r->pools, *p;

	while ((p = *pp)) {
		if (p->n_clients || p->idle || atomic_load(&p->n_active) || p->wait_head) {
			pp = &p->next;
			continue;
		}
		pthread_mutex_lock(&r->list_lock);
		*pp = p->next;
		pthread_mutex_unlock(&r->list_lock);
		free(p->params);
		free(p);
	}
}

void replay_pool_publish(struct replay *r)
{
	struct stats_pool *ps = &r->pool_stats;
	const struct pool *p;
	uint64_t active = 0, idle = 0, pinned = 0, login = 0, waiting = 0;

	pools_collect(r);
	for (p = r->pools; p; p = p->next) {
		active += atomic_load_explicit(&p->n_active, memory_order_relaxed);
		idle += atomic_load_explicit(&p->n_idle, memory_order_relaxed);
		pinned += atomic_load_explicit(&p->n_pinned, memory_order_relaxed);
		login += atomic_load_explicit(&p->n_login, memory_order_relaxed);
		waiting += atomic_load_explicit(&p->n_waiting, memory_order_relaxed);
	}
	ps->connections[STATS_POOL_IN_USE] = active;
	ps->connections[STATS_POOL_IDLE] = idle;
	ps->connections[STATS_POOL_PINNED] = pinned;
	ps->connections[STATS_POOL_CONNECTING] = login;
	ps->waiting = waiting;
	stats_mirror_set_pool(r->st, ps);
}

/* A session goes: it stops waiting and lets go of its pool. */
void replay_pool_leave(struct replay *r, struct replay_session *s)
{
	replay_pool_unwait(r, s);
	if (s->pool) {
		struct pool *p = s->pool;

		s->pool = NULL;
		s->pool_params = NULL;
		pool_unref(p);
	}
	free(s->sets);
	s->sets = NULL;
	s->sets_len = 0;
}

void replay_pool_free_all(struct replay *r)
{
	struct pool *p, *next, *all = r->pools;
	struct mconn *c;

	pthread_mutex_lock(&r->list_lock);
	r->pools = NULL; /* no waiter is woken from here on */
	pthread_mutex_unlock(&r->list_lock);
	for (p = all; p; p = next) {
		next = p->next;
		while ((c = p->idle)) {
			p->idle = c->next;
			c->next = NULL;
			idle_close(r, c);
		}
		free(p->params);
		free(p);
	}
	replay_pool_bury(r);
}

size_t replay_pools(struct replay *r, struct replay_pool_row *out, size_t cap)
{
	const struct pool *p;
	uint64_t now = now_ns(), oldest;
	size_t n = 0;

	if (!r)
		return 0;
	pthread_mutex_lock(&r->list_lock);
	for (p = r->pools; p; p = p->next, n++) {
		struct replay_pool_row *row = &out[n];
		uint32_t active = atomic_load(&p->n_active), login = atomic_load(&p->n_login);

		if (n >= cap)
			continue;
		memset(row, 0, sizeof(*row));
		snprintf(row->database, sizeof(row->database), "%s", p->params->database);
		snprintf(row->user, sizeof(row->user), "%s", p->params->user);
		snprintf(row->application_name, sizeof(row->application_name), "%s",
			 p->params->application_name);
		row->cl_active = active;
		row->cl_waiting = atomic_load(&p->n_waiting);
		row->sv_active = active > login ? active - login : 0;
		row->sv_idle = atomic_load(&p->n_idle);
		row->sv_login = login;
		row->sv_pinned = atomic_load(&p->n_pinned);
		oldest = atomic_load(&p->oldest_wait);
		row->maxwait_ms = oldest && now > oldest ? (now - oldest) / MS : 0;
	}
	pthread_mutex_unlock(&r->list_lock);
	return n;
}
