#!/usr/bin/env python3
"""
Concurrency: 200 simultaneous sessions (smtplib, threads) sending a few
messages each, every one 250 and spooled exactly once; both shards of a
two-shard daemon take connections; one session pipelining hundreds of
transactions without reading (the daemon's input backlog is bounded and
must resume), with every reply in order.
"""
import os
import re
import smtplib
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import t  # noqa: E402


def run_threads(n, fn, timeout):
    """Run fn(i) in n threads started together; [(i, exception)]."""
    barrier = threading.Barrier(n)
    errors = []
    lock = threading.Lock()

    def wrap(i):
        try:
            barrier.wait(timeout)
            fn(i)
        except BaseException as e:   # noqa: B902 - reported below
            with lock:
                errors.append((i, e))

    ths = [threading.Thread(target=wrap, args=(i,), daemon=True)
           for i in range(n)]
    for th in ths:
        th.start()
    deadline = time.monotonic() + timeout
    for th in ths:
        th.join(max(0.1, deadline - time.monotonic()))
    hung = [i for i, th in enumerate(ths) if th.is_alive()]
    if hung:
        errors.append((hung[:5], "%d threads still running after %.0f s"
                       % (len(hung), timeout)))
    return errors


class Concurrency(h.DaemonTest):

    def test_200_concurrent_sessions(self):
        d = self.start_daemon(shards=2)
        per = 3
        tokens = [[None] * per for _ in range(200)]
        connected = threading.Barrier(200)

        def client(i):
            s = smtplib.SMTP(d.host, d.port, local_hostname="c%d.test" % i,
                             timeout=t(60))
            try:
                # every session is open before any sends
                connected.wait(t(60))
                s.ehlo()
                for k in range(per):
                    tok, msg = h.make_message(subject="s%d m%d" % (i, k))
                    refused = s.sendmail("s%d@client.test" % i,
                                         ["r%d@dest.test" % k], msg)
                    if refused:
                        raise AssertionError("refused %r" % refused)
                    tokens[i][k] = tok
                s.quit()
            finally:
                s.close()

        errors = run_threads(200, client, t(120))
        self.assertEqual(errors, [], "%d sessions failed, e.g. %r"
                         % (len(errors), errors[:3]))
        d.stop_clean()
        sp = d.spool()
        allt = [x for row in tokens for x in row]
        self.assertTokens(sp, present=allt)
        self.assertEqual(len(sp), 200 * per, sp)
        self.assertEqual({m["shard"] for m in sp.messages}, {0, 1})
        for m in sp.messages:
            i = int(m["sender"][1:].split("@")[0])
            self.assertIn(h.TOKEN_RE.findall(m["body"])[0].decode(),
                          tokens[i])
        ids = sp.ids()
        self.assertEqual(len(set(ids)), len(ids), "duplicate ids")

    def test_both_shards_take_connections(self):
        d = self.start_daemon(shards=2)
        self.assertEqual(d.shards, 2)
        toks = []
        lock = threading.Lock()

        def client(i):
            c = d.connect(timeout=t(30))
            try:
                if c.greeting().code != 220:
                    raise AssertionError("greeting")
                tok, msg = h.make_message()
                r = h.send_raw_message(c, msg, ehlo=True)
                if r.code != 250:
                    raise AssertionError(repr(r))
                with lock:
                    toks.append(tok)
                c.cmd("QUIT")
            finally:
                c.close()

        errors = run_threads(100, client, t(90))
        self.assertEqual(errors, [])
        sp = d.spool()
        self.assertTokens(sp, present=toks)
        shards = [m["shard"] for m in sp.messages]
        self.assertEqual(set(shards), {0, 1}, "messages per shard: %d, %d"
                         % (shards.count(0), shards.count(1)))
        # each shard has its own directory and log
        for s in (0, 1):
            segs = [m["segment"] for m in sp.messages if m["shard"] == s]
            for seg in set(segs):
                self.assertTrue(os.path.exists(
                    os.path.join(d.spool_base, str(s), seg)), seg)

    def shard_cpus(self, d):
        """{thread name: Cpus_allowed_list} of the daemon's shard threads."""
        out = {}
        task_dir = "/proc/%d/task" % d.pid
        for tid in os.listdir(task_dir):
            with open(os.path.join(task_dir, tid, "comm")) as f:
                comm = f.read().strip()
            if not comm.startswith("shard-"):
                continue
            with open(os.path.join(task_dir, tid, "status")) as f:
                for line in f:
                    if line.startswith("Cpus_allowed_list:"):
                        out[comm] = line.split(":", 1)[1].strip()
        return out

    def test_shards_unpinned_by_default_pinned_on_request(self):
        ncpu = len(os.sched_getaffinity(0))
        mine = open("/proc/self/status").read()
        allowed = re.search(r"^Cpus_allowed_list:\s*(\S+)", mine, re.M).group(1)
        d = self.start_daemon(shards=2)
        self.assertEqual(self.shard_cpus(d),
                         {"shard-0": allowed, "shard-1": allowed})
        d.stop()
        if ncpu < 2:
            self.skipTest("pinning two shards apart needs two CPUs")
        d = self.start_daemon(shards=2, Pin_Shards="true")
        cpus = sorted(os.sched_getaffinity(0))
        self.assertEqual(self.shard_cpus(d),
                         {"shard-0": str(cpus[0]), "shard-1": str(cpus[1])})
        # and it still takes mail
        c = d.connect(timeout=t(30))
        try:
            self.assertEqual(c.greeting().code, 220)
            tok, msg = h.make_message()
            self.assertEqual(h.send_raw_message(c, msg, ehlo=True).code, 250)
        finally:
            c.close()
        self.assertTokens(d.spool(), present=[tok])

    def test_auto_and_pinning_follow_the_cpus_allowed(self):
        # Under taskset (or a container's cpuset) Shards = auto counts the
        # CPUs the daemon may use, and Pin_Shards pins to those.
        cpus = sorted(os.sched_getaffinity(0))
        last = cpus[-1]
        os.sched_setaffinity(0, {last})
        try:
            d = self.start_daemon(shards="auto", Pin_Shards="true")
        finally:
            os.sched_setaffinity(0, set(cpus))
        self.assertEqual(d.shards, 1)
        self.assertEqual(self.shard_cpus(d), {"shard-0": str(last)})

    def test_pipeline_flood_one_session(self):
        # 400 transactions in one stream, written without reading replies:
        # far more than the daemon's input backlog, so it must pause reading
        # and resume; every reply comes, in order.
        d = self.start_daemon(shards=1)
        c = d.connect(timeout=t(30))
        self.addCleanup(c.close)
        self.assertReply(c.greeting(), 220)
        self.assertReply(c.ehlo(), 250)
        n = 400
        toks, chunks = [], []
        for i in range(n):
            tok, msg = h.make_message(size=1500)
            toks.append(tok)
            chunks.append(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<r%d@x.test>\r\n"
                          b"DATA\r\n" % i + h.dot_stuff(msg) + b".\r\n")
        stream = b"".join(chunks) + b"QUIT\r\n"

        replies = []
        err = []

        def reader():
            try:
                for _ in range(4 * n + 1):
                    replies.append(c.read_reply(t(30)))
            except BaseException as e:  # noqa: B902
                err.append(e)

        th = threading.Thread(target=reader, daemon=True)
        th.start()
        c.sock.sendall(stream)
        th.join(t(120))
        self.assertFalse(th.is_alive(), "replies stopped after %d"
                         % len(replies))
        self.assertEqual(err, [])
        for i in range(n):
            got = [(r.code, r.enh) for r in replies[4 * i:4 * i + 4]]
            self.assertEqual(got, [(250, "2.1.0"), (250, "2.1.5"),
                                   (354, None), (250, "2.0.0")], i)
        self.assertReply(replies[-1], 221, "2.0.0")
        sp = d.spool()
        self.assertTokens(sp, present=toks)
        self.assertEqual(len(sp), n)

    def test_noop_flood_with_reader(self):
        # 30000 pipelined NOOPs: replies overflow the daemon's reply buffer
        # many times; every one arrives.
        d = self.start_daemon(shards=1)
        c = d.connect(timeout=t(30))
        self.addCleanup(c.close)
        self.assertReply(c.greeting(), 220)
        n = 30000
        got = []

        def reader():
            try:
                for _ in range(n + 1):
                    got.append(c.read_reply(t(30)).code)
            except BaseException as e:  # noqa: B902
                got.append(e)

        th = threading.Thread(target=reader, daemon=True)
        th.start()
        c.sock.sendall(b"NOOP\r\n" * n + b"QUIT\r\n")
        th.join(t(60))
        self.assertFalse(th.is_alive())
        self.assertEqual(got.count(250), n, got[-3:])
        self.assertEqual(got[-1], 221)

    def test_clients_leave_before_answers(self):
        # 50 clients send a message and close right after the final dot;
        # every message was complete, so every one is kept, once.
        d = self.start_daemon(shards=2)
        toks = [None] * 50

        def client(i):
            c = d.connect(timeout=t(30))
            try:
                if c.greeting().code != 220:
                    raise AssertionError("greeting")
                c.send(b"EHLO x.test\r\nMAIL FROM:<a@b.test>\r\n"
                       b"RCPT TO:<c@d.test>\r\nDATA\r\n")
                rs = c.read_replies(4)
                if rs[-1].code != 354:
                    raise AssertionError(repr(rs))
                tok, msg = h.make_message(size=2000 + 37 * i)
                c.send(h.dot_stuff(msg) + b".\r\n")
                toks[i] = tok
            finally:
                c.close()

        errors = run_threads(50, client, t(60))
        self.assertEqual(errors, [])
        time.sleep(0.5)
        c = d.connect()
        self.addCleanup(c.close)
        self.assertReply(c.greeting(), 220)
        d.stop_clean()
        sp = d.spool()
        self.assertTokens(sp, present=toks)
        self.assertEqual(len(sp), 50)

    def test_ringspool_on_live_spool(self):
        # ringspool reads a running daemon's spool ("safe on a running
        # daemon's spool"): every message acked before a scan started is in
        # that scan, and a healthy spool shows no corrupt record.
        d = self.start_daemon(shards=2, Spool_Segment_Size="1M")
        acked, lock, stop = {}, threading.Lock(), threading.Event()

        def client(i):
            c = d.connect(timeout=t(30))
            try:
                c.greeting()
                c.ehlo()
                for _ in range(150):
                    if stop.is_set():
                        break
                    # big messages: big batches, a wide window to read a
                    # record while it is being written
                    tok, msg = h.make_message(size=60000 + 100 * i)
                    r = h.send_raw_message(c, msg)
                    if r.code != 250:
                        raise AssertionError(repr(r))
                    with lock:
                        acked[h.queued_id(r)] = tok
                c.cmd("QUIT")
            finally:
                c.close()

        ths = [threading.Thread(target=client, args=(i,), daemon=True)
               for i in range(6)]
        for th in ths:
            th.start()
        scans = []
        try:
            while any(th.is_alive() for th in ths) and len(scans) < 60:
                with lock:
                    before = set(acked)
                sp = d.spool(body=False)
                missing = before - set(sp.ids())
                self.assertEqual(missing, set(), "acked messages missing "
                                 "from a live scan (%r)" % sp)
                scans.append(sp.stderr.strip())
                time.sleep(0.05)
        finally:
            stop.set()
            for th in ths:
                th.join(t(30))
        self.assertGreater(len(acked), 50)
        d.stop_clean()
        sp = d.spool()
        self.assertTokens(sp, present=list(acked.values()))
        self.assertEqual(sp.summary.get("torn", 0), 0, sp.stderr)
        self.assertEqual(sp.summary.get("corrupt", 0), 0, sp.stderr)
        bad = [x for x in scans if not x.endswith(" 0 corrupt")]
        self.assertEqual(bad, [], "%d of %d scans of the live spool report "
                         "corrupt records; the spool is fine once stopped "
                         "(%s)" % (len(bad), len(scans), sp.stderr.strip()))

    def test_many_short_sessions(self):
        # Connection churn: 300 sessions that connect, EHLO and quit or drop,
        # 20 at a time; the daemon neither leaks nor refuses.
        d = self.start_daemon(shards=2, Max_Connections=50)
        before = d.rss_kb()

        def client(i):
            for k in range(15):
                c = d.connect(timeout=t(20))
                try:
                    r = c.greeting()
                    if r.code != 220:
                        raise AssertionError("greeting %r" % r)
                    if k % 3 == 0:
                        continue               # drop without a word
                    c.ehlo()
                    if k % 3 == 1:
                        c.cmd("MAIL FROM:<a@b.test>")
                        continue               # drop inside a transaction
                    c.cmd("QUIT")
                finally:
                    c.close()

        errors = run_threads(20, client, t(90))
        self.assertEqual(errors, [], errors[:3])
        time.sleep(0.5)
        c = d.connect()
        self.addCleanup(c.close)
        self.assertReply(c.greeting(), 220)
        grown = d.rss_kb() - before
        self.assertLess(grown, 30 * 1024, "RSS grew by %d kB" % grown)


if __name__ == "__main__":
    h.main(timeout=300)
