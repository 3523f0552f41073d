/*
 * lualib_pcre - msys.pcre.match, msys.pcre.replace, msys.pcre.split on PCRE2
 *
 * SYNOPSIS
 *   void lualib_pcre_open(lua_State *L);
 *   Lua: m, errstr, errnum = msys.pcre.match(subject, pattern)
 *        s = msys.pcre.replace(subject, pattern, replacement)
 *        t = msys.pcre.split(subject, pattern)
 * DESCRIPTION
 *   match() returns nil when the pattern does not match, else a table with
 *   [0] the whole match, [1..n] the capture groups (false for a group that
 *   did not take part) and, for named groups, name = value as well. A
 *   pattern that does not compile gives nil, "offset N: message", errnum
 *   (the PCRE2 error code), as Momentum's ref page documents.
 *
 *   replace() replaces every match (global, like s///g) and returns the new
 *   string. In the replacement $N, ${N}, \N and ${name} insert a group ($0
 *   the whole match; a group that did not match, or does not exist, inserts
 *   nothing); $$ and \\ insert $ and \. Any other character is literal.
 *
 *   split() returns an array of the pieces between matches, Perl style: an
 *   empty match splits between characters, a zero-width match never makes
 *   an empty leading field, trailing empty fields are dropped, and captured
 *   groups are not put in the result.
 *
 *   Patterns are byte-oriented (no PCRE2_UTF): \w and . see bytes. Use
 *   (*UTF) at the start of a pattern to ask for UTF-8 mode.
 * OWNERSHIP
 *   Compiled patterns and their match data sit in a per-state LRU cache of
 *   LPCRE_CACHE_MAX entries owned by one userdata in the registry; its __gc
 *   frees them when the state closes. Every PCRE2 allocation goes through
 *   the state's lua_Alloc, so a memory-capped state caps PCRE2 as well.
 *   Match data belongs to the cache entry, so raising a Lua error between
 *   pcre2_match() and the end of the function leaks nothing.
 * THREADS
 *   One state, one thread. The cache is per state (per shard).
 * ERRORS
 *   Bad argument types: luaL_check* errors. replace() and split() raise on
 *   a pattern that does not compile ("... invalid pattern at offset N: ...").
 *   All three raise when a match exceeds the limits below ("match limit
 *   exceeded") and raise LUA_ERRMEM when memory runs out.
 * SECURITY
 *   Subjects are often untrusted message text, patterns come from policy.
 *   Limits: LPCRE_MATCH_LIMIT backtracking steps, LPCRE_DEPTH_LIMIT nested
 *   backtracking, LPCRE_HEAP_LIMIT_KIB of backtracking heap per match, and
 *   LPCRE_PATTERN_MAX bytes per pattern. A catastrophic pattern therefore
 *   ends in a Lua error after bounded work, never a hang.
 * SEE ALSO
 *   lualib.h, docs/lua-library.md, pcre2api(3)
 */
#define PCRE2_CODE_UNIT_WIDTH 8

#include "lualib.h"

#include <lauxlib.h>
#include <pcre2.h>
#include <stdint.h>
#include <string.h>

#include "util.h"

/* Distinct patterns kept compiled per state; policy scripts use a few
   dozen at most, and the oldest are recompiled when more come. */
#define LPCRE_CACHE_MAX 64
#define LPCRE_PATTERN_MAX (64 * 1024)
/* Limits per pcre2_match() call: enough for any sane header or body
   pattern, small enough that (a+)+$ on 40 bytes stops in milliseconds. */
#define LPCRE_MATCH_LIMIT 1000000
#define LPCRE_DEPTH_LIMIT 10000
#define LPCRE_HEAP_LIMIT_KIB 8192

/* Bytes of a pattern quoted in a limit error. */
#define LPCRE_SHOWN 60

/* Size header in front of each PCRE2 block: pcre2's free callback does
   not pass the size, but a counting lua_Alloc needs it. */
#define LPCRE_HDR 16

struct lpcre_entry {
    char *pattern;           /* copy of the pattern bytes (LPCRE_HDR alloc) */
    size_t pattern_len;
    pcre2_code *code;
    pcre2_match_data *md;
    uint32_t capture_count;
    uint64_t last_use;       /* cache tick of the last lookup, for LRU */
};

struct lpcre_cache {
    lua_Alloc alloc;
    void *alloc_ud;
    pcre2_general_context *gctx;
    pcre2_compile_context *cctx;
    pcre2_match_context *mctx;
    uint64_t tick;
    unsigned used;
    struct lpcre_entry e[LPCRE_CACHE_MAX];
};

/* Registry key: the address of this variable. */
static const char lpcre_cache_key = 0;

#define LPCRE_META "ringmail.pcre.cache"


/* lpcre_malloc - PCRE2 allocation callback through the state's lua_Alloc */
static void *
lpcre_malloc(PCRE2_SIZE size, void *ud)
{
    struct lpcre_cache *c = ud;
    char *p;

    p = c->alloc(c->alloc_ud, NULL, 0, size + LPCRE_HDR);
    if (p == NULL)
        return NULL;
    memcpy(p, &size, sizeof(size));
    return p + LPCRE_HDR;
}


/* lpcre_free - PCRE2 free callback; gives the block back with its size */
static void
lpcre_free(void *ptr, void *ud)
{
    struct lpcre_cache *c = ud;
    char *p;
    PCRE2_SIZE size;

    if (ptr == NULL)
        return;
    p = (char *)ptr - LPCRE_HDR;
    memcpy(&size, p, sizeof(size));
    c->alloc(c->alloc_ud, p, size + LPCRE_HDR, 0);
}


/* lpcre_entry_clear - release one cache entry's compiled pattern */
static void
lpcre_entry_clear(struct lpcre_cache *c, struct lpcre_entry *en)
{
    if (en->md != NULL)
        pcre2_match_data_free(en->md);
    if (en->code != NULL)
        pcre2_code_free(en->code);
    if (en->pattern != NULL)
        lpcre_free(en->pattern, c);
    memset(en, 0, sizeof(*en));
}


/* lpcre_gc - __gc of the cache: free every entry and the contexts */
static int
lpcre_gc(lua_State *L)
{
    struct lpcre_cache *c = luaL_checkudata(L, 1, LPCRE_META);
    unsigned i;

    for (i = 0; i < c->used; i++)
        lpcre_entry_clear(c, &c->e[i]);
    c->used = 0;
    if (c->mctx != NULL)
        pcre2_match_context_free(c->mctx);
    if (c->cctx != NULL)
        pcre2_compile_context_free(c->cctx);
    if (c->gctx != NULL)
        pcre2_general_context_free(c->gctx);
    c->mctx = NULL;
    c->cctx = NULL;
    c->gctx = NULL;
    return 0;
}


/* lpcre_cache_get - the state's cache (created by lualib_pcre_open) */
static struct lpcre_cache *
lpcre_cache_get(lua_State *L)
{
    struct lpcre_cache *c;

    lua_pushlightuserdata(L, (void *)&lpcre_cache_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    c = lua_touserdata(L, -1);
    lua_pop(L, 1);
    if (c == NULL || c->gctx == NULL)
        luaL_error(L, "msys.pcre: library not opened in this state");
    return c;
}


/*
 * lpcre_compile - find or compile pattern; NULL with *err and *erroff on a
 * compile error. Raises only for out-of-memory, after releasing what it
 * allocated.
 */
static struct lpcre_entry *
lpcre_compile(lua_State *L, struct lpcre_cache *c, const char *pat,
              size_t pat_len, int *err, PCRE2_SIZE *erroff)
{
    struct lpcre_entry *en, fresh;
    unsigned i, victim;

    c->tick++;
    for (i = 0; i < c->used; i++) {
        en = &c->e[i];
        if (en->pattern_len == pat_len &&
            memcmp(en->pattern, pat, pat_len) == 0) {
            en->last_use = c->tick;
            return en;
        }
    }
    if (pat_len > LPCRE_PATTERN_MAX)
        luaL_error(L, "msys.pcre: pattern longer than %d bytes",
                   LPCRE_PATTERN_MAX);

    memset(&fresh, 0, sizeof(fresh));
    fresh.code = pcre2_compile((PCRE2_SPTR)pat, pat_len, 0, err, erroff,
                               c->cctx);
    if (fresh.code == NULL) {
        if (*err == PCRE2_ERROR_HEAP_FAILED)
            luaL_error(L, "not enough memory");
        return NULL;
    }
    fresh.md = pcre2_match_data_create_from_pattern(fresh.code, c->gctx);
    fresh.pattern = lpcre_malloc(pat_len + 1, c);
    if (fresh.md == NULL || fresh.pattern == NULL) {
        lpcre_entry_clear(c, &fresh);
        luaL_error(L, "not enough memory");
    }
    memcpy(fresh.pattern, pat, pat_len);
    fresh.pattern[pat_len] = '\0';
    fresh.pattern_len = pat_len;
    (void)pcre2_pattern_info(fresh.code, PCRE2_INFO_CAPTURECOUNT,
                             &fresh.capture_count);
    fresh.last_use = c->tick;

    ASSERT(c->used <= LPCRE_CACHE_MAX);
    if (c->used < LPCRE_CACHE_MAX) {
        victim = c->used++;
    } else {
        victim = 0;
        for (i = 1; i < c->used; i++)
            if (c->e[i].last_use < c->e[victim].last_use)
                victim = i;
        lpcre_entry_clear(c, &c->e[victim]);
    }
    c->e[victim] = fresh;
    return &c->e[victim];
}


/* lpcre_compile_or_raise - lpcre_compile, raising on a bad pattern */
static struct lpcre_entry *
lpcre_compile_or_raise(lua_State *L, struct lpcre_cache *c, const char *fn,
                       const char *pat, size_t pat_len)
{
    struct lpcre_entry *en;
    PCRE2_UCHAR msg[256];
    PCRE2_SIZE erroff = 0;
    int err = 0;

    en = lpcre_compile(L, c, pat, pat_len, &err, &erroff);
    if (en == NULL) {
        pcre2_get_error_message(err, msg, sizeof(msg));
        luaL_error(L, "msys.pcre.%s: invalid pattern at offset %d: %s", fn,
                   (int)erroff, (const char *)msg);
    }
    return en;
}


/*
 * lpcre_exec - one pcre2_match(); returns rc > 0 on a match, 0 on no match.
 * Raises on limit errors; the match data belongs to en, so nothing leaks.
 */
static int
lpcre_exec(lua_State *L, struct lpcre_cache *c, struct lpcre_entry *en,
           const char *s, size_t len, size_t start, uint32_t options)
{
    PCRE2_UCHAR msg[256];
    int rc;

    ASSERT(en->code != NULL);
    ASSERT(en->md != NULL);
    ASSERT(start <= len);
    rc = pcre2_match(en->code, (PCRE2_SPTR)s, len, start, options, en->md,
                     c->mctx);
    if (rc > 0)
        return rc;
    if (rc == PCRE2_ERROR_NOMATCH)
        return 0;
    if (rc == 0) {
        /* Cannot happen: md was sized from the pattern. */
        return luaL_error(L, "msys.pcre: ovector too small");
    }
    if (rc == PCRE2_ERROR_MATCHLIMIT || rc == PCRE2_ERROR_DEPTHLIMIT ||
        rc == PCRE2_ERROR_HEAPLIMIT) {
        /* Name the pattern, but not all 64 KiB of it. */
        char shown[LPCRE_SHOWN + 4];
        size_t n = en->pattern_len < LPCRE_SHOWN ? en->pattern_len
                                                 : LPCRE_SHOWN;

        memcpy(shown, en->pattern, n);
        strcpy(shown + n, en->pattern_len > n ? "..." : "");
        return luaL_error(L, "msys.pcre: match limit exceeded (pattern "
                          "\"%s\"): %s", shown,
                          rc == PCRE2_ERROR_MATCHLIMIT ? "too many steps" :
                          rc == PCRE2_ERROR_DEPTHLIMIT ? "too deep" :
                          "too much heap");
    }
    if (rc == PCRE2_ERROR_NOMEMORY)
        return luaL_error(L, "not enough memory");
    pcre2_get_error_message(rc, msg, sizeof(msg));
    return luaL_error(L, "msys.pcre: match failed: %s", (const char *)msg);
}


/* lpcre_push_group - push capture group i of the last match, or false */
static void
lpcre_push_group(lua_State *L, struct lpcre_entry *en, const char *s,
                 uint32_t i)
{
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(en->md);

    if (i > en->capture_count || ov[2 * i] == PCRE2_UNSET)
        lua_pushboolean(L, 0);
    else
        lua_pushlstring(L, s + ov[2 * i], ov[2 * i + 1] - ov[2 * i]);
}


/* lpcre_match - msys.pcre.match(subject, pattern) */
static int
lpcre_match(lua_State *L)
{
    struct lpcre_cache *c;
    struct lpcre_entry *en;
    const char *s, *pat;
    size_t len, pat_len;
    PCRE2_UCHAR msg[256];
    PCRE2_SIZE erroff = 0;
    PCRE2_SPTR table, p;
    uint32_t i, count = 0, entry_size = 0;
    int err = 0;

    s = luaL_checklstring(L, 1, &len);
    pat = luaL_checklstring(L, 2, &pat_len);
    c = lpcre_cache_get(L);
    en = lpcre_compile(L, c, pat, pat_len, &err, &erroff);
    if (en == NULL) {
        pcre2_get_error_message(err, msg, sizeof(msg));
        lua_pushnil(L);
        lua_pushfstring(L, "offset %d: %s", (int)erroff, (const char *)msg);
        lua_pushinteger(L, err);
        return 3;
    }
    if (lpcre_exec(L, c, en, s, len, 0, 0) == 0) {
        lua_pushnil(L);
        return 1;
    }
    lua_createtable(L, (int)en->capture_count, 0);
    for (i = 0; i <= en->capture_count; i++) {
        lpcre_push_group(L, en, s, i);
        lua_rawseti(L, -2, (int)i);
    }
    (void)pcre2_pattern_info(en->code, PCRE2_INFO_NAMECOUNT, &count);
    (void)pcre2_pattern_info(en->code, PCRE2_INFO_NAMEENTRYSIZE, &entry_size);
    (void)pcre2_pattern_info(en->code, PCRE2_INFO_NAMETABLE, &table);
    for (i = 0, p = table; i < count; i++, p += entry_size) {
        /* Entry: 2-byte group number, then the NUL-terminated name. */
        lua_pushstring(L, (const char *)p + 2);
        lpcre_push_group(L, en, s, ((uint32_t)p[0] << 8) | p[1]);
        lua_rawset(L, -3);
    }
    return 1;
}


/* lpcre_ref - parse a group reference after $ or \ at r[*i]; -1 if none.
   Named references resolve through the pattern's name table. */
static int
lpcre_ref(struct lpcre_entry *en, const char *r, size_t rlen, size_t *i)
{
    size_t j = *i;
    int n = 0, digits = 0;
    char name[64];
    size_t nlen;

    if (j < rlen && r[j] == '{') {
        j++;
        nlen = 0;
        while (j < rlen && r[j] != '}' && nlen < sizeof(name) - 1)
            name[nlen++] = r[j++];
        if (j >= rlen || r[j] != '}' || nlen == 0)
            return -1;
        name[nlen] = '\0';
        *i = j + 1;
        if (name[0] >= '0' && name[0] <= '9') {
            for (j = 0; j < nlen; j++) {
                if (name[j] < '0' || name[j] > '9' || n > 65535)
                    return -2;
                n = n * 10 + (name[j] - '0');
            }
            return n;
        }
        n = pcre2_substring_number_from_name(en->code, (PCRE2_SPTR)name);
        return n < 0 ? -2 : n;
    }
    while (j < rlen && r[j] >= '0' && r[j] <= '9' && digits < 5) {
        n = n * 10 + (r[j] - '0');
        j++;
        digits++;
    }
    if (digits == 0)
        return -1;
    *i = j;
    return n;
}


/* lpcre_add_replacement - expand the replacement for the current match */
static void
lpcre_add_replacement(luaL_Buffer *b, struct lpcre_entry *en, const char *s,
                      const char *r, size_t rlen)
{
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(en->md);
    size_t i = 0, save;
    int n;

    while (i < rlen) {
        char ch = r[i];

        if ((ch == '$' || ch == '\\') && i + 1 < rlen && r[i + 1] == ch) {
            luaL_addchar(b, ch);
            i += 2;
            continue;
        }
        if (ch != '$' && ch != '\\') {
            luaL_addchar(b, ch);
            i++;
            continue;
        }
        save = i + 1;
        n = lpcre_ref(en, r, rlen, &save);
        if (n == -1 || (ch == '\\' && r[i + 1] == '{')) {
            luaL_addchar(b, ch);   /* not a reference: literal */
            i++;
            continue;
        }
        i = save;
        if (n >= 0 && (uint32_t)n <= en->capture_count &&
            ov[2 * n] != PCRE2_UNSET)
            luaL_addlstring(b, s + ov[2 * n], ov[2 * n + 1] - ov[2 * n]);
    }
}


/* lpcre_replace - msys.pcre.replace(subject, pattern, replacement) */
static int
lpcre_replace(lua_State *L)
{
    struct lpcre_cache *c;
    struct lpcre_entry *en;
    const char *s, *pat, *r;
    size_t len, pat_len, rlen, pos = 0, copied = 0;
    PCRE2_SIZE *ov;
    luaL_Buffer b;
    uint32_t opts = 0;

    s = luaL_checklstring(L, 1, &len);
    pat = luaL_checklstring(L, 2, &pat_len);
    r = luaL_checklstring(L, 3, &rlen);
    c = lpcre_cache_get(L);
    en = lpcre_compile_or_raise(L, c, "replace", pat, pat_len);

    luaL_buffinit(L, &b);
    while (pos <= len) {
        if (lpcre_exec(L, c, en, s, len, pos, opts) == 0) {
            if (opts == 0 || pos >= len)
                break;
            /* No non-empty match here after an empty one: step a byte. */
            pos++;
            opts = 0;
            continue;
        }
        ov = pcre2_get_ovector_pointer(en->md);
        luaL_addlstring(&b, s + copied, ov[0] - copied);
        lpcre_add_replacement(&b, en, s, r, rlen);
        copied = ov[1];
        pos = ov[1];
        /* After an empty match, look for a non-empty one at the same
           place before moving on (Perl and pcre2demo do the same). */
        opts = ov[0] == ov[1] ? PCRE2_NOTEMPTY_ATSTART | PCRE2_ANCHORED : 0;
    }
    luaL_addlstring(&b, s + copied, len - copied);
    luaL_pushresult(&b);
    return 1;
}


/* lpcre_split - msys.pcre.split(subject, pattern) */
static int
lpcre_split(lua_State *L)
{
    struct lpcre_cache *c;
    struct lpcre_entry *en;
    const char *s, *pat;
    size_t len, pat_len, start = 0, search = 0, ms, me;
    PCRE2_SIZE *ov;
    int n = 0;

    s = luaL_checklstring(L, 1, &len);
    pat = luaL_checklstring(L, 2, &pat_len);
    c = lpcre_cache_get(L);
    en = lpcre_compile_or_raise(L, c, "split", pat, pat_len);

    lua_newtable(L);
    while (search <= len) {
        if (lpcre_exec(L, c, en, s, len, search, 0) == 0)
            break;
        ov = pcre2_get_ovector_pointer(en->md);
        ms = ov[0];
        me = ov[1];
        if (ms == me) {
            if (ms >= len)
                break;
            if (ms == start) {
                /* Zero width at the start of a field splits nothing. */
                search = ms + 1;
                continue;
            }
        }
        lua_pushlstring(L, s + start, ms - start);
        lua_rawseti(L, -2, ++n);
        start = me;
        search = me == ms ? me + 1 : me;
    }
    lua_pushlstring(L, s + start, len - start);
    lua_rawseti(L, -2, ++n);
    /* Trailing empty fields go, as in Perl's split. */
    while (n > 0) {
        lua_rawgeti(L, -1, n);
        if (lua_objlen(L, -1) != 0) {
            lua_pop(L, 1);
            break;
        }
        lua_pop(L, 1);
        lua_pushnil(L);
        lua_rawseti(L, -2, n--);
    }
    return 1;
}


/* lpcre_cache_create - make the state's cache userdata and its contexts */
static void
lpcre_cache_create(lua_State *L)
{
    struct lpcre_cache *c;

    lua_pushlightuserdata(L, (void *)&lpcre_cache_key);
    c = lua_newuserdata(L, sizeof(*c));
    memset(c, 0, sizeof(*c));
    c->alloc = lua_getallocf(L, &c->alloc_ud);
    if (luaL_newmetatable(L, LPCRE_META)) {
        lua_pushcfunction(L, lpcre_gc);
        lua_setfield(L, -2, "__gc");
        lua_pushliteral(L, "locked");
        lua_setfield(L, -2, "__metatable");
    }
    lua_setmetatable(L, -2);
    /* Anchor before creating contexts: if one fails, the error unwinds
       and __gc frees the others. */
    lua_rawset(L, LUA_REGISTRYINDEX);

    c->gctx = pcre2_general_context_create(lpcre_malloc, lpcre_free, c);
    if (c->gctx == NULL)
        luaL_error(L, "not enough memory");
    c->cctx = pcre2_compile_context_create(c->gctx);
    c->mctx = pcre2_match_context_create(c->gctx);
    if (c->cctx == NULL || c->mctx == NULL)
        luaL_error(L, "not enough memory");
    pcre2_set_match_limit(c->mctx, LPCRE_MATCH_LIMIT);
    pcre2_set_depth_limit(c->mctx, LPCRE_DEPTH_LIMIT);
    pcre2_set_heap_limit(c->mctx, LPCRE_HEAP_LIMIT_KIB);
    pcre2_set_max_pattern_length(c->cctx, LPCRE_PATTERN_MAX);
}


/* lualib_pcre_open - register msys.pcre; create the per-state cache once */
void
lualib_pcre_open(lua_State *L)
{
    static const luaL_Reg fns[] = {
        {"match", lpcre_match},
        {"replace", lpcre_replace},
        {"split", lpcre_split},
        {NULL, NULL},
    };
    const luaL_Reg *f;
    int top = lua_gettop(L);

    lua_pushlightuserdata(L, (void *)&lpcre_cache_key);
    lua_rawget(L, LUA_REGISTRYINDEX);
    if (lua_isnil(L, -1))
        lpcre_cache_create(L);
    lua_settop(L, top);

    lualib_msys_table(L);
    lualib_subtable(L, -1, "pcre");
    lualib_provide(L, -1, "msys.pcre");
    for (f = fns; f->name != NULL; f++) {
        lua_pushcfunction(L, f->func);
        lua_setfield(L, -2, f->name);
    }
    lua_settop(L, top);
}
