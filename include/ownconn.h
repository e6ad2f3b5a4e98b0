/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * ownconn: the agent's own libpq connections (--source-dsn, the mirror), kept out of
 * capture. Both directions of a connection's 4-tuple go into the capture exclude map
 * (kernel and user space) as soon as its socket has a local port — libpq has then sent
 * only its SYN — so neither its startup packet nor its queries are ever decoded as
 * source traffic. Used by the thread that owns the PGconn.
 */
#ifndef PGSHADOW_OWNCONN_H
#define PGSHADOW_OWNCONN_H

#include <stdbool.h>
#include <stdint.h>

#include <libpq-fe.h>

#include "capture.h"

struct ownconn {
	struct capture_tuple dir[2]; /* client->server, server->client */
	bool active;
};

/*
 * Excludes conn's current socket. The remote end comes from getpeername, or while the
 * connection is still being made (getpeername fails) from the address libpq is
 * connecting to. only_port != 0: only a connection to that server port is excluded
 * (the others cannot be captured). Call it after every PQconnectStart/PQconnectPoll
 * step: libpq opens a new socket for each address it tries, and a changed tuple
 * replaces the previous exclusion. c may be NULL (nothing to exclude from).
 */
void ownconn_exclude(struct capture *c, PGconn *conn, uint16_t only_port, struct ownconn *x);

/* Removes the exclusion, if any. */
void ownconn_release(struct capture *c, struct ownconn *x);

#endif /* PGSHADOW_OWNCONN_H */
