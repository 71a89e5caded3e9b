/* host.h - the Lua side of the runtime: one lua_State per script file, with
 * a capped allocator and an instruction budget; definitions read from the
 * scripts; handlers run as coroutines that yield on calls and sleeps. */
#ifndef LUSTER_HOST_H
#define LUSTER_HOST_H

#include <lua.h>
#include <stdint.h>

#include "core/buf.h"
#include "core/htab.h"
#include "host/counters.h"
#include "loop/msg.h"
#include "loop/placement.h"
#include "loop/sched.h"

#define HOST_THREAD_POOL 64
/* A persisted message whose handler raises runs at most this many times,
 * waiting HOST_RETRY_BASE_MS, then twice that, and so on, between runs. */
#define HOST_PERSISTED_ATTEMPTS 5
#define HOST_RETRY_BASE_MS 100

/* One runtime's host: its config, scripts, types, tasks, counters and JSON
 * scratch (host_int.h); nothing of it is process-wide. */
typedef struct host_s host_t;
typedef struct script_s script_t;
typedef struct etype_s etype_t;
typedef struct task_s task_t;
struct inst_s;

/* An instance as the host sees it: the entity manager's inst_t
 * (entity/entity.h) holds one and passes it to host_activate / host_handle;
 * the host reports back through host_em_t with the same pointer. */
typedef struct host_inst_s {
  etype_t *type;
  const char *id;
  size_t id_len;
  uint32_t shard;
  int handlers_ref, ctx_ref; /* the instance's handlers and ctx, in its script's registry */
  uint8_t reset; /* durable: a raised run leaves its state in memory unsaved (entity.c re-activates) */
} host_inst_t;

/* What the host tells the entity manager, and asks of it: filled by the
 * entity layer (em_host_ops, entity.h) and handed over in host_config_t, so
 * the host never includes entity/. */
typedef struct host_em_s {
  void *ud; /* the manager (passed to type_init; the others reach it through the type) */
  /* Per type: the manager's own fields in etype_t (created, freed, counted). */
  void (*type_init)(void *ud, etype_t *t);
  void (*type_free)(etype_t *t);
  size_t (*instances)(const etype_t *t);
  /* A reload replaced old by repl (NULL: the type is gone). */
  void (*migrate)(etype_t *old, etype_t *repl);
  /* Outcomes of the work host_activate / host_handle started. */
  void (*activated)(host_inst_t *i, const char *error);
  void (*handled)(host_inst_t *i);
  void (*retry)(host_inst_t *i, msg_t *m, uint64_t delay_ms);
  /* A durable type's handler finished: saves the state, then releases the
   * reply; 1 when it called handled itself. */
  int (*durable_reply)(host_inst_t *i, msg_t *m, reply_kind_t kind, const char *body, size_t len);
  /* ctx:keep_alive and ctx:forget. forget returns -EINVAL for a type that
   * is not durable. */
  void (*keep_alive)(etype_t *t, const char *id, size_t len, int on);
  int (*forget)(etype_t *t, const char *id, size_t len);
} host_em_t;

typedef struct rpc_def_s {
  char *tag;
  size_t tag_len;
  int persisted;
  int has_primary_key;
  int has_deliver_at;
  histo_t *histo; /* its handler times, of its type name (counters.h); set when served */
} rpc_def_t;

typedef enum { DEF_ENTITY, DEF_SINGLETON, DEF_CRON } def_kind_t;

/* One entity type (or singleton / cron job) as defined by a script. */
struct etype_s {
  msg_typeref_t ref; /* first: messages that point at this type (loop/msg.h) */
  etype_t *next;  /* in the registry of live types */
  etype_t *snext; /* in its script's list */
  def_kind_t kind;
  char *name;
  size_t name_len;
  script_t *script;
  int def_ref; /* the definition table, in the script's registry */
  rpc_def_t *rpcs;
  int nrpcs;
  char *cron_expr;
  uint64_t max_idle_ms;
  uint32_t concurrency;
  uint32_t mailbox;
  int durable; /* its instances' state is saved (entity/durable_state.h) */
  /* Entity manager state (see entity.c). */
  struct em_s *em; /* the manager serving it (set by host_em_t.type_init) */
  htab_t instances;
  uint64_t active;
  struct inst_s *idle_head, *idle_tail; /* the manager's instances (entity.h) */
  timer_entry_t idle_timer;
  uint64_t running, queued; /* messages running now, and waiting in mailboxes */
  host_counters_t *counters; /* of its name, kept across versions (counters.h); set when served */
  int retired;         /* replaced by a reload; kept while instances, tasks or messages use it */
  task_t *runner_task; /* singleton / cron */
  struct restart_s *restart; /* pending restart of a singleton / cron job */
};

struct script_s {
  script_t *next;
  host_t *host;       /* its owner: every call that has a script, type or task reaches it here */
  char *path;
  char *file; /* name within the script directory, for messages */
  lua_State *L;
  size_t mem, mem_peak, mem_limit;
  uint64_t budget;
  uint64_t slice;     /* instructions in the current run */
  task_t *current;    /* the task running now, NULL at load time */
  int ref_handle, ref_activate, ref_new_ctx, ref_persist_info, ref_snapshot, ref_run_singleton, ref_run_cron;
  char *error;        /* load error: this script serves nothing */
  char *reload_error; /* a newer version failed to load; this one keeps serving */
  int retired;        /* replaced; closed once nothing runs in it */
  sched_item_t close_item;
  char version[17];   /* first 16 hex digits of the source's SHA-256 */
  etype_t *types;     /* defined by this script */
  int tasks;          /* tasks alive in this state */
  /* Finished coroutines kept for reuse: a message then costs no new thread. */
  lua_State *pool_co[HOST_THREAD_POOL];
  int pool_ref[HOST_THREAD_POOL];
  int pool_n;
  /* A full collection after instances were released (see host.c). */
  timer_entry_t gc_timer;
  uint64_t gc_freed;   /* instances released since the last one */
  uint64_t gc_cost_ms; /* how long the last one took */
};

typedef enum { TASK_ACTIVATE, TASK_HANDLE, TASK_SINGLETON, TASK_CRON } task_kind_t;

struct task_s {
  sched_item_t item;
  task_t *tprev, *tnext; /* every live task, for shutdown */
  timer_entry_t sleep;
  script_t *script;
  lua_State *co;
  int co_ref;
  task_kind_t kind;
  host_inst_t *inst;
  etype_t *type;
  msg_t *msg;
  call_t *call; /* outgoing call this task waits on */
  int nargs;    /* values pushed on co for the next resume */
  int cancelled;
  int reusable; /* finished normally: its coroutine can run the next task */
  int freed;    /* released while queued; the queue frees the struct */
  int waiting;  /* yielded by luster (a call or a sleep), not by the script */
  uint64_t start_ns; /* a handler's start (uv_hrtime), for luster_rpc_duration_seconds */
  uint64_t used; /* instructions this handler or activation ran so far, across its waits */
  int armed;     /* counted by the budget hook (see host.c) */
  volatile int ticks; /* CPU-timer ticks that found it running (see host.c) */
  /* Singletons and cron jobs, for GET /cluster: when it started here (wall
   * ms), and a cron job's last instant run and the next one (0: none yet). */
  uint64_t started_ms, cron_last_ms, cron_next_ms;
  /* Its trace context: a handler's is its message's (with a span of its
   * own while spans are exported), a singleton's or a cron run's a new
   * trace. Calls it makes carry it (spans.c). */
  trace_ctx_t trace;
  uint8_t span_parent[TRACE_SPAN_LEN];
  uint64_t span_start_ns; /* 0: no span recorded */
};

typedef struct host_config_s {
  const char *dir;
  size_t memory_limit;
  uint64_t instruction_budget;
  uint64_t call_timeout_ms;
  uint64_t max_idle_ms;
  const char *runner_name; /* ctx.runner */
  uint32_t shards;
  uint64_t cron_catch_up_ms; /* missed cron instants younger than this run on return */
  const host_em_t *em;                /* the entity manager (required) */
  const placement_ops_t *placement;   /* the cluster (NULL: one runner) */
  sched_t *sched;                     /* the owner's scheduler (required) */
} host_config_t;

/* A host with no scripts yet, keeping a copy of *cfg; NULL without memory. */
/* Puts the luster Lua library compiled into the binary (the files of lua/luster:
 * "luster", "luster.schema", ...) in L's package.preload, chunk names
 * "@luster/NAME.lua". Also for the CLI's own Lua states (luster call's
 * formatter, luster test's busted). A module that does not compile is a
 * build defect: it aborts. */
void host_preload_library(lua_State *L);

host_t *host_new(const host_config_t *cfg);
/* Loads every top-level *.lua of the config's dir. Returns the number of
 * scripts that failed to load (each logged and kept in its script_t); <0
 * when the directory cannot be read. */
int host_load_dir(host_t *h);
/* Ends every running task: messages get `unavailable`, instances are
 * released. Used once, at shutdown, before host_free. */
void host_cancel_tasks(host_t *h);
/* Closes every script (the entity manager's types first freed through
 * cfg.em), stops the watcher, frees the counters and the host. */
void host_free(host_t *h);
const host_config_t *host_config(const host_t *h);
script_t *host_scripts(const host_t *h);
etype_t *host_types(const host_t *h);
etype_t *host_find_type(const host_t *h, const char *name, size_t len);
/* The host of a type (its script's). */
static inline host_t *etype_host(const etype_t *t) { return t->script->host; }
int etype_find_rpc(const etype_t *t, const char *tag, size_t len);

/* Tracing (spans.c). A new trace (random trace and span ids, sampled), a
 * new span id, and the OTLP exporter spans go to (NULL, the default: none
 * are built). host_wall_ns is the span clock (unix ns). */
struct otlp_exporter_s;
void host_trace_new(host_t *h, trace_ctx_t *t);
void host_span_id(host_t *h, uint8_t out[TRACE_SPAN_LEN]);
void host_set_otlp(host_t *h, struct otlp_exporter_s *ex);
struct otlp_exporter_s *host_otlp(const host_t *h);
uint64_t host_wall_ns(void);
/* luster_otlp_spans_total{result} and the queue, for /metrics. */
void host_otlp_metrics(const host_t *h, buf_t *b);

/* What a rescan of the script directory did, as JSON for /admin/reload. */
typedef struct host_reload_report_s {
  int loaded, reloaded, removed, failed, unchanged;
} host_reload_report_t;

/* Rescans the directory: loads new and changed scripts (and those whose lib/
 * modules changed) into fresh states and swaps them in when they load; a
 * failing version leaves the old one serving. `json` (optional) receives
 * {"loaded":[...],"reloaded":[...],"removed":[...],"failed":[{file,message}],
 * "unchanged":N}. */
void host_rescan(host_t *h, host_reload_report_t *rep, buf_t *json);
/* The directories a watcher should watch (the script dir and lib/ below it). */
int host_watch_dirs(host_t *h, char ***dirs);

/* Entity work, called by the entity manager. */
void host_activate(host_inst_t *inst, const char *snapshot, size_t snapshot_len);
void host_handle(host_inst_t *inst, msg_t *msg);
void host_release_instance(host_inst_t *inst);
/* The instance's snapshot() result as bytes (malloc'd), or NULL: its
 * handlers define none or it returned nil, or it failed (out of memory, or
 * it raised) and the malloc'd reason is in *err. */
char *host_snapshot(host_inst_t *inst, size_t *len, char **err);
/* A retired type lost an instance: its script may be closed. */
void host_type_released(etype_t *t);
/* Runs a persisted RPC's payload check, primary key and deliver_at in the
 * target script. Returns the reply kind: REPLY_OK with *pk (malloc'd or NULL)
 * and *deliver_at (epoch ms, 0 = now), else an error kind with *err body. */
reply_kind_t host_persist_info(etype_t *t, int rpc, const char *payload, size_t len, char **pk,
                               uint64_t *deliver_at, char **err, size_t *err_len);
/* Starts singletons and cron jobs. */
void host_start_background(host_t *h);
/* Cluster mode: starts the singletons and cron jobs whose shard this runner
 * now serves, stops those whose shard it lost. */
void host_background_update(host_t *h);
/* Ends the handlers and activations running on the shards in mask[] with
 * `unavailable` (the shard's lease is gone). */
void host_cancel_shard_tasks(host_t *h, const uint8_t *mask);

#endif
