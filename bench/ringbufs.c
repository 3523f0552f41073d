/*
 * ringbufs - see ringbufs.h
 */
#include "ringbufs.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"


/* ringbufs_init - register count buffers of size bytes as group bgid */
int
ringbufs_init(struct ringbufs *rb, struct io_uring *ring,
              unsigned short bgid, unsigned count, unsigned size)
{
    struct io_uring_buf_reg reg;
    void *mem;
    unsigned i;
    int rc;

    ASSERT(count > 0);
    ASSERT(count <= RINGBUFS_COUNT_MAX);
    ASSERT((count & (count - 1)) == 0);
    memset(rb, 0, sizeof *rb);
    if (posix_memalign(&mem, 4096, count * sizeof(struct io_uring_buf)) != 0)
        return -ENOMEM;
    rb->br = mem;
    rb->mem = xmalloc((size_t)count * size);
    rb->ring = ring;
    rb->count = count;
    rb->size = size;
    rb->bgid = bgid;

    memset(&reg, 0, sizeof reg);
    reg.ring_addr = (uint64_t)(uintptr_t)rb->br;
    reg.ring_entries = count;
    reg.bgid = bgid;
    rc = io_uring_register_buf_ring(ring, &reg, 0);
    if (rc < 0) {
        free(rb->br);
        free(rb->mem);
        memset(rb, 0, sizeof *rb);
        return rc;
    }
    io_uring_buf_ring_init(rb->br);
    for (i = 0; i < count; i++) {
        io_uring_buf_ring_add(rb->br, ringbufs_data(rb, i), size,
                              (unsigned short)i,
                              io_uring_buf_ring_mask(count), (int)i);
    }
    io_uring_buf_ring_advance(rb->br, (int)count);
    return 0;
}


/* ringbufs_return - hand buffer bid back to the kernel */
void
ringbufs_return(struct ringbufs *rb, unsigned bid)
{
    ASSERT(bid < rb->count);
    io_uring_buf_ring_add(rb->br, ringbufs_data(rb, bid), rb->size,
                          (unsigned short)bid,
                          io_uring_buf_ring_mask(rb->count), 0);
    io_uring_buf_ring_advance(rb->br, 1);
}


/* ringbufs_fini - unregister the group and free the buffers */
void
ringbufs_fini(struct ringbufs *rb)
{
    if (rb->br != NULL)
        io_uring_unregister_buf_ring(rb->ring, rb->bgid);
    free(rb->br);
    free(rb->mem);
    memset(rb, 0, sizeof *rb);
}
