// SPDX-License-Identifier: BSD-2-Clause
/* authblank.c — authentication message bodies kept out of dumps. See
 * include/authblank.h. */
#include <string.h>

#include "authblank.h"

enum {
	AB_STARTUP = 0, /* untyped packets: int32 length, int32 code, ... */
	AB_TYPED,	/* type byte, int32 length, body */
	AB_DONE,
};

#define CODE_SSL      80877103u
#define CODE_GSSENC   80877104u
#define CODE_CANCEL   80877102u
#define MAX_AUTH_BODY (1u << 20) /* longer: not an authentication message */

static uint32_t be32(const uint8_t *p)
{
	return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

void authblank_init(struct authblank *a, bool from_start)
{
	memset(a, 0, sizeof(*a));
	a->state = from_start ? AB_STARTUP : AB_DONE;
}

bool authblank_done(const struct authblank *a)
{
	return a->state == AB_DONE;
}

void authblank_gap(struct authblank *a)
{
	a->state = AB_DONE;
	a->left = 0;
}

/* A whole header in a->hdr: the body that follows, and the state after it. */
static void header_done(struct authblank *a)
{
	uint32_t len, code;

	a->hdr_len = 0;
	a->blank = false;
	if (a->state == AB_STARTUP) {
		len = be32(a->hdr);
		code = be32(a->hdr + 4);
		if (len < 8 || len > MAX_AUTH_BODY || code == CODE_CANCEL) {
			a->state = AB_DONE; /* not a startup packet (TLS), or a cancel */
			return;
		}
		a->left = len - 8;
		/* after SSLRequest/GSSENCRequest ('N') comes the StartupMessage */
		a->next = code == CODE_SSL || code == CODE_GSSENC ? AB_STARTUP : AB_TYPED;
	} else {
		len = be32(a->hdr + 1);
		if (a->hdr[0] != 'p' || len < 4 || len - 4 > MAX_AUTH_BODY) {
			a->state = AB_DONE; /* authentication is over */
			return;
		}
		a->left = len - 4;
		a->blank = true;
		a->next = AB_TYPED;
	}
	if (!a->left)
		a->state = a->next;
}

bool authblank_feed(struct authblank *a, const uint8_t *in, size_t len, uint8_t *out)
{
	bool changed = false;
	size_t i = 0, n;

	memcpy(out, in, len);
	while (i < len && a->state != AB_DONE) {
		if (a->left) {
			n = len - i < a->left ? len - i : a->left;
			if (a->blank) {
				memset(out + i, 0, n);
				a->blanked += n;
				changed = true;
			}
			i += n;
			a->left -= (uint32_t)n;
			if (!a->left)
				a->state = a->next;
			continue;
		}
		a->hdr[a->hdr_len++] = in[i++];
		if (a->hdr_len == (a->state == AB_STARTUP ? 8 : 5))
			header_done(a);
	}
	return changed;
}
