/* wiring.h - fills the callback tables through which the lower layers reach
 * the higher ones (loop/placement.h, host_em_t in host/host.h). */
#ifndef LUSTER_WIRING_H
#define LUSTER_WIRING_H

#include "host/host.h"

/* The cluster's answers to placement questions: local, unleased answers
 * while no cluster runs (cluster_on 0). */
const placement_ops_t *wiring_placement(void);
/* Sets hc's placement table (hc->em is the owner's em_host_ops(em)). */
void wiring_host(host_config_t *hc);

#endif
