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

from helpers import Broker, ConnectionLost, assert_stamped, check_outgoing


class PatientBroker(Broker):
    """Restarted over and over while the machine is busy: under ASan a start-up can take
    longer than helpers' 10 s (libwebsockets reads the whole CA bundle through ASan's slow
    unwinder). A deadline for getting ready, not a pass/fail time."""

    @property
    def ready_timeout(self) -> float:
        return max(super().ready_timeout, 60.0)


def patient(br: Broker) -> Broker:
    br.__class__ = PatientBroker
    return br

BIG = 15000  # bytes of body: each such send takes ~4 overflow pages of the map


# --------------------------------------------------------------------------- helpers

def send_nowait(cl, conv: str, cmid: str, body: str):
    """Publish one QoS 1 send; returns the PUBACK code, or None when the broker closed
    the connection instead of acknowledging (what a send the store cannot commit gets)."""
    payload = {"cmid": cmid, "body": body}
    check_outgoing("send", payload)
    try:
        info = cl.publish(f"chat/send/{conv}", payload, wait=False)
    except AssertionError:
        # The broker reads the whole PUBLISH, refuses it and closes the socket, and paho,
        # still writing a 15 kB packet, may see the reset and report the publish as not
        # sent: the same refusal, seen from the other side.
        if cl.disconnected.wait(5):
            return None
        raise
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
        assert rc in cl.ok_codes, f"{cmid}: PUBACK {rc:#x}"
        acked.append(cmid)
    raise AssertionError(f"the map never filled after {limit} sends of {body_len} bytes")


# --------------------------------------------------------------------------- 1. full map

@pytest.mark.parametrize("fsync", ["off", "always"])
def test_full_map_refuses_writes_serves_reads_and_recovers(make_broker, users, fsync):
    br = patient(make_broker(opts={"map_size": "1M", "fsync": fsync}, start=False)).start()
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
            assert rc in r.ok_codes
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
        assert send_nowait(alice, g, cmid, body) in alice.ok_codes
        last_seq += 1
        assert_stamped(bob.expect_message(g), g, last_seq, a, cmid=cmid, body=body)
    # a second retry of the same cmid is a duplicate: nothing new stored
    assert send_nowait(alice, g, failed_small, failed_small_body) in alice.ok_codes
    bob.expect_none(f"chat/c/{g}/m", wait=0.3)
    hist, cmids = history_cmids(alice, g)
    assert cmids == acked + [failed_big, failed_small]
    assert hist[-1]["seq"] == last_seq
    # and writes work again
    alice.ok("members.add", {"conv": g, "users": [c]})
    r = alice.send(g, "after the resize")
    assert r.rc in alice.ok_codes
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
        first = patient(make_broker(opts={"db_path": str(db)}, start=False)).start()
        alice = first.client("alice")
        g = alice.create_group("kept", ["bob"])
        alice.disconnect()
        assert first.stop() == 0
    targets = [db] + sorted(db.iterdir())
    if shutil.which("chattr") is None or not chattr("+i", *targets):
        pytest.skip("this filesystem has no immutable attribute (chattr +i failed)")
    try:
        br = patient(make_broker(opts={"db_path": str(db)}, start=False))
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
    br = patient(make_broker(start=False)).start()
    alice = br.client(a)
    g = alice.create_group("doomed", [b])
    alice.sub_conv(g)
    assert alice.send(g, "before").rc in alice.ok_codes
    shutil.rmtree(br.db_dir)
    r = alice.send(g, "after")
    assert r.rc in alice.ok_codes
    alice.expect_message(g, pred=lambda m: m.get("cmid") == r.cmid)
    assert [m["body"] for m in alice.history(g)["messages"][1:]] == ["before", "after"]
    alice.disconnect()
    assert br.stop() == 0
    br.start()
    br.client(a).err("conv.get", {"conv": g}, code="not_member")
    assert br.db_dir.is_dir()


# --------------------------------------------------------------------------- 4. dropped mid-flow

class RawMqtt:
    """Just enough MQTT 3.1.1 / 5 over a plain socket to stop anywhere inside a QoS flow
    (a client library always finishes the flow it started)."""

    def __init__(self, broker, user: str, client_id: str, protocol: int = 4):
        self.broker, self.user, self.client_id, self.protocol = broker, user, client_id, protocol
        self.sock: socket.socket | None = None
        self.buf = b""
        self.received: list[tuple[str, int, int, bool, bytes]] = []

    @staticmethod
    def _varint(n: int) -> bytes:
        out = b""
        while True:
            b, n = n % 128, n // 128
            out += bytes([b | (0x80 if n else 0)])
            if not n:
                return out

    @staticmethod
    def _str(s: str | bytes) -> bytes:
        b = s.encode() if isinstance(s, str) else s
        return struct.pack("!H", len(b)) + b

    def _props(self, props: bytes = b"") -> bytes:
        return self._varint(len(props)) + props if self.protocol == 5 else b""

    def _send(self, first: int, body: bytes) -> None:
        self.sock.sendall(bytes([first]) + self._varint(len(body)) + body)

    def read(self, timeout: float = 5.0) -> tuple[int, int, bytes] | None:
        """(packet type, flags, body), or None when nothing came within timeout."""
        self.sock.settimeout(timeout)
        while True:
            if len(self.buf) >= 2:
                mult, n, i = 1, 0, 1
                while i < len(self.buf):
                    b = self.buf[i]
                    n += (b & 0x7F) * mult
                    mult *= 128
                    i += 1
                    if not b & 0x80:
                        if len(self.buf) >= i + n:
                            first, body = self.buf[0], self.buf[i:i + n]
                            self.buf = self.buf[i + n:]
                            return first >> 4, first & 0x0F, body
                        break
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return None
            if not chunk:
                raise ConnectionLost("broker closed the connection")
            self.buf += chunk

    def expect(self, ptype: int, timeout: float = 5.0) -> tuple[int, bytes]:
        p = self.read(timeout)
        assert p is not None, f"no packet of type {ptype} within {timeout}s"
        assert p[0] == ptype, f"expected packet type {ptype}, got {p[0]} {p[2][:100]!r}"
        return p[1], p[2]

    def connect(self, clean: bool) -> bool:
        """CONNECT with a persistent session unless clean; returns CONNACK's session present."""
        self.sock = socket.create_connection((self.broker.host, self.broker.port), timeout=5)
        self.buf = b""
        flags = 0x80 | (0x02 if clean else 0)   # username, clean session / clean start
        props = b"\x11" + struct.pack("!I", 3600) if self.protocol == 5 else b""   # session expiry
        body = (self._str("MQTT") + bytes([self.protocol, flags]) + struct.pack("!H", 60) + self._props(props)
                + self._str(self.client_id) + self._str(self.user))
        self._send(0x10, body)
        _, ack = self.expect(2)
        assert ack[1] == 0, f"CONNACK {ack!r}"
        return bool(ack[0] & 1)

    def publish(self, topic: str, payload: bytes, qos: int, mid: int, dup: bool = False) -> None:
        body = self._str(topic) + (struct.pack("!H", mid) if qos else b"") + self._props() + payload
        self._send(0x30 | (0x08 if dup else 0) | (qos << 1), body)

    def ack(self, ptype: int, mid: int) -> None:
        """PUBACK (4), PUBREC (5), PUBREL (6, flags 2) or PUBCOMP (7) for mid."""
        self._send((ptype << 4) | (2 if ptype == 6 else 0), struct.pack("!H", mid))

    def expect_ack(self, ptype: int, mid: int) -> int:
        """The next packet but PUBLISHes (acked and kept in self.received) is an ack of ptype
        for mid; returns its reason code (0 if none)."""
        while True:
            p = self.read()
            assert p is not None, f"no packet of type {ptype} within 5s"
            if p[0] != 3:
                break
            pub = self.parse_publish(p[1], p[2])
            self.received.append(pub)
            if pub[1] == 1:
                self.ack(4, pub[2])
        assert p[0] == ptype, f"expected packet type {ptype}, got {p[0]} {p[2][:100]!r}"
        body = p[2]
        assert struct.unpack("!H", body[:2])[0] == mid, body
        return body[2] if len(body) > 2 else 0

    def subscribe(self, topic: str, qos: int, mid: int = 1) -> int:
        self._send(0x82, struct.pack("!H", mid) + self._props() + self._str(topic) + bytes([qos]))
        _, body = self.expect(9)
        return body[-1]

    def parse_publish(self, flags: int, body: bytes) -> tuple[str, int, int, bool, bytes]:
        """(topic, qos, mid, dup, payload) of a PUBLISH's flags and body."""
        tl = struct.unpack("!H", body[:2])[0]
        topic, pos, qos = body[2:2 + tl].decode(), 2 + tl, (flags >> 1) & 3
        mid = 0
        if qos:
            mid, pos = struct.unpack("!H", body[pos:pos + 2])[0], pos + 2
        if self.protocol == 5:
            mult, n = 1, 0
            while True:
                b = body[pos]
                pos += 1
                n += (b & 0x7F) * mult
                mult *= 128
                if not b & 0x80:
                    break
            pos += n
        return topic, qos, mid, bool(flags & 0x08), body[pos:]

    def drop(self) -> None:
        """Close the TCP connection without DISCONNECT, whatever is in flight."""
        self.sock.close()
        self.sock = None


def send_payload(cmid: str, body: str) -> bytes:
    p = {"cmid": cmid, "body": body}
    check_outgoing("send", p)
    import json
    return json.dumps(p).encode()


def only_once(bob, conv: str, cmid: str) -> dict:
    """bob got the stamped message of cmid exactly once, and history holds it once."""
    m = bob.expect_message(conv, pred=lambda m: m.get("cmid") == cmid)
    bob.expect_none(f"chat/c/{conv}/m", wait=0.5)
    _, cmids = history_cmids(bob, conv)
    assert cmids.count(cmid) == 1, cmids
    return m


@pytest.mark.parametrize("proto", [4, 5], ids=["mqtt311", "mqtt5"])
@pytest.mark.parametrize("flow", ["qos1-before-puback", "qos2-before-pubrec", "qos2-before-pubrel"])
def test_sender_drops_mid_flow_stored_once(broker, users, proto, flow):
    a, b = users("alice", "bob")
    g = broker.client(a).create_group("flows", [b])
    bob = broker.client(b)
    bob.sub_conv(g)
    raw = RawMqtt(broker, a, f"{a}-raw", protocol=proto)
    assert raw.connect(clean=True) is False
    raw.drop()
    topic, mid = f"chat/send/{g}", 7
    payload = send_payload("c-" + flow, "mid-flow " + flow)
    qos = 1 if flow.startswith("qos1") else 2

    raw.connect(clean=False)
    raw.publish(topic, payload, qos, mid)
    if flow == "qos2-before-pubrel":
        assert raw.expect_ack(5, mid) < 0x80     # PUBREC: stored; the client dies before PUBREL
    raw.drop()

    # the client comes back with its session and finishes as a library would: resend the
    # PUBLISH with DUP (no ack seen), or the PUBREL (PUBREC seen)
    assert raw.connect(clean=False) is True, "the session survived"
    if flow == "qos2-before-pubrel":
        raw.ack(6, mid)
        assert raw.expect_ack(7, mid) == 0
    else:
        raw.publish(topic, payload, qos, mid, dup=True)
        assert raw.expect_ack(4 if qos == 1 else 5, mid) < 0x80
        if qos == 2:
            raw.ack(6, mid)
            assert raw.expect_ack(7, mid) == 0
    m = only_once(bob, g, "c-" + flow)
    assert m["seq"] == 2 and m["from"] == a
    # a resent PUBLISH that the store already had yields the stored original to the
    # sending device alone (docs/protocol.md, "Duplicate")
    import json
    assert all(json.loads(p[4]) == m for p in raw.received), raw.received
    # and the next send takes the next seq: nothing was consumed twice
    raw.publish(topic, send_payload("c-next", "next"), 1, mid + 1)
    assert raw.expect_ack(4, mid + 1) < 0x80
    assert only_once(bob, g, "c-next")["seq"] == 3
    raw.drop()


@pytest.mark.parametrize("proto", [4, 5], ids=["mqtt311", "mqtt5"])
def test_subscriber_drops_before_acking_gets_the_stamped_copy_once(broker, users, proto):
    """The plugin publishes stamped copies at QoS 1, so a QoS 2 subscription receives QoS 1:
    there is no outbound QoS 2 flow to interrupt. A subscriber that drops before its PUBACK
    gets the same stamped bytes again (DUP) from its session, once. MQTT 3.1.1: clean
    session off; MQTT 5: clean start off and a session expiry interval."""
    a, b = users("alice", "bob")
    alice = broker.client(a)
    g = alice.create_group("deliver", [b])
    raw = RawMqtt(broker, b, f"{b}-raw", protocol=proto)
    raw.connect(clean=True)
    raw.drop()
    raw.connect(clean=False)
    assert raw.subscribe(f"chat/c/{g}/m", qos=2) == 2
    r = alice.send(g, "deliver me once")
    assert r.rc in alice.ok_codes

    topic, qos, mid, dup, first = raw.parse_publish(*raw.expect(3))
    assert (topic, qos, dup) == (f"chat/c/{g}/m", 1, False)
    raw.drop()   # no PUBACK

    assert raw.connect(clean=False) is True
    topic, qos, mid2, dup, again = raw.parse_publish(*raw.expect(3))
    assert (topic, qos, mid2, dup) == (f"chat/c/{g}/m", 1, mid, True)
    assert again == first, "the stamped copy survived in the session, byte for byte"
    raw.ack(4, mid)
    assert raw.read(timeout=0.5) is None, "delivered once"
    import json
    m = json.loads(first)
    assert_stamped(m, g, 2, a, cmid=r.cmid, body="deliver me once")
    raw.drop()


# --------------------------------------------------------------------------- 3. SIGKILL under mixed load

ROUNDS = 5


class Load:
    """What a mixed load did, as its clients saw it: every attempt, and every acknowledgement
    (a PUBACK for a send or receipt, a reply for a membership change)."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.attempted: dict[str, set[str]] = {}        # conv -> cmids published
        self.acked: dict[str, list[str]] = {}           # conv -> cmids acknowledged
        self.members: dict[str, set[str]] = {}          # conv -> members after every acked change
        self.inflight_op: tuple | None = None           # the membership change without a reply yet
        self.acked_read: dict[str, int] = {}            # conv -> highest read cursor acknowledged
        self.seen_read: dict[str, int] = {}             # conv -> read_seq found after the last restart
        self.errors: list[str] = []
        self.stop = threading.Event()


def _acked(cl, info) -> int | None:
    try:
        return cl.wait_puback(info, timeout=5, fail_on_disconnect=True)
    except (ConnectionLost, AssertionError):
        return None


def _sender(cl, convs: list[str], load: Load, tag: str, seed: int) -> None:
    rng = random.Random(seed)
    i = 0
    while not load.stop.is_set():
        conv = rng.choice(convs)
        cmid = f"{tag}-{i}"
        i += 1
        try:
            info = cl.publish(f"chat/send/{conv}", {"cmid": cmid, "body": f"{tag} {i}"}, wait=False)
        except AssertionError:
            return
        load.attempted.setdefault(conv, set()).add(cmid)
        rc = _acked(cl, info)
        if rc is None:
            return
        if rc >= 0x80:
            load.errors.append(f"{cmid} to {conv}: PUBACK {rc:#x}")
            return
        load.acked.setdefault(conv, []).append(cmid)


def _churn(admin, groups: list[str], pool: list[str], load: Load, seed: int) -> None:
    """members.add / members.remove / conv.create by the admin, one at a time."""
    rng = random.Random(seed)
    n = 0
    while not load.stop.is_set():
        kind = rng.choice(["add"] * 3 + ["remove"] * 4 + ["create"] if n else ["add"])
        n += 1
        if kind == "create":
            who = rng.sample(pool, 2)
            op, args = "conv.create", {"type": "group", "name": f"churn {n}", "members": who}
        else:
            conv = rng.choice(groups)
            cands = [u for u in pool if (u in load.members[conv]) == (kind == "remove")]
            if not cands:
                continue
            who = [rng.choice(cands)]
            op, args = f"members.{kind}", {"conv": conv, "users": who}
        rid = f"r{n}"
        load.inflight_op = (op, args)
        try:
            info = admin.publish("chat/req", dict(args, op=op, req_id=rid), wait=False)
        except AssertionError:
            return
        if _acked(admin, info) is None:
            return
        # The PUBACK follows the commit, but the reply is queued (mosquitto_broker_publish)
        # and may leave after it: a kill in between loses the reply, not the change. Such
        # an op stays "in flight" for the check, which then accepts it applied or not.
        r = None
        while r is None and not admin.disconnected.is_set():
            try:
                r = admin.expect(admin.reply_topic, timeout=0.2, pred=lambda m: m.get("req_id") == rid)
            except AssertionError:
                pass
        if r is None:
            return
        if not r.get("ok"):
            load.errors.append(f"{op} {args}: {r}")
            return
        if op == "conv.create":
            c = r["conv"]["conv"]
            load.members[c] = set(who) | {admin.user}
            groups.append(c)
        elif op == "members.add":
            load.members[args["conv"]] |= set(who)
        else:
            load.members[args["conv"]] -= set(who)
        load.inflight_op = None


def _reader(cl, convs: list[str], load: Load, seed: int) -> None:
    """Read receipts up to what the reader has been delivered (so never beyond last_seq)."""
    rng = random.Random(seed)
    while not load.stop.is_set():
        conv = rng.choice(convs)
        seen = [m.json["seq"] for m in cl.pending(f"chat/c/{conv}/m") if m.json]
        lo = load.acked_read.get(conv, 0)
        if not seen or max(seen) <= lo:
            time.sleep(0.01)
            continue
        n = rng.randint(lo + 1, max(seen))
        try:
            info = cl.publish(f"chat/receipt/{conv}", {"read": n}, wait=False)
        except AssertionError:
            return
        rc = _acked(cl, info)
        if rc is None:
            return
        if rc >= 0x80:
            load.errors.append(f"receipt read={n} on {conv}: PUBACK {rc:#x}")
            return
        load.acked_read[conv] = max(load.acked_read.get(conv, 0), n)


def _replay_members(hist: list[dict]) -> set[str]:
    """Membership as the conversation's system messages tell it."""
    members: set[str] = set()
    for m in hist:
        if m["type"] != "system":
            continue
        if m["event"] in ("created", "members_added"):
            members |= set(m["users"])
        elif m["event"] == "members_removed":
            members -= set(m["users"])
    return members


def _check_after_restart(br, load: Load, admin: str, reader: str, direct: str, probes: dict[str, str]) -> None:
    al = br.client(admin, protocol=4)
    rd = br.client(reader, protocol=4)
    # a conversation created by a conv.create whose reply never came is adopted if it exists
    listed = {x["conv"] for x in al.ok("conv.list")["conversations"]}
    extra = listed - set(load.members) - {direct}
    op = load.inflight_op
    assert len(extra) <= (1 if op and op[0] == "conv.create" else 0), f"unexpected conversations {extra}"
    for c in extra:
        load.members[c] = set(op[1]["members"]) | {admin}
        load.inflight_op = None
    assert set(load.members) <= listed, "an acknowledged conv.create was lost"

    reads = {x["conv"]: x for x in rd.ok("conv.list")["conversations"]}
    senders = {admin: al}
    for conv in list(load.members) + [direct]:
        cl = rd if conv == direct else al
        hist, cmids = history_cmids(cl, conv)   # seq 1..last, no gap, no repeat
        last = hist[-1]["seq"]
        assert cl.conv_get(conv)["last_seq"] == last
        assert len(cmids) == len(set(cmids)), f"{conv}: a cmid stored twice"
        missing = [c for c in load.acked.get(conv, []) if c not in cmids]
        assert not missing, f"{conv}: acknowledged sends lost: {missing}"
        stray = set(cmids) - load.attempted.get(conv, set())
        assert not stray, f"{conv}: stored sends nobody made: {stray}"
        if conv != direct:
            got = {m["user"] for m in al.conv_get(conv)["members"]}
            want = load.members[conv]
            if got != want and op and op[0].startswith("members.") and op[1]["conv"] == conv:
                applied = want | set(op[1]["users"]) if op[0] == "members.add" else want - set(op[1]["users"])
                assert got == applied, f"{conv}: members {got}, expected {want} (or {applied})"
                load.members[conv] = got
                load.inflight_op = None
            assert got == load.members[conv], f"{conv}: members {got} != acknowledged {load.members[conv]}"
            assert _replay_members(hist) == got, f"{conv}: system messages disagree with the members"
        if conv in reads:
            rs = reads[conv]["read_seq"]
            assert rs <= last, f"{conv}: read cursor {rs} beyond last_seq {last}"
            assert rs >= load.acked_read.get(conv, 0), f"{conv}: acked read {load.acked_read[conv]} lost ({rs})"
            assert rs >= load.seen_read.get(conv, 0), f"{conv}: read cursor moved back"
            load.seen_read[conv] = rs
            load.acked_read[conv] = rs
        # the next send continues at last_seq + 1
        who = probes.get(conv, admin)
        sender = senders.get(who) or senders.setdefault(who, br.client(who, protocol=4))
        cmid = f"probe-{conv}-{last}"
        load.attempted.setdefault(conv, set()).add(cmid)
        assert send_nowait(sender, conv, cmid, "probe") == 0
        load.acked.setdefault(conv, []).append(cmid)
        nxt = cl.history(conv, after=last)["messages"]
        assert [(m["seq"], m["cmid"]) for m in nxt] == [(last + 1, cmid)]
    for c in list(senders.values()) + [rd]:
        c.disconnect()


@pytest.mark.parametrize("fsync", ["off", "always"])
def test_sigkill_at_random_moments_of_a_mixed_load(make_broker, users, fsync):
    seed = int(os.environ.get("CHAT_FAULT_SEED") or random.randrange(1 << 30))
    print(f"\nfsync {fsync}: seed {seed} (CHAT_FAULT_SEED={seed} reproduces the kill times)")
    rng = random.Random(seed)
    br = patient(make_broker(opts={"fsync": fsync}, start=False)).start()
    admin, s1, s2, reader = users("admin", "s", "s", "reader")
    pool = users(*["c"] * 4)
    al = br.client(admin, protocol=4)
    g1 = al.create_group("one", [s1, s2, reader])
    g2 = al.create_group("two", [s1, reader])
    direct = br.client(s2).create_direct(reader)
    al.disconnect()
    load = Load(rng)
    load.members = {g1: {admin, s1, s2, reader}, g2: {admin, s1, reader}}
    probes = {g1: s1, g2: s1, direct: s2}
    groups = [g1, g2]

    for rnd in range(ROUNDS):
        load.stop.clear()
        clients = {u: br.client(u, protocol=4) for u in (admin, s1, s2, reader)}
        clients[reader].sub_conv(g1, g2, direct)
        threads = [
            threading.Thread(target=_sender, args=(clients[s1], [g1, g2], load, f"{rnd}a", rng.random())),
            threading.Thread(target=_sender, args=(clients[s2], [g1, direct], load, f"{rnd}b", rng.random())),
            threading.Thread(target=_churn, args=(clients[admin], groups, pool, load, rng.random())),
            threading.Thread(target=_reader, args=(clients[reader], [g1, g2, direct], load, rng.random())),
        ]
        before = sum(len(v) for v in load.acked.values())
        for t in threads:
            t.start()
        delay = rng.uniform(0.2, 1.5)
        time.sleep(delay)
        br.kill()
        load.stop.set()
        for t in threads:
            t.join(20)
            assert not t.is_alive(), "a load thread hung"
        for c in clients.values():
            c.disconnect()
        assert not load.errors, load.errors
        print(f"round {rnd}: killed after {delay:.2f}s, "
              f"{sum(len(v) for v in load.acked.values()) - before} sends acked, "
              f"membership change without reply: {(load.inflight_op or ['none'])[0]}")
        t0 = time.monotonic()
        br.start()
        t1 = time.monotonic()
        _check_after_restart(br, load, admin, reader, direct, probes)
        print(f"         restart {t1 - t0:.1f}s, checks {time.monotonic() - t1:.1f}s")
    print(f"{ROUNDS} kills: {sum(len(v) for v in load.acked.values())} acknowledged sends all present once, "
          f"{len(groups)} groups, members {({c: len(m) for c, m in load.members.items()})}")


@pytest.mark.parametrize("proto", [4, 5], ids=["mqtt311", "mqtt5"])
@pytest.mark.parametrize("qos", [1, 2])
def test_paho_resends_after_a_dropped_connection_stored_once(broker, users, proto, qos):
    """The same with a real client library: paho publishes a burst, loses its connection
    at once (wherever each flow stands), reconnects with its session and finishes every
    flow itself (PUBLISH with DUP, or PUBREL). Each message is stored and delivered once."""
    a, b = users("alice", "bob")
    g = broker.client(a).create_group("paho", [b])
    bob = broker.client(b)
    bob.sub_conv(g)
    alice = broker.client(a, protocol=proto, clean=False, session_expiry=3600 if proto == 5 else None,
                          client_id=f"{a}-persistent")
    cmids = [f"burst-{qos}-{i}" for i in range(30)]
    infos = [alice.c.publish(f"chat/send/{g}", send_payload(c, "burst"), qos=qos) for c in cmids]
    sock = alice.c.socket()
    (getattr(sock, "_socket", sock)).shutdown(socket.SHUT_RDWR)
    assert alice.disconnected.wait(5)
    alice.c.loop_stop()
    alice.disconnected.clear()
    alice._connected.clear()
    alice.c.reconnect()
    alice.c.loop_start()
    assert alice._connected.wait(10)
    for info in infos:
        assert alice.wait_puback(info, timeout=10, fail_on_disconnect=False) < 0x80
    got = [m["cmid"] for m in bob.expect_n(f"chat/c/{g}/m", len(cmids))]
    bob.expect_none(f"chat/c/{g}/m", wait=0.5)
    assert sorted(got) == sorted(cmids), "each message delivered once"
    hist, stored = history_cmids(bob, g)
    assert sorted(stored) == sorted(cmids) and len(hist) == 1 + len(cmids), "each stored once, seq 2..31"
    print(f"qos {qos}: {sum(1 for m in alice.all_msgs if m.topic.endswith('/m'))} originals re-sent to the sender")
