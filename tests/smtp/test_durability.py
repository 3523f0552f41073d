#!/usr/bin/env python3
"""
Durability: every message that got its 250 is in the spool, exactly once,
after SIGKILL (under load, and right after a single 250), after restarts,
and after damage to a segment's tail: a torn last record (truncated inside
the MSG record, or inside its END record) loses only that message; garbage
after the last record loses nothing. The daemon restarts on each spool.
"""
import os
import random
import re
import struct
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import t  # noqa: E402

REC_MAGIC = 0x8e4d5252
REC_HDR = 24
REC_MSG = 2
REC_END = 3


def align8(n):
    return (n + 7) & ~7


def segment_records(path):
    """
    Walk a segment (spool_rec.h): [(offset, type, payload bytes)] and the
    offset where its data ends (the first all-zero header, or the file end).
    """
    with open(path, "rb") as f:
        data = f.read()
    off, recs = 0, []
    while off + REC_HDR <= len(data):
        hdr = data[off:off + REC_HDR]
        if hdr == bytes(REC_HDR):
            break
        magic, typ, _ver, _z, plen = struct.unpack_from("<IBBHQ", hdr)
        if magic != REC_MAGIC:
            raise AssertionError("%s: no record header at %d: %r"
                                 % (path, off, hdr))
        recs.append((off, typ, plen))
        off += REC_HDR + align8(plen)
    return recs, off


def segment_path(d, m):
    return os.path.join(d.spool_base, str(m["shard"]), m["segment"])


def last_message(sp):
    """The message with the highest (segment, offset) in the spool."""
    return max(sp.messages, key=lambda m: (m["shard"], m["segment"],
                                           m["offset"]))


class Sender:
    """
    `threads` clients sending messages back to back on persistent
    connections until stopped or the daemon dies; acked = {token: id} for
    every 250.
    """

    def __init__(self, d, threads):
        self.d = d
        self.acked = {}
        self.sent = set()
        self.lock = threading.Lock()
        self.stop = threading.Event()
        self.errors = []
        self.threads = [threading.Thread(target=self.run, args=(i,),
                                         daemon=True) for i in range(threads)]

    def start(self):
        for th in self.threads:
            th.start()
        return self

    def run(self, i):
        c = None
        try:
            c = self.d.connect(timeout=t(20))
            if c.greeting().code != 220 or c.ehlo().code != 250:
                return
            while not self.stop.is_set():
                tok, msg = h.make_message(subject="load %d" % i,
                                          size=random.randrange(600, 30000))
                with self.lock:
                    self.sent.add(tok)
                r = h.send_raw_message(c, msg)
                if r.code != 250:
                    self.errors.append(r)
                    return
                with self.lock:
                    self.acked[tok] = h.queued_id(r)
        except (OSError, AssertionError):
            pass   # the daemon was killed under us
        finally:
            if c is not None:
                c.close()

    def join(self, timeout):
        self.stop.set()
        for th in self.threads:
            th.join(timeout)
        return [th for th in self.threads if th.is_alive()]

    def count(self):
        with self.lock:
            return len(self.acked)


class Kill9(h.DaemonTest):

    def test_kill9_under_load(self):
        # 1 MB segments: the load crosses segment switches too.
        d = self.start_daemon(shards=2, Spool_Segment_Size="1M")
        s = Sender(d, threads=10).start()
        deadline = time.monotonic() + t(60)
        while s.count() < 150 and time.monotonic() < deadline:
            time.sleep(0.01)
        self.assertGreaterEqual(s.count(), 150, "too slow: %d acked, "
                                "errors %r" % (s.count(), s.errors[:3]))
        d.kill9()
        alive = s.join(t(30))
        self.assertEqual(alive, [], "client threads hung after SIGKILL")
        self.assertEqual(s.errors, [])
        acked = dict(s.acked)

        sp = d.spool()
        self.assertTokens(sp, present=list(acked))
        counts = sp.tokens()
        self.assertEqual([k for k, v in counts.items() if v > 1], [])
        self.assertTrue(set(counts) <= s.sent, "unknown tokens spooled")
        for m in sp.messages:
            toks = h.TOKEN_RE.findall(m["body"])
            tok = toks[0].decode()
            if tok in acked:
                self.assertEqual(m["id"], acked[tok])
        self.assertEqual(sp.summary.get("corrupt", 0), 0, sp.stderr)

        # it starts again on that spool, says it recovered, loses nothing
        d.start()
        self.assertRegex(d.stderr(), re.compile("recover", re.I))
        tok_new, msg = h.make_message()
        c = d.connect()
        self.addCleanup(c.close)
        self.assertReply(c.greeting(), 220)
        r = h.send_raw_message(c, msg, ehlo=True)
        self.assertReply(r, 250, "2.0.0")
        self.assertNotIn(h.queued_id(r), set(acked.values()),
                         "message id reused after restart")
        c.cmd("QUIT")
        d.stop_clean()
        sp2 = d.spool()
        self.assertTokens(sp2, present=list(acked) + [tok_new])
        self.assertEqual(len(sp2), len(sp) + 1, (sp, sp2))
        ids = sp2.ids()
        self.assertEqual(len(ids), len(set(ids)), "duplicate message ids")

    def test_kill9_right_after_250(self):
        d = self.start_daemon(shards=1)
        acked = []
        for i in range(5):
            if i:
                d.start()
            c = d.connect()
            self.assertReply(c.greeting(), 220)
            self.assertReply(c.ehlo(), 250)
            tok, msg = h.make_message(size=2000 * (i + 1))
            self.assertReply(c.cmd("MAIL FROM:<a@b.test>"), 250, "2.1.0")
            self.assertReply(c.cmd("RCPT TO:<c@d.test>"), 250, "2.1.5")
            self.assertReply(c.cmd("DATA"), 354)
            c.send(h.dot_stuff(msg) + b".\r\n")
            r = c.read_reply()
            d.kill9()
            c.close()
            self.assertReply(r, 250, "2.0.0")
            acked.append(tok)
            sp = d.spool()
            self.assertTokens(sp, present=acked)
            self.assertEqual(len(sp), len(acked), sp)
        d.start()
        d.stop_clean()
        self.assertTokens(d.spool(), present=acked)


class Restart(h.DaemonTest):

    def send_n(self, d, n):
        toks = []
        c = d.connect()
        self.addCleanup(c.close)
        self.assertReply(c.greeting(), 220)
        self.assertReply(c.ehlo(), 250)
        for _ in range(n):
            tok, msg = h.make_message(size=random.randrange(500, 3000))
            self.assertReply(h.send_raw_message(c, msg), 250, "2.0.0")
            toks.append(tok)
        self.assertReply(c.cmd("QUIT"), 221, "2.0.0")
        return toks

    def test_restart_keeps_messages(self):
        d = self.start_daemon(shards=2)
        toks = self.send_n(d, 20)
        d.restart()
        toks += self.send_n(d, 20)
        d.restart()
        d.stop_clean()
        sp = d.spool()
        self.assertTokens(sp, present=toks)
        self.assertEqual(len(sp), 40, sp)
        ids = sp.ids()
        self.assertEqual(len(set(ids)), 40, "message ids not unique")
        self.assertEqual(sp.summary.get("torn", 0), 0, sp.stderr)
        self.assertEqual(sp.summary.get("corrupt", 0), 0, sp.stderr)

    def test_message_larger_than_segment(self):
        d = self.start_daemon(shards=1, Spool_Segment_Size="1M",
                              Max_Message_Size="5M")
        c = d.connect()
        self.addCleanup(c.close)
        self.assertReply(c.greeting(), 220)
        self.assertReply(c.ehlo(), 250)
        sent = {}
        for size in (3 * 1024 * 1024, 1000, 1024 * 1024 + 5, 2000):
            tok, msg = h.make_message(size=size)
            self.assertReply(h.send_raw_message(c, msg), 250, "2.0.0",
                             msg="%d bytes" % size)
            sent[tok] = msg
        c.cmd("QUIT")
        d.restart()
        self.assertRegex(d.stderr(), "recovered 4 live messages")
        d.stop_clean()
        sp = d.spool()
        self.assertTokens(sp, present=list(sent))
        self.assertEqual(len(sp), 4)
        for tok, msg in sent.items():
            self.assertEqual(h.strip_received(sp.by_token(tok)[0]["body"]),
                             msg)

    def test_many_segments(self):
        d = self.start_daemon(shards=1, Spool_Segment_Size="1M")
        toks = []
        c = d.connect()
        self.addCleanup(c.close)
        self.assertReply(c.greeting(), 220)
        self.assertReply(c.ehlo(), 250)
        for i in range(120):
            tok, msg = h.make_message(size=40000 + i)
            self.assertReply(h.send_raw_message(c, msg), 250, "2.0.0")
            toks.append(tok)
        c.cmd("QUIT")
        sp = d.spool()
        self.assertTokens(sp, present=toks)
        segs = {m["segment"] for m in sp.messages}
        self.assertGreaterEqual(len(segs), 4, sp)
        # log order is reception order
        order = [h.TOKEN_RE.findall(m["body"])[0].decode()
                 for m in sp.messages]
        self.assertEqual(order, toks)
        d.restart()
        toks += self.send_n(d, 5)
        d.stop_clean()
        sp = d.spool()
        self.assertTokens(sp, present=toks)
        self.assertEqual(len(sp), 125)
        self.assertEqual(sp.summary.get("torn", 0), 0, sp.stderr)
        self.assertEqual(sp.summary.get("corrupt", 0), 0, sp.stderr)

    def test_fewer_shards_after_restart(self):
        # Mail accepted by shard 1 must not be stranded when the daemon
        # comes back with one shard (Shards = auto on a smaller machine):
        # it is recovered, or the daemon says loudly that it is not.
        d = self.start_daemon(shards=2)
        toks = []
        for _ in range(10):
            toks += self.send_n(d, 3)
        d.stop_clean()
        sp = d.spool()
        self.assertEqual({m["shard"] for m in sp.messages}, {0, 1})
        on1 = sum(1 for m in sp.messages if m["shard"] == 1)
        with open(d.conf_path) as f:
            text = f.read()
        with open(d.conf_path, "w") as f:
            f.write(text.replace("Shards = 2", "Shards = 1"))
        d.conf_text = text.replace("Shards = 2", "Shards = 1")
        try:
            d.start()
        except h.DaemonError:
            # refusing to start is an answer too, if it says why
            self.assertRegex(d.stderr(), r"(?i)shard|spool")
            return
        log = d.stderr()
        recovered = sum(int(x) for x in
                        re.findall(r"recovered (\d+) live messages", log))
        if recovered != len(toks):
            self.assertRegex(
                log, r"(?i)(spool/1|shard 1\b|orphan|not served|unowned)",
                "%d messages of spool/1 neither recovered (%d of %d) nor "
                "reported:\n%s" % (on1, recovered, len(toks), d.tail()))

    def damaged_spool(self, n=10):
        d = self.start_daemon(shards=1)
        toks = self.send_n(d, n)
        d.stop_clean()
        sp = d.spool()
        self.assertEqual(len(sp), n, sp)
        self.assertTokens(sp, present=toks)
        self.assertEqual(sp.summary.get("torn", 0), 0, sp.stderr)
        return d, toks, sp

    def check_restart(self, d, keep, lose):
        """After damage: ringmaild starts, keeps `keep`, takes new mail."""
        d.start()
        toks = self.send_n(d, 2)
        d.stop_clean()
        sp = d.spool()
        self.assertTokens(sp, present=keep + toks, absent=lose)
        self.assertEqual(len(sp), len(keep) + 2, sp)
        self.assertLessEqual(sp.summary.get("torn", 0), 1, sp.stderr)
        return sp

    def torn_test(self, where):
        d, toks, sp = self.damaged_spool()
        last = last_message(sp)
        lost = h.TOKEN_RE.findall(last["body"])[0].decode()
        path = segment_path(d, last)
        recs, end = segment_records(path)
        msg = [r for r in recs if r[0] == last["offset"]]
        self.assertEqual(len(msg), 1, (last["offset"], recs[-4:]))
        self.assertEqual(msg[0][1], REC_MSG)
        end_rec = [r for r in recs if r[0] > last["offset"]]
        self.assertTrue(end_rec and end_rec[0][1] == REC_END, recs[-4:])
        if where == "msg":
            cut = last["offset"] + REC_HDR + 40
        else:
            cut = end_rec[0][0] + REC_HDR + 4
        os.truncate(path, cut)
        keep = [x for x in toks if x != lost]
        sp = d.spool()
        self.assertTokens(sp, present=keep, absent=[lost])
        self.assertEqual(len(sp), len(keep), sp)
        self.assertEqual(sp.summary.get("torn"), 1, sp.stderr)
        self.assertEqual(sp.summary.get("corrupt", 0), 0, sp.stderr)
        self.check_restart(d, keep, [lost])

    def test_torn_msg_record(self):
        self.torn_test("msg")

    def test_torn_end_record(self):
        self.torn_test("end")

    def test_truncated_after_header_only(self):
        # A segment cut right after its SEGHDR record holds no message.
        d, toks, sp = self.damaged_spool(n=3)
        path = segment_path(d, sp.messages[0])
        recs, _ = segment_records(path)
        os.truncate(path, recs[1][0])
        sp = d.spool()
        self.assertEqual(len(sp), 0, sp)
        self.check_restart(d, [], toks)

    def test_leftover_files_in_shard_directory(self):
        # What a crash while making a segment can leave behind (an empty
        # file, a SEGHDR cut short), and files that are not segments at all:
        # the daemon starts, keeps every message, and takes new ones.
        d, toks, sp = self.damaged_spool(n=5)
        shard0 = os.path.join(d.spool_base, "0")
        with open(os.path.join(shard0, "seg-00000000000000f0.log"), "wb"):
            pass
        with open(os.path.join(shard0, "seg-00000000000000f1.log"), "wb") as f:
            f.write(struct.pack("<IBB", REC_MAGIC, 1, 1) + bytes(2))
            f.truncate(1 << 20)
        with open(os.path.join(shard0, "README"), "w") as f:
            f.write("an operator's note\n")
        os.makedirs(os.path.join(shard0, "old"))
        sp = d.spool()
        self.assertTokens(sp, present=toks)
        self.assertEqual(len(sp), 5, sp)
        self.check_restart(d, toks, [])
        d.start()
        self.assertTrue(os.path.exists(os.path.join(shard0, "README")),
                        "the daemon deleted a file that is not its own")
        d.stop_clean()

    def corrupt_test(self, where):
        d, toks, sp = self.damaged_spool(n=10)
        victim = sp.messages[4]
        lost = h.TOKEN_RE.findall(victim["body"])[0].decode()
        path = segment_path(d, victim)
        with open(path, "r+b") as f:
            if where == "body":
                # a byte of the body, deep inside the MSG payload
                f.seek(victim["offset"] + REC_HDR + 200)
            else:
                # the payload length in the MSG record header
                f.seek(victim["offset"] + 9)
            b = f.read(1)
            f.seek(-1, 1)
            f.write(bytes([b[0] ^ 0x5a]))
        keep = [x for x in toks if x != lost]
        sp = d.spool()
        self.assertTokens(sp, present=keep, absent=[lost])
        self.assertEqual(len(sp), 9, sp)
        self.assertEqual(sp.summary.get("corrupt"), 1, sp.stderr)
        # the daemon sets it aside with a log line, and serves
        d.start()
        self.assertRegex(d.stderr(), r"corrupt record in %s at offset %d"
                         % (re.escape(victim["segment"]), victim["offset"]))
        aside = os.path.join(d.spool_base, "0", "corrupt")
        self.assertTrue(os.path.isdir(aside) and os.listdir(aside),
                        "nothing moved aside to corrupt/")
        new = self.send_n(d, 2)
        d.stop_clean()
        sp = d.spool()
        self.assertTokens(sp, present=keep + new, absent=[lost])
        self.assertEqual(len(sp), 11, sp)

    def test_corrupt_body_in_middle(self):
        self.corrupt_test("body")

    def test_corrupt_header_in_middle(self):
        self.corrupt_test("header")

    def garbage_test(self, garbage):
        d, toks, sp = self.damaged_spool()
        last = last_message(sp)
        path = segment_path(d, last)
        _recs, end = segment_records(path)
        with open(path, "r+b") as f:
            f.seek(end)
            f.write(garbage)
        sp = d.spool()
        self.assertTokens(sp, present=toks)
        self.assertEqual(len(sp), len(toks), sp)
        self.check_restart(d, toks, [])

    def test_garbage_after_data(self):
        rnd = random.Random(1234)
        g = bytes(rnd.randrange(1, 256) for _ in range(300))
        self.garbage_test(g)

    def test_fake_header_after_data(self):
        # Right magic, wrong header checksum, absurd length.
        g = struct.pack("<IBBHQII", REC_MAGIC, REC_MSG, 1, 0, 1 << 40, 0,
                        0xdeadbeef) + b"\x55" * 100
        self.garbage_test(g)

    def test_partial_header_after_data(self):
        self.garbage_test(struct.pack("<I", REC_MAGIC) + b"\x02\x01")


if __name__ == "__main__":
    h.main(timeout=300)
