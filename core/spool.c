/*
 * spool - see spool.h; the record format is in spool_rec.h
 *
 * The write path is a short pipeline:
 *
 *   spool_commit() queues m; spool_flush() (the before-wait hook) encodes
 *   queued messages into the filling batch (spool_fill) and, when no batch
 *   is in flight, pads it to whole blocks and submits it as one O_DIRECT
 *   write with RWF_DSYNC, or in the buffered fallback as one write linked
 *   to one fdatasync (spool_submit); spool_batch_done() runs every
 *   message's done().
 *
 * Encoding goes on while the previous batch is on the disk, so when it
 * completes the next one is submitted without copying first: that is why
 * there are two batch buffers (block aligned, for O_DIRECT). A batch never
 * spans segments. When the queue head does not fit the current segment,
 * the batch targets the next one, which the spool_prep machine makes on
 * the ring (openat; fallocate; zero writes, one at a time ahead of need,
 * SPOOL_ZERO_DEPTH in flight once a batch waits; then SEGHDR block ->
 * fsync -> fsync(dir), linked), normally started when the current segment
 * passes half full. spool_open() runs the same machine
 * on a private ring for its first segment. A failed spool probes with it
 * too: a prepared segment proves the disk takes writes again.
 *
 * Zeroing is what makes the commit cheap: an O_DIRECT write into unwritten
 * (fallocated) extents must convert them, a metadata change that sends a
 * sub-block write to an io-wq thread and makes RWF_DSYNC sync the inode;
 * into written zeros it is a plain overwrite plus a cache flush.
 * FALLOC_FL_ZERO_RANGE only makes unwritten extents again, so the zeros
 * are real writes.
 *
 * Recovery (spool_scan_*) maps every segment read-only and makes two
 * passes: the first checks every record and indexes committed messages and
 * DONE marks (a mark may live in any later segment), the second reports the
 * messages that are still live.
 */
#include "spool.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "crc32c.h"
#include "log.h"
#include "spool_rec.h"
#include "util.h"

#define SPOOL_SEGHDR_BYTES \
    (SPOOL_REC_HDR_BYTES + SPOOL_SEGHDR_PAYLOAD_BYTES)
/* The SEGHDR has block 0 to itself; batches start after it. */
#define SPOOL_DATA_OFF SPOOL_REC_BLOCK
/*
 * Zeroing a new segment. When a batch waits for it (or at boot), 4 writes
 * of 1 MiB in flight, the fastest. Ahead of need it trickles, one write of
 * 256 KiB at a time: a commit's cache flush then never queues behind
 * megabytes of zeros (4 x 1 MiB gave every rate-limited `bench/run
 * latency` level a p99.9 of about 25 ms; trickling, 1.4 to 3 ms).
 */
#define SPOOL_ZERO_BYTES ((size_t)1 << 20)
#define SPOOL_ZERO_DEPTH 4
#define SPOOL_ZERO_TRICKLE_BYTES ((size_t)256 << 10)
#define SPOOL_SEG_NAME_MAX 32           /* "seg-" 16 hex ".log" NUL */
#define SPOOL_CORRUPT_NAME_MAX 64
/* A batch stops taking messages past this, so one fdatasync stays short. */
#define SPOOL_BATCH_SOFT_BYTES ((size_t)4 << 20)
#define SPOOL_BATCH_INIT_BYTES ((size_t)256 << 10)
/* A buffer grown past this for one huge message is given back after it. */
#define SPOOL_BATCH_KEEP_BYTES ((size_t)16 << 20)
#define SPOOL_PROBE_SEC 1
/* A DEFER with nothing to ride along waits this long (the shard's tick
 * is 250 ms, so at most about half a second). */
#define SPOOL_LAZY_MS 200
#define SPOOL_SCAN_NONE UINT64_MAX

_Static_assert(SPOOL_SEGHDR_BYTES % SPOOL_REC_ALIGN == 0,
               "records after SEGHDR must stay aligned");
_Static_assert(SPOOL_BATCH_INIT_BYTES % SPOOL_REC_BLOCK == 0 &&
               SPOOL_ZERO_BYTES % SPOOL_REC_BLOCK == 0 &&
               SPOOL_ZERO_TRICKLE_BYTES % SPOOL_REC_BLOCK == 0,
               "buffers and zero writes are whole blocks");

int spool_force_buffered;

struct spool_batch {
    struct spool *sp;
    unsigned char *buf;
    size_t len, cap;
    struct spool_msg *head, **tail;
    struct spool_mark *mark_head, **mark_tail;
    unsigned count;              /* messages and marks: each has a done() */
    unsigned mark_count;         /* of which marks */
    int to_next;                 /* encoded for the next segment */
    uint64_t seq;                /* of the segment it is encoded for */
    uint64_t off;                /* segment offset of buf[0] */
    uint32_t salt;
    unsigned pending;            /* CQEs still to come (write, fdatasync) */
    int direct;                  /* RWF_DSYNC, no fdatasync */
    int write_res, sync_res;
    struct op write_op, sync_op;
    uint64_t submit_us;          /* for the commit latency histogram */
};

enum spool_prep_state {
    SPOOL_PREP_IDLE,             /* no next segment */
    SPOOL_PREP_OPEN,             /* openat in flight */
    SPOOL_PREP_ALLOC,            /* fallocate in flight */
    SPOOL_PREP_ZERO,             /* zero writes in flight */
    SPOOL_PREP_SYNC,             /* [SEGHDR block,] fsync[, fsync(dir)] */
    SPOOL_PREP_READY,
};

struct spool_prep_step {
    struct op op;
    struct spool_prep *p;
    int res;
    int zeroing;                 /* a zero write of this step is in flight */
    uint64_t off;                /* zero write: where, how much is left */
    size_t len;
};

struct spool_prep {
    struct spool *sp;
    enum spool_prep_state state;
    int fd;
    uint64_t seq;
    uint64_t bytes;              /* preallocated, zeroed and synced */
    uint64_t want_bytes;         /* wanted; a big message raises it */
    uint64_t alloc_bytes;        /* being allocated by the steps in flight */
    uint64_t zero_next;          /* next offset to zero */
    uint32_t salt;
    int grow;                    /* adding room, not making the segment */
    int probe;                   /* made by the failure probe */
    int boot;                    /* spool_open(): report err, no more */
    int discard;                 /* the spool failed meanwhile: drop it */
    int err;                     /* last failure (of a zero write, or of
                                    the prep: ahead prep waits for need) */
    unsigned pending, steps_used;
    struct op open_op;
    struct spool_prep_step steps[MAX(SPOOL_ZERO_DEPTH, 3)];
    char name[SPOOL_SEG_NAME_MAX];
    unsigned char *hdr;          /* block 0: SEGHDR + PAD, block aligned */
    const unsigned char *zeros;  /* SPOOL_ZERO_BYTES, read-only */
};

/* A close or unlink nobody waits for; owns its copy of the name. */
struct spool_aux {
    struct op op;
    struct spool *sp;
    char name[SPOOL_SEG_NAME_MAX];
};

/* A MSG payload taken apart; pointers into the payload. */
struct spool_msg_dec {
    int64_t received_unix;
    uint64_t body_bytes;
    uint32_t rcpt_count;
    uint32_t flags;              /* SPOOL_MSG_F_*, priority */
    const char *id, *sender, *peer;
    const char *binding, *routing_domain;   /* "" when not set */
    const unsigned char *body;
};

static void spool_prep_settle(struct spool *sp, int err);
static void spool_fail(struct spool *sp, int err, const char *what,
                       uint64_t seq);


/* spool_rand - splitmix64: segment salts, unpredictable to mail senders */
static uint64_t
spool_rand(struct spool *sp)
{
    uint64_t z = (sp->rand_state += 0x9e3779b97f4a7c15ull);

    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}


/* spool_seg_name - the file name of segment seq */
static void
spool_seg_name(char name[SPOOL_SEG_NAME_MAX], uint64_t seq)
{
    snprintf(name, SPOOL_SEG_NAME_MAX, "seg-%016" PRIx64 ".log", seq);
}


/* spool_seg_parse - seq of a segment file name; 0 if it is not one */
static int
spool_seg_parse(const char *name, uint64_t *seq)
{
    uint64_t v = 0;
    int i;

    if (strlen(name) != 24 || memcmp(name, "seg-", 4) != 0 ||
        strcmp(name + 20, ".log") != 0)
        return 0;
    for (i = 4; i < 20; i++) {
        int c = name[i];

        if (c >= '0' && c <= '9')
            v = v << 4 | (uint64_t)(c - '0');
        else if (c >= 'a' && c <= 'f')
            v = v << 4 | (uint64_t)(c - 'a' + 10);
        else
            return 0;
    }
    *seq = v;
    return 1;
}


/* spool_block_alloc - block-aligned memory for O_DIRECT; aborts if none */
static unsigned char *
spool_block_alloc(size_t bytes)
{
    void *p = NULL;
    int rc;

    ASSERT(bytes % SPOOL_REC_BLOCK == 0);
    rc = posix_memalign(&p, SPOOL_REC_BLOCK, bytes);
    if (rc != 0)
        panic("posix_memalign(%zu): %s", bytes, strerror(rc));
    return p;
}


/* spool_seghdr_encode - block 0: the SEGHDR (header salt 0), then PAD */
static void
spool_seghdr_encode(unsigned char *dst, unsigned shard_id, uint32_t salt,
                    uint64_t seq, uint64_t bytes)
{
    unsigned char *p = dst + SPOOL_REC_HDR_BYTES;

    spool_rec_put32(p, shard_id);
    spool_rec_put32(p + 4, salt);
    spool_rec_put64(p + 8, seq);
    spool_rec_put64(p + 16, (uint64_t)time(NULL));
    spool_rec_put64(p + 24, bytes);
    spool_rec_hdr_put(dst, SPOOL_REC_SEGHDR, SPOOL_SEGHDR_PAYLOAD_BYTES,
                      crc32c(0, p, SPOOL_SEGHDR_PAYLOAD_BYTES), 0);
    spool_rec_pad_encode(dst + SPOOL_SEGHDR_BYTES,
                         SPOOL_DATA_OFF - SPOOL_SEGHDR_BYTES, salt);
}


/* spool_put_str - append a str field; returns the byte after it */
static unsigned char *
spool_put_str(unsigned char *p, const char *s, size_t len)
{
    ASSERT(len <= UINT32_MAX);
    spool_rec_put32(p, (uint32_t)len);
    memcpy(p + 4, s, len);
    p[4 + len] = '\0';
    return p + 4 + len + 1;
}


/* spool_get_str - take a str field from [*pp, end); 0 or -EBADMSG */
static int
spool_get_str(const unsigned char **pp, const unsigned char *end,
              const char **s)
{
    const unsigned char *p = *pp;
    uint32_t len;

    if (end - p < 5)
        return -EBADMSG;
    len = spool_rec_get32(p);
    if ((uint64_t)(end - p - 4) < (uint64_t)len + 1 || p[4 + len] != '\0' ||
        memchr(p + 4, '\0', len) != NULL)
        return -EBADMSG;
    *s = (const char *)p + 4;
    *pp = p + 4 + len + 1;
    return 0;
}


/* spool_msg_has_policy - does m carry what policy chose (MSG flags)? */
static int
spool_msg_has_policy(const struct spool_msg *m)
{
    return m->binding != NULL || m->routing_domain != NULL ||
           m->priority != 0;
}


/* spool_msg_meta_bytes - MSG payload bytes before the body */
static uint64_t
spool_msg_meta_bytes(const struct spool_msg *m)
{
    uint64_t n = SPOOL_MSG_FIXED_BYTES;
    unsigned i;

    n += spool_rec_str_size(strlen(m->id));
    n += spool_rec_str_size(strlen(m->sender));
    n += spool_rec_str_size(m->peer != NULL ? strlen(m->peer) : 0);
    for (i = 0; i < m->rcpt_count; i++)
        n += spool_rec_str_size(strlen(m->rcpts[i]));
    if (spool_msg_has_policy(m)) {
        n += spool_rec_str_size(m->binding ? strlen(m->binding) : 0);
        n += spool_rec_str_size(m->routing_domain ? strlen(m->routing_domain)
                                                  : 0);
    }
    return n;
}


/* spool_end_payload_bytes - END payload bytes for an id */
static uint64_t
spool_end_payload_bytes(size_t id_len)
{
    return SPOOL_END_FIXED_BYTES + spool_rec_str_size(id_len);
}


/* spool_msg_rec_bytes - batch bytes of m: MSG and END records */
static uint64_t
spool_msg_rec_bytes(const struct spool_msg *m, uint64_t meta_bytes)
{
    return spool_rec_size(meta_bytes + m->body_bytes) +
           spool_rec_size(spool_end_payload_bytes(strlen(m->id)));
}


/* spool_msg_decode - check a MSG payload; fills rcpts when not NULL */
static int
spool_msg_decode(const unsigned char *pl, uint64_t len,
                 struct spool_msg_dec *d, const char **rcpts)
{
    const unsigned char *p, *end;
    const char *r;
    uint32_t i;

    if (len < SPOOL_MSG_FIXED_BYTES)
        return -EBADMSG;
    d->received_unix = (int64_t)spool_rec_get64(pl);
    d->body_bytes = spool_rec_get64(pl + 8);
    d->rcpt_count = spool_rec_get32(pl + 16);
    d->flags = spool_rec_get32(pl + 20);
    d->binding = d->routing_domain = "";
    if ((d->flags & ~(SPOOL_MSG_F_POLICY | SPOOL_MSG_F_PRIO_MASK)) != 0 ||
        (d->flags & SPOOL_MSG_F_PRIO_MASK) > 100)
        return -EBADMSG;
    if (d->body_bytes > len - SPOOL_MSG_FIXED_BYTES)
        return -EBADMSG;
    end = pl + (len - d->body_bytes);
    p = pl + SPOOL_MSG_FIXED_BYTES;
    if (spool_get_str(&p, end, &d->id) < 0 ||
        spool_get_str(&p, end, &d->sender) < 0 ||
        spool_get_str(&p, end, &d->peer) < 0)
        return -EBADMSG;
    if (d->id[0] == '\0' || strlen(d->id) >= SPOOL_ID_MAX)
        return -EBADMSG;
    /* Each str takes 5 bytes at least: bounds the caller's allocation. */
    if (d->rcpt_count == 0 || d->rcpt_count > (uint64_t)(end - p) / 5)
        return -EBADMSG;
    for (i = 0; i < d->rcpt_count; i++) {
        if (spool_get_str(&p, end, &r) < 0)
            return -EBADMSG;
        if (rcpts != NULL)
            rcpts[i] = r;
    }
    if ((d->flags & SPOOL_MSG_F_POLICY) &&
        (spool_get_str(&p, end, &d->binding) < 0 ||
         spool_get_str(&p, end, &d->routing_domain) < 0))
        return -EBADMSG;
    if (p != end)
        return -EBADMSG;
    d->body = end;
    return 0;
}


/* spool_rec_mark_encode - build a DONE record; 0 if cap is short */
size_t
spool_rec_mark_encode(void *dst, size_t cap, unsigned type, const char *id,
                      uint32_t rcpt, uint32_t salt)
{
    size_t id_len = strlen(id);
    uint64_t payload = SPOOL_MARK_FIXED_BYTES + spool_rec_str_size(id_len);
    uint64_t size = spool_rec_size(payload);
    unsigned char *r = dst, *p = r + SPOOL_REC_HDR_BYTES;

    ASSERT(type == SPOOL_REC_DONE);
    ASSERT(id_len > 0);
    ASSERT(id_len < SPOOL_ID_MAX);
    if (cap < size)
        return 0;
    memset(r, 0, size);
    spool_rec_put32(p, rcpt);
    spool_rec_put32(p + 4, 0);
    spool_put_str(p + SPOOL_MARK_FIXED_BYTES, id, id_len);
    spool_rec_hdr_put(r, type, payload, crc32c(0, p, payload), salt);
    return size;
}


/* spool_defer_payload_bytes - DEFER payload bytes for these strings */
static uint64_t
spool_defer_payload_bytes(size_t id_len, size_t enhanced_len,
                          size_t text_len, size_t host_len)
{
    return SPOOL_DEFER_FIXED_BYTES + spool_rec_str_size(id_len) +
           spool_rec_str_size(enhanced_len) + spool_rec_str_size(text_len) +
           spool_rec_str_size(host_len);
}


/* spool_rec_defer_bytes - the size of a DEFER record with these strings */
uint64_t
spool_rec_defer_bytes(size_t id_len, size_t enhanced_len, size_t text_len,
                      size_t host_len)
{
    return spool_rec_size(spool_defer_payload_bytes(id_len, enhanced_len,
                                                    text_len, host_len));
}


/* spool_rec_defer_encode - build a DEFER record; 0 if cap is short */
size_t
spool_rec_defer_encode(void *dst, size_t cap, const char *id,
                       uint32_t attempt, uint32_t code, uint32_t rcpt,
                       uint64_t due_unix_ms, const char *enhanced,
                       const char *text, const char *host, uint32_t salt)
{
    size_t id_len = strlen(id), el = strlen(enhanced), tl = strlen(text);
    size_t hl = strlen(host);
    uint64_t payload = spool_defer_payload_bytes(id_len, el, tl, hl);
    uint64_t size = spool_rec_size(payload);
    unsigned char *r = dst, *p = r + SPOOL_REC_HDR_BYTES, *q;

    ASSERT(id_len > 0);
    ASSERT(id_len < SPOOL_ID_MAX);
    ASSERT(attempt > 0);
    if (cap < size)
        return 0;
    memset(r, 0, size);
    spool_rec_put32(p, attempt);
    spool_rec_put32(p + 4, code);
    spool_rec_put32(p + 8, rcpt);
    spool_rec_put32(p + 12, 0);
    spool_rec_put64(p + 16, due_unix_ms);
    q = spool_put_str(p + SPOOL_DEFER_FIXED_BYTES, id, id_len);
    q = spool_put_str(q, enhanced, el);
    q = spool_put_str(q, text, tl);
    q = spool_put_str(q, host, hl);
    ASSERT(q == p + payload);
    spool_rec_hdr_put(r, SPOOL_REC_DEFER, payload, crc32c(0, p, payload),
                      salt);
    return size;
}


/* spool_rec_pad_encode - a PAD record of exactly bytes, salted */
void
spool_rec_pad_encode(void *dst, uint64_t bytes, uint32_t salt)
{
    unsigned char *r = dst, *p = r + SPOOL_REC_HDR_BYTES;
    uint64_t payload = bytes - SPOOL_REC_HDR_BYTES;

    ASSERT(bytes >= SPOOL_REC_HDR_BYTES);
    ASSERT(bytes % SPOOL_REC_ALIGN == 0);
    memset(p, 0, payload);
    spool_rec_hdr_put(r, SPOOL_REC_PAD, payload, crc32c(0, p, payload),
                      salt);
}


/* spool_done_list - run done(m, res) for a detached list of messages */
static void
spool_done_list(struct spool_msg *m, int res)
{
    while (m != NULL) {
        /* done() may release m: read the link first. */
        struct spool_msg *next = m->next;

        m->next = NULL;
        m->done(m, res);
        m = next;
    }
}


/* spool_mark_done_list - run done(mk, res) for a detached list of marks */
static void
spool_mark_done_list(struct spool_mark *mk, int res)
{
    while (mk != NULL) {
        /* done() may release mk: read the link first. */
        struct spool_mark *next = mk->next;

        mk->next = NULL;
        mk->done(mk, res);
        mk = next;
    }
}


/* spool_queue_take - detach the whole queue */
static struct spool_msg *
spool_queue_take(struct spool *sp)
{
    struct spool_msg *list = sp->queue_head;

    sp->queue_head = NULL;
    sp->queue_tail = &sp->queue_head;
    return list;
}


/* spool_mark_queue_take - detach every queued mark */
static struct spool_mark *
spool_mark_queue_take(struct spool *sp)
{
    struct spool_mark *list = sp->mark_head;

    sp->mark_head = NULL;
    sp->mark_tail = &sp->mark_head;
    return list;
}


/* spool_sq_room - make room for a linked chain: one submit must hold it */
static void
spool_sq_room(struct spool *sp, unsigned n)
{
    struct io_uring *ring = &sp->lp->ring;

    /*
     * A chain cut by a submit boundary ends there: the fdatasync would no
     * longer wait for its write.
     */
    while (io_uring_sq_space_left(ring) < n) {
        int rc = io_uring_submit(ring);

        if (rc < 0 && rc != -EBUSY && rc != -EINTR)
            panic("io_uring_submit: %s", strerror(-rc));
    }
}


/* spool_aux_done - a close or unlink finished; nothing depends on it */
static void
spool_aux_done(struct op *op, int res, uint32_t cqe_flags)
{
    struct spool_aux *a = container_of(op, struct spool_aux, op);

    ASSERT(a->sp->aux_pending > 0);
    /*
     * Failures are ignored: a close after a completed fdatasync loses
     * nothing, and a segment left undeleted holds only its header.
     */
    a->sp->aux_pending--;
    free(a);
}


/* spool_aux_new - an aux op counted by spool_idle() */
static struct spool_aux *
spool_aux_new(struct spool *sp)
{
    struct spool_aux *a = xcalloc(1, sizeof *a);

    a->op.done = spool_aux_done;
    a->sp = sp;
    sp->aux_pending++;
    return a;
}


/* spool_aux_close - close fd on the ring */
static void
spool_aux_close(struct spool *sp, int fd)
{
    struct spool_aux *a = spool_aux_new(sp);

    io_uring_prep_close(loop_sqe(sp->lp, &a->op), fd);
}


/* spool_aux_unlink - unlink a segment on the ring */
static void
spool_aux_unlink(struct spool *sp, const char *name)
{
    struct spool_aux *a = spool_aux_new(sp);

    /* The name is read at submission, later: the op owns its copy. */
    snprintf(a->name, sizeof a->name, "%s", name);
    io_uring_prep_unlinkat(loop_sqe(sp->lp, &a->op), sp->dir_fd, a->name, 0);
}


/* spool_prep_drop - forget the next segment, deleting its file */
static void
spool_prep_drop(struct spool *sp)
{
    struct spool_prep *p = sp->prep;

    if (p->fd >= 0) {
        spool_aux_close(sp, p->fd);
        spool_aux_unlink(sp, p->name);
        p->fd = -1;
    }
    p->state = SPOOL_PREP_IDLE;
    p->probe = 0;
    p->discard = 0;
}


/* spool_direct_refused - the file system refuses O_DIRECT: fall back */
static void
spool_direct_refused(struct spool *sp)
{
    ASSERT(sp->direct);
    /* Once per spool: the mode never goes back. */
    sp->direct = 0;
    log_panic("spool", "shard %u: %s refuses O_DIRECT; committing with "
              "buffered writes and fdatasync", sp->shard_id, sp->dir);
}


/* spool_prep_step - the i-th SQE of a chain, linked to the next if link */
static struct io_uring_sqe *
spool_prep_step(struct spool_prep *p, unsigned i, int link)
{
    struct io_uring_sqe *sqe;

    p->steps[i].res = 0;
    sqe = loop_sqe(p->sp->lp, &p->steps[i].op);
    if (link)
        sqe->flags |= IOSQE_IO_LINK;
    return sqe;
}


/* spool_prep_sync - SEGHDR block, fsync, fsync(dir); fsync alone to grow */
static void
spool_prep_sync(struct spool *sp)
{
    struct spool_prep *p = sp->prep;
    unsigned n = p->grow ? 1 : 3;

    p->state = SPOOL_PREP_SYNC;
    p->steps_used = n;
    p->pending = n;
    spool_sq_room(sp, n);
    if (p->grow) {
        io_uring_prep_fsync(spool_prep_step(p, 0, 0), p->fd, 0);
        return;
    }
    spool_seghdr_encode(p->hdr, sp->shard_id, p->salt, p->seq,
                        p->alloc_bytes);
    io_uring_prep_write(spool_prep_step(p, 0, 1), p->fd, p->hdr,
                        SPOOL_DATA_OFF, 0);
    /* fsync, not fdatasync: the new size and extents must be durable. */
    io_uring_prep_fsync(spool_prep_step(p, 1, 1), p->fd, 0);
    /* And the directory entry, before a 250 depends on the file. */
    io_uring_prep_fsync(spool_prep_step(p, 2, 0), sp->dir_fd, 0);
}


/* spool_prep_sync_done - every CQE of the sync chain is in */
static void
spool_prep_sync_done(struct spool_prep *p)
{
    int err = 0, canceled = 0;
    unsigned i;

    for (i = 0; i < p->steps_used; i++) {
        int r = p->steps[i].res;

        /* Step 0 of a new segment writes block 0: short is a failure. */
        if (!p->grow && i == 0 && r >= 0 && r != SPOOL_DATA_OFF)
            r = -EIO;
        if (r == -ECANCELED)
            canceled = 1;
        else if (r < 0 && err == 0)
            err = r;
    }
    if (err == 0 && canceled)
        err = -EIO;
    if (err == 0)
        p->bytes = p->alloc_bytes;
    spool_prep_settle(p->sp, err);
}


/* spool_prep_zero_write - (re)issue step s's zero write */
static void
spool_prep_zero_write(struct spool_prep *p, struct spool_prep_step *s)
{
    ASSERT(s->len > 0);
    ASSERT(s->len <= SPOOL_ZERO_BYTES);
    io_uring_prep_write(loop_sqe(p->sp->lp, &s->op), p->fd, p->zeros,
                        (unsigned)s->len, s->off);
}


/* spool_prep_urgent - a batch (or spool_open, or a stop) waits for it */
static int
spool_prep_urgent(const struct spool_prep *p)
{
    const struct spool_batch *fill = p->sp->fill;

    return p->boot || p->sp->hurry || (fill->count > 0 && fill->to_next);
}


/* spool_prep_zero_more - issue zero writes up to the depth for now */
static void
spool_prep_zero_more(struct spool_prep *p)
{
    int urgent = spool_prep_urgent(p);
    unsigned i, depth = urgent ? SPOOL_ZERO_DEPTH : 1;
    size_t chunk = urgent ? SPOOL_ZERO_BYTES : SPOOL_ZERO_TRICKLE_BYTES;

    ASSERT(p->state == SPOOL_PREP_ZERO);
    /* After a failure the writes in flight finish, and no more start. */
    if (p->err != 0 || p->discard)
        return;
    for (i = 0; i < SPOOL_ZERO_DEPTH && p->pending < depth; i++) {
        struct spool_prep_step *s = &p->steps[i];

        if (s->zeroing)
            continue;
        if (p->zero_next >= p->alloc_bytes)
            return;
        s->off = p->zero_next;
        s->len = (size_t)MIN((uint64_t)chunk, p->alloc_bytes - p->zero_next);
        p->zero_next += s->len;
        s->zeroing = 1;
        p->pending++;
        spool_prep_zero_write(p, s);
    }
}


/* spool_prep_zero - write zeros over the new room, then sync */
static void
spool_prep_zero(struct spool *sp)
{
    struct spool_prep *p = sp->prep;
    unsigned i;

    /* Block 0 of a new segment is the SEGHDR block, written after. */
    p->zero_next = p->grow ? p->bytes : SPOOL_DATA_OFF;
    p->state = SPOOL_PREP_ZERO;
    p->pending = 0;
    p->steps_used = 0;
    p->err = 0;
    for (i = 0; i < SPOOL_ZERO_DEPTH; i++)
        p->steps[i].zeroing = 0;
    spool_prep_zero_more(p);
    if (p->pending == 0)
        spool_prep_sync(sp);
}


/* spool_prep_zero_done - one zero write is in: go on, or end the phase */
static void
spool_prep_zero_done(struct spool_prep *p, struct spool_prep_step *s,
                     int res)
{
    /* A write that moved nothing would be retried for ever. */
    if (res == 0)
        res = -EIO;
    if (res < 0) {
        if (p->err == 0)
            p->err = res;
    } else if (p->err == 0 && !p->discard) {
        /* Short (a full tmpfs): the rest goes again, to get the errno. */
        ASSERT((size_t)res <= s->len);
        s->off += (uint64_t)res;
        s->len -= (size_t)res;
        if (s->len > 0) {
            spool_prep_zero_write(p, s);
            return;
        }
    }
    ASSERT(p->pending > 0);
    s->zeroing = 0;
    p->pending--;
    if (p->err == 0 && !p->discard)
        spool_prep_zero_more(p);
    if (p->pending > 0)
        return;
    if (p->err != 0 || p->discard) {
        spool_prep_settle(p->sp, p->err != 0 ? p->err : -ECANCELED);
        return;
    }
    spool_prep_sync(p->sp);
}


/* spool_prep_step_done - one CQE of a prep step */
static void
spool_prep_step_done(struct op *op, int res, uint32_t cqe_flags)
{
    struct spool_prep_step *s = container_of(op, struct spool_prep_step, op);
    struct spool_prep *p = s->p;

    s->res = res;
    switch (p->state) {
    case SPOOL_PREP_ALLOC:
        ASSERT(p->pending == 1);
        p->pending = 0;
        if (res < 0)
            spool_prep_settle(p->sp, res);
        else if (p->sp->direct)
            spool_prep_zero(p->sp);
        else
            spool_prep_sync(p->sp);
        break;
    case SPOOL_PREP_ZERO:
        spool_prep_zero_done(p, s, res);
        break;
    case SPOOL_PREP_SYNC:
        ASSERT(p->pending > 0);
        if (--p->pending == 0)
            spool_prep_sync_done(p);
        break;
    default:
        panic("spool: prep step completion in state %d", (int)p->state);
    }
}


/* spool_prep_alloc - preallocate bytes; a new segment if !grow */
static void
spool_prep_alloc(struct spool *sp, uint64_t bytes, int grow)
{
    struct spool_prep *p = sp->prep;

    ASSERT(p->fd >= 0);
    ASSERT(bytes > SPOOL_DATA_OFF);
    ASSERT(bytes % SPOOL_REC_BLOCK == 0);
    ASSERT(!grow || bytes > p->bytes);
    p->alloc_bytes = bytes;
    p->grow = grow;
    p->state = SPOOL_PREP_ALLOC;
    p->steps_used = 1;
    p->pending = 1;
    io_uring_prep_fallocate(spool_prep_step(p, 0, 0), p->fd, 0, 0,
                            (off_t)bytes);
}


/* spool_prep_open - create the file of the next segment */
static void
spool_prep_open(struct spool *sp)
{
    struct spool_prep *p = sp->prep;
    int flags = O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC;

    if (sp->direct)
        flags |= O_DIRECT;
    io_uring_prep_openat(loop_sqe(sp->lp, &p->open_op), sp->dir_fd, p->name,
                         flags, 0640);
    p->state = SPOOL_PREP_OPEN;
}


/* spool_prep_open_done - the new segment file exists (or not) */
static void
spool_prep_open_done(struct op *op, int res, uint32_t cqe_flags)
{
    struct spool_prep *p = container_of(op, struct spool_prep, open_op);

    ASSERT(p->state == SPOOL_PREP_OPEN);
    if (res == -EINVAL && p->sp->direct) {
        /* O_EXCL made nothing: the same name again, buffered. */
        spool_direct_refused(p->sp);
        spool_prep_open(p->sp);
        return;
    }
    if (res < 0) {
        spool_prep_settle(p->sp, res);
        return;
    }
    p->fd = res;
    spool_prep_alloc(p->sp, p->want_bytes, 0);
}


/* spool_prep_start - make the next segment of at least want_bytes */
static void
spool_prep_start(struct spool *sp, uint64_t want_bytes, int probe)
{
    struct spool_prep *p = sp->prep;

    ASSERT(p->state == SPOOL_PREP_IDLE);
    ASSERT(p->fd < 0);
    p->seq = ++sp->seg_seq_max;
    p->salt = (uint32_t)spool_rand(sp);
    p->bytes = 0;
    p->want_bytes = want_bytes;
    p->probe = probe;
    p->discard = 0;
    p->err = 0;
    spool_seg_name(p->name, p->seq);
    spool_prep_open(sp);
}


/* spool_live_add - a segment on disk, newer than every one listed */
static void
spool_live_add(struct spool *sp, uint64_t seq, uint64_t live)
{
    if (sp->live_count > 0)
        ASSERT(sp->live[sp->live_count - 1].seq < seq);
    if (sp->live_count == sp->live_cap) {
        sp->live_cap = sp->live_cap ? sp->live_cap * 2 : 16;
        sp->live = xrealloc(sp->live, sp->live_cap * sizeof *sp->live);
    }
    sp->live[sp->live_count].seq = seq;
    sp->live[sp->live_count].live = live;
    sp->live_count++;
}


/* spool_live_find - the entry of segment seq (binary search) */
static struct spool_live *
spool_live_find(struct spool *sp, uint64_t seq)
{
    size_t lo = 0, hi = sp->live_count;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;

        if (sp->live[mid].seq < seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    ASSERT(lo < sp->live_count);
    ASSERT(sp->live[lo].seq == seq);
    return &sp->live[lo];
}


/* spool_reclaim - delete the oldest segments while nothing in them lives */
static void
spool_reclaim(struct spool *sp)
{
    char name[SPOOL_SEG_NAME_MAX];
    size_t n = 0;

    /* Oldest first: a segment's DONE records may name older messages. */
    while (n < sp->live_count && sp->live[n].live == 0 &&
           sp->live[n].seq != sp->seg_seq && !sp->closing) {
        spool_seg_name(name, sp->live[n].seq);
        spool_aux_unlink(sp, name);
        sp->segments_reclaimed++;
        n++;
    }
    if (n == 0)
        return;
    memmove(sp->live, sp->live + n, (sp->live_count - n) * sizeof *sp->live);
    sp->live_count -= n;
}


/* spool_release - a message of segment seg_seq is done for good */
void
spool_release(struct spool *sp, uint64_t seg_seq)
{
    struct spool_live *l = spool_live_find(sp, seg_seq);

    ASSERT(l->live > 0);
    l->live--;
    if (l->live == 0 && l == sp->live)
        spool_reclaim(sp);
}


/* spool_seg_switch - the prepared segment becomes the current one */
static void
spool_seg_switch(struct spool *sp)
{
    struct spool_prep *p = sp->prep;

    ASSERT(p->state == SPOOL_PREP_READY);
    ASSERT(sp->inflight == NULL);
    if (sp->seg_fd >= 0)
        spool_aux_close(sp, sp->seg_fd);
    sp->seg_fd = p->fd;
    sp->seg_seq = p->seq;
    sp->seg_bytes = p->bytes;
    sp->seg_salt = p->salt;
    sp->seg_off = SPOOL_DATA_OFF;
    spool_live_add(sp, sp->seg_seq, 0);
    p->fd = -1;
    p->state = SPOOL_PREP_IDLE;
    p->err = 0;
    /* The old current one may have nothing left in it. */
    if (!p->boot)
        spool_reclaim(sp);
}


/* spool_seg_retire - close a failed segment once no batch uses it */
static void
spool_seg_retire(struct spool *sp)
{
    /*
     * A linked fdatasync takes its file when it is issued, so closing the
     * fd under an in-flight batch could fail a write that succeeded.
     */
    if (sp->seg_fd >= 0 && sp->inflight == NULL) {
        spool_aux_close(sp, sp->seg_fd);
        sp->seg_fd = -1;
    }
}


/* spool_probe_arm - try a fresh segment in a second */
static void
spool_probe_arm(struct spool *sp)
{
    struct io_uring_sqe *sqe;

    if (sp->probe_armed || sp->closing)
        return;
    sp->probe_ts.tv_sec = SPOOL_PROBE_SEC;
    sp->probe_ts.tv_nsec = 0;
    sqe = loop_sqe(sp->lp, &sp->probe_op);
    io_uring_prep_timeout(sqe, &sp->probe_ts, 0, 0);
    sp->probe_armed = 1;
}


/* spool_probe_done - the probe timer fired (or was cancelled) */
static void
spool_probe_done(struct op *op, int res, uint32_t cqe_flags)
{
    struct spool *sp = container_of(op, struct spool, probe_op);

    sp->probe_armed = 0;
    if (sp->closing || sp->failed == 0)
        return;
    /* A segment op from before the failure, or a batch, is still out. */
    if (sp->prep->state != SPOOL_PREP_IDLE || sp->inflight != NULL) {
        spool_probe_arm(sp);
        return;
    }
    spool_prep_start(sp, sp->segment_bytes, 1);
}


/* spool_prep_settle - a prep chain ended with err (0: segment is ready) */
static void
spool_prep_settle(struct spool *sp, int err)
{
    struct spool_prep *p = sp->prep;
    int probe = p->probe, discard = p->discard;
    char name[SPOOL_SEG_NAME_MAX];

    if (err == 0 && discard)
        err = -ECANCELED;
    if (err != 0) {
        memcpy(name, p->name, sizeof name);
        spool_prep_drop(sp);
        if (p->boot) {
            p->err = err;
            return;
        }
        if (discard || sp->closing)
            return;
        if (probe) {
            spool_probe_arm(sp);
            return;
        }
        p->err = err;
        if (sp->fill->count > 0 && sp->fill->to_next) {
            spool_fail(sp, err, "creating", p->seq);
            return;
        }
        /* Made ahead of need: the current segment still has room. */
        log_panic("spool", "shard %u: creating segment %s failed: %s; "
                  "retried when the current one is full", sp->shard_id,
                  name, strerror(-err));
        return;
    }
    p->state = SPOOL_PREP_READY;
    if (probe) {
        p->probe = 0;
        spool_seg_switch(sp);
        log_panic("spool", "shard %u: segment %016" PRIx64 " written and "
                  "synced; spool working again", sp->shard_id, sp->seg_seq);
        sp->failed = 0;
        return;
    }
    if (p->want_bytes > p->bytes)
        spool_prep_alloc(sp, p->want_bytes, 1);
}


/* spool_batch_take - detach the messages and marks of b and empty it */
static struct spool_msg *
spool_batch_take(struct spool_batch *b, struct spool_mark **marks)
{
    struct spool_msg *list = b->head;

    *marks = b->mark_head;
    b->head = NULL;
    b->tail = &b->head;
    b->mark_head = NULL;
    b->mark_tail = &b->mark_head;
    b->count = 0;
    b->mark_count = 0;
    b->len = 0;
    b->to_next = 0;
    if (b->cap > SPOOL_BATCH_KEEP_BYTES) {
        free(b->buf);
        b->cap = SPOOL_BATCH_INIT_BYTES;
        b->buf = spool_block_alloc(b->cap);
    }
    return list;
}


/* spool_fail - a write, sync or segment error: fail, probe, log once */
static void
spool_fail(struct spool *sp, int err, const char *what, uint64_t seq)
{
    struct spool_prep *p = sp->prep;
    struct spool_msg *msgs;
    struct spool_mark *marks;

    ASSERT(err < 0);
    if (err == -ECANCELED)
        err = -EIO;
    if (sp->failed == 0)
        log_panic("spool", "shard %u: %s segment %016" PRIx64 " failed: %s; "
                  "refusing commits, probing every %d s", sp->shard_id, what,
                  seq, strerror(-err), SPOOL_PROBE_SEC);
    sp->failed = err;
    /* Never append after failed data: the next success is a new segment. */
    spool_seg_retire(sp);
    if (p->state == SPOOL_PREP_READY)
        spool_prep_drop(sp);
    else if (p->state != SPOOL_PREP_IDLE && !p->probe)
        p->discard = 1;
    msgs = spool_batch_take(sp->fill, &marks);
    spool_done_list(msgs, err);
    spool_mark_done_list(marks, err);
    spool_done_list(spool_queue_take(sp), err);
    spool_mark_done_list(spool_mark_queue_take(sp), err);
    spool_probe_arm(sp);
}


/* spool_batch_done - both CQEs are in: report the batch */
static void
spool_batch_done(struct spool_batch *b)
{
    struct spool *sp = b->sp;
    struct spool_msg *list;
    struct spool_mark *marks;
    int err = 0;

    ASSERT(sp->inflight == b);
    ASSERT(b->pending == 0);
    /*
     * The link breaks (fdatasync gets -ECANCELED) only when the write
     * errs or comes back short, so both results are checked. A direct
     * write has no sync_res: its flush error comes back as write_res.
     */
    if (b->write_res < 0)
        err = b->write_res;
    else if ((uint64_t)b->write_res != b->len)
        err = -EIO;
    else if (b->sync_res < 0)
        err = b->sync_res;
    if (b->direct || b->sync_res != -ECANCELED)
        sp->fdatasyncs++;
    sp->inflight = NULL;
    if (err == 0) {
        uint64_t now = now_us();
        struct spool_msg *m;

        hist_record_us(&sp->commit_hist, now - b->submit_us);
        for (m = b->head; m != NULL; m = m->next)
            hist_record_us(&sp->dot_to_250_hist, now - m->queued_us);
        sp->commits += b->count - b->mark_count;
        sp->marks += b->mark_count;
        if (b->count > b->mark_count)
            spool_live_find(sp, b->seq)->live += b->count - b->mark_count;
        sp->batches_done++;
        sp->bytes_written += b->len;
    }
    list = spool_batch_take(b, &marks);
    if (err != 0)
        spool_fail(sp, err, b->write_res < 0 ||
                   (uint64_t)b->write_res != b->len ? "writing" : "syncing",
                   sp->seg_seq);
    else if (sp->failed != 0)
        spool_seg_retire(sp);
    spool_done_list(list, err);
    spool_mark_done_list(marks, err);
}


/* spool_batch_write_done - the write CQE of a batch */
static void
spool_batch_write_done(struct op *op, int res, uint32_t cqe_flags)
{
    struct spool_batch *b = container_of(op, struct spool_batch, write_op);

    b->write_res = res;
    if (--b->pending == 0)
        spool_batch_done(b);
}


/* spool_batch_sync_done - the fdatasync CQE of a batch */
static void
spool_batch_sync_done(struct op *op, int res, uint32_t cqe_flags)
{
    struct spool_batch *b = container_of(op, struct spool_batch, sync_op);

    b->sync_res = res;
    if (--b->pending == 0)
        spool_batch_done(b);
}


/* spool_batch_new - an empty batch with its buffer */
static struct spool_batch *
spool_batch_new(struct spool *sp)
{
    struct spool_batch *b = xcalloc(1, sizeof *b);

    b->sp = sp;
    b->cap = SPOOL_BATCH_INIT_BYTES;
    b->buf = spool_block_alloc(b->cap);
    b->tail = &b->head;
    b->mark_tail = &b->mark_head;
    b->write_op.done = spool_batch_write_done;
    b->sync_op.done = spool_batch_sync_done;
    return b;
}


/* spool_batch_span - disk bytes of len record bytes from a block edge */
static uint64_t
spool_batch_span(uint64_t len)
{
    return len + spool_rec_pad_bytes(len);
}


/* spool_batch_reserve - room in b for need more bytes and the final PAD */
static void
spool_batch_reserve(struct spool_batch *b, uint64_t need)
{
    uint64_t span = spool_batch_span(b->len + need);
    unsigned char *buf;

    if (span <= b->cap)
        return;
    /* No aligned realloc: copy. Only a big message gets here. */
    b->cap = MAX(b->cap * 2, span);
    buf = spool_block_alloc(b->cap);
    memcpy(buf, b->buf, b->len);
    free(b->buf);
    b->buf = buf;
}


/* spool_mark_str - a DEFER's optional string */
static const char *
spool_mark_str(const char *s)
{
    return s != NULL ? s : "";
}


/*
 * spool_mark_rec_bytes - batch bytes of mk: one DONE record per recipient,
 * or its one DEFER record
 */
static uint64_t
spool_mark_rec_bytes(const struct spool_mark *mk)
{
    uint64_t one = spool_rec_size(SPOOL_MARK_FIXED_BYTES +
                                  spool_rec_str_size(strlen(mk->id)));

    if (mk->attempt > 0)
        return spool_rec_defer_bytes(strlen(mk->id),
                                     strlen(spool_mark_str(mk->last_enhanced)),
                                     strlen(spool_mark_str(mk->last_text)),
                                     strlen(spool_mark_str(mk->last_host)));
    return one * (mk->rcpts != NULL ? mk->rcpt_count : 1);
}


/* spool_batch_add_mark - encode mk's DONE records at the end of b */
static void
spool_batch_add_mark(struct spool_batch *b, struct spool_mark *mk,
                     uint64_t need)
{
    unsigned n = mk->rcpts != NULL ? mk->rcpt_count : 1, i;
    uint64_t start = b->len;
    struct spool_rec_hdr h;

    spool_batch_reserve(b, need);
    if (mk->attempt > 0) {
        b->len += spool_rec_defer_encode(
            b->buf + b->len, b->cap - b->len, mk->id, mk->attempt,
            mk->last_code, mk->defer_rcpt, mk->due_unix_ms,
            spool_mark_str(mk->last_enhanced),
            spool_mark_str(mk->last_text), spool_mark_str(mk->last_host),
            b->salt);
        n = 0;
    }
    for (i = 0; i < n; i++) {
        uint32_t rcpt = mk->rcpts != NULL ? mk->rcpts[i] : SPOOL_RCPT_ALL;
        size_t size = spool_rec_mark_encode(b->buf + b->len, b->cap - b->len,
                                            SPOOL_REC_DONE, mk->id, rcpt,
                                            b->salt);

        ASSERT(size > 0);
        b->len += size;
    }
    ASSERT(b->len - start == need);
    /* Read back what recovery will check. */
    ASSERT(spool_rec_hdr_get(b->buf + start, b->salt, &h) == 0);
    ASSERT(h.type == (mk->attempt > 0 ? SPOOL_REC_DEFER : SPOOL_REC_DONE));
    mk->next = NULL;
    *b->mark_tail = mk;
    b->mark_tail = &mk->next;
    b->count++;
    b->mark_count++;
}


/* spool_batch_add - encode m (MSG then END) at the end of b */
static void
spool_batch_add(struct spool_batch *b, struct spool_msg *m,
                uint64_t meta_bytes, uint64_t need)
{
    uint64_t payload_bytes = meta_bytes + m->body_bytes;
    uint64_t msg_off = b->off + b->len, end_bytes, copied = 0;
    size_t id_len = strlen(m->id);
    const char *peer = m->peer != NULL ? m->peer : "";
    unsigned char *rec, *p, *end_rec;
    struct spool_rec_hdr h;
    uint32_t crc;
    unsigned i;

    /* Room for the PAD that ends the batch, too. */
    spool_batch_reserve(b, need);
    rec = b->buf + b->len;
    p = rec + SPOOL_REC_HDR_BYTES;
    spool_rec_put64(p, (uint64_t)m->received_unix);
    spool_rec_put64(p + 8, m->body_bytes);
    spool_rec_put32(p + 16, m->rcpt_count);
    spool_rec_put32(p + 20, spool_msg_has_policy(m)
                                ? SPOOL_MSG_F_POLICY | (m->priority & 0xff)
                                : 0);
    p += SPOOL_MSG_FIXED_BYTES;
    p = spool_put_str(p, m->id, id_len);
    p = spool_put_str(p, m->sender, strlen(m->sender));
    p = spool_put_str(p, peer, strlen(peer));
    for (i = 0; i < m->rcpt_count; i++)
        p = spool_put_str(p, m->rcpts[i], strlen(m->rcpts[i]));
    if (spool_msg_has_policy(m)) {
        const char *bd = m->binding ? m->binding : "";
        const char *rd = m->routing_domain ? m->routing_domain : "";

        p = spool_put_str(p, bd, strlen(bd));
        p = spool_put_str(p, rd, strlen(rd));
    }
    ASSERT((uint64_t)(p - rec) == SPOOL_REC_HDR_BYTES + meta_bytes);
    for (i = 0; i < m->body_iov_count; i++) {
        memcpy(p, m->body[i].iov_base, m->body[i].iov_len);
        p += m->body[i].iov_len;
        copied += m->body[i].iov_len;
    }
    ASSERT(copied == m->body_bytes);
    crc = crc32c(0, rec + SPOOL_REC_HDR_BYTES, payload_bytes);
    spool_rec_hdr_put(rec, SPOOL_REC_MSG, payload_bytes, crc, b->salt);
    end_rec = rec + spool_rec_size(payload_bytes);
    memset(p, 0, (size_t)(end_rec - p));

    end_bytes = spool_end_payload_bytes(id_len);
    p = end_rec + SPOOL_REC_HDR_BYTES;
    spool_rec_put64(p, msg_off);
    spool_rec_put32(p + 8, crc);
    spool_rec_put32(p + 12, 0);
    p = spool_put_str(p + SPOOL_END_FIXED_BYTES, m->id, id_len);
    memset(p, 0, (size_t)(spool_rec_align(end_bytes) - end_bytes));
    spool_rec_hdr_put(end_rec, SPOOL_REC_END, end_bytes,
                      crc32c(0, end_rec + SPOOL_REC_HDR_BYTES, end_bytes),
                      b->salt);
    ASSERT((uint64_t)(end_rec + spool_rec_size(end_bytes) - rec) == need);
    /* Read back what recovery will check first. */
    ASSERT(spool_rec_hdr_get(rec, b->salt, &h) == 0);
    ASSERT(h.payload_bytes == payload_bytes);

    b->len += need;
    m->seg_seq = b->seq;
    m->next = NULL;
    *b->tail = m;
    b->tail = &m->next;
    b->count++;
}


/* spool_batch_target - choose where an empty batch goes: here or next */
static void
spool_batch_target(struct spool *sp, struct spool_batch *b, uint64_t need)
{
    struct spool_prep *p = sp->prep;
    uint64_t want;

    ASSERT(b->count == 0);
    ASSERT(sp->seg_fd >= 0);
    if (sp->seg_off + spool_batch_span(need) <= sp->seg_bytes) {
        b->to_next = 0;
        b->seq = sp->seg_seq;
        b->off = sp->seg_off;
        b->salt = sp->seg_salt;
        return;
    }
    /* The next segment, made bigger than usual if one message needs it. */
    want = MAX(sp->segment_bytes, SPOOL_DATA_OFF + spool_batch_span(need));
    if (p->state == SPOOL_PREP_IDLE)
        spool_prep_start(sp, want, 0);
    else
        p->want_bytes = MAX(p->want_bytes, want);
    b->to_next = 1;
    b->seq = p->seq;
    b->off = SPOOL_DATA_OFF;
    b->salt = p->salt;
}


/* spool_fill - encode queued messages into the filling batch */
static void
spool_fill(struct spool *sp)
{
    struct spool_batch *b = sp->fill;
    struct spool_msg *m, *too_big = NULL, **too_big_tail = &too_big;
    struct spool_mark *mk;
    uint64_t meta, need, limit;

    ASSERT(sp->failed == 0);
    while ((m = sp->queue_head) != NULL) {
        meta = spool_msg_meta_bytes(m);
        if (meta + m->body_bytes > SPOOL_REC_PAYLOAD_MAX) {
            sp->queue_head = m->next;
            m->next = NULL;
            *too_big_tail = m;
            too_big_tail = &m->next;
            continue;
        }
        need = spool_msg_rec_bytes(m, meta);
        if (b->count == 0) {
            spool_batch_target(sp, b, need);
        } else {
            limit = b->to_next ? sp->prep->want_bytes : sp->seg_bytes;
            if (b->off + spool_batch_span(b->len + need) > limit ||
                b->len + need > SPOOL_BATCH_SOFT_BYTES)
                break;
        }
        sp->queue_head = m->next;
        spool_batch_add(b, m, meta, need);
    }
    if (sp->queue_head == NULL)
        sp->queue_tail = &sp->queue_head;
    /*
     * Marks follow: only committed messages are marked, so a mark never
     * needs to come after a MSG of its own batch.
     */
    while ((mk = sp->mark_head) != NULL) {
        need = spool_mark_rec_bytes(mk);
        if (b->count == 0) {
            spool_batch_target(sp, b, need);
        } else {
            limit = b->to_next ? sp->prep->want_bytes : sp->seg_bytes;
            if (b->off + spool_batch_span(b->len + need) > limit ||
                b->len + need > SPOOL_BATCH_SOFT_BYTES)
                break;
        }
        sp->mark_head = mk->next;
        spool_batch_add_mark(b, mk, need);
    }
    if (sp->mark_head == NULL)
        sp->mark_tail = &sp->mark_head;
    spool_done_list(too_big, -EFBIG);
}


/* spool_submit - write the filling batch: RWF_DSYNC, or with fdatasync */
static void
spool_submit(struct spool *sp)
{
    struct spool_batch *b = sp->fill;
    struct spool_prep *p = sp->prep;
    struct io_uring_sqe *sqe;
    uint64_t pad;

    ASSERT(sp->inflight == NULL);
    if (b->count == 0)
        return;
    if (b->to_next) {
        /* The prep completion comes back through the next flush. */
        if (p->state == SPOOL_PREP_ZERO)
            spool_prep_zero_more(p);     /* now urgent: full speed */
        if (p->state != SPOOL_PREP_READY)
            return;
        ASSERT(b->off + b->len <= p->want_bytes);
        if (p->bytes < p->want_bytes) {
            spool_prep_alloc(sp, p->want_bytes, 1);
            return;
        }
        ASSERT(b->salt == p->salt);
        spool_seg_switch(sp);
        b->to_next = 0;
    }
    /* End on a block edge: the next batch never rewrites this one's. */
    pad = spool_rec_pad_bytes(b->len);
    ASSERT(b->len + pad <= b->cap);
    if (pad > 0)
        spool_rec_pad_encode(b->buf + b->len, pad, b->salt);
    b->len += pad;
    ASSERT(sp->seg_fd >= 0);
    ASSERT(b->off == sp->seg_off);
    ASSERT(b->salt == sp->seg_salt);
    ASSERT(b->off + b->len <= sp->seg_bytes);
    /* O_DIRECT takes whole aligned blocks only (-EINVAL otherwise). */
    ASSERT(b->off % SPOOL_REC_BLOCK == 0);
    ASSERT(b->len % SPOOL_REC_BLOCK == 0);
    ASSERT((uintptr_t)b->buf % SPOOL_REC_BLOCK == 0);
    /* Messages are capped at 1 GiB, far below MAX_RW_COUNT. */
    ASSERT(b->len <= SPOOL_REC_PAYLOAD_MAX + SPOOL_BATCH_SOFT_BYTES);

    b->direct = sp->direct;
    b->submit_us = now_us();
    spool_sq_room(sp, 2);
    sqe = loop_sqe(sp->lp, &b->write_op);
    io_uring_prep_write(sqe, sp->seg_fd, b->buf, (unsigned)b->len, b->off);
    if (b->direct) {
        /*
         * Durable at completion: the kernel flushes the device's volatile
         * cache after the write (or writes with FUA where there is one).
         * It is issued inline, where a linked fdatasync always takes an
         * io-wq thread.
         */
        sqe->rw_flags = RWF_DSYNC;
        b->pending = 1;
    } else {
        sqe->flags |= IOSQE_IO_LINK;
        sqe = loop_sqe(sp->lp, &b->sync_op);
        io_uring_prep_fsync(sqe, sp->seg_fd, IORING_FSYNC_DATASYNC);
        b->pending = 2;
    }
    b->write_res = 0;
    b->sync_res = 0;
    sp->seg_off += b->len;
    sp->inflight = b;
    sp->fill = b == sp->batches[0] ? sp->batches[1] : sp->batches[0];
    ASSERT(sp->fill->count == 0);
    /* Make the next segment while this one still has room. */
    if (p->state == SPOOL_PREP_IDLE && p->err == 0 &&
        sp->seg_off > sp->seg_bytes / 2)
        spool_prep_start(sp, sp->segment_bytes, 0);
}


/* spool_commit - queue m for the next group commit */
void
spool_commit(struct spool *sp, struct spool_msg *m)
{
    ASSERT(!sp->closing);
    ASSERT(m->done != NULL);
    ASSERT(m->id != NULL);
    ASSERT(m->id[0] != '\0');
    ASSERT(strlen(m->id) < SPOOL_ID_MAX);
    ASSERT(m->sender != NULL);
    ASSERT(m->rcpt_count > 0);
    ASSERT(m->body_iov_count == 0 || m->body != NULL);
    m->next = NULL;
    m->queued_us = now_us();
    *sp->queue_tail = m;
    sp->queue_tail = &m->next;
}


/* spool_mark - queue DONE records for the next group commit */
void
spool_mark(struct spool *sp, struct spool_mark *mk)
{
    unsigned i;

    ASSERT(!sp->closing);
    ASSERT(mk->done != NULL);
    ASSERT(mk->id != NULL);
    ASSERT(mk->id[0] != '\0');
    ASSERT(strlen(mk->id) < SPOOL_ID_MAX);
    ASSERT(mk->rcpts == NULL || mk->rcpt_count > 0);
    for (i = 0; mk->rcpts != NULL && i < mk->rcpt_count; i++)
        ASSERT(mk->rcpts[i] != SPOOL_RCPT_ALL);
    mk->next = NULL;
    if (mk->attempt > 0) {
        if (sp->lazy_head == NULL)
            sp->lazy_since_us = now_us();
        *sp->lazy_tail = mk;
        sp->lazy_tail = &mk->next;
        return;
    }
    *sp->mark_tail = mk;
    sp->mark_tail = &mk->next;
}


/*
 * spool_lazy_release - DEFERs join the marks when a write goes anyway
 * (something else is queued or being filled), when the oldest has waited
 * SPOOL_LAZY_MS, when the spool failed (to be refused) or is hurried.
 */
static void
spool_lazy_release(struct spool *sp)
{
    if (sp->lazy_head == NULL)
        return;
    if (sp->queue_head == NULL && sp->mark_head == NULL &&
        sp->fill->count == 0 && sp->failed == 0 && !sp->hurry &&
        now_us() - sp->lazy_since_us < (uint64_t)SPOOL_LAZY_MS * 1000)
        return;
    *sp->mark_tail = sp->lazy_head;
    sp->mark_tail = sp->lazy_tail;
    sp->lazy_head = NULL;
    sp->lazy_tail = &sp->lazy_head;
}


/* spool_flush - before-wait hook: encode the queue, submit when free */
void
spool_flush(struct spool *sp)
{
    if (sp->closing)
        return;
    spool_lazy_release(sp);
    if (sp->failed != 0) {
        spool_done_list(spool_queue_take(sp), sp->failed);
        spool_mark_done_list(spool_mark_queue_take(sp), sp->failed);
        return;
    }
    spool_fill(sp);
    if (sp->inflight != NULL)
        return;
    spool_submit(sp);
    /* Encode what did not fit while this batch is on the disk. */
    if (sp->inflight != NULL)
        spool_fill(sp);
}


void
spool_hurry(struct spool *sp)
{
    sp->hurry = 1;
    if (sp->prep != NULL && sp->prep->state == SPOOL_PREP_ZERO)
        spool_prep_zero_more(sp->prep);
}


/* spool_failed - the -errno the spool failed with, 0 when working */
int
spool_failed(const struct spool *sp)
{
    return sp->failed;
}


/* spool_idle - nothing queued, no batch or segment operation in flight */
int
spool_idle(const struct spool *sp)
{
    enum spool_prep_state st = sp->prep->state;

    return sp->queue_head == NULL && sp->mark_head == NULL &&
           sp->lazy_head == NULL && sp->fill->count == 0 &&
           sp->inflight == NULL && sp->aux_pending == 0 &&
           (st == SPOOL_PREP_IDLE || st == SPOOL_PREP_READY);
}


/* spool_next_id - a message id unique across shards and restarts */
void
spool_next_id(struct spool *sp, char id[SPOOL_ID_MAX])
{
    /* 48-bit random nonce per open, shard, 48-bit counter: 28 chars. */
    snprintf(id, SPOOL_ID_MAX, "%012" PRIx64 "-%02x-%012" PRIx64,
             sp->id_nonce, sp->shard_id,
             (uint64_t)(++sp->id_counter & 0xffffffffffffull));
}


/* spool_seg_boot - make the first segment on a private ring, wait for it */
static int
spool_seg_boot(struct spool *sp)
{
    struct spool_prep *p = sp->prep;
    struct loop *lp = sp->lp;
    struct loop boot;
    int rc;

    /*
     * The shard's ring may hold other owners' operations, whose
     * completions must not run inside spool_open(): use one of our own.
     */
    rc = loop_init(&boot, 16, 64);
    if (rc < 0)
        return rc;
    sp->lp = &boot;
    p->boot = 1;
    spool_prep_start(sp, sp->segment_bytes, 0);
    while ((p->state != SPOOL_PREP_IDLE && p->state != SPOOL_PREP_READY) ||
           sp->aux_pending > 0)
        loop_run_once(&boot, 1000);
    rc = p->err;
    if (p->state == SPOOL_PREP_READY) {
        ASSERT(rc == 0);
        spool_seg_switch(sp);
    }
    ASSERT(rc < 0 || sp->seg_fd >= 0);
    p->boot = 0;
    sp->lp = lp;
    loop_fini(&boot);
    return rc;
}


/* ---- recovery and scanning ------------------------------------------ */

struct spool_scan_seg {
    char name[SPOOL_SEG_NAME_MAX];
    uint64_t seq;
    const unsigned char *map;    /* NULL when the file is empty */
    uint64_t size;
    uint32_t salt;
    unsigned shard_id;
    int empty;                   /* header and zeros only: deletable */
    uint64_t live;               /* live messages reported from it */
};

struct spool_scan_msg {
    char id[SPOOL_ID_MAX];
    uint32_t seg;
    uint32_t rcpt_count;
    uint64_t off;
    unsigned char *done;         /* per recipient; NULL until a DONE */
    uint32_t done_count;
    int all_done;
    int superseded;              /* a later copy with the same id exists */
    struct spool_scan_defer *defers;    /* the newest per rcpt index */
    uint32_t defer_count;
};

/* Where the newest DEFER record of one recipient group is. */
struct spool_scan_defer {
    uint32_t rcpt;
    uint32_t attempt;
    uint32_t seg;
    uint64_t off;
};

struct spool_scan_mark {
    char id[SPOOL_ID_MAX];
    uint32_t rcpt;
};

struct spool_scanner {
    int dir_fd;
    int repair;                  /* spool_open(): move aside, delete */
    unsigned shard_id;           /* for log lines */
    struct spool_scan_stats *st;
    struct spool_scan_seg *segs;
    size_t seg_count, seg_cap;
    struct spool_scan_msg *msgs;
    size_t msg_count, msg_cap;
    uint32_t *slots;             /* id hash: message index + 1, 0 free */
    size_t slot_mask;
    struct spool_scan_mark *marks;
    size_t mark_count, mark_cap;
    uint64_t seq_max;
};


/* spool_scan_list - find and map every segment, in seq order */
static int
spool_scan_list(struct spool_scanner *sc)
{
    struct spool_scan_seg *sg;
    struct dirent *de;
    struct stat sb;
    uint64_t seq;
    size_t i, j;
    DIR *d;
    int fd;

    fd = openat(sc->dir_fd, ".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0 || (d = fdopendir(fd)) == NULL) {
        int rc = -errno;

        if (fd >= 0)
            close(fd);
        return rc;
    }
    while ((de = readdir(d)) != NULL) {
        if (!spool_seg_parse(de->d_name, &seq))
            continue;
        if (sc->seg_count == sc->seg_cap) {
            sc->seg_cap = sc->seg_cap ? sc->seg_cap * 2 : 16;
            sc->segs = xrealloc(sc->segs, sc->seg_cap * sizeof *sc->segs);
        }
        sg = &sc->segs[sc->seg_count++];
        memset(sg, 0, sizeof *sg);
        memcpy(sg->name, de->d_name, strlen(de->d_name) + 1);
        sg->seq = seq;
        sc->seq_max = MAX(sc->seq_max, seq);
    }
    closedir(d);
    /* Insertion sort: a shard has tens of segments, not thousands. */
    for (i = 1; i < sc->seg_count; i++) {
        struct spool_scan_seg t = sc->segs[i];

        for (j = i; j > 0 && sc->segs[j - 1].seq > t.seq; j--)
            sc->segs[j] = sc->segs[j - 1];
        sc->segs[j] = t;
    }
    for (i = 0; i < sc->seg_count; i++) {
        sg = &sc->segs[i];
        fd = openat(sc->dir_fd, sg->name, O_RDONLY | O_CLOEXEC);
        if (fd < 0)
            return -errno;
        if (fstat(fd, &sb) < 0) {
            int rc = -errno;

            close(fd);
            return rc;
        }
        sg->size = (uint64_t)sb.st_size;
        if (sg->size > 0) {
            void *m = mmap(NULL, sg->size, PROT_READ, MAP_PRIVATE, fd, 0);

            if (m == MAP_FAILED) {
                int rc = -errno;

                close(fd);
                return rc;
            }
            sg->map = m;
        }
        close(fd);
    }
    return 0;
}


/* spool_scan_rec - is there a whole, valid record at off? */
static int
spool_scan_rec(const struct spool_scan_seg *sg, uint64_t off, uint32_t salt,
               struct spool_rec_hdr *h)
{
    const unsigned char *r;

    if (off > sg->size || sg->size - off < SPOOL_REC_HDR_BYTES)
        return 0;
    r = sg->map + off;
    if (spool_rec_hdr_get(r, salt, h) < 0)
        return 0;
    if (sg->size - off - SPOOL_REC_HDR_BYTES < h->payload_bytes)
        return 0;
    return crc32c(0, r + SPOOL_REC_HDR_BYTES, h->payload_bytes) ==
           h->payload_crc;
}


/* spool_scan_resync - next valid record at or after off; sets *nonzero */
static uint64_t
spool_scan_resync(const struct spool_scan_seg *sg, uint64_t off,
                  uint32_t salt, int *nonzero)
{
    struct spool_rec_hdr h;
    uint64_t o, w;

    ASSERT(off % SPOOL_REC_ALIGN == 0);
    for (o = off; o + 8 <= sg->size; o += 8) {
        memcpy(&w, sg->map + o, 8);
        if (w == 0)
            continue;
        *nonzero = 1;
        /*
         * Not on a PAD: every batch ends with one, so a batch torn at the
         * tail would pass for corruption followed by valid data.
         */
        if (spool_rec_get32(sg->map + o) == SPOOL_REC_MAGIC &&
            spool_scan_rec(sg, o, salt, &h) && h.type != SPOOL_REC_PAD)
            return o;
    }
    for (; o < sg->size; o++) {
        if (sg->map[o] != 0)
            *nonzero = 1;
    }
    return SPOOL_SCAN_NONE;
}


/* spool_scan_corrupt - count a bad region; in recovery copy it aside */
static void
spool_scan_corrupt(struct spool_scanner *sc, const struct spool_scan_seg *sg,
                   uint64_t off, uint64_t len)
{
    char path[SPOOL_CORRUPT_NAME_MAX];
    const unsigned char *p = sg->map + off;
    uint64_t left = len;
    int fd;

    sc->st->corrupt++;
    if (!sc->repair)
        return;
    snprintf(path, sizeof path, "corrupt/%s.%" PRIu64, sg->name, off);
    if (mkdirat(sc->dir_fd, "corrupt", 0750) < 0 && errno != EEXIST)
        goto fail;
    fd = openat(sc->dir_fd, path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC,
                0640);
    if (fd < 0)
        goto fail;
    while (left > 0) {
        ssize_t n = write(fd, p, left);

        if (n <= 0) {
            if (n < 0 && errno == EINTR)
                continue;
            if (n == 0)
                errno = EIO;
            close(fd);
            goto fail;
        }
        p += n;
        left -= (uint64_t)n;
    }
    if (fsync(fd) < 0) {
        close(fd);
        goto fail;
    }
    close(fd);
    log_panic("spool", "shard %u: corrupt record in %s at offset %" PRIu64
              " (%" PRIu64 " bytes), moved aside to %s", sc->shard_id,
              sg->name, off, len, path);
    return;

fail:
    /* The segment is never modified, so the record is still there. */
    log_panic("spool", "shard %u: corrupt record in %s at offset %" PRIu64
              " (%" PRIu64 " bytes), could not write %s: %s", sc->shard_id,
              sg->name, off, len, path, strerror(errno));
}


/* spool_scan_slot - the hash slot of id: its message or a free slot */
static uint32_t *
spool_scan_slot(struct spool_scanner *sc, const char *id)
{
    size_t i = crc32c(0, id, strlen(id)) & sc->slot_mask;

    while (sc->slots[i] != 0 &&
           strcmp(sc->msgs[sc->slots[i] - 1].id, id) != 0)
        i = (i + 1) & sc->slot_mask;
    return &sc->slots[i];
}


/* spool_scan_rehash - double the id hash */
static void
spool_scan_rehash(struct spool_scanner *sc)
{
    size_t i, n = sc->slots ? (sc->slot_mask + 1) * 2 : 1024;

    free(sc->slots);
    sc->slots = xcalloc(n, sizeof *sc->slots);
    sc->slot_mask = n - 1;
    for (i = 0; i < sc->msg_count; i++) {
        if (!sc->msgs[i].superseded)
            *spool_scan_slot(sc, sc->msgs[i].id) = (uint32_t)i + 1;
    }
}


/* spool_scan_add_msg - index a committed message */
static void
spool_scan_add_msg(struct spool_scanner *sc, uint32_t seg, uint64_t off,
                   const struct spool_msg_dec *d)
{
    struct spool_scan_msg *m;
    uint32_t *slot;

    ASSERT(sc->msg_count < UINT32_MAX - 1);
    if (sc->slots == NULL || sc->msg_count + 1 > (sc->slot_mask + 1) / 2)
        spool_scan_rehash(sc);
    if (sc->msg_count == sc->msg_cap) {
        sc->msg_cap = sc->msg_cap ? sc->msg_cap * 2 : 256;
        sc->msgs = xrealloc(sc->msgs, sc->msg_cap * sizeof *sc->msgs);
    }
    slot = spool_scan_slot(sc, d->id);
    /*
     * XXX: two copies of one id can only come from compaction (later),
     * interrupted between copying forward and deleting: keep the newer.
     */
    if (*slot != 0)
        sc->msgs[*slot - 1].superseded = 1;
    m = &sc->msgs[sc->msg_count];
    memset(m, 0, sizeof *m);
    snprintf(m->id, sizeof m->id, "%s", d->id);
    m->seg = seg;
    m->off = off;
    m->rcpt_count = d->rcpt_count;
    *slot = (uint32_t)++sc->msg_count;
    sc->st->messages++;
}


/* spool_scan_add_mark - remember a DONE record (its MSG may come later) */
static void
spool_scan_add_mark(struct spool_scanner *sc, const unsigned char *pl,
                    uint64_t len)
{
    const unsigned char *p = pl + SPOOL_MARK_FIXED_BYTES;
    struct spool_scan_mark *k;
    const char *id;

    if (len < SPOOL_MARK_FIXED_BYTES ||
        spool_get_str(&p, pl + len, &id) < 0 || strlen(id) >= SPOOL_ID_MAX)
        return;
    if (sc->mark_count == sc->mark_cap) {
        sc->mark_cap = sc->mark_cap ? sc->mark_cap * 2 : 256;
        sc->marks = xrealloc(sc->marks, sc->mark_cap * sizeof *sc->marks);
    }
    k = &sc->marks[sc->mark_count++];
    snprintf(k->id, sizeof k->id, "%s", id);
    k->rcpt = spool_rec_get32(pl);
}


/* Attempt counts read from disk are capped: Max_Retries is at most 10000. */
#define SPOOL_DEFER_ATTEMPTS_MAX 1000000u

/*
 * spool_scan_add_defer - a DEFER record: remember it as its recipient
 * group's newest (highest attempt count). DEFERs are written after their
 * MSG is durable, and segments are scanned oldest first, so the MSG is
 * indexed already; one that is not was reclaimed or corrupt.
 */
static void
spool_scan_add_defer(struct spool_scanner *sc, uint32_t seg, uint64_t off,
                     const unsigned char *pl, uint64_t len)
{
    const unsigned char *p = pl + SPOOL_DEFER_FIXED_BYTES;
    struct spool_scan_defer *k;
    struct spool_scan_msg *m;
    const char *id;
    uint32_t idx, attempt, rcpt, i;

    if (len < SPOOL_DEFER_FIXED_BYTES ||
        spool_get_str(&p, pl + len, &id) < 0 || sc->slots == NULL)
        return;
    idx = *spool_scan_slot(sc, id);
    attempt = MIN(spool_rec_get32(pl), SPOOL_DEFER_ATTEMPTS_MAX);
    rcpt = spool_rec_get32(pl + 8);
    if (idx == 0 || attempt == 0)
        return;
    m = &sc->msgs[idx - 1];
    if (rcpt >= m->rcpt_count)
        return;
    for (i = 0; i < m->defer_count && m->defers[i].rcpt != rcpt; i++)
        ;
    if (i == m->defer_count) {
        m->defers = xrealloc(m->defers, (i + 1) * sizeof *m->defers);
        m->defer_count++;
        m->defers[i].attempt = 0;
    }
    k = &m->defers[i];
    if (attempt >= k->attempt) {
        k->rcpt = rcpt;
        k->attempt = attempt;
        k->seg = seg;
        k->off = off;
    }
}


/* spool_scan_defers - m's DEFERs, read back, for spool_found; or NULL */
static struct spool_defer *
spool_scan_defers(const struct spool_scanner *sc,
                  const struct spool_scan_msg *m)
{
    struct spool_defer *v;
    uint32_t i;

    if (m->defer_count == 0)
        return NULL;
    v = xcalloc(m->defer_count, sizeof *v);
    for (i = 0; i < m->defer_count; i++) {
        const struct spool_scan_defer *k = &m->defers[i];
        const struct spool_scan_seg *sg = &sc->segs[k->seg];
        const unsigned char *pl, *p, *end;
        struct spool_rec_hdr h;
        const char *id;

        v[i].rcpt = k->rcpt;
        v[i].attempts = k->attempt;
        v[i].last_enhanced = v[i].last_text = v[i].last_host = "";
        /* Pass one checked the record; its strings are read here. */
        if (!spool_scan_rec(sg, k->off, sg->salt, &h))
            continue;
        pl = sg->map + k->off + SPOOL_REC_HDR_BYTES;
        end = pl + h.payload_bytes;
        p = pl + SPOOL_DEFER_FIXED_BYTES;
        /* The id first, then the reply's three strings; any short: none. */
        if (spool_get_str(&p, end, &id) < 0 ||
            spool_get_str(&p, end, &v[i].last_enhanced) < 0 ||
            spool_get_str(&p, end, &v[i].last_text) < 0 ||
            spool_get_str(&p, end, &v[i].last_host) < 0) {
            v[i].last_enhanced = v[i].last_text = v[i].last_host = "";
            continue;
        }
        v[i].last_code = spool_rec_get32(pl + 4);
        v[i].due_unix_ms = spool_rec_get64(pl + 16);
    }
    return v;
}


/* spool_scan_end_ok - does the END payload close the pending MSG? */
static int
spool_scan_end_ok(const unsigned char *pl, uint64_t len, uint64_t msg_off,
                  uint32_t msg_crc, const char *msg_id)
{
    const unsigned char *p = pl + SPOOL_END_FIXED_BYTES;
    const char *id;

    if (len < SPOOL_END_FIXED_BYTES ||
        spool_get_str(&p, pl + len, &id) < 0)
        return 0;
    return spool_rec_get64(pl) == msg_off &&
           spool_rec_get32(pl + 8) == msg_crc && strcmp(id, msg_id) == 0;
}


/* spool_scan_zero - are the bytes of sg from off on all zero? */
static int
spool_scan_zero(const struct spool_scan_seg *sg, uint64_t off)
{
    uint64_t o;

    for (o = off; o < sg->size; o++) {
        if (sg->map[o] != 0)
            return 0;
    }
    return 1;
}


/* spool_scan_segment - check every record of segment si (pass one) */
static void
spool_scan_segment(struct spool_scanner *sc, uint32_t si)
{
    struct spool_scan_seg *sg = &sc->segs[si];
    struct spool_msg_dec d, pend;
    struct spool_rec_hdr h;
    uint64_t off, next, pend_off = SPOOL_SCAN_NONE;
    uint32_t pend_crc = 0;
    int nonzero;

    sc->st->segments++;
    if (!spool_scan_rec(sg, 0, 0, &h) || h.type != SPOOL_REC_SEGHDR ||
        h.payload_bytes < SPOOL_SEGHDR_PAYLOAD_BYTES) {
        /*
         * Without the salt nothing in it can be checked. The SEGHDR is
         * synced before a message goes in, so a bad one with zeros after
         * it is a creation cut short; anything else is corrupt as a whole.
         */
        if (spool_scan_zero(sg, 0))
            sg->empty = 1;
        else if (spool_scan_zero(sg, SPOOL_SEGHDR_BYTES))
            sc->st->torn++;
        else
            spool_scan_corrupt(sc, sg, 0, sg->size);
        return;
    }
    sg->shard_id = spool_rec_get32(sg->map + SPOOL_REC_HDR_BYTES);
    sg->salt = spool_rec_get32(sg->map + SPOOL_REC_HDR_BYTES + 4);
    sg->empty = 1;
    off = spool_rec_size(h.payload_bytes);
    memset(&pend, 0, sizeof pend);
    for (;;) {
        const unsigned char *pl;

        if (off >= sg->size) {
            if (pend_off != SPOOL_SCAN_NONE)
                sc->st->torn++;
            break;
        }
        if (!spool_scan_rec(sg, off, sg->salt, &h)) {
            nonzero = 0;
            next = spool_scan_resync(sg, off, sg->salt, &nonzero);
            if (next == SPOOL_SCAN_NONE) {
                /* Nothing valid after it: the tail of an unacked batch. */
                if (nonzero || pend_off != SPOOL_SCAN_NONE) {
                    sc->st->torn++;
                    sg->empty = 0;
                }
                break;
            }
            /*
             * Valid records follow, so this was written and synced
             * before them: corruption. A MSG whose END is in the bad
             * region goes aside with it.
             */
            if (pend_off != SPOOL_SCAN_NONE)
                off = pend_off;
            spool_scan_corrupt(sc, sg, off, next - off);
            pend_off = SPOOL_SCAN_NONE;
            sg->empty = 0;
            off = next;
            continue;
        }
        if (h.type != SPOOL_REC_PAD)
            sg->empty = 0;
        pl = sg->map + off + SPOOL_REC_HDR_BYTES;
        /*
         * Only an END may follow a MSG. A MSG followed by anything else
         * lost its END in the middle of the log: set it aside.
         */
        if (pend_off != SPOOL_SCAN_NONE && h.type != SPOOL_REC_END) {
            spool_scan_corrupt(sc, sg, pend_off, off - pend_off);
            pend_off = SPOOL_SCAN_NONE;
        }
        if (h.version != SPOOL_REC_VERSION) {
            /* XXX: a newer ringmail wrote it; a downgrade skips it. */
        } else if (h.type == SPOOL_REC_MSG) {
            if (spool_msg_decode(pl, h.payload_bytes, &d, NULL) < 0) {
                spool_scan_corrupt(sc, sg, off,
                                   spool_rec_size(h.payload_bytes));
            } else {
                pend = d;
                pend_off = off;
                pend_crc = h.payload_crc;
            }
        } else if (h.type == SPOOL_REC_END) {
            uint64_t rec_end = off + spool_rec_size(h.payload_bytes);

            if (pend_off == SPOOL_SCAN_NONE) {
                /* Its MSG was in a corrupt region, already set aside. */
            } else if (spool_scan_end_ok(pl, h.payload_bytes, pend_off,
                                         pend_crc, pend.id)) {
                spool_scan_add_msg(sc, si, pend_off, &pend);
            } else {
                spool_scan_corrupt(sc, sg, pend_off,
                                   MIN(rec_end, sg->size) - pend_off);
            }
            pend_off = SPOOL_SCAN_NONE;
        } else if (h.type == SPOOL_REC_DONE) {
            spool_scan_add_mark(sc, pl, h.payload_bytes);
        } else if (h.type == SPOOL_REC_DEFER) {
            spool_scan_add_defer(sc, si, off, pl, h.payload_bytes);
        }
        /* PAD, a stray SEGHDR, unknown types: nothing to recover. */
        off += spool_rec_size(h.payload_bytes);
    }
}


/* spool_scan_apply_marks - DONE records make recipients dead */
static void
spool_scan_apply_marks(struct spool_scanner *sc)
{
    struct spool_scan_msg *m;
    uint32_t idx;
    size_t i;

    for (i = 0; i < sc->mark_count && sc->slots != NULL; i++) {
        struct spool_scan_mark *k = &sc->marks[i];

        idx = *spool_scan_slot(sc, k->id);
        /* No such message: its segment was reclaimed, or it was corrupt. */
        if (idx == 0)
            continue;
        m = &sc->msgs[idx - 1];
        if (k->rcpt == SPOOL_RCPT_ALL) {
            m->all_done = 1;
        } else if (k->rcpt < m->rcpt_count) {
            if (m->done == NULL)
                m->done = xcalloc(m->rcpt_count, 1);
            if (!m->done[k->rcpt]) {
                m->done[k->rcpt] = 1;
                m->done_count++;
            }
        }
    }
}


/* spool_scan_report - pass two: call cb for every live message */
static void
spool_scan_report(struct spool_scanner *sc, spool_recovered_fn *cb,
                  void *arg)
{
    struct spool_found f;
    struct spool_msg_dec d;
    struct spool_rec_hdr h;
    size_t i;

    for (i = 0; i < sc->msg_count; i++) {
        struct spool_scan_msg *m = &sc->msgs[i];
        struct spool_scan_seg *sg = &sc->segs[m->seg];
        struct spool_defer *defers;
        const char **rcpts;
        int rc;

        if (m->superseded || m->all_done || m->done_count == m->rcpt_count)
            continue;
        /* Pass one checked this record; check again across the boundary. */
        ASSERT(spool_scan_rec(sg, m->off, sg->salt, &h));
        rcpts = xmalloc(m->rcpt_count * sizeof *rcpts);
        rc = spool_msg_decode(sg->map + m->off + SPOOL_REC_HDR_BYTES,
                              h.payload_bytes, &d, rcpts);
        ASSERT(rc == 0);
        memset(&f, 0, sizeof f);
        f.id = d.id;
        f.received_unix = d.received_unix;
        f.sender = d.sender;
        f.rcpts = rcpts;
        f.rcpt_count = d.rcpt_count;
        f.peer = d.peer;
        f.binding = d.binding;
        f.routing_domain = d.routing_domain;
        f.priority = d.flags & SPOOL_MSG_F_PRIO_MASK;
        f.body = (const char *)d.body;
        f.body_bytes = d.body_bytes;
        f.segment = sg->name;
        f.segment_seq = sg->seq;
        f.offset = m->off;
        f.shard_id = sg->shard_id;
        f.rcpt_done = m->done;
        defers = spool_scan_defers(sc, m);
        f.defers = defers;
        f.defer_count = defers != NULL ? m->defer_count : 0;
        sc->st->live++;
        sg->live++;
        sc->st->bytes += d.body_bytes;
        if (cb != NULL)
            cb(arg, &f);
        free(defers);
        free(rcpts);
    }
}


/* spool_scan_run - scan a shard directory; repair when recovering */
static int
spool_scan_run(int dir_fd, unsigned shard_id, int repair,
               spool_recovered_fn *cb, void *arg,
               struct spool_scan_stats *st, uint64_t *seq_max,
               struct spool *sp)
{
    struct spool_scanner sc;
    size_t i;
    int rc;

    memset(&sc, 0, sizeof sc);
    sc.dir_fd = dir_fd;
    sc.repair = repair;
    sc.shard_id = shard_id;
    sc.st = st;
    rc = spool_scan_list(&sc);
    if (rc < 0)
        goto fail;
    for (i = 0; i < sc.seg_count; i++)
        spool_scan_segment(&sc, (uint32_t)i);
    spool_scan_apply_marks(&sc);
    spool_scan_report(&sc, cb, arg);
    if (repair) {
        /*
         * Segments made ahead and never used. The newest stays so its
         * seq is never reused (corrupt/ names carry it).
         */
        for (i = 0; i < sc.seg_count; i++) {
            if (sc.segs[i].empty && sc.segs[i].seq != sc.seq_max)
                (void)unlinkat(dir_fd, sc.segs[i].name, 0);
            else if (sp != NULL)
                spool_live_add(sp, sc.segs[i].seq, sc.segs[i].live);
        }
    }
    if (seq_max != NULL)
        *seq_max = sc.seq_max;
    rc = 0;

fail:
    for (i = 0; i < sc.seg_count; i++) {
        int fd;

        if (sc.segs[i].map == NULL)
            continue;
        munmap((void *)sc.segs[i].map, sc.segs[i].size);
        if (repair)
            continue;
        /*
         * A tool read a running daemon's segments: drop the pages, or the
         * daemon's O_DIRECT writes to its live one go through io-wq.
         */
        fd = openat(dir_fd, sc.segs[i].name, O_RDONLY | O_CLOEXEC);
        if (fd >= 0) {
            (void)posix_fadvise(fd, 0, 0, POSIX_FADV_DONTNEED);
            close(fd);
        }
    }
    for (i = 0; i < sc.msg_count; i++) {
        free(sc.msgs[i].done);
        free(sc.msgs[i].defers);
    }
    free(sc.segs);
    free(sc.msgs);
    free(sc.slots);
    free(sc.marks);
    return rc;
}


/* spool_scan - report a shard directory's live messages, change nothing */
int
spool_scan(const char *shard_dir, spool_recovered_fn *cb, void *arg,
           struct spool_scan_stats *st)
{
    struct spool_scan_stats local;
    int dir_fd, rc;

    if (st == NULL)
        st = &local;
    memset(st, 0, sizeof *st);
    dir_fd = open(shard_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (dir_fd < 0)
        return -errno;
    rc = spool_scan_run(dir_fd, 0, 0, cb, arg, st, NULL, NULL);
    close(dir_fd);
    return rc;
}


/* spool_mem_free - release what spool_open() allocated */
static void
spool_mem_free(struct spool *sp)
{
    unsigned i;

    for (i = 0; i < 2; i++) {
        if (sp->batches[i] != NULL)
            free(sp->batches[i]->buf);
        free(sp->batches[i]);
        sp->batches[i] = NULL;
    }
    if (sp->prep != NULL) {
        if (sp->prep->zeros != NULL)
            munmap((void *)sp->prep->zeros, SPOOL_ZERO_BYTES);
        free(sp->prep->hdr);
        free(sp->prep);
    }
    free(sp->dir);
    free(sp->live);
    sp->live = NULL;
    sp->live_count = sp->live_cap = 0;
    sp->prep = NULL;
    sp->fill = NULL;
    sp->dir = NULL;
}


/* spool_open - recover shard_dir, then open a fresh segment */
int
spool_open(struct spool *sp, struct loop *lp, const char *shard_dir,
           unsigned shard_id, uint64_t segment_bytes,
           spool_recovered_fn *cb, void *cb_arg)
{
    uint64_t r = 0;
    unsigned i;
    void *zeros;
    int rc;

    ASSERT(segment_bytes >= 4096);
    memset(sp, 0, sizeof *sp);
    sp->lp = lp;
    sp->dir = xstrdup(shard_dir);
    sp->shard_id = shard_id;
    /* Whole blocks, and room for a batch after the SEGHDR block. */
    sp->segment_bytes = MAX(segment_bytes + SPOOL_REC_BLOCK - 1,
                            (uint64_t)2 * SPOOL_REC_BLOCK) &
                        ~(uint64_t)(SPOOL_REC_BLOCK - 1);
    sp->dir_fd = -1;
    sp->seg_fd = -1;
    sp->queue_tail = &sp->queue_head;
    sp->mark_tail = &sp->mark_head;
    sp->lazy_tail = &sp->lazy_head;
    sp->probe_op.done = spool_probe_done;

    if (mkdir(shard_dir, 0750) < 0 && errno != EEXIST) {
        rc = -errno;
        goto fail;
    }
    sp->dir_fd = open(shard_dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (sp->dir_fd < 0) {
        rc = -errno;
        goto fail;
    }
    rc = spool_scan_run(sp->dir_fd, shard_id, 1, cb, cb_arg, &sp->recovered,
                        &sp->seg_seq_max, sp);
    if (rc < 0)
        goto fail;

    if (getrandom(&r, sizeof r, GRND_NONBLOCK) != (ssize_t)sizeof r)
        r ^= now_us() ^ ((uint64_t)getpid() << 32);
    sp->rand_state = r;
    sp->id_nonce = ((uint64_t)time(NULL) ^ spool_rand(sp)) &
                   0xffffffffffffull;
    sp->direct = 1;
    if (spool_force_buffered)
        spool_direct_refused(sp);
    sp->batches[0] = spool_batch_new(sp);
    sp->batches[1] = spool_batch_new(sp);
    sp->fill = sp->batches[0];
    sp->prep = xcalloc(1, sizeof *sp->prep);
    sp->prep->sp = sp;
    sp->prep->fd = -1;
    sp->prep->open_op.done = spool_prep_open_done;
    for (i = 0; i < ARRAY_SIZE(sp->prep->steps); i++) {
        sp->prep->steps[i].p = sp->prep;
        sp->prep->steps[i].op.done = spool_prep_step_done;
    }
    sp->prep->hdr = spool_block_alloc(SPOOL_DATA_OFF);
    /* Untouched anonymous memory reads as zeros and costs no RSS. */
    zeros = mmap(NULL, SPOOL_ZERO_BYTES, PROT_READ,
                 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (zeros == MAP_FAILED) {
        rc = -errno;
        goto fail;
    }
    sp->prep->zeros = zeros;
    rc = spool_seg_boot(sp);
    /* Some file systems open O_DIRECT files but refuse their writes. */
    if (rc == -EINVAL && sp->direct) {
        spool_direct_refused(sp);
        rc = spool_seg_boot(sp);
    }
    if (rc < 0)
        goto fail;
    /* Segments whose messages were all done before the restart. */
    spool_reclaim(sp);
    return 0;

fail:
    if (sp->dir_fd >= 0)
        close(sp->dir_fd);
    sp->dir_fd = -1;
    spool_mem_free(sp);
    return rc;
}


/* spool_close - release an idle spool: fds, buffers, the probe timer */
void
spool_close(struct spool *sp)
{
    struct spool_prep *p = sp->prep;
    struct io_uring_sqe *sqe;

    ASSERT(spool_idle(sp));
    sp->closing = 1;
    if (sp->probe_armed) {
        sqe = loop_sqe(sp->lp, NULL);
        io_uring_prep_timeout_remove(sqe, (uint64_t)(uintptr_t)&sp->probe_op,
                                     0);
        /* Its CQE points into sp: wait for it before sp goes away. */
        while (sp->probe_armed)
            loop_run_once(sp->lp, 100);
    }
    /* At shutdown blocking calls are fine. */
    if (p->state == SPOOL_PREP_READY) {
        /* Made ahead and never used: it holds nothing but its header. */
        close(p->fd);
        (void)unlinkat(sp->dir_fd, p->name, 0);
    }
    if (sp->seg_fd >= 0)
        close(sp->seg_fd);
    close(sp->dir_fd);
    spool_mem_free(sp);
    sp->seg_fd = -1;
    sp->dir_fd = -1;
}
