/* fuzz_cron.c - libFuzzer target: cron expressions through
 * lua/luster/cron.lua's parse, describe, next and prev (the checks are in
 * fuzz/cron_harness.lua). */
#include "lua_harness.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  fuzz_lua_run("cron", data, size);
  return 0;
}
