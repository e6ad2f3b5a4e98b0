// SPDX-License-Identifier: BSD-2-Clause
/* http.c — /metrics and /healthz on libmicrohttpd. See include/http.h. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#include "http.h"

#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
#define MAX_RESPONSE	     (64u << 20)
#define CONNECTION_LIMIT     64
#define CONNECTION_TIMEOUT_S 10

struct http {
	struct MHD_Daemon *daemon;
	struct stats *stats;
	const char *version;
};

int http_parse_listen(const char *s, struct sockaddr_storage *ss, socklen_t *len, char *err,
		      size_t errlen)
{
	char host[64];
	const char *colon, *port_s;
	char *end;
	unsigned long port;
	size_t hlen;

	memset(ss, 0, sizeof(*ss));
	if (s[0] == '[') {
		colon = strstr(s, "]:");
		if (!colon)
			goto bad;
		hlen = colon - s - 1;
		port_s = colon + 2;
		if (hlen == 0 || hlen >= sizeof(host))
			goto bad;
		memcpy(host, s + 1, hlen);
	} else {
		colon = strrchr(s, ':');
		if (!colon)
			goto bad;
		hlen = colon - s;
		port_s = colon + 1;
		if (hlen == 0 || hlen >= sizeof(host))
			goto bad;
		memcpy(host, s, hlen);
	}
	host[hlen] = '\0';
	errno = 0;
	port = strtoul(port_s, &end, 10);
	if (errno || end == port_s || *end || port == 0 || port > 65535 || port_s[0] == '-')
		goto bad;
	if (!strcmp(host, "localhost"))
		strcpy(host, "127.0.0.1");
	if (s[0] != '[') {
		struct sockaddr_in *in = (struct sockaddr_in *)ss;

		if (inet_pton(AF_INET, host, &in->sin_addr) != 1)
			goto bad;
		in->sin_family = AF_INET;
		in->sin_port = htons(port);
		*len = sizeof(*in);
	} else {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)ss;

		if (inet_pton(AF_INET6, host, &in6->sin6_addr) != 1)
			goto bad;
		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons(port);
		*len = sizeof(*in6);
	}
	return 0;
bad:
	snprintf(err, errlen,
		 "invalid listen address '%s': expected IPv4:PORT or [IPv6]:PORT with a numeric "
		 "address and a port from 1 to 65535",
		 s);
	return -EINVAL;
}

/* Reads this process's CPU, memory and fd figures from /proc. Best effort. */
static void read_process(struct stats_process *p)
{
	unsigned long long utime = 0, stime = 0, starttime = 0, vsize = 0, rss = 0;
	long tck = sysconf(_SC_CLK_TCK), page = sysconf(_SC_PAGESIZE);
	char buf[1024], *rp;
	struct rlimit rl;
	struct dirent *de;
	double uptime = 0, now;
	struct timespec ts;
	FILE *f;
	DIR *d;

	memset(p, 0, sizeof(*p));
	f = fopen("/proc/self/stat", "re");
	if (f) {
		if (fgets(buf, sizeof(buf), f) && (rp = strrchr(buf, ')')))
			sscanf(rp + 2,
			       "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu %*d %*d %*d "
			       "%*d %*d %*d %llu %llu %llu",
			       &utime, &stime, &starttime, &vsize, &rss);
		fclose(f);
	}
	p->cpu_seconds = (double)(utime + stime) / tck;
	p->virtual_bytes = vsize;
	p->resident_bytes = rss * page;
	f = fopen("/proc/uptime", "re");
	if (f) {
		if (fscanf(f, "%lf", &uptime) != 1)
			uptime = 0;
		fclose(f);
	}
	clock_gettime(CLOCK_REALTIME, &ts);
	now = ts.tv_sec + ts.tv_nsec / 1e9;
	p->start_time_seconds = now - uptime + (double)starttime / tck;
	d = opendir("/proc/self/fd");
	if (d) {
		while ((de = readdir(d)))
			if (de->d_name[0] != '.')
				p->open_fds++;
		closedir(d);
		p->open_fds--; /* the directory stream itself */
	}
	if (!getrlimit(RLIMIT_NOFILE, &rl))
		p->max_fds = rl.rlim_cur;
}

static enum MHD_Result respond(struct MHD_Connection *conn, unsigned int status, const char *type,
			       const char *body, size_t len)
{
	struct MHD_Response *r;
	enum MHD_Result ret;

	r = MHD_create_response_from_buffer(len, (void *)body, MHD_RESPMEM_MUST_COPY);
	if (!r)
		return MHD_NO;
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, type);
	ret = MHD_queue_response(conn, status, r);
	MHD_destroy_response(r);
	return ret;
}

static enum MHD_Result get_metrics(struct http *h, struct MHD_Connection *conn)
{
	struct stats_process proc;
	struct timespec now;
	struct buf b;
	enum MHD_Result ret;

	read_process(&proc);
	buf_init(&b, MAX_RESPONSE);
	clock_gettime(CLOCK_MONOTONIC, &now);
	if (!stats_render(h->stats, &proc, h->version,
			  (uint64_t)now.tv_sec * 1000000000ULL + now.tv_nsec, &b)) {
		buf_free(&b);
		return respond(conn, MHD_HTTP_INTERNAL_SERVER_ERROR, "text/plain",
			       "metrics too large\n", 18);
	}
	ret = respond(conn, MHD_HTTP_OK, METRICS_CONTENT_TYPE, b.data ? b.data : "", b.len);
	buf_free(&b);
	return ret;
}

static enum MHD_Result get_healthz(struct http *h, struct MHD_Connection *conn)
{
	(void)h;
	return respond(conn, MHD_HTTP_OK, "text/plain", "ok\n", 3);
}

static const struct route {
	const char *path;
	enum MHD_Result (*fn)(struct http *h, struct MHD_Connection *conn);
} routes[] = {
    {"/metrics", get_metrics},
    {"/healthz", get_healthz},
    {NULL, NULL},
};

static enum MHD_Result on_request(void *cls, struct MHD_Connection *conn, const char *url,
				  const char *method, const char *version, const char *upload_data,
				  size_t *upload_data_size, void **con_cls)
{
	const struct route *r;

	(void)version;
	(void)upload_data;
	(void)con_cls;
	if (*upload_data_size)
		return respond(conn, MHD_HTTP_BAD_REQUEST, "text/plain", "no body expected\n", 17);
	for (r = routes; r->path; r++) {
		if (strcmp(url, r->path))
			continue;
		if (strcmp(method, MHD_HTTP_METHOD_GET) && strcmp(method, MHD_HTTP_METHOD_HEAD))
			return respond(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain",
				       "only GET\n", 9);
		return r->fn(cls, conn);
	}
	return respond(conn, MHD_HTTP_NOT_FOUND, "text/plain",
		       "not found: try /metrics or /healthz\n", 36);
}

struct http *http_start(const char *listen, struct stats *st, const char *version, char *err,
			size_t errlen)
{
	struct sockaddr_storage ss;
	socklen_t sslen;
	struct http *h;
	unsigned int flags = MHD_USE_INTERNAL_POLLING_THREAD;

	if (http_parse_listen(listen, &ss, &sslen, err, errlen))
		return NULL;
	if (ss.ss_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	h = calloc(1, sizeof(*h));
	if (!h) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	h->stats = st;
	h->version = version;
	errno = 0;
	h->daemon = MHD_start_daemon(flags, 0, NULL, NULL, on_request, h, MHD_OPTION_SOCK_ADDR,
				     (struct sockaddr *)&ss, MHD_OPTION_CONNECTION_LIMIT,
				     (unsigned int)CONNECTION_LIMIT, MHD_OPTION_CONNECTION_TIMEOUT,
				     (unsigned int)CONNECTION_TIMEOUT_S, MHD_OPTION_END);
	if (!h->daemon) {
		snprintf(err, errlen, "cannot listen on %s for HTTP: %s", listen,
			 errno ? strerror(errno) : "libmicrohttpd refused to start");
		free(h);
		return NULL;
	}
	return h;
}

void http_stop(struct http *h)
{
	if (!h)
		return;
	MHD_stop_daemon(h->daemon);
	free(h);
}
