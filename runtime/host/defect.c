/* defect.c - what a raised error says: its text (tables as JSON, null as
 * null), the user's own file:line, and a traceback without luster's frames.
 *
 * A handler runs under luster's own Lua code (luster/runtime.lua calls it,
 * luster/init.lua wraps calls and sleeps); those frames and positions mean
 * nothing to the script's author, so they are left out and positions point
 * at the innermost frame of the script itself. */
#include "host/host_int.h"

#include <lauxlib.h>
#include <stdio.h>
#include <string.h>

#include "host/json.h"

/* Why 20: a defect log line should show where the error came from and a few
 * callers, not a whole runaway recursion. */
#define DEFECT_MAX_FRAMES 20

/* Chunks of luster's own modules are named "@luster/<module>.lua". */
static int defect__ours(const lua_Debug *ar) { return strncmp(ar->source, "@luster/", 8) == 0; }

int host__user_where(lua_State *co, char *out, size_t n) {
  lua_Debug ar;
  for (int level = 0; lua_getstack(co, level, &ar); level++) {
    if (!lua_getinfo(co, "Sl", &ar) || ar.currentline <= 0 || defect__ours(&ar)) continue;
    snprintf(out, n, "%s:%d:", ar.short_src, ar.currentline);
    return 0;
  }
  if (n) out[0] = '\0';
  return -1;
}

void host__traceback(lua_State *co, int level, buf_t *b) {
  lua_Debug ar;
  int shown = 0;
  for (; lua_getstack(co, level, &ar); level++) {
    if (!lua_getinfo(co, "Slnt", &ar) || defect__ours(&ar)) continue;
    if (*ar.what == 'C') { /* shown when the script called it, not luster */
      lua_Debug up;
      if (lua_getstack(co, level + 1, &up) && lua_getinfo(co, "S", &up) && defect__ours(&up)) continue;
    }
    if (!shown) buf_adds(b, "\nstack traceback:");
    if (++shown > DEFECT_MAX_FRAMES) {
      buf_adds(b, "\n\t...");
      break;
    }
    if (ar.currentline > 0) buf_printf(b, "\n\t%s:%d: in ", ar.short_src, ar.currentline);
    else buf_printf(b, "\n\t%s: in ", ar.short_src);
    /* A handler is called as handlers[tag], which Lua can only name '?'. */
    if (*ar.namewhat && ar.name && strcmp(ar.name, "?") != 0)
      buf_printf(b, "%s '%s'", strcmp(ar.namewhat, "global") == 0 ? "function" : ar.namewhat, ar.name);
    else if (*ar.what == 'm') buf_adds(b, "main chunk");
    else if (*ar.what != 'C') buf_printf(b, "function <%s:%d>", ar.short_src, ar.linedefined);
    else buf_adds(b, "?");
    if (ar.istailcall) buf_adds(b, "\n\t(...tail calls...)");
  }
}

/* Whether msg starts with a position, "file:line: ". */
static int defect__has_position(const char *msg) {
  const char *p = msg;
  while (*p && *p != ':' && *p != '\n') p++;
  if (p == msg || *p != ':' || p[1] < '0' || p[1] > '9') return 0;
  p++;
  while (*p >= '0' && *p <= '9') p++;
  return p[0] == ':' && p[1] == ' ';
}

/* A string error starts at the user's line: one that luster's own code
 * raised at level 1 carries luster's position ("luster/runtime.lua:175: "),
 * which the user's replaces; one raised without a position (error(s, 0),
 * or by the runner itself) gets the user's, when a frame of theirs is on
 * the stack. */
static void defect__string(buf_t *b, const char *msg, const char *where) {
  if (!*where) {
    buf_adds(b, msg);
  } else if (!defect__has_position(msg)) {
    buf_printf(b, "%s %s", where, msg);
  } else if (strncmp(msg, "luster/", 7) == 0) {
    buf_printf(b, "%s %s", where, strstr(msg, ": ") + 2);
  } else {
    buf_adds(b, msg);
  }
}

char *host__error_text(lua_State *L, lua_State *co) {
  char where[256];
  host__user_where(co, where, sizeof where);
  buf_t b;
  buf_init(&b);
  lua_pushvalue(co, -1);
  lua_xmove(co, L, 1);
  int type = lua_type(L, -1);
  if (type == LUA_TSTRING || type == LUA_TNUMBER) {
    defect__string(&b, lua_tostring(L, -1), where);
  } else {
    /* Anything else has no position of its own: it gets the user's. */
    if (*where) buf_printf(&b, "%s ", where);
    const char *why = NULL;
    size_t n = 0;
    if (luaL_getmetafield(L, -1, "__tostring") != LUA_TNIL) {
      lua_pop(L, 1);
      buf_adds(&b, luaL_tolstring(L, -1, NULL));
      lua_pop(L, 1);
    } else if (type == LUA_TLIGHTUSERDATA && lua_touserdata(L, -1) == NULL) {
      buf_adds(&b, "null");
    } else if (type == LUA_TTABLE) {
      const char *json = json_encode_value(host__script(L)->host->json, L, lua_gettop(L), &n, &why);
      if (json) buf_add(&b, json, n);
      else buf_printf(&b, "(error object is a table that is not JSON: %s)", why);
    } else {
      buf_printf(&b, "(error object is a %s value)", luaL_typename(L, -1));
    }
  }
  lua_pop(L, 1);
  return buf_steal(&b, NULL);
}
