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
 * finds a boundary it can trust (backend: a ReadyForQuery; frontend: a plausible client
 * message confirmed by what follows it), then reports PGWIRE_EV_RESYNC and goes on.
 */
#ifndef PGSHADOW_PGWIRE_H
#define PGSHADOW_PGWIRE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum pgwire_dir {
	PGWIRE_FRONTEND = 0, /* client to server (== TCPSTREAM_C2S) */
	PGWIRE_BACKEND = 1,  /* server to client (== TCPSTREAM_S2C) */
};

/* Pseudo type codes for the untyped messages of the startup phase (real message type
 * bytes are printable ASCII, so these cannot collide). */
#define PGWIRE_MSG_STARTUP 0x01	       /* StartupMessage, protocol 3.x; body = the packet
					* after the length (protocol code, then params) */
#define PGWIRE_MSG_SSL_REQUEST 0x02    /* SSLRequest */
#define PGWIRE_MSG_GSSENC_REQUEST 0x03 /* GSSENCRequest */
#define PGWIRE_MSG_CANCEL 0x04	       /* CancelRequest; body = pid, key */
#define PGWIRE_MSG_ENC_RESPONSE 0x05   /* the server's one-byte answer to SSL/GSSENC
					* request; body[0] is 'S', 'G' or 'N' */

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

struct pgwire_handler {
	/* Every message, in stream order per direction. Valid only during the call. */
	void (*message)(void *ctx, const struct pgwire_msg *m);
	void (*event)(void *ctx, enum pgwire_event ev, enum pgwire_dir dir, uint64_t ts_ns);
};

struct pgwire_config {
	uint32_t max_body; /* largest body assembled (split across chunks); default 1 MiB */
	bool keep_datarows; /* report DataRow bodies too (for row hashing); default false */
};

/* Decoder counters (per connection; session.c sums them). */
struct pgwire_stats {
	uint64_t messages;
	uint64_t bytes;		/* bytes fed */
	uint64_t bytes_skipped; /* discarded while hunting */
	uint64_t bodies_too_big; /* bodies longer than max_body reported without body */
	uint64_t bad_lengths;	/* impossible lengths that forced a resync */
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

const struct pgwire_stats *pgwire_conn_stats(const struct pgwire_conn *c);

/* NULL-safe. */
void pgwire_conn_free(struct pgwire_conn *c);

#endif /* PGSHADOW_PGWIRE_H */
