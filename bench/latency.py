"""bench/run latency: '.'-to-250 latency of ringmaild at 25, 50 and 75% of
its peak acceptance rate.

First the peak: --peak-runs runs of bench/ringload without a rate limit
(MESSAGES messages, SESSIONS sessions, PER_CONN messages per connection)
against a fresh ringmaild each (acceptance only, as in bench/run accept:
Gateway is a closed port, so nothing is delivered during the run; every 250
follows the fdatasync of the message's spool record). Peak = the median of
ringload's 2xx/s.

Then, for each load level, ringload with `-r RATE` (its token bucket, a burst
of at most 1/50 s of the rate) at that share of the peak, for about
--duration seconds (-m RATE x DURATION), again a fresh daemon per run;
--runs rounds, the order of the levels rotating per round.

Latency = ringload's: from writing a message's final dot to reading the reply
to it, in a log-linear histogram (bucket width at most 1/64 of the value).
Per level: p50, p90, p99 and p99.9 (median and range over the runs), the
achieved rate, server CPU per message (/proc/PID/stat over the load), and the
histograms of all runs merged into one (results JSON, for the CDF chart of
bench/plot).
"""

import argparse
import json
import os
import subprocess
import sys
import time

import lib

RINGLOAD = os.environ.get("RINGLOAD") or os.path.join(lib.BUILD, "bench", "ringload")
QUANTILES = ("p50", "p90", "p99", "p99.9")


def one_run(args, rate, messages, level):
    rec = {"level": level, "rate_limit": rate, "messages_sent": messages,
           "loadavg_before": open("/proc/loadavg").read().split()[:3]}
    run_dir = lib.make_run_dir("latency")
    d = lib.Ringmaild(run_dir, shards=args.shards)
    try:
        d.start()
        rec["shards"] = d.shards
        time.sleep(0.3)
        load_json = os.path.join(run_dir, "ringload.json")
        cmd = [RINGLOAD, "-s", str(args.sessions), "-m", str(messages), "-M", str(args.per_conn),
               "-l", str(args.size), "-q", "--json", load_json, "--timeout", str(args.timeout)]
        if rate:
            cmd += ["-r", str(rate)]
        cmd.append("127.0.0.1:%d" % d.port)
        rec["load_command"] = cmd
        cpu0 = d.cpu_ticks()
        r = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           timeout=args.timeout + 30)
        cpu1 = d.cpu_ticks()
        rec["load_rc"] = r.returncode
        rec["load_stderr"] = r.stderr.decode(errors="replace")[-1000:]
        with open(load_json) as f:
            lj = json.load(f)
        rec["ok_250"] = lj["messages"]["ok"]
        rec["ok_per_s"] = lj["ok_per_s"]
        rec["elapsed_s"] = lj["elapsed_s"]
        rec["latency_us"] = lj["latency_us"]
        rec["histogram_us"] = lj.get("histogram_us")
        rec["ringload_cpu_us_per_msg"] = lj["cpu"]["us_per_msg"]
        rec["server_cpu_us_per_msg"] = lib.ticks_to_us(cpu1 - cpu0) / max(1, rec["ok_250"])
        ex = d.stop()
        rec["exit_rc"] = ex["rc"]
        rec["fdatasync_per_msg"] = ex["fdatasyncs"] / ex["messages"] if ex["messages"] else None
        rec["ok"] = r.returncode == 0 and rec["ok_250"] == messages and ex["rc"] == 0
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


def merge_hist(runs):
    out = {}
    for r in runs:
        for upper, n in r.get("histogram_us") or []:
            out[upper] = out.get(upper, 0) + n
    return sorted([k, v] for k, v in out.items())


def summarize(runs, levels):
    rows = []
    for lv in levels:
        good = [r for r in runs if r["level"] == lv and r.get("ok")]
        row = {"level": lv, "runs": len([r for r in runs if r["level"] == lv]), "ok_runs": len(good),
               "rate_limit": good[0]["rate_limit"] if good else None,
               "ok_per_s": lib.stat3([r["ok_per_s"] for r in good]),
               "server_cpu_us_per_msg": lib.stat3([r["server_cpu_us_per_msg"] for r in good]),
               "fdatasync_per_msg": lib.stat3([r["fdatasync_per_msg"] for r in good]),
               "histogram_us": merge_hist(good)}
        for q in QUANTILES:
            row[q] = lib.stat3([r["latency_us"][q] for r in good])
        rows.append(row)
    return rows


def level_name(lv):
    return "peak (no -r)" if lv == 100 else "%d%% of peak" % lv


def table(rows):
    f = lib.fmt_stat
    lines = ["| load | ringload -r | achieved 2xx/s | p50 ms | p90 ms | p99 ms | p99.9 ms | server CPU µs/msg "
             "| fdatasync/msg |", "|" + "---|" * 9]
    for row in rows:
        bad = "" if row["ok_runs"] == row["runs"] else " (%d/%d runs ok)" % (row["ok_runs"], row["runs"])
        lines.append("| %s%s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
            level_name(row["level"]), bad, row["rate_limit"] or "–", f(row["ok_per_s"]),
            f(row["p50"], "%.2f", 1e-3), f(row["p90"], "%.2f", 1e-3), f(row["p99"], "%.2f", 1e-3),
            f(row["p99.9"], "%.2f", 1e-3), f(row["server_cpu_us_per_msg"], "%.0f"),
            f(row["fdatasync_per_msg"], "%.3f")))
    return "\n".join(lines)


def main(argv):
    ap = argparse.ArgumentParser(prog="bench/run latency", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="runs per load level (default 3)")
    ap.add_argument("--peak-runs", type=int, default=3, help="runs without a rate limit (default 3)")
    ap.add_argument("--messages", type=int, default=20000, help="messages per peak run (default 20000)")
    ap.add_argument("--duration", type=float, default=10, help="seconds per rate-limited run (default 10)")
    ap.add_argument("--levels", default="25,50,75", help="percent of peak (default 25,50,75)")
    ap.add_argument("--sessions", type=int, default=50, help="ringload sessions (default 50)")
    ap.add_argument("--per-conn", type=int, default=100, help="ringload -M (default 100)")
    ap.add_argument("--size", type=int, default=1024, help="ringload -l (default 1024)")
    ap.add_argument("--shards", default="auto", help="ringmaild Shards (default auto)")
    ap.add_argument("--timeout", type=int, default=300, help="ringload --timeout per run (default 300)")
    ap.add_argument("--keep", action="store_true", help="keep run directories")
    ap.add_argument("--no-record", action="store_true", help="write neither results/*.json nor RESULTS.md")
    args = ap.parse_args(argv)
    lib.check_binaries()
    if not os.access(RINGLOAD, os.X_OK):
        raise SystemExit("bench: missing %s" % RINGLOAD)
    levels = [int(x) for x in args.levels.split(",") if x]
    machine = lib.machine_info()
    cmdline = "bench/run latency" + "".join(" " + a for a in argv)
    lib.log("latency: %s; commit %s" % (lib.machine_line(machine), machine["commit"]))
    t0 = time.monotonic()
    runs = []
    for i in range(args.peak_runs):
        r = one_run(args, 0, args.messages, 100)
        r["round"] = i
        runs.append(r)
        lib.log("[peak %d/%d] %s 2xx/s, p50 %s p99 %s us%s" % (
            i + 1, args.peak_runs, "%.0f" % r["ok_per_s"] if r.get("ok_per_s") else "?",
            (r.get("latency_us") or {}).get("p50"), (r.get("latency_us") or {}).get("p99"),
            "" if r.get("ok") else "  FAILED: %s" % (r.get("error") or r.get("load_stderr"))))
    peak = lib.stat3([r["ok_per_s"] for r in runs if r.get("ok")])
    if not peak:
        raise SystemExit("latency: no good peak run")
    lib.log("peak: %.0f 2xx/s (median of %d)" % (peak["median"], peak["n"]))
    for rnd in range(args.runs):
        k = rnd % len(levels)
        for lv in levels[k:] + levels[:k]:
            rate = max(1, int(peak["median"] * lv / 100))
            msgs = max(200, int(rate * args.duration))
            r = one_run(args, rate, msgs, lv)
            r["round"] = rnd
            runs.append(r)
            lib.log("[%d%% r%d] -r %d: %s 2xx/s, p50 %s p99 %s p99.9 %s us%s" % (
                lv, rnd, rate, "%.0f" % r["ok_per_s"] if r.get("ok_per_s") else "?",
                (r.get("latency_us") or {}).get("p50"), (r.get("latency_us") or {}).get("p99"),
                (r.get("latency_us") or {}).get("p99.9"),
                "" if r.get("ok") else "  FAILED: %s" % (r.get("error") or r.get("load_stderr"))))
    rows = summarize(runs, levels + [100])
    tab = table(rows)
    print(tab)
    shards = sorted({r.get("shards") for r in runs if r.get("shards")})
    data = {"scenario": "latency", "command": cmdline, "machine": machine,
            "binaries": {"ringmaild": lib.RINGMAILD, "ringload": RINGLOAD}, "shards": shards,
            "parameters": vars(args), "peak_ok_per_s": peak, "summary": rows,
            "runs": [{k: v for k, v in r.items() if k != "histogram_us"} for r in runs],
            "elapsed_s": round(time.monotonic() - t0, 1)}
    data["commit_at_end"], prov = lib.provenance_end(machine)
    if args.no_record:
        return 0 if all(r.get("ok") for r in runs) else 1
    path = lib.write_json("latency", data)
    lib.log("wrote %s" % os.path.relpath(path, lib.ROOT))
    md = ["## latency: '.'-to-250 at 25/50/75% of the peak rate", "",
          "- Command: `%s`" % cmdline,
          "- Commit: %s (date %s)" % (machine["commit"], machine["date"]),
          "- Machine: %s; ringmaild shards: %s; spool on %s" % (
              lib.machine_line(machine), ", ".join(map(str, shards)) or "n/a", machine["work_dir_fs"]),
          "- Load: `ringload -s %d -M %d -l %d [-r RATE]`; peak = median 2xx/s of %d runs of %d messages without "
          "`-r` (%s); then `-r` at each share of the peak for about %g s (`-m RATE x %g`), %d rounds, the order "
          "rotating. A fresh ringmaild and spool per run, acceptance only (Gateway is a closed port, as in "
          "`accept`); every 250 follows the fdatasync of its spool record."
          % (args.sessions, args.per_conn, args.size, args.peak_runs, args.messages,
             lib.fmt_stat(peak), args.duration, args.duration, args.runs),
          "- Latency: ringload's histogram, from writing the final dot to reading its reply (bucket width at "
          "most 1/64 of the value). Figures: median (min–max) over the runs of each level. Server CPU = "
          "utime+stime of the whole ringmaild over the load / 250s.",
          "- Chart: [latency CDF](results/latency-cdf.png) (`bench/plot`; the runs of a level merged).",
          "- Raw runs: `bench/results/%s`" % os.path.basename(path), "", prov, "", tab]
    lib.update_results_md("latency", "\n".join(md))
    lib.log("updated bench/RESULTS.md")
    return 0 if all(r.get("ok") for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
