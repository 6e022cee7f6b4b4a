#!/usr/bin/env python3
"""The benchmark suite's one command: plain mosquitto vs mosquitto + mosquitto-chat.

    python3 bench/run.py              # full run (about 20-25 min on 2 cores)
    python3 bench/run.py --smoke      # the same harness, tiny sizes, 1 repeat (< 2 min; CI)

Builds nothing: it uses the binaries under build/ (cmake -S . -B build -G Ninja
-DCMAKE_BUILD_TYPE=RelWithDebInfo && cmake --build build). For every workload
it starts a fresh broker per run -- plain mosquitto, mosquitto + plugin with
fsync off, mosquitto + plugin with fsync always -- on a free 127.0.0.1 port
with a fresh database, pinned to one CPU while the generator (chatbench) is
pinned to another, repeats every figure --repeat times and reports medians.

Writes bench/results/latest.md (table, machine, command), latest.json (every
raw JSON line and the medians) and PNG charts. The targets of issue 5 are
printed as PASS/MISS figures; the exit code only says whether the harness
itself ran (never whether a target was met).
"""
import argparse
import atexit
import datetime
import json
import os
import platform
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULTS = os.path.join(ROOT, "bench", "results")
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
TARGETS = ["plain", "plugin-off", "plugin-always"]

BROKERS = []        # every broker started, killed on exit whatever happens


def log(msg):
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --------------------------------------------------------------------------
# brokers
# --------------------------------------------------------------------------

PRIORITY = {"sched": "none", "nice": 0}


def raise_priority():
    """Brokers and tools run at the --sched priority: on a shared machine other
    jobs then get the CPUs only when the benchmark leaves them idle. The same
    for every target. 'rr': SCHED_RR 10 (falls back to nice -20 if refused);
    'nice': nice -20; 'none': untouched."""
    mode = PRIORITY["sched"]
    if mode == "rr":
        try:
            os.sched_setscheduler(0, os.SCHED_RR, os.sched_param(10))
            return
        except (PermissionError, OSError):
            mode = "nice"
    if mode == "nice":
        try:
            os.setpriority(os.PRIO_PROCESS, 0, -20)
        except (PermissionError, OSError):
            pass


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Broker:
    """One mosquitto process: plain, or with the plugin in one fsync mode."""

    def __init__(self, target, workdir, plugin, cpu, db=None, map_size=None, name=None, plugin_opts=(),
                 rate_limits=False):
        self.target = target
        self.port = free_port()
        self.dir = tempfile.mkdtemp(prefix=(name or target) + "-", dir=workdir)
        self.db = db or os.path.join(self.dir, "db")
        conf = [
            f"listener {self.port} 127.0.0.1",
            "per_listener_settings false",
            "allow_anonymous true",
            "persistence false",
            # same queues for every target, large enough that nothing is dropped
            "max_queued_messages 1000000",
            "max_inflight_messages 0",
            "set_tcp_nodelay true",
            "log_dest stderr",
            "log_type error",
            "log_type warning",
            "log_type notice",
            "connection_messages false",
        ]
        if os.geteuid() == 0:
            conf.append("user root")   # else mosquitto drops to 'mosquitto' and cannot write the db
        if target != "plain":
            conf += [
                f"plugin {plugin}",
                f"plugin_opt_db_path {self.db}",
                f"plugin_opt_fsync {'always' if target == 'plugin-always' else 'off'}",
                "plugin_opt_max_members 500",
            ]
            if map_size:
                conf.append(f"plugin_opt_map_size {map_size}")
            if not rate_limits:
                # a few users send thousands of msgs/s here: the per-user limits stay in the path but never refuse
                # (the flood workload runs with the plugin's defaults)
                conf += [f"plugin_opt_rate_{k}{b} 1000000" for k in ("send", "request", "receipt", "typing")
                         for b in ("", "_burst")]
            for kv in plugin_opts:
                k, v = kv.split("=", 1)
                conf.append(f"plugin_opt_{k} {v}")
        self.conf = os.path.join(self.dir, "mosquitto.conf")
        with open(self.conf, "w") as f:
            f.write("\n".join(conf) + "\n")
        self.logpath = os.path.join(self.dir, "broker.log")
        self.logf = open(self.logpath, "w")

        def pre():
            # as many descriptors as allowed (10,000 idle clients)
            soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            except (ValueError, OSError):
                pass
            if cpu is not None:
                os.sched_setaffinity(0, {cpu})
            raise_priority()
            os.setpgrp()

        self.proc = subprocess.Popen([MOSQUITTO, "-c", self.conf], stdout=self.logf, stderr=subprocess.STDOUT,
                                     preexec_fn=pre)
        BROKERS.append(self)
        self.pid = self.proc.pid
        deadline = time.time() + 20
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"broker {target} exited: {self.tail()}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    break
            except OSError:
                if time.time() > deadline:
                    raise RuntimeError(f"broker {target} did not listen: {self.tail()}")
                time.sleep(0.05)

    def tail(self):
        try:
            with open(self.logpath) as f:
                return f.read()[-2000:]
        except OSError:
            return ""

    def stop(self, keep=False):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.logf.close()
        if self in BROKERS:
            BROKERS.remove(self)
        if not keep:
            shutil.rmtree(self.dir, ignore_errors=True)


SPINNERS = []


def start_spinners():
    """One SCHED_IDLE busy loop per CPU: it runs only when nothing else wants
    the CPU, so a vCPU never halts and never pays the hypervisor's wake-up
    delay (milliseconds on some VMs). Process CPU figures are unaffected."""
    for cpu in sorted(os.sched_getaffinity(0)):
        def pre(cpu=cpu):
            os.sched_setaffinity(0, {cpu})
            os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
            os.setpgrp()
        SPINNERS.append(subprocess.Popen([sys.executable, "-c", "while True: pass"], preexec_fn=pre))


def kill_all_brokers():
    for p in SPINNERS:
        try:
            p.kill()
            p.wait(5)
        except Exception:
            pass
    SPINNERS.clear()
    for b in list(BROKERS):
        try:
            if b.proc.poll() is None:
                b.proc.kill()
                b.proc.wait(5)
        except Exception:
            pass
    BROKERS.clear()


atexit.register(kill_all_brokers)


_signalled = []


def on_signal(signum, frame):
    """First signal: kill the brokers now, then unwind (finally blocks, atexit).
    A second one: leave at once."""
    if _signalled:
        os._exit(128 + signum)
    _signalled.append(signum)
    kill_all_brokers()
    raise SystemExit(128 + signum)


signal.signal(signal.SIGTERM, on_signal)
signal.signal(signal.SIGINT, on_signal)
signal.signal(signal.SIGHUP, signal.SIG_IGN)   # a closed terminal does not end a 25-minute run


# --------------------------------------------------------------------------
# runs
# --------------------------------------------------------------------------

class Runner:
    def __init__(self, args):
        self.args = args
        self.build = os.path.abspath(args.build)
        self.bin = {n: os.path.join(self.build, "bench", n) for n in ("chatbench", "chatseed", "histbench", "fsyncceiling")}
        self.plugin = os.path.abspath(args.plugin) if args.plugin else os.path.join(self.build, "plugin", "mosquitto_chat.so")
        for p in list(self.bin.values()) + [self.plugin, MOSQUITTO]:
            if not os.path.exists(p):
                sys.exit(f"run.py: {p} is missing: build first (cmake -S . -B build -G Ninja "
                         f"-DCMAKE_BUILD_TYPE=RelWithDebInfo && cmake --build build)")
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) >= 2:
            self.broker_cpu, self.gen_cpu = cpus[0], cpus[1]
        else:
            self.broker_cpu = self.gen_cpu = None
        base = args.workdir or None
        self.workdir = tempfile.mkdtemp(prefix="chatbench-", dir=base)
        self.records = []
        # every record is also appended here as it comes: a run cut short
        # can still be reported (--report-from)
        os.makedirs(RESULTS, exist_ok=True)
        self.partial = os.path.join(RESULTS, "runs.partial.jsonl")
        open(self.partial, "w").close()

    def add(self, r):
        self.records.append(r)
        with open(self.partial, "a") as f:
            f.write(json.dumps(r) + "\n")

    def cleanup(self):
        kill_all_brokers()
        if not self.args.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def tool(self, name, argv, timeout=3600, cpu=True):
        cmd = [self.bin[name]] + [str(a) for a in argv]
        c = self.gen_cpu if cpu else None

        def pre():
            if c is not None:
                os.sched_setaffinity(0, {c})
            raise_priority()
        r = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, timeout=timeout,
                           preexec_fn=pre)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed ({r.returncode}): {r.stderr[-3000:]}")
        if r.stderr.strip() and self.args.verbose:
            print(r.stderr, file=sys.stderr, end="")
        out = []
        for line in r.stdout.splitlines():
            line = line.strip()
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def wait_quiet(self):
        """Waits (up to --quiet-wait s) until the machine is idle: other jobs on
        a 2-core box (a test suite, a build) would show up as plugin cost."""
        def busy():
            with open("/proc/stat") as f:
                v = [int(x) for x in f.readline().split()[1:9]]
            return v[0] + v[1] + v[2] + v[5] + v[6] + v[7]
        if self.args.quiet_wait <= 0:
            return 0.0
        deadline = time.time() + self.args.quiet_wait
        hz = os.sysconf("SC_CLK_TCK")
        while True:
            a = busy()
            time.sleep(0.5)
            load = (busy() - a) / hz / 0.5
            if load < 0.15 or time.time() > deadline:
                if load >= 0.15:
                    log(f"   machine still busy ({100 * load:.0f}% of a CPU by others): running anyway")
                return load
            time.sleep(1)

    @staticmethod
    def user_cpu(exclude):
        """CPU seconds used so far by every user-space process but `exclude`
        (this harness, whose reaped children are the brokers and chatbench),
        including what their reaped children used. Kernel threads -- I/O
        flushers, jbd2 -- are left out: they work for the measured broker."""
        total = 0
        hz = os.sysconf("SC_CLK_TCK")
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) in exclude:
                continue
            try:
                with open(f"/proc/{d}/stat") as f:
                    st = f.read()
            except OSError:
                continue
            v = st[st.rindex(")") + 2:].split()
            if int(v[6]) & 0x00200000:      # PF_KTHREAD
                continue
            # utime + stime + the reaped children's: short-lived processes
            # (a test suite's brokers) show up in their parent's cutime
            total += (int(v[11]) + int(v[12]) + int(v[13]) + int(v[14])) / hz
        return total

    def bench(self, workload, target, rep, extra, broker_kw=None, tag=None):
        """A fresh broker, one chatbench run, the broker stopped. A run during
        which other processes took more than 20% of a CPU is done again
        (--retries times at most; the last one is kept, flagged by its
        others_user_cpu_pct)."""
        for attempt in range(self.args.retries + 1):
            pre_busy = self.wait_quiet()
            kw = dict(broker_kw or {})
            kw.setdefault("plugin_opts", self.args.plugin_opt or ())
            b = Broker(target, self.workdir, self.plugin, self.broker_cpu, **kw)
            excl = {os.getpid(), b.pid}
            u0, t0 = self.user_cpu(excl), time.time()
            try:
                recs = self.tool("chatbench", ["--workload", workload, "--target",
                                               "plain" if target == "plain" else "plugin",
                                               "--port", b.port, "--broker-pid", b.pid, "--label", target] + extra,
                                 timeout=900)
            except Exception:
                log(f"broker log ({target}):\n{b.tail()}")
                raise
            finally:
                b.stop(keep=False)
            # what ran besides this run's broker, generator and harness (its
            # children are gone: exited processes' time no longer shows)
            others = 100 * (self.user_cpu(excl) - u0) / max(0.1, time.time() - t0)
            for r in recs:
                r["others_user_cpu_pct"] = round(others, 1)
            if others <= 20 or attempt == self.args.retries:
                break
            log(f"   interference: other processes used {others:.0f}% of a CPU during the run: again")
        for r in recs:
            r.update({"target": target, "rep": rep, "tag": tag or workload, "pre_busy_cpu": round(pre_busy, 3),
                      "attempts": attempt + 1})
            self.add(r)
            log("   " + summary(r))
        return recs


def flood_run(R, target, rep, quiet, flood, tag, flooders, rate_limits=True, plugin_opts=()):
    """The flood workload: a fresh broker; a quiet open-loop 1:1 run (`quiet` chatbench args) measured with no
    flood (flooders 0) or while another chatbench process floods (one user, `flooders` devices, sending flat out).
    The flooder starts first and its measurement window covers the quiet run's."""
    pre_busy = R.wait_quiet()
    opts = list(R.args.plugin_opt or ()) + list(plugin_opts)
    b = Broker(target, R.workdir, R.plugin, R.broker_cpu, plugin_opts=opts, rate_limits=rate_limits)
    fl = None
    kind = "plain" if target == "plain" else "plugin"
    try:
        if flooders:
            cmd = [R.bin["chatbench"], "--workload", "one2one", "--target", kind, "--port", str(b.port),
                   "--label", target] + [str(x) for x in flood + ["--flooders", flooders]]
            c = R.gen_cpu

            def pre():
                # the generator's CPU at nice 0, below the quiet generator (nice -20 when permitted, little CPU):
                # woken, the quiet generator preempts it, as if the flooder were another machine; the flooder
                # gets the rest of the CPU
                if c is not None:
                    os.sched_setaffinity(0, {c})
                try:
                    os.setpriority(os.PRIO_PROCESS, 0, 0)
                except OSError:
                    pass
            fl = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=pre)
            time.sleep(1.0)   # connected and flooding before the quiet run starts
        recs = R.tool("chatbench", ["--workload", "one2one", "--target", kind, "--port", b.port,
                                    "--broker-pid", b.pid, "--label", target] + quiet, timeout=900)
        if fl:
            out, err = fl.communicate(timeout=300)
            if fl.returncode != 0:
                raise RuntimeError(f"flooder failed ({fl.returncode}): {err[-2000:]}")
            for line in out.splitlines():
                if line.startswith("{"):
                    recs.append(dict(json.loads(line), role="flooder"))
    except Exception:
        log(f"broker log ({target}):\n{b.tail()}")
        raise
    finally:
        if fl and fl.poll() is None:
            fl.kill()
        b.stop(keep=False)
    for r in recs:
        r.setdefault("role", "quiet")
        r["workload"] = "flood"
        r.update({"target": target, "rep": rep, "tag": tag, "pre_busy_cpu": round(pre_busy, 3), "attempts": 1})
        R.add(r)
        log("   " + (summary(r) if r["role"] == "quiet" else f"flooder: {json.dumps(r.get('flood'))}"))
    return recs


def summary(r):
    w = r.get("workload")
    if w in ("one2one", "fanout") or (w == "flood" and r.get("role") == "quiet"):
        return (f"{r['deliveries_s']:.0f} deliveries/s ({r['msgs_s']:.0f} msgs/s), e2e p50/p99 "
                f"{g(r, 'e2e_us', 'p50')}/{g(r, 'e2e_us', 'p99')} µs, broker CPU {g(r, 'broker', 'cpu_pct')}%, "
                f"generator {r.get('gen_cpu_pct')}%, others {r.get('other_cpu_pct')}%, undelivered {r.get('undelivered')}")
    if w == "idle":
        return f"RssAnon/conn {r.get('anon_per_conn_b')} B, VmRSS/conn {r.get('rss_per_conn_b')} B"
    if w == "storm":
        return (f"all synced {r.get('all_synced_ms')} ms, p50/p99 {g(r, 'sync_us', 'p50')}/{g(r, 'sync_us', 'p99')} µs,"
                f" missing {r.get('missing')}")
    if w == "history":
        return f"{r.get('hist_size')}: RTT p50/p99 {g(r, 'rtt_us', 'p50')}/{g(r, 'rtt_us', 'p99')} µs"
    return json.dumps(r)[:200]


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def params(smoke):
    if smoke:
        return dict(repeat=1, warmup=0.5, duration=2, drain=2, senders=4, convs=40, receivers=10, window=50,
                    flood_senders=4, flood_rate=20, flooders=2,
                    members=50, fan_window=8, idle_clients=500, storm_clients=200, storm_msgs=5, group=10,
                    hist_sizes="1000,5000", hist_requests=300, histbench_requests=2000, fsync_seconds=1,
                    settle=0.5)
    return dict(repeat=5, warmup=3, duration=10, drain=5, senders=20, convs=1000, receivers=50, window=50,
                flood_senders=20, flood_rate=100, flooders=2,
                members=500, fan_window=8, idle_clients=10000, storm_clients=2000, storm_msgs=20, group=10,
                hist_sizes="1000,100000,10000000", hist_requests=2000, histbench_requests=20000, fsync_seconds=3,
                settle=2)


def run_all(R, P, only):
    a = R.args
    traffic = ["--warmup", P["warmup"], "--duration", P["duration"], "--drain", P["drain"]]
    o2o = traffic + ["--senders", P["senders"], "--convs", P["convs"], "--receivers", P["receivers"]]
    ceil = {t: [] for t in TARGETS}
    fsync = []

    if "fsync" in only or "one2one" in only:
        for rep in range(P["repeat"]):
            log(f"fsync ceiling {rep + 1}/{P['repeat']}")
            for r in R.tool("fsyncceiling", ["--dir", R.workdir, "--seconds", P["fsync_seconds"]]):
                r.update({"workload": "fsync", "target": "disk", "rep": rep, "tag": "fsync"})
                R.add(r)
                fsync.append(r["lmdb_commits_s"])

    if "one2one" in only:
        for rep in range(P["repeat"]):
            for t in TARGETS:
                log(f"one2one closed loop (ceiling) {t} {rep + 1}/{P['repeat']}")
                r = R.bench("one2one", t, rep, o2o + ["--rate", 0, "--window", P["window"]], tag="o2o-ceiling")
                ceil[t].append(r[0]["msgs_s"])
        half = {t: median(ceil[t]) / 2 for t in TARGETS}
        r_half = half["plain"]
        log(f"ceilings (median): " + ", ".join(f"{t} {median(ceil[t]):.0f}" for t in TARGETS)
            + f"; open loop at half of plain's: {r_half:.0f} msgs/s")
        for rep in range(P["repeat"]):
            for t, rate, tag in (("plain", r_half, "o2o-half-plain"), ("plugin-off", r_half, "o2o-half-plain"),
                                 ("plugin-off", half["plugin-off"], "o2o-half-own"),
                                 ("plugin-always", half["plugin-always"], "o2o-half-own")):
                if t == "plugin-always" and rate >= r_half:
                    tag = "o2o-half-plain"
                log(f"one2one open loop {t} at {rate:.0f} msgs/s ({tag}) {rep + 1}/{P['repeat']}")
                R.bench("one2one", t, rep, o2o + ["--rate", f"{rate:.1f}"], tag=tag)
        R.r_half = r_half

    if "flood" in only:
        # quiet: flood_senders users, one direct conversation each, all to one receiver, flood_rate msgs/s in all
        # (half of each user's default rate_send); the flooder: one more user's devices sending flat out
        S = P["flood_senders"]
        quiet = traffic + ["--senders", S, "--convs", S, "--receivers", 1, "--rate", P["flood_rate"]]
        flood = ["--senders", 0, "--receivers", 0, "--rate", 0, "--warmup", P["warmup"] + 1.5,
                 "--duration", P["duration"], "--drain", 1]
        for rep in range(P["repeat"]):
            for t in ("plain", "plugin-off"):
                log(f"flood: quiet 1:1 alone {t} {rep + 1}/{P['repeat']}")
                flood_run(R, t, rep, quiet, flood, "flood-alone", 0)
                log(f"flood: quiet 1:1 + {P['flooders']} flooding devices {t} {rep + 1}/{P['repeat']}")
                flood_run(R, t, rep, quiet, flood, "flood-flooded", P["flooders"])
            log(f"flood: quiet 1:1 + flood, rate limits off (rate_send 0) plugin-off {rep + 1}/{P['repeat']}")
            flood_run(R, "plugin-off", rep, quiet, flood, "flood-nolimit", P["flooders"], plugin_opts=["rate_send=0"])
            log(f"flood: quiet 1:1 + flood, never disconnected (rate_disconnect_after 0) plugin-off "
                f"{rep + 1}/{P['repeat']}")
            flood_run(R, "plugin-off", rep, quiet, flood, "flood-nokick", P["flooders"],
                      plugin_opts=["rate_disconnect_after=0"])

    if "fanout" in only:
        for rep in range(P["repeat"]):
            for t in TARGETS:
                log(f"fanout {P['members']} {t} {rep + 1}/{P['repeat']}")
                R.bench("fanout", t, rep, traffic + ["--members", P["members"], "--rate", 0,
                                                     "--window", P["fan_window"]])

    if "idle" in only:
        for rep in range(P["repeat"]):
            for t in TARGETS:
                log(f"idle {P['idle_clients']} {t} {rep + 1}/{P['repeat']}")
                R.bench("idle", t, rep, ["--clients", P["idle_clients"], "--group-size", P["group"],
                                         "--settle", P["settle"]])

    if "storm" in only:
        for rep in range(P["repeat"]):
            for t in TARGETS:
                log(f"storm {P['storm_clients']} {t} {rep + 1}/{P['repeat']}")
                R.bench("storm", t, rep, ["--clients", P["storm_clients"], "--group-size", P["group"],
                                          "--storm-msgs", P["storm_msgs"], "--connect-concurrency", 0])

    if "history" in only:
        sizes = a.hist_sizes or P["hist_sizes"]
        hdb = os.path.join(R.workdir, "histdb")
        log(f"seeding history conversations of {sizes} messages")
        t0 = time.time()
        seed = R.tool("chatseed", ["--db", hdb, "--sizes", sizes, "--map-size", "16G"], cpu=False)
        for r in seed:
            r.update({"workload": "history-seed", "target": "-", "rep": 0, "tag": "seed"})
            R.add(r)
        convs = seed[-1]["convs"]
        log(f"seeded in {time.time() - t0:.0f} s ({os.path.getsize(os.path.join(hdb, 'data.mdb')) / 2**30:.1f} GiB)")
        for rep in range(P["repeat"]):
            log(f"history server-side (histbench) {rep + 1}/{P['repeat']}")
            for r in R.tool("histbench", ["--db", hdb, "--convs", convs, "--requests", P["histbench_requests"],
                                          "--seed", rep + 1]):
                r.update({"target": "core", "rep": rep, "tag": "hist-server"})
                R.add(r)
            for t in ("plugin-off", "plugin-always"):
                log(f"history end to end {t} {rep + 1}/{P['repeat']}")
                R.bench("history", t, rep, ["--hist-convs", convs, "--hist-requests", P["hist_requests"],
                                            "--seed", rep + 1],
                        broker_kw={"db": hdb, "map_size": "16G", "name": "hist-" + t}, tag="hist-e2e")


# --------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------

def g(d, *path):
    for k in path:
        if not isinstance(d, dict) or k not in d:
            return None
        d = d[k]
    return d


def figures(records, P):
    """[(section, figure, unit, {target: (median, n)}, note)]"""
    def sel(tag, target, **kw):
        out = []
        for r in records:
            if r.get("tag") == tag and r.get("target") == target and all(r.get(k) == v for k, v in kw.items()):
                out.append(r)
        return out

    rows = []

    def row(section, name, unit, tag, fn, targets=TARGETS, note="", **kw):
        cells = {}
        for t in targets:
            vals = [fn(r) for r in sel(tag, t, **kw)]
            vals = [v for v in vals if v is not None]
            cells[t] = (median(vals), len(vals)) if vals else (None, 0)
        rows.append({"section": section, "figure": name, "unit": unit, "cells": cells, "note": note})
        return cells

    fs = [r for r in records if r.get("tag") == "fsync"]
    fs_lmdb = median([r["lmdb_commits_s"] for r in fs]) if fs else None
    fs_raw = median([r["fdatasync_s"] for r in fs]) if fs else None
    fs_chat = median([r.get("lmdb_chat_commits_s") for r in fs]) if fs else None
    fs_dsync = median([r["dsync_s"] for r in fs if r.get("dsync_s")]) if any(r.get("dsync_s") for r in fs) else None
    if fs_dsync:
        rows.append({"section": "disk", "figure": "fsync ceiling: O_DSYNC 560-byte writes/s through a preallocated "
                                                  "file (the journal's write, bare)", "unit": "/s",
                     "cells": {"plain": (None, 0), "plugin-off": (None, 0), "plugin-always": (fs_dsync, len(fs))},
                     "note": "what fsync always is measured against"})
    if fs:
        rows.append({"section": "disk", "figure": "fsync ceiling: LMDB synced commits/s (1 put each)", "unit": "/s",
                     "cells": {"plain": (None, 0), "plugin-off": (None, 0), "plugin-always": (fs_lmdb, len(fs))},
                     "note": f"write+fdatasync: {fs_raw:.0f}/s"})
        if fs_chat:
            rows.append({"section": "disk", "figure": "LMDB synced commits/s shaped like a chat message "
                                                      "(3 puts in 3 DBs)", "unit": "/s",
                         "cells": {"plain": (None, 0), "plugin-off": (None, 0), "plugin-always": (fs_chat, len(fs))},
                         "note": "what fsync=always could reach if the plugin did nothing but commit"})

    row("1:1", "ceiling (closed loop), delivered msgs/s", "msg/s", "o2o-ceiling", lambda r: r["msgs_s"])
    row("1:1", "ceiling: e2e latency p50", "µs", "o2o-ceiling", lambda r: g(r, "e2e_us", "p50"))
    row("1:1", "ceiling: PUBACK latency p50", "µs", "o2o-ceiling", lambda r: g(r, "puback_us", "p50"))
    row("1:1", "ceiling: broker CPU per message", "µs", "o2o-ceiling", lambda r: g(r, "broker", "cpu_us_per_msg"))
    row("1:1", "ceiling: broker write() calls per message", "calls", "o2o-ceiling",
        lambda r: g(r, "broker", "write_calls_per_msg"))
    row("1:1", "ceiling: bytes the broker writes per message (sockets + files)", "B", "o2o-ceiling",
        lambda r: g(r, "broker", "write_bytes_per_msg"))
    row("1:1", "ceiling: broker CPU", "%", "o2o-ceiling", lambda r: g(r, "broker", "cpu_pct"))
    row("1:1", "ceiling: generator CPU", "%", "o2o-ceiling", lambda r: g(r, "gen_cpu_pct"))
    row("1:1", "ceiling: rest of the machine (softirq, other processes)", "%", "o2o-ceiling",
        lambda r: g(r, "other_cpu_pct"))
    rate = [r["rate_offered"] for r in records if r.get("tag") == "o2o-half-plain" and r.get("target") == "plain"]
    rtxt = f"{median(rate):.0f} msgs/s" if rate else "?"
    for q in ("p50", "p90", "p99", "p999"):
        row("1:1", f"open loop at half plain's ceiling ({rtxt}): e2e {q}", "µs", "o2o-half-plain",
            lambda r, q=q: g(r, "e2e_us", q))
    row("1:1", f"open loop at {rtxt}: PUBACK p99", "µs", "o2o-half-plain", lambda r: g(r, "puback_us", "p99"))
    row("1:1", f"open loop at {rtxt}: delivered msgs/s", "msg/s", "o2o-half-plain", lambda r: r["msgs_s"])
    row("1:1", f"open loop at {rtxt}: undelivered after drain", "msgs", "o2o-half-plain", lambda r: r["undelivered"])
    own = ["plugin-off", "plugin-always"]
    row("1:1", "open loop at half its own ceiling: offered msgs/s", "msg/s", "o2o-half-own",
        lambda r: r["rate_offered"], targets=own)
    for q in ("p50", "p90", "p99", "p999"):
        row("1:1", f"open loop at half its own ceiling: e2e {q}", "µs", "o2o-half-own",
            lambda r, q=q: g(r, "e2e_us", q), targets=own)
    row("1:1", "open loop at half its own ceiling: PUBACK p99", "µs", "o2o-half-own",
        lambda r: g(r, "puback_us", "p99"), targets=own)
    # the plain cells of the "own" rows are the half-plain runs
    for rw in rows:
        if rw["figure"].startswith("open loop at half its own ceiling"):
            key = rw["figure"].split(": ", 1)[1]
            fn = {"offered msgs/s": lambda r: r["rate_offered"], "e2e p50": lambda r: g(r, "e2e_us", "p50"),
                  "e2e p90": lambda r: g(r, "e2e_us", "p90"),
                  "e2e p99": lambda r: g(r, "e2e_us", "p99"), "e2e p999": lambda r: g(r, "e2e_us", "p999"),
                  "PUBACK p99": lambda r: g(r, "puback_us", "p99")}[key]
            vals = [fn(r) for r in sel("o2o-half-plain", "plain")]
            rw["cells"]["plain"] = (median(vals), len(vals)) if vals else (None, 0)

    if any(r.get("tag", "").startswith("flood-") for r in records):
        fl_targets = ["plain", "plugin-off"]
        qtxt = f"quiet 1:1 ({P.get('flood_senders')} users, {P.get('flood_rate')} msgs/s in all)"
        for q in ("p50", "p99"):
            row("flood", f"{qtxt} alone: e2e {q}", "µs", "flood-alone", lambda r, q=q: g(r, "e2e_us", q),
                targets=fl_targets, role="quiet")
        for q in ("p50", "p99"):
            row("flood", f"same while one user floods from {P.get('flooders')} devices: e2e {q}", "µs", "flood-flooded",
                lambda r, q=q: g(r, "e2e_us", q), targets=fl_targets, role="quiet")
        # per repeat: flooded p99 / alone p99 of the same target, then the median
        cells = {}
        for t in TARGETS:
            alone = {r["rep"]: g(r, "e2e_us", "p99") for r in sel("flood-alone", t, role="quiet")}
            hit = {r["rep"]: g(r, "e2e_us", "p99") for r in sel("flood-flooded", t, role="quiet")}
            ratios = [hit[k] / alone[k] for k in hit if alone.get(k) and hit[k] is not None]
            cells[t] = (median(ratios), len(ratios)) if ratios else (None, 0)
        rows.append({"section": "flood", "figure": "quiet p99 flooded ÷ alone (median of per-run ratios)", "unit": "×",
                     "cells": cells, "note": "1.00 = the flood costs the quiet users nothing"})
        row("flood", "flooder: sends offered/s", "/s", "flood-flooded", lambda r: g(r, "flood", "sent_s"),
            targets=fl_targets, role="flooder")
        row("flood", "flooder: messages delivered/s", "/s", "flood-flooded", lambda r: g(r, "flood", "delivered_s"),
            targets=fl_targets, role="flooder", note="plugin: rate_send 10/s, bursts of 30 (defaults)")
        row("flood", "flooder: refused (rate_limited)/s", "/s", "flood-flooded", lambda r: g(r, "flood", "refused_s"),
            targets=fl_targets, role="flooder")
        row("flood", "flooder: connections dropped/s (it reconnects at once)", "/s", "flood-flooded",
            lambda r: g(r, "flood", "kicked_s"), targets=fl_targets, role="flooder",
            note="plugin: rate_disconnect_after 100 (default)")
        row("flood", "broker CPU while flooded", "%", "flood-flooded", lambda r: g(r, "broker", "cpu_pct"),
            targets=fl_targets, role="quiet")
        for q in ("p50", "p99"):
            row("flood", f"same flood with rate limits off (rate_send 0): e2e {q}", "µs", "flood-nolimit",
                lambda r, q=q: g(r, "e2e_us", q), targets=["plugin-off"], role="quiet")
        row("flood", "rate limits off: flooder messages stored and delivered/s", "/s", "flood-nolimit",
            lambda r: g(r, "flood", "delivered_s"), targets=["plugin-off"], role="flooder")
        for q in ("p50", "p99"):
            row("flood", f"same flood, never disconnected (rate_disconnect_after 0): e2e {q}", "µs", "flood-nokick",
                lambda r, q=q: g(r, "e2e_us", q), targets=["plugin-off"], role="quiet")
        row("flood", "never disconnected: flooder sends offered/s", "/s", "flood-nokick",
            lambda r: g(r, "flood", "sent_s"), targets=["plugin-off"], role="flooder")

    row("fan-out", f"{P['members']} members: deliveries/s (closed loop)", "/s", "fanout", lambda r: r["deliveries_s"])
    row("fan-out", "latency to last recipient p50", "µs", "fanout", lambda r: g(r, "e2e_last_us", "p50"))
    row("fan-out", "latency to last recipient p99", "µs", "fanout", lambda r: g(r, "e2e_last_us", "p99"))
    row("fan-out", "broker write() calls per message", "calls", "fanout",
        lambda r: g(r, "broker", "write_calls_per_msg"))
    row("fan-out", "broker CPU per delivery", "µs", "fanout",
        lambda r: g(r, "broker", "cpu_s") * 1e6 / max(1, r["deliveries_in_window"]) if g(r, "broker", "cpu_s") else None)

    sizes = sorted({r["hist_size"] for r in records if r.get("tag") in ("hist-server", "hist-e2e")})
    for sz in sizes:
        for q in ("p50", "p99", "max", "faults"):
            fn = (lambda r: r.get("minor_faults_per_req")) if q == "faults" else (lambda r, q=q: g(r, "server_us", q))
            name = (f"page of 50 from {sz:,} msgs: server-side minor page faults per request" if q == "faults" else
                    f"page of 50 from {sz:,} msgs: server-side {q} (core, no broker)")
            rw = row("history", name, "" if q == "faults" else "µs", "hist-server", fn, targets=["core"], hist_size=sz)
            rows[-1]["cells"] = {"plain": (None, 0), "plugin-off": rw["core"], "plugin-always": rw["core"]}
            rows[-1]["note"] = "one measurement of the core, shown under both modes"
        for q in ("p50", "p99"):
            row("history", f"page of 50 from {sz:,} msgs: end-to-end RTT {q}", "µs", "hist-e2e",
                lambda r, q=q: g(r, "rtt_us", q), targets=["plugin-off", "plugin-always"], hist_size=sz)

    row("idle", f"{P['idle_clients']:,} idle clients: broker RssAnon per connection", "B", "idle",
        lambda r: r.get("anon_per_conn_b"))
    row("idle", "broker VmRSS per connection", "B", "idle", lambda r: r.get("rss_per_conn_b"))
    row("idle", "broker VmRSS with all clients", "KiB", "idle", lambda r: r.get("rss_after_kb"))

    row("storm", f"{P['storm_clients']:,} clients reconnect at once: all synced", "ms", "storm",
        lambda r: r.get("all_synced_ms"))
    row("storm", "per client, storm start → synced p50", "µs", "storm", lambda r: g(r, "sync_us", "p50"))
    row("storm", "per client, storm start → synced p99", "µs", "storm", lambda r: g(r, "sync_us", "p99"))
    row("storm", "per client, CONNACK → synced p50", "µs", "storm", lambda r: g(r, "after_connack_us", "p50"))
    row("storm", "per client, CONNACK → synced p99", "µs", "storm", lambda r: g(r, "after_connack_us", "p99"))
    row("storm", "broker CPU during the storm", "ms", "storm",
        lambda r: g(r, "broker", "cpu_s") * 1e3 if g(r, "broker", "cpu_s") is not None else None)
    return rows, fs_lmdb, fs_raw


def find(rows, prefix, target):
    for r in rows:
        if r["figure"].startswith(prefix):
            return r["cells"].get(target, (None, 0))[0]
    return None


def targets_check(rows, fs_lmdb):
    out = []

    def add(name, value_txt, ok):
        out.append({"target": name, "value": value_txt, "result": None if ok is None else ("PASS" if ok else "MISS")})

    p = find(rows, "ceiling (closed loop)", "plain")
    o = find(rows, "ceiling (closed loop)", "plugin-off")
    add("1:1 throughput, fsync off ≥ 80% of plain",
        f"{o:.0f} / {p:.0f} msgs/s = {100 * o / p:.0f}%" if p and o else "n/a", (o / p >= 0.8) if p and o else None)
    p = find(rows, "open loop at half plain's ceiling", "plain")
    pr = [r for r in rows if r["figure"].startswith("open loop at half plain's ceiling") and r["figure"].endswith("e2e p99")]
    if pr:
        p, o = pr[0]["cells"]["plain"][0], pr[0]["cells"]["plugin-off"][0]
        add("p99 e2e at half plain's ceiling, fsync off ≤ 2× plain's",
            f"{o / 1e3:.2f} ms vs {p / 1e3:.2f} ms = {o / p:.1f}×" if p and o else "n/a",
            (o <= 2 * p) if p and o else None)
    a = find(rows, "ceiling (closed loop)", "plugin-always")
    fs_dsync = find(rows, "fsync ceiling: O_DSYNC", "plugin-always")
    if fs_dsync:
        # the journal makes one O_DSYNC write per message: the bare loop of that write is the ceiling
        add("fsync always ≥ 80% of the disk's sync-per-commit ceiling (O_DSYNC write)",
            f"{a:.0f} / {fs_dsync:.0f} /s = {100 * a / fs_dsync:.0f}% (LMDB synced commits: {fs_lmdb:.0f}/s)"
            if a else "n/a", (a >= 0.8 * fs_dsync) if a else None)
    else:
        add("fsync always ≥ 80% of the fsync-per-commit ceiling (LMDB)",
            f"{a:.0f} / {fs_lmdb:.0f} commits/s = {100 * a / fs_lmdb:.0f}%" if a and fs_lmdb else "n/a",
            (a >= 0.8 * fs_lmdb) if a and fs_lmdb else None)
    fr = [r for r in rows if "members: deliveries/s" in r["figure"]]
    if fr:
        p, o = fr[0]["cells"]["plain"][0], fr[0]["cells"]["plugin-off"][0]
        add("fan-out delivery rate, fsync off ≥ 80% of plain",
            f"{o:.0f} / {p:.0f} /s = {100 * o / p:.0f}%" if p and o else "n/a", (o >= 0.8 * p) if p and o else None)
    hs = [r for r in rows if r["section"] == "history" and "server-side p99" in r["figure"]]
    if hs:
        vals = [r["cells"]["plugin-off"][0] for r in hs]
        ok = all(v is not None and v <= 1000 for v in vals)
        add("history page of 50: server-side p99 ≤ 1 ms at every size",
            ", ".join(f"{v:.0f} µs" if v is not None else "n/a" for v in vals), ok)
    ir = [r for r in rows if r["section"] == "idle" and "RssAnon" in r["figure"]]
    if ir:
        p, o = ir[0]["cells"]["plain"][0], ir[0]["cells"]["plugin-off"][0]
        add("memory the plugin adds per idle connection ≤ 1 KiB",
            f"{o:.0f} − {p:.0f} = {o - p:.0f} B" if p is not None and o is not None else "n/a",
            (o - p <= 1024) if p is not None and o is not None else None)
    return out


def fmt(v, unit):
    if v is None:
        return "—"
    if unit == "µs":
        return f"{v / 1e3:.2f} ms" if v >= 10000 else f"{v:.0f} µs" if v >= 100 else f"{v:.1f} µs"
    if unit == "ms":
        return f"{v:.0f} ms"
    if unit == "×":
        return f"{v:.2f}×"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    return f"{v:.1f}" if isinstance(v, float) and abs(v) < 100 else f"{v:.0f}"


def machine_info(workdir):
    info = {"host": platform.node(), "kernel": platform.release(), "python": platform.python_version()}
    try:
        with open("/proc/cpuinfo") as f:
            m = re.search(r"model name\s*:\s*(.*)", f.read())
            info["cpu"] = m.group(1) if m else "?"
    except OSError:
        pass
    info["cpus"] = os.cpu_count()
    info["affinity"] = sorted(os.sched_getaffinity(0))
    try:
        with open("/proc/meminfo") as f:
            info["mem_gib"] = round(int(re.search(r"MemTotal:\s*(\d+)", f.read()).group(1)) / 2**20, 1)
    except OSError:
        pass
    try:
        df = subprocess.run(["df", "-T", workdir], capture_output=True, text=True).stdout.splitlines()[-1].split()
        info["db_fs"] = f"{df[1]} on {df[0]} (mounted at {df[-1]})"
    except Exception:
        pass
    try:
        v = subprocess.run([MOSQUITTO, "-h"], capture_output=True, text=True).stdout.splitlines()[0]
        info["mosquitto"] = v.strip()
    except Exception:
        pass
    try:
        info["libmosquitto"] = subprocess.run(["pkg-config", "--modversion", "libmosquitto"], capture_output=True,
                                              text=True).stdout.strip()
    except Exception:
        pass
    try:
        c = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        d = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "plugin"], capture_output=True, text=True).stdout.strip()
        info["commit"] = c + (" (plugin/ modified)" if d else "")
    except Exception:
        pass
    return info


def write_report(R, P, rows, fs_lmdb, fs_raw, checks, info, cmdline, elapsed):
    os.makedirs(RESULTS, exist_ok=True)
    n = P["repeat"]
    L = []
    L.append("# mosquitto-chat benchmark: plain mosquitto vs mosquitto + plugin\n")
    L.append(f"Produced by `{cmdline}` on {datetime.datetime.now().strftime('%Y-%m-%d %H:%M')}"
             f" in {elapsed / 60:.1f} min. Every figure is the **median of {n} run{'s' if n > 1 else ''}**"
             f" (N per cell in the JSON); each run had a fresh broker and database.\n")
    L.append("Machine: " + ", ".join(f"{k}: {v}" for k, v in info.items()) + ".\n")
    L.append(f"Broker pinned to CPU {R.broker_cpu}, generator to CPU {R.gen_cpu}. "
             "Brokers: `persistence false`, `max_queued_messages 1000000`, `max_inflight_messages 0`, "
             "`set_tcp_nodelay true`, QoS 1 everywhere, MQTT 3.1.1.\n")
    L.append("## Targets (issue 5)\n")
    L.append("| target | measured | result |")
    L.append("|---|---|---|")
    for c in checks:
        L.append(f"| {c['target']} | {c['value']} | {c['result'] or 'n/a'} |")
    L.append("")
    L.append("## Figures\n")
    L.append("| workload | figure | plain | plugin-off | plugin-always | off/plain | always/plain | note |")
    L.append("|---|---|---|---|---|---|---|---|")
    for r in rows:
        c = r["cells"]
        vals = [c.get(t, (None, 0))[0] for t in TARGETS]

        def ratio(x, y):
            return f"{x / y:.2f}" if x is not None and y not in (None, 0) else "—"
        L.append(f"| {r['section']} | {r['figure']} | " + " | ".join(fmt(v, r["unit"]) for v in vals)
                 + f" | {ratio(vals[1], vals[0])} | {ratio(vals[2], vals[0])} | {r['note']} |")
    L.append("")
    L.append("Charts: `latency.png` (1:1 e2e percentiles, open loop), `throughput.png` (1:1 ceiling, fan-out), "
             "`history.png` (history page cost by size), `memory.png` (idle memory per connection).\n")
    with open(os.path.join(RESULTS, "latest.md"), "w") as f:
        f.write("\n".join(L))
    with open(os.path.join(RESULTS, "latest.json"), "w") as f:
        json.dump({"command": cmdline, "machine": info, "params": P, "elapsed_s": elapsed,
                   "fsync_ceiling": {"lmdb_commits_s": fs_lmdb, "fdatasync_s": fs_raw,
                                     "dsync_s": find(rows, "fsync ceiling: O_DSYNC", "plugin-always")},
                   "targets": checks, "figures": rows, "runs": R.records}, f, indent=1, default=str)
    return "\n".join(L)


def charts(R, rows):
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:
        log(f"no charts: {e}")
        return
    colors = {"plain": "#4c72b0", "plugin-off": "#55a868", "plugin-always": "#c44e52", "core": "#8172b2"}

    def cell(prefix, t, contains=None):
        for r in rows:
            if r["figure"].startswith(prefix) and (contains is None or contains in r["figure"]):
                return r["cells"].get(t, (None, 0))[0]
        return None

    # latency percentiles, 1:1 open loop
    fig, ax = plt.subplots(figsize=(9, 4.5))
    qs = ["p50", "p90", "p99", "p999"]
    series = [("plain @ half plain ceiling", "plain", "open loop at half plain's ceiling"),
              ("plugin-off @ half plain ceiling", "plugin-off", "open loop at half plain's ceiling"),
              ("plugin-off @ half own ceiling", "plugin-off", "open loop at half its own ceiling"),
              ("plugin-always @ half own ceiling", "plugin-always", "open loop at half its own ceiling")]
    w = 0.2
    for i, (name, t, prefix) in enumerate(series):
        ys = [cell(prefix, t, "e2e " + q) for q in qs]
        ys = [(y or 0) / 1e3 for y in ys]
        ax.bar([j + (i - 1.5) * w for j in range(len(qs))], ys, w, label=name,
               color=colors[t], alpha=1.0 if "plain ceiling" in name else 0.6,
               hatch="" if "plain ceiling" in name else "//")
    ax.set_xticks(range(len(qs)))
    ax.set_xticklabels(["p50", "p90", "p99", "p99.9"])
    ax.set_yscale("log")
    ax.set_ylabel("end-to-end latency (ms, log)")
    ax.set_title("1:1 chat, open loop: publish → delivered (from the scheduled send time)")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, "latency.png"), dpi=110)
    plt.close(fig)

    # throughput
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 4.2))
    ts = TARGETS
    ys = [cell("ceiling (closed loop)", t) or 0 for t in ts]
    a1.bar(ts, ys, color=[colors[t] for t in ts])
    fs = [r for r in rows if r["section"] == "disk"]
    if fs and fs[0]["cells"]["plugin-always"][0]:
        a1.axhline(fs[0]["cells"]["plugin-always"][0], color="gray", ls="--", lw=1, label="LMDB fsync ceiling")
        a1.legend(fontsize=8)
    a1.set_title("1:1 ceiling (delivered msgs/s)")
    ys = [cell("", t, "members: deliveries/s") or 0 for t in ts]
    a2.bar(ts, ys, color=[colors[t] for t in ts])
    a2.set_title("fan-out: deliveries/s")
    for a in (a1, a2):
        a.tick_params(axis="x", labelsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, "throughput.png"), dpi=110)
    plt.close(fig)

    # history
    hs = sorted({r["hist_size"] for r in R.records if r.get("tag") == "hist-server"})
    if hs:
        fig, ax = plt.subplots(figsize=(7, 4.2))
        for q, st in (("p50", "-o"), ("p99", "-s"), ("max", ":^")):
            ys = [cell(f"page of 50 from {s:,} msgs: server-side {q}", "plugin-off") for s in hs]
            ax.plot(hs, ys, st, color=colors["core"], label=f"server-side {q}", alpha=0.9 if q != "max" else 0.5)
        for t in ("plugin-off", "plugin-always"):
            ys = [cell(f"page of 50 from {s:,} msgs: end-to-end RTT p99", t) for s in hs]
            ax.plot(hs, ys, "--d", color=colors[t], label=f"end-to-end p99 ({t})")
        ax.axhline(1000, color="gray", ls=":", lw=1, label="1 ms target (server-side p99)")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("messages in the conversation")
        ax.set_ylabel("µs (log)")
        ax.set_title("history page of 50")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(os.path.join(RESULTS, "history.png"), dpi=110)
        plt.close(fig)

    # memory
    fig, ax = plt.subplots(figsize=(6, 4))
    ys = [cell("", t, "RssAnon per connection") or 0 for t in ts]
    ys2 = [cell("broker VmRSS per connection", t) or 0 for t in ts]
    ax.bar([i - 0.2 for i in range(3)], ys, 0.4, label="RssAnon", color=[colors[t] for t in ts])
    ax.bar([i + 0.2 for i in range(3)], ys2, 0.4, label="VmRSS", color=[colors[t] for t in ts], alpha=0.5)
    ax.set_xticks(range(3))
    ax.set_xticklabels(ts)
    ax.set_ylabel("bytes per idle connection")
    ax.set_title("broker memory per idle connection")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(os.path.join(RESULTS, "memory.png"), dpi=110)
    plt.close(fig)


def main():
    global RESULTS
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--smoke", action="store_true", help="tiny sizes, 1 repeat (CI)")
    ap.add_argument("--repeat", type=int, help="runs per figure (default 5; smoke 1)")
    ap.add_argument("--build", default=os.path.join(ROOT, "build"), help="the CMake build directory (build/)")
    ap.add_argument("--workdir", help="where brokers' databases go (default: a temp dir under $TMPDIR)")
    ap.add_argument("--only", default="fsync,one2one,fanout,history,idle,storm,flood",
                    help="comma-separated workloads (fsync,one2one,fanout,history,idle,storm,flood)")
    ap.add_argument("--hist-sizes", help="history conversation sizes (default 1000,100000,10000000)")
    ap.add_argument("--duration", type=float, help="measurement seconds of traffic runs (default 10)")
    ap.add_argument("--plugin", help="another mosquitto_chat.so to measure (A/B a change; default build/plugin/)")
    ap.add_argument("--plugin-opt", action="append", metavar="KEY=VALUE",
                    help="an extra plugin_opt_KEY VALUE for the plugin brokers (repeatable), e.g. sync_interval_ms=0")
    ap.add_argument("--awake", action="store_true",
                    help="keep both CPUs from idling with SCHED_IDLE spinners (VMs: removes vCPU wake-up delays "
                         "from latency figures; see README)")
    ap.add_argument("--quiet-wait", type=float, default=None,
                    help="seconds to wait before each run for other processes to go idle (default 10; smoke 0)")
    ap.add_argument("--sched", choices=("rr", "nice", "none"), default="nice",
                    help="priority of brokers and tools: nice -20 (default, if permitted), SCHED_RR 10, none")
    ap.add_argument("--retries", type=int, default=None,
                    help="runs disturbed by other processes (> 20%% of a CPU) are done again this many times "
                         "(default 1; smoke 0)")
    ap.add_argument("--results", default=os.path.join(ROOT, "bench", "results"),
                    help="output directory (default bench/results)")
    ap.add_argument("--report-from", help="only write the report, from a latest.json or runs.partial.jsonl")
    ap.add_argument("--merge", help="a previous latest.json: its runs of the workloads not run now join the report")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args()

    RESULTS = os.path.abspath(a.results)
    PRIORITY["sched"] = a.sched
    P = params(a.smoke)
    if a.quiet_wait is None:
        a.quiet_wait = 0 if a.smoke else 10
    if a.retries is None:
        a.retries = 0 if a.smoke else 1
    if a.repeat:
        P["repeat"] = a.repeat
    if a.duration:
        P["duration"] = a.duration
    if a.hist_sizes:
        P["hist_sizes"] = a.hist_sizes
    only = set(a.only.split(","))
    cmdline = "python3 bench/run.py" + ("" if len(sys.argv) == 1 else " " + " ".join(sys.argv[1:]))
    t0 = time.time()
    if a.report_from:
        # no measurement: a report from saved runs
        import types
        if a.report_from.endswith(".jsonl"):
            with open(a.report_from) as f:
                recs = [json.loads(line) for line in f if line.strip()]
            prev = {}
        else:
            with open(a.report_from) as f:
                prev = json.load(f)
            recs = prev["runs"]
            P = prev.get("params", P)
            cmdline = prev.get("command", cmdline)
        cpus = sorted(os.sched_getaffinity(0))
        R = types.SimpleNamespace(records=recs, broker_cpu=cpus[0], gen_cpu=cpus[1] if len(cpus) > 1 else None)
        info = prev.get("machine") or machine_info(tempfile.gettempdir())
    else:
        R = Runner(a)
        if a.awake:
            start_spinners()
        info = machine_info(R.workdir)
        info["plugin"] = R.plugin
        info["awake_spinners"] = bool(a.awake)
        info["sched"] = a.sched
        log(f"work directory {R.workdir}; broker CPU {R.broker_cpu}, generator CPU {R.gen_cpu}; {P['repeat']} repeat(s)")
        try:
            run_all(R, P, only)
        finally:
            R.cleanup()
    if a.merge:
        with open(a.merge) as f:
            prev = json.load(f)
        ran = {r.get("workload") for r in R.records}
        if "history" in ran:
            ran.add("history-seed")
        kept = [r for r in prev["runs"] if r.get("workload") not in ran]
        R.records.extend(kept)
        cmdline += f"  (+ {len(kept)} runs of {', '.join(sorted({r.get('workload') for r in kept}))} from " \
                   f"`{prev.get('command')}`, {prev.get('machine', {}).get('commit', '?')})"
    rows, fs_lmdb, fs_raw = figures(R.records, P)
    checks = targets_check(rows, fs_lmdb)
    elapsed = (prev.get("elapsed_s") or 0) if a.report_from else time.time() - t0
    md = write_report(R, P, rows, fs_lmdb, fs_raw, checks, info, cmdline, elapsed)
    charts(R, rows)
    print(md)
    log(f"done in {(time.time() - t0) / 60:.1f} min: {RESULTS}/latest.md, latest.json, *.png")


if __name__ == "__main__":
    main()
