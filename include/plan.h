/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * plan: a one-line summary of a PostgreSQL EXPLAIN (FORMAT JSON) answer (pure). It keeps
 * what tells an operator why a statement is slow — each node's type, the relation and
 * index it reads, its estimated rows and total cost — and nothing that could print a
 * parameter: no condition, filter, sort key, output list or join clause is ever read.
 *
 * Nodes are written depth first, separated by "; ", a child prefixed with one ">" per
 * level: "Nested Loop rows=5 cost=40.1; >Seq Scan on a rows=5 cost=1.05; >Index Scan
 * using b_pkey on b rows=1 cost=7.01". When longer than cap - 1 bytes it ends with "..."
 * after the last piece (a name, an estimate) that fits.
 */
#ifndef PGSHADOW_PLAN_H
#define PGSHADOW_PLAN_H

#include <stdbool.h>
#include <stddef.h>

#define PLAN_SUMMARY_MAX 240 /* bytes kept of a summary, NUL included */

/* false when json is not an EXPLAIN (FORMAT JSON) answer ([{"Plan": {...}}]). */
bool plan_summarize(const char *json, char *out, size_t cap);

#endif /* PGSHADOW_PLAN_H */
