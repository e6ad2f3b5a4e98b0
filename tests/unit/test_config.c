// SPDX-License-Identifier: BSD-2-Clause
/* config: every key from a file and from flags, every bad-value message (exact text with
 * file:line:key), unknown keys and sections, flag precedence, [databases] lines, the
 * reload diff, --help and the committed example file. */
#include <errno.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "config.h"

#ifndef SRCDIR
#define SRCDIR "."
#endif

#define MAX_ARGS 128

static char tmp_path[64];

/* Writes text to a new temporary file; returns its path (valid until the next call). */
static const char *write_file(const char *text)
{
	FILE *f;
	int fd;

	if (tmp_path[0])
		unlink(tmp_path);
	snprintf(tmp_path, sizeof(tmp_path), "/tmp/test_config_XXXXXX");
	fd = mkstemp(tmp_path);
	assert_true(fd >= 0);
	f = fdopen(fd, "w");
	assert_non_null(f);
	fputs(text, f);
	fclose(f);
	return tmp_path;
}

static int teardown_file(void **state)
{
	(void)state;
	if (tmp_path[0])
		unlink(tmp_path);
	tmp_path[0] = '\0';
	return 0;
}

/* Parses "pgshadow [--config file] args..." (NULL-terminated) into cl; returns
 * config_parse_args's result. argv strings must outlive cl (literals do). */
static int parse_argv(struct config_cmdline *cl, char **argv_store, const char *file,
		      const char *const *args, char *err, size_t errlen)
{
	int argc = 0;

	argv_store[argc++] = "pgshadow";
	if (file) {
		argv_store[argc++] = "--config";
		argv_store[argc++] = (char *)file;
	}
	while (args && *args) {
		assert_true(argc < MAX_ARGS - 1);
		argv_store[argc++] = (char *)*args++;
	}
	argv_store[argc] = NULL;
	return config_parse_args(argc, argv_store, cl, err, errlen);
}

static struct config_cmdline cl; /* large: keep it off the stack */
static char *argv_store[MAX_ARGS];

/* Loads the file text (NULL: no file) with flags; returns config_load's result. */
static int load_args(struct pgshadow_config *cfg, const char *text, const char *const *args,
		     char *err, size_t errlen)
{
	const char *file = text ? write_file(text) : NULL;
	int rc;

	err[0] = '\0';
	rc = parse_argv(&cl, argv_store, file, args, err, errlen);
	if (rc)
		return rc;
	return config_load(cfg, &cl, err, errlen);
}

static void load_ok(struct pgshadow_config *cfg, const char *text, const char *const *args)
{
	char err[1024];

	if (load_args(cfg, text, args, err, sizeof(err)))
		fail_msg("load failed: %s", err);
}

/* Loads text (as a file) and expects exactly "<file>:<line>: <msg>". */
static void expect_file_error(const char *text, int line, const char *msg)
{
	struct pgshadow_config cfg;
	char err[1024], want[1024];

	assert_int_not_equal(load_args(&cfg, text, NULL, err, sizeof(err)), 0);
	snprintf(want, sizeof(want), "%s:%d: %s", tmp_path, line, msg);
	assert_string_equal(err, want);
	/* nothing to free, and nothing was kept */
	assert_null(cfg.metrics_listen);
	assert_int_equal(cfg.n_databases, 0);
}

static const char *find_iface(const struct pgshadow_config *c, size_t i)
{
	return i < c->n_interfaces ? c->interfaces[i] : "";
}

static const struct replay_db_map *db(const struct pgshadow_config *c, const char *name)
{
	size_t i;

	for (i = 0; i < c->n_databases; i++)
		if (!strcmp(c->databases[i].source_db, name))
			return &c->databases[i];
	return NULL;
}

/* ---- the table itself ---- */

static void test_table_sane(void **state)
{
	size_t i, live_lo = offsetof(struct pgshadow_config, live),
		  live_hi = live_lo + sizeof(struct config_live);
	const struct config_key *k;

	(void)state;
	for (i = 0; i < config_n_keys; i++) {
		k = &config_keys[i];
		assert_non_null(k->help);
		assert_ptr_equal(config_key_find(k->name), k);
		/* reloadable keys are numbers inside struct config_live (config_reload copies
		 * them; other threads read them through config_shared) */
		if (k->reloadable) {
			assert_true(k->offset >= live_lo && k->offset < live_hi);
			assert_true(k->type == CONFIG_UINT || k->type == CONFIG_INT ||
				    k->type == CONFIG_DOUBLE);
		} else {
			assert_false(k->offset >= live_lo && k->offset < live_hi);
		}
		assert_true(k->def || (k->flags & CONFIG_F_REQUIRED) || k->type == CONFIG_STRING);
	}
	assert_null(config_key_find("nope"));
}

static void test_defaults(void **state)
{
	struct pgshadow_config c;
	const char *args[] = {"--port", "5432", NULL};

	(void)state;
	load_ok(&c, NULL, args);
	assert_int_equal(c.port, 5432);
	assert_int_equal(c.n_interfaces, 0);
	assert_int_equal(c.attach, CAPTURE_ATTACH_TCX);
	assert_null(c.dump_streams);
	assert_int_equal(c.ringbuf_mb, 64);
	assert_int_equal(c.max_flows, 65536);
	assert_int_equal(c.flow_buffer_kb, 4096);
	assert_int_equal(c.hole_timeout_ms, 1000);
	assert_int_equal(c.idle_timeout_s, 600);
	assert_string_equal(c.metrics_listen, "127.0.0.1:9930");
	assert_int_equal(c.max_databases, 100);
	assert_int_equal(c.max_message_kb, 1024);
	assert_null(c.source_dsn);
	assert_false(c.verbose);
	assert_null(c.mirror_of);
	assert_int_equal(c.mirror_queue, 1000);
	assert_int_equal(c.mirror_pipeline, 16);
	assert_int_equal(c.mirror_max_connections, 100);
	assert_int_equal(c.mirror_replay_nice, -10);
	assert_int_equal(c.mirror_timeout_ms, 30000);
	assert_false(c.mirror_set_role);
	assert_int_equal(c.mirror_mode, REPLAY_MODE_ALL);
	assert_int_equal(c.mirror_sampling, REPLAY_SAMPLE_TRANSACTION);
	assert_int_equal(c.mirror_compare, REPLAY_COMPARE_STATUS);
	assert_int_equal(c.mirror_aborted, REPLAY_ABORTED_REPLAY);
	assert_int_equal(c.mirror_level, REPLAY_LEVEL_ALL);
	assert_false(c.mirror_replay_timing);
	assert_true(c.mirror_metrics_enabled);
	assert_int_equal(c.mirror_metrics_reset_interval, 3600);
	assert_string_equal(c.admin_socket_dir, "/run/pgshadow");
	assert_int_equal(c.admin_port, 6433);
	assert_null(c.admin_listen);
	assert_true(c.live.mirror_exposure == 1.0);
	assert_int_equal(c.live.log_mismatches, 0);
	assert_int_equal(c.live.mirror_error_threshold, 100);
	assert_int_equal(c.live.mirror_latency_threshold_ms, 5000);
	assert_true(c.live.mirror_max_error_rate == 0.01);
	assert_int_equal(c.live.mirror_max_latency_ms, 1000);
	assert_true(c.live.mirror_min_runtime_hours == 24);
	assert_int_equal(c.live.mirror_min_requests, 100000);
	assert_int_equal(c.live.mirror_consecutive_success, 10000);
	assert_true(c.live.mirror_max_p99_ratio == 2.0);
	assert_true(c.live.mirror_latency_floor_ms == 5);
	assert_true(c.live.mirror_max_drop_rate == 0.01);
	assert_true(c.live.mirror_max_mismatch_rate == 0.001);
	assert_int_equal(c.live.mirror_max_regressed_statements, -1);
	assert_int_equal(c.live.mirror_min_statement_calls, 50);
	assert_int_equal(c.max_query_stats, 5000);
	assert_int_equal(c.n_databases, 0);
	assert_null(c.config_file);
	config_free(&c);
	config_free(&c); /* zeroed: a second free is harmless */
	config_free(NULL);
}

/* Every key set to a value that is not its default, from a file. */
static const char every_key[] = "; every key\n"
				"# both comment styles\n"
				"[general]\n"
				"port = 6543\n"
				"interfaces = lo, eth0 ,veth1\n"
				"attach = tc\n"
				"dump_streams = /tmp/streams\n"
				"ringbuf_mb = 128\n"
				"max_flows = 1000\n"
				"flow_buffer_kb = 64\n"
				"hole_timeout_ms = 250\n"
				"idle_timeout_s = 30\n"
				"metrics_listen = [::1]:9931\n"
				"max_databases = 7\n"
				"max_message_kb = 2048\n"
				"source_dsn = host=/run/postgresql user=pgshadow\n"
				"mirror_of = host=mirror port=5433 password=s;cret\n"
				"mirror_exposure = 0.25\n"
				"mirror_sampling = session\n"
				"mirror_mode = read_only\n"
				"mirror_level = ddl\n"
				"mirror_aborted = skip\n"
				"mirror_compare = rows\n"
				"mirror_replay_timing = yes\n"
				"mirror_set_role = TRUE\n"
				"mirror_queue = 1000000\n"
				"mirror_pipeline = 1\n"
				"mirror_max_connections = 10000\n"
				"mirror_replay_nice = -20\n"
				"user = pgshadow\n"
				"mirror_timeout_ms = 1\n"
				"log_mismatches = 1000000\n"
				"mirror_metrics_enabled = off\n"
				"mirror_metrics_reset_interval = 31536000\n"
				"mirror_error_threshold = 5\n"
				"mirror_latency_threshold_ms = 250\n"
				"mirror_max_error_rate = 0.02\n"
				"mirror_max_latency_ms = 100\n"
				"mirror_max_p99_ratio = 1.5\n"
				"mirror_latency_floor_ms = 0.5\n"
				"mirror_min_runtime_hours = 0\n"
				"mirror_min_requests = 500\n"
				"mirror_consecutive_success = 0\n"
				"mirror_max_drop_rate = 0\n"
				"mirror_max_mismatch_rate = 1\n"
				"admin_socket_dir = /tmp/admin\n"
				"admin_port = 7000\n"
				"admin_listen = 127.0.0.1:6433 ; inline comment\n"
				"verbose = 1\n"
				"\n"
				"[databases]\n"
				"app = dbname=app_v2 exposure=0.25\n"
				"reports = exposure=0\n"
				"legacy = dbname=legacy_v9\n"
				"plain =\n";

static void check_every_key(const struct pgshadow_config *c)
{
	assert_int_equal(c->port, 6543);
	assert_int_equal(c->n_interfaces, 3);
	assert_string_equal(find_iface(c, 0), "lo");
	assert_string_equal(find_iface(c, 1), "eth0");
	assert_string_equal(find_iface(c, 2), "veth1");
	assert_int_equal(c->attach, CAPTURE_ATTACH_TC);
	assert_string_equal(c->dump_streams, "/tmp/streams");
	assert_int_equal(c->ringbuf_mb, 128);
	assert_int_equal(c->max_flows, 1000);
	assert_int_equal(c->flow_buffer_kb, 64);
	assert_int_equal(c->hole_timeout_ms, 250);
	assert_int_equal(c->idle_timeout_s, 30);
	assert_string_equal(c->metrics_listen, "[::1]:9931");
	assert_int_equal(c->max_databases, 7);
	assert_int_equal(c->max_message_kb, 2048);
	assert_string_equal(c->source_dsn, "host=/run/postgresql user=pgshadow");
	assert_string_equal(c->mirror_of, "host=mirror port=5433 password=s;cret");
	assert_true(c->live.mirror_exposure == 0.25);
	assert_int_equal(c->mirror_sampling, REPLAY_SAMPLE_SESSION);
	assert_int_equal(c->mirror_mode, REPLAY_MODE_READ_ONLY);
	assert_int_equal(c->mirror_level, REPLAY_LEVEL_DDL);
	assert_int_equal(c->mirror_aborted, REPLAY_ABORTED_SKIP);
	assert_int_equal(c->mirror_compare, REPLAY_COMPARE_ROWS);
	assert_true(c->mirror_replay_timing);
	assert_true(c->mirror_set_role);
	assert_int_equal(c->mirror_queue, 1000000);
	assert_int_equal(c->mirror_pipeline, 1);
	assert_int_equal(c->mirror_max_connections, 10000);
	assert_int_equal(c->mirror_replay_nice, -20);
	assert_string_equal(c->user, "pgshadow");
	assert_int_equal(c->mirror_timeout_ms, 1);
	assert_int_equal(c->live.log_mismatches, 1000000);
	assert_false(c->mirror_metrics_enabled);
	assert_int_equal(c->mirror_metrics_reset_interval, 31536000);
	assert_int_equal(c->live.mirror_error_threshold, 5);
	assert_int_equal(c->live.mirror_latency_threshold_ms, 250);
	assert_true(c->live.mirror_max_error_rate == 0.02);
	assert_int_equal(c->live.mirror_max_latency_ms, 100);
	assert_true(c->live.mirror_max_p99_ratio == 1.5);
	assert_true(c->live.mirror_latency_floor_ms == 0.5);
	assert_true(c->live.mirror_min_runtime_hours == 0);
	assert_int_equal(c->live.mirror_min_requests, 500);
	assert_int_equal(c->live.mirror_consecutive_success, 0);
	assert_true(c->live.mirror_max_drop_rate == 0);
	assert_true(c->live.mirror_max_mismatch_rate == 1);
	assert_string_equal(c->admin_socket_dir, "/tmp/admin");
	assert_int_equal(c->admin_port, 7000);
	assert_string_equal(c->admin_listen, "127.0.0.1:6433");
	assert_true(c->verbose);

	assert_int_equal(c->n_databases, 4);
	assert_string_equal(db(c, "app")->mirror_dbname, "app_v2");
	assert_true(db(c, "app")->exposure == 0.25);
	assert_null(db(c, "reports")->mirror_dbname);
	assert_true(db(c, "reports")->exposure == 0);
	assert_string_equal(db(c, "legacy")->mirror_dbname, "legacy_v9");
	assert_true(db(c, "legacy")->exposure < 0);
	assert_null(db(c, "plain")->mirror_dbname);
	assert_true(db(c, "plain")->exposure < 0);
}

static void test_every_key_from_file(void **state)
{
	struct pgshadow_config c;

	(void)state;
	load_ok(&c, every_key, NULL);
	check_every_key(&c);
	assert_string_equal(c.config_file, tmp_path);
	config_free(&c);
}

/* --print-config writes a file that reads back as the same configuration. */
static void test_print_config_round_trip(void **state)
{
	struct pgshadow_config c, d;
	char *text = NULL, *again = NULL;
	size_t len;
	FILE *f;

	(void)state;
	load_ok(&c, every_key, NULL);
	f = open_memstream(&text, &len);
	config_print(f, &c);
	fclose(f);
	load_ok(&d, text, NULL);
	check_every_key(&d);
	f = open_memstream(&again, &len);
	config_print(f, &d);
	fclose(f);
	assert_string_equal(text, again);
	config_free(&c);
	config_free(&d);
	free(text);
	free(again);
}

/* Every key from its flag, in both spellings getopt takes. */
static void test_every_key_from_flags(void **state)
{
	const char *args[] = {"-p",
			      "6543",
			      "-i",
			      "lo,eth0",
			      "--interface",
			      "veth1",
			      "--attach=tc",
			      "--dump-streams",
			      "/tmp/streams",
			      "--ringbuf-mb",
			      "128",
			      "--max-flows",
			      "1000",
			      "--flow-buffer-kb",
			      "64",
			      "--hole-timeout-ms",
			      "250",
			      "--idle-timeout-s",
			      "30",
			      "--metrics-listen",
			      "[::1]:9931",
			      "--max-databases",
			      "7",
			      "--max-message-kb",
			      "2048",
			      "--source-dsn",
			      "host=/run/postgresql user=pgshadow",
			      "--mirror",
			      "host=mirror port=5433 password=s;cret",
			      "--mirror-exposure",
			      "0.25",
			      "--mirror-sampling",
			      "session",
			      "--mirror-mode",
			      "read_only",
			      "--mirror-level",
			      "ddl",
			      "--mirror-aborted",
			      "skip",
			      "--mirror-compare",
			      "rows",
			      "--mirror-replay-timing",
			      "yes",
			      "--mirror-set-role",
			      "TRUE",
			      "--mirror-queue",
			      "1000000",
			      "--mirror-pipeline",
			      "1",
			      "--mirror-max-connections",
			      "10000",
			      "--mirror-replay-nice",
			      "-20",
			      "--user",
			      "pgshadow",
			      "--mirror-timeout-ms",
			      "1",
			      "--log-mismatches",
			      "1000000",
			      "--mirror-metrics-enabled",
			      "off",
			      "--mirror-metrics-reset-interval",
			      "31536000",
			      "--mirror-error-threshold",
			      "5",
			      "--mirror-latency-threshold-ms",
			      "250",
			      "--mirror-max-error-rate",
			      "0.02",
			      "--mirror-max-latency-ms",
			      "100",
			      "--mirror-max-p99-ratio",
			      "1.5",
			      "--mirror-latency-floor-ms",
			      "0.5",
			      "--mirror-min-runtime-hours",
			      "0",
			      "--mirror-min-requests",
			      "500",
			      "--mirror-consecutive-success",
			      "0",
			      "--mirror-max-drop-rate",
			      "0",
			      "--mirror-max-mismatch-rate",
			      "1",
			      "--admin-socket-dir",
			      "/tmp/admin",
			      "--admin-port",
			      "7000",
			      "--admin-listen",
			      "127.0.0.1:6433",
			      "-v",
			      NULL};
	const char dbs[] = "[databases]\n"
			   "app = dbname=app_v2 exposure=0.25\n"
			   "reports = exposure=0\n"
			   "legacy = dbname=legacy_v9\n"
			   "plain =\n";
	struct pgshadow_config c;

	(void)state;
	load_ok(&c, dbs, args);
	check_every_key(&c);
	config_free(&c);
}

/* ---- bad values: one exact message each, from the file and from the flag ---- */

struct bad_value {
	const char *key;
	const char *value;
	const char *expected; /* after "expected " */
};

static const struct bad_value bad_values[] = {
    {"port", "0", "an integer from 1 to 65535"},
    {"port", "65536", "an integer from 1 to 65535"},
    {"port", "-1", "an integer from 1 to 65535"},
    {"port", "+5", "an integer from 1 to 65535"},
    {"port", "5432x", "an integer from 1 to 65535"},
    {"port", "99999999999999999999999", "an integer from 1 to 65535"},
    {"interfaces", "abcdefghijklmnop",
     "at most 64 comma-separated interface names of at most 15 characters each"},
    {"attach", "xdp", "tcx or tc"},
    {"ringbuf_mb", "3", "a power of two from 1 to 1024"},
    {"ringbuf_mb", "2048", "a power of two from 1 to 1024"},
    {"ringbuf_mb", "0", "a power of two from 1 to 1024"},
    {"max_flows", "4000001", "an integer from 1 to 4000000"},
    {"flow_buffer_kb", "0", "an integer from 1 to 1048576"},
    {"hole_timeout_ms", "3600001", "an integer from 1 to 3600000"},
    {"idle_timeout_s", "0", "an integer from 1 to 2592000"},
    {"metrics_listen", "localhost",
     "IPv4:PORT or [IPv6]:PORT with a numeric address and a port from 1 to 65535"},
    {"metrics_listen", "",
     "IPv4:PORT or [IPv6]:PORT with a numeric address and a port from 1 to 65535"},
    {"metrics_listen", "1.2.3:80",
     "IPv4:PORT or [IPv6]:PORT with a numeric address and a port from 1 to 65535"},
    {"metrics_listen", "[::1]:0",
     "IPv4:PORT or [IPv6]:PORT with a numeric address and a port from 1 to 65535"},
    {"max_databases", "10001", "an integer from 1 to 10000"},
    {"max_message_kb", "1048577", "an integer from 1 to 1048576"},
    {"mirror_exposure", "1.5", "a number from 0.0 to 1.0"},
    {"mirror_exposure", "-0.1", "a number from 0.0 to 1.0"},
    {"mirror_exposure", "nan", "a number from 0.0 to 1.0"},
    {"mirror_exposure", "inf", "a number from 0.0 to 1.0"},
    {"mirror_exposure", "0x1p-1", "a number from 0.0 to 1.0"},
    {"mirror_exposure", "50%", "a number from 0.0 to 1.0"},
    {"mirror_exposure", "0,5", "a number from 0.0 to 1.0"},
    {"mirror_sampling", "statement", "transaction or session"},
    {"mirror_mode", "write", "all or read_only"},
    {"mirror_level", "dcl", "all, dml or ddl"},
    {"mirror_aborted", "commit", "replay or skip"},
    {"mirror_compare", "hash", "status, rows or none"},
    {"mirror_replay_timing", "maybe", "on, off, true, false, yes, no, 1 or 0"},
    {"mirror_set_role", "2", "on, off, true, false, yes, no, 1 or 0"},
    {"mirror_queue", "0", "an integer from 1 to 1000000"},
    {"mirror_pool_wait_ms", "0", "an integer from 1 to 3600000"},
    {"mirror_queue_mb", "0", "an integer from 1 to 65536"},
    {"mirror_queue_mb", "65537", "an integer from 1 to 65536"},
    {"mirror_pipeline", "1001", "an integer from 1 to 1000"},
    {"mirror_max_connections", "10001", "an integer from 1 to 10000"},
    {"mirror_replay_nice", "-21", "an integer from -20 to 19"},
    {"mirror_replay_nice", "20", "an integer from -20 to 19"},
    {"mirror_replay_nice", "--5", "an integer from -20 to 19"},
    {"mirror_replay_nice", "-", "an integer from -20 to 19"},
    {"mirror_replay_nice", "+5", "an integer from -20 to 19"},
    {"mirror_replay_nice", "-99999999999999999999", "an integer from -20 to 19"},
    {"mirror_timeout_ms", "86400001", "an integer from 1 to 86400000"},
    {"log_mismatches", "1000001", "an integer from 0 to 1000000"},
    {"mirror_metrics_enabled", "enable", "on, off, true, false, yes, no, 1 or 0"},
    {"mirror_metrics_reset_interval", "0", "an integer from 1 to 31536000"},
    {"mirror_metrics_reset_interval", "31536001", "an integer from 1 to 31536000"},
    {"mirror_error_threshold", "0", "an integer from 1 to 1000000000"},
    {"mirror_latency_threshold_ms", "0", "an integer from 1 to 86400000"},
    {"mirror_max_error_rate", "1.01", "a number from 0.0 to 1.0"},
    {"mirror_max_latency_ms", "1.5", "an integer from 0 to 86400000"},
    {"mirror_max_p99_ratio", "0", "a number greater than 0.0 and at most 1000.0"},
    {"mirror_max_p99_ratio", "1001", "a number greater than 0.0 and at most 1000.0"},
    {"mirror_latency_floor_ms", "-1", "a number from 0.0 to 3600000.0"},
    {"mirror_min_runtime_hours", "87601", "a number from 0.0 to 87600.0"},
    {"mirror_min_requests", "1000000000001", "an integer from 0 to 1000000000000"},
    {"mirror_consecutive_success", "many", "an integer from 0 to 1000000000000"},
    {"mirror_max_drop_rate", "2", "a number from 0.0 to 1.0"},
    {"mirror_max_mismatch_rate", "1e-3x", "a number from 0.0 to 1.0"},
    {"mirror_max_regressed_statements", "-2", "an integer from -1 to 1000000"},
    {"mirror_max_regressed_statements", "1.5", "an integer from -1 to 1000000"},
    {"mirror_min_statement_calls", "0", "an integer from 1 to 1000000000000"},
    {"max_query_stats", "1000001", "an integer from 0 to 1000000"},
    {"decode_buffer_mb", "0", "an integer from 1 to 65536"},
    {"admin_port", "65536", "an integer from 1 to 65535"},
    {"admin_listen", "127.0.0.1",
     "IPv4:PORT or [IPv6]:PORT with a numeric address and a port from 1 to 65535, or nothing"},
    {"admin_listen", "db.example.com:6433",
     "IPv4:PORT or [IPv6]:PORT with a numeric address and a port from 1 to 65535, or nothing"},
    {"verbose", "loud", "on, off, true, false, yes, no, 1 or 0"},
    {"explain_regressions", "maybe", "on, off, true, false, yes, no, 1 or 0"},
    {"tls", "sometimes", "on, off, true, false, yes, no, 1 or 0"},
};

static void test_bad_values_in_file(void **state)
{
	char text[256], msg[512];
	size_t i;

	(void)state;
	for (i = 0; i < sizeof(bad_values) / sizeof(bad_values[0]); i++) {
		const struct bad_value *b = &bad_values[i];
		/* the key under test is never port on line 2 unless it is port */
		snprintf(text, sizeof(text), "[general]\n%s = %s\n%s", b->key, b->value,
			 strcmp(b->key, "port") ? "port = 5432\n" : "");
		snprintf(msg, sizeof(msg), "%s = %s: expected %s", b->key, b->value, b->expected);
		expect_file_error(text, 2, msg);
	}
}

/* Every key that can hold a bad value has one in bad_values (plain strings cannot). */
static void test_bad_values_cover_every_key(void **state)
{
	size_t i, j;
	bool found;

	(void)state;
	for (i = 0; i < config_n_keys; i++) {
		const struct config_key *k = &config_keys[i];

		if (k->type == CONFIG_STRING && !(k->flags & CONFIG_F_ADDRESS))
			continue;
		found = false;
		for (j = 0; j < sizeof(bad_values) / sizeof(bad_values[0]); j++)
			found |= !strcmp(bad_values[j].key, k->name);
		if (!found)
			fail_msg("no bad value tested for %s", k->name);
	}
}

static void test_bad_values_as_flags(void **state)
{
	struct pgshadow_config c;
	char flag[96], want[512], err[1024];
	size_t i, j;

	(void)state;
	for (i = 0; i < sizeof(bad_values) / sizeof(bad_values[0]); i++) {
		const struct bad_value *b = &bad_values[i];
		const char *args[] = {"--port", "5432", flag, b->value, NULL};

		snprintf(flag, sizeof(flag), "--%s", b->key);
		for (j = 2; flag[j]; j++)
			if (flag[j] == '_')
				flag[j] = '-';
		if (config_key_find(b->key)->flags & CONFIG_F_NO_ARG)
			continue; /* --verbose, --explain-regressions take no value */
		assert_int_not_equal(load_args(&c, NULL, args, err, sizeof(err)), 0);
		snprintf(want, sizeof(want), "invalid value '%s' for %s: expected %s", b->value,
			 flag, b->expected);
		assert_string_equal(err, want);
	}
}

static void test_flag_messages(void **state)
{
	struct pgshadow_config c;
	char err[1024];
	const char *short_port[] = {"-p", "0", NULL};
	const char *alias[] = {"-p", "1", "--mirror", "x", "--mirror-queue", "0", NULL};
	const char *iface[] = {"-p", "1", "-i", "abcdefghijklmnop", NULL};
	const char *unknown[] = {"--mirror-exposre", "1", NULL};
	const char *unknown_short[] = {"-x", NULL};
	const char *ambiguous[] = {"--mirror-max=3", NULL};
	const char *missing[] = {"--port", NULL};
	const char *stray[] = {"-p", "1", "extra", NULL};
	const char *noport[] = {"--mirror-exposure", "0.5", NULL};
	const char *twice[] = {"--config", "a", NULL};
	const char *novalue[] = {"--verbose=off", NULL};

	(void)state;
	assert_int_equal(load_args(&c, NULL, short_port, err, sizeof(err)), -EINVAL);
	assert_string_equal(err, "invalid value '0' for --port: expected an integer from 1 to "
				 "65535");
	assert_int_equal(load_args(&c, NULL, alias, err, sizeof(err)), -EINVAL);
	assert_string_equal(err, "invalid value '0' for --mirror-queue: expected an integer from "
				 "1 to 1000000");
	assert_int_equal(load_args(&c, NULL, iface, err, sizeof(err)), -EINVAL);
	assert_string_equal(err, "invalid value 'abcdefghijklmnop' for --interface: expected at "
				 "most 64 comma-separated interface names of at most 15 "
				 "characters each");
	assert_int_equal(load_args(&c, NULL, unknown, err, sizeof(err)), -EINVAL);
	assert_string_equal(err, "unknown option '--mirror-exposre' (did you mean "
				 "--mirror-exposure?)");
	assert_int_equal(load_args(&c, NULL, unknown_short, err, sizeof(err)), -EINVAL);
	assert_string_equal(err, "unknown option '-x' (see --help)");
	assert_int_equal(load_args(&c, NULL, ambiguous, err, sizeof(err)), -EINVAL);
	assert_string_equal(err, "ambiguous option '--mirror-max': could be "
				 "--mirror-max-connections, --mirror-max-error-rate, "
				 "--mirror-max-latency-ms, --mirror-max-p99-ratio, "
				 "--mirror-max-drop-rate, --mirror-max-mismatch-rate, "
				 "--mirror-max-regressed-statements");
	assert_int_equal(load_args(&c, NULL, missing, err, sizeof(err)), -EINVAL);
	assert_string_equal(err, "option --port needs a value (see --help)");
	assert_int_equal(load_args(&c, NULL, stray, err, sizeof(err)), -EINVAL);
	assert_string_equal(err, "unexpected argument 'extra' (see --help)");
	assert_int_equal(load_args(&c, NULL, noport, err, sizeof(err)), -EINVAL);
	assert_string_equal(err, "--port is required (see --help)");
	assert_int_equal(load_args(&c, "[general]\n", twice, err, sizeof(err)), -EINVAL);
	assert_string_equal(err, "--config is given twice");
	assert_int_equal(load_args(&c, NULL, novalue, err, sizeof(err)), -EINVAL);
	assert_string_equal(err, "option --verbose takes no value");
}

static void test_too_many_interfaces(void **state)
{
	char text[2048], msg[2048], list[1024] = "";
	struct pgshadow_config c;
	size_t i;

	(void)state;
	for (i = 0; i < 64; i++)
		snprintf(list + strlen(list), sizeof(list) - strlen(list), "%sif%zu", i ? "," : "",
			 i);
	snprintf(text, sizeof(text), "[general]\nport = 1\ninterfaces = %s\n", list);
	load_ok(&c, text, NULL);
	assert_int_equal(c.n_interfaces, 64);
	config_free(&c);

	strcat(list, ",one_more");
	snprintf(text, sizeof(text), "[general]\ninterfaces = %s\n", list);
	snprintf(msg, sizeof(msg),
		 "interfaces = %s: expected at most 64 comma-separated interface names of at "
		 "most 15 characters each",
		 list);
	expect_file_error(text, 2, msg);
}

static void test_bool_spellings(void **state)
{
	static const char *const on[] = {"on", "ON", "true", "True", "yes", "1"};
	static const char *const off[] = {"off", "Off", "false", "FALSE", "no", "0"};
	struct pgshadow_config c;
	char text[128];
	size_t i;

	(void)state;
	for (i = 0; i < 6; i++) {
		snprintf(text, sizeof(text), "[general]\nport=1\nmirror_set_role = %s\n", on[i]);
		load_ok(&c, text, NULL);
		assert_true(c.mirror_set_role);
		config_free(&c);
		snprintf(text, sizeof(text), "[general]\nport=1\nmirror_metrics_enabled = %s\n",
			 off[i]);
		load_ok(&c, text, NULL);
		assert_false(c.mirror_metrics_enabled);
		config_free(&c);
	}
}

/* ---- the file's structure ---- */

static void test_file_structure_errors(void **state)
{
	char long_line[CONFIG_MAX_LINE + 64], msg[256];

	(void)state;
	expect_file_error("[general]\nport = 1\nmirror_exposur = 1\n", 3,
			  "unknown key 'mirror_exposur' in [general] (did you mean "
			  "mirror_exposure?)");
	expect_file_error("[general]\nport = 1\nwhatever = 1\n", 3,
			  "unknown key 'whatever' in [general] (see pgshadow --help)");
	expect_file_error("[general]\nport = 1\n\n[pgbouncer]\n", 4,
			  "unknown section [pgbouncer]: expected [general] or [databases]");
	expect_file_error("[general]\nport = 1\n[Databases]\napp = exposure=1\n", 3,
			  "unknown section [Databases]: expected [general] or [databases]");
	expect_file_error("port = 5432\n[general]\n", 1,
			  "port = 5432: keys go under [general] or [databases]");
	expect_file_error("[general]\nport = 1\nport = 2\n", 3,
			  "port is set twice (first on line 2)");
	expect_file_error("[general]\nport = 1\njust some words\n", 3,
			  "expected [section], key = value or a comment");
	expect_file_error("[general]\nport = 1\n[general\n", 3,
			  "expected [section], key = value or a comment");
	/* an indented line is not a continuation of the previous value */
	expect_file_error("[general]\nmirror_of = host=a\n  dbname=b password=c\n", 3,
			  "unknown key 'dbname' in [general] (see pgshadow --help)");
	expect_file_error("[general]\nmirror_of = host=a\n  more words\n", 3,
			  "expected [section], key = value or a comment");
	/* the first error wins, later ones are not reported */
	expect_file_error("[general]\nport = 0\nbogus = 1\n", 2,
			  "port = 0: expected an integer from 1 to 65535");
	/* a syntax error before a key error */
	expect_file_error("[general]\nnonsense\nport = 0\n", 2,
			  "expected [section], key = value or a comment");
	/* '#' is not an inline comment: the value is wrong, and says so */
	expect_file_error("[general]\nport = 5432 # source\n", 2,
			  "port = 5432 # source: expected an integer from 1 to 65535");
	/* a line too long for the parser is an error, not silently cut */
	memset(long_line, 0, sizeof(long_line));
	strcpy(long_line, "[general]\nport = 1\nmirror_of = ");
	memset(long_line + strlen(long_line), 'x', CONFIG_MAX_LINE);
	strcat(long_line, "\nbogus = 1\n");
	snprintf(msg, sizeof(msg), "line longer than %d characters", CONFIG_MAX_LINE - 2);
	expect_file_error(long_line, 3, msg);
}

static void test_long_value_fits(void **state)
{
	char text[CONFIG_MAX_LINE + 64], value[CONFIG_MAX_LINE];
	struct pgshadow_config c;

	(void)state;
	/* "mirror_of = " + value + "\n" fills the line exactly */
	memset(value, 'x', CONFIG_MAX_LINE - 2 - 12);
	value[CONFIG_MAX_LINE - 2 - 12] = '\0';
	snprintf(text, sizeof(text), "[general]\nmirror_of = %s\nport = 1\n", value);
	load_ok(&c, text, NULL);
	assert_string_equal(c.mirror_of, value);
	assert_int_equal(c.port, 1);
	config_free(&c);
}

static void test_unreadable_file(void **state)
{
	struct pgshadow_config c;
	char err[1024];
	const char *missing[] = {"--config", "/nonexistent/pgshadow.ini", NULL};
	const char *dir[] = {"--config", "/tmp", NULL};

	(void)state;
	assert_int_equal(load_args(&c, NULL, missing, err, sizeof(err)), -ENOENT);
	assert_string_equal(err, "cannot read /nonexistent/pgshadow.ini: No such file or "
				 "directory");
	assert_int_equal(load_args(&c, NULL, dir, err, sizeof(err)), -EISDIR);
	assert_string_equal(err, "cannot read /tmp: Is a directory");
}

static void test_port_required_with_file(void **state)
{
	struct pgshadow_config c;
	char err[1024], want[256];
	const char *print[] = {"--print-config", NULL};

	(void)state;
	assert_int_equal(
	    load_args(&c, "[general]\nmirror_exposure = 0.5\n", NULL, err, sizeof(err)), -EINVAL);
	snprintf(want, sizeof(want), "%s: port is not set (set it under [general] or pass --port)",
		 tmp_path);
	assert_string_equal(err, want);
	/* --print-config does not need one */
	load_ok(&c, "[general]\n", print);
	assert_int_equal(cl.action, CONFIG_PRINT_CONFIG);
	assert_int_equal(c.port, 0);
	config_free(&c);
}

/* ---- precedence ---- */

static void test_flags_win_over_file(void **state)
{
	const char file[] = "[general]\n"
			    "port = 5432\n"
			    "mirror_exposure = 0.5\n"
			    "interfaces = eth0,eth1\n"
			    "mirror_of = host=file\n"
			    "metrics_listen = 127.0.0.1:1111\n";
	/* flags before and after --config: the flags win either way */
	const char *args[] = {"--mirror-exposure", "0.25",     "-i",	    "lo", "--interfaces",
			      "veth0,veth1",	   "--mirror", "host=flag", NULL};
	const char *after[] = {"--port", "6000", NULL};
	const char *none[] = {NULL};
	const char *empty[] = {"--mirror-of", "", NULL};
	struct pgshadow_config c;

	(void)state;
	load_ok(&c, file, args);
	assert_int_equal(c.port, 5432);
	assert_true(c.live.mirror_exposure == 0.25);
	assert_int_equal(c.n_interfaces, 3);
	assert_string_equal(find_iface(&c, 0), "lo");
	assert_string_equal(find_iface(&c, 1), "veth0");
	assert_string_equal(find_iface(&c, 2), "veth1");
	assert_string_equal(c.mirror_of, "host=flag");
	assert_string_equal(c.metrics_listen, "127.0.0.1:1111");
	config_free(&c);

	load_ok(&c, file, after);
	assert_int_equal(c.port, 6000);
	assert_int_equal(c.n_interfaces, 2);
	config_free(&c);

	load_ok(&c, file, none);
	assert_true(c.live.mirror_exposure == 0.5);
	config_free(&c);

	/* an empty flag value empties the file's setting */
	load_ok(&c, file, empty);
	assert_null(c.mirror_of);
	config_free(&c);
}

/* ---- [databases] ---- */

static void test_databases_good(void **state)
{
	const char file[] = "[general]\nport = 1\n[databases]\n"
			    "app = dbname=app_v2 exposure=0.25\n"
			    "b = exposure=1   dbname=b2\n"
			    "c = exposure=0.0\n"
			    "d = dbname=d_v2\n"
			    "e =\n"
			    "[general]\nmirror_exposure = 0.5\n";
	struct pgshadow_config c;

	(void)state;
	load_ok(&c, file, NULL);
	assert_int_equal(c.n_databases, 5);
	assert_string_equal(c.databases[0].source_db, "app");
	assert_string_equal(c.databases[0].mirror_dbname, "app_v2");
	assert_true(c.databases[0].exposure == 0.25);
	assert_string_equal(c.databases[1].mirror_dbname, "b2");
	assert_true(c.databases[1].exposure == 1);
	assert_null(c.databases[2].mirror_dbname);
	assert_true(c.databases[2].exposure == 0);
	assert_string_equal(c.databases[3].mirror_dbname, "d_v2");
	assert_true(c.databases[3].exposure < 0);
	assert_string_equal(c.databases[4].source_db, "e");
	assert_true(c.live.mirror_exposure == 0.5);
	config_free(&c);
}

static void test_databases_bad(void **state)
{
	char name[80], text[256], msg[256];

	(void)state;
	expect_file_error("[databases]\napp = dbname=x bogus=1\n", 2,
			  "app = dbname=x bogus=1: unknown word 'bogus=1': expected dbname=NAME "
			  "and/or exposure=0.0-1.0");
	expect_file_error("[databases]\napp = app_v2\n", 2,
			  "app = app_v2: unknown word 'app_v2': expected dbname=NAME and/or "
			  "exposure=0.0-1.0");
	expect_file_error("[databases]\napp = exposure=1.5\n", 2,
			  "app = exposure=1.5: exposure=1.5: expected a number from 0.0 to 1.0");
	expect_file_error("[databases]\napp = exposure=\n", 2,
			  "app = exposure=: exposure=: expected a number from 0.0 to 1.0");
	expect_file_error("[databases]\napp = dbname=\n", 2,
			  "app = dbname=: dbname=: expected a database name of 1 to 63 "
			  "characters");
	expect_file_error("[databases]\napp = dbname=a dbname=b\n", 2,
			  "app = dbname=a dbname=b: dbname is given twice");
	expect_file_error("[databases]\napp = exposure=0.1 exposure=0.2\n", 2,
			  "app = exposure=0.1 exposure=0.2: exposure is given twice");
	expect_file_error("[databases]\napp = exposure=0.1\n\napp = dbname=x\n", 4,
			  "[databases] app is mapped twice (first on line 2)");
	memset(name, 'd', 64);
	name[64] = '\0';
	snprintf(text, sizeof(text), "[databases]\napp = dbname=%s\n", name);
	snprintf(msg, sizeof(msg),
		 "app = dbname=%s: dbname=%s: expected a database name of 1 to 63 characters", name,
		 name);
	expect_file_error(text, 2, msg);
	/* a source name longer than libinih keeps is refused, not cut */
	snprintf(text, sizeof(text), "[databases]\n%s = exposure=1\n", name);
	expect_file_error(text, 2, "key 'dddddddddddddddddddd...' is longer than 49 characters");
}

static void test_databases_cap(void **state)
{
	size_t i, len = 0, cap = 64 + (CONFIG_MAX_DATABASES + 1) * 32;
	char *text = malloc(cap), msg[128];
	struct pgshadow_config c;

	(void)state;
	assert_non_null(text);
	len += snprintf(text + len, cap - len, "[general]\nport = 1\n[databases]\n");
	for (i = 0; i < CONFIG_MAX_DATABASES; i++)
		len += snprintf(text + len, cap - len, "db%zu = exposure=0.5\n", i);
	load_ok(&c, text, NULL);
	assert_int_equal(c.n_databases, CONFIG_MAX_DATABASES);
	config_free(&c);
	snprintf(text + len, cap - len, "one_more = exposure=0.5\n");
	snprintf(msg, sizeof(msg), "[databases] one_more: too many databases (at most %d)",
		 CONFIG_MAX_DATABASES);
	expect_file_error(text, 3 + CONFIG_MAX_DATABASES + 1, msg);
	free(text);
}

/* ---- reload ---- */

struct seen {
	char lines[32][256];
	struct config_change changes[32];
	char dbs[32][64];
	size_t n;
};

static void collect(void *ctx, const struct config_change *c)
{
	struct seen *s = ctx;

	assert_true(s->n < 32);
	config_change_describe(c, s->lines[s->n], sizeof(s->lines[0]));
	s->changes[s->n] = *c;
	snprintf(s->dbs[s->n], sizeof(s->dbs[0]), "%s", c->db ? c->db : "");
	s->changes[s->n].what = s->changes[s->n].old_value = s->changes[s->n].new_value = NULL;
	s->n++;
}

static void test_reload_diff(void **state)
{
	const char a[] = "[general]\n"
			 "port = 5432\n"
			 "mirror_of = host=a password=secret1\n"
			 "mirror_max_error_rate = 0.01\n"
			 "[databases]\n"
			 "app = dbname=app_v2 exposure=0.25\n"
			 "old = exposure=0.5\n"
			 "keep = dbname=k\n";
	const char b[] = "[general]\n"
			 "port = 5433\n"
			 "mirror_of = host=b password=secret2\n"
			 "mirror_exposure = 0.5\n"
			 "mirror_queue = 5\n"
			 "log_mismatches = 10\n"
			 "mirror_max_error_rate = 0.02\n"
			 "mirror_min_requests = 500\n"
			 "[databases]\n"
			 "keep = dbname=k\n"
			 "app = dbname=app_v3 exposure=0.5\n"
			 "new = dbname=new_v2 exposure=0.1\n";
	static const char *const want[] = {
	    "port 5432 -> 5433 needs a restart (ignored)",
	    "mirror_of changed, needs a restart (ignored)",
	    "mirror_exposure 1 -> 0.5 applied",
	    "mirror_queue 1000 -> 5 needs a restart (ignored)",
	    "log_mismatches 0 -> 10 applied",
	    "mirror_max_error_rate 0.01 -> 0.02 applied",
	    "mirror_min_requests 100000 -> 500 applied",
	    "[databases] app exposure 0.25 -> 0.5 applied",
	    "[databases] app dbname app_v2 -> app_v3 needs a restart (ignored)",
	    "[databases] new exposure (mirror_exposure) -> 0.1 needs a restart (ignored)",
	    "[databases] new dbname (same) -> new_v2 needs a restart (ignored)",
	    "[databases] old exposure 0.5 -> (mirror_exposure) applied",
	};
	struct pgshadow_config running, next;
	struct seen s = {};
	size_t i;

	(void)state;
	load_ok(&running, a, NULL);
	load_ok(&next, b, NULL);
	assert_int_equal(config_reload(&running, &next, collect, &s), 12);
	assert_int_equal(s.n, 12);
	for (i = 0; i < s.n; i++)
		assert_string_equal(s.lines[i], want[i]);
	/* secrets never reach the log */
	for (i = 0; i < s.n; i++)
		assert_null(strstr(s.lines[i], "secret"));
	/* exposure changes carry what replay_set_exposure needs */
	assert_true(s.changes[2].is_exposure && s.changes[2].exposure == 0.5);
	assert_string_equal(s.dbs[2], "");
	assert_true(s.changes[7].is_exposure && s.changes[7].exposure == 0.5);
	assert_string_equal(s.dbs[7], "app");
	/* a line the agent did not start with: replay has no entry to change */
	assert_true(s.changes[9].is_exposure && !s.changes[9].applied);
	assert_string_equal(s.dbs[9], "new");
	assert_true(s.changes[11].is_exposure && s.changes[11].exposure < 0);
	assert_string_equal(s.dbs[11], "old");
	assert_false(s.changes[0].is_exposure || s.changes[8].is_exposure);

	/* running took the reloadable values only */
	assert_int_equal(running.port, 5432);
	assert_string_equal(running.mirror_of, "host=a password=secret1");
	assert_int_equal(running.mirror_queue, 1000);
	assert_true(running.live.mirror_exposure == 0.5);
	assert_int_equal(running.live.log_mismatches, 10);
	assert_true(running.live.mirror_max_error_rate == 0.02);
	assert_int_equal(running.live.mirror_min_requests, 500);
	assert_string_equal(db(&running, "app")->mirror_dbname, "app_v2");
	assert_true(db(&running, "app")->exposure == 0.5);
	assert_null(db(&running, "new"));
	assert_true(db(&running, "old")->exposure < 0);
	assert_string_equal(db(&running, "keep")->mirror_dbname, "k");

	/* the same file again: only what still needs a restart is reported */
	memset(&s, 0, sizeof(s));
	assert_int_equal(config_reload(&running, &next, collect, &s), 6);
	assert_string_equal(s.lines[0], "port 5432 -> 5433 needs a restart (ignored)");
	assert_string_equal(s.lines[1], "mirror_of changed, needs a restart (ignored)");
	assert_string_equal(s.lines[2], "mirror_queue 1000 -> 5 needs a restart (ignored)");
	assert_string_equal(s.lines[3],
			    "[databases] app dbname app_v2 -> app_v3 needs a restart (ignored)");
	assert_string_equal(s.lines[4], "[databases] new exposure (mirror_exposure) -> 0.1 needs "
					"a restart (ignored)");
	assert_string_equal(s.lines[5],
			    "[databases] new dbname (same) -> new_v2 needs a restart (ignored)");
	for (i = 0; i < s.n; i++)
		assert_false(s.changes[i].applied);
	config_free(&running);
	config_free(&next);
}

static void test_reload_nothing_changed(void **state)
{
	struct pgshadow_config running, next;
	struct seen s = {};

	(void)state;
	load_ok(&running, every_key, NULL);
	load_ok(&next, every_key, NULL);
	assert_int_equal(config_reload(&running, &next, collect, &s), 0);
	check_every_key(&running);
	config_free(&running);
	config_free(&next);
}

/* A reload re-applies the flags: a key a flag sets does not follow the file. */
static void test_reload_keeps_flags(void **state)
{
	const char *args[] = {"--mirror-exposure", "0.25", "--port", "5432", NULL};
	struct pgshadow_config running, next;
	struct seen s = {};
	const char *path;
	FILE *f;

	(void)state;
	load_ok(&running, "[general]\nmirror_exposure = 0.5\nmirror_max_drop_rate = 0.1\n", args);
	assert_true(running.live.mirror_exposure == 0.25);
	path = tmp_path;
	f = fopen(path, "w");
	assert_non_null(f);
	fputs("[general]\nmirror_exposure = 0.75\nmirror_max_drop_rate = 0.2\nport = 1\n", f);
	fclose(f);
	assert_int_equal(config_load(&next, &cl, (char[256]){0}, 256), 0);
	assert_int_equal(config_reload(&running, &next, collect, &s), 1);
	assert_string_equal(s.lines[0], "mirror_max_drop_rate 0.1 -> 0.2 applied");
	assert_true(running.live.mirror_exposure == 0.25);
	config_free(&running);
	config_free(&next);
}

static void test_change_describe(void **state)
{
	struct config_change c = {.what = "[databases] x exposure",
				  .old_value = "0.5",
				  .new_value = "0.6",
				  .applied = true,
				  .is_exposure = true,
				  .db = "x",
				  .exposure = 0.6};
	char line[256];

	(void)state;
	config_change_describe(&c, line, sizeof(line));
	assert_string_equal(line, "[databases] x exposure 0.5 -> 0.6 applied");
	c.applied = false;
	config_change_describe(&c, line, sizeof(line));
	assert_string_equal(line, "[databases] x exposure 0.5 -> 0.6 needs a restart (ignored)");
	c.old_value = c.new_value = NULL;
	c.what = "mirror_of";
	config_change_describe(&c, line, sizeof(line));
	assert_string_equal(line, "mirror_of changed, needs a restart (ignored)");
}

static void test_shared(void **state)
{
	struct config_live a = {.mirror_exposure = 0.5, .mirror_min_requests = 7}, b;
	struct config_shared *s = config_shared_new(&a);

	(void)state;
	assert_non_null(s);
	config_shared_get(s, &b);
	assert_memory_equal(&a, &b, sizeof(a));
	a.mirror_max_drop_rate = 0.3;
	config_shared_set(s, &a);
	config_shared_get(s, &b);
	assert_true(b.mirror_max_drop_rate == 0.3);
	config_shared_free(s);
	config_shared_free(NULL);
}

/* ---- --help and the example file ---- */

static void test_help_lists_every_flag(void **state)
{
	char *text = NULL, flag[96];
	size_t len, i, j;
	FILE *f;
	const char *const extra[] = {"--config FILE", "--print-config", "-V, --version",
				     "-h, --help",    "-p, --port",	"-i, --interfaces",
				     "--interface",   "--mirror.",	"-v, --verbose"};

	(void)state;
	f = open_memstream(&text, &len);
	config_usage(f);
	fclose(f);
	for (i = 0; i < config_n_keys; i++) {
		snprintf(flag, sizeof(flag), "--%s", config_keys[i].name);
		for (j = 2; flag[j]; j++)
			if (flag[j] == '_')
				flag[j] = '-';
		strcat(flag, config_keys[i].flags & CONFIG_F_NO_ARG ? " " : " ");
		if (!strstr(text, flag))
			fail_msg("--help does not list %s", flag);
	}
	for (i = 0; i < sizeof(extra) / sizeof(extra[0]); i++)
		if (!strstr(text, extra[i]))
			fail_msg("--help does not list %s", extra[i]);
	/* nothing wider than 80 columns */
	for (i = 0, j = 0; text[i]; i++, j++) {
		if (text[i] == '\n')
			j = (size_t)-1;
		else if (j >= 80)
			fail_msg("--help line longer than 80 columns at offset %zu", i);
	}
	free(text);
}

static void test_help_and_version_actions(void **state)
{
	char err[256];
	char *a1[] = {"pgshadow", "--port", "bogus", "--help", NULL};
	char *a2[] = {"pgshadow", "-V", NULL};

	(void)state;
	assert_int_equal(config_parse_args(4, a1, &cl, err, sizeof(err)), 0);
	assert_int_equal(cl.action, CONFIG_HELP);
	assert_int_equal(config_parse_args(2, a2, &cl, err, sizeof(err)), 0);
	assert_int_equal(cl.action, CONFIG_VERSION);
}

/* deploy/pgshadow.ini is exactly what --print-config writes for the defaults
 * (regenerate it with `make config-example`). */
static void test_example_file_is_generated(void **state)
{
	const char *args[] = {"--print-config", NULL};
	struct pgshadow_config c;
	char *text = NULL, *committed;
	size_t len;
	long size;
	FILE *f;

	(void)state;
	load_ok(&c, NULL, args);
	f = open_memstream(&text, &len);
	config_print(f, &c);
	fclose(f);
	config_free(&c);

	f = fopen(SRCDIR "/deploy/pgshadow.ini", "r");
	if (!f)
		fail_msg("cannot open %s/deploy/pgshadow.ini", SRCDIR);
	fseek(f, 0, SEEK_END);
	size = ftell(f);
	rewind(f);
	committed = calloc(1, size + 1);
	assert_non_null(committed);
	assert_int_equal(fread(committed, 1, size, f), size);
	fclose(f);
	if (strcmp(text, committed))
		fail_msg("deploy/pgshadow.ini differs from `pgshadow --print-config`: run `make "
			 "config-example`");
	/* and it loads (with the required port added by a flag) */
	{
		const char *port[] = {"--port", "5432", NULL};
		char err[1024];
		int rc;

		err[0] = '\0';
		rc = parse_argv(&cl, argv_store, SRCDIR "/deploy/pgshadow.ini", port, err,
				sizeof(err));
		assert_int_equal(rc, 0);
		rc = config_load(&c, &cl, err, sizeof(err));
		if (rc)
			fail_msg("deploy/pgshadow.ini does not load: %s", err);
		config_free(&c);
	}
	free(text);
	free(committed);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test_teardown(test_table_sane, teardown_file),
	    cmocka_unit_test_teardown(test_defaults, teardown_file),
	    cmocka_unit_test_teardown(test_every_key_from_file, teardown_file),
	    cmocka_unit_test_teardown(test_print_config_round_trip, teardown_file),
	    cmocka_unit_test_teardown(test_every_key_from_flags, teardown_file),
	    cmocka_unit_test_teardown(test_bad_values_in_file, teardown_file),
	    cmocka_unit_test_teardown(test_bad_values_cover_every_key, teardown_file),
	    cmocka_unit_test_teardown(test_bad_values_as_flags, teardown_file),
	    cmocka_unit_test_teardown(test_flag_messages, teardown_file),
	    cmocka_unit_test_teardown(test_too_many_interfaces, teardown_file),
	    cmocka_unit_test_teardown(test_bool_spellings, teardown_file),
	    cmocka_unit_test_teardown(test_file_structure_errors, teardown_file),
	    cmocka_unit_test_teardown(test_long_value_fits, teardown_file),
	    cmocka_unit_test_teardown(test_unreadable_file, teardown_file),
	    cmocka_unit_test_teardown(test_port_required_with_file, teardown_file),
	    cmocka_unit_test_teardown(test_flags_win_over_file, teardown_file),
	    cmocka_unit_test_teardown(test_databases_good, teardown_file),
	    cmocka_unit_test_teardown(test_databases_bad, teardown_file),
	    cmocka_unit_test_teardown(test_databases_cap, teardown_file),
	    cmocka_unit_test_teardown(test_reload_diff, teardown_file),
	    cmocka_unit_test_teardown(test_reload_nothing_changed, teardown_file),
	    cmocka_unit_test_teardown(test_reload_keeps_flags, teardown_file),
	    cmocka_unit_test_teardown(test_change_describe, teardown_file),
	    cmocka_unit_test_teardown(test_shared, teardown_file),
	    cmocka_unit_test_teardown(test_help_lists_every_flag, teardown_file),
	    cmocka_unit_test_teardown(test_help_and_version_actions, teardown_file),
	    cmocka_unit_test_teardown(test_example_file_is_generated, teardown_file),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
