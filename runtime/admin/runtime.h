/* runtime.h - one whole runner as a value: its loop, scheduler, stores,
 * scripts, HTTP gateway and (on PostgreSQL) cluster membership, built from a
 * checked config, run on the caller's thread until stopped, then freed.
 * Several can live in one process, each run on a thread of its own. */
#ifndef LUSTER_RUNTIME_H
#define LUSTER_RUNTIME_H

#include <stddef.h>
#include <uv.h>

#include "cli/config.h"
#include "host/host.h"
#include "loop/sched.h"

typedef struct runtime_s runtime_t;

/* Create and run a runtime on the same thread: the host counts the CPU-time
 * budget of Lua handlers with a timer on the CPU time of the thread that
 * creates the first Lua state (host/host.c).
 *
 * Builds a runtime from cfg, already checked by config_check_run and with
 * cfg->dir set; cfg's strings must outlive the runtime (it keeps a copy of
 * the struct, not of the strings). Opens the storage, loads the scripts and
 * listens for HTTP (port 0: any free port, see runtime_http_port), without
 * running anything yet. NULL, with the reason in err (one line, no prefix),
 * when it cannot. Process-wide settings are the caller's: SIGPIPE ignored,
 * the log level. */
runtime_t *runtime_new(const config_t *cfg, char *err, size_t errlen);
/* As runtime_new, with the scheduler on clock clk from the start (NULL: the
 * real clock); clk outlives the runtime. luster test builds its runtimes on
 * a virtual clock, with --http none and --no-reload, and drives their loop
 * itself (admin/testrt.c) instead of calling runtime_run. */
runtime_t *runtime_new_on(const config_t *cfg, const lclock_t *clk, char *err, size_t errlen);
/* Runs the runtime's own loop on the calling thread until runtime_stop has
 * finished in-flight work (or --shutdown-timeout passed), then releases what
 * it runs (instances, tasks, stores, the HTTP server) and logs "stopped".
 * Returns the exit status of a runner: 0. Call it at most once. */
int runtime_run(runtime_t *rt);
/* Asks the runtime to stop gracefully: stop accepting HTTP, leave the
 * cluster, finish in-flight messages. Safe from any thread and from a
 * signal's loop callback; more calls change nothing; a no-op once runtime_run
 * has returned. */
void runtime_stop(runtime_t *rt);
/* Frees the runtime (after runtime_run returned, or instead of running it). */
void runtime_free(runtime_t *rt);

/* The HTTP port as bound (0 without HTTP: --http none). */
int runtime_http_port(const runtime_t *rt);
/* The HTTP address as bound ("127.0.0.1:41234"), or "none". */
const char *runtime_http_addr(const runtime_t *rt);
/* The runtime's own loop, for handles of its owner (the CLI's signals);
 * they are closed by the runtime when it stops. */
uv_loop_t *runtime_loop(runtime_t *rt);

/* The runtime's modules, for luster test's harness (admin/testrt.c), which
 * drives them without HTTP. */
struct em_s;
struct gateway_s;
struct durable_s;
sched_t *runtime_sched(runtime_t *rt);
host_t *runtime_host(runtime_t *rt);
struct em_s *runtime_em(runtime_t *rt);
struct gateway_s *runtime_gateway(runtime_t *rt);
struct durable_s *runtime_durable(runtime_t *rt);

/* The host's settings for cfg, on scheduler s, wired to the entity manager
 * and the placement table (also for `luster check`, which runs no runtime). */
struct wiring_s;
void runtime_host_config(const config_t *cfg, sched_t *s, struct wiring_s *w, host_config_t *hc);

#endif
