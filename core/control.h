/*
 * control - the control thread: ringctl's unix socket (line protocol) and
 *           the metrics listener (HTTP /metrics and /ready)
 *
 * SYNOPSIS
 *   int  control_open(struct control *ctl, const struct conf *conf);
 *   int  control_chown(struct control *ctl, uid_t uid, gid_t gid);
 *   int  control_start(struct control *ctl, struct shard *shards,
 *                      unsigned nshards);
 *   void control_stop(struct control *ctl);
 * DESCRIPTION
 *   control_open() (main thread, before privileges are dropped) binds
 *   every Control_Listener Listen path (a unix stream socket, mode 0600:
 *   only its owner and root may connect; a stale socket file left by a
 *   crash is replaced, a live one is an error) and every Metrics_Listener
 *   Listen address, and says where in the paniclog. 0 or -errno, with a
 *   paniclog line naming the address. control_chown() gives the socket
 *   files to the User ringmaild will run as.
 *
 *   control_start() starts the control thread once the shards exist. It
 *   serves both kinds of listener from one poll() loop; blocking there is
 *   fine (it is not a shard), and every wait is bounded: a console line
 *   is at most CONTROL_LINE_MAX bytes, an HTTP request CONTROL_HTTP_MAX
 *   bytes and CONTROL_HTTP_TIMEOUT_MS, a shard answers within
 *   CONTROL_SHARD_TIMEOUT_MS or the command says it did not, writes to a
 *   client time out after CONTROL_SEND_TIMEOUT_MS. At most
 *   CONTROL_CLIENTS_MAX clients at once; more are refused.
 *
 *   Console protocol: the client sends one command per line (LF or CRLF
 *   ending; a leading "--json" asks for JSON). The answer is zero or more
 *   body lines, each dot-stuffed (a body line starting with "." gets
 *   another "." in front), then one terminator line: ".ok" when the
 *   command succeeded, ".error" when it failed (the body then says why).
 *   A connection may carry any number of commands; ringctl's prompt keeps
 *   one open. Commands: control_cmd.c ("help" lists them).
 *
 *   control_stop() (main thread, after the shards were joined and before
 *   their memory is freed) stops and joins the thread and closes the
 *   sockets, unlinking the unix socket files.
 * OWNERSHIP
 *   struct control is the main thread's; the thread borrows conf and the
 *   shard array until control_stop().
 * THREADS
 *   The control thread reads shard counters only through stats_read()
 *   and reaches a shard's queue only through shard_ctl (the shard does the
 *   work). Its signals stay blocked: `shutdown` raises SIGTERM, which the
 *   main thread takes as it takes an operator's.
 * SECURITY
 *   The console trusts whoever can open the socket: file mode 0600 is the
 *   access control. The metrics port is unauthenticated, read-only, and
 *   meant for loopback; its request parser reads a bounded request line
 *   and headers and answers GET /metrics, GET /ready, and 400/404/405.
 * SEE ALSO
 *   control_cmd.c, metrics.c, shard_ctl.h, stats.h, tools/ringctl.c
 */
#ifndef RINGMAIL_CONTROL_H
#define RINGMAIL_CONTROL_H

#include <pthread.h>
#include <stdint.h>
#include <sys/types.h>

#include "conf.h"
#include "outbuf.h"
#include "shard.h"
#include "shard_ctl.h"
#include "stats.h"

#define CONTROL_LINE_MAX          4096
#define CONTROL_HTTP_MAX          8192
#define CONTROL_HTTP_TIMEOUT_MS   5000
#define CONTROL_IDLE_TIMEOUT_MS   (30 * 60 * 1000)
#define CONTROL_SHARD_TIMEOUT_MS  2000
#define CONTROL_SEND_TIMEOUT_MS   5000
#define CONTROL_CLIENTS_MAX       32
#define CONTROL_RATE_SAMPLES      61    /* one a second: 60 s of rates */

enum control_client_kind {
    CONTROL_CLIENT_CONSOLE,
    CONTROL_CLIENT_HTTP,
};

struct control_client {
    int fd;                      /* -1: free slot */
    enum control_client_kind kind;
    char *buf;                   /* [CONTROL_HTTP_MAX] */
    size_t len;
    uint64_t deadline_ms;
};

struct control_rate {
    uint64_t ms;
    uint64_t received;
    uint64_t delivered;
};

struct control {
    const struct conf *conf;
    struct shard *shards;
    unsigned nshards;
    int *ctl_fds;                /* per Control_Listener Listen */
    size_t ctl_count;
    int *metrics_fds;            /* per Metrics_Listener Listen */
    size_t metrics_count;
    int wake_fd;                 /* eventfd: control_stop() */
    pthread_t thread;
    int started;
    uint64_t started_ms;
    struct xshard_sender tx;     /* wakes shards for shard_ctl requests */
    int tx_ok;
    struct shard_ctl_req *reqs;  /* one per shard */
    struct control_client clients[CONTROL_CLIENTS_MAX];
    struct control_rate rates[CONTROL_RATE_SAMPLES];
    unsigned rate_next;
    unsigned rate_count;
    struct outbuf out;           /* the answer being built */
};

int control_open(struct control *ctl, const struct conf *conf);
int control_chown(struct control *ctl, uid_t uid, gid_t gid);
int control_start(struct control *ctl, struct shard *shards,
                  unsigned nshards);
void control_stop(struct control *ctl);

/* shared by control.c, control_cmd.c and metrics.c */
int control_cmd_run(struct control *ctl, char *line, int json,
                    struct outbuf *out);
void control_metrics(struct control *ctl, struct outbuf *out);
int control_http_answer(struct control *ctl, char *req, size_t len,
                        struct outbuf *out);
int control_ready(const struct control *ctl);
void control_rates(const struct control *ctl, unsigned window_s,
                   double *received_per_s, double *delivered_per_s);

#endif
