#!/usr/bin/env python3
"""
SMTP dialog: greeting, EHLO keywords, a full transaction (smtplib and
swaks), what lands in the spool (sender, recipients, Received header, exact
unstuffed body), command sequencing, syntax errors, parameters, relay
control, pipelining, bare LF in commands, disconnect mid-DATA.
"""
import os
import random
import re
import socket
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import t  # noqa: E402


class Protocol(h.DaemonTest):

    def setUp(self):
        self.d = self.start_daemon(shards=1, Max_Message_Size="1M",
                                   Max_Recipients_Per_Message=5)

    def session(self, ehlo=True):
        c = self.d.connect()
        self.addCleanup(c.close)
        self.assertReply(c.greeting(), 220)
        if ehlo:
            self.assertReply(c.ehlo(), 250)
        return c

    # --- greeting and EHLO ---------------------------------------------------

    def test_greeting_and_ehlo_keywords(self):
        c = self.d.connect()
        self.addCleanup(c.close)
        g = c.greeting()
        self.assertReply(g, 220)
        self.assertIn(h.HOSTNAME, g.text)
        r = c.ehlo()
        self.assertReply(r, 250)
        self.assertTrue(r.lines[0].startswith(h.HOSTNAME), r)
        kw = [line.split()[0].upper() for line in r.lines[1:] if line]
        for k in ("PIPELINING", "SIZE", "8BITMIME", "ENHANCEDSTATUSCODES"):
            self.assertIn(k, kw, r)
        size = [line for line in r.lines if line.upper().startswith("SIZE")]
        self.assertEqual(size[0].split(), ["SIZE", str(1024 * 1024)])
        self.assertReply(c.cmd("QUIT"), 221, "2.0.0")
        self.assertTrue(c.wait_closed(t(5)), "no close after QUIT")

    def test_helo(self):
        c = self.session(ehlo=False)
        self.assertReply(c.cmd("HELO client.test"), 250)
        self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250, "2.1.0")

    def test_ehlo_without_argument(self):
        c = self.session(ehlo=False)
        self.assertReply(c.cmd("EHLO"), 501, "5.5.4")
        self.assertReply(c.cmd("EHLO "), 501, "5.5.4")
        self.assertReply(c.cmd("HELO"), 501, "5.5.4")
        self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 503, "5.5.1")
        self.assertReply(c.ehlo(), 250)

    # --- a transaction, and what the spool holds -------------------------------

    def test_smtplib_transaction_spooled_exactly(self):
        tok, msg = h.make_message(rcpts=("r1@dest.test", "r2@dest.test"))
        s = self.d.smtplib()
        self.addCleanup(s.close)
        code, _ = s.ehlo()
        self.assertEqual(code, 250)
        self.assertEqual(s.mail("sender@client.test")[0], 250)
        self.assertEqual(s.rcpt("r1@dest.test")[0], 250)
        self.assertEqual(s.rcpt("r2@dest.test")[0], 250)
        code, text = s.data(msg)
        self.assertEqual(code, 250, text)
        self.assertTrue(text.startswith(b"2.0.0"), text)
        qid = h.queued_id(text)
        self.assertTrue(qid, text)
        self.assertEqual(s.quit()[0], 221)

        sp = self.d.spool()
        found = sp.by_token(tok)
        self.assertEqual(len(found), 1, sp)
        m = found[0]
        self.assertEqual(m["id"], qid)
        self.assertEqual(m["sender"], "sender@client.test")
        self.assertEqual(m["rcpts"], ["r1@dest.test", "r2@dest.test"])
        self.assertEqual(m["peer"].split(":")[0].strip("[]"), "127.0.0.1")
        self.assertEqual(m["shard"], 0)
        self.assertLessEqual(abs(m["received"] - time.time()), 120)
        self.assertTrue(m["body"].startswith(b"Received: from client.test"),
                        m["body"][:200])
        self.assertIn(qid.encode(), m["body"].split(b"\r\n\r\n")[0])
        self.assertEqual(h.strip_received(m["body"]), msg)
        self.assertEqual(m["bytes"], len(m["body"]))

    def test_null_sender_and_single_rcpt_received(self):
        tok, msg = h.make_message()
        c = self.session()
        self.assertReply(c.cmd("MAIL FROM:<>"), 250, "2.1.0")
        self.assertReply(c.cmd("RCPT TO:<only@dest.test>"), 250, "2.1.5")
        self.assertReply(c.cmd("DATA"), 354)
        c.send(h.dot_stuff(msg) + b".\r\n")
        r = c.read_reply()
        self.assertReply(r, 250, "2.0.0")
        m = self.d.spool().by_token(tok)
        self.assertEqual(len(m), 1)
        self.assertEqual(m[0]["sender"], "")
        self.assertEqual(m[0]["rcpts"], ["only@dest.test"])
        self.assertIn(b"for <only@dest.test>", m[0]["body"][:600])

    def test_dot_stuffing_round_trip(self):
        body = [".", "..", ".x", "...", ". leading dot and space", "a.b",
                "", "..", "end"]
        tok, msg = h.make_message(body=body)
        s = self.d.smtplib()
        self.addCleanup(s.close)
        refused = s.sendmail("sender@client.test", ["rcpt@dest.test"], msg)
        self.assertEqual(refused, {})
        m = self.d.spool().by_token(tok)
        self.assertEqual(len(m), 1)
        self.assertEqual(h.strip_received(m[0]["body"]), msg)

    def test_message_starting_with_dot_line(self):
        # The first line of DATA is a stuffed "..": the machine starts at BOL.
        msg = b".hidden first line\r\nX-Token: " + h.new_token().encode() + \
            b"\r\n\r\nbody\r\n"
        tok = h.TOKEN_RE.search(msg).group(1).decode()
        c = self.session()
        r = h.send_raw_message(c, msg)
        self.assertReply(r, 250, "2.0.0")
        m = self.d.spool().by_token(tok)
        self.assertEqual(len(m), 1)
        self.assertEqual(h.strip_received(m[0]["body"]), msg)

    def test_8bit_body(self):
        body = ["Gr\u00fc\u00dfe aus M\u00fcnchen \u2014 \u65e5\u672c\u8a9e"
                .encode("utf-8"), bytes(range(0x80, 0x100)), b"end"]
        tok, msg = h.make_message(body=body)
        c = self.session()
        self.assertReply(c.cmd("MAIL FROM:<a@b.test> BODY=8BITMIME"), 250,
                         "2.1.0")
        self.assertReply(c.cmd("RCPT TO:<c@d.test>"), 250, "2.1.5")
        self.assertReply(c.cmd("DATA"), 354)
        c.send(h.dot_stuff(msg) + b".\r\n")
        self.assertReply(c.read_reply(), 250, "2.0.0")
        m = self.d.spool().by_token(tok)
        self.assertEqual(len(m), 1)
        self.assertEqual(h.strip_received(m[0]["body"]), msg)

    def test_empty_message(self):
        c = self.session()
        self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250, "2.1.0")
        self.assertReply(c.cmd("RCPT TO:<empty@d.test>"), 250, "2.1.5")
        self.assertReply(c.cmd("DATA"), 354)
        c.send(b".\r\n")
        r = c.read_reply()
        self.assertReply(r, 250, "2.0.0")
        qid = h.queued_id(r)
        m = [x for x in self.d.spool().messages if x["id"] == qid]
        self.assertEqual(len(m), 1)
        self.assertEqual(h.strip_received(m[0]["body"]), b"")

    def test_several_transactions_one_session(self):
        c = self.session()
        toks, ids = [], []
        for i in range(5):
            tok, msg = h.make_message(subject="n%d" % i)
            r = h.send_raw_message(c, msg)
            self.assertReply(r, 250, "2.0.0")
            toks.append(tok)
            ids.append(h.queued_id(r))
        self.assertEqual(len(set(ids)), 5, ids)
        self.assertReply(c.cmd("QUIT"), 221, "2.0.0")
        sp = self.d.spool()
        self.assertTokens(sp, present=toks)
        self.assertEqual(sorted(m["id"] for m in sp.messages), sorted(ids))

    def test_swaks_pipelining(self):
        tok = h.new_token()
        p = subprocess.run(
            ["swaks", "--server", self.d.host, "--port", str(self.d.port),
             "--from", "a@b.test", "--to", "c@d.test", "--pipeline",
             "--helo", "swaks.test", "--header", "X-Token: " + tok,
             "--timeout", str(int(t(20)))],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            timeout=t(60))
        out = p.stdout.decode("utf-8", "replace")
        self.assertEqual(p.returncode, 0, out)
        self.assertIn("250 2.0.0", out)
        m = self.d.spool().by_token(tok)
        self.assertEqual(len(m), 1, out)
        self.assertEqual(m[0]["sender"], "a@b.test")
        self.assertEqual(m[0]["rcpts"], ["c@d.test"])

    def test_swaks_plain_several_recipients(self):
        tok = h.new_token()
        p = subprocess.run(
            ["swaks", "--server", self.d.host, "--port", str(self.d.port),
             "--from", "a@b.test", "--to", "c@d.test,e@f.test",
             "--header", "X-Token: " + tok, "--timeout", str(int(t(20)))],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            timeout=t(60))
        out = p.stdout.decode("utf-8", "replace")
        self.assertEqual(p.returncode, 0, out)
        m = self.d.spool().by_token(tok)
        self.assertEqual(len(m), 1, out)
        self.assertEqual(m[0]["rcpts"], ["c@d.test", "e@f.test"])

    def test_body_integrity_random(self):
        # Random sizes (across the daemon's body chunk sizes), 8-bit
        # content, dot-leading lines, sent in random-sized pieces: the
        # spool holds exactly what was sent.
        rnd = random.Random(4242)
        c = self.session()
        sent = {}
        sizes = [0, 1, 2, 3, 4094, 4095, 4096, 4097, 8191, 8192, 12287,
                 12288, 65535, 65536, 200000, 1024 * 1024 - 1000]
        sizes += [rnd.randrange(0, 300000) for _ in range(12)]
        for size in sizes:
            lines, n = [], 0
            while n < size:
                ln = bytes(rnd.choice(b"..abcXYZ \t\x80\xc3\xa9\xff0123")
                           for _ in range(rnd.randrange(0, 200)))
                lines.append(ln)
                n += len(ln) + 2
            tok, msg = h.make_message(body=lines)
            self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250, "2.1.0")
            self.assertReply(c.cmd("RCPT TO:<c@d.test>"), 250, "2.1.5")
            self.assertReply(c.cmd("DATA"), 354)
            data = h.dot_stuff(msg) + b".\r\n"
            i = 0
            while i < len(data):
                k = rnd.choice([1, 2, 3, 7, 100, 1460, 4096, 65536])
                c.send(data[i:i + k])
                i += k
            r = c.read_reply(t(30))
            self.assertReply(r, 250, "2.0.0", msg="size %d" % len(msg))
            sent[tok] = msg
        sp = self.d.spool()
        self.assertTokens(sp, present=list(sent))
        for tok, msg in sent.items():
            got = h.strip_received(sp.by_token(tok)[0]["body"])
            if got != msg:
                i = next((k for k in range(min(len(got), len(msg)))
                          if got[k] != msg[k]), min(len(got), len(msg)))
                self.fail("body of %d bytes differs at %d (spooled %d): "
                          "%r vs %r" % (len(msg), i, len(got),
                                        got[i:i + 40], msg[i:i + 40]))

    def test_received_header(self):
        c = self.session(ehlo=False)
        self.assertReply(c.cmd("HELO old.client.test"), 250)
        tok, msg = h.make_message()
        r = h.send_raw_message(c, msg)
        self.assertReply(r, 250, "2.0.0")
        body = self.d.spool().by_token(tok)[0]["body"]
        hdr = body[:len(body) - len(h.strip_received(body))]
        self.assertRegex(hdr, rb"^Received: from old\.client\.test "
                         rb"\(127\.0\.0\.1\)\r\n")
        self.assertIn(b"by mx.test", hdr)
        self.assertRegex(hdr, rb"with SMTP id " + re.escape(
            h.queued_id(r).encode()))
        self.assertNotIn(b"ESMTP", hdr)

    def test_half_close_after_pipelined_commands(self):
        # The client sends its last commands and shuts down its side: every
        # reply still arrives before the server closes.
        c = self.session()
        tok, msg = h.make_message()
        c.send(b"MAIL FROM:<a@b.test>\r\nRCPT TO:<c@d.test>\r\nDATA\r\n")
        self.assertEqual([r.code for r in c.read_replies(3)], [250, 250, 354])
        c.send(h.dot_stuff(msg) + b".\r\nNOOP\r\nQUIT\r\n")
        c.sock.shutdown(socket.SHUT_WR)
        self.assertTrue(c.wait_closed(t(10)), "not closed after QUIT + EOF")
        got = c.buf
        time.sleep(0.3)
        self.assertTokens(self.d.spool(), present=[tok])
        self.assertEqual(got.count(b"\r\n"), 3,
                         "expected 250, 250, 221 before the close; got %r"
                         % got)
        rs = c.read_replies(3)
        self.assertEqual([(r.code, r.enh) for r in rs],
                         [(250, "2.0.0"), (250, "2.0.0"), (221, "2.0.0")], rs)

    def test_half_close_after_many_commands(self):
        # The client pipelines NOOPs without reading until the daemon stops
        # taking them (its replies have nowhere to go), then shuts down its
        # side and reads: the EOF reaches the daemon while it still owes
        # replies and holds unread commands. Every complete command must be
        # answered before the close.
        c = self.d.connect(rcvbuf=4096)
        self.addCleanup(c.close)
        c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
        self.assertReply(c.greeting(), 220)
        c.sock.setblocking(False)
        chunk = b"NOOP\r\n" * 5000
        sent, stalled_since = 0, None
        end = time.monotonic() + t(20)
        while time.monotonic() < end:
            try:
                sent += c.sock.send(chunk[sent % len(chunk):])
                stalled_since = None
            except BlockingIOError:
                stalled_since = stalled_since or time.monotonic()
                if time.monotonic() - stalled_since > 0.5:
                    break
                time.sleep(0.01)
        self.assertIsNotNone(stalled_since, "the daemon never stopped "
                             "reading")
        c.sock.setblocking(True)
        c.sock.settimeout(c.timeout)
        n = sent // 6
        c.sock.shutdown(socket.SHUT_WR)
        self.assertTrue(c.wait_closed(t(30)), "not closed after EOF")
        got = c.buf.count(b"250 2.0.0")
        self.assertEqual(got, n, "%d of %d NOOP replies before the close"
                         % (got, n))

    def test_half_close_without_quit(self):
        c = self.session()
        c.send(b"NOOP\r\nMAIL FROM:<a@b.test>\r\n")
        c.sock.shutdown(socket.SHUT_WR)
        rs = c.read_replies(2)
        self.assertEqual([r.code for r in rs], [250, 250], rs)
        self.assertTrue(c.wait_closed(t(5)), "not closed after client EOF")

    def test_peer_leaves_before_its_answer(self):
        # The final dot, then FIN at once: the message is complete, so it is
        # kept (once) even though nobody reads the 250.
        toks = []
        for i in range(10):
            c = self.session()
            tok, msg = h.make_message(size=3000 + 1000 * i)
            self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250, "2.1.0")
            self.assertReply(c.cmd("RCPT TO:<c@d.test>"), 250, "2.1.5")
            self.assertReply(c.cmd("DATA"), 354)
            c.send(h.dot_stuff(msg) + b".\r\n")
            c.close()
            toks.append(tok)
        time.sleep(0.5)
        c = self.session()
        self.assertReply(c.cmd("NOOP"), 250, "2.0.0")
        self.d.stop_clean()
        sp = self.d.spool()
        self.assertTokens(sp, present=toks)
        self.assertEqual(len(sp), 10)

    # --- sequencing -------------------------------------------------------------

    def test_mail_before_ehlo(self):
        c = self.session(ehlo=False)
        self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 503, "5.5.1")

    def test_rcpt_before_mail(self):
        c = self.session()
        self.assertReply(c.cmd("RCPT TO:<c@d.test>"), 503, "5.5.1")

    def test_data_before_rcpt(self):
        c = self.session()
        self.assertReply(c.cmd("DATA"), 503, "5.5.1")
        self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250, "2.1.0")
        self.assertReply(c.cmd("DATA"), 554, "5.5.1")

    def test_nested_mail(self):
        c = self.session()
        self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250, "2.1.0")
        self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 503, "5.5.1")
        self.assertReply(c.cmd("RCPT TO:<c@d.test>"), 250, "2.1.5")
        self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 503, "5.5.1")

    def test_data_with_all_rcpts_rejected(self):
        c = self.session()
        self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250, "2.1.0")
        self.assertReply(c.cmd("RCPT TO:<no domain>"), 501, "5.1.3")
        self.assertReply(c.cmd("RCPT TO:<>"), 501, "5.1.3")
        self.assertReply(c.cmd("DATA"), 554, "5.5.1")
        # The transaction is still open: a good recipient makes DATA work.
        self.assertReply(c.cmd("RCPT TO:<c@d.test>"), 250, "2.1.5")
        self.assertReply(c.cmd("DATA"), 354)
        c.send(b"Subject: x\r\n\r\nx\r\n.\r\n")
        self.assertReply(c.read_reply(), 250, "2.0.0")

    def test_rset_noop_vrfy_help(self):
        c = self.session()
        self.assertReply(c.cmd("NOOP"), 250, "2.0.0")
        self.assertReply(c.cmd("NOOP anything"), 250, "2.0.0")
        self.assertReply(c.cmd("VRFY postmaster"), 252)
        r = c.cmd("HELP")
        self.assertReply(r, 214)
        self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250, "2.1.0")
        self.assertReply(c.cmd("RCPT TO:<c@d.test>"), 250, "2.1.5")
        self.assertReply(c.cmd("RSET"), 250, "2.0.0")
        # RSET ended the transaction
        self.assertReply(c.cmd("RCPT TO:<c@d.test>"), 503, "5.5.1")
        self.assertReply(c.cmd("DATA"), 503, "5.5.1")
        self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250, "2.1.0")
        self.assertReply(c.cmd("RSET"), 250, "2.0.0")
        self.assertReply(c.cmd("RSET"), 250, "2.0.0")
        self.assertReply(c.cmd("QUIT"), 221, "2.0.0")
        self.assertTrue(c.wait_closed(t(5)))
        self.assertEqual(len(self.d.spool()), 0)

    def test_verbs_case_insensitive(self):
        c = self.session(ehlo=False)
        self.assertReply(c.cmd("ehlo client.test"), 250)
        self.assertReply(c.cmd("mail from:<a@b.test>"), 250, "2.1.0")
        self.assertReply(c.cmd("rcpt to:<c@d.test>"), 250, "2.1.5")
        self.assertReply(c.cmd("data"), 354)
        c.send(b"Subject: lower\r\n\r\nx\r\n.\r\n")
        self.assertReply(c.read_reply(), 250, "2.0.0")
        self.assertReply(c.cmd("quit"), 221, "2.0.0")

    def test_ehlo_resets_transaction(self):
        c = self.session()
        self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250, "2.1.0")
        self.assertReply(c.cmd("RCPT TO:<c@d.test>"), 250, "2.1.5")
        self.assertReply(c.ehlo(), 250)
        self.assertReply(c.cmd("DATA"), 503, "5.5.1")
        self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250, "2.1.0")

    # --- syntax -----------------------------------------------------------------

    def test_unknown_command(self):
        c = self.session()
        self.assertReply(c.cmd("FOOBAR"), 500, "5.5.2")
        self.assertReply(c.cmd("MAILX FROM:<a@b.test>"), 500, "5.5.2")
        self.assertReply(c.cmd(""), 500, "5.5.2")
        self.assertReply(c.cmd("STARTTLS"), 500, "5.5.2")
        self.assertReply(c.cmd("NOOP"), 250, "2.0.0")

    def test_mail_syntax(self):
        c = self.session()
        self.assertReply(c.cmd("MAIL FROM:a@b.test"), 501, "5.1.7")
        self.assertReply(c.cmd("MAIL FROM:<a@b.test"), 501, "5.1.7")
        self.assertReply(c.cmd("MAIL FROM:<a@b.test>x"), 501, "5.1.7")
        self.assertReply(c.cmd("MAIL FROM:<a b@c.test>"), 501, "5.1.7")
        self.assertReply(c.cmd("MAIL TO:<a@b.test>"), 501)
        # a failed MAIL leaves no transaction behind
        self.assertReply(c.cmd("RCPT TO:<c@d.test>"), 503, "5.5.1")
        self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250, "2.1.0")

    def test_rcpt_syntax(self):
        c = self.session()
        self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250, "2.1.0")
        for bad in ("RCPT TO:c@d.test", "RCPT TO:<c@d.test", "RCPT TO:<>",
                    "RCPT TO:<nodomain>", "RCPT TO:<@d.test>",
                    "RCPT TO:<c@>", "RCPT TO:<c@d.test>junk",
                    "RCPT TO:<c@d_(x).test>", "RCPT TO:<%s@d.test>" %
                    ("x" * 300)):
            self.assertReply(c.cmd(bad), 501, "5.1.3", msg=bad)
        self.assertReply(c.cmd("RCPT TO:<c@d.test>"), 250, "2.1.5")

    def test_source_route_and_quoted_local_part(self):
        c = self.session()
        self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250, "2.1.0")
        self.assertReply(c.cmd("RCPT TO:<@relay.test:c@d.test>"), 250,
                         "2.1.5")
        self.assertReply(c.cmd('RCPT TO:<"quoted > local"@d.test>'), 250,
                         "2.1.5")
        self.assertReply(c.cmd("DATA"), 354)
        tok, msg = h.make_message()
        c.send(h.dot_stuff(msg) + b".\r\n")
        self.assertReply(c.read_reply(), 250, "2.0.0")
        m = self.d.spool().by_token(tok)
        self.assertEqual(m[0]["rcpts"], ["c@d.test", '"quoted > local"@d.test'])

    def test_unknown_parameters(self):
        c = self.session()
        self.assertReply(c.cmd("MAIL FROM:<a@b.test> FOO=BAR"), 555, "5.5.4")
        self.assertReply(c.cmd("MAIL FROM:<a@b.test> SMTPUTF8"), 555, "5.5.4")
        self.assertReply(c.cmd("MAIL FROM:<a@b.test> BODY=BINARYMIME"), 555,
                         "5.5.4")
        self.assertReply(c.cmd("MAIL FROM:<a@b.test> BODY=7BIT SIZE=100"),
                         250, "2.1.0")
        self.assertReply(c.cmd("RCPT TO:<c@d.test> NOTIFY=NEVER"), 555,
                         "5.5.4")
        self.assertReply(c.cmd("RCPT TO:<c@d.test> ORCPT=rfc822;c@d.test"),
                         555, "5.5.4")
        self.assertReply(c.cmd("RCPT TO:<c@d.test>"), 250, "2.1.5")

    def test_mail_size_parameter(self):
        c = self.session()
        self.assertReply(c.cmd("MAIL FROM:<a@b.test> SIZE=1048577"), 552,
                         "5.3.4")
        self.assertReply(c.cmd("MAIL FROM:<a@b.test> SIZE=99999999999999999"
                               "999999"), 501)
        self.assertReply(c.cmd("MAIL FROM:<a@b.test> SIZE=12x"), 501)
        self.assertReply(c.cmd("MAIL FROM:<a@b.test> SIZE=1048576"), 250,
                         "2.1.0")

    def test_bare_lf_and_bare_cr_in_command(self):
        c = self.session()
        c.send(b"NOOP\n")
        self.assertReply(c.read_reply(), 500, "5.5.2")
        c.send(b"NO\rOP\r\n")
        self.assertReply(c.read_reply(), 500, "5.5.2")
        c.send(b"NOOP\x00\r\n")
        self.assertReply(c.read_reply(), 500, "5.5.2")
        c.send(b"MAIL FROM:<a@b.test>\n")
        self.assertReply(c.read_reply(), 500, "5.5.2")
        # none of that opened a transaction, and the session goes on
        self.assertReply(c.cmd("RCPT TO:<c@d.test>"), 503, "5.5.1")
        self.assertReply(c.cmd("NOOP"), 250, "2.0.0")

    # --- pipelining -------------------------------------------------------------

    def test_pipelined_transaction(self):
        c = self.session()
        tok, msg = h.make_message(rcpts=("a@x.test", "b@x.test", "c@x.test"))
        c.send(b"MAIL FROM:<s@client.test>\r\n"
               b"RCPT TO:<a@x.test>\r\nRCPT TO:<b@x.test>\r\n"
               b"RCPT TO:<c@x.test>\r\nDATA\r\n")
        rs = c.read_replies(5)
        self.assertReply(rs[0], 250, "2.1.0")
        for r in rs[1:4]:
            self.assertReply(r, 250, "2.1.5")
        self.assertReply(rs[4], 354)
        c.send(h.dot_stuff(msg) + b".\r\nQUIT\r\n")
        self.assertReply(c.read_reply(), 250, "2.0.0")
        self.assertReply(c.read_reply(), 221, "2.0.0")
        self.assertTrue(c.wait_closed(t(5)))
        m = self.d.spool().by_token(tok)
        self.assertEqual(len(m), 1)
        self.assertEqual(m[0]["rcpts"], ["a@x.test", "b@x.test", "c@x.test"])

    def test_pipelined_with_errors_in_group(self):
        # Replies come in order, one per command, rejected ones included.
        c = self.session()
        c.send(b"MAIL FROM:<s@client.test>\r\nRCPT TO:<bad>\r\n"
               b"RCPT TO:<ok@x.test>\r\nBOGUS\r\nRCPT TO:<ok2@x.test> X=Y\r\n"
               b"DATA\r\n")
        rs = c.read_replies(6)
        self.assertEqual([(r.code, r.enh) for r in rs],
                         [(250, "2.1.0"), (501, "5.1.3"), (250, "2.1.5"),
                          (500, "5.5.2"), (555, "5.5.4"), (354, None)], rs)
        tok, msg = h.make_message()
        c.send(h.dot_stuff(msg) + b".\r\n")
        self.assertReply(c.read_reply(), 250, "2.0.0")
        self.assertEqual(self.d.spool().by_token(tok)[0]["rcpts"],
                         ["ok@x.test"])

    def test_pipelined_next_transaction_after_dot(self):
        # RFC 2920: end of data may be followed by the next group at once.
        c = self.session()
        tok1, m1 = h.make_message()
        tok2, m2 = h.make_message()
        c.send(b"MAIL FROM:<s@client.test>\r\nRCPT TO:<a@x.test>\r\nDATA\r\n")
        self.assertEqual([r.code for r in c.read_replies(3)], [250, 250, 354])
        c.send(h.dot_stuff(m1) + b".\r\n" +
               b"MAIL FROM:<s@client.test>\r\nRCPT TO:<b@x.test>\r\nDATA\r\n")
        rs = c.read_replies(4)
        self.assertEqual([(r.code, r.enh) for r in rs],
                         [(250, "2.0.0"), (250, "2.1.0"), (250, "2.1.5"),
                          (354, None)], rs)
        c.send(h.dot_stuff(m2) + b".\r\nQUIT\r\n")
        rs = c.read_replies(2)
        self.assertEqual([r.code for r in rs], [250, 221], rs)
        sp = self.d.spool()
        self.assertTokens(sp, present=[tok1, tok2])
        self.assertEqual(sp.by_token(tok2)[0]["rcpts"], ["b@x.test"])

    def test_everything_in_one_write(self):
        # A client that does not wait for 354 (not RFC-conforming, but it must
        # not confuse the server): every reply arrives, in order.
        c = self.session()
        toks, data = [], b""
        for i in range(10):
            tok, m = h.make_message()
            toks.append(tok)
            data += (b"MAIL FROM:<s@client.test>\r\nRCPT TO:<r%d@x.test>\r\n"
                     b"DATA\r\n" % i) + h.dot_stuff(m) + b".\r\n"
        c.send(data + b"QUIT\r\n")
        rs = c.read_replies(41, timeout=t(30))
        for i in range(10):
            got = [(r.code, r.enh) for r in rs[4 * i:4 * i + 4]]
            self.assertEqual(got, [(250, "2.1.0"), (250, "2.1.5"), (354, None),
                                   (250, "2.0.0")], (i, rs[4 * i:4 * i + 4]))
        self.assertReply(rs[40], 221, "2.0.0")
        self.assertTokens(self.d.spool(), present=toks)

    # --- connection ends ----------------------------------------------------------

    def test_disconnect_mid_data(self):
        tok, msg = h.make_message(size=20000)
        c = self.session()
        self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250, "2.1.0")
        self.assertReply(c.cmd("RCPT TO:<c@d.test>"), 250, "2.1.5")
        self.assertReply(c.cmd("DATA"), 354)
        c.send(msg[:len(msg) // 2])
        c.close()
        # an abrupt reset too
        c2 = self.session()
        self.assertReply(c2.cmd("MAIL FROM:<a@b.test>"), 250, "2.1.0")
        self.assertReply(c2.cmd("RCPT TO:<c@d.test>"), 250, "2.1.5")
        self.assertReply(c2.cmd("DATA"), 354)
        tok2, msg2 = h.make_message()
        c2.send(msg2 + b"\r\n.")          # not the end yet: ".\r\n" missing
        import socket
        import struct
        c2.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                           struct.pack("ii", 1, 0))
        c2.close()
        time.sleep(0.5)
        # the daemon is fine and takes the next message
        tok3, msg3 = h.make_message()
        c3 = self.session()
        self.assertReply(h.send_raw_message(c3, msg3), 250, "2.0.0")
        c3.cmd("QUIT")
        self.d.stop_clean()
        sp = self.d.spool()
        self.assertTokens(sp, present=[tok3], absent=[tok, tok2])
        self.assertEqual(len(sp), 1, sp)

    def test_disconnect_without_quit(self):
        for _ in range(20):
            c = self.session()
            self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250, "2.1.0")
            c.close()
        c = self.session()
        self.assertReply(c.cmd("NOOP"), 250, "2.0.0")

    def test_input_after_quit_ignored(self):
        c = self.session()
        c.send(b"QUIT\r\nNOOP\r\nNOOP\r\n")
        self.assertReply(c.read_reply(), 221, "2.0.0")
        self.assertTrue(c.wait_closed(t(5)))
        self.assertEqual(c.buf, b"", "replies after QUIT")


class Relay(h.DaemonTest):
    """A listener whose Relay_Hosts does not cover 127.0.0.1."""

    def test_relay_denied(self):
        d = self.start_daemon(shards=1, listeners=[
            h.listener(), h.listener(relay=("10.0.0.0/8",))])
        self.assertEqual(len(d.addrs), 2, d.addrs)
        self.assertNotEqual(d.addrs[0][1], d.addrs[1][1])
        c = d.connect(1)
        self.addCleanup(c.close)
        self.assertReply(c.greeting(), 220)
        self.assertReply(c.ehlo(), 250)
        self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250, "2.1.0")
        self.assertReply(c.cmd("RCPT TO:<c@d.test>"), 550, "5.7.1")
        self.assertReply(c.cmd("RCPT TO:<postmaster@d.test>"), 550, "5.7.1")
        self.assertReply(c.cmd("DATA"), 554, "5.5.1")
        # the first listener relays for us
        c0 = d.connect(0)
        self.addCleanup(c0.close)
        self.assertReply(c0.greeting(), 220)
        tok, msg = h.make_message()
        self.assertReply(h.send_raw_message(c0, msg, ehlo=True), 250, "2.0.0")
        d.stop_clean()
        sp = d.spool()
        self.assertTokens(sp, present=[tok])
        self.assertEqual(len(sp), 1)

    def test_ipv6_listener(self):
        import socket
        try:
            s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
            s.bind(("::1", 0))
            s.close()
        except OSError as e:
            self.skipTest("no IPv6 loopback here: %s" % e)
        d = self.start_daemon(shards=2, listeners=[
            h.listener(listens=("[::1]:0", "127.0.0.1:0"))])
        self.assertEqual(d.addrs[0][0], "::1", d.addrs)
        c = d.connect(0)
        self.addCleanup(c.close)
        self.assertReply(c.greeting(), 220)
        tok, msg = h.make_message()
        self.assertReply(h.send_raw_message(c, msg, ehlo=True), 250, "2.0.0")
        m = d.spool().by_token(tok)
        self.assertEqual(len(m), 1)
        self.assertIn("::1", m[0]["peer"])


if __name__ == "__main__":
    h.main(timeout=180)
