/*
 * dns - per-shard asynchronous MX and address resolver (c-ares on the ring)
 *
 * SYNOPSIS
 *   void dns_opts_default(struct dns_opts *o);
 *   int  dns_init(struct dns *d, struct loop *lp,
 *                 const char *const *servers, size_t server_count);
 *   int  dns_init_opts(struct dns *d, struct loop *lp,
 *                      const struct dns_opts *o);
 *   void dns_resolve_mx(struct dns *d, const char *domain,
 *                       struct dns_req *req, dns_req_fn *cb);
 *   void dns_resolve_a(struct dns *d, const char *host,
 *                      struct dns_req *req, dns_req_fn *cb);
 *   void dns_result_free(struct dns_result *res);
 *   int  dns_rr_type(const char *name);
 *   void dns_lookup_rr(struct dns *d, const char *name, int type,
 *                      struct dns_rr_req *req, dns_rr_fn *cb);
 *   void dns_rr_free(struct dns_rr_req *req);
 *   const char *dns_status_name(enum dns_status st);
 *   const char *dns_status_code(enum dns_status st);
 *   void dns_fini(struct dns *d);
 * DESCRIPTION
 *   c-ares (1.18, Debian's libc-ares) builds the queries and parses the
 *   answers; its sockets are driven by the shard's ring. c-ares reports
 *   which descriptors it wants watched (ARES_OPT_SOCK_STATE_CB); each gets
 *   a one-shot io_uring POLL_ADD, re-armed after ares_process_fd() has run.
 *   One io_uring timeout, kept at ares_timeout()'s next deadline, runs
 *   c-ares' retries and timeouts. Only ares_query() is used: no hosts file,
 *   no search list, nothing blocking after dns_init().
 *
 *   dns_init() creates the channel. servers are "ip", "ip:port" or
 *   "[ipv6]:port" (the Nameservers option); with none, /etc/resolv.conf
 *   is read (once, here). dns_init_opts() also sets timeouts, tries, TTL
 *   bounds, the cache size and whether AAAA is asked. Both return 0 or
 *   -EINVAL (bad server), -ENOMEM, -EIO (c-ares refused to start; the
 *   reason goes to the paniclog).
 *
 *   dns_resolve_mx() finds where mail for domain goes: the MX hosts,
 *   sorted by preference (equal preferences in a random order for every
 *   request, RFC 5321 5.1), each with its addresses (IPv4 first, then
 *   IPv6); hosts without any address are left out. A domain without MX
 *   gets its own address as the implicit MX (result->implicit_mx). The
 *   status says what to do with the message:
 *     DNS_OK          deliver to result->hosts in order
 *     DNS_TEMPFAIL    defer, 4.4.3: SERVFAIL, REFUSED, timeout, network,
 *                     malformed answer, out of memory, shut down
 *     DNS_NXDOMAIN    bounce, 5.1.2: the domain does not exist
 *     DNS_NO_MX_OR_A  bounce, 5.4.4: no MX and no address, or MX hosts
 *                     of which none has an address
 *     DNS_NULL_MX     bounce at once, 5.1.10: "MX 0 ." (RFC 7505)
 *   dns_resolve_a() resolves one host name (a Gateway): the same result
 *   with one host, pref 0; an IPv4 or IPv6 literal is answered without a
 *   query. DNS_NO_MX_OR_A there means the name has no address.
 *
 *   cb runs exactly once, always from the loop's deferred pass (never
 *   from inside dns_resolve_*() or from inside c-ares), with req->status,
 *   req->why (static text for logs: "timeout", "SERVFAIL", ...) and, for
 *   DNS_OK only, req->result.
 *
 *   Answers are cached per shard for their TTL, clamped to
 *   [ttl_min_s, ttl_max_s]. An MX entry lives as long as the shortest TTL
 *   among its MX, CNAME and address records (ares_parse_mx_reply() drops
 *   TTLs, so dns_answer_ttl() reads them from the answer). NXDOMAIN and
 *   "no data" are cached for the SOA minimum of the authority section
 *   (RFC 2308), or DNS_NEG_TTL_S when there is none. TEMPFAIL is cached
 *   for tempfail_ttl_s (a few seconds) so a burst of mail to a failing
 *   domain does not hammer its servers. At most cache_entries_max names
 *   are kept (MX and address entries together), least recently used
 *   evicted first; names being resolved are never evicted, and when every
 *   entry is in flight a new name fails at once with TEMPFAIL. Identical
 *   lookups in flight share one query: every waiter gets the answer.
 *
 *   dns_fini() destroys the channel. Every lookup still in flight calls
 *   back once more, from the loop's deferred pass, with DNS_TEMPFAIL and
 *   why "resolver shut down"; such callbacks must not use d again. Polls
 *   and the timer are cancelled; their small records free themselves when
 *   the cancellation CQEs are reaped, so the loop should turn at least
 *   once more before loop_fini() (or they leak, a few dozen bytes each).
 *   dns_fini() may be called from a dns callback.
 * OWNERSHIP
 *   struct dns and req belong to the caller. req must stay valid until cb
 *   has run. req->result is the caller's, one malloc block: release it
 *   with dns_result_free(); its host names and addresses point into it.
 * THREADS
 *   Shard-local: one struct dns per shard, used only by the thread that
 *   owns lp. ares_library_init() runs once per process (pthread_once).
 * ERRORS
 *   Lookup failures are statuses, never logged here: the caller logs them
 *   once with its session and message. A malformed answer is TEMPFAIL.
 * SECURITY
 *   DNS answers are untrusted. c-ares checks the query id, source address
 *   and question before an answer is accepted; its parsers and
 *   dns_answer_ttl() are bounds-checked and a parse error is TEMPFAIL.
 *   Names from answers are used only when they are valid host names
 *   (letters, digits, '-', '_', labels of 1..63, at most 253 bytes); an
 *   MX answer without any is TEMPFAIL, as a garbled answer must not
 *   bounce mail.
 *   Limits: DNS_MX_HOSTS_MAX hosts per domain, DNS_HOST_ADDRS_MAX
 *   addresses per host and family, cache_entries_max entries.
 * SEE ALSO
 *   loop.h, PLATFORM.md; c-ares: ares_init_options(3), ares_query(3)
 */
#ifndef RINGMAIL_DNS_H
#define RINGMAIL_DNS_H

#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>

#include "loop.h"

#define DNS_NAME_MAX        253    /* RFC 1035, without the final dot */
#define DNS_MX_HOSTS_MAX    10     /* MX hosts kept, lowest preferences */
#define DNS_HOST_ADDRS_MAX  8      /* addresses kept per host and family */

enum dns_status {
    DNS_OK = 0,
    DNS_TEMPFAIL,       /* 4.4.3 */
    DNS_NXDOMAIN,       /* 5.1.2 */
    DNS_NO_MX_OR_A,     /* 5.4.4 */
    DNS_NULL_MX,        /* 5.1.10 */
};

struct dns_addr {
    int family;                 /* AF_INET or AF_INET6 */
    union {
        struct in_addr v4;
        struct in6_addr v6;
    } u;
};

struct dns_host {
    const char *name;           /* lower case, no final dot */
    unsigned pref;              /* MX preference; 0 when implicit */
    size_t addr_count;          /* at least 1 */
    const struct dns_addr *addrs;   /* IPv4 first */
};

struct dns_result {
    size_t block_bytes;         /* size of this malloc block */
    uint32_t ttl_s;             /* seconds the answer stays valid */
    int implicit_mx;            /* no MX: the domain's own address */
    size_t host_count;          /* at least 1 */
    struct dns_host hosts[];
};

struct dns_req;
struct dns;

/* dns_req_fn - a lookup finished: status, why and (DNS_OK) result are set */
typedef void dns_req_fn(struct dns_req *req);

/* dns_waiter - one party waiting on a cache entry (private) */
struct dns_waiter;
typedef void dns_waiter_fn(struct dns_waiter *w, enum dns_status st,
                           const char *why, const struct dns_result *res,
                           uint32_t ttl_s);
struct dns_waiter {
    dns_waiter_fn *fn;
    struct dns_waiter *next;
    int external;               /* a struct dns_req, not an MX job */
};

struct dns_req {
    /* Results, valid when cb runs. */
    enum dns_status status;
    const char *why;            /* static text for logs */
    struct dns_result *result;  /* DNS_OK only; caller frees */
    /* Private. */
    struct dns_waiter w;
    struct op op;               /* loop_defer(): cb runs in the loop */
    struct dns *d;              /* used until the answer is deferred */
    int mx;                     /* shuffle equal preferences */
    dns_req_fn *cb;
};

struct dns_opts {
    const char *const *servers; /* NULL: /etc/resolv.conf */
    size_t server_count;
    unsigned timeout_ms;        /* first try; c-ares doubles each round */
    unsigned tries;             /* rounds over the server list */
    int ipv6;                   /* also ask AAAA */
    uint32_t ttl_min_s;
    uint32_t ttl_max_s;
    uint32_t tempfail_ttl_s;    /* 0: TEMPFAIL is not cached */
    size_t cache_entries_max;
};

#define DNS_TIMEOUT_MS      2000   /* 2 s, then 4 s: 6 s per lookup */
#define DNS_TRIES           2
#define DNS_TTL_MIN_S       5      /* floor: a TTL of 0 still coalesces */
#define DNS_TTL_MAX_S       3600   /* cap: an hour, even for week-long TTLs */
#define DNS_NEG_TTL_S       60     /* negative answer without SOA */
#define DNS_TEMPFAIL_TTL_S  5
#define DNS_CACHE_ENTRIES   10000

struct dns_stats {
    uint64_t lookups;           /* dns_resolve_*() calls */
    uint64_t hits;              /* answered from the cache */
    uint64_t coalesced;         /* joined a lookup in flight */
    uint64_t queries;           /* ares_query() calls */
    uint64_t evictions;
};

struct ares_channeldata;
struct dns_sock;
struct dns_timer;
struct dns_entry;

struct dns {
    struct loop *lp;
    struct ares_channeldata *channel;
    struct dns_sock *socks;     /* descriptors c-ares wants watched */
    struct dns_timer *timer;
    struct dns_entry **buckets;
    size_t bucket_mask;
    struct dns_entry *lru_head; /* finished entries, most recent first */
    struct dns_entry *lru_tail;
    size_t entry_count;
    size_t entry_max;
    int ipv6;
    uint32_t ttl_min_s;
    uint32_t ttl_max_s;
    uint32_t tempfail_ttl_s;
    uint64_t rng;
    int closing;                /* inside dns_fini() */
    int completing;             /* inside dns_entry_complete() */
    struct dns_stats stats;
};

void dns_opts_default(struct dns_opts *o);
int dns_init(struct dns *d, struct loop *lp, const char *const *servers,
             size_t server_count);
int dns_init_opts(struct dns *d, struct loop *lp, const struct dns_opts *o);
void dns_fini(struct dns *d);
void dns_resolve_mx(struct dns *d, const char *domain, struct dns_req *req,
                    dns_req_fn *cb);
void dns_resolve_a(struct dns *d, const char *host, struct dns_req *req,
                   dns_req_fn *cb);
void dns_result_free(struct dns_result *res);

/*
 * Record lookups for policy (msys.dnsLookup): one query of any type
 * (dns_rr_type()), uncached, not coalesced. cb runs once, from the loop's
 * deferred pass, with status DNS_OK (count > 0 records), DNS_NO_MX_OR_A
 * (the name exists, no record of the type), DNS_NXDOMAIN or DNS_TEMPFAIL
 * (why says what: "no records", "NXDOMAIN", "timeout", ...). Records: addresses as
 * text (A, AAAA), MX hosts with their preference (best first), TXT
 * records with their strings joined, PTR and NS names. At most 64
 * records, 64 KiB of text. The caller frees with dns_rr_free().
 */
struct dns_rr {
    unsigned pref;              /* MX preference; 0 otherwise */
    const char *text;
};

struct dns_rr_req;
typedef void dns_rr_fn(struct dns_rr_req *req);

struct dns_rr_req {
    enum dns_status status;
    const char *why;
    struct dns_rr *rr;          /* malloc'd block, texts inside */
    size_t count;
    /* private */
    struct op op;
    struct dns *d;
    dns_rr_fn *cb;
    int type;
};

int dns_rr_type(const char *name);
void dns_lookup_rr(struct dns *d, const char *name, int type,
                   struct dns_rr_req *req, dns_rr_fn *cb);
void dns_rr_free(struct dns_rr_req *req);
const char *dns_status_name(enum dns_status st);
const char *dns_status_code(enum dns_status st);

/*
 * dns_answer_ttl - the TTL a DNS answer may be cached for
 *
 * The smallest TTL among the answer section's rr_type and CNAME records;
 * when there are none, RFC 2308's negative TTL (the smaller of the
 * authority SOA's TTL and MINIMUM). Returns 0, -ENOENT when neither is
 * present, -EBADMSG when the packet is malformed. Exposed for tests.
 */
int dns_answer_ttl(const unsigned char *abuf, size_t alen, int rr_type,
                   uint32_t *ttl_s);

#endif
