// SPDX-License-Identifier: BSD-2-Clause
/*
 * fleet.h — the readiness of a fleet of agents, judged from Prometheus
 * (`pgshadow readiness --prometheus URL --hosts H1,H2,...`). Pure: main.c asks
 * Prometheus's /api/v1/query for `up` and `mirror_readiness_ready` and hands the answers
 * here.
 *
 * The fleet is READY only when every expected host is: its target is up (up == 1) and
 * its agent says READY (mirror_readiness_ready == 1). A host with no series (never
 * scraped, or stale: Prometheus drops a target's series at the first failed scrape) is
 * absent; one whose scrape fails is down; either counts as NOT READY. Hosts are matched
 * on the `instance` label, as written in the scrape configuration (host:port).
 */
#ifndef PGSHADOW_FLEET_H
#define PGSHADOW_FLEET_H

#include <stdbool.h>
#include <stddef.h>

#include "buf.h"

#define FLEET_HOSTS_MAX	   1000
#define FLEET_INSTANCE_MAX 256

enum fleet_state {
	FLEET_READY = 0,
	FLEET_NOT_READY, /* up, and its agent says NOT READY */
	FLEET_DOWN,	 /* its last scrape failed (up == 0) */
	FLEET_ABSENT,	 /* no series: never scraped, or stale */
};

struct fleet_sample {
	char instance[FLEET_INSTANCE_MAX];
	double value;
};

struct fleet_host {
	const char *instance; /* the expected host, as given */
	enum fleet_state state;
};

/* Reads a Prometheus instant-query answer (resultType vector) into out (at most cap
 * samples; the largest value of each instance). Returns how many, or -1 with err. */
int fleet_vector(const char *json, struct fleet_sample *out, size_t cap, char *err, size_t errlen);

/* Judges each expected host; true when the fleet is READY (every one of them is). */
bool fleet_decide(const char *const *hosts, size_t n_hosts, const struct fleet_sample *up,
		  size_t n_up, const struct fleet_sample *ready, size_t n_ready,
		  struct fleet_host *out);

/* One line per host ("10.0.0.5:9930  READY", "...  NOT READY (down: its scrape fails)"),
 * then "Fleet: READY (3 of 3 hosts)". False when out refused to grow. */
bool fleet_render_text(const struct fleet_host *h, size_t n, bool ready, struct buf *out);

#endif /* PGSHADOW_FLEET_H */
