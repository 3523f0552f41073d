/*
 * spool_test - group commit, recovery, damage handling and failure of the
 * spool, on a real ring and a real disk (a mkdtemp directory under /tmp,
 * which is ext4 here; tmpfs would make fdatasync free and hide ordering).
 *
 * The ENOSPC cases mount a 512 KiB tmpfs and are skipped when they cannot.
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <inttypes.h>
#include <limits.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <linux/fiemap.h>
#include <linux/fs.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <cmocka.h>

#include "crc32c.h"
#include "log.h"
#include "loop.h"
#include "spool.h"
#include "spool_rec.h"
#include "util.h"

#define TEST_RCPTS_MAX 4

struct test_msg {
    struct spool_msg m;
    char id[SPOOL_ID_MAX];
    char sender[64];
    char peer[32];
    char rcpt_buf[TEST_RCPTS_MAX][64];
    const char *rcpts[TEST_RCPTS_MAX];
    struct iovec iov[2];
    char *body;
    size_t body_len;
    int done_calls;
    int res;
};

struct found_copy {
    char id[SPOOL_ID_MAX];
    char *sender;
    char *peer;
    char **rcpts;
    unsigned rcpt_count;
    unsigned char *rcpt_done;
    char *body;
    uint64_t body_bytes;
    char segment[64];
    uint64_t offset;
    int64_t received_unix;
    char binding[64];
    char routing_domain[64];
    unsigned priority;
    unsigned defer_count;
    struct {
        uint32_t rcpt;
        unsigned attempts, last_code;
        uint64_t due;
        char enhanced[16], text[128], host[64];
    } defers[4];
};

struct found_set {
    struct found_copy *v;
    size_t n, cap;
};

struct fixture {
    char dir[128];               /* short: paths below are built from it */
    char shard[320];
    char mnt[256];
    int mounted;
    struct loop lp;
    struct spool sp;
    int sp_open;
    struct found_set found;
};


/* ---- helpers ---------------------------------------------------------- */

static void
flush_hook(struct loop *lp, void *arg)
{
    struct fixture *fx = arg;

    if (fx->sp_open)
        spool_flush(&fx->sp);
}


static void
found_free(struct found_set *fs)
{
    size_t i;
    unsigned j;

    for (i = 0; i < fs->n; i++) {
        struct found_copy *c = &fs->v[i];

        for (j = 0; j < c->rcpt_count; j++)
            free(c->rcpts[j]);
        free(c->rcpts);
        free(c->rcpt_done);
        free(c->sender);
        free(c->peer);
        free(c->body);
    }
    free(fs->v);
    memset(fs, 0, sizeof *fs);
}


static void
found_collect(void *arg, const struct spool_found *f)
{
    struct found_set *fs = arg;
    struct found_copy *c;
    unsigned j;

    if (fs->n == fs->cap) {
        fs->cap = fs->cap ? fs->cap * 2 : 64;
        fs->v = xrealloc(fs->v, fs->cap * sizeof *fs->v);
    }
    c = &fs->v[fs->n++];
    memset(c, 0, sizeof *c);
    snprintf(c->id, sizeof c->id, "%s", f->id);
    c->sender = xstrdup(f->sender);
    c->peer = xstrdup(f->peer);
    c->rcpt_count = f->rcpt_count;
    c->rcpts = xcalloc(f->rcpt_count, sizeof *c->rcpts);
    for (j = 0; j < f->rcpt_count; j++)
        c->rcpts[j] = xstrdup(f->rcpts[j]);
    if (f->rcpt_done != NULL) {
        c->rcpt_done = xmalloc(f->rcpt_count);
        memcpy(c->rcpt_done, f->rcpt_done, f->rcpt_count);
    }
    c->body = xmalloc(f->body_bytes + 1);
    memcpy(c->body, f->body, f->body_bytes);
    c->body_bytes = f->body_bytes;
    snprintf(c->segment, sizeof c->segment, "%s", f->segment);
    c->offset = f->offset;
    c->received_unix = f->received_unix;
    snprintf(c->binding, sizeof c->binding, "%s", f->binding);
    snprintf(c->routing_domain, sizeof c->routing_domain, "%s",
             f->routing_domain);
    c->priority = f->priority;
    c->defer_count = MIN(f->defer_count, ARRAY_SIZE(c->defers));
    for (j = 0; j < c->defer_count; j++) {
        const struct spool_defer *df = &f->defers[j];

        c->defers[j].rcpt = df->rcpt;
        c->defers[j].attempts = df->attempts;
        c->defers[j].last_code = df->last_code;
        c->defers[j].due = df->due_unix_ms;
        snprintf(c->defers[j].enhanced, sizeof c->defers[j].enhanced, "%s",
                 df->last_enhanced);
        snprintf(c->defers[j].text, sizeof c->defers[j].text, "%s",
                 df->last_text);
        snprintf(c->defers[j].host, sizeof c->defers[j].host, "%s",
                 df->last_host);
    }
}


static const struct found_copy *
found_get(const struct found_set *fs, const char *id)
{
    size_t i;

    for (i = 0; i < fs->n; i++) {
        if (strcmp(fs->v[i].id, id) == 0)
            return &fs->v[i];
    }
    return NULL;
}


static void
test_msg_done(struct spool_msg *m, int res)
{
    struct test_msg *t = container_of(m, struct test_msg, m);

    t->done_calls++;
    t->res = res;
}


/* test_msg_make - message i with 1..3 recipients and body_len bytes */
static struct test_msg *
test_msg_make(struct fixture *fx, unsigned i, size_t body_len)
{
    struct test_msg *t = xcalloc(1, sizeof *t);
    size_t k, half;
    unsigned j;

    spool_next_id(&fx->sp, t->id);
    /* Every seventh has the null reverse path <>. */
    if (i % 7 != 3)
        snprintf(t->sender, sizeof t->sender, "sender%u@example.com", i);
    snprintf(t->peer, sizeof t->peer, "192.0.2.%u", i % 250);
    t->body_len = body_len;
    t->body = xmalloc(body_len + 1);
    for (k = 0; k < body_len; k++)
        t->body[k] = (char)('A' + (k * 7 + i) % 26);
    if (body_len >= 2) {
        t->body[body_len - 2] = '\r';
        t->body[body_len - 1] = '\n';
    }
    half = body_len / 3;
    t->iov[0].iov_base = t->body;
    t->iov[0].iov_len = half;
    t->iov[1].iov_base = t->body + half;
    t->iov[1].iov_len = body_len - half;
    t->m.rcpt_count = i % 3 + 1;
    for (j = 0; j < t->m.rcpt_count; j++) {
        snprintf(t->rcpt_buf[j], sizeof t->rcpt_buf[j],
                 "rcpt%u.%u@example.org", i, j);
        t->rcpts[j] = t->rcpt_buf[j];
    }
    t->m.id = t->id;
    t->m.received_unix = 1700000000 + i;
    t->m.sender = t->sender;
    t->m.rcpts = t->rcpts;
    t->m.peer = t->peer;
    t->m.body = t->iov;
    t->m.body_iov_count = 2;
    t->m.body_bytes = body_len;
    t->m.done = test_msg_done;
    return t;
}


/* A spool_mark with the indices it names and what done() reported. */
struct test_mark {
    struct spool_mark mk;
    uint32_t idx[TEST_RCPTS_MAX];
    int done_calls;
    int res;
};


static void
test_mark_done(struct spool_mark *mk, int res)
{
    struct test_mark *t = container_of(mk, struct test_mark, mk);

    t->done_calls++;
    t->res = res;
}


/* test_mark_make - mark recipients idx[0..n) of t; n == 0: all of them */
static void
test_mark_make(struct test_mark *tm, const struct test_msg *t,
               const uint32_t *idx, unsigned n)
{
    memset(tm, 0, sizeof *tm);
    ASSERT(n <= TEST_RCPTS_MAX);
    if (n > 0)
        memcpy(tm->idx, idx, n * sizeof *idx);
    tm->mk.id = t->id;
    tm->mk.rcpts = n > 0 ? tm->idx : NULL;
    tm->mk.rcpt_count = n;
    tm->mk.done = test_mark_done;
}


static void
test_msgs_free(struct test_msg **v, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++) {
        if (v[i] != NULL) {
            free(v[i]->body);
            free(v[i]);
        }
    }
}


/* check_found - t was recovered exactly */
static void
check_found(const struct found_set *fs, const struct test_msg *t)
{
    const struct found_copy *c = found_get(fs, t->id);
    unsigned j;

    assert_non_null(c);
    assert_string_equal(c->sender, t->sender);
    assert_string_equal(c->peer, t->peer);
    assert_int_equal(c->rcpt_count, t->m.rcpt_count);
    for (j = 0; j < c->rcpt_count; j++)
        assert_string_equal(c->rcpts[j], t->rcpts[j]);
    assert_int_equal(c->body_bytes, t->body_len);
    assert_memory_equal(c->body, t->body, t->body_len);
    assert_int_equal(c->received_unix, t->m.received_unix);
}


static void
fx_open(struct fixture *fx, uint64_t segment_bytes)
{
    int rc;

    found_free(&fx->found);
    rc = spool_open(&fx->sp, &fx->lp, fx->shard, 0, segment_bytes,
                    found_collect, &fx->found);
    assert_int_equal(rc, 0);
    fx->sp_open = 1;
}


/* fx_run_until_idle - turn the loop until the spool has nothing out */
static void
fx_run_until_idle(struct fixture *fx)
{
    int i;

    for (i = 0; i < 10000; i++) {
        loop_run_once(&fx->lp, 50);
        if (spool_idle(&fx->sp))
            return;
    }
    fail_msg("spool never went idle");
}


static void
fx_close(struct fixture *fx)
{
    fx_run_until_idle(fx);
    spool_close(&fx->sp);
    fx->sp_open = 0;
}


/* fx_commit_all - commit v[0..n) in turns of per_turn, wait for all */
static void
fx_commit_all(struct fixture *fx, struct test_msg **v, size_t n,
              size_t per_turn)
{
    size_t i;

    for (i = 0; i < n; i++) {
        spool_commit(&fx->sp, &v[i]->m);
        if ((i + 1) % per_turn == 0)
            loop_run_once(&fx->lp, 0);
    }
    fx_run_until_idle(fx);
    for (i = 0; i < n; i++)
        assert_int_equal(v[i]->done_calls, 1);
}


static void
fx_seg_path(const struct fixture *fx, const char *name, char *path,
            size_t size)
{
    snprintf(path, size, "%s/%s", fx->shard, name);
}


/* log_count - how many times text occurs in the paniclog */
static unsigned
log_count(const struct fixture *fx, const char *text)
{
    char path[512], buf[16384];
    const char *p;
    unsigned count = 0;
    ssize_t n;
    int fd;

    snprintf(path, sizeof path, "%s/paniclog", fx->dir);
    fd = open(path, O_RDONLY);
    if (fd < 0)
        return 0;
    n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0)
        return 0;
    buf[n] = '\0';
    for (p = buf; (p = strstr(p, text)) != NULL; p++)
        count++;
    return count;
}


/* log_contains - the paniclog has a line containing text */
static int
log_contains(const struct fixture *fx, const char *text)
{
    return log_count(fx, text) > 0;
}


/* seg_unwritten - bytes of a file in unwritten (preallocated) extents */
static uint64_t
seg_unwritten(const char *path)
{
    struct {
        struct fiemap fm;
        struct fiemap_extent ext[32];
    } f;
    uint64_t start = 0, bytes = 0;
    unsigned i;
    int fd, last = 0;

    fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    while (!last) {
        memset(&f, 0, sizeof f);
        f.fm.fm_start = start;
        f.fm.fm_length = FIEMAP_MAX_OFFSET - start;
        f.fm.fm_flags = FIEMAP_FLAG_SYNC;
        f.fm.fm_extent_count = ARRAY_SIZE(f.ext);
        assert_int_equal(ioctl(fd, FS_IOC_FIEMAP, &f.fm), 0);
        if (f.fm.fm_mapped_extents == 0)
            break;
        for (i = 0; i < f.fm.fm_mapped_extents; i++) {
            struct fiemap_extent *e = &f.ext[i];

            if (e->fe_flags & FIEMAP_EXTENT_UNWRITTEN)
                bytes += e->fe_length;
            if (e->fe_flags & FIEMAP_EXTENT_LAST)
                last = 1;
            start = e->fe_logical + e->fe_length;
        }
    }
    close(fd);
    return bytes;
}


/* fx_mount_tmpfs - the shard on a fresh 512 KiB tmpfs; 0 if none */
static int
fx_mount_tmpfs(struct fixture *fx)
{
    snprintf(fx->mnt, sizeof fx->mnt, "%s/mnt", fx->dir);
    assert_int_equal(mkdir(fx->mnt, 0700), 0);
    if (mount("none", fx->mnt, "tmpfs", 0, "size=512k") < 0)
        return 0;
    fx->mounted = 1;
    snprintf(fx->shard, sizeof fx->shard, "%s/0", fx->mnt);
    return 1;
}


/* fx_fill_tmpfs - leave keep_bytes free on the tmpfs; returns the filler */
static void
fx_fill_tmpfs(struct fixture *fx, uint64_t keep_bytes, char *filler,
              size_t size)
{
    struct statvfs vfs;
    uint64_t free_bytes;
    int fd;

    assert_int_equal(statvfs(fx->mnt, &vfs), 0);
    free_bytes = (uint64_t)vfs.f_bavail * vfs.f_frsize;
    assert_true(free_bytes > keep_bytes);
    snprintf(filler, size, "%s/filler", fx->mnt);
    fd = open(filler, O_WRONLY | O_CREAT, 0600);
    assert_true(fd >= 0);
    assert_int_equal(fallocate(fd, 0, 0, (off_t)(free_bytes - keep_bytes)),
                     0);
    close(fd);
}


static unsigned
count_segments(const char *dir)
{
    struct dirent *de;
    unsigned n = 0;
    uint64_t seq;
    DIR *d;

    d = opendir(dir);
    assert_non_null(d);
    while ((de = readdir(d)) != NULL) {
        if (sscanf(de->d_name, "seg-%16" SCNx64 ".log", &seq) == 1)
            n++;
    }
    closedir(d);
    return n;
}


/* seg_read - the first len bytes of a segment of fx's shard */
static unsigned char *
seg_read(const char *dir, const char *name, size_t len)
{
    char path[512];
    unsigned char *buf = xmalloc(len);
    int fd;

    snprintf(path, sizeof path, "%s/%s", dir, name);
    fd = open(path, O_RDONLY);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, buf, len, 0), (ssize_t)len);
    close(fd);
    return buf;
}


/* seg_write - replace a segment file with len bytes of buf */
static void
seg_write(const char *dir, const char *name, const void *buf, size_t len)
{
    char path[512];
    int fd;

    snprintf(path, sizeof path, "%s/%s", dir, name);
    fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, buf, len), (ssize_t)len);
    close(fd);
}


static int
rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)remove(path);
    return 0;
}


static int
setup(void **state)
{
    struct fixture *fx = xcalloc(1, sizeof *fx);
    char log_path[512];

    snprintf(fx->dir, sizeof fx->dir, "/tmp/spool_test.XXXXXX");
    if (mkdtemp(fx->dir) == NULL)
        return -1;
    snprintf(fx->shard, sizeof fx->shard, "%s/0", fx->dir);
    snprintf(log_path, sizeof log_path, "%s/paniclog", fx->dir);
    if (log_open(log_path) < 0)
        return -1;
    /* Paniclog lines are checked in the file; stderr only when asked. */
    log_set_stderr(getenv("SPOOL_TEST_VERBOSE") != NULL);
    if (loop_init(&fx->lp, 256, 4096) < 0)
        return -1;
    loop_before_wait(&fx->lp, flush_hook, fx);
    *state = fx;
    return 0;
}


static int
teardown(void **state)
{
    struct fixture *fx = *state;

    spool_force_buffered = 0;
    if (fx->sp_open) {
        fx_run_until_idle(fx);
        spool_close(&fx->sp);
    }
    loop_fini(&fx->lp);
    if (fx->mounted)
        umount2(fx->mnt, MNT_DETACH);
    log_close();
    log_set_stderr(1);
    nftw(fx->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    found_free(&fx->found);
    free(fx);
    return 0;
}


/* ---- cases ------------------------------------------------------------ */

static void
test_crc32c_vector(void **state)
{
    static const char big[] = "The quick brown fox jumps over the lazy dog";
    uint32_t a;

    assert_int_equal(crc32c(0, "123456789", 9), 0xE3069283u);
    assert_int_equal(crc32c_sw(0, "123456789", 9), 0xE3069283u);
    assert_int_equal(crc32c(0, "", 0), 0);
    a = crc32c(0, big, 10);
    a = crc32c(a, big + 10, sizeof big - 11);
    assert_int_equal(a, crc32c(0, big, sizeof big - 1));
    assert_int_equal(crc32c(0, big + 1, sizeof big - 2),
                     crc32c_sw(0, big + 1, sizeof big - 2));
}


static void
test_group_commit_one_fdatasync(void **state)
{
    struct fixture *fx = *state;
    struct test_msg *v[20];
    size_t i;

    fx_open(fx, 1 << 20);
    for (i = 0; i < ARRAY_SIZE(v); i++) {
        v[i] = test_msg_make(fx, (unsigned)i, 1000 + i * 10);
        spool_commit(&fx->sp, &v[i]->m);
    }
    /* Nothing is acknowledged before the loop ran the write and sync. */
    for (i = 0; i < ARRAY_SIZE(v); i++)
        assert_int_equal(v[i]->done_calls, 0);
    fx_run_until_idle(fx);
    for (i = 0; i < ARRAY_SIZE(v); i++) {
        assert_int_equal(v[i]->done_calls, 1);
        assert_int_equal(v[i]->res, 0);
    }
    assert_int_equal(fx->sp.fdatasyncs, 1);
    assert_int_equal(fx->sp.batches_done, 1);
    assert_int_equal(fx->sp.commits, ARRAY_SIZE(v));
    assert_true(fx->sp.bytes_written > 20 * 1000);
    assert_int_equal(spool_failed(&fx->sp), 0);
    test_msgs_free(v, ARRAY_SIZE(v));
}


static void
test_recover_exact(void **state)
{
    struct fixture *fx = *state;
    struct test_msg *v[60];
    size_t i;

    fx_open(fx, 1 << 20);
    assert_int_equal(fx->found.n, 0);
    for (i = 0; i < ARRAY_SIZE(v); i++)
        v[i] = test_msg_make(fx, (unsigned)i, 10 + i * 97);
    fx_commit_all(fx, v, ARRAY_SIZE(v), 7);
    for (i = 0; i < ARRAY_SIZE(v); i++)
        assert_int_equal(v[i]->res, 0);
    fx_close(fx);

    fx_open(fx, 1 << 20);
    assert_int_equal(fx->found.n, ARRAY_SIZE(v));
    assert_int_equal(fx->sp.recovered.messages, ARRAY_SIZE(v));
    assert_int_equal(fx->sp.recovered.live, ARRAY_SIZE(v));
    assert_int_equal(fx->sp.recovered.torn, 0);
    assert_int_equal(fx->sp.recovered.corrupt, 0);
    for (i = 0; i < ARRAY_SIZE(v); i++) {
        check_found(&fx->found, v[i]);
        /* Recovery reports in log order. */
        assert_string_equal(fx->found.v[i].id, v[i]->id);
    }
    /* A reopened spool never appends to an old segment. */
    assert_int_equal(count_segments(fx->shard), 2);
    test_msgs_free(v, ARRAY_SIZE(v));
}


/* What policy chose (binding, routing domain, priority) survives a restart;
 * messages without a choice read back without one. */
static void
test_policy_fields(void **state)
{
    struct fixture *fx = *state;
    struct test_msg *v[4];
    const struct found_copy *c;
    size_t i;

    fx_open(fx, 1 << 20);
    for (i = 0; i < ARRAY_SIZE(v); i++)
        v[i] = test_msg_make(fx, (unsigned)i, 100 + i);
    v[0]->m.binding = "b1";
    v[1]->m.routing_domain = "elsewhere.example";
    v[2]->m.priority = 100;
    v[2]->m.binding = "b2";
    v[2]->m.routing_domain = "r.example";
    fx_commit_all(fx, v, ARRAY_SIZE(v), 4);
    fx_close(fx);
    fx_open(fx, 1 << 20);
    assert_int_equal(fx->found.n, ARRAY_SIZE(v));
    for (i = 0; i < ARRAY_SIZE(v); i++)
        check_found(&fx->found, v[i]);
    c = found_get(&fx->found, v[0]->id);
    assert_string_equal(c->binding, "b1");
    assert_string_equal(c->routing_domain, "");
    assert_int_equal(c->priority, 0);
    c = found_get(&fx->found, v[1]->id);
    assert_string_equal(c->binding, "");
    assert_string_equal(c->routing_domain, "elsewhere.example");
    c = found_get(&fx->found, v[2]->id);
    assert_string_equal(c->binding, "b2");
    assert_string_equal(c->routing_domain, "r.example");
    assert_int_equal(c->priority, 100);
    c = found_get(&fx->found, v[3]->id);
    assert_string_equal(c->binding, "");
    assert_int_equal(c->priority, 0);
    test_msgs_free(v, ARRAY_SIZE(v));
}


static int
id_cmp(const void *a, const void *b)
{
    return strcmp(a, b);
}


static void
test_ids_unique(void **state)
{
    struct fixture *fx = *state;
    enum { PER = 3000 };
    char (*ids)[SPOOL_ID_MAX] = xcalloc(3 * PER, SPOOL_ID_MAX);
    struct spool other;
    char other_dir[512];
    size_t i;

    fx_open(fx, 1 << 20);
    snprintf(other_dir, sizeof other_dir, "%s/1", fx->dir);
    assert_int_equal(spool_open(&other, &fx->lp, other_dir, 1, 1 << 20,
                                NULL, NULL), 0);
    for (i = 0; i < PER; i++) {
        spool_next_id(&fx->sp, ids[i]);
        spool_next_id(&other, ids[PER + i]);
    }
    fx_close(fx);
    /* A restart of the same shard. */
    fx_open(fx, 1 << 20);
    for (i = 0; i < PER; i++)
        spool_next_id(&fx->sp, ids[2 * PER + i]);
    spool_close(&other);
    for (i = 0; i < 3 * PER; i++)
        assert_true(strlen(ids[i]) > 0 && strlen(ids[i]) < SPOOL_ID_MAX);
    qsort(ids, 3 * PER, SPOOL_ID_MAX, id_cmp);
    for (i = 1; i < 3 * PER; i++)
        assert_string_not_equal(ids[i - 1], ids[i]);
    free(ids);
}


static void
test_empty_segments_reclaimed(void **state)
{
    struct fixture *fx = *state;
    int i;

    /* Each open makes a segment; unused ones must not pile up. */
    for (i = 0; i < 5; i++) {
        fx_open(fx, 1 << 20);
        fx_close(fx);
    }
    assert_true(count_segments(fx->shard) <= 2);
    fx_open(fx, 1 << 20);
    assert_int_equal(fx->found.n, 0);
    assert_int_equal(fx->sp.recovered.torn, 0);
    assert_int_equal(fx->sp.recovered.corrupt, 0);
}


static void
test_torn_tail(void **state)
{
    struct fixture *fx = *state;
    struct test_msg *v[5];
    const struct found_copy *last;
    char path[512];
    size_t i;

    fx_open(fx, 1 << 20);
    for (i = 0; i < ARRAY_SIZE(v); i++)
        v[i] = test_msg_make(fx, (unsigned)i, 3000);
    fx_commit_all(fx, v, ARRAY_SIZE(v), 1);
    fx_close(fx);
    found_free(&fx->found);
    assert_int_equal(spool_scan(fx->shard, found_collect, &fx->found, NULL),
                     0);
    last = found_get(&fx->found, v[4]->id);
    assert_non_null(last);
    /* Cut the last MSG record in its body. */
    fx_seg_path(fx, last->segment, path, sizeof path);
    assert_int_equal(truncate(path, (off_t)last->offset + 1500), 0);

    fx_open(fx, 1 << 20);
    assert_int_equal(fx->found.n, 4);
    for (i = 0; i < 4; i++)
        check_found(&fx->found, v[i]);
    assert_null(found_get(&fx->found, v[4]->id));
    assert_int_equal(fx->sp.recovered.torn, 1);
    assert_int_equal(fx->sp.recovered.corrupt, 0);
    test_msgs_free(v, ARRAY_SIZE(v));
}


static void
test_torn_msg_without_end(void **state)
{
    struct fixture *fx = *state;
    struct test_msg *v[3];
    const struct found_copy *last;
    unsigned char *seg;
    char path[512], name[64];
    uint64_t end_off, end_rec;
    size_t i;

    fx_open(fx, 1 << 20);
    for (i = 0; i < ARRAY_SIZE(v); i++)
        v[i] = test_msg_make(fx, (unsigned)i, 500);
    fx_commit_all(fx, v, ARRAY_SIZE(v), 3);
    snprintf(name, sizeof name, "seg-%016llx.log",
             (unsigned long long)fx->sp.seg_seq);
    end_off = fx->sp.seg_off;
    fx_close(fx);
    found_free(&fx->found);
    assert_int_equal(spool_scan(fx->shard, found_collect, &fx->found, NULL),
                     0);
    last = found_get(&fx->found, v[2]->id);
    assert_non_null(last);
    /* Drop the last END only (and the PAD after it): cut where it starts. */
    seg = seg_read(fx->shard, name, end_off);
    end_rec = last->offset + spool_rec_size(spool_rec_get64(seg +
                                                            last->offset + 8));
    assert_int_equal(seg[end_rec + 4], SPOOL_REC_END);
    free(seg);
    fx_seg_path(fx, name, path, sizeof path);
    assert_int_equal(truncate(path, (off_t)end_rec), 0);
    fx_open(fx, 1 << 20);
    assert_int_equal(fx->found.n, 2);
    assert_null(found_get(&fx->found, v[2]->id));
    assert_int_equal(fx->sp.recovered.torn, 1);
    test_msgs_free(v, ARRAY_SIZE(v));
}


static void
test_garbage_tail(void **state)
{
    struct fixture *fx = *state;
    struct test_msg *v[3];
    char path[512], name[64], junk[100];
    uint64_t end_off;
    size_t i;
    int fd;

    fx_open(fx, 1 << 20);
    for (i = 0; i < ARRAY_SIZE(v); i++)
        v[i] = test_msg_make(fx, (unsigned)i, 700);
    fx_commit_all(fx, v, ARRAY_SIZE(v), 3);
    snprintf(name, sizeof name, "seg-%016llx.log",
             (unsigned long long)fx->sp.seg_seq);
    end_off = fx->sp.seg_off;
    fx_close(fx);
    fx_seg_path(fx, name, path, sizeof path);
    fd = open(path, O_WRONLY);
    assert_true(fd >= 0);
    memset(junk, 0xa5, sizeof junk);
    assert_int_equal(pwrite(fd, junk, sizeof junk, (off_t)end_off),
                     sizeof junk);
    close(fd);

    fx_open(fx, 1 << 20);
    assert_int_equal(fx->found.n, 3);
    for (i = 0; i < ARRAY_SIZE(v); i++)
        check_found(&fx->found, v[i]);
    assert_int_equal(fx->sp.recovered.torn, 1);
    assert_int_equal(fx->sp.recovered.corrupt, 0);
    test_msgs_free(v, ARRAY_SIZE(v));
}


/* corrupt_middle - commit 3, flip a byte in the body of the second */
static void
corrupt_middle(struct fixture *fx, struct test_msg **v, uint64_t *off,
               char *name)
{
    const struct found_copy *mid;
    char path[512];
    unsigned char c;
    size_t i;
    int fd;

    fx_open(fx, 1 << 20);
    for (i = 0; i < 3; i++)
        v[i] = test_msg_make(fx, (unsigned)i, 2000);
    fx_commit_all(fx, v, 3, 3);
    fx_close(fx);
    found_free(&fx->found);
    assert_int_equal(spool_scan(fx->shard, found_collect, &fx->found, NULL),
                     0);
    mid = found_get(&fx->found, v[1]->id);
    assert_non_null(mid);
    *off = mid->offset;
    strcpy(name, mid->segment);
    fx_seg_path(fx, name, path, sizeof path);
    fd = open(path, O_RDWR);
    assert_true(fd >= 0);
    assert_int_equal(pread(fd, &c, 1, (off_t)(*off + 1000)), 1);
    c ^= 0x20;
    assert_int_equal(pwrite(fd, &c, 1, (off_t)(*off + 1000)), 1);
    close(fd);
}


static void
test_corrupt_middle(void **state)
{
    struct fixture *fx = *state;
    struct test_msg *v[3];
    char path[512], name[64];
    struct stat sb;
    uint64_t off;

    corrupt_middle(fx, v, &off, name);
    fx_open(fx, 1 << 20);
    assert_int_equal(fx->found.n, 2);
    check_found(&fx->found, v[0]);
    check_found(&fx->found, v[2]);
    assert_null(found_get(&fx->found, v[1]->id));
    assert_int_equal(fx->sp.recovered.corrupt, 1);
    assert_int_equal(fx->sp.recovered.torn, 0);
    /* Moved aside under a name made of segment and offset. */
    snprintf(path, sizeof path, "%s/corrupt/%s.%llu", fx->shard, name,
             (unsigned long long)off);
    assert_int_equal(stat(path, &sb), 0);
    assert_true(sb.st_size > 2000);
    assert_true(log_contains(fx, "corrupt record"));
    assert_true(log_contains(fx, name));
    test_msgs_free(v, 3);
}


/* commit_three - commit three messages, close; returns segment and end */
static void
commit_three(struct fixture *fx, struct test_msg **v, size_t body_len,
             char *name, uint64_t *end_off)
{
    size_t i;

    fx_open(fx, 1 << 20);
    for (i = 0; i < 3; i++)
        v[i] = test_msg_make(fx, (unsigned)i, body_len);
    fx_commit_all(fx, v, 3, 3);
    snprintf(name, 64, "seg-%016llx.log",
             (unsigned long long)fx->sp.seg_seq);
    *end_off = fx->sp.seg_off;
    fx_close(fx);
}


static void
test_corrupt_end_sets_msg_aside(void **state)
{
    struct fixture *fx = *state;
    struct test_msg *v[3];
    const struct found_copy *mid;
    char name[64], path[512];
    unsigned char *seg;
    struct stat sb;
    uint64_t end_off, end_rec, mid_off;

    commit_three(fx, v, 1000, name, &end_off);
    found_free(&fx->found);
    assert_int_equal(spool_scan(fx->shard, found_collect, &fx->found, NULL),
                     0);
    mid = found_get(&fx->found, v[1]->id);
    assert_non_null(mid);
    mid_off = mid->offset;
    /* The END follows the MSG record: damage its payload. */
    seg = seg_read(fx->shard, name, end_off);
    end_rec = mid_off + spool_rec_size(spool_rec_get64(seg + mid_off + 8));
    assert_int_equal(spool_rec_get32(seg + end_rec), SPOOL_REC_MAGIC);
    assert_int_equal(seg[end_rec + 4], SPOOL_REC_END);
    seg[end_rec + 30] ^= 1;
    seg_write(fx->shard, name, seg, end_off);
    free(seg);

    fx_open(fx, 1 << 20);
    assert_int_equal(fx->found.n, 2);
    assert_null(found_get(&fx->found, v[1]->id));
    assert_int_equal(fx->sp.recovered.corrupt, 1);
    /* The whole message went aside, from its MSG record. */
    snprintf(path, sizeof path, "%s/corrupt/%s.%llu", fx->shard, name,
             (unsigned long long)mid_off);
    assert_int_equal(stat(path, &sb), 0);
    assert_true(sb.st_size > 1000);
    test_msgs_free(v, 3);
}


static void
test_zero_hole_in_middle(void **state)
{
    struct fixture *fx = *state;
    struct test_msg *v[3];
    const struct found_copy *mid, *last;
    char name[64];
    unsigned char *seg;
    uint64_t end_off, hole;

    /* A lost page in the middle: zeros, then valid records. */
    commit_three(fx, v, 6000, name, &end_off);
    found_free(&fx->found);
    assert_int_equal(spool_scan(fx->shard, found_collect, &fx->found, NULL),
                     0);
    mid = found_get(&fx->found, v[1]->id);
    last = found_get(&fx->found, v[2]->id);
    assert_non_null(mid);
    assert_non_null(last);
    /* The first whole page inside the second message. */
    hole = (mid->offset + 4095) / 4096 * 4096;
    assert_true(hole + 4096 <= last->offset);
    seg = seg_read(fx->shard, name, end_off);
    memset(seg + hole, 0, 4096);
    seg_write(fx->shard, name, seg, end_off);
    free(seg);
    fx_open(fx, 1 << 20);
    assert_int_equal(fx->found.n, 2);
    check_found(&fx->found, v[0]);
    check_found(&fx->found, v[2]);
    assert_int_equal(fx->sp.recovered.corrupt, 1);
    assert_int_equal(fx->sp.recovered.torn, 0);
    test_msgs_free(v, 3);
}


static void
test_bad_segment_header(void **state)
{
    struct fixture *fx = *state;
    struct test_msg *v[3];
    char name[64];
    unsigned char *seg;
    uint64_t end_off;

    commit_three(fx, v, 100, name, &end_off);
    seg = seg_read(fx->shard, name, end_off);
    seg[30] ^= 0xff;
    seg_write(fx->shard, name, seg, end_off);
    free(seg);
    /* Without its salt nothing in the segment can be trusted. */
    fx_open(fx, 1 << 20);
    assert_int_equal(fx->found.n, 0);
    assert_int_equal(fx->sp.recovered.corrupt, 1);
    test_msgs_free(v, 3);
}


/* forge_put_str - a str field, the way a forger would write one */
static unsigned char *
forge_put_str(unsigned char *p, const char *str)
{
    size_t len = strlen(str);

    spool_rec_put32(p, (uint32_t)len);
    memcpy(p + 4, str, len + 1);
    return p + 4 + len + 1;
}


/* forge - a MSG + END pair meant to sit at segment offset off */
static size_t
forge(unsigned char *dst, uint64_t off, uint32_t salt, const char *id)
{
    unsigned char *r = dst, *p = r + SPOOL_REC_HDR_BYTES, *e;
    uint64_t pl, el;
    uint32_t crc;

    memset(dst, 0, 512);          /* records below are ~200 bytes */
    spool_rec_put64(p, 1);
    spool_rec_put64(p + 8, 4);
    spool_rec_put32(p + 16, 1);
    p = forge_put_str(p + SPOOL_MSG_FIXED_BYTES, id);
    p = forge_put_str(p, "evil@example.net");
    p = forge_put_str(p, "203.0.113.1");
    p = forge_put_str(p, "victim@example.com");
    memcpy(p, "spam", 4);
    p += 4;
    pl = (uint64_t)(p - (r + SPOOL_REC_HDR_BYTES));
    crc = crc32c(0, r + SPOOL_REC_HDR_BYTES, pl);
    spool_rec_hdr_put(r, SPOOL_REC_MSG, pl, crc, salt);
    e = r + spool_rec_size(pl);
    p = e + SPOOL_REC_HDR_BYTES;
    spool_rec_put64(p, off);
    spool_rec_put32(p + 8, crc);
    p = forge_put_str(p + SPOOL_END_FIXED_BYTES, id);
    el = (uint64_t)(p - (e + SPOOL_REC_HDR_BYTES));
    spool_rec_hdr_put(e, SPOOL_REC_END, el,
                      crc32c(0, e + SPOOL_REC_HDR_BYTES, el), salt);
    return (size_t)(e + spool_rec_size(el) - r);
}


static void
test_forged_record_in_body(void **state)
{
    struct fixture *fx = *state;
    struct test_msg *v[3];
    unsigned char *seg;
    char name[64];
    uint64_t end_off, meta, body_off, pad;
    size_t n, j;
    unsigned i;

    /*
     * A sender mails us well-formed records (MSG + END, right crcs, placed
     * on an 8-byte boundary at the offset they claim). When recovery
     * resynchronises inside that body it must not take them for ours: the
     * header crc is seeded with the segment's secret salt.
     */
    fx_open(fx, 1 << 20);
    v[0] = test_msg_make(fx, 0, 100);
    v[1] = test_msg_make(fx, 1, 2048);
    v[2] = test_msg_make(fx, 2, 100);
    meta = SPOOL_MSG_FIXED_BYTES + spool_rec_str_size(strlen(v[1]->id)) +
           spool_rec_str_size(strlen(v[1]->sender)) +
           spool_rec_str_size(strlen(v[1]->peer));
    for (i = 0; i < v[1]->m.rcpt_count; i++)
        meta += spool_rec_str_size(strlen(v[1]->rcpts[i]));
    /* v[1]'s MSG record goes where the log ends once v[0] is in. */
    fx_commit_all(fx, v, 1, 1);
    body_off = fx->sp.seg_off + SPOOL_REC_HDR_BYTES + meta;
    pad = (8 - body_off % 8) % 8;
    /* Salts a forger might try: 0, and a few guesses. */
    for (j = 0, n = pad; j < 4; j++) {
        char id[SPOOL_ID_MAX];

        snprintf(id, sizeof id, "forged-%zu", j);
        n += forge((unsigned char *)v[1]->body + n, body_off + n,
                   (uint32_t)(j * 0x9e3779b9u), id);
    }
    assert_true(n < 2000);
    fx_commit_all(fx, v + 1, 2, 2);
    snprintf(name, sizeof name, "seg-%016llx.log",
             (unsigned long long)fx->sp.seg_seq);
    end_off = fx->sp.seg_off;
    fx_close(fx);

    fx_open(fx, 1 << 20);
    assert_int_equal(fx->found.n, 3);
    check_found(&fx->found, v[1]);
    assert_int_equal(fx->found.v[1].offset + SPOOL_REC_HDR_BYTES + meta,
                     body_off);
    fx_close(fx);
    /* Break the carrier's header so recovery resynchronises in its body. */
    seg = seg_read(fx->shard, name, end_off);
    assert_int_equal(spool_rec_get32(seg + body_off + pad), SPOOL_REC_MAGIC);
    seg[body_off - meta - 3] ^= 1;
    seg_write(fx->shard, name, seg, end_off);
    free(seg);
    found_free(&fx->found);
    assert_int_equal(spool_scan(fx->shard, found_collect, &fx->found, NULL),
                     0);
    assert_int_equal(fx->found.n, 2);
    check_found(&fx->found, v[0]);
    check_found(&fx->found, v[2]);
    test_msgs_free(v, 3);
}


static void
test_padded_batches(void **state)
{
    struct fixture *fx = *state;
    enum { N = 8 };
    struct test_msg *v[N];
    char path[512], name[64];
    size_t i;

    /* ext4 takes O_DIRECT: one small message per batch, one block each. */
    fx_open(fx, 1 << 20);
    assert_int_equal(fx->sp.direct, 1);
    assert_int_equal(fx->sp.seg_off, SPOOL_REC_BLOCK);
    for (i = 0; i < N; i++) {
        v[i] = test_msg_make(fx, (unsigned)i, 100);
        fx_commit_all(fx, v + i, 1, 1);
        assert_int_equal(v[i]->res, 0);
        assert_int_equal(fx->sp.seg_off, (i + 2) * SPOOL_REC_BLOCK);
    }
    /* A durable write per batch, and no other sync. */
    assert_int_equal(fx->sp.fdatasyncs, N);
    assert_int_equal(fx->sp.batches_done, N);
    assert_int_equal(fx->sp.bytes_written, N * SPOOL_REC_BLOCK);
    /* Zeroed when made: no commit writes into an unwritten extent. */
    snprintf(name, sizeof name, "seg-%016llx.log",
             (unsigned long long)fx->sp.seg_seq);
    fx_seg_path(fx, name, path, sizeof path);
    assert_int_equal(seg_unwritten(path), 0);
    fx_close(fx);

    fx_open(fx, 1 << 20);
    assert_int_equal(fx->found.n, N);
    for (i = 0; i < N; i++) {
        check_found(&fx->found, v[i]);
        /* Each batch, so each MSG here, starts a block: after the PAD. */
        assert_int_equal(fx->found.v[i].offset, (i + 1) * SPOOL_REC_BLOCK);
    }
    assert_int_equal(fx->sp.recovered.torn, 0);
    assert_int_equal(fx->sp.recovered.corrupt, 0);
    test_msgs_free(v, N);
}


/* torn_batch - 3 one-block batches, then lose the last block of a fourth */
static void
torn_batch(struct fixture *fx, int cut)
{
    static const char zeros[SPOOL_REC_BLOCK];
    struct test_msg *v[4];
    char path[512], name[64];
    uint64_t start, end_off;
    size_t i;
    int fd;

    fx_open(fx, 1 << 20);
    for (i = 0; i < 3; i++) {
        v[i] = test_msg_make(fx, (unsigned)i, 200);
        fx_commit_all(fx, v + i, 1, 1);
    }
    start = fx->sp.seg_off;
    v[3] = test_msg_make(fx, 3, 9000);
    fx_commit_all(fx, v + 3, 1, 1);
    end_off = fx->sp.seg_off;
    assert_int_equal(end_off - start, 3 * SPOOL_REC_BLOCK);
    snprintf(name, sizeof name, "seg-%016llx.log",
             (unsigned long long)fx->sp.seg_seq);
    fx_close(fx);
    /* The write of the last batch reached the disk but for one block. */
    fx_seg_path(fx, name, path, sizeof path);
    if (cut) {
        assert_int_equal(truncate(path, (off_t)(end_off - SPOOL_REC_BLOCK)),
                         0);
    } else {
        fd = open(path, O_WRONLY);
        assert_true(fd >= 0);
        assert_int_equal(pwrite(fd, zeros, sizeof zeros,
                                (off_t)(end_off - SPOOL_REC_BLOCK)),
                         (ssize_t)sizeof zeros);
        close(fd);
    }

    fx_open(fx, 1 << 20);
    assert_int_equal(fx->found.n, 3);
    for (i = 0; i < 3; i++)
        check_found(&fx->found, v[i]);
    assert_null(found_get(&fx->found, v[3]->id));
    assert_int_equal(fx->sp.recovered.torn, 1);
    assert_int_equal(fx->sp.recovered.corrupt, 0);
    test_msgs_free(v, 4);
}


static void
test_torn_batch_zeroed(void **state)
{
    torn_batch(*state, 0);
}


static void
test_torn_batch_cut(void **state)
{
    torn_batch(*state, 1);
}


static void
test_buffered_fallback(void **state)
{
    struct fixture *fx = *state;
    enum { N = 150 };
    struct test_msg **v = xcalloc(N, sizeof *v);
    size_t i;

    /* As on a file system that refuses O_DIRECT: the spool says so once. */
    spool_force_buffered = 1;
    fx_open(fx, 64 << 10);
    spool_force_buffered = 0;
    assert_int_equal(fx->sp.direct, 0);
    assert_int_equal(log_count(fx, "refuses O_DIRECT"), 1);
    /* Segments made on the ring (buffered too), batches linked to syncs. */
    for (i = 0; i < N; i++)
        v[i] = test_msg_make(fx, (unsigned)i, 1500 + (i % 5) * 200);
    fx_commit_all(fx, v, N, 10);
    for (i = 0; i < N; i++)
        assert_int_equal(v[i]->res, 0);
    assert_int_equal(fx->sp.commits, N);
    assert_int_equal(fx->sp.fdatasyncs, fx->sp.batches_done);
    assert_true(fx->sp.fdatasyncs < N / 4);
    assert_int_equal(fx->sp.seg_off % SPOOL_REC_BLOCK, 0);
    assert_int_equal(fx->sp.direct, 0);
    fx_close(fx);
    assert_true(count_segments(fx->shard) >= 3);
    assert_int_equal(log_count(fx, "refuses O_DIRECT"), 1);

    /* Same layout: a direct spool recovers what a buffered one wrote. */
    fx_open(fx, 64 << 10);
    assert_int_equal(fx->sp.direct, 1);
    assert_int_equal(fx->found.n, N);
    for (i = 0; i < N; i++)
        check_found(&fx->found, v[i]);
    assert_int_equal(fx->sp.recovered.torn, 0);
    assert_int_equal(fx->sp.recovered.corrupt, 0);
    test_msgs_free(v, N);
    free(v);
}


static void
test_old_format_segment(void **state)
{
    struct fixture *fx = *state;
    enum { N = 3 };
    unsigned char *seg = xcalloc(1, 64 << 10);
    const char *ids[N] = { "old-1", "old-2", "old-3" };
    char name[64];
    uint64_t off;
    size_t i;

    /* Before PAD: SEGHDR, then records end to end, zeros after. */
    fx_open(fx, 1 << 20);
    fx_close(fx);
    off = 56;
    for (i = 0; i < N; i++)
        off += forge(seg + off, off, 0x5eed, ids[i]);
    spool_rec_put32(seg + 24, 0);
    spool_rec_put32(seg + 28, 0x5eed);
    spool_rec_put64(seg + 32, 0x100);
    spool_rec_put64(seg + 40, 1700000000);
    spool_rec_put64(seg + 48, 64 << 10);
    spool_rec_hdr_put(seg, SPOOL_REC_SEGHDR, 32, crc32c(0, seg + 24, 32), 0);
    snprintf(name, sizeof name, "seg-%016x.log", 0x100);
    seg_write(fx->shard, name, seg, 64 << 10);
    free(seg);

    fx_open(fx, 1 << 20);
    assert_int_equal(fx->found.n, N);
    for (i = 0; i < N; i++) {
        assert_string_equal(fx->found.v[i].id, ids[i]);
        assert_int_equal(fx->found.v[i].offset % SPOOL_REC_ALIGN, 0);
    }
    assert_int_equal(fx->sp.recovered.torn, 0);
    assert_int_equal(fx->sp.recovered.corrupt, 0);
}


static void
test_random_damage(void **state)
{
    struct fixture *fx = *state;
    enum { N = 30, ROUNDS = 300 };
    struct test_msg *v[N];
    char name[64], dir[512];
    unsigned char *orig, *seg;
    uint64_t end_off;
    size_t i, j, k, len;
    unsigned seed = 12345;

    fx_open(fx, 1 << 20);
    for (i = 0; i < N; i++)
        v[i] = test_msg_make(fx, (unsigned)i, 200 + i * 50);
    fx_commit_all(fx, v, N, 10);
    snprintf(name, sizeof name, "seg-%016llx.log",
             (unsigned long long)fx->sp.seg_seq);
    end_off = fx->sp.seg_off;
    fx_close(fx);
    orig = seg_read(fx->shard, name, end_off);
    seg = xmalloc(end_off + 4096);
    snprintf(dir, sizeof dir, "%s/damaged", fx->dir);
    assert_int_equal(mkdir(dir, 0700), 0);

    /* Whatever the damage, only exact original messages come back. */
    for (k = 0; k < ROUNDS; k++) {
        struct spool_scan_stats st;

        memcpy(seg, orig, end_off);
        memset(seg + end_off, 0, 4096);
        len = end_off + 4096;
        for (j = 0; j < 1 + k % 4; j++) {
            size_t at = (size_t)rand_r(&seed) % len;

            seg[at] ^= (unsigned char)(1 + rand_r(&seed) % 255);
        }
        if (k % 5 == 0)
            len = 56 + rand_r(&seed) % (end_off - 56);
        seg_write(dir, name, seg, len);
        found_free(&fx->found);
        assert_int_equal(spool_scan(dir, found_collect, &fx->found, &st), 0);
        assert_true(fx->found.n <= N);
        for (i = 0; i < fx->found.n; i++) {
            for (j = 0; j < N; j++) {
                if (strcmp(fx->found.v[i].id, v[j]->id) == 0)
                    break;
            }
            assert_true(j < N);
            check_found(&fx->found, v[j]);
        }
    }
    free(seg);
    free(orig);
    test_msgs_free(v, N);
}


/* append_mark - write a DONE record at the end of the current segment */
static void
append_mark(struct fixture *fx, const char *id, uint32_t rcpt)
{
    unsigned char *blk;
    size_t n;

    /* As a batch would: one whole, aligned block (the fd is O_DIRECT). */
    assert_true(spool_idle(&fx->sp));
    assert_int_equal(fx->sp.seg_off % SPOOL_REC_BLOCK, 0);
    assert_int_equal(posix_memalign((void **)&blk, SPOOL_REC_BLOCK,
                                    SPOOL_REC_BLOCK), 0);
    n = spool_rec_mark_encode(blk, 128, SPOOL_REC_DONE, id, rcpt,
                              fx->sp.seg_salt);
    assert_true(n > 0);
    assert_int_equal(n % SPOOL_REC_ALIGN, 0);
    assert_int_equal(spool_rec_pad_bytes(n), SPOOL_REC_BLOCK - n);
    spool_rec_pad_encode(blk + n, SPOOL_REC_BLOCK - n, fx->sp.seg_salt);
    assert_int_equal(pwrite(fx->sp.seg_fd, blk, SPOOL_REC_BLOCK,
                            (off_t)fx->sp.seg_off), SPOOL_REC_BLOCK);
    assert_int_equal(fdatasync(fx->sp.seg_fd), 0);
    fx->sp.seg_off += SPOOL_REC_BLOCK;
    free(blk);
}


static void
test_done_record(void **state)
{
    struct fixture *fx = *state;
    struct test_msg *v[3];
    const struct found_copy *c;
    size_t i;

    fx_open(fx, 1 << 20);
    for (i = 0; i < ARRAY_SIZE(v); i++)
        v[i] = test_msg_make(fx, (unsigned)i, 300);
    assert_int_equal(v[1]->m.rcpt_count, 2);
    fx_commit_all(fx, v, ARRAY_SIZE(v), 3);
    append_mark(fx, v[0]->id, SPOOL_RCPT_ALL);
    append_mark(fx, v[1]->id, 0);
    /* A message committed after the marks still works. */
    fx_close(fx);

    fx_open(fx, 1 << 20);
    assert_int_equal(fx->found.n, 2);
    assert_null(found_get(&fx->found, v[0]->id));
    c = found_get(&fx->found, v[1]->id);
    assert_non_null(c);
    assert_non_null(c->rcpt_done);
    assert_int_equal(c->rcpt_done[0], 1);
    assert_int_equal(c->rcpt_done[1], 0);
    c = found_get(&fx->found, v[2]->id);
    assert_non_null(c);
    assert_null(c->rcpt_done);
    assert_int_equal(fx->sp.recovered.messages, 3);
    assert_int_equal(fx->sp.recovered.live, 2);

    /* The last recipient, marked in a later segment. */
    append_mark(fx, v[1]->id, 1);
    fx_close(fx);
    fx_open(fx, 1 << 20);
    assert_int_equal(fx->found.n, 1);
    check_found(&fx->found, v[2]);
    test_msgs_free(v, ARRAY_SIZE(v));
}


static void
test_big_message(void **state)
{
    struct fixture *fx = *state;
    struct test_msg *v[3];
    char path[512];
    struct stat sb;
    size_t i;

    fx_open(fx, 1 << 20);
    v[0] = test_msg_make(fx, 0, 5000);
    v[1] = test_msg_make(fx, 1, 3 << 20);
    v[2] = test_msg_make(fx, 2, 5000);
    fx_commit_all(fx, v, 3, 3);
    for (i = 0; i < 3; i++)
        assert_int_equal(v[i]->res, 0);
    fx_close(fx);

    fx_open(fx, 1 << 20);
    assert_int_equal(fx->found.n, 3);
    for (i = 0; i < 3; i++)
        check_found(&fx->found, v[i]);
    /* The big one got a segment of its own, larger than segment_bytes. */
    fx_seg_path(fx, found_get(&fx->found, v[1]->id)->segment, path,
                sizeof path);
    assert_int_equal(stat(path, &sb), 0);
    assert_true(sb.st_size > 3 << 20);
    /* Zeroed in several writes of 1 MiB. */
    assert_int_equal(seg_unwritten(path), 0);
    test_msgs_free(v, 3);
}


static void
test_big_message_grows_next(void **state)
{
    struct fixture *fx = *state;
    struct test_msg *v[16];
    const struct found_copy *big;
    char path[512];
    struct stat sb;
    size_t i, n = 0;

    /* Past half full the next segment is made ahead, at the usual size. */
    fx_open(fx, 64 << 10);
    while (fx->sp.seg_off <= (32 << 10)) {
        assert_true(n < ARRAY_SIZE(v) - 1);
        v[n] = test_msg_make(fx, (unsigned)n, 2000);
        fx_commit_all(fx, v + n, 1, 1);
        n++;
    }
    assert_int_equal(fx->sp.seg_seq, 1);
    /* A message it cannot hold: the made segment grows, zeroed too. */
    v[n] = test_msg_make(fx, (unsigned)n, 200 << 10);
    fx_commit_all(fx, v + n, 1, 1);
    assert_int_equal(v[n]->res, 0);
    assert_int_equal(fx->sp.seg_seq, 2);
    fx_close(fx);

    fx_open(fx, 64 << 10);
    assert_int_equal(fx->found.n, n + 1);
    for (i = 0; i <= n; i++)
        check_found(&fx->found, v[i]);
    big = found_get(&fx->found, v[n]->id);
    assert_int_equal(big->offset, SPOOL_REC_BLOCK);
    fx_seg_path(fx, big->segment, path, sizeof path);
    assert_int_equal(stat(path, &sb), 0);
    assert_true(sb.st_size > 200 << 10);
    assert_int_equal(seg_unwritten(path), 0);
    test_msgs_free(v, n + 1);
}


static void
test_segment_roll(void **state)
{
    struct fixture *fx = *state;
    enum { N = 400 };
    struct test_msg **v = xcalloc(N, sizeof *v);
    char path[512], name[64];
    size_t i;

    fx_open(fx, 64 << 10);
    for (i = 0; i < N; i++)
        v[i] = test_msg_make(fx, (unsigned)i, 1500 + (i % 5) * 200);
    fx_commit_all(fx, v, N, 25);
    for (i = 0; i < N; i++)
        assert_int_equal(v[i]->res, 0);
    /* Batches overlap the queue: far fewer syncs than messages. */
    assert_true(fx->sp.fdatasyncs < N / 4);
    assert_int_equal(fx->sp.commits, N);
    /* Segments made on the ring are zeroed as well. */
    snprintf(name, sizeof name, "seg-%016llx.log",
             (unsigned long long)fx->sp.seg_seq);
    fx_seg_path(fx, name, path, sizeof path);
    assert_int_equal(seg_unwritten(path), 0);
    fx_close(fx);
    assert_true(count_segments(fx->shard) >= 8);

    fx_open(fx, 64 << 10);
    assert_int_equal(fx->found.n, N);
    for (i = 0; i < N; i++)
        check_found(&fx->found, v[i]);
    assert_true(fx->sp.recovered.segments >= 8);
    test_msgs_free(v, N);
    free(v);
}


/* run_until_recovered - the probe runs every second */
static void
run_until_recovered(struct fixture *fx)
{
    uint64_t start = now_ms();

    while (spool_failed(&fx->sp) != 0 && now_ms() - start < 5000)
        loop_run_once(&fx->lp, 100);
    assert_int_equal(spool_failed(&fx->sp), 0);
}


static void
test_write_failure(void **state)
{
    struct fixture *fx = *state;
    struct test_msg *v[4];
    char path[512], name[64];
    size_t i;
    int ro;

    fx_open(fx, 1 << 20);
    for (i = 0; i < ARRAY_SIZE(v); i++)
        v[i] = test_msg_make(fx, (unsigned)i, 800);
    fx_commit_all(fx, v, 1, 1);
    assert_int_equal(v[0]->res, 0);

    /* Writes to the segment now fail with EBADF. */
    snprintf(name, sizeof name, "seg-%016llx.log",
             (unsigned long long)fx->sp.seg_seq);
    fx_seg_path(fx, name, path, sizeof path);
    ro = open(path, O_RDONLY | O_CLOEXEC);
    assert_true(ro >= 0);
    assert_true(dup2(ro, fx->sp.seg_fd) >= 0);
    close(ro);
    fx_commit_all(fx, v + 1, 1, 1);
    assert_int_equal(v[1]->res, -EBADF);
    assert_int_equal(spool_failed(&fx->sp), -EBADF);
    /* While failed, commits fail at the next flush. */
    fx_commit_all(fx, v + 2, 1, 1);
    assert_int_equal(v[2]->res, -EBADF);
    assert_true(log_contains(fx, "writing segment"));

    run_until_recovered(fx);
    assert_int_not_equal(fx->sp.seg_fd, -1);
    fx_commit_all(fx, v + 3, 1, 1);
    assert_int_equal(v[3]->res, 0);
    fx_close(fx);

    fx_open(fx, 1 << 20);
    assert_int_equal(fx->found.n, 2);
    check_found(&fx->found, v[0]);
    check_found(&fx->found, v[3]);
    test_msgs_free(v, ARRAY_SIZE(v));
}


/* Marks made by spool_mark() are durable and honoured by recovery. */
static void
test_marks_durable(void **state)
{
    struct fixture *fx = *state;
    struct test_msg *v[4];
    struct test_mark mk[4];
    const struct found_copy *c;
    static const uint32_t one[] = { 1 }, zero_two[] = { 0, 2 },
                          zero[] = { 0 };
    size_t i;

    fx_open(fx, 1 << 20);
    for (i = 0; i < ARRAY_SIZE(v); i++)
        v[i] = test_msg_make(fx, (unsigned)i, 500);
    assert_int_equal(v[2]->m.rcpt_count, 3);
    fx_commit_all(fx, v, ARRAY_SIZE(v), 4);
    test_mark_make(&mk[0], v[0], NULL, 0);
    test_mark_make(&mk[1], v[1], one, 1);
    test_mark_make(&mk[2], v[2], zero_two, 2);
    for (i = 0; i < 3; i++)
        spool_mark(&fx->sp, &mk[i].mk);
    /* Nothing is acknowledged before the write. */
    for (i = 0; i < 3; i++)
        assert_int_equal(mk[i].done_calls, 0);
    assert_false(spool_idle(&fx->sp));
    fx_run_until_idle(fx);
    for (i = 0; i < 3; i++) {
        assert_int_equal(mk[i].done_calls, 1);
        assert_int_equal(mk[i].res, 0);
    }
    assert_int_equal(fx->sp.marks, 3);
    fx_close(fx);

    fx_open(fx, 1 << 20);
    assert_int_equal(fx->found.n, 3);
    assert_null(found_get(&fx->found, v[0]->id));
    c = found_get(&fx->found, v[1]->id);
    assert_non_null(c);
    assert_non_null(c->rcpt_done);
    assert_int_equal(c->rcpt_done[0], 0);
    assert_int_equal(c->rcpt_done[1], 1);
    c = found_get(&fx->found, v[2]->id);
    assert_non_null(c);
    assert_non_null(c->rcpt_done);
    assert_int_equal(c->rcpt_done[0], 1);
    assert_int_equal(c->rcpt_done[1], 0);
    assert_int_equal(c->rcpt_done[2], 1);
    check_found(&fx->found, v[3]);
    assert_null(found_get(&fx->found, v[3]->id)->rcpt_done);

    /* The rest, from the new segment: only v[3] stays live. */
    test_mark_make(&mk[0], v[1], zero, 1);
    test_mark_make(&mk[1], v[2], one, 1);
    spool_mark(&fx->sp, &mk[0].mk);
    spool_mark(&fx->sp, &mk[1].mk);
    fx_close(fx);
    assert_int_equal(mk[0].res, 0);
    assert_int_equal(mk[1].res, 0);
    fx_open(fx, 1 << 20);
    assert_int_equal(fx->found.n, 1);
    check_found(&fx->found, v[3]);
    test_msgs_free(v, ARRAY_SIZE(v));
}


/* DEFER records: recovery gives back, per recipient group, the record
 * with the highest attempt count; a message without any has none. */
static void
test_defer_records(void **state)
{
    struct fixture *fx = *state;
    struct test_msg *v[3];
    struct test_mark mk[6];
    const struct found_copy *c;
    static const struct {
        unsigned attempt, code;
        uint32_t rcpt;
        uint64_t due;
        const char *enhanced, *text, *host;
    } d[] = {
        { 1, 451, 0, 1000, "4.7.1", "greylisted", "mx1.dest.test" },
        { 3, 421, 0, 3000, "4.4.2", "closing", "mx2.dest.test" },
        { 2, 0, 0, 2000, "", "connection refused", "" },
        { 1, 452, 2, 5000, "4.2.2", "mailbox full", "mx.other.test" },
        { 9, 451, 7, 9000, "4.0.0", "no such rcpt index", "x" },
    };
    unsigned k;
    size_t i;

    fx_open(fx, 1 << 20);
    for (i = 0; i < ARRAY_SIZE(v); i++)
        v[i] = test_msg_make(fx, (unsigned)i, 300);
    assert_int_equal(v[2]->m.rcpt_count, 3);
    fx_commit_all(fx, v, ARRAY_SIZE(v), 3);
    /* Out of order on purpose: the highest count wins, not the last. */
    for (i = 0; i < ARRAY_SIZE(d); i++) {
        test_mark_make(&mk[i], v[2], NULL, 0);
        mk[i].mk.attempt = d[i].attempt;
        mk[i].mk.last_code = d[i].code;
        mk[i].mk.defer_rcpt = d[i].rcpt;
        mk[i].mk.due_unix_ms = d[i].due;
        mk[i].mk.last_enhanced = d[i].enhanced;
        mk[i].mk.last_text = d[i].text;
        mk[i].mk.last_host = d[i].host;
        spool_mark(&fx->sp, &mk[i].mk);
    }
    fx_run_until_idle(fx);
    for (i = 0; i < ARRAY_SIZE(d); i++) {
        assert_int_equal(mk[i].done_calls, 1);
        assert_int_equal(mk[i].res, 0);
    }
    fx_close(fx);

    fx_open(fx, 1 << 20);
    assert_int_equal(fx->found.n, 3);
    c = found_get(&fx->found, v[2]->id);
    assert_non_null(c);
    assert_null(c->rcpt_done);          /* a deferral is not a DONE */
    /* rcpt 7 does not exist: that record is ignored. */
    assert_int_equal(c->defer_count, 2);
    for (k = 0; k < c->defer_count; k++) {
        if (c->defers[k].rcpt == 0) {
            assert_int_equal(c->defers[k].attempts, 3);
            assert_int_equal(c->defers[k].last_code, 421);
            assert_int_equal(c->defers[k].due, 3000);
            assert_string_equal(c->defers[k].enhanced, "4.4.2");
            assert_string_equal(c->defers[k].text, "closing");
            assert_string_equal(c->defers[k].host, "mx2.dest.test");
        } else {
            assert_int_equal(c->defers[k].rcpt, 2);
            assert_int_equal(c->defers[k].attempts, 1);
            assert_int_equal(c->defers[k].due, 5000);
            assert_string_equal(c->defers[k].text, "mailbox full");
        }
    }
    c = found_get(&fx->found, v[0]->id);
    assert_non_null(c);
    assert_int_equal(c->defer_count, 0);

    /* A DONE after the deferrals still retires the message. */
    test_mark_make(&mk[5], v[2], NULL, 0);
    spool_mark(&fx->sp, &mk[5].mk);
    fx_close(fx);
    assert_int_equal(mk[5].res, 0);
    fx_open(fx, 1 << 20);
    assert_int_equal(fx->found.n, 2);
    assert_null(found_get(&fx->found, v[2]->id));
    test_msgs_free(v, ARRAY_SIZE(v));
}


/* Messages and marks queued in one turn share one durable write. */
static void
test_marks_mixed_batch(void **state)
{
    struct fixture *fx = *state;
    struct test_msg *v[6];
    struct test_mark mk[3];
    uint64_t syncs;
    size_t i;

    fx_open(fx, 1 << 20);
    for (i = 0; i < ARRAY_SIZE(v); i++)
        v[i] = test_msg_make(fx, (unsigned)i, 700 + i);
    fx_commit_all(fx, v, 3, 3);
    syncs = fx->sp.fdatasyncs;
    /* One turn: three new messages and marks for the three old ones. */
    for (i = 0; i < 3; i++) {
        spool_commit(&fx->sp, &v[3 + i]->m);
        test_mark_make(&mk[i], v[i], NULL, 0);
        spool_mark(&fx->sp, &mk[i].mk);
    }
    fx_run_until_idle(fx);
    assert_int_equal(fx->sp.fdatasyncs, syncs + 1);
    for (i = 0; i < 3; i++) {
        assert_int_equal(v[3 + i]->done_calls, 1);
        assert_int_equal(v[3 + i]->res, 0);
        assert_int_equal(mk[i].done_calls, 1);
        assert_int_equal(mk[i].res, 0);
    }
    assert_int_equal(fx->sp.commits, 6);
    assert_int_equal(fx->sp.marks, 3);
    fx_close(fx);

    fx_open(fx, 1 << 20);
    assert_int_equal(fx->found.n, 3);
    for (i = 0; i < 3; i++) {
        assert_null(found_get(&fx->found, v[i]->id));
        check_found(&fx->found, v[3 + i]);
    }
    test_msgs_free(v, ARRAY_SIZE(v));
}


/* A failed spool refuses marks as it refuses messages, once each. */
static void
test_marks_refused_when_failed(void **state)
{
    struct fixture *fx = *state;
    struct test_msg *v[2];
    struct test_mark mk[2];
    char path[512], name[64];
    int ro;

    fx_open(fx, 1 << 20);
    v[0] = test_msg_make(fx, 0, 600);
    v[1] = test_msg_make(fx, 1, 600);
    fx_commit_all(fx, v, 2, 2);
    snprintf(name, sizeof name, "seg-%016llx.log",
             (unsigned long long)fx->sp.seg_seq);
    fx_seg_path(fx, name, path, sizeof path);
    ro = open(path, O_RDONLY | O_CLOEXEC);
    assert_true(ro >= 0);
    assert_true(dup2(ro, fx->sp.seg_fd) >= 0);
    close(ro);
    test_mark_make(&mk[0], v[0], NULL, 0);
    spool_mark(&fx->sp, &mk[0].mk);
    fx_run_until_idle(fx);
    assert_int_equal(mk[0].done_calls, 1);
    assert_int_equal(mk[0].res, -EBADF);
    /* While failed, a mark fails at the next flush. */
    test_mark_make(&mk[1], v[1], NULL, 0);
    spool_mark(&fx->sp, &mk[1].mk);
    fx_run_until_idle(fx);
    assert_int_equal(mk[1].done_calls, 1);
    assert_int_equal(mk[1].res, -EBADF);

    /* Marked again once the spool works: durable. */
    run_until_recovered(fx);
    test_mark_make(&mk[0], v[0], NULL, 0);
    spool_mark(&fx->sp, &mk[0].mk);
    fx_run_until_idle(fx);
    assert_int_equal(mk[0].res, 0);
    fx_close(fx);
    fx_open(fx, 1 << 20);
    assert_int_equal(fx->found.n, 1);
    check_found(&fx->found, v[1]);
    test_msgs_free(v, ARRAY_SIZE(v));
}


/* seg_file_exists - is segment seq still on disk? */
static int
seg_file_exists(const struct fixture *fx, uint64_t seq)
{
    char name[64], path[512];

    snprintf(name, sizeof name, "seg-%016llx.log", (unsigned long long)seq);
    fx_seg_path(fx, name, path, sizeof path);
    return access(path, F_OK) == 0;
}


/* mark_all_release - mark v[i] done, wait, release its segment */
static void
mark_all_release(struct fixture *fx, struct test_msg **v, size_t n)
{
    struct test_mark *mk = xcalloc(n, sizeof *mk);
    size_t i;

    for (i = 0; i < n; i++) {
        test_mark_make(&mk[i], v[i], NULL, 0);
        spool_mark(&fx->sp, &mk[i].mk);
    }
    fx_run_until_idle(fx);
    for (i = 0; i < n; i++) {
        assert_int_equal(mk[i].res, 0);
        spool_release(&fx->sp, v[i]->m.seg_seq);
    }
    fx_run_until_idle(fx);
    free(mk);
}


/* Segments go once all their messages are released, oldest first. */
static void
test_segments_reclaimed(void **state)
{
    struct fixture *fx = *state;
    enum { N = 120 };
    struct test_msg **v = xcalloc(N, sizeof *v), **a, **b;
    uint64_t s0, s1;
    size_t i, na = 0, nb = 0, segs;

    fx_open(fx, 64 << 10);
    for (i = 0; i < N; i++)
        v[i] = test_msg_make(fx, (unsigned)i, 1500);
    fx_commit_all(fx, v, N, 10);
    s0 = v[0]->m.seg_seq;
    assert_true(v[N - 1]->m.seg_seq >= s0 + 2);
    s1 = s0 + 1;
    a = xcalloc(N, sizeof *a);
    b = xcalloc(N, sizeof *b);
    for (i = 0; i < N; i++) {
        if (v[i]->m.seg_seq == s0)
            a[na++] = v[i];
        else if (v[i]->m.seg_seq == s1)
            b[nb++] = v[i];
    }
    assert_true(na >= 2);
    assert_true(nb >= 1);
    segs = count_segments(fx->shard);

    /* All of s1 and all but one of s0: s0 holds s1 back. */
    mark_all_release(fx, b, nb);
    mark_all_release(fx, a, na - 1);
    assert_true(seg_file_exists(fx, s0));
    assert_true(seg_file_exists(fx, s1));
    assert_int_equal(fx->sp.segments_reclaimed, 0);

    /* The last one of s0: both go, on the ring. */
    mark_all_release(fx, a + na - 1, 1);
    assert_false(seg_file_exists(fx, s0));
    assert_false(seg_file_exists(fx, s1));
    assert_int_equal(fx->sp.segments_reclaimed, 2);
    assert_int_equal(count_segments(fx->shard), segs - 2);
    fx_close(fx);

    /* What is left recovers whole; the rest is gone for good. */
    fx_open(fx, 64 << 10);
    assert_int_equal(fx->found.n, N - na - nb);
    for (i = 0; i < N; i++) {
        if (v[i]->m.seg_seq > s1)
            check_found(&fx->found, v[i]);
        else
            assert_null(found_get(&fx->found, v[i]->id));
    }
    free(a);
    free(b);
    test_msgs_free(v, N);
    free(v);
}


/* At open, the oldest segments with nothing live go at once. */
static void
test_segments_reclaimed_at_open(void **state)
{
    struct fixture *fx = *state;
    struct test_msg *v[2];
    struct test_mark mk[1];
    uint64_t s0;

    fx_open(fx, 1 << 20);
    v[0] = test_msg_make(fx, 0, 500);
    v[1] = test_msg_make(fx, 1, 500);
    fx_commit_all(fx, v, 1, 1);
    s0 = v[0]->m.seg_seq;
    test_mark_make(&mk[0], v[0], NULL, 0);
    spool_mark(&fx->sp, &mk[0].mk);
    fx_close(fx);
    assert_true(seg_file_exists(fx, s0));

    /* Reopened: s0 has nothing live; the new segment takes v[1]. */
    fx_open(fx, 1 << 20);
    assert_int_equal(fx->found.n, 0);
    fx_run_until_idle(fx);
    assert_false(seg_file_exists(fx, s0));
    fx_commit_all(fx, v + 1, 1, 1);
    fx_close(fx);
    fx_open(fx, 1 << 20);
    assert_int_equal(fx->found.n, 1);
    check_found(&fx->found, v[1]);
    test_msgs_free(v, 2);
}


static void
test_enospc(void **state)
{
    struct fixture *fx = *state;
    enum { N = 60 };
    struct test_msg *v[N];
    char filler[512];
    size_t i, ok = 0, nospc = 0;

    if (!fx_mount_tmpfs(fx))
        skip();
    fx_open(fx, 128 << 10);
    /* Leave less than one segment free. */
    fx_fill_tmpfs(fx, 64 << 10, filler, sizeof filler);

    memset(v, 0, sizeof v);
    for (i = 0; i < N; i++) {
        v[i] = test_msg_make(fx, (unsigned)i, 8 << 10);
        fx_commit_all(fx, v + i, 1, 1);
        if (v[i]->res == 0) {
            ok++;
        } else {
            assert_int_equal(v[i]->res, -ENOSPC);
            nospc++;
            break;
        }
    }
    assert_true(ok > 5);
    assert_int_equal(nospc, 1);
    assert_int_equal(spool_failed(&fx->sp), -ENOSPC);
    assert_true(log_contains(fx, "No space left on device"));

    /* Space comes back: the probe makes a segment, commits work again. */
    assert_int_equal(unlink(filler), 0);
    run_until_recovered(fx);
    assert_true(log_contains(fx, "working again"));
    v[N - 1] = test_msg_make(fx, N - 1, 8 << 10);
    fx_commit_all(fx, v + N - 1, 1, 1);
    assert_int_equal(v[N - 1]->res, 0);
    fx_close(fx);

    fx_open(fx, 128 << 10);
    assert_int_equal(fx->found.n, ok + 1);
    for (i = 0; i < ok; i++)
        check_found(&fx->found, v[i]);
    check_found(&fx->found, v[N - 1]);
    fx_close(fx);
    test_msgs_free(v, N);
}


static void
test_enospc_at_open(void **state)
{
    struct fixture *fx = *state;
    char filler[512];

    /* No room for the first segment: spool_open() says so, leaves none. */
    if (!fx_mount_tmpfs(fx))
        skip();
    assert_int_equal(mkdir(fx->shard, 0750), 0);
    fx_fill_tmpfs(fx, 64 << 10, filler, sizeof filler);
    found_free(&fx->found);
    assert_int_equal(spool_open(&fx->sp, &fx->lp, fx->shard, 0, 128 << 10,
                                found_collect, &fx->found), -ENOSPC);
    assert_int_equal(count_segments(fx->shard), 0);
    assert_int_equal(unlink(filler), 0);
    fx_open(fx, 128 << 10);
    assert_int_equal(count_segments(fx->shard), 1);
    fx_close(fx);
}


static void
test_scan_counts(void **state)
{
    struct fixture *fx = *state;
    struct spool_scan_stats st;
    struct test_msg *v[3];
    char path[512], name[64], junk[64];
    struct stat sb;
    uint64_t off;
    int fd;

    assert_int_equal(spool_scan("/nonexistent/spool", NULL, NULL, &st),
                     -ENOENT);
    corrupt_middle(fx, v, &off, name);
    /* Add garbage at the very end: a torn tail after the corruption. */
    fx_seg_path(fx, name, path, sizeof path);
    fd = open(path, O_WRONLY | O_APPEND);
    assert_true(fd >= 0);
    memset(junk, 0x5a, sizeof junk);
    assert_int_equal(write(fd, junk, sizeof junk), sizeof junk);
    close(fd);

    found_free(&fx->found);
    assert_int_equal(spool_scan(fx->shard, found_collect, &fx->found, &st),
                     0);
    assert_int_equal(st.segments, 1);
    assert_int_equal(st.messages, 2);
    assert_int_equal(st.live, 2);
    assert_int_equal(st.corrupt, 1);
    assert_int_equal(st.torn, 1);
    assert_int_equal(st.bytes, 4000);
    assert_int_equal(fx->found.n, 2);
    /* spool_scan changes nothing on disk. */
    snprintf(path, sizeof path, "%s/corrupt", fx->shard);
    assert_int_equal(stat(path, &sb), -1);
    test_msgs_free(v, 3);
}


int
main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_crc32c_vector),
        cmocka_unit_test_setup_teardown(test_group_commit_one_fdatasync,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_policy_fields, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_recover_exact, setup, teardown),
        cmocka_unit_test_setup_teardown(test_ids_unique, setup, teardown),
        cmocka_unit_test_setup_teardown(test_empty_segments_reclaimed, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_torn_tail, setup, teardown),
        cmocka_unit_test_setup_teardown(test_torn_msg_without_end, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_garbage_tail, setup, teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_middle, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_corrupt_end_sets_msg_aside,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_zero_hole_in_middle, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_bad_segment_header, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_forged_record_in_body, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_random_damage, setup, teardown),
        cmocka_unit_test_setup_teardown(test_done_record, setup, teardown),
        cmocka_unit_test_setup_teardown(test_marks_durable, setup, teardown),
        cmocka_unit_test_setup_teardown(test_defer_records, setup, teardown),
        cmocka_unit_test_setup_teardown(test_marks_mixed_batch, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_marks_refused_when_failed,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_segments_reclaimed, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_segments_reclaimed_at_open,
                                        setup, teardown),
        cmocka_unit_test_setup_teardown(test_big_message, setup, teardown),
        cmocka_unit_test_setup_teardown(test_big_message_grows_next, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_segment_roll, setup, teardown),
        cmocka_unit_test_setup_teardown(test_write_failure, setup, teardown),
        cmocka_unit_test_setup_teardown(test_enospc, setup, teardown),
        cmocka_unit_test_setup_teardown(test_scan_counts, setup, teardown),
        cmocka_unit_test_setup_teardown(test_padded_batches, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_torn_batch_zeroed, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_torn_batch_cut, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_buffered_fallback, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_old_format_segment, setup,
                                        teardown),
        cmocka_unit_test_setup_teardown(test_enospc_at_open, setup,
                                        teardown),
    };

    return cmocka_run_group_tests(tests, NULL, NULL);
}
