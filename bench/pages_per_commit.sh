#!/bin/bash
# LMDB data pages written per commit by a plugin broker with fsync always, under
# the 1:1 workload of chatbench at a low fixed rate: counted from the broker's
# pwrite64/pwritev calls (strace), so it does not move with what else the machine
# does. The figure is taken over the second half of the commits (after the
# setup's conversations were created).
#   bench/pages_per_commit.sh [plugin.so] [port]      (about a minute; needs strace)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
so=${1:-$here/../build/plugin/mosquitto_chat.so}; port=${2:-18861}
so=$(readlink -f "$so")
d=$(mktemp -d /tmp/pages.XXXX)
trap 'rm -rf "$d"' EXIT
printf "listener $port 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 1000000\nmax_inflight_messages 0\nlog_dest none\nplugin $so\nplugin_opt_db_path $d/db\nplugin_opt_fsync always\nplugin_opt_max_members 500\n" > "$d/m.conf"
[ "$(id -u)" = 0 ] && echo "user root" >> "$d/m.conf"
strace -f -o "$d/st" -e trace=pwrite64,pwritev,fdatasync mosquitto -c "$d/m.conf" 2>/dev/null & sp=$!
sleep 1
"$here/../build/bench/chatbench" --workload one2one --target plugin --port "$port" --rate "${RATE:-100}" \
	--warmup 1 --duration "${DUR:-20}" --drain 3 > "$d/out"
kill $(pgrep -P $sp mosquitto); wait $sp 2>/dev/null || true
python3 - "$d/st" "$d/out" <<'PY'
import json, re, sys
rec = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
pages, at_sync = 0, []
for l in open(sys.argv[1]):
    if "fdatasync(" in l:
        at_sync.append(pages)
    m = re.search(r"pwrite64\(\d+, .*, (\d+), \d+\) = ", l)
    if m and int(m.group(1)) == 4096:
        pages += 1
    m = re.search(r"pwritev\(\d+, .*\], \d+, \d+\) = (\d+)", l)
    if m:
        pages += int(m.group(1)) // 4096
half = len(at_sync) // 2
per = (at_sync[-1] - at_sync[half]) / max(1, len(at_sync) - 1 - half)
print(json.dumps({"sent": rec["sent"], "commits": len(at_sync), "data_pages_per_commit": round(per, 2)}))
PY
