/* client.c - a small blocking HTTP/1.1 client for the CLI commands; the
 * output is formatted by the embedded luster.cli Lua module. */
#include "cli/client.h"

#include <errno.h>
#include <lauxlib.h>
#include <lualib.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <unistd.h>

#include "core/buf.h"
#include "host/host.h"


typedef struct client_url_s {
  char host[320];
  char port[8];
  char prefix[512];
} client_url_t;

static int client__parse_url(const char *url, client_url_t *u) {
  if (strncmp(url, "http://", 7) != 0) return -1;
  const char *p = url + 7;
  const char *slash = strchr(p, '/');
  size_t hl = slash ? (size_t)(slash - p) : strlen(p);
  char hostport[300];
  if (hl == 0 || hl >= sizeof hostport) return -1;
  memcpy(hostport, p, hl);
  hostport[hl] = '\0';
  snprintf(u->prefix, sizeof u->prefix, "%s", slash ? slash : "");
  size_t pl = strlen(u->prefix);
  if (pl && u->prefix[pl - 1] == '/') u->prefix[pl - 1] = '\0';
  char *colon = strrchr(hostport, ':');
  if (hostport[0] == '[') {
    char *end = strchr(hostport, ']');
    if (!end) return -1;
    *end = '\0';
    snprintf(u->host, sizeof u->host, "%s", hostport + 1);
    snprintf(u->port, sizeof u->port, "%s", end[1] == ':' ? end + 2 : "80");
  } else if (colon) {
    *colon = '\0';
    snprintf(u->host, sizeof u->host, "%s", hostport);
    snprintf(u->port, sizeof u->port, "%s", colon + 1);
  } else {
    snprintf(u->host, sizeof u->host, "%s", hostport);
    snprintf(u->port, sizeof u->port, "80");
  }
  return 0;
}

static void client__pct(buf_t *b, const char *s) {
  static const char hex[] = "0123456789ABCDEF";
  for (; *s; s++) {
    unsigned char c = (unsigned char)*s;
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '-' || c == '_' ||
        c == '.' || c == '~') {
      buf_addc(b, (char)c);
    } else {
      char e[3] = {'%', hex[c >> 4], hex[c & 15]};
      buf_add(b, e, 3);
    }
  }
}

/* Sends one request and reads the whole response (Connection: close).
 * Returns the status, or -1 after printing why. */
static int client__request(const char *url, const char *method, const char *path, const char *body, size_t blen,
                           uint64_t timeout_ms, buf_t *resp_body) {
  client_url_t u;
  if (client__parse_url(url, &u) != 0) {
    fprintf(stderr, "luster: --url '%s' is not http://HOST:PORT\n", url);
    return -1;
  }
  struct addrinfo hints = {0}, *res = NULL;
  hints.ai_socktype = SOCK_STREAM;
  int rc = getaddrinfo(u.host, u.port, &hints, &res);
  if (rc != 0) {
    fprintf(stderr, "luster: cannot resolve %s: %s\n", u.host, gai_strerror(rc));
    return -1;
  }
  int fd = -1;
  for (struct addrinfo *ai = res; ai; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype, ai->ai_protocol);
    if (fd < 0) continue;
    if (connect(fd, ai->ai_addr, ai->ai_addrlen) == 0) break;
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (fd < 0) {
    fprintf(stderr, "luster: cannot connect to %s: %s (is a runner listening there? see --url)\n", url,
            strerror(errno));
    return -1;
  }
  struct timeval tv = {.tv_sec = (time_t)(timeout_ms / 1000), .tv_usec = (suseconds_t)(timeout_ms % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  buf_t req;
  buf_init(&req);
  buf_printf(&req,
             "%s %s%s HTTP/1.1\r\nHost: %s:%s\r\nUser-Agent: luster-cli\r\nAccept: application/json\r\n"
             "Content-Type: application/json\r\nContent-Length: %zu\r\nConnection: close\r\n\r\n",
             method, u.prefix, path, u.host, u.port, blen);
  buf_add(&req, body, blen);
  size_t off = 0;
  while (off < req.len) {
    ssize_t n = write(fd, req.data + off, req.len - off);
    if (n <= 0) {
      if (n < 0 && errno == EINTR) continue;
      fprintf(stderr, "luster: sending to %s failed: %s\n", url, strerror(errno));
      close(fd);
      buf_free(&req);
      return -1;
    }
    off += (size_t)n;
  }
  buf_free(&req);
  buf_t in;
  buf_init(&in);
  char tmp[16384];
  for (;;) {
    ssize_t n = read(fd, tmp, sizeof tmp);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      fprintf(stderr, "luster: reading from %s failed: %s\n", url,
              errno == EAGAIN ? "no answer in time" : strerror(errno));
      close(fd);
      buf_free(&in);
      return -1;
    }
    buf_add(&in, tmp, (size_t)n);
  }
  close(fd);
  int status = 0;
  char *hdr_end = in.data ? strstr(in.data, "\r\n\r\n") : NULL;
  if (!hdr_end || sscanf(in.data, "HTTP/1.%*d %d", &status) != 1) {
    fprintf(stderr, "luster: %s did not answer with HTTP\n", url);
    buf_free(&in);
    return -1;
  }
  const char *b = hdr_end + 4;
  buf_add(resp_body, b, in.len - (size_t)(b - in.data));
  buf_free(&in);
  return status;
}

/* fetch(url, path) for the formatter: GET url..path; returns status, body,
 * or nil and a message (already printed) when the runner cannot be reached. */
static int client__lua_fetch(lua_State *L) {
  const char *url = luaL_checkstring(L, 1), *path = luaL_checkstring(L, 2);
  buf_t body;
  buf_init(&body);
  int status = client__request(url, "GET", path, "", 0, 10000, &body);
  if (status < 0) {
    buf_free(&body);
    lua_pushnil(L);
    lua_pushfstring(L, "cannot reach %s", url);
    return 2;
  }
  lua_pushinteger(L, status);
  lua_pushlstring(L, body.data ? body.data : "", body.len);
  buf_free(&body);
  return 2;
}

/* Runs luster.cli's formatter `fn` over (status, body, fetch); prints what
 * it returns and gives its exit code. */
static int client__format(const char *fn, int status, const buf_t *body) {
  lua_State *L = luaL_newstate();
  luaL_openlibs(L);
  host_preload_library(L);
  int code = 1;
  lua_getglobal(L, "require");
  lua_pushstring(L, "luster.cli");
  if (lua_pcall(L, 1, 1, 0) != LUA_OK) goto fail;
  lua_getfield(L, -1, fn);
  lua_pushinteger(L, status);
  lua_pushlstring(L, body->data ? body->data : "", body->len);
  lua_pushcfunction(L, client__lua_fetch);
  if (lua_pcall(L, 3, 3, 0) != LUA_OK) goto fail;
  if (lua_isstring(L, -3)) printf("%s\n", lua_tostring(L, -3));
  if (lua_isstring(L, -2)) fprintf(stderr, "%s\n", lua_tostring(L, -2));
  code = (int)lua_tointeger(L, -1);
  lua_close(L);
  return code;
fail:
  fprintf(stderr, "luster: cannot format the answer: %s\n", lua_tostring(L, -1));
  lua_close(L);
  return 1;
}

int client_call(config_t *cfg) {
  if (cfg->nargs < 3 || cfg->nargs > 4) {
    fprintf(stderr, "usage: luster call [--url URL] TYPE ID RPC [JSON]   (JSON '-' reads standard input)\n");
    return 2;
  }
  buf_t path, payload, resp;
  buf_init(&path);
  buf_init(&payload);
  buf_init(&resp);
  buf_adds(&path, "/entities/");
  client__pct(&path, cfg->args[0]);
  buf_addc(&path, '/');
  client__pct(&path, cfg->args[1]);
  buf_addc(&path, '/');
  client__pct(&path, cfg->args[2]);
  if (cfg->nargs == 4 && strcmp(cfg->args[3], "-") == 0) {
    char tmp[8192];
    size_t n;
    while ((n = fread(tmp, 1, sizeof tmp, stdin)) > 0) buf_add(&payload, tmp, n);
  } else if (cfg->nargs == 4) {
    buf_adds(&payload, cfg->args[3]);
  }
  int status = client__request(cfg->url, "POST", path.data, payload.data ? payload.data : "", payload.len,
                               cfg->call_timeout_ms + 5000, &resp);
  int code = status < 0 ? 1 : client__format("format_call", status, &resp);
  buf_free(&path);
  buf_free(&payload);
  buf_free(&resp);
  return code;
}

int client_status(config_t *cfg) {
  if (cfg->nargs != 0) {
    fprintf(stderr, "usage: luster status [--url URL]\n");
    return 2;
  }
  buf_t resp;
  buf_init(&resp);
  int status = client__request(cfg->url, "GET", "/cluster", "", 0, 10000, &resp);
  int code = status < 0 ? 1 : client__format("format_status", status, &resp);
  buf_free(&resp);
  return code;
}

int client_where(config_t *cfg) {
  if (cfg->nargs != 2) {
    fprintf(stderr, "usage: luster where [--url URL] TYPE ID\n");
    return 2;
  }
  buf_t path, resp;
  buf_init(&path);
  buf_init(&resp);
  buf_adds(&path, "/entities/");
  client__pct(&path, cfg->args[0]);
  buf_addc(&path, '/');
  client__pct(&path, cfg->args[1]);
  int status = client__request(cfg->url, "GET", path.data, "", 0, cfg->call_timeout_ms + 5000, &resp);
  int code = status < 0 ? 1 : client__format("format_where", status, &resp);
  buf_free(&path);
  buf_free(&resp);
  return code;
}
