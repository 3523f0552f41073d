/*
 * main - ringmaild: options, configuration, sockets, shards, signals, exit
 *
 * SYNOPSIS
 *   ringmaild -c FILE          run in the foreground
 *   ringmaild -t -c FILE       check the configuration, exit 0 or 1
 * DESCRIPTION
 *   The order of things: load and check the configuration (every error as
 *   FILE:LINE: message); open the paniclog; create the spool directories;
 *   block the signals (only this thread takes them, with sigtimedwait);
 *   create every shard's listening sockets (one SO_REUSEPORT socket per
 *   shard per Listen address, so the kernel spreads connections); start
 *   the shards and wait until each serves; log "ready".
 *
 *   SIGTERM/SIGINT: drain (shards stop taking mail, answer 421 4.3.2 to new
 *   connections, finish open transactions within Shutdown_Timeout), join
 *   the shards, exit 0. A second SIGTERM stops at once (sessions waiting
 *   for a commit still get their answer). SIGUSR1 reopens the paniclog
 *   and the delivery log.
 *   SIGHUP runs daemon_reload(), as ringctl's `config reload` does: the
 *   scriptlet scope's new policy generation is checked first and applied
 *   only if it is sound.
 *
 *   The console and metrics sockets (control.h) are bound with the SMTP
 *   listeners; then, with User set, the spool and log files are given to
 *   that user and root is dropped, before any shard starts. The control
 *   thread starts with the shards (/ready says 503 until all serve) and
 *   stops after they are joined. `shutdown` on the console raises
 *   SIGTERM: the same drain.
 * OWNERSHIP
 *   The configuration and the shard array live for the whole process.
 * THREADS
 *   The main thread never touches a shard's data; it posts messages
 *   (xshard.h).
 */
#include <arpa/inet.h>
#include <ck_pr.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <sched.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include "conf.h"
#include "control.h"
#include "daemon.h"
#include "policy.h"
#include "log.h"
#include "privdrop.h"
#include "shard.h"
#include "spool.h"
#include "util.h"
#include "xshard.h"

#define LISTEN_BACKLOG 4096


static void
usage(FILE *fp)
{
    fprintf(fp, "usage: ringmaild [-t] -c FILE\n"
                "  -c FILE  configuration file\n"
                "  -t       check the configuration and exit\n");
}


/*
 * mkdir_p - create dir and its parents; 0 or -errno. Mode 0755: with User
 * set, the unprivileged daemon must be able to pass through the
 * directories root made (files inside keep their own modes, 0640).
 */
static int
mkdir_p(const char *dir)
{
    char tmp[4096];
    size_t n = strlen(dir);
    char *p;

    if (n == 0 || n >= sizeof tmp)
        return -ENAMETOOLONG;
    memcpy(tmp, dir, n + 1);
    for (p = tmp + 1; *p != '\0'; p++) {
        if (*p != '/')
            continue;
        *p = '\0';
        if (mkdir(tmp, 0755) < 0 && errno != EEXIST)
            return -errno;
        *p = '/';
    }
    if (mkdir(tmp, 0755) < 0 && errno != EEXIST)
        return -errno;
    return 0;
}


static int
mkdir_parent(const char *path)
{
    char tmp[4096];
    char *slash;

    snprintf(tmp, sizeof tmp, "%s", path);
    slash = strrchr(tmp, '/');
    if (slash == NULL || slash == tmp)
        return 0;
    *slash = '\0';
    return mkdir_p(tmp);
}


static void
addr_text(const struct sockaddr_storage *ss, char *buf, size_t len)
{
    char ip[INET6_ADDRSTRLEN];

    if (ss->ss_family == AF_INET6) {
        const struct sockaddr_in6 *s6 = (const void *)ss;

        inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof ip);
        snprintf(buf, len, "[%s]:%u", ip, ntohs(s6->sin6_port));
    } else {
        const struct sockaddr_in *s4 = (const void *)ss;

        inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof ip);
        snprintf(buf, len, "%s:%u", ip, ntohs(s4->sin_port));
    }
}


/*
 * spool_stranded - count live messages in shard directories that no shard
 * of this run will own (Shards lowered, or auto on a smaller machine).
 * XXX: until delivery can adopt a foreign shard's spool, ringmaild refuses
 * to start rather than leave accepted mail where nothing looks at it.
 */
static uint64_t
spool_stranded(const char *spool_base, unsigned nshards, char *first,
               size_t first_len)
{
    DIR *d = opendir(spool_base);
    struct dirent *de;
    uint64_t live = 0;

    if (d == NULL)
        return 0;
    while ((de = readdir(d)) != NULL) {
        struct spool_scan_stats st;
        char *end, dir[4200];
        unsigned long id = strtoul(de->d_name, &end, 10);

        if (de->d_name[0] < '0' || de->d_name[0] > '9' || *end != '\0' ||
            id < nshards)
            continue;
        snprintf(dir, sizeof dir, "%s/%s", spool_base, de->d_name);
        memset(&st, 0, sizeof st);
        if (spool_scan(dir, NULL, NULL, &st) == 0 && st.live > 0) {
            if (live == 0)
                snprintf(first, first_len, "%s", dir);
            live += st.live;
        }
    }
    closedir(d);
    return live;
}


/*
 * drop_privileges - become User: the spool, the log files and the console
 * sockets are given to it first, so that it can go on writing them
 */
static int
drop_privileges(const struct conf *c, struct control *ctl)
{
    const char *files[] = { c->paniclog, c->delivery_log };
    uid_t uid;
    gid_t gid;
    size_t i;
    int rc, fd;

    rc = privdrop_lookup(c->user, &uid, &gid);
    if (rc < 0) {
        log_panic("main", "User %s: %s", c->user, rc == -ENOENT
                  ? "no such user" : strerror(-rc));
        return rc;
    }
    rc = privdrop_chown_tree(c->spool_base, uid, gid);
    for (i = 0; rc == 0 && i < ARRAY_SIZE(files); i++) {
        /* Shards open the delivery log after the drop: create it now. */
        fd = open(files[i], O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
        if (fd < 0 || fchown(fd, uid, gid) < 0)
            rc = -errno;
        if (fd >= 0)
            close(fd);
    }
    if (rc == 0)
        rc = control_chown(ctl, uid, gid);
    if (rc == 0)
        rc = privdrop_switch(c->user, uid, gid);
    if (rc < 0)
        log_panic("main", "cannot run as User %s: %s", c->user,
                  strerror(-rc));
    else
        log_panic("main", "running as User %s (uid %u, gid %u)", c->user,
                  (unsigned)uid, (unsigned)gid);
    return rc;
}


/*
 * listen_socket - one SO_REUSEPORT listening socket on addr. When addr has
 * port 0 the kernel picks one, and *addr is updated so that the sockets of
 * the other shards join the same port.
 */
/*
 * usable_cpus - the CPUs this process may run on, lowest first, as nproc
 * counts them: in a container or under taskset that is fewer than the
 * online CPUs, and Shards = auto and Pin_Shards must use these.
 */
static unsigned
usable_cpus(int *ids, unsigned max)
{
    cpu_set_t set;
    unsigned n = 0;
    int c;

    if (sched_getaffinity(0, sizeof set, &set) == 0) {
        for (c = 0; c < CPU_SETSIZE && n < max; c++)
            if (CPU_ISSET(c, &set))
                ids[n++] = c;
    }
    if (n == 0) {
        long online = sysconf(_SC_NPROCESSORS_ONLN);

        for (c = 0; c < online && n < max; c++)
            ids[n++] = c;
    }
    return n > 0 ? n : (ids[0] = 0, 1);
}


static int
listen_socket(struct sockaddr_storage *addr, socklen_t len)
{
    int one = 1, fd;

    fd = socket(addr->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one) < 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one) < 0)
        goto fail;
    if (addr->ss_family == AF_INET6 &&
        setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof one) < 0)
        goto fail;
    if (bind(fd, (struct sockaddr *)addr, len) < 0)
        goto fail;
    if (listen(fd, LISTEN_BACKLOG) < 0)
        goto fail;
    if (getsockname(fd, (struct sockaddr *)addr, &len) < 0)
        goto fail;
    return fd;
fail:
    {
        int err = errno;

        close(fd);
        return -err;
    }
}


/*
 * open_listeners - for every Listen address, one socket per shard;
 * fills per_shard[i] (an array of listen_count entries each).
 */
static int
open_listeners(const struct conf *c, unsigned nshards,
               struct shard_listen **per_shard, size_t *listen_count,
               char *ready_text, size_t ready_len)
{
    size_t total = 0, k = 0, l, a;
    unsigned i;

    for (l = 0; l < c->listener_count; l++)
        total += c->listeners[l].listen_count;
    for (i = 0; i < nshards; i++)
        per_shard[i] = xcalloc(total, sizeof **per_shard);
    ready_text[0] = '\0';
    for (l = 0; l < c->listener_count; l++) {
        const struct conf_esmtp_listener *el = &c->listeners[l];

        for (a = 0; a < el->listen_count; a++, k++) {
            struct sockaddr_storage addr;
            char text[80];

            memcpy(&addr, &el->listens[a].addr, sizeof addr);
            for (i = 0; i < nshards; i++) {
                int fd = listen_socket(&addr, el->listens[a].addr_len);

                if (fd < 0) {
                    fprintf(stderr, "%s:%d: cannot listen on %s: %s\n",
                            el->listens[a].file, el->listens[a].line,
                            el->listens[a].text, strerror(-fd));
                    return fd;
                }
                per_shard[i][k].fd = fd;
                per_shard[i][k].conf = el;
                per_shard[i][k].listen = &el->listens[a];
            }
            addr_text(&addr, text, sizeof text);
            snprintf(ready_text + strlen(ready_text),
                     ready_len - strlen(ready_text), "%s%s",
                     k ? " " : "", text);
        }
    }
    *listen_count = total;
    return 0;
}


int
main(int argc, char **argv)
{
    const char *conf_path = NULL;
    struct conf_errors errs = { 0 };
    struct conf *conf;
    struct shard *shards = NULL;
    struct shard_listen **per_shard = NULL;
    struct xshard_sender tx;
    struct control ctl;
    size_t listen_count = 0;
    unsigned nshards, i, ncpu;
    int cpu_ids[CPU_SETSIZE];
    char ready_text[1024];
    sigset_t sigs;
    int policy_started = 0;
    int check_only = 0, opt, rc, draining = 0, failed = 0, tx_ok = 0,
        handed_over = 0, ctl_ok = 0;

    static const struct option longopts[] = {
        { "help", no_argument, NULL, 'h' },
        { "version", no_argument, NULL, 'V' },
        { NULL, 0, NULL, 0 },
    };
    while ((opt = getopt_long(argc, argv, "c:thV", longopts, NULL)) != -1) {
        switch (opt) {
        case 'c':
            conf_path = optarg;
            break;
        case 't':
            check_only = 1;
            break;
        case 'h':
            usage(stdout);
            return 0;
        case 'V':
            printf("ringmaild 0.1.0\n");
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (conf_path == NULL || optind != argc) {
        usage(stderr);
        return 2;
    }

    conf = conf_load(conf_path, &errs);
    if (conf == NULL) {
        conf_errors_print(&errs, stderr);
        conf_errors_fini(&errs);
        return 1;
    }
    if (check_only) {
        char err[8192];
        struct policy_gen *g = policy_gen_build(conf, err, sizeof err);

        if (g == NULL && conf->scriptlet.instance != NULL) {
            fprintf(stderr, "%s\n", err);
            conf_free(conf);
            return 1;
        }
        policy_gen_put(g);
        printf("%s: configuration OK\n", conf_path);
        conf_free(conf);
        return 0;
    }

    rc = mkdir_parent(conf->paniclog);
    if (rc == 0)
        rc = log_open(conf->paniclog);
    if (rc < 0) {
        fprintf(stderr, "ringmaild: cannot open paniclog %s: %s\n",
                conf->paniclog, strerror(-rc));
        goto fail;
    }
    ncpu = usable_cpus(cpu_ids, CPU_SETSIZE);
    nshards = conf->shards ? conf->shards : MIN(ncpu, 256u);
    {
        char first[4200] = "";
        uint64_t live = spool_stranded(conf->spool_base, nshards, first,
                                       sizeof first);

        if (live > 0) {
            log_panic("main", "%llu live messages are in %s (and maybe "
                      "other shard directories) that %u shards would not "
                      "own; set Shards to at least the number of shard "
                      "directories in %s", (unsigned long long)live, first,
                      nshards, conf->spool_base);
            goto fail;
        }
    }
    for (i = 0; i < nshards; i++) {
        char dir[4200];

        snprintf(dir, sizeof dir, "%s/%u", conf->spool_base, i);
        rc = mkdir_p(dir);
        if (rc < 0) {
            log_panic("main", "cannot create spool directory %s: %s", dir,
                      strerror(-rc));
            goto fail;
        }
    }
    (void)mkdir_parent(conf->delivery_log);
    {
        char err[8192];

        if (daemon_start(conf_path, conf, err, sizeof err) < 0) {
            log_panic("main", "scriptlet: %s", err);
            fprintf(stderr, "%s\n", err);
            goto fail;
        }
        policy_started = 1;
    }

    /* Only this thread takes signals; shards inherit the blocked mask. */
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    sigaddset(&sigs, SIGUSR1);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);

    per_shard = xcalloc(nshards, sizeof *per_shard);
    rc = open_listeners(conf, nshards, per_shard, &listen_count, ready_text,
                        sizeof ready_text);
    if (rc < 0) {
        log_panic("main", "cannot open listeners: %s", strerror(-rc));
        goto fail;
    }
    rc = xshard_sender_init(&tx);
    if (rc < 0) {
        log_panic("main", "io_uring setup: %s", strerror(-rc));
        goto fail;
    }
    tx_ok = 1;
    /* Console and metrics sockets: bound before root is dropped. */
    rc = control_open(&ctl, conf);
    ctl_ok = 1;
    if (rc < 0)
        goto fail;
    if (conf->user != NULL && drop_privileges(conf, &ctl) < 0)
        goto fail;

    shards = xcalloc(nshards, sizeof *shards);
    handed_over = 1;             /* the shards own and close the sockets */
    for (i = 0; i < nshards; i++) {
        shard_setup(&shards[i], i, nshards,
                    conf->pin_shards ? cpu_ids[i % ncpu] : -1, conf,
                    per_shard[i], listen_count);
        rc = shard_start(&shards[i]);
        if (rc < 0) {
            /* Unreachable in practice (pthread_create); no way to unwind. */
            log_panic("main", "cannot start shard %u: %s", i, strerror(-rc));
            _exit(1);
        }
    }
    /* /ready answers 503 until every shard serves. */
    rc = control_start(&ctl, shards, nshards);
    if (rc < 0)
        log_panic("main", "cannot start the control thread: %s; no console "
                  "or metrics", strerror(-rc));
    for (i = 0; i < nshards; i++) {
        if (shard_wait_started(&shards[i]) < 0)
            failed = 1;
    }
    daemon_shards_set(shards, nshards);
    if (failed) {
        log_panic("main", "a shard failed to start; stopping");
        for (i = 0; i < nshards; i++)
            shard_stop_remote(&shards[i], &tx);
    } else {
        log_panic("main", "ringmaild ready: %u shards, listening on %s",
                  nshards, ready_text);
    }

    while (!failed) {
        /* Draining: look at the shards often, so exit follows at once. */
        struct timespec ts = { draining ? 0 : 1, draining ? 20000000 : 0 };
        int done = 0;

        for (i = 0; i < nshards; i++) {
            if (ck_pr_load_int((int *)&shards[i].state) == SHARD_STATE_DONE)
                done++;
        }
        if (done == (int)nshards)
            break;
        rc = sigtimedwait(&sigs, NULL, &ts);
        if (rc == SIGTERM || rc == SIGINT) {
            if (!draining) {
                log_panic("main", "%s: draining (budget %u ms)",
                          rc == SIGTERM ? "SIGTERM" : "SIGINT",
                          conf->shutdown_timeout_ms);
                for (i = 0; i < nshards; i++)
                    shard_drain_remote(&shards[i], &tx);
                draining = 1;
            } else {
                log_panic("main", "second signal: stopping now");
                for (i = 0; i < nshards; i++)
                    shard_stop_remote(&shards[i], &tx);
            }
        } else if (rc == SIGUSR1) {
            log_reopen();
            for (i = 0; i < nshards; i++)
                shard_reopen_logs_remote(&shards[i], &tx);
            log_panic("main", "paniclog reopened");
        } else if (rc == SIGHUP) {
            char err[8192];

            /* daemon_reload() logs what it did, or why not. */
            log_panic("main", "SIGHUP: configuration reload");
            (void)daemon_reload(err, sizeof err);
        }
    }

    for (i = 0; i < nshards; i++)
        shard_join(&shards[i]);
    /* The control thread reads the shards' memory: stop it first. */
    control_stop(&ctl);
    ctl_ok = 0;
    daemon_shards_set(NULL, 0);
    log_panic("main", failed ? "ringmaild failed to start" :
                              "ringmaild stopped");
    free(shards);
    goto out;
fail:
    failed = 1;
out:
    /* Every exit comes here, so nothing leaks (ASan checks it). */
    if (ctl_ok)
        control_stop(&ctl);
    if (tx_ok)
        xshard_sender_fini(&tx);
    if (policy_started)
        daemon_stop();
    if (per_shard != NULL) {
        for (i = 0; i < nshards; i++) {
            if (!handed_over && per_shard[i] != NULL) {
                /* Shards close their sockets; these were never handed over. */
                for (size_t k = 0; k < listen_count; k++) {
                    if (per_shard[i][k].fd > 0)
                        close(per_shard[i][k].fd);
                }
            }
            free(per_shard[i]);
        }
        free(per_shard);
    }
    conf_free(conf);
    log_close();
    return failed ? 1 : 0;
}
