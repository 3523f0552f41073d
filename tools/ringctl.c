/*
 * ringctl - ringmaild's control console client
 *
 * SYNOPSIS
 *   ringctl [-s SOCKET | -c CONFIG] [--json] [COMMAND ...]
 * DESCRIPTION
 *   Connects to the console socket of a running ringmaild (control.h) and
 *   runs COMMAND (its words joined by spaces), printing the answer; with
 *   no COMMAND, reads commands from standard input, one per line, with a
 *   "ringmail> " prompt when it is a terminal ("quit" or end of input
 *   leaves). --json asks for one JSON document per answer.
 *
 *   The socket is -s SOCKET, else the first Control_Listener of the
 *   configuration -c CONFIG, else $RINGCTL_SOCKET, else that of the
 *   default configuration (RINGMAIL_DEFAULT_CONF, set at build time),
 *   else RINGCTL_DEFAULT_SOCKET.
 *
 *   Exit status: 0 when the daemon answered ".ok"; 1 when it answered
 *   ".error" (its text goes to standard error; in interactive mode, when
 *   the last command failed); 2 when it could not connect or the
 *   connection broke, or the command line was wrong.
 * SEE ALSO
 *   docs/ringctl.md, core/control.h
 */
#include <errno.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "conf.h"

#ifndef RINGCTL_DEFAULT_SOCKET
#define RINGCTL_DEFAULT_SOCKET "/run/ringmail/ringmail.ctl"
#endif
#ifndef RINGMAIL_DEFAULT_CONF
#define RINGMAIL_DEFAULT_CONF "/etc/ringmail/ringmail.conf"
#endif

#define RINGCTL_LINE_MAX 4096


static void
usage(FILE *fp)
{
    fprintf(fp, "usage: ringctl [-s SOCKET | -c CONFIG] [--json] "
                "[COMMAND ...]\n"
                "  -s SOCKET  the console socket\n"
                "  -c CONFIG  use the Control_Listener of this "
                "configuration\n"
                "  --json     answers as JSON\n"
                "  no COMMAND: a prompt; 'help' lists the commands\n");
}


/* socket_of_conf - the first Control_Listener path of a configuration */
static char *
socket_of_conf(const char *path, int quiet)
{
    struct conf_errors errs = { 0 };
    struct conf *c = conf_load(path, &errs);
    char *out = NULL;

    if (c == NULL) {
        if (!quiet)
            conf_errors_print(&errs, stderr);
        conf_errors_fini(&errs);
        return NULL;
    }
    if (c->control_listen_count > 0)
        out = strdup(c->control_listens[0].path);
    else if (!quiet)
        fprintf(stderr, "ringctl: %s has no Control_Listener\n", path);
    conf_free(c);
    return out;
}


/* ctl_connect - a connected socket, or -1 after saying why */
static int
ctl_connect(const char *path)
{
    struct sockaddr_un sun;
    int fd;

    memset(&sun, 0, sizeof sun);
    sun.sun_family = AF_UNIX;
    if (strlen(path) >= sizeof sun.sun_path) {
        fprintf(stderr, "ringctl: socket path too long: %s\n", path);
        return -1;
    }
    memcpy(sun.sun_path, path, strlen(path) + 1);
    fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        fprintf(stderr, "ringctl: socket: %s\n", strerror(errno));
        return -1;
    }
    if (connect(fd, (struct sockaddr *)&sun, sizeof sun) == 0)
        return fd;
    switch (errno) {
    case ENOENT:
        fprintf(stderr, "ringctl: no control socket at %s (is ringmaild "
                "running, with a Control_Listener?)\n", path);
        break;
    case EACCES:
    case EPERM:
        fprintf(stderr, "ringctl: permission denied on %s (the console is "
                "for root and the user ringmaild runs as)\n", path);
        break;
    case ECONNREFUSED:
        fprintf(stderr, "ringctl: nothing answers on %s (ringmaild is not "
                "running)\n", path);
        break;
    default:
        fprintf(stderr, "ringctl: cannot connect to %s: %s\n", path,
                strerror(errno));
    }
    close(fd);
    return -1;
}


/*
 * ctl_run - send one command, print the answer; 0 ok, 1 error, 2 broken
 */
static int
ctl_run(int fd, FILE *in, const char *cmd, int json)
{
    char *line = NULL;
    size_t cap = 0;
    ssize_t n;
    char out[RINGCTL_LINE_MAX + 16];
    size_t len, off = 0;
    FILE *body = NULL;
    char *text = NULL;
    size_t text_len = 0;
    int rc = 2;

    len = (size_t)snprintf(out, sizeof out, "%s%s\n", json ? "--json " : "",
                           cmd);
    if (len >= sizeof out) {
        fprintf(stderr, "ringctl: command too long\n");
        return 2;
    }
    while (off < len) {
        ssize_t w = send(fd, out + off, len - off, MSG_NOSIGNAL);

        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            fprintf(stderr, "ringctl: connection lost: %s\n",
                    strerror(errno));
            return 2;
        }
        off += (size_t)w;
    }
    /* Keep the body until the terminator says where it goes. */
    body = open_memstream(&text, &text_len);
    while ((n = getline(&line, &cap, in)) > 0) {
        if (line[n - 1] == '\n')
            line[--n] = '\0';
        if (strcmp(line, ".ok") == 0 || strcmp(line, ".error") == 0) {
            rc = line[1] == 'o' ? 0 : 1;
            break;
        }
        fprintf(body, "%s\n", line[0] == '.' ? line + 1 : line);
    }
    fclose(body);
    if (rc == 2)
        fprintf(stderr, "ringctl: the daemon closed the connection\n");
    else
        fputs(text, rc == 0 ? stdout : stderr);
    fflush(stdout);
    free(text);
    free(line);
    return rc;
}


int
main(int argc, char **argv)
{
    static const struct option longopts[] = {
        { "json", no_argument, NULL, 'j' },
        { "socket", required_argument, NULL, 's' },
        { "config", required_argument, NULL, 'c' },
        { "help", no_argument, NULL, 'h' },
        { NULL, 0, NULL, 0 },
    };
    const char *sock = NULL, *config = NULL;
    char *from_conf = NULL, cmd[RINGCTL_LINE_MAX];
    int json = 0, opt, fd, rc = 0, i;
    FILE *in;

    /* '+': options end at the command, whose words may look like them. */
    while ((opt = getopt_long(argc, argv, "+s:c:jh", longopts, NULL)) != -1) {
        switch (opt) {
        case 's':
            sock = optarg;
            break;
        case 'c':
            config = optarg;
            break;
        case 'j':
            json = 1;
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (sock == NULL && config != NULL) {
        from_conf = socket_of_conf(config, 0);
        if (from_conf == NULL)
            return 2;
        sock = from_conf;
    }
    if (sock == NULL)
        sock = getenv("RINGCTL_SOCKET");
    if (sock == NULL || sock[0] == '\0') {
        struct stat st;

        if (stat(RINGMAIL_DEFAULT_CONF, &st) == 0)
            from_conf = socket_of_conf(RINGMAIL_DEFAULT_CONF, 1);
        sock = from_conf != NULL ? from_conf : RINGCTL_DEFAULT_SOCKET;
    }
    fd = ctl_connect(sock);
    if (fd < 0) {
        free(from_conf);
        return 2;
    }
    in = fdopen(dup(fd), "r");
    if (in == NULL) {
        fprintf(stderr, "ringctl: %s\n", strerror(errno));
        close(fd);
        free(from_conf);
        return 2;
    }
    if (optind < argc) {
        size_t len = 0;

        cmd[0] = '\0';
        for (i = optind; i < argc; i++) {
            int n = snprintf(cmd + len, sizeof cmd - len, "%s%s",
                             i > optind ? " " : "", argv[i]);

            if (n < 0 || (size_t)n >= sizeof cmd - len) {
                fprintf(stderr, "ringctl: command too long\n");
                rc = 2;
                goto out;
            }
            len += (size_t)n;
        }
        rc = ctl_run(fd, in, cmd, json);
        goto out;
    }
    for (;;) {
        char *p;

        if (isatty(STDIN_FILENO)) {
            fputs("ringmail> ", stdout);
            fflush(stdout);
        }
        if (fgets(cmd, sizeof cmd, stdin) == NULL)
            break;
        cmd[strcspn(cmd, "\r\n")] = '\0';
        for (p = cmd; *p == ' ' || *p == '\t'; p++)
            ;
        if (*p == '\0')
            continue;
        if (strcmp(p, "quit") == 0 || strcmp(p, "exit") == 0)
            break;
        rc = ctl_run(fd, in, p, json);
        if (rc == 2)
            break;
    }
    if (isatty(STDIN_FILENO))
        fputs("\n", stdout);
out:
    fclose(in);
    close(fd);
    free(from_conf);
    return rc;
}
