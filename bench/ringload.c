/*
 * ringload - io_uring SMTP load generator (issue 7, benchmark harness)
 *
 * SYNOPSIS
 *   ringload [options] HOST:PORT        (ringload --help for the options)
 * DESCRIPTION
 *   Runs -s sessions against one SMTP server, each sending messages of
 *   -l bytes over connections reused -M times, until -m messages were
 *   started or -D seconds passed, and never longer than --timeout. Every
 *   message carries "X-Ringload-Token: <run-id>-<seq>" and a Message-ID
 *   made of the same token, so a sink can account for loss and
 *   duplicates; --tokens FILE lists the tokens that got a 2xx after
 *   their dot.
 *
 *   With -P and a server that offers PIPELINING, MAIL, the RCPTs and DATA
 *   go in one write, and the last message of a connection carries QUIT
 *   behind its dot (RFC 2920). Like smtp-source, sockets linger 0, so a
 *   close sends RST and leaves no TIME_WAIT (--graceful-close: FIN).
 *
 *   The latency of a message is the time from sending its dot to reading
 *   the reply to it, kept in a log-linear histogram (ringhist.h).
 *   Each second a progress line goes to stderr; at the end a text summary
 *   goes to stdout and, with --json FILE, the same as JSON, plus the
 *   histogram's non-empty buckets (for a CDF) and the start time on
 *   CLOCK_MONOTONIC (to place the progress lines on another clock).
 *
 *   It is built to be cheap, so that it measures the server and not
 *   itself: one thread, one io_uring (core/loop.c), fixed-file sockets,
 *   multishot recv into provided buffers, messages rendered once with
 *   only the token patched in place, replies parsed down to their code,
 *   and no allocation after startup.
 * EXIT STATUS
 *   0 when the run ended by itself (-m done, -D over, or a signal), 1
 *   when --timeout cut it short, every session ran out of retries, or it
 *   could not start, 2 on a usage error. Failed messages do not change
 *   it: read the counts.
 * THREADS
 *   One. The ring is SINGLE_ISSUER|DEFER_TASKRUN.
 * SEE ALSO
 *   ringload.h, ringsink.c, bench/README.md
 */
#include <errno.h>
#include <getopt.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "ringaddr.h"
#include "ringload.h"
#include "util.h"

#define RINGLOAD_ABORT_GRACE_MS 5000  /* cancels after --timeout */
#define RINGLOAD_TOKENS_BUF (1u << 20)
#define RINGLOAD_BUF_SIZE 1024        /* replies are small */

static volatile sig_atomic_t ringload_signals;


/* ringload_usage - the --help text */
static void
ringload_usage(FILE *fp)
{
    fprintf(fp,
"usage: ringload [options] HOST:PORT\n"
"\n"
"io_uring SMTP load generator. HOST:PORT is 127.0.0.1:25, [::1]:25 or\n"
"name:25. Every message carries X-Ringload-Token: <run-id>-<seq>.\n"
"\n"
"  -s, --sessions N       concurrent sessions (default 10, max %u)\n"
"  -m, --messages N       messages to send in all (default 10000 unless -D)\n"
"  -D, --duration S       send for S seconds; with -m, whichever ends first\n"
"      --timeout S        hard cap on the run (default 300, or -D + 60)\n"
"  -l, --size BYTES       message size, headers included (default 1024)\n"
"  -M, --per-conn N       messages per connection (default 1; 0: no limit)\n"
"  -P, --pipelining       pipeline MAIL/RCPT/DATA (and QUIT after the last\n"
"                         dot) when the server offers PIPELINING\n"
"  -r, --rate N           at most N messages/s in all (token bucket)\n"
"  -f, --from ADDR        envelope sender (default ringload@ringload.test)\n"
"  -t, --to ADDR          recipient (default sink@ringsink.test)\n"
"  -R, --rcpts N          recipients per message: ADDR, local+1@domain,\n"
"                         ... (default 1, max %u)\n"
"      --helo NAME        EHLO name (default ringload.test)\n"
"      --token-prefix ID  run id in tokens (default rl<time>-<pid>)\n"
"      --json FILE        write the summary as JSON\n"
"      --tokens FILE      write the token of each 2xx'd message, one a line\n"
"  -c, --cpu N            pin to CPU N\n"
"      --phase-timeout S  limit on each wait for the server (default 30)\n"
"      --retries N        failed connections in a row before a session\n"
"                         gives up (default 5)\n"
"      --retry-delay MS   pause before reconnecting (default 100)\n"
"      --graceful-close   close with FIN; by default, like smtp-source,\n"
"                         sockets linger 0 and close with RST\n"
"  -q, --quiet            no progress lines\n"
"  -h, --help             this text\n"
"\n"
"A message's outcome is the reply that decided it: 2xx after its dot, the\n"
"first 4xx or 5xx of its transaction (a 421 closes and reconnects), or an\n"
"error when no reply came. Latency runs from the dot to its reply.\n"
"SIGINT/SIGTERM stop starting messages; a second one aborts.\n",
            RINGLOAD_SESSIONS_MAX, RINGLOAD_RCPTS_MAX);
}


/* ringload_number - parse an unsigned option value within [lo, hi] */
static int
ringload_number(const char *name, const char *s, unsigned long long lo,
                unsigned long long hi, unsigned long long *out)
{
    char *end;
    unsigned long long v;

    errno = 0;
    v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || s[0] == '-' || v < lo ||
        v > hi) {
        fprintf(stderr, "ringload: %s: expected a number in %llu..%llu, "
                "got '%s'\n", name, lo, hi, s);
        return -1;
    }
    *out = v;
    return 0;
}


/* ringload_run_id_ok - the run id goes into a header and a Message-ID */
static int
ringload_run_id_ok(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > RINGLOAD_RUN_ID_MAX)
        return 0;
    return strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
                     "0123456789._-") == n;
}


/* ringload_options - fill o from argv; 0, or 2 for a usage error */
static int
ringload_options(struct ringload_opts *o, int argc, char **argv)
{
    enum {
        OPT_TIMEOUT = 256, OPT_HELO, OPT_PREFIX, OPT_JSON, OPT_TOKENS,
        OPT_PHASE, OPT_RETRIES, OPT_RETRY_DELAY, OPT_GRACEFUL,
    };
    static const struct option longopts[] = {
        { "sessions", required_argument, NULL, 's' },
        { "messages", required_argument, NULL, 'm' },
        { "duration", required_argument, NULL, 'D' },
        { "timeout", required_argument, NULL, OPT_TIMEOUT },
        { "size", required_argument, NULL, 'l' },
        { "per-conn", required_argument, NULL, 'M' },
        { "pipelining", no_argument, NULL, 'P' },
        { "rate", required_argument, NULL, 'r' },
        { "from", required_argument, NULL, 'f' },
        { "to", required_argument, NULL, 't' },
        { "rcpts", required_argument, NULL, 'R' },
        { "helo", required_argument, NULL, OPT_HELO },
        { "token-prefix", required_argument, NULL, OPT_PREFIX },
        { "json", required_argument, NULL, OPT_JSON },
        { "tokens", required_argument, NULL, OPT_TOKENS },
        { "cpu", required_argument, NULL, 'c' },
        { "phase-timeout", required_argument, NULL, OPT_PHASE },
        { "retries", required_argument, NULL, OPT_RETRIES },
        { "retry-delay", required_argument, NULL, OPT_RETRY_DELAY },
        { "graceful-close", no_argument, NULL, OPT_GRACEFUL },
        { "quiet", no_argument, NULL, 'q' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    unsigned long long v;
    int ch, have_m = 0, have_timeout = 0;

    memset(o, 0, sizeof *o);
    o->sessions = 10;
    o->size = 1024;
    o->per_conn = 1;
    o->from = "ringload@ringload.test";
    o->to = "sink@ringsink.test";
    o->rcpts = 1;
    o->helo = "ringload.test";
    o->cpu = -1;
    o->timeout_s = 300;
    o->phase_timeout_ms = 30000;
    o->retries = 5;
    o->retry_delay_ms = 100;
    /* getopt_long permutes argv: keep the order as typed for the JSON. */
    o->argc = argc;
    o->argv = xcalloc((size_t)argc + 1, sizeof *o->argv);
    memcpy(o->argv, argv, (size_t)argc * sizeof *argv);
    snprintf(o->run_id, sizeof o->run_id, "rl%llx-%u",
             (unsigned long long)time(NULL), (unsigned)getpid());

    while ((ch = getopt_long(argc, argv, "s:m:D:l:M:Pr:f:t:R:c:qh",
                             longopts, NULL)) != -1) {
        switch (ch) {
        case 's':
            if (ringload_number("-s", optarg, 1, RINGLOAD_SESSIONS_MAX,
                                &v) < 0)
                return 2;
            o->sessions = (unsigned)v;
            break;
        case 'm':
            if (ringload_number("-m", optarg, 1, UINT32_MAX - 1, &v) < 0)
                return 2;
            o->messages = v;
            have_m = 1;
            break;
        case 'D':
            if (ringload_number("-D", optarg, 1, 86400, &v) < 0)
                return 2;
            o->duration_s = (unsigned)v;
            break;
        case OPT_TIMEOUT:
            if (ringload_number("--timeout", optarg, 1, 86400, &v) < 0)
                return 2;
            o->timeout_s = (unsigned)v;
            have_timeout = 1;
            break;
        case 'l':
            if (ringload_number("-l", optarg, 0, RINGLOAD_SIZE_MAX, &v) < 0)
                return 2;
            o->size = (size_t)v;
            break;
        case 'M':
            if (ringload_number("-M", optarg, 0, UINT_MAX, &v) < 0)
                return 2;
            o->per_conn = (unsigned)v;
            break;
        case 'P':
            o->pipelining = 1;
            break;
        case 'r':
            if (ringload_number("-r", optarg, 1, 100000000, &v) < 0)
                return 2;
            o->rate = (unsigned)v;
            break;
        case 'f':
            o->from = optarg;
            break;
        case 't':
            o->to = optarg;
            break;
        case 'R':
            if (ringload_number("-R", optarg, 1, RINGLOAD_RCPTS_MAX, &v) < 0)
                return 2;
            o->rcpts = (unsigned)v;
            break;
        case OPT_HELO:
            o->helo = optarg;
            break;
        case OPT_PREFIX:
            if (!ringload_run_id_ok(optarg)) {
                fprintf(stderr, "ringload: --token-prefix: 1..%d of "
                        "[A-Za-z0-9._-]\n", RINGLOAD_RUN_ID_MAX);
                return 2;
            }
            snprintf(o->run_id, sizeof o->run_id, "%s", optarg);
            break;
        case OPT_JSON:
            o->json_path = optarg;
            break;
        case OPT_TOKENS:
            o->tokens_path = optarg;
            break;
        case 'c':
            if (ringload_number("-c", optarg, 0, CPU_SETSIZE - 1, &v) < 0)
                return 2;
            o->cpu = (int)v;
            break;
        case OPT_PHASE:
            if (ringload_number("--phase-timeout", optarg, 1, 3600, &v) < 0)
                return 2;
            o->phase_timeout_ms = (unsigned)v * 1000;
            break;
        case OPT_RETRIES:
            if (ringload_number("--retries", optarg, 0, 1000000, &v) < 0)
                return 2;
            o->retries = (unsigned)v;
            break;
        case OPT_RETRY_DELAY:
            if (ringload_number("--retry-delay", optarg, 0, 600000, &v) < 0)
                return 2;
            o->retry_delay_ms = (unsigned)v;
            break;
        case OPT_GRACEFUL:
            o->graceful_close = 1;
            break;
        case 'q':
            o->quiet = 1;
            break;
        case 'h':
            ringload_usage(stdout);
            exit(0);
        default:
            ringload_usage(stderr);
            return 2;
        }
    }
    if (optind != argc - 1) {
        ringload_usage(stderr);
        return 2;
    }
    o->target = argv[optind];
    if (ringaddr_parse(o->target, &o->addr, &o->addrlen) < 0) {
        fprintf(stderr, "ringload: bad target '%s' (HOST:PORT)\n", o->target);
        return 2;
    }
    if (!have_m && o->duration_s == 0)
        o->messages = 10000;
    if (!have_timeout && o->duration_s + 60 > o->timeout_s)
        o->timeout_s = o->duration_s + 60;
    return 0;
}


/* --- the run's accounting ------------------------------------------------ */

/* ringload_claim - reserve one more message for a conn; 0 when none left */
int
ringload_claim(struct ringload *rl)
{
    if (rl->stopping)
        return 0;
    if (rl->o.messages != 0 && rl->claimed >= rl->o.messages)
        return 0;
    rl->claimed++;
    return 1;
}


/* ringload_unclaim - give back a message a conn claimed and will not send */
void
ringload_unclaim(struct ringload *rl)
{
    ASSERT(rl->claimed > rl->st.started);
    rl->claimed--;
}


/* ringload_rate_refill - add the tokens earned since the last refill */
static void
ringload_rate_refill(struct ringload *rl)
{
    uint64_t now = now_us();
    /* A burst of at most 1/50 s of the rate, and never less than one. */
    double cap = MAX(1.0, rl->o.rate / 50.0);

    rl->rate_tokens += (double)(now - rl->rate_us) * rl->o.rate / 1e6;
    if (rl->rate_tokens > cap)
        rl->rate_tokens = cap;
    rl->rate_us = now;
}


/* ringload_rate_take - one message's worth of -r; always 1 without -r */
int
ringload_rate_take(struct ringload *rl)
{
    if (rl->o.rate == 0)
        return 1;
    if (rl->rate_tokens < 1.0)
        ringload_rate_refill(rl);
    if (rl->rate_tokens < 1.0)
        return 0;
    rl->rate_tokens -= 1.0;
    return 1;
}


/* ringload_txn_done - count a transaction's outcome (0: no reply) */
void
ringload_txn_done(struct ringload *rl, struct ringload_conn *c, int code)
{
    ASSERT(c->txn_active);
    c->txn_active = 0;
    if (code != 0 && code != 421)
        c->answered_on_conn++;
    switch (code / 100) {
    case 2:
        rl->st.ok++;
        if (rl->tokens_fp != NULL) {
            fwrite(c->head + rl->msg.token_off, 1, rl->msg.token_len,
                   rl->tokens_fp);
            putc('\n', rl->tokens_fp);
        }
        break;
    case 4:
        rl->st.tempfail++;
        break;
    case 5:
        rl->st.permfail++;
        break;
    default:
        rl->st.error++;
        break;
    }
}


/* --- reporting ----------------------------------------------------------- */

/* ringload_finished - transactions that have an outcome */
static uint64_t
ringload_finished(const struct ringload *rl)
{
    return rl->st.ok + rl->st.tempfail + rl->st.permfail + rl->st.error;
}


/* ringload_progress - the once-a-second line on stderr */
static void
ringload_progress(struct ringload *rl, uint64_t now, uint64_t *last_us,
                  uint64_t *last_done)
{
    uint64_t done = ringload_finished(rl);
    double dt = (double)(now - *last_us) / 1e6;

    fprintf(stderr, "ringload: %6.1fs sent %llu 2xx %llu 4xx %llu 5xx %llu "
            "err %llu conn-err %llu rate %.0f/s p99 %lluus active %u\n",
            (double)(now - rl->start_us) / 1e6,
            (unsigned long long)rl->st.sent, (unsigned long long)rl->st.ok,
            (unsigned long long)rl->st.tempfail,
            (unsigned long long)rl->st.permfail,
            (unsigned long long)rl->st.error,
            (unsigned long long)rl->st.connect_errors,
            dt > 0 ? (double)(done - *last_done) / dt : 0.0,
            (unsigned long long)ringhist_quantile(&rl->hist_tick, 0.99),
            rl->active);
    ringhist_reset(&rl->hist_tick);
    *last_us = now;
    *last_done = done;
}


/* ringload_json_str - s as a JSON string */
static void
ringload_json_str(FILE *fp, const char *s)
{
    putc('"', fp);
    for (; *s != '\0'; s++) {
        unsigned char ch = (unsigned char)*s;

        if (ch == '"' || ch == '\\')
            fprintf(fp, "\\%c", ch);
        else if (ch < 0x20)
            fprintf(fp, "\\u%04x", ch);
        else
            putc(ch, fp);
    }
    putc('"', fp);
}


struct ringload_cpu {
    double user_s;
    double sys_s;
    long nvcsw;                  /* voluntary context switches (waits) */
};


/* ringload_cpu_get - this process's CPU time and voluntary sleeps */
static void
ringload_cpu_get(struct ringload_cpu *cpu)
{
    struct rusage ru;

    getrusage(RUSAGE_SELF, &ru);
    cpu->user_s = (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec / 1e6;
    cpu->sys_s = (double)ru.ru_stime.tv_sec + ru.ru_stime.tv_usec / 1e6;
    cpu->nvcsw = ru.ru_nvcsw;
}


/* ringload_summary - the final text report on stdout */
static void
ringload_summary(const struct ringload *rl, const struct ringload_cpu *cpu)
{
    const struct ringload_stats *st = &rl->st;
    const struct ringhist *h = &rl->hist;
    double el = (double)(rl->end_us - rl->start_us) / 1e6;
    uint64_t done = ringload_finished(rl);

    printf("ringload: %s run %s: %u sessions, %zu-byte messages, "
           "%u per connection, pipelining %s (%llu connections used it)\n",
           rl->o.target, rl->o.run_id, rl->o.sessions, rl->msg.size,
           rl->o.per_conn, rl->o.pipelining ? "wanted" : "off",
           (unsigned long long)st->pipelined_conns);
    printf("ringload: %.3f s (%s): started %llu sent %llu, 2xx %llu "
           "4xx %llu 5xx %llu errors %llu; %.1f msgs/s, %.1f 2xx/s\n",
           el, rl->end_reason, (unsigned long long)st->started,
           (unsigned long long)st->sent, (unsigned long long)st->ok,
           (unsigned long long)st->tempfail,
           (unsigned long long)st->permfail,
           (unsigned long long)st->error, el > 0 ? (double)done / el : 0.0,
           el > 0 ? (double)st->ok / el : 0.0);
    printf("ringload: connections %llu, connect errors %llu, refused %llu, "
           "421 %llu, peer closes %llu, timeouts %llu, protocol errors "
           "%llu, sessions given up %llu, linger errors %llu\n",
           (unsigned long long)st->connects,
           (unsigned long long)st->connect_errors,
           (unsigned long long)st->refused,
           (unsigned long long)st->closed_421,
           (unsigned long long)st->closed_by_peer,
           (unsigned long long)st->timeouts,
           (unsigned long long)st->protocol_errors,
           (unsigned long long)st->gave_up,
           (unsigned long long)st->linger_errors);
    printf("ringload: latency (dot to reply, us) n %llu p50 %llu p90 %llu "
           "p99 %llu p99.9 %llu max %llu\n",
           (unsigned long long)h->count,
           (unsigned long long)ringhist_quantile(h, 0.50),
           (unsigned long long)ringhist_quantile(h, 0.90),
           (unsigned long long)ringhist_quantile(h, 0.99),
           (unsigned long long)ringhist_quantile(h, 0.999),
           (unsigned long long)h->max);
    printf("ringload: cpu user %.3f s sys %.3f s, %.2f us/msg; ring turns "
           "%llu, completions %llu, sleeps %ld\n",
           cpu->user_s, cpu->sys_s,
           done ? (cpu->user_s + cpu->sys_s) * 1e6 / (double)done : 0.0,
           (unsigned long long)rl->loop.turns,
           (unsigned long long)rl->loop.cqes, cpu->nvcsw);
}


/* ringload_json - the summary as one JSON object in path */
static int
ringload_json(const struct ringload *rl, const struct ringload_cpu *cpu,
              const char *path)
{
    const struct ringload_stats *st = &rl->st;
    const struct ringload_opts *o = &rl->o;
    const struct ringhist *h = &rl->hist;
    double el = (double)(rl->end_us - rl->start_us) / 1e6;
    uint64_t done = ringload_finished(rl);
    FILE *fp = fopen(path, "w");

    if (fp == NULL)
        return -errno;
    fprintf(fp, "{\n  \"tool\": \"ringload\",\n  \"target\": ");
    ringload_json_str(fp, o->target);
    fprintf(fp, ",\n  \"run_id\": ");
    ringload_json_str(fp, o->run_id);
    fprintf(fp, ",\n  \"argv\": [");
    for (int i = 0; i < o->argc; i++) {
        if (i > 0)
            fprintf(fp, ", ");
        ringload_json_str(fp, o->argv[i]);
    }
    fprintf(fp, "]");
    fprintf(fp, ",\n  \"options\": {\"sessions\": %u, \"messages\": %llu, "
            "\"duration_s\": %u, \"timeout_s\": %u, \"size\": %zu, "
            "\"per_conn\": %u, \"pipelining\": %s, \"rate\": %u, "
            "\"rcpts\": %u, \"phase_timeout_s\": %u, \"retries\": %u, "
            "\"retry_delay_ms\": %u, \"graceful_close\": %s, \"cpu\": %d, "
            "\"from\": ",
            o->sessions, (unsigned long long)o->messages, o->duration_s,
            o->timeout_s, o->size, o->per_conn,
            o->pipelining ? "true" : "false", o->rate, o->rcpts,
            o->phase_timeout_ms / 1000, o->retries, o->retry_delay_ms,
            o->graceful_close ? "true" : "false", o->cpu);
    ringload_json_str(fp, o->from);
    fprintf(fp, ", \"to\": ");
    ringload_json_str(fp, o->to);
    fprintf(fp, ", \"helo\": ");
    ringload_json_str(fp, o->helo);
    fprintf(fp, "},\n  \"message_bytes\": %zu,\n  \"end\": \"%s\",\n"
            "  \"elapsed_s\": %.6f,\n", rl->msg.size, rl->end_reason, el);
    fprintf(fp, "  \"messages\": {\"started\": %llu, \"sent\": %llu, "
            "\"ok\": %llu, \"tempfail\": %llu, \"permfail\": %llu, "
            "\"error\": %llu},\n",
            (unsigned long long)st->started, (unsigned long long)st->sent,
            (unsigned long long)st->ok, (unsigned long long)st->tempfail,
            (unsigned long long)st->permfail,
            (unsigned long long)st->error);
    fprintf(fp, "  \"replies\": {\"2xx\": %llu, \"3xx\": %llu, "
            "\"4xx\": %llu, \"5xx\": %llu, \"1xx\": %llu, \"other\": %llu},\n",
            (unsigned long long)st->replies[2],
            (unsigned long long)st->replies[3],
            (unsigned long long)st->replies[4],
            (unsigned long long)st->replies[5],
            (unsigned long long)st->replies[1],
            (unsigned long long)st->replies[0]);
    fprintf(fp, "  \"connections\": {\"opened\": %llu, \"connect_errors\": "
            "%llu, \"refused\": %llu, \"closed_421\": %llu, "
            "\"closed_by_peer\": %llu, \"timeouts\": %llu, "
            "\"protocol_errors\": %llu, \"sessions_gave_up\": %llu, "
            "\"pipelined\": %llu, \"linger_errors\": %llu},\n",
            (unsigned long long)st->connects,
            (unsigned long long)st->connect_errors,
            (unsigned long long)st->refused,
            (unsigned long long)st->closed_421,
            (unsigned long long)st->closed_by_peer,
            (unsigned long long)st->timeouts,
            (unsigned long long)st->protocol_errors,
            (unsigned long long)st->gave_up,
            (unsigned long long)st->pipelined_conns,
            (unsigned long long)st->linger_errors);
    fprintf(fp, "  \"msgs_per_s\": %.1f,\n  \"ok_per_s\": %.1f,\n",
            el > 0 ? (double)done / el : 0.0,
            el > 0 ? (double)st->ok / el : 0.0);
    fprintf(fp, "  \"latency_us\": {\"count\": %llu, \"min\": %llu, "
            "\"mean\": %.1f, \"p50\": %llu, \"p90\": %llu, \"p99\": %llu, "
            "\"p99.9\": %llu, \"max\": %llu},\n",
            (unsigned long long)h->count,
            (unsigned long long)(h->count ? h->min : 0), ringhist_mean(h),
            (unsigned long long)ringhist_quantile(h, 0.50),
            (unsigned long long)ringhist_quantile(h, 0.90),
            (unsigned long long)ringhist_quantile(h, 0.99),
            (unsigned long long)ringhist_quantile(h, 0.999),
            (unsigned long long)h->max);
    fprintf(fp, "  \"start_monotonic_s\": %.6f,\n",
            (double)rl->start_us / 1e6);
    /* [highest value of the bucket, count]; at most RINGHIST_BUCKETS */
    fprintf(fp, "  \"histogram_us\": [");
    for (unsigned i = 0, n = 0; i < RINGHIST_BUCKETS; i++) {
        if (h->bucket[i] == 0)
            continue;
        fprintf(fp, "%s[%llu, %llu]", n++ > 0 ? ", " : "",
                (unsigned long long)MIN(ringhist_bucket_upper(i), h->max),
                (unsigned long long)h->bucket[i]);
    }
    fprintf(fp, "],\n");
    fprintf(fp, "  \"cpu\": {\"user_s\": %.6f, \"sys_s\": %.6f, "
            "\"us_per_msg\": %.3f}\n}\n", cpu->user_s, cpu->sys_s,
            done ? (cpu->user_s + cpu->sys_s) * 1e6 / (double)done : 0.0);
    if (fclose(fp) != 0)
        return -errno;
    return 0;
}


/* --- the run ------------------------------------------------------------- */

/* ringload_signal - SIGINT/SIGTERM: the first stops, the second aborts */
static void
ringload_signal(int sig)
{
    ringload_signals++;
}


/* ringload_linger_failed - the kernel refused SO_LINGER on a socket */
static void
ringload_linger_failed(struct op *op, int res, uint32_t flags)
{
    struct ringload *rl = container_of(op, struct ringload, linger_op);

    rl->st.linger_errors++;
}


/* ringload_setup - pin, ring, fixed-file slots, buffers, messages, conns */
static int
ringload_setup(struct ringload *rl)
{
    const struct ringload_opts *o = &rl->o;
    unsigned nbufs = 64, cq = 4096, i;
    int rc;

    if (o->cpu >= 0) {
        cpu_set_t set;

        CPU_ZERO(&set);
        CPU_SET(o->cpu, &set);
        if (sched_setaffinity(0, sizeof set, &set) < 0) {
            fprintf(stderr, "ringload: cpu %d: %s\n", o->cpu,
                    strerror(errno));
            return -1;
        }
    }
    /* Every conn can have a few CQEs due; a full CQ ends multishots. */
    while (cq < o->sessions * 4 && cq < 65536)
        cq *= 2;
    rc = loop_init(&rl->loop, 256, cq);
    if (rc < 0) {
        fprintf(stderr, "ringload: io_uring: %s\n", strerror(-rc));
        return -1;
    }
    rc = io_uring_register_files_sparse(&rl->loop.ring, o->sessions);
    if (rc < 0) {
        fprintf(stderr, "ringload: %u file slots: %s\n", o->sessions,
                strerror(-rc));
        return -1;
    }
    while (nbufs < o->sessions * 2 && nbufs < RINGBUFS_COUNT_MAX)
        nbufs *= 2;
    rc = ringbufs_init(&rl->bufs, &rl->loop.ring, RINGLOAD_BGID, nbufs,
                       RINGLOAD_BUF_SIZE);
    if (rc < 0) {
        fprintf(stderr, "ringload: buffer ring: %s\n", strerror(-rc));
        return -1;
    }
    rc = ringload_msg_init(&rl->msg, o->run_id, o->from, o->to, o->rcpts,
                           o->size, o->helo);
    if (rc < 0) {
        fprintf(stderr, "ringload: -f, -t and --helo must not hold CR, LF, "
                "'<' or '>' (nor spaces, for --helo)\n");
        return -1;
    }
    if (o->tokens_path != NULL) {
        rl->tokens_fp = fopen(o->tokens_path, "w");
        if (rl->tokens_fp == NULL) {
            fprintf(stderr, "ringload: %s: %s\n", o->tokens_path,
                    strerror(errno));
            return -1;
        }
        setvbuf(rl->tokens_fp, NULL, _IOFBF, RINGLOAD_TOKENS_BUF);
    }
    rl->linger_op.done = ringload_linger_failed;
    rl->conns = xcalloc(o->sessions, sizeof *rl->conns);
    for (i = 0; i < o->sessions; i++)
        ringload_conn_init(rl, &rl->conns[i], i);
    ringhist_reset(&rl->hist);
    ringhist_reset(&rl->hist_tick);
    return 0;
}


/* ringload_wake_ratewait - hand out the tokens earned to waiting conns */
static void
ringload_wake_ratewait(struct ringload *rl)
{
    unsigned n = rl->ratewait.count;

    /* Each turn removes the head from the list: at most n turns. */
    while (rl->ratewait.head != NULL && n-- > 0) {
        if (!rl->stopping) {
            ringload_rate_refill(rl);
            if (rl->rate_tokens < 1.0)
                break;
        }
        ringload_conn_resume(rl->ratewait.head);
    }
}


/* ringload_run - the loop: until every conn is done, or the abort grace */
static void
ringload_run(struct ringload *rl)
{
    const struct ringload_opts *o = &rl->o;
    uint64_t last_us, last_done = 0, abort_ms = 0;
    uint64_t start_ms;
    unsigned i;

    rl->start_us = last_us = now_us();
    rl->rate_us = rl->start_us;
    rl->now_ms = start_ms = now_ms();
    rl->active = o->sessions;
    rl->end_reason = "complete";
    for (i = 0; i < o->sessions; i++)
        ringload_conn_start(&rl->conns[i]);

    while (rl->active > 0) {
        uint64_t us;

        loop_run_once(&rl->loop, rl->ratewait.count > 0 ? 1 : 100);
        rl->now_ms = now_ms();
        if (!rl->stopping && ((o->duration_s != 0 &&
             rl->now_ms >= start_ms + o->duration_s * 1000ull) ||
             ringload_signals > 0)) {
            rl->stopping = 1;
            rl->end_reason = ringload_signals > 0 ? "signal" : "duration";
        }
        if (!rl->aborting && (rl->now_ms >= start_ms + o->timeout_s * 1000ull
                              || ringload_signals > 1)) {
            rl->stopping = rl->aborting = 1;
            rl->end_reason = ringload_signals > 1 ? "signal" : "timeout";
            abort_ms = rl->now_ms;
            for (i = 0; i < o->sessions; i++)
                ringload_conn_abort(&rl->conns[i]);
        }
        if (rl->aborting && rl->now_ms >= abort_ms + RINGLOAD_ABORT_GRACE_MS)
            break;
        ringload_wake_ratewait(rl);
        ringload_conn_tick(rl);
        us = now_us();
        if (!o->quiet && us >= last_us + 1000000)
            ringload_progress(rl, us, &last_us, &last_done);
    }
    rl->end_us = now_us();
    if (!rl->stopping && rl->st.gave_up == o->sessions)
        rl->end_reason = "gave_up";
}


/* main - options, setup, run, report */
int
main(int argc, char **argv)
{
    static struct ringload rl;   /* big (histograms): not on the stack */
    struct ringload_cpu cpu;
    struct sigaction sa;
    int rc;

    rc = ringload_options(&rl.o, argc, argv);
    if (rc != 0)
        return rc;
    if (ringload_setup(&rl) < 0)
        return 1;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = ringload_signal;
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    ringload_run(&rl);

    ringload_cpu_get(&cpu);
    if (rl.tokens_fp != NULL && fclose(rl.tokens_fp) != 0) {
        fprintf(stderr, "ringload: %s: %s\n", rl.o.tokens_path,
                strerror(errno));
        rc = 1;
    }
    rl.tokens_fp = NULL;
    ringload_summary(&rl, &cpu);
    fflush(stdout);
    if (rl.o.json_path != NULL) {
        int jrc = ringload_json(&rl, &cpu, rl.o.json_path);

        if (jrc < 0) {
            fprintf(stderr, "ringload: %s: %s\n", rl.o.json_path,
                    strerror(-jrc));
            rc = 1;
        }
    }
    if (strcmp(rl.end_reason, "timeout") == 0 ||
        strcmp(rl.end_reason, "gave_up") == 0)
        rc = 1;
    if (rl.active == 0) {
        /* Only a clean end frees: an aborted ring may still hold ops. */
        for (unsigned i = 0; i < rl.o.sessions; i++)
            free(rl.conns[i].head);
        free(rl.conns);
        ringload_msg_fini(&rl.msg);
        free(rl.o.argv);
        ringbufs_fini(&rl.bufs);
        loop_fini(&rl.loop);
    }
    return rc;
}
