#!/usr/bin/env python3
"""
The control console (ringctl over Control_Listener's unix socket) and the
metrics listener, end to end against a running ringmaild: every console
command in text and --json, queue inspection and actions on mail deferred
to an unreachable gateway (flush reaches a sink started later, fail
bounces), paniclog N, config reload's error text, socket mode 0600 and
ringctl's errors, Prometheus /metrics parsed (counters move after mail),
/ready (200 serving, 503 draining), the HTTP parser's limits, and User
(root dropped to nobody, spool owned by it).
"""
import json
import os
import pwd
import re
import signal
import socket
import stat
import subprocess
import sys
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import t  # noqa: E402
from test_delivery import RingSink, free_port, wait_until  # noqa: E402

RINGCTL = os.path.join(h.BUILD, "ringctl")
OPS = ('Control_Listener { Listen "ctl.sock" { } }\n'
       'Metrics_Listener { Listen "127.0.0.1:0" { } }\n')
METRICS_RE = re.compile(r"control: metrics listening on 127\.0\.0\.1:(\d+)")
SAMPLE_RE = re.compile(
    r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (-?[0-9.e+]+|\+Inf|NaN)$')


def parse_metrics(text):
    """{(name, labels): value} from Prometheus text; checks every line."""
    out = {}
    types = {}
    for line in text.splitlines():
        if line.startswith("# TYPE "):
            _, _, name, typ = line.split(" ", 3)
            types[name] = typ
            continue
        if line.startswith("#") or not line:
            continue
        m = SAMPLE_RE.match(line)
        if not m:
            raise AssertionError("malformed metrics line %r" % line)
        out[(m.group(1), m.group(2) or "")] = float(m.group(3))
    return out, types


def total(samples, name):
    return sum(v for (n, _), v in samples.items() if n == name)


class Control(h.DaemonTest):

    def daemon(self, shards=2, extra="", **opts):
        d = self.start_daemon(shards=shards, extra=OPS + extra, **opts)
        d.sock = os.path.join(d.dir, "ctl.sock")
        m = METRICS_RE.search(d.stderr())
        self.assertIsNotNone(m, "no metrics listening line")
        d.metrics_port = int(m.group(1))
        return d

    def ctl(self, d, *words, json_out=False, check=None, sock=None):
        """Run ringctl; (rc, stdout, stderr). check: the exit code wanted."""
        cmd = [RINGCTL, "-s", sock or d.sock]
        if json_out:
            cmd.append("--json")
        p = subprocess.run(cmd + list(words), stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=t(30))
        out, err = p.stdout.decode(), p.stderr.decode()
        if check is not None:
            self.assertEqual(p.returncode, check, "ringctl %s: rc %d, "
                             "stdout %r, stderr %r" % (" ".join(words),
                                                       p.returncode, out,
                                                       err))
        return p.returncode, out, err

    def ctl_json(self, d, *words, check=0):
        rc, out, err = self.ctl(d, *words, json_out=True, check=check)
        return json.loads(out if rc == 0 else err)

    def http(self, d, path):
        """(status, body) of GET path on the metrics listener."""
        try:
            with urllib.request.urlopen("http://127.0.0.1:%d%s"
                                        % (d.metrics_port, path),
                                        timeout=t(10)) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def send(self, d, rcpts=("rcpt@dest.test",)):
        """One message; its queue id."""
        tok, msg = h.make_message(rcpts=rcpts)
        with d.connect() as c:
            self.assertReply(c.greeting(), 220)
            self.assertReply(c.ehlo(), 250)
            r = h.send_raw_message(c, msg, rcpts=rcpts)
            self.assertReply(r, 250)
            c.cmd("QUIT")
        qid = h.queued_id(r)
        self.assertIsNotNone(qid, r)
        return tok, qid

    def deferred(self, d, domain, n):
        """Wait until n items of domain are deferred; the queue rows."""
        def check():
            q = self.ctl_json(d, "showqueue", domain)
            rows = [x for x in q["messages"] if x["state"] == "deferred"]
            return rows if len(rows) >= n else None
        return wait_until(check, t(15), "%d deferred items for %s"
                          % (n, domain))

    def delivery_log(self, d):
        try:
            with open(os.path.join(d.dir, "log", "delivery.log")) as f:
                return [json.loads(x) for x in f if x.strip()]
        except OSError:
            return []

    # --- the console ----------------------------------------------------

    def test_socket_mode_help_and_errors(self):
        d = self.daemon()
        st = os.stat(d.sock)
        self.assertTrue(stat.S_ISSOCK(st.st_mode))
        self.assertEqual(stat.S_IMODE(st.st_mode), 0o600)
        rc, out, _ = self.ctl(d, "help", check=0)
        for cmd in ("summary", "showqueue", "message", "flush domain",
                    "fail domain", "paniclog", "config reload",
                    "scriptlet stats", "shutdown"):
            self.assertIn(cmd, out)
        self.assertIn("commands", self.ctl_json(d, "help"))
        rc, out, err = self.ctl(d, "frobnicate", check=1)
        self.assertIn("unknown command", err)
        self.assertEqual(out, "")
        e = self.ctl_json(d, "frobnicate", check=1)
        self.assertIn("unknown command", e["error"])
        self.ctl(d, "paniclog", "x", check=1)
        self.ctl(d, "message", "show", check=1)
        self.ctl(d, "message", "show", "nonsense", check=1)
        # A raw client: dot-stuffed body, terminator lines, many commands.
        s = socket.socket(socket.AF_UNIX)
        s.settimeout(t(10))
        s.connect(d.sock)
        s.sendall(b"help\r\nnope\n")
        buf = b""
        while buf.count(b"\n.ok\n") + buf.count(b"\n.error\n") < 2:
            data = s.recv(65536)
            self.assertTrue(data, "console closed early: %r" % buf)
            buf += data
        self.assertTrue(buf.endswith(b".error\n"), buf[-100:])
        s.sendall(b"x" * 5000)
        self.assertIn(b"too long", s.recv(4096))
        s.close()
        self.assertTrue(d.running())

    def test_ringctl_cannot_connect(self):
        d = self.daemon(shards=1)
        rc, _, err = self.ctl(d, "summary", sock=d.sock + ".missing")
        self.assertEqual(rc, 2)
        self.assertIn("no control socket", err)
        # Another user may not connect (mode 0600, owned by root).
        if os.geteuid() != 0:
            self.skipTest("needs root to try another user")
        os.chmod(d.dir, 0o755)
        p = subprocess.run([RINGCTL, "-s", d.sock, "summary"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=t(30),
                           preexec_fn=lambda: os.setuid(65534))
        self.assertEqual(p.returncode, 2, p.stderr)
        self.assertIn(b"permission denied", p.stderr)

    def test_ringctl_config_and_prompt(self):
        d = self.daemon(shards=1)
        p = subprocess.run([RINGCTL, "-c", d.conf_path, "summary"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=t(30))
        self.assertEqual(p.returncode, 0, p.stderr)
        self.assertIn(b"messages_received", p.stdout)
        p = subprocess.run([RINGCTL, "-s", d.sock],
                           input=b"help\n\nsummary\nnope\nquit\n",
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=t(30))
        self.assertIn(b"showqueue", p.stdout)
        self.assertIn(b"messages_received", p.stdout)
        self.assertIn(b"unknown command", p.stderr)

    def test_summary(self):
        d = self.daemon(shards=2)
        for _ in range(3):
            self.send(d)

        def received():
            s = self.ctl_json(d, "summary")
            return s if s["total"]["messages_received"] == 3 else None
        s = wait_until(received, t(10), "3 messages in the summary")
        self.assertEqual(len(s["shards"]), 2)
        self.assertTrue(s["ready"])
        for sh in s["shards"]:
            self.assertEqual(sh["state"], "running")
            for k in ("sessions", "messages_received", "queue_deferred",
                      "spool_bytes", "dup_window", "delivered", "deferred"):
                self.assertIn(k, sh)
        self.assertEqual(sum(x["messages_received"] for x in s["shards"]), 3)
        self.assertGreater(s["total"]["spool_bytes"], 0)
        self.assertIn("received_per_s_10s", s["rates"])
        rc, out, _ = self.ctl(d, "summary", check=0)
        self.assertIn("shard 1", out)
        self.assertRegex(out, r"messages_received\s+3\s")

    def test_showqueue_and_message_show(self):
        d = self.daemon(shards=2)
        _, qid = self.send(d, rcpts=("a@dest.test", "b@other.test"))
        rows = self.deferred(d, "dest.test", 1)
        self.assertEqual(rows[0]["id"], qid)
        self.assertGreaterEqual(rows[0]["attempts"], 1)
        self.assertGreater(rows[0]["due_s"], 0)
        self.assertEqual(rows[0]["last_code"], 421)
        q = self.ctl_json(d, "showqueue")
        doms = {x["domain"]: x for x in q["domains"]}
        self.assertEqual(doms["dest.test"]["deferred"], 1)
        self.assertEqual(doms["other.test"]["deferred"], 1)
        rc, out, _ = self.ctl(d, "showqueue", check=0)
        self.assertRegex(out, r"dest\.test\s+0\s+1\s")
        m = self.ctl_json(d, "message", "show", qid)
        self.assertEqual(m["id"], qid)
        self.assertEqual(m["sender"], "sender@client.test")
        self.assertEqual(sorted(r["rcpt"] for r in m["recipients"]),
                         ["a@dest.test", "b@other.test"])
        self.assertTrue(all(r["state"] == "deferred"
                            for r in m["recipients"]))
        rc, out, _ = self.ctl(d, "message", "show", qid, check=0)
        self.assertIn("b@other.test", out)
        # An id of this daemon that is not queued, and a domain without mail.
        gone = qid[:-1] + ("0" if qid[-1] != "0" else "1")
        self.ctl(d, "message", "show", gone, check=1)
        q = self.ctl_json(d, "showqueue", "nothing.test")
        self.assertEqual(q["messages"], [])

    def test_flush_domain_delivers_to_a_sink_started_later(self):
        port = free_port()
        d = self.daemon(shards=2, Gateway='"127.0.0.1:%d"' % port)
        toks = [self.send(d)[0] for _ in range(3)]
        self.deferred(d, "dest.test", 3)
        sink = RingSink(d.dir, port=port)
        self.addCleanup(sink.stop)
        # Retry_Interval is 20 minutes: only the flush sends them now.
        time.sleep(1)
        self.assertEqual(sink.tokens(), {})
        rc, out, _ = self.ctl(d, "flush", "domain", "dest.test", check=0)
        self.assertIn("3 queue items", out)
        wait_until(lambda: all(sink.tokens().get(tk) for tk in toks), t(15),
                   "the flushed messages at the sink")
        wait_until(lambda: self.ctl_json(d, "showqueue")["domains"] == [],
                   t(10), "an empty queue")
        self.ctl(d, "flush", "domain", "nothing.test", check=1)

    def test_message_retry(self):
        d = self.daemon(shards=1)
        _, qid = self.send(d)
        self.deferred(d, "dest.test", 1)
        r = self.ctl_json(d, "message", "retry", qid)
        self.assertEqual(r["items"], 1)

        def attempts():
            n = [x for x in self.delivery_log(d)
                 if x["id"] == qid and x["outcome"] == "deferred"]
            return len(n) >= 2
        wait_until(attempts, t(10), "a second attempt in the delivery log")
        rows = self.deferred(d, "dest.test", 1)
        self.assertGreaterEqual(rows[0]["attempts"], 2)

    def test_message_fail_bounces_and_removes(self):
        d = self.daemon(shards=2)
        _, qid = self.send(d)
        _, other = self.send(d)
        self.deferred(d, "dest.test", 2)
        r = self.ctl_json(d, "message", "fail", qid)
        self.assertEqual(r["items"], 1)

        def bounced():
            return [x for x in self.delivery_log(d)
                    if x["id"] == qid and x["outcome"] == "bounced"]
        lines = wait_until(bounced, t(10), "a bounced line")
        self.assertIn("operator", lines[0]["response"])
        self.ctl(d, "message", "show", qid, check=1)
        self.ctl_json(d, "message", "show", other)
        # The DSN goes to the sender's domain.
        wait_until(lambda: any(x["domain"] == "client.test" for x in
                               self.ctl_json(d, "showqueue")["domains"]),
                   t(10), "the DSN in the queue")
        self.ctl(d, "message", "fail", qid, check=1)

    def test_fail_domain(self):
        d = self.daemon(shards=2)
        ids = [self.send(d)[1] for _ in range(3)]
        _, keep = self.send(d, rcpts=("x@keep.test",))
        self.deferred(d, "dest.test", 3)
        r = self.ctl_json(d, "fail", "domain", "dest.test")
        self.assertEqual(r["items"], 3)
        wait_until(lambda: {x["id"] for x in self.delivery_log(d)
                            if x["outcome"] == "bounced"} >= set(ids),
                   t(10), "3 bounced lines")
        q = self.ctl_json(d, "showqueue", "dest.test")
        self.assertEqual(q["messages"], [])
        self.assertEqual(self.ctl_json(d, "message", "show", keep)["id"],
                         keep)

    def test_paniclog(self):
        d = self.daemon(shards=1)
        rc, out, _ = self.ctl(d, "paniclog", "2", check=0)
        want = d.paniclog().splitlines()[-2:]
        self.assertEqual(out.splitlines(), want)
        j = self.ctl_json(d, "paniclog", "3")
        self.assertEqual(j["lines"], d.paniclog().splitlines()[-3:])
        rc, out, _ = self.ctl(d, "paniclog", check=0)
        self.assertIn("ringmaild ready", out)

    def test_config_reload_reports_the_daemons_error(self):
        d = self.daemon(shards=1)
        with open(d.conf_path, "a") as f:
            f.write("\nNo_Such_Option = 1\n")
        rc, out, err = self.ctl(d, "config", "reload")
        self.assertEqual(rc, 1, "a broken file reloaded: %r" % out)
        self.assertTrue(err.strip(), "no error text")
        j = self.ctl_json(d, "config", "reload", check=1)
        self.assertEqual(j["error"].strip(), err.strip())
        # SIGHUP takes the same path and keeps the daemon running.
        d.send_signal(signal.SIGHUP)
        wait_until(lambda: "SIGHUP: configuration reload" in d.paniclog(),
                   t(10), "the SIGHUP line")
        self.assertTrue(d.running())
        self.ctl(d, "summary", check=0)

    def test_config_reload_names_what_waits_for_a_restart(self):
        d = self.daemon(shards=1, Max_Connections="500")
        # Unchanged: nothing to report.
        self.ctl(d, "config", "reload", check=0)
        self.assertNotIn("differs from the running", d.paniclog())
        text = open(d.conf_path).read()
        # Spacing, case and comments are not changes.
        text = text.replace("Max_Connections = 500",
                            "# the same\nmax_connections   =   500")
        with open(d.conf_path, "w") as f:
            f.write(text)
        self.ctl(d, "config", "reload", check=0)
        self.assertNotIn("differs from the running", d.paniclog())
        # A value, a new scope: each named once.
        text = text.replace("max_connections   =   500",
                            "Max_Connections = 600")
        text += '\nDomain "later.test" { Retry_Interval = 5m }\n'
        with open(d.conf_path, "w") as f:
            f.write(text)
        self.ctl(d, "config", "reload", check=0)
        lines = [l for l in d.paniclog().splitlines()
                 if "differs from the running" in l]
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("config reload: Max_Connections differs", lines[0] +
                      lines[1])
        self.assertIn('Domain "later.test" differs', lines[0] + lines[1])
        self.assertTrue(d.running())

    def test_scriptlet_commands(self):
        d = self.daemon(shards=1)
        s = self.ctl_json(d, "scriptlet", "stats")
        for k in ("generation", "callouts", "callout_errors", "lua_bytes"):
            self.assertIn(k, s)
        rc, out, err = self.ctl(d, "config", "set", "scriptlet",
                                "scriptlet", "no_such_option", "1")
        self.assertEqual(rc, 1)
        self.assertTrue(err.strip())
        self.ctl(d, "config", "set", "scriptlet", check=1)

    def test_shutdown(self):
        d = self.daemon(shards=2)
        c = d.connect()
        self.addCleanup(c.close)
        self.assertReply(c.greeting(), 220)
        d.stopped_on_purpose = True
        rc, out, _ = self.ctl(d, "shutdown", check=0)
        self.assertIn("draining", out)
        self.assertReply(c.read_reply(t(5)), 421, "4.3.2")
        rc = d.wait(t(10))
        self.assertIsNotNone(rc, "still running after shutdown")
        d.check_exit(rc)
        self.assertFalse(os.path.exists(d.sock), "socket left behind")

    def test_sigusr1_reopens_logs(self):
        d = self.daemon(shards=2)
        logdir = os.path.join(d.dir, "log")
        os.rename(os.path.join(logdir, "paniclog"),
                  os.path.join(logdir, "paniclog.1"))
        os.rename(os.path.join(logdir, "delivery.log"),
                  os.path.join(logdir, "delivery.log.1"))
        d.send_signal(signal.SIGUSR1)
        wait_until(lambda: "paniclog reopened" in d.paniclog(), t(10),
                   "a new paniclog")
        _, qid = self.send(d)
        wait_until(lambda: any(x["id"] == qid for x in self.delivery_log(d)),
                   t(10), "the deferral in the new delivery log")

    # --- metrics ----------------------------------------------------------

    def test_metrics_counters_move(self):
        d = self.daemon(shards=2)
        status, body = self.http(d, "/metrics")
        self.assertEqual(status, 200)
        before, types = parse_metrics(body)
        self.assertEqual(types["ringmail_messages_received_total"],
                         "counter")
        self.assertEqual(types["ringmail_duplicate_window"], "gauge")
        self.assertEqual(types["ringmail_commit_latency_seconds"],
                         "histogram")
        for name in ("ringmail_connections_total",
                     "ringmail_messages_rejected_total",
                     "ringmail_delivered_total", "ringmail_bounced_total",
                     "ringmail_policy_errors_total", "ringmail_sessions",
                     "ringmail_queue_deferred", "ringmail_spool_bytes",
                     "ringmail_duplicate_window_max",
                     "ringmail_dot_to_250_latency_seconds_count",
                     "ringmail_delivery_latency_seconds_count",
                     "ringmail_scriptlet_callouts_total"):
            self.assertIn(name, {n for n, _ in before}, name)
        self.assertIn(("ringmail_messages_received_total",
                       '{shard="1"}'), before)
        self.assertEqual(total(before, "ringmail_messages_received_total"), 0)
        for _ in range(2):
            self.send(d)

        def moved():
            s, _ = parse_metrics(self.http(d, "/metrics")[1])
            return s if (total(s, "ringmail_messages_received_total") == 2
                         and total(s, "ringmail_deferred_total") >= 2) \
                else None
        after = wait_until(moved, t(10), "counters to move")
        self.assertGreaterEqual(total(after, "ringmail_connections_total"), 2)
        self.assertGreater(total(after, "ringmail_spool_commits_total"), 0)
        n = after[("ringmail_dot_to_250_latency_seconds_count", "")]
        self.assertGreaterEqual(n, 2)
        self.assertEqual(after[("ringmail_dot_to_250_latency_seconds_bucket",
                                '{le="+Inf"}')], n)
        self.assertGreater(after[("ringmail_commit_latency_seconds_sum",
                                  "")], 0)
        self.assertEqual(total(after, "ringmail_queue_deferred"), 2)

    def test_delivery_latency_histogram(self):
        sink = RingSink(tempfile_dir(self))
        self.addCleanup(sink.stop)
        d = self.daemon(shards=1, Gateway='"127.0.0.1:%d"' % sink.port)
        self.send(d)

        def delivered():
            s, _ = parse_metrics(self.http(d, "/metrics")[1])
            return s if total(s, "ringmail_delivered_total") == 1 else None
        s = wait_until(delivered, t(15), "one delivery in the metrics")
        self.assertEqual(s[("ringmail_delivery_latency_seconds_count", "")],
                         1)

    def test_ready_and_http_limits(self):
        d = self.daemon(shards=2)
        self.assertEqual(self.http(d, "/ready"), (200, "ready\n"))
        self.assertEqual(self.http(d, "/nope")[0], 404)
        for req, code in ((b"POST /metrics HTTP/1.0\r\n\r\n", b" 405 "),
                          (b"garbage\r\n\r\n", b" 400 "),
                          (b"GET /ready HTTP/1.1\r\nHost: x\r\n" +
                           b"X-Pad: " + b"a" * 9000 + b"\r\n\r\n", None)):
            s = socket.create_connection(("127.0.0.1", d.metrics_port),
                                         timeout=t(10))
            try:
                s.sendall(req)
            except OSError:
                pass
            data = b""
            while True:
                try:
                    chunk = s.recv(65536)
                except OSError:
                    break
                if not chunk:
                    break
                data += chunk
            s.close()
            if code is not None:
                self.assertIn(code, data.split(b"\r\n", 1)[0])
        # A client that says nothing is dropped with 408 after 5 seconds.
        s = socket.create_connection(("127.0.0.1", d.metrics_port),
                                     timeout=t(20))
        self.assertIn(b" 408 ", s.recv(4096))
        s.close()
        # Draining: /ready says 503 while a transaction holds the drain.
        c = d.connect()
        self.addCleanup(c.close)
        self.assertReply(c.greeting(), 220)
        self.assertReply(c.ehlo(), 250)
        self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250)
        self.assertReply(c.cmd("RCPT TO:<c@d.test>"), 250)
        self.assertReply(c.cmd("DATA"), 354)
        d.send_signal(signal.SIGTERM)
        wait_until(lambda: self.http(d, "/ready")[0] == 503, t(10),
                   "/ready to say 503 while draining")
        self.assertEqual(self.http(d, "/metrics")[0], 200)
        c.send(b"Subject: x\r\n\r\nbody\r\n.\r\n")
        self.assertReply(c.read_reply(t(10)), 250)
        rc = d.wait(t(20))
        self.assertIsNotNone(rc)
        d.check_exit(rc)

    # --- User -------------------------------------------------------------

    def test_user_drops_root(self):
        if os.geteuid() != 0:
            self.skipTest("needs root")
        try:
            nobody = pwd.getpwnam("nobody")
        except KeyError:
            self.skipTest("no user nobody")
        d = self.start_daemon(shards=2, extra=OPS + 'User = "nobody"\n',
                              start=False)
        # nobody must reach its spool and logs through the test directory.
        os.chmod(d.dir, 0o755)
        d.start()
        d.sock = os.path.join(d.dir, "ctl.sock")
        with open("/proc/%d/status" % d.pid) as f:
            status = f.read()
        uids = re.search(r"^Uid:\s+(.*)$", status, re.M).group(1).split()
        gids = re.search(r"^Gid:\s+(.*)$", status, re.M).group(1).split()
        self.assertEqual(set(uids), {str(nobody.pw_uid)})
        self.assertEqual(set(gids), {str(nobody.pw_gid)})
        for p in (d.spool_base, os.path.join(d.spool_base, "0"),
                  os.path.join(d.dir, "log", "paniclog"),
                  os.path.join(d.dir, "log", "delivery.log"), d.sock):
            self.assertEqual(os.stat(p).st_uid, nobody.pw_uid, p)
        for name in os.listdir(os.path.join(d.spool_base, "0")):
            st = os.stat(os.path.join(d.spool_base, "0", name))
            self.assertEqual(st.st_uid, nobody.pw_uid, name)
        self.assertEqual(stat.S_IMODE(os.stat(d.sock).st_mode), 0o600)
        self.assertIn("running as User nobody", d.paniclog())
        self.send(d)
        s = self.ctl_json(d, "summary")
        wait_until(lambda: self.ctl_json(d, "summary")["total"]
                   ["messages_received"] == 1, t(10), "the message counted")
        self.assertEqual(s["total"]["spool_failed"], 0)
        # Restart on the spool nobody now owns: recovery still works.
        d.stop_clean()
        d.start()
        self.ctl(d, "summary", check=0)

    def test_user_unknown_fails_to_start(self):
        d = self.start_daemon(shards=1, extra='User = "no-such-user-x"\n',
                              start=False)
        with self.assertRaises(h.DaemonError):
            d.start()
        self.assertIn("User 'no-such-user-x': no such user", d.stderr())
        p = subprocess.run([h.RINGMAILD, "-t", "-c", d.conf_path],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           timeout=t(30))
        self.assertEqual(p.returncode, 1)
        self.assertIn(b"ringmail.conf:", p.stderr)


def tempfile_dir(test):
    import shutil
    import tempfile
    path = tempfile.mkdtemp(prefix="ringmail-ctl-")
    test.addCleanup(shutil.rmtree, path, True)
    return path


if __name__ == "__main__":
    h.main(timeout=280)
