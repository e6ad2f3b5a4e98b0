/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * http: the agent's HTTP endpoint on libmicrohttpd (its own thread): GET /metrics
 * (Prometheus text format 0.0.4), GET /readiness (the readiness report, text or JSON) and
 * GET /healthz; and the tiny HTTP/1.0 client `pgshadow readiness` fetches the report
 * with. A shell: reads stats, touches sockets.
 */
#ifndef PGSHADOW_HTTP_H
#define PGSHADOW_HTTP_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

#include "buf.h"
#include "stats.h"
#include "webauth.h"

/*
 * Parses "HOST:PORT" or "[IPv6]:PORT" (HOST a numeric address; "localhost" means
 * 127.0.0.1) into *ss. Returns 0, or -EINVAL with a reason in err.
 */
int http_parse_listen(const char *s, struct sockaddr_storage *ss, socklen_t *len, char *err,
		      size_t errlen);

/*
 * GET /readiness: appends the readiness report, evaluated afresh, to out — the text
 * report (readiness_render_text) or, when json, readiness_render_json. Returns 0 or a
 * negative errno. Called on the HTTP thread, concurrently with capture and replay.
 */
typedef int (*http_readiness_fn)(void *ctx, const char *database, bool json, struct buf *out);

/* Renders the landing page (landing.h) into out; negative errno. The HTTP thread. */
typedef int (*http_landing_fn)(void *ctx, struct buf *out);

/*
 * GET /queries: appends the per-statement comparison as JSON (querystats_render_json)
 * for the query string's database, sort (impact, calls, ratio, errors) and limit (NULL:
 * not given). Returns 0, -EINVAL with a reason in err (the client's mistake: 400), or
 * another negative errno. The HTTP thread.
 */
typedef int (*http_queries_fn)(void *ctx, const char *database, const char *sort, const char *limit,
			       struct buf *out, char *err, size_t errlen);

struct http_config {
	const char *listen;	     /* IPv4:PORT or [IPv6]:PORT (metrics_listen) */
	struct stats *stats;	     /* must outlive the server */
	const char *version;	     /* mirror_build_info{version} */
	http_readiness_fn readiness; /* NULL: /readiness answers 404 (no --mirror) */
	void *readiness_ctx;
	http_landing_fn landing; /* GET /; NULL: 404 */
	void *landing_ctx;
	http_queries_fn queries; /* GET /queries; NULL: 404 */
	void *queries_ctx;
	const char *tls_cert_pem; /* web_tls_cert_file's contents: HTTPS (NULL: plain) */
	const char *tls_key_pem;
	struct webauth *auth; /* web_basic_auth_file's users (NULL: none); the HTTP thread
			       * uses it until http_stop */
};

/*
 * Starts serving. GET /readiness answers 200 with text/plain; charset=utf-8, or with
 * application/json when the request says Accept: application/json or ?format=json
 * (?format=text forces text; another format is a 400); the verdict is in the body.
 * Returns NULL with a one-line reason in err.
 */
struct http *http_start(const struct http_config *cfg, char *err, size_t errlen);

/* Stops the server thread and frees. NULL-safe. */
void http_stop(struct http *h);

/* ---- the client ---- */

#define HTTP_GET_MAX_BODY (16u << 20) /* a longer answer is an error */

/*
 * GET url ("http://HOST[:PORT][/PATH[?QUERY]]"; HOST a name, an IPv4 address or
 * [IPv6]; PORT 80 by default; an empty path is "/") over HTTP/1.0 with the given Accept
 * header (NULL: none), giving up after timeout_ms in all. On success returns 0 with the
 * status code in *status and the body appended to body (NUL-terminated). Otherwise
 * returns a negative errno with one line in err: a malformed or non-http URL (-EINVAL),
 * a name that does not resolve, a refused or timed-out connection, an answer that is not
 * HTTP or is larger than HTTP_GET_MAX_BODY (-EPROTO).
 */
int http_get(const char *url, const char *accept, int timeout_ms, unsigned int *status,
	     struct buf *body, char *err, size_t errlen);

#endif /* PGSHADOW_HTTP_H */
