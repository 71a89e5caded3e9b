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
 * object and array as a table. Both nest at most JSON_MAX_DEPTH deep.
 *
 * The encoder's output buffer and the decoder's scratch are a json_t: one
 * per host (host_t), never shared between two runtimes. */
#ifndef LUSTER_HOST_JSON_H
#define LUSTER_HOST_JSON_H

#include <lua.h>

#define JSON_MAX_DEPTH 1000

typedef struct json_s json_t;

/* Encoder and decoder scratch (NULL without memory); json_free releases it. */
json_t *json_new(void);
void json_free(json_t *j);
/* For a Lua state that has no host (test modules, fuzzers): pushes a full
 * userdata holding a new json_t, released with it, and returns it. */
json_t *json_push_new(lua_State *L);

/* The JSON text of the value at idx, in j's buffer, valid until j's next
 * encode; NULL with *error (valid as long) naming what cannot be encoded.
 * Never raises, except a Lua memory error. */
const char *json_encode_value(json_t *j, lua_State *L, int idx, size_t *len, const char **error);
/* Pushes the value of the JSON text s; raises "... at character N" on bad
 * input (so call it protected). */
void json_push_decoded(json_t *j, lua_State *L, const char *s, size_t n);

/* Lua functions; upvalue 1 is their json_t (light or full userdata).
 * json_encode(value) -> string; raises naming what cannot be encoded. */
int json_lua_encode(lua_State *L);
/* json_decode(string) -> value; raises "... at character N" on bad input. */
int json_lua_decode(lua_State *L);

#endif
