/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * config: the agent's settings — an INI file (--config, pgbouncer's convention, parsed
 * with libinih) and command-line flags, both driven by one table of keys (config.c) that
 * also gives the defaults, the --help text, the example file (--print-config) and the
 * SIGHUP reload diff.
 *
 * Pure: no threads, sockets or clocks; it reads the file it is given. Errors come back
 * as one line in a caller's buffer (without the "pgshadow: " prefix); main prints them.
 *
 * Order of precedence: defaults, then the file, then the flags — flags win whatever
 * their position on the command line, and again on every reload.
 *
 * Threads. A struct pgshadow_config belongs to the main (capture) thread. The values a
 * reload may change that other threads read (readiness criteria, alert thresholds) are
 * grouped in struct config_live and shared through struct config_shared: a
 * mutex-guarded copy each reader snapshots with config_shared_get.
 */
#ifndef PGSHADOW_CONFIG_H
#define PGSHADOW_CONFIG_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "sampler.h" /* struct replay_db_map, enum replay_* */

/* The values of the capture keys (the capture shell uses them). */
enum capture_attach_mode {
	CAPTURE_ATTACH_TCX = 0, /* bpf_link per hook; gone when the agent's fds close */
	CAPTURE_ATTACH_TC,	/* clsact filters; kernels without tcx (< 6.6) */
};

#define CAPTURE_MAX_INTERFACES 64

#define CONFIG_MAX_DATABASES 1000 /* [databases] lines */
#define CONFIG_MAX_LINE	     4096 /* longest line of the file, newline included */
#define CONFIG_MAX_FLAGS     512  /* flags on one command line */
#define CONFIG_NAME_MAX	     63	  /* database names (PostgreSQL's NAMEDATALEN - 1) */

/*
 * What SIGHUP may change and other threads read: readiness criteria, alert thresholds,
 * exposure, log_mismatches. Plain values, copied whole under config_shared's mutex.
 * Every key marked reloadable in the table lives here (test_config checks it).
 */
struct config_live {
	double mirror_exposure;		 /* 0.0-1.0 (1.0); replay gets it by replay_set_exposure */
	uint64_t log_mismatches;	 /* log the first N mismatches (0) */
	uint64_t mirror_error_threshold; /* consecutive errors that raise the alert (100) */
	uint64_t mirror_latency_threshold_ms; /* mirror p99 over the window for the alert (5000) */
	double mirror_max_error_rate;	      /* readiness: errors / attempted (0.01) */
	uint64_t mirror_max_latency_ms;	      /* readiness: mirror average (1000) */
	double mirror_min_runtime_hours;      /* readiness: window length (24) */
	uint64_t mirror_min_requests;	      /* readiness: attempted (100000) */
	uint64_t mirror_consecutive_success;  /* readiness: streak (10000) */
	double mirror_max_p99_ratio;	      /* readiness: mirror p99 / source p99 (2.0) */
	double mirror_latency_floor_ms;	      /* readiness: p99 differences below pass (5) */
	double mirror_max_drop_rate;	      /* readiness: dropped / selected (0.01) */
	double mirror_max_mismatch_rate;      /* readiness: mismatches / compared (0.001) */
	uint64_t mirror_min_statement_calls;  /* per statement: calls before latency judges (50) */
	int64_t mirror_max_regressed_statements; /* readiness: regressed statements (-1: off) */
};

/*
 * Every setting. Strings are owned (config_free frees them); NULL means unset/empty.
 * Enum fields hold the values of the enums named in their comments.
 */
struct pgshadow_config {
	/* capture (all need a restart) */
	uint64_t port; /* 1-65535; required (0: not set) */
	char *interfaces[CAPTURE_MAX_INTERFACES];
	size_t n_interfaces;	  /* 0: every interface that is up */
	int attach;		  /* enum capture_attach_mode (tcx) */
	char *dump_streams;	  /* directory, or NULL */
	char *user;		  /* run as this user once started, or NULL */
	uint64_t ringbuf_mb;	  /* power of two 1-1024 (64) */
	bool tls;		  /* TLS probes (off) */
	uint64_t max_flows;	  /* (65536) */
	uint64_t flow_buffer_kb;  /* (4096) */
	uint64_t hole_timeout_ms; /* (1000) */
	uint64_t idle_timeout_s;  /* (600) */
	char *metrics_listen;	  /* IPv4:PORT or [IPv6]:PORT (127.0.0.1:9930) */
	char *state_file;	  /* the readiness window kept here, or NULL */
	char *web_tls_cert_file;  /* HTTPS: PEM certificate (with the key), or NULL */
	char *web_tls_key_file;
	char *web_basic_auth_file; /* users with bcrypt hashes, or NULL */
	uint64_t max_databases;	   /* (100) */
	uint64_t max_message_kb;   /* (1024) */
	uint64_t decode_buffer_mb; /* the decoders' budget, all connections (64) */
	char *source_dsn;	   /* libpq conninfo, or NULL */
	bool verbose;

	/* mirror (restart) */
	char *mirror_of; /* libpq conninfo or URI; NULL: observe only */
	uint64_t mirror_queue;
	uint64_t mirror_queue_mb;    /* MiB (64) */
	char *mirror_compare_ignore; /* fingerprints, comma-separated, or NULL */
	uint64_t mirror_pipeline;
	uint64_t mirror_max_connections;
	uint64_t mirror_pool_wait_ms;
	int64_t mirror_replay_nice; /* the replay thread's nice value (-10) */
	uint64_t mirror_timeout_ms;
	bool mirror_set_role;
	int mirror_mode;     /* enum replay_mode */
	int mirror_sampling; /* enum replay_sampling */
	int mirror_compare;  /* enum replay_compare */
	int mirror_aborted;  /* enum replay_aborted */
	int mirror_level;    /* enum replay_level */
	bool mirror_replay_timing;
	bool mirror_metrics_enabled;		/* render the mirror metrics (true) */
	uint64_t mirror_metrics_reset_interval; /* seconds (3600) */
	uint64_t max_query_stats;		/* statements compared one by one (5000; 0: off) */
	bool explain_regressions;		/* EXPLAIN top regressions on the mirror (off) */

	/* admin console (restart) */
	char *admin_socket_dir; /* Unix socket directory (/run/pgshadow); NULL: no socket */
	uint64_t admin_port;	/* the socket's "port" (.s.PGSQL.6433) and TCP port (6433) */
	char *admin_listen;	/* TCP IPv4:PORT or [IPv6]:PORT; NULL: no TCP listener */
	char *admin_users;	/* OS users with the full console (comma-separated), or NULL */
	char *stats_users;	/* OS users with a read-only console, or NULL */
	char *admin_auth_file;	/* the TCP console's SCRAM users (userlist.txt), or NULL */

	/* reloadable */
	struct config_live live;

	/* [databases]: the exposure of a line present at start is reloadable; dbname, and
	 * lines added later, need a restart. Strings owned. */
	struct replay_db_map *databases;
	size_t n_databases;

	/* the file it was read from (owned), NULL without --config */
	char *config_file;
};

/* ---- the command line ---- */

enum config_action {
	CONFIG_RUN = 0,
	CONFIG_HELP,	     /* -h/--help: print config_usage, exit 0 */
	CONFIG_VERSION,	     /* -V/--version */
	CONFIG_PRINT_CONFIG, /* --print-config: print config_print of the loaded config */
};

/* One flag as given: which key, and its value (points into argv; NULL for --verbose). */
struct config_flag {
	int key; /* index in the key table */
	const char *value;
	const char *spelling; /* "--mirror-exposure", "-p", ... for messages */
};

/* The parsed command line, kept for the life of the agent (reload re-applies it). */
struct config_cmdline {
	enum config_action action;
	const char *config_file; /* --config FILE, or NULL */
	struct config_flag flags[CONFIG_MAX_FLAGS];
	size_t n_flags;
};

/*
 * Reads argv (getopt_long; argv may be permuted, and must outlive cl). Values are not
 * checked here (config_load does, so a flag's error names the flag). Returns 0, or -EINVAL
 * with one line in err: unknown option, missing value, stray argument.
 */
int config_parse_args(int argc, char **argv, struct config_cmdline *cl, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/*
 * Builds a configuration: defaults, then cl->config_file if set, then cl's flags; then
 * checks what needs both (port set, unless cl->action is CONFIG_PRINT_CONFIG). On success
 * returns 0 and *cfg is filled (free it with config_free). On error returns -EINVAL (bad
 * value, key, section or syntax), -ENOMEM or the errno of opening the file, with one line
 * in err, e.g. "/etc/pgshadow.ini:12: mirror_exposure = 1.5: expected a number from 0.0
 * to 1.0" or "invalid value '1.5' for --mirror-exposure: expected a number from 0.0 to
 * 1.0"; *cfg is then zeroed (nothing to free).
 */
int config_load(struct pgshadow_config *cfg, const struct config_cmdline *cl, char *err,
		size_t errlen) __attribute__((warn_unused_result));

/* Frees what cfg owns and zeroes it. NULL-safe. */
void config_free(struct pgshadow_config *cfg);

/* The --help text, generated from the key table (every flag, its default, reloadable). */
void config_usage(FILE *out);

/*
 * Writes cfg as a commented INI file: every key with its help text; keys at their
 * default commented out (";key = default"), the others set. deploy/pgshadow.ini is this
 * output for the defaults (test_config checks they agree).
 */
void config_print(FILE *out, const struct pgshadow_config *cfg);

/* ---- reload ---- */

/* One difference between the running configuration and a freshly loaded one. */
struct config_change {
	const char *what;      /* "mirror_exposure", "[databases] app exposure", ... */
	const char *old_value; /* as text; "(none)" when unset, "(hidden)" for conninfo */
	const char *new_value;
	bool applied; /* false: needs a restart, ignored */
	/* an exposure change: the caller applies it with replay_set_exposure(r, db, exposure) */
	bool is_exposure;
	const char *db; /* NULL: the global mirror_exposure */
	double exposure;
};

typedef void (*config_change_fn)(void *ctx, const struct config_change *c);

/*
 * Compares running with next (both loaded by config_load), calls fn once per difference
 * (keys in table order, then [databases] lines in next's order, then removed ones), and
 * copies the reloadable ones into running: struct config_live and the exposure of the
 * [databases] lines the agent started with (a removed line's exposure goes back to the
 * global one, -1). A line added after the start needs a restart (replay copied the lines
 * at start), and so does a dbname. Everything else in running stays as it was. The
 * strings of a change are valid during the call only. Returns the number of differences.
 */
size_t config_reload(struct pgshadow_config *running, const struct pgshadow_config *next,
		     config_change_fn fn, void *ctx);

/* The log line of a change (main prefixes "pgshadow: reload: "): "mirror_exposure 1 ->
 * 0.5 applied", "port 5432 -> 5433 needs a restart (ignored)", "mirror_of changed, needs a
 * restart (ignored)" (conninfo values are never shown: they may hold a password). */
void config_change_describe(const struct config_change *c, char *buf, size_t len);

/* ---- sharing the live values with other threads ---- */

struct config_shared;

/* Returns NULL with errno set. */
struct config_shared *config_shared_new(const struct config_live *init);
/* A consistent copy of the current values. Any thread. */
void config_shared_get(struct config_shared *s, struct config_live *out);
/* Replaces them (the main thread after a reload). */
void config_shared_set(struct config_shared *s, const struct config_live *in);
/* NULL-safe. */
void config_shared_free(struct config_shared *s);

/* ---- the key table, for tests and tools ---- */

enum config_type {
	CONFIG_BOOL,
	CONFIG_UINT,
	CONFIG_INT, /* int64_t, may be negative */
	CONFIG_DOUBLE,
	CONFIG_STRING,
	CONFIG_ENUM,
	CONFIG_LIST,
};

struct config_enum_value {
	const char *name;
	int value;
};

struct config_key {
	const char *name; /* INI key in [general]; the flag is --name with '_' -> '-' */
	enum config_type type;
	size_t offset;				/* of the value in struct pgshadow_config */
	double min, max;			/* uint/int/double range; list: at most max items */
	unsigned int flags;			/* CONFIG_F_* */
	const struct config_enum_value *values; /* enum: NULL-terminated */
	const char *def; /* default as the file would spell it; NULL: unset */
	bool reloadable;
	const char *arg;  /* metavariable in --help ("N", "ADDR") */
	const char *help; /* one sentence or two, for --help, the example file and README */
};

#define CONFIG_F_POW2	       (1u << 0) /* uint: a power of two */
#define CONFIG_F_MIN_EXCLUSIVE (1u << 1) /* double: strictly greater than min */
#define CONFIG_F_ADDRESS       (1u << 2) /* string: IPv4:PORT or [IPv6]:PORT */
#define CONFIG_F_SECRET	       (1u << 3) /* string: may hold a password; never logged */
#define CONFIG_F_REQUIRED      (1u << 4) /* no default: must be set */
#define CONFIG_F_NO_ARG	       (1u << 5) /* bool flag without a value (--verbose) */
#define CONFIG_F_NONEMPTY      (1u << 6) /* string: may not be empty */

extern const struct config_key config_keys[];
extern const size_t config_n_keys;

/* The key named name (INI spelling), or NULL. */
const struct config_key *config_key_find(const char *name);

#endif /* PGSHADOW_CONFIG_H */
