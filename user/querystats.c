/* SPDX-License-Identifier: BSD-2-Clause */
/* querystats.c — per-statement comparison of source and mirror; see querystats.h. */
#define _GNU_SOURCE /* qsort_r */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>
#include <xxhash.h>

#include "querystats.h"

#define NONE UINT32_MAX

struct side {
	uint64_t calls, errors;
	struct querystats_class classes[QUERYSTATS_CLASSES + 1];
	uint32_t hist[QUERYSTATS_BUCKETS];
};

struct entry {
	uint32_t next; /* hash chain */
	bool used;
	uint64_t key, fingerprint;
	char database[QUERYSTATS_DB_MAX];
	char text[QUERYSTATS_TEXT_MAX + 4];
	struct side src, mir;
	uint64_t mirror_only;
	char mirror_only_sqlstate[6];
	uint64_t mismatches[QUERYSTATS_KINDS];
	int64_t extra_ns; /* sum of (mirror - source) over answered calls */
};

struct plan_slot {
	char database[QUERYSTATS_DB_MAX];
	uint64_t fingerprint, seq; /* seq 0: empty */
	char text[PLAN_SUMMARY_MAX];
};

struct querystats {
	struct querystats_config cfg;
	struct plan_slot plans[QUERYSTATS_PLANS];
	uint64_t plan_seq;
	querystats_normalize_fn normalize;
	struct entry *e;
	uint32_t *heads, mask, used, cursor;
	uint64_t evictions, unparsed_calls;
};

void querystats_config_default(struct querystats_config *c)
{
	c->max_entries = 5000;
	c->min_calls = 50;
	c->max_p99_ratio = 2.0;
	c->latency_floor_ms = 5.0;
}

struct querystats *querystats_new(const struct querystats_config *cfg, querystats_normalize_fn fn)
{
	struct querystats *qs;
	uint32_t n = 1;

	if (!cfg || !cfg->max_entries) {
		errno = EINVAL;
		return NULL;
	}
	while (n < 2 * cfg->max_entries && n < (1u << 30))
		n <<= 1;
	qs = calloc(1, sizeof(*qs));
	if (!qs)
		return NULL;
	qs->cfg = *cfg;
	qs->normalize = fn;
	qs->mask = n - 1;
	qs->e = calloc(cfg->max_entries, sizeof(*qs->e));
	qs->heads = malloc(n * sizeof(*qs->heads));
	if (!qs->e || !qs->heads) {
		querystats_free(qs);
		errno = ENOMEM;
		return NULL;
	}
	memset(qs->heads, 0xff, n * sizeof(*qs->heads));
	return qs;
}

void querystats_free(struct querystats *qs)
{
	if (!qs)
		return;
	free(qs->e);
	free(qs->heads);
	free(qs);
}

void querystats_reset(struct querystats *qs)
{
	if (!qs)
		return;
	memset(qs->e, 0, qs->used * sizeof(*qs->e)); /* the rest was never touched */
	memset(qs->heads, 0xff, (qs->mask + 1) * sizeof(*qs->heads));
	qs->used = qs->cursor = 0;
	qs->unparsed_calls = 0;
	memset(qs->plans, 0, sizeof(qs->plans));
}

static uint64_t key_of(const char *db, uint64_t fingerprint)
{
	return XXH3_64bits_withSeed(db, strlen(db), fingerprint);
}

/* The bucket of a latency: 0 below 1 µs, then four per octave. */
static unsigned int bucket_of(uint64_t ns)
{
	double us = (double)ns / 1000.0;
	double b;

	if (us < 1.0)
		return 0;
	b = floor(4.0 * log2(us)) + 1.0;
	return b >= QUERYSTATS_BUCKETS - 1 ? QUERYSTATS_BUCKETS - 1 : (unsigned int)b;
}

/* A bucket's representative value in ms: the geometric middle of its bounds. */
static double bucket_ms(unsigned int b)
{
	if (b == 0)
		return 0.0005;
	return pow(2.0, ((double)b - 0.5) / 4.0) / 1000.0;
}

/* The latency at rank want (1-based, capped to n) of a side's histogram: NAN when empty. */
static double rank_ms(const struct side *s, uint64_t want)
{
	uint64_t seen = 0;
	unsigned int b;

	for (b = 0; b < QUERYSTATS_BUCKETS; b++) {
		seen += s->hist[b];
		if (seen >= want)
			return bucket_ms(b);
	}
	return seen ? bucket_ms(QUERYSTATS_BUCKETS - 1) : NAN;
}

static uint64_t side_count(const struct side *s)
{
	uint64_t n = 0;
	unsigned int b;

	for (b = 0; b < QUERYSTATS_BUCKETS; b++)
		n += s->hist[b];
	return n;
}

static double quantile_ms(const struct side *s, double q)
{
	uint64_t n = side_count(s), want;

	if (!n)
		return NAN;
	want = (uint64_t)ceil(q * (double)n);
	return rank_ms(s, want < 1 ? 1 : want);
}

/*
 * The p99 a verdict compares: the p99 when at least TAIL_CALLS calls lie at or above it,
 * else the TAIL_CALLS-th slowest call. Under 300 calls a plain p99 is the slowest one or
 * two, and one stall of the host (a 2-core machine running both clusters and the agent)
 * would make a statement regress on an identical mirror.
 */
#define TAIL_CALLS 3

static double verdict_p99_ms(const struct side *s)
{
	uint64_t n = side_count(s), want;

	if (!n)
		return NAN;
	want = (uint64_t)ceil(0.99 * (double)n);
	if (n >= TAIL_CALLS && want > n - TAIL_CALLS + 1)
		want = n - TAIL_CALLS + 1;
	return rank_ms(s, want < 1 ? 1 : want);
}

static void count_class(struct side *s, const char *sqlstate)
{
	char cls[3] = "";
	int i;

	if (sqlstate && sqlstate[0] && sqlstate[1]) {
		cls[0] = sqlstate[0];
		cls[1] = sqlstate[1];
	}
	for (i = 0; cls[0] && i < QUERYSTATS_CLASSES; i++) {
		if (!s->classes[i].n) {
			memcpy(s->classes[i].cls, cls, sizeof(cls));
			s->classes[i].n = 1;
			return;
		}
		if (!strcmp(s->classes[i].cls, cls)) {
			s->classes[i].n++;
			return;
		}
	}
	s->classes[QUERYSTATS_CLASSES].n++; /* other (cls stays "") */
}

static void unlink_entry(struct querystats *qs, uint32_t idx)
{
	uint32_t *p = &qs->heads[qs->e[idx].key & qs->mask];

	while (*p != NONE && *p != idx)
		p = &qs->e[*p].next;
	if (*p == idx)
		*p = qs->e[idx].next;
}

static bool entry_regressed(const struct querystats *qs, const struct entry *e);

/* A free slot: the next unused one, or the least used of a sample (evicted). */
static uint32_t take_slot(struct querystats *qs)
{
	uint32_t i, idx, best = NONE;
	bool best_reg = true;

	if (qs->used < qs->cfg.max_entries)
		return qs->used++;
	for (i = 0; i < QUERYSTATS_EVICT_SAMPLE && i < qs->cfg.max_entries; i++) {
		bool reg;

		idx = qs->cursor;
		qs->cursor = (qs->cursor + 1) % qs->cfg.max_entries;
		reg = entry_regressed(qs, &qs->e[idx]) != 0;
		if (best == NONE || (best_reg && !reg) ||
		    (reg == best_reg && qs->e[idx].src.calls < qs->e[best].src.calls)) {
			best = idx;
			best_reg = reg;
		}
	}
	unlink_entry(qs, best);
	qs->evictions++;
	return best;
}

/* Copies src into out (cap bytes) cut at a UTF-8 character boundary, marked "...". */
static void cut_text(const char *src, char *out, size_t cap)
{
	size_t n = strlen(src);

	if (n < cap) {
		memcpy(out, src, n + 1);
		return;
	}
	n = cap - 4;
	while (n > 0 && ((unsigned char)src[n] & 0xc0) == 0x80)
		n--;
	memcpy(out, src, n);
	memcpy(out + n, "...", 4);
}

static struct entry *find_or_add(struct querystats *qs, const struct querystats_obs *o)
{
	char db[QUERYSTATS_DB_MAX], norm[QUERYSTATS_TEXT_MAX * 4];
	uint64_t key;
	uint32_t idx;
	struct entry *e;

	snprintf(db, sizeof(db), "%s", o->database ? o->database : "");
	key = key_of(db, o->fingerprint);
	for (idx = qs->heads[key & qs->mask]; idx != NONE; idx = qs->e[idx].next)
		if (qs->e[idx].key == key && qs->e[idx].fingerprint == o->fingerprint &&
		    !strcmp(qs->e[idx].database, db))
			return &qs->e[idx];
	idx = take_slot(qs);
	e = &qs->e[idx];
	memset(e, 0, sizeof(*e));
	e->used = true;
	e->key = key;
	e->fingerprint = o->fingerprint;
	memcpy(e->database, db, sizeof(db));
	if (!o->fingerprint)
		snprintf(e->text, sizeof(e->text), "(statements that did not parse)");
	else if (o->text && qs->normalize && qs->normalize(o->text, norm, sizeof(norm)))
		cut_text(norm, e->text, QUERYSTATS_TEXT_MAX + 4);
	else
		snprintf(e->text, sizeof(e->text), "(text not known)");
	e->next = qs->heads[key & qs->mask];
	qs->heads[key & qs->mask] = idx;
	return e;
}

void querystats_record(struct querystats *qs, const struct querystats_obs *o)
{
	struct entry *e;
	unsigned int k;

	if (!qs || !o)
		return;
	e = find_or_add(qs, o);
	if (!o->fingerprint)
		qs->unparsed_calls++;
	e->src.calls++;
	e->src.hist[bucket_of(o->source_ns)]++;
	if (o->source_error) {
		e->src.errors++;
		count_class(&e->src, o->source_sqlstate);
	}
	if (o->mirror_answered) {
		e->mir.calls++;
		e->mir.hist[bucket_of(o->mirror_ns)]++;
		e->extra_ns += (int64_t)o->mirror_ns - (int64_t)o->source_ns;
		if (o->mirror_error) {
			e->mir.errors++;
			count_class(&e->mir, o->mirror_sqlstate);
		}
	}
	if (o->mirror_only) {
		e->mirror_only++;
		snprintf(e->mirror_only_sqlstate, sizeof(e->mirror_only_sqlstate), "%s",
			 o->mirror_sqlstate ? o->mirror_sqlstate : "");
	}
	for (k = 0; k < QUERYSTATS_KINDS; k++)
		if (o->mismatch_kinds & (1u << k))
			e->mismatches[k]++;
}

static const struct plan_slot *plan_find(const struct querystats *qs, const char *database,
					 uint64_t fingerprint)
{
	int i;

	for (i = 0; i < QUERYSTATS_PLANS; i++)
		if (qs->plans[i].seq && qs->plans[i].fingerprint == fingerprint &&
		    !strcmp(qs->plans[i].database, database))
			return &qs->plans[i];
	return NULL;
}

void querystats_set_plan(struct querystats *qs, const char *database, uint64_t fingerprint,
			 const char *plan)
{
	struct plan_slot *s;
	int i;

	if (!qs || !database || !plan)
		return;
	s = (struct plan_slot *)plan_find(qs, database, fingerprint);
	if (!s) { /* an empty slot (seq 0), else the oldest */
		s = &qs->plans[0];
		for (i = 1; i < QUERYSTATS_PLANS; i++)
			if (qs->plans[i].seq < s->seq)
				s = &qs->plans[i];
	}
	snprintf(s->database, sizeof(s->database), "%s", database);
	s->fingerprint = fingerprint;
	s->seq = ++qs->plan_seq;
	snprintf(s->text, sizeof(s->text), "%s", plan);
}

bool querystats_has_plan(const struct querystats *qs, const char *database, uint64_t fingerprint)
{
	return qs && database && plan_find(qs, database, fingerprint);
}

static void fill_row(const struct querystats *qs, const struct entry *e, struct querystats_row *r)
{
	const struct plan_slot *plan;
	const struct querystats_config *c = &qs->cfg;
	double calls;
	int k;

	memset(r, 0, sizeof(*r));
	memcpy(r->database, e->database, sizeof(r->database));
	memcpy(r->text, e->text, sizeof(r->text));
	r->fingerprint = e->fingerprint;
	r->source_calls = e->src.calls;
	r->mirror_calls = e->mir.calls;
	r->source_errors = e->src.errors;
	r->mirror_errors = e->mir.errors;
	r->mirror_only_errors = e->mirror_only;
	memcpy(r->source_classes, e->src.classes, sizeof(r->source_classes));
	memcpy(r->mirror_classes, e->mir.classes, sizeof(r->mirror_classes));
	memcpy(r->mirror_only_sqlstate, e->mirror_only_sqlstate, sizeof(r->mirror_only_sqlstate));
	memcpy(r->mismatches, e->mismatches, sizeof(r->mismatches));
	r->source_p50_ms = quantile_ms(&e->src, 0.50);
	r->source_p95_ms = quantile_ms(&e->src, 0.95);
	r->source_p99_ms = quantile_ms(&e->src, 0.99);
	r->mirror_p50_ms = quantile_ms(&e->mir, 0.50);
	r->mirror_p95_ms = quantile_ms(&e->mir, 0.95);
	r->mirror_p99_ms = quantile_ms(&e->mir, 0.99);
	r->p99_ratio = r->source_p99_ms > 0 ? r->mirror_p99_ms / r->source_p99_ms : NAN;
	calls = (double)e->mir.calls;
	r->extra_ms = calls > 0 ? (double)e->extra_ns / calls / 1e6 : NAN;
	r->impact_ms = calls > 0 && e->extra_ns > 0 ? (double)e->extra_ns / 1e6 : 0;
	if (e->mir.calls >= c->min_calls && e->mir.calls > 0) {
		double m = verdict_p99_ms(&e->mir), s = verdict_p99_ms(&e->src);

		if (m > c->max_p99_ratio * s && m - s > c->latency_floor_ms)
			r->regressed |= QUERYSTATS_SLOWER;
	}
	if (e->mirror_only)
		r->regressed |= QUERYSTATS_FAILS;
	for (k = 0; k < QUERYSTATS_KINDS; k++)
		if (e->mismatches[k])
			r->regressed |= QUERYSTATS_MISMATCH;
	plan = plan_find(qs, e->database, e->fingerprint);
	if (plan)
		memcpy(r->plan, plan->text, sizeof(r->plan));
}

static bool entry_regressed(const struct querystats *qs, const struct entry *e)
{
	struct querystats_row r;

	fill_row(qs, e, &r);
	return r.regressed != 0;
}

bool querystats_sort_parse(const char *s, enum querystats_sort *out)
{
	static const char *const names[] = {"impact", "calls", "ratio", "errors"};
	size_t i;

	for (i = 0; s && i < sizeof(names) / sizeof(names[0]); i++)
		if (!strcmp(s, names[i])) {
			*out = (enum querystats_sort)i;
			return true;
		}
	return false;
}

static double or_zero(double v)
{
	return isnan(v) ? 0 : v;
}

static int cmp3(double a, double b)
{
	return a > b ? -1 : a < b ? 1 : 0; /* descending */
}

static int row_cmp(const void *pa, const void *pb, void *arg)
{
	const struct querystats_row *a = pa, *b = pb;
	enum querystats_sort sort = *(const enum querystats_sort *)arg;
	int c = 0;

	switch (sort) {
	case QUERYSTATS_SORT_IMPACT:
		c = cmp3(a->regressed != 0, b->regressed != 0);
		if (!c)
			c = cmp3(a->impact_ms, b->impact_ms);
		if (!c)
			c = cmp3((double)(a->mirror_only_errors + querystats_row_mismatched(a)),
				 (double)(b->mirror_only_errors + querystats_row_mismatched(b)));
		break;
	case QUERYSTATS_SORT_RATIO:
		c = cmp3(or_zero(a->p99_ratio), or_zero(b->p99_ratio));
		break;
	case QUERYSTATS_SORT_ERRORS:
		c = cmp3((double)(a->mirror_only_errors + a->mirror_errors),
			 (double)(b->mirror_only_errors + b->mirror_errors));
		break;
	case QUERYSTATS_SORT_CALLS:
		break;
	}
	if (!c)
		c = cmp3((double)a->source_calls, (double)b->source_calls);
	if (!c)
		c = strcmp(a->database, b->database);
	if (!c)
		c = a->fingerprint < b->fingerprint ? -1 : a->fingerprint > b->fingerprint;
	return c;
}

size_t querystats_rows(const struct querystats *qs, const char *database, enum querystats_sort sort,
		       struct querystats_row *out, size_t cap)
{
	struct querystats_row *all;
	size_t n = 0, i;

	if (!qs)
		return 0;
	all = malloc((qs->used ? qs->used : 1) * sizeof(*all));
	if (!all)
		return 0;
	for (i = 0; i < qs->used; i++) {
		const struct entry *e = &qs->e[i];

		if (!e->used || (database && strcmp(database, e->database)))
			continue;
		fill_row(qs, e, &all[n++]);
	}
	qsort_r(all, n, sizeof(*all), row_cmp, &sort);
	if (out && cap)
		memcpy(out, all, (n < cap ? n : cap) * sizeof(*out));
	free(all);
	return n;
}

uint64_t querystats_regressed(const struct querystats *qs, const char *database)
{
	uint64_t n = 0;
	uint32_t i;

	for (i = 0; qs && i < qs->used; i++)
		if (qs->e[i].used && (!database || !strcmp(database, qs->e[i].database)) &&
		    entry_regressed(qs, &qs->e[i]))
			n++;
	return n;
}

size_t querystats_regressed_by_db(const struct querystats *qs, char (*names)[QUERYSTATS_DB_MAX],
				  uint64_t *counts, size_t cap)
{
	size_t n = 0, j;
	uint32_t i;

	for (i = 0; qs && i < qs->used; i++) {
		const struct entry *e = &qs->e[i];

		if (!e->used)
			continue;
		for (j = 0; j < n && j < cap && strcmp(names[j], e->database); j++)
			;
		if (j == n) {
			n++;
			if (j >= cap)
				continue; /* counted, not kept */
			memcpy(names[j], e->database, QUERYSTATS_DB_MAX);
			counts[j] = 0;
		}
		if (j < cap && entry_regressed(qs, e))
			counts[j]++;
	}
	return n;
}

void querystats_set_thresholds(struct querystats *qs, const struct querystats_config *th)
{
	if (!qs || !th)
		return;
	qs->cfg.min_calls = th->min_calls;
	qs->cfg.max_p99_ratio = th->max_p99_ratio;
	qs->cfg.latency_floor_ms = th->latency_floor_ms;
}

void querystats_counts(const struct querystats *qs, struct querystats_counts *out)
{
	memset(out, 0, sizeof(*out));
	if (!qs)
		return;
	out->entries = qs->used;
	out->evictions = qs->evictions;
	out->unparsed_calls = qs->unparsed_calls;
}

uint64_t querystats_row_mismatched(const struct querystats_row *r)
{
	uint64_t n = 0;
	int k;

	for (k = 0; k < QUERYSTATS_KINDS; k++)
		n += r->mismatches[k];
	return n;
}

void querystats_classes_text(const struct querystats_class *c, char *out, size_t cap)
{
	size_t len = 0;
	int i;

	out[0] = '\0';
	for (i = 0; i <= QUERYSTATS_CLASSES && len < cap; i++) {
		if (!c[i].n)
			continue;
		len +=
		    (size_t)snprintf(out + len, cap - len, "%s%s:%llu", len ? " " : "",
				     c[i].cls[0] ? c[i].cls : "other", (unsigned long long)c[i].n);
	}
}

static bool add_num(cJSON *o, const char *name, double v)
{
	return isnan(v) ? cJSON_AddNullToObject(o, name) != NULL
			: cJSON_AddNumberToObject(o, name, v) != NULL;
}

static cJSON *classes_json(const struct querystats_class *c)
{
	cJSON *o = cJSON_CreateObject();
	int i;

	for (i = 0; o && i <= QUERYSTATS_CLASSES; i++)
		if (c[i].n &&
		    !cJSON_AddNumberToObject(o, c[i].cls[0] ? c[i].cls : "other", (double)c[i].n)) {
			cJSON_Delete(o);
			return NULL;
		}
	return o;
}

static cJSON *side_json(uint64_t calls, uint64_t errors, const struct querystats_class *c,
			double p50, double p95, double p99)
{
	cJSON *o = cJSON_CreateObject(), *cl = classes_json(c);
	bool ok = o && cl;

	if (ok)
		cJSON_AddItemToObject(o, "errors_by_class", cl);
	else
		cJSON_Delete(cl);
	ok = ok && add_num(o, "calls", (double)calls) && add_num(o, "errors", (double)errors) &&
	     add_num(o, "p50_ms", p50) && add_num(o, "p95_ms", p95) && add_num(o, "p99_ms", p99);
	if (!ok) {
		cJSON_Delete(o);
		return NULL;
	}
	return o;
}

static cJSON *row_json(const struct querystats_row *r, const char *const *kind_names)
{
	static const char *const why[] = {"slower", "fails_on_mirror", "mismatch"};
	cJSON *o = cJSON_CreateObject(), *src, *mir, *mm, *reg;
	char fp[17];
	bool ok;
	int k;

	if (!o)
		return NULL;
	snprintf(fp, sizeof(fp), "%016llx", (unsigned long long)r->fingerprint);
	src = side_json(r->source_calls, r->source_errors, r->source_classes, r->source_p50_ms,
			r->source_p95_ms, r->source_p99_ms);
	mir = side_json(r->mirror_calls, r->mirror_errors, r->mirror_classes, r->mirror_p50_ms,
			r->mirror_p95_ms, r->mirror_p99_ms);
	mm = cJSON_CreateObject();
	reg = cJSON_CreateArray();
	ok = src && mir && mm && reg;
	for (k = 0; ok && k < QUERYSTATS_KINDS; k++)
		ok = cJSON_AddNumberToObject(mm, kind_names[k], (double)r->mismatches[k]) != NULL;
	for (k = 0; ok && k < 3; k++)
		if (r->regressed & (1u << k))
			ok = cJSON_AddItemToArray(reg, cJSON_CreateString(why[k]));
	if (!ok) {
		cJSON_Delete(src);
		cJSON_Delete(mir);
		cJSON_Delete(mm);
		cJSON_Delete(reg);
		cJSON_Delete(o);
		return NULL;
	}
	cJSON_AddItemToObject(o, "source", src);
	cJSON_AddItemToObject(o, "mirror", mir);
	cJSON_AddItemToObject(o, "mismatches", mm);
	cJSON_AddItemToObject(o, "regressed", reg);
	ok = cJSON_AddStringToObject(o, "database", r->database) &&
	     cJSON_AddStringToObject(o, "fingerprint", r->fingerprint ? fp : "") &&
	     cJSON_AddBoolToObject(o, "parsed", r->fingerprint != 0) &&
	     cJSON_AddStringToObject(o, "query", r->text) &&
	     add_num(o, "mirror_only_errors", (double)r->mirror_only_errors) &&
	     cJSON_AddStringToObject(o, "mirror_only_sqlstate", r->mirror_only_sqlstate) &&
	     (r->plan[0] ? cJSON_AddStringToObject(o, "mirror_plan", r->plan)
			 : cJSON_AddNullToObject(o, "mirror_plan")) &&
	     add_num(o, "p99_ratio", r->p99_ratio) && add_num(o, "extra_ms", r->extra_ms) &&
	     add_num(o, "impact_ms", r->impact_ms);
	if (!ok) {
		cJSON_Delete(o);
		return NULL;
	}
	return o;
}

bool querystats_render_json(const struct querystats_row *rows, size_t n, size_t matching,
			    const char *database, enum querystats_sort sort,
			    const char *const *kind_names, struct buf *out)
{
	static const char *const sorts[] = {"impact", "calls", "ratio", "errors"};
	cJSON *root = cJSON_CreateObject(), *arr = cJSON_CreateArray(), *o;
	char *text;
	bool ok = root && arr;
	size_t i;

	if (ok)
		cJSON_AddItemToObject(root, "statements", arr);
	else
		cJSON_Delete(arr);
	ok = ok && cJSON_AddStringToObject(root, "sort", sorts[sort]) &&
	     (database ? cJSON_AddStringToObject(root, "database", database)
		       : cJSON_AddNullToObject(root, "database")) &&
	     cJSON_AddNumberToObject(root, "matching", (double)matching) &&
	     cJSON_AddStringToObject(root, "source_covers", "mirrored requests");
	for (i = 0; ok && i < n; i++) {
		o = row_json(&rows[i], kind_names);
		ok = o && cJSON_AddItemToArray(arr, o);
	}
	text = ok ? cJSON_PrintUnformatted(root) : NULL;
	cJSON_Delete(root);
	if (!text)
		return false;
	ok = buf_append(out, text, strlen(text)) && buf_append(out, "\n", 1);
	cJSON_free(text);
	return ok;
}
