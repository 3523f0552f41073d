/*
 * metrics - the metrics listener's HTTP answers: Prometheus text format at
 *           /metrics, readiness at /ready (control.h)
 *
 * Counters and gauges are per shard (label shard="N"); histograms are
 * summed over the shards at scrape time (one series each). Every figure
 * comes from the snapshots the shards publish once per tick (stats.h),
 * plus daemon_scriptlet_stats() for the Lua side. Names and meanings are
 * listed in docs/ringmaild.md.
 *
 * SECURITY
 *   The request is untrusted: control.c hands over at most
 *   CONTROL_HTTP_MAX bytes read within CONTROL_HTTP_TIMEOUT_MS; only the
 *   request line is looked at (method, path up to '?', HTTP version);
 *   headers are ignored. Anything else gets 400, 404 or 405.
 */
#include <stdio.h>
#include <string.h>

#include "control.h"
#include "daemon.h"
#include "util.h"

struct metric_def {
    const char *name;
    const char *type;            /* counter or gauge */
    const char *help;
    size_t off;                  /* in struct stats_snap */
};

#define S(x) offsetof(struct stats_snap, x)
static const struct metric_def metric_defs[] = {
    { "ringmail_connections_total", "counter",
      "Inbound SMTP connections accepted.", S(sessions_accepted) },
    { "ringmail_connections_refused_total", "counter",
      "Inbound connections refused (limits, draining, spool failed).",
      S(sessions_refused) },
    { "ringmail_sessions_timed_out_total", "counter",
      "Inbound sessions closed by a timeout.", S(sessions_timed_out) },
    { "ringmail_messages_received_total", "counter",
      "Messages accepted (250 after a durable commit).",
      S(messages_received) },
    { "ringmail_messages_rejected_total", "counter",
      "Commands or messages rejected in the SMTP dialogue.",
      S(messages_rejected) },
    { "ringmail_commit_failures_total", "counter",
      "Messages whose spool commit failed (4xx given).",
      S(commit_failures) },
    { "ringmail_received_bytes_total", "counter",
      "Bytes read from inbound sessions.", S(recv_bytes) },
    { "ringmail_delivered_total", "counter",
      "Recipients delivered (remote 2xx).", S(delivered) },
    { "ringmail_deferred_total", "counter",
      "Recipient delivery attempts deferred (4xx or unreachable).",
      S(deferred) },
    { "ringmail_bounced_total", "counter",
      "Recipients failed by a 5xx (or by the operator).", S(bounced) },
    { "ringmail_expired_total", "counter",
      "Recipients given up on at expiry.", S(expired) },
    { "ringmail_dsns_total", "counter",
      "Delivery status notifications committed.", S(dsns) },
    { "ringmail_outbound_connections_total", "counter",
      "Outbound SMTP connections opened.", S(connections) },
    { "ringmail_outbound_connect_failures_total", "counter",
      "Outbound connections that failed to connect.",
      S(connect_failures) },
    { "ringmail_abandoned_total", "counter",
      "Recipients whose data was sent when a stop dropped the connection.",
      S(abandoned) },
    { "ringmail_spool_commits_total", "counter",
      "Messages made durable in the spool.", S(spool_commits) },
    { "ringmail_spool_syncs_total", "counter",
      "Durable writes (RWF_DSYNC writes or fdatasyncs).",
      S(spool_fdatasyncs) },
    { "ringmail_spool_written_bytes_total", "counter",
      "Bytes written to the spool, padding included.",
      S(spool_bytes_written) },
    { "ringmail_shard_state", "gauge",
      "0 starting, 1 running, 2 draining, 3 stopping, 4 done.", S(state) },
    { "ringmail_sessions", "gauge",
      "Inbound sessions open now.", S(sessions) },
    { "ringmail_queue_messages", "gauge",
      "Messages waiting for delivery (in memory).", S(messages_live) },
    { "ringmail_queue_ready", "gauge",
      "Queue items (message x domain) ready to send.", S(queue_ready) },
    { "ringmail_queue_deferred", "gauge",
      "Queue items waiting for a retry.", S(queue_deferred) },
    { "ringmail_outbound_connections", "gauge",
      "Outbound connections open now.", S(connections_open) },
    { "ringmail_spool_segments", "gauge",
      "Spool segment files on disk.", S(spool_segments) },
    { "ringmail_spool_bytes", "gauge",
      "Disk held by the spool's segments (preallocated size).",
      S(spool_bytes) },
    { "ringmail_spool_failed", "gauge",
      "0 when the spool works, else the errno it failed with.",
      S(spool_failed) },
    { "ringmail_redis_commands_total", "counter",
      "Redis commands sent (all datasources).", S(redis_commands) },
    { "ringmail_redis_replies_total", "counter",
      "Redis replies received.", S(redis_replies) },
    { "ringmail_redis_timeouts_total", "counter",
      "Redis commands failed by their deadline.", S(redis_timeouts) },
    { "ringmail_redis_failed_fast_total", "counter",
      "Redis commands failed at once (circuit open, not connected).",
      S(redis_failed_fast) },
    { "ringmail_redis_connection_lost_total", "counter",
      "Redis commands failed by a lost connection.", S(redis_conn_lost) },
    { "ringmail_redis_connects_total", "counter",
      "Redis connections made.", S(redis_connects) },
    { "ringmail_redis_connect_failures_total", "counter",
      "Redis connection attempts that failed.",
      S(redis_connect_failures) },
    { "ringmail_redis_breaker_opens_total", "counter",
      "Times a Redis circuit breaker opened.", S(redis_breaker_opens) },
    { "ringmail_redis_sends_total", "counter",
      "Pipelined sends to Redis (commands / sends = pipelining).",
      S(redis_batches) },
    { "ringmail_redis_breakers_open", "gauge",
      "Datasources whose circuit is open now.", S(redis_breakers_open) },
    { "ringmail_redis_cache_hits_total", "counter",
      "Datasource lookups answered from the shard's cache.",
      S(redis_cache_hits) },
    { "ringmail_redis_cache_misses_total", "counter",
      "Datasource lookups that went to Redis.", S(redis_cache_misses) },
    { "ringmail_duplicate_window", "gauge",
      "Recipients with a remote 250 whose done-mark is not yet durable: "
      "duplicates a crash now could cause.", S(dup_window) },
    { "ringmail_duplicate_window_max", "gauge",
      "Highest duplicate window since start.", S(dup_window_max) },
};
#undef S

struct hist_def {
    const char *name;
    const char *help;
    size_t off;
};

static const struct hist_def hist_defs[] = {
    { "ringmail_commit_latency_seconds",
      "Spool group commit: batch submitted to durable.",
      offsetof(struct stats_snap, commit) },
    { "ringmail_dot_to_250_latency_seconds",
      "A message's commit: queued at the final dot to durable (its 250).",
      offsetof(struct stats_snap, dot_to_250) },
    { "ringmail_delivery_latency_seconds",
      "Reception to the remote 250, per delivered recipient.",
      offsetof(struct stats_snap, delivery) },
};


/* control_metrics - the whole Prometheus text exposition */
void
control_metrics(struct control *ctl, struct outbuf *o)
{
    struct stats_snap *snaps = xcalloc(ctl->nshards, sizeof *snaps);
    struct daemon_scriptlet_stats ss;
    size_t m, b;
    unsigned i;

    for (i = 0; i < ctl->nshards; i++)
        stats_read(&ctl->shards[i].pub, &snaps[i]);
    outbuf_printf(o, "# HELP ringmail_up 1 while ringmaild runs.\n"
                  "# TYPE ringmail_up gauge\nringmail_up 1\n");
    outbuf_printf(o, "# HELP ringmail_ready 1 when every shard serves.\n"
                  "# TYPE ringmail_ready gauge\nringmail_ready %d\n",
                  control_ready(ctl));
    outbuf_printf(o, "# HELP ringmail_shards Shard threads.\n"
                  "# TYPE ringmail_shards gauge\nringmail_shards %u\n",
                  ctl->nshards);
    for (m = 0; m < ARRAY_SIZE(metric_defs); m++) {
        const struct metric_def *d = &metric_defs[m];

        outbuf_printf(o, "# HELP %s %s\n# TYPE %s %s\n", d->name, d->help,
                      d->name, d->type);
        for (i = 0; i < ctl->nshards; i++) {
            outbuf_printf(o, "%s{shard=\"%u\"} %llu\n", d->name, i,
                          (unsigned long long)*(const uint64_t *)
                          ((const char *)&snaps[i] + d->off));
        }
    }
    for (m = 0; m < ARRAY_SIZE(hist_defs); m++) {
        const struct hist_def *d = &hist_defs[m];
        struct hist sum;
        uint64_t cum = 0;

        memset(&sum, 0, sizeof sum);
        for (i = 0; i < ctl->nshards; i++)
            stats_hist_add(&sum, (const struct hist *)
                           ((const char *)&snaps[i] + d->off));
        outbuf_printf(o, "# HELP %s %s\n# TYPE %s histogram\n", d->name,
                      d->help, d->name);
        for (b = 0; b < HIST_BUCKETS; b++) {
            cum += sum.bucket[b];
            outbuf_printf(o, "%s_bucket{le=\"%g\"} %llu\n", d->name,
                          (double)hist_bounds_us[b] / 1e6,
                          (unsigned long long)cum);
        }
        outbuf_printf(o, "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n"
                      "%s_count %llu\n", d->name,
                      (unsigned long long)sum.count, d->name,
                      (double)sum.sum_us / 1e6, d->name,
                      (unsigned long long)sum.count);
    }
    daemon_scriptlet_stats(&ss);
    outbuf_printf(o, "# HELP ringmail_policy_errors_total Policy callouts "
                  "that failed closed (4xx given).\n"
                  "# TYPE ringmail_policy_errors_total counter\n"
                  "ringmail_policy_errors_total %llu\n",
                  (unsigned long long)ss.callout_errors);
#define SCRIPTLET(name, type, help, field)                                 \
    outbuf_printf(o, "# HELP ringmail_scriptlet_" name " " help "\n"       \
                  "# TYPE ringmail_scriptlet_" name " " type "\n"          \
                  "ringmail_scriptlet_" name " %llu\n",                    \
                  (unsigned long long)ss.field)
    SCRIPTLET("generation", "gauge", "Current policy generation (0: none).",
              generation);
    SCRIPTLET("scripts", "gauge", "Scripts in the current generation.",
              scripts);
    SCRIPTLET("states", "gauge", "Master Lua states alive.", states);
    SCRIPTLET("spare_threads", "gauge", "Cached Lua coroutines.",
              spare_threads);
    SCRIPTLET("callouts_total", "counter", "Policy callouts run.", callouts);
    SCRIPTLET("budget_exhausted_total", "counter",
              "Callouts stopped by their instruction or memory budget.",
              budget_exhausted);
    SCRIPTLET("yields_total", "counter",
              "Callouts suspended on DNS, Redis, sleep.", yields);
    SCRIPTLET("lua_bytes", "gauge", "Memory held by policy states.",
              lua_bytes);
#undef SCRIPTLET
    free(snaps);
}


/* http_reply - status line, headers, body */
static void
http_reply(struct outbuf *out, const char *status, const char *type,
           const char *body, size_t body_len)
{
    outbuf_printf(out, "HTTP/1.0 %s\r\nContent-Type: %s\r\n"
                  "Content-Length: %zu\r\nConnection: close\r\n\r\n",
                  status, type, body_len);
    outbuf_printf(out, "%.*s", (int)body_len, body);
}


/* control_http_answer - one complete (or cut off) request: the response */
int
control_http_answer(struct control *ctl, char *req, size_t len,
                    struct outbuf *out)
{
    static const char text[] = "text/plain; charset=utf-8";
    char *eol, *method, *path, *version, *q, *save = NULL;

    req[len] = '\0';
    eol = strpbrk(req, "\r\n");
    if (eol == NULL) {
        http_reply(out, "400 Bad Request", text, "bad request\n", 12);
        return -1;
    }
    *eol = '\0';
    method = strtok_r(req, " ", &save);
    path = strtok_r(NULL, " ", &save);
    version = strtok_r(NULL, " ", &save);
    if (method == NULL || path == NULL || version == NULL ||
        strtok_r(NULL, " ", &save) != NULL ||
        strncmp(version, "HTTP/1.", 7) != 0) {
        http_reply(out, "400 Bad Request", text, "bad request\n", 12);
        return -1;
    }
    if (strcmp(method, "GET") != 0) {
        http_reply(out, "405 Method Not Allowed", text,
                   "only GET\n", 9);
        return -1;
    }
    q = strchr(path, '?');
    if (q != NULL)
        *q = '\0';
    if (strcmp(path, "/metrics") == 0) {
        struct outbuf body = { 0 };

        control_metrics(ctl, &body);
        http_reply(out, "200 OK", "text/plain; version=0.0.4; "
                   "charset=utf-8", body.p, body.len);
        outbuf_fini(&body);
        return 0;
    }
    if (strcmp(path, "/ready") == 0) {
        if (control_ready(ctl))
            http_reply(out, "200 OK", text, "ready\n", 6);
        else
            http_reply(out, "503 Service Unavailable", text,
                       "not ready\n", 10);
        return 0;
    }
    http_reply(out, "404 Not Found", text, "not found\n", 10);
    return -1;
}
