/* metrics.c - the body of GET /metrics (Prometheus text): each module
 * writes its own part. */
#include "admin/gateway.h"
#include "cluster/cluster.h"
#include "cluster/durable.h"
#include "entity/entity.h"
#include "host/host.h"
#include "net/http.h"

/* The order is the exposition's: instances, messages and scripts, then
 * persisted messages, HTTP, and the cluster when there is one. */
void gateway_metrics(buf_t *b, const gateway_t *gw) {
  const gateway_info_t *gi = &gw->info;
  em_metrics(gi->em, b);
  host_metrics(gi->host, b);
  durable_metrics(gi->durable, b);
  http_metrics(b, gw->http);
  host_otlp_metrics(gi->host, b);
  if (cluster_on(gi->cluster)) cluster_metrics(gi->cluster, b);
}
