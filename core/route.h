/*
 * route - destinations: where a domain's mail goes, and how much of it a
 *         shard may send there at once
 *
 * SYNOPSIS
 *   struct route_dest *route_dest_get(struct delivery *dl,
 *                                     const char *domain);
 *   void route_resolve(struct delivery *dl, struct route_dest *rd,
 *                      struct dns_req *req, dns_req_fn *cb);
 *   int  route_literal(const struct route_dest *rd,
 *                      struct sockaddr_storage *addr, socklen_t *len);
 *   int  route_throttle_ok(struct delivery *dl, struct route_dest *rd);
 *   void route_throttle_take(struct delivery *dl, struct route_dest *rd);
 *   void route_fini(struct delivery *dl);
 * DESCRIPTION
 *   A destination is a routing domain (the MX set and the binding come
 *   later). route_dest_get() finds or makes the one of domain, hangs it on
 *   its queue destination (qd->user) and reads its options once from the
 *   configuration: the message's binding (policy's msg:binding(), else
 *   the default), conf_domain_find(), conf_binding_gateway() and the limits.
 *
 *   route_resolve() finds the next hops: with a Gateway given as a name,
 *   its addresses (dns_resolve_a); without a Gateway, the domain's MX
 *   hosts (dns_resolve_mx), which connections try in order, at the
 *   domain's Outbound_SMTP_Port. route_literal() is the shortcut for a
 *   Gateway given as an address: no lookup at all.
 *
 *   Limits are per destination and shared out over the shards, each shard
 *   keeping its own accounts (no cross-shard traffic on the hot path):
 *   Max_Outbound_Connections gives each shard ceil(limit / shards)
 *   connections, so the total may exceed the limit by less than the shard
 *   count; Outbound_Throttle_Messages is a token bucket per configuration
 *   bucket (conf.h: scopes that inherit the option share the bucket) and
 *   per shard, refilled at rate / shards, holding at most
 *   max(1, count / shards) tokens: across the shards the rate holds.
 *   route_throttle_ok() says whether a message may start now,
 *   route_throttle_take() spends one token.
 * OWNERSHIP
 *   Destinations and buckets belong to struct delivery (route_fini frees
 *   them); configuration pointers borrow the shard's conf.
 * THREADS
 *   Shard-local.
 * SEE ALSO
 *   delivery.h, delivery_conn.h, conf.h, dns.h
 */
#ifndef RINGMAIL_ROUTE_H
#define RINGMAIL_ROUTE_H

#include <netinet/in.h>
#include <sys/socket.h>

#include "delivery.h"
#include "smtp_client.h"

#define ROUTE_DOWN_MAX_MS 60000  /* a down destination is retried this soon */

struct route_dest {
    struct queue_dest *qd;
    const char *domain;          /* the routing domain, lower case */
    char *domain_own;            /* malloc'd copy behind domain */
    const struct conf_domain *dom;
    const struct conf_binding *binding;
    const struct conf_gateway *gw;   /* NULL: MX */
    const struct conf_throttle *thr;
    unsigned port;               /* the Gateway's, or Outbound_SMTP_Port */
    unsigned conns_max;          /* this shard's share */
    unsigned conns;              /* open, in any state */
    unsigned conns_unready;      /* resolving, connecting, greeting */
    unsigned conns_ready;        /* past EHLO */
    struct dlv_conn *idle;       /* READY and waiting for a message */
    /*
     * Down: every hop failed (refused, unreachable, DNS trouble). Until
     * down_until_ms new items are deferred with down_result, without
     * dialling again for each message (Postfix's "dead destination").
     */
    uint64_t down_until_ms;
    struct smtp_client_result down_result;
    char down_host[256];
    char down_ip[INET6_ADDRSTRLEN + 8];
    struct route_dest *next;     /* dl->dests */
};

struct route_bucket {
    double tokens;
    uint64_t last_ms;
    int primed;
};

struct route_dest *route_dest_get(struct delivery *dl, const char *domain,
                                  const char *binding);
void route_resolve(struct delivery *dl, struct route_dest *rd,
                   struct dns_req *req, dns_req_fn *cb);
int route_literal(const struct route_dest *rd, struct sockaddr_storage *addr,
                  socklen_t *len);
int route_throttle_ok(struct delivery *dl, struct route_dest *rd);
void route_throttle_take(struct delivery *dl, struct route_dest *rd);
void route_fini(struct delivery *dl);

#endif
