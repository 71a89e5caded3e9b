/* wiring.h - fills the callback tables through which the lower layers reach
 * the higher ones (loop/placement.h, host_em_t in host/host.h). */
#ifndef LUSTER_WIRING_H
#define LUSTER_WIRING_H

#include "host/host.h"

/* What the placement table answers with: the runtime's cluster (off with
 * one runner), router and durable delivery, and the table itself (ctx = the
 * wiring). Set the pointers before the loop runs; it must outlive the host. */
typedef struct wiring_s {
  struct cluster_s *cluster;
  struct router_s *router;
  struct durable_s *durable;
  placement_ops_t ops;
} wiring_t;

/* The cluster's answers to placement questions: local, unleased answers
 * while no cluster runs (cluster_on 0). */
const placement_ops_t *wiring_placement(wiring_t *w);
/* Sets hc's placement table (hc->em is the owner's em_host_ops(em)). */
void wiring_host(host_config_t *hc, wiring_t *w);

#endif
