/*
 * conf - see conf.h
 *
 * conf_load() walks the tree from conf_parse.h against two tables, in the
 * manner of nginx's ngx_command_t:
 *
 *   conf_directives[]  one row per option: name, the scopes it may appear
 *                      in, a generic setter, where the value lands (offsetof
 *                      into the struct that the scope fills), its range and
 *                      its default written in config syntax.
 *   conf_scopes[]      one row per scope: name, the scopes it may appear
 *                      in, whether it takes an instance name, and enter /
 *                      leave callbacks; enter returns the struct its options
 *                      fill, or NULL to skip its body.
 *
 * Adding an option is one row in conf_directives[] (plus its field in
 * conf.h and its entry in docs/configuration.md). Adding a scope is one
 * CONF_SCOPE_* bit, one row in conf_scopes[] and its enter callback.
 *
 * Defaults are applied after a scope's body, for each of its options that
 * the file did not set, by running the option's setter on its default text,
 * so a default obeys the same range as a written value.
 *
 * Delivery options (rows with a CONF_OPT_* bit) land in a struct
 * conf_domain: in the global scope conf->domain_default, in a Domain scope
 * its own entry, in a Binding scope binding->overrides; the scope row says
 * where. Domain and Binding scopes get no defaults: after the whole file,
 * conf_domains_finish() copies into each Domain what it did not write from
 * the global scope, so a lookup only reads fields; a Binding keeps just
 * what it wrote, for conf_binding_gateway() and friends.
 */
#include "conf.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <pwd.h>
#include <stdarg.h>
#include <strings.h>
#include <unistd.h>

#include "conf_parse.h"
#include "outbuf.h"
#include "util.h"

#define KIB ((uint64_t)1 << 10)
#define MIB ((uint64_t)1 << 20)
#define GIB ((uint64_t)1 << 30)

#define SEC   ((uint64_t)1000)
#define MIN_S (60 * SEC)
#define HOUR  (60 * MIN_S)
#define DAY   (24 * HOUR)

enum conf_scope_bit {
    CONF_SCOPE_GLOBAL = 1u << 0,
    CONF_SCOPE_ESMTP_LISTENER = 1u << 1,
    CONF_SCOPE_LISTEN = 1u << 2,
    CONF_SCOPE_DOMAIN = 1u << 3,
    CONF_SCOPE_BINDING = 1u << 4,
    CONF_SCOPE_SCRIPTLET = 1u << 5,
    CONF_SCOPE_SCRIPT = 1u << 6,
    CONF_SCOPE_ALERTING = 1u << 7,
    CONF_SCOPE_DATASOURCE = 1u << 8,
};

#define CONF_NAMESERVERS_MAX 16
#define CONF_PORT_SMTP 25
#define CONF_PORT_DNS 53

/* Scopes of the operations side: the console and metrics listeners. */
enum conf_scope_bit_ops {
    CONF_SCOPE_CONTROL_LISTENER = 1u << 16,
    CONF_SCOPE_CONTROL_LISTEN = 1u << 17,
    CONF_SCOPE_METRICS_LISTENER = 1u << 18,
    CONF_SCOPE_METRICS_LISTEN = 1u << 19,
};

enum conf_instance {
    CONF_INSTANCE_NONE,
    CONF_INSTANCE_OPTIONAL,
    CONF_INSTANCE_REQUIRED,
};

struct conf_ctx {
    struct conf *c;
    struct conf_errors *errs;
    int syntax_errors;           /* skip checks a broken file would fail */
};

struct conf_directive;

/* Report any error at n and return -EINVAL, or store the value at
 * base + d->offset and return 0. */
typedef int conf_set_fn(struct conf_ctx *ctx, const struct conf_directive *d,
                        const struct conf_node *n, void *base);
typedef void *conf_enter_fn(struct conf_ctx *ctx, const struct conf_node *n,
                            void *parent);
typedef void conf_leave_fn(struct conf_ctx *ctx, const struct conf_node *n,
                           void *base);

struct conf_directive {
    const char *name;
    unsigned scopes;             /* CONF_SCOPE_* where it may appear */
    conf_set_fn *set;
    size_t offset;               /* of the value in the scope's struct */
    size_t count_offset;         /* list setters: of the size_t count */
    uint64_t min;                /* range, in the stored unit */
    uint64_t max;
    const char *def;             /* default in config syntax, or NULL */
    unsigned opt;                /* CONF_OPT_*: offset is into the scope's
                                  * struct conf_domain; 0: into its struct */
};

struct conf_scope {
    const char *name;
    unsigned bit;
    unsigned parents;            /* CONF_SCOPE_* where it may appear */
    enum conf_instance instance;
    const char *example;         /* shown when the instance is missing */
    conf_enter_fn *enter;
    conf_leave_fn *leave;        /* or NULL */
    size_t domain_offset;        /* of the struct conf_domain that CONF_OPT_*
                                  * options fill, in the struct enter gives */
    int inherits;                /* no defaults: unset options inherit */
};

static conf_set_fn conf_set_path, conf_set_hostname, conf_set_uint,
    conf_set_auto_uint, conf_set_size, conf_set_duration, conf_set_cidrs,
    conf_set_gateway, conf_set_throttle, conf_set_retries,
    conf_set_nameservers, conf_set_address, conf_set_mailbox,
    conf_set_string, conf_set_bool, conf_set_paths, conf_set_redis_uris;
static conf_enter_fn conf_esmtp_listener_enter, conf_listen_enter,
    conf_domain_enter, conf_binding_enter, conf_scriptlet_enter,
    conf_script_enter, conf_alerting_enter, conf_datasource_enter;
static conf_leave_fn conf_esmtp_listener_leave;
static conf_set_fn conf_set_string, conf_set_user;
static conf_enter_fn conf_ops_listener_enter, conf_control_listen_enter,
    conf_metrics_listen_enter;

#define GLOBAL CONF_SCOPE_GLOBAL
#define LISTENER CONF_SCOPE_ESMTP_LISTENER
#define DOMAIN CONF_SCOPE_DOMAIN
#define BINDING CONF_SCOPE_BINDING
#define C(field) offsetof(struct conf, field)
#define L(field) offsetof(struct conf_esmtp_listener, field)
#define D(field) offsetof(struct conf_domain, field)
#define B(field) offsetof(struct conf_binding, field)
#define SCRIPTLET CONF_SCOPE_SCRIPTLET
#define SL(field) offsetof(struct conf_scriptlet, field)
#define SC(field) offsetof(struct conf_script, field)
#define DATASOURCE CONF_SCOPE_DATASOURCE
#define DS(field) offsetof(struct conf_datasource, field)

static const struct conf_directive conf_directives[] = {
    { "Spool_Base", GLOBAL, conf_set_path, C(spool_base), 0, 0, 0,
      "spool", 0 },
    { "Shards", GLOBAL, conf_set_auto_uint, C(shards), 0, 1, 256, "auto",
      0 },
    { "Pin_Shards", GLOBAL, conf_set_bool, C(pin_shards), 0, 0, 0,
      "false", 0 },
    { "Hostname", GLOBAL, conf_set_hostname, C(hostname), 0, 1, 255,
      NULL, 0 },
    { "Paniclog", GLOBAL, conf_set_path, C(paniclog), 0, 0, 0,
      "log/paniclog", 0 },
    { "Delivery_Log", GLOBAL, conf_set_path, C(delivery_log), 0, 0, 0,
      "log/delivery.log", 0 },
    { "Run_Directory", GLOBAL, conf_set_path, C(run_directory), 0, 0, 0,
      NULL, 0 },
    { "User", GLOBAL, conf_set_user, C(user), 0, 1, 64, NULL, 0 },
    { "Max_Message_Size", GLOBAL, conf_set_size, C(max_message_size), 0,
      1 * KIB, 2 * GIB, "20M", 0 },
    { "Max_Recipients_Per_Message", GLOBAL, conf_set_uint,
      C(max_recipients), 0, 1, 100000, "100", 0 },
    { "Max_Connections", GLOBAL, conf_set_uint, C(max_connections), 0,
      1, 1000000, "10000", 0 },
    { "Max_Connections_Per_IP", GLOBAL, conf_set_uint,
      C(max_connections_per_ip), 0, 0, 1000000, "0", 0 },
    { "Idle_Timeout", GLOBAL, conf_set_duration, C(idle_timeout_ms), 0,
      1 * SEC, 1 * DAY, "300s", 0 },
    { "Data_Timeout", GLOBAL, conf_set_duration, C(data_timeout_ms), 0,
      1 * SEC, 1 * DAY, "180s", 0 },
    { "Shutdown_Timeout", GLOBAL, conf_set_duration,
      C(shutdown_timeout_ms), 0, 0, 1 * HOUR, "30s", 0 },
    { "Spool_Segment_Size", GLOBAL, conf_set_size, C(spool_segment_size),
      0, 1 * MIB, 1 * GIB, "64M", 0 },
    { "Relay_Hosts", LISTENER, conf_set_cidrs, L(relay_hosts),
      L(relay_host_count), 0, 4096, "( \"127.0.0.0/8\" \"::1\" )", 0 },
    { "MailerDaemon", GLOBAL, conf_set_mailbox, C(mailer_daemon), 0,
      3, 320, NULL, 0 },
    { "Nameservers", GLOBAL, conf_set_nameservers, C(nameservers),
      C(nameserver_count), 0, CONF_NAMESERVERS_MAX, NULL, 0 },
    { "Gateway", GLOBAL | DOMAIN | BINDING, conf_set_gateway, D(gateway),
      0, 0, 0, NULL, CONF_OPT_GATEWAY },
    { "Outbound_SMTP_Port", GLOBAL | DOMAIN, conf_set_uint,
      D(outbound_smtp_port), 0, 1, 65535, "25",
      CONF_OPT_OUTBOUND_SMTP_PORT },
    { "Retry_Interval", GLOBAL | DOMAIN, conf_set_duration,
      D(retry_interval_ms), 0, 1 * SEC, 1 * DAY, "20m",
      CONF_OPT_RETRY_INTERVAL },
    { "Max_Retry_Interval", GLOBAL | DOMAIN, conf_set_duration,
      D(max_retry_interval_ms), 0, 1 * SEC, 30 * DAY, "12h",
      CONF_OPT_MAX_RETRY_INTERVAL },
    { "Max_Retries", GLOBAL | DOMAIN, conf_set_retries, D(max_retries), 0,
      0, 10000, "auto", CONF_OPT_MAX_RETRIES },
    { "Message_Expiration", GLOBAL | DOMAIN, conf_set_duration,
      D(message_expiration_ms), 0, 1 * SEC, 30 * DAY, "1d",
      CONF_OPT_MESSAGE_EXPIRATION },
    { "Max_Outbound_Connections", GLOBAL | DOMAIN | BINDING, conf_set_uint,
      D(max_outbound_connections), 0, 1, 100000, "32",
      CONF_OPT_MAX_OUTBOUND_CONNECTIONS },
    { "Outbound_Throttle_Messages", GLOBAL | DOMAIN | BINDING,
      conf_set_throttle, D(outbound_throttle_messages), 0, 0, 1000000, "0",
      CONF_OPT_OUTBOUND_THROTTLE_MESSAGES },
    { "Bind_Address", BINDING, conf_set_address, B(bind_address),
      B(bind_address_len), 0, 0, NULL, 0 },
    { "EHLO_Hostname", BINDING, conf_set_hostname, B(ehlo_hostname), 0,
      1, 255, NULL, 0 },
    { "script_ttl", SCRIPTLET, conf_set_duration, SL(script_ttl_ms), 0,
      1 * SEC, 30 * DAY, "300s", 0 },
    { "gc_pause", SCRIPTLET, conf_set_uint, SL(gc_pause), 0, 50, 1000,
      "200", 0 },
    { "gc_stepmul", SCRIPTLET, conf_set_uint, SL(gc_stepmul), 0, 50, 10000,
      "200", 0 },
    { "max_spare_per_master", SCRIPTLET, conf_set_uint,
      SL(max_spare_per_master), 0, 0, 1000000, "5000", 0 },
    { "reap_interval", SCRIPTLET, conf_set_duration, SL(reap_interval_ms),
      0, 1 * SEC, 1 * DAY, "120s", 0 },
    { "always_gc", SCRIPTLET, conf_set_bool, SL(always_gc), 0, 0, 0,
      "false", 0 },
    { "instruction_budget", SCRIPTLET, conf_set_uint,
      SL(instruction_budget), 0, 10000, 2000000000, "1000000", 0 },
    { "memory_limit", SCRIPTLET, conf_set_size, SL(memory_limit), 0,
      1 * MIB, 4 * GIB, "64M", 0 },
    { "jit", SCRIPTLET, conf_set_bool, SL(jit), 0, 0, 0, "false", 0 },
    { "again_delay", SCRIPTLET, conf_set_duration, SL(again_delay_ms), 0,
      1, 60 * SEC, "10ms", 0 },
    { "search_path", SCRIPTLET, conf_set_paths, SL(search_path),
      SL(search_path_count), 0, 64, NULL, 0 },
    { "source", CONF_SCOPE_SCRIPT, conf_set_string, SC(source), 0, 1, 4096,
      NULL, 0 },
    { "uri", DATASOURCE, conf_set_redis_uris, DS(uris), DS(uri_count), 1,
      16, NULL, 0 },
    { "cache_life", DATASOURCE, conf_set_duration, DS(cache_life_ms), 0, 0,
      30 * DAY, "0", 0 },
    { "cache_size", DATASOURCE, conf_set_uint, DS(cache_size), 0, 0,
      10000000, "1000", 0 },
    { "connect_timeout", DATASOURCE, conf_set_duration,
      DS(connect_timeout_ms), 0, 1, 60 * SEC, "200ms", 0 },
    { "timeout", DATASOURCE, conf_set_duration, DS(timeout_ms), 0, 1,
      60 * SEC, "200ms", 0 },
    { "connections", DATASOURCE, conf_set_uint, DS(connections), 0, 1, 64,
      "1", 0 },
    { "max_pending", DATASOURCE, conf_set_uint, DS(max_pending), 0, 1,
      100000, "1000", 0 },
    { "password", DATASOURCE, conf_set_string, DS(password), 0, 1, 512,
      NULL, 0 },
    { "reconnect_backoff_min", DATASOURCE, conf_set_duration,
      DS(reconnect_min_ms), 0, 1, 60 * SEC, "100ms", 0 },
    { "reconnect_backoff_max", DATASOURCE, conf_set_duration,
      DS(reconnect_max_ms), 0, 1, 1 * HOUR, "5s", 0 },
    { "breaker_failures", DATASOURCE, conf_set_uint, DS(breaker_failures),
      0, 1, 1000000, "5", 0 },
    { "breaker_probe_interval", DATASOURCE, conf_set_duration,
      DS(breaker_probe_ms), 0, 10, 1 * HOUR, "1s", 0 },
};

static const struct conf_scope conf_scopes[] = {
    { "(global)", CONF_SCOPE_GLOBAL, 0, CONF_INSTANCE_NONE, NULL, NULL,
      NULL, C(domain_default), 0 },
    { "Control_Listener", CONF_SCOPE_CONTROL_LISTENER, GLOBAL,
      CONF_INSTANCE_NONE, NULL, conf_ops_listener_enter, NULL, 0, 0 },
    { "Listen", CONF_SCOPE_CONTROL_LISTEN, CONF_SCOPE_CONTROL_LISTENER,
      CONF_INSTANCE_REQUIRED, "Listen \"ringmail.ctl\" { }",
      conf_control_listen_enter, NULL, 0, 0 },
    { "Metrics_Listener", CONF_SCOPE_METRICS_LISTENER, GLOBAL,
      CONF_INSTANCE_NONE, NULL, conf_ops_listener_enter, NULL, 0, 0 },
    { "Listen", CONF_SCOPE_METRICS_LISTEN, CONF_SCOPE_METRICS_LISTENER,
      CONF_INSTANCE_REQUIRED, "Listen \"127.0.0.1:9025\" { }",
      conf_metrics_listen_enter, NULL, 0, 0 },
    { "ESMTP_Listener", CONF_SCOPE_ESMTP_LISTENER, GLOBAL,
      CONF_INSTANCE_OPTIONAL, NULL, conf_esmtp_listener_enter,
      conf_esmtp_listener_leave, 0, 0 },
    { "Listen", CONF_SCOPE_LISTEN, LISTENER, CONF_INSTANCE_REQUIRED,
      "Listen \"127.0.0.1:25\" { }", conf_listen_enter, NULL, 0, 0 },
    { "Domain", CONF_SCOPE_DOMAIN, GLOBAL, CONF_INSTANCE_REQUIRED,
      "Domain \"example.com\" { }", conf_domain_enter, NULL, 0, 1 },
    { "Binding", CONF_SCOPE_BINDING, GLOBAL, CONF_INSTANCE_REQUIRED,
      "Binding \"name\" { }", conf_binding_enter, NULL, B(overrides), 1 },
    { "scriptlet", CONF_SCOPE_SCRIPTLET, GLOBAL, CONF_INSTANCE_REQUIRED,
      "scriptlet \"scriptlet\" { }", conf_scriptlet_enter, NULL, 0, 0 },
    { "script", CONF_SCOPE_SCRIPT, SCRIPTLET, CONF_INSTANCE_REQUIRED,
      "script \"name\" { source = \"dir.name\" }", conf_script_enter,
      NULL, 0, 0 },
    { "alerting", CONF_SCOPE_ALERTING, GLOBAL, CONF_INSTANCE_NONE, NULL,
      conf_alerting_enter, NULL, 0, 0 },
    { "Datasource", CONF_SCOPE_DATASOURCE, GLOBAL, CONF_INSTANCE_REQUIRED,
      "Datasource \"name\" { uri = ( \"redis://127.0.0.1:6379/0\" ) }",
      conf_datasource_enter, NULL, 0, 0 },
};

#undef GLOBAL
#undef LISTENER
#undef DOMAIN
#undef BINDING
#undef C
#undef L
#undef D
#undef B


/* conf_errors_add - append "file:line: message" unless the list is full */
void
conf_errors_add(struct conf_errors *errs, const char *file, int line,
                const char *fmt, ...)
{
    struct conf_error *e;
    va_list ap;
    int rc;

    if (errs->count > CONF_ERRORS_MAX)
        return;
    errs->v = xrealloc(errs->v, (errs->count + 1) * sizeof *errs->v);
    e = &errs->v[errs->count++];
    e->file = xstrdup(file);
    e->line = line;
    if (errs->count > CONF_ERRORS_MAX) {
        e->message = xstrdup("too many errors; not reporting the rest");
        return;
    }
    va_start(ap, fmt);
    rc = vasprintf(&e->message, fmt, ap);
    va_end(ap);
    if (rc < 0)
        panic("out of memory formatting a configuration error");
}


/* conf_errors_print - write each error as FILE:LINE: message */
void
conf_errors_print(const struct conf_errors *errs, FILE *fp)
{
    size_t i;

    for (i = 0; i < errs->count; i++) {
        fprintf(fp, "%s:%d: %s\n", errs->v[i].file, errs->v[i].line,
                errs->v[i].message);
    }
}


/* conf_errors_fini - free every error and leave the list empty */
void
conf_errors_fini(struct conf_errors *errs)
{
    size_t i;

    for (i = 0; i < errs->count; i++) {
        free(errs->v[i].file);
        free(errs->v[i].message);
    }
    free(errs->v);
    errs->v = NULL;
    errs->count = 0;
}


/* conf_errors_sort - order errors from index first by line, stably */
static void
conf_errors_sort(struct conf_errors *errs, size_t first)
{
    size_t end = errs->count;
    size_t i, j;

    /* "too many errors" stays last. */
    if (end > CONF_ERRORS_MAX)
        end--;
    for (i = first + 1; i < end; i++) {
        struct conf_error e = errs->v[i];

        for (j = i; j > first && errs->v[j - 1].line > e.line; j--)
            errs->v[j] = errs->v[j - 1];
        errs->v[j] = e;
    }
}


/* conf_number_prefix - read leading decimal digits; rest gets the suffix */
static int
conf_number_prefix(const char *s, uint64_t *v, const char **rest)
{
    uint64_t x = 0;
    const char *p;

    for (p = s; *p >= '0' && *p <= '9'; p++) {
        if (x > (UINT64_MAX - (uint64_t)(*p - '0')) / 10)
            return -ERANGE;
        x = x * 10 + (uint64_t)(*p - '0');
    }
    if (p == s)
        return -EINVAL;
    *v = x;
    *rest = p;
    return 0;
}


/* conf_scaled - *out = v * unit, or -ERANGE */
static int
conf_scaled(uint64_t v, uint64_t unit, uint64_t *out)
{
    if (v > UINT64_MAX / unit)
        return -ERANGE;
    *out = v * unit;
    return 0;
}


/* conf_uint_from_str - a plain decimal number */
static int
conf_uint_from_str(const char *s, uint64_t *v)
{
    const char *rest;
    int rc = conf_number_prefix(s, v, &rest);

    if (rc < 0)
        return rc;
    return *rest == '\0' ? 0 : -EINVAL;
}


/* conf_size_from_str - bytes with an optional K, M or G (1024-based) */
int
conf_size_from_str(const char *s, uint64_t *bytes)
{
    static const struct { const char *suffix; uint64_t unit; } units[] = {
        { "", 1 }, { "K", KIB }, { "M", MIB }, { "G", GIB },
    };
    const char *rest;
    uint64_t v;
    size_t i;
    int rc = conf_number_prefix(s, &v, &rest);

    if (rc < 0)
        return rc;
    for (i = 0; i < ARRAY_SIZE(units); i++) {
        if (strcasecmp(rest, units[i].suffix) == 0)
            return conf_scaled(v, units[i].unit, bytes);
    }
    return -EINVAL;
}


/* conf_duration_from_str - milliseconds from seconds or ms, s, m, h, d */
int
conf_duration_from_str(const char *s, uint64_t *ms)
{
    static const struct { const char *suffix; uint64_t unit; } units[] = {
        { "", SEC }, { "ms", 1 }, { "s", SEC }, { "m", MIN_S },
        { "h", HOUR }, { "d", DAY },
    };
    const char *rest;
    uint64_t v;
    size_t i;
    int rc = conf_number_prefix(s, &v, &rest);

    if (rc < 0)
        return rc;
    for (i = 0; i < ARRAY_SIZE(units); i++) {
        if (strcasecmp(rest, units[i].suffix) == 0)
            return conf_scaled(v, units[i].unit, ms);
    }
    return -EINVAL;
}


/* conf_bool_from_str - true/false, yes/no, on/off, 1/0 */
int
conf_bool_from_str(const char *s, int *on)
{
    static const char *const yes[] = { "true", "yes", "on", "1" };
    static const char *const no[] = { "false", "no", "off", "0" };
    size_t i;

    for (i = 0; i < ARRAY_SIZE(yes); i++) {
        if (strcasecmp(s, yes[i]) == 0) {
            *on = 1;
            return 0;
        }
        if (strcasecmp(s, no[i]) == 0) {
            *on = 0;
            return 0;
        }
    }
    return -EINVAL;
}


/* conf_size_text - v as the shortest exact size: 2G, 512K, 100 */
static const char *
conf_size_text(char *buf, size_t len, uint64_t v)
{
    if (v != 0 && v % GIB == 0)
        snprintf(buf, len, "%lluG", (unsigned long long)(v / GIB));
    else if (v != 0 && v % MIB == 0)
        snprintf(buf, len, "%lluM", (unsigned long long)(v / MIB));
    else if (v != 0 && v % KIB == 0)
        snprintf(buf, len, "%lluK", (unsigned long long)(v / KIB));
    else
        snprintf(buf, len, "%llu", (unsigned long long)v);
    return buf;
}


/* conf_duration_text - ms as the shortest exact duration: 1d, 300s, 250ms */
static const char *
conf_duration_text(char *buf, size_t len, uint64_t ms)
{
    if (ms != 0 && ms % DAY == 0)
        snprintf(buf, len, "%llud", (unsigned long long)(ms / DAY));
    else if (ms != 0 && ms % HOUR == 0)
        snprintf(buf, len, "%lluh", (unsigned long long)(ms / HOUR));
    else if (ms != 0 && ms % MIN_S == 0)
        snprintf(buf, len, "%llum", (unsigned long long)(ms / MIN_S));
    else if (ms % SEC == 0)
        snprintf(buf, len, "%llus", (unsigned long long)(ms / SEC));
    else
        snprintf(buf, len, "%llums", (unsigned long long)ms);
    return buf;
}


/* conf_scalar - the option's single value, or NULL when it is a list */
static const char *
conf_scalar(const struct conf_node *n)
{
    ASSERT(n->kind == CONF_NODE_OPTION);
    return n->value_kind == CONF_VALUE_LIST ? NULL : n->value;
}


/* conf_field - the field of base that d sets */
static void *
conf_field(const struct conf_directive *d, void *base)
{
    return (char *)base + d->offset;
}


/* conf_path_resolve - value against dir; absolute paths stay as they are */
static char *
conf_path_resolve(const char *dir, const char *value)
{
    size_t dlen = strlen(dir);
    char *out;

    ASSERT(dir[0] == '/');
    if (value[0] == '/')
        return xstrdup(value);
    /* dir is a realpath() (no symlinks, no dots), so leading ./ and ../
     * can be folded into it without changing what the path names. */
    for (;;) {
        if (value[0] == '.' && (value[1] == '/' || value[1] == '\0')) {
            value += 1;
        } else if (value[0] == '.' && value[1] == '.' &&
                   (value[2] == '/' || value[2] == '\0')) {
            value += 2;
            while (dlen > 1 && dir[dlen - 1] != '/')
                dlen--;
            if (dlen > 1)
                dlen--;
        } else {
            break;
        }
        while (value[0] == '/')
            value++;
    }
    out = xmalloc(dlen + 1 + strlen(value) + 1);
    memcpy(out, dir, dlen);
    out[dlen] = '\0';
    if (value[0] != '\0') {
        if (dlen > 1)
            strcat(out, "/");
        strcat(out, value);
    }
    return out;
}


/* conf_dir_of - the absolute, symlink-free directory of path */
static char *
conf_dir_of(const char *path)
{
    const char *slash = strrchr(path, '/');
    char *dir, *real;

    if (slash == NULL)
        dir = xstrdup(".");
    else if (slash == path)
        dir = xstrdup("/");
    else {
        dir = xmalloc((size_t)(slash - path) + 1);
        memcpy(dir, path, (size_t)(slash - path));
        dir[slash - path] = '\0';
    }
    real = realpath(dir, NULL);
    free(dir);
    if (real == NULL)
        return NULL;
    dir = xstrdup(real);
    free(real);
    return dir;
}


/* conf_grow - room for one more element in an array of count elements */
static void *
conf_grow(void *v, size_t count, size_t size)
{
    /* Double when count reaches a power of two: amortised linear, with
     * no capacity field in the public structs. */
    if (count == 0)
        return xrealloc(v, 1 * size);
    if ((count & (count - 1)) == 0)
        return xrealloc(v, 2 * count * size);
    return v;
}


/* conf_set_path - a file or directory, resolved against the conf's dir */
static int
conf_set_path(struct conf_ctx *ctx, const struct conf_directive *d,
              const struct conf_node *n, void *base)
{
    const char *v = conf_scalar(n);
    char **field = conf_field(d, base);

    if (v == NULL || v[0] == '\0') {
        conf_errors_add(ctx->errs, n->file, n->line,
                        "option '%s' expects a path", d->name);
        return -EINVAL;
    }
    free(*field);
    *field = conf_path_resolve(ctx->c->dir, v);
    return 0;
}


/* conf_set_string - any single value of d->min to d->max bytes */
static int
conf_set_string(struct conf_ctx *ctx, const struct conf_directive *d,
                const struct conf_node *n, void *base)
{
    const char *v = conf_scalar(n);
    char **field = conf_field(d, base);

    if (v == NULL || strlen(v) < d->min || strlen(v) > d->max) {
        conf_errors_add(ctx->errs, n->file, n->line,
                        "option '%s' expects a string of %llu to %llu "
                        "characters", d->name, (unsigned long long)d->min,
                        (unsigned long long)d->max);
        return -EINVAL;
    }
    free(*field);
    *field = xstrdup(v);
    return 0;
}


/* conf_set_hostname - a host name or [address literal] for EHLO */
static int
conf_set_hostname(struct conf_ctx *ctx, const struct conf_directive *d,
                  const struct conf_node *n, void *base)
{
    const char *v = conf_scalar(n);
    char **field = conf_field(d, base);
    size_t len = v != NULL ? strlen(v) : 0;

    /* It goes into the greeting and EHLO verbatim: no space or line
     * break may smuggle text into an SMTP reply. */
    if (len < d->min || len > d->max ||
        strspn(v, "abcdefghijklmnopqrstuvwxyz"
                  "ABCDEFGHIJKLMNOPQRSTUVWXYZ"
                  "0123456789.-_:[]") != len) {
        conf_errors_add(ctx->errs, n->file, n->line,
                        "option '%s' expects a host name such as "
                        "mail.example.com", d->name);
        return -EINVAL;
    }
    free(*field);
    *field = xstrdup(v);
    return 0;
}


/* conf_set_uint - a number from d->min to d->max, stored as unsigned */
static int
conf_set_uint(struct conf_ctx *ctx, const struct conf_directive *d,
              const struct conf_node *n, void *base)
{
    const char *v = conf_scalar(n);
    uint64_t x;

    ASSERT(d->max <= UINT_MAX);
    if (v == NULL || conf_uint_from_str(v, &x) < 0 || x < d->min ||
        x > d->max) {
        conf_errors_add(ctx->errs, n->file, n->line,
                        "option '%s' expects a number from %llu to %llu",
                        d->name, (unsigned long long)d->min,
                        (unsigned long long)d->max);
        return -EINVAL;
    }
    *(unsigned *)conf_field(d, base) = (unsigned)x;
    return 0;
}


/* conf_set_auto_uint - auto (stored as 0) or a number in d's range */
static int
conf_set_auto_uint(struct conf_ctx *ctx, const struct conf_directive *d,
                   const struct conf_node *n, void *base)
{
    const char *v = conf_scalar(n);
    uint64_t x;

    ASSERT(d->min > 0);
    ASSERT(d->max <= UINT_MAX);
    if (v != NULL && strcasecmp(v, "auto") == 0) {
        x = 0;
    } else if (v == NULL || conf_uint_from_str(v, &x) < 0 || x < d->min ||
               x > d->max) {
        conf_errors_add(ctx->errs, n->file, n->line,
                        "option '%s' expects auto or a number from %llu "
                        "to %llu", d->name, (unsigned long long)d->min,
                        (unsigned long long)d->max);
        return -EINVAL;
    }
    *(unsigned *)conf_field(d, base) = (unsigned)x;
    return 0;
}


/* conf_set_size - bytes with K, M or G in d's range, stored as uint64_t */
static int
conf_set_size(struct conf_ctx *ctx, const struct conf_directive *d,
              const struct conf_node *n, void *base)
{
    const char *v = conf_scalar(n);
    char lo[32], hi[32];
    uint64_t x;

    if (v == NULL || conf_size_from_str(v, &x) < 0 || x < d->min ||
        x > d->max) {
        conf_errors_add(ctx->errs, n->file, n->line,
                        "option '%s' expects a size from %s to %s (bytes, "
                        "or a number with K, M or G)", d->name,
                        conf_size_text(lo, sizeof lo, d->min),
                        conf_size_text(hi, sizeof hi, d->max));
        return -EINVAL;
    }
    *(uint64_t *)conf_field(d, base) = x;
    return 0;
}


/* conf_set_duration - a duration in d's range, stored as unsigned ms */
static int
conf_set_duration(struct conf_ctx *ctx, const struct conf_directive *d,
                  const struct conf_node *n, void *base)
{
    const char *v = conf_scalar(n);
    char lo[32], hi[32];
    uint64_t ms;

    ASSERT(d->max <= UINT_MAX);
    if (v == NULL || conf_duration_from_str(v, &ms) < 0 || ms < d->min ||
        ms > d->max) {
        conf_errors_add(ctx->errs, n->file, n->line,
                        "option '%s' expects a duration from %s to %s "
                        "(seconds, or a number with ms, s, m, h or d)",
                        d->name, conf_duration_text(lo, sizeof lo, d->min),
                        conf_duration_text(hi, sizeof hi, d->max));
        return -EINVAL;
    }
    *(unsigned *)conf_field(d, base) = (unsigned)ms;
    return 0;
}


/* conf_set_bool - true or false, stored as int 1 or 0 */
static int
conf_set_bool(struct conf_ctx *ctx, const struct conf_directive *d,
              const struct conf_node *n, void *base)
{
    const char *v = conf_scalar(n);
    int on;

    if (v == NULL || conf_bool_from_str(v, &on) < 0) {
        conf_errors_add(ctx->errs, n->file, n->line,
                        "option '%s' expects true or false", d->name);
        return -EINVAL;
    }
    *(int *)conf_field(d, base) = on;
    return 0;
}


/* conf_items - a list's items, or a single value as a list of one */
static size_t
conf_items(const struct conf_node *n, char *const **items)
{
    if (n->value_kind == CONF_VALUE_LIST) {
        *items = n->items;
        return n->item_count;
    }
    *items = &n->value;
    return 1;
}


/*
 * A list option's element type. conf_set_list() parses every item into an
 * element with parse, which reports its own error; when any fails, the
 * option keeps its old value. fini (or NULL) releases one element.
 */
struct conf_list_type {
    size_t size;                 /* of one element */
    const char *noun;            /* "takes at most N <noun>" */
    int (*parse)(struct conf_ctx *ctx, const struct conf_directive *d,
                 const struct conf_node *n, const char *item, void *elem);
    void (*fini)(void *elem);
};


/*
 * conf_set_list - d->min to d->max items: an array at offset (with one
 * zeroed element past the end, so that arrays of pointers end in NULL),
 * its count at count_offset. The field is some T *; it is read and written
 * with memcpy, as a pointer of no particular type.
 */
static int
conf_set_list(struct conf_ctx *ctx, const struct conf_directive *d,
              const struct conf_node *n, void *base,
              const struct conf_list_type *t)
{
    void *field = conf_field(d, base);
    size_t *count = (size_t *)((char *)base + d->count_offset);
    char *const *items;
    size_t i, item_count = conf_items(n, &items);
    char *v, *old;
    int rc = 0;

    if (item_count < d->min || item_count > d->max) {
        if (d->min > 0)
            conf_errors_add(ctx->errs, n->file, n->line,
                            "option '%s' takes %llu to %llu %s", d->name,
                            (unsigned long long)d->min,
                            (unsigned long long)d->max, t->noun);
        else
            conf_errors_add(ctx->errs, n->file, n->line,
                            "option '%s' takes at most %llu %s", d->name,
                            (unsigned long long)d->max, t->noun);
        return -EINVAL;
    }
    v = xcalloc(item_count + 1, t->size);
    for (i = 0; i < item_count; i++)
        if (t->parse(ctx, d, n, items[i], v + i * t->size) < 0)
            rc = -EINVAL;
    if (rc < 0) {
        for (i = 0; t->fini != NULL && i < item_count; i++)
            t->fini(v + i * t->size);
        free(v);
        return rc;
    }
    memcpy(&old, field, sizeof old);
    for (i = 0; t->fini != NULL && i < *count; i++)
        t->fini(old + i * t->size);
    free(old);
    memcpy(field, &v, sizeof v);
    *count = item_count;
    return 0;
}


/* conf_cidr_from_str - ADDR or ADDR/PREFIX, IPv4 or IPv6, host bits masked */
static int
conf_cidr_from_str(const char *s, struct conf_cidr *out)
{
    char buf[INET6_ADDRSTRLEN + 8];
    char *slash;
    unsigned max_bits, i;
    uint64_t bits;

    if (strlen(s) >= sizeof buf)
        return -EINVAL;
    strcpy(buf, s);
    memset(out, 0, sizeof *out);
    slash = strchr(buf, '/');
    if (slash != NULL)
        *slash = '\0';
    if (strchr(buf, ':') != NULL) {
        out->family = AF_INET6;
        max_bits = 128;
    } else {
        out->family = AF_INET;
        max_bits = 32;
    }
    if (inet_pton(out->family, buf, out->addr) != 1)
        return -EINVAL;
    bits = max_bits;
    if (slash != NULL &&
        (conf_uint_from_str(slash + 1, &bits) < 0 || bits > max_bits))
        return -EINVAL;
    out->prefix_bits = (unsigned)bits;
    for (i = 0; i < max_bits / 8; i++) {
        if (bits >= 8 * (i + 1))
            continue;
        if (bits <= 8 * i)
            out->addr[i] = 0;
        else
            out->addr[i] &= (uint8_t)(0xff << (8 * (i + 1) - bits));
    }
    return 0;
}


/* conf_cidr_item - one network of a list: ADDRESS or ADDRESS/PREFIX */
static int
conf_cidr_item(struct conf_ctx *ctx, const struct conf_directive *d,
               const struct conf_node *n, const char *item, void *elem)
{
    if (conf_cidr_from_str(item, elem) == 0)
        return 0;
    conf_errors_add(ctx->errs, n->file, n->line,
                    "option '%s': bad network '%s' (expected an address or "
                    "ADDRESS/PREFIX)", d->name, item);
    return -EINVAL;
}

static const struct conf_list_type conf_cidr_list = {
    sizeof(struct conf_cidr), "networks", conf_cidr_item, NULL
};


/* conf_set_cidrs - a list of networks: struct conf_cidr * at offset, count */
static int
conf_set_cidrs(struct conf_ctx *ctx, const struct conf_directive *d,
               const struct conf_node *n, void *base)
{
    return conf_set_list(ctx, d, n, base, &conf_cidr_list);
}


/* conf_host_name_check - 0 when s is a DNS host name: example.com */
static int
conf_host_name_check(const char *s)
{
    size_t len = strlen(s), label = 0, i;
    int digits_only = 1;

    if (len == 0 || len > 253)
        return -EINVAL;
    for (i = 0; i <= len; i++) {
        char ch = s[i];

        if (ch == '.' || ch == '\0') {
            /* Labels: 1 to 63 characters, no '-' at either end. */
            if (label == 0 || label > 63 || s[i - 1] == '-')
                return -EINVAL;
            if (ch == '\0')
                break;
            label = 0;
            digits_only = 1;
            continue;
        }
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
              (ch >= '0' && ch <= '9') || ch == '-'))
            return -EINVAL;
        if (ch == '-' && label == 0)
            return -EINVAL;
        if (ch < '0' || ch > '9')
            digits_only = 0;
        label++;
    }
    /* No top-level domain is numeric: 10.0.0.256 is a broken address. */
    return digits_only ? -EINVAL : 0;
}


/* conf_hostport_split - HOST, HOST:PORT, [HOST] or [HOST]:PORT into parts;
 * *port is 0 when absent. -EAFNOSUPPORT: colons without brackets (bare
 * IPv6), host is then all of s; -ERANGE: port not 1 to 65535. */
static int
conf_hostport_split(const char *s, char *host, size_t host_size,
                    uint64_t *port, int *bracketed)
{
    const char *colon, *end;
    size_t host_len;
    int rc;

    *port = 0;
    *bracketed = s[0] == '[';
    if (*bracketed) {
        end = strchr(s, ']');
        if (end == NULL || (end[1] != '\0' && end[1] != ':'))
            return -EINVAL;
        colon = end[1] == ':' ? end + 1 : NULL;
        s++;
    } else {
        colon = strchr(s, ':');
        if (colon != NULL && strchr(colon + 1, ':') != NULL) {
            if (strlen(s) >= host_size)
                return -EINVAL;
            strcpy(host, s);
            return -EAFNOSUPPORT;
        }
        end = colon != NULL ? colon : s + strlen(s);
    }
    host_len = (size_t)(end - s);
    if (host_len == 0 || host_len >= host_size)
        return -EINVAL;
    memcpy(host, s, host_len);
    host[host_len] = '\0';
    if (colon == NULL)
        return 0;
    rc = conf_uint_from_str(colon + 1, port);
    if (rc == -ERANGE || (rc == 0 && (*port == 0 || *port > 65535)))
        return -ERANGE;
    return rc;
}


/* conf_sockaddr_set - an address literal of family and port into ss */
static int
conf_sockaddr_set(int family, const char *host, unsigned port,
                  struct sockaddr_storage *ss, socklen_t *len)
{
    memset(ss, 0, sizeof *ss);
    if (family == AF_INET6) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)(void *)ss;

        if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1)
            return -EINVAL;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        *len = sizeof *sin6;
    } else {
        struct sockaddr_in *sin = (struct sockaddr_in *)(void *)ss;

        ASSERT(family == AF_INET);
        if (inet_pton(AF_INET, host, &sin->sin_addr) != 1)
            return -EINVAL;
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        *len = sizeof *sin;
    }
    return 0;
}


/* conf_gateway_fini - free what a gateway holds and mark it unset */
static void
conf_gateway_fini(struct conf_gateway *g)
{
    free(g->text);
    free(g->host);
    memset(g, 0, sizeof *g);
}


/* conf_set_gateway - HOST[:PORT], HOST a name, IPv4 or [IPv6] address */
static int
conf_set_gateway(struct conf_ctx *ctx, const struct conf_directive *d,
                 const struct conf_node *n, void *base)
{
    const char *v = conf_scalar(n);
    struct conf_gateway *field = conf_field(d, base), g = { 0 };
    char host[256];
    uint64_t port = 0;
    int bracketed, rc;

    rc = v != NULL ? conf_hostport_split(v, host, sizeof host, &port,
                                         &bracketed) : -EINVAL;
    g.port = port != 0 ? (unsigned)port : CONF_PORT_SMTP;
    if (rc == 0 && bracketed) {
        rc = conf_sockaddr_set(AF_INET6, host, g.port, &g.addr,
                               &g.addr_len);
    } else if (rc == 0) {
        if (conf_sockaddr_set(AF_INET, host, g.port, &g.addr,
                              &g.addr_len) < 0)
            rc = conf_host_name_check(host);
    }
    if (rc == -ERANGE) {
        conf_errors_add(ctx->errs, n->file, n->line,
                        "option '%s': bad port in '%s' (1 to 65535)",
                        d->name, v);
        return -EINVAL;
    }
    if (rc == -EAFNOSUPPORT) {
        conf_errors_add(ctx->errs, n->file, n->line,
                        "option '%s': bad gateway '%s' (an IPv6 address "
                        "goes in brackets, as in \"[2001:db8::1]:25\")",
                        d->name, v);
        return -EINVAL;
    }
    if (rc < 0) {
        conf_errors_add(ctx->errs, n->file, n->line,
                        "option '%s': bad gateway '%s' (expected HOST or "
                        "HOST:PORT, HOST a host name, an IPv4 address or "
                        "an [IPv6] address)", d->name,
                        v != NULL ? v : "( ... )");
        return -EINVAL;
    }
    g.text = xstrdup(v);
    g.host = xstrdup(host);
    conf_gateway_fini(field);
    *field = g;
    return 0;
}


/* conf_throttle_from_str - "N" (per second) or "N/DURATION"; a bare
 * duration is seconds */
static int
conf_throttle_from_str(const char *s, uint64_t *count, uint64_t *period_ms)
{
    const char *rest;
    int rc = conf_number_prefix(s, count, &rest);

    if (rc < 0)
        return rc;
    if (*rest == '\0') {
        *period_ms = SEC;
        return 0;
    }
    if (*rest != '/')
        return -EINVAL;
    return conf_duration_from_str(rest + 1, period_ms);
}


/* conf_set_throttle - N or N/SECONDS, N up to d->max; 0 means no limit */
static int
conf_set_throttle(struct conf_ctx *ctx, const struct conf_directive *d,
                  const struct conf_node *n, void *base)
{
    const char *v = conf_scalar(n);
    struct conf_throttle *field = conf_field(d, base);
    uint64_t count, period_ms;

    ASSERT(d->max <= UINT_MAX);
    if (v == NULL || conf_throttle_from_str(v, &count, &period_ms) < 0 ||
        count > d->max || period_ms < 1 * SEC || period_ms > 1 * DAY) {
        conf_errors_add(ctx->errs, n->file, n->line,
                        "option '%s' expects MESSAGES or MESSAGES/SECONDS, "
                        "as in \"100/60\" (MESSAGES from 0 to %llu, 0 for "
                        "no limit; SECONDS from 1 to 86400)", d->name,
                        (unsigned long long)d->max);
        return -EINVAL;
    }
    memset(field, 0, sizeof *field);
    if (count != 0) {
        field->count = (unsigned)count;
        field->period_ms = (unsigned)period_ms;
    }
    return 0;
}


/* conf_set_retries - auto, none (both stored as 0) or a number in range */
static int
conf_set_retries(struct conf_ctx *ctx, const struct conf_directive *d,
                 const struct conf_node *n, void *base)
{
    const char *v = conf_scalar(n);
    uint64_t x;

    ASSERT(d->max <= UINT_MAX);
    if (v != NULL &&
        (strcasecmp(v, "auto") == 0 || strcasecmp(v, "none") == 0)) {
        x = 0;
    } else if (v == NULL || conf_uint_from_str(v, &x) < 0 || x < d->min ||
               x > d->max) {
        conf_errors_add(ctx->errs, n->file, n->line,
                        "option '%s' expects auto, none or a number from "
                        "%llu to %llu", d->name, (unsigned long long)d->min,
                        (unsigned long long)d->max);
        return -EINVAL;
    }
    *(unsigned *)conf_field(d, base) = (unsigned)x;
    return 0;
}


/* conf_nameserver_from_str - IPV4[:PORT], [IPV6][:PORT] or bare IPv6 */
static int
conf_nameserver_from_str(const char *s, struct conf_nameserver *ns)
{
    char host[INET6_ADDRSTRLEN + 2];
    uint64_t port;
    int bracketed;
    int rc = conf_hostport_split(s, host, sizeof host, &port, &bracketed);

    if (rc == -EAFNOSUPPORT)
        return conf_sockaddr_set(AF_INET6, host, CONF_PORT_DNS, &ns->addr,
                                 &ns->addr_len);
    if (rc < 0)
        return rc;
    return conf_sockaddr_set(bracketed ? AF_INET6 : AF_INET, host,
                             port != 0 ? (unsigned)port : CONF_PORT_DNS,
                             &ns->addr, &ns->addr_len);
}


/* conf_nameserver_item - one DNS server of a list, kept as written too */
static int
conf_nameserver_item(struct conf_ctx *ctx, const struct conf_directive *d,
                     const struct conf_node *n, const char *item, void *elem)
{
    struct conf_nameserver *ns = elem;
    int rc = conf_nameserver_from_str(item, ns);

    if (rc == -ERANGE) {
        conf_errors_add(ctx->errs, n->file, n->line,
                        "option '%s': bad port in '%s' (1 to 65535)",
                        d->name, item);
    } else if (rc < 0) {
        conf_errors_add(ctx->errs, n->file, n->line,
                        "option '%s': bad server '%s' (expected "
                        "IPV4[:PORT] or [IPV6][:PORT])", d->name, item);
    }
    ns->text = xstrdup(item);
    return rc < 0 ? -EINVAL : 0;
}


static void
conf_nameserver_fini(void *elem)
{
    free(((struct conf_nameserver *)elem)->text);
}

static const struct conf_list_type conf_nameserver_list = {
    sizeof(struct conf_nameserver), "servers", conf_nameserver_item,
    conf_nameserver_fini
};


/* conf_set_nameservers - up to d->max DNS servers: array at offset, count */
static int
conf_set_nameservers(struct conf_ctx *ctx, const struct conf_directive *d,
                     const struct conf_node *n, void *base)
{
    return conf_set_list(ctx, d, n, base, &conf_nameserver_list);
}


/* conf_set_address - an IPv4 or IPv6 address (brackets optional) with
 * port 0: struct sockaddr_storage at offset, socklen_t at count_offset */
static int
conf_set_address(struct conf_ctx *ctx, const struct conf_directive *d,
                 const struct conf_node *n, void *base)
{
    const char *v = conf_scalar(n);
    socklen_t *len = (socklen_t *)((char *)base + d->count_offset);
    char host[INET6_ADDRSTRLEN + 2];
    size_t vlen = v != NULL ? strlen(v) : 0;
    int rc = -EINVAL;

    if (vlen > 2 && v[0] == '[' && v[vlen - 1] == ']' &&
        vlen - 2 < sizeof host) {
        memcpy(host, v + 1, vlen - 2);
        host[vlen - 2] = '\0';
        rc = conf_sockaddr_set(AF_INET6, host, 0, conf_field(d, base), len);
    } else if (v != NULL) {
        rc = conf_sockaddr_set(strchr(v, ':') != NULL ? AF_INET6 : AF_INET,
                               v, 0, conf_field(d, base), len);
    }
    if (rc < 0) {
        *len = 0;
        conf_errors_add(ctx->errs, n->file, n->line,
                        "option '%s' expects an IPv4 or IPv6 address such "
                        "as 192.0.2.1 or 2001:db8::1", d->name);
        return -EINVAL;
    }
    return 0;
}


/* conf_set_mailbox - LOCAL@DOMAIN of d->min to d->max bytes, as a From */
static int
conf_set_mailbox(struct conf_ctx *ctx, const struct conf_directive *d,
                 const struct conf_node *n, void *base)
{
    /* RFC 5322 atext and dots: no quoting, nothing to escape. */
    static const char local_chars[] =
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"
        "!#$%&'*+-/=?^_`{|}~.";
    const char *v = conf_scalar(n);
    char **field = conf_field(d, base);
    const char *at = v != NULL ? strrchr(v, '@') : NULL;
    size_t len = v != NULL ? strlen(v) : 0;
    const char *domain = at != NULL ? at + 1 : "";
    size_t dlen = strlen(domain);
    int ok;

    ok = at != NULL && at != v && len >= d->min && len <= d->max &&
         strspn(v, local_chars) == (size_t)(at - v) && v[0] != '.' &&
         at[-1] != '.';
    /* The domain is a host name or an address literal as in Hostname. */
    if (ok && domain[0] == '[') {
        ok = dlen > 2 && domain[dlen - 1] == ']' &&
             strspn(domain + 1, "0123456789abcdefABCDEF.:IPv6") ==
                 dlen - 2;
    } else if (ok) {
        ok = conf_host_name_check(domain) == 0;
    }
    if (!ok) {
        conf_errors_add(ctx->errs, n->file, n->line,
                        "option '%s' expects an address such as "
                        "MAILER-DAEMON@mail.example.com", d->name);
        return -EINVAL;
    }
    free(*field);
    *field = xstrdup(v);
    return 0;
}


/* conf_cidr_match_one - does the address (family, bytes) lie in e */
static int
conf_cidr_match_one(const struct conf_cidr *e, int family,
                    const uint8_t *addr)
{
    unsigned full = e->prefix_bits / 8;
    unsigned rest = e->prefix_bits % 8;
    uint8_t mask;

    if (e->family != family)
        return 0;
    if (memcmp(e->addr, addr, full) != 0)
        return 0;
    if (rest == 0)
        return 1;
    mask = (uint8_t)(0xff << (8 - rest));
    return (addr[full] & mask) == e->addr[full];
}


/* conf_cidr_match - 1 when sa lies in one of the n networks of list */
int
conf_cidr_match(const struct conf_cidr *list, size_t n,
                const struct sockaddr *sa)
{
    const uint8_t *v4 = NULL, *v6 = NULL;
    size_t i;

    if (sa->sa_family == AF_INET) {
        v4 = (const uint8_t *)&((const struct sockaddr_in *)
                                (const void *)sa)->sin_addr;
    } else if (sa->sa_family == AF_INET6) {
        const struct in6_addr *a6 = &((const struct sockaddr_in6 *)
                                      (const void *)sa)->sin6_addr;

        v6 = a6->s6_addr;
        if (IN6_IS_ADDR_V4MAPPED(a6))
            v4 = a6->s6_addr + 12;
    } else {
        return 0;
    }
    for (i = 0; i < n; i++) {
        if (v4 != NULL && conf_cidr_match_one(&list[i], AF_INET, v4))
            return 1;
        if (v6 != NULL && conf_cidr_match_one(&list[i], AF_INET6, v6))
            return 1;
    }
    return 0;
}


/* conf_listen_from_str - IPV4:PORT, [IPV6]:PORT or *:PORT to a sockaddr */
static int
conf_listen_from_str(const char *s, struct sockaddr_storage *ss,
                     socklen_t *len)
{
    char host[INET6_ADDRSTRLEN + 2];
    const char *colon, *port_text;
    int v6 = s[0] == '[';
    size_t host_len;
    int rc;
    uint64_t port;

    memset(ss, 0, sizeof *ss);
    if (v6) {
        const char *close = strchr(s, ']');

        if (close == NULL || close[1] != ':')
            return -EINVAL;
        colon = close + 1;
        s++;
        host_len = (size_t)(close - s);
    } else {
        colon = strrchr(s, ':');
        if (colon == NULL || memchr(s, ':', (size_t)(colon - s)) != NULL)
            return -EINVAL;     /* IPv6 without brackets */
        host_len = (size_t)(colon - s);
    }
    if (host_len == 0 || host_len >= sizeof host)
        return -EINVAL;
    memcpy(host, s, host_len);
    host[host_len] = '\0';
    port_text = colon + 1;
    rc = conf_uint_from_str(port_text, &port);
    if (rc < 0)
        return rc;
    if (port > 65535)
        return -ERANGE;

    if (v6) {
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)(void *)ss;

        if (inet_pton(AF_INET6, host, &sin6->sin6_addr) != 1)
            return -EINVAL;
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        *len = sizeof *sin6;
    } else {
        struct sockaddr_in *sin = (struct sockaddr_in *)(void *)ss;

        if (strcmp(host, "*") == 0)
            sin->sin_addr.s_addr = htonl(INADDR_ANY);
        else if (inet_pton(AF_INET, host, &sin->sin_addr) != 1)
            return -EINVAL;
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        *len = sizeof *sin;
    }
    return 0;
}


/* conf_esmtp_listener_enter - start one ESMTP_Listener */
static void *
conf_esmtp_listener_enter(struct conf_ctx *ctx, const struct conf_node *n,
                          void *parent)
{
    struct conf *c = parent;
    struct conf_esmtp_listener *l;

    ASSERT(c == ctx->c);
    c->listeners = conf_grow(c->listeners, c->listener_count,
                             sizeof *c->listeners);
    l = &c->listeners[c->listener_count++];
    memset(l, 0, sizeof *l);
    l->name = n->instance != NULL ? xstrdup(n->instance) : NULL;
    return l;
}


/* conf_esmtp_listener_leave - a listener needs somewhere to listen */
static void
conf_esmtp_listener_leave(struct conf_ctx *ctx, const struct conf_node *n,
                          void *base)
{
    struct conf_esmtp_listener *l = base;
    const struct conf_node *child;

    /* A Listen scope that failed was reported already. */
    for (child = n->children; child != NULL; child = child->next) {
        if (child->kind == CONF_NODE_SCOPE &&
            strcasecmp(child->name, "Listen") == 0)
            return;
    }
    if (l->listen_count == 0 && !ctx->syntax_errors) {
        conf_errors_add(ctx->errs, n->file, n->line,
                        "ESMTP_Listener has no Listen scope, as in "
                        "Listen \"127.0.0.1:25\" { }");
    }
}


/*
 * conf_listen_taken - whether ss (not port 0) is already a Listen address:
 * SO_REUSEPORT would let both bind and split the connections between two
 * listeners, which is never what a duplicated line meant.
 */
static int
conf_listen_taken(const struct conf *c, const struct sockaddr_storage *ss)
{
    size_t i, j;

    for (i = 0; i < c->listener_count; i++) {
        const struct conf_esmtp_listener *l = &c->listeners[i];

        for (j = 0; j < l->listen_count; j++) {
            const struct sockaddr_storage *o = &l->listens[j].addr;

            if (o->ss_family != ss->ss_family)
                continue;
            if (ss->ss_family == AF_INET) {
                const struct sockaddr_in *a = (const void *)ss;
                const struct sockaddr_in *b = (const void *)o;

                if (a->sin_port != 0 && a->sin_port == b->sin_port &&
                    a->sin_addr.s_addr == b->sin_addr.s_addr)
                    return 1;
            } else if (ss->ss_family == AF_INET6) {
                const struct sockaddr_in6 *a = (const void *)ss;
                const struct sockaddr_in6 *b = (const void *)o;

                if (a->sin6_port != 0 && a->sin6_port == b->sin6_port &&
                    memcmp(&a->sin6_addr, &b->sin6_addr,
                           sizeof a->sin6_addr) == 0)
                    return 1;
            }
        }
    }
    return 0;
}


/* conf_listen_enter - one Listen "ADDR:PORT" { } of an ESMTP_Listener */
static void *
conf_listen_enter(struct conf_ctx *ctx, const struct conf_node *n,
                  void *parent)
{
    struct conf_esmtp_listener *l = parent;
    struct sockaddr_storage ss;
    struct conf_listen *li;
    socklen_t len = 0;
    int rc;

    ASSERT(n->instance != NULL);
    rc = conf_listen_from_str(n->instance, &ss, &len);
    if (rc == -ERANGE) {
        conf_errors_add(ctx->errs, n->file, n->line,
                        "bad Listen address '%s': port must be 0 to 65535",
                        n->instance);
        return NULL;
    }
    if (rc < 0) {
        conf_errors_add(ctx->errs, n->file, n->line,
                        "bad Listen address '%s': expected IPV4:PORT, "
                        "[IPV6]:PORT or *:PORT", n->instance);
        return NULL;
    }
    if (conf_listen_taken(ctx->c, &ss)) {
        conf_errors_add(ctx->errs, n->file, n->line,
                        "Listen address '%s' is already used by another "
                        "Listen scope", n->instance);
        return NULL;
    }
    l->listens = conf_grow(l->listens, l->listen_count, sizeof *l->listens);
    li = &l->listens[l->listen_count++];
    memset(li, 0, sizeof *li);
    li->addr = ss;
    li->addr_len = len;
    li->text = xstrdup(n->instance);
    li->file = ctx->c->path;
    li->line = n->line;
    return li;
}


/* conf_set_user - a user name this machine knows (getpwnam) */
static int
conf_set_user(struct conf_ctx *ctx, const struct conf_directive *d,
              const struct conf_node *n, void *base)
{
    const char *v = conf_scalar(n);

    if (conf_set_string(ctx, d, n, base) < 0)
        return -EINVAL;
    if (getpwnam(v) == NULL) {
        conf_errors_add(ctx->errs, n->file, n->line,
                        "User '%s': no such user on this machine", v);
        return -EINVAL;
    }
    return 0;
}


/* conf_ops_listener_enter - Control_Listener or Metrics_Listener: its
 * Listen scopes land in the global struct conf */
static void *
conf_ops_listener_enter(struct conf_ctx *ctx, const struct conf_node *n,
                        void *parent)
{
    ASSERT(parent == ctx->c);
    return parent;
}


/* conf_control_listen_enter - Listen "PATH" { } of the Control_Listener;
 * the path is resolved against Run_Directory in conf_ops_finish() */
static void *
conf_control_listen_enter(struct conf_ctx *ctx, const struct conf_node *n,
                          void *parent)
{
    struct conf *c = parent;
    struct conf_control_listen *cl;

    ASSERT(n->instance != NULL);
    if (n->instance[0] == '\0') {
        conf_errors_add(ctx->errs, n->file, n->line,
                        "Control_Listener Listen needs a socket path, as "
                        "in Listen \"ringmail.ctl\" { }");
        return NULL;
    }
    c->control_listens = conf_grow(c->control_listens,
                                   c->control_listen_count,
                                   sizeof *c->control_listens);
    cl = &c->control_listens[c->control_listen_count++];
    cl->path = xstrdup(n->instance);
    cl->file = c->path;
    cl->line = n->line;
    return cl;
}


/* conf_metrics_listen_enter - Listen "ADDR:PORT" { } of Metrics_Listener */
static void *
conf_metrics_listen_enter(struct conf_ctx *ctx, const struct conf_node *n,
                          void *parent)
{
    struct conf *c = parent;
    struct sockaddr_storage ss;
    struct conf_listen *li;
    socklen_t len = 0;

    ASSERT(n->instance != NULL);
    if (conf_listen_from_str(n->instance, &ss, &len) < 0) {
        conf_errors_add(ctx->errs, n->file, n->line,
                        "bad Metrics_Listener Listen address '%s': expected "
                        "IPV4:PORT or [IPV6]:PORT, as in 127.0.0.1:9025",
                        n->instance);
        return NULL;
    }
    c->metrics_listens = conf_grow(c->metrics_listens,
                                   c->metrics_listen_count,
                                   sizeof *c->metrics_listens);
    li = &c->metrics_listens[c->metrics_listen_count++];
    memset(li, 0, sizeof *li);
    li->addr = ss;
    li->addr_len = len;
    li->text = xstrdup(n->instance);
    li->file = c->path;
    li->line = n->line;
    return li;
}


/* conf_ops_finish - Run_Directory (default: Spool_Base's parent) and the
 * console socket paths, which live in it unless absolute */
static void
conf_ops_finish(struct conf_ctx *ctx)
{
    struct conf *c = ctx->c;
    size_t i;

    if (c->run_directory == NULL && c->spool_base != NULL) {
        char *slash;

        c->run_directory = xstrdup(c->spool_base);
        slash = strrchr(c->run_directory, '/');
        if (slash != NULL)
            slash[slash == c->run_directory ? 1 : 0] = '\0';
    }
    for (i = 0; i < c->control_listen_count && c->run_directory; i++) {
        struct conf_control_listen *cl = &c->control_listens[i];
        char *full = conf_path_resolve(c->run_directory, cl->path);

        free(cl->path);
        cl->path = full;
        /* sun_path holds 108 bytes, the NUL included */
        if (strlen(full) >= 108) {
            conf_errors_add(ctx->errs, cl->file, cl->line,
                            "Control_Listener path '%s' is too long for a "
                            "unix socket (at most 107 bytes)", full);
        }
    }
}


/* conf_directive_find - the option row named name, or NULL */
static const struct conf_directive *
conf_directive_find(const char *name)
{
    size_t i;

    for (i = 0; i < ARRAY_SIZE(conf_directives); i++) {
        if (strcasecmp(conf_directives[i].name, name) == 0)
            return &conf_directives[i];
    }
    return NULL;
}


/* conf_scope_find - the scope row named name allowed in parent, or any */
static const struct conf_scope *
conf_scope_find(const char *name, unsigned parent)
{
    const struct conf_scope *any = NULL;
    size_t i;

    for (i = 0; i < ARRAY_SIZE(conf_scopes); i++) {
        if (conf_scopes[i].parents == 0 ||
            strcasecmp(conf_scopes[i].name, name) != 0)
            continue;
        if (conf_scopes[i].parents & parent)
            return &conf_scopes[i];
        any = &conf_scopes[i];
    }
    return parent == 0 ? any : NULL;
}


/* conf_scope_row - the scope row of kind bit */
static const struct conf_scope *
conf_scope_row(unsigned bit)
{
    size_t i;

    for (i = 0; i < ARRAY_SIZE(conf_scopes); i++) {
        if (conf_scopes[i].bit == bit)
            return &conf_scopes[i];
    }
    panic("scope bit %#x has no row", bit);
}


/* conf_scope_where - "the global scope" or "ESMTP_Listener", for errors */
static const char *
conf_scope_where(unsigned bit)
{
    if (bit == CONF_SCOPE_GLOBAL)
        return "the global scope";
    return conf_scope_row(bit)->name;
}


/* conf_target - the struct d fills in a scope of kind bit filling base */
static void *
conf_target(const struct conf_directive *d, unsigned bit, void *base)
{
    ASSERT(d->scopes & bit);
    if (d->opt == 0)
        return base;
    /* Only scopes with a struct conf_domain admit CONF_OPT_* options. */
    ASSERT(bit & (CONF_SCOPE_GLOBAL | CONF_SCOPE_DOMAIN |
                  CONF_SCOPE_BINDING));
    return (char *)base + conf_scope_row(bit)->domain_offset;
}


/* conf_default - run d's setter on its default text, into base */
static void
conf_default(struct conf_ctx *ctx, const struct conf_directive *d,
             void *base)
{
    struct conf_errors errs = { 0 };
    struct conf_node *root;
    char text[256];
    size_t before = ctx->errs->count;
    int len, rc;

    len = snprintf(text, sizeof text, "%s = %s\n", d->name, d->def);
    ASSERT(len > 0 && (size_t)len < sizeof text);
    root = conf_parse_buf("(default)", text, (size_t)len, &errs);
    ASSERT(errs.count == 0);
    ASSERT(root->children != NULL);
    ASSERT(root->children->kind == CONF_NODE_OPTION);
    rc = d->set(ctx, d, root->children, base);
    ASSERT(rc == 0);
    ASSERT(ctx->errs->count == before);
    conf_node_free(root);
}


static void conf_walk(struct conf_ctx *ctx, const struct conf_node *scope,
                      unsigned bit, void *base);


/* conf_walk_option - check and set one option of a scope of kind bit */
static void
conf_walk_option(struct conf_ctx *ctx, const struct conf_node *n,
                 unsigned bit, void *base, const struct conf_node **seen)
{
    const struct conf_directive *d = conf_directive_find(n->name);
    size_t i;

    if (d == NULL) {
        if (conf_scope_find(n->name, 0) != NULL) {
            conf_errors_add(ctx->errs, n->file, n->line,
                            "'%s' is a scope, not an option: write "
                            "%s { ... }", n->name, n->name);
        } else {
            conf_errors_add(ctx->errs, n->file, n->line,
                            "unknown option '%s'", n->name);
        }
        return;
    }
    if ((d->scopes & bit) == 0) {
        conf_errors_add(ctx->errs, n->file, n->line,
                        "option '%s' is not allowed in %s", d->name,
                        conf_scope_where(bit));
        return;
    }
    i = (size_t)(d - conf_directives);
    if (seen[i] != NULL) {
        conf_errors_add(ctx->errs, n->file, n->line,
                        "duplicate option '%s' (first set on line %d)",
                        d->name, seen[i]->line);
        return;
    }
    seen[i] = n;
    base = conf_target(d, bit, base);
    if (d->set(ctx, d, n, base) == 0 && d->opt != 0)
        ((struct conf_domain *)base)->set |= d->opt;
}


/* conf_walk_scope - check a nested scope and walk its body */
static void
conf_walk_scope(struct conf_ctx *ctx, const struct conf_node *n,
                unsigned bit, void *base)
{
    const struct conf_scope *s = conf_scope_find(n->name, bit);
    void *child;

    if (s == NULL) {
        if (conf_directive_find(n->name) != NULL) {
            conf_errors_add(ctx->errs, n->file, n->line,
                            "'%s' is an option, not a scope: write "
                            "%s = value", n->name, n->name);
        } else if ((s = conf_scope_find(n->name, 0)) != NULL) {
            conf_errors_add(ctx->errs, n->file, n->line,
                            "scope '%s' is not allowed in %s", s->name,
                            conf_scope_where(bit));
        } else {
            conf_errors_add(ctx->errs, n->file, n->line,
                            "unknown scope '%s'", n->name);
        }
        return;
    }
    if (s->instance == CONF_INSTANCE_NONE && n->instance != NULL) {
        conf_errors_add(ctx->errs, n->file, n->line,
                        "scope '%s' takes no name", s->name);
        return;
    }
    if (s->instance == CONF_INSTANCE_REQUIRED && n->instance == NULL) {
        conf_errors_add(ctx->errs, n->file, n->line,
                        "scope '%s' needs a name, as in %s", s->name,
                        s->example);
        return;
    }
    child = s->enter(ctx, n, base);
    if (child == NULL)
        return;
    conf_walk(ctx, n, s->bit, child);
    if (s->leave != NULL)
        s->leave(ctx, n, child);
}


/* conf_walk - check every statement of a scope of kind bit into base */
static void
conf_walk(struct conf_ctx *ctx, const struct conf_node *scope, unsigned bit,
          void *base)
{
    const struct conf_node *seen[ARRAY_SIZE(conf_directives)] = { 0 };
    const struct conf_node *n;
    size_t i;

    ASSERT(scope->kind == CONF_NODE_SCOPE);
    for (n = scope->children; n != NULL; n = n->next) {
        if (n->kind == CONF_NODE_OPTION)
            conf_walk_option(ctx, n, bit, base, seen);
        else
            conf_walk_scope(ctx, n, bit, base);
    }
    /* Domain and Binding options inherit instead, once the global scope
     * is complete: see conf_domains_finish(). */
    if (conf_scope_row(bit)->inherits)
        return;
    for (i = 0; i < ARRAY_SIZE(conf_directives); i++) {
        const struct conf_directive *d = &conf_directives[i];

        if ((d->scopes & bit) && seen[i] == NULL && d->def != NULL)
            conf_default(ctx, d, conf_target(d, bit, base));
    }
}


/* conf_domain_enter - one Domain "example.com" { } of the global scope */
static void *
conf_domain_enter(struct conf_ctx *ctx, const struct conf_node *n,
                  void *parent)
{
    struct conf *c = parent;
    struct conf_domain *dom;
    char *p;

    ASSERT(c == ctx->c);
    ASSERT(n->instance != NULL);
    if (n->instance[0] == '/') {
        conf_errors_add(ctx->errs, n->file, n->line,
                        "bad Domain name '%s': regex domains are not "
                        "supported; write one Domain per name",
                        n->instance);
        return NULL;
    }
    if (strchr(n->instance, '*') != NULL) {
        conf_errors_add(ctx->errs, n->file, n->line,
                        "bad Domain name '%s': wildcards are not "
                        "supported; write one Domain per name",
                        n->instance);
        return NULL;
    }
    if (conf_host_name_check(n->instance) < 0) {
        conf_errors_add(ctx->errs, n->file, n->line,
                        "bad Domain name '%s': expected a domain name such "
                        "as example.com", n->instance);
        return NULL;
    }
    c->domains = conf_grow(c->domains, c->domain_count, sizeof *c->domains);
    dom = &c->domains[c->domain_count++];
    memset(dom, 0, sizeof *dom);
    dom->name = xstrdup(n->instance);
    for (p = dom->name; *p != '\0'; p++) {
        if (*p >= 'A' && *p <= 'Z')
            *p = (char)(*p - 'A' + 'a');
    }
    dom->file = c->path;
    dom->line = n->line;
    return dom;
}


/* conf_binding_enter - one Binding "name" { } of the global scope */
static void *
conf_binding_enter(struct conf_ctx *ctx, const struct conf_node *n,
                   void *parent)
{
    struct conf *c = parent;
    struct conf_binding *b;
    size_t len = strlen(n->instance);

    ASSERT(c == ctx->c);
    /* Momentum's rule: binding names take no spaces or colons. */
    if (len == 0 || len > 255 || strpbrk(n->instance, " \t:") != NULL) {
        conf_errors_add(ctx->errs, n->file, n->line,
                        "bad Binding name '%s': expected 1 to 255 "
                        "characters without spaces or colons", n->instance);
        return NULL;
    }
    c->bindings = conf_grow(c->bindings, c->binding_count,
                            sizeof *c->bindings);
    b = &c->bindings[c->binding_count++];
    memset(b, 0, sizeof *b);
    b->name = xstrdup(n->instance);
    b->file = c->path;
    b->line = n->line;
    b->overrides.file = c->path;
    b->overrides.line = n->line;
    return b;
}


/*
 * conf_scriptlet_enter - scriptlet "NAME" { }: Momentum allows the scope
 * more than once, but only under one instance name; the bodies merge.
 */
static void *
conf_scriptlet_enter(struct conf_ctx *ctx, const struct conf_node *n,
                     void *parent)
{
    struct conf *c = parent;
    struct conf_scriptlet *sl = &c->scriptlet;

    if (sl->instance != NULL && strcmp(sl->instance, n->instance) != 0) {
        conf_errors_add(ctx->errs, n->file, n->line,
                        "only one scriptlet instance name is allowed: "
                        "'%s' here, '%s' at line %d", n->instance,
                        sl->instance, sl->line);
        return NULL;
    }
    if (sl->instance == NULL) {
        sl->instance = xstrdup(n->instance);
        sl->file = c->path;
        sl->line = n->line;
    }
    return sl;
}


/* conf_script_enter - script "name" { source = "dir.file" } */
static void *
conf_script_enter(struct conf_ctx *ctx, const struct conf_node *n,
                  void *parent)
{
    struct conf_scriptlet *sl = parent;
    struct conf_script *sc;
    size_t i;

    for (i = 0; i < sl->script_count; i++) {
        if (strcmp(sl->scripts[i].name, n->instance) == 0) {
            conf_errors_add(ctx->errs, n->file, n->line,
                            "script '%s' is already defined at line %d",
                            n->instance, sl->scripts[i].line);
            return NULL;
        }
    }
    sl->scripts = conf_grow(sl->scripts, sl->script_count,
                            sizeof *sl->scripts);
    sc = &sl->scripts[sl->script_count++];
    memset(sc, 0, sizeof *sc);
    sc->name = xstrdup(n->instance);
    sc->file = ctx->c->path;
    sc->line = n->line;
    return sc;
}


/* conf_alerting_enter - alerting { }: Momentum wants it loaded with the
 * scriptlet module; ringmail has nothing to configure there. */
static void *
conf_alerting_enter(struct conf_ctx *ctx, const struct conf_node *n,
                    void *parent)
{
    static char nothing;

    return &nothing;
}


/* conf_datasource_enter - Datasource "name" { uri = ( "redis://..." ) } */
static void *
conf_datasource_enter(struct conf_ctx *ctx, const struct conf_node *n,
                      void *parent)
{
    struct conf *c = parent;
    struct conf_datasource *ds;
    size_t i, len = strlen(n->instance);

    if (len == 0 || len > 255) {
        conf_errors_add(ctx->errs, n->file, n->line,
                        "bad Datasource name '%s': expected 1 to 255 "
                        "characters", n->instance);
        return NULL;
    }
    for (i = 0; i < c->datasource_count; i++) {
        if (strcmp(c->datasources[i].name, n->instance) == 0) {
            conf_errors_add(ctx->errs, n->file, n->line,
                            "Datasource '%s' is already defined at line %d",
                            n->instance, c->datasources[i].line);
            return NULL;
        }
    }
    c->datasources = conf_grow(c->datasources, c->datasource_count,
                               sizeof *c->datasources);
    ds = &c->datasources[c->datasource_count++];
    memset(ds, 0, sizeof *ds);
    ds->name = xstrdup(n->instance);
    ds->file = c->path;
    ds->line = n->line;
    return ds;
}


/* conf_redis_uri_fini - free what conf_redis_uri_parse() allocated */
void
conf_redis_uri_fini(struct conf_redis_uri *u)
{
    free(u->text);
    free(u->password);
    memset(u, 0, sizeof *u);
}


/*
 * conf_redis_uri_parse - redis://[[USER]:PASSWORD@]HOST[:PORT][/DB]; HOST
 * is an IPv4 literal, [IPv6] or localhost (127.0.0.1): a shard must never
 * resolve a name with a blocking call. 0 or -EINVAL.
 */
int
conf_redis_uri_parse(const char *s, struct conf_redis_uri *out)
{
    char host[INET6_ADDRSTRLEN + 2];
    const char *p, *at, *hs, *he, *slash;
    uint64_t port = 6379, db = 0;
    size_t hl;

    memset(out, 0, sizeof *out);
    if (strncasecmp(s, "redis://", 8) != 0)
        return -EINVAL;
    p = s + 8;
    slash = strchr(p, '/');
    at = memchr(p, '@', slash != NULL ? (size_t)(slash - p) : strlen(p));
    if (at != NULL) {
        const char *colon = memchr(p, ':', (size_t)(at - p));

        if (colon == NULL || at == colon + 1)
            return -EINVAL;
        out->password = strndup(colon + 1, (size_t)(at - colon - 1));
        p = at + 1;
    }
    hs = p;
    if (*hs == '[') {
        he = strchr(hs, ']');
        if (he == NULL)
            goto fail;
        hs++;
        p = he + 1;
    } else {
        he = hs + strcspn(hs, ":/");
        p = he;
    }
    hl = (size_t)(he - hs);
    if (hl == 0 || hl >= sizeof host)
        goto fail;
    memcpy(host, hs, hl);
    host[hl] = '\0';
    if (*p == ':') {
        char num[8];
        size_t nl = strcspn(p + 1, "/");

        if (nl == 0 || nl >= sizeof num)
            goto fail;
        memcpy(num, p + 1, nl);
        num[nl] = '\0';
        if (conf_uint_from_str(num, &port) < 0 || port < 1 || port > 65535)
            goto fail;
        p += 1 + nl;
    }
    if (*p == '/' && p[1] != '\0') {
        if (conf_uint_from_str(p + 1, &db) < 0 || db > 65535)
            goto fail;
    } else if (*p != '\0' && strcmp(p, "/") != 0) {
        goto fail;
    }
    if (strcasecmp(host, "localhost") == 0)
        strcpy(host, "127.0.0.1");
    {
        struct sockaddr_in *sin = (struct sockaddr_in *)&out->addr;
        struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)&out->addr;

        if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
            sin->sin_family = AF_INET;
            sin->sin_port = htons((uint16_t)port);
            out->addr_len = sizeof *sin;
        } else if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
            sin6->sin6_family = AF_INET6;
            sin6->sin6_port = htons((uint16_t)port);
            out->addr_len = sizeof *sin6;
        } else {
            goto fail;
        }
    }
    out->db = (unsigned)db;
    {
        char buf[512];

        snprintf(buf, sizeof buf, "redis://%s%s%s%s:%u/%u",
                 out->password != NULL ? ":***@" : "",
                 out->addr.ss_family == AF_INET6 ? "[" : "", host,
                 out->addr.ss_family == AF_INET6 ? "]" : "",
                 (unsigned)port, out->db);
        out->text = xstrdup(buf);
    }
    return 0;
fail:
    conf_redis_uri_fini(out);
    return -EINVAL;
}


/* conf_redis_uri_item - one uri of a Datasource's list */
static int
conf_redis_uri_item(struct conf_ctx *ctx, const struct conf_directive *d,
                    const struct conf_node *n, const char *item, void *elem)
{
    if (conf_redis_uri_parse(item, elem) == 0)
        return 0;
    conf_errors_add(ctx->errs, n->file, n->line,
                    "option '%s': bad uri '%s': expected "
                    "redis://[:PASSWORD@]ADDRESS[:PORT][/DB] with an IP "
                    "address (or localhost), as in redis://127.0.0.1:6379/0",
                    d->name, item);
    return -EINVAL;
}


static void
conf_redis_uri_fini_elem(void *elem)
{
    conf_redis_uri_fini(elem);
}

static const struct conf_list_type conf_redis_uri_list = {
    sizeof(struct conf_redis_uri), "uris", conf_redis_uri_item,
    conf_redis_uri_fini_elem
};


/* conf_set_redis_uris - uri = ( "redis://..." ... ): 1 to d->max of them */
static int
conf_set_redis_uris(struct conf_ctx *ctx, const struct conf_directive *d,
                    const struct conf_node *n, void *base)
{
    return conf_set_list(ctx, d, n, base, &conf_redis_uri_list);
}


/* conf_datasource_check - after the file: every Datasource has a uri */
static void
conf_datasource_check(struct conf_ctx *ctx)
{
    size_t i;

    for (i = 0; i < ctx->c->datasource_count; i++) {
        struct conf_datasource *ds = &ctx->c->datasources[i];

        if (ds->uri_count == 0)
            conf_errors_add(ctx->errs, ds->file, ds->line,
                            "Datasource '%s' has no uri (write uri = ( "
                            "\"redis://127.0.0.1:6379/0\" ))", ds->name);
        if (ds->reconnect_min_ms > ds->reconnect_max_ms)
            conf_errors_add(ctx->errs, ds->file, ds->line,
                            "Datasource '%s': reconnect_backoff_min is "
                            "above reconnect_backoff_max", ds->name);
    }
}


/* conf_scriptlet_check - after the file: every script has a source */
static void
conf_scriptlet_check(struct conf_ctx *ctx)
{
    struct conf_scriptlet *sl = &ctx->c->scriptlet;
    size_t i;

    for (i = 0; i < sl->script_count; i++) {
        if (sl->scripts[i].source == NULL)
            conf_errors_add(ctx->errs, sl->scripts[i].file,
                            sl->scripts[i].line,
                            "script '%s' has no source (write source = "
                            "\"dir.name\")", sl->scripts[i].name);
    }
}


/* conf_path_item - one directory of a list, resolved against the file's */
static int
conf_path_item(struct conf_ctx *ctx, const struct conf_directive *d,
               const struct conf_node *n, const char *item, void *elem)
{
    if (item[0] == '\0') {
        conf_errors_add(ctx->errs, n->file, n->line,
                        "option '%s': empty directory name", d->name);
        return -EINVAL;
    }
    *(char **)elem = conf_path_resolve(ctx->c->dir, item);
    return 0;
}


static void
conf_path_fini(void *elem)
{
    free(*(char **)elem);
}

static const struct conf_list_type conf_path_list = {
    sizeof(char *), "directories", conf_path_item, conf_path_fini
};


/* conf_set_paths - directories: a NULL-ended char ** at offset, count */
static int
conf_set_paths(struct conf_ctx *ctx, const struct conf_directive *d,
               const struct conf_node *n, void *base)
{
    return conf_set_list(ctx, d, n, base, &conf_path_list);
}


/* conf_domain_cmp - qsort: by name, then by line */
static int
conf_domain_cmp(const void *a, const void *b)
{
    const struct conf_domain *x = a, *y = b;
    int rc = strcmp(x->name, y->name);

    if (rc != 0)
        return rc;
    return (x->line > y->line) - (x->line < y->line);
}


/* conf_binding_cmp - qsort: by name, then by line */
static int
conf_binding_cmp(const void *a, const void *b)
{
    const struct conf_binding *x = a, *y = b;
    int rc = strcmp(x->name, y->name);

    if (rc != 0)
        return rc;
    return (x->line > y->line) - (x->line < y->line);
}


/* conf_global_nodes - each option node of the global scope, by row */
static void
conf_global_nodes(const struct conf_node *root,
                  const struct conf_node **nodes)
{
    const struct conf_node *n;

    for (n = root->children; n != NULL; n = n->next) {
        const struct conf_directive *d;

        if (n->kind != CONF_NODE_OPTION)
            continue;
        d = conf_directive_find(n->name);
        if (d != NULL && nodes[d - conf_directives] == NULL)
            nodes[d - conf_directives] = n;
    }
}


/* conf_domains_finish - sort Domains, reject duplicates, and give each
 * the global value of every option it did not write */
static void
conf_domains_finish(struct conf_ctx *ctx, const struct conf_node *root,
                    int inherit)
{
    const struct conf_node *global[ARRAY_SIZE(conf_directives)] = { 0 };
    struct conf *c = ctx->c;
    size_t i, j;

    if (c->domain_count > 1) {
        qsort(c->domains, c->domain_count, sizeof *c->domains,
              conf_domain_cmp);
    }
    for (i = 1; i < c->domain_count; i++) {
        if (strcmp(c->domains[i - 1].name, c->domains[i].name) != 0)
            continue;
        for (j = i - 1; j > 0; j--) {
            if (strcmp(c->domains[j - 1].name, c->domains[i].name) != 0)
                break;
        }
        conf_errors_add(ctx->errs, c->path, c->domains[i].line,
                        "duplicate Domain '%s' (first on line %d)",
                        c->domains[i].name, c->domains[j].line);
    }
    if (!inherit)
        return;
    /* Running the setter again on the global text (or the default) gives
     * each Domain its own copy, with no per-option copy code to keep. */
    conf_global_nodes(root, global);
    for (i = 0; i < c->domain_count; i++) {
        struct conf_domain *dom = &c->domains[i];

        for (j = 0; j < ARRAY_SIZE(conf_directives); j++) {
            const struct conf_directive *d = &conf_directives[j];
            int rc;

            if (d->opt == 0 || (dom->set & d->opt) ||
                (d->scopes & CONF_SCOPE_DOMAIN) == 0)
                continue;
            if (global[j] != NULL) {
                rc = d->set(ctx, d, global[j], dom);
                ASSERT(rc == 0);
            } else if (d->def != NULL) {
                conf_default(ctx, d, dom);
            }
        }
    }
}


/* conf_bindings_finish - sort Bindings, reject duplicates, add the
 * built-in "default" unless declared, fill EHLO_Hostname */
static void
conf_bindings_finish(struct conf_ctx *ctx)
{
    struct conf *c = ctx->c;
    struct conf_binding *b;
    char text[INET6_ADDRSTRLEN];
    size_t i, j;

    if (c->binding_count > 1) {
        qsort(c->bindings, c->binding_count, sizeof *c->bindings,
              conf_binding_cmp);
    }
    for (i = 1; i < c->binding_count; i++) {
        if (strcmp(c->bindings[i - 1].name, c->bindings[i].name) != 0)
            continue;
        for (j = i - 1; j > 0; j--) {
            if (strcmp(c->bindings[j - 1].name, c->bindings[i].name) != 0)
                break;
        }
        conf_errors_add(ctx->errs, c->path, c->bindings[i].line,
                        "duplicate Binding '%s' (first on line %d)",
                        c->bindings[i].name, c->bindings[j].line);
    }
    if (conf_binding_find(c, "default") == NULL) {
        c->bindings = conf_grow(c->bindings, c->binding_count,
                                sizeof *c->bindings);
        b = &c->bindings[c->binding_count++];
        memset(b, 0, sizeof *b);
        b->name = xstrdup("default");
        b->file = c->path;
        b->overrides.file = c->path;
        qsort(c->bindings, c->binding_count, sizeof *c->bindings,
              conf_binding_cmp);
    }
    for (i = 0; i < c->binding_count; i++) {
        b = &c->bindings[i];
        if (b->ehlo_hostname == NULL)
            b->ehlo_hostname = xstrdup(c->hostname);
        if (b->bind_address_len == 0)
            continue;
        if (b->bind_address.ss_family == AF_INET6) {
            inet_ntop(AF_INET6, &((struct sockaddr_in6 *)(void *)
                                  &b->bind_address)->sin6_addr,
                      text, sizeof text);
        } else {
            inet_ntop(AF_INET, &((struct sockaddr_in *)(void *)
                                 &b->bind_address)->sin_addr,
                      text, sizeof text);
        }
        b->bind_address_text = xstrdup(text);
    }
    c->binding_default = conf_binding_find(c, "default");
    ASSERT(c->binding_default != NULL);
}


/* conf_throttles_number - one bucket per scope that writes a throttle */
static void
conf_throttles_number(struct conf *c)
{
    unsigned next = 1;
    size_t i;

    c->domain_default.outbound_throttle_messages.bucket = 0;
    for (i = 0; i < c->domain_count; i++) {
        struct conf_domain *dom = &c->domains[i];

        dom->outbound_throttle_messages.bucket =
            (dom->set & CONF_OPT_OUTBOUND_THROTTLE_MESSAGES) ? next++ : 0;
    }
    for (i = 0; i < c->binding_count; i++) {
        struct conf_domain *o = &c->bindings[i].overrides;

        if (o->set & CONF_OPT_OUTBOUND_THROTTLE_MESSAGES)
            o->outbound_throttle_messages.bucket = next++;
    }
    c->throttle_bucket_count = next;
}


/* conf_domain_key_cmp - bsearch: a domain name against an entry */
static int
conf_domain_key_cmp(const void *key, const void *entry)
{
    return strcasecmp(key, ((const struct conf_domain *)entry)->name);
}


/* conf_domain_find - the effective options for a destination domain:
 * its Domain scope, or conf->domain_default; never NULL */
const struct conf_domain *
conf_domain_find(const struct conf *c, const char *domain)
{
    const struct conf_domain *dom = NULL;

    ASSERT(c != NULL);
    /* Names are stored in lower case and sorted with strcmp(), which is
     * the order strcasecmp() sees: bsearch() may fold case. */
    if (domain != NULL && c->domain_count > 0) {
        dom = bsearch(domain, c->domains, c->domain_count,
                      sizeof *c->domains, conf_domain_key_cmp);
    }
    return dom != NULL ? dom : &c->domain_default;
}


/* conf_binding_key_cmp - bsearch: a binding name against an entry */
static int
conf_binding_key_cmp(const void *key, const void *entry)
{
    return strcmp(key, ((const struct conf_binding *)entry)->name);
}


/* conf_binding_find - the Binding named name (case-sensitive), or NULL */
const struct conf_binding *
conf_binding_find(const struct conf *c, const char *name)
{
    ASSERT(c != NULL);
    if (name == NULL || c->binding_count == 0)
        return NULL;
    return bsearch(name, c->bindings, c->binding_count,
                   sizeof *c->bindings, conf_binding_key_cmp);
}


/* conf_binding_default - the "default" binding, declared or built in */
const struct conf_binding *
conf_binding_default(const struct conf *c)
{
    ASSERT(c->binding_default != NULL);
    return c->binding_default;
}


/* conf_binding_gateway - b's Gateway if b sets one, else d's; NULL: MX */
const struct conf_gateway *
conf_binding_gateway(const struct conf_binding *b,
                     const struct conf_domain *d)
{
    ASSERT(d != NULL);
    if (b != NULL && (b->overrides.set & CONF_OPT_GATEWAY))
        return &b->overrides.gateway;
    return d->gateway.text != NULL ? &d->gateway : NULL;
}


/* conf_binding_max_outbound_connections - b's limit if set, else d's */
unsigned
conf_binding_max_outbound_connections(const struct conf_binding *b,
                                      const struct conf_domain *d)
{
    ASSERT(d != NULL);
    if (b != NULL && (b->overrides.set & CONF_OPT_MAX_OUTBOUND_CONNECTIONS))
        return b->overrides.max_outbound_connections;
    return d->max_outbound_connections;
}


/* conf_binding_throttle - b's Outbound_Throttle_Messages if set, else d's */
const struct conf_throttle *
conf_binding_throttle(const struct conf_binding *b,
                      const struct conf_domain *d)
{
    ASSERT(d != NULL);
    if (b != NULL &&
        (b->overrides.set & CONF_OPT_OUTBOUND_THROTTLE_MESSAGES))
        return &b->overrides.outbound_throttle_messages;
    return &d->outbound_throttle_messages;
}


/* conf_hostname_default - this machine's name, for want of Hostname */
static char *
conf_hostname_default(void)
{
    char name[256];

    if (gethostname(name, sizeof name) < 0 || name[0] == '\0')
        return xstrdup("localhost");
    name[sizeof name - 1] = '\0';
    return xstrdup(name);
}


/* conf_node_canon - n as text: names (case-folded), instances, values */
static void
conf_node_canon(const struct conf_node *n, struct outbuf *o)
{
    const struct conf_node *ch;
    const char *p;
    size_t i;

    for (p = n->name; *p != '\0'; p++)
        outbuf_printf(o, "%c", tolower((unsigned char)*p));
    if (n->kind == CONF_NODE_SCOPE) {
        if (n->instance != NULL) {
            outbuf_puts(o, " ");
            outbuf_json_str(o, n->instance);
        }
        outbuf_puts(o, " {");
        for (ch = n->children; ch != NULL; ch = ch->next) {
            outbuf_puts(o, " ");
            conf_node_canon(ch, o);
        }
        outbuf_puts(o, " }");
        return;
    }
    outbuf_puts(o, " =");
    if (n->value_kind != CONF_VALUE_LIST) {
        outbuf_puts(o, " ");
        outbuf_json_str(o, n->value);
        return;
    }
    outbuf_puts(o, " (");
    for (i = 0; i < n->item_count; i++) {
        outbuf_puts(o, " ");
        outbuf_json_str(o, n->items[i]);
    }
    outbuf_puts(o, " )");
}


/* conf_stmt_cmp - qsort: by key, then by text */
static int
conf_stmt_cmp(const void *a, const void *b)
{
    const struct conf_stmt *x = a, *y = b;
    int rc = strcasecmp(x->key, y->key);

    return rc != 0 ? rc : strcmp(x->text, y->text);
}


/* conf_start_stmts - record root's top-level statements but scriptlet */
static void
conf_start_stmts(struct conf *c, const struct conf_node *root)
{
    const struct conf_node *n;
    size_t count = 0;

    for (n = root->children; n != NULL; n = n->next)
        count++;
    c->start_stmts = xcalloc(count + 1, sizeof *c->start_stmts);
    for (n = root->children; n != NULL; n = n->next) {
        struct conf_stmt *st = &c->start_stmts[c->start_stmt_count];
        struct outbuf o = { 0 };

        if (n->kind == CONF_NODE_SCOPE && strcasecmp(n->name, "scriptlet") == 0)
            continue;
        conf_node_canon(n, &o);
        st->text = xstrdup(o.len > 0 ? o.p : "");
        outbuf_fini(&o);
        if (n->kind == CONF_NODE_SCOPE && n->instance != NULL) {
            st->key = xmalloc(strlen(n->name) + strlen(n->instance) + 4);
            sprintf(st->key, "%s \"%s\"", n->name, n->instance);
        } else {
            st->key = xstrdup(n->name);
        }
        c->start_stmt_count++;
    }
    qsort(c->start_stmts, c->start_stmt_count, sizeof *c->start_stmts,
          conf_stmt_cmp);
}


/* conf_load - parse and check the file at path; NULL after any error */
struct conf *
conf_load(const char *path, struct conf_errors *errs)
{
    struct conf_ctx ctx = { 0 };
    struct conf_node *root;
    struct conf *c;
    size_t before;

    ASSERT(path != NULL);
    ASSERT(errs != NULL);
    before = errs->count;
    root = conf_parse_file(path, errs);
    if (root == NULL)
        return NULL;

    c = xcalloc(1, sizeof *c);
    c->path = xstrdup(path);
    c->dir = conf_dir_of(path);
    if (c->dir == NULL) {
        conf_errors_add(errs, path, 0, "cannot resolve its directory: %s",
                        strerror(errno));
        goto out;
    }
    ctx.c = c;
    ctx.errs = errs;
    ctx.syntax_errors = errs->count > before;
    conf_walk(&ctx, root, CONF_SCOPE_GLOBAL, c);
    if (c->hostname == NULL)
        c->hostname = conf_hostname_default();
    if (c->mailer_daemon == NULL) {
        c->mailer_daemon = xmalloc(strlen(c->hostname) + 16);
        sprintf(c->mailer_daemon, "MAILER-DAEMON@%s", c->hostname);
    }
    if (c->listener_count == 0 && !ctx.syntax_errors)
        conf_errors_add(errs, path, 0, "no ESMTP_Listener configured");
    /* Inherit only from a global scope that is all valid: its setters
     * run again for each Domain and must not report twice. */
    conf_domains_finish(&ctx, root, errs->count == before);
    conf_bindings_finish(&ctx);
    conf_throttles_number(c);
    conf_scriptlet_check(&ctx);
    conf_ops_finish(&ctx);
    conf_datasource_check(&ctx);
    conf_start_stmts(c, root);

out:
    conf_node_free(root);
    conf_errors_sort(errs, before);
    if (errs->count > before) {
        conf_free(c);
        return NULL;
    }
    return c;
}


void
conf_start_changes(const struct conf *running, const struct conf *file,
                   void (*fn)(const char *key, void *arg), void *arg)
{
    const struct conf_stmt *a = running->start_stmts;
    const struct conf_stmt *b = file->start_stmts;
    size_t i = 0, j = 0, na = running->start_stmt_count;
    size_t nb = file->start_stmt_count;

    /* Both sorted by key, then text: walk the keys in step. */
    while (i < na || j < nb) {
        const char *key;
        int same = 1;

        if (j >= nb || (i < na && strcasecmp(a[i].key, b[j].key) < 0))
            key = a[i].key;
        else
            key = b[j].key;
        while (i < na && j < nb && strcasecmp(a[i].key, key) == 0 &&
               strcasecmp(b[j].key, key) == 0) {
            same = same && strcmp(a[i].text, b[j].text) == 0;
            i++;
            j++;
        }
        for (; i < na && strcasecmp(a[i].key, key) == 0; i++)
            same = 0;
        for (; j < nb && strcasecmp(b[j].key, key) == 0; j++)
            same = 0;
        if (!same)
            fn(key, arg);
    }
}


/* conf_free - free a configuration generation and everything it holds */
void
conf_free(struct conf *c)
{
    size_t i, j;

    if (c == NULL)
        return;
    for (i = 0; i < c->start_stmt_count; i++) {
        free(c->start_stmts[i].key);
        free(c->start_stmts[i].text);
    }
    free(c->start_stmts);
    for (i = 0; i < c->listener_count; i++) {
        struct conf_esmtp_listener *l = &c->listeners[i];

        for (j = 0; j < l->listen_count; j++)
            free(l->listens[j].text);
        free(l->listens);
        free(l->relay_hosts);
        free(l->name);
    }
    free(c->listeners);
    for (i = 0; i < c->domain_count; i++) {
        free(c->domains[i].name);
        conf_gateway_fini(&c->domains[i].gateway);
    }
    free(c->domains);
    conf_gateway_fini(&c->domain_default.gateway);
    for (i = 0; i < c->binding_count; i++) {
        struct conf_binding *b = &c->bindings[i];

        free(b->name);
        free(b->bind_address_text);
        free(b->ehlo_hostname);
        conf_gateway_fini(&b->overrides.gateway);
    }
    free(c->bindings);
    for (i = 0; i < c->scriptlet.script_count; i++) {
        free(c->scriptlet.scripts[i].name);
        free(c->scriptlet.scripts[i].source);
    }
    free(c->scriptlet.scripts);
    for (i = 0; i < c->scriptlet.search_path_count; i++)
        free(c->scriptlet.search_path[i]);
    free(c->scriptlet.search_path);
    free(c->scriptlet.instance);
    for (i = 0; i < c->datasource_count; i++) {
        struct conf_datasource *ds = &c->datasources[i];

        for (j = 0; j < ds->uri_count; j++)
            conf_redis_uri_fini(&ds->uris[j]);
        free(ds->uris);
        free(ds->password);
        free(ds->name);
    }
    free(c->datasources);
    for (i = 0; i < c->nameserver_count; i++)
        free(c->nameservers[i].text);
    free(c->nameservers);
    for (i = 0; i < c->control_listen_count; i++)
        free(c->control_listens[i].path);
    free(c->control_listens);
    for (i = 0; i < c->metrics_listen_count; i++)
        free(c->metrics_listens[i].text);
    free(c->metrics_listens);
    free(c->run_directory);
    free(c->user);
    free(c->mailer_daemon);
    free(c->delivery_log);
    free(c->paniclog);
    free(c->hostname);
    free(c->spool_base);
    free(c->dir);
    free(c->path);
    free(c);
}
