"""bench/run relay: end to end through ringmaild vs a private Postfix relay.

Postfix's smtp-source sends MESSAGES messages of SIZE bytes (10 and 50
sessions, one message per connection unless --reuse) to

- ringmail: ringmaild (release build, fresh spool on the real disk, Gateway =
  the sink, Delivery_Log set), which relays every message to bench/ringsink;
- postfix: a private Postfix instance (bench/postfix.py) configured as a relay
  to the same kind of sink (relayhost = [127.0.0.1]:SINKPORT), its queue on the
  same disk, durability as shipped;
- ceiling: smtp-sink directly (no MTA in between): what smtp-source and the
  loopback can do on this machine, as in `bench/run accept`.

End-to-end rate = MESSAGES / time from smtp-source's start until the sink has
counted all MESSAGES (SIGUSR1 to ringsink, polled every POLL seconds; bounded
by --timeout). MTA CPU over the same span: ringmaild's utime+stime
(/proc/PID/stat, all threads, io_uring workers included); Postfix's from a
cpuacct cgroup holding master and every process it forks (exited ones
included). Runs are interleaved: round r runs every configuration against the
three targets, the order rotating per round.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import time

import lib
import postfix

SMTP_SOURCE = "/usr/sbin/smtp-source"
SMTP_SINK = "/usr/sbin/smtp-sink"
RINGSINK = os.environ.get("RINGSINK") or os.path.join(lib.BUILD, "bench", "ringsink")
RINGLOAD = os.environ.get("RINGLOAD") or os.path.join(lib.BUILD, "bench", "ringload")
POLL = 0.02  # seconds between sink counts

RELAY_CONFIG_EXTRA = """\
Delivery_Log = "log/delivery.log"
"""


def relay_config(sink_port):
    text = lib.CONFIG.format(shards="{shards}")
    text = re.sub(r'^Gateway = .*$', 'Gateway = "127.0.0.1:%d"' % sink_port, text, flags=re.M)
    text = re.sub(r'^Retry_Interval = .*$', 'Retry_Interval = 10s', text, flags=re.M)
    text = text.replace("# Acceptance only: deliveries go to a closed port and are deferred, so the\n"
                        "# spool check can count every accepted message (nothing is delivered or\n"
                        "# bounced during the run). Retry_Interval keeps retries out of the way.\n",
                        "# bench/relay.py: deliveries go to the sink.\n")
    return text + RELAY_CONFIG_EXTRA


class RelayRingmaild(lib.Ringmaild):
    def __init__(self, run_dir, sink_port, shards="auto"):
        super().__init__(run_dir, shards=shards)
        with open(self.conf, "w") as f:
            f.write(relay_config(sink_port).replace("{shards}", str(shards)))

    def delivery_log_lines(self):
        try:
            with open(os.path.join(self.dir, "log", "delivery.log"), "rb") as f:
                return f.read().count(b"\n")
        except OSError:
            return None


class RingSink:
    """bench/ringsink on a kernel-picked port; counts by SIGUSR1."""

    # "messages N: accepted N": not the later "rcpts accepted N", which counts
    # a message before its data is in.
    ACC_RE = re.compile(r"messages \d+: accepted (\d+)")
    DUP_RE = re.compile(r"tokens unique (\d+) duplicate (\d+) untokened (\d+)")

    def __init__(self, run_dir):
        self.err_path = os.path.join(run_dir, "ringsink.stderr")
        self.errf = open(self.err_path, "w+")
        self.command = [RINGSINK, "127.0.0.1:0"]
        self.proc = subprocess.Popen(self.command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                     stderr=self.errf, text=True)
        line = self.proc.stdout.readline()
        m = re.search(r"listening on [0-9.]+:(\d+)", line)
        if not m:
            self.proc.kill()
            raise RuntimeError("ringsink: no ready line: %r" % line)
        self.port = int(m.group(1))
        self._off = 0
        self._count = 0

    def count(self):
        """Ask for the counts (SIGUSR1) and return the latest 'accepted N'."""
        self.proc.send_signal(10)
        time.sleep(POLL)
        with open(self.err_path, errors="replace") as f:
            f.seek(self._off)
            text = f.read()
        nl = text.rfind("\n")
        if nl >= 0:
            self._off += len(text[:nl + 1].encode())
            found = self.ACC_RE.findall(text[:nl + 1])
            if found:
                self._count = int(found[-1])
        return self._count

    def cpu_ticks(self):
        return lib.proc_cpu_ticks(self.proc.pid)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc.stdout.close()
        self.errf.close()
        with open(self.err_path, errors="replace") as f:
            text = f.read()
        out = {"exit_line": text.strip().splitlines()[-1] if text.strip() else ""}
        acc = self.ACC_RE.findall(text)
        out["accepted"] = int(acc[-1]) if acc else None
        d = self.DUP_RE.findall(text)
        if d:
            out["unique_tokens"], out["duplicate_tokens"], out["untokened"] = (int(x) for x in d[-1])
        return out


class SmtpSink:
    """smtp-sink on a free port (the ceiling target)."""

    def __init__(self):
        for _ in range(5):
            port = lib.free_port()
            cmd = [SMTP_SINK] + (["-u", "nobody"] if os.geteuid() == 0 else []) + \
                ["-m", "1024", "127.0.0.1:%d" % port, "4096"]
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and proc.poll() is None and not postfix.listening(port):
                time.sleep(0.01)
            if proc.poll() is None and postfix.listening(port):
                self.proc, self.port, self.command = proc, port, cmd
                return
            proc.kill()
            proc.wait(timeout=10)
        raise RuntimeError("could not start smtp-sink")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)


def source_command(port, sessions, reuse, messages, size):
    cmd = [SMTP_SOURCE, "-s", str(sessions), "-m", str(messages), "-l", str(size)]
    if reuse:
        cmd.append("-d")
    cmd += ["-f", "a@client.test", "-t", "b@dest.test", "127.0.0.1:%d" % port]
    return cmd



def ringload_command(port, sessions, reuse, messages, size, json_path, timeout):
    """bench/ringload with smtp-source's dialogue (lock-step, no pipelining):
    one message per connection, or (reuse) unlimited reuse as smtp-source -d.
    -l is the whole message, headers included."""
    return [RINGLOAD, "-s", str(sessions), "-m", str(messages), "-l", str(size),
            "-M", "0" if reuse else "1", "-f", "a@client.test", "-t", "b@dest.test",
            "--json", json_path, "-q", "--timeout", str(timeout), "127.0.0.1:%d" % port]


def children_cpu_s():
    r = os.times()
    return r.children_user + r.children_system


def drive(cmd, sink, messages, timeout, cpu_fn):
    """Start smtp-source; wait until the sink has all messages (or timeout).
    Returns timings and the MTA CPU (µs) over [start, sink complete]."""
    out = {}
    cpu0 = cpu_fn()
    gen0 = children_cpu_s()
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)
    deadline = t0 + timeout
    n = 0
    src_wall = None
    while time.monotonic() < deadline:
        if src_wall is None and proc.poll() is not None:
            src_wall = time.monotonic() - t0
        n = sink.count()
        if n >= messages:
            break
    t1 = time.monotonic()
    cpu1 = cpu_fn()
    out["sink_count_at_end"] = n
    out["end_to_end_s"] = t1 - t0
    out["complete"] = n >= messages
    try:
        err = proc.communicate(timeout=max(1, deadline - time.monotonic()))[1]
    except subprocess.TimeoutExpired:
        proc.kill()
        err = proc.communicate(timeout=30)[1]
        out["source_killed"] = True
    if src_wall is None:
        src_wall = time.monotonic() - t0
    gen1 = children_cpu_s()
    out["source_rc"] = proc.returncode
    out["source_wall_s"] = src_wall
    out["source_stderr"] = err.decode(errors="replace")[-1000:]
    out["mta_cpu_us"] = cpu1 - cpu0
    out["generator_cpu_s"] = gen1 - gen0
    return out


def ringload_figures(path):
    """The figures a run keeps from ringload's JSON: 250s, its own CPU and
    the '.'-to-250 latency (µs) of the MTA or sink it talked to."""
    try:
        with open(path) as f:
            j = json.load(f)
    except (OSError, ValueError) as e:
        return {"ringload_error": str(e)}
    lat = j.get("latency_us", {})
    return {"load_ok": j["messages"]["ok"], "load_end": j.get("end"),
            "generator_cpu_us_per_msg_self": j.get("cpu", {}).get("us_per_msg"),
            "latency_us": {k: lat.get(k) for k in ("p50", "p90", "p99", "p99.9", "max", "mean")}}


def one_run(target, sessions, reuse, args):
    rec = {"target": target, "sessions": sessions, "reuse": reuse, "messages_sent": args.messages,
           "size": args.size, "loadavg_before": open("/proc/loadavg").read().split()[:3]}
    run_dir = None
    sink = mta = None
    try:
        if target == "ceiling" and args.generator == "smtp-source":
            sk = SmtpSink()
            try:
                rec["sink_command"] = sk.command
                time.sleep(0.2)
                cmd = source_command(sk.port, sessions, reuse, args.messages, args.size)
                rec["source_command"] = cmd
                gen0 = children_cpu_s()
                t0 = time.monotonic()
                r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                   stderr=subprocess.PIPE, timeout=args.timeout)
                wall = time.monotonic() - t0
                rec.update(source_rc=r.returncode, source_wall_s=wall, end_to_end_s=wall,
                           source_stderr=r.stderr.decode(errors="replace")[-1000:],
                           generator_cpu_s=children_cpu_s() - gen0)
                rec["msgs_per_s"] = args.messages / wall
                rec["ok"] = r.returncode == 0 and not rec["source_stderr"].strip()
            finally:
                sk.stop()
            return rec
        run_dir = lib.make_run_dir("%s-%s" % (args.scenario, target))
        sink = RingSink(run_dir)
        rec["sink_command"] = sink.command
        if target == "ceiling":
            # ringload straight into ringsink: no MTA, nothing to measure
            cpu_fn = lambda: 0.0  # noqa: E731
            port = sink.port
        elif target == "ringmail":
            os.makedirs(os.path.join(run_dir, "ringmail"))
            mta = RelayRingmaild(os.path.join(run_dir, "ringmail"), sink.port, shards=args.shards)
            mta.start()
            rec["daemon_command"] = mta.command
            rec["shards"] = mta.shards
            cpu_fn = lambda: lib.ticks_to_us(mta.cpu_ticks())  # noqa: E731
            port = mta.port
        else:
            mta = postfix.Postfix(os.path.join(run_dir, "postfix"), sink.port)
            mta.start()
            rec["postfix_cpu_method"] = mta.cpu_method
            rec["postfix_created_default_main_cf"] = mta.created_default_main_cf
            cpu_fn = mta.cpu_us
            port = mta.port
        time.sleep(0.3)  # let it settle
        load_json = os.path.join(run_dir, "ringload.json")
        if args.generator == "ringload":
            cmd = ringload_command(port, sessions, reuse, args.messages, args.size, load_json, args.timeout)
        else:
            cmd = source_command(port, sessions, reuse, args.messages, args.size)
        rec["source_command"] = cmd
        sink_cpu0 = sink.cpu_ticks()
        res = drive(cmd, sink, args.messages, args.timeout, cpu_fn)
        rec["sink_cpu_us_per_msg"] = lib.ticks_to_us(sink.cpu_ticks() - sink_cpu0) / args.messages
        rec.update(res)
        rec["msgs_per_s"] = args.messages / res["end_to_end_s"] if res["complete"] else None
        rec["source_msgs_per_s"] = args.messages / res["source_wall_s"]
        rec["mta_cpu_us_per_msg"] = res["mta_cpu_us"] / args.messages
        rec["generator_cpu_us_per_msg"] = res["generator_cpu_s"] * 1e6 / args.messages
        source_ok = res["source_rc"] == 0 and not res["source_stderr"].strip()
        if args.generator == "ringload":
            rec.update(ringload_figures(load_json))
            source_ok = source_ok and rec.get("load_ok") == args.messages
        if target == "ceiling":
            rec.pop("mta_cpu_us_per_msg", None)
            rec["ok"] = source_ok and res["complete"]
        elif target == "ringmail":
            ex = mta.stop()
            rec["exit"] = ex
            rec["delivery_log_lines"] = mta.delivery_log_lines()
            rec["ok"] = source_ok and res["complete"] and ex["rc"] == 0
            if not rec["ok"]:
                rec["daemon_stderr_tail"] = mta.stderr_text()[-2000:]
        else:
            rec["postfix_queue_left"] = mta.queue_count()
            rec["ok"] = source_ok and res["complete"]
            if not rec["ok"]:
                rec["maillog_tail"] = mta.maillog_tail()
            mta.stop()
            rec["postfix_commands"] = [" ".join(c["command"]) for c in mta.log]
        mta = None
        time.sleep(0.2)
        rec["sink_final"] = sink.stop()
        sink = None
        fin = rec["sink_final"]
        rec["duplicates_at_sink"] = fin.get("duplicate_tokens")
        if fin.get("accepted") is not None and fin["accepted"] != args.messages:
            rec["ok"] = False
            rec["error"] = "sink accepted %s messages, expected %d" % (fin["accepted"], args.messages)
    except Exception as e:  # record and go on
        rec["ok"] = False
        rec["error"] = "%s: %s" % (type(e).__name__, e)
    finally:
        if mta is not None:
            try:
                if isinstance(mta, postfix.Postfix):
                    rec.setdefault("maillog_tail", mta.maillog_tail())
                    mta.stop()
                else:
                    rec.setdefault("daemon_stderr_tail", mta.stderr_text()[-2000:])
                    mta.kill()
            except Exception as e:  # noqa: BLE001
                rec["cleanup_error"] = str(e)
        if sink is not None:
            try:
                sink.stop()
            except Exception:  # noqa: BLE001
                pass
        if run_dir:
            if args.keep or not rec.get("ok"):
                rec["run_dir"] = run_dir
            else:
                import shutil
                shutil.rmtree(run_dir, ignore_errors=True)
    return rec


TARGETS = ("ringmail", "postfix", "ceiling")
NAMES = {"ringmail": "ringmaild → ringsink", "postfix": "Postfix → ringsink",
         "ceiling": "smtp-sink (ceiling)"}
CEILING_NAMES = {"smtp-source": "smtp-sink (ceiling)", "ringload": "ringsink alone (ceiling)"}


def paired(runs, sessions, reuse, a, b, key):
    out = []
    for rnd in sorted({r["round"] for r in runs}):
        x = [r for r in runs if r["round"] == rnd and r["target"] == a and r["sessions"] == sessions
             and r["reuse"] == reuse and r.get("ok") and r.get(key)]
        y = [r for r in runs if r["round"] == rnd and r["target"] == b and r["sessions"] == sessions
             and r["reuse"] == reuse and r.get("ok") and r.get(key)]
        if x and y:
            out.append(x[0][key] / y[0][key])
    return lib.stat3(out)


def summarize(runs, configs, targets):
    rows = []
    for sessions, reuse in configs:
        row = {"sessions": sessions, "reuse": reuse}
        for t in targets:
            rs = [r for r in runs if r["target"] == t and r["sessions"] == sessions and r["reuse"] == reuse]
            good = [r for r in rs if r.get("ok")]
            row[t] = {"runs": len(rs), "ok_runs": len(good),
                      "msgs_per_s": lib.stat3([r.get("msgs_per_s") for r in good]),
                      "mta_cpu_us_per_msg": lib.stat3([r.get("mta_cpu_us_per_msg") for r in good]),
                      "source_msgs_per_s": lib.stat3([r.get("source_msgs_per_s") for r in good]),
                      "generator_cpu_us_per_msg": lib.stat3([r.get("generator_cpu_us_per_msg") for r in good])}
            for q in ("p50", "p90", "p99", "p99.9"):
                row[t]["latency_us_" + q] = lib.stat3([(r.get("latency_us") or {}).get(q) for r in good])
            if t != "ceiling":
                row[t]["duplicates_at_sink"] = [r.get("duplicates_at_sink") for r in rs]
        med = lambda t, k: (row.get(t, {}).get(k) or {}).get("median")  # noqa: E731
        if "ringmail" in targets and "postfix" in targets:
            a, b = med("ringmail", "msgs_per_s"), med("postfix", "msgs_per_s")
            row["throughput_x_postfix"] = a / b if a and b else None
            row["throughput_x_postfix_paired"] = paired(runs, sessions, reuse, "ringmail", "postfix", "msgs_per_s")
            a, b = med("ringmail", "mta_cpu_us_per_msg"), med("postfix", "mta_cpu_us_per_msg")
            row["cpu_share_of_postfix"] = a / b if a and b else None
            row["cpu_share_of_postfix_paired"] = paired(runs, sessions, reuse, "ringmail", "postfix",
                                                        "mta_cpu_us_per_msg")
        if "ringmail" in targets and "ceiling" in targets:
            a, b = med("ringmail", "msgs_per_s"), med("ceiling", "msgs_per_s")
            row["ringmail_share_of_ceiling"] = a / b if a and b else None
            row["ringmail_share_of_ceiling_paired"] = paired(runs, sessions, reuse, "ringmail", "ceiling",
                                                             "msgs_per_s")
        rows.append(row)
    return rows


def fmt_ratio(med, pr, fmt, scale=1.0):
    if med is None:
        return "n/a"
    s = fmt % (med * scale)
    if pr:
        s += (" (" + fmt + "–" + fmt + ")") % (pr["min"] * scale, pr["max"] * scale)
    return s


def table(rows, targets, generator="smtp-source"):
    names = dict(NAMES, ceiling=CEILING_NAMES[generator])
    lat = generator == "ringload"
    head = ("| sessions | connections | target | end-to-end msgs/s | MTA CPU µs/msg "
            "| ringmail ÷ Postfix msgs/s | ringmail ÷ Postfix CPU/msg | ringmail share of ceiling |")
    ncol = 8
    if lat:
        head += " '.'→250 p50 ms | '.'→250 p99 ms | ringload CPU µs/msg |"
        ncol += 3
    lines = [head, "|" + "---|" * ncol]
    for row in rows:
        conn = ("reused (-M 0)" if lat else "reused (-d)") if row["reuse"] else "1 msg/conn"
        for t in targets:
            s = row[t]
            bad = "" if s["ok_runs"] == s["runs"] else " (%d/%d runs ok)" % (s["ok_runs"], s["runs"])
            x = cpu = share = ""
            if t == "ringmail":
                if "throughput_x_postfix" in row:
                    x = fmt_ratio(row["throughput_x_postfix"], row["throughput_x_postfix_paired"], "%.1f×")
                    cpu = "n/a"
                    if row["cpu_share_of_postfix"]:
                        cpu = "1/%.0f" % (1 / row["cpu_share_of_postfix"])
                        pr = row["cpu_share_of_postfix_paired"]
                        if pr:
                            cpu += " (1/%.0f–1/%.0f)" % (1 / pr["max"], 1 / pr["min"])
                if "ringmail_share_of_ceiling" in row:
                    share = fmt_ratio(row["ringmail_share_of_ceiling"], row["ringmail_share_of_ceiling_paired"],
                                      "%.0f%%", 100)
            cpu_col = lib.fmt_stat(s["mta_cpu_us_per_msg"], "%.0f") if t != "ceiling" else "–"
            line = "| %d | %s | %s | %s%s | %s | %s | %s | %s |" % (
                row["sessions"], conn, names[t], lib.fmt_stat(s["msgs_per_s"]), bad, cpu_col, x, cpu, share)
            if lat:
                line += " %s | %s | %s |" % (lib.fmt_stat(s["latency_us_p50"], "%.1f", 1e-3),
                                             lib.fmt_stat(s["latency_us_p99"], "%.1f", 1e-3),
                                             lib.fmt_stat(s["generator_cpu_us_per_msg"], "%.0f"))
            lines.append(line)
    return "\n".join(lines)


def verdicts(rows):
    out = []
    for row in rows:
        x, c = row.get("throughput_x_postfix"), row.get("cpu_share_of_postfix")
        if x is None or c is None:
            continue
        out.append({"sessions": row["sessions"], "reuse": row["reuse"],
                    "throughput_x": x, "throughput_met": x >= 5, "throughput_aim_10_met": x >= 10,
                    "cpu_share": c, "cpu_met": c <= 1 / 20.0})
    return out


def main(argv, scenario="relay", doc=None, markdown=None):
    """bench/run relay (smtp-source, issue 3's criteria), or another scenario
    made of the same runs (bench/peers.py: ringload, latency) that brings its
    own doc and markdown(args, machine, data, cmdline, path, shards,
    prov_warning, table) for its RESULTS.md section."""
    peers = scenario == "peers"
    ap = argparse.ArgumentParser(prog="bench/run " + scenario, description=doc or __doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="runs per configuration and target (default 3)")
    ap.add_argument("--messages", type=int, default=20000, help="messages per run (default 20000)")
    ap.add_argument("--size", type=int, default=1024,
                    help="smtp-source -l, or ringload -l (the whole message) for peers (default 1024)")
    ap.add_argument("--sessions", default="10,50", help="comma-separated session counts (default 10,50)")
    ap.add_argument("--reuse", action="store_true",
                    help="also run with reused connections (smtp-source -d); default: one message per connection")
    ap.add_argument("--targets", default=",".join(TARGETS), help="ringmail,postfix,ceiling (default all)")
    ap.add_argument("--shards", default="auto", help="ringmaild Shards (default auto)")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per run until the sink has all (default 300)")
    ap.add_argument("--keep", action="store_true", help="keep run directories")
    ap.add_argument("--no-record", action="store_true", help="write neither results/*.json nor RESULTS.md")
    args = ap.parse_args(argv)
    args.scenario = scenario
    args.generator = "ringload" if peers else "smtp-source"

    targets = [t for t in args.targets.split(",") if t]
    for t in targets:
        if t not in TARGETS:
            ap.error("unknown target %r" % t)
    if "ringmail" in targets:
        lib.check_binaries()
    for b in ([RINGSINK] if "ringmail" in targets or peers else []) + ([RINGLOAD] if peers else []):
        if not os.access(b, os.X_OK):
            raise SystemExit("bench: missing %s" % b)
    if "postfix" in targets and os.geteuid() != 0:
        raise SystemExit("bench: the Postfix target needs root")
    sessions = [int(x) for x in args.sessions.split(",")]
    configs = [(s, r) for r in ([False, True] if args.reuse else [False]) for s in sessions]

    machine = lib.machine_info()
    cmdline = "bench/run %s" % scenario + "".join(" " + a for a in argv)
    lib.log(scenario + ": %s; commit %s; %d configs x %d targets x %d runs"
            % (lib.machine_line(machine), machine["commit"], len(configs), len(targets), args.runs))
    runs, n, total = [], 0, len(configs) * len(targets) * args.runs
    t_start = time.monotonic()
    for rnd in range(args.runs):
        k = rnd % len(targets)
        order = targets[k:] + targets[:k]
        for sessions_, reuse in configs:
            for t in order:
                n += 1
                rec = one_run(t, sessions_, reuse, args)
                rec["round"] = rnd
                runs.append(rec)
                lib.log("[%d/%d] %-8s s=%-3d %-6s %s%s" % (
                    n, total, t, sessions_, "reuse" if reuse else "1/conn",
                    ("%.0f msgs/s end to end%s" % (rec["msgs_per_s"],
                     (", MTA %.0f us/msg, dup %s" % (rec["mta_cpu_us_per_msg"], rec.get("duplicates_at_sink")))
                     if "mta_cpu_us_per_msg" in rec else "")) if rec.get("msgs_per_s") else "",
                    "" if rec.get("ok") else "  FAILED: " + str(rec.get("error") or rec.get("source_stderr", "")[-300:]
                                                              or rec.get("sink_count_at_end"))))
    rows = summarize(runs, configs, targets)
    tab = table(rows, targets, args.generator)
    print(tab)
    vs = [] if peers else verdicts(rows)
    vlines = []
    for v in vs:
        line = ("%d sessions, %s: ringmail %.1f× Postfix's end-to-end throughput (criterion ≥ 5×, aim 10×: %s) "
                "and 1/%.1f of its CPU per message (criterion ≤ 1/20: %s)" % (
                    v["sessions"], "reused connections" if v["reuse"] else "1 msg/conn", v["throughput_x"],
                    "MET" + (", aim met" if v["throughput_aim_10_met"] else ", aim not met")
                    if v["throughput_met"] else "NOT MET",
                    1 / v["cpu_share"], "MET" if v["cpu_met"] else "NOT MET"))
        vlines.append(line)
        print(line)

    data = {
        "scenario": scenario,
        "generator": args.generator,
        "command": cmdline,
        "machine": machine,
        "binaries": {"ringmaild": lib.RINGMAILD, "ringsink": RINGSINK,
                     **({"ringload": RINGLOAD} if peers else {"smtp-source": SMTP_SOURCE, "smtp-sink": SMTP_SINK})},
        "postfix_version": subprocess.run(["postconf", "-d", "-h", "mail_version"], capture_output=True,
                                          text=True).stdout.strip(),
        "postfix_main_cf": postfix.MAIN_CF, "postfix_master_cf": postfix.MASTER_CF,
        "ringmaild_config": relay_config(0),
        "shards": sorted({r.get("shards") for r in runs if r.get("shards")}),
        "parameters": {"runs": args.runs, "messages": args.messages, "size": args.size, "sessions": sessions,
                       "reuse": [c[1] for c in configs], "targets": targets, "shards_config": args.shards,
                       "timeout_s": args.timeout, "sink_poll_s": POLL},
        "criteria": None if peers else {"text": "ringmail >= 5x Postfix's end-to-end throughput (aim 10x) and <= 1/20 of its "
                             "CPU per message", "verdicts": vs},
        "summary": rows,
        "runs": runs,
        "elapsed_s": round(time.monotonic() - t_start, 1),
    }
    data["commit_at_end"], prov_warning = lib.provenance_end(machine)
    if prov_warning and machine.get("build_up_to_date") is not False:
        # HEAD moved, but perhaps only bench/ (harness and results of other
        # scenarios): then the code measured is the start commit's.
        r = subprocess.run(["git", "-C", lib.ROOT, "diff", "--quiet", machine["head_commit_full"], "HEAD",
                            "--", ".", ":(exclude)bench"], capture_output=True)
        if r.returncode == 0:
            prov_warning = ("Note: HEAD moved to %s during the run, by commits under bench/ only; "
                            "the code measured is that of %s." % (data["commit_at_end"], machine["commit"]))
    if prov_warning:
        lib.log(prov_warning)
    if args.no_record:
        return 0 if all(r.get("ok") for r in runs) else 1
    path = lib.write_json(scenario, data)
    lib.log("wrote %s" % os.path.relpath(path, lib.ROOT))
    shards = ", ".join(str(s) for s in data["shards"]) or "n/a"
    pf_method = next((r.get("postfix_cpu_method") for r in runs if r.get("postfix_cpu_method")), "n/a")
    if markdown:
        md = markdown(args, machine, data, cmdline, path, shards, prov_warning, tab)
    else:
        md = ["## relay: end to end, ringmaild vs Postfix (vs the smtp-sink ceiling)", "",
              "- Command: `%s`" % cmdline,
              "- Commit: %s (date %s)" % (machine["commit"], machine["date"]),
              "- Machine: %s; ringmaild shards: %s; spools and Postfix queue on %s; Postfix %s"
              % (lib.machine_line(machine), shards, machine["work_dir_fs"], data["postfix_version"]),
              "- Load: `smtp-source -s N -m %d -l %d%s -f a@client.test -t b@dest.test`; %d runs per row, "
              "interleaved (ringmail, Postfix, ceiling; order rotating per round); a fresh daemon, spool or "
              "Postfix instance and sink per run. Figures: median (min–max)."
              % (args.messages, args.size, " [-d]" if args.reuse else "", args.runs),
              "- ringmaild: `Gateway` = bench/ringsink, `Delivery_Log` set, fsync per message batch as always. "
              "Postfix: a private instance written by bench/postfix.py (relayhost = [127.0.0.1]:SINKPORT, "
              "queue on the same disk, fsync behaviour and concurrency limits as shipped, no chroot, "
              "logging to a file), relaying to its own bench/ringsink.",
              "- End-to-end msgs/s = %d / time from smtp-source's start until the sink counted all of them "
              "(polled every %.0f ms). MTA CPU over that span: ringmaild = utime+stime of every thread "
              "(/proc/PID/stat, io_uring workers included); Postfix = every process of the instance "
              "(master, smtpd, cleanup, qmgr, trivial-rewrite, smtp, ..., exited ones included) via a "
              "cpuacct cgroup. Ratios: of the medians, in parentheses the range of the per-round ratios. "
              "Ceiling = smtp-source straight into smtp-sink (its wall time), as in `bench/run accept`."
              % (args.messages, POLL * 1000),
              "- Raw runs: `bench/results/%s`" % os.path.basename(path), "", prov_warning, "",
              tab, ""]
    for line in vlines:
        md.append("- **Criterion (issue 3)**: " + line)
    lib.update_results_md(scenario, "\n".join(md))
    lib.log("updated bench/RESULTS.md")
    return 0 if all(r.get("ok") for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
