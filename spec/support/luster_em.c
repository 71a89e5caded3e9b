/* luster_em.c - Lua 5.4 module driving the entity manager (entity/entity.c)
 * alone, for spec/em_spec.lua: a fake host behind em_host_t (activations
 * and handlers that finish at a chosen virtual time, handlers that raise,
 * counted releases) and the scheduler on a virtual clock (loop/clock.h).
 * No Lua scripts, storage or cluster: what the spec sees is the manager's
 * own ordering, mailbox, passivation and retry rules.
 *
 * A message's payload tells the fake handler what to do: "WORK:RAISES:LABEL"
 * runs WORK virtual ms, then raises while the message has raised fewer than
 * RAISES times (as host.c: a persisted message runs again, with the host's
 * backoff, up to HOST_PERSISTED_ATTEMPTS), else replies ok with LABEL. */
#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "entity/entity.h"
#include "host/counters.h"
#include "loop/clock.h"
#include "loop/msg.h"
#include "loop/sched.h"

#define LE_NAME 32

/* A fake type: the etype_t the manager serves, with what the fake host
 * needs beside it. */
typedef struct ftype_s {
  etype_t t; /* first: the manager and messages hold &t */
  host_counters_t counters;
  rpc_def_t rpc;
  uint64_t activate_ms; /* an activation takes this long */
  int fail_activate;    /* activate raises */
  char name[LE_NAME];
} ftype_t;

/* What happened, in order: activations, handler starts and ends, releases,
 * and replies as the callers received them. */
typedef struct {
  char kind[12];
  char id[LE_NAME];
  char label[LE_NAME];
  uint64_t at;
} event_t;

typedef struct job_s job_t;

/* One manager on its own loop, scheduler and virtual clock. */
typedef struct {
  uv_loop_t loop;
  sched_t sched;
  vclock_t clock;
  em_t *em;
  etype_t *types; /* linked by next, as host_types() */
  job_t *jobs;    /* work in progress, for close */
  event_t *ev;
  size_t nev, cap;
  int closed;
} rt_t;

/* An activation (m NULL) or a handler run, finishing when its timer fires. */
struct job_s {
  timer_entry_t timer;
  rt_t *rt;
  host_inst_t *inst;
  msg_t *m;
  job_t *prev, *next;
};

typedef struct {
  rt_t *rt;
  char label[LE_NAME];
} waiter_t;

static void le__event(rt_t *rt, const char *kind, const char *id, size_t id_len, const char *label, size_t llen) {
  if (rt->nev == rt->cap) {
    size_t cap = rt->cap ? rt->cap * 2 : 64;
    event_t *ev = realloc(rt->ev, cap * sizeof *ev);
    if (!ev) return;
    rt->ev = ev;
    rt->cap = cap;
  }
  event_t *e = &rt->ev[rt->nev++];
  snprintf(e->kind, sizeof e->kind, "%s", kind);
  snprintf(e->id, sizeof e->id, "%.*s", (int)(id_len < LE_NAME ? id_len : LE_NAME - 1), id ? id : "");
  snprintf(e->label, sizeof e->label, "%.*s", (int)(llen < LE_NAME ? llen : LE_NAME - 1), label ? label : "");
  e->at = sched_now(&rt->sched);
}

/* "WORK:RAISES:LABEL" */
static void le__parse(const msg_t *m, uint64_t *work, uint32_t *raises, const char **label, size_t *llen) {
  char tmp[64];
  size_t n = m->payload_len < sizeof tmp - 1 ? m->payload_len : sizeof tmp - 1;
  memcpy(tmp, m->payload, n);
  tmp[n] = '\0';
  char *end;
  *work = strtoull(tmp, &end, 10);
  *raises = *end == ':' ? (uint32_t)strtoul(end + 1, &end, 10) : 0;
  const char *lab = strchr(end, ':') ? strchr(end, ':') + 1 : end;
  *label = m->payload + (lab - tmp);
  *llen = n - (size_t)(lab - tmp);
}

/* ------------------------------------------------------------------------
 * The fake host (em_host_t)
 * ---------------------------------------------------------------------- */

static void le__job_unlink(job_t *j) {
  if (j->prev) j->prev->next = j->next; else j->rt->jobs = j->next;
  if (j->next) j->next->prev = j->prev;
}

static void le__handle_end(rt_t *rt, host_inst_t *h, msg_t *m) {
  const host_em_t *ops = em_host_ops(rt->em);
  uint64_t work;
  uint32_t raises;
  const char *label;
  size_t llen;
  le__parse(m, &work, &raises, &label, &llen);
  if (m->attempts < raises) {
    le__event(rt, "raise", h->id, h->id_len, label, llen);
    if (m->flags & MSG_PERSISTED) {
      m->attempts++;
      if (m->attempts < HOST_PERSISTED_ATTEMPTS) {
        ops->retry(h, m, (uint64_t)HOST_RETRY_BASE_MS << (m->attempts - 1));
        ops->handled(h);
        return;
      }
    }
    size_t len;
    char *body = reply_error_body(REPLY_DEFECT, NULL, "the fake handler raised", &len);
    msg_finish(m, REPLY_DEFECT, body, len);
    free(body);
    ops->handled(h);
    return;
  }
  le__event(rt, "end", h->id, h->id_len, label, llen);
  msg_finish(m, REPLY_OK, label, llen);
  ops->handled(h);
}

static void le__job_fire(timer_entry_t *te) {
  job_t *j = (job_t *)te;
  rt_t *rt = j->rt;
  host_inst_t *h = j->inst;
  msg_t *m = j->m;
  le__job_unlink(j);
  free(j);
  if (m) {
    le__handle_end(rt, h, m);
    return;
  }
  ftype_t *ft = (ftype_t *)h->type;
  if (ft->fail_activate) {
    em_host_ops(rt->em)->activated(h, "the fake activate raised");
    return;
  }
  h->handlers_ref = h->ctx_ref = 1; /* something to release */
  em_host_ops(rt->em)->activated(h, NULL);
}

static void le__job_start(rt_t *rt, host_inst_t *h, msg_t *m, uint64_t after_ms) {
  job_t *j = calloc(1, sizeof *j);
  if (!j) abort(); /* a spec module: no way to go on */
  j->rt = rt;
  j->inst = h;
  j->m = m;
  j->next = rt->jobs;
  if (rt->jobs) rt->jobs->prev = j;
  rt->jobs = j;
  timer_entry_init(&j->timer, &rt->sched, le__job_fire);
  timer_add(&j->timer, sched_now(&rt->sched) + after_ms);
}

static etype_t *le__types(void *ud) { return ((rt_t *)ud)->types; }

static etype_t *le__find_type(void *ud, const char *name, size_t len) {
  for (etype_t *t = ((rt_t *)ud)->types; t; t = t->next)
    if (t->name_len == len && memcmp(t->name, name, len) == 0) return t;
  return NULL;
}

static int le__find_rpc(void *ud, const etype_t *t, const char *tag, size_t len) {
  for (int i = 0; i < t->nrpcs; i++)
    if (t->rpcs[i].tag_len == len && memcmp(t->rpcs[i].tag, tag, len) == 0) return i;
  return -1;
}

static const placement_ops_t *le__placement(void *ud) { return NULL; }

static void le__activate(void *ud, host_inst_t *h, const char *snap, size_t len) {
  rt_t *rt = ud;
  le__event(rt, "activate", h->id, h->id_len, snap, snap ? len : 0);
  le__job_start(rt, h, NULL, ((ftype_t *)h->type)->activate_ms);
}

static void le__handle(void *ud, host_inst_t *h, msg_t *m) {
  rt_t *rt = ud;
  uint64_t work;
  uint32_t raises;
  const char *label;
  size_t llen;
  le__parse(m, &work, &raises, &label, &llen);
  le__event(rt, "start", h->id, h->id_len, label, llen);
  le__job_start(rt, h, m, work);
}

static void le__release(void *ud, host_inst_t *h) {
  h->handlers_ref = h->ctx_ref = LUA_NOREF;
  le__event(ud, "release", h->id, h->id_len, NULL, 0);
}

static char *le__snapshot(void *ud, host_inst_t *h, size_t *len) {
  *len = 0;
  return NULL; /* the fake handlers keep no state to hand over */
}

static char *le__state_snapshot(void *ud, host_inst_t *h, size_t *len, char **err) {
  *len = 0;
  *err = NULL;
  return NULL;
}

static void le__type_released(void *ud, etype_t *t) {}
static void le__cancel_shard_tasks(void *ud, const uint8_t *mask) {}

/* ------------------------------------------------------------------------
 * Virtual time: every timer due at or before a target fires at its own
 * instant, and the ready queue runs after each (so work a timer starts
 * begins at that instant, not at the end of the advance).
 * ---------------------------------------------------------------------- */

static void le__settle(rt_t *rt) {
  uint64_t due;
  for (;;) {
    sched_drain(&rt->sched);
    if (!sched_next_due(&rt->sched, &due) || due > rt->clock.mono) return;
    clock_advance(&rt->clock, &rt->sched, 0);
  }
}

static void le__advance(rt_t *rt, uint64_t ms) {
  uint64_t target = rt->clock.mono + ms, due;
  le__settle(rt);
  while (sched_next_due(&rt->sched, &due) && due <= target) {
    clock_advance(&rt->clock, &rt->sched, due > rt->clock.mono ? due - rt->clock.mono : 0);
    le__settle(rt);
  }
  clock_advance(&rt->clock, &rt->sched, target - rt->clock.mono);
  le__settle(rt);
}

/* ------------------------------------------------------------------------
 * The Lua side
 * ---------------------------------------------------------------------- */

static rt_t *le_rt(lua_State *L) {
  rt_t *rt = luaL_checkudata(L, 1, "luster.em");
  if (rt->closed) luaL_error(L, "this manager is closed");
  return rt;
}

static ftype_t *le_type(lua_State *L, rt_t *rt, int idx) {
  size_t len;
  const char *name = luaL_checklstring(L, idx, &len);
  etype_t *t = le__find_type(rt, name, len);
  if (!t) luaL_error(L, "no type %s", name);
  return (ftype_t *)t;
}

/* new(shards) -> a manager on a fake host, a fresh loop and a virtual clock. */
static int le_new(lua_State *L) {
  lua_Integer shards = luaL_checkinteger(L, 1);
  luaL_argcheck(L, shards > 0 && shards <= 100000, 1, "shards: 1 to 100000");
  rt_t *rt = lua_newuserdatauv(L, sizeof *rt, 0);
  memset(rt, 0, sizeof *rt);
  uv_loop_init(&rt->loop);
  sched_init(&rt->sched, &rt->loop);
  clock_virtual_init(&rt->clock, 1000000);
  sched_set_clock(&rt->sched, &rt->clock.clock);
  rt->em = em_new(&rt->sched, (uint32_t)shards);
  if (!rt->em) return luaL_error(L, "em_new: out of memory");
  em_host_t host = {
      .ud = rt,
      .types = le__types,
      .find_type = le__find_type,
      .find_rpc = le__find_rpc,
      .placement = le__placement,
      .activate = le__activate,
      .handle = le__handle,
      .release = le__release,
      .snapshot = le__snapshot,
      .state_snapshot = le__state_snapshot,
      .type_released = le__type_released,
      .cancel_shard_tasks = le__cancel_shard_tasks,
  };
  em_set_host(rt->em, &host);
  luaL_setmetatable(L, "luster.em");
  return 1;
}

static lua_Integer le__opt(lua_State *L, int idx, const char *key, lua_Integer dflt) {
  lua_getfield(L, idx, key);
  lua_Integer v = lua_isnil(L, -1) ? dflt : luaL_checkinteger(L, -1);
  lua_pop(L, 1);
  return v;
}

/* m:type(name, {concurrency=, mailbox=, max_idle=, activate_ms=, fail_activate=}) */
static int le_type_new(lua_State *L) {
  rt_t *rt = le_rt(L);
  size_t len;
  const char *name = luaL_checklstring(L, 2, &len);
  luaL_argcheck(L, len > 0 && len < LE_NAME, 2, "a name of 1 to 31 bytes");
  luaL_checktype(L, 3, LUA_TTABLE);
  if (le__find_type(rt, name, len)) return luaL_error(L, "type %s exists", name);
  ftype_t *ft = calloc(1, sizeof *ft);
  if (!ft) return luaL_error(L, "out of memory");
  memcpy(ft->name, name, len);
  etype_t *t = &ft->t;
  t->kind = DEF_ENTITY;
  t->name = ft->name;
  t->name_len = len;
  t->concurrency = (uint32_t)le__opt(L, 3, "concurrency", 1);
  t->mailbox = (uint32_t)le__opt(L, 3, "mailbox", 100);
  t->max_idle_ms = (uint64_t)le__opt(L, 3, "max_idle", 60000);
  ft->activate_ms = (uint64_t)le__opt(L, 3, "activate_ms", 0);
  lua_getfield(L, 3, "fail_activate");
  ft->fail_activate = lua_toboolean(L, -1);
  lua_pop(L, 1);
  ft->rpc.tag = "Run";
  ft->rpc.tag_len = 3;
  t->rpcs = &ft->rpc;
  t->nrpcs = 1;
  t->counters = &ft->counters;
  em_type_init(rt->em, t);
  t->next = rt->types;
  rt->types = t;
  return 0;
}

static void le__replied(call_t *c, reply_kind_t kind, const char *body, size_t len) {
  waiter_t *w = c->ud;
  le__event(w->rt, reply_kind_name(kind), NULL, 0, w->label, strlen(w->label));
  free(w);
}

/* m:send(type, id, label, {work=, raises=, persisted=, timeout=}) -> "ok",
 * or "busy" (mailbox full: the message is not queued), "again" or an errno.
 * The caller's reply shows up in events() as {kind = reply kind, label};
 * timeout is its deadline in ms (0, the default: none). */
static int le_send(lua_State *L) {
  rt_t *rt = le_rt(L);
  ftype_t *ft = le_type(L, rt, 2);
  size_t il, ll;
  const char *id = luaL_checklstring(L, 3, &il);
  const char *label = luaL_checklstring(L, 4, &ll);
  luaL_argcheck(L, ll < LE_NAME, 4, "a label under 32 bytes");
  int opts = lua_istable(L, 5);
  lua_Integer work = opts ? le__opt(L, 5, "work", 0) : 0, raises = opts ? le__opt(L, 5, "raises", 0) : 0;
  lua_Integer timeout = opts ? le__opt(L, 5, "timeout", 0) : 0;
  luaL_argcheck(L, timeout >= 0, 5, "timeout not negative");
  int persisted = 0;
  if (opts) {
    lua_getfield(L, 5, "persisted");
    persisted = lua_toboolean(L, -1);
    lua_pop(L, 1);
  }
  char payload[96];
  int pl = snprintf(payload, sizeof payload, "%lld:%lld:%.*s", (long long)work, (long long)raises, (int)ll, label);
  msg_t *m = msg_new(&ft->t, 0, id, il, payload, (size_t)pl, NULL, 0);
  if (!m) return luaL_error(L, "out of memory");
  if (persisted) m->flags |= MSG_PERSISTED;
  waiter_t *w = calloc(1, sizeof *w);
  w->rt = rt;
  memcpy(w->label, label, ll);
  msg_attach_call(m, call_new(&rt->sched, le__replied, w, (uint64_t)timeout));
  int rc = em_deliver(m);
  if (rc != 0) { /* refused: m is still the caller's, and nobody waits for it */
    call_t *c = msg_detach_call(m);
    free(c->ud);
    call_cancel(c);
    msg_free(m);
  }
  le__settle(rt);
  lua_pushstring(L, rc == 0 ? "ok" : rc == -EBUSY ? "busy" : rc == -EAGAIN ? "again" : strerror(-rc));
  return 1;
}

static int le_advance(lua_State *L) {
  rt_t *rt = le_rt(L);
  lua_Integer ms = luaL_checkinteger(L, 2);
  luaL_argcheck(L, ms >= 0, 2, "not negative");
  le__advance(rt, (uint64_t)ms);
  return 0;
}

static int le_now(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)sched_now(&le_rt(L)->sched));
  return 1;
}

/* m:events() -> { {kind=, id=, label=, at=}, ... } since the start (also
 * after close, which answers what was left). */
static int le_events(lua_State *L) {
  rt_t *rt = luaL_checkudata(L, 1, "luster.em");
  lua_createtable(L, (int)rt->nev, 0);
  for (size_t i = 0; i < rt->nev; i++) {
    event_t *e = &rt->ev[i];
    lua_createtable(L, 0, 4);
    lua_pushstring(L, e->kind);
    lua_setfield(L, -2, "kind");
    lua_pushstring(L, e->id);
    lua_setfield(L, -2, "id");
    lua_pushstring(L, e->label);
    lua_setfield(L, -2, "label");
    lua_pushinteger(L, (lua_Integer)e->at);
    lua_setfield(L, -2, "at");
    lua_rawseti(L, -2, (lua_Integer)i + 1);
  }
  return 1;
}

/* m:stats(type) -> {instances=, active=, running=, queued=, activations=, passivations=} */
static int le_stats(lua_State *L) {
  rt_t *rt = le_rt(L);
  ftype_t *ft = le_type(L, rt, 2);
  const struct {
    const char *k;
    uint64_t v;
  } f[] = {{"instances", em_instances(&ft->t)}, {"active", ft->t.active},
           {"running", ft->t.running},          {"queued", ft->t.queued},
           {"activations", ft->counters.activations}, {"passivations", ft->counters.passivations}};
  lua_createtable(L, 0, 6);
  for (size_t i = 0; i < sizeof f / sizeof f[0]; i++) {
    lua_pushinteger(L, (lua_Integer)f[i].v);
    lua_setfield(L, -2, f[i].k);
  }
  return 1;
}

static const char *const le_states[] = {"new", "activating", "ready", "waiting"};

/* m:instance(type, id) -> nil, or {state=, mailbox=, running=, shard=} */
static int le_instance(lua_State *L) {
  rt_t *rt = le_rt(L);
  ftype_t *ft = le_type(L, rt, 2);
  size_t il;
  const char *id = luaL_checklstring(L, 3, &il);
  inst_t *i = em_find(&ft->t, id, il);
  if (!i) return 0;
  lua_createtable(L, 0, 4);
  lua_pushstring(L, le_states[i->state]);
  lua_setfield(L, -2, "state");
  lua_pushinteger(L, i->mb_len);
  lua_setfield(L, -2, "mailbox");
  lua_pushinteger(L, i->running);
  lua_setfield(L, -2, "running");
  lua_pushinteger(L, i->h.shard);
  lua_setfield(L, -2, "shard");
  return 1;
}

static int le_keep_alive(lua_State *L) {
  rt_t *rt = le_rt(L);
  ftype_t *ft = le_type(L, rt, 2);
  size_t il;
  const char *id = luaL_checklstring(L, 3, &il);
  em_keep_alive(&ft->t, id, il, lua_toboolean(L, 4));
  le__settle(rt);
  return 0;
}

static int le_active_total(lua_State *L) {
  lua_pushinteger(L, (lua_Integer)em_active_total(le_rt(L)->em));
  return 1;
}

/* m:max_active(n, wait_ms): em_set_max_active. */
static int le_max_active(lua_State *L) {
  rt_t *rt = le_rt(L);
  lua_Integer n = luaL_checkinteger(L, 2), wait = luaL_optinteger(L, 3, 1000);
  luaL_argcheck(L, n >= 0, 2, "not negative");
  luaL_argcheck(L, wait >= 0, 3, "not negative");
  em_set_max_active(rt->em, (uint64_t)n, (uint64_t)wait);
  return 0;
}

/* m:metrics() -> em_metrics' text (the limit's counters are read there). */
static int le_metrics(lua_State *L) {
  rt_t *rt = le_rt(L);
  buf_t b;
  buf_init(&b);
  em_metrics(rt->em, &b);
  lua_pushlstring(L, b.data ? b.data : "", b.len);
  buf_free(&b);
  return 1;
}

static int le_shard_instances(lua_State *L) {
  rt_t *rt = le_rt(L);
  lua_pushinteger(L, (lua_Integer)em_shard_instances(rt->em, (uint32_t)luaL_checkinteger(L, 2)));
  return 1;
}

/* Shutdown as main.c does it: mailboxes, then work in progress (its
 * messages are dropped: callers hear `unavailable`), then the types. */
static int le_close(lua_State *L) {
  rt_t *rt = luaL_checkudata(L, 1, "luster.em");
  if (rt->closed) return 0;
  rt->closed = 1;
  em_stop_all(rt->em);
  while (rt->jobs) {
    job_t *j = rt->jobs;
    le__job_unlink(j);
    timer_cancel(&j->timer);
    if (j->m) msg_free(j->m);
    free(j);
  }
  sched_drain(&rt->sched);
  for (etype_t *t = rt->types; t; t = t->next) em_type_free(t);
  sched_drain(&rt->sched);
  em_free(rt->em);
  while (rt->types) {
    etype_t *t = rt->types;
    rt->types = t->next;
    free(t);
  }
  sched_close(&rt->sched);
  uv_run(&rt->loop, UV_RUN_DEFAULT);
  uv_loop_close(&rt->loop);
  return 0;
}

static int le_gc(lua_State *L) {
  le_close(L);
  rt_t *rt = luaL_checkudata(L, 1, "luster.em");
  free(rt->ev);
  rt->ev = NULL;
  rt->nev = rt->cap = 0;
  return 0;
}

int luaopen_luster_em(lua_State *L) {
  static const luaL_Reg methods[] = {{"type", le_type_new},
                                     {"send", le_send},
                                     {"advance", le_advance},
                                     {"now", le_now},
                                     {"events", le_events},
                                     {"stats", le_stats},
                                     {"instance", le_instance},
                                     {"keep_alive", le_keep_alive},
                                     {"active_total", le_active_total},
                                     {"shard_instances", le_shard_instances},
                                     {"max_active", le_max_active},
                                     {"metrics", le_metrics},
                                     {"close", le_close},
                                     {NULL, NULL}};
  luaL_newmetatable(L, "luster.em");
  luaL_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pushcfunction(L, le_gc);
  lua_setfield(L, -2, "__gc");
  lua_pop(L, 1);
  lua_newtable(L);
  lua_pushcfunction(L, le_new);
  lua_setfield(L, -2, "new");
  return 1;
}
