/*
 * ringbufs - a provided-buffer ring for multishot recv (liburing 2.3)
 *
 * SYNOPSIS
 *   int   ringbufs_init(struct ringbufs *rb, struct io_uring *ring,
 *                       unsigned short bgid, unsigned count, unsigned size);
 *   char *ringbufs_data(const struct ringbufs *rb, unsigned bid);
 *   void  ringbufs_return(struct ringbufs *rb, unsigned bid);
 *   void  ringbufs_fini(struct ringbufs *rb);
 * DESCRIPTION
 *   ringbufs_init() registers count buffers of size bytes as buffer group
 *   bgid of ring. count must be a power of two (the kernel requires it),
 *   at most RINGBUFS_COUNT_MAX. liburing 2.3 has no
 *   io_uring_setup_buf_ring(), so the ring memory is ours, page-aligned.
 *
 *   A recv armed with IOSQE_BUFFER_SELECT and sqe->buf_group = bgid fills
 *   one of them; its id is cqe->flags >> IORING_CQE_BUFFER_SHIFT.
 *   ringbufs_data() is that buffer; ringbufs_return() gives it back to the
 *   kernel once its bytes have been consumed (or copied).
 * OWNERSHIP
 *   The buffers and the ring memory belong to rb until ringbufs_fini().
 * THREADS
 *   The thread that owns ring.
 * ERRORS
 *   ringbufs_init() returns 0 or -errno (registration refused, ENOMEM).
 *   An empty ring makes recvs fail with -ENOBUFS without IORING_CQE_F_MORE:
 *   the caller re-arms its multishot recv (PLATFORM.md pitfall 4).
 */
#ifndef RINGMAIL_RINGBUFS_H
#define RINGMAIL_RINGBUFS_H

#include <liburing.h>

#define RINGBUFS_COUNT_MAX 32768   /* the kernel's limit on ring entries */

struct ringbufs {
    struct io_uring *ring;
    struct io_uring_buf_ring *br;
    char *mem;
    unsigned count;
    unsigned size;
    unsigned short bgid;
};

int ringbufs_init(struct ringbufs *rb, struct io_uring *ring,
                  unsigned short bgid, unsigned count, unsigned size);
void ringbufs_fini(struct ringbufs *rb);
void ringbufs_return(struct ringbufs *rb, unsigned bid);

/* ringbufs_data - the bytes of buffer bid */
static inline char *
ringbufs_data(const struct ringbufs *rb, unsigned bid)
{
    return rb->mem + (size_t)bid * rb->size;
}

#endif
