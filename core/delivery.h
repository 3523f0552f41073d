/*
 * delivery - a shard's outbound side: the messages it must deliver, their
 *            queue items, and what each attempt's outcome does to them
 *
 * SYNOPSIS
 *   void delivery_init(struct delivery *dl, const struct delivery_env *env);
 *   void delivery_recovered(struct delivery *dl, const struct spool_found *f);
 *   void delivery_accepted(struct delivery *dl, const struct spool_msg *m);
 *   void delivery_flush(struct delivery *dl);
 *   void delivery_tick(struct delivery *dl, uint64_t now);
 *   void delivery_drain(struct delivery *dl);
 *   void delivery_abort(struct delivery *dl);
 *   int  delivery_idle(const struct delivery *dl);
 *   void delivery_fini(struct delivery *dl);
 * DESCRIPTION
 *   A message stays on the shard that accepted it. delivery_accepted()
 *   (from the session, once the commit is durable) and
 *   delivery_recovered() (from spool_open()'s callback at startup, with
 *   only the recipients no DONE record covers) COPY the message into one
 *   malloc block of its own: id, sender, recipients and the whole body as
 *   the spool holds it (the Received header and the data). XXX: every
 *   message waiting for delivery stays in memory until it is done; a huge
 *   backlog should re-read bodies from the spool instead (later).
 *
 *   Its recipients are grouped by domain: one queue item per (message,
 *   domain), QUEUE_PRIORITY_NORMAL for now, on that domain's destination
 *   (route.h). delivery_flush() (the before-wait hook, before the spool's
 *   flush) offers destinations with ready items connections, round robin,
 *   within their limits (route.h, delivery_conn.h).
 *
 *   An attempt's outcome is per recipient (delivery_item_done()), and each
 *   is one line in the delivery log:
 *     2xx  delivered: a DONE mark goes to the spool (spool_mark); between
 *          the remote 250 and the mark being durable the recipient counts
 *          in the duplicate window gauge (stats->dup_window).
 *     4xx  deferred: the item waits queue_backoff_ms(Retry_Interval,
 *          attempt) on the timer wheel, never past Message_Expiration;
 *          at expiry (or after Max_Retries retries, when set) it expires.
 *     5xx  bounced; expired ones too: one DSN (dsn.h) per item reports
 *          them to the envelope sender. It is committed to the spool as a
 *          new message (sender <>) and queued like any other; only once
 *          that commit is durable are the failed recipients marked DONE.
 *          A message from <> is never bounced: its failed recipients are
 *          marked DONE and logged.
 *   A message is freed when nothing refers to it any more: no item, no
 *   mark or bounce in flight, no connection writing its body. When all its
 *   recipients are durably done, that is for good, and the spool hears so
 *   (spool_release: its segment may be deleted).
 *
 *   delivery_tick() (the shard tick, 250 ms) makes deferred items due,
 *   refills throttles, times connections out and retries marks a failed
 *   spool refused. delivery_drain() starts no new delivery: idle and
 *   unready connections are closed (QUIT), a message in flight gets its
 *   reply and its marks; delivery_idle() says when nothing is left in
 *   flight. delivery_abort() (the drain budget is spent) closes every
 *   connection at once: a message whose data was sent may be delivered
 *   again after the restart, and stats->abandoned counts its recipients.
 *   delivery_fini() frees everything once the loop is done.
 * OWNERSHIP
 *   struct delivery is the shard's. Messages, items, marks, bounces and
 *   connections are malloc'd and owned by it; conf and the spool are
 *   borrowed for the shard's life.
 * THREADS
 *   Shard-local.
 * ERRORS
 *   Peers' failures are results (logged per recipient in the delivery
 *   log); environment failures (spool refusing a mark or a DSN, socket
 *   creation) are retried and logged once in the paniclog.
 * SEE ALSO
 *   route.h, delivery_conn.h, queue.h, spool.h, dsn.h, delivery_log.h
 */
#ifndef RINGMAIL_DELIVERY_H
#define RINGMAIL_DELIVERY_H

#include <stdint.h>

#include "arena.h"
#include "conf.h"
#include "delivery_log.h"
#include "dns.h"
#include "hist.h"
#include "loop.h"
#include "queue.h"
#include "smtp_client.h"
#include "spool.h"

/* Connections per shard, all destinations together (fds are 20000). */
#define DELIVERY_CONNS_MAX 2000

struct delivery_stats {
    uint64_t messages;           /* taken: accepted, recovered, DSNs */
    uint64_t recovered;
    uint64_t messages_live;      /* in memory now */
    uint64_t delivered;          /* recipients */
    uint64_t deferred;           /* recipient attempts */
    uint64_t bounced;            /* recipients failed by a 5xx */
    uint64_t expired;            /* recipients given up on */
    uint64_t dsns;               /* DSN messages committed */
    uint64_t connections;        /* opened */
    uint64_t connect_failures;
    uint64_t mark_failures;      /* marks the spool refused (retried) */
    uint64_t dup_window;         /* 250 received, DONE not yet durable */
    uint64_t dup_window_max;
    uint64_t abandoned;          /* recipients whose data was sent when the
                                    connection was dropped at stop */
    uint64_t held;               /* relay control's SkipSend */
    struct hist delivery_hist;   /* reception to the remote 250, per rcpt */
};

struct dlv_msg;

/*
 * What relay control decided for a message about to be sent (VPOP3's
 * Actions): hold it until its next retry time (the hold counts toward its
 * expiry; reason is logged), or send it with this priority (1..100, 100
 * first).
 */
struct delivery_relay {
    int skip;
    unsigned priority;
    char reason[256];
};

/* What the shard lends the delivery side. */
struct delivery_env {
    struct loop *lp;
    struct spool *sp;
    const struct conf *conf;
    struct arena_pool *pool;     /* DSN building */
    unsigned shard_id;
    unsigned shard_count;        /* limits are shared out per shard */
    struct delivery_stats *stats;
    /* relay control (policy's CheckFile), or NULL: see delivery_relay */
    int (*relay_check)(void *arg, const struct dlv_msg *m,
                       struct delivery_relay *out);
    void *relay_arg;
};

struct dlv_msg;
struct dlv_item;
struct dlv_mark;
struct dlv_conn;
struct route_dest;
struct route_bucket;

struct delivery {
    struct delivery_env env;
    struct queue q;
    struct dns dns;
    int dns_ok;
    struct delivery_log log;
    int log_ok;
    struct dlv_item *items;      /* every item, wherever it is */
    struct route_dest *dests;    /* every destination seen */
    struct route_bucket *buckets;    /* throttles, per conf bucket */
    struct dlv_conn *conns;      /* every connection */
    unsigned conn_count;
    struct dlv_mark *retry;      /* marks to make again (spool failed) */
    unsigned pending;            /* marks and DSN commits in flight */
    int kick;                    /* something may be sent: schedule */
    int draining;
    int mark_fail_logged;
    uint64_t rng;
};

void delivery_init(struct delivery *dl, const struct delivery_env *env);
void delivery_recovered(struct delivery *dl, const struct spool_found *f);
void delivery_accepted(struct delivery *dl, const struct spool_msg *m);
void delivery_flush(struct delivery *dl);
void delivery_tick(struct delivery *dl, uint64_t now);
void delivery_drain(struct delivery *dl);
void delivery_abort(struct delivery *dl);
int delivery_idle(const struct delivery *dl);
void delivery_fini(struct delivery *dl);

/* --- shared with delivery_conn.c and route.c --------------------------- */

/* One accepted message: one malloc block, strings and body included. */
struct dlv_msg {
    char id[SPOOL_ID_MAX];
    const char *sender;          /* "" for <> */
    const char **rcpts;          /* [rcpt_count] */
    unsigned rcpt_count;
    unsigned char *rcpt_done;    /* [rcpt_count]: DONE is durable */
    const char *body;            /* Received header and data, CRLF lines */
    uint64_t body_bytes;
    int64_t received_unix;
    uint64_t received_ms;        /* wall clock, for queue time and expiry */
    uint64_t seg_seq;            /* its spool segment: spool_release() */
    unsigned refs;               /* items, marks, bounces, writes */
    const char *binding;         /* policy's choice; NULL: default */
    const char *routing_domain;  /* policy's choice; NULL: each rcpt's */
    unsigned priority;           /* 1..100; 0: QUEUE_PRIORITY_NORMAL */
    char *policy_strings;        /* room for the two above, in the block */
};

/* One message's recipients for one destination: what the queue holds. */
struct dlv_item {
    struct queue_item qi;        /* qi.dest->user is the route_dest */
    struct dlv_msg *msg;         /* a reference */
    struct dlv_item *prev, *next;    /* dl->items */
    unsigned attempt;            /* attempts made */
    uint64_t expire_ms;          /* wall clock: give up after this */
    unsigned last_code;          /* the last deferral, for expiry */
    char last_enhanced[SMTP_CLIENT_ENHANCED_MAX];
    char *last_text;             /* malloc'd, or NULL */
    char *last_host;
    unsigned rcpt_count;
    uint32_t rcpt_idx[];         /* indices into msg->rcpts */
};

struct dlv_item *delivery_pop(struct delivery *dl, struct route_dest *rd);
void delivery_item_done(struct delivery *dl, struct dlv_item *it,
                        const struct smtp_client_result *results,
                        const char *host, const char *ip);
void delivery_fail_ready(struct delivery *dl, struct route_dest *rd,
                         const struct smtp_client_result *r,
                         const char *host, const char *ip);
void delivery_msg_ref(struct dlv_msg *m);
void delivery_msg_unref(struct delivery *dl, struct dlv_msg *m);
uint32_t delivery_rand(struct delivery *dl);
uint64_t delivery_wall_ms(void);

#endif
