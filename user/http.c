// SPDX-License-Identifier: BSD-2-Clause
/* http.c — /, /metrics, /readiness and /healthz on libmicrohttpd, and the small HTTP/1.0
 * client of `pgshadow readiness`. See include/http.h. */
#define _GNU_SOURCE /* strcasestr */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include <microhttpd.h>

#include "http.h"
#include "webauth.h"

#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"
#define TEXT_CONTENT_TYPE    "text/plain; charset=utf-8"
#define JSON_CONTENT_TYPE    "application/json"
#define MAX_RESPONSE	     (64u << 20)
#define MAX_REPORT	     (1u << 20) /* a readiness report is a few KiB */
#define CONNECTION_LIMIT     64
#define CONNECTION_TIMEOUT_S 10

struct http {
	struct MHD_Daemon *daemon;
	struct stats *stats;
	const char *version;
	http_readiness_fn readiness;
	void *readiness_ctx;
	http_landing_fn landing;
	void *landing_ctx;
	http_queries_fn queries;
	void *queries_ctx;
	struct webauth *auth; /* NULL: no authentication */
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

static enum MHD_Result respond_text(struct MHD_Connection *conn, unsigned int status,
				    const char *text)
{
	return respond(conn, status, "text/plain", text, strlen(text));
}

/* JSON when ?format=json, or when the Accept header names application/json and no
 * format is given; text otherwise. Returns -1 for an unknown ?format. */
static int wants_json(struct MHD_Connection *conn)
{
	const char *format = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "format");
	const char *accept;

	if (format)
		return !strcmp(format, "json") ? 1 : !strcmp(format, "text") ? 0 : -1;
	accept = MHD_lookup_connection_value(conn, MHD_HEADER_KIND, MHD_HTTP_HEADER_ACCEPT);
	return accept && strcasestr(accept, "application/json") ? 1 : 0;
}

/* The readiness report, evaluated afresh; 200 whatever the verdict (it is in the body). */
static enum MHD_Result get_readiness(struct http *h, struct MHD_Connection *conn)
{
	const char *db = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "database");
	enum MHD_Result ret;
	struct buf b;
	int json = wants_json(conn), rc;

	if (!h->readiness)
		return respond_text(conn, MHD_HTTP_NOT_FOUND,
				    "no readiness report: this agent only observes (start it "
				    "with --mirror)\n");
	if (json < 0)
		return respond_text(conn, MHD_HTTP_BAD_REQUEST, "format must be text or json\n");
	buf_init(&b, MAX_REPORT);
	rc = h->readiness(h->readiness_ctx, db, json, &b);
	if (rc == -ENOENT) {
		buf_free(&b);
		return respond_text(conn, MHD_HTTP_NOT_FOUND,
				    "no such database: none of that name has been seen (its report "
				    "exists once the agent has seen a request of it)\n");
	}
	if (rc || b.overflow) {
		buf_free(&b);
		return respond_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR,
				    "cannot render the readiness report\n");
	}
	ret = respond(conn, MHD_HTTP_OK, json ? JSON_CONTENT_TYPE : TEXT_CONTENT_TYPE,
		      b.data ? b.data : "", b.len);
	buf_free(&b);
	return ret;
}

/* The per-statement comparison as JSON (?database=, ?sort=, ?limit=). */
static enum MHD_Result get_queries(struct http *h, struct MHD_Connection *conn)
{
	const char *db = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "database");
	const char *sort = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "sort");
	const char *limit = MHD_lookup_connection_value(conn, MHD_GET_ARGUMENT_KIND, "limit");
	char err[160], msg[200];
	enum MHD_Result ret;
	struct buf b;
	int rc;

	if (!h->queries)
		return respond_text(conn, MHD_HTTP_NOT_FOUND,
				    "no per-statement comparison: start the agent with --mirror "
				    "and max_query_stats above 0\n");
	buf_init(&b, 64u << 20);
	rc = h->queries(h->queries_ctx, db, sort, limit, &b, err, sizeof(err));
	if (rc == -EINVAL) {
		buf_free(&b);
		snprintf(msg, sizeof(msg), "bad request: %s\n", err);
		return respond_text(conn, MHD_HTTP_BAD_REQUEST, msg);
	}
	if (rc || b.overflow) {
		buf_free(&b);
		return respond_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR,
				    "cannot render the statements\n");
	}
	ret = respond(conn, MHD_HTTP_OK, JSON_CONTENT_TYPE, b.data ? b.data : "", b.len);
	buf_free(&b);
	return ret;
}

static enum MHD_Result get_landing(struct http *h, struct MHD_Connection *conn)
{
	enum MHD_Result ret;
	struct buf b;

	if (!h->landing)
		return respond_text(conn, MHD_HTTP_NOT_FOUND,
				    "not found: try /metrics, /readiness, /queries or /healthz\n");
	buf_init(&b, MAX_REPORT);
	if (h->landing(h->landing_ctx, &b) || b.overflow) {
		buf_free(&b);
		return respond_text(conn, MHD_HTTP_INTERNAL_SERVER_ERROR,
				    "cannot render the page\n");
	}
	ret = respond(conn, MHD_HTTP_OK, "text/html; charset=utf-8", b.data ? b.data : "", b.len);
	buf_free(&b);
	return ret;
}

static enum MHD_Result get_healthz(struct http *h, struct MHD_Connection *conn)
{
	(void)h;
	return respond(conn, MHD_HTTP_OK, "text/plain", "ok\n", 3);
}

/* web_basic_auth_file: the request's Basic credentials, checked. */
static bool authorized(struct http *h, struct MHD_Connection *conn)
{
	char *password = NULL;
	char *user = MHD_basic_auth_get_username_password(conn, &password);
	bool ok = user && password && webauth_check(h->auth, user, password);

	if (password) {
		explicit_bzero(password, strlen(password));
		MHD_free(password);
	}
	if (user)
		MHD_free(user);
	return ok;
}

static enum MHD_Result unauthorized(struct MHD_Connection *conn)
{
	static const char body[] = "unauthorized: this agent's endpoints need a user and "
				   "password (web_basic_auth_file)\n";
	struct MHD_Response *r =
	    MHD_create_response_from_buffer(sizeof(body) - 1, (void *)body, MHD_RESPMEM_PERSISTENT);
	enum MHD_Result ret;

	if (!r)
		return MHD_NO;
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain");
	ret = MHD_queue_basic_auth_fail_response(conn, "pgshadow", r);
	MHD_destroy_response(r);
	return ret;
}

static const struct route {
	const char *path;
	enum MHD_Result (*fn)(struct http *h, struct MHD_Connection *conn);
} routes[] = {
    {"/", get_landing},	       {"/metrics", get_metrics}, {"/readiness", get_readiness},
    {"/queries", get_queries}, {"/healthz", get_healthz}, {NULL, NULL},
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
	if (((struct http *)cls)->auth && !authorized(cls, conn))
		return unauthorized(conn);
	for (r = routes; r->path; r++) {
		if (strcmp(url, r->path))
			continue;
		if (strcmp(method, MHD_HTTP_METHOD_GET) && strcmp(method, MHD_HTTP_METHOD_HEAD))
			return respond(conn, MHD_HTTP_METHOD_NOT_ALLOWED, "text/plain",
				       "only GET\n", 9);
		return r->fn(cls, conn);
	}
	return respond_text(conn, MHD_HTTP_NOT_FOUND,
			    "not found: try /metrics, /readiness, /queries or /healthz\n");
}

struct http *http_start(const struct http_config *cfg, char *err, size_t errlen)
{
	const char *listen = cfg->listen;
	struct sockaddr_storage ss;
	socklen_t sslen;
	struct http *h;
	unsigned int flags = MHD_USE_INTERNAL_POLLING_THREAD;
	struct MHD_OptionItem tls[3] = {
	    {MHD_OPTION_END, 0, NULL}, {MHD_OPTION_END, 0, NULL}, {MHD_OPTION_END, 0, NULL}};

	if (http_parse_listen(listen, &ss, &sslen, err, errlen))
		return NULL;
	if (ss.ss_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	h = calloc(1, sizeof(*h));
	if (!h) {
		snprintf(err, errlen, "out of memory");
		return NULL;
	}
	h->stats = cfg->stats;
	h->version = cfg->version;
	h->readiness = cfg->readiness;
	h->readiness_ctx = cfg->readiness_ctx;
	h->landing = cfg->landing;
	h->landing_ctx = cfg->landing_ctx;
	h->queries = cfg->queries;
	h->queries_ctx = cfg->queries_ctx;
	h->auth = cfg->auth;
	if (cfg->tls_cert_pem) { /* GnuTLS inside libmicrohttpd */
		flags |= MHD_USE_TLS;
		tls[0] = (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_CERT, 0,
						 (void *)cfg->tls_cert_pem};
		tls[1] =
		    (struct MHD_OptionItem){MHD_OPTION_HTTPS_MEM_KEY, 0, (void *)cfg->tls_key_pem};
	}
	errno = 0;
	h->daemon = MHD_start_daemon(flags, 0, NULL, NULL, on_request, h, MHD_OPTION_SOCK_ADDR,
				     (struct sockaddr *)&ss, MHD_OPTION_CONNECTION_LIMIT,
				     (unsigned int)CONNECTION_LIMIT, MHD_OPTION_CONNECTION_TIMEOUT,
				     (unsigned int)CONNECTION_TIMEOUT_S, MHD_OPTION_ARRAY, tls,
				     MHD_OPTION_END);
	if (!h->daemon) {
		snprintf(err, errlen, "cannot listen on %s for HTTP%s: %s", listen,
			 cfg->tls_cert_pem ? "S" : "",
			 errno		     ? strerror(errno)
			 : cfg->tls_cert_pem ? "libmicrohttpd refused to start (is the TLS "
					       "certificate or key not PEM, or do they not "
					       "match?)"
					     : "libmicrohttpd refused to start");
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

/* ---- the client (`pgshadow readiness`) ---- */

static uint64_t mono_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

/* Milliseconds left until deadline (mono_ms), at least 0. */
static int ms_left(uint64_t deadline)
{
	uint64_t now = mono_ms();

	return now >= deadline ? 0 : (int)(deadline - now);
}

/* Splits "http://HOST[:PORT][/PATH]" into host, port and path (path points into url; ""
 * when absent). Returns 0 or -EINVAL with a reason. */
static int parse_url(const char *url, char *host, size_t hostlen, char *port, size_t portlen,
		     const char **path, char *err, size_t errlen)
{
	const char *auth, *end, *h, *hend, *p = NULL;
	size_t n;

	if (strncasecmp(url, "http://", 7))
		goto bad;
	auth = url + 7;
	end = auth + strcspn(auth, "/?#");
	if (*end == '#')
		goto bad;
	*path = end;
	if (auth[0] == '[') {
		h = auth + 1;
		hend = memchr(h, ']', end - h);
		if (!hend)
			goto bad;
		if (hend + 1 < end) {
			if (hend[1] != ':')
				goto bad;
			p = hend + 2;
		}
	} else {
		h = auth;
		hend = memchr(auth, ':', end - auth);
		if (hend)
			p = hend + 1;
		else
			hend = end;
	}
	n = hend - h;
	if (n == 0 || n >= hostlen)
		goto bad;
	memcpy(host, h, n);
	host[n] = '\0';
	if (!p) {
		snprintf(port, portlen, "80");
	} else {
		n = end - p;
		if (n == 0 || n >= portlen || strspn(p, "0123456789") < n)
			goto bad;
		memcpy(port, p, n);
		port[n] = '\0';
		if (atoi(port) < 1 || atoi(port) > 65535)
			goto bad;
	}
	return 0;
bad:
	if (!strncasecmp(url, "https://", 8))
		snprintf(err, errlen,
			 "https is not spoken by this client (plain HTTP/1.0): for an agent "
			 "with web_tls_cert_file, gate through Prometheus (--prometheus) or curl");
	else
		snprintf(err, errlen,
			 "not an http://HOST[:PORT][/PATH] URL (HOST a name, an IPv4 address or "
			 "[IPv6], PORT 1-65535)");
	return -EINVAL;
}

/* Connects to host:port before the deadline. Returns the socket or a negative errno. */
static int dial(const char *host, const char *port, uint64_t deadline, char *err, size_t errlen)
{
	struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res, *ai;
	struct pollfd pfd;
	socklen_t sl;
	int fd = -1, rc, soerr = 0;

	rc = getaddrinfo(host, port, &hints, &res);
	if (rc) {
		snprintf(err, errlen, "cannot resolve %s: %s", host, gai_strerror(rc));
		return -EHOSTUNREACH;
	}
	rc = -ECONNREFUSED;
	for (ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
			    ai->ai_protocol);
		if (fd < 0) {
			rc = -errno;
			continue;
		}
		if (connect(fd, ai->ai_addr, ai->ai_addrlen) && errno != EINPROGRESS) {
			rc = -errno;
		} else {
			pfd = (struct pollfd){.fd = fd, .events = POLLOUT};
			rc = poll(&pfd, 1, ms_left(deadline));
			sl = sizeof(soerr);
			if (rc == 0)
				rc = -ETIMEDOUT;
			else if (rc < 0)
				rc = -errno;
			else if (getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) || soerr)
				rc = -(soerr ? soerr : errno);
			else
				break; /* connected */
		}
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0) {
		snprintf(err, errlen, "cannot connect to %s port %s: %s", host, port,
			 strerror(-rc));
		return rc;
	}
	return fd;
}

/* Sends all of data before the deadline. */
static int send_all(int fd, const char *data, size_t len, uint64_t deadline)
{
	struct pollfd pfd = {.fd = fd, .events = POLLOUT};
	ssize_t n;
	int rc;

	while (len) {
		n = send(fd, data, len, MSG_NOSIGNAL);
		if (n > 0) {
			data += n;
			len -= n;
			continue;
		}
		if (n < 0 && errno != EAGAIN && errno != EINTR)
			return -errno;
		rc = poll(&pfd, 1, ms_left(deadline));
		if (rc == 0)
			return -ETIMEDOUT;
		if (rc < 0 && errno != EINTR)
			return -errno;
	}
	return 0;
}

/* Reads until the peer closes, at most max bytes, before the deadline. */
static int recv_all(int fd, struct buf *in, size_t max, uint64_t deadline)
{
	struct pollfd pfd = {.fd = fd, .events = POLLIN};
	char chunk[16384];
	ssize_t n;
	int rc;

	for (;;) {
		n = recv(fd, chunk, sizeof(chunk), 0);
		if (n == 0)
			return 0;
		if (n > 0) {
			if (in->len + n > max || !buf_append(in, chunk, n))
				return -EPROTO;
			continue;
		}
		if (errno != EAGAIN && errno != EINTR)
			return -errno;
		rc = poll(&pfd, 1, ms_left(deadline));
		if (rc == 0)
			return -ETIMEDOUT;
		if (rc < 0 && errno != EINTR)
			return -errno;
	}
}

/* Splits a whole HTTP/1.x answer into status and body (Content-Length honoured). */
static int parse_answer(const struct buf *in, unsigned int *status, struct buf *body, char *err,
			size_t errlen)
{
	const char *data = in->data ? in->data : "", *hdr_end, *cl;
	unsigned int code;
	size_t blen;
	char *end;

	if (in->len < 12 || strncmp(data, "HTTP/1.", 7) || data[8] != ' ' ||
	    sscanf(data + 9, "%3u", &code) != 1 || code < 100 || code > 599) {
		snprintf(err, errlen, "the answer is not HTTP");
		return -EPROTO;
	}
	hdr_end = strstr(data, "\r\n\r\n");
	if (!hdr_end) {
		snprintf(err, errlen, "the HTTP answer ends inside its headers");
		return -EPROTO;
	}
	blen = in->len - (hdr_end + 4 - data);
	cl = strcasestr(data, "\r\nContent-Length:");
	if (cl && cl < hdr_end) {
		unsigned long long v = strtoull(cl + 17, &end, 10);

		if (v > blen) {
			snprintf(err, errlen, "the HTTP answer is shorter than its Content-Length");
			return -EPROTO;
		}
		blen = v;
	}
	if (!buf_append(body, hdr_end + 4, blen)) { /* buf_append keeps a NUL after the data */
		snprintf(err, errlen, "the HTTP answer is too large");
		return -EPROTO;
	}
	*status = code;
	return 0;
}

int http_get(const char *url, const char *accept, int timeout_ms, unsigned int *status,
	     struct buf *body, char *err, size_t errlen)
{
	char host[256], port[8], hostport[300];
	const char *path;
	uint64_t deadline;
	struct buf req, in;
	int fd, rc;

	rc = parse_url(url, host, sizeof(host), port, sizeof(port), &path, err, errlen);
	if (rc)
		return rc;
	deadline = mono_ms() + (timeout_ms > 0 ? timeout_ms : 0);
	fd = dial(host, port, deadline, err, errlen);
	if (fd < 0)
		return fd;
	snprintf(hostport, sizeof(hostport), strchr(host, ':') ? "[%s]:%s" : "%s:%s", host, port);
	buf_init(&req, 64 * 1024);
	buf_init(&in, HTTP_GET_MAX_BODY + 64 * 1024);
	if (!buf_printf(&req, "GET %s%s HTTP/1.0\r\nHost: %s\r\nUser-Agent: pgshadow\r\n",
			*path == '/' ? "" : "/", path, hostport) ||
	    (accept && !buf_printf(&req, "Accept: %s\r\n", accept)) ||
	    !buf_printf(&req, "Connection: close\r\n\r\n")) {
		snprintf(err, errlen, "URL too long");
		rc = -EINVAL;
		goto cleanup;
	}
	rc = send_all(fd, req.data, req.len, deadline);
	if (!rc) /* HTTP/1.0: the server closes when it has answered */
		rc = recv_all(fd, &in, HTTP_GET_MAX_BODY + 64 * 1024, deadline);
	if (rc == -EPROTO)
		snprintf(err, errlen, "the answer from %s is larger than %u bytes", hostport,
			 HTTP_GET_MAX_BODY);
	else if (rc)
		snprintf(err, errlen, "no answer from %s: %s", hostport, strerror(-rc));
	else
		rc = parse_answer(&in, status, body, err, errlen);
cleanup:
	close(fd);
	buf_free(&req);
	buf_free(&in);
	return rc;
}
