// SPDX-License-Identifier: BSD-2-Clause
/* order.c — when a replayed request may start on the mirror. See include/order.h. */
#include <errno.h>
#include <stdlib.h>

#include "order.h"

int order_init(struct order *o, uint32_t cap)
{
	int h;

	for (h = 0; h < ORDER_HEAPS; h++) {
		/* untouched pages of a large calloc cost no memory */
		o->heap[h] = calloc(cap ? cap : 1, sizeof(*o->heap[h]));
		o->n[h] = 0;
		if (!o->heap[h]) {
			order_free(o);
			return -ENOMEM;
		}
	}
	o->cap = cap;
	return 0;
}

void order_free(struct order *o)
{
	int h;

	for (h = 0; h < ORDER_HEAPS; h++) {
		free(o->heap[h]);
		o->heap[h] = NULL;
		o->n[h] = 0;
	}
}

/* What heap h is ordered on: completion, or for the ends heap the item's key. */
static uint64_t hkey(int h, const struct order_item *it)
{
	return h == ORDER_ENDS ? it->key : it->ts_end;
}

static void set(struct order *o, int h, uint32_t i, struct order_item *it)
{
	o->heap[h][i] = it;
	it->idx[h] = i;
}

static void up(struct order *o, int h, uint32_t i)
{
	struct order_item **v = o->heap[h], *it = v[i];

	while (i) {
		uint32_t p = (i - 1) / 2;

		if (hkey(h, v[p]) <= hkey(h, it))
			break;
		set(o, h, i, v[p]);
		i = p;
	}
	set(o, h, i, it);
}

static void down(struct order *o, int h, uint32_t i)
{
	struct order_item **v = o->heap[h], *it = v[i];

	for (;;) {
		uint32_t c = 2 * i + 1;

		if (c >= o->n[h])
			break;
		if (c + 1 < o->n[h] && hkey(h, v[c + 1]) < hkey(h, v[c]))
			c++;
		if (hkey(h, it) <= hkey(h, v[c]))
			break;
		set(o, h, i, v[c]);
		i = c;
	}
	set(o, h, i, it);
}

static bool in_heap(const struct order_item *it, int h)
{
	return h == ORDER_ALL || (h == ORDER_WRITES && !it->read) ||
	       (h == ORDER_ENDS && !it->read && it->ends_txn);
}

bool order_track(struct order *o, struct order_item *it)
{
	int h;

	if (o->n[ORDER_ALL] >= o->cap)
		return false;
	for (h = 0; h < ORDER_HEAPS; h++) {
		if (!in_heap(it, h))
			continue;
		set(o, h, o->n[h], it);
		up(o, h, o->n[h]++);
	}
	return true;
}

void order_untrack(struct order *o, struct order_item *it)
{
	int h;

	for (h = 0; h < ORDER_HEAPS; h++) {
		uint32_t i = it->idx[h];
		struct order_item *last;

		if (!in_heap(it, h))
			continue;
		last = o->heap[h][--o->n[h]];
		if (i == o->n[h])
			continue;
		set(o, h, i, last);
		up(o, h, i);
		down(o, h, last->idx[h]);
	}
}

struct walk {
	const struct order_item *b;
	bool (*fn)(void *ctx, const struct order_item *a);
	void *ctx;
	unsigned int n;
	bool stop;
};

/* Calls w->fn for every other owner's item in the subtree of heap h at i that precedes
 * bound, until it returns false. Only items that precede bound are descended into (the
 * heap is ordered): b's own outstanding items are walked past, not waited for. */
static void each(const struct order *o, int h, uint32_t i, uint64_t bound, struct walk *w)
{
	const struct order_item *a;

	if (w->stop || i >= o->n[h])
		return;
	a = o->heap[h][i];
	if (hkey(h, a) >= bound)
		return;
	if (a->owner != w->b->owner) {
		w->n++;
		if (!w->fn(w->ctx, a)) {
			w->stop = true;
			return;
		}
	}
	each(o, h, 2 * i + 1, bound, w);
	each(o, h, 2 * i + 2, bound, w);
}

/* Rule 1 (causal), then rule 2 (lock order) for a write; stops when fn says so. */
static void walk_rules(const struct order *o, struct walk *w, enum order_wait *why)
{
	const struct order_item *b = w->b;

	*why = ORDER_WAIT_CAUSAL;
	each(o, b->read ? ORDER_WRITES : ORDER_ALL, 0, b->ts_start, w);
	if (!w->stop && !b->read) { /* may visit some of the above again */
		if (!w->n)
			*why = ORDER_WAIT_LOCK;
		each(o, ORDER_ENDS, 0, b->key, w);
	}
	if (!w->n)
		*why = ORDER_WAIT_NONE;
}

static bool first(void *ctx, const struct order_item *a)
{
	*(const struct order_item **)ctx = a;
	return false;
}

const struct order_item *order_blocker(const struct order *o, const struct order_item *b,
				       enum order_wait *why)
{
	const struct order_item *a = NULL;
	struct walk w = {.b = b, .fn = first, .ctx = &a};

	walk_rules(o, &w, why);
	return a;
}

enum order_wait order_blocked(const struct order *o, const struct order_item *b)
{
	enum order_wait why;

	order_blocker(o, b, &why);
	return why;
}

unsigned int order_each_blocker(const struct order *o, const struct order_item *b,
				bool (*fn)(void *ctx, const struct order_item *a), void *ctx)
{
	struct walk w = {.b = b, .fn = fn, .ctx = ctx};
	enum order_wait why;

	walk_rules(o, &w, &why);
	return w.n;
}
