/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * selfcheck: refuses a --mirror that reaches the source cluster itself. Replaying to the
 * source would apply every write twice, so the agent checks once at start and exits with
 * status 2 when the mirror is the source.
 *
 * When. main calls selfcheck_mirror after the configuration is loaded and before capture
 * attaches (not right before replay_start, after it): the check's own connections
 * (possibly to the captured port) are then never seen as source traffic — an exclusion
 * released when the check ends would come before the capture thread reads the ring, so
 * the check's SYN would open a flow — and a refusal leaves nothing attached.
 *
 * What "the source" is. The agent runs on the source host, so the source is the
 * postmaster listening on the captured port in the agent's network namespace: LISTEN
 * sockets of that port in /proc/net/tcp and /proc/net/tcp6, their inodes, the processes
 * whose /proc/PID/fd links to socket:[inode], and of those the ones whose parent does not
 * hold the socket too (a just-forked backend still does, briefly). Its working directory
 * (/proc/PID/cwd: the postmaster chdirs to its data directory) holds global/pg_control,
 * whose first 8 bytes are the system identifier (native-endian uint64; accepted when the
 * pg_control and catalog versions that follow look like PostgreSQL's). A listener without
 * one (pgbouncer, docker-proxy) is not a postmaster. With --source-dsn the source is what
 * that connection reaches, and several postmasters on the port are no longer ambiguous.
 *
 * What the mirror is. One connection, with the conninfo replay uses (its dbname, or
 * "postgres" when it has none: replay replaces the dbname per session, so any database
 * will do), non-blocking and given up after 5 s for connecting and asking (libpq ignores
 * connect_timeout in PQconnectPoll), asks pg_backend_pid(), pg_is_in_recovery() and,
 * when the mirror's user may run it, system_identifier from pg_control_system().
 * getpeername on its socket tells whether the mirror's address is this host's (loopback,
 * an interface address, a Unix socket). The connection stays open while /proc is
 * searched, so its backend is alive. --source-dsn gets the same connection.
 *
 * The decision (selfcheck_decide), instance first, system identifier second:
 * - The backend serving the check connection is a child of the postmaster that serves
 *   it. When that backend is, on this host, a child of the source postmaster — compared
 *   in the server's pid namespace (the last NSpid of /proc/PID/status), so a source in a
 *   container is seen too — the mirror is the source, whatever address, port, pooler or
 *   proxy led there. That is trusted when the two system identifiers agree, or, when the
 *   mirror's cannot be read, when the mirror's address is local (a backend pid of another
 *   host could be a pid of this one by chance).
 * - When the source postmaster is found and the mirror's backend is not its child, the
 *   mirror is another server, even with the same system identifier: a physical standby
 *   or a copy of the source (that case is logged, and replay goes on).
 * - Several postmasters on the captured port (other addresses) without --source-dsn:
 *   when the mirror is one of them, which one is the source cannot be told (a second
 *   cluster on the same port is a legitimate mirror), so the check is not made (logged).
 *   When the mirror is none of them, it is not the source.
 * - No postmaster found (the source is in another network namespace, behind a proxy):
 *   with --source-dsn the system identifiers of both are compared (and the recovery
 *   state: one server has one), else the check is not made (logged).
 * A mirror that cannot be reached is not an error (replay retries it): the check is
 * logged as not made, with libpq's reason (the conninfo's password, if any, blanked
 * out), and the agent goes on.
 *
 * The parsers and selfcheck_decide are pure; selfcheck_mirror is the shell (libpq,
 * /proc, getifaddrs). Main thread, once at start.
 */
#ifndef PGSHADOW_SELFCHECK_H
#define PGSHADOW_SELFCHECK_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define SELFCHECK_POSTMASTERS_MAX   16 /* postmasters listening on the port looked at */
#define SELFCHECK_CONNECT_TIMEOUT_S 5  /* the check connections' connect and query budget */
#define SELFCHECK_PG_CONTROL_MIN    16 /* system identifier, pg_control and catalog versions */

enum selfcheck_verdict {
	SELFCHECK_DISTINCT = 0, /* the mirror is not the source: replay */
	SELFCHECK_SOURCE,	/* the mirror is the source: refuse to start (exit 2) */
	SELFCHECK_UNCHECKED,	/* could not tell: log why, replay anyway */
};

/* A postmaster listening on the captured port in the agent's network namespace. */
struct selfcheck_postmaster {
	int pid; /* in the agent's pid namespace */
	bool has_sysid;
	uint64_t sysid;	   /* from global/pg_control */
	char datadir[256]; /* its working directory ("" if unreadable) */
};

/* What one check connection (to the mirror, or to --source-dsn) told. */
struct selfcheck_probe {
	bool reached;	 /* connected, and pg_backend_pid() answered */
	char error[384]; /* why not (one line, password blanked) */
	int backend_pid; /* pg_backend_pid(): in the server's pid namespace */
	bool in_recovery;
	bool has_sysid; /* pg_control_system() was permitted */
	uint64_t sysid;
	bool peer_local;  /* the server's address is one of this host's, or a Unix socket */
	char peer[64];	  /* that address, for messages ("": a Unix socket) */
	char version[32]; /* server_version, as the server reports it */
	char where[160];  /* host:port as libpq connected (a socket directory for Unix) */
	int parent;	  /* index into the postmasters of the one whose child serves this
			   * connection, -1: none of them */
};

struct selfcheck_facts {
	uint16_t port;
	const struct selfcheck_postmaster *pm; /* listening on port here */
	size_t n_pm;
	char scan_note[256]; /* when n_pm == 0: what was found instead */
	struct selfcheck_probe mirror;
	bool has_source; /* --source-dsn set: source is its probe */
	struct selfcheck_probe source;
};

struct selfcheck_config {
	const char *mirror;	/* mirror_of: libpq conninfo or URI */
	const char *source_dsn; /* NULL: not set */
	uint16_t port;		/* the captured port */
};

/*
 * The check. Returns the verdict and, in msg, one line to log (without the "pgshadow: "
 * prefix), or "" when there is nothing to say: SOURCE always says what was found,
 * UNCHECKED why not (except for a conninfo libpq cannot parse: replay_start reports
 * that), DISTINCT only for a copy of the source. Blocks up to SELFCHECK_CONNECT_TIMEOUT_S
 * per connection. *mirror (when not NULL) receives what was learnt of the mirror.
 */
enum selfcheck_verdict selfcheck_mirror(const struct selfcheck_config *cfg, char *msg, size_t len,
					struct selfcheck_probe *mirror);

/* The decision above from the facts gathered; msg as for selfcheck_mirror. Pure. */
enum selfcheck_verdict selfcheck_decide(const struct selfcheck_facts *f, char *msg, size_t len);

/*
 * One line of /proc/net/tcp or /proc/net/tcp6: true when it is a LISTEN socket on port,
 * with its inode. Header lines and anything malformed are false.
 */
bool selfcheck_parse_listen(const char *line, uint16_t port, uint64_t *inode)
    __attribute__((warn_unused_result));

/* A /proc/PID/fd link ("socket:[12345]"): true with the socket's inode. */
bool selfcheck_parse_socket_link(const char *link, uint64_t *inode)
    __attribute__((warn_unused_result));

/*
 * The first bytes of global/pg_control: true with the system identifier when they look
 * like PostgreSQL's (a non-zero identifier, a pg_control version 900-9999 and a catalog
 * version yyyymmddN of this century). Native byte order, as the server writes it.
 */
bool selfcheck_parse_pg_control(const uint8_t *data, size_t len, uint64_t *sysid)
    __attribute__((warn_unused_result));

/*
 * /proc/PID/status: true with the parent's pid (PPid) and the process's pid in its own,
 * innermost pid namespace (the last NSpid field; Pid on kernels without NSpid).
 */
bool selfcheck_parse_status(const char *text, int *ppid, int *nspid)
    __attribute__((warn_unused_result));

/* Replaces every occurrence of secret (if non-empty) in the string msg, a buffer of size
 * bytes, with "***" (truncating, never overflowing). */
void selfcheck_redact(char *msg, size_t size, const char *secret);

#endif /* PGSHADOW_SELFCHECK_H */
