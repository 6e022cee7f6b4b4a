"""history paging and gap filling (docs/protocol.md, "history")."""
from __future__ import annotations

import pytest

from helpers import assert_stamped

N_TEXT = 30  # seq 2..31 are text messages, seq 1 is `created`
LAST = N_TEXT + 1


@pytest.fixture(scope="module")
def filled(broker):
    """A group with 31 stored messages, shared by the paging tests."""
    from helpers import uname

    a, b = uname("alice"), uname("bob")
    alice = broker.client(a)
    bob = broker.client(b, protocol=4)
    g = alice.create_group("history", [b])
    bob.sub_conv(g)
    for i in range(N_TEXT):
        alice.send(g, f"m{i + 2}", cmid=f"h{i + 2}")
    live = [bob.expect_message(g) for _ in range(N_TEXT)]
    assert [m["seq"] for m in live] == list(range(2, LAST + 1))
    alice.disconnect()
    bob.disconnect()
    return {"g": g, "a": a, "b": b, "live": {m["seq"]: m for m in live}}


def seqs(r):
    return [m["seq"] for m in r["messages"]]


@pytest.mark.parametrize(
    "args,expected,has_more",
    [
        ({}, list(range(1, LAST + 1)), False),
        ({"limit": 10}, list(range(LAST - 9, LAST + 1)), True),
        ({"limit": LAST}, list(range(1, LAST + 1)), False),
        ({"limit": LAST - 1}, list(range(2, LAST + 1)), True),
        ({"before": 22, "limit": 10}, list(range(12, 22)), True),
        ({"before": 12, "limit": 10}, list(range(2, 12)), True),
        ({"before": 11, "limit": 10}, list(range(1, 11)), False),
        ({"before": 2, "limit": 10}, [1], False),
        ({"before": 1}, [], False),
        ({"before": 0}, [], False),
        ({"before": 1000, "limit": 3}, [LAST - 2, LAST - 1, LAST], True),
        ({"after": 0, "limit": 10}, list(range(1, 11)), True),
        ({"after": 20, "limit": 10}, list(range(21, 31)), True),
        ({"after": 21, "limit": 10}, list(range(22, 32)), False),
        ({"after": 25}, list(range(26, LAST + 1)), False),
        ({"after": LAST}, [], False),
        ({"after": 500}, [], False),
        ({"after": 5, "before": 10}, [6, 7, 8, 9], False),
        ({"after": 5, "before": 10, "limit": 2}, [6, 7], True),
        ({"after": 5, "before": 10, "limit": 4}, [6, 7, 8, 9], False),
        ({"after": 5, "before": 6}, [], False),
        ({"after": 9, "before": 5}, [], False),
    ],
)
def test_paging(broker, filled, args, expected, has_more):
    bob = broker.client(filled["b"])
    r = bob.history(filled["g"], **args)
    assert seqs(r) == expected, args
    assert r["has_more"] is has_more, args
    assert set(r) == {"ok", "op", "messages", "has_more"}
    for m in r["messages"]:
        if m["seq"] > 1:
            assert m == filled["live"][m["seq"]], "history returns the stamped message as delivered"


def test_paging_walk_backwards_and_forwards(broker, filled):
    alice = broker.client(filled["a"], protocol=4)
    g = filled["g"]
    got, before = [], None
    while True:
        args = {"limit": 7} if before is None else {"limit": 7, "before": before}
        r = alice.history(g, **args)
        got = r["messages"] + got
        if not r["has_more"]:
            break
        before = r["messages"][0]["seq"]
    assert [m["seq"] for m in got] == list(range(1, LAST + 1))
    assert alice.history_all(g, page=7) == got


@pytest.mark.parametrize(
    "args",
    [
        {"limit": 0},
        {"limit": 201},
        {"limit": -1},
        {"limit": "10"},
        {"limit": 2.5},
        {"before": -1},
        {"after": -1},
        {"before": "5"},
        {"after": None},
        {"before": None},
        {"limit": None},
    ],
    ids=lambda a: "-".join(f"{k}={v!r}" for k, v in a.items()),
)
def test_bad_arguments(broker, filled, args):
    bob = broker.client(filled["b"])
    a = {"conv": filled["g"]}
    a.update(args)
    bob.err("history", a, code="invalid_field", schema=False)


def test_limit_200_is_the_default_history_limit(broker, filled):
    bob = broker.client(filled["b"])
    r = bob.history(filled["g"], limit=200)
    assert seqs(r) == list(range(1, LAST + 1)) and r["has_more"] is False


def test_history_access(broker, filled, users):
    (d,) = users("dave")
    dave = broker.client(d)
    dave.err("history", {"conv": filled["g"]}, code="not_member")
    dave.err("history", {"conv": "g_ZZZZZZZZZZZZ"}, code="not_member")
    dave.err("history", {"conv": "bad/id"}, code="invalid_id", schema=False)
    dave.err("history", {}, code="invalid_field", schema=False)
    dave.err("history", {"conv": filled["g"], "around": 3}, code="unknown_field", schema=False)


def test_history_limit_option(make_broker, users):
    br = make_broker(opts={"history_limit": "5"})
    a, b = users("alice", "bob")
    alice = br.client(a)
    g = alice.create_group("G", [b])
    for i in range(8):
        alice.send(g, f"x{i}")
    r = alice.history(g, limit=5)
    assert seqs(r) == [5, 6, 7, 8, 9] and r["has_more"] is True
    r = alice.history(g, after=0, limit=5)
    assert seqs(r) == [1, 2, 3, 4, 5] and r["has_more"] is True
    alice.err("history", {"conv": g, "limit": 6}, code="invalid_field")


def test_gap_fill_after_reconnect(broker, users):
    a, b = users("alice", "bob")
    alice = broker.client(a)
    bob = broker.client(b, protocol=4)
    g = alice.create_group("G", [b])
    bob.sub_conv(g)
    for i in range(3):
        alice.send(g, f"seen {i}")
    seen = [bob.expect_message(g) for _ in range(3)]
    last_seen = seen[-1]["seq"]
    assert last_seen == 4

    bob.kill_socket()  # the device goes away without a goodbye
    missed = [alice.send(g, f"missed {i}").cmid for i in range(5)]

    bob2 = broker.client(b, protocol=4)  # clean session: nothing queued
    bob2.sub_conv(g)
    bob2.expect_none(f"chat/c/{g}/m", wait=0.3)
    r = bob2.history(g, after=last_seen)
    assert seqs(r) == [5, 6, 7, 8, 9]
    assert r["has_more"] is False
    assert [m["cmid"] for m in r["messages"]] == missed
    for m, cmid in zip(r["messages"], missed):
        assert_stamped(m, g, m["seq"], a, cmid=cmid)
    # and it keeps going live
    nxt = alice.send(g, "live again")
    assert_stamped(bob2.expect_message(g), g, 10, a, cmid=nxt.cmid)


@pytest.mark.parametrize("proto", [5, 4])
def test_persistent_session_queues_while_offline(broker, users, proto):
    a, b = users("alice", "bob")
    alice = broker.client(a)
    cid = f"{b}-phone"
    bob = broker.client(b, protocol=proto, client_id=cid, clean=False, session_expiry=600 if proto == 5 else None)
    g = alice.create_group("G", [b])
    bob.sub_conv(g)
    bob.disconnect()
    sent = [alice.send(g, f"while away {i}").cmid for i in range(3)]
    # the session keeps every subscription; re-subscribing in a resumed session would also
    # trip a mosquitto 2.0.11 leak (sub__add) under CHAT_SANITIZE=asan
    bob.reconnect(auto_sub=False)
    got = [bob.expect_message(g) for _ in sent]
    assert [m["cmid"] for m in got] == sent
    assert [m["seq"] for m in got] == [2, 3, 4]
    # end the persistent session (mosquitto 2.0.11 leaks a stored session's subscriptions at exit)
    bob.disconnect()
    broker.client(b, protocol=proto, client_id=cid, clean=True).disconnect()
