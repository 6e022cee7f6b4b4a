"""The Python terminal client (clients/python/chatcli.py) under a pty (pexpect), against a real
broker with the plugin: two terminals chat, scroll back through history, see typing, receipts
and presence, and one of them fills a gap after losing its connection."""
from __future__ import annotations

import io
import os
import re
import sys
import uuid

import pexpect
import pytest

from helpers import ROOT

CLI = ROOT / "clients" / "python" / "chatcli.py"
ANY = r"[^\n]*"


class Term:
    """One chatcli process in a pseudo-terminal."""

    def __init__(self, broker, user: str, *extra: str, client_id: str | None = None):
        self.user = user
        self.client_id = client_id or f"{user}-term-{uuid.uuid4().hex[:6]}"
        env = dict(os.environ, TERM="dumb", PYTHONUNBUFFERED="1")
        self.p = pexpect.spawn(sys.executable, [str(CLI), "--host", broker.host, "--port", str(broker.port),
                                                "--user", user, "--client-id", self.client_id, *extra],
                               env=env, encoding="utf-8", timeout=15, dimensions=(50, 250))
        self.log = io.StringIO()   # everything the terminal showed
        self.p.logfile_read = self.log
        self.expect(rf"\* connected as {user}:")

    def expect(self, pattern: str, timeout: float = 15):
        try:
            self.p.expect(pattern, timeout=timeout)
        except (pexpect.TIMEOUT, pexpect.EOF) as e:
            raise AssertionError(f"{self.user}: {pattern!r} not seen; last output:\n{self.p.before[-3000:]}") from e
        return self.p.match

    def cmd(self, line: str) -> None:
        self.p.sendline(line)

    def quit(self) -> None:
        if self.p.isalive():
            self.p.sendline("/quit")
            self.p.expect([pexpect.EOF, "bye"], timeout=10)
            self.p.expect(pexpect.EOF, timeout=10)
        self.p.close()
        assert self.p.exitstatus == 0, f"{self.user}: chatcli exited with {self.p.exitstatus}"


@pytest.fixture
def term(broker):
    made: list[Term] = []

    def make(user: str, *extra: str, **kw) -> Term:
        t = Term(broker, user, *extra, **kw)
        made.append(t)
        return t

    yield make
    for t in made:
        if t.p.isalive():
            t.p.terminate(force=True)


def test_two_terminals_send_receive_and_history(broker, term, users):
    alice, bob = users("alice", "bob")
    a = term(alice)
    b = term(bob)

    a.cmd(f"/dm {bob}")
    a.expect(rf"--- @{bob} \((d_\w+)")
    a.cmd("hello bob")
    a.expect(rf"\[@{bob}\] {ANY}{alice}: hello bob \(#2\)")
    # bob is told of the new conversation and the message, and /list counts it unread
    b.expect(rf"new message in @{alice} from {alice}")
    b.cmd("/list")
    b.expect(rf"1\) @{alice}\s+d_\w+\s+unread 2 — {alice}: hello bob")
    b.cmd("/open 1")
    b.expect(rf"\[@{alice}\] {ANY}{alice}: hello bob \(#2\)")
    # opening marked it read: alice sees the receipt, and bob's unread count is 0
    a.expect(rf"{bob} read up to #2")
    b.cmd("/list")
    b.expect(r"unread 0")

    # typing (seen in the line being edited), idle once it is sent, and presence
    b.p.send("hi al")
    a.expect(rf"\[@{bob}\] {bob} is typing…")
    b.cmd("ice")
    a.expect(rf"\[@{bob}\] {ANY}{bob}: hi alice \(#3\)")
    a.expect(rf"\[@{bob}\] {bob} stopped typing")
    b.expect(rf"\[@{alice}\] {ANY}{bob}: hi alice \(#3\)")
    a.cmd("/who")
    a.expect(rf"{bob}: online")

    # 30 more messages, then a fresh terminal scrolls back through them
    for i in range(30):
        a.cmd(f"line {i:02d}")
        a.expect(rf"{alice}: line {i:02d} \(#{i + 4}\)")
    b.expect(rf"{alice}: line 29 \(#33\)")
    a.quit()
    a2 = term(alice, "--history", "5")
    a2.cmd(f"/open @{bob}")
    a2.expect(r"\(older messages: /history\)")
    a2.expect(rf"{alice}: line 25 \(#29\)")
    a2.expect(rf"{alice}: line 29 \(#33\)")
    a2.cmd("/history 10")
    a2.expect(r"--- 10 older message\(s\) ---")
    a2.expect(rf"{alice}: line 15 \(#19\)")
    a2.expect(rf"{alice}: line 24 \(#28\)")
    a2.expect(r"--- end of older messages ---\r?\n")
    a2.cmd("/history 100")
    a2.expect(r"--- 18 older message\(s\) ---")
    a2.expect(rf"\* {alice} created {ANY}\(#1\)")
    a2.expect(rf"{bob}: hi alice \(#3\)")
    a2.expect(r"--- end of older messages --- \(the beginning\)")
    # a group, and a send failure shown as such
    a2.cmd(f"/group team {bob}")
    a2.expect(r"--- #team \((g_\w+)")
    b.expect(rf"\* {alice} added you to g_\w+")
    a2.cmd("/typing")
    b.expect(rf"\[#team\] {alice} is typing…")
    a2.cmd("/open g_nonexistent00")
    a2.expect(r"! not_found: no conversation")
    a2.quit()
    b.quit()


def test_reconnect_fills_the_gap(broker, term, users):
    alice, bob = users("alice", "bob")
    b = term(bob)
    sender = broker.client(alice)
    conv = sender.create_direct(bob)
    sender.send(conv, "before")
    b.expect(rf"new message in @{alice} from {alice}")
    b.cmd(f"/open @{alice}")
    b.expect(rf"{alice}: before \(#2\)")

    # a session take-over with bob's client id drops the terminal's connection; while it waits to
    # reconnect (paho: at least 1 s), three messages are stored that it never receives live
    thief = broker.client(bob, client_id=b.client_id, auto_sub=False)
    b.expect(r"! disconnected")
    for i in range(3):
        sender.send(conv, f"missed {i}")
    for i in range(3):
        b.expect(rf"{alice}: missed {i} \(#{3 + i}\)", timeout=30)
    b.expect(rf"\* caught up: 3 missed message\(s\) in @{alice}")
    thief.disconnected.wait(10)
    # and it is live again
    sender.send(conv, "after")
    b.expect(rf"{alice}: after \(#6\)")
    # what bob's terminal displayed came in seq order, each once
    shown = [int(n) for n in re.findall(r"\(#(\d+)\)", b.log.getvalue())]
    assert shown == [1, 2, 3, 4, 5, 6], b.log.getvalue()
    b.quit()
