/*
 * delivery - see delivery.h
 *
 * References: a struct dlv_msg is freed when its last reference goes. Each
 * queue item holds one, each mark and bounce in flight one, and each piece
 * of connection output that points into its body one. Items are on
 * dl->items wherever they are (ready, deferred, being sent), so
 * delivery_fini() finds them all.
 *
 * The order of durable things for a failed recipient: the DSN is committed
 * first, its recipient's DONE mark after that commit completed; a crash in
 * between sends the DSN twice (the original is bounced again), never
 * loses it.
 *
 * Each deferral also goes to the spool (a DEFER record with the attempt
 * count, the reply, the item's first recipient and when it is due), so
 * that after a restart each destination's item keeps its own count, waits
 * for its own retry time, and an expiry DSN gives its reason. It is best
 * effort: a deferral the spool refuses only costs the count.
 */
#include "delivery.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "delivery_conn.h"
#include "dsn.h"
#include "log.h"
#include "route.h"
#include "util.h"

/* A DONE mark for some recipients of a message, on its way to the disk. */
struct dlv_mark {
    struct spool_mark mk;
    struct delivery *dl;
    struct dlv_msg *msg;         /* a reference */
    unsigned dup;                /* recipients counted in the dup window */
    struct dlv_mark *next;       /* dl->retry */
    unsigned count;
    uint32_t idx[];
};

/* A DSN being committed; the failed recipients are marked after it. */
struct dlv_bounce {
    struct spool_msg sm;
    struct delivery *dl;
    struct dlv_msg *orig;        /* a reference */
    struct dlv_msg *dsn;         /* a reference */
    struct iovec iov;
    unsigned attempt;            /* of the original's item, if requeued */
    unsigned count;
    uint32_t idx[];
};

/* A deferral on its way to the disk: attempts and the last reply survive a
 * restart (a DEFER record). Owns copies: the item may change meanwhile. */
struct dlv_defer {
    struct spool_mark mk;
    struct delivery *dl;
    char id[SPOOL_ID_MAX];
    char enhanced[SMTP_CLIENT_ENHANCED_MAX];
    char *text, *host;
};

/* A failed recipient and its result, while an outcome is being handled. */
struct dlv_fail {
    uint32_t idx;
    const struct smtp_client_result *r;
    int expired;
};


/* delivery_wall_ms - unix time in ms: expiry and queue time survive restarts */
uint64_t
delivery_wall_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000 + (uint64_t)ts.tv_nsec / 1000000;
}


/* delivery_rand - xorshift64: retry jitter */
uint32_t
delivery_rand(struct delivery *dl)
{
    uint64_t x = dl->rng;

    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    dl->rng = x;
    return (uint32_t)(x >> 32);
}


/* --- messages ------------------------------------------------------------ */

/* msg_new - one block: the struct, recipient table, strings and body */
static struct dlv_msg *
msg_new(struct delivery *dl, const char *id, const char *sender,
        const char *const *rcpts, unsigned rcpt_count,
        const struct iovec *body, unsigned body_iov_count,
        uint64_t body_bytes, size_t extra)
{
    size_t bytes = sizeof(struct dlv_msg), sender_len = strlen(sender);
    struct dlv_msg *m;
    unsigned i;
    char *p;

    ASSERT(rcpt_count > 0);
    ASSERT(strlen(id) < SPOOL_ID_MAX);
    bytes += rcpt_count * sizeof(char *) + rcpt_count + sender_len + 1;
    for (i = 0; i < rcpt_count; i++)
        bytes += strlen(rcpts[i]) + 1;
    bytes += body_bytes + extra;
    m = xmalloc(bytes);
    memset(m, 0, sizeof *m);
    snprintf(m->id, sizeof m->id, "%s", id);
    m->rcpt_count = rcpt_count;
    m->rcpts = (const char **)(m + 1);
    m->rcpt_done = (unsigned char *)(m->rcpts + rcpt_count);
    memset(m->rcpt_done, 0, rcpt_count);
    p = (char *)(m->rcpt_done + rcpt_count);
    memcpy(p, sender, sender_len + 1);
    m->sender = p;
    p += sender_len + 1;
    for (i = 0; i < rcpt_count; i++) {
        size_t n = strlen(rcpts[i]) + 1;

        memcpy(p, rcpts[i], n);
        m->rcpts[i] = p;
        p += n;
    }
    m->body = p;
    m->body_bytes = body_bytes;
    for (i = 0; i < body_iov_count; i++) {
        memcpy(p, body[i].iov_base, body[i].iov_len);
        p += body[i].iov_len;
    }
    m->policy_strings = p;
    p += extra;
    ASSERT((size_t)(p - (char *)m) == bytes);
    m->refs = 1;
    dl->env.stats->messages++;
    dl->env.stats->messages_live++;
    return m;
}


/* delivery_msg_ref - one more holder of m */
void
delivery_msg_ref(struct dlv_msg *m)
{
    ASSERT(m->refs > 0);
    m->refs++;
}


/* delivery_msg_unref - one holder less; the last frees m */
void
delivery_msg_unref(struct delivery *dl, struct dlv_msg *m)
{
    ASSERT(m->refs > 0);
    if (--m->refs > 0)
        return;
    ASSERT(dl->env.stats->messages_live > 0);
    dl->env.stats->messages_live--;
    free(m);
}


/* rcpt_domain - the domain of an address; "" when it has none */
static const char *
rcpt_domain(const char *rcpt)
{
    const char *at = strrchr(rcpt, '@');

    return at != NULL ? at + 1 : "";
}


/* item_domain - where rcpt i of m is routed: policy's domain, or its own */
static const char *
item_domain(const struct dlv_msg *m, unsigned i)
{
    return m->routing_domain != NULL ? m->routing_domain
                                     : rcpt_domain(m->rcpts[i]);
}


/* policy_bytes - room msg_policy() needs for the strings */
static size_t
policy_bytes(const char *binding, const char *routing)
{
    return (binding != NULL ? strlen(binding) + 1 : 0) +
           (routing != NULL ? strlen(routing) + 1 : 0);
}


/* msg_policy - keep what policy chose for m (copied: m is one block) */
static void
msg_policy(struct dlv_msg *m, const char *binding, const char *routing,
           unsigned priority)
{
    char *p;

    m->priority = priority;
    if ((binding == NULL || binding[0] == '\0') &&
        (routing == NULL || routing[0] == '\0'))
        return;
    p = m->policy_strings;
    if (binding != NULL && binding[0] != '\0') {
        m->binding = p;
        p = stpcpy(p, binding) + 1;
    }
    if (routing != NULL && routing[0] != '\0') {
        m->routing_domain = p;
        stpcpy(p, routing);
    }
}


/* --- items --------------------------------------------------------------- */

/* item_new - an item for idx[0..n) of m, linked on dl->items, nowhere */
static struct dlv_item *
item_new(struct delivery *dl, struct dlv_msg *m, const uint32_t *idx,
         unsigned n, struct route_dest **rdp)
{
    struct dlv_item *it = xcalloc(1, sizeof *it + n * sizeof *idx);
    struct route_dest *rd = route_dest_get(dl, item_domain(m, idx[0]),
                                           m->binding);

    memcpy(it->rcpt_idx, idx, n * sizeof *idx);
    it->rcpt_count = n;
    it->msg = m;
    delivery_msg_ref(m);
    it->qi.priority = m->priority ? m->priority : QUEUE_PRIORITY_NORMAL;
    it->qi.dest = rd->qd;
    it->expire_ms = m->received_ms + rd->dom->message_expiration_ms;
    it->next = dl->items;
    if (dl->items != NULL)
        dl->items->prev = it;
    dl->items = it;
    *rdp = rd;
    return it;
}


/* item_free - unlink it from everything and drop its reference */
static void
item_free(struct delivery *dl, struct dlv_item *it)
{
    queue_remove(&dl->q, &it->qi);
    if (it->prev != NULL)
        it->prev->next = it->next;
    else
        dl->items = it->next;
    if (it->next != NULL)
        it->next->prev = it->prev;
    delivery_msg_unref(dl, it->msg);
    free(it->last_text);
    free(it->last_host);
    free(it);
}


/*
 * relay_control - an item is about to become ready: policy's CheckFile
 * sets its priority, or holds it until its next retry time (1: held).
 * Past its expiry it is not asked: expiry decides.
 */
static int
relay_control(void *arg, struct queue_item *qi)
{
    struct delivery *dl = arg;
    struct dlv_item *it = container_of(qi, struct dlv_item, qi);
    struct route_dest *rd = qi->dest->user;
    struct delivery_relay r = { 0 };
    uint64_t now = delivery_wall_ms(), delay;

    if (dl->env.relay_check == NULL || now >= it->expire_ms ||
        dl->env.relay_check(dl->env.relay_arg, it->msg, &r) <= 0)
        return 0;
    if (r.priority >= 1 && r.priority <= QUEUE_PRIORITY_MAX)
        it->qi.priority = r.priority;
    if (!r.skip)
        return 0;
    dl->env.stats->held++;
    delay = queue_backoff_ms(rd->dom->retry_interval_ms,
                             rd->dom->max_retry_interval_ms, it->attempt + 1,
                             delivery_rand(dl));
    if (now + delay > it->expire_ms)
        delay = it->expire_ms - now;
    log_panic("delivery", "relay control: %s held for %llu s: %s",
              it->msg->id, (unsigned long long)(delay / 1000),
              r.reason[0] ? r.reason : "SkipSend");
    queue_defer(&dl->q, &it->qi, now_ms() + delay);
    return 1;
}


/*
 * item_restore - what recovery found of the attempts made on it before:
 * the newest DEFER of a recipient of it (the group shares a destination,
 * so any of them speaks for it). Returns when the next attempt is due
 * (wall clock ms), 0 when nothing was found.
 */
static uint64_t
item_restore(struct dlv_item *it, const struct spool_found *f)
{
    const struct spool_defer *best = NULL;
    unsigned i, k;

    for (i = 0; f != NULL && i < f->defer_count; i++) {
        for (k = 0; k < it->rcpt_count; k++) {
            if (it->rcpt_idx[k] == f->defers[i].rcpt &&
                (best == NULL || f->defers[i].attempts > best->attempts))
                best = &f->defers[i];
        }
    }
    if (best == NULL)
        return 0;
    it->attempt = best->attempts;
    it->last_code = best->last_code;
    snprintf(it->last_enhanced, sizeof it->last_enhanced, "%s",
             best->last_enhanced);
    if (best->last_text[0] != '\0')
        it->last_text = xstrdup(best->last_text);
    it->last_host = xstrdup(best->last_host);
    return best->due_unix_ms;
}


/*
 * items_make - queue m's recipients not yet done, one item per domain;
 * f: what recovery found (attempts made), or NULL for a new message
 */
static void
items_make(struct delivery *dl, struct dlv_msg *m,
           const struct spool_found *f)
{
    unsigned char *taken = xcalloc(m->rcpt_count, 1);
    uint32_t *idx = xmalloc(m->rcpt_count * sizeof *idx);
    uint64_t now = delivery_wall_ms(), due;
    struct route_dest *rd;
    struct dlv_item *it;
    unsigned i, j, n;

    for (i = 0; i < m->rcpt_count; i++) {
        const char *dom;

        if (taken[i] || m->rcpt_done[i])
            continue;
        dom = item_domain(m, i);
        n = 0;
        /* Quadratic in the recipients of one message, which are few. */
        for (j = i; j < m->rcpt_count; j++) {
            if (taken[j] || m->rcpt_done[j] ||
                strcasecmp(item_domain(m, j), dom) != 0)
                continue;
            taken[j] = 1;
            idx[n++] = j;
        }
        it = item_new(dl, m, idx, n, &rd);
        due = item_restore(it, f);
        /* A restart keeps the retry schedule: not due yet, wait for it. */
        if (due > now && due < it->expire_ms) {
            queue_defer(&dl->q, &it->qi, now_ms() + (due - now));
            continue;
        }
        if (!relay_control(dl, &it->qi))
            queue_ready(&dl->q, rd->qd, &it->qi);
    }
    free(taken);
    free(idx);
    dl->kick = 1;
}


/* --- the delivery log ---------------------------------------------------- */

static void
log_rcpt(struct delivery *dl, const struct dlv_item *it, uint32_t idx,
         enum delivery_log_outcome outcome,
         const struct smtp_client_result *r, const char *host,
         const char *ip, unsigned attempt, uint64_t now)
{
    const struct dlv_msg *m = it->msg;
    struct delivery_log_rec rec;

    if (!dl->log_ok)
        return;
    memset(&rec, 0, sizeof rec);
    rec.ts_ms = (int64_t)now;
    rec.id = m->id;
    rec.sender = m->sender;
    rec.rcpt = m->rcpts[idx];
    rec.outcome = outcome;
    rec.code = (int)r->code;
    rec.enhanced = r->enhanced;
    rec.response = r->text;
    rec.host = host;
    rec.ip = ip;
    rec.attempt = attempt;
    rec.queue_ms = now > m->received_ms ? now - m->received_ms : 0;
    delivery_log_record(&dl->log, &rec);
}


/* --- done marks ---------------------------------------------------------- */

static void mark_done(struct spool_mark *smk, int res);


/* mark_submit - hand mk to the spool's next group commit */
static void
mark_submit(struct delivery *dl, struct dlv_mark *mk)
{
    dl->pending++;
    spool_mark(dl->env.sp, &mk->mk);
}


/* mark_start - mark idx[0..n) of m done; dup of them got a remote 250 */
static void
mark_start(struct delivery *dl, struct dlv_msg *m, const uint32_t *idx,
           unsigned n, unsigned dup)
{
    struct delivery_stats *st = dl->env.stats;
    struct dlv_mark *mk = xcalloc(1, sizeof *mk + n * sizeof *idx);
    unsigned i, left = 0;

    ASSERT(n > 0);
    memcpy(mk->idx, idx, n * sizeof *idx);
    mk->count = n;
    mk->dl = dl;
    mk->msg = m;
    mk->dup = dup;
    delivery_msg_ref(m);
    for (i = 0; i < m->rcpt_count; i++)
        left += !m->rcpt_done[i];
    mk->mk.id = m->id;
    mk->mk.done = mark_done;
    /* The last recipients of a message: one record says it all. */
    if (n == left) {
        mk->mk.rcpts = NULL;
    } else {
        mk->mk.rcpts = mk->idx;
        mk->mk.rcpt_count = n;
    }
    st->dup_window += dup;
    if (st->dup_window > st->dup_window_max)
        st->dup_window_max = st->dup_window;
    mark_submit(dl, mk);
}


/* mark_free - drop mk and what it holds */
static void
mark_free(struct delivery *dl, struct dlv_mark *mk)
{
    struct delivery_stats *st = dl->env.stats;

    ASSERT(st->dup_window >= mk->dup);
    st->dup_window -= mk->dup;
    delivery_msg_unref(dl, mk->msg);
    free(mk);
}


/* mark_done - the marks are durable, or the spool refused them */
static void
mark_done(struct spool_mark *smk, int res)
{
    struct dlv_mark *mk = container_of(smk, struct dlv_mark, mk);
    struct delivery *dl = mk->dl;
    unsigned i;

    ASSERT(dl->pending > 0);
    dl->pending--;
    if (res < 0) {
        /* Never dropped: a 250'd recipient must be marked. Tick retries. */
        dl->env.stats->mark_failures++;
        if (!dl->mark_fail_logged) {
            log_panic("delivery", "shard %u: spool refused done-marks "
                      "(%s); retrying them while it recovers",
                      dl->env.shard_id, strerror(-res));
            dl->mark_fail_logged = 1;
        }
        mk->next = dl->retry;
        dl->retry = mk;
        return;
    }
    for (i = 0; i < mk->count; i++)
        mk->msg->rcpt_done[mk->idx[i]] = 1;
    for (i = 0; i < mk->msg->rcpt_count; i++) {
        if (!mk->msg->rcpt_done[i])
            break;
    }
    /* Done for good: its segment may go once nothing else lives there. */
    if (i == mk->msg->rcpt_count)
        spool_release(dl->env.sp, mk->msg->seg_seq);
    mark_free(dl, mk);
}


/* marks_retry - the spool works again: resubmit the refused marks */
static void
marks_retry(struct delivery *dl)
{
    struct dlv_mark *mk = dl->retry, *next;

    if (mk == NULL || spool_failed(dl->env.sp) != 0)
        return;
    dl->retry = NULL;
    dl->mark_fail_logged = 0;
    for (; mk != NULL; mk = next) {
        next = mk->next;
        mk->next = NULL;
        mark_submit(dl, mk);
    }
}


/* --- bounces ------------------------------------------------------------- */

static void bounce_commit_done(struct spool_msg *sm, int res);


/* item_requeue - put idx[0..n) of m back on the wheel, due in delay_ms */
static void
item_requeue(struct delivery *dl, struct dlv_msg *m, const uint32_t *idx,
             unsigned n, unsigned attempt, uint64_t delay_ms)
{
    struct route_dest *rd;
    struct dlv_item *it = item_new(dl, m, idx, n, &rd);

    it->attempt = attempt;
    queue_defer(&dl->q, &it->qi, now_ms() + delay_ms);
}


/* bounce_start - report the failed recipients of it in one DSN */
static void
bounce_start(struct delivery *dl, struct dlv_item *it,
             const struct dlv_fail *fails, unsigned n, const char *host,
             uint64_t now)
{
    const struct conf *c = dl->env.conf;
    struct dlv_msg *m = it->msg, *dsn;
    struct dlv_bounce *b;
    struct dsn_rcpt *rr;
    struct dsn_msg dm;
    struct dsn_out out;
    struct arena *a;
    char id[SPOOL_ID_MAX];
    struct iovec iov;
    uint32_t *idx = xmalloc(n * sizeof *idx);
    unsigned i;
    int rc;

    for (i = 0; i < n; i++)
        idx[i] = fails[i].idx;
    if (m->sender[0] == '\0') {
        /* Never bounce a bounce: the log line is all that is left. */
        mark_start(dl, m, idx, n, 0);
        free(idx);
        return;
    }
    a = arena_create(dl->env.pool);
    rr = arena_zalloc(a, n * sizeof *rr);
    for (i = 0; i < n; i++) {
        const struct smtp_client_result *r = fails[i].r;

        rr[i].addr = m->rcpts[fails[i].idx];
        rr[i].action = DSN_ACTION_FAILED;
        rr[i].status = fails[i].expired ? "4.4.7"
                       : (r->enhanced[0] != '\0' ? r->enhanced : NULL);
        if (r->code != 0)
            rr[i].diagnostic = arena_printf(a, "smtp; %u %s%s%s", r->code,
                                            r->enhanced, r->enhanced[0]
                                            ? " " : "", r->text);
        else
            rr[i].diagnostic = arena_printf(a, "X-ringmail; %s", r->text);
        rr[i].remote_mta = host != NULL && host[0] != '\0' ? host : NULL;
        rr[i].last_attempt_unix = (int64_t)(now / 1000);
    }
    memset(&dm, 0, sizeof dm);
    dm.hostname = c->hostname;
    dm.postmaster = c->mailer_daemon;
    dm.queue_id = m->id;
    dm.sender = m->sender;
    dm.arrival_unix = m->received_unix;
    dm.orig = m->body;
    dm.orig_bytes = (size_t)m->body_bytes;
    dm.rcpts = rr;
    dm.rcpt_count = n;
    rc = dsn_build(a, &dm, &out);
    if (rc < 0) {
        /* A sender a DSN cannot be addressed to: nobody to tell. */
        log_panic("delivery", "shard %u: %s: no DSN to <%s>: %s",
                  dl->env.shard_id, m->id, m->sender, strerror(-rc));
        arena_destroy(a);
        mark_start(dl, m, idx, n, 0);
        free(idx);
        return;
    }
    spool_next_id(dl->env.sp, id);
    iov.iov_base = out.text;
    iov.iov_len = out.bytes;
    dsn = msg_new(dl, id, "", &m->sender, 1, &iov, 1, out.bytes, 0);
    dsn->received_unix = (int64_t)(now / 1000);
    dsn->received_ms = now;
    arena_destroy(a);

    b = xcalloc(1, sizeof *b + n * sizeof *idx);
    b->dl = dl;
    b->orig = m;
    delivery_msg_ref(m);
    b->dsn = dsn;                /* msg_new's reference */
    b->attempt = it->attempt;
    b->count = n;
    memcpy(b->idx, idx, n * sizeof *idx);
    free(idx);
    b->iov.iov_base = (void *)dsn->body;
    b->iov.iov_len = dsn->body_bytes;
    b->sm.id = dsn->id;
    b->sm.received_unix = dsn->received_unix;
    b->sm.sender = dsn->sender;
    b->sm.rcpts = dsn->rcpts;
    b->sm.rcpt_count = 1;
    b->sm.peer = "";
    b->sm.body = &b->iov;
    b->sm.body_iov_count = 1;
    b->sm.body_bytes = dsn->body_bytes;
    b->sm.done = bounce_commit_done;
    dl->pending++;
    spool_commit(dl->env.sp, &b->sm);
}


/* bounce_commit_done - the DSN is durable: queue it, retire the failed */
static void
bounce_commit_done(struct spool_msg *sm, int res)
{
    struct dlv_bounce *b = container_of(sm, struct dlv_bounce, sm);
    struct delivery *dl = b->dl;

    ASSERT(dl->pending > 0);
    dl->pending--;
    if (res == 0) {
        dl->env.stats->dsns++;
        b->dsn->seg_seq = sm->seg_seq;
        items_make(dl, b->dsn, NULL);
        mark_start(dl, b->orig, b->idx, b->count, 0);
    } else {
        /* The failure stands; the DSN is tried again after the interval. */
        log_panic("delivery", "shard %u: %s: committing its DSN failed "
                  "(%s); bouncing again later", dl->env.shard_id,
                  b->orig->id, strerror(-res));
        item_requeue(dl, b->orig, b->idx, b->count, b->attempt,
                     conf_domain_find(dl->env.conf,
                                      rcpt_domain(b->orig->rcpts[b->idx[0]]))
                         ->retry_interval_ms);
    }
    delivery_msg_unref(dl, b->dsn);
    delivery_msg_unref(dl, b->orig);
    free(b);
}


/* --- outcomes ------------------------------------------------------------ */

/* defer_done - the DEFER record is durable, or was refused: nothing waits */
static void
defer_done(struct spool_mark *smk, int res)
{
    struct dlv_defer *df = container_of(smk, struct dlv_defer, mk);
    struct delivery *dl = df->dl;

    (void)res;
    ASSERT(dl->pending > 0);
    dl->pending--;
    free(df->text);
    free(df->host);
    free(df);
}


/*
 * defer_record - write it's deferral to the spool: attempts, last reply,
 * its first recipient (for its destination) and due, the wall clock time
 * of its next attempt
 */
static void
defer_record(struct delivery *dl, const struct dlv_item *it, uint64_t due)
{
    struct dlv_defer *df = xcalloc(1, sizeof *df);

    df->dl = dl;
    snprintf(df->id, sizeof df->id, "%s", it->msg->id);
    snprintf(df->enhanced, sizeof df->enhanced, "%s", it->last_enhanced);
    df->text = xstrdup(it->last_text != NULL ? it->last_text : "");
    df->host = xstrdup(it->last_host != NULL ? it->last_host : "");
    df->mk.id = df->id;
    df->mk.attempt = it->attempt;
    df->mk.last_code = it->last_code;
    df->mk.last_enhanced = df->enhanced;
    df->mk.last_text = df->text;
    df->mk.last_host = df->host;
    df->mk.defer_rcpt = it->rcpt_idx[0];
    df->mk.due_unix_ms = due;
    df->mk.done = defer_done;
    /* A failed spool refuses it at the next flush anyway. */
    dl->pending++;
    spool_mark(dl->env.sp, &df->mk);
}


/* item_save_last - remember a deferral, for the expiry that may follow */
static void
item_save_last(struct dlv_item *it, const struct smtp_client_result *r,
               const char *host)
{
    it->last_code = r->code;
    snprintf(it->last_enhanced, sizeof it->last_enhanced, "%s", r->enhanced);
    free(it->last_text);
    free(it->last_host);
    it->last_text = xstrdup(r->text);
    it->last_host = xstrdup(host != NULL ? host : "");
}


/*
 * item_outcome - per recipient results of it (attempted: a real attempt,
 * else its expiry found at pop time): log, mark, bounce, defer or free.
 */
static void
item_outcome(struct delivery *dl, struct dlv_item *it,
             const struct smtp_client_result *results, const char *host,
             const char *ip, int attempted)
{
    struct delivery_stats *st = dl->env.stats;
    const struct conf_domain *dom = conf_domain_find(
        dl->env.conf, rcpt_domain(it->msg->rcpts[it->rcpt_idx[0]]));
    unsigned attempt = it->attempt + (attempted ? 1 : 0);
    uint64_t now = delivery_wall_ms(), delay;
    struct dlv_fail *fails = NULL;
    uint32_t *done = NULL;
    unsigned k, nd = 0, nf = 0, nk = 0, keep_first = 0;
    int give_up;

    give_up = now >= it->expire_ms ||
              (dom->max_retries > 0 && attempt > dom->max_retries);
    for (k = 0; k < it->rcpt_count; k++) {
        const struct smtp_client_result *r = &results[k];
        uint32_t i = it->rcpt_idx[k];

        switch (r->outcome) {
        case SMTP_CLIENT_DELIVERED:
            log_rcpt(dl, it, i, DELIVERY_LOG_DELIVERED, r, host, ip,
                     attempt, now);
            st->delivered++;
            hist_record_us(&st->delivery_hist,
                           now > it->msg->received_ms
                               ? (now - it->msg->received_ms) * 1000 : 0);
            if (done == NULL)
                done = xmalloc(it->rcpt_count * sizeof *done);
            done[nd++] = i;
            break;
        case SMTP_CLIENT_FAILED:
            log_rcpt(dl, it, i, DELIVERY_LOG_BOUNCED, r, host, ip, attempt,
                     now);
            st->bounced++;
            if (fails == NULL)
                fails = xmalloc(it->rcpt_count * sizeof *fails);
            fails[nf].idx = i;
            fails[nf].r = r;
            fails[nf++].expired = 0;
            break;
        default:
            if (give_up) {
                log_rcpt(dl, it, i, DELIVERY_LOG_EXPIRED, r, host, ip,
                         attempt, now);
                st->expired++;
                if (fails == NULL)
                    fails = xmalloc(it->rcpt_count * sizeof *fails);
                fails[nf].idx = i;
                fails[nf].r = r;
                fails[nf++].expired = 1;
                break;
            }
            log_rcpt(dl, it, i, DELIVERY_LOG_DEFERRED, r, host, ip, attempt,
                     now);
            st->deferred++;
            if (nk == 0)
                keep_first = k;
            /* In place: nk <= k, so nothing unread is overwritten. */
            it->rcpt_idx[nk++] = i;
            break;
        }
    }
    if (nd > 0)
        mark_start(dl, it->msg, done, nd, nd);
    if (nf > 0)
        bounce_start(dl, it, fails, nf, host, now);
    if (nk > 0)
        item_save_last(it, &results[keep_first], host);
    free(done);
    free(fails);
    if (nk == 0) {
        item_free(dl, it);
        return;
    }
    it->rcpt_count = nk;
    it->attempt = attempt;
    delay = queue_backoff_ms(dom->retry_interval_ms,
                             dom->max_retry_interval_ms, attempt,
                             delivery_rand(dl));
    /* Due at expiry at the latest: the expiry bounce is not late. */
    if (now + delay > it->expire_ms)
        delay = it->expire_ms > now ? it->expire_ms - now : 0;
    if (attempt > 0)
        defer_record(dl, it, now + delay);
    queue_defer(&dl->q, &it->qi, now_ms() + delay);
}


/* delivery_item_done - the attempt on it is over: results[rcpt_count] */
void
delivery_item_done(struct delivery *dl, struct dlv_item *it,
                   const struct smtp_client_result *results,
                   const char *host, const char *ip)
{
    ASSERT(it->qi.where == QUEUE_NOWHERE);
    item_outcome(dl, it, results, host, ip, 1);
    dl->kick = 1;
}


/* item_expire - it came due after its expiry: give up without trying */
static void
item_expire(struct delivery *dl, struct dlv_item *it)
{
    struct smtp_client_result *rs = xcalloc(it->rcpt_count, sizeof *rs);
    unsigned k;

    for (k = 0; k < it->rcpt_count; k++) {
        rs[k].outcome = SMTP_CLIENT_DEFERRED;
        rs[k].code = it->last_code;
        snprintf(rs[k].enhanced, sizeof rs[k].enhanced, "%s",
                 it->last_enhanced);
        snprintf(rs[k].text, sizeof rs[k].text, "%s",
                 it->last_text != NULL ? it->last_text : "expired");
        rs[k].synthesized = 1;
    }
    item_outcome(dl, it, rs, it->last_host, "", 0);
    free(rs);
}


/* delivery_pop - rd's next item to send now, or NULL (none, or throttled) */
struct dlv_item *
delivery_pop(struct delivery *dl, struct route_dest *rd)
{
    struct queue_item *qi;
    struct dlv_item *it;

    while (queue_dest_ready(rd->qd) > 0) {
        if (!route_throttle_ok(dl, rd))
            return NULL;
        qi = queue_pop(&dl->q, rd->qd);
        it = container_of(qi, struct dlv_item, qi);
        if (it->attempt > 0 && delivery_wall_ms() >= it->expire_ms) {
            item_expire(dl, it);
            continue;
        }
        route_throttle_take(dl, rd);
        return it;
    }
    return NULL;
}


/* delivery_fail_ready - every ready item of rd gets result r */
void
delivery_fail_ready(struct delivery *dl, struct route_dest *rd,
                    const struct smtp_client_result *r, const char *host,
                    const char *ip)
{
    struct smtp_client_result *rs = NULL;
    unsigned cap = 0, k;
    struct queue_item *qi;

    /* Deferred ones go to the wheel, not back here: this ends. */
    while ((qi = queue_pop(&dl->q, rd->qd)) != NULL) {
        struct dlv_item *it = container_of(qi, struct dlv_item, qi);

        if (it->rcpt_count > cap) {
            cap = it->rcpt_count;
            rs = xrealloc(rs, cap * sizeof *rs);
        }
        for (k = 0; k < it->rcpt_count; k++)
            rs[k] = *r;
        item_outcome(dl, it, rs, host, ip, 1);
    }
    free(rs);
    dl->kick = 1;
}


/* --- messages coming in -------------------------------------------------- */

/* delivery_accepted - a message just committed: copy it, queue it */
void
delivery_accepted(struct delivery *dl, const struct spool_msg *sm)
{
    struct dlv_msg *m = msg_new(dl, sm->id, sm->sender, sm->rcpts,
                                sm->rcpt_count, sm->body, sm->body_iov_count,
                                sm->body_bytes,
                                policy_bytes(sm->binding,
                                             sm->routing_domain));

    m->received_unix = sm->received_unix;
    m->received_ms = delivery_wall_ms();
    m->seg_seq = sm->seg_seq;
    msg_policy(m, sm->binding, sm->routing_domain, sm->priority);
    items_make(dl, m, NULL);
    delivery_msg_unref(dl, m);
}


/* delivery_recovered - a live message found at startup: its open rcpts */
void
delivery_recovered(struct delivery *dl, const struct spool_found *f)
{
    struct iovec iov = { (void *)f->body, (size_t)f->body_bytes };
    struct dlv_msg *m = msg_new(dl, f->id, f->sender, f->rcpts,
                                f->rcpt_count, &iov, 1, f->body_bytes,
                                policy_bytes(f->binding,
                                             f->routing_domain));
    unsigned i;

    m->received_unix = f->received_unix;
    m->received_ms = (uint64_t)f->received_unix * 1000;
    m->seg_seq = f->segment_seq;
    msg_policy(m, f->binding, f->routing_domain, f->priority);
    for (i = 0; f->rcpt_done != NULL && i < f->rcpt_count; i++)
        m->rcpt_done[i] = f->rcpt_done[i];
    dl->env.stats->recovered++;
    items_make(dl, m, f);
    delivery_msg_unref(dl, m);
}


/* --- scheduling ---------------------------------------------------------- */

/* dest_offer - give rd's ready items connections within its limits */
static void
dest_offer(struct delivery *dl, struct route_dest *rd)
{
    unsigned starts = 0;

    ASSERT(rd != NULL);
    if (rd->down_until_ms != 0) {
        if (now_ms() < rd->down_until_ms && rd->conns == 0) {
            delivery_fail_ready(dl, rd, &rd->down_result, rd->down_host,
                                rd->down_ip);
            return;
        }
        rd->down_until_ms = 0;   /* time to try it again */
    }
    /* Idle connections first: no handshake to pay. */
    while (queue_dest_ready(rd->qd) > 0 && rd->idle != NULL &&
           route_throttle_ok(dl, rd))
        dlv_conn_wake(rd->idle);
    /*
     * One connection per ready item not already covered by one on its
     * way up; those that come up find more and reuse themselves. A start
     * can fail at once (and fail the items), hence the bound.
     */
    while (queue_dest_ready(rd->qd) > rd->conns_unready &&
           rd->conns < rd->conns_max &&
           dl->conn_count < DELIVERY_CONNS_MAX &&
           route_throttle_ok(dl, rd) && starts++ < rd->conns_max)
        dlv_conn_start(dl, rd);
}


/* delivery_flush - before-wait hook: offer destinations, round robin */
void
delivery_flush(struct delivery *dl)
{
    struct queue_dest *qd, *first = NULL;
    unsigned n;

    if (dl->log_ok)
        delivery_log_flush(&dl->log);
    if (!dl->kick || dl->draining)
        return;
    dl->kick = 0;
    /* Each destination with ready items once; the ring may shrink. */
    for (n = dl->q.dest_count + 1; n > 0; n--) {
        qd = queue_next_dest(&dl->q);
        if (qd == NULL || qd == first)
            break;
        if (first == NULL)
            first = qd;
        dest_offer(dl, qd->user);
    }
}


/* delivery_tick - the shard tick: due items, timeouts, refused marks */
void
delivery_tick(struct delivery *dl, uint64_t now)
{
    dlv_conn_timeouts(dl, now);
    queue_advance(&dl->q, now);
    /* Throttles refill with time: look again at least every tick. */
    dl->kick = 1;
    marks_retry(dl);
}


/* delivery_drain - start nothing new; finish what is in flight */
void
delivery_drain(struct delivery *dl)
{
    struct dlv_conn *c = dl->conns, *next;

    dl->draining = 1;
    while (c != NULL) {
        next = c->next;
        dlv_conn_drain(c);
        c = next;
    }
}


/* delivery_abort - the drain budget is spent: drop every connection */
void
delivery_abort(struct delivery *dl)
{
    struct dlv_conn *c = dl->conns, *next;
    struct dlv_mark *mk, *mnext;

    dl->draining = 1;
    /* Marks a failed spool refused: their recipients may go out again. */
    for (mk = dl->retry; mk != NULL; mk = mnext) {
        mnext = mk->next;
        dl->env.stats->abandoned += mk->dup;
        mark_free(dl, mk);
    }
    dl->retry = NULL;
    while (c != NULL) {
        next = c->next;
        dlv_conn_abort(c);
        c = next;
    }
}


/*
 * delivery_idle - nothing in flight: no connection, no mark or DSN commit,
 * no refused mark waiting for the spool to recover (a drain waits for it
 * until its budget is spent), the delivery log written.
 */
int
delivery_idle(const struct delivery *dl)
{
    return dl->conns == NULL && dl->pending == 0 && dl->retry == NULL &&
           (!dl->log_ok || delivery_log_idle(&dl->log));
}


/* delivery_init - queue, resolver and delivery log; before spool_open */
void
delivery_init(struct delivery *dl, const struct delivery_env *env)
{
    const struct conf *c = env->conf;
    const char **servers = NULL;
    size_t i;
    int rc;

    memset(dl, 0, sizeof *dl);
    dl->env = *env;
    dl->rng = now_us() ^ ((uint64_t)env->shard_id << 48) ^
              0x9e3779b97f4a7c15ull;
    queue_init(&dl->q, now_ms());
    dl->q.ready_hook = relay_control;
    dl->q.hook_arg = dl;
    dl->buckets = xcalloc(MAX(c->throttle_bucket_count, 1u),
                          sizeof *dl->buckets);
    if (c->nameserver_count > 0) {
        servers = xcalloc(c->nameserver_count, sizeof *servers);
        for (i = 0; i < c->nameserver_count; i++)
            servers[i] = c->nameservers[i].text;
    }
    rc = dns_init(&dl->dns, env->lp, servers, c->nameserver_count);
    free(servers);
    if (rc < 0)
        log_panic("delivery", "shard %u: resolver: %s; MX delivery "
                  "defers until restart", env->shard_id, strerror(-rc));
    else
        dl->dns_ok = 1;
    rc = delivery_log_open(&dl->log, env->lp, c->delivery_log,
                           env->shard_id);
    if (rc < 0)
        log_panic("delivery", "shard %u: delivery log %s: %s; running "
                  "without it", env->shard_id, c->delivery_log,
                  strerror(-rc));
    else
        dl->log_ok = 1;
}


/* delivery_fini - free everything; the loop is done, nothing in flight */
void
delivery_fini(struct delivery *dl)
{
    struct dlv_mark *mk, *next;
    unsigned turns;

    ASSERT(dl->conns == NULL);
    ASSERT(dl->pending == 0);
    for (mk = dl->retry; mk != NULL; mk = next) {
        next = mk->next;
        mark_free(dl, mk);
    }
    dl->retry = NULL;
    while (dl->items != NULL)
        item_free(dl, dl->items);
    if (dl->dns_ok) {
        dns_fini(&dl->dns);
        /* Its cancelled polls free themselves when their CQEs are reaped. */
        for (turns = 0; turns < 4; turns++)
            loop_run_once(dl->env.lp, 0);
        dl->dns_ok = 0;
    }
    route_fini(dl);
    queue_fini(&dl->q);
    free(dl->buckets);
    dl->buckets = NULL;
    if (dl->log_ok) {
        delivery_log_close(&dl->log);
        dl->log_ok = 0;
    }
}
