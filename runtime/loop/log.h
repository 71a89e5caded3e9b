/* log.h - the one logging function, with levels. */
#ifndef LUSTER_LOG_H
#define LUSTER_LOG_H

#include <stddef.h>

typedef enum { LOG_DEBUG = 0, LOG_INFO, LOG_WARN, LOG_ERROR, LOG_OFF } log_level_t;

void log_set_level(log_level_t lvl);
int log_parse_level(const char *s, log_level_t *out);
int log_enabled(log_level_t lvl);
/* This thread's copy of every line logged at an enabled level or, with a sink
 * set, at info and above whatever the level (luster test's T.logs): `text`
 * is the line without its timestamp and newline ("WARN defect ..."). One
 * sink per thread, since a test runtime runs on the thread that made it;
 * fn NULL removes it. */
typedef void (*log_sink_fn)(void *ud, log_level_t lvl, const char *text, size_t len);
void log_set_sink(log_sink_fn fn, void *ud);
void log_msg(log_level_t lvl, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define log_debug(...) do { if (log_enabled(LOG_DEBUG)) log_msg(LOG_DEBUG, __VA_ARGS__); } while (0)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_warn(...) log_msg(LOG_WARN, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

#endif
