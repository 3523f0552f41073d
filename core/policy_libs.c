/*
 * policy_libs - the msys library modules a policy state gets beyond the
 *               core API: PCRE, codecs, dumper, JSON, addresses, CIDR,
 *               gauges (lualib.h). One place, so policy_api.c need not
 *               know which are linked.
 */
#include "lualib.h"
#include "policy_int.h"


void
policy_libs_open(lua_State *L)
{
    lualib_pcre_open(L);
    lualib_codec_open(L);
    lualib_dumper_open(L);
    lualib_json_open(L);
    lualib_addr_open(L);
    lualib_cidr_open(L);
    lualib_gauge_open(L);
    lualib_db_open(L);
}
