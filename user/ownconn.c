// SPDX-License-Identifier: BSD-2-Clause
/* ownconn.c — exclude the agent's own libpq connections from capture. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

#include "ownconn.h"

#ifndef DEFAULT_PGPORT
#define DEFAULT_PGPORT 5432
#endif

/* A socket address as the capture contract spells it: 16-byte (IPv4-mapped) address,
 * host-order port. */
static bool to_mapped(const struct sockaddr_storage *ss, uint8_t addr[16], uint16_t *port)
{
	memset(addr, 0, 16);
	if (ss->ss_family == AF_INET) {
		const struct sockaddr_in *in = (const struct sockaddr_in *)ss;

		addr[10] = addr[11] = 0xff;
		memcpy(addr + 12, &in->sin_addr, 4);
		*port = ntohs(in->sin_port);
		return true;
	}
	if (ss->ss_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)ss;

		memcpy(addr, &in6->sin6_addr, 16);
		*port = ntohs(in6->sin6_port);
		return true;
	}
	return false; /* a Unix socket: never captured */
}

/* The server libpq is connecting to, while getpeername cannot tell yet (SYN sent). */
static bool peer_from_libpq(PGconn *conn, uint8_t addr[16], uint16_t *port)
{
	const char *host = PQhostaddr(conn), *p = PQport(conn);

	memset(addr, 0, 16);
	if (host && inet_pton(AF_INET, host, addr + 12) == 1)
		addr[10] = addr[11] = 0xff;
	else if (!host || inet_pton(AF_INET6, host, addr) != 1)
		return false;
	*port = p && *p ? (uint16_t)atoi(p) : DEFAULT_PGPORT;
	return true;
}

void ownconn_release(struct capture *c, struct ownconn *x)
{
	if (!x->active)
		return;
	capture_exclude_remove(c, &x->dir[0]);
	capture_exclude_remove(c, &x->dir[1]);
	x->active = false;
}

void ownconn_exclude(struct capture *c, PGconn *conn, uint16_t only_port, struct ownconn *x)
{
	struct sockaddr_storage local, peer;
	socklen_t ll = sizeof(local), pl = sizeof(peer);
	struct capture_tuple t;
	int fd = conn ? PQsocket(conn) : -1;

	if (!c || fd < 0 || getsockname(fd, (struct sockaddr *)&local, &ll))
		return;
	memset(&t, 0, sizeof(t));
	if (!to_mapped(&local, t.saddr, &t.sport))
		return;
	if (getpeername(fd, (struct sockaddr *)&peer, &pl) ||
	    !to_mapped(&peer, t.daddr, &t.dport)) {
		if (!peer_from_libpq(conn, t.daddr, &t.dport))
			return;
	}
	if (only_port && t.dport != only_port) {
		ownconn_release(c, x);
		return;
	}
	if (x->active && !memcmp(&x->dir[0], &t, sizeof(t)))
		return;
	ownconn_release(c, x);
	x->dir[0] = t;
	memcpy(x->dir[1].saddr, t.daddr, 16);
	memcpy(x->dir[1].daddr, t.saddr, 16);
	x->dir[1].sport = t.dport;
	x->dir[1].dport = t.sport;
	capture_exclude_add(c, &x->dir[0]);
	capture_exclude_add(c, &x->dir[1]);
	x->active = true;
}
