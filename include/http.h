/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * http: the agent's HTTP endpoint on libmicrohttpd (its own thread): GET /metrics
 * (Prometheus text format 0.0.4) and GET /healthz. A shell: reads stats, touches sockets.
 */
#ifndef PGSHADOW_HTTP_H
#define PGSHADOW_HTTP_H

#include <stddef.h>
#include <sys/socket.h>

#include "stats.h"

/*
 * Parses "HOST:PORT" or "[IPv6]:PORT" (HOST a numeric address; "localhost" means
 * 127.0.0.1) into *ss. Returns 0, or -EINVAL with a reason in err.
 */
int http_parse_listen(const char *s, struct sockaddr_storage *ss, socklen_t *len, char *err,
		      size_t errlen);

/* Starts serving on listen. Returns NULL with a one-line reason in err. */
struct http *http_start(const char *listen, struct stats *st, const char *version, char *err,
			size_t errlen);

/* Stops the server thread and frees. NULL-safe. */
void http_stop(struct http *h);

#endif /* PGSHADOW_HTTP_H */
