/*
 * lualib_codec - msys.base64 and msys.qp: MIME transfer encodings (RFC 2045)
 *
 * SYNOPSIS
 *   void lualib_codec_open(lua_State *L);
 *   Lua: s = msys.base64.encode(original[, fold[, charset]])
 *        s = msys.base64.decode(encoded[, charset])
 *        s = msys.qp.encode(original[, charset[, dotstuffing]])
 *        s = msys.qp.decode(encoded[, charset])
 * DESCRIPTION
 *   base64.encode() encodes the bytes of original (RFC 4648 alphabet, with
 *   padding). When fold is true (any Lua true value) a CRLF follows every
 *   76 output characters, though never at the very end.
 *
 *   base64.decode() skips white space (space, tab, CR, LF) and accepts
 *   input with or without the final padding; any other character, data
 *   after the padding, or a lone trailing character is an error.
 *
 *   qp.encode() writes quoted-printable: bytes 33..126 except '=' as they
 *   are, others as =XX (upper-case hex), space and tab literal except
 *   before a line break or the end. A line break in the input (CRLF or a
 *   bare LF) becomes CRLF; a bare CR is encoded as =0D. Output lines are
 *   cut with a soft break ("=" CRLF) to at most 76 characters. With
 *   dotstuffing true, a '.' that starts an output line is doubled, ready
 *   for an SMTP DATA stream.
 *
 *   qp.decode() turns =XX (either case) into the byte, removes soft line
 *   breaks ("=" plus optional blanks plus CRLF or LF) and the blanks at
 *   the end of each line; '=' followed by anything else is an error.
 *
 *   charset, when given and not UTF-8, converts the text with iconv(3):
 *   from UTF-8 to charset before encoding, from charset to UTF-8 after
 *   decoding. Text that does not convert is an error.
 * OWNERSHIP
 *   Output is built in a luaL_Buffer. The iconv descriptor lives in a
 *   userdata whose __gc closes it, so a Lua error (out of memory) during a
 *   conversion does not leak it.
 * THREADS
 *   Stateless; any state, any thread.
 * ERRORS
 *   "msys.base64.decode: invalid input at offset N", "msys.qp.decode:
 *   invalid escape at offset N", "...: unknown charset X", "...: text does
 *   not convert to/from X"; argument type errors from luaL_check*.
 * SECURITY
 *   Input is untrusted message text; every loop is bounded by its length
 *   and output is at most 4/3 (base64) or 3x plus breaks (qp) of it.
 * SEE ALSO
 *   lualib.h, docs/lua-library.md, RFC 2045 6.7 and 6.8
 */
#include "lualib.h"

#include <errno.h>
#include <iconv.h>
#include <string.h>
#include <strings.h>

#define CODEC_B64_LINE 76
#define CODEC_QP_LINE 76
#define CODEC_ICONV_META "ringmail.codec.iconv"

static const char codec_b64[] =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
static const char codec_hex[] = "0123456789ABCDEF";

struct codec_iconv {
    iconv_t cd;
};


/* codec_iconv_gc - __gc: close the descriptor if still open */
static int
codec_iconv_gc(lua_State *L)
{
    struct codec_iconv *ic = luaL_checkudata(L, 1, CODEC_ICONV_META);

    if (ic->cd != (iconv_t)-1)
        iconv_close(ic->cd);
    ic->cd = (iconv_t)-1;
    return 0;
}


/* codec_is_utf8 - true for a missing charset or a spelling of UTF-8 */
static int
codec_is_utf8(const char *cs)
{
    return cs == NULL || strcasecmp(cs, "utf-8") == 0 ||
           strcasecmp(cs, "utf8") == 0;
}


/*
 * codec_convert - replace the string at index idx by its conversion from
 * charset `from` to `to`; fn names the caller in error messages.
 */
static void
codec_convert(lua_State *L, int idx, const char *fn, const char *to,
              const char *from, const char *cs)
{
    struct codec_iconv *ic;
    luaL_Buffer b;
    char out[1024];
    char *in, *op;
    size_t in_len, out_left;
    const char *src;
    int bad = 0;

    if (idx < 0)
        idx = lua_gettop(L) + idx + 1;
    src = lua_tolstring(L, idx, &in_len);
    ic = lua_newuserdata(L, sizeof(*ic));
    ic->cd = (iconv_t)-1;
    luaL_getmetatable(L, CODEC_ICONV_META);
    lua_setmetatable(L, -2);
    ic->cd = iconv_open(to, from);
    if (ic->cd == (iconv_t)-1)
        luaL_error(L, "msys.%s: unknown charset %s", fn, cs);

    in = (char *)src;
    luaL_buffinit(L, &b);
    while (in_len > 0) {
        op = out;
        out_left = sizeof(out);
        if (iconv(ic->cd, &in, &in_len, &op, &out_left) == (size_t)-1 &&
            errno != E2BIG)
            bad = 1;
        luaL_addlstring(&b, out, sizeof(out) - out_left);
        if (bad)
            break;
    }
    if (!bad) {
        /* Return to the initial shift state (ISO-2022-JP and the like). */
        op = out;
        out_left = sizeof(out);
        (void)iconv(ic->cd, NULL, NULL, &op, &out_left);
        luaL_addlstring(&b, out, sizeof(out) - out_left);
    }
    iconv_close(ic->cd);
    ic->cd = (iconv_t)-1;
    if (bad)
        luaL_error(L, "msys.%s: text does not convert %s %s", fn,
                   codec_is_utf8(to) ? "from" : "to", cs);
    luaL_pushresult(&b);
    lua_replace(L, idx);
    lua_pop(L, 1);   /* the descriptor box */
}


/* codec_b64_encode - msys.base64.encode(original, fold, charset) */
static int
codec_b64_encode(lua_State *L)
{
    const unsigned char *s;
    size_t len, i, col = 0;
    int fold = lua_toboolean(L, 2);
    const char *cs = luaL_optstring(L, 3, NULL);
    luaL_Buffer b;

    luaL_checkstring(L, 1);
    lua_settop(L, 3);
    if (!codec_is_utf8(cs))
        codec_convert(L, 1, "base64.encode", cs, "UTF-8", cs);
    s = (const unsigned char *)lua_tolstring(L, 1, &len);

    luaL_buffinit(L, &b);
    for (i = 0; i < len; i += 3) {
        unsigned v = (unsigned)s[i] << 16;
        char q[4];

        if (i + 1 < len)
            v |= (unsigned)s[i + 1] << 8;
        if (i + 2 < len)
            v |= s[i + 2];
        q[0] = codec_b64[(v >> 18) & 63];
        q[1] = codec_b64[(v >> 12) & 63];
        q[2] = i + 1 < len ? codec_b64[(v >> 6) & 63] : '=';
        q[3] = i + 2 < len ? codec_b64[v & 63] : '=';
        if (fold && col == CODEC_B64_LINE) {
            luaL_addlstring(&b, "\r\n", 2);
            col = 0;
        }
        luaL_addlstring(&b, q, 4);
        col += 4;
    }
    luaL_pushresult(&b);
    return 1;
}


/* codec_b64_value - the 6-bit value of c, or -1 */
static int
codec_b64_value(unsigned char c)
{
    if (c >= 'A' && c <= 'Z')
        return c - 'A';
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 26;
    if (c >= '0' && c <= '9')
        return c - '0' + 52;
    if (c == '+')
        return 62;
    if (c == '/')
        return 63;
    return -1;
}


/* codec_b64_decode - msys.base64.decode(encoded, charset) */
static int
codec_b64_decode(lua_State *L)
{
    const unsigned char *s;
    size_t len, i;
    const char *cs = luaL_optstring(L, 2, NULL);
    unsigned acc = 0;
    int n = 0, pad = 0, v;
    luaL_Buffer b;

    s = (const unsigned char *)luaL_checklstring(L, 1, &len);
    lua_settop(L, 2);
    luaL_buffinit(L, &b);
    for (i = 0; i < len; i++) {
        unsigned char c = s[i];

        if (c == ' ' || c == '\t' || c == '\r' || c == '\n')
            continue;
        if (c == '=') {
            /* Padding only after 2 or 3 symbols of a quantum. */
            if (n < 2 || n + pad >= 4)
                goto bad;
            pad++;
            continue;
        }
        v = codec_b64_value(c);
        if (v < 0 || pad > 0)
            goto bad;
        acc = (acc << 6) | (unsigned)v;
        if (++n == 4) {
            char out[3] = {(char)(acc >> 16), (char)(acc >> 8), (char)acc};

            luaL_addlstring(&b, out, 3);
            n = 0;
            acc = 0;
        }
    }
    if (n == 1)
        goto bad;
    if (pad > 0 && n + pad != 4)
        goto bad;
    if (n == 2) {
        luaL_addchar(&b, (char)(acc >> 4));
    } else if (n == 3) {
        luaL_addchar(&b, (char)(acc >> 10));
        luaL_addchar(&b, (char)(acc >> 2));
    }
    luaL_pushresult(&b);
    if (!codec_is_utf8(cs))
        codec_convert(L, -1, "base64.decode", "UTF-8", cs, cs);
    return 1;

bad:
    return luaL_error(L, "msys.base64.decode: invalid input at offset %d",
                      (int)(i < len ? i : len));
}


/* codec_qp_put - add one encoded token, cutting the line first if needed */
static void
codec_qp_put(luaL_Buffer *b, size_t *col, const char *tok, size_t n,
             int dotstuff)
{
    /* Keep room for the '=' of a soft break: 75 + "=" = 76. */
    if (*col + n > CODEC_QP_LINE - 1) {
        luaL_addlstring(b, "=\r\n", 3);
        *col = 0;
    }
    if (dotstuff && *col == 0 && tok[0] == '.')
        luaL_addchar(b, '.');
    luaL_addlstring(b, tok, n);
    *col += n;
}


/* codec_qp_encode - msys.qp.encode(original, charset, dotstuffing) */
static int
codec_qp_encode(lua_State *L)
{
    const unsigned char *s;
    size_t len, i, col = 0;
    const char *cs = luaL_optstring(L, 2, NULL);
    int dotstuff = lua_toboolean(L, 3);
    luaL_Buffer b;

    luaL_checkstring(L, 1);
    lua_settop(L, 3);
    if (!codec_is_utf8(cs))
        codec_convert(L, 1, "qp.encode", cs, "UTF-8", cs);
    s = (const unsigned char *)lua_tolstring(L, 1, &len);

    luaL_buffinit(L, &b);
    for (i = 0; i < len; i++) {
        unsigned char c = s[i];
        char tok[3];
        int at_eol;

        if (c == '\n' || (c == '\r' && i + 1 < len && s[i + 1] == '\n')) {
            luaL_addlstring(&b, "\r\n", 2);
            col = 0;
            if (c == '\r')
                i++;
            continue;
        }
        at_eol = i + 1 == len || s[i + 1] == '\n' ||
                 (s[i + 1] == '\r' && i + 2 < len && s[i + 2] == '\n');
        if ((c >= 33 && c <= 126 && c != '=') ||
            ((c == ' ' || c == '\t') && !at_eol)) {
            tok[0] = (char)c;
            codec_qp_put(&b, &col, tok, 1, dotstuff);
        } else {
            tok[0] = '=';
            tok[1] = codec_hex[c >> 4];
            tok[2] = codec_hex[c & 15];
            codec_qp_put(&b, &col, tok, 3, dotstuff);
        }
    }
    luaL_pushresult(&b);
    return 1;
}


/* codec_hexval - value of a hex digit (either case), or -1 */
static int
codec_hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}


/* codec_qp_decode - msys.qp.decode(encoded, charset) */
static int
codec_qp_decode(lua_State *L)
{
    const unsigned char *s;
    size_t len, i, j, blanks = 0;
    const char *cs = luaL_optstring(L, 2, NULL);
    luaL_Buffer b;

    s = (const unsigned char *)luaL_checklstring(L, 1, &len);
    lua_settop(L, 2);
    luaL_buffinit(L, &b);
    for (i = 0; i < len; i++) {
        unsigned char c = s[i];

        if (c == ' ' || c == '\t') {
            /* Held back: blanks at the end of a line are dropped. */
            blanks++;
            continue;
        }
        if (c == '\n' || (c == '\r' && i + 1 < len && s[i + 1] == '\n')) {
            blanks = 0;
            if (c == '\r') {
                luaL_addchar(&b, '\r');
                i++;
            }
            luaL_addchar(&b, '\n');
            continue;
        }
        for (; blanks > 0; blanks--)
            luaL_addchar(&b, (char)s[i - blanks]);
        if (c != '=') {
            luaL_addchar(&b, (char)c);
            continue;
        }
        if (i + 2 < len && codec_hexval(s[i + 1]) >= 0 &&
            codec_hexval(s[i + 2]) >= 0) {
            luaL_addchar(&b, (char)(codec_hexval(s[i + 1]) * 16 +
                                    codec_hexval(s[i + 2])));
            i += 2;
            continue;
        }
        /* Soft line break: '=', optional blanks, then CRLF, LF or end. */
        for (j = i + 1; j < len && (s[j] == ' ' || s[j] == '\t'); j++)
            ;
        if (j == len) {
            i = j;
            continue;
        }
        if (s[j] == '\n') {
            i = j;
            continue;
        }
        if (s[j] == '\r' && j + 1 < len && s[j + 1] == '\n') {
            i = j + 1;
            continue;
        }
        return luaL_error(L, "msys.qp.decode: invalid escape at offset %d",
                          (int)i);
    }
    luaL_pushresult(&b);
    if (!codec_is_utf8(cs))
        codec_convert(L, -1, "qp.decode", "UTF-8", cs, cs);
    return 1;
}


/* lualib_codec_open - register msys.base64 and msys.qp */
void
lualib_codec_open(lua_State *L)
{
    int top = lua_gettop(L);

    if (luaL_newmetatable(L, CODEC_ICONV_META)) {
        lua_pushcfunction(L, codec_iconv_gc);
        lua_setfield(L, -2, "__gc");
    }
    lualib_msys_table(L);
    lualib_subtable(L, -1, "base64");
    lualib_provide(L, -1, "msys.base64");
    lua_pushcfunction(L, codec_b64_encode);
    lua_setfield(L, -2, "encode");
    lua_pushcfunction(L, codec_b64_decode);
    lua_setfield(L, -2, "decode");
    lua_pop(L, 1);
    lualib_subtable(L, -1, "qp");
    lualib_provide(L, -1, "msys.qp");
    lua_pushcfunction(L, codec_qp_encode);
    lua_setfield(L, -2, "encode");
    lua_pushcfunction(L, codec_qp_decode);
    lua_setfield(L, -2, "decode");
    lua_settop(L, top);
}
