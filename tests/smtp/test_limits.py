#!/usr/bin/env python3
"""
Limits: message size (SIZE=, and data over Max_Message_Size refused after
the final dot with nothing spooled), recipients per message, command line
length (2048 bytes with CRLF; a 10 MB line must not grow the daemon),
protocol errors per session, Idle_Timeout and Data_Timeout, Max_Connections
and Max_Connections_Per_IP (and that their counts are given back).
"""
import os
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import t  # noqa: E402

MAX_SIZE = 100 * 1024


class MessageLimits(h.DaemonTest):

    def setUp(self):
        self.d = self.start_daemon(shards=1, Max_Message_Size="100K",
                                   Max_Recipients_Per_Message=5)

    def session(self):
        c = self.d.connect()
        self.addCleanup(c.close)
        self.assertReply(c.greeting(), 220)
        self.assertReply(c.ehlo(), 250)
        return c

    def start_data(self, c, rcpts=("c@d.test",)):
        self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250, "2.1.0")
        for r in rcpts:
            self.assertReply(c.cmd("RCPT TO:<%s>" % r), 250, "2.1.5")
        self.assertReply(c.cmd("DATA"), 354)

    def test_ehlo_advertises_limit(self):
        c = self.session()
        c.send(b"EHLO again.test\r\n")
        r = c.read_reply()
        self.assertIn("SIZE %d" % MAX_SIZE, r.lines)

    def test_size_parameter_over_limit(self):
        c = self.session()
        self.assertReply(c.cmd("MAIL FROM:<a@b.test> SIZE=%d" % (MAX_SIZE + 1)),
                         552, "5.3.4")
        self.assertReply(c.cmd("MAIL FROM:<a@b.test> SIZE=%d" % MAX_SIZE),
                         250, "2.1.0")

    def test_data_over_limit_refused_after_dot(self):
        c = self.session()
        tok, big = h.make_message(size=MAX_SIZE * 3)
        self.start_data(c)
        c.send(h.dot_stuff(big))
        # nothing may come before the final dot
        self.assertEqual(c.pending(0.3), b"", "reply before the end of data")
        c.send(b".\r\n")
        self.assertReply(c.read_reply(t(20)), 552, "5.3.4")
        # the session goes on, and a message within the limit is taken
        tok2, small = h.make_message()
        self.assertReply(h.send_raw_message(c, small), 250, "2.0.0")
        self.assertReply(c.cmd("QUIT"), 221, "2.0.0")
        sp = self.d.spool()
        self.assertTokens(sp, present=[tok2], absent=[tok])
        self.assertEqual(len(sp), 1, sp)

    def test_size_boundary(self):
        # RFC 1870: the size is the message's octets, CRLFs included, without
        # the stuffing dots and the final ".CRLF". Exactly the limit passes.
        c = self.session()
        body = [b"." * 70] * 10           # stuffing must not count
        tok, exact = h.make_message(size=MAX_SIZE, body=body)
        self.assertEqual(len(exact), MAX_SIZE)
        self.assertReply(h.send_raw_message(c, exact), 250, "2.0.0",
                         msg="a message of exactly Max_Message_Size")
        tok2, over = h.make_message(size=MAX_SIZE + 2, body=body)
        self.assertReply(h.send_raw_message(c, over), 552, "5.3.4",
                         msg="a message 2 bytes over Max_Message_Size")
        sp = self.d.spool()
        self.assertTokens(sp, present=[tok], absent=[tok2])
        self.assertEqual(h.strip_received(sp.by_token(tok)[0]["body"]), exact)

    def test_huge_message_does_not_grow_daemon(self):
        c = self.session()
        before = self.d.rss_kb()
        self.start_data(c)
        line = b"z" * 998 + b"\r\n"
        chunk = line * 1000              # 1 MB
        for _ in range(30):
            c.send(chunk)
        c.send(b".\r\n")
        self.assertReply(c.read_reply(t(30)), 552, "5.3.4")
        grown = self.d.rss_kb() - before
        self.assertLess(grown, 50 * 1024,
                        "RSS grew by %d kB for a refused 30 MB message"
                        % grown)

    def test_too_many_recipients(self):
        c = self.session()
        self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250, "2.1.0")
        for i in range(5):
            self.assertReply(c.cmd("RCPT TO:<r%d@d.test>" % i), 250, "2.1.5")
        self.assertReply(c.cmd("RCPT TO:<r5@d.test>"), 452, "4.5.3")
        self.assertReply(c.cmd("RCPT TO:<r6@d.test>"), 452, "4.5.3")
        self.assertReply(c.cmd("DATA"), 354)
        tok, msg = h.make_message()
        c.send(h.dot_stuff(msg) + b".\r\n")
        self.assertReply(c.read_reply(), 250, "2.0.0")
        m = self.d.spool().by_token(tok)
        self.assertEqual(m[0]["rcpts"], ["r%d@d.test" % i for i in range(5)])

    def test_many_452_do_not_end_session(self):
        # 452 for too many recipients is not the client's syntax error: it
        # must not count towards the 20 protocol errors.
        c = self.session()
        self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250, "2.1.0")
        for i in range(5):
            self.assertReply(c.cmd("RCPT TO:<r%d@d.test>" % i), 250, "2.1.5")
        for i in range(30):
            self.assertReply(c.cmd("RCPT TO:<x%d@d.test>" % i), 452, "4.5.3")
        self.assertReply(c.cmd("NOOP"), 250, "2.0.0")


class LineLimits(h.DaemonTest):

    def setUp(self):
        self.d = self.start_daemon(shards=1)

    def session(self):
        c = self.d.connect()
        self.addCleanup(c.close)
        self.assertReply(c.greeting(), 220)
        self.assertReply(c.ehlo(), 250)
        return c

    def test_line_length_boundary(self):
        c = self.session()
        # 2048 bytes with CRLF: accepted
        line = b"NOOP " + b"x" * (2048 - 7)
        self.assertEqual(len(line) + 2, 2048)
        self.assertReply(c.cmd(line), 250, "2.0.0")
        # one more: too long
        self.assertReply(c.cmd(line + b"x"), 500, "5.5.2")
        self.assertReply(c.cmd("NOOP"), 250, "2.0.0")

    def test_line_length_boundary_split(self):
        # The same boundary when the line arrives in pieces (the partial
        # line is buffered between reads).
        for total, code in ((2048, 250), (2049, 500)):
            c = self.session()
            line = b"NOOP " + b"x" * (total - 7) + b"\r\n"
            self.assertEqual(len(line), total)
            for i in range(0, len(line), 700):
                c.send(line[i:i + 700])
                time.sleep(0.05)
            self.assertEqual(c.read_reply().code, code, total)
            self.assertReply(c.cmd("NOOP"), 250, "2.0.0")

    def test_long_line_then_session_continues(self):
        c = self.session()
        self.assertReply(c.cmd(b"MAIL FROM:<" + b"a" * 3000 + b"@b.test>"),
                         500, "5.5.2")
        # the remainder of the long line was not taken as a command
        self.assertEqual(c.pending(0.3), b"")
        tok, msg = h.make_message()
        self.assertReply(h.send_raw_message(c, msg), 250, "2.0.0")
        self.assertTokens(self.d.spool(), present=[tok])

    def test_long_line_in_pieces(self):
        c = self.session()
        for _ in range(5):
            c.send(b"y" * 1000)
            time.sleep(0.05)
        c.send(b"\r\nNOOP\r\n")
        self.assertReply(c.read_reply(), 500, "5.5.2")
        self.assertReply(c.read_reply(), 250, "2.0.0")

    def test_10mb_line_without_newline(self):
        c = self.session()
        before = self.d.rss_kb()
        chunk = b"A" * (1 << 20)
        for _ in range(10):
            c.send(chunk)
        # nothing is answered before the line ends
        self.assertEqual(c.pending(0.3), b"")
        peak = self.d.rss_kb()
        c.send(b"\r\n")
        self.assertReply(c.read_reply(t(20)), 500, "5.5.2")
        self.assertReply(c.cmd("NOOP"), 250, "2.0.0")
        after = self.d.rss_kb()
        grown = max(peak, after) - before
        self.assertLess(grown, 50 * 1024,
                        "RSS grew by %d kB for one 10 MB line" % grown)
        tok, msg = h.make_message()
        self.assertReply(h.send_raw_message(c, msg), 250, "2.0.0")

    def test_20_errors_close_session(self):
        c = self.session()
        for i in range(19):
            self.assertReply(c.cmd("BOGUS %d" % i), 500, "5.5.2",
                             msg="error %d" % (i + 1))
        r = c.cmd("BOGUS 20")
        self.assertEqual(r.code, 421, r)
        self.assertTrue(r.enh and r.enh.startswith("4."), r)
        self.assertTrue(c.wait_closed(t(5)), "still open after 421")
        # other sessions are unaffected
        c2 = self.session()
        self.assertReply(c2.cmd("NOOP"), 250, "2.0.0")

    def test_errors_counted_across_kinds(self):
        c = self.session()
        bad = ["BOGUS", "RCPT TO:<c@d.test>", "MAIL FROM:x", "EHLO",
               "DATA"] * 4
        rs = []
        for cmd in bad[:19]:
            r = c.cmd(cmd)
            self.assertIn(r.code, (500, 501, 503), (cmd, r))
            rs.append(r)
        r = c.cmd(bad[19])
        self.assertEqual(r.code, 421, r)
        self.assertTrue(c.wait_closed(t(5)))


class Timeouts(h.DaemonTest):

    def test_idle_timeout(self):
        d = self.start_daemon(shards=1, Idle_Timeout="1s")
        c = d.connect()
        self.addCleanup(c.close)
        start = time.monotonic()
        self.assertReply(c.greeting(), 220)
        r = c.read_reply(timeout=t(6))
        waited = time.monotonic() - start
        self.assertReply(r, 421, "4.4.2")
        self.assertGreaterEqual(waited, 0.9, "timed out too early")
        self.assertTrue(c.wait_closed(t(3)), "still open after 421 4.4.2")

    def test_idle_timeout_after_commands(self):
        d = self.start_daemon(shards=1, Idle_Timeout="1s")
        c = d.connect()
        self.addCleanup(c.close)
        self.assertReply(c.greeting(), 220)
        # activity keeps it alive
        for _ in range(4):
            time.sleep(0.5)
            self.assertReply(c.cmd("NOOP"), 250, "2.0.0")
        self.assertReply(c.ehlo(), 250)
        self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250, "2.1.0")
        start = time.monotonic()
        r = c.read_reply(timeout=t(6))
        self.assertReply(r, 421, "4.4.2")
        self.assertGreaterEqual(time.monotonic() - start, 0.9)
        self.assertTrue(c.wait_closed(t(3)))

    def test_idle_timeout_spares_active_sessions(self):
        d = self.start_daemon(shards=1, Idle_Timeout="2s")
        idle = [d.connect() for _ in range(3)]
        busy = [d.connect() for _ in range(3)]
        for c in idle + busy:
            self.addCleanup(c.close)
            self.assertReply(c.greeting(), 220)
        start = time.monotonic()
        while time.monotonic() - start < 4.5:
            for c in busy:
                self.assertReply(c.cmd("NOOP"), 250, "2.0.0",
                                 msg="active session after %.1f s"
                                 % (time.monotonic() - start))
            time.sleep(0.4)
        for c in idle:
            self.assertReply(c.read_reply(t(3)), 421, "4.4.2")
        for c in busy:
            self.assertReply(c.cmd("NOOP"), 250, "2.0.0")

    def test_data_timeout(self):
        d = self.start_daemon(shards=1, Idle_Timeout="30s", Data_Timeout="1s")
        c = d.connect()
        self.addCleanup(c.close)
        self.assertReply(c.greeting(), 220)
        self.assertReply(c.ehlo(), 250)
        tok, msg = h.make_message()
        self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250, "2.1.0")
        self.assertReply(c.cmd("RCPT TO:<c@d.test>"), 250, "2.1.5")
        self.assertReply(c.cmd("DATA"), 354)
        c.send(msg[:40])
        r = c.read_reply(timeout=t(6))
        self.assertReply(r, 421, "4.4.2")
        self.assertTrue(c.wait_closed(t(3)))
        d.stop_clean()
        self.assertTokens(d.spool(), absent=[tok])

    def test_slow_but_steady_client_not_timed_out(self):
        d = self.start_daemon(shards=1, Idle_Timeout="2s", Data_Timeout="2s")
        c = d.connect()
        self.addCleanup(c.close)
        self.assertReply(c.greeting(), 220)
        self.assertReply(c.ehlo(), 250)
        tok, msg = h.make_message(size=4000)
        self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250, "2.1.0")
        self.assertReply(c.cmd("RCPT TO:<c@d.test>"), 250, "2.1.5")
        self.assertReply(c.cmd("DATA"), 354)
        for i in range(0, len(msg), 1000):
            c.send(msg[i:i + 1000])
            time.sleep(0.7)
        c.send(b".\r\n")
        self.assertReply(c.read_reply(), 250, "2.0.0")
        self.assertTokens(d.spool(), present=[tok])


class Flood(h.DaemonTest):

    def test_client_that_never_reads(self):
        # A client pipelines commands without end and never reads a reply:
        # the daemon's buffers stay bounded and other clients are served.
        d = self.start_daemon(shards=1)
        c = d.connect()
        self.addCleanup(c.close)
        self.assertReply(c.greeting(), 220)
        before = d.rss_kb()
        c.sock.setblocking(False)
        chunk = b"NOOP\r\n" * 10000
        sent, end = 0, time.monotonic() + 3
        while time.monotonic() < end:
            try:
                sent += c.sock.send(chunk)
            except BlockingIOError:
                time.sleep(0.01)
        c.sock.setblocking(True)
        c.sock.settimeout(t(10))
        grown = d.rss_kb() - before
        self.assertLess(grown, 30 * 1024, "RSS grew by %d kB after %d bytes "
                        "of unread pipelining" % (grown, sent))
        self.assertLess(sent, 50 * 1024 * 1024,
                        "the daemon kept reading %d bytes nobody will get "
                        "replies for" % sent)
        other = d.connect()
        self.addCleanup(other.close)
        self.assertReply(other.greeting(), 220)
        tok, msg = h.make_message()
        self.assertReply(h.send_raw_message(other, msg, ehlo=True), 250,
                         "2.0.0")
        # the flooder reads at last: replies are there, in order
        for _ in range(100):
            self.assertReply(c.read_reply(), 250, "2.0.0")
        c.close()
        time.sleep(0.3)
        self.assertReply(other.cmd("NOOP"), 250, "2.0.0")


class StuckClient(h.DaemonTest):

    def test_non_reading_client_times_out(self):
        # A client that fills every buffer and then neither reads nor
        # writes makes no progress: Idle_Timeout must still end it, or any
        # peer can pin a session (and its buffers) forever.
        d = self.start_daemon(shards=1, Idle_Timeout="2s")
        c = d.connect()
        self.addCleanup(c.close)
        self.assertReply(c.greeting(), 220)
        c.sock.setblocking(False)
        chunk = b"NOOP\r\n" * 10000
        stalled_since = None
        end = time.monotonic() + t(10)
        while time.monotonic() < end:
            try:
                c.sock.send(chunk)
                stalled_since = None
            except BlockingIOError:
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > 0.5:
                    break
                time.sleep(0.02)
        self.assertIsNotNone(stalled_since, "the daemon never stopped "
                             "reading from a client that does not read")
        time.sleep(2 + t(3))
        c.sock.setblocking(True)
        self.assertTrue(c.wait_closed(t(10)),
                        "session still open %.0f s after the client went "
                        "silent (Idle_Timeout = 2s)" % (2 + t(3)))


class FdShortage(h.DaemonTest):

    def test_out_of_file_descriptors(self):
        # With few fds the daemon stops accepting (connections wait in the
        # listen queue), does not spin, and takes them once fds free up.
        d = self.start_daemon(shards=1, start=False)
        d.start(nofile=64)
        first = []
        for _ in range(100):
            c = h.SMTPConn(d.host, d.port, timeout=t(10))
            self.addCleanup(c.close)
            first.append(c)
        self.assertReply(first[0].greeting(t(5)), 220)
        time.sleep(t(1))
        greeted, waiting = [first[0]], []
        for c in first[1:]:
            if b"\n" in c.pending(0.01):
                self.assertIn(c.greeting().code, (220, 421))
                greeted.append(c)
            else:
                waiting.append(c)
        self.assertTrue(greeted, "nothing greeted")
        self.assertTrue(waiting, "64 fds took 100 sessions?")
        cpu0 = d.cpu_seconds()
        time.sleep(2)
        spent = d.cpu_seconds() - cpu0
        self.assertLess(spent, 0.5, "daemon burnt %.2f s of CPU in 2 s while "
                        "out of fds" % spent)
        for c in greeted:
            c.close()
        for c in waiting[:20]:
            r = c.greeting(t(10))
            self.assertReply(r, 220, msg="queued connection after fds freed")
        tok, msg = h.make_message()
        self.assertReply(h.send_raw_message(waiting[0], msg, ehlo=True), 250,
                         "2.0.0")


class Connections(h.DaemonTest):

    def open_greeted(self, d, n, source=None):
        cs = []
        for _ in range(n):
            c = d.connect(source=source)
            self.addCleanup(c.close)
            self.assertReply(c.greeting(), 220)
            cs.append(c)
        return cs

    def assertRefused(self, c):
        r = c.greeting()
        self.assertEqual(r.code, 421, r)
        self.assertTrue(r.enh and r.enh.startswith("4."), r)
        self.assertTrue(c.wait_closed(t(5)), "refused but left open")

    def test_max_connections(self):
        d = self.start_daemon(shards=2, Max_Connections=5)
        cs = self.open_greeted(d, 5)
        for _ in range(3):
            c = d.connect()
            self.addCleanup(c.close)
            self.assertRefused(c)
        # the open ones still work
        for c in cs:
            self.assertReply(c.ehlo(), 250)
        # closing one frees a slot
        self.assertReply(cs[0].cmd("QUIT"), 221, "2.0.0")
        self.assertTrue(cs[0].wait_closed(t(5)))
        time.sleep(0.3)
        c = d.connect()
        self.addCleanup(c.close)
        self.assertReply(c.greeting(), 220)

    def test_connection_counts_are_given_back(self):
        d = self.start_daemon(shards=2, Max_Connections=5)
        for rnd in range(4):
            cs = self.open_greeted(d, 5)
            extra = d.connect()
            self.assertRefused(extra)
            extra.close()
            for i, c in enumerate(cs):
                if i % 2:
                    c.close()             # abrupt
                else:
                    self.assertReply(c.cmd("QUIT"), 221, "2.0.0")
                    self.assertTrue(c.wait_closed(t(5)))
                    c.close()
            time.sleep(0.3)
        self.open_greeted(d, 5)

    def test_max_connections_per_ip(self):
        d = self.start_daemon(shards=2, Max_Connections_Per_IP=3)
        self.open_greeted(d, 3)
        c = d.connect()
        self.addCleanup(c.close)
        self.assertRefused(c)
        # another source address is counted apart
        try:
            other = self.open_greeted(d, 3, source="127.0.0.2")
        except OSError as e:
            self.skipTest("cannot bind 127.0.0.2: %s" % e)
        c = d.connect(source="127.0.0.2")
        self.addCleanup(c.close)
        self.assertRefused(c)
        for c in other:
            c.close()
        time.sleep(0.3)
        self.open_greeted(d, 3, source="127.0.0.2")


if __name__ == "__main__":
    h.main(timeout=240)
