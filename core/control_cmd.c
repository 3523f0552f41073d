/*
 * control_cmd - the console's commands: one table row each, text or JSON
 *
 *   help                                  the commands
 *   summary                               per shard and totals: state,
 *                                         sessions, rates, queue, spool
 *   showqueue [DOMAIN]                    per-domain counts, or the items
 *                                         of one domain
 *   message show|retry|fail ID            one message: details, retry its
 *                                         deferred recipients now, or fail
 *                                         them (bounce to the sender)
 *   flush domain DOMAIN                   retry the domain's deferred now
 *   fail domain DOMAIN                    bounce everything queued for it
 *   paniclog [N]                          the last N (20) paniclog lines
 *   config reload                         daemon_reload()
 *   config set scriptlet scriptlet OPTION VALUE
 *                                         daemon_scriptlet_set()
 *   scriptlet stats                       daemon_scriptlet_stats()
 *   shutdown                              graceful drain, as SIGTERM
 *
 * A handler writes its answer into out and returns 0, or writes the
 * reason and returns -1; with json set the answer is one JSON document
 * (an error: {"error": "..."}). Queue commands go to the shards through
 * shard_ctl (a message id names its shard: id "nonce-SS-counter"), and
 * every other figure comes from the snapshots the shards publish.
 */
#include <ck_pr.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stddef.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "control.h"
#include "daemon.h"
#include "util.h"

#define CMD_ARGS_MAX 8
#define CMD_PANICLOG_LINES_MAX 1000
#define CMD_PANICLOG_BYTES_MAX (1 << 20)

struct cmd_ctx {
    struct control *ctl;
    struct outbuf *out;
    int json;
    int argc;
    char *argv[CMD_ARGS_MAX];
};

typedef int cmd_fn(struct cmd_ctx *cx);

struct cmd {
    const char *words;           /* the words that name it */
    int args_min, args_max;      /* after those words */
    cmd_fn *fn;
    const char *usage;
    const char *help;
};


/* cmd_error - the answer is an error: text, or {"error": text} */
static int __attribute__((format(printf, 2, 3)))
cmd_error(struct cmd_ctx *cx, const char *fmt, ...)
{
    char text[1024];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    outbuf_reset(cx->out);
    if (cx->json) {
        outbuf_puts(cx->out, "{\"error\": ");
        outbuf_json_str(cx->out, text);
        outbuf_puts(cx->out, "}\n");
    } else {
        outbuf_printf(cx->out, "%s\n", text);
    }
    return -1;
}


static const char *
cmd_state_name(uint64_t st)
{
    static const char *const names[] = { "starting", "running", "draining",
                                         "stopping", "done" };

    return st < ARRAY_SIZE(names) ? names[st] : "?";
}


/* --- summary ------------------------------------------------------------- */

static const struct {
    const char *name;
    size_t off;
} cmd_summary_fields[] = {
#define F(x) { #x, offsetof(struct stats_snap, x) }
    F(sessions), F(sessions_accepted), F(sessions_refused),
    F(sessions_timed_out), F(messages_received), F(messages_rejected),
    F(commit_failures), F(recv_bytes), F(messages_live), F(queue_ready),
    F(queue_deferred), F(delivered), F(deferred), F(bounced), F(expired),
    F(dsns), F(connections), F(connect_failures), F(connections_open),
    F(dup_window), F(dup_window_max), F(abandoned), F(spool_segments),
    F(spool_bytes), F(spool_commits), F(spool_fdatasyncs),
    F(spool_bytes_written), F(spool_failed),
#undef F
};


static uint64_t
cmd_field(const struct stats_snap *s, size_t i)
{
    return *(const uint64_t *)((const char *)s +
                               cmd_summary_fields[i].off);
}


static int
cmd_summary(struct cmd_ctx *cx)
{
    struct control *ctl = cx->ctl;
    struct stats_snap *snaps = xcalloc(ctl->nshards, sizeof *snaps);
    uint64_t total[ARRAY_SIZE(cmd_summary_fields)] = { 0 };
    double r10, d10, r60, d60;
    unsigned i;
    size_t f;

    for (i = 0; i < ctl->nshards; i++) {
        stats_read(&ctl->shards[i].pub, &snaps[i]);
        for (f = 0; f < ARRAY_SIZE(cmd_summary_fields); f++) {
            /* dup_window_max: the highest shard, as a sum means nothing */
            if (strcmp(cmd_summary_fields[f].name, "dup_window_max") == 0)
                total[f] = MAX(total[f], cmd_field(&snaps[i], f));
            else
                total[f] += cmd_field(&snaps[i], f);
        }
    }
    control_rates(ctl, 10, &r10, &d10);
    control_rates(ctl, 60, &r60, &d60);
    if (cx->json) {
        struct outbuf *o = cx->out;

        outbuf_printf(o, "{\"uptime_s\": %llu, \"ready\": %s, "
                      "\"rates\": {\"received_per_s_10s\": %.2f, "
                      "\"delivered_per_s_10s\": %.2f, "
                      "\"received_per_s_60s\": %.2f, "
                      "\"delivered_per_s_60s\": %.2f}, \"total\": {",
                      (unsigned long long)((now_ms() - ctl->started_ms) /
                                           1000),
                      control_ready(ctl) ? "true" : "false", r10, d10, r60,
                      d60);
        for (f = 0; f < ARRAY_SIZE(cmd_summary_fields); f++)
            outbuf_printf(o, "%s\"%s\": %llu", f ? ", " : "",
                          cmd_summary_fields[f].name,
                          (unsigned long long)total[f]);
        outbuf_puts(o, "}, \"shards\": [");
        for (i = 0; i < ctl->nshards; i++) {
            outbuf_printf(o, "%s{\"id\": %u, \"state\": \"%s\"", i ? ", " : "",
                          i, cmd_state_name(snaps[i].state));
            for (f = 0; f < ARRAY_SIZE(cmd_summary_fields); f++)
                outbuf_printf(o, ", \"%s\": %llu", cmd_summary_fields[f].name,
                              (unsigned long long)cmd_field(&snaps[i], f));
            outbuf_puts(o, "}");
        }
        outbuf_puts(o, "]}\n");
    } else {
        struct outbuf *o = cx->out;

        outbuf_printf(o, "uptime %llus, %s; %u shards\n",
                      (unsigned long long)((now_ms() - ctl->started_ms) /
                                           1000),
                      control_ready(ctl) ? "ready" : "not ready",
                      ctl->nshards);
        outbuf_printf(o, "rates (10s / 60s): received %.1f / %.1f msg/s, "
                      "delivered %.1f / %.1f rcpt/s\n", r10, r60, d10, d60);
        outbuf_printf(o, "%-22s %14s", "", "total");
        for (i = 0; i < ctl->nshards; i++) {
            char name[32];

            snprintf(name, sizeof name, "shard %u", i);
            outbuf_printf(o, " %14s", name);
        }
        outbuf_printf(o, "\n%-22s %14s", "state", "");
        for (i = 0; i < ctl->nshards; i++)
            outbuf_printf(o, " %14s", cmd_state_name(snaps[i].state));
        outbuf_puts(o, "\n");
        for (f = 0; f < ARRAY_SIZE(cmd_summary_fields); f++) {
            outbuf_printf(o, "%-22s %14llu", cmd_summary_fields[f].name,
                          (unsigned long long)total[f]);
            for (i = 0; i < ctl->nshards; i++)
                outbuf_printf(o, " %14llu",
                              (unsigned long long)cmd_field(&snaps[i], f));
            outbuf_puts(o, "\n");
        }
    }
    free(snaps);
    return 0;
}


/* --- queue commands ------------------------------------------------------ */

/* cmd_shard_of_id - the shard an id "nonce-SS-counter" names, or -1 */
static int
cmd_shard_of_id(const struct control *ctl, const char *id)
{
    const char *dash = strchr(id, '-');
    char *end;
    unsigned long n;

    if (dash == NULL)
        return -1;
    n = strtoul(dash + 1, &end, 16);
    if (end == dash + 1 || *end != '-' || n >= ctl->nshards)
        return -1;
    return (int)n;
}


/*
 * cmd_call - run kind with arg on shard i (or all when i < 0); returns
 * how many shards answered. An unanswered shard is noted in err.
 */
static unsigned
cmd_call(struct cmd_ctx *cx, int only, enum xshard_kind kind,
         const char *arg, int *answered, char *err, size_t errlen)
{
    struct control *ctl = cx->ctl;
    unsigned i, n = 0;

    err[0] = '\0';
    for (i = 0; i < ctl->nshards; i++) {
        struct shard_ctl_req *req = &ctl->reqs[i];
        int rc;

        answered[i] = 0;
        if (only >= 0 && (unsigned)only != i)
            continue;
        if (!req->busy)
            snprintf(req->arg, sizeof req->arg, "%s", arg);
        else if (ck_pr_load_int(&req->msg.handled))
            snprintf(req->arg, sizeof req->arg, "%s", arg);
        rc = shard_ctl_call_remote(&ctl->shards[i], &ctl->tx, req, kind,
                                   CONTROL_SHARD_TIMEOUT_MS);
        if (rc == 0) {
            answered[i] = 1;
            n++;
            /* the shard refused: it is stopping */
            if (req->res == -ESRCH)
                answered[i] = 0, n--;
        }
        if (!answered[i] && err[0] == '\0')
            snprintf(err, errlen, "shard %u did not answer: %s", i,
                     rc == -ESRCH || req->res == -ESRCH
                         ? "not running" : rc == -EBUSY
                         ? "busy with an earlier request"
                         : strerror(-rc));
    }
    return n;
}


/* cmd_showqueue_domains - merge the shards' per-domain rows */
static int
cmd_showqueue_domains(struct cmd_ctx *cx)
{
    struct control *ctl = cx->ctl;
    int *answered = xcalloc(ctl->nshards, sizeof *answered);
    struct shard_ctl_row *sum = NULL;
    unsigned nsum = 0, i, j, k;
    int truncated = 0;
    char err[256];

    cmd_call(cx, -1, XS_CONTROL_QUEUE_SHOW, "", answered, err, sizeof err);
    for (i = 0; i < ctl->nshards; i++) {
        struct shard_ctl_req *req = &ctl->reqs[i];

        if (!answered[i])
            continue;
        truncated |= req->truncated;
        for (j = 0; j < req->row_count; j++) {
            struct shard_ctl_row *r = &req->rows[j];

            for (k = 0; k < nsum; k++) {
                if (strcmp(sum[k].key, r->key) == 0)
                    break;
            }
            if (k == nsum) {
                sum = xrealloc(sum, (nsum + 1) * sizeof *sum);
                sum[nsum++] = *r;
                continue;
            }
            sum[k].ready += r->ready;
            sum[k].deferred += r->deferred;
            sum[k].inflight += r->inflight;
            sum[k].conns += r->conns;
        }
    }
    if (cx->json) {
        outbuf_puts(cx->out, "{\"domains\": [");
        for (k = 0; k < nsum; k++) {
            outbuf_puts(cx->out, k ? ", {\"domain\": " : "{\"domain\": ");
            outbuf_json_str(cx->out, sum[k].key);
            outbuf_printf(cx->out, ", \"ready\": %llu, \"deferred\": %llu, "
                          "\"inflight\": %llu, \"connections\": %llu}",
                          (unsigned long long)sum[k].ready,
                          (unsigned long long)sum[k].deferred,
                          (unsigned long long)sum[k].inflight,
                          (unsigned long long)sum[k].conns);
        }
        outbuf_printf(cx->out, "], \"truncated\": %s, \"warning\": ",
                      truncated ? "true" : "false");
        outbuf_json_str(cx->out, err);
        outbuf_puts(cx->out, "}\n");
    } else {
        outbuf_printf(cx->out, "%-40s %10s %10s %10s %6s\n", "domain",
                      "ready", "deferred", "inflight", "conns");
        for (k = 0; k < nsum; k++) {
            outbuf_printf(cx->out, "%-40s %10llu %10llu %10llu %6llu\n",
                          sum[k].key, (unsigned long long)sum[k].ready,
                          (unsigned long long)sum[k].deferred,
                          (unsigned long long)sum[k].inflight,
                          (unsigned long long)sum[k].conns);
        }
        outbuf_printf(cx->out, "%u domains%s\n", nsum,
                      truncated ? " (truncated)" : "");
        if (err[0] != '\0')
            outbuf_printf(cx->out, "warning: %s\n", err);
    }
    free(sum);
    free(answered);
    return 0;
}


/* cmd_row_json - a recipient or item row */
static void
cmd_row_json(struct outbuf *o, const char *keyname,
             const struct shard_ctl_row *r, unsigned shard)
{
    outbuf_printf(o, "{\"%s\": ", keyname);
    outbuf_json_str(o, r->key);
    outbuf_printf(o, ", \"shard\": %u, \"state\": \"%s\", \"attempts\": %u, "
                  "\"due_s\": %lld, \"last_code\": %u, \"last_text\": ",
                  shard, r->state, r->attempt, (long long)r->due_s,
                  r->last_code);
    outbuf_json_str(o, r->last_text);
    outbuf_puts(o, "}");
}


static void
cmd_row_text(struct outbuf *o, const struct shard_ctl_row *r, unsigned shard)
{
    outbuf_printf(o, "%-40s %5u %-9s %8u", r->key, shard, r->state,
                  r->attempt);
    if (strcmp(r->state, "deferred") == 0)
        outbuf_printf(o, " %7llds", (long long)r->due_s);
    else
        outbuf_printf(o, " %8s", "-");
    if (r->last_code != 0 || r->last_text[0] != '\0')
        outbuf_printf(o, "  %u %s", r->last_code, r->last_text);
    outbuf_puts(o, "\n");
}


/* cmd_showqueue_domain - every item of one domain */
static int
cmd_showqueue_domain(struct cmd_ctx *cx, const char *domain)
{
    struct control *ctl = cx->ctl;
    int *answered = xcalloc(ctl->nshards, sizeof *answered);
    unsigned i, j, rows = 0;
    int truncated = 0;
    char err[256];

    cmd_call(cx, -1, XS_CONTROL_QUEUE_SHOW, domain, answered, err,
             sizeof err);
    if (cx->json) {
        outbuf_puts(cx->out, "{\"domain\": ");
        outbuf_json_str(cx->out, domain);
        outbuf_puts(cx->out, ", \"messages\": [");
    } else {
        outbuf_printf(cx->out, "%-40s %5s %-9s %8s %8s  %s\n", "message",
                      "shard", "state", "attempts", "due", "last reply");
    }
    for (i = 0; i < ctl->nshards; i++) {
        struct shard_ctl_req *req = &ctl->reqs[i];

        if (!answered[i])
            continue;
        truncated |= req->truncated;
        for (j = 0; j < req->row_count; j++, rows++) {
            if (cx->json) {
                if (rows > 0)
                    outbuf_puts(cx->out, ", ");
                cmd_row_json(cx->out, "id", &req->rows[j], i);
            } else {
                cmd_row_text(cx->out, &req->rows[j], i);
            }
        }
    }
    if (cx->json) {
        outbuf_printf(cx->out, "], \"truncated\": %s, \"warning\": ",
                      truncated ? "true" : "false");
        outbuf_json_str(cx->out, err);
        outbuf_puts(cx->out, "}\n");
    } else {
        outbuf_printf(cx->out, "%u items%s\n", rows,
                      truncated ? " (truncated)" : "");
        if (err[0] != '\0')
            outbuf_printf(cx->out, "warning: %s\n", err);
    }
    free(answered);
    return 0;
}


static int
cmd_showqueue(struct cmd_ctx *cx)
{
    if (cx->argc == 0)
        return cmd_showqueue_domains(cx);
    return cmd_showqueue_domain(cx, cx->argv[0]);
}


static int
cmd_message_show(struct cmd_ctx *cx)
{
    struct control *ctl = cx->ctl;
    const char *id = cx->argv[0];
    int shard = cmd_shard_of_id(ctl, id);
    int *answered;
    struct shard_ctl_req *req;
    char err[256];
    unsigned j;

    if (shard < 0)
        return cmd_error(cx, "no such message: %s (not a message id of "
                         "this daemon)", id);
    answered = xcalloc(ctl->nshards, sizeof *answered);
    cmd_call(cx, shard, XS_CONTROL_MESSAGE_SHOW, id, answered, err,
             sizeof err);
    req = &ctl->reqs[shard];
    if (!answered[shard]) {
        free(answered);
        return cmd_error(cx, "%s", err);
    }
    free(answered);
    if (req->res == -ENOENT)
        return cmd_error(cx, "no such message in the queue: %s", id);
    if (cx->json) {
        outbuf_puts(cx->out, "{\"id\": ");
        outbuf_json_str(cx->out, id);
        outbuf_printf(cx->out, ", \"shard\": %d, \"sender\": ", shard);
        outbuf_json_str(cx->out, req->sender);
        outbuf_printf(cx->out, ", \"received_unix\": %lld, \"bytes\": %llu, "
                      "\"recipients\": [", (long long)req->received_unix,
                      (unsigned long long)req->body_bytes);
        for (j = 0; j < req->row_count; j++) {
            if (j > 0)
                outbuf_puts(cx->out, ", ");
            cmd_row_json(cx->out, "rcpt", &req->rows[j], (unsigned)shard);
        }
        outbuf_puts(cx->out, "]}\n");
    } else {
        char when[64];
        time_t ts = (time_t)req->received_unix;
        struct tm tm;

        gmtime_r(&ts, &tm);
        strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S UTC", &tm);
        outbuf_printf(cx->out, "id        %s (shard %d)\nsender    <%s>\n"
                      "received  %s\nbytes     %llu\nrecipients %u\n", id,
                      shard, req->sender, when,
                      (unsigned long long)req->body_bytes, req->rcpt_count);
        outbuf_printf(cx->out, "%-40s %5s %-9s %8s %8s  %s\n", "recipient",
                      "shard", "state", "attempts", "due", "last reply");
        for (j = 0; j < req->row_count; j++)
            cmd_row_text(cx->out, &req->rows[j], (unsigned)shard);
    }
    return 0;
}


/* cmd_action - a queue action on every shard, or a message's shard */
static int
cmd_action(struct cmd_ctx *cx, enum xshard_kind kind, const char *arg,
           int by_id, const char *verb)
{
    struct control *ctl = cx->ctl;
    int only = -1, *answered, found = 0;
    uint64_t count = 0;
    unsigned i, n;
    char err[256];

    if (by_id) {
        only = cmd_shard_of_id(ctl, arg);
        if (only < 0)
            return cmd_error(cx, "no such message: %s (not a message id of "
                             "this daemon)", arg);
    }
    answered = xcalloc(ctl->nshards, sizeof *answered);
    n = cmd_call(cx, only, kind, arg, answered, err, sizeof err);
    for (i = 0; i < ctl->nshards; i++) {
        if (!answered[i])
            continue;
        if (ctl->reqs[i].res == 0)
            found = 1;
        count += ctl->reqs[i].count;
    }
    free(answered);
    if (n == 0)
        return cmd_error(cx, "%s", err);
    if (!found)
        return cmd_error(cx, "nothing queued for %s %s", by_id ? "message"
                         : "domain", arg);
    if (cx->json) {
        outbuf_printf(cx->out, "{\"%s\": ", by_id ? "id" : "domain");
        outbuf_json_str(cx->out, arg);
        outbuf_printf(cx->out, ", \"action\": \"%s\", \"items\": %llu, "
                      "\"warning\": ", verb, (unsigned long long)count);
        outbuf_json_str(cx->out, err);
        outbuf_puts(cx->out, "}\n");
    } else {
        outbuf_printf(cx->out, "%s %s: %llu queue items %s\n",
                      by_id ? "message" : "domain", arg,
                      (unsigned long long)count, verb);
        if (err[0] != '\0')
            outbuf_printf(cx->out, "warning: %s\n", err);
    }
    return 0;
}


static int
cmd_message(struct cmd_ctx *cx)
{
    const char *verb = cx->argv[0];

    if (cx->argc != 2)
        return cmd_error(cx, "usage: message show|retry|fail ID");
    cx->argv[0] = cx->argv[1];
    cx->argc = 1;
    if (strcasecmp(verb, "show") == 0)
        return cmd_message_show(cx);
    if (strcasecmp(verb, "retry") == 0)
        return cmd_action(cx, XS_CONTROL_MESSAGE_RETRY, cx->argv[0], 1,
                          "retried now");
    if (strcasecmp(verb, "fail") == 0)
        return cmd_action(cx, XS_CONTROL_MESSAGE_FAIL, cx->argv[0], 1,
                          "failed (bounced)");
    return cmd_error(cx, "usage: message show|retry|fail ID");
}


static int
cmd_flush_domain(struct cmd_ctx *cx)
{
    return cmd_action(cx, XS_CONTROL_DOMAIN_FLUSH, cx->argv[0], 0,
                      "made due now");
}


static int
cmd_fail_domain(struct cmd_ctx *cx)
{
    return cmd_action(cx, XS_CONTROL_DOMAIN_FAIL, cx->argv[0], 0,
                      "failed (bounced)");
}


/* --- paniclog ------------------------------------------------------------ */

/* cmd_paniclog - the last N lines of the paniclog file */
static int
cmd_paniclog(struct cmd_ctx *cx)
{
    const char *path = cx->ctl->conf->paniclog;
    long want = 20;
    char *buf, *p, *end;
    struct stat st;
    off_t from;
    ssize_t got;
    size_t len = 0;
    long lines = 0;
    int fd;

    if (cx->argc == 1) {
        want = strtol(cx->argv[0], &end, 10);
        if (*end != '\0' || want < 1 || want > CMD_PANICLOG_LINES_MAX)
            return cmd_error(cx, "paniclog: N must be 1 to %d",
                             CMD_PANICLOG_LINES_MAX);
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) < 0) {
        int err = errno;

        if (fd >= 0)
            close(fd);
        return cmd_error(cx, "paniclog %s: %s", path, strerror(err));
    }
    from = st.st_size > CMD_PANICLOG_BYTES_MAX
               ? st.st_size - CMD_PANICLOG_BYTES_MAX : 0;
    buf = xmalloc((size_t)(st.st_size - from) + 1);
    while (len < (size_t)(st.st_size - from)) {
        got = pread(fd, buf + len, (size_t)(st.st_size - from) - len,
                    from + (off_t)len);
        if (got <= 0)
            break;
        len += (size_t)got;
    }
    close(fd);
    buf[len] = '\0';
    /* Walk back over want line ends (the last one ends the file). */
    p = buf + len;
    if (p > buf && p[-1] == '\n')
        p--;
    while (p > buf) {
        if (p[-1] == '\n' && ++lines == want)
            break;
        p--;
    }
    if (cx->json) {
        char *line = p, *nl;
        int first = 1;

        outbuf_puts(cx->out, "{\"path\": ");
        outbuf_json_str(cx->out, path);
        outbuf_puts(cx->out, ", \"lines\": [");
        while (*line != '\0') {
            nl = strchr(line, '\n');
            if (nl != NULL)
                *nl = '\0';
            outbuf_puts(cx->out, first ? "" : ", ");
            outbuf_json_str(cx->out, line);
            first = 0;
            if (nl == NULL)
                break;
            line = nl + 1;
        }
        outbuf_puts(cx->out, "]}\n");
    } else {
        outbuf_puts(cx->out, p);
    }
    free(buf);
    return 0;
}


/* --- daemon actions ------------------------------------------------------ */

static int
cmd_done_text(struct cmd_ctx *cx, const char *text)
{
    if (cx->json) {
        outbuf_puts(cx->out, "{\"result\": ");
        outbuf_json_str(cx->out, text);
        outbuf_puts(cx->out, "}\n");
    } else {
        outbuf_printf(cx->out, "%s\n", text);
    }
    return 0;
}


static int
cmd_config(struct cmd_ctx *cx)
{
    char err[4096];

    err[0] = '\0';
    if (cx->argc == 1 && strcasecmp(cx->argv[0], "reload") == 0) {
        if (daemon_reload(err, sizeof err) < 0)
            return cmd_error(cx, "%s", err[0] ? err : "config reload failed");
        return cmd_done_text(cx, "configuration reloaded");
    }
    if (cx->argc == 5 && strcasecmp(cx->argv[0], "set") == 0 &&
        strcasecmp(cx->argv[1], "scriptlet") == 0 &&
        strcasecmp(cx->argv[2], "scriptlet") == 0) {
        if (daemon_scriptlet_set(cx->argv[3], cx->argv[4], err,
                                 sizeof err) < 0)
            return cmd_error(cx, "%s", err[0] ? err : "config set failed");
        return cmd_done_text(cx, "scriptlet option set");
    }
    return cmd_error(cx, "usage: config reload | config set scriptlet "
                     "scriptlet OPTION VALUE");
}


static int
cmd_scriptlet(struct cmd_ctx *cx)
{
    struct daemon_scriptlet_stats s;
    static const char *const names[] = {
        "generation", "scripts", "states", "spare_threads", "callouts",
        "callout_errors", "budget_exhausted", "yields", "lua_bytes",
    };
    const uint64_t *v = (const uint64_t *)&s;
    size_t i;

    _Static_assert(sizeof s == sizeof(uint64_t) * ARRAY_SIZE(names),
                   "one name per daemon_scriptlet_stats field");
    if (strcasecmp(cx->argv[0], "stats") != 0)
        return cmd_error(cx, "usage: scriptlet stats");
    daemon_scriptlet_stats(&s);
    if (cx->json)
        outbuf_puts(cx->out, "{");
    for (i = 0; i < ARRAY_SIZE(names); i++) {
        if (cx->json)
            outbuf_printf(cx->out, "%s\"%s\": %llu", i ? ", " : "",
                          names[i], (unsigned long long)v[i]);
        else
            outbuf_printf(cx->out, "%-18s %llu\n", names[i],
                          (unsigned long long)v[i]);
    }
    if (cx->json)
        outbuf_puts(cx->out, "}\n");
    return 0;
}


static int
cmd_shutdown(struct cmd_ctx *cx)
{
    /* The main thread takes SIGTERM with sigtimedwait(): the same drain. */
    if (kill(getpid(), SIGTERM) < 0)
        return cmd_error(cx, "shutdown: %s", strerror(errno));
    return cmd_done_text(cx, "shutting down: draining (as on SIGTERM)");
}


static int cmd_help(struct cmd_ctx *cx);

static const struct cmd cmd_table[] = {
    { "help", 0, 0, cmd_help, "help", "this list" },
    { "summary", 0, 0, cmd_summary, "summary",
      "sessions, rates, queue, spool: totals and per shard" },
    { "showqueue", 0, 1, cmd_showqueue, "showqueue [DOMAIN]",
      "per-domain counts, or the messages queued for DOMAIN" },
    { "message", 2, 2, cmd_message, "message show|retry|fail ID",
      "a message's details; retry it now; fail it (bounce to sender)" },
    { "flush domain", 1, 1, cmd_flush_domain, "flush domain DOMAIN",
      "retry every deferred message for DOMAIN now" },
    { "fail domain", 1, 1, cmd_fail_domain, "fail domain DOMAIN",
      "bounce every message queued for DOMAIN" },
    { "paniclog", 0, 1, cmd_paniclog, "paniclog [N]",
      "the last N lines of the paniclog (default 20)" },
    { "config", 1, 5, cmd_config,
      "config reload | config set scriptlet scriptlet OPTION VALUE",
      "reload the configuration; change an interpreter-cache option" },
    { "scriptlet", 1, 1, cmd_scriptlet, "scriptlet stats",
      "Lua interpreter-cache statistics" },
    { "shutdown", 0, 0, cmd_shutdown, "shutdown",
      "graceful drain and exit, as SIGTERM" },
};


static int
cmd_help(struct cmd_ctx *cx)
{
    size_t i;

    if (cx->json)
        outbuf_puts(cx->out, "{\"commands\": [");
    for (i = 0; i < ARRAY_SIZE(cmd_table); i++) {
        if (cx->json) {
            outbuf_puts(cx->out, i ? ", {\"usage\": " : "{\"usage\": ");
            outbuf_json_str(cx->out, cmd_table[i].usage);
            outbuf_puts(cx->out, ", \"help\": ");
            outbuf_json_str(cx->out, cmd_table[i].help);
            outbuf_puts(cx->out, "}");
        } else {
            outbuf_printf(cx->out, "%-58s %s\n", cmd_table[i].usage,
                          cmd_table[i].help);
        }
    }
    if (cx->json)
        outbuf_puts(cx->out, "]}\n");
    return 0;
}


/* cmd_match - the words of c start the command line: how many */
static int
cmd_match(const struct cmd *c, struct cmd_ctx *cx)
{
    char words[64], *w, *save = NULL;
    int n = 0;

    snprintf(words, sizeof words, "%s", c->words);
    for (w = strtok_r(words, " ", &save); w != NULL;
         w = strtok_r(NULL, " ", &save)) {
        if (n >= cx->argc || strcasecmp(cx->argv[n], w) != 0)
            return 0;
        n++;
    }
    return n;
}


/* control_cmd_run - run one command line; 0, or -1 with the reason */
int
control_cmd_run(struct control *ctl, char *line, int json,
                struct outbuf *out)
{
    struct cmd_ctx cx = { .ctl = ctl, .out = out, .json = json };
    char *w, *save = NULL;
    size_t i;

    for (w = strtok_r(line, " \t", &save); w != NULL;
         w = strtok_r(NULL, " \t", &save)) {
        if (cx.argc == CMD_ARGS_MAX)
            return cmd_error(&cx, "too many words (at most %d)",
                             CMD_ARGS_MAX);
        cx.argv[cx.argc++] = w;
    }
    if (cx.argc == 0)
        return cmd_error(&cx, "empty command; try help");
    for (i = 0; i < ARRAY_SIZE(cmd_table); i++) {
        const struct cmd *c = &cmd_table[i];
        int n = cmd_match(c, &cx);

        if (n == 0)
            continue;
        if (cx.argc - n < c->args_min || cx.argc - n > c->args_max)
            return cmd_error(&cx, "usage: %s", c->usage);
        memmove(cx.argv, cx.argv + n, (size_t)(cx.argc - n) *
                sizeof cx.argv[0]);
        cx.argc -= n;
        return c->fn(&cx);
    }
    return cmd_error(&cx, "unknown command '%s'; try help", cx.argv[0]);
}
