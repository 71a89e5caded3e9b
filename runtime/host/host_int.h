/* host_int.h - what the host's own files share: states and tasks (host.c),
 * the luster.core functions (core_api.c), loading and reloading (scripts.c). */
#ifndef LUSTER_HOST_INT_H
#define LUSTER_HOST_INT_H

#include <lua.h>

#include "host/host.h"
#include "host/json.h"

/* A pending restart of a singleton or cron job that raised. */
typedef struct restart_s {
  timer_entry_t timer;
  etype_t *type;
} restart_t;

struct lib_file_s;
struct watch_s;

struct host_s {
  host_config_t cfg;
  script_t *scripts; /* one per file, in file name order */
  etype_t *types;    /* the definitions being served */
  script_t *retired; /* replaced versions, closed once nothing uses them */
  int closing;       /* host_free runs: nothing more is closed one by one */
  struct lib_file_s *libs; /* lib/ files and their hashes (scripts.c) */
  size_t nlibs;
  task_t *tasks; /* every live task, for shutdown */
  /* The memory cap applies only while scripts run (enforce_depth > 0): the
   * runner's own pushes of payloads and results never fail on it, so a
   * state that user code filled to the brim can still be handed its next
   * message or error. */
  int enforce_depth;
  host_counters_t *counters, **counters_tail; /* per type name (counters.c) */
  json_t *json;          /* encoder and decoder scratch of every state here */
  struct watch_s *watch; /* the directory watcher, while one runs (watch.c) */
  struct otlp_exporter_s *otlp; /* spans go here; NULL: tracing only propagates */
  uint64_t trace_rng;           /* state of the id generator (spans.c) */
};

/* The script whose state L (or a thread of it) is: in the state's extra
 * space, copied into every thread. */
static inline script_t *host__script(lua_State *L) { return *(script_t **)lua_getextraspace(L); }
/* A new Lua state for s: capped allocator, budget hook, standard libraries,
 * the luster modules preloaded. NULL when it cannot be created. */
lua_State *host__state_new(script_t *s);
/* lua_pcall under the script's memory cap, with a fresh instruction budget. */
int host__pcall(script_t *s, lua_State *L, int nargs, int nres, int msgh);
void host__task_free(task_t *t);
/* The gc_timer of a script: a full collection after instances were released. */
void host__gc_fire(timer_entry_t *te);
void host__task_call_cb(call_t *c, reply_kind_t kind, const char *body, size_t len);
/* Defects (defect.c). The user's innermost file:line in co ("f.lua:3:"),
 * skipping luster's own frames; -1 (and "") when there is none. */
int host__user_where(lua_State *co, char *out, size_t n);
/* Appends "\nstack traceback:" and co's frames from `level` up, without
 * luster's own, or nothing when no frame is left. */
void host__traceback(lua_State *co, int level, buf_t *b);
/* The text of the error value on top of co (left there), worked out in L:
 * strings as they are, tables as JSON (or by their __tostring), null as
 * null, each with the user's file:line first. Malloc'd. */
char *host__error_text(lua_State *L, lua_State *co);
/* Spans (spans.c): a handler run's context and span, and a call's. */
void host__span_handle_start(task_t *t, const msg_t *m);
void host__span_handle_end(task_t *t, reply_kind_t kind, const char *why);
void host__span_call_start(task_t *t, call_t *c, const char *type, size_t tl, const char *rpc, size_t rl);
void host__span_call_end(task_t *t, const call_t *c);
/* luaopen for luster.core (core_api.c). */
int host__open_core(lua_State *L);

#endif
