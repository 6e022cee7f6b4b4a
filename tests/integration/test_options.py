"""plugin_opt_* handling: a bad value stops the broker at start with a clear log line; the
options that change behaviour do so end to end."""
from __future__ import annotations

import json

import pytest

from helpers import ACCEPTED, assert_stamped, uname


@pytest.mark.parametrize(
    "option,value",
    [
        ("max_members", "abc"),
        ("max_members", "12abc"),
        ("max_members", "-3"),
        ("max_body", "0x10"),
        ("history_limit", "lots"),
        ("max_payload", "1e6"),
        ("fsync", "sometimes"),
        ("journal", "maybe"),
        ("commit_interval_ms", "60001"),
        ("prefix", "a/b"),
        ("prefix", "chat/#"),
        ("prefix", "+"),
        ("map_size", "huge"),
        ("observers", "ok,bad/name"),
        ("xyz", "1"),
    ],
)
def test_bad_option_stops_the_broker(make_broker, option, value):
    br = make_broker(opts={option: value}, start=False)
    rc, log = br.start_expect_exit()
    assert rc != 0, f"mosquitto accepted plugin_opt_{option} {value!r}"
    lines = [ln for ln in log.splitlines() if "mosquitto-chat" in ln and option in ln]
    assert lines, f"no log line naming mosquitto-chat and {option}:\n{log[-3000:]}"


def test_all_options_valid_start(make_broker, users):
    br = make_broker(opts={
        "fsync": "always",
        "map_size": "64M",
        "max_members": "10",
        "max_body": "1000",
        "max_payload": "4096",
        "history_limit": "20",
        "observers": "o1,o2",
        "sync_interval_ms": "50",
        "journal": "on",
        "commit_interval_ms": "20",
    })
    a, b = users("alice", "bob")
    alice = br.client(a)
    bob = br.client(b, protocol=4)
    g = alice.create_group("G", [b])
    bob.sub_conv(g)
    r = alice.send(g, "x" * 1000)
    assert r.rc in ACCEPTED
    assert bob.expect_message(g)["cmid"] == r.cmid

    # max_payload 4096: a 4097-byte payload is too large even though its body is small enough
    payload = json.dumps({"cmid": "p1", "body": "y", "pad": ""}).encode()
    payload = payload[:-2] + b"z" * (4097 - len(payload)) + b'"}'
    assert len(payload) == 4097
    assert alice.publish(f"chat/send/{g}", payload) == 0x87
    ev = alice.expect_event(pred=lambda e: e["event"] == "send_failed")
    assert ev["code"] == "too_large"
    # max_body 1000
    assert alice.send(g, "x" * 1001).rc == 0x87
    assert alice.expect_event(pred=lambda e: e["event"] == "send_failed")["code"] == "too_large"
    # history_limit 20
    alice.err("history", {"conv": g, "limit": 21}, code="invalid_field")
    assert alice.history(g, limit=20)["has_more"] is False
    # max_members 10
    alice.err("conv.create", {"type": "group", "name": "n", "members": [uname("m") for _ in range(10)]},
              code="too_many_members")
    assert alice.create_group("ten", [uname("m") for _ in range(9)])
    bob.expect_none(f"chat/c/{g}/m", wait=0.2)


def test_custom_prefix_end_to_end(make_broker, users):
    br = make_broker(opts={"prefix": "acme"})
    assert br.prefix == "acme"
    a, b, d = users("alice", "bob", "dave")
    alice = br.client(a, protocol=5)   # subscribes acme/u/{a}/+
    bob = br.client(b, protocol=4, transport="websockets")
    dave = br.client(d)

    # requests on acme/req, replies on acme/u/{me}/reply (v5 and v3.1.1)
    r = alice.ok("conv.create", {"type": "group", "name": "acme team", "members": [b]})
    assert alice.last_reply_msg.topic == f"acme/u/{a}/reply"
    g = r["conv"]["conv"]
    assert bob.ok("conv.list")["conversations"][0]["conv"] == g
    assert bob.last_reply_msg.topic == f"acme/u/{b}/reply"
    assert bob.expect(f"acme/u/{b}/event", pred=lambda e: e["event"] == "conv.added")["conv"] == g

    # custom response topic under the new prefix
    alice.request("conv.list", response_topic=f"acme/u/{a}/rpc")
    assert alice.last_reply_msg.topic == f"acme/u/{a}/rpc"

    # messages on acme/send -> acme/c/{conv}/m
    assert bob.subscribe(f"acme/c/{g}/+") == [1]
    assert dave.subscribe(f"acme/c/{g}/+") == [0x87]
    s = alice.send(g, "prefixed")
    assert s.rc in ACCEPTED
    assert_stamped(bob.expect(f"acme/c/{g}/m"), g, 2, a, cmid=s.cmid, body="prefixed")

    # refusals come on acme/u/{me}/event
    assert alice.publish(f"acme/send/{g}", b"[]") == 0x87
    ev = alice.expect(f"acme/u/{a}/event", pred=lambda e: e["event"] == "send_failed")
    assert ev["code"] == "invalid_json" and ev["conv"] == g

    # the default prefix means nothing to the plugin now: no stamping, no reply
    assert alice.publish(f"chat/send/{g}", {"cmid": "old", "body": "old prefix"}) == 0x87
    assert alice.publish("chat/req", {"op": "conv.list"}) == 0x87
    bob.expect_none(f"acme/c/{g}/m", wait=0.3)
    alice.expect_none(f"acme/u/{a}/#", wait=0.0, pred=lambda e: e.get("event") != "conv.added")
    assert [m["seq"] for m in alice.history(g)["messages"]] == [1, 2]
