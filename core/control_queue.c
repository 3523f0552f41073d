/*
 * control_queue - the console's queue commands: showqueue, message
 *                 show|retry|fail, flush domain, fail domain
 *
 * Each is carried out by the shards (shard_ctl.h): a message id names its
 * shard ("nonce-SS-counter"), a domain is asked of every shard and the
 * answers are summed. A shard that does not answer within
 * CONTROL_SHARD_TIMEOUT_MS is named in a warning; the others' answers
 * stand.
 */
#include <ck_pr.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "control_cmd.h"
#include "util.h"


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
        if (req->rows == NULL) {
            req->rows = xcalloc(SHARD_CTL_ROWS_MAX, sizeof *req->rows);
            req->row_max = SHARD_CTL_ROWS_MAX;
        }
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


int
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


int
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


int
cmd_flush_domain(struct cmd_ctx *cx)
{
    return cmd_action(cx, XS_CONTROL_DOMAIN_FLUSH, cx->argv[0], 0,
                      "made due now");
}


int
cmd_fail_domain(struct cmd_ctx *cx)
{
    return cmd_action(cx, XS_CONTROL_DOMAIN_FAIL, cx->argv[0], 0,
                      "failed (bounced)");
}
