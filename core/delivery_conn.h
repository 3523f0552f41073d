/*
 * delivery_conn - one outbound SMTP connection on the shard's ring, around
 *                 the pure client machine (smtp_client.h)
 *
 * SYNOPSIS
 *   void dlv_conn_start(struct delivery *dl, struct route_dest *rd);
 *   void dlv_conn_wake(struct dlv_conn *c);
 *   void dlv_conn_timeouts(struct delivery *dl, uint64_t now);
 *   void dlv_conn_drain(struct dlv_conn *c);
 *   void dlv_conn_abort(struct dlv_conn *c);
 * DESCRIPTION
 *   dlv_conn_start() opens a connection to destination rd: it resolves
 *   the next hops (route.h), makes a socket (socket(2) with SOCK_NONBLOCK
 *   and SOCK_CLOEXEC, which never blocks; bound to the binding's
 *   Bind_Address when it has one), connects with IORING_OP_CONNECT and
 *   runs the SMTP dialogue. A connect error, a connect timeout or a
 *   refused greeting or EHLO moves on to the next address of the same
 *   host, then to the next MX host. When every hop failed, or the lookup
 *   failed, and no other connection of rd got through, the items ready
 *   for rd get that failure (delivery_fail_ready): a temporary DNS
 *   failure or a connection failure defers them (4.4.x), a permanent DNS
 *   answer (NXDOMAIN, no MX or address, null MX) bounces them.
 *
 *   Once the server is READY the connection takes the destination's next
 *   ready item (delivery_pop) and sends it; after MESSAGE_DONE the
 *   outcome goes to delivery_item_done() and the next ready item of the
 *   same destination goes on the same connection (RSET as needed). When
 *   none is ready the connection waits DLV_CONN_IDLE_MS on rd->idle for
 *   one (dlv_conn_wake() gives it one), then QUITs.
 *
 *   Input: one single-shot recv at a time into the connection's own
 *   buffer, always armed while connected, so a 421 or a close between
 *   messages is seen. Bytes the machine does not take yet (it stops at an
 *   event) are kept and fed again after the driver has acted. Output: the
 *   machine's iovecs are taken after every call into it and queued; one
 *   writev at a time, at most IOV_MAX iovecs each, so no buffer is touched
 *   while the kernel reads it. Queued output that points into a message's
 *   body holds a reference to the message.
 *
 *   Timeouts (RFC 5321 4.5.3.2), checked by dlv_conn_timeouts() from the
 *   shard tick, so they are late by up to its period: connect 30 s,
 *   greeting and EHLO 5 min, MAIL and RCPT 5 min, DATA 2 min, each write
 *   of the body 3 min, the reply to the final dot 10 min, RSET 2 min,
 *   QUIT 10 s, idle DLV_CONN_IDLE_MS. Constants for now.
 *
 *   dlv_conn_drain(): the shard drains: an idle connection QUITs, one
 *   still connecting closes, one with a message finishes it, then QUITs.
 *   dlv_conn_abort() closes now; the recipients of a message in flight
 *   stay as they were in the spool (and count in stats->abandoned when
 *   its data was sent).
 *
 *   A connection is freed once it is closing and nothing is in flight:
 *   close(2) is preceded by a cancel of every operation on the fd
 *   (IORING_ASYNC_CANCEL_ALL), since close alone cancels nothing.
 * OWNERSHIP
 *   struct dlv_conn is malloc'd, owned by struct delivery (dl->conns);
 *   the item being sent is the connection's until its outcome is handed
 *   to delivery_item_done(). The DNS result and the output are malloc'd
 *   and the connection's.
 * THREADS
 *   Shard-local.
 * SECURITY
 *   Every byte read is the remote server's: smtp_client.h bounds replies;
 *   the pending input is at most DLV_CONN_PENDING_MAX bytes, beyond which
 *   the connection is dropped as a protocol error.
 * SEE ALSO
 *   delivery.h, route.h, smtp_client.h
 */
#ifndef RINGMAIL_DELIVERY_CONN_H
#define RINGMAIL_DELIVERY_CONN_H

#include <netinet/in.h>
#include <sys/socket.h>

#include "delivery.h"
#include "dns.h"
#include "smtp_client.h"

#define DLV_CONN_RBUF           4096
#define DLV_CONN_PENDING_MAX    (64 * 1024)
#define DLV_CONN_IDLE_MS        2000
#define DLV_CONN_MESSAGES_MAX   10000     /* then a fresh connection */
#define DLV_CONN_CONNECT_MS     30000
#define DLV_CONN_WRITE_MS       (3 * 60 * 1000)
#define DLV_CONN_QUIT_MS        10000

enum dlv_conn_state {
    DLV_CONN_RESOLVING,          /* next hops being looked up */
    DLV_CONN_CONNECTING,         /* IORING_OP_CONNECT in flight */
    DLV_CONN_GREETING,           /* connected: greeting and EHLO */
    DLV_CONN_BUSY,               /* a message in flight */
    DLV_CONN_IDLE,               /* READY, on rd->idle */
    DLV_CONN_QUIT,               /* QUIT asked: waiting for the end */
    DLV_CONN_CLOSING,            /* cancelled; freed when nothing's left */
};

struct dlv_out;

struct dlv_conn {
    struct delivery *dl;
    struct route_dest *rd;
    enum dlv_conn_state state;
    int fd;

    /* next hops */
    struct dns_req req;
    struct dns_result *res;      /* NULL for a literal Gateway */
    size_t host_i, addr_i;
    int literal_used;
    int tried;                   /* hops tried */
    struct sockaddr_storage addr;
    socklen_t addr_len;
    char host[DNS_NAME_MAX + 1];
    char ip[INET6_ADDRSTRLEN + 8];
    struct smtp_client_result fail;  /* why the last hop failed */

    struct smtp_client smtp;
    struct smtp_client_limits lim;
    unsigned messages;           /* sent on this connection */

    /* the message in flight */
    struct dlv_item *item;
    struct smtp_client_msg cmsg;
    const char **rcpt_ptrs;
    struct smtp_client_result *results;
    struct iovec body_iov;
    int data_sent;               /* its body went on the wire */

    /* I/O */
    struct op connect_op, recv_op, send_op, cancel_op;
    unsigned inflight;           /* ops whose CQE is still to come */
    unsigned connecting : 1;
    unsigned recv_armed : 1;
    unsigned send_busy : 1;
    unsigned flush_wait : 1;     /* input held until the output is out */
    unsigned want_close : 1;     /* close once the output is out */
    unsigned next_hop : 1;       /* after closing, try the next hop */
    unsigned counted_ready : 1;  /* in rd->conns_ready */
    unsigned in_cb : 1;          /* inside a completion: no free */
    struct msghdr send_msg;      /* the sendmsg in flight */
    struct dlv_out *out_head, *out_tail;
    char *pending;               /* unconsumed input, malloc */
    size_t pending_len, pending_cap;
    char rbuf[DLV_CONN_RBUF];

    uint64_t deadline_ms;
    struct dlv_conn *prev, *next;        /* dl->conns */
    struct dlv_conn *idle_prev, *idle_next;  /* rd->idle */
};

void dlv_conn_start(struct delivery *dl, struct route_dest *rd);
void dlv_conn_wake(struct dlv_conn *c);
void dlv_conn_timeouts(struct delivery *dl, uint64_t now);
void dlv_conn_drain(struct dlv_conn *c);
void dlv_conn_abort(struct dlv_conn *c);

#endif
