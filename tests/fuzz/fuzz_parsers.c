// SPDX-License-Identifier: BSD-2-Clause
/*
 * fuzz_parsers — the small parsers of untrusted or operator text, chosen by byte 0: the
 * readiness JSON (`pgshadow readiness` reads an agent's answer), Prometheus's query
 * answer (`--prometheus`), the state file, the basic-auth users file, libpq message
 * redaction, listen addresses and the client's URLs, the authentication walk of dumps,
 * and the /proc texts of the TLS probes (byte 0 from 0xf0).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "authblank.h"
#include "fleet.h"
#include "http.h"
#include "procnet.h"
#include "readiness.h"
#include "redact.h"
#include "statefile.h"
#include "webauth.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct fleet_sample samples[16];
	struct readiness_report r;
	struct stats_readiness_state s;
	struct sockaddr_storage ss;
	struct authblank ab;
	struct webauth *w;
	socklen_t len;
	char err[512], out[256], *text, *mid;
	uint8_t *copy;

	if (!size)
		return 0;
	text = malloc(size);
	if (!text)
		return 0;
	memcpy(text, data + 1, size - 1);
	text[size - 1] = 0;
	switch (data[0] >= 0xf0 ? 7 : data[0] % 7) {
	case 0:
		readiness_parse_json(text, &r, err, sizeof(err));
		break;
	case 1:
		fleet_vector(text, samples, 16, err, sizeof(err));
		break;
	case 2:
		statefile_decode(text, size - 1, "v", 1, &s, err, sizeof(err));
		break;
	case 3:
		w = webauth_parse(text, err, sizeof(err));
		if (w && strstr(text, "$04$")) /* a check costs 2^cost rounds: cheap ones only */
			webauth_check(w, "u", "p");
		webauth_free(w);
		break;
	case 4: /* the conninfo, then the message, split at the first NUL-free half */
		mid = text + strlen(text) / 2;
		redact_libpq_message(text, mid, out, sizeof(out));
		break;
	case 5:
		http_parse_listen(text, &ss, &len, err, sizeof(err));
		break;
	case 6:
		copy = malloc(size);
		if (copy) {
			authblank_init(&ab, data[0] & 8);
			authblank_feed(&ab, data + 1, size - 1, copy);
			free(copy);
		}
		break;
	case 7: { /* the same text as each /proc file */
		uint64_t inodes[4];
		size_t n = 0;

		procnet_listen_inodes(text, size - 1, (uint16_t)data[0], inodes, &n, 4);
		procnet_maps_libssl(text, size - 1, out, sizeof(out));
		procnet_stat_ppid(text, size - 1);
		procnet_socket_inode(text);
		break;
	}
	}
	free(text);
	return 0;
}
