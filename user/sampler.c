// SPDX-License-Identifier: BSD-2-Clause
/* sampler.c — which requests reach the mirror, and how. See include/sampler.h. */
#include <string.h>

#include "sampler.h"

double sampler_random(struct sampler_session *ss)
{
	uint64_t x = ss->rng ? ss->rng : 0x9e3779b97f4a7c15ull;

	/* xorshift64* */
	x ^= x >> 12;
	x ^= x << 25;
	x ^= x >> 27;
	ss->rng = x;
	return (double)((x * 0x2545f4914f6cdd1dull) >> 11) * 0x1.0p-53;
}

static bool starts_with(const char *s, const char *prefix)
{
	return s && !strncmp(s, prefix, strlen(prefix));
}

/* The transaction that is open ended: replay or discard what was held of it. */
static enum sampler_flush txn_outcome(const struct sampler_session *ss)
{
	if (ss->txn_explicit)
		return ss->last_ok ? SAMPLER_RELEASE : SAMPLER_DISCARD;
	return ss->txn_failed ? SAMPLER_DISCARD : SAMPLER_RELEASE;
}

/* Does the level/mode filter let the text through? Sets the skip reason if not. */
static bool passes_filters(const struct sampler_config *cfg, const struct fingerprint_info *fi,
			   enum stats_skip_reason *why)
{
	unsigned int always = FINGERPRINT_TXN | FINGERPRINT_SESSION;

	if (cfg->level != REPLAY_LEVEL_ALL) {
		unsigned int want =
		    cfg->level == REPLAY_LEVEL_DML ? FINGERPRINT_DML : FINGERPRINT_DDL;

		if (!fi->parsed || !(fi->classes & (want | always))) {
			*why = STATS_SKIP_LEVEL;
			return false;
		}
	}
	if (cfg->mode == REPLAY_MODE_READ_ONLY && !fi->read_only &&
	    (!fi->parsed || (fi->classes & ~always))) {
		*why = STATS_SKIP_WRITE;
		return false;
	}
	return true;
}

/*
 * A request the source failed because of other sessions, not because of itself: 40001
 * (serialization failure), 40P01 (chosen as a deadlock victim), 55P03 (a lock not
 * available: NOWAIT, lock_timeout). The mirror cannot reproduce the timing that caused
 * it: run there, the statement may succeed (the mirror then keeps a transaction alive
 * the source aborted), wait for a lock its replayed peers hold behind our ordering, or
 * deadlock with another victim. Its SQLSTATE when it is one of those and the request is
 * one statement (an Execute, or a Query of one), else NULL.
 */
static const char *concurrency_error(const struct sampler_request *q,
				     const struct fingerprint_info *fi)
{
	static const char *const codes[] = {"40001", "40P01", "55P03"};
	size_t i;

	if (!q->error || !q->sqlstate ||
	    (q->kind == SESSION_REQ_QUERY && !(fi->parsed && fi->statements == 1)))
		return NULL;
	for (i = 0; i < sizeof(codes) / sizeof(codes[0]); i++)
		if (!strcmp(q->sqlstate, codes[i]))
			return codes[i];
	return NULL;
}

void sampler_decide(const struct sampler_config *cfg, struct sampler_session *ss,
		    const struct sampler_request *q, struct sampler_decision *d)
{
	static const struct fingerprint_info unparsed;
	const struct fingerprint_info *fi = q->info ? q->info : &unparsed;
	bool idle_before = q->txn_before == 'I' || q->txn_before == 0;
	bool same_group =
	    q->kind == SESSION_REQ_EXECUTE && ss->group_open && q->sync_group == ss->group;
	bool start = (idle_before && !same_group) || !ss->in_txn;
	bool ok, rolled_back;

	memset(d, 0, sizeof(*d));
	if (start) {
		/* an Execute's transaction ended at its Sync */
		if (ss->in_txn)
			d->before = txn_outcome(ss);
		ss->in_txn = true;
		ss->txn_explicit = false;
		ss->txn_failed = false;
		if (cfg->sampling == REPLAY_SAMPLE_TRANSACTION || !ss->decided) {
			ss->sampled = sampler_random(ss) < cfg->exposure;
			ss->decided = true;
		}
	}
	d->txn_start = start;
	if (!idle_before || fi->txn == FINGERPRINT_TXN_BEGIN)
		ss->txn_explicit = true;
	ss->group_open = q->kind == SESSION_REQ_EXECUTE && idle_before;
	ss->group = q->sync_group;

	/* a COMMIT that failed (a deferred constraint) rolled back as surely as one answered
	 * ROLLBACK */
	rolled_back =
	    fi->txn == FINGERPRINT_TXN_COMMIT && (q->error || starts_with(q->tag, "ROLLBACK"));
	ok = !q->error && fi->txn != FINGERPRINT_TXN_ROLLBACK && !rolled_back;
	ss->last_ok = ok;
	if (q->error)
		ss->txn_failed = true;

	if (!ss->sampled && !(fi->classes & FINGERPRINT_SESSION)) {
		d->verdict = SAMPLER_NOT_SAMPLED;
	} else if (!passes_filters(cfg, fi, &d->skip)) {
		d->verdict = SAMPLER_SKIP;
	} else {
		d->as_rollback = rolled_back;
		/* a failed statement that was its own (implicit) transaction; one that
		 * controls transactions itself (SAVEPOINT, COMMIT PREPARED) cannot be wrapped */
		if (q->error && !ss->txn_explicit &&
		    (q->kind == SESSION_REQ_EXECUTE || q->txn_after == 'I' || q->txn_after == 0)) {
			if (fi->classes & (FINGERPRINT_NO_TXN_BLOCK | FINGERPRINT_TXN)) {
				d->verdict = SAMPLER_SKIP;
				d->skip = STATS_SKIP_NO_TRANSACTION;
			} else {
				d->wrap = true;
			}
		}
		d->raise = concurrency_error(q, fi);
		d->read = !d->wrap && !d->as_rollback && !d->raise && fi->parsed &&
			  (fi->read_only || fi->classes == FINGERPRINT_SESSION ||
			   (fi->classes == FINGERPRINT_TXN && fi->txn == FINGERPRINT_TXN_BEGIN));
	}
	d->hold = cfg->aborted == REPLAY_ABORTED_SKIP && d->verdict == SAMPLER_REPLAY;
	if (q->kind != SESSION_REQ_EXECUTE && q->txn_after == 'I') {
		d->after = txn_outcome(ss); /* a Query ended it: known now */
		ss->in_txn = false;
	}
}

enum sampler_flush sampler_session_end(struct sampler_session *ss)
{
	enum sampler_flush f = SAMPLER_KEEP;

	if (ss->in_txn)
		f = ss->txn_explicit ? SAMPLER_DISCARD : txn_outcome(ss);
	ss->in_txn = false;
	return f;
}
