/*
 * dns - see dns.h
 *
 * Inside: a cache entry per (kind, name) holds the waiters of a lookup in
 * flight, then the answer until it expires. An address entry (kind ADDR)
 * runs an A and, with ipv6, an AAAA query; an MX entry runs an MX query
 * and then waits, as an internal waiter, on the address entries of its
 * hosts (or of the domain itself: the implicit MX). Internal waiters are
 * called back synchronously; a struct dns_req is answered through
 * loop_defer(), so user code never runs inside c-ares or inside a
 * dns_resolve_*() call.
 */
#include "dns.h"

#include <arpa/inet.h>
#include <ares.h>
#include <errno.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>

#include "log.h"
#include "util.h"

/* RFC 1035 numbers; c-ares 1.18 has them only as glibc's T_* macros. */
#define DNS_C_IN            1
#define DNS_T_A             1
#define DNS_T_CNAME         5
#define DNS_T_SOA           6
#define DNS_T_MX            15
#define DNS_T_NS            2
#define DNS_T_PTR           12
#define DNS_T_TXT           16
#define DNS_T_AAAA          28

#define DNS_SERVERS_MAX     16     /* Nameservers entries */
#define DNS_SERVER_TEXT_MAX 64     /* "[v6 address]:port" fits */
/*
 * ares_timeout() rounds down to the millisecond, so a timer armed at its
 * deadline could fire before c-ares sees the query as late and be re-armed
 * at once; a millisecond more makes one expiry do the work.
 */
#define DNS_TIMER_SLACK_US  1000

enum dns_kind {
    DNS_KIND_MX,
    DNS_KIND_ADDR,
};

enum dns_entry_state {
    DNS_ENTRY_PENDING,          /* queries in flight, waiters queued */
    DNS_ENTRY_DONE,             /* answer cached until expires_ms */
};

struct dns_entry;

/* dns_query - the argument of one ares_query() */
struct dns_query {
    struct dns_entry *e;
    int type;
};

struct dns_entry {
    struct dns_entry *hnext;    /* hash chain */
    struct dns_entry *lru_prev; /* DONE entries only */
    struct dns_entry *lru_next;
    struct dns *d;
    struct dns_waiter *waiters; /* PENDING: FIFO */
    struct dns_waiter **waiters_tail;
    void *job;                  /* PENDING: dns_addr_job or dns_mx_job */
    struct dns_result *result;  /* DONE and DNS_OK */
    uint64_t expires_ms;
    uint64_t hash;
    enum dns_status status;
    const char *why;
    uint8_t kind;
    uint8_t state;
    char name[];                /* normalized */
};

/* dns_fam - what one A or AAAA query found */
struct dns_fam {
    int asked;
    enum dns_status status;
    const char *why;
    uint32_t ttl_s;
    size_t count;
    struct dns_addr addrs[DNS_HOST_ADDRS_MAX];
};

struct dns_addr_job {
    struct dns_query q[2];
    struct dns_fam fam[2];      /* [0] A, [1] AAAA */
    unsigned pending;
};

struct dns_mx_job;

struct dns_mx_host {
    struct dns_waiter w;        /* on the host's address entry */
    struct dns_mx_job *job;
    unsigned pref;
    enum dns_status status;
    const char *why;
    uint32_t ttl_s;
    size_t addr_count;
    struct dns_addr addrs[2 * DNS_HOST_ADDRS_MAX];
    char name[DNS_NAME_MAX + 1];
};

struct dns_mx_job {
    struct dns_query q;
    struct dns_entry *e;
    uint32_t ttl_s;             /* of the MX answer (or its NODATA) */
    int implicit;
    unsigned pending;
    size_t host_count;
    struct dns_mx_host hosts[DNS_MX_HOSTS_MAX];
};

/*
 * A watched descriptor. It is freed by its own completion once c-ares has
 * closed the descriptor (d == NULL), so a cancelled poll's CQE never points
 * at freed memory, even after dns_fini().
 */
struct dns_sock {
    struct op op;
    struct dns *d;              /* NULL: c-ares closed fd */
    struct dns_sock *next;
    int fd;
    unsigned want;              /* POLLIN/POLLOUT c-ares asked for */
    unsigned armed_mask;
    int armed;                  /* a POLL_ADD is in flight */
    int cancelling;             /* an ASYNC_CANCEL for it is queued */
    int in_done;                /* inside ares_process_fd() for it */
};

/* The one timeout kept at ares_timeout()'s deadline; freed like a sock. */
struct dns_timer {
    struct op op;               /* the io_uring timeout */
    struct op sync_op;          /* loop_defer(): re-read ares_timeout() */
    struct dns *d;              /* NULL after dns_fini() */
    struct __kernel_timespec ts;    /* absolute, CLOCK_MONOTONIC */
    uint64_t deadline_us;
    int armed;
    int sync_pending;
};

static pthread_once_t dns_once = PTHREAD_ONCE_INIT;
static int dns_library_rc;

static void dns_lookup(struct dns *d, enum dns_kind kind, const char *name,
                       struct dns_waiter *w);


/* dns_library_init - ares_library_init() is not thread-safe: once */
static void
dns_library_init(void)
{
    dns_library_rc = ares_library_init(ARES_LIB_INIT_ALL);
}


/* dns_status_name - the status as a word for logs */
const char *
dns_status_name(enum dns_status st)
{
    switch (st) {
    case DNS_OK:
        return "ok";
    case DNS_TEMPFAIL:
        return "tempfail";
    case DNS_NXDOMAIN:
        return "nxdomain";
    case DNS_NO_MX_OR_A:
        return "no_mx_or_a";
    case DNS_NULL_MX:
        return "null_mx";
    }
    return "?";
}


/* dns_status_code - the enhanced status code (RFC 3463) a status gives */
const char *
dns_status_code(enum dns_status st)
{
    switch (st) {
    case DNS_OK:
        return "2.0.0";
    case DNS_TEMPFAIL:
        return "4.4.3";
    case DNS_NXDOMAIN:
        return "5.1.2";
    case DNS_NO_MX_OR_A:
        return "5.4.4";
    case DNS_NULL_MX:
        return "5.1.10";
    }
    return "4.4.3";
}


/* dns_ares_why - a c-ares failure as short log text */
static const char *
dns_ares_why(int status)
{
    switch (status) {
    case ARES_ETIMEOUT:
        return "timeout";
    case ARES_ESERVFAIL:
        return "SERVFAIL";
    case ARES_EREFUSED:
        return "REFUSED";
    case ARES_EFORMERR:
        return "FORMERR";
    case ARES_ENOTIMP:
        return "NOTIMP";
    case ARES_ECONNREFUSED:
        /*
         * c-ares 1.18 moves on to the next server on SERVFAIL, REFUSED,
         * NOTIMP or a socket error, and says ECONNREFUSED when none is left.
         */
        return "no server answered (SERVFAIL, REFUSED or unreachable)";
    case ARES_EBADRESP:
        return "malformed answer";
    case ARES_ENOMEM:
        return "out of memory";
    case ARES_EDESTRUCTION:
    case ARES_ECANCELLED:
        return "resolver shut down";
    }
    return ares_strerror(status);   /* static text */
}


/* dns_rng_next - xorshift64*: cheap, shard-local, good enough to shuffle */
static uint64_t
dns_rng_next(uint64_t *s)
{
    *s ^= *s >> 12;
    *s ^= *s << 25;
    *s ^= *s >> 27;
    return *s * 0x2545F4914F6CDD1DULL;
}


/* dns_name_normalize - a host name in lower case without the final dot */
static int
dns_name_normalize(const char *in, char out[DNS_NAME_MAX + 1])
{
    size_t len = strnlen(in, DNS_NAME_MAX + 2);
    size_t i, label = 0;

    if (len > 0 && in[len - 1] == '.')
        len--;
    if (len == 0 || len > DNS_NAME_MAX)
        return -EINVAL;
    for (i = 0; i < len; i++) {
        unsigned char c = (unsigned char)in[i];

        if (c == '.') {
            if (label == 0)
                return -EINVAL;
            label = 0;
            out[i] = '.';
            continue;
        }
        /* Letters, digits, '-' and '_' (seen in real MX names) only. */
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c - 'A' + 'a');
        else if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
                   c == '-' || c == '_'))
            return -EINVAL;
        if (++label > 63)
            return -EINVAL;
        out[i] = (char)c;
    }
    out[len] = '\0';
    return 0;
}


static uint16_t
dns_be16(const unsigned char *p)
{
    return (uint16_t)(p[0] << 8 | p[1]);
}


static uint32_t
dns_be32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 |
           (uint32_t)p[2] << 8 | p[3];
}


/* dns_skip_name - step over a (possibly compressed) name; never follows */
static int
dns_skip_name(const unsigned char *p, size_t len, size_t *off)
{
    size_t o = *off, n = 0;

    for (;;) {
        unsigned c;

        if (o >= len)
            return -EBADMSG;
        c = p[o];
        if ((c & 0xc0) == 0xc0) {
            if (len - o < 2)
                return -EBADMSG;
            *off = o + 2;
            return 0;
        }
        if (c & 0xc0)
            return -EBADMSG;    /* extended label types: not for us */
        o += 1 + c;
        if (c == 0) {
            *off = o;
            return 0;
        }
        n += 1 + c;
        if (n > 255)            /* RFC 1035 3.1 */
            return -EBADMSG;
    }
}


/*
 * dns_answer_scan - TTL (see dns_answer_ttl()) and number of rr_type
 * records in the answer section. c-ares 1.18's ares_parse_mx_reply() drops
 * TTLs, its SOA parser reads only the answer section, and its A and AAAA
 * parsers skip a record of the wrong length as if it were not there; so
 * this walks the records itself: headers only, every length checked, no
 * name expanded.
 */
static int
dns_answer_scan(const unsigned char *abuf, size_t alen, int rr_type,
                uint32_t *ttl_s, unsigned *count)
{
    uint32_t best = UINT32_MAX, neg = UINT32_MAX;
    unsigned qd, an, ns, i;
    size_t off = 12;
    int found = 0, found_neg = 0;

    *count = 0;
    if (abuf == NULL || alen < 12)
        return -EBADMSG;
    qd = dns_be16(abuf + 4);
    an = dns_be16(abuf + 6);
    ns = dns_be16(abuf + 8);
    for (i = 0; i < qd; i++) {
        if (dns_skip_name(abuf, alen, &off) < 0 || alen - off < 4)
            return -EBADMSG;
        off += 4;
    }
    for (i = 0; i < an + ns; i++) {
        unsigned type, rdlen;
        uint32_t ttl;

        if (dns_skip_name(abuf, alen, &off) < 0 || alen - off < 10)
            return -EBADMSG;
        type = dns_be16(abuf + off);
        ttl = dns_be32(abuf + off + 4);
        rdlen = dns_be16(abuf + off + 8);
        off += 10;
        if (rdlen > alen - off)
            return -EBADMSG;
        if (ttl > 0x7fffffff)   /* RFC 2181 8: the top bit means 0 */
            ttl = 0;
        if (i < an && ((int)type == rr_type || type == DNS_T_CNAME)) {
            best = MIN(best, ttl);
            found = 1;
            if ((int)type == rr_type)
                (*count)++;
        } else if (i >= an && type == DNS_T_SOA) {
            /* Two names of at least one byte, then five 32-bit fields. */
            if (rdlen < 22)
                return -EBADMSG;
            neg = MIN(neg, MIN(ttl, dns_be32(abuf + off + rdlen - 4)));
            found_neg = 1;
        }
        off += rdlen;
    }
    if (found) {
        *ttl_s = best;
        return 0;
    }
    if (found_neg) {
        *ttl_s = neg;
        return 0;
    }
    return -ENOENT;
}


/* dns_answer_ttl - see dns.h */
int
dns_answer_ttl(const unsigned char *abuf, size_t alen, int rr_type,
               uint32_t *ttl_s)
{
    unsigned count;

    return dns_answer_scan(abuf, alen, rr_type, ttl_s, &count);
}


/*
 * dns_answer_has - does the answer hold records of rr_type? When c-ares
 * finds none but they are there, they were malformed: TEMPFAIL, not a
 * "no data" that would bounce the mail.
 */
static int
dns_answer_has(const unsigned char *abuf, int alen, int rr_type)
{
    unsigned count;
    uint32_t ttl;

    if (alen <= 0)
        return 0;
    if (dns_answer_scan(abuf, (size_t)alen, rr_type, &ttl, &count) ==
        -EBADMSG)
        return 1;
    return count > 0;
}


/* dns_ttl_clamp - a record TTL within the configured bounds */
static uint32_t
dns_ttl_clamp(const struct dns *d, uint32_t ttl_s)
{
    return MIN(MAX(ttl_s, d->ttl_min_s), d->ttl_max_s);
}


/* dns_neg_ttl - how long a negative answer is cached (RFC 2308) */
static uint32_t
dns_neg_ttl(const struct dns *d, const unsigned char *abuf, int alen,
            int rr_type)
{
    uint32_t ttl;

    if (alen <= 0 || dns_answer_ttl(abuf, (size_t)alen, rr_type, &ttl) < 0)
        ttl = DNS_NEG_TTL_S;
    return dns_ttl_clamp(d, ttl);
}


/* dns_result_build - one malloc block holding hosts, addresses, names */
static struct dns_result *
dns_result_build(const struct dns_host *in, size_t n)
{
    struct dns_result *res;
    struct dns_addr *a;
    size_t bytes, addr_off, name_off, naddr = 0, names = 0, i;
    char *s;

    for (i = 0; i < n; i++) {
        naddr += in[i].addr_count;
        names += strlen(in[i].name) + 1;
    }
    addr_off = sizeof *res + n * sizeof res->hosts[0];
    name_off = addr_off + naddr * sizeof *a;
    bytes = name_off + names;
    res = malloc(bytes);
    if (res == NULL)
        return NULL;
    res->block_bytes = bytes;
    res->ttl_s = 0;
    res->implicit_mx = 0;
    res->host_count = n;
    a = (struct dns_addr *)(void *)((char *)res + addr_off);
    s = (char *)res + name_off;
    for (i = 0; i < n; i++) {
        size_t len = strlen(in[i].name) + 1;

        memcpy(a, in[i].addrs, in[i].addr_count * sizeof *a);
        memcpy(s, in[i].name, len);
        res->hosts[i].name = s;
        res->hosts[i].pref = in[i].pref;
        res->hosts[i].addr_count = in[i].addr_count;
        res->hosts[i].addrs = a;
        a += in[i].addr_count;
        s += len;
    }
    return res;
}


/* dns_result_copy - a private copy of a cached result for one request */
static struct dns_result *
dns_result_copy(const struct dns_result *src, uint32_t ttl_s)
{
    struct dns_result *res = malloc(src->block_bytes);
    size_t i;

    if (res == NULL)
        return NULL;
    memcpy(res, src, src->block_bytes);
    /* The pointers point into the block: move them along with it. */
    for (i = 0; i < res->host_count; i++) {
        res->hosts[i].name = (const char *)res +
            (src->hosts[i].name - (const char *)src);
        res->hosts[i].addrs = (const struct dns_addr *)(const void *)
            ((const char *)res +
             ((const char *)src->hosts[i].addrs - (const char *)src));
    }
    res->ttl_s = ttl_s;
    return res;
}


/* dns_result_shuffle - random order among equal preferences (RFC 5321 5.1) */
static void
dns_result_shuffle(struct dns_result *res, uint64_t *rng)
{
    size_t i = 0, j, k;

    while (i < res->host_count) {
        j = i;
        while (j + 1 < res->host_count &&
               res->hosts[j + 1].pref == res->hosts[i].pref)
            j++;
        for (k = j; k > i; k--) {
            size_t r = i + (size_t)(dns_rng_next(rng) % (k - i + 1));
            struct dns_host tmp = res->hosts[k];

            res->hosts[k] = res->hosts[r];
            res->hosts[r] = tmp;
        }
        i = j + 1;
    }
}


/* dns_result_free - release a result handed over in a struct dns_req */
void
dns_result_free(struct dns_result *res)
{
    free(res);
}


/* ------------------------------------------------------------------ */
/* The ring side: polls for c-ares' sockets, one timer.                */


static void dns_timer_sync(struct dns *d);


/* dns_timer_maybe_free - an orphaned timer goes once nothing points at it */
static void
dns_timer_maybe_free(struct dns_timer *t)
{
    if (t->d == NULL && !t->armed && !t->sync_pending)
        free(t);
}


/* dns_timer_done - c-ares' deadline passed: let it retry or give up */
static void
dns_timer_done(struct op *op, int res, uint32_t cqe_flags)
{
    struct dns_timer *t = container_of(op, struct dns_timer, op);

    t->armed = 0;
    if (t->d == NULL) {
        dns_timer_maybe_free(t);
        return;
    }
    ares_process_fd(t->d->channel, ARES_SOCKET_BAD, ARES_SOCKET_BAD);
    dns_timer_sync(t->d);
}


/* dns_timer_sync_done - the deferred dns_timer_touch() */
static void
dns_timer_sync_done(struct op *op, int res, uint32_t cqe_flags)
{
    struct dns_timer *t = container_of(op, struct dns_timer, sync_op);

    t->sync_pending = 0;
    if (t->d == NULL) {
        dns_timer_maybe_free(t);
        return;
    }
    dns_timer_sync(t->d);
}


/*
 * dns_timer_touch - c-ares' deadlines may have moved: look once per turn.
 * ares_timeout() walks every query in c-ares 1.18, so calling it after each
 * ares_query() would cost O(n^2) for a burst of lookups. A deferred op on
 * the timer rather than a before-wait hook: hooks cannot be removed, and
 * after dns_fini() nothing in the loop may point at d.
 */
static void
dns_timer_touch(struct dns *d)
{
    struct dns_timer *t = d->timer;

    if (t->sync_pending)
        return;
    t->sync_pending = 1;
    t->sync_op.done = dns_timer_sync_done;
    loop_defer(d->lp, &t->sync_op);
}


/*
 * dns_timer_sync - keep the timeout at ares_timeout()'s deadline. A timer
 * armed too early is harmless (it fires, c-ares finds nothing late, it is
 * re-armed), so it is only moved when the deadline comes sooner.
 */
static void
dns_timer_sync(struct dns *d)
{
    struct dns_timer *t = d->timer;
    struct io_uring_sqe *sqe;
    struct timeval tvbuf, *tv;
    uint64_t deadline;

    tv = ares_timeout(d->channel, NULL, &tvbuf);
    if (tv == NULL)
        return;                 /* no query in flight */
    deadline = now_us() + (uint64_t)tv->tv_sec * 1000000 +
               (uint64_t)tv->tv_usec + DNS_TIMER_SLACK_US;
    if (t->armed && t->deadline_us <= deadline)
        return;
    t->deadline_us = deadline;
    /* Read by the kernel when the SQE is submitted: t holds it till then. */
    t->ts.tv_sec = (long long)(deadline / 1000000);
    t->ts.tv_nsec = (long long)(deadline % 1000000) * 1000;
    if (!t->armed) {
        sqe = loop_sqe(d->lp, &t->op);
        io_uring_prep_timeout(sqe, &t->ts, 0, IORING_TIMEOUT_ABS);
        t->armed = 1;
    } else {
        /* Its CQE (user_data NULL) is ignored: -ENOENT if it just fired. */
        sqe = loop_sqe(d->lp, NULL);
        io_uring_prep_timeout_update(sqe, &t->ts, (uint64_t)(uintptr_t)&t->op,
                                     IORING_TIMEOUT_ABS);
    }
}


/* dns_sock_cancel - queue a cancel for s's poll; its CQE comes -ECANCELED */
static void
dns_sock_cancel(struct loop *lp, struct dns_sock *s)
{
    struct io_uring_sqe *sqe;

    if (s->cancelling)
        return;
    s->cancelling = 1;
    /* By op, not by fd: c-ares may already have closed fd, or reused it. */
    sqe = loop_sqe(lp, NULL);
    io_uring_prep_cancel64(sqe, (uint64_t)(uintptr_t)&s->op, 0);
}


/* dns_sock_arm - poll fd for what c-ares wants */
static void
dns_sock_arm(struct dns *d, struct dns_sock *s)
{
    struct io_uring_sqe *sqe;

    ASSERT(s->d == d);
    ASSERT(s->want != 0);
    if (s->armed) {
        /* A new mask (TCP: write done, or more to write): poll again. */
        if (s->armed_mask != s->want)
            dns_sock_cancel(d->lp, s);
        return;
    }
    sqe = loop_sqe(d->lp, &s->op);
    io_uring_prep_poll_add(sqe, s->fd, s->want);
    s->armed = 1;
    s->armed_mask = s->want;
}


/* dns_sock_release - c-ares closed s->fd: stop watching it */
static void
dns_sock_release(struct dns *d, struct dns_sock *s)
{
    struct dns_sock **pp;

    for (pp = &d->socks; *pp != s; pp = &(*pp)->next)
        ASSERT(*pp != NULL);
    *pp = s->next;
    s->d = NULL;
    if (s->armed)
        dns_sock_cancel(d->lp, s);      /* its completion frees it */
    else if (!s->in_done)
        free(s);                        /* else dns_sock_done() does */
}


/* dns_sock_done - the poll fired: let c-ares read or write, then re-arm */
static void
dns_sock_done(struct op *op, int res, uint32_t cqe_flags)
{
    struct dns_sock *s = container_of(op, struct dns_sock, op);
    struct dns *d = s->d;
    ares_socket_t rfd = ARES_SOCKET_BAD, wfd = ARES_SOCKET_BAD;

    s->armed = 0;
    s->cancelling = 0;
    if (d == NULL) {
        free(s);
        return;
    }
    if (res != -ECANCELED) {
        /* An error, POLLERR or POLLHUP: c-ares meets it in recv or send. */
        if (res < 0 || (res & (POLLIN | POLLERR | POLLHUP)))
            rfd = s->fd;
        if (res < 0 || (res & (POLLOUT | POLLERR | POLLHUP)))
            wfd = s->fd;
        s->in_done = 1;
        ares_process_fd(d->channel, rfd, wfd);
        s->in_done = 0;
        dns_timer_touch(d);
    }
    if (s->d == NULL) {
        free(s);                /* c-ares closed it just now */
        return;
    }
    dns_sock_arm(d, s);
}


/* dns_sock_state - c-ares' ARES_OPT_SOCK_STATE_CB: watch fd for this */
static void
dns_sock_state(void *data, ares_socket_t fd, int readable, int writable)
{
    struct dns *d = data;
    struct dns_sock *s;
    unsigned want = (readable ? POLLIN : 0) | (writable ? POLLOUT : 0);

    for (s = d->socks; s != NULL; s = s->next) {
        if (s->fd == fd)
            break;
    }
    if (want == 0) {
        /* c-ares closes fd right after this call. */
        if (s != NULL)
            dns_sock_release(d, s);
        return;
    }
    if (s == NULL) {
        s = calloc(1, sizeof *s);
        if (s == NULL)
            return;     /* unwatched: its queries time out, then TEMPFAIL */
        s->op.done = dns_sock_done;
        s->d = d;
        s->fd = fd;
        s->next = d->socks;
        d->socks = s;
    }
    s->want = want;
    dns_sock_arm(d, s);
}


/* dns_query - start one c-ares query; its callback may run before return */
static void
dns_query(struct dns *d, const char *name, int type, ares_callback cb,
          void *arg)
{
    d->stats.queries++;
    ares_query(d->channel, name, DNS_C_IN, type, cb, arg);
    dns_timer_touch(d);
}


/* ------------------------------------------------------------------ */
/* The cache.                                                          */


/* dns_hash - FNV-1a over the kind and the name */
static uint64_t
dns_hash(enum dns_kind kind, const char *name)
{
    uint64_t h = 0xcbf29ce484222325ULL ^ (uint64_t)kind;

    for (; *name != '\0'; name++) {
        h ^= (unsigned char)*name;
        h *= 0x100000001b3ULL;
    }
    return h;
}


static void
dns_lru_unlink(struct dns *d, struct dns_entry *e)
{
    if (e->lru_prev != NULL)
        e->lru_prev->lru_next = e->lru_next;
    else
        d->lru_head = e->lru_next;
    if (e->lru_next != NULL)
        e->lru_next->lru_prev = e->lru_prev;
    else
        d->lru_tail = e->lru_prev;
    e->lru_prev = e->lru_next = NULL;
}


static void
dns_lru_push(struct dns *d, struct dns_entry *e)
{
    e->lru_prev = NULL;
    e->lru_next = d->lru_head;
    if (d->lru_head != NULL)
        d->lru_head->lru_prev = e;
    else
        d->lru_tail = e;
    d->lru_head = e;
}


/* dns_entry_find - the entry for (kind, name), or NULL */
static struct dns_entry *
dns_entry_find(struct dns *d, enum dns_kind kind, const char *name,
               uint64_t hash)
{
    struct dns_entry *e;

    for (e = d->buckets[hash & d->bucket_mask]; e != NULL; e = e->hnext) {
        if (e->hash == hash && e->kind == kind && strcmp(e->name, name) == 0)
            return e;
    }
    return NULL;
}


/* dns_entry_evict - drop the least recently used finished entry */
static int
dns_entry_evict(struct dns *d)
{
    struct dns_entry *e = d->lru_tail, **pp;

    if (e == NULL)
        return -EBUSY;          /* every entry is in flight */
    ASSERT(e->state == DNS_ENTRY_DONE);
    ASSERT(d->completing == 0); /* a waiter may hold e->result */
    dns_lru_unlink(d, e);
    for (pp = &d->buckets[e->hash & d->bucket_mask]; *pp != e;
         pp = &(*pp)->hnext)
        ASSERT(*pp != NULL);
    *pp = e->hnext;
    free(e->result);
    free(e);
    d->entry_count--;
    d->stats.evictions++;
    return 0;
}


/* dns_entry_new - a PENDING entry for (kind, name), or NULL */
static struct dns_entry *
dns_entry_new(struct dns *d, enum dns_kind kind, const char *name,
              uint64_t hash)
{
    size_t len = strlen(name) + 1;
    struct dns_entry *e;

    if (d->entry_count >= d->entry_max && dns_entry_evict(d) < 0)
        return NULL;
    e = calloc(1, sizeof *e + len);
    if (e == NULL)
        return NULL;
    memcpy(e->name, name, len);
    e->d = d;
    e->kind = (uint8_t)kind;
    e->hash = hash;
    e->hnext = d->buckets[hash & d->bucket_mask];
    d->buckets[hash & d->bucket_mask] = e;
    d->entry_count++;
    return e;
}


/*
 * dns_entry_complete - the lookup of e ended: cache it, tell every waiter.
 * res (DNS_OK only) now belongs to e. The waiters only copy and defer, or
 * (MX jobs) record and maybe complete their MX entry: none of them creates
 * an entry, so nothing is evicted while res is lent to them.
 */
static void
dns_entry_complete(struct dns_entry *e, enum dns_status st, const char *why,
                   struct dns_result *res, uint32_t ttl_s)
{
    struct dns *d = e->d;
    struct dns_waiter *w, *next;

    ASSERT(e->state == DNS_ENTRY_PENDING);
    ASSERT(e->job == NULL);
    ASSERT((st == DNS_OK) == (res != NULL));
    if (st == DNS_TEMPFAIL)
        ttl_s = d->tempfail_ttl_s;
    if (res != NULL)
        res->ttl_s = ttl_s;
    e->state = DNS_ENTRY_DONE;
    e->status = st;
    e->why = why;
    e->result = res;
    e->expires_ms = now_ms() + (uint64_t)ttl_s * 1000;
    dns_lru_push(d, e);
    w = e->waiters;
    e->waiters = NULL;
    e->waiters_tail = &e->waiters;
    d->completing++;
    for (; w != NULL; w = next) {
        next = w->next;         /* w may be freed by its own callback */
        w->fn(w, st, why, res, ttl_s);
    }
    d->completing--;
}


/* ------------------------------------------------------------------ */
/* Address lookups: A and (ipv6) AAAA.                                 */


/* dns_fam_parse - what an A or AAAA answer says */
static void
dns_fam_parse(const struct dns *d, int type, int status,
              const unsigned char *abuf, int alen, struct dns_fam *f)
{
    struct ares_addrttl a4[DNS_HOST_ADDRS_MAX];
    struct ares_addr6ttl a6[DNS_HOST_ADDRS_MAX];
    int n = DNS_HOST_ADDRS_MAX, rc, i;
    uint32_t ttl = UINT32_MAX;

    switch (status) {
    case ARES_SUCCESS:
        break;
    case ARES_ENODATA:
        f->status = DNS_NO_MX_OR_A;
        f->why = "no address";
        f->ttl_s = dns_neg_ttl(d, abuf, alen, type);
        return;
    case ARES_ENOTFOUND:
        f->status = DNS_NXDOMAIN;
        f->why = "NXDOMAIN";
        f->ttl_s = dns_neg_ttl(d, abuf, alen, type);
        return;
    default:
        f->status = DNS_TEMPFAIL;
        f->why = dns_ares_why(status);
        return;
    }
    /* At most DNS_HOST_ADDRS_MAX: the parsers stop at n. */
    if (type == DNS_T_A)
        rc = ares_parse_a_reply(abuf, alen, NULL, a4, &n);
    else
        rc = ares_parse_aaaa_reply(abuf, alen, NULL, a6, &n);
    if ((rc == ARES_ENODATA || (rc == ARES_SUCCESS && n <= 0)) &&
        !dns_answer_has(abuf, alen, type)) {
        f->status = DNS_NO_MX_OR_A;
        f->why = "no address";
        f->ttl_s = dns_neg_ttl(d, abuf, alen, type);
        return;
    }
    if (rc != ARES_SUCCESS || n <= 0 || n > DNS_HOST_ADDRS_MAX) {
        f->status = DNS_TEMPFAIL;
        f->why = dns_ares_why(rc == ARES_ENOMEM ? rc : ARES_EBADRESP);
        return;
    }
    for (i = 0; i < n; i++) {
        struct dns_addr *a = &f->addrs[i];
        int rr_ttl;

        memset(a, 0, sizeof *a);
        if (type == DNS_T_A) {
            a->family = AF_INET;
            a->u.v4 = a4[i].ipaddr;
            rr_ttl = a4[i].ttl;
        } else {
            a->family = AF_INET6;
            memcpy(&a->u.v6, &a6[i].ip6addr, sizeof a->u.v6);
            rr_ttl = a6[i].ttl;
        }
        ttl = MIN(ttl, rr_ttl > 0 ? (uint32_t)rr_ttl : 0);
    }
    f->count = (size_t)n;
    f->status = DNS_OK;
    f->why = "ok";
    f->ttl_s = dns_ttl_clamp(d, ttl);
}


/* dns_addr_finish - both families answered: one host, IPv4 first */
static void
dns_addr_finish(struct dns_entry *e)
{
    struct dns *d = e->d;
    struct dns_addr_job *job = e->job;
    struct dns_addr addrs[2 * DNS_HOST_ADDRS_MAX];
    struct dns_result *res = NULL;
    struct dns_host h;
    enum dns_status st = DNS_NO_MX_OR_A;
    const char *why = "no address", *tempfail_why = NULL;
    uint32_t ttl = UINT32_MAX, neg = UINT32_MAX;
    size_t n = 0, i;

    for (i = 0; i < 2; i++) {
        struct dns_fam *f = &job->fam[i];

        if (!f->asked)
            continue;
        if (f->status == DNS_OK) {
            memcpy(&addrs[n], f->addrs, f->count * sizeof addrs[0]);
            n += f->count;
            ttl = MIN(ttl, f->ttl_s);
        } else if (f->status == DNS_TEMPFAIL) {
            if (tempfail_why == NULL)
                tempfail_why = f->why;
        } else {
            neg = MIN(neg, f->ttl_s);
            if (f->status == DNS_NXDOMAIN) {
                st = DNS_NXDOMAIN;
                why = f->why;
            }
        }
    }
    if (n > 0) {
        /* One family failed: keep the other, but ask again soon. */
        if (tempfail_why != NULL)
            ttl = MIN(ttl, d->tempfail_ttl_s);
        h.name = e->name;
        h.pref = 0;
        h.addr_count = n;
        h.addrs = addrs;
        res = dns_result_build(&h, 1);
        st = res != NULL ? DNS_OK : DNS_TEMPFAIL;
        why = res != NULL ? "ok" : "out of memory";
    } else if (tempfail_why != NULL) {
        st = DNS_TEMPFAIL;
        why = tempfail_why;
    } else {
        ttl = neg;
    }
    e->job = NULL;
    free(job);
    dns_entry_complete(e, st, why, res, ttl);
}


/* dns_addr_query_done - ares_query() callback for A and AAAA */
static void
dns_addr_query_done(void *arg, int status, int timeouts, unsigned char *abuf,
                    int alen)
{
    struct dns_query *q = arg;
    struct dns_entry *e = q->e;
    struct dns_addr_job *job;

    if (e->d->closing)
        return;                 /* dns_fini() answers the waiters */
    job = e->job;
    dns_fam_parse(e->d, q->type, status, abuf, alen,
                  &job->fam[q->type == DNS_T_AAAA]);
    if (--job->pending == 0)
        dns_addr_finish(e);
}


/* dns_addr_start - query A (and AAAA) for e */
static void
dns_addr_start(struct dns_entry *e)
{
    struct dns *d = e->d;
    struct dns_addr_job *job = calloc(1, sizeof *job);

    if (job == NULL) {
        dns_entry_complete(e, DNS_TEMPFAIL, "out of memory", NULL, 0);
        return;
    }
    e->job = job;
    /* One more than the queries: a callback may run inside ares_query(). */
    job->pending = 1 + 1 + (d->ipv6 ? 1 : 0);
    job->fam[0].asked = 1;
    job->q[0].e = e;
    job->q[0].type = DNS_T_A;
    dns_query(d, e->name, DNS_T_A, dns_addr_query_done, &job->q[0]);
    if (d->ipv6) {
        job->fam[1].asked = 1;
        job->q[1].e = e;
        job->q[1].type = DNS_T_AAAA;
        dns_query(d, e->name, DNS_T_AAAA, dns_addr_query_done, &job->q[1]);
    }
    if (--job->pending == 0)
        dns_addr_finish(e);
}


/* ------------------------------------------------------------------ */
/* MX lookups.                                                         */


/* dns_mx_fail - the MX entry ends without hosts */
static void
dns_mx_fail(struct dns_mx_job *job, enum dns_status st, const char *why,
            uint32_t ttl_s)
{
    struct dns_entry *e = job->e;

    e->job = NULL;
    free(job);
    dns_entry_complete(e, st, why, NULL, ttl_s);
}


/* dns_mx_finish - every host's addresses are known: build the answer */
static void
dns_mx_finish(struct dns_mx_job *job)
{
    struct dns_entry *e = job->e;
    struct dns *d = e->d;
    struct dns_host hosts[DNS_MX_HOSTS_MAX];
    struct dns_result *res;
    const char *tempfail_why = NULL;
    uint32_t ttl = job->ttl_s;
    size_t kept = 0, i;

    for (i = 0; i < job->host_count; i++) {
        struct dns_mx_host *h = &job->hosts[i];

        if (h->status == DNS_OK) {
            hosts[kept].name = h->name;
            hosts[kept].pref = h->pref;
            hosts[kept].addr_count = h->addr_count;
            hosts[kept].addrs = h->addrs;
            kept++;
        } else if (h->status == DNS_TEMPFAIL && tempfail_why == NULL) {
            tempfail_why = h->why;
        }
        if (h->status != DNS_TEMPFAIL)
            ttl = MIN(ttl, h->ttl_s);
    }
    if (kept == 0 && tempfail_why != NULL) {
        dns_mx_fail(job, DNS_TEMPFAIL, tempfail_why, 0);
        return;
    }
    if (kept == 0) {
        dns_mx_fail(job, DNS_NO_MX_OR_A, job->implicit ?
                    "no MX and no address" : "no MX host has an address",
                    ttl);
        return;
    }
    /* Some hosts could not be resolved: use the others, ask again soon. */
    if (tempfail_why != NULL)
        ttl = MIN(ttl, d->tempfail_ttl_s);
    res = dns_result_build(hosts, kept);
    if (res == NULL) {
        dns_mx_fail(job, DNS_TEMPFAIL, "out of memory", 0);
        return;
    }
    res->implicit_mx = job->implicit;
    e->job = NULL;
    free(job);
    dns_entry_complete(e, DNS_OK, "ok", res, ttl);
}


/* dns_mx_host_done - a host's address entry answered (internal waiter) */
static void
dns_mx_host_done(struct dns_waiter *w, enum dns_status st, const char *why,
                 const struct dns_result *res, uint32_t ttl_s)
{
    struct dns_mx_host *h = container_of(w, struct dns_mx_host, w);
    struct dns_mx_job *job = h->job;

    h->status = st;
    h->why = why;
    h->ttl_s = ttl_s;
    if (st == DNS_OK) {
        ASSERT(res->host_count == 1);
        h->addr_count = MIN(res->hosts[0].addr_count, ARRAY_SIZE(h->addrs));
        memcpy(h->addrs, res->hosts[0].addrs,
               h->addr_count * sizeof h->addrs[0]);
    }
    if (--job->pending == 0)
        dns_mx_finish(job);     /* frees job, and h with it */
}


/* dns_mx_resolve_hosts - look up the address of every host of job */
static void
dns_mx_resolve_hosts(struct dns_mx_job *job)
{
    struct dns *d = job->e->d;
    size_t i, n = job->host_count;

    /* One more than the hosts: cache hits answer inside dns_lookup(). */
    job->pending = (unsigned)n + 1;
    for (i = 0; i < n; i++) {
        struct dns_mx_host *h = &job->hosts[i];

        h->job = job;
        h->w.fn = dns_mx_host_done;
        h->w.external = 0;
        dns_lookup(d, DNS_KIND_ADDR, h->name, &h->w);
    }
    if (--job->pending == 0)
        dns_mx_finish(job);
}


/* dns_mx_add_host - keep the DNS_MX_HOSTS_MAX lowest preferences, sorted */
static void
dns_mx_add_host(struct dns_mx_job *job, const char *name, unsigned pref)
{
    size_t n = job->host_count, i;

    for (i = 0; i < n; i++) {
        if (strcmp(job->hosts[i].name, name) != 0)
            continue;
        if (job->hosts[i].pref <= pref)
            return;             /* listed twice: the better one counts */
        memmove(&job->hosts[i], &job->hosts[i + 1],
                (n - i - 1) * sizeof job->hosts[0]);
        n = --job->host_count;
        break;
    }
    if (n == DNS_MX_HOSTS_MAX) {
        /*
         * XXX: when equal preferences straddle the cap, the ones listed
         * first are kept for every request; the shuffle comes later.
         * Nobody sends more than DNS_MX_HOSTS_MAX hosts worth trying.
         */
        if (job->hosts[n - 1].pref <= pref)
            return;             /* would never be tried */
        n--;
    }
    /* After the equal preferences: the shuffle happens per request. */
    for (i = n; i > 0 && job->hosts[i - 1].pref > pref; i--)
        job->hosts[i] = job->hosts[i - 1];
    memset(&job->hosts[i], 0, sizeof job->hosts[i]);
    strcpy(job->hosts[i].name, name);
    job->hosts[i].pref = pref;
    job->host_count = n + 1;
}


/* dns_mx_query_done - ares_query() callback for MX */
static void
dns_mx_query_done(void *arg, int status, int timeouts, unsigned char *abuf,
                  int alen)
{
    struct dns_query *q = arg;
    struct dns_entry *e = q->e;
    struct dns *d = e->d;
    struct dns_mx_job *job;
    struct ares_mx_reply *mx = NULL, *m;
    char name[DNS_NAME_MAX + 1];
    size_t total = 0, null_count = 0;
    uint32_t ttl;
    int rc;

    if (d->closing)
        return;                 /* dns_fini() answers the waiters */
    job = e->job;
    switch (status) {
    case ARES_SUCCESS:
        break;
    case ARES_ENODATA:
        goto implicit;
    case ARES_ENOTFOUND:
        dns_mx_fail(job, DNS_NXDOMAIN, "NXDOMAIN",
                    dns_neg_ttl(d, abuf, alen, DNS_T_MX));
        return;
    default:
        dns_mx_fail(job, DNS_TEMPFAIL, dns_ares_why(status), 0);
        return;
    }
    rc = ares_parse_mx_reply(abuf, alen, &mx);
    if ((rc == ARES_ENODATA || (rc == ARES_SUCCESS && mx == NULL)) &&
        !dns_answer_has(abuf, alen, DNS_T_MX)) {
        /* Only CNAMEs, say: no MX there. */
        goto implicit;
    }
    if (rc == ARES_SUCCESS && mx == NULL)
        rc = ARES_EBADRESP;
    if (rc != ARES_SUCCESS ||
        dns_answer_ttl(abuf, (size_t)alen, DNS_T_MX, &ttl) < 0) {
        if (mx != NULL)
            ares_free_data(mx);
        dns_mx_fail(job, DNS_TEMPFAIL,
                    dns_ares_why(rc == ARES_ENOMEM ? rc : ARES_EBADRESP), 0);
        return;
    }
    ttl = dns_ttl_clamp(d, ttl);
    for (m = mx; m != NULL; m = m->next) {
        total++;
        /* c-ares expands the root name "." to "". */
        if (m->host[0] == '\0' || strcmp(m->host, ".") == 0) {
            null_count++;
            continue;
        }
        /* Not a host name: it could not be connected to anyway. */
        if (dns_name_normalize(m->host, name) == 0)
            dns_mx_add_host(job, name, m->priority);
    }
    ares_free_data(mx);
    /* RFC 7505: only "MX 0 ." is a null MX; mixed with hosts, it is junk. */
    if (null_count == total) {
        dns_mx_fail(job, DNS_NULL_MX, "null MX", ttl);
        return;
    }
    if (job->host_count == 0) {
        /*
         * As Postfix does: a garbled or forged answer must not bounce
         * mail, so this defers (until the message expires).
         */
        dns_mx_fail(job, DNS_TEMPFAIL, "no MX host has a valid name", 0);
        return;
    }
    job->ttl_s = ttl;
    dns_mx_resolve_hosts(job);
    return;

implicit:
    /* RFC 5321 5.1: no MX, the domain itself is the only host. */
    job->implicit = 1;
    job->ttl_s = dns_neg_ttl(d, abuf, alen, DNS_T_MX);
    job->host_count = 1;
    memset(&job->hosts[0], 0, sizeof job->hosts[0]);
    strcpy(job->hosts[0].name, e->name);
    dns_mx_resolve_hosts(job);
}


/* dns_mx_start - query MX for e */
static void
dns_mx_start(struct dns_entry *e)
{
    struct dns_mx_job *job = calloc(1, sizeof *job);

    if (job == NULL) {
        dns_entry_complete(e, DNS_TEMPFAIL, "out of memory", NULL, 0);
        return;
    }
    job->e = e;
    job->q.e = e;
    job->q.type = DNS_T_MX;
    e->job = job;
    dns_query(e->d, e->name, DNS_T_MX, dns_mx_query_done, &job->q);
}


/*
 * dns_lookup - answer w from the cache, join a lookup in flight, or start
 * one. w->fn may run before this returns.
 */
static void
dns_lookup(struct dns *d, enum dns_kind kind, const char *name,
           struct dns_waiter *w)
{
    uint64_t hash = dns_hash(kind, name), now = now_ms();
    struct dns_entry *e = dns_entry_find(d, kind, name, hash);

    w->next = NULL;
    if (e != NULL && e->state == DNS_ENTRY_DONE && now < e->expires_ms) {
        d->stats.hits++;
        dns_lru_unlink(d, e);
        dns_lru_push(d, e);
        w->fn(w, e->status, e->why, e->result,
              (uint32_t)((e->expires_ms - now + 999) / 1000));
        return;
    }
    if (e != NULL && e->state == DNS_ENTRY_PENDING) {
        d->stats.coalesced++;
        *e->waiters_tail = w;
        e->waiters_tail = &w->next;
        return;
    }
    if (e == NULL) {
        e = dns_entry_new(d, kind, name, hash);
        if (e == NULL) {
            w->fn(w, DNS_TEMPFAIL, "too many lookups in flight", NULL, 0);
            return;
        }
    } else {
        /* Expired: ask again in place. */
        dns_lru_unlink(d, e);
        free(e->result);
        e->result = NULL;
    }
    e->state = DNS_ENTRY_PENDING;
    e->waiters = w;
    e->waiters_tail = &w->next;
    if (kind == DNS_KIND_MX)
        dns_mx_start(e);
    else
        dns_addr_start(e);
}


/* ------------------------------------------------------------------ */
/* Requests.                                                           */


/* dns_req_deliver - the deferred call of the caller's callback */
static void
dns_req_deliver(struct op *op, int res, uint32_t cqe_flags)
{
    struct dns_req *req = container_of(op, struct dns_req, op);

    /* d may be gone (dns_fini()): only req is used from here on. */
    req->cb(req);
}


/* dns_req_answer - a request's waiter: copy the answer, defer the callback */
static void
dns_req_answer(struct dns_waiter *w, enum dns_status st, const char *why,
               const struct dns_result *res, uint32_t ttl_s)
{
    struct dns_req *req = container_of(w, struct dns_req, w);

    req->status = st;
    req->why = why;
    req->result = NULL;
    if (st == DNS_OK) {
        req->result = dns_result_copy(res, ttl_s);
        if (req->result == NULL) {
            req->status = DNS_TEMPFAIL;
            req->why = "out of memory";
        } else if (req->mx) {
            dns_result_shuffle(req->result, &req->d->rng);
        }
    }
    req->op.done = dns_req_deliver;
    loop_defer(req->d->lp, &req->op);
}


/* dns_req_start - fill req's private part */
static void
dns_req_start(struct dns *d, struct dns_req *req, dns_req_fn *cb, int mx)
{
    ASSERT(d->channel != NULL);     /* not after dns_fini() */
    ASSERT(!d->closing);
    ASSERT(cb != NULL);
    memset(req, 0, sizeof *req);
    req->status = DNS_TEMPFAIL;
    req->why = "in flight";
    req->w.fn = dns_req_answer;
    req->w.external = 1;
    req->d = d;
    req->mx = mx;
    req->cb = cb;
    d->stats.lookups++;
}


/* dns_resolve_mx - where mail for domain goes; cb runs from the loop */
void
dns_resolve_mx(struct dns *d, const char *domain, struct dns_req *req,
               dns_req_fn *cb)
{
    char name[DNS_NAME_MAX + 1];

    dns_req_start(d, req, cb, 1);
    if (dns_name_normalize(domain, name) < 0) {
        dns_req_answer(&req->w, DNS_NXDOMAIN, "invalid domain name", NULL, 0);
        return;
    }
    dns_lookup(d, DNS_KIND_MX, name, &req->w);
}


/* dns_resolve_literal - an address literal answers itself */
static int
dns_resolve_literal(struct dns_req *req, const char *host)
{
    struct dns_addr a;
    struct dns_host h;
    struct dns_result *res;

    memset(&a, 0, sizeof a);
    if (inet_pton(AF_INET, host, &a.u.v4) == 1)
        a.family = AF_INET;
    else if (inet_pton(AF_INET6, host, &a.u.v6) == 1)
        a.family = AF_INET6;
    else
        return 0;
    h.name = host;
    h.pref = 0;
    h.addr_count = 1;
    h.addrs = &a;
    res = dns_result_build(&h, 1);
    if (res == NULL) {
        dns_req_answer(&req->w, DNS_TEMPFAIL, "out of memory", NULL, 0);
        return 1;
    }
    dns_req_answer(&req->w, DNS_OK, "ok", res, req->d->ttl_max_s);
    free(res);
    return 1;
}


/* dns_resolve_a - the addresses of host; cb runs from the loop */
void
dns_resolve_a(struct dns *d, const char *host, struct dns_req *req,
              dns_req_fn *cb)
{
    char name[DNS_NAME_MAX + 1];

    dns_req_start(d, req, cb, 0);
    if (dns_resolve_literal(req, host))
        return;
    if (dns_name_normalize(host, name) < 0) {
        dns_req_answer(&req->w, DNS_NXDOMAIN, "invalid host name", NULL, 0);
        return;
    }
    dns_lookup(d, DNS_KIND_ADDR, name, &req->w);
}


/* ------------------------------------------------------------------ */
/* Setup and teardown.                                                 */


/* dns_servers_csv - "a,b,c" for ares_set_servers_ports_csv() */
static int
dns_servers_csv(const char *const *servers, size_t n, char **out)
{
    size_t i, len = 0;
    char *csv, *p;

    if (n > DNS_SERVERS_MAX)
        return -EINVAL;
    for (i = 0; i < n; i++) {
        size_t sl = strlen(servers[i]);

        if (sl == 0 || sl > DNS_SERVER_TEXT_MAX ||
            strpbrk(servers[i], ", \t\r\n") != NULL)
            return -EINVAL;
        len += sl + 1;
    }
    csv = malloc(len);
    if (csv == NULL)
        return -ENOMEM;
    p = csv;
    for (i = 0; i < n; i++) {
        size_t sl = strlen(servers[i]);

        memcpy(p, servers[i], sl);
        p += sl;
        *p++ = i + 1 < n ? ',' : '\0';
    }
    *out = csv;
    return 0;
}


/* dns_opts_default - the defaults dns_init() uses */
void
dns_opts_default(struct dns_opts *o)
{
    memset(o, 0, sizeof *o);
    o->timeout_ms = DNS_TIMEOUT_MS;
    o->tries = DNS_TRIES;
    o->ipv6 = 1;
    o->ttl_min_s = DNS_TTL_MIN_S;
    o->ttl_max_s = DNS_TTL_MAX_S;
    o->tempfail_ttl_s = DNS_TEMPFAIL_TTL_S;
    o->cache_entries_max = DNS_CACHE_ENTRIES;
}


/* dns_init - a resolver with default options on lp */
int
dns_init(struct dns *d, struct loop *lp, const char *const *servers,
         size_t server_count)
{
    struct dns_opts o;

    dns_opts_default(&o);
    o.servers = servers;
    o.server_count = server_count;
    return dns_init_opts(d, lp, &o);
}


/* dns_init_opts - create the c-ares channel and the cache */
int
dns_init_opts(struct dns *d, struct loop *lp, const struct dns_opts *o)
{
    struct ares_options ao;
    ares_channel ch;
    char *csv = NULL;
    char lookups[] = "b";       /* DNS only, never /etc/hosts */
    size_t buckets = 16;
    int rc;

    memset(d, 0, sizeof *d);
    if (o->timeout_ms == 0 || o->tries == 0 || o->ttl_min_s > o->ttl_max_s ||
        o->cache_entries_max == 0)
        return -EINVAL;
    pthread_once(&dns_once, dns_library_init);
    if (dns_library_rc != ARES_SUCCESS) {
        log_panic("dns", "ares_library_init: %s",
                  ares_strerror(dns_library_rc));
        return -EIO;
    }
    if (o->server_count > 0) {
        rc = dns_servers_csv(o->servers, o->server_count, &csv);
        if (rc < 0)
            return rc;
    }
    memset(&ao, 0, sizeof ao);
    ao.sock_state_cb = dns_sock_state;
    ao.sock_state_cb_data = d;
    ao.timeout = (int)o->timeout_ms;
    ao.tries = (int)o->tries;
    ao.lookups = lookups;
    /* Reads /etc/resolv.conf now, once; nothing blocks after this. */
    rc = ares_init_options(&ch, &ao, ARES_OPT_SOCK_STATE_CB |
                           ARES_OPT_TIMEOUTMS | ARES_OPT_TRIES |
                           ARES_OPT_LOOKUPS);
    if (rc != ARES_SUCCESS) {
        log_panic("dns", "ares_init_options: %s", ares_strerror(rc));
        free(csv);
        return rc == ARES_ENOMEM ? -ENOMEM : -EIO;
    }
    if (csv != NULL) {
        rc = ares_set_servers_ports_csv(ch, csv);
        if (rc != ARES_SUCCESS) {
            log_panic("dns", "Nameservers \"%s\": %s", csv,
                      ares_strerror(rc));
            free(csv);
            ares_destroy(ch);
            return rc == ARES_ENOMEM ? -ENOMEM : -EINVAL;
        }
        free(csv);
    }
    d->lp = lp;
    d->channel = ch;
    d->ipv6 = o->ipv6;
    d->ttl_min_s = o->ttl_min_s;
    d->ttl_max_s = o->ttl_max_s;
    d->tempfail_ttl_s = o->tempfail_ttl_s;
    d->entry_max = o->cache_entries_max;
    while (buckets < d->entry_max)
        buckets <<= 1;
    d->buckets = xcalloc(buckets, sizeof d->buckets[0]);
    d->bucket_mask = buckets - 1;
    d->timer = xcalloc(1, sizeof *d->timer);
    d->timer->d = d;
    d->timer->op.done = dns_timer_done;
    if (getrandom(&d->rng, sizeof d->rng, GRND_NONBLOCK) != sizeof d->rng)
        d->rng = now_us() ^ (uint64_t)(uintptr_t)d;
    d->rng |= 1;                /* xorshift never leaves 0 */
    return 0;
}


/*
 * dns_fini - destroy the channel, answer every waiter "shut down", let the
 * polls and the timer go. Two passes over the entries: the waiter lists of
 * address entries hold MX jobs' hosts, so no job is freed before every
 * list has been read.
 */
void
dns_fini(struct dns *d)
{
    struct dns_entry *e, *next;
    struct dns_waiter *w, *wnext;
    struct dns_timer *t = d->timer;
    size_t i;

    if (d->channel == NULL)
        return;
    d->closing = 1;
    /* Query callbacks run (and return at once); sockets are released. */
    ares_destroy(d->channel);
    d->channel = NULL;
    while (d->socks != NULL)
        dns_sock_release(d, d->socks);
    for (i = 0; i <= d->bucket_mask; i++) {
        for (e = d->buckets[i]; e != NULL; e = e->hnext) {
            if (e->state != DNS_ENTRY_PENDING)
                continue;
            for (w = e->waiters; w != NULL; w = wnext) {
                wnext = w->next;
                if (w->external)
                    w->fn(w, DNS_TEMPFAIL, "resolver shut down", NULL, 0);
            }
        }
    }
    for (i = 0; i <= d->bucket_mask; i++) {
        for (e = d->buckets[i]; e != NULL; e = next) {
            next = e->hnext;
            free(e->job);
            free(e->result);
            free(e);
        }
    }
    free(d->buckets);
    d->buckets = NULL;
    d->lru_head = d->lru_tail = NULL;
    d->entry_count = 0;
    t->d = NULL;
    if (t->armed) {
        struct io_uring_sqe *sqe = loop_sqe(d->lp, NULL);

        io_uring_prep_timeout_remove(sqe, (uint64_t)(uintptr_t)&t->op, 0);
    }
    dns_timer_maybe_free(t);
    d->timer = NULL;
}


/* ------------------------------------------------------------------ */
/* Record lookups for policy (msys.dnsLookup): uncached, any type.     */

#define DNS_RR_MAX 64            /* records kept per answer */
#define DNS_RR_BYTES_MAX 65536   /* text kept per answer */

/* rr_add - append one record to the request's block */
static void
rr_add(struct dns_rr_req *req, char *blk, size_t *off, unsigned pref,
       const char *text, size_t len)
{
    if (req->count >= DNS_RR_MAX || *off + len + 1 > DNS_RR_BYTES_MAX)
        return;
    memcpy(blk + *off, text, len);
    blk[*off + len] = '\0';
    req->rr[req->count].pref = pref;
    req->rr[req->count].text = blk + *off;
    req->count++;
    *off += len + 1;
}


static int
rr_pref_cmp(const void *a, const void *b)
{
    const struct dns_rr *x = a, *y = b;

    return (x->pref > y->pref) - (x->pref < y->pref);
}


/* rr_parse - the records of abuf into req (one malloc block) */
static int
rr_parse(struct dns_rr_req *req, const unsigned char *abuf, int alen)
{
    char *blk;
    size_t off = 0;
    int rc = ARES_SUCCESS;

    req->rr = malloc(DNS_RR_MAX * sizeof *req->rr + DNS_RR_BYTES_MAX);
    if (req->rr == NULL)
        return ARES_ENOMEM;
    blk = (char *)(req->rr + DNS_RR_MAX);
    switch (req->type) {
    case DNS_T_A: {
        struct ares_addrttl a[DNS_RR_MAX];
        int n = DNS_RR_MAX, i;
        char buf[INET6_ADDRSTRLEN];

        rc = ares_parse_a_reply(abuf, alen, NULL, a, &n);
        for (i = 0; rc == ARES_SUCCESS && i < n; i++) {
            inet_ntop(AF_INET, &a[i].ipaddr, buf, sizeof buf);
            rr_add(req, blk, &off, 0, buf, strlen(buf));
        }
        break;
    }
    case DNS_T_AAAA: {
        struct ares_addr6ttl a[DNS_RR_MAX];
        int n = DNS_RR_MAX, i;
        char buf[INET6_ADDRSTRLEN];

        rc = ares_parse_aaaa_reply(abuf, alen, NULL, a, &n);
        for (i = 0; rc == ARES_SUCCESS && i < n; i++) {
            inet_ntop(AF_INET6, &a[i].ip6addr, buf, sizeof buf);
            rr_add(req, blk, &off, 0, buf, strlen(buf));
        }
        break;
    }
    case DNS_T_MX: {
        struct ares_mx_reply *mx = NULL, *m;

        rc = ares_parse_mx_reply(abuf, alen, &mx);
        for (m = mx; rc == ARES_SUCCESS && m != NULL; m = m->next)
            rr_add(req, blk, &off, m->priority, m->host, strlen(m->host));
        ares_free_data(mx);
        /* Best first, as Momentum documents; stable for equal ones. */
        if (req->count > 1)
            qsort(req->rr, req->count, sizeof *req->rr, rr_pref_cmp);
        break;
    }
    case DNS_T_TXT: {
        struct ares_txt_ext *txt = NULL, *t;
        char *joined = blk + DNS_RR_BYTES_MAX / 2;
        size_t jl = 0;

        /* A record's strings are joined (RFC 7208 3.3); records kept
         * apart, in answer order. */
        rc = ares_parse_txt_reply_ext(abuf, alen, &txt);
        for (t = txt; rc == ARES_SUCCESS && t != NULL; t = t->next) {
            if (t->record_start && jl > 0) {
                rr_add(req, blk, &off, 0, joined, jl);
                jl = 0;
            }
            if (jl + t->length < DNS_RR_BYTES_MAX / 2) {
                memcpy(joined + jl, t->txt, t->length);
                jl += t->length;
            }
        }
        if (jl > 0)
            rr_add(req, blk, &off, 0, joined, jl);
        ares_free_data(txt);
        break;
    }
    case DNS_T_PTR:
    case DNS_T_NS: {
        struct hostent *h = NULL;
        int i;

        if (req->type == DNS_T_PTR)
            rc = ares_parse_ptr_reply(abuf, alen, NULL, 0, AF_INET, &h);
        else
            rc = ares_parse_ns_reply(abuf, alen, &h);
        for (i = 0; rc == ARES_SUCCESS && h->h_aliases[i] != NULL; i++)
            rr_add(req, blk, &off, 0, h->h_aliases[i],
                   strlen(h->h_aliases[i]));
        if (rc == ARES_SUCCESS && req->type == DNS_T_PTR && req->count == 0)
            rr_add(req, blk, &off, 0, h->h_name, strlen(h->h_name));
        if (h != NULL)
            ares_free_hostent(h);
        break;
    }
    default:
        rc = ARES_ENOTIMP;
        break;
    }
    return rc;
}


static void
dns_rr_deferred(struct op *op, int res, uint32_t flags)
{
    struct dns_rr_req *req = container_of(op, struct dns_rr_req, op);

    req->cb(req);
}


static void
dns_rr_answer(void *arg, int status, int timeouts, unsigned char *abuf,
              int alen)
{
    struct dns_rr_req *req = arg;
    int rc = status;

    if (status == ARES_SUCCESS)
        rc = rr_parse(req, abuf, alen);
    if (rc == ARES_SUCCESS && req->count == 0)
        rc = ARES_ENODATA;
    switch (rc) {
    case ARES_SUCCESS:
        req->status = DNS_OK;
        req->why = "ok";
        break;
    case ARES_ENODATA:
        req->status = DNS_NO_MX_OR_A;
        req->why = "no records";
        break;
    case ARES_ENOTFOUND:
        req->status = DNS_NXDOMAIN;
        req->why = "NXDOMAIN";
        break;
    default:
        req->status = DNS_TEMPFAIL;
        req->why = rc == ARES_EBADRESP ? "malformed answer"
                                       : dns_ares_why(rc);
        break;
    }
    loop_defer(req->d->lp, &req->op);
}


/* dns_rr_type - "A", "aaaa", "MX", ... to the query type; -1 if unknown */
int
dns_rr_type(const char *name)
{
    static const struct { const char *name; int type; } types[] = {
        { "A", DNS_T_A }, { "AAAA", DNS_T_AAAA }, { "TXT", DNS_T_TXT },
        { "MX", DNS_T_MX }, { "PTR", DNS_T_PTR }, { "NS", DNS_T_NS },
    };
    size_t i;

    for (i = 0; i < ARRAY_SIZE(types); i++) {
        if (strcasecmp(name, types[i].name) == 0)
            return types[i].type;
    }
    return -1;
}


/* dns_lookup_rr - see dns.h */
void
dns_lookup_rr(struct dns *d, const char *name, int type,
              struct dns_rr_req *req, dns_rr_fn *cb)
{
    char norm[DNS_NAME_MAX + 1];

    memset(req, 0, sizeof *req);
    req->d = d;
    req->cb = cb;
    req->type = type;
    req->op.done = dns_rr_deferred;
    if (d->closing) {
        req->status = DNS_TEMPFAIL;
        req->why = "resolver shut down";
        loop_defer(d->lp, &req->op);
        return;
    }
    if (dns_name_normalize(name, norm) < 0) {
        req->status = DNS_NXDOMAIN;
        req->why = "invalid name";
        loop_defer(d->lp, &req->op);
        return;
    }
    dns_query(d, norm, type, dns_rr_answer, req);
}


void
dns_rr_free(struct dns_rr_req *req)
{
    free(req->rr);
    req->rr = NULL;
    req->count = 0;
}
