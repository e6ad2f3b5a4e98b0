// SPDX-License-Identifier: BSD-2-Clause
/*
 * pgwire: PostgreSQL protocol 3 decoder (see include/pgwire.h for the contract).
 *
 * State per direction:
 *   phase  what the next bytes are: startup-phase packets, typed messages, the one-byte
 *          answer to SSLRequest/GSSENCRequest, or nothing we can trust (hunting);
 *   hdr    a message header split across chunks, being gathered;
 *   body   the message being read: its declared length, how much has arrived, and whether
 *          it is assembled into `asm` (kept) or counted down unread (skipped);
 *   win    a window of bytes with the capture time of every piece and whether a fed chunk
 *          started there. It holds the bytes searched while hunting, the bytes a frontend
 *          sends while its SSLRequest is unanswered, and, once a boundary is found, the
 *          bytes from that boundary on, which are then decoded ("replayed") in place.
 *
 * The fast path (a whole message inside the chunk being fed) reads the header from the
 * caller's bytes, checks it against a per-type table of possible lengths, and reports the
 * body in place: no copy, no allocation. Only messages split across chunks are assembled,
 * and only when someone needs their body and it fits in max_body.
 *
 * "Don't believe nonsense" (PgBouncer): a length outside what PostgreSQL can send for
 * that type is rejected from the header alone, before anything is allocated, and the
 * direction starts hunting.
 *
 * Callbacks may call pgwire_gap() and pgwire_stop() on this instance (never
 * pgwire_conn_free()); the decoder notices (a generation counter, the stopped flag) and
 * never frees a buffer a callback could be reading.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "pgwire.h"

#define KIB 1024U
#define MIB (1024U * 1024U)

/* Largest declared length accepted: PostgreSQL cannot build a message above MaxAllocSize
 * (1 GiB - 1), so anything longer is nonsense, whatever its type. */
#define MAX_MSG_LEN (1U << 30)
#define ANY_BODY    (MAX_MSG_LEN - 4)

/* Startup-phase packets: PostgreSQL's own bounds (MAX_STARTUP_PACKET_LENGTH). */
#define STARTUP_MIN 8
#define STARTUP_MAX 10000
#define CODE_CANCEL 80877102U
#define CODE_SSL    80877103U
#define CODE_GSSENC 80877104U
/* CancelRequest body after the code: pid + key, the key 4 bytes in 3.0, up to 256 in 3.2. */
#define CANCEL_MIN 8
#define CANCEL_MAX (4 + 256)

/* The hunting window: bytes searched for a boundary, oldest dropped beyond this. */
#define WIN_MAX	     (64 * KIB)
#define WIN_MIN	     (4 * KIB)
#define WIN_RECS_MIN 16
#define WIN_RECS_MAX 1024 /* pieces of distinct chunks in the window */
/* What a frontend may send while its SSLRequest is unanswered (a startup packet is at most
 * 10000 bytes; more than this is a TLS handshake, and the answer will say so). */
#define HOLD_MAX (16 * KIB)
/* A message confirming a resync candidate is checked whole when at most this long, and
 * trusted on its header when longer (waiting for it could take the whole window). */
#define CONFIRM_MAX (16 * KIB)
/* Assembly buffers above this size are released once their message is reported. */
#define ASM_KEEP (64 * KIB)

/* ---- what each message type may look like --------------------------------------------- */

#define R_OK	  0x01 /* a type this direction can send */
#define R_SKIP	  0x02 /* never kept: Password/SASL, server CopyData */
#define R_DATAROW 0x04 /* kept only with keep_datarows */
#define R_HUNT	  0x08 /* frontend: structurally checkable, may start or confirm a resync */

struct rule {
	uint32_t min, max; /* body length bounds */
	uint8_t flags;
};

static const struct rule fe_rules[256] = {
    ['Q'] = {1, ANY_BODY, R_OK | R_HUNT},  /* Query: text NUL */
    ['P'] = {4, ANY_BODY, R_OK | R_HUNT},  /* Parse: name NUL, text NUL, int16 */
    ['B'] = {8, ANY_BODY, R_OK | R_HUNT},  /* Bind: 2 names, 3 int16 counts */
    ['E'] = {5, ANY_BODY, R_OK | R_HUNT},  /* Execute: portal NUL, int32 */
    ['D'] = {2, ANY_BODY, R_OK | R_HUNT},  /* Describe: 'S'/'P', name NUL */
    ['C'] = {2, ANY_BODY, R_OK | R_HUNT},  /* Close: 'S'/'P', name NUL */
    ['S'] = {0, 0, R_OK | R_HUNT},	   /* Sync */
    ['H'] = {0, 0, R_OK | R_HUNT},	   /* Flush */
    ['X'] = {0, 0, R_OK | R_HUNT},	   /* Terminate */
    ['c'] = {0, 0, R_OK | R_HUNT},	   /* CopyDone */
    ['F'] = {10, ANY_BODY, R_OK | R_HUNT}, /* FunctionCall */
    ['f'] = {1, ANY_BODY, R_OK | R_HUNT},  /* CopyFail: message NUL */
    ['d'] = {0, ANY_BODY, R_OK},	   /* CopyData: any bytes, proves nothing */
    ['p'] = {0, ANY_BODY, R_OK | R_SKIP},  /* Password, SASL, GSS responses */
};

static const struct rule be_rules[256] = {
    ['R'] = {4, ANY_BODY, R_OK},	     /* Authentication* */
    ['S'] = {2, ANY_BODY, R_OK},	     /* ParameterStatus */
    ['K'] = {8, 4 + 256, R_OK},		     /* BackendKeyData (3.2: longer keys) */
    ['Z'] = {1, 1, R_OK},		     /* ReadyForQuery */
    ['T'] = {2, ANY_BODY, R_OK},	     /* RowDescription */
    ['D'] = {2, ANY_BODY, R_OK | R_DATAROW}, /* DataRow */
    ['C'] = {1, ANY_BODY, R_OK},	     /* CommandComplete */
    ['I'] = {0, 0, R_OK},		     /* EmptyQueryResponse */
    ['E'] = {1, ANY_BODY, R_OK},	     /* ErrorResponse */
    ['N'] = {1, ANY_BODY, R_OK},	     /* NoticeResponse */
    ['1'] = {0, 0, R_OK},		     /* ParseComplete */
    ['2'] = {0, 0, R_OK},		     /* BindComplete */
    ['3'] = {0, 0, R_OK},		     /* CloseComplete */
    ['n'] = {0, 0, R_OK},		     /* NoData */
    ['s'] = {0, 0, R_OK},		     /* PortalSuspended */
    ['t'] = {2, ANY_BODY, R_OK},	     /* ParameterDescription */
    ['G'] = {3, ANY_BODY, R_OK},	     /* CopyInResponse */
    ['H'] = {3, ANY_BODY, R_OK},	     /* CopyOutResponse */
    ['W'] = {3, ANY_BODY, R_OK},	     /* CopyBothResponse */
    ['d'] = {0, ANY_BODY, R_OK | R_SKIP},    /* CopyData */
    ['c'] = {0, 0, R_OK},		     /* CopyDone */
    ['A'] = {6, ANY_BODY, R_OK},	     /* NotificationResponse */
    ['V'] = {4, ANY_BODY, R_OK},	     /* FunctionCallResponse */
    ['v'] = {8, ANY_BODY, R_OK},	     /* NegotiateProtocolVersion */
};

static const struct rule *rule_of(enum pgwire_dir dir, uint8_t type)
{
	return dir == PGWIRE_FRONTEND ? &fe_rules[type] : &be_rules[type];
}

/* Whether a declared length (the int32 after the type, itself included) is possible. */
static bool length_ok(const struct rule *r, uint32_t declared)
{
	return (r->flags & R_OK) && declared >= 4 && declared - 4 >= r->min &&
	       declared - 4 <= r->max;
}

static uint32_t be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* ---- state -------------------------------------------------------------------------- */

enum phase {
	PH_STARTUP,    /* frontend: untyped startup-phase packets */
	PH_TYPED,      /* typed messages */
	PH_HUNT,       /* looking for a boundary it can trust */
	PH_ENC_WAIT,   /* frontend: SSL/GSSENC requested, holding bytes until the answer */
	PH_ENC_ANSWER, /* backend: the next byte is the one-byte answer */
	PH_DONE,       /* frontend after a CancelRequest: nothing more to decode */
	PH_STOPPED,
};

/* One piece of the window: the bytes from off to the next piece came from one chunk. */
struct wrec {
	uint32_t off;
	bool chunk_start; /* a fed chunk started exactly at off */
	uint64_t ts;
};

struct win {
	uint8_t *buf;
	uint32_t cap;
	uint32_t head; /* bytes [head, len) are live */
	uint32_t len;
	uint32_t scan; /* hunting: the next position to try */
	struct wrec *rec;
	uint32_t nrec, rcap; /* sorted by off; rec[0] covers head */
	uint64_t lost;	     /* bytes of this direction skipped, dropped or missing (gap) */
};

struct wdir {
	enum pgwire_dir dir;
	enum phase phase;
	uint32_t gen;	/* bumped by pgwire_gap: a callback reset this direction */
	bool decoded;	/* it has had a boundary (from the start, or found by hunting) */
	bool search;	/* hunting: the window changed since the last search */
	uint8_t hdr[5]; /* header gathered across chunks */
	uint8_t hdr_len;
	bool in_body; /* header done, body arriving */
	bool keep;    /* the body is assembled (else counted down unread) */
	uint8_t type; /* type byte (0 for a startup packet until it is read) */
	uint32_t len; /* body length */
	uint32_t got; /* body bytes arrived */
	uint64_t ts_start;
	uint8_t *asm_buf;
	uint32_t asm_cap;
	struct win win;
};

struct pgwire_conn {
	struct pgwire_config cfg;
	const struct pgwire_handler *handler;
	void *ctx;
	bool stopped;
	struct pgwire_stats st;
	struct wdir d[2];
};

void pgwire_config_default(struct pgwire_config *cfg)
{
	*cfg = (struct pgwire_config){
	    .max_body = 1 * MIB,
	    .keep_datarows = false,
	};
}

/* ---- reporting ---------------------------------------------------------------------- */

static void emit_msg(struct pgwire_conn *c, struct wdir *d, uint8_t type, const uint8_t *body,
		     uint32_t len, bool kept, uint64_t ts_start, uint64_t ts_end)
{
	struct pgwire_msg m = {
	    .dir = d->dir,
	    .type = type,
	    .body = kept ? body : NULL,
	    .len = len,
	    .body_kept = kept,
	    .ts_start = ts_start,
	    .ts_end = ts_end,
	};

	c->st.messages++;
	if (c->handler->message)
		c->handler->message(c->ctx, &m);
}

static void emit_event(struct pgwire_conn *c, enum pgwire_event ev, enum pgwire_dir dir,
		       uint64_t ts)
{
	if (c->handler->event)
		c->handler->event(c->ctx, ev, dir, ts);
}

static void stop_all(struct pgwire_conn *c)
{
	c->stopped = true;
	c->d[0].phase = PH_STOPPED;
	c->d[1].phase = PH_STOPPED;
}

/* ---- the window --------------------------------------------------------------------- */

/* Index of the piece holding offset off (off inside [head, len], nrec > 0). */
static uint32_t rec_index(const struct win *w, uint32_t off)
{
	uint32_t lo = 0, hi = w->nrec;

	while (hi - lo > 1) {
		uint32_t mid = lo + (hi - lo) / 2;

		if (w->rec[mid].off <= off)
			lo = mid;
		else
			hi = mid;
	}
	return lo;
}

/* Memory from the thread's budget (false: over it, counted). */
static bool budget_take(struct pgwire_conn *c, uint64_t n)
{
	struct pgwire_budget *b = c->cfg.budget;

	if (!b || !n)
		return true;
	if (b->max_bytes && b->used + n > b->max_bytes) {
		c->st.over_budget++;
		return false;
	}
	b->used += n;
	if (b->used > b->peak)
		b->peak = b->used;
	return true;
}

static void budget_give(struct pgwire_conn *c, uint64_t n)
{
	struct pgwire_budget *b = c->cfg.budget;

	if (b)
		b->used = b->used > n ? b->used - n : 0;
}

/* realloc of a buffer growing from old to new bytes, within the budget (NULL: over it,
 * or out of memory; p is then untouched). */
static uint8_t *budget_realloc(struct pgwire_conn *c, uint8_t *p, uint32_t old, uint32_t new)
{
	uint8_t *nb;

	if (!budget_take(c, new - old))
		return NULL;
	nb = realloc(p, new);
	if (!nb)
		budget_give(c, new - old);
	return nb;
}

static void win_clear(struct win *w)
{
	w->head = w->len = w->scan = 0;
	w->nrec = 0;
}

/* Frees the window. It may have held raw client bytes (a password message of a session
 * caught mid-authentication, say): they are wiped, never left in freed memory. */
static void win_release(struct pgwire_conn *c, struct win *w)
{
	uint64_t lost = w->lost;

	budget_give(c, w->cap);
	if (w->buf)
		explicit_bzero(w->buf, w->cap);
	free(w->buf);
	free(w->rec);
	*w = (struct win){.lost = lost};
}

/* Discards the live bytes before upto, counting them as skipped. */
static void win_skip_to(struct pgwire_conn *c, struct win *w, uint32_t upto)
{
	if (upto <= w->head)
		return;
	c->st.bytes_skipped += upto - w->head;
	w->lost += upto - w->head;
	w->head = upto;
	if (w->scan < upto)
		w->scan = upto;
	if (w->head == w->len)
		win_clear(w);
}

/* Discards everything live (counted). */
static void win_drop(struct pgwire_conn *c, struct win *w)
{
	c->st.bytes_skipped += w->len - w->head;
	w->lost += w->len - w->head;
	win_clear(w);
}

/* Moves the live bytes to the front of the buffer. */
static void win_compact(struct win *w)
{
	uint32_t h = w->head, i, j = 0;

	if (h == 0)
		return;
	if (h == w->len) {
		win_clear(w);
		return;
	}
	for (i = rec_index(w, h); i < w->nrec; i++) {
		struct wrec r = w->rec[i];

		if (r.off < h) {
			r.off = h;
			r.chunk_start = false;
		}
		r.off -= h;
		w->rec[j++] = r;
	}
	w->nrec = j;
	memmove(w->buf, w->buf + h, w->len - h);
	w->len -= h;
	w->scan -= h;
	w->head = 0;
}

/*
 * Appends up to n bytes captured at ts (chunk_start: a fed chunk starts at data[0]).
 * Returns how many fit: 0 when the window is at WIN_MAX bytes or WIN_RECS_MAX pieces (the
 * caller drops something), or when memory runs out.
 */
static size_t win_append(struct pgwire_conn *c, struct win *w, const uint8_t *data, size_t n,
			 uint64_t ts, bool chunk_start)
{
	bool merge;
	size_t take;

	if (w->head == w->len)
		win_clear(w);
	merge = w->nrec > 0 && !chunk_start && w->rec[w->nrec - 1].ts == ts;
	if (w->len + n > w->cap || (!merge && w->nrec == w->rcap))
		win_compact(w);
	if (w->len + n > w->cap && w->cap < WIN_MAX) {
		uint32_t cap = w->cap ? w->cap : WIN_MIN;
		uint8_t *nb;

		while (cap < w->len + n && cap < WIN_MAX)
			cap *= 2;
		if (cap > WIN_MAX)
			cap = WIN_MAX;
		nb = budget_realloc(c, w->buf, w->cap, cap);
		if (nb) {
			w->buf = nb;
			w->cap = cap;
		}
	}
	if (!merge && w->nrec == w->rcap && w->rcap < WIN_RECS_MAX) {
		uint32_t rcap = w->rcap ? w->rcap * 2 : WIN_RECS_MIN;
		struct wrec *nr = realloc(w->rec, rcap * sizeof(*nr));

		if (nr) {
			w->rec = nr;
			w->rcap = rcap;
		}
	}
	take = w->cap - w->len;
	if (take > n)
		take = n;
	if (take == 0 || (!merge && w->nrec == w->rcap))
		return 0;
	if (!merge)
		w->rec[w->nrec++] =
		    (struct wrec){.off = w->len, .chunk_start = chunk_start, .ts = ts};
	memcpy(w->buf + w->len, data, take);
	w->len += (uint32_t)take;
	return take;
}

/* ---- structural checks used while hunting ---------------------------------------------- */

/* A format code list: int16 count, then count codes of 0 (text) or 1 (binary). */
static PGWIRE_MUST_CHECK bool skip_formats(struct pgwire_cursor *cur, uint16_t *n)
{
	uint16_t i;
	int16_t f;

	if (!pgwire_get_u16(cur, n))
		return false;
	for (i = 0; i < *n; i++)
		if (!pgwire_get_i16(cur, &f) || (f != 0 && f != 1))
			return false;
	return true;
}

/* A value list: int16 count, then count values, each int32 length (-1 NULL) + bytes. */
static PGWIRE_MUST_CHECK bool skip_values(struct pgwire_cursor *cur, uint16_t *n)
{
	const uint8_t *v;
	uint16_t i;
	int32_t vlen;

	if (!pgwire_get_u16(cur, n))
		return false;
	for (i = 0; i < *n; i++) {
		if (!pgwire_get_i32(cur, &vlen) || vlen < -1)
			return false;
		if (vlen > 0 && !pgwire_get_bytes(cur, (size_t)vlen, &v))
			return false;
	}
	return true;
}

/* A frontend message body is what a client could have sent (hunting only). */
static bool fe_body_valid(uint8_t type, const uint8_t *body, uint32_t len)
{
	struct pgwire_cursor cur;
	const char *s;
	size_t slen;
	uint16_t n, nf, i;
	uint32_t u;
	int16_t f;
	uint8_t b;

	pgwire_cursor_init(&cur, body, len);
	switch (type) {
	case 'Q': /* exactly one NUL, at the end */
	case 'f':
		return pgwire_get_string(&cur, &s, &slen) && pgwire_cursor_left(&cur) == 0;
	case 'P':
		if (!pgwire_get_string(&cur, &s, &slen) || !pgwire_get_string(&cur, &s, &slen) ||
		    !pgwire_get_u16(&cur, &n))
			return false;
		for (i = 0; i < n; i++)
			if (!pgwire_get_u32(&cur, &u))
				return false;
		return pgwire_cursor_left(&cur) == 0;
	case 'B':
		if (!pgwire_get_string(&cur, &s, &slen) || !pgwire_get_string(&cur, &s, &slen) ||
		    !skip_formats(&cur, &nf) || !skip_values(&cur, &n))
			return false;
		if (nf > 1 && nf != n)
			return false;
		return skip_formats(&cur, &n) && pgwire_cursor_left(&cur) == 0;
	case 'E':
		return pgwire_get_string(&cur, &s, &slen) && pgwire_get_u32(&cur, &u) &&
		       pgwire_cursor_left(&cur) == 0;
	case 'D':
	case 'C':
		return pgwire_get_u8(&cur, &b) && (b == 'S' || b == 'P') &&
		       pgwire_get_string(&cur, &s, &slen) && pgwire_cursor_left(&cur) == 0;
	case 'F':
		if (!pgwire_get_u32(&cur, &u) || !skip_formats(&cur, &nf) || !skip_values(&cur, &n))
			return false;
		if (nf > 1 && nf != n)
			return false;
		return pgwire_get_i16(&cur, &f) && (f == 0 || f == 1) &&
		       pgwire_cursor_left(&cur) == 0;
	case 'S':
	case 'H':
	case 'X':
	case 'c':
		return len == 0;
	default:
		return false;
	}
}

/* A backend message body is what a server could have sent (confirming a resync). */
static bool be_body_valid(uint8_t type, const uint8_t *body, uint32_t len)
{
	struct pgwire_cursor cur;
	const uint8_t *v;
	const char *s;
	size_t slen;
	uint16_t n, i;
	uint32_t u;
	int32_t vlen;
	int16_t f;
	uint8_t b;

	pgwire_cursor_init(&cur, body, len);
	switch (type) {
	case 'Z':
		return body[0] == 'I' || body[0] == 'T' || body[0] == 'E';
	case 'C':
		return pgwire_get_string(&cur, &s, &slen) && pgwire_cursor_left(&cur) == 0;
	case 'E':
	case 'N':
		for (;;) {
			if (!pgwire_get_u8(&cur, &b))
				return false;
			if (b == 0)
				return pgwire_cursor_left(&cur) == 0;
			if (!pgwire_get_string(&cur, &s, &slen))
				return false;
		}
	case 'T':
		if (!pgwire_get_u16(&cur, &n))
			return false;
		for (i = 0; i < n; i++)
			if (!pgwire_get_string(&cur, &s, &slen) || !pgwire_get_u32(&cur, &u) ||
			    !pgwire_get_i16(&cur, &f) || !pgwire_get_u32(&cur, &u) ||
			    !pgwire_get_i16(&cur, &f) || !pgwire_get_i32(&cur, &vlen) ||
			    !pgwire_get_i16(&cur, &f))
				return false;
		return pgwire_cursor_left(&cur) == 0;
	case 'D':
		return skip_values(&cur, &n) && pgwire_cursor_left(&cur) == 0;
	case 't':
		if (!pgwire_get_u16(&cur, &n))
			return false;
		for (i = 0; i < n; i++)
			if (!pgwire_get_u32(&cur, &u))
				return false;
		return pgwire_cursor_left(&cur) == 0;
	case 'S':
		return pgwire_get_string(&cur, &s, &slen) && pgwire_get_string(&cur, &s, &slen) &&
		       pgwire_cursor_left(&cur) == 0;
	case 'G':
	case 'H':
	case 'W':
		return pgwire_get_u8(&cur, &b) && b <= 1 && skip_formats(&cur, &n) &&
		       pgwire_cursor_left(&cur) == 0;
	case 'A':
		return pgwire_get_u32(&cur, &u) && pgwire_get_string(&cur, &s, &slen) &&
		       pgwire_get_string(&cur, &s, &slen) && pgwire_cursor_left(&cur) == 0;
	case 'V':
		if (!pgwire_get_i32(&cur, &vlen) || vlen < -1)
			return false;
		if (vlen > 0 && !pgwire_get_bytes(&cur, (size_t)vlen, &v))
			return false;
		return pgwire_cursor_left(&cur) == 0;
	default:
		return true;
	}
}

/* ---- hunting ------------------------------------------------------------------------ */

enum verdict {
	V_REJECT, /* not a boundary */
	V_WAIT,	  /* cannot tell yet: more bytes needed */
	V_ACCEPT,
};

/* The message whose header is at q confirms the boundary before it (either direction). */
static enum verdict confirm_at(const struct win *w, enum pgwire_dir dir, uint32_t q)
{
	const struct rule *r;
	uint32_t avail = w->len - q, blen;
	uint8_t t;

	if (avail < 5)
		return V_WAIT;
	t = w->buf[q];
	r = rule_of(dir, t);
	if (dir == PGWIRE_FRONTEND && !(r->flags & R_HUNT))
		return V_REJECT;
	if (!length_ok(r, be32(w->buf + q + 1)))
		return V_REJECT;
	blen = be32(w->buf + q + 1) - 4;
	if (blen > CONFIRM_MAX)
		return V_ACCEPT;
	if (avail - 5 < blen)
		return V_WAIT;
	if (dir == PGWIRE_FRONTEND)
		return fe_body_valid(t, w->buf + q + 5, blen) ? V_ACCEPT : V_REJECT;
	return be_body_valid(t, w->buf + q + 5, blen) ? V_ACCEPT : V_REJECT;
}

static bool chunk_starts_at(const struct win *w, uint32_t off)
{
	uint32_t i = rec_index(w, off);

	return w->rec[i].off == off && w->rec[i].chunk_start;
}

/*
 * Frontend: a client message at p — a type that proves something, a possible length, a
 * body that parses exactly — confirmed by what follows: another such message in the same
 * chunk, or the end of everything fed so far when the candidate also began a fed chunk (a
 * client writes a batch and waits). A candidate that did not begin a chunk but ends where
 * a later chunk begins is rejected: bytes that merely happen to parse at the end of a
 * chunk would otherwise be "confirmed" by the real message starting the next one, which
 * is a better candidate anyway.
 */
static enum verdict fe_candidate(const struct win *w, uint32_t p, bool more_input)
{
	const struct rule *r = &fe_rules[w->buf[p]];
	uint32_t avail = w->len - p, blen, q;

	if (!(r->flags & R_HUNT))
		return V_REJECT;
	if (avail < 5)
		return V_WAIT;
	if (!length_ok(r, be32(w->buf + p + 1)))
		return V_REJECT;
	blen = be32(w->buf + p + 1) - 4;
	if (blen > WIN_MAX - 5)
		return V_REJECT; /* could never be seen whole */
	if (avail - 5 < blen)
		return V_WAIT;
	if (!fe_body_valid(w->buf[p], w->buf + p + 5, blen))
		return V_REJECT;
	q = p + 5 + blen;
	if (q < w->len) {
		if (chunk_starts_at(w, q) && !chunk_starts_at(w, p))
			return V_REJECT;
		return confirm_at(w, PGWIRE_FRONTEND, q);
	}
	if (more_input)
		return V_WAIT;
	return chunk_starts_at(w, p) ? V_ACCEPT : V_WAIT;
}

/*
 * Backend: ReadyForQuery ('Z', length 5, status I/T/E) at p, followed by the end of what
 * was fed (a server writes Z last and waits) or by a message that parses.
 */
static enum verdict be_candidate(const struct win *w, uint32_t p, bool more_input)
{
	static const uint8_t pat[5] = {'Z', 0, 0, 0, 5};
	uint32_t avail = w->len - p;
	uint8_t st;

	if (memcmp(w->buf + p, pat, avail < 5 ? avail : 5) != 0)
		return V_REJECT;
	if (avail < 6)
		return V_WAIT;
	st = w->buf[p + 5];
	if (st != 'I' && st != 'T' && st != 'E')
		return V_REJECT;
	if (p + 6 == w->len)
		return more_input ? V_WAIT : V_ACCEPT;
	return confirm_at(w, PGWIRE_BACKEND, p + 6);
}

/*
 * Backend, at the first byte of a stream caught mid-session: messages that parse one after
 * another, each whole, up to and including a ReadyForQuery. The server had sent nothing
 * since capture began, so this is an answer from its first byte (the session confirms it
 * answers the client's first batch).
 */
static enum verdict be_from_start(const struct win *w, uint32_t p)
{
	uint32_t q = p, blen;
	uint8_t t;

	for (;;) {
		if (w->len - q < 5)
			return V_WAIT;
		t = w->buf[q];
		if (!length_ok(rule_of(PGWIRE_BACKEND, t), be32(w->buf + q + 1)))
			return V_REJECT;
		blen = be32(w->buf + q + 1) - 4;
		if (blen > CONFIRM_MAX)
			return V_REJECT; /* too long to check: the ReadyForQuery hunt decides */
		if (w->len - q - 5 < blen)
			return V_WAIT;
		if (!be_body_valid(t, w->buf + q + 5, blen))
			return V_REJECT;
		if (t == 'Z')
			return V_ACCEPT;
		q += 5 + blen;
	}
}

static void reset_msg(struct wdir *d)
{
	d->hdr_len = 0;
	d->in_body = false;
	d->got = 0;
}

/* Starts hunting from the window's live bytes (if any); DESYNC when report. */
static void set_hunting(struct pgwire_conn *c, struct wdir *d, uint64_t ts, bool report)
{
	d->phase = PH_HUNT;
	reset_msg(d);
	d->win.scan = d->win.head;
	d->search = d->win.head < d->win.len;
	if (report)
		emit_event(c, PGWIRE_EV_DESYNC, d->dir, ts);
}

/* A length, type or code that cannot be right: count it and hunt. */
static void bad_input(struct pgwire_conn *c, struct wdir *d, uint64_t ts)
{
	c->st.bad_lengths++;
	set_hunting(c, d, ts, true);
}

/* A boundary at window offset p: decode from there (the window is replayed in place). */
static void resync_at(struct pgwire_conn *c, struct wdir *d, uint32_t p)
{
	struct win *w = &d->win;
	uint64_t ts = w->rec[rec_index(w, p)].ts;

	win_skip_to(c, w, p);
	if (w->len == 0) /* cannot happen: p is a message start inside the window */
		return;
	d->phase = PH_TYPED;
	d->decoded = true;
	d->search = false;
	reset_msg(d);
	c->st.resyncs++;
	emit_event(c, PGWIRE_EV_RESYNC, d->dir, ts);
}

/* Searches the window from scan (more_input: the chunk being fed is not all in it yet). */
static void hunt_search(struct pgwire_conn *c, struct wdir *d, bool more_input)
{
	struct win *w = &d->win;

	d->search = false;
	while (w->scan < w->len) {
		uint32_t p = w->scan;
		enum verdict v;

		if (d->dir == PGWIRE_BACKEND && !d->decoded && !w->lost && p == w->head) {
			v = be_from_start(w, p);
			if (v == V_WAIT)
				break;
			if (v == V_ACCEPT) {
				resync_at(c, d, p);
				return;
			}
			/* not an answer from its first byte: hunt for a ReadyForQuery */
		}
		if (d->dir == PGWIRE_BACKEND) {
			const uint8_t *z = memchr(w->buf + p, 'Z', w->len - p);

			if (!z) {
				w->scan = w->len;
				break;
			}
			p = (uint32_t)(z - w->buf);
			w->scan = p;
			v = be_candidate(w, p, more_input);
		} else {
			v = fe_candidate(w, p, more_input);
		}
		if (v == V_WAIT)
			break;
		if (v == V_ACCEPT) {
			resync_at(c, d, p);
			return;
		}
		w->scan = p + 1;
	}
	win_skip_to(c, w, w->scan);
}

/* Takes bytes of the chunk being fed into the hunting window; returns how many. */
static size_t hunt_take(struct pgwire_conn *c, struct wdir *d, const uint8_t *data, size_t len,
			uint64_t ts, bool chunk_start)
{
	struct win *w = &d->win;
	size_t n = win_append(c, w, data, len, ts, chunk_start);
	uint32_t drop;

	if (n > 0) {
		d->search = true;
		return n;
	}
	if (w->head == w->len) { /* empty and still no room: out of memory */
		c->st.bytes_skipped += len;
		w->lost += len;
		return len;
	}
	/*
	 * Full: give up the oldest quarter of the bytes (of the pieces when out of pieces) at
	 * once, so that a window full of hopeless candidates costs one move per quarter of
	 * the window, not one per byte. Candidates in it can only have been long messages
	 * still waiting for their end; resynchronisation just comes a little later.
	 */
	win_compact(w);
	if (w->nrec == WIN_RECS_MAX)
		drop = w->rec[w->nrec / 4].off;
	else
		drop = w->len / 4;
	if (drop == 0)
		drop = 1;
	win_skip_to(c, w, drop);
	d->search = true;
	return 0;
}

/* ---- decoding ------------------------------------------------------------------------ */

/* The frontend spoke TLS first (PostgreSQL 17's direct SSL): encrypted, stop. */
static void direct_tls(struct pgwire_conn *c, uint64_t ts)
{
	stop_all(c);
	emit_event(c, PGWIRE_EV_ENCRYPTED, PGWIRE_FRONTEND, ts);
}

/*
 * Checks a complete header (4 bytes in the startup phase, else 5) and sets up the body.
 * Returns false, having switched phase (hunting or stopped), when it cannot be right.
 */
static bool begin(struct pgwire_conn *c, struct wdir *d, const uint8_t *hdr, uint64_t ts_start)
{
	uint32_t declared;

	if (d->phase == PH_STARTUP) {
		if (hdr[0] == 0x16 && hdr[1] == 0x03) {
			direct_tls(c, ts_start);
			return false;
		}
		declared = be32(hdr);
		if (declared < STARTUP_MIN || declared > STARTUP_MAX) {
			bad_input(c, d, ts_start);
			return false;
		}
		d->type = 0;
		d->len = declared - 4;
		d->keep = true; /* at most 9996 bytes, and the code must be read */
	} else {
		const struct rule *r = rule_of(d->dir, hdr[0]);

		declared = be32(hdr + 1);
		if (!length_ok(r, declared)) {
			bad_input(c, d, ts_start);
			return false;
		}
		d->type = hdr[0];
		d->len = declared - 4;
		d->keep = !(r->flags & R_SKIP) && (!(r->flags & R_DATAROW) || c->cfg.keep_datarows);
		if (d->keep && d->len > c->cfg.max_body) {
			d->keep = false;
			c->st.bodies_too_big++;
		}
	}
	d->ts_start = ts_start;
	d->got = 0;
	return true;
}

/* A complete startup-phase packet (body = code + rest). */
static void startup_done(struct pgwire_conn *c, struct wdir *d, const uint8_t *body,
			 uint64_t ts_end)
{
	struct wdir *be = &c->d[PGWIRE_BACKEND];
	uint32_t code = be32(body);

	if (code >> 16 == 3) {
		d->phase = PH_TYPED;
		emit_msg(c, d, PGWIRE_MSG_STARTUP, body, d->len, true, d->ts_start, ts_end);
		return;
	}
	switch (code) {
	case CODE_SSL:
	case CODE_GSSENC:
		if (d->len != 4)
			break;
		d->phase = PH_ENC_WAIT;
		if (be->phase == PH_TYPED && be->hdr_len == 0 && !be->in_body)
			be->phase = PH_ENC_ANSWER;
		emit_msg(c, d,
			 code == CODE_SSL ? PGWIRE_MSG_SSL_REQUEST : PGWIRE_MSG_GSSENC_REQUEST,
			 body + 4, 0, true, d->ts_start, ts_end);
		return;
	case CODE_CANCEL:
		if (d->len - 4 < CANCEL_MIN || d->len - 4 > CANCEL_MAX)
			break;
		d->phase = PH_DONE;
		emit_msg(c, d, PGWIRE_MSG_CANCEL, body + 4, d->len - 4, true, d->ts_start, ts_end);
		return;
	default:
		break; /* protocol 2, or not PostgreSQL at all */
	}
	bad_input(c, d, ts_end);
}

/* The message being read is complete: report it (body NULL when not kept). */
static void finish(struct pgwire_conn *c, struct wdir *d, const uint8_t *body, uint64_t ts_end)
{
	d->in_body = false;
	if (d->phase == PH_STARTUP)
		startup_done(c, d, body, ts_end);
	else
		emit_msg(c, d, d->type, body, d->len, d->keep, d->ts_start, ts_end);
	if (d->asm_cap > ASM_KEEP && !d->in_body) {
		budget_give(c, d->asm_cap);
		free(d->asm_buf);
		d->asm_buf = NULL;
		d->asm_cap = 0;
	}
}

/*
 * One step of startup-phase or typed decoding over data (len > 0) captured at ts.
 * Returns the bytes consumed: a whole message when it lies in data (reported in place),
 * else what was gathered; 0 when the header at data[0] cannot be right (the phase is then
 * hunting and those bytes are the first it searches).
 */
static size_t msg_step(struct pgwire_conn *c, struct wdir *d, const uint8_t *data, size_t len,
		       uint64_t ts)
{
	size_t hsz = d->phase == PH_STARTUP ? 4 : 5, used = 0, n;

	if (!d->in_body) {
		if (d->hdr_len == 0 && len >= hsz) {
			if (!begin(c, d, data, ts))
				return 0;
			used = hsz;
			if (d->len <= len - used) { /* whole: zero-copy */
				finish(c, d, data + used, ts);
				return used + d->len;
			}
		} else {
			if (d->hdr_len == 0)
				d->ts_start = ts;
			n = hsz - d->hdr_len;
			if (n > len)
				n = len;
			memcpy(d->hdr + d->hdr_len, data, n);
			d->hdr_len += (uint8_t)n;
			used = n;
			if (d->hdr_len < hsz)
				return used;
			d->hdr_len = 0;
			if (!begin(c, d, d->hdr, d->ts_start)) {
				c->st.bytes_skipped += hsz;
				d->win.lost += hsz;
				return used;
			}
			if (d->len == 0) {
				finish(c, d, d->hdr, ts);
				return used;
			}
		}
		d->in_body = true;
		if (d->keep && d->asm_cap < d->len) {
			uint8_t *nb = budget_realloc(c, d->asm_buf, d->asm_cap, d->len);

			if (nb) {
				d->asm_buf = nb;
				d->asm_cap = d->len;
			} else {
				d->keep = false; /* reported without its body rather than lost */
			}
		}
		if (used == len)
			return used;
	}
	n = d->len - d->got;
	if (n > len - used)
		n = len - used;
	if (d->keep)
		memcpy(d->asm_buf + d->got, data + used, n);
	d->got += (uint32_t)n;
	used += n;
	if (d->got == d->len)
		finish(c, d, d->asm_buf, ts);
	return used;
}

/*
 * The hot path: reports every typed message lying whole in data, in place, until one does
 * not (split, or a header that cannot be right: msg_step deals with those). Returns the
 * bytes consumed. Stops early when a callback stopped the decoder or reset this direction.
 */
static size_t typed_run(struct pgwire_conn *c, struct wdir *d, const uint8_t *data, size_t len,
			uint64_t ts)
{
	const struct rule *rules = d->dir == PGWIRE_FRONTEND ? fe_rules : be_rules;
	uint32_t gen = d->gen;
	size_t off = 0;

	while (len - off >= 5) {
		const uint8_t *h = data + off;
		const struct rule *r = &rules[h[0]];
		uint32_t declared = be32(h + 1), blen;
		bool keep;

		if (!length_ok(r, declared) || declared - 4 > len - off - 5)
			break;
		blen = declared - 4;
		keep = !(r->flags & R_SKIP) && (!(r->flags & R_DATAROW) || c->cfg.keep_datarows);
		if (keep && blen > c->cfg.max_body) {
			keep = false;
			c->st.bodies_too_big++;
		}
		off += 5 + blen;
		emit_msg(c, d, h[0], h + 5, blen, keep, ts, ts);
		if (c->stopped || d->gen != gen || d->phase != PH_TYPED)
			break;
	}
	return off;
}

static void dir_feed(struct pgwire_conn *c, struct wdir *d, const uint8_t *data, size_t len,
		     uint64_t ts, bool chunk_start);

/* The backend's one-byte answer to SSLRequest/GSSENCRequest. Returns bytes consumed. */
static size_t enc_answer(struct pgwire_conn *c, struct wdir *d, const uint8_t *data, uint64_t ts)
{
	struct wdir *fe = &c->d[PGWIRE_FRONTEND];
	uint8_t b = data[0];

	if (b == 'S' || b == 'G') {
		emit_msg(c, d, PGWIRE_MSG_ENC_RESPONSE, data, 1, true, ts, ts);
		stop_all(c);
		emit_event(c, PGWIRE_EV_ENCRYPTED, d->dir, ts);
		return 1;
	}
	d->phase = PH_TYPED;
	if (fe->phase == PH_ENC_WAIT)
		fe->phase = PH_STARTUP; /* what it held is decoded below */
	if (b == 'N')
		emit_msg(c, d, PGWIRE_MSG_ENC_RESPONSE, data, 1, true, ts, ts);
	if (!c->stopped)
		dir_feed(c, fe, NULL, 0, ts, false);
	/* Anything else is not an answer (an old server's ErrorResponse): decode it typed. */
	return b == 'N' ? 1 : 0;
}

/* One step in the startup/typed/answer phases. */
static size_t dispatch(struct pgwire_conn *c, struct wdir *d, const uint8_t *data, size_t len,
		       uint64_t ts)
{
	size_t n;

	if (d->phase == PH_ENC_ANSWER)
		return enc_answer(c, d, data, ts);
	if (d->phase == PH_TYPED && !d->in_body && d->hdr_len == 0) {
		n = typed_run(c, d, data, len, ts);
		if (n)
			return n;
	}
	return msg_step(c, d, data, len, ts);
}

/* Decodes the window's live bytes (a found boundary, or bytes held during SSL
 * negotiation) piece by piece, each with its own capture time. */
static void win_replay(struct pgwire_conn *c, struct wdir *d)
{
	struct win *w = &d->win;

	while (w->head < w->len && !c->stopped &&
	       (d->phase == PH_TYPED || d->phase == PH_STARTUP || d->phase == PH_ENC_ANSWER)) {
		uint32_t i = rec_index(w, w->head);
		uint32_t end = i + 1 < w->nrec ? w->rec[i + 1].off : w->len;
		uint32_t gen = d->gen;
		size_t n = dispatch(c, d, w->buf + w->head, end - w->head, w->rec[i].ts);

		if (c->stopped || d->gen != gen)
			return; /* stopped, or a callback's pgwire_gap dropped the window */
		w->head += (uint32_t)n;
	}
	if (w->head == w->len) {
		win_clear(w);
		if (d->phase != PH_HUNT && d->phase != PH_ENC_WAIT)
			win_release(c, w); /* synchronised: the window is not needed any more */
	} else if (d->phase == PH_HUNT) {
		w->scan = w->head;
		d->search = true;
	}
}

/* Bytes a frontend sends before its SSL/GSSENC request is answered. */
static size_t hold(struct pgwire_conn *c, struct wdir *d, const uint8_t *data, size_t len,
		   uint64_t ts, bool chunk_start)
{
	struct win *w = &d->win;
	size_t n = 0;

	if (w->len - w->head + len <= HOLD_MAX)
		n = win_append(c, w, data, len, ts, chunk_start);
	if (n == len)
		return n;
	/* Too much to be a startup packet (or no memory): whatever it is, it is lost (the n
	 * bytes just taken are counted with the rest of the window). */
	win_drop(c, w);
	set_hunting(c, d, ts, true);
	return n;
}

/*
 * Feeds one direction. Iterative on purpose: a boundary found while hunting replays the
 * window, a bad length during the replay hunts from that point of the same window, and so
 * on, without recursion (the only nested call is the frontend replay after an 'N').
 */
static void dir_feed(struct pgwire_conn *c, struct wdir *d, const uint8_t *data, size_t len,
		     uint64_t ts, bool chunk_start)
{
	for (;;) {
		size_t n;

		if (c->stopped)
			return;
		switch (d->phase) {
		case PH_HUNT:
			if (d->search) {
				hunt_search(c, d, len > 0);
				continue;
			}
			if (len == 0)
				return;
			n = hunt_take(c, d, data, len, ts, chunk_start);
			break;
		case PH_ENC_WAIT:
			if (len == 0)
				return;
			n = hold(c, d, data, len, ts, chunk_start);
			break;
		case PH_DONE:
		case PH_STOPPED:
			return;
		default:
			if (d->win.head < d->win.len) {
				win_replay(c, d);
				continue;
			}
			if (len == 0)
				return;
			n = dispatch(c, d, data, len, ts);
			break;
		}
		data += n;
		len -= n;
		if (n)
			chunk_start = false;
	}
}

/* ---- public interface ---------------------------------------------------------------- */

struct pgwire_conn *pgwire_conn_new(const struct pgwire_config *cfg,
				    const struct pgwire_handler *handler, void *ctx,
				    bool from_start)
{
	struct pgwire_conn *c = calloc(1, sizeof(*c));

	if (!c)
		return NULL;
	if (cfg)
		c->cfg = *cfg;
	else
		pgwire_config_default(&c->cfg);
	c->handler = handler;
	c->ctx = ctx;
	c->d[PGWIRE_FRONTEND].dir = PGWIRE_FRONTEND;
	c->d[PGWIRE_BACKEND].dir = PGWIRE_BACKEND;
	c->d[PGWIRE_FRONTEND].phase = from_start ? PH_STARTUP : PH_HUNT;
	c->d[PGWIRE_BACKEND].phase = from_start ? PH_TYPED : PH_HUNT;
	c->d[PGWIRE_FRONTEND].decoded = c->d[PGWIRE_BACKEND].decoded = from_start;
	return c;
}

void pgwire_feed(struct pgwire_conn *c, enum pgwire_dir dir, const uint8_t *data, size_t len,
		 uint64_t ts_ns)
{
	c->st.bytes += len;
	if (c->stopped || len == 0)
		return;
	dir_feed(c, &c->d[dir], data, len, ts_ns, true);
}

/*
 * Drops what this direction held (window, partial message) and hunts. A gap in the middle
 * of SSL negotiation leaves neither side decodable: both hunt.
 */
void pgwire_gap(struct pgwire_conn *c, enum pgwire_dir dir, uint64_t ts_ns)
{
	struct wdir *d = &c->d[dir];
	struct wdir *o = &c->d[!dir];
	bool negotiating = d->phase == PH_ENC_WAIT || d->phase == PH_ENC_ANSWER;

	if (c->stopped || d->phase == PH_DONE)
		return;
	d->gen++;
	d->win.lost++; /* bytes are missing before what comes next */
	win_drop(c, &d->win);
	set_hunting(c, d, ts_ns, d->phase != PH_HUNT);
	if (negotiating && (o->phase == PH_ENC_WAIT || o->phase == PH_ENC_ANSWER)) {
		o->gen++;
		win_drop(c, &o->win);
		set_hunting(c, o, ts_ns, true);
	}
}

void pgwire_stop(struct pgwire_conn *c)
{
	stop_all(c);
}

bool pgwire_whole(const struct pgwire_conn *c, enum pgwire_dir dir)
{
	return c->d[dir].win.lost == 0;
}

const struct pgwire_stats *pgwire_conn_stats(const struct pgwire_conn *c)
{
	return &c->st;
}

void pgwire_conn_free(struct pgwire_conn *c)
{
	int i;

	if (!c)
		return;
	for (i = 0; i < 2; i++) {
		budget_give(c, c->d[i].asm_cap);
		free(c->d[i].asm_buf);
		win_release(c, &c->d[i].win);
	}
	free(c);
}
