-- relay_control.lua - VPOP3-style relay control (relayout.lua)
--
-- Before each delivery attempt ringmail calls CheckFile once per message,
-- with VPOP3's arguments:
--
--   CheckFile(filename, actions, size, createtime, returnpath, recipients,
--             headerdata, headerlines)
--
--   filename     the message id (ringmail has no file per message)
--   actions      { SkipSend = false, Priority = 50, Reason = "" }
--   size         the message size in bytes
--   createtime   when it was received, "YYYYMMDDHHMMSS" (local time)
--   returnpath   the envelope sender
--   recipients   array of the envelope recipients
--   headerdata   headerdata["Subject"] = the Subject, etc.
--   headerlines  the raw header lines, in order
--
-- and expects the actions table back. SkipSend = true holds the message
-- until its next retry time (the hold counts toward its expiry) and logs
-- Reason; Priority 1..100 orders the ready queue (100 first, 1 last,
-- default 50) without starving the low ones.
--
-- This one is VPOP3's documented example, with a reason: messages over
-- 10,000,000 bytes wait for the evening (they are not sent from 08:00 to
-- 18:59, VPOP3's `hour > 7 and hour < 19`, local time), and messages over
-- 5,000,000 bytes go last.
--
-- Like any policy script it runs in the sandbox: os.date and os.time are
-- there, io and os.execute are not. CheckFile is a global, as in VPOP3;
-- ringmail registers it as a module of its own named "CheckFile".

local HOLD_BYTES = 10000000      -- held during the day above this
local LAST_BYTES = 5000000       -- sent last above this
local DAY_FROM, DAY_TO = 7, 19   -- "the day": hours strictly between

function CheckFile(filename, actions, size, createtime, mailfrom, recipients,
                   headerdata, headerlines)
  local time = os.date("*t");

  if size > HOLD_BYTES and (time.hour > DAY_FROM and time.hour < DAY_TO) then
    actions["SkipSend"] = true;
    actions["Reason"] = string.format(
      "%d bytes: big messages wait until %02d:00", size, DAY_TO);
  end;

  if size > LAST_BYTES then
    actions["Priority"] = 1;
  end;

  return actions;
end;
