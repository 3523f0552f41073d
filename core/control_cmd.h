/*
 * control_cmd - what the console's command handlers share (private to
 *               control_cmd.c and control_queue.c)
 *
 * SYNOPSIS
 *   int cmd_error(struct cmd_ctx *cx, const char *fmt, ...);
 * DESCRIPTION
 *   A handler gets the command's words after those that named it in
 *   cx->argv, writes its answer into cx->out (one JSON document when
 *   cx->json) and returns 0; or returns cmd_error(), which replaces the
 *   answer with the reason (text, or {"error": ...}) and returns -1.
 * THREADS
 *   The control thread.
 */
#ifndef RINGMAIL_CONTROL_CMD_H
#define RINGMAIL_CONTROL_CMD_H

#include "control.h"

#define CMD_ARGS_MAX 8

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

int cmd_error(struct cmd_ctx *cx, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* control_queue.c */
cmd_fn cmd_showqueue, cmd_message, cmd_flush_domain, cmd_fail_domain;

#endif
