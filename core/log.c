/*
 * log - see log.h
 */
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static int log_fd = -1;
static int log_to_stderr = 1;
static char log_path[4096];


/* log_open - open (append, create) the paniclog at path */
int
log_open(const char *path)
{
    int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);

    if (fd < 0)
        return -errno;
    if (log_fd >= 0)
        close(log_fd);
    log_fd = fd;
    snprintf(log_path, sizeof log_path, "%s", path);
    return 0;
}


void
log_set_stderr(int on)
{
    log_to_stderr = on;
}


/* log_reopen - reopen the paniclog after logrotate moved it (SIGUSR1) */
void
log_reopen(void)
{
    if (log_path[0] != '\0')
        (void)log_open(log_path);
}


void
log_close(void)
{
    if (log_fd >= 0)
        close(log_fd);
    log_fd = -1;
}


/* log_panic - write one `<unix-ts>:<module>: text` line */
void
log_panic(const char *module, const char *fmt, ...)
{
    char line[1024];
    int n, m;
    va_list ap;

    n = snprintf(line, sizeof line, "%lld:%s: ", (long long)time(NULL),
                 module);
    va_start(ap, fmt);
    m = vsnprintf(line + n, sizeof line - (size_t)n - 1, fmt, ap);
    va_end(ap);
    if (m < 0)
        m = 0;
    n += m;
    if ((size_t)n > sizeof line - 2)
        n = (int)sizeof line - 2;
    line[n++] = '\n';
    if (log_fd >= 0)
        (void)!write(log_fd, line, (size_t)n);
    if (log_to_stderr)
        (void)!write(STDERR_FILENO, line, (size_t)n);
}
