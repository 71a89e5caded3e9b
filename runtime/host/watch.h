/* watch.h - watches the script directory (and lib/) and reloads what changed. */
#ifndef LUSTER_WATCH_H
#define LUSTER_WATCH_H

#include <uv.h>

/* Starts watching; changes are debounced, then host_rescan runs. */
int watch_start(uv_loop_t *loop);
void watch_stop(void);

#endif
