/* log.c - timestamped, levelled lines on stderr. One write per line, so lines
 * from a runner stay whole when several runners share a terminal. */
#include "loop/log.h"

#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* Process-wide by nature: one stderr sink for every runtime of the process,
 * set by the command line. Atomic (relaxed) so that runtimes on other
 * threads may read it while it is set. */
static _Atomic int log_level = LOG_INFO;
/* Per thread: a test runtime's capture of its own lines (log_set_sink). */
static _Thread_local log_sink_fn log_sink;
static _Thread_local void *log_sink_ud;
static const char *const log_names[] = {"DEBUG", "INFO ", "WARN ", "ERROR"};

void log_set_level(log_level_t lvl) { atomic_store_explicit(&log_level, (int)lvl, memory_order_relaxed); }

int log_enabled(log_level_t lvl) { return (int)lvl >= atomic_load_explicit(&log_level, memory_order_relaxed); }

int log_parse_level(const char *s, log_level_t *out) {
  static const char *const names[] = {"debug", "info", "warn", "error"};
  for (int i = 0; i < 4; i++)
    if (strcasecmp(s, names[i]) == 0) { *out = (log_level_t)i; return 0; }
  return -1;
}

void log_set_sink(log_sink_fn fn, void *ud) {
  log_sink = fn;
  log_sink_ud = ud;
}

void log_msg(log_level_t lvl, const char *fmt, ...) {
  int out = log_enabled(lvl);
  if (!out && !(log_sink && lvl >= LOG_INFO && lvl < LOG_OFF)) return;
  char line[4096];
  struct timeval tv;
  struct tm tm;
  gettimeofday(&tv, NULL);
  gmtime_r(&tv.tv_sec, &tm);
  int n = (int)strftime(line, sizeof line, "%Y-%m-%dT%H:%M:%S", &tm);
  n += snprintf(line + n, sizeof line - (size_t)n, ".%03dZ ", (int)(tv.tv_usec / 1000));
  int text = n;
  n += snprintf(line + n, sizeof line - (size_t)n, "%s ", log_names[lvl]);
  va_list ap;
  va_start(ap, fmt);
  int m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
  va_end(ap);
  if (m < 0) m = 0;
  n += m;
  if (n > (int)sizeof line - 2) n = (int)sizeof line - 2;
  if (log_sink) log_sink(log_sink_ud, lvl, line + text, (size_t)(n - text));
  if (!out) return;
  line[n++] = '\n';
  ssize_t w = write(STDERR_FILENO, line, (size_t)n);
  (void)w;
}
