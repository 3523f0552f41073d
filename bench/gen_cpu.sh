#!/bin/bash
#
# gen_cpu.sh - CPU per message of ringload vs Postfix's smtp-source, and
#              throughput of ringsink vs smtp-sink, on this machine
#
# SYNOPSIS
#   bench/gen_cpu.sh [gen|sink] [-r RUNS] [-b BUILD_DIR] [--no-pin]
# DESCRIPTION
#   gen (default): one smtp-sink (pinned to CPU 0) receives, in the same
#   run, 20,000 messages of about 1 KiB from 50 sessions, one message per
#   connection and then with connection reuse, from each generator
#   (pinned to CPU 1): smtp-source -l 1024 (1,140 bytes with its headers),
#   ringload -P -l 1140 (pipelining) and ringload -l 1140 (lock-step, the
#   same packets as smtp-source). Rounds are interleaved, the generators'
#   order alternating, so noise hits all alike. CPU = utime + stime of
#   the generator (/usr/bin/time), in microseconds per message.
#
#   sink: smtp-source (CPU 1) against smtp-sink and ringsink (both on
#   CPU 0, one loaded at a time), same workloads: messages/s from
#   smtp-source's wall time, and the sink's CPU per message from
#   /proc/PID/stat before and after. smtp-source is CPU-bound with one
#   message per connection, so the same is done with lock-step ringload
#   (rl-conn, rl-reuse) as the load, which leaves the sink the limit.
#
#   Prints every run, then per workload the median and range (min-max)
#   and the ratio of medians (with the range of per-round ratios).
#   Needs root (smtp-sink -u nobody), smtp-sink and smtp-source in PATH
#   or /usr/sbin, and the release build (default build/release).
# EXIT STATUS
#   0, or 1 when a tool is missing or a run fails.
set -eu

mode=gen
runs=3
build=""
pin=1
while [ $# -gt 0 ]; do
    case "$1" in
    gen|sink) mode=$1 ;;
    -r) runs=$2; shift ;;
    -b) build=$2; shift ;;
    --no-pin) pin=0 ;;
    -h|--help) sed -n '3,30p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "gen_cpu.sh: unknown argument $1" >&2; exit 1 ;;
    esac
    shift
done
src=$(cd "$(dirname "$0")/.." && pwd)
build=${build:-$src/build/release}
ringload=$build/bench/ringload
ringsink=$build/bench/ringsink
PATH=$PATH:/usr/sbin
for t in smtp-sink smtp-source /usr/bin/time "$ringload" "$ringsink"; do
    command -v "$t" >/dev/null || { echo "gen_cpu.sh: no $t" >&2; exit 1; }
done

MSGS=20000
SESSIONS=50
tmp=$(mktemp -d /tmp/gen_cpu.XXXXXX)
pids=""
cleanup() {
    for p in $pids; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$tmp"
}
trap cleanup EXIT

if [ $pin = 1 ]; then
    on_sink="taskset -c 0"
    on_gen="taskset -c 1"
else
    on_sink=""
    on_gen=""
fi

# free_port - a port nobody listens on (smtp-sink wants a number)
free_port() {
    python3 -c 'import socket; s = socket.socket()
s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# start_smtp_sink - smtp-sink on a fresh port; sets sink_port, sink_pid
start_smtp_sink() {
    sink_port=$(free_port)
    $on_sink smtp-sink -u nobody 127.0.0.1:$sink_port 4096 &
    sink_pid=$!
    pids="$pids $sink_pid"
    for _ in $(seq 50); do
        ss -ltn | grep -q "127.0.0.1:$sink_port " && return 0
        sleep 0.1
    done
    echo "gen_cpu.sh: smtp-sink did not start" >&2
    exit 1
}

# start_ringsink - ringsink on port 0; sets rsink_port, rsink_pid
start_ringsink() {
    $on_sink "$ringsink" > "$tmp/ringsink.out" 2> "$tmp/ringsink.err" &
    rsink_pid=$!
    pids="$pids $rsink_pid"
    for _ in $(seq 50); do
        rsink_port=$(sed -n 's/^ringsink listening on .*:\([0-9]*\)$/\1/p' \
                     "$tmp/ringsink.out")
        [ -n "$rsink_port" ] && return 0
        sleep 0.1
    done
    echo "gen_cpu.sh: ringsink did not start" >&2
    exit 1
}

# cpu_ticks PID - utime + stime of PID, in clock ticks
cpu_ticks() {
    awk '{ sub(/.*\) /, ""); print $12 + $13 }' "/proc/$1/stat"
}

# timed NAME CMD... - run CMD; append "NAME user sys wall" to $tmp/runs
timed() {
    local name=$1
    shift
    if ! /usr/bin/time -o "$tmp/time" -f "%U %S %e" "$@" \
            > "$tmp/out" 2>&1; then
        echo "gen_cpu.sh: failed: $*" >&2
        cat "$tmp/out" >&2
        exit 1
    fi
    echo "$name $(cat "$tmp/time")" >> "$tmp/runs"
}

# summary - per name: runs, median and range of $2 (a column), ratios
summary() {
    awk -v col="$1" -v unit="$2" -v base="$3" '
    function median(a, n,   i, j, t, b) {
        for (i = 1; i <= n; i++) b[i] = a[i]
        for (i = 1; i <= n; i++)
            for (j = i + 1; j <= n; j++)
                if (b[j] < b[i]) { t = b[i]; b[i] = b[j]; b[j] = t }
        return n % 2 ? b[(n + 1) / 2] : (b[n / 2] + b[n / 2 + 1]) / 2
    }
    {
        v[$1, ++n[$1]] = $col
        if (!($1 in seen)) { seen[$1] = 1; order[++names] = $1 }
    }
    END {
        for (k = 1; k <= names; k++) {
            name = order[k]
            lo = hi = v[name, 1]; list = ""
            for (i = 1; i <= n[name]; i++) {
                a[i] = v[name, i]
                if (a[i] < lo) lo = a[i]
                if (a[i] > hi) hi = a[i]
                list = list sprintf(" %.1f", a[i])
            }
            med[name] = median(a, n[name])
            printf "  %-28s median %8.1f %s  range %.1f-%.1f  runs:%s\n",
                   name, med[name], unit, lo, hi, list
        }
        for (k = 1; k <= names; k++) {
            name = order[k]
            split(name, p, "/")
            ref = p[1] "/" base
            if (name == ref || !(ref in med)) continue
            rlo = 1e9; rhi = 0
            for (i = 1; i <= n[name]; i++) {
                r = v[name, i] / v[ref, i]
                if (r < rlo) rlo = r
                if (r > rhi) rhi = r
            }
            printf "  %-28s ratio to %s: %.2f (per round %.2f-%.2f)\n",
                   name, base, med[name] / med[ref], rlo, rhi
        }
    }' "$tmp/table"
}

commit=$(git -C "$src" rev-parse --short HEAD)
git -C "$src" diff --quiet HEAD -- . ':!bench/results' || commit=$commit-dirty
cpu=$(sed -n 's/^model name\t: //p' /proc/cpuinfo | head -1)
echo "# $(date -u +%Y-%m-%dT%H:%MZ) commit $commit"
echo "# kernel $(uname -r), $(nproc) CPUs, $cpu"
echo "# pinning: $([ $pin = 1 ] && echo 'sink CPU 0, load CPU 1' || echo none)"
: > "$tmp/runs"

if [ $mode = gen ]; then
    start_smtp_sink
    echo "# smtp-sink -u nobody 127.0.0.1:$sink_port 4096"
    dst=127.0.0.1:$sink_port
    src_cmd="smtp-source -s $SESSIONS -m $MSGS -l 1024 -f a@b.test -t c@d.test"
    rl_cmd="$ringload -q -s $SESSIONS -m $MSGS -l 1140 -f a@b.test -t c@d.test"
    echo "# smtp-source:  $src_cmd [-d] $dst"
    echo "# ringload -P:  $rl_cmd -P [-M 0] $dst"
    echo "# ringload:     $rl_cmd [-M 0] $dst"
    for r in $(seq "$runs"); do
        for w in conn reuse; do
            if [ $w = conn ]; then d=""; m=""; else d="-d"; m="-M 0"; fi
            gens="source ringload-P ringload"
            [ $((r % 2)) = 0 ] && gens="ringload ringload-P source"
            for g in $gens; do
                case $g in
                source) timed "$w/smtp-source" $on_gen $src_cmd $d $dst ;;
                ringload-P) timed "$w/ringload-P" $on_gen $rl_cmd -P $m $dst ;;
                ringload) timed "$w/ringload" $on_gen $rl_cmd $m $dst ;;
                esac
            done
        done
    done
    # name user sys wall -> name us/msg msgs/s
    awk -v m=$MSGS '{ printf "%s %.3f %.1f\n", $1, ($2 + $3) * 1e6 / m,
                      m / $4 }' "$tmp/runs" > "$tmp/table"
    echo
    echo "CPU per message (utime+stime of the generator; 20,000 messages):"
    summary 2 "us/msg" smtp-source
    echo
    echo "messages/s (wall time of the generator):"
    summary 3 "msg/s " smtp-source
else
    start_smtp_sink
    start_ringsink
    echo "# smtp-sink -u nobody 127.0.0.1:$sink_port 4096"
    echo "# $ringsink 127.0.0.1:0"
    src_cmd="smtp-source -s $SESSIONS -m $MSGS -l 1024 -f a@b.test -t c@d.test"
    rl_cmd="$ringload -q -s $SESSIONS -m $MSGS -l 1140 -f a@b.test -t c@d.test"
    echo "# load conn, reuse:       $src_cmd [-d] 127.0.0.1:PORT"
    echo "# load rl-conn, rl-reuse: $rl_cmd [-M 0] 127.0.0.1:PORT"
    echo "# (smtp-source is CPU-bound in conn: ringload, cheaper, lets the"
    echo "# sinks be the limit)"
    tick=$(getconf CLK_TCK)
    for r in $(seq "$runs"); do
        for w in conn reuse rl-conn rl-reuse; do
            case $w in
            conn) load="$src_cmd" ;;
            reuse) load="$src_cmd -d" ;;
            rl-conn) load="$rl_cmd" ;;
            rl-reuse) load="$rl_cmd -M 0" ;;
            esac
            sinks="smtp-sink ringsink"
            [ $((r % 2)) = 0 ] && sinks="ringsink smtp-sink"
            for s in $sinks; do
                if [ $s = smtp-sink ]; then
                    port=$sink_port; pid=$sink_pid
                else
                    port=$rsink_port; pid=$rsink_pid
                fi
                # smtp-sink forks nothing: its pid is the server.
                before=$(cpu_ticks "$pid")
                timed "$w/$s" $on_gen $load 127.0.0.1:$port
                after=$(cpu_ticks "$pid")
                echo "$((after - before))" >> "$tmp/ticks"
            done
        done
    done
    paste -d' ' "$tmp/runs" "$tmp/ticks" |
        awk -v m=$MSGS -v hz="$tick" '{ printf "%s %.1f %.3f\n", $1, m / $4,
                                        $5 / hz * 1e6 / m }' > "$tmp/table"
    echo
    echo "messages/s (wall time of the load, 20,000 messages):"
    summary 2 "msg/s " smtp-sink
    echo
    echo "sink CPU per message (/proc/PID/stat, ${tick} Hz ticks):"
    summary 3 "us/msg" smtp-sink
fi
echo
echo "raw: name user_s sys_s wall_s"
sed 's/^/  /' "$tmp/runs"
