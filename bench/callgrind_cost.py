#!/usr/bin/env python3
"""Instructions per message of the broker, plain and with the plugin, counted by
callgrind: deterministic where wall-clock figures on a shared machine are not.

Each target runs twice (a short and a long 1:1 open-loop workload of chatbench at
a low fixed rate, fresh broker and database each time) under
`valgrind --tool=callgrind`; the cost per message is the difference of the two
runs' instruction counts over the difference of their message counts, so the
broker's start, the clients' connects and the conversations' creation cancel out.
Printed: total instructions per message, and for the plugin the inclusive cost of
the message hook (message_cb) and of the ACL hook (acl_cb) per message.

  python3 bench/callgrind_cost.py [--build build] [--plugin path.so] [--targets plain,plugin-off,plugin-always]

About 2-3 minutes per target on an idle core.
"""
import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def wait_port(port, proc, timeout=60):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("broker exited")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("broker did not listen")


def inclusive(out, fn):
    """Inclusive instruction count of fn in a callgrind output file."""
    r = subprocess.run(["callgrind_annotate", "--inclusive=yes", "--threshold=100", out],
                       stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    total = None
    found = 0
    for line in r.stdout.splitlines():
        m = re.match(r"\s*([\d,]+)\s.*PROGRAM TOTALS", line)
        if m:
            total = int(m.group(1).replace(",", ""))
        m = re.match(r"\s*([\d,]+)\s+(?:\([^)]*\)\s+)?\S*:" + re.escape(fn) + r"\b", line)
        if m and not found:
            found = int(m.group(1).replace(",", ""))
    return total, found


def run_once(a, target, duration, workdir):
    port = free_port()
    d = tempfile.mkdtemp(dir=workdir)
    conf = [f"listener {port} 127.0.0.1", "per_listener_settings false", "allow_anonymous true",
            "persistence false", "max_queued_messages 1000000", "max_inflight_messages 0",
            "set_tcp_nodelay true", "log_dest none"]
    if os.geteuid() == 0:
        conf.append("user root")
    if target != "plain":
        conf += [f"plugin {a.plugin}", f"plugin_opt_db_path {d}/db",
                 f"plugin_opt_fsync {'always' if target == 'plugin-always' else 'off'}"]
        # as in run.py: the limiter stays in the path but never refuses (the defaults, 10 sends/s a user,
        # would refuse most of this workload and the count would be of refusals)
        conf += [f"plugin_opt_rate_{k}{b} 1000000" for k in ("send", "request", "receipt", "typing")
                 for b in ("", "_burst")]
    with open(f"{d}/m.conf", "w") as f:
        f.write("\n".join(conf) + "\n")
    out = f"{d}/callgrind.out"
    b = subprocess.Popen(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
                          "mosquitto", "-c", f"{d}/m.conf"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port, b)
        r = subprocess.run([os.path.join(a.build, "bench", "chatbench"), "--workload", "one2one", "--target",
                            "plain" if target == "plain" else "plugin", "--port", str(port), "--rate", str(a.rate),
                            "--warmup", "1", "--duration", str(duration), "--drain", "3", "--senders", "4",
                            "--convs", "40", "--receivers", "10", "--timeout", "300"],
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=900)
        if r.returncode:
            raise RuntimeError(r.stderr[-2000:])
        rec = json.loads([l for l in r.stdout.splitlines() if l.startswith("{")][-1])
    finally:
        b.send_signal(signal.SIGTERM)
        b.wait(timeout=120)
    total, hook = inclusive(out, "message_cb")
    _, acl = inclusive(out, "acl_cb")
    if a.keep:
        shutil.copy(out, os.path.join(a.keep, f"callgrind.{target}.{duration}.out"))
    if rec["undelivered"] or rec["errors"]["bad"] or rec["errors"]["refused"]:
        raise RuntimeError(f"{target}: {rec['undelivered']} undelivered, errors {rec['errors']}: not a count of "
                           "delivered messages")
    return rec["sent"], total, hook, acl


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--build", default=os.path.join(HERE, "..", "build"))
    ap.add_argument("--plugin")
    ap.add_argument("--targets", default="plain,plugin-off")
    ap.add_argument("--rate", type=int, default=200)
    ap.add_argument("--short", type=float, default=2)
    ap.add_argument("--long", type=float, default=6)
    ap.add_argument("--keep", help="copy the callgrind outputs into this directory")
    a = ap.parse_args()
    a.build = os.path.abspath(a.build)
    a.plugin = os.path.abspath(a.plugin or os.path.join(a.build, "plugin", "mosquitto_chat.so"))
    workdir = tempfile.mkdtemp(prefix="cgcost-")
    try:
        for t in a.targets.split(","):
            s = run_once(a, t, a.short, workdir)
            l = run_once(a, t, a.long, workdir)
            n = l[0] - s[0]
            print(json.dumps({"target": t, "msgs": n, "instr_per_msg": round((l[1] - s[1]) / n),
                              "message_cb_per_msg": round((l[2] - s[2]) / n),
                              "acl_cb_per_msg": round((l[3] - s[3]) / n),
                              "runs": [s, l]}), flush=True)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
