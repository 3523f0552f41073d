#!/usr/bin/env python3
"""
Graceful stop: SIGTERM (and SIGINT) tell idle sessions 421 4.3.2 and exit 0
within seconds; a session inside DATA finishes its message, gets its 250,
then 421 4.3.2; new connections during the drain get 421 4.3.2 (never
silence); Shutdown_Timeout bounds the drain; a second SIGTERM stops at once.
"""
import os
import signal
import socket
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import t  # noqa: E402


class Shutdown(h.DaemonTest):

    def greeted(self, d, ehlo=True):
        c = d.connect()
        self.addCleanup(c.close)
        self.assertReply(c.greeting(), 220)
        if ehlo:
            self.assertReply(c.ehlo(), 250)
        return c

    def in_data(self, c, msg):
        self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250, "2.1.0")
        self.assertReply(c.cmd("RCPT TO:<c@d.test>"), 250, "2.1.5")
        self.assertReply(c.cmd("DATA"), 354)
        c.send(msg[:len(msg) // 2])

    def assertExits0(self, d, within):
        start = time.monotonic()
        rc = d.wait(within)
        self.assertIsNotNone(rc, "still running %.0f s after SIGTERM"
                             % within)
        d.check_exit(rc)
        return time.monotonic() - start

    def test_sigterm_idle_clients(self):
        d = self.start_daemon(shards=2)
        cs = [self.greeted(d, ehlo=(i % 2 == 0)) for i in range(6)]
        d.send_signal(signal.SIGTERM)
        for c in cs:
            self.assertReply(c.read_reply(t(5)), 421, "4.3.2")
            self.assertTrue(c.wait_closed(t(5)))
        self.assertExits0(d, t(5))

    def test_sigint(self):
        d = self.start_daemon(shards=1)
        c = self.greeted(d)
        d.send_signal(signal.SIGINT)
        self.assertReply(c.read_reply(t(5)), 421, "4.3.2")
        self.assertExits0(d, t(5))

    def test_sigterm_without_clients(self):
        d = self.start_daemon(shards=2)
        d.send_signal(signal.SIGTERM)
        took = self.assertExits0(d, t(5))
        self.assertLess(took, t(3))
        self.assertIn("stopped", d.paniclog())

    def test_sigterm_mid_data_finishes_message(self):
        d = self.start_daemon(shards=1)
        c = self.greeted(d)
        idle = self.greeted(d)
        tok, msg = h.make_message(size=30000)
        self.in_data(c, msg)
        d.send_signal(signal.SIGTERM)
        self.assertReply(idle.read_reply(t(5)), 421, "4.3.2")
        time.sleep(0.5)
        self.assertTrue(d.running(), "exited with a message in DATA")
        self.assertEqual(c.pending(0.1), b"", "reply before the end of data")
        c.send(h.dot_stuff(msg[len(msg) // 2:]) + b".\r\n")
        self.assertReply(c.read_reply(t(10)), 250, "2.0.0")
        self.assertReply(c.read_reply(t(5)), 421, "4.3.2")
        self.assertTrue(c.wait_closed(t(5)))
        self.assertExits0(d, t(5))
        self.assertTokens(d.spool(), present=[tok])

    def test_sigterm_mid_transaction_before_data(self):
        # MAIL and RCPT given: the transaction may finish.
        d = self.start_daemon(shards=1)
        c = self.greeted(d)
        self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250, "2.1.0")
        self.assertReply(c.cmd("RCPT TO:<c@d.test>"), 250, "2.1.5")
        d.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        self.assertReply(c.cmd("DATA"), 354)
        tok, msg = h.make_message()
        c.send(h.dot_stuff(msg) + b".\r\n")
        self.assertReply(c.read_reply(t(10)), 250, "2.0.0")
        self.assertReply(c.read_reply(t(5)), 421, "4.3.2")
        self.assertExits0(d, t(5))
        self.assertTokens(d.spool(), present=[tok])

    def new_connection_during_drain(self, shards, tries):
        d = self.start_daemon(shards=shards)
        c = self.greeted(d)
        tok, msg = h.make_message(size=5000)
        self.in_data(c, msg)            # keeps the daemon draining
        d.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        outcomes = []
        for i in range(tries):
            try:
                n = h.SMTPConn(d.host, d.port, timeout=t(5))
            except ConnectionRefusedError:
                outcomes.append("refused")
                continue
            try:
                r = n.greeting(t(5))
                outcomes.append((r.code, r.enh))
                self.assertTrue(n.wait_closed(t(5)), "left open after 421")
            except h.ReplyTimeout:
                outcomes.append("silence")
            except h.ConnectionClosed:
                outcomes.append("closed without a reply")
            finally:
                n.close()
        self.assertTrue(d.running())
        c.send(h.dot_stuff(msg[len(msg) // 2:]) + b".\r\n")
        self.assertReply(c.read_reply(t(10)), 250, "2.0.0")
        self.assertReply(c.read_reply(t(5)), 421, "4.3.2")
        self.assertExits0(d, t(10))
        self.assertTokens(d.spool(), present=[tok])
        return outcomes

    def test_new_connection_during_drain(self):
        out = self.new_connection_during_drain(shards=1, tries=3)
        self.assertEqual(out, [(421, "4.3.2")] * 3)

    def test_new_connection_during_drain_two_shards(self):
        # The shard without a session finishes its drain first; connections
        # the kernel sends its way must still be answered (421), not left
        # hanging in a listen queue nobody accepts from.
        out = self.new_connection_during_drain(shards=2, tries=12)
        self.assertEqual(out, [(421, "4.3.2")] * 12)

    def test_shutdown_timeout_bounds_drain(self):
        d = self.start_daemon(shards=1, Shutdown_Timeout="2s",
                              Data_Timeout="60s")
        c = self.greeted(d)
        tok, msg = h.make_message(size=5000)
        self.in_data(c, msg)            # and then the client goes silent
        start = time.monotonic()
        d.send_signal(signal.SIGTERM)
        r = c.read_reply(t(10))
        self.assertEqual(r.code, 421, r)
        self.assertTrue(c.wait_closed(t(5)))
        self.assertExits0(d, t(10))
        took = time.monotonic() - start
        self.assertGreaterEqual(took, 1.5, "drained before its budget")
        self.assertLess(took, 2 + t(3), "drain budget not respected")
        self.assertTokens(d.spool(), absent=[tok])

    def test_second_sigterm_stops_at_once(self):
        d = self.start_daemon(shards=1, Shutdown_Timeout="60s",
                              Data_Timeout="60s")
        c = self.greeted(d)
        tok, msg = h.make_message(size=5000)
        self.in_data(c, msg)
        d.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        self.assertTrue(d.running())
        d.send_signal(signal.SIGTERM)
        self.assertExits0(d, t(5))
        self.assertTrue(c.wait_closed(t(5)))

    def test_sigterm_under_load(self):
        # 10 clients sending back to back: every 250 is in the spool, every
        # client ends with 421 4.3.2 (or is closed), the daemon exits 0.
        d = self.start_daemon(shards=2)
        acked, lock = [], threading.Lock()
        last = {}
        go = threading.Event()

        def client(i):
            c = d.connect(timeout=t(20))
            try:
                if c.greeting().code != 220 or c.ehlo().code != 250:
                    return
                while True:
                    tok, msg = h.make_message(size=3000)
                    r = c.cmd("MAIL FROM:<a@b.test>")
                    if r.code != 250:
                        last[i] = r
                        return
                    r = c.cmd("RCPT TO:<c@d.test>")
                    if r.code != 250:
                        last[i] = r
                        return
                    r = c.cmd("DATA")
                    if r.code != 354:
                        last[i] = r
                        return
                    c.send(h.dot_stuff(msg) + b".\r\n")
                    r = c.read_reply()
                    if r.code == 250:
                        with lock:
                            acked.append(tok)
                        go.set()
                    else:
                        last[i] = r
                        return
            except (h.ConnectionClosed, OSError) as e:
                last[i] = e
            finally:
                c.close()

        ths = [threading.Thread(target=client, args=(i,), daemon=True)
               for i in range(10)]
        for th in ths:
            th.start()
        self.assertTrue(go.wait(t(20)))
        time.sleep(0.5)
        d.send_signal(signal.SIGTERM)
        for th in ths:
            th.join(t(20))
        self.assertFalse(any(th.is_alive() for th in ths), "clients hung")
        self.assertExits0(d, t(10))
        for i, r in last.items():
            if isinstance(r, h.Reply):
                self.assertReply(r, 421, "4.3.2")
        self.assertTokens(d.spool(), present=acked)

    def test_sigusr1_reopens_paniclog(self):
        d = self.start_daemon(shards=1)
        old = d.paniclog_path + ".1"
        os.rename(d.paniclog_path, old)
        d.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + t(5)
        while time.monotonic() < deadline and not os.path.exists(
                d.paniclog_path):
            time.sleep(0.05)
        self.assertTrue(os.path.exists(d.paniclog_path),
                        "paniclog not reopened")
        c = self.greeted(d)
        self.assertReply(c.cmd("QUIT"), 221, "2.0.0")
        d.stop_clean()
        self.assertIn("stopped", d.paniclog())
        with open(old) as f:
            self.assertIn("ready", f.read())

    def test_sighup_keeps_running(self):
        d = self.start_daemon(shards=1)
        c = self.greeted(d)
        d.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        self.assertTrue(d.running())
        self.assertReply(c.cmd("NOOP"), 250, "2.0.0")
        tok, msg = h.make_message()
        self.assertReply(h.send_raw_message(c, msg), 250, "2.0.0")

    def test_stop_with_many_sessions(self):
        d = self.start_daemon(shards=2)
        cs = []
        for i in range(50):
            c = d.connect()
            self.addCleanup(c.close)
            cs.append(c)
        for c in cs:
            self.assertReply(c.greeting(), 220)
        for c in cs[::2]:
            c.send(b"EHLO x.test\r\nMAIL FROM:<a@b.test>\r\n")
        for c in cs[::2]:
            c.read_replies(2)
        d.send_signal(signal.SIGTERM)
        for c in cs[1::2]:
            self.assertReply(c.read_reply(t(5)), 421, "4.3.2")
        for c in cs[::2]:
            self.assertReply(c.cmd("RSET"), 250, "2.0.0")
            self.assertReply(c.read_reply(t(5)), 421, "4.3.2")
        self.assertExits0(d, t(10))


if __name__ == "__main__":
    h.main(timeout=240)
