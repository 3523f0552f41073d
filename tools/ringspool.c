/*
 * ringspool - list the committed, live messages of a spool
 *
 * SYNOPSIS
 *   ringspool [--json] [--body] PATH
 * DESCRIPTION
 *   PATH is Spool_Base (holding shard directories 0/, 1/, ...) or one shard
 *   directory (holding seg-*.log). For every committed message not yet
 *   done, in log order, one line on stdout:
 *
 *     text:   ID SHARD SENDER RCPTCOUNT BYTES       (SENDER <> when null)
 *     --json: {"id","shard","segment","offset","received","sender",
 *              "rcpts":[...],"peer","bytes"}, plus "body" with --body
 *
 *   then on stderr `N messages, N segments, N torn, N corrupt`. It reads
 *   with spool_scan() only, so it is safe on a running daemon's spool and
 *   changes nothing on disk; it does not move corrupt records aside (the
 *   daemon does that when it starts). spool_scan() drops the page cache
 *   of what it read, since cached pages of the daemon's live segment
 *   would push its O_DIRECT commits to io-wq threads.
 *
 *   JSON strings carry valid UTF-8 as it is; a byte that is not part of
 *   valid UTF-8 comes out as \u00XX (its Latin-1 reading), so the output
 *   is always valid JSON.
 * OWNERSHIP
 *   Everything lives for one spool_scan() callback.
 * THREADS
 *   Single-threaded.
 * ERRORS
 *   Exit 0; 1 with a message when PATH (or a shard in it) cannot be read,
 *   or on a usage error.
 */
#include <dirent.h>
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "spool.h"

struct ringspool {
    int json;
    int body;
    FILE *out;                   /* this scan attempt's lines */
    struct spool_scan_stats total;
};

/*
 * A scan of a live spool can meet a batch while the daemon writes it and
 * take the half-written blocks for corruption. Such a reading does not
 * repeat; real corruption does. So a shard that shows corruption is scanned
 * again, up to RINGSPOOL_SCAN_TRIES times RINGSPOOL_SCAN_PAUSE_US apart,
 * and the first clean scan (or the last one) is what is printed.
 */
#define RINGSPOOL_SCAN_TRIES    5
#define RINGSPOOL_SCAN_PAUSE_US 50000


/* ringspool_utf8_len - length of the valid UTF-8 sequence at p, or 0 */
static size_t
ringspool_utf8_len(const unsigned char *p, size_t left)
{
    size_t n, i;
    unsigned lo = 0x80, hi = 0xbf;

    if (p[0] >= 0xc2 && p[0] <= 0xdf)
        n = 2;
    else if (p[0] >= 0xe0 && p[0] <= 0xef)
        n = 3;
    else if (p[0] >= 0xf0 && p[0] <= 0xf4)
        n = 4;
    else
        return 0;
    if (left < n)
        return 0;
    /* Overlong forms, surrogates and code points past U+10FFFF. */
    if (p[0] == 0xe0)
        lo = 0xa0;
    else if (p[0] == 0xed)
        hi = 0x9f;
    else if (p[0] == 0xf0)
        lo = 0x90;
    else if (p[0] == 0xf4)
        hi = 0x8f;
    if (p[1] < lo || p[1] > hi)
        return 0;
    for (i = 2; i < n; i++) {
        if (p[i] < 0x80 || p[i] > 0xbf)
            return 0;
    }
    return n;
}


/* ringspool_json_str - print s[0..len) as a JSON string */
static void
ringspool_json_str(FILE *out, const char *s, size_t len)
{
    const unsigned char *p = (const unsigned char *)s;
    size_t i = 0, n;

    putc('"', out);
    while (i < len) {
        unsigned char c = p[i];

        if (c == '"' || c == '\\') {
            putc('\\', out);
            putc(c, out);
        } else if (c == '\n') {
            fputs("\\n", out);
        } else if (c == '\r') {
            fputs("\\r", out);
        } else if (c == '\t') {
            fputs("\\t", out);
        } else if (c < 0x20 || c == 0x7f) {
            fprintf(out, "\\u%04x", c);
        } else if (c < 0x80) {
            putc(c, out);
        } else if ((n = ringspool_utf8_len(p + i, len - i)) > 0) {
            fwrite(p + i, 1, n, out);
            i += n;
            continue;
        } else {
            fprintf(out, "\\u%04x", c);
        }
        i++;
    }
    putc('"', out);
}


/* ringspool_print - one spool_scan() callback: one line per message */
static void
ringspool_print(void *arg, const struct spool_found *f)
{
    struct ringspool *rs = arg;
    unsigned i;

    if (!rs->json) {
        fprintf(rs->out, "%s %u %s %u %" PRIu64 "\n", f->id, f->shard_id,
               f->sender[0] != '\0' ? f->sender : "<>", f->rcpt_count,
               f->body_bytes);
        return;
    }
    fputs("{\"id\":", rs->out);
    ringspool_json_str(rs->out, f->id, strlen(f->id));
    fprintf(rs->out, ",\"shard\":%u,\"segment\":", f->shard_id);
    ringspool_json_str(rs->out, f->segment, strlen(f->segment));
    fprintf(rs->out,
            ",\"offset\":%" PRIu64 ",\"received\":%" PRId64 ",\"sender\":",
           f->offset, f->received_unix);
    ringspool_json_str(rs->out, f->sender, strlen(f->sender));
    fputs(",\"rcpts\":[", rs->out);
    for (i = 0; i < f->rcpt_count; i++) {
        if (i > 0)
            fputc(',', rs->out);
        ringspool_json_str(rs->out, f->rcpts[i], strlen(f->rcpts[i]));
    }
    fputs("],\"peer\":", rs->out);
    ringspool_json_str(rs->out, f->peer, strlen(f->peer));
    fprintf(rs->out, ",\"bytes\":%" PRIu64, f->body_bytes);
    /* What policy chose, when it chose anything. */
    if (f->binding != NULL && f->binding[0] != '\0') {
        fputs(",\"binding\":", rs->out);
        ringspool_json_str(rs->out, f->binding, strlen(f->binding));
    }
    if (f->routing_domain != NULL && f->routing_domain[0] != '\0') {
        fputs(",\"routing_domain\":", rs->out);
        ringspool_json_str(rs->out, f->routing_domain,
                           strlen(f->routing_domain));
    }
    if (f->priority != 0)
        fprintf(rs->out, ",\"priority\":%u", f->priority);
    /* Deferrals so far: each destination's newest, and the most tried. */
    if (f->defer_count > 0) {
        const struct spool_defer *best = &f->defers[0];

        fputs(",\"defers\":[", rs->out);
        for (i = 0; i < f->defer_count; i++) {
            const struct spool_defer *df = &f->defers[i];

            if (df->attempts > best->attempts)
                best = df;
            fprintf(rs->out, "%s{\"rcpt\":%u,\"attempts\":%u,"
                    "\"due_ms\":%" PRIu64 ",\"last_code\":%u,"
                    "\"last_response\":", i > 0 ? "," : "", df->rcpt,
                    df->attempts, df->due_unix_ms, df->last_code);
            ringspool_json_str(rs->out, df->last_text, strlen(df->last_text));
            fputc('}', rs->out);
        }
        fprintf(rs->out, "],\"attempts\":%u,\"last_response\":",
                best->attempts);
        ringspool_json_str(rs->out, best->last_text, strlen(best->last_text));
    }
    if (rs->body) {
        fputs(",\"body\":", rs->out);
        ringspool_json_str(rs->out, f->body, f->body_bytes);
    }
    fputs("}\n", rs->out);
}


/* ringspool_shard - list one shard directory; 0 or -errno */
static int
ringspool_shard(struct ringspool *rs, const char *dir)
{
    struct spool_scan_stats st;
    char *buf = NULL;
    size_t len = 0;
    int rc = 0, attempt;

    for (attempt = 1; attempt <= RINGSPOOL_SCAN_TRIES; attempt++) {
        rs->out = open_memstream(&buf, &len);
        if (rs->out == NULL)
            return -errno;
        memset(&st, 0, sizeof st);
        rc = spool_scan(dir, ringspool_print, rs, &st);
        fclose(rs->out);
        rs->out = NULL;
        if (rc < 0 || st.corrupt == 0 || attempt == RINGSPOOL_SCAN_TRIES)
            break;
        free(buf);
        buf = NULL;
        len = 0;
        usleep(RINGSPOOL_SCAN_PAUSE_US);
    }
    if (rc == 0 && len > 0 && fwrite(buf, 1, len, stdout) != len)
        rc = -EIO;
    free(buf);
    if (rc < 0)
        return rc;
    rs->total.segments += st.segments;
    rs->total.messages += st.messages;
    rs->total.live += st.live;
    rs->total.torn += st.torn;
    rs->total.corrupt += st.corrupt;
    rs->total.bytes += st.bytes;
    return 0;
}


/* ringspool_shard_num - shard number of a directory name, -1 if none */
static long
ringspool_shard_num(const char *name)
{
    char *end;
    long v;

    if (name[0] < '0' || name[0] > '9')
        return -1;
    errno = 0;
    v = strtol(name, &end, 10);
    if (*end != '\0' || errno != 0 || v > 65535)
        return -1;
    return v;
}


static int
ringspool_long_cmp(const void *a, const void *b)
{
    long x = *(const long *)a, y = *(const long *)b;

    return (x > y) - (x < y);
}


/* ringspool_report - print why dir could not be listed; returns -1 */
static int
ringspool_report(const char *dir, int err)
{
    fprintf(stderr, "ringspool: %s: %s\n", dir, strerror(-err));
    return -1;
}


/* ringspool_path - list PATH: Spool_Base if it has shard dirs, no segments */
static int
ringspool_path(struct ringspool *rs, const char *path)
{
    char sub[4096];
    struct dirent *de;
    struct stat sb;
    long *shards = NULL, num;
    size_t count = 0, cap = 0, i;
    int has_segments = 0, rc = 0, r;
    DIR *d;

    d = opendir(path);
    if (d == NULL)
        return ringspool_report(path, -errno);
    while ((de = readdir(d)) != NULL) {
        if (strncmp(de->d_name, "seg-", 4) == 0) {
            has_segments = 1;
            continue;
        }
        num = ringspool_shard_num(de->d_name);
        if (num < 0)
            continue;
        snprintf(sub, sizeof sub, "%s/%s", path, de->d_name);
        if (stat(sub, &sb) < 0 || !S_ISDIR(sb.st_mode))
            continue;
        if (count == cap) {
            cap = cap ? cap * 2 : 16;
            shards = realloc(shards, cap * sizeof *shards);
            if (shards == NULL) {
                closedir(d);
                return ringspool_report(path, -ENOMEM);
            }
        }
        shards[count++] = num;
    }
    closedir(d);
    if (has_segments || count == 0) {
        free(shards);
        r = ringspool_shard(rs, path);
        return r < 0 ? ringspool_report(path, r) : 0;
    }
    qsort(shards, count, sizeof *shards, ringspool_long_cmp);
    for (i = 0; i < count; i++) {
        snprintf(sub, sizeof sub, "%s/%ld", path, shards[i]);
        r = ringspool_shard(rs, sub);
        if (r < 0)
            rc = ringspool_report(sub, r);
    }
    free(shards);
    return rc;
}


static void
ringspool_usage(void)
{
    fprintf(stderr, "usage: ringspool [--json] [--body] PATH\n"
            "  PATH: Spool_Base (shard directories 0/, 1/, ...) "
            "or one shard directory\n");
}


int
main(int argc, char **argv)
{
    struct ringspool rs;
    const char *path = NULL;
    int i, rc;

    memset(&rs, 0, sizeof rs);
    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0) {
            rs.json = 1;
        } else if (strcmp(argv[i], "--body") == 0) {
            rs.body = 1;
        } else if (strcmp(argv[i], "--help") == 0 ||
                   strcmp(argv[i], "-h") == 0) {
            ringspool_usage();
            return 0;
        } else if (argv[i][0] == '-' || path != NULL) {
            ringspool_usage();
            return 1;
        } else {
            path = argv[i];
        }
    }
    if (path == NULL) {
        ringspool_usage();
        return 1;
    }
    if (rs.body && !rs.json) {
        fprintf(stderr, "ringspool: --body needs --json\n");
        return 1;
    }
    rc = ringspool_path(&rs, path);
    if (fflush(stdout) != 0)
        rc = ringspool_report("stdout", -errno);
    fprintf(stderr, "%" PRIu64 " messages, %" PRIu64 " segments, %" PRIu64
            " torn, %" PRIu64 " corrupt\n", rs.total.live,
            rs.total.segments, rs.total.torn, rs.total.corrupt);
    return rc < 0 ? 1 : 0;
}
