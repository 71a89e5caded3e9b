/* prom.h - the two pieces of the Prometheus text format every module's
 * metrics use: a metric's HELP/TYPE head and an escaped label value. */
#ifndef LUSTER_PROM_H
#define LUSTER_PROM_H

#include "core/buf.h"

void prom_head(buf_t *b, const char *name, const char *type, const char *help);
/* A label value: backslash, double quote and newline escaped, so an odd
 * script file name cannot break the whole exposition. */
void prom_label(buf_t *b, const char *s);

#endif
