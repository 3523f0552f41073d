-- msys.boot - ringmail's boot script, loaded first as in Momentum.
--
-- Momentum's boot module sets up console commands and helpers. ringmail's
-- console is its own (ringctl); this file exists so configurations that
-- name script "boot" { source = "msys.boot" } load unchanged. It registers
-- no module: it only makes the msys helper modules reachable by require.
require("msys.core")
