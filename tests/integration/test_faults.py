"""Fault injection against real brokers on a real LMDB (docs/protocol.md, "Failures"):
a full map, a database directory the broker cannot use, SIGKILL at random moments of a
mixed load, and clients that drop their connection in the middle of a QoS 1 or QoS 2
flow."""
from __future__ import annotations

import os
import random
import shutil
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from helpers import ConnectionLost, assert_stamped, check_outgoing, wait_until

BIG = 15000  # bytes of body: each such send takes ~4 overflow pages of the map


# --------------------------------------------------------------------------- helpers

def send_nowait(cl, conv: str, cmid: str, body: str):
    """Publish one QoS 1 send; returns the PUBACK code, or None when the broker closed
    the connection instead of acknowledging (what a send the store cannot commit gets)."""
    payload = {"cmid": cmid, "body": body}
    check_outgoing("send", payload)
    info = cl.publish(f"chat/send/{conv}", payload, wait=False)
    try:
        return cl.wait_puback(info, timeout=10, fail_on_disconnect=True)
    except ConnectionLost:
        return None


def history_cmids(cl, conv: str) -> tuple[list[dict], list[str]]:
    hist = cl.history_all(conv, page=200)
    assert [m["seq"] for m in hist] == list(range(1, len(hist) + 1)), "seq 1..last, no gap, no repeat"
    return hist, [m["cmid"] for m in hist if m["type"] == "text"]


def fill_until_refused(br, user: str, conv: str, body_len: int, tag: str, limit: int = 400):
    """Sends with bodies of body_len bytes until one gets no PUBACK. Returns (acked cmids,
    the refused cmid, its body). Each refusal costs the sender its connection."""
    cl = br.client(user)
    acked = []
    for i in range(limit):
        cmid = f"{tag}{i:04d}"
        body = f"{tag}{i:04d} " + "x" * body_len
        rc = send_nowait(cl, conv, cmid, body)
        if rc is None:
            assert cl.disconnected.wait(5), "a send that was not stored must not be acknowledged"
            cl.disconnect()
            return acked, cmid, body
        assert rc == cl.ok_code, f"{cmid}: PUBACK {rc:#x}"
        acked.append(cmid)
    raise AssertionError(f"the map never filled after {limit} sends of {body_len} bytes")


# --------------------------------------------------------------------------- 1. full map

@pytest.mark.parametrize("fsync", ["off", "always"])
def test_full_map_refuses_writes_serves_reads_and_recovers(make_broker, users, fsync):
    br = make_broker(opts={"map_size": "1M", "fsync": fsync})
    a, b, c = users("alice", "bob", "carol")
    alice = br.client(a)
    readers = users(*["r"] * 3)   # members who only send receipts (step 6)
    g = alice.create_group("full", [b] + readers)
    d = alice.create_direct(b)
    bob = br.client(b)
    bob.sub_conv(g, d)
    alice.disconnect()

    # 1. big sends until the map is full, then small ones until even those fail:
    # afterwards no free page is left for anything but the smallest writes
    acked_big, failed_big, failed_big_body = fill_until_refused(br, a, g, BIG, "big")
    acked_small, failed_small, failed_small_body = fill_until_refused(br, a, g, 10, "small")
    acked = acked_big + acked_small
    assert len(acked_big) >= 5, "1M should hold a few big messages"
    print(f"fsync {fsync}: {len(acked_big)} big + {len(acked_small)} small sends acked before the map was full")

    log = br.all_output()
    assert "is full (map size" in log and "Raise plugin_opt_map_size" in log, log[-3000:]
    assert "no PUBACK" in log

    # 2. a resend of a refused cmid (what the client does) is refused again, nothing stored
    alice = br.client(a)
    assert send_nowait(alice, g, failed_small, failed_small_body) is None
    alice.disconnect()

    # 3. nothing partial: members got exactly the acked messages, history holds exactly them
    got = [m["cmid"] for m in bob.expect_n(f"chat/c/{g}/m", len(acked), timeout=10)]
    assert got == acked
    bob.expect_none(f"chat/c/{g}/m", wait=0.3)
    alice = br.client(a)
    hist, cmids = history_cmids(alice, g)
    assert cmids == acked, "every acked send stored once; the refused ones not at all"
    last_seq = hist[-1]["seq"]
    assert last_seq == 1 + len(acked)

    # 4. reads go on: conv.get, conv.list, history of the other conversation
    got = alice.conv_get(g)
    assert got["last_seq"] == last_seq
    assert sorted(m["user"] for m in got["members"]) == sorted([a, b] + readers)
    lst = {x["conv"]: x for x in alice.ok("conv.list")["conversations"]}
    assert set(lst) == {g, d}
    assert lst[g]["last_seq"] == last_seq and lst[g]["last"]["cmid"] == acked[-1]
    assert lst[g]["read_seq"] == last_seq and lst[g]["unread"] == 0
    assert [(m["seq"], m["type"]) for m in alice.history(d)["messages"]] == [(1, "system")]

    # 5. requests that write get storage_full, and the connection stays up
    for op, args in [("conv.create", {"type": "group", "name": "more", "members": [b, c]}),
                     ("conv.create", {"type": "direct", "with": c}),
                     ("members.add", {"conv": g, "users": [c]})]:
        r = alice.err(op, args, code="storage_full")
        assert "storage is full" in r["error"]["message"]
    assert not alice.disconnected.is_set()
    assert sorted(m["user"] for m in alice.conv_get(g)["members"]) == sorted([a, b] + readers), "nothing half-added"
    assert {x["conv"] for x in alice.ok("conv.list")["conversations"]} == {g, d}, "no half-created conversation"

    # 6. receipts: stored while a page is free, else refused with storage_full (PUBACK 0x87
    # + send_failed); never a disconnect. (A receipt is a small write: LMDB usually still
    # finds the pages for it — 120 in a row were stored here — so either outcome passes.)
    stored, refused_at = [], None
    for u in readers:
        r = br.client(u)
        rc = r.publish(f"chat/receipt/{g}", {"read": last_seq})
        if rc == r.refused_code:
            ev = r.expect_event(pred=lambda e: e["event"] == "send_failed")
            assert ev["code"] == "storage_full" and ev["conv"] == g, ev
            assert "storage is full" in ev["message"]
            refused_at = u
        else:
            assert rc == r.ok_code
            stored.append(u)
        assert not r.disconnected.is_set()
        got = {x["conv"]: x for x in r.ok("conv.list")["conversations"]}[g]
        assert got["read_seq"] == (0 if refused_at else last_seq)
        r.disconnect()
        if refused_at:
            break
    print(f"receipts at a full map: {len(stored)} stored, then refused: {refused_at is not None}")

    # 7. typing needs no write: it still works; presence "online" is published (stored or not)
    alice.sub_conv(g)
    bob.publish(f"chat/typing/{g}", {"state": "typing"}, qos=0)
    ev = alice.expect(f"chat/c/{g}/typing")
    assert ev["from"] == b and ev["state"] == "typing"
    carol = br.client(c)
    carol.subscribe(f"chat/p/{c}")
    assert carol.publish(f"chat/p/{c}", {"state": "online"}, retain=True) < 0x80
    p = carol.expect(f"chat/p/{c}")
    assert p["state"] == "online"
    assert not carol.disconnected.is_set()
    carol.disconnect()

    # 8. the operator raises the map size and restarts; the client's retries (same cmids)
    # are stored exactly once, seq goes on without a gap
    alice.disconnect()
    bob.disconnect()
    assert br.stop() == 0
    br.opts["map_size"] = "64M"
    br.start()
    alice = br.client(a)
    bob = br.client(b)
    bob.sub_conv(g)
    for cmid, body in [(failed_big, failed_big_body), (failed_small, failed_small_body)]:
        assert send_nowait(alice, g, cmid, body) == alice.ok_code
        last_seq += 1
        assert_stamped(bob.expect_message(g), g, last_seq, a, cmid=cmid, body=body)
    # a second retry of the same cmid is a duplicate: nothing new stored
    assert send_nowait(alice, g, failed_small, failed_small_body) == alice.ok_code
    bob.expect_none(f"chat/c/{g}/m", wait=0.3)
    hist, cmids = history_cmids(alice, g)
    assert cmids == acked + [failed_big, failed_small]
    assert hist[-1]["seq"] == last_seq
    # and writes work again
    alice.ok("members.add", {"conv": g, "users": [c]})
    r = alice.send(g, "after the resize")
    assert r.rc == alice.ok_code
    assert bob.expect_message(g, pred=lambda m: m.get("cmid") == r.cmid)["seq"] == last_seq + 2


# --------------------------------------------------------------------------- 2. unusable directory

def expect_refused_start(br, path: Path, errno_text: str) -> str:
    rc, out = br.start_expect_exit()
    assert rc != 0, "the broker must not run without its database"
    line = next((x for x in out.splitlines() if "mosquitto-chat:" in x and str(path) in x), None)
    assert line is not None, f"no plugin log line naming {path}:\n{out[-2000:]}"
    assert errno_text in line, f"{errno_text!r} not in {line!r}"
    return line


@pytest.mark.parametrize("case", ["parent-missing", "under-a-file", "is-a-file"])
def test_start_refused_when_the_directory_cannot_be_made(make_broker, tmp_path, case):
    if case == "parent-missing":
        path, text = tmp_path / "no" / "such" / "db", "No such file or directory"
    elif case == "under-a-file":
        (tmp_path / "afile").write_text("x")
        path, text = tmp_path / "afile" / "db", "Not a directory"
    else:
        path, text = tmp_path / "afile", "Not a directory"
        path.write_text("x")
    br = make_broker(opts={"db_path": str(path)}, start=False)
    print(expect_refused_start(br, path, text))


def chattr(flag: str, *paths: Path) -> bool:
    r = subprocess.run(["chattr", flag, *map(str, paths)], capture_output=True, text=True)
    return r.returncode == 0


@pytest.mark.parametrize("existing", [False, True], ids=["empty-dir", "existing-db"])
def test_start_refused_on_an_immutable_directory(make_broker, tmp_path, existing):
    """Root ignores permission bits (chmod 0555 would not stop it), but not the immutable
    attribute: with `chattr +i` even root cannot create or open for writing."""
    db = tmp_path / "db"
    db.mkdir()
    if existing:
        first = make_broker(opts={"db_path": str(db)})
        alice = first.client("alice")
        g = alice.create_group("kept", ["bob"])
        alice.disconnect()
        assert first.stop() == 0
    targets = [db] + sorted(db.iterdir())
    if shutil.which("chattr") is None or not chattr("+i", *targets):
        pytest.skip("this filesystem has no immutable attribute (chattr +i failed)")
    try:
        br = make_broker(opts={"db_path": str(db)}, start=False)
        print(expect_refused_start(br, db, "Operation not permitted"))
    finally:
        chattr("-i", *targets)
    if existing:
        # once writable again, nothing was lost
        br.start()
        assert br.client("alice").conv_get(g)["name"] == "kept"


def test_start_refused_on_a_read_only_filesystem(make_broker, tmp_path):
    mnt = tmp_path / "ro"
    mnt.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=4m", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot mount a read-only tmpfs here: {r.stderr.strip()}")
    try:
        for path in (mnt, mnt / "db"):   # the mount point itself, and a directory to be made in it
            br = make_broker(opts={"db_path": str(path)}, start=False, name=f"ro-{path.name}")
            print(expect_refused_start(br, path, "Read-only file system"))
    finally:
        subprocess.run(["umount", str(mnt)], check=True)


def test_directory_removed_while_running(make_broker, users):
    """LMDB holds its files open and mapped: a broker whose directory is deleted under it
    goes on serving from the unlinked files, and stops cleanly. What it stored is gone at
    the next start (a fresh, empty database) — the operator's mistake, not a crash."""
    a, b = users("alice", "bob")
    br = make_broker()
    alice = br.client(a)
    g = alice.create_group("doomed", [b])
    alice.sub_conv(g)
    assert alice.send(g, "before").rc == alice.ok_code
    shutil.rmtree(br.db_dir)
    r = alice.send(g, "after")
    assert r.rc == alice.ok_code
    alice.expect_message(g, pred=lambda m: m.get("cmid") == r.cmid)
    assert [m["body"] for m in alice.history(g)["messages"][1:]] == ["before", "after"]
    alice.disconnect()
    assert br.stop() == 0
    br.start()
    br.client(a).err("conv.get", {"conv": g}, code="not_member")
    assert br.db_dir.is_dir()
