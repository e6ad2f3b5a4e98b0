// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * floor.bpf.c — the floors the capture program is measured against (tests/bench/bpf_cost.c
 * attach-floor), each the least a program doing that part of its work can cost:
 *
 *   floor_ports: reads the Ethernet type, the IPv4 protocol and header length and the TCP
 *	ports in place and compares them with the port. Any port filter does this much.
 *   floor_copy: floor_ports, then for a packet of the port with payload, one record of a
 *	fixed 256 bytes reserved in the ring, the time, the lengths and up to 184 bytes of
 *	payload written into it, submitted without a wakeup. Any program that copies each
 *	packet's payload into a ring of this size does this much: a 100-byte pgbench query
 *	or its answer takes one such record.
 *   floor_copy_percpu: floor_copy into a ring of the CPU's own (two rings of half the
 *	size, CPU number mod 2: this is for the 2-CPU benchmark machine), so no CPU writes
 *	a line of a ring another CPU's program wrote: what per-CPU rings would cost.
 *
 * IPv4 only, no options beyond the header length, no map but the ring: the floors, not a
 * capture. Every path returns TCX_NEXT.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define TCX_NEXT   -1
#define RECORD	   256
#define RECORD_HDR 72

const volatile __u16 server_port = 5432;

struct {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 26);
} events SEC(".maps");

struct cpu_ring {
	__uint(type, BPF_MAP_TYPE_RINGBUF);
	__uint(max_entries, 1 << 25);
};
struct cpu_ring rb0 SEC(".maps"), rb1 SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY_OF_MAPS);
	__uint(max_entries, 2);
	__type(key, __u32);
	__array(values, struct cpu_ring);
} rings SEC(".maps") = {.values = {&rb0, &rb1}};

/* The TCP header's offset from the packet's start and the payload's length; 0 when the
 * packet is not TCP of the port. */
static __always_inline __u32 of_port(struct __sk_buff *skb, __u32 *plen)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(*eth);
	struct tcphdr *tcp;
	__u32 ihl;

	if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(0x0800) || ip->protocol != 6)
		return 0;
	ihl = (ip->ihl & 0xf) * 4;
	tcp = (void *)ip + ihl;
	if ((void *)(tcp + 1) > end)
		return 0;
	if (tcp->dest != bpf_htons(server_port) && tcp->source != bpf_htons(server_port))
		return 0;
	*plen = bpf_ntohs(ip->tot_len) - ihl - tcp->doff * 4;
	return sizeof(*eth) + ihl + tcp->doff * 4;
}

SEC("tc")
int floor_ports(struct __sk_buff *skb)
{
	__u32 plen;

	of_port(skb, &plen);
	return TCX_NEXT;
}

static __always_inline int copy_into(struct __sk_buff *skb, void *ring)
{
	__u32 plen = 0, off = of_port(skb, &plen), n;
	__u8 *rec;

	if (!off || !plen || plen > 0xffff)
		return TCX_NEXT;
	rec = bpf_ringbuf_reserve(ring, RECORD, 0);
	if (!rec)
		return TCX_NEXT;
	*(__u64 *)rec = bpf_ktime_get_ns();
	*(__u32 *)(rec + 8) = plen;
	n = plen < RECORD - RECORD_HDR ? plen : RECORD - RECORD_HDR;
	if (n > 0 && n <= RECORD - RECORD_HDR)
		bpf_skb_load_bytes(skb, off, rec + RECORD_HDR, n);
	bpf_ringbuf_submit(rec, BPF_RB_NO_WAKEUP);
	return TCX_NEXT;
}

SEC("tc")
int floor_copy(struct __sk_buff *skb)
{
	return copy_into(skb, &events);
}

SEC("tc")
int floor_copy_percpu(struct __sk_buff *skb)
{
	__u32 cpu = bpf_get_smp_processor_id() & 1;
	void *ring = bpf_map_lookup_elem(&rings, &cpu);

	return ring ? copy_into(skb, ring) : TCX_NEXT;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
