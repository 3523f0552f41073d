/*
 * delivery_ctl - see delivery_ctl.h
 */
#include "delivery_ctl.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "route.h"
#include "util.h"


static const char *
item_state(const struct dlv_item *it)
{
    switch (it->qi.where) {
    case QUEUE_READY:
        return "ready";
    case QUEUE_DEFERRED:
        return "deferred";
    case QUEUE_NOWHERE:
        break;
    }
    /* Every item on dl->items outside the queue is being sent. */
    return "inflight";
}


/* ctl_row - the next free row, or NULL (counted as truncated) */
static struct shard_ctl_row *
ctl_row(struct shard_ctl_req *req)
{
    struct shard_ctl_row *r;

    if (req->row_count >= req->row_max) {
        req->truncated = 1;
        return NULL;
    }
    r = &req->rows[req->row_count++];
    memset(r, 0, sizeof *r);
    return r;
}


/* item_row_fill - state, attempts, due and last reply of it into r */
static void
item_row_fill(struct shard_ctl_row *r, const struct dlv_item *it,
              uint64_t now)
{
    snprintf(r->state, sizeof r->state, "%s", item_state(it));
    r->attempt = it->attempt;
    if (it->qi.where == QUEUE_DEFERRED)
        r->due_s = it->qi.due_ms > now
                       ? (int64_t)((it->qi.due_ms - now + 999) / 1000) : 0;
    r->last_code = it->last_code;
    snprintf(r->last_text, sizeof r->last_text, "%s",
             it->last_text != NULL ? it->last_text : "");
}


/* ctl_queue_domains - one row per destination with something queued */
static void
ctl_queue_domains(struct delivery *dl, struct shard_ctl_req *req)
{
    struct route_dest *rd;
    struct dlv_item *it;
    unsigned i;

    for (rd = dl->dests; rd != NULL; rd = rd->next) {
        struct shard_ctl_row *r;

        if (queue_dest_ready(rd->qd) == 0 && rd->qd->deferred == 0 &&
            rd->conns == 0)
            continue;
        req->count++;
        if ((r = ctl_row(req)) == NULL)
            continue;
        snprintf(r->key, sizeof r->key, "%s", rd->domain);
        r->ready = queue_dest_ready(rd->qd);
        r->deferred = rd->qd->deferred;
        r->conns = rd->conns;
    }
    /* In flight: items outside the queue, counted to their domain's row. */
    for (it = dl->items; it != NULL; it = it->next) {
        struct route_dest *owner;

        if (it->qi.where != QUEUE_NOWHERE)
            continue;
        owner = it->qi.dest->user;
        for (i = 0; i < req->row_count; i++) {
            if (strcmp(req->rows[i].key, owner->domain) == 0) {
                req->rows[i].inflight++;
                break;
            }
        }
    }
}


/* ctl_queue_domain - one row per item of one domain */
static void
ctl_queue_domain(struct delivery *dl, struct shard_ctl_req *req)
{
    uint64_t now = now_ms();
    struct dlv_item *it;

    for (it = dl->items; it != NULL; it = it->next) {
        struct route_dest *rd = it->qi.dest->user;
        struct shard_ctl_row *r;

        if (strcasecmp(rd->domain, req->arg) != 0)
            continue;
        req->count++;
        if ((r = ctl_row(req)) == NULL)
            continue;
        snprintf(r->key, sizeof r->key, "%s", it->msg->id);
        item_row_fill(r, it, now);
    }
    if (req->count == 0)
        req->res = -ENOENT;
}


/* ctl_message_show - the message req->arg, one row per recipient */
static void
ctl_message_show(struct delivery *dl, struct shard_ctl_req *req)
{
    uint64_t now = now_ms();
    struct dlv_msg *m = NULL;
    struct dlv_item *it;
    unsigned i, k;

    for (it = dl->items; it != NULL && m == NULL; it = it->next) {
        if (strcmp(it->msg->id, req->arg) == 0)
            m = it->msg;
    }
    if (m == NULL) {
        req->res = -ENOENT;
        return;
    }
    snprintf(req->sender, sizeof req->sender, "%s", m->sender);
    req->received_unix = m->received_unix;
    req->body_bytes = m->body_bytes;
    req->rcpt_count = m->rcpt_count;
    req->count = m->rcpt_count;
    for (i = 0; i < m->rcpt_count; i++) {
        struct shard_ctl_row *r = ctl_row(req);

        if (r == NULL)
            break;
        snprintf(r->key, sizeof r->key, "%s", m->rcpts[i]);
        snprintf(r->state, sizeof r->state, "%s",
                 m->rcpt_done[i] ? "done" : "pending");
        if (m->rcpt_done[i])
            continue;
        for (it = dl->items; it != NULL; it = it->next) {
            if (it->msg != m)
                continue;
            for (k = 0; k < it->rcpt_count; k++) {
                if (it->rcpt_idx[k] == i)
                    item_row_fill(r, it, now);
            }
        }
    }
}


/* item_matches - it is of the domain (by_domain) or message req->arg */
static int
item_matches(const struct dlv_item *it, const struct shard_ctl_req *req,
             int by_domain)
{
    const struct route_dest *rd = it->qi.dest->user;

    if (by_domain)
        return strcasecmp(rd->domain, req->arg) == 0;
    return strcmp(it->msg->id, req->arg) == 0;
}


/* ctl_retry - deferred items of the domain or message: ready now */
static void
ctl_retry(struct delivery *dl, struct shard_ctl_req *req, int by_domain)
{
    struct dlv_item *it;
    int seen = 0;

    for (it = dl->items; it != NULL; it = it->next) {
        struct route_dest *rd = it->qi.dest->user;

        if (!item_matches(it, req, by_domain))
            continue;
        seen = 1;
        /* An operator's flush overrides the "destination down" memory. */
        rd->down_until_ms = 0;
        if (it->qi.where != QUEUE_DEFERRED)
            continue;
        queue_remove(&dl->q, &it->qi);
        queue_ready(&dl->q, it->qi.dest, &it->qi);
        req->count++;
    }
    if (!seen)
        req->res = -ENOENT;
    dl->kick = 1;
}


/* ctl_fail - ready and deferred items of the domain or message: bounce */
static void
ctl_fail(struct delivery *dl, struct shard_ctl_req *req, int by_domain)
{
    struct smtp_client_result *rs = NULL;
    struct dlv_item *it, *next;
    unsigned cap = 0, k;
    int seen = 0;

    for (it = dl->items; it != NULL; it = next) {
        /* The outcome may free it; what it adds comes later (commits). */
        next = it->next;
        if (!item_matches(it, req, by_domain))
            continue;
        seen = 1;
        if (it->qi.where == QUEUE_NOWHERE)
            continue;            /* in flight: its reply decides */
        if (it->rcpt_count > cap) {
            cap = it->rcpt_count;
            rs = xrealloc(rs, cap * sizeof *rs);
        }
        for (k = 0; k < it->rcpt_count; k++) {
            memset(&rs[k], 0, sizeof rs[k]);
            rs[k].outcome = SMTP_CLIENT_FAILED;
            snprintf(rs[k].enhanced, sizeof rs[k].enhanced, "5.0.0");
            snprintf(rs[k].text, sizeof rs[k].text,
                     "failed by the operator (ringctl)");
            rs[k].synthesized = 1;
        }
        queue_remove(&dl->q, &it->qi);
        req->count++;
        delivery_item_done(dl, it, rs, "", "");
    }
    free(rs);
    if (!seen)
        req->res = -ENOENT;
}


/* delivery_ctl_run - carry out one control request on this shard */
void
delivery_ctl_run(struct delivery *dl, enum xshard_kind kind,
                 struct shard_ctl_req *req)
{
    ASSERT(req->rows != NULL || req->row_max == 0);
    req->arg[sizeof req->arg - 1] = '\0';
    switch (kind) {
    case XS_CONTROL_QUEUE_SHOW:
        if (req->arg[0] == '\0')
            ctl_queue_domains(dl, req);
        else
            ctl_queue_domain(dl, req);
        break;
    case XS_CONTROL_MESSAGE_SHOW:
        ctl_message_show(dl, req);
        break;
    case XS_CONTROL_DOMAIN_FLUSH:
        ctl_retry(dl, req, 1);
        break;
    case XS_CONTROL_MESSAGE_RETRY:
        ctl_retry(dl, req, 0);
        break;
    case XS_CONTROL_DOMAIN_FAIL:
        ctl_fail(dl, req, 1);
        break;
    case XS_CONTROL_MESSAGE_FAIL:
        ctl_fail(dl, req, 0);
        break;
    default:
        panic("delivery_ctl: unknown control request kind %d", kind);
    }
}
