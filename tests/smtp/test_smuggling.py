#!/usr/bin/env python3
"""
SMTP smuggling: a message whose body holds a non-standard end of data
("\\n.\\r\\n", "\\r\\n.\\n", "\\r.\\r\\n", ...) followed by a complete fake
transaction must get exactly one reply at the real end of data, 550 5.6.0,
with nothing spooled from either part, and the session must go on. Also
the end-of-data sequence split over many TCP segments (the machine's state
carries across reads), and bare CR / bare LF in a body on their own.
Raw sockets only: smtplib would repair the line ends.
"""
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import t  # noqa: E402

# Separators a lax server would take for the end of data.
SEPARATORS = [
    b"\n.\r\n",
    b"\r\n.\n",
    b"\n.\n",
    b"\r.\r\n",
    b"\r\n.\r\r\n",
    b"\r\n.\r",
    b"\r.\r",
    b"\n.\r",
    b"\r\n.\n\r\n",
    b"\r\n\r\n.\n",
    b"\n\n.\n\n",
    b"\r\r\n.\r\r\n",
]


class Smuggling(h.DaemonTest):

    def setUp(self):
        self.d = self.start_daemon(shards=1)
        self.c = self.d.connect()
        self.addCleanup(self.c.close)
        self.assertReply(self.c.greeting(), 220)
        self.assertReply(self.c.ehlo(), 250)

    def open_data(self, c=None):
        c = c or self.c
        self.assertReply(c.cmd("MAIL FROM:<attacker@client.test>"), 250,
                         "2.1.0")
        self.assertReply(c.cmd("RCPT TO:<victim@dest.test>"), 250, "2.1.5")
        self.assertReply(c.cmd("DATA"), 354)

    def smuggled(self, sep):
        tok_outer, outer = h.make_message(body=[b"outer part"])
        tok_inner, inner = h.make_message(
            sender="admin@bank.test", rcpts=("victim@dest.test",),
            body=[b"smuggled part"])
        data = (outer[:-2] + sep +
                b"MAIL FROM:<admin@bank.test>\r\n"
                b"RCPT TO:<victim@dest.test>\r\n"
                b"DATA\r\n" + inner + b".\r\n")
        return tok_outer, tok_inner, data

    def check_one_refusal(self, c, what):
        r = c.read_reply(t(10))
        self.assertReply(r, 550, "5.6.0", msg=what)
        # exactly one reply: the next thing we hear answers our NOOP
        extra = c.pending(0.3)
        self.assertEqual(extra, b"", "%s: more replies after the end of "
                         "data: %r" % (what, extra))
        self.assertReply(c.cmd("NOOP"), 250, "2.0.0", msg=what)

    def test_separators(self):
        toks = []
        for sep in SEPARATORS:
            with self.subTest(sep=sep):
                tok_o, tok_i, data = self.smuggled(sep)
                toks += [tok_o, tok_i]
                self.open_data()
                self.c.send(data)
                self.check_one_refusal(self.c, repr(sep))
        # the session goes on and takes a clean message
        tok, msg = h.make_message()
        self.assertReply(h.send_raw_message(self.c, msg), 250, "2.0.0")
        self.assertReply(self.c.cmd("QUIT"), 221, "2.0.0")
        self.d.stop_clean()
        sp = self.d.spool()
        self.assertTokens(sp, present=[tok], absent=toks)
        self.assertEqual(len(sp), 1, sp)

    def test_separators_byte_by_byte(self):
        # The same, with the separator and what surrounds it sent one byte
        # per TCP segment: the state must survive each read boundary.
        toks = []
        for sep in SEPARATORS[:8]:
            with self.subTest(sep=sep):
                tok_o, tok_i, data = self.smuggled(sep)
                toks += [tok_o, tok_i]
                i = data.index(sep)
                self.open_data()
                self.c.send(data[:i - 2])
                for b in data[i - 2:i + len(sep) + 12]:
                    self.c.send(bytes([b]))
                    time.sleep(0.003)
                self.c.send(data[i + len(sep) + 12:])
                self.check_one_refusal(self.c, repr(sep))
        self.d.stop_clean()
        self.assertTokens(self.d.spool(), absent=toks)

    def test_real_end_first_then_junk(self):
        # "\r\n.\r\n" ends the message: what follows is commands, and a
        # fake "." line after it is an unknown command, not data.
        tok, msg = h.make_message()
        self.open_data()
        self.c.send(msg + b".\r\n.\nNOOP\r\n")
        self.assertReply(self.c.read_reply(), 250, "2.0.0")
        self.assertReply(self.c.read_reply(), 500, "5.5.2")   # ".\n"
        self.assertReply(self.c.read_reply(), 250, "2.0.0")   # NOOP
        self.assertTokens(self.d.spool(), present=[tok])

    def test_bare_lf_in_body(self):
        tok, msg = h.make_message(body=[b"line one\nline two"])
        self.open_data()
        self.c.send(msg + b".\r\n")
        self.check_one_refusal(self.c, "bare LF")
        tok2, msg2 = h.make_message(body=[b"cr\ralone"])
        self.open_data()
        self.c.send(msg2 + b".\r\n")
        self.check_one_refusal(self.c, "bare CR")
        tok3, msg3 = h.make_message(body=[b"ends with cr\r"])
        self.open_data()
        self.c.send(msg3 + b".\r\n")
        self.check_one_refusal(self.c, "CR CR LF")
        self.d.stop_clean()
        sp = self.d.spool()
        self.assertTokens(sp, absent=[tok, tok2, tok3])
        self.assertEqual(len(sp), 0, sp)

    def test_dot_cr_not_lf(self):
        # ".\r" at the start of a line followed by something other than LF
        # is a bare CR, never an end.
        tok, msg = h.make_message()
        self.open_data()
        self.c.send(msg + b".\rX\r\nmore\r\n.\r\n")
        self.check_one_refusal(self.c, ".\\rX")
        self.assertTokens(self.d.spool(), absent=[tok])

    def test_final_dot_split_across_reads(self):
        # A clean message whose end arrives in pieces: accepted, body exact.
        for split in ([b"\r", b"\n.", b"\r", b"\n"], [b"\r\n", b".", b"\r\n"],
                      [b"\r\n.\r", b"\n"], [b"\r", b"\n.\r\n"]):
            with self.subTest(split=split):
                tok, msg = h.make_message(body=[b"x", b"..y"])
                self.open_data()
                self.c.send(h.dot_stuff(msg)[:-2])
                for piece in split:
                    time.sleep(0.05)
                    self.c.send(piece)
                self.assertReply(self.c.read_reply(), 250, "2.0.0")
                m = self.d.spool().by_token(tok)
                self.assertEqual(len(m), 1)
                self.assertEqual(h.strip_received(m[0]["body"]), msg)

    def test_smuggling_with_pipelined_client(self):
        # The fake commands are followed by our own pipelined NOOP: the
        # reply stream must be exactly [550, 250].
        tok_o, tok_i, data = self.smuggled(b"\n.\r\n")
        self.open_data()
        self.c.send(data + b"NOOP\r\n")
        rs = self.c.read_replies(2)
        self.assertEqual([(r.code, r.enh) for r in rs],
                         [(550, "5.6.0"), (250, "2.0.0")], rs)
        self.assertEqual(self.c.pending(0.3), b"")
        self.assertTokens(self.d.spool(), absent=[tok_o, tok_i])


if __name__ == "__main__":
    h.main(timeout=180)
