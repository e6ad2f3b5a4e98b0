/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * capture: loads bpf/capture.bpf.c, attaches it to interfaces (tcx, or tc clsact as a
 * fallback), polls its ring buffer and reads its counters. A shell: it touches the
 * kernel; everything it delivers goes to a callback on the polling thread.
 */
#ifndef PGSHADOW_CAPTURE_H
#define PGSHADOW_CAPTURE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "capture_event.h"
#include "config.h" /* enum capture_attach_mode, CAPTURE_MAX_INTERFACES */

struct capture_config {
	uint16_t port;		       /* server port, 1..65535 */
	const char *const *interfaces; /* NULL: every interface that is up */
	int n_interfaces;
	enum capture_attach_mode mode;
	uint32_t ringbuf_bytes; /* power of two, multiple of the page size */
	uint32_t wakeup_bytes;	/* ring fill that forces a reader wakeup */
	int verbose;		/* pass libbpf's own messages to stderr */
	bool tls;		/* load the TLS probes (capture_tls_add attaches them) */
	uint32_t rx_slots;	/* mirror connections capture_rx_attach can time (0: none) */
};

/* Called for every valid record: ev is followed by ev->chunk_len bytes at data. */
typedef void (*capture_record_fn)(void *ctx, const struct capture_event *ev, const uint8_t *data);

/* What went wrong at capture_open, so main can print one line and pick an exit code. */
struct capture_error {
	int err;       /* negative errno */
	char msg[256]; /* one line, no trailing newline */
};

/*
 * Loads, configures and attaches the BPF program. Returns the instance or NULL with
 * *error filled; nothing stays attached on failure. Free with capture_close().
 */
struct capture *capture_open(const struct capture_config *cfg, capture_record_fn fn, void *ctx,
			     struct capture_error *error);

/* Waits up to timeout_ms for records and delivers them. Returns the number of records
 * delivered, or a negative errno (-EINTR when a signal arrived). */
int capture_poll(struct capture *c, int timeout_ms);

/*
 * Sleeps up to timeout_ms with the BPF program told to wake the reader on the next record
 * (it otherwise submits without a wakeup and relies on capture_poll's short timeout):
 * for when nothing has come for a while. Records that came before the program saw the
 * flag are delivered first, without sleeping. Same return as capture_poll.
 */
int capture_poll_idle(struct capture *c, int timeout_ms);

/* Detaches from every interface (no new records after it returns), then delivers every
 * record still in the ring buffer. Returns records delivered or a negative errno. */
int capture_detach_and_drain(struct capture *c);

/* Sums the per-CPU kernel counters into out[0 .. CAPTURE_CNT_MAX); then the user side's
 * own: out[CAPTURE_USER_MALFORMED] records rejected as malformed and
 * out[CAPTURE_USER_EXCLUDED] records of excluded tuples that reached user space — so out
 * must have CAPTURE_COUNTERS slots. Returns 0 or a negative errno. Thread-safe. */
#define CAPTURE_USER_MALFORMED CAPTURE_CNT_MAX
#define CAPTURE_USER_EXCLUDED  (CAPTURE_CNT_MAX + 1)
#define CAPTURE_COUNTERS       (CAPTURE_CNT_MAX + 2)
int capture_read_counters(struct capture *c, uint64_t *out);

/* Excludes one direction of one of the agent's own connections: in the kernel map, and
 * in user space (records already in the ring buffer, such as its SYN, are dropped too).
 * Any thread. 0 or -errno (-ENOSPC: user-space slots full, the kernel map still has it). */
int capture_exclude_add(struct capture *c, const struct capture_tuple *t);
int capture_exclude_remove(struct capture *c, const struct capture_tuple *t);

/*
 * --tls on (cfg.tls): reports the plaintext of the TLS sessions of postmaster's backends
 * (CAPTURE_ORIGIN_TLS records), through uprobes on SSL_read/SSL_write (and the _ex
 * variants when the library has them) of the libssl at path, attached once per file and
 * system-wide (a probe on a shared library traps in every process that maps it). path may
 * go through /proc/PID/root for a server in a container. Returns 0, or a negative errno with
 * msg (cap bytes) saying what failed. Thread of the caller of capture_open.
 */
#define CAPTURE_TLS_MAX_SERVERS 16
int capture_tls_add(struct capture *c, int postmaster, const char *path, char *msg, size_t cap);

/* Stops reporting postmaster's backends (it exited); its library stays probed. */
void capture_tls_remove(struct capture *c, int postmaster);

/*
 * Kernel receive times of the agent's own mirror connections, for the replay thread
 * (only it calls these). capture_rx_attach attaches the mirror_rx socket filter to fd, a
 * connected TCP socket, and returns its slot (>= 0), or -ENOTSUP (no slots configured,
 * or c is NULL), -ENOSPC (every slot in use) or another negative errno.
 * capture_rx_read copies what the filter recorded for the slot (struct capture_rx_slot:
 * the last data segment's time, the answers' end times) from shared memory, without a
 * system call; false for no slot. capture_rx_detach frees the slot: call it before
 * closing the socket.
 */
int capture_rx_attach(struct capture *c, int fd);
bool capture_rx_read(const struct capture *c, int slot, struct capture_rx_slot *out);
void capture_rx_detach(struct capture *c, int slot);

/* A comma-separated list of the attached interfaces, e.g. "lo,eth0". */
const char *capture_interfaces(const struct capture *c);

/* Detaches (if still attached) and frees. NULL-safe. */
void capture_close(struct capture *c);

#endif /* PGSHADOW_CAPTURE_H */
