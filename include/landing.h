// SPDX-License-Identifier: BSD-2-Clause
/*
 * landing.h — the HTML page GET / answers (like node_exporter's): the version, what is
 * captured, the readiness status and score, links to /metrics, /readiness and
 * /readiness?format=json. Pure: the shell (http.c) fills struct landing through main.c's
 * provider and serves what landing_render writes.
 */
#ifndef PGSHADOW_LANDING_H
#define PGSHADOW_LANDING_H

#include <stdbool.h>
#include <stdint.h>

#include "buf.h"

struct landing {
	const char *version;  /* mirror_build_info{version} */
	const char *captured; /* "port 5432 on lo,eth0 (tcx)" */
	const char *mirror;   /* "host=… port=…" with the password blanked, or NULL */
	bool has_readiness;   /* --mirror: the fields below are set */
	bool has_queries;     /* /queries answers (--mirror, max_query_stats > 0) */
	bool ready;
	double score; /* 0-100 */
	const char *recommendation;
	uint64_t requests; /* the source's requests so far */
};

/* Appends the page (a complete HTML5 document, every text escaped) to out. Returns
 * false when out refused to grow. */
bool landing_render(const struct landing *l, struct buf *out);

#endif /* PGSHADOW_LANDING_H */
