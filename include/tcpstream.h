/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * tcpstream: TCP reassembly. Turns captured segments (in any order, duplicated,
 * overlapping, seen on several interfaces) into two ordered byte streams per
 * connection, and reports what it could not rebuild as explicit gaps.
 *
 * Pure: no sockets, threads or clocks; time comes in with every call. One instance is
 * owned by one thread (the capture thread); nothing here is thread-safe.
 *
 * Flow identity. A connection is keyed by (client address, client port, server port)
 * plus the initial sequence numbers of its SYN/SYN-ACK when they were seen: the server
 * address is not part of the key, so one connection seen on two interfaces under two
 * server addresses (DNAT into a container, a bridge) is one flow. The server address
 * reported is the one seen first.
 *
 * Resets. An RST is taken (and closes the flow) only if its sequence number is one its
 * direction could send now (RFC 5961's idea, seen from outside): not before the next byte
 * expected, and not beyond the furthest point the direction is known to have reached
 * (delivered, held, its FIN, or acknowledged by the peer) plus 64 MiB of bytes lost to the
 * capture; a direction that has carried nothing but its SYN resets only at ISN + 1. An RST
 * of a direction never seen is checked through its ACK (it must acknowledge what the other
 * direction sent), and taken if it has none. Any other RST is counted in rst_ignored and
 * dropped: typically the reset of a previous connection on the same tuple (TIME_WAIT
 * assassination), which must not end the new one.
 *
 * Late segments. A closed flow lingers for linger_ns; what arrives for it then is counted
 * in late_segments and dropped, and its payload bytes past the flow's end as closed (never
 * delivered nor reported in a gap) are counted in late_bytes_undelivered. Exception: the
 * client's SYN, with the ISN of a flow that an RST closed before anything was delivered or
 * reported missing, opens a new flow (flows_reopened): a client never resends the SYN of
 * an attempt it reset or that was refused, so that RST was not this connection's end.
 *
 * Acknowledgments and the end of a direction. Each direction tracks the highest sequence
 * number the other side acknowledged (ACK of segments taken by the flow whose own sequence
 * number is plausible; acks behind the direction's start, more than 1 GiB ahead of the
 * furthest point known, or past its FIN are ignored). When a flow closes, for any reason,
 * after its held data is delivered, a direction whose known end lies beyond the bytes
 * delivered gets a trailing gap of exact size (counted in tail_gaps too). The known end is
 * the FIN's sequence number if the FIN was seen; otherwise the acknowledged position, less
 * one for the FIN (which takes a sequence number, not a byte) if that position was first
 * acknowledged by a segment sent with or after the acknowledging side's own FIN: a side
 * that closes after reading its peer's end acknowledges that end in its FIN. The rule can
 * err by one byte when the FIN is lost and the acknowledging side closed first with no
 * segment in between (that acknowledgement then counts one byte short) or sent data after
 * its peer's FIN (one byte long). The SYN's sequence number is never counted as a byte.
 */
#ifndef PGSHADOW_TCPSTREAM_H
#define PGSHADOW_TCPSTREAM_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum tcpstream_dir {
	TCPSTREAM_C2S = 0, /* client to server */
	TCPSTREAM_S2C = 1, /* server to client */
};

/* TCP flag bits accepted in tcpstream_segment.flags (same values as the TCP header). */
#define TCPSTREAM_FIN 0x01
#define TCPSTREAM_SYN 0x02
#define TCPSTREAM_RST 0x04
#define TCPSTREAM_ACK 0x10

struct tcpstream_addr {
	uint8_t addr[16]; /* IPv6, or IPv4-mapped (::ffff:a.b.c.d) when family == 4 */
	uint16_t port;	  /* host byte order */
	uint8_t family;	  /* 4 or 6 */
};

/* One captured segment (or one chunk of a segment), already oriented by the kernel. */
struct tcpstream_segment {
	uint64_t ts_ns;		      /* capture time */
	struct tcpstream_addr client; /* the side that is not on the server port */
	struct tcpstream_addr server; /* the side on the server port */
	enum tcpstream_dir dir;
	uint32_t seq;	     /* sequence number of data[0] (of the SYN itself if SYN) */
	uint32_t ack;	     /* acknowledgment number, valid when flags has TCPSTREAM_ACK */
	uint8_t flags;	     /* TCPSTREAM_*; a chunked packet carries SYN on its first
			      * chunk and FIN/RST on its last one only */
	const uint8_t *data; /* not retained after the call returns */
	uint32_t len;
};

enum tcpstream_close_reason {
	TCPSTREAM_CLOSE_FIN = 0,  /* both directions finished */
	TCPSTREAM_CLOSE_RST,	  /* reset by either side */
	TCPSTREAM_CLOSE_IDLE,	  /* no segment for idle_timeout_ns */
	TCPSTREAM_CLOSE_REUSED,	  /* a new SYN with another ISN reused the tuple */
	TCPSTREAM_CLOSE_SHUTDOWN, /* tcpstream_free() or tcpstream_close_all() */
};

/* What the consumer sees of a flow. `user` is the consumer's own per-flow pointer. */
struct tcpstream_flow {
	uint64_t id; /* unique for the life of the instance, starting at 1 */
	struct tcpstream_addr client;
	struct tcpstream_addr server; /* as first seen */
	uint64_t open_ts_ns;
	bool saw_syn; /* the connection's start was seen */
	void *user;
};

/*
 * Callbacks, all optional, called synchronously from feed/tick/close_all. Within one
 * direction, data and gap events come in stream order. `data` points into the caller's
 * segment or into tcpstream's own buffer, valid only during the call. ts_ns is the
 * capture time of the segment that carried those bytes.
 *
 * gap: `missing` bytes could not be rebuilt before the data that follows (0 = unknown,
 * e.g. the start of a connection that was open before capture began). At close, a last
 * gap may end a direction: bytes its FIN or the peer's acknowledgment showed were sent,
 * but never seen (ts_ns is then the close time).
 */
struct tcpstream_handler {
	void (*open)(void *ctx, struct tcpstream_flow *flow, uint64_t ts_ns);
	void (*data)(void *ctx, struct tcpstream_flow *flow, enum tcpstream_dir dir,
		     const uint8_t *data, size_t len, uint64_t ts_ns);
	void (*gap)(void *ctx, struct tcpstream_flow *flow, enum tcpstream_dir dir,
		    uint64_t missing, uint64_t ts_ns);
	void (*close)(void *ctx, struct tcpstream_flow *flow, enum tcpstream_close_reason reason,
		      uint64_t ts_ns);
};

struct tcpstream_config {
	uint32_t max_flows;	   /* flows tracked at once; new ones beyond are refused */
	uint32_t max_flow_buffer;  /* out-of-order bytes held per half-stream */
	uint64_t max_total_buffer; /* out-of-order bytes held across all flows */
	uint64_t hole_timeout_ns;  /* how long a hole may wait for its missing bytes */
	uint64_t idle_timeout_ns;  /* a flow with no segment for this long is closed */
	uint64_t linger_ns;	   /* a closed flow absorbs late duplicates this long */
};

/* Counters; every cap that is hit has one. Owned by the instance's thread. */
struct tcpstream_stats {
	uint64_t segments; /* segments fed */
	uint64_t flows_opened;
	uint64_t flows_closed;	    /* by any reason, expiry included */
	uint64_t flows_expired;	    /* closed for idleness */
	uint64_t flows_active;	    /* open now (lingering ones excluded) */
	uint64_t flows_refused;	    /* not tracked: max_flows reached */
	uint64_t flows_midstream;   /* first seen without SYN */
	uint64_t views_merged;	    /* segments matched to a flow under another server address */
	uint64_t bytes_delivered;   /* payload handed to the data callback */
	uint64_t dup_segments;	    /* segments carrying no new byte */
	uint64_t dup_bytes;	    /* payload bytes already delivered or held */
	uint64_t ooo_segments;	    /* segments held because they arrived early */
	uint64_t buffered_bytes;    /* held out-of-order bytes now */
	uint64_t buffer_cap_hits;   /* holes given up because a byte cap was reached */
	uint64_t hole_timeouts;	    /* holes given up because hole_timeout_ns passed */
	uint64_t gaps;		    /* gap events */
	uint64_t gap_bytes;	    /* bytes known missing (unknown-size gaps add 0) */
	uint64_t late_segments;	    /* segments of a lingering (closed) flow */
	uint64_t segments_rejected; /* dropped: malformed, or under another server address (or
				     * with another ISN) without fitting the flow of its key */
	uint64_t rst_ignored;	    /* RSTs dropped: sequence number not acceptable (see Resets) */
	uint64_t late_bytes_undelivered; /* payload of late segments past the closed flow's end */
	uint64_t flows_reopened; /* a client SYN reopened its RST-closed flow (see Late segments) */
	uint64_t tail_gaps;	 /* gaps at close: a direction's end known, its bytes never seen */
};

/* Fills *cfg with the defaults documented in README.md. */
void tcpstream_config_default(struct tcpstream_config *cfg);

/* Returns a new instance, or NULL with errno set (EINVAL for a zero cap, ENOMEM).
 * The handler and ctx must outlive it. */
struct tcpstream *tcpstream_new(const struct tcpstream_config *cfg,
				const struct tcpstream_handler *handler, void *ctx);

/* Closes every open flow (reason SHUTDOWN, held data delivered after a gap) and frees
 * the instance. NULL-safe. */
void tcpstream_free(struct tcpstream *ts);

/* Feeds one segment; may call any callback. Never fails: what cannot be tracked is
 * counted in the stats. */
void tcpstream_feed(struct tcpstream *ts, const struct tcpstream_segment *seg);

/* Gives up holes older than hole_timeout_ns, closes idle flows and forgets lingering
 * ones. Call it regularly (the capture loop does, every poll). */
void tcpstream_tick(struct tcpstream *ts, uint64_t now_ns);

/* Closes every open flow now (reason SHUTDOWN), delivering held data after a gap. */
void tcpstream_close_all(struct tcpstream *ts, uint64_t now_ns);

/* The open flow of the connection from client to server, or NULL (never seen, closed). */
struct tcpstream_flow *tcpstream_find(struct tcpstream *ts, const struct tcpstream_addr *client,
				      const struct tcpstream_addr *server);

const struct tcpstream_stats *tcpstream_stats(const struct tcpstream *ts);

#endif /* PGSHADOW_TCPSTREAM_H */
