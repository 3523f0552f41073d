#!/usr/bin/env bash
# accept_ringload.sh - ringload lock-step, 50 sessions, 1 msg/conn, 20000 msgs: ringmaild (Shards 1, 2) vs smtp-sink
# usage: bench/accept_ringload.sh BUILD_DIR   (e.g. build/release)
# Prints one line per run; 3 rounds, interleaved. Bounded: 120 s per run.
B=$1
W=$(mktemp -d /tmp/rlbench.XXXXXX)
res=()
for round in 1 2 3; do
  for target in ringmail1 ringmail2 sink; do
    rm -rf $W/spool $W/log
    if [ $target = sink ]; then
      PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
      smtp-sink -u nobody 127.0.0.1:$PORT 4096 & SP=$!; sleep 0.3
    else
      sh=${target#ringmail}
      printf 'Spool_Base = "%s/spool"\nPaniclog = "%s/log/paniclog"\nShards = %s\nMax_Connections = 20000\nGateway = \"127.0.0.1:1\"\nRetry_Interval = 1h\nESMTP_Listener { Listen "127.0.0.1:0" { } Relay_Hosts = ( "127.0.0.0/8" ) }\n' $W $W $sh > $W/r.conf
      $B/ringmaild -c $W/r.conf 2>$W/err & SP=$!
      for i in $(seq 50); do grep -q ready $W/err 2>/dev/null && break; sleep 0.1; done
      PORT=$(grep -o 'listening on 127.0.0.1:[0-9]*' $W/err | cut -d: -f2)
    fi
    c0=$(awk '{print $14+$15}' /proc/$SP/stat)
    out=$(timeout 120 $B/bench/ringload -q -s 50 -m 20000 -M 1 -l 1140 -f a@b.test -t c@d.test 127.0.0.1:$PORT 2>&1 | grep -o '[0-9.]* msgs/s' | head -1)
    c1=$(awk '{print $14+$15}' /proc/$SP/stat)
    echo "round $round $target $out server_cpu_us_per_msg $(( (c1-c0)*10000/20000 ))"
    kill -TERM $SP; wait $SP 2>/dev/null
  done
done
rm -rf $W
