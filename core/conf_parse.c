/*
 * conf_parse - see conf_parse.h
 *
 * A hand-written lexer (one token of lookahead) feeding a recursive-descent
 * parser whose recursion is bounded by CONF_PARSE_DEPTH_MAX. The lexer
 * reports its own errors (unterminated string, overlong token, control
 * bytes) and hands the parser a TOK_ERROR, which the parser skips without
 * reporting a second time.
 */
#include "conf_parse.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

enum conf_tok {
    TOK_EOF,
    TOK_WORD,
    TOK_STRING,
    TOK_LBRACE,
    TOK_RBRACE,
    TOK_LPAREN,
    TOK_RPAREN,
    TOK_EQUAL,
    TOK_ERROR,                   /* already reported by the lexer */
};

struct conf_parser {
    const char *p;
    const char *end;
    int line;                    /* of p */
    const char *file;            /* owned by the root */
    struct conf_errors *errs;

    /* the current token */
    enum conf_tok tok;
    int tok_line;
    char *text;                  /* WORD, STRING: NUL-terminated */
    size_t text_len;
};


/* conf_parse_error - report an error at line, unless the lexer already did */
static void __attribute__((format(printf, 3, 4)))
conf_parse_error(struct conf_parser *p, int line, const char *fmt, ...)
{
    char msg[512];
    va_list ap;

    if (p->tok == TOK_ERROR)
        return;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    conf_errors_add(p->errs, p->file, line, "%s", msg);
}


/* conf_parse_tok_name - the current token for an error message */
static const char *
conf_parse_tok_name(const struct conf_parser *p)
{
    switch (p->tok) {
    case TOK_EOF:    return "end of file";
    case TOK_WORD:   return "a word";
    case TOK_STRING: return "a string";
    case TOK_LBRACE: return "'{'";
    case TOK_RBRACE: return "'}'";
    case TOK_LPAREN: return "'('";
    case TOK_RPAREN: return "')'";
    case TOK_EQUAL:  return "'='";
    case TOK_ERROR:  return "an invalid token";
    }
    return "?";
}


/* conf_parse_is_delim - does c end a bare word */
static int
conf_parse_is_delim(unsigned char c)
{
    return c <= ' ' || c == 0x7f || strchr("{}()=#\"", c) != NULL;
}


/* conf_parse_text_add - append c to the token text; 0 once it is full */
static int
conf_parse_text_add(struct conf_parser *p, char c)
{
    if (p->text_len == CONF_PARSE_TOKEN_MAX)
        return 0;
    p->text[p->text_len++] = c;
    return 1;
}


/* conf_parse_string - lex a "quoted string"; p->p is past the quote */
static enum conf_tok
conf_parse_string(struct conf_parser *p)
{
    int bad = 0;

    for (;;) {
        unsigned char c;

        if (p->p == p->end || *p->p == '\n') {
            /* Strings end on their line, so a missing quote costs one
             * error and not the rest of the file. */
            conf_errors_add(p->errs, p->file, p->tok_line,
                            "unterminated string");
            return TOK_ERROR;
        }
        c = (unsigned char)*p->p++;
        if (c == '"')
            break;
        if (c == '\\' && p->p < p->end && *p->p != '\n') {
            c = (unsigned char)*p->p++;
            switch (c) {
            case 'n': c = '\n'; break;
            case 't': c = '\t'; break;
            case '"': case '\\': break;
            default:
                /* Unknown escapes stay as written, so regular
                 * expressions such as "\d+" need no doubling. */
                if (!conf_parse_text_add(p, '\\'))
                    bad |= 1;
                break;
            }
        } else if ((c < ' ' && c != '\t') || c == 0x7f) {
            if (!(bad & 2)) {
                conf_errors_add(p->errs, p->file, p->tok_line,
                                "control character 0x%02x in string", c);
            }
            bad |= 2;
            continue;
        }
        if (!conf_parse_text_add(p, (char)c))
            bad |= 1;
    }
    if (bad & 1) {
        conf_errors_add(p->errs, p->file, p->tok_line,
                        "string longer than %u bytes", CONF_PARSE_TOKEN_MAX);
    }
    return bad ? TOK_ERROR : TOK_STRING;
}


/* conf_parse_next - read the next token into p->tok */
static void
conf_parse_next(struct conf_parser *p)
{
    unsigned char c;

    p->text_len = 0;
    for (;;) {
        if (p->p == p->end) {
            p->tok = TOK_EOF;
            p->tok_line = p->line;
            goto done;
        }
        c = (unsigned char)*p->p;
        if (c == '\n') {
            p->line++;
            p->p++;
        } else if (c == ' ' || c == '\t' || c == '\r' || c == '\f' ||
                   c == '\v') {
            p->p++;
        } else if (c == '#') {
            const char *nl = memchr(p->p, '\n', (size_t)(p->end - p->p));

            p->p = nl != NULL ? nl : p->end;
        } else if (c < ' ' || c == 0x7f) {
            conf_errors_add(p->errs, p->file, p->line,
                            c == 0 ? "unexpected NUL byte"
                                   : "unexpected control character 0x%02x",
                            c);
            p->p++;
        } else {
            break;
        }
    }

    p->tok_line = p->line;
    p->p++;
    switch (c) {
    case '{': p->tok = TOK_LBRACE; break;
    case '}': p->tok = TOK_RBRACE; break;
    case '(': p->tok = TOK_LPAREN; break;
    case ')': p->tok = TOK_RPAREN; break;
    case '=': p->tok = TOK_EQUAL; break;
    case '"': p->tok = conf_parse_string(p); break;
    default:
        p->tok = TOK_WORD;
        p->text[p->text_len++] = (char)c;
        while (p->p < p->end && !conf_parse_is_delim((unsigned char)*p->p)) {
            if (!conf_parse_text_add(p, *p->p) && p->tok == TOK_WORD) {
                conf_errors_add(p->errs, p->file, p->tok_line,
                                "word longer than %u bytes",
                                CONF_PARSE_TOKEN_MAX);
                p->tok = TOK_ERROR;
            }
            p->p++;
        }
        break;
    }
done:
    p->text[p->text_len] = '\0';
}


/* conf_parse_recover - skip the rest of a broken statement started on line */
static void
conf_parse_recover(struct conf_parser *p, int line)
{
    unsigned depth = 0;

    /* Resume at the first token on a later line, outside any { } block
     * the broken statement opened. A '}' that closes the enclosing scope
     * is left for the caller. */
    for (;;) {
        if (p->tok == TOK_EOF)
            return;
        if (depth == 0 && (p->tok == TOK_RBRACE || p->tok_line > line))
            return;
        if (p->tok == TOK_LBRACE)
            depth++;
        else if (p->tok == TOK_RBRACE)
            depth--;
        conf_parse_next(p);
    }
}


/* conf_parse_node_new - a node of kind at the current token's line */
static struct conf_node *
conf_parse_node_new(struct conf_parser *p, enum conf_node_kind kind,
                    char *name, int line, struct conf_node *parent)
{
    struct conf_node *n = xcalloc(1, sizeof *n);

    n->kind = kind;
    n->name = name;
    n->file = p->file;
    n->line = line;
    n->parent = parent;
    return n;
}


/* conf_parse_list - read ( item ... ) into n; the current token is '(' */
static int
conf_parse_list(struct conf_parser *p, struct conf_node *n)
{
    int open_line = p->tok_line;
    size_t cap = 0;

    ASSERT(p->tok == TOK_LPAREN);
    n->value_kind = CONF_VALUE_LIST;
    for (conf_parse_next(p); p->tok != TOK_RPAREN; conf_parse_next(p)) {
        if (p->tok == TOK_EOF) {
            conf_parse_error(p, open_line, "unterminated list for '%s' "
                             "(missing ')')", n->name);
            return -EINVAL;
        }
        if (p->tok != TOK_WORD && p->tok != TOK_STRING) {
            conf_parse_error(p, p->tok_line, "expected a list item or ')' "
                             "in the list for '%s', got %s", n->name,
                             conf_parse_tok_name(p));
            /* A '{' here is a typo, not a block to skip in recovery. */
            if (p->tok == TOK_LBRACE)
                conf_parse_next(p);
            return -EINVAL;
        }
        if (n->item_count == cap) {
            cap = cap ? 2 * cap : 4;
            n->items = xrealloc(n->items, cap * sizeof *n->items);
        }
        n->items[n->item_count++] = xstrdup(p->text);
    }
    conf_parse_next(p);
    return 0;
}


/* conf_parse_option - read the value of `name =`; the token is past '=' */
static struct conf_node *
conf_parse_option(struct conf_parser *p, struct conf_node *scope, char *name,
                  int line)
{
    struct conf_node *n = conf_parse_node_new(p, CONF_NODE_OPTION, name, line,
                                              scope);

    switch (p->tok) {
    case TOK_WORD:
    case TOK_STRING:
        n->value_kind = p->tok == TOK_WORD ? CONF_VALUE_WORD
                                           : CONF_VALUE_STRING;
        n->value = xstrdup(p->text);
        conf_parse_next(p);
        return n;
    case TOK_LPAREN:
        if (conf_parse_list(p, n) == 0)
            return n;
        break;
    default:
        conf_parse_error(p, p->tok_line, "expected a value for '%s', got %s",
                         name, conf_parse_tok_name(p));
        break;
    }
    conf_node_free(n);
    return NULL;
}


static void conf_parse_body(struct conf_parser *p, struct conf_node *scope,
                            int depth);


/* conf_parse_scope - read `{ ... }`; the current token is '{' */
static struct conf_node *
conf_parse_scope(struct conf_parser *p, struct conf_node *scope, char *name,
                 char *instance, int line, int depth)
{
    struct conf_node *n;

    ASSERT(p->tok == TOK_LBRACE);
    if (depth >= CONF_PARSE_DEPTH_MAX) {
        conf_parse_error(p, line, "scopes nested deeper than %d",
                         CONF_PARSE_DEPTH_MAX);
        free(name);
        free(instance);
        conf_parse_recover(p, p->tok_line);
        return NULL;
    }
    n = conf_parse_node_new(p, CONF_NODE_SCOPE, name, line, scope);
    n->instance = instance;
    conf_parse_next(p);
    conf_parse_body(p, n, depth + 1);
    return n;
}


/* conf_parse_statement - read one option or scope; the token is its name */
static struct conf_node *
conf_parse_statement(struct conf_parser *p, struct conf_node *scope,
                     int depth)
{
    int line = p->tok_line;
    char *name = xstrdup(p->text);
    char *instance = NULL;
    struct conf_node *n;

    ASSERT(p->tok == TOK_WORD);
    conf_parse_next(p);
    if (p->tok == TOK_EQUAL) {
        conf_parse_next(p);
        n = conf_parse_option(p, scope, name, line);
        if (n == NULL)
            conf_parse_recover(p, p->tok_line);
        return n;
    }
    if (p->tok == TOK_WORD || p->tok == TOK_STRING) {
        instance = xstrdup(p->text);
        conf_parse_next(p);
        if (p->tok != TOK_LBRACE) {
            conf_parse_error(p, p->tok_line, "expected '{' after '%s "
                             "\"%s\"', got %s", name, instance,
                             conf_parse_tok_name(p));
            goto fail;
        }
    }
    if (p->tok == TOK_LBRACE)
        return conf_parse_scope(p, scope, name, instance, line, depth);
    conf_parse_error(p, p->tok_line, "expected '=' or '{' after '%s', got %s",
                     name, conf_parse_tok_name(p));
fail:
    free(name);
    free(instance);
    conf_parse_recover(p, p->tok_line);
    return NULL;
}


/* conf_parse_body - read statements into scope until its '}' or EOF */
static void
conf_parse_body(struct conf_parser *p, struct conf_node *scope, int depth)
{
    struct conf_node **tail = &scope->children;

    for (;;) {
        struct conf_node *n;

        switch (p->tok) {
        case TOK_EOF:
            if (depth > 0) {
                conf_parse_error(p, scope->line, "unterminated scope '%s' "
                                 "(missing '}')", scope->name);
            }
            return;
        case TOK_RBRACE:
            if (depth == 0)
                conf_parse_error(p, p->tok_line, "unexpected '}'");
            conf_parse_next(p);
            if (depth > 0)
                return;
            continue;
        case TOK_WORD:
            n = conf_parse_statement(p, scope, depth);
            if (n != NULL) {
                *tail = n;
                tail = &n->next;
            }
            continue;
        default:
            conf_parse_error(p, p->tok_line, "expected an option or scope "
                             "name, got %s", conf_parse_tok_name(p));
            /* The token is neither a word nor '}' nor EOF, so recovery
             * consumes at least it: the loop always advances. */
            conf_parse_recover(p, p->tok_line);
            continue;
        }
    }
}


/* conf_parse_buf - parse len bytes of buf, naming them file in errors */
struct conf_node *
conf_parse_buf(const char *file, const char *buf, size_t len,
               struct conf_errors *errs)
{
    struct conf_parser p = { 0 };
    struct conf_node *root;

    ASSERT(file != NULL);
    ASSERT(buf != NULL || len == 0);
    ASSERT(errs != NULL);
    p.file = xstrdup(file);
    p.errs = errs;
    p.line = 1;
    root = conf_parse_node_new(&p, CONF_NODE_SCOPE, NULL, 0, NULL);
    if (len > CONF_PARSE_BYTES_MAX) {
        conf_errors_add(errs, file, 0, "file larger than %u bytes",
                        CONF_PARSE_BYTES_MAX);
        return root;
    }
    p.p = buf;
    p.end = buf + len;
    p.text = xmalloc(CONF_PARSE_TOKEN_MAX + 1);
    conf_parse_next(&p);
    conf_parse_body(&p, root, 0);
    free(p.text);
    return root;
}


/* conf_parse_file - read and parse the file at path; NULL if unreadable */
struct conf_node *
conf_parse_file(const char *path, struct conf_errors *errs)
{
    struct conf_node *root = NULL;
    const char *why = NULL;
    struct stat st;
    char *buf = NULL;
    size_t len = 0;
    int fd;

    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &st) < 0)
        goto fail;
    if (!S_ISREG(st.st_mode)) {
        why = "not a regular file";
        goto fail;
    }
    if ((uint64_t)st.st_size > CONF_PARSE_BYTES_MAX) {
        why = "file too large";
        goto fail;
    }
    buf = xmalloc((size_t)st.st_size + 1);
    while (len < (size_t)st.st_size) {
        ssize_t n = read(fd, buf + len, (size_t)st.st_size - len);

        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            goto fail;
        if (n == 0)
            break;               /* shrank under us: parse what we got */
        len += (size_t)n;
    }
    close(fd);
    root = conf_parse_buf(path, buf, len, errs);
    free(buf);
    return root;

fail:
    conf_errors_add(errs, path, 0, "cannot read: %s",
                    why != NULL ? why : strerror(errno));
    if (fd >= 0)
        close(fd);
    free(buf);
    return NULL;
}


/* conf_node_free - free a node, its children and (for the root) the file */
void
conf_node_free(struct conf_node *n)
{
    while (n != NULL) {
        struct conf_node *next = n->next;
        size_t i;

        conf_node_free(n->children);
        for (i = 0; i < n->item_count; i++)
            free(n->items[i]);
        free(n->items);
        free(n->value);
        free(n->instance);
        free(n->name);
        if (n->parent == NULL)
            free((char *)n->file);
        free(n);
        n = next;
    }
}
