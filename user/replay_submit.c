// SPDX-License-Identifier: BSD-2-Clause
/*
 * replay_submit.c — the capture thread's half of the replay: sessions, sampling, admission,
 * items; [databases] and exposure. See replay_int.h.
 */
#include "replay_int.h"

/* ---- channel (capture thread -> replay thread) ---- */

/*
 * Posts a message (capture thread). Lock-free and without a system call: replay_wake
 * wakes the replay thread once per batch of capture records, not once per message, and
 * only when that thread is asleep (or about to be) in epoll_wait: it sets sleeping, then
 * looks at the list, while we push, then look at sleeping (both sequentially
 * consistent), so one of us sees the other. It writes the eventfd only once until the
 * replay thread has taken everything posted before (that thread clears wake_pending
 * before it takes the list, so a message pushed after that point either sees the flag
 * cleared and wakes it, or is taken by the take that follows the clearing). The eventfd
 * is edge-triggered and never read: a write is a wakeup and nothing more.
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
	if (atomic_load(&r->sleeping) && !atomic_exchange(&r->wake_pending, true) &&
	    write(r->efd, &one, sizeof(one)) < 0) {
		/* EAGAIN: the counter is full, so the thread is awake anyway */
	}
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

void replay_map_free(struct replay *r)
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
int replay_map_copy(struct replay *r, const struct replay_config *cfg)
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
double replay_exposure_of(const struct replay *r, const struct replay_session *rs)
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
	if (!rs->c_adm.posted) { /* counted before it is visible to the replay thread */
		it->unit_first = true;
		atomic_fetch_add(&rs->units, 1);
	}
	admission_posted(&rs->c_adm, it->kind == SESSION_REQ_EXECUTE, it->group_end, it->src.error,
			 it->sync_group);
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
	if (f == SAMPLER_RELEASE && admission_sync(&rs->c_adm, 0)) /* it committed */
		post_ctl(r, rs, CTL_SYNC, rs->c_adm.unit, rs->c_adm.group, 0);
}

/* Drops the held items of a unit a fault cut (mirror_aborted = skip). */
static void held_drop(struct replay *r, struct replay_session *rs)
{
	struct item *it, *next;

	for (it = rs->c_held; it; it = next) {
		next = it->next;
		stats_mirror_dropped_why(r->st, it->db, STATS_DROP_UNIT_ABORTED, now_ns());
		item_unqueue(r, rs, it);
	}
	rs->c_held = rs->c_held_tail = NULL;
}

/*
 * A fault cut the current unit (capture thread): what of it was posted is rolled back
 * on the mirror (CTL_ABORT, after it in the queue), what is held is dropped, and the
 * rest of it will be dropped as it completes on the source (admission.h).
 */
/* Rolls back on the mirror what was posted of the current unit (after it in the queue). */
static void post_abort(struct replay *r, struct replay_session *rs, enum stats_abort_reason why)
{
	post_ctl(r, rs, CTL_ABORT, rs->c_adm.unit, 0, (uint8_t)why);
	stats_mirror_unit_aborted(r->st, why);
}

static void unit_cut(struct replay *r, struct replay_session *rs, enum stats_abort_reason why)
{
	held_drop(r, rs);
	if (admission_cut(&rs->c_adm))
		post_abort(r, rs, why);
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
	if (admission_open(&rs->c_adm)) /* the server rolled it back */
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

static bool ends_unit(const struct session_request *req, const struct fingerprint_info *fi)
{
	return admission_ends_unit(req->kind == SESSION_REQ_EXECUTE, req->txn_before,
				   req->txn_status, req->group_end, fi->txn);
}

/* A transaction's first request (capture thread): admission of the whole unit. */
static void unit_begin(struct replay *r, struct replay_session *rs,
		       const struct session_request *req)
{
	struct admission_start st = {.txn_before = req->txn_before,
				     .query = req->kind == SESSION_REQ_QUERY,
				     .txn_after = req->txn_status};
	struct admission_load l = {.session_waiting = atomic_load(&rs->units),
				   .queue = r->cfg.queue,
				   .bytes = atomic_load(&r->item_bytes),
				   .bytes_max = r->cfg.queue_bytes,
				   .items = atomic_load(&r->items),
				   .items_max = CHANNEL_ITEMS_MAX};

	admission_begin(&rs->c_adm, &st, &l);
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

/* What the request does to the session state its pooled connection carries: one SET
 * or RESET is re-applied elsewhere; anything else stateful (or a SET among other
 * statements, or a text too deep to inspect) pins the connection. */
static uint8_t pool_act(const struct session_request *req, const struct fingerprint_info *fi)
{
	if (!req->text || req->kind == SESSION_REQ_FUNCTION)
		return POOL_ACT_NONE;
	if (fi->too_deep || (fi->pool & FINGERPRINT_POOL_PIN))
		return POOL_ACT_PIN;
	if (fi->pool & FINGERPRINT_POOL_SET)
		return fi->statements == 1 ? POOL_ACT_SET : POOL_ACT_PIN;
	if (fi->pool & FINGERPRINT_POOL_DISCARD)
		return POOL_ACT_DISCARD; /* alone: PostgreSQL runs it in no transaction block */
	return POOL_ACT_NONE;
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
	enum stats_drop_reason why = STATS_DROP_BUFFER_FULL;
	struct item *it = NULL;
	bool fits;

	if (rs->c_adm.state == ADMISSION_OK)
		it = item_new(db, req);
	fits = it && atomic_load(&r->items) < CHANNEL_ITEMS_MAX &&
	       atomic_load(&r->item_bytes) + it->bytes <= r->cfg.queue_bytes;
	switch (admission_request(&rs->c_adm, fits, &why)) {
	case ADMISSION_POST:
		break;
	case ADMISSION_ABORT:
		post_abort(r, rs, STATS_ABORT_QUEUE_FULL);
		/* fall through */
	case ADMISSION_SKIP:
		held_drop(r, rs);
		free(it);
		drop(r, rs, db, why);
		return;
	}
	it->m.rs = rs;
	it->unit = rs->c_adm.unit;
	it->unit_last = ends_unit(req, fi);
	it->read = d->read;
	it->ord.read = d->read;
	it->ord.owner = rs;
	/* a statement raised as the source's error instead (d->raise) aborts its
	 * transaction at its end, as the source's did: the locks are released there */
	it->ord.ends_txn = (it->unit_last && !d->read) || d->raise;
	it->ord.key = it->unit_last && (fi->txn == FINGERPRINT_TXN_COMMIT ||
					fi->txn == FINGERPRINT_TXN_ROLLBACK || fi->unlocks)
			  ? it->ord.ts_start
			  : it->ord.ts_end;
	it->wrap = d->wrap;
	it->raise = d->raise;
	it->as_rollback = d->as_rollback;
	it->txn_start = d->txn_start;
	it->fingerprint = fi->fingerprint;
	it->pool_act = pool_act(req, fi);
	it->no_compare = r->n_ignore && ignored(r, fi->fingerprint);
	compare_scope_of(&it->scope, r->cfg.compare == REPLAY_COMPARE_ROWS, req->suspended,
			 req->max_rows, fi->nondet != 0);
	/* a simple query of one statement means the same as an unnamed extended-protocol
	 * statement with its own Sync (replay_conn.c pipelines it so), except for what cannot
	 * run in an implicit transaction block of a pipeline */
	it->pipe_ok =
	    !d->raise && (req->kind == SESSION_REQ_EXECUTE ||
			  (req->kind == SESSION_REQ_QUERY && fi->parsed && fi->statements == 1 &&
			   !(fi->classes & FINGERPRINT_NO_TXN_BLOCK)));
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
	sc.exposure = replay_exposure_of(r, rs);
	sc.sampling = r->cfg.sampling;
	sc.level = r->cfg.level;
	sc.mode = r->cfg.mode;
	sc.aborted = r->cfg.aborted;
	sq.kind = req->kind;
	sq.txn_before = req->txn_before;
	sq.txn_after = req->kind == SESSION_REQ_EXECUTE ? 0 : req->txn_status;
	sq.sync_group = req->sync_group;
	sq.error = req->error;
	sq.sqlstate = req->sqlstate;
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
	} else {
		enqueue(r, rs, db, req, &d, &fi);
	}
	held_flush(r, rs, d.after);
	if (req->kind != SESSION_REQ_EXECUTE)
		admission_query_done(&rs->c_adm, req->txn_status);
}

void replay_session_event(struct replay *r, struct replay_session *rs, const struct session_info *s,
			  enum session_event ev)
{
	if (!r || !rs || !rs->c_known || rs->c_off)
		return;
	if (ev == SESSION_EV_SYNC) {
		if (admission_sync(&rs->c_adm, s->txn_status)) /* the rest will not come */
			post_ctl(r, rs, CTL_SYNC, rs->c_adm.unit, rs->c_adm.group, 0);
	} else if (ev == SESSION_EV_RESYNC && admission_open(&rs->c_adm)) {
		unit_cut(r, rs, STATS_ABORT_CAPTURE_GAP); /* requests of it were lost */
	}
}

void replay_fingerprint_stats(const struct replay *r, struct fingerprint_stats *out)
{
	*out = *fingerprint_cache_stats(r->fp);
}
