#!/usr/bin/env python3
"""
ringbench - bench/ringload against bench/ringsink, and ringsink's dialogue

Starts ringsink on 127.0.0.1 port 0 (port read from its first stdout
line), drives it with ringload, and checks:

  tokens       5 sessions x 200 messages (one per connection, then
               pipelined with reuse): the tokens ringsink recorded are
               exactly those ringload reports as 250'd, none twice
  shares       --tempfail-share/--reject-share answer the tokens the hash
               predicts (same function here), and both tools count them
  421          --reply-421-after: ringload counts the 421s, reconnects,
               and every message is accounted for
  latency      --latency delays each final reply without serialising
               sessions
  in_flight    the counts line (SIGUSR1, --progress) counts transactions
               between DATA and their reply; ringload's JSON histogram
  dialogue     raw socket: pipelined commands sent one byte at a time,
               recipient patterns, dot-stuffing, multi-line EHLO, the
               recorded token, rcpt count and unstuffed size
  ipv6         a small run over [::1] (skipped without IPv6)

Standalone script: exit 0 pass, 1 fail, 77 when the binaries are missing.
Environment: RINGMAIL_BUILD (build root), as meson sets it.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest

SRC = os.environ.get("RINGMAIL_SRC") or os.path.abspath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
BUILD = os.environ.get("RINGMAIL_BUILD") or os.path.join(SRC, "build", "dev")
RINGLOAD = os.path.join(BUILD, "bench", "ringload")
RINGSINK = os.path.join(BUILD, "bench", "ringsink")
SKIP_EXIT = 77

os.environ.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1")
os.environ.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")


def _sanitized():
    try:
        with open(RINGSINK, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


SCALE = 3 if _sanitized() else 1


def t(seconds):
    """A timeout, stretched on sanitizer builds."""
    return seconds * SCALE


# --- the token share, as ringsink computes it (ringsink_record.c) ----------

M64 = (1 << 64) - 1


def fnv1a(data):
    h = 14695981039346656037
    for b in data:
        h ^= b
        h = (h * 1099511628211) & M64
    return h


def share(token):
    k = fnv1a(token.encode())
    k ^= k >> 33
    k = (k * 0xff51afd7ed558ccd) & M64
    k ^= k >> 33
    k = (k * 0xc4ceb9fe1a85ec53) & M64
    k ^= k >> 33
    return (k >> 11) / float(1 << 53)


def token(run_id, seq):
    return "%s-%010d" % (run_id, seq)


# --- processes ---------------------------------------------------------------

class Sink:
    """ringsink on port 0 with a record and a JSON file in tmpdir."""

    def __init__(self, tmpdir, *args, listen="127.0.0.1:0"):
        self.record = os.path.join(tmpdir, "record.txt")
        self.json_path = os.path.join(tmpdir, "sink.json")
        self.err_path = os.path.join(tmpdir, "sink.err")
        self.err = open(self.err_path, "w")
        self.proc = subprocess.Popen(
            [RINGSINK, "--record", self.record, "--json", self.json_path]
            + list(args) + [listen],
            stdout=subprocess.PIPE, stderr=self.err, text=True)
        line = self.proc.stdout.readline()
        if not line.startswith("ringsink listening on "):
            self.proc.kill()
            raise AssertionError("ringsink did not start: %r" % line)
        self.addr = line.split()[-1]
        self.port = int(self.addr.rsplit(":", 1)[1])

    def stop(self):
        """SIGTERM; it must exit 0; returns (json, record lines)."""
        self.proc.send_signal(signal.SIGTERM)
        rc = self.proc.wait(t(10))
        self.proc.stdout.close()
        self.err.close()
        if rc != 0:
            with open(self.err_path) as f:
                raise AssertionError("ringsink exit %d: %s" % (rc, f.read()))
        with open(self.json_path) as f:
            js = json.load(f)
        with open(self.record) as f:
            lines = [line.split() for line in f if line.strip()]
        return js, lines

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
        self.err.close()


def ringload(tmpdir, addr, *args, name="rl"):
    """Run ringload to the end; returns (json, 250'd tokens)."""
    js_path = os.path.join(tmpdir, name + ".json")
    tok_path = os.path.join(tmpdir, name + ".tokens")
    cmd = [RINGLOAD, "-q", "--json", js_path, "--tokens", tok_path,
           "--timeout", str(int(t(60)))] + list(args) + [addr]
    p = subprocess.run(cmd, capture_output=True, text=True,
                       timeout=t(90))
    if p.returncode != 0:
        raise AssertionError("%s: exit %d\n%s%s" % (
            " ".join(cmd), p.returncode, p.stdout, p.stderr))
    with open(js_path) as f:
        js = json.load(f)
    with open(tok_path) as f:
        toks = [line.strip() for line in f if line.strip()]
    return js, toks


class Client:
    """A raw SMTP client socket with a timeout and a reply reader."""

    def __init__(self, port, host="127.0.0.1"):
        self.s = socket.create_connection((host, port), timeout=t(10))
        self.s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buf = b""

    def send_bytewise(self, data):
        for i in range(len(data)):
            self.s.sendall(data[i:i + 1])
            if i % 7 == 0:
                time.sleep(0.001)   # let the sink see the pieces apart

    def replies(self, n):
        """n complete replies: [(code, [lines])]."""
        out = []
        lines = []
        while len(out) < n:
            while b"\n" not in self.buf:
                chunk = self.s.recv(4096)
                if not chunk:
                    raise AssertionError("EOF after %r" % out)
                self.buf += chunk
            line, self.buf = self.buf.split(b"\n", 1)
            line = line.rstrip(b"\r").decode()
            lines.append(line)
            if len(line) < 4 or line[3] != "-":
                out.append((int(line[:3]), lines))
                lines = []
        return out

    def eof(self):
        return self.s.recv(1) == b""

    def close(self):
        self.s.close()


# --- tests -----------------------------------------------------------------

class RingBench(unittest.TestCase):

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory(prefix="ringbench-")
        self.sinks = []

    def tearDown(self):
        for s in self.sinks:
            s.kill()
        self.tmp.cleanup()

    def sink(self, *args, **kw):
        s = Sink(self.tmp.name, *args, **kw)
        self.sinks.append(s)
        return s

    def test_tokens(self):
        s = self.sink()
        js1, tok1 = ringload(self.tmp.name, s.addr, "-s", "5", "-m", "200",
                             "--token-prefix", "tok-a", name="a")
        js2, tok2 = ringload(self.tmp.name, s.addr, "-s", "5", "-m", "200",
                             "-P", "-M", "0", "--token-prefix", "tok-b",
                             name="b")
        sj, rec = s.stop()
        for js in (js1, js2):
            self.assertEqual(js["messages"]["ok"], 200, js)
            self.assertEqual(js["messages"]["error"], 0, js)
            self.assertEqual(js["latency_us"]["count"], 200, js)
        self.assertEqual(js2["connections"]["pipelined"], 5)
        self.assertEqual(len(tok1) + len(tok2), 400)
        self.assertEqual(len(set(tok1 + tok2)), 400)
        recorded = [r[0] for r in rec]
        self.assertEqual(sorted(recorded), sorted(tok1 + tok2))
        self.assertEqual(sj["accepted"], 400)
        self.assertEqual(sj["unique_tokens"], 400)
        self.assertEqual(sj["duplicate_tokens"], 0)
        self.assertEqual(sj["sessions"], 205)
        self.assertEqual({r[2] for r in rec}, {"1"})
        self.assertEqual({r[3] for r in rec}, {"1024"})

    def test_shares(self):
        s = self.sink("--tempfail-share", "0.2", "--reject-share", "0.1")
        n = 1000
        js, toks = ringload(self.tmp.name, s.addr, "-s", "5", "-m", str(n),
                            "-P", "-M", "10", "--token-prefix", "share")
        sj, rec = s.stop()
        expect = {"ok": [], "tempfail": [], "permfail": []}
        for seq in range(1, n + 1):
            tok = token("share", seq)
            u = share(tok)
            kind = ("tempfail" if u < 0.2 else
                    "permfail" if u < 0.3 else "ok")
            expect[kind].append(tok)
        # A fair hash gives about 20% and 10%.
        self.assertTrue(150 < len(expect["tempfail"]) < 250, expect)
        self.assertTrue(60 < len(expect["permfail"]) < 140, expect)
        for kind in expect:
            self.assertEqual(js["messages"][kind], len(expect[kind]), kind)
        self.assertEqual(sorted(toks), sorted(expect["ok"]))
        self.assertEqual(sorted(r[0] for r in rec), sorted(expect["ok"]))
        self.assertEqual(sj["accepted"], len(expect["ok"]))
        self.assertEqual(sj["tempfailed"], len(expect["tempfail"]))
        self.assertEqual(sj["rejected"], len(expect["permfail"]))

    def test_421(self):
        s = self.sink("--reply-421-after", "2")
        js, toks = ringload(self.tmp.name, s.addr, "-s", "2", "-m", "30",
                            "-M", "0", "--token-prefix", "r421")
        sj, rec = s.stop()
        m = js["messages"]
        self.assertEqual(m["started"], 30)
        self.assertEqual(m["ok"] + m["tempfail"], 30, js)
        self.assertEqual(m["tempfail"], js["connections"]["closed_421"])
        self.assertEqual(js["connections"]["closed_421"], sj["closed_421"])
        self.assertGreaterEqual(m["tempfail"], 9)
        self.assertEqual(js["connections"]["sessions_gave_up"], 0)
        self.assertEqual(sorted(toks), sorted(r[0] for r in rec))

    def test_latency(self):
        s = self.sink("--latency", "200")
        js, toks = ringload(self.tmp.name, s.addr, "-s", "4", "-m", "8",
                            "-M", "0", "--token-prefix", "lat")
        s.stop()
        self.assertEqual(js["messages"]["ok"], 8)
        self.assertGreaterEqual(js["latency_us"]["p50"], 200000)
        # Two rounds of four concurrent delays, not eight in a row.
        self.assertLess(js["elapsed_s"], 0.4 + t(0.8), js["elapsed_s"])

    def test_in_flight(self):
        """The counts line says how many transactions wait between DATA and
        their reply (bench/run restart samples it at the signal); --progress
        prints it by itself; ringload's JSON holds its histogram."""
        s = self.sink("--latency", "600", "--progress", "100")
        js_path = os.path.join(self.tmp.name, "inflight.json")
        load = subprocess.Popen([RINGLOAD, "-q", "--json", js_path, "-s", "4", "-m", "4", "-M", "0",
                                 "--timeout", str(int(t(60))), s.addr],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        seen, deadline = None, time.monotonic() + t(3)
        while time.monotonic() < deadline and seen is None:
            s.proc.send_signal(signal.SIGUSR1)
            time.sleep(0.05)
            with open(s.err_path) as f:
                for line in f:
                    if line.startswith("ringsink: SIGUSR1:") and \
                            "in flight 4 (in data 0, awaiting reply 4)" in line:
                        seen = line
        self.assertEqual(load.wait(t(30)), 0)
        s.stop()
        self.assertIsNotNone(seen, "no counts line with 4 awaiting their reply")
        with open(s.err_path) as f:
            text = f.read()
        self.assertIn("ringsink: progress: at ", text)
        self.assertIn("in flight 0 (in data 0, awaiting reply 0)", text.splitlines()[-1])
        with open(js_path) as f:
            js = json.load(f)
        self.assertEqual(sum(n for _, n in js["histogram_us"]), 4)
        self.assertGreaterEqual(min(v for v, _ in js["histogram_us"]), 600000)
        self.assertLessEqual(js["start_monotonic_s"], time.monotonic())

    def test_dialogue(self):
        s = self.sink("--tempfail-rcpt", "tf", "--reject-rcpt", "rj")
        body = (b"X-Ringload-Token: split-1\r\n"
                b"Subject: split anywhere\r\n"
                b"\r\n"
                b"..starts with a dot\r\n"
                b".x is unstuffed too\r\n"
                b"last line\r\n")
        unstuffed = len(body) - 2           # the two stuffing dots
        dialogue = (b"EHLO client.test\r\n"
                    b"MAIL FROM:<a@b.test>\r\n"
                    b"RCPT TO:<tf@x.test>\r\n"
                    b"RCPT TO:<rj@x.test>\r\n"
                    b"RCPT TO:<ok@x.test>\r\n"
                    b"DATA\r\n" + body + b".\r\n"
                    b"NOOP\r\nRSET\r\nFOO\r\n"
                    b"MAIL FROM:<a@b.test>\r\nRCPT TO:<ok@x.test>\r\n"
                    b"DATA\r\nX-Ringload-Token: head-only\r\n.\r\n"
                    b"QUIT\r\n")
        codes = [250, 250, 451, 550, 250, 354, 250, 250, 250, 502,
                 250, 250, 354, 250, 221]
        c = Client(s.port)
        self.assertEqual(c.replies(1)[0][0], 220)
        c.send_bytewise(dialogue)
        r = c.replies(len(codes))
        self.assertEqual([code for code, _ in r], codes)
        ehlo = r[0][1]
        self.assertGreater(len(ehlo), 1)
        self.assertIn("250-PIPELINING", ehlo)
        self.assertIn("250-8BITMIME", ehlo)
        self.assertTrue(any(x.startswith("250-SIZE") for x in ehlo))
        self.assertTrue(r[2][1][0].startswith("451 4.2.0"))
        self.assertTrue(r[3][1][0].startswith("550 5.1.1"))
        self.assertTrue(c.eof())
        c.close()

        # The same in one write: pipelined, one reply batch.
        c = Client(s.port)
        c.replies(1)
        c.s.sendall(dialogue.replace(b"split-1", b"whole-1")
                    .replace(b"head-only", b"head-only-2"))
        self.assertEqual([x[0] for x in c.replies(len(codes))], codes)
        c.close()

        # Message-ID stands in for a missing token.
        c = Client(s.port)
        c.replies(1)
        c.s.sendall(b"HELO h\r\nMAIL FROM:<>\r\nRCPT TO:<a@b>\r\nDATA\r\n")
        self.assertEqual([x[0] for x in c.replies(4)], [250, 250, 250, 354])
        c.s.sendall(b"Message-ID: <mid-1@x>\r\n\r\nbody\r\n.\r\nQUIT\r\n")
        self.assertEqual([x[0] for x in c.replies(2)], [250, 221])
        c.close()

        sj, rec = s.stop()
        self.assertEqual(sj["accepted"], 5)
        self.assertEqual(sj["rcpt_tempfailed"], 2)
        self.assertEqual(sj["rcpt_rejected"], 2)
        self.assertEqual(sj["duplicate_tokens"], 0)
        got = {r[0]: r for r in rec}
        self.assertEqual(set(got), {"split-1", "whole-1", "head-only",
                                    "head-only-2", "mid-1@x"})
        self.assertEqual(got["split-1"][2], "1")
        self.assertEqual(int(got["split-1"][3]), unstuffed)
        self.assertEqual(got["split-1"][3], got["whole-1"][3])

    def test_duplicates(self):
        s = self.sink()
        msg = (b"MAIL FROM:<a@b>\r\nRCPT TO:<c@d>\r\nDATA\r\n"
               b"X-Ringload-Token: dup-1\r\n\r\nx\r\n.\r\n")
        c = Client(s.port)
        c.replies(1)
        c.s.sendall(b"EHLO x\r\n" + msg + msg + b"QUIT\r\n")
        self.assertEqual([x[0] for x in c.replies(10)],
                         [250, 250, 250, 354, 250, 250, 250, 354, 250, 221])
        self.assertTrue(c.eof())
        c.close()
        sj, rec = s.stop()
        self.assertEqual(sj["accepted"], 2)
        self.assertEqual(sj["unique_tokens"], 1)
        self.assertEqual(sj["duplicate_tokens"], 1)
        self.assertEqual(sj["duplicates"], ["dup-1"])
        self.assertEqual(len(rec), 2)

    def test_ipv6(self):
        try:
            probe = socket.socket(socket.AF_INET6)
            probe.bind(("::1", 0))
            probe.close()
        except OSError:
            self.skipTest("no ::1")
        s = self.sink(listen="[::1]:0")
        js, toks = ringload(self.tmp.name, s.addr, "-s", "2", "-m", "20",
                            "-P", "-M", "0", "--token-prefix", "v6")
        sj, rec = s.stop()
        self.assertEqual(js["messages"]["ok"], 20)
        self.assertEqual(sorted(toks), sorted(r[0] for r in rec))
        self.assertTrue(rec[0][1].startswith("[::1]:"), rec[0])


def main():
    if not (os.access(RINGLOAD, os.X_OK) and os.access(RINGSINK, os.X_OK)):
        print("ringload/ringsink not built under %s: skipped" % BUILD)
        return SKIP_EXIT
    # A watchdog: no test may hang the suite.
    timer = threading.Timer(t(240), lambda: os._exit(1))
    timer.daemon = True
    timer.start()
    res = unittest.main(exit=False, verbosity=2).result
    if not res.wasSuccessful():
        return 1
    if res.testsRun > 0 and len(res.skipped) == res.testsRun:
        return SKIP_EXIT
    return 0


if __name__ == "__main__":
    sys.exit(main())
