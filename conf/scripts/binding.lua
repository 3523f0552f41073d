-- conf/scripts/binding.lua - choose each message's binding from the
-- customer's record in Redis, as in Momentum's per-customer binding
-- examples.
--
-- A customer is a Redis hash: HSET customer:acme binding acme-pool
-- priority 1. The customer id comes from the message's X-Customer-ID
-- header, else from the sender's domain. A binding the configuration
-- does not know, a missing customer, or Redis unavailable leave the
-- message on the default binding: delivery goes on.
--
--   Datasource "redis" { uri = ( "redis://127.0.0.1:6379/0" )
--                        cache_life = 60 cache_size = 10000 }
--   Binding "acme-pool" { Bind_Address = "192.0.2.10" }
--   scriptlet "scriptlet" {
--     script "boot" { source = "msys.boot" }
--     script "binding" { source = "scripts.binding" }
--   }
local mod = {}

local DATASOURCE = "redis"

local function customer_id(msg)
  local id = msg:header("X-Customer-ID")[1]
  if id ~= nil and id ~= "" then
    return (id:gsub("^%s+", ""):gsub("%s+$", ""))
  end
  local from = msg:mailfrom() or ""
  return (from:match("@([^>]+)") or ""):lower()
end

function mod:validate_set_binding(msg)
  local id = customer_id(msg)
  if id == "" then
    return msys.core.VALIDATE_CONT
  end
  -- cached per shard for cache_life: bindings change rarely
  local row, err = msys.db.fetch_row(DATASOURCE, "HGETALL customer:?", { id })
  if row == nil then
    if err ~= nil then
      print("binding: customer " .. id .. ": " .. err)
    end
    return msys.core.VALIDATE_CONT
  end
  if row.binding ~= nil then
    local ok = pcall(msg.binding, msg, row.binding)
    if not ok then
      print("binding: customer " .. id .. ": no binding " .. row.binding)
    end
  end
  return msys.core.VALIDATE_CONT
end

msys.registerModule("binding", mod)
