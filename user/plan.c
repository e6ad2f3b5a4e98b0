/* SPDX-License-Identifier: BSD-2-Clause */
/* plan.c — a one-line summary of an EXPLAIN (FORMAT JSON) answer; see plan.h. */
#include <stdio.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "plan.h"

#define DEPTH_MAX 32 /* deeper nodes are left out (the summary is one line anyway) */

struct out {
	char *p;
	size_t cap, len;
	bool cut;
};

static void put(struct out *o, const char *s)
{
	size_t n = strlen(s);

	if (o->cut)
		return;
	if (o->len + n + 1 > o->cap) {
		o->cut = true;
		return;
	}
	memcpy(o->p + o->len, s, n + 1);
	o->len += n;
}

static const char *str(const cJSON *node, const char *name)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(node, name);

	return cJSON_IsString(v) ? v->valuestring : NULL;
}

static void node(struct out *o, const cJSON *n, int depth)
{
	const char *type = str(n, "Node Type"), *rel = str(n, "Relation Name");
	const char *index = str(n, "Index Name");
	const cJSON *rows = cJSON_GetObjectItemCaseSensitive(n, "Plan Rows");
	const cJSON *cost = cJSON_GetObjectItemCaseSensitive(n, "Total Cost");
	const cJSON *kids = cJSON_GetObjectItemCaseSensitive(n, "Plans"), *k;
	char num[64];
	int i;

	if (!cJSON_IsObject(n) || !type || depth > DEPTH_MAX)
		return;
	if (o->len)
		put(o, "; ");
	for (i = 0; i < depth; i++)
		put(o, ">");
	put(o, type);
	if (index) {
		put(o, " using ");
		put(o, index);
	}
	if (rel) {
		put(o, " on ");
		put(o, rel);
	}
	if (cJSON_IsNumber(rows)) {
		snprintf(num, sizeof(num), " rows=%.0f", rows->valuedouble);
		put(o, num);
	}
	if (cJSON_IsNumber(cost)) {
		snprintf(num, sizeof(num), " cost=%.2f", cost->valuedouble);
		put(o, num);
	}
	cJSON_ArrayForEach(k, kids) node(o, k, depth + 1);
}

bool plan_summarize(const char *json, char *out, size_t cap)
{
	cJSON *root;
	const cJSON *first, *plan;
	struct out o = {.p = out, .cap = cap};

	if (!out || cap < 4)
		return false;
	out[0] = '\0';
	root = json ? cJSON_Parse(json) : NULL;
	first = cJSON_IsArray(root) ? cJSON_GetArrayItem(root, 0) : NULL;
	plan = cJSON_GetObjectItemCaseSensitive(first, "Plan");
	if (!cJSON_IsObject(plan) || !str(plan, "Node Type")) {
		cJSON_Delete(root);
		return false;
	}
	o.cap = cap - 3; /* room for "..." */
	node(&o, plan, 0);
	if (o.cut)
		memcpy(out + o.len, "...", 4);
	cJSON_Delete(root);
	return true;
}
