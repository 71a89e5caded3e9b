/* config.c - flags, their LUSTER_* environment variables, and defaults, in
 * one table so the help text, the parser and the docs cannot drift apart. */
#include "cli/config.h"

#include "net/otlp_export.h"

#include <ctype.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/parse.h"
#include "net/otlp_export.h"
#include "storage/coord.h"

typedef enum { OPT_STR, OPT_DURATION, OPT_SIZE, OPT_UINT, OPT_FLAG } opt_kind_t;

typedef struct opt_s {
  const char *name; /* flag without the dashes; env is LUSTER_ + upper-cased, '-' -> '_' */
  opt_kind_t kind;
  size_t off;
  const char *dflt;
  const char *help;
} opt_t;

#define OFF(f) offsetof(config_t, f)
static const opt_t config_opts[] = {
    {"http", OPT_STR, OFF(http), "127.0.0.1:8080", "HTTP gateway address, or 'none'"},
    {"listen", OPT_STR, OFF(listen), NULL, "runner-to-runner address (cluster mode)"},
    {"advertise", OPT_STR, OFF(advertise), NULL, "address other runners use to reach this one"},
    {"storage", OPT_STR, OFF(storage), "memory",
     "'memory' (in this process), sqlite:PATH (one runner, on disk) or a postgres:// URL (a cluster)"},
    {"sqlite-sync", OPT_STR, OFF(sqlite_sync), "normal",
     "SQLite storage: 'normal' (a crash of luster loses nothing acknowledged) or 'full' (nor does a power loss)"},
    {"shards", OPT_UINT, OFF(shards), "300", "number of shards (identical cluster-wide)"},
    {"weight", OPT_UINT, OFF(weight), "100", "this runner's share of the shards, relative to the others"},
    {"lease", OPT_DURATION, OFF(lease_ms), "10s", "shard lease: a frozen or cut-off runner's shards move after it"},
    {"table-prefix", OPT_STR, OFF(table_prefix), "luster_", "prefix of luster's tables, so clusters can share a database"},
    {"max-idle", OPT_DURATION, OFF(max_idle_ms), "60s", "passivate instances idle this long"},
    {"max-active", OPT_UINT, OFF(max_active), "1000000",
     "most entity instances held at once; beyond it the least recently used idle one is passivated"},
    {"memory-limit", OPT_SIZE, OFF(memory_limit), "256M", "memory cap of each script's Lua state"},
    {"instruction-budget", OPT_UINT, OFF(instruction_budget), "100000000",
     "Lua VM instructions one handler invocation may run"},
    {"call-timeout", OPT_DURATION, OFF(call_timeout_ms), "30s", "default deadline of a call"},
    {"max-body", OPT_SIZE, OFF(max_body), "1M", "largest HTTP request body"},
    {"retention", OPT_DURATION, OFF(retention_ms), "1h", "how long replies of persisted messages are kept"},
    {"cron-catch-up", OPT_DURATION, OFF(cron_catch_up_ms), "1d",
     "cron instants missed while no runner ran the job are run on return if younger than this"},
    {"request-timeout", OPT_DURATION, OFF(request_timeout_ms), "10s", "time a client has to send one request"},
    {"idle-timeout", OPT_DURATION, OFF(idle_timeout_ms), "60s", "idle keep-alive connections close after"},
    {"shutdown-timeout", OPT_DURATION, OFF(shutdown_timeout_ms), "10s", "graceful shutdown waits at most"},
    {"log-level", OPT_STR, OFF(log_level), "info", "debug, info, warn or error"},
    {"url", OPT_STR, OFF(url), "http://127.0.0.1:8080", "runner to talk to (call, status, where)"},
    {"admin", OPT_STR, OFF(admin), "loopback", "who may POST /admin/reload: loopback, any or none"},
    {"otlp-endpoint", OPT_STR, OFF(otlp_endpoint), NULL,
     "export trace spans to this OTLP/HTTP URL, e.g. http://127.0.0.1:4318/v1/traces (off when unset)"},
    {"otlp-protocol", OPT_STR, OFF(otlp_protocol), "http/protobuf",
     "encoding of exported spans: http/protobuf or http/json"},
    {"no-reload", OPT_FLAG, OFF(no_reload), "0", "do not watch the script directory"},
};
#define NOPTS (sizeof config_opts / sizeof config_opts[0])

/* --max-idle is read from LUSTER_MAX_IDLE. */
static void config__env_name(const opt_t *o, char *env, size_t cap) {
  size_t n = (size_t)snprintf(env, cap, "LUSTER_");
  for (const char *p = o->name; *p && n < cap - 1; p++) env[n++] = *p == '-' ? '_' : (char)toupper((unsigned char)*p);
  env[n] = '\0';
}

void config_usage(FILE *out) {
  fprintf(out,
          "usage:\n"
          "  luster run DIR [flags]                     run a runner over a directory of entity scripts\n"
          "  luster check DIR                           load and validate every script\n"
          "  luster call [--url URL] TYPE ID RPC [JSON]  one call through a runner's HTTP gateway\n"
          "  luster status [--url URL]                  runners, shards and entities, as a table\n"
          "  luster where [--url URL] TYPE ID           the shard, owner runner and state of one id\n"
          "  luster test [DIR] [busted options]         run DIR/spec's busted specs against DIR's scripts in process\n"
          "  luster new DIR                             write a starter project (an entity, its spec, a README)\n"
          "\nflags (each also read from the environment variable shown):\n");
  for (size_t i = 0; i < NOPTS; i++) {
    char env[64];
    config__env_name(&config_opts[i], env, sizeof env);
    fprintf(out, "  --%-20s %-28s %s%s%s%s\n", config_opts[i].name, env, config_opts[i].help,
            config_opts[i].dflt && config_opts[i].kind != OPT_FLAG ? " (default " : "",
            config_opts[i].dflt && config_opts[i].kind != OPT_FLAG ? config_opts[i].dflt : "",
            config_opts[i].dflt && config_opts[i].kind != OPT_FLAG ? ")" : "");
  }
}

static int config__set(config_t *cfg, const opt_t *o, const char *v, const char *source) {
  char *base = (char *)cfg + o->off;
  uint64_t n = 0;
  int rc = 0;
  switch (o->kind) {
  case OPT_STR: *(const char **)base = v; return 0;
  case OPT_FLAG:
    if (!v || !*v || strcmp(v, "1") == 0 || strcmp(v, "true") == 0 || strcmp(v, "yes") == 0) n = 1;
    else if (strcmp(v, "0") == 0 || strcmp(v, "false") == 0 || strcmp(v, "no") == 0) n = 0;
    else rc = -1;
    break;
  case OPT_DURATION: rc = parse_duration_ms(v, &n); break;
  case OPT_SIZE: rc = parse_size(v, &n); break;
  case OPT_UINT: {
    char *end;
    n = strtoull(v, &end, 10);
    rc = (*v == '\0' || *end != '\0' || *v == '-') ? -1 : 0;
    break;
  }
  }
  if (rc != 0) {
    static const char *const what[] = {"a string", "a duration such as 250ms, 30s, 5m", "a size such as 64K, 256M",
                                       "a whole number", "true or false"};
    fprintf(stderr, "luster: %s: invalid value '%s' for %s; expected %s\n", source, v, o->name, what[o->kind]);
    return -1;
  }
  *(uint64_t *)base = n;
  return 0;
}

int config_parse(config_t *cfg, const char *cmd, int argc, char **argv) {
  memset(cfg, 0, sizeof *cfg);
  for (size_t i = 0; i < NOPTS; i++)
    if (config_opts[i].dflt && config__set(cfg, &config_opts[i], config_opts[i].dflt, "default") != 0) return -1;
  for (size_t i = 0; i < NOPTS; i++) {
    char env[64];
    config__env_name(&config_opts[i], env, sizeof env);
    const char *v = getenv(env);
    if (v && config__set(cfg, &config_opts[i], v, env) != 0) return -1;
  }
  for (int i = 2; i < argc; i++) {
    const char *a = argv[i];
    if (strncmp(a, "--", 2) != 0 || strcmp(a, "--") == 0) {
      if (strcmp(a, "--") == 0) {
        for (i++; i < argc; i++) {
          if (cfg->nargs >= 8) { fprintf(stderr, "luster %s: too many arguments\n", cmd); return -1; }
          cfg->args[cfg->nargs++] = argv[i];
        }
        break;
      }
      if (cfg->nargs >= 8) { fprintf(stderr, "luster %s: too many arguments\n", cmd); return -1; }
      cfg->args[cfg->nargs++] = a;
      continue;
    }
    const char *name = a + 2;
    const char *eq = strchr(name, '=');
    size_t nl = eq ? (size_t)(eq - name) : strlen(name);
    const opt_t *o = NULL;
    for (size_t k = 0; k < NOPTS; k++)
      if (strlen(config_opts[k].name) == nl && strncmp(config_opts[k].name, name, nl) == 0) o = &config_opts[k];
    if (!o) {
      fprintf(stderr, "luster %s: unknown flag '%s' (see 'luster help')\n", cmd, a);
      return -1;
    }
    const char *v;
    if (eq) v = eq + 1;
    else if (o->kind == OPT_FLAG) v = "1";
    else if (i + 1 < argc) v = argv[++i];
    else {
      fprintf(stderr, "luster %s: flag --%s needs a value\n", cmd, o->name);
      return -1;
    }
    char src[80];
    snprintf(src, sizeof src, "--%s", o->name);
    if (config__set(cfg, o, v, src) != 0) return -1;
  }
  return 0;
}

int config_check_common(const config_t *cfg) {
  if (cfg->shards < 1 || cfg->shards > 1000000) {
    fprintf(stderr, "luster: --shards must be between 1 and 1000000, got %llu\n", (unsigned long long)cfg->shards);
    return -1;
  }
  if (cfg->memory_limit < (1u << 20)) {
    fprintf(stderr, "luster: --memory-limit must be at least 1M\n");
    return -1;
  }
  /* An instance is at least a few hundred bytes: beyond a billion, no machine
   * reaches the limit, and a typo should not pass for one. */
  if (cfg->max_active < 1 || cfg->max_active > 1000000000) {
    fprintf(stderr, "luster: --max-active must be a whole number between 1 and 1000000000 (entity instances a "
                    "runner holds at once), got %llu\n", (unsigned long long)cfg->max_active);
    return -1;
  }
  if (cfg->instruction_budget < 10000) {
    fprintf(stderr, "luster: --instruction-budget must be at least 10000\n");
    return -1;
  }
  return 0;
}

/* A HOST:PORT flag (NULL: not given). */
static int config__hostport(const char *flag, const char *v) {
  char host[256];
  int port;
  if (!v || parse_hostport(v, host, sizeof host, &port) == 0) return 0;
  fprintf(stderr, "luster run: --%s '%s' is not HOST:PORT\n", flag, v);
  return -1;
}

/* The flags of a cluster runner's transport: peers dial --advertise, or
 * --listen when it has a fixed port. */
static int config__check_cluster(const config_t *cfg) {
  if (config__hostport("listen", cfg->listen) != 0 || config__hostport("advertise", cfg->advertise) != 0) return -1;
  char host[256];
  int port;
  parse_hostport(cfg->listen, host, sizeof host, &port);
  if (port == 0 && !cfg->advertise) {
    fprintf(stderr, "luster run: --listen %s: a cluster runner needs a fixed port (peers dial it), or --advertise\n",
            cfg->listen);
    return -1;
  }
  return 0;
}

config_storage_t config_storage_kind(const char *storage) {
  if (strncmp(storage, "postgres://", 11) == 0 || strncmp(storage, "postgresql://", 13) == 0) return CONFIG_POSTGRES;
  return strncmp(storage, "sqlite:", 7) == 0 ? CONFIG_SQLITE : CONFIG_MEMORY;
}

/* Which storage, and the flags that go with it. */
static int config__check_storage(config_t *cfg, config_storage_t *storage) {
  *storage = config_storage_kind(cfg->storage);
  int clustered = *storage == CONFIG_POSTGRES, sqlite = *storage == CONFIG_SQLITE;
  if (!clustered && !sqlite && strcmp(cfg->storage, "memory") != 0) {
    fprintf(stderr, "luster run: --storage must be 'memory', sqlite:PATH or a postgres:// URL, got '%s'\n",
            cfg->storage);
    return -1;
  }
  if (sqlite && cfg->storage[7] == '\0') {
    fprintf(stderr, "luster run: --storage sqlite:PATH needs the path of the database file, e.g. "
                    "sqlite:/var/lib/luster/app.db\n");
    return -1;
  }
  if (strcmp(cfg->sqlite_sync, "normal") != 0 && strcmp(cfg->sqlite_sync, "full") != 0) {
    fprintf(stderr, "luster run: --sqlite-sync must be 'normal' or 'full', got '%s'\n", cfg->sqlite_sync);
    return -1;
  }
  if (clustered && !cfg->listen) {
    fprintf(stderr, "luster run: a runner on PostgreSQL joins a cluster and needs --listen HOST:PORT for "
                    "runner-to-runner traffic (and --advertise HOST:PORT when peers must dial another address)\n");
    return -1;
  }
  if (!clustered && (cfg->listen || cfg->advertise)) {
    fprintf(stderr, "luster run: --listen and --advertise are for clusters, which need --storage postgres://... "
                    "(sqlite: and memory serve one runner)\n");
    return -1;
  }
  if (clustered && coord_valid_prefix(cfg->table_prefix) != 0) {
    fprintf(stderr, "luster run: --table-prefix '%s' must be 1-40 characters of a-z, 0-9 and _, not starting "
                    "with a digit\n", cfg->table_prefix);
    return -1;
  }
  if (clustered && (cfg->lease_ms < 500 || cfg->lease_ms > 600000)) {
    fprintf(stderr, "luster run: --lease must be between 500ms and 10m\n");
    return -1;
  }
  if (cfg->weight > 1000000) {
    fprintf(stderr, "luster run: --weight must be at most 1000000\n");
    return -1;
  }
  return 0;
}

int config_check_run(config_t *cfg, config_storage_t *storage) {
  if (config__check_storage(cfg, storage) != 0) return -1;
  if (*storage == CONFIG_POSTGRES && config__check_cluster(cfg) != 0) return -1;
  if (config_check_common(cfg) != 0) return -1;
  char host[256];
  int port;
  if (strcmp(cfg->http, "none") != 0 && parse_hostport(cfg->http, host, sizeof host, &port) != 0) {
    fprintf(stderr, "luster run: --http '%s' is not HOST:PORT (or 'none')\n", cfg->http);
    return -1;
  }
  if (strcmp(cfg->admin, "loopback") != 0 && strcmp(cfg->admin, "any") != 0 && strcmp(cfg->admin, "none") != 0) {
    fprintf(stderr, "luster run: --admin must be loopback, any or none, got '%s'\n", cfg->admin);
    return -1;
  }
  if (cfg->otlp_endpoint && *cfg->otlp_endpoint) { /* empty: off, as unset */
    char *why = otlp_endpoint_check(cfg->otlp_endpoint);
    if (why) {
      fprintf(stderr, "luster run: --otlp-endpoint (LUSTER_OTLP_ENDPOINT): %s\n", why);
      free(why);
      return -1;
    }
  }
  otlp_protocol_t proto;
  if (otlp_protocol_parse(cfg->otlp_protocol, &proto) != 0) {
    fprintf(stderr, "luster run: --otlp-protocol (LUSTER_OTLP_PROTOCOL): '%s' is not a protocol; expected http/protobuf or http/json\n",
            cfg->otlp_protocol ? cfg->otlp_protocol : "");
    return -1;
  }
  return 0;
}
