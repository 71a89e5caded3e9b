/* proof.c - proofs of the cluster secret in the runners table (see proof.h). */
#include "cluster/proof.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <openssl/rand.h>
#include <stdio.h>
#include <string.h>

#define PROOF_NONCE 16
#define PROOF_MAC 32

static const char proof_label[] = "luster-member";

static void proof__hex(const unsigned char *in, size_t n, char *out) {
  static const char digits[] = "0123456789abcdef";
  for (size_t i = 0; i < n; i++) {
    out[2 * i] = digits[in[i] >> 4];
    out[2 * i + 1] = digits[in[i] & 15];
  }
  out[2 * n] = '\0';
}

static int proof__unhex(const char *in, size_t n, unsigned char *out) {
  for (size_t i = 0; i < n; i++) {
    int v = 0;
    for (int k = 0; k < 2; k++) {
      char c = in[2 * i + k];
      int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
      if (d < 0) return -1;
      v = v * 16 + d;
    }
    out[i] = (unsigned char)v;
  }
  return 0;
}

/* HMAC-SHA256(secret, label | nonce). */
static int proof__mac(const char *secret, const unsigned char *nonce, unsigned char *mac) {
  unsigned char msg[sizeof proof_label - 1 + PROOF_NONCE];
  memcpy(msg, proof_label, sizeof proof_label - 1);
  memcpy(msg + sizeof proof_label - 1, nonce, PROOF_NONCE);
  unsigned int len = 0;
  if (!HMAC(EVP_sha256(), secret, (int)strlen(secret), msg, sizeof msg, mac, &len) || len != PROOF_MAC) return -1;
  return 0;
}

int proof_make(const char *secret, char *out) {
  out[0] = '\0';
  if (!secret || !*secret) return 0;
  unsigned char nonce[PROOF_NONCE], mac[PROOF_MAC];
  if (RAND_bytes(nonce, sizeof nonce) != 1 || proof__mac(secret, nonce, mac) != 0) return -1;
  memcpy(out, "v1:", 3);
  proof__hex(nonce, sizeof nonce, out + 3);
  out[3 + 2 * PROOF_NONCE] = ':';
  proof__hex(mac, sizeof mac, out + 4 + 2 * PROOF_NONCE);
  OPENSSL_cleanse(mac, sizeof mac);
  return 0;
}

proof_result_t proof_check(const char *secret, const char *proof) {
  if (!proof) return PROOF_UNKNOWN;
  int ours = secret && *secret, theirs = *proof != '\0';
  if (!ours && !theirs) return PROOF_OK;
  if (ours && !theirs) return PROOF_THEY_HAVE_NONE;
  if (!ours) return PROOF_WE_HAVE_NONE;
  unsigned char nonce[PROOF_NONCE], mac[PROOF_MAC], want[PROOF_MAC];
  if (strlen(proof) != 4 + 2 * PROOF_NONCE + 2 * PROOF_MAC || memcmp(proof, "v1:", 3) != 0 ||
      proof[3 + 2 * PROOF_NONCE] != ':' || proof__unhex(proof + 3, PROOF_NONCE, nonce) != 0 ||
      proof__unhex(proof + 4 + 2 * PROOF_NONCE, PROOF_MAC, mac) != 0)
    return PROOF_MALFORMED;
  if (proof__mac(secret, nonce, want) != 0) return PROOF_MALFORMED;
  int same = CRYPTO_memcmp(mac, want, PROOF_MAC) == 0;
  OPENSSL_cleanse(want, sizeof want);
  return same ? PROOF_OK : PROOF_MISMATCH;
}

const char *proof_problem(proof_result_t r) {
  switch (r) {
  case PROOF_MISMATCH: return "this runner's LUSTER_CLUSTER_SECRET does not match the cluster's";
  case PROOF_THEY_HAVE_NONE:
    return "this runner has a LUSTER_CLUSTER_SECRET and the cluster's runners have none";
  case PROOF_WE_HAVE_NONE:
    return "the cluster's runners have a LUSTER_CLUSTER_SECRET and this runner has none";
  case PROOF_MALFORMED: return "the cluster's runners publish a secret proof this runner cannot read";
  default: return "no problem";
  }
}
