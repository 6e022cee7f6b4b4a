"""Sending and receiving messages (docs/protocol.md, "Sending a message")."""
from __future__ import annotations

import threading

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from helpers import ACCEPTED, assert_stamped, new_cmid, now_ms


def send_all(cl, conv, payloads, start, failures, qos=1, props=None):
    """Thread body: after the barrier, publish every send at once, then wait for each PUBACK (QoS 1 and 2);
    what went wrong is appended to failures."""
    try:
        start.wait(5)
        infos = [cl.publish(f"chat/send/{conv}", p, qos=qos, props=props, wait=False) for p in payloads]
        for info in infos if qos else ():
            rc = cl.wait_puback(info, timeout=30)
            if rc not in cl.ok_codes:
                failures.append((cl.user, info.mid, rc))
    except Exception as e:  # noqa: BLE001
        failures.append((cl.user, repr(e)))


def test_stamped_on_every_device_of_every_member(broker, users):
    a, b = users("alice", "bob")
    a1 = broker.client(a, protocol=5)
    a2 = broker.client(a, protocol=4, transport="websockets")
    b1 = broker.client(b, protocol=5, transport="websockets")
    b2 = broker.client(b, protocol=4)
    g = a1.create_group("G", [b])
    devices = [a1, a2, b1, b2]
    for d in devices:
        d.sub_conv(g)

    sent = []
    for i in range(3):
        r = a1.send(g, f"from a1 #{i} ✓")
        assert r.rc in ACCEPTED, f"MQTT 5 PUBACK for an accepted send is 0x00 or 0x10, got {r.rc:#x}"
        sent.append((r.cmid, f"from a1 #{i} ✓"))
    for i in range(2):
        r = a2.send(g, f"from a2 #{i}")
        assert r.rc == 0
        sent.append((r.cmid, f"from a2 #{i}"))

    per_device = {}
    for d in devices:
        got = [d.expect_message(g) for _ in sent]
        for k, (m, (cmid, body)) in enumerate(zip(got, sent)):
            assert_stamped(m, g, 2 + k, a, cmid=cmid, body=body)
        per_device[d.client_id] = got
        d.expect_none(f"chat/c/{g}/m", wait=0.1)
    # every device got the very same stamped messages
    first = per_device[a1.client_id]
    for got in per_device.values():
        assert got == first
    # ts is server time: non-decreasing along seq
    ts = [m["ts"] for m in first]
    assert ts == sorted(ts)


def test_direct_conversation_messages(broker, users):
    a, b = users("alice", "bob")
    alice = broker.client(a)
    bob = broker.client(b, protocol=4)
    d = alice.create_direct(b)
    bob.sub_conv(d)
    r = bob.send(d, "hi alice")
    m = bob.expect_message(d)
    assert_stamped(m, d, 2, b, cmid=r.cmid, body="hi alice")
    # alice subscribes later: she reads it from history
    assert alice.history(d)["messages"][-1] == m


def test_forged_from_is_unknown_field(broker, users):
    a, b = users("alice", "bob")
    alice = broker.client(a)
    bob = broker.client(b)
    g = alice.create_group("G", [b])
    bob.sub_conv(g)
    r = alice.send(g, "i am bob", schema=False, **{"from": b})
    assert r.rc == 0x87
    ev = alice.expect_event(pred=lambda e: e["event"] == "send_failed")
    assert ev["code"] == "unknown_field" and ev["cmid"] == r.cmid and ev["conv"] == g
    bob.expect_none(f"chat/c/{g}/m", wait=0.3)
    ok = alice.send(g, "really alice")
    m = bob.expect_message(g)
    assert_stamped(m, g, 2, a, cmid=ok.cmid)


def test_concurrent_senders_ordered_delivery(broker, users):
    n_senders, per_sender = 4, 50
    names = users(*[f"s{i}-" for i in range(n_senders)])
    (watcher_name,) = users("watcher")
    senders = [broker.client(n, protocol=5 if i % 2 == 0 else 4) for i, n in enumerate(names)]
    watcher = broker.client(watcher_name, protocol=4)
    g = senders[0].create_group("busy", names[1:] + [watcher_name])
    receivers = [watcher, senders[0], senders[3]]
    for r in receivers:
        r.sub_conv(g)

    plan = {n: [f"{n}.{k}" for k in range(per_sender)] for n in names}
    failures = []
    start = threading.Barrier(n_senders)

    def run(cl):
        send_all(cl, g, [{"cmid": cmid, "body": f"b-{cmid}"} for cmid in plan[cl.user]], start, failures)

    threads = [threading.Thread(target=run, args=(s,)) for s in senders]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not failures, failures

    total = n_senders * per_sender
    streams = []
    for r in receivers:
        got = r.expect_n(f"chat/c/{g}/m", total, timeout=30)
        seqs = [m["seq"] for m in got]
        assert seqs == list(range(2, 2 + total)), f"{r.user}: seq not contiguous/increasing"
        for n in names:
            mine = [m["cmid"] for m in got if m["from"] == n]
            assert mine == plan[n], f"{n}'s messages out of send order at {r.user}"
        for m in got:
            assert m["body"] == f"b-{m['cmid']}" and m["id"] == f"{g}:{m['seq']}"
        r.expect_none(f"chat/c/{g}/m", wait=0.1)
        streams.append(got)
    assert streams[0] == streams[1] == streams[2]
    # and history returns exactly the same sequence
    hist = watcher.history_all(g, page=200)
    assert hist[1:] == streams[0]
    assert hist[0]["seq"] == 1 and hist[0]["type"] == "system"


def test_duplicate_cmid(broker, users):
    a, b = users("alice", "bob")
    dev1 = broker.client(a, protocol=5)
    dev2 = broker.client(a, protocol=4)
    bob = broker.client(b, protocol=5)
    g = dev1.create_group("G", [b])
    for d in (dev1, dev2, bob):
        d.sub_conv(g)

    cmid = "dup-" + new_cmid()
    r = dev1.send(g, "first", cmid=cmid)
    assert r.rc in ACCEPTED
    originals = [d.expect_msg(f"chat/c/{g}/m") for d in (dev1, dev2, bob)]
    raw = originals[0].payload
    assert all(o.payload == raw for o in originals)
    assert originals[0].json["seq"] == 2 and originals[0].json["body"] == "first"

    # retry from the same device, even with another body: nothing stored, original re-sent to it only
    r2 = dev1.send(g, "second", cmid=cmid)
    assert r2.rc < 0x80, f"a duplicate is not a refusal: {r2.rc:#x}"
    again = dev1.expect_msg(f"chat/c/{g}/m")
    assert again.payload == raw, "same topic, same bytes"
    dev2.expect_none(f"chat/c/{g}/m", wait=0.3)
    bob.expect_none(f"chat/c/{g}/m", wait=0.0)
    dev1.expect_none(f"chat/u/{a}/event", wait=0.0, pred=lambda e: e.get("event") == "send_failed")

    # the same cmid from the user's other device is the same (conv, from, cmid)
    r3 = dev2.send(g, "third", cmid=cmid)
    assert r3.rc == 0
    assert dev2.expect_msg(f"chat/c/{g}/m").payload == raw
    dev1.expect_none(f"chat/c/{g}/m", wait=0.3)
    bob.expect_none(f"chat/c/{g}/m", wait=0.0)

    # another sender may use the same cmid: a new message
    rb = bob.send(g, "bob's", cmid=cmid)
    assert rb.rc in ACCEPTED
    for d in (dev1, dev2, bob):
        m = d.expect_message(g)
        assert_stamped(m, g, 3, b, cmid=cmid, body="bob's")

    # and the sequence has no gap
    r4 = dev1.send(g, "next")
    for d in (dev1, dev2, bob):
        assert_stamped(d.expect_message(g), g, 4, a, cmid=r4.cmid, body="next")
    hist = bob.history(g)["messages"]
    assert [m["seq"] for m in hist] == [1, 2, 3, 4]
    assert hist[1]["body"] == "first"


def test_reply_to(broker, users):
    a, b = users("alice", "bob")
    alice = broker.client(a)
    bob = broker.client(b, protocol=4)
    g = alice.create_group("G", [b])
    bob.sub_conv(g)

    alice.send(g, "question")
    assert bob.expect_message(g)["seq"] == 2
    r = bob.send(g, "answer", reply_to=2)
    assert_stamped(bob.expect_message(g), g, 3, b, cmid=r.cmid, body="answer", reply_to=2)
    r = alice.send(g, "to the newest", reply_to=3)  # reply_to == current last_seq
    assert r.rc in ACCEPTED
    assert_stamped(bob.expect_message(g), g, 4, a, cmid=r.cmid, reply_to=3)
    r = alice.send(g, "to the system message", reply_to=1)
    assert_stamped(bob.expect_message(g), g, 5, a, cmid=r.cmid, reply_to=1)

    for bad in (0, 6, 100, -1, "2", 1.5, True):
        r = alice.send(g, "bad reply", reply_to=bad, schema=False)
        assert r.rc == 0x87, bad
        ev = alice.expect_event(pred=lambda e: e["event"] == "send_failed")
        assert ev["code"] == "invalid_field", (bad, ev)
        assert ev["cmid"] == r.cmid
    bob.expect_none(f"chat/c/{g}/m", wait=0.2)
    assert alice.conv_get(g)["last_seq"] == 5


def test_explicit_type_text_and_cmid_syntax(broker, users):
    a, b = users("alice", "bob")
    alice = broker.client(a)
    bob = broker.client(b)
    g = alice.create_group("G", [b])
    bob.sub_conv(g)
    r = alice.send(g, "typed", type="text")
    assert r.rc in ACCEPTED
    assert_stamped(bob.expect_message(g), g, 2, a, cmid=r.cmid, body="typed")
    cmid = ("A-z_0.9@x:" * 7)[:64]
    r = alice.send(g, "long cmid", cmid=cmid)
    assert r.rc in ACCEPTED
    assert bob.expect_message(g)["cmid"] == cmid


def test_body_limits_default(broker, users):
    a, b = users("alice", "bob")
    alice = broker.client(a)
    bob = broker.client(b)
    g = alice.create_group("G", [b])
    bob.sub_conv(g)
    exact = "a" * 16384
    r = alice.send(g, exact)
    assert r.rc in ACCEPTED
    assert bob.expect_message(g)["body"] == exact
    multibyte = "é" * 8192  # 16384 bytes
    r = alice.send(g, multibyte)
    assert r.rc in ACCEPTED
    assert bob.expect_message(g)["body"] == multibyte
    emoji = "😀" * 4096  # 16384 bytes, 4096 characters
    assert alice.send(g, emoji).rc in ACCEPTED
    assert bob.expect_message(g)["body"] == emoji

    r = alice.send(g, "a" * 16385)
    assert r.rc == 0x87
    ev = alice.expect_event(pred=lambda e: e["event"] == "send_failed")
    assert ev["code"] == "too_large" and ev["cmid"] == r.cmid
    r = alice.send(g, "é" * 8192 + "a")
    assert r.rc == 0x87
    assert alice.expect_event(pred=lambda e: e["event"] == "send_failed")["code"] == "too_large"
    bob.expect_none(f"chat/c/{g}/m", wait=0.2)


def test_order_across_delivery_paths(broker, users):
    """A QoS 1 send without properties is delivered as the inbound publish itself, at once; QoS 0 and 2 sends,
    MQTT 5 sends with properties and system messages are published as copies the broker routes on its next loop
    pass. Interleaved from several connections at once (so several land in one pass), members still get one
    contiguous, increasing seq."""
    a, b, c, d, w = users("fast", "qos0", "props", "admin", "watcher")
    (extra,) = users("extra")
    fast = broker.client(a, protocol=5)
    qos0 = broker.client(b, protocol=4)
    props = broker.client(c, protocol=5)
    admin = broker.client(d, protocol=5)
    watcher = broker.client(w, protocol=4)
    g = admin.create_group("paths", [a, b, c, w])
    watcher.sub_conv(g)
    per, toggles = 150, 20
    start = threading.Barrier(4)
    failures = []
    ud = Properties(PacketTypes.PUBLISH)
    ud.UserProperty = ("k", "v")

    def sends(cl, qos, props=None):
        send_all(cl, g, [{"cmid": f"{cl.user}.{k}", "body": f"{k}"} for k in range(per)], start, failures, qos, props)

    def members():
        try:
            start.wait(5)
            for _ in range(toggles):
                admin.ok("members.add", {"conv": g, "users": [extra]})
                admin.ok("members.remove", {"conv": g, "users": [extra]})
        except Exception as e:  # noqa: BLE001
            failures.append(("admin", repr(e)))

    threads = [threading.Thread(target=sends, args=(fast, 1)), threading.Thread(target=sends, args=(qos0, 0)),
               threading.Thread(target=sends, args=(props, 1, ud)), threading.Thread(target=members)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(90)
    assert not failures, failures
    total = 3 * per + 2 * toggles
    got = watcher.expect_n(f"chat/c/{g}/m", total, timeout=60)
    seqs = [m["seq"] for m in got]
    assert seqs == list(range(2, 2 + total)), f"out of order or gaps: {[x for x in zip(seqs, seqs[1:]) if x[1] != x[0] + 1][:10]}"
    for who in (a, b, c):
        assert [m["body"] for m in got if m["from"] == who] == [str(k) for k in range(per)], who
    watcher.expect_none(f"chat/c/{g}/m", wait=0.2)
    assert watcher.history_all(g, page=200)[1:] == got


def test_qos0_and_qos2_sends_are_processed(broker, users):
    a, b = users("alice", "bob")
    alice = broker.client(a)
    bob = broker.client(b)
    g = alice.create_group("G", [b])
    bob.sub_conv(g)
    r0 = alice.send(g, "qos0", qos=0)
    m = bob.expect_message(g)
    assert_stamped(m, g, 2, a, cmid=r0.cmid, body="qos0")
    r2 = alice.send(g, "qos2", qos=2)
    assert r2.rc < 0x80
    assert_stamped(bob.expect_message(g), g, 3, a, cmid=r2.cmid, body="qos2")


def test_delivery_is_qos1_and_retain_flag_ignored(broker, users):
    a, b, c = users("alice", "bob", "carol")
    alice = broker.client(a)
    bob = broker.client(b)
    g = alice.create_group("G", [b, c])
    bob.sub_conv(g)
    r = alice.send(g, "retained?", retain=True)
    assert r.rc in ACCEPTED
    m = bob.expect_msg(f"chat/c/{g}/m")
    assert m.qos == 1
    assert m.retain is False
    assert m.json["cmid"] == r.cmid
    # a member subscribing later gets no retained copy
    carol = broker.client(c)
    carol.sub_conv(g)
    carol.expect_none(f"chat/c/{g}/m", wait=0.4)


def test_ts_is_server_time(broker, users):
    a, b = users("alice", "bob")
    alice = broker.client(a)
    g = alice.create_group("G", [b])
    alice.sub_conv(g)
    before = now_ms()
    alice.send(g, "when?")
    m = alice.expect_message(g)
    after = now_ms()
    assert before - 1000 <= m["ts"] <= after + 1000


@pytest.mark.parametrize("proto", [5, 4])
def test_sender_devices_receive_own_message(broker, users, proto):
    (a,) = users("alice")
    (b,) = users("bob")
    sender = broker.client(a, protocol=proto)
    other_dev = broker.client(a, protocol=9 - proto, transport="websockets")
    g = sender.create_group("G", [b])
    sender.sub_conv(g)
    other_dev.sub_conv(g)
    r = sender.send(g, "mine")
    for d in (sender, other_dev):
        assert_stamped(d.expect_message(g), g, 2, a, cmid=r.cmid, body="mine")


def test_null_is_not_an_integer(broker, users):
    """reply_to is an optional integer: an explicit null is a wrong type (invalid_field), not
    an absent field (docs: `reply_to` integer; schema: send.json reply_to is a seq)."""
    a, b = users("alice", "bob")
    alice = broker.client(a)
    g = alice.create_group("G", [b])
    r = alice.send(g, "null reply_to", reply_to=None, schema=False)
    assert r.rc == 0x87
    ev = alice.expect_event(pred=lambda e: e["event"] == "send_failed")
    assert ev["code"] == "invalid_field" and ev["cmid"] == r.cmid
    assert alice.conv_get(g)["last_seq"] == 1
