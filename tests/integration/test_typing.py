"""Typing indicators: stamped, QoS 0, rate-limited, never stored, ended by the plugin after the ttl
or when the user's last device goes (docs/protocol.md, "Typing").

The module broker uses a short interval and ttl so that the timing rules are seen in about a second."""
from __future__ import annotations

import time

import pytest

from helpers import check_outgoing, now_ms

INTERVAL_MS = 300
TTL_MS = 1000
BROKER_OPTS = {"typing_interval_ms": INTERVAL_MS, "typing_ttl_ms": TTL_MS}
TS_SLACK_MS = 50
# the plugin expires typing states on the broker's tick; this bounds how late "idle" may come
TICK_SLACK_MS = 600


def ttopic(conv: str) -> str:
    return f"chat/c/{conv}/typing"


def typing(cl, conv: str, state: str = "typing", qos: int = 0, schema: bool = True, **extra) -> int:
    payload = {"state": state, **extra}
    if schema:
        check_outgoing("typing", payload)
    return cl.publish(f"chat/typing/{conv}", payload, qos=qos)


def assert_typing(t: dict, sender: str, state: str, t0: int, ttl_ms: int = TTL_MS) -> None:
    if state == "typing":
        assert t == {"from": sender, "state": "typing", "ts": t["ts"], "ttl_ms": ttl_ms}, t
    else:
        assert t == {"from": sender, "state": "idle", "ts": t["ts"]}, t
    assert t0 - TS_SLACK_MS <= t["ts"] <= now_ms() + TS_SLACK_MS, f"ts {t['ts']} is not server time now ({t0})"


def expect_refused(cl, rc: int, conv: str | None, code: str) -> None:
    assert rc == cl.refused_code, f"PUBACK {rc:#x}, expected {cl.refused_code:#x}"
    ev = cl.expect_event(pred=lambda e: e["event"] == "send_failed")
    expected = {"event": "send_failed", "code": code}
    if conv is not None:
        expected["conv"] = conv
    assert {k: v for k, v in ev.items() if k != "message"} == expected, ev


@pytest.mark.parametrize("proto", [4, 5], ids=["mqtt311", "mqtt5"])
def test_typing_stamped_qos0_to_every_member(broker, users, proto):
    a, b, c = users("alice", "bob", "carol")
    alice = broker.client(a, protocol=proto)
    bob = broker.client(b, protocol=4)
    carol = broker.client(c, protocol=5, transport="websockets")
    g = alice.create_group("T", [b, c])
    members = [alice, bob, carol]
    for d in members:
        d.sub_conv(g)  # at QoS 1: typing still arrives at QoS 0

    t0 = now_ms()
    assert typing(alice, g) == 0
    first = None
    for d in members:  # every member's device, the typist's own included
        m = d.expect_msg(ttopic(g))
        assert m.qos == 0 and not m.retain, m
        assert_typing(m.json, a, "typing", t0)
        first = first or m.payload
        assert m.payload == first, "every member gets the same stamped event"

    t1 = now_ms()
    assert typing(alice, g, "idle") == 0
    for d in members:
        m = d.expect_msg(ttopic(g))
        assert m.qos == 0, m
        assert_typing(m.json, a, "idle", t1)
    for d in members:
        d.expect_none(ttopic(g), wait=0.2 if d is alice else 0.0)


def test_resends_inside_the_interval_are_absorbed(broker, users):
    a, b = users("alice", "bob")
    alice = broker.client(a)
    bob = broker.client(b, protocol=4)
    g = alice.create_group("T", [b])
    bob.sub_conv(g)

    t0 = now_ms()
    typing(alice, g)
    typing(alice, g)           # inside the interval: absorbed
    typing(alice, g, qos=1)    # QoS 1 is accepted too, and absorbed the same way
    time.sleep((INTERVAL_MS + 100) / 1000)
    t1 = now_ms()
    typing(alice, g)           # past the interval: fanned out again
    typing(alice, g, "idle")
    got = bob.expect_n(ttopic(g), 3)
    assert [x["state"] for x in got] == ["typing", "typing", "idle"], got
    assert_typing(got[0], a, "typing", t0)
    assert t0 - TS_SLACK_MS <= got[0]["ts"] < t1, got
    assert got[1]["ts"] >= got[0]["ts"] + INTERVAL_MS, got
    assert_typing(got[1], a, "typing", t1)
    assert_typing(got[2], a, "idle", t1)
    bob.expect_none(ttopic(g), wait=0.2)


def test_plugin_publishes_idle_when_the_ttl_passes(broker, users):
    a, b = users("alice", "bob")
    alice = broker.client(a)
    bob = broker.client(b, protocol=4)
    g = alice.create_group("T", [b])
    bob.sub_conv(g)

    t0 = now_ms()
    typing(alice, g)
    first = bob.expect(ttopic(g))
    assert_typing(first, a, "typing", t0)
    idle = bob.expect(ttopic(g), timeout=(TTL_MS + 2000) / 1000)
    assert_typing(idle, a, "idle", t0)
    assert first["ts"] + TTL_MS <= idle["ts"] <= first["ts"] + TTL_MS + TICK_SLACK_MS, (first, idle)
    bob.expect_none(ttopic(g), wait=0.3)

    # an absorbed refresh keeps the state alive: "idle" comes a ttl after the last refresh
    typing(alice, g)
    first = bob.expect(ttopic(g))
    time.sleep(0.2)
    t_refresh = now_ms()
    typing(alice, g)  # absorbed (inside the interval), but a refresh
    idle = bob.expect(ttopic(g), timeout=(TTL_MS + 2000) / 1000)
    assert idle["state"] == "idle", idle
    assert t_refresh + TTL_MS <= idle["ts"] <= t_refresh + TTL_MS + TICK_SLACK_MS, (first, t_refresh, idle)


def test_idle_from_the_client_ends_typing(broker, users):
    a, b = users("alice", "bob")
    alice = broker.client(a, protocol=4)
    bob = broker.client(b)
    g = alice.create_group("T", [b])
    bob.sub_conv(g)
    typing(alice, g)
    assert bob.expect(ttopic(g))["state"] == "typing"
    t0 = now_ms()
    typing(alice, g, "idle")
    assert_typing(bob.expect(ttopic(g)), a, "idle", t0)
    # the state is over: no second "idle" when the ttl would have passed
    bob.expect_none(ttopic(g), wait=(TTL_MS + 300) / 1000)


@pytest.mark.parametrize("last_goes", ["kill_socket", "disconnect"])
def test_vanished_typist_gets_idle_when_the_last_device_goes(make_broker, users, last_goes):
    a, b = users("alice", "bob")
    # a long ttl: an "idle" within seconds can only come from the disconnect
    br = make_broker(opts={"typing_interval_ms": INTERVAL_MS, "typing_ttl_ms": 60000})
    phone = br.client(a, protocol=5)
    web = br.client(a, protocol=4, transport="websockets")
    bob = br.client(b, protocol=4)
    g = phone.create_group("T", [b])
    g2 = phone.create_group("T2", [b])
    bob.sub_conv(g, g2)
    t0 = now_ms()
    typing(phone, g)
    typing(web, g2)
    got = {}
    for _ in range(2):
        m = bob.expect_msg("chat/c/+/typing")
        got[m.topic] = m.json
    assert sorted(got) == sorted([ttopic(g), ttopic(g2)]), got
    for x in got.values():
        assert_typing(x, a, "typing", t0, ttl_ms=60000)

    phone.kill_socket()  # the typist's device vanishes, another one of hers is still connected
    bob.expect_none("chat/c/+/typing", wait=0.5)

    t1 = now_ms()
    if last_goes == "kill_socket":
        web.kill_socket()
    else:
        web.disconnect()
    idles = {c: bob.expect(ttopic(c), timeout=3) for c in (g, g2)}
    for c, x in idles.items():
        assert_typing(x, a, "idle", t1)
    bob.expect_none("chat/c/+/typing", wait=0.3)


def test_typing_refusals(broker, users):
    a, b, c, d = users("alice", "bob", "carol", "dave")
    alice = broker.client(a)
    bob = broker.client(b)
    dave = broker.client(d, protocol=4)
    g = alice.create_group("T", [b, c])
    bob.sub_conv(g)

    # QoS 1 to see the PUBACK code; a QoS 0 refusal gets the same event
    expect_refused(alice, typing(alice, g, qos=1, schema=False, **{"from": c}), g, "unknown_field")
    typing(alice, g, qos=0, schema=False, **{"from": c})  # no PUBACK at QoS 0
    ev = alice.expect_event(pred=lambda e: e["event"] == "send_failed")
    assert (ev["conv"], ev["code"]) == (g, "unknown_field"), ev
    expect_refused(alice, typing(alice, g, qos=1, schema=False, ttl_ms=5), g, "unknown_field")
    expect_refused(alice, typing(alice, g, "dancing", qos=1, schema=False), g, "invalid_field")
    expect_refused(alice, typing(alice, g, None, qos=1, schema=False), g, "invalid_field")
    expect_refused(dave, typing(dave, g, qos=1), g, "not_member")
    expect_refused(dave, typing(dave, "g_000000000000", qos=1), "g_000000000000", "not_member")

    # nothing of it reached the members: the first typing event is alice's next, valid one
    t0 = now_ms()
    typing(alice, g)
    assert_typing(bob.expect(ttopic(g)), a, "typing", t0)
    bob.expect_none(ttopic(g), wait=0.2)


def test_group_above_typing_fanout_max_gets_no_typing_events(make_broker, users):
    a, b, c, d = users("alice", "bob", "carol", "dave")
    br = make_broker(opts={"typing_fanout_max": 3, "typing_interval_ms": INTERVAL_MS, "typing_ttl_ms": TTL_MS})
    cl = {u: br.client(u, protocol=4 if u == c else 5) for u in (a, b, c, d)}
    big = cl[a].create_group("big", [b, c, d])      # 4 members > 3
    small = cl[a].create_group("small", [b, c])     # 3: at the limit
    for u in (a, b, c, d):
        cl[u].sub_conv(big)
    for u in (a, b, c):
        cl[u].sub_conv(small)

    assert typing(cl[b], big, qos=1) in cl[b].ok_codes, "accepted, just not fanned out"
    t0 = now_ms()
    typing(cl[b], small)
    for u in (a, b, c):
        assert_typing(cl[u].expect(ttopic(small)), b, "typing", t0)
    # no "idle" either when the ttl passes (the small group's comes, the big group's does not)
    for u in (a, b, c):
        assert cl[u].expect(ttopic(small), timeout=(TTL_MS + 2000) / 1000)["state"] == "idle"
    typing(cl[b], big, "idle")
    typing(cl[b], small)
    assert cl[a].expect(ttopic(small))["state"] == "typing"
    for u in (a, b, c, d):
        cl[u].expect_none(ttopic(big), wait=0.2 if u == a else 0.0)


def test_typing_is_never_stored(broker, users):
    a, b = users("alice", "bob")
    alice = broker.client(a)
    bob = broker.client(b, protocol=4)
    g = alice.create_group("T", [b])
    bob.sub_conv(g)
    assert alice.send(g, "real message").rc in alice.ok_codes
    msg = bob.expect_message(g)
    before = bob.ok("conv.list")["conversations"]

    typing(alice, g)
    typing(bob, g)
    typing(alice, g, "idle")
    assert len(bob.expect_n(ttopic(g), 3)) == 3

    hist = bob.history(g)
    assert [m["seq"] for m in hist["messages"]] == [1, 2] and hist["messages"][1] == msg
    assert all(m["type"] in ("system", "text") for m in hist["messages"])
    assert bob.conv_get(g)["last_seq"] == 2
    assert bob.ok("conv.list")["conversations"] == before
    assert alice.ok("receipts.counts", {"conv": g})["messages"][-1]["seq"] == 2
    bob.expect_none(f"chat/c/{g}/m", wait=0.0)
