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

/* Another owner's item in the subtree of heap h at i that completed before bound, or
 * NULL. Only items that precede bound are descended into: at most b's own outstanding
 * items and what lies directly below them. */
static const struct order_item *below(const struct order *o, int h, uint32_t i,
				      const struct order_item *b, uint64_t bound)
{
	const struct order_item *a;

	if (i >= o->n[h])
		return NULL;
	a = o->heap[h][i];
	if (hkey(h, a) >= bound) /* the heap is ordered: nothing below precedes */
		return NULL;
	if (a->owner != b->owner)
		return a;
	a = below(o, h, 2 * i + 1, b, bound);
	return a ? a : below(o, h, 2 * i + 2, b, bound);
}

const struct order_item *order_blocker(const struct order *o, const struct order_item *b,
				       enum order_wait *why)
{
	const struct order_item *a =
	    below(o, b->read ? ORDER_WRITES : ORDER_ALL, 0, b, b->ts_start);

	*why = ORDER_WAIT_CAUSAL;
	if (!a && !b->read) {
		a = below(o, ORDER_ENDS, 0, b, b->key);
		*why = ORDER_WAIT_LOCK;
	}
	if (!a)
		*why = ORDER_WAIT_NONE;
	return a;
}

enum order_wait order_blocked(const struct order *o, const struct order_item *b)
{
	enum order_wait why;

	order_blocker(o, b, &why);
	return why;
}

struct walk {
	const struct order_item *b;
	bool (*fn)(void *ctx, const struct order_item *a);
	void *ctx;
	unsigned int n;
	bool stop;
};

/* Every other owner's item in the subtree of heap h at i that completed before bound. */
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

unsigned int order_each_blocker(const struct order *o, const struct order_item *b,
				bool (*fn)(void *ctx, const struct order_item *a), void *ctx)
{
	struct walk w = {.b = b, .fn = fn, .ctx = ctx};

	each(o, b->read ? ORDER_WRITES : ORDER_ALL, 0, b->ts_start, &w);
	if (!b->read) /* may visit some of the above again */
		each(o, ORDER_ENDS, 0, b->key, &w);
	return w.n;
}
