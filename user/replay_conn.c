// SPDX-License-Identifier: BSD-2-Clause
/*
 * replay_conn.c — the replay's libpq shell: mirror connections, sending, answers. See
 * replay_int.h.
 */
#include "replay_int.h"

/* ---- prepared statements of a mirror connection ---- */

static struct stmt **stmt_bucket(struct mconn *c, const char *name)
{
	return &c->stmts[fnv(FNV_INIT, name, strlen(name)) % STMT_BUCKETS];
}

static struct stmt *stmt_find(struct mconn *c, const char *name, uint64_t hash, bool *name_used)
{
	struct stmt *st;

	*name_used = false;
	for (st = *stmt_bucket(c, name); st; st = st->next) {
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
static struct stmt *stmt_new(struct mconn *c, const char *name, uint64_t hash, bool name_used)
{
	size_t nlen = strlen(name);
	char mname[32];
	struct stmt *st;

	if (c->n_stmts >= STMTS_MAX)
		return NULL;
	if (name_used || c->mangle_all)
		snprintf(mname, sizeof(mname), "pgshadow#%u", ++c->mangle);
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

static void stmt_link(struct mconn *c, struct stmt *st)
{
	struct stmt **b = stmt_bucket(c, st->name);

	st->next = *b;
	*b = st;
	c->n_stmts++;
}

static void stmt_unlink(struct mconn *c, struct stmt *st)
{
	struct stmt **p;

	for (p = stmt_bucket(c, st->name); *p; p = &(*p)->next) {
		if (*p == st) {
			*p = st->next;
			c->n_stmts--;
			free(st);
			return;
		}
	}
}

static void stmts_clear(struct mconn *c)
{
	struct stmt *st, *next;
	int i;

	for (i = 0; i < STMT_BUCKETS; i++) {
		for (st = c->stmts[i]; st; st = next) {
			next = st->next;
			free(st);
		}
		c->stmts[i] = NULL;
	}
	c->n_stmts = 0;
}

void replay_run_reset(struct replay_session *s)
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
	struct mconn *c = s->c;
	struct epoll_event ev = {.events = events, .data.ptr = c};
	int fd = PQsocket(c->conn);

	if (fd < 0)
		return;
	if (c->watched && c->fd == fd && c->events == events && s->state != CONN_CONNECTING)
		return;
	if (c->watched && c->fd != fd)
		epoll_ctl(r->epfd, EPOLL_CTL_DEL, c->fd, NULL); /* may be closed already */
	if (epoll_ctl(r->epfd, c->watched && c->fd == fd ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev) <
	    0) {
		if (errno == ENOENT)
			epoll_ctl(r->epfd, EPOLL_CTL_ADD, fd, &ev);
		else if (errno == EEXIST)
			epoll_ctl(r->epfd, EPOLL_CTL_MOD, fd, &ev);
	}
	c->watched = true;
	c->fd = fd;
	c->events = events;
}

void replay_conn_rewatch(struct replay *r, struct replay_session *s)
{
	if (s->c && s->state != CONN_CONNECTING)
		conn_watch(r, s, EPOLLIN | (s->c->want_write ? EPOLLOUT : 0));
}

void replay_mconn_close(struct replay *r, struct mconn *c)
{
	if (c->conn) {
		if (c->watched)
			epoll_ctl(r->epfd, EPOLL_CTL_DEL, c->fd, NULL);
		capture_rx_detach(r->cap, c->rx_slot);
		c->rx_slot = -1;
		PQfinish(c->conn);
		c->conn = NULL;
	}
	c->watched = false;
	c->want_write = false;
	ownconn_release(r->cap, &c->excl);
	stmts_clear(c);
	replay_pool_forget(r, c);
}

/* Closes the session's mirror connection (if any) and forgets what lived on it. */
void replay_conn_close(struct replay *r, struct replay_session *s)
{
	if (s->c) {
		replay_mconn_close(r, s->c);
		s->c = NULL;
	}
	s->pinned = false;
	s->n_susp = 0;
	s->group_open = false;
	replay_run_reset(s);
}

/* Everything in flight ends: cur gets o, the items pipelined behind it never got an
 * answer (connection errors, or skipped at shutdown). */
void replay_inflight_finish(struct replay *r, struct replay_session *s, enum outcome o,
			    uint64_t now)
{
	struct item *it;

	if (s->cur) {
		replay_item_finish(r, s, s->cur, o, now);
		s->cur = NULL;
	}
	while ((it = s->sent_head)) {
		s->sent_head = it->next;
		replay_item_finish(r, s, it, o == OUT_SKIP_SHUTDOWN ? o : OUT_CONNECTION, now);
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

#define FAIL_LOG_REPEAT_NS (60 * 1000 * MS) /* a lasting failure is logged again */

/*
 * Says why the mirror cannot be reached (replay thread): libpq's message, first line,
 * once per change of reason and again at most once a minute while it lasts, with the
 * count of failures; many sessions failing for one reason make one line. libpq's
 * messages name hosts, ports and databases; a password is never logged (a message that
 * quotes the conninfo's is withheld).
 */
static void log_failure(struct replay *r, const struct replay_session *s, const char *what,
			uint64_t now)
{
	const char *msg = s->c && s->c->conn ? PQerrorMessage(s->c->conn) : "";
	char reason[sizeof(r->fail_reason)];
	int n = (int)strcspn(msg, "\n");

	if (!n)
		snprintf(reason, sizeof(reason), "%s",
			 s->c && s->c->conn ? "no answer" : "out of memory");
	else if (r->password && strstr(msg, r->password))
		snprintf(reason, sizeof(reason),
			 "(libpq's message withheld: it quotes the password)");
	else
		snprintf(reason, sizeof(reason), "%.*s", n, msg);
	r->fail_count++;
	if (r->failing && !strcmp(reason, r->fail_reason) &&
	    now - r->fail_logged_ns < FAIL_LOG_REPEAT_NS)
		return;
	fprintf(stderr, "pgshadow: WARN: mirror: %s (database %s): %s (%llu failure%s so far)\n",
		what, s->params ? s->params->database : "?", reason,
		(unsigned long long)r->fail_count, r->fail_count == 1 ? "" : "s");
	memcpy(r->fail_reason, reason, sizeof(reason));
	r->failing = true;
	r->fail_logged_ns = now;
}

/* A connection was made after failures were logged: say so once. */
static void log_recovery(struct replay *r, const struct replay_session *s)
{
	if (!r->failing)
		return;
	fprintf(stderr,
		"pgshadow: INFO: mirror: connected again (database %s) after %llu failure%s\n",
		s->params ? s->params->database : "?", (unsigned long long)r->fail_count,
		r->fail_count == 1 ? "" : "s");
	r->failing = false;
	r->fail_count = 0;
	r->fail_reason[0] = 0;
}

void replay_conn_failed(struct replay *r, struct replay_session *s, uint64_t now)
{
	log_failure(r, s, "cannot connect", now);
	unit_lost(r, s);
	replay_inflight_finish(r, s, OUT_CONNECTION, now);
	replay_conn_close(r, s);
	s->state = CONN_BACKOFF;
	s->deadline = now + s->backoff_ms * MS;
	s->backoff_ms =
	    s->backoff_ms * 2 > r->cfg.backoff_max_ms ? r->cfg.backoff_max_ms : s->backoff_ms * 2;
	replay_activate(r, s);
}

/* An established connection was lost or had to be reset: the item in flight gets o; the
 * next item connects again (at once: only failing to connect backs off). */
void replay_conn_lost(struct replay *r, struct replay_session *s, enum outcome o, uint64_t now)
{
	if (s->c->conn && PQstatus(s->c->conn) == CONNECTION_BAD)
		log_failure(r, s, "connection lost", now);
	unit_lost(r, s);
	replay_inflight_finish(r, s, o, now);
	replay_conn_close(r, s);
	s->state = CONN_NONE;
	s->deadline = NEVER;
	replay_activate(r, s);
}

static void notice_ignore(void *arg, const char *message)
{
	(void)arg;
	(void)message;
}

/*
 * Starts the session's new mirror connection (s->c, counted in its pool): a
 * PQconnectStartParams with the mirror conninfo expanded first and the session's own
 * settings after it (later keywords win; a second dbname is not expanded again).
 */
void replay_conn_open(struct replay *r, struct replay_session *s, uint64_t now)
{
	const char *kw[6], *val[6];
	const struct params *p = s->params;

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
	s->c->conn = PQconnectStartParams(kw, val, 1);
	if (!s->c->conn || PQstatus(s->c->conn) == CONNECTION_BAD) {
		replay_conn_failed(r, s, now);
		return;
	}
	PQsetNoticeProcessor(s->c->conn, notice_ignore, NULL);
	ownconn_exclude(r->cap, s->c->conn, r->cfg.capture_port, &s->c->excl);
	s->state = CONN_CONNECTING;
	s->deadline = now + CONNECT_TIMEOUT_MS * MS;
	conn_watch(r, s, EPOLLOUT);
}

uint64_t replay_reply_deadline(const struct replay *r, uint64_t now)
{
	return r->cfg.timeout_ms ? now + (r->cfg.timeout_ms + (uint64_t)REPLY_GRACE_MS) * MS
				 : NEVER;
}

bool replay_conn_flush(struct replay_session *s)
{
	int rc = PQflush(s->c->conn);

	s->c->want_write = rc == 1;
	return rc >= 0;
}

/* The connection is up: non-blocking from now on, then the session's SETs (with its
 * role) or SET ROLE alone if asked. */
static void conn_ready(struct replay *r, struct replay_session *s, uint64_t now)
{
	const char *user = s->params->user;
	char *ident, *sql;

	s->backoff_ms = BACKOFF_MIN_MS;
	log_recovery(r, s);
	if (PQsetnonblocking(s->c->conn, 1)) {
		replay_conn_lost(r, s, OUT_CONNECTION, now);
		return;
	}
	s->state = CONN_IDLE;
	s->deadline = NEVER;
	s->c->rx_slot = capture_rx_attach(r->cap, PQsocket(s->c->conn));
	s->c->rx_next = 0;
	if (s->c->rx_slot >= 0) { /* a slot is reused: its count goes on from the last user */
		struct capture_rx_slot v;

		if (capture_rx_read(r->cap, s->c->rx_slot, &v)) {
			s->c->rx_next = v.ends;
			s->c->rx_fin = v.fin;
		}
	}
	if (s->c->rx_slot < 0 && s->c->rx_slot != -ENOTSUP && !r->rx_warned) {
		r->rx_warned = true;
		fprintf(stderr,
			"pgshadow: WARN: mirror: cannot time answers in the kernel on a mirror "
			"connection: %s (its answers are timed when the replay reads them; "
			"mirror_replay_answers_timed_total{clock=\"read\"})\n",
			strerror(-s->c->rx_slot));
	}
	replay_conn_rewatch(r, s);
	replay_pool_connected(r, s, now);
	if (s->state != CONN_IDLE || !r->cfg.set_role || !*user || !strcmp(user, SESSION_UNKNOWN))
		return;
	ident = PQescapeIdentifier(s->c->conn, user, strlen(user));
	sql = ident ? malloc(strlen(ident) + 10) : NULL;
	if (sql) {
		sprintf(sql, "SET ROLE %s", ident);
		replay_run_reset(s);
		if (PQsendQuery(s->c->conn, sql)) {
			s->state = CONN_SETUP;
			s->deadline = replay_reply_deadline(r, now);
		}
	}
	free(sql);
	PQfreemem(ident);
	if (PQstatus(s->c->conn) == CONNECTION_BAD || !replay_conn_flush(s)) {
		replay_conn_lost(r, s, OUT_CONNECTION, now);
		return;
	}
	replay_conn_rewatch(r, s);
}

/* One PQconnectPoll step, when the socket is ready for what the last one asked. */
static void conn_poll(struct replay *r, struct replay_session *s, uint64_t now)
{
	PostgresPollingStatusType st = PQconnectPoll(s->c->conn);

	switch (st) {
	case PGRES_POLLING_READING:
		ownconn_exclude(r->cap, s->c->conn, r->cfg.capture_port, &s->c->excl);
		conn_watch(r, s, EPOLLIN);
		break;
	case PGRES_POLLING_WRITING:
		ownconn_exclude(r->cap, s->c->conn, r->cfg.capture_port, &s->c->excl);
		conn_watch(r, s, EPOLLOUT);
		break;
	case PGRES_POLLING_OK:
		ownconn_exclude(r->cap, s->c->conn, r->cfg.capture_port, &s->c->excl);
		conn_ready(r, s, now);
		break;
	default:
		replay_conn_failed(r, s, now);
		break;
	}
}

/* ---- running an item ---- */

/* COPY runs outside pipeline mode (libpq cannot queue commands behind it). */
bool replay_is_copy(const struct item *it)
{
	const char *p = it->text;

	if (it->copy_len)
		return true;
	while (isspace((unsigned char)*p) || *p == '(')
		p++;
	return !strncasecmp(p, "copy", 4) && !isalnum((unsigned char)p[4]) && p[4] != '_';
}

/* A text with a statement (at its start or after a ';') that may drop protocol-level
 * prepared statements on the mirror: DEALLOCATE or DISCARD. */
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

/* The statement that raises the source's concurrency error (it->raise, one of the
 * sampler's fixed SQLSTATEs) on the mirror instead of running the request. */
static const char *raise_sql(const struct item *it, char *out, size_t len)
{
	snprintf(out, len,
		 "DO $pgshadow$BEGIN RAISE EXCEPTION USING ERRCODE = '%s', MESSAGE = "
		 "'pgshadow: not run, the source answered %s'; END$pgshadow$",
		 it->raise, it->raise);
	return out;
}

/* In pipeline mode: the Execute's statement ([Prepare] + execution, or unnamed). */
static bool send_statement(struct replay_session *s, struct item *it)
{
	PGconn *c = s->c->conn;
	struct stmt *st = NULL;
	bool name_used;

	if (it->stmt_name[0]) {
		st = stmt_find(s->c, it->stmt_name, it->text_hash, &name_used);
		if (!st) {
			s->run.prep = stmt_new(s->c, it->stmt_name, it->text_hash, name_used);
			if (s->run.prep &&
			    !PQsendPrepare(c, s->run.prep->mname, it->text, it->n_types, it->types))
				return false;
			if (s->run.prep)
				s->run.sets = 2;
		}
	}
	if (st || s->run.prep)
		return PQsendQueryPrepared(c, st ? st->mname : s->run.prep->mname, it->n_params,
					   it->values, it->lengths, it->formats, it->result_format);
	return PQsendQueryParams(c, it->text, it->n_params, it->types, it->values, it->lengths,
				 it->formats, it->result_format);
}

/* Sends an Execute: [Prepare] + execution + Sync in pipeline mode, or an unnamed
 * execution outside it for COPY. False when libpq refused. */
static bool send_execute(struct replay_session *s, struct item *it)
{
	PGconn *c = s->c->conn;
	char sql[160];

	it->sent_sync = true; /* a COPY, outside pipeline mode, or Sync below */
	if (replay_is_copy(it) && !it->raise) {
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
	if (it->raise) {
		if (!PQsendQueryParams(c, raise_sql(it, sql, sizeof(sql)), 0, NULL, NULL, NULL,
				       NULL, 0))
			return false;
	} else if (!send_statement(s, it)) {
		return false;
	}
	if (it->wrap && !PQsendQueryParams(c, FORCE_ROLLBACK_SQL, 0, NULL, NULL, NULL, NULL, 0))
		return false;
	/* more Executes of this Sync follow: leave the implicit transaction open */
	s->run.synced = it->group_end || it->src.error || it->wrap;
	it->sent_sync = s->run.synced;
	if (s->run.synced ? !PQpipelineSync(c) : !PQsendFlushRequest(c))
		return false; /* without Sync, only a Flush makes the server answer now */
	if (!s->run.prep)
		PQsetSingleRowMode(c);
	return true;
}

/* Sends BEGIN or ROLLBACK around a wrapped item; its result is ignored. */
static bool send_aux(struct replay_session *s, const char *sql)
{
	replay_run_reset(s);
	s->run.aux = true;
	return PQsendQuery(s->c->conn, sql);
}

/* Is the item an Execute resuming a portal of its unit that the mirror already ran to
 * completion (the source suspended it at its row limit)? */
bool replay_susp_resumes(const struct replay_session *s, const struct item *it)
{
	uint8_t i;

	if (it->kind != SESSION_REQ_EXECUTE || it->unit != s->susp_unit)
		return false;
	for (i = 0; i < s->n_susp; i++)
		if (s->susp_keys[i] == it->portal_key)
			return true;
	return false;
}

/* An Execute went (or was finished as a resumption): its portal is remembered while the
 * source left it suspended, forgotten when the source ran it to its end. Past
 * REPLAY_SUSP_MAX portals in one unit the oldest is forgotten: its resumption would run
 * the statement again, as a new Execute. */
void replay_susp_sent(struct replay_session *s, const struct item *it)
{
	uint8_t i;

	if (it->kind != SESSION_REQ_EXECUTE)
		return;
	if (it->unit != s->susp_unit) {
		s->n_susp = 0;
		s->susp_unit = it->unit;
	}
	for (i = 0; i < s->n_susp && s->susp_keys[i] != it->portal_key; i++)
		;
	if (i < s->n_susp) {
		if (it->suspended)
			return;
		memmove(&s->susp_keys[i], &s->susp_keys[i + 1],
			(size_t)(s->n_susp - i - 1) * sizeof(s->susp_keys[0]));
		s->n_susp--;
		return;
	}
	if (!it->suspended)
		return;
	if (s->n_susp == REPLAY_SUSP_MAX) {
		memmove(&s->susp_keys[0], &s->susp_keys[1],
			(REPLAY_SUSP_MAX - 1) * sizeof(s->susp_keys[0]));
		s->n_susp--;
	}
	s->susp_keys[s->n_susp++] = it->portal_key;
}

/* Sends the item itself (after its BEGIN, when wrapped). */
static bool send_main(struct replay *r, struct replay_session *s, struct item *it)
{
	char sql[160];

	replay_run_reset(s);
	it->stage = STAGE_MAIN;
	it->sent_ns = now_ns(); /* not the pass's start: its earlier sends took time */
	if (it->as_rollback) {	/* the source rolled this COMMIT back */
		s->n_susp = 0;
		return PQsendQuery(s->c->conn, "ROLLBACK");
	}
	if (it->raise)
		stats_mirror_raised(r->st);
	if (it->kind == SESSION_REQ_QUERY && it->raise)
		return PQsendQuery(s->c->conn, raise_sql(it, sql, sizeof(sql)));
	/* DEALLOCATE or DISCARD, as a Query or through the extended protocol (psycopg 3
	 * sends DEALLOCATE ALL after a rollback): the names we prepared are gone */
	if (it->text && drops_statements(it->text)) {
		stmts_clear(s->c);
		s->c->mangle_all = true;
	}
	if (it->kind == SESSION_REQ_QUERY) {
		if (!PQsendQuery(s->c->conn, it->text))
			return false;
		PQsetSingleRowMode(s->c->conn);
		return true;
	}
	replay_susp_sent(s, it);
	return send_execute(s, it);
}

/* After sending: the connection is busy until the answer, or lost if libpq refused. */
static void sent(struct replay *r, struct replay_session *s, bool ok, uint64_t now)
{
	if (!ok || !replay_conn_flush(s)) {
		replay_conn_lost(
		    r, s, PQstatus(s->c->conn) == CONNECTION_BAD ? OUT_CONNECTION : OUT_QUERY, now);
		return;
	}
	s->state = CONN_BUSY;
	s->deadline = replay_reply_deadline(r, now);
	replay_conn_rewatch(r, s);
}

/* May it be sent behind another item in flight (see "Backlog pipelining" above)? */
/* Does a piped item end with a Sync (else with a Flush: its Sync group goes on)? */
static bool piped_sync(const struct item *it)
{
	return it->kind != SESSION_REQ_EXECUTE || it->group_end;
}

/* The Sync group the last item sent left open on the connection, if any. */
static bool tail_open(const struct replay_session *s, uint64_t *group)
{
	const struct item *t = s->sent_tail ? s->sent_tail : s->cur;

	if (t && t->stage == STAGE_MAIN && t->kind == SESSION_REQ_EXECUTE) {
		*group = t->sync_group;
		return !t->sent_sync;
	}
	*group = s->group_id;
	return !t && s->group_open;
}

bool replay_pipelinable(const struct replay *r, const struct replay_session *s,
			const struct item *it)
{
	uint64_t group;
	bool used;

	if (!it || r->cfg.pipeline < 2 || r->cfg.replay_timing || !it->pipe_ok || it->wrap ||
	    it->as_rollback)
		return false;
	/* the resumption of a portal the mirror ran to completion is not sent (item_start) */
	if (replay_susp_resumes(s, it))
		return false;
	/* behind an open Sync group only the rest of that group may go */
	if (tail_open(s, &group) && (it->kind != SESSION_REQ_EXECUTE || it->sync_group != group))
		return false;
	if (it->kind == SESSION_REQ_QUERY) /* COPY and DEALLOCATE/DISCARD: as simple queries */
		return !replay_is_copy(it) && !drops_statements(it->text);
	if (it->kind != SESSION_REQ_EXECUTE || it->src.error || replay_is_copy(it) ||
	    drops_statements(it->text))
		return false;
	return !it->stmt_name[0] || stmt_find(s->c, it->stmt_name, it->text_hash, &used);
}

/* Sends a pipelinable item in pipeline mode, with its own Sync, or a Flush when more of
 * its Sync group follow (a batch: every Execute of it is one implicit transaction). */
static bool send_piped(struct replay_session *s, struct item *it)
{
	PGconn *c = s->c->conn;
	struct stmt *st = NULL;
	bool used;

	if (PQpipelineStatus(c) == PQ_PIPELINE_OFF && !PQenterPipelineMode(c))
		return false;
	/* a row-limited Execute runs to completion here: its resumptions are not sent */
	replay_susp_sent(s, it);
	if (it->kind == SESSION_REQ_QUERY) {
		if (!PQsendQueryParams(c, it->text, 0, NULL, NULL, NULL, NULL, 0))
			return false;
	} else if (it->stmt_name[0]) {
		st = stmt_find(s->c, it->stmt_name, it->text_hash, &used);
		if (!st || !PQsendQueryPrepared(c, st->mname, it->n_params, it->values, it->lengths,
						it->formats, it->result_format))
			return false;
	} else if (!PQsendQueryParams(c, it->text, it->n_params, it->types, it->values, it->lengths,
				      it->formats, it->result_format)) {
		return false;
	}
	it->sent_sync = piped_sync(it);
	return it->sent_sync ? PQpipelineSync(c) : PQsendFlushRequest(c);
}

/* Results of the item at the head of the pipeline: one result set, then the sync (none
 * for an Execute of a group that goes on). */
static void run_piped(struct replay_session *s, const struct item *it)
{
	replay_run_reset(s);
	s->run.pipeline = true;
	s->run.synced = piped_sync(it);
	s->run.sets = 1;
}

/*
 * Corking. libpq 15's PQpipelineSync flushes, so every pipelined request is a send() of
 * its own, and on loopback each send also runs the mirror's receive path and wakes its
 * backend. When a pipelined request is sent and at least three more queued may follow it
 * in the same step (the next pipelinable, room in the pipeline), the socket is corked (TCP_CORK):
 * the sends only copy into the socket, and replay_uncork() at the end of the step (sess_step)
 * transmits them as one segment. The bytes on the wire are the same.
 */
static void cork(const struct replay *r, struct replay_session *s)
{
	int one = 1;

	/* a cork costs two setsockopt calls: worth it when it saves at least three sends
	 * (three more queued, room for them in the pipeline) */
	if (s->c->corked || !s->head || !s->head->next || !s->head->next->next ||
	    s->n_sent + 3 >= r->cfg.pipeline || !replay_pipelinable(r, s, s->head))
		return;
	s->c->corked = !setsockopt(PQsocket(s->c->conn), IPPROTO_TCP, TCP_CORK, &one, sizeof(one));
}

void replay_uncork(struct replay_session *s)
{
	int zero = 0;

	if (!s->c || !s->c->corked) /* none, or closed in this step: nothing to send */
		return;
	s->c->corked = false;
	if (PQsocket(s->c->conn) >= 0)
		setsockopt(PQsocket(s->c->conn), IPPROTO_TCP, TCP_CORK, &zero, sizeof(zero));
}

/* Sends a pipelinable item and counts it: behind another in flight, or the first. */
static bool pipe_send(struct replay *r, struct replay_session *s, struct item *it, bool behind)
{
	cork(r, s);
	if (!send_piped(s, it))
		return false;
	stats_mirror_piped(r->st, behind, it->kind == SESSION_REQ_QUERY);
	return true;
}

/* Sends the session's head item behind what is in flight. */
void replay_pipe_append(struct replay *r, struct replay_session *s, uint64_t now)
{
	struct item *it = replay_queue_pop(s);

	it->stage = STAGE_MAIN;
	it->sent_ns = now_ns(); /* as in send_main */
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
	if (!pipe_send(r, s, it, true) || !replay_conn_flush(s)) {
		replay_conn_lost(r, s, OUT_CONNECTION, now);
		return;
	}
	replay_conn_rewatch(r, s); /* the deadline stays cur's: pipe_advance sets the next one */
}

/* The next pipelined item's answer is read now. Its service on the mirror began when
 * its predecessor's answer came (at), if that was after it was sent. */
static void pipe_advance(struct replay *r, struct replay_session *s, uint64_t now, uint64_t at)
{
	struct item *it = s->sent_head;

	s->sent_head = it->next;
	if (!s->sent_head)
		s->sent_tail = NULL;
	it->next = NULL;
	s->n_sent--;
	if (it->sent_ns < at)
		it->sent_ns = at;
	s->cur = it;
	run_piped(s, it);
	PQsetSingleRowMode(s->c->conn); /* refused once its rows arrived: still correct */
	s->deadline = replay_reply_deadline(r, now);
}

/*
 * Starts the session's head item on its idle connection. A resumption of a portal the
 * mirror already ran to completion finishes at once. When libpq refuses to send, the item
 * fails and the connection is reset (its state is unknown).
 */
void replay_item_start(struct replay *r, struct replay_session *s, uint64_t now)
{
	struct item *it = replay_queue_pop(s);

	replay_run_reset(s);
	it->sent_ns = now;
	s->last_sent = now;
	s->last_ts_start = it->ord.ts_start;
	s->last_unit = it->unit;
	s->unit_open = !it->unit_last;

	if (replay_susp_resumes(s, it)) {
		replay_susp_sent(s, it); /* forgotten once the source ran it to its end */
		replay_item_finish(r, s, it, OUT_SUCCESS, now);
		return;
	}
	s->cur = it;
	if (s->head && replay_pipelinable(r, s, it)) { /* a backlog: the first of a pipeline */
		it->stage = STAGE_MAIN;
		it->sent_ns = now_ns(); /* as in send_main */
		run_piped(s, it);
		s->piping = pipe_send(r, s, it, false);
		if (s->piping)
			PQsetSingleRowMode(s->c->conn);
		sent(r, s, s->piping, now);
		return;
	}
	if (it->wrap && it->kind == SESSION_REQ_QUERY) {
		it->stage = STAGE_BEGIN;
		sent(r, s, send_aux(s, "BEGIN"), now);
		return;
	}
	sent(r, s, send_main(r, s, it), now);
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
		rc = PQputCopyData(s->c->conn, it->copy + s->run.copy_off, (int)n);
		if (rc <= 0) {
			s->c->want_write = rc == 0;
			return rc;
		}
		s->run.copy_off += n;
	}
	rc = PQputCopyEnd(s->c->conn, NULL);
	if (rc <= 0) {
		s->c->want_write = rc == 0;
		return rc;
	}
	s->run.copy_in = false;
	return replay_conn_flush(s) ? 1 : -1;
}

/* Discards COPY TO STDOUT rows. 1 done, 0 wait for input, -1 failed. */
static int copy_discard(struct replay_session *s)
{
	char *row;
	int n;

	while ((n = PQgetCopyData(s->c->conn, &row, 1)) > 0)
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
		stmt_link(s->c, s->run.prep);
	} else {
		code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
		if (code && !strcmp(code, "42P05"))
			s->c->mangle_all = true;
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
	PGconn *c = s->c->conn;
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
		replay_conn_lost(r, s, it->stage == STAGE_ROLLBACK ? it->saved : OUT_CONNECTION,
				 now);
		return;
	}
	if (it->stage == STAGE_BEGIN) {
		sent(r, s, send_main(r, s, it), now);
		return;
	}
	s->cur = NULL;
	replay_item_finish(r, s, it, it->saved, now);
	replay_run_reset(s);
	s->state = CONN_IDLE;
	s->deadline = NEVER;
}

/* What was in flight is complete: give the item its outcome, leave pipeline mode. */
static void run_complete(struct replay *r, struct replay_session *s, uint64_t now, uint64_t at)
{
	struct item *it = s->cur;
	unsigned int kinds;
	enum outcome o;

	if (PQstatus(s->c->conn) == CONNECTION_BAD) {
		replay_conn_lost(r, s, OUT_CONNECTION, now);
		return;
	}
	if (s->state == CONN_SETUP) { /* SET ROLE or a group's Sync: result ignored */
		if (s->group_open) {
			s->group_open = false;
			if (!PQexitPipelineMode(s->c->conn))
				s->run.broken = true;
		}
		if (s->run.broken) {
			replay_conn_lost(r, s, OUT_CONNECTION, now);
			return;
		}
		replay_run_reset(s);
		s->state = CONN_IDLE;
		s->deadline = NEVER;
		return;
	}
	if (s->run.aux) {
		aux_complete(r, s, it, now);
		return;
	}
	if (s->run.pipeline && !s->run.synced && (s->run.error || s->run.broken) &&
	    s->dead_unit != it->unit) {
		/* the group failed on the mirror (the source's did not: those sync at once):
		 * its implicit transaction is lost, so the rest of it must not run in another
		 * one. With nothing behind it, end it now; otherwise the server skips what
		 * follows up to the group's own Sync (PGRES_PIPELINE_ABORTED: query errors). */
		s->dead_unit = it->unit;
		s->dead_outcome = OUT_QUERY;
		if (!s->n_sent) {
			s->run.synced = true;
			s->run.nulls = 0;
			if (!PQpipelineSync(s->c->conn) || !replay_conn_flush(s))
				s->run.broken = true;
			else
				return; /* complete at the sync */
		}
	}
	o = run_outcome(r, s, it);
	it->m_error = s->run.error;
	memcpy(it->m_sqlstate, s->run.sqlstate, sizeof(it->m_sqlstate));
	if (s->run.pipeline && !s->run.synced) {
		s->group_open = true;
		s->group_id = it->sync_group;
	} else if (s->run.pipeline) {
		s->group_open = false;
		if (!s->n_sent && PQpipelineStatus(s->c->conn) != PQ_PIPELINE_OFF &&
		    !PQexitPipelineMode(s->c->conn))
			s->run.broken = true;
	}
	if (s->run.broken) {
		replay_conn_lost(r, s, o, now);
		return;
	}
	if (s->run.error && !strcmp(s->run.sqlstate, "26000") && it->kind == SESSION_REQ_EXECUTE &&
	    it->stmt_name[0]) { /* the mirror lost it: prepare it again */
		bool used;
		struct stmt *st = stmt_find(s->c, it->stmt_name, it->text_hash, &used);

		if (st)
			stmt_unlink(s->c, st);
	}
	/* a COMMIT replayed as ROLLBACK has no answer of its own to compare */
	if (r->cfg.compare != REPLAY_COMPARE_NONE && !it->as_rollback && !it->no_compare &&
	    (o == OUT_SUCCESS || o == OUT_QUERY)) {
		kinds = compare(r, s, it);
		it->m_kinds = (uint8_t)kinds;
		stats_mirror_compared(r->st, it->db, kinds);
		if (kinds)
			log_mismatch(r, s, it, kinds);
	}
	if (it->wrap &&
	    it->kind == SESSION_REQ_QUERY) { /* roll back what the source did not keep */
		it->saved = (uint8_t)o;
		it->done_ns = at;
		it->stage = STAGE_ROLLBACK;
		sent(r, s, send_aux(s, "ROLLBACK"), now);
		return;
	}
	s->cur = NULL;
	if (!it->done_ns)
		it->done_ns = at;
	replay_item_finish(r, s, it, o, now);
	replay_run_reset(s);
	if (s->n_sent) {
		pipe_advance(r, s, now, at);
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

/*
 * When the answer completing now reached this host: the kernel's time of its end (the
 * mirror_rx filter, rxclock.h), else the wakeup's, counted.
 */
static uint64_t answer_time(struct replay *r, struct replay_session *s, uint64_t now)
{
	struct capture_rx_slot v;
	uint64_t at = now;
	bool kernel = false;

	if (capture_rx_read(r->cap, s->c->rx_slot, &v))
		at = rxclock_pick(&v, &s->c->rx_next, !s->run.pipeline || s->run.synced,
				  s->cur ? s->cur->sent_ns : 0, now, &kernel);
	if (s->cur)
		stats_mirror_answer_clock(r->st, kernel);
	return at;
}

/* The session's socket is ready (epoll). */
void replay_conn_event(struct replay *r, struct replay_session *s, uint32_t events, uint64_t now)
{
	(void)events;
	if (!s->c)
		return; /* closed earlier in this batch of events */
	replay_activate(r, s);
	if (s->state == CONN_CONNECTING) {
		conn_poll(r, s, now);
		return;
	}
	if (!PQconsumeInput(s->c->conn)) {
		replay_conn_lost(r, s, OUT_CONNECTION, now);
		return;
	}
	if (s->c->want_write && !s->run.copy_in && !replay_conn_flush(s)) {
		replay_conn_lost(r, s, OUT_CONNECTION, now);
		return;
	}
	/* a pipeline may have several answers in: each completes in turn */
	while (s->c && (s->state == CONN_SETUP || s->state == CONN_BUSY) && run_results(r, s))
		run_complete(r, s, now, answer_time(r, s, now));
	if (!s->c)
		return;
	drain_notifies(s->c->conn);
	if (PQstatus(s->c->conn) == CONNECTION_BAD) {
		replay_conn_lost(r, s, OUT_CONNECTION, now);
		return;
	}
	replay_conn_rewatch(r, s);
}
