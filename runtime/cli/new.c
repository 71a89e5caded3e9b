/* new.c - `luster new DIR`: writes the starter project of runtime/cli/starter/
 * (compiled in by tools/embed_tree.sh) into a new or empty directory. */
#include "cli/new.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

extern const struct {
  const char *path;
  const char *data;
  size_t len;
} starter_files[];

static void new__usage(FILE *out) {
  fprintf(out, "usage: luster new DIR\n"
               "  writes a starter project into DIR (created if missing; it must be empty):\n"
               "  an entity with durable state, its spec and a README; then try 'luster test DIR'\n");
}

/* mkdir -p: each missing component of path, in order. */
static int new__mkdirs(const char *path) {
  char buf[4096];
  size_t n = strlen(path);
  if (n == 0 || n >= sizeof buf) return -ENAMETOOLONG;
  memcpy(buf, path, n + 1);
  for (size_t i = 1; i <= n; i++) {
    if (buf[i] != '/' && buf[i] != '\0') continue;
    char saved = buf[i];
    buf[i] = '\0';
    if (mkdir(buf, 0777) != 0 && errno != EEXIST) return -errno;
    buf[i] = saved;
  }
  return 0;
}

/* 1 when the directory has an entry besides . and .., 0 when empty, -errno. */
static int new__has_entries(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) return -errno;
  struct dirent *e;
  int found = 0;
  while (!found && (e = readdir(d)))
    found = strcmp(e->d_name, ".") != 0 && strcmp(e->d_name, "..") != 0;
  closedir(d);
  return found;
}

/* DIR must be missing (it is created) or an empty directory. */
static int new__prepare(const char *dir) {
  struct stat st;
  if (stat(dir, &st) == 0) {
    if (!S_ISDIR(st.st_mode)) {
      fprintf(stderr, "luster new: '%s' exists and is not a directory; name a new or empty directory\n", dir);
      return -1;
    }
    int has = new__has_entries(dir);
    if (has < 0) fprintf(stderr, "luster new: cannot read '%s': %s\n", dir, strerror(-has));
    else if (has) fprintf(stderr, "luster new: '%s' exists and is not empty; name a new or empty directory\n", dir);
    return has ? -1 : 0;
  }
  if (errno != ENOENT) {
    fprintf(stderr, "luster new: cannot use '%s': %s\n", dir, strerror(errno));
    return -1;
  }
  int rc = new__mkdirs(dir);
  if (rc != 0) fprintf(stderr, "luster new: cannot create '%s': %s\n", dir, strerror(-rc));
  return rc;
}

/* One file, with its parent directories; O_EXCL: nothing is overwritten. */
static int new__write(const char *dir, const char *rel, const char *data, size_t len) {
  char path[4096];
  if ((size_t)snprintf(path, sizeof path, "%s/%s", dir, rel) >= sizeof path) return -ENAMETOOLONG;
  char *slash = strrchr(path, '/');
  *slash = '\0';
  int rc = new__mkdirs(path);
  *slash = '/';
  if (rc != 0) return rc;
  int fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0666);
  if (fd < 0) return -errno;
  size_t done = 0;
  while (done < len) {
    ssize_t w = write(fd, data + done, len - done);
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) {
      rc = -errno;
      break;
    }
    done += (size_t)w;
  }
  if (close(fd) != 0 && rc == 0) rc = -errno;
  return rc;
}

int new_main(int nargs, char **args) {
  if (nargs == 1 && (strcmp(args[0], "-h") == 0 || strcmp(args[0], "--help") == 0)) {
    new__usage(stdout);
    return 0;
  }
  if (nargs != 1 || args[0][0] == '-' || args[0][0] == '\0') {
    if (nargs > 1) fprintf(stderr, "luster new: expected one directory, got %d arguments\n", nargs);
    else if (nargs == 1) fprintf(stderr, "luster new: '%s' is not a directory name\n", args[0]);
    new__usage(stderr);
    return 2;
  }
  const char *dir = args[0];
  if (new__prepare(dir) != 0) return 1;
  printf("created %s:\n", dir);
  for (int i = 0; starter_files[i].path; i++) {
    int rc = new__write(dir, starter_files[i].path, starter_files[i].data, starter_files[i].len);
    if (rc != 0) {
      fprintf(stderr, "luster new: cannot write '%s/%s': %s\n", dir, starter_files[i].path, strerror(-rc));
      return 1;
    }
    printf("  %s\n", starter_files[i].path);
  }
  printf("next:\n  luster test %s    # run its specs (in process, on a virtual clock)\n"
         "  luster run %s     # serve it on http://127.0.0.1:8080\n", dir, dir);
  return 0;
}
