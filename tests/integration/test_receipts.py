"""Delivered/read cursors, unread counts and "read by N of M" (docs/protocol.md, "Receipts";
conv.list, receipts.get and receipts.counts in "Requests")."""
from __future__ import annotations

import pytest

from helpers import check_outgoing, now_ms

TS_SLACK_MS = 50  # server and tests read the same clock; this only absorbs rounding


def rtopic(conv: str) -> str:
    return f"chat/c/{conv}/receipt"


def receipt(cl, conv: str, schema: bool = True, qos: int = 1, **cursors) -> int:
    """Publish a receipt; returns the PUBACK reason code."""
    if schema:
        check_outgoing("receipt", cursors)
    return cl.publish(f"chat/receipt/{conv}", cursors, qos=qos)


def assert_receipt(r: dict, sender: str, delivered: int, read: int, t0: int) -> None:
    assert set(r) == {"from", "delivered", "read", "ts"}, r
    assert (r["from"], r["delivered"], r["read"]) == (sender, delivered, read), r
    assert t0 - TS_SLACK_MS <= r["ts"] <= now_ms() + TS_SLACK_MS, f"ts {r['ts']} is not server time now ({t0})"


def strip(reply: dict) -> dict:
    return {k: v for k, v in reply.items() if k not in ("ok", "op", "req_id")}


def conv_entry(cl, conv: str) -> dict:
    convs = cl.ok("conv.list")["conversations"]
    found = [c for c in convs if c["conv"] == conv]
    assert len(found) == 1, convs
    return found[0]


def send_n(cl, conv: str, n: int, watchers=()) -> list[dict]:
    """n messages from cl; waits until every watcher has them; returns the stamped copies."""
    for i in range(n):
        assert cl.send(conv, f"{cl.user} #{i}").rc in cl.ok_codes
    got = []
    for w in watchers:
        got = w.expect_n(f"chat/c/{conv}/m", n)
    return got


def expect_refused(cl, rc: int, conv: str | None, code: str) -> None:
    assert rc == cl.refused_code, f"PUBACK {rc:#x}, expected {cl.refused_code:#x}"
    ev = cl.expect_event(pred=lambda e: e["event"] == "send_failed")
    expected = {"event": "send_failed", "code": code}
    if conv is not None:
        expected["conv"] = conv
    assert {k: v for k, v in ev.items() if k != "message"} == expected, ev
    assert isinstance(ev["message"], str) and ev["message"], ev


# --------------------------------------------------------------------------- fan-out

@pytest.mark.parametrize("proto", [4, 5], ids=["mqtt311", "mqtt5"])
def test_receipt_fanned_out_stamped_to_every_member(broker, users, proto):
    a, b, c = users("alice", "bob", "carol")
    alice = broker.client(a, protocol=5)
    bob = broker.client(b, protocol=proto)
    bob_ws = broker.client(b, protocol=9 - proto, transport="websockets")
    carol = broker.client(c, protocol=4)
    g = alice.create_group("R", [b, c])
    devices = [alice, bob, bob_ws, carol]
    for d in devices:
        d.sub_conv(g)
    send_n(alice, g, 3, watchers=devices)  # seq 2, 3, 4

    t0 = now_ms()
    assert receipt(bob, g, delivered=3) in bob.ok_codes
    for d in devices:
        m = d.expect_msg(rtopic(g))
        assert m.qos == 1 and not m.retain, m
        assert_receipt(m.json, b, 3, 0, t0)

    # reading up to 4 implies delivered up to 4; the other device's receipt is fanned out the same way
    t1 = now_ms()
    assert receipt(bob_ws, g, read=4) in bob_ws.ok_codes
    for d in devices:
        assert_receipt(d.expect(rtopic(g)), b, 4, 4, t1)
    for d in devices:
        d.expect_none(rtopic(g), wait=0.2 if d is alice else 0.0)
    # a receipt is nobody's send: no event for the reader
    bob.expect_none(bob.event_topic, wait=0.0, pred=lambda e: e.get("event") == "send_failed")


def test_cursors_move_independently_and_read_implies_delivered(broker, users):
    a, b, c = users("alice", "bob", "carol")
    alice = broker.client(a)
    bob = broker.client(b, protocol=4)
    carol = broker.client(c)
    g = alice.create_group("R", [b, c])
    carol.sub_conv(g)
    send_n(alice, g, 3, watchers=[carol])  # last_seq 4

    steps = [
        ({"delivered": 2}, (2, 0)),
        ({"read": 1}, (2, 1)),             # read behind delivered: delivered stays
        ({"delivered": 4, "read": 3}, (4, 3)),
        ({"read": 4}, (4, 4)),
    ]
    for cursors, (d, r) in steps:
        t0 = now_ms()
        assert receipt(bob, g, **cursors) in bob.ok_codes
        assert_receipt(carol.expect(rtopic(g)), b, d, r, t0)
    carol.expect_none(rtopic(g), wait=0.2)
    e = conv_entry(bob, g)
    assert (e["last_seq"], e["read_seq"], e["unread"]) == (4, 4, 0), e


@pytest.mark.parametrize("proto", [4, 5], ids=["mqtt311", "mqtt5"])
def test_cursor_at_or_behind_stored_is_ignored(broker, users, proto):
    a, b, c = users("alice", "bob", "carol")
    alice = broker.client(a)
    bob = broker.client(b, protocol=proto)
    carol = broker.client(c, protocol=4)
    g = alice.create_group("R", [b, c])
    for d in (alice, carol):
        d.sub_conv(g)
    send_n(alice, g, 3, watchers=[carol])  # last_seq 4
    t0 = now_ms()
    assert receipt(bob, g, read=3) in bob.ok_codes
    assert_receipt(carol.expect(rtopic(g)), b, 3, 3, t0)
    assert_receipt(alice.expect(rtopic(g)), b, 3, 3, t0)

    for cursors in ({"read": 3}, {"read": 1}, {"delivered": 2}, {"delivered": 3, "read": 2}, {"delivered": 3}):
        assert receipt(bob, g, **cursors) in bob.ok_codes, f"{cursors}: an ignored receipt is still a success"
    # nothing was published for those: the next thing watchers see is the next real move
    send_n(alice, g, 1, watchers=[carol])  # seq 5
    t1 = now_ms()
    assert receipt(bob, g, delivered=5) in bob.ok_codes
    for w in (carol, alice):
        assert_receipt(w.expect(rtopic(g)), b, 5, 3, t1)
        w.expect_none(rtopic(g), wait=0.2 if w is carol else 0.0)
    bob.expect_none(bob.event_topic, wait=0.0, pred=lambda e: e.get("event") == "send_failed")
    r = alice.ok("receipts.get", {"conv": g, "seq": 4})
    assert (r["read_by"], r["delivered_to"], r["readers"], r["delivered"]) == (0, 1, [], [b]), r


@pytest.mark.parametrize("proto", [4, 5], ids=["mqtt311", "mqtt5"])
def test_cursor_beyond_last_seq_is_refused(broker, users, proto):
    a, b = users("alice", "bob")
    alice = broker.client(a)
    bob = broker.client(b, protocol=proto)
    g = alice.create_group("R", [b])
    alice.sub_conv(g)
    send_n(alice, g, 3, watchers=[alice])  # last_seq 4

    for cursors in ({"read": 5}, {"delivered": 5}, {"delivered": 4, "read": 5}, {"delivered": 10**9}):
        expect_refused(bob, receipt(bob, g, **cursors), g, "invalid_field")
    # nothing stored, nothing published: the next receipt starts from zero
    t0 = now_ms()
    assert receipt(bob, g, delivered=4) in bob.ok_codes
    assert_receipt(alice.expect(rtopic(g)), b, 4, 0, t0)
    alice.expect_none(rtopic(g), wait=0.2)
    e = conv_entry(bob, g)
    assert (e["last_seq"], e["read_seq"], e["unread"]) == (4, 0, 4), e


def test_receipt_refusals(broker, users):
    a, b, c, d = users("alice", "bob", "carol", "dave")
    alice = broker.client(a)
    bob = broker.client(b)
    dave = broker.client(d, protocol=4)
    g = alice.create_group("R", [b, c])
    alice.sub_conv(g)
    send_n(alice, g, 1, watchers=[alice])  # last_seq 2

    # not a member (the conversation exists) and a conversation that does not exist
    expect_refused(dave, receipt(dave, g, read=1), g, "not_member")
    expect_refused(dave, receipt(dave, "g_000000000000", read=1), "g_000000000000", "not_member")
    # a forged "from"
    expect_refused(bob, receipt(bob, g, schema=False, read=2, **{"from": c}), g, "unknown_field")
    expect_refused(bob, receipt(bob, g, schema=False, read=1, ts=1), g, "unknown_field")
    # wrong values
    for bad in ({}, {"read": 0}, {"delivered": 0}, {"read": "2"}, {"read": 1.5}, {"read": None}, {"read": -1},
                {"delivered": True}):
        expect_refused(bob, receipt(bob, g, schema=False, **bad), g, "invalid_field")
    expect_refused(bob, bob.publish(f"chat/receipt/{g}", b"read=2"), g, "invalid_json")
    expect_refused(bob, bob.publish(f"chat/receipt/{g}", b'[{"read":2}]'), g, "invalid_json")
    expect_refused(bob, bob.publish("chat/receipt/bad!id", {"read": 1}), None, "invalid_id")

    # none of it was stored or published
    t0 = now_ms()
    assert receipt(bob, g, read=1) in bob.ok_codes
    assert_receipt(alice.expect(rtopic(g)), b, 1, 1, t0)
    alice.expect_none(rtopic(g), wait=0.2)
    r = alice.ok("receipts.get", {"conv": g, "seq": 2})
    assert (r["read_by"], r["delivered_to"]) == (0, 0), r


# --------------------------------------------------------------------------- unread counts

def test_cursors_survive_a_broker_kill(make_broker, users):
    a, b, c = users("alice", "bob", "carol")
    br = make_broker()
    alice = br.client(a)
    bob = br.client(b, protocol=4)
    g = alice.create_group("R", [b, c])
    bob.sub_conv(g)
    msgs = send_n(alice, g, 5, watchers=[bob])  # seq 2..6
    assert receipt(bob, g, delivered=6, read=3) in bob.ok_codes  # PUBACK: committed

    br.kill()
    br.start()
    bob = br.client(b, protocol=4)
    alice = br.client(a)
    carol = br.client(c, protocol=5)
    eb = conv_entry(bob, g)
    assert (eb["last_seq"], eb["read_seq"], eb["unread"]) == (6, 3, 3), eb
    assert eb["last"] == msgs[-1]
    ea = conv_entry(alice, g)
    assert (ea["read_seq"], ea["unread"]) == (6, 0), "alice's own sends moved her cursor, and it was kept"
    ec = conv_entry(carol, g)
    assert (ec["read_seq"], ec["unread"]) == (0, 6), ec
    r = alice.ok("receipts.get", {"conv": g, "seq": 6})
    assert strip(r) == {"conv": g, "seq": 6, "from": a, "of": 2, "read_by": 0, "delivered_to": 1,
                        "readers": [], "delivered": [b]}
    r = alice.ok("receipts.get", {"conv": g, "seq": 3})
    assert (r["read_by"], r["readers"]) == (1, [b]), r

    # the stored cursor still rules: behind it is ignored, beyond it moves
    alice.sub_conv(g)
    assert receipt(bob, g, read=3) == 0
    t0 = now_ms()
    assert receipt(bob, g, read=4) == 0
    assert_receipt(alice.expect(rtopic(g)), b, 6, 4, t0)
    alice.expect_none(rtopic(g), wait=0.2)


def test_conv_list_reports_every_conversation_in_one_request_and_after_reconnect(broker, users):
    a, b, c = users("alice", "bob", "carol")
    alice = broker.client(a)
    bob = broker.client(b, protocol=4)
    carol = broker.client(c, protocol=5, transport="websockets")
    d = alice.create_direct(b)
    g1 = alice.create_group("one", [b, c])
    g2 = carol.create_group("two", [b])
    bob.sub_conv(d, g1, g2)

    d_msgs = send_n(alice, d, 2, watchers=[bob])        # d: seq 2, 3
    assert receipt(bob, d, read=2) == 0                   # d: read 2 of 3
    send_n(bob, g1, 1, watchers=[bob])                   # g1: seq 2, bob's own
    send_n(alice, g1, 1, watchers=[bob])                 # g1: seq 3
    g1_last = send_n(carol, g1, 1, watchers=[bob])[-1]   # g1: seq 4
    g2_created = bob.history(g2)["messages"][0]

    expected = {
        d: {"conv": d, "type": "direct", "name": None, "members": sorted([a, b]), "last_seq": 3,
            "read_seq": 2, "unread": 1, "last": d_msgs[-1]},
        g1: {"conv": g1, "type": "group", "name": "one", "members": sorted([a, b, c]), "last_seq": 4,
             "read_seq": 2, "unread": 2, "last": g1_last},
        g2: {"conv": g2, "type": "group", "name": "two", "members": sorted([b, c]), "last_seq": 1,
             "read_seq": 0, "unread": 1, "last": g2_created},
    }

    def check(cl):
        convs = cl.ok("conv.list")["conversations"]
        assert [x["conv"] for x in convs] == sorted(expected)
        for x in convs:
            x = dict(x, members=sorted(x["members"]))
            assert x == expected[x["conv"]]

    check(bob)
    bob.reconnect()
    check(bob)  # the first request after a reconnect
    check(broker.client(b, protocol=5, transport="websockets"))  # and from another device


def test_own_sends_count_as_read(broker, users):
    a, b = users("alice", "bob")
    alice = broker.client(a)
    bob = broker.client(b, protocol=4)
    d = alice.create_direct(b)
    bob.sub_conv(d)
    send_n(alice, d, 3, watchers=[bob])  # seq 2..4
    ea, eb = conv_entry(alice, d), conv_entry(bob, d)
    assert (ea["last_seq"], ea["read_seq"], ea["unread"]) == (4, 4, 0), ea
    assert (eb["last_seq"], eb["read_seq"], eb["unread"]) == (4, 0, 4), eb
    r = alice.ok("receipts.get", {"conv": d, "seq": 4})
    assert strip(r) == {"conv": d, "seq": 4, "from": a, "of": 1, "read_by": 0, "delivered_to": 0,
                        "readers": [], "delivered": []}

    send_n(bob, d, 1, watchers=[bob])  # seq 5: bob has now read everything up to 5
    ea, eb = conv_entry(alice, d), conv_entry(bob, d)
    assert (ea["last_seq"], ea["read_seq"], ea["unread"]) == (5, 4, 1), ea
    assert (eb["last_seq"], eb["read_seq"], eb["unread"]) == (5, 5, 0), eb
    r = alice.ok("receipts.get", {"conv": d, "seq": 4})
    assert (r["read_by"], r["delivered_to"], r["readers"], r["delivered"]) == (1, 1, [b], [b]), r
    # a late receipt behind the cursor a send moved is ignored
    alice.sub_conv(d)
    assert receipt(bob, d, read=3) == 0
    alice.expect_none(rtopic(d), wait=0.2)
    assert conv_entry(bob, d)["read_seq"] == 5


# --------------------------------------------------------------------------- receipts.get / receipts.counts

def test_receipts_get_read_by_n_of_m_and_who(broker, users):
    a, b, c, d, e = users("alice", "bob", "carol", "dave", "eve")
    alice = broker.client(a)                 # admin
    bob = broker.client(b, protocol=4)       # the sender
    carol = broker.client(c)
    dave = broker.client(d, protocol=4)
    eve = broker.client(e)                   # not a member
    g = alice.create_group("R", [b, c, d])
    alice.sub_conv(g)
    send_n(bob, g, 1, watchers=[alice])      # seq 2, from bob
    assert receipt(alice, g, read=2) in alice.ok_codes
    assert receipt(carol, g, delivered=2) in carol.ok_codes
    alice.expect_n(rtopic(g), 2)

    full = {"conv": g, "seq": 2, "from": b, "of": 3, "read_by": 1, "delivered_to": 2}
    who = {"readers": [a], "delivered": sorted([a, c])}
    for cl in (bob, alice):  # the sender and the admin see who
        r = cl.ok("receipts.get", {"conv": g, "seq": 2})
        r = strip(r)
        r["delivered"] = sorted(r["delivered"])
        assert r == {**full, **who}, f"{cl.user}: {r}"
    for cl in (carol, dave):  # plain members: counts only
        assert strip(cl.ok("receipts.get", {"conv": g, "seq": 2})) == full

    # seq 1 is alice's `created`: of = the 3 others; bob's send moved his cursor past it
    s1 = {"conv": g, "seq": 1, "from": a, "of": 3, "read_by": 1, "delivered_to": 2}
    assert strip(dave.ok("receipts.get", {"conv": g, "seq": 1})) == s1
    r = strip(alice.ok("receipts.get", {"conv": g, "seq": 1}))
    assert {k: sorted(v) if isinstance(v, list) else v for k, v in r.items()} == \
        {**s1, "readers": [b], "delivered": sorted([b, c])}
    # bob is neither admin nor the sender of seq 1
    assert strip(bob.ok("receipts.get", {"conv": g, "seq": 1})) == s1

    eve.err("receipts.get", {"conv": g, "seq": 2}, code="not_member")
    alice.err("receipts.get", {"conv": g, "seq": 3}, code="invalid_field")
    alice.err("receipts.get", {"conv": g, "seq": 0}, code="invalid_field", schema=False)
    alice.err("receipts.get", {"conv": g}, code="invalid_field", schema=False)
    alice.err("receipts.get", {"conv": g, "seq": 2, "from": b}, code="unknown_field", schema=False)


def test_receipts_get_in_a_direct_conversation(broker, users):
    a, b = users("alice", "bob")
    alice = broker.client(a)
    bob = broker.client(b, protocol=4)
    d = alice.create_direct(b)
    bob.sub_conv(d)
    send_n(alice, d, 1, watchers=[bob])   # seq 2 from alice
    base = {"conv": d, "seq": 2, "from": a, "of": 1}
    assert strip(alice.ok("receipts.get", {"conv": d, "seq": 2})) == \
        {**base, "read_by": 0, "delivered_to": 0, "readers": [], "delivered": []}
    assert receipt(bob, d, delivered=2) == 0
    assert strip(alice.ok("receipts.get", {"conv": d, "seq": 2})) == \
        {**base, "read_by": 0, "delivered_to": 1, "readers": [], "delivered": [b]}
    assert receipt(bob, d, read=2) == 0
    assert strip(alice.ok("receipts.get", {"conv": d, "seq": 2})) == \
        {**base, "read_by": 1, "delivered_to": 1, "readers": [b], "delivered": [b]}
    # bob is not the sender and direct conversations have no admin: counts only
    assert strip(bob.ok("receipts.get", {"conv": d, "seq": 2})) == {**base, "read_by": 1, "delivered_to": 1}


def test_receipts_counts_over_a_range(broker, users):
    a, b, c, e = users("alice", "bob", "carol", "eve")
    alice = broker.client(a)
    bob = broker.client(b, protocol=4)
    carol = broker.client(c)
    eve = broker.client(e)
    g = alice.create_group("R", [b, c])
    alice.sub_conv(g)
    send_n(alice, g, 5, watchers=[alice])   # seq 2..6
    assert receipt(bob, g, read=4) == 0
    assert receipt(carol, g, delivered=6, read=2) in carol.ok_codes
    alice.expect_n(rtopic(g), 2)

    def row(seq, read_by, delivered_to, frm=a):
        return {"seq": seq, "from": frm, "of": 2, "read_by": read_by, "delivered_to": delivered_to}

    rows = [row(1, 2, 2), row(2, 2, 2), row(3, 1, 2), row(4, 1, 2), row(5, 0, 1), row(6, 0, 1)]

    def counts(cl, **args):
        r = strip(cl.ok("receipts.counts", {"conv": g, **args}))
        assert r["conv"] == g and set(r) == {"conv", "messages"}, r
        return r["messages"]

    assert counts(carol) == rows
    assert counts(bob, after=1, limit=3) == rows[1:4]
    assert counts(alice, limit=2) == rows[4:]
    assert counts(alice, after=4, limit=10) == rows[4:]
    assert counts(alice, after=0, limit=1) == rows[:1]
    assert counts(alice, after=6) == []

    # bob sends seq 7: his cursor moves to 7 (5 and 6 now read by him), 7 is his with nobody else's
    send_n(bob, g, 1, watchers=[alice])
    assert counts(alice, after=4) == [row(5, 1, 2), row(6, 1, 2), row(7, 0, 0, frm=b)]
    eve.err("receipts.counts", {"conv": g}, code="not_member")
    alice.err("receipts.counts", {"conv": g, "limit": 0}, code="invalid_field", schema=False)


# --------------------------------------------------------------------------- large groups

def test_group_above_receipt_fanout_max_stores_but_does_not_publish(make_broker, users):
    a, b, c, d = users("alice", "bob", "carol", "dave")
    br = make_broker(opts={"receipt_fanout_max": 3})
    cl = {u: br.client(u, protocol=4 if u == c else 5) for u in (a, b, c, d)}
    big = cl[a].create_group("big", [b, c, d])      # 4 members > 3
    small = cl[a].create_group("small", [b, c])     # 3 members: at the limit, fanned out
    for u in (a, b, c, d):
        cl[u].sub_conv(big)
    for u in (a, b, c):
        cl[u].sub_conv(small)
    send_n(cl[a], big, 1, watchers=[cl[a]])    # seq 2
    send_n(cl[a], small, 1, watchers=[cl[a]])  # seq 2

    assert receipt(cl[b], big, read=2) in cl[b].ok_codes
    assert receipt(cl[c], big, delivered=2) == 0
    # the small group's receipt is published after the big group's would have been
    t0 = now_ms()
    assert receipt(cl[b], small, read=2) in cl[b].ok_codes
    for u in (a, b, c):
        assert_receipt(cl[u].expect(rtopic(small)), b, 2, 2, t0)
    for u in (a, b, c, d):
        cl[u].expect_none(rtopic(big), wait=0.3 if u == a else 0.0)

    # ... but stored and counted
    r = strip(cl[a].ok("receipts.get", {"conv": big, "seq": 2}))
    r["delivered"] = sorted(r["delivered"])
    assert r == {"conv": big, "seq": 2, "from": a, "of": 3, "read_by": 1, "delivered_to": 2,
                 "readers": [b], "delivered": sorted([b, c])}
    assert strip(cl[d].ok("receipts.counts", {"conv": big}))["messages"][-1] == \
        {"seq": 2, "from": a, "of": 3, "read_by": 1, "delivered_to": 2}
    eb = conv_entry(cl[b], big)
    assert (eb["read_seq"], eb["unread"]) == (2, 0), eb
    ec = conv_entry(cl[c], big)
    assert (ec["read_seq"], ec["unread"]) == (0, 2), ec
