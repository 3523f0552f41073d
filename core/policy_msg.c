/*
 * policy_msg - the message (msg) and context stores seen from Lua, and
 *              what a callout receives as arguments
 *
 * DESCRIPTION
 *   Callout arguments, as Momentum documents them:
 *     validate_connect(accept, vctx)        validate_ehlo(str, accept, vctx)
 *     validate_mailfrom(str, accept, vctx)  validate_rcptto(msg, str, accept,
 *     validate_rcptto_list(list, vctx)                             vctx)
 *     validate_rcptto_list_final(list, vctx)
 *     validate_data / _spool / _spool_each_rcpt(msg, accept, vctx)
 *     validate_set_binding(msg)
 *   accept is a table: remote_ip, remote_port, local_ip, local_port. The
 *   list of the rcptto_list phases is an array of the recipients.
 *
 *   msg methods: header, mailfrom, rcptto, routing_domain, binding,
 *   binding_group, context_get/set/exists/delete, get_message_size, body,
 *   raw, discard, code; fields id, conn_id, priority (read/write).
 *   Headers are parsed from the received message the first time a method
 *   needs them; changes are kept as a list of header lines and the body
 *   is rebuilt once, at the commit (policy_msg_out()): the new header
 *   block, then the original bytes after the blank line. Header names are
 *   matched case-insensitively; values set with CR, LF or NUL are refused
 *   (a Lua error), so a script cannot inject headers or end the message.
 *
 *   Context stores: VCTX_CONN and ECMESS_CTX_CONN values live in the
 *   session arena (POLICY_CTX_CONN_MAX bytes each per session), VCTX_MESS
 *   and ECMESS_CTX_MESS in the per-message arena (POLICY_CTX_MESS_MAX);
 *   going over is a Lua error. A value rewritten in place reuses its
 *   storage when it fits.
 * OWNERSHIP
 *   See policy_int.h: session arena, message arena (reset at each MAIL).
 * SECURITY
 *   Message bytes are the peer's: parsing is bounded (the header block is
 *   read up to POLICY_HDR_BLOCK_MAX bytes; past that the rest counts as
 *   body).
 */
#include <ctype.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "policy_int.h"
#include "util.h"

#define MSG_MT "ringmail.msg"
#define POLICY_HDR_BLOCK_MAX (1u << 20)

static struct arena *
mess_arena(struct policy_sess *ps)
{
    if (ps->mess == NULL)
        ps->mess = arena_create(ps->pool);
    return ps->mess;
}


/* --- context stores ----------------------------------------------------- */

const struct policy_kv *
policy_ctx_get(const struct policy_sess *ps, enum policy_ctx c,
               const char *key)
{
    const struct policy_kv *kv;

    for (kv = ps->ctx[c]; kv != NULL; kv = kv->next) {
        if (strcmp(kv->key, key) == 0)
            return kv;
    }
    return NULL;
}


int
policy_ctx_set(struct policy_sess *ps, enum policy_ctx c, const char *key,
               const char *val, size_t len)
{
    int conn = c == POLICY_CTX_VCONN || c == POLICY_CTX_MCONN;
    struct arena *a = conn ? ps->arena : mess_arena(ps);
    size_t max = conn ? POLICY_CTX_CONN_MAX : POLICY_CTX_MESS_MAX;
    struct policy_kv *kv = (struct policy_kv *)policy_ctx_get(ps, c, key);
    size_t klen = strlen(key);

    if (klen == 0 || klen >= POLICY_CTX_KEY_MAX)
        return -1;
    if (kv != NULL && kv->cap >= len) {
        memcpy(kv->val, val, len);
        kv->val[len] = '\0';
        kv->len = len;
        return 0;
    }
    if (ps->ctx_bytes[c] + len + (kv == NULL ? klen : 0) > max)
        return -1;
    if (kv == NULL) {
        kv = arena_zalloc(a, sizeof *kv);
        kv->key = arena_strndup(a, key, klen);
        kv->next = ps->ctx[c];
        ps->ctx[c] = kv;
        ps->ctx_bytes[c] += klen;
    }
    kv->val = arena_alloc(a, len + 1);
    memcpy(kv->val, val, len);
    kv->val[len] = '\0';
    kv->len = kv->cap = len;
    ps->ctx_bytes[c] += len;
    return 0;
}


/* core-set keys (ehlo_string, mailfrom_string, ...); a full store
 * just leaves them out */
void
policy_ctx_conn_set(struct policy_sess *ps, const char *key, const char *val)
{
    if (ps != NULL && val != NULL)
        (void)policy_ctx_set(ps, POLICY_CTX_VCONN, key, val, strlen(val));
}


void
policy_ctx_mess_set(struct policy_sess *ps, const char *key, const char *val)
{
    if (ps != NULL && val != NULL)
        (void)policy_ctx_set(ps, POLICY_CTX_VMESS, key, val, strlen(val));
}


static int
ctx_delete(struct policy_sess *ps, enum policy_ctx c, const char *key)
{
    struct policy_kv **pp;

    for (pp = &ps->ctx[c]; *pp != NULL; pp = &(*pp)->next) {
        if (strcmp((*pp)->key, key) == 0) {
            *pp = (*pp)->next;
            return 1;
        }
    }
    return 0;
}


void
policy_msg_reset(struct policy_sess *ps)
{
    ps->hdrs = NULL;
    ps->hdr_tail = NULL;
    ps->hdrs_parsed = 0;
    ps->hdrs_dirty = 0;
    ps->hdr_bytes = 0;
    ps->hdr_blank = 0;
    ps->new_sender = NULL;
    ps->new_rcpts = NULL;
    ps->new_rcpt_count = 0;
    ps->binding = NULL;
    ps->binding_group = NULL;
    ps->routing_domain = NULL;
    ps->priority = 0;
    ps->out_body = NULL;
}


/* --- the msg object ----------------------------------------------------- */

static struct policy_sess *
msg_check(lua_State *L, int idx)
{
    return policy_ud_check(L, idx, MSG_MT, "msg");
}


static const struct policy_txn *
msg_txn(lua_State *L, struct policy_sess *ps)
{
    const struct policy_txn *t = ps->run.txn;

    if (t == NULL)
        luaL_error(L, "no message in this phase");
    return t;
}


/* safe_value - refuse what could break the header block or the envelope */
static void
safe_value(lua_State *L, const char *v, size_t len, const char *what)
{
    size_t i;

    for (i = 0; i < len; i++) {
        if (v[i] == '\r' || v[i] == '\n' || v[i] == '\0')
            luaL_error(L, "%s: CR, LF and NUL are not allowed", what);
    }
}


/* header_line_end - the end of the header line at p: after the CRLF that
 * is not followed by SP or HT (folding), or end */
static const char *
header_line_end(const char *p, const char *end)
{
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));

        if (nl == NULL)
            return end;
        p = nl + 1;
        if (p >= end || (*p != ' ' && *p != '\t'))
            return p;
    }
    return end;
}


/* header_name_end - the end of the name before colon: "Subject : x"
 * (RFC 5322's obsolete form) is a Subject */
static const char *
header_name_end(const char *start, const char *colon)
{
    while (colon > start && (colon[-1] == ' ' || colon[-1] == '\t'))
        colon--;
    return colon;
}


/* headers_parse - split the header block of the body into lines */
static void
headers_parse(struct policy_sess *ps, const struct policy_txn *t)
{
    struct arena *a = mess_arena(ps);
    size_t cap = 4096, len = 0;
    char *blk = arena_alloc(a, cap);
    int found = 0;
    unsigned i;
    char *p, *end;

    ps->hdrs_parsed = 1;
    ps->hdr_tail = &ps->hdrs;
    /* Gather bytes up to and including the blank line. */
    for (i = 0; i < t->body_count && !found; i++) {
        const char *b = t->body[i].iov_base;
        size_t k, n = t->body[i].iov_len;

        for (k = 0; k < n; k++) {
            if (len + 1 >= cap) {
                char *nb;

                if (cap >= POLICY_HDR_BLOCK_MAX) {
                    /* Too big: stop at the last whole line. The rest of
                     * the header block stays as it was (policy_msg_out
                     * adds no blank line then). */
                    while (len > 0 && blk[len - 1] != '\n')
                        len--;
                    found = 2;
                    break;
                }
                nb = arena_alloc(a, cap * 2);
                memcpy(nb, blk, len);
                blk = nb;
                cap *= 2;
            }
            blk[len++] = b[k];
            if (len >= 2 && blk[len - 1] == '\n' &&
                (len == 2 ? blk[0] == '\r'
                          : (blk[len - 2] == '\r' && blk[len - 3] == '\n'))) {
                found = 1;
                break;
            }
        }
    }
    ps->hdr_bytes = len;
    ps->hdr_blank = found == 1;
    p = blk;
    end = blk + len;
    while (p < end) {
        char *start = p, *colon;
        struct policy_hdr *h;

        if (end - p >= 2 && p[0] == '\r' && p[1] == '\n')
            break;               /* the blank line */
        p = (char *)header_line_end(p, end);
        colon = memchr(start, ':', (size_t)(p - start));
        h = arena_zalloc(a, sizeof *h);
        /* A line that is not a header keeps its place, under no name. */
        if (colon != NULL) {
            h->name = arena_strndup(a, start, (size_t)(header_name_end(
                                                  start, colon) - start));
            h->value = colon + 1;
        } else {
            h->name = "";
        }
        h->line = start;
        h->len = (size_t)(p - start);
        *ps->hdr_tail = h;
        ps->hdr_tail = &h->next;
    }
}


static void
headers_need(struct policy_sess *ps, const struct policy_txn *t)
{
    if (!ps->hdrs_parsed)
        headers_parse(ps, t);
}


/* push_value - a header's value: after the colon, leading blanks and the
 * final CRLF gone, folds unfolded */
static void
push_value(lua_State *L, const struct policy_hdr *h)
{
    const char *p = h->value;
    const char *end = h->line + h->len;
    luaL_Buffer b;

    while (p < end && (*p == ' ' || *p == '\t'))
        p++;
    while (end > p && (end[-1] == '\n' || end[-1] == '\r'))
        end--;
    luaL_buffinit(L, &b);
    while (p < end) {
        if (*p == '\r' || *p == '\n') {
            p++;
            continue;
        }
        luaL_addchar(&b, *p);
        p++;
    }
    luaL_pushresult(&b);
}


static struct policy_hdr *
header_new(struct policy_sess *ps, const char *name, const char *val,
           size_t vlen)
{
    struct arena *a = mess_arena(ps);
    struct policy_hdr *h = arena_zalloc(a, sizeof *h);
    size_t nlen = strlen(name);

    h->name = arena_strdup(a, name);
    h->len = nlen + 2 + vlen + 2;
    h->line = arena_alloc(a, h->len + 1);
    memcpy(h->line, name, nlen);
    memcpy(h->line + nlen, ": ", 2);
    memcpy(h->line + nlen + 2, val, vlen);
    memcpy(h->line + nlen + 2 + vlen, "\r\n", 3);
    h->value = h->line + nlen + 1;
    return h;
}


/* msg:header(name, [value], [mode]) */
static int
msg_header(lua_State *L)
{
    struct policy_sess *ps = msg_check(L, 1);
    const struct policy_txn *t = msg_txn(L, ps);
    const char *name = luaL_checkstring(L, 2);
    const char *mode = luaL_optstring(L, 4, "replace");
    struct policy_hdr *h, **pp;
    size_t i, n;

    if (t->body == NULL)
        return luaL_error(L, "msg:header: no message body in this phase");
    for (i = 0; name[i] != '\0'; i++) {
        unsigned char c = (unsigned char)name[i];

        if (c <= 32 || c >= 127 || c == ':')
            return luaL_error(L, "msg:header: bad header name '%s'", name);
    }
    if (i == 0)
        return luaL_error(L, "msg:header: empty header name");
    headers_need(ps, t);
    if (lua_isnoneornil(L, 3)) {
        int k = 0;

        lua_newtable(L);
        for (h = ps->hdrs; h != NULL; h = h->next) {
            if (!h->deleted && strcasecmp(h->name, name) == 0) {
                push_value(L, h);
                lua_rawseti(L, -2, ++k);
            }
        }
        return 1;
    }
    if (strcmp(mode, "replace") != 0 && strcmp(mode, "prepend") != 0 &&
        strcmp(mode, "append") != 0)
        return luaL_error(L, "msg:header: mode must be replace, prepend "
                             "or append");
    if (lua_istable(L, 3))
        n = lua_objlen(L, 3);
    else
        n = 1;
    for (i = 1; i <= n; i++) {
        size_t vlen;
        const char *v;

        if (lua_istable(L, 3)) {
            lua_rawgeti(L, 3, (int)i);
            v = luaL_checklstring(L, -1, &vlen);
            lua_pop(L, 1);
        } else {
            v = luaL_checklstring(L, 3, &vlen);
        }
        safe_value(L, v, vlen, "msg:header");
    }
    ps->hdrs_dirty = 1;
    if (strcmp(mode, "replace") == 0) {
        for (h = ps->hdrs; h != NULL; h = h->next) {
            if (strcasecmp(h->name, name) == 0)
                h->deleted = 1;
        }
        if (!lua_istable(L, 3) && lua_objlen(L, 3) == 0)
            return 0;            /* "" deletes */
    }
    for (i = 1; i <= n; i++) {
        size_t vlen;
        const char *v;

        if (lua_istable(L, 3)) {
            lua_rawgeti(L, 3, (int)i);
            v = lua_tolstring(L, -1, &vlen);
            lua_pop(L, 1);
        } else {
            v = lua_tolstring(L, 3, &vlen);
        }
        h = header_new(ps, name, v, vlen);
        if (strcmp(mode, "prepend") == 0) {
            h->next = ps->hdrs;
            ps->hdrs = h;
            if (ps->hdr_tail == &ps->hdrs)
                ps->hdr_tail = &h->next;
        } else {
            for (pp = &ps->hdrs; *pp != NULL; pp = &(*pp)->next)
                ;
            *pp = h;
            ps->hdr_tail = &h->next;
        }
    }
    return 0;
}


static const char *
cur_rcpt(const struct policy_sess *ps, const struct policy_txn *t,
         int *idx)
{
    unsigned i;

    *idx = -1;
    if (t->rcpt != NULL) {
        for (i = 0; i < t->rcpt_count; i++) {
            if (t->rcpts[i] == t->rcpt)
                *idx = (int)i;
        }
        if (*idx >= 0 && ps->new_rcpts != NULL)
            return ps->new_rcpts[*idx];
        return t->rcpt;
    }
    if (t->rcpt_count > 0) {
        *idx = 0;
        return ps->new_rcpts != NULL ? ps->new_rcpts[0] : t->rcpts[0];
    }
    return NULL;
}


static int
msg_mailfrom(lua_State *L)
{
    struct policy_sess *ps = msg_check(L, 1);
    const struct policy_txn *t = msg_txn(L, ps);
    size_t len;

    if (!lua_isnoneornil(L, 2)) {
        const char *v = luaL_checklstring(L, 2, &len);

        safe_value(L, v, len, "msg:mailfrom");
        if (len > 255)
            return luaL_error(L, "msg:mailfrom: address too long");
        ps->new_sender = arena_strndup(mess_arena(ps), v, len);
    }
    lua_pushstring(L, ps->new_sender ? ps->new_sender
                      : t->sender ? t->sender : "");
    return 1;
}


static int
msg_rcptto(lua_State *L)
{
    struct policy_sess *ps = msg_check(L, 1);
    const struct policy_txn *t = msg_txn(L, ps);
    int idx;
    const char *cur = cur_rcpt(ps, t, &idx);
    size_t len;

    if (!lua_isnoneornil(L, 2)) {
        const char *v = luaL_checklstring(L, 2, &len);
        unsigned i;

        safe_value(L, v, len, "msg:rcptto");
        if (len == 0 || len > 255 || strchr(v, '@') == NULL)
            return luaL_error(L, "msg:rcptto: expected local@domain");
        if (idx < 0)
            return luaL_error(L, "msg:rcptto: no recipient to replace");
        if (ps->new_rcpts == NULL) {
            ps->new_rcpts = arena_alloc(mess_arena(ps),
                                        t->rcpt_count * sizeof(char *));
            for (i = 0; i < t->rcpt_count; i++)
                ps->new_rcpts[i] = t->rcpts[i];
            ps->new_rcpt_count = t->rcpt_count;
        }
        ps->new_rcpts[idx] = arena_strndup(mess_arena(ps), v, len);
        cur = ps->new_rcpts[idx];
    }
    if (cur == NULL)
        lua_pushnil(L);
    else
        lua_pushstring(L, cur);
    return 1;
}


/* a string option of the message: get, or set when an argument is given */
static int
msg_string_opt(lua_State *L, char **field, const char *what,
               const char *dflt)
{
    struct policy_sess *ps = msg_check(L, 1);
    size_t len;

    if (!lua_isnoneornil(L, 2)) {
        const char *v = luaL_checklstring(L, 2, &len);

        safe_value(L, v, len, what);
        if (len == 0 || len > 255)
            return luaL_error(L, "%s: expected 1 to 255 characters", what);
        *field = arena_strndup(mess_arena(ps), v, len);
    }
    if (*field != NULL)
        lua_pushstring(L, *field);
    else if (dflt != NULL)
        lua_pushstring(L, dflt);
    else
        lua_pushnil(L);
    return 1;
}


static int
msg_routing_domain(lua_State *L)
{
    struct policy_sess *ps = msg_check(L, 1);
    const struct policy_txn *t = msg_txn(L, ps);
    int idx;
    const char *r = cur_rcpt(ps, t, &idx);
    const char *at = r != NULL ? strrchr(r, '@') : NULL;

    return msg_string_opt(L, &ps->routing_domain, "msg:routing_domain",
                          at != NULL ? at + 1 : NULL);
}


static int
msg_binding(lua_State *L)
{
    struct policy_sess *ps = msg_check(L, 1);

    if (!lua_isnoneornil(L, 2)) {
        const char *name = luaL_checkstring(L, 2);

        if (ps->pe != NULL && conf_binding_find(ps->pe->conf, name) == NULL)
            return luaL_error(L, "msg:binding: no binding named '%s'",
                              name);
    }
    return msg_string_opt(L, &ps->binding, "msg:binding", "default");
}


static int
msg_binding_group(lua_State *L)
{
    struct policy_sess *ps = msg_check(L, 1);

    return msg_string_opt(L, &ps->binding_group, "msg:binding_group",
                          NULL);
}


/* --- context stores from Lua: vctx:get/set and msg:context_* -------- */

/* policy_ctx_arg - the store a type argument names: 1 (the MESS
 * constants) or 2 (the CONN ones); a Lua error naming expected otherwise */
enum policy_ctx
policy_ctx_arg(lua_State *L, int idx, enum policy_ctx mess,
               enum policy_ctx conn, const char *expected)
{
    int t = (int)luaL_checkinteger(L, idx);

    if (t == 1)
        return mess;
    if (t == 2)
        return conn;
    luaL_argerror(L, idx, expected);
    return mess;
}


/* policy_ctx_lua_get - push store c's value for the key at kidx, or nil */
int
policy_ctx_lua_get(lua_State *L, struct policy_sess *ps, enum policy_ctx c,
                   int kidx)
{
    const struct policy_kv *kv = policy_ctx_get(ps, c,
                                                luaL_checkstring(L, kidx));

    if (kv == NULL)
        lua_pushnil(L);
    else
        lua_pushlstring(L, kv->val, kv->len);
    return 1;
}


/* policy_ctx_lua_set - tostring(value at kidx + 1) under the key at kidx:
 * 0, -1 when the store is full or the key bad, -2 when the value has no
 * string form */
int
policy_ctx_lua_set(lua_State *L, struct policy_sess *ps, enum policy_ctx c,
                   int kidx)
{
    const char *key = luaL_checkstring(L, kidx);
    const char *v;
    size_t len;

    lua_getglobal(L, "tostring");
    lua_pushvalue(L, kidx + 1);
    lua_call(L, 1, 1);
    v = lua_tolstring(L, -1, &len);
    if (v == NULL)
        return -2;
    return policy_ctx_set(ps, c, key, v, len) < 0 ? -1 : 0;
}


static enum policy_ctx
msg_ctx_type(lua_State *L, int idx)
{
    return policy_ctx_arg(L, idx, POLICY_CTX_MMESS, POLICY_CTX_MCONN,
                          "expected msys.core.ECMESS_CTX_MESS or _CONN");
}


static int
msg_context_get(lua_State *L)
{
    struct policy_sess *ps = msg_check(L, 1);

    return policy_ctx_lua_get(L, ps, msg_ctx_type(L, 2), 3);
}


static int
msg_context_set(lua_State *L)
{
    struct policy_sess *ps = msg_check(L, 1);

    if (policy_ctx_lua_set(L, ps, msg_ctx_type(L, 2), 3) < 0)
        return luaL_error(L, "msg:context_set: context full or bad key");
    return 0;
}


static int
msg_context_exists(lua_State *L)
{
    struct policy_sess *ps = msg_check(L, 1);

    lua_pushboolean(L, policy_ctx_get(ps, msg_ctx_type(L, 2),
                                      luaL_checkstring(L, 3)) != NULL);
    return 1;
}


static int
msg_context_delete(lua_State *L)
{
    struct policy_sess *ps = msg_check(L, 1);

    lua_pushboolean(L, ctx_delete(ps, msg_ctx_type(L, 2),
                                  luaL_checkstring(L, 3)));
    return 1;
}


static int
msg_get_message_size(lua_State *L)
{
    struct policy_sess *ps = msg_check(L, 1);
    const struct policy_txn *t = msg_txn(L, ps);

    lua_pushnumber(L, (lua_Number)t->body_bytes);
    return 1;
}


/* push the message from byte off on (0: raw; hdr_bytes: the body) */
static void
push_bytes(lua_State *L, const struct policy_txn *t, uint64_t off)
{
    luaL_Buffer b;
    unsigned i;

    luaL_buffinit(L, &b);
    for (i = 0; i < t->body_count; i++) {
        const char *p = t->body[i].iov_base;
        size_t n = t->body[i].iov_len;

        if (off >= n) {
            off -= n;
            continue;
        }
        luaL_addlstring(&b, p + off, n - (size_t)off);
        off = 0;
    }
    luaL_pushresult(&b);
}


static int
msg_body(lua_State *L)
{
    struct policy_sess *ps = msg_check(L, 1);
    const struct policy_txn *t = msg_txn(L, ps);

    if (t->body == NULL)
        return luaL_error(L, "msg:body: no message body in this phase");
    headers_need(ps, t);
    push_bytes(L, t, ps->hdr_bytes);
    return 1;
}


static int
msg_raw(lua_State *L)
{
    struct policy_sess *ps = msg_check(L, 1);
    const struct policy_txn *t = msg_txn(L, ps);

    if (t->body == NULL)
        return luaL_error(L, "msg:raw: no message body in this phase");
    push_bytes(L, t, 0);
    lua_pushnumber(L, (lua_Number)t->body_bytes);
    return 2;
}


static int
msg_discard(lua_State *L)
{
    struct policy_sess *ps = msg_check(L, 1);
    enum policy_phase ph = ps->run.phase;

    if (ph != POLICY_DATA && ph != POLICY_DATA_SPOOL &&
        ph != POLICY_DATA_SPOOL_EACH_RCPT && ph != POLICY_SET_BINDING)
        return luaL_error(L, "msg:discard() works in the data phases only "
                             "(in %s, refuse with vctx:set_code)",
                          policy_phase_name(ph));
    ps->result.discard = 1;
    if (!lua_isnoneornil(L, 2))
        policy_paniclog("message discarded: %s", luaL_checkstring(L, 2));
    return 0;
}


static int
msg_code(lua_State *L)
{
    struct policy_sess *ps = msg_check(L, 1);
    int code = (int)luaL_checkinteger(L, 2);

    if (code < 200 || code > 599)
        return luaL_error(L, "msg:code: code %d out of range", code);
    if (code >= 400)             /* 2xx and 3xx change nothing */
        policy_reply_set(L, ps, code, luaL_optstring(L, 3, ""));
    return 0;
}


static int
msg_index(lua_State *L)
{
    struct policy_sess *ps = msg_check(L, 1);
    const char *k = luaL_checkstring(L, 2);

    if (strcmp(k, "priority") == 0) {
        lua_pushinteger(L, ps->priority > 50 ? 1 : 0);
        return 1;
    }
    if (strcmp(k, "id") == 0) {
        const struct policy_txn *t = ps->run.txn;

        if (t == NULL || t->id == NULL)
            lua_pushnil(L);
        else
            lua_pushstring(L, t->id);
        return 1;
    }
    if (strcmp(k, "conn_id") == 0) {
        lua_pushnumber(L, (lua_Number)ps->conn_id);
        return 1;
    }
    luaL_getmetatable(L, MSG_MT);
    lua_getfield(L, -1, "methods");
    lua_getfield(L, -1, k);
    return 1;
}


static int
msg_newindex(lua_State *L)
{
    struct policy_sess *ps = msg_check(L, 1);
    const char *k = luaL_checkstring(L, 2);
    lua_Integer v;

    if (strcmp(k, "priority") != 0)
        return luaL_error(L, "msg.%s cannot be set", k);
    v = luaL_checkinteger(L, 3);
    if (v < 0 || v > 100)
        return luaL_error(L, "msg.priority: expected 0 or 1 (Momentum), "
                             "or 2..100 (VPOP3 scale)");
    /* Momentum's bit: 1 sends first (100); 0 is the default (50). */
    ps->priority = v == 0 ? 50 : v == 1 ? 100 : (unsigned)v;
    return 0;
}


/*
 * accept: Momentum's accept construct, here the connection's addresses.
 * A userdata read through __index, so a callout that never looks pays
 * for no strings, and the local address (a getsockname() call) is asked
 * for only when a script reads it.
 */
#define ACCEPT_MT "ringmail.accept"


static void
accept_local(struct policy_sess *ps)
{
    struct sockaddr_storage la;
    socklen_t len = sizeof la;
    char buf[INET6_ADDRSTRLEN];
    const void *a;

    if (ps->conn.local_ip != NULL || ps->conn.fd < 0)
        return;
    if (getsockname(ps->conn.fd, (struct sockaddr *)&la, &len) < 0) {
        ps->conn.local_ip = "";
        return;
    }
    a = la.ss_family == AF_INET6
            ? (const void *)&((struct sockaddr_in6 *)&la)->sin6_addr
            : (const void *)&((struct sockaddr_in *)&la)->sin_addr;
    inet_ntop(la.ss_family, a, buf, sizeof buf);
    ps->conn.local_ip = arena_strdup(ps->arena, buf);
    ps->conn.local_port = la.ss_family == AF_INET6
        ? ntohs(((struct sockaddr_in6 *)&la)->sin6_port)
        : ntohs(((struct sockaddr_in *)&la)->sin_port);
}


static int
accept_index(lua_State *L)
{
    struct policy_sess *ps = policy_ud_check(L, 1, ACCEPT_MT, "accept");
    const char *k = luaL_checkstring(L, 2);

    if (strcmp(k, "remote_ip") == 0) {
        lua_pushstring(L, ps->conn.peer_ip ? ps->conn.peer_ip : "");
    } else if (strcmp(k, "remote_port") == 0) {
        lua_pushinteger(L, ps->conn.peer_port);
    } else if (strcmp(k, "local_ip") == 0) {
        accept_local(ps);
        lua_pushstring(L, ps->conn.local_ip ? ps->conn.local_ip : "");
    } else if (strcmp(k, "local_port") == 0) {
        accept_local(ps);
        lua_pushinteger(L, ps->conn.local_port);
    } else {
        lua_pushnil(L);
    }
    return 1;
}


/* buff: Momentum's ec_string for a char * + int hook parameter */
#define BUFF_MT "ringmail.buff"


static int
buff_set(lua_State *L)
{
    struct policy_sess *ps = policy_ud_check(L, 1, BUFF_MT, "buff");
    size_t len;
    const char *v = luaL_checklstring(L, 2, &len);

    safe_value(L, v, len, "buff:set");
    if (len == 0 || len > 255)
        return luaL_error(L, "buff:set: expected 1 to 255 characters");
    ps->routing_domain = arena_strndup(mess_arena(ps), v, len);
    return 0;
}


static int
buff_len(lua_State *L)
{
    struct policy_sess *ps = policy_ud_check(L, 1, BUFF_MT, "buff");

    lua_pushinteger(L, ps->routing_domain ? (lua_Integer)strlen(
                                                ps->routing_domain) : 0);
    return 1;
}


static int
buff_tostring(lua_State *L)
{
    struct policy_sess *ps = policy_ud_check(L, 1, BUFF_MT, "buff");

    lua_pushstring(L, ps->routing_domain ? ps->routing_domain : "");
    return 1;
}


void
policy_push_callout_args(lua_State *L, struct policy_run *r)
{
    const struct policy_txn *t = r->txn;
    unsigned i;

    switch (r->phase) {
    case POLICY_CONNECT:
        policy_ud_push(L, r, ACCEPT_MT);
        policy_push_vctx(L, r);
        break;
    case POLICY_EHLO:
    case POLICY_MAILFROM:
        lua_pushstring(L, t && t->str ? t->str : "");
        policy_ud_push(L, r, ACCEPT_MT);
        policy_push_vctx(L, r);
        break;
    case POLICY_RCPTTO:
        policy_ud_push(L, r, MSG_MT);
        lua_pushstring(L, t && t->str ? t->str : "");
        policy_ud_push(L, r, ACCEPT_MT);
        policy_push_vctx(L, r);
        break;
    case POLICY_RCPTTO_LIST:
    case POLICY_RCPTTO_LIST_FINAL:
        lua_createtable(L, t ? (int)t->rcpt_count : 0, 0);
        for (i = 0; t != NULL && i < t->rcpt_count; i++) {
            lua_pushstring(L, t->rcpts[i]);
            lua_rawseti(L, -2, (int)i + 1);
        }
        policy_push_vctx(L, r);
        break;
    case POLICY_DATA:
    case POLICY_DATA_SPOOL:
    case POLICY_DATA_SPOOL_EACH_RCPT:
        policy_ud_push(L, r, MSG_MT);
        policy_ud_push(L, r, ACCEPT_MT);
        policy_push_vctx(L, r);
        break;
    case POLICY_SET_BINDING:
        policy_ud_push(L, r, MSG_MT);
        break;
    case POLICY_HOOK_ROUTING:
        lua_pushnil(L);                          /* scope */
        policy_ud_push(L, r, MSG_MT);
        policy_ud_push(L, r, BUFF_MT);
        break;
    default:
        break;
    }
}


/*
 * policy_msg_out - what the data phases changed; the new body when
 * headers changed. Returns 1 when anything changed, else 0.
 */
int
policy_msg_out(struct policy_sess *ps, struct policy_msg_out *out)
{
    const struct policy_txn *t;

    memset(out, 0, sizeof *out);
    if (ps == NULL)
        return 0;
    t = ps->run.txn;
    out->sender = ps->new_sender;
    out->rcpts = ps->new_rcpts;
    out->rcpt_count = ps->new_rcpt_count;
    out->binding = ps->binding;
    out->binding_group = ps->binding_group;
    out->routing_domain = ps->routing_domain;
    out->priority = ps->priority;
    if (ps->hdrs_dirty && t != NULL && t->body != NULL) {
        struct arena *a = mess_arena(ps);
        const struct policy_hdr *h;
        size_t total = 0, off = 0;
        uint64_t skip = ps->hdr_bytes, bytes;
        unsigned i, n = 1;
        char *blk;

        for (h = ps->hdrs; h != NULL; h = h->next) {
            if (!h->deleted)
                total += h->len;
        }
        if (ps->hdr_blank)
            total += 2;
        blk = arena_alloc(a, total);
        for (h = ps->hdrs; h != NULL; h = h->next) {
            if (!h->deleted) {
                memcpy(blk + off, h->line, h->len);
                off += h->len;
            }
        }
        if (ps->hdr_blank)
            memcpy(blk + off, "\r\n", 2);
        ps->out_body = arena_alloc(a, (t->body_count + 1) *
                                          sizeof *ps->out_body);
        ps->out_body[0].iov_base = blk;
        ps->out_body[0].iov_len = total;
        bytes = total;
        for (i = 0; i < t->body_count; i++) {
            size_t len = t->body[i].iov_len;

            if (skip >= len) {
                skip -= len;
                continue;
            }
            ps->out_body[n].iov_base = (char *)t->body[i].iov_base + skip;
            ps->out_body[n].iov_len = len - (size_t)skip;
            bytes += len - skip;
            skip = 0;
            n++;
        }
        out->body = ps->out_body;
        out->body_count = n;
        out->body_bytes = bytes;
    }
    return out->sender || out->rcpts || out->binding || out->routing_domain
           || out->priority || out->body;
}


void
policy_msg_open(lua_State *L)
{
    static const luaL_Reg methods[] = {
        { "header", msg_header },
        { "mailfrom", msg_mailfrom },
        { "rcptto", msg_rcptto },
        { "routing_domain", msg_routing_domain },
        { "binding", msg_binding },
        { "binding_group", msg_binding_group },
        { "context_get", msg_context_get },
        { "context_set", msg_context_set },
        { "context_exists", msg_context_exists },
        { "context_delete", msg_context_delete },
        { "get_message_size", msg_get_message_size },
        { "body", msg_body },
        { "raw", msg_raw },
        { "discard", msg_discard },
        { "code", msg_code },
        { NULL, NULL },
    };

    luaL_newmetatable(L, ACCEPT_MT);
    lua_pushcfunction(L, accept_index);
    lua_setfield(L, -2, "__index");
    lua_pushliteral(L, "accept");
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);

    luaL_newmetatable(L, BUFF_MT);
    lua_newtable(L);
    lua_pushcfunction(L, buff_set);
    lua_setfield(L, -2, "set");
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, buff_len);
    lua_setfield(L, -2, "__len");
    lua_pushcfunction(L, buff_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pop(L, 1);

    luaL_newmetatable(L, MSG_MT);
    lua_newtable(L);
    luaL_register(L, NULL, methods);
    lua_setfield(L, -2, "methods");
    lua_pushcfunction(L, msg_index);
    lua_setfield(L, -2, "__index");
    lua_pushcfunction(L, msg_newindex);
    lua_setfield(L, -2, "__newindex");
    lua_pushliteral(L, "ec_message");
    lua_setfield(L, -2, "__metatable");
    lua_pop(L, 1);
}


/* --- relay control ------------------------------------------------------ */

/* push_header_tables - HeaderData (name -> value) and HeaderLines */
static void
push_header_tables(lua_State *L, const char *data, uint64_t len)
{
    const char *p = data, *end = data + (len < 65536 ? len : 65536);
    int n = 0;

    lua_newtable(L);                         /* HeaderData */
    lua_newtable(L);                         /* HeaderLines */
    while (p < end) {
        const char *start = p, *colon, *v, *ve;

        if (end - p >= 2 && p[0] == '\r' && p[1] == '\n')
            break;
        p = header_line_end(p, end);
        ve = p;
        while (ve > start && (ve[-1] == '\r' || ve[-1] == '\n'))
            ve--;
        lua_pushlstring(L, start, (size_t)(ve - start));
        lua_rawseti(L, -2, ++n);
        colon = memchr(start, ':', (size_t)(ve - start));
        if (colon == NULL)
            continue;
        v = colon + 1;
        while (v < ve && (*v == ' ' || *v == '\t'))
            v++;
        lua_pushlstring(L, start,
                        (size_t)(header_name_end(start, colon) - start));
        lua_pushlstring(L, v, (size_t)(ve - v));
        lua_rawset(L, -4);
    }
}


/*
 * policy_relay_check - run every CheckFile (VPOP3 relay control) for m:
 * 1 with the decision, 0 when no script has one or it failed (the message
 * is sent as usual; the paniclog says why).
 */
int
policy_relay_check(struct policy_engine *pe, const struct policy_relay_msg *m,
                   int *skip, unsigned *priority, char *reason,
                   size_t reason_len)
{
    struct policy_master *m0;
    lua_State *L;
    unsigned i;
    int any = 0;

    *skip = 0;
    *priority = 0;
    if (reason_len > 0)
        reason[0] = '\0';
    if (pe == NULL || (m0 = pe->current) == NULL || m0->oom ||
        !(m0->methods & POLICY_M_CHECKFILE))
        return 0;
    L = m0->L;
    for (i = 0; i < m0->mod_count; i++) {
        struct policy_module *mod = &m0->mods[i];
        char when[32];
        struct tm tm;
        time_t t = (time_t)m->created_unix;
        int base = lua_gettop(L), rc, k;
        const char *e;

        if (!(mod->methods & POLICY_M_CHECKFILE))
            continue;
        m0->in_c = 1;                /* the arguments: see policy_panic */
        lua_rawgeti(L, LUA_REGISTRYINDEX, mod->ref);
        lua_pushliteral(L, "CheckFile");
        lua_rawget(L, -2);
        lua_insert(L, -2);                              /* fn, self */
        lua_pushstring(L, m->id);                       /* Filename */
        lua_createtable(L, 0, 3);                       /* Actions */
        lua_pushboolean(L, 0);
        lua_setfield(L, -2, "SkipSend");
        lua_pushinteger(L, *priority ? (lua_Integer)*priority : 50);
        lua_setfield(L, -2, "Priority");
        lua_pushstring(L, "");
        lua_setfield(L, -2, "Reason");
        lua_pushvalue(L, -1);
        lua_insert(L, base + 1);                        /* keep Actions */
        lua_pushnumber(L, (lua_Number)m->data_bytes);   /* Size */
        localtime_r(&t, &tm);
        strftime(when, sizeof when, "%Y%m%d%H%M%S", &tm);
        lua_pushstring(L, when);                        /* CreationTime */
        lua_pushstring(L, m->return_path);              /* ReturnPath */
        lua_createtable(L, (int)m->rcpt_count, 0);      /* Recipients */
        for (k = 0; k < (int)m->rcpt_count; k++) {
            lua_pushstring(L, m->rcpts[k]);
            lua_rawseti(L, -2, k + 1);
        }
        push_header_tables(L, m->data, m->data_bytes);  /* Data, Lines */
        m0->in_c = 0;
        rc = policy_pcall(m0, 9, 1, &e);
        m0->in_c = 1;
        if (rc != 0) {
            policy_paniclog("%s: CheckFile error: %s", mod->name, e);
            lua_settop(L, base);
            m0->in_c = 0;
            continue;
        }
        /* The returned Actions, or the one passed in when it returned
         * something else (VPOP3 scripts return the parameter). */
        /* raw gets: the table is the script's, metamethods and all */
        if (!lua_istable(L, -1)) {
            lua_pop(L, 1);
            lua_pushvalue(L, base + 1);
        }
        lua_pushliteral(L, "SkipSend");
        lua_rawget(L, -2);
        *skip = lua_isnumber(L, -1) ? lua_tonumber(L, -1) != 0
                                    : lua_toboolean(L, -1);
        lua_pop(L, 1);
        lua_pushliteral(L, "Priority");
        lua_rawget(L, -2);
        if (lua_isnumber(L, -1)) {
            lua_Number pr = lua_tonumber(L, -1);

            *priority = pr < 1 ? 1 : pr > 100 ? 100 : (unsigned)pr;
        }
        lua_pop(L, 1);
        lua_pushliteral(L, "Reason");
        lua_rawget(L, -2);
        if (lua_isstring(L, -1) && reason_len > 0)
            snprintf(reason, reason_len, "%s", lua_tostring(L, -1));
        lua_settop(L, base);
        m0->in_c = 0;
        any = 1;
        if (*skip)
            break;
    }
    return any;
}
