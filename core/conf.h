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
 *
 *   const struct conf_domain  *conf_domain_find(const struct conf *c,
 *                                               const char *domain);
 *   const struct conf_binding *conf_binding_find(const struct conf *c,
 *                                                const char *name);
 *   const struct conf_binding *conf_binding_default(const struct conf *c);
 *   const struct conf_gateway *conf_binding_gateway(
 *       const struct conf_binding *b, const struct conf_domain *d);
 *   unsigned conf_binding_max_outbound_connections(
 *       const struct conf_binding *b, const struct conf_domain *d);
 *   const struct conf_throttle *conf_binding_throttle(
 *       const struct conf_binding *b, const struct conf_domain *d);
 *   int  conf_redis_uri_parse(const char *s, struct conf_redis_uri *out);
 *   void conf_start_changes(const struct conf *running,
 *                           const struct conf *file,
 *                           void (*fn)(const char *key, void *arg),
 *                           void *arg);
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
 *
 *   Delivery options (Gateway, Outbound_SMTP_Port, Retry_Interval,
 *   Max_Retries, Message_Expiration, Max_Outbound_Connections,
 *   Outbound_Throttle_Messages) are set globally and overridden per
 *   destination in Domain "name" { } scopes; the last three also in
 *   Binding "name" { } scopes. Inheritance is resolved at load time:
 *   conf_domain_find() returns the Domain scope of a destination domain
 *   (case-insensitive, O(log n)) with every option it does not set copied
 *   from the global scope, or conf->domain_default (the global values)
 *   when the domain has no scope. conf_binding_find() returns the Binding
 *   named name (case-sensitive, as in Momentum), or NULL; the binding
 *   "default" always exists (conf_binding_default()): declared in the
 *   file or built in, with no Bind_Address and EHLO_Hostname = Hostname.
 *   As in Momentum, a Binding's value beats a Domain's, which beats the
 *   global one: conf_binding_gateway(), conf_binding_max_outbound_
 *   connections() and conf_binding_throttle() return the binding's value
 *   where the binding sets the option, else the domain's.
 *
 *   Datasource "name" { uri = ( "redis://..." ) } scopes (struct
 *   conf_datasource, in file order) describe the Redis servers policy
 *   reads; conf_redis_uri_parse() reads one uri, accepting only address
 *   literals so that no shard ever resolves a name (docs/redis.md).
 *
 *   A reload applies the scriptlet scope only. conf_start_changes() calls
 *   fn once for each other top-level statement whose text (as parsed:
 *   names, instances and values, comments and spacing aside) differs
 *   between the running configuration and a newly loaded one, or that
 *   only one of them has; key is its name, with the instance of a scope
 *   ("Domain \"example.com\""). The daemon logs them: they take effect at
 *   the next start.
 * OWNERSHIP
 *   A struct conf is one configuration generation: immutable once loaded,
 *   owned by the main thread, read by every shard, freed by conf_free() when
 *   no shard uses it any more. Pointers returned by the lookups point
 *   into it and live as long as it does.
 * THREADS
 *   After conf_load() returns, every function here only reads: any shard
 *   may call the lookups at once without locks.
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

/* One Control_Listener Listen "PATH" { }: a unix socket for ringctl. */
struct conf_control_listen {
    char *path;                  /* resolved against Run_Directory */
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

/* Gateway = "HOST[:PORT]": deliver to this smarthost instead of the MXs. */
struct conf_gateway {
    char *text;                  /* as written; NULL: no gateway, use MX */
    char *host;                  /* host name or address, no brackets */
    unsigned port;               /* 1..65535; 25 when not written */
    struct sockaddr_storage addr;/* host as an address literal, with port */
    socklen_t addr_len;          /* 0 when host is a name (resolve it) */
};

/* Outbound_Throttle_Messages = "N" (per second) or "N/SECONDS". */
struct conf_throttle {
    unsigned count;              /* messages per period; 0: no limit */
    unsigned period_ms;          /* 1000 for a plain N; 0 when no limit */
    unsigned bucket;             /* token bucket index, see below */
};

/*
 * As in Momentum, throttles are shared "by reference": every scope that
 * does not write its own Outbound_Throttle_Messages feeds the bucket of
 * the scope it inherits from. bucket 0 is the global scope's (one limit
 * for all domains without their own); each Domain and Binding scope that
 * writes the option has its own bucket, numbered below
 * conf->throttle_bucket_count.
 */

/* conf_domain.set: the options a scope wrote itself (not inherited). */
enum conf_opt {
    CONF_OPT_GATEWAY = 1u << 0,
    CONF_OPT_OUTBOUND_SMTP_PORT = 1u << 1,
    CONF_OPT_RETRY_INTERVAL = 1u << 2,
    CONF_OPT_MAX_RETRIES = 1u << 3,
    CONF_OPT_MESSAGE_EXPIRATION = 1u << 4,
    CONF_OPT_MAX_OUTBOUND_CONNECTIONS = 1u << 5,
    CONF_OPT_OUTBOUND_THROTTLE_MESSAGES = 1u << 6,
    CONF_OPT_MAX_RETRY_INTERVAL = 1u << 7,
};

/* Effective delivery options for one destination domain. */
struct conf_domain {
    char *name;                  /* lower case; NULL for domain_default */
    const char *file;            /* struct conf's path */
    int line;                    /* of the Domain scope; 0 for default */
    unsigned set;                /* CONF_OPT_* written in this scope */

    struct conf_gateway gateway; /* Gateway, default none (MX) */
    unsigned outbound_smtp_port; /* Outbound_SMTP_Port, 25, 1..65535 */
    unsigned retry_interval_ms;  /* Retry_Interval, 20m, 1s..1d */
    unsigned max_retry_interval_ms;  /* Max_Retry_Interval, 12h, 1s..30d */
    unsigned max_retries;        /* Max_Retries, 0 (auto): only expiry */
    unsigned message_expiration_ms;  /* Message_Expiration, 1d, 1s..30d */
    unsigned max_outbound_connections;  /* per domain, 32, 1..100000 */
    struct conf_throttle outbound_throttle_messages;  /* default none */
};

/* One Binding "name" { }: an egress source chosen by msg:binding(). */
struct conf_binding {
    char *name;                  /* case-sensitive */
    const char *file;            /* struct conf's path */
    int line;                    /* 0 for the built-in "default" */
    struct sockaddr_storage bind_address;   /* Bind_Address, port 0 */
    socklen_t bind_address_len;  /* 0: none, the kernel chooses */
    char *bind_address_text;     /* as written, or NULL */
    char *ehlo_hostname;         /* EHLO_Hostname, default Hostname */

    /* Gateway, Max_Outbound_Connections and Outbound_Throttle_Messages
     * where overrides.set says the binding wrote them; read them through
     * conf_binding_gateway() and friends. Other fields are unused. */
    struct conf_domain overrides;
};

/* One Nameservers entry: IPV4[:PORT], [IPV6][:PORT] or a bare IPv6. */
struct conf_nameserver {
    struct sockaddr_storage addr;/* with port, default 53 */
    socklen_t addr_len;
    char *text;                  /* as written */
};

/* One script "name" { source = "dir.file" } of the scriptlet scope. */
struct conf_script {
    char *name;                  /* the module name it must register */
    char *source;                /* as written: dir.file or dir/file */
    const char *file;            /* struct conf's path */
    int line;
};

/*
 * scriptlet "scriptlet" { } (Momentum's module; one instance name only).
 * Durations in ms. The last four are ringmail's own: see
 * docs/lua-policy.md.
 */
struct conf_scriptlet {
    char *instance;              /* NULL: no scriptlet scope, no policy */
    const char *file;
    int line;
    unsigned script_ttl_ms;      /* script_ttl, 300s */
    unsigned gc_pause;           /* gc_pause, 200 */
    unsigned gc_stepmul;         /* gc_stepmul, 200 */
    unsigned max_spare_per_master;   /* max_spare_per_master, 5000 */
    unsigned reap_interval_ms;   /* reap_interval, 120s */
    int always_gc;               /* accepted, ignored */
    unsigned instruction_budget; /* per callout, 1000000 VM instructions */
    uint64_t memory_limit;       /* per state, 64M */
    int jit;                     /* JIT compiler on (unguarded), false */
    unsigned again_delay_ms;     /* VALIDATE_AGAIN re-run delay, 10ms */
    char **search_path;          /* search_path, default: the config's
                                  * directory; then ringmail's lua/ */
    size_t search_path_count;
    struct conf_script *scripts; /* in file order */
    size_t script_count;
};

/* One uri of a Datasource: redis://[:PASSWORD@]HOST[:PORT][/DB]. */
struct conf_redis_uri {
    char *text;                  /* as written, password masked, for logs */
    struct sockaddr_storage addr;/* HOST as an address literal, with PORT
                                  * (default 6379); never a name to resolve */
    socklen_t addr_len;
    unsigned db;                 /* /DB, default 0: SELECTed when not 0 */
    char *password;              /* from the uri, or NULL */
};

/*
 * Datasource "name" { uri = ( "redis://127.0.0.1:6379/0" ) ... }: a Redis
 * server that msys.db and msys.redis reach. Each shard opens its own
 * connections. Several uris: tried in turn when a connect fails.
 * Durations in ms. See docs/redis.md.
 */
struct conf_datasource {
    char *name;                  /* case-sensitive, as msys.db names it */
    const char *file;            /* struct conf's path */
    int line;
    struct conf_redis_uri *uris; /* uri, at least one */
    size_t uri_count;
    unsigned cache_life_ms;      /* cache_life, 0: no caching */
    unsigned cache_size;         /* cache_size, 1000 results per shard */
    unsigned connect_timeout_ms; /* connect_timeout, 200ms */
    unsigned timeout_ms;         /* timeout: per command, 200ms */
    unsigned connections;        /* connections per shard, 1 */
    unsigned max_pending;        /* commands in flight per connection,
                                  * 1000 */
    char *password;              /* password: AUTH, overrides the uri's */
    unsigned reconnect_min_ms;   /* reconnect_backoff_min, 100ms */
    unsigned reconnect_max_ms;   /* reconnect_backoff_max, 5s */
    unsigned breaker_failures;   /* breaker_failures: consecutive, 5 */
    unsigned breaker_probe_ms;   /* breaker_probe_interval, 1s */
};

struct conf {
    char *path;                  /* the file loaded */
    char *dir;                   /* its directory: base of relative paths */

    /* global */
    char *spool_base;            /* Spool_Base, default "spool" */
    unsigned shards;             /* Shards: 0 means auto (usable CPUs) */
    int pin_shards;              /* Pin_Shards: shard i on the i-th usable
                                  * CPU (modulo their number) */
    char *hostname;              /* Hostname, default gethostname() */
    char *paniclog;              /* Paniclog, default "log/paniclog" */
    char *delivery_log;          /* Delivery_Log, default "log/delivery.log" */
    char *run_directory;         /* Run_Directory, default: Spool_Base's
                                  * parent; base of Control_Listener paths */
    char *user;                  /* User: run as this user once sockets are
                                  * bound (started as root); NULL: stay */
    struct conf_control_listen *control_listens;  /* Control_Listener */
    size_t control_listen_count;
    struct conf_listen *metrics_listens;          /* Metrics_Listener */
    size_t metrics_listen_count;

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

    /* outbound, global scope */
    char *mailer_daemon;         /* MailerDaemon: From of bounces, default
                                  * "MAILER-DAEMON@" Hostname */
    struct conf_nameserver *nameservers;    /* Nameservers; none: use
                                             * /etc/resolv.conf */
    size_t nameserver_count;

    /* Delivery options: the global values, for domains without a scope. */
    struct conf_domain domain_default;
    struct conf_domain *domains; /* Domain scopes, sorted by name */
    size_t domain_count;
    struct conf_binding *bindings;   /* Binding scopes and "default",
                                      * sorted by name */
    size_t binding_count;
    const struct conf_binding *binding_default;  /* never NULL */
    unsigned throttle_bucket_count;  /* >= 1: see struct conf_throttle */

    struct conf_scriptlet scriptlet; /* Lua policy */
    struct conf_datasource *datasources;    /* Datasource scopes, in file
                                             * order */
    size_t datasource_count;

    /* top-level statements other than scriptlet, sorted: for reloads */
    struct conf_stmt *start_stmts;
    size_t start_stmt_count;
};

/* A top-level statement applied at start only: its name and its text. */
struct conf_stmt {
    char *key;                   /* Name, or Name "instance" for a scope */
    char *text;                  /* canonical: see conf_start_changes() */
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
void conf_start_changes(const struct conf *running, const struct conf *file,
                        void (*fn)(const char *key, void *arg), void *arg);
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

const struct conf_domain *conf_domain_find(const struct conf *c,
                                           const char *domain);
const struct conf_binding *conf_binding_find(const struct conf *c,
                                             const char *name);
const struct conf_binding *conf_binding_default(const struct conf *c);
const struct conf_gateway *conf_binding_gateway(const struct conf_binding *b,
                                                const struct conf_domain *d);
unsigned conf_binding_max_outbound_connections(const struct conf_binding *b,
                                               const struct conf_domain *d);
const struct conf_throttle *conf_binding_throttle(
    const struct conf_binding *b, const struct conf_domain *d);
int conf_redis_uri_parse(const char *s, struct conf_redis_uri *out);
void conf_redis_uri_fini(struct conf_redis_uri *u);

#endif
