/* cluster_json.c - the body of GET /cluster: this runner, the cluster's
 * runners and shard owners, the types served, the scripts loaded and their
 * errors. */
#include <string.h>

#include "admin/gateway.h"
#include "cluster/cluster.h"
#include "entity/entity.h"
#include "host/host.h"

static const char *gw__kind_name(def_kind_t k) {
  return k == DEF_SINGLETON ? "singleton" : k == DEF_CRON ? "cron" : "entity";
}

static void gw__ms_or_null(buf_t *b, const char *key, uint64_t ms) {
  if (ms) buf_printf(b, ",\"%s\":%llu", key, (unsigned long long)ms);
  else buf_printf(b, ",\"%s\":null", key);
}

/* Where a singleton or cron job runs: the runner serving the shard of its
 * name (null while no runner does), since when it runs here, and a cron
 * job's last and next instants. Since, last and next are known only on the
 * runner that runs it: null elsewhere (ask that runner). */
static void gw__background_json(buf_t *b, const gateway_info_t *gw, const etype_t *t) {
  const char *where = NULL;
  if (!cluster_on(gw->cluster)) {
    where = gw->runner;
  } else {
    tp_peer_t *peer = NULL;
    route_t rt = cluster_route(gw->cluster, cluster_shard_of(gw->cluster, t->name, t->name_len), &peer);
    if (rt == ROUTE_LOCAL) where = cluster_self(gw->cluster);
    else if (rt == ROUTE_REMOTE && peer) where = tp_peer_addr(peer);
  }
  const task_t *task =
      where && (!cluster_on(gw->cluster) || where == cluster_self(gw->cluster)) ? t->runner_task : NULL;
  buf_adds(b, ",\"runner\":");
  if (where) buf_add_json_str(b, where, strlen(where));
  else buf_adds(b, "null");
  buf_printf(b, ",\"running\":%s", task ? "true" : "false");
  gw__ms_or_null(b, "since", task ? task->started_ms : 0);
  if (t->kind == DEF_CRON) {
    gw__ms_or_null(b, "last", task ? task->cron_last_ms : 0);
    gw__ms_or_null(b, "next", task ? task->cron_next_ms : 0);
  }
}

/* "runner", and "cluster", "runners" and "shards" (one runner: itself). */
static void gw__runners_json(buf_t *b, const gateway_info_t *gw) {
  buf_adds(b, "{\"runner\":{\"address\":");
  buf_add_json_str(b, gw->runner, strlen(gw->runner));
  buf_adds(b, ",\"http\":");
  buf_add_json_str(b, gw->http_addr, strlen(gw->http_addr));
  buf_adds(b, ",\"storage\":");
  buf_add_json_str(b, gw->storage, strlen(gw->storage));
  buf_adds(b, ",\"scripts\":");
  buf_add_json_str(b, gw->dir, strlen(gw->dir));
  buf_printf(b, ",\"started_at\":%llu,\"healthy\":true,\"active\":%llu}", (unsigned long long)gw->started_ms,
             (unsigned long long)em_active_total(gw->em));
  if (cluster_on(gw->cluster)) {
    buf_adds(b, ",\"cluster\":");
    cluster_json_info(gw->cluster, b);
    buf_adds(b, ",\"runners\":");
    cluster_json_runners(gw->cluster, b);
    buf_adds(b, ",\"shards\":");
    cluster_json_shards(gw->cluster, b);
  } else {
    buf_adds(b, ",\"runners\":[{\"address\":");
    buf_add_json_str(b, gw->runner, strlen(gw->runner));
    buf_printf(b, ",\"healthy\":true,\"shards\":%u,\"active\":%llu}]", gw->shards,
               (unsigned long long)em_active_total(gw->em));
    buf_printf(b, ",\"shards\":{\"count\":%u,\"owners\":[{\"runner\":", gw->shards);
    buf_add_json_str(b, gw->runner, strlen(gw->runner));
    buf_printf(b, ",\"ranges\":[[1,%u]]}]}", gw->shards);
  }
}

static void gw__type_json(buf_t *b, const gateway_info_t *gw, const etype_t *t) {
  buf_adds(b, "{\"name\":");
  buf_add_json_str(b, t->name, t->name_len);
  buf_printf(b, ",\"kind\":\"%s\",\"file\":", gw__kind_name(t->kind));
  buf_add_json_str(b, t->script->file, strlen(t->script->file));
  /* A singleton or cron job is one instance, active while it runs here. */
  uint64_t active = t->kind == DEF_ENTITY ? t->active : t->runner_task != NULL;
  buf_printf(b, ",\"version\":\"%s\",\"active\":%llu,\"activations\":%llu,\"passivations\":%llu",
             t->script->version, (unsigned long long)active, (unsigned long long)t->counters->activations,
             (unsigned long long)t->counters->passivations);
  if (t->kind == DEF_ENTITY) {
    buf_printf(b, ",\"max_idle_ms\":%llu,\"concurrency\":%u,\"mailbox\":%u,\"rpcs\":[",
               (unsigned long long)t->max_idle_ms, t->concurrency, t->mailbox);
    for (int i = 0; i < t->nrpcs; i++) {
      if (i) buf_addc(b, ',');
      buf_adds(b, "{\"tag\":");
      buf_add_json_str(b, t->rpcs[i].tag, t->rpcs[i].tag_len);
      buf_printf(b, ",\"persisted\":%s}", t->rpcs[i].persisted ? "true" : "false");
    }
    buf_addc(b, ']');
  } else {
    if (t->cron_expr) {
      buf_adds(b, ",\"schedule\":");
      buf_add_json_str(b, t->cron_expr, strlen(t->cron_expr));
    }
    gw__background_json(b, gw, t);
  }
  buf_addc(b, '}');
}

static void gw__scripts_json(buf_t *b, const gateway_info_t *gw) {
  buf_adds(b, ",\"scripts_loaded\":[");
  int first = 1;
  for (script_t *s = host_scripts(gw->host); s; s = s->next) {
    if (!first) buf_addc(b, ',');
    first = 0;
    buf_adds(b, "{\"file\":");
    buf_add_json_str(b, s->file, strlen(s->file));
    buf_printf(b, ",\"version\":\"%s\",\"ok\":%s,\"memory_bytes\":%zu", s->version, s->error ? "false" : "true",
               s->mem);
    if (s->error) {
      buf_adds(b, ",\"error\":");
      buf_add_json_str(b, s->error, strlen(s->error));
    }
    if (s->reload_error) {
      buf_adds(b, ",\"reload_error\":");
      buf_add_json_str(b, s->reload_error, strlen(s->reload_error));
    }
    buf_addc(b, '}');
  }
  buf_adds(b, "],\"errors\":[");
  first = 1;
  for (script_t *s = host_scripts(gw->host); s; s = s->next) {
    const char *err = s->error ? s->error : s->reload_error;
    if (!err) continue;
    if (!first) buf_addc(b, ',');
    first = 0;
    buf_adds(b, "{\"file\":");
    buf_add_json_str(b, s->file, strlen(s->file));
    buf_adds(b, ",\"message\":");
    buf_add_json_str(b, err, strlen(err));
    /* serving: an older version of the file still serves its definitions */
    buf_printf(b, ",\"serving\":%s", s->error ? "false" : "true");
    if (!s->error) buf_printf(b, ",\"serving_version\":\"%s\"", s->version);
    buf_addc(b, '}');
  }
  buf_addc(b, ']');
}

void gateway_cluster_json(buf_t *b, const gateway_t *g) {
  const gateway_info_t *gw = &g->info;
  gw__runners_json(b, gw);
  buf_adds(b, ",\"types\":[");
  int first = 1;
  for (etype_t *t = host_types(gw->host); t; t = t->next) {
    if (!first) buf_addc(b, ',');
    first = 0;
    gw__type_json(b, gw, t);
  }
  buf_addc(b, ']');
  gw__scripts_json(b, gw);
  buf_addc(b, '}');
}

