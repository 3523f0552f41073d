/*
 * lualib_addr - msys.parseRFC2822Addresses: address header text to parts
 *
 * SYNOPSIS
 *   void lualib_addr_open(lua_State *L);
 *   Lua: t = msys.parseRFC2822Addresses(addressstring[, component])
 * DESCRIPTION
 *   Parses addressstring as an RFC 5322 (ex-2822) address-list, the value
 *   of a From, To or Cc header, and returns an array holding, for each
 *   address found in order, one component:
 *     "all"        localpart@domain (the default when component is nil)
 *     "localpart"  everything before the @
 *     "user"       the local part up to the first '+'
 *     "detail"     the local part after the first '+' ("" when none)
 *     "domain"     everything after the @
 *   Display names, comments (nested, with \ escapes), quoted strings (a
 *   quoted local part keeps its quotes: "john doe"@example.com), domain
 *   literals ([192.0.2.1]), source routes (<@a,@b:x@y>) and groups
 *   ("team: a@x, b@y;", "undisclosed-recipients:;") are understood;
 *   folding white space anywhere is ignored.
 *
 *   Malformed input never raises: an entry without an @, with an empty
 *   local part or domain, or with more than one @ is skipped, and parsing
 *   resumes at the next ',' (or ';' ending a group). Words in front of an
 *   address without angle brackets ("John john@x") are taken as a display
 *   name; words after a domain are ignored.
 * OWNERSHIP
 *   No heap: each address is assembled in fixed buffers on the C stack,
 *   so an out-of-memory error while building the result leaks nothing.
 * THREADS
 *   Stateless.
 * ERRORS
 *   Bad argument types and an unknown component name raise.
 * SECURITY
 *   Input is untrusted header text. Work is linear in its length; a local
 *   part or domain longer than ADDR_PART_MAX bytes makes that entry
 *   malformed (RFC 5321 allows 64 and 255), and so does a NUL or other
 *   control byte outside quotes.
 * SEE ALSO
 *   lualib.h, docs/lua-library.md, RFC 5322 3.4
 */
#include "lualib.h"

#include <string.h>

#include "util.h"

#define ADDR_PART_MAX 1024

enum addr_tok {
    ADDR_TOK_END,
    ADDR_TOK_WORD,       /* atom or quoted-string (span keeps the quotes) */
    ADDR_TOK_LITERAL,    /* [domain literal] */
    ADDR_TOK_SPECIAL,    /* one of < > @ , ; : . */
    ADDR_TOK_JUNK,       /* a stray ) or ], NUL or control byte */
};

struct addr_token {
    enum addr_tok type;
    const char *p;
    size_t len;
    char special;
};

struct addr_spec {
    char local[ADDR_PART_MAX];
    char domain[ADDR_PART_MAX];
    size_t local_len;
    size_t domain_len;
    int seen_at;
    int last_was_word;   /* previous token in the current part was a word */
    int domain_done;     /* a second word after the domain: stop there */
    int bad;
};

enum addr_comp {
    ADDR_ALL,
    ADDR_LOCALPART,
    ADDR_USER,
    ADDR_DETAIL,
    ADDR_DOMAIN,
};


/* addr_skip_cfws - skip white space and (nested) comments */
static void
addr_skip_cfws(const char *s, size_t len, size_t *pos)
{
    size_t i = *pos;
    int depth;

    for (;;) {
        while (i < len && (s[i] == ' ' || s[i] == '\t' || s[i] == '\r' ||
                           s[i] == '\n'))
            i++;
        if (i >= len || s[i] != '(')
            break;
        depth = 0;
        for (; i < len; i++) {
            if (s[i] == '\\') {
                i++;
                continue;
            }
            if (s[i] == '(')
                depth++;
            else if (s[i] == ')' && --depth == 0) {
                i++;
                break;
            }
        }
    }
    *pos = i < len ? i : len;
}


/* addr_next - the next token at *pos (comments and blanks skipped) */
static void
addr_next(const char *s, size_t len, size_t *pos, struct addr_token *t)
{
    size_t i, start;

    addr_skip_cfws(s, len, pos);
    i = *pos;
    memset(t, 0, sizeof(*t));
    if (i >= len) {
        t->type = ADDR_TOK_END;
        return;
    }
    start = i;
    if (strchr("<>@,;:.", s[i]) != NULL && s[i] != '\0') {
        t->type = ADDR_TOK_SPECIAL;
        t->special = s[i];
        i++;
    } else if (s[i] == '"' || s[i] == '[') {
        char close = s[i] == '"' ? '"' : ']';

        t->type = s[i] == '"' ? ADDR_TOK_WORD : ADDR_TOK_LITERAL;
        for (i++; i < len && s[i] != close; i++)
            if (s[i] == '\\' && i + 1 < len)
                i++;
        if (i < len)
            i++;   /* the closing quote; unterminated runs to the end */
    } else {
        t->type = ADDR_TOK_WORD;
        while (i < len && (unsigned char)s[i] > 31 && s[i] != 127 &&
               strchr("<>@,;:.\"[]() \t\r\n", s[i]) == NULL)
            i++;
        if (i == start) {
            /* A stray ')' or ']', NUL or control byte: junk, one byte. */
            t->type = ADDR_TOK_JUNK;
            i++;
        }
    }
    t->p = s + start;
    t->len = i - start;
    *pos = i;
}


/* addr_append - append bytes to one part of spec, marking overflow */
static void
addr_append(struct addr_spec *sp, int domain, const char *p, size_t n)
{
    char *buf = domain ? sp->domain : sp->local;
    size_t *len = domain ? &sp->domain_len : &sp->local_len;

    ASSERT(*len <= ADDR_PART_MAX);
    if (*len + n > ADDR_PART_MAX) {
        sp->bad = 1;
        return;
    }
    memcpy(buf + *len, p, n);
    *len += n;
}


/* addr_feed - add one token to the address being assembled */
static void
addr_feed(struct addr_spec *sp, const struct addr_token *t)
{
    int is_word = t->type == ADDR_TOK_WORD || t->type == ADDR_TOK_LITERAL;

    if (t->type == ADDR_TOK_JUNK) {
        sp->bad = 1;
        return;
    }

    if (t->type == ADDR_TOK_SPECIAL && t->special == '@') {
        if (sp->seen_at)
            sp->bad = 1;
        sp->seen_at = 1;
        sp->last_was_word = 0;
        return;
    }
    if (!sp->seen_at) {
        if (t->type == ADDR_TOK_LITERAL) {
            sp->bad = 1;
            return;
        }
        /* Two words in a row: the first was part of a display name. */
        if (is_word && sp->last_was_word)
            sp->local_len = 0;
        addr_append(sp, 0, t->p, t->len);
        sp->last_was_word = is_word;
        return;
    }
    if (sp->domain_done)
        return;
    if (is_word && sp->last_was_word) {
        sp->domain_done = 1;   /* trailing words after the domain */
        return;
    }
    if (t->type == ADDR_TOK_WORD && t->p[0] == '"')
        sp->bad = 1;            /* a quoted string is no domain */
    addr_append(sp, 1, t->p, t->len);
    sp->last_was_word = is_word;
}


/* addr_push - push the chosen component of a finished address, if valid */
static void
addr_push(lua_State *L, const struct addr_spec *sp, enum addr_comp comp,
          int *n)
{
    const char *plus;
    size_t user_len;

    if (sp->bad || !sp->seen_at || sp->local_len == 0 || sp->domain_len == 0)
        return;
    plus = memchr(sp->local, '+', sp->local_len);
    user_len = plus != NULL ? (size_t)(plus - sp->local) : sp->local_len;
    switch (comp) {
    case ADDR_ALL:
        lua_pushlstring(L, sp->local, sp->local_len);
        lua_pushliteral(L, "@");
        lua_pushlstring(L, sp->domain, sp->domain_len);
        lua_concat(L, 3);
        break;
    case ADDR_LOCALPART:
        lua_pushlstring(L, sp->local, sp->local_len);
        break;
    case ADDR_USER:
        lua_pushlstring(L, sp->local, user_len);
        break;
    case ADDR_DETAIL:
        if (plus == NULL)
            lua_pushliteral(L, "");
        else
            lua_pushlstring(L, plus + 1, sp->local_len - user_len - 1);
        break;
    case ADDR_DOMAIN:
        lua_pushlstring(L, sp->domain, sp->domain_len);
        break;
    }
    lua_rawseti(L, -2, ++*n);
}


/* addr_parse - msys.parseRFC2822Addresses(addressstring, component) */
static int
addr_parse(lua_State *L)
{
    static const char *const names[] = {
        "all", "localpart", "user", "detail", "domain", NULL,
    };
    /* Two specs: words outside <> and the address inside <>. Static
       size is 4 KiB; they are reset, not reallocated, per address. */
    struct addr_spec outer, angle;
    struct addr_token t;
    const char *s;
    size_t len, pos = 0;
    enum addr_comp comp;
    int in_angle = 0, have_angle = 0, n = 0;

    s = luaL_checklstring(L, 1, &len);
    comp = (enum addr_comp)luaL_checkoption(L, 2, "all", names);
    memset(&outer, 0, sizeof(outer));
    memset(&angle, 0, sizeof(angle));
    lua_newtable(L);
    for (;;) {
        addr_next(s, len, &pos, &t);
        if (in_angle && t.type != ADDR_TOK_END) {
            if (t.type != ADDR_TOK_SPECIAL) {
                addr_feed(&angle, &t);
            } else if (t.special == '>') {
                in_angle = 0;
                have_angle = 1;
            } else if (t.special == ':') {
                memset(&angle, 0, sizeof(angle));   /* end of a route */
            } else if (t.special == ',' || t.special == ';' ||
                       t.special == '<') {
                /* ',' belongs to a route; others are junk: ignore */
            } else {
                addr_feed(&angle, &t);
            }
            continue;
        }
        if (t.type == ADDR_TOK_END ||
            (t.type == ADDR_TOK_SPECIAL &&
             (t.special == ',' || t.special == ';'))) {
            addr_push(L, have_angle || in_angle ? &angle : &outer, comp, &n);
            memset(&outer, 0, sizeof(outer));
            memset(&angle, 0, sizeof(angle));
            have_angle = 0;
            if (t.type == ADDR_TOK_END)
                break;
            continue;
        }
        if (t.type == ADDR_TOK_SPECIAL && t.special == '<') {
            in_angle = 1;
            memset(&angle, 0, sizeof(angle));
            continue;
        }
        if (t.type == ADDR_TOK_SPECIAL && t.special == ':') {
            /* A group's display name ends: what came before was it. */
            memset(&outer, 0, sizeof(outer));
            continue;
        }
        if (t.type == ADDR_TOK_SPECIAL && t.special == '>')
            continue;   /* stray '>' */
        if (!have_angle)
            addr_feed(&outer, &t);
    }
    return 1;
}


/* lualib_addr_open - register msys.parseRFC2822Addresses */
void
lualib_addr_open(lua_State *L)
{
    int top = lua_gettop(L);

    lualib_msys_table(L);
    lua_pushcfunction(L, addr_parse);
    lua_setfield(L, -2, "parseRFC2822Addresses");
    lua_settop(L, top);
}
