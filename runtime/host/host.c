/* host.c - Lua states and the tasks that run in them: the memory cap and the
 * instruction budget, handlers, activations, singletons and cron jobs run as
 * coroutines.
 *
 * Every resume happens from the ready queue at the top of the loop, so at
 * most one coroutine of one state runs at any moment, and a state's main
 * thread is always idle when C uses it. */
#include "host/host_int.h"

#include <errno.h>
#include <lauxlib.h>
#include <lualib.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <uv.h>

#include "loop/log.h"
#include "core/buf.h"
#include "host/json.h"

/* How often (in VM instructions) the budget hook runs. Small enough that a
 * handler which catches the budget error with pcall is stopped again almost
 * at once; large enough that the hook costs well under 1% of run time. */
#define HOST_HOOK_EVERY 2000
/* CPU time of the thread running the Lua states between two looks at the
 * running task. */
#define HOST_WATCH_NS 10000000L

/* The instruction budget and what it costs. While a count hook is set, Lua
 * 5.4 traps every VM instruction (to count it), which makes Lua code run
 * about half as fast, however rarely the hook itself fires. So a task's
 * coroutine runs unhooked until it has shown it may run long: a timer on the
 * running thread's CPU time raises SIGPROF every HOST_WATCH_NS, and the task
 * running then is charged one tick. Once its ticks add up to the budget read
 * as nanoseconds (as if the VM ran one instruction per nanosecond, faster
 * than it goes), the task's coroutine gets the count hook ("armed", for the
 * rest of its invocation, waits included) and from then on every instruction
 * counts. A handler that loops, between waits or not, is armed after a few
 * ticks and stopped once the counted instructions pass the budget; "ran more
 * than N" stays true, as only instructions after the arming are counted.
 * Coroutines a script creates itself are counted from their start. Setting a
 * hook from a signal handler is what the Lua interpreter itself does to stop
 * a script on Ctrl-C; the VM re-reads its trap at every jump and call.
 * Without the timer (timer_create failed) every run is counted from its
 * start.
 *
 * This state is per thread, not per host: the timer counts one thread's
 * CPU time and signals that thread, so each thread that runs Lua states
 * has one timer, one task being resumed, whatever runtimes it serves. */
static _Thread_local task_t *volatile host_sig_task; /* the task being resumed now */
static _Thread_local int host_lazy_budget;            /* this thread's CPU timer runs */

static void host__hook(lua_State *L, lua_Debug *ar);

static void host__sigprof(int sig) {
  (void)sig;
  task_t *t = host_sig_task;
  /* Armed once: the hook may since run at every instruction (budget spent). */
  if (t && (uint64_t)++t->ticks * HOST_WATCH_NS >= t->script->budget && !lua_gethookmask(t->co))
    lua_sethook(t->co, host__hook, LUA_MASKCOUNT, HOST_HOOK_EVERY);
}

static void host__watch_start(void) {
  static _Thread_local int tried; /* one timer per thread (see above) */
  if (tried) return;
  tried = 1;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_handler = host__sigprof;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  struct sigevent sev;
  memset(&sev, 0, sizeof sev);
  sev.sigev_notify = SIGEV_THREAD_ID;
  sev.sigev_signo = SIGPROF;
  sev._sigev_un._tid = gettid(); /* this thread, which runs its runtime's Lua states */
  timer_t timer;
  struct itimerspec every = {{0, HOST_WATCH_NS}, {0, HOST_WATCH_NS}};
  if (sigaction(SIGPROF, &sa, NULL) != 0 || timer_create(CLOCK_THREAD_CPUTIME_ID, &sev, &timer) != 0) {
    log_warn("no CPU-time timer (%s): every handler run is counted against --instruction-budget from its start, "
             "which slows Lua code down", strerror(errno));
    return;
  }
  if (timer_settime(timer, 0, &every, NULL) != 0) {
    log_warn("no CPU-time timer (%s): every handler run is counted against --instruction-budget from its start",
             strerror(errno));
    timer_delete(timer);
    return;
  }
  host_lazy_budget = 1;
}

/* The cap applies only while scripts run (host_t.enforce_depth). */
static void *host__alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  script_t *s = ud;
  size_t old = ptr ? osize : 0;
  if (nsize == 0) {
    free(ptr);
    s->mem -= old;
    return NULL;
  }
  if (nsize > old && s->host->enforce_depth && s->mem + (nsize - old) > s->mem_limit) return NULL;
  void *p = realloc(ptr, nsize);
  if (!p) return NULL;
  s->mem = s->mem - old + nsize;
  if (s->mem > s->mem_peak) s->mem_peak = s->mem;
  return p;
}

static void host__hook(lua_State *L, lua_Debug *ar) {
  (void)ar;
  script_t *s = host__script(L);
  s->slice += HOST_HOOK_EVERY;
  if (s->slice > s->budget) {
    /* From now on every instruction raises, so a handler that catches the
     * error with pcall and carries on is stopped at its next instruction. */
    lua_sethook(L, host__hook, LUA_MASKCOUNT, 1);
    task_t *t = s->current;
    /* At the user's line: level 1 here is whatever called the looping
     * function, luster's runtime.lua for a handler. */
    char where[256];
    host__user_where(L, where, sizeof where);
    lua_pushfstring(L, "%s%sinstruction budget exceeded: %s ran more than %I Lua VM instructions%s; see --instruction-budget",
                    where, *where ? " " : "",
                    !t ? "the script" : t->kind == TASK_HANDLE ? "the handler" : t->kind == TASK_ACTIVATE ? "activate" : "the job",
                    (lua_Integer)s->budget,
                    !t || t->kind == TASK_HANDLE || t->kind == TASK_ACTIVATE ? "" : " without waiting");
    lua_error(L);
  }
}

/* Every run starts with a fresh budget at the normal hook rate. */
static void host__budget_reset(script_t *s, lua_State *th) {
  s->slice = 0;
  lua_sethook(th, host__hook, LUA_MASKCOUNT, HOST_HOOK_EVERY);
}

/* Coroutines a script creates itself are counted from their start: the timer
 * only ever arms the task's own coroutine. */
static int host__co_counted(lua_State *L) {
  lua_pushvalue(L, lua_upvalueindex(1)); /* the library's create or wrap */
  lua_insert(L, 1);
  lua_call(L, lua_gettop(L) - 1, 1);
  /* create returns the coroutine; wrap a function holding it as upvalue 1. */
  lua_State *co = lua_tothread(L, -1);
  if (!co && lua_getupvalue(L, -1, 1)) {
    co = lua_tothread(L, -1);
    lua_pop(L, 1);
  }
  if (co) lua_sethook(co, host__hook, LUA_MASKCOUNT, HOST_HOOK_EVERY);
  return 1;
}

static void host__wrap_coroutines(lua_State *L) {
  lua_getglobal(L, "coroutine");
  lua_getfield(L, -1, "create");
  lua_pushcclosure(L, host__co_counted, 1);
  lua_setfield(L, -2, "create");
  lua_getfield(L, -1, "wrap");
  lua_pushcclosure(L, host__co_counted, 1);
  lua_setfield(L, -2, "wrap");
  lua_pop(L, 1);
}

static int host__panic(lua_State *L) {
  const char *msg = lua_tostring(L, -1);
  log_error("unprotected Lua error, the runner cannot continue: %s", msg ? msg : "?");
  abort();
  return 0;
}

extern const struct {
  const char *name;
  const char *src;
  size_t len;
} luster_lua_modules[];

void host_preload_library(lua_State *L) {
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  for (int i = 0; luster_lua_modules[i].name; i++) {
    char chunk[128];
    snprintf(chunk, sizeof chunk, "@luster/%s.lua",
             strcmp(luster_lua_modules[i].name, "luster") == 0 ? "init" : luster_lua_modules[i].name + 7);
    if (luaL_loadbufferx(L, luster_lua_modules[i].src, luster_lua_modules[i].len, chunk, "t") != LUA_OK) {
      log_error("built-in module %s does not load: %s", luster_lua_modules[i].name, lua_tostring(L, -1));
      abort();
    }
    lua_setfield(L, -2, luster_lua_modules[i].name);
  }
  lua_pop(L, 1);
}

static void host__preload(lua_State *L) {
  host_preload_library(L);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, host__open_core);
  lua_setfield(L, -2, "luster.core");
  lua_pop(L, 1);
}

/* tostring of JSON null (the light userdata NULL) is "null", in messages,
 * logs and error texts alike; any other light userdata prints as Lua's own. */
static int host__lightud_tostring(lua_State *L) {
  void *p = lua_touserdata(L, 1);
  if (p) lua_pushfstring(L, "userdata: %p", p);
  else lua_pushliteral(L, "null");
  return 1;
}

static void host__null_tostring(lua_State *L) {
  lua_pushlightuserdata(L, NULL);
  lua_createtable(L, 0, 1);
  lua_pushcfunction(L, host__lightud_tostring);
  lua_setfield(L, -2, "__tostring");
  lua_setmetatable(L, -2); /* light userdata share one metatable */
  lua_pop(L, 1);
}

lua_State *host__state_new(script_t *s) {
  lua_State *L = lua_newstate(host__alloc, s);
  if (!L) return NULL;
  *(script_t **)lua_getextraspace(L) = s;
  lua_atpanic(L, host__panic);
  lua_sethook(L, host__hook, LUA_MASKCOUNT, HOST_HOOK_EVERY);
  luaL_openlibs(L);
  host__wrap_coroutines(L);
  host__null_tostring(L);
  host__preload(L);
  host__watch_start();
  /* Most of what a message allocates (payload tables, requests, strings) dies
   * with it; the generational collector handles that young garbage without
   * sweeping the long-lived instance state each cycle. */
  lua_gc(L, LUA_GCGEN, 0, 0);
  return L;
}

int host__pcall(script_t *s, lua_State *L, int nargs, int nres, int msgh) {
  host__budget_reset(s, L);
  s->host->enforce_depth++;
  int rc = lua_pcall(L, nargs, nres, msgh);
  s->host->enforce_depth--;
  return rc;
}

/* ---------------------------------------------------------------------------
 * Tasks: coroutines running handlers, activations, singletons, cron jobs.
 * ------------------------------------------------------------------------- */

static void task__finish(task_t *t, int nres);
static void task__error(task_t *t, int status);
static void task__resume_item(sched_item_t *it);

static void task__sleep_fire(timer_entry_t *te) {
  task_t *t = (task_t *)((char *)te - offsetof(task_t, sleep));
  t->nargs = 0;
  sched_push(t->script->host->cfg.sched, &t->item, task__resume_item);
}

static task_t *task_new(script_t *s, task_kind_t kind) {
  task_t *t = calloc(1, sizeof *t);
  if (!t) { log_error("out of memory creating a task"); abort(); }
  t->script = s;
  t->kind = kind;
  if (s->pool_n > 0) {
    s->pool_n--;
    t->co = s->pool_co[s->pool_n];
    t->co_ref = s->pool_ref[s->pool_n];
  } else {
    t->co = lua_newthread(s->L);
    t->co_ref = luaL_ref(s->L, LUA_REGISTRYINDEX);
  }
  host_t *h = s->host;
  timer_entry_init(&t->sleep, h->cfg.sched, task__sleep_fire);
  s->tasks++;
  t->tnext = h->tasks;
  if (h->tasks) h->tasks->tprev = t;
  h->tasks = t;
  return t;
}

void host__task_free(task_t *t) {
  timer_cancel(&t->sleep);
  if (t->call) { call_cancel(t->call); t->call = NULL; }
  script_t *s = t->script;
  if (t->reusable && s->pool_n < HOST_THREAD_POOL && !s->retired) {
    lua_settop(t->co, 0);
    s->pool_co[s->pool_n] = t->co;
    s->pool_ref[s->pool_n] = t->co_ref;
    s->pool_n++;
  } else {
    luaL_unref(s->L, LUA_REGISTRYINDEX, t->co_ref);
  }
  s->tasks--;
  if (t->tprev) t->tprev->tnext = t->tnext; else s->host->tasks = t->tnext;
  if (t->tnext) t->tnext->tprev = t->tprev;
  if (t->item.queued) {
    /* Still on the ready queue (its sleep ended, say, as a reload stopped
     * it): everything is released now, the struct when the queue reaches it. */
    t->freed = 1;
    return;
  }
  free(t);
}

static int host__bg_here(const etype_t *ty);
static void host__task_lost(task_t *t);

static void task_resume(task_t *t, int nargs) {
  script_t *s = t->script;
  host_t *h = s->host;
  if ((t->inst && !placement_may_run(h->cfg.placement, t->inst->shard)) || (!t->inst && !host__bg_here(t->type))) {
    /* The lease of its shard ran out while it waited: nothing more runs. */
    host__task_lost(t);
    return;
  }
  int nres = 0;
  s->current = t;
  /* A handler's budget covers its whole invocation, waits included; a
   * singleton or cron job runs forever, so its budget covers one run
   * between two waits. */
  int cumulative = t->kind == TASK_HANDLE || t->kind == TASK_ACTIVATE;
  s->slice = cumulative ? t->used : 0;
  if (!cumulative) {
    t->ticks = 0;
    t->armed = 0;
  }
  if (t->armed || !host_lazy_budget) lua_sethook(t->co, host__hook, LUA_MASKCOUNT, HOST_HOOK_EVERY);
  else lua_sethook(t->co, NULL, 0, 0);
  t->waiting = 0;
  h->enforce_depth++;
  host_sig_task = t;
  int st = lua_resume(t->co, NULL, nargs, &nres);
  host_sig_task = NULL;
  h->enforce_depth--;
  if (lua_gethook(t->co)) t->armed = 1;
  s->current = NULL;
  if (cumulative) t->used = s->slice;
  if (st == LUA_YIELD && t->waiting) {
    lua_pop(t->co, nres);
    return;
  }
  if (st == LUA_YIELD) {
    /* coroutine.yield() in the handler's own coroutine: nothing would ever
     * resume it. */
    lua_settop(t->co, 0);
    lua_pushstring(t->co, "the handler called coroutine.yield() outside a coroutine of its own; nothing "
                          "resumes it (use luster.sleep or an entity call to wait)");
    t->reusable = 0;
    task__error(t, LUA_ERRRUN);
    return;
  }
  if (st == LUA_OK) {
    t->reusable = 1;
    task__finish(t, nres);
  } else {
    task__error(t, st);
  }
}

static void task__resume_item(sched_item_t *it) {
  task_t *t = (task_t *)it;
  if (t->freed) {
    free(t);
    return;
  }
  task_resume(t, t->nargs);
}

void host__task_call_cb(call_t *c, reply_kind_t kind, const char *body, size_t len) {
  task_t *t = c->ud;
  t->call = NULL;
  if (c->span) host__span_call_end(t, c);
  /* core.call's continuation reads the body from here, during the resume. */
  lua_pushinteger(t->co, kind);
  lua_pushlightuserdata(t->co, (void *)body);
  lua_pushinteger(t->co, (lua_Integer)len);
  task_resume(t, 3);
}

/* The text of a raised error, for the defect reply; the log line names the
 * task (type/id, RPC and request id of a handler) and adds the traceback. */
static char *task__error_text(task_t *t, int status) {
  script_t *s = t->script;
  char *text;
  if (status == LUA_ERRMEM) {
    buf_t m;
    buf_init(&m);
    buf_printf(&m, "memory limit exceeded: the Lua state of %s is capped at %zu bytes (--memory-limit)", s->file,
               s->mem_limit);
    text = buf_steal(&m, NULL);
  } else {
    text = host__error_text(s->L, t->co);
  }
  buf_t b;
  buf_init(&b);
  if (t->inst) buf_printf(&b, "defect %s/%.*s ", t->type->name, (int)(t->inst->id_len > 64 ? 64 : t->inst->id_len),
                          t->inst->id);
  else buf_printf(&b, "defect %s %s ", t->kind == TASK_CRON ? "cron job" : "singleton", t->type->name);
  if (t->kind == TASK_HANDLE && t->msg)
    buf_printf(&b, "%s request=%llu", t->type->rpcs[t->msg->rpc].tag, (unsigned long long)t->msg->request_id);
  else if (t->kind == TASK_ACTIVATE) buf_adds(&b, "activate");
  else buf_printf(&b, "(%s)", s->file);
  buf_printf(&b, ": %s", text);
  if (status != LUA_ERRMEM) host__traceback(t->co, 0, &b);
  log_warn("%s", b.data);
  buf_free(&b);
  return text;
}

static void task__restart_background(task_t *t);

/* A handler's outcome: its time goes to its RPC's histogram (the pointer
 * cached on rpc_def_t, so no lookup here). */
static void task__observe(task_t *t) {
  histo_t *h = t->type->rpcs[t->msg->rpc].histo;
  if (h) histo_observe(h, uv_hrtime() - t->start_ns);
}

/* Ends a handler task that did not return normally: its message is answered
 * with `kind` and `text`, and the instance goes on with its next one. */
static void task__end_handle(task_t *t, reply_kind_t kind, const char *text) {
  const host_em_t *em = t->script->host->cfg.em;
  msg_t *m = t->msg;
  host_inst_t *inst = t->inst;
  task__observe(t);
  size_t len;
  char *body = reply_error_body(kind, NULL, text, &len);
  t->type->counters->outcomes[kind]++;
  if (t->span_start_ns) host__span_handle_end(t, kind, text);
  msg_finish(m, kind, body, len);
  free(body);
  host__task_free(t);
  if (kind == REPLY_DEFECT && inst->type->durable) inst->reset = 1; /* a raised run leaves no trace */
  em->handled(inst);
}

static void task__end_activate(task_t *t, const char *error) {
  const host_em_t *em = t->script->host->cfg.em;
  host_inst_t *inst = t->inst;
  host__task_free(t);
  em->activated(inst, error);
}

static void task__finish(task_t *t, int nres) {
  const host_em_t *em = t->script->host->cfg.em;
  lua_State *co = t->co;
  switch (t->kind) {
  case TASK_HANDLE: {
    size_t klen = 0, blen = 0;
    const char *k = nres >= 2 ? lua_tolstring(co, -2, &klen) : NULL;
    const char *body = nres >= 2 ? lua_tolstring(co, -1, &blen) : NULL;
    reply_kind_t kind;
    msg_t *m = t->msg;
    host_inst_t *inst = t->inst;
    task__observe(t);
    if (!k || !body || reply_kind_parse(k, klen, &kind) != 0) {
      size_t len;
      char *eb = reply_error_body(REPLY_DEFECT, NULL, "the runtime's dispatch returned no reply", &len);
      t->type->counters->outcomes[REPLY_DEFECT]++;
      if (t->span_start_ns) host__span_handle_end(t, REPLY_DEFECT, "the runtime's dispatch returned no reply");
      msg_finish(m, REPLY_DEFECT, eb, len);
      free(eb);
    } else if (inst->type->durable) {
      if (t->span_start_ns) host__span_handle_end(t, kind, body);
      int now = em->durable_reply(inst, m, kind, body, blen); /* saves the state, then releases the reply */
      host__task_free(t);
      if (now) em->handled(inst);
      return;
    } else {
      t->type->counters->outcomes[kind]++;
      if (t->span_start_ns) host__span_handle_end(t, kind, body);
      msg_finish(m, kind, body, blen);
    }
    host__task_free(t);
    em->handled(inst);
    return;
  }
  case TASK_ACTIVATE: {
    host_inst_t *inst = t->inst;
    if (nres >= 2 && lua_istable(co, -2)) {
      inst->ctx_ref = luaL_ref(co, LUA_REGISTRYINDEX);
      inst->handlers_ref = luaL_ref(co, LUA_REGISTRYINDEX);
      host__task_free(t);
      em->activated(inst, NULL);
    } else {
      task__end_activate(t, "activate returned no handlers");
    }
    return;
  }
  case TASK_SINGLETON:
  case TASK_CRON:
    log_info("%s '%s' finished", t->kind == TASK_CRON ? "cron job" : "singleton", t->type->name);
    t->type->runner_task = NULL;
    host__task_free(t);
    return;
  }
}

static void task__error(task_t *t, int status) {
  const host_em_t *em = t->script->host->cfg.em;
  char *text = task__error_text(t, status);
  switch (t->kind) {
  case TASK_HANDLE:
    if ((t->msg->flags & MSG_PERSISTED) && t->msg->stored) {
      /* A stored message stays until it has a reply: a few more tries, with
       * backoff, then the defect is its reply. */
      msg_t *m = t->msg;
      m->attempts++;
      if (m->attempts < HOST_PERSISTED_ATTEMPTS) {
        uint64_t delay = (uint64_t)HOST_RETRY_BASE_MS << (m->attempts - 1);
        log_warn("%s/%.*s: %s raised (attempt %u of %d), retrying in %llu ms: %s", t->type->name,
                 (int)(m->id_len > 64 ? 64 : m->id_len), m->id, t->type->rpcs[m->rpc].tag, m->attempts,
                 HOST_PERSISTED_ATTEMPTS, (unsigned long long)delay, text);
        host_inst_t *inst = t->inst;
        if (t->span_start_ns) host__span_handle_end(t, REPLY_DEFECT, text);
        t->msg = NULL;
        host__task_free(t);
        em->retry(inst, m, delay);
        em->handled(inst);
        break;
      }
      char *again = malloc(strlen(text) + 64);
      sprintf(again, "failed %d times; last error: %s", HOST_PERSISTED_ATTEMPTS, text);
      free(text);
      text = again;
    }
    task__end_handle(t, REPLY_DEFECT, text);
    break;
  case TASK_ACTIVATE: task__end_activate(t, text); break;
  case TASK_SINGLETON:
  case TASK_CRON:
    log_error("%s '%s' raised: %s; restarting it in 1 s", t->kind == TASK_CRON ? "cron job" : "singleton",
              t->type->name, text);
    task__restart_background(t);
    break;
  }
  free(text);
}

/* ---------------------------------------------------------------------------
 * Entity work
 * ------------------------------------------------------------------------- */

void host_activate(host_inst_t *inst, const char *snapshot, size_t snapshot_len) {
  etype_t *ty = inst->type;
  script_t *s = ty->script;
  task_t *t = task_new(s, TASK_ACTIVATE);
  t->inst = inst;
  t->type = ty;
  lua_State *co = t->co;
  lua_rawgeti(co, LUA_REGISTRYINDEX, s->ref_activate);
  lua_rawgeti(co, LUA_REGISTRYINDEX, ty->def_ref);
  lua_pushlstring(co, inst->id, inst->id_len);
  lua_pushinteger(co, inst->shard);
  if (snapshot) lua_pushlstring(co, snapshot, snapshot_len);
  else lua_pushnil(co);
  task_resume(t, 4);
}

static int host__decode(lua_State *L) {
  json_push_decoded(host__script(L)->host->json, L, lua_touserdata(L, 1), (size_t)lua_tointeger(L, 2));
  return 1;
}

void host_handle(host_inst_t *inst, msg_t *msg) {
  etype_t *ty = inst->type;
  script_t *s = ty->script;
  task_t *t = task_new(s, TASK_HANDLE);
  t->start_ns = uv_hrtime();
  t->inst = inst;
  t->msg = msg;
  t->type = ty;
  host__span_handle_start(t, msg);
  lua_State *co = t->co;
  const rpc_def_t *r = &ty->rpcs[msg->rpc];
  lua_rawgeti(co, LUA_REGISTRYINDEX, s->ref_handle);
  lua_rawgeti(co, LUA_REGISTRYINDEX, ty->def_ref);
  lua_rawgeti(co, LUA_REGISTRYINDEX, inst->handlers_ref);
  lua_rawgeti(co, LUA_REGISTRYINDEX, inst->ctx_ref);
  lua_pushlstring(co, r->tag, r->tag_len);
  if (msg->flags & MSG_PERSISTED) {
    /* The stored text: runtime.handle tells a payload that no longer
     * matches apart from one that never did. */
    lua_pushlstring(co, msg->payload, msg->payload_len);
  } else if (msg->payload_len == 0) {
    lua_pushnil(co);
  } else {
    /* Decoded straight from the message's bytes. */
    lua_pushcfunction(co, host__decode);
    lua_pushlightuserdata(co, msg->payload);
    lua_pushinteger(co, (lua_Integer)msg->payload_len);
    if (lua_pcall(co, 2, 1, 0) != LUA_OK) {
      char text[300];
      snprintf(text, sizeof text, "invalid JSON: %s",
               lua_type(co, -1) == LUA_TSTRING ? lua_tostring(co, -1) : "not enough memory");
      lua_settop(co, 0);
      t->reusable = 1;
      task__end_handle(t, REPLY_SCHEMA, text);
      return;
    }
  }
  lua_pushinteger(co, (lua_Integer)msg->request_id);
  if (msg->headers) lua_pushlstring(co, msg->headers, msg->headers_len);
  else lua_pushnil(co);
  lua_pushboolean(co, (msg->flags & MSG_PERSISTED) != 0);
  task_resume(t, 8);
}

/* What released instances leave behind. An instance's state has usually
 * grown old in the generational collector, and only a major collection
 * frees old objects; the collector runs only as the state allocates, so a
 * runner that passivates many instances and then goes quiet would keep
 * their memory until traffic returns. So a release arms a timer, and when
 * it fires (HOST_GC_DELAY_MS later, batching every release meanwhile) the
 * state gets a full collection. A full collection costs time in proportion
 * to the live heap: the next one waits at least HOST_GC_COST_FACTOR times
 * as long as the last took, which keeps this under a tenth of the runner's
 * time however large the heap. */
#define HOST_GC_DELAY_MS 1000
#define HOST_GC_COST_FACTOR 10

void host__gc_fire(timer_entry_t *te) {
  script_t *s = (script_t *)((char *)te - offsetof(script_t, gc_timer));
  if (!s->L || !s->gc_freed) return;
  struct timespec a, b;
  clock_gettime(CLOCK_MONOTONIC, &a);
  s->slice = 0; /* a __gc metamethod runs on a fresh budget */
  lua_gc(s->L, LUA_GCCOLLECT);
  clock_gettime(CLOCK_MONOTONIC, &b);
  s->gc_cost_ms = (uint64_t)((b.tv_sec - a.tv_sec) * 1000 + (b.tv_nsec - a.tv_nsec) / 1000000);
  s->gc_freed = 0;
}

void host_release_instance(host_inst_t *inst) {
  script_t *s = inst->type->script;
  lua_State *L = s->L;
  luaL_unref(L, LUA_REGISTRYINDEX, inst->handlers_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, inst->ctx_ref);
  inst->handlers_ref = inst->ctx_ref = LUA_NOREF;
  s->gc_freed++;
  if (!timer_pending(&s->gc_timer)) {
    uint64_t wait = s->gc_cost_ms * HOST_GC_COST_FACTOR;
    timer_add(&s->gc_timer, sched_now(s->host->cfg.sched) + (wait > HOST_GC_DELAY_MS ? wait : HOST_GC_DELAY_MS));
  }
}

char *host_snapshot(host_inst_t *inst, size_t *len, char **err) {
  static const char oom[] = "memory limit exceeded";
  etype_t *ty = inst->type;
  script_t *s = ty->script;
  lua_State *L = s->L;
  *err = NULL;
  *len = 0;
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->ref_snapshot);
  lua_rawgeti(L, LUA_REGISTRYINDEX, ty->def_ref);
  lua_rawgeti(L, LUA_REGISTRYINDEX, inst->handlers_ref);
  int st = host__pcall(s, L, 2, 1, 0);
  char *out = NULL;
  if (st == LUA_ERRMEM) {
    *err = strdup(oom);
  } else if (st != LUA_OK) {
    *err = host__error_text(L, L);
  } else if (lua_type(L, -1) == LUA_TSTRING) {
    size_t n;
    const char *p = lua_tolstring(L, -1, &n);
    out = malloc(n + 1);
    if (out) {
      memcpy(out, p, n);
      out[n] = '\0';
      *len = n;
    }
  }
  lua_pop(L, 1);
  return out;
}

reply_kind_t host_persist_info(etype_t *ty, int rpc, const char *payload, size_t len, char **pk,
                               uint64_t *deliver_at, char **err, size_t *err_len) {
  script_t *s = ty->script;
  lua_State *L = s->L;
  *pk = NULL;
  *deliver_at = 0;
  *err = NULL;
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->ref_persist_info);
  lua_rawgeti(L, LUA_REGISTRYINDEX, ty->def_ref);
  lua_pushlstring(L, ty->rpcs[rpc].tag, ty->rpcs[rpc].tag_len);
  lua_pushlstring(L, payload, len);
  int st = host__pcall(s, L, 3, 3, 0);
  if (st != LUA_OK) {
    char msg[1024];
    if (st == LUA_ERRMEM)
      snprintf(msg, sizeof msg, "memory limit exceeded in %s while reading the persisted message", s->file);
    else
    {
      char *text = host__error_text(L, L);
      snprintf(msg, sizeof msg, "%s", text);
      free(text);
    }
    lua_pop(L, 1);
    *err = reply_error_body(REPLY_DEFECT, NULL, msg, err_len);
    return REPLY_DEFECT;
  }
  size_t klen;
  const char *k = lua_tolstring(L, -3, &klen);
  reply_kind_t kind = REPLY_DEFECT;
  if (!k || reply_kind_parse(k, klen, &kind) != 0) kind = REPLY_DEFECT;
  if (kind == REPLY_OK) {
    if (lua_type(L, -2) == LUA_TSTRING) {
      size_t n;
      const char *p = lua_tolstring(L, -2, &n);
      *pk = malloc(n + 1);
      memcpy(*pk, p, n);
      (*pk)[n] = '\0';
    }
    if (lua_isinteger(L, -1)) {
      lua_Integer at = lua_tointeger(L, -1);
      *deliver_at = at > 0 ? (uint64_t)at : 1;
    }
  } else {
    size_t n = 0;
    const char *p = lua_tolstring(L, -2, &n);
    if (!p) { p = "{\"kind\":\"defect\",\"message\":\"invalid persisted message check result\"}"; n = strlen(p); }
    *err = malloc(n + 1);
    memcpy(*err, p, n);
    (*err)[n] = '\0';
    *err_len = n;
  }
  lua_pop(L, 3);
  return kind;
}

/* ---------------------------------------------------------------------------
 * Singletons and cron jobs (one runner: they run here)
 * ------------------------------------------------------------------------- */

static void host__start_runner_task(etype_t *ty) {
  script_t *s = ty->script;
  task_t *t = task_new(s, ty->kind == DEF_CRON ? TASK_CRON : TASK_SINGLETON);
  t->type = ty;
  t->started_ms = sched_wall_ms(s->host->cfg.sched);
  host_trace_new(s->host, &t->trace); /* a singleton or cron job starts its own trace */
  ty->runner_task = t;
  lua_State *co = t->co;
  lua_rawgeti(co, LUA_REGISTRYINDEX, ty->kind == DEF_CRON ? s->ref_run_cron : s->ref_run_singleton);
  lua_rawgeti(co, LUA_REGISTRYINDEX, ty->def_ref);
  lua_rawgeti(co, LUA_REGISTRYINDEX, s->ref_new_ctx);
  lua_pushlstring(co, ty->name, ty->name_len);
  lua_call(co, 1, 1); /* ctx for a singleton has no id */
  t->nargs = 2;
  sched_push(s->host->cfg.sched, &t->item, task__resume_item);
}


static void host__restart_fire(timer_entry_t *te) {
  restart_t *r = (restart_t *)te;
  r->type->restart = NULL;
  if (host__bg_here(r->type)) host__start_runner_task(r->type);
  free(r);
}

/* In a cluster a singleton or cron job runs on the runner that serves the
 * shard of its name, so exactly one runner runs it and it moves with the
 * shard. */
static int host__bg_here(const etype_t *ty) {
  return placement_may_run_key(etype_host(ty)->cfg.placement, ty->name, ty->name_len);
}

static void host__task_lost(task_t *t) {
  const char *why = "its shard moved to another runner";
  switch (t->kind) {
  case TASK_HANDLE: task__end_handle(t, REPLY_UNAVAILABLE, "the entity's shard moved to another runner; retry"); break;
  case TASK_ACTIVATE: task__end_activate(t, why); break;
  default:
    log_info("%s '%s' stopped here: %s", t->kind == TASK_CRON ? "cron job" : "singleton", t->type->name, why);
    t->type->runner_task = NULL;
    host__task_free(t);
  }
}

void host_cancel_shard_tasks(host_t *h, const uint8_t *mask) {
  task_t *t = h->tasks;
  while (t) {
    task_t *next = t->tnext;
    if ((t->kind == TASK_HANDLE || t->kind == TASK_ACTIVATE) && t->inst && mask[t->inst->shard]) host__task_lost(t);
    t = next;
  }
}

void host_background_update(host_t *h) {
  for (etype_t *ty = h->types; ty; ty = ty->next) {
    if (ty->kind == DEF_ENTITY) continue;
    int here = host__bg_here(ty);
    if (here && !ty->runner_task && !ty->restart) {
      log_info("%s '%s' starts on this runner", ty->kind == DEF_CRON ? "cron job" : "singleton", ty->name);
      host__start_runner_task(ty);
    } else if (!here && ty->runner_task) {
      host__task_lost(ty->runner_task);
    } else if (!here && ty->restart) {
      timer_cancel(&ty->restart->timer);
      free(ty->restart);
      ty->restart = NULL;
    }
  }
}

static void task__restart_background(task_t *t) {
  etype_t *ty = t->type;
  ty->runner_task = NULL;
  host__task_free(t);
  restart_t *r = calloc(1, sizeof *r);
  if (!r) return;
  sched_t *sched = etype_host(ty)->cfg.sched;
  timer_entry_init(&r->timer, sched, host__restart_fire);
  r->type = ty;
  ty->restart = r;
  timer_add(&r->timer, sched_now(sched) + 1000);
}

void host_start_background(host_t *h) {
  for (etype_t *ty = h->types; ty; ty = ty->next)
    if (ty->kind != DEF_ENTITY && !ty->runner_task && host__bg_here(ty)) host__start_runner_task(ty);
}

void host_cancel_tasks(host_t *h) {
  while (h->tasks) {
    task_t *t = h->tasks;
    switch (t->kind) {
    case TASK_HANDLE: task__end_handle(t, REPLY_UNAVAILABLE, "the runner is shutting down"); break;
    case TASK_ACTIVATE: task__end_activate(t, "the runner is shutting down"); break;
    default:
      t->type->runner_task = NULL;
      host__task_free(t);
    }
  }
  for (etype_t *ty = h->types; ty; ty = ty->next) {
    if (ty->restart) {
      timer_cancel(&ty->restart->timer);
      free(ty->restart);
      ty->restart = NULL;
    }
  }
}

