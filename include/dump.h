/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * dump: the debugging view of reassembly (--dump-streams DIR). A tcpstream consumer
 * that writes each half-stream to DIR/<client>-<server>.c2s and .s2c, and the gaps of
 * a flow, if any, to DIR/<client>-<server>.gaps ("c2s offset=N missing=M|unknown").
 * An endpoint is "IP:port" (IPv4) or "[IP]:port" (IPv6); a reused tuple gets ".2",
 * ".3" … before the extension. Runs on the capture thread.
 */
#ifndef PGSHADOW_DUMP_H
#define PGSHADOW_DUMP_H

#include <stddef.h>
#include <stdint.h>

#include "tcpstream.h"

/* Returns a dumper writing into dir (which must exist), or NULL with errno set. */
struct dump *dump_open(const char *dir);

/* Per-flow calls, made by the owner of the tcpstream handler. dump_flow_open returns
 * NULL when the files cannot be created (counted in dump_errors); every other call
 * accepts NULL and then does nothing. dump_flow_close frees the flow's state. */
struct dump_flow *dump_flow_open(struct dump *d, const struct tcpstream_flow *flow);
void dump_flow_data(struct dump *d, struct dump_flow *f, enum tcpstream_dir dir,
		    const uint8_t *data, size_t len);
void dump_flow_gap(struct dump *d, struct dump_flow *f, enum tcpstream_dir dir, uint64_t missing);
void dump_flow_close(struct dump *d, struct dump_flow *f);

/* Files that could not be created or written (each logged once to stderr). */
uint64_t dump_errors(const struct dump *d);

/* Frees the dumper; flows must have been closed (tcpstream_close_all) first. NULL-safe. */
void dump_close(struct dump *d);

/* Formats an endpoint as "IP:port" or "[IP]:port" into buf (at least 64 bytes). */
void dump_format_endpoint(const struct tcpstream_addr *a, char *buf, size_t len);

#endif /* PGSHADOW_DUMP_H */
