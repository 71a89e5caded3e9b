/* hash.c - the entity-id hash and shard function (frozen: see hash.h).
 *
 * The algorithm, exactly, so that it can be reimplemented anywhere:
 *
 *   h = 0xcbf29ce484222325                        FNV-1a 64 offset basis
 *   for each byte b:  h = (h XOR b) * 0x100000001b3   (mod 2^64)
 *   h ^= h >> 33;  h *= 0xff51afd7ed558ccd;       MurmurHash3 fmix64
 *   h ^= h >> 33;  h *= 0xc4ceb9fe1a85ec53;
 *   h ^= h >> 33;
 *
 *   shard(id, N) = (h mod N) + 1
 *
 * Why this pair: FNV-1a is byte-at-a-time, endian-free and trivially
 * portable, but its low bits mix poorly for short, similar keys
 * ("counter-1", "counter-2"), and the shard is taken from the low bits by the
 * modulo. fmix64 fixes that (full avalanche) at the cost of five operations.
 * The modulo's bias is at most N / 2^64, far below anything measurable. */
#include "hash.h"

#define HASH_FNV_OFFSET 0xcbf29ce484222325ULL
#define HASH_FNV_PRIME 0x100000001b3ULL

uint64_t hash_mix64(uint64_t x) {
  x ^= x >> 33;
  x *= 0xff51afd7ed558ccdULL;
  x ^= x >> 33;
  x *= 0xc4ceb9fe1a85ec53ULL;
  x ^= x >> 33;
  return x;
}

uint64_t hash_bytes(const void *p, size_t n) {
  const unsigned char *s = p;
  uint64_t h = HASH_FNV_OFFSET;
  if (s == NULL) n = 0;
  for (size_t i = 0; i < n; i++) {
    h ^= s[i];
    h *= HASH_FNV_PRIME;
  }
  return hash_mix64(h);
}

uint32_t hash_shard(const char *id, size_t n, uint32_t nshards) {
  if (nshards == 0) return 0;
  return (uint32_t)(hash_bytes(id, n) % nshards) + 1;
}
