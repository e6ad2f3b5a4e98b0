// SPDX-License-Identifier: BSD-2-Clause
/*
 * session: one captured PostgreSQL connection (see include/session.h for the contract).
 *
 * Shape of the state:
 *   - the StartupMessage's parameters (one copy of the packet, pointers into it);
 *   - prepared statements: the unnamed one, and named ones in a chained hash table with an
 *     LRU list (evicted beyond max_statements). Statements and portals are reference
 *     counted: a request in flight keeps what it executes alive even when the client
 *     replaces the unnamed statement or closes a portal before the answer comes;
 *   - portals (Bind results): the unnamed one and a short list of named ones;
 *   - a FIFO of the answers the server owes, one entry per frontend message that gets
 *     one (Parse '1', Bind '2', Close '3', Describe 't'/'T'/'n', Execute, Query and
 *     FunctionCall up to their end, Sync 'Z'). The server answers strictly in order, so
 *     each backend message belongs to the head entry: that is how pipelined Executes are
 *     matched to their results. Requests live in their FIFO entry.
 *
 * Alignment. Message boundaries (pgwire) are not enough: after a missed start, a gap or
 * an answer that fits nothing, the session no longer knows which answer belongs to which
 * request. It then stays "unaligned" (state HUNTING): it keeps the statement table up to
 * date from what the client sends but starts no request, until it sees a point where
 * nothing can be outstanding:
 *   - both directions have boundaries (pgwire synchronised);
 *   - the server's latest message is a ReadyForQuery, captured at T;
 *   - every client byte the session could not account for (skipped while hunting, or
 *     messages seen while unaligned) was captured at or before T, and, counting in
 *     capture-time order, no Sync, Query or FunctionCall seen while unaligned can still
 *     be owed its ReadyForQuery (see owed_at_least);
 *   - the client message starting the next batch was captured at or after T.
 * This is exact for clients that wait for ReadyForQuery before sending the next batch
 * (psql, pgbench, the usual drivers). A client caught in the middle of a pipeline it
 * started before capture began can still be paired one batch off; a pipeline seen while
 * unaligned just delays alignment. Alignment counts one resync (SESSION_EV_RESYNC).
 *
 * Requests in flight when alignment is lost are abandoned (counted), never completed
 * with the timings of some other answer.
 *
 * Hot path (pgbench-like Bind/Execute/Sync): no allocation in the steady state. Finished
 * request structures go to a short free list and the last freed small portal is kept as a
 * spare for the next Bind; a Query's text and COPY data are the only per-request copies.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <xxhash.h>

#include "session.h"

#define KIB	  1024U
#define MIB	  (1024U * 1024U)
#define IDENT_MAX 256	     /* longest database/user name accepted from session_identify */
#define FIFO_MIN  16	     /* first size of the answer FIFO */
#define HASH_MAX  (1U << 16) /* buckets of the statement table at most */
#define FREE_REQS 8	     /* request structures kept for reuse */
#define SPARE_MAX 4096	     /* a freed portal allocation this small is kept for reuse */

/* ---- statements and portals ----------------------------------------------------------- */

struct stmt {
	uint32_t refs;
	bool in_table;
	uint32_t hash;
	struct stmt *hnext;		  /* hash chain */
	struct stmt *lru_prev, *lru_next; /* named statements, most recently used first */
	const char *name;
	const char *text; /* NULL when the Parse was longer than max_body */
	size_t text_len;
	uint16_t n_types;
	uint32_t *types;
};

/* A Bind's portal, or the parameters of a FunctionCall (name NULL). */
struct portal {
	uint32_t refs;
	size_t alloc; /* size of this allocation (kept for reuse) */
	bool in_table;
	struct portal *next; /* named portals, newest first */
	const char *name;
	const char *stmt_name;
	struct stmt *stmt; /* a reference; NULL when the statement is unknown */
	uint32_t function_oid;
	uint16_t n_formats;
	int16_t *formats;
	uint16_t n_params;
	int32_t *lengths;
	const uint8_t **values;
	uint16_t n_result_formats;
	int16_t *result_formats;
};

/* ---- requests and the answers the server owes ----------------------------------------- */

struct req {
	struct session_request pub;
	struct stmt *stmt; /* references */
	struct portal *portal;
	char *own;     /* Query text, or the name of a portal never seen */
	uint8_t *copy; /* COPY FROM STDIN data */
	size_t copy_cap;
	uint64_t stmt_rows; /* DataRows since the last CommandComplete */
	bool has_tag;
	struct req *next_free;
};

enum exp_kind {
	EXP_STARTUP,	 /* authentication .. ReadyForQuery */
	EXP_PARSE,	 /* '1' */
	EXP_BIND,	 /* '2' */
	EXP_CLOSE,	 /* '3' */
	EXP_DESC_STMT,	 /* 't' then 'T' or 'n' */
	EXP_DESC_PORTAL, /* 'T' or 'n' */
	EXP_EXECUTE,	 /* DataRows .. CommandComplete/EmptyQuery/Error/PortalSuspended */
	EXP_SYNC,	 /* 'Z' */
	EXP_QUERY,	 /* everything up to 'Z' */
	EXP_FUNCTION,	 /* 'V' or 'E', then 'Z' */
};

struct expect {
	enum exp_kind kind;
	int8_t who;	 /* PARSE/BIND/EXECUTE/QUERY: see struct activity */
	struct req *req; /* EXECUTE/QUERY/FUNCTION; NULL past max_inflight */
	uint64_t ts;	 /* PARSE/BIND/EXECUTE/QUERY: capture time of the client message */
};

/*
 * Statements prepared before capture (session_define_statement, session_attribute).
 * Parse, Bind, Execute and Query set pg_stat_activity.query and query_start when the
 * server processes them: after their capture, before the capture of their answer. With
 * track_activity, the session keeps these intervals for the messages answered last (a
 * ring) and reads those of the unanswered ones from the FIFO.
 */
#define WHO_OTHER  (-1) /* a known text, or one that cannot be told */
#define NAME_MAX_B 256	/* longer statement names are not remembered */

struct unknown_name {
	char *name;    /* NULL: a free slot */
	uint64_t used; /* LRU stamp */
	uint64_t asked;
	bool was_asked, reported;
};

struct activity {
	uint64_t lo, hi; /* capture of the message .. capture of its answer */
	int8_t who;	 /* index in recover.names of the unknown statement it runs, or
			  * WHO_OTHER */
};

struct recover {
	struct unknown_name names[SESSION_UNKNOWN_NAMES];
	uint64_t stamp;
	struct activity *ring; /* SESSION_ACTIVITY_MAX; allocated when tracking starts */
	uint32_t head, n;
};

/* While unaligned: a client batch end (+1: Sync, Query, FunctionCall) or a ReadyForQuery
 * (-1), by capture time. Bounded: the oldest are forgotten (the bound stays valid). */
#define ALIGN_EVENTS 32

struct align_ev {
	uint64_t ts;
	int d;
};

struct session {
	struct session_info info;
	struct session_config cfg;
	const struct session_handler *h;
	void *ctx;
	struct session_stats *st;
	struct pgwire_conn *wire;
	struct pgwire_stats wire_seen; /* already added to st->wire */

	uint8_t *startup; /* the StartupMessage's parameter bytes */
	struct session_param *params;
	char *ident_db, *ident_user; /* from session_identify */
	bool identified;

	struct stmt *unnamed;
	struct stmt **buckets;
	uint32_t nbuckets;
	uint32_t nstmts; /* named */
	struct stmt lru; /* sentinel: lru.lru_next is the most recently used */

	struct portal *unnamed_portal;
	struct portal *portals; /* named */
	uint32_t nportals;
	struct portal *spare; /* a freed portal allocation, reused by the next Bind */

	struct req *free_reqs; /* finished requests kept for reuse (FREE_REQS at most) */
	uint32_t nfree_reqs;

	struct expect *fifo;
	uint32_t fifo_cap, fifo_head, fifo_len, fifo_max;
	uint32_t inflight;    /* requests in the FIFO */
	struct req *copy_req; /* the request a client's CopyData belongs to */
	bool fe_in_copy;      /* between the first CopyData and CopyDone/CopyFail */
	bool skip_till_sync;  /* an error in extended protocol: the server ignores until Sync */
	uint64_t sync_group;
	bool batch_open; /* Parse/Bind/Describe seen since the last Execute/Sync */
	uint64_t batch_ts;

	/* alignment (see the top of this file) */
	bool aligned;
	bool synced[2];
	bool fe_bad;	     /* the client sent bytes that are no message, no byte lost: the
			      * requests before them still get their answers (see desync) */
	uint64_t bad_seen;   /* the decoder's bad_lengths when last looked at */
	bool fe_batch_start; /* the next client message starts a batch */
	bool be_idle;	     /* the server's latest message is a ReadyForQuery */
	bool have_z;
	bool ever_aligned;
	bool midstream;		   /* its start was not seen */
	bool fed[2];		   /* bytes of the direction have been fed */
	bool be_fed;		   /* the server has sent something since capture began */
	bool tentative;		   /* aligned at the first client batch of a session caught mid-way:
				    * until the server's answer, decoded from its first byte, ends */
	bool tentative_ended;	   /* ... and that batch has ended (Sync, Query) */
	uint64_t tentative_end_ts; /* when */
	uint64_t last_z_ts;
	uint64_t fe_dirty_ts; /* latest capture time of client bytes not accounted for */
	uint64_t fe_last_ts;  /* capture time of the last client message handled */
	struct align_ev aev[ALIGN_EVENTS]; /* unaligned batch ends and ReadyForQuerys */
	uint32_t naev;
	uint64_t skip_seen; /* the decoder's bytes_skipped last looked at */
	enum pgwire_dir feed_dir;
	uint64_t feed_ts;

	/* statements prepared before capture (see struct recover) */
	struct recover *rec;
	uint64_t seen_from; /* every query-text-setting message processed after this capture
			     * time is in rec->ring or the FIFO; UINT64_MAX: not tracked */
};

void session_config_default(struct session_config *cfg)
{
	pgwire_config_default(&cfg->wire);
	cfg->max_statements = 1000;
	cfg->max_portals = 100;
	cfg->max_inflight = 65536; /* a driver's batch (executemany, executeBatch) is one
				    * Sync group of this many Executes sent before any answer */
	cfg->max_copy_bytes = 1 * MIB;
	cfg->track_activity = false;
}

static uint64_t max_u64(uint64_t a, uint64_t b)
{
	return a > b ? a : b;
}

static void emit_event(struct session *s, enum session_event ev, uint64_t ts)
{
	if (s->h->event)
		s->h->event(s->ctx, &s->info, ev, ts);
}

/* ---- statement table ------------------------------------------------------------------ */

static void unknown_forget(struct session *s, const char *name);

static void stmt_unref(struct stmt *st)
{
	if (st && --st->refs == 0)
		free(st);
}

static uint32_t name_hash(const char *name)
{
	uint32_t h = 2166136261U; /* FNV-1a */

	while (*name) {
		h ^= (uint8_t)*name++;
		h *= 16777619U;
	}
	return h;
}

static void lru_unlink(struct stmt *st)
{
	st->lru_prev->lru_next = st->lru_next;
	st->lru_next->lru_prev = st->lru_prev;
}

static void lru_push(struct session *s, struct stmt *st)
{
	st->lru_prev = &s->lru;
	st->lru_next = s->lru.lru_next;
	s->lru.lru_next->lru_prev = st;
	s->lru.lru_next = st;
}

/* Takes a named statement out of the table and drops the table's reference. */
static void stmt_detach(struct session *s, struct stmt *st)
{
	struct stmt **pp = &s->buckets[st->hash & (s->nbuckets - 1)];

	while (*pp != st)
		pp = &(*pp)->hnext;
	*pp = st->hnext;
	lru_unlink(st);
	st->in_table = false;
	s->nstmts--;
	stmt_unref(st);
}

static struct stmt *stmt_find(struct session *s, const char *name)
{
	struct stmt *st;
	uint32_t h;

	if (!name[0])
		return s->unnamed;
	if (!s->buckets)
		return NULL;
	h = name_hash(name);
	for (st = s->buckets[h & (s->nbuckets - 1)]; st; st = st->hnext)
		if (st->hash == h && !strcmp(st->name, name))
			return st;
	return NULL;
}

/* Stores a new statement (the table takes the caller's reference), replacing one of the
 * same name, evicting the least recently used named one at max_statements. */
static void stmt_put(struct session *s, struct stmt *st)
{
	struct stmt *old;

	if (!st->name[0]) {
		stmt_unref(s->unnamed);
		s->unnamed = st;
		st->in_table = true;
		return;
	}
	if (!s->buckets) {
		uint32_t n = 16;

		while (n < s->cfg.max_statements && n < HASH_MAX)
			n *= 2;
		s->buckets = calloc(n, sizeof(*s->buckets));
		if (!s->buckets) {
			stmt_unref(st);
			return;
		}
		s->nbuckets = n;
	}
	old = stmt_find(s, st->name);
	if (old)
		stmt_detach(s, old);
	unknown_forget(s, st->name); /* its text is known now */
	if (s->nstmts >= s->cfg.max_statements) {
		if (s->nstmts == 0) { /* max_statements 0: remember nothing */
			stmt_unref(st);
			s->st->statements_evicted++;
			return;
		}
		stmt_detach(s, s->lru.lru_prev);
		s->st->statements_evicted++;
	}
	st->hash = name_hash(st->name);
	st->hnext = s->buckets[st->hash & (s->nbuckets - 1)];
	s->buckets[st->hash & (s->nbuckets - 1)] = st;
	lru_push(s, st);
	st->in_table = true;
	s->nstmts++;
}

/* Close 'S' (or a Parse that could not be read): forget the statement of that name. */
static void stmt_forget(struct session *s, const char *name)
{
	struct stmt *st = stmt_find(s, name);

	if (!st)
		return;
	if (!name[0]) {
		stmt_unref(s->unnamed);
		s->unnamed = NULL;
		return;
	}
	stmt_detach(s, st);
}

static void stmts_free(struct session *s)
{
	stmt_unref(s->unnamed);
	s->unnamed = NULL;
	while (s->nstmts)
		stmt_detach(s, s->lru.lru_next);
	free(s->buckets);
	s->buckets = NULL;
}

/*
 * Parse: name NUL, text NUL, int16 n, n OIDs. Returns a statement with one reference, or
 * NULL when the body is malformed or memory is short.
 */
static struct stmt *stmt_from_parse(const uint8_t *body, uint32_t len)
{
	struct pgwire_cursor cur;
	const char *name, *text;
	size_t nlen, tlen;
	struct stmt *st;
	uint16_t n, i;
	char *p;

	pgwire_cursor_init(&cur, body, len);
	if (!pgwire_get_string(&cur, &name, &nlen) || !pgwire_get_string(&cur, &text, &tlen) ||
	    !pgwire_get_u16(&cur, &n) || pgwire_cursor_left(&cur) != (size_t)n * 4)
		return NULL;
	st = malloc(sizeof(*st) + (size_t)n * 4 + nlen + 1 + tlen + 1);
	if (!st)
		return NULL;
	*st = (struct stmt){.refs = 1, .n_types = n, .text_len = tlen};
	st->types = (uint32_t *)(st + 1);
	for (i = 0; i < n; i++)
		if (!pgwire_get_u32(&cur, &st->types[i])) { /* cannot fail: length checked */
			free(st);
			return NULL;
		}
	p = (char *)(st->types + n);
	memcpy(p, name, nlen + 1);
	st->name = p;
	p += nlen + 1;
	memcpy(p, text, tlen + 1);
	st->text = p;
	return st;
}

/* ---- portals -------------------------------------------------------------------------- */

/* Drops a reference; the last one frees the portal, or keeps a small allocation as the
 * session's spare for the next Bind (pgbench-like clients Bind once per transaction). */
static void portal_unref(struct session *s, struct portal *p)
{
	if (!p || --p->refs > 0)
		return;
	stmt_unref(p->stmt);
	if (!s->spare && p->alloc <= SPARE_MAX) {
		s->spare = p;
		return;
	}
	free(p);
}

/*
 * A parameter block as Bind and FunctionCall carry it: int16 nf, nf format codes (0/1),
 * int16 np, np values (int32 length, -1 = NULL, then the bytes). With the arrays NULL it
 * only checks and counts (the first pass, before anything is allocated).
 */
static PGWIRE_MUST_CHECK bool read_params(struct pgwire_cursor *cur, uint16_t *nf, int16_t *fmts,
					  uint16_t *np, int32_t *lens, const uint8_t **vals)
{
	uint16_t i;

	if (!pgwire_get_u16(cur, nf))
		return false;
	for (i = 0; i < *nf; i++) {
		int16_t f;

		if (!pgwire_get_i16(cur, &f) || (f != 0 && f != 1))
			return false;
		if (fmts)
			fmts[i] = f;
	}
	if (!pgwire_get_u16(cur, np))
		return false;
	for (i = 0; i < *np; i++) {
		const uint8_t *v;
		int32_t l;

		if (!pgwire_get_i32(cur, &l) || l < -1)
			return false;
		v = cur->p; /* an empty value points at where it would be */
		if (l > 0 && !pgwire_get_bytes(cur, (size_t)l, &v))
			return false;
		if (lens) {
			lens[i] = l;
			vals[i] = l >= 0 ? v : NULL;
		}
	}
	return *nf <= 1 || *nf == *np;
}

/* int16 n, n format codes (0/1). */
static PGWIRE_MUST_CHECK bool read_formats(struct pgwire_cursor *cur, uint16_t *n, int16_t *fmts)
{
	uint16_t i;

	if (!pgwire_get_u16(cur, n))
		return false;
	for (i = 0; i < *n; i++) {
		int16_t f;

		if (!pgwire_get_i16(cur, &f) || (f != 0 && f != 1))
			return false;
		if (fmts)
			fmts[i] = f;
	}
	return true;
}

/* What a Bind or FunctionCall body holds besides the arrays. */
struct pblock {
	const char *pname, *sname; /* Bind: portal and statement names */
	uint32_t oid;		   /* FunctionCall: the function */
	uint16_t nf, np, nr;
};

/*
 * Reads a Bind body (portal NUL, statement NUL, parameters, result formats) or a
 * FunctionCall body (fcall: OID, parameters, one result format) completely. With p NULL
 * it only checks and counts; else it fills p's arrays, which then point into body.
 */
static PGWIRE_MUST_CHECK bool read_pblock(const uint8_t *body, uint32_t len, bool fcall,
					  struct pblock *b, struct portal *p)
{
	struct pgwire_cursor cur;
	size_t plen, slen;
	int16_t rf;

	pgwire_cursor_init(&cur, body, len);
	if (fcall) {
		if (!pgwire_get_u32(&cur, &b->oid))
			return false;
	} else if (!pgwire_get_string(&cur, &b->pname, &plen) ||
		   !pgwire_get_string(&cur, &b->sname, &slen)) {
		return false;
	}
	if (!read_params(&cur, &b->nf, p ? p->formats : NULL, &b->np, p ? p->lengths : NULL,
			 p ? p->values : NULL))
		return false;
	if (fcall) {
		if (!pgwire_get_i16(&cur, &rf) || (rf != 0 && rf != 1))
			return false;
		b->nr = 1;
		if (p)
			p->result_formats[0] = rf;
	} else if (!read_formats(&cur, &b->nr, p ? p->result_formats : NULL)) {
		return false;
	}
	return pgwire_cursor_left(&cur) == 0;
}

/*
 * Builds a portal from a Bind body, or the parameters of a FunctionCall body (fcall): one
 * allocation holding the arrays and a copy of the body that names and values point into.
 * The body is read completely before anything is allocated, so the allocation follows from
 * the body's real length (every counted parameter occupies at least 4 of its bytes).
 * Returns a portal with one reference, or NULL when malformed or out of memory.
 */
static struct portal *portal_new(struct session *s, const uint8_t *body, uint32_t len, bool fcall)
{
	struct pblock b = {0};
	struct portal *p;
	uint8_t *copy;
	size_t size;

	if (!read_pblock(body, len, fcall, &b, NULL))
		return NULL;
	size = sizeof(*p) + (size_t)b.np * (sizeof(*p->values) + sizeof(*p->lengths)) +
	       ((size_t)b.nf + b.nr) * sizeof(int16_t) + len;
	if (s->spare && s->spare->alloc >= size) {
		p = s->spare;
		s->spare = NULL;
		size = p->alloc;
	} else {
		p = malloc(size);
		if (!p)
			return NULL;
	}
	*p = (struct portal){.refs = 1,
			     .alloc = size,
			     .n_formats = b.nf,
			     .n_params = b.np,
			     .n_result_formats = b.nr,
			     .function_oid = b.oid};
	p->values = (const uint8_t **)(p + 1);
	p->lengths = (int32_t *)(p->values + b.np);
	p->formats = (int16_t *)(p->lengths + b.np);
	p->result_formats = p->formats + b.nf;
	copy = (uint8_t *)(p->result_formats + b.nr);
	memcpy(copy, body, len);
	if (!read_pblock(copy, len, fcall, &b, p)) { /* the same bytes: cannot fail */
		free(p);
		return NULL;
	}
	p->name = b.pname;
	p->stmt_name = b.sname;
	return p;
}

static void portals_clear(struct session *s)
{
	portal_unref(s, s->unnamed_portal);
	s->unnamed_portal = NULL;
	while (s->portals) {
		struct portal *p = s->portals;

		s->portals = p->next;
		p->in_table = false;
		portal_unref(s, p);
	}
	s->nportals = 0;
}

static struct portal *portal_find(struct session *s, const char *name)
{
	struct portal *p;

	if (!name[0])
		return s->unnamed_portal;
	for (p = s->portals; p; p = p->next)
		if (!strcmp(p->name, name))
			return p;
	return NULL;
}

static void portal_forget(struct session *s, const char *name)
{
	struct portal **pp;

	if (!name[0]) {
		portal_unref(s, s->unnamed_portal);
		s->unnamed_portal = NULL;
		return;
	}
	for (pp = &s->portals; *pp; pp = &(*pp)->next) {
		if (!strcmp((*pp)->name, name)) {
			struct portal *p = *pp;

			*pp = p->next;
			p->in_table = false;
			s->nportals--;
			portal_unref(s, p);
			return;
		}
	}
}

/* Stores a portal (the table takes the caller's reference), evicting the oldest named one
 * at max_portals. */
static void portal_put(struct session *s, struct portal *p)
{
	if (!p->name[0]) {
		portal_unref(s, s->unnamed_portal);
		s->unnamed_portal = p;
		p->in_table = true;
		return;
	}
	portal_forget(s, p->name);
	if (s->nportals >= s->cfg.max_portals) {
		struct portal **pp = &s->portals;

		s->st->portals_evicted++;
		if (!*pp) {
			portal_unref(s, p);
			return;
		}
		while ((*pp)->next)
			pp = &(*pp)->next;
		portal_forget(s, (*pp)->name);
	}
	p->next = s->portals;
	s->portals = p;
	p->in_table = true;
	s->nportals++;
}

/* ---- requests ------------------------------------------------------------------------- */

static void req_free(struct session *s, struct req *r)
{
	if (!r)
		return;
	if (s->copy_req == r) {
		s->copy_req = NULL;
		s->fe_in_copy = false;
	}
	stmt_unref(r->stmt);
	portal_unref(s, r->portal);
	free(r->own);
	free(r->copy);
	s->inflight--;
	if (s->nfree_reqs < FREE_REQS) {
		r->next_free = s->free_reqs;
		s->free_reqs = r;
		s->nfree_reqs++;
		return;
	}
	free(r);
}

static struct req *req_new(struct session *s, enum session_req_kind kind, uint64_t ts_start)
{
	struct req *r;

	if (s->inflight >= s->cfg.max_inflight) {
		s->st->inflight_overflow++;
		return NULL;
	}
	if (s->free_reqs) {
		r = s->free_reqs;
		s->free_reqs = r->next_free;
		s->nfree_reqs--;
		memset(r, 0, sizeof(*r));
	} else {
		r = calloc(1, sizeof(*r));
		if (!r)
			return NULL;
	}
	r->pub.kind = kind;
	r->pub.ts_start = ts_start;
	r->pub.sync_group = s->sync_group;
	s->inflight++;
	return r;
}

/* Hands a completed request to the consumer and frees it. */
static void req_complete(struct session *s, struct req *r, uint64_t ts_end)
{
	struct session_request *p;

	if (!r)
		return;
	p = &r->pub;
	p->ts_end = ts_end;
	if (!r->has_tag)
		p->rows = p->datarows;
	p->copy_data = r->copy;
	if (p->kind == SESSION_REQ_EXECUTE)
		p->txn_before = s->info.txn_status; /* its Sync's ReadyForQuery is still to come */
	s->st->requests++;
	if (s->h->request)
		s->h->request(s->ctx, &s->info, p);
	req_free(s, r);
}

/* A DataRow of the request: counted, and hashed when rows are compared (the sum of the
 * bodies' hashes does not depend on the rows' order). */
static void note_datarow(struct session *s, struct req *r, const struct pgwire_msg *m)
{
	if (!r)
		return;
	r->pub.datarows++;
	r->stmt_rows++;
	if (!s->cfg.wire.keep_datarows)
		return;
	if (m->body_kept)
		r->pub.rows_hash += XXH3_64bits(m->body, m->len);
	else
		r->pub.rows_unhashed = true;
}

/* A request the server will never answer (or whose answer cannot be told apart). */
static void req_abandon(struct session *s, struct req *r)
{
	if (!r)
		return;
	s->st->abandoned++;
	req_free(s, r);
}

/* Points the request's replay fields at its portal and statement (it holds references). */
static void req_attach(struct req *r, struct portal *p)
{
	struct session_request *q = &r->pub;

	r->portal = p;
	p->refs++;
	if (p->stmt) {
		r->stmt = p->stmt;
		r->stmt->refs++;
		q->text = r->stmt->text;
		q->text_len = r->stmt->text_len;
		q->n_param_types = r->stmt->n_types;
		q->param_types = r->stmt->types;
	}
	q->stmt_name = p->stmt_name;
	q->portal = p->name;
	q->function_oid = p->function_oid;
	q->n_param_formats = p->n_formats;
	q->param_formats = p->formats;
	q->n_params = p->n_params;
	q->param_lengths = p->lengths;
	q->param_values = p->values;
	q->n_result_formats = p->n_result_formats;
	q->result_formats = p->result_formats;
}

/* ---- the FIFO of owed answers --------------------------------------------------------- */

static struct expect *fifo_at(struct session *s, uint32_t i)
{
	return &s->fifo[(s->fifo_head + i) & (s->fifo_cap - 1)];
}

static bool fifo_push(struct session *s, enum exp_kind kind, struct req *r, uint64_t ts, int who)
{
	if (s->fifo_len == s->fifo_cap) {
		uint32_t cap = s->fifo_cap ? s->fifo_cap * 2 : FIFO_MIN, i;
		struct expect *nf;

		if (s->fifo_cap >= s->fifo_max)
			return false;
		nf = malloc(cap * sizeof(*nf));
		if (!nf)
			return false;
		for (i = 0; i < s->fifo_len; i++)
			nf[i] = *fifo_at(s, i);
		free(s->fifo);
		s->fifo = nf;
		s->fifo_cap = cap;
		s->fifo_head = 0;
	}
	*fifo_at(s, s->fifo_len) =
	    (struct expect){.kind = kind, .who = (int8_t)who, .req = r, .ts = ts};
	s->fifo_len++;
	return true;
}

static struct expect fifo_pop(struct session *s)
{
	struct expect e = *fifo_at(s, 0);

	s->fifo_head = (s->fifo_head + 1) & (s->fifo_cap - 1);
	s->fifo_len--;
	return e;
}

/* Has the client already sent another Execute before its next Sync (several Executes in
 * one implicit transaction)? Looks at what is owed, at most 64 entries ahead. */
static bool execute_follows(struct session *s, bool *sync_next)
{
	uint32_t i;

	*sync_next = false;
	for (i = 0; i < s->fifo_len && i < 64; i++) {
		enum exp_kind k = fifo_at(s, i)->kind;

		if (k == EXP_EXECUTE)
			return true;
		if (k == EXP_SYNC) {
			*sync_next = true;
			return false;
		}
		if (k == EXP_QUERY || k == EXP_FUNCTION)
			return false;
	}
	return i == 64;
}

static void lose_alignment(struct session *s);

/* Queues what the server owes for one client message, captured at ts (who: see struct
 * activity); on overflow alignment is lost. */
static inline void expect_at(struct session *s, enum exp_kind kind, struct req *r, uint64_t ts,
			     int who)
{
	if (fifo_push(s, kind, r, ts, who)) {
		if (r && (kind == EXP_QUERY || kind == EXP_EXECUTE))
			s->copy_req = r;
		return;
	}
	s->st->inflight_overflow++;
	req_abandon(s, r);
	lose_alignment(s);
}

static void expect(struct session *s, enum exp_kind kind, struct req *r)
{
	expect_at(s, kind, r, 0, WHO_OTHER);
}

/* Forgets every owed answer; the requests among them are abandoned. */
static void fifo_abandon_all(struct session *s)
{
	while (s->fifo_len)
		req_abandon(s, fifo_pop(s).req);
	s->copy_req = NULL;
	s->fe_in_copy = false;
}

/* ---- statements prepared before capture ------------------------------------------------- */

static bool tracking(const struct session *s)
{
	return s->cfg.track_activity && s->info.resynced;
}

static bool sets_query_text(enum exp_kind k)
{
	return k == EXP_PARSE || k == EXP_BIND || k == EXP_EXECUTE || k == EXP_QUERY;
}

/* Forgets unknown name k; what ran it now counts as WHO_OTHER. */
static void unknown_drop(struct session *s, int k)
{
	struct recover *rc = s->rec;
	uint32_t i;

	free(rc->names[k].name);
	memset(&rc->names[k], 0, sizeof(rc->names[k]));
	for (i = 0; rc->ring && i < rc->n; i++)
		if (rc->ring[i].who == k)
			rc->ring[i].who = WHO_OTHER;
	for (i = 0; i < s->fifo_len; i++)
		if (fifo_at(s, i)->who == k)
			fifo_at(s, i)->who = WHO_OTHER;
}

static void unknown_forget(struct session *s, const char *name)
{
	int k;

	if (!s->rec)
		return;
	for (k = 0; k < SESSION_UNKNOWN_NAMES; k++)
		if (s->rec->names[k].name && !strcmp(s->rec->names[k].name, name))
			unknown_drop(s, k);
}

/* The slot of an unknown statement's name, made (evicting the least recently used) when
 * create; WHO_OTHER when there is none, it is too long, or memory is short. */
static int unknown_slot(struct session *s, const char *name, bool create)
{
	struct recover *rc = s->rec;
	int k, free_k = -1, lru = 0;

	if (!name || !name[0] || strlen(name) >= NAME_MAX_B)
		return WHO_OTHER;
	if (!rc) {
		if (!create || !(rc = s->rec = calloc(1, sizeof(*rc))))
			return WHO_OTHER;
	}
	for (k = 0; k < SESSION_UNKNOWN_NAMES; k++) {
		struct unknown_name *u = &rc->names[k];

		if (u->name && !strcmp(u->name, name)) {
			u->used = ++rc->stamp;
			return k;
		}
		if (!u->name && free_k < 0)
			free_k = k;
		if (u->used < rc->names[lru].used)
			lru = k;
	}
	if (!create)
		return WHO_OTHER;
	if (free_k < 0) {
		unknown_drop(s, lru);
		free_k = lru;
	}
	rc->names[free_k].name = strdup(name);
	if (!rc->names[free_k].name)
		return WHO_OTHER;
	rc->names[free_k].used = ++rc->stamp;
	return free_k;
}

/* Who a Bind's or an Execute's portal runs (see struct activity), when tracking. */
static int portal_who(struct session *s, const struct portal *p)
{
	if (!p || p->stmt || !p->stmt_name[0] || !tracking(s))
		return WHO_OTHER;
	if (stmt_find(s, p->stmt_name)) /* bound before its text became known */
		return WHO_OTHER;
	return unknown_slot(s, p->stmt_name, true);
}

/* An answered message that set the query text: remembered while tracking. */
static void note_activity(struct session *s, const struct expect *e, uint64_t hi)
{
	struct recover *rc = s->rec;
	struct activity *a;

	if (!sets_query_text(e->kind) || !rc || !rc->ring)
		return;
	if (rc->n == SESSION_ACTIVITY_MAX) {
		a = &rc->ring[rc->head];
		s->seen_from = max_u64(s->seen_from, a->hi);
		rc->head = (rc->head + 1) % SESSION_ACTIVITY_MAX;
		rc->n--;
	}
	rc->ring[(rc->head + rc->n) % SESSION_ACTIVITY_MAX] =
	    (struct activity){.lo = e->ts, .hi = hi, .who = e->who};
	rc->n++;
}

/* The head of the FIFO got its answer, captured at ts. */
static inline struct expect fifo_pop_answered(struct session *s, uint64_t ts)
{
	struct expect e = fifo_pop(s);

	if (s->seen_from != UINT64_MAX) /* tracking (rare): keep the hot path short */
		note_activity(s, &e, ts);
	return e;
}

/* Alignment (re)gained at ts: everything processed since is seen. */
static void tracking_start(struct session *s, uint64_t ts)
{
	if (!tracking(s))
		return;
	if (!s->rec)
		s->rec = calloc(1, sizeof(*s->rec));
	if (s->rec && !s->rec->ring)
		s->rec->ring = calloc(SESSION_ACTIVITY_MAX, sizeof(*s->rec->ring));
	if (!s->rec || !s->rec->ring)
		return;
	s->rec->head = s->rec->n = 0;
	s->seen_from = ts;
}

static void recover_free(struct recover *rc)
{
	int k;

	if (!rc)
		return;
	for (k = 0; k < SESSION_UNKNOWN_NAMES; k++)
		free(rc->names[k].name);
	free(rc->ring);
	free(rc);
}

/* Alignment lost: what the server processes can no longer be placed. */
static void tracking_stop(struct session *s)
{
	s->seen_from = UINT64_MAX;
	if (s->rec)
		s->rec->n = 0;
}

/* ---- alignment ------------------------------------------------------------------------ */

/* Requests can no longer be matched to answers: drop them and wait for a quiet point. */
static void lose_alignment(struct session *s)
{
	fifo_abandon_all(s);
	s->tentative = false;
	s->skip_till_sync = false;
	s->batch_open = false;
	s->fe_dirty_ts = max_u64(s->fe_dirty_ts, s->fe_last_ts);
	s->naev = 0;
	s->info.resynced = true;
	tracking_stop(s);
	if (s->aligned && s->info.state == SESSION_READY)
		s->info.state = SESSION_HUNTING;
	s->aligned = false;
}

static void note_align_ev(struct session *s, uint64_t ts, int d);

/* A tentative alignment (can_align_first) proved unsafe: its requests are abandoned, and
 * its batch, if it ended, still awaits an answer as far as alignment knows. */
static void refute(struct session *s)
{
	bool ended = s->tentative_ended;
	uint64_t end = s->tentative_end_ts;

	lose_alignment(s);
	if (ended) {
		note_align_ev(s, end, +1);
		s->fe_dirty_ts = max_u64(s->fe_dirty_ts, end);
	}
}

/* Records a batch end (+1) or a ReadyForQuery (-1) seen while unaligned, in capture-time
 * order; at equal times a ReadyForQuery goes first (the cautious order). */
static void note_align_ev(struct session *s, uint64_t ts, int d)
{
	uint32_t i;

	if (s->naev == ALIGN_EVENTS) {
		memmove(s->aev, s->aev + 1, (ALIGN_EVENTS - 1) * sizeof(s->aev[0]));
		s->naev--;
	}
	for (i = s->naev; i > 0; i--) {
		const struct align_ev *e = &s->aev[i - 1];

		if (e->ts < ts || (e->ts == ts && (e->d < 0 || d > 0)))
			break;
		s->aev[i] = *e;
	}
	s->aev[i] = (struct align_ev){.ts = ts, .d = d};
	s->naev++;
}

/*
 * A lower bound of the batches still unanswered at ts: with D the batch ends minus the
 * ReadyForQuerys seen up to a time (capture-time order), the server owes at least
 * D(ts) - min D over any earlier time, since it never owes less than nothing. Taken in
 * capture order, not processing order: a ReadyForQuery processed before the query it
 * answers must not count against a later one.
 */
static int owed_at_least(const struct session *s, uint64_t ts)
{
	int d = 0, min = 0;
	uint32_t i;

	for (i = 0; i < s->naev && s->aev[i].ts <= ts; i++) {
		d += s->aev[i].d;
		if (d < min)
			min = d;
	}
	return d - min;
}

/*
 * A session caught mid-way whose first bytes are a client batch, decoded from their first
 * byte, while the server has sent nothing since capture began: for a client that waits
 * for ReadyForQuery (as can_align assumes), the server owed nothing when it was sent.
 * Tentative: the answer must be decoded from the server's first byte and match it.
 */
static bool can_align_first(const struct session *s)
{
	return !s->ever_aligned && !s->fe_last_ts && !s->be_fed && s->naev == 0 &&
	       s->synced[PGWIRE_FRONTEND] && pgwire_whole(s->wire, PGWIRE_FRONTEND);
}

static bool can_align(const struct session *s, const struct pgwire_msg *m)
{
	return s->synced[PGWIRE_FRONTEND] && s->synced[PGWIRE_BACKEND] && s->be_idle && s->have_z &&
	       s->last_z_ts >= s->fe_dirty_ts && m->ts_start >= s->last_z_ts &&
	       owed_at_least(s, m->ts_start) == 0;
}

static void align(struct session *s, uint64_t ts)
{
	s->aligned = true;
	s->ever_aligned = true;
	s->info.state = SESSION_READY;
	if (!s->tentative)
		s->st->resyncs++;
	/* what came before was processed before the ReadyForQuery that allowed this; a
	 * tentative alignment has no such ReadyForQuery: nothing is known before its batch */
	tracking_start(s, s->tentative ? ts : s->last_z_ts);
	emit_event(s, SESSION_EV_RESYNC, ts);
}

/* Client bytes the decoder skipped since the last look make the current chunk's capture
 * time "unaccounted for". */
static void note_skips(struct session *s)
{
	uint64_t sk = pgwire_conn_stats(s->wire)->bytes_skipped;

	if (sk == s->skip_seen)
		return;
	s->skip_seen = sk;
	if (s->feed_dir == PGWIRE_FRONTEND)
		s->fe_dirty_ts = max_u64(s->fe_dirty_ts, s->feed_ts);
}

static bool is_batch_end(uint8_t type)
{
	return type == 'Q' || type == 'S' || type == 'F';
}

/* ---- parsing answers ------------------------------------------------------------------ */

/* SQLSTATE of an ErrorResponse ("" when missing or malformed: counted). */
static void read_sqlstate(struct session *s, const struct pgwire_msg *m, char out[6])
{
	struct pgwire_cursor cur;
	const char *v;
	size_t vlen, i;
	uint8_t code;

	out[0] = 0;
	if (!m->body_kept) {
		s->st->protocol_errors++;
		return;
	}
	pgwire_cursor_init(&cur, m->body, m->len);
	for (;;) {
		if (!pgwire_get_u8(&cur, &code))
			goto bad;
		if (code == 0)
			break;
		if (!pgwire_get_string(&cur, &v, &vlen))
			goto bad;
		if (code != 'C')
			continue;
		if (vlen != 5)
			goto bad;
		for (i = 0; i < 5; i++)
			if (!((v[i] >= '0' && v[i] <= '9') || (v[i] >= 'A' && v[i] <= 'Z')))
				goto bad;
		memcpy(out, v, 5);
		out[5] = 0;
	}
	if (out[0])
		return;
bad:
	out[0] = 0;
	s->st->protocol_errors++;
}

/* Whether the verb (the tag's first word) is one whose tag ends with a row count. */
static bool counting_verb(const char *v, size_t n)
{
	switch (n) {
	case 4:
		return !memcmp(v, "MOVE", 4) || !memcmp(v, "COPY", 4);
	case 5:
		return !memcmp(v, "FETCH", 5) || !memcmp(v, "MERGE", 5);
	case 6:
		return !memcmp(v, "SELECT", 6) || !memcmp(v, "INSERT", 6) ||
		       !memcmp(v, "UPDATE", 6) || !memcmp(v, "DELETE", 6);
	default:
		return false;
	}
}

/* Row count of a command tag (len bytes) whose last word counts rows; false for others. */
static bool tag_rows(const char *tag, size_t len, uint64_t *rows)
{
	const char *sp = memchr(tag, ' ', len), *p = tag + len;
	uint64_t n = 0;

	if (!sp || !counting_verb(tag, (size_t)(sp - tag)))
		return false;
	while (p > sp && p[-1] >= '0' && p[-1] <= '9')
		p--;
	if (p == tag + len || p[-1] != ' ' || tag + len - p > 19)
		return false;
	for (; p < tag + len; p++)
		n = n * 10 + (uint64_t)(*p - '0');
	*rows = n;
	return true;
}

static void on_command_complete(struct session *s, struct req *r, const struct pgwire_msg *m)
{
	struct pgwire_cursor cur;
	const char *tag;
	size_t tlen;

	if (!r)
		return;
	r->pub.commands++;
	r->has_tag = true;
	r->pub.tag[0] = 0;
	pgwire_cursor_init(&cur, m->body, m->len);
	if (!m->body_kept || !pgwire_get_string(&cur, &tag, &tlen)) {
		s->st->protocol_errors++;
		r->pub.rows = r->stmt_rows;
	} else {
		if (tlen >= sizeof(r->pub.tag))
			tlen = sizeof(r->pub.tag) - 1;
		memcpy(r->pub.tag, tag, tlen);
		r->pub.tag[tlen] = 0;
		if (!tag_rows(r->pub.tag, tlen, &r->pub.rows))
			r->pub.rows = r->stmt_rows;
	}
	r->stmt_rows = 0;
}

static void on_error(struct session *s, struct req *r, const struct pgwire_msg *m)
{
	char st[6];

	read_sqlstate(s, m, st);
	if (!r || r->pub.error)
		return; /* the first error of a request is its outcome */
	r->pub.error = true;
	memcpy(r->pub.sqlstate, st, sizeof(st));
}

/* ReadyForQuery: transaction status; portals do not outlive their transaction. */
static char on_ready(struct session *s, const struct pgwire_msg *m)
{
	char st = m->body_kept && m->len == 1 ? (char)m->body[0] : 0;

	if (st != 'I' && st != 'T' && st != 'E') {
		s->st->protocol_errors++;
		return 0;
	}
	s->info.txn_status = st;
	if (st == 'I')
		portals_clear(s);
	return st;
}

/* ---- the client's messages ------------------------------------------------------------- */

static bool is_false(const char *v)
{
	/* PostgreSQL's parse_bool: unique prefixes of false/no/off, and 0. */
	size_t n = strlen(v);

	if (n == 0)
		return false;
	if (!strncasecmp(v, "false", n) || !strncasecmp(v, "no", n) || !strcmp(v, "0"))
		return true;
	return n >= 2 && !strncasecmp(v, "off", n);
}

/* StartupMessage: parameters, database (the user's name by default), replication. */
static void on_startup(struct session *s, const struct pgwire_msg *m)
{
	struct pgwire_cursor cur;
	const char *name, *value, *db = NULL, *user = NULL, *app = "", *repl = NULL;
	size_t nlen, vlen, plen;
	uint16_t n = 0;
	int pass;

	if (s->startup || !m->body_kept || m->len < 4)
		return;
	/* The parameter bytes after the protocol code, plus a NUL: a packet missing its
	 * terminator still yields NUL-terminated strings. */
	plen = m->len - 4;
	s->startup = malloc(plen + 1);
	if (!s->startup)
		return;
	memcpy(s->startup, m->body + 4, plen);
	s->startup[plen] = 0;
	for (pass = 0; pass < 2; pass++) {
		pgwire_cursor_init(&cur, s->startup, plen + 1);
		n = 0;
		while (pgwire_get_string(&cur, &name, &nlen) && nlen > 0) {
			if (!pgwire_get_string(&cur, &value, &vlen)) {
				if (!pass)
					s->st->protocol_errors++;
				break;
			}
			if (pass) {
				s->params[n] = (struct session_param){.name = name, .value = value};
				if (!strcmp(name, "database"))
					db = value;
				else if (!strcmp(name, "user"))
					user = value;
				else if (!strcmp(name, "application_name"))
					app = value;
				else if (!strcmp(name, "replication"))
					repl = value;
			}
			n++; /* at most 5000 pairs fit in a 10000-byte packet */
		}
		if (!pass) {
			s->params = calloc(n ? n : 1, sizeof(*s->params));
			if (!s->params)
				return;
		}
	}
	s->info.params = s->params;
	s->info.n_params = n;
	s->info.user = user && user[0] ? user : SESSION_UNKNOWN;
	s->info.database = db && db[0] ? db : s->info.user;
	s->info.application_name = app;
	s->identified = true;
	emit_event(s, SESSION_EV_IDENTIFIED, m->ts_end);
	if (repl && !is_false(repl)) {
		s->info.state = SESSION_REPLICATION;
		s->st->replication++;
		pgwire_stop(s->wire);
		emit_event(s, SESSION_EV_REPLICATION, m->ts_end);
		return;
	}
	expect(s, EXP_STARTUP, NULL);
}

/* Parse, Bind and Close change the tables the same way aligned or not. Returns what a
 * Bind runs (see struct activity). */
static int fe_tables(struct session *s, const struct pgwire_msg *m)
{
	struct pgwire_cursor cur;
	const char *name;
	size_t nlen;
	uint8_t what;

	switch (m->type) {
	case 'P': {
		struct stmt *st;

		if (!m->body_kept) {
			/* Too long to keep: its name is unknown, so the unnamed statement (by far
			 * the likeliest) can no longer be trusted. */
			stmt_forget(s, "");
			return WHO_OTHER;
		}
		st = stmt_from_parse(m->body, m->len);
		if (!st) {
			s->st->protocol_errors++;
			pgwire_cursor_init(&cur, m->body, m->len);
			if (pgwire_get_string(&cur, &name, &nlen))
				stmt_forget(s, name);
			return WHO_OTHER;
		}
		stmt_put(s, st);
		return WHO_OTHER;
	}
	case 'B': {
		struct portal *p;
		int who;

		if (!m->body_kept) {
			portal_forget(s, "");
			return WHO_OTHER;
		}
		p = portal_new(s, m->body, m->len, false);
		if (!p) {
			s->st->protocol_errors++;
			pgwire_cursor_init(&cur, m->body, m->len);
			if (pgwire_get_string(&cur, &name, &nlen))
				portal_forget(s, name);
			return WHO_OTHER;
		}
		p->stmt = stmt_find(s, p->stmt_name);
		if (p->stmt) {
			p->stmt->refs++;
			if (p->stmt->in_table && p->stmt->name[0]) { /* most recently used */
				lru_unlink(p->stmt);
				lru_push(s, p->stmt);
			}
		}
		who = portal_who(s, p);
		portal_put(s, p);
		return who;
	}
	case 'C':
		pgwire_cursor_init(&cur, m->body, m->len);
		if (!m->body_kept || !pgwire_get_u8(&cur, &what) ||
		    !pgwire_get_string(&cur, &name, &nlen) || pgwire_cursor_left(&cur) != 0) {
			s->st->protocol_errors++;
			return WHO_OTHER;
		}
		if (what == 'S')
			stmt_forget(s, name);
		else if (what == 'P')
			portal_forget(s, name);
		else
			s->st->protocol_errors++;
		return WHO_OTHER;
	default:
		return WHO_OTHER;
	}
}

/* The Parse/Bind/Describe before an Execute are part of its request. */
static void batch_note(struct session *s, const struct pgwire_msg *m)
{
	if (!s->batch_open) {
		s->batch_open = true;
		s->batch_ts = m->ts_start;
	}
}

static void on_query(struct session *s, const struct pgwire_msg *m)
{
	struct req *r = req_new(s, SESSION_REQ_QUERY, m->ts_start);

	s->batch_open = false;
	if (r && m->body_kept) {
		struct pgwire_cursor cur;
		const char *text;
		size_t tlen;

		pgwire_cursor_init(&cur, m->body, m->len);
		if (pgwire_get_string(&cur, &text, &tlen) && pgwire_cursor_left(&cur) == 0) {
			r->own = malloc(tlen + 1);
			if (r->own) {
				memcpy(r->own, text, tlen + 1);
				r->pub.text = r->own;
				r->pub.text_len = tlen;
			}
		} else {
			s->st->protocol_errors++;
		}
	}
	expect_at(s, EXP_QUERY, r, m->ts_start, WHO_OTHER);
}

static void on_execute(struct session *s, const struct pgwire_msg *m)
{
	uint64_t ts = s->batch_open && s->batch_ts < m->ts_start ? s->batch_ts : m->ts_start;
	struct req *r = req_new(s, SESSION_REQ_EXECUTE, ts);
	struct pgwire_cursor cur;
	const char *name = "";
	size_t nlen = 0;
	int32_t max_rows = 0;
	struct portal *p;

	s->batch_open = false;
	pgwire_cursor_init(&cur, m->body, m->len);
	if (!m->body_kept || !pgwire_get_string(&cur, &name, &nlen) ||
	    !pgwire_get_i32(&cur, &max_rows) || pgwire_cursor_left(&cur) != 0) {
		s->st->protocol_errors++;
		name = "";
		nlen = 0;
		max_rows = 0;
	}
	p = portal_find(s, name);
	if (r) {
		r->pub.max_rows = max_rows > 0 ? (uint32_t)max_rows : 0;
		if (p) {
			req_attach(r, p);
		} else {
			r->own = malloc(nlen + 1);
			if (r->own) {
				memcpy(r->own, name, nlen);
				r->own[nlen] = 0;
				r->pub.portal = r->own;
			}
		}
	}
	expect_at(s, EXP_EXECUTE, r, m->ts_start, portal_who(s, p));
}

static void on_function(struct session *s, const struct pgwire_msg *m)
{
	struct req *r = req_new(s, SESSION_REQ_FUNCTION, m->ts_start);

	s->batch_open = false;
	if (r) {
		struct portal *p = m->body_kept ? portal_new(s, m->body, m->len, true) : NULL;

		if (p) {
			req_attach(r, p);
			portal_unref(s, p); /* the request holds the only reference */
		} else if (m->body_kept) {
			s->st->protocol_errors++;
		}
	}
	expect(s, EXP_FUNCTION, r);
}

/*
 * The first CopyData/CopyDone/CopyFail of a COPY FROM STDIN: the server swallows any Sync
 * or Flush a client sent after the COPY's Execute without knowing it was a COPY (libpq
 * does: it sends Sync after CopyDone again), so those Syncs owe no ReadyForQuery.
 */
static void copy_started(struct session *s)
{
	uint32_t i, j;
	bool after = false;

	s->fe_in_copy = true;
	for (i = 0, j = 0; i < s->fifo_len; i++) {
		struct expect e = *fifo_at(s, i);

		if (e.req == s->copy_req)
			after = true;
		else if (after && e.kind == EXP_SYNC)
			continue;
		*fifo_at(s, j++) = e;
	}
	s->fifo_len = j;
}

static void on_copy_data(struct session *s, const struct pgwire_msg *m)
{
	struct req *r = s->copy_req;
	size_t room, n;

	if (!r)
		return;
	if (!s->fe_in_copy)
		copy_started(s);
	if (m->type != 'd') {
		s->fe_in_copy = false;
		return;
	}
	room = s->cfg.max_copy_bytes - r->pub.copy_len;
	n = m->body_kept ? m->len : 0;
	if (!m->body_kept || m->len > room) {
		if (!r->pub.copy_truncated)
			s->st->copy_truncated++;
		r->pub.copy_truncated = true;
		if (n > room)
			n = room;
	}
	if (n == 0)
		return;
	if (r->pub.copy_len + n > r->copy_cap) {
		size_t cap = r->copy_cap ? r->copy_cap : 4 * KIB;
		uint8_t *nb;

		while (cap < r->pub.copy_len + n)
			cap *= 2;
		if (cap > s->cfg.max_copy_bytes)
			cap = s->cfg.max_copy_bytes;
		nb = realloc(r->copy, cap);
		if (!nb) {
			r->pub.copy_truncated = true;
			return;
		}
		r->copy = nb;
		r->copy_cap = cap;
	}
	memcpy(r->copy + r->pub.copy_len, m->body, n);
	r->pub.copy_len += n;
}

/* A client message while requests can be matched to answers. */
static void fe_aligned(struct session *s, const struct pgwire_msg *m)
{
	uint8_t kind;
	int who;

	s->fe_last_ts = m->ts_end;
	if (m->type != 'd' && m->type != 'c' && m->type != 'f')
		s->fe_batch_start = is_batch_end(m->type);
	if (s->skip_till_sync && m->type != 'S') {
		/* The server ignores it: an Execute, Query or FunctionCall never runs. */
		if (m->type == 'E' || m->type == 'Q' || m->type == 'F')
			s->st->abandoned++;
		return;
	}
	if (s->fe_in_copy && (m->type == 'S' || m->type == 'H'))
		return; /* ignored by the server during COPY FROM STDIN */
	switch (m->type) {
	case 'Q':
		on_query(s, m);
		break;
	case 'P':
		fe_tables(s, m);
		batch_note(s, m);
		expect_at(s, EXP_PARSE, NULL, m->ts_start, WHO_OTHER);
		break;
	case 'B':
		who = fe_tables(s, m);
		batch_note(s, m);
		expect_at(s, EXP_BIND, NULL, m->ts_start, who);
		break;
	case 'D':
		batch_note(s, m);
		kind = m->body_kept && m->len > 0 ? m->body[0] : 0;
		if (kind != 'S' && kind != 'P')
			s->st->protocol_errors++;
		expect(s, kind == 'S' ? EXP_DESC_STMT : EXP_DESC_PORTAL, NULL);
		break;
	case 'E':
		on_execute(s, m);
		break;
	case 'C':
		fe_tables(s, m);
		expect(s, EXP_CLOSE, NULL);
		break;
	case 'S':
		s->skip_till_sync = false;
		s->batch_open = false;
		expect(s, EXP_SYNC, NULL);
		s->sync_group++;
		break;
	case 'F':
		on_function(s, m);
		break;
	case 'd':
	case 'c':
	case 'f':
		on_copy_data(s, m);
		break;
	default: /* Flush, Terminate, password/SASL: no answer to expect */
		break;
	}
}

/* A client message while unaligned: tables only, and perhaps the point to align at. */
static void fe_unaligned(struct session *s, const struct pgwire_msg *m)
{
	bool copy = m->type == 'd' || m->type == 'c' || m->type == 'f';

	note_skips(s);
	if (s->fe_batch_start && !copy && m->type != 'X' && m->type != 'p' &&
	    (can_align(s, m) || can_align_first(s))) {
		s->tentative = !can_align(s, m); /* counted as a resync once confirmed */
		align(s, m->ts_start);
		fe_aligned(s, m);
		return;
	}
	fe_tables(s, m);
	if (is_batch_end(m->type))
		note_align_ev(s, m->ts_start, +1);
	s->fe_dirty_ts = max_u64(s->fe_dirty_ts, m->ts_end);
	s->fe_last_ts = m->ts_end;
	if (!copy)
		s->fe_batch_start = is_batch_end(m->type);
}

static void fe_msg(struct session *s, const struct pgwire_msg *m)
{
	switch (m->type) {
	case PGWIRE_MSG_STARTUP:
		on_startup(s, m);
		return;
	case PGWIRE_MSG_CANCEL:
		s->info.state = SESSION_CANCEL;
		pgwire_stop(s->wire);
		return;
	case PGWIRE_MSG_SSL_REQUEST:
	case PGWIRE_MSG_GSSENC_REQUEST:
		return;
	default:
		break;
	}
	if (s->tentative && s->tentative_ended)
		refute(s); /* a second batch before the first one's answer: a pipelining
			    * client, which may have been owed an answer when capture began */
	if (s->aligned)
		fe_aligned(s, m);
	else
		fe_unaligned(s, m); /* may align, tentatively */
	if (s->tentative && !s->tentative_ended && is_batch_end(m->type)) {
		s->tentative_ended = true;
		s->tentative_end_ts = m->ts_start;
	}
}

/* ---- the server's messages ------------------------------------------------------------- */

static void unmatched(struct session *s)
{
	if (!s->tentative) /* else the first answer refutes a tentative alignment */
		s->st->unmatched_responses++;
	lose_alignment(s);
}

/*
 * ErrorResponse while the head owes an extended-protocol answer: the failing item ends
 * with it — an Execute, or, for a Parse/Bind/Describe/Close, the Execute of the same
 * batch it was preparing — and the server ignores everything else up to the Sync: the
 * requests among that (later Executes, a Query or FunctionCall sent in the middle of the
 * pipeline) are abandoned, they never ran.
 */
static void ext_error(struct session *s, const struct pgwire_msg *m)
{
	bool done = false;

	while (s->fifo_len && fifo_at(s, 0)->kind != EXP_SYNC) {
		struct expect e = fifo_pop_answered(s, m->ts_end); /* may have set the text */

		if (e.kind == EXP_EXECUTE && !done) {
			done = true;
			if (e.req) {
				on_error(s, e.req, m);
				req_complete(s, e.req, m->ts_end);
			}
			continue;
		}
		/* later Executes, and a Query or FunctionCall sent in the middle of the
		 * pipeline: the server ignores them */
		req_abandon(s, e.req);
	}
	if (!done) {
		char st[6];

		read_sqlstate(s, m, st); /* validated and counted, but nothing ran */
	}
	if (!s->fifo_len)
		s->skip_till_sync = true;
}

static bool is_async(uint8_t type)
{
	/* NoticeResponse, ParameterStatus, NotificationResponse: any time. */
	return type == 'N' || type == 'S' || type == 'A';
}

static void be_aligned(struct session *s, const struct pgwire_msg *m)
{
	struct expect *e;
	struct req *r;
	char st;

	if (!s->fifo_len) {
		if (m->type == 'E' || is_async(m->type))
			return; /* a FATAL (shutdown, termination) comes unasked */
		unmatched(s);
		return;
	}
	e = fifo_at(s, 0);
	r = e->req;
	if (e->kind != EXP_STARTUP && is_async(m->type))
		return;
	switch (e->kind) {
	case EXP_STARTUP:
		if (m->type == 'Z') {
			fifo_pop(s);
			on_ready(s, m);
			if (s->info.state == SESSION_STARTUP)
				s->info.state = SESSION_READY;
		} else if (m->type == 'E') {
			fifo_pop(s); /* authentication failed; the server closes */
		}
		return;
	case EXP_PARSE:
	case EXP_BIND:
	case EXP_CLOSE:
		if (m->type == 'E') {
			ext_error(s, m);
		} else if (m->type == (e->kind == EXP_PARSE  ? '1'
				       : e->kind == EXP_BIND ? '2'
							     : '3')) {
			fifo_pop_answered(s, m->ts_end);
		} else {
			unmatched(s);
		}
		return;
	case EXP_DESC_STMT:
	case EXP_DESC_PORTAL:
		if (m->type == 'E')
			ext_error(s, m);
		else if (m->type == 'T' || m->type == 'n')
			fifo_pop(s);
		else if (m->type != 't' || e->kind != EXP_DESC_STMT)
			unmatched(s);
		return;
	case EXP_EXECUTE:
		switch (m->type) {
		case 'D':
			note_datarow(s, r, m);
			return;
		case 'C':
			on_command_complete(s, r, m);
			break;
		case 'I':
			if (r)
				r->pub.empty = true;
			break;
		case 's':
			if (r)
				r->pub.suspended = true;
			break;
		case 'E':
			ext_error(s, m);
			return;
		case 'T':
		case 'G':
		case 'H':
		case 'W':
		case 'd':
		case 'c':
			return;
		default:
			unmatched(s);
			return;
		}
		fifo_pop_answered(s, m->ts_end);
		if (r)
			r->pub.group_more = execute_follows(s, &r->pub.group_end);
		req_complete(s, r, m->ts_end);
		return;
	case EXP_SYNC:
		if (m->type == 'Z') {
			fifo_pop(s);
			on_ready(s, m);
			emit_event(s, SESSION_EV_SYNC, m->ts_end);
		} else if (m->type != 'E') { /* an error committing the implicit transaction */
			unmatched(s);
		}
		return;
	case EXP_QUERY:
	case EXP_FUNCTION:
		switch (m->type) {
		case 'Z':
			fifo_pop_answered(s, m->ts_end);
			if (r)
				r->pub.txn_before = s->info.txn_status;
			st = on_ready(s, m);
			if (r)
				r->pub.txn_status = st;
			req_complete(s, r, m->ts_end);
			return;
		case 'E':
			on_error(s, r, m);
			return;
		case 'V':
			if (e->kind != EXP_FUNCTION)
				unmatched(s);
			return;
		default:
			break;
		}
		if (e->kind == EXP_FUNCTION) {
			unmatched(s);
			return;
		}
		switch (m->type) {
		case 'D':
			note_datarow(s, r, m);
			return;
		case 'C':
			on_command_complete(s, r, m);
			return;
		case 'I':
			if (r)
				r->pub.empty = true;
			return;
		case 'T':
		case 'G':
		case 'H':
		case 'W':
		case 'd':
		case 'c':
			return;
		default:
			unmatched(s);
			return;
		}
	}
}

static void be_msg(struct session *s, const struct pgwire_msg *m)
{
	if (m->type == PGWIRE_MSG_ENC_RESPONSE) {
		if (m->len >= 1)
			s->info.encryption = (char)m->body[0];
		return;
	}
	s->be_idle = m->type == 'Z';
	if (m->type == 'Z') {
		s->have_z = true;
		s->last_z_ts = m->ts_end;
	}
	if (s->aligned) {
		be_aligned(s, m);
		if (m->type == 'Z' && s->tentative && s->aligned) {
			s->tentative = false; /* the first answer ended where it should */
			s->st->resyncs++;
		}
		return;
	}
	if (m->type == 'Z') {
		on_ready(s, m);
		note_align_ev(s, m->ts_end, -1);
	}
}

/* ---- decoder callbacks ------------------------------------------------------------------ */

static void on_wire_msg(void *ctx, const struct pgwire_msg *m)
{
	struct session *s = ctx;

	if (m->dir == PGWIRE_FRONTEND)
		fe_msg(s, m);
	else
		be_msg(s, m);
}

/* A direction lost its boundaries (decoder) or bytes (gap): nothing owed can be trusted. */
static void desync(struct session *s, enum pgwire_dir dir, uint64_t ts)
{
	uint64_t bad = pgwire_conn_stats(s->wire)->bad_lengths;
	bool bad_input = bad != s->bad_seen;

	s->bad_seen = bad;
	/*
	 * The client sent something that is no message (a length or type that cannot be),
	 * and nothing was lost before it: the requests already whole are answered in order
	 * by a server whose stream is intact, so alignment holds for them. PostgreSQL then
	 * ends the connection (FATAL); if the client goes on instead, alignment is given up
	 * when its stream is found again (the bytes skipped meanwhile may have been messages
	 * the server took).
	 */
	if (dir == PGWIRE_FRONTEND && bad_input && s->aligned && !s->tentative &&
	    s->synced[PGWIRE_BACKEND]) {
		s->synced[dir] = false;
		s->fe_batch_start = false;
		s->fe_bad = true;
		return;
	}
	s->fe_bad = false;
	s->synced[dir] = false;
	if (dir == PGWIRE_FRONTEND) {
		s->fe_batch_start = false; /* until the decoder finds a boundary */
		s->fe_dirty_ts = max_u64(s->fe_dirty_ts, ts);
		/* a lost Parse/Bind may have replaced the unnamed statement and portals */
		stmt_forget(s, "");
		portals_clear(s);
	} else {
		s->be_idle = false;
	}
	lose_alignment(s);
	if (s->info.state == SESSION_STARTUP)
		s->info.state = SESSION_HUNTING;
}

static void on_wire_event(void *ctx, enum pgwire_event ev, enum pgwire_dir dir, uint64_t ts)
{
	struct session *s = ctx;

	switch (ev) {
	case PGWIRE_EV_DESYNC:
		desync(s, dir, ts);
		break;
	case PGWIRE_EV_RESYNC:
		if (dir == PGWIRE_FRONTEND && s->fe_bad) {
			s->fe_bad = false;
			desync(s, dir, ts); /* what it skipped may have been messages */
		}
		s->synced[dir] = true;
		if (dir == PGWIRE_FRONTEND)
			s->fe_batch_start = true;
		else
			s->be_idle = false;
		if (dir == PGWIRE_BACKEND && s->tentative && !pgwire_whole(s->wire, dir))
			refute(s); /* its answer was not found at the server's first byte */
		break;
	case PGWIRE_EV_ENCRYPTED:
		lose_alignment(s);
		s->info.state = SESSION_ENCRYPTED;
		if (!s->info.encryption)
			s->info.encryption = 'S'; /* the client spoke TLS first */
		s->st->encrypted++;
		emit_event(s, SESSION_EV_ENCRYPTED, ts);
		break;
	}
}

static const struct pgwire_handler wire_handler = {
    .message = on_wire_msg,
    .event = on_wire_event,
};

/* Adds what the decoder counted since the last call to the owner's totals. */
static void wire_sync(struct session *s)
{
	const struct pgwire_stats *w = pgwire_conn_stats(s->wire);
	struct pgwire_stats *t = &s->st->wire, *seen = &s->wire_seen;

	t->messages += w->messages - seen->messages;
	t->bytes += w->bytes - seen->bytes;
	t->bytes_skipped += w->bytes_skipped - seen->bytes_skipped;
	t->bodies_too_big += w->bodies_too_big - seen->bodies_too_big;
	t->over_budget += w->over_budget - seen->over_budget;
	t->bad_lengths += w->bad_lengths - seen->bad_lengths;
	t->resyncs += w->resyncs - seen->resyncs;
	*seen = *w;
}

/* ---- public interface --------------------------------------------------------------------- */

struct session *session_new(const struct session_config *cfg, const struct session_handler *h,
			    void *ctx, struct session_stats *stats, uint64_t id, bool from_start,
			    uint64_t ts_ns)
{
	struct session *s = calloc(1, sizeof(*s));

	if (!s)
		return NULL;
	if (cfg)
		s->cfg = *cfg;
	else
		session_config_default(&s->cfg);
	s->h = h;
	s->ctx = ctx;
	s->st = stats;
	s->wire = pgwire_conn_new(&s->cfg.wire, &wire_handler, s, from_start);
	if (!s->wire) {
		free(s);
		return NULL;
	}
	s->lru.lru_next = s->lru.lru_prev = &s->lru;
	s->fifo_max = FIFO_MIN;
	while (s->fifo_max < 4 * (uint64_t)s->cfg.max_inflight + 64 && s->fifo_max < (1U << 24))
		s->fifo_max *= 2;
	s->info.id = id;
	s->info.database = SESSION_UNKNOWN;
	s->info.user = SESSION_UNKNOWN;
	s->info.application_name = "";
	s->info.state = from_start ? SESSION_STARTUP : SESSION_HUNTING;
	s->info.resynced = !from_start;
	s->aligned = s->ever_aligned = from_start;
	s->midstream = !from_start;
	s->synced[0] = s->synced[1] = from_start;
	s->fe_batch_start = true;
	s->seen_from = UINT64_MAX;
	stats->sessions_opened++;
	stats->sessions_active++;
	emit_event(s, SESSION_EV_OPEN, ts_ns);
	return s;
}

void session_feed(struct session *s, enum pgwire_dir dir, const uint8_t *data, size_t len,
		  uint64_t ts_ns)
{
	s->feed_dir = dir;
	s->feed_ts = ts_ns;
	if (dir == PGWIRE_BACKEND && len)
		s->be_fed = true;
	if (len)
		s->fed[dir] = true;
	pgwire_feed(s->wire, dir, data, len, ts_ns);
	if (!s->aligned)
		note_skips(s);
	else
		s->skip_seen = pgwire_conn_stats(s->wire)->bytes_skipped;
	wire_sync(s);
}

void session_gap(struct session *s, enum pgwire_dir dir, uint64_t ts_ns)
{
	s->feed_dir = dir;
	s->feed_ts = ts_ns;
	if (s->info.state == SESSION_ENCRYPTED || s->info.state == SESSION_REPLICATION ||
	    s->info.state == SESSION_CANCEL)
		return;
	if (s->midstream && !s->fed[dir])
		return; /* "what came before is unknown": the missed start, known already */
	/* Whatever was owed is lost with the bytes, even if the decoder was still hunting
	 * (then it reports no DESYNC). */
	if (dir == PGWIRE_BACKEND)
		s->be_fed = true;
	desync(s, dir, ts_ns);
	pgwire_gap(s->wire, dir, ts_ns);
	s->skip_seen = pgwire_conn_stats(s->wire)->bytes_skipped;
	wire_sync(s);
}

void session_restart(struct session *s, bool from_start, uint64_t ts_ns)
{
	struct pgwire_conn *wire = pgwire_conn_new(&s->cfg.wire, &wire_handler, s, from_start);

	if (!wire)
		return;	   /* then it stays as it was: not decoded */
	lose_alignment(s); /* what was owed is abandoned */
	portals_clear(s);
	stmts_free(s);
	s->nbuckets = 0;
	s->nstmts = 0;
	wire_sync(s);
	pgwire_conn_free(s->wire);
	s->wire = wire;
	memset(&s->wire_seen, 0, sizeof(s->wire_seen));
	s->copy_req = NULL;
	s->fe_in_copy = false;
	s->fe_bad = false;
	s->have_z = false;
	s->be_idle = false;
	s->tentative_ended = false;
	s->info.txn_status = 0;
	s->info.state = from_start ? SESSION_STARTUP : SESSION_HUNTING;
	s->info.resynced = !from_start;
	s->aligned = s->ever_aligned = from_start;
	s->midstream = !from_start;
	s->synced[0] = s->synced[1] = from_start;
	s->fed[0] = s->fed[1] = false;
	s->be_fed = false;
	s->fe_batch_start = true;
	s->feed_ts = ts_ns;
}

/* At most max bytes of str, NUL-terminated (strndup, written out: inlined with a string
 * constant, strndup's bound beyond the constant's size is a -Wstringop-overread error). */
static char *dup_at_most(const char *str, size_t max)
{
	size_t n = strnlen(str, max);
	char *d = malloc(n + 1);

	if (d) {
		memcpy(d, str, n);
		d[n] = '\0';
	}
	return d;
}

void session_identify(struct session *s, const char *database, const char *user, uint64_t ts_ns)
{
	if (s->identified || !database)
		return;
	s->ident_db = dup_at_most(database, IDENT_MAX);
	s->ident_user = dup_at_most(user ? user : SESSION_UNKNOWN, IDENT_MAX);
	if (!s->ident_db || !s->ident_user) {
		free(s->ident_db);
		free(s->ident_user);
		s->ident_db = s->ident_user = NULL;
		return;
	}
	s->info.database = s->ident_db;
	s->info.user = s->ident_user;
	s->identified = true;
	emit_event(s, SESSION_EV_IDENTIFIED, ts_ns);
}

struct session_info *session_info(struct session *s)
{
	return &s->info;
}

bool session_define_statement(struct session *s, const char *name, const char *text, size_t len)
{
	size_t nlen = name ? strlen(name) : 0;
	struct stmt *st;
	bool defined;
	char *p;

	if (!nlen || !text || len > s->cfg.wire.max_body || memchr(text, 0, len) ||
	    stmt_find(s, name))
		return false;
	st = malloc(sizeof(*st) + nlen + 1 + len + 1);
	if (!st)
		return false;
	*st = (struct stmt){.refs = 1, .text_len = len};
	st->types = (uint32_t *)(st + 1); /* none */
	p = (char *)st->types;
	memcpy(p, name, nlen + 1);
	st->name = p;
	p += nlen + 1;
	memcpy(p, text, len);
	p[len] = 0;
	st->text = p;
	st->refs++; /* ours, to see whether the table kept it (max_statements 0 does not) */
	stmt_put(s, st);
	defined = st->in_table;
	stmt_unref(st);
	return defined;
}

bool session_unknown_first(struct session *s, const char *name)
{
	int k = unknown_slot(s, name, true);

	if (k == WHO_OTHER || s->rec->names[k].reported)
		return false;
	s->rec->names[k].reported = true;
	return true;
}

bool session_unknown_due(struct session *s, const char *name, uint64_t now_ns, uint64_t interval_ns)
{
	int k = unknown_slot(s, name, true);
	struct unknown_name *u;

	if (k == WHO_OTHER)
		return false;
	u = &s->rec->names[k];
	if (u->was_asked && now_ns >= u->asked && now_ns - u->asked < interval_ns)
		return false;
	u->asked = now_ns;
	u->was_asked = true;
	return true;
}

void session_unknown_rearm(struct session *s)
{
	int k;

	for (k = 0; s->rec && k < SESSION_UNKNOWN_NAMES; k++)
		s->rec->names[k].was_asked = false;
}

/* Folds one message that may have set the text within the window into *who: false once
 * two different statements, or one that is not unknown, are among them. */
static bool attribute_one(int w, int *who)
{
	if (w == WHO_OTHER || (*who != WHO_OTHER && *who != w))
		return false;
	*who = w;
	return true;
}

const char *session_attribute(const struct session *s, uint64_t lo_ns, uint64_t hi_ns)
{
	const struct recover *rc = s->rec;
	int who = WHO_OTHER;
	uint32_t i;

	if (!rc || !rc->ring || s->seen_from == UINT64_MAX || lo_ns <= s->seen_from ||
	    lo_ns > hi_ns)
		return NULL;
	for (i = 0; i < rc->n; i++) {
		const struct activity *a = &rc->ring[(rc->head + i) % SESSION_ACTIVITY_MAX];

		if (a->lo <= hi_ns && a->hi >= lo_ns && !attribute_one(a->who, &who))
			return NULL;
	}
	/* unanswered: processed at any time since their capture (client order) */
	for (i = 0; i < s->fifo_len; i++) {
		const struct expect *e = &s->fifo[(s->fifo_head + i) & (s->fifo_cap - 1)];

		if (!sets_query_text(e->kind))
			continue;
		if (e->ts > hi_ns)
			break;
		if (!attribute_one(e->who, &who))
			return NULL;
	}
	return who == WHO_OTHER ? NULL : rc->names[who].name;
}

void session_free(struct session *s, uint64_t ts_ns)
{
	if (!s)
		return;
	emit_event(s, SESSION_EV_CLOSE, ts_ns);
	fifo_abandon_all(s);
	free(s->fifo);
	portals_clear(s);
	stmts_free(s);
	free(s->spare);
	while (s->free_reqs) {
		struct req *r = s->free_reqs;

		s->free_reqs = r->next_free;
		free(r);
	}
	wire_sync(s);
	pgwire_conn_free(s->wire);
	s->st->sessions_active--;
	free(s->params);
	free(s->startup);
	free(s->ident_db);
	free(s->ident_user);
	recover_free(s->rec);
	free(s);
}
