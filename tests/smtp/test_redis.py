#!/usr/bin/env python3
"""
test_redis - msys.db and msys.redis against a real redis-server

Each test starts redis-server on a free 127.0.0.1 port (no persistence)
and stops it by its PID; ringmaild gets a Datasource pointing at it and a
policy (the shipped conf/scripts/suppression.lua plus a test module) that
looks things up at every phase. Covered: lookups at each phase (connect,
ehlo, mailfrom, rcptto, data, set_binding), rows as documented, many
concurrent sessions pipelining, the cache and nocache, arguments with
CR/LF/RESP fragments sending nothing but the intended command, Redis
stopped mid-run (answers within the timeout, nothing hangs), Redis made
unresponsive with SIGSTOP (the deadline holds), Redis back (the circuit
closes and lookups succeed), raise_error, and bad Datasource configs.
Skipped (77) without redis-server.
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness  # noqa: E402
from harness import t  # noqa: E402

REDIS_SERVER = shutil.which("redis-server")
SCRIPTS = os.path.join(harness.SRC, "conf", "scripts")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


class Redis:
    """A redis-server on 127.0.0.1:port, no persistence, stopped by PID."""

    def __init__(self, port=None, password=None):
        self.port = port or free_port()
        self.password = password
        self.dir = tempfile.mkdtemp(prefix="ringmail-redis-")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port),
             "--save", "", "--appendonly", "no", "--dir", self.dir,
             "--daemonize", "no"] +
            (["--requirepass", self.password] if self.password else []),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=lambda: harness._child_setup())
        deadline = time.monotonic() + t(10)
        while time.monotonic() < deadline:
            try:
                if self.cmd("PING") == "PONG":
                    return self
            except OSError:
                pass
            if self.proc.poll() is not None:
                raise AssertionError("redis-server exited %s"
                                     % self.proc.returncode)
            time.sleep(0.05)
        raise AssertionError("redis-server did not answer")

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGCONT)
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(t(10))
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def cleanup(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    # a minimal RESP client: every argument a bulk string
    def cmd(self, *args, db=0):
        with socket.create_connection(("127.0.0.1", self.port),
                                      timeout=t(5)) as s:
            f = s.makefile("rb")
            if self.password:
                s.sendall(self._encode(("AUTH", self.password)))
                self._read(f)
            if db:
                s.sendall(self._encode(("SELECT", db)))
                self._read(f)
            s.sendall(self._encode(args))
            return self._read(f)

    @staticmethod
    def _encode(args):
        out = [b"*%d\r\n" % len(args)]
        for a in args:
            if isinstance(a, str):
                a = a.encode()
            elif isinstance(a, int):
                a = str(a).encode()
            out.append(b"$%d\r\n%s\r\n" % (len(a), a))
        return b"".join(out)

    def _read(self, f):
        line = f.readline()
        kind, rest = line[:1], line[1:-2]
        if kind == b"+":
            return rest.decode()
        if kind == b"-":
            raise AssertionError("redis error: %s" % rest.decode())
        if kind == b":":
            return int(rest)
        if kind == b"$":
            n = int(rest)
            if n < 0:
                return None
            data = f.read(n + 2)[:-2]
            return data
        if kind == b"*":
            n = int(rest)
            return None if n < 0 else [self._read(f) for _ in range(n)]
        raise AssertionError("bad RESP line %r" % line)


# The test module: a lookup at every phase, and RCPT local parts that
# select an operation (op+arg@test), answering 550 "value=..." to report.
TEST_LUA = r'''
local mod = {}
local DS = "r"

local function unhex(s)
  return (s:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end))
end

local function phase(name, vctx)
  local n, err = msys.redis.command(DS, "INCR", "count:" .. name)
  if n == nil then
    vctx:set_code(451, "4.3.0 redis: " .. tostring(err))
    return msys.core.VALIDATE_DONE
  end
  local row, err2 = msys.db.fetch_row(DS, "GET phase:?", { name },
                                      { nocache = true })
  if err2 ~= nil then
    vctx:set_code(451, "4.3.0 redis: " .. err2)
    return msys.core.VALIDATE_DONE
  end
  if row ~= nil and row[1] == "reject" then
    vctx:set_code(550, "5.7.1 rejected at " .. name)
    return msys.core.VALIDATE_DONE
  end
  return msys.core.VALIDATE_CONT
end

local function report(vctx, v)
  vctx:set_code(550, "5.7.1 value=" .. tostring(v))
  return msys.core.VALIDATE_DONE
end

function mod:validate_connect(accept, vctx) return phase("connect", vctx) end
function mod:validate_ehlo(str, accept, vctx) return phase("ehlo", vctx) end
function mod:validate_mailfrom(str, accept, vctx)
  return phase("mailfrom", vctx)
end

function mod:validate_rcptto(msg, str, accept, vctx)
  local a = str:match("<([^>]*)>") or str
  local op, arg = a:match("^([%w_]+)%+?([^@]*)@")
  if op == "get" then
    local row, err = msys.db.fetch_row(DS, "GET ?", { arg })
    return report(vctx, row and row[1] or err)
  elseif op == "nocache" then
    local row, err = msys.db.fetch_row(DS, "GET ?", { arg },
                                       { nocache = true })
    return report(vctx, row and row[1] or err)
  elseif op == "inject" then
    local key = unhex(arg)
    local ok, err = msys.db.execute(DS, "SET ? ?", { key, "injected" })
    if not ok then return report(vctx, err) end
    local row = msys.db.fetch_row(DS, "GET ?", { key }, { nocache = true })
    return report(vctx, row and row[1])
  elseif op == "customer" then
    local row, err = msys.db.fetch_row(DS, "HGETALL customer:?", { arg })
    return report(vctx, row and row.binding or err or "none")
  elseif op == "list" then
    local out = {}
    for row in msys.db.query(DS, "LRANGE ? 0 -1", { arg }) do
      out[#out + 1] = row[1]
    end
    return report(vctx, table.concat(out, ","))
  elseif op == "raise" then
    msys.db.fetch_row(DS, "GET ? ?", { "only-one" }, { raise_error = true })
    return report(vctx, "not raised")
  elseif op == "nods" then
    local row, err = msys.db.fetch_row("nosuch", "GET x")
    return report(vctx, err)
  elseif op == "cmd" then
    local v, err = msys.redis.command(DS, "HMGET", "customer:" .. arg,
                                      "binding", "missing")
    return report(vctx, v and (tostring(v[1]) .. "|" .. tostring(v[2]))
                       or err)
  end
  return phase("rcptto", vctx)
end

function mod:validate_data(msg, accept, vctx) return phase("data", vctx) end

function mod:validate_set_binding(msg)
  local row = msys.db.fetch_row(DS, "HGETALL customer:?", { "acme" })
  if row ~= nil and row.binding ~= nil then
    msg:binding(row.binding)
  end
  msys.redis.command(DS, "INCR", "count:set_binding")
  return msys.core.VALIDATE_CONT
end

msys.registerModule("rtest", mod)
'''


def policy_conf(redis_port, shards=2, ds_extra="", suppression=True,
                test_module=True, db=0):
    scripts = ['  script "boot" { source = "msys.boot" }']
    if suppression:
        scripts.append('  script "suppression" '
                       '{ source = "scripts.suppression" }')
    if test_module:
        scripts.append('  script "rtest" { source = "scripts.rtest" }')
    extra = ('Datasource "r" {\n  uri = ( "redis://127.0.0.1:%d/%d" )\n%s}\n'
             'Datasource "redis" {\n  uri = ( "redis://127.0.0.1:%d/%d" )\n'
             '%s}\n'
             'Binding "acme-pool" { }\n'
             'scriptlet "scriptlet" {\n%s\n}\n'
             % (redis_port, db, ds_extra, redis_port, db, ds_extra,
                "\n".join(scripts)))
    return harness.conf(shards=shards, extra=extra)


class RedisTest(harness.DaemonTest):

    def setUp(self):
        if REDIS_SERVER is None:
            self.skipTest("no redis-server")
        self.redis = Redis().start()
        self.addCleanup(self.redis.cleanup)

    def daemon(self, metrics=False, **kw):
        text = policy_conf(self.redis.port, **kw)
        if metrics:
            text += 'Metrics_Listener { Listen "127.0.0.1:0" { } }\n'
        d = self.start_daemon(text, start=False)
        os.makedirs(os.path.join(d.dir, "scripts"))
        shutil.copy(os.path.join(SCRIPTS, "suppression.lua"),
                    os.path.join(d.dir, "scripts"))
        with open(os.path.join(d.dir, "scripts", "rtest.lua"), "w") as f:
            f.write(TEST_LUA)
        d.start()
        return d

    def session(self, d):
        c = harness.SMTPConn(d.host, d.port)
        self.addCleanup(c.close)
        self.assertReply(c.greeting(), 220)
        self.assertReply(c.ehlo(), 250)
        self.assertReply(c.cmd("MAIL FROM:<s@client.test>"), 250)
        return c

    def value(self, c, rcpt):
        r = c.cmd("RCPT TO:<%s>" % rcpt)
        self.assertEqual(r.code, 550, r)
        m = re.match(r"5\.7\.1 value=(.*)$", r.text, re.S)
        self.assertIsNotNone(m, r)
        return m.group(1)

    # --- lookups ------------------------------------------------------------

    def test_phases(self):
        d = self.daemon()
        self.redis.cmd("HSET", "customer:acme", "binding", "acme-pool")
        c = self.session(d)
        self.assertReply(c.cmd("RCPT TO:<a@dest.test>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        c.send(harness.make_message()[1] + b".\r\n")
        r = c.read_reply()
        self.assertReply(r, 250)
        c.cmd("QUIT")
        for ph in ("connect", "ehlo", "mailfrom", "rcptto", "data",
                   "set_binding"):
            self.assertEqual(self.redis.cmd("GET", "count:" + ph), b"1", ph)
        # The binding chosen from Redis went with the message.
        sp = d.spool(body=False)
        self.assertEqual(len(sp), 1)
        self.assertEqual(sp.messages[0].get("binding"), "acme-pool",
                         sp.messages[0])
        # A value in Redis decides at each phase.
        for ph, step in (("connect", 0), ("ehlo", 1), ("mailfrom", 2),
                         ("rcptto", 3), ("data", 4)):
            self.redis.cmd("SET", "phase:" + ph, "reject")
            c = harness.SMTPConn(d.host, d.port)
            self.addCleanup(c.close)
            cmds = ["EHLO c.test", "MAIL FROM:<s@client.test>",
                    "RCPT TO:<a@dest.test>", "DATA"]
            r = c.greeting()
            for i in range(step):
                if r.code >= 400:
                    break
                r = c.cmd(cmds[i])
            if ph == "data":
                self.assertReply(r, 354)
                c.send(harness.make_message()[1] + b".\r\n")
                r = c.read_reply()
            self.assertEqual(r.code // 100, 5, (ph, r))
            self.assertIn("rejected at " + ph, r.text)
            self.redis.cmd("DEL", "phase:" + ph)
            c.close()

    def test_rows_and_errors(self):
        d = self.daemon()
        self.redis.cmd("HSET", "customer:7", "binding", "b7")
        self.redis.cmd("RPUSH", "l", "x", "y", "z")
        self.redis.cmd("SET", "k", "v")
        c = self.session(d)
        self.assertEqual(self.value(c, "get+k@t.test"), "v")
        self.assertEqual(self.value(c, "customer+7@t.test"), "b7")
        self.assertEqual(self.value(c, "customer+8@t.test"), "none")
        self.assertEqual(self.value(c, "list+l@t.test"), "x,y,z")
        self.assertEqual(self.value(c, "cmd+7@t.test"), "b7|false")
        self.assertIn("no datasource named 'nosuch'",
                      self.value(c, "nods@t.test"))
        # raise_error: the callout fails, policy fails closed with 451.
        r = c.cmd("RCPT TO:<raise@t.test>")
        self.assertReply(r, 451, "4.3.0")
        self.assertIn("parameters given", d.paniclog())
        # The suppression example.
        self.redis.cmd("SADD", "suppressed", "gone@t.test")
        r = c.cmd("RCPT TO:<Gone@T.test>")
        self.assertReply(r, 550, "5.7.1")
        self.assertIn("suppression", r.text)

    def metrics(self, d):
        """{name: value summed over shards} from /metrics"""
        import urllib.request
        m = re.search(r"control: metrics listening on 127\.0\.0\.1:(\d+)",
                      d.paniclog())
        self.assertIsNotNone(m, "no metrics listener")
        with urllib.request.urlopen("http://127.0.0.1:%s/metrics"
                                    % m.group(1), timeout=10) as r:
            text = r.read().decode()
        out = {}
        for line in text.splitlines():
            mm = re.match(r"^(ringmail_redis_\w+)(\{[^}]*\})? (\d+)$", line)
            if mm:
                out[mm.group(1)] = out.get(mm.group(1), 0) + int(mm.group(3))
        return out

    def test_cache(self):
        d = self.daemon(shards=1, metrics=True,
                        ds_extra="  cache_life = 60\n"
                                 "  cache_size = 100\n")
        self.redis.cmd("SET", "ck", "one")
        c = self.session(d)
        self.assertEqual(self.value(c, "get+ck@t.test"), "one")
        self.redis.cmd("SET", "ck", "two")
        # Cached for cache_life on this shard; nocache reads Redis.
        self.assertEqual(self.value(c, "get+ck@t.test"), "one")
        self.assertEqual(self.value(c, "nocache+ck@t.test"), "two")
        self.assertEqual(self.value(c, "get+ck@t.test"), "one")
        # A missing key is cached too (no row).
        self.assertEqual(self.value(c, "get+absent@t.test"), "nil")
        self.redis.cmd("SET", "absent", "now")
        self.assertEqual(self.value(c, "get+absent@t.test"), "nil")
        self.assertEqual(self.value(c, "nocache+absent@t.test"), "now")
        c.cmd("QUIT")
        # The Redis client's counters reach /metrics (published per tick).
        deadline = time.monotonic() + harness.t(10)
        while True:
            m = self.metrics(d)
            if m.get("ringmail_redis_cache_hits_total", 0) >= 3 or \
                    time.monotonic() > deadline:
                break
            time.sleep(0.1)
        self.assertGreaterEqual(m.get("ringmail_redis_cache_hits_total"), 3)
        self.assertGreaterEqual(m.get("ringmail_redis_cache_misses_total"),
                                2)
        self.assertGreaterEqual(m.get("ringmail_redis_commands_total"), 4)
        self.assertEqual(m.get("ringmail_redis_replies_total"),
                         m.get("ringmail_redis_commands_total"))
        self.assertEqual(m.get("ringmail_redis_breakers_open"), 0)
        d.stop_clean()
        self.assertRegex(d.paniclog(), r"datasource r: cache [1-9]\d* hits")

    def test_injection(self):
        d = self.daemon()
        self.redis.cmd("SET", "sentinel", "alive")
        evil = [b"a\r\n*1\r\n$8\r\nFLUSHALL\r\n",
                b"b\r\nDEL sentinel\r\n",
                b"c ? ?\nFLUSHDB",
                b"$3\r\nSET\r\n*3\r\n"]
        c = self.session(d)
        for key in evil:
            v = self.value(c, "inject+%s@t.test" % key.hex())
            self.assertEqual(v, "injected", key)
            self.assertEqual(self.redis.cmd("GET", key), b"injected")
        self.assertEqual(self.redis.cmd("GET", "sentinel"), b"alive")
        # Nothing else was created or run: exactly the keys we expect.
        keys = set(self.redis.cmd("KEYS", "*"))
        expect = set(evil) | {b"sentinel", b"count:connect", b"count:ehlo",
                              b"count:mailfrom"}
        self.assertEqual(keys, expect)
        info = self.redis.cmd("INFO", "commandstats").decode()
        self.assertNotIn("cmdstat_flushall", info)
        self.assertNotIn("cmdstat_flushdb", info)
        self.assertNotIn("cmdstat_del", info)

    def test_concurrent_pipelining(self):
        d = self.daemon(ds_extra="  connections = 2\n")
        for i in range(0, 400, 3):
            self.redis.cmd("SADD", "suppressed", "r%d@t.test" % i)
        errors = []
        sessions, rcpts = 40, 10

        def client(n):
            try:
                c = harness.SMTPConn(d.host, d.port)
                try:
                    c.greeting()
                    c.ehlo()
                    c.cmd("MAIL FROM:<s@client.test>")
                    # Pipelined RCPTs: every lookup of the batch in flight.
                    idx = [n * rcpts + k for k in range(rcpts)]
                    c.send("".join("RCPT TO:<r%d@t.test>\r\n" % i
                                   for i in idx))
                    for i, r in zip(idx, c.read_replies(len(idx))):
                        want = 550 if i % 3 == 0 else 250
                        if r.code != want:
                            errors.append((i, r))
                    c.cmd("QUIT")
                finally:
                    c.close()
            except Exception as e:  # noqa: BLE001
                errors.append((n, repr(e)))

        th = [threading.Thread(target=client, args=(n,))
              for n in range(sessions)]
        for x in th:
            x.start()
        for x in th:
            x.join(t(60))
        self.assertEqual(errors, [])
        d.stop_clean()
        # Pipelining: far fewer sends than commands on the datasource.
        cmds = sends = 0
        for m in re.finditer(r"datasource redis: (\d+) commands, .*?"
                             r"(\d+) sends", d.paniclog()):
            cmds += int(m.group(1))
            sends += int(m.group(2))
        self.assertGreaterEqual(cmds, sessions * rcpts)
        self.assertLess(sends, cmds)

    def test_password_and_db(self):
        self.redis.cleanup()
        self.redis = Redis(password="s3cret pass").start()
        self.addCleanup(self.redis.cleanup)
        d = self.daemon(ds_extra='  password = "s3cret pass"\n', db=2)
        c = self.session(d)
        self.assertEqual(self.value(c, "inject+6b31@t.test"), "injected")
        self.assertEqual(self.redis.cmd("GET", "k1", db=2), b"injected")
        self.assertIsNone(self.redis.cmd("GET", "k1"))

    def test_wrong_password(self):
        self.redis.cleanup()
        self.redis = Redis(password="right").start()
        self.addCleanup(self.redis.cleanup)
        d = self.daemon(shards=1, ds_extra='  password = "wrong"\n',
                        test_module=False)
        r, dt = self.rcpt_timed(d, "x@t.test")
        self.assertReply(r, 451, "4.3.0")
        self.assertLess(dt, t(1.0))
        self.wait_log(d, "AUTH/SELECT refused", t(5))

    # --- outages ------------------------------------------------------------

    def rcpt_timed(self, d, rcpt):
        c = harness.SMTPConn(d.host, d.port)
        try:
            c.greeting()
            c.ehlo()
            c.cmd("MAIL FROM:<s@client.test>")
            t0 = time.monotonic()
            r = c.cmd("RCPT TO:<%s>" % rcpt, timeout=t(10))
            return r, time.monotonic() - t0
        finally:
            c.close()

    def wait_log(self, d, text, timeout):
        deadline = time.monotonic() + timeout
        while text not in d.paniclog() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.assertIn(text, d.paniclog())

    def test_redis_stopped_and_back(self):
        # The suppression example alone: lookups at RCPT only.
        d = self.daemon(shards=1, test_module=False)
        self.redis.cmd("SADD", "suppressed", "x@t.test")
        r, _ = self.rcpt_timed(d, "x@t.test")
        self.assertReply(r, 550, "5.7.1")
        # Sessions in flight while Redis goes away.
        stop = threading.Event()
        seen = []

        def load():
            while not stop.is_set():
                try:
                    r, dt = self.rcpt_timed(d, "x@t.test")
                    seen.append((r.code, dt))
                except Exception as e:  # noqa: BLE001
                    seen.append((repr(e), 0))

        th = [threading.Thread(target=load) for _ in range(4)]
        for x in th:
            x.start()
        time.sleep(0.3)
        self.redis.stop()
        time.sleep(t(1.5))
        stop.set()
        for x in th:
            x.join(t(30))
        codes = {c for c, _ in seen}
        self.assertTrue(codes <= {550, 451}, seen[-10:])
        self.assertIn(451, codes)
        self.assertLess(max(dt for _, dt in seen), t(1.0))
        # Redis gone: reconnects fail, the circuit opens; then every
        # lookup fails at once, never hangs.
        for _ in range(20):
            r, dt = self.rcpt_timed(d, "x@t.test")
            self.assertReply(r, 451, "4.3.0")
            self.assertLess(dt, t(0.5))
            if "circuit open" in d.paniclog():
                break
            time.sleep(0.3)
        self.wait_log(d, "circuit open", t(10))
        r, dt = self.rcpt_timed(d, "x@t.test")
        self.assertReply(r, 451, "4.3.0")
        self.assertLess(dt, t(0.1))
        # Redis back on the same port: the circuit closes.
        self.redis.start()
        self.redis.cmd("SADD", "suppressed", "x@t.test")
        deadline = time.monotonic() + t(15)
        while True:
            r, _ = self.rcpt_timed(d, "x@t.test")
            if r.code == 550 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assertReply(r, 550, "5.7.1")
        self.wait_log(d, "circuit closed", t(5))
        r, _ = self.rcpt_timed(d, "ok@t.test")
        self.assertReply(r, 250)

    def test_redis_sigstop(self):
        d = self.daemon(shards=1, test_module=False)
        r, _ = self.rcpt_timed(d, "ok@t.test")
        self.assertReply(r, 250)
        self.redis.signal(signal.SIGSTOP)
        try:
            times = []
            for i in range(8):
                r, dt = self.rcpt_timed(d, "ok%d@t.test" % i)
                self.assertReply(r, 451, "4.3.0")
                times.append(dt)
            # timeout = 200 ms: no lookup waits much longer.
            self.assertLess(max(times), t(0.2) + 0.5, times)
            self.assertIn("circuit open", d.paniclog())
        finally:
            self.redis.signal(signal.SIGCONT)
        deadline = time.monotonic() + t(15)
        while True:
            r, _ = self.rcpt_timed(d, "ok@t.test")
            if r.code == 250 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        self.assertReply(r, 250)
        self.wait_log(d, "circuit closed", t(5))


class ConfigTest(harness.DaemonTest):

    def bad(self, ds, want):
        text = harness.conf(extra=ds)
        d = self.start_daemon(text, start=False)
        with self.assertRaises(harness.DaemonError) as e:
            d.start()
        self.assertIn(want, str(e.exception))

    def test_bad_datasources(self):
        self.bad('Datasource "r" { uri = ( "redis://redis.example:6379" ) }',
                 "bad uri")
        self.bad('Datasource "r" { cache_life = 10 }', "has no uri")
        self.bad('Datasource "r" { uri = "redis://127.0.0.1" timeout = 0 }',
                 "option 'timeout' expects a duration")
        self.bad('Datasource "r" { uri = "redis://127.0.0.1" }\n'
                 'Datasource "r" { uri = "redis://127.0.0.1" }',
                 "already defined")


if __name__ == "__main__":
    harness.main(timeout=240)
