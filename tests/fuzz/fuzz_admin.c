// SPDX-License-Identifier: BSD-2-Clause
/*
 * fuzz_admin — the admin console's protocol core on any client input: startup packets,
 * SSL/GSS requests, queries (every command), extended-protocol messages, garbage. Input:
 * byte 0 bit 0 = the connection is read-only (TCP); the rest in chunks of 1-64 bytes (the
 * low 6 bits of each chunk's first byte), fed as they fit.
 */
#include <stddef.h>
#include <stdint.h>

#include "admin.h"
#include "buf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const struct admin_provider p = {.version = "pgshadow fuzz"};
	struct admin_conn *c;
	struct buf out;
	size_t i = 1, n, room;

	if (!size)
		return 0;
	c = admin_conn_new(&p, 1, 2);
	if (!c)
		return 0;
	admin_conn_set_read_only(c, data[0] & 1);
	buf_init(&out, 1u << 24);
	while (i < size) {
		n = 1 + (data[i] & 0x3f);
		if (n > size - i)
			n = size - i;
		room = admin_conn_space(c);
		if (n > room)
			n = room;
		if (!n)
			break;
		if (!admin_conn_feed(c, data + i, n, &out))
			break;
		out.len = 0; /* "sent" */
		i += n;
	}
	buf_free(&out);
	admin_conn_free(c);
	return 0;
}
