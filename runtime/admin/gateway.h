/* gateway.h - the HTTP routes of a runner: entities, /cluster, /metrics,
 * /health. */
#ifndef LUSTER_GATEWAY_H
#define LUSTER_GATEWAY_H

#include "core/buf.h"
#include "loop/sched.h"
#include "net/http.h"

typedef struct gateway_info_s {
  const char *runner;    /* ctx.runner */
  const char *http_addr; /* as bound */
  const char *storage;
  const char *dir;
  uint32_t shards;
  uint64_t started_ms;
  uint64_t call_timeout_ms;
  const char *admin; /* who may use the admin routes: "loopback", "any" or "none" */
  sched_t *sched;    /* the runtime's scheduler: calls wait on it */
  struct cluster_s *cluster; /* the runtime's cluster (off with one runner), router and durable delivery */
  struct router_s *router;
  struct durable_s *durable;
  struct em_s *em;   /* the runtime's entity manager */
  struct host_s *host; /* the runtime's scripts and types */
} gateway_info_t;

/* The gateway of one runtime: what its routes answer with. The admin files
 * (gateway.c, metrics.c, cluster_json.c) share its fields. */
typedef struct gateway_s {
  gateway_info_t info; /* its strings belong to the owner and outlive the gateway */
  http_server_t *http; /* the server it answers on (its stats); NULL with --http none */
} gateway_t;

/* NULL when out of memory. */
gateway_t *gateway_new(const gateway_info_t *info);
void gateway_free(gateway_t *gw);
/* The server whose counters GET /metrics reports (set once it listens). */
void gateway_set_http(gateway_t *gw, http_server_t *http);
/* The http_request_cb of the runtime's server: ud is its gateway_t. */
void gateway_on_request(void *ud, http_req_t *req);
/* GET /cluster (admin/cluster_json.c). */
void gateway_cluster_json(buf_t *b, const gateway_t *gw);
/* GET /metrics (admin/metrics.c). */
void gateway_metrics(buf_t *b, const gateway_t *gw);

#endif
