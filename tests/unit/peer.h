/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * Test helper shared by the unit tests of the shells that talk over sockets (test_http.c,
 * test_explain.c, test_resolver.c): loopback listeners for scripted peers, and the
 * PostgreSQL messages a scripted backend sends. Needs cmocka (assert_*) included first.
 */
#ifndef PGSHADOW_TEST_PEER_H
#define PGSHADOW_TEST_PEER_H

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* A listener on the loopback address of family (AF_INET or AF_INET6) on a free port. */
static inline int listen_on(int family, int backlog, uint16_t *port)
{
	struct sockaddr_storage ss = {0};
	socklen_t len;
	int fd = socket(family, SOCK_STREAM | SOCK_CLOEXEC, 0), one = 1;

	assert_true(fd >= 0);
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (family == AF_INET) {
		struct sockaddr_in *in = (struct sockaddr_in *)&ss;

		in->sin_family = AF_INET;
		in->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		len = sizeof(*in);
	} else {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)&ss;

		in6->sin6_family = AF_INET6;
		in6->sin6_addr = in6addr_loopback;
		len = sizeof(*in6);
	}
	assert_int_equal(bind(fd, (struct sockaddr *)&ss, len), 0);
	assert_int_equal(listen(fd, backlog), 0);
	len = sizeof(ss);
	assert_int_equal(getsockname(fd, (struct sockaddr *)&ss, &len), 0);
	*port = ntohs(family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port
					: ((struct sockaddr_in6 *)&ss)->sin6_port);
	return fd;
}

/* A port nothing listens on (just released). */
static inline uint16_t closed_port(void)
{
	uint16_t port;

	close(listen_on(AF_INET, 1, &port));
	return port;
}

/* Reads exactly n bytes; false when the peer closed or failed first. */
static inline bool read_full(int fd, void *p, size_t n)
{
	ssize_t k;

	while (n) {
		k = recv(fd, p, n, 0);
		if (k <= 0)
			return false;
		p = (char *)p + k;
		n -= (size_t)k;
	}
	return true;
}

/* One backend message: type, length, body. */
static inline void pg_send(int fd, char type, const void *body, size_t len)
{
	char hdr[5];
	uint32_t n = htonl((uint32_t)len + 4);

	hdr[0] = type;
	memcpy(hdr + 1, &n, 4);
	send(fd, hdr, 5, MSG_NOSIGNAL);
	if (len)
		send(fd, body, len, MSG_NOSIGNAL);
}

static inline void pg_ready(int fd)
{
	pg_send(fd, 'Z', "I", 1);
}

/* A trust-authenticated backend's answer to a startup packet. */
static inline void pg_hello(int fd)
{
	pg_send(fd, 'R', "\0\0\0\0", 4);
	pg_send(fd, 'S', "server_version\00015.0", 20);
	pg_send(fd, 'S', "client_encoding\000UTF8", 21);
	pg_ready(fd);
}

/* An ErrorResponse with SQLSTATE code (no ReadyForQuery). */
static inline void pg_error(int fd, const char *code)
{
	char body[128];
	int n = snprintf(body, sizeof(body), "SERROR%cVERROR%cC%s%cMscripted failure%c", 0, 0, code,
			 0, 0);

	pg_send(fd, 'E', body, (size_t)n + 1);
}

/* The body of a startup packet (its *len bytes, a fresh allocation the caller frees), or
 * NULL when the client went or sent no plausible one. */
static inline char *pg_read_startup(int fd, uint32_t *len)
{
	char *body;

	if (!read_full(fd, len, 4) || (*len = ntohl(*len)) < 8 || *len > 10000)
		return NULL;
	*len -= 4;
	body = malloc(*len);
	if (body && !read_full(fd, body, *len)) {
		free(body);
		return NULL;
	}
	return body;
}

/* One frontend message: its type in *type, its body (*len bytes, NUL-terminated, a fresh
 * allocation the caller frees); NULL when the client went or sent no plausible one. */
static inline char *pg_read_message(int fd, char *type, uint32_t *len)
{
	char *body;

	if (!read_full(fd, type, 1) || !read_full(fd, len, 4))
		return NULL;
	*len = ntohl(*len);
	if (*len < 4 || *len > 1 << 20)
		return NULL;
	*len -= 4;
	body = calloc(1, *len + 1);
	if (body && !read_full(fd, body, *len)) {
		free(body);
		return NULL;
	}
	return body;
}

#endif
