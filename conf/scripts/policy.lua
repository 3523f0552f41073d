-- policy.lua - a receiving policy in Momentum's scriptlet style
--
--   MAIL FROM   refuse senders matching a pattern (550 5.7.1)
--   RCPT TO     refuse recipients matching a pattern (550 5.7.1)
--   DATA        tag messages by their headers: X-Policy-Tag
--   binding     route by recipient domain: an egress binding, or another
--               routing domain (the domain whose MX and Domain options
--               the delivery uses)
--
-- The lists below are the whole configuration. Patterns are PCRE
-- (msys.pcre.match, case-insensitive through (?i)), matched against the
-- address or header value. Compiled patterns are cached per state.
--
-- Tables built here are per shard and read-only once loaded: every shard
-- loads this file into its own Lua state.

require("msys.core");
require("msys.pcre");

local mod = {};

-- Senders refused at MAIL FROM.
local reject_senders = {
  [[(?i)^spam[\w.-]*@]],         -- spam@..., spammer@..., spam.list@...
  [[(?i)@[\w.-]*\.invalid$]],    -- any domain under .invalid
  [[(?i)^bounce-storm@]],
};

-- Recipients refused at RCPT TO.
local reject_recipients = {
  [[(?i)^noreply@]],
  [[(?i)^do-not-reply@]],
  [[(?i)@blackhole\.example$]],
};

-- Tags: a header whose value matches gets its tag in X-Policy-Tag.
local tags = {
  { header = "Precedence", pattern = [[(?i)^bulk$]],      tag = "bulk" },
  { header = "Precedence", pattern = [[(?i)^list$]],      tag = "list" },
  { header = "Subject",    pattern = [[(?i)newsletter]],  tag = "newsletter" },
  { header = "List-Id",    pattern = [[.]],               tag = "list" },
};

-- Routes by recipient domain: a binding (it must be declared in the
-- configuration: msg:binding raises for an unknown one), or another
-- routing domain.
local routes = {
  ["bulk.example"]   = { binding = "bulk" },
  ["legacy.example"] = { routing_domain = "relay.example" },
};


local function first_match(subject, patterns)
  subject = subject or "";
  for _, p in ipairs(patterns) do
    if msys.pcre.match(subject, p) then
      return p;
    end
  end
  return nil;
end


function mod:validate_mailfrom(str, accept, vctx)
  local p = first_match(str, reject_senders);

  if p then
    print("policy: sender", str, "from", accept.remote_ip,
          "refused by", p);
    vctx:set_code(550, "5.7.1 Sender <" .. str .. "> refused by policy");
    return msys.core.VALIDATE_DONE;
  end
  return msys.core.VALIDATE_CONT;
end


function mod:validate_rcptto(msg, str, accept, vctx)
  local p = first_match(str, reject_recipients);

  if p then
    print("policy: recipient", str, "refused by", p);
    vctx:set_code(550, "5.7.1 Recipient <" .. str .. "> refused by policy");
    return msys.core.VALIDATE_DONE;
  end
  return msys.core.VALIDATE_CONT;
end


function mod:validate_data(msg, accept, vctx)
  local found, seen = {}, {};

  for _, rule in ipairs(tags) do
    for _, value in ipairs(msg:header(rule.header)) do
      if not seen[rule.tag] and msys.pcre.match(value, rule.pattern) then
        seen[rule.tag] = true;
        found[#found + 1] = rule.tag;
      end
    end
  end
  if #found > 0 then
    local tag = table.concat(found, " ");

    msg:header("X-Policy-Tag", tag);
    -- Later phases (and other modules) read it back from the context.
    msg:context_set(msys.core.ECMESS_CTX_MESS, "policy_tag", tag);
  end
  return msys.core.VALIDATE_CONT;
end


function mod:validate_set_binding(msg)
  local rcpt = msg:rcptto() or "";
  local domain = string.lower(string.match(rcpt, "@([^@]+)$") or "");
  local route = routes[domain];

  if route == nil then
    return msys.core.VALIDATE_CONT;
  end
  if route.binding then
    local ok, err = pcall(msg.binding, msg, route.binding);

    if ok then
      print("policy: message", msg.id, "for", domain, "uses binding",
            route.binding);
    else
      print("policy: message", msg.id, "keeps its binding:", err);
    end
  end
  if route.routing_domain then
    msg:routing_domain(route.routing_domain);
    print("policy: message", msg.id, "for", domain, "routed via",
          route.routing_domain);
  end
  return msys.core.VALIDATE_CONT;
end

msys.registerModule("policy", mod);
