/* watch.c - inotify (through uv_fs_event) on the script directory and on
 * every directory below lib/, debounced: editors write a file in several
 * steps, or write a temporary file and rename it into place, and one save
 * should reload once. The rescan compares content hashes, so an event that
 * changed nothing reloads nothing. */
#include "host/watch.h"

#include <stdlib.h>
#include <string.h>

#include "loop/log.h"
#include "host/host_int.h"

/* Long enough to gather the events of one save, short enough that a new
 * version serves well within 100 ms of the write. */
#define WATCH_DEBOUNCE_MS 25

typedef struct watch_dir_s {
  uv_fs_event_t ev;
  char *path;
  uv_timer_t *timer; /* its watcher's debounce */
  struct watch_dir_s *next;
} watch_dir_t;

/* One host's watcher (host_t.watch): freed with its timer's close. */
typedef struct watch_s {
  host_t *host;
  uv_loop_t *loop;
  uv_timer_t timer; /* the debounce; data: this watcher */
  watch_dir_t *dirs;
} watch_t;

static void watch__refresh(watch_t *w);

static void watch__fire(uv_timer_t *t) {
  watch_t *w = t->data;
  host_reload_report_t rep;
  host_rescan(w->host, &rep, NULL);
  if (rep.loaded + rep.reloaded + rep.removed + rep.failed)
    log_info("script directory changed: %d loaded, %d reloaded, %d removed, %d failed", rep.loaded, rep.reloaded,
             rep.removed, rep.failed);
  watch__refresh(w); /* lib/ directories may have come or gone */
}

static void watch__event(uv_fs_event_t *h, const char *filename, int events, int status) {
  (void)filename;
  (void)events;
  if (status < 0) return;
  watch_dir_t *d = h->data;
  uv_timer_start(d->timer, watch__fire, WATCH_DEBOUNCE_MS, 0);
}

static void watch__close_cb(uv_handle_t *h) {
  watch_dir_t *w = h->data;
  free(w->path);
  free(w);
}

static void watch__refresh(watch_t *wt) {
  char **dirs;
  int n = host_watch_dirs(wt->host, &dirs);
  /* Drop watches on directories that are gone. */
  watch_dir_t **pp = &wt->dirs;
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
    w->timer = &wt->timer;
    uv_fs_event_init(wt->loop, &w->ev);
    w->ev.data = w;
    int rc = uv_fs_event_start(&w->ev, watch__event, w->path, 0);
    if (rc != 0) {
      log_warn("cannot watch %s for changes: %s", w->path, uv_strerror(rc));
      uv_close((uv_handle_t *)&w->ev, watch__close_cb);
      continue;
    }
    w->next = wt->dirs;
    wt->dirs = w;
  }
  free(dirs);
}

int watch_start(host_t *h, uv_loop_t *loop) {
  if (h->watch) return 0;
  watch_t *w = calloc(1, sizeof *w);
  if (!w) return -1;
  w->host = h;
  w->loop = loop;
  uv_timer_init(loop, &w->timer);
  w->timer.data = w;
  h->watch = w;
  watch__refresh(w);
  return 0;
}

static void watch__timer_closed(uv_handle_t *t) { free(t->data); }

void watch_stop(host_t *h) {
  watch_t *w = h->watch;
  if (!w) return;
  h->watch = NULL;
  uv_timer_stop(&w->timer);
  while (w->dirs) {
    watch_dir_t *d = w->dirs;
    w->dirs = d->next;
    uv_fs_event_stop(&d->ev);
    uv_close((uv_handle_t *)&d->ev, watch__close_cb);
  }
  uv_close((uv_handle_t *)&w->timer, watch__timer_closed);
}
