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

static char *render(struct stats *st)
{
	struct buf b;

	buf_init(&b, 1 << 24);
	assert_true(stats_render(st, NULL, "test", &b));
	return buf_steal(&b, NULL);
}

static void assert_contains(const char *text, const char *line)
{
	if (!strstr(text, line))
		fail_msg("missing: %s", line);
}

static void test_source_counters_and_errors(void **state)
{
	struct stats_config cfg = { .max_databases = 10 };
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
	assert_contains(text, "mirror_source_errors_total{database=\"app\",sqlstate_class=\"23\"} 2\n");
	assert_contains(text, "mirror_source_errors_total{database=\"app\",sqlstate_class=\"42\"} 1\n");
	assert_contains(text,
			"mirror_source_errors_total{database=\"app\",sqlstate_class=\"unknown\"} 1\n");
	assert_contains(text, "# TYPE mirror_source_latency_seconds histogram\n");
	free(text);
	stats_free(st);
}

static void test_histogram_buckets(void **state)
{
	struct stats_config cfg = { .max_databases = 1 };
	struct stats *st = stats_new(&cfg);
	struct stats_db *db = stats_db(st, "d");
	char *text;

	(void)state;
	stats_histogram_observe(&db->source_latency, 50000);	   /* exactly 50 µs: le=5e-05 */
	stats_histogram_observe(&db->source_latency, 50001);	   /* next bucket */
	stats_histogram_observe(&db->source_latency, 3000000);	   /* 3 ms: le=0.005 */
	stats_histogram_observe(&db->source_latency, 40000000000); /* 40 s: only +Inf */
	text = render(st);
	assert_contains(text, "mirror_source_latency_seconds_bucket{database=\"d\",le=\"5e-05\"} 1\n");
	assert_contains(text, "mirror_source_latency_seconds_bucket{database=\"d\",le=\"0.0001\"} 2\n");
	assert_contains(text, "mirror_source_latency_seconds_bucket{database=\"d\",le=\"0.0025\"} 2\n");
	assert_contains(text, "mirror_source_latency_seconds_bucket{database=\"d\",le=\"0.005\"} 3\n");
	assert_contains(text, "mirror_source_latency_seconds_bucket{database=\"d\",le=\"30\"} 3\n");
	assert_contains(text, "mirror_source_latency_seconds_bucket{database=\"d\",le=\"+Inf\"} 4\n");
	assert_contains(text, "mirror_source_latency_seconds_count{database=\"d\"} 4\n");
	assert_contains(text, "mirror_source_latency_seconds_sum{database=\"d\"} 40.003100001\n");
	free(text);
	stats_free(st);
}

static void test_database_cap_and_escaping(void **state)
{
	struct stats_config cfg = { .max_databases = 2 };
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
	struct stats_config cfg = { .max_databases = 2 };
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
	assert_int_equal(http_parse_listen("127.0.0.1:65536", &ss, &len, err, sizeof(err)), -EINVAL);
	assert_int_equal(http_parse_listen("example.com:80", &ss, &len, err, sizeof(err)), -EINVAL);
	assert_int_equal(http_parse_listen("[::1:80", &ss, &len, err, sizeof(err)), -EINVAL);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_source_counters_and_errors),
		cmocka_unit_test(test_histogram_buckets),
		cmocka_unit_test(test_database_cap_and_escaping),
		cmocka_unit_test(test_capture_block_rendered),
		cmocka_unit_test(test_buf_limit),
		cmocka_unit_test(test_parse_listen),
	};

	return cmocka_run_group_tests_name("stats", tests, NULL, NULL);
}
