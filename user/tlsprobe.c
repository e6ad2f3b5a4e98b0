// SPDX-License-Identifier: BSD-2-Clause
/* tlsprobe.c — finding the servers to probe for --tls on. See include/tlsprobe.h. */
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "procnet.h"
#include "tlsprobe.h"

#define MAX_LISTEN    64
#define MAX_OWNERS    64
#define RECHECK_NS    5000000000ULL
#define PROC_TEXT_MAX (4u << 20) /* /proc/net/tcp of a busy host, a big maps file */

struct server {
	int pid;
	bool probed; /* else: found, could not be probed (said once) */
};

struct tlsprobe {
	struct capture *c;
	uint16_t port;
	struct server s[CAPTURE_TLS_MAX_SERVERS];
	int n;
	uint64_t next_check;
	bool said_hidden; /* "a listener nobody visible holds" was logged */
};

struct tlsprobe *tlsprobe_new(struct capture *c, uint16_t port)
{
	struct tlsprobe *t = calloc(1, sizeof(*t));

	if (t) {
		t->c = c;
		t->port = port;
	}
	return t;
}

/* A whole /proc file into a malloc'd buffer (*len bytes, NUL-terminated); NULL on error. */
static char *read_proc(const char *path, size_t *len)
{
	size_t cap = 65536, n = 0;
	char *buf = malloc(cap + 1), *grown;
	ssize_t r;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0 || !buf)
		goto fail;
	for (;;) {
		if (n == cap) {
			if (cap >= PROC_TEXT_MAX)
				goto fail;
			grown = realloc(buf, cap * 2 + 1);
			if (!grown)
				goto fail;
			buf = grown;
			cap *= 2;
		}
		r = read(fd, buf + n, cap - n);
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0)
			goto fail;
		if (r == 0)
			break;
		n += (size_t)r;
	}
	close(fd);
	buf[n] = 0;
	*len = n;
	return buf;
fail:
	if (fd >= 0)
		close(fd);
	free(buf);
	return NULL;
}

static void listen_inodes(uint16_t port, uint64_t *inodes, size_t *n)
{
	static const char *const tables[] = {"/proc/net/tcp", "/proc/net/tcp6"};
	size_t i, len;

	for (i = 0; i < 2; i++) {
		char *text = read_proc(tables[i], &len);

		if (text)
			procnet_listen_inodes(text, len, port, inodes, n, MAX_LISTEN);
		free(text);
	}
}

static bool holds_inode(int pid, const uint64_t *inodes, size_t n)
{
	char path[64], link[64];
	struct dirent *d;
	bool found = false;
	DIR *dir;
	size_t i;

	snprintf(path, sizeof(path), "/proc/%d/fd", pid);
	dir = opendir(path);
	if (!dir)
		return false;
	while (!found && (d = readdir(dir))) {
		ssize_t r;
		uint64_t ino;

		if (d->d_name[0] == '.')
			continue;
		r = readlinkat(dirfd(dir), d->d_name, link, sizeof(link) - 1);
		if (r <= 0)
			continue;
		link[r] = 0;
		ino = procnet_socket_inode(link);
		for (i = 0; ino && i < n && !found; i++)
			found = inodes[i] == ino;
	}
	closedir(dir);
	return found;
}

static long parent_of(int pid)
{
	char path[64];
	size_t len;
	char *text;
	long ppid;

	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	text = read_proc(path, &len);
	ppid = text ? procnet_stat_ppid(text, len) : -1;
	free(text);
	return ppid;
}

/* The processes holding a listening socket of the port whose parent does not: the
 * postmasters (a backend holds them only between fork and closing them). -1 when the
 * port has listeners but no process visible to us holds them. */
static int find_postmasters(uint16_t port, int *out, int cap)
{
	uint64_t inodes[MAX_LISTEN];
	int owners[MAX_OWNERS], n_owners = 0, n = 0, i, j;
	size_t n_inodes = 0;
	struct dirent *d;
	DIR *proc;

	listen_inodes(port, inodes, &n_inodes);
	if (!n_inodes)
		return 0;
	proc = opendir("/proc");
	if (!proc)
		return 0;
	while ((d = readdir(proc)) && n_owners < MAX_OWNERS) {
		int pid;

		if (!isdigit((unsigned char)d->d_name[0]))
			continue;
		pid = atoi(d->d_name);
		if (pid > 0 && pid != getpid() && holds_inode(pid, inodes, n_inodes))
			owners[n_owners++] = pid;
	}
	closedir(proc);
	if (!n_owners)
		return -1;
	for (i = 0; i < n_owners && n < cap; i++) {
		long ppid = parent_of(owners[i]);

		for (j = 0; j < n_owners && owners[j] != ppid; j++)
			;
		if (j == n_owners)
			out[n++] = owners[i];
	}
	return n;
}

static struct server *known(struct tlsprobe *t, int pid)
{
	int i;

	for (i = 0; i < t->n; i++)
		if (t->s[i].pid == pid)
			return &t->s[i];
	return NULL;
}

/* Probes one postmaster; says why not when it cannot. */
static bool probe(struct tlsprobe *t, int pid)
{
	char maps[64], lib[PATH_MAX], path[PATH_MAX + 32], msg[512];
	size_t len;
	char *text;
	int r, err;

	snprintf(maps, sizeof(maps), "/proc/%d/maps", pid);
	text = read_proc(maps, &len);
	if (!text) {
		fprintf(stderr, "pgshadow: tls: cannot read %s: %s\n", maps, strerror(errno));
		return false;
	}
	r = procnet_maps_libssl(text, len, lib, sizeof(lib));
	free(text);
	if (r == 0) {
		fprintf(stderr,
			"pgshadow: tls: the server on port %u (postmaster %d) maps no libssl: "
			"PostgreSQL linked statically or against another TLS library; its TLS "
			"sessions cannot be decoded\n",
			t->port, pid);
		return false;
	}
	if (r < 0) {
		fprintf(stderr,
			"pgshadow: tls: the server on port %u (postmaster %d) maps a libssl that "
			"was replaced on disk (upgraded under the running server) or whose path is "
			"too long: restart the server to decode its TLS sessions\n",
			t->port, pid);
		return false;
	}
	/* through the process's root: the path as the server sees it, in a container too */
	snprintf(path, sizeof(path), "/proc/%d/root%s", pid, lib);
	err = capture_tls_add(t->c, pid, path, msg, sizeof(msg));
	if (err) {
		fprintf(stderr, "pgshadow: tls: the server on port %u (postmaster %d): %s\n",
			t->port, pid, msg);
		return false;
	}
	fprintf(stderr,
		"pgshadow: tls: decoding the TLS sessions of postmaster %d on port %u (%s)\n", pid,
		t->port, lib);
	return true;
}

int tlsprobe_scan(struct tlsprobe *t)
{
	int pids[CAPTURE_TLS_MAX_SERVERS], n, i;

	for (i = 0; i < t->n;) { /* forget the exited */
		if (kill(t->s[i].pid, 0) && errno == ESRCH) {
			if (t->s[i].probed)
				capture_tls_remove(t->c, t->s[i].pid);
			fprintf(stderr, "pgshadow: tls: postmaster %d exited\n", t->s[i].pid);
			t->s[i] = t->s[--t->n];
			continue;
		}
		i++;
	}
	n = find_postmasters(t->port, pids, CAPTURE_TLS_MAX_SERVERS);
	if (n < 0 && !t->said_hidden) {
		t->said_hidden = true;
		fprintf(stderr,
			"pgshadow: tls: a server listens on port %u but no process the agent can "
			"see holds the socket: reading another user's /proc/PID/fd needs "
			"CAP_SYS_PTRACE (or root); its TLS sessions are not decoded (said once)\n",
			t->port);
	}
	for (i = 0; i < n && t->n < CAPTURE_TLS_MAX_SERVERS; i++) {
		if (known(t, pids[i]))
			continue;
		t->s[t->n].pid = pids[i];
		t->s[t->n].probed = probe(t, pids[i]);
		t->n++;
	}
	return tlsprobe_servers(t);
}

int tlsprobe_tick(struct tlsprobe *t, uint64_t now_ns)
{
	int i;
	bool rescan;

	if (now_ns < t->next_check)
		return tlsprobe_servers(t);
	t->next_check = now_ns + RECHECK_NS;
	rescan = t->n == 0;
	for (i = 0; i < t->n; i++)
		if (kill(t->s[i].pid, 0) && errno == ESRCH)
			rescan = true;
	if (rescan)
		tlsprobe_scan(t);
	return tlsprobe_servers(t);
}

int tlsprobe_servers(const struct tlsprobe *t)
{
	int i, n = 0;

	for (i = 0; t && i < t->n; i++)
		n += t->s[i].probed;
	return n;
}

int tlsprobe_unprobed(const struct tlsprobe *t)
{
	return t ? t->n - tlsprobe_servers(t) : 0;
}

void tlsprobe_free(struct tlsprobe *t)
{
	free(t);
}
