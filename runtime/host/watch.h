/* watch.h - watches a host's script directory (and lib/) and reloads what
 * changed. */
#ifndef LUSTER_WATCH_H
#define LUSTER_WATCH_H

#include <uv.h>

typedef struct host_s host_t;

/* Starts watching h's directory on loop; changes are debounced, then
 * host_rescan runs. The watcher belongs to h (one at most). */
int watch_start(host_t *h, uv_loop_t *loop);
/* Stops h's watcher, if one runs (again: nothing); its memory goes once the
 * loop has run the close callbacks of its handles. */
void watch_stop(host_t *h);

#endif
