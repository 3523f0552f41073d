/*
 * lualib_fuzz - libFuzzer target for the msys Lua library parsers
 *
 * The first input byte picks the function and option, the rest is its
 * argument: msys.parseRFC2822Addresses (each component), base64 and qp
 * decode plus encode/decode round trips, json.decode (then Dumper and
 * encode of what came back), msys.pcre match/replace/split with a pattern
 * and subject cut from the input, msys.cidr define/query, Dumper of the
 * input as a string, and gauge keys.
 *
 * Checked: nothing crashes; each function either returns or raises only
 * the errors its contract names (a decoder's "invalid input", a pattern's
 * "match limit exceeded", ...); round trips give back their input;
 * Dumper's text loads back to the same string; addresses with component
 * "all" contain an '@'. A broken check aborts with its message.
 *
 * Built with clang -fsanitize=fuzzer (see tests/fuzz/meson.build); in the
 * ordinary build replay.c runs the corpus through the same function.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "lualib.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* The driver: fz(selector, payload). check() failures are real bugs. */
static const char fuzz_driver[] =
    "local function check(ok, what) if not ok then\n"
    "  error('INVARIANT: ' .. what, 0) end end\n"
    /* expect(patterns, f, ...): f(...) returns, or raises one of them */
    "local function expect(pats, f, ...)\n"
    "  local ok, err = pcall(f, ...)\n"
    "  if ok then return end\n"
    "  err = tostring(err)\n"
    "  for _, p in ipairs(pats) do\n"
    "    if err:find(p, 1, true) then return end\n"
    "  end\n"
    "  check(false, 'unexpected error: ' .. err)\n"
    "end\n"
    "local comps = {'all', 'localpart', 'user', 'detail', 'domain'}\n"
    "msys.cidr.define('fz', {type = 'static', entries = {\n"
    "  ['10.0.0.0/8'] = 'a', ['2001:db8::/32'] = 'b', ['0.0.0.0/0'] = 'c'}})\n"
    "msys.gauge_cache.define('fz', 16, 60)\n"
    "return function(sel, s)\n"
    "  local k = sel % 8\n"
    "  if k == 0 then\n"
    "    local comp = comps[(math.floor(sel / 8) % 5) + 1]\n"
    "    local t = msys.parseRFC2822Addresses(s, comp)\n"
    "    check(#t <= #s, 'more addresses than bytes')\n"
    "    for _, a in ipairs(t) do\n"
    "      check(type(a) == 'string', 'non-string address')\n"
    "      if comp == 'all' then check(a:find('@', 1, true), 'no @') end\n"
    "    end\n"
    "  elseif k == 1 then\n"
    "    expect({'invalid input'}, msys.base64.decode, s)\n"
    "    check(msys.base64.decode(msys.base64.encode(s)) == s, 'b64 trip')\n"
    "    check(msys.base64.decode(msys.base64.encode(s, true)) == s,\n"
    "      'b64 folded trip')\n"
    "  elseif k == 2 then\n"
    "    expect({'invalid escape'}, msys.qp.decode, s)\n"
    "    if not s:find('[\\r\\n]') then\n"
    "      check(msys.qp.decode(msys.qp.encode(s)) == s, 'qp trip')\n"
    "    end\n"
    "    local d = msys.qp.encode(s, nil, true)\n"
    "    for line in d:gmatch('[^\\r\\n]+') do\n"
    "      check(#line <= 77, 'qp line too long')\n"
    "    end\n"
    "  elseif k == 3 then\n"
    "    local ok, v, code, msg = pcall(json.decode, s)\n"
    "    check(ok, 'json.decode raised: ' .. tostring(v))\n"
    "    if v == nil then\n"
    "      check(type(code) == 'number' and code >= 2 and code <= 13,\n"
    "        'bad json error code')\n"
    "      check(type(msg) == 'string', 'no json message')\n"
    "    else\n"
    "      local text = msys.dumper.Dumper(v)\n"
    "      check(loadstring(text) ~= nil or text:find('--[[', 1, true),\n"
    "        'Dumper text does not load')\n"
    "      expect({'Cannot serialise'}, json.encode, v)\n"
    "    end\n"
    "  elseif k == 4 then\n"
    "    local cut = s:find('\\0', 1, true) or math.floor(#s / 2) + 1\n"
    "    local pat, subj = s:sub(1, cut - 1), s:sub(cut + 1)\n"
    "    local errs = {'match limit', 'match failed', 'longer than'}\n"
    "    expect(errs, msys.pcre.match, subj, pat)\n"
    "    errs[#errs + 1] = 'invalid pattern'\n"
    "    expect(errs, msys.pcre.replace, subj, pat, subj)\n"
    "    expect(errs, msys.pcre.split, subj, pat)\n"
    "  elseif k == 5 then\n"
    "    local v = msys.cidr.query('fz', s)\n"
    "    check(v == nil or v == 'a' or v == 'b' or v == 'c', 'cidr value')\n"
    "    expect({'bad prefix'}, msys.cidr.define, 'fz2', {type = 'static',\n"
    "      entries = {[s] = 1}})\n"
    "  elseif k == 6 then\n"
    "    local f = loadstring(msys.dumper.Dumper(s))\n"
    "    check(f and f() == s, 'Dumper string trip')\n"
    "    f = loadstring(msys.dumper.Dumper({[s] = s, s}))\n"
    "    local t = f and f()\n"
    "    check(t and t[1] == s and t[s] == s, 'Dumper table trip')\n"
    "  else\n"
    "    local n = msys.gauge_cache.inc('fz', s)\n"
    "    check(msys.gauge_cache.get('fz', s) == n, 'gauge get')\n"
    "    msys.gauge_cache.dec('fz', s)\n"
    "  end\n"
    "end\n";

static lua_State *fuzz_L;


/* fuzz_open - every opener, under protection */
static int
fuzz_open(lua_State *L)
{
    luaL_openlibs(L);
    lualib_pcre_open(L);
    lualib_codec_open(L);
    lualib_dumper_open(L);
    lualib_json_open(L);
    lualib_addr_open(L);
    lualib_cidr_open(L);
    lualib_gauge_open(L);
    return 0;
}


/* fuzz_fini - close the state at exit, so leak checkers see a clean end */
static void
fuzz_fini(void)
{
    if (fuzz_L != NULL)
        lua_close(fuzz_L);
    fuzz_L = NULL;
}


/* fuzz_alloc - lua_Alloc on malloc, so that AddressSanitizer watches
   the Lua heap too: LuaJIT's own allocator works in mmap'd memory that
   it does not instrument. */
static void *
fuzz_alloc(void *ud, void *ptr, size_t osize, size_t nsize)
{
    if (nsize == 0) {
        free(ptr);
        return NULL;
    }
    return realloc(ptr, nsize);
}


/* fuzz_init - one state for the whole run, the driver in the registry */
static void
fuzz_init(void)
{
    fuzz_L = lua_newstate(fuzz_alloc, NULL);
    if (fuzz_L == NULL || lua_cpcall(fuzz_L, fuzz_open, NULL) != 0 ||
        luaL_loadstring(fuzz_L, fuzz_driver) != 0 ||
        lua_pcall(fuzz_L, 0, 1, 0) != 0) {
        fprintf(stderr, "lualib_fuzz: setup: %s\n",
                fuzz_L ? lua_tostring(fuzz_L, -1) : "no state");
        abort();
    }
    lua_setfield(fuzz_L, LUA_REGISTRYINDEX, "lualib_fuzz");
    atexit(fuzz_fini);
}


int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    lua_State *L;

    if (size < 1)
        return 0;
    if (fuzz_L == NULL)
        fuzz_init();
    L = fuzz_L;
    lua_getfield(L, LUA_REGISTRYINDEX, "lualib_fuzz");
    lua_pushinteger(L, data[0]);
    lua_pushlstring(L, (const char *)data + 1, size - 1);
    if (lua_pcall(L, 2, 0, 0) != 0) {
        fprintf(stderr, "lualib_fuzz: %s\n", lua_tostring(L, -1));
        abort();
    }
    lua_settop(L, 0);
    /* Keep memory flat over millions of inputs. */
    lua_gc(L, LUA_GCSTEP, 0);
    return 0;
}
