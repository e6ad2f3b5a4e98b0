// SPDX-License-Identifier: (LGPL-2.1 OR BSD-2-Clause)
/*
 * lossy.bpf.c — a test-only tc program that loses and duplicates TCP segments on a veth,
 * because this kernel has neither netem nor sch_fq. Built by `make integration`, attached
 * by tests/integration/test_hostile.py with `tc filter ... bpf da obj lossy.bpf.o sec S`
 * to the client's end of a test veth (never to an interface of the host):
 *
 *   sec "classifier/egress":  drops LOSS_PER_MILLE of the TCP segments the client sends
 *                              and sends DUP_PER_MILLE of them twice;
 *   sec "classifier/ingress": drops LOSS_PER_MILLE of the TCP segments the client
 *                              receives (the agent on the server's end saw them: the
 *                              retransmission reaches it as a duplicate).
 *
 * A duplicate is a clone redirected to the same device; it carries DUP_MARK, so the
 * program lets it pass instead of rolling the dice again (the mark is scrubbed when the
 * packet crosses into the peer's namespace). Everything but IPv4 TCP passes.
 */
#include "vmlinux.h"
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#define ETH_P_IP	0x0800
#define IPPROTO_TCP_NUM 6
#define TC_ACT_OK	0
#define TC_ACT_SHOT	2
#define DUP_MARK	0x10552

#ifndef LOSS_PER_MILLE
#define LOSS_PER_MILLE 30
#endif
#ifndef DUP_PER_MILLE
#define DUP_PER_MILLE 30
#endif

static __always_inline bool is_tcp(struct __sk_buff *skb)
{
	void *data = (void *)(long)skb->data, *end = (void *)(long)skb->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = (void *)(eth + 1);

	if ((void *)(ip + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return false;
	return ip->protocol == IPPROTO_TCP_NUM;
}

static __always_inline int lossy(struct __sk_buff *skb, bool may_duplicate)
{
	__u32 dice;

	if (skb->mark == DUP_MARK) {
		skb->mark = 0;
		return TC_ACT_OK;
	}
	if (!is_tcp(skb))
		return TC_ACT_OK;
	dice = bpf_get_prandom_u32() % 1000;
	if (dice < LOSS_PER_MILLE)
		return TC_ACT_SHOT;
	if (may_duplicate && dice < LOSS_PER_MILLE + DUP_PER_MILLE) {
		skb->mark = DUP_MARK;
		bpf_clone_redirect(skb, skb->ifindex, 0);
		/* the original keeps the mark: the veth scrubs it on the way to the peer */
	}
	return TC_ACT_OK;
}

SEC("classifier/egress")
int lossy_egress(struct __sk_buff *skb)
{
	return lossy(skb, true);
}

SEC("classifier/ingress")
int lossy_ingress(struct __sk_buff *skb)
{
	return lossy(skb, false);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
