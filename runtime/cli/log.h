/* log.h - forwarding header: logging now lives in loop/log.h. Kept only for
 * runtime/net/transport.c and fuzz/fuzz_transport.c, which another change
 * (the transport split) rewrites; delete this file when they include
 * "loop/log.h" (tools/layers.lua names the include until then). */
#include "loop/log.h"
