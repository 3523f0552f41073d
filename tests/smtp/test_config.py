#!/usr/bin/env python3
"""
Configuration checking from outside: `ringmaild -t -c FILE` exits 0 on a
good file (the shipped conf/ringmail.conf included) without touching the
spool, and exits 1 with one `FILE:LINE: message` per error, with the right
line numbers, on a bad one; ringmaild without -t refuses to start on it;
a Listen address already taken is reported with its file and line.
"""
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import harness as h  # noqa: E402
from harness import t  # noqa: E402


def check(path, *extra):
    return subprocess.run([h.RINGMAILD, "-t", "-c", path] + list(extra),
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          timeout=t(30))


class Config(h.DaemonTest):

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="ringmail-conf-")
        self.addCleanup(shutil.rmtree, self.dir, True)

    def write(self, text, name="test.conf"):
        p = os.path.join(self.dir, name)
        with open(p, "w") as f:
            f.write(text)
        return p

    def error_lines(self, p, stderr):
        text = stderr.decode("utf-8", "replace")
        rx = re.compile(r"^%s:(\d+): \S" % re.escape(p))
        lines = [ln for ln in text.splitlines() if ln.strip()]
        nums = []
        for ln in lines:
            m = rx.match(ln)
            self.assertTrue(m, "not FILE:LINE: message: %r (all: %r)"
                            % (ln, text))
            nums.append(int(m.group(1)))
        return nums, text

    def test_good_config(self):
        p = self.write(h.conf(shards=2, Max_Message_Size="1M",
                              Idle_Timeout="300s", Data_Timeout="3m",
                              Max_Connections_Per_IP=0))
        r = check(p)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(r.stderr, b"")
        # -t checks and touches nothing
        self.assertFalse(os.path.exists(os.path.join(self.dir, "spool")))
        self.assertFalse(os.path.exists(os.path.join(self.dir, "log")))

    def test_default_config_passes(self):
        p = os.path.join(h.SRC, "conf", "ringmail.conf")
        r = check(p)
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_value_forms(self):
        text = """
spool_base = "sp"
SHARDS = auto
Hostname = "a-b.example.test"
Max_Message_Size = 2048K
Max_Recipients_Per_Message = 1
Idle_Timeout = 1500ms
Data_Timeout = 2m
Shutdown_Timeout = 0
Spool_Segment_Size = 1G
esmtp_listener "inbound" {
  listen "127.0.0.1:0" { }
  listen "[::1]:0" { }
  listen "*:0" { }
  relay_hosts = ( "127.0.0.0/8" "::1" "10.1.2.3" "fd00::/8" )
}
ESMTP_Listener {
  Listen "127.0.0.1:0" { }   # a comment
}
Max_Connections = 1
"""
        r = check(self.write(text))
        self.assertEqual(r.returncode, 0, r.stderr)
        r = check(self.write("Idle_Timeout = 1d\nMax_Message_Size = 1G\n"
                             "ESMTP_Listener { Listen \"127.0.0.1:0\" { } }\n"))
        self.assertEqual(r.returncode, 0, r.stderr)

    def test_three_errors(self):
        text = "\n".join([
            "# three mistakes",                     # 1
            'Spool_Base = "spool"',                 # 2
            "No_Such_Option = 5",                   # 3  unknown key
            'Hostname = "mx.test"',                 # 4
            "Max_Message_Size = 12Q",               # 5  bad size
            "ESMTP_Listener {",                     # 6
            '  Listen "127.0.0.1:0" { }',           # 7
            '  Listen "127.0.0.1:notaport" { }',    # 8  bad listen address
            '  Relay_Hosts = ( "127.0.0.0/8" )',    # 9
            "}",                                    # 10
            "",
        ])
        p = self.write(text)
        r = check(p)
        self.assertEqual(r.returncode, 1, r.stderr)
        nums, err = self.error_lines(p, r.stderr)
        self.assertEqual(nums, [3, 5, 8], err)
        self.assertEqual(r.stdout, b"")

    def test_unterminated_string(self):
        text = "\n".join([
            'Spool_Base = "spool"',                 # 1
            "Bogus = 1",                            # 2  unknown key
            "Idle_Timeout = 5 parsecs",             # 3  bad duration
            "ESMTP_Listener {",                     # 4
            '  Listen "127.0.0.1:0" { }',           # 5
            "}",                                    # 6
            'Hostname = "never ends',               # 7  unterminated
            "",
        ])
        p = self.write(text)
        r = check(p)
        self.assertEqual(r.returncode, 1, r.stderr)
        nums, err = self.error_lines(p, r.stderr)
        self.assertEqual(nums, [2, 3, 7], err)

    def test_range_and_structure_errors(self):
        cases = [
            ("Shards = 0\n", 1),
            ("Shards = 257\n", 1),
            ("Pin_Shards = sometimes\n", 1),
            ("Max_Retry_Interval = 0\n", 1),
            ("Max_Message_Size = 10\n", 1),           # below 1K
            ("Idle_Timeout = 0\n", 1),
            ("Spool_Segment_Size = 4K\n", 1),
            ("Relay_Hosts = ( \"1.2.3.4\" )\n", 1),   # listener scope only
            ("ESMTP_Listener {\n  Relay_Hosts = ( \"300.1.1.1/8\" )\n"
             "  Listen \"127.0.0.1:0\" { }\n}\n", 2),
            ("ESMTP_Listener {\n  Listen \"127.0.0.1:0\" { }\n  Relay_Hosts"
             " = ( \"10.0.0.0/33\" )\n}\n", 3),
            ("Hostname = \"a b\"\n", 1),
            ("Listen \"127.0.0.1:0\" { }\n", 1),      # outside a listener
            ("ESMTP_Listener {\n  Listen \"127.0.0.1:0\" { }\n", None),
        ]
        for text, line in cases:
            with self.subTest(text=text):
                full = text
                if "ESMTP_Listener" not in text:
                    full += "ESMTP_Listener { Listen \"127.0.0.1:0\" { } }\n"
                p = self.write(full)
                r = check(p)
                self.assertEqual(r.returncode, 1, (text, r.stderr))
                nums, err = self.error_lines(p, r.stderr)
                self.assertGreaterEqual(len(nums), 1, err)
                if line is not None:
                    self.assertEqual(nums[0], line, err)

    def test_missing_file(self):
        p = os.path.join(self.dir, "absent.conf")
        r = check(p)
        self.assertEqual(r.returncode, 1)
        self.assertIn(p, r.stderr.decode())

    def test_bad_config_refuses_to_start(self):
        p = self.write("Bogus = 1\nESMTP_Listener { Listen \"127.0.0.1:0\" "
                       "{ } }\n")
        r = subprocess.run([h.RINGMAILD, "-c", p], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=t(30))
        self.assertEqual(r.returncode, 1)
        nums, err = self.error_lines(p, r.stderr)
        self.assertEqual(nums, [1])
        self.assertFalse(os.path.exists(os.path.join(self.dir, "spool")))

    def test_port_in_use(self):
        s = socket.socket()
        self.addCleanup(s.close)
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        d = h.Daemon(h.conf(shards=1, listeners=[
            h.listener(listens=("127.0.0.1:%d" % port,))]))
        self._daemons_of_test().append(d)
        with self.assertRaises(h.DaemonError) as cm:
            d.start(timeout=t(10))
        self.assertIn("exited 1", str(cm.exception))
        text = d.stderr()
        self.assertRegex(text, re.escape(d.conf_path) + r":\d+: ",
                         "no FILE:LINE for the Listen address")

    def test_shards_auto(self):
        d = self.start_daemon(h.conf(shards="auto"))
        self.assertEqual(d.shards, os.sysconf("SC_NPROCESSORS_ONLN"))
        for i in range(d.shards):
            self.assertTrue(os.path.isdir(os.path.join(d.spool_base,
                                                       str(i))))

    def start_fails(self, d, pattern):
        self._daemons_of_test().append(d)
        with self.assertRaises(h.DaemonError) as cm:
            d.start(timeout=t(10))
        self.assertRegex(str(cm.exception), r"exited [1-9]")
        self.assertRegex(d.stderr(), pattern)
        self.assertNotRegex(d.stderr(), h.SANITIZER_RE)

    def test_spool_base_is_a_file(self):
        d = h.Daemon(h.conf(shards=1))
        with open(os.path.join(d.dir, "spool"), "w") as f:
            f.write("not a directory\n")
        self.start_fails(d, r"spool")

    def test_paniclog_is_a_directory(self):
        d = h.Daemon(h.conf(shards=1))
        os.makedirs(os.path.join(d.dir, "log", "paniclog"))
        self.start_fails(d, r"paniclog")

    def test_usage(self):
        r = subprocess.run([h.RINGMAILD], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, timeout=t(10))
        self.assertNotEqual(r.returncode, 0)
        self.assertIn(b"usage", r.stderr)


if __name__ == "__main__":
    h.main(timeout=120)
