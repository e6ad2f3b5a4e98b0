/* SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause) */
/*
 * The kernel/user contract of the capture path: what bpf/capture.bpf.c writes into
 * the ring buffer and the maps user/capture.c reads. Fixed-width types, no pointers,
 * explicit padding; included by both sides, so it must compile with vmlinux.h (BPF)
 * and with <linux/types.h> (user space).
 */
#ifndef PGSHADOW_CAPTURE_EVENT_H
#define PGSHADOW_CAPTURE_EVENT_H

#ifndef __VMLINUX_H__
#include <linux/types.h>
#endif

/* Payload bytes carried by one ring-buffer record. A packet larger than this is sent as
 * several records (chunks) that share the packet's header fields. */
#define CAPTURE_CHUNK_MAX 4096
/* Largest packet payload copied (GSO/TSO super-packets on loopback reach 64 KiB).
 * Bytes beyond it are counted as truncated and surface downstream as a stream gap. */
#define CAPTURE_PAYLOAD_MAX 65536
#define CAPTURE_MAX_CHUNKS  (CAPTURE_PAYLOAD_MAX / CAPTURE_CHUNK_MAX)

/* Direction of a segment, decided in the kernel from the configured server port. */
enum capture_dir {
	CAPTURE_DIR_C2S = 0, /* client to server: destination port == server port */
	CAPTURE_DIR_S2C = 1, /* server to client: source port == server port */
};

/*
 * Where a record's bytes come from. A TLS record holds the plaintext one SSL_read (dir
 * C2S) or SSL_write (S2C) of a server backend returned, read through uprobes on its libssl
 * (--tls on): the addresses and ports are its client connection's, as a packet of that
 * direction would carry them; seq counts the plaintext bytes of that direction the backend
 * has read or written since the probes first saw it (so a lost call is a jump); payload_len
 * is the call's byte count; ts_ns when the call returned; tcp_flags and ack are 0.
 */
enum capture_origin {
	CAPTURE_ORIGIN_PACKET = 0, /* a TCP segment seen by the tc program */
	CAPTURE_ORIGIN_TLS = 1,	   /* plaintext of a TLS session, from the uprobes */
};

/* TCP flags as they appear in the TCP header's flag byte. */
#define CAPTURE_TCP_FIN 0x01
#define CAPTURE_TCP_SYN 0x02
#define CAPTURE_TCP_RST 0x04
#define CAPTURE_TCP_PSH 0x08
#define CAPTURE_TCP_ACK 0x10

/*
 * One ring-buffer record: a header followed by chunk_len payload bytes. Addresses are
 * 16 bytes; IPv4 is stored as an IPv4-mapped IPv6 address (::ffff:a.b.c.d) with
 * family 4. Ports are in host byte order; seq is the TCP sequence number of the
 * packet's first payload byte (chunk_off is relative to it).
 */
struct capture_event {
	__u64 ts_ns;	   /* CLOCK_MONOTONIC: the sending stack's stamp, else when seen */
	__u8 saddr[16];	   /* packet source address */
	__u8 daddr[16];	   /* packet destination address */
	__u16 sport;	   /* packet source port */
	__u16 dport;	   /* packet destination port */
	__u32 seq;	   /* TCP sequence number of the packet */
	__u32 payload_len; /* total TCP payload length of the packet */
	__u32 chunk_off;   /* offset of this chunk in the payload */
	union {
		__u32 ifindex; /* CAPTURE_ORIGIN_PACKET: interface the packet was seen on */
		__u32 pid;     /* CAPTURE_ORIGIN_TLS: the backend process (tgid) */
	};
	__u16 chunk_len; /* payload bytes following this header */
	__u8 family;	 /* 4 or 6 */
	__u8 tcp_flags;	 /* CAPTURE_TCP_* */
	__u8 dir;	 /* enum capture_dir */
	__u8 origin;	 /* enum capture_origin */
	__u8 pad[2];
	__u32 ack; /* TCP acknowledgment number (valid with CAPTURE_TCP_ACK) */
		   /* chunk_len payload bytes follow the header (no flexible array: the BPF side
		    * embeds this struct in its staging buffer) */
};

_Static_assert(sizeof(struct capture_event) == 72, "capture_event layout changed");

/* Key of the exclude map: one direction of a connection exactly as it appears in a
 * packet. The agent inserts both directions of each of its own local connections. */
struct capture_tuple {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport;
	__u16 dport;
};

_Static_assert(sizeof(struct capture_tuple) == 36, "capture_tuple layout changed");

/* Index into the per-CPU counter array. */
enum capture_counter {
	CAPTURE_CNT_PACKETS = 0,  /* packets that matched the port filter */
	CAPTURE_CNT_BYTES,	  /* payload bytes of those packets */
	CAPTURE_CNT_RECORDS,	  /* records written into the ring buffer */
	CAPTURE_CNT_RB_DROPS,	  /* records lost because the ring buffer was full */
	CAPTURE_CNT_TRUNCATED,	  /* packets whose payload exceeded CAPTURE_PAYLOAD_MAX */
	CAPTURE_CNT_EXCLUDED,	  /* packets of excluded (the agent's own) connections */
	CAPTURE_CNT_LOCAL_CLIENT, /* packets of this host's own outgoing connections */
	CAPTURE_CNT_PURE_ACKS,	  /* matched packets without payload or SYN/FIN/RST */
	CAPTURE_CNT_COPY_ERRORS,  /* bpf_skb_load_bytes / bpf_probe_read_user failures */
	CAPTURE_CNT_TLS_CALLS,	  /* SSL_read/SSL_write calls of probed backends with data */
	CAPTURE_CNT_TLS_BYTES,	  /* their plaintext bytes */
	CAPTURE_CNT_TLS_UNMAPPED, /* such calls before the backend's connection was known:
				   * not reported */
	CAPTURE_CNT_MAX,
};

/* The per-CPU value of the counters map (one entry). */
struct capture_counters {
	__u64 c[CAPTURE_CNT_MAX];
};

/*
 * What the mirror_rx socket filter records for one of the agent's mirror connections (a
 * slot of the rx_times array, mapped read-only by the replay). last: the time the last
 * segment carrying data arrived. An answer ends with ReadyForQuery, which the server
 * flushes at once: a segment whose last 6 bytes are one ('Z', length 5, status I/T/E) is
 * an answer's end; end i's time is end_ns[i % CAPTURE_RX_ENDS], written before ends
 * becomes i + 1. Times are bpf_ktime_get_ns() (CLOCK_MONOTONIC). The replay also reads
 * from it which connections have an answer (or their end) to read, without a system call.
 */
#define CAPTURE_RX_ENDS 16 /* a power of two */

struct capture_rx_slot {
	__u64 last;
	__u64 ends;
	__u64 end_ns[CAPTURE_RX_ENDS];
	__u64 fin; /* the time a FIN or RST came (0: none): there is something to read */
};

_Static_assert(sizeof(struct capture_rx_slot) == 152, "capture_rx_slot layout changed");

#endif /* PGSHADOW_CAPTURE_EVENT_H */
