// SPDX-License-Identifier: BSD-2-Clause
/*
 * config.c — settings from an INI file and the command line, driven by one key table.
 * See include/config.h for the contract.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <ini.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "config.h"

#define IFNAME_MAX   15 /* IFNAMSIZ - 1 */
#define INI_NAME_MAX 49 /* libinih cuts longer key names (MAX_NAME 50) */
#define HELP_COLUMN  32 /* where --help descriptions start */
#define HELP_WIDTH   80
#define FILE_WIDTH   90 /* comment width of the example file */

/* ---- the key table ---- */

static const struct config_enum_value attach_values[] = {
    {"tcx", CAPTURE_ATTACH_TCX},
    {"tc", CAPTURE_ATTACH_TC},
    {NULL, 0},
};
static const struct config_enum_value mode_values[] = {
    {"all", REPLAY_MODE_ALL},
    {"read_only", REPLAY_MODE_READ_ONLY},
    {NULL, 0},
};
static const struct config_enum_value sampling_values[] = {
    {"transaction", REPLAY_SAMPLE_TRANSACTION},
    {"session", REPLAY_SAMPLE_SESSION},
    {NULL, 0},
};
static const struct config_enum_value compare_values[] = {
    {"status", REPLAY_COMPARE_STATUS},
    {"rows", REPLAY_COMPARE_ROWS},
    {"none", REPLAY_COMPARE_NONE},
    {NULL, 0},
};
static const struct config_enum_value aborted_values[] = {
    {"replay", REPLAY_ABORTED_REPLAY},
    {"skip", REPLAY_ABORTED_SKIP},
    {NULL, 0},
};
static const struct config_enum_value level_values[] = {
    {"all", REPLAY_LEVEL_ALL},
    {"dml", REPLAY_LEVEL_DML},
    {"ddl", REPLAY_LEVEL_DDL},
    {NULL, 0},
};

#define OFF(field)  offsetof(struct pgshadow_config, field)
#define LIVE(field) (offsetof(struct pgshadow_config, live) + offsetof(struct config_live, field))

/* Enum fields are written through an int pointer. */
_Static_assert(sizeof(enum replay_mode) == sizeof(int), "enum size");
_Static_assert(sizeof(enum capture_attach_mode) == sizeof(int), "enum size");

/*
 * Every setting, in the order of --help and the example file. Ranges keep what the
 * command line enforced before the file existed. A default is spelled as in the file and
 * parsed by the same code, so it is checked against its own range.
 */
const struct config_key config_keys[] = {
    /* capture */
    {"port", CONFIG_UINT, OFF(port), 1, 65535, CONFIG_F_REQUIRED, NULL, NULL, false, "PORT",
     "PostgreSQL server port to capture."},
    {"interfaces", CONFIG_LIST, OFF(interfaces), 0, CAPTURE_MAX_INTERFACES, 0, NULL, "", false,
     "NAMES",
     "Interfaces to attach to, comma-separated; empty: every interface that is up. The flag "
     "may be repeated (-i lo -i eth0)."},
    {"attach", CONFIG_ENUM, OFF(attach), 0, 0, 0, attach_values, "tcx", false, NULL,
     "tcx links (Linux >= 6.6) or tc clsact filters (older kernels; stale filters of ours "
     "are replaced)."},
    {"dump_streams", CONFIG_STRING, OFF(dump_streams), 0, 0, 0, NULL, NULL, false, "DIR",
     "Write each reassembled half-stream to DIR/<client>-<server>.c2s and .s2c (gaps in "
     ".gaps); empty: off."},
    {"user", CONFIG_STRING, OFF(user), 0, 0, 0, NULL, NULL, false, "NAME",
     "Run as this user once everything is attached and open, with no capability left "
     "(--attach tc keeps CAP_NET_ADMIN permitted, not effective, for its clean-up at "
     "exit). What it opens later must be open to NAME: --dump-streams DIR, the "
     "configuration file on SIGHUP. Empty: stay as started."},
    {"ringbuf_mb", CONFIG_UINT, OFF(ringbuf_mb), 1, 1024, CONFIG_F_POW2, NULL, "64", false, "N",
     "Ring buffer size in MiB."},
    {"tls", CONFIG_BOOL, OFF(tls), 0, 0, 0, NULL, "off", false, "on|off",
     "Decode TLS sessions: uprobes on SSL_read/SSL_write of the libssl the server on the "
     "port maps read their plaintext. A probe on a shared library traps in every process "
     "of the host that calls it (about 20 us per call here), hence off by default."},
    {"max_flows", CONFIG_UINT, OFF(max_flows), 1, 4000000, 0, NULL, "65536", false, "N",
     "Connections tracked at once; more are refused and counted."},
    {"flow_buffer_kb", CONFIG_UINT, OFF(flow_buffer_kb), 1, 1048576, 0, NULL, "4096", false, "N",
     "Out-of-order bytes held per direction of a connection, in KiB, before a hole is given "
     "up as a gap."},
    {"hole_timeout_ms", CONFIG_UINT, OFF(hole_timeout_ms), 1, 3600000, 0, NULL, "1000", false, "N",
     "How long a missing segment is waited for before it is reported as a gap."},
    {"idle_timeout_s", CONFIG_UINT, OFF(idle_timeout_s), 1, 86400 * 30, 0, NULL, "600", false, "N",
     "Connections silent this long are closed."},
    {"metrics_listen", CONFIG_STRING, OFF(metrics_listen), 0, 0,
     CONFIG_F_ADDRESS | CONFIG_F_NONEMPTY, NULL, "127.0.0.1:9930", false, "ADDR",
     "Serve /, /metrics, /readiness, /queries and /healthz on ADDR, IPv4:PORT or "
     "[IPv6]:PORT."},
    {"web_tls_cert_file", CONFIG_STRING, OFF(web_tls_cert_file), 0, 0, 0, NULL, NULL, false, "FILE",
     "Serve the HTTP endpoints over TLS with this PEM certificate (chain); needs "
     "web_tls_key_file. For scraping across hosts (node_exporter's tls_server_config). "
     "`pgshadow readiness --url` speaks plain HTTP only."},
    {"web_tls_key_file", CONFIG_STRING, OFF(web_tls_key_file), 0, 0, 0, NULL, NULL, false, "FILE",
     "The PEM private key of web_tls_cert_file."},
    {"web_basic_auth_file", CONFIG_STRING, OFF(web_basic_auth_file), 0, 0, 0, NULL, NULL, false,
     "FILE",
     "Require HTTP basic authentication on every endpoint: one user:bcrypt-hash per line "
     "(htpasswd -B; node_exporter's basic_auth_users). Use it with TLS."},
    {"state_file", CONFIG_STRING, OFF(state_file), 0, 0, 0, NULL, NULL, false, "FILE",
     "Keep the readiness window in FILE (e.g. /var/lib/pgshadow/state), written "
     "atomically every 5 s and at exit, so that a restart continues it; a file from "
     "another version or mirror, or damaged, is set aside (FILE.refused-TIME). Needs "
     "--mirror. Empty: a restart starts a new window."},
    {"decode_buffer_mb", CONFIG_UINT, OFF(decode_buffer_mb), 1, 65536, 0, NULL, "64", false, "N",
     "MiB the decoders may hold at once, all connections together: messages split across "
     "packets (each up to max_message_kb) and streams being searched for a message "
     "boundary. Beyond it a message is counted without its body (not mirrored): clients "
     "holding back parts of large messages cannot grow the agent without bound."},
    {"max_databases", CONFIG_UINT, OFF(max_databases), 1, 10000, 0, NULL, "100", false, "N",
     "Distinct database label values; later databases are counted as database=\"other\"."},
    {"max_message_kb", CONFIG_UINT, OFF(max_message_kb), 1, 1048576, 0, NULL, "1024", false, "N",
     "Largest protocol message body decoded, in KiB; longer ones are counted and skipped."},
    {"source_dsn", CONFIG_STRING, OFF(source_dsn), 0, 0, CONFIG_F_SECRET, NULL, NULL, false, "DSN",
     "libpq conninfo of the source, used to name the database and user of sessions open "
     "before the agent started, and to recover the text of named statements they prepared "
     "before it (pg_stat_activity; needs pg_read_all_stats). Its own connection is "
     "excluded from capture. Empty: such sessions are database=\"unknown\" and those "
     "statements are not replayed (no_parse)."},

    /* mirror */
    {"mirror_of", CONFIG_STRING, OFF(mirror_of), 0, 0, CONFIG_F_SECRET, NULL, NULL, false,
     "CONNINFO",
     "Replay requests to this mirror (libpq conninfo or URI; its dbname is replaced by each "
     "session's database or its [databases] mapping). Empty: observe only. Flag also "
     "spelled --mirror."},
    {"mirror_exposure", CONFIG_DOUBLE, LIVE(mirror_exposure), 0, 1, 0, NULL, "1.0", true, "X",
     "Fraction of transactions (or sessions, see mirror_sampling) replayed to the mirror."},
    {"mirror_sampling", CONFIG_ENUM, OFF(mirror_sampling), 0, 0, 0, sampling_values, "transaction",
     false, NULL,
     "What mirror_exposure samples: whole transactions or whole "
     "sessions."},
    {"mirror_mode", CONFIG_ENUM, OFF(mirror_mode), 0, 0, 0, mode_values, "all", false, NULL,
     "all replays writes too; read_only replays only reads, on read-only mirror sessions."},
    {"mirror_level", CONFIG_ENUM, OFF(mirror_level), 0, 0, 0, level_values, "all", false, NULL,
     "Statements replayed: all, only DML, or only DDL."},
    {"mirror_aborted", CONFIG_ENUM, OFF(mirror_aborted), 0, 0, 0, aborted_values, "replay", false,
     NULL, "Transactions the source rolled back: replay them (ending in ROLLBACK) or skip them."},
    {"mirror_compare", CONFIG_ENUM, OFF(mirror_compare), 0, 0, 0, compare_values, "status", false,
     NULL,
     "Compare each mirrored answer with the source's: status (command tag, row count, "
     "SQLSTATE), rows (also a hash of the rows) or none."},
    {"mirror_replay_timing", CONFIG_BOOL, OFF(mirror_replay_timing), 0, 0, 0, NULL, "off", false,
     "on|off", "Keep the source's gaps between the statements of a transaction."},
    {"mirror_set_role", CONFIG_BOOL, OFF(mirror_set_role), 0, 0, 0, NULL, "off", false, "on|off",
     "SET ROLE to the source session's user after connecting to the mirror."},
    {"mirror_queue", CONFIG_UINT, OFF(mirror_queue), 1, 1000000, 0, NULL, "1000", false, "N",
     "A transaction is admitted for replay only while fewer than N transactions of its "
     "session wait to start on the mirror; otherwise it is dropped whole (buffer_full). An "
     "admitted transaction is never cut by this count."},
    {"mirror_queue_mb", CONFIG_UINT, OFF(mirror_queue_mb), 1, 65536, 0, NULL, "64", false, "N",
     "MiB of requests waiting for the mirror, all sessions together. A transaction that "
     "does not fit is rolled back on the mirror and the rest of it dropped (unit_aborted)."},
    {"mirror_pipeline", CONFIG_UINT, OFF(mirror_pipeline), 1, 1000, 0, NULL, "16", false, "N",
     "Requests one mirror connection may have in flight while its session has a backlog "
     "(pipelined); 1 replays strictly one at a time."},
    {"mirror_max_connections", CONFIG_UINT, OFF(mirror_max_connections), 1, 10000, 0, NULL, "100",
     false, "N",
     "Mirror connections at once, all pools together. Source sessions share them: a "
     "session borrows one for a transaction (or a run of autocommit statements) and gives "
     "it back."},
    {"mirror_pool_wait_ms", CONFIG_UINT, OFF(mirror_pool_wait_ms), 1, 3600000, 0, NULL, "5000",
     false, "N",
     "Longest a transaction waits for a free pooled mirror connection; then it is dropped "
     "whole (pool_wait)."},
    {"mirror_replay_nice", CONFIG_INT, OFF(mirror_replay_nice), -20, 19, 0, NULL, "-10", false, "N",
     "Nice value of the replay thread. It needs little CPU but needs it promptly: on a "
     "saturated CPU, behind hundreds of runnable backends, it waits hundreds of "
     "milliseconds per wakeup at nice 0. 0 leaves it as the agent runs."},
    {"mirror_timeout_ms", CONFIG_UINT, OFF(mirror_timeout_ms), 1, 86400000, 0, NULL, "30000", false,
     "N", "statement_timeout of every mirror session; 57014 counts as a timeout."},
    {"mirror_compare_ignore", CONFIG_STRING, OFF(mirror_compare_ignore), 0, 0, 0, NULL, NULL, false,
     "FPS",
     "Statements expected to answer differently: comma-separated fingerprints (hex, as "
     "--log-mismatches prints them) whose answers are not compared."},
    {"log_mismatches", CONFIG_UINT, LIVE(log_mismatches), 0, 1000000, 0, NULL, "0", true, "N",
     "Log the first N mismatches between source and mirror answers."},
    {"mirror_metrics_enabled", CONFIG_BOOL, OFF(mirror_metrics_enabled), 0, 0, 0, NULL, "on", false,
     "on|off",
     "Serve the mirror outcome metrics (README: Metrics, \"With --mirror\") when mirror_of is set; "
     "source, capture, build and process metrics are always served."},
    {"explain_regressions", CONFIG_BOOL, OFF(explain_regressions), 0, 0, CONFIG_F_NO_ARG, NULL,
     "off", false, NULL,
     "Run EXPLAIN (FORMAT JSON), never ANALYZE, on the mirror only, for the statements that "
     "regress by latency, with the parameters of one captured execution; SHOW MIRROR "
     "QUERIES and /queries show the plan's node types, relations, indexes and estimates "
     "(never its conditions). The source is never queried."},
    {"max_query_stats", CONFIG_UINT, OFF(max_query_stats), 0, 1000000, 0, NULL, "5000", false, "N",
     "Statements compared one by one between source and mirror (SHOW MIRROR QUERIES, "
     "/queries), 1.4 KiB each (5,000: up to 7 MiB); beyond it the least used are evicted and "
     "counted. 0: "
     "none."},
    {"mirror_metrics_reset_interval", CONFIG_UINT, OFF(mirror_metrics_reset_interval), 1,
     86400 * 365, 0, NULL, "3600", false, "S",
     "Window, in seconds, of the windowed gauges (mirror_latency_avg_ms, "
     "mirror_latency_max_ms, mirror_database_latency_ms); counters never reset."},

    /* alerts */
    {"mirror_error_threshold", CONFIG_UINT, LIVE(mirror_error_threshold), 1, 1000000000, 0, NULL,
     "100", true, "N", "Consecutive mirror errors that raise the consecutive_errors alert."},
    {"mirror_latency_threshold_ms", CONFIG_UINT, LIVE(mirror_latency_threshold_ms), 1, 86400000, 0,
     NULL, "5000", true, "N",
     "Mirror p99 latency over the current window that raises the latency alert."},

    /* readiness criteria */
    {"mirror_max_error_rate", CONFIG_DOUBLE, LIVE(mirror_max_error_rate), 0, 1, 0, NULL, "0.01",
     true, "X", "Readiness: largest mirror error rate (errors / attempted)."},
    {"mirror_max_latency_ms", CONFIG_UINT, LIVE(mirror_max_latency_ms), 0, 86400000, 0, NULL,
     "1000", true, "N", "Readiness: largest mirror average latency."},
    {"mirror_max_p99_ratio", CONFIG_DOUBLE, LIVE(mirror_max_p99_ratio), 0, 1000,
     CONFIG_F_MIN_EXCLUSIVE, NULL, "2.0", true, "X",
     "Readiness: largest mirror p99 / source p99 over the same requests."},
    {"mirror_latency_floor_ms", CONFIG_DOUBLE, LIVE(mirror_latency_floor_ms), 0, 3600000, 0, NULL,
     "5", true, "X", "Readiness: p99 differences smaller than this pass whatever their ratio."},
    {"mirror_min_runtime_hours", CONFIG_DOUBLE, LIVE(mirror_min_runtime_hours), 0, 87600, 0, NULL,
     "24", true, "X", "Readiness: shortest observation window."},
    {"mirror_min_requests", CONFIG_UINT, LIVE(mirror_min_requests), 0, 1e12, 0, NULL, "100000",
     true, "N", "Readiness: fewest requests attempted on the mirror."},
    {"mirror_consecutive_success", CONFIG_UINT, LIVE(mirror_consecutive_success), 0, 1e12, 0, NULL,
     "10000", true, "N", "Readiness: mirrored requests in a row since the last error."},
    {"mirror_max_drop_rate", CONFIG_DOUBLE, LIVE(mirror_max_drop_rate), 0, 1, 0, NULL, "0.01", true,
     "X", "Readiness: largest share of sampled requests dropped (dropped / selected)."},
    {"mirror_max_mismatch_rate", CONFIG_DOUBLE, LIVE(mirror_max_mismatch_rate), 0, 1, 0, NULL,
     "0.001", true, "X", "Readiness: largest share of compared answers that differ."},
    {"mirror_max_regressed_statements", CONFIG_INT, LIVE(mirror_max_regressed_statements), -1,
     1000000, 0, NULL, "-1", true, "N",
     "Readiness: most statements that may regress on the mirror (SHOW MIRROR QUERIES); -1: "
     "not judged."},
    {"mirror_min_statement_calls", CONFIG_UINT, LIVE(mirror_min_statement_calls), 1, 1e12, 0, NULL,
     "50", true, "N",
     "Per statement: mirror answers before its p99 ratio can make it regress (with "
     "mirror_max_p99_ratio and mirror_latency_floor_ms)."},

    /* admin console */
    {"admin_socket_dir", CONFIG_STRING, OFF(admin_socket_dir), 0, 0, 0, NULL, "/run/pgshadow",
     false, "DIR",
     "Directory of the admin console's Unix socket (psql -h DIR -p admin_port pgshadow); "
     "its permissions are the access control. Empty: no Unix socket."},
    {"admin_port", CONFIG_UINT, OFF(admin_port), 1, 65535, 0, NULL, "6433", false, "PORT",
     "Port of the admin console: the socket is DIR/.s.PGSQL.PORT."},
    {"admin_users", CONFIG_STRING, OFF(admin_users), 0, 0, 0, NULL, NULL, false, "USERS",
     "OS users (comma-separated) who may use the console's Unix socket fully, besides root "
     "and the agent's own user (SO_PEERCRED); setting it or stats_users opens the socket "
     "file to everyone (0666): the peer's uid decides. With admin_auth_file, also the "
     "roles with the full TCP console."},
    {"stats_users", CONFIG_STRING, OFF(stats_users), 0, 0, 0, NULL, NULL, false, "USERS",
     "OS users (comma-separated) who may use the console's Unix socket to read only "
     "(SHOW; RESET gets 42501). With admin_auth_file, also the roles with a read-only TCP "
     "console."},
    {"admin_auth_file", CONFIG_STRING, OFF(admin_auth_file), 0, 0, 0, NULL, NULL, false, "FILE",
     "Users of the console's TCP listener, PgBouncer's userlist.txt format (\"name\" "
     "\"secret\" per line; a secret is a SCRAM-SHA-256 verifier as pg_authid keeps it, or a "
     "password). They authenticate with SCRAM-SHA-256; then admin_users and stats_users "
     "name the roles that may use the console fully or read-only (names there that are no "
     "OS user are roles only). With it, admin_listen may be any address. Read at start."},
    {"admin_listen", CONFIG_STRING, OFF(admin_listen), 0, 0, CONFIG_F_ADDRESS, NULL, NULL, false,
     "ADDR",
     "Also serve the admin console on TCP, IPv4:PORT or [IPv6]:PORT. Without "
     "admin_auth_file: a loopback address only and read-only (RESET needs the Unix "
     "socket); with it, any address, clients authenticate with SCRAM-SHA-256 and their "
     "role decides. Empty: no TCP listener."},

    {"verbose", CONFIG_BOOL, OFF(verbose), 0, 0, CONFIG_F_NO_ARG, NULL, "off", false, NULL,
     "Also print libbpf's messages."},
};

const size_t config_n_keys = sizeof(config_keys) / sizeof(config_keys[0]);

#define N_KEYS (sizeof(config_keys) / sizeof(config_keys[0]))

const struct config_key *config_key_find(const char *name)
{
	size_t i;

	for (i = 0; i < N_KEYS; i++)
		if (!strcmp(config_keys[i].name, name))
			return &config_keys[i];
	return NULL;
}

static int key_index(const struct config_key *k)
{
	return (int)(k - config_keys);
}

/* ---- small helpers ---- */

static void *field(const struct pgshadow_config *cfg, const struct config_key *k)
{
	return (char *)cfg + k->offset;
}

/* Appends to a fixed buffer; never overflows, always terminated. */
struct text {
	char *p;
	size_t len, cap;
};

static void text_add(struct text *t, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void text_add(struct text *t, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (t->len >= t->cap)
		return;
	va_start(ap, fmt);
	n = vsnprintf(t->p + t->len, t->cap - t->len, fmt, ap);
	va_end(ap);
	if (n > 0)
		t->len = t->len + n < t->cap ? t->len + n : t->cap - 1;
}

/* A number as the messages and the example file spell it: "0.0", "1.0", "0.001". */
static void fmt_number(char *buf, size_t len, double v)
{
	snprintf(buf, len, "%.15g", v);
	if (!strpbrk(buf, ".en"))
		strncat(buf, ".0", len - strlen(buf) - 1);
}

/* Shortest text that reads back as v (the reload log: "1 -> 0.5"). */
static void fmt_double(char *buf, size_t len, double v)
{
	snprintf(buf, len, "%.15g", v);
	if (strtod(buf, NULL) != v)
		snprintf(buf, len, "%.17g", v);
}

/* Damerau-free edit distance of two short names, for "did you mean". */
static size_t edit_distance(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b), i, j;
	size_t row[64], prev, tmp;

	if (la >= 64 || lb >= 64)
		return 64;
	for (j = 0; j <= lb; j++)
		row[j] = j;
	for (i = 1; i <= la; i++) {
		prev = row[0];
		row[0] = i;
		for (j = 1; j <= lb; j++) {
			tmp = row[j];
			row[j] = prev + (a[i - 1] != b[j - 1]);
			if (row[j - 1] + 1 < row[j])
				row[j] = row[j - 1] + 1;
			if (tmp + 1 < row[j])
				row[j] = tmp + 1;
			prev = tmp;
		}
	}
	return row[lb];
}

/* The key closest to name (at most 2 edits, or a quarter of its length), or NULL. */
static const struct config_key *closest_key(const char *name)
{
	const struct config_key *best = NULL;
	size_t i, d, best_d = SIZE_MAX, len = strlen(name);

	for (i = 0; i < N_KEYS; i++) {
		d = edit_distance(name, config_keys[i].name);
		if (d < best_d) {
			best_d = d;
			best = &config_keys[i];
		}
	}
	return best_d <= 2 || best_d * 4 <= len ? best : NULL;
}

/* ---- values ---- */

static bool parse_bool(const char *s, bool *out)
{
	static const char *const yes[] = {"on", "true", "yes", "1"};
	static const char *const no[] = {"off", "false", "no", "0"};
	size_t i;

	for (i = 0; i < 4; i++) {
		if (!strcasecmp(s, yes[i])) {
			*out = true;
			return true;
		}
		if (!strcasecmp(s, no[i])) {
			*out = false;
			return true;
		}
	}
	return false;
}

static bool parse_u64(const char *s, uint64_t *out)
{
	unsigned long long v;
	char *end;

	if (*s < '0' || *s > '9')
		return false;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno || *end)
		return false;
	*out = v;
	return true;
}

static bool parse_i64(const char *s, int64_t *out)
{
	uint64_t u;

	if (*s == '-') {
		if (!parse_u64(s + 1, &u) || u > (uint64_t)INT64_MAX)
			return false;
		*out = -(int64_t)u;
		return true;
	}
	if (!parse_u64(s, &u) || u > (uint64_t)INT64_MAX)
		return false;
	*out = (int64_t)u;
	return true;
}

/* Plain decimal numbers only: no hex, inf or nan (strtod would take them). */
static bool parse_double(const char *s, double *out)
{
	char *end;
	double v;

	if (!*s || s[strspn(s, "0123456789.eE+-")])
		return false;
	errno = 0;
	v = strtod(s, &end);
	if (errno || *end || end == s || !isfinite(v))
		return false;
	*out = v;
	return true;
}

/* IPv4:PORT, [IPv6]:PORT or localhost:PORT, as http.c's parser takes them. */
static bool valid_address(const char *s)
{
	unsigned char addr[16];
	char host[64];
	const char *port;
	size_t hlen;
	uint64_t p;
	bool v6 = s[0] == '[';

	if (v6) {
		port = strstr(s, "]:");
		if (!port)
			return false;
		hlen = port - s - 1;
		port += 2;
	} else {
		port = strrchr(s, ':');
		if (!port)
			return false;
		hlen = port - s;
		port++;
	}
	if (hlen == 0 || hlen >= sizeof(host))
		return false;
	memcpy(host, s + v6, hlen);
	host[hlen] = '\0';
	if (!parse_u64(port, &p) || p < 1 || p > 65535)
		return false;
	if (!v6 && !strcmp(host, "localhost"))
		return true;
	return inet_pton(v6 ? AF_INET6 : AF_INET, host, addr) == 1;
}

/* What a key accepts, as it follows "expected " in a message. */
static void describe(const struct config_key *k, char *buf, size_t len)
{
	struct text t = {buf, 0, len};
	char lo[32], hi[32];
	const struct config_enum_value *e;

	buf[0] = '\0';
	switch (k->type) {
	case CONFIG_BOOL:
		text_add(&t, "on, off, true, false, yes, no, 1 or 0");
		break;
	case CONFIG_UINT:
	case CONFIG_INT:
		text_add(&t, "%s from %.0f to %.0f",
			 k->flags & CONFIG_F_POW2 ? "a power of two" : "an integer", k->min,
			 k->max);
		break;
	case CONFIG_DOUBLE:
		fmt_number(lo, sizeof(lo), k->min);
		fmt_number(hi, sizeof(hi), k->max);
		if (k->flags & CONFIG_F_MIN_EXCLUSIVE)
			text_add(&t, "a number greater than %s and at most %s", lo, hi);
		else
			text_add(&t, "a number from %s to %s", lo, hi);
		break;
	case CONFIG_ENUM:
		for (e = k->values; e->name; e++)
			text_add(&t, "%s%s",
				 e == k->values ? ""
				 : e[1].name	? ", "
						: " or ",
				 e->name);
		break;
	case CONFIG_STRING:
		if (k->flags & CONFIG_F_ADDRESS)
			text_add(&t,
				 "IPv4:PORT or [IPv6]:PORT with a numeric address and a port "
				 "from 1 to 65535%s",
				 k->flags & CONFIG_F_NONEMPTY ? "" : ", or nothing");
		else
			text_add(&t, "a non-empty string");
		break;
	case CONFIG_LIST:
		text_add(&t,
			 "at most %.0f comma-separated interface names of at most %d "
			 "characters each",
			 k->max, IFNAME_MAX);
		break;
	}
}

static void free_list(char **items, size_t *n)
{
	size_t i;

	for (i = 0; i < *n; i++) {
		free(items[i]);
		items[i] = NULL;
	}
	*n = 0;
}

/* Appends the comma-separated names of s to a list key (empty items are skipped). */
static int add_list(struct pgshadow_config *cfg, const struct config_key *k, const char *s)
{
	char **items = field(cfg, k);
	size_t *n = &cfg->n_interfaces;
	const char *p = s, *end;
	size_t len;

	while (*p) {
		p += strspn(p, " \t");
		end = p + strcspn(p, ",");
		len = end - p;
		while (len && (p[len - 1] == ' ' || p[len - 1] == '\t'))
			len--;
		if (len) {
			if (len > IFNAME_MAX || *n >= (size_t)k->max)
				return -EINVAL;
			items[*n] = strndup(p, len);
			if (!items[*n])
				return -ENOMEM;
			(*n)++;
		}
		p = *end ? end + 1 : end;
	}
	return 0;
}

/*
 * Sets key k of cfg from its text s (a list key appends unless replace). Returns 0,
 * -EINVAL (s is not allowed: describe(k) says what is) or -ENOMEM.
 */
static int set_value(struct pgshadow_config *cfg, const struct config_key *k, const char *s,
		     bool replace)
{
	const struct config_enum_value *e;
	void *f = field(cfg, k);
	uint64_t u;
	int64_t i;
	double d;
	bool b;
	char *copy;

	switch (k->type) {
	case CONFIG_BOOL:
		if (!parse_bool(s, &b))
			return -EINVAL;
		*(bool *)f = b;
		return 0;
	case CONFIG_UINT:
		if (!parse_u64(s, &u) || u < k->min || u > k->max)
			return -EINVAL;
		if ((k->flags & CONFIG_F_POW2) && (u & (u - 1)))
			return -EINVAL;
		*(uint64_t *)f = u;
		return 0;
	case CONFIG_INT:
		if (!parse_i64(s, &i) || i < k->min || i > k->max)
			return -EINVAL;
		*(int64_t *)f = i;
		return 0;
	case CONFIG_DOUBLE:
		if (!parse_double(s, &d) || d < k->min || d > k->max)
			return -EINVAL;
		if ((k->flags & CONFIG_F_MIN_EXCLUSIVE) && d <= k->min)
			return -EINVAL;
		*(double *)f = d;
		return 0;
	case CONFIG_ENUM:
		for (e = k->values; e->name; e++)
			if (!strcasecmp(s, e->name)) {
				*(int *)f = e->value;
				return 0;
			}
		return -EINVAL;
	case CONFIG_STRING:
		if ((k->flags & CONFIG_F_NONEMPTY) && !*s)
			return -EINVAL;
		if ((k->flags & CONFIG_F_ADDRESS) && *s && !valid_address(s))
			return -EINVAL;
		copy = NULL;
		if (*s && !(copy = strdup(s)))
			return -ENOMEM;
		free(*(char **)f);
		*(char **)f = copy;
		return 0;
	case CONFIG_LIST:
		if (replace)
			free_list(f, &cfg->n_interfaces);
		return add_list(cfg, k, s);
	}
	return -EINVAL;
}

static bool value_equal(const struct pgshadow_config *a, const struct pgshadow_config *b,
			const struct config_key *k)
{
	const void *fa = field(a, k), *fb = field(b, k);
	const char *sa, *sb;
	size_t i;

	switch (k->type) {
	case CONFIG_BOOL:
		return *(const bool *)fa == *(const bool *)fb;
	case CONFIG_UINT:
		return *(const uint64_t *)fa == *(const uint64_t *)fb;
	case CONFIG_INT:
		return *(const int64_t *)fa == *(const int64_t *)fb;
	case CONFIG_DOUBLE:
		return *(const double *)fa == *(const double *)fb;
	case CONFIG_ENUM:
		return *(const int *)fa == *(const int *)fb;
	case CONFIG_STRING:
		sa = *(char *const *)fa;
		sb = *(char *const *)fb;
		return sa == sb || (sa && sb && !strcmp(sa, sb));
	case CONFIG_LIST:
		if (a->n_interfaces != b->n_interfaces)
			return false;
		for (i = 0; i < a->n_interfaces; i++)
			if (strcmp(a->interfaces[i], b->interfaces[i]))
				return false;
		return true;
	}
	return false;
}

/* The value as the file would spell it; "" for an unset string or an empty list. */
static void format_value(const struct pgshadow_config *cfg, const struct config_key *k, char *buf,
			 size_t len)
{
	const struct config_enum_value *e;
	const void *f = field(cfg, k);
	struct text t = {buf, 0, len};
	size_t i;

	buf[0] = '\0';
	switch (k->type) {
	case CONFIG_BOOL:
		text_add(&t, "%s", *(const bool *)f ? "on" : "off");
		break;
	case CONFIG_UINT:
		text_add(&t, "%llu", (unsigned long long)*(const uint64_t *)f);
		break;
	case CONFIG_INT:
		text_add(&t, "%lld", (long long)*(const int64_t *)f);
		break;
	case CONFIG_DOUBLE:
		fmt_double(buf, len, *(const double *)f);
		break;
	case CONFIG_ENUM:
		for (e = k->values; e->name; e++)
			if (e->value == *(const int *)f)
				text_add(&t, "%s", e->name);
		break;
	case CONFIG_STRING:
		if (*(char *const *)f)
			text_add(&t, "%s", *(char *const *)f);
		break;
	case CONFIG_LIST:
		for (i = 0; i < cfg->n_interfaces; i++)
			text_add(&t, "%s%s", i ? "," : "", cfg->interfaces[i]);
		break;
	}
}

/* ---- defaults and freeing ---- */

static void free_databases(struct pgshadow_config *cfg)
{
	size_t i;

	for (i = 0; i < cfg->n_databases; i++) {
		free((char *)cfg->databases[i].source_db);
		free((char *)cfg->databases[i].mirror_dbname);
	}
	free(cfg->databases);
	cfg->databases = NULL;
	cfg->n_databases = 0;
}

void config_free(struct pgshadow_config *cfg)
{
	size_t i;

	if (!cfg)
		return;
	for (i = 0; i < N_KEYS; i++)
		if (config_keys[i].type == CONFIG_STRING)
			free(*(char **)field(cfg, &config_keys[i]));
	free_list(cfg->interfaces, &cfg->n_interfaces);
	free_databases(cfg);
	free(cfg->config_file);
	memset(cfg, 0, sizeof(*cfg));
}

/* Zeroes cfg and sets every default. Returns 0 or -ENOMEM. */
static int set_defaults(struct pgshadow_config *cfg)
{
	size_t i;
	int err;

	memset(cfg, 0, sizeof(*cfg));
	for (i = 0; i < N_KEYS; i++) {
		if (!config_keys[i].def)
			continue;
		err = set_value(cfg, &config_keys[i], config_keys[i].def, true);
		if (err) /* -EINVAL would be a bad table: test_config parses every default */
			return err;
	}
	return 0;
}

/* ---- the file ---- */

struct file_ctx {
	struct pgshadow_config *cfg;
	const char *path;
	FILE *f;
	int lineno;	    /* line being parsed (1-based) */
	bool at_line_start; /* the next chunk the reader returns starts a line */
	char raw[CONFIG_MAX_LINE];
	int key_line[N_KEYS]; /* where each [general] key was set, 0: not yet */
	int *db_line;	      /* where each [databases] line was, parallel to cfg->databases */
	int err_line;	      /* first error (0: none) */
	int err;
	char *errbuf;
	size_t errlen;
};

static int fail(struct file_ctx *x, int err, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Records the first error: "path:line: message". Returns 0 (libinih: an error). */
static int fail(struct file_ctx *x, int err, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (x->err_line)
		return 0;
	x->err_line = x->lineno;
	x->err = err;
	n = snprintf(x->errbuf, x->errlen, "%s:%d: ", x->path, x->lineno);
	if (n >= 0 && (size_t)n < x->errlen) {
		va_start(ap, fmt);
		vsnprintf(x->errbuf + n, x->errlen - n, fmt, ap);
		va_end(ap);
	}
	return 0;
}

/* Checks a section header the way libinih reads one, so that an empty unknown section
 * is an error too (libinih only reports keys). */
static void check_section(struct file_ctx *x, const char *line)
{
	const char *end;
	size_t len;

	line += strspn(line, " \t\r\n\v\f");
	if (*line != '[')
		return;
	end = strchr(line, ']');
	if (!end)
		return; /* libinih reports the syntax error */
	len = end - line - 1;
	if ((len == 7 && !strncmp(line + 1, "general", 7)) ||
	    (len == 9 && !strncmp(line + 1, "databases", 9)))
		return;
	fail(x, -EINVAL, "unknown section [%.*s]: expected [general] or [databases]", (int)len,
	     line + 1);
}

/* libinih's reader: counts lines, catches lines too long and checks section names. */
static char *read_line(char *str, int num, void *stream)
{
	struct file_ctx *x = stream;
	size_t len;
	bool start = x->at_line_start;

	if (!fgets(str, num, x->f))
		return NULL;
	len = strlen(str);
	x->at_line_start = len && str[len - 1] == '\n';
	if (!start)
		return str; /* the rest of a line too long, already reported */
	x->lineno++;
	snprintf(x->raw, sizeof(x->raw), "%s", str);
	if (!x->at_line_start && len == (size_t)num - 1 && !feof(x->f))
		fail(x, -EINVAL, "line longer than %d characters", CONFIG_MAX_LINE - 2);
	check_section(x, str);
	return str;
}

/* The key of the current line as written (libinih cuts names at INI_NAME_MAX). */
static size_t raw_key_length(const struct file_ctx *x)
{
	const char *p = x->raw + strspn(x->raw, " \t");
	size_t len = strcspn(p, "=:");

	while (len && (p[len - 1] == ' ' || p[len - 1] == '\t'))
		len--;
	return len;
}

static int on_general(struct file_ctx *x, const char *name, const char *value)
{
	const struct config_key *k = config_key_find(name), *near;
	char what[256];
	int err;

	if (!k) {
		near = closest_key(name);
		if (near)
			return fail(x, -EINVAL, "unknown key '%s' in [general] (did you mean %s?)",
				    name, near->name);
		return fail(x, -EINVAL, "unknown key '%s' in [general] (see pgshadow --help)",
			    name);
	}
	if (x->key_line[key_index(k)])
		return fail(x, -EINVAL, "%s is set twice (first on line %d)", name,
			    x->key_line[key_index(k)]);
	x->key_line[key_index(k)] = x->lineno;
	err = set_value(x->cfg, k, value, true);
	if (err == -ENOMEM)
		return fail(x, err, "%s: out of memory", name);
	if (err) {
		describe(k, what, sizeof(what));
		return fail(x, err, "%s = %s: expected %s", name, value, what);
	}
	return 1;
}

/* One word of a [databases] line; returns 0 or a message in why. */
static int db_word(struct replay_db_map *m, const char *word, size_t len, char *why, size_t wlen)
{
	const char *eq = memchr(word, '=', len);
	char num[64];
	size_t klen = eq ? (size_t)(eq - word) : len, vlen = eq ? len - klen - 1 : 0;
	double d;

	if (eq && klen == 6 && !strncmp(word, "dbname", 6)) {
		if (m->mirror_dbname) {
			snprintf(why, wlen, "dbname is given twice");
			return -EINVAL;
		}
		if (!vlen || vlen > CONFIG_NAME_MAX) {
			snprintf(why, wlen,
				 "dbname=%.*s: expected a database name of 1 to %d "
				 "characters",
				 (int)vlen, eq + 1, CONFIG_NAME_MAX);
			return -EINVAL;
		}
		m->mirror_dbname = strndup(eq + 1, vlen);
		return m->mirror_dbname ? 0 : -ENOMEM;
	}
	if (eq && klen == 8 && !strncmp(word, "exposure", 8)) {
		if (m->exposure >= 0) {
			snprintf(why, wlen, "exposure is given twice");
			return -EINVAL;
		}
		snprintf(num, sizeof(num), "%.*s", (int)vlen, eq + 1);
		if (vlen >= sizeof(num) || !parse_double(num, &d) || d < 0 || d > 1) {
			snprintf(why, wlen, "exposure=%.*s: expected a number from 0.0 to 1.0",
				 (int)vlen, eq + 1);
			return -EINVAL;
		}
		m->exposure = d;
		return 0;
	}
	snprintf(why, wlen, "unknown word '%.*s': expected dbname=NAME and/or exposure=0.0-1.0",
		 (int)len, word);
	return -EINVAL;
}

/* "app = dbname=app_v2 exposure=0.25": either word optional, in any order. */
static int on_database(struct file_ctx *x, const char *name, const char *value)
{
	struct pgshadow_config *cfg = x->cfg;
	struct replay_db_map m = {.exposure = -1}, *grown;
	const char *p = value;
	char why[256];
	size_t i, len;
	int err, *lines;

	if (!*name || strlen(name) > CONFIG_NAME_MAX)
		return fail(x, -EINVAL,
			    "[databases] %s: expected a database name of 1 to %d "
			    "characters",
			    name, CONFIG_NAME_MAX);
	for (i = 0; i < cfg->n_databases; i++)
		if (!strcmp(cfg->databases[i].source_db, name))
			return fail(x, -EINVAL, "[databases] %s is mapped twice (first on line %d)",
				    name, x->db_line[i]);
	if (cfg->n_databases >= CONFIG_MAX_DATABASES)
		return fail(x, -EINVAL, "[databases] %s: too many databases (at most %d)", name,
			    CONFIG_MAX_DATABASES);
	while (*(p += strspn(p, " \t"))) {
		len = strcspn(p, " \t");
		err = db_word(&m, p, len, why, sizeof(why));
		if (err) {
			free((char *)m.mirror_dbname);
			if (err == -ENOMEM)
				return fail(x, err, "[databases] %s: out of memory", name);
			return fail(x, err, "%s = %s: %s", name, value, why);
		}
		p += len;
	}
	m.source_db = strdup(name);
	grown = realloc(cfg->databases, (cfg->n_databases + 1) * sizeof(*grown));
	lines = realloc(x->db_line, (cfg->n_databases + 1) * sizeof(*lines));
	if (grown)
		cfg->databases = grown;
	if (lines)
		x->db_line = lines;
	if (!m.source_db || !grown || !lines) {
		free((char *)m.source_db);
		free((char *)m.mirror_dbname);
		return fail(x, -ENOMEM, "[databases] %s: out of memory", name);
	}
	x->db_line[cfg->n_databases] = x->lineno;
	cfg->databases[cfg->n_databases++] = m;
	return 1;
}

static int on_ini(void *user, const char *section, const char *name, const char *value)
{
	struct file_ctx *x = user;

	if (x->err_line)
		return 1; /* only the first error is reported */
	if (raw_key_length(x) > INI_NAME_MAX)
		return fail(x, -EINVAL, "key '%.*s...' is longer than %d characters", 20,
			    x->raw + strspn(x->raw, " \t"), INI_NAME_MAX);
	if (!strcmp(section, "general"))
		return on_general(x, name, value);
	if (!strcmp(section, "databases"))
		return on_database(x, name, value);
	if (!*section)
		return fail(x, -EINVAL, "%s = %s: keys go under [general] or [databases]", name,
			    value);
	return fail(x, -EINVAL, "unknown section [%s]", section);
}

/* Applies the file at path onto cfg. Returns 0, or a negative errno with err filled. */
static int parse_file(struct pgshadow_config *cfg, const char *path, char *err, size_t errlen)
{
	struct file_ctx *x;
	int rc, ret;

	x = calloc(1, sizeof(*x));
	if (!x) {
		snprintf(err, errlen, "%s: out of memory", path);
		return -ENOMEM;
	}
	x->cfg = cfg;
	x->path = path;
	x->at_line_start = true;
	x->errbuf = err;
	x->errlen = errlen;
	x->f = fopen(path, "re");
	if (!x->f) {
		ret = -errno;
		snprintf(err, errlen, "cannot read %s: %s", path, strerror(errno));
		free(x);
		return ret;
	}
	/* Debian's libinih makes its build options run-time variables: lines up to
	 * CONFIG_MAX_LINE (a conninfo can be long), and no Python-style continuation
	 * lines (an indented line is an error, not part of the previous value). */
	ini_max_line = CONFIG_MAX_LINE;
	ini_allow_multiline = false;
	rc = ini_parse_stream(read_line, x, on_ini, x);
	if (ferror(x->f)) {
		ret = -(errno ? errno : EIO);
		snprintf(err, errlen, "cannot read %s: %s", path, strerror(-ret));
	} else if (rc > 0 && (!x->err_line || rc < x->err_line)) {
		/* libinih's own error: a line that is neither [section] nor key = value.
		 * Its line count is ours up to the first line too long, which would have
		 * been reported first. */
		ret = -EINVAL;
		snprintf(err, errlen, "%s:%d: expected [section], key = value or a comment", path,
			 rc);
	} else if (rc < 0) {
		ret = -ENOMEM;
		snprintf(err, errlen, "%s: out of memory", path);
	} else {
		ret = x->err_line ? x->err : 0;
	}
	fclose(x->f);
	free(x->db_line);
	free(x);
	return ret;
}

/* ---- the command line ---- */

enum {
	OPT_CONFIG = 1000,
	OPT_PRINT_CONFIG,
	OPT_KEY = 2000, /* + key index */
};

static const struct {
	const char *flag;
	const char *key;
} flag_aliases[] = {
    {"mirror", "mirror_of"},
    {"interface", "interfaces"},
};

static const struct {
	char c;
	const char *key;
} short_flags[] = {
    {'p', "port"},
    {'i', "interfaces"},
    {'v', "verbose"},
};

static void flag_name(const struct config_key *k, char *buf, size_t len)
{
	size_t i;

	snprintf(buf, len, "%s", k->name);
	for (i = 0; buf[i]; i++)
		if (buf[i] == '_')
			buf[i] = '-';
}

/* Option names live as long as the table: one flag spelling per key, built once. */
static char flag_names[N_KEYS][64];

/* "unknown option" with a suggestion, or "ambiguous" for the prefix of several flags
 * (getopt_long takes a unique prefix: --mirror-q is --mirror-queue). */
static void unknown_option(const struct option *opts, const char *arg, char *err, size_t errlen)
{
	struct text t = {err, 0, errlen};
	const struct config_key *k;
	char name[64];
	size_t i, len, n = 0;

	if (strncmp(arg, "--", 2)) {
		snprintf(err, errlen, "unknown option '%s' (see --help)", arg);
		return;
	}
	len = strcspn(arg + 2, "=");
	for (i = 0; opts[i].name; i++) {
		if (len && !strncmp(opts[i].name, arg + 2, len))
			n++;
		if (arg[2 + len] && opts[i].has_arg == no_argument &&
		    !strncmp(opts[i].name, arg + 2, len) && !opts[i].name[len]) {
			snprintf(err, errlen, "option --%s takes no value", opts[i].name);
			return;
		}
	}
	if (n > 1) {
		text_add(&t, "ambiguous option '%.*s': could be", (int)len + 2, arg);
		for (i = 0, n = 0; opts[i].name; i++)
			if (!strncmp(opts[i].name, arg + 2, len))
				text_add(&t, "%s --%s", n++ ? "," : "", opts[i].name);
		return;
	}
	snprintf(name, sizeof(name), "%.*s", (int)len, arg + 2);
	for (i = 0; name[i]; i++)
		if (name[i] == '-')
			name[i] = '_';
	k = closest_key(name);
	if (k) {
		flag_name(k, name, sizeof(name));
		snprintf(err, errlen, "unknown option '%s' (did you mean --%s?)", arg, name);
	} else {
		snprintf(err, errlen, "unknown option '%s' (see --help)", arg);
	}
}

int config_parse_args(int argc, char **argv, struct config_cmdline *cl, char *err, size_t errlen)
{
	struct option opts[N_KEYS + 8];
	size_t i, n = 0;
	int c, li;

	memset(cl, 0, sizeof(*cl));
	for (i = 0; i < N_KEYS; i++) {
		flag_name(&config_keys[i], flag_names[i], sizeof(flag_names[i]));
		opts[n++] = (struct option){
		    flag_names[i],
		    config_keys[i].flags & CONFIG_F_NO_ARG ? no_argument : required_argument, NULL,
		    OPT_KEY + (int)i};
	}
	for (i = 0; i < sizeof(flag_aliases) / sizeof(flag_aliases[0]); i++)
		opts[n++] =
		    (struct option){flag_aliases[i].flag, required_argument, NULL,
				    OPT_KEY + key_index(config_key_find(flag_aliases[i].key))};
	opts[n++] = (struct option){"config", required_argument, NULL, OPT_CONFIG};
	opts[n++] = (struct option){"print-config", no_argument, NULL, OPT_PRINT_CONFIG};
	opts[n++] = (struct option){"version", no_argument, NULL, 'V'};
	opts[n++] = (struct option){"help", no_argument, NULL, 'h'};
	opts[n] = (struct option){NULL, 0, NULL, 0};

	optind = 0; /* glibc: start afresh (config_parse_args may run more than once) */
	opterr = 0;
	while ((c = getopt_long(argc, argv, ":p:i:vVh", opts, (li = -1, &li))) != -1) {
		const struct config_key *k = NULL;
		struct config_flag *fl;

		for (i = 0; i < sizeof(short_flags) / sizeof(short_flags[0]); i++)
			if (c == short_flags[i].c)
				k = config_key_find(short_flags[i].key);
		if (c >= OPT_KEY && c < OPT_KEY + (int)N_KEYS)
			k = &config_keys[c - OPT_KEY];
		if (k) {
			if (cl->n_flags == CONFIG_MAX_FLAGS) {
				snprintf(err, errlen, "too many options (at most %d)",
					 CONFIG_MAX_FLAGS);
				return -EINVAL;
			}
			fl = &cl->flags[cl->n_flags++];
			fl->key = key_index(k);
			fl->value = optarg;
			/* the long spelling the user chose (-p reads as --port) */
			fl->spelling = li >= 0 ? opts[li].name : flag_names[key_index(k)];
			if (k == config_key_find("interfaces") && li < 0)
				fl->spelling = "interface";
			continue;
		}
		switch (c) {
		case OPT_CONFIG:
			if (cl->config_file) {
				snprintf(err, errlen, "--config is given twice");
				return -EINVAL;
			}
			cl->config_file = optarg;
			break;
		case OPT_PRINT_CONFIG:
			cl->action = CONFIG_PRINT_CONFIG;
			break;
		case 'V':
			cl->action = CONFIG_VERSION;
			return 0;
		case 'h':
			cl->action = CONFIG_HELP;
			return 0;
		case ':':
			snprintf(err, errlen, "option %s needs a value (see --help)",
				 argv[optind - 1]);
			return -EINVAL;
		default:
			unknown_option(opts, argv[optind - 1], err, errlen);
			return -EINVAL;
		}
	}
	if (optind < argc) {
		snprintf(err, errlen, "unexpected argument '%s' (see --help)", argv[optind]);
		return -EINVAL;
	}
	return 0;
}

/* Applies the flags in order; a list key's first flag replaces the file's list. */
static int apply_flags(struct pgshadow_config *cfg, const struct config_cmdline *cl, char *err,
		       size_t errlen)
{
	bool seen[N_KEYS] = {};
	const struct config_key *k;
	char what[256];
	size_t i;
	int rc;

	for (i = 0; i < cl->n_flags; i++) {
		k = &config_keys[cl->flags[i].key];
		rc = set_value(cfg, k, cl->flags[i].value ? cl->flags[i].value : "on",
			       !seen[cl->flags[i].key]);
		seen[cl->flags[i].key] = true;
		if (rc == -ENOMEM) {
			snprintf(err, errlen, "--%s: out of memory", cl->flags[i].spelling);
			return rc;
		}
		if (rc) {
			describe(k, what, sizeof(what));
			snprintf(err, errlen, "invalid value '%s' for --%s: expected %s",
				 cl->flags[i].value, cl->flags[i].spelling, what);
			return rc;
		}
	}
	return 0;
}

int config_load(struct pgshadow_config *cfg, const struct config_cmdline *cl, char *err,
		size_t errlen)
{
	int rc;

	rc = set_defaults(cfg);
	if (rc) {
		snprintf(err, errlen, "out of memory");
		goto fail;
	}
	if (cl->config_file) {
		cfg->config_file = strdup(cl->config_file);
		if (!cfg->config_file) {
			rc = -ENOMEM;
			snprintf(err, errlen, "out of memory");
			goto fail;
		}
		rc = parse_file(cfg, cl->config_file, err, errlen);
		if (rc)
			goto fail;
	}
	rc = apply_flags(cfg, cl, err, errlen);
	if (rc)
		goto fail;
	if (!cfg->port && cl->action != CONFIG_PRINT_CONFIG) {
		rc = -EINVAL;
		if (cl->config_file)
			snprintf(err, errlen,
				 "%s: port is not set (set it under [general] or "
				 "pass --port)",
				 cl->config_file);
		else
			snprintf(err, errlen, "--port is required (see --help)");
		goto fail;
	}
	return 0;
fail:
	config_free(cfg);
	return rc;
}

/* ---- --help and the example file ---- */

static const char usage_head[] =
    "Usage: pgshadow --port PORT [OPTIONS]\n"
    "       pgshadow --config FILE [OPTIONS]\n"
    "       pgshadow readiness [--url URL | --config FILE] [--database NAME] [--json]\n"
    "       pgshadow readiness --prometheus URL --hosts HOST:PORT[,HOST:PORT...]\n"
    "\n"
    "Passively captures the PostgreSQL traffic of a TCP port with an eBPF program,\n"
    "rebuilds each connection's byte streams, decodes the wire protocol, serves\n"
    "per-database request, error and latency metrics of the source on /metrics, and\n"
    "with --mirror replays the requests to a mirror cluster and compares the answers.\n"
    "Needs root, or CAP_BPF + CAP_NET_ADMIN + CAP_PERFMON, and a kernel with BTF (tcx\n"
    "attach needs Linux >= 6.6).\n"
    "\n"
    "`pgshadow readiness` prints a running agent's migration-readiness report (GET\n"
    "/readiness, default URL http://127.0.0.1:9930/readiness) and exits 0 when it\n"
    "says READY, 1 when NOT READY, 2 when the agent cannot be reached or gave no\n"
    "report; it needs no privileges (`pgshadow readiness --help` for its options).\n"
    "The agent also serves an admin console to psql (see admin_socket_dir):\n"
    "psql -h /run/pgshadow -p 6433 pgshadow -c 'SHOW MIRROR READINESS'.\n"
    "\n"
    "Settings. Every option below is also a key of the [general] section of the\n"
    "configuration file, spelled with '_' for '-' (--mirror-exposure is\n"
    "mirror_exposure). Flags win over the file. SIGHUP re-reads the file (the flags\n"
    "still win) and applies the keys marked reloadable; the others need a restart.\n"
    "The [databases] section maps a source database to its mirror settings:\n"
    "app = dbname=app_v2 exposure=0.25.\n"
    "\n"
    "      --config FILE            read settings from this INI file\n"
    "      --print-config           print the settings (defaults, file, flags) as an\n"
    "                               INI file and exit; deploy/pgshadow.ini is its\n"
    "                               output for the defaults\n"
    "  -V, --version                print the version and exit\n"
    "  -h, --help                   print this help and exit\n"
    "\n";

static const char usage_tail[] =
    "\n"
    "Exit status: 0 after SIGINT/SIGTERM, 1 on a runtime failure, 2 when it cannot\n"
    "start (bad option or configuration, missing interface, not privileged, kernel\n"
    "without BPF/BTF).\n"
    "\n"
    "Examples:\n"
    "  pgshadow --port 5432\n"
    "  pgshadow --port 5432 --interface lo --dump-streams /tmp/streams\n"
    "  pgshadow --config /etc/pgshadow.ini --mirror-exposure 0.1\n";

/* Writes text word-wrapped to width, every line starting with prefix; the first line
 * starts at column `col` (already written). */
static void wrap(FILE *out, const char *text, const char *prefix, size_t col, size_t width)
{
	const char *p = text;
	size_t len, indent = strlen(prefix);
	bool first = true;

	while (*p) {
		len = strcspn(p, " ");
		if (!first && col + 1 + len > width) {
			fprintf(out, "\n%s", prefix);
			col = indent;
			first = true;
		}
		if (!first) {
			fputc(' ', out);
			col++;
		}
		fwrite(p, 1, len, out);
		col += len;
		first = false;
		p += len;
		p += strspn(p, " ");
	}
	fputc('\n', out);
}

/* "(1-65535, default 64, reloadable)" and friends, for --help. */
static void help_suffix(const struct config_key *k, char *buf, size_t len)
{
	struct text t = {buf, 0, len};
	char lo[32], hi[32];

	text_add(&t, "(");
	switch (k->type) {
	case CONFIG_UINT:
		text_add(&t, "%s%.0f-%.0f, ", k->flags & CONFIG_F_POW2 ? "a power of two " : "",
			 k->min, k->max);
		break;
	case CONFIG_INT:
		text_add(&t, "%.0f to %.0f, ", k->min, k->max);
		break;
	case CONFIG_DOUBLE:
		fmt_number(lo, sizeof(lo), k->min);
		fmt_number(hi, sizeof(hi), k->max);
		if (k->flags & CONFIG_F_MIN_EXCLUSIVE)
			text_add(&t, "more than %s, up to %s, ", lo, hi);
		else
			text_add(&t, "%s-%s, ", lo, hi);
		break;
	default:
		break;
	}
	if (k->flags & CONFIG_F_REQUIRED)
		text_add(&t, "required");
	else if (k->def && *k->def)
		text_add(&t, "default %s", k->def);
	else
		text_add(&t, "default: empty");
	if (k->reloadable)
		text_add(&t, ", reloadable");
	text_add(&t, ")");
}

/* "ARG" of a key in --help: its metavariable, or its enum values. */
static void key_arg(const struct config_key *k, char *buf, size_t len)
{
	struct text t = {buf, 0, len};
	const struct config_enum_value *e;

	buf[0] = '\0';
	if (k->arg)
		text_add(&t, "%s", k->arg);
	else if (k->values)
		for (e = k->values; e->name; e++)
			text_add(&t, "%s%s", e == k->values ? "" : "|", e->name);
}

void config_usage(FILE *out)
{
	char opt[192], arg[64], name[64], suffix[128], desc[1024];
	const struct config_key *k;
	size_t i, j, col;
	char sc;

	fputs(usage_head, out);
	fputs("Options and [general] keys:\n", out);
	for (i = 0; i < N_KEYS; i++) {
		k = &config_keys[i];
		sc = 0;
		for (j = 0; j < sizeof(short_flags) / sizeof(short_flags[0]); j++)
			if (!strcmp(short_flags[j].key, k->name))
				sc = short_flags[j].c;
		flag_name(k, name, sizeof(name));
		key_arg(k, arg, sizeof(arg));
		if (sc)
			snprintf(opt, sizeof(opt), "  -%c, --%s%s%s", sc, name, *arg ? " " : "",
				 arg);
		else
			snprintf(opt, sizeof(opt), "      --%s%s%s", name, *arg ? " " : "", arg);
		fputs(opt, out);
		col = strlen(opt);
		if (col + 2 > HELP_COLUMN) {
			fputc('\n', out);
			col = 0;
		}
		fprintf(out, "%*s", (int)(HELP_COLUMN - col - 1), "");
		help_suffix(k, suffix, sizeof(suffix));
		snprintf(desc, sizeof(desc), "%s%s %s",
			 !strcmp(k->name, "interfaces") ? "Also --interface NAME. " : "", k->help,
			 suffix);
		wrap(out, desc, "                               ", HELP_COLUMN - 1, HELP_WIDTH);
	}
	fputs(usage_tail, out);
}

static bool is_default(const struct pgshadow_config *cfg, const struct config_key *k)
{
	struct pgshadow_config d = {};
	bool same;

	if (!k->def) {
		switch (k->type) {
		case CONFIG_STRING:
			return !*(char *const *)field(cfg, k);
		case CONFIG_UINT:
			return !*(const uint64_t *)field(cfg, k);
		default:
			return false;
		}
	}
	if (set_value(&d, k, k->def, true))
		return false;
	same = value_equal(cfg, &d, k);
	if (k->type == CONFIG_STRING)
		free(*(char **)field(&d, k));
	if (k->type == CONFIG_LIST)
		free_list(d.interfaces, &d.n_interfaces);
	return same;
}

void config_print(FILE *out, const struct pgshadow_config *cfg)
{
	char value[CONFIG_MAX_LINE], suffix[128], text[1024];
	const struct config_key *k;
	const struct replay_db_map *m;
	size_t i;

	fputs("; pgshadow configuration (INI; pgshadow --config FILE). Written by\n"
	      "; `pgshadow --print-config`: every key with its help text; keys at their default\n"
	      "; are commented out. Comments start with ';' or '#' (inline: ' ;'). A flag on the\n"
	      "; command line (--key-with-dashes) wins over this file. SIGHUP re-reads it and\n"
	      "; applies the keys marked reloadable; the others need a restart.\n"
	      "\n[general]\n",
	      out);
	for (i = 0; i < N_KEYS; i++) {
		k = &config_keys[i];
		help_suffix(k, suffix, sizeof(suffix));
		snprintf(text, sizeof(text), "%s %s", k->help, suffix);
		fputs("\n; ", out);
		wrap(out, text, "; ", 2, FILE_WIDTH);
		format_value(cfg, k, value, sizeof(value));
		if (is_default(cfg, k))
			snprintf(value, sizeof(value), "%s", k->def ? k->def : "");
		fprintf(out, "%s%s =%s%s\n", is_default(cfg, k) ? ";" : "", k->name,
			*value ? " " : "", value);
	}
	fputs("\n[databases]\n"
	      "; source_database = [dbname=MIRROR_DATABASE] [exposure=0.0-1.0]\n"
	      "; dbname: the database the mirror session connects to (default: the same name;\n"
	      "; needs a restart); exposure: this database's own mirror_exposure (reloadable).\n",
	      out);
	if (!cfg->n_databases)
		fputs(";app = dbname=app_v2 exposure=0.25\n", out);
	for (i = 0; i < cfg->n_databases; i++) {
		m = &cfg->databases[i];
		fprintf(out, "%s =", m->source_db);
		if (m->mirror_dbname)
			fprintf(out, " dbname=%s", m->mirror_dbname);
		if (m->exposure >= 0) {
			fmt_double(value, sizeof(value), m->exposure);
			fprintf(out, " exposure=%s", value);
		}
		fputc('\n', out);
	}
}

/* ---- reload ---- */

static const struct replay_db_map *find_db(const struct pgshadow_config *cfg, const char *name)
{
	size_t i;

	for (i = 0; i < cfg->n_databases; i++)
		if (!strcmp(cfg->databases[i].source_db, name))
			return &cfg->databases[i];
	return NULL;
}

static void fmt_exposure(char *buf, size_t len, double x)
{
	if (x < 0)
		snprintf(buf, len, "(mirror_exposure)");
	else
		fmt_double(buf, len, x);
}

/* Sets the running exposure of db. Only lines the agent started with can change: replay
 * copied the [databases] lines at start, and a line added later needs a restart. */
static bool set_db_exposure(struct pgshadow_config *running, const char *db, double x)
{
	size_t i;

	for (i = 0; i < running->n_databases; i++)
		if (!strcmp(running->databases[i].source_db, db)) {
			running->databases[i].exposure = x;
			return true;
		}
	return false;
}

static size_t reload_db(struct pgshadow_config *running, const char *db,
			const struct replay_db_map *old, const struct replay_db_map *new,
			config_change_fn fn, void *ctx)
{
	double ox = old ? old->exposure : -1, nx = new ? new->exposure : -1;
	const char *od = old ? old->mirror_dbname : NULL, *nd = new ? new->mirror_dbname : NULL;
	char what[128], a[64], b[64];
	struct config_change c;
	size_t n = 0;

	if (ox != nx) {
		snprintf(what, sizeof(what), "[databases] %s exposure", db);
		fmt_exposure(a, sizeof(a), ox);
		fmt_exposure(b, sizeof(b), nx);
		c = (struct config_change){.what = what,
					   .old_value = a,
					   .new_value = b,
					   .is_exposure = true,
					   .db = db,
					   .exposure = nx};
		c.applied = set_db_exposure(running, db, nx);
		fn(ctx, &c);
		n++;
	}
	if (od != nd && (!od || !nd || strcmp(od, nd))) {
		snprintf(what, sizeof(what), "[databases] %s dbname", db);
		c = (struct config_change){
		    .what = what, .old_value = od ? od : "(same)", .new_value = nd ? nd : "(same)"};
		fn(ctx, &c);
		n++;
	}
	return n;
}

size_t config_reload(struct pgshadow_config *running, const struct pgshadow_config *next,
		     config_change_fn fn, void *ctx)
{
	char a[CONFIG_MAX_LINE], b[CONFIG_MAX_LINE];
	const struct config_key *k;
	struct config_change c;
	struct replay_db_map old;
	const struct replay_db_map *om;
	size_t i, n = 0, n_old = running->n_databases;

	for (i = 0; i < N_KEYS; i++) {
		k = &config_keys[i];
		if (value_equal(running, next, k))
			continue;
		c = (struct config_change){.what = k->name, .applied = k->reloadable};
		if (!(k->flags & CONFIG_F_SECRET)) {
			format_value(running, k, a, sizeof(a));
			format_value(next, k, b, sizeof(b));
			c.old_value = *a ? a : "(none)";
			c.new_value = *b ? b : "(none)";
		}
		if (k->reloadable) /* every reloadable key is a number in struct config_live */
			memcpy(field(running, k), field(next, k),
			       k->type == CONFIG_DOUBLE ? sizeof(double) : sizeof(uint64_t));
		if (k->offset == LIVE(mirror_exposure)) {
			c.is_exposure = true;
			c.exposure = next->live.mirror_exposure;
		}
		fn(ctx, &c);
		n++;
	}
	/* [databases]: next's lines in order, then the running lines next no longer has
	 * (entries are copied: set_db_exposure changes them) */
	for (i = 0; i < next->n_databases; i++) {
		om = find_db(running, next->databases[i].source_db);
		if (om)
			old = *om;
		n += reload_db(running, next->databases[i].source_db, om ? &old : NULL,
			       &next->databases[i], fn, ctx);
	}
	for (i = 0; i < n_old; i++) {
		old = running->databases[i];
		if (!find_db(next, old.source_db))
			n += reload_db(running, old.source_db, &old, NULL, fn, ctx);
	}
	return n;
}

void config_change_describe(const struct config_change *c, char *buf, size_t len)
{
	const char *verdict = c->applied ? "applied" : "needs a restart (ignored)";

	if (c->old_value && c->new_value)
		snprintf(buf, len, "%s %s -> %s %s", c->what, c->old_value, c->new_value, verdict);
	else
		snprintf(buf, len, "%s changed, %s", c->what, verdict);
}

/* ---- sharing ---- */

struct config_shared {
	pthread_mutex_t lock;
	struct config_live live;
};

struct config_shared *config_shared_new(const struct config_live *init)
{
	struct config_shared *s = calloc(1, sizeof(*s));

	if (!s)
		return NULL;
	pthread_mutex_init(&s->lock, NULL);
	s->live = *init;
	return s;
}

void config_shared_get(struct config_shared *s, struct config_live *out)
{
	pthread_mutex_lock(&s->lock);
	*out = s->live;
	pthread_mutex_unlock(&s->lock);
}

void config_shared_set(struct config_shared *s, const struct config_live *in)
{
	pthread_mutex_lock(&s->lock);
	s->live = *in;
	pthread_mutex_unlock(&s->lock);
}

void config_shared_free(struct config_shared *s)
{
	if (!s)
		return;
	pthread_mutex_destroy(&s->lock);
	free(s);
}
