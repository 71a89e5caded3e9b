/* config.h - every setting of a runner, from flags and LUSTER_* variables. */
#ifndef LUSTER_CONFIG_H
#define LUSTER_CONFIG_H

#include <stdint.h>
#include <stdio.h>

typedef struct config_s {
  const char *dir;
  const char *http;       /* host:port, or "none" */
  const char *listen;
  const char *advertise;
  const char *storage;    /* "memory", sqlite:PATH or postgres://... */
  const char *sqlite_sync; /* "normal" or "full" */
  const char *url;        /* call / status: the runner's HTTP address */
  const char *log_level;
  const char *admin;
  const char *table_prefix;
  const char *otlp_endpoint; /* spans go to this OTLP/HTTP URL; NULL: not exported */
  const char *otlp_protocol; /* "http/protobuf" (default) or "http/json" */
  uint64_t shards;
  uint64_t weight;
  uint64_t lease_ms;
  uint64_t max_idle_ms;
  uint64_t max_active;    /* entity instances a runner holds at once */
  uint64_t memory_limit;
  uint64_t instruction_budget;
  uint64_t call_timeout_ms;
  uint64_t max_body;
  uint64_t retention_ms;
  uint64_t cron_catch_up_ms;
  uint64_t request_timeout_ms;
  uint64_t idle_timeout_ms;
  uint64_t shutdown_timeout_ms;
  uint64_t no_reload;
  const char *args[8]; /* positional arguments */
  int nargs;
} config_t;

/* Fills cfg from defaults, then the environment, then argv (from index 2,
 * after the command). Returns 0, or -1 after printing what was wrong. */
int config_parse(config_t *cfg, const char *cmd, int argc, char **argv);

/* What `luster run` needs of its settings, checked once, before anything
 * starts: returns 0 (and the storage kind), or -1 after printing to stderr
 * which setting is wrong and what it should be (the runner exits 2). */
typedef enum { CONFIG_MEMORY, CONFIG_SQLITE, CONFIG_POSTGRES } config_storage_t;
int config_check_run(config_t *cfg, config_storage_t *storage);
/* The kind a --storage value names (memory for anything else: checked by
 * config_check_run). */
config_storage_t config_storage_kind(const char *storage);
/* The settings every command that loads scripts shares (shards, memory
 * limit, instruction budget); part of config_check_run. */
int config_check_common(const config_t *cfg);
void config_usage(FILE *out);

#endif
