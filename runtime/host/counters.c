/* counters.c - per-type-name counters (see counters.h).
 *
 * A reload replaces a type's etype_t with a fresh one, and a removed file
 * frees its types; counters kept on etype_t would restart from zero or
 * vanish, which Prometheus reads as a counter reset. So each etype_t points
 * at the record of its name here, which lives as long as its host. The list
 * is the host's (host_t.counters), beside its type registry (scripts.c), and
 * grows only with the distinct type names ever defined. */
#include "host/counters.h"

#include <stdlib.h>
#include <string.h>

#include "core/prom.h"
#include "host/host_int.h"

host_counters_t *host_counters_for(host_t *h, const char *name, size_t len, int entity) {
  for (host_counters_t *c = h->counters; c; c = c->next)
    if (c->name_len == len && memcmp(c->name, name, len) == 0) {
      c->entity = entity;
      return c;
    }
  host_counters_t *c = calloc(1, sizeof *c);
  if (!c || !(c->name = malloc(len + 1))) abort(); /* as buf.c: no path on without heap */
  memcpy(c->name, name, len);
  c->name[len] = '\0';
  c->name_len = len;
  c->entity = entity;
  c->rpcs_tail = &c->rpcs;
  *h->counters_tail = c;
  h->counters_tail = &c->next;
  return c;
}

histo_t *host_counters_rpc(host_counters_t *c, const char *tag, size_t len) {
  for (host_rpc_histo_t *r = c->rpcs; r; r = r->next)
    if (r->tag_len == len && memcmp(r->tag, tag, len) == 0) return &r->h;
  host_rpc_histo_t *r = calloc(1, sizeof *r);
  if (!r || !(r->tag = malloc(len + 1))) abort(); /* as buf.c: no path on without heap */
  memcpy(r->tag, tag, len);
  r->tag[len] = '\0';
  r->tag_len = len;
  *c->rpcs_tail = r;
  c->rpcs_tail = &r->next;
  return &r->h;
}

host_counters_t *host_counters(const host_t *h) { return h->counters; }

void host_counters_free(host_t *h) {
  while (h->counters) {
    host_counters_t *c = h->counters;
    h->counters = c->next;
    while (c->rpcs) {
      host_rpc_histo_t *r = c->rpcs;
      c->rpcs = r->next;
      free(r->tag);
      free(r);
    }
    free(c->name);
    free(c);
  }
  h->counters_tail = &h->counters;
}
/* luster_rpc_duration_seconds: one histogram per type name and RPC tag
 * that ran at least once (an RPC never called adds no lines). */
static void host__rpc_durations(const host_t *h, buf_t *b) {
  prom_head(b, "luster_rpc_duration_seconds", "histogram",
            "Handler time per type and RPC: from the handler's start to its outcome.");
  buf_t labels;
  buf_init(&labels);
  for (host_counters_t *c = host_counters(h); c; c = c->next)
    for (host_rpc_histo_t *r = c->rpcs; r; r = r->next) {
      if (!r->h.count) continue;
      labels.len = 0;
      buf_adds(&labels, "type=\"");
      prom_label(&labels, c->name);
      buf_adds(&labels, "\",rpc=\"");
      prom_label(&labels, r->tag);
      buf_adds(&labels, "\"");
      histo_write(b, "luster_rpc_duration_seconds", labels.data, &r->h);
    }
  buf_free(&labels);
}

/* GET /metrics: counters of every type name served since the start (so a
 * reload or a removed file never makes them go back), and the scripts. */
void host_metrics(const host_t *h, buf_t *b) {
  static const struct {
    const char *name, *help;
    size_t off;
  } counters[] = {
      {"luster_activations_total", "Instances activated, per type.", offsetof(host_counters_t, activations)},
      {"luster_passivations_total", "Instances passivated after max_idle, per type.",
       offsetof(host_counters_t, passivations)},
      {"luster_state_writes_total",
       "Durable entity states written to storage (unchanged snapshots are not), per type.",
       offsetof(host_counters_t, state_writes)},
  };
  for (size_t m = 0; m < sizeof counters / sizeof counters[0]; m++) {
    prom_head(b, counters[m].name, "counter", counters[m].help);
    for (host_counters_t *c = host_counters(h); c; c = c->next)
      if (c->entity)
        buf_printf(b, "%s{type=\"%s\"} %llu\n", counters[m].name, c->name,
                   (unsigned long long)*(const uint64_t *)((const char *)c + counters[m].off));
  }
  prom_head(b, "luster_messages_total", "counter", "Messages handled, per type and outcome.");
  for (host_counters_t *c = host_counters(h); c; c = c->next)
    for (int k = 0; k < REPLY__COUNT; k++)
      if (c->outcomes[k])
        buf_printf(b, "luster_messages_total{type=\"%s\",outcome=\"%s\"} %llu\n", c->name,
                   reply_kind_name((reply_kind_t)k), (unsigned long long)c->outcomes[k]);
  host__rpc_durations(h, b);
  prom_head(b, "luster_script_memory_bytes", "gauge", "Bytes held by each script's Lua state.");
  for (script_t *s = host_scripts(h); s; s = s->next)
    if (!s->error) {
      buf_adds(b, "luster_script_memory_bytes{file=\"");
      prom_label(b, s->file);
      buf_printf(b, "\"} %zu\n", s->mem);
    }
  prom_head(b, "luster_script_errors", "gauge", "Scripts that failed to load and are not serving.");
  int errors = 0;
  for (script_t *s = host_scripts(h); s; s = s->next) errors += s->error != NULL;
  buf_printf(b, "luster_script_errors %d\n", errors);
}
