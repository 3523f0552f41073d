"""bench/run idle: ringmaild's memory per idle SMTP session.

Each run starts a fresh ringmaild, does one warm-up session (greeting, EHLO,
QUIT), reads VmRSS, then opens CONNECTIONS TCP connections from this process
(asyncio, non-blocking sockets), reads each greeting, sends `EHLO idle.test`,
reads the EHLO reply and keeps every connection open and idle. It then reads
VmRSS again: (after - before) / CONNECTIONS is the user-space memory a session
costs the daemon. The kernel's share (socket structures and buffers) is not in
RSS; it is reported apart from /proc/net/sockstat and /proc/slabinfo, and it
covers both ends of each loopback connection (client and daemon sockets).
"""

import argparse
import asyncio
import os
import sys
import time

import lib

TIME_LIMIT = 120  # seconds to open all connections


async def read_reply(reader):
    """Read one (possibly multi-line) SMTP reply; return its lines."""
    lines = []
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("connection closed while reading a reply")
        lines.append(line)
        if len(line) < 4 or line[3:4] != b"-":
            return lines


async def open_session(port, sem, quit_after=False):
    async with sem:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        greet = await read_reply(reader)
        if not greet[0].startswith(b"220"):
            raise ConnectionError("greeting: %r" % greet[0][:80])
        writer.write(b"EHLO idle.test\r\n")
        ehlo = await read_reply(reader)
        if not ehlo[0].startswith(b"250"):
            raise ConnectionError("EHLO: %r" % ehlo[0][:80])
        if quit_after:
            writer.write(b"QUIT\r\n")
            await read_reply(reader)
            writer.close()
            await writer.wait_closed()
            return None
        return reader, writer


async def open_many(port, n, parallel):
    sem = asyncio.Semaphore(parallel)
    tasks = [asyncio.ensure_future(open_session(port, sem)) for _ in range(n)]
    try:
        done = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), TIME_LIMIT)
    except asyncio.TimeoutError:
        done = [t.result() if t.done() and not t.exception() else (t.exception() if t.done() else TimeoutError())
                for t in tasks]
        for t in tasks:
            t.cancel()
    conns = [d for d in done if isinstance(d, tuple)]
    errors = [repr(d) for d in done if not isinstance(d, tuple)]
    return conns, errors


async def close_all(conns):
    for _, w in conns:
        w.close()
    await asyncio.sleep(0)
    for _, w in conns:
        try:
            await asyncio.wait_for(w.wait_closed(), 5)
        except Exception:
            pass


def snapshot(d):
    st = lib.proc_status(d.pid)
    return {
        "VmRSS_kib": st.get("VmRSS"), "RssAnon_kib": st.get("RssAnon"),
        "RssFile_kib": st.get("RssFile"), "VmData_kib": st.get("VmData"),
        "threads": int(st.get("Threads", 0)), "fds": lib.proc_nfds(d.pid),
        "sockstat": lib.sockstat(), "slab": lib.slab_objects(),
    }


def kernel_delta(before, after, n):
    """Kernel memory for the n connections (both ends), per connection, KiB."""
    out = {}
    m0, m1 = before["sockstat"].get("mem"), after["sockstat"].get("mem")
    if m0 is not None and m1 is not None:
        out["sockstat_mem_kib_per_conn"] = (m1 - m0) * lib.PAGE_KIB / n
    slab = 0.0
    for name in ("TCP", "sock_inode_cache"):
        a, b = before["slab"].get(name), after["slab"].get(name)
        if a and b:
            slab += (b["active_objs"] - a["active_objs"]) * b["objsize"]
    if before["slab"]:
        out["slab_TCP_sockinode_kib_per_conn"] = slab / 1024 / n
    return out


def one_run(args):
    rec = {"connections": args.connections, "loadavg_before": open("/proc/loadavg").read().split()[:3]}
    d = lib.Ringmaild(lib.make_run_dir("idle"), shards=args.shards)
    try:
        d.start()
        rec["daemon_command"] = d.command
        rec["shards"] = d.shards
        rec["rss_at_ready_kib"] = d.rss_kib()
        loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(open_session(d.port, asyncio.Semaphore(1), quit_after=True))
            time.sleep(0.5)
            before = snapshot(d)
            t0 = time.monotonic()
            conns, errors = loop.run_until_complete(open_many(d.port, args.connections, args.parallel))
            rec["open_seconds"] = round(time.monotonic() - t0, 2)
            time.sleep(1.0)  # let the daemon settle
            after = snapshot(d)
            rec["connected"] = len(conns)
            rec["errors"] = errors[:10]
            rec["error_count"] = len(errors)
            rec["before"], rec["after"] = before, after
            n = len(conns) or 1
            rec["rss_per_conn_kib"] = (after["VmRSS_kib"] - before["VmRSS_kib"]) / n
            rec["anon_per_conn_kib"] = ((after["RssAnon_kib"] - before["RssAnon_kib"]) / n
                                        if after["RssAnon_kib"] is not None else None)
            rec["kernel"] = kernel_delta(before, after, n)
            loop.run_until_complete(close_all(conns))
            time.sleep(1.0)
            rec["rss_after_close_kib"] = d.rss_kib()
        finally:
            loop.close()
        rec["exit"] = d.stop()
        rec["ok"] = (rec["connected"] == args.connections and rec["exit"]["rc"] == 0)
    except Exception as e:
        rec["ok"] = False
        rec["error"] = "%s: %s" % (type(e).__name__, e)
        rec["daemon_stderr_tail"] = d.stderr_text()[-2000:]
    finally:
        d.kill()
        if rec.get("ok") and not args.keep:
            d.cleanup()
        else:
            rec["run_dir"] = d.dir
    return rec


def main(argv):
    ap = argparse.ArgumentParser(prog="bench/run idle", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3, help="runs, each with a fresh daemon (default 3)")
    ap.add_argument("--connections", type=int, default=10000, help="idle connections (default 10000)")
    ap.add_argument("--parallel", type=int, default=200, help="connection set-ups in flight (default 200)")
    ap.add_argument("--shards", default="auto", help="ringmaild Shards (default auto)")
    ap.add_argument("--keep", action="store_true", help="keep run directories")
    ap.add_argument("--no-record", action="store_true", help="do not write results/*.json nor RESULTS.md")
    args = ap.parse_args(argv)
    lib.check_binaries()

    machine = lib.machine_info()
    cmdline = "bench/run idle" + "".join(" " + a for a in argv)
    lib.log("idle: %s; commit %s; %d runs x %d connections"
            % (lib.machine_line(machine), machine["commit"], args.runs, args.connections))
    runs = []
    for i in range(args.runs):
        rec = one_run(args)
        rec["round"] = i
        runs.append(rec)
        if "rss_per_conn_kib" in rec:
            lib.log("[%d/%d] %d/%d connected in %.1fs; RSS %d -> %d KiB: %.2f KiB/conn; after close %s KiB; kernel %s%s"
                    % (i + 1, args.runs, rec["connected"], args.connections, rec["open_seconds"],
                       rec["before"]["VmRSS_kib"], rec["after"]["VmRSS_kib"], rec["rss_per_conn_kib"],
                       rec.get("rss_after_close_kib"), rec["kernel"],
                       "" if rec["ok"] else "  FAILED: %s %s" % (rec.get("errors"), rec.get("exit"))))
        else:
            lib.log("[%d/%d] FAILED: %s" % (i + 1, args.runs, rec.get("error")))

    good = [r for r in runs if r.get("ok")]
    S = lambda key: lib.stat3([key(r) for r in good])
    summary = {
        "ok_runs": len(good), "runs": len(runs),
        "rss_per_conn_kib": S(lambda r: r["rss_per_conn_kib"]),
        "anon_per_conn_kib": S(lambda r: r["anon_per_conn_kib"]),
        "rss_before_kib": S(lambda r: r["before"]["VmRSS_kib"]),
        "rss_after_kib": S(lambda r: r["after"]["VmRSS_kib"]),
        "rss_after_close_kib": S(lambda r: r["rss_after_close_kib"]),
        "rss_at_ready_kib": S(lambda r: r["rss_at_ready_kib"]),
        "open_seconds": S(lambda r: r["open_seconds"]),
        "kernel_sockstat_kib_per_conn": S(lambda r: r["kernel"].get("sockstat_mem_kib_per_conn")),
        "kernel_slab_kib_per_conn": S(lambda r: r["kernel"].get("slab_TCP_sockinode_kib_per_conn")),
    }
    rows = [
        ("RSS per idle session (KiB): (after − before) / %d" % args.connections, lib.fmt_stat(summary["rss_per_conn_kib"], "%.2f")),
        ("  of which anonymous (RssAnon delta / %d, KiB)" % args.connections, lib.fmt_stat(summary["anon_per_conn_kib"], "%.2f")),
        ("RSS at ready (KiB)", lib.fmt_stat(summary["rss_at_ready_kib"])),
        ("RSS before: ready + 1 warm-up session (KiB)", lib.fmt_stat(summary["rss_before_kib"])),
        ("RSS with %d idle sessions (KiB)" % args.connections, lib.fmt_stat(summary["rss_after_kib"])),
        ("RSS 1 s after closing them all (KiB)", lib.fmt_stat(summary["rss_after_close_kib"])),
        ("Time to open them (greeting + EHLO), s", lib.fmt_stat(summary["open_seconds"], "%.1f")),
        ("Kernel, not RSS: sockstat TCP mem delta per connection, both ends (KiB)", lib.fmt_stat(summary["kernel_sockstat_kib_per_conn"], "%.2f")),
        ("Kernel, not RSS: slab TCP + sock_inode_cache delta per connection, both ends (KiB)", lib.fmt_stat(summary["kernel_slab_kib_per_conn"], "%.2f")),
    ]
    tab = "| measure | median (min–max) |\n|---|---|\n" + "\n".join("| %s | %s |" % r for r in rows)
    print(tab)
    med = summary["rss_per_conn_kib"]["median"] if summary["rss_per_conn_kib"] else None
    verdict = None
    if med is not None:
        worst = summary["rss_per_conn_kib"]["max"]
        verdict = "%s: %.2f KiB RSS per idle connection (median; worst run %.2f; criterion: <= 16 KiB)" % (
            "MET" if med <= 16 else "NOT MET", med, worst)
        print(verdict)

    data = {
        "scenario": "idle", "command": cmdline, "machine": machine,
        "binaries": {"ringmaild": lib.RINGMAILD, "ringspool": lib.RINGSPOOL},
        "shards": sorted({r.get("shards") for r in runs if r.get("shards")}),
        "parameters": vars(args) | {"time_limit_s": TIME_LIMIT},
        "criterion": {"text": "<= 16 KiB RSS per idle connection", "median_kib": med,
                      "met": (med <= 16) if med is not None else None},
        "summary": summary, "runs": runs,
    }
    data["commit_at_end"], prov_warning = lib.provenance_end(machine)
    if prov_warning:
        lib.log(prov_warning)
    if args.no_record:
        return 0
    path = lib.write_json("idle", data)
    lib.log("wrote %s" % os.path.relpath(path, lib.ROOT))
    md = ["## idle: ringmaild memory per idle session", "",
          "- Command: `%s`" % cmdline,
          "- Commit: %s (date %s)" % (machine["commit"], machine["date"]),
          "- Machine: %s; ringmaild shards: %s" % (lib.machine_line(machine),
                                                   ", ".join(str(s) for s in data["shards"]) or "n/a"),
          "- %d connections from one Python asyncio client, each after greeting + `EHLO idle.test` + reply, "
          "all held open; VmRSS from /proc/PID/status. %d runs, a fresh daemon each; median (min–max)."
          % (args.connections, args.runs),
          "- Kernel rows are not RSS and count both ends of each loopback connection (client + daemon socket).",
          "- Raw runs: `bench/results/%s`" % os.path.basename(path), "", prov_warning, "", tab, ""]
    if verdict:
        md.append("**Done-criterion %s**" % verdict)
    lib.update_results_md("idle", "\n".join(md))
    lib.log("updated bench/RESULTS.md")
    return 0 if len(good) == len(runs) else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
