#!/bin/bash
# One open-loop 1:1 run of chatbench against one fresh broker, for quick A/Bs of
# the tail latency (bench/run.py is the benchmark; this is a probe): prints
# p50/p90/p99/p999/max of the end-to-end latency and the broker's CPU.
#   bench/openloop_once.sh plain|plugin RATE [plugin_opt=value ...]
#   DBBASE=/dev/shm bench/openloop_once.sh plugin 12000        # database on tmpfs
#   SO=other/mosquitto_chat.so bench/openloop_once.sh plugin 12000 sync_interval_ms=0
# Broker on CPU 0, generator on CPU 1, both at nice -20 (root); rate limits lifted as in run.py.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
target=$1; rate=$2; shift 2
so=${SO:-$here/../build/plugin/mosquitto_chat.so}
d=$(mktemp -d "${DBBASE:-/tmp}/openloop.XXXX")
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
trap 'kill $bp 2>/dev/null; wait $bp 2>/dev/null; rm -rf "$d"' EXIT
printf "listener $port 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 1000000\nmax_inflight_messages 0\nset_tcp_nodelay true\nlog_dest none\n" > "$d/m.conf"
[ "$(id -u)" = 0 ] && echo "user root" >> "$d/m.conf"
if [ "$target" = plugin ]; then
	printf "plugin $so\nplugin_opt_db_path $d/db\nplugin_opt_max_members 500\n" >> "$d/m.conf"
	for k in send request receipt typing; do
		printf "plugin_opt_rate_$k 1000000\nplugin_opt_rate_${k}_burst 1000000\n" >> "$d/m.conf"
	done
	for o in "$@"; do echo "plugin_opt_${o/=/ }" >> "$d/m.conf"; done
fi
taskset -c 0 nice -n -20 mosquitto -c "$d/m.conf" >/dev/null 2>&1 & bp=$!
sleep 1
nice -n -20 "$here/../build/bench/chatbench" --workload one2one --target "$target" --port "$port" --rate "$rate" \
	--warmup 3 --duration 10 --drain 5 --cpu 1 --broker-pid $bp 2>/dev/null | tail -1 | python3 -c "
import json, sys
d = json.loads(sys.stdin.read()); e = d['e2e_us']
print('$target ${*:-}', 'msgs/s', d['msgs_s'], 'e2e µs p50', round(e['p50']), 'p90', round(e['p90']), 'p99', round(e['p99']),
      'p999', round(e['p999']), 'max', round(e['max']), 'broker CPU %', d['broker']['cpu_pct'])"
