/* counters.c - per-type-name counters (see counters.h).
 *
 * A reload replaces a type's etype_t with a fresh one, and a removed file
 * frees its types; counters kept on etype_t would restart from zero or
 * vanish, which Prometheus reads as a counter reset. So each etype_t points
 * at the record of its name here, which lives until the process exits. The
 * list is process-wide state beside the type registry (scripts.c), and grows
 * only with the distinct type names ever defined. */
#include "host/counters.h"

#include <stdlib.h>
#include <string.h>

static host_counters_t *host_counters_list, **host_counters_tail = &host_counters_list;

host_counters_t *host_counters_for(const char *name, size_t len, int entity) {
  for (host_counters_t *c = host_counters_list; c; c = c->next)
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
  *host_counters_tail = c;
  host_counters_tail = &c->next;
  return c;
}

host_counters_t *host_counters(void) { return host_counters_list; }

void host_counters_free(void) {
  while (host_counters_list) {
    host_counters_t *c = host_counters_list;
    host_counters_list = c->next;
    free(c->name);
    free(c);
  }
  host_counters_tail = &host_counters_list;
}
