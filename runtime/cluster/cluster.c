/* cluster.c - membership, assignment and leases (see cluster.h, coord.h).
 *
 * Shard states on this runner:
 *   NONE       not ours; nothing runs here.
 *   ACQUIRING  the assignment gives it to us; a lock attempt is in flight.
 *   HELD       locked by our lock session; served while the lease is fresh.
 *   RELEASING  the assignment moved it away: its queued messages went to the
 *              new owner, in-flight ones finish (bounded), instances hand
 *              over their snapshots; then we unlock it.
 *   UNLOCKING  the unlock statement is in flight.
 * Only HELD serves, and only while cluster_serving() holds. Every runner
 * computes the same assignment from the same live set (core/ring.c), so a
 * join or leave moves only the shards it must. */
#include "cluster/cluster.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "loop/log.h"
#include "cluster/durable.h"
#include "cluster/proof.h"
#include "cluster/router.h"
#include "core/hash.h"
#include "core/parse.h"
#include "core/ring.h"
#include "entity/entity.h"
#include "loop/sched.h"
#include "host/host.h"
#include "storage/coord.h"


typedef struct {
  int64_t id;
  char *address, *http, *scripts;
  char *proof; /* its proof of the cluster secret (NULL: published none) */
  uint32_t weight, held;
  int stopping;
  int trusted; /* its proof matches our secret (or it published none): it may take shards */
  int64_t heartbeat_age_ms;
  tp_peer_t *peer; /* NULL for this runner */
} member_t;

struct cluster_s {
  int on;              /* started and not closed */
  uint8_t *shard_state; /* [shard], 1..n: SHARD_* */
  uint64_t safe_until;  /* mono ms: the lease is fresh before this */
  router_t *rt;         /* the owner's, from cluster_new */
  durable_t *du;        /* the owner's, from cluster_new */
  coord_t *co;          /* from cluster_start to cluster_close */
  uint32_t *unlock_batch; /* the shards of the unlock in flight ([0]: how many) */
  unsigned poll_ticks;
  cluster_config_t cfg;
  char *address; /* advertised */
  char proof[PROOF_MAX];
  int self_excluded; /* an earlier runner does not prove our secret: we take no shards */
  int64_t self_id;
  uint32_t n;
  uint64_t *release_started;
  int32_t *owner; /* index into members, -1 = none */
  member_t *members;
  int nmembers, self_index;
  uint64_t view_version;
  /* lease */
  uint64_t lease, margin, confirmed_sent;
  int lock_up, member_locked, lock_busy;
  uint64_t embargo_until;
  int session_lost; /* the previous lock session ended: wait a lease before taking shards */
  timer_entry_t refresh_timer, fence_timer, tick_timer, poll_timer;
  /* membership reads */
  int members_busy, members_again;
  uint64_t fast_poll_until;
  int main_up;
  /* hand-off */
  int leaving, left, unregistering;
  int acquiring_busy, unlocking_busy;
  uint64_t acquire_after; /* mono ms: a lock attempt came back short; retry then (or on a notice) */
  sched_item_t reconcile_item;
  /* metrics */
  uint64_t lease_refreshes, lease_failures, fences, acquired_total, released_total;
  uint64_t last_refresh_us, max_refresh_us;
  uint64_t membership_reads, membership_changes;
  transport_t *tp; /* the runner transport, from cluster_init to cluster_close */
  sched_t *sched;  /* the owner's, from cluster_new */
};

/* A fresh reading of the scheduler's clock (loop/clock.h), never the loop
 * turn's cached time: after a stall the lease must look as old as it is. */
uint64_t cluster_mono_ms(const cluster_t *cl) { return sched_mono_fresh_ms(cl->sched); }

uint32_t cluster_shard_of(const cluster_t *cl, const char *id, size_t len) { return hash_shard(id, len, cl->n); }
const char *cluster_self(const cluster_t *cl) { return cl->address; }

static void cluster__reconcile(cluster_t *cl);
static void cluster__schedule_reconcile(cluster_t *cl);
static void cluster__read_members(cluster_t *cl);

/* ---------------------------------------------------------------------------
 * Leases
 * ------------------------------------------------------------------------- */

static uint32_t cluster__count(cluster_t *cl, int state) {
  uint32_t k = 0;
  for (uint32_t s = 1; s <= cl->n; s++) k += cl->shard_state[s] == state;
  return k;
}

/* Stops serving every shard we hold or are handing over, at once: after
 * this nothing runs here for them, whatever the lock session does next. */
static void cluster__fence(cluster_t *cl, const char *why) {
  uint8_t *mask = calloc(cl->n + 1, 1);
  uint32_t k = 0;
  for (uint32_t s = 1; s <= cl->n; s++) {
    uint8_t st = cl->shard_state[s];
    if (st == SHARD_HELD || st == SHARD_RELEASING || st == SHARD_UNLOCKING) {
      mask[s] = 1;
      k++;
    }
    cl->shard_state[s] = SHARD_NONE;
  }
  cl->safe_until = 0;
  if (k) {
    cl->fences++;
    log_error("cluster: %s: stopped serving %u shard%s before the lease could pass to another runner", why, k,
              k == 1 ? "" : "s");
    /* Handed-over snapshots not yet claimed stay: nothing runs from them
     * here, and they go on to whoever serves their shard next (or are used
     * here again if that is this runner). */
    em_fence_shards(cl->cfg.em, mask);
    host_background_update(cl->cfg.host);
  }
  free(mask);
  cl->acquiring_busy = cl->unlocking_busy = 0;
  router_wake(cl->rt);
}

static void cluster__fence_fire(timer_entry_t *t) {
  cluster_t *cl = (cluster_t *)((char *)t - offsetof(cluster_t, fence_timer));
  (void)t;
  uint64_t now = cluster_mono_ms(cl);
  if (now < cl->safe_until) {
    timer_add(&cl->fence_timer, sched_now(cl->sched) + (cl->safe_until - now));
    return;
  }
  cl->lease_failures++;
  int any =
      cluster__count(cl, SHARD_HELD) + cluster__count(cl, SHARD_RELEASING) + cluster__count(cl, SHARD_UNLOCKING) > 0;
  cl->member_locked = 0;
  if (any) cluster__fence(cl, "the shard lease could not be confirmed in time");
  /* Close the session: the server then frees its locks at once instead of
   * after its idle timeout, and we start over on a fresh session. */
  coord_reset_lock(cl->co, "lease not confirmed in time");
}

/* A round trip on the lock session that was sent at `sent` completed: the
 * server cannot end the session before sent + lease. */
static void cluster__confirmed(cluster_t *cl, uint64_t sent) {
  if (sent <= cl->confirmed_sent) return;
  cl->confirmed_sent = sent;
  cl->safe_until = sent + cl->lease - cl->margin;
  uint64_t now = cluster_mono_ms(cl);
  if (cl->safe_until > now) timer_add(&cl->fence_timer, sched_now(cl->sched) + (cl->safe_until - now));
}

typedef struct {
  cluster_t *cl;
  uint64_t sent;    /* ms, for the lease */
  uint64_t sent_us; /* for the refresh latency metric */
} lease_req_t;

static lease_req_t *cluster__req(cluster_t *cl) {
  lease_req_t *r = malloc(sizeof *r);
  if (!r) abort();
  r->cl = cl;
  r->sent = cluster_mono_ms(cl);
  r->sent_us = uv_hrtime() / 1000;
  return r;
}

static void cluster__ping_done(void *ud, int ok, const char *err) {
  lease_req_t *r = ud;
  cluster_t *cl = r->cl;
  if (!cl->on) {
    free(r);
    return;
  }
  cl->lock_busy = 0;
  if (ok) {
    uint64_t rt = uv_hrtime() / 1000 - r->sent_us;
    cl->lease_refreshes++;
    cl->last_refresh_us = rt;
    if (rt > cl->max_refresh_us) cl->max_refresh_us = rt;
    cluster__confirmed(cl, r->sent);
  } else {
    log_warn("cluster: lease refresh failed: %s", err);
  }
  free(r);
}

static void cluster__lock_self_done(void *ud, int ok, int got);

static void cluster__refresh_fire(timer_entry_t *t) {
  cluster_t *cl = (cluster_t *)((char *)t - offsetof(cluster_t, refresh_timer));
  timer_add(t, sched_now(cl->sched) + cl->lease / 4);
  if (!cl->lock_up || cl->lock_busy) return;
  if (!cl->member_locked) {
    cl->lock_busy = 1;
    coord_lock_self(cl->co, cl->lease / 4, cluster__lock_self_done, cluster__req(cl));
    return;
  }
  cl->lock_busy = 1;
  coord_ping(cl->co, cl->lease / 4, cluster__ping_done, cluster__req(cl));
}

static void cluster__lock_self_done(void *ud, int ok, int got) {
  lease_req_t *r = ud;
  cluster_t *cl = r->cl;
  if (!cl->on) {
    free(r);
    return;
  }
  cl->lock_busy = 0;
  if (ok) cluster__confirmed(cl, r->sent);
  free(r);
  if (!ok || !cl->lock_up) return;
  if (!got) {
    /* Our previous session still holds it (the server has not yet ended
     * it): try again on the next refresh. */
    log_info("cluster: waiting for the previous lock session of this runner to end");
    return;
  }
  cl->member_locked = 1;
  log_info("cluster: runner %s (id %" PRId64 ") is live", cl->address, cl->self_id);
  coord_notify(cl->co, "join");
  cluster__read_members(cl);
  cluster__schedule_reconcile(cl);
}

static void cluster__age_done(void *ud, int ok, int64_t age_ms) {
  lease_req_t *r = ud;
  cluster_t *cl = r->cl;
  if (!cl->on) {
    free(r);
    return;
  }
  if (ok) {
    cluster__confirmed(cl, r->sent);
    /* A server that restarted less than a lease ago may have lost locks that
     * another runner still believes it holds: acquire nothing until that
     * runner's lease has surely run out. */
    if (age_ms >= 0 && (uint64_t)age_ms < cl->lease) {
      cl->embargo_until = r->sent + (cl->lease - (uint64_t)age_ms) + 100;
      log_info("cluster: PostgreSQL started %" PRId64 " ms ago; taking shards in %" PRIu64 " ms", age_ms,
               cl->embargo_until - cluster_mono_ms(cl));
    }
    /* Our session ended, maybe with every other runner's (a server that
     * reset after a crashed backend keeps its start time): whoever held
     * locks then is inside its lease for up to one more lease. */
    if (cl->session_lost) {
      cl->session_lost = 0;
      if (r->sent + cl->lease + 100 > cl->embargo_until) cl->embargo_until = r->sent + cl->lease + 100;
      log_info("cluster: new lock session; taking shards in %" PRIu64 " ms", cl->embargo_until - cluster_mono_ms(cl));
    }
    cl->lock_busy = 1;
    coord_lock_self(cl->co, cl->lease / 4, cluster__lock_self_done, r);
    return;
  }
  free(r);
}

static void cluster__lock_state(void *ud, int up, const char *why) {
  cluster_t *cl = ud;
  if (!cl->on) return;
  cl->lock_up = up;
  if (!up) {
    cl->session_lost = 1;
    cl->member_locked = 0;
    cl->lock_busy = 0;
    if (cluster__count(cl, SHARD_HELD) + cluster__count(cl, SHARD_RELEASING) + cluster__count(cl, SHARD_UNLOCKING))
      cluster__fence(cl, why && *why ? why : "the lock session to PostgreSQL was lost");
    return;
  }
  cl->lock_busy = 1;
  coord_server_age(cl->co, cl->lease / 4, cluster__age_done, cluster__req(cl));
}

/* ---------------------------------------------------------------------------
 * Membership and assignment
 * ------------------------------------------------------------------------- */

static void cluster__free_members(member_t *m, int n) {
  for (int i = 0; i < n; i++) {
    free(m[i].address);
    free(m[i].http);
    free(m[i].scripts);
    free(m[i].proof);
  }
  free(m);
}

static int cluster__same_proof(const char *a, const char *b) { return a && b ? strcmp(a, b) == 0 : a == b; }

static int cluster__same_view(cluster_t *cl, const coord_member_t *m, int n) {
  if (n != cl->nmembers) return 0;
  for (int i = 0; i < n; i++) {
    const member_t *o = &cl->members[i];
    if (o->id != m[i].id || o->weight != m[i].weight || o->stopping != m[i].stopping ||
        strcmp(o->address, m[i].address) != 0 || !cluster__same_proof(o->proof, m[i].proof))
      return 0;
  }
  return 1;
}

/* Recomputes owner[] from the members that take shards. */
static void cluster__assign(cluster_t *cl) {
  ring_member_t *rm = calloc((size_t)cl->nmembers + 1, sizeof *rm);
  int *map = calloc((size_t)cl->nmembers + 1, sizeof *map);
  int k = 0;
  for (int i = 0; i < cl->nmembers; i++) {
    member_t *m = &cl->members[i];
    if (m->stopping || !m->trusted || (i == cl->self_index && (cl->leaving || cl->self_excluded))) continue;
    rm[k].id = m->address;
    rm[k].weight = m->weight;
    map[k++] = i;
  }
  int32_t *own = malloc(sizeof *own * cl->n);
  if (ring_assign(rm, k, cl->n, 1.25, own) != 0) {
    for (uint32_t s = 0; s < cl->n; s++) own[s] = -1;
  }
  for (uint32_t s = 1; s <= cl->n; s++) cl->owner[s] = own[s - 1] < 0 ? -1 : map[own[s - 1]];
  free(own);
  free(rm);
  free(map);
}

/* The second line behind the check at start (two runners can pass it
 * together): a runner whose secret proof does not match ours takes no shards
 * in our map, and if one registered before us does not match, we are the odd
 * one and take none either, so every runner's map agrees. Logged once per
 * change. */
static void cluster__trust(cluster_t *cl, member_t *nm, int n, int self) {
  int excluded = 0;
  for (int i = 0; i < n; i++) {
    proof_result_t r = i == self ? PROOF_OK : proof_check(cl->cfg.secret, nm[i].proof);
    nm[i].trusted = r == PROOF_OK || r == PROOF_UNKNOWN;
    if (nm[i].trusted) continue;
    if (nm[i].id < cl->self_id) excluded = 1;
    int known = 0;
    for (int j = 0; j < cl->nmembers; j++) known |= cl->members[j].id == nm[i].id && !cl->members[j].trusted;
    if (!known)
      log_error("cluster: cluster secret mismatch: runner %s does not prove this runner's LUSTER_CLUSTER_SECRET "
                "(%s); it is assigned no shards", nm[i].address,
                r == PROOF_WE_HAVE_NONE ? "it has a secret, this runner has none"
                : r == PROOF_THEY_HAVE_NONE ? "it has no secret" : "the secrets differ");
  }
  if (excluded && !cl->self_excluded)
    log_error("cluster: cluster secret mismatch: %s; taking no shards (start every runner with the same "
              "LUSTER_CLUSTER_SECRET)", proof_problem(PROOF_MISMATCH));
  else if (!excluded && cl->self_excluded)
    log_info("cluster: every earlier runner proves this runner's cluster secret now; taking shards");
  cl->self_excluded = excluded;
}

static void cluster__members_done(void *ud, int ok, coord_member_t *m, int n) {
  cluster_t *cl = ud;
  if (!cl->on) {
    coord_free_members(m, n);
    return;
  }
  cl->members_busy = 0;
  cl->membership_reads++;
  if (ok) {
    /* Held counts and heartbeats refresh the display even when the view is
     * the same. */
    int same = cluster__same_view(cl, m, n);
    if (same) {
      for (int i = 0; i < n; i++) {
        cl->members[i].held = m[i].held;
        cl->members[i].heartbeat_age_ms = m[i].heartbeat_age_ms;
        if (strcmp(m[i].scripts, cl->members[i].scripts) != 0) {
          free(cl->members[i].scripts);
          cl->members[i].scripts = strdup(m[i].scripts);
        }
        if (m[i].http[0] && strcmp(m[i].http, cl->members[i].http) != 0) {
          free(cl->members[i].http);
          cl->members[i].http = strdup(m[i].http);
        }
      }
    } else {
      member_t *nm = calloc((size_t)n + 1, sizeof *nm);
      int self = -1;
      for (int i = 0; i < n; i++) {
        nm[i].id = m[i].id;
        nm[i].address = strdup(m[i].address);
        nm[i].http = strdup(m[i].http);
        nm[i].scripts = strdup(m[i].scripts);
        nm[i].proof = m[i].proof ? strdup(m[i].proof) : NULL;
        nm[i].weight = m[i].weight;
        nm[i].held = m[i].held;
        nm[i].stopping = m[i].stopping;
        nm[i].heartbeat_age_ms = m[i].heartbeat_age_ms;
        if (m[i].id == cl->self_id) self = i;
        else nm[i].peer = tp_peer(cl->tp, m[i].address);
      }
      /* Peers that left: close our connection to them. */
      for (int i = 0; i < cl->nmembers; i++) {
        int still = 0;
        for (int j = 0; j < n; j++) still |= strcmp(cl->members[i].address, m[j].address) == 0;
        if (!still && i != cl->self_index) {
          log_info("cluster: runner %s left", cl->members[i].address);
          tp_peer_drop(cl->tp, cl->members[i].address);
        }
      }
      for (int j = 0; j < n; j++) {
        int was = 0;
        for (int i = 0; i < cl->nmembers; i++) was |= cl->members[i].id == m[j].id;
        if (!was && m[j].id != cl->self_id) log_info("cluster: runner %s joined", m[j].address);
      }
      cluster__trust(cl, nm, n, self);
      cluster__free_members(cl->members, cl->nmembers);
      cl->members = nm;
      cl->nmembers = n;
      cl->self_index = self;
      cl->view_version++;
      cl->membership_changes++;
      cluster__assign(cl);
      cluster__reconcile(cl);
      router_wake(cl->rt);
    }
  }
  coord_free_members(m, n);
  if (cl->members_again) {
    cl->members_again = 0;
    cluster__read_members(cl);
  }
}

static void cluster__read_members(cluster_t *cl) {
  if (!cl->main_up) return;
  if (cl->members_busy) {
    cl->members_again = 1;
    return;
  }
  cl->members_busy = 1;
  coord_members(cl->co, 2000, cluster__members_done, cl);
}

void cluster_suspect(cluster_t *cl) {
  if (!cl->on) return;
  cl->fast_poll_until = sched_now(cl->sched) + 3000;
  cluster__read_members(cl);
}

static void cluster__heartbeat_done(void *ud, int ok, const char *err) {
  (void)ud;
  if (!ok) log_debug("cluster: heartbeat failed: %s", err);
}

/* "file\tversion\n" for every script this runner serves. */
static char *cluster__scripts_text(cluster_t *cl) {
  buf_t b;
  buf_init(&b);
  for (script_t *sc = host_scripts(cl->cfg.host); sc; sc = sc->next)
    buf_printf(&b, "%s\t%s\n", sc->file, sc->error ? "error" : sc->version);
  if (!b.data) buf_adds(&b, "");
  return buf_steal(&b, NULL);
}

static void cluster__heartbeat(cluster_t *cl) {
  char *scripts = cluster__scripts_text(cl);
  coord_heartbeat(cl->co, cl->leaving, cluster__count(cl, SHARD_HELD), scripts, 2000, cluster__heartbeat_done, cl);
  free(scripts);
}

static void cluster__poll_fire(timer_entry_t *t) {
  cluster_t *cl = (cluster_t *)((char *)t - offsetof(cluster_t, poll_timer));
  uint64_t now = sched_now(cl->sched);
  int fast = now < cl->fast_poll_until;
  timer_add(t, now + (fast ? 50 : 100));
  /* Membership every 500 ms (every 50 ms while a peer is suspect); a
   * heartbeat every second. */
  cl->poll_ticks++;
  if (fast || cl->poll_ticks % 5 == 0) cluster__read_members(cl);
  if (cl->poll_ticks % 10 == 0 && cl->main_up && !cl->unregistering)
    cluster__heartbeat(cl);
}

static void cluster__main_state(void *ud, int up, const char *why) {
  cluster_t *cl = ud;
  if (!cl->on) return;
  cl->main_up = up;
  if (up) {
    cl->members_busy = 0;
    cluster__heartbeat(cl);
    cluster__read_members(cl);
  } else {
    cl->members_busy = 0;
    log_warn("cluster: membership connection lost (%s); keeping the last view", why ? why : "");
  }
}

static void cluster__notice(void *ud, const char *payload) {
  cluster_t *cl = ud;
  if (!cl->on) return;
  if (strcmp(payload, "released") == 0) cl->acquire_after = 0;
  cluster__read_members(cl);
  /* A released shard may be ours to take now. */
  cluster__schedule_reconcile(cl);
}

static void cluster__peer_down(void *ud, const char *addr, const char *why) {
  cluster_t *cl = ud;
  if (!cl->on) return;
  for (int i = 0; i < cl->nmembers; i++) {
    if (i != cl->self_index && strcmp(cl->members[i].address, addr) == 0) {
      log_info("cluster: connection to runner %s lost (%s); checking whether it is gone", addr, why);
      cluster_suspect(cl);
      return;
    }
  }
}

/* ---------------------------------------------------------------------------
 * Acquire and release
 * ------------------------------------------------------------------------- */

static void cluster__acquired(void *ud, int ok, const uint32_t *got, int ngot) {
  lease_req_t *r = ud;
  cluster_t *cl = r->cl;
  if (!cl->on) {
    free(r);
    return;
  }
  cl->acquiring_busy = 0;
  if (ok) cluster__confirmed(cl, r->sent);
  free(r);
  for (int i = 0; i < ngot; i++) {
    uint32_t s = got[i];
    if (s < 1 || s > cl->n || cl->shard_state[s] != SHARD_ACQUIRING) continue;
    cl->shard_state[s] = SHARD_HELD;
    cl->acquired_total++;
  }
  int missed = 0;
  for (uint32_t s = 1; s <= cl->n; s++)
    if (cl->shard_state[s] == SHARD_ACQUIRING) { /* still held by a runner handing it over: retry later */
      cl->shard_state[s] = SHARD_NONE;
      missed = 1;
    }
  /* Not in a tight loop: the holder's "released" notice (or the next tick)
   * brings the next attempt. */
  if (missed) cl->acquire_after = cluster_mono_ms(cl) + 100;
  if (ngot) {
    log_info("cluster: now serving %d more shard%s (%u in all)", ngot, ngot == 1 ? "" : "s",
             cluster__count(cl, SHARD_HELD));
    host_background_update(cl->cfg.host);
    durable_acquired(cl->du); /* first: held messages that router_wake sends on wait for its scan */
    router_wake(cl->rt);
  }
  if (!ok) {
    /* The statement's outcome is unknown: some locks may be ours without our
     * knowing. Start the session over so the server drops them all (unless
     * it already ended, which is why the statement failed). */
    if (cl->lock_up) {
      cluster__fence(cl, "a lock statement got no answer in time");
      coord_reset_lock(cl->co, "lock statement without answer");
    }
    return;
  }
  cluster__reconcile(cl);
}

static void cluster__unlocked(void *ud, int ok, const char *err) {
  cluster_t *cl = ud;
  uint32_t *batch = cl->unlock_batch;
  cl->unlock_batch = NULL;
  if (!cl->on) {
    free(batch);
    return;
  }
  cl->unlocking_busy = 0;
  for (uint32_t i = 1; i <= batch[0]; i++) {
    uint32_t s = batch[i];
    if (cl->shard_state[s] == SHARD_UNLOCKING) cl->shard_state[s] = SHARD_NONE;
  }
  if (!ok) {
    /* A lock we could not release would block its new owner forever: end
     * the session, which releases everything it held (if it has not ended
     * already, which is why the statement failed). */
    if (cl->lock_up) {
      log_warn("cluster: unlocking shards failed (%s); restarting the lock session", err);
      cluster__fence(cl, "a shard unlock got no answer");
      coord_reset_lock(cl->co, "unlock failed");
    }
  } else {
    cl->released_total += batch[0];
    coord_notify(cl->co, "released");
  }
  free(batch);
  cluster__reconcile(cl);
}

/* A shard being released can be unlocked once nothing of it is left here:
 * no instance, no stashed snapshot to hand on, no hand-off unconfirmed. */
static int cluster__drained(cluster_t *cl, uint32_t s) {
  return em_shard_instances(cl->cfg.em, s) == 0 && em_shard_stashed(cl->cfg.em, s) == 0 && router_handoffs_pending(cl->rt, s) == 0;
}

void cluster_shard_drained(cluster_t *cl, uint32_t shard) {
  if (shard >= 1 && shard <= cl->n && cl->shard_state[shard] == SHARD_RELEASING) cluster__schedule_reconcile(cl);
}

static int cluster__masked(const uint8_t *mask, uint32_t s) { return mask && mask[s]; }

static void cluster__reconcile(cluster_t *cl) {
  if (!cl->on) return;
  uint64_t now = cluster_mono_ms(cl);
  int ready = cl->lock_up && cl->member_locked && now >= cl->embargo_until && now < cl->safe_until &&
              now >= cl->acquire_after;
  uint32_t *acq = NULL, nacq = 0;
  uint8_t *release = NULL;
  uint32_t nrel = 0;
  uint32_t *unlock = NULL, nunlock = 0;
  uint8_t *hand_on = NULL; /* stashed snapshots of shards not ours to serve */
  for (uint32_t s = 1; s <= cl->n; s++) {
    int mine = cl->self_index >= 0 && cl->owner[s] == cl->self_index && !cl->leaving;
    uint8_t st = cl->shard_state[s];
    int elsewhere = st == SHARD_NONE && !mine && cl->owner[s] >= 0;
    if ((elsewhere || (st == SHARD_RELEASING && em_shard_instances(cl->cfg.em, s) == 0)) && em_shard_stashed(cl->cfg.em, s)) {
      if (!hand_on) hand_on = calloc(cl->n + 1, 1);
      hand_on[s] = 1;
    }
    switch (st) {
    case SHARD_NONE:
      if (mine && ready && !cl->acquiring_busy) {
        if (!acq) acq = malloc(sizeof *acq * cl->n);
        acq[nacq++] = s;
      }
      break;
    case SHARD_HELD:
      if (!mine) {
        if (!release) release = calloc(cl->n + 1, 1);
        release[s] = 1;
        nrel++;
        cl->shard_state[s] = SHARD_RELEASING;
        cl->release_started[s] = sched_now(cl->sched);
      }
      break;
    case SHARD_RELEASING:
      if (!cluster__masked(hand_on, s) && cluster__drained(cl, s) && !cl->unlocking_busy && cl->lock_up) {
        if (!unlock) unlock = malloc(sizeof *unlock * (cl->n + 1));
        unlock[++nunlock] = s;
      }
      break;
    default: break;
    }
  }
  if (hand_on) {
    em_stash_hand_on(cl->cfg.em, hand_on);
    free(hand_on);
  }
  if (nrel) {
    log_info("cluster: handing over %u shard%s", nrel, nrel == 1 ? "" : "s");
    em_release_shards(cl->cfg.em, release);
    host_background_update(cl->cfg.host);
    router_wake(cl->rt);
    free(release);
    /* Shards that had nothing running are empty now. */
    for (uint32_t s = 1; s <= cl->n; s++) {
      if (cl->shard_state[s] == SHARD_RELEASING && cluster__drained(cl, s) && !cl->unlocking_busy && cl->lock_up) {
        if (!unlock) unlock = malloc(sizeof *unlock * (cl->n + 1));
        int dup = 0;
        for (uint32_t i = 1; i <= nunlock; i++) dup |= unlock[i] == s;
        if (!dup) unlock[++nunlock] = s;
      }
    }
  }
  if (nunlock) {
    unlock[0] = nunlock;
    for (uint32_t i = 1; i <= nunlock; i++) cl->shard_state[unlock[i]] = SHARD_UNLOCKING;
    cl->unlocking_busy = 1;
    cl->unlock_batch = unlock;
    coord_unlock_shards(cl->co, unlock + 1, (int)nunlock, cl->lease / 4, cluster__unlocked, cl);
  } else {
    free(unlock);
  }
  if (nacq) {
    for (uint32_t i = 0; i < nacq; i++) cl->shard_state[acq[i]] = SHARD_ACQUIRING;
    cl->acquiring_busy = 1;
    coord_try_shards(cl->co, acq, (int)nacq, cl->lease / 4, cluster__acquired, cluster__req(cl));
  }
  free(acq);
}

static void cluster__reconcile_item(sched_item_t *it) {
  cluster_t *cl = (cluster_t *)((char *)it - offsetof(cluster_t, reconcile_item));
  cluster__reconcile(cl);
}

static void cluster__schedule_reconcile(cluster_t *cl) {
  sched_push(cl->sched, &cl->reconcile_item, cluster__reconcile_item);
}

static void cluster__leave_step(cluster_t *cl);

/* Snapshots of a released shard that its new owner has not taken within the
 * hand-off time (it is unreachable, or disagrees that it owns the shard) are
 * given up, so the shard can be unlocked and a leaving runner can leave. */
static void cluster__handoff_overdue(cluster_t *cl, uint64_t now) {
  uint8_t *late = NULL;
  for (uint32_t s = 1; s <= cl->n; s++) {
    if (cl->shard_state[s] == SHARD_RELEASING && em_shard_instances(cl->cfg.em, s) == 0 && !cluster__drained(cl, s) &&
        now - cl->release_started[s] > cl->cfg.handoff_timeout_ms) {
      if (!late) late = calloc(cl->n + 1, 1);
      late[s] = 1;
    }
  }
  if (!late) return;
  uint32_t unconfirmed = 0;
  for (uint32_t s = 1; s <= cl->n; s++) unconfirmed += late[s] ? router_handoffs_pending(cl->rt, s) : 0;
  uint32_t dropped = em_stash_drop(cl->cfg.em, late);
  router_handoffs_forget(cl->rt, late);
  log_warn("cluster: the new owners did not confirm %u snapshot%s of shards being handed over within %" PRIu64
           " ms (%u not delivered, dropped); unlocking without them", dropped + unconfirmed,
           dropped + unconfirmed == 1 ? "" : "s", cl->cfg.handoff_timeout_ms, dropped);
  free(late);
}

static void cluster__tick_fire(timer_entry_t *t) {
  cluster_t *cl = (cluster_t *)((char *)t - offsetof(cluster_t, tick_timer));
  timer_add(t, sched_now(cl->sched) + 100);
  /* In-flight work on a shard being handed over gets a bounded time. */
  uint8_t *late = NULL;
  uint64_t now = sched_now(cl->sched);
  for (uint32_t s = 1; s <= cl->n; s++) {
    if (cl->shard_state[s] == SHARD_RELEASING && em_shard_instances(cl->cfg.em, s) > 0 &&
        now - cl->release_started[s] > cl->cfg.handoff_timeout_ms) {
      if (!late) late = calloc(cl->n + 1, 1);
      late[s] = 1;
    }
  }
  if (late) {
    log_warn("cluster: work on shards being handed over ran past %" PRIu64 " ms; stopping it",
             cl->cfg.handoff_timeout_ms);
    em_fence_shards(cl->cfg.em, late);
    free(late);
  }
  cluster__handoff_overdue(cl, now);
  cluster__reconcile(cl);
  if (cl->leaving) cluster__leave_step(cl);
}

/* ---------------------------------------------------------------------------
 * Graceful leave
 * ------------------------------------------------------------------------- */

static void cluster__unregistered(void *ud, int ok, const char *err) {
  cluster_t *cl = ud;
  if (!ok) log_warn("cluster: unregistering failed (%s); the row is cleaned up later", err);
  coord_notify(cl->co, "left");
  cl->left = 1;
  log_info("cluster: handed over every shard and left the cluster");
}

static void cluster__leave_step(cluster_t *cl) {
  if (cl->unregistering) return;
  uint32_t busy = cluster__count(cl, SHARD_HELD) + cluster__count(cl, SHARD_RELEASING) +
                  cluster__count(cl, SHARD_UNLOCKING) + cluster__count(cl, SHARD_ACQUIRING);
  if (busy && cl->lock_up) return;
  if (tp_pending_output(cl->tp) > 0) return;
  cl->unregistering = 1;
  if (!cl->main_up) {
    cluster__unregistered(cl, 0, "no connection");
    return;
  }
  coord_unregister(cl->co, 2000, cluster__unregistered, cl);
}

void cluster_leave(cluster_t *cl) {
  if (!cl->on || cl->leaving) {
    if (!cl->on) cl->left = 1;
    return;
  }
  cl->leaving = 1;
  log_info("cluster: leaving: handing %u shard%s to the other runners", cluster__count(cl, SHARD_HELD),
           cluster__count(cl, SHARD_HELD) == 1 ? "" : "s");
  if (cl->main_up) cluster__heartbeat(cl);
  coord_notify(cl->co, "leaving");
  cluster__assign(cl);
  cluster__reconcile(cl);
  router_wake(cl->rt);
}

int cluster_left(const cluster_t *cl) { return cl->left; }

int cluster_healthy(const cluster_t *cl) {
  return cl->lock_up && cl->member_locked && !cl->leaving && !cl->self_excluded;
}

/* ---------------------------------------------------------------------------
 * Start and stop
 * ------------------------------------------------------------------------- */

/* At start, every live runner must prove our secret (coord_bootstrap). The
 * message names the problem, never the secret. */
static int cluster__check_proof(void *ud, const char *address, const char *proof, char *err, size_t errlen) {
  cluster_t *cl = ud;
  proof_result_t r = proof_check(cl->cfg.secret, proof);
  if (r == PROOF_OK || r == PROOF_UNKNOWN) return 0;
  snprintf(err, errlen, "cluster secret mismatch: %s (live runner %s). Start every runner of one cluster with the "
           "same LUSTER_CLUSTER_SECRET", proof_problem(r), address);
  return -1;
}

static void cluster__inbound(void *ud, tp_inbound_t *in, const frame_request_t *req) {
  router_inbound(((cluster_t *)ud)->rt, in, req);
}

static void cluster__inbound_abandoned(void *ud, tp_inbound_t *in) {
  router_inbound_abandoned(((cluster_t *)ud)->rt, in);
}

/* The runner transport on --listen (checked by the command line: HOST:PORT,
 * a fixed port unless --advertise). */
static int cluster__start_transport(cluster_t *cl, uv_loop_t *loop, const cluster_config_t *cfg, char *err,
                                   size_t errlen) {
  char host[256];
  int port;
  if (parse_hostport(cfg->listen, host, sizeof host, &port) != 0) {
    snprintf(err, errlen, "--listen '%s' is not HOST:PORT", cfg->listen);
    return -1;
  }
  char tag[96]; /* copied by transport_new */
  snprintf(tag, sizeof tag, "%s/%u", cfg->prefix, cfg->shards);
  tp_config_t tc = {
      .secret = cfg->secret,
      .cluster = tag,
      .self = cl->address,
      .max_frame = cfg->max_frame,
      .high_water = 8u << 20,
      .handshake_timeout_ms = 5000,
      .ud = cl,
      .on_request = cluster__inbound,
      .on_abandoned = cluster__inbound_abandoned,
      .on_peer_down = cluster__peer_down,
  };
  if (!(cl->tp = transport_new(loop, &tc))) {
    snprintf(err, errlen, "cannot set up the runner transport");
    return -1;
  }
  char bound[128];
  int rc = tp_listen(cl->tp, host, port, bound, sizeof bound);
  if (rc != 0) {
    snprintf(err, errlen, "cannot listen for runners on %s: %s", cfg->listen, uv_strerror(rc));
    transport_free(cl->tp);
    cl->tp = NULL;
    return -1;
  }
  log_info("runner transport listening on %s (advertised as %s%s)", bound, cl->address,
           cfg->secret && *cfg->secret ? ", cluster secret required" : "");
  return 0;
}

cluster_t *cluster_new(sched_t *s, router_t *rt, durable_t *du) {
  cluster_t *cl = calloc(1, sizeof *cl);
  if (!cl) abort();
  cl->sched = s;
  cl->rt = rt;
  cl->du = du;
  router__set_cluster(rt, cl);
  durable__set_cluster(du, cl);
  return cl;
}

void cluster_free(cluster_t *cl) {
  if (!cl) return;
  cluster_close(cl);
  free(cl->address); /* set by a start that failed before the cluster was on */
  free(cl);
}

int cluster_on(const cluster_t *cl) { return cl && cl->on; }

int cluster_serving(const cluster_t *cl, uint32_t shard) {
  return !cl || !cl->on || (cl->shard_state[shard] == SHARD_HELD && cluster_mono_ms(cl) < cl->safe_until);
}

int cluster_start(cluster_t *cl, uv_loop_t *loop, const cluster_config_t *cfg, char *err, size_t errlen) {
  cl->cfg = *cfg;
  cl->n = cfg->shards;
  /* The server ends a silent lock session a little before --lease, so that
   * noticing it (membership is read every 500 ms) and taking the shards
   * over still fits within --lease. */
  uint64_t detect = cfg->lease_ms / 10 < 1000 ? cfg->lease_ms / 10 : 1000;
  cl->lease = cfg->lease_ms - detect;
  cl->margin = cl->lease / 4;
  cl->self_index = -1;
  cl->address = strdup(cfg->advertise ? cfg->advertise : cfg->listen);
  coord_config_t cc = {
      .conninfo = cfg->conninfo,
      .prefix = cfg->prefix,
      .address = cl->address,
      .http = cfg->http,
      .weight = cfg->weight,
      .shards = cfg->shards,
      .lease_ms = cfg->lease_ms,
      .session_timeout_ms = cl->lease,
      .ud = cl,
      .on_lock_state = cluster__lock_state,
      .on_main_state = cluster__main_state,
      .on_notice = cluster__notice,
      .proof = cl->proof,
      .check_proof = cluster__check_proof,
  };
  if (proof_make(cfg->secret, cl->proof) != 0) {
    snprintf(err, errlen, "cannot make the cluster secret proof: no random bytes");
    return -1;
  }
  if (coord_bootstrap(&cc, &cl->self_id, err, errlen) != 0) return -1;

  if (cluster__start_transport(cl, loop, cfg, err, errlen) != 0) return -1;
  cl->shard_state = calloc(cl->n + 1, 1);
  cl->release_started = calloc(cl->n + 1, sizeof *cl->release_started);
  cl->owner = malloc(sizeof *cl->owner * (cl->n + 1));
  for (uint32_t s = 0; s <= cl->n; s++) cl->owner[s] = -1;
  cl->on = 1;
  timer_entry_init(&cl->refresh_timer, cl->sched, cluster__refresh_fire);
  timer_entry_init(&cl->fence_timer, cl->sched, cluster__fence_fire);
  timer_entry_init(&cl->tick_timer, cl->sched, cluster__tick_fire);
  timer_entry_init(&cl->poll_timer, cl->sched, cluster__poll_fire);
  timer_add(&cl->refresh_timer, sched_now(cl->sched) + cl->lease / 4);
  timer_add(&cl->tick_timer, sched_now(cl->sched) + 100);
  timer_add(&cl->poll_timer, sched_now(cl->sched) + 100);
  if (!(cl->co = coord_open(loop, &cc, cl->self_id))) {
    snprintf(err, errlen, "cannot open PostgreSQL connections");
    return -1;
  }
  log_info("cluster: registered as runner %" PRId64 " (%s), %u shards, lease %" PRIu64 " ms, tables '%s*'",
           cl->self_id, cl->address, cl->n, cfg->lease_ms, cfg->prefix);
  return 0;
}

void cluster_close(cluster_t *cl) {
  if (!cl->on) return;
  cl->on = 0; /* callbacks of the closing sessions change nothing now */
  timer_cancel(&cl->refresh_timer);
  timer_cancel(&cl->fence_timer);
  timer_cancel(&cl->tick_timer);
  timer_cancel(&cl->poll_timer);
  coord_close(cl->co);
  cl->co = NULL;
  transport_free(cl->tp);
  cl->tp = NULL;
  cluster__free_members(cl->members, cl->nmembers);
  cl->members = NULL;
  cl->nmembers = 0;
  free(cl->shard_state);
  free(cl->release_started);
  free(cl->owner);
  free(cl->address);
  cl->address = NULL;
  cl->owner = NULL;
  cl->release_started = NULL;
  cl->shard_state = NULL;
}

/* ---------------------------------------------------------------------------
 * Routing and visibility
 * ------------------------------------------------------------------------- */

int cluster_has_owner(const cluster_t *cl, uint32_t shard) {
  return shard >= 1 && shard <= cl->n && cl->owner[shard] >= 0;
}

route_t cluster_route(cluster_t *cl, uint32_t shard, tp_peer_t **peer) {
  if (cluster_serving(cl, shard)) return ROUTE_LOCAL;
  int o = cl->owner[shard];
  if (o < 0) return ROUTE_HOLD;
  if (o == cl->self_index) return ROUTE_HOLD_MINE;
  *peer = cl->members[o].peer;
  return *peer ? ROUTE_REMOTE : ROUTE_HOLD;
}

static const char *cluster__state_name(uint8_t s) {
  switch (s) {
  case SHARD_ACQUIRING: return "acquiring";
  case SHARD_HELD: return "held";
  case SHARD_RELEASING: return "releasing";
  case SHARD_UNLOCKING: return "unlocking";
  default: return "none";
  }
}

/* Shards as ranges: [[1,4],[9,9]]. */
static void cluster__ranges(cluster_t *cl, buf_t *b, int (*pick)(cluster_t *, uint32_t s, int arg), int arg) {
  buf_addc(b, '[');
  int first = 1;
  for (uint32_t s = 1; s <= cl->n; s++) {
    if (!pick(cl, s, arg)) continue;
    uint32_t e = s;
    while (e + 1 <= cl->n && pick(cl, e + 1, arg)) e++;
    buf_printf(b, first ? "[%u,%u]" : ",[%u,%u]", s, e);
    first = 0;
    s = e;
  }
  buf_addc(b, ']');
}

static int cluster__owned_by(cluster_t *cl, uint32_t s, int idx) { return cl->owner[s] == idx; }
static int cluster__in_state(cluster_t *cl, uint32_t s, int st) { return cl->shard_state[s] == st; }

void cluster_json_info(cluster_t *cl, buf_t *b) {
  uint64_t now = cluster_mono_ms(cl);
  buf_printf(b, "{\"mode\":\"postgres\",\"self\":");
  buf_add_json_str(b, cl->address, strlen(cl->address));
  buf_printf(b, ",\"self_id\":%" PRId64 ",\"lease_ms\":%" PRIu64 ",\"lease_left_ms\":%" PRIu64
                ",\"lock_session\":%s,\"membership_session\":%s,\"leaving\":%s",
             cl->self_id, cl->cfg.lease_ms, cl->safe_until > now ? cl->safe_until - now : 0,
             cl->lock_up && cl->member_locked ? "\"up\"" : "\"down\"", cl->main_up ? "\"up\"" : "\"down\"",
             cl->leaving ? "true" : "false");
  const router_stats_t *rs = router_stats(cl->rt);
  buf_printf(b, ",\"held_messages\":%" PRIu64 "}", rs->held);
}

static int cluster__takes_shards(cluster_t *cl, int i) {
  return cl->members[i].trusted && !(i == cl->self_index && cl->self_excluded);
}

void cluster_json_runners(cluster_t *cl, buf_t *b) {
  buf_addc(b, '[');
  for (int i = 0; i < cl->nmembers; i++) {
    member_t *m = &cl->members[i];
    uint32_t assigned = 0;
    for (uint32_t s = 1; s <= cl->n; s++) assigned += cl->owner[s] == i;
    int self = i == cl->self_index;
    if (i) buf_addc(b, ',');
    buf_printf(b, "{\"id\":%" PRId64 ",\"address\":", m->id);
    buf_add_json_str(b, m->address, strlen(m->address));
    buf_adds(b, ",\"http\":");
    buf_add_json_str(b, m->http, strlen(m->http));
    buf_printf(b, ",\"weight\":%u,\"self\":%s,\"healthy\":%s,\"status\":\"%s\",\"heartbeat_age_ms\":%" PRId64
                  ",\"shards\":%u,\"shards_assigned\":%u,\"connected\":%s",
               m->weight, self ? "true" : "false", m->stopping || !cluster__takes_shards(cl, i) ? "false" : "true",
               m->stopping ? "leaving" : cluster__takes_shards(cl, i) ? "serving" : "secret mismatch",
               m->heartbeat_age_ms, self ? cluster__count(cl, SHARD_HELD) : m->held,
               assigned, self ? "true" : (m->peer && tp_peer_ready(m->peer) ? "true" : "false"));
    if (self) buf_printf(b, ",\"active\":%" PRIu64, em_active_total(cl->cfg.em));
    buf_adds(b, ",\"scripts\":{");
    char *own = self ? cluster__scripts_text(cl) : NULL;
    const char *text = self ? own : m->scripts ? m->scripts : "";
    int first = 1;
    for (const char *line = text; *line;) {
      const char *tab = strchr(line, '\t'), *nl = strchr(line, '\n');
      if (!nl) nl = line + strlen(line);
      if (tab && tab < nl) {
        if (!first) buf_addc(b, ',');
        first = 0;
        buf_add_json_str(b, line, (size_t)(tab - line));
        buf_addc(b, ':');
        buf_add_json_str(b, tab + 1, (size_t)(nl - tab - 1));
      }
      line = *nl ? nl + 1 : nl;
    }
    free(own);
    buf_adds(b, "}}");
  }
  buf_addc(b, ']');
}

void cluster_json_shards(cluster_t *cl, buf_t *b) {
  buf_printf(b, "{\"count\":%u,\"owners\":[", cl->n);
  for (int i = 0; i < cl->nmembers; i++) {
    if (i) buf_addc(b, ',');
    buf_adds(b, "{\"runner\":");
    buf_add_json_str(b, cl->members[i].address, strlen(cl->members[i].address));
    buf_adds(b, ",\"ranges\":");
    cluster__ranges(cl, b, cluster__owned_by, i);
    buf_addc(b, '}');
  }
  buf_adds(b, "],\"here\":{");
  static const uint8_t states[] = {SHARD_HELD, SHARD_ACQUIRING, SHARD_RELEASING, SHARD_UNLOCKING};
  for (size_t k = 0; k < sizeof states; k++) {
    buf_printf(b, "%s\"%s\":", k ? "," : "", cluster__state_name(states[k]));
    cluster__ranges(cl, b, cluster__in_state, states[k]);
  }
  buf_adds(b, "}}");
}

void cluster_metrics(cluster_t *cl, buf_t *b) {
  const tp_stats_t *t = tp_stats(cl->tp);
  const router_stats_t *rs = router_stats(cl->rt);
  buf_printf(b,
             "# TYPE luster_cluster_runners gauge\nluster_cluster_runners %d\n"
             "# TYPE luster_shards_held gauge\nluster_shards_held %u\n"
             "# TYPE luster_shards_releasing gauge\nluster_shards_releasing %u\n"
             "# TYPE luster_lease_refreshes_total counter\nluster_lease_refreshes_total %" PRIu64 "\n"
             "# TYPE luster_lease_failures_total counter\nluster_lease_failures_total %" PRIu64 "\n"
             "# TYPE luster_lease_fences_total counter\nluster_lease_fences_total %" PRIu64 "\n"
             "# TYPE luster_lease_refresh_seconds gauge\nluster_lease_refresh_seconds %.6f\n"
             "# TYPE luster_lease_refresh_max_seconds gauge\nluster_lease_refresh_max_seconds %.6f\n"
             "# TYPE luster_shards_acquired_total counter\nluster_shards_acquired_total %" PRIu64 "\n"
             "# TYPE luster_shards_released_total counter\nluster_shards_released_total %" PRIu64 "\n"
             "# TYPE luster_membership_changes_total counter\nluster_membership_changes_total %" PRIu64 "\n"
             "# TYPE luster_transport_connections gauge\nluster_transport_connections{direction=\"in\"} %" PRIu64
             "\nluster_transport_connections{direction=\"out\"} %" PRIu64 "\n"
             "# TYPE luster_transport_requests_total counter\nluster_transport_requests_total{direction=\"in\"} %" PRIu64
             "\nluster_transport_requests_total{direction=\"out\"} %" PRIu64 "\n"
             "# TYPE luster_transport_auth_failures_total counter\nluster_transport_auth_failures_total %" PRIu64 "\n"
             "# TYPE luster_transport_protocol_errors_total counter\nluster_transport_protocol_errors_total %" PRIu64
             "\n"
             "# TYPE luster_router_forwarded_total counter\nluster_router_forwarded_total %" PRIu64 "\n"
             "# TYPE luster_router_reroutes_total counter\nluster_router_reroutes_total %" PRIu64 "\n"
             "# TYPE luster_router_not_owner_total counter\nluster_router_not_owner_total %" PRIu64 "\n"
             "# TYPE luster_router_held_messages gauge\nluster_router_held_messages %" PRIu64 "\n"
             "# TYPE luster_handoff_snapshots_total counter\nluster_handoff_snapshots_total %" PRIu64 "\n",
             cl->nmembers, cluster__count(cl, SHARD_HELD), cluster__count(cl, SHARD_RELEASING), cl->lease_refreshes,
             cl->lease_failures, cl->fences, (double)cl->last_refresh_us / 1e6, (double)cl->max_refresh_us / 1e6,
             cl->acquired_total, cl->released_total, cl->membership_changes, t->conns_in, t->conns_out, t->requests_in,
             t->requests_out, t->auth_failures, t->protocol_errors, rs->forwarded, rs->reroutes, rs->not_owner,
             rs->held, rs->handoffs);
}
