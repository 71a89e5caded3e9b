/* host.c - Lua states, one per script file: loading and definitions, the
 * memory cap and instruction budget, and handlers run as coroutines.
 *
 * Every resume happens from the ready queue at the top of the loop, so at
 * most one coroutine of one state runs at any moment, and a state's main
 * thread is always idle when C uses it. */
#include "host/host.h"

#include <dirent.h>
#include <errno.h>
#include <lauxlib.h>
#include <lualib.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli/log.h"
#include "cluster/router.h"
#include "core/buf.h"
#include "core/hash.h"
#include "entity/entity.h"

extern const struct {
  const char *name;
  const char *src;
  size_t len;
} luster_lua_modules[];

/* How often (in VM instructions) the budget hook runs. Small enough that a
 * handler which catches the budget error with pcall is stopped again almost
 * at once; large enough that the hook costs well under 1% of run time. */
#define HOST_HOOK_EVERY 2000

typedef struct restart_s {
  timer_entry_t timer;
  etype_t *type;
} restart_t;

static host_config_t host_cfg;
static task_t *host_tasks;
static script_t *host_script_list;
static etype_t *host_type_list;

const host_config_t *host_config(void) { return &host_cfg; }
script_t *host_scripts(void) { return host_script_list; }
etype_t *host_types(void) { return host_type_list; }

static script_t *host__script(lua_State *L) { return *(script_t **)lua_getextraspace(L); }

/* The cap applies only while scripts run (s->enforce): the runner's own
 * pushes of payloads and results never fail on it, so a state that user code
 * filled to the brim can still be handed its next message or error. */
static int host_enforce_depth;
static void *host__alloc(void *ud, void *ptr, size_t osize, size_t nsize) {
  script_t *s = ud;
  size_t old = ptr ? osize : 0;
  if (nsize == 0) {
    free(ptr);
    s->mem -= old;
    return NULL;
  }
  if (nsize > old && host_enforce_depth && s->mem + (nsize - old) > s->mem_limit) return NULL;
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
    luaL_error(L, "instruction budget exceeded: %s ran more than %I Lua VM instructions without waiting "
                  "(entity calls and luster.sleep wait); see --instruction-budget",
               s->current ? "the handler" : "the script", (lua_Integer)s->budget);
  }
}

/* Every run starts with a fresh budget at the normal hook rate. */
static void host__budget_reset(script_t *s, lua_State *th) {
  s->slice = 0;
  lua_sethook(th, host__hook, LUA_MASKCOUNT, HOST_HOOK_EVERY);
}

static int host__panic(lua_State *L) {
  const char *msg = lua_tostring(L, -1);
  log_error("unprotected Lua error, the runner cannot continue: %s", msg ? msg : "?");
  abort();
  return 0;
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
  sched_push(&t->item, task__resume_item);
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
  timer_entry_init(&t->sleep, task__sleep_fire);
  s->tasks++;
  t->tnext = host_tasks;
  if (host_tasks) host_tasks->tprev = t;
  host_tasks = t;
  return t;
}

static void task_free(task_t *t) {
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
  if (t->tprev) t->tprev->tnext = t->tnext; else host_tasks = t->tnext;
  if (t->tnext) t->tnext->tprev = t->tprev;
  free(t);
}

static void task_resume(task_t *t, int nargs) {
  script_t *s = t->script;
  int nres = 0;
  s->current = t;
  host__budget_reset(s, t->co);
  t->waiting = 0;
  host_enforce_depth++;
  int st = lua_resume(t->co, NULL, nargs, &nres);
  host_enforce_depth--;
  s->current = NULL;
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
  task_resume(t, t->nargs);
}

static void task__call_cb(call_t *c, reply_kind_t kind, const char *body, size_t len) {
  task_t *t = c->ud;
  t->call = NULL;
  lua_pushstring(t->co, reply_kind_name(kind));
  lua_pushlstring(t->co, body, len);
  task_resume(t, 2);
}

/* The text of a raised error, for the defect reply; the traceback goes to
 * the log. */
static char *task__error_text(task_t *t, int status) {
  script_t *s = t->script;
  buf_t b;
  buf_init(&b);
  if (status == LUA_ERRMEM) {
    buf_printf(&b, "memory limit exceeded: the Lua state of %s is capped at %zu bytes (--memory-limit)", s->file,
               s->mem_limit);
  } else if (lua_type(t->co, -1) == LUA_TSTRING) {
    buf_adds(&b, lua_tostring(t->co, -1));
  } else {
    buf_printf(&b, "(error object is a %s value)", luaL_typename(t->co, -1));
  }
  if (status != LUA_ERRMEM) {
    luaL_traceback(s->L, t->co, NULL, 0);
    log_warn("%s: %s\n%s", s->file, b.data, lua_tostring(s->L, -1));
    lua_pop(s->L, 1);
  } else {
    log_warn("%s: %s", s->file, b.data);
  }
  return buf_steal(&b, NULL);
}

static void task__restart_background(task_t *t);

/* Ends a handler task that did not return normally: its message is answered
 * with `kind` and `text`, and the instance goes on with its next one. */
static void task__end_handle(task_t *t, reply_kind_t kind, const char *text) {
  msg_t *m = t->msg;
  inst_t *inst = t->inst;
  size_t len;
  char *body = reply_error_body(kind, NULL, text, &len);
  t->type->outcomes[kind]++;
  msg_finish(m, kind, body, len);
  free(body);
  task_free(t);
  em_handled(inst);
}

static void task__end_activate(task_t *t, const char *error) {
  inst_t *inst = t->inst;
  task_free(t);
  em_activated(inst, error);
}

static void task__finish(task_t *t, int nres) {
  lua_State *co = t->co;
  switch (t->kind) {
  case TASK_HANDLE: {
    size_t klen = 0, blen = 0;
    const char *k = nres >= 2 ? lua_tolstring(co, -2, &klen) : NULL;
    const char *body = nres >= 2 ? lua_tolstring(co, -1, &blen) : NULL;
    reply_kind_t kind;
    msg_t *m = t->msg;
    inst_t *inst = t->inst;
    if (!k || !body || reply_kind_parse(k, klen, &kind) != 0) {
      size_t len;
      char *eb = reply_error_body(REPLY_DEFECT, NULL, "the runtime's dispatch returned no reply", &len);
      t->type->outcomes[REPLY_DEFECT]++;
      msg_finish(m, REPLY_DEFECT, eb, len);
      free(eb);
    } else {
      t->type->outcomes[kind]++;
      msg_finish(m, kind, body, blen);
    }
    task_free(t);
    em_handled(inst);
    return;
  }
  case TASK_ACTIVATE: {
    inst_t *inst = t->inst;
    if (nres >= 2 && lua_istable(co, -2)) {
      inst->ctx_ref = luaL_ref(co, LUA_REGISTRYINDEX);
      inst->handlers_ref = luaL_ref(co, LUA_REGISTRYINDEX);
      task_free(t);
      em_activated(inst, NULL);
    } else {
      task__end_activate(t, "activate returned no handlers");
    }
    return;
  }
  case TASK_SINGLETON:
  case TASK_CRON:
    log_info("%s '%s' finished", t->kind == TASK_CRON ? "cron job" : "singleton", t->type->name);
    t->type->runner_task = NULL;
    task_free(t);
    return;
  }
}

static void task__error(task_t *t, int status) {
  char *text = task__error_text(t, status);
  switch (t->kind) {
  case TASK_HANDLE: task__end_handle(t, REPLY_DEFECT, text); break;
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

void host_activate(inst_t *inst, const char *snapshot, size_t snapshot_len) {
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

void host_handle(inst_t *inst, msg_t *msg) {
  etype_t *ty = inst->type;
  script_t *s = ty->script;
  task_t *t = task_new(s, TASK_HANDLE);
  t->inst = inst;
  t->msg = msg;
  t->type = ty;
  lua_State *co = t->co;
  const rpc_def_t *r = &ty->rpcs[msg->rpc];
  lua_rawgeti(co, LUA_REGISTRYINDEX, s->ref_handle);
  lua_rawgeti(co, LUA_REGISTRYINDEX, ty->def_ref);
  lua_rawgeti(co, LUA_REGISTRYINDEX, inst->handlers_ref);
  lua_rawgeti(co, LUA_REGISTRYINDEX, inst->ctx_ref);
  lua_pushlstring(co, r->tag, r->tag_len);
  lua_pushlstring(co, msg->payload, msg->payload_len);
  lua_pushinteger(co, (lua_Integer)msg->request_id);
  if (msg->headers) lua_pushlstring(co, msg->headers, msg->headers_len);
  else lua_pushnil(co);
  lua_pushboolean(co, (msg->flags & MSG_PERSISTED) != 0);
  task_resume(t, 8);
}

void host_release_instance(inst_t *inst) {
  lua_State *L = inst->type->script->L;
  luaL_unref(L, LUA_REGISTRYINDEX, inst->handlers_ref);
  luaL_unref(L, LUA_REGISTRYINDEX, inst->ctx_ref);
  inst->handlers_ref = inst->ctx_ref = LUA_NOREF;
}

char *host_snapshot(inst_t *inst, size_t *len) {
  etype_t *ty = inst->type;
  script_t *s = ty->script;
  lua_State *L = s->L;
  lua_rawgeti(L, LUA_REGISTRYINDEX, s->ref_snapshot);
  lua_rawgeti(L, LUA_REGISTRYINDEX, ty->def_ref);
  lua_rawgeti(L, LUA_REGISTRYINDEX, inst->handlers_ref);
  host__budget_reset(s, L);
  host_enforce_depth++;
  int st = lua_pcall(L, 2, 1, 0);
  host_enforce_depth--;
  char *out = NULL;
  if (st != LUA_OK) {
    log_warn("%s/%.*s: snapshot failed, the new version starts it fresh: %s", ty->name, (int)inst->id_len, inst->id,
             st == LUA_ERRMEM ? "memory limit exceeded" : lua_isstring(L, -1) ? lua_tostring(L, -1) : "?");
  } else if (lua_type(L, -1) == LUA_TSTRING) {
    size_t n;
    const char *p = lua_tolstring(L, -1, &n);
    out = malloc(n + 1);
    memcpy(out, p, n);
    out[n] = '\0';
    *len = n;
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
  host__budget_reset(s, L);
  host_enforce_depth++;
  int st = lua_pcall(L, 3, 3, 0);
  host_enforce_depth--;
  if (st != LUA_OK) {
    char msg[1024];
    if (st == LUA_ERRMEM)
      snprintf(msg, sizeof msg, "memory limit exceeded in %s while reading the persisted message", s->file);
    else
      snprintf(msg, sizeof msg, "%s", lua_isstring(L, -1) ? lua_tostring(L, -1) : "(error object is not a string)");
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
  ty->runner_task = t;
  lua_State *co = t->co;
  lua_rawgeti(co, LUA_REGISTRYINDEX, ty->kind == DEF_CRON ? s->ref_run_cron : s->ref_run_singleton);
  lua_rawgeti(co, LUA_REGISTRYINDEX, ty->def_ref);
  lua_rawgeti(co, LUA_REGISTRYINDEX, s->ref_new_ctx);
  lua_pushlstring(co, ty->name, ty->name_len);
  lua_call(co, 1, 1); /* ctx for a singleton has no id */
  t->nargs = 2;
  sched_push(&t->item, task__resume_item);
}


static void host__restart_fire(timer_entry_t *te) {
  restart_t *r = (restart_t *)te;
  r->type->restart = NULL;
  host__start_runner_task(r->type);
  free(r);
}

static void task__restart_background(task_t *t) {
  etype_t *ty = t->type;
  ty->runner_task = NULL;
  task_free(t);
  restart_t *r = calloc(1, sizeof *r);
  if (!r) return;
  timer_entry_init(&r->timer, host__restart_fire);
  r->type = ty;
  ty->restart = r;
  timer_add(&r->timer, sched_now() + 1000);
}

void host_start_background(void) {
  for (etype_t *ty = host_type_list; ty; ty = ty->next)
    if (ty->kind != DEF_ENTITY && !ty->runner_task) host__start_runner_task(ty);
}

/* ---------------------------------------------------------------------------
 * luster.core: the C functions scripts reach through the luster library
 * ------------------------------------------------------------------------- */

static task_t *core__task(lua_State *L, const char *what) {
  script_t *s = host__script(L);
  task_t *t = s->current;
  if (!t || t->co != L || !lua_isyieldable(L))
    luaL_error(L, "%s can only be used while a handler, activate, singleton or cron job runs "
                  "(not while the script loads, and not inside a coroutine of your own)", what);
  return t;
}

static int core_call(lua_State *L) {
  size_t tl, il, gl, pl;
  const char *type = luaL_checklstring(L, 1, &tl);
  const char *id = luaL_checklstring(L, 2, &il);
  const char *tag = luaL_checklstring(L, 3, &gl);
  const char *payload = luaL_checklstring(L, 4, &pl);
  lua_Integer timeout = luaL_optinteger(L, 5, 0);
  int discard = lua_toboolean(L, 6);
  task_t *t = core__task(L, "calling an entity");
  inst_t *self = t->inst;
  if (!discard && self && self->type->concurrency == 1 && self->type->name_len == tl &&
      memcmp(self->type->name, type, tl) == 0 && self->id_len == il && memcmp(self->id, id, il) == 0) {
    char msg[512];
    snprintf(msg, sizeof msg,
             "%.*s/%.*s called itself (%.*s) while handling a message; with concurrency 1 that call could "
             "never run. Call the logic as a local function, send it with { discard = true }, or raise the "
             "entity's concurrency",
             (int)tl, type, (int)(il > 64 ? 64 : il), id, (int)gl, tag);
    size_t len;
    char *body = reply_error_body(REPLY_DEFECT, NULL, msg, &len);
    lua_pushstring(L, "defect");
    lua_pushlstring(L, body, len);
    free(body);
    return 2;
  }
  uint64_t tmo = timeout > 0 ? (uint64_t)timeout : host_cfg.call_timeout_ms;
  call_t *c = call_new(task__call_cb, t, tmo);
  t->call = c;
  router_send(type, tl, id, il, tag, gl, payload, pl, NULL, 0, discard ? MSG_DISCARD : 0, c);
  t->waiting = 1;
  return lua_yield(L, 0);
}

static int core_sleep(lua_State *L) {
  lua_Integer ms = luaL_checkinteger(L, 1);
  task_t *t = core__task(L, "luster.sleep");
  timer_add(&t->sleep, sched_now() + (ms > 0 ? (uint64_t)ms : 0));
  t->waiting = 1;
  return lua_yield(L, 0);
}

static int core_keep_alive(lua_State *L) {
  size_t tl, il;
  const char *type = luaL_checklstring(L, 1, &tl);
  const char *id = luaL_checklstring(L, 2, &il);
  int on = lua_toboolean(L, 3);
  etype_t *ty = host_find_type(type, tl);
  if (ty) em_keep_alive(ty, id, il, on);
  return 0;
}

static int core_runner(lua_State *L) {
  lua_pushstring(L, host_cfg.runner_name ? host_cfg.runner_name : "local");
  return 1;
}

static int core_wall(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)sched_wall_ms());
  return 1;
}

static int core_log(lua_State *L) {
  const char *level = luaL_checkstring(L, 1);
  const char *msg = luaL_checkstring(L, 2);
  log_level_t lvl = LOG_INFO;
  log_parse_level(level, &lvl);
  log_msg(lvl, "%s: %s", host__script(L)->file, msg);
  return 0;
}

static int luaopen_luster_core(lua_State *L) {
  static const luaL_Reg fns[] = {
      {"call", core_call}, {"sleep", core_sleep}, {"keep_alive", core_keep_alive}, {"runner", core_runner},
      {"wall", core_wall}, {"now", core_wall},     {"log", core_log},             {NULL, NULL},
  };
  luaL_newlib(L, fns);
  return 1;
}

/* ---------------------------------------------------------------------------
 * Loading scripts
 * ------------------------------------------------------------------------- */

static int host__msgh(lua_State *L) {
  const char *msg = lua_tostring(L, 1);
  if (!msg) msg = lua_pushfstring(L, "(error object is a %s value)", luaL_typename(L, 1));
  luaL_traceback(L, L, msg, 1);
  return 1;
}

static void host__preload(lua_State *L) {
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
  lua_pushcfunction(L, luaopen_luster_core);
  lua_setfield(L, -2, "luster.core");
  lua_pop(L, 1);
}

static int host__ref_field(lua_State *L, int idx, const char *name) {
  lua_getfield(L, idx, name);
  return luaL_ref(L, LUA_REGISTRYINDEX);
}

static void host__hash_hex(const char *src, size_t len, char out[17]) {
  unsigned char md[EVP_MAX_MD_SIZE];
  unsigned int mdlen = 0;
  EVP_Digest(src, len, md, &mdlen, EVP_sha256(), NULL);
  for (int i = 0; i < 8; i++) snprintf(out + 2 * i, 3, "%02x", md[i]);
}

static char *host__read_file(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) return NULL;
  buf_t b;
  buf_init(&b);
  char tmp[8192];
  size_t n;
  while ((n = fread(tmp, 1, sizeof tmp, f)) > 0) buf_add(&b, tmp, n);
  fclose(f);
  return buf_steal(&b, len);
}

static void script__fail(script_t *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void script__fail(script_t *s, const char *fmt, ...) {
  char msg[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  free(s->error);
  s->error = strdup(msg);
}

static uint64_t host__opt_int(lua_State *L, int idx, const char *name, uint64_t dflt) {
  lua_getfield(L, idx, name);
  uint64_t v = lua_isinteger(L, -1) && lua_tointeger(L, -1) > 0 ? (uint64_t)lua_tointeger(L, -1) : dflt;
  lua_pop(L, 1);
  return v;
}

static char *host__dupfield(lua_State *L, int idx, const char *name, size_t *len) {
  lua_getfield(L, idx, name);
  size_t n = 0;
  const char *p = lua_tolstring(L, -1, &n);
  char *r = NULL;
  if (p) {
    r = malloc(n + 1);
    memcpy(r, p, n);
    r[n] = '\0';
  }
  if (len) *len = n;
  lua_pop(L, 1);
  return r;
}

/* Reads the definition at the top of L into a new etype_t. */
static etype_t *host__read_def(script_t *s, lua_State *L) {
  etype_t *ty = calloc(1, sizeof *ty);
  ty->script = s;
  size_t klen;
  char *kind = host__dupfield(L, -1, "kind", &klen);
  ty->kind = strcmp(kind, "singleton") == 0 ? DEF_SINGLETON : strcmp(kind, "cron") == 0 ? DEF_CRON : DEF_ENTITY;
  free(kind);
  ty->name = host__dupfield(L, -1, "name", &ty->name_len);
  ty->cron_expr = host__dupfield(L, -1, "expr", NULL);
  lua_getfield(L, -1, "options");
  ty->max_idle_ms = host__opt_int(L, -1, "max_idle", host_cfg.max_idle_ms);
  ty->concurrency = (uint32_t)host__opt_int(L, -1, "concurrency", 1);
  ty->mailbox = (uint32_t)host__opt_int(L, -1, "mailbox", 4096);
  lua_pop(L, 1);
  if (ty->kind == DEF_ENTITY) {
    lua_getfield(L, -1, "rpcs");
    ty->nrpcs = (int)luaL_len(L, -1);
    ty->rpcs = calloc((size_t)ty->nrpcs + 1, sizeof *ty->rpcs);
    for (int i = 0; i < ty->nrpcs; i++) {
      lua_rawgeti(L, -1, i + 1);
      ty->rpcs[i].tag = host__dupfield(L, -1, "tag", &ty->rpcs[i].tag_len);
      lua_getfield(L, -1, "persisted");
      ty->rpcs[i].persisted = lua_toboolean(L, -1);
      lua_getfield(L, -2, "primary_key");
      ty->rpcs[i].has_primary_key = !lua_isnil(L, -1);
      lua_getfield(L, -3, "deliver_at");
      ty->rpcs[i].has_deliver_at = !lua_isnil(L, -1);
      lua_pop(L, 4);
    }
    lua_pop(L, 1);
  }
  lua_pushvalue(L, -1);
  ty->def_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  em_type_init(ty);
  return ty;
}

static void etype_free(etype_t *ty) {
  for (int i = 0; i < ty->nrpcs; i++) free(ty->rpcs[i].tag);
  free(ty->rpcs);
  free(ty->name);
  free(ty->cron_expr);
  if (ty->restart) {
    timer_cancel(&ty->restart->timer);
    free(ty->restart);
  }
  em_type_free(ty);
  free(ty);
}

static void script_close(script_t *s) {
  etype_t *ty = s->types;
  while (ty) {
    etype_t *next = ty->snext;
    etype_free(ty);
    ty = next;
  }
  s->types = NULL;
  if (s->L) lua_close(s->L);
  s->L = NULL;
}

/* Loads one script into a fresh state; on failure s->error says why and the
 * state is closed. Types are linked into s->types, not yet registered. */
static int script_load(script_t *s) {
  size_t srclen = 0;
  char *src = host__read_file(s->path, &srclen);
  if (!src) {
    script__fail(s, "%s: cannot read: %s", s->file, strerror(errno));
    return -1;
  }
  host__hash_hex(src, srclen, s->version);
  lua_State *L = lua_newstate(host__alloc, s);
  if (!L) {
    free(src);
    script__fail(s, "%s: cannot create a Lua state", s->file);
    return -1;
  }
  s->L = L;
  *(script_t **)lua_getextraspace(L) = s;
  lua_atpanic(L, host__panic);
  lua_sethook(L, host__hook, LUA_MASKCOUNT, HOST_HOOK_EVERY);
  luaL_openlibs(L);
  host__preload(L);

  /* package.path: the script directory's lib/ first. */
  lua_getglobal(L, "package");
  lua_pushfstring(L, "%s/lib/?.lua;%s/lib/?/init.lua;", host_cfg.dir, host_cfg.dir);
  lua_getfield(L, -2, "path");
  lua_concat(L, 2);
  lua_setfield(L, -2, "path");
  lua_pop(L, 1);

  lua_pushcfunction(L, host__msgh);
  int msgh = lua_gettop(L);
  char chunk[1024];
  snprintf(chunk, sizeof chunk, "@%s", s->file);
  int rc = luaL_loadbufferx(L, src, srclen, chunk, "t");
  free(src);
  if (rc != LUA_OK) {
    script__fail(s, "%s", lua_tostring(L, -1));
    script_close(s);
    return -1;
  }
  host__budget_reset(s, L);
  host_enforce_depth++;
  rc = lua_pcall(L, 0, 1, msgh);
  host_enforce_depth--;
  if (rc != LUA_OK) {
    if (rc == LUA_ERRMEM) script__fail(s, "%s: memory limit exceeded while loading (--memory-limit)", s->file);
    else script__fail(s, "%s", lua_tostring(L, -1));
    script_close(s);
    return -1;
  }
  /* The runtime glue and the definitions. */
  lua_getglobal(L, "require");
  lua_pushstring(L, "luster.runtime");
  if (lua_pcall(L, 1, 1, msgh) != LUA_OK) {
    script__fail(s, "%s: cannot load luster.runtime: %s", s->file, lua_tostring(L, -1));
    script_close(s);
    return -1;
  }
  int rt = lua_gettop(L);
  s->ref_handle = host__ref_field(L, rt, "handle");
  s->ref_activate = host__ref_field(L, rt, "activate");
  s->ref_new_ctx = host__ref_field(L, rt, "new_ctx");
  s->ref_persist_info = host__ref_field(L, rt, "persist_info");
  s->ref_snapshot = host__ref_field(L, rt, "snapshot");
  s->ref_run_singleton = host__ref_field(L, rt, "run_singleton");
  s->ref_run_cron = host__ref_field(L, rt, "run_cron");
  lua_getfield(L, rt, "definitions");
  lua_pushvalue(L, rt - 1); /* the script's result */
  lua_pushstring(L, s->file);
  host__budget_reset(s, L);
  host_enforce_depth++;
  rc = lua_pcall(L, 2, 1, 0);
  host_enforce_depth--;
  if (rc != LUA_OK) {
    script__fail(s, "%s", lua_tostring(L, -1));
    script_close(s);
    return -1;
  }
  int n = (int)luaL_len(L, -1);
  etype_t **tail = &s->types;
  for (int i = 1; i <= n; i++) {
    lua_rawgeti(L, -1, i);
    etype_t *ty = host__read_def(s, L);
    lua_pop(L, 1);
    *tail = ty;
    tail = &ty->snext;
  }
  lua_settop(L, 0);
  lua_gc(L, LUA_GCCOLLECT);
  return 0;
}

etype_t *host_find_type(const char *name, size_t len) {
  for (etype_t *ty = host_type_list; ty; ty = ty->next)
    if (ty->name_len == len && memcmp(ty->name, name, len) == 0) return ty;
  return NULL;
}

int etype_find_rpc(const etype_t *t, const char *tag, size_t len) {
  for (int i = 0; i < t->nrpcs; i++)
    if (t->rpcs[i].tag_len == len && memcmp(t->rpcs[i].tag, tag, len) == 0) return i;
  return -1;
}

static int host__cmp(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static script_t *host_retired;

static void script__free(script_t *s) {
  script_close(s);
  free(s->path);
  free(s->file);
  free(s->error);
  free(s->reload_error);
  free(s);
}

static void host__close_check(sched_item_t *it) {
  script_t *s = (script_t *)((char *)it - offsetof(script_t, close_item));
  if (!s->retired || s->tasks > 0) return;
  for (etype_t *ty = s->types; ty; ty = ty->snext)
    if (em_instances(ty) > 0 || ty->refs > 0) return;
  script_t **pp = &host_retired;
  while (*pp && *pp != s) pp = &(*pp)->next;
  if (*pp) *pp = s->next;
  log_info("closed the replaced version %s of %s", s->version, s->file);
  script__free(s);
}

static int host_closing;

void host_type_released(etype_t *t) {
  if (t->retired && !host_closing) sched_push(&t->script->close_item, host__close_check);
}

static script_t *script__new(const char *file) {
  script_t *s = calloc(1, sizeof *s);
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", host_cfg.dir, file);
  s->path = strdup(path);
  s->file = strdup(file);
  s->mem_limit = host_cfg.memory_limit;
  s->budget = host_cfg.instruction_budget;
  return s;
}

/* Returns the name already taken by another script, or NULL. */
static const char *host__conflict(script_t *s, script_t *replacing, script_t **other) {
  for (etype_t *ty = s->types; ty; ty = ty->snext) {
    etype_t *o = host_find_type(ty->name, ty->name_len);
    if (o && o->script != replacing) {
      *other = o->script;
      return ty->name;
    }
  }
  return NULL;
}

static void host__unregister(script_t *s) {
  etype_t **pp = &host_type_list;
  while (*pp) {
    if ((*pp)->script == s) {
      (*pp)->retired = 1;
      *pp = (*pp)->next;
    } else {
      pp = &(*pp)->next;
    }
  }
}

static void host__register_types(script_t *s) {
  etype_t **tail = &host_type_list;
  while (*tail) tail = &(*tail)->next;
  for (etype_t *ty = s->types; ty; ty = ty->snext) {
    *tail = ty;
    tail = &ty->next;
  }
  *tail = NULL;
}

static void host__stop_runner_task(etype_t *ty) {
  if (ty->runner_task) {
    task_free(ty->runner_task);
    ty->runner_task = NULL;
  }
  if (ty->restart) {
    timer_cancel(&ty->restart->timer);
    free(ty->restart);
    ty->restart = NULL;
  }
}

/* Puts `s` in the place of `old` (NULL for a new file): the registry serves
 * the new types at once, and the old instances hand over to them. */
static void host__install(script_t *s, script_t *old) {
  if (old) host__unregister(old);
  host__register_types(s);
  script_t **pp = &host_script_list;
  while (*pp && *pp != old) pp = &(*pp)->next;
  if (old && *pp) {
    s->next = old->next;
    *pp = s;
  } else {
    s->next = NULL;
    pp = &host_script_list;
    while (*pp) pp = &(*pp)->next;
    *pp = s;
  }
  if (!old) return;
  old->retired = 1;
  old->next = host_retired;
  host_retired = old;
  for (etype_t *ty = old->types; ty; ty = ty->snext) {
    if (ty->kind == DEF_ENTITY) {
      etype_t *repl = host_find_type(ty->name, ty->name_len);
      em_migrate(ty, repl && repl->kind == DEF_ENTITY ? repl : NULL);
    } else {
      host__stop_runner_task(ty);
    }
  }
  sched_push(&old->close_item, host__close_check);
}

/* Removes a script whose file is gone. */
static void host__remove(script_t *s) {
  script_t **pp = &host_script_list;
  while (*pp && *pp != s) pp = &(*pp)->next;
  if (*pp) *pp = s->next;
  if (s->error || !s->L) {
    script__free(s);
    return;
  }
  host__unregister(s);
  s->retired = 1;
  s->next = host_retired;
  host_retired = s;
  for (etype_t *ty = s->types; ty; ty = ty->snext) {
    if (ty->kind == DEF_ENTITY) em_migrate(ty, NULL);
    else host__stop_runner_task(ty);
  }
  sched_push(&s->close_item, host__close_check);
}

static script_t *host__find_script(const char *file) {
  for (script_t *s = host_script_list; s; s = s->next)
    if (strcmp(s->file, file) == 0) return s;
  return NULL;
}

/* lib/ files and their content hashes, to see which changed. */
typedef struct lib_file_s {
  char *path;
  char version[17];
  int seen;
} lib_file_t;

static lib_file_t *host_libs;
static size_t host_nlibs;


static void host__walk_lib(const char *dir, char ***paths, size_t *n, size_t *cap, int depth) {
  DIR *d = opendir(dir);
  if (!d || depth > 8) {
    if (d) closedir(d);
    return;
  }
  struct dirent *e;
  while ((e = readdir(d))) {
    if (e->d_name[0] == '.') continue;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    struct stat st;
    if (stat(path, &st) != 0) continue;
    size_t len = strlen(e->d_name);
    if (S_ISDIR(st.st_mode)) {
      host__walk_lib(path, paths, n, cap, depth + 1);
    } else if (S_ISREG(st.st_mode) && len > 4 && strcmp(e->d_name + len - 4, ".lua") == 0) {
      if (*n == *cap) {
        *cap = *cap ? *cap * 2 : 16;
        *paths = realloc(*paths, *cap * sizeof **paths);
      }
      (*paths)[(*n)++] = strdup(path);
    }
  }
  closedir(d);
}

/* Rescans lib/; returns the changed (added, modified, removed) paths. */
static size_t host__lib_changes(char ***changed) {
  char libdir[4096];
  snprintf(libdir, sizeof libdir, "%s/lib", host_cfg.dir);
  char **paths = NULL;
  size_t n = 0, cap = 0, nch = 0;
  host__walk_lib(libdir, &paths, &n, &cap, 0);
  *changed = NULL;
  for (size_t i = 0; i < host_nlibs; i++) host_libs[i].seen = 0;
  for (size_t i = 0; i < n; i++) {
    size_t len;
    char *src = host__read_file(paths[i], &len);
    char ver[17] = "";
    if (src) host__hash_hex(src, len, ver);
    free(src);
    lib_file_t *lf = NULL;
    for (size_t k = 0; k < host_nlibs; k++)
      if (strcmp(host_libs[k].path, paths[i]) == 0) lf = &host_libs[k];
    if (!lf) {
      host_libs = realloc(host_libs, (host_nlibs + 1) * sizeof *host_libs);
      lf = &host_libs[host_nlibs++];
      lf->path = strdup(paths[i]);
      lf->version[0] = '\0';
    }
    lf->seen = 1;
    if (strcmp(lf->version, ver) != 0) {
      memcpy(lf->version, ver, sizeof ver);
      *changed = realloc(*changed, (nch + 1) * sizeof **changed);
      (*changed)[nch++] = strdup(paths[i]);
    }
    free(paths[i]);
  }
  free(paths);
  for (size_t k = 0; k < host_nlibs;) {
    if (host_libs[k].seen) { k++; continue; }
    *changed = realloc(*changed, (nch + 1) * sizeof **changed);
    (*changed)[nch++] = host_libs[k].path;
    host_libs[k] = host_libs[--host_nlibs];
  }
  return nch;
}

/* Does the script's state use one of these lib/ files? */
static int host__uses_lib(script_t *s, char **changed, size_t nch) {
  if (!s->L || !nch) return 0;
  lua_State *L = s->L;
  int top = lua_gettop(L);
  int found = 0;
  lua_getglobal(L, "package");
  lua_getfield(L, -1, "loaded");
  lua_getfield(L, -2, "searchpath");
  int searchpath = lua_gettop(L);
  char libpath[8300];
  snprintf(libpath, sizeof libpath, "%s/lib/?.lua;%s/lib/?/init.lua", host_cfg.dir, host_cfg.dir);
  lua_pushnil(L);
  while (!found && lua_next(L, -3) != 0) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TSTRING || !lua_isfunction(L, searchpath)) continue;
    lua_pushvalue(L, searchpath);
    lua_pushvalue(L, -2);
    lua_pushstring(L, libpath);
    if (lua_pcall(L, 2, 1, 0) == LUA_OK && lua_type(L, -1) == LUA_TSTRING) {
      const char *f = lua_tostring(L, -1);
      for (size_t i = 0; i < nch; i++)
        if (strcmp(f, changed[i]) == 0) found = 1;
    }
    lua_pop(L, 1);
  }
  lua_settop(L, top);
  return found;
}

static void host__json_list(buf_t *json, const char *key, char **files, int n, int *first) {
  if (!json) return;
  buf_printf(json, "%s\"%s\":[", *first ? "" : ",", key);
  *first = 0;
  for (int i = 0; i < n; i++) {
    if (i) buf_addc(json, ',');
    buf_add_json_str(json, files[i], strlen(files[i]));
  }
  buf_addc(json, ']');
}

void host_rescan(host_reload_report_t *rep, buf_t *json) {
  memset(rep, 0, sizeof *rep);
  char **names = NULL;
  size_t n = 0, cap = 0;
  DIR *d = opendir(host_cfg.dir);
  if (d) {
    struct dirent *e;
    while ((e = readdir(d))) {
      size_t len = strlen(e->d_name);
      if (len < 5 || strcmp(e->d_name + len - 4, ".lua") != 0 || e->d_name[0] == '.') continue;
      char path[4096];
      snprintf(path, sizeof path, "%s/%s", host_cfg.dir, e->d_name);
      struct stat st;
      if (stat(path, &st) != 0 || !S_ISREG(st.st_mode)) continue;
      if (n == cap) {
        cap = cap ? cap * 2 : 16;
        names = realloc(names, cap * sizeof *names);
      }
      names[n++] = strdup(e->d_name);
    }
    closedir(d);
  }
  if (n) qsort(names, n, sizeof *names, host__cmp);
  char **changed_libs = NULL;
  size_t nlib = host__lib_changes(&changed_libs);

  char **done_loaded = calloc(n + 1, sizeof(char *)), **done_reloaded = calloc(n + 1, sizeof(char *));
  buf_t failed;
  buf_init(&failed);
  buf_addc(&failed, '[');

  for (size_t i = 0; i < n; i++) {
    script_t *cur = host__find_script(names[i]);
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", host_cfg.dir, names[i]);
    size_t len = 0;
    char *src = host__read_file(path, &len);
    char ver[17] = "";
    if (src) host__hash_hex(src, len, ver);
    free(src);
    int lib_hit = cur && (cur->error ? nlib > 0 : host__uses_lib(cur, changed_libs, nlib));
    if (cur && strcmp(cur->version, ver) == 0 && !lib_hit) {
      if (cur->reload_error) { /* the file is back to the version that serves */
        log_info("%s is back to version %s, which kept serving", cur->file, cur->version);
        free(cur->reload_error);
        cur->reload_error = NULL;
      }
      rep->unchanged++;
      continue;
    }
    script_t *s = script__new(names[i]);
    script_t *other = NULL;
    const char *clash = NULL;
    int ok = script_load(s) == 0;
    if (ok && (clash = host__conflict(s, cur, &other)) != NULL) {
      script__fail(s, "%s: '%s' is already defined by %s; each entity type, singleton and cron job must be "
                      "defined by one script only",
                   s->file, clash, other->file);
      script_close(s);
      ok = 0;
    }
    if (!ok) {
      rep->failed++;
      if (failed.len > 1) buf_addc(&failed, ',');
      buf_adds(&failed, "{\"file\":");
      buf_add_json_str(&failed, s->file, strlen(s->file));
      buf_adds(&failed, ",\"message\":");
      buf_add_json_str(&failed, s->error, strlen(s->error));
      buf_addc(&failed, '}');
      if (cur && !cur->error) {
        log_error("reloading %s failed, version %s keeps serving: %s", s->file, cur->version, s->error);
        free(cur->reload_error);
        cur->reload_error = s->error;
        s->error = NULL;
        script__free(s);
      } else {
        log_error("script %s", s->error);
        if (cur) host__remove(cur);
        host__install(s, NULL);
      }
      continue;
    }
    if (cur && cur->error) {
      host__remove(cur);
      cur = NULL;
    }
    host__install(s, cur);
    int count = 0;
    for (etype_t *ty = s->types; ty; ty = ty->snext) count++;
    if (cur) {
      log_info("reloaded %s (version %s, was %s)", s->file, s->version, cur->version);
      done_reloaded[rep->reloaded++] = names[i];
    } else {
      log_info("loaded %s (%d definition%s, version %s)", s->file, count, count == 1 ? "" : "s", s->version);
      done_loaded[rep->loaded++] = names[i];
    }
  }
  /* Files that are gone. */
  char **removed = calloc(1, sizeof(char *));
  script_t *s = host_script_list;
  while (s) {
    script_t *next = s->next;
    int present = 0;
    for (size_t i = 0; i < n; i++)
      if (strcmp(names[i], s->file) == 0) present = 1;
    if (!present) {
      log_info("%s was removed: its definitions stop serving", s->file);
      removed = realloc(removed, (size_t)(rep->removed + 1) * sizeof(char *));
      removed[rep->removed++] = strdup(s->file);
      host__remove(s);
    }
    s = next;
  }
  host_start_background();
  if (json) {
    int first = 1;
    buf_addc(json, '{');
    host__json_list(json, "loaded", done_loaded, rep->loaded, &first);
    host__json_list(json, "reloaded", done_reloaded, rep->reloaded, &first);
    host__json_list(json, "removed", removed, rep->removed, &first);
    buf_adds(json, ",\"failed\":");
    buf_add(json, failed.data, failed.len);
    buf_printf(json, "],\"unchanged\":%d}", rep->unchanged);
  }
  buf_free(&failed);
  for (int i = 0; i < rep->removed; i++) free(removed[i]);
  free(removed);
  free(done_loaded);
  free(done_reloaded);
  for (size_t i = 0; i < n; i++) free(names[i]);
  free(names);
  for (size_t i = 0; i < nlib; i++) free(changed_libs[i]);
  free(changed_libs);
}

int host_watch_dirs(char ***dirs) {
  char libdir[4096];
  snprintf(libdir, sizeof libdir, "%s/lib", host_cfg.dir);
  char **out = malloc(sizeof(char *));
  int n = 0;
  out[n++] = strdup(host_cfg.dir);
  /* lib/ and every directory below it: inotify watches one level. */
  char **stack = malloc(sizeof(char *));
  int sn = 0;
  struct stat st;
  if (stat(libdir, &st) == 0 && S_ISDIR(st.st_mode)) stack[sn++] = strdup(libdir);
  while (sn > 0 && n < 256) {
    char *d = stack[--sn];
    out = realloc(out, (size_t)(n + 1) * sizeof(char *));
    out[n++] = d;
    DIR *dd = opendir(d);
    if (!dd) continue;
    struct dirent *e;
    while ((e = readdir(dd))) {
      if (e->d_name[0] == '.') continue;
      char path[4096];
      snprintf(path, sizeof path, "%s/%s", d, e->d_name);
      if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) {
        stack = realloc(stack, (size_t)(sn + 1) * sizeof(char *));
        stack[sn++] = strdup(path);
      }
    }
    closedir(dd);
  }
  while (sn > 0) free(stack[--sn]);
  free(stack);
  *dirs = out;
  return n;
}

int host_load_dir(const host_config_t *cfg) {
  host_cfg = *cfg;
  DIR *d = opendir(cfg->dir);
  if (!d) return -errno;
  closedir(d);
  host_reload_report_t rep;
  host_rescan(&rep, NULL);
  return rep.failed;
}

void host_cancel_tasks(void) {
  while (host_tasks) {
    task_t *t = host_tasks;
    switch (t->kind) {
    case TASK_HANDLE: task__end_handle(t, REPLY_UNAVAILABLE, "the runner is shutting down"); break;
    case TASK_ACTIVATE: task__end_activate(t, "the runner is shutting down"); break;
    default:
      t->type->runner_task = NULL;
      task_free(t);
    }
  }
  for (etype_t *ty = host_type_list; ty; ty = ty->next) {
    if (ty->restart) {
      timer_cancel(&ty->restart->timer);
      free(ty->restart);
      ty->restart = NULL;
    }
  }
}

void host_shutdown(void) {
  host_closing = 1;
  host_type_list = NULL;
  for (int pass = 0; pass < 2; pass++) {
    script_t *s = pass ? host_retired : host_script_list;
    while (s) {
      script_t *next = s->next;
      script__free(s);
      s = next;
    }
  }
  host_script_list = host_retired = NULL;
  for (size_t i = 0; i < host_nlibs; i++) free(host_libs[i].path);
  free(host_libs);
  host_libs = NULL;
  host_nlibs = 0;
}
