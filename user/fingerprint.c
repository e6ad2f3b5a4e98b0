// SPDX-License-Identifier: BSD-2-Clause
/* fingerprint.c — libpg_query fingerprints and read/write classification, cached. */
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <pg_query.h>
#include <pg_query/pg_query.pb-c.h>
#include <xxhash.h>

#include "fingerprint.h"

#define WAYS 4 /* entries per cache set; the least recently used one is replaced */

struct entry {
	uint64_t hash; /* XXH3 of the text; 0 = empty slot */
	uint32_t len;
	uint64_t used; /* cache clock at last use */
	struct fingerprint_info info;
};

struct fingerprint_cache {
	struct entry *sets; /* n_sets * WAYS */
	uint32_t n_sets;    /* a power of two */
	uint64_t clock;
	struct fingerprint_stats stats;
};

static bool node_is_read(const PgQuery__Node *n);

static bool select_is_read(const PgQuery__SelectStmt *s)
{
	size_t i;

	if (!s || s->into_clause || s->n_locking_clause)
		return false;
	if (s->with_clause) {
		for (i = 0; i < s->with_clause->n_ctes; i++) {
			const PgQuery__Node *cte = s->with_clause->ctes[i];

			if (cte->node_case != PG_QUERY__NODE__NODE_COMMON_TABLE_EXPR ||
			    !node_is_read(cte->common_table_expr->ctequery))
				return false; /* WITH x AS (DELETE ... RETURNING ...) writes */
		}
	}
	if (s->op != PG_QUERY__SET_OPERATION__SETOP_NONE &&
	    s->op != PG_QUERY__SET_OPERATION__SET_OPERATION_UNDEFINED)
		return select_is_read(s->larg) && select_is_read(s->rarg);
	return true;
}

/* EXPLAIN's ANALYZE option: absent → false; bare or true-ish → true. */
static bool explain_analyzes(const PgQuery__ExplainStmt *e)
{
	size_t i;

	for (i = 0; i < e->n_options; i++) {
		const PgQuery__Node *o = e->options[i];
		const PgQuery__Node *arg;

		if (o->node_case != PG_QUERY__NODE__NODE_DEF_ELEM ||
		    strcasecmp(o->def_elem->defname, "analyze"))
			continue;
		arg = o->def_elem->arg;
		if (!arg)
			return true;
		if (arg->node_case == PG_QUERY__NODE__NODE_BOOLEAN)
			return arg->boolean->boolval;
		if (arg->node_case == PG_QUERY__NODE__NODE_INTEGER)
			return arg->integer->ival != 0;
		if (arg->node_case == PG_QUERY__NODE__NODE_STRING)
			return strcasecmp(arg->string->sval, "false") &&
			       strcasecmp(arg->string->sval, "off") &&
			       strcasecmp(arg->string->sval, "0") &&
			       strcasecmp(arg->string->sval, "no");
		return true; /* unknown form: assume it executes */
	}
	return false;
}

static bool node_is_read(const PgQuery__Node *n)
{
	if (!n)
		return false;
	switch (n->node_case) {
	case PG_QUERY__NODE__NODE_SELECT_STMT:
		return select_is_read(n->select_stmt);
	case PG_QUERY__NODE__NODE_VARIABLE_SHOW_STMT:
		return true;
	case PG_QUERY__NODE__NODE_EXPLAIN_STMT:
		return !explain_analyzes(n->explain_stmt);
	default:
		return false;
	}
}

/* Parses text and classifies each statement. Returns false when it does not parse. */
static bool classify(const char *text, bool *read_only, uint16_t *statements)
{
	PgQueryProtobufParseResult r = pg_query_parse_protobuf(text);
	PgQuery__ParseResult *tree = NULL;
	bool ok = false;
	size_t i;

	*read_only = false;
	*statements = 0;
	if (r.error)
		goto out;
	tree = pg_query__parse_result__unpack(NULL, r.parse_tree.len,
					      (const uint8_t *)r.parse_tree.data);
	if (!tree)
		goto out;
	ok = true;
	*read_only = true;
	*statements = tree->n_stmts > UINT16_MAX ? UINT16_MAX : tree->n_stmts;
	for (i = 0; i < tree->n_stmts; i++)
		if (!tree->stmts[i]->stmt || !node_is_read(tree->stmts[i]->stmt))
			*read_only = false;
out:
	if (tree)
		pg_query__parse_result__free_unpacked(tree, NULL);
	pg_query_free_protobuf_parse_result(r);
	return ok;
}

void fingerprint_compute(const char *text, struct fingerprint_info *out)
{
	PgQueryFingerprintResult fp;

	memset(out, 0, sizeof(*out));
	out->parsed = classify(text, &out->read_only, &out->statements);
	if (!out->parsed)
		return;
	fp = pg_query_fingerprint(text);
	if (!fp.error)
		out->fingerprint = fp.fingerprint;
	pg_query_free_fingerprint_result(fp);
}

struct fingerprint_cache *fingerprint_cache_new(uint32_t max_entries)
{
	struct fingerprint_cache *c;
	uint32_t sets = 1;

	if (!max_entries) {
		errno = EINVAL;
		return NULL;
	}
	while (sets * WAYS < max_entries)
		sets *= 2;
	c = calloc(1, sizeof(*c));
	if (!c)
		return NULL;
	c->n_sets = sets;
	c->sets = calloc((size_t)sets * WAYS, sizeof(*c->sets));
	if (!c->sets) {
		free(c);
		return NULL;
	}
	return c;
}

void fingerprint_lookup(struct fingerprint_cache *c, const char *text, size_t len,
			struct fingerprint_info *out)
{
	uint64_t h = XXH3_64bits(text, len) | 1; /* never 0: 0 marks an empty slot */
	struct entry *set = &c->sets[(h >> 1 & (c->n_sets - 1)) * WAYS], *victim = set;
	char *copy;
	int i;

	c->clock++;
	for (i = 0; i < WAYS; i++) {
		if (set[i].hash == h && set[i].len == len) {
			set[i].used = c->clock;
			c->stats.hits++;
			*out = set[i].info;
			return;
		}
		if (set[i].used < victim->used)
			victim = &set[i];
	}
	c->stats.misses++;
	copy = malloc(len + 1); /* libpg_query wants a NUL-terminated string */
	if (!copy) {
		memset(out, 0, sizeof(*out));
		return;
	}
	memcpy(copy, text, len);
	copy[len] = '\0';
	fingerprint_compute(copy, out);
	free(copy);
	if (!out->parsed)
		c->stats.parse_errors++;
	if (victim->hash)
		c->stats.evictions++;
	victim->hash = h;
	victim->len = len;
	victim->used = c->clock;
	victim->info = *out;
}

const struct fingerprint_stats *fingerprint_cache_stats(const struct fingerprint_cache *c)
{
	return &c->stats;
}

void fingerprint_cache_free(struct fingerprint_cache *c)
{
	if (!c)
		return;
	free(c->sets);
	free(c);
}
