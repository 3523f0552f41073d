"""bench/run shards: does every shard take its share of the connections, and
what does each shard cost?

For each shard count (default: 1, then Shards = auto, i.e. one per CPU) a
fresh ringmaild with Pin_Shards = true (one core per shard: the per-core
view this scenario is about; acceptance only, as in bench/run accept:
Gateway is a closed port, so messages stay in the spool) takes MESSAGES
messages from
bench/ringload pinned with `taskset -c GEN_CPU` (default: the last CPU), one
message per connection unless --per-conn says otherwise, so that the kernel's
SO_REUSEPORT hash has many connections to spread.

Shard threads are found by name (/proc/PID/task/*/comm = "shard-N", set by
core/shard.c) and their io_uring workers by theirs ("iou-wrk-TID", TID being
the shard thread that owns the ring). A sampler reads
/proc/PID/task/*/stat every 0.2 s during the load and keeps each task's last
utime+stime, so workers that exit during the run still count; what the
process spent outside those tasks (the main thread, workers that lived less
than one sample) is shown as "other". Per shard: connections and messages
(the shard's exit line), its share of the connections, msgs/s (its messages
over the load's wall time), CPU µs per message (shard thread + its workers),
and how busy its thread was (CPU time / wall time). The CPU each shard thread
is allowed (Cpus_allowed_list) is recorded to show the pinning.

Correctness check: every shard accepted connections, each within ±25% of its
fair share (1/shards), the shards' messages add up to ringload's 250s, and
shard threads are pinned to distinct CPUs when there are no more shards than
CPUs. On 2 CPUs this is a correctness check, not a scaling curve: the
generator and the shards share the same two cores. Rounds alternate the order
of the shard counts.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import threading
import time

import lib

RINGLOAD = os.environ.get("RINGLOAD") or os.path.join(lib.BUILD, "bench", "ringload")
SAMPLE_S = 0.2
SHARE_TOLERANCE = 0.25


def tasks(pid):
    """{tid: (comm, utime+stime ticks)} of every live thread of pid."""
    out = {}
    base = "/proc/%d/task" % pid
    try:
        tids = os.listdir(base)
    except OSError:
        return out
    for tid in tids:
        try:
            with open("%s/%s/stat" % (base, tid)) as f:
                data = f.read()
        except OSError:
            continue  # exited meanwhile
        comm = data[data.index("(") + 1:data.rindex(")")]
        fields = data[data.rindex(")") + 2:].split()
        out[int(tid)] = (comm, int(fields[11]) + int(fields[12]))
    return out


def cpus_allowed(pid, tid):
    try:
        with open("/proc/%d/task/%d/status" % (pid, tid)) as f:
            for line in f:
                if line.startswith("Cpus_allowed_list:"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


class Sampler(threading.Thread):
    """Keeps the last CPU ticks seen of every task of pid, until stopped."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid = pid
        self.last = {}
        self.halt = threading.Event()
        self.samples = 0

    def sample(self):
        for tid, (comm, ticks) in tasks(self.pid).items():
            self.last[tid] = (comm, ticks)
        self.samples += 1

    def run(self):
        while not self.halt.wait(SAMPLE_S):
            self.sample()

    def stop(self):
        self.halt.set()
        self.join(5)
        self.sample()


def one_run(shards, args):
    rec = {"shards_config": shards, "messages_sent": args.messages, "sessions": args.sessions,
           "per_conn": args.per_conn, "gen_cpu": args.gen_cpu,
           "loadavg_before": open("/proc/loadavg").read().split()[:3]}
    run_dir = lib.make_run_dir("shards")
    d = lib.Ringmaild(run_dir, shards=shards, extra="Pin_Shards = true\n")
    try:
        d.start()
        rec["shards"] = d.shards
        rec["daemon_command"] = d.command
        time.sleep(0.3)
        before = tasks(d.pid)
        shard_tids = {int(c.split("-")[1]): tid for tid, (c, _) in before.items() if re.fullmatch(r"shard-\d+", c)}
        rec["shard_threads"] = {str(k): v for k, v in sorted(shard_tids.items())}
        rec["cpus_allowed"] = {str(k): cpus_allowed(d.pid, v) for k, v in sorted(shard_tids.items())}
        proc0 = d.cpu_ticks()
        load_json = os.path.join(run_dir, "ringload.json")
        cmd = ["taskset", "-c", str(args.gen_cpu), RINGLOAD, "-s", str(args.sessions), "-m", str(args.messages),
               "-M", str(args.per_conn), "-l", str(args.size), "-q", "--json", load_json,
               "--timeout", str(args.timeout), "127.0.0.1:%d" % d.port]
        rec["load_command"] = cmd
        sampler = Sampler(d.pid)
        sampler.sample()
        t0 = time.monotonic()
        sampler.start()
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           timeout=args.timeout + 30)
        wall = time.monotonic() - t0
        sampler.stop()
        proc1 = d.cpu_ticks()
        rec["load_rc"] = r.returncode
        rec["load_stderr"] = r.stderr.decode(errors="replace")[-1000:]
        rec["wall_s"] = round(wall, 3)
        with open(load_json) as f:
            lj = json.load(f)
        rec["ok_250"] = lj["messages"]["ok"]
        rec["msgs_per_s"] = lj["messages"]["ok"] / wall
        rec["ringload_cpu_us_per_msg"] = lj["cpu"]["us_per_msg"]
        rec["process_cpu_us"] = lib.ticks_to_us(proc1 - proc0)
        ex = d.stop()
        rec["exit"] = ex
        by_shard = {s["shard"]: s for s in ex["shards"]}
        total_sessions = sum(s["sessions"] for s in ex["shards"]) or 1
        per = []
        seen_us = 0.0
        for k in sorted(shard_tids):
            tid = shard_tids[k]
            t_us = lib.ticks_to_us(sampler.last.get(tid, ("", 0))[1] - before.get(tid, ("", 0))[1])
            wrk = "iou-wrk-%d" % tid
            w_us = lib.ticks_to_us(sum(v[1] - before.get(t, ("", 0))[1]
                                       for t, v in sampler.last.items() if v[0] == wrk))
            seen_us += t_us + w_us
            ex_k = by_shard.get(k, {})
            msgs = ex_k.get("messages", 0)
            per.append({"shard": k, "tid": tid, "cpus_allowed": rec["cpus_allowed"][str(k)],
                        "sessions": ex_k.get("sessions"), "messages": msgs,
                        "share": ex_k.get("sessions", 0) / total_sessions,
                        "msgs_per_s": msgs / wall,
                        "thread_cpu_us": t_us, "workers_cpu_us": w_us,
                        "cpu_us_per_msg": (t_us + w_us) / msgs if msgs else None,
                        "thread_busy": t_us / 1e6 / wall})
        rec["per_shard"] = per
        rec["other_cpu_us"] = rec["process_cpu_us"] - seen_us
        rec["samples"] = sampler.samples
        fair = 1.0 / len(per) if per else 0
        allowed = [p["cpus_allowed"] for p in per]
        checks = {
            "every_shard_has_connections": all((p["sessions"] or 0) > 0 for p in per),
            "shares_within_25pct_of_fair": all(abs(p["share"] - fair) <= SHARE_TOLERANCE * fair for p in per),
            "messages_add_up": sum(p["messages"] for p in per) == rec["ok_250"] == args.messages,
            "pinned_distinct_cpus": (len(set(allowed)) == len(allowed) and all(a and "," not in a and "-" not in a
                                                                             for a in allowed))
            if len(per) <= (os.cpu_count() or 1) else None,
            "exit_0": ex["rc"] == 0,
            "load_ok": r.returncode == 0,
        }
        rec["checks"] = checks
        rec["ok"] = all(v for v in checks.values() if v is not None)
    except Exception as e:  # noqa: BLE001 - record and go on
        rec["ok"] = False
        rec["error"] = "%s: %s" % (type(e).__name__, e)
        rec["daemon_stderr_tail"] = d.stderr_text()[-2000:]
        d.kill()
    finally:
        if args.keep or not rec.get("ok"):
            rec["run_dir"] = run_dir
        else:
            d.cleanup()
    return rec


def summarize(runs, counts):
    out = []
    for sc in counts:
        good = [r for r in runs if r["shards_config"] == sc and r.get("ok")]
        rs = [r for r in runs if r["shards_config"] == sc]
        n = max([len(r.get("per_shard", [])) for r in rs] or [0])
        row = {"shards_config": sc, "shards": n, "runs": len(rs), "ok_runs": len(good),
               "msgs_per_s": lib.stat3([r["msgs_per_s"] for r in good]),
               "process_cpu_us_per_msg": lib.stat3([r["process_cpu_us"] / r["ok_250"] for r in good if r["ok_250"]]),
               "other_cpu_us_per_msg": lib.stat3([r["other_cpu_us"] / r["ok_250"] for r in good if r["ok_250"]]),
               "ringload_cpu_us_per_msg": lib.stat3([r["ringload_cpu_us_per_msg"] for r in good]),
               "per_shard": []}
        for k in range(n):
            ps = [p for r in good for p in r["per_shard"] if p["shard"] == k]
            row["per_shard"].append({
                "shard": k,
                "cpus_allowed": sorted({p["cpus_allowed"] for p in ps if p["cpus_allowed"]}),
                "share": lib.stat3([p["share"] for p in ps]),
                "msgs_per_s": lib.stat3([p["msgs_per_s"] for p in ps]),
                "cpu_us_per_msg": lib.stat3([p["cpu_us_per_msg"] for p in ps]),
                "thread_cpu_us_per_msg": lib.stat3([p["thread_cpu_us"] / p["messages"] for p in ps if p["messages"]]),
                "workers_cpu_us_per_msg": lib.stat3([p["workers_cpu_us"] / p["messages"] for p in ps
                                                     if p["messages"]]),
                "thread_busy": lib.stat3([p["thread_busy"] for p in ps])})
        out.append(row)
    return out


def table(rows):
    f = lib.fmt_stat
    lines = ["| Shards | shard | CPU allowed | share of connections | msgs/s | CPU µs/msg (thread + io-wq) "
             "| of which io-wq | thread busy |", "|" + "---|" * 8]
    for row in rows:
        bad = "" if row["ok_runs"] == row["runs"] else " (%d/%d runs ok)" % (row["ok_runs"], row["runs"])
        for p in row["per_shard"]:
            lines.append("| %s | %d | %s | %s | %s | %s | %s | %s |" % (
                row["shards_config"], p["shard"], ",".join(p["cpus_allowed"]) or "?",
                f(p["share"], "%.1f%%", 100), f(p["msgs_per_s"]), f(p["cpu_us_per_msg"], "%.1f"),
                f(p["workers_cpu_us_per_msg"], "%.1f"), f(p["thread_busy"], "%.0f%%", 100)))
        lines.append("| %s | **all**%s | | 100%% | **%s** | %s (process) | other: %s | ringload: %s µs/msg |" % (
            row["shards_config"], bad, f(row["msgs_per_s"]), f(row["process_cpu_us_per_msg"], "%.1f"),
            f(row["other_cpu_us_per_msg"], "%.1f"), f(row["ringload_cpu_us_per_msg"], "%.1f")))
    return "\n".join(lines)


def main(argv):
    ncpu = os.cpu_count() or 1
    ap = argparse.ArgumentParser(prog="bench/run shards", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="runs per shard count (default 3)")
    ap.add_argument("--messages", type=int, default=20000, help="messages per run (default 20000)")
    ap.add_argument("--sessions", type=int, default=50, help="ringload sessions (default 50)")
    ap.add_argument("--per-conn", type=int, default=1, help="ringload -M: messages per connection (default 1)")
    ap.add_argument("--size", type=int, default=1024, help="ringload -l (default 1024)")
    ap.add_argument("--shards", default="1,auto", help="comma-separated Shards values (default 1,auto)")
    ap.add_argument("--gen-cpu", type=int, default=ncpu - 1, help="taskset CPU for ringload (default the last)")
    ap.add_argument("--timeout", type=int, default=300, help="ringload --timeout per run (default 300)")
    ap.add_argument("--keep", action="store_true", help="keep run directories")
    ap.add_argument("--no-record", action="store_true", help="write neither results/*.json nor RESULTS.md")
    args = ap.parse_args(argv)
    lib.check_binaries()
    if not os.access(RINGLOAD, os.X_OK):
        raise SystemExit("bench: missing %s" % RINGLOAD)
    counts = [c for c in args.shards.split(",") if c]
    machine = lib.machine_info()
    cmdline = "bench/run shards" + "".join(" " + a for a in argv)
    lib.log("shards: %s; commit %s; Shards %s x %d runs" % (lib.machine_line(machine), machine["commit"],
                                                           counts, args.runs))
    runs = []
    t0 = time.monotonic()
    for rnd in range(args.runs):
        order = counts if rnd % 2 == 0 else counts[::-1]
        for sc in order:
            r = one_run(sc, args)
            r["round"] = rnd
            runs.append(r)
            lib.log("[%d/%d] Shards=%s: %s msgs/s, shares %s, CPU µs/msg %s%s" % (
                len(runs), args.runs * len(counts), sc, "%.0f" % r["msgs_per_s"] if r.get("msgs_per_s") else "?",
                " / ".join("%.1f%%" % (p["share"] * 100) for p in r.get("per_shard", [])),
                " / ".join("%.1f" % p["cpu_us_per_msg"] for p in r.get("per_shard", []) if p["cpu_us_per_msg"]),
                "" if r.get("ok") else "  FAILED: %s" % (r.get("error") or r.get("checks"))))
    rows = summarize(runs, counts)
    tab = table(rows)
    print(tab)
    nok = sum(1 for r in runs if r.get("ok"))
    verdict = "%s: every shard took its share (±%d%% of fair), messages add up, shards pinned to distinct CPUs, " \
              "in %d of %d runs" % ("MET" if nok == len(runs) else "NOT MET", SHARE_TOLERANCE * 100, nok, len(runs))
    print(verdict)
    data = {"scenario": "shards", "command": cmdline, "machine": machine,
            "binaries": {"ringmaild": lib.RINGMAILD, "ringload": RINGLOAD},
            "parameters": vars(args), "summary": rows, "verdict": verdict, "runs": runs,
            "elapsed_s": round(time.monotonic() - t0, 1)}
    data["commit_at_end"], prov = lib.provenance_end(machine)
    if args.no_record:
        return 0 if nok == len(runs) else 1
    path = lib.write_json("shards", data)
    lib.log("wrote %s" % os.path.relpath(path, lib.ROOT))
    md = ["## shards: every shard takes its share; per-shard CPU and throughput", "",
          "- Command: `%s`" % cmdline,
          "- Commit: %s (date %s)" % (machine["commit"], machine["date"]),
          "- Machine: %s; spool on %s" % (lib.machine_line(machine), machine["work_dir_fs"]),
          "- Load: `taskset -c %d ringload -s %d -m %d -M %d -l %d` against a fresh ringmaild per run "
          "(acceptance only: Gateway is a closed port, as in `accept`); Shards = %s; %d runs each, the order "
          "alternating per round. Figures: median (min–max)."
          % (args.gen_cpu, args.sessions, args.messages, args.per_conn, args.size, " and ".join(counts), args.runs),
          "- Per shard: share = its connections (exit line) / all; msgs/s = its messages / the load's wall time; "
          "CPU = utime+stime of its thread `shard-N` plus its io_uring workers `iou-wrk-TID` (the spool's "
          "O_DIRECT writes and fsyncs), sampled every %.1f s from /proc/PID/task/*/stat; thread busy = thread CPU "
          "/ wall time. \"other\" = process CPU not in those tasks (main thread, workers shorter than a sample). "
          "CPU allowed = the thread's Cpus_allowed_list." % SAMPLE_S,
          "- Raw runs: `bench/results/%s`" % os.path.basename(path), "", prov, "", tab, "",
          "**%s**" % verdict]
    lib.update_results_md("shards", "\n".join(md))
    lib.log("updated bench/RESULTS.md")
    return 0 if nok == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
