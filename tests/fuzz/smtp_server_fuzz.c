/*
 * smtp_server_fuzz - libFuzzer target for the inbound protocol machine
 *
 * The input is a client's byte stream. Its first byte picks the read size
 * (1..64 bytes) so that the fuzzer explores every split of lines, dots and
 * CRLFs across reads; the second picks whether commits succeed. The machine
 * must never crash, never consume more than it was given, never buffer a
 * command line beyond its limit, and stop at every event.
 *
 * Built with clang -fsanitize=fuzzer by tools/fuzz; in the ordinary build
 * replay.c runs the corpus through the same function as a test.
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "smtp_server.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);


static void
fuzz_new_id(void *arg, char id[SMTP_ID_MAX])
{
    unsigned *n = arg;

    snprintf(id, SMTP_ID_MAX, "FUZZ%u", ++*n);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct arena_pool pool;
    struct arena *session;
    struct smtp_limits lim;
    struct smtp_server s;
    unsigned ids = 0, step, i;
    int commit_res;
    const char *in;
    char *pending = NULL;
    size_t off = 0, pending_len = 0, len;

    if (size < 2)
        return 0;
    step = 1 + data[0] % 64;
    commit_res = (data[1] & 3) == 0 ? -EIO : (data[1] & 3) == 1 ? -ENOSPC : 0;
    in = (const char *)data + 2;
    len = size - 2;

    arena_pool_init(&pool, 4096, 4);
    session = arena_create(&pool);
    memset(&lim, 0, sizeof lim);
    lim.hostname = "fuzz.test";
    lim.message_max = 4096;
    lim.rcpt_max = 5;
    lim.line_max = 128;
    lim.new_id = fuzz_new_id;
    lim.new_id_arg = &ids;
    smtp_server_init(&s, &lim, session, data[1] & 4, "192.0.2.1");
    smtp_server_greet(&s);

    for (i = 0; off < len || pending_len > 0; i++) {
        size_t n = MIN((size_t)step, len - off), used;
        enum smtp_event ev;

        pending = xrealloc(pending, pending_len + n + 1);
        memcpy(pending + pending_len, in + off, n);
        pending_len += n;
        off += n;
        used = smtp_server_feed(&s, pending, pending_len, &ev);
        ASSERT(used <= pending_len);
        ASSERT(s.line_len <= lim.line_max);
        memmove(pending, pending + used, pending_len - used);
        pending_len -= used;
        if (ev == SMTP_EV_MESSAGE) {
            ASSERT(s.state == SMTP_STATE_COMMIT);
            ASSERT(s.rcpt_count > 0 && s.rcpt_count <= lim.rcpt_max);
            ASSERT(s.body_bytes <= lim.message_max);
            smtp_server_commit_done(&s, commit_res);
        } else if (ev == SMTP_EV_CLOSE) {
            break;
        } else if (ev == SMTP_EV_FLUSH) {
            free(smtp_out_take(&s).buf);
        } else if (used == 0 && n == 0) {
            break;
        }
        if (s.out.len > 64 * 1024)
            free(smtp_out_take(&s).buf);
        if (i % 7 == 3 && s.state == SMTP_STATE_READY)
            smtp_server_shutdown(&s);
    }
    free(pending);
    smtp_server_fini(&s);
    arena_destroy(session);
    ASSERT(pool.chunks_live == 0);
    arena_pool_fini(&pool);
    return 0;
}
