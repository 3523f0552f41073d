#!/usr/bin/env python3
"""
test_delivery - ringmaild relays what it accepts: end to end into real
sinks, retries, bounces (DSNs that reach the sink), expiry, MX routing
through a real dnsmasq, connection reuse, delivery across a restart and
a drain, and the delivery log.

Two sinks: bench/ringsink (the io_uring sink: tokens recorded per
message, sessions counted, tempfail and reject by recipient, latency),
and PySink below, a small threaded SMTP server that keeps each message's
envelope and exact data, for what ringsink cannot show (byte-exact
bodies, MAIL FROM:<> of a DSN, its text).
"""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import unittest

import harness as h

RINGSINK = os.path.join(h.BUILD, "bench", "ringsink")
DNSMASQ = "/usr/sbin/dnsmasq"
LOG_FIELDS = ("ts", "id", "shard", "sender", "rcpt", "outcome", "code",
              "enhanced", "response", "host", "ip", "attempt",
              "queue_seconds")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_until(pred, timeout, what):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError("timed out after %.0f s waiting for %s"
                                 % (timeout, what))
        time.sleep(0.05)


# --- sinks ------------------------------------------------------------------

class RingSink:
    """bench/ringsink on 127.0.0.1 (port 0: the kernel's pick)."""

    def __init__(self, workdir, args=(), port=0, name="sink"):
        self.dir = workdir
        self.rec = os.path.join(workdir, name + ".rec")
        self.json_path = os.path.join(workdir, name + ".json")
        out_path = os.path.join(workdir, name + ".out")
        with open(out_path, "wb") as outf, \
                open(os.path.join(workdir, name + ".err"), "wb") as errf:
            self.proc = subprocess.Popen(
                [RINGSINK, "--record", self.rec, "--json", self.json_path] +
                list(args) + ["127.0.0.1:%d" % port],
                stdout=outf, stderr=errf,
                preexec_fn=lambda: h._child_setup())

        def ready():
            with open(out_path) as f:
                return re.search(r"listening on 127\.0\.0\.1:(\d+)",
                                 f.read())
        try:
            m = wait_until(ready, h.t(10), "ringsink's first line")
        except AssertionError:
            self.proc.kill()
            self.proc.wait()
            raise
        self.port = int(m.group(1))
        self.counts = None

    def tokens(self):
        """
        Counter of the X-Token values (make_message's Message-ID is
        <token@client.test>) in the record, which is flushed every second.
        """
        out = {}
        try:
            with open(self.rec) as f:
                for line in f:
                    tok = line.split(" ", 1)[0].strip("<>")
                    tok = tok.split("@", 1)[0]
                    out[tok] = out.get(tok, 0) + 1
        except OSError:
            pass
        return out

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(h.t(10))
        with open(self.json_path) as f:
            self.counts = json.load(f)
        return self.counts


class PySink:
    """
    A recording SMTP server: one thread per connection, no PIPELINING.
    messages: (mail_from, [rcpts], data) with data unstuffed; recipients
    containing `reject` get 550 5.1.1, containing `tempfail` 451 4.2.0.
    """

    def __init__(self, reject=None, tempfail=None):
        self.reject = reject
        self.tempfail = tempfail
        self.messages = []
        self.sessions = 0
        self.lock = threading.Lock()
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.closed = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.sessions += 1
            threading.Thread(target=self._session, args=(conn,),
                             daemon=True).start()

    def _session(self, conn):
        conn.settimeout(h.t(30))
        f = conn.makefile("rb")

        def say(text):
            conn.sendall(text.encode() + b"\r\n")
        try:
            say("220 pysink ESMTP")
            sender, rcpts = None, []
            while True:
                line = f.readline()
                if not line:
                    return
                cmd = line.rstrip(b"\r\n").decode("utf-8", "replace")
                verb = cmd[:4].upper()
                if verb == "EHLO":
                    say("250-pysink\r\n250-8BITMIME\r\n250 SIZE 100000000")
                elif verb == "HELO":
                    say("250 pysink")
                elif verb == "MAIL":
                    sender = re.search(r"<([^>]*)>", cmd).group(1)
                    rcpts = []
                    say("250 2.1.0 ok")
                elif verb == "RCPT":
                    r = re.search(r"<([^>]*)>", cmd).group(1)
                    if self.reject and self.reject in r:
                        say("550 5.1.1 no such user here")
                    elif self.tempfail and self.tempfail in r:
                        say("451 4.2.0 try again later")
                    else:
                        rcpts.append(r)
                        say("250 2.1.5 ok")
                elif verb == "DATA":
                    if not rcpts:
                        say("554 5.5.1 no valid recipients")
                        continue
                    say("354 go ahead")
                    data = b""
                    while True:
                        l = f.readline()
                        if not l:
                            return
                        if l == b".\r\n":
                            break
                        if l.startswith(b"."):
                            l = l[1:]
                        data += l
                    with self.lock:
                        self.messages.append((sender, rcpts, data))
                    say("250 2.0.0 queued")
                    sender, rcpts = None, []
                elif verb == "RSET":
                    sender, rcpts = None, []
                    say("250 2.0.0 ok")
                elif verb == "NOOP":
                    say("250 2.0.0 ok")
                elif verb == "QUIT":
                    say("221 2.0.0 bye")
                    return
                else:
                    say("502 5.5.2 what")
        except OSError:
            return
        finally:
            conn.close()

    def snapshot(self):
        with self.lock:
            return list(self.messages)

    def close(self):
        self.closed = True
        self.sock.close()


# --- the tests --------------------------------------------------------------

class DeliveryTest(h.DaemonTest):

    def setUp(self):
        self.work = tempfile.mkdtemp(prefix="ringmail-dlv-")
        self.sinks = []
        self.addCleanup(self._cleanup)

    def _cleanup(self):
        for s in self.sinks:
            if isinstance(s, PySink):
                s.close()
            elif s.proc.poll() is None:
                s.proc.kill()
                s.proc.wait()
        shutil.rmtree(self.work, ignore_errors=True)

    def ringsink(self, args=(), port=0, name="sink"):
        s = RingSink(self.work, args, port, name)
        self.sinks.append(s)
        return s

    def pysink(self, **kw):
        s = PySink(**kw)
        self.sinks.append(s)
        return s

    def daemon(self, port, **opts):
        o = dict(Retry_Interval="1s")
        o.update(opts)
        return self.start_daemon(Gateway='"127.0.0.1:%d"' % port, **o)

    # helpers
    def log_lines(self, d):
        path = os.path.join(d.dir, "log", "delivery.log")
        try:
            with open(path, "rb") as f:
                text = f.read().decode("utf-8")
        except OSError:
            return []
        return [json.loads(l) for l in text.splitlines() if l.strip()]

    def wait_log(self, d, pred, timeout, what):
        return wait_until(lambda: [r for r in self.log_lines(d) if pred(r)],
                          timeout, what)

    def send(self, d, sender="sender@client.test", rcpts=("rcpt@dest.test",),
             n=1, **kw):
        """n messages on one connection; their (token, bytes, queue id)."""
        out = []
        with d.connect() as c:
            self.assertReply(c.greeting(), 220)
            self.assertReply(c.ehlo(), 250)
            for _ in range(n):
                tok, msg = h.make_message(sender=sender or "x@client.test",
                                          rcpts=rcpts, **kw)
                r = h.send_raw_message(c, msg, sender=sender, rcpts=rcpts)
                self.assertReply(r, 250)
                out.append((tok, msg, h.queued_id(r)))
            c.cmd("QUIT")
        return out

    def wait_spool_empty(self, d, timeout=None):
        wait_until(lambda: len(d.spool(body=False)) == 0,
                   timeout or h.t(20), "the spool to drain")

    def check_log_fields(self, lines):
        self.assertTrue(lines)
        for r in lines:
            for k in LOG_FIELDS:
                self.assertIn(k, r, "delivery log line without %s: %r"
                              % (k, r))
            self.assertIn(r["outcome"], ("delivered", "deferred", "bounced",
                                         "expired"))

    # end to end
    def test_relay_intact_exactly_once(self):
        sink = self.pysink()
        d = self.daemon(sink.port)
        rcpts = ("a@dest.test", "b@dest.test", "c@other.test")
        sent = self.send(d, rcpts=rcpts, n=5,
                         body=[b"line one", b".leading dot", b"", b"end"])
        wait_until(lambda: len(sink.snapshot()) >= 10, h.t(20),
                   "10 deliveries (5 messages, 2 domains)")
        time.sleep(0.5)
        got = sink.snapshot()
        self.assertEqual(len(got), 10, "each message once per domain")
        for tok, msg, qid in sent:
            mine = [m for m in got if tok.encode() in m[2]]
            self.assertEqual(len(mine), 2, tok)
            for sender, rc, data in mine:
                self.assertEqual(sender, "sender@client.test")
                self.assertEqual(h.strip_received(data), msg,
                                 "the body arrives intact, Received added")
            self.assertEqual(sorted(sum((m[1] for m in mine), [])),
                             sorted(rcpts))
        self.wait_spool_empty(d)
        lines = self.log_lines(d)
        self.check_log_fields(lines)
        delivered = [r for r in lines if r["outcome"] == "delivered"]
        self.assertEqual(len(delivered), 15, "one line per recipient")
        self.assertEqual(len(lines), 15, "nothing but deliveries")
        for r in delivered:
            self.assertEqual(r["code"], 250)
            self.assertEqual(r["ip"], "127.0.0.1")
            self.assertEqual(r["attempt"], 1)
        self.assertEqual({r["id"] for r in delivered},
                         {qid for _, _, qid in sent})
        d.stop_clean()
        self.assertRegex(d.stderr(), r"duplicate window max \d+ \(now 0\)")

    def test_connection_reuse(self):
        sink = self.ringsink()
        # At most 4 at once: how many open at once depends on how busy the
        # machine is, how many are used again does not.
        d = self.daemon(sink.port, Max_Outbound_Connections="4")
        n = 40
        sent = self.send(d, n=n)
        toks = {tok for tok, _, _ in sent}
        wait_until(lambda: toks <= set(sink.tokens()), h.t(20),
                   "every message at the sink")
        d.stop_clean()
        counts = sink.stop()
        self.assertEqual(counts["accepted"], n)
        self.assertEqual(counts["duplicate_tokens"], 0)
        self.assertLessEqual(counts["sessions"], n // 5,
                             "connections are reused: %r" % counts)

    def test_tempfail_retried_then_delivered(self):
        port = free_port()
        a = self.ringsink(["--tempfail-rcpt", "soft"], port=port, name="a")
        d = self.daemon(a.port)
        [(tok, _, qid)] = self.send(d, rcpts=("ok@dest.test",
                                              "soft@dest.test"))
        self.wait_log(d, lambda r: r["rcpt"] == "soft@dest.test" and
                      r["outcome"] == "deferred", h.t(10), "a deferral")
        a.stop()
        b = self.ringsink(port=port, name="b")
        self.wait_log(d, lambda r: r["rcpt"] == "soft@dest.test" and
                      r["outcome"] == "delivered", h.t(20),
                      "the retry delivered")
        self.wait_spool_empty(d)
        d.stop_clean()
        b.stop()
        self.assertEqual(a.counts["accepted"], 1)      # ok@ on attempt 1
        self.assertEqual(b.counts["accepted"], 1)      # soft@ later
        self.assertEqual(b.counts["rcpt_accepted"], 1)
        lines = self.log_lines(d)
        self.check_log_fields(lines)
        ok = [r for r in lines if r["rcpt"] == "ok@dest.test"]
        self.assertEqual([r["outcome"] for r in ok], ["delivered"])
        soft = [r for r in lines if r["rcpt"] == "soft@dest.test"]
        self.assertEqual(soft[-1]["outcome"], "delivered")
        self.assertGreaterEqual(soft[-1]["attempt"], 2)
        self.assertTrue(all(r["outcome"] == "deferred" for r in soft[:-1]))
        self.assertTrue(all(r["id"] == qid for r in lines))

    def test_reject_bounces_with_dsn(self):
        sink = self.pysink(reject="bad")
        d = self.daemon(sink.port)
        [(tok, msg, qid)] = self.send(d, sender="snd@client.test",
                                      rcpts=("good@dest.test",
                                             "bad@dest.test"))
        dsn = wait_until(lambda: [m for m in sink.snapshot() if m[0] == ""],
                         h.t(20), "a DSN at the sink")
        self.assertEqual(len(dsn), 1)
        sender, rcpts, data = dsn[0]
        self.assertEqual(rcpts, ["snd@client.test"])
        text = data.decode("utf-8", "replace")
        self.assertIn("multipart/report", text)
        self.assertIn("report-type=delivery-status", text)
        self.assertIn("Final-Recipient: rfc822; bad@dest.test", text)
        self.assertIn("Action: failed", text)
        self.assertIn("Status: 5.1.1", text)
        self.assertIn("no such user here", text)
        self.assertIn(qid, text)
        self.assertIn(tok, text, "the original's header comes back")
        self.assertNotIn("good@dest.test\r\nAction", text)
        orig = [m for m in sink.snapshot() if m[0] == "snd@client.test"]
        self.assertEqual(len(orig), 1)
        self.assertEqual(orig[0][1], ["good@dest.test"])
        self.wait_spool_empty(d)
        lines = self.log_lines(d)
        self.check_log_fields(lines)
        bounced = [r for r in lines if r["outcome"] == "bounced"]
        self.assertEqual(len(bounced), 1)
        self.assertEqual(bounced[0]["rcpt"], "bad@dest.test")
        self.assertEqual(bounced[0]["code"], 550)
        self.assertEqual(bounced[0]["enhanced"], "5.1.1")
        dsn_lines = [r for r in lines if r["sender"] == ""]
        self.assertEqual([(r["rcpt"], r["outcome"]) for r in dsn_lines],
                         [("snd@client.test", "delivered")])
        self.assertNotEqual(dsn_lines[0]["id"], qid)

    def test_null_sender_never_bounced(self):
        sink = self.pysink(reject="bad")
        d = self.daemon(sink.port)
        with d.connect() as c:
            self.assertReply(c.greeting(), 220)
            self.assertReply(c.ehlo(), 250)
            tok, msg = h.make_message(rcpts=("bad@dest.test",))
            self.assertReply(h.send_raw_message(c, msg, sender="",
                                                rcpts=("bad@dest.test",)),
                             250)
        self.wait_log(d, lambda r: r["outcome"] == "bounced", h.t(10),
                      "the bounce")
        self.wait_spool_empty(d)
        time.sleep(0.5)
        self.assertEqual(sink.snapshot(), [], "no DSN for <>")

    def test_expiry_bounces(self):
        sink = self.pysink(tempfail="soft")
        d = self.daemon(sink.port, Message_Expiration="3s")
        start = time.monotonic()
        [(tok, msg, qid)] = self.send(d, sender="snd@client.test",
                                      rcpts=("soft@dest.test",))
        dsn = wait_until(lambda: [m for m in sink.snapshot() if m[0] == ""],
                         h.t(20), "the expiry DSN")
        elapsed = time.monotonic() - start
        self.assertGreaterEqual(elapsed, 2.5, "not before the expiry")
        text = dsn[0][2].decode("utf-8", "replace")
        self.assertEqual(dsn[0][1], ["snd@client.test"])
        self.assertIn("Final-Recipient: rfc822; soft@dest.test", text)
        self.assertIn("Action: failed", text)
        self.assertIn("try again later", text)
        self.wait_spool_empty(d)
        lines = [r for r in self.log_lines(d) if r["id"] == qid]
        self.assertEqual(lines[-1]["outcome"], "expired")
        self.assertTrue(all(r["outcome"] == "deferred" for r in lines[:-1]))
        self.assertGreaterEqual(len(lines), 2)

    def test_mx_routing_through_dnsmasq(self):
        if not os.path.exists(DNSMASQ):
            self.skipTest("no dnsmasq")
        sink = self.pysink()
        dport = free_port()
        dns = subprocess.Popen(
            [DNSMASQ, "--keep-in-foreground", "--no-resolv", "--no-hosts",
             "--port=%d" % dport, "--listen-address=127.0.0.1",
             "--bind-interfaces", "--pid-file=", "--conf-file=/dev/null",
             "--log-facility=/dev/null", "--local=/test/", "--local-ttl=1",
             "--user=root",
             "--mx-host=mxroute.test,mail.mxroute.test,10",
             "--mx-host=mxroute.test,dead.mxroute.test,5",
             "--host-record=mail.mxroute.test,127.0.0.1",
             "--host-record=dead.mxroute.test,127.0.0.7"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            preexec_fn=lambda: h._child_setup())
        self.addCleanup(lambda: (dns.kill(), dns.wait()))
        time.sleep(0.3)
        if dns.poll() is not None:
            self.skipTest("dnsmasq did not start")
        text = h.conf(Nameservers='( "127.0.0.1:%d" )' % dport,
                      Outbound_SMTP_Port=sink.port, Retry_Interval="1s")
        text = re.sub(r"^Gateway = .*\n", "", text, flags=re.M)
        d = self.start_daemon(text)
        [(tok, msg, qid)] = self.send(d, sender="snd@client.test",
                                      rcpts=("u@mxroute.test",
                                             "v@nosuchdomain.test"))
        got = wait_until(lambda: [m for m in sink.snapshot()
                                  if tok.encode() in m[2]], h.t(20),
                         "delivery through the MX")
        self.assertEqual(got[0][1], ["u@mxroute.test"])
        self.assertEqual(h.strip_received(got[0][2]), msg)
        lines = self.wait_log(d, lambda r: r["rcpt"] == "u@mxroute.test" and
                              r["outcome"] == "delivered", h.t(5), "log")
        self.assertEqual(lines[0]["host"], "mail.mxroute.test")
        self.assertEqual(lines[0]["ip"], "127.0.0.1")
        # NXDOMAIN bounces with 5.1.2 (the DSN itself goes to client.test,
        # which does not exist either: dropped, never bounced again).
        nx = self.wait_log(d, lambda r: r["rcpt"] == "v@nosuchdomain.test",
                           h.t(10), "the NXDOMAIN outcome")
        self.assertEqual(nx[0]["outcome"], "bounced")
        self.assertEqual(nx[0]["enhanced"], "5.1.2")
        self.wait_spool_empty(d)

    def test_done_segments_deleted(self):
        sink = self.ringsink()
        d = self.daemon(sink.port, Spool_Segment_Size="1M")
        sent = self.send(d, n=300, size=3000)
        toks = {tok for tok, _, _ in sent}
        wait_until(lambda: toks <= set(sink.tokens()), h.t(40),
                   "every message at the sink")
        self.wait_spool_empty(d)

        def segments():
            n = 0
            for sh in os.listdir(d.spool_base):
                n += len([f for f in os.listdir(os.path.join(d.spool_base,
                                                             sh))
                          if f.startswith("seg-")])
            return n
        # Each message and each mark batch takes a 4 KiB block: 300 of
        # them fill several 1 MiB segments; done ones are deleted, leaving
        # per shard the current one and perhaps the next, made ahead.
        wait_until(lambda: segments() <= 2 * d.shards, h.t(10),
                   "done segments deleted (%d left)" % segments())
        d.stop_clean()
        self.assertEqual(sink.stop()["duplicate_tokens"], 0)
        self.assertRegex(d.stderr(), r"[1-9]\d* segments reclaimed")

    def test_binding_source_address(self):
        sink = self.ringsink()
        text = h.conf(Gateway='"127.0.0.1:%d"' % sink.port,
                      Retry_Interval="1s",
                      extra='Binding "default" {\n'
                            '  Bind_Address = "127.0.0.2"\n'
                            '  EHLO_Hostname = "out.test"\n}\n')
        d = self.start_daemon(text)
        [(tok, _, _)] = self.send(d)
        wait_until(lambda: tok in sink.tokens(), h.t(20), "the delivery")
        d.stop_clean()
        sink.stop()
        with open(sink.rec) as f:
            peers = [l.split()[1] for l in f if tok in l]
        self.assertEqual(len(peers), 1)
        self.assertTrue(peers[0].startswith("127.0.0.2:"), peers)

    def test_drain_budget_abandons_counted(self):
        # The sink sits on its reply longer than the drain budget: the
        # delivery is abandoned (counted), the message stays in the spool
        # and goes out again after the restart: the one allowed duplicate.
        sink = self.ringsink(["--latency", "8000"])
        d = self.daemon(sink.port, Shutdown_Timeout="1s")
        [(tok, _, _)] = self.send(d)
        time.sleep(0.5)
        start = time.monotonic()
        d.stop_clean()
        self.assertLess(time.monotonic() - start, h.t(6))
        self.assertRegex(d.stderr(), r"[1-9]\d* abandoned")
        self.assertEqual(len(d.spool(body=False)), 1)
        d.start()
        self.wait_spool_empty(d, h.t(30))
        d.stop_clean()
        self.assertEqual(sink.stop()["accepted"], 2)

    def test_restart_delivers_pending_once(self):
        port = free_port()
        d = self.daemon(port)
        sent = self.send(d, n=5)
        self.wait_log(d, lambda r: r["outcome"] == "deferred", h.t(10),
                      "deferrals: nothing listens yet")
        d.stop_clean()
        self.assertEqual(len(d.spool(body=False)), 5)
        sink = self.ringsink(port=port)
        d.start()
        toks = {tok for tok, _, _ in sent}
        wait_until(lambda: toks <= set(sink.tokens()), h.t(20),
                   "the pending messages after the restart")
        self.wait_spool_empty(d)
        d.stop_clean()
        d.start()
        time.sleep(1.5)
        d.stop_clean()
        counts = sink.stop()
        self.assertEqual(counts["accepted"], 5)
        self.assertEqual(counts["duplicate_tokens"], 0)

    def test_attempts_and_reason_survive_a_restart(self):
        # Nothing listens: every attempt is deferred. After a restart the
        # count goes on (DEFER records), the next attempt waits for its
        # time, and an expiry gives the last reason.
        port = free_port()
        d = self.daemon(port, Shards="1")
        _, _, qid = self.send(d, n=1)[0]
        self.wait_log(d, lambda r: r["outcome"] == "deferred" and
                      r["attempt"] >= 2, h.t(20), "a second deferral")
        d.stop_clean()
        lines = len(self.log_lines(d))
        before = max(r["attempt"] for r in self.log_lines(d)
                     if r["outcome"] == "deferred")
        (m,) = d.spool(body=False).messages
        self.assertEqual(m.get("attempts"), before, m)
        self.assertIn("Connection refused", m.get("last_response", ""), m)
        due_ms = max(x["due_ms"] for x in m["defers"])
        d.start()
        wait_until(lambda: len(self.log_lines(d)) > lines, h.t(20),
                   "an attempt after the restart")
        first = self.log_lines(d)[lines]
        self.assertEqual(first["outcome"], "deferred", first)
        self.assertEqual(first["attempt"], before + 1, first)
        self.assertEqual(first["id"], qid)
        # Not at once: when it was due (the wheel ticks every 100 ms).
        self.assertGreaterEqual(first["ts"] * 1000, due_ms - 150,
                                (first, due_ms))
        d.stop_clean()
        # Expire it now: the bounce names the last reason, not "expired".
        text = open(d.conf_path).read()
        with open(d.conf_path, "w") as f:
            f.write(text + "\nMessage_Expiration = 1s\n")
        d.start()
        self.wait_log(d, lambda r: r["outcome"] == "expired", h.t(20),
                      "the expiry")
        last = [r for r in self.log_lines(d) if r["outcome"] == "expired"][-1]
        self.assertGreater(last["attempt"], before)
        self.assertNotEqual(last["response"], "expired", last)
        d.stop_clean()

    def test_each_destination_keeps_its_own_count_across_a_restart(self):
        # One message, two domains: fast.test retried every second or so,
        # slow.test once an hour. After a restart fast.test goes on from
        # its own count and slow.test still waits for its hour.
        port = free_port()
        d = self.daemon(port, Shards="1",
                        extra='Domain "slow.test" { Retry_Interval = 1h }\n')
        _, _, qid = self.send(d, n=1, rcpts=("a@fast.test", "b@slow.test"))[0]
        self.wait_log(d, lambda r: r["rcpt"] == "a@fast.test" and
                      r["attempt"] >= 3, h.t(20), "a third try of fast.test")
        d.stop_clean()
        lines = len(self.log_lines(d))
        fast = max(r["attempt"] for r in self.log_lines(d)
                   if r["rcpt"] == "a@fast.test")
        slow = [r for r in self.log_lines(d) if r["rcpt"] == "b@slow.test"]
        self.assertEqual([r["attempt"] for r in slow], [1], slow)
        d.start()
        self.wait_log(d, lambda r: r["rcpt"] == "a@fast.test" and
                      r["attempt"] > fast, h.t(20), "fast.test again")
        time.sleep(1)
        after = self.log_lines(d)[lines:]
        self.assertEqual([r["attempt"] for r in after
                          if r["rcpt"] == "a@fast.test"][0], fast + 1, after)
        self.assertEqual([r for r in after if r["rcpt"] == "b@slow.test"],
                         [], "slow.test is not due for an hour")
        self.assertEqual({r["id"] for r in after}, {qid})
        d.stop_clean()

    def test_max_retry_interval_caps_the_doubling(self):
        # 1 s doubling would wait about 4 s before the fourth attempt;
        # capped at 1 s every wait is about 1 s.
        port = free_port()
        d = self.daemon(port, Shards="1", Max_Retry_Interval="1s")
        self.send(d, n=1)
        rows = self.wait_log(d, lambda r: r["outcome"] == "deferred" and
                             r["attempt"] >= 4, h.t(20), "a fourth attempt")
        ts = {r["attempt"]: r["ts"] for r in self.log_lines(d)
              if r["outcome"] == "deferred"}
        self.assertLess(ts[4] - ts[3], 2.5, ts)
        d.stop_clean()

    def test_refused_destination_marked_down(self):
        # Every hop refused: the destination is down for a while, so the
        # messages that follow are deferred without dialling it again.
        port = free_port()
        d = self.daemon(port, Shards="1", Retry_Interval="30s")
        self.send(d, n=1)
        self.wait_log(d, lambda r: r["outcome"] == "deferred", h.t(10),
                      "the first deferral")
        self.send(d, n=30)
        wait_until(lambda: len([r for r in self.log_lines(d)
                                if r["outcome"] == "deferred"]) >= 31,
                   h.t(10), "31 deferrals")
        d.stop_clean()
        m = re.search(r"(\d+) connections", d.stderr())
        self.assertIsNotNone(m, d.tail())
        # One attempt, maybe a second racing it; never one per message.
        self.assertLessEqual(int(m.group(1)), 3, d.tail())
        self.assertEqual(len(d.spool(body=False)), 31)

    def test_drain_waits_for_replies(self):
        sink = self.ringsink(["--latency", "1500"])
        d = self.daemon(sink.port)
        sent = self.send(d, n=3)
        # The data is out; the sink holds its replies for 1.5 s.
        time.sleep(0.5)
        d.stop_clean()
        self.assertEqual(len(d.spool(body=False)), 0,
                         "replies awaited and marked before exit")
        d.start()
        time.sleep(1.5)
        d.stop_clean()
        counts = sink.stop()
        self.assertEqual(counts["accepted"], 3)
        self.assertEqual(counts["duplicate_tokens"], 0)
        self.assertEqual(len({tok for tok, _, _ in sent}), 3)


if __name__ == "__main__":
    h.main(timeout=240)
