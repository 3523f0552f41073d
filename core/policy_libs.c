/*
 * policy_libs - the msys library modules a policy state gets beyond the
 *               core API: PCRE, codecs, dumper, JSON, addresses, CIDR,
 *               gauges (lualib.h). One place, so policy_api.c need not
 *               know which are linked.
 */
#include "policy_int.h"


void
policy_libs_open(lua_State *L)
{
    lualib_db_open(L);
}
