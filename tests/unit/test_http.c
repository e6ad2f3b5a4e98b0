// SPDX-License-Identifier: BSD-2-Clause
/* http: the server's routes, statuses and errors, Basic authentication, start failures;
 * the client's URLs, network errors and answers. Real sockets on loopback: the server is
 * driven by the client (and by raw requests), the client by a scripted fake server. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <pthread.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <cmocka.h>
#include "peer.h"

#include "buf.h"
#include "http.h"
#include "stats.h"
#include "webauth.h"

/* htpasswd -B -C 4 style, password "s3cret" (as in test_webauth) */
#define ALICE "alice:$2b$04$abcdefghijklmnopqrstuuLZYjhNQAOdpbzt4WxWlUHjv1wsyH5DG\n"

/* ---- helpers ---- */

static struct http *start(struct http_config *cfg, const char *fmt, uint16_t *port)
{
	char listen[64], err[256];
	struct http *h = NULL;
	int i;

	for (i = 0; i < 20 && !h; i++) {
		*port = closed_port();
		snprintf(listen, sizeof(listen), fmt, *port);
		cfg->listen = listen;
		err[0] = '\0';
		h = http_start(cfg, err, sizeof(err));
	}
	if (!h)
		fail_msg("http_start: %s", err);
	cfg->listen = NULL;
	return h;
}

/* http_get of http://127.0.0.1:port<path>; returns the body (static), status in *status. */
static const char *get(uint16_t port, const char *path, const char *accept, unsigned int *status)
{
	static char text[1 << 16];
	char url[256], err[256] = "";
	struct buf body;
	int rc;

	snprintf(url, sizeof(url), "http://127.0.0.1:%u%s", port, path);
	buf_init(&body, 1 << 20);
	*status = 0;
	rc = http_get(url, accept, 5000, status, &body, err, sizeof(err));
	if (rc)
		fail_msg("GET %s: %d %s", url, rc, err);
	assert_true(body.len < sizeof(text));
	memcpy(text, body.data ? body.data : "", body.len);
	text[body.len] = '\0';
	buf_free(&body);
	return text;
}

/* Sends a raw request to 127.0.0.1:port and returns the whole answer (static). */
static const char *raw(uint16_t port, const char *request)
{
	static char text[1 << 16];
	struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons(port)};
	struct timeval tv = {.tv_sec = 5};
	size_t len = 0;
	ssize_t n;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	assert_int_equal(connect(fd, (struct sockaddr *)&in, sizeof(in)), 0);
	setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
	assert_int_equal(send(fd, request, strlen(request), MSG_NOSIGNAL),
			 (ssize_t)strlen(request));
	while (len < sizeof(text) - 1 && (n = recv(fd, text + len, sizeof(text) - 1 - len, 0)) > 0)
		len += n;
	close(fd);
	text[len] = '\0';
	return text;
}

static void assert_contains(const char *text, const char *part)
{
	if (!strstr(text, part))
		fail_msg("missing \"%s\" in:\n%s", part, text);
}

/* ---- the server's callbacks: answers set by the test, arguments recorded ---- */

struct calls {
	int rc; /* what the callback returns */
	const char *body;
	char database[64], sort[64], limit[64];
	int json;
	int n;
};

static void record(char *dst, const char *v)
{
	snprintf(dst, 64, "%s", v ? v : "(null)");
}

static int readiness_cb(void *ctx, const char *database, bool json, struct buf *out)
{
	struct calls *c = ctx;

	c->n++;
	record(c->database, database);
	c->json = json;
	buf_printf(out, "%s", c->body);
	return c->rc;
}

static int landing_cb(void *ctx, struct buf *out)
{
	struct calls *c = ctx;

	c->n++;
	buf_printf(out, "%s", c->body);
	return c->rc;
}

static int queries_cb(void *ctx, const char *database, const char *sort, const char *limit,
		      struct buf *out, char *err, size_t errlen)
{
	struct calls *c = ctx;

	c->n++;
	record(c->database, database);
	record(c->sort, sort);
	record(c->limit, limit);
	if (c->rc == -EINVAL)
		snprintf(err, errlen, "sort must be impact, calls, ratio or errors");
	buf_printf(out, "%s", c->body);
	return c->rc;
}

/* ---- the server ---- */

static void test_server_metrics_and_healthz(void **state)
{
	struct stats_config scfg = {.max_databases = 4};
	struct stats *st = stats_new(&scfg);
	struct http_config cfg = {.stats = st, .version = "9.9-\"test\""};
	unsigned int status;
	const char *body, *p;
	struct rlimit rl;
	char line[128];
	double start_s;
	struct timespec now;
	uint16_t port;
	struct http *h;

	(void)state;
	stats_source_request(stats_db(st, "app"), 1000000, false, "");
	h = start(&cfg, "127.0.0.1:%u", &port);

	body = get(port, "/healthz", NULL, &status);
	assert_int_equal(status, 200);
	assert_string_equal(body, "ok\n");

	body = get(port, "/metrics", NULL, &status);
	assert_int_equal(status, 200);
	assert_contains(body, "mirror_source_requests_total{database=\"app\"} 1\n");
	assert_contains(body, "mirror_build_info{version=\"9.9-\\\"test\\\"\"} 1\n");
	/* the process block is read from /proc and getrlimit at scrape time */
	assert_int_equal(getrlimit(RLIMIT_NOFILE, &rl), 0);
	snprintf(line, sizeof(line), "process_max_fds %llu\n", (unsigned long long)rl.rlim_cur);
	assert_contains(body, line);
	assert_null(strstr(body, "process_open_fds 0\n"));
	p = strstr(body, "\nprocess_start_time_seconds ");
	assert_non_null(p);
	start_s = strtod(p + strlen("\nprocess_start_time_seconds "), NULL);
	clock_gettime(CLOCK_REALTIME, &now);
	assert_true(start_s <= now.tv_sec + 2);
	assert_true(start_s >= now.tv_sec - 3600); /* this test started it moments ago */

	/* HEAD is served like GET; other methods are refused */
	body = raw(port, "HEAD /healthz HTTP/1.0\r\n\r\n");
	assert_true(!strncmp(body, "HTTP/1.1 200 ", 13) || !strncmp(body, "HTTP/1.0 200 ", 13));
	body = raw(port, "POST /metrics HTTP/1.0\r\nContent-Length: 0\r\n\r\n");
	assert_contains(body, " 405 ");
	assert_contains(body, "\r\n\r\nonly GET\n");
	body = raw(port, "DELETE /healthz HTTP/1.0\r\n\r\n");
	assert_contains(body, " 405 ");

	body = get(port, "/nowhere", NULL, &status);
	assert_int_equal(status, 404);
	assert_string_equal(body, "not found: try /metrics, /readiness, /queries or /healthz\n");
	body = get(port, "/metrics/", NULL, &status); /* paths match exactly */
	assert_int_equal(status, 404);

	http_stop(h);
	stats_free(st);
}

static void test_server_without_handlers(void **state)
{
	struct http_config cfg = {.version = "t"};
	unsigned int status;
	const char *body;
	uint16_t port;
	struct http *h;

	(void)state;
	h = start(&cfg, "127.0.0.1:%u", &port);
	body = get(port, "/readiness", NULL, &status);
	assert_int_equal(status, 404);
	assert_string_equal(body, "no readiness report: this agent only observes (start it with "
				  "--mirror)\n");
	body = get(port, "/queries", NULL, &status);
	assert_int_equal(status, 404);
	assert_string_equal(body, "no per-statement comparison: start the agent with --mirror and "
				  "max_query_stats above 0\n");
	body = get(port, "/", NULL, &status);
	assert_int_equal(status, 404);
	assert_string_equal(body, "not found: try /metrics, /readiness, /queries or /healthz\n");
	http_stop(h);
}

static void test_server_readiness(void **state)
{
	struct calls c = {.body = "verdict: READY\n"};
	struct http_config cfg = {.version = "t", .readiness = readiness_cb, .readiness_ctx = &c};
	unsigned int status;
	const char *body;
	uint16_t port;
	struct http *h;

	(void)state;
	h = start(&cfg, "127.0.0.1:%u", &port);

	body = get(port, "/readiness", NULL, &status);
	assert_int_equal(status, 200);
	assert_string_equal(body, "verdict: READY\n");
	assert_string_equal(c.database, "(null)");
	assert_int_equal(c.json, 0);

	get(port, "/readiness?database=app&format=json", NULL, &status);
	assert_int_equal(status, 200);
	assert_string_equal(c.database, "app");
	assert_int_equal(c.json, 1);

	get(port, "/readiness", "text/html, application/json;q=0.9", &status);
	assert_int_equal(c.json, 1);
	get(port, "/readiness?format=text", "application/json", &status); /* format wins */
	assert_int_equal(status, 200);
	assert_int_equal(c.json, 0);
	get(port, "/readiness", "text/plain", &status);
	assert_int_equal(c.json, 0);
	assert_int_equal(c.n, 5);

	body = get(port, "/readiness?format=xml", NULL, &status);
	assert_int_equal(status, 400);
	assert_string_equal(body, "format must be text or json\n");
	assert_int_equal(c.n, 5); /* refused before the report is evaluated */

	c.rc = -ENOENT;
	body = get(port, "/readiness?database=nosuch", NULL, &status);
	assert_int_equal(status, 404);
	assert_contains(body, "no such database");
	assert_string_equal(c.database, "nosuch");

	c.rc = -EIO; /* a failed render is not passed on as a report */
	body = get(port, "/readiness", NULL, &status);
	assert_int_equal(status, 500);
	assert_string_equal(body, "cannot render the readiness report\n");
	http_stop(h);
}

static void test_server_queries_and_landing(void **state)
{
	struct calls q = {.body = "[{\"calls\":3}]"}, l = {.body = "<!doctype html><p>hi"};
	struct http_config cfg = {.version = "t",
				  .queries = queries_cb,
				  .queries_ctx = &q,
				  .landing = landing_cb,
				  .landing_ctx = &l};
	unsigned int status;
	const char *body;
	uint16_t port;
	struct http *h;

	(void)state;
	h = start(&cfg, "127.0.0.1:%u", &port);

	body = get(port, "/queries?database=app&sort=calls&limit=3", NULL, &status);
	assert_int_equal(status, 200);
	assert_string_equal(body, "[{\"calls\":3}]");
	assert_string_equal(q.database, "app");
	assert_string_equal(q.sort, "calls");
	assert_string_equal(q.limit, "3");
	get(port, "/queries", NULL, &status);
	assert_string_equal(q.sort, "(null)");
	assert_string_equal(q.limit, "(null)");

	q.rc = -EINVAL; /* the client's mistake, with the reason */
	body = get(port, "/queries?sort=speed", NULL, &status);
	assert_int_equal(status, 400);
	assert_string_equal(body, "bad request: sort must be impact, calls, ratio or errors\n");
	q.rc = -ENOMEM;
	body = get(port, "/queries", NULL, &status);
	assert_int_equal(status, 500);
	assert_string_equal(body, "cannot render the statements\n");

	body = get(port, "", NULL, &status);
	assert_int_equal(status, 200);
	assert_string_equal(body, "<!doctype html><p>hi");
	assert_int_equal(l.n, 1);
	l.rc = -EIO;
	body = get(port, "/", NULL, &status);
	assert_int_equal(status, 500);
	assert_string_equal(body, "cannot render the page\n");
	http_stop(h);
}

static void test_server_basic_auth(void **state)
{
	char err[160] = "";
	struct webauth *w = webauth_parse(ALICE, err, sizeof(err));
	struct http_config cfg = {.version = "t", .auth = w};
	unsigned int status;
	const char *body;
	uint16_t port;
	struct http *h;

	(void)state;
	assert_non_null(w);
	h = start(&cfg, "127.0.0.1:%u", &port);

	/* no credentials: every path, known or not, asks for them */
	body = get(port, "/healthz", NULL, &status);
	assert_int_equal(status, 401);
	assert_string_equal(body, "unauthorized: this agent's endpoints need a user and password "
				  "(web_basic_auth_file)\n");
	body = raw(port, "GET /nowhere HTTP/1.0\r\n\r\n");
	assert_contains(body, " 401 ");
	assert_contains(body, "WWW-Authenticate: Basic realm=\"pgshadow\"");

	body = raw(port, "GET /healthz HTTP/1.0\r\nAuthorization: Basic YWxpY2U6d3Jvbmc=\r\n\r\n");
	assert_contains(body, " 401 "); /* alice:wrong */
	body = raw(port, "GET /healthz HTTP/1.0\r\nAuthorization: Basic YWxpY2U=\r\n\r\n");
	assert_contains(body, " 401 "); /* "alice", no password */

	body = raw(port, "GET /healthz HTTP/1.0\r\nAuthorization: Basic YWxpY2U6czNjcmV0\r\n\r\n");
	assert_contains(body, " 200 "); /* alice:s3cret */
	assert_contains(body, "\r\n\r\nok\n");
	body = raw(port, "GET /nowhere HTTP/1.0\r\nAuthorization: Basic YWxpY2U6czNjcmV0\r\n\r\n");
	assert_contains(body, " 404 ");
	http_stop(h);
	webauth_free(w);
}

static void test_server_ipv6(void **state)
{
	struct http_config cfg = {.version = "t"};
	char url[128], err[256] = "";
	unsigned int status = 0;
	struct buf body;
	uint16_t port;
	struct http *h;

	(void)state;
	h = start(&cfg, "[::1]:%u", &port);
	snprintf(url, sizeof(url), "http://[::1]:%u/healthz", port);
	buf_init(&body, 1024);
	assert_int_equal(http_get(url, NULL, 5000, &status, &body, err, sizeof(err)), 0);
	assert_int_equal(status, 200);
	assert_string_equal(body.data, "ok\n");
	buf_free(&body);
	http_stop(h);
}

static void test_server_start_errors(void **state)
{
	struct http_config cfg = {.version = "t"};
	char listen[64], err[256], want[128];
	uint16_t port;
	int fd;

	(void)state;
	http_stop(NULL); /* NULL-safe */

	cfg.listen = "127.0.0.1";
	assert_null(http_start(&cfg, err, sizeof(err)));
	assert_contains(err, "invalid listen address '127.0.0.1'");

	/* a port somebody else listens on */
	fd = listen_on(AF_INET, 1, &port);
	snprintf(listen, sizeof(listen), "127.0.0.1:%u", port);
	cfg.listen = listen;
	assert_null(http_start(&cfg, err, sizeof(err)));
	snprintf(want, sizeof(want), "cannot listen on 127.0.0.1:%u for HTTP: ", port);
	assert_true(!strncmp(err, want, strlen(want)));
	assert_contains(err, strerror(EADDRINUSE));
	close(fd);

	/* HTTPS with a certificate and key that are not PEM */
	snprintf(listen, sizeof(listen), "127.0.0.1:%u", closed_port());
	cfg.tls_cert_pem = "not a certificate";
	cfg.tls_key_pem = "not a key";
	err[0] = '\0';
	assert_null(http_start(&cfg, err, sizeof(err)));
	snprintf(want, sizeof(want), "cannot listen on %s for HTTPS: ", listen);
	assert_true(!strncmp(err, want, strlen(want)));
}

static void test_parse_listen_refusals(void **state)
{
	static const char *const bad[] = {
	    "[]:80",	    /* no address */
	    "[1.2.3.4]:80", /* brackets hold IPv6 */
	    "[::1]",	    /* no port */
	    "[::1]:http",   /* names are not ports */
	    "[0000:0000:0000:0000:0000:0000:0000:0000:0000:0000:0000:0000:0001]:80",
	    "1111111111.2222222222.3333333333.4444444444.5555555555.6666666666:80",
	    ":80",
	    "127.0.0.1:-1",
	    "127.0.0.1:80x",
	};
	struct sockaddr_storage ss;
	socklen_t len = 0;
	char err[256];
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err[0] = '\0';
		if (http_parse_listen(bad[i], &ss, &len, err, sizeof(err)) != -EINVAL)
			fail_msg("accepted %s", bad[i]);
		assert_contains(err, "invalid listen address");
	}
	assert_int_equal(http_parse_listen("[::1]:9930", &ss, &len, err, sizeof(err)), 0);
	assert_int_equal(ss.ss_family, AF_INET6);
	assert_int_equal(len, sizeof(struct sockaddr_in6));
	assert_int_equal(ntohs(((struct sockaddr_in6 *)&ss)->sin6_port), 9930);
}

/* ---- the client, against a scripted server ---- */

enum fake_mode {
	FAKE_REPLY, /* read the request, send the reply, close */
	FAKE_HOLD,  /* read until the client closes; never answer */
	FAKE_RESET, /* read the request, then reset the connection */
	FAKE_FLOOD, /* read the request, send flood bytes of body */
};

struct fake {
	int lfd;
	uint16_t port;
	pthread_t thread;
	enum fake_mode mode;
	const char *reply;
	size_t flood;
	char request[1 << 17];
	size_t req_len;
};

static void *fake_run(void *arg)
{
	struct fake *f = arg;
	struct linger lg = {.l_onoff = 1, .l_linger = 0};
	ssize_t n;
	int fd = accept(f->lfd, NULL, NULL);

	if (fd < 0)
		return NULL;
	while (f->req_len < sizeof(f->request) - 1 &&
	       (f->mode == FAKE_HOLD || !strstr(f->request, "\r\n\r\n")) &&
	       (n = recv(fd, f->request + f->req_len, sizeof(f->request) - 1 - f->req_len, 0)) >
		   0) {
		f->req_len += n;
		f->request[f->req_len] = '\0';
	}
	if (f->mode == FAKE_REPLY) {
		send(fd, f->reply, strlen(f->reply), MSG_NOSIGNAL);
	} else if (f->mode == FAKE_RESET) {
		setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
	} else if (f->mode == FAKE_FLOOD) {
		static char chunk[65536];
		size_t left = f->flood;

		memset(chunk, 'x', sizeof(chunk));
		send(fd, "HTTP/1.0 200 OK\r\n\r\n", 19, MSG_NOSIGNAL);
		while (left && (n = send(fd, chunk, left < sizeof(chunk) ? left : sizeof(chunk),
					 MSG_NOSIGNAL)) > 0)
			left -= n;
	}
	close(fd);
	return NULL;
}

static struct fake *fake_start(enum fake_mode mode, const char *reply)
{
	struct fake *f = calloc(1, sizeof(*f));

	assert_non_null(f);
	f->mode = mode;
	f->reply = reply;
	f->lfd = listen_on(AF_INET, 4, &f->port);
	assert_int_equal(pthread_create(&f->thread, NULL, fake_run, f), 0);
	return f;
}

/* Joins the fake server; its request stays readable until fake_free. */
static void fake_join(struct fake *f)
{
	pthread_join(f->thread, NULL);
	close(f->lfd);
}

/* http_get of http://127.0.0.1:<fake's port><path> with a body of at most max bytes. */
static int fake_get(struct fake *f, const char *path, const char *accept, int timeout_ms,
		    unsigned int *status, struct buf *body, size_t max, char *err, size_t errlen)
{
	char url[256];
	int rc;

	snprintf(url, sizeof(url), "http://127.0.0.1:%u%s", f->port, path);
	buf_init(body, max);
	err[0] = '\0';
	rc = http_get(url, accept, timeout_ms, status, body, err, errlen);
	fake_join(f);
	return rc;
}

static void test_client_request_and_answer(void **state)
{
	struct fake *f;
	unsigned int status = 0;
	struct buf body;
	char err[256];

	(void)state;
	/* Content-Length cuts the body; any status from 100 to 599 is an answer */
	f = fake_start(FAKE_REPLY,
		       "HTTP/1.1 503 Service Unavailable\r\nContent-Length: 3\r\n\r\nabcdef");
	assert_int_equal(fake_get(f, "?database=app", "application/json", 5000, &status, &body,
				  1024, err, sizeof(err)),
			 0);
	assert_int_equal(status, 503);
	assert_int_equal(body.len, 3);
	assert_string_equal(body.data, "abc");
	/* an empty path asks for "/"; Host, Accept and Connection: close are sent */
	assert_true(!strncmp(f->request, "GET /?database=app HTTP/1.0\r\n", 29));
	assert_contains(f->request, "\r\nAccept: application/json\r\n");
	assert_contains(f->request, "\r\nConnection: close\r\n\r\n");
	{
		char host[64];

		snprintf(host, sizeof(host), "\r\nHost: 127.0.0.1:%u\r\n", f->port);
		assert_contains(f->request, host);
	}
	buf_free(&body);
	free(f);

	/* no Content-Length: the body is all that comes before the close; no Accept */
	f = fake_start(FAKE_REPLY, "HTTP/1.0 200 OK\r\nServer: x\r\n\r\nall of it\n");
	assert_int_equal(
	    fake_get(f, "/readiness", NULL, 5000, &status, &body, 1024, err, sizeof(err)), 0);
	assert_int_equal(status, 200);
	assert_string_equal(body.data, "all of it\n");
	assert_true(!strncmp(f->request, "GET /readiness HTTP/1.0\r\n", 25));
	assert_null(strstr(f->request, "Accept:"));
	buf_free(&body);
	free(f);
}

static void expect_bad_answer(const char *reply, size_t max, const char *why)
{
	struct fake *f = fake_start(FAKE_REPLY, reply);
	unsigned int status = 0;
	struct buf body;
	char err[256];

	assert_int_equal(fake_get(f, "/", NULL, 5000, &status, &body, max, err, sizeof(err)),
			 -EPROTO);
	assert_string_equal(err, why);
	assert_int_equal(status, 0);
	buf_free(&body);
	free(f);
}

static void test_client_bad_answers(void **state)
{
	(void)state;
	expect_bad_answer("SSH-2.0-OpenSSH_9.2\r\n\r\n", 1024, "the answer is not HTTP");
	expect_bad_answer("HTTP/1.0 600 Odd\r\n\r\n", 1024, "the answer is not HTTP");
	expect_bad_answer("HTTP/1.0 99 Odd\r\n\r\n", 1024, "the answer is not HTTP");
	expect_bad_answer("HTTP/1.0", 1024, "the answer is not HTTP");
	expect_bad_answer("", 1024, "the answer is not HTTP");
	expect_bad_answer("HTTP/1.0 200 OK\r\nServer: x\r\n", 1024,
			  "the HTTP answer ends inside its headers");
	expect_bad_answer("HTTP/1.0 200 OK\r\ncontent-length: 10\r\n\r\nabc", 1024,
			  "the HTTP answer is shorter than its Content-Length");
	/* the caller's body buffer bounds the body (and its NUL) */
	expect_bad_answer("HTTP/1.0 200 OK\r\n\r\n0123456789", 10, "the HTTP answer is too large");
}

/* The body buffer needs room for the body and a NUL, no more. */
static void test_client_body_fits(void **state)
{
	struct fake *f = fake_start(FAKE_REPLY, "HTTP/1.0 200 OK\r\n\r\n0123456789");
	unsigned int status = 0;
	struct buf body;
	char err[256];

	(void)state;
	assert_int_equal(fake_get(f, "/", NULL, 5000, &status, &body, 11, err, sizeof(err)), 0);
	assert_int_equal(status, 200);
	assert_int_equal(body.len, 10);
	assert_string_equal(body.data, "0123456789");
	buf_free(&body);
	free(f);

	/* an empty body is an empty string */
	f = fake_start(FAKE_REPLY, "HTTP/1.0 204 No Content\r\n\r\n");
	assert_int_equal(fake_get(f, "/", NULL, 5000, &status, &body, 1, err, sizeof(err)), 0);
	assert_int_equal(status, 204);
	assert_int_equal(body.len, 0);
	assert_non_null(body.data);
	assert_string_equal(body.data, "");
	buf_free(&body);
	free(f);
}

static void test_client_too_large(void **state)
{
	struct fake *f = fake_start(FAKE_FLOOD, NULL);
	unsigned int status = 0;
	struct buf body;
	char err[256], want[128];

	(void)state;
	f->flood = HTTP_GET_MAX_BODY + 64 * 1024;
	assert_int_equal(
	    fake_get(f, "/", NULL, 10000, &status, &body, HTTP_GET_MAX_BODY, err, sizeof(err)),
	    -EPROTO);
	snprintf(want, sizeof(want), "the answer from 127.0.0.1:%u is larger than %u bytes",
		 f->port, HTTP_GET_MAX_BODY);
	assert_string_equal(err, want);
	assert_int_equal(body.len, 0);
	buf_free(&body);
	free(f);

	/* a body of HTTP_GET_MAX_BODY is an answer, in the buffer `pgshadow readiness` gives
	 * (HTTP_GET_MAX_BODY + 1: the body and its NUL) */
	f = fake_start(FAKE_FLOOD, NULL);
	f->flood = HTTP_GET_MAX_BODY;
	assert_int_equal(
	    fake_get(f, "/", NULL, 10000, &status, &body, HTTP_GET_MAX_BODY + 1, err, sizeof(err)),
	    0);
	assert_int_equal(status, 200);
	assert_int_equal(body.len, HTTP_GET_MAX_BODY);
	assert_int_equal(body.data[HTTP_GET_MAX_BODY - 1], 'x');
	assert_int_equal(body.data[HTTP_GET_MAX_BODY], '\0');
	buf_free(&body);
	free(f);

	/* one byte more does not fit that buffer */
	f = fake_start(FAKE_FLOOD, NULL);
	f->flood = HTTP_GET_MAX_BODY + 1;
	status = 0;
	assert_int_equal(
	    fake_get(f, "/", NULL, 10000, &status, &body, HTTP_GET_MAX_BODY + 1, err, sizeof(err)),
	    -EPROTO);
	assert_string_equal(err, "the HTTP answer is too large");
	assert_int_equal(status, 0);
	buf_free(&body);
	free(f);
}

static void test_client_no_answer(void **state)
{
	struct fake *f = fake_start(FAKE_HOLD, NULL);
	unsigned int status = 0;
	struct buf body;
	char err[256], want[128];
	struct timespec t0, t1;
	long ms;

	(void)state;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	assert_int_equal(fake_get(f, "/slow", NULL, 300, &status, &body, 1024, err, sizeof(err)),
			 -ETIMEDOUT);
	clock_gettime(CLOCK_MONOTONIC, &t1);
	ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
	assert_true(ms >= 250 && ms < 3000);
	snprintf(want, sizeof(want), "no answer from 127.0.0.1:%u: %s", f->port,
		 strerror(ETIMEDOUT));
	assert_string_equal(err, want);
	assert_true(!strncmp(f->request, "GET /slow HTTP/1.0\r\n", 20)); /* it was sent */
	buf_free(&body);
	free(f);

	/* a reset instead of an answer */
	f = fake_start(FAKE_RESET, NULL);
	assert_int_equal(fake_get(f, "/", NULL, 5000, &status, &body, 1024, err, sizeof(err)),
			 -ECONNRESET);
	snprintf(want, sizeof(want), "no answer from 127.0.0.1:%u: %s", f->port,
		 strerror(ECONNRESET));
	assert_string_equal(err, want);
	buf_free(&body);
	free(f);
}

static void test_client_url_too_long(void **state)
{
	size_t n = 70 * 1024;
	char *path = malloc(n + 1);
	struct fake *f = fake_start(FAKE_HOLD, NULL);
	unsigned int status = 0;
	struct buf body;
	char err[256];

	(void)state;
	path[0] = '/';
	memset(path + 1, 'a', n - 1);
	path[n] = '\0';
	{
		char *url = malloc(n + 64);
		int rc;

		snprintf(url, n + 64, "http://127.0.0.1:%u%s", f->port, path);
		buf_init(&body, 1024);
		rc = http_get(url, NULL, 5000, &status, &body, err, sizeof(err));
		fake_join(f);
		assert_int_equal(rc, -EINVAL);
		assert_string_equal(err, "URL too long");
		assert_int_equal(f->req_len, 0); /* nothing was sent */
		free(url);
	}
	buf_free(&body);
	free(path);
	free(f);
}

static void test_client_connect_errors(void **state)
{
	unsigned int status = 0;
	char url[128], err[256], want[160];
	struct buf body;
	uint16_t port = closed_port();
	int fill[3], lfd, i;

	(void)state;
	buf_init(&body, 1024);

	snprintf(url, sizeof(url), "http://127.0.0.1:%u/", port);
	assert_int_equal(http_get(url, NULL, 2000, &status, &body, err, sizeof(err)),
			 -ECONNREFUSED);
	snprintf(want, sizeof(want), "cannot connect to 127.0.0.1 port %u: %s", port,
		 strerror(ECONNREFUSED));
	assert_string_equal(err, want);

	assert_int_equal(http_get("http://pgshadow-test.invalid:9930/readiness", NULL, 2000,
				  &status, &body, err, sizeof(err)),
			 -EHOSTUNREACH);
	assert_true(!strncmp(err, "cannot resolve pgshadow-test.invalid: ", 38));

	/* a listener whose accept queue is full drops the SYN: the connect times out */
	lfd = listen_on(AF_INET, 0, &port);
	for (i = 0; i < 3; i++) {
		struct sockaddr_in in = {.sin_family = AF_INET, .sin_port = htons(port)};

		in.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
		connect(fill[i], (struct sockaddr *)&in, sizeof(in));
	}
	usleep(50000);
	snprintf(url, sizeof(url), "http://127.0.0.1:%u/", port);
	assert_int_equal(http_get(url, NULL, 300, &status, &body, err, sizeof(err)), -ETIMEDOUT);
	snprintf(want, sizeof(want), "cannot connect to 127.0.0.1 port %u: %s", port,
		 strerror(ETIMEDOUT));
	assert_string_equal(err, want);
	for (i = 0; i < 3; i++)
		close(fill[i]);
	close(lfd);
	assert_int_equal(status, 0);
	assert_int_equal(body.len, 0);
	buf_free(&body);
}

static void test_client_bad_urls(void **state)
{
	static const char *const bad[] = {
	    "ftp://127.0.0.1/",	    "127.0.0.1:9930",	"http://",
	    "http:///readiness",    "http://:9930/",	"http://host:/",
	    "http://host:99999/",   "http://host:0/",	"http://host:12a/",
	    "http://host:1234567/", "http://host#frag", "http://[::1/",
	    "http://[::1]x/",	    "http://[::1]:/",	"http://[]:80/",
	};
	char err[256], longhost[400];
	unsigned int status = 0;
	struct buf body;
	size_t i;

	(void)state;
	buf_init(&body, 1024);
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err[0] = '\0';
		if (http_get(bad[i], NULL, 1000, &status, &body, err, sizeof(err)) != -EINVAL)
			fail_msg("accepted %s", bad[i]);
		assert_string_equal(err, "not an http://HOST[:PORT][/PATH] URL (HOST a name, an "
					 "IPv4 address or [IPv6], PORT 1-65535)");
	}
	snprintf(longhost, sizeof(longhost), "http://%0300d/", 0); /* longer than a name */
	assert_int_equal(http_get(longhost, NULL, 1000, &status, &body, err, sizeof(err)), -EINVAL);
	assert_int_equal(http_get("HTTPS://127.0.0.1:9930/readiness", NULL, 1000, &status, &body,
				  err, sizeof(err)),
			 -EINVAL);
	assert_string_equal(err, "https is not spoken by this client (plain HTTP/1.0): for an "
				 "agent with web_tls_cert_file, gate through Prometheus "
				 "(--prometheus) or curl");
	assert_int_equal(status, 0);
	assert_int_equal(body.len, 0);
	buf_free(&body);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_server_metrics_and_healthz),
	    cmocka_unit_test(test_server_without_handlers),
	    cmocka_unit_test(test_server_readiness),
	    cmocka_unit_test(test_server_queries_and_landing),
	    cmocka_unit_test(test_server_basic_auth),
	    cmocka_unit_test(test_server_ipv6),
	    cmocka_unit_test(test_server_start_errors),
	    cmocka_unit_test(test_parse_listen_refusals),
	    cmocka_unit_test(test_client_request_and_answer),
	    cmocka_unit_test(test_client_bad_answers),
	    cmocka_unit_test(test_client_body_fits),
	    cmocka_unit_test(test_client_too_large),
	    cmocka_unit_test(test_client_no_answer),
	    cmocka_unit_test(test_client_url_too_long),
	    cmocka_unit_test(test_client_connect_errors),
	    cmocka_unit_test(test_client_bad_urls),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
