/*
 * ringaddr - "host:port" text to a socket address and back (bench tools)
 *
 * SYNOPSIS
 *   int  ringaddr_parse(const char *text, struct sockaddr_storage *ss,
 *                       socklen_t *len);
 *   void ringaddr_format(const struct sockaddr *sa, char *buf, size_t size);
 * DESCRIPTION
 *   ringaddr_parse() accepts "127.0.0.1:25", "[::1]:25", "localhost:25"
 *   and a bare IPv6 address whose last colon starts the port ("::1:25").
 *   A name is resolved with getaddrinfo() once, at startup: the tools never
 *   resolve inside their loops. The first address returned wins.
 *
 *   ringaddr_format() writes "1.2.3.4:25" or "[::1]:25" (truncated to
 *   size, always terminated); RINGADDR_TEXT_MAX bytes always suffice.
 * ERRORS
 *   ringaddr_parse() returns 0 or -EINVAL (no port, bad port, unknown
 *   host).
 */
#ifndef RINGMAIL_RINGADDR_H
#define RINGMAIL_RINGADDR_H

#include <stddef.h>
#include <sys/socket.h>

/* "[" + INET6_ADDRSTRLEN (46) + "]:" + 5 digits + NUL */
#define RINGADDR_TEXT_MAX 56

int ringaddr_parse(const char *text, struct sockaddr_storage *ss,
                   socklen_t *len);
void ringaddr_format(const struct sockaddr *sa, char *buf, size_t size);

#endif
