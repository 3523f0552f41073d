"""
harness - run the real ringmaild from outside and talk SMTP to it

The SMTP integration tests (tests/smtp/test_*.py) are standalone scripts:
each starts ringmaild on 127.0.0.1 port 0 with a configuration written by
the test, reads the port from the "ready" line, and scripts the dialog with
real clients (raw sockets, smtplib, swaks). This module holds what they
share:

  conf(...)              configuration text with test defaults
  Daemon(conf_text)      start/stop/kill9/restart, paniclog, spool listing
  SMTPConn(port)         raw-socket client with a multi-line reply reader
  make_message(...)      a message carrying a unique X-Token header
  DaemonTest             unittest.TestCase: daemons stopped (and checked to
                         exit 0) at the end of each test, their stderr and
                         paniclog printed when the test failed
  main(timeout)          run a file's tests under a watchdog; exit 0, 1, or
                         77 when every test was skipped

Every socket operation has a timeout and every file runs under a watchdog,
so no test can hang. Under a sanitizer build everything is slower: timeouts
are multiplied by SCALE.

Environment: RINGMAIL_BUILD (build root, default <src>/build/dev) and
RINGMAIL_SRC (source root, default two levels up), as meson sets them.
Daemons must be started from the main thread (their PR_SET_PDEATHSIG is
tied to the thread that forked them).
"""

import collections
import ctypes
import faulthandler
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import unittest
import uuid

SRC = os.environ.get("RINGMAIL_SRC") or os.path.abspath(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
BUILD = os.environ.get("RINGMAIL_BUILD") or os.path.join(SRC, "build", "dev")
RINGMAILD = os.path.join(BUILD, "ringmaild")
RINGSPOOL = os.path.join(BUILD, "ringspool")
SKIP_EXIT = 77

HOSTNAME = "mx.test"

# Sanitizer defaults when the test is run by hand (meson sets its own).
os.environ.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=1")
os.environ.setdefault("UBSAN_OPTIONS", "print_stacktrace=1:halt_on_error=1")


def _sanitized():
    """True when ringmaild was built with AddressSanitizer (slower)."""
    try:
        with open(RINGMAILD, "rb") as f:
            return b"__asan_init" in f.read()
    except OSError:
        return False


SANITIZED = _sanitized()
SCALE = float(os.environ.get("RINGMAIL_TEST_SCALE") or (3 if SANITIZED else 1))


def t(seconds):
    """A timeout, stretched on slow (sanitizer) builds."""
    return seconds * SCALE


# --- process hygiene --------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _child_setup(nofile=None):
    # If the test process dies (watchdog, meson timeout), so does the daemon.
    _libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if nofile is not None:
        import resource
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile, nofile))


_DAEMONS = []           # every Daemon made in this process, for the watchdog
_MOUNTS = []            # tmpfs mount points to undo on the way out


def _emergency_cleanup():
    for d in list(_DAEMONS):
        try:
            if d.proc is not None and d.proc.poll() is None:
                d.proc.kill()
                d.proc.wait(5)
        except Exception:
            pass
    for m in list(_MOUNTS):
        subprocess.run(["umount", "-l", m], stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL)


def _watchdog_fire(seconds):
    sys.stderr.write("\n*** watchdog: test file still running after %.0f s; "
                     "thread stacks follow, daemons killed\n" % seconds)
    faulthandler.dump_traceback(all_threads=True)
    for d in list(_DAEMONS):
        try:
            sys.stderr.write(d.diagnostics())
        except Exception:
            pass
    _emergency_cleanup()
    sys.stderr.flush()
    os._exit(1)


# --- configuration ----------------------------------------------------------

def listener(listens=("127.0.0.1:0",), relay=("127.0.0.0/8", "::1"),
             extra=""):
    """One ESMTP_Listener scope."""
    out = ["ESMTP_Listener {"]
    for a in listens:
        out.append('  Listen "%s" { }' % a)
    if relay is not None:
        out.append("  Relay_Hosts = ( %s )" % " ".join('"%s"' % r
                                                      for r in relay))
    if extra:
        out.append(extra)
    out.append("}")
    return "\n".join(out) + "\n"


def conf(shards=2, listeners=None, extra="", **opts):
    """
    Configuration text: test defaults, then opts as `Key = value` (values
    written as given: conf(Max_Message_Size="1M", Idle_Timeout="1s")),
    then extra, then the listeners (default: one on 127.0.0.1:0 relaying
    for 127.0.0.0/8).
    """
    base = collections.OrderedDict([
        ("Spool_Base", '"spool"'),
        ("Paniclog", '"log/paniclog"'),
        ("Delivery_Log", '"log/delivery.log"'),
        ("Shards", str(shards)),
        ("Hostname", '"%s"' % HOSTNAME),
        # Small segments: tests make many spools, and they are preallocated.
        ("Spool_Segment_Size", "4M"),
        ("Shutdown_Timeout", "20s"),
        # Tests of acceptance look at the spool after the 250: their mail
        # must stay there. Delivery goes to a closed port (refused at
        # once, so deferred for Retry_Interval, 20 minutes by default).
        # Delivery tests pass their own Gateway.
        ("Gateway", '"127.0.0.1:1"'),
    ])
    for k, v in opts.items():
        base[k] = str(v)
    lines = ["# written by tests/smtp/harness.py"]
    lines += ["%s = %s" % (k, v) for k, v in base.items()]
    text = "\n".join(lines) + "\n" + extra + "\n"
    if listeners is None:
        listeners = [listener()]
    for l in listeners:
        text += l
    return text


# --- the daemon -------------------------------------------------------------

READY_RE = re.compile(
    r"^\d+:main: ringmaild ready: (\d+) shards?, listening on (.+)$", re.M)
ADDR_RE = re.compile(r"^(?:\[([0-9a-fA-F:.]+)\]|([^:\s]+)):(\d+)$")
SANITIZER_RE = re.compile(
    r"ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|"
    r"WARNING: ThreadSanitizer")


class DaemonError(AssertionError):
    pass


class Spool:
    """ringspool's view of a spool: messages (dicts) and its summary."""

    def __init__(self, messages, summary, rc, stderr):
        self.messages = messages
        self.summary = summary      # {"messages", "segments", "torn", "corrupt"}
        self.rc = rc
        self.stderr = stderr

    def tokens(self):
        """Counter of X-Token values over all message bodies."""
        c = collections.Counter()
        for m in self.messages:
            for tok in TOKEN_RE.findall(m["body"]):
                c[tok.decode()] += 1
        return c

    def by_token(self, token):
        tb = token.encode()
        return [m for m in self.messages
                if tb in TOKEN_RE.findall(m["body"])]

    def ids(self):
        return [m.get("id") for m in self.messages]

    def __len__(self):
        return len(self.messages)

    def __repr__(self):
        return "<Spool %d messages, summary %r>" % (len(self.messages),
                                                   self.summary)


def _latin1_to_text(v):
    """A JSON string read byte-for-char back to text (UTF-8)."""
    if isinstance(v, str):
        return v.encode("latin-1").decode("utf-8", "surrogateescape")
    if isinstance(v, list):
        return [_latin1_to_text(x) for x in v]
    return v


def run_ringspool(spool_base, extra_args=(), timeout=None, check=True,
                  body=True):
    """
    Run `ringspool --json --body SPOOL_BASE` (without --body when body is
    false: faster, and m["body"] is b""); return a Spool.

    ringspool prints valid UTF-8 as it is and any other byte as \\u00XX.
    Reading each line as Latin-1 (one char per byte) before json.loads
    makes both come out as chars 0-255, so encoding the body back to
    Latin-1 gives its exact bytes.
    """
    cmd = ([RINGSPOOL, "--json"] + (["--body"] if body else []) +
           list(extra_args) + [spool_base])
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                       timeout=timeout or t(60))
    err = p.stderr.decode("utf-8", "replace")
    if check and p.returncode != 0:
        raise AssertionError("ringspool exited %d: %s" % (p.returncode, err))
    msgs = []
    for line in p.stdout.split(b"\n"):
        if not line.strip():
            continue
        m = json.loads(line.decode("latin-1"))
        for k, v in list(m.items()):
            if k == "body":
                m[k] = v.encode("latin-1")
            else:
                m[k] = _latin1_to_text(v)
        m.setdefault("body", b"")
        msgs.append(m)
    summary = {}
    for key in ("messages", "segments", "torn", "corrupt"):
        mm = re.search(r"(\d+) %s" % key, err)
        if mm:
            summary[key] = int(mm.group(1))
    return Spool(msgs, summary, p.returncode, err)


class Daemon:
    """
    One ringmaild on a configuration written into its own directory. The
    spool, logs and stderr files live there too (stderr.1, stderr.2, ...
    one per start).
    """

    def __init__(self, conf_text, name="ringmaild", workdir=None):
        self.dir = workdir or tempfile.mkdtemp(prefix="ringmail-smtp-")
        self.name = name
        self.conf_path = os.path.join(self.dir, "ringmail.conf")
        with open(self.conf_path, "w") as f:
            f.write(conf_text)
        self.conf_text = conf_text
        self.proc = None
        self.starts = 0
        self.stderr_path = None
        self.addrs = []
        self.shards = None
        self.exit_codes = []
        self._exit_recorded = False
        self.stopped_on_purpose = False
        _DAEMONS.append(self)

    # paths
    @property
    def spool_base(self):
        m = re.search(r'^\s*Spool_Base\s*=\s*"([^"]*)"', self.conf_text,
                      re.M | re.I)
        p = m.group(1) if m else "spool"
        return p if os.path.isabs(p) else os.path.join(self.dir, p)

    @property
    def paniclog_path(self):
        m = re.search(r'^\s*Paniclog\s*=\s*"([^"]*)"', self.conf_text,
                      re.M | re.I)
        p = m.group(1) if m else "log/paniclog"
        return p if os.path.isabs(p) else os.path.join(self.dir, p)

    @property
    def pid(self):
        return self.proc.pid

    @property
    def port(self):
        return self.addrs[0][1]

    @property
    def host(self):
        return self.addrs[0][0]

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    # life cycle
    def start(self, timeout=None, env=None, nofile=None):
        """
        Start and wait for the ready line; raise DaemonError if it fails.
        nofile: the daemon's RLIMIT_NOFILE.
        """
        assert not self.running(), "already running"
        timeout = timeout or t(20)
        self.starts += 1
        self._exit_recorded = False
        self.stopped_on_purpose = False
        self.stderr_path = os.path.join(self.dir, "stderr.%d" % self.starts)
        errf = open(self.stderr_path, "wb")
        e = dict(os.environ)
        if env:
            e.update(env)
        try:
            self.proc = subprocess.Popen(
                [RINGMAILD, "-c", self.conf_path], stdin=subprocess.DEVNULL,
                stdout=errf, stderr=errf, cwd=self.dir, env=e,
                preexec_fn=lambda: _child_setup(nofile))
        finally:
            errf.close()
        deadline = time.monotonic() + timeout
        while True:
            text = self.stderr()
            m = READY_RE.search(text)
            if m:
                self.shards = int(m.group(1))
                self.addrs = []
                for tok in m.group(2).split():
                    am = ADDR_RE.match(tok)
                    if not am:
                        raise DaemonError("cannot parse address %r in ready "
                                          "line %r" % (tok, m.group(0)))
                    self.addrs.append((am.group(1) or am.group(2),
                                       int(am.group(3))))
                return self
            rc = self.proc.poll()
            if rc is not None:
                self._record_exit()
                self.stopped_on_purpose = True
                raise DaemonError("ringmaild exited %s before ready:\n%s"
                                  % (rc, self.tail()))
            if time.monotonic() > deadline:
                self.proc.kill()
                self.proc.wait()
                self._record_exit()
                self.stopped_on_purpose = True
                raise DaemonError("no ready line within %.0f s:\n%s"
                                  % (timeout, self.tail()))
            time.sleep(0.02)

    def send_signal(self, sig):
        if sig in (signal.SIGTERM, signal.SIGINT, signal.SIGKILL):
            self.stopped_on_purpose = True
        os.kill(self.proc.pid, sig)

    def wait(self, timeout):
        """Wait for exit; the exit code, or None if still running."""
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self._record_exit()
        return rc

    def _record_exit(self):
        if not self._exit_recorded and self.proc.returncode is not None:
            self.exit_codes.append(self.proc.returncode)
            self._exit_recorded = True

    def stop(self, timeout=None, sig=signal.SIGTERM):
        """
        Signal by PID and wait; return the exit code. A daemon still running
        after timeout is killed with SIGKILL and DaemonError raised.
        """
        if self.proc is None:
            return None
        if self.proc.poll() is not None:
            self._record_exit()
            return self.proc.returncode
        timeout = timeout or t(30)
        self.send_signal(sig)
        rc = self.wait(timeout)
        if rc is None:
            self.proc.kill()
            self.proc.wait()
            self._record_exit()
            raise DaemonError("ringmaild did not exit within %.0f s of "
                              "signal %d:\n%s" % (timeout, sig, self.tail()))
        return rc

    def stop_clean(self, timeout=None):
        """stop(), and fail unless it exited 0 with no sanitizer report."""
        rc = self.stop(timeout)
        self.check_exit(rc)
        return rc

    def check_exit(self, rc):
        text = self.stderr()
        if rc != 0:
            raise DaemonError("ringmaild exited %s (expected 0)%s:\n%s" % (
                rc, " -- a sanitizer report (leak?)"
                if SANITIZER_RE.search(text) else "", self.tail()))
        if SANITIZER_RE.search(text):
            raise DaemonError("sanitizer report in ringmaild's stderr:\n%s"
                              % self.tail())

    def kill9(self):
        self.stopped_on_purpose = True
        self.proc.kill()
        self.proc.wait()
        self._record_exit()

    def restart(self, timeout=None):
        self.stop_clean()
        return self.start(timeout)

    # what it wrote
    def stderr(self):
        if not self.stderr_path:
            return ""
        try:
            with open(self.stderr_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def paniclog(self):
        try:
            with open(self.paniclog_path, "rb") as f:
                return f.read().decode("utf-8", "replace")
        except OSError:
            return ""

    def tail(self, lines=60):
        t_ = self.stderr().splitlines()
        return "--- %s stderr (%s), last %d lines:\n%s\n---" % (
            self.name, self.stderr_path, lines, "\n".join(t_[-lines:]))

    def diagnostics(self):
        out = ["\n=== %s in %s, exit codes %r ===" % (self.name, self.dir,
                                                      self.exit_codes)]
        for i in range(1, self.starts + 1):
            p = os.path.join(self.dir, "stderr.%d" % i)
            try:
                with open(p, "rb") as f:
                    lines = f.read().decode("utf-8", "replace").splitlines()
            except OSError:
                continue
            out.append("--- stderr.%d (last 80 lines):" % i)
            out += lines[-80:]
        pl = self.paniclog().splitlines()
        out.append("--- paniclog (last 40 lines):")
        out += pl[-40:]
        return "\n".join(out) + "\n"

    def cpu_seconds(self):
        """User + system CPU time the daemon used so far."""
        with open("/proc/%d/stat" % self.proc.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def rss_kb(self, field="VmRSS"):
        with open("/proc/%d/status" % self.proc.pid) as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
        raise DaemonError("no %s in /proc/%d/status" % (field, self.proc.pid))

    def spool(self, timeout=None, body=True):
        return run_ringspool(self.spool_base, timeout=timeout, body=body)

    # clients
    def connect(self, index=0, timeout=None, source=None, rcvbuf=None):
        host, port = self.addrs[index]
        return SMTPConn(host, port, timeout=timeout, source=source,
                        rcvbuf=rcvbuf)

    def smtplib(self, index=0, timeout=None):
        import smtplib
        host, port = self.addrs[index]
        return smtplib.SMTP(host, port, local_hostname="client.test",
                            timeout=timeout or t(30))


# --- raw SMTP client --------------------------------------------------------

class Reply:
    ENH_RE = re.compile(r"^([245]\.\d{1,3}\.\d{1,3})(?:\s|$)")

    def __init__(self, code, lines):
        self.code = code
        self.lines = lines          # text after "ddd-" / "ddd "
        m = self.ENH_RE.match(lines[0]) if lines else None
        self.enh = m.group(1) if m else None

    @property
    def text(self):
        return "\n".join(self.lines)

    def __repr__(self):
        return "Reply(%d %r)" % (self.code, self.lines if len(self.lines) > 1
                                 else self.lines[0])


class ConnectionClosed(AssertionError):
    pass


class ReplyTimeout(AssertionError):
    pass


class SMTPConn:
    """A socket speaking SMTP; every operation has a timeout."""

    LINE_RE = re.compile(rb"^(\d{3})([ -]?)(.*)$")

    def __init__(self, host, port, timeout=None, source=None, rcvbuf=None):
        self.timeout = timeout or t(15)
        fam = socket.AF_INET6 if ":" in host else socket.AF_INET
        self.sock = socket.socket(fam, socket.SOCK_STREAM)
        self.sock.settimeout(self.timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if rcvbuf:
            # before connect, so the window is small from the start
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        if source:
            self.sock.bind((source, 0))
        self.sock.connect((host, port))
        self.buf = b""
        self.eof = False
        self.transcript = []

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.transcript.append(("C", data[:200]))
        self.sock.sendall(data)

    def _fill(self, deadline):
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout()
        self.sock.settimeout(left)
        try:
            d = self.sock.recv(65536)
        except ConnectionResetError:
            d = b""
        finally:
            self.sock.settimeout(self.timeout)
        if not d:
            self.eof = True
        self.buf += d
        return d

    def read_line(self, timeout=None):
        deadline = time.monotonic() + (timeout or self.timeout)
        while b"\n" not in self.buf:
            try:
                if not self._fill(deadline):
                    raise ConnectionClosed(
                        "connection closed; partial %r" % self.buf[:200])
            except socket.timeout:
                raise ReplyTimeout("no reply line within %.1f s; partial %r"
                                   % (timeout or self.timeout, self.buf[:200]))
        line, self.buf = self.buf.split(b"\n", 1)
        return line

    def read_reply(self, timeout=None):
        """One reply (all lines of a multi-line one)."""
        lines = []
        while True:
            raw = self.read_line(timeout)
            if not raw.endswith(b"\r"):
                raise AssertionError("reply line without CRLF: %r" % raw)
            m = self.LINE_RE.match(raw[:-1])
            if not m:
                raise AssertionError("malformed reply line %r" % raw)
            code = int(m.group(1))
            if lines and code != first:
                raise AssertionError("multi-line reply changed code: %r %r"
                                     % (lines, raw))
            first = code
            lines.append(m.group(3).decode("utf-8", "replace"))
            if m.group(2) != b"-":
                r = Reply(code, lines)
                self.transcript.append(("S", r))
                return r

    def read_replies(self, n, timeout=None):
        return [self.read_reply(timeout) for _ in range(n)]

    def cmd(self, line, timeout=None):
        self.send(line + "\r\n" if isinstance(line, str) else line + b"\r\n")
        return self.read_reply(timeout)

    def greeting(self, timeout=None):
        return self.read_reply(timeout)

    def ehlo(self, name="client.test"):
        return self.cmd("EHLO " + name)

    def wait_closed(self, timeout=None):
        """
        True when the server closes the connection within timeout (what it
        sends meanwhile is kept in self.buf); False if still open.
        """
        deadline = time.monotonic() + (timeout or self.timeout)
        while not self.eof:
            try:
                self._fill(deadline)
            except socket.timeout:
                return False
            except OSError:
                return True
        return True

    def pending(self, wait=0.2):
        """Bytes the server sent that no reply read has taken yet."""
        deadline = time.monotonic() + wait
        while not self.eof:
            try:
                self._fill(deadline)
            except (socket.timeout, OSError):
                break
        return self.buf

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()


def dot_stuff(data):
    """SMTP transparency: a line starting with '.' gets another one."""
    if data.startswith(b"."):
        data = b"." + data
    return data.replace(b"\r\n.", b"\r\n..")


# --- messages ---------------------------------------------------------------

TOKEN_RE = re.compile(rb"^X-Token: ([0-9a-f-]+)\r?$", re.M)


def new_token():
    return str(uuid.uuid4())


def make_message(token=None, sender="sender@client.test",
                 rcpts=("rcpt@dest.test",), subject="test", body=None,
                 size=None, headers=()):
    """
    (token, bytes): a message with CRLF line ends and an X-Token header,
    not dot-stuffed. body: bytes or lines; size: pad the body with lines of
    text until the message is exactly size bytes long.
    """
    token = token or new_token()
    h = [b"From: <" + sender.encode() + b">",
         b"To: " + b", ".join(b"<" + r.encode() + b">" for r in rcpts),
         b"Subject: " + subject.encode(),
         b"Message-ID: <" + token.encode() + b"@client.test>",
         b"X-Token: " + token.encode()]
    h += [x.encode() if isinstance(x, str) else x for x in headers]
    if body is None:
        body = [b"Hello,", b"", b"this is message " + token.encode() + b"."]
    if isinstance(body, (list, tuple)):
        body = b"".join((x.encode() if isinstance(x, str) else x) + b"\r\n"
                        for x in body)
    msg = b"\r\n".join(h) + b"\r\n\r\n" + body
    if size is not None:
        need = size - len(msg)
        if need < 0:
            raise ValueError("message already %d bytes" % len(msg))
        filler = b""
        while need > 0:
            n = min(need, 78)
            if n == 1:
                # a 1-byte line cannot end in CRLF: grow the previous one
                filler = filler[:-2] + b"x\r\n"
                break
            filler += b"y" * (n - 2) + b"\r\n"
            need -= n
        msg += filler
        assert len(msg) == size, (len(msg), size)
    return token, msg


def strip_received(body):
    """The spooled body without the Received: header ringmaild prepends."""
    if not body.startswith(b"Received: "):
        raise AssertionError("spooled body does not start with Received: %r"
                             % body[:100])
    lines = body.split(b"\r\n")
    i = 1
    while i < len(lines) and lines[i][:1] in (b" ", b"\t"):
        i += 1
    return b"\r\n".join(lines[i:])


def send_raw_message(conn, msg, sender="sender@client.test",
                     rcpts=("rcpt@dest.test",), ehlo=False):
    """One transaction on conn (greeted, EHLO done unless ehlo=True)."""
    if ehlo:
        r = conn.ehlo()
        assert r.code == 250, r
    r = conn.cmd("MAIL FROM:<%s>" % sender)
    assert r.code == 250, r
    for rc in rcpts:
        r = conn.cmd("RCPT TO:<%s>" % rc)
        assert r.code == 250, r
    r = conn.cmd("DATA")
    assert r.code == 354, r
    conn.send(dot_stuff(msg) + b".\r\n")
    return conn.read_reply(t(30))


QUEUED_RE = re.compile(r"queued as (\S+)")


def queued_id(reply_text):
    if isinstance(reply_text, bytes):
        reply_text = reply_text.decode()
    if isinstance(reply_text, Reply):
        reply_text = reply_text.text
    m = QUEUED_RE.search(reply_text)
    return m.group(1) if m else None


# --- tests ------------------------------------------------------------------

class DaemonTest(unittest.TestCase):
    """
    start_daemon() registers the daemon: at the end of the test it is
    stopped and must exit 0 without a sanitizer report; when the test failed
    its stderr and paniclog tails are printed, and its directory is kept.
    """

    maxDiff = 4000

    def start_daemon(self, conf_text=None, name="ringmaild", start=True,
                     **conf_opts):
        if conf_text is None:
            conf_text = conf(**conf_opts)
        d = Daemon(conf_text, name=name)
        self._daemons_of_test().append(d)
        self.addCleanup(self._final_stop, d)
        if start:
            d.start()
        return d

    def _daemons_of_test(self):
        if not hasattr(self, "_daemons"):
            self._daemons = []
        return self._daemons

    def _final_stop(self, d):
        if d.running():
            d.stop_clean()
        elif d.proc is not None and not d.stopped_on_purpose:
            d._record_exit()
            raise DaemonError("ringmaild died during the test (exit %s):\n%s"
                              % (d.proc.returncode, d.tail()))

    def run(self, result=None):
        if result is None:
            result = self.defaultTestResult()
        before = len(result.failures) + len(result.errors)
        super().run(result)
        failed = len(result.failures) + len(result.errors) > before
        for d in getattr(self, "_daemons", []):
            if failed:
                sys.stderr.write(d.diagnostics())
                sys.stderr.flush()
            elif not d.running():
                shutil.rmtree(d.dir, ignore_errors=True)
        return result

    # assertions
    def assertReply(self, r, code, enh=None, msg=None):
        self.assertIsInstance(r, Reply)
        if r.code != code or (enh is not None and r.enh != enh):
            self.fail("expected %d %s, got %d %s (%s)%s" % (
                code, enh or "", r.code, r.enh or "", r.text,
                (": " + msg) if msg else ""))

    def assertClean(self, d):
        """Stop d with SIGTERM: exit 0, no sanitizer report."""
        d.stop_clean()

    def assertTokens(self, spool, present=(), absent=(), exactly_once=True):
        counts = spool.tokens()
        missing = [tk for tk in present if counts[tk] == 0]
        dup = [(tk, counts[tk]) for tk in present if counts[tk] > 1]
        extra = [tk for tk in absent if counts[tk] > 0]
        problems = []
        if missing:
            problems.append("%d of %d tokens missing from the spool, e.g. %s"
                            % (len(missing), len(present), missing[:3]))
        if exactly_once and dup:
            problems.append("%d tokens spooled more than once, e.g. %s"
                            % (len(dup), dup[:3]))
        if extra:
            problems.append("%d tokens in the spool that must not be: %s"
                            % (len(extra), extra[:3]))
        if problems:
            self.fail("; ".join(problems) + " (%r)" % spool)


def main(timeout=120):
    """Run this file's tests under a watchdog; exit 0, 1, or 77 (all skipped)."""
    timeout = t(timeout)
    w = threading.Timer(timeout, _watchdog_fire, args=(timeout,))
    w.daemon = True
    w.start()
    if not os.path.exists(RINGMAILD):
        sys.stderr.write("no ringmaild at %s (set RINGMAIL_BUILD)\n"
                         % RINGMAILD)
        sys.exit(1)
    sys.stderr.write("ringmaild: %s%s\n" % (
        RINGMAILD, " (sanitized, timeouts x%g)" % SCALE if SANITIZED else ""))
    prog = unittest.main(verbosity=2, exit=False)
    w.cancel()
    _emergency_cleanup()
    r = prog.result
    if r.testsRun and len(r.skipped) == r.testsRun and r.wasSuccessful():
        sys.exit(SKIP_EXIT)
    sys.exit(0 if r.wasSuccessful() else 1)
