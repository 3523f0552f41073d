-- conf/scripts/suppression.lua - refuse recipients on a suppression list
-- kept in Redis (a set; add with: SADD suppressed user@example.com).
--
-- Load it with, in ringmail.conf:
--   Datasource "redis" { uri = ( "redis://127.0.0.1:6379/0" ) }
--   scriptlet "scriptlet" {
--     script "boot" { source = "msys.boot" }
--     script "suppression" { source = "scripts.suppression" }
--   }
--
-- A suppressed recipient gets 550 5.7.1. While Redis cannot answer (down,
-- too slow: each lookup fails within the datasource's timeout, 200 ms by
-- default, and at once while its circuit is open), recipients get
-- 451 4.3.0 and the client retries later: nothing is sent to a suppressed
-- address by accident. To fail open instead (accept while Redis is
-- unavailable, for lists where a miss costs less than a delay), set
-- FAIL_OPEN = true below.
local mod = {}

local DATASOURCE = "redis"
local SET = "suppressed"
local FAIL_OPEN = false

local function address(str)
  -- "<User@Example.COM>" or "User@Example.COM" with ESMTP parameters
  local a = str:match("<([^>]*)>") or str:match("^%S+") or ""
  return a:lower()
end

function mod:validate_rcptto(msg, str, accept, vctx)
  local rcpt = address(str)
  local row, err = msys.db.fetch_row(DATASOURCE, "SISMEMBER " .. SET .. " ?",
                                     { rcpt })
  if row == nil and err ~= nil then
    if FAIL_OPEN then
      return msys.core.VALIDATE_CONT
    end
    vctx:set_code(451, "4.3.0 recipient check unavailable, try again later")
    return msys.core.VALIDATE_DONE
  end
  if row ~= nil and row[1] == 1 then
    vctx:set_code(550, "5.7.1 recipient is on the suppression list")
    return msys.core.VALIDATE_DONE
  end
  return msys.core.VALIDATE_CONT
end

msys.registerModule("suppression", mod)
