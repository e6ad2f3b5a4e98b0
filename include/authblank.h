// SPDX-License-Identifier: BSD-2-Clause
/*
 * authblank.h — --dump-streams never stores a password: the client's stream of a
 * connection seen from its start is walked through its startup packet(s) and its
 * authentication messages ('p': PasswordMessage, SASLInitialResponse, SASLResponse,
 * GSSResponse), whose bodies are written as zeros, keeping every length so the dump's
 * byte accounting still adds up. The first message that is not 'p' ends authentication
 * (a client sends 'p' only then) and the walk. A connection first seen mid-stream, or a
 * gap during authentication, is not walked. Pure.
 */
#ifndef PGSHADOW_AUTHBLANK_H
#define PGSHADOW_AUTHBLANK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct authblank {
	uint8_t state, next; /* AB_* (authblank.c); next: after the current body */
	uint8_t hdr[8];	     /* the header being gathered (a startup packet's: 8 bytes) */
	uint8_t hdr_len;
	bool blank;	  /* the current body is blanked */
	uint32_t left;	  /* body bytes of the current message still to come */
	uint64_t blanked; /* bytes written as zeros so far */
};

/* from_start: the connection's SYN was seen (else nothing is walked). */
void authblank_init(struct authblank *a, bool from_start);

/* Is the walk over (nothing more can change)? */
bool authblank_done(const struct authblank *a);

/* Copies len bytes of the client's stream into out, authentication bodies zeroed.
 * Returns whether anything was zeroed. */
bool authblank_feed(struct authblank *a, const uint8_t *in, size_t len, uint8_t *out);

/* Bytes went missing: the walk stops. */
void authblank_gap(struct authblank *a);

#endif /* PGSHADOW_AUTHBLANK_H */
