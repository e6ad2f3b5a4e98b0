/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * pgwire: incremental decoder of the PostgreSQL protocol (3.0) for one captured
 * connection, fed the two reassembled half-streams by tcpstream. It finds message
 * boundaries, validates lengths, and reports each message with its capture times;
 * what the messages mean is session.c's business.
 *
 * Pure: no sockets, threads or clocks. One instance per connection, owned by the
 * capture thread.
 *
 * Zero-copy where possible: a message that lies whole inside one fed chunk is reported
 * pointing into that chunk; otherwise its body is assembled in the decoder's own
 * buffer (up to max_body). Bodies nobody needs (DataRow, server CopyData, password and
 * SASL messages) are skipped without being buffered.
 *
 * Resynchronisation: a connection first seen mid-stream, a gap, or a length that
 * cannot be right puts a direction into "hunting": the decoder discards bytes until it
 * finds a boundary it can trust, then reports PGWIRE_EV_RESYNC and goes on from there.
 *   backend:  a ReadyForQuery ('Z', length 5, status I/T/E) followed by the end of what
 *             was fed so far or by a message that parses; the ReadyForQuery itself is the
 *             first message reported after the RESYNC;
 *   frontend: a client message whose body parses exactly (Query, Parse, Bind, Execute,
 *             Describe, Close, Sync, Flush, Terminate, FunctionCall, CopyDone, CopyFail;
 *             never CopyData or password messages, which prove nothing), confirmed by a
 *             next message that parses, in the same chunk; or one that began a fed chunk
 *             and ends everything fed so far (a client writes a batch and waits).
 * Hunting keeps at most 64 KiB per direction, dropping the oldest bytes (bytes_skipped).
 *
 * SSL/GSS negotiation: after SSLRequest/GSSENCRequest the next backend byte is taken as
 * the answer (the server cannot answer before it has the request, so capture order puts
 * the request first); client bytes sent before the answer are held (16 KiB at most) and
 * decoded after an 'N'. A client that opens with a TLS ClientHello (PostgreSQL 17's
 * direct SSL) is reported encrypted as well.
 */
#ifndef PGSHADOW_PGWIRE_H
#define PGSHADOW_PGWIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

enum pgwire_dir {
	PGWIRE_FRONTEND = 0, /* client to server (== TCPSTREAM_C2S) */
	PGWIRE_BACKEND = 1,  /* server to client (== TCPSTREAM_S2C) */
};

/*
 * Pseudo type codes for the untyped messages of the startup phase (real message type bytes
 * are printable ASCII, so these cannot collide):
 *   STARTUP         StartupMessage, protocol 3.x; body = the packet after the length
 *                   (protocol code, then the parameters)
 *   SSL_REQUEST     SSLRequest; empty body
 *   GSSENC_REQUEST  GSSENCRequest; empty body
 *   CANCEL          CancelRequest; body = pid, key (4 bytes in 3.0, up to 256 in 3.2)
 *   ENC_RESPONSE    the server's one-byte answer to SSLRequest/GSSENCRequest; body[0] is
 *                   'S', 'G' or 'N'
 */
#define PGWIRE_MSG_STARTUP	  0x01
#define PGWIRE_MSG_SSL_REQUEST	  0x02
#define PGWIRE_MSG_GSSENC_REQUEST 0x03
#define PGWIRE_MSG_CANCEL	  0x04
#define PGWIRE_MSG_ENC_RESPONSE	  0x05

struct pgwire_msg {
	enum pgwire_dir dir;
	uint8_t type;	     /* message type byte or PGWIRE_MSG_* */
	const uint8_t *body; /* the body without type and length; NULL when !body_kept */
	uint32_t len;	     /* body length (declared length minus 4) */
	bool body_kept;	     /* false: skipped by design or longer than max_body */
	uint64_t ts_start;   /* capture time of the chunk holding the message's first byte */
	uint64_t ts_end;     /* capture time of the chunk holding its last byte */
};

enum pgwire_event {
	PGWIRE_EV_DESYNC,    /* a direction lost message boundaries (gap, bad length) */
	PGWIRE_EV_RESYNC,    /* a direction found a trustworthy boundary again */
	PGWIRE_EV_ENCRYPTED, /* the server accepted SSL or GSS encryption: decoding stops */
};

/*
 * Callbacks may call pgwire_gap() and pgwire_stop() on the decoder that called them, never
 * pgwire_feed() or pgwire_conn_free(). Event times: DESYNC, the chunk (or gap) that
 * revealed it; RESYNC, the chunk holding the boundary's first byte; ENCRYPTED, the answer's.
 */
struct pgwire_handler {
	/* Every message, in stream order per direction. Valid only during the call. */
	void (*message)(void *ctx, const struct pgwire_msg *m);
	void (*event)(void *ctx, enum pgwire_event ev, enum pgwire_dir dir, uint64_t ts_ns);
};

/*
 * The memory the decoders of one thread may hold at once: the bodies they assemble (a
 * message split across chunks) and their hunting windows, together. Past max_bytes a body
 * is reported without its bytes and a window takes no more (its bytes are skipped, as
 * when it is full), each counted in over_budget: a crowd of clients each holding back
 * part of a large message cannot grow the agent without bound. Single-threaded.
 */
struct pgwire_budget {
	uint64_t max_bytes; /* 0: no limit */
	uint64_t used, peak;
};

struct pgwire_config {
	uint32_t max_body;  /* largest body assembled (split across chunks); default 1 MiB */
	bool keep_datarows; /* report DataRow bodies too (for row hashing); default false */
	struct pgwire_budget *budget; /* shared by the thread's decoders; NULL: none */
};

/* Decoder counters (per connection; session.c sums them). */
struct pgwire_stats {
	uint64_t messages;
	uint64_t bytes;		 /* bytes fed */
	uint64_t bytes_skipped;	 /* discarded while hunting */
	uint64_t bodies_too_big; /* bodies longer than max_body reported without body */
	uint64_t over_budget;	 /* bodies without body, or window bytes skipped, because
				  * the thread's budget (struct pgwire_budget) was spent */
	uint64_t bad_lengths;	 /* impossible lengths (or types, startup codes) that forced
				  * a resync; checked from the header, before any allocation */
	uint64_t resyncs;
};

void pgwire_config_default(struct pgwire_config *cfg);

/*
 * Returns a decoder, or NULL (ENOMEM). from_start: the connection's first bytes will be
 * fed (tcpstream saw the SYN), so the frontend starts in the startup phase; otherwise
 * both directions start hunting. handler/ctx must outlive the decoder.
 */
struct pgwire_conn *pgwire_conn_new(const struct pgwire_config *cfg,
				    const struct pgwire_handler *handler, void *ctx,
				    bool from_start);

/* Feeds bytes of one direction captured at ts_ns. May call the handler. */
void pgwire_feed(struct pgwire_conn *c, enum pgwire_dir dir, const uint8_t *data, size_t len,
		 uint64_t ts_ns);

/* Tells the decoder that bytes are missing in dir before what comes next: the direction
 * starts hunting (PGWIRE_EV_DESYNC is reported unless it already was hunting). */
void pgwire_gap(struct pgwire_conn *c, enum pgwire_dir dir, uint64_t ts_ns);

/* Stops decoding for good (encrypted or replication session): later bytes are ignored. */
void pgwire_stop(struct pgwire_conn *c);

/* Has every byte fed in dir been decoded: none skipped while hunting, dropped or missing
 * (a gap)? For a connection caught mid-session, true until the first loss: its first
 * message was found at the first byte seen. */
bool pgwire_whole(const struct pgwire_conn *c, enum pgwire_dir dir);

const struct pgwire_stats *pgwire_conn_stats(const struct pgwire_conn *c);

/* NULL-safe. Not from inside a handler callback. */
void pgwire_conn_free(struct pgwire_conn *c);

/*
 * A bounds-checked reader of message bodies, in the manner of PgBouncer's pktbuf: every
 * getter returns false (consuming nothing) when the field does not fit in what is left,
 * and callers must check. Integers are big-endian (network order), as on the wire.
 * Shared by pgwire.c and session.c so that no body is read any other way.
 */
struct pgwire_cursor {
	const uint8_t *p;
	const uint8_t *end;
};

#define PGWIRE_MUST_CHECK __attribute__((warn_unused_result))

/* A body that was not kept (NULL) reads as empty: every getter fails. */
static inline void pgwire_cursor_init(struct pgwire_cursor *cur, const uint8_t *data, size_t len)
{
	cur->p = data;
	cur->end = data ? data + len : data;
}

static inline size_t pgwire_cursor_left(const struct pgwire_cursor *cur)
{
	return (size_t)(cur->end - cur->p);
}

static inline PGWIRE_MUST_CHECK bool pgwire_get_u8(struct pgwire_cursor *cur, uint8_t *v)
{
	if (pgwire_cursor_left(cur) < 1)
		return false;
	*v = cur->p[0];
	cur->p += 1;
	return true;
}

static inline PGWIRE_MUST_CHECK bool pgwire_get_u16(struct pgwire_cursor *cur, uint16_t *v)
{
	if (pgwire_cursor_left(cur) < 2)
		return false;
	*v = (uint16_t)((uint16_t)cur->p[0] << 8 | cur->p[1]);
	cur->p += 2;
	return true;
}

static inline PGWIRE_MUST_CHECK bool pgwire_get_i16(struct pgwire_cursor *cur, int16_t *v)
{
	uint16_t u;

	if (!pgwire_get_u16(cur, &u))
		return false;
	*v = (int16_t)u;
	return true;
}

static inline PGWIRE_MUST_CHECK bool pgwire_get_u32(struct pgwire_cursor *cur, uint32_t *v)
{
	if (pgwire_cursor_left(cur) < 4)
		return false;
	*v = (uint32_t)cur->p[0] << 24 | (uint32_t)cur->p[1] << 16 | (uint32_t)cur->p[2] << 8 |
	     cur->p[3];
	cur->p += 4;
	return true;
}

static inline PGWIRE_MUST_CHECK bool pgwire_get_i32(struct pgwire_cursor *cur, int32_t *v)
{
	uint32_t u;

	if (!pgwire_get_u32(cur, &u))
		return false;
	*v = (int32_t)u;
	return true;
}

/* n bytes in place. */
static inline PGWIRE_MUST_CHECK bool pgwire_get_bytes(struct pgwire_cursor *cur, size_t n,
						      const uint8_t **v)
{
	if (pgwire_cursor_left(cur) < n)
		return false;
	*v = cur->p;
	cur->p += n;
	return true;
}

/* A NUL-terminated string in place; len excludes the NUL. False if no NUL is left.
 * Names are short (often empty): the first bytes are scanned inline, memchr does the rest. */
static inline PGWIRE_MUST_CHECK bool pgwire_get_string(struct pgwire_cursor *cur, const char **s,
						       size_t *len)
{
	size_t left = pgwire_cursor_left(cur), i, head = left < 16 ? left : 16;
	const uint8_t *nul = NULL;

	for (i = 0; i < head; i++) {
		if (cur->p[i] == 0) {
			nul = cur->p + i;
			break;
		}
	}
	if (!nul && left > head)
		nul = memchr(cur->p + head, 0, left - head);
	if (!nul)
		return false;
	*s = (const char *)cur->p;
	*len = (size_t)(nul - cur->p);
	cur->p = nul + 1;
	return true;
}

#endif /* PGSHADOW_PGWIRE_H */
