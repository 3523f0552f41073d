/*
 * privdrop - see privdrop.h
 */
#include "privdrop.h"

#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <grp.h>
#include <pwd.h>
#include <sys/prctl.h>
#include <string.h>
#include <unistd.h>

static uid_t privdrop_uid;
static gid_t privdrop_gid;


/* privdrop_lookup - uid and primary gid of user */
int
privdrop_lookup(const char *user, uid_t *uid, gid_t *gid)
{
    struct passwd *pw;

    errno = 0;
    pw = getpwnam(user);
    if (pw == NULL)
        return errno != 0 ? -errno : -ENOENT;
    *uid = pw->pw_uid;
    *gid = pw->pw_gid;
    return 0;
}


static int
privdrop_chown_one(const char *path, const struct stat *st, int flag,
                   struct FTW *ftw)
{
    if (lchown(path, privdrop_uid, privdrop_gid) < 0)
        return -errno;
    return 0;
}


/* privdrop_chown_tree - path and all below it to uid:gid */
int
privdrop_chown_tree(const char *path, uid_t uid, gid_t gid)
{
    int rc;

    privdrop_uid = uid;
    privdrop_gid = gid;
    rc = nftw(path, privdrop_chown_one, 32, FTW_PHYS);
    if (rc == -1)
        return -errno;
    return rc;
}


/* privdrop_switch - become uid:gid with user's groups, for good */
int
privdrop_switch(const char *user, uid_t uid, gid_t gid)
{
    if (geteuid() == uid && getuid() == uid)
        return 0;
    if (geteuid() != 0)
        return -EPERM;
    if (initgroups(user, gid) < 0 || setgid(gid) < 0 || setuid(uid) < 0)
        return -errno;
    /* setuid() from root drops the saved uid too: check it stuck. */
    if (uid != 0 && (setuid(0) == 0 || seteuid(0) == 0))
        return -EPERM;
    /* A uid change makes the process non-dumpable: panic() must still
     * leave a core (and the sanitizers must still attach to threads). */
    if (prctl(PR_SET_DUMPABLE, 1, 0, 0, 0) < 0)
        return -errno;
    return 0;
}
