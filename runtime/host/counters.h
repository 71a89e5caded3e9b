/* counters.h - the per-type counters of /metrics, kept by type name so they
 * are monotonic for the life of their host (runtime) across reloads. */
#ifndef LUSTER_COUNTERS_H
#define LUSTER_COUNTERS_H

#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/histo.h"
#include "loop/msg.h"

typedef struct host_counters_s host_counters_t;
typedef struct host_s host_t;
/* The handler-time histogram of one RPC tag of a type, kept like the
 * counters across reloads; rpc_def_t caches a pointer to its `h`. */
typedef struct host_rpc_histo_s host_rpc_histo_t;
struct host_rpc_histo_s {
  host_rpc_histo_t *next; /* in order of first definition */
  char *tag;
  size_t tag_len;
  histo_t h;
};
struct host_counters_s {
  host_counters_t *next; /* in order of first definition */
  char *name;
  size_t name_len;
  int entity; /* the name's latest definition is an entity type */
  uint64_t activations, passivations;
  uint64_t state_writes; /* durable types: saved states written (or deleted), unchanged ones not counted */
  uint64_t outcomes[REPLY__COUNT];
  host_rpc_histo_t *rpcs, **rpcs_tail; /* luster_rpc_duration_seconds, per tag */
};

/* The counters of type `name` in h, created (at zero) on its first
 * definition; the same record for every later version of the type. */
host_counters_t *host_counters_for(host_t *h, const char *name, size_t len, int entity);
/* The histogram of RPC `tag` of c, created empty on its first definition. */
histo_t *host_counters_rpc(host_counters_t *c, const char *tag, size_t len);
/* Every type name defined since the start, removed ones included. */
host_counters_t *host_counters(const host_t *h);
/* From host_free. */
void host_counters_free(host_t *h);
/* GET /metrics: these counters per type name, messages per outcome, and
 * each script's memory and load errors. */
void host_metrics(const host_t *h, buf_t *b);

#endif
