/*
 * log - the paniclog: `<unix-ts>:<module>: text` lines (Momentum's format)
 *
 * SYNOPSIS
 *   int  log_open(const char *paniclog_path);   0 or -errno
 *   void log_set_stderr(int on);
 *   void log_panic(const char *module, const char *fmt, ...);
 *   void log_reopen(void);
 * DESCRIPTION
 *   Every line goes to the paniclog file (when open) and, while the daemon
 *   runs in the foreground, to stderr. Each line is written with one
 *   write(2) on an O_APPEND descriptor, so lines from different threads
 *   never interleave.
 * THREADS
 *   Safe from any thread. XXX: the write is a blocking syscall; paniclog
 *   lines are rare (start, stop, errors logged once), so shards accept it
 *   rather than route every line through the main thread.
 */
#ifndef RINGMAIL_LOG_H
#define RINGMAIL_LOG_H

int log_open(const char *paniclog_path);
void log_set_stderr(int on);
void log_reopen(void);
void log_close(void);
void log_panic(const char *module, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
