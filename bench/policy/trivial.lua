-- bench/policy/trivial.lua: five callouts that do nothing but return,
-- one per SMTP phase of a one-message session: the cost of the callout
-- machinery itself (borrow a coroutine, push the arguments, resume, check
-- the return value).
local mod = {}
function mod:validate_connect(accept, vctx) return msys.core.VALIDATE_CONT end
function mod:validate_ehlo(str, accept, vctx) return msys.core.VALIDATE_CONT end
function mod:validate_mailfrom(str, accept, vctx) return msys.core.VALIDATE_CONT end
function mod:validate_rcptto(msg, str, accept, vctx) return msys.core.VALIDATE_CONT end
function mod:validate_data(msg, accept, vctx) return msys.core.VALIDATE_CONT end
msys.registerModule("trivial", mod)
