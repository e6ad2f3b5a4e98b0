// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * capture.bpf.c — copies the TCP payload of one server port into a ring buffer.
 *
 * Attached with tcx (or tc clsact) to ingress, and on non-loopback interfaces also to
 * egress. It only reads: every path returns TCX_NEXT (== TC_ACT_UNSPEC), the packet
 * is never modified, redirected or dropped.
 *
 * What is reported: IPv4/IPv6 TCP segments whose destination port (client to server)
 * or source port (server to client) is the configured port, with payload, or with
 * SYN/FIN/RST. Pure ACKs are counted and dropped here. Not reported:
 *  - connections in the exclude map (the agent's own local connections);
 *  - on non-loopback interfaces, connections whose client end is a socket of this host
 *    (an outgoing connection from this host to a remote server on the same port, e.g. a
 *    standby's walreceiver or the agent's own mirror connection): at egress such a
 *    client-to-server packet carries its socket (skb->sk), at ingress a socket lookup
 *    finds the local client end. Forwarded traffic (DNAT into a container, a bridge)
 *    has no local socket and is reported in both directions.
 * Payloads are copied in chunks of CAPTURE_CHUNK_MAX bytes, straight from the packet into
 * records reserved in size classes (see emit), up to CAPTURE_PAYLOAD_MAX bytes per packet
 * (nonlinear and GSO skbs included).
 *
 * With --tls on, the tls_* programs below also report the plaintext the server's backends
 * read and write through libssl (uprobes on SSL_read/SSL_write), into the same ring.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>
#include <bpf/bpf_core_read.h>
#include <bpf/bpf_tracing.h>
#include "capture_event.h"

#define ETH_P_IP	 0x0800
#define ETH_P_IPV6	 0x86DD
#define ETH_HLEN	 14
#define IPPROTO_TCP_NUM	 6
#define IP_FRAG_MASK	 0x3fff /* MF flag + fragment offset */
#define LOOPBACK_IFINDEX 1	/* lo is ifindex 1 in every network namespace */

/* Set by the loader between open and load. */
const volatile __u16 server_port = 5432;
/* Force a reader wakeup once this much data waits in the ring buffer; below it records
 * are submitted without a wakeup and the reader finds them on its short poll timeout.
 * Waking the reader per record cost 35-45% of the source's TPS in the prototype. */
const volatile __u64 wakeup_bytes = 1 << 20;
/* Set by the loader: how full the ring may get with payload. The rest is kept for records
 * without payload (a SYN, a FIN or RST, the end of a packet whose payload was lost), so
 * that when the reader falls behind and payload is lost, where each stream ended still
 * reaches it and the loss becomes a gap of known size instead of a silently short stream. */
const volatile __u64 data_limit = ~0ULL;

/* Written by the agent at run time: non-zero once the exclude map has entries, so the
 * common case pays no hash lookup. */
__u32 exclude_active = 0;

/* Written by the agent: non-zero while its reader sleeps without a timeout to poll on
 * (nothing came for a while): the next record wakes it at once, so an idle agent does
 * not poll and the first packet after a quiet spell is not left waiting. */
__u32 reader_idle = 0;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 64 << 20); /* resized by the loader */
} events SEC(".maps");

/* One per-CPU block of all counters: a packet costs one map lookup, not one per counter. */
struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct capture_counters);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 4096);
	__type(key, struct capture_tuple);
	__type(value, __u8);
} exclude SEC(".maps");

/* A record: the header, then the chunk. Records are reserved in size classes (see emit). */
struct record {
	struct capture_event ev;
	__u8 data[CAPTURE_CHUNK_MAX];
};

static __always_inline struct capture_counters *counters_get(void)
{
	__u32 zero = 0;

	return bpf_map_lookup_elem(&counters, &zero);
}

/* per-CPU: no atomics needed */
#define count(cnt, idx, n)                                                                         \
	do {                                                                                       \
		if (cnt)                                                                           \
			(cnt)->c[(idx)] += (n);                                                    \
	} while (0)

/* Parsed headers of one packet. */
struct pkt {
	struct capture_tuple t; /* addresses as 16-byte (IPv4-mapped) values, host ports */
	__u32 l4_off;		/* offset of the TCP header from skb->data */
	__u32 payload_off;
	__u32 payload_len;
	__u32 seq;
	__u32 ack;
	__u8 family;
	__u8 flags;
	__u32 v4_saddr, v4_daddr; /* network order, for the socket lookup */
};

static __always_inline void map_v4(__u8 *dst, __u32 addr)
{
	__builtin_memset(dst, 0, 10);
	dst[10] = 0xff;
	dst[11] = 0xff;
	__builtin_memcpy(dst + 12, &addr, 4);
}

/*
 * Finds the network header. Ethernet-like devices (lo, veth, NICs) put an Ethernet
 * header first; L3 devices (tun, wireguard) start at the IP header. __sk_buff has no
 * mac_len, so the Ethernet type field is compared with skb->protocol.
 */
static __always_inline int l3_offset(struct __sk_buff *skb, __u16 proto, __u32 *off)
{
	__u16 ethtype;

	if (bpf_skb_load_bytes(skb, 12, &ethtype, sizeof(ethtype)) == 0 && ethtype == proto)
		*off = ETH_HLEN;
	else
		*off = 0;
	return 0;
}

/*
 * The TCP header fields, from 20 bytes of it (network order), and the payload bounds.
 * Returns 0, or -1 for a header length that cannot be.
 */
static __always_inline int tcp_fields(struct pkt *p, const __u8 *tcph, __u32 l4_off,
				      __u32 l3_payload)
{
	__u32 tcp_hlen = (tcph[12] >> 4) * 4;

	if (tcp_hlen < 20 || tcp_hlen > l3_payload)
		return -1;
	p->l4_off = l4_off;
	p->t.sport = (tcph[0] << 8) | tcph[1];
	p->t.dport = (tcph[2] << 8) | tcph[3];
	p->seq = ((__u32)tcph[4] << 24) | ((__u32)tcph[5] << 16) | ((__u32)tcph[6] << 8) | tcph[7];
	p->ack =
	    ((__u32)tcph[8] << 24) | ((__u32)tcph[9] << 16) | ((__u32)tcph[10] << 8) | tcph[11];
	p->flags = tcph[13];
	p->payload_off = l4_off + tcp_hlen;
	p->payload_len = l3_payload - tcp_hlen;
	return 0;
}

/*
 * The IPv4 header's fields (iph in the packet or a copy of it): sets ip_len and
 * l3_payload (what follows the IP header). Returns 0, or -1 for what is not reported (not
 * TCP, a fragment, a header length that cannot be).
 */
static __always_inline int ipv4_fields(struct pkt *p, const struct iphdr *iph, __u32 skb_len,
				       __u32 off, __u32 *ip_len, __u32 *l3_payload)
{
	if (iph->protocol != IPPROTO_TCP_NUM || (bpf_ntohs(iph->frag_off) & IP_FRAG_MASK))
		return -1;
	*ip_len = iph->ihl * 4;
	if (*ip_len < sizeof(*iph))
		return -1;
	p->family = 4;
	p->v4_saddr = iph->saddr;
	p->v4_daddr = iph->daddr;
	map_v4(p->t.saddr, iph->saddr);
	map_v4(p->t.daddr, iph->daddr);
	/* tot_len is 0 on BIG TCP super-packets: use the skb length then. */
	*l3_payload = bpf_ntohs(iph->tot_len);
	if (*l3_payload == 0 || *l3_payload > skb_len - off)
		*l3_payload = skb_len - off;
	if (*l3_payload < *ip_len)
		return -1;
	*l3_payload -= *ip_len;
	return 0;
}

/* The IPv6 header's fields, as ipv4_fields. Extension headers before TCP are rare and not
 * followed. */
static __always_inline int ipv6_fields(struct pkt *p, const struct ipv6hdr *ip6h, __u32 skb_len,
				       __u32 off, __u32 *ip_len, __u32 *l3_payload)
{
	if (ip6h->nexthdr != IPPROTO_TCP_NUM)
		return -1;
	*ip_len = sizeof(*ip6h);
	p->family = 6;
	__builtin_memcpy(p->t.saddr, &ip6h->saddr, 16);
	__builtin_memcpy(p->t.daddr, &ip6h->daddr, 16);
	*l3_payload = bpf_ntohs(ip6h->payload_len);
	if (*l3_payload == 0 || *l3_payload > skb_len - off - *ip_len)
		*l3_payload = skb_len - off - *ip_len;
	return 0;
}

/*
 * The common case, read in place: an IPv4 or IPv6 TCP packet whose headers lie in the
 * skb's linear area (direct packet access costs no helper call; the general parse below
 * takes three or four). Returns 0 when parsed, -1 when the packet is not one to report,
 * 1 when its headers are not all linear (then parse() reads them with helper calls).
 */
static __always_inline int parse_linear(struct __sk_buff *skb, struct pkt *p, __u16 proto,
					__u32 skb_len)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	__u32 off = 0, ip_len, l3_payload;
	__u8 *tcph;

	if (data + ETH_HLEN > end)
		return 1;
	if (*(__u16 *)(data + 12) == proto)
		off = ETH_HLEN;
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr *iph = data + off;

		if ((void *)(iph + 1) > end)
			return 1;
		if (ipv4_fields(p, iph, skb_len, off, &ip_len, &l3_payload))
			return -1;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr *ip6h = data + off;

		if ((void *)(ip6h + 1) > end)
			return 1;
		if (ipv6_fields(p, ip6h, skb_len, off, &ip_len, &l3_payload))
			return -1;
	} else {
		return -1;
	}
	tcph = data + off + ip_len;
	if ((void *)(tcph + 20) > end)
		return 1;
	return tcp_fields(p, tcph, off + ip_len, l3_payload);
}

/* Parses IPv4/IPv6 + TCP. Returns 0 when the packet is TCP and parsed, -1 otherwise. */
static __always_inline int parse(struct __sk_buff *skb, struct pkt *p)
{
	__u32 off, ip_len, l3_payload, skb_len;
	__u16 proto;
	__u8 tcph[20];
	int ret;

	/* Read context fields once, plainly: the verifier rejects the offset arithmetic
	 * on the context pointer that clang emits when it merges repeated accesses. */
	proto = skb->protocol;
	skb_len = skb->len;
	asm volatile("" ::: "memory");
	ret = parse_linear(skb, p, proto, skb_len);
	if (ret <= 0)
		return ret;
	l3_offset(skb, proto, &off);
	if (proto == bpf_htons(ETH_P_IP)) {
		struct iphdr iph;

		if (bpf_skb_load_bytes(skb, off, &iph, sizeof(iph)) ||
		    ipv4_fields(p, &iph, skb_len, off, &ip_len, &l3_payload))
			return -1;
	} else if (proto == bpf_htons(ETH_P_IPV6)) {
		struct ipv6hdr ip6h;

		if (bpf_skb_load_bytes(skb, off, &ip6h, sizeof(ip6h)) ||
		    ipv6_fields(p, &ip6h, skb_len, off, &ip_len, &l3_payload))
			return -1;
	} else {
		return -1;
	}

	if (bpf_skb_load_bytes(skb, off + ip_len, tcph, sizeof(tcph)))
		return -1;
	return tcp_fields(p, tcph, off + ip_len, l3_payload);
}

/* True when the client end of this packet's connection is a socket on this host. */
static __always_inline bool local_client(struct __sk_buff *skb, struct pkt *p, bool ingress,
					 __u8 dir)
{
	struct bpf_sock_tuple tuple = {};
	struct bpf_sock *sk;
	__u32 tlen;

	if (skb->ifindex == LOOPBACK_IFINDEX)
		return false; /* both ends are local on lo; the exclude map decides */
	if (!ingress)
		return dir == CAPTURE_DIR_C2S && skb->sk != NULL;
	if (dir != CAPTURE_DIR_S2C)
		return false;
	if (p->family == 4) {
		tuple.ipv4.saddr = p->v4_saddr;
		tuple.ipv4.daddr = p->v4_daddr;
		tuple.ipv4.sport = bpf_htons(p->t.sport);
		tuple.ipv4.dport = bpf_htons(p->t.dport);
		tlen = sizeof(tuple.ipv4);
	} else {
		__builtin_memcpy(tuple.ipv6.saddr, p->t.saddr, 16);
		__builtin_memcpy(tuple.ipv6.daddr, p->t.daddr, 16);
		tuple.ipv6.sport = bpf_htons(p->t.sport);
		tuple.ipv6.dport = bpf_htons(p->t.dport);
		tlen = sizeof(tuple.ipv6);
	}
	sk = bpf_skc_lookup_tcp(skb, &tuple, tlen, BPF_F_CURRENT_NETNS, 0);
	if (!sk)
		return false;
	bpf_sk_release(sk);
	return true;
}

/*
 * The packet's time. A TCP packet sent by a socket of this host (both directions on lo, a
 * server's answers at a NIC's egress, a container's packets) carries its stack's own
 * monotonic clock reading from the start of this transmission: skb->tstamp with
 * tstamp_type BPF_SKB_CLOCK_MONOTONIC (the EDT delivery time; reading tstamp_type is what
 * makes a tc program at ingress see it rather than 0). It is the clock bpf_ktime_get_ns
 * reads, taken microseconds earlier, and reading it costs nothing, where the helper cost
 * 100-170 ns per packet on the benchmark machine (a clock read is a tenth of the
 * program's time there). Packets from another host (real-time or no stamp) and paths that
 * set none use the helper. Under fq pacing the stamp is the planned departure, which is
 * when the peer can have the packet.
 */
static __always_inline __u64 packet_time(struct __sk_buff *skb)
{
	__u64 t = skb->tstamp;

	if (t && skb->tstamp_type == BPF_SKB_CLOCK_MONOTONIC)
		return t;
	return bpf_ktime_get_ns();
}

/* Picks the wakeup flag: wake the reader only once wakeup_bytes wait in the ring. */
static __always_inline __u64 wakeup_flag(__u64 avail)
{
	return avail >= wakeup_bytes ? BPF_RB_FORCE_WAKEUP : BPF_RB_NO_WAKEUP;
}

/*
 * The packet's records are committed: if the reader sleeps idle, wake it (a discarded
 * empty record carries the wakeup; the reader skips it). Read after the commits, so that
 * with the reader's "set the flag, then look at the ring" one of the two sees the other.
 */
static __always_inline void wake_idle_reader(void)
{
	void *r;

	if (!*(volatile __u32 *)&reader_idle)
		return;
	r = bpf_ringbuf_reserve(&events, 8, 0);
	if (r)
		bpf_ringbuf_discard(r, BPF_RB_FORCE_WAKEUP);
}

/*
 * Copies [off, off+len) of a payload into one record reserved in the ring with room for
 * cap bytes (a constant: bpf_ringbuf_reserve takes only constant sizes), loaded straight
 * from its source: one copy. The source is the packet (skb, its payload at base) or, when
 * user (a constant, so each program keeps only its own helper call), a buffer of the
 * calling process at base. Returns 0, or -1 on loss.
 */
static __always_inline int emit_in(struct __sk_buff *skb, __u64 base, const bool user,
				   const struct capture_event *ev, struct capture_counters *cnt,
				   __u64 wake, __u32 off, __u64 len, const __u32 cap)
{
	struct record *rec;
	long err;

	rec = bpf_ringbuf_reserve(&events, sizeof(rec->ev) + cap, 0);
	if (!rec) {
		count(cnt, CAPTURE_CNT_RB_DROPS, 1);
		return -1;
	}
	rec->ev = *ev;
	rec->ev.chunk_off = off;
	rec->ev.chunk_len = len;
	asm volatile("" : "+r"(len)); /* keep the bound check below for the verifier */
	if (len > cap)
		err = -1;
	else if (len == 0)
		err = 0;
	else if (user)
		err = bpf_probe_read_user(rec->data, len, (void *)(base + off));
	else
		err = bpf_skb_load_bytes(skb, base + off, rec->data, len);
	if (err) {
		bpf_ringbuf_discard(rec, BPF_RB_NO_WAKEUP);
		count(cnt, CAPTURE_CNT_COPY_ERRORS, 1);
		return -1;
	}
	bpf_ringbuf_submit(rec, wake);
	count(cnt, CAPTURE_CNT_RECORDS, 1);
	return 0;
}

/*
 * One record for one chunk, in the smallest size class that holds it: classes half an
 * octave apart from 64 bytes to CAPTURE_CHUNK_MAX, so a record wastes less than a third of
 * its chunk (a 100-byte query: 28 bytes) and the chunk is copied once, straight from its
 * source into the ring. Staging it elsewhere and copying it out with its exact size
 * (bpf_ringbuf_output) cost a second copy and a third of the program's time per packet.
 */
static __always_inline int emit(struct __sk_buff *skb, __u64 base, const bool user,
				const struct capture_event *ev, struct capture_counters *cnt,
				__u64 wake, __u32 off, __u64 len)
{
#define EMIT_CLASS(cap) emit_in(skb, base, user, ev, cnt, wake, off, len, cap)
	if (len == 0)
		return EMIT_CLASS(0);
	if (len <= 64)
		return EMIT_CLASS(64);
	if (len <= 96)
		return EMIT_CLASS(96);
	if (len <= 128)
		return EMIT_CLASS(128);
	if (len <= 192)
		return EMIT_CLASS(192);
	if (len <= 256)
		return EMIT_CLASS(256);
	if (len <= 384)
		return EMIT_CLASS(384);
	if (len <= 512)
		return EMIT_CLASS(512);
	if (len <= 768)
		return EMIT_CLASS(768);
	if (len <= 1024)
		return EMIT_CLASS(1024);
	if (len <= 1536)
		return EMIT_CLASS(1536);
	if (len <= 2048)
		return EMIT_CLASS(2048);
	if (len <= 3072)
		return EMIT_CLASS(3072);
	return EMIT_CLASS(CAPTURE_CHUNK_MAX);
#undef EMIT_CLASS
}

/* Whether a packet's (or call's) copy_len bytes may go into the ring: at most what its
 * records can take (a header and a class at most half again its chunk each) below
 * data_limit, checked once for all of them. */
static __always_inline bool payload_fits(__u64 avail, __u32 copy_len)
{
	return avail + copy_len + copy_len / 2 +
		   (copy_len + CAPTURE_CHUNK_MAX - 1) / CAPTURE_CHUNK_MAX *
		       (8 + sizeof(struct capture_event) + 64) <=
	       data_limit;
}

static __always_inline int handle(struct __sk_buff *skb, bool ingress)
{
	struct pkt p = {};
	struct capture_counters *cnt;
	struct capture_event ev;
	__u32 copy_len, off;
	__u64 wake, avail;
	__u64 n;
	bool lost = false;
	__u8 dir;
	int i;

	if (parse(skb, &p))
		return TCX_NEXT;
	if (p.t.dport == server_port)
		dir = CAPTURE_DIR_C2S;
	else if (p.t.sport == server_port)
		dir = CAPTURE_DIR_S2C;
	else
		return TCX_NEXT;

	cnt = counters_get();
	if (p.payload_len == 0 &&
	    !(p.flags & (CAPTURE_TCP_SYN | CAPTURE_TCP_FIN | CAPTURE_TCP_RST))) {
		count(cnt, CAPTURE_CNT_PURE_ACKS, 1);
		return TCX_NEXT;
	}
	if (exclude_active && bpf_map_lookup_elem(&exclude, &p.t)) {
		count(cnt, CAPTURE_CNT_EXCLUDED, 1);
		return TCX_NEXT;
	}
	if (local_client(skb, &p, ingress, dir)) {
		count(cnt, CAPTURE_CNT_LOCAL_CLIENT, 1);
		return TCX_NEXT;
	}
	count(cnt, CAPTURE_CNT_PACKETS, 1);
	count(cnt, CAPTURE_CNT_BYTES, p.payload_len);
	/* once per packet, not per chunk */
	avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	wake = wakeup_flag(avail);

	__builtin_memset(&ev, 0, sizeof(ev));
	ev.ts_ns = packet_time(skb);
	__builtin_memcpy(ev.saddr, p.t.saddr, 16);
	__builtin_memcpy(ev.daddr, p.t.daddr, 16);
	ev.sport = p.t.sport;
	ev.dport = p.t.dport;
	ev.seq = p.seq;
	ev.ack = p.ack;
	ev.payload_len = p.payload_len;
	ev.ifindex = skb->ifindex;
	ev.family = p.family;
	ev.tcp_flags = p.flags;
	ev.dir = dir;

	if (p.payload_len == 0) {
		emit(skb, p.payload_off, false, &ev, cnt, wake, 0, 0);
		wake_idle_reader();
		return TCX_NEXT;
	}
	copy_len = p.payload_len;
	if (copy_len > CAPTURE_PAYLOAD_MAX) {
		count(cnt, CAPTURE_CNT_TRUNCATED, 1);
		copy_len = CAPTURE_PAYLOAD_MAX;
	}
	if (!payload_fits(avail, copy_len)) {
		count(cnt, CAPTURE_CNT_RB_DROPS, 1);
		lost = true;
		copy_len = 0;
	}
	for (i = 0; i < CAPTURE_MAX_CHUNKS; i++) {
		off = i * CAPTURE_CHUNK_MAX;
		if (off >= copy_len)
			break;
		n = copy_len - off;
		if (n > CAPTURE_CHUNK_MAX)
			n = CAPTURE_CHUNK_MAX;
		if (emit(skb, p.payload_off, false, &ev, cnt, wake, off, n)) {
			lost = true; /* the rest of this packet is a hole downstream */
			break;
		}
	}
	/* The FIN/RST of a truncated packet, or of one whose payload was lost, still has to
	 * reach user space at its true position: an empty record at the end of the payload
	 * carries it (in the ring's reserve, see data_limit). */
	if ((lost || copy_len < p.payload_len) && (p.flags & (CAPTURE_TCP_FIN | CAPTURE_TCP_RST)))
		emit(skb, p.payload_off, false, &ev, cnt, wake, p.payload_len, 0);
	wake_idle_reader();
	return TCX_NEXT;
}

SEC("tc")
int capture_ingress(struct __sk_buff *skb)
{
	return handle(skb, true);
}

SEC("tc")
int capture_egress(struct __sk_buff *skb)
{
	return handle(skb, false);
}

/* ---- TLS plaintext: uprobes on the server's libssl (--tls on) ----------------------------
 *
 * A PostgreSQL backend serves one client, so what it reads with SSL_read and writes with
 * SSL_write is that client's session in plaintext. The uprobes trap in every process that
 * maps the library; only children of a postmaster in tls_servers (its backends) go on. The
 * backend's connection is learnt from the socket its SSL call receives or sends on (the
 * sock_recv_length / sock_send_length tracepoints, which carry the socket): libssl's
 * structures are opaque, the socket is not. Loaded only with --tls on.
 */

#define AF_INET_NUM  2
#define AF_INET6_NUM 10

/* Postmasters whose backends are reported (tgid -> 1). Written by the agent. */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 16);
	__type(key, __u32);
	__type(value, __u8);
} tls_servers SEC(".maps");

/* One backend of a probed server. */
struct tls_backend {
	__u64 start_time;	/* the task's: a reused pid starts over */
	struct capture_tuple t; /* its client connection, as a client-to-server packet */
	__u8 family;		/* 4 or 6; 0 while the connection is unknown */
	__u8 pad[3];
	__u32 seq[2];	/* plaintext bytes per direction since first seen (wraps) */
	__u64 buf[2];	/* the buffer of an SSL_read (C2S) / SSL_write (S2C) in progress */
	__u64 exlen[2]; /* the _ex variants: where the call stores its byte count */
};

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 16384);
	__type(key, __u32);
	__type(value, struct tls_backend);
} tls_backends SEC(".maps");

/* The calling process's entry if it is a backend of a probed server (created on its first
 * call), else NULL. */
static __always_inline struct tls_backend *tls_backend_get(bool create)
{
	struct task_struct *task = (struct task_struct *)bpf_get_current_task();
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct tls_backend *b, fresh = {};
	__u32 parent;
	__u64 start;

	parent = BPF_CORE_READ(task, real_parent, tgid);
	if (!bpf_map_lookup_elem(&tls_servers, &parent))
		return NULL;
	start = BPF_CORE_READ(task, group_leader, start_time);
	b = bpf_map_lookup_elem(&tls_backends, &tgid);
	if (b && b->start_time == start)
		return b;
	if (!create)
		return NULL;
	fresh.start_time = start;
	bpf_map_update_elem(&tls_backends, &tgid, &fresh, BPF_ANY);
	return bpf_map_lookup_elem(&tls_backends, &tgid);
}

static __always_inline int tls_enter(__u8 dir, const void *buf, const void *exlen)
{
	struct tls_backend *b = tls_backend_get(true);

	if (!b)
		return 0;
	/* libssl's public read and write functions do not call each other, so a call in
	 * progress can only be one whose return was never seen (the process left it by a
	 * jump): this call replaces it rather than leaving the direction blocked */
	b->buf[dir & 1] = (__u64)buf;
	b->exlen[dir & 1] = (__u64)exlen;
	return 0;
}

/* The call returned n bytes (n <= 0: nothing): report them. */
static __always_inline int tls_exit(__u8 dir, long n, bool ex)
{
	struct tls_backend *b = tls_backend_get(false);
	struct capture_counters *cnt;
	struct capture_tuple key;
	struct capture_event ev;
	__u32 copy_len, off;
	__u64 buf, avail, wake, len;
	int i;

	dir &= 1;
	if (!b || !b->buf[dir])
		return 0;
	buf = b->buf[dir];
	b->buf[dir] = 0;
	if (ex) { /* SSL_read_ex/SSL_write_ex: 1 on success, the count stored through exlen */
		size_t done = 0;

		if (n != 1 || bpf_probe_read_user(&done, sizeof(done), (void *)b->exlen[dir]))
			return 0;
		n = (long)done;
	}
	if (n <= 0)
		return 0;
	cnt = counters_get();
	count(cnt, CAPTURE_CNT_TLS_CALLS, 1);
	count(cnt, CAPTURE_CNT_TLS_BYTES, n);
	if (!b->family) {
		b->seq[dir] += n;
		count(cnt, CAPTURE_CNT_TLS_UNMAPPED, 1);
		return 0;
	}
	__builtin_memset(&ev, 0, sizeof(ev));
	if (dir == CAPTURE_DIR_C2S) {
		key = b->t;
	} else {
		__builtin_memcpy(key.saddr, b->t.daddr, 16);
		__builtin_memcpy(key.daddr, b->t.saddr, 16);
		key.sport = b->t.dport;
		key.dport = b->t.sport;
	}
	if (exclude_active && bpf_map_lookup_elem(&exclude, &key)) {
		b->seq[dir] += n;
		count(cnt, CAPTURE_CNT_EXCLUDED, 1);
		return 0;
	}
	ev.ts_ns = bpf_ktime_get_ns();
	__builtin_memcpy(ev.saddr, key.saddr, 16);
	__builtin_memcpy(ev.daddr, key.daddr, 16);
	ev.sport = key.sport;
	ev.dport = key.dport;
	ev.seq = b->seq[dir];
	ev.payload_len = n;
	ev.pid = bpf_get_current_pid_tgid() >> 32;
	ev.family = b->family;
	ev.dir = dir;
	ev.origin = CAPTURE_ORIGIN_TLS;
	b->seq[dir] += n;

	copy_len = n;
	if (n > CAPTURE_PAYLOAD_MAX) {
		count(cnt, CAPTURE_CNT_TRUNCATED, 1);
		copy_len = CAPTURE_PAYLOAD_MAX;
	}
	avail = bpf_ringbuf_query(&events, BPF_RB_AVAIL_DATA);
	wake = wakeup_flag(avail);
	if (!payload_fits(avail, copy_len)) {
		count(cnt, CAPTURE_CNT_RB_DROPS, 1);
		return 0; /* the next call's seq shows the loss */
	}
	for (i = 0; i < CAPTURE_MAX_CHUNKS; i++) {
		off = i * CAPTURE_CHUNK_MAX;
		if (off >= copy_len)
			break;
		len = copy_len - off;
		if (len > CAPTURE_CHUNK_MAX)
			len = CAPTURE_CHUNK_MAX;
		if (emit(NULL, buf, true, &ev, cnt, wake, off, len))
			break;
	}
	wake_idle_reader();
	return 0;
}

/* A backend inside an SSL call received or sent on sk: if sk is a connection to the
 * server port, it is the backend's client connection. */
static __always_inline int tls_note_socket(struct sock *sk)
{
	__u32 tgid = bpf_get_current_pid_tgid() >> 32;
	struct tls_backend *b = bpf_map_lookup_elem(&tls_backends, &tgid);
	struct capture_tuple *t;
	__u16 family;

	/* known already (a backend keeps its connection for life), or not inside a call */
	if (!b || b->family || !(b->buf[0] | b->buf[1]) ||
	    BPF_CORE_READ(sk, __sk_common.skc_num) != server_port)
		return 0;
	t = &b->t;
	family = BPF_CORE_READ(sk, __sk_common.skc_family);
	if (family == AF_INET_NUM) {
		map_v4(t->saddr, BPF_CORE_READ(sk, __sk_common.skc_daddr));
		map_v4(t->daddr, BPF_CORE_READ(sk, __sk_common.skc_rcv_saddr));
		b->family = 4;
	} else if (family == AF_INET6_NUM) {
		BPF_CORE_READ_INTO(&t->saddr, sk, __sk_common.skc_v6_daddr);
		BPF_CORE_READ_INTO(&t->daddr, sk, __sk_common.skc_v6_rcv_saddr);
		/* an IPv4 client of a dual-stack listener: packets carry IPv4 */
		b->family = (t->saddr[10] == 0xff && t->saddr[11] == 0xff &&
			     !(*(__u64 *)t->saddr | *(__u16 *)(t->saddr + 8)))
				? 4
				: 6;
	} else {
		return 0;
	}
	t->sport = bpf_ntohs(BPF_CORE_READ(sk, __sk_common.skc_dport));
	t->dport = server_port;
	return 0;
}

SEC("tp_btf/sock_recv_length")
int BPF_PROG(tls_sock_recv, struct sock *sk, int ret, int flags)
{
	return tls_note_socket(sk);
}

SEC("tp_btf/sock_send_length")
int BPF_PROG(tls_sock_send, struct sock *sk, int ret, int flags)
{
	return tls_note_socket(sk);
}

SEC("uprobe")
int BPF_KPROBE(tls_read_enter, void *ssl, void *buf)
{
	return tls_enter(CAPTURE_DIR_C2S, buf, NULL);
}

SEC("uretprobe")
int BPF_KRETPROBE(tls_read_exit, int ret)
{
	return tls_exit(CAPTURE_DIR_C2S, ret, false);
}

SEC("uprobe")
int BPF_KPROBE(tls_read_ex_enter, void *ssl, void *buf, __u64 num, void *readbytes)
{
	return tls_enter(CAPTURE_DIR_C2S, buf, readbytes);
}

SEC("uretprobe")
int BPF_KRETPROBE(tls_read_ex_exit, int ret)
{
	return tls_exit(CAPTURE_DIR_C2S, ret, true);
}

SEC("uprobe")
int BPF_KPROBE(tls_write_enter, void *ssl, const void *buf)
{
	return tls_enter(CAPTURE_DIR_S2C, buf, NULL);
}

SEC("uretprobe")
int BPF_KRETPROBE(tls_write_exit, int ret)
{
	return tls_exit(CAPTURE_DIR_S2C, ret, false);
}

SEC("uprobe")
int BPF_KPROBE(tls_write_ex_enter, void *ssl, const void *buf, __u64 num, void *written)
{
	return tls_enter(CAPTURE_DIR_S2C, buf, written);
}

SEC("uretprobe")
int BPF_KRETPROBE(tls_write_ex_exit, int ret)
{
	return tls_exit(CAPTURE_DIR_S2C, ret, true);
}

/*
 * When mirror answers reach the host. The replay attaches this socket filter to each of
 * the agent's own mirror connections (SO_ATTACH_BPF): it stores when the last segment
 * carrying data arrived and when each answer ended (struct capture_rx_slot), so an answer
 * is timed when the kernel received it, not when the replay thread read it (a woken
 * thread waits for a CPU the source's backends hold; answers pipelined on a connection
 * are read together). It runs for those sockets only and keeps every packet.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1); /* set at load: the replay's connection slots */
	__type(key, __u64);	/* socket cookie */
	__type(value, __u32);	/* slot in rx_times */
} rx_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(map_flags, BPF_F_MMAPABLE); /* read by the replay thread without a system call */
	__uint(max_entries, 1);		   /* set at load, as rx_slots */
	__type(key, __u32);
	__type(value, struct capture_rx_slot);
} rx_times SEC(".maps");

/* True when the segment's payload (from hdr to len) ends with a ReadyForQuery message. */
static __always_inline bool ends_answer(struct __sk_buff *skb, __u32 hdr)
{
	__u8 t[6];

	if (skb->len < hdr + 6 || bpf_skb_load_bytes(skb, skb->len - 6, t, 6))
		return false;
	return t[0] == 'Z' && !t[1] && !t[2] && !t[3] && t[4] == 5 &&
	       (t[5] == 'I' || t[5] == 'T' || t[5] == 'E');
}

SEC("socket")
int mirror_rx(struct __sk_buff *skb)
{
	__u64 cookie = bpf_get_socket_cookie(skb);
	__u32 *slot = bpf_map_lookup_elem(&rx_slots, &cookie);
	volatile struct capture_rx_slot *r;
	__u64 now, n;
	__u32 hdr;
	__u8 flags[2]; /* data offset, then FIN/SYN/RST/... */

	/* tcp_filter shows the segment from its TCP header: data beyond the header's length */
	if (!slot || bpf_skb_load_bytes(skb, 12, flags, 2))
		return skb->len;
	r = bpf_map_lookup_elem(&rx_times, slot);
	if (!r)
		return skb->len;
	if (flags[1] & 0x05) /* FIN or RST */
		r->fin = bpf_ktime_get_ns();
	hdr = (__u32)(flags[0] >> 4) * 4;
	if (skb->len <= hdr)
		return skb->len;
	now = bpf_ktime_get_ns();
	r->last = now;
	if (ends_answer(skb, hdr)) {
		n = r->ends;
		r->end_ns[n & (CAPTURE_RX_ENDS - 1)] = now; /* volatile: stored before ends */
		r->ends = n + 1;
	}
	return skb->len;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
