/* lua_harness.h - runs a Lua fuzz harness (fuzz/NAME_harness.lua) on each
 * input, for the parsers written in Lua (lua/luster/schema.lua, cron.lua).
 *
 * The harness file returns a function of one string; it checks its own
 * invariants and raises when one breaks, which this turns into an abort (a
 * crash for libFuzzer). Lua line coverage is fed to libFuzzer as extra
 * counters, since the Lua interpreter itself is not instrumented. */
#ifndef LUSTER_FUZZ_LUA_HARNESS_H
#define LUSTER_FUZZ_LUA_HARNESS_H

#include <stddef.h>
#include <stdint.h>

/* Runs harness `name` on data[0..size); the state is made on first use. */
void fuzz_lua_run(const char *name, const uint8_t *data, size_t size);

#endif
