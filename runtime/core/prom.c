/* prom.c - Prometheus text format helpers (see prom.h). */
#include "core/prom.h"

void prom_head(buf_t *b, const char *name, const char *type, const char *help) {
  buf_printf(b, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void prom_label(buf_t *b, const char *s) {
  for (; *s; s++) {
    if (*s == '\\' || *s == '"') { buf_addc(b, '\\'); buf_addc(b, *s); }
    else if (*s == '\n') buf_adds(b, "\\n");
    else buf_addc(b, *s);
  }
}
