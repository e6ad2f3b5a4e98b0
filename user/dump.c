// SPDX-License-Identifier: BSD-2-Clause
/*
 * dump.c — writes reassembled half-streams to files. See include/dump.h.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "dump.h"

#define MAX_REUSE_SUFFIX 1000
#define DUMP_BUFFER	 (64 << 10)

struct dump {
	char *dir;
	uint64_t errors;
};

struct dump_flow {
	char base[PATH_MAX]; /* DIR/<client>-<server>[.N] */
	FILE *out[2];	     /* indexed by enum tcpstream_dir */
	FILE *gaps;	     /* opened at the first gap */
	uint64_t offset[2];  /* bytes written so far per direction */
};

static const char *const dir_ext[2] = {"c2s", "s2c"};

void dump_format_endpoint(const struct tcpstream_addr *a, char *buf, size_t len)
{
	char ip[INET6_ADDRSTRLEN];

	if (a->family == 4) {
		inet_ntop(AF_INET, a->addr + 12, ip, sizeof(ip));
		snprintf(buf, len, "%s:%u", ip, a->port);
	} else {
		inet_ntop(AF_INET6, a->addr, ip, sizeof(ip));
		snprintf(buf, len, "[%s]:%u", ip, a->port);
	}
}

static void dump_error(struct dump *d, const char *what, const char *path)
{
	if (d->errors++ == 0)
		fprintf(stderr,
			"pgshadow: dump: cannot %s %s: %s (further dump errors are only "
			"counted)\n",
			what, path, strerror(errno));
}

/* Creates both stream files exclusively; on a name clash tries the next suffix. */
static int create_files(struct dump *d, struct dump_flow *f, const char *name)
{
	char path[PATH_MAX + 8];
	int n, i, fd;

	for (n = 1; n <= MAX_REUSE_SUFFIX; n++) {
		if (n == 1)
			snprintf(f->base, sizeof(f->base), "%s/%s", d->dir, name);
		else
			snprintf(f->base, sizeof(f->base), "%s/%s.%d", d->dir, name, n);
		for (i = 0; i < 2; i++) {
			snprintf(path, sizeof(path), "%s.%s", f->base, dir_ext[i]);
			/* every byte of the session, password messages included: root's alone */
			fd = open(path, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
			if (fd < 0)
				break;
			f->out[i] = fdopen(fd, "w");
			if (!f->out[i]) {
				close(fd);
				break;
			}
			/* fewer write(2)s than stdio's 4 KiB default at stream rates */
			setvbuf(f->out[i], NULL, _IOFBF, DUMP_BUFFER);
		}
		if (i == 2)
			return 0;
		if (errno != EEXIST) {
			dump_error(d, "create", path);
			return -1;
		}
		if (i == 1) { /* .c2s was ours, .s2c clashed: take the next suffix */
			snprintf(path, sizeof(path), "%s.%s", f->base, dir_ext[0]);
			fclose(f->out[0]);
			f->out[0] = NULL;
			unlink(path);
		}
	}
	dump_error(d, "find a free name for", name);
	return -1;
}

struct dump_flow *dump_flow_open(struct dump *d, const struct tcpstream_flow *flow)
{
	struct dump_flow *f;
	char client[64], server[64], name[160];

	f = calloc(1, sizeof(*f));
	if (!f) {
		dump_error(d, "allocate state for", "a flow");
		return NULL;
	}
	dump_format_endpoint(&flow->client, client, sizeof(client));
	dump_format_endpoint(&flow->server, server, sizeof(server));
	snprintf(name, sizeof(name), "%s-%s", client, server);
	if (create_files(d, f, name)) {
		free(f);
		return NULL;
	}
	return f;
}

void dump_flow_data(struct dump *d, struct dump_flow *f, enum tcpstream_dir dir,
		    const uint8_t *data, size_t len)
{
	if (!f || !f->out[dir])
		return;
	if (fwrite(data, 1, len, f->out[dir]) != len) {
		dump_error(d, "write", f->base);
		fclose(f->out[dir]);
		f->out[dir] = NULL;
		return;
	}
	f->offset[dir] += len;
}

void dump_flow_gap(struct dump *d, struct dump_flow *f, enum tcpstream_dir dir, uint64_t missing)
{
	char path[PATH_MAX + 8];

	if (!f)
		return;
	if (!f->gaps) {
		snprintf(path, sizeof(path), "%s.gaps", f->base);
		int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);

		f->gaps = fd >= 0 ? fdopen(fd, "w") : NULL;
		if (!f->gaps) {
			if (fd >= 0)
				close(fd);
			dump_error(d, "create", path);
			return;
		}
	}
	if (missing)
		fprintf(f->gaps, "%s offset=%llu missing=%llu\n", dir_ext[dir],
			(unsigned long long)f->offset[dir], (unsigned long long)missing);
	else
		fprintf(f->gaps, "%s offset=%llu missing=unknown\n", dir_ext[dir],
			(unsigned long long)f->offset[dir]);
}

void dump_flow_close(struct dump *d, struct dump_flow *f)
{
	int i;

	if (!f)
		return;
	for (i = 0; i < 2; i++)
		if (f->out[i] && fclose(f->out[i]))
			dump_error(d, "close", f->base);
	if (f->gaps)
		fclose(f->gaps);
	free(f);
}

struct dump *dump_open(const char *dir)
{
	struct dump *d;

	if (access(dir, W_OK | X_OK))
		return NULL;
	d = calloc(1, sizeof(*d));
	if (!d)
		return NULL;
	d->dir = strdup(dir);
	if (!d->dir) {
		free(d);
		return NULL;
	}
	return d;
}

uint64_t dump_errors(const struct dump *d)
{
	return d->errors;
}

void dump_close(struct dump *d)
{
	if (!d)
		return;
	free(d->dir);
	free(d);
}
