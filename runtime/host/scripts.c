/* scripts.c - the script directory: loading each file into its own state,
 * reading its definitions into the registry, and reloading what changed
 * (including scripts whose lib/ modules changed) without a failed call. */
#include "host/host_int.h"

#include <dirent.h>
#include <errno.h>
#include <lauxlib.h>
#include <openssl/evp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "loop/log.h"
#include "core/buf.h"
#include "host/watch.h"

const host_config_t *host_config(const host_t *h) { return &h->cfg; }
script_t *host_scripts(const host_t *h) { return h->scripts; }
etype_t *host_types(const host_t *h) { return h->types; }


/* A load error as defects read: the error's text, then the traceback
 * without luster's own frames. */
static int host__msgh(lua_State *L) {
  lua_settop(L, 1);
  char *text = host__error_text(L, L);
  buf_t b;
  buf_init(&b);
  buf_adds(&b, text);
  free(text);
  host__traceback(L, 1, &b);
  lua_pushlstring(L, b.data, b.len);
  buf_free(&b);
  return 1;
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
  ty->ref.released = host_type_released;
  size_t klen;
  char *kind = host__dupfield(L, -1, "kind", &klen);
  ty->kind = strcmp(kind, "singleton") == 0 ? DEF_SINGLETON : strcmp(kind, "cron") == 0 ? DEF_CRON : DEF_ENTITY;
  free(kind);
  ty->name = host__dupfield(L, -1, "name", &ty->name_len);
  ty->cron_expr = host__dupfield(L, -1, "expr", NULL);
  lua_getfield(L, -1, "options");
  ty->max_idle_ms = host__opt_int(L, -1, "max_idle", s->host->cfg.max_idle_ms);
  ty->concurrency = (uint32_t)host__opt_int(L, -1, "concurrency", 1);
  ty->mailbox = (uint32_t)host__opt_int(L, -1, "mailbox", 4096);
  lua_getfield(L, -1, "durable");
  ty->durable = lua_toboolean(L, -1);
  lua_pop(L, 2);
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
  s->host->cfg.em->type_init(s->host->cfg.em->ud, ty);
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
  etype_host(ty)->cfg.em->type_free(ty);
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
  timer_cancel(&s->gc_timer);
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
  lua_State *L = host__state_new(s);
  if (!L) {
    free(src);
    script__fail(s, "%s: cannot create a Lua state", s->file);
    return -1;
  }
  s->L = L;

  /* package.path: the script directory's lib/ first. */
  lua_getglobal(L, "package");
  lua_pushfstring(L, "%s/lib/?.lua;%s/lib/?/init.lua;", s->host->cfg.dir, s->host->cfg.dir);
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
  rc = host__pcall(s, L, 0, 1, msgh);
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
  rc = host__pcall(s, L, 2, 1, 0);
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

etype_t *host_find_type(const host_t *h, const char *name, size_t len) {
  for (etype_t *ty = h->types; ty; ty = ty->next)
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
  host_t *h = s->host;
  for (etype_t *ty = s->types; ty; ty = ty->snext)
    if (h->cfg.em->instances(ty) > 0 || ty->ref.refs > 0) return;
  script_t **pp = &h->retired;
  while (*pp && *pp != s) pp = &(*pp)->next;
  if (*pp) *pp = s->next;
  log_info("closed the replaced version %s of %s", s->version, s->file);
  script__free(s);
}

void host_type_released(etype_t *t) {
  host_t *h = etype_host(t);
  if (t->retired && !h->closing) sched_push(h->cfg.sched, &t->script->close_item, host__close_check);
}

static script_t *script__new(host_t *h, const char *file) {
  script_t *s = calloc(1, sizeof *s);
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", h->cfg.dir, file);
  s->host = h;
  s->path = strdup(path);
  s->file = strdup(file);
  s->mem_limit = h->cfg.memory_limit;
  s->budget = h->cfg.instruction_budget;
  timer_entry_init(&s->gc_timer, h->cfg.sched, host__gc_fire);
  return s;
}

/* Returns the name already taken by another script, or NULL. */
static const char *host__conflict(script_t *s, script_t *replacing, script_t **other) {
  for (etype_t *ty = s->types; ty; ty = ty->snext) {
    etype_t *o = host_find_type(s->host, ty->name, ty->name_len);
    if (o && o->script != replacing) {
      *other = o->script;
      return ty->name;
    }
  }
  return NULL;
}

static void host__unregister(script_t *s) {
  etype_t **pp = &s->host->types;
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
  etype_t **tail = &s->host->types;
  while (*tail) tail = &(*tail)->next;
  for (etype_t *ty = s->types; ty; ty = ty->snext) {
    ty->counters = host_counters_for(s->host, ty->name, ty->name_len, ty->kind == DEF_ENTITY);
    for (int i = 0; i < ty->nrpcs; i++)
      ty->rpcs[i].histo = host_counters_rpc(ty->counters, ty->rpcs[i].tag, ty->rpcs[i].tag_len);
    *tail = ty;
    tail = &ty->next;
  }
  *tail = NULL;
}

static void host__stop_runner_task(etype_t *ty) {
  if (ty->runner_task) {
    host__task_free(ty->runner_task);
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
  host_t *h = s->host;
  if (old) host__unregister(old);
  host__register_types(s);
  script_t **pp = &h->scripts;
  while (*pp && *pp != old) pp = &(*pp)->next;
  if (old && *pp) {
    s->next = old->next;
    *pp = s;
  } else {
    s->next = NULL;
    pp = &h->scripts;
    while (*pp) pp = &(*pp)->next;
    *pp = s;
  }
  if (!old) return;
  old->retired = 1;
  old->next = h->retired;
  h->retired = old;
  for (etype_t *ty = old->types; ty; ty = ty->snext) {
    if (ty->kind == DEF_ENTITY) {
      etype_t *repl = host_find_type(h, ty->name, ty->name_len);
      h->cfg.em->migrate(ty, repl && repl->kind == DEF_ENTITY ? repl : NULL);
    } else {
      host__stop_runner_task(ty);
    }
  }
  sched_push(h->cfg.sched, &old->close_item, host__close_check);
}

/* Removes a script whose file is gone. */
static void host__remove(script_t *s) {
  host_t *h = s->host;
  script_t **pp = &h->scripts;
  while (*pp && *pp != s) pp = &(*pp)->next;
  if (*pp) *pp = s->next;
  if (s->error || !s->L) {
    script__free(s);
    return;
  }
  host__unregister(s);
  s->retired = 1;
  s->next = h->retired;
  h->retired = s;
  for (etype_t *ty = s->types; ty; ty = ty->snext) {
    if (ty->kind == DEF_ENTITY) h->cfg.em->migrate(ty, NULL);
    else host__stop_runner_task(ty);
  }
  sched_push(h->cfg.sched, &s->close_item, host__close_check);
}

static script_t *host__find_script(host_t *h, const char *file) {
  for (script_t *s = h->scripts; s; s = s->next)
    if (strcmp(s->file, file) == 0) return s;
  return NULL;
}

/* lib/ files and their content hashes, to see which changed. */
typedef struct lib_file_s {
  char *path;
  char version[17];
  int seen;
} lib_file_t;


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
static size_t host__lib_changes(host_t *h, char ***changed) {
  char libdir[4096];
  snprintf(libdir, sizeof libdir, "%s/lib", h->cfg.dir);
  char **paths = NULL;
  size_t n = 0, cap = 0, nch = 0;
  host__walk_lib(libdir, &paths, &n, &cap, 0);
  *changed = NULL;
  for (size_t i = 0; i < h->nlibs; i++) h->libs[i].seen = 0;
  for (size_t i = 0; i < n; i++) {
    size_t len;
    char *src = host__read_file(paths[i], &len);
    char ver[17] = "";
    if (src) host__hash_hex(src, len, ver);
    free(src);
    lib_file_t *lf = NULL;
    for (size_t k = 0; k < h->nlibs; k++)
      if (strcmp(h->libs[k].path, paths[i]) == 0) lf = &h->libs[k];
    if (!lf) {
      h->libs = realloc(h->libs, (h->nlibs + 1) * sizeof *h->libs);
      lf = &h->libs[h->nlibs++];
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
  for (size_t k = 0; k < h->nlibs;) {
    if (h->libs[k].seen) { k++; continue; }
    *changed = realloc(*changed, (nch + 1) * sizeof **changed);
    (*changed)[nch++] = h->libs[k].path;
    h->libs[k] = h->libs[--h->nlibs];
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
  snprintf(libpath, sizeof libpath, "%s/lib/?.lua;%s/lib/?/init.lua", s->host->cfg.dir, s->host->cfg.dir);
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

/* The top-level *.lua files of the script directory, sorted; *out is
 * malloc'd (and each name). */
static size_t host__list_dir(host_t *h, char ***out) {
  char **names = NULL;
  size_t n = 0, cap = 0;
  DIR *d = opendir(h->cfg.dir);
  if (d) {
    struct dirent *e;
    while ((e = readdir(d))) {
      size_t len = strlen(e->d_name);
      if (len < 5 || strcmp(e->d_name + len - 4, ".lua") != 0 || e->d_name[0] == '.') continue;
      char path[4096];
      snprintf(path, sizeof path, "%s/%s", h->cfg.dir, e->d_name);
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
  *out = names;
  return n;
}

/* A new version that failed to load: the old one keeps serving (or, when
 * there is none that works, the failed one is installed to report it). */
static void host__rescan_failed(script_t *s, script_t *cur, buf_t *failed) {
  if (failed->len > 1) buf_addc(failed, ',');
  buf_adds(failed, "{\"file\":");
  buf_add_json_str(failed, s->file, strlen(s->file));
  buf_adds(failed, ",\"message\":");
  buf_add_json_str(failed, s->error, strlen(s->error));
  buf_addc(failed, '}');
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
}

typedef enum { RESCAN_UNCHANGED, RESCAN_FAILED, RESCAN_LOADED, RESCAN_RELOADED } rescan_t;

/* One file of the directory: loaded when new, reloaded when its source or
 * a lib/ module it uses changed. */
static rescan_t host__rescan_one(host_t *h, const char *name, char **changed_libs, size_t nlib, buf_t *failed) {
  script_t *cur = host__find_script(h, name);
  char path[4096];
  snprintf(path, sizeof path, "%s/%s", h->cfg.dir, name);
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
    return RESCAN_UNCHANGED;
  }
  script_t *s = script__new(h, name);
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
    host__rescan_failed(s, cur, failed);
    return RESCAN_FAILED;
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
    return RESCAN_RELOADED;
  }
  log_info("loaded %s (%d definition%s, version %s)", s->file, count, count == 1 ? "" : "s", s->version);
  return RESCAN_LOADED;
}

/* Scripts whose file is gone stop serving; returns their names (malloc'd). */
static char **host__remove_gone(host_t *h, char **names, size_t n, int *nremoved) {
  char **removed = calloc(1, sizeof(char *));
  script_t *s = h->scripts;
  while (s) {
    script_t *next = s->next;
    int present = 0;
    for (size_t i = 0; i < n; i++)
      if (strcmp(names[i], s->file) == 0) present = 1;
    if (!present) {
      log_info("%s was removed: its definitions stop serving", s->file);
      removed = realloc(removed, (size_t)(*nremoved + 1) * sizeof(char *));
      removed[(*nremoved)++] = strdup(s->file);
      host__remove(s);
    }
    s = next;
  }
  return removed;
}

void host_rescan(host_t *h, host_reload_report_t *rep, buf_t *json) {
  memset(rep, 0, sizeof *rep);
  char **names = NULL;
  size_t n = host__list_dir(h, &names);
  char **changed_libs = NULL;
  size_t nlib = host__lib_changes(h, &changed_libs);
  char **done_loaded = calloc(n + 1, sizeof(char *)), **done_reloaded = calloc(n + 1, sizeof(char *));
  buf_t failed;
  buf_init(&failed);
  buf_addc(&failed, '[');
  for (size_t i = 0; i < n; i++) {
    switch (host__rescan_one(h, names[i], changed_libs, nlib, &failed)) {
    case RESCAN_UNCHANGED: rep->unchanged++; break;
    case RESCAN_FAILED: rep->failed++; break;
    case RESCAN_LOADED: done_loaded[rep->loaded++] = names[i]; break;
    case RESCAN_RELOADED: done_reloaded[rep->reloaded++] = names[i]; break;
    }
  }
  char **removed = host__remove_gone(h, names, n, &rep->removed);
  host_start_background(h);
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

int host_watch_dirs(host_t *h, char ***dirs) {
  char libdir[4096];
  snprintf(libdir, sizeof libdir, "%s/lib", h->cfg.dir);
  char **out = malloc(sizeof(char *));
  int n = 0;
  out[n++] = strdup(h->cfg.dir);
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

host_t *host_new(const host_config_t *cfg) {
  host_t *h = calloc(1, sizeof *h);
  if (!h) return NULL;
  h->cfg = *cfg;
  h->counters_tail = &h->counters;
  h->json = json_new();
  if (!h->json) {
    free(h);
    return NULL;
  }
  return h;
}

int host_load_dir(host_t *h) {
  DIR *d = opendir(h->cfg.dir);
  if (!d) return -errno;
  closedir(d);
  host_reload_report_t rep;
  host_rescan(h, &rep, NULL);
  return rep.failed;
}

void host_free(host_t *h) {
  if (!h) return;
  watch_stop(h);
  h->closing = 1;
  h->types = NULL;
  for (int pass = 0; pass < 2; pass++) {
    script_t *s = pass ? h->retired : h->scripts;
    while (s) {
      script_t *next = s->next;
      script__free(s);
      s = next;
    }
  }
  h->scripts = h->retired = NULL;
  for (size_t i = 0; i < h->nlibs; i++) free(h->libs[i].path);
  free(h->libs);
  host_counters_free(h);
  json_free(h->json);
  free(h);
}
