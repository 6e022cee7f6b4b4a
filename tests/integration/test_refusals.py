"""Every send refusal, for real over MQTT 5 (PUBACK 0x87) and MQTT 3.1.1 (plain PUBACK),
each with its send_failed event; refused sends are neither stored nor delivered.
Also the max_members limit (docs/protocol.md, "Refusal" and "Requests")."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Callable

import pytest

from helpers import ACCEPTED, ID_RE, assert_stamped, uname

MAX_BODY = 100
BROKER_OPTS = {"max_body": str(MAX_BODY)}

ANY = object()  # "do not check"
ABSENT = None


@dataclass
class Ctx:
    alice: Any
    bob: Any
    g: str          # alice and bob are members
    other: str      # alice is not a member
    last_seq: int


def js(obj) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


@dataclass
class Case:
    id: str
    build: Callable[[Ctx], tuple[str, bytes]]
    code: str
    cmid: Any = ANY   # expected cmid in the event: a string, ABSENT, or ANY


def send_to_g(payload):
    def b(ctx: Ctx):
        p = payload(ctx) if callable(payload) else payload
        return f"chat/send/{ctx.g}", p if isinstance(p, bytes) else js(p)
    return b


def topic_payload(topic_fn, payload):
    def b(ctx: Ctx):
        return topic_fn(ctx), payload if isinstance(payload, bytes) else js(payload)
    return b


OK = {"cmid": "c1", "body": "x"}

CASES = [
    # too_large
    Case("payload_over_max_payload", send_to_g(b'{"cmid":"big","body":"' + b"a" * 70000 + b'"}'), "too_large"),
    Case("payload_over_max_payload_padding",
         send_to_g(js({"cmid": "big2", "body": "x"})[:-1] + b',"pad":"' + b" " * 66000 + b'"}'), "too_large"),
    Case("body_over_max_body", send_to_g({"cmid": "c1", "body": "a" * (MAX_BODY + 1)}), "too_large", "c1"),
    Case("body_over_max_body_bytes", send_to_g({"cmid": "c1", "body": "é" * (MAX_BODY // 2 + 1)}), "too_large", "c1"),
    # invalid_utf8
    Case("raw_ff", send_to_g(b"\xff"), "invalid_utf8", ABSENT),
    Case("ff_inside_string", send_to_g(b'{"cmid":"c1","body":"\xff"}'), "invalid_utf8"),
    Case("overlong_encoding", send_to_g(b'{"cmid":"c1","body":"\xc0\xaf"}'), "invalid_utf8"),
    Case("surrogate_encoded", send_to_g(b'{"cmid":"c1","body":"\xed\xa0\x80"}'), "invalid_utf8"),
    # invalid_json
    Case("not_json", send_to_g(b"hello there"), "invalid_json", ABSENT),
    Case("json_array", send_to_g(b'[{"cmid":"c1","body":"x"}]'), "invalid_json", ABSENT),
    Case("json_string", send_to_g(b'"hello"'), "invalid_json", ABSENT),
    Case("json_number", send_to_g(b"42"), "invalid_json", ABSENT),
    Case("json_null", send_to_g(b"null"), "invalid_json", ABSENT),
    Case("empty_payload", send_to_g(b""), "invalid_json", ABSENT),
    Case("truncated_json", send_to_g(b'{"cmid":"c1","body":"x"'), "invalid_json"),
    Case("trailing_garbage", send_to_g(b'{"cmid":"c1","body":"x"} x'), "invalid_json"),
    # invalid_id (conv in the topic)
    Case("conv_with_star", topic_payload(lambda c: "chat/send/a*b", OK), "invalid_id"),
    Case("conv_65_chars", topic_payload(lambda c: "chat/send/" + "g" * 65, OK), "invalid_id"),
    Case("conv_with_space", topic_payload(lambda c: "chat/send/a b", OK), "invalid_id"),
    # invalid_field
    Case("missing_cmid", send_to_g({"body": "x"}), "invalid_field", ABSENT),
    Case("cmid_number", send_to_g({"cmid": 17, "body": "x"}), "invalid_field", ABSENT),
    Case("cmid_null", send_to_g({"cmid": None, "body": "x"}), "invalid_field", ABSENT),
    Case("cmid_empty", send_to_g({"cmid": "", "body": "x"}), "invalid_field"),
    Case("cmid_65_chars", send_to_g({"cmid": "c" * 65, "body": "x"}), "invalid_field", "c" * 65),
    Case("cmid_bad_char", send_to_g({"cmid": "a b", "body": "x"}), "invalid_field", "a b"),
    Case("missing_body", send_to_g({"cmid": "c1"}), "invalid_field", "c1"),
    Case("body_number", send_to_g({"cmid": "c1", "body": 5}), "invalid_field", "c1"),
    Case("body_null", send_to_g({"cmid": "c1", "body": None}), "invalid_field", "c1"),
    Case("body_object", send_to_g({"cmid": "c1", "body": {"t": "x"}}), "invalid_field", "c1"),
    Case("body_empty", send_to_g({"cmid": "c1", "body": ""}), "invalid_field", "c1"),
    Case("type_system", send_to_g({"cmid": "c1", "body": "x", "type": "system"}), "invalid_field", "c1"),
    Case("type_image", send_to_g({"cmid": "c1", "body": "x", "type": "image"}), "invalid_field", "c1"),
    Case("type_number", send_to_g({"cmid": "c1", "body": "x", "type": 1}), "invalid_field", "c1"),
    Case("reply_to_zero", send_to_g({"cmid": "c1", "body": "x", "reply_to": 0}), "invalid_field", "c1"),
    Case("reply_to_beyond_last_seq",
         send_to_g(lambda c: {"cmid": "c1", "body": "x", "reply_to": c.last_seq + 1}), "invalid_field", "c1"),
    Case("reply_to_string", send_to_g({"cmid": "c1", "body": "x", "reply_to": "1"}), "invalid_field", "c1"),
    Case("reply_to_negative", send_to_g({"cmid": "c1", "body": "x", "reply_to": -1}), "invalid_field", "c1"),
    Case("reply_to_fraction", send_to_g({"cmid": "c1", "body": "x", "reply_to": 1.5}), "invalid_field", "c1"),
    # unknown_field
    Case("unknown_field", send_to_g({"cmid": "c1", "body": "x", "colour": "red"}), "unknown_field", "c1"),
    Case("forged_from", send_to_g({"cmid": "c1", "body": "x", "from": "mallory"}), "unknown_field", "c1"),
    Case("forged_seq", send_to_g({"cmid": "c1", "body": "x", "seq": 99}), "unknown_field", "c1"),
    # not_member
    Case("not_a_member", topic_payload(lambda c: f"chat/send/{c.other}", OK), "not_member", "c1"),
    Case("no_such_conversation", topic_payload(lambda c: "chat/send/g_000000000000", OK), "not_member", "c1"),
    # typing and receipts are refused with the same codes
    Case("typing_forged_from", topic_payload(lambda c: f"chat/typing/{c.g}", {"state": "typing", "from": "mallory"}),
         "unknown_field", ABSENT),
    Case("typing_bad_state", topic_payload(lambda c: f"chat/typing/{c.g}", {"state": "dancing"}), "invalid_field", ABSENT),
    Case("typing_not_member", topic_payload(lambda c: f"chat/typing/{c.other}", {"state": "typing"}), "not_member", ABSENT),
    Case("receipt_beyond_last_seq", topic_payload(lambda c: f"chat/receipt/{c.g}", {"read": 10**6}), "invalid_field", ABSENT),
    Case("receipt_empty", topic_payload(lambda c: f"chat/receipt/{c.g}", {}), "invalid_field", ABSENT),
    Case("receipt_not_member", topic_payload(lambda c: f"chat/receipt/{c.other}", {"read": 1}), "not_member", ABSENT),
]


@pytest.fixture(params=[5, 4], ids=["mqtt5", "mqtt311"])
def ctx(request, broker, users):
    a, b, c = users("alice", "bob", "carol")
    bob = broker.client(b, protocol=5)
    alice = broker.client(a, protocol=request.param)
    g = bob.create_group("G", [a])
    other = bob.create_group("Other", [c])
    bob.sub_conv(g)
    alice.sub_conv(g)
    alice.expect_event(pred=lambda e: e["event"] == "conv.added" and e["conv"] == g)
    return Ctx(alice, bob, g, other, 1)


def conv_of(topic: str) -> str | None:
    conv = topic.split("/", 2)[2]
    return conv if ID_RE.match(conv) else None


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_send_refused(ctx, case):
    alice, bob = ctx.alice, ctx.bob
    topic, payload = case.build(ctx)
    rc = alice.publish(topic, payload)
    assert rc == alice.refused_code, f"PUBACK {rc:#x}, expected {alice.refused_code:#x}"

    ev = alice.expect_event(pred=lambda e: e.get("event") == "send_failed")
    assert ev["code"] == case.code, ev
    assert isinstance(ev["message"], str) and ev["message"], ev
    conv = conv_of(topic)
    if conv is None:
        assert "conv" not in ev, f"conv is present only for a valid conv id: {ev}"
    else:
        assert ev.get("conv") == conv, ev
    if case.cmid is ABSENT:
        assert "cmid" not in ev, ev
    elif case.cmid is not ANY:
        assert ev.get("cmid") == case.cmid, ev
    assert set(ev) <= {"event", "conv", "cmid", "code", "message"}, ev

    # neither delivered nor stored: the next good message is the very next seq, and the first
    # thing any member sees
    r = alice.send(ctx.g, "after the refusal")
    assert r.rc in alice.ok_codes
    for cl in (bob, alice):
        m = cl.expect_message(ctx.g)
        assert_stamped(m, ctx.g, ctx.last_seq + 1, alice.user, cmid=r.cmid)
    # exactly one event, and only for the sending user
    assert alice.pending(alice.event_topic) == [], alice.pending(alice.event_topic)
    bob.expect_none(bob.event_topic, wait=0.0, pred=lambda e: e.get("event") == "send_failed")


def test_refused_sends_are_not_stored(broker, users):
    a, b = users("alice", "bob")
    alice = broker.client(a, protocol=4)
    bob = broker.client(b)
    g = alice.create_group("G", [b])
    bob.sub_conv(g)
    ctx = Ctx(alice, bob, g, "g_000000000000", 1)
    batch = [(c, *c.build(ctx)) for c in CASES]
    batch = [x for x in batch if x[1] == f"chat/send/{g}"]
    assert len(batch) > 30
    for _, topic, payload in batch:
        alice.publish(topic, payload)
    codes = [alice.expect_event(pred=lambda e: e.get("event") == "send_failed")["code"] for _ in batch]
    assert codes == [c.code for c, _, _ in batch], "one event per refusal, in order"
    bob.expect_none(f"chat/c/{g}/m", wait=0.3)
    hist = bob.history(g)
    assert [m["seq"] for m in hist["messages"]] == [1]
    assert bob.conv_get(g)["last_seq"] == 1


def test_body_at_max_body_is_accepted(broker, users):
    a, b = users("alice", "bob")
    alice = broker.client(a)
    bob = broker.client(b)
    g = alice.create_group("G", [b])
    bob.sub_conv(g)
    for body in ("a" * MAX_BODY, "é" * (MAX_BODY // 2)):
        r = alice.send(g, body)
        assert r.rc in ACCEPTED
        assert bob.expect_message(g)["body"] == body


def test_refusal_event_goes_to_sending_device_only(broker, users):
    a, b = users("alice", "bob")
    dev1 = broker.client(a, protocol=5)
    dev2 = broker.client(a, protocol=4)
    g = dev1.create_group("G", [b])
    dev1.publish(f"chat/send/{g}", b"not json")
    assert dev1.expect_event(pred=lambda e: e["event"] == "send_failed")["code"] == "invalid_json"
    dev2.expect_none(dev2.event_topic, wait=0.4, pred=lambda e: e.get("event") == "send_failed")


# --------------------------------------------------------------------------- max_members

def test_too_many_members_small_limit(make_broker, users):
    br = make_broker(opts={"max_members": "3"})
    a, b, c, d = users("alice", "bob", "carol", "dave")
    alice = br.client(a)

    alice.err("conv.create", {"type": "group", "name": "big", "members": [b, c, d]}, code="too_many_members")
    assert alice.ok("conv.list")["conversations"] == [], "a refused create stores nothing"
    # exactly the limit; duplicates and the creator folded
    g = alice.create_group("three", [b, c])
    assert len(alice.conv_get(g)["members"]) == 3
    g2 = alice.create_group("folded", [b, b, c, a, c])
    assert len(alice.conv_get(g2)["members"]) == 3

    alice.err("members.add", {"conv": g, "users": [d]}, code="too_many_members")
    got = alice.conv_get(g)
    assert {m["user"] for m in got["members"]} == {a, b, c}
    assert got["last_seq"] == 1
    alice.ok("members.remove", {"conv": g, "users": [c]})
    r = alice.ok("members.add", {"conv": g, "users": [d]})
    assert r["added"] == [d]

    # adding several at once is all or nothing
    g3 = alice.create_group("two", [b])
    alice.err("members.add", {"conv": g3, "users": [c, d]}, code="too_many_members")
    assert {m["user"] for m in alice.conv_get(g3)["members"]} == {a, b}
    assert alice.ok("members.add", {"conv": g3, "users": [c]})["added"] == [c]


def test_500_member_group(broker, users):
    (a,) = users("owner")
    alice = broker.client(a)
    others = [uname("m") for _ in range(499)]
    r = alice.ok("conv.create", {"type": "group", "name": "everyone", "members": others}, timeout=20)
    g = r["conv"]["conv"]
    got = alice.conv_get(g)
    assert len(got["members"]) == 500
    roles = {m["user"]: m["role"] for m in got["members"]}
    assert roles[a] == "admin"
    assert sorted(u for u, role in roles.items() if role == "member") == sorted(others)

    online = [broker.client(u, protocol=5 if i % 2 else 4) for i, u in enumerate(others[::10])]
    assert len(online) == 50
    for cl in online:
        cl.sub_conv(g)
    r = alice.send(g, "hello all 500")
    assert r.rc in ACCEPTED
    for cl in online:
        assert_stamped(cl.expect_message(g, timeout=10), g, 2, a, cmid=r.cmid, body="hello all 500")

    # one more is too many
    alice.err("members.add", {"conv": g, "users": [uname("extra")]}, code="too_many_members")
    assert len(alice.conv_get(g)["members"]) == 500
    alice.err("conv.create", {"type": "group", "name": "too big", "members": [uname("x") for _ in range(500)]},
              code="too_many_members", timeout=20)
