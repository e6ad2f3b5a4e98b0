// SPDX-License-Identifier: BSD-2-Clause
/* selfcheck.c — is --mirror the source cluster itself? See include/selfcheck.h. */
#include <arpa/inet.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ifaddrs.h>
#include <limits.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "selfcheck.h"

#define LISTENERS_MAX 64   /* LISTEN sockets of the port, and processes holding one */
#define STATUS_MAX    8192 /* bytes of /proc/PID/status read (about 1.5 KiB in use) */
#define LINE_MAX_TCP  512  /* a /proc/net/tcp6 line is about 150 bytes */
#define TCP_LISTEN    0x0A /* the st column of a LISTEN socket */
#define REFUSAL	      "refusing to replay every write twice"

/* ---- pure: parsers ---- */

/* The next whitespace-separated field of the line at *p; false at its end. */
static bool next_field(const char **p, const char **start, size_t *len)
{
	const char *s = *p;

	while (*s == ' ' || *s == '\t')
		s++;
	if (!*s || *s == '\n')
		return false;
	*start = s;
	while (*s && *s != ' ' && *s != '\t' && *s != '\n')
		s++;
	*len = (size_t)(s - *start);
	*p = s;
	return true;
}

static int digit(char c, int base)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (base == 16 && c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (base == 16 && c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/* Exactly len digits (base 10: at most 19, base 16: at most 16: no overflow). */
static bool parse_num(const char *s, size_t len, int base, uint64_t *out)
{
	uint64_t v = 0;
	size_t i;

	if (!len || len > (base == 16 ? 16u : 19u))
		return false;
	for (i = 0; i < len; i++) {
		int d = digit(s[i], base);

		if (d < 0)
			return false;
		v = v * (uint64_t)base + (uint64_t)d;
	}
	*out = v;
	return true;
}

static bool all_hex(const char *s, size_t len)
{
	size_t i;

	for (i = 0; i < len; i++)
		if (digit(s[i], 16) < 0)
			return false;
	return len > 0;
}

/* "  0: 0100007F:1538 00000000:0000 0A 00000000:00000000 00:00000000 00000000 108 0 4242 ..."
 * fields: sl, local_address, rem_address, st, tx:rx queue, tr:when, retrnsmt, uid,
 * timeout, inode. */
bool selfcheck_parse_listen(const char *line, uint16_t port, uint64_t *inode)
{
	const char *f[10], *p = line;
	size_t l[10], i;
	uint64_t lport, st, ino;

	for (i = 0; i < 10; i++)
		if (!next_field(&p, &f[i], &l[i]))
			return false;
	/* 8 (IPv4) or 32 (IPv6) hex digits, ':', 4 hex digits */
	if ((l[1] != 8 + 5 && l[1] != 32 + 5) || f[1][l[1] - 5] != ':' ||
	    !all_hex(f[1], l[1] - 5) || !parse_num(f[1] + l[1] - 4, 4, 16, &lport))
		return false;
	if (l[3] != 2 || !parse_num(f[3], 2, 16, &st) || st != TCP_LISTEN)
		return false;
	if (lport != port || !parse_num(f[9], l[9], 10, &ino) || !ino)
		return false;
	*inode = ino;
	return true;
}

bool selfcheck_parse_socket_link(const char *link, uint64_t *inode)
{
	static const char prefix[] = "socket:[";
	size_t n = strlen(link), pl = sizeof(prefix) - 1;
	uint64_t ino;

	if (n < pl + 2 || strncmp(link, prefix, pl) || link[n - 1] != ']')
		return false;
	if (!parse_num(link + pl, n - pl - 1, 10, &ino) || !ino)
		return false;
	*inode = ino;
	return true;
}

bool selfcheck_parse_pg_control(const uint8_t *data, size_t len, uint64_t *sysid)
{
	uint32_t version, catversion;
	uint64_t id;

	if (len < SELFCHECK_PG_CONTROL_MIN)
		return false;
	memcpy(&id, data, sizeof(id));
	memcpy(&version, data + 8, sizeof(version));
	memcpy(&catversion, data + 12, sizeof(catversion));
	/* 942 (9.4) ... 1300 (13-16), 1700 (17); catalog versions are yyyymmddN */
	if (!id || version < 900 || version > 9999 || catversion < 200000000u ||
	    catversion >= 300000000u)
		return false;
	*sysid = id;
	return true;
}

/* The value of the status line starting with key ("PPid:"), or NULL. */
static const char *status_value(const char *text, const char *key)
{
	size_t kl = strlen(key);
	const char *line = text;

	while (line && *line) {
		if (!strncmp(line, key, kl))
			return line + kl;
		line = strchr(line, '\n');
		if (line)
			line++;
	}
	return NULL;
}

/* The last of the whitespace-separated pids on the line at v (false: none, or not one). */
static bool last_pid(const char *v, int *out)
{
	const char *f;
	size_t l;
	uint64_t n;
	bool any = false;

	while (next_field(&v, &f, &l)) {
		if (!parse_num(f, l, 10, &n) || n > INT_MAX)
			return false;
		*out = (int)n;
		any = true;
	}
	return any;
}

bool selfcheck_parse_status(const char *text, int *ppid, int *nspid)
{
	const char *pp = status_value(text, "PPid:");
	const char *ns = status_value(text, "NSpid:");
	const char *pid = status_value(text, "Pid:");

	if (!pp || !last_pid(pp, ppid))
		return false;
	return ns ? last_pid(ns, nspid) : pid && last_pid(pid, nspid);
}

void selfcheck_redact(char *msg, size_t size, const char *secret)
{
	size_t sl = secret ? strlen(secret) : 0, o = 0;
	const char *p = msg, *hit;
	char *out;

	if (!sl || !size || !strstr(msg, secret))
		return;
	out = malloc(size);
	if (!out) {
		snprintf(msg, size, "(message withheld: out of memory)");
		return;
	}
	while ((hit = strstr(p, secret)) && o < size) {
		o += (size_t)snprintf(out + o, size - o, "%.*s***", (int)(hit - p), p);
		p = hit + sl;
	}
	if (o < size)
		snprintf(out + o, size - o, "%s", p);
	out[size - 1] = '\0';
	memcpy(msg, out, size);
	free(out);
}

/* ---- pure: the decision ---- */

static void say(char *msg, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void say(char *msg, size_t len, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(msg, len, fmt, ap);
	va_end(ap);
}

static enum selfcheck_verdict unchecked(char *msg, size_t len, const char *why)
{
	say(msg, len, "could not check whether --mirror is the source cluster: %s; going on", why);
	return SELFCHECK_UNCHECKED;
}

/* The postmaster whose child serves p, when that can be trusted: the system identifiers
 * agree, or the mirror's cannot be read and its address is local; -1 otherwise. */
static int served_by(const struct selfcheck_facts *f, const struct selfcheck_probe *p)
{
	const struct selfcheck_postmaster *pm;

	if (!p->reached || p->parent < 0 || (size_t)p->parent >= f->n_pm)
		return -1;
	pm = &f->pm[p->parent];
	if (pm->has_sysid && p->has_sysid)
		return pm->sysid == p->sysid ? p->parent : -1;
	return p->peer_local ? p->parent : -1;
}

static enum selfcheck_verdict refuse_instance(const struct selfcheck_facts *f, int x, char *msg,
					      size_t len)
{
	const struct selfcheck_probe *m = &f->mirror;
	const struct selfcheck_postmaster *pm = &f->pm[x];
	const char *dir = pm->datadir[0] ? pm->datadir : "unknown";

	if (m->has_sysid)
		say(msg, len,
		    "--mirror reaches the source cluster itself (system identifier %llu on both, "
		    "postmaster pid %d, data directory %s): " REFUSAL,
		    (unsigned long long)m->sysid, pm->pid, dir);
	else
		say(msg, len,
		    "--mirror reaches the source cluster itself (the mirror's backend pid %d is a "
		    "child of the source's postmaster pid %d, data directory %s, at "
		    "%s%s): " REFUSAL,
		    m->backend_pid, pm->pid, dir, m->peer[0] ? "local address " : "a Unix socket",
		    m->peer);
	return SELFCHECK_SOURCE;
}

/* Another server than the source; said only when it has the source's identifier. */
static enum selfcheck_verdict another_server(bool same_sysid, uint64_t sysid, char *msg, size_t len)
{
	if (same_sysid)
		say(msg, len,
		    "--mirror has the source's system identifier %llu but is another server (a "
		    "standby or a copy of the source): replaying to it",
		    (unsigned long long)sysid);
	return SELFCHECK_DISTINCT;
}

static enum selfcheck_verdict ambiguous(const struct selfcheck_facts *f, char *msg, size_t len)
{
	char why[256], pids[160];
	size_t i, o = 0;

	pids[0] = '\0';
	for (i = 0; i < f->n_pm && o < sizeof(pids); i++)
		o += (size_t)snprintf(pids + o, sizeof(pids) - o, "%s%d", i ? ", " : "",
				      f->pm[i].pid);
	snprintf(why, sizeof(why),
		 "%zu PostgreSQL servers listen on port %u here (postmaster pids %s) and the "
		 "mirror is one of them; set --source-dsn to name the source",
		 f->n_pm, f->port, pids);
	return unchecked(msg, len, why);
}

/* The system identifier in postmaster i's pg_control (i < 0: none). */
static bool pm_sysid(const struct selfcheck_facts *f, int i, uint64_t *out)
{
	if (i < 0 || !f->pm[i].has_sysid)
		return false;
	*out = f->pm[i].sysid;
	return true;
}

/* The system identifier of p's server: its own answer, or its postmaster's pg_control. */
static bool sysid_of(const struct selfcheck_facts *f, const struct selfcheck_probe *p, int pm,
		     uint64_t *out)
{
	if (!p->has_sysid)
		return pm_sysid(f, pm, out);
	*out = p->sysid;
	return true;
}

/* Neither server found here: what --source-dsn and the mirror say of themselves. */
static enum selfcheck_verdict by_sysid(const struct selfcheck_facts *f,
				       const struct selfcheck_probe *src, char *msg, size_t len)
{
	const struct selfcheck_probe *m = &f->mirror;
	const char *note = f->n_pm ? "the source's backend is not a child of any server "
				     "listening on the captured port here"
				   : f->scan_note;
	char why[768];

	if (src && m->has_sysid && src->has_sysid) {
		if (m->sysid != src->sysid)
			return SELFCHECK_DISTINCT;
		if (m->in_recovery != src->in_recovery) /* one server has one recovery state */
			return another_server(true, m->sysid, msg, len);
		say(msg, len,
		    "--mirror reaches the source cluster itself (system identifier %llu on both, "
		    "the source as --source-dsn reaches it): " REFUSAL,
		    (unsigned long long)m->sysid);
		return SELFCHECK_SOURCE;
	}
	if (!f->has_source)
		snprintf(why, sizeof(why),
			 "%s, and without --source-dsn there is nothing to compare", note);
	else if (!src)
		snprintf(why, sizeof(why), "%s, and --source-dsn: %s", note, f->source.error);
	else
		snprintf(why, sizeof(why),
			 "%s, and pg_control_system() is not permitted on the %s, so the system "
			 "identifiers cannot be compared",
			 note, m->has_sysid ? "source" : "mirror");
	return unchecked(msg, len, why);
}

enum selfcheck_verdict selfcheck_decide(const struct selfcheck_facts *f, char *msg, size_t len)
{
	const struct selfcheck_probe *m = &f->mirror;
	const struct selfcheck_probe *src = f->has_source && f->source.reached ? &f->source : NULL;
	uint64_t ms = 0, ss = 0;
	bool has_ms, has_ss;
	char why[512];
	int x, s;

	msg[0] = '\0';
	if (!m->reached) {
		snprintf(why, sizeof(why), "the mirror: %s", m->error);
		return unchecked(msg, len, why);
	}
	x = served_by(f, m);
	s = src ? served_by(f, src) : f->n_pm == 1 ? 0 : -1;
	has_ms = sysid_of(f, m, x, &ms);
	has_ss = src ? sysid_of(f, src, s, &ss) : pm_sysid(f, s, &ss);
	if (s >= 0) { /* the source's postmaster is known */
		if (x == s)
			return refuse_instance(f, x, msg, len);
		/* its child, but neither the identifiers nor the address can confirm it */
		if (x < 0 && m->parent == s && !(m->has_sysid && f->pm[s].has_sysid)) {
			snprintf(
			    why, sizeof(why),
			    "the mirror's backend pid %d is a child of the source's postmaster "
			    "pid %d, but %s and the mirror's address %s is not local",
			    m->backend_pid, f->pm[s].pid,
			    m->has_sysid ? "the source's global/pg_control cannot be read"
					 : "pg_control_system() is not permitted on the mirror",
			    m->peer);
			return unchecked(msg, len, why);
		}
		return another_server(has_ms && has_ss && ms == ss, ms, msg, len);
	}
	if (x >= 0) /* the mirror listens on the captured port here, the source is unknown */
		return src ? another_server(has_ms && has_ss && ms == ss, ms, msg, len)
			   : ambiguous(f, msg, len);
	if (!src && f->n_pm > 1) /* the source is one of them: is the mirror? */
		return m->parent >= 0 ? ambiguous(f, msg, len) : SELFCHECK_DISTINCT;
	return by_sysid(f, src, msg, len);
}

/* ---- the shell: libpq ---- */

struct probe_conn {
	PGconn *conn;
	char *password; /* the conninfo's, blanked out of messages */
};

static uint64_t now_ms(void)
{
	struct timespec t;

	clock_gettime(CLOCK_MONOTONIC, &t);
	return (uint64_t)t.tv_sec * 1000 + (uint64_t)t.tv_nsec / 1000000;
}

/* Waits until conn's socket is ready (readable, or writable); 1, 0 at the deadline, -1. */
static int wait_socket(PGconn *conn, bool write, uint64_t deadline)
{
	struct pollfd pfd = {.fd = PQsocket(conn), .events = write ? POLLOUT : POLLIN};
	uint64_t now;
	int rc;

	if (pfd.fd < 0)
		return -1;
	do {
		now = now_ms();
		if (now >= deadline)
			return 0;
		rc = poll(&pfd, 1, (int)(deadline - now));
	} while (rc < 0 && errno == EINTR);
	return rc < 0 ? -1 : rc > 0;
}

/* libpq's message, first line, after what (if any), password blanked. */
static void conn_error(struct probe_conn *pc, const char *what, char *err, size_t len)
{
	const char *m = pc->conn ? PQerrorMessage(pc->conn) : "out of memory";

	snprintf(err, len, "%s%s%.*s", what ? what : "", what ? ": " : "", (int)strcspn(m, "\n"),
		 m);
	selfcheck_redact(err, len, pc->password);
}

static void no_answer(char *err, size_t len)
{
	snprintf(err, len, "no answer within %d s", SELFCHECK_CONNECT_TIMEOUT_S);
}

/*
 * Runs sql before the deadline; returns its first result (PQclear it), or NULL when
 * the connection failed or the deadline passed (the connection is then unusable).
 */
static PGresult *query(PGconn *conn, const char *sql, uint64_t deadline)
{
	PGresult *first = NULL, *res;

	if (!PQsendQuery(conn, sql))
		return NULL;
	for (;;) {
		while (PQisBusy(conn))
			if (wait_socket(conn, false, deadline) <= 0 || !PQconsumeInput(conn)) {
				PQclear(first);
				return NULL;
			}
		res = PQgetResult(conn);
		if (!res)
			return first;
		if (first)
			PQclear(res);
		else
			first = res;
	}
}

/* Keywords of the check connection: the conninfo expanded, and dbname "postgres" after it
 * when the conninfo names none. Returns -EINVAL when libpq cannot parse the conninfo. */
static int connect_params(const char *conninfo, struct probe_conn *pc, const char **kw,
			  const char **val)
{
	PQconninfoOption *opts, *o;
	bool has_db = false;
	int n = 0;

	opts = PQconninfoParse(conninfo, NULL);
	if (!opts)
		return -EINVAL;
	for (o = opts; o->keyword; o++) {
		if (!strcmp(o->keyword, "dbname") && o->val && *o->val)
			has_db = true;
		if (!strcmp(o->keyword, "password") && o->val && *o->val && !pc->password)
			pc->password = strdup(o->val);
	}
	PQconninfoFree(opts);
	kw[n] = "fallback_application_name";
	val[n++] = "pgshadow";
	kw[n] = "dbname";
	val[n++] = conninfo;
	if (!has_db) {
		kw[n] = "dbname"; /* a second dbname is not expanded */
		val[n++] = "postgres";
	}
	kw[n] = val[n] = NULL;
	return 0;
}

/* Connects without blocking (PQconnectPoll ignores connect_timeout: the deadline bounds
 * it). 0, -ETIMEDOUT or -ECONNREFUSED (err filled). */
static int probe_connect(struct probe_conn *pc, const char *const *kw, const char *const *val,
			 uint64_t deadline, char *err, size_t len)
{
	PostgresPollingStatusType st = PGRES_POLLING_WRITING;
	int rc;

	pc->conn = PQconnectStartParams(kw, val, 1);
	if (!pc->conn || PQstatus(pc->conn) == CONNECTION_BAD)
		goto fail;
	while (st != PGRES_POLLING_OK && st != PGRES_POLLING_FAILED) {
		rc = wait_socket(pc->conn, st == PGRES_POLLING_WRITING, deadline);
		if (!rc) {
			no_answer(err, len);
			return -ETIMEDOUT;
		}
		st = PQconnectPoll(pc->conn);
	}
	if (st == PGRES_POLLING_OK)
		return 0;
fail:
	conn_error(pc, NULL, err, len);
	return -ECONNREFUSED;
}

/* Whether a server's address is this host's: a Unix socket, loopback, or an address of
 * one of its interfaces (in the agent's network namespace). */
static bool addr_is_local(const struct sockaddr_storage *ss, char *text, size_t len)
{
	static const uint8_t mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
	struct ifaddrs *ifs, *i;
	uint8_t a[16];
	bool v4, local = false;

	if (ss->ss_family == AF_UNIX) {
		text[0] = '\0'; /* always local: said as "a Unix socket" */
		return true;
	}
	if (ss->ss_family == AF_INET) {
		memcpy(a, &((const struct sockaddr_in *)ss)->sin_addr, 4);
		v4 = true;
	} else if (ss->ss_family == AF_INET6) {
		memcpy(a, &((const struct sockaddr_in6 *)ss)->sin6_addr, 16);
		v4 = !memcmp(a, mapped, 12);
		if (v4)
			memmove(a, a + 12, 4);
	} else {
		snprintf(text, len, "unknown");
		return false;
	}
	inet_ntop(v4 ? AF_INET : AF_INET6, a, text, (socklen_t)len);
	if ((v4 && a[0] == 127) || (!v4 && !memcmp(a, &in6addr_loopback, 16)))
		return true;
	if (getifaddrs(&ifs))
		return false;
	for (i = ifs; i && !local; i = i->ifa_next) {
		if (!i->ifa_addr)
			continue;
		if (v4 && i->ifa_addr->sa_family == AF_INET)
			local = !memcmp(a, &((struct sockaddr_in *)i->ifa_addr)->sin_addr, 4);
		else if (!v4 && i->ifa_addr->sa_family == AF_INET6)
			local = !memcmp(a, &((struct sockaddr_in6 *)i->ifa_addr)->sin6_addr, 16);
	}
	freeifaddrs(ifs);
	return local;
}

/*
 * One check connection: connect, then pg_backend_pid() and pg_is_in_recovery(), then
 * the system identifier if permitted. The connection stays open (its backend must stay
 * alive while /proc is searched for it): probe_close. -EINVAL: the conninfo cannot be
 * parsed; otherwise 0, and out->reached says whether it answered (else out->error why).
 */
static int probe(const char *conninfo, struct probe_conn *pc, struct selfcheck_probe *out)
{
	uint64_t deadline = now_ms() + SELFCHECK_CONNECT_TIMEOUT_S * 1000ull;
	const char *kw[5], *val[5];
	struct sockaddr_storage peer;
	socklen_t pl = sizeof(peer);
	PGresult *res;

	memset(out, 0, sizeof(*out));
	out->parent = -1;
	if (connect_params(conninfo, pc, kw, val))
		return -EINVAL;
	if (probe_connect(pc, kw, val, deadline, out->error, sizeof(out->error)))
		return 0;
	res = query(pc->conn, "SELECT pg_backend_pid(), pg_is_in_recovery()", deadline);
	if (PQresultStatus(res) != PGRES_TUPLES_OK || PQntuples(res) != 1) {
		if (res || PQstatus(pc->conn) == CONNECTION_BAD)
			conn_error(pc, "SELECT pg_backend_pid()", out->error, sizeof(out->error));
		else
			no_answer(out->error, sizeof(out->error));
		PQclear(res);
		return 0;
	}
	snprintf(out->version, sizeof(out->version), "%s",
		 PQparameterStatus(pc->conn, "server_version")
		     ? PQparameterStatus(pc->conn, "server_version")
		     : "?");
	snprintf(out->where, sizeof(out->where), "%s:%s", PQhost(pc->conn), PQport(pc->conn));
	out->backend_pid = atoi(PQgetvalue(res, 0, 0));
	out->in_recovery = !strcmp(PQgetvalue(res, 0, 1), "t");
	out->reached = out->backend_pid > 0;
	if (!out->reached)
		snprintf(out->error, sizeof(out->error), "pg_backend_pid() answered %s",
			 PQgetvalue(res, 0, 0));
	PQclear(res);
	if (!getpeername(PQsocket(pc->conn), (struct sockaddr *)&peer, &pl))
		out->peer_local = addr_is_local(&peer, out->peer, sizeof(out->peer));
	/* revoked from PUBLIC by some administrators: then the pid tells */
	res = query(pc->conn, "SELECT system_identifier FROM pg_control_system()", deadline);
	if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1 &&
	    !PQgetisnull(res, 0, 0)) {
		/* a bigint: negative from 2038 on, when strtoull's wrap is the uint64 */
		out->sysid = strtoull(PQgetvalue(res, 0, 0), NULL, 10);
		out->has_sysid = out->sysid != 0;
	}
	PQclear(res);
	return 0;
}

static void probe_close(struct probe_conn *pc)
{
	PQfinish(pc->conn);
	pc->conn = NULL;
	free(pc->password);
	pc->password = NULL;
}

/* ---- the shell: /proc ---- */

/* Reads a small file into buf (NUL-terminated); its length or -1. */
static ssize_t read_small(const char *path, void *buf, size_t size)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	ssize_t n;

	if (fd < 0)
		return -1;
	n = read(fd, buf, size - 1);
	close(fd);
	if (n >= 0)
		((char *)buf)[n] = '\0';
	return n;
}

/* A /proc entry's pid, or 0 when it is not a process. */
static int pid_of(const char *name)
{
	uint64_t n;

	return parse_num(name, strlen(name), 10, &n) && n <= INT_MAX ? (int)n : 0;
}

static bool has_u64(const uint64_t *v, size_t n, uint64_t x)
{
	while (n--)
		if (v[n] == x)
			return true;
	return false;
}

static bool has_int(const int *v, size_t n, int x)
{
	while (n--)
		if (v[n] == x)
			return true;
	return false;
}

/* Inodes of the LISTEN sockets of port in this network namespace (up to cap). */
static size_t listen_inodes(uint16_t port, uint64_t *inodes, size_t cap)
{
	static const char *const files[] = {"/proc/net/tcp", "/proc/net/tcp6"};
	char line[LINE_MAX_TCP];
	uint64_t ino;
	size_t n = 0, i;
	FILE *f;

	for (i = 0; i < 2; i++) {
		f = fopen(files[i], "re");
		if (!f)
			continue;
		while (fgets(line, sizeof(line), f))
			if (selfcheck_parse_listen(line, port, &ino) && n < cap &&
			    !has_u64(inodes, n, ino))
				inodes[n++] = ino;
		fclose(f);
	}
	return n;
}

/* Whether the process whose fd directory is fds holds one of the sockets. */
static bool holds_socket(DIR *fds, const uint64_t *inodes, size_t n)
{
	struct dirent *d;
	char link[64];
	uint64_t ino;
	ssize_t l;

	while ((d = readdir(fds))) {
		if (d->d_name[0] == '.')
			continue;
		l = readlinkat(dirfd(fds), d->d_name, link, sizeof(link) - 1);
		if (l <= 0)
			continue;
		link[l] = '\0';
		if (selfcheck_parse_socket_link(link, &ino) && has_u64(inodes, n, ino))
			return true;
	}
	return false;
}

/* The processes holding one of the sockets (up to cap); *denied counts the fd
 * directories that could not be read. */
static size_t socket_holders(const uint64_t *inodes, size_t n, int *pids, size_t cap, int *denied)
{
	DIR *proc = opendir("/proc"), *fds;
	struct dirent *p;
	char path[64];
	size_t k = 0;
	int pid;

	*denied = 0;
	while (proc && k < cap && (p = readdir(proc))) {
		pid = pid_of(p->d_name);
		if (!pid)
			continue;
		snprintf(path, sizeof(path), "/proc/%d/fd", pid);
		fds = opendir(path);
		if (!fds) {
			*denied += errno == EACCES || errno == EPERM;
			continue;
		}
		if (holds_socket(fds, inodes, n))
			pids[k++] = pid;
		closedir(fds);
	}
	if (proc)
		closedir(proc);
	return k;
}

/* A holder whose parent holds the socket too is a just-forked child, not a postmaster.
 * Fills pm from /proc/PID/cwd; false when it is not a PostgreSQL server (no
 * global/pg_control in its working directory). */
static bool postmaster_of(int pid, const int *holders, size_t n, struct selfcheck_postmaster *pm)
{
	char path[64], status[STATUS_MAX];
	uint8_t control[SELFCHECK_PG_CONTROL_MIN + 1];
	int ppid, nspid;
	ssize_t l;

	snprintf(path, sizeof(path), "/proc/%d/status", pid);
	if (read_small(path, status, sizeof(status)) > 0 &&
	    selfcheck_parse_status(status, &ppid, &nspid) && has_int(holders, n, ppid))
		return false;
	memset(pm, 0, sizeof(*pm));
	pm->pid = pid;
	snprintf(path, sizeof(path), "/proc/%d/cwd", pid);
	l = readlink(path, pm->datadir, sizeof(pm->datadir) - 1);
	pm->datadir[l > 0 ? l : 0] = '\0';
	snprintf(path, sizeof(path), "/proc/%d/cwd/global/pg_control", pid);
	l = read_small(path, control, sizeof(control));
	if (l < 0 && errno == ENOENT)
		return false;
	pm->has_sysid = l > 0 && selfcheck_parse_pg_control(control, (size_t)l, &pm->sysid);
	return true;
}

/* The postmasters listening on port here; a note saying what was found when none. */
static size_t find_postmasters(uint16_t port, struct selfcheck_postmaster *pm, char *note,
			       size_t len)
{
	uint64_t inodes[LISTENERS_MAX];
	int holders[LISTENERS_MAX], denied;
	size_t n_ino, n_h, n = 0, i;

	n_ino = listen_inodes(port, inodes, LISTENERS_MAX);
	if (!n_ino) {
		snprintf(note, len, "nothing listens on port %u in the agent's network namespace",
			 port);
		return 0;
	}
	n_h = socket_holders(inodes, n_ino, holders, LISTENERS_MAX, &denied);
	for (i = 0; i < n_h && n < SELFCHECK_POSTMASTERS_MAX; i++)
		n += postmaster_of(holders[i], holders, n_h, &pm[n]);
	if (n)
		return n;
	if (n_h)
		snprintf(note, len,
			 "what listens on port %u here (pid %d) is not a PostgreSQL server (no "
			 "global/pg_control in its working directory)",
			 port, holders[0]);
	else
		snprintf(note, len,
			 "no process visible here holds the socket listening on port %u%s", port,
			 denied ? " (file descriptors of other processes are not readable: run "
				  "as root or with CAP_SYS_PTRACE)"
				: "");
	return 0;
}

/* Sets the parent of each reached probe whose backend (its pid in the server's own pid
 * namespace) is a child of one of the postmasters. */
static void find_backends(const struct selfcheck_postmaster *pm, size_t n_pm,
			  struct selfcheck_probe *const *probes, size_t n_probes)
{
	DIR *proc = n_pm ? opendir("/proc") : NULL;
	char path[64], status[STATUS_MAX];
	struct dirent *p;
	int pid, ppid, nspid;
	size_t i, j;

	while (proc && (p = readdir(proc))) {
		pid = pid_of(p->d_name);
		if (!pid)
			continue;
		snprintf(path, sizeof(path), "/proc/%d/status", pid);
		if (read_small(path, status, sizeof(status)) <= 0 ||
		    !selfcheck_parse_status(status, &ppid, &nspid))
			continue;
		for (i = 0; i < n_pm; i++) {
			if (pm[i].pid != ppid)
				continue;
			for (j = 0; j < n_probes; j++)
				if (probes[j]->reached && probes[j]->backend_pid == nspid)
					probes[j]->parent = (int)i;
		}
	}
	if (proc)
		closedir(proc);
}

enum selfcheck_verdict selfcheck_mirror(const struct selfcheck_config *cfg, char *msg, size_t len,
					struct selfcheck_probe *mirror)
{
	struct selfcheck_postmaster pm[SELFCHECK_POSTMASTERS_MAX];
	struct probe_conn mc = {}, sc = {};
	struct selfcheck_facts f;
	struct selfcheck_probe *probes[2];
	enum selfcheck_verdict v = SELFCHECK_UNCHECKED;

	msg[0] = '\0';
	memset(&f, 0, sizeof(f));
	f.port = cfg->port;
	f.pm = pm;
	probes[0] = &f.mirror;
	probes[1] = &f.source;
	/* a conninfo libpq cannot parse is replay_start's to report */
	if (probe(cfg->mirror, &mc, &f.mirror))
		goto cleanup;
	if (f.mirror.reached) {
		f.n_pm = find_postmasters(cfg->port, pm, f.scan_note, sizeof(f.scan_note));
		if (cfg->source_dsn) {
			f.has_source = true;
			if (probe(cfg->source_dsn, &sc, &f.source))
				snprintf(f.source.error, sizeof(f.source.error),
					 "cannot parse the conninfo");
		}
		find_backends(pm, f.n_pm, probes, f.has_source ? 2 : 1);
	}
	v = selfcheck_decide(&f, msg, len);
	if (mirror)
		*mirror = f.mirror;
cleanup:
	probe_close(&sc);
	probe_close(&mc);
	return v;
}
