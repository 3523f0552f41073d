"""A private Postfix instance for the bench (bench/relay.py).

Postfix relays everything it accepts on 127.0.0.1:PORT to a gateway
([127.0.0.1]:SINKPORT) with its durability intact: the queue is on the real
disk (var/bench/, ext4) and nothing fsync-related is changed (cleanup fsyncs
each queue file before smtpd answers 250, as shipped). Its own config_directory
(main.cf, master.cf), queue_directory and data_directory live in the run
directory; logs go to DIR/maillog through postlogd, never to syslog. No
daemon is chrooted (the Debian master.cf chroots most of them, which needs
copies of /etc files in the queue directory).

All of its processes run in a cpuacct cgroup (cgroup v1 cpuacct, or a cgroup
v2 child with cpu.stat) created for the instance: `postfix start` is exec'd
by a shell that first moves itself into the cgroup, so master and every
child it forks (smtpd, cleanup, qmgr, trivial-rewrite, smtp, ..., including
ones that exit during the run) are counted. Without a cgroup, the CPU is
polled from /proc (see Postfix.cpu_us).

Needs root and Postfix installed (/usr/sbin/postfix). Debian's package
installed with "No configuration" has no /etc/postfix/main.cf; the postfix
command reads the default main.cf before it honours -c, so an empty
/etc/postfix/main.cf is created if (and only if) it is missing (see
ensure_default_main_cf). No system instance is started.
"""

import os
import shutil
import signal
import subprocess
import time

import lib

POSTFIX = "/usr/sbin/postfix"

MAIN_CF = """\
# written by bench/postfix.py: a relay to [127.0.0.1]:{sink_port}, durability as shipped
compatibility_level = 3.6
queue_directory = {queue}
data_directory = {data}
mail_owner = postfix
setgid_group = postdrop
myhostname = bench.test
mydomain = bench.test
myorigin = bench.test
mydestination =
local_recipient_maps =
local_transport = error:local delivery disabled
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks reject
smtpd_recipient_restrictions =
relayhost = [127.0.0.1]:{sink_port}
smtp_dns_support_level = disabled
disable_dns_lookups = yes
smtp_host_lookup = native
default_process_limit = 200
maillog_file = {maillog}
maillog_file_prefixes = {rundir}
biff = no
smtputf8_enable = no
smtpd_banner = $myhostname ESMTP
"""

# chroot "n" everywhere; smtpd on the bench's port only.
MASTER_CF = """\
# written by bench/postfix.py
# service type  private unpriv  chroot  wakeup  maxproc command
127.0.0.1:{port} inet n - n - - smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
"""

DEFAULT_MAIN_CF = "/etc/postfix/main.cf"


def ensure_default_main_cf():
    """The postfix command reads /etc/postfix/main.cf first; with Debian's
    "No configuration" install it does not exist. Create an empty one (a
    comment) only then. Returns True if it was created."""
    if os.path.exists(DEFAULT_MAIN_CF):
        return False
    os.makedirs(os.path.dirname(DEFAULT_MAIN_CF), exist_ok=True)
    with open(DEFAULT_MAIN_CF, "w") as f:
        f.write("# created empty by ringmail bench/postfix.py so that `postfix -c DIR` runs;\n"
                "# no system instance uses it.\n")
    return True


class CpuCgroup:
    """A cgroup to count the CPU of every process in it (µs)."""

    def __init__(self, name):
        self.path = None
        self.kind = None
        for base, kind in (("/sys/fs/cgroup/cpuacct", "v1"), ("/sys/fs/cgroup", "v2")):
            if kind == "v1" and not os.path.exists(os.path.join(base, "cpuacct.usage")):
                continue
            if kind == "v2" and not os.path.exists(os.path.join(base, "cgroup.controllers")):
                continue
            p = os.path.join(base, name)
            try:
                os.mkdir(p)
            except OSError:
                continue
            self.path, self.kind = p, kind
            break

    @property
    def procs_file(self):
        return os.path.join(self.path, "cgroup.procs") if self.path else None

    def usage_us(self):
        if self.kind == "v1":
            with open(os.path.join(self.path, "cpuacct.usage")) as f:
                return int(f.read()) / 1000.0
        with open(os.path.join(self.path, "cpu.stat")) as f:
            for line in f:
                k, v = line.split()
                if k == "usage_usec":
                    return float(v)
        return None

    def pids(self):
        try:
            with open(self.procs_file) as f:
                return [int(x) for x in f.read().split()]
        except OSError:
            return []

    def remove(self):
        if not self.path:
            return
        for _ in range(50):
            try:
                os.rmdir(self.path)
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.1)


class Postfix:
    """One private Postfix instance relaying to 127.0.0.1:sink_port."""

    def __init__(self, run_dir, sink_port):
        self.dir = run_dir
        self.conf_dir = os.path.join(run_dir, "conf")
        self.queue = os.path.join(run_dir, "queue")
        self.data = os.path.join(run_dir, "data")
        self.maillog = os.path.join(run_dir, "maillog")
        self.sink_port = sink_port
        self.port = lib.free_port()
        self.cgroup = None
        self.created_default_main_cf = ensure_default_main_cf()
        os.makedirs(self.conf_dir)
        os.makedirs(self.data)
        os.makedirs(self.queue)  # root-owned; `postfix check` makes its subdirectories
        # postfix (the mail_owner) must reach its queue and data directories
        for d in (lib.WORK_DIR, run_dir):
            os.chmod(d, os.stat(d).st_mode | 0o711)
        with open(os.path.join(self.conf_dir, "main.cf"), "w") as f:
            f.write(MAIN_CF.format(queue=self.queue, data=self.data, maillog=self.maillog, rundir=run_dir,
                                   sink_port=sink_port))
        with open(os.path.join(self.conf_dir, "master.cf"), "w") as f:
            f.write(MASTER_CF.format(port=self.port))
        shutil.chown(self.data, "postfix", "postfix")
        # The mail owner must be able to open the log: postsuper (run by
        # `postfix start` and `postfix check` as the mail owner) logs there,
        # and exits fatally if it cannot, e.g. when root's postfix-script
        # created the file first.
        with open(self.maillog, "a"):
            pass
        shutil.chown(self.maillog, "postfix", "postfix")
        os.chmod(self.maillog, 0o644)
        self.log = []

    def _postfix(self, *args, timeout=60):
        cmd = [POSTFIX, "-c", self.conf_dir] + list(args)
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout,
                           env=dict(os.environ, MAIL_CONFIG=self.conf_dir))
        self.log.append({"command": cmd, "rc": r.returncode,
                         "output": (r.stdout + r.stderr)[-2000:]})
        if r.returncode != 0:
            raise RuntimeError("%s failed (%d): %s" % (" ".join(cmd), r.returncode,
                                                       (r.stdout + r.stderr)[-1500:]))
        return r

    def start(self, timeout=30, check=True):
        # `postfix check` creates the queue directories with their owners
        # (set-permissions would also work). A restart skips it, as an
        # operator's `postfix start` would.
        if check:
            self._postfix("check")
        self.cgroup = CpuCgroup("ringbench-postfix-%d-%d" % (os.getpid(), self.port))
        if self.cgroup.path:
            cmd = ["/bin/sh", "-c", 'echo $$ > "$1" && exec "$2" -c "$3" start',
                   "sh", self.cgroup.procs_file, POSTFIX, self.conf_dir]
        else:
            cmd = [POSTFIX, "-c", self.conf_dir, "start"]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=60,
                           env=dict(os.environ, MAIL_CONFIG=self.conf_dir))
        self.log.append({"command": cmd, "rc": r.returncode, "output": (r.stdout + r.stderr)[-2000:]})
        if r.returncode != 0:
            raise RuntimeError("postfix start failed (%d): %s" % (r.returncode, (r.stdout + r.stderr)[-1500:]))
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if listening(self.port):
                return self
            time.sleep(0.05)
        raise RuntimeError("postfix not listening on %d after %ds; maillog:\n%s"
                           % (self.port, timeout, self.maillog_tail()))

    def master_pid(self):
        try:
            with open(os.path.join(self.queue, "pid", "master.pid")) as f:
                return int(f.read().split()[0])
        except (OSError, ValueError, IndexError):
            return None

    def pids(self):
        """Every process of the instance: the cgroup's members, or master and
        its descendants."""
        if self.cgroup and self.cgroup.path:
            return self.cgroup.pids()
        m = self.master_pid()
        if not m:
            return []
        children = {}
        for d in os.listdir("/proc"):
            if d.isdigit():
                try:
                    with open("/proc/%s/stat" % d) as f:
                        s = f.read()
                    ppid = int(s[s.rindex(")") + 2:].split()[1])
                    children.setdefault(ppid, []).append(int(d))
                except (OSError, ValueError):
                    pass
        out, todo = [], [m]
        while todo:
            p = todo.pop()
            out.append(p)
            todo.extend(children.get(p, []))
        return out

    def cpu_us(self):
        """CPU µs of the whole instance. With the cgroup: exact, exited
        processes included. Without: master's utime+stime plus its reaped
        children's (cutime+cstime) plus the live descendants'."""
        if self.cgroup and self.cgroup.path:
            return self.cgroup.usage_us()
        total = 0
        m = self.master_pid()
        for p in self.pids():
            try:
                with open("/proc/%d/stat" % p) as f:
                    s = f.read()
                fl = s[s.rindex(")") + 2:].split()
                total += int(fl[11]) + int(fl[12])
                if p == m:
                    total += int(fl[13]) + int(fl[14])
            except (OSError, ValueError):
                pass
        return lib.ticks_to_us(total)

    @property
    def cpu_method(self):
        if self.cgroup and self.cgroup.path:
            return "cgroup %s (%s)" % (self.cgroup.path, self.cgroup.kind)
        return "/proc polling (master + reaped children + live descendants)"

    def queue_count(self):
        """Files in the incoming, active and deferred queues."""
        n = 0
        for q in ("incoming", "active", "deferred", "maildrop", "hold"):
            for _, _, files in os.walk(os.path.join(self.queue, q)):
                n += len(files)
        return n

    def maillog_tail(self, n=3000):
        try:
            with open(self.maillog, errors="replace") as f:
                return f.read()[-n:]
        except OSError:
            return ""

    def stop(self, timeout=30):
        """postfix stop; then kill whatever is left of the instance by PID."""
        try:
            self._postfix("stop", timeout=timeout)
        except Exception as e:  # noqa: BLE001 - kill below
            lib.log("postfix stop: %s" % e)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.pids():
            time.sleep(0.1)
        for p in self.pids():
            try:
                os.kill(p, signal.SIGKILL)
            except OSError:
                pass
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and self.pids():
            time.sleep(0.1)
        if self.cgroup:
            self.cgroup.remove()

    def cleanup(self):
        shutil.rmtree(self.dir, ignore_errors=True)


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
