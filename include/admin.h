/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * admin: the console. A PostgreSQL-protocol (v3, simple query) listener on a Unix socket
 * <unix_dir>/.s.PGSQL.<port> (file permissions are the access control) and optionally
 * on TCP, so `psql -h /run/pgshadow -p 6433 pgshadow -c 'SHOW MIRROR READINESS'` works,
 * as pgbouncer's console does.
 *
 * Two layers. The protocol core (struct admin_conn) is pure: bytes in, bytes out, the
 * data coming from a struct admin_provider, so tests drive it without sockets. The shell
 * (admin_start/admin_stop) owns one thread running a poll loop over non-blocking
 * sockets, at most max_connections clients, and calls the provider from that thread.
 *
 * Protocol. SSLRequest and GSSENCRequest are answered 'N' (so psql's default sslmode
 * works); any StartupMessage 3.x is accepted without authentication (any user and
 * database; a 3.x minor above 0 or _pq_ options get NegotiateProtocolVersion 3.0);
 * CancelRequest closes. Then AuthenticationOk, ParameterStatus (server_version
 * "15.0 (<version>)", server_encoding/client_encoding UTF8, DateStyle ISO,
 * integer_datetimes on, standard_conforming_strings on), BackendKeyData, ReadyForQuery.
 * A Query may hold several commands separated by ';'; commands are case-insensitive
 * and whitespace-tolerant. Each answers RowDescription (text 25, int8 20 for counts,
 * float8 701 for milliseconds), DataRows, CommandComplete "SHOW" (or "RESET"); the
 * Query ends with ReadyForQuery 'I'. An unknown command gets ErrorResponse 42601
 * naming SHOW HELP and the session stays usable; an empty Query gets
 * EmptyQueryResponse. Extended-protocol and function-call messages get a FATAL
 * ErrorResponse 0A000, anything else unexpected (unknown types, nonsense lengths,
 * unterminated strings, a message over ADMIN_MAX_MESSAGE) a FATAL 08P01, and the
 * connection closes once it is sent. Terminate closes.
 */
#ifndef PGSHADOW_ADMIN_H
#define PGSHADOW_ADMIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "buf.h"
#include "scram.h"
#include "stats.h"

#define ADMIN_MAX_MESSAGE (64u * 1024) /* largest frontend message, length field included */
#define ADMIN_USERS_MAX	  64	       /* admin_users, stats_users: OS users each */
#define ADMIN_MAX_STARTUP 10000u       /* largest startup packet (PostgreSQL's limit) */
#define ADMIN_OUT_HIGH	  (1u << 20)   /* stop answering while this much output waits */
#define ADMIN_MAX_REPLY	  (8u << 20)   /* one command's reply; beyond it: 54000 */
#define ADMIN_ARG_MAX	  63	       /* a command's argument: a database name */

/* A result set being built by a provider callback (rows of text values). */
struct admin_rows;

/*
 * Appends one row of n values, in the command's column order (see struct
 * admin_provider); a NULL value is SQL NULL; numbers are given as their decimal text.
 * Returns false (stop adding) when n is not the command's column count or the reply
 * grew past ADMIN_MAX_REPLY; the command then answers an error instead of the rows.
 */
bool admin_rows_add(struct admin_rows *rows, const char *const *values, size_t n);

/*
 * Where the console's data comes from. Callbacks run on the admin thread (the shell) or
 * the caller's (the core): they must be safe to call concurrently with capture and
 * replay. Each returns 0 or a negative errno (the command then answers XX000 naming
 * it). A NULL callback makes its command answer 0A000 "not available".
 */
struct admin_provider {
	void *ctx;	     /* passed to every callback */
	const char *version; /* "pgshadow <ver>": SHOW VERSION and server_version */

	/* SHOW MIRROR READINESS [database]: appends the text report (readiness_render_text)
	 * of the agent, or of one database (-ENOENT: none seen of that name); each line
	 * becomes one row of the single column "mirror_readiness". */
	int (*readiness)(void *ctx, const char *database, struct buf *text);

	/* SHOW MIRROR STATS and SHOW MIRRORS: copies up to cap databases' rows and returns
	 * how many there are (stats_db_rows has this contract). */
	size_t (*db_rows)(void *ctx, struct stats_db_row *out, size_t cap);

	/* SHOW MIRROR DATABASES: rows of (database, mirror_database, exposure) — each
	 * mirrored source database, the database its requests replay to, its exposure. */
	int (*databases)(void *ctx, struct admin_rows *rows);

	/* SHOW MIRROR SESSIONS: rows of (client, database, user, state, queue_length,
	 * mirrored_count, error_count, dropped_count) — one per mirrored source session:
	 * the client's "address:port", its database and user, the mirror connection's state
	 * (e.g. connecting, idle, active, backoff), items waiting in its queue, and its
	 * outcomes so far. Implemented by the replay engine. */
	int (*sessions)(void *ctx, struct admin_rows *rows);

	/* SHOW MIRROR POOLS: rows of (database, user, application_name, cl_active,
	 * cl_waiting, sv_active, sv_idle, sv_login, sv_pinned, maxwait_ms, pool_mode) — one
	 * per pool of mirror connections, PgBouncer's SHOW POOLS columns: sessions holding
	 * and waiting for a connection, connections borrowed, idle, being made and pinned,
	 * the first waiter's wait, and the pool mode (transaction). */
	int (*pools)(void *ctx, struct admin_rows *rows);

	/* SHOW MIRROR QUERIES [database]: rows of (database, query, regressed, source_calls,
	 * mirror_calls, source_p50_ms, source_p95_ms, source_p99_ms, mirror_p50_ms,
	 * mirror_p95_ms, mirror_p99_ms, p99_ratio, extra_ms, impact_ms, source_errors,
	 * mirror_errors, mirror_only_errors, mirror_only_sqlstate, mismatches, fingerprint,
	 * mirror_plan)
	 * — one per statement (querystats.h), regressions first by impact; database NULL:
	 * every database. */
	int (*queries)(void *ctx, const char *database, struct admin_rows *rows);

	/* RESET MIRROR STATS: restarts the readiness window (stats_readiness_reset). */
	int (*reset)(void *ctx);
};

/* ---- the protocol core (pure) ---- */

/* One client connection's protocol state. Owned by one thread. */
struct admin_conn;

/* A new connection, before its startup packet. pid/secret go into BackendKeyData. p
 * must outlive it. NULL on ENOMEM. */
struct admin_conn *admin_conn_new(const struct admin_provider *p, uint32_t pid, uint32_t secret);

/* A connection that may only read: RESET MIRROR STATS is refused (42501). The shell
 * sets it for the TCP listener's clients; the Unix socket's permissions are the
 * console's access control. */
void admin_conn_set_read_only(struct admin_conn *c, bool read_only);

/* NULL-safe. */
void admin_conn_free(struct admin_conn *c);

/* Bytes admin_conn_feed can take now (0 once closed). */
size_t admin_conn_space(const struct admin_conn *c);

/* The startup exchange is over (the client may send queries). */
bool admin_conn_started(const struct admin_conn *c);

/*
 * Takes len bytes of client input (len <= admin_conn_space; more is a protocol error)
 * and answers every complete message, appending the replies to out. It stops answering
 * while out holds ADMIN_OUT_HIGH bytes or more: the rest stays buffered, so call it
 * again with len 0 once out has been sent. Returns false when the connection must be
 * closed after out has been sent (Terminate, a fatal error, or out overflowed).
 */
bool admin_conn_feed(struct admin_conn *c, const void *in, size_t len, struct buf *out);

/* ---- the shell ---- */

/*
 * Authentication of the TCP listener (admin_auth_file): SCRAM-SHA-256 against users, then
 * the role decides — admin_roles may do everything, stats_roles only SHOW, anyone else is
 * refused (28000) after authenticating. The strings must outlive the console.
 */
struct admin_auth {
	const struct scram_users *users;
	const char *const *admin_roles;
	size_t n_admin_roles;
	const char *const *stats_roles;
	size_t n_stats_roles;
};

/* The connection must authenticate (SASL, SCRAM-SHA-256) after its startup packet;
 * server_nonce: fresh, printable, no ',' (the shell's random bytes in base64). */
void admin_conn_require_auth(struct admin_conn *c, const struct admin_auth *auth,
			     const char *server_nonce);

struct admin_config {
	const char *unix_dir;	  /* default "/run/pgshadow" (created 0755); NULL/"": none */
	uint16_t port;		  /* default 6433: the socket is <unix_dir>/.s.PGSQL.<port> */
	const char *listen;	  /* "IPv4:PORT" or "[IPv6]:PORT" (admin_listen); NULL: none */
	uint32_t max_connections; /* default 64; more are refused with 53300 */
	/* Unix socket peers (SO_PEERCRED): root and the agent's own uid always, these uids
	 * too (full or read-only); either list non-empty opens the socket file (0666) */
	const uid_t *admin_uids, *stats_uids;
	size_t n_admin_uids, n_stats_uids;
	/* TCP clients authenticate (SCRAM) when set; then any address may be listened on,
	 * else the listener is loopback-only and read-only */
	const struct admin_auth *auth;
};

void admin_config_default(struct admin_config *cfg);

/*
 * Opens the listeners and starts the console thread. The Unix socket gets mode 0660; a
 * stale socket file (nobody accepting on it) is replaced, a live one (another agent) is
 * an error, and so is a non-socket file at that path. *p is copied; p->ctx must outlive
 * the console. Returns NULL with a one-line reason in err.
 */
struct admin *admin_start(const struct admin_config *cfg, const struct admin_provider *p, char *err,
			  size_t errlen);

/* Stops the thread, closes every connection, removes the socket file. NULL-safe. */
void admin_stop(struct admin *a);

#endif /* PGSHADOW_ADMIN_H */
