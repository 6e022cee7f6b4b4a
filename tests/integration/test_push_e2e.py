"""Offline push end to end: mosquitto + the plugin, the real bridge, and loopback stand-ins for
APNs (HTTP/2 + TLS, checks the ES256 JWT), FCM (OAuth RS256 grant + v1 send) and a webhook (HMAC).

Users register push devices with devices.register, go offline, and other members write to them;
the notifications the providers receive are what is asserted.
"""
from __future__ import annotations

import secrets
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "tests" / "bridge"))

from harness import Bridge  # noqa: E402
from providers import ApnsServer, FcmServer, Pki, Reply, WebhookServer  # noqa: E402

BRIDGE_USER = "push-bridge"
WINDOW_MS = 300
RETRY_MS = 2000


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def providers(pki):
    apns, fcm, hook = ApnsServer(pki), FcmServer(pki), WebhookServer()
    yield apns, fcm, hook
    for s in (apns, fcm, hook):
        s.close()
    for s in (apns, fcm, hook):
        assert not s.errors, f"a provider stand-in saw a malformed request: {s.errors}"


@pytest.fixture
def push_broker(make_broker):
    return make_broker(opts={"push_users": BRIDGE_USER, "push_window_ms": str(WINDOW_MS),
                             "push_retry_ms": str(RETRY_MS), "presence_grace_ms": "0"})


@pytest.fixture
def bridge(tmp_path, push_broker, providers, pki):
    apns, fcm, hook = providers
    made = []

    def start():
        b = Bridge(tmp_path / "bridge", push_broker.port, fcm=fcm, apns=apns, webhook=hook, pki=pki,
                   username=BRIDGE_USER, mqtt_client_id=f"bridge-{secrets.token_hex(3)}").start()
        made.append(b)
        b.wait_log(r"mqtt: taking jobs from")
        return b

    yield start
    for b in made:
        b.cleanup()


def apns_token():
    return secrets.token_hex(32)


def offline_with_device(broker, user, platform, token, **kw):
    """user registers a push device, then every device of theirs disconnects."""
    c = broker.client(user, protocol=5)
    c.ok("devices.register", platform=platform, token=token, **kw)
    return c


def wait_quiet(seconds):
    """Lets the coalescing window, retries or re-sends run their course before asserting "no more"."""
    time.sleep(seconds)


def test_offline_member_gets_exactly_one_push_online_member_none(push_broker, bridge, providers, users):
    apns, fcm, hook = providers
    a, b, c = users("alice", "bob", "carol")
    bridge()
    tb, tc = apns_token(), "fcm:" + secrets.token_urlsafe(20)
    bob = offline_with_device(push_broker, b, "apns", tb, locale="en")
    carol = offline_with_device(push_broker, c, "fcm", tc)
    alice = push_broker.client(a, protocol=5)
    g = alice.create_group("team", [b, c])
    carol.sub_conv(g)                 # carol stays connected
    bob.disconnect()
    assert alice.send(g, "hello bob").rc in alice.ok_codes
    assert apns.wait_for(lambda: apns.accepted(tb), timeout=10)
    req = apns.accepted(tb)[0]
    aps = req.json["aps"]
    assert aps["alert"]["title"] == "team" and "hello bob" in aps["alert"]["body"]
    assert aps["badge"] == 2          # the created message and "hello bob"
    assert req.headers["apns-topic"] == apns.topic
    carol.expect_message(g)           # carol had it live
    wait_quiet(RETRY_MS / 1000 + 1)   # acked: not re-sent after push_retry_ms
    assert len(apns.accepted(tb)) == 1
    assert fcm.for_token(tc) == [], "carol was online: no push"


def test_burst_is_coalesced_into_one_notification(push_broker, bridge, providers, users):
    apns, fcm, hook = providers
    a, b = users("alice", "bob")
    bridge()
    tb = apns_token()
    bob = offline_with_device(push_broker, b, "apns", tb)
    alice = push_broker.client(a, protocol=4)
    d = alice.create_direct(b)
    bob.disconnect()
    for i in range(5):
        assert alice.send(d, f"burst {i}").rc in alice.ok_codes
    assert apns.wait_for(lambda: apns.accepted(tb), timeout=10)
    wait_quiet(1.0)
    got = apns.accepted(tb)
    assert len(got) == 1, [r.json for r in got]
    assert got[0].json["aps"]["alert"]["body"] == "burst 4"
    assert got[0].json["aps"]["alert"]["title"] == a


def test_muted_conversation_and_preview_off(push_broker, bridge, providers, users):
    apns, fcm, hook = providers
    a, b = users("alice", "bob")
    bridge()
    tb = "hook-" + secrets.token_hex(6)
    bob = offline_with_device(push_broker, b, "webhook", tb)
    alice = push_broker.client(a, protocol=5)
    g1 = alice.create_group("muted", [b])
    g2 = alice.create_group("private", [b])
    assert bob.ok("conv.mute", conv=g1, muted=True)["muted"] is True
    assert bob.ok("conv.preview", conv=g2, preview=False)["preview"] is False
    bob.disconnect()
    alice.send(g1, "you won't hear this")
    alice.send(g2, "secret text")
    assert hook.wait_for(lambda: hook.accepted(tb), timeout=10)
    wait_quiet(1.0)
    got = hook.accepted(tb)
    assert len(got) == 1
    body = got[0].json
    assert body["conv"] == g2 and body["preview"] is None
    assert "secret" not in got[0].body.decode()


def test_provider_500_then_200_is_retried(push_broker, bridge, providers, users):
    apns, fcm, hook = providers
    a, b = users("alice", "bob")
    bridge()
    tb = "fcm:" + secrets.token_urlsafe(20)
    fcm.script(tb, [Reply(500), Reply(200)])
    bob = offline_with_device(push_broker, b, "fcm", tb)
    alice = push_broker.client(a)
    d = alice.create_direct(b)
    bob.disconnect()
    alice.send(d, "try again")
    assert fcm.wait_for(lambda: fcm.accepted(tb), timeout=10)
    assert [r.status for r in fcm.for_token(tb)] == [500, 200]


def test_gone_token_is_unregistered(push_broker, bridge, providers, users):
    apns, fcm, hook = providers
    a, b = users("alice", "bob")
    bridge()
    tb = apns_token()
    apns.script(tb, [Reply(410, body={"reason": "Unregistered"})])
    bob = offline_with_device(push_broker, b, "apns", tb)
    alice = push_broker.client(a)
    d = alice.create_direct(b)
    bob.disconnect()
    alice.send(d, "anyone there?")
    assert apns.wait_for(lambda: apns.for_token(tb), timeout=10)
    bob2 = push_broker.client(b)

    def gone():
        return bob2.ok("devices.list")["devices"] == []
    deadline = time.monotonic() + 10
    while not gone() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert gone(), "a token the provider called gone is forgotten"
    bob2.disconnect()
    alice.send(d, "and now?")
    wait_quiet(1.0)
    assert len(apns.for_token(tb)) == 1, "no push to a forgotten token"


def test_bridge_killed_mid_burst_loses_no_job(push_broker, bridge, providers, users):
    apns, fcm, hook = providers
    n = 12
    names = users(*[f"u{i}" for i in range(n)])
    sender = users("sender")[0]
    toks = {}
    for u in names:
        toks[u] = apns_token()
        offline_with_device(push_broker, u, "apns", toks[u]).disconnect()
    alice = push_broker.client(sender, protocol=5)
    convs = [alice.create_direct(u) for u in names]
    apns.delay = 0.5                  # deliveries in flight when the bridge dies
    first = bridge()
    for d in convs:
        alice.send(d, "important")
    assert apns.wait_for(lambda: len(apns.requests) >= 2, timeout=10)
    first.kill()
    apns.delay = 0.0
    bridge()                          # a new bridge: the plugin re-sends what was not acked
    assert apns.wait_for(lambda: all(apns.accepted(toks[u]) for u in names), timeout=20), \
        {u: len(apns.accepted(toks[u])) for u in names}
    dupes = sum(len(apns.accepted(toks[u])) - 1 for u in names)
    assert dupes <= 2 + 16, "duplicates only for jobs in flight at the kill"


def test_broker_killed_with_jobs_pending_loses_none(push_broker, bridge, providers, users):
    apns, fcm, hook = providers
    a, b, c = users("alice", "bob", "carol")
    tb, tc = apns_token(), apns_token()
    offline_with_device(push_broker, b, "apns", tb).disconnect()
    offline_with_device(push_broker, c, "apns", tc).disconnect()
    alice = push_broker.client(a, protocol=5)
    g = alice.create_group("g", [b, c])
    assert alice.send(g, "before the crash").rc in alice.ok_codes   # acked: message and jobs stored
    push_broker.kill()                 # no bridge ever ran: both jobs are only in LMDB
    push_broker.start()
    bridge()
    assert apns.wait_for(lambda: apns.accepted(tb) and apns.accepted(tc), timeout=15)
    assert "before the crash" in apns.accepted(tb)[0].json["aps"]["alert"]["body"]


def test_device_requests_refusals(push_broker, users):
    b, = users("bob")
    bob = push_broker.client(b, protocol=5)
    bad = dict(schema=False)   # deliberately outside the schema
    bob.err("devices.register", {"platform": "sms", "token": "x"}, code="invalid_field", **bad)
    bob.err("devices.register", {"platform": "apns", "token": "a b"}, code="invalid_field", **bad)
    bob.err("devices.register", {"platform": "apns", "token": "x" * 401}, code="invalid_field", **bad)
    bob.err("devices.register", {"platform": "apns", "token": "t", "locale": "en US"}, code="invalid_field", **bad)
    bob.err("devices.register", {"platform": "apns", "token": "t", "extra": 1}, code="unknown_field", **bad)
    for i in range(10):
        bob.ok("devices.register", platform="fcm", token=f"tok{i}")
    bob.err("devices.register", {"platform": "fcm", "token": "tok10"}, code="too_many_devices")
    assert bob.ok("devices.register", platform="fcm", token="tok3")["device"]["token"] == "tok3"  # re-register: fine
    assert bob.ok("devices.unregister", platform="fcm", token="tok3")["removed"] is True
    assert bob.ok("devices.unregister", platform="fcm", token="tok3")["removed"] is False
    assert len(bob.ok("devices.list")["devices"]) == 9
    bob.err("conv.mute", {"conv": "g_nope", "muted": True}, code="not_member")
    # a token registered by another user moves to them
    c, = users("carol")
    carol = push_broker.client(c, protocol=4)
    carol.ok("devices.register", platform="fcm", token="tok4")
    assert "tok4" not in [d["token"] for d in bob.ok("devices.list")["devices"]]


def test_only_the_bridge_reads_jobs(push_broker, users):
    b, = users("bob")
    bob = push_broker.client(b, protocol=5)
    assert bob.subscribe("chat/push/jobs") == [bob.sub_refused]
    spy = push_broker.client(BRIDGE_USER, protocol=5)
    assert spy.subscribe("chat/push/jobs") == [1]
    assert bob.publish("chat/push/ack", {"id": 1, "result": "delivered"}) == bob.refused_code
