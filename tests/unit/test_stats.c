// SPDX-License-Identifier: BSD-2-Clause
/* stats and buf: counters, histogram buckets, label bounding/escaping, rendering;
 * http_parse_listen. */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "buf.h"
#include "http.h"
#include "stats.h"

static char *render_at(struct stats *st, uint64_t now_ns)
{
	struct buf b;

	buf_init(&b, 1 << 24);
	assert_true(stats_render(st, NULL, "test", now_ns, &b));
	return buf_steal(&b, NULL);
}

static char *render(struct stats *st)
{
	return render_at(st, 0);
}

static void assert_contains(const char *text, const char *line)
{
	if (!strstr(text, line))
		fail_msg("missing: %s", line);
}

static void test_source_counters_and_errors(void **state)
{
	struct stats_config cfg = {.max_databases = 10};
	struct stats *st = stats_new(&cfg);
	struct stats_db *app, *app2;
	char *text;

	(void)state;
	app = stats_db(st, "app");
	app2 = stats_db(st, "app");
	assert_ptr_equal(app, app2);
	stats_source_request(app, 1000, false, "");
	stats_source_request(app, 2000, true, "23505");
	stats_source_request(app, 3000, true, "23503");
	stats_source_request(app, 4000, true, "42P01");
	stats_source_request(app, 4000, true, "");
	text = render(st);
	assert_contains(text, "mirror_source_requests_total{database=\"app\"} 5\n");
	assert_contains(text,
			"mirror_source_errors_total{database=\"app\",sqlstate_class=\"23\"} 2\n");
	assert_contains(text,
			"mirror_source_errors_total{database=\"app\",sqlstate_class=\"42\"} 1\n");
	assert_contains(
	    text, "mirror_source_errors_total{database=\"app\",sqlstate_class=\"unknown\"} 1\n");
	assert_contains(text, "# TYPE mirror_source_latency_seconds histogram\n");
	free(text);
	stats_free(st);
}

static void test_histogram_buckets(void **state)
{
	struct stats_config cfg = {.max_databases = 1};
	struct stats *st = stats_new(&cfg);
	struct stats_db *db = stats_db(st, "d");
	char *text;

	(void)state;
	stats_histogram_observe(&db->source_latency, 50000);	   /* exactly 50 µs: le=5e-05 */
	stats_histogram_observe(&db->source_latency, 50001);	   /* next bucket */
	stats_histogram_observe(&db->source_latency, 3000000);	   /* 3 ms: le=0.005 */
	stats_histogram_observe(&db->source_latency, 40000000000); /* 40 s: only +Inf */
	text = render(st);
	assert_contains(text,
			"mirror_source_latency_seconds_bucket{database=\"d\",le=\"5e-05\"} 1\n");
	assert_contains(text,
			"mirror_source_latency_seconds_bucket{database=\"d\",le=\"0.0001\"} 2\n");
	assert_contains(text,
			"mirror_source_latency_seconds_bucket{database=\"d\",le=\"0.0025\"} 2\n");
	assert_contains(text,
			"mirror_source_latency_seconds_bucket{database=\"d\",le=\"0.005\"} 3\n");
	assert_contains(text, "mirror_source_latency_seconds_bucket{database=\"d\",le=\"30\"} 3\n");
	assert_contains(text,
			"mirror_source_latency_seconds_bucket{database=\"d\",le=\"+Inf\"} 4\n");
	assert_contains(text, "mirror_source_latency_seconds_count{database=\"d\"} 4\n");
	assert_contains(text, "mirror_source_latency_seconds_sum{database=\"d\"} 40.003100001\n");
	free(text);
	stats_free(st);
}

static void test_database_cap_and_escaping(void **state)
{
	struct stats_config cfg = {.max_databases = 2};
	struct stats *st = stats_new(&cfg);
	char *text;

	(void)state;
	stats_source_request(stats_db(st, "a\"b\\c\nd"), 1, false, "");
	stats_source_request(stats_db(st, "second"), 1, false, "");
	stats_source_request(stats_db(st, "third"), 1, false, "");
	stats_source_request(stats_db(st, "fourth"), 1, false, "");
	assert_ptr_equal(stats_db(st, "third"), stats_db(st, "other"));
	assert_int_equal(stats_database_overflow(st), 3);
	text = render(st);
	assert_contains(text, "mirror_source_requests_total{database=\"a\\\"b\\\\c\\nd\"} 1\n");
	assert_contains(text, "mirror_source_requests_total{database=\"other\"} 2\n");
	assert_null(strstr(text, "third"));
	assert_contains(text, "mirror_capture_limit_hits_total{limit=\"databases\"} 3\n");
	free(text);
	stats_free(st);
}

static void test_capture_block_rendered(void **state)
{
	struct stats_config cfg = {.max_databases = 2};
	struct stats *st = stats_new(&cfg);
	struct stats_capture *c = stats_capture(st);
	char *text;

	(void)state;
	atomic_store(&c->packets, 7);
	atomic_store(&c->ringbuf_drops, 2);
	atomic_store(&c->sessions_active, 3);
	atomic_store(&c->flows_refused, 9);
	text = render(st);
	assert_contains(text, "mirror_capture_packets_total 7\n");
	assert_contains(text, "mirror_capture_ringbuf_drops_total 2\n");
	assert_contains(text, "# TYPE mirror_capture_sessions_active gauge\n");
	assert_contains(text, "mirror_capture_sessions_active 3\n");
	assert_contains(text, "mirror_capture_limit_hits_total{limit=\"flows\"} 9\n");
	assert_null(strstr(text, "database=\"other\"")); /* unused: not rendered */
	free(text);
	stats_free(st);
}

/* Each cap reached is named once, in the order of the table, databases last. */
static void test_limit_first_hit(void **state)
{
	struct stats_config cfg = {.max_databases = 1};
	struct stats *st = stats_new(&cfg);
	struct stats_capture *c = stats_capture(st);
	const char *name, *meaning;

	(void)state;
	assert_false(stats_limit_first_hit(st, &name, &meaning));
	atomic_store(&c->flows_refused, 1);
	atomic_store(&c->bodies_too_big, 5);
	assert_true(stats_limit_first_hit(st, &name, &meaning));
	assert_string_equal(name, "flows");
	assert_non_null(strstr(meaning, "max_flows"));
	assert_true(stats_limit_first_hit(st, &name, &meaning));
	assert_string_equal(name, "message_size");
	assert_false(stats_limit_first_hit(st, &name, &meaning));
	atomic_store(&c->flows_refused, 7); /* again: already said */
	assert_false(stats_limit_first_hit(st, &name, &meaning));
	stats_source_request(stats_db(st, "a"), 1, false, "");
	stats_source_request(stats_db(st, "b"), 1, false, "");
	assert_true(stats_limit_first_hit(st, &name, &meaning));
	assert_string_equal(name, "databases");
	assert_false(stats_limit_first_hit(st, &name, &meaning));
	stats_free(st);
}

static void test_buf_limit(void **state)
{
	struct buf b;

	(void)state;
	buf_init(&b, 16);
	assert_true(buf_printf(&b, "%s", "0123456789"));
	assert_false(buf_append(&b, "0123456789", 10));
	assert_true(b.overflow);
	assert_int_equal(b.len, 10);
	assert_string_equal(b.data, "0123456789");
	buf_free(&b);
}

static void test_parse_listen(void **state)
{
	struct sockaddr_storage ss;
	socklen_t len;
	char err[256];

	(void)state;
	assert_int_equal(http_parse_listen("127.0.0.1:9930", &ss, &len, err, sizeof(err)), 0);
	assert_int_equal(ss.ss_family, AF_INET);
	assert_int_equal(ntohs(((struct sockaddr_in *)&ss)->sin_port), 9930);
	assert_int_equal(http_parse_listen("[::1]:80", &ss, &len, err, sizeof(err)), 0);
	assert_int_equal(ss.ss_family, AF_INET6);
	assert_int_equal(http_parse_listen("localhost:1", &ss, &len, err, sizeof(err)), 0);
	assert_int_equal(http_parse_listen("127.0.0.1", &ss, &len, err, sizeof(err)), -EINVAL);
	assert_non_null(strstr(err, "127.0.0.1"));
	assert_int_equal(http_parse_listen("127.0.0.1:0", &ss, &len, err, sizeof(err)), -EINVAL);
	assert_int_equal(http_parse_listen("127.0.0.1:65536", &ss, &len, err, sizeof(err)),
			 -EINVAL);
	assert_int_equal(http_parse_listen("example.com:80", &ss, &len, err, sizeof(err)), -EINVAL);
	assert_int_equal(http_parse_listen("[::1:80", &ss, &len, err, sizeof(err)), -EINVAL);
}

#define MS 1000000ULL

/* The seed's test_mirror_stats_recording, against our API (latency in ns). */
static void test_mirror_stats_recording(void **state)
{
	struct stats_config cfg = {.max_databases = 4, .mirror_enabled = true};
	struct stats *st = stats_new(&cfg);
	struct stats_db *db = stats_db(st, "test_db");
	struct stats_mirror_snapshot m;
	char *text;

	(void)state;
	stats_mirror_request(st, db);
	stats_mirror_request(st, db);
	stats_mirror_success(st, db, 100 * MS, 50 * MS, 1 * MS, 1000 * MS);
	stats_mirror_success(st, db, 200 * MS, 50 * MS, 2 * MS, 2000 * MS);
	stats_mirror_snapshot(st, 3000 * MS, &m);
	assert_int_equal(m.mirrored, 2);
	assert_int_equal(m.total, 2);
	assert_int_equal(m.in_flight, 0);
	assert_true(m.latency_avg_ms == 150.0); /* sum 300 over count 2 */
	assert_true(m.latency_max_ms == 200.0);
	assert_int_equal(m.consecutive_errors, 0);
	assert_int_equal(m.consecutive_successes, 2);
	assert_true(m.last_success_seconds_ago == 1.0);
	text = render_at(st, 3000 * MS);
	assert_contains(text,
			"# TYPE mirror_requests_mirrored counter\nmirror_requests_mirrored 2\n");
	assert_contains(text, "# TYPE mirror_latency_avg_ms gauge\nmirror_latency_avg_ms 150\n");
	assert_contains(text, "mirror_latency_max_ms 200\n");
	assert_contains(text, "mirror_database_requests{database=\"test_db\"} 2\n");
	assert_contains(text, "mirror_database_latency_ms{database=\"test_db\"} 150.000000\n");
	assert_contains(text, "mirror_latency_seconds_count{database=\"test_db\"} 2\n");
	assert_contains(
	    text, "mirror_replay_delay_seconds_bucket{database=\"test_db\",le=\"0.001\"} 1\n");
	free(text);
	stats_free(st);
}

/* The seed's test_error_tracking. */
static void test_error_tracking(void **state)
{
	struct stats_config cfg = {.max_databases = 4, .mirror_enabled = true};
	struct stats *st = stats_new(&cfg);
	struct stats_db *db = stats_db(st, "test_db");
	struct stats_mirror_snapshot m;
	char *text;

	(void)state;
	stats_mirror_request(st, db);
	stats_mirror_request(st, db);
	stats_mirror_request(st, db);
	stats_mirror_error(st, db, STATS_ERR_CONNECTION, 1);
	stats_mirror_error(st, db, STATS_ERR_QUERY, 2);
	stats_mirror_error(st, db, STATS_ERR_TIMEOUT, 3);
	stats_mirror_snapshot(st, 4, &m);
	assert_int_equal(m.errors[STATS_ERR_CONNECTION], 1);
	assert_int_equal(m.errors[STATS_ERR_QUERY], 1);
	assert_int_equal(m.errors[STATS_ERR_TIMEOUT], 1);
	assert_int_equal(m.consecutive_errors, 3);
	assert_int_equal(m.in_flight, 0);
	text = render(st);
	assert_contains(text, "mirror_errors_total{error_type=\"connection\"} 1\n");
	assert_contains(text, "mirror_errors_total{error_type=\"buffer_full\"} 0\n");
	assert_contains(text, "mirror_database_errors{database=\"test_db\"} 3\n");
	free(text);
	/* a success resets the run of errors */
	stats_mirror_request(st, db);
	stats_mirror_success(st, db, MS, MS, MS, 5);
	stats_mirror_snapshot(st, 6, &m);
	assert_int_equal(m.consecutive_errors, 0);
	stats_free(st);
}

/* not_sampled + skipped + dropped + mirrored + errors + in_flight = total, whatever
 * happens in whatever order. */
static void test_outcome_invariant(void **state)
{
	struct stats_config cfg = {.max_databases = 4, .mirror_enabled = true};
	struct stats *st = stats_new(&cfg);
	struct stats_db *dbs[2] = {stats_db(st, "a"), stats_db(st, "b")};
	struct stats_mirror_snapshot m;
	uint64_t pending = 0, want_total = 0;
	unsigned int seed = 12345;
	int i, e;

	(void)state;
	for (i = 0; i < 20000; i++) {
		struct stats_db *db = dbs[rand_r(&seed) % 2];
		int what = rand_r(&seed) % 8;

		if (what < 3 || !pending) {
			stats_mirror_request(st, db);
			want_total++;
			pending++;
			continue;
		}
		pending--;
		switch (what) {
		case 3:
			stats_mirror_not_sampled(st, db);
			break;
		case 4:
			stats_mirror_skipped(st, db, rand_r(&seed) % STATS_SKIP_MAX);
			break;
		case 5:
			stats_mirror_dropped(st, db, i);
			break;
		case 6:
			stats_mirror_success(st, db, i, i, i, i);
			break;
		default:
			stats_mirror_error(st, db, rand_r(&seed) % STATS_ERR_BUFFER_FULL, i);
			break;
		}
		if (i % 97 == 0) {
			stats_mirror_snapshot(st, i, &m);
			assert_int_equal(m.total, want_total);
			assert_int_equal(m.in_flight, pending);
		}
	}
	stats_mirror_snapshot(st, i, &m);
	for (e = 0; e < STATS_ERR_MAX; e++)
		if (e != STATS_ERR_BUFFER_FULL)
			m.in_flight += m.errors[e];
	assert_int_equal(m.not_sampled + m.skipped + m.dropped + m.mirrored + m.in_flight, m.total);
	assert_int_equal(m.dropped, m.errors[STATS_ERR_BUFFER_FULL]);
	stats_free(st);
}

/* Windowed gauges cover the current reset interval only; counters never reset. */
static void test_reset_interval_window(void **state)
{
	struct stats_config cfg = {
	    .max_databases = 4, .mirror_enabled = true, .reset_interval_ns = 10 * 1000 * MS};
	struct stats *st = stats_new(&cfg);
	struct stats_db *db = stats_db(st, "d");
	struct stats_mirror_snapshot m;

	(void)state;
	stats_mirror_request(st, db);
	stats_mirror_success(st, db, 500 * MS, MS, 0, 1000 * MS);
	stats_mirror_snapshot(st, 5000 * MS, &m);
	assert_true(m.latency_max_ms == 500.0);
	stats_mirror_snapshot(st, 12000 * MS, &m); /* a new window: nothing in it yet */
	assert_true(m.latency_max_ms == 0.0);
	assert_true(m.latency_avg_ms == 0.0);
	assert_int_equal(m.mirrored, 1);
	stats_mirror_request(st, db);
	stats_mirror_success(st, db, 20 * MS, MS, 0, 13000 * MS);
	stats_mirror_snapshot(st, 14000 * MS, &m);
	assert_true(m.latency_max_ms == 20.0);
	stats_free(st);
}

static void test_mirror_metrics_only_with_mirror(void **state)
{
	struct stats_config cfg = {.max_databases = 4};
	struct stats *st = stats_new(&cfg);
	char *text;

	(void)state;
	text = render(st);
	assert_null(strstr(text, "mirror_requests_total"));
	assert_null(strstr(text, "mirror_last_success_seconds_ago"));
	free(text);
	stats_free(st);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_source_counters_and_errors),
	    cmocka_unit_test(test_histogram_buckets),
	    cmocka_unit_test(test_database_cap_and_escaping),
	    cmocka_unit_test(test_capture_block_rendered),
	    cmocka_unit_test(test_limit_first_hit),
	    cmocka_unit_test(test_buf_limit),
	    cmocka_unit_test(test_parse_listen),
	    cmocka_unit_test(test_mirror_stats_recording),
	    cmocka_unit_test(test_error_tracking),
	    cmocka_unit_test(test_outcome_invariant),
	    cmocka_unit_test(test_reset_interval_window),
	    cmocka_unit_test(test_mirror_metrics_only_with_mirror),
	};

	return cmocka_run_group_tests_name("stats", tests, NULL, NULL);
}
