/*
 * daemon - process-wide actions shared by signals and the console
 *          (daemon.h). Placeholder until the policy generation lands:
 *          reload reports that nothing reloadable exists yet.
 */
#include <pthread.h>
#include <stdio.h>
#include <string.h>

#include "daemon.h"

static pthread_mutex_t daemon_lock = PTHREAD_MUTEX_INITIALIZER;


int
daemon_reload(char *err, size_t errlen)
{
    pthread_mutex_lock(&daemon_lock);
    snprintf(err, errlen, "config reload: not implemented yet");
    pthread_mutex_unlock(&daemon_lock);
    return -1;
}


int
daemon_scriptlet_set(const char *option, const char *value, char *err,
                     size_t errlen)
{
    snprintf(err, errlen, "scriptlet: no scriptlet module configured");
    return -1;
}


void
daemon_scriptlet_stats(struct daemon_scriptlet_stats *out)
{
    memset(out, 0, sizeof *out);
}
