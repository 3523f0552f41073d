#!/usr/bin/env python3
"""
restart_crash - small versions of `bench/run restart` and `bench/run crash`,
so that a regression in the no-loss / no-duplicate promises
(/work/shared/DESIGN.md, "Durability and duplicates") fails CI.

Each test runs bench/restart.py's run_once with this build's binaries
(RINGMAIL_BUILD: ringmaild, bench/ringload, bench/ringsink): ringsink with
--latency 5 as the gateway, ringmaild on a fixed free loopback port with a
fresh spool, ringload sending 3000 messages (--tokens), and when half of
them got 250 ringmaild is stopped and started again on the same spool,
config and port while ringload's sessions reconnect. Every wait is bounded
(stretched 3x under the sanitizers) and every process is stopped by its
PID (PR_SET_PDEATHSIG as a backstop).

  graceful   SIGTERM: exit 0, then every 250'd token at the sink exactly
             once (0 lost, 0 duplicates)
  crash      SIGKILL: every 250'd token at the sink (0 lost), and at most
             Max_Outbound_Connections x shards duplicates (16 here). After
             kill -9 the only duplicates are deliveries in flight: the sink
             took the data (and recorded the token) but the daemon had not
             yet read the 250, at most one per outbound connection; or it
             had, but the done-mark was not yet durable (the duplicate
             window). Max_Outbound_Connections is a per-destination limit
             split over the shards (ceil(M / shards) connections each), so
             M connections in all; allowing M x shards leaves room for about
             one non-durable done-mark per connection on top. M is 8 here to
             keep the bound tight.

Standalone script: exit 0 pass, 1 fail, 77 when the binaries are missing.
"""
import ctypes
import os
import shutil
import signal
import sys
import tempfile
import threading
import unittest

SRC = os.environ.get("RINGMAIL_SRC") or os.path.abspath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
BUILD = os.environ.get("RINGMAIL_BUILD") or os.path.join(SRC, "build", "dev")
RINGMAILD = os.path.join(BUILD, "ringmaild")
RINGLOAD = os.path.join(BUILD, "bench", "ringload")
RINGSINK = os.path.join(BUILD, "bench", "ringsink")
SKIP_EXIT = 77

os.environ.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1")
os.environ.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")

sys.path.insert(0, os.path.join(SRC, "bench"))
import restart  # noqa: E402  (bench/restart.py: the scenario itself)


def _sanitized():
    try:
        with open(RINGMAILD, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


SCALE = 3 if _sanitized() else 1
MESSAGES = 3000
MAX_OUT = 8
SHARDS = 2

_libc = ctypes.CDLL(None, use_errno=True)


def _pdeathsig():
    _libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


class RestartCrash(unittest.TestCase):

    def run_mode(self, mode):
        d = tempfile.mkdtemp(prefix="ringmail-%s-" % mode)
        r = restart.run_once(mode, d, messages=MESSAGES, sessions=20, per_conn=50, latency_ms=5,
                             shards=SHARDS, max_out=MAX_OUT, fraction=0.5, size=1024,
                             rate=1000 // SCALE, ringmaild=RINGMAILD, ringload=RINGLOAD,
                             ringsink=RINGSINK, scale=SCALE, preexec=_pdeathsig,
                             segment_size="4M")
        summary = {k: r.get(k) for k in ("ok_250", "delivered", "lost", "lost_sample", "duplicates",
                                          "duplicate_tokens_sample", "in_flight_at_signal", "drain_s",
                                          "start2_s", "dup_window_max_before",
                                          "dup_window_max_after_restart", "exit1_rc", "exit2_rc",
                                          "load_rc", "error", "wait_error", "bound")}
        sys.stderr.write("%s: %r\n" % (mode, summary))
        if r.get("error") or r.get("lost"):
            sys.stderr.write("run directory kept: %s\n%s\n" % (d, r.get("daemon_stderr_tail", "")))
        else:
            shutil.rmtree(d, ignore_errors=True)
        self.assertNotIn("error", r, r.get("error"))
        self.assertEqual(r["load_rc"], 0, "ringload failed")
        self.assertGreater(r["ok_250"], MESSAGES // 2, "too few messages got 250")
        self.assertEqual(r["tokens_twice_in_ringload"], 0)
        self.assertEqual(r["lost"], 0, "250'd messages never delivered: %r" % r["lost_sample"])
        self.assertEqual(r["exit2_rc"], 0, "the restarted ringmaild did not exit 0")
        self.assertEqual(r["shards"], SHARDS)
        return r

    def test_graceful_restart_exactly_once(self):
        r = self.run_mode("restart")
        self.assertEqual(r["exit1_rc"], 0, "ringmaild did not exit 0 after SIGTERM")
        self.assertEqual(r["duplicates"], 0,
                         "graceful restart delivered twice: %r" % r["duplicate_tokens_sample"])
        self.assertEqual(r["abandoned_at_drain"], 0)

    def test_crash_no_loss_bounded_duplicates(self):
        r = self.run_mode("crash")
        self.assertEqual(r["exit1_rc"], -signal.SIGKILL)
        self.assertLessEqual(r["duplicates"], MAX_OUT * SHARDS,
                             "more duplicates than outbound connections: %r"
                             % r["duplicate_tokens_sample"])


def main():
    for b in (RINGMAILD, RINGLOAD, RINGSINK):
        if not os.access(b, os.X_OK):
            sys.stderr.write("skip: %s not built\n" % b)
            return SKIP_EXIT
    timer = threading.Timer(270, lambda: (sys.stderr.write("watchdog: 270 s\n"), os._exit(1)))
    timer.daemon = True
    timer.start()
    prog = unittest.main(exit=False, verbosity=2)
    return 0 if prog.result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
