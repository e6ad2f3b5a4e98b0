// SPDX-License-Identifier: BSD-2-Clause
/*
 * fuzz_config — the configuration file parser (libinih, every key's value checks, the
 * [databases] section) on any file text, through a memfd named by /proc/self/fd/N.
 */
#define _GNU_SOURCE /* memfd_create */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct config_cmdline cl;
	struct pgshadow_config cfg;
	char path[64], err[1024];
	int fd = memfd_create("pgshadow.ini", 0);

	if (fd < 0)
		return 0;
	if (write(fd, data, size) != (ssize_t)size) {
		close(fd);
		return 0;
	}
	snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
	memset(&cl, 0, sizeof(cl));
	cl.action = CONFIG_PRINT_CONFIG;
	cl.config_file = path;
	if (!config_load(&cfg, &cl, err, sizeof(err)))
		config_free(&cfg);
	close(fd);
	return 0;
}
