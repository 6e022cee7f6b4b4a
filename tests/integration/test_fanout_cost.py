"""What one receipt and one typing event cost in deliveries: a 10-member group against a
500-member group, every member connected and subscribed to chat/c/{conv}/+ (issue 3, "Large
groups"; docs/protocol.md, "Receipts" and "Typing": no fan-out above receipt_fanout_max and
typing_fanout_max, 50 by default).

paho clients use select() and stop working past ~1000 file descriptors in one process (about 330
clients), so the members here are minimal MQTT 3.1.1 clients on raw sockets driven by one epoll loop;
the acting member is a normal paho client. Deliveries are counted twice: by what the clients
received, and by the broker's own log ("Sending PUBLISH to … 'chat/c/{conv}/receipt'").

Run with `pytest -s` to see the figures."""
from __future__ import annotations

import json
import re
import selectors
import socket
import struct
import time

SMALL, LARGE = 10, 500


def _remaining_length(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n % 128
        n //= 128
        out.append(b | 0x80 if n else b)
        if not n:
            return bytes(out)


def _str(s: str) -> bytes:
    b = s.encode()
    return struct.pack("!H", len(b)) + b


def _packet(first: int, body: bytes) -> bytes:
    return bytes([first]) + _remaining_length(len(body)) + body


class RawMembers:
    """Many MQTT 3.1.1 connections in one thread: connect, subscribe, publish at QoS 1, count."""

    def __init__(self, broker, users: list[str], conv: str):
        self.sel = selectors.DefaultSelector()
        self.conns: list[dict] = []
        for u in users:
            s = socket.create_connection((broker.host, broker.port), timeout=10)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            cid = f"{u}-raw"
            var = _str("MQTT") + bytes([4, 0x82]) + struct.pack("!H", 60)  # username, clean session
            s.sendall(_packet(0x10, var + _str(cid) + _str(u)))
            assert self._read_exact(s, 4) == b"\x20\x02\x00\x00", f"{u}: CONNACK refused"
            s.sendall(_packet(0x82, struct.pack("!H", 1) + _str(f"chat/c/{conv}/+") + b"\x01"))
            assert self._read_exact(s, 5) == b"\x90\x03\x00\x01\x01", f"{u}: SUBSCRIBE refused"
            s.setblocking(False)
            c = {"user": u, "sock": s, "buf": b"", "msgs": [], "pubacks": 0, "mid": 1}
            self.sel.register(s, selectors.EVENT_READ, c)
            self.conns.append(c)

    @staticmethod
    def _read_exact(s: socket.socket, n: int) -> bytes:
        data = b""
        while len(data) < n:
            chunk = s.recv(n - len(data))
            if not chunk:
                raise AssertionError("connection closed by the broker")
            data += chunk
        return data

    def publish(self, c: dict, topic: str, payload: dict) -> None:
        c["mid"] += 1
        body = _str(topic) + struct.pack("!H", c["mid"]) + json.dumps(payload).encode()
        c["sock"].setblocking(True)
        c["sock"].sendall(_packet(0x32, body))
        c["sock"].setblocking(False)

    def _parse(self, c: dict) -> None:
        buf = c["buf"]
        while len(buf) >= 2:
            mult, n, i = 1, 0, 1
            while True:
                if i >= len(buf):
                    c["buf"] = buf
                    return
                b = buf[i]
                n += (b & 0x7F) * mult
                mult *= 128
                i += 1
                if not b & 0x80:
                    break
            if len(buf) < i + n:
                break
            first, body, buf = buf[0], buf[i:i + n], buf[i + n:]
            kind, qos = first >> 4, (first >> 1) & 3
            if kind == 3:
                tlen = struct.unpack("!H", body[:2])[0]
                topic = body[2:2 + tlen].decode()
                pos = 2 + tlen
                if qos:
                    pid = body[pos:pos + 2]
                    pos += 2
                    c["sock"].setblocking(True)
                    c["sock"].sendall(b"\x40\x02" + pid)
                    c["sock"].setblocking(False)
                c["msgs"].append((topic, qos, body[pos:]))
            elif kind == 4:
                c["pubacks"] += 1
        c["buf"] = buf

    def pump(self, until, timeout: float = 20.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while not until():
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout}s waiting for {what}")
            for key, _ in self.sel.select(min(left, 0.2)):
                c = key.data
                try:
                    data = c["sock"].recv(65536)
                except BlockingIOError:
                    continue
                if not data:
                    raise AssertionError(f"{c['user']}: connection closed by the broker")
                c["buf"] += data
                self._parse(c)

    def count(self, topic: str) -> int:
        return sum(1 for c in self.conns for t, _, _ in c["msgs"] if t == topic)

    def qos_of(self, topic: str) -> set[int]:
        return {q for c in self.conns for t, q, _ in c["msgs"] if t == topic}

    def close(self) -> None:
        for c in self.conns:
            try:
                c["sock"].setblocking(True)
                c["sock"].sendall(b"\xe0\x00")
                c["sock"].close()
            except OSError:
                pass
        self.sel.close()


def log_deliveries(broker, topic: str) -> int:
    pat = re.compile(r"Sending PUBLISH to \S+ \(.*'" + re.escape(topic) + r"'")
    return sum(1 for line in broker.log_path.read_text(errors="replace").splitlines() if pat.search(line))


def measure(br, users, size: int) -> dict:
    names = users(*[f"f{size}x" for _ in range(size)])
    actor = br.client(names[0], protocol=5)
    r = actor.ok("conv.create", {"type": "group", "name": f"fan-out {size}", "members": names[1:]})
    g = r["conv"]["conv"]
    assert len(r["conv"]["members"]) == size
    actor.sub_conv(g)
    t0 = time.monotonic()
    raw = RawMembers(br, names[1:], g)
    connect_s = time.monotonic() - t0
    rt, tt, mt = f"chat/c/{g}/receipt", f"chat/c/{g}/typing", f"chat/c/{g}/m"
    n_msgs = 0

    def barrier():
        # a message after the events: every member gets it after anything the events caused
        nonlocal n_msgs
        assert actor.send(g, "barrier").rc in actor.ok_codes
        n_msgs += 1
        raw.pump(lambda: raw.count(mt) == n_msgs * (size - 1), what="the barrier message at every member")
        actor.expect_message(g)

    def deliveries(topic: str) -> int:
        return raw.count(topic) + len(actor.drain(topic))

    try:
        out = {"size": size, "connected": size, "connect_s": connect_s}
        # one receipt, from the actor
        before = log_deliveries(br, rt)
        assert actor.publish(f"chat/receipt/{g}", {"read": 1}) in actor.ok_codes
        barrier()
        out["receipt"] = deliveries(rt)
        out["receipt_log"] = log_deliveries(br, rt) - before
        # one typing event, from the actor
        before = log_deliveries(br, tt)
        assert actor.publish(f"chat/typing/{g}", {"state": "typing"}, qos=0) == 0
        barrier()
        out["typing"] = deliveries(tt)
        out["typing_log"] = log_deliveries(br, tt) - before
        out["typing_qos"] = raw.qos_of(tt)
        # a burst: every other member reads and types once (QoS 1, so each is acknowledged)
        before_r, before_t = log_deliveries(br, rt), log_deliveries(br, tt)
        raw_r, raw_t = raw.count(rt), raw.count(tt)
        t0 = time.monotonic()
        for c in raw.conns:
            raw.publish(c, f"chat/receipt/{g}", {"read": 1})
            raw.publish(c, f"chat/typing/{g}", {"state": "typing"})
        raw.pump(lambda: all(c["pubacks"] == 2 for c in raw.conns), what="PUBACKs of the burst")
        out["burst_s"] = time.monotonic() - t0
        barrier()
        out["burst_events"] = 2 * (size - 1)
        out["burst_receipt"] = raw.count(rt) - raw_r + len(actor.drain(rt))
        out["burst_typing"] = raw.count(tt) - raw_t + len(actor.drain(tt))
        out["burst_receipt_log"] = log_deliveries(br, rt) - before_r
        out["burst_typing_log"] = log_deliveries(br, tt) - before_t
        # the events were stored (receipts) even where not published
        counts = actor.ok("receipts.counts", {"conv": g, "after": 0, "limit": 1})["messages"][0]
        out["read_by_seq1"] = counts["read_by"]
        return out
    finally:
        raw.close()
        actor.disconnect()


def test_publishes_per_receipt_and_typing_event(make_broker, users):
    br = make_broker()  # defaults: receipt_fanout_max 50, typing_fanout_max 50, max_members 500
    small = measure(br, users, SMALL)
    large = measure(br, users, LARGE)

    lines = ["", "deliveries caused by one event (every member connected and subscribed to chat/c/{conv}/+):",
             f"{'group':>8} {'connected':>9} {'receipt':>8} {'typing':>7} {'burst events':>13} "
             f"{'burst deliveries (receipt+typing)':>34} {'burst s':>8}"]
    for r in (small, large):
        lines.append(f"{r['size']:>8} {r['connected']:>9} {r['receipt']:>8} {r['typing']:>7} {r['burst_events']:>13} "
                     f"{r['burst_receipt'] + r['burst_typing']:>34} {r['burst_s']:>8.3f}")
    lines.append(f"(broker log agrees: receipt {small['receipt_log']}/{large['receipt_log']}, typing "
                 f"{small['typing_log']}/{large['typing_log']}; connecting {LARGE - 1} raw members took "
                 f"{large['connect_s']:.2f}s)")
    print("\n".join(lines))

    # 10 members (<= 50): one publish, delivered to every member's device, the reader's/typist's own too
    assert small["receipt"] == small["receipt_log"] == SMALL
    assert small["typing"] == small["typing_log"] == SMALL
    assert small["typing_qos"] == {0}
    assert small["burst_receipt"] == small["burst_receipt_log"] == (SMALL - 1) * SMALL
    assert small["burst_typing"] == small["burst_typing_log"] == (SMALL - 1) * SMALL
    # 500 members (> 50): stored, never published
    assert large["receipt"] == large["receipt_log"] == 0
    assert large["typing"] == large["typing_log"] == 0
    assert large["burst_receipt"] == large["burst_receipt_log"] == 0
    assert large["burst_typing"] == large["burst_typing_log"] == 0
    # ... but the reads were stored and counted: everyone but the creator (the sender of seq 1) read it
    assert small["read_by_seq1"] == SMALL - 1
    assert large["read_by_seq1"] == LARGE - 1
