// SPDX-License-Identifier: BSD-2-Clause
/* fingerprint.c — libpg_query fingerprints and read/write classification, cached. */
#define _GNU_SOURCE /* memmem */
#include <ctype.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/mman.h>
#include <ucontext.h>
#include <unistd.h>

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

static bool def_elem_named(PgQuery__Node *const *opts, size_t n, const char *name)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (opts[i]->node_case == PG_QUERY__NODE__NODE_DEF_ELEM &&
		    !strcasecmp(opts[i]->def_elem->defname, name))
			return true;
	return false;
}

static bool temp_relation(const PgQuery__RangeVar *rv)
{
	return rv && rv->relpersistence && rv->relpersistence[0] == 't';
}

#define CURSOR_OPT_HOLD 0x0020 /* PostgreSQL's parsenodes.h */

static enum fingerprint_txn txn_kind(const PgQuery__TransactionStmt *t)
{
	switch (t->kind) {
	case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_BEGIN:
	case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_START:
		return FINGERPRINT_TXN_BEGIN;
	case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_COMMIT:
		return FINGERPRINT_TXN_COMMIT;
	case PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_ROLLBACK:
		return FINGERPRINT_TXN_ROLLBACK;
	default:
		return FINGERPRINT_TXN_OTHER;
	}
}

/* The classes of one statement (see fingerprint.h); *txn is set for a transaction
 * statement. */
static unsigned int stmt_classes(const PgQuery__Node *n, enum fingerprint_txn *txn)
{
	switch (n->node_case) {
	case PG_QUERY__NODE__NODE_SELECT_STMT:
	case PG_QUERY__NODE__NODE_INSERT_STMT:
	case PG_QUERY__NODE__NODE_UPDATE_STMT:
	case PG_QUERY__NODE__NODE_DELETE_STMT:
	case PG_QUERY__NODE__NODE_MERGE_STMT:
	case PG_QUERY__NODE__NODE_COPY_STMT:
	case PG_QUERY__NODE__NODE_EXPLAIN_STMT:
	case PG_QUERY__NODE__NODE_CALL_STMT:
	case PG_QUERY__NODE__NODE_DO_STMT:
	case PG_QUERY__NODE__NODE_LOCK_STMT:
	case PG_QUERY__NODE__NODE_FETCH_STMT:
	case PG_QUERY__NODE__NODE_CLOSE_PORTAL_STMT:
	case PG_QUERY__NODE__NODE_EXECUTE_STMT:
	case PG_QUERY__NODE__NODE_NOTIFY_STMT:
	case PG_QUERY__NODE__NODE_VARIABLE_SHOW_STMT:
	case PG_QUERY__NODE__NODE_CONSTRAINTS_SET_STMT:
		return FINGERPRINT_DML;
	case PG_QUERY__NODE__NODE_DECLARE_CURSOR_STMT:
		return n->declare_cursor_stmt->options & CURSOR_OPT_HOLD
			   ? FINGERPRINT_DML | FINGERPRINT_SESSION
			   : FINGERPRINT_DML;
	case PG_QUERY__NODE__NODE_VARIABLE_SET_STMT:
	case PG_QUERY__NODE__NODE_PREPARE_STMT:
	case PG_QUERY__NODE__NODE_DEALLOCATE_STMT:
	case PG_QUERY__NODE__NODE_LISTEN_STMT:
	case PG_QUERY__NODE__NODE_UNLISTEN_STMT:
	case PG_QUERY__NODE__NODE_DISCARD_STMT:
	case PG_QUERY__NODE__NODE_LOAD_STMT:
		return FINGERPRINT_SESSION;
	case PG_QUERY__NODE__NODE_CREATE_STMT:
		return temp_relation(n->create_stmt->relation) ? FINGERPRINT_SESSION
							       : FINGERPRINT_DDL;
	case PG_QUERY__NODE__NODE_CREATE_TABLE_AS_STMT:
		return n->create_table_as_stmt->into &&
			       temp_relation(n->create_table_as_stmt->into->rel)
			   ? FINGERPRINT_SESSION
			   : FINGERPRINT_DDL;
	case PG_QUERY__NODE__NODE_TRANSACTION_STMT:
		*txn = txn_kind(n->transaction_stmt);
		return n->transaction_stmt->kind ==
				   PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_COMMIT_PREPARED ||
			       n->transaction_stmt->kind ==
				   PG_QUERY__TRANSACTION_STMT_KIND__TRANS_STMT_ROLLBACK_PREPARED
			   ? FINGERPRINT_TXN | FINGERPRINT_NO_TXN_BLOCK
			   : FINGERPRINT_TXN;
	case PG_QUERY__NODE__NODE_VACUUM_STMT:
		return n->vacuum_stmt->is_vacuumcmd ? FINGERPRINT_DDL | FINGERPRINT_NO_TXN_BLOCK
						    : FINGERPRINT_DDL;
	case PG_QUERY__NODE__NODE_INDEX_STMT:
		return n->index_stmt->concurrent ? FINGERPRINT_DDL | FINGERPRINT_NO_TXN_BLOCK
						 : FINGERPRINT_DDL;
	case PG_QUERY__NODE__NODE_DROP_STMT:
		return n->drop_stmt->concurrent ? FINGERPRINT_DDL | FINGERPRINT_NO_TXN_BLOCK
						: FINGERPRINT_DDL;
	case PG_QUERY__NODE__NODE_REINDEX_STMT:
		return def_elem_named(n->reindex_stmt->params, n->reindex_stmt->n_params,
				      "concurrently")
			   ? FINGERPRINT_DDL | FINGERPRINT_NO_TXN_BLOCK
			   : FINGERPRINT_DDL;
	case PG_QUERY__NODE__NODE_CLUSTER_STMT:
		return n->cluster_stmt->relation ? FINGERPRINT_DDL
						 : FINGERPRINT_DDL | FINGERPRINT_NO_TXN_BLOCK;
	case PG_QUERY__NODE__NODE_CREATEDB_STMT:
	case PG_QUERY__NODE__NODE_DROPDB_STMT:
	case PG_QUERY__NODE__NODE_CREATE_TABLE_SPACE_STMT:
	case PG_QUERY__NODE__NODE_DROP_TABLE_SPACE_STMT:
	case PG_QUERY__NODE__NODE_ALTER_SYSTEM_STMT:
	case PG_QUERY__NODE__NODE_CREATE_SUBSCRIPTION_STMT:
	case PG_QUERY__NODE__NODE_DROP_SUBSCRIPTION_STMT:
	case PG_QUERY__NODE__NODE_ALTER_SUBSCRIPTION_STMT:
		return FINGERPRINT_DDL | FINGERPRINT_NO_TXN_BLOCK;
	default:
		return FINGERPRINT_DDL; /* every other utility statement defines or alters */
	}
}

/* Whether a schema name is a temporary one: pg_temp, or pg_temp_N spelled out. */
static bool temp_schema(const char *name)
{
	return name && !strncmp(name, "pg_temp", 7);
}

/* The pool bits of one statement by itself (fingerprint.h); what is under it, at any depth
 * (temporary relations, advisory locks, set_config()), is found by the walk (message_pool).
 * SET is only read here: ALTER ROLE ... SET and a function's SET clause hold a
 * VariableSetStmt too. */
static unsigned int stmt_pool(const PgQuery__Node *n)
{
	const PgQuery__CreateFunctionStmt *cf;
	const PgQuery__VariableSetStmt *vs;

	switch (n->node_case) {
	case PG_QUERY__NODE__NODE_VARIABLE_SET_STMT:
		/* SET TRANSACTION [SNAPSHOT] and SET SESSION CHARACTERISTICS are VAR_SET_MULTI;
		 * only the last outlives the transaction (the session's defaults) */
		vs = n->variable_set_stmt;
		if (vs->is_local)
			return 0;
		if (vs->kind != PG_QUERY__VARIABLE_SET_KIND__VAR_SET_MULTI ||
		    (vs->name && !strcmp(vs->name, "SESSION CHARACTERISTICS")))
			return FINGERPRINT_POOL_SET;
		return 0;
	case PG_QUERY__NODE__NODE_DECLARE_CURSOR_STMT:
		return n->declare_cursor_stmt->options & CURSOR_OPT_HOLD ? FINGERPRINT_POOL_PIN : 0;
	case PG_QUERY__NODE__NODE_DISCARD_STMT:
		return n->discard_stmt->target == PG_QUERY__DISCARD_MODE__DISCARD_ALL
			   ? FINGERPRINT_POOL_DISCARD
			   : 0;
	case PG_QUERY__NODE__NODE_LISTEN_STMT:
	case PG_QUERY__NODE__NODE_PREPARE_STMT:
	case PG_QUERY__NODE__NODE_LOAD_STMT:
		return FINGERPRINT_POOL_PIN;
	case PG_QUERY__NODE__NODE_CREATE_FUNCTION_STMT:
		/* CREATE FUNCTION pg_temp.f(): the schema is the name before the last */
		cf = n->create_function_stmt;
		return cf->n_funcname >= 2 &&
			       cf->funcname[cf->n_funcname - 2]->node_case ==
				   PG_QUERY__NODE__NODE_STRING &&
			       temp_schema(cf->funcname[cf->n_funcname - 2]->string->sval)
			   ? FINGERPRINT_POOL_PIN
			   : 0;
	default:
		return 0;
	}
}

/*
 * Non-determinism (fingerprint.h): one generic walk over the unpacked parse tree, driven by
 * protobuf-c's descriptors so every node type is covered without listing them; the nodes
 * that matter are recognised by their descriptor. The same walk finds the pool bits that
 * can be anywhere in the tree (message_pool).
 */
/* messages under a statement; classify() unpacks no tree deeper than FINGERPRINT_MAX_DEPTH
 * (a statement is 3 levels down), so this is a second guard that is not reached */
#define NONDET_MAX_DEPTH FINGERPRINT_MAX_DEPTH

/* Functions whose result differs between two runs or two clusters, matched on the last
 * component of the name (pg_catalog.now, public.uuid_generate_v4). */
static const char *const volatile_funcs[] = {
    "now",
    "random",
    "random_normal",
    "setseed",
    "nextval",
    "currval",
    "lastval",
    "setval",
    "clock_timestamp",
    "statement_timestamp",
    "transaction_timestamp",
    "timeofday",
    "gen_random_uuid",
    "uuid_generate_v1",
    "uuid_generate_v1mc",
    "uuid_generate_v4",
    "txid_current",
    "txid_current_if_assigned",
    "txid_current_snapshot",
    "pg_current_xact_id",
    "pg_current_xact_id_if_assigned",
    "pg_current_snapshot",
    "pg_backend_pid",
    "inet_server_addr",
    "inet_server_port",
    "inet_client_addr",
    "inet_client_port",
    "pg_postmaster_start_time",
    "pg_conf_load_time",
    "pg_current_wal_lsn",
    "pg_current_wal_insert_lsn",
    "pg_current_wal_flush_lsn",
    "version",
    NULL,
};

/* Advisory locks held until unlocked or the session ends, not the transaction (pooling:
 * they pin the session to its connection); matched as volatile_funcs are. */
static const char *const session_lock_funcs[] = {
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
    NULL,
};

/* Functions that take or release an advisory lock, for the session or the transaction: a
 * statement calling one is not a read, whatever it selects (fingerprint_info.advisory). */
static const char *const advisory_lock_funcs[] = {
    "pg_advisory_lock",
    "pg_advisory_lock_shared",
    "pg_advisory_xact_lock",
    "pg_advisory_xact_lock_shared",
    "pg_try_advisory_lock",
    "pg_try_advisory_lock_shared",
    "pg_try_advisory_xact_lock",
    "pg_try_advisory_xact_lock_shared",
    NULL,
};
static const char *const advisory_unlock_funcs[] = {
    "pg_advisory_unlock",
    "pg_advisory_unlock_shared",
    "pg_advisory_unlock_all",
    NULL,
};

/* Whether the last component of f's name is one of names (NULL-terminated), in any case. */
static bool func_named(const PgQuery__FuncCall *f, const char *const *names)
{
	const PgQuery__Node *last;
	size_t i;

	if (!f->n_funcname)
		return false;
	last = f->funcname[f->n_funcname - 1];
	if (last->node_case != PG_QUERY__NODE__NODE_STRING || !last->string->sval)
		return false;
	for (i = 0; names[i]; i++)
		if (!strcasecmp(last->string->sval, names[i]))
			return true;
	return false;
}

/* Whether f is a call of set_config() (any schema, any case) that is not set_config(name,
 * value, true) with the constant true as it is written: is_local false, a parameter, a
 * column, an expression, a string ('t', 'true'::bool: literal values are not in the cache
 * key, fingerprint.h), or another number of arguments. */
static bool session_set_config(const PgQuery__FuncCall *f)
{
	static const char *const set_config[] = {"set_config", NULL};
	const PgQuery__Node *local;

	if (!func_named(f, set_config))
		return false;
	if (f->n_args != 3)
		return true;
	local = f->args[2];
	return !(local->node_case == PG_QUERY__NODE__NODE_A_CONST &&
		 local->a_const->val_case == PG_QUERY__A__CONST__VAL_BOOLVAL &&
		 local->a_const->boolval && local->a_const->boolval->boolval);
}

static bool volatile_func(const PgQuery__FuncCall *f)
{
	static const char *const age[] = {"age", NULL};

	/* age(x) with one argument counts from today (or, for an xid, from the next xid) */
	return func_named(f, volatile_funcs) || (f->n_args == 1 && func_named(f, age));
}

/*
 * Whether s[0..len) is a string PostgreSQL's date/time input reads as the current moment
 * or day: 'now', 'today', 'tomorrow' or 'yesterday' (any case, blanks around), optionally
 * followed by a time ('today 10:00'). Also used by shape() on a literal's raw text, so such
 * literals keep their value in the cache key; an E'' string that spells a word through
 * backslash escapes is seen here but not by shape(), and shares its shape's entry.
 */
static bool time_word(const char *s, size_t len)
{
	static const char *const words[] = {"now", "today", "tomorrow", "yesterday", NULL};
	size_t i = 0, j, k;

	while (i < len && isspace((unsigned char)s[i]))
		i++;
	for (j = i; j < len && isalpha((unsigned char)s[j]); j++)
		;
	for (k = j; k < len; k++)
		if (!isspace((unsigned char)s[k]) && !isdigit((unsigned char)s[k]) &&
		    !strchr(":.+-", s[k]))
			return false;
	for (k = 0; words[k]; k++)
		if (j - i == strlen(words[k]) && !strncasecmp(s + i, words[k], j - i))
			return true;
	return false;
}

/* A LIMIT or OFFSET that is there: LIMIT ALL and LIMIT NULL are a null constant. */
static bool limits(const PgQuery__Node *n)
{
	return n && !(n->node_case == PG_QUERY__NODE__NODE_A_CONST && n->a_const->isnull);
}

struct nondet_walk {
	unsigned int bits;
	unsigned int pool; /* enum fingerprint_pool bits found under the statement */
	bool locks;	   /* calls a function that takes an advisory lock */
	bool unlocks;	   /* calls one that releases one */
	/* an EXISTS subquery's SELECT: which rows its LIMIT keeps does not change the answer */
	const ProtobufCMessage *exists_select;
};

/* The bits one message contributes by itself, children aside. */
static unsigned int message_nondet(const ProtobufCMessage *m, struct nondet_walk *w)
{
	const ProtobufCMessageDescriptor *d = m->descriptor;

	if (d == &pg_query__func_call__descriptor)
		return volatile_func((const PgQuery__FuncCall *)m) ? FINGERPRINT_NONDET_VOLATILE
								   : 0;
	if (d == &pg_query__sqlvalue_function__descriptor)
		return FINGERPRINT_NONDET_VOLATILE; /* CURRENT_TIMESTAMP, CURRENT_USER, ... */
	if (d == &pg_query__a__const__descriptor) {
		const PgQuery__AConst *c = (const PgQuery__AConst *)m;

		return c->val_case == PG_QUERY__A__CONST__VAL_SVAL && c->sval->sval &&
			       time_word(c->sval->sval, strlen(c->sval->sval))
			   ? FINGERPRINT_NONDET_VOLATILE
			   : 0;
	}
	if (d == &pg_query__range_table_sample__descriptor)
		return FINGERPRINT_NONDET_TABLESAMPLE;
	if (d == &pg_query__sub_link__descriptor) {
		const PgQuery__SubLink *l = (const PgQuery__SubLink *)m;

		if (l->sub_link_type == PG_QUERY__SUB_LINK_TYPE__EXISTS_SUBLINK && l->subselect &&
		    l->subselect->node_case == PG_QUERY__NODE__NODE_SELECT_STMT)
			w->exists_select = &l->subselect->select_stmt->base;
		return 0;
	}
	if (d == &pg_query__select_stmt__descriptor) {
		const PgQuery__SelectStmt *s = (const PgQuery__SelectStmt *)m;
		bool distinct_on =
		    s->n_distinct_clause && s->distinct_clause[0] &&
		    s->distinct_clause[0]->node_case != PG_QUERY__NODE__NODE__NOT_SET;

		if (m == w->exists_select || s->n_sort_clause)
			return 0;
		return limits(s->limit_count) || limits(s->limit_offset) || distinct_on
			   ? FINGERPRINT_NONDET_ORDER
			   : 0;
	}
	return 0;
}

/* The pool bits one message contributes by itself, at any depth (fingerprint.h): a call of a
 * session-level advisory lock or of a session-level set_config(), or a temporary relation.
 * A RangeVar is persistence 't' only as what CREATE TEMP ... or SELECT ... INTO TEMP
 * creates; one in a pg_temp schema is created there or is used, and then was created in
 * this session. */
static unsigned int message_pool(const ProtobufCMessage *m)
{
	const ProtobufCMessageDescriptor *d = m->descriptor;

	if (d == &pg_query__func_call__descriptor) {
		const PgQuery__FuncCall *f = (const PgQuery__FuncCall *)m;

		return func_named(f, session_lock_funcs) || session_set_config(f)
			   ? FINGERPRINT_POOL_PIN
			   : 0;
	}
	if (d == &pg_query__range_var__descriptor) {
		const PgQuery__RangeVar *rv = (const PgQuery__RangeVar *)m;

		return temp_relation(rv) || temp_schema(rv->schemaname) ? FINGERPRINT_POOL_PIN : 0;
	}
	return 0;
}

/* The member of a oneof that is set: fields[first..end) are its members, sorted by id as
 * protobuf-c keeps every message's fields. NULL when none is. */
static const ProtobufCFieldDescriptor *
oneof_member(const ProtobufCMessageDescriptor *d, unsigned int first, unsigned int end, uint32_t id)
{
	while (id && first < end) {
		unsigned int mid = first + (end - first) / 2;

		if (d->fields[mid].id == id)
			return &d->fields[mid];
		if (d->fields[mid].id < id)
			first = mid + 1;
		else
			end = mid;
	}
	return NULL;
}

/* ORs into w->bits and w->pool what m and everything under it contribute. */
static void walk_nondet(const ProtobufCMessage *m, struct nondet_walk *w, unsigned int depth)
{
	const ProtobufCMessageDescriptor *d = m->descriptor;
	const char *base = (const char *)m;
	const ProtobufCFieldDescriptor *f;
	unsigned int i, end;
	size_t k;

	if (depth > NONDET_MAX_DEPTH) {
		w->bits |= FINGERPRINT_NONDET_UNKNOWN;
		return;
	}
	w->bits |= message_nondet(m, w);
	w->pool |= message_pool(m);
	if (m->descriptor == &pg_query__func_call__descriptor) {
		if (func_named((const PgQuery__FuncCall *)m, advisory_lock_funcs))
			w->locks = true;
		if (func_named((const PgQuery__FuncCall *)m, advisory_unlock_funcs))
			w->unlocks = true;
	}
	if (d == &pg_query__node__descriptor) {
		/* fast path: a Node is one oneof of ~250 members; finding its end by the scan
		 * below would cost more than the rest of the walk */
		f = oneof_member(d, 0, d->n_fields, ((const PgQuery__Node *)m)->node_case);
		if (f && f->type == PROTOBUF_C_TYPE_MESSAGE &&
		    f->label != PROTOBUF_C_LABEL_REPEATED &&
		    *(const ProtobufCMessage *const *)(base + f->offset))
			walk_nondet(*(const ProtobufCMessage *const *)(base + f->offset), w,
				    depth + 1);
		return;
	}
	for (i = 0; i < d->n_fields; i++) {
		f = &d->fields[i];
		if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) {
			/* a oneof's members (A_Const's val) are adjacent and share the case's
			 * offset and one pointer: only the set member may be read */
			for (end = i + 1; end < d->n_fields &&
					  (d->fields[end].flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
					  d->fields[end].quantifier_offset == f->quantifier_offset;
			     end++)
				;
			f = oneof_member(d, i, end,
					 *(const uint32_t *)(base + f->quantifier_offset));
			i = end - 1;
			if (!f)
				continue;
		}
		if (f->type != PROTOBUF_C_TYPE_MESSAGE)
			continue;
		if (f->label == PROTOBUF_C_LABEL_REPEATED) {
			size_t n = *(const size_t *)(base + f->quantifier_offset);
			const ProtobufCMessage *const *v =
			    *(const ProtobufCMessage *const *const *)(base + f->offset);

			for (k = 0; k < n; k++)
				if (v[k])
					walk_nondet(v[k], w, depth + 1);
		} else {
			const ProtobufCMessage *c =
			    *(const ProtobufCMessage *const *)(base + f->offset);

			if (c)
				walk_nondet(c, w, depth + 1);
		}
	}
}

/*
 * The protobuf wire format, read without recursion so that a parse tree's nesting is known
 * before protobuf-c unpacks it: protobuf_c_message_unpack (and free_unpacked) recurse once
 * per level of message nesting, and `SELECT 1+a+a+...` of ~4,400 terms (9 KB; two levels a
 * term) overflows an 8 MiB stack there, while libpg_query parses it. What is accepted here
 * is a superset of what protobuf-c accepts, so the depth found is never less than the depth
 * protobuf-c would recurse to (it flat-scans a message's fields before unpacking any of its
 * children, so it never enters a child of a message that does not read as one).
 */

/* A varint at b[*p..end) (10 bytes at most). Advances *p past it. */
static __attribute__((warn_unused_result)) bool wire_varint(const uint8_t *b, size_t end, size_t *p,
							    uint64_t *v)
{
	uint64_t x = 0;
	unsigned int shift;

	for (shift = 0; shift < 70 && *p < end; shift += 7) {
		uint8_t byte = b[(*p)++];

		x |= (uint64_t)(byte & 0x7f) << shift;
		if (!(byte & 0x80)) {
			*v = x;
			return true;
		}
	}
	return false;
}

/* The field at b[*p..end), *p < end: advances *p past it and sets *payload to where a
 * length-delimited field's bytes start, else to 0 (a field's bytes never start at 0: its tag
 * comes first). False when the bytes are not a field protobuf-c would read. */
static __attribute__((warn_unused_result)) bool wire_field(const uint8_t *b, size_t end, size_t *p,
							   size_t *payload)
{
	uint64_t tag, v;

	*payload = 0;
	if (!(b[*p] & 0xf8))
		return false; /* field number 0, as protobuf-c tests it: a one-byte tag 0..7 */
	if (!wire_varint(b, end, p, &tag))
		return false;
	switch (tag & 7) {
	case 0: /* varint */
		return wire_varint(b, end, p, &v);
	case 1: /* fixed64 */
	case 5: /* fixed32 */
		v = (tag & 7) == 1 ? 8 : 4;
		break;
	case 2: /* length-delimited: a string, bytes or a message */
		if (!wire_varint(b, end, p, &v))
			return false;
		*payload = *p;
		break;
	default: /* groups (3, 4), which protobuf-c rejects, and 6, 7 */
		return false;
	}
	if (v > end - *p)
		return false;
	*p += v;
	return true;
}

/* Whether b[p..end) reads completely as fields. */
static bool wire_message(const uint8_t *b, size_t p, size_t end)
{
	size_t payload;

	while (p < end)
		if (!wire_field(b, end, &p, &payload))
			return false;
	return true;
}

/* A message being read: a length-delimited field taken for a message until its bytes fail
 * to read as fields, when its parent reads it as a string after all. */
struct wire_frame {
	uint32_t end;	/* where its bytes end */
	uint32_t below; /* levels of message nesting under it so far */
};

bool fingerprint_wire_depth(const uint8_t *buf, size_t len, unsigned int max_depth,
			    unsigned int *depth)
{
	struct wire_frame st[FINGERPRINT_MAX_DEPTH]; /* 8 KiB */
	struct wire_frame *f;
	unsigned int n = 1; /* frames open */
	size_t p = 0, payload;
	uint32_t levels;

	if (len > UINT32_MAX || !max_depth || max_depth > FINGERPRINT_MAX_DEPTH)
		return false;
	st[0] = (struct wire_frame){.end = (uint32_t)len};
	for (;;) {
		f = &st[n - 1];
		if (p == f->end) { /* a message: as deep as its deepest child, plus itself */
			levels = f->below + 1;
			if (!--n) {
				*depth = levels;
				return true;
			}
			if (st[n - 1].below < levels)
				st[n - 1].below = levels;
			continue;
		}
		if (!wire_field(buf, f->end, &p, &payload)) {
			/* not a message: its parent takes it for a string and goes on after it */
			if (!--n)
				return false;
			p = f->end;
			continue;
		}
		if (!payload)
			continue;
		if (n < max_depth) {
			st[n++] = (struct wire_frame){.end = (uint32_t)p};
			p = payload;
		} else if (wire_message(buf, payload, p)) {
			f->below = 1; /* deeper than max_depth: how much deeper does not matter */
		}
	}
}

/*
 * libpg_query's parse recurses too, and is slow on deep trees: pg_query_parse_protobuf
 * packs the tree with protobuf-c, which recurses per level (177 bytes of stack per byte of
 * text at worst, measured on `+a` chains: 24,000 terms, 48 KB, overflow 8 MiB) and computes
 * each sub-message's size again at every level above it (quadratic: 50,000 terms take
 * 1.4 s, 100,000 take 6.6 s). Short texts are parsed straight away: at most ~4,100 levels,
 * 0.7 MiB of the caller's stack and 16 ms. A longer text is first parsed into JSON, which
 * takes linear time and 64 bytes of stack per byte at worst, on a stack of its own (reserved
 * for the text's length, not committed: only what the parse touches is, and it is unmapped
 * after), and its nesting read from the brackets; only a shallow one is parsed again into
 * protobuf. JSON nests 1 to 1.5 times as deep as the protobuf (a list is an array more),
 * so JSON_MAX_DEPTH refuses no tree that FINGERPRINT_MAX_DEPTH accepts.
 */
#define PARSE_DIRECT_MAX    4096 /* bytes of text parsed straight into protobuf */
#define JSON_STACK_PER_BYTE 512	 /* 8 times the 64 measured */
#define JSON_MAX_DEPTH	    (2 * FINGERPRINT_MAX_DEPTH) /* brackets */

/* What call_on_stack runs: makecontext passes only ints. */
static __thread struct {
	void (*fn)(void *);
	void *arg;
} stack_call;

static void stack_entry(void)
{
	stack_call.fn(stack_call.arg);
}

/* Runs fn(arg) on a stack of its own of size bytes, with a guard page below it. Returns
 * false, without running fn, when no such stack can be had. */
static __attribute__((warn_unused_result)) bool call_on_stack(void (*fn)(void *), void *arg,
							      size_t size)
{
	size_t page = (size_t)sysconf(_SC_PAGESIZE);
	ucontext_t caller, callee;
	bool ok = false;
	char *stack;

	if (size > SIZE_MAX - 2 * page)
		return false;
	size = (size + 2 * page - 1) / page * page;
	stack = mmap(NULL, size, PROT_READ | PROT_WRITE,
		     MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE | MAP_STACK, -1, 0);
	if (stack == MAP_FAILED)
		return false;
	if (mprotect(stack, page, PROT_NONE) || getcontext(&callee))
		goto cleanup;
	callee.uc_stack.ss_sp = stack + page;
	callee.uc_stack.ss_size = size - page;
	callee.uc_link = &caller; /* where stack_entry returns to */
	makecontext(&callee, stack_entry, 0);
	stack_call.fn = fn;
	stack_call.arg = arg;
	ok = !swapcontext(&caller, &callee);
cleanup:
	munmap(stack, size);
	return ok;
}

/* The nesting of the JSON text j (brackets outside strings), counted up to max + 1. */
static unsigned int json_depth(const char *j, unsigned int max)
{
	unsigned int depth = 0, deepest = 0;
	bool in_string = false;

	for (; *j && deepest <= max; j++) {
		if (in_string) {
			if (*j == '\\' && j[1])
				j++;
			else if (*j == '"')
				in_string = false;
		} else if (*j == '"') {
			in_string = true;
		} else if (*j == '{' || *j == '[') {
			if (++depth > deepest)
				deepest = depth;
		} else if ((*j == '}' || *j == ']') && depth) {
			depth--;
		}
	}
	return deepest;
}

enum prescan { PRESCAN_SHALLOW, PRESCAN_TOO_DEEP, PRESCAN_NO_PARSE };

struct json_parse {
	const char *text;
	PgQueryParseResult r;
};

static void json_parse(void *arg)
{
	struct json_parse *p = arg;

	p->r = pg_query_parse(p->text);
}

/* Whether text[0..len), too long to parse straight into protobuf, is shallow enough to be.
 * A text no stack can be had for is too deep. */
static enum prescan prescan(const char *text, size_t len)
{
	struct json_parse p = {.text = text};
	enum prescan res;

	if (len > SIZE_MAX / JSON_STACK_PER_BYTE - 1 ||
	    !call_on_stack(json_parse, &p, (len + 1) * JSON_STACK_PER_BYTE))
		return PRESCAN_TOO_DEEP;
	if (p.r.error || !p.r.parse_tree)
		res = PRESCAN_NO_PARSE;
	else if (json_depth(p.r.parse_tree, JSON_MAX_DEPTH) > JSON_MAX_DEPTH)
		res = PRESCAN_TOO_DEEP;
	else
		res = PRESCAN_SHALLOW;
	pg_query_free_parse_result(p.r);
	return res;
}

/* Parses text and classifies each statement. Returns false when it does not parse or is too
 * deep to inspect (out->too_deep). */
static bool classify(const char *text, struct fingerprint_info *out)
{
	size_t len = strlen(text), i;
	PgQueryProtobufParseResult r;
	PgQuery__ParseResult *tree = NULL;
	enum fingerprint_txn txn = FINGERPRINT_TXN_NONE;
	unsigned int depth;
	bool ok = false;

	if (len > PARSE_DIRECT_MAX) {
		switch (prescan(text, len)) {
		case PRESCAN_SHALLOW:
			break;
		case PRESCAN_TOO_DEEP:
			out->too_deep = true;
			out->nondet = FINGERPRINT_NONDET_UNKNOWN;
			return false;
		case PRESCAN_NO_PARSE:
			return false;
		}
	}
	r = pg_query_parse_protobuf(text);
	if (r.error)
		goto out;
	if (!fingerprint_wire_depth((const uint8_t *)r.parse_tree.data, r.parse_tree.len,
				    FINGERPRINT_MAX_DEPTH, &depth))
		goto out; /* not a message: protobuf-c would not unpack it either */
	if (depth > FINGERPRINT_MAX_DEPTH) {
		out->too_deep = true;
		out->nondet = FINGERPRINT_NONDET_UNKNOWN;
		goto out;
	}
	tree = pg_query__parse_result__unpack(NULL, r.parse_tree.len,
					      (const uint8_t *)r.parse_tree.data);
	if (!tree)
		goto out;
	ok = true;
	out->read_only = true;
	out->statements = tree->n_stmts > UINT16_MAX ? UINT16_MAX : tree->n_stmts;
	for (i = 0; i < tree->n_stmts; i++) {
		const PgQuery__Node *n = tree->stmts[i]->stmt;

		if (!n || !node_is_read(n))
			out->read_only = false;
		if (n) {
			struct nondet_walk w = {0};

			out->classes |= stmt_classes(n, &txn);
			walk_nondet(&n->base, &w, 0);
			if (w.locks || w.unlocks) {
				out->advisory = true;
				out->read_only = false;
			}
			out->unlocks |= w.unlocks;
			out->nondet |= w.bits;
			out->pool |= stmt_pool(n) | w.pool;
		}
	}
	if (tree->n_stmts == 1)
		out->txn = txn;
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
	out->parsed = classify(text, out);
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

#define SHAPE_MAX 8192 /* longer texts are keyed by their full text */

static bool ident_char(unsigned char ch)
{
	return isalnum(ch) || ch == '_' || ch == '$' || ch >= 0x80;
}

/* Skips a quoted literal starting at t[i] == q ('' or "" doubles the quote; backslash
 * escapes when bs). Returns the index after it, or 0 when it is unterminated. */
static size_t skip_quoted(const char *t, size_t len, size_t i, char q, bool bs)
{
	for (i++; i < len; i++) {
		if (bs && t[i] == '\\') {
			i++;
			continue;
		}
		if (t[i] == q) {
			if (i + 1 < len && t[i + 1] == q) {
				i++;
				continue;
			}
			return i + 1;
		}
	}
	return 0;
}

/*
 * Writes the shape of t[0..len) to out (SHAPE_MAX bytes): the text with comments
 * and runs of white space made one space, every string, number and dollar-quoted literal replaced
 * by one byte. Returns the shape's length, or 0 when the text must be keyed as it is (see
 * fingerprint.h). Identifiers, quoted identifiers and $n parameters are kept, and so are
 * string literals that read as the current time ('now', see time_word): their value changes
 * nondet. Never longer than the text.
 */
static size_t shape(const char *t, size_t len, char *out)
{
	size_t i = 0, o = 0, j, tag;
	unsigned char ch;

	while (i < len && (isspace((unsigned char)t[i]) || t[i] == '('))
		i++;
	if (len > SHAPE_MAX || (len - i >= 7 && !strncasecmp(t + i, "explain", 7)))
		return 0;
	i = 0;
	while (i < len) {
		ch = (unsigned char)t[i];
		bool after_ident = i > 0 && ident_char((unsigned char)t[i - 1]);

		if (isspace(ch)) { /* runs of white space and comments become one space */
			if (o && out[o - 1] != ' ')
				out[o++] = ' ';
			i++;
			continue;
		}
		if (ch == '-' && i + 1 < len && t[i + 1] == '-') {
			while (i < len && t[i] != '\n')
				i++;
			if (o && out[o - 1] != ' ')
				out[o++] = ' ';
			continue;
		}
		if (ch == '/' && i + 1 < len && t[i + 1] == '*') {
			int depth = 1;

			for (i += 2; i < len && depth; i++) {
				if (t[i] == '/' && i + 1 < len && t[i + 1] == '*')
					depth++, i++;
				else if (t[i] == '*' && i + 1 < len && t[i + 1] == '/')
					depth--, i++;
			}
			if (depth)
				return 0;
			if (o && out[o - 1] != ' ')
				out[o++] = ' ';
			continue;
		}
		if (ch == '\'') {
			bool e = i > 0 && (t[i - 1] == 'e' || t[i - 1] == 'E') &&
				 !(i > 1 && ident_char((unsigned char)t[i - 2]));
			bool special = after_ident && !e && !(t[i - 1] == 'n' || t[i - 1] == 'N');

			if (special) /* U&'', B'', X'' or a typed literal's prefix: keep as is */
				return 0;
			j = skip_quoted(t, len, i, '\'', e);
			if (!j)
				return 0;
			if (time_word(t + i + 1, j - i - 2)) { /* 'now' is not a constant */
				memcpy(out + o, t + i, j - i);
				o += j - i;
			} else {
				out[o++] = '\'';
			}
			i = j;
			continue;
		}
		if (ch == '"') {
			j = skip_quoted(t, len, i, '"', false);
			if (!j)
				return 0;
			memcpy(out + o, t + i, j - i);
			o += j - i;
			i = j;
			continue;
		}
		if (ch == '$' && !after_ident) {
			for (j = i + 1; j < len && (isalnum((unsigned char)t[j]) || t[j] == '_' ||
						    (unsigned char)t[j] >= 0x80);
			     j++)
				;
			if (j < len && t[j] == '$' &&
			    !(j > i + 1 && isdigit((unsigned char)t[i + 1]))) {
				const char *end;

				tag = j + 1 - i; /* $tag$ */
				end = memmem(t + j + 1, len - j - 1, t + i, tag);
				if (!end)
					return 0;
				if (time_word(t + j + 1, (size_t)(end - t) - j - 1)) {
					memcpy(out + o, t + i, (size_t)(end - t) + tag - i);
					o += (size_t)(end - t) + tag - i;
				} else {
					out[o++] = '$';
				}
				i = (size_t)(end - t) + tag;
				continue;
			}
			/* $n parameter: kept */
			memcpy(out + o, t + i, j - i);
			o += j - i;
			i = j;
			continue;
		}
		if (!after_ident && (isdigit(ch) || (ch == '.' && i + 1 < len &&
						     isdigit((unsigned char)t[i + 1])))) {
			while (i < len && isdigit((unsigned char)t[i]))
				i++;
			if (i < len && t[i] == '.')
				for (i++; i < len && isdigit((unsigned char)t[i]); i++)
					;
			if (i < len && (t[i] == 'e' || t[i] == 'E')) {
				j = i + 1;
				if (j < len && (t[j] == '+' || t[j] == '-'))
					j++;
				if (j < len && isdigit((unsigned char)t[j]))
					for (i = j; i < len && isdigit((unsigned char)t[i]); i++)
						;
			}
			out[o++] = '0';
			continue;
		}
		out[o++] = (char)ch;
		i++;
	}
	return o ? o : 0;
}

void fingerprint_lookup(struct fingerprint_cache *c, const char *text, size_t len,
			struct fingerprint_info *out)
{
	char key[SHAPE_MAX];
	size_t klen = shape(text, len, key);
	uint64_t h = (klen ? XXH3_64bits(key, klen) : XXH3_64bits(text, len)) | 1;
	/* never 0: 0 marks an empty slot */
	struct entry *set = &c->sets[(h >> 1 & (c->n_sets - 1)) * WAYS], *victim = set;
	char *copy;
	int i;

	c->clock++;
	for (i = 0; i < WAYS; i++) {
		if (set[i].hash == h && set[i].len == (klen ? klen : len)) {
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
	if (out->too_deep)
		c->stats.too_deep++;
	else if (!out->parsed)
		c->stats.parse_errors++;
	if (victim->hash)
		c->stats.evictions++;
	victim->hash = h;
	victim->len = klen ? klen : len;
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

/*
 * The statement's text as shown per statement (querystats.h): pg_query_normalize's (each
 * constant replaced by $n), without comments, with runs of whitespace made one space, cut
 * to cap - 1 bytes at a character boundary. Call it only for texts that parsed and are not
 * too deep (fingerprint != 0): the normalizer walks the tree recursively.
 */
bool fingerprint_normalize(const char *text, char *out, size_t cap)
{
	PgQueryNormalizeResult res;
	const char *p;
	size_t n = 0;
	bool space = false, quoted = false;

	if (!text || !cap)
		return false;
	res = pg_query_normalize(text);
	if (res.error || !res.normalized_query) {
		pg_query_free_normalize_result(res);
		return false;
	}
	for (p = res.normalized_query; *p && n + 1 < cap; p++) {
		if (!quoted && p[0] == '-' && p[1] == '-') {
			while (p[1] && p[1] != '\n')
				p++;
			space = true;
			continue;
		}
		if (!quoted && p[0] == '/' && p[1] == '*') {
			int depth = 1;

			for (p += 2; *p && depth; p++)
				if (p[0] == '/' && p[1] == '*')
					depth++, p++;
				else if (p[0] == '*' && p[1] == '/')
					depth--, p++;
			p--;
			space = true;
			continue;
		}
		if (*p == '"')
			quoted = !quoted;
		if (!quoted && isspace((unsigned char)*p)) {
			space = true;
			continue;
		}
		if (space && n > 0 && n + 2 < cap)
			out[n++] = ' ';
		space = false;
		out[n++] = *p;
	}
	if (*p && ((unsigned char)*p & 0xc0) == 0x80) { /* cut inside a character */
		while (n > 0 && ((unsigned char)out[n - 1] & 0xc0) == 0x80)
			n--;
		if (n > 0)
			n--; /* its lead byte */
	}
	while (n > 0 && (out[n - 1] == ';' || out[n - 1] == ' ')) /* one statement: no end mark */
		n--;
	out[n] = '\0';
	pg_query_free_normalize_result(res);
	return n > 0;
}
