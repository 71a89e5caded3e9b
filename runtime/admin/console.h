/* console.h - the console page (admin/console.html), built into the binary
 * for the gateway to serve at GET /. */
#ifndef LUSTER_CONSOLE_H
#define LUSTER_CONSOLE_H

#include <stddef.h>

/* The page's HTML (NUL-terminated, static) and its length in *len. */
const char *console_page(size_t *len);

#endif
