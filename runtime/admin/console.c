/* console.c - the console page's bytes, embedded by tools/embed_file.sh into
 * build/gen/console_html.c (see console.h). */
#include "admin/console.h"

extern const char console_html[];
extern const size_t console_html_len;

const char *console_page(size_t *len) {
  if (len) *len = console_html_len;
  return console_html;
}
