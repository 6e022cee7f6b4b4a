"""conv.create / conv.list / conv.get / conv.update / members.* and the request envelope
(docs/protocol.md, "Requests")."""
from __future__ import annotations

import json
import uuid

import pytest

from helpers import ACCEPTED, DIRECT_RE, GROUP_RE, assert_system


def members_of(conv_obj: dict) -> dict[str, str]:
    return {m["user"]: m["role"] for m in conv_obj["members"]}


# --------------------------------------------------------------------------- direct

def test_direct_create_is_idempotent_from_either_side(broker, users):
    alice_name, bob_name = users("alice", "bob")
    alice = broker.client(alice_name)
    bob = broker.client(bob_name, protocol=4)

    r = alice.ok("conv.create", {"type": "direct", "with": bob_name})
    assert r["created"] is True
    c = r["conv"]
    assert DIRECT_RE.match(c["conv"]), c
    assert c["type"] == "direct"
    assert c["name"] is None
    assert members_of(c) == {alice_name: "member", bob_name: "member"}
    assert len(c["members"]) == 2
    assert c["last_seq"] == 1, "creating a conversation stores `created` as seq 1"
    conv = c["conv"]

    again = alice.ok("conv.create", {"type": "direct", "with": bob_name})
    assert again["created"] is False
    assert again["conv"]["conv"] == conv

    other_side = bob.ok("conv.create", {"type": "direct", "with": alice_name})
    assert other_side["created"] is False
    assert other_side["conv"]["conv"] == conv
    assert members_of(other_side["conv"]) == {alice_name: "member", bob_name: "member"}

    # nothing new was stored by the repeated creates
    assert bob.conv_get(conv)["last_seq"] == 1
    hist = bob.history(conv)
    assert hist["has_more"] is False
    assert len(hist["messages"]) == 1
    assert_system(hist["messages"][0], conv, 1, alice_name, "created", users=[alice_name, bob_name])


def test_direct_with_self_is_invalid_field(broker, users):
    (alice_name,) = users("alice")
    alice = broker.client(alice_name)
    alice.err("conv.create", {"type": "direct", "with": alice_name}, code="invalid_field")


def test_direct_refuses_update_and_members(broker, users):
    a, b, c = users("alice", "bob", "carol")
    alice = broker.client(a)
    conv = alice.create_direct(b)
    alice.err("conv.update", {"conv": conv, "name": "x"}, code="forbidden")
    alice.err("members.add", {"conv": conv, "users": [c]}, code="forbidden")
    alice.err("members.remove", {"conv": conv, "users": [b]}, code="forbidden")
    alice.err("members.remove", {"conv": conv, "users": [a]}, code="forbidden")
    assert members_of(alice.conv_get(conv)) == {a: "member", b: "member"}


# --------------------------------------------------------------------------- group

def test_group_create(broker, users):
    a, b, c = users("alice", "bob", "carol")
    alice = broker.client(a)
    bob = broker.client(b)
    carol = broker.client(c, protocol=4)

    r = alice.ok("conv.create", {"type": "group", "name": "Team ✓", "members": [b, c, b]})
    assert r["created"] is True
    g = r["conv"]
    assert GROUP_RE.match(g["conv"]), g
    assert g["type"] == "group"
    assert g["name"] == "Team ✓"
    assert g["last_seq"] == 1
    assert members_of(g) == {a: "admin", b: "member", c: "member"}
    assert len(g["members"]) == 3, "duplicates are folded"
    conv = g["conv"]

    # every member (the creator excluded or not) learns it was added
    for cl in (bob, carol):
        ev = cl.expect_event(pred=lambda e: e.get("conv") == conv)
        assert ev == {"event": "conv.added", "conv": conv, "by": a}

    hist = carol.history(conv)
    assert hist["has_more"] is False
    assert [m["seq"] for m in hist["messages"]] == [1]
    assert_system(hist["messages"][0], conv, 1, a, "created", users=[a, b, c], name="Team ✓")

    # a second group with the same members is a new conversation
    g2 = alice.create_group("Team ✓", [b, c])
    assert g2 != conv


def test_group_create_creator_listed_explicitly(broker, users):
    a, b = users("alice", "bob")
    alice = broker.client(a)
    r = alice.ok("conv.create", {"type": "group", "name": "n", "members": [a, b]})
    assert members_of(r["conv"]) == {a: "admin", b: "member"}


@pytest.mark.parametrize(
    "args,code",
    [
        ({"type": "group", "name": "", "members": []}, "invalid_field"),
        ({"type": "group", "name": "x" * 129, "members": []}, "invalid_field"),
        ({"type": "group", "name": "é" * 65, "members": []}, "invalid_field"),  # 130 bytes
        ({"type": "group", "name": 5, "members": []}, "invalid_field"),
        ({"type": "group", "name": "n", "members": "bob"}, "invalid_field"),
        ({"type": "group", "name": "n", "members": ["bad name"]}, ("invalid_field", "invalid_id")),
        ({"type": "group", "name": "n", "members": [7]}, "invalid_field"),
        ({"type": "group", "name": "n"}, "invalid_field"),
        ({"type": "channel", "name": "n", "members": []}, "invalid_field"),
        ({"type": "direct"}, "invalid_field"),
        ({"type": "direct", "with": "a*b"}, ("invalid_field", "invalid_id")),
        ({"type": "direct", "with": "bob", "name": "x"}, "unknown_field"),
        ({"type": "group", "name": "n", "members": [], "colour": "red"}, "unknown_field"),
    ],
)
def test_conv_create_invalid_arguments(broker, users, args, code):
    (a,) = users("alice")
    alice = broker.client(a)
    # a malformed user name is either a bad field or a bad id: the docs do not say which
    r = alice.err("conv.create", args, schema=False)
    assert r["error"]["code"] in ((code,) if isinstance(code, str) else code), r
    assert r["op"] == "conv.create"


def test_group_name_128_bytes_is_accepted(broker, users):
    a, b = users("alice", "bob")
    alice = broker.client(a)
    name = "é" * 64  # 128 bytes
    r = alice.ok("conv.create", {"type": "group", "name": name, "members": [b]})
    assert r["conv"]["name"] == name


# --------------------------------------------------------------------------- list / get

def test_conv_list(broker, users):
    a, b, c = users("alice", "bob", "carol")
    alice = broker.client(a)
    bob = broker.client(b)
    assert alice.ok("conv.list")["conversations"] == []

    d = alice.create_direct(b)
    g = alice.create_group("Group", [b, c])
    bob.sub_conv(g)
    sent = alice.send(g, "hello list")
    assert sent.rc in alice.ok_codes
    live = bob.expect_message(g)
    assert live["seq"] == 2

    convs = alice.ok("conv.list")["conversations"]
    assert [x["conv"] for x in convs] == sorted([d, g]), "sorted by conv id"
    by_id = {x["conv"]: x for x in convs}
    for x in convs:
        assert set(x) == {"conv", "type", "name", "members", "last_seq", "read_seq", "unread", "last"}, x

    xd = by_id[d]
    assert xd["type"] == "direct" and xd["name"] is None
    assert sorted(xd["members"]) == sorted([a, b])
    assert xd["last_seq"] == 1
    assert xd["read_seq"] == 0 and xd["unread"] == 1
    assert xd["last"]["seq"] == 1 and xd["last"]["type"] == "system"

    xg = by_id[g]
    assert xg["type"] == "group" and xg["name"] == "Group"
    assert sorted(xg["members"]) == sorted([a, b, c])
    assert xg["last_seq"] == 2
    # sending moves the sender's own read cursor to what they sent
    assert xg["read_seq"] == 2 and xg["unread"] == 0
    assert xg["last"] == live, "last is the last stamped message, exactly as delivered"

    # carol is in the group only, and has read nothing
    carol = broker.client(c, protocol=4)
    cl = carol.ok("conv.list")["conversations"]
    assert [x["conv"] for x in cl] == [g]
    assert cl[0]["read_seq"] == 0 and cl[0]["unread"] == 2


def test_conv_get_member_only(broker, users):
    a, b, d = users("alice", "bob", "dave")
    alice = broker.client(a)
    bob = broker.client(b)
    dave = broker.client(d)
    g = alice.create_group("G", [b])

    got = bob.conv_get(g)
    assert set(got) == {"conv", "type", "name", "last_seq", "members"}
    assert got["conv"] == g and got["type"] == "group" and got["name"] == "G" and got["last_seq"] == 1
    assert members_of(got) == {a: "admin", b: "member"}

    dave.err("conv.get", {"conv": g}, code="not_member")
    dave.err("conv.get", {"conv": "g_AAAAAAAAAAAA"}, code="not_member")  # does not exist
    dave.err("conv.get", {"conv": "a*b"}, code="invalid_id", schema=False)
    dave.err("conv.get", {"conv": "x" * 65}, code="invalid_id", schema=False)
    dave.err("conv.get", {}, code="invalid_field", schema=False)
    dave.err("conv.get", {"conv": 12}, code="invalid_field", schema=False)


# --------------------------------------------------------------------------- update

def test_conv_update(broker, users):
    a, b, d = users("alice", "bob", "dave")
    alice = broker.client(a)
    bob = broker.client(b)
    dave = broker.client(d)
    g = alice.create_group("Old", [b])
    bob.sub_conv(g)

    r = alice.ok("conv.update", {"conv": g, "name": "New"})
    assert r["conv"]["name"] == "New"
    assert r["conv"]["conv"] == g
    assert r["conv"]["last_seq"] == 2
    m = bob.expect_message(g)
    assert_system(m, g, 2, a, "renamed", name="New")
    assert "users" not in m

    bob.err("conv.update", {"conv": g, "name": "Bob's"}, code="forbidden")
    dave.err("conv.update", {"conv": g, "name": "Dave's"}, code="not_member")
    alice.err("conv.update", {"conv": g, "name": ""}, code="invalid_field", schema=False)
    alice.err("conv.update", {"conv": g}, code="invalid_field", schema=False)
    alice.err("conv.update", {"conv": g, "name": "x", "topic": "y"}, code="unknown_field", schema=False)
    assert bob.conv_get(g)["name"] == "New"
    assert bob.conv_get(g)["last_seq"] == 2, "refused updates store nothing"
    bob.expect_none(f"chat/c/{g}/m", wait=0.3)


# --------------------------------------------------------------------------- members

def test_members_add_and_remove(broker, users):
    a, b, c, d = users("alice", "bob", "carol", "dave")
    alice = broker.client(a)
    bob = broker.client(b)
    carol = broker.client(c)
    dave = broker.client(d, protocol=4)
    g = alice.create_group("G", [b, c])
    bob.sub_conv(g)
    bob.expect_event(pred=lambda e: e["event"] == "conv.added")
    carol.expect_event(pred=lambda e: e["event"] == "conv.added")

    # add: only the new ones are reported, system message + event
    r = alice.ok("members.add", {"conv": g, "users": [d, b]})
    assert r["added"] == [d]
    assert members_of(r["conv"]) == {a: "admin", b: "member", c: "member", d: "member"}
    assert dave.expect_event() == {"event": "conv.added", "conv": g, "by": a}
    assert_system(bob.expect_message(g), g, 2, a, "members_added", users=[d])

    # the new member reads the whole history
    hist = dave.history(g)
    assert [m["seq"] for m in hist["messages"]] == [1, 2]

    # only admins add or remove others
    bob.err("members.add", {"conv": g, "users": [uuid.uuid4().hex[:8]]}, code="forbidden")
    bob.err("members.remove", {"conv": g, "users": [c]}, code="forbidden")
    bob.err("members.remove", {"conv": g, "users": [b, c]}, code="forbidden")
    assert bob.conv_get(g)["last_seq"] == 2

    # admin removes carol
    r = alice.ok("members.remove", {"conv": g, "users": [c]})
    assert r["removed"] == [c]
    assert members_of(r["conv"]) == {a: "admin", b: "member", d: "member"}
    assert carol.expect_event() == {"event": "conv.removed", "conv": g, "by": a}
    assert_system(bob.expect_message(g), g, 3, a, "members_removed", users=[c])
    carol.err("history", {"conv": g}, code="not_member")
    carol.err("conv.get", {"conv": g}, code="not_member")

    # bob leaves on his own
    r = bob.ok("members.remove", {"conv": g, "users": [b]})
    assert r["removed"] == [b]
    assert bob.expect_event() == {"event": "conv.removed", "conv": g, "by": b}
    hist = alice.history(g)["messages"]
    assert [m["seq"] for m in hist] == [1, 2, 3, 4]
    assert_system(hist[3], g, 4, b, "members_removed", users=[b])
    assert members_of(alice.conv_get(g)) == {a: "admin", d: "member"}

    # non-members
    carol.err("members.add", {"conv": g, "users": [c]}, code="not_member")
    alice.err("members.add", {"conv": g, "users": []}, code="invalid_field", schema=False)
    r = alice.err("members.add", {"conv": g, "users": ["no spaces"]}, schema=False)
    assert r["error"]["code"] in ("invalid_field", "invalid_id"), r
    alice.err("members.add", {"conv": "a*b", "users": [c]}, code="invalid_id", schema=False)


def test_last_admin_leaving_promotes_smallest_user(broker, users):
    a, b, c = users("alice", "bob", "carol")
    alice = broker.client(a)
    carol = broker.client(c)
    g = alice.create_group("G", [c, b])
    carol.sub_conv(g)

    r = alice.ok("members.remove", {"conv": g, "users": [a]})
    assert r["removed"] == [a]
    new_admin = min(b, c)
    m1 = carol.expect_message(g)
    m2 = carol.expect_message(g)
    assert_system(m1, g, 2, a, "members_removed", users=[a])
    assert m2["seq"] == 3 and m2["type"] == "system" and m2["event"] == "admin_changed", m2
    assert m2["users"] == [new_admin]
    got = carol.conv_get(g)
    assert members_of(got) == {b: "admin" if new_admin == b else "member", c: "admin" if new_admin == c else "member"}
    assert got["last_seq"] == 3

    # the new admin can administer
    admin = broker.client(new_admin)
    admin.ok("conv.update", {"conv": g, "name": "renamed by new admin"})


def test_member_leaving_keeps_roles(broker, users):
    a, b, c = users("alice", "bob", "carol")
    alice = broker.client(a)
    bob = broker.client(b)
    g = alice.create_group("G", [b, c])
    bob.ok("members.remove", {"conv": g, "users": [b]})
    got = alice.conv_get(g)
    assert members_of(got) == {a: "admin", c: "member"}
    assert got["last_seq"] == 2


# --------------------------------------------------------------------------- request envelope

def test_request_mqtt311_req_id(broker, users):
    (a,) = users("alice")
    alice = broker.client(a, protocol=4)
    r = alice.request("conv.list", req_id="my-request-1")
    assert r == {"ok": True, "op": "conv.list", "req_id": "my-request-1", "conversations": []}
    r = alice.request("conv.list", req_id=42)
    assert r["req_id"] == 42 and r["ok"] is True
    assert alice.last_reply_msg.topic == f"chat/u/{a}/reply"
    # errors echo req_id too
    r = alice.request("no.such.op", req_id="x1", schema=False)
    assert r["ok"] is False and r["req_id"] == "x1" and r["error"]["code"] == "unknown_op"
    assert r["op"] == "no.such.op"


def test_request_mqtt5_correlation_and_response_topic(broker, users):
    a, b = users("alice", "bob")
    alice = broker.client(a, protocol=5)

    corr = b"\x00\x01binary-correlation\xff"
    r = alice.request("conv.list", correlation=corr)
    assert r["ok"] is True and "req_id" not in r
    m = alice.last_reply_msg
    assert m.topic == f"chat/u/{a}/reply"
    assert m.correlation == corr
    assert m.qos == 1

    # a custom response topic under chat/u/{me}/
    custom = f"chat/u/{a}/rpc-7"
    r = alice.request("conv.list", response_topic=custom)
    assert r["ok"] is True
    assert alice.last_reply_msg.topic == custom

    # req_id is echoed on MQTT 5 too
    r = alice.request("conv.list", req_id="both")
    assert r["req_id"] == "both"

    # response topics outside chat/u/{me}/ -> invalid_response_topic on the default topic
    for bad in (f"chat/u/{b}/reply", "elsewhere/reply", f"chat/u/{a}", "chat/c/x/m", f"chat/u/{a}x/reply"):
        r = alice.request("conv.list", response_topic=bad, expect_topic=f"chat/u/{a}/reply")
        assert r["ok"] is False, (bad, r)
        assert r["error"]["code"] == "invalid_response_topic", (bad, r)
        assert alice.last_reply_msg.topic == f"chat/u/{a}/reply"


def test_request_without_response_topic_mqtt5(broker, users):
    """MQTT 5 without Response Topic: reply on chat/u/{me}/reply (matched by req_id)."""
    (a,) = users("alice")
    alice = broker.client(a, protocol=5)
    rc = alice.publish("chat/req", {"op": "conv.list", "req_id": "plain"})
    assert rc in ACCEPTED
    r = alice.expect(f"chat/u/{a}/reply", pred=lambda j: j.get("req_id") == "plain")
    assert r["ok"] is True and r["conversations"] == []


def test_reply_goes_to_requesting_device_only(broker, users):
    (a,) = users("alice")
    dev1 = broker.client(a, protocol=5)
    dev2 = broker.client(a, protocol=4)
    dev1.ok("conv.list")
    dev2.expect_none(f"chat/u/{a}/reply", wait=0.4)


@pytest.mark.parametrize("proto", [5, 4])
def test_request_errors(broker, users, proto):
    (a,) = users("alice")
    alice = broker.client(a, protocol=proto)
    r = alice.err("no.such.op", code="unknown_op", schema=False)
    assert r["op"] == "no.such.op"
    r = alice.err("conv.list", {"x": 1}, code="unknown_field", schema=False)
    assert r["op"] == "conv.list"
    alice.err("history", {"conv": "a*b"}, code="invalid_id", schema=False)
    alice.err("history", {"conv": "x" * 65}, code="invalid_id", schema=False)
    alice.err("conv.get", {"conv": ""}, code="invalid_id", schema=False)


@pytest.mark.parametrize(
    "raw,code",
    [
        (b"{not json", "invalid_json"),
        (b"[1,2,3]", "invalid_json"),
        (b'"conv.list"', "invalid_json"),
        (b"", "invalid_json"),
        (b'{"op":"conv.list"} trailing', "invalid_json"),
        (b'{"op":"conv.list","x":"\xff"}', "invalid_utf8"),
        (b"\xff\xfe", "invalid_utf8"),
    ],
)
def test_request_bad_payload(broker, users, raw, code):
    (a,) = users("alice")
    alice = broker.client(a, protocol=5)
    r = alice.request(None, raw=raw)
    assert r["ok"] is False
    assert r["error"]["code"] == code, r
    assert alice.last_reply_msg.topic == f"chat/u/{a}/reply"


def test_request_too_large(broker, users):
    (a,) = users("alice")
    alice = broker.client(a, protocol=4)
    big = json.dumps({"op": "conv.list", "pad": "x" * 70000}).encode()
    r = alice.request(None, raw=big)
    assert r["ok"] is False and r["error"]["code"] == "too_large", r


def test_bad_json_mqtt311_reply(broker, users):
    (a,) = users("alice")
    alice = broker.client(a, protocol=4)
    r = alice.request(None, raw=b"nope")
    assert r == {"ok": False, "error": r["error"]} and r["error"]["code"] == "invalid_json"
