/*
 * route - see route.h
 */
#include "route.h"

#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"


/*
 * route_dest_get - the destination of domain through binding (NULL or ""
 * for the default), made on first use. A destination with a binding of
 * its own is queued under "domain<TAB>binding": its own connections, its
 * own limits, the binding's source address and EHLO name.
 */
struct route_dest *
route_dest_get(struct delivery *dl, const char *domain, const char *binding)
{
    const struct conf *c = dl->env.conf;
    const struct conf_binding *b = binding != NULL && binding[0] != '\0'
                                       ? conf_binding_find(c, binding)
                                       : NULL;
    char key[600];
    struct queue_dest *qd;
    struct route_dest *rd;
    unsigned limit, shards = dl->env.shard_count;

    /* A binding that a reload or restart removed: the default one. */
    if (b == NULL || b == conf_binding_default(c)) {
        b = conf_binding_default(c);
        qd = queue_dest_get(&dl->q, domain);
    } else {
        snprintf(key, sizeof key, "%s\t%s", domain, b->name);
        qd = queue_dest_get(&dl->q, key);
    }
    rd = qd->user;
    if (rd != NULL)
        return rd;
    rd = xcalloc(1, sizeof *rd);
    rd->qd = qd;
    rd->domain_own = strndup(qd->name, strcspn(qd->name, "\t"));
    rd->domain = rd->domain_own;
    rd->dom = conf_domain_find(c, rd->domain);
    rd->binding = b;
    rd->gw = conf_binding_gateway(rd->binding, rd->dom);
    rd->thr = conf_binding_throttle(rd->binding, rd->dom);
    rd->port = rd->gw != NULL ? rd->gw->port : rd->dom->outbound_smtp_port;
    limit = conf_binding_max_outbound_connections(rd->binding, rd->dom);
    ASSERT(shards > 0);
    /* ceil(limit / shards): every shard may open at least one. */
    rd->conns_max = (limit + shards - 1) / shards;
    ASSERT(rd->conns_max > 0);
    qd->user = rd;
    rd->next = dl->dests;
    dl->dests = rd;
    return rd;
}


/* route_literal - the Gateway's address when it was written as one */
int
route_literal(const struct route_dest *rd, struct sockaddr_storage *addr,
              socklen_t *len)
{
    if (rd->gw == NULL || rd->gw->addr_len == 0)
        return 0;
    memcpy(addr, &rd->gw->addr, rd->gw->addr_len);
    *len = rd->gw->addr_len;
    return 1;
}


/* route_resolve - look up the next hops of rd; cb runs from the loop */
void
route_resolve(struct delivery *dl, struct route_dest *rd,
              struct dns_req *req, dns_req_fn *cb)
{
    ASSERT(dl->dns_ok);
    if (rd->gw != NULL)
        dns_resolve_a(&dl->dns, rd->gw->host, req, cb);
    else
        dns_resolve_mx(&dl->dns, rd->domain, req, cb);
}


/* route_bucket_fill - refill rd's bucket for the time gone by */
static struct route_bucket *
route_bucket_fill(struct delivery *dl, struct route_dest *rd)
{
    const struct conf_throttle *t = rd->thr;
    struct route_bucket *b;
    double share, cap;
    uint64_t now = now_ms();

    if (t == NULL || t->count == 0)
        return NULL;
    ASSERT(t->bucket < dl->env.conf->throttle_bucket_count);
    ASSERT(t->period_ms > 0);
    b = &dl->buckets[t->bucket];
    share = (double)t->count / dl->env.shard_count;
    cap = share > 1.0 ? share : 1.0;
    if (!b->primed) {
        b->primed = 1;
        b->tokens = cap;
    } else if (now > b->last_ms) {
        b->tokens += (double)(now - b->last_ms) * share / t->period_ms;
        if (b->tokens > cap)
            b->tokens = cap;
    }
    b->last_ms = now;
    return b;
}


/* route_throttle_ok - may a message to rd start now? */
int
route_throttle_ok(struct delivery *dl, struct route_dest *rd)
{
    struct route_bucket *b = route_bucket_fill(dl, rd);

    return b == NULL || b->tokens >= 1.0;
}


/* route_throttle_take - a message to rd starts: spend a token */
void
route_throttle_take(struct delivery *dl, struct route_dest *rd)
{
    struct route_bucket *b = route_bucket_fill(dl, rd);

    if (b != NULL)
        b->tokens -= 1.0;
}


/* route_fini - free every destination */
void
route_fini(struct delivery *dl)
{
    struct route_dest *rd, *next;

    for (rd = dl->dests; rd != NULL; rd = next) {
        next = rd->next;
        ASSERT(rd->conns == 0);
        rd->qd->user = NULL;
        free(rd->domain_own);
        free(rd);
    }
    dl->dests = NULL;
}
