/*
 * dns_test - MX and address lookups against a real dnsmasq, and against a
 * scripted UDP server that answers late, badly or not at all
 *
 * dnsmasq (/usr/sbin/dnsmasq) is started on a free 127.0.0.1 port with the
 * test zone below, under a guard process that stops it when the test ends
 * or dies; the test exits 77 (skipped) when dnsmasq is not installed.
 * The scripted server ("fake") is a thread with a blocking socket, which
 * is fine in a test: the resolver under test runs on a real struct loop in
 * the main thread.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmocka.h>

#include "dns.h"
#include "loop.h"
#include "util.h"

#define DNSMASQ "/usr/sbin/dnsmasq"
#define WAIT_MS_MAX 5000        /* no lookup in these tests takes longer */

static struct loop lp;
/* File scope: a failed case's teardown still finds it, not a dead stack. */
static struct dns d;

struct dnsmasq {
    pid_t guard;                /* its parent, see dnsmasq_guard() */
    int stop_fd;                /* close to stop */
    char server[32];            /* "127.0.0.1:port" */
};

static struct dnsmasq zone;             /* the shared test zone */
static char fake_server[32];
static pthread_t fake_thread;
static int fake_fd = -1;

/* ------------------------------------------------------------------ */
/* Packets.                                                            */

struct pkt {
    unsigned char b[4096];
    size_t n;
};


static void
put8(struct pkt *p, unsigned v)
{
    if (p->n < sizeof p->b)
        p->b[p->n++] = (unsigned char)v;
}


static void
put16(struct pkt *p, unsigned v)
{
    put8(p, v >> 8);
    put8(p, v);
}


static void
put32(struct pkt *p, uint32_t v)
{
    put16(p, v >> 16);
    put16(p, v & 0xffff);
}


static void
put_name(struct pkt *p, const char *name)
{
    while (*name != '\0') {
        const char *dot = strchr(name, '.');
        size_t len = dot != NULL ? (size_t)(dot - name) : strlen(name);

        put8(p, (unsigned)len);
        for (size_t i = 0; i < len; i++)
            put8(p, (unsigned char)name[i]);
        name += len;
        if (*name == '.')
            name++;
    }
    put8(p, 0);
}


static void
put_header(struct pkt *p, unsigned id, unsigned flags, unsigned qd,
           unsigned an, unsigned ns)
{
    p->n = 0;
    put16(p, id);
    put16(p, flags);
    put16(p, qd);
    put16(p, an);
    put16(p, ns);
    put16(p, 0);
}


/* put_rr - a record owned by the question's name (pointer to offset 12) */
static void
put_rr(struct pkt *p, unsigned type, uint32_t ttl, const void *rdata,
       size_t rdlen)
{
    put16(p, 0xc00c);
    put16(p, type);
    put16(p, 1);
    put32(p, ttl);
    put16(p, (unsigned)rdlen);
    for (size_t i = 0; i < rdlen; i++)
        put8(p, ((const unsigned char *)rdata)[i]);
}


static void
put_mx(struct pkt *p, uint32_t ttl, unsigned pref, const char *host)
{
    struct pkt rd = { .n = 0 };

    put16(&rd, pref);
    put_name(&rd, host);
    put_rr(p, 15, ttl, rd.b, rd.n);
}


static void
put_soa(struct pkt *p, uint32_t ttl, uint32_t minimum)
{
    struct pkt rd = { .n = 0 };

    put_name(&rd, "ns.test");
    put_name(&rd, "hostmaster.test");
    put32(&rd, 1);
    put32(&rd, 3600);
    put32(&rd, 600);
    put32(&rd, 86400);
    put32(&rd, minimum);
    put_rr(p, 6, ttl, rd.b, rd.n);
}

/* ------------------------------------------------------------------ */
/* The scripted server.                                                */

enum fake_mode {
    FAKE_SILENT,                /* never answers: timeouts */
    FAKE_GARBAGE,               /* random bytes */
    FAKE_SERVFAIL,
    FAKE_REFUSED,
    FAKE_BAD_RDLEN,             /* MX record longer than the packet */
    FAKE_PTR_LOOP,              /* MX host name points at itself */
    FAKE_SHORT_MX,              /* MX rdata of one byte */
    FAKE_ANCOUNT_LIE,           /* 50 answers announced, one sent */
    FAKE_BAD_LABEL,             /* 0x40 label type in the MX host */
    FAKE_BAD_A,                 /* good MX, A record of 3 bytes */
    FAKE_TC,                    /* truncated: c-ares tries TCP, refused */
    FAKE_MX_SILENT_A,           /* good MX, host lookups never answered */
    FAKE_MANY_MX,               /* 30 MX hosts, each with an address */
    FAKE_NX_SOA,                /* NXDOMAIN with SOA minimum 1 */
    FAKE_ODD_MX,                /* null MX, duplicates, a bad name */
    FAKE_MUTATE,                /* good answers with a few bytes flipped */
};

static atomic_int fake_mode;
static atomic_int fake_stop;
static atomic_uint fake_queries;


/* fake_answer - build the answer to query q (qlen bytes) for the mode */
static int
fake_answer(const unsigned char *q, size_t qlen, struct pkt *p,
            unsigned *seed)
{
    char qname[256], host[300];
    size_t off = 12, qend, ql = 0;
    unsigned id, qtype, mode = (unsigned)atomic_load(&fake_mode);

    if (qlen < 12)
        return -1;
    id = (unsigned)(q[0] << 8 | q[1]);
    while (off < qlen && q[off] != 0) {
        size_t len = q[off];

        if (off + 1 + len > qlen || ql + len + 1 >= sizeof qname)
            return -1;
        if (ql > 0)
            qname[ql++] = '.';
        memcpy(qname + ql, q + off + 1, len);
        ql += len;
        off += 1 + len;
    }
    qname[ql] = '\0';
    if (off + 5 > qlen)
        return -1;
    qend = off + 5;
    qtype = (unsigned)(q[off + 1] << 8 | q[off + 2]);

    switch (mode) {
    case FAKE_SILENT:
        return -1;
    case FAKE_GARBAGE:
        p->n = (size_t)(rand_r(seed) % 600);
        for (size_t i = 0; i < p->n; i++)
            p->b[i] = (unsigned char)rand_r(seed);
        /* Sometimes with the right id, so c-ares looks further. */
        if (p->n >= 2 && rand_r(seed) % 2) {
            p->b[0] = q[0];
            p->b[1] = q[1];
        }
        return 0;
    case FAKE_SERVFAIL:
    case FAKE_REFUSED:
        put_header(p, id, 0x8180 | (mode == FAKE_SERVFAIL ? 2 : 5), 1, 0, 0);
        break;
    case FAKE_NX_SOA:
        put_header(p, id, 0x8583, 1, 0, 1);
        break;
    case FAKE_TC:
        put_header(p, id, 0x8380, 1, 0, 0);
        break;
    default:
        put_header(p, id, 0x8580, 1, 0, 0);
        break;
    }
    memcpy(p->b + p->n, q + 12, qend - 12);
    p->n += qend - 12;
    if (mode == FAKE_SERVFAIL || mode == FAKE_REFUSED || mode == FAKE_TC)
        return 0;
    if (mode == FAKE_NX_SOA) {
        put_soa(p, 300, 1);
        return 0;
    }
    snprintf(host, sizeof host, "h.%s", qname);
    if (qtype == 15) {
        p->b[7] = 1;            /* ANCOUNT */
        switch (mode) {
        case FAKE_BAD_RDLEN:
            put16(p, 0xc00c);
            put16(p, 15);
            put16(p, 1);
            put32(p, 60);
            put16(p, 200);
            put16(p, 10);
            put_name(p, host);
            return 0;
        case FAKE_PTR_LOOP:
            put16(p, 0xc00c);
            put16(p, 15);
            put16(p, 1);
            put32(p, 60);
            put16(p, 4);
            put16(p, 10);
            put16(p, 0xc000 | (unsigned)p->n);  /* points at itself */
            return 0;
        case FAKE_SHORT_MX:
            put_rr(p, 15, 60, "\x01", 1);
            return 0;
        case FAKE_ANCOUNT_LIE:
            p->b[7] = 50;
            put_mx(p, 60, 10, host);
            return 0;
        case FAKE_BAD_LABEL: {
            static const unsigned char rd[] = { 0, 10, 0x41, 'x', 0 };

            put_rr(p, 15, 60, rd, sizeof rd);
            return 0;
        }
        case FAKE_MANY_MX:
            /* 20 x "MX pref hNN.<qname>", compressed: under 512 bytes. */
            p->b[7] = 20;
            for (unsigned i = 0; i < 20; i++) {
                char label[8];

                snprintf(label, sizeof label, "h%02u", i);
                put16(p, 0xc00c);
                put16(p, 15);
                put16(p, 1);
                put32(p, 60);
                put16(p, 2 + 4 + 2);
                put16(p, (i * 7) % 20);
                put8(p, 3);
                put8(p, (unsigned char)label[0]);
                put8(p, (unsigned char)label[1]);
                put8(p, (unsigned char)label[2]);
                put16(p, 0xc00c);
            }
            return 0;
        case FAKE_ODD_MX: {
            char h2[300];

            snprintf(h2, sizeof h2, "h2.%s", qname);
            p->b[7] = 5;
            put_mx(p, 60, 0, "");
            put_mx(p, 60, 20, host);
            put_mx(p, 60, 10, host);
            put_mx(p, 60, 30, "bad name!.test");
            put_mx(p, 60, 40, h2);
            return 0;
        }
        default:
            put_mx(p, 60, 10, host);
            break;
        }
    } else if (qtype == 1) {
        unsigned char a[4] = { 127, 0, 2, (unsigned char)(ql & 0xff) };

        if (mode == FAKE_MX_SILENT_A)
            return -1;
        p->b[7] = 1;
        put_rr(p, 1, 60, a, mode == FAKE_BAD_A ? 3 : 4);
    } else if (mode == FAKE_MX_SILENT_A) {
        return -1;
    }
    /* AAAA and the rest: no data. */
    if (mode == FAKE_MUTATE) {
        int flips = 1 + rand_r(seed) % 3;

        for (int i = 0; i < flips; i++) {
            size_t at = 2 + (size_t)rand_r(seed) % (p->n - 2);

            p->b[at] ^= (unsigned char)(1 + rand_r(seed) % 255);
        }
        if (rand_r(seed) % 4 == 0)
            p->n = 2 + (size_t)rand_r(seed) % (p->n - 2);
    }
    return 0;
}


static void *
fake_main(void *arg)
{
    unsigned seed = 12345;

    while (!atomic_load(&fake_stop)) {
        unsigned char q[512];
        struct sockaddr_storage from;
        socklen_t fromlen = sizeof from;
        struct pkt p;
        ssize_t n;

        n = recvfrom(fake_fd, q, sizeof q, 0, (struct sockaddr *)&from,
                     &fromlen);
        if (n < 0)
            continue;           /* SO_RCVTIMEO: look at fake_stop */
        atomic_fetch_add(&fake_queries, 1);
        p.n = 0;
        if (fake_answer(q, (size_t)n, &p, &seed) == 0)
            (void)sendto(fake_fd, p.b, p.n, 0, (struct sockaddr *)&from,
                         fromlen);
    }
    return NULL;
}


/* bound_udp - a UDP socket on a free 127.0.0.1 port */
static int
bound_udp(unsigned *port)
{
    struct sockaddr_in sin;
    socklen_t len = sizeof sin;
    int fd = socket(AF_INET, SOCK_DGRAM, 0);

    assert_true(fd >= 0);
    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    assert_int_equal(bind(fd, (struct sockaddr *)&sin, sizeof sin), 0);
    assert_int_equal(getsockname(fd, (struct sockaddr *)&sin, &len), 0);
    *port = ntohs(sin.sin_port);
    return fd;
}


static void
fake_start(void)
{
    struct timeval tv = { 0, 50000 };
    unsigned port;

    fake_fd = bound_udp(&port);
    setsockopt(fake_fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    snprintf(fake_server, sizeof fake_server, "127.0.0.1:%u", port);
    atomic_store(&fake_stop, 0);
    assert_int_equal(pthread_create(&fake_thread, NULL, fake_main, NULL), 0);
}


static void
fake_stop_thread(void)
{
    atomic_store(&fake_stop, 1);
    pthread_join(fake_thread, NULL);
    close(fake_fd);
}

/* ------------------------------------------------------------------ */
/* dnsmasq.                                                            */


/* dnsmasq_answers - does the server on port answer a query yet? */
static int
dnsmasq_answers(unsigned port)
{
    struct sockaddr_in sin;
    struct timeval tv = { 0, 100000 };
    struct pkt p;
    unsigned char r[512];
    int fd = socket(AF_INET, SOCK_DGRAM, 0), ok;

    memset(&sin, 0, sizeof sin);
    sin.sin_family = AF_INET;
    sin.sin_port = htons((uint16_t)port);
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    put_header(&p, 7, 0x0100, 1, 0, 0);
    put_name(&p, "amx.test");
    put16(&p, 1);
    put16(&p, 1);
    (void)sendto(fd, p.b, p.n, 0, (struct sockaddr *)&sin, sizeof sin);
    ok = recv(fd, r, sizeof r, 0) > 0;
    close(fd);
    return ok;
}


/* dnsmasq_exec - in the child: become dnsmasq serving the test zone */
static void
dnsmasq_exec(unsigned port)
{
    char port_arg[32];
    const char *argv[] = {
        DNSMASQ, "--keep-in-foreground", "--no-resolv", "--no-hosts",
        port_arg, "--listen-address=127.0.0.1", "--bind-interfaces",
        "--pid-file=", "--conf-file=/dev/null", "--log-facility=/dev/null",
        "--local=/test/", "--local-ttl=1",
        geteuid() == 0 ? "--user=root" : "--local=/unused/",
        "--mx-host=mx.test,mx1.mx.test,10",
        "--mx-host=mx.test,mx2.mx.test,20",
        "--host-record=mx1.mx.test,127.0.0.11",
        "--host-record=mx2.mx.test,127.0.0.12,fd00::12",
        "--host-record=amx.test,127.0.0.13",
        "--cname=alias.test,amx.test",
        "--dns-rr=nullmx.test,15,000000",
        "--txt-record=txt.test,hello",
        "--mx-host=badmx.test,nohost.test,10",
        "--mx-host=eq.test,e0.eq.test,5",
        "--mx-host=eq.test,e1.eq.test,10",
        "--mx-host=eq.test,e2.eq.test,10",
        "--mx-host=eq.test,e3.eq.test,10",
        "--mx-host=eq.test,e4.eq.test,10",
        "--host-record=e0.eq.test,127.0.1.0",
        "--host-record=e1.eq.test,127.0.1.1",
        "--host-record=e2.eq.test,127.0.1.2",
        "--host-record=e3.eq.test,127.0.1.3",
        "--host-record=e4.eq.test,127.0.1.4",
        "--host-record=gw.test,127.0.0.20",
        /* More than 512 bytes: truncated, then asked over TCP. */
        "--mx-host=big.test,mail-exchanger-number-00.big.test,1",
        "--mx-host=big.test,mail-exchanger-number-01.big.test,2",
        "--mx-host=big.test,mail-exchanger-number-02.big.test,3",
        "--mx-host=big.test,mail-exchanger-number-03.big.test,4",
        "--mx-host=big.test,mail-exchanger-number-04.big.test,5",
        "--mx-host=big.test,mail-exchanger-number-05.big.test,6",
        "--mx-host=big.test,mail-exchanger-number-06.big.test,7",
        "--mx-host=big.test,mail-exchanger-number-07.big.test,8",
        "--mx-host=big.test,mail-exchanger-number-08.big.test,9",
        "--mx-host=big.test,mail-exchanger-number-09.big.test,10",
        "--mx-host=big.test,mail-exchanger-number-10.big.test,11",
        "--mx-host=big.test,mail-exchanger-number-11.big.test,12",
        "--mx-host=big.test,mail-exchanger-number-12.big.test,13",
        "--mx-host=big.test,mail-exchanger-number-13.big.test,14",
        "--mx-host=big.test,mail-exchanger-number-14.big.test,15",
        "--mx-host=big.test,mail-exchanger-number-15.big.test,16",
        "--mx-host=big.test,mail-exchanger-number-16.big.test,17",
        "--mx-host=big.test,mail-exchanger-number-17.big.test,18",
        "--mx-host=big.test,mail-exchanger-number-18.big.test,19",
        "--mx-host=big.test,mail-exchanger-number-19.big.test,20",
        "--host-record=mail-exchanger-number-00.big.test,127.0.3.0",
        "--host-record=mail-exchanger-number-01.big.test,127.0.3.1",
        NULL,
    };

    snprintf(port_arg, sizeof port_arg, "--port=%u", port);
    execv(DNSMASQ, (char *const *)argv);
    _exit(127);
}


/*
 * dnsmasq_guard - in the child: run dnsmasq until the test closes its end
 * of the pipe, or dies. dnsmasq drops the parent-death signal when it
 * changes user, so this process (which never execs) watches instead.
 * Only async-signal-safe calls: the test has threads.
 */
static void
dnsmasq_guard(int rfd, unsigned port)
{
    struct pollfd pfd;
    pid_t pid;
    int status;

    if (dup2(rfd, 3) < 0)
        _exit(1);
    close_range(4, ~0U, 0);     /* no other guard's pipe held open */
    pid = fork();
    if (pid < 0)
        _exit(1);
    if (pid == 0) {
        close(3);
        dnsmasq_exec(port);
    }
    pfd.fd = 3;
    pfd.events = POLLIN;
    for (;;) {
        if (waitpid(pid, &status, WNOHANG) == pid)
            _exit(1);           /* could not bind, say */
        if (poll(&pfd, 1, 100) > 0)
            break;              /* EOF: stop */
    }
    kill(pid, SIGTERM);
    waitpid(pid, &status, 0);
    _exit(0);
}


/* dnsmasq_start - the test zone on a free port; retries a taken port */
static void
dnsmasq_start(struct dnsmasq *m)
{
    for (int attempt = 0; attempt < 5; attempt++) {
        unsigned port;
        int fd = bound_udp(&port), status, pipefd[2];
        pid_t g;

        close(fd);              /* free now; dnsmasq binds it (or fails) */
        assert_int_equal(pipe2(pipefd, O_CLOEXEC), 0);
        g = fork();
        assert_true(g >= 0);
        if (g == 0)
            dnsmasq_guard(pipefd[0], port);
        close(pipefd[0]);
        for (int i = 0; i < 50; i++) {
            if (waitpid(g, &status, WNOHANG) == g)
                break;          /* port taken, say: try another */
            if (dnsmasq_answers(port)) {
                m->guard = g;
                m->stop_fd = pipefd[1];
                snprintf(m->server, sizeof m->server, "127.0.0.1:%u", port);
                return;
            }
        }
        close(pipefd[1]);
        waitpid(g, &status, 0);
    }
    fail_msg("dnsmasq did not start");
}


static void
dnsmasq_stop(struct dnsmasq *m)
{
    int status;

    close(m->stop_fd);
    waitpid(m->guard, &status, 0);
}

/* ------------------------------------------------------------------ */
/* Lookups on the loop.                                                */

struct lookup {
    struct dns_req req;
    int calls;
    enum dns_status status;
    const char *why;
    struct dns_result *res;
    struct dns *fini_me;        /* calls dns_fini() from the callback */
};

static int lookups_done;


static void
lookup_done(struct dns_req *req)
{
    struct lookup *l = container_of(req, struct lookup, req);

    l->calls++;
    l->status = req->status;
    l->why = req->why;
    l->res = req->result;
    lookups_done++;
    if (l->fini_me != NULL) {
        dns_fini(l->fini_me);
        l->fini_me = NULL;
    }
}


/* run_until - turn the loop until n callbacks ran; the time it took */
static uint64_t
run_until(int n)
{
    uint64_t start = now_ms();

    while (lookups_done < n && now_ms() - start < WAIT_MS_MAX)
        loop_run_once(&lp, 20);
    assert_int_equal(lookups_done, n);
    return now_ms() - start;
}


/* drain - let cancelled polls and timers complete (they free themselves) */
static void
drain(void)
{
    for (int i = 0; i < 5; i++)
        loop_run_once(&lp, 5);
}


static void
init_on(struct dns *r, const char *server, unsigned timeout_ms)
{
    const char *servers[1] = { server };
    struct dns_opts o;

    dns_opts_default(&o);
    o.servers = servers;
    o.server_count = 1;
    o.timeout_ms = timeout_ms;
    o.tries = 2;
    assert_int_equal(dns_init_opts(r, &lp, &o), 0);
}


static void
lookup_reset(struct lookup *l, size_t n)
{
    memset(l, 0, n * sizeof *l);
    lookups_done = 0;
}


/* resolve_mx_one - one MX lookup, run to its end */
static void
resolve_mx_one(struct dns *r, const char *domain, struct lookup *l)
{
    lookup_reset(l, 1);
    dns_resolve_mx(r, domain, &l->req, lookup_done);
    assert_int_equal(l->calls, 0);     /* never from inside the call */
    run_until(1);
    assert_int_equal(l->calls, 1);
}


static void
resolve_a_one(struct dns *r, const char *host, struct lookup *l)
{
    lookup_reset(l, 1);
    dns_resolve_a(r, host, &l->req, lookup_done);
    assert_int_equal(l->calls, 0);
    run_until(1);
    assert_int_equal(l->calls, 1);
}


static const char *
addr_text(const struct dns_addr *a, char *buf, size_t len)
{
    return inet_ntop(a->family, &a->u, buf, (socklen_t)len);
}

/* ------------------------------------------------------------------ */
/* Cases against dnsmasq.                                              */


static void
test_mx_two_hosts_sorted(void **state)
{
    static struct lookup l;
    char buf[64];

    init_on(&d, zone.server, 1000);
    resolve_mx_one(&d, "MX.Test.", &l);
    assert_int_equal(l.status, DNS_OK);
    assert_string_equal(dns_status_code(l.status), "2.0.0");
    assert_int_equal(l.res->implicit_mx, 0);
    assert_int_equal(l.res->host_count, 2);
    assert_string_equal(l.res->hosts[0].name, "mx1.mx.test");
    assert_int_equal(l.res->hosts[0].pref, 10);
    assert_int_equal(l.res->hosts[0].addr_count, 1);
    assert_string_equal(addr_text(&l.res->hosts[0].addrs[0], buf, sizeof buf),
                        "127.0.0.11");
    assert_string_equal(l.res->hosts[1].name, "mx2.mx.test");
    assert_int_equal(l.res->hosts[1].pref, 20);
    /* IPv4 first, then IPv6. */
    assert_int_equal(l.res->hosts[1].addr_count, 2);
    assert_string_equal(addr_text(&l.res->hosts[1].addrs[0], buf, sizeof buf),
                        "127.0.0.12");
    assert_string_equal(addr_text(&l.res->hosts[1].addrs[1], buf, sizeof buf),
                        "fd00::12");
    /* dnsmasq's TTL of 1 s is raised to the 5 s floor. */
    assert_int_equal(l.res->ttl_s, DNS_TTL_MIN_S);
    dns_result_free(l.res);
    dns_fini(&d);
    drain();
}


static void
test_implicit_mx(void **state)
{
    static struct lookup l;
    char buf[64];

    init_on(&d, zone.server, 1000);
    resolve_mx_one(&d, "amx.test", &l);
    assert_int_equal(l.status, DNS_OK);
    assert_int_equal(l.res->implicit_mx, 1);
    assert_int_equal(l.res->host_count, 1);
    assert_string_equal(l.res->hosts[0].name, "amx.test");
    assert_int_equal(l.res->hosts[0].pref, 0);
    assert_int_equal(l.res->hosts[0].addr_count, 1);
    assert_string_equal(addr_text(&l.res->hosts[0].addrs[0], buf, sizeof buf),
                        "127.0.0.13");
    dns_result_free(l.res);
    dns_fini(&d);
    drain();
}


static void
test_implicit_mx_through_cname(void **state)
{
    static struct lookup l;
    char buf[64];

    init_on(&d, zone.server, 1000);
    resolve_mx_one(&d, "alias.test", &l);
    assert_int_equal(l.status, DNS_OK);
    assert_int_equal(l.res->implicit_mx, 1);
    assert_string_equal(l.res->hosts[0].name, "alias.test");
    assert_string_equal(addr_text(&l.res->hosts[0].addrs[0], buf, sizeof buf),
                        "127.0.0.13");
    dns_result_free(l.res);
    dns_fini(&d);
    drain();
}


static void
test_nxdomain(void **state)
{
    static struct lookup l;

    init_on(&d, zone.server, 1000);
    resolve_mx_one(&d, "nx.test", &l);
    assert_int_equal(l.status, DNS_NXDOMAIN);
    assert_string_equal(dns_status_code(l.status), "5.1.2");
    assert_null(l.res);
    dns_fini(&d);
    drain();
}


static void
test_no_mx_no_a(void **state)
{
    static struct lookup l;

    init_on(&d, zone.server, 1000);
    resolve_mx_one(&d, "txt.test", &l);
    assert_int_equal(l.status, DNS_NO_MX_OR_A);
    assert_string_equal(dns_status_code(l.status), "5.4.4");
    assert_null(l.res);
    dns_fini(&d);
    drain();
}


static void
test_mx_host_without_address(void **state)
{
    static struct lookup l;

    init_on(&d, zone.server, 1000);
    resolve_mx_one(&d, "badmx.test", &l);
    assert_int_equal(l.status, DNS_NO_MX_OR_A);
    assert_string_equal(l.why, "no MX host has an address");
    dns_fini(&d);
    drain();
}


static void
test_truncated_answer_over_tcp(void **state)
{
    static struct lookup l;

    init_on(&d, zone.server, 1000);
    resolve_mx_one(&d, "big.test", &l);
    assert_int_equal(l.status, DNS_OK);
    /* The ten best of twenty; the eight without address are left out. */
    assert_int_equal(l.res->host_count, 2);
    assert_string_equal(l.res->hosts[0].name,
                        "mail-exchanger-number-00.big.test");
    assert_string_equal(l.res->hosts[1].name,
                        "mail-exchanger-number-01.big.test");
    dns_result_free(l.res);
    /* 1 MX + 10 hosts x (A + AAAA) */
    assert_int_equal(d.stats.queries, 21);
    dns_fini(&d);
    drain();
}


static void
test_null_mx(void **state)
{
    static struct lookup l;

    init_on(&d, zone.server, 1000);
    resolve_mx_one(&d, "nullmx.test", &l);
    assert_int_equal(l.status, DNS_NULL_MX);
    assert_string_equal(dns_status_code(l.status), "5.1.10");
    /* Bounced at once: no address lookup was made. */
    assert_int_equal(d.stats.queries, 1);
    dns_fini(&d);
    drain();
}


static void
test_invalid_domain(void **state)
{
    static const char *const bad[] = {
        "", ".", "a..b", "exa mple.com", "x\\.y", "-\n.com",
        "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.com",
    };
    static struct lookup l;

    init_on(&d, zone.server, 1000);
    for (size_t i = 0; i < ARRAY_SIZE(bad); i++) {
        resolve_mx_one(&d, bad[i], &l);
        assert_int_equal(l.status, DNS_NXDOMAIN);
    }
    assert_int_equal(d.stats.queries, 0);
    dns_fini(&d);
    drain();
}


static void
test_resolve_a(void **state)
{
    static struct lookup l;
    char buf[64];

    init_on(&d, zone.server, 1000);
    resolve_a_one(&d, "gw.test", &l);
    assert_int_equal(l.status, DNS_OK);
    assert_int_equal(l.res->host_count, 1);
    assert_string_equal(addr_text(&l.res->hosts[0].addrs[0], buf, sizeof buf),
                        "127.0.0.20");
    dns_result_free(l.res);

    resolve_a_one(&d, "nohost.test", &l);
    assert_int_equal(l.status, DNS_NXDOMAIN);
    resolve_a_one(&d, "txt.test", &l);
    assert_int_equal(l.status, DNS_NO_MX_OR_A);

    /* Literals answer themselves. */
    uint64_t queries = d.stats.queries;

    resolve_a_one(&d, "192.0.2.7", &l);
    assert_int_equal(l.status, DNS_OK);
    assert_string_equal(addr_text(&l.res->hosts[0].addrs[0], buf, sizeof buf),
                        "192.0.2.7");
    dns_result_free(l.res);
    resolve_a_one(&d, "2001:db8::7", &l);
    assert_int_equal(l.status, DNS_OK);
    assert_int_equal(l.res->hosts[0].addrs[0].family, AF_INET6);
    dns_result_free(l.res);
    assert_int_equal(d.stats.queries, queries);
    dns_fini(&d);
    drain();
}


static void
test_equal_preferences_shuffled(void **state)
{
    static struct lookup l;
    int first_seen[5] = { 0 };

    init_on(&d, zone.server, 1000);
    for (int i = 0; i < 60; i++) {
        resolve_mx_one(&d, "eq.test", &l);
        assert_int_equal(l.status, DNS_OK);
        assert_int_equal(l.res->host_count, 5);
        /* Preference 5 always first, then the four of preference 10. */
        assert_string_equal(l.res->hosts[0].name, "e0.eq.test");
        for (size_t h = 1; h < 5; h++)
            assert_int_equal(l.res->hosts[h].pref, 10);
        first_seen[l.res->hosts[1].name[1] - '0']++;
        dns_result_free(l.res);
    }
    /* Each of the four came second at least once (P(miss) < 1e-6). */
    for (int h = 1; h < 5; h++)
        assert_true(first_seen[h] > 0);
    /* One resolution, then the cache: 1 MX + 5 hosts x (A + AAAA). */
    assert_int_equal(d.stats.queries, 11);
    dns_fini(&d);
    drain();
}


static void
test_cache_hit(void **state)
{
    static struct dnsmasq m;
    static struct lookup l;
    uint64_t queries;

    dnsmasq_start(&m);
    init_on(&d, m.server, 200);
    resolve_mx_one(&d, "mx.test", &l);
    assert_int_equal(l.status, DNS_OK);
    dns_result_free(l.res);
    queries = d.stats.queries;
    assert_int_equal(queries, 5);       /* MX, then A + AAAA per host */
    dnsmasq_stop(&m);

    resolve_mx_one(&d, "mx.test", &l);
    assert_int_equal(l.status, DNS_OK);
    assert_int_equal(l.res->host_count, 2);
    assert_true(l.res->ttl_s <= DNS_TTL_MIN_S);
    dns_result_free(l.res);
    /* The host addresses are cached too. */
    resolve_a_one(&d, "mx2.mx.test", &l);
    assert_int_equal(l.status, DNS_OK);
    dns_result_free(l.res);
    assert_int_equal(d.stats.queries, queries);
    assert_int_equal(d.stats.hits, 2);
    dns_fini(&d);
    drain();
}


static void
test_negative_cache(void **state)
{
    static struct lookup l;

    init_on(&d, zone.server, 1000);
    resolve_mx_one(&d, "nx.test", &l);
    assert_int_equal(l.status, DNS_NXDOMAIN);
    resolve_mx_one(&d, "txt.test", &l);
    assert_int_equal(l.status, DNS_NO_MX_OR_A);
    resolve_mx_one(&d, "nullmx.test", &l);
    assert_int_equal(l.status, DNS_NULL_MX);
    uint64_t queries = d.stats.queries;

    resolve_mx_one(&d, "nx.test", &l);
    assert_int_equal(l.status, DNS_NXDOMAIN);
    resolve_mx_one(&d, "txt.test", &l);
    assert_int_equal(l.status, DNS_NO_MX_OR_A);
    resolve_mx_one(&d, "nullmx.test", &l);
    assert_int_equal(l.status, DNS_NULL_MX);
    assert_int_equal(d.stats.queries, queries);
    assert_int_equal(d.stats.hits, 3);
    dns_fini(&d);
    drain();
}


static void
test_ttl_expiry(void **state)
{
    const char *servers[1] = { zone.server };
    struct dns_opts o;
    static struct lookup l;
    uint64_t start;

    dns_opts_default(&o);
    o.servers = servers;
    o.server_count = 1;
    o.ttl_min_s = 1;            /* dnsmasq says 1 s: keep it */
    assert_int_equal(dns_init_opts(&d, &lp, &o), 0);
    resolve_mx_one(&d, "amx.test", &l);
    assert_int_equal(l.status, DNS_OK);
    assert_int_equal(l.res->ttl_s, 1);
    dns_result_free(l.res);
    assert_int_equal(d.stats.queries, 3);
    resolve_mx_one(&d, "amx.test", &l);
    dns_result_free(l.res);
    assert_int_equal(d.stats.queries, 3);
    start = now_ms();
    while (now_ms() - start < 1100)
        loop_run_once(&lp, 50);
    resolve_mx_one(&d, "amx.test", &l);
    assert_int_equal(l.status, DNS_OK);
    dns_result_free(l.res);
    assert_int_equal(d.stats.queries, 6);
    dns_fini(&d);
    drain();
}


static void
test_coalescing(void **state)
{
    static struct lookup l[10];

    init_on(&d, zone.server, 1000);
    lookup_reset(l, 10);
    for (int i = 0; i < 10; i++)
        dns_resolve_mx(&d, "mx.test", &l[i].req, lookup_done);
    run_until(10);
    for (int i = 0; i < 10; i++) {
        assert_int_equal(l[i].calls, 1);
        assert_int_equal(l[i].status, DNS_OK);
        assert_int_equal(l[i].res->host_count, 2);
        /* Each waiter owns its copy. */
        for (int j = 0; j < i; j++)
            assert_ptr_not_equal(l[i].res, l[j].res);
        dns_result_free(l[i].res);
    }
    assert_int_equal(d.stats.queries, 5);
    assert_int_equal(d.stats.coalesced, 9);
    dns_fini(&d);
    drain();
}


static void
test_resolv_conf_and_bad_servers(void **state)
{
    const char *bad[] = { "127.0.0.1:53,127.0.0.2" };
    const char *junk[] = { "not-an-address" };
    const char *two[] = { "127.0.0.1", "[::1]:5353" };

    /* No servers: /etc/resolv.conf (or c-ares' default), read once. */
    assert_int_equal(dns_init(&d, &lp, NULL, 0), 0);
    dns_fini(&d);
    assert_int_equal(dns_init(&d, &lp, two, 2), 0);
    dns_fini(&d);
    assert_int_equal(dns_init(&d, &lp, bad, 1), -EINVAL);
    assert_int_equal(dns_init(&d, &lp, junk, 1), -EINVAL);
    drain();
}

/* ------------------------------------------------------------------ */
/* Cases against the scripted server.                                  */


static void
test_timeout(void **state)
{
    static struct lookup l;
    uint64_t ms, queries;

    atomic_store(&fake_mode, FAKE_SILENT);
    init_on(&d, fake_server, 200);
    lookup_reset(&l, 1);
    dns_resolve_mx(&d, "slow.test", &l.req, lookup_done);
    ms = run_until(1);
    assert_int_equal(l.status, DNS_TEMPFAIL);
    assert_string_equal(dns_status_code(l.status), "4.4.3");
    assert_string_equal(l.why, "timeout");
    /* 200 ms, then 400 ms: c-ares doubles the timeout each round. */
    assert_true(ms >= 500);
    assert_true(ms < 1500);
    /* TEMPFAIL is cached a few seconds: no new query. */
    queries = d.stats.queries;
    resolve_mx_one(&d, "slow.test", &l);
    assert_int_equal(l.status, DNS_TEMPFAIL);
    assert_int_equal(d.stats.queries, queries);
    dns_fini(&d);
    drain();
}


static void
test_servfail_and_refused(void **state)
{
    static struct lookup l;

    atomic_store(&fake_mode, FAKE_SERVFAIL);
    init_on(&d, fake_server, 200);
    resolve_mx_one(&d, "sf.test", &l);
    assert_int_equal(l.status, DNS_TEMPFAIL);
    print_message("SERVFAIL: %s\n", l.why);
    atomic_store(&fake_mode, FAKE_REFUSED);
    resolve_mx_one(&d, "ref.test", &l);
    assert_int_equal(l.status, DNS_TEMPFAIL);
    print_message("REFUSED: %s\n", l.why);
    dns_fini(&d);
    drain();
}


static void
test_nxdomain_soa_ttl(void **state)
{
    const char *servers[1] = { fake_server };
    struct dns_opts o;
    static struct lookup l;
    uint64_t start;

    atomic_store(&fake_mode, FAKE_NX_SOA);
    dns_opts_default(&o);
    o.servers = servers;
    o.server_count = 1;
    o.ttl_min_s = 1;
    assert_int_equal(dns_init_opts(&d, &lp, &o), 0);
    resolve_mx_one(&d, "gone.test", &l);
    assert_int_equal(l.status, DNS_NXDOMAIN);
    resolve_mx_one(&d, "gone.test", &l);
    assert_int_equal(d.stats.queries, 1);
    /* SOA minimum 1 s (TTL 300): cached for 1 s, not DNS_NEG_TTL_S. */
    start = now_ms();
    while (now_ms() - start < 1100)
        loop_run_once(&lp, 50);
    resolve_mx_one(&d, "gone.test", &l);
    assert_int_equal(l.status, DNS_NXDOMAIN);
    assert_int_equal(d.stats.queries, 2);
    dns_fini(&d);
    drain();
}


static void
test_malformed_answers(void **state)
{
    static const struct {
        const char *name;
        enum fake_mode mode;
    } cases[] = {
        { "garbage", FAKE_GARBAGE },
        { "bad_rdlen", FAKE_BAD_RDLEN },
        { "ptr_loop", FAKE_PTR_LOOP },
        { "short_mx", FAKE_SHORT_MX },
        { "ancount_lie", FAKE_ANCOUNT_LIE },
        { "bad_label", FAKE_BAD_LABEL },
        { "bad_a", FAKE_BAD_A },
        { "truncated_then_tcp_refused", FAKE_TC },
    };
    static struct lookup l;
    char domain[64];

    init_on(&d, fake_server, 100);
    for (size_t i = 0; i < ARRAY_SIZE(cases); i++) {
        atomic_store(&fake_mode, cases[i].mode);
        snprintf(domain, sizeof domain, "%s.test", cases[i].name);
        resolve_mx_one(&d, domain, &l);
        print_message("%-28s %s: %s\n", cases[i].name,
                      dns_status_name(l.status), l.why);
        assert_int_equal(l.status, DNS_TEMPFAIL);
    }
    dns_fini(&d);
    drain();
}


static void
test_mutated_answers(void **state)
{
    enum { N = 200 };
    static struct lookup l[N];
    static char names[N][32];
    int ok = 0, tempfail = 0;

    atomic_store(&fake_mode, FAKE_MUTATE);
    init_on(&d, fake_server, 100);
    lookup_reset(l, N);
    for (int i = 0; i < N; i++) {
        snprintf(names[i], sizeof names[i], "m%d.test", i);
        dns_resolve_mx(&d, names[i], &l[i].req, lookup_done);
    }
    run_until(N);
    for (int i = 0; i < N; i++) {
        assert_int_equal(l[i].calls, 1);
        ok += l[i].status == DNS_OK;
        if (l[i].status != DNS_OK && l[i].status != DNS_TEMPFAIL)
            print_message("  %s: %s %s\n", names[i],
                          dns_status_name(l[i].status), l[i].why);
        tempfail += l[i].status == DNS_TEMPFAIL;
        if (l[i].res != NULL) {
            assert_true(l[i].res->host_count >= 1);
            assert_true(l[i].res->hosts[0].addr_count >= 1);
        }
        dns_result_free(l[i].res);
    }
    print_message("mutated: %d ok, %d tempfail, %d other\n", ok, tempfail,
                  N - ok - tempfail);
    dns_fini(&d);
    drain();
}


static void
test_many_mx_capped(void **state)
{
    static struct lookup l;

    atomic_store(&fake_mode, FAKE_MANY_MX);
    init_on(&d, fake_server, 500);
    resolve_mx_one(&d, "many.test", &l);
    assert_int_equal(l.status, DNS_OK);
    assert_int_equal(l.res->host_count, DNS_MX_HOSTS_MAX);
    for (size_t i = 0; i < l.res->host_count; i++)
        assert_int_equal(l.res->hosts[i].pref, i);
    dns_result_free(l.res);
    dns_fini(&d);
    drain();
}


static void
test_odd_mx_sets(void **state)
{
    static struct lookup l;
    char name[300];

    atomic_store(&fake_mode, FAKE_ODD_MX);
    init_on(&d, fake_server, 500);
    resolve_mx_one(&d, "odd.test", &l);
    /* The null MX among others and the bad name are dropped, h kept once. */
    assert_int_equal(l.status, DNS_OK);
    assert_int_equal(l.res->host_count, 2);
    assert_string_equal(l.res->hosts[0].name, "h.odd.test");
    assert_int_equal(l.res->hosts[0].pref, 10);
    snprintf(name, sizeof name, "h2.odd.test");
    assert_string_equal(l.res->hosts[1].name, name);
    assert_int_equal(l.res->hosts[1].pref, 40);
    dns_result_free(l.res);
    dns_fini(&d);
    drain();
}


static void
test_ipv4_only(void **state)
{
    const char *servers[1] = { zone.server };
    static struct lookup l;
    struct dns_opts o;

    dns_opts_default(&o);
    o.servers = servers;
    o.server_count = 1;
    o.ipv6 = 0;
    assert_int_equal(dns_init_opts(&d, &lp, &o), 0);
    resolve_mx_one(&d, "mx.test", &l);
    assert_int_equal(l.status, DNS_OK);
    assert_int_equal(l.res->hosts[1].addr_count, 1);
    assert_int_equal(l.res->hosts[1].addrs[0].family, AF_INET);
    dns_result_free(l.res);
    assert_int_equal(d.stats.queries, 3);   /* MX, A, A */
    dns_fini(&d);
    drain();
}


/*
 * test_timer_moves_earlier - a lookup started while the timer waits for an
 * older query's longer retry must still time out on its own schedule: the
 * armed timeout is moved earlier (IORING_TIMEOUT_UPDATE).
 */
static void
test_timer_moves_earlier(void **state)
{
    static struct lookup l[2];
    uint64_t start, second = 0;

    atomic_store(&fake_mode, FAKE_SILENT);
    init_on(&d, fake_server, 200);
    lookup_reset(l, 2);
    dns_resolve_a(&d, "t1.test", &l[0].req, lookup_done);
    start = now_ms();
    /* After 250 ms the first query is in its 400 ms retry (ends at 600). */
    while (now_ms() - start < 250)
        loop_run_once(&lp, 10);
    second = now_ms();
    dns_resolve_a(&d, "t2.test", &l[1].req, lookup_done);
    while (l[1].calls == 0 && now_ms() - start < WAIT_MS_MAX)
        loop_run_once(&lp, 10);
    second = now_ms() - second;
    print_message("second lookup timed out after %llu ms\n",
                  (unsigned long long)second);
    assert_string_equal(l[1].why, "timeout");
    /* 200 + 400 ms; a timer left at the first query's deadline: 800. */
    assert_true(second >= 550);
    assert_true(second < 680);
    run_until(2);
    dns_fini(&d);
    drain();
}


static void
test_cache_bounded(void **state)
{
    const char *servers[1] = { zone.server };
    struct dns_opts o;
    static struct lookup l[3];

    dns_opts_default(&o);
    o.servers = servers;
    o.server_count = 1;
    o.cache_entries_max = 3;
    assert_int_equal(dns_init_opts(&d, &lp, &o), 0);
    /* amx.test takes 2 entries (MX, address), gw.test 1, e1 evicts. */
    resolve_mx_one(&d, "amx.test", &l[0]);
    dns_result_free(l[0].res);
    resolve_a_one(&d, "gw.test", &l[0]);
    dns_result_free(l[0].res);
    resolve_a_one(&d, "e1.eq.test", &l[0]);
    assert_int_equal(l[0].status, DNS_OK);
    dns_result_free(l[0].res);
    assert_int_equal(d.entry_count, 3);
    assert_int_equal(d.stats.evictions, 1);
    dns_fini(&d);
    drain();

    /* Every entry in flight: the next name fails at once. */
    atomic_store(&fake_mode, FAKE_SILENT);
    o.servers = (const char *[]){ fake_server };
    o.cache_entries_max = 2;
    o.timeout_ms = 100;
    assert_int_equal(dns_init_opts(&d, &lp, &o), 0);
    lookup_reset(l, 3);
    dns_resolve_a(&d, "s1.test", &l[0].req, lookup_done);
    dns_resolve_a(&d, "s2.test", &l[1].req, lookup_done);
    dns_resolve_a(&d, "s3.test", &l[2].req, lookup_done);
    run_until(1);
    assert_int_equal(l[2].status, DNS_TEMPFAIL);
    assert_string_equal(l[2].why, "too many lookups in flight");
    run_until(3);
    assert_string_equal(l[0].why, "timeout");
    dns_fini(&d);
    drain();
}


static void
test_fini_in_flight(void **state)
{
    enum { N = 20 };
    static struct lookup l[N];
    char name[32];

    atomic_store(&fake_mode, FAKE_SILENT);
    init_on(&d, fake_server, 1000);
    lookup_reset(l, N);
    for (int i = 0; i < N; i++) {
        snprintf(name, sizeof name, "f%d.test", i % 10);
        dns_resolve_mx(&d, name, &l[i].req, lookup_done);
    }
    /* Queries sent, polls and timer armed. */
    loop_run_once(&lp, 20);
    loop_run_once(&lp, 20);
    assert_int_equal(lookups_done, 0);
    dns_fini(&d);
    run_until(N);
    for (int i = 0; i < N; i++) {
        assert_int_equal(l[i].calls, 1);
        assert_int_equal(l[i].status, DNS_TEMPFAIL);
        assert_string_equal(l[i].why, "resolver shut down");
    }
    drain();
}


static void
test_fini_with_mx_waiting_on_hosts(void **state)
{
    static struct lookup l[3];
    uint64_t start = now_ms();

    atomic_store(&fake_mode, FAKE_MX_SILENT_A);
    init_on(&d, fake_server, 1000);
    lookup_reset(l, 3);
    dns_resolve_mx(&d, "w1.test", &l[0].req, lookup_done);
    dns_resolve_mx(&d, "w2.test", &l[1].req, lookup_done);
    dns_resolve_a(&d, "h.w1.test", &l[2].req, lookup_done);
    /* Until the MX answers came and the host lookups are in flight. */
    while (d.stats.queries < 6 && now_ms() - start < WAIT_MS_MAX)
        loop_run_once(&lp, 20);
    assert_int_equal(d.stats.queries, 6);
    assert_int_equal(lookups_done, 0);
    dns_fini(&d);
    run_until(3);
    for (int i = 0; i < 3; i++)
        assert_string_equal(l[i].why, "resolver shut down");
    drain();
}


static void
test_fini_from_callback(void **state)
{
    static struct lookup l[3];

    atomic_store(&fake_mode, FAKE_SILENT);
    init_on(&d, zone.server, 1000);
    lookup_reset(l, 3);
    /* mx.test answers; its callback shuts the resolver down. */
    dns_resolve_mx(&d, "mx.test", &l[0].req, lookup_done);
    l[0].fini_me = &d;
    run_until(1);
    assert_int_equal(l[0].status, DNS_OK);
    dns_result_free(l[0].res);
    drain();

    /* Now with others in flight, answered "shut down" afterwards. */
    init_on(&d, fake_server, 1000);
    lookup_reset(l, 3);
    dns_resolve_a(&d, "192.0.2.1", &l[0].req, lookup_done);
    l[0].fini_me = &d;
    dns_resolve_mx(&d, "x1.test", &l[1].req, lookup_done);
    dns_resolve_mx(&d, "x2.test", &l[2].req, lookup_done);
    run_until(3);
    assert_int_equal(l[0].status, DNS_OK);
    dns_result_free(l[0].res);
    assert_string_equal(l[1].why, "resolver shut down");
    assert_string_equal(l[2].why, "resolver shut down");
    drain();
}

/* ------------------------------------------------------------------ */
/* dns_answer_ttl().                                                   */


static void
test_answer_ttl(void **state)
{
    struct pkt p;
    uint32_t ttl;

    /* Smallest TTL of the MX records. */
    put_header(&p, 1, 0x8180, 1, 2, 0);
    put_name(&p, "a.test");
    put16(&p, 15);
    put16(&p, 1);
    put_mx(&p, 300, 10, "mx1.a.test");
    put_mx(&p, 100, 20, "mx2.a.test");
    assert_int_equal(dns_answer_ttl(p.b, p.n, 15, &ttl), 0);
    assert_int_equal(ttl, 100);
    /* Each truncation is caught. */
    for (size_t n = 0; n < p.n; n++)
        assert_int_equal(dns_answer_ttl(p.b, n, 15, &ttl), -EBADMSG);

    /* A TTL with the top bit set counts as 0 (RFC 2181). */
    put_header(&p, 1, 0x8180, 1, 1, 0);
    put_name(&p, "a.test");
    put16(&p, 15);
    put16(&p, 1);
    put_mx(&p, 0x80000000u, 10, "mx1.a.test");
    assert_int_equal(dns_answer_ttl(p.b, p.n, 15, &ttl), 0);
    assert_int_equal(ttl, 0);

    /* Negative: min(SOA TTL, MINIMUM). */
    put_header(&p, 1, 0x8183, 1, 0, 1);
    put_name(&p, "nx.test");
    put16(&p, 15);
    put16(&p, 1);
    put_soa(&p, 900, 60);
    assert_int_equal(dns_answer_ttl(p.b, p.n, 15, &ttl), 0);
    assert_int_equal(ttl, 60);
    put_header(&p, 1, 0x8183, 1, 0, 1);
    put_name(&p, "nx.test");
    put16(&p, 15);
    put16(&p, 1);
    put_soa(&p, 30, 600);
    assert_int_equal(dns_answer_ttl(p.b, p.n, 15, &ttl), 0);
    assert_int_equal(ttl, 30);

    /* Nothing to go by. */
    put_header(&p, 1, 0x8180, 1, 0, 0);
    put_name(&p, "a.test");
    put16(&p, 15);
    put16(&p, 1);
    assert_int_equal(dns_answer_ttl(p.b, p.n, 15, &ttl), -ENOENT);

    /* Random packets and random mutations never read out of bounds. */
    unsigned seed = 1;
    unsigned char buf[512];

    for (int i = 0; i < 200000; i++) {
        size_t n = (size_t)rand_r(&seed) % sizeof buf;

        if (i % 2) {
            for (size_t j = 0; j < n; j++)
                buf[j] = (unsigned char)rand_r(&seed);
        } else {
            n = MIN(p.n, sizeof buf);
            memcpy(buf, p.b, n);
            buf[rand_r(&seed) % n] ^= (unsigned char)rand_r(&seed);
            n = (size_t)rand_r(&seed) % (n + 1);
        }
        /* Exactly sized heap copy: ASan sees a read past the end. */
        unsigned char *heap = malloc(n + 1);

        memcpy(heap, buf, n);
        (void)dns_answer_ttl(heap, n, 15, &ttl);
        free(heap);
    }
}

/* ------------------------------------------------------------------ */


/* case_teardown - a failed case leaves no resolver behind */
static int
case_teardown(void **state)
{
    if (d.channel != NULL)
        dns_fini(&d);
    drain();
    return 0;
}


static int
group_setup(void **state)
{
    signal(SIGPIPE, SIG_IGN);
    if (loop_init(&lp, 256, 4096) < 0)
        return -1;
    dnsmasq_start(&zone);
    fake_start();
    return 0;
}


static int
group_teardown(void **state)
{
    fake_stop_thread();
    dnsmasq_stop(&zone);
    drain();
    loop_fini(&lp);
    return 0;
}


/* Record lookups (msys.dnsLookup): each type against dnsmasq. */
static int rr_calls;


static void
rr_done(struct dns_rr_req *req)
{
    rr_calls++;
}


static void
rr_one(const char *name, const char *type, struct dns_rr_req *req)
{
    int qtype = dns_rr_type(type);

    assert_true(qtype > 0);
    rr_calls = 0;
    dns_lookup_rr(&d, name, qtype, req, rr_done);
    assert_int_equal(rr_calls, 0);           /* never from inside */
    for (int i = 0; i < 500 && rr_calls == 0; i++)
        loop_run_once(&lp, 20);
    assert_int_equal(rr_calls, 1);
}


static void
test_record_lookups(void **state)
{
    static struct dns_rr_req req;

    assert_int_equal(dns_rr_type("mx"), dns_rr_type("MX"));
    assert_int_equal(dns_rr_type("SPF"), -1);
    init_on(&d, zone.server, 1000);

    /* MX: every host, best first, with or without an address */
    rr_one("mx.test", "MX", &req);
    assert_int_equal(req.status, DNS_OK);
    assert_int_equal(req.count, 2);
    assert_string_equal(req.rr[0].text, "mx1.mx.test");
    assert_int_equal(req.rr[0].pref, 10);
    assert_string_equal(req.rr[1].text, "mx2.mx.test");
    assert_int_equal(req.rr[1].pref, 20);
    dns_rr_free(&req);
    rr_one("badmx.test", "MX", &req);
    assert_int_equal(req.count, 1);
    assert_string_equal(req.rr[0].text, "nohost.test");
    dns_rr_free(&req);
    /* an address but no MX: no records (no implicit MX here) */
    rr_one("amx.test", "MX", &req);
    assert_int_equal(req.status, DNS_NO_MX_OR_A);
    assert_string_equal(req.why, "no records");
    dns_rr_free(&req);

    rr_one("mx2.mx.test", "A", &req);
    assert_int_equal(req.status, DNS_OK);
    assert_string_equal(req.rr[0].text, "127.0.0.12");
    dns_rr_free(&req);
    rr_one("mx2.mx.test", "AAAA", &req);
    assert_string_equal(req.rr[0].text, "fd00::12");
    dns_rr_free(&req);
    rr_one("txt.test", "TXT", &req);
    assert_int_equal(req.status, DNS_OK);
    assert_string_equal(req.rr[0].text, "hello");
    dns_rr_free(&req);
    rr_one("nowhere.test", "TXT", &req);
    assert_int_equal(req.status, DNS_NXDOMAIN);
    dns_rr_free(&req);
    rr_one("bad..name", "A", &req);
    assert_int_equal(req.status, DNS_NXDOMAIN);
    dns_rr_free(&req);
    dns_fini(&d);
    drain();
}


#define CASE(f) cmocka_unit_test_teardown(f, case_teardown)


int
main(void)
{
    const struct CMUnitTest tests[] = {
        CASE(test_answer_ttl),
        CASE(test_mx_two_hosts_sorted),
        CASE(test_implicit_mx),
        CASE(test_implicit_mx_through_cname),
        CASE(test_nxdomain),
        CASE(test_no_mx_no_a),
        CASE(test_mx_host_without_address),
        CASE(test_truncated_answer_over_tcp),
        CASE(test_null_mx),
        CASE(test_invalid_domain),
        CASE(test_resolve_a),
        CASE(test_equal_preferences_shuffled),
        CASE(test_cache_hit),
        CASE(test_negative_cache),
        CASE(test_ttl_expiry),
        CASE(test_coalescing),
        CASE(test_resolv_conf_and_bad_servers),
        CASE(test_timeout),
        CASE(test_servfail_and_refused),
        CASE(test_nxdomain_soa_ttl),
        CASE(test_malformed_answers),
        CASE(test_mutated_answers),
        CASE(test_many_mx_capped),
        CASE(test_odd_mx_sets),
        CASE(test_ipv4_only),
        CASE(test_timer_moves_earlier),
        CASE(test_cache_bounded),
        CASE(test_fini_in_flight),
        CASE(test_fini_with_mx_waiting_on_hosts),
        CASE(test_fini_from_callback),
        CASE(test_record_lookups),
    };

    if (access(DNSMASQ, X_OK) != 0) {
        fprintf(stderr, "dns_test: %s is not installed: skipped\n", DNSMASQ);
        return 77;
    }
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
