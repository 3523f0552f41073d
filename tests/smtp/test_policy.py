#!/usr/bin/env python3
"""
test_policy - Lua policy (Momentum scriptlets) seen from outside: each
callout at its phase with its arguments, the return codes, set_code and
disconnect at every phase, fail-closed errors (runtime errors, missing
return values, runaway loops, memory bombs), the sandbox, the message API
(headers in the spooled message, discard), msys.sleep and msys.dnsLookup
(against a real dnsmasq) not blocking the shard, SIGHUP reload (good,
broken, under load), `ringmaild -t`, and the examples of conf/scripts/
loaded unmodified.

Scripts are written into the daemon's directory (the default search
path) and observed through SMTP replies, the paniclog (print() writes
"<ts>:scriptlet: text") and the spool (ringspool). Tests that began as
expected failures naming a core bug say so in a comment: they are the
regression tests of those fixes.
"""

import os
import re
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

import harness as h

CONF_DIR = os.path.join(h.SRC, "conf")
DNSMASQ = "/usr/sbin/dnsmasq"
SCRIPT_RE = re.compile(r"^\d+:scriptlet: (.*)$", re.M)
FAIL_EARLY = (421, "4.3.0")     # connect, EHLO: and the connection closes
FAIL_LATE = (451, "4.3.0")      # MAIL, RCPT, DATA


def scriptlet_scope(names, options="", sources=None):
    """scriptlet "scriptlet" { options; script "n" { source = "n" } ... }"""
    out = ['scriptlet "scriptlet" {']
    if options:
        out.append(options)
    for n in names:
        src = (sources or {}).get(n, n)
        out.append('  script "%s" { source = "%s" }' % (n, src))
    out.append("}")
    return "\n".join(out) + "\n"


def module(name, body):
    """A script registering module `name` with the callouts in body."""
    return ('require("msys.core")\nlocal mod = {}\n%s\n'
            'msys.registerModule("%s", mod)\n' % (body, name))


def wait_until(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.1f s waiting for %s"
                                 % (timeout, what))
        time.sleep(0.05)


def header_block(body):
    """The header block of a spooled body (up to the blank line)."""
    return body.split(b"\r\n\r\n", 1)[0]


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


class PolicyTest(h.DaemonTest):

    def policy_daemon(self, scripts, options="", shards=1, extra="",
                      sources=None, start=True, **conf_opts):
        """
        A daemon whose directory holds scripts {name: text}, each loaded
        as script "name" { source = "name" } in this order (a dict keeps
        it); names without text come from elsewhere (sources).
        """
        names = list(scripts)
        text = h.conf(shards=shards,
                      extra=extra + scriptlet_scope(names, options, sources),
                      **conf_opts)
        d = self.start_daemon(text, start=False)
        for n, body in scripts.items():
            if body is not None:
                self.write_script(d, n, body)
        if start:
            d.start()
        return d

    def write_script(self, d, name, body):
        path = os.path.join(d.dir, name.replace(".", "/") + ".lua")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            f.write(body)
        os.rename(tmp, path)

    def printed(self, d):
        """What scripts printed (and the core said as 'scriptlet')."""
        return SCRIPT_RE.findall(d.paniclog())

    def wait_printed(self, d, pattern, timeout=None, count=1):
        rx = re.compile(pattern)

        def found():
            got = [l for l in self.printed(d) if rx.search(l)]
            return got if len(got) >= count else None
        return wait_until(found, timeout or h.t(10),
                          "paniclog line %r" % pattern)

    def session(self, d, ehlo=True):
        c = d.connect()
        self.addCleanup(c.close)
        self.assertReply(c.greeting(), 220)
        if ehlo:
            self.assertReply(c.ehlo(), 250)
        return c

    def assertFailClosed(self, r, early=False):
        code, enh = FAIL_EARLY if early else FAIL_LATE
        self.assertReply(r, code, enh)

    def assertNotSpooled(self, d, tok):
        self.assertTokens(d.spool(), absent=[tok])


# --- callouts: phases and arguments -----------------------------------------

PHASES_SCRIPT = r'''
require("msys.core")
local mod = {}
local C, M = msys.core.VCTX_CONN, msys.core.VCTX_MESS

function mod:validate_connect(accept, vctx)
  print("P connect", accept.remote_ip, accept.remote_port, type(vctx))
  vctx:set(C, "seen", "connect")
  return msys.core.VALIDATE_CONT
end
function mod:validate_ehlo(str, accept, vctx)
  print("P ehlo", str, accept.remote_ip,
        msys.expandMacro("%{vctx_conn:ehlo_string}"),
        vctx:get(C, "ehlo_domain"), vctx:get(C, "seen"))
  vctx:set(C, "seen", vctx:get(C, "seen") .. ",ehlo")
  return msys.core.VALIDATE_CONT
end
function mod:validate_mailfrom(str, accept, vctx)
  print("P mailfrom", str, vctx:get(M, "mailfrom_string"),
        tostring(vctx:get(M, "mine")))
  vctx:set(M, "mine", "m-" .. str)
  return msys.core.VALIDATE_CONT
end
function mod:validate_rcptto(msg, str, accept, vctx)
  print("P rcptto", str, msg:mailfrom(), msg:rcptto(),
        vctx:get(M, "rcptto_string"), vctx:get(M, "mine"))
  return msys.core.VALIDATE_CONT
end
function mod:validate_rcptto_list(list, vctx)
  print("P rcptto_list", #list, table.concat(list, ","))
  return msys.core.VALIDATE_CONT
end
function mod:validate_rcptto_list_final(list, vctx)
  print("P rcptto_list_final", #list, table.concat(list, ","))
  return msys.core.VALIDATE_CONT
end
function mod:validate_data(msg, accept, vctx)
  print("P data", msg.id, msg:mailfrom(), msg:rcptto(),
        msg:header("Subject")[1], msg:get_message_size(),
        #msg:header("X-Dup"), string.find(msg:body(), "BODYMARK") ~= nil,
        string.sub(msg:raw(), 1, 9))
  msg:header("X-Conn-Seen", vctx:get(C, "seen"))
  msg:header("X-Mess-Mine", vctx:get(M, "mine"))
  msg:context_set(msys.core.ECMESS_CTX_MESS, "from_data", "d1")
  return msys.core.VALIDATE_CONT
end
function mod:validate_data_spool(msg, accept, vctx)
  print("P data_spool", msg.id, msg:rcptto(),
        msg:context_get(msys.core.ECMESS_CTX_MESS, "from_data"))
  return msys.core.VALIDATE_CONT
end
function mod:validate_data_spool_each_rcpt(msg, accept, vctx)
  print("P each_rcpt", msg.id, msg:rcptto())
  return msys.core.VALIDATE_CONT
end
function mod:validate_set_binding(msg)
  print("P set_binding", msg.id, msg:binding(), msg.priority,
        tostring(msg:context_exists(msys.core.ECMESS_CTX_MESS,
                                    "from_data")))
  return msys.core.VALIDATE_CONT
end
msys.registerModule("phases", mod)
'''


class CalloutTest(PolicyTest):

    def test_every_callout_at_its_phase_with_its_arguments(self):
        d = self.policy_daemon({"phases": PHASES_SCRIPT})
        c = d.connect()
        self.addCleanup(c.close)
        self.assertReply(c.greeting(), 220)
        self.assertReply(c.cmd("EHLO client.test"), 250)
        tok, msg = h.make_message(rcpts=("a@dest.test", "b@dest.test"),
                                  subject="phase test",
                                  headers=("X-Dup: 1", "X-Dup: 2"),
                                  body=["BODYMARK"])
        r = h.send_raw_message(c, msg, sender="s@client.test",
                               rcpts=("a@dest.test", "b@dest.test"))
        self.assertReply(r, 250)
        qid = h.queued_id(r)
        # A second transaction: VCTX_MESS starts empty again.
        self.assertReply(c.cmd("MAIL FROM:<t@client.test>"), 250)
        self.assertReply(c.cmd("QUIT"), 221)
        lines = self.wait_printed(d, r"^P mailfrom t@", h.t(5))
        got = [l for l in self.printed(d) if l.startswith("P ")]
        local_port = c.sock.getsockname()[1]
        expect = [
            "P connect 127.0.0.1 %d userdata" % local_port,
            "P ehlo client.test 127.0.0.1 client.test client.test connect",
            "P mailfrom s@client.test s@client.test nil",
            "P rcptto a@dest.test s@client.test a@dest.test a@dest.test "
            "m-s@client.test",
            "P rcptto b@dest.test s@client.test b@dest.test b@dest.test "
            "m-s@client.test",
            "P rcptto_list 2 a@dest.test,b@dest.test",
            "P rcptto_list_final 2 a@dest.test,b@dest.test",
        ]
        self.assertEqual(got[:len(expect)], expect)
        rest = got[len(expect):]
        self.assertRegex(rest[0], r"^P data %s s@client\.test a@dest\.test "
                         r"phase test (\d+) 2 true Received:$" % qid)
        size = int(re.match(r".* phase test (\d+) ", rest[0]).group(1))
        self.assertEqual(rest[1:], [
            "P data_spool %s a@dest.test d1" % qid,
            "P each_rcpt %s a@dest.test" % qid,
            "P each_rcpt %s b@dest.test" % qid,
            "P set_binding %s default 0 true" % qid,
            "P mailfrom t@client.test t@client.test nil",
        ])
        [m] = d.spool().by_token(tok)
        hdrs = header_block(m["body"])
        added = [l for l in hdrs.split(b"\r\n") if l.startswith(b"X-Conn-")
                 or l.startswith(b"X-Mess-")]
        # The size the data phase saw: the message as received (with the
        # Received: header), before its own changes.
        self.assertEqual(size, len(m["body"]) - sum(len(l) + 2
                                                    for l in added))
        self.assertIn(b"\r\nX-Conn-Seen: connect,ehlo\r\n", hdrs + b"\r\n")
        self.assertIn(b"\r\nX-Mess-Mine: m-s@client.test", hdrs)

    def test_accept_has_local_address(self):
        # Regression test (was a bug): core/session.c session_connect() fills struct policy_conn
        # with peer_ip, peer_port and hostname only: accept.local_ip is ""
        # and accept.local_port 0 at every phase.
        d = self.policy_daemon({"acc": module("acc", r'''
function mod:validate_connect(accept, vctx)
  print("ACC", accept.local_ip, accept.local_port)
  return msys.core.VALIDATE_CONT
end''')})
        self.session(d, ehlo=False)
        line = self.wait_printed(d, r"^ACC")[0]
        self.assertEqual(line, "ACC 127.0.0.1 %d" % d.port)

    def test_validate_dealloc_only_for_modules_that_ran(self):
        d = self.policy_daemon({
            "ran": module("ran", r'''
function mod:validate_mailfrom(str, accept, vctx)
  return msys.core.VALIDATE_CONT
end
function mod:validate_dealloc()
  print("DEALLOC ran", type(self))
  return msys.core.VALIDATE_CONT
end'''),
            "idle": module("idle", r'''
function mod:validate_data(msg, accept, vctx)
  return msys.core.VALIDATE_CONT
end
function mod:validate_dealloc()
  print("DEALLOC idle")
end''')})
        c = self.session(d)
        self.assertReply(c.cmd("MAIL FROM:<s@client.test>"), 250)
        self.assertReply(c.cmd("QUIT"), 221)
        self.wait_printed(d, r"^DEALLOC ran table$")
        # A session that ran no callout of either: no dealloc.
        c2 = self.session(d)
        self.assertReply(c2.cmd("QUIT"), 221)
        time.sleep(h.t(0.5))
        self.assertEqual([l for l in self.printed(d)
                          if l.startswith("DEALLOC")], ["DEALLOC ran table"])

    def test_ehlo_example_from_the_momentum_docs(self):
        # conf/scripts/ehlo_phase.lua, verbatim from the Momentum manual.
        d = self.policy_daemon({"ehlo_phase": None}, sources={
            "ehlo_phase": "scripts.ehlo_phase"},
            options='  search_path = ( "%s" )' % CONF_DIR)
        c = self.session(d, ehlo=False)
        self.assertReply(c.cmd("EHLO greeter.test"), 250)
        self.wait_printed(d, r"^ehlo string is: greeter\.test$")


    def test_helo_runs_validate_ehlo_too(self):
        d = self.policy_daemon({"h": module("h", r"""
function mod:validate_ehlo(str, accept, vctx)
  print("HELO-ARG", str)
  return msys.core.VALIDATE_CONT
end""")})
        c = self.session(d, ehlo=False)
        self.assertReply(c.cmd("HELO old.client.test"), 250)
        self.wait_printed(d, r"^HELO-ARG old\.client\.test$")

    def test_expand_macro_and_context_limits(self):
        # validate_ehlo and validate_mailfrom are there so that the core
        # sets ehlo_string and mailfrom_string (see
        # test_core_keys_set_without_callouts_of_their_phase).
        d = self.policy_daemon({"mac": module("mac", r"""
local C, M = msys.core.VCTX_CONN, msys.core.VCTX_MESS
function mod:validate_ehlo(str, accept, vctx)
  return msys.core.VALIDATE_CONT
end
function mod:validate_mailfrom(str, accept, vctx)
  return msys.core.VALIDATE_CONT
end
function mod:validate_rcptto(msg, str, accept, vctx)
  vctx:set(M, "n", 7)
  print("MACRO", msys.expandMacro(
    "from=%{vctx_mess:mailfrom_string} rcpt=%{vctx_mess:rcptto_string} " ..
    "helo=%{vctx_conn:ehlo_string} n=%{vctx_mess:n} " ..
    "unset=[%{vctx_conn:nope}] other=%{foo:bar} %{unclosed"))
  print("TYPE", type(vctx:get(M, "n")), tostring(vctx:get(C, "nope")))
  local big = string.rep("x", 70 * 1024)
  print("CONNFULL", pcall(vctx.set, vctx, C, "big", big))
  print("MESSOK", pcall(vctx.set, vctx, M, "big", big))
  print("MESSFULL", pcall(vctx.set, vctx, M, "big2",
                          string.rep("y", 200 * 1024)))
  print("BADTYPE", pcall(vctx.get, vctx, 3, "k"))
  print("CODE", pcall(vctx.set_code, vctx, 700, "x"))
  return msys.core.VALIDATE_CONT
end""")})
        c = self.session(d, ehlo=False)
        self.assertReply(c.cmd("EHLO mac.test"), 250)
        self.assertReply(c.cmd("MAIL FROM:<s@client.test>"), 250)
        self.assertReply(c.cmd("RCPT TO:<r@dest.test>"), 250)
        self.assertEqual(self.wait_printed(d, r"^MACRO")[0],
                         "MACRO from=s@client.test rcpt=r@dest.test "
                         "helo=mac.test n=7 unset=[] other=%{foo:bar} "
                         "%{unclosed")
        self.assertEqual(self.wait_printed(d, r"^TYPE")[0],
                         "TYPE string nil")
        self.assertRegex(self.wait_printed(d, r"^CONNFULL")[0],
                         r"^CONNFULL false .*VCTX_CONN context is full")
        self.assertEqual(self.wait_printed(d, r"^MESSOK")[0], "MESSOK true")
        self.assertRegex(self.wait_printed(d, r"^MESSFULL")[0],
                         r"^MESSFULL false .*VCTX_MESS context is full")
        self.assertRegex(self.wait_printed(d, r"^BADTYPE")[0],
                         r"^BADTYPE false .*VCTX_MESS or VCTX_CONN")
        self.assertRegex(self.wait_printed(d, r"^CODE")[0],
                         r"^CODE false .*out of range")

    def test_core_keys_set_without_callouts_of_their_phase(self):
        # Regression test (was a bug): core/session.c session_policy_command() sets ehlo_string,
        # ehlo_domain, mailfrom_string and rcptto_string only when the
        # command stops for policy, i.e. when some module has a callout
        # of that phase: a module with only validate_data sees nil for
        # all of them (and %{vctx_conn:ehlo_string} expands to "").
        d = self.policy_daemon({"late": module("late", r"""
local C, M = msys.core.VCTX_CONN, msys.core.VCTX_MESS
function mod:validate_data(msg, accept, vctx)
  print("KEYS", tostring(vctx:get(C, "ehlo_string")),
        tostring(vctx:get(C, "ehlo_domain")),
        tostring(vctx:get(M, "mailfrom_string")),
        msys.expandMacro("[%{vctx_conn:ehlo_string}]"))
  return msys.core.VALIDATE_CONT
end""")})
        c = self.session(d, ehlo=False)
        self.assertReply(c.cmd("EHLO keys.test"), 250)
        tok, msg = h.make_message()
        self.assertReply(h.send_raw_message(c, msg, sender="s@client.test"),
                         250)
        self.assertEqual(self.wait_printed(d, r"^KEYS")[0],
                         "KEYS keys.test keys.test s@client.test "
                         "[keys.test]")

    def test_vctx_and_msg_kept_past_their_callout_are_refused(self):
        d = self.policy_daemon({"keep": module("keep", r"""
local saved_vctx, saved_msg
function mod:validate_rcptto(msg, str, accept, vctx)
  if saved_vctx == nil then
    saved_vctx, saved_msg = vctx, msg
    return msys.core.VALIDATE_CONT
  end
  print("OLDVCTX", pcall(saved_vctx.get, saved_vctx,
                         msys.core.VCTX_CONN, "ehlo_string"))
  print("OLDMSG", pcall(function() return saved_msg:mailfrom() end))
  return saved_vctx:get(msys.core.VCTX_CONN, "ehlo_string")
end""")})
        c = self.session(d)
        self.assertReply(c.cmd("MAIL FROM:<s@client.test>"), 250)
        self.assertReply(c.cmd("RCPT TO:<a@dest.test>"), 250)
        self.assertFailClosed(c.cmd("RCPT TO:<b@dest.test>"))
        self.assertRegex(self.wait_printed(d, r"^OLDVCTX")[0],
                         r"^OLDVCTX false .*vctx used outside the callout")
        self.assertRegex(self.wait_printed(d, r"^OLDMSG")[0],
                         r"^OLDMSG false .*msg used outside the callout")
        self.wait_printed(d, r"^keep: validate_rcptto error: .*vctx used "
                          r"outside")

    def test_init_and_deinit_per_state(self):
        d = self.policy_daemon({"life": module("life", r"""
function mod:init()
  print("INIT", msys.asyncOk(), msys.dnsLookup("localhost"))
  msys.sleep(5)      -- returns at once outside a callout
  return true
end
function mod:deinit()
  print("DEINIT")
  return true
end
function mod:validate_connect(accept, vctx)
  return msys.core.VALIDATE_CONT
end""")}, shards=2)

        def count(what):
            return len([l for l in self.printed(d) if l.startswith(what)])
        # The check state (init, deinit), then one state per shard.
        wait_until(lambda: count("DEINIT") >= 1 and count("INIT") >= 3,
                   h.t(10), "init in the check state and in each shard")
        self.assertIn("INIT false nil dnsLookup: cannot suspend here",
                      self.printed(d))
        inits, deinits = count("INIT"), count("DEINIT")
        d.send_signal(signal.SIGHUP)
        # A reload: the check state again, and each shard replaces its own.
        wait_until(lambda: count("DEINIT") >= deinits + 3 and
                   count("INIT") >= inits + 3, h.t(10),
                   "init and deinit again after the reload")
        d.stop_clean()
        # Every state that ran init() ran deinit() when it closed.
        self.assertEqual(count("DEINIT"), count("INIT"))

    def test_globals_are_per_shard_and_states_age_out(self):
        # One shard: a global survives from session to session (it is the
        # shard's state) until script_ttl replaces the state.
        d = self.policy_daemon({"glob": module("glob", r"""
COUNT = 0
function mod:validate_connect(accept, vctx)
  COUNT = COUNT + 1
  print("COUNT", COUNT)
  return msys.core.VALIDATE_CONT
end""")}, shards=1, options="  script_ttl = 1s")
        for _ in range(3):
            c = self.session(d, ehlo=False)
            self.assertReply(c.cmd("QUIT"), 221)
            c.close()
        self.assertEqual([l for l in self.printed(d)
                          if l.startswith("COUNT")][:3],
                         ["COUNT 1", "COUNT 2", "COUNT 3"])
        time.sleep(1.6)
        c = self.session(d, ehlo=False)
        self.assertEqual([l for l in self.printed(d)
                          if l.startswith("COUNT")][-1], "COUNT 1")

    def test_jit_option_runs_scripts(self):
        d = self.policy_daemon({"j": module("j", r"""
function mod:validate_mailfrom(str, accept, vctx)
  local x = 0
  for i = 1, 1000 do x = x + i end
  print("JIT", x)
  return msys.core.VALIDATE_CONT
end""")}, options="  jit = true")
        c = self.session(d)
        self.assertReply(c.cmd("MAIL FROM:<s@client.test>"), 250)
        self.wait_printed(d, r"^JIT 500500$")

    def test_error_in_validate_dealloc_is_logged(self):
        d = self.policy_daemon({"da": module("da", r"""
function mod:validate_ehlo(str, accept, vctx)
  return msys.core.VALIDATE_CONT
end
function mod:validate_dealloc()
  error("dealloc broke")
end""")})
        c = self.session(d)
        self.assertReply(c.cmd("QUIT"), 221)
        self.wait_printed(d, r"^da: validate_dealloc error: .*dealloc "
                          r"broke$")
        c2 = self.session(d)
        self.assertReply(c2.cmd("MAIL FROM:<s@client.test>"), 250)


# --- return codes ----------------------------------------------------------

class ReturnCodeTest(PolicyTest):

    def test_cont_runs_every_module_in_load_order(self):
        d = self.policy_daemon({
            n: module(n, 'function mod:validate_mailfrom(s, a, v)\n'
                         '  print("RUN %s")\n'
                         '  return msys.core.VALIDATE_CONT\nend' % n)
            for n in ("first", "second", "third")})
        c = self.session(d)
        self.assertReply(c.cmd("MAIL FROM:<s@client.test>"), 250)
        self.wait_printed(d, "RUN third")
        self.assertEqual([l for l in self.printed(d) if l.startswith("RUN")],
                         ["RUN first", "RUN second", "RUN third"])

    def test_done_skips_the_rest_of_the_phase_only(self):
        d = self.policy_daemon({
            "early": module("early", r'''
function mod:validate_mailfrom(s, a, v)
  print("EARLY mailfrom")
  return msys.core.VALIDATE_DONE
end'''),
            "late": module("late", r'''
function mod:validate_mailfrom(s, a, vctx)
  print("LATE mailfrom")
  vctx:set_code(550, "5.7.1 late says no")
  return msys.core.VALIDATE_CONT
end
function mod:validate_rcptto(msg, s, a, v)
  print("LATE rcptto")
  return msys.core.VALIDATE_CONT
end''')})
        c = self.session(d)
        self.assertReply(c.cmd("MAIL FROM:<s@client.test>"), 250)
        self.assertReply(c.cmd("RCPT TO:<r@dest.test>"), 250)
        self.wait_printed(d, "LATE rcptto")
        self.assertNotIn("LATE mailfrom", self.printed(d))

    def test_done_in_the_data_phases(self):
        d = self.policy_daemon({
            "a": module("a", r"""
function mod:validate_data(msg, accept, vctx)
  msg:header("X-A", "data")
  return msys.core.VALIDATE_DONE
end
function mod:validate_set_binding(msg)
  msg:header("X-A-Binding", "yes")
  return msys.core.VALIDATE_DONE
end"""),
            "b": module("b", r"""
function mod:validate_data(msg, accept, vctx)
  msg:header("X-B", "data")
  return msys.core.VALIDATE_CONT
end
function mod:validate_data_spool(msg, accept, vctx)
  msg:header("X-B-Spool", "yes")
  return msys.core.VALIDATE_CONT
end
function mod:validate_set_binding(msg)
  msg:header("X-B-Binding", "yes")
  return msys.core.VALIDATE_CONT
end""")})
        tok, msg = h.make_message()
        self.assertReply(h.send_raw_message(self.session(d), msg), 250)
        [m] = d.spool().by_token(tok)
        hdrs = header_block(m["body"])
        self.assertIn(b"X-A: data", hdrs)
        self.assertNotIn(b"X-B: data", hdrs)
        self.assertIn(b"X-B-Spool: yes", hdrs)
        self.assertIn(b"X-A-Binding: yes", hdrs)
        self.assertNotIn(b"X-B-Binding", hdrs)

    def test_reply_text_forms(self):
        d = self.policy_daemon({"txt": module("txt", r"""
function mod:validate_rcptto(msg, str, accept, vctx)
  if str == "whole@dest.test" then
    vctx:set_code(550, "550 5.1.1 whole line given")
  elseif str == "bare@dest.test" then
    vctx:set_code(550)
  elseif str == "temp@dest.test" then
    vctx:set_code(450)
  elseif str == "crlf@dest.test" then
    vctx:set_code(550, "5.7.1 one\r\n250 two")
  elseif str == "bye@dest.test" then
    vctx:set_code(421, "4.7.0 closing now")
  end
  return msys.core.VALIDATE_CONT
end""")})
        c = self.session(d)
        self.assertReply(c.cmd("MAIL FROM:<s@client.test>"), 250)
        r = c.cmd("RCPT TO:<whole@dest.test>")
        self.assertEqual((r.code, r.text), (550, "5.1.1 whole line given"))
        self.assertReply(c.cmd("RCPT TO:<bare@dest.test>"), 550, "5.7.1")
        self.assertReply(c.cmd("RCPT TO:<temp@dest.test>"), 450, "4.7.1")
        r = c.cmd("RCPT TO:<crlf@dest.test>")
        self.assertEqual((r.code, r.text), (550, "5.7.1 one  250 two"))
        self.assertReply(c.cmd("RCPT TO:<ok@dest.test>"), 250)
        self.assertReply(c.cmd("RCPT TO:<bye@dest.test>"), 421, "4.7.0")
        self.assertTrue(c.wait_closed(h.t(5)))

    def test_again_runs_the_callout_again(self):
        d = self.policy_daemon({"again": module("again", r'''
function mod:validate_rcptto(msg, str, accept, vctx)
  local n = tonumber(vctx:get(msys.core.VCTX_MESS, "n") or "0") + 1
  vctx:set(msys.core.VCTX_MESS, "n", n)
  print("AGAIN try", n, msys.core.get_now_ts() > 1600000000)
  if n < 3 then
    return msys.core.VALIDATE_AGAIN
  end
  return msys.core.VALIDATE_CONT
end''')}, options="  again_delay = 200ms")
        c = self.session(d)
        self.assertReply(c.cmd("MAIL FROM:<s@client.test>"), 250)
        start = time.monotonic()
        self.assertReply(c.cmd("RCPT TO:<r@dest.test>"), 250)
        # Two delays of 200 ms between the three runs.
        self.assertGreaterEqual(time.monotonic() - start, 0.35)
        self.assertEqual([l for l in self.printed(d) if l.startswith("AGAIN")],
                         ["AGAIN try 1 true", "AGAIN try 2 true",
                          "AGAIN try 3 true"])

    def test_missing_and_wrong_return_values_fail_closed(self):
        d = self.policy_daemon({"ret": module("ret", r'''
function mod:validate_mailfrom(str, accept, vctx)
  if str == "none@client.test" then return end
  if str == "string@client.test" then return "yes" end
  if str == "seven@client.test" then return 7 end
  return msys.core.VALIDATE_CONT
end
function mod:validate_set_binding(msg)
  return msys.core.VALIDATE_AGAIN   -- not allowed at this phase
end''')})
        c = self.session(d)
        for who in ("none", "string", "seven"):
            self.assertFailClosed(c.cmd("MAIL FROM:<%s@client.test>" % who))
        self.wait_printed(d, r"^ret: validate_mailfrom error: \(null\)",
                          count=3)
        # The session goes on: the failure was for that command only.
        tok, msg = h.make_message()
        r = h.send_raw_message(c, msg)
        self.assertFailClosed(r)
        self.wait_printed(d, r"^ret: validate_set_binding error: ")
        self.assertNotSpooled(d, tok)


# --- set_code and disconnect at every phase --------------------------------

SET_CODE_SCRIPT = r'''
require("msys.core")
local mod = {}
-- The phase to refuse comes from the EHLO name: "code-PHASE-CODE".
local function want(vctx, phase)
  local e = vctx:get(msys.core.VCTX_CONN, "ehlo_string") or ""
  local p, code = string.match(e, "^code%-([%w_]+)%-(%d+)")
  if p == phase then return tonumber(code) end
end
local function judge(vctx, phase)
  local code = want(vctx, phase)
  if code then
    vctx:set_code(code, string.format("%d.7.1 refused at %s",
                                      math.floor(code / 100), phase))
  end
  return msys.core.VALIDATE_CONT
end
function mod:validate_ehlo(str, a, vctx)
  local code = tonumber(string.match(str, "^ehlo%-(%d+)"))
  if code then vctx:set_code(code, "5.7.1 refused at ehlo") end
  return msys.core.VALIDATE_CONT
end
function mod:validate_mailfrom(s, a, vctx) return judge(vctx, "mailfrom") end
function mod:validate_rcptto(m, s, a, vctx)
  if s == "refuse@dest.test" then
    vctx:set_code(550, "5.1.1 this one is refused")
  end
  return judge(vctx, "rcptto")
end
function mod:validate_rcptto_list(l, vctx) return judge(vctx, "list") end
function mod:validate_rcptto_list_final(l, vctx)
  return judge(vctx, "final")
end
function mod:validate_data(m, a, vctx) return judge(vctx, "data") end
function mod:validate_data_spool(m, a, vctx) return judge(vctx, "spool") end
function mod:validate_data_spool_each_rcpt(m, a, vctx)
  if m:rcptto() == "second@dest.test" then return judge(vctx, "each") end
  return msys.core.VALIDATE_CONT
end
msys.registerModule("codes", mod)
'''


class SetCodeTest(PolicyTest):

    def setUp(self):
        self.d = self.policy_daemon({"codes": SET_CODE_SCRIPT})

    def try_message(self, phase, code):
        """A transaction with EHLO code-PHASE-CODE: the first refusal."""
        c = self.session(self.d, ehlo=False)
        self.assertReply(c.cmd("EHLO code-%s-%d" % (phase, code)), 250)
        tok, msg = h.make_message(rcpts=("first@dest.test",
                                         "second@dest.test"))
        for line, ok in (("MAIL FROM:<s@client.test>", 250),
                         ("RCPT TO:<first@dest.test>", 250),
                         ("RCPT TO:<second@dest.test>", 250),
                         ("DATA", 354)):
            r = c.cmd(line)
            if r.code != ok:
                return c, tok, line, r
        c.send(h.dot_stuff(msg) + b".\r\n")
        return c, tok, ".", c.read_reply(h.t(30))

    def test_set_code_refuses_at_each_phase(self):
        cases = [("mailfrom", 550, "MAIL FROM:<s@client.test>"),
                 ("mailfrom", 451, "MAIL FROM:<s@client.test>"),
                 ("rcptto", 550, "RCPT TO:<first@dest.test>"),
                 ("rcptto", 452, "RCPT TO:<first@dest.test>"),
                 ("list", 554, "DATA"),
                 ("final", 450, "DATA"),
                 ("data", 550, "."),
                 ("spool", 451, "."),
                 ("each", 552, ".")]
        for phase, code, where in cases:
            with self.subTest(phase=phase, code=code):
                c, tok, line, r = self.try_message(phase, code)
                self.assertEqual(line, where, r)
                self.assertReply(r, code, "%d.7.1" % (code // 100))
                self.assertIn("refused at %s" % phase, r.text)
                # The session goes on after a refusal.
                self.assertReply(c.cmd("RSET"), 250)
                self.assertReply(c.cmd("QUIT"), 221)
                self.assertNotSpooled(self.d, tok)

    def test_set_code_2xx_changes_nothing(self):
        c, tok, line, r = self.try_message("data", 250)
        self.assertEqual(line, ".")
        self.assertReply(r, 250)
        self.assertTokens(self.d.spool(), present=[tok])

    def test_set_code_at_ehlo_and_per_recipient(self):
        c = self.session(self.d, ehlo=False)
        r = c.cmd("EHLO ehlo-550.test")
        self.assertReply(r, 550, "5.7.1")
        self.assertReply(c.cmd("MAIL FROM:<s@client.test>"), 503)
        self.assertReply(c.cmd("EHLO fine.test"), 250)
        self.assertReply(c.cmd("MAIL FROM:<s@client.test>"), 250)
        self.assertReply(c.cmd("RCPT TO:<refuse@dest.test>"), 550, "5.1.1")
        self.assertReply(c.cmd("RCPT TO:<ok@dest.test>"), 250)
        tok, msg = h.make_message(rcpts=("ok@dest.test",))
        self.assertReply(c.cmd("DATA"), 354)
        c.send(h.dot_stuff(msg) + b".\r\n")
        self.assertReply(c.read_reply(h.t(30)), 250)
        [m] = self.d.spool().by_token(tok)
        self.assertEqual(m["rcpts"], ["ok@dest.test"])


class ConnectAndDisconnectTest(PolicyTest):

    def test_set_code_at_connect_refuses_the_session(self):
        d = self.policy_daemon({"conn": module("conn", r'''
function mod:validate_connect(accept, vctx)
  vctx:set_code(554, "5.7.1 no service for " .. accept.remote_ip)
  return msys.core.VALIDATE_CONT
end''')})
        c = d.connect()
        self.addCleanup(c.close)
        r = c.greeting()
        self.assertReply(r, 554, "5.7.1")
        self.assertIn("no service for 127.0.0.1", r.text)
        self.assertTrue(c.wait_closed(h.t(5)))

    def test_disconnect_at_each_phase(self):
        d = self.policy_daemon({"disc": module("disc", r'''
local function maybe(vctx, phase)
  local e = vctx:get(msys.core.VCTX_CONN, "ehlo_string") or ""
  if e == "disc-" .. phase then vctx:disconnect() end
  return msys.core.VALIDATE_CONT
end
function mod:validate_ehlo(s, a, vctx) return maybe(vctx, "ehlo") end
function mod:validate_mailfrom(s, a, vctx) return maybe(vctx, "mailfrom") end
function mod:validate_rcptto(m, s, a, vctx) return maybe(vctx, "rcptto") end
function mod:validate_data(m, a, vctx)
  local e = vctx:get(msys.core.VCTX_CONN, "ehlo_string")
  if e == "disc-data" then vctx:disconnect(554, "5.7.1 goodbye") end
  return msys.core.VALIDATE_CONT
end''')})
        for phase, where in (("ehlo", 0), ("mailfrom", 1), ("rcptto", 2),
                             ("data", 4)):
            with self.subTest(phase=phase):
                c = self.session(d, ehlo=False)
                tok, msg = h.make_message()
                lines = ["EHLO disc-" + phase, "MAIL FROM:<s@client.test>",
                         "RCPT TO:<r@dest.test>", "DATA"]
                for i, line in enumerate(lines[:where]):
                    self.assertReply(c.cmd(line), (250, 250, 250, 354)[i])
                if where < len(lines):
                    r = c.cmd(lines[where])
                    self.assertReply(r, 421, "4.7.0")
                else:
                    c.send(h.dot_stuff(msg) + b".\r\n")
                    r = c.read_reply(h.t(30))
                    self.assertReply(r, 554, "5.7.1")
                    self.assertIn("goodbye", r.text)
                self.assertTrue(c.wait_closed(h.t(5)), phase)
                self.assertNotSpooled(d, tok)


# --- fail closed ------------------------------------------------------------

ERRORS_SCRIPT = r'''
require("msys.core")
local mod = {}
-- The phase to fail comes from the EHLO name: "err-PHASE".
local function boom(where, vctx)
  local e = vctx:get(msys.core.VCTX_CONN, "ehlo_string") or ""
  if e == "err-" .. where then
    error("boom at " .. where)
  end
  return msys.core.VALIDATE_CONT
end
function mod:validate_ehlo(s, a, vctx)
  if s == "err-ehlo" then error("boom at ehlo") end
  return msys.core.VALIDATE_CONT
end
function mod:validate_mailfrom(s, a, vctx) return boom("mailfrom", vctx) end
function mod:validate_rcptto(m, s, a, vctx) return boom("rcptto", vctx) end
function mod:validate_rcptto_list(l, vctx) return boom("list", vctx) end
function mod:validate_data(m, a, vctx) return boom("data", vctx) end
function mod:validate_data_spool_each_rcpt(m, a, vctx)
  return boom("each", vctx)
end
msys.registerModule("errs", mod)
'''


class FailClosedTest(PolicyTest):

    def test_runtime_error_at_each_phase(self):
        d = self.policy_daemon({"errs": ERRORS_SCRIPT})
        c = self.session(d, ehlo=False)
        self.assertFailClosed(c.cmd("EHLO err-ehlo"), early=True)
        self.assertTrue(c.wait_closed(h.t(5)))
        self.wait_printed(d, r"^errs: validate_ehlo error: .*errs\.lua:\d+: "
                          r"boom at ehlo$")
        for phase, idx, cname in (("mailfrom", 0, "validate_mailfrom"),
                                  ("rcptto", 1, "validate_rcptto"),
                                  ("list", 2, "validate_rcptto_list"),
                                  ("data", 3, "validate_data"),
                                  ("each", 3,
                                   "validate_data_spool_each_rcpt")):
            with self.subTest(phase=phase):
                c = self.session(d, ehlo=False)
                self.assertReply(c.cmd("EHLO err-" + phase), 250)
                tok, msg = h.make_message()
                lines = ["MAIL FROM:<s@client.test>", "RCPT TO:<r@dest.test>",
                         "DATA"]
                for line in lines[:idx]:
                    self.assertIn(c.cmd(line).code, (250, 354))
                if idx < len(lines):
                    r = c.cmd(lines[idx])
                else:
                    c.send(h.dot_stuff(msg) + b".\r\n")
                    r = c.read_reply(h.t(30))
                self.assertFailClosed(r)
                self.assertIn("Temporary policy failure", r.text)
                self.wait_printed(d, r"^errs: %s error: .*boom at %s$"
                                  % (cname, phase))
                self.assertReply(c.cmd("RSET"), 250)
                self.assertReply(c.cmd("QUIT"), 221)
                self.assertNotSpooled(d, tok)

    def test_odd_exits_fail_closed(self):
        d = self.policy_daemon({"odd": module("odd", r"""
function mod:validate_mailfrom(str, accept, vctx)
  if str == "yield@client.test" then coroutine.yield(1) end
  if str == "table@client.test" then error({code = 1}) end
  if str == "nested@client.test" then
    -- msys.sleep in a script's own coroutine does not suspend the callout
    local co = coroutine.wrap(function() msys.sleep(5); return "back" end)
    print("NESTED", co(), msys.asyncOk())
  end
  return msys.core.VALIDATE_CONT
end""")})
        c = self.session(d)
        self.assertFailClosed(c.cmd("MAIL FROM:<yield@client.test>"))
        self.wait_printed(d, r"^odd: validate_mailfrom error: the callout "
                          r"yielded outside an msys call$")
        self.assertFailClosed(c.cmd("MAIL FROM:<table@client.test>"))
        self.wait_printed(d, r"^odd: validate_mailfrom error: \(null\)$")
        start = time.monotonic()
        self.assertReply(c.cmd("MAIL FROM:<nested@client.test>"), 250)
        self.assertLess(time.monotonic() - start, h.t(2))
        self.assertEqual(self.wait_printed(d, r"^NESTED")[0],
                         "NESTED back true")

    def test_error_at_connect_closes_with_421(self):
        d = self.policy_daemon({"c": module("c", r'''
function mod:validate_connect(accept, vctx)
  local t = nil
  return t.field
end''')})
        c = d.connect()
        self.addCleanup(c.close)
        self.assertFailClosed(c.greeting(), early=True)
        self.assertTrue(c.wait_closed(h.t(5)))
        self.wait_printed(d, r"^c: validate_connect error: .*attempt to "
                          r"index")

    def runaway(self, body, phase="validate_mailfrom", **opts):
        d = self.policy_daemon({"loop": module("loop", r'''
function mod:validate_mailfrom(str, accept, vctx)
  if str ~= "loop@client.test" then return msys.core.VALIDATE_CONT end
%s
  return msys.core.VALIDATE_CONT
end''' % body)}, **opts)
        c = self.session(d)
        start = time.monotonic()
        self.assertFailClosed(c.cmd("MAIL FROM:<loop@client.test>",
                                    timeout=h.t(20)))
        took = time.monotonic() - start
        self.wait_printed(d, r"^loop: %s error: " % phase)
        # The shard keeps serving: the same session, and a new one.
        self.assertReply(c.cmd("MAIL FROM:<fine@client.test>"), 250)
        tok, msg = h.make_message()
        self.assertReply(h.send_raw_message(self.session(d), msg), 250)
        return d, took

    def test_runaway_loop_is_stopped(self):
        d, took = self.runaway("  while true do end")
        self.assertLess(took, h.t(5))
        self.wait_printed(d, r"^loop: validate_mailfrom error: instruction "
                          r"budget exhausted$")

    def test_runaway_loop_inside_pcall_is_stopped(self):
        d, _ = self.runaway(r'''
  for i = 1, 3 do
    print("PCALL", pcall(function() while true do end end))
  end''')
        self.assertNotIn("PCALL", "\n".join(self.printed(d)),
                         "the loop was caught by pcall and the callout "
                         "went on")

    def test_runaway_loop_in_a_sort_comparator_is_stopped(self):
        d, _ = self.runaway(r'''
  local t = {}
  for i = 1, 50 do t[i] = 50 - i end
  print("SORT", pcall(table.sort, t, function(a, b)
    while true do end
  end))''')
        self.assertNotIn("SORT true", "\n".join(self.printed(d)))

    def test_runaway_loop_in_a_script_coroutine_is_stopped(self):
        d, _ = self.runaway(r"""
  local co = coroutine.wrap(function() while true do end end)
  print("CO", pcall(co))""")
        self.assertNotIn("CO true", "\n".join(self.printed(d)))

    def test_runaway_loop_in_a_gsub_callback_is_stopped(self):
        d, _ = self.runaway(r"""
  print("GSUB", pcall(string.gsub, "abc", "%w", function(c)
    while true do end
  end))""")
        self.assertNotIn("GSUB true", "\n".join(self.printed(d)))

    def test_runaway_loop_at_load_time_is_reported(self):
        tmp = tempfile.mkdtemp(prefix="ringmail-policy-")
        self.addCleanup(lambda: subprocess.run(["rm", "-rf", tmp]))
        with open(os.path.join(tmp, "spin.lua"), "w") as f:
            f.write(module("spin", r"""
function mod:init()
  while true do end
end"""))
        p = os.path.join(tmp, "ringmail.conf")
        with open(p, "w") as f:
            f.write(h.conf(extra=scriptlet_scope(["spin"])))
        r = check(p)
        self.assertEqual(r.returncode, 1, r)
        self.assertIn("spin: init error: instruction budget exhausted",
                      r.stderr)

    def test_runaway_loop_at_ehlo_closes_with_421(self):
        d = self.policy_daemon({"spin": module("spin", r"""
function mod:validate_ehlo(str, accept, vctx)
  while true do end
end""")})
        c = self.session(d, ehlo=False)
        self.assertFailClosed(c.cmd("EHLO client.test", timeout=h.t(20)),
                              early=True)
        self.assertTrue(c.wait_closed(h.t(5)))
        self.wait_printed(d, r"^spin: validate_ehlo error: instruction "
                          r"budget exhausted$")

    def test_again_forever_and_the_client_leaves(self):
        d = self.policy_daemon({"ag": module("ag", r"""
function mod:validate_mailfrom(str, accept, vctx)
  if str == "forever@client.test" then
    return msys.core.VALIDATE_AGAIN
  end
  return msys.core.VALIDATE_CONT
end""")}, shards=1, options="  again_delay = 50ms")
        a = self.session(d)
        a.send("MAIL FROM:<forever@client.test>\r\n")
        time.sleep(0.5)
        a.close()
        time.sleep(0.3)
        c = self.session(d)
        self.assertReply(c.cmd("MAIL FROM:<s@client.test>"), 250)
        c.close()
        d.stop_clean()

    def test_small_instruction_budget(self):
        # 200,000 instructions per callout: a loop of a million fails, one
        # of a thousand does not.
        d = self.policy_daemon({"b": module("b", r'''
function mod:validate_mailfrom(str, accept, vctx)
  local n = str == "big@client.test" and 1000000 or 1000
  local x = 0
  for i = 1, n do x = x + i end
  return msys.core.VALIDATE_CONT
end''')}, options="  instruction_budget = 200000")
        c = self.session(d)
        self.assertReply(c.cmd("MAIL FROM:<small@client.test>"), 250)
        self.assertReply(c.cmd("RSET"), 250)
        self.assertFailClosed(c.cmd("MAIL FROM:<big@client.test>"))

    def test_memory_bomb_is_contained(self):
        d = self.policy_daemon({"bomb": module("bomb", r'''
function mod:validate_rcptto(msg, str, accept, vctx)
  if str == "bomb@dest.test" then
    local t, s = {}, string.rep("x", 256 * 1024)
    for i = 1, 100000 do t[i] = s .. i end
  elseif str == "huge@dest.test" then
    local s = string.rep("y", 1024 * 1024 * 1024)
  elseif str == "grow@dest.test" then
    local t = {}
    for i = 1, 10000000 do t[i] = {i} end
  end
  return msys.core.VALIDATE_CONT
end''')}, options="  memory_limit = 8M\n  instruction_budget = 50000000")
        for who in ("bomb", "huge", "grow"):
            with self.subTest(who=who):
                c = self.session(d)
                self.assertReply(c.cmd("MAIL FROM:<s@client.test>"), 250)
                self.assertFailClosed(c.cmd("RCPT TO:<%s@dest.test>" % who,
                                            timeout=h.t(30)))
                self.assertReply(c.cmd("QUIT"), 221)
                c.close()
        self.wait_printed(d, r"^bomb: validate_rcptto error: .*memory "
                          r"limit", count=3)
        # The state was rebuilt: the daemon serves on, policy included.
        tok, msg = h.make_message()
        self.assertReply(h.send_raw_message(self.session(d), msg), 250)
        self.assertTokens(d.spool(), present=[tok])

    def test_session_that_hit_the_memory_limit_goes_on(self):
        # Regression test (was a bug): a session keeps the master it pinned; after a callout of it
        # filled the state up to memory_limit, its next callout starts in
        # core/policy.c co_borrow(), whose lua_newthread() (and luaL_ref)
        # run outside any protected call: LuaJIT raises "not enough
        # memory" unprotected, and with lua_newstate() there is no panic
        # handler, so LuaJIT calls exit(EXIT_FAILURE): the whole daemon
        # exits 1 with nothing in the paniclog.
        d = self.policy_daemon({"bomb": module("bomb", r'''
function mod:validate_rcptto(msg, str, accept, vctx)
  if str == "grow@dest.test" then
    local t = {}
    for i = 1, 10000000 do t[i] = {i} end
  end
  return msys.core.VALIDATE_CONT
end''')}, options="  memory_limit = 8M\n  instruction_budget = 50000000")
        try:
            c = self.session(d)
            self.assertReply(c.cmd("MAIL FROM:<s@client.test>"), 250)
            self.assertFailClosed(c.cmd("RCPT TO:<grow@dest.test>",
                                        timeout=h.t(30)))
            r = c.cmd("RCPT TO:<r@dest.test>", timeout=h.t(30))
            self.assertIn(r.code, (250, 451), r)
            self.assertTrue(d.running())
        finally:
            if not d.running():
                d.stopped_on_purpose = True     # the failure is above


# --- the sandbox ------------------------------------------------------------

SANDBOX_SCRIPT = r'''
require("msys.core")
local mod = {}
local function t(v) return type(v) end
function mod:validate_mailfrom(str, accept, vctx)
  if str == "probe@client.test" then
    local ffi_ok = pcall(require, "ffi")
    local jit_ok = pcall(require, "jit")
    local io_ok = pcall(require, "io")
    local dbg_ok = pcall(require, "debug")
    local f, err = loadstring("\27LJ\2\0\0\0")
    local f2, err2 = loadstring(string.char(27) .. "Lua")
    print("SANDBOX io=" .. t(io), "os.execute=" .. t(os.execute),
          "os.remove=" .. t(os.remove), "os.getenv=" .. t(os.getenv),
          "debug=" .. t(debug), "jit=" .. t(jit), "ffi=" .. t(ffi),
          "package=" .. t(package), "load=" .. t(load),
          "loadfile=" .. t(loadfile), "dofile=" .. t(dofile),
          "string.dump=" .. t(string.dump),
          "dump_via_meta=" .. t(("").dump),
          "require_ffi=" .. tostring(ffi_ok), "require_jit=" ..
          tostring(jit_ok), "require_io=" .. tostring(io_ok),
          "require_debug=" .. tostring(dbg_ok),
          "bytecode=" .. t(f), "bytecode_err=" .. tostring(err ~= nil),
          "bytecode2=" .. t(f2),
          "os.time=" .. t(os.time), "os.date=" .. t(os.date),
          "source=" .. t(loadstring("return 1")))
    print("BYTECODE", err)
    print("GC", pcall(collectgarbage, "stop"))
    return msys.core.VALIDATE_CONT
  end
  -- Unprotected: each is a callout error, so a 451.
  if str == "io@client.test" then io.open("/etc/passwd") end
  if str == "exec@client.test" then os.execute("touch /tmp/pwned") end
  if str == "ffi@client.test" then require("ffi") end
  if str == "debug@client.test" then debug.getregistry() end
  if str == "dump@client.test" then string.dump(print) end
  return msys.core.VALIDATE_CONT
end
msys.registerModule("sandbox", mod)
'''


class SandboxTest(PolicyTest):

    def test_escapes_are_closed(self):
        d = self.policy_daemon({"sandbox": SANDBOX_SCRIPT})
        c = self.session(d)
        self.assertReply(c.cmd("MAIL FROM:<probe@client.test>"), 250)
        line = self.wait_printed(d, r"^SANDBOX ")[0]
        got = dict(kv.split("=", 1) for kv in line.split()[1:])
        self.assertEqual(got, {
            "io": "nil", "os.execute": "nil", "os.remove": "nil",
            "os.getenv": "nil", "debug": "nil", "jit": "nil", "ffi": "nil",
            "package": "nil", "load": "nil", "loadfile": "nil",
            "dofile": "nil", "string.dump": "nil", "dump_via_meta": "nil",
            "require_ffi": "false", "require_jit": "false",
            "require_io": "false", "require_debug": "false",
            "bytecode": "nil", "bytecode_err": "true",
            "bytecode2": "nil", "os.time": "function",
            "os.date": "function", "source": "function"})
        self.wait_printed(d, r"^BYTECODE loading bytecode is not allowed "
                          r"in policy$")
        self.wait_printed(d, r"^GC false .*not allowed")
        self.assertReply(c.cmd("RSET"), 250)
        for who in ("io", "exec", "ffi", "debug", "dump"):
            with self.subTest(who=who):
                self.assertFailClosed(c.cmd("MAIL FROM:<%s@client.test>"
                                            % who))
                self.assertReply(c.cmd("RSET"), 250)
        self.wait_printed(d, r"^sandbox: validate_mailfrom error: ",
                          count=5)
        self.assertFalse(os.path.exists("/tmp/pwned"))


# --- the message ------------------------------------------------------------

class MessageTest(PolicyTest):

    def test_header_changes_reach_the_spool(self):
        d = self.policy_daemon({"hdr": module("hdr", r'''
function mod:validate_data(msg, accept, vctx)
  msg:header("X-Added", "added value")
  msg:header("Subject", "replaced subject")
  msg:header("X-Remove", "")
  msg:header("X-First", "at the top", "prepend")
  msg:header("X-Multi", "two", "append")
  msg:header("X-Multi", "three", "append")
  print("HDR", #msg:header("X-Multi"), msg:header("subject")[1],
        #msg:header("X-Remove"), #msg:header("x-nothing"))
  local ok, err = pcall(msg.header, msg, "X-Bad", "a\r\nInjected: yes")
  print("CRLF", ok, err)
  ok, err = pcall(msg.header, msg, "X-Bad", "a\nInjected: yes")
  print("LF", ok)
  ok, err = pcall(msg.header, msg, "X-Bad", "a\0b")
  print("NUL", ok)
  ok, err = pcall(msg.header, msg, "Bad Name", "x")
  print("NAME", ok)
  return msys.core.VALIDATE_CONT
end''')})
        tok, msg = h.make_message(subject="original subject",
                                  headers=("X-Remove: one", "X-Multi: one",
                                           "X-Remove: two"),
                                  body=["the body stays", "as it was"])
        r = h.send_raw_message(self.session(d), msg)
        self.assertReply(r, 250)
        self.assertEqual(self.wait_printed(d, r"^HDR")[0],
                         "HDR 3 replaced subject 0 0")
        self.wait_printed(d, r"^CRLF false .*CR, LF and NUL are not "
                          r"allowed")
        self.wait_printed(d, r"^LF false$")
        self.wait_printed(d, r"^NUL false$")
        self.wait_printed(d, r"^NAME false$")
        [m] = d.spool().by_token(tok)
        hdrs, body = m["body"].split(b"\r\n\r\n", 1)
        lines = hdrs.split(b"\r\n")
        self.assertEqual(lines[0], b"X-First: at the top")
        self.assertTrue(lines[1].startswith(b"Received: "), lines[:3])
        self.assertIn(b"X-Added: added value", lines)
        self.assertIn(b"Subject: replaced subject", lines)
        self.assertNotIn(b"Subject: original subject", lines)
        self.assertFalse([l for l in lines if l.startswith(b"X-Remove")])
        self.assertEqual([l for l in lines if l.startswith(b"X-Multi")],
                         [b"X-Multi: one", b"X-Multi: two",
                          b"X-Multi: three"])
        self.assertNotIn(b"Injected", m["body"])
        self.assertIn(b"X-Token: " + tok.encode(), lines)
        self.assertEqual(body, b"the body stays\r\nas it was\r\n")

    def test_second_message_keeps_its_headers(self):
        # Regression test (was a bug): per-message policy state is reset only by policy_txn_begin(),
        # which core/session.c session_policy_command() calls for
        # SMTP_POLICY_MAIL, and MAIL stops for policy only when a module
        # has validate_mailfrom. Without one, the second message of a
        # session reuses the first one's parsed headers (core/policy_msg.c
        # headers_need() sees hdrs_parsed set): a header change in
        # validate_data spools message 2 with message 1's header block
        # (its Subject, Message-ID, X-Token); VCTX_MESS values, a new
        # sender or recipients, the binding and the priority carry over
        # too.
        d = self.policy_daemon({"tag": module("tag", r'''
function mod:validate_data(msg, accept, vctx)
  print("MESS", tostring(vctx:get(msys.core.VCTX_MESS, "seen")))
  vctx:set(msys.core.VCTX_MESS, "seen", "yes")
  msg:header("X-Tagged", "yes")
  return msys.core.VALIDATE_CONT
end''')})
        c = self.session(d)
        toks = []
        for i in range(2):
            tok, msg = h.make_message(subject="message %d" % i)
            self.assertReply(h.send_raw_message(c, msg), 250)
            toks.append(tok)
        spool = d.spool()
        self.assertTokens(spool, present=toks)
        for i, tok in enumerate(toks):
            [m] = spool.by_token(tok)
            self.assertIn(b"Subject: message %d\r\n" % i, m["body"])
        self.assertEqual([l for l in self.printed(d) if l.startswith("MESS")],
                         ["MESS nil", "MESS nil"])

    def test_header_change_on_a_huge_header_block_keeps_the_message(self):
        # Regression test (was a bug): core/policy_msg.c headers_parse() stops reading the header
        # block at POLICY_HDR_BLOCK_MAX (1 MiB), in the middle of a line;
        # policy_msg_out() then writes the parsed lines, the added header,
        # the blank line, and the original bytes from that cut on: the
        # cut line is split by "X-Added: yes\r\n\r\n" and every header
        # after 1 MiB becomes body. A peer sends such a block within the
        # default Max_Message_Size.
        d = self.policy_daemon({"big": module("big", r"""
function mod:validate_data(msg, accept, vctx)
  msg:header("X-Added", "yes")
  return msys.core.VALIDATE_CONT
end""")})
        pad = ["X-Pad-%d: %s" % (i, "p" * 70) for i in range(16000)]
        tok, msg = h.make_message(headers=pad, body=["BODY LINE"])
        self.assertGreater(len(msg), 1 << 20)
        self.assertReply(h.send_raw_message(self.session(d), msg), 250)
        [m] = d.spool().by_token(tok)
        body = m["body"]
        self.assertIn(b"X-Added: yes\r\n", header_block(body) + b"\r\n")
        self.assertEqual(h.strip_received(
            body.replace(b"X-Added: yes\r\n", b"", 1)), msg)

    def test_crlf_in_header_value_fails_closed(self):
        d = self.policy_daemon({"inj": module("inj", r'''
function mod:validate_data(msg, accept, vctx)
  msg:header("X-Evil", "x\r\n\r\n.\r\nMAIL FROM:<evil@x>")
  return msys.core.VALIDATE_CONT
end''')})
        tok, msg = h.make_message()
        c = self.session(d)
        self.assertFailClosed(h.send_raw_message(c, msg))
        self.wait_printed(d, r"^inj: validate_data error: .*CR, LF and "
                          r"NUL are not allowed")
        self.assertNotSpooled(d, tok)
        self.assertReply(c.cmd("NOOP"), 250)

    def test_discard_answers_250_and_keeps_nothing(self):
        # Regression test (was a bug): msg:discard() (core/policy_msg.c msg_discard) sets
        # ps->discard, but nothing copies it into ps->result.discard, the
        # flag core/session.c session_policy_step()/session_policy_apply()
        # test: the message is committed and delivered as usual.
        d = self.policy_daemon({"drop": module("drop", r'''
function mod:validate_data(msg, accept, vctx)
  if #msg:header("X-Drop") > 0 then msg:discard("dropped by test") end
  return msys.core.VALIDATE_CONT
end''')})
        c = self.session(d)
        tok1, m1 = h.make_message(headers=("X-Drop: yes",))
        self.assertReply(h.send_raw_message(c, m1), 250)
        tok2, m2 = h.make_message()
        self.assertReply(h.send_raw_message(c, m2), 250)
        self.assertTokens(d.spool(), present=[tok2], absent=[tok1])

    def test_envelope_and_context_in_the_data_phases(self):
        d = self.policy_daemon({"env": module("env", r'''
local X = msys.core.ECMESS_CTX_MESS
function mod:validate_data(msg, accept, vctx)
  msg:mailfrom("rewritten@client.test")
  msg:context_set(X, "k", 42)
  msg:context_set(msys.core.ECMESS_CTX_CONN, "ck", "conn value")
  return msys.core.VALIDATE_CONT
end
function mod:validate_data_spool_each_rcpt(msg, accept, vctx)
  if msg:rcptto() == "old@dest.test" then msg:rcptto("new@dest.test") end
  return msys.core.VALIDATE_CONT
end
function mod:validate_set_binding(msg)
  print("ENV", msg:mailfrom(), msg:context_get(X, "k"),
        type(msg:context_get(X, "k")), msg:context_exists(X, "k"),
        msg:context_delete(X, "k"), msg:context_exists(X, "k"),
        msg:context_get(msys.core.ECMESS_CTX_CONN, "ck"),
        pcall(msg.rcptto, msg, "not an address"))
  return msys.core.VALIDATE_CONT
end''')})
        tok, msg = h.make_message(rcpts=("keep@dest.test", "old@dest.test"))
        r = h.send_raw_message(self.session(d), msg, sender="s@client.test",
                               rcpts=("keep@dest.test", "old@dest.test"))
        self.assertReply(r, 250)
        line = self.wait_printed(d, r"^ENV")[0]
        self.assertRegex(line, r"^ENV rewritten@client\.test 42 string true "
                         r"true false conn value false .*local@domain")
        [m] = d.spool().by_token(tok)
        self.assertEqual(m["sender"], "rewritten@client.test")
        self.assertEqual(m["rcpts"], ["keep@dest.test", "new@dest.test"])

    def test_binding_names_are_checked(self):
        d = self.policy_daemon({"bind": module("bind", r'''
function mod:validate_set_binding(msg)
  print("BIND", msg:binding(), pcall(msg.binding, msg, "nosuch"))
  msg:binding("alt")
  print("BOUND", msg:binding(), msg:binding_group())
  msg.priority = 1
  print("PRIO", msg.priority, pcall(function() msg.priority = 101 end))
  return msys.core.VALIDATE_CONT
end''')}, extra='Binding "alt" { EHLO_Hostname = "alt.test" }\n')
        tok, msg = h.make_message()
        self.assertReply(h.send_raw_message(self.session(d), msg), 250)
        self.assertRegex(self.wait_printed(d, r"^BIND")[0],
                         r"^BIND default false .*no binding named 'nosuch'")
        self.assertEqual(self.wait_printed(d, r"^BOUND")[0],
                         "BOUND alt nil")
        self.assertRegex(self.wait_printed(d, r"^PRIO")[0], r"^PRIO 1 false")

    def test_binding_default_is_always_known(self):
        # msg:binding() says "default" without a Binding "default" scope:
        # setting it back must work too.
        d = self.policy_daemon({"bd": module("bd", r'''
function mod:validate_set_binding(msg)
  print("DEFAULT", pcall(msg.binding, msg, "default"))
  return msys.core.VALIDATE_CONT
end''')})
        tok, msg = h.make_message()
        self.assertReply(h.send_raw_message(self.session(d), msg), 250)
        self.assertEqual(self.wait_printed(d, r"^DEFAULT")[0],
                         "DEFAULT true default")

    def test_binding_chosen_by_policy_is_used_for_delivery(self):
        # Regression test (was a bug): core/session.c session_commit() copies msg:binding(),
        # msg:routing_domain() and msg.priority into struct spool_msg,
        # but core/spool.c never records them and core/delivery.c never
        # reads them: the message leaves from the default binding.
        import test_delivery as td
        sinkdir = tempfile.mkdtemp(prefix="ringmail-sink-")
        self.addCleanup(lambda: subprocess.run(["rm", "-rf", sinkdir]))
        sink = td.RingSink(sinkdir)
        self.addCleanup(lambda: sink.proc.poll() is None and sink.stop())
        d = self.policy_daemon({"alt": module("alt", r'''
function mod:validate_set_binding(msg)
  msg:binding("alt")
  return msys.core.VALIDATE_CONT
end''')}, extra='Binding "alt" {\n  Bind_Address = "127.0.0.2"\n}\n',
            Gateway='"127.0.0.1:%d"' % sink.port, Retry_Interval="1s")
        tok, msg = h.make_message()
        self.assertReply(h.send_raw_message(self.session(d), msg), 250)
        wait_until(lambda: tok in sink.tokens(), h.t(20), "the delivery")
        d.stop_clean()
        sink.stop()
        with open(sink.rec) as f:
            peers = [l.split()[1] for l in f if tok in l]
        self.assertTrue(peers and peers[0].startswith("127.0.0.2:"), peers)

    def test_relay_control_holds_and_orders_deliveries(self):
        # VPOP3 relay control run by the core before each delivery: a
        # global CheckFile holds the "hold" message (logged with its
        # Reason, retried at its next retry time and held again) and gives
        # the "urgent" one Priority 100, which is sent before the backlog
        # of Priority 1 messages queued ahead of it on one connection.
        import test_delivery as td
        sinkdir = tempfile.mkdtemp(prefix="ringmail-sink-")
        self.addCleanup(lambda: subprocess.run(["rm", "-rf", sinkdir]))
        sink = td.RingSink(sinkdir, args=("--latency", "150"))
        self.addCleanup(lambda: sink.proc.poll() is None and sink.stop())
        d = self.policy_daemon({"relayout": r'''
function CheckFile(filename, actions, size, createtime, mailfrom,
                   recipients, headerdata, headerlines)
  print("CHECKFILE", filename, headerdata["Subject"], #recipients,
        #headerlines > 0, createtime:match("^%d+$") ~= nil)
  if headerdata["Subject"] == "hold" then
    actions["SkipSend"] = 1
    actions["Reason"] = "held by the test"
  elseif headerdata["Subject"] == "urgent" then
    actions["Priority"] = 100
  else
    actions["Priority"] = 1
  end
  return actions
end
'''}, Gateway='"127.0.0.1:%d"' % sink.port, Retry_Interval="1s",
            Max_Outbound_Connections="1")
        c = self.session(d)
        held, m = h.make_message(subject="hold")
        self.assertReply(h.send_raw_message(c, m), 250)
        slow = []
        for i in range(8):
            tok, m = h.make_message(subject="bulk %d" % i)
            self.assertReply(h.send_raw_message(c, m), 250)
            slow.append(tok)
        urgent, m = h.make_message(subject="urgent")
        self.assertReply(h.send_raw_message(c, m), 250)
        wait_until(lambda: all(t in sink.tokens() for t in slow + [urgent]),
                   h.t(30), "every message but the held one")
        # held at acceptance, then again at its retry time
        self.assertRegex(d.paniclog(), r"relay control: \S+ held for \d+ s: "
                                       r"held by the test")
        wait_until(lambda: len(re.findall(r"held by the test",
                                          d.paniclog())) >= 2,
                   h.t(20), "the hold at the retry time")
        self.assertNotIn(held, sink.tokens())
        lines = self.wait_printed(d, r"^CHECKFILE \S+ urgent ")
        self.assertTrue(lines[0].endswith("1 true true"), lines)
        d.stop_clean()
        sink.stop()
        with open(sink.rec) as f:
            order = [l.split(" ", 1)[0].strip("<>").split("@", 1)[0]
                     for l in f]
        # One connection, 150 ms per message: the urgent message, accepted
        # last, overtakes most of the bulk backlog.
        self.assertLess(order.index(urgent), 4, order)

    def test_routing_domain_hook_point_is_called(self):
        # Regression test (was a bug): core/policy_api.c accepts the hook point
        # core_config_get_message_routing_domain(scope, msg, buff) as a
        # usable method (POLICY_M_ROUTING) but nothing in core/ ever calls
        # it: a module with only this hook loads, and never runs.
        d = self.policy_daemon({"route": module("route", r'''
function mod:core_config_get_message_routing_domain(scope, msg, buff)
  print("HOOK routing domain for", msg:rcptto())
  buff:set("routed.test")
  return #buff
end''')})
        tok, msg = h.make_message()
        self.assertReply(h.send_raw_message(self.session(d), msg), 250)
        self.wait_printed(d, r"^HOOK routing domain for rcpt@dest\.test$",
                          timeout=h.t(3))

    def test_msg_code_in_set_binding_refuses(self):
        d = self.policy_daemon({"mc": module("mc", r'''
function mod:validate_set_binding(msg)
  msg:code(554, "5.7.1 not this one")
  return msys.core.VALIDATE_CONT
end''')})
        tok, msg = h.make_message()
        r = h.send_raw_message(self.session(d), msg)
        self.assertReply(r, 554, "5.7.1")
        self.assertNotSpooled(d, tok)


# --- waiting: sleep and DNS -------------------------------------------------

class AsyncTest(PolicyTest):

    def test_sleep_does_not_block_other_sessions(self):
        d = self.policy_daemon({"zz": module("zz", r'''
function mod:validate_mailfrom(str, accept, vctx)
  print("ASYNC", str, msys.asyncOk())
  if str == "sleepy@client.test" then msys.sleep(1) end
  print("WOKE", str)
  return msys.core.VALIDATE_CONT
end''')}, shards=1)
        a = self.session(d)
        b = self.session(d)
        start = time.monotonic()
        a.send("MAIL FROM:<sleepy@client.test>\r\n")
        self.wait_printed(d, r"^ASYNC sleepy@client\.test true$")
        rb = b.cmd("MAIL FROM:<quick@client.test>")
        quick = time.monotonic() - start
        self.assertReply(rb, 250)
        ra = a.read_reply(h.t(10))
        slow = time.monotonic() - start
        self.assertReply(ra, 250)
        self.assertLess(quick, 0.8, "the other session waited for the "
                        "sleeping one")
        self.assertGreaterEqual(slow, 0.95)
        printed = self.printed(d)
        self.assertLess(printed.index("WOKE quick@client.test"),
                        printed.index("WOKE sleepy@client.test"))

    def test_many_sleeping_sessions_at_once(self):
        d = self.policy_daemon({"zz": module("zz", r"""
function mod:validate_connect(accept, vctx)
  msys.sleep(0.5)
  return msys.core.VALIDATE_CONT
end
function mod:validate_mailfrom(str, accept, vctx)
  local ok = pcall(msys.sleep, 0.5)     -- a yield across pcall
  if not ok then error("sleep in pcall failed") end
  return msys.core.VALIDATE_CONT
end""")}, shards=1)
        start = time.monotonic()
        conns = [d.connect() for _ in range(40)]
        for c in conns:
            self.addCleanup(c.close)
        for c in conns:
            self.assertReply(c.greeting(h.t(10)), 220)
        for c in conns:
            c.send("EHLO client.test\r\nMAIL FROM:<s@client.test>\r\n")
        for c in conns:
            self.assertReply(c.read_reply(h.t(10)), 250)
            self.assertReply(c.read_reply(h.t(10)), 250)
        took = time.monotonic() - start
        # 80 sleeps of 0.5 s, one after the other, would take 40 s.
        self.assertLess(took, h.t(5))
        self.assertGreaterEqual(took, 0.95)

    def test_closing_and_stopping_during_a_dns_lookup(self):
        # A name server that never answers: the lookup waits for the
        # resolver's timeout while the client goes and the daemon stops.
        hole = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        hole.bind(("127.0.0.1", 0))
        self.addCleanup(hole.close)
        d = self.policy_daemon({"slow": module("slow", r"""
function mod:validate_mailfrom(str, accept, vctx)
  print("LOOKUP", str)
  local r, err = msys.dnsLookup("never.answered.test")
  print("ANSWER", tostring(r), err)
  return msys.core.VALIDATE_CONT
end""")}, shards=1, Nameservers='( "127.0.0.1:%d" )'
            % hole.getsockname()[1])
        a = self.session(d)
        a.send("MAIL FROM:<gone@client.test>\r\n")
        self.wait_printed(d, r"^LOOKUP gone@")
        a.close()
        b = self.session(d)
        b.send("MAIL FROM:<waiting@client.test>\r\n")
        self.wait_printed(d, r"^LOOKUP waiting@")
        time.sleep(0.3)
        # Another session is served meanwhile.
        c = self.session(d)
        self.assertReply(c.cmd("NOOP"), 250)
        c.close()
        start = time.monotonic()
        d.stop_clean(timeout=h.t(60))
        self.assertLess(time.monotonic() - start, h.t(40))

    def test_pipelined_commands_wait_for_their_callouts(self):
        d = self.policy_daemon({"pipe": module("pipe", r"""
function mod:validate_rcptto(msg, str, accept, vctx)
  msys.sleep(0.1)
  if str == "no@dest.test" then vctx:set_code(550, "5.1.1 not here") end
  return msys.core.VALIDATE_CONT
end
function mod:validate_rcptto_list(list, vctx)
  msys.sleep(0.1)
  return msys.core.VALIDATE_CONT
end""")})
        c = self.session(d)
        tok, msg = h.make_message(rcpts=("a@dest.test", "b@dest.test"))
        c.send("MAIL FROM:<s@client.test>\r\nRCPT TO:<a@dest.test>\r\n"
               "RCPT TO:<no@dest.test>\r\nRCPT TO:<b@dest.test>\r\n"
               "DATA\r\n")
        got = [r.code for r in c.read_replies(5, h.t(10))]
        self.assertEqual(got, [250, 250, 550, 250, 354])
        c.send(h.dot_stuff(msg) + b".\r\nQUIT\r\n")
        self.assertReply(c.read_reply(h.t(10)), 250)
        self.assertReply(c.read_reply(h.t(10)), 221)
        [m] = d.spool().by_token(tok)
        self.assertEqual(m["rcpts"], ["a@dest.test", "b@dest.test"])

    def test_stop_while_a_data_callout_waits(self):
        d = self.policy_daemon({"slow": module("slow", r"""
function mod:validate_data(msg, accept, vctx)
  print("DATA waits")
  msys.sleep(1)
  return msys.core.VALIDATE_CONT
end""")})
        c = self.session(d)
        tok, msg = h.make_message()
        self.assertReply(c.cmd("MAIL FROM:<s@client.test>"), 250)
        self.assertReply(c.cmd("RCPT TO:<r@dest.test>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(h.dot_stuff(msg) + b".\r\n")
        self.wait_printed(d, r"^DATA waits$")
        d.send_signal(signal.SIGTERM)
        try:
            r = c.read_reply(h.t(20))
        except (h.ConnectionClosed, h.ReplyTimeout):
            r = None
        self.assertEqual(d.wait(h.t(30)), 0)
        d.check_exit(0)
        spooled = tok in d.spool().tokens()
        # The client was told 250 exactly when the message was kept.
        self.assertEqual(r is not None and r.code == 250, spooled, r)
        self.assertIsNotNone(r, "a transaction in progress is finished "
                             "before the daemon stops")

    def test_closing_a_session_while_it_sleeps(self):
        d = self.policy_daemon({"zz": module("zz", r'''
function mod:validate_mailfrom(str, accept, vctx)
  msys.sleep(1)
  print("SLEPT")
  return msys.core.VALIDATE_CONT
end''')}, shards=1)
        a = self.session(d)
        a.send("MAIL FROM:<s@client.test>\r\n")
        time.sleep(0.2)
        a.close()
        time.sleep(h.t(1.5))
        c = self.session(d)
        self.assertReply(c.cmd("MAIL FROM:<s@client.test>",
                               timeout=h.t(10)), 250)

    def dnsmasq(self):
        """A dnsmasq serving policy.test; its port."""
        if not os.path.exists(DNSMASQ):
            self.skipTest("no dnsmasq")
        dport = free_port()
        dns = subprocess.Popen(
            [DNSMASQ, "--keep-in-foreground", "--no-resolv", "--no-hosts",
             "--port=%d" % dport, "--listen-address=127.0.0.1",
             "--bind-interfaces", "--pid-file=", "--conf-file=/dev/null",
             "--log-facility=/dev/null", "--local=/test/", "--local-ttl=1",
             "--user=root",
             "--host-record=host.policy.test,127.0.0.9",
             "--host-record=mx1.policy.test,127.0.0.10",
             "--mx-host=policy.test,mx1.policy.test,10",
             "--mx-host=policy.test,mx2.policy.test,20"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=lambda: h._child_setup())
        self.addCleanup(lambda: (dns.kill(), dns.wait()))
        time.sleep(0.3)
        if dns.poll() is not None:
            self.skipTest("dnsmasq did not start")
        return dport

    def test_dns_lookup_through_dnsmasq(self):
        dport = self.dnsmasq()
        d = self.policy_daemon({"dns": module("dns", r'''
local function show(t, err)
  if t == nil then return "nil:" .. tostring(err) end
  return table.concat(t, ",")
end
function mod:validate_mailfrom(str, accept, vctx)
  print("DNS A", show(msys.dnsLookup("host.policy.test")))
  print("DNS A2", show(msys.dnsLookup("host.policy.test", "A")))
  print("DNS NX", show(msys.dnsLookup("nosuch.policy.test", "A")))
  print("DNS TXT", show(msys.dnsLookup("policy.test", "TXT")))
  local ips = msys.dnsLookup(string.match(str, "@(.*)$"))
  if ips == nil then
    vctx:set_code(550, "5.1.8 sender domain does not resolve")
  end
  return msys.core.VALIDATE_CONT
end''')}, shards=1, Nameservers='( "127.0.0.1:%d" )' % dport)
        c = self.session(d)
        self.assertReply(c.cmd("MAIL FROM:<s@host.policy.test>",
                               timeout=h.t(20)), 250)
        self.assertEqual(self.wait_printed(d, r"^DNS A ")[0],
                         "DNS A 127.0.0.9")
        self.assertEqual(self.wait_printed(d, r"^DNS A2 ")[0],
                         "DNS A2 127.0.0.9")
        self.assertEqual(self.wait_printed(d, r"^DNS NX ")[0],
                         "DNS NX nil:NXDOMAIN")
        # policy.test has MX and A records but no TXT
        self.assertEqual(self.wait_printed(d, r"^DNS TXT ")[0],
                         "DNS TXT nil:no records")
        self.assertReply(c.cmd("RSET"), 250)
        self.assertReply(c.cmd("MAIL FROM:<s@nowhere.policy.test>",
                               timeout=h.t(20)), 550, "5.1.8")

    def test_dns_lookup_mx_returns_the_mx_records(self):
        # Regression test (was a bug): core/policy_api.c api_dns_lookup() answers "MX" with
        # dns_resolve_mx(), delivery's route resolution: MX hosts without
        # an address are left out (policy.test MX 20 mx2.policy.test,
        # which has no A record, is missing) and a name with no MX but an
        # address gets its implicit MX (itself) instead of no MX records.
        dport = self.dnsmasq()
        d = self.policy_daemon({"mx": module("mx", r'''
local function show(t, err)
  if t == nil then return "nil:" .. tostring(err) end
  return table.concat(t, ",")
end
function mod:validate_mailfrom(str, accept, vctx)
  print("DNS MX", show(msys.dnsLookup("policy.test", "MX")))
  print("DNS NOMX", show(msys.dnsLookup("host.policy.test", "MX")))
  return msys.core.VALIDATE_CONT
end''')}, shards=1, Nameservers='( "127.0.0.1:%d" )' % dport)
        c = self.session(d)
        self.assertReply(c.cmd("MAIL FROM:<s@client.test>",
                               timeout=h.t(20)), 250)
        self.assertEqual(self.wait_printed(d, r"^DNS MX ")[0],
                         "DNS MX mx1.policy.test,mx2.policy.test")
        self.assertRegex(self.wait_printed(d, r"^DNS NOMX ")[0],
                         r"^DNS NOMX nil:")


# --- loading, checking, reloading -------------------------------------------

def check(path):
    return subprocess.run([h.RINGMAILD, "-t", "-c", path],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=h.t(60), universal_newlines=True)


GOOD_V1 = module("gen", r'''
function mod:validate_mailfrom(str, accept, vctx)
  vctx:set_code(550, "5.7.1 generation one")
  return msys.core.VALIDATE_CONT
end''')
GOOD_V2 = module("gen", r'''
function mod:validate_mailfrom(str, accept, vctx)
  vctx:set_code(550, "5.7.1 generation two")
  return msys.core.VALIDATE_CONT
end''')
BROKEN = module("gen", r'''
function mod:validate_mailfrom(str, accept, vctx)
  this is not lua
end''')


class LoadTest(PolicyTest):

    def scratch(self):
        tmp = tempfile.mkdtemp(prefix="ringmail-policy-")
        self.addCleanup(lambda: subprocess.run(["rm", "-rf", tmp]))
        return tmp

    def write(self, tmp, files, scripts, sources=None):
        for name, text in files.items():
            with open(os.path.join(tmp, name + ".lua"), "w") as f:
                f.write(text)
        p = os.path.join(tmp, "ringmail.conf")
        with open(p, "w") as f:
            f.write(h.conf(extra=scriptlet_scope(scripts, sources=sources)))
        return p

    def test_check_reports_a_broken_script_with_file_and_line(self):
        tmp = self.scratch()
        p = self.write(tmp, {"gen": BROKEN}, ["gen"])
        r = check(p)
        self.assertEqual(r.returncode, 1, r)
        self.assertRegex(r.stderr, r"gen\.lua:5: ")
        self.assertFalse(os.path.exists(os.path.join(tmp, "spool")))
        p = self.write(tmp, {"gen": GOOD_V1}, ["gen"])
        r = check(p)
        self.assertEqual(r.returncode, 0, r)
        self.assertIn("configuration OK", r.stdout)

    def test_check_reports_a_runtime_error_at_load(self):
        tmp = self.scratch()
        p = self.write(tmp, {"rt": 'require("msys.core")\n'
                             'local x = nil\nprint(x.y)\n'}, ["rt"])
        r = check(p)
        self.assertEqual(r.returncode, 1, r)
        self.assertRegex(r.stderr, r"rt\.lua:3: attempt to index")

    def test_no_usable_methods(self):
        tmp = self.scratch()
        p = self.write(tmp, {"useless": module("useless", r'''
function mod:validate_nothing() return 0 end
function mod:helper() return 1 end''')}, ["useless"])
        r = check(p)
        self.assertEqual(r.returncode, 1, r)
        self.assertIn("no usable methods found for module useless in "
                      "registerModule call", r.stderr)
        d = self.policy_daemon({"useless": None}, start=False)
        os.rename(os.path.join(tmp, "useless.lua"),
                  os.path.join(d.dir, "useless.lua"))
        with self.assertRaises(h.DaemonError):
            d.start()
        self.assertNotEqual(d.exit_codes[-1], 0)
        self.assertIn("no usable methods found for module useless",
                      d.stderr() + d.paniclog())

    def test_init_must_return_true(self):
        tmp = self.scratch()
        p = self.write(tmp, {"ini": module("ini", r'''
function mod:init() return nil end
function mod:validate_connect(a, v) return msys.core.VALIDATE_CONT end''')},
                       ["ini"])
        r = check(p)
        self.assertEqual(r.returncode, 1, r)
        self.assertIn("ini: init did not return true", r.stderr)

    def test_missing_script_file(self):
        tmp = self.scratch()
        p = self.write(tmp, {}, ["absent"], sources={"absent": "dir.absent"})
        r = check(p)
        self.assertEqual(r.returncode, 1, r)
        self.assertRegex(r.stderr, r"ringmail\.conf:\d+: script 'absent': "
                         r"cannot find source 'dir\.absent'")
        d = self.policy_daemon({"absent": None}, start=False,
                               sources={"absent": "dir.absent"})
        with self.assertRaises(h.DaemonError):
            d.start()
        self.assertNotEqual(d.exit_codes[-1], 0)
        self.assertIn("cannot find source 'dir.absent'",
                      d.stderr() + d.paniclog())

    def test_require_of_a_module_beside_the_script(self):
        d = self.policy_daemon({"lib.helper": None, "user": module(
            "user", r'''
local helper = require("lib.helper")
function mod:validate_mailfrom(str, accept, vctx)
  print("HELPER", helper.shout(str))
  return msys.core.VALIDATE_CONT
end''')}, start=False)
        # lib.helper is a plain Lua module, not a script stanza.
        text = d.conf_text.replace('  script "lib.helper" { source = '
                                   '"lib.helper" }\n', "")
        with open(d.conf_path, "w") as f:
            f.write(text)
        d.conf_text = text
        self.write_script(d, "lib.helper",
                          "local M = {}\nfunction M.shout(s) return "
                          "string.upper(s) end\nreturn M\n")
        d.start()
        c = self.session(d)
        self.assertReply(c.cmd("MAIL FROM:<s@client.test>"), 250)
        self.wait_printed(d, r"^HELPER S@CLIENT\.TEST$")

    def test_reload_good_then_broken(self):
        d = self.policy_daemon({"gen": GOOD_V1})
        old = self.session(d)
        r = old.cmd("MAIL FROM:<s@client.test>")
        self.assertIn("generation one", r.text)
        self.write_script(d, "gen", GOOD_V2)
        d.send_signal(signal.SIGHUP)
        wait_until(lambda: "config reload: scriptlet generation applied"
                   in d.paniclog(), h.t(10), "the reload")

        def new_gen():
            c = self.session(d)
            r = c.cmd("MAIL FROM:<s@client.test>")
            c.close()
            return "generation two" in r.text
        wait_until(new_gen, h.t(10), "new sessions on generation two")
        # The session opened before the reload stays on its generation.
        self.assertIn("generation one",
                      old.cmd("MAIL FROM:<s@client.test>").text)
        old.close()

        self.write_script(d, "gen", BROKEN)
        d.send_signal(signal.SIGHUP)
        line = wait_until(lambda: re.search(
            r"^\d+:main: config reload failed, running configuration "
            r"kept: .*gen\.lua:5: .*$", d.paniclog(), re.M), h.t(10),
            "the failed reload")
        self.assertTrue(line)
        time.sleep(h.t(1.2))     # past a shard tick
        for _ in range(3):
            c = self.session(d)
            self.assertIn("generation two",
                          c.cmd("MAIL FROM:<s@client.test>").text)
            c.close()

    def test_reload_with_failing_init_keeps_the_old_generation(self):
        d = self.policy_daemon({"gen": GOOD_V1})
        self.write_script(d, "gen", GOOD_V2 + "\nfunction mod:init() "
                          "return false end\n")
        d.send_signal(signal.SIGHUP)
        wait_until(lambda: "config reload failed" in d.paniclog(), h.t(10),
                   "the failed reload")
        self.assertIn("gen: init did not return true", d.paniclog())
        time.sleep(h.t(0.6))
        c = self.session(d)
        self.assertIn("generation one",
                      c.cmd("MAIL FROM:<s@client.test>").text)

    def test_reload_without_the_scriptlet_scope_turns_policy_off(self):
        d = self.policy_daemon({"gen": GOOD_V1})
        c = self.session(d)
        self.assertReply(c.cmd("MAIL FROM:<s@client.test>"), 550)
        c.close()
        text = re.sub(r'scriptlet "scriptlet" \{.*?\n\}\n', "",
                      d.conf_text, flags=re.S)
        self.assertNotIn("scriptlet", text)
        with open(d.conf_path, "w") as f:
            f.write(text)
        d.send_signal(signal.SIGHUP)
        wait_until(lambda: "generation applied" in d.paniclog(), h.t(10),
                   "the reload")

        def policy_off():
            c = self.session(d)
            r = c.cmd("MAIL FROM:<s@client.test>")
            c.close()
            return r.code == 250
        wait_until(policy_off, h.t(10), "new sessions without policy")

    def test_reload_while_a_callout_sleeps(self):
        v1 = module("gen", r"""
function mod:validate_mailfrom(str, accept, vctx)
  msys.sleep(1)
  vctx:set_code(550, "5.7.1 generation one")
  return msys.core.VALIDATE_CONT
end""")
        d = self.policy_daemon({"gen": v1}, shards=1)
        old = self.session(d)
        old.send("MAIL FROM:<s@client.test>\r\n")
        time.sleep(0.2)
        self.write_script(d, "gen", GOOD_V2)
        d.send_signal(signal.SIGHUP)
        wait_until(lambda: "generation applied" in d.paniclog(), h.t(10),
                   "the reload")
        # The sleeping callout wakes in its own (retired) state.
        self.assertIn("generation one", old.read_reply(h.t(10)).text)
        new = self.session(d)
        self.assertIn("generation two",
                      new.cmd("MAIL FROM:<s@client.test>").text)
        self.assertIn("generation one",
                      old.cmd("MAIL FROM:<s@client.test>",
                              timeout=h.t(10)).text)
        old.close()
        new.close()

    def test_reload_under_load_loses_nothing(self):
        # validate_mailfrom is there so that each MAIL starts a new
        # policy transaction (see test_second_message_keeps_its_headers).
        scripts = {"gen": module("gen", r'''
function mod:validate_mailfrom(str, accept, vctx)
  return msys.core.VALIDATE_CONT
end
function mod:validate_rcptto(msg, str, accept, vctx)
  msys.sleep(0.01)
  return msys.core.VALIDATE_CONT
end
function mod:validate_data(msg, accept, vctx)
  msg:header("X-Gen", "v0")
  return msys.core.VALIDATE_CONT
end''')}
        d = self.policy_daemon(scripts, shards=2)
        sent, errors = [], []
        lock = threading.Lock()
        done = threading.Event()

        def sender():
            # A session stays on the generation it started with: sessions
            # of three messages each, until the reloads are over (at most
            # 60 sessions per thread).
            try:
                for _ in range(60):
                    if done.is_set():
                        break
                    c = d.connect()
                    self.assertReply(c.greeting(), 220)
                    self.assertReply(c.ehlo(), 250)
                    for _ in range(3):
                        tok, msg = h.make_message()
                        r = h.send_raw_message(c, msg)
                        with lock:
                            sent.append((tok, r.code))
                    self.assertReply(c.cmd("QUIT"), 221)
                    c.close()
            except Exception as e:       # reported below
                with lock:
                    errors.append(repr(e))

        threads = [threading.Thread(target=sender) for _ in range(4)]
        for th in threads:
            th.start()
        for i in range(1, 6):
            time.sleep(0.3)
            self.write_script(d, "gen", scripts["gen"].replace(
                '"v0"', '"v%d"' % i))
            d.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        done.set()
        for th in threads:
            th.join(h.t(120))
        self.assertEqual(errors, [])
        self.assertGreaterEqual(len(sent), 12)
        self.assertEqual([c for _, c in sent if c != 250], [])
        self.assertEqual(d.paniclog().count("generation applied"), 5)
        spool = d.spool()
        self.assertTokens(spool, present=[tok for tok, _ in sent])
        gens = {re.search(rb"X-Gen: (v\d)", m["body"]).group(1)
                for m in spool.messages}
        self.assertGreater(len(gens), 1, "every message on one generation")
        self.assertNotIn("failed", d.paniclog())


# --- the examples ------------------------------------------------------------

EXAMPLES = ["boot", "ehlo_phase", "binder", "policy", "relay_control"]
EXAMPLE_SOURCES = {"boot": "msys.boot", "ehlo_phase": "scripts.ehlo_phase",
                   "binder": "scripts.binder", "policy": "scripts/policy",
                   "relay_control": "scripts.relay_control"}

PRIORITY_PROBE = module("probe", r'''
function mod:validate_set_binding(msg)
  print("PROBE priority", msg.priority, "binding", msg:binding(),
        "tag", tostring(msg:context_get(msys.core.ECMESS_CTX_MESS,
                                        "policy_tag")))
  return msys.core.VALIDATE_CONT
end''')


class ExamplesTest(PolicyTest):

    def test_policy_conf_checks(self):
        r = check(os.path.join(CONF_DIR, "policy.conf"))
        self.assertEqual(r.returncode, 0, r)
        self.assertIn("configuration OK", r.stdout)

    def test_examples_run_unmodified(self):
        scripts = dict((n, None) for n in EXAMPLES)
        scripts["probe"] = PRIORITY_PROBE
        d = self.policy_daemon(
            scripts, sources=EXAMPLE_SOURCES,
            options='  search_path = ( "%s" "." )' % CONF_DIR,
            extra='Binding "bulk" { EHLO_Hostname = "bulk.test" }\n')
        c = self.session(d, ehlo=False)
        self.assertReply(c.cmd("EHLO example.client.test"), 250)
        self.wait_printed(d, r"^ehlo string is: example\.client\.test$")
        # policy.lua: senders and recipients refused by pattern
        for bad in ("spammer@x.test", "a@b.invalid"):
            self.assertReply(c.cmd("MAIL FROM:<%s>" % bad), 550, "5.7.1")
        self.wait_printed(d, r"^policy: sender spammer@x\.test from "
                          r"127\.0\.0\.1 refused by ")
        self.assertReply(c.cmd("MAIL FROM:<good@client.test>"), 250)
        self.assertReply(c.cmd("RCPT TO:<noreply@dest.test>"), 550, "5.7.1")
        self.assertReply(c.cmd("RCPT TO:<u@bulk.example>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        tok, msg = h.make_message(rcpts=("u@bulk.example",),
                                  subject="Our Newsletter",
                                  headers=("Precedence: bulk",))
        c.send(h.dot_stuff(msg) + b".\r\n")
        self.assertReply(c.read_reply(h.t(30)), 250)
        # binder.lua: priority 1, seen by the module loaded after it
        self.wait_printed(d, r"^mod:validate_set_binding: Setting msg "
                          r"priority to 1$")
        self.assertEqual(self.wait_printed(d, r"^PROBE")[0],
                         "PROBE priority 1 binding bulk tag bulk "
                         "newsletter")
        self.wait_printed(d, r"^policy: message \S+ for bulk\.example uses "
                          r"binding bulk$")
        [m] = d.spool().by_token(tok)
        self.assertIn(b"\r\nX-Policy-Tag: bulk newsletter\r\n",
                      header_block(m["body"]) + b"\r\n")
        # route by domain: another routing domain
        tok2, msg2 = h.make_message(rcpts=("v@legacy.example",))
        self.assertReply(h.send_raw_message(c, msg2,
                                            rcpts=("v@legacy.example",)),
                         250)
        self.wait_printed(d, r"^policy: message \S+ for legacy\.example "
                          r"routed via relay\.example$")
        # relay_control.lua loaded: no error anywhere
        self.assertNotRegex(d.paniclog(), r"error")

    def test_relay_control_example_decides_like_vpop3(self):
        # The core calls CheckFile before deliveries (work in progress);
        # here the script's decisions are checked by calling it from a
        # callout, with VPOP3's arguments.
        d = self.policy_daemon({"relay_control": None, "drive": module(
            "drive", r'''
function mod:validate_mailfrom(str, accept, vctx)
  local hour = os.date("*t").hour
  local day = hour > 7 and hour < 19
  for _, size in ipairs({1000, 6000000, 12000000}) do
    local a = CheckFile("id", {SkipSend = false, Priority = 50,
                               Reason = ""}, size, "20260101120000",
                        str, {"r@dest.test"}, {Subject = "s"},
                        {"Subject: s"})
    print("CHECKFILE", size, tostring(a.SkipSend), a.Priority,
          tostring(day))
  end
  return msys.core.VALIDATE_CONT
end''')}, sources={"relay_control": "scripts.relay_control"},
            options='  search_path = ( "%s" "." )' % CONF_DIR)
        c = self.session(d)
        self.assertReply(c.cmd("MAIL FROM:<s@client.test>"), 250)
        lines = self.wait_printed(d, r"^CHECKFILE", count=3)
        day = lines[0].endswith("true")
        self.assertEqual([l.rsplit(" ", 1)[0] for l in lines], [
            "CHECKFILE 1000 false 50",
            "CHECKFILE 6000000 false 1",
            "CHECKFILE 12000000 %s 1" % ("true" if day else "false")])



# --- regressions from a code review -----------------------------------------

class ReviewRegressionTest(PolicyTest):
    """
    Found by reading the policy core (each crashed or lost mail before its
    fix); the daemon must survive and answer as documented.
    """

    def test_wait_inside_a_c_boundary_starts_nothing(self):
        # msys.sleep inside a gsub callback cannot yield (C boundary): it
        # used to arm its timer anyway, which then woke a finished run
        # (assertion, or use-after-free) or cut a later sleep short.
        d = self.policy_daemon({"zz": module("zz", r"""
function mod:validate_ehlo(str, accept, vctx)
  local ok, e = pcall(string.gsub, "x", ".", function() msys.sleep(0.3) end)
  print("PCALL", ok, e)
  return msys.core.VALIDATE_CONT
end
function mod:validate_mailfrom(str, accept, vctx)
  local t0 = os.time()
  msys.sleep(1)
  print("SLEPT")
  return msys.core.VALIDATE_CONT
end""")})
        c = self.session(d, ehlo=False)
        self.assertReply(c.cmd("EHLO x.test"), 250)
        self.assertRegex(self.wait_printed(d, r"^PCALL")[0],
                         r"^PCALL false .*yield across")
        t0 = time.monotonic()
        self.assertReply(c.cmd("MAIL FROM:<a@b.test>", timeout=h.t(10)), 250)
        # the stray 0.3 s timer must not end the 1 s sleep early
        self.assertGreaterEqual(time.monotonic() - t0, 0.9)
        time.sleep(0.5)
        self.assertIsNone(d.proc.poll())
        self.assertReply(c.cmd("QUIT"), 221)

    def test_module_table_with_a_raising_index(self):
        # Looking up callouts on a table whose __index raises used to run
        # outside a protected call: abort at start, and at reload.
        good = module("zz", r"""
function mod:validate_ehlo(s, a, v) return msys.core.VALIDATE_CONT end""")
        bad = r"""
local mod = setmetatable({}, {__index = function(t, k) error("boom " .. k) end})
function mod.validate_ehlo(self) return msys.core.VALIDATE_CONT end
msys.registerModule("zz", mod)
"""
        d = self.policy_daemon({"zz": bad})
        c = self.session(d, ehlo=False)
        self.assertReply(c.cmd("EHLO x.test"), 250)
        self.write_script(d, "zz", good)
        d.send_signal(signal.SIGHUP)
        wait_until(lambda: "scriptlet generation applied" in d.paniclog(),
                   h.t(10), "the reload")
        self.assertIsNone(d.proc.poll())

    def test_checkfile_result_with_a_raising_index(self):
        # Reading the Actions CheckFile returned used to run its __index
        # unprotected, on the delivery side: abort, and after a restart a
        # crash loop (the message is spooled).
        d = self.policy_daemon({"relayout": r"""
function CheckFile(filename, actions, size, createtime, mailfrom,
                   recipients, headerdata, headerlines)
  return setmetatable({}, {__index = function(t, k) error("no " .. k) end})
end
"""})
        tok, m = h.make_message()
        self.assertReply(h.send_raw_message(self.session(d), m), 250)
        time.sleep(1)
        self.assertIsNone(d.proc.poll())
        self.assertTokens(d.spool(), present=[tok])

    def test_callout_coroutines_cannot_be_resumed_by_scripts(self):
        d = self.policy_daemon({"zz": module("zz", r"""
local saved
function mod:validate_mailfrom(str, accept, vctx)
  if str == "a@x.test" then
    saved = coroutine.running()
    msys.sleep(0.5)
    print("A WOKE")
  elseif saved then
    print("RESUME", pcall(coroutine.resume, saved))
  end
  return msys.core.VALIDATE_CONT
end""")})
        a = self.session(d)
        b = self.session(d)
        a.send(b"MAIL FROM:<a@x.test>\r\n")
        time.sleep(0.1)
        self.assertReply(b.cmd("MAIL FROM:<b@x.test>"), 250)
        self.assertRegex(self.wait_printed(d, r"^RESUME")[0],
                         r"^RESUME false .*cannot resume the coroutine")
        self.assertReply(a.read_reply(h.t(10)), 250)
        self.wait_printed(d, r"^A WOKE$")

    def test_vctx_mess_is_emptied_by_rset(self):
        d = self.policy_daemon({"zz": module("zz", r"""
function mod:validate_rcptto(msg, str, accept, vctx)
  if str:find("spam") then vctx:set(msys.core.VCTX_MESS, "flag", "spam") end
  return msys.core.VALIDATE_CONT
end
function mod:validate_data(msg, accept, vctx)
  print("FLAG", tostring(vctx:get(msys.core.VCTX_MESS, "flag")))
  return msys.core.VALIDATE_CONT
end""")})
        c = self.session(d)
        self.assertReply(c.cmd("MAIL FROM:<a@x.test>"), 250)
        self.assertReply(c.cmd("RCPT TO:<spam@x.test>"), 250)
        self.assertReply(c.cmd("RSET"), 250)
        tok, m = h.make_message(rcpts=("clean@x.test",))
        self.assertReply(h.send_raw_message(c, m, rcpts=("clean@x.test",)),
                         250)
        self.assertEqual(self.wait_printed(d, r"^FLAG")[0], "FLAG nil")

    def test_disconnect_with_a_2xx_code_refuses(self):
        # vctx:disconnect(250, ...) in a data phase used to answer 250 and
        # keep nothing: mail lost.
        d = self.policy_daemon({"zz": module("zz", r"""
function mod:validate_data(msg, accept, vctx)
  vctx:disconnect(250, "2.0.0 Ok: queued")
  return msys.core.VALIDATE_CONT
end""")})
        tok, m = h.make_message()
        r = h.send_raw_message(self.session(d), m)
        self.assertEqual(r.code, 421, r)
        self.assertTokens(d.spool(), absent=[tok])

    def test_header_name_with_blanks_before_the_colon(self):
        d = self.policy_daemon({"zz": module("zz", r"""
function mod:validate_data(msg, accept, vctx)
  print("SUBJ", msg:header("Subject")[1])
  msg:header("Subject", "replaced")
  return msys.core.VALIDATE_CONT
end""")})
        tok, m = h.make_message(headers=("Subject : buy now",))
        m = m.replace(b"Subject: ", b"X-Old-Subject: ", 1) \
            if m.count(b"Subject") > 1 else m
        self.assertReply(h.send_raw_message(self.session(d), m), 250)
        self.assertIn("SUBJ buy now", self.printed(d))
        [sp] = d.spool().by_token(tok)
        hdrs = header_block(sp["body"])
        self.assertEqual(hdrs.count(b"Subject: replaced"), 1)
        self.assertNotIn(b"Subject : buy now", hdrs)

    def test_discard_outside_the_data_phases_fails_closed(self):
        d = self.policy_daemon({"zz": module("zz", r"""
function mod:validate_rcptto(msg, str, accept, vctx)
  msg:discard("too early")
  return msys.core.VALIDATE_CONT
end""")})
        c = self.session(d)
        self.assertReply(c.cmd("MAIL FROM:<a@x.test>"), 250)
        self.assertReply(c.cmd("RCPT TO:<r@x.test>"), 451)
        self.assertRegex(d.paniclog(), r"discard\(\) works in the data "
                                       r"phases only")

if __name__ == "__main__":
    h.main(timeout=400)
