"""bench/run peers: ringmaild and Postfix as relays under the same load, to
the same kind of sink, with the sink alone as the ceiling, in one run.

bench/ringload (lock-step, no pipelining: smtp-source's dialogue; one
message per connection, or with --reuse also unlimited reuse) sends
MESSAGES messages of SIZE bytes, headers included, to three targets in turn:

- ringmail: ringmaild (release build, fresh spool on the real disk, Gateway =
  a fresh bench/ringsink), a 250 only after the message's fdatasync;
- postfix: a private Postfix instance (bench/postfix.py) relaying to a fresh
  bench/ringsink, its queue on the same disk, durability as shipped (cleanup
  fsyncs each queue file before smtpd's 250);
- ceiling: ringload straight into bench/ringsink: what the generator, the
  sink and the loopback can do on this machine.

The runs are those of bench/run relay (bench/relay.py: the same code), with
ringload instead of smtp-source, so that the generator costs less than the
MTAs it compares and each run also gives the '.'-to-250 latency (ringload's
histogram): for ringmaild the commit of the message, for Postfix cleanup's
fsync of the queue file. End-to-end rate = MESSAGES / time from ringload's
start until the sink has counted all of them. MTA CPU as in relay: ringmaild
from /proc/PID/stat (all threads), Postfix from a cpuacct cgroup holding every
process of the instance. Rounds are interleaved, the order rotating.
"""

import os
import sys

import lib
import relay


def markdown(args, machine, data, cmdline, path, shards, prov_warning, tab):
    return ["## peers: ringmaild vs Postfix as relays, same load, same sink", "",
            "- Command: `%s`" % cmdline,
            "- Commit: %s (date %s)" % (machine["commit"], machine["date"]),
            "- Machine: %s; ringmaild shards: %s; spools and Postfix queue on %s; Postfix %s"
            % (lib.machine_line(machine), shards, machine["work_dir_fs"], data["postfix_version"]),
            "- Load: `ringload -s N -m %d -l %d -M 1%s -f a@client.test -t b@dest.test` (lock-step, no "
            "pipelining); %d runs per row, interleaved (order rotating per round); a fresh daemon, spool or "
            "Postfix instance and ringsink per run. Figures: median (min–max)."
            % (args.messages, args.size, " (and -M 0)" if args.reuse else "", args.runs),
            "- Same durability: ringmaild answers 250 after the fdatasync of the message's spool record (group "
            "commit); Postfix as shipped (cleanup fsyncs the queue file before smtpd's 250). Both relay to a "
            "fresh bench/ringsink on 127.0.0.1 (ringmaild `Gateway`, Postfix `relayhost`). Postfix: private "
            "instance by bench/postfix.py (no chroot, concurrency limits as shipped, logging to a file).",
            "- End-to-end msgs/s = %d / time from ringload's start until the sink counted all of them. MTA CPU "
            "over that span: ringmaild = all threads (/proc/PID/stat); Postfix = every process of the instance "
            "(cpuacct cgroup). '.'→250 = ringload's latency from sending the final dot to reading its reply "
            "(the MTA's acceptance, not the delivery). Ceiling = ringload straight into ringsink. Ratios: of "
            "the medians, in parentheses the range of the per-round ratios." % args.messages,
            "- Chart: [ringmaild vs Postfix vs the sink alone](results/peers.png) (`bench/plot`).",
            "- Raw runs: `bench/results/%s`" % os.path.basename(path), "", prov_warning, "", tab, ""]


if __name__ == "__main__":
    sys.exit(relay.main(sys.argv[1:], scenario="peers", doc=__doc__, markdown=markdown))
