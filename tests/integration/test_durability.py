"""A PUBACK means the message is committed: SIGKILL loses nothing acknowledged, and seq
continues without gap or repeat after a restart (docs/protocol.md, "Sending a message")."""
from __future__ import annotations

import re
import threading

import pytest

from helpers import ACCEPTED, ConnectionLost, assert_stamped

KILL_AFTER = 200


def drive_until_killed(broker, sender, conv: str, kill_after: int = KILL_AFTER):
    """Publish QoS 1 sends as fast as the PUBACKs come; SIGKILL the broker after
    `kill_after` acknowledgements. Returns (acked cmids, cmids attempted)."""
    acked: list[str] = []
    attempted: list[str] = []
    errors: list[str] = []
    reached = threading.Event()
    stop = threading.Event()

    def run():
        i = 0
        while not stop.is_set():
            cmid = f"k{i:05d}"
            try:
                info = sender.publish(f"chat/send/{conv}", {"cmid": cmid, "body": f"body {i}"}, wait=False)
            except AssertionError:
                break  # the connection is gone
            attempted.append(cmid)
            try:
                rc = sender.wait_puback(info, timeout=10)
            except (ConnectionLost, AssertionError):
                break
            if rc >= 0x80:
                errors.append(f"{cmid}: PUBACK {rc:#x}")
                break
            acked.append(cmid)
            if len(acked) >= kill_after:
                reached.set()
            i += 1
        reached.set()

    t = threading.Thread(target=run, daemon=True)
    t.start()
    assert reached.wait(120), "sender never reached the kill point"
    broker.kill()
    stop.set()
    t.join(30)
    assert not t.is_alive(), "sender thread hung"
    sender.disconnect()
    assert not errors, errors
    assert len(acked) >= kill_after, f"only {len(acked)} acks before the sender stopped"
    return acked, attempted


@pytest.mark.parametrize(
    "opts",
    [{}, {"fsync": "always"}, {"fsync": "always", "commit_interval_ms": 60000}, {"journal": "on", "commit_interval_ms": 60000}],
    ids=["fsync-default", "fsync-always", "always-all-in-journal", "off-all-in-journal"],
)
def test_sigkill_mid_stream_loses_no_acknowledged_message(make_broker, users, opts):
    """With commit_interval_ms 60000 the database gets nothing after the group's creation:
    every acknowledged send is in the journal alone when the broker is killed."""
    br = make_broker(opts=opts)
    a, b = users("alice", "bob")
    alice = br.client(a)
    g = alice.create_group("durable", [b])
    members_before = alice.conv_get(g)["members"]

    acked, attempted = drive_until_killed(br, alice, g)
    br.start()  # same db dir, same ports
    if opts.get("commit_interval_ms"):
        applied = re.search(r"applied (\d+) journal records", br.all_output())
        assert applied and int(applied.group(1)) >= len(acked), "the sends came back from the journal"

    bob = br.client(b, protocol=4)
    hist = bob.history_all(g, page=200)
    seqs = [m["seq"] for m in hist]
    assert seqs == list(range(1, len(hist) + 1)), "seq contiguous from 1, no gap, no repeat"
    assert hist[0]["type"] == "system" and hist[0]["event"] == "created"
    stored = [m["cmid"] for m in hist[1:]]
    print(f"acked {len(acked)}, attempted {len(attempted)}, stored after restart {len(stored)}")
    assert len(stored) == len(set(stored)), "every cmid stored once"
    # every acknowledged message is there, in send order; at most the one in flight besides
    assert stored[: len(acked)] == acked
    assert stored in (attempted[: len(acked)], attempted[: len(acked) + 1]), (len(stored), len(acked))
    for m in hist[1:]:
        assert m["from"] == a and m["body"] == f"body {int(m['cmid'][1:])}"
    last_seq = seqs[-1]
    got = bob.conv_get(g)
    assert got["last_seq"] == last_seq
    assert sorted(got["members"], key=lambda x: x["user"]) == sorted(members_before, key=lambda x: x["user"])

    # the client retries what it has no PUBACK for: safe thanks to the cmid
    alice2 = br.client(a)
    alice2.sub_conv(g)
    bob.sub_conv(g)
    inflight = attempted[len(acked)] if len(attempted) > len(acked) else None
    if inflight is not None:
        r = alice2.send(g, f"body {int(inflight[1:])}", cmid=inflight)
        assert r.rc in ACCEPTED
        again = alice2.expect_message(g)
        assert again["cmid"] == inflight
        if inflight in stored:
            assert again["seq"] <= last_seq  # the stored original, re-sent to this device
            bob.expect_none(f"chat/c/{g}/m", wait=0.3)
        else:
            assert again["seq"] == last_seq + 1
            assert bob.expect_message(g)["seq"] == last_seq + 1
            last_seq += 1

    # and the next send continues at last_seq + 1
    r = alice2.send(g, "after the crash")
    assert r.rc in ACCEPTED
    assert_stamped(bob.expect_message(g), g, last_seq + 1, a, cmid=r.cmid, body="after the crash")
    final = [m["cmid"] for m in bob.history_all(g, page=200)[1:]]
    assert len(final) == len(set(final))
    assert final[-1] == r.cmid


def snapshot(client, convs):
    state = {"list": client.ok("conv.list")["conversations"]}
    for c in convs:
        got = client.conv_get(c)
        got["members"] = sorted(got["members"], key=lambda m: m["user"])
        state[c] = got
        state[c + "/history"] = client.history_all(c)
    for x in state["list"]:
        x["members"] = sorted(x["members"])
    return state


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_restart_keeps_conversations_and_membership(make_broker, users, how):
    br = make_broker()
    a, b, c, d = users("alice", "bob", "carol", "dave")
    alice = br.client(a)
    direct = alice.create_direct(b)
    g = alice.create_group("before", [b, c])
    alice.ok("conv.update", {"conv": g, "name": "after rename"})
    alice.ok("members.add", {"conv": g, "users": [d]})
    alice.ok("members.remove", {"conv": g, "users": [c]})
    alice.sub_conv(g)
    dup = alice.send(g, "remember my cmid")
    alice.send(direct, "hi bob")
    alice.expect_message(g, pred=lambda m: m.get("cmid") == dup.cmid)
    before = snapshot(alice, [direct, g])
    alice.disconnect()

    if how == "sigterm":
        assert br.stop() == 0
    else:
        br.kill()
    br.start()

    alice = br.client(a)
    after = snapshot(alice, [direct, g])
    assert after == before

    # membership is enforced as before
    carol = br.client(c)
    carol.err("conv.get", {"conv": g}, code="not_member")
    dave = br.client(d)
    assert dave.conv_get(g)["name"] == "after rename"
    # direct creation is still idempotent
    r = br.client(b).ok("conv.create", {"type": "direct", "with": a})
    assert r["created"] is False and r["conv"]["conv"] == direct
    # cmids are remembered across the restart
    alice.sub_conv(g)
    r = alice.send(g, "remember my cmid", cmid=dup.cmid)
    assert r.rc < 0x80
    orig = alice.expect_message(g)
    assert orig["cmid"] == dup.cmid and orig["seq"] == before[g + "/history"][-1]["seq"]
    assert alice.conv_get(g)["last_seq"] == before[g]["last_seq"]
