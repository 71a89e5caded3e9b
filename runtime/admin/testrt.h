/* testrt.h - one in-process runtime for `luster test`: a private copy of the
 * script directory, a runtime on a virtual clock without HTTP, cluster or
 * watcher, and the operations a spec drives it with (calls that wait by
 * driving the loop, skipping idle time; advancing the clock; requests
 * through the gateway's routes without a socket; reloads; captured logs). */
#ifndef LUSTER_TESTRT_H
#define LUSTER_TESTRT_H

#include <stddef.h>
#include <stdint.h>

#include "core/buf.h"
#include "loop/msg.h"

typedef struct testrt_s testrt_t;

/* Copies `src_dir` (every file, but spec/ and dot files) to a fresh
 * temporary directory and starts a runtime over it on a virtual clock
 * starting at the real wall clock; `durable` puts it on sqlite:FILE in that
 * directory instead of memory storage (so testrt_restart keeps state).
 * NULL with the reason in err. Process-wide settings are the caller's. */
testrt_t *testrt_new(const char *src_dir, int durable, char *err, size_t errlen);
/* Stops the runtime, removes the temporary directory, frees t. */
void testrt_free(testrt_t *t);
/* Stops the runtime (its in-flight work finished first) and starts a new one
 * over the same copy and storage; the clock keeps its time. 0, or -1 with
 * the reason in err (t then has no runtime and must be freed). */
int testrt_restart(testrt_t *t, char *err, size_t errlen);
int testrt_durable(const testrt_t *t);

/* The virtual wall clock, epoch ms. */
uint64_t testrt_now(const testrt_t *t);
/* Runs what is runnable, then every timer due within ms in time order
 * (running what each makes runnable), and leaves the clock at now + ms. */
void testrt_advance(testrt_t *t, uint64_t ms);

typedef struct testrt_reply_s {
  int done;
  reply_kind_t kind;
  buf_t body;
} testrt_reply_t;
/* One call through the router, as luster.client makes it (timeout 0: the
 * configured default); returns once it is answered, moving the clock to
 * the next due timer whenever nothing else can run. out->body is the
 * caller's to free. */
void testrt_call(testrt_t *t, const char *type, const char *id, const char *rpc, const char *payload, size_t plen,
                 uint64_t timeout_ms, int discard, testrt_reply_t *out);
/* One request through the gateway's routes, without a socket: `headers` is
 * a JSON object with lower-cased names (or NULL). resp receives
 * "STATUS\r\nheader lines\r\n\r\nbody". -1 (and a reason in resp) for an
 * unknown method. */
int testrt_http(testrt_t *t, const char *method, const char *path, const char *body, size_t blen, const char *headers,
                size_t hlen, buf_t *resp);
/* Active instances of a type (id NULL), or 1/0 for one id; -1 for a type
 * that is not served. */
long testrt_active(testrt_t *t, const char *type, const char *id);
/* As em_passivate; -2 for a type that is not served. */
int testrt_passivate(testrt_t *t, const char *type, const char *id);
/* Writes `file` (a path inside the copy) and rescans, as the watcher would;
 * report receives the rescan's JSON (see host_rescan). 0, or -1 with the
 * reason in err when the file cannot be written. */
int testrt_write(testrt_t *t, const char *file, const char *src, size_t len, buf_t *report, char *err,
                 size_t errlen);
/* The log lines captured since the runtime started ("LEVEL text\n" each). */
const buf_t *testrt_logs(const testrt_t *t);

#endif
