/* client.h - `luster call`, `luster status` and `luster where`: one request to a runner's
 * HTTP gateway, printed for people. */
#ifndef LUSTER_CLIENT_H
#define LUSTER_CLIENT_H

#include "cli/config.h"

int client_call(config_t *cfg);
int client_status(config_t *cfg);
int client_where(config_t *cfg);

#endif
