/*
 * conf_parse - ecelerity.conf syntax to a tree of scopes and options
 *
 * SYNOPSIS
 *   struct conf_node *conf_parse_file(const char *path,
 *                                     struct conf_errors *errs);
 *   struct conf_node *conf_parse_buf(const char *file, const char *buf,
 *                                    size_t len, struct conf_errors *errs);
 *   void conf_node_free(struct conf_node *root);
 * DESCRIPTION
 *   The syntax, and nothing about what the names mean:
 *
 *       # comment to end of line (not inside quotes)
 *       Key = value                 bare word: auto, 20M, 300s, /var/spool
 *       Key = "quoted string"       escapes \" \\ \n \t; ends on its line
 *       Key = ( "a" b "c" )         list; items separated by white space
 *       Name "instance" { ... }     scope; the instance is optional and may
 *       Name { ... }                be a bare word; scopes nest
 *
 *   White space and newlines are free between tokens. Names are kept as
 *   written; callers compare them with strcasecmp().
 *
 *   conf_parse_buf() parses len bytes of buf; file names the text in error
 *   messages and in every node. conf_parse_file() reads the file at path
 *   and parses it. Both return the root: a scope node with a NULL name
 *   whose children are the top-level statements, in file order. A
 *   statement with a syntax error is left out of the tree: the parser
 *   reports it and resumes at the next line (skipping a whole { } block
 *   when the broken statement opened one), so one run collects every
 *   error. Check errs->count: the tree is partial when it grew.
 *   conf_parse_file() returns NULL only when the file cannot be read.
 * OWNERSHIP
 *   The caller owns the tree and frees it with conf_node_free(root). Every
 *   node's file points to one string owned by the root.
 * ERRORS
 *   Each error is added to errs as file:line: message, the line being that
 *   of the offending token (of the opening quote, bracket or brace for an
 *   unterminated string, list or scope).
 * SECURITY
 *   The input is trusted (an operator's file) but the parser is fuzzed and
 *   must never crash or hang: input is capped at CONF_PARSE_BYTES_MAX,
 *   words and strings at CONF_PARSE_TOKEN_MAX bytes, scope nesting at
 *   CONF_PARSE_DEPTH_MAX; NUL and other control bytes are errors, and
 *   conf_errors_add() stops collecting after CONF_ERRORS_MAX errors. Work
 *   is linear in the input size.
 * SEE ALSO
 *   conf.h (the meaning of the tree), docs/configuration.md
 */
#ifndef RINGMAIL_CONF_PARSE_H
#define RINGMAIL_CONF_PARSE_H

#include <stddef.h>

#include "conf.h"

#define CONF_PARSE_BYTES_MAX (16u << 20)
#define CONF_PARSE_TOKEN_MAX (64u << 10)
#define CONF_PARSE_DEPTH_MAX 32

enum conf_node_kind {
    CONF_NODE_OPTION,
    CONF_NODE_SCOPE,
};

enum conf_value_kind {
    CONF_VALUE_WORD,             /* bare word: value */
    CONF_VALUE_STRING,           /* "quoted": value, escapes resolved */
    CONF_VALUE_LIST,             /* ( ... ): items */
};

struct conf_node {
    enum conf_node_kind kind;
    char *name;                  /* as written; NULL for the root */
    const char *file;            /* owned by the root */
    int line;
    struct conf_node *parent;    /* NULL for the root */
    struct conf_node *next;      /* next sibling, in file order */

    /* CONF_NODE_SCOPE */
    char *instance;              /* Name "instance" { }, or NULL */
    struct conf_node *children;

    /* CONF_NODE_OPTION */
    enum conf_value_kind value_kind;
    char *value;                 /* WORD and STRING */
    char **items;                /* LIST */
    size_t item_count;
};

struct conf_node *conf_parse_file(const char *path, struct conf_errors *errs);
struct conf_node *conf_parse_buf(const char *file, const char *buf,
                                 size_t len, struct conf_errors *errs);
void conf_node_free(struct conf_node *root);

#endif
