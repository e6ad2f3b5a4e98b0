// SPDX-License-Identifier: BSD-2-Clause
/*
 * redact.h — libpq's messages about a conninfo, without its secret. libpq quotes the token
 * it could not parse: of a URI whose password is badly percent-encoded, that token is the
 * password ("invalid percent-encoded token: \"s3cr%zz\""). Pure.
 */
#ifndef PGSHADOW_REDACT_H
#define PGSHADOW_REDACT_H

#include <stddef.h>

/* Copies msg's first line into out (len bytes), every quoted token ("...") that overlaps
 * the conninfo's secrets — a URI's userinfo after the user name, any password= value —
 * replaced by "(withheld)", and any plain occurrence of a secret too. */
void redact_libpq_message(const char *conninfo, const char *msg, char *out, size_t len);

#endif /* PGSHADOW_REDACT_H */
