"""The small-device example (clients/c/chat_device.c, libmosquitto) against a real broker with
the plugin: it sends and a Python client receives, a Python client sends and it receives and
acks with a read receipt, and it fills gaps — after a reboot (state file) and after a dropped
connection."""
from __future__ import annotations

import os
import queue
import subprocess
import threading
from pathlib import Path

import pytest

from helpers import PLUGIN

DEVICE = Path(os.environ.get("CHAT_DEVICE") or Path(PLUGIN).resolve().parents[1] / "clients" / "c" / "chat_device")


@pytest.fixture(scope="module", autouse=True)
def _built():
    if not DEVICE.exists():
        pytest.fail(f"{DEVICE} does not exist: build it first (cmake --build), or name it in CHAT_DEVICE",
                    pytrace=False)


class Device:
    """chat_device as a subprocess; its stdout lines are collected as they come."""

    def __init__(self, broker, user: str, *args: str, client_id: str | None = None):
        self.client_id = client_id or f"{user}-dev"
        self.proc = subprocess.Popen(
            [str(DEVICE), "-h", broker.host, "-p", str(broker.port), "-u", user, "-i", self.client_id, *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: "queue.Queue[str]" = queue.Queue()
        self.seen: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))

    def expect(self, prefix: str, timeout: float = 15, contains: str = "") -> str:
        """The next line starting with prefix and containing `contains` (lines before it are kept
        in self.seen)."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(f"device: no line starting {prefix!r} within {timeout}s; saw {self.seen[-20:]}")
            self.seen.append(line)
            if line.startswith(prefix) and contains in line:
                return line

    def wait(self, timeout: float = 20) -> tuple[int, str]:
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"device did not exit; saw {self.seen[-20:]}")
        self.reader.join(10)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return rc, self.proc.stderr.read()

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def device(broker):
    made: list[Device] = []

    def make(*a, **kw) -> Device:
        d = Device(broker, *a, **kw)
        made.append(d)
        return d

    yield make
    for d in made:
        d.kill()


def test_device_sends_and_receives_and_acks(broker, device, users):
    alice, dev = users("alice", "sensor")
    a = broker.client(alice)
    # the device opens the direct conversation with alice itself (-w), sends a reading, and
    # stays until it got one message from alice
    d = device(dev, "-w", alice, "-m", 'temp=21.5 "C" ünïcode', "-x", "1")
    conv = d.expect("conv ").split()[1]
    a.sub_conv(conv)
    m = a.expect_message(conv, pred=lambda j: j["from"] == dev and j["type"] == "text", timeout=15)
    assert m["body"] == 'temp=21.5 "C" ünïcode'
    assert m["cmid"].startswith(f"{dev}-dev-")
    d.expect("sent ")

    r = a.send(conv, "set interval=5s\nline two")
    assert r.rc in a.ok_codes
    line = d.expect(f"msg {conv} ", contains=f"{alice}: ")
    seq = int(line.split()[2])
    assert line.endswith(f"{alice}: set interval=5s")   # the body's first line; the rest follows
    assert d.expect("line two") == "line two"
    # the device acks it: a read receipt alice sees
    rc = a.expect(f"chat/c/{conv}/receipt", pred=lambda j: j["from"] == dev and j["read"] >= seq)
    assert rc["read"] == seq and rc["delivered"] == seq
    code, err = d.wait()
    assert code == 0, err
    # what it sent is stored once
    texts = [x for x in a.history_all(conv) if x["type"] == "text"]
    assert [x["from"] for x in texts] == [dev, alice]


def test_device_catches_up_after_reboot(broker, device, users, tmp_path):
    alice, dev = users("alice", "meter")
    a = broker.client(alice)
    conv = a.create_direct(dev)
    a.sub_conv(conv)
    for i in range(3):
        a.send(conv, f"cmd {i}")
    state = tmp_path / "state"
    # first boot: no state, so everything (the created message + 3) is fetched with history
    d = device(dev, "-c", conv, "-S", str(state), "-x", "3")
    for i in range(3):
        assert d.expect(f"msg {conv} {i + 2} ").endswith(f"{alice}: cmd {i}")
    code, err = d.wait()
    assert code == 0, err
    assert state.read_text().split() == [conv, "4"]
    a.expect(f"chat/c/{conv}/receipt", pred=lambda j: j["from"] == dev and j["read"] == 4)

    # off for a while: two more, with 25 before them, and pages of 10: three history pages
    for i in range(25):
        a.send(conv, f"bulk {i}")
    a.send(conv, "cmd 3")
    a.send(conv, "cmd 4")
    d = device(dev, "-c", conv, "-S", str(state), "-x", "27", "-l", "10")
    first = d.expect(f"msg {conv} ")
    assert first.split()[2] == "5", f"the device re-read old messages: {first}"
    d.expect(f"msg {conv} 31 {alice}: cmd 4")
    code, err = d.wait()
    assert code == 0, err
    seqs = [int(x.split()[2]) for x in d.seen if x.startswith("msg ")]
    assert seqs == list(range(5, 32))
    assert [x for x in d.seen if x.startswith("filled ")][:3] == ["filled 10", "filled 10", "filled 7"]
    assert state.read_text().split() == [conv, "31"]


def test_device_fills_the_gap_after_a_dropped_connection(broker, device, users):
    alice, dev = users("alice", "valve")
    a = broker.client(alice)
    conv = a.create_direct(dev)
    d = device(dev, "-c", conv, "-r", "3", "-t", "300", "-x", "4")
    d.expect("connected")
    d.expect(f"msg {conv} 1 ")         # the created message, by the first gap fill
    # a session take-over with the device's client id drops its connection; it waits at
    # least 1 s before reconnecting, and the messages of that second come by history
    thief = broker.client(dev, client_id=d.client_id, auto_sub=False)
    d.expect("disconnected")
    for i in range(4):
        a.send(conv, f"during {i}")
    thief.disconnected.wait(15)
    d.expect("connected")
    code, err = d.wait(timeout=30)
    assert code == 0, err
    received = [x for x in d.seen if x.startswith("msg ") and f"{alice}: during" in x]
    assert [x.split(": ", 1)[1] for x in received] == [f"during {i}" for i in range(4)]
    assert any(x.startswith("filled ") and x != "filled 0" for x in d.seen), d.seen
    # its three readings were stored once each, despite the drop
    texts = [x["body"] for x in a.history_all(conv) if x["from"] == dev and x["type"] == "text"]
    assert texts == ["temp=21.0 C", "temp=21.1 C", "temp=21.2 C"]
