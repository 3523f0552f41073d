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
    XS_MAIN_KIND_COUNT,
};

#endif
