/* fuzz_schema.c - libFuzzer target: a JSON payload, decoded by host/json.c,
 * validated against a few lua/luster/schema.lua schemas and encoded back
 * (the checks are in fuzz/schema_harness.lua). */
#include "lua_harness.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_lua_run("schema", data, size);
  return 0;
}
