/* json.h - JSON to and from Lua values, for payloads, replies and snapshots.
 *
 * Encoding follows lua-cjson 2.1.0's rules, so a value encodes the same way
 * whichever codec a script reaches: a table whose keys are all positive
 * integers is an array (holes are null; more than half holes past index 10
 * is an error), any other table an object, an empty table {}; the light
 * userdata NULL (cjson.null) is null; strings are escaped as cjson does
 * ("/" as "\/"). Numbers differ, on purpose: integers are written exactly,
 * whole floats below 2^53 as integers, other floats with the fewest digits
 * (15 to 17) that read back as the same double, where cjson keeps 14.
 *
 * Decoding reads strict JSON (RFC 8259) and gives whole numbers below 2^53
 * (1, 1.0, 1e3) as Lua integers, null as that light userdata, and every
 * object and array as a table. Both nest at most JSON_MAX_DEPTH deep. */
#ifndef LUSTER_HOST_JSON_H
#define LUSTER_HOST_JSON_H

#include <lua.h>

#define JSON_MAX_DEPTH 1000

/* The JSON text of the value at idx, in a buffer valid until the next
 * encode; NULL with *error (valid as long) naming what cannot be encoded.
 * Never raises, except a Lua memory error. */
const char *json_encode_value(lua_State *L, int idx, size_t *len, const char **error);
/* Pushes the value of the JSON text s; raises "... at character N" on bad
 * input (so call it protected). */
void json_push_decoded(lua_State *L, const char *s, size_t n);

/* json_encode(value) -> string; raises naming what cannot be encoded. */
int json_lua_encode(lua_State *L);
/* json_decode(string) -> value; raises "... at character N" on bad input. */
int json_lua_decode(lua_State *L);

#endif
