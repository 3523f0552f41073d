/*
 * conf - ringmail's configuration: ecelerity.conf syntax to struct conf
 *
 * SYNOPSIS
 *   struct conf *conf_load(const char *path, struct conf_errors *errs);
 *   void conf_free(struct conf *c);
 *   void conf_errors_print(const struct conf_errors *errs, FILE *fp);
 *   void conf_errors_fini(struct conf_errors *errs);
 *   int  conf_cidr_match(const struct conf_cidr *list, size_t n,
 *                        const struct sockaddr *sa);
 *   void conf_errors_add(struct conf_errors *errs, const char *file,
 *                        int line, const char *fmt, ...);
 *   int  conf_size_from_str(const char *s, uint64_t *bytes);
 *   int  conf_duration_from_str(const char *s, uint64_t *ms);
 *   int  conf_bool_from_str(const char *s, int *on);
 * DESCRIPTION
 *   conf_load() parses the file in two steps: conf_parse.h turns the text
 *   into a tree of scopes and options (syntax errors carry file:line), then
 *   this module checks that tree against the directive table (unknown keys,
 *   wrong types, out-of-range values: each an error with file:line) and
 *   fills a struct conf with defaults for what is absent. Every error is
 *   collected; conf_load() returns NULL when there was at least one.
 *
 *   Keys are case-insensitive. Relative paths resolve against the directory
 *   of the configuration file. Sizes take K, M or G; durations are seconds
 *   unless they carry ms, s, m, h or d.
 * OWNERSHIP
 *   A struct conf is one configuration generation: immutable once loaded,
 *   owned by the main thread, read by every shard, freed by conf_free() when
 *   no shard uses it any more.
 * SEE ALSO
 *   conf_parse.h, docs/configuration.md, conf/ringmail.conf
 */
#ifndef RINGMAIL_CONF_H
#define RINGMAIL_CONF_H

#include <netinet/in.h>
#include <stdint.h>
#include <stdio.h>
#include <sys/socket.h>

/* One "Listen" scope: an address to bind, e.g. 127.0.0.1:2525 or [::1]:25. */
struct conf_listen {
    struct sockaddr_storage addr;
    socklen_t addr_len;
    char *text;                  /* as written, for logs */
    const char *file;            /* struct conf's path */
    int line;
};

/* One Relay_Hosts entry: 127.0.0.0/8, ::1, 10.1.2.3 (a /32). */
struct conf_cidr {
    int family;                  /* AF_INET or AF_INET6 */
    uint8_t addr[16];            /* network byte order, masked */
    unsigned prefix_bits;
};

struct conf_esmtp_listener {
    char *name;                  /* ESMTP_Listener "name" { }, or NULL */
    struct conf_listen *listens;
    size_t listen_count;
    struct conf_cidr *relay_hosts;   /* default: 127.0.0.0/8 and ::1 */
    size_t relay_host_count;
};

struct conf {
    char *path;                  /* the file loaded */
    char *dir;                   /* its directory: base of relative paths */

    /* global */
    char *spool_base;            /* Spool_Base, default "spool" */
    unsigned shards;             /* Shards: 0 means auto (online CPUs) */
    char *hostname;              /* Hostname, default gethostname() */
    char *paniclog;              /* Paniclog, default "log/paniclog" */
    char *delivery_log;          /* Delivery_Log, default "log/delivery.log" */

    /* inbound limits, global scope */
    uint64_t max_message_size;   /* Max_Message_Size, default 20M, 1K..2G */
    unsigned max_recipients;     /* Max_Recipients_Per_Message, 100, 1..100000 */
    unsigned max_connections;    /* Max_Connections (per daemon), 10000 */
    unsigned max_connections_per_ip;  /* Max_Connections_Per_IP, 0 = none */
    unsigned idle_timeout_ms;    /* Idle_Timeout: command wait, default 300s */
    unsigned data_timeout_ms;    /* Data_Timeout: between DATA reads, 180s */
    unsigned shutdown_timeout_ms;/* Shutdown_Timeout: drain budget, 30s */
    uint64_t spool_segment_size; /* Spool_Segment_Size, 64M, 1M..1G */

    struct conf_esmtp_listener *listeners;  /* ESMTP_Listener scopes */
    size_t listener_count;
};

struct conf_error {
    char *file;
    int line;
    char *message;
};

struct conf_errors {
    struct conf_error *v;
    size_t count;
};

#define CONF_ERRORS_MAX 100

struct conf *conf_load(const char *path, struct conf_errors *errs);
void conf_free(struct conf *c);
void conf_errors_print(const struct conf_errors *errs, FILE *fp);
void conf_errors_fini(struct conf_errors *errs);
int conf_cidr_match(const struct conf_cidr *list, size_t n,
                    const struct sockaddr *sa);
void conf_errors_add(struct conf_errors *errs, const char *file, int line,
                     const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
int conf_size_from_str(const char *s, uint64_t *bytes);
int conf_duration_from_str(const char *s, uint64_t *ms);
int conf_bool_from_str(const char *s, int *on);

#endif
