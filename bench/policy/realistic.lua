-- bench/policy/realistic.lua: what a sending MTA's policy typically does
-- per message. Reject senders and recipients matching patterns, keep
-- per-connection state in the validation context, tag the message with
-- headers (one added, one read), choose a binding and a priority by
-- recipient domain, log nothing on the fast path.
local mod = {}

local blocked_senders = { "^spam", "@blocked%.test$", "^bounce%-" }
local blocked_rcpts = { "^abuse@", "^postmaster@blocked", "@nxdomain%.test$" }
local vip_domains = { ["vip.test"] = true, ["priority.test"] = true }

local function matches(s, list)
  for i = 1, #list do
    if s:find(list[i]) then return true end
  end
  return false
end

function mod:validate_connect(accept, vctx)
  vctx:set(msys.core.VCTX_CONN, "peer", accept.remote_ip)
  return msys.core.VALIDATE_CONT
end

function mod:validate_mailfrom(str, accept, vctx)
  if matches(str:lower(), blocked_senders) then
    vctx:set_code(550, "5.7.1 sender refused by policy")
    return msys.core.VALIDATE_DONE
  end
  return msys.core.VALIDATE_CONT
end

function mod:validate_rcptto(msg, str, accept, vctx)
  if matches(str:lower(), blocked_rcpts) then
    vctx:set_code(550, "5.7.1 recipient refused by policy")
  end
  return msys.core.VALIDATE_CONT
end

function mod:validate_data(msg, accept, vctx)
  local subject = msg:header("Subject")[1] or ""
  if subject:find("%[SPAM%]") then
    vctx:set_code(550, "5.7.1 content refused by policy")
    return msys.core.VALIDATE_DONE
  end
  msg:header("X-Policy", "checked; peer=" ..
             msys.expandMacro("%{vctx_conn:peer}"))
  return msys.core.VALIDATE_CONT
end

function mod:validate_set_binding(msg)
  local rcpt = msg:rcptto() or ""
  local domain = rcpt:match("@(.+)$") or ""
  if vip_domains[domain] then msg.priority = 1 end
  return msys.core.VALIDATE_CONT
end

msys.registerModule("realistic", mod)
