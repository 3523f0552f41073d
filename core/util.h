/*
 * util - assertions, panics and startup allocation shared by every module
 *
 * SYNOPSIS
 *   ASSERT(cond);                      abort with file:line when cond is false
 *   panic(fmt, ...);                   log the broken invariant, dump core
 *   void *xmalloc(size_t n);           malloc that aborts on failure
 *   void *xcalloc(size_t n, size_t sz);
 *   char *xstrdup(const char *s);
 *   uint64_t now_ms(void);             CLOCK_MONOTONIC in milliseconds
 * DESCRIPTION
 *   Programmer errors (impossible states, broken invariants) end the process
 *   with a core dump; they are never turned into replies. xmalloc() is for
 *   startup and control-path allocations whose failure we cannot answer.
 * THREADS
 *   Everything here is safe from any thread.
 */
#ifndef RINGMAIL_UTIL_H
#define RINGMAIL_UTIL_H

#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define likely(x)   __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

#define ARRAY_SIZE(a) (sizeof(a) / sizeof((a)[0]))

#define container_of(ptr, type, member) \
    ((type *)(void *)((char *)(ptr) - offsetof(type, member)))

#define MIN(a, b) ((a) < (b) ? (a) : (b))
#define MAX(a, b) ((a) > (b) ? (a) : (b))

void panic_at(const char *file, int line, const char *fmt, ...)
    __attribute__((noreturn, format(printf, 3, 4)));

#define panic(...) panic_at(__FILE__, __LINE__, __VA_ARGS__)

#define ASSERT(cond)                                              \
    do {                                                          \
        if (unlikely(!(cond)))                                    \
            panic_at(__FILE__, __LINE__, "assertion failed: %s",  \
                     #cond);                                      \
    } while (0)

void *xmalloc(size_t n);
void *xcalloc(size_t n, size_t size);
void *xrealloc(void *p, size_t n);
char *xstrdup(const char *s);

uint64_t now_ms(void);
uint64_t now_us(void);

#endif
