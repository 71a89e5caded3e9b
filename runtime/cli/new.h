/* new.h - `luster new DIR`: writes a starter project (an entity, its spec, a README). */
#ifndef LUSTER_NEW_H
#define LUSTER_NEW_H

/* args are the command's arguments (after "new"). Returns the exit status:
 * 0 once the project is written, 2 for a usage error, 1 when DIR cannot be
 * used or written (each after a message on stderr naming the problem). */
int new_main(int nargs, char **args);

#endif
