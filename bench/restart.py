"""bench/run restart: graceful restart of ringmaild under load (duplicates and loss).

bench/ringsink (--latency MS, --record) is the gateway; ringmaild (fresh spool
on ext4 under var/bench/, Gateway to the sink, Shutdown_Timeout 30s) listens on
a fixed loopback port; bench/ringload sends MESSAGES messages (--tokens: the
token of each message that got 250). When ringload has FRACTION of them 250'd,
ringmaild gets SIGTERM (restart) or SIGKILL (crash, bench/run crash); once it
has exited it is started again on the same spool, configuration and port, and
ringload's sessions reconnect (--retries, --retry-delay). Then the scenario
waits (bounded) until the sink has every 250'd token, stops ringmaild with
SIGTERM (its shard exit lines give the duplicate-window gauge) and the sink
(its JSON gives the duplicate count).

Per run: 250'd, delivered (unique tokens at the sink), lost (250'd tokens the
sink never saw: must be 0), duplicates (tokens the sink accepted more than
once: must be 0 after a graceful restart; after kill -9 at most the deliveries
in flight at the kill), deliveries in flight at the SIGTERM (delivery-log
lines with outcome "delivered" written by the first daemon after the signal:
the deliveries that finished during the drain; none start during it), the
drain time (SIGTERM to exit), the start time (spawn to ready line) and the
down time (signal to ready).
"""

import argparse
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

import lib

SCENARIO = "restart"
RINGLOAD = os.environ.get("RINGLOAD") or os.path.join(lib.BUILD, "bench", "ringload")
RINGSINK = os.environ.get("RINGSINK") or os.path.join(lib.BUILD, "bench", "ringsink")

CONFIG = """\
# written by bench/restart.py
Spool_Base = "spool"
Paniclog = "log/paniclog"
Delivery_Log = "log/delivery.log"
Shards = {shards}
Hostname = "bench.test"
Max_Connections = 20000
Idle_Timeout = 600s
Shutdown_Timeout = {shutdown_timeout}
Spool_Segment_Size = {segment_size}
Gateway = "127.0.0.1:{sink_port}"
Max_Outbound_Connections = {max_out}
Retry_Interval = 2s
ESMTP_Listener {{
  Listen "127.0.0.1:{port}" {{ }}
  Relay_Hosts = ( "127.0.0.0/8" )
}}
Metrics_Listener {{ Listen "127.0.0.1:{metrics_port}" {{ }} }}
"""

READY_RE = re.compile(r"ringmaild ready: (\d+) shards?, listening on ([0-9.]+):(\d+)")
DLV_RE = re.compile(r"shard (\d+): delivery: (\d+) delivered, .*?(\d+) connections, "
                    r"(\d+) messages left in the spool, duplicate window max (\d+) "
                    r"\(now (\d+)\), (\d+) abandoned")
PROGRESS_RE = re.compile(r"ringload: +[0-9.]+s sent (\d+) 2xx (\d+)")


RESTART_NOTES = "- In flight: the scenario signals the MTA as soon as it has read the sink's answer to SIGUSR1; the age of the sample at the signal is recorded per run (in_flight_sample_age_ms). The delivery-log count (deliveries ringmaild finished during its drain) is an upper estimate: lines are written at the next loop turn, so a delivery that finished just before the signal can be counted.\n- The duplicate-window gauge (per shard) goes well above a shard's outbound connections (16): done-marks share the spool's group commit, and a connection sends its next message without waiting for the previous one's mark, so a slow commit lets marks pile up (up to 102 on one shard in an earlier set of runs, `restart-20261123-89e71d0.2.json`, same binary; its build_up_to_date=false was only a pending meson regeneration). A graceful restart waits for them, so it does not matter here; it does for a crash.\n"
CRASH_NOTES = '- Every crash run so far had exactly the number of outbound connections as duplicates (32: one delivery awaiting its delayed reply per connection, the done-marks having caught up). The bound by connections is not structural: the duplicate-window gauge reached 102 on one shard with 16 connections in a restart run (see the restart section), so a kill during a slow commit could give more duplicates than connections.\n'


class RunError(Exception):
    pass


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _wait(pred, timeout, what, proc=None):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if proc is not None and proc.poll() is not None:
            raise RunError("%s exited (%s) while waiting for %s" % (proc.args[0], proc.returncode, what))
        if time.monotonic() > deadline:
            raise RunError("timed out after %.0f s waiting for %s" % (timeout, what))
        time.sleep(0.02)


def _stop(proc, sig=signal.SIGTERM, timeout=30):
    """Signal one process we started, wait for it (bounded); kill if needed."""
    if proc is None or proc.poll() is not None:
        return proc.returncode if proc else None
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=30)
        return "killed after %ds" % timeout


def _tokens_file(path):
    out = {}
    try:
        with open(path, errors="replace") as f:
            for line in f:
                tok = line.split(" ", 1)[0].strip()
                if tok:
                    out[tok] = out.get(tok, 0) + 1
    except OSError:
        pass
    return out


class Daemon:
    def __init__(self, binary, run_dir, port, preexec=None):
        self.binary, self.dir, self.port, self.preexec = binary, run_dir, port, preexec
        self.conf = os.path.join(run_dir, "ringmail.conf")
        self.proc = None
        self.n = 0

    def start(self, timeout):
        self.n += 1
        self.err = os.path.join(self.dir, "ringmaild.%d.stderr" % self.n)
        t0 = time.monotonic()
        with open(self.err, "w") as errf:
            self.proc = subprocess.Popen([self.binary, "-c", self.conf], cwd=self.dir,
                                         stdin=subprocess.DEVNULL, stdout=errf, stderr=errf,
                                         preexec_fn=self.preexec)
        m = _wait(lambda: READY_RE.search(_read(self.err)), timeout, "ringmaild's ready line", self.proc)
        if int(m.group(3)) != self.port:
            raise RunError("ringmaild listens on %s, expected %d" % (m.group(3), self.port))
        self.shards = int(m.group(1))
        return time.monotonic() - t0

    def exit_lines(self):
        out = []
        for m in DLV_RE.finditer(_read(self.err)):
            out.append({"shard": int(m.group(1)), "delivered": int(m.group(2)),
                        "connections": int(m.group(3)), "left": int(m.group(4)),
                        "dup_window_max": int(m.group(5)), "dup_window_now": int(m.group(6)),
                        "abandoned": int(m.group(7))})
        return out


SINK_LINE_RE = re.compile(r"ringsink: (\w+): at ([0-9.]+) .*?messages \d+: accepted (\d+) .*?"
                          r"in flight (\d+) \(in data (\d+), awaiting reply (\d+)\)")
LOAD_PROGRESS_RE = re.compile(r"ringload: +([0-9.]+)s sent (\d+) 2xx (\d+)")
SINK_PROGRESS_MS = 250


def sink_lines(path):
    """The sink's counts lines: [(why, monotonic s, accepted, in flight,
    in data, awaiting reply)]."""
    return [(m.group(1), float(m.group(2)), int(m.group(3)), int(m.group(4)), int(m.group(5)), int(m.group(6)))
            for m in SINK_LINE_RE.finditer(_read(path))]


DUPWIN_RE = re.compile(r'^ringmail_duplicate_window\{shard="(\d+)"\} (\d+)$', re.M)


class DupWindowSampler(threading.Thread):
    """Samples ringmaild's duplicate-window gauge from /metrics every
    interval until stopped (it survives the restart: same port). Keeps the
    highest shard value and the highest sum over shards seen."""

    def __init__(self, port, interval=0.05):
        super().__init__(daemon=True)
        self.url = "http://127.0.0.1:%d/metrics" % port
        self.interval = interval
        self.stop_ev = threading.Event()
        self.samples = 0
        self.max_shard = 0
        self.max_sum = 0
        self.errors = 0

    def run(self):
        import urllib.request
        while not self.stop_ev.is_set():
            try:
                with urllib.request.urlopen(self.url, timeout=1) as r:
                    vals = [int(v) for _, v in DUPWIN_RE.findall(r.read().decode())]
                if vals:
                    self.samples += 1
                    self.max_shard = max(self.max_shard, max(vals))
                    self.max_sum = max(self.max_sum, sum(vals))
            except OSError:
                self.errors += 1   # down between the kill and the restart
            self.stop_ev.wait(self.interval)

    def stop(self):
        self.stop_ev.set()
        self.join(timeout=5)


class RingmailTarget:
    """ringmaild on a fixed port; SIGTERM (restart) or SIGKILL (crash)."""

    name = "ringmail"

    def __init__(self, run_dir, sink_port, shards, max_out, segment_size, ringmaild, preexec):
        self.port = _free_port()
        self.metrics_port = _free_port()
        with open(os.path.join(run_dir, "ringmail.conf"), "w") as f:
            f.write(CONFIG.format(shards=shards, sink_port=sink_port, port=self.port, max_out=max_out,
                                  shutdown_timeout="30s", segment_size=segment_size,
                                  metrics_port=self.metrics_port))
        os.makedirs(os.path.join(run_dir, "log"), exist_ok=True)
        self.d = Daemon(ringmaild, run_dir, self.port, preexec)
        self.dlog = os.path.join(run_dir, "log", "delivery.log")
        self.proc = None

    def start(self, timeout):
        t = self.d.start(timeout)
        self.proc = self.d.proc
        return t

    def describe(self, rec):
        rec["shards"] = self.d.shards
        rec["daemon_command"] = [self.d.binary, "-c", self.d.conf]

    def stop_signal(self, mode, rec, scale):
        """Signal, wait for the exit; record what the daemon says."""
        off = os.path.getsize(self.dlog) if os.path.exists(self.dlog) else 0
        t_sig = time.monotonic()
        if mode == "restart":
            rc = _stop(self.d.proc, signal.SIGTERM, 60 * scale)
            rec["drain_s"] = round(time.monotonic() - t_sig, 3)
            rec["exit1_rc"] = rc
            if rc != 0:
                raise RunError("ringmaild exited %s after SIGTERM" % rc)
            ex1 = self.d.exit_lines()
            rec["exit1"] = ex1
            with open(self.dlog, "rb") as f:
                f.seek(off)
                tail = f.read().decode(errors="replace")
            rec["in_flight_dlog"] = sum(1 for l in tail.splitlines() if '"outcome":"delivered"' in l)
            rec["abandoned_at_drain"] = sum(x["abandoned"] for x in ex1)
            rec["dup_window_max_before"] = max([x["dup_window_max"] for x in ex1] or [0])
        else:
            self.d.proc.send_signal(signal.SIGKILL)
            rec["exit1_rc"] = self.d.proc.wait(timeout=30)
            rec["drain_s"] = round(time.monotonic() - t_sig, 3)

    def flush(self):
        return False

    def final_stop(self, rec, scale):
        rc = _stop(self.d.proc, signal.SIGTERM, 60 * scale)
        rec["exit2_rc"] = rc
        ex2 = self.d.exit_lines()
        rec["exit2"] = ex2
        rec["dup_window_max_after_restart"] = max([x["dup_window_max"] for x in ex2] or [0])
        rec["left_in_spool"] = sum(x["left"] for x in ex2)
        return rc

    def kill(self):
        if self.d.proc is not None and self.d.proc.poll() is None:
            self.d.proc.kill()
            self.d.proc.wait(timeout=30)

    def stderr_tail(self):
        return _read(self.d.err)[-2000:] if getattr(self.d, "err", None) else ""


class PostfixTarget:
    """A private Postfix relay (bench/postfix.py) restarted the way an
    operator does: `postfix stop` (master's SIGTERM to its children; each
    finishes or is killed at its own pace), wait until no process of the
    instance is left, `postfix start`."""

    name = "postfix"

    def __init__(self, run_dir, sink_port):
        import postfix
        self.pf = postfix.Postfix(os.path.join(run_dir, "postfix"), sink_port)
        self.port = self.pf.port
        self.proc = None
        self.starts = 0

    def start(self, timeout):
        t0 = time.monotonic()
        self.pf.start(timeout, check=self.starts == 0)
        self.starts += 1
        return time.monotonic() - t0

    def describe(self, rec):
        import postfix
        rec["shards"] = None
        rec["postfix_main_cf"] = postfix.MAIN_CF
        rec["postfix_conf_dir"] = self.pf.conf_dir

    def _gone(self, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.pf.pids():
                return True
            time.sleep(0.02)
        return False

    def stop_signal(self, mode, rec, scale):
        t_sig = time.monotonic()
        if mode == "restart":
            self.pf._postfix("stop", timeout=60 * scale)
            rec["exit1_rc"] = 0 if self._gone(60 * scale) else "processes left after %.0f s" % (60 * scale)
        else:
            for p in self.pf.pids():
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
            rec["exit1_rc"] = 0 if self._gone(30) else "processes left after SIGKILL"
        rec["drain_s"] = round(time.monotonic() - t_sig, 3)
        if self.pf.cgroup:
            self.pf.cgroup.remove()
        rec["postfix_queue_at_restart"] = self.pf.queue_count()

    def flush(self):
        """`postfix flush`: deferred mail now, instead of after
        minimal_backoff_time (300 s as shipped)."""
        self.pf._postfix("flush")
        return True

    def final_stop(self, rec, scale):
        rec["left_in_spool"] = self.pf.queue_count()
        self.pf.stop()
        rec["exit2_rc"] = 0
        return 0

    def kill(self):
        """Stop what is left of the instance after a failed run; the
        cgroup goes too, even when no process is left in it."""
        try:
            if self.pf.pids():
                self.pf.stop(timeout=10)
        except Exception:  # noqa: BLE001
            pass
        if self.pf.cgroup:
            self.pf.cgroup.remove()

    def stderr_tail(self):
        return self.pf.maillog_tail(2000)


def run_once(mode, run_dir, messages=20000, sessions=50, per_conn=100, latency_ms=20,
             shards="auto", max_out=32, fraction=0.5, size=1024, rate=2000, ringmaild=None,
             ringload=None, ringsink=None, scale=1.0, preexec=None, segment_size="64M",
             target="ringmail", flush_after_s=30):
    """One restart (mode "restart": SIGTERM, or `postfix stop`) or crash (mode
    "crash": SIGKILL) under load, of ringmaild (target "ringmail") or of a
    private Postfix (target "postfix"). Returns a dict; a step that fails is
    recorded in it as "error"."""
    assert mode in ("restart", "crash")
    assert target in ("ringmail", "postfix")
    ringmaild = ringmaild or lib.RINGMAILD
    ringload = ringload or RINGLOAD
    ringsink = ringsink or RINGSINK
    rec = {"mode": mode, "target": target, "messages_sent": messages, "sessions": sessions, "per_conn": per_conn,
           "sink_latency_ms": latency_ms, "rate": rate, "max_outbound_connections": max_out, "fraction": fraction,
           "run_dir": run_dir, "loadavg_before": open("/proc/loadavg").read().split()[:3]}
    sink = load = None
    mta = None
    sampler = None
    t_run = time.monotonic()
    try:
        # the sink: counts lines every SINK_PROGRESS_MS give the delivered series
        sink_rec = os.path.join(run_dir, "sink.rec")
        sink_json = os.path.join(run_dir, "sink.json")
        sink_out = os.path.join(run_dir, "sink.out")
        sink_err = os.path.join(run_dir, "sink.err")
        scmd = [ringsink, "--record", sink_rec, "--json", sink_json, "--latency", str(latency_ms),
                "--progress", str(SINK_PROGRESS_MS), "127.0.0.1:0"]
        with open(sink_out, "w") as o, open(sink_err, "w") as e:
            sink = subprocess.Popen(scmd, stdin=subprocess.DEVNULL, stdout=o, stderr=e, preexec_fn=preexec)
        m = _wait(lambda: re.search(r"listening on 127\.0\.0\.1:(\d+)", _read(sink_out)), 10 * scale,
                  "ringsink's first line", sink)
        sink_port = int(m.group(1))
        rec["sink_command"] = scmd

        # the MTA, on a fixed port so that the restarted one is found again
        if target == "ringmail":
            mta = RingmailTarget(run_dir, sink_port, shards, max_out, segment_size, ringmaild, preexec)
        else:
            mta = PostfixTarget(run_dir, sink_port)
        rec["start1_s"] = round(mta.start(30 * scale), 3)
        mta.describe(rec)
        port = mta.port
        if target == "ringmail":
            sampler = DupWindowSampler(mta.metrics_port)
            sampler.start()

        # the load
        tokens = os.path.join(run_dir, "tokens")
        load_json = os.path.join(run_dir, "ringload.json")
        lcmd = [ringload, "-s", str(sessions), "-m", str(messages), "-M", str(per_conn),
                "-l", str(size), "-r", str(rate), "--tokens", tokens, "--json", load_json,
                "--retries", "400", "--retry-delay", "50", "--phase-timeout", str(int(60 * scale)),
                "--timeout", str(int(600 * scale)), "127.0.0.1:%d" % port]
        rec["load_command"] = lcmd
        load_err = os.path.join(run_dir, "ringload.err")
        with open(os.path.join(run_dir, "ringload.out"), "w") as o, open(load_err, "w") as e:
            load = subprocess.Popen(lcmd, stdin=subprocess.DEVNULL, stdout=o, stderr=e, preexec_fn=preexec)
        t_load = time.monotonic()

        def ok_count():
            ms = PROGRESS_RE.findall(_read(load_err))
            return int(ms[-1][1]) if ms else 0
        target_n = int(messages * fraction)
        _wait(lambda: ok_count() >= target_n, 300 * scale, "%d 250s before the %s" % (target_n, mode), load)
        rec["ok_at_signal_progress"] = ok_count()

        # the restart: first ask the sink what is in flight (DATA to reply),
        # and wait for its answer: a sink starved of CPU (Postfix under load
        # keeps both CPUs busy) can take tens of ms to answer, by when the
        # MTA would already be stopping.
        def usr1_lines():
            return [x for x in sink_lines(sink_err) if x[0] == "SIGUSR1"]
        n_usr1 = len(usr1_lines())
        sink.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 5 * scale
        while len(usr1_lines()) <= n_usr1:
            if time.monotonic() > deadline:
                raise RunError("ringsink did not answer SIGUSR1 within %.0f s" % (5 * scale))
            time.sleep(0.001)
        t_sig = time.monotonic()
        mta.stop_signal(mode, rec, scale)
        t_exit = time.monotonic()
        rec["start2_s"] = round(mta.start(30 * scale), 3)
        t_ready = time.monotonic()
        rec["down_s"] = round(t_ready - t_sig, 3)
        sample = usr1_lines()[n_usr1]
        rec["in_flight_at_signal"] = sample[3]
        rec["in_flight_in_data"] = sample[4]
        rec["in_flight_awaiting_reply"] = sample[5]
        rec["in_flight_sample_age_ms"] = round((t_sig - sample[1]) * 1000, 3)
        rec["in_flight_method"] = ("ringsink's transactions between DATA and its reply, sampled by SIGUSR1; "
                                   "the MTA is signalled as soon as the sample is read")

        # the rest of the load
        try:
            rec["load_rc"] = load.wait(timeout=600 * scale)
        except subprocess.TimeoutExpired:
            raise RunError("ringload still running after %.0f s" % (600 * scale))
        with open(load_json) as f:
            load_json_d = json.load(f)
        rec["ringload"] = {k: load_json_d.get(k) for k in load_json_d
                           if not isinstance(load_json_d.get(k), (dict, list))}
        ok_tokens = _tokens_file(tokens)
        rec["ok_250"] = len(ok_tokens)
        rec["tokens_twice_in_ringload"] = sum(1 for v in ok_tokens.values() if v > 1)

        # every 250'd token at the sink (bounded), then stop everything
        t_w = time.monotonic()

        def all_there():
            return set(ok_tokens) <= set(_tokens_file(sink_rec))
        try:
            _wait(all_there, flush_after_s * scale, "the sink to have every 250'd token", sink)
        except RunError as e:
            rec["flushed"] = mta.flush()
            try:
                _wait(all_there, 120 * scale, "the sink to have every 250'd token", sink)
            except RunError as e2:
                rec["wait_error"] = "%s; %s" % (e, e2)
        rec["wait_all_delivered_s"] = round(time.monotonic() - t_w, 3)
        time.sleep(1.5)  # one more record flush, to see late duplicates
        if sampler is not None:
            sampler.stop()
            rec["dup_window_sampled_max_shard"] = sampler.max_shard
            rec["dup_window_sampled_max_sum"] = sampler.max_sum
            rec["dup_window_samples"] = sampler.samples
            sampler = None
        rc = mta.final_stop(rec, scale)
        _stop(sink, signal.SIGTERM, 30)
        with open(sink_json) as f:
            counts = json.load(f)
        rec["sink"] = {k: v for k, v in counts.items() if not isinstance(v, (dict, list))}
        seen = _tokens_file(sink_rec)
        rec["delivered"] = sum(1 for t in ok_tokens if t in seen)
        rec["sink_unique_tokens"] = len(seen)
        rec["lost"] = sum(1 for t in ok_tokens if t not in seen)
        rec["lost_sample"] = [t for t in ok_tokens if t not in seen][:10]
        rec["duplicates"] = sum(v - 1 for v in seen.values() if v > 1)
        rec["duplicate_tokens_sample"] = [t for t, v in seen.items() if v > 1][:10]
        rec["sink_duplicate_tokens"] = counts.get("duplicate_tokens")

        # the time series, on the load's clock (ringload's start = 0)
        t0 = load_json_d.get("start_monotonic_s") or t_load
        rec["series"] = {
            "t0_monotonic_s": t0,
            "events_s": {"signal": round(t_sig - t0, 3), "exited": round(t_exit - t0, 3),
                         "ready": round(t_ready - t0, 3)},
            "accepted": [[float(t), int(ok)] for t, _, ok in LOAD_PROGRESS_RE.findall(_read(load_err))],
            "delivered": [[round(at - t0, 3), acc] for why, at, acc, _, _, _ in sink_lines(sink_err)],
            "sink_in_flight": [[round(at - t0, 3), fl] for why, at, _, fl, _, _ in sink_lines(sink_err)],
        }
        if target == "ringmail":
            rec["bound"] = max_out * rec["shards"]
        # ringmaild's promises; Postfix's duplicates are what it is compared on, not a failed run
        ok_dups = (target == "postfix" or
                   (rec["duplicates"] == 0 if mode == "restart" else rec["duplicates"] <= rec.get("bound", 0)))
        rec["ok"] = rec["lost"] == 0 and rc == 0 and rec["load_rc"] == 0 and ok_dups
    except (RunError, OSError, ValueError, RuntimeError, subprocess.SubprocessError) as e:
        rec["ok"] = False
        rec["error"] = "%s: %s" % (type(e).__name__, e)
    finally:
        if sampler is not None:
            sampler.stop()
        for p in (load, sink):
            if p is not None and p.poll() is None:
                p.kill()
                p.wait(timeout=30)
        if mta is not None:
            if not rec.get("ok"):
                rec["daemon_stderr_tail"] = mta.stderr_tail()
            mta.kill()
        rec["elapsed_s"] = round(time.monotonic() - t_run, 1)
    return rec


KEYS = ["ok_250", "delivered", "lost", "duplicates", "in_flight_at_signal", "in_flight_awaiting_reply",
        "in_flight_dlog", "drain_s", "start2_s", "down_s", "dup_window_max_after_restart", "dup_window_max_before",
        "dup_window_sampled_max_sum", "dup_window_sampled_max_shard",
        "abandoned_at_drain", "wait_all_delivered_s", "postfix_queue_at_restart"]


def summarize(runs, targets=("ringmail",)):
    out = {}
    for t in targets:
        good = [r for r in runs if "lost" in r and r.get("target", "ringmail") == t]
        out[t] = {k: lib.stat3([r.get(k) for r in good]) for k in KEYS}
        out[t]["runs"] = len([r for r in runs if r.get("target", "ringmail") == t])
        out[t]["ok_runs"] = len([r for r in good if r.get("ok")])
        out[t]["flushed_runs"] = len([r for r in good if r.get("flushed")])
    return out


def table(mode, s, nruns, targets=("ringmail",)):
    f = lib.fmt_stat
    sig = "signal (SIGTERM; Postfix: `postfix stop`)" if mode == "restart" else "kill -9"
    rows = [("messages 250'd", "ok_250", "%.0f"), ("delivered (250'd tokens at the sink)", "delivered", "%.0f"),
            ("**lost**", "lost", "%.0f"), ("**duplicates** (sink accepted a token twice)", "duplicates", "%.0f"),
            ("in flight at the %s (sink: between DATA and its reply)" % sig, "in_flight_at_signal", "%.0f"),
            ("  of which awaiting the sink's delayed reply", "in_flight_awaiting_reply", "%.0f")]
    if mode == "restart":
        rows += [("ringmaild: deliveries finished during the drain (delivery log)", "in_flight_dlog", "%.0f"),
                 ("ringmaild: abandoned by the drain", "abandoned_at_drain", "%.0f"),
                 ("drain: signal to exit of every process (s)", "drain_s", "%.2f"),
                 ("ringmaild: duplicate-window max, first daemon (exit line; highest shard)",
                  "dup_window_max_before", "%.0f")]
    else:
        rows += [("kill -9 to exit (s)", "drain_s", "%.3f")]
    rows += [("start: spawn to ready (s)", "start2_s", "%.2f"),
             ("down: signal to ready (s)", "down_s", "%.2f"),
             ("Postfix: queue files at the restart", "postfix_queue_at_restart", "%.0f"),
             ("after the load: time until the sink had every 250'd token (s)", "wait_all_delivered_s", "%.1f"),
             ("ringmaild: duplicate-window max, restarted daemon (exit line; highest shard)",
              "dup_window_max_after_restart", "%.0f"),
             ("ringmaild: duplicate window sampled from /metrics every 50 ms during the run, max (all shards)",
              "dup_window_sampled_max_sum", "%.0f"),
             ("ringmaild: ... highest single shard", "dup_window_sampled_max_shard", "%.0f")]
    names = {"ringmail": "ringmaild", "postfix": "Postfix"}
    lines = ["| %d runs each, median (min–max) | %s |" % (nruns, " | ".join(names[t] for t in targets)),
             "|---|" + "---|" * len(targets)]
    for label, key, fmt in rows:
        cells = [f(s[t][key], fmt) for t in targets]
        if all(c == "n/a" for c in cells):
            continue
        lines.append("| %s | %s |" % (label, " | ".join(cells)))
    return "\n".join(lines)


def main(argv, mode=SCENARIO):
    ap = argparse.ArgumentParser(prog="bench/run " + mode, description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="runs per target (default 3)")
    ap.add_argument("--messages", type=int, default=20000, help="messages per run (default 20000)")
    ap.add_argument("--sessions", type=int, default=50, help="ringload sessions (default 50)")
    ap.add_argument("--per-conn", type=int, default=100, help="ringload messages per connection (default 100)")
    ap.add_argument("--latency", type=int, default=20, help="ringsink --latency MS (default 20)")
    ap.add_argument("--rate", type=int, default=2000,
                    help="ringload --rate: messages/s in all (default 2000, so that the signal lands mid-run)")
    ap.add_argument("--fraction", type=float, default=0.5,
                    help="signal when this share of the messages got 250 (default 0.5)")
    ap.add_argument("--shards", default="auto", help="ringmaild Shards (default auto)")
    ap.add_argument("--max-out", type=int, default=32, help="Max_Outbound_Connections (default 32)")
    ap.add_argument("--targets", default="ringmail,postfix" if mode == "restart" else "ringmail",
                    help="ringmail and/or postfix (default: %s)" % (
                        "ringmail,postfix" if mode == "restart" else "ringmail"))
    ap.add_argument("--keep", action="store_true", help="keep run directories")
    ap.add_argument("--no-record", action="store_true", help="write neither results/*.json nor RESULTS.md")
    args = ap.parse_args(argv)
    targets = [t for t in args.targets.split(",") if t]
    for t in targets:
        if t not in ("ringmail", "postfix"):
            ap.error("unknown target %r" % t)
    if "postfix" in targets and os.geteuid() != 0:
        raise SystemExit("bench: the Postfix target needs root")
    lib.check_binaries()
    machine = lib.machine_info()
    cmdline = "bench/run %s%s" % (mode, "".join(" " + a for a in argv))
    lib.log("%s: %s; commit %s; %d runs of %d messages, targets %s" % (
        mode, lib.machine_line(machine), machine["commit"], args.runs, args.messages, targets))
    runs = []
    t0 = time.monotonic()
    for i in range(args.runs):
        for t in targets:
            rd = lib.make_run_dir("%s-%s" % (mode, t))
            r = run_once(mode, rd, messages=args.messages, sessions=args.sessions, per_conn=args.per_conn,
                         latency_ms=args.latency, shards=args.shards, max_out=args.max_out,
                         fraction=args.fraction, rate=args.rate, target=t)
            r["round"] = i
            runs.append(r)
            lib.log("[%d/%d] %s %s: 250'd %s delivered %s lost %s duplicates %s in-flight %s (dlog %s) drain %s "
                    "start %s dupwin %s/%s%s%s" % (
                        i + 1, args.runs, t, mode, r.get("ok_250"), r.get("delivered"), r.get("lost"),
                        r.get("duplicates"), r.get("in_flight_at_signal"), r.get("in_flight_dlog"),
                        r.get("drain_s"), r.get("start2_s"), r.get("dup_window_max_before"),
                        r.get("dup_window_max_after_restart"), " (postfix flush needed)" if r.get("flushed") else "",
                        "" if r.get("ok") else "  FAILED: %s" % r.get("error", "check failed")))
            if r.get("ok") and not args.keep:
                import shutil
                shutil.rmtree(rd, ignore_errors=True)
                r["run_dir"] = None
    s = summarize(runs, targets)
    tab = table(mode, s, args.runs, targets)
    print(tab)
    rm = [r for r in runs if r.get("target") == "ringmail"]
    nok = sum(1 for r in rm if r.get("ok"))
    shards = sorted({r.get("shards") for r in rm if r.get("shards")})
    bound = args.max_out * (shards[0] if shards else 0)
    if not rm:
        verdict = "ringmaild not run (--targets)"
    elif mode == "restart":
        verdict = "%s: ringmaild 0 lost and 0 duplicates in %d of %d runs" % (
            "MET" if rm and nok == len(rm) else "NOT MET", nok, len(rm))
    else:
        verdict = "%s: 0 lost and duplicates <= %d (Max_Outbound_Connections %d x %s shards) in %d of %d runs" % (
            "MET" if rm and nok == len(rm) else "NOT MET", bound, args.max_out, shards, nok, len(rm))
    pf = [r for r in runs if r.get("target") == "postfix" and "lost" in r]
    pf_line = ""
    if pf:
        pf_line = ("Postfix, restarted the same way under the same load: lost %s, duplicates %s in its %d runs "
                   "(per run; `postfix flush` was needed in %d)" % (
                       [r["lost"] for r in pf], [r["duplicates"] for r in pf], len(pf),
                       sum(1 for r in pf if r.get("flushed"))))
    print(verdict)
    if pf_line:
        print(pf_line)
    data = {"scenario": mode, "command": cmdline, "machine": machine,
            "binaries": {"ringmaild": lib.RINGMAILD, "ringload": RINGLOAD, "ringsink": RINGSINK},
            "shards": shards, "targets": targets, "parameters": vars(args), "summary": s, "verdict": verdict,
            "postfix": pf_line, "runs": runs, "elapsed_s": round(time.monotonic() - t0, 1)}
    if pf:
        data["postfix_version"] = subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True,
                                                 text=True).stdout.strip()
    data["commit_at_end"], prov = lib.provenance_end(machine)
    ok_all = bool(rm) and nok == len(rm) or not rm
    if args.no_record:
        return 0 if ok_all else 1
    path = lib.write_json(mode, data)
    lib.log("wrote %s" % os.path.relpath(path, lib.ROOT))
    if mode == "restart":
        title = "## restart: SIGTERM and restart under load, ringmaild and Postfix"
        how = ("- When ringload has %d%% of the messages 250'd: ringmaild gets SIGTERM, Postfix `postfix stop` "
               "(its private instance); wait until every process has exited; start again on the same spool or "
               "queue, config and port; ringload's sessions reconnect. Just before the signal the sink is asked "
               "(SIGUSR1) how many transactions are between DATA and its reply: the deliveries in flight; the "
               "signal follows as soon as its answer is read. "
               "ringmaild's drain starts no new delivery; the deliveries it finished during the drain are also "
               "counted from its delivery log. If the sink lacks 250'd tokens 30 s after the load, `postfix flush` "
               "(Postfix's deferred queue otherwise waits minimal_backoff_time, 300 s)." % (args.fraction * 100))
    else:
        title = "## crash: kill -9 under load, ringmaild%s" % (" and Postfix" if pf else "")
        how = ("- SIGKILL when ringload has %d%% of the messages 250'd; start again on the same spool, config and "
               "port; ringload's sessions reconnect. Allowed duplicates: deliveries whose remote 250 arrived "
               "but whose done-mark was not durable at the kill; the bound checked is Max_Outbound_Connections "
               "x shards = %d. The duplicate-window gauge is sampled from ringmaild's /metrics every 50 ms during "
               "the whole run (shards publish it every 250 ms; the killed daemon writes no exit line), and the "
               "restarted daemon's maximum is also read from its exit line after its final SIGTERM. "
               "In flight at the kill: the sink's transactions between DATA and its reply, sampled (SIGUSR1) just "
               "before the kill, which follows as soon as the sample is read (Max_Outbound_Connections is a "
               "per-destination limit split over the shards: ceil(%d / shards) each)." % (args.fraction * 100, bound, args.max_out))
        if pf:
            how += (" Postfix: SIGKILL to every process of the instance (master and its children, listed by "
                    "its cgroup), then `postfix start`; nothing bounds its duplicates, they are shown for "
                    "comparison.")
    md = [title, "",
          "- Command: `%s`" % cmdline,
          "- Commit: %s (date %s)" % (machine["commit"], machine["date"]),
          "- Machine: %s; ringmaild shards: %s; spool%s on %s%s" % (
              lib.machine_line(machine), ", ".join(map(str, shards)) or "n/a",
              " and Postfix queue" if pf else "", machine["work_dir_fs"],
              "; Postfix %s" % data["postfix_version"] if pf else ""),
          "- Load: `ringload -s %d -m %d -M %d -r %d -l 1024 --tokens FILE --retries 400 --retry-delay 50`; gateway "
          "`ringsink --latency %d --record FILE --progress %d`; ringmaild Max_Outbound_Connections %d, "
          "Shutdown_Timeout 30s;%s a fresh spool%s and sink per run. Lost = 250'd tokens (ringload "
          "--tokens) missing from the sink's record; duplicates = extra acceptances of a token at the sink. "
          "Figures: median (min–max)."
          % (args.sessions, args.messages, args.per_conn, args.rate, args.latency, SINK_PROGRESS_MS,
             args.max_out, " Postfix as in `peers` (relayhost = the sink, concurrency as shipped); rounds "
             "alternate ringmaild and Postfix;" if pf else "", " or queue" if pf else ""),
          how,
          (RESTART_NOTES if mode == "restart" else CRASH_NOTES).rstrip("\n"),
          "- Chart: [throughput through a %s](results/%s-timeline.png) (`bench/plot`: 250s per second at ringload, "
          "deliveries per second at the sink)." % (mode, mode),
          "- Raw runs: `bench/results/%s`" % os.path.basename(path), "", prov, "", tab, "",
          "**%s**" % verdict]
    if pf_line:
        md += ["", pf_line + "."]
    lib.update_results_md(mode, "\n".join(md))
    lib.log("updated bench/RESULTS.md")
    return 0 if ok_all else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
