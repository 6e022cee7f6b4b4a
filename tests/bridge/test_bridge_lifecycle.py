"""The bridge's life: killed mid-burst, stopped with deliveries in flight, broker restarts."""
from __future__ import annotations

import signal
import time

from harness import PluginStandIn, make_job, slow_factor


def test_sigkill_mid_burst_then_restart_loses_nothing(start_bridge, plugin, apns, webhook, tokens):
    bridge = start_bridge(concurrency=4)
    apns.delay = webhook.delay = 0.25
    jobs = [make_job([("apns", tokens.apns()), ("webhook", tokens.webhook())]) for _ in range(16)]
    for j in jobs:
        plugin.publish_job(j)
    assert plugin.wait_for(lambda: len(plugin.acked_ids()) >= 3, 15)
    bridge.kill()
    time.sleep(0.3)                         # acks already on their way arrive
    acked_before = plugin.acked_ids()
    assert 3 <= len(acked_before) < len(jobs), "the kill should land mid-burst"
    plugin.wait_status(lambda s: s.get("state") == "lost")     # the bridge's will

    start_bridge(concurrency=4)
    # The plugin sends again every job not acked (after push_retry_ms; at once here).
    for j in jobs:
        if j["id"] not in acked_before:
            plugin.publish_job(j)
    plugin.wait_acks([j["id"] for j in jobs], timeout=20)
    assert all(a["result"] == "delivered" for a in plugin.acks)

    duplicated = set()
    for j in jobs:
        for d in j["devices"]:
            server = apns if d["platform"] == "apns" else webhook
            n = len(server.accepted(d["token"]))
            assert n >= 1, f"job {j['id']} never reached {d['platform']}"
            if n > 1:
                duplicated.add(j["id"])
    # Duplicates only for jobs in flight at the kill (never acked), at most the concurrency.
    assert not (duplicated & acked_before), "an acked job was delivered again"
    assert len(duplicated) <= 4, duplicated
    assert apns.errors == [] and webhook.errors == []


def test_sigterm_finishes_deliveries_in_flight(start_bridge, plugin, apns, webhook, tokens):
    bridge = start_bridge(shutdown_grace_ms=5000)
    apns.delay = webhook.delay = 1.0
    jobs = [make_job([("apns", tokens.apns()), ("webhook", tokens.webhook())]) for _ in range(5)]
    for j in jobs:
        plugin.publish_job(j)
    assert apns.wait_for(lambda: len(apns.requests) == 5, 5 * slow_factor())
    assert webhook.wait_for(lambda: len(webhook.requests) == 5, 5 * slow_factor())

    t0 = time.monotonic()
    bridge.signal(signal.SIGTERM)
    bridge.wait_log(r"stopping: 5 job\(s\) in flight")
    late = make_job([("webhook", tokens.webhook())])
    plugin.publish_job(late)                # not taken any more: the plugin will send it again
    rc = bridge.wait(10)
    elapsed = time.monotonic() - t0
    bridge.check_clean(rc)
    assert elapsed < 3 * slow_factor(), elapsed

    plugin.wait_acks([j["id"] for j in jobs], timeout=2)
    assert all(a["result"] == "delivered" for a in plugin.acks)
    assert plugin.acks_for(late["id"]) == []
    assert webhook.for_token(late["devices"][0]["token"]) == []
    final = plugin.wait_status(lambda s: s.get("state") == "stopped")
    assert final["acked"] == 5 and final["in_flight"] == 0 and final["abandoned"] == 0
    # retained: a monitor connecting now still sees it
    late_reader = PluginStandIn(plugin.client._port, client_id="monitor")
    try:
        st = late_reader.wait_status(lambda s: s.get("_retained"), 5)
        assert st["state"] == "stopped" and st["acked"] == 5
    finally:
        late_reader.close()


def test_sigterm_grace_period_is_bounded(start_bridge, plugin, webhook, tokens):
    bridge = start_bridge(shutdown_grace_ms=500)
    webhook.delay = 30
    job = make_job([("webhook", tokens.webhook())])
    plugin.publish_job(job)
    assert webhook.wait_for(lambda: len(webhook.requests) == 1, 5)
    t0 = time.monotonic()
    bridge.signal(signal.SIGTERM)
    rc = bridge.wait(10)
    bridge.check_clean(rc)
    assert time.monotonic() - t0 < 2.5 * slow_factor()
    final = plugin.wait_status(lambda s: s.get("state") == "stopped")
    assert final["abandoned"] == 1 and final["acked"] == 0
    assert plugin.acks_for(job["id"]) == []         # not acked: the plugin keeps it
    assert "grace period over, 1 job(s) not acked" in bridge.log()


def test_broker_restart_and_ack_sent_after_reconnect(start_bridge, broker, plugin, webhook, tokens):
    bridge = start_bridge()
    webhook.delay = 0.5
    job = make_job([("webhook", tokens.webhook())])
    plugin.publish_job(job)
    assert webhook.wait_for(lambda: len(webhook.requests) == 1, 5)
    plugin.close()
    broker.stop()                           # the ack will be made while the broker is away
    assert webhook.wait_for(lambda: webhook.requests[0].answered is not None, 5)
    bridge.wait_log(r"result=delivered")
    time.sleep(0.5)
    broker.start()
    again = PluginStandIn(broker.port)
    try:
        ack = again.wait_ack(job["id"], timeout=15)     # queued by libmosquitto, sent after the reconnect
        assert ack["result"] == "delivered"
        # and the bridge takes jobs again
        assert again.wait_for(lambda: bridge.log().count("taking jobs from") >= 2, 10)
        j2 = make_job([("webhook", tokens.webhook())])
        again.publish_job(j2)
        assert again.wait_ack(j2["id"])["result"] == "delivered"
    finally:
        again.close()


def test_sigterm_leaves_unstarted_jobs_to_the_plugin(start_bridge, plugin, webhook, tokens):
    bridge = start_bridge(concurrency=1)
    webhook.delay = 0.5
    jobs = [make_job([("webhook", tokens.webhook())]) for _ in range(3)]
    for j in jobs:
        plugin.publish_job(j)
    assert webhook.wait_for(lambda: len(webhook.requests) == 1, 5)
    bridge.signal(signal.SIGTERM)
    bridge.check_clean(bridge.wait(10))
    plugin.wait_ack(jobs[0]["id"], timeout=2)
    time.sleep(0.2)
    assert plugin.acked_ids() == {jobs[0]["id"]}
    assert len(webhook.requests) == 1
    final = plugin.wait_status(lambda s: s.get("state") == "stopped")
    assert final["deferred"] == 2 and final["acked"] == 1 and final["in_flight"] == 0
