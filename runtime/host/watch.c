/* watch.c - inotify (through uv_fs_event) on the script directory and on
 * every directory below lib/, debounced: editors write a file in several
 * steps, or write a temporary file and rename it into place, and one save
 * should reload once. The rescan compares content hashes, so an event that
 * changed nothing reloads nothing. */
#include "host/watch.h"

#include <stdlib.h>
#include <string.h>

#include "loop/log.h"
#include "host/host.h"

/* Long enough to gather the events of one save, short enough that a new
 * version serves well within 100 ms of the write. */
#define WATCH_DEBOUNCE_MS 25

typedef struct watch_dir_s {
  uv_fs_event_t ev;
  char *path;
  struct watch_dir_s *next;
} watch_dir_t;

static uv_loop_t *watch_loop;
static uv_timer_t watch_timer;
static watch_dir_t *watch_dirs;
static int watch_on;

static void watch__refresh(void);

static void watch__fire(uv_timer_t *t) {
  (void)t;
  host_reload_report_t rep;
  host_rescan(&rep, NULL);
  if (rep.loaded + rep.reloaded + rep.removed + rep.failed)
    log_info("script directory changed: %d loaded, %d reloaded, %d removed, %d failed", rep.loaded, rep.reloaded,
             rep.removed, rep.failed);
  watch__refresh(); /* lib/ directories may have come or gone */
}

static void watch__event(uv_fs_event_t *h, const char *filename, int events, int status) {
  (void)h;
  (void)filename;
  (void)events;
  if (status < 0) return;
  uv_timer_start(&watch_timer, watch__fire, WATCH_DEBOUNCE_MS, 0);
}

static void watch__close_cb(uv_handle_t *h) {
  watch_dir_t *w = h->data;
  free(w->path);
  free(w);
}

static void watch__refresh(void) {
  char **dirs;
  int n = host_watch_dirs(&dirs);
  /* Drop watches on directories that are gone. */
  watch_dir_t **pp = &watch_dirs;
  while (*pp) {
    watch_dir_t *w = *pp;
    int keep = 0;
    for (int i = 0; i < n; i++)
      if (dirs[i] && strcmp(dirs[i], w->path) == 0) {
        keep = 1;
        free(dirs[i]);
        dirs[i] = NULL;
      }
    if (keep) {
      pp = &w->next;
    } else {
      *pp = w->next;
      uv_fs_event_stop(&w->ev);
      uv_close((uv_handle_t *)&w->ev, watch__close_cb);
    }
  }
  for (int i = 0; i < n; i++) {
    if (!dirs[i]) continue;
    watch_dir_t *w = calloc(1, sizeof *w);
    w->path = dirs[i];
    uv_fs_event_init(watch_loop, &w->ev);
    w->ev.data = w;
    int rc = uv_fs_event_start(&w->ev, watch__event, w->path, 0);
    if (rc != 0) {
      log_warn("cannot watch %s for changes: %s", w->path, uv_strerror(rc));
      uv_close((uv_handle_t *)&w->ev, watch__close_cb);
      continue;
    }
    w->next = watch_dirs;
    watch_dirs = w;
  }
  free(dirs);
}

int watch_start(uv_loop_t *loop) {
  watch_loop = loop;
  uv_timer_init(loop, &watch_timer);
  watch_on = 1;
  watch__refresh();
  return 0;
}

void watch_stop(void) {
  if (!watch_on) return;
  watch_on = 0;
  uv_timer_stop(&watch_timer);
  uv_close((uv_handle_t *)&watch_timer, NULL);
  while (watch_dirs) {
    watch_dir_t *w = watch_dirs;
    watch_dirs = w->next;
    uv_fs_event_stop(&w->ev);
    uv_close((uv_handle_t *)&w->ev, watch__close_cb);
  }
}
