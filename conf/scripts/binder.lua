require("msys.core");
require("msys.extended.message");

local mod = {};

function mod:validate_set_binding(msg)
  print("mod:validate_set_binding: Setting msg priority to 1");
  msg.priority = 1;
  return msys.core.VALIDATE_CONT;

end

msys.registerModule("binder", mod);
