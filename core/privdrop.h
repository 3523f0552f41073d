/*
 * privdrop - run as the configured User once the sockets are bound
 *
 * SYNOPSIS
 *   int privdrop_lookup(const char *user, uid_t *uid, gid_t *gid);
 *   int privdrop_chown_tree(const char *path, uid_t uid, gid_t gid);
 *   int privdrop_switch(const char *user, uid_t uid, gid_t gid);
 * DESCRIPTION
 *   ringmaild starts as root to bind port 25, and runs as User = "name"
 *   from then on. privdrop_lookup() finds the user's uid and primary gid
 *   (getpwnam). privdrop_chown_tree() gives path and, when it is a
 *   directory, everything below it (not following symbolic links) to
 *   uid:gid: the spool and the log directories, so that the daemon can
 *   keep writing them. privdrop_switch() drops root for good: the
 *   supplementary groups (initgroups), then the gid, then the uid, and
 *   checks that root cannot be regained; the process is made dumpable
 *   again so that a panic still leaves a core. Each returns 0 or -errno
 *   (-ENOENT: no such user; -EPERM: not root, and not already that user).
 * THREADS
 *   Main thread, before any other thread starts: setuid() applies to the
 *   calling thread's process, and threads started later inherit it.
 */
#ifndef RINGMAIL_PRIVDROP_H
#define RINGMAIL_PRIVDROP_H

#include <sys/types.h>

int privdrop_lookup(const char *user, uid_t *uid, gid_t *gid);
int privdrop_chown_tree(const char *path, uid_t uid, gid_t gid);
int privdrop_switch(const char *user, uid_t uid, gid_t gid);

#endif
