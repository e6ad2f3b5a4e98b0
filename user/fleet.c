// SPDX-License-Identifier: BSD-2-Clause
/* fleet.c — a fleet's readiness from Prometheus's answers. See include/fleet.h. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "fleet.h"

int fleet_vector(const char *json, struct fleet_sample *out, size_t cap, char *err, size_t errlen)
{
	cJSON *root = cJSON_Parse(json), *data, *result, *item, *metric, *inst, *value, *v;
	const char *status;
	size_t n = 0, i;
	double d;
	char *end;

	if (!root) {
		snprintf(err, errlen, "not JSON");
		return -1;
	}
	status = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(root, "status"));
	if (!status || strcmp(status, "success")) {
		const char *e =
		    cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(root, "error"));

		snprintf(err, errlen, "Prometheus answered %s%s%s", status ? status : "no status",
			 e ? ": " : "", e ? e : "");
		goto fail;
	}
	data = cJSON_GetObjectItemCaseSensitive(root, "data");
	result = cJSON_GetObjectItemCaseSensitive(data, "result");
	if (!cJSON_IsArray(result) ||
	    strcmp(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(data, "resultType")) ?: "",
		   "vector")) {
		snprintf(err, errlen, "not an instant vector");
		goto fail;
	}
	cJSON_ArrayForEach(item, result)
	{
		metric = cJSON_GetObjectItemCaseSensitive(item, "metric");
		inst = cJSON_GetObjectItemCaseSensitive(metric, "instance");
		value = cJSON_GetObjectItemCaseSensitive(item, "value");
		v = cJSON_GetArrayItem(value, 1);
		if (!cJSON_IsString(inst) || !cJSON_IsString(v)) {
			snprintf(err, errlen, "a sample without instance or value");
			goto fail;
		}
		d = strtod(v->valuestring, &end);
		if (*end) {
			snprintf(err, errlen, "value %s is not a number", v->valuestring);
			goto fail;
		}
		for (i = 0; i < n && strcmp(out[i].instance, inst->valuestring); i++)
			;
		if (i < n) { /* several series of one instance: the largest */
			if (d > out[i].value)
				out[i].value = d;
			continue;
		}
		if (n == cap || strlen(inst->valuestring) >= FLEET_INSTANCE_MAX) {
			snprintf(err, errlen, "more than %zu instances, or an instance too long",
				 cap);
			goto fail;
		}
		snprintf(out[n].instance, FLEET_INSTANCE_MAX, "%s", inst->valuestring);
		out[n++].value = d;
	}
	cJSON_Delete(root);
	return (int)n;
fail:
	cJSON_Delete(root);
	return -1;
}

static const struct fleet_sample *find(const struct fleet_sample *s, size_t n, const char *inst)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (!strcmp(s[i].instance, inst))
			return &s[i];
	return NULL;
}

bool fleet_decide(const char *const *hosts, size_t n_hosts, const struct fleet_sample *up,
		  size_t n_up, const struct fleet_sample *ready, size_t n_ready,
		  struct fleet_host *out)
{
	const struct fleet_sample *u, *r;
	bool all = n_hosts > 0;
	size_t i;

	for (i = 0; i < n_hosts; i++) {
		u = find(up, n_up, hosts[i]);
		r = find(ready, n_ready, hosts[i]);
		out[i].instance = hosts[i];
		if (!u)
			out[i].state = FLEET_ABSENT;
		else if (u->value != 1)
			out[i].state = FLEET_DOWN;
		else if (!r)
			out[i].state = FLEET_ABSENT; /* up, but no verdict (no --mirror?) */
		else
			out[i].state = r->value == 1 ? FLEET_READY : FLEET_NOT_READY;
		all &= out[i].state == FLEET_READY;
	}
	return all;
}

bool fleet_render_text(const struct fleet_host *h, size_t n, bool ready, struct buf *out)
{
	static const char *const says[] = {
	    [FLEET_READY] = "READY",
	    [FLEET_NOT_READY] = "NOT READY (its agent says so)",
	    [FLEET_DOWN] = "NOT READY (down: Prometheus cannot scrape it)",
	    [FLEET_ABSENT] = "NOT READY (absent: no verdict in Prometheus, never scraped or stale)",
	};
	size_t i, ok = 0;

	for (i = 0; i < n; i++) {
		buf_printf(out, "%s  %s\n", h[i].instance, says[h[i].state]);
		ok += h[i].state == FLEET_READY;
	}
	buf_printf(out, "Fleet: %s (%zu of %zu hosts READY)\n", ready ? "READY" : "NOT READY", ok,
		   n);
	return !out->overflow;
}
