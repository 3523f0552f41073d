/*
 * control - see control.h
 *
 * One thread, one poll() loop over: the eventfd control_stop() writes,
 * the listening sockets, and up to CONTROL_CLIENTS_MAX clients. A client
 * is read when poll says so (MSG_DONTWAIT), and a complete console line
 * or HTTP request is answered at once with blocking sends bounded by
 * SO_SNDTIMEO. Once a second the loop samples the shards' totals for the
 * rates `summary` shows.
 */
#include "control.h"

#include <arpa/inet.h>
#include <ck_pr.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "log.h"
#include "util.h"


/* control_unix_listen - a 0600 unix socket at path; fd or -errno */
static int
control_unix_listen(const char *path)
{
    struct sockaddr_un sun;
    mode_t old;
    int fd, rc, probe;
    char dir[sizeof sun.sun_path];
    char *slash;

    memset(&sun, 0, sizeof sun);
    sun.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sun.sun_path)
        return -ENAMETOOLONG;
    memcpy(sun.sun_path, path, strlen(path) + 1);
    snprintf(dir, sizeof dir, "%s", path);
    slash = strrchr(dir, '/');
    if (slash != NULL && slash != dir) {
        *slash = '\0';
        if (mkdir(dir, 0750) < 0 && errno != EEXIST)
            return -errno;
    }
    /* A socket file nobody answers on is a crash's leftover: replace it. */
    probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (probe < 0)
        return -errno;
    rc = connect(probe, (struct sockaddr *)&sun, sizeof sun);
    close(probe);
    if (rc == 0)
        return -EADDRINUSE;
    if (errno == ECONNREFUSED)
        unlink(path);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    old = umask(0177);
    rc = bind(fd, (struct sockaddr *)&sun, sizeof sun);
    umask(old);
    if (rc < 0 || chmod(path, 0600) < 0 || listen(fd, 16) < 0) {
        rc = -errno;
        close(fd);
        return rc;
    }
    return fd;
}


/* control_tcp_listen - the metrics socket on addr; fd or -errno */
static int
control_tcp_listen(struct sockaddr_storage *addr, socklen_t len)
{
    int one = 1, fd, rc;

    fd = socket(addr->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        bind(fd, (struct sockaddr *)addr, len) < 0 || listen(fd, 64) < 0 ||
        getsockname(fd, (struct sockaddr *)addr, &len) < 0) {
        rc = -errno;
        close(fd);
        return rc;
    }
    return fd;
}


/* control_open - bind every console socket and metrics address */
int
control_open(struct control *ctl, const struct conf *conf)
{
    size_t i;
    int fd;

    memset(ctl, 0, sizeof *ctl);
    ctl->conf = conf;
    ctl->wake_fd = -1;
    for (i = 0; i < CONTROL_CLIENTS_MAX; i++)
        ctl->clients[i].fd = -1;
    ctl->ctl_fds = xcalloc(conf->control_listen_count + 1, sizeof(int));
    ctl->metrics_fds = xcalloc(conf->metrics_listen_count + 1, sizeof(int));
    for (i = 0; i < conf->control_listen_count; i++) {
        const struct conf_control_listen *cl = &conf->control_listens[i];

        fd = control_unix_listen(cl->path);
        if (fd < 0) {
            log_panic("control", "%s:%d: cannot listen on %s: %s", cl->file,
                      cl->line, cl->path, fd == -EADDRINUSE
                      ? "another process answers there" : strerror(-fd));
            return fd;
        }
        ctl->ctl_fds[ctl->ctl_count++] = fd;
        log_panic("control", "console listening on %s", cl->path);
    }
    for (i = 0; i < conf->metrics_listen_count; i++) {
        const struct conf_listen *ml = &conf->metrics_listens[i];
        struct sockaddr_storage addr = ml->addr;
        char ip[INET6_ADDRSTRLEN];
        unsigned port;

        fd = control_tcp_listen(&addr, ml->addr_len);
        if (fd < 0) {
            log_panic("control", "%s:%d: cannot listen on %s: %s", ml->file,
                      ml->line, ml->text, strerror(-fd));
            return fd;
        }
        ctl->metrics_fds[ctl->metrics_count++] = fd;
        if (addr.ss_family == AF_INET6) {
            struct sockaddr_in6 *s6 = (void *)&addr;

            inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof ip);
            port = ntohs(s6->sin6_port);
            log_panic("control", "metrics listening on [%s]:%u", ip, port);
        } else {
            struct sockaddr_in *s4 = (void *)&addr;

            inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof ip);
            port = ntohs(s4->sin_port);
            log_panic("control", "metrics listening on %s:%u", ip, port);
        }
    }
    return 0;
}


/* control_chown - the console sockets belong to the User we run as */
int
control_chown(struct control *ctl, uid_t uid, gid_t gid)
{
    size_t i;

    for (i = 0; i < ctl->ctl_count; i++) {
        if (chown(ctl->conf->control_listens[i].path, uid, gid) < 0)
            return -errno;
    }
    return 0;
}


/* control_ready - every shard serves: /ready says 200 */
int
control_ready(const struct control *ctl)
{
    unsigned i;

    if (!ctl->started)
        return 0;
    for (i = 0; i < ctl->nshards; i++) {
        if (ck_pr_load_int((int *)&ctl->shards[i].state) !=
            SHARD_STATE_RUNNING)
            return 0;
    }
    return 1;
}


/* control_rate_sample - once a second: the shards' totals, for rates */
static void
control_rate_sample(struct control *ctl, uint64_t now)
{
    struct control_rate *r;
    struct stats_snap s;
    unsigned i;

    r = &ctl->rates[ctl->rate_next];
    memset(r, 0, sizeof *r);
    r->ms = now;
    for (i = 0; i < ctl->nshards; i++) {
        stats_read(&ctl->shards[i].pub, &s);
        r->received += s.messages_received;
        r->delivered += s.delivered;
    }
    ctl->rate_next = (ctl->rate_next + 1) % CONTROL_RATE_SAMPLES;
    if (ctl->rate_count < CONTROL_RATE_SAMPLES)
        ctl->rate_count++;
}


/* control_rates - messages received and recipients delivered per second,
 * over the last window_s seconds (or as many as were sampled) */
void
control_rates(const struct control *ctl, unsigned window_s,
              double *received_per_s, double *delivered_per_s)
{
    const struct control_rate *last, *first;
    unsigned back;
    double secs;

    *received_per_s = *delivered_per_s = 0;
    if (ctl->rate_count < 2)
        return;
    back = MIN(window_s, ctl->rate_count - 1);
    last = &ctl->rates[(ctl->rate_next + CONTROL_RATE_SAMPLES - 1) %
                       CONTROL_RATE_SAMPLES];
    first = &ctl->rates[(ctl->rate_next + CONTROL_RATE_SAMPLES - 1 - back) %
                        CONTROL_RATE_SAMPLES];
    secs = (double)(last->ms - first->ms) / 1000.0;
    if (secs <= 0)
        return;
    *received_per_s = (double)(last->received - first->received) / secs;
    *delivered_per_s = (double)(last->delivered - first->delivered) / secs;
}


static void
control_client_close(struct control_client *cl)
{
    if (cl->fd >= 0)
        close(cl->fd);
    cl->fd = -1;
    cl->len = 0;
}


/* control_send - all of buf, or -1 (peer gone, or too slow) */
static int
control_send(int fd, const char *buf, size_t len)
{
    while (len > 0) {
        ssize_t n = send(fd, buf, len, MSG_NOSIGNAL);

        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0)
            return -1;
        buf += n;
        len -= (size_t)n;
    }
    return 0;
}


/*
 * control_console_line - run one command line and send its answer:
 * dot-stuffed body lines, then ".ok" or ".error"
 */
static int
control_console_line(struct control *ctl, struct control_client *cl,
                     char *line)
{
    struct outbuf *o = &ctl->out;
    struct outbuf framed = { 0 };
    const char *p;
    int json = 0, rc;

    while (*line == ' ' || *line == '\t')
        line++;
    if (strncmp(line, "--json", 6) == 0 &&
        (line[6] == ' ' || line[6] == '\t' || line[6] == '\0')) {
        json = 1;
        line += 6;
    }
    outbuf_reset(o);
    rc = control_cmd_run(ctl, line, json, o);
    if (o->len > 0 && o->p[o->len - 1] != '\n')
        outbuf_puts(o, "\n");
    for (p = o->p; p != NULL && *p != '\0';) {
        const char *nl = strchr(p, '\n');

        if (*p == '.')
            outbuf_puts(&framed, ".");
        outbuf_printf(&framed, "%.*s\n", (int)(nl - p), p);
        p = nl + 1;
    }
    outbuf_puts(&framed, rc == 0 ? ".ok\n" : ".error\n");
    rc = control_send(cl->fd, framed.p, framed.len);
    outbuf_fini(&framed);
    return rc;
}


/* control_console_read - take what the client sent; answer whole lines */
static void
control_console_read(struct control *ctl, struct control_client *cl)
{
    ssize_t n;
    char *nl;

    n = recv(cl->fd, cl->buf + cl->len, CONTROL_LINE_MAX - cl->len,
             MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        control_client_close(cl);
        return;
    }
    cl->len += (size_t)n;
    cl->deadline_ms = now_ms() + CONTROL_IDLE_TIMEOUT_MS;
    while ((nl = memchr(cl->buf, '\n', cl->len)) != NULL) {
        size_t used = (size_t)(nl - cl->buf) + 1;

        *nl = '\0';
        if (nl > cl->buf && nl[-1] == '\r')
            nl[-1] = '\0';
        if (control_console_line(ctl, cl, cl->buf) < 0) {
            control_client_close(cl);
            return;
        }
        memmove(cl->buf, cl->buf + used, cl->len - used);
        cl->len -= used;
    }
    if (cl->len == CONTROL_LINE_MAX) {
        static const char msg[] = "command line too long\n.error\n";

        (void)control_send(cl->fd, msg, sizeof msg - 1);
        control_client_close(cl);
    }
}


/* control_http_read - take the request; answer once it is complete */
static void
control_http_read(struct control *ctl, struct control_client *cl)
{
    ssize_t n;

    n = recv(cl->fd, cl->buf + cl->len, CONTROL_HTTP_MAX - 1 - cl->len,
             MSG_DONTWAIT);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return;
    if (n <= 0) {
        control_client_close(cl);
        return;
    }
    cl->len += (size_t)n;
    cl->buf[cl->len] = '\0';
    if (strstr(cl->buf, "\r\n\r\n") == NULL &&
        strstr(cl->buf, "\n\n") == NULL &&
        cl->len < CONTROL_HTTP_MAX - 1)
        return;
    outbuf_reset(&ctl->out);
    control_http_answer(ctl, cl->buf, cl->len, &ctl->out);
    (void)control_send(cl->fd, ctl->out.p, ctl->out.len);
    control_client_close(cl);
}


/* control_accept - take a client on listening socket fd */
static void
control_accept(struct control *ctl, int fd, enum control_client_kind kind)
{
    struct timeval tv = { CONTROL_SEND_TIMEOUT_MS / 1000,
                          (CONTROL_SEND_TIMEOUT_MS % 1000) * 1000 };
    struct control_client *cl = NULL;
    int cfd;
    size_t i;

    cfd = accept4(fd, NULL, NULL, SOCK_CLOEXEC);
    if (cfd < 0)
        return;
    for (i = 0; i < CONTROL_CLIENTS_MAX; i++) {
        if (ctl->clients[i].fd < 0) {
            cl = &ctl->clients[i];
            break;
        }
    }
    if (cl == NULL) {
        static const char busy[] = "too many control clients\n.error\n";
        static const char busy_http[] =
            "HTTP/1.0 503 Service Unavailable\r\nContent-Length: 0\r\n"
            "Connection: close\r\n\r\n";

        if (kind == CONTROL_CLIENT_CONSOLE)
            (void)send(cfd, busy, sizeof busy - 1, MSG_NOSIGNAL |
                       MSG_DONTWAIT);
        else
            (void)send(cfd, busy_http, sizeof busy_http - 1, MSG_NOSIGNAL |
                       MSG_DONTWAIT);
        close(cfd);
        return;
    }
    setsockopt(cfd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);
    cl->fd = cfd;
    cl->kind = kind;
    cl->len = 0;
    cl->deadline_ms = now_ms() + (kind == CONTROL_CLIENT_HTTP
                                  ? CONTROL_HTTP_TIMEOUT_MS
                                  : CONTROL_IDLE_TIMEOUT_MS);
}


/* control_timeouts - drop clients past their deadline */
static void
control_timeouts(struct control *ctl, uint64_t now)
{
    static const char slow[] =
        "HTTP/1.0 408 Request Timeout\r\nContent-Length: 0\r\n"
        "Connection: close\r\n\r\n";
    size_t i;

    for (i = 0; i < CONTROL_CLIENTS_MAX; i++) {
        struct control_client *cl = &ctl->clients[i];

        if (cl->fd < 0 || now < cl->deadline_ms)
            continue;
        if (cl->kind == CONTROL_CLIENT_HTTP)
            (void)send(cl->fd, slow, sizeof slow - 1,
                       MSG_NOSIGNAL | MSG_DONTWAIT);
        control_client_close(cl);
    }
}


static void *
control_main(void *arg)
{
    struct control *ctl = arg;
    struct pollfd pfd[1 + 16 + 16 + CONTROL_CLIENTS_MAX];
    int who[ARRAY_SIZE(pfd)];    /* -1 wake, -2 console, -3 metrics, else
                                    a client index */
    uint64_t next_sample = 0;

    pthread_setname_np(pthread_self(), "control");
    for (;;) {
        size_t n = 0, i;
        uint64_t now = now_ms();
        int rc;

        if (now >= next_sample) {
            control_rate_sample(ctl, now);
            next_sample = now + 1000;
        }
        control_timeouts(ctl, now);
        pfd[n].fd = ctl->wake_fd;
        pfd[n].events = POLLIN;
        who[n++] = -1;
        for (i = 0; i < ctl->ctl_count && i < 16; i++) {
            pfd[n].fd = ctl->ctl_fds[i];
            pfd[n].events = POLLIN;
            who[n++] = -2;
        }
        for (i = 0; i < ctl->metrics_count && i < 16; i++) {
            pfd[n].fd = ctl->metrics_fds[i];
            pfd[n].events = POLLIN;
            who[n++] = -3;
        }
        for (i = 0; i < CONTROL_CLIENTS_MAX; i++) {
            if (ctl->clients[i].fd < 0)
                continue;
            pfd[n].fd = ctl->clients[i].fd;
            pfd[n].events = POLLIN;
            who[n++] = (int)i;
        }
        rc = poll(pfd, n, 1000);
        if (rc <= 0)
            continue;
        for (i = 0; i < n; i++) {
            if (pfd[i].revents == 0)
                continue;
            if (who[i] == -1)
                return NULL;
            if (who[i] == -2) {
                control_accept(ctl, pfd[i].fd, CONTROL_CLIENT_CONSOLE);
            } else if (who[i] == -3) {
                control_accept(ctl, pfd[i].fd, CONTROL_CLIENT_HTTP);
            } else {
                struct control_client *cl = &ctl->clients[who[i]];

                if (cl->fd != pfd[i].fd)
                    continue;    /* closed and reused in this pass */
                if (cl->kind == CONTROL_CLIENT_HTTP)
                    control_http_read(ctl, cl);
                else
                    control_console_read(ctl, cl);
            }
        }
    }
}


/* control_start - the thread, once the shards exist (they may be starting) */
int
control_start(struct control *ctl, struct shard *shards, unsigned nshards)
{
    unsigned i;
    int rc;

    ctl->shards = shards;
    ctl->nshards = nshards;
    ctl->started_ms = now_ms();
    /* Nothing to serve: no thread. */
    if (ctl->ctl_count == 0 && ctl->metrics_count == 0)
        return 0;
    ctl->wake_fd = eventfd(0, EFD_CLOEXEC);
    if (ctl->wake_fd < 0)
        return -errno;
    rc = xshard_sender_init(&ctl->tx);
    if (rc < 0)
        return rc;
    ctl->tx_ok = 1;
    /* Rows come with a shard's first queue command (control_queue.c):
     * most daemons are never asked, and shards may be many. */
    ctl->reqs = xcalloc(nshards, sizeof *ctl->reqs);
    for (i = 0; i < CONTROL_CLIENTS_MAX; i++)
        ctl->clients[i].buf = xmalloc(CONTROL_HTTP_MAX);
    rc = -pthread_create(&ctl->thread, NULL, control_main, ctl);
    if (rc < 0)
        return rc;
    ck_pr_store_int(&ctl->started, 1);
    return 0;
}


/* control_stop - join the thread, close and unlink the sockets */
void
control_stop(struct control *ctl)
{
    uint64_t one = 1;
    size_t i;

    if (ctl->started) {
        if (write(ctl->wake_fd, &one, sizeof one) < 0)
            panic("control: cannot wake the control thread: %s",
                  strerror(errno));
        pthread_join(ctl->thread, NULL);
        ctl->started = 0;
    }
    for (i = 0; i < CONTROL_CLIENTS_MAX; i++) {
        control_client_close(&ctl->clients[i]);
        free(ctl->clients[i].buf);
        ctl->clients[i].buf = NULL;
    }
    for (i = 0; i < ctl->ctl_count; i++) {
        close(ctl->ctl_fds[i]);
        unlink(ctl->conf->control_listens[i].path);
    }
    for (i = 0; i < ctl->metrics_count; i++)
        close(ctl->metrics_fds[i]);
    free(ctl->ctl_fds);
    free(ctl->metrics_fds);
    ctl->ctl_fds = ctl->metrics_fds = NULL;
    ctl->ctl_count = ctl->metrics_count = 0;
    if (ctl->reqs != NULL) {
        /* A request a shard never answered is harmless now: they are
         * joined. */
        for (i = 0; i < ctl->nshards; i++)
            free(ctl->reqs[i].rows);
        free(ctl->reqs);
        ctl->reqs = NULL;
    }
    if (ctl->tx_ok)
        xshard_sender_fini(&ctl->tx);
    ctl->tx_ok = 0;
    if (ctl->wake_fd >= 0)
        close(ctl->wake_fd);
    ctl->wake_fd = -1;
    outbuf_fini(&ctl->out);
}
