/* hash.h - the entity-id hash and shard function: where every entity lives.
 *
 * These values decide shard placement across the whole cluster, so they must
 * be the same on every machine, every build and every release. Changing the
 * algorithm in hash.c moves every entity to a different shard: treat it as a
 * storage format change, not a refactor. */
#ifndef LUSTER_HASH_H
#define LUSTER_HASH_H

#include <stddef.h>
#include <stdint.h>

/* Stable, well-mixed 64-bit hash of n bytes (FNV-1a 64, then the MurmurHash3
 * fmix64 finalizer; see hash.c for the exact definition). p == NULL hashes as
 * the empty input whatever n is. */
uint64_t hash_bytes(const void *p, size_t n);

/* The MurmurHash3 fmix64 finalizer on its own: a bijection on 64-bit values
 * that spreads every input bit over every output bit. Used to derive further
 * well-mixed values (ring points) from a hash; equally frozen. */
uint64_t hash_mix64(uint64_t x);

/* Shard of an entity id: 1..nshards (shard ids are 1-based, so 0 is free to
 * mean "none"). nshards == 0 returns 0. */
uint32_t hash_shard(const char *id, size_t n, uint32_t nshards);

#endif
