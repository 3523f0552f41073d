"""bench/run accept: acceptance throughput of ringmaild against the smtp-sink ceiling.

Postfix's smtp-source sends MESSAGES messages of SIZE bytes, with 10 and 50
parallel sessions, one message per connection and with connections reused
(-d), to ringmaild (durable: each 250 follows an fdatasync), to ringmaild with
Pin_Shards = true (target "pinned": each shard thread pinned to one CPU, the
earlier default) and to Postfix's smtp-sink (no
spool, no fsync) which gives the ceiling on this machine. Runs are
interleaved (round r runs every configuration against both targets, in
alternating order) so that machine noise hits both alike. Every run gets a fresh
ringmaild with a fresh spool (and a fresh smtp-sink).
"""

import argparse
import hashlib
import os
import re
import subprocess
import sys
import time

import lib

SMTP_SOURCE = "/usr/sbin/smtp-source"
SMTP_SINK = "/usr/sbin/smtp-sink"
TIMEOUT = 300  # seconds, for each smtp-source run
# target -> the lines it adds to lib.CONFIG; the others are smtp-sink
RINGMAILD_TARGETS = {"ringmail": "", "pinned": "Pin_Shards = true\n"}
TARGET_NAMES = {"ringmail": "ringmaild", "pinned": "ringmaild, Pin_Shards = true",
                "sink": "smtp-sink (ceiling)"}


def listening(port):
    """Is something listening on 127.0.0.1:port (per /proc/net/tcp)?"""
    want = ":%04X" % port
    with open("/proc/net/tcp") as f:
        next(f)
        for line in f:
            p = line.split()
            if p[1].endswith(want) and p[3] == "0A":
                return True
    return False


class Sink:
    """One smtp-sink on a free port."""

    def __init__(self):
        self.proc = None
        self.port = None
        self.command = None

    def start(self):
        for _ in range(5):
            port = lib.free_port()
            cmd = [SMTP_SINK]
            if os.geteuid() == 0:
                cmd += ["-u", "nobody"]  # required when run as root
            cmd += ["-m", "1024", "127.0.0.1:%d" % port, "4096"]
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                    stderr=subprocess.PIPE)
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and proc.poll() is None and not listening(port):
                time.sleep(0.01)
            if proc.poll() is None and listening(port):
                self.proc, self.port, self.command = proc, port, cmd
                return self
            proc.kill()
            err = proc.communicate(timeout=10)[1]
            lib.log("smtp-sink on port %d failed: %s" % (port, err.decode(errors="replace")[-300:]))
        raise RuntimeError("could not start smtp-sink")

    def cpu_ticks(self):
        return lib.proc_cpu_ticks(self.proc.pid)

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.communicate(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.communicate(timeout=10)


def source_command(port, sessions, reuse, messages, size):
    cmd = [SMTP_SOURCE, "-s", str(sessions), "-l", str(size), "-m", str(messages)]
    if reuse:
        cmd.append("-d")
    cmd += ["-M", "client.test", "-f", "sender@client.test", "-t", "rcpt@bench.test",
            "127.0.0.1:%d" % port]
    return cmd


def run_source(cmd):
    """Run smtp-source; wall time and its own CPU time (rusage)."""
    t0 = time.monotonic()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        out, err = proc.communicate(timeout=TIMEOUT)
        timed_out = False
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate(timeout=30)
        timed_out = True
    wall = time.monotonic() - t0
    # proc.communicate reaped it; the children's rusage delta is taken by the caller.
    return {
        "rc": proc.returncode,
        "timed_out": timed_out,
        "wall_s": wall,
        "stderr": err.decode(errors="replace")[-1000:],
    }


def children_cpu_s():
    r = os.times()
    return r.children_user + r.children_system


def one_run(target, sessions, reuse, args):
    """One smtp-source run against a fresh target. Returns a raw-run dict."""
    rec = {"target": target, "sessions": sessions, "reuse": reuse,
           "messages_sent": args.messages, "size": args.size,
           "loadavg_before": open("/proc/loadavg").read().split()[:3]}
    srv = None
    try:
        if target in RINGMAILD_TARGETS:
            srv = lib.Ringmaild(lib.make_run_dir("accept"), shards=args.shards,
                                extra=RINGMAILD_TARGETS[target]).start()
            rec["daemon_command"] = srv.command
            rec["shards"] = srv.shards
        else:
            srv = Sink().start()
            rec["daemon_command"] = srv.command
        time.sleep(0.2)  # let it settle
        cmd = source_command(srv.port, sessions, reuse, args.messages, args.size)
        rec["source_command"] = cmd
        cpu0 = srv.cpu_ticks()
        gen0 = children_cpu_s()
        res = run_source(cmd)
        gen1 = children_cpu_s()
        cpu1 = srv.cpu_ticks()
        rec.update(res)
        rec["msgs_per_s"] = args.messages / res["wall_s"]
        rec["server_cpu_us_per_msg"] = lib.ticks_to_us(cpu1 - cpu0) / args.messages
        rec["generator_cpu_us_per_msg"] = (gen1 - gen0) * 1e6 / args.messages
        # smtp-source only warns (exit 0) on some failed transactions: any
        # output on stderr makes the run suspect
        rec["source_ok"] = res["rc"] == 0 and not res["timed_out"] and not res["stderr"].strip()
        rec["ok"] = rec["source_ok"]
        if target in RINGMAILD_TARGETS:
            ex = srv.stop()
            rec["exit"] = ex
            rec["fdatasyncs_per_msg"] = (ex["fdatasyncs"] / ex["messages"]) if ex["messages"] else None
            spool = srv.ringspool_count()
            rec["ringspool"] = spool
            rec["spool_ok"] = (spool["messages"] == args.messages and spool.get("torn") == 0
                               and spool.get("corrupt") == 0 and ex["messages"] == args.messages)
            rec["source_ok"] = rec["source_ok"] and ex["rc"] == 0
            rec["ok"] = rec["source_ok"] and rec["spool_ok"]
            if not rec["ok"]:
                rec["daemon_stderr_tail"] = srv.stderr_text()[-2000:]
    except Exception as e:  # record and go on: one broken run must not lose the others
        rec["ok"] = rec["source_ok"] = False
        rec["error"] = "%s: %s" % (type(e).__name__, e)
    finally:
        if srv is not None:
            if target in RINGMAILD_TARGETS:
                srv.kill()
                if not args.keep and rec.get("ok"):
                    srv.cleanup()
                else:
                    rec["run_dir"] = srv.dir
            else:
                srv.stop()
    return rec


def summarize(runs, configs, targets, messages):
    rows = []
    for sessions, reuse in configs:
        row = {"sessions": sessions, "reuse": reuse}
        for t in targets:
            rs = [r for r in runs if r["target"] == t and r["sessions"] == sessions and r["reuse"] == reuse]
            # throughput figures come from every run whose load completed; the spool
            # check is reported in its own column
            good = [r for r in rs if r.get("source_ok")]
            s = {
                "runs": len(rs),
                "ok_runs": len(good),
                "fully_ok_runs": len([r for r in rs if r.get("ok")]),
                "msgs_per_s": lib.stat3([r["msgs_per_s"] for r in good]),
                "server_cpu_us_per_msg": lib.stat3([r["server_cpu_us_per_msg"] for r in good]),
                "generator_cpu_us_per_msg": lib.stat3([r["generator_cpu_us_per_msg"] for r in good]),
            }
            if t in RINGMAILD_TARGETS:
                s["fdatasyncs_per_msg"] = lib.stat3([r.get("fdatasyncs_per_msg") for r in good])
                s["spool_counts"] = [r.get("ringspool", {}).get("messages") for r in rs]
                s["spool_all_ok"] = bool(rs) and all(r.get("spool_ok") for r in rs)
            row[t] = s
        for t in targets:
            if t not in RINGMAILD_TARGETS or "sink" not in targets:
                continue
            rm, sk = row[t]["msgs_per_s"], row["sink"]["msgs_per_s"]
            # paired ratios: target run i / sink run i of the same round
            pairs = []
            for rnd in sorted({r["round"] for r in runs}):
                a = [r for r in runs if r["round"] == rnd and r["target"] == t and r.get("source_ok")
                     and r["sessions"] == sessions and r["reuse"] == reuse]
                b = [r for r in runs if r["round"] == rnd and r["target"] == "sink" and r.get("source_ok")
                     and r["sessions"] == sessions and r["reuse"] == reuse]
                if a and b:
                    pairs.append(a[0]["msgs_per_s"] / b[0]["msgs_per_s"])
            row[t]["ratio_of_medians"] = (rm["median"] / sk["median"]) if rm and sk else None
            row[t]["paired_ratio"] = lib.stat3(pairs)
        if "ringmail" in row:
            row["ratio_of_medians"] = row["ringmail"].get("ratio_of_medians")
            row["paired_ratio"] = row["ringmail"].get("paired_ratio")
        rows.append(row)
    return rows


def table(rows, targets):
    head = ("| sessions | connections | target | msgs/s | ringmail/ceiling | server CPU µs/msg "
            "| fdatasync/msg | spool check | smtp-source CPU µs/msg |")
    lines = [head, "|" + "---|" * 9]
    for row in rows:
        conn = "reused (-d)" if row["reuse"] else "1 msg/conn"
        for t in targets:
            s = row[t]
            name = TARGET_NAMES[t]
            ratio = ""
            if s.get("ratio_of_medians") is not None:
                pr = s["paired_ratio"]
                ratio = "**%.0f%%** (%.0f–%.0f%%)" % (s["ratio_of_medians"] * 100, pr["min"] * 100, pr["max"] * 100) \
                    if pr else "%.0f%%" % (s["ratio_of_medians"] * 100)
            fd = lib.fmt_stat(s.get("fdatasyncs_per_msg"), "%.3f") if t in RINGMAILD_TARGETS else "–"
            if t in RINGMAILD_TARGETS:
                counts = s["spool_counts"]
                spool = ("%s: all %d runs exact" % ("OK" if s["spool_all_ok"] else "FAIL", len(counts))
                         if s["spool_all_ok"] else "FAIL: " + ", ".join(str(c) for c in counts))
            else:
                spool = "–"
            bad = "" if s["ok_runs"] == s["runs"] else " (%d/%d runs ok)" % (s["ok_runs"], s["runs"])
            lines.append("| %d | %s | %s | %s%s | %s | %s | %s | %s | %s |" % (
                row["sessions"], conn, name, lib.fmt_stat(s["msgs_per_s"]), bad, ratio,
                lib.fmt_stat(s["server_cpu_us_per_msg"], "%.1f"), fd, spool,
                lib.fmt_stat(s["generator_cpu_us_per_msg"], "%.1f")))
    return "\n".join(lines)


def binary_sha256(path):
    try:
        with open(path, "rb") as f:
            return hashlib.sha256(f.read()).hexdigest()
    except OSError:
        return None


def main(argv):
    ap = argparse.ArgumentParser(prog="bench/run accept", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="runs per configuration and target (default 3)")
    ap.add_argument("--messages", type=int, default=20000, help="messages per run (default 20000)")
    ap.add_argument("--size", type=int, default=1024, help="message payload bytes (smtp-source -l; default 1024)")
    ap.add_argument("--sessions", default="10,50", help="comma-separated session counts (default 10,50)")
    ap.add_argument("--reuse", choices=["both", "no", "yes"], default="both",
                    help="one message per connection (no), reused connections -d (yes), or both (default)")
    ap.add_argument("--targets", default="ringmail,pinned,sink",
                    help="some of ringmail, pinned (Pin_Shards = true), sink (default all three)")
    ap.add_argument("--shards", default="auto", help="ringmaild Shards (default auto)")
    ap.add_argument("--keep", action="store_true", help="keep run directories (spool, logs)")
    ap.add_argument("--no-record", action="store_true", help="do not write results/*.json nor RESULTS.md")
    args = ap.parse_args(argv)

    targets = [t for t in args.targets.split(",") if t]
    for t in targets:
        if t not in TARGET_NAMES:
            ap.error("unknown target %r" % t)
    if any(t in RINGMAILD_TARGETS for t in targets):
        lib.check_binaries()
    sessions = [int(x) for x in args.sessions.split(",")]
    reuses = {"both": [False, True], "no": [False], "yes": [True]}[args.reuse]
    configs = [(s, r) for r in reuses for s in sessions]

    machine = lib.machine_info()
    cmdline = "bench/run accept" + "".join(" " + a for a in argv)
    lib.log("accept: %s; commit %s; %d configs x %d targets x %d runs"
            % (lib.machine_line(machine), machine["commit"], len(configs), len(targets), args.runs))
    runs = []
    n = 0
    total = len(configs) * len(targets) * args.runs
    t_start = time.monotonic()
    for rnd in range(args.runs):
        order = targets if rnd % 2 == 0 else list(reversed(targets))
        for sessions_, reuse in configs:
            for t in order:
                n += 1
                rec = one_run(t, sessions_, reuse, args)
                rec["round"] = rnd
                runs.append(rec)
                extra = ""
                if t in RINGMAILD_TARGETS and "exit" in rec:
                    extra = " fdatasync/msg %.3f spool %s" % (rec.get("fdatasyncs_per_msg") or 0,
                                                              rec.get("ringspool", {}).get("messages"))
                lib.log("[%d/%d] %-8s s=%-3d %-6s %s%s%s" % (
                    n, total, t, sessions_, "reuse" if reuse else "1/conn",
                    ("%.0f msgs/s, server %.1f us/msg, gen %.1f us/msg" % (
                        rec["msgs_per_s"], rec["server_cpu_us_per_msg"], rec["generator_cpu_us_per_msg"]))
                    if "msgs_per_s" in rec else "", extra,
                    "" if rec.get("ok") else "  FAILED: " + (rec.get("error") or rec.get("stderr", "")[-300:]
                                                             or str(rec.get("exit")) or "?")))
    rows = summarize(runs, configs, targets, args.messages)
    tab = table(rows, targets)
    print(tab)

    crit, crit_spool = None, None
    for row in rows:
        if row["sessions"] == 50 and not row["reuse"] and row.get("ratio_of_medians") is not None:
            crit, crit_spool = row["ratio_of_medians"], row["ringmail"]["spool_all_ok"]
    if crit is not None:
        verdict = "%s: ringmail reaches %.0f%% of the smtp-sink ceiling at 50 sessions, one message per connection, fsync on (criterion: >= 80%%)%s" % (
            "MET" if crit >= 0.8 and crit_spool else "NOT MET", crit * 100,
            "" if crit_spool else "; but the spool check FAILED (messages lost or damaged)")
        print(verdict)
    else:
        verdict = None

    data = {
        "scenario": "accept",
        "command": cmdline,
        "machine": machine,
        "binaries": {"ringmaild": lib.RINGMAILD, "ringspool": lib.RINGSPOOL},
        "ringmaild_sha256": binary_sha256(lib.RINGMAILD) if "ringmail" in targets else None,
        "shards": sorted({r.get("shards") for r in runs if r.get("shards")}),
        "parameters": {"runs": args.runs, "messages": args.messages, "size": args.size,
                       "sessions": sessions, "reuse": reuses, "targets": targets,
                       "shards_config": args.shards, "source_timeout_s": TIMEOUT},
        "criterion": {"text": "ringmail >= 80% of the smtp-sink ceiling, 50 sessions, 1 msg/conn, fsync on",
                      "ratio_of_medians": crit, "spool_ok": crit_spool,
                      "met": (crit >= 0.8 and crit_spool) if crit is not None else None},
        "summary": rows,
        "runs": runs,
        "elapsed_s": round(time.monotonic() - t_start, 1),
    }
    data["commit_at_end"], prov_warning = lib.provenance_end(machine)
    if prov_warning:
        lib.log(prov_warning)
    if args.no_record:
        return 0
    path = lib.write_json("accept", data)
    lib.log("wrote %s" % os.path.relpath(path, lib.ROOT))
    shards = ", ".join(str(s) for s in data["shards"]) or "n/a"
    md = ["## accept: messages/s, ringmaild vs the smtp-sink ceiling", "",
          "- Command: `%s`" % cmdline,
          "- Commit: %s (date %s)" % (machine["commit"], machine["date"]),
          "- Machine: %s; ringmaild shards: %s; spool on %s" % (lib.machine_line(machine), shards, machine["work_dir_fs"]),
          "- Load: smtp-source `-l %d -m %d -s N [-d]`; %d runs per row, interleaved with the ceiling; "
          "a fresh daemon and spool per run. Figures: median (min–max)." % (args.size, args.messages, args.runs),
          "- msgs/s = messages / smtp-source wall time. Server CPU = utime+stime of the whole server process "
          "(all threads) over the run. ringmail/ceiling = ratio of the medians (range of the per-round ratios). "
          "Spool check: `ringspool` counts exactly %d committed messages, 0 torn, 0 corrupt." % args.messages,
          "- Targets: ringmaild as configured by default (shard threads not pinned); the same with "
          "`Pin_Shards = true` (each shard thread pinned to one CPU, the earlier default); smtp-sink.",
          "- Raw runs: `bench/results/%s`" % os.path.basename(path), "", prov_warning, "",
          tab, ""]
    if verdict:
        md.append("**Done-criterion %s**" % verdict)
    lib.update_results_md("accept", "\n".join(md))
    lib.log("updated bench/RESULTS.md")
    bad = [r for r in runs if not r.get("ok")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
