"""Operator stats: the plugin's retained {prefix}/stats (plugin/stats.c, schema/stats.json) and
the Prometheus exporter (tools/prometheus_exporter.py).

A real broker publishes the stats every 200 ms here; tests read them as an observer, check
that counters move with sends, refusals and requests, that nobody else can read or write the
topic, and that the exporter turns them into parseable Prometheus text."""
from __future__ import annotations

import re
import subprocess
import sys
import time
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import OBSERVER, ROOT, free_port, wait_until
from schema_check import validate

INTERVAL_MS = 200
BROKER_OPTS = {"observers": f"{OBSERVER},audit", "stats_interval_ms": INTERVAL_MS, "map_size": "64M"}
BROKER_ACL = ["pattern readwrite #"]  # topics outside the prefix: everyone (so '#' is granted)
EXPORTER = ROOT / "tools" / "prometheus_exporter.py"


def project_version() -> str:
    m = re.search(r"project\(mosquitto-chat VERSION ([0-9.]+)", (ROOT / "CMakeLists.txt").read_text())
    return m.group(1)


def latest_stats(obs, after_ts: int = 0, timeout: float = 5.0) -> dict:
    """The newest report with ts > after_ts (every report is validated against the schema)."""
    deadline = time.monotonic() + timeout
    while True:
        msgs = obs.drain("chat/stats")
        for m in msgs:
            validate("stats", m.json)
        fresh = [m.json for m in msgs if m.json["ts"] > after_ts]
        if fresh:
            return fresh[-1]
        assert time.monotonic() < deadline, f"no stats report after ts {after_ts} within {timeout}s"
        time.sleep(INTERVAL_MS / 4000)


def stats_until(obs, pred, timeout: float = 5.0) -> dict:
    deadline = time.monotonic() + timeout
    last = latest_stats(obs)
    while not pred(last):
        assert time.monotonic() < deadline, f"stats never satisfied the condition; last: {last}"
        last = latest_stats(obs, after_ts=last["ts"])
    return last


@pytest.fixture
def observer(broker):
    obs = broker.client(OBSERVER, auto_sub=False)
    assert obs.subscribe("chat/stats") == [1]
    return obs


def test_stats_appear_retained_and_valid(broker, observer):
    first = latest_stats(observer)
    assert first["version"] == project_version()
    st = first["store"]
    assert st["map_bytes"] == 64 << 20
    assert 0 < st["map_used_bytes"] <= st["map_bytes"]
    assert 0 < st["map_used_pct"] <= 100
    assert st["file_bytes"] > 0 and st["disk_bytes"] > 0
    assert st["push_outbox"] == 0
    second = latest_stats(observer, after_ts=first["ts"])
    # the reports keep coming, about one per interval
    assert second["uptime_s"] >= first["uptime_s"]
    assert second["interval_ms"] >= INTERVAL_MS
    # retained: a late observer gets the latest at once, flagged retained
    late = broker.client("audit", auto_sub=False)
    assert late.subscribe("chat/stats") == [1]
    m = late.expect_msg("chat/stats", timeout=2)
    assert m.retain
    validate("stats", m.json)


def test_counters_move_with_traffic(broker, observer, users):
    alice, bob, eve = users("alice", "bob", "eve")
    base = latest_stats(observer)
    a = broker.client(alice)
    b = broker.client(bob)
    e = broker.client(eve)
    conv = a.create_group("stats", [bob])
    for i in range(3):
        assert a.send(conv, f"m{i}").rc in a.ok_codes
    assert b.send(conv, "reply").rc in b.ok_codes
    # refusals: two not_member (eve is outside), one invalid_json
    assert e.send(conv, "intruder").rc == e.refused_code
    assert e.send(conv, "again").rc == e.refused_code
    assert a.publish(f"chat/send/{conv}", b"{nope") == a.refused_code
    # requests: one history ok, one unknown op
    b.history(conv)
    b.err("no.such.op", code="unknown_op", schema=False)

    def moved(s):
        return (s["messages"]["total"] - base["messages"]["total"] >= 4
                and s["refusals"]["by_code"].get("not_member", 0) - base["refusals"]["by_code"].get("not_member", 0) >= 2
                and s["refusals"]["by_code"].get("invalid_json", 0) - base["refusals"]["by_code"].get("invalid_json", 0) >= 1
                and s["history_requests"]["total"] - base["history_requests"]["total"] >= 1
                and s["request_errors"]["by_code"].get("unknown_op", 0) >= 1
                and s["devices"] >= 3 and s["users_online"] >= 3)

    s = stats_until(observer, moved)
    assert s["messages"]["total"] - base["messages"]["total"] == 4
    assert s["refusals"]["total"] - base["refusals"]["total"] == 3
    # conv.create + history + unknown op
    assert s["requests"]["total"] - base["requests"]["total"] == 3
    assert s["history_requests"]["total"] - base["history_requests"]["total"] == 1
    # the rate of some report since base saw the 4 messages
    assert s["store"]["map_used_bytes"] >= base["store"]["map_used_bytes"]
    # each send looked its conversation and the sender's membership up in the read cache: the first of each missed
    # (and filled it), the later ones hit
    c, c0 = s["store"]["cache"], base["store"]["cache"]
    assert c["hits"] - c0["hits"] >= 4, (c0, c)
    assert c["misses"] > c0["misses"] and c["entries"] >= 2 and c["bytes"] > 0 and c["clears"] == 0, (c0, c)

    # devices go when their connections end
    for c in (a, b, e):
        c.disconnect()
    s = stats_until(observer, lambda x: x["devices"] <= base["devices"] and x["users_online"] <= base["users_online"])
    assert s["messages"]["per_s"] == 0


def test_rates_cover_the_interval(broker, observer, users):
    alice, bob = users("alice", "bob")
    a = broker.client(alice)
    conv = a.create_direct(bob)
    before = latest_stats(observer)
    for i in range(10):
        a.send(conv, f"r{i}")
    # the 10 sends fall into one or more intervals: the per_s of those reports times their
    # interval adds up to the messages counted
    seen = 0.0
    s = before
    while s["messages"]["total"] - before["messages"]["total"] < 10:
        s = latest_stats(observer, after_ts=s["ts"])
        seen += s["messages"]["per_s"] * s["interval_ms"] / 1000.0
    s = latest_stats(observer, after_ts=s["ts"])
    assert s["messages"]["total"] - before["messages"]["total"] == 10
    # reports may be missed by drain() only if none were; per_s is rounded to 0.01/s
    assert seen == pytest.approx(10, abs=1.0)


def test_only_observers_read_nobody_writes(broker, observer, users):
    (mallory,) = users("mallory")
    m5 = broker.client(mallory)
    m4 = broker.client(mallory, protocol=4)
    assert m5.subscribe("chat/stats") == [m5.sub_refused]
    assert m4.subscribe("chat/stats") == [m4.sub_refused]
    # a '#' subscription is deferred to other plugins, but no report (retained or live) reaches it
    assert m5.subscribe("#") == [1]
    m5.publish("outside/probe", b"probe")
    assert m5.expect_msg("outside/probe").payload == b"probe", "the '#' subscription is live"
    assert m5.subscribe("chat/#") == [m5.sub_refused]
    m5.expect_none("chat/stats", wait=3 * INTERVAL_MS / 1000)
    # nobody publishes on the stats topic: users, observers
    assert m5.publish("chat/stats", {"version": "forged"}, retain=True) == m5.refused_code
    obs5 = broker.client("audit", auto_sub=False)
    assert obs5.publish("chat/stats", {"version": "forged"}, retain=True) == obs5.refused_code
    time.sleep(2 * INTERVAL_MS / 1000)
    for msg in observer.drain("chat/stats"):
        assert msg.json.get("version") != "forged", msg
    # an anonymous connection gets nothing either
    anon = broker.client(None, auto_sub=False)
    assert anon.subscribe("chat/stats") == [anon.sub_refused]


def test_interval_zero_turns_stats_off(make_broker):
    br = make_broker(opts={"observers": OBSERVER, "stats_interval_ms": 0})
    obs = br.client(OBSERVER, auto_sub=False)
    assert obs.subscribe("chat/stats") == [1]
    obs.expect_none("chat/stats", wait=1.0)


@pytest.mark.parametrize("value", ["-1", "1.5", "10s", "abc", "86400001"])
def test_bad_interval_stops_the_broker(make_broker, value):
    br = make_broker(opts={"stats_interval_ms": value}, start=False)
    rc, log = br.start_expect_exit()
    assert rc != 0
    assert [ln for ln in log.splitlines() if "mosquitto-chat" in ln and "stats_interval_ms" in ln], log[-2000:]


# --------------------------------------------------------------------------- exporter

class Exporter:
    def __init__(self, broker, user: str):
        self.port = free_port()
        self.proc = subprocess.Popen(
            [sys.executable, str(EXPORTER), "--mqtt-host", broker.host, "--mqtt-port", str(broker.port),
             "--user", user, "--client-id", f"exporter-{self.port}", "--listen", f"127.0.0.1:{self.port}"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def get(self, path: str = "/metrics") -> tuple[int, str, str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}{path}", timeout=5) as r:
            return r.status, r.headers.get("Content-Type"), r.read().decode()

    def metrics(self) -> dict:
        _, _, text = self.get()
        out = {}
        for fam in text_string_to_metric_families(text):
            for s in fam.samples:
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
        return out

    def close(self) -> str:
        self.proc.terminate()
        _, err = self.proc.communicate(timeout=10)
        return err


def _reachable(ex: Exporter):
    try:
        return ex.metrics()
    except OSError:
        return None


def test_exporter_serves_parseable_metrics(broker, users):
    alice, bob, eve = users("alice", "bob", "eve")
    ex = Exporter(broker, OBSERVER)
    try:
        m = wait_until(lambda: (x := _reachable(ex)) and x.get(("chat_up", ())) == 1 and x, timeout=10,
                       what="chat_up 1")
        status, ctype, text = ex.get()
        assert status == 200 and ctype.startswith("text/plain; version=0.0.4")
        assert ("chat_info", (("version", project_version()),)) in m
        base = m[("chat_messages_stored_total", ())]
        a = broker.client(alice)
        e = broker.client(eve)
        conv = a.create_direct(bob)
        a.send(conv, "one")
        a.send(conv, "two")
        e.send(conv, "no")
        m = wait_until(lambda: (x := ex.metrics())[("chat_messages_stored_total", ())] >= base + 2
                       and x.get(("chat_refusals_total", (("code", "not_member"),)), 0) >= 1 and x,
                       timeout=10, what="the exporter to show the sends")
        assert m[("chat_messages_stored_total", ())] == base + 2
        assert m[("chat_devices", ())] >= 2
        assert 0 < m[("chat_store_map_used_ratio", ())] <= 1
        assert m[("chat_store_map_bytes", ())] == 64 << 20
        for name in ("chat_uptime_seconds", "chat_users_online", "chat_requests_total", "chat_history_requests_total",
                     "chat_store_file_bytes", "chat_store_disk_bytes", "chat_store_map_used_bytes",
                     "chat_push_outbox_jobs", "chat_stats_age_seconds", "chat_cache_hits_total",
                     "chat_cache_misses_total", "chat_cache_clears_total", "chat_cache_entries", "chat_cache_bytes"):
            assert (name, ()) in m, name
        with pytest.raises(urllib.error.HTTPError):
            ex.get("/other")
    finally:
        ex.close()


def test_exporter_as_non_observer_reports_down(broker, users):
    (nobody,) = users("nobody")
    ex = Exporter(broker, nobody)
    try:
        wait_until(lambda: _reachable(ex) is not None, timeout=10, what="the exporter to listen")
        time.sleep(3 * INTERVAL_MS / 1000)
        assert ex.metrics() == {("chat_up", ()): 0}
    finally:
        err = ex.close()
    assert "refused" in err and "plugin_opt_observers" in err, err
