"""Delivery to the three providers: auth, headers, payloads, retries, permanent errors."""
from __future__ import annotations

import json
import re
import time

from harness import make_job
from providers import Reply, fcm_error


def test_one_device_per_platform_delivered_once(start_bridge, plugin, apns, fcm, webhook, tokens):
    bridge = start_bridge()
    ta, tf, tw = tokens.apns(), tokens.fcm(), tokens.webhook()
    job = make_job([("apns", ta), ("fcm", tf), ("webhook", tw)], conv="g_team1", conv_name="team",
                   sender="alice", preview="hello", badge=5, seq=42, count=1)
    plugin.publish_job(job)

    ack = plugin.wait_ack(job["id"])
    assert ack == {"id": job["id"], "result": "delivered"}
    time.sleep(0.3)     # anything more would be a duplicate
    assert len(plugin.acks_for(job["id"])) == 1

    # APNs: one HTTP/2 request, token auth, headers and payload as Apple wants them.
    (a,) = apns.for_token(ta)
    assert a.headers["apns-topic"] == "org.example.chat"
    assert a.headers["apns-push-type"] == "alert"
    assert a.headers["apns-priority"] == "10"
    assert a.headers["apns-collapse-id"] == "g_team1"
    assert a.json == {"aps": {"alert": {"title": "team", "body": "alice: hello"}, "badge": 5,
                              "thread-id": "g_team1", "sound": "default"}, "conv": "g_team1", "seq": 42}

    # FCM: one grant, then the message with the bearer token it gave.
    (f,) = fcm.for_token(tf)
    assert len(fcm.grants) == 1 and f.auth == fcm.issued[0]
    assert f.json == {"message": {
        "token": tf,
        "notification": {"title": "team", "body": "alice: hello"},
        "data": {"conv": "g_team1", "seq": "42", "from": "alice", "count": "1"},
        "android": {"collapse_key": "g_team1"},
        "apns": {"payload": {"aps": {"badge": 5}}},
    }}

    # Webhook: the job for that one device, signed (the server checked the HMAC).
    (w,) = webhook.for_token(tw)
    body = w.json
    assert body["id"] == job["id"] and body["user"] == "bob" and body["conv"] == "g_team1"
    assert body["devices"] == [{"platform": "webhook", "token": tw, "locale": "en"}]
    assert body["notification"] == {"title": "team", "body": "alice: hello"}
    assert re.fullmatch(r"sha256=[0-9a-f]{64}", w.headers["X-Chat-Signature"])

    assert apns.errors == [] and fcm.errors == [] and webhook.errors == []
    st = plugin.wait_status(lambda s: s.get("acked") == 1 and s.get("in_flight") == 0)
    assert st["delivered"] == 3 and st["received"] == 1 and st["jobs_delivered"] == 1
    assert st["_retained"] is False or st["state"] == "running"
    log = bridge.log()
    for platform, token in (("apns", ta), ("fcm", tf), ("webhook", tw)):
        assert re.search(rf"delivery job={job['id']} user=bob platform={platform} token={re.escape(token[:8])}\S* "
                         rf"status=200 result=delivered tries=1 latency_ms=\d+", log), log


def test_notification_text(start_bridge, plugin, apns, fcm, webhook, tokens):
    """Direct chats show the sender as title; without preview, a count."""
    start_bridge()
    cases = [
        (dict(type="direct", conv="d_ab", conv_name=None, sender="alice", preview="hi bob", count=1),
         ("alice", "hi bob")),
        (dict(type="direct", conv="d_ab", conv_name=None, sender="alice", preview=None, count=1),
         ("alice", "New message")),
        (dict(type="group", conv="g_x", conv_name="climbers", sender="carol", preview=None, count=3),
         ("climbers", "3 new messages")),
        (dict(type="group", conv="g_x", conv_name="climbers", sender="carol", preview="ça va ? 🧗", count=2),
         ("climbers", "carol: ça va ? 🧗")),
    ]
    for kw, (title, body) in cases:
        ta, tf, tw = tokens.apns(), tokens.fcm(), tokens.webhook()
        job = make_job([("apns", ta), ("fcm", tf), ("webhook", tw)], **kw)
        plugin.publish_job(job)
        assert plugin.wait_ack(job["id"])["result"] == "delivered"
        assert apns.for_token(ta)[0].json["aps"]["alert"] == {"title": title, "body": body}
        assert fcm.for_token(tf)[0].json["message"]["notification"] == {"title": title, "body": body}
        assert webhook.for_token(tw)[0].json["notification"] == {"title": title, "body": body}
    assert apns.errors == [] and fcm.errors == [] and webhook.errors == []


def test_500_then_200_is_retried(start_bridge, plugin, apns, fcm, webhook, tokens):
    bridge = start_bridge()
    ta, tf, tw = tokens.apns(), tokens.fcm(), tokens.webhook()
    for server, token in ((apns, ta), (fcm, tf), (webhook, tw)):
        server.script(token, [500, 200])
    job = make_job([("apns", ta), ("fcm", tf), ("webhook", tw)])
    plugin.publish_job(job)
    assert plugin.wait_ack(job["id"]) == {"id": job["id"], "result": "delivered"}
    for server, token, platform in ((apns, ta, "apns"), (fcm, tf, "fcm"), (webhook, tw, "webhook")):
        reqs = server.for_token(token)
        assert [r.status for r in reqs] == [500, 200], platform
        assert re.search(rf"platform={platform} \S+ status=500 result=retry tries=1 .*retry_in_ms=\d+", bridge.log())
        assert re.search(rf"platform={platform} \S+ status=200 result=delivered tries=2 ", bridge.log())
    st = plugin.wait_status(lambda s: s.get("acked") == 1)
    assert st["retried"] == 3 and st["delivered"] == 3
    assert apns.errors == [] and fcm.errors == [] and webhook.errors == []


def test_429_retry_after_is_honoured(start_bridge, plugin, apns, fcm, webhook, tokens):
    # backoff at most 100 ms: only Retry-After can explain a 1 s wait
    start_bridge(backoff_base_ms=20, backoff_max_ms=100)
    ta, tf, tw = tokens.apns(), tokens.fcm(), tokens.webhook()
    apns.script(ta, [Reply(429, headers={"Retry-After": "1"}), 200])
    fcm.script(tf, [Reply(429, fcm_error(429, "RESOURCE_EXHAUSTED", error_code="QUOTA_EXCEEDED").body,
                          headers={"Retry-After": "1"}), 200])
    webhook.script(tw, [Reply(503, headers={"Retry-After": "1"}), 200])
    job = make_job([("apns", ta), ("fcm", tf), ("webhook", tw)])
    plugin.publish_job(job)
    assert plugin.wait_ack(job["id"])["result"] == "delivered"
    for server, token in ((apns, ta), (fcm, tf), (webhook, tw)):
        first, second = server.for_token(token)
        assert first.status in (429, 503) and second.status == 200
        gap = second.received - first.answered
        assert 0.9 <= gap < 3.0, (token, gap)


def test_permanent_errors_unregister_tokens(start_bridge, plugin, apns, fcm, webhook, tokens):
    start_bridge()
    gone = {
        "apns": [tokens.apns(), tokens.apns(), tokens.apns()],
        "fcm": [tokens.fcm(), tokens.fcm(), tokens.fcm()],
        "webhook": [tokens.webhook()],
    }
    apns.script(gone["apns"][0], [410])
    apns.script(gone["apns"][1], [Reply(400, {"reason": "BadDeviceToken"})])
    apns.script(gone["apns"][2], [Reply(400, {"reason": "DeviceTokenNotForTopic"})])
    fcm.script(gone["fcm"][0], [fcm_error(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED")])
    fcm.script(gone["fcm"][1], [fcm_error(400, "INVALID_ARGUMENT",
                                          "The registration token is not a valid FCM registration token",
                                          "INVALID_ARGUMENT")])
    fcm.script(gone["fcm"][2], [fcm_error(400, "INVALID_ARGUMENT", "Unregistered", "UNREGISTERED")])
    webhook.script(gone["webhook"][0], [410])
    # refused for good but not about the token: failed, token kept
    kept_apns, kept_fcm, kept_hook = tokens.apns(), tokens.fcm(), tokens.webhook()
    apns.script(kept_apns, [Reply(400, {"reason": "PayloadTooLarge"})])
    fcm.script(kept_fcm, [fcm_error(403, "PERMISSION_DENIED", "SenderId mismatch", "SENDER_ID_MISMATCH")])
    webhook.script(kept_hook, [404])
    ok = tokens.apns()

    devices = [(p, t) for p, ts in gone.items() for t in ts] + [("apns", kept_apns), ("fcm", kept_fcm),
                                                                  ("webhook", kept_hook), ("apns", ok)]
    job = make_job(devices)
    plugin.publish_job(job)
    ack = plugin.wait_ack(job["id"])
    assert ack["result"] == "failed"       # some delivered, some not
    assert sorted((u["platform"], u["token"]) for u in ack["unregister"]) == \
        sorted((p, t) for p, ts in gone.items() for t in ts)
    for server, token in ((apns, kept_apns), (fcm, kept_fcm), (webhook, kept_hook)):
        assert len(server.for_token(token)) == 1        # not retried

    # Every device gone: "dead".
    t1, t2 = tokens.apns(), tokens.webhook()
    apns.script(t1, [410])
    webhook.script(t2, [410])
    job2 = make_job([("apns", t1), ("webhook", t2)])
    plugin.publish_job(job2)
    ack2 = plugin.wait_ack(job2["id"])
    assert ack2["result"] == "dead"
    assert sorted(u["token"] for u in ack2["unregister"]) == sorted([t1, t2])
    st = plugin.wait_status(lambda s: s.get("acked") == 2)
    assert st["unregistered"] == 9 and st["failed"] == 12 and st["delivered"] == 1
    assert st["jobs_failed"] == 1 and st["jobs_dead"] == 1
    assert apns.errors == [] and fcm.errors == [] and webhook.errors == []


def test_max_tries_exhausted_is_dead(start_bridge, plugin, apns, fcm, webhook, tokens):
    bridge = start_bridge(max_tries=3)
    ta, tf, tw = tokens.apns(), tokens.fcm(), tokens.webhook()
    for server, token in ((apns, ta), (fcm, tf), (webhook, tw)):
        server.script(token, [503] * 10)
    job = make_job([("apns", ta), ("fcm", tf), ("webhook", tw)])
    plugin.publish_job(job)
    ack = plugin.wait_ack(job["id"])
    assert ack == {"id": job["id"], "result": "dead"}      # no unregister: tokens are fine
    for server, token in ((apns, ta), (fcm, tf), (webhook, tw)):
        assert server.wait_for(lambda: [r.status for r in server.for_token(token)] == [503, 503, 503], 2), \
            server.for_token(token)
    st = plugin.wait_status(lambda s: s.get("acked") == 1)
    assert st["dead"] == 3 and st["jobs_dead"] == 1 and st["retried"] == 6 and st["delivered"] == 0
    assert len(re.findall(r"result=dead tries=3", bridge.log())) == 3


def test_tokens_are_fetched_once_and_reused(start_bridge, plugin, apns, fcm, webhook, tokens):
    start_bridge()
    jobs = []
    # a burst: the first FCM sends wait for the one token request
    for _ in range(10):
        jobs.append(make_job([("apns", tokens.apns()), ("fcm", tokens.fcm())]))
        plugin.publish_job(jobs[-1])
    plugin.wait_acks([j["id"] for j in jobs])
    # then more, one by one
    for _ in range(3):
        j = make_job([("apns", tokens.apns()), ("fcm", tokens.fcm())])
        plugin.publish_job(j)
        plugin.wait_ack(j["id"])
        jobs.append(j)
    assert all(a["result"] == "delivered" for a in plugin.acks)
    assert len(fcm.grants) == 1
    assert {r.auth for r in fcm.requests} == {fcm.issued[0]}
    assert len(apns.jwts) == 1 and len(apns.requests) == 13
    assert apns.connections == 1, "APNs requests should share one HTTP/2 connection"
    assert fcm.connections <= 1 + 16, fcm.connections   # one for the grant, kept-alive sends
    st = plugin.wait_status(lambda s: s.get("acked") == 13)
    assert st["fcm_tokens"] == 1 and st["apns_jwts"] == 1
    assert apns.errors == [] and fcm.errors == [] and webhook.errors == []


def test_refused_fcm_token_is_renewed(start_bridge, plugin, fcm, tokens):
    start_bridge()
    j1 = make_job([("fcm", tokens.fcm())])
    plugin.publish_job(j1)
    assert plugin.wait_ack(j1["id"])["result"] == "delivered"
    fcm.revoke_all()
    tf = tokens.fcm()
    j2 = make_job([("fcm", tf)])
    plugin.publish_job(j2)
    assert plugin.wait_ack(j2["id"])["result"] == "delivered"
    assert [r.status for r in fcm.for_token(tf)] == [401, 200]
    assert len(fcm.grants) == 2
    assert fcm.errors == []


def test_expired_apns_provider_token_is_renewed(start_bridge, plugin, apns, tokens):
    start_bridge()
    ta = tokens.apns()
    apns.script(ta, [Reply(403, {"reason": "ExpiredProviderToken"}), 200])
    j = make_job([("apns", ta)])
    plugin.publish_job(j)
    assert plugin.wait_ack(j["id"])["result"] == "delivered"
    assert len(apns.jwts) in (1, 2)     # same second → the same JWT text is possible
    assert apns.errors == []


def test_duplicate_jobs(start_bridge, plugin, webhook, tokens):
    """A copy of a job in flight is ignored; a copy of a job just acked is acked again, not delivered."""
    start_bridge()
    webhook.delay = 0.5
    tw = tokens.webhook()
    job = make_job([("webhook", tw)])
    plugin.publish_job(job)
    assert webhook.wait_for(lambda: len(webhook.for_token(tw)) == 1, 5)
    plugin.publish_job(job)                 # the plugin's re-send while in flight
    plugin.wait_ack(job["id"])
    time.sleep(0.3)
    assert len(plugin.acks_for(job["id"])) == 1
    plugin.publish_job(job)                 # a re-send crossing the ack
    assert plugin.wait_for(lambda: len(plugin.acks_for(job["id"])) == 2, 5)
    assert plugin.acks_for(job["id"])[1] == plugin.acks_for(job["id"])[0]
    time.sleep(0.3)
    assert len(webhook.for_token(tw)) == 1
    st = plugin.wait_status(lambda s: s.get("duplicates") == 2)
    assert st["received"] == 1


def test_invalid_jobs(start_bridge, plugin, webhook, tokens):
    bridge = start_bridge()
    plugin.publish_job(b"not json")
    plugin.publish_job(json.dumps({"no": "id"}))
    plugin.publish_job({"id": 7001, "user": "bob", "conv": "g_1", "devices": []})
    plugin.publish_job({"id": "job-str", "user": "bob", "conv": "g_1",
                        "devices": [{"platform": "pigeon", "token": "x"}]})
    assert plugin.wait_ack(7001) == {"id": 7001, "result": "failed"}
    assert plugin.wait_ack("job-str") == {"id": "job-str", "result": "dead"}
    # still working
    tw = tokens.webhook()
    j = make_job([("webhook", tw)])
    plugin.publish_job(j)
    assert plugin.wait_ack(j["id"])["result"] == "delivered"
    st = plugin.wait_status(lambda s: s.get("acked") == 3)
    assert st["invalid"] == 3
    assert "job dropped (cannot be acked): not a JSON object" in bridge.log()


def test_apns_background_push(tmp_path, broker, plugin, pki, tokens):
    from harness import Bridge
    from providers import ApnsServer
    apns = ApnsServer(pki, push_type="background")
    bridge = Bridge(tmp_path / "bg", broker.port, apns=apns).start()
    try:
        bridge.wait_log(r"taking jobs from")
        ta = tokens.apns()
        job = make_job([("apns", ta)], conv="g_bg", seq=7)
        plugin.publish_job(job)
        assert plugin.wait_ack(job["id"])["result"] == "delivered"
        (r,) = apns.for_token(ta)
        assert r.headers["apns-priority"] == "5" and r.headers["apns-push-type"] == "background"
        assert r.json == {"aps": {"content-available": 1}, "conv": "g_bg", "seq": 7}
        assert apns.errors == []
    finally:
        bridge.cleanup()
        apns.close()


def test_mqtt_over_tls(tmp_path, pki, webhook, tokens):
    from harness import Bridge, Mosquitto, PluginStandIn, free_port
    tls_port = free_port()
    broker = Mosquitto(tmp_path / "tls-broker", extra=(
        f"listener {tls_port} 127.0.0.1\ncafile {pki.ca_file}\ncertfile {pki.cert_file}\nkeyfile {pki.key_file}"))
    broker.start()
    plugin = PluginStandIn(broker.port)        # the plain listener, for the test's side
    bridge = Bridge(tmp_path / "tls", tls_port, webhook=webhook, mqtt_tls_ca=pki.ca_file).start()
    try:
        bridge.wait_log(r"taking jobs from")
        job = make_job([("webhook", tokens.webhook())])
        plugin.publish_job(job)
        assert plugin.wait_ack(job["id"])["result"] == "delivered"
    finally:
        bridge.cleanup()
        plugin.close()
        broker.stop()


def test_max_jobs_leaves_the_rest_to_the_plugin(start_bridge, plugin, webhook, tokens):
    start_bridge(max_jobs=2)
    webhook.delay = 0.5
    jobs = [make_job([("webhook", tokens.webhook())]) for _ in range(4)]
    for j in jobs:
        plugin.publish_job(j)
    plugin.wait_acks([jobs[0]["id"], jobs[1]["id"]])
    time.sleep(0.3)
    assert plugin.acked_ids() == {jobs[0]["id"], jobs[1]["id"]}
    st = plugin.wait_status(lambda s: s.get("acked") == 2)
    assert st["deferred"] == 2 and st["received"] == 2
    # the plugin's re-send goes through once there is room
    for j in jobs[2:]:
        plugin.publish_job(j)
    plugin.wait_acks([j["id"] for j in jobs])
