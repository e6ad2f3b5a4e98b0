/* SPDX-License-Identifier: BSD-2-Clause */
/*
 * procnet: reading what /proc says about a server, for the TLS probes (--tls on): which
 * sockets listen on a port (/proc/net/tcp, tcp6), which process holds one (the
 * "socket:[inode]" links of /proc/PID/fd), its parent (/proc/PID/stat) and which libssl it
 * maps (/proc/PID/maps).
 *
 * Pure: every function parses text handed to it; user/tlsprobe.c reads the files.
 */
#ifndef PGSHADOW_PROCNET_H
#define PGSHADOW_PROCNET_H

#include <stddef.h>
#include <stdint.h>

/*
 * The inodes of the sockets listening on port in a /proc/net/tcp or tcp6 text (len
 * bytes, not NUL-terminated): appended to out[*n .. cap) without duplicates. Returns the
 * number found in this text (also those that did not fit), or -1 when the text is not such
 * a table (its header line differs).
 */
int procnet_listen_inodes(const char *text, size_t len, uint16_t port, uint64_t *out, size_t *n,
			  size_t cap);

/* The inode of a "socket:[N]" link target; 0 when link is no socket. */
uint64_t procnet_socket_inode(const char *link);

/* The parent pid from a /proc/PID/stat text ("pid (comm) state ppid ..."; comm may hold
 * spaces and parentheses); -1 when malformed. */
long procnet_stat_ppid(const char *text, size_t len);

/*
 * The path of the first mapping of a shared library named libssl.so* in a /proc/PID/maps
 * text, copied into path (NUL-terminated, cap bytes). Returns its length, 0 when no libssl
 * is mapped, -1 when the path does not fit or the library was deleted (upgraded under the
 * running process: " (deleted)").
 */
int procnet_maps_libssl(const char *text, size_t len, char *path, size_t cap);

#endif /* PGSHADOW_PROCNET_H */
