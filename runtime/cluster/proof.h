/* proof.h - each runner's published proof that it knows the cluster secret,
 * so that a runner with another secret (or none) is refused at start and
 * is given no shards, instead of joining and timing out every call for its
 * shards. A proof reveals nothing about the secret: it is a random nonce and
 * HMAC-SHA256(secret, label | nonce), which only a holder of the same secret
 * can recompute. A runner without a secret publishes the empty proof. */
#ifndef LUSTER_PROOF_H
#define LUSTER_PROOF_H

#include <stddef.h>

/* "v1:" + 32 hex digits of nonce + ":" + 64 hex digits of HMAC, and a NUL. */
#define PROOF_MAX 104

typedef enum {
  PROOF_OK = 0,       /* same secret, or no secret on either side */
  PROOF_UNKNOWN,      /* the runner published no proof (an older luster): not checked */
  PROOF_MISMATCH,     /* both have a secret, and they differ */
  PROOF_THEY_HAVE_NONE, /* this runner has a secret, the other has none */
  PROOF_WE_HAVE_NONE,   /* the other has a secret, this runner has none */
  PROOF_MALFORMED,
} proof_result_t;

/* Makes this runner's proof for `secret` (NULL or "" for none) into out
 * (PROOF_MAX bytes). Returns 0, or -1 when no random bytes could be had. */
int proof_make(const char *secret, char *out);
/* Checks another runner's proof (NULL when it published none) against
 * this runner's secret. */
proof_result_t proof_check(const char *secret, const char *proof);
/* What a result means, for a log line that names the problem (never the
 * secret). */
const char *proof_problem(proof_result_t r);

#endif
