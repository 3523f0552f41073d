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
 * (an error: {"error": "..."}); control_cmd.h. The queue commands are in
 * control_queue.c (the shards carry them out, through shard_ctl); every
 * figure here comes from the snapshots the shards publish (stats.h).
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
#include "control_cmd.h"
#include "daemon.h"
#include "util.h"

#define CMD_PANICLOG_LINES_MAX 1000
#define CMD_PANICLOG_BYTES_MAX (1 << 20)


/* cmd_error - the answer is an error: text, or {"error": text} */
int
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
