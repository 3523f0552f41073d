/*
 * xshard_msg - kinds of messages that cross threads: XS_<SENDER>_<OBJECT>_<VERB>
 *
 * Bump XSHARD_VERSION when a kind changes meaning.
 */
#ifndef RINGMAIL_XSHARD_MSG_H
#define RINGMAIL_XSHARD_MSG_H

#define XSHARD_VERSION 1

enum xshard_kind {
    XS_MAIN_SHARD_DRAIN,         /* stop accepting, finish sessions, exit */
    XS_MAIN_SHARD_STOP,          /* drain budget spent: close everything */
    XS_MAIN_SHARD_LOGS_REOPEN,   /* SIGUSR1: reopen the delivery log */
    XS_MAIN_KIND_COUNT,

    /* control thread -> shard, through struct shard's ctl_box; the
     * request (struct shard_ctl_req, shard_ctl.h) is msg->arg */
    XS_CONTROL_QUEUE_SHOW = 32,  /* per-domain counts, or one domain's */
    XS_CONTROL_MESSAGE_SHOW,     /* one message's recipients */
    XS_CONTROL_DOMAIN_FLUSH,     /* deferred items of a domain: due now */
    XS_CONTROL_DOMAIN_FAIL,      /* queued items of a domain: bounce */
    XS_CONTROL_MESSAGE_RETRY,    /* a message's deferred items: due now */
    XS_CONTROL_MESSAGE_FAIL,     /* a message's queued items: bounce */
};

#endif
