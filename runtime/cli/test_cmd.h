/* test_cmd.h - `luster test [DIR] [busted options and spec paths]`. */
#ifndef LUSTER_TEST_CMD_H
#define LUSTER_TEST_CMD_H

/* argv: the arguments after "test". Returns busted's exit status (0 when
 * every spec passed), or 2 for a bad command line. */
int test_main(int argc, char **argv);

#endif
