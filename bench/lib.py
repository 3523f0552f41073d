"""Common code for the bench/ scenarios (Python 3 standard library only).

Machine description, ringmaild start/stop (ready-line and shard exit-line
parsing), /proc readers for CPU time and RSS, median/range, the JSON writer and
the RESULTS.md section updater.
"""

import datetime
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
BUILD = os.path.join(ROOT, "build", "release")
# Overridable to compare builds: RINGMAILD=... RINGSPOOL=... bench/run ...
RINGMAILD = os.environ.get("RINGMAILD") or os.path.join(BUILD, "ringmaild")
RINGSPOOL = os.environ.get("RINGSPOOL") or os.path.join(BUILD, "ringspool")
RESULTS_DIR = os.path.join(BENCH, "results")
RESULTS_MD = os.path.join(BENCH, "RESULTS.md")
# Scratch space for spools and logs: on the real disk (ext4), ignored by git.
WORK_DIR = os.path.join(ROOT, "var", "bench")

CLK_TCK = os.sysconf("SC_CLK_TCK")
PAGE_KIB = os.sysconf("SC_PAGE_SIZE") // 1024


def log(*args):
    print(*args, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- machine

def _git(*args):
    return subprocess.run(["git", "-C", ROOT] + list(args), capture_output=True,
                          text=True, timeout=30).stdout.strip()


def commit_id():
    """Short commit, plus "-dirty" if tracked files are modified (as `git
    describe --dirty`; untracked files are listed in machine_info instead).
    Files under bench/ are ignored: they are the harness being committed
    alongside its results, not the code being measured."""
    short = _git("rev-parse", "--short", "HEAD") or "unknown"
    status = _git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)bench")
    return short + ("-dirty" if status else "")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def fs_type(path):
    """File system type of the mount holding path (longest mount prefix)."""
    path = os.path.realpath(path)
    best, best_type = "", "unknown"
    with open("/proc/mounts") as f:
        for line in f:
            parts = line.split()
            mnt, typ = parts[1], parts[2]
            if (path == mnt or path.startswith(mnt.rstrip("/") + "/")) and len(mnt) >= len(best):
                best, best_type = mnt, typ
    return best_type


def build_state():
    """Is build/release up to date with the work tree (so the commit id
    describes the binary)? None if there is no build."""
    if not os.path.exists(os.path.join(BUILD, "build.ninja")):
        return None
    r = subprocess.run(["ninja", "-C", BUILD, "-n"], capture_output=True, text=True, timeout=120)
    return r.returncode == 0 and "no work to do" in r.stdout


def machine_info():
    return {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "commit": commit_id(),
        "kernel": platform.release(),
        "cpu_model": cpu_model(),
        "nproc": os.cpu_count(),
        "loadavg_at_start": open("/proc/loadavg").read().split()[:3],
        "python": platform.python_version(),
        "work_dir_fs": fs_type(WORK_DIR if os.path.exists(WORK_DIR) else ROOT),
        # Modified (" M", "-dirty") and untracked ("??") files outside bench/:
        # the binary may contain uncommitted work.
        "dirty_files": _git("status", "--porcelain", "--", ".", ":(exclude)bench").splitlines()[:50],
        "head_commit_full": _git("rev-parse", "HEAD"),
        # False: the binaries are older than the tree (BENCH_NO_BUILD=1, or the
        # tree changed since the build), so "commit" may not describe them.
        "build_up_to_date": build_state(),
    }


def provenance_end(machine):
    """Commit at the end of a scenario, and a warning for RESULTS.md if the
    figures may not belong to the commit recorded at the start."""
    end = commit_id()
    warn = []
    if machine.get("build_up_to_date") is False:
        warn.append("the release build was older than the work tree at the start")
    if end != machine["commit"]:
        warn.append("the tree moved to %s during the run" % end)
    return end, ("**Warning: %s; the commit id may not describe the binary measured.**" % "; ".join(warn)) if warn else ""


def machine_line(m):
    return "%s, %d CPUs, kernel %s" % (m["cpu_model"], m["nproc"], m["kernel"])


# ---------------------------------------------------------------- /proc

def proc_cpu_ticks(pid):
    """utime+stime in clock ticks of the whole process (all threads, live and
    exited, io_uring workers included)."""
    with open("/proc/%d/stat" % pid) as f:
        data = f.read()
    fields = data[data.rindex(")") + 2:].split()
    # fields[0] is field 3 (state); utime is field 14, stime field 15.
    return int(fields[11]) + int(fields[12])


def ticks_to_us(ticks):
    return ticks * 1e6 / CLK_TCK


def proc_status(pid):
    """/proc/PID/status as a dict; memory values in KiB as ints."""
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            v = v.strip()
            if v.endswith(" kB"):
                out[k] = int(v[:-3])
            else:
                out[k] = v
    return out


def proc_nfds(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return None


def sockstat():
    """TCP line of /proc/net/sockstat: inuse, orphan, tw, alloc, mem (pages)."""
    with open("/proc/net/sockstat") as f:
        for line in f:
            if line.startswith("TCP:"):
                p = line.split()[1:]
                return {p[i]: int(p[i + 1]) for i in range(0, len(p), 2)}
    return {}


def slab_objects(names=("TCP", "sock_inode_cache")):
    """Active objects and object size of a few slab caches (root only)."""
    out = {}
    try:
        with open("/proc/slabinfo") as f:
            for line in f:
                p = line.split()
                if p and p[0] in names:
                    out[p[0]] = {"active_objs": int(p[1]), "objsize": int(p[3])}
    except OSError:
        pass
    return out


# ---------------------------------------------------------------- misc

def free_port():
    """A port that was free a moment ago (bind to 0 and release)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def stat3(values):
    """median, min, max of the non-None values (None if there are none)."""
    v = [x for x in values if x is not None]
    if not v:
        return None
    return {"median": statistics.median(v), "min": min(v), "max": max(v), "n": len(v)}


def paired(runs, field, a, b, key, op):
    """op(a's key, b's key) per round, for the runs whose `field` is a and
    b (both ok, same round): stat3 of them. Interleaved runs compared
    round by round cancel most of a shared machine's drift."""
    out = []
    for rnd in sorted({r["round"] for r in runs}):
        x = [r[key] for r in runs if r["round"] == rnd and r[field] == a and r.get("ok")]
        y = [r[key] for r in runs if r["round"] == rnd and r[field] == b and r.get("ok")]
        if x and y and x[0] is not None and y[0]:
            out.append(op(x[0], y[0]))
    return stat3(out)


def fmt_stat(st, fmt="%.0f", scale=1.0):
    if st is None:
        return "n/a"
    med, lo, hi = (st["median"] * scale, st["min"] * scale, st["max"] * scale)
    return (fmt + " (" + fmt + "–" + fmt + ")") % (med, lo, hi)


def make_run_dir(tag):
    os.makedirs(WORK_DIR, exist_ok=True)
    d = os.path.join(WORK_DIR, "%s-%d-%d" % (tag, os.getpid(), int(time.time() * 1000)))
    os.makedirs(d)
    t = fs_type(d)
    if t in ("tmpfs", "ramfs"):
        raise SystemExit("bench: %s is on %s; the spool must be on the real disk" % (d, t))
    return d


def write_json(scenario, data):
    os.makedirs(RESULTS_DIR, exist_ok=True)
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d")
    name = "%s-%s-%s.json" % (scenario, date, data["machine"]["commit"])
    path = os.path.join(RESULTS_DIR, name)
    n = 2
    while os.path.exists(path):  # keep earlier results of the same day/commit
        path = os.path.join(RESULTS_DIR, "%s-%s-%s.%d.json" % (scenario, date, data["machine"]["commit"], n))
        n += 1
    with open(path + ".tmp", "w") as f:
        json.dump(data, f, indent=1, sort_keys=False)
        f.write("\n")
    os.rename(path + ".tmp", path)
    return path


RESULTS_HEADER = """# ringmail benchmark results

Produced by `bench/run` (see bench/README.md). Each section is rewritten by
its scenario; the raw runs are in bench/results/*.json.
"""


def update_results_md(section, text):
    """Replace the text between <!-- section:begin --> and <!-- section:end -->
    in RESULTS.md (append the section if it is not there yet)."""
    begin, end = "<!-- %s:begin -->" % section, "<!-- %s:end -->" % section
    try:
        with open(RESULTS_MD) as f:
            doc = f.read()
    except FileNotFoundError:
        doc = RESULTS_HEADER
    text = re.sub(r"\n{3,}", "\n\n", text)
    block = begin + "\n" + text.rstrip("\n") + "\n" + end
    i, j = doc.find(begin), doc.find(end)
    if i >= 0 and j > i:
        doc = doc[:i] + block + doc[j + len(end):]
    else:
        doc = doc.rstrip("\n") + "\n\n" + block + "\n"
    with open(RESULTS_MD + ".tmp", "w") as f:
        f.write(doc)
    os.rename(RESULTS_MD + ".tmp", RESULTS_MD)


# ---------------------------------------------------------------- ringmaild

READY_RE = re.compile(r"ringmaild ready: (\d+) shards?, listening on ([0-9.]+):(\d+)")
DONE_RE = re.compile(r"shard (\d+): done: (\d+) sessions, (\d+) messages, (\d+) fdatasyncs")

CONFIG = """\
# written by bench/lib.py
Spool_Base = "spool"
Paniclog = "log/paniclog"
Shards = {shards}
Hostname = "bench.test"
Max_Connections = 20000
Idle_Timeout = 600s
# Acceptance only: deliveries go to a closed port and are deferred, so the
# spool check can count every accepted message (nothing is delivered or
# bounced during the run). Retry_Interval keeps retries out of the way.
Gateway = "127.0.0.1:1"
Retry_Interval = 1h
ESMTP_Listener {{
  Listen "127.0.0.1:0" {{ }}
  Relay_Hosts = ( "127.0.0.0/8" )
}}
"""


class DaemonError(Exception):
    pass


class Ringmaild:
    """One ringmaild in its own directory (config, spool, logs).

    start() waits for the ready line; stop() sends SIGTERM, waits for exit and
    parses the shard exit lines."""

    def __init__(self, run_dir, shards="auto", binary=RINGMAILD, extra=""):
        self.dir = run_dir
        self.binary = binary
        self.conf = os.path.join(run_dir, "ringmail.conf")
        self.spool = os.path.join(run_dir, "spool")
        self.stderr_path = os.path.join(run_dir, "ringmaild.stderr")
        with open(self.conf, "w") as f:
            f.write(CONFIG.format(shards=shards) + extra)
        os.makedirs(os.path.join(run_dir, "log"), exist_ok=True)
        self.proc = None
        self.pid = None
        self.port = None
        self.shards = None
        self.exit = None

    @property
    def command(self):
        return [self.binary, "-c", self.conf]

    def stderr_text(self):
        try:
            with open(self.stderr_path, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def start(self, timeout=30):
        errf = open(self.stderr_path, "w")
        self.proc = subprocess.Popen(self.command, cwd=self.dir, stdin=subprocess.DEVNULL,
                                     stdout=errf, stderr=errf)
        errf.close()
        self.pid = self.proc.pid
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = READY_RE.search(self.stderr_text())
            if m:
                self.shards, self.port = int(m.group(1)), int(m.group(3))
                return self
            if self.proc.poll() is not None:
                raise DaemonError("ringmaild exited with %s before ready:\n%s"
                                  % (self.proc.returncode, self.stderr_text()[-3000:]))
            time.sleep(0.02)
        self.kill()
        raise DaemonError("ringmaild not ready after %ds:\n%s" % (timeout, self.stderr_text()[-3000:]))

    def cpu_ticks(self):
        return proc_cpu_ticks(self.pid)

    def rss_kib(self):
        return proc_status(self.pid)["VmRSS"]

    def stop(self, timeout=60):
        """SIGTERM, wait, parse exit lines. Returns a dict."""
        if self.proc is None:
            return None
        t0 = time.monotonic()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
            rc = "killed after %ds" % timeout
        text = self.stderr_text()
        shards = [dict(shard=int(a), sessions=int(b), messages=int(c), fdatasyncs=int(d))
                  for a, b, c, d in DONE_RE.findall(text)]
        self.exit = {
            "rc": rc,
            "stop_seconds": round(time.monotonic() - t0, 3),
            "shards": shards,
            "sessions": sum(s["sessions"] for s in shards),
            "messages": sum(s["messages"] for s in shards),
            "fdatasyncs": sum(s["fdatasyncs"] for s in shards),
        }
        return self.exit

    def kill(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)

    def ringspool_count(self, timeout=120):
        """Committed messages per ringspool (summary line on stderr)."""
        r = subprocess.run([RINGSPOOL, self.spool], capture_output=True, text=True,
                           timeout=timeout)
        m = re.search(r"(\d+) messages?, (\d+) segments?, (\d+) torn, (\d+) corrupt", r.stderr)
        lines = r.stdout.count("\n")
        if not m:
            return {"rc": r.returncode, "messages": None, "lines": lines,
                    "error": (r.stderr or "no summary line")[-500:]}
        return {"rc": r.returncode, "messages": int(m.group(1)), "segments": int(m.group(2)),
                "torn": int(m.group(3)), "corrupt": int(m.group(4)), "lines": lines}

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


def check_binaries(need_ringmail=True):
    missing = [b for b in ([RINGMAILD, RINGSPOOL] if need_ringmail else []) if not os.access(b, os.X_OK)]
    if missing:
        raise SystemExit("bench: missing %s (build failed? see bench/run)" % ", ".join(missing))
