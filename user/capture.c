// SPDX-License-Identifier: BSD-2-Clause
/*
 * capture.c — the shell around bpf/capture.bpf.c: load, attach (tcx or tc), poll the
 * ring buffer, read the counters, detach. See include/capture.h.
 */
#include <errno.h>
#include <net/if.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <linux/capability.h>
#include <bpf/bpf.h>
#include <bpf/libbpf.h>

#include "capture.h"
#include "capture.skel.h"

/* Debian 12's uapi headers (6.1) predate tcx; the kernel ABI values are stable. */
enum { PGS_BPF_TCX_INGRESS = 46, PGS_BPF_TCX_EGRESS = 47 };

/* Fixed handle and priority of our tc filters, so a later run finds and replaces the
 * ones a killed agent left behind ("PG" and 0x5053 = "PS"). */
#define TC_HANDLE   0x5047
#define TC_PRIORITY 0x5053

#define BTF_VMLINUX "/sys/kernel/btf/vmlinux"

struct attachment {
	int ifindex;
	bool loopback;
	bool created_clsact; /* tc mode: we created the qdisc, so we remove it */
	int link_fd[2];	     /* tcx mode: ingress, egress (-1 when none) */
	bool tc_attached[2]; /* tc mode */
};

/* The agent's own connections, also checked in user space: a record of one that was
 * captured before its tuple reached the kernel map (the SYN of a new connection) must
 * not open a session. Written by any thread, read by the polling thread. */
#define USER_EXCLUDE_SLOTS 64

struct user_exclude {
	struct capture_tuple t;
	_Atomic int used;
};

/* One libssl file probed for --tls on: its uprobes, entry and return of each function. */
#define TLS_FUNCS 4

struct tls_lib {
	dev_t dev;
	ino_t ino;
	struct bpf_link *links[TLS_FUNCS * 2];
};

struct capture {
	struct user_exclude excl[USER_EXCLUDE_SLOTS];
	_Atomic int n_excl;
	struct capture_bpf *skel;
	struct ring_buffer *rb;
	enum capture_attach_mode mode;
	struct attachment att[CAPTURE_MAX_INTERFACES];
	int n_att;
	bool detached;
	capture_record_fn fn;
	void *ctx;
	uint64_t malformed;
	uint64_t user_excluded;
	pthread_mutex_t excl_lock; /* serialises writers of excl[] */
	bool tls;
	struct bpf_link *tls_sock[2]; /* the socket tracepoints */
	struct tls_lib tls_libs[CAPTURE_TLS_MAX_SERVERS];
	int n_tls_libs;
	char ifnames[CAPTURE_MAX_INTERFACES * (IF_NAMESIZE + 1)];
	/* receive times of the replay's mirror connections (capture_rx_*: replay thread) */
	const volatile struct capture_rx_slot *rx_times; /* rx_times mapped, rx_slots of them */
	size_t rx_map_bytes;
	uint32_t rx_slots, rx_nfree;
	uint32_t *rx_free;   /* free slots, a stack */
	uint64_t *rx_cookie; /* the socket cookie of each slot in use */
};

static int verbose_libbpf;

static int libbpf_print(enum libbpf_print_level level, const char *fmt, va_list args)
{
	if (!verbose_libbpf && level != LIBBPF_WARN)
		return 0;
	if (!verbose_libbpf)
		return 0; /* warnings too: main prints one line of its own per failure */
	return vfprintf(stderr, fmt, args);
}

static void set_error(struct capture_error *e, int err, const char *fmt, ...)
{
	va_list ap;

	e->err = err;
	va_start(ap, fmt);
	vsnprintf(e->msg, sizeof(e->msg), fmt, ap);
	va_end(ap);
}

/* True when the process may load and attach BPF programs: root, or CAP_BPF +
 * CAP_NET_ADMIN + CAP_PERFMON in the effective set. */
static bool privileged(void)
{
	struct __user_cap_header_struct hdr = {.version = _LINUX_CAPABILITY_VERSION_3};
	struct __user_cap_data_struct data[2] = {};
	const int need[] = {CAP_BPF, CAP_NET_ADMIN, CAP_PERFMON};
	size_t i;

	if (geteuid() == 0)
		return true;
	if (syscall(SYS_capget, &hdr, data))
		return false;
	for (i = 0; i < sizeof(need) / sizeof(need[0]); i++)
		if (!(data[need[i] / 32].effective & (1u << (need[i] % 32))))
			return false;
	return true;
}

static int if_flags(const char *name, short *flags)
{
	struct ifreq ifr = {};
	int fd, err = 0;

	fd = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
	if (fd < 0)
		return -errno;
	snprintf(ifr.ifr_name, sizeof(ifr.ifr_name), "%s", name);
	if (ioctl(fd, SIOCGIFFLAGS, &ifr))
		err = -errno;
	else
		*flags = ifr.ifr_flags;
	close(fd);
	return err;
}

static int add_interface(struct capture *c, const char *name, struct capture_error *error)
{
	struct attachment *a;
	unsigned int ifindex;
	short flags = 0;
	int err;

	if (strlen(name) >= IF_NAMESIZE) {
		set_error(error, -EINVAL, "interface name '%s' is longer than %d characters", name,
			  IF_NAMESIZE - 1);
		return -EINVAL;
	}
	ifindex = if_nametoindex(name);
	if (!ifindex) {
		set_error(error, -ENODEV, "interface '%s' does not exist", name);
		return -ENODEV;
	}
	if (c->n_att == CAPTURE_MAX_INTERFACES) {
		set_error(error, -E2BIG, "too many interfaces (at most %d)",
			  CAPTURE_MAX_INTERFACES);
		return -E2BIG;
	}
	err = if_flags(name, &flags);
	if (err) {
		set_error(error, err, "cannot read flags of interface '%s': %s", name,
			  strerror(-err));
		return err;
	}
	a = &c->att[c->n_att++];
	a->ifindex = ifindex;
	a->loopback = flags & IFF_LOOPBACK;
	a->link_fd[0] = a->link_fd[1] = -1;
	if (c->ifnames[0])
		strcat(c->ifnames, ",");
	strcat(c->ifnames, name);
	return 0;
}

/* Every interface that is up, in ifindex order. */
static int add_all_up(struct capture *c, struct capture_error *error)
{
	struct if_nameindex *ifs, *i;
	int err = 0;

	ifs = if_nameindex();
	if (!ifs) {
		set_error(error, -errno, "cannot list interfaces: %s", strerror(errno));
		return -errno;
	}
	for (i = ifs; i->if_index && !err; i++) {
		short flags = 0;

		if (if_flags(i->if_name, &flags) || !(flags & IFF_UP))
			continue;
		err = add_interface(c, i->if_name, error);
	}
	if_freenameindex(ifs);
	if (!err && c->n_att == 0) {
		set_error(error, -ENODEV, "no interface is up");
		err = -ENODEV;
	}
	return err;
}

static int attach_tcx(struct capture *c, struct attachment *a, struct capture_error *error)
{
	int progs[2] = {bpf_program__fd(c->skel->progs.capture_ingress),
			bpf_program__fd(c->skel->progs.capture_egress)};
	int types[2] = {PGS_BPF_TCX_INGRESS, PGS_BPF_TCX_EGRESS};
	int i, fd;

	/* On loopback every packet passes ingress once; egress would see it twice. */
	for (i = 0; i < (a->loopback ? 1 : 2); i++) {
		fd = bpf_link_create(progs[i], a->ifindex, types[i], NULL);
		if (fd < 0) {
			set_error(error, fd, "cannot attach tcx %s on ifindex %d: %s%s",
				  i ? "egress" : "ingress", a->ifindex, strerror(-fd),
				  fd == -EINVAL ? " (kernel older than 6.6? try --attach tc)" : "");
			return fd;
		}
		a->link_fd[i] = fd;
	}
	return 0;
}

static void tc_detach_one(struct attachment *a, int i)
{
	DECLARE_LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = a->ifindex,
			    .attach_point = i ? BPF_TC_EGRESS : BPF_TC_INGRESS);
	DECLARE_LIBBPF_OPTS(bpf_tc_opts, opts, .handle = TC_HANDLE, .priority = TC_PRIORITY);

	bpf_tc_detach(&hook, &opts); /* -ENOENT when nothing of ours is there: fine */
}

static int attach_tc(struct capture *c, struct attachment *a, struct capture_error *error)
{
	int progs[2] = {bpf_program__fd(c->skel->progs.capture_ingress),
			bpf_program__fd(c->skel->progs.capture_egress)};
	int i, err;

	for (i = 0; i < (a->loopback ? 1 : 2); i++) {
		DECLARE_LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = a->ifindex,
				    .attach_point = i ? BPF_TC_EGRESS : BPF_TC_INGRESS);
		DECLARE_LIBBPF_OPTS(bpf_tc_opts, opts, .handle = TC_HANDLE, .priority = TC_PRIORITY,
				    .prog_fd = progs[i], .flags = BPF_TC_F_REPLACE);

		err = bpf_tc_hook_create(&hook);
		if (err && err != -EEXIST) {
			set_error(error, err, "cannot create clsact qdisc on ifindex %d: %s",
				  a->ifindex, strerror(-err));
			return err;
		}
		if (!err)
			a->created_clsact = true;
		tc_detach_one(a, i); /* a stale filter of a killed agent */
		err = bpf_tc_attach(&hook, &opts);
		if (err) {
			set_error(error, err, "cannot attach tc %s filter on ifindex %d: %s",
				  i ? "egress" : "ingress", a->ifindex, strerror(-err));
			return err;
		}
		a->tc_attached[i] = true;
	}
	return 0;
}

static void tls_detach(struct capture *c)
{
	int n, i;

	for (n = 0; n < c->n_tls_libs; n++)
		for (i = 0; i < TLS_FUNCS * 2; i++) {
			bpf_link__destroy(c->tls_libs[n].links[i]);
			c->tls_libs[n].links[i] = NULL;
		}
	c->n_tls_libs = 0;
	for (i = 0; i < 2; i++) {
		bpf_link__destroy(c->tls_sock[i]);
		c->tls_sock[i] = NULL;
	}
}

static void detach_all(struct capture *c)
{
	int n, i;

	tls_detach(c);
	for (n = 0; n < c->n_att; n++) {
		struct attachment *a = &c->att[n];

		for (i = 0; i < 2; i++) {
			if (a->link_fd[i] >= 0)
				close(a->link_fd[i]);
			a->link_fd[i] = -1;
			if (a->tc_attached[i])
				tc_detach_one(a, i);
			a->tc_attached[i] = false;
		}
		if (a->created_clsact) {
			DECLARE_LIBBPF_OPTS(bpf_tc_hook, hook, .ifindex = a->ifindex,
					    .attach_point = BPF_TC_INGRESS | BPF_TC_EGRESS);

			bpf_tc_hook_destroy(&hook);
			a->created_clsact = false;
		}
	}
	c->detached = true;
}

static bool user_excluded(struct capture *c, const struct capture_event *ev)
{
	int i, n = atomic_load_explicit(&c->n_excl, memory_order_acquire);

	for (i = 0; i < n && i < USER_EXCLUDE_SLOTS; i++) {
		const struct capture_tuple *t = &c->excl[i].t;

		if (!atomic_load_explicit(&c->excl[i].used, memory_order_acquire))
			continue;
		if (t->sport == ev->sport && t->dport == ev->dport &&
		    !memcmp(t->saddr, ev->saddr, 16) && !memcmp(t->daddr, ev->daddr, 16))
			return true;
	}
	return false;
}

/* Bytes of a ring record's header (struct bpf_ringbuf_hdr) before its data. */
#define RINGBUF_HDR 8

static int on_record(void *ctx, void *data, size_t size)
{
	struct capture *c = ctx;
	const struct capture_event *ev = data;
	const char *p = data, *next = p - RINGBUF_HDR + ((size + RINGBUF_HDR + 7) & ~(size_t)7);
	size_t off;

	/* The records were written by the program on another CPU: their lines are not in this
	 * one's cache. Ask for the rest of this record and the start of the next one now, so
	 * the misses overlap instead of stalling the decoder one line at a time (the next
	 * record may not be committed yet: a prefetch of mapped memory is harmless). */
	for (off = 128; off < size && off < 1024; off += 64)
		__builtin_prefetch(p + off);
	__builtin_prefetch(next);
	__builtin_prefetch(next + 64);

	/* a record is reserved in a size class: the chunk may not fill it */
	if (size < sizeof(*ev) || size < sizeof(*ev) + ev->chunk_len ||
	    ev->chunk_len > CAPTURE_CHUNK_MAX) {
		c->malformed++;
		return 0;
	}
	if (atomic_load_explicit(&c->n_excl, memory_order_acquire) && user_excluded(c, ev)) {
		c->user_excluded++;
		return 0;
	}
	c->fn(c->ctx, ev, (const uint8_t *)(ev + 1));
	return 0;
}

static int load(struct capture *c, const struct capture_config *cfg, struct capture_error *error)
{
	uint32_t reserve;
	int err;

	c->skel = capture_bpf__open();
	if (!c->skel) {
		err = -errno;
		set_error(error, err, "cannot open the BPF object: %s", strerror(-err));
		return err;
	}
	c->skel->rodata->server_port = cfg->port;
	c->skel->rodata->wakeup_bytes = cfg->wakeup_bytes;
	/* kept for records without payload (see data_limit in the program): 1/64 of the ring
	 * (13,000 packet ends in the default 64 MiB), at least 256 KiB (a packet checks the
	 * limit once for all its payload, so each CPU may overshoot it by one packet), at
	 * most a quarter of a small ring */
	reserve = cfg->ringbuf_bytes / 64;
	if (reserve < (256u << 10))
		reserve =
		    cfg->ringbuf_bytes / 4 < (256u << 10) ? cfg->ringbuf_bytes / 4 : 256u << 10;
	c->skel->rodata->data_limit = cfg->ringbuf_bytes - reserve;
	err = bpf_map__set_max_entries(c->skel->maps.events, cfg->ringbuf_bytes);
	if (err) {
		set_error(error, err, "invalid ring buffer size %u: %s", cfg->ringbuf_bytes,
			  strerror(-err));
		return err;
	}
	/* a map cannot have 0 entries: 1 when nothing is mirrored (the filter is not loaded) */
	bpf_program__set_autoload(c->skel->progs.mirror_rx, cfg->rx_slots > 0);
	bpf_map__set_max_entries(c->skel->maps.rx_slots, cfg->rx_slots ? cfg->rx_slots : 1);
	bpf_map__set_max_entries(c->skel->maps.rx_times, cfg->rx_slots ? cfg->rx_slots : 1);
	if (!cfg->tls) {
		struct bpf_program *prog;

		bpf_object__for_each_program(
		    prog, c->skel->obj) if (!strncmp(bpf_program__name(prog), "tls_", 4))
		    bpf_program__set_autoload(prog, false);
		bpf_map__set_max_entries(c->skel->maps.tls_backends, 1);
	}
	err = capture_bpf__load(c->skel);
	if (err) {
		if (err == -EPERM || err == -EACCES)
			set_error(error, err,
				  "permission denied loading the BPF program: run as root or "
				  "with CAP_BPF, CAP_NET_ADMIN and CAP_PERFMON");
		else
			set_error(error, err,
				  "cannot load the BPF program: %s (run with --verbose for "
				  "libbpf's log)",
				  strerror(-err));
		return err;
	}
	return 0;
}

/* Maps the receive times and fills the free-slot stack (nothing when slots is 0). */
static int rx_open(struct capture *c, uint32_t slots, struct capture_error *error)
{
	long page = sysconf(_SC_PAGESIZE);
	void *m;
	uint32_t i;

	if (!slots)
		return 0;
	c->rx_free = calloc(slots, sizeof(*c->rx_free));
	c->rx_cookie = calloc(slots, sizeof(*c->rx_cookie));
	if (!c->rx_free || !c->rx_cookie) {
		set_error(error, -ENOMEM, "out of memory");
		return -ENOMEM;
	}
	c->rx_map_bytes =
	    ((size_t)slots * sizeof(uint64_t) + (size_t)page - 1) / (size_t)page * (size_t)page;
	m = mmap(NULL, c->rx_map_bytes, PROT_READ, MAP_SHARED, bpf_map__fd(c->skel->maps.rx_times),
		 0);
	if (m == MAP_FAILED) {
		int err = -errno;

		set_error(error, err, "cannot map the mirror receive times: %s", strerror(-err));
		return err;
	}
	c->rx_times = m;
	for (i = 0; i < slots; i++)
		c->rx_free[i] = slots - 1 - i;
	c->rx_slots = c->rx_nfree = slots;
	return 0;
}

int capture_rx_attach(struct capture *c, int fd)
{
	int prog, err;
	uint64_t cookie;
	socklen_t len = sizeof(cookie);
	uint32_t slot;

	if (!c || !c->rx_times)
		return -ENOTSUP;
	if (!c->rx_nfree)
		return -ENOSPC;
	if (getsockopt(fd, SOL_SOCKET, SO_COOKIE, &cookie, &len))
		return -errno;
	slot = c->rx_free[c->rx_nfree - 1];
	if (bpf_map_update_elem(bpf_map__fd(c->skel->maps.rx_slots), &cookie, &slot, BPF_ANY))
		return -errno;
	prog = bpf_program__fd(c->skel->progs.mirror_rx);
	if (setsockopt(fd, SOL_SOCKET, SO_ATTACH_BPF, &prog, sizeof(prog))) {
		err = -errno;
		bpf_map_delete_elem(bpf_map__fd(c->skel->maps.rx_slots), &cookie);
		return err;
	}
	c->rx_nfree--;
	c->rx_cookie[slot] = cookie;
	return (int)slot;
}

void capture_rx_detach(struct capture *c, int slot)
{
	if (!c || slot < 0 || (uint32_t)slot >= c->rx_slots)
		return;
	bpf_map_delete_elem(bpf_map__fd(c->skel->maps.rx_slots), &c->rx_cookie[slot]);
	c->rx_free[c->rx_nfree++] = (uint32_t)slot;
}

bool capture_rx_read(const struct capture *c, int slot, struct capture_rx_slot *out)
{
	const volatile struct capture_rx_slot *r;
	int i;

	if (!c || slot < 0 || (uint32_t)slot >= c->rx_slots)
		return false;
	r = &c->rx_times[slot];
	/* ends before the times it counts (the filter stores them the other way round) */
	out->ends = __atomic_load_n(&r->ends, __ATOMIC_ACQUIRE);
	out->last = r->last;
	for (i = 0; i < CAPTURE_RX_ENDS; i++)
		out->end_ns[i] = r->end_ns[i];
	out->fin = r->fin;
	return true;
}

struct capture *capture_open(const struct capture_config *cfg, capture_record_fn fn, void *ctx,
			     struct capture_error *error)
{
	struct capture *c;
	int err, i;

	verbose_libbpf = cfg->verbose;
	libbpf_set_print(libbpf_print);
	if (!privileged()) {
		set_error(error, -EPERM,
			  "not privileged: run as root or with CAP_BPF, CAP_NET_ADMIN and "
			  "CAP_PERFMON");
		return NULL;
	}
	if (access(BTF_VMLINUX, R_OK)) {
		set_error(error, -ENOTSUP,
			  "the kernel has no BTF (%s is missing): pgshadow needs "
			  "CONFIG_DEBUG_INFO_BTF",
			  BTF_VMLINUX);
		return NULL;
	}
	c = calloc(1, sizeof(*c));
	if (!c) {
		set_error(error, -ENOMEM, "out of memory");
		return NULL;
	}
	pthread_mutex_init(&c->excl_lock, NULL);
	c->mode = cfg->mode;
	c->fn = fn;
	c->ctx = ctx;
	if (cfg->interfaces) {
		for (i = 0, err = 0; i < cfg->n_interfaces && !err; i++)
			err = add_interface(c, cfg->interfaces[i], error);
	} else {
		err = add_all_up(c, error);
	}
	if (err)
		goto cleanup;
	err = load(c, cfg, error);
	if (err)
		goto cleanup;
	for (i = 0; i < c->n_att && !err; i++)
		err = c->mode == CAPTURE_ATTACH_TCX ? attach_tcx(c, &c->att[i], error)
						    : attach_tc(c, &c->att[i], error);
	if (err)
		goto cleanup;
	c->tls = cfg->tls;
	if (c->tls) {
		c->tls_sock[0] = bpf_program__attach(c->skel->progs.tls_sock_recv);
		c->tls_sock[1] =
		    c->tls_sock[0] ? bpf_program__attach(c->skel->progs.tls_sock_send) : NULL;
		if (!c->tls_sock[1]) {
			err = -errno;
			set_error(
			    error, err,
			    "--tls on: cannot attach to the sock_recv_length/sock_send_length "
			    "tracepoints: %s (they need Linux 6.4 or later)",
			    strerror(-err));
			goto cleanup;
		}
	}
	err = rx_open(c, cfg->rx_slots, error);
	if (err)
		goto cleanup;
	c->rb = ring_buffer__new(bpf_map__fd(c->skel->maps.events), on_record, c, NULL);
	if (!c->rb) {
		err = -errno;
		set_error(error, err, "cannot open the ring buffer: %s", strerror(-err));
		goto cleanup;
	}
	return c;
cleanup:
	capture_close(c);
	return NULL;
}

int capture_poll(struct capture *c, int timeout_ms)
{
	int n = ring_buffer__poll(c->rb, timeout_ms);

	/* Records are submitted without a wakeup until the ring fills past wakeup_bytes,
	 * so epoll reports nothing for them: a poll that timed out must still consume. */
	if (n == 0)
		n = ring_buffer__consume(c->rb);
	return n;
}

int capture_poll_idle(struct capture *c, int timeout_ms)
{
	volatile __u32 *idle = &c->skel->bss->reader_idle;
	int n;

	*idle = 1;
	/* the program stores a record, then reads the flag; we store the flag, then read the
	 * ring: with a full barrier on each side one of us sees the other's store */
	atomic_thread_fence(memory_order_seq_cst);
	n = ring_buffer__consume(c->rb);
	if (n == 0)
		n = ring_buffer__poll(c->rb, timeout_ms);
	*idle = 0;
	if (n == 0)
		n = ring_buffer__consume(c->rb);
	return n;
}

int capture_detach_and_drain(struct capture *c)
{
	if (!c->detached)
		detach_all(c);
	return ring_buffer__consume(c->rb);
}

int capture_read_counters(struct capture *c, uint64_t *out)
{
	int ncpu = libbpf_num_possible_cpus();
	int fd = bpf_map__fd(c->skel->maps.counters);
	struct capture_counters *vals;
	uint32_t key = 0;
	int cpu, i, err = 0;

	if (ncpu <= 0)
		return ncpu ? ncpu : -EINVAL;
	vals = calloc(ncpu, sizeof(*vals));
	if (!vals)
		return -ENOMEM;
	memset(out, 0, CAPTURE_CNT_MAX * sizeof(*out));
	if (bpf_map_lookup_elem(fd, &key, vals))
		err = -errno;
	for (cpu = 0; !err && cpu < ncpu; cpu++)
		for (i = 0; i < CAPTURE_CNT_MAX; i++)
			out[i] += vals[cpu].c[i];
	out[CAPTURE_USER_MALFORMED] = c->malformed;
	out[CAPTURE_USER_EXCLUDED] = c->user_excluded;
	free(vals);
	return err;
}

int capture_exclude_add(struct capture *c, const struct capture_tuple *t)
{
	uint8_t one = 1;
	int i, err = 0;

	if (bpf_map_update_elem(bpf_map__fd(c->skel->maps.exclude), t, &one, BPF_ANY))
		return -errno;
	c->skel->bss->exclude_active = 1;
	pthread_mutex_lock(&c->excl_lock);
	for (i = 0; i < USER_EXCLUDE_SLOTS; i++)
		if (!atomic_load(&c->excl[i].used))
			break;
	if (i < USER_EXCLUDE_SLOTS) {
		c->excl[i].t = *t;
		atomic_store_explicit(&c->excl[i].used, 1, memory_order_release);
		if (i >= atomic_load(&c->n_excl))
			atomic_store_explicit(&c->n_excl, i + 1, memory_order_release);
	} else {
		err = -ENOSPC; /* the kernel map still excludes it; only the SYN race remains */
	}
	pthread_mutex_unlock(&c->excl_lock);
	return err;
}

int capture_exclude_remove(struct capture *c, const struct capture_tuple *t)
{
	int i;

	bpf_map_delete_elem(bpf_map__fd(c->skel->maps.exclude), t);
	pthread_mutex_lock(&c->excl_lock);
	for (i = 0; i < USER_EXCLUDE_SLOTS; i++)
		if (atomic_load(&c->excl[i].used) && !memcmp(&c->excl[i].t, t, sizeof(*t)))
			atomic_store_explicit(&c->excl[i].used, 0, memory_order_release);
	pthread_mutex_unlock(&c->excl_lock);
	return 0;
}

static int tls_attach_lib(struct capture *c, struct tls_lib *lib, const char *path, char *msg,
			  size_t cap)
{
	static const char *const funcs[TLS_FUNCS] = {"SSL_read", "SSL_read_ex", "SSL_write",
						     "SSL_write_ex"};
	struct bpf_program *progs[TLS_FUNCS * 2] = {
	    c->skel->progs.tls_read_enter,     c->skel->progs.tls_read_exit,
	    c->skel->progs.tls_read_ex_enter,  c->skel->progs.tls_read_ex_exit,
	    c->skel->progs.tls_write_enter,    c->skel->progs.tls_write_exit,
	    c->skel->progs.tls_write_ex_enter, c->skel->progs.tls_write_ex_exit,
	};
	int i, err;

	for (i = 0; i < TLS_FUNCS * 2; i++) {
		LIBBPF_OPTS(bpf_uprobe_opts, opts, .func_name = funcs[i / 2], .retprobe = i & 1);

		lib->links[i] = bpf_program__attach_uprobe_opts(progs[i], -1, path, 0, &opts);
		if (lib->links[i])
			continue;
		err = -errno;
		if (i / 2 == 1 || i / 2 == 3)
			continue; /* the _ex variants are OpenSSL 1.1.1 and later */
		snprintf(msg, cap, "cannot attach a uprobe to %s in %s: %s", funcs[i / 2], path,
			 strerror(-err));
		for (i = 0; i < TLS_FUNCS * 2; i++) {
			bpf_link__destroy(lib->links[i]);
			lib->links[i] = NULL;
		}
		return err;
	}
	return 0;
}

int capture_tls_add(struct capture *c, int postmaster, const char *path, char *msg, size_t cap)
{
	uint32_t key = (uint32_t)postmaster;
	uint8_t one = 1;
	struct stat st;
	int i, err;

	if (!c->tls) {
		snprintf(msg, cap, "the TLS probes are not loaded");
		return -EINVAL;
	}
	if (stat(path, &st)) {
		err = -errno;
		snprintf(msg, cap, "cannot stat %s: %s", path, strerror(-err));
		return err;
	}
	for (i = 0; i < c->n_tls_libs; i++)
		if (c->tls_libs[i].dev == st.st_dev && c->tls_libs[i].ino == st.st_ino)
			break;
	if (i == c->n_tls_libs) {
		if (i == CAPTURE_TLS_MAX_SERVERS) {
			snprintf(msg, cap, "%d libraries are probed already", i);
			return -ENOSPC;
		}
		err = tls_attach_lib(c, &c->tls_libs[i], path, msg, cap);
		if (err)
			return err;
		c->tls_libs[i].dev = st.st_dev;
		c->tls_libs[i].ino = st.st_ino;
		c->n_tls_libs++;
	}
	if (bpf_map_update_elem(bpf_map__fd(c->skel->maps.tls_servers), &key, &one, BPF_ANY)) {
		err = -errno;
		snprintf(msg, cap, "cannot add postmaster %d to the probes' map: %s", postmaster,
			 strerror(-err));
		return err;
	}
	return 0;
}

void capture_tls_remove(struct capture *c, int postmaster)
{
	uint32_t key = (uint32_t)postmaster;

	if (c->tls)
		bpf_map_delete_elem(bpf_map__fd(c->skel->maps.tls_servers), &key);
}

const char *capture_interfaces(const struct capture *c)
{
	return c->ifnames;
}

void capture_close(struct capture *c)
{
	if (!c)
		return;
	if (!c->detached)
		detach_all(c);
	ring_buffer__free(c->rb);
	if (c->rx_times)
		munmap((void *)c->rx_times, c->rx_map_bytes);
	free(c->rx_free);
	free(c->rx_cookie);
	capture_bpf__destroy(c->skel);
	pthread_mutex_destroy(&c->excl_lock);
	free(c);
}
