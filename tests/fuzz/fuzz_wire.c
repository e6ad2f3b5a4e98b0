// SPDX-License-Identifier: BSD-2-Clause
/*
 * fuzz_wire — session (and its pgwire decoder) on both directions of one connection.
 * Input: byte 0 bit 0 = the connection's start was seen (a startup comes first); then
 * chunks, each a header byte (bit 7: 1 = server to client; bits 0-6: length) and that
 * many bytes (a header byte of 0: a gap in the direction of bit 7).
 */
#include <stddef.h>
#include <stdint.h>

#include "fuzz_session.h"


int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct session_config cfg;
	struct session_stats st = {0};
	struct session *s;
	uint64_t ts = 1;
	size_t i = 1, n;

	if (!size)
		return 0;
	session_config_default(&cfg);
	cfg.track_activity = data[0] & 2;
	cfg.wire.keep_datarows = data[0] & 4;
	s = session_new(&cfg, &fuzz_session_handler, NULL, &st, 1, data[0] & 1, ts);
	if (!s)
		return 0;
	while (i < size) {
		uint8_t h = data[i++];
		enum pgwire_dir dir = h & 0x80 ? PGWIRE_BACKEND : PGWIRE_FRONTEND;

		n = h & 0x7f;
		ts += 1 + (h & 3);
		if (!n) {
			session_gap(s, dir, ts);
			continue;
		}
		if (n > size - i)
			n = size - i;
		session_feed(s, dir, data + i, n, ts);
		i += n;
	}
	session_free(s, ts + 1);
	return 0;
}
