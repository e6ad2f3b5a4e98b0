// SPDX-License-Identifier: BSD-2-Clause
/* A fleet's readiness: Prometheus's answers read, each host judged, the fleet READY only
 * when every expected host is. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "fleet.h"

/* clang-format off */
#define VEC(...) "{\"status\":\"success\",\"data\":{\"resultType\":\"vector\",\"result\":[" __VA_ARGS__ "]}}"
#define S(inst, v) "{\"metric\":{\"__name__\":\"x\",\"instance\":\"" inst "\"},\"value\":[1.5,\"" v "\"]}"
/* clang-format on */

static void test_vector(void **state)
{
	struct fleet_sample s[4];
	char err[128] = "";

	(void)state;
	assert_int_equal(fleet_vector(VEC(S("a:1", "1") "," S("b:1", "0") "," S("a:1", "0")), s, 4,
				      err, sizeof(err)),
			 2);
	assert_string_equal(s[0].instance, "a:1");
	assert_true(s[0].value == 1); /* the largest of a's two series */
	assert_true(s[1].value == 0);
	assert_int_equal(fleet_vector(VEC(), s, 4, err, sizeof(err)), 0);
	assert_int_equal(fleet_vector("{\"status\":\"error\",\"error\":\"parse error at char 3\"}",
				      s, 4, err, sizeof(err)),
			 -1);
	assert_non_null(strstr(err, "parse error at char 3"));
	assert_int_equal(fleet_vector("<html>", s, 4, err, sizeof(err)), -1);
	assert_string_equal(err, "not JSON");
	assert_int_equal(fleet_vector(VEC(S("a:1", "1") "," S("b:1", "1")), s, 1, err, sizeof(err)),
			 -1);
	assert_int_equal(fleet_vector(VEC(S("a:1", "x")), s, 4, err, sizeof(err)), -1);
}

static void test_decide(void **state)
{
	const char *const hosts[] = {"a:1", "b:1", "c:1", "d:1", "e:1"};
	const struct fleet_sample up[] = {{"a:1", 1}, {"b:1", 1}, {"c:1", 0}, {"e:1", 1}};
	const struct fleet_sample ready[] = {{"a:1", 1}, {"b:1", 0}, {"z:1", 1}};
	struct fleet_host out[5];
	struct buf b;

	(void)state;
	assert_false(fleet_decide(hosts, 5, up, 4, ready, 3, out));
	assert_int_equal(out[0].state, FLEET_READY);
	assert_int_equal(out[1].state, FLEET_NOT_READY);
	assert_int_equal(out[2].state, FLEET_DOWN);
	assert_int_equal(out[3].state, FLEET_ABSENT); /* no up series at all */
	assert_int_equal(out[4].state, FLEET_ABSENT); /* up, no verdict */
	assert_true(fleet_decide(hosts, 1, up, 4, ready, 3, out));
	assert_false(fleet_decide(hosts, 0, up, 4, ready, 3, out)); /* nothing expected: no */
	assert_false(fleet_decide(hosts, 5, up, 4, ready, 3, out));
	buf_init(&b, 4096);
	assert_true(fleet_render_text(out, 5, false, &b));
	assert_true(buf_append(&b, "", 1));
	assert_non_null(strstr(b.data, "a:1  READY\n"));
	assert_non_null(strstr(b.data, "c:1  NOT READY (down"));
	assert_non_null(strstr(b.data, "Fleet: NOT READY (1 of 5 hosts READY)\n"));
	buf_free(&b);
}

int main(void)
{
	const struct CMUnitTest tests[] = {
	    cmocka_unit_test(test_vector),
	    cmocka_unit_test(test_decide),
	};

	return cmocka_run_group_tests(tests, NULL, NULL);
}
