/*
 * spool_rec - the on-disk record format of spool segments
 *
 * SYNOPSIS
 *   uint64_t spool_rec_size(uint64_t payload_bytes);
 *   uint64_t spool_rec_pad_bytes(uint64_t end);
 *   void spool_rec_hdr_put(void *dst, unsigned type, uint64_t payload_bytes,
 *                          uint32_t payload_crc, uint32_t salt);
 *   int  spool_rec_hdr_get(const void *src, uint32_t salt,
 *                          struct spool_rec_hdr *h);
 *   size_t spool_rec_defer_encode(void *dst, size_t cap, const char *id,
 *                                 uint32_t attempt, uint32_t code,
 *                                 uint32_t rcpt, uint64_t due_unix_ms,
 *                                 const char *enhanced, const char *text,
 *                                 const char *host, uint32_t salt);
 *   uint64_t spool_rec_defer_bytes(size_t id_len, size_t enhanced_len,
 *                                  size_t text_len, size_t host_len);
 *   size_t spool_rec_mark_encode(void *dst, size_t cap, unsigned type,
 *                                const char *id, uint32_t rcpt,
 *                                uint32_t salt);
 *   void spool_rec_pad_encode(void *dst, uint64_t bytes, uint32_t salt);
 * DESCRIPTION
 *   A segment is a sequence of records, each starting at an 8-byte aligned
 *   offset: a fixed 24-byte header, the payload, zero padding up to the
 *   next multiple of 8. Every integer is little-endian.
 *
 *     off len  header field
 *       0   4  magic SPOOL_REC_MAGIC
 *       4   1  type (SPOOL_REC_*)
 *       5   1  version of the payload layout (SPOOL_REC_VERSION)
 *       6   2  zero
 *       8   8  payload bytes (without padding)
 *      16   4  crc32c(0, payload)
 *      20   4  crc32c(salt, header bytes 0..19)
 *
 *   The salt is a random number chosen per segment and stored in its first
 *   record, SEGHDR, whose own header uses salt 0. Seeding the header crc
 *   with it means a record embedded in a message body (an attacker can mail
 *   us a well-formed spool record) never passes for a real one when
 *   recovery resynchronises after a torn or corrupt region.
 *
 *   Unwritten preallocated space reads as zeros; a zero header is the end
 *   of the segment's data.
 *
 *   Each write of records (the SEGHDR, a group commit batch) starts on a
 *   SPOOL_REC_BLOCK boundary and ends on one: a PAD record fills the rest
 *   of its last block. Writes are then whole, aligned blocks (O_DIRECT
 *   takes nothing else), and a block holding acknowledged records is never
 *   written again, so a torn write cannot reach them. PAD makes the
 *   padding a record like any other rather than a run of zeros, so a zero
 *   header keeps its one meaning and a reader that walks records needs no
 *   rule for it. Segments written before PAD existed (records packed
 *   end to end) read the same way.
 *
 *   Payloads, with str = u32 length, the bytes, a NUL (not counted):
 *     SEGHDR  u32 shard id, u32 salt, u64 segment seq, i64 created (unix s),
 *             u64 bytes preallocated at creation
 *     MSG     i64 received (unix s), u64 body bytes, u32 rcpt count,
 *             u32 flags, str id, str sender, str peer, str rcpt * count,
 *             [str binding, str routing domain when flags has
 *             SPOOL_MSG_F_POLICY], body. flags' low byte is the priority
 *             policy gave (1..100, 0: default). Records written before
 *             policy existed have flags 0 and read the same.
 *     END     u64 offset of the MSG record, u32 that MSG's payload crc,
 *             u32 0, str id
 *     DONE    u32 rcpt index or SPOOL_RCPT_ALL, u32 0, str id
 *     DEFER   u32 attempts made, u32 the last reply's code (0: none),
 *             u32 rcpt index, u32 0, u64 next attempt due (unix ms),
 *             str id, str its enhanced code, str its text, str the host
 *             that gave it: a deferral of the recipients delivered
 *             together with rcpt (one destination); recovery gives back
 *             the newest per rcpt index, so that the retry schedule,
 *             Max_Retries and the expiry DSN go on across restarts
 *     PAD     zeros; the record exists to end a write on a block boundary
 *   A message is committed when its MSG record is followed immediately by
 *   an intact END naming it. It stays live until DONE records (anywhere in
 *   the shard's log) cover every recipient.
 *
 *   spool_rec_mark_encode() builds a DONE record (spool_mark(), tests) and
 *   spool_rec_defer_encode() a DEFER record; each returns the record's
 *   size, or 0 when cap is too small. spool_rec_defer_bytes() is that
 *   size.
 *
 *   spool_rec_pad_bytes() is the size of the PAD record that takes a write
 *   ending at segment offset end (8-aligned) to a block boundary: 0 when it
 *   is on one, and one block more when the gap is too short for a header.
 *   spool_rec_pad_encode() writes a PAD record of exactly bytes.
 * OWNERSHIP
 *   Callers own every buffer.
 * THREADS
 *   Pure functions, any thread.
 * ERRORS
 *   spool_rec_hdr_get() returns -EBADMSG for anything but a valid header.
 * SEE ALSO
 *   spool.h, crc32c.h
 */
#ifndef RINGMAIL_SPOOL_REC_H
#define RINGMAIL_SPOOL_REC_H

#include <endian.h>
#include <errno.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include "crc32c.h"

#define SPOOL_REC_MAGIC       0x8e4d5252u     /* "RRM\x8e" on disk */
#define SPOOL_REC_VERSION     1
#define SPOOL_REC_HDR_BYTES   24
#define SPOOL_REC_ALIGN       8
/* Writes start and end on multiples of this: the O_DIRECT unit. */
#define SPOOL_REC_BLOCK       4096
/* Sanity bound for a length read from disk; batches stay far below it. */
#define SPOOL_REC_PAYLOAD_MAX ((uint64_t)1 << 30)

#define SPOOL_REC_SEGHDR 1
#define SPOOL_REC_MSG    2
#define SPOOL_REC_END    3
#define SPOOL_REC_DONE   4
#define SPOOL_REC_DEFER  5
#define SPOOL_REC_PAD    6

#define SPOOL_RCPT_ALL 0xffffffffu

#define SPOOL_MSG_F_PRIO_MASK 0xffu
#define SPOOL_MSG_F_POLICY    0x100u   /* binding, routing domain follow */

#define SPOOL_SEGHDR_PAYLOAD_BYTES 32
#define SPOOL_MSG_FIXED_BYTES      24   /* MSG payload before its strings */
#define SPOOL_END_FIXED_BYTES      16
#define SPOOL_MARK_FIXED_BYTES     8
#define SPOOL_DEFER_FIXED_BYTES    24

/* A decoded, checked header. */
struct spool_rec_hdr {
    unsigned type;
    unsigned version;
    uint64_t payload_bytes;
    uint32_t payload_crc;
};


/* spool_rec_put32 - store a little-endian u32 at p */
static inline void
spool_rec_put32(void *p, uint32_t v)
{
    v = htole32(v);
    memcpy(p, &v, 4);
}


/* spool_rec_put64 - store a little-endian u64 at p */
static inline void
spool_rec_put64(void *p, uint64_t v)
{
    v = htole64(v);
    memcpy(p, &v, 8);
}


/* spool_rec_get32 - load a little-endian u32 from p */
static inline uint32_t
spool_rec_get32(const void *p)
{
    uint32_t v;

    memcpy(&v, p, 4);
    return le32toh(v);
}


/* spool_rec_get64 - load a little-endian u64 from p */
static inline uint64_t
spool_rec_get64(const void *p)
{
    uint64_t v;

    memcpy(&v, p, 8);
    return le64toh(v);
}


/* spool_rec_align - round n up to the record alignment */
static inline uint64_t
spool_rec_align(uint64_t n)
{
    return (n + SPOOL_REC_ALIGN - 1) & ~(uint64_t)(SPOOL_REC_ALIGN - 1);
}


/* spool_rec_size - bytes a record with this payload takes, padding included */
static inline uint64_t
spool_rec_size(uint64_t payload_bytes)
{
    return SPOOL_REC_HDR_BYTES + spool_rec_align(payload_bytes);
}


/* spool_rec_pad_bytes - PAD record size that takes end to a block edge */
static inline uint64_t
spool_rec_pad_bytes(uint64_t end)
{
    uint64_t gap = (SPOOL_REC_BLOCK - end % SPOOL_REC_BLOCK) %
                   SPOOL_REC_BLOCK;

    /* 8 or 16 bytes cannot hold a header: pad through the next block. */
    if (gap != 0 && gap < SPOOL_REC_HDR_BYTES)
        gap += SPOOL_REC_BLOCK;
    return gap;
}


/* spool_rec_str_size - encoded size of a str field */
static inline uint64_t
spool_rec_str_size(size_t len)
{
    return 4 + (uint64_t)len + 1;
}


/* spool_rec_hdr_put - write a record header; the payload crc is known */
static inline void
spool_rec_hdr_put(void *dst, unsigned type, uint64_t payload_bytes,
                  uint32_t payload_crc, uint32_t salt)
{
    unsigned char *h = dst;

    spool_rec_put32(h, SPOOL_REC_MAGIC);
    h[4] = (unsigned char)type;
    h[5] = SPOOL_REC_VERSION;
    h[6] = 0;
    h[7] = 0;
    spool_rec_put64(h + 8, payload_bytes);
    spool_rec_put32(h + 16, payload_crc);
    spool_rec_put32(h + 20, crc32c(salt, h, 20));
}


/* spool_rec_hdr_get - check and decode the header at src (24 bytes) */
static inline int
spool_rec_hdr_get(const void *src, uint32_t salt, struct spool_rec_hdr *h)
{
    const unsigned char *p = src;

    if (spool_rec_get32(p) != SPOOL_REC_MAGIC)
        return -EBADMSG;
    if (spool_rec_get32(p + 20) != crc32c(salt, p, 20))
        return -EBADMSG;
    h->type = p[4];
    h->version = p[5];
    h->payload_bytes = spool_rec_get64(p + 8);
    h->payload_crc = spool_rec_get32(p + 16);
    if (h->payload_bytes > SPOOL_REC_PAYLOAD_MAX)
        return -EBADMSG;
    return 0;
}


size_t spool_rec_mark_encode(void *dst, size_t cap, unsigned type,
                             const char *id, uint32_t rcpt, uint32_t salt);
uint64_t spool_rec_defer_bytes(size_t id_len, size_t enhanced_len,
                               size_t text_len, size_t host_len);
size_t spool_rec_defer_encode(void *dst, size_t cap, const char *id,
                              uint32_t attempt, uint32_t code, uint32_t rcpt,
                              uint64_t due_unix_ms, const char *enhanced,
                              const char *text, const char *host,
                              uint32_t salt);
void spool_rec_pad_encode(void *dst, uint64_t bytes, uint32_t salt);

#endif
