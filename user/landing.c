// SPDX-License-Identifier: BSD-2-Clause
/* landing.c — the page GET / answers. See include/landing.h. */
#include <stdio.h>
#include <string.h>

#include "landing.h"

/* Appends s with &, <, >, " and ' escaped. */
static void esc(struct buf *b, const char *s)
{
	for (; s && *s; s++) {
		switch (*s) {
		case '&':
			buf_append(b, "&amp;", 5);
			break;
		case '<':
			buf_append(b, "&lt;", 4);
			break;
		case '>':
			buf_append(b, "&gt;", 4);
			break;
		case '"':
			buf_append(b, "&quot;", 6);
			break;
		case '\'':
			buf_append(b, "&#39;", 5);
			break;
		default:
			buf_append(b, s, 1);
		}
	}
}

static void row(struct buf *b, const char *name, const char *value)
{
	buf_printf(b, "<tr><th>%s</th><td>", name);
	esc(b, value);
	buf_printf(b, "</td></tr>\n");
}

bool landing_render(const struct landing *l, struct buf *b)
{
	char n[64];

	buf_printf(b, "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
		      "<title>pgshadow</title>\n<style>\n"
		      "body{font-family:sans-serif;margin:2em;max-width:48em}\n"
		      "th{text-align:left;padding-right:1em}\n"
		      ".ready{color:#1a7f37}.not-ready{color:#cf222e}\n"
		      "</style>\n</head>\n<body>\n<h1>pgshadow</h1>\n"
		      "<p>Passive PostgreSQL capture, metrics and mirror replay.</p>\n"
		      "<table>\n");
	row(b, "Version", l->version);
	row(b, "Capturing", l->captured);
	row(b, "Mirror", l->mirror ? l->mirror : "none (observing only)");
	snprintf(n, sizeof(n), "%llu", (unsigned long long)l->requests);
	row(b, "Requests seen", n);
	buf_printf(b, "</table>\n");
	if (l->has_readiness) {
		snprintf(n, sizeof(n), "%.1f", l->score);
		buf_printf(b,
			   "<h2>Migration readiness</h2>\n<p id=\"status\" class=\"%s\">"
			   "Status: <strong>%s</strong></p>\n<p id=\"score\">Confidence score: "
			   "<strong>%s</strong> / 100 (",
			   l->ready ? "ready" : "not-ready", l->ready ? "READY" : "NOT READY", n);
		esc(b, l->recommendation);
		buf_printf(b, ")</p>\n");
	}
	buf_printf(b, "<h2>Endpoints</h2>\n<ul>\n"
		      "<li><a href=\"/metrics\">/metrics</a>: Prometheus metrics</li>\n");
	if (l->has_readiness)
		buf_printf(b, "<li><a href=\"/readiness\">/readiness</a>: the readiness report"
			      "</li>\n<li><a href=\"/readiness?format=json\">/readiness?format=json"
			      "</a>: the same, as JSON</li>\n");
	if (l->has_queries)
		buf_printf(b, "<li><a href=\"/queries\">/queries</a>: which statements get "
			      "slower, fail or answer differently on the mirror (JSON)</li>\n");
	buf_printf(b, "<li><a href=\"/healthz\">/healthz</a>: liveness</li>\n</ul>\n"
		      "</body>\n</html>\n");
	return !b->overflow;
}
