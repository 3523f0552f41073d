"""bench/run redis: what one Redis lookup per recipient costs on the relay path.

The relay scenario (smtp-source → ringmaild → bench/ringsink, one message
per connection, one recipient per message, fsync on) run three ways in one
run, interleaved round by round (the order rotating):

- none:    no scriptlet scope;
- callout: a validate_rcptto callout that returns VALIDATE_CONT (what the
           lookup's callout costs without the lookup);
- lookup:  the same callout doing one msys.db.fetch_row("SISMEMBER
           suppressed ?", {rcpt}, {nocache = true}) per recipient against a
           local redis-server (no persistence), as the suppression example
           does: every lookup goes to Redis, none is answered by the cache.

Reported: end-to-end msgs/s and ringmaild CPU µs per message (median and
range); the lookup's throughput against `none` and against `callout`
(paired per round); Redis lookups per second per shard (the datasource's
command count from the paniclog over the run's time, divided by shards);
and the latency a lookup adds: one session sends RCPTs one at a time
(--latency-rcpts of them) to each configuration, and the median and p99
RCPT round trip of `lookup` minus that of `callout`. The issue's target:
at most 15% throughput loss. After each round a capacity probe: one
shard, --capacity-sessions sessions whose RCPT callouts each do --burst
lookups: the lookups per second one shard sustains and its CPU per
lookup.
"""

import argparse
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

import lib
import relay

HERE = os.path.dirname(os.path.abspath(__file__))
REDIS_SERVER = shutil.which("redis-server")

CALLOUT_LUA = """\
local mod = {}
function mod:validate_rcptto(msg, str, accept, vctx)
  return msys.core.VALIDATE_CONT
end
msys.registerModule("bench_redis", mod)
"""

LOOKUP_LUA = """\
local mod = {}
function mod:validate_rcptto(msg, str, accept, vctx)
  local a = (str:match("<([^>]*)>") or str):lower()
  local row, err = msys.db.fetch_row("bench", "SISMEMBER suppressed ?", { a },
                                     { nocache = true })
  if row == nil and err ~= nil then
    vctx:set_code(451, "4.3.0 lookup failed: " .. err)
    return msys.core.VALIDATE_DONE
  end
  if row ~= nil and row[1] == 1 then
    vctx:set_code(550, "5.7.1 suppressed")
    return msys.core.VALIDATE_DONE
  end
  return msys.core.VALIDATE_CONT
end
msys.registerModule("bench_redis", mod)
"""

BURST_LUA = """\
local mod = {}
local N = %d
function mod:validate_rcptto(msg, str, accept, vctx)
  local a = (str:match("<([^>]*)>") or str):lower()
  for i = 1, N do
    local row, err = msys.db.fetch_row("bench", "SISMEMBER suppressed ?",
                                       { a .. i }, { nocache = true })
    if row == nil and err ~= nil then
      vctx:set_code(451, "4.3.0 lookup failed: " .. err)
      return msys.core.VALIDATE_DONE
    end
  end
  return msys.core.VALIDATE_CONT
end
msys.registerModule("bench_redis", mod)
"""

VARIANTS = {"none": None, "callout": CALLOUT_LUA, "lookup": LOOKUP_LUA}
CMD_RE = re.compile(r"datasource bench: (\d+) commands, (\d+) replies, (\d+) timeouts, "
                    r"(\d+) failed fast.*?(\d+) sends")


class RedisServer:
    def __init__(self, run_dir):
        self.port = lib.free_port()
        self.dir = run_dir
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "no", "--dir", run_dir, "--daemonize", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1) as s:
                    # a few members, none of them the benchmark's recipient
                    s.sendall(b"*4\r\n$4\r\nSADD\r\n$10\r\nsuppressed\r\n$8\r\nx@x.test\r\n"
                              b"$8\r\ny@y.test\r\n")
                    if s.recv(100).startswith(b":"):
                        return
            except OSError:
                time.sleep(0.05)
        raise SystemExit("bench: redis-server did not start")

    def cpu_ticks(self):
        return lib.proc_cpu_ticks(self.proc.pid)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


class RedisRingmaild(relay.RelayRingmaild):
    def __init__(self, run_dir, sink_port, variant, redis_port, shards="auto"):
        super().__init__(run_dir, sink_port, shards=shards)
        lua = VARIANTS.get(variant, variant)
        if lua is None:
            return
        with open(os.path.join(run_dir, "bench_redis.lua"), "w") as f:
            f.write(lua)
        with open(self.conf, "a") as f:
            f.write('Datasource "bench" { uri = ( "redis://127.0.0.1:%d/0" ) }\n'
                    'scriptlet "scriptlet" {\n'
                    '  script "boot" { source = "msys.boot" }\n'
                    '  script "bench_redis" { source = "bench_redis" }\n'
                    '}\n' % redis_port)


def rcpt_latencies(port, n):
    """One session, RCPTs one at a time: each round trip in µs."""
    out = []
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        f = s.makefile("rb")

        def reply():
            while True:
                line = f.readline()
                if not line:
                    raise RuntimeError("connection closed")
                if line[3:4] != b"-":
                    return line

        reply()
        s.sendall(b"EHLO bench.test\r\n")
        reply()
        sent = 0
        while sent < n:
            s.sendall(b"MAIL FROM:<a@client.test>\r\n")
            reply()
            for _ in range(min(90, n - sent)):
                t0 = time.perf_counter_ns()
                s.sendall(b"RCPT TO:<b@dest.test>\r\n")
                r = reply()
                out.append((time.perf_counter_ns() - t0) / 1000.0)
                if not r.startswith(b"250"):
                    raise RuntimeError("RCPT answered %r" % r)
                sent += 1
            s.sendall(b"RSET\r\n")
            reply()
        s.sendall(b"QUIT\r\n")
    return out


def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(len(v) * p))]


def one_run(variant, args, redis):
    rec = {"variant": variant, "messages_sent": args.messages, "sessions": args.sessions,
           "size": args.size, "loadavg_before": open("/proc/loadavg").read().split()[:3]}
    run_dir = lib.make_run_dir("redis-" + variant)
    sink = mta = None
    try:
        sink = relay.RingSink(run_dir)
        os.makedirs(os.path.join(run_dir, "ringmail"))
        mta = RedisRingmaild(os.path.join(run_dir, "ringmail"), sink.port, variant, redis.port,
                             shards=args.shards)
        mta.start()
        rec["daemon_command"] = mta.command
        rec["shards"] = mta.shards
        time.sleep(0.3)
        cmd = relay.source_command(mta.port, args.sessions, False, args.messages, args.size)
        rec["source_command"] = cmd
        r0 = redis.cpu_ticks()
        res = relay.drive(cmd, sink, args.messages, args.timeout,
                          lambda: lib.ticks_to_us(mta.cpu_ticks()))
        rec["redis_cpu_us"] = lib.ticks_to_us(redis.cpu_ticks() - r0)
        rec.update(res)
        rec["msgs_per_s"] = args.messages / res["end_to_end_s"] if res["complete"] else None
        rec["mta_cpu_us_per_msg"] = res["mta_cpu_us"] / args.messages
        lat = rcpt_latencies(mta.port, args.latency_rcpts)
        rec["rcpt_rtt_us_median"] = statistics.median(lat)
        rec["rcpt_rtt_us_p99"] = pct(lat, 0.99)
        ex = mta.stop()
        rec["exit"] = ex
        log = open(os.path.join(mta.dir, "log", "paniclog"), errors="replace").read()
        m = CMD_RE.findall(log)
        rec["redis_commands"] = sum(int(x[0]) for x in m)
        rec["redis_timeouts"] = sum(int(x[2]) for x in m)
        rec["redis_failed_fast"] = sum(int(x[3]) for x in m)
        rec["redis_sends"] = sum(int(x[4]) for x in m)
        mta = None
        rec["sink_final"] = sink.stop()
        sink = None
        rec["ok"] = (res["complete"] and res["source_rc"] == 0 and ex["rc"] == 0 and
                     rec["sink_final"].get("accepted") == args.messages and
                     (variant != "lookup" or (rec["redis_commands"] >= args.messages and
                                              rec["redis_timeouts"] == 0 and
                                              rec["redis_failed_fast"] == 0)))
        if variant == "lookup" and rec["msgs_per_s"]:
            # lookups during the relay run only (the latency probe's excluded)
            relay_lookups = rec["redis_commands"] - args.latency_rcpts
            rec["lookups_per_s_per_shard"] = relay_lookups / res["end_to_end_s"] / rec["shards"]
    except Exception as e:  # record and go on
        rec["ok"] = False
        rec["error"] = "%s: %s" % (type(e).__name__, e)
    finally:
        if mta is not None:
            rec.setdefault("daemon_stderr_tail", mta.stderr_text()[-2000:])
            mta.kill()
        if sink is not None:
            sink.stop()
        if args.keep or not rec.get("ok"):
            rec["run_dir"] = run_dir
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
    return rec


def capacity_run(args, redis):
    """One shard, many sessions, each RCPT's callout doing --burst lookups
    one after the other: how many lookups per second one shard sustains
    when lookups are all it does (the sessions' commands pipeline)."""
    rec = {"burst": args.burst, "sessions": args.capacity_sessions,
           "rcpts_per_session": args.capacity_rcpts}
    run_dir = lib.make_run_dir("redis-capacity")
    mta = None
    try:
        os.makedirs(os.path.join(run_dir, "ringmail"))
        mta = RedisRingmaild(os.path.join(run_dir, "ringmail"), 1, BURST_LUA % args.burst,
                             redis.port, shards=1)
        mta.start()
        time.sleep(0.3)
        errors = []

        def session(n):
            try:
                with socket.create_connection(("127.0.0.1", mta.port), timeout=120) as s:
                    f = s.makefile("rb")

                    def reply():
                        while True:
                            line = f.readline()
                            if not line:
                                raise RuntimeError("closed")
                            if line[3:4] != b"-":
                                return line
                    reply()
                    s.sendall(b"EHLO bench.test\r\nMAIL FROM:<a@client.test>\r\n")
                    reply()
                    reply()
                    s.sendall(b"".join(b"RCPT TO:<r%d.%d@dest.test>\r\n" % (n, k)
                                       for k in range(args.capacity_rcpts)))
                    for _ in range(args.capacity_rcpts):
                        r = reply()
                        if not r.startswith(b"250"):
                            errors.append(r)
                    s.sendall(b"QUIT\r\n")
            except Exception as e:  # noqa: BLE001
                errors.append(repr(e))

        import threading
        th = [threading.Thread(target=session, args=(n,)) for n in range(args.capacity_sessions)]
        cpu0 = lib.ticks_to_us(mta.cpu_ticks())
        r0 = redis.cpu_ticks()
        t0 = time.monotonic()
        for x in th:
            x.start()
        for x in th:
            x.join(300)
        wall = time.monotonic() - t0
        cpu = lib.ticks_to_us(mta.cpu_ticks()) - cpu0
        rcpu = lib.ticks_to_us(redis.cpu_ticks() - r0)
        mta.stop()
        log = open(os.path.join(mta.dir, "log", "paniclog"), errors="replace").read()
        m = CMD_RE.findall(log)
        lookups = sum(int(x[0]) for x in m)
        sends = sum(int(x[4]) for x in m)
        rec.update({"wall_s": wall, "lookups": lookups, "errors": errors[:5],
                    "lookups_per_s": lookups / wall, "mta_cpu_us_per_lookup": cpu / max(lookups, 1),
                    "redis_cpu_us_per_lookup": rcpu / max(lookups, 1),
                    "commands_per_send": lookups / max(sends, 1),
                    "timeouts": sum(int(x[2]) for x in m)})
        rec["ok"] = not errors and lookups >= args.burst * args.capacity_sessions * args.capacity_rcpts
        mta = None
    except Exception as e:  # record and go on
        rec["ok"] = False
        rec["error"] = "%s: %s" % (type(e).__name__, e)
    finally:
        if mta is not None:
            mta.kill()
        if rec.get("ok") and not args.keep:
            shutil.rmtree(run_dir, ignore_errors=True)
        else:
            rec["run_dir"] = run_dir
    return rec


def paired(runs, a, b, key, op):
    return lib.paired(runs, "variant", a, b, key, op)


def main(argv):
    ap = argparse.ArgumentParser(prog="bench/run redis", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5, help="rounds (default 5)")
    ap.add_argument("--messages", type=int, default=10000, help="messages per run (default 10000)")
    ap.add_argument("--size", type=int, default=1024, help="smtp-source -l (default 1024)")
    ap.add_argument("--sessions", type=int, default=50, help="smtp-source -s (default 50)")
    ap.add_argument("--shards", default="auto", help="ringmaild Shards (default auto)")
    ap.add_argument("--latency-rcpts", type=int, default=2000,
                    help="sequential RCPTs of the latency probe (default 2000)")
    ap.add_argument("--burst", type=int, default=200,
                    help="capacity probe: lookups per RCPT callout (default 200)")
    ap.add_argument("--capacity-sessions", type=int, default=50,
                    help="capacity probe: concurrent sessions (default 50)")
    ap.add_argument("--capacity-rcpts", type=int, default=20,
                    help="capacity probe: RCPTs per session (default 20)")
    ap.add_argument("--timeout", type=int, default=300, help="seconds per run (default 300)")
    ap.add_argument("--keep", action="store_true", help="keep run directories")
    ap.add_argument("--no-record", action="store_true", help="write neither results/*.json nor RESULTS.md")
    args = ap.parse_args(argv)
    lib.check_binaries()
    if REDIS_SERVER is None:
        raise SystemExit("bench: redis-server not found")

    load0 = open("/proc/loadavg").read().split()[:3]
    machine = lib.machine_info()
    cmdline = "bench/run redis" + "".join(" " + a for a in argv)
    names = list(VARIANTS)
    lib.log("redis: %s; commit %s; %d rounds x %d variants"
            % (lib.machine_line(machine), machine["commit"], args.runs, len(names)))
    rdir = lib.make_run_dir("redis-server")
    redis = RedisServer(rdir)
    runs = []
    caps = []
    try:
        for rnd in range(args.runs):
            k = rnd % len(names)
            for v in names[k:] + names[:k]:
                rec = one_run(v, args, redis)
                rec["round"] = rnd
                runs.append(rec)
                lib.log("[round %d] %-8s %s" % (rnd + 1, v, (
                    "%.0f msgs/s, %.1f us CPU/msg, RCPT rtt %.0f us" % (
                        rec["msgs_per_s"], rec["mta_cpu_us_per_msg"], rec["rcpt_rtt_us_median"]))
                    if rec.get("ok") else "FAILED: %s" % (rec.get("error") or
                                                         rec.get("daemon_stderr_tail", "")[-300:])))
            cap = capacity_run(args, redis)
            cap["round"] = rnd
            caps.append(cap)
            lib.log("[round %d] capacity %s" % (rnd + 1, (
                "%.0f lookups/s on one shard, %.1f us ringmaild CPU per lookup, "
                "%.1f commands per send" % (cap["lookups_per_s"], cap["mta_cpu_us_per_lookup"],
                                            cap["commands_per_send"]))
                if cap.get("ok") else "FAILED: %s" % (cap.get("error") or cap.get("errors"))))
    finally:
        redis.stop()
        shutil.rmtree(rdir, ignore_errors=True)

    rows = []
    lines = ["| variant | end-to-end msgs/s | ringmaild CPU µs/msg | RCPT round trip µs, median | p99 |",
             "|---|---|---|---|---|"]
    for v in names:
        good = [r for r in runs if r["variant"] == v and r.get("ok")]
        row = {"variant": v, "ok_runs": len(good), "runs": len([r for r in runs if r["variant"] == v]),
               "msgs_per_s": lib.stat3([r["msgs_per_s"] for r in good]),
               "cpu_us_per_msg": lib.stat3([r["mta_cpu_us_per_msg"] for r in good]),
               "rcpt_rtt_us_median": lib.stat3([r["rcpt_rtt_us_median"] for r in good]),
               "rcpt_rtt_us_p99": lib.stat3([r["rcpt_rtt_us_p99"] for r in good])}
        rows.append(row)
        lines.append("| %s | %s | %s | %s | %s |" % (
            v, lib.fmt_stat(row["msgs_per_s"]), lib.fmt_stat(row["cpu_us_per_msg"], "%.1f"),
            lib.fmt_stat(row["rcpt_rtt_us_median"]), lib.fmt_stat(row["rcpt_rtt_us_p99"])))
    ratio = lambda x, y: x / y  # noqa: E731
    diff = lambda x, y: x - y  # noqa: E731
    vs_none = paired(runs, "lookup", "none", "msgs_per_s", ratio)
    vs_callout = paired(runs, "lookup", "callout", "msgs_per_s", ratio)
    add_lat = paired(runs, "lookup", "callout", "rcpt_rtt_us_median", diff)
    add_p99 = paired(runs, "lookup", "callout", "rcpt_rtt_us_p99", diff)
    add_cpu = paired(runs, "lookup", "callout", "mta_cpu_us_per_msg", diff)
    lps = lib.stat3([r.get("lookups_per_s_per_shard") for r in runs
                     if r["variant"] == "lookup" and r.get("ok")])
    batch = lib.stat3([r["redis_commands"] / r["redis_sends"] for r in runs
                       if r["variant"] == "lookup" and r.get("ok") and r.get("redis_sends")])
    rcpu = lib.stat3([r["redis_cpu_us"] / r["messages_sent"] for r in runs
                      if r["variant"] == "lookup" and r.get("ok")])
    summary = [
        "| measure | median (min–max) |", "|---|---|",
        "| lookup throughput vs none | %s |" % lib.fmt_stat(vs_none, "%.0f%%", 100),
        "| lookup throughput vs callout | %s |" % lib.fmt_stat(vs_callout, "%.0f%%", 100),
        "| Redis lookups/s per shard (relay run) | %s |" % lib.fmt_stat(lps),
        "| latency a lookup adds to RCPT, median (µs) | %s |" % lib.fmt_stat(add_lat),
        "| latency a lookup adds to RCPT, p99 (µs) | %s |" % lib.fmt_stat(add_p99),
        "| ringmaild CPU a lookup adds (µs/msg) | %s |" % lib.fmt_stat(add_cpu, "%.1f"),
        "| commands per send (pipelining), relay | %s |" % lib.fmt_stat(batch, "%.2f"),
        "| capacity: lookups/s on one shard (%d sessions, %d lookups per RCPT) | %s |" % (
            args.capacity_sessions, args.burst,
            lib.fmt_stat(lib.stat3([c["lookups_per_s"] for c in caps if c.get("ok")]))),
        "| capacity: ringmaild CPU per lookup (µs) | %s |" % lib.fmt_stat(
            lib.stat3([c["mta_cpu_us_per_lookup"] for c in caps if c.get("ok")]), "%.1f"),
        "| capacity: commands per send | %s |" % lib.fmt_stat(
            lib.stat3([c["commands_per_send"] for c in caps if c.get("ok")]), "%.1f"),
        "| redis-server CPU per lookup (µs) | %s |" % lib.fmt_stat(rcpu, "%.1f"),
    ]
    tab = "\n".join(lines) + "\n\n" + "\n".join(summary)
    print(tab)
    verdict = ("one lookup per recipient: %.0f%% of the no-policy throughput, %.0f%% of the "
               "callout-only throughput (medians of paired rounds): target ≤ 15%% loss %s"
               % (vs_none["median"] * 100, vs_callout["median"] * 100,
                  "MET" if vs_none["median"] >= 0.85 else
                  ("met against callout only" if vs_callout["median"] >= 0.85 else "NOT met"))
               if vs_none and vs_callout else "no paired rounds")
    print(verdict)
    if args.no_record:
        return 0
    data = {"scenario": "redis", "command": cmdline, "machine": machine, "rows": rows,
            "runs": runs, "capacity_runs": caps, "verdict": verdict,
            "summary": {"vs_none": vs_none, "vs_callout": vs_callout, "lookups_per_s_per_shard": lps,
                        "added_latency_us_median": add_lat, "added_latency_us_p99": add_p99,
                        "added_cpu_us_per_msg": add_cpu, "commands_per_send": batch}}
    end, warn = lib.provenance_end(machine)
    data["commit_at_end"] = end
    path = lib.write_json("redis", data)
    md = ["## Redis lookups on the relay path (issue 5)", "",
          "`%s` — commit %s, %s, %s." % (cmdline, machine["commit"], lib.machine_line(machine),
                                         time.strftime("%Y-%m-%d", time.gmtime())),
          "", "smtp-source -s %d, 1 message per connection, 1 recipient per message, %d messages "
          "of %d bytes per run, relayed to bench/ringsink; redis-server 127.0.0.1 on the same "
          "machine (no persistence); %d interleaved rounds; median (min–max). Ratios and "
          "differences are paired per round. Latency: one session, %d RCPTs one at a time, "
          "after each relay run. Capacity: after each round, one shard, %d sessions each "
          "pipelining %d RCPTs whose callout does %d lookups one after another (only the "
          "sessions' concurrency pipelines). Load average before the run: %s."
          % (args.sessions, args.messages, args.size, args.runs, args.latency_rcpts,
             args.capacity_sessions, args.capacity_rcpts, args.burst, " ".join(load0)),
          "", tab, "", verdict, "", "Raw runs: `%s`." % os.path.relpath(path, os.path.dirname(HERE))]
    if warn:
        md += ["", warn]
    lib.update_results_md("redis", "\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
