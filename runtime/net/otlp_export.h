/* otlp_export.h - sends finished spans to an OTLP/HTTP receiver (an
 * OpenTelemetry Collector, Jaeger, Tempo...) as protobuf (the default) or
 * JSON, off the caller's path:
 * a bounded queue, batches POSTed by a timer, one request in flight. When
 * the receiver is slow or down, spans are dropped and counted, never
 * waited for. */
#ifndef LUSTER_OTLP_EXPORT_H
#define LUSTER_OTLP_EXPORT_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "core/otlp.h"

#define OTLP_EXPORT_CAP 4096         /* default queue capacity, in spans */
#define OTLP_EXPORT_BATCH 512        /* spans per request at most; a full batch is sent at once */
#define OTLP_EXPORT_INTERVAL_MS 1000 /* a partial batch waits at most this long */
#define OTLP_EXPORT_TIMEOUT_MS 10000 /* a request's limit, from resolving the host to the answer */

typedef struct otlp_exporter_s otlp_exporter_t;

typedef struct {
  uint64_t sent;     /* spans the receiver answered 2xx for */
  uint64_t dropped;  /* spans refused: the queue was full, or the exporter closing */
  uint64_t failed;   /* spans of requests that failed (no connection, timeout, non-2xx) */
  uint64_t requests; /* requests finished, either way */
  size_t queued;     /* spans waiting now */
  size_t in_flight;  /* spans in the request under way */
  int failing;       /* 1 while the last request failed */
  char last_error[160]; /* why the last failed request failed ("" if none did) */
} otlp_exporter_stats_t;

/* Told when requests start failing (failing 1, with the reason) and when one
 * succeeds again (failing 0), not at every request, so a log fed from it
 * says once that the collector is down. */
typedef void (*otlp_exporter_state_cb)(void *ud, int failing, const char *why);
/* Called once the exporter is gone, with its final counts. */
typedef void (*otlp_exporter_close_cb)(void *ud, const otlp_exporter_stats_t *final);

/* An exporter POSTing to url ("http://host[:port]/path"; port 80 when
 * absent; host a name, an IPv4 address or a bracketed IPv6 one) that queues
 * at most cap spans (0: OTLP_EXPORT_CAP). NULL with *err set (free it) when
 * the URL is not one it can send to. */
otlp_exporter_t *otlp_exporter_new(uv_loop_t *loop, const char *url, size_t cap, char **err);

/* NULL when url is an endpoint otlp_exporter_new takes, else why not
 * (malloc'd), for checking a setting before anything starts. */
char *otlp_endpoint_check(const char *url);

/* The service.instance.id of every batch (copied; NULL for none). */
void otlp_exporter_set_runner(otlp_exporter_t *ex, const char *runner);
/* The encoding of the requests (OTLP_PROTOBUF unless set); set it before
 * adding spans: spans queued already are dropped, encoded the other way. */
void otlp_exporter_set_protocol(otlp_exporter_t *ex, otlp_protocol_t proto);
/* Batch size, batch interval and request timeout (0 keeps a value). */
void otlp_exporter_set_timing(otlp_exporter_t *ex, size_t batch, uint64_t interval_ms, uint64_t timeout_ms);
void otlp_exporter_on_state(otlp_exporter_t *ex, otlp_exporter_state_cb cb, void *ud);

/* Queues span, encoded at once (its strings are not kept). Never waits:
 * returns 0, or -ENOBUFS when the queue is full or the exporter closing
 * (counted dropped). */
int otlp_exporter_add(otlp_exporter_t *ex, const otlp_span_t *span);

/* 1 (and the span counted dropped) when otlp_exporter_add would refuse a
 * span now, so a caller skips building it; else 0. */
int otlp_exporter_refuses(otlp_exporter_t *ex);

/* Sends everything queued now, batch after batch, without waiting for the
 * timer. */
void otlp_exporter_flush(otlp_exporter_t *ex);

/* 1 when nothing is queued or in flight. */
int otlp_exporter_idle(const otlp_exporter_t *ex);

void otlp_exporter_stats(const otlp_exporter_t *ex, otlp_exporter_stats_t *out);

/* Stops taking spans, sends what is queued (after the first failed request
 * the rest is counted failed without trying), closes its handles, frees the
 * exporter and calls cb (may be NULL). ex is not to be used after this call;
 * a second call before cb is ignored. */
void otlp_exporter_close(otlp_exporter_t *ex, otlp_exporter_close_cb cb, void *ud);

#endif
