#!/usr/bin/env python3
"""chatcli — a line-oriented terminal client for mosquitto-chat.

    python3 clients/python/chatcli.py --host localhost --port 1883 --user alice [--password …]

Speaks only the public contract (../../docs/protocol.md, schema/): MQTT 5 over TCP with paho-mqtt 2.x,
requests on chat/req answered on chat/u/{me}/reply (matched by req_id), messages on chat/c/{conv}/m.

Type a line to send it to the open conversation; commands start with '/':

    /list                   conversations with their unread counts
    /open <n|conv|name>     open a conversation (by its number in /list, its id or its name):
                            shows the last messages and marks them read
    /dm <user>              open (create if needed) the direct conversation with user
    /group <name> <user…>   create a group with those members and open it
    /history [n]            scroll back: the n (20) messages before the oldest shown
    /who                    presence of the open conversation's members
    /typing                 tell the open conversation you are typing (in a terminal this happens
                            by itself while a line is being typed; idle when you send or clear it)
    /read                   mark the open conversation read
    /help, /quit

Robust to reconnects: paho reconnects by itself; after each (re)connect the client resubscribes,
publishes its presence, and fills every gap with `history` after the last seq it holds — the
same path that fills a gap seen live (seq 45 after 42). paho keeps every QoS 1 send until its
PUBACK and sends it again after a reconnect, with the same cmid: the plugin stores it once.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os
import queue
import sys
import threading
import time
import uuid

import paho.mqtt.client as mqtt

try:
    import readline  # noqa: F401  (line editing and history for input())
except ImportError:  # pragma: no cover
    readline = None

REQUEST_TIMEOUT = 10.0
TYPING_REFRESH = 2.0   # resend "typing" this often while typing (the plugin's typing_interval_ms)
TYPING_POLL = 0.3
PAGE = 200   # history page when filling gaps (the plugin's default history_limit)


def fmt_time(ts_ms: int) -> str:
    return time.strftime("%H:%M:%S", time.localtime(ts_ms / 1000))


class RequestError(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code


class Conv:
    """What the client knows of one conversation."""

    def __init__(self, info: dict):
        self.id = info["conv"]
        self.type = info["type"]
        self.name = info.get("name")
        self.members: list[str] = []
        self.last_seq = info.get("last_seq", 0)
        self.unread = info.get("unread", 0)
        self.seen = self.last_seq      # every seq <= seen was received (or skipped on purpose)
        self.pending: dict[int, dict] = {}  # received beyond a gap, waiting for the gap to fill
        self.oldest_shown: int | None = None
        self.read_sent = info.get("read_seq", 0)
        self.set_members(info.get("members", []))

    def set_members(self, members: list) -> None:
        self.members = [m["user"] if isinstance(m, dict) else m for m in members]

    def title(self, me: str) -> str:
        if self.type == "direct":
            others = [m for m in self.members if m != me]
            return "@" + (others[0] if others else "?")
        return "#" + (self.name or self.id)


class ChatCLI:
    def __init__(self, args: argparse.Namespace, out=sys.stdout):
        self.args = args
        self.me = args.user
        self.p = args.prefix
        self.out = out
        self.lock = threading.RLock()
        self.print_lock = threading.Lock()
        self.convs: dict[str, Conv] = {}
        self.order: list[str] = []          # /list numbering
        self.current: str | None = None
        self.presence: dict[str, dict] = {}
        self.typing: dict[tuple[str, str], float] = {}
        self.replies: dict[str, dict] = {}
        self.reply_cond = threading.Condition()
        self.subscribed: set[str] = set()   # filters of this connection (each subscribed once)
        self.req_ids = itertools.count(1)
        self.work: queue.Queue = queue.Queue()
        self.connected = threading.Event()
        self.stopping = False
        self.tty = sys.stdin.isatty() and readline is not None
        self.typing_sent: tuple[str, float] | None = None   # (conv, when) of our last "typing"

        cid = args.client_id or f"{self.me}-cli-{uuid.uuid4().hex[:6]}"
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=cid, protocol=mqtt.MQTTv5)
        c.username_pw_set(self.me, args.password)
        # the plugin refuses "offline" from clients and publishes it itself; the will is the
        # usual MQTT pattern and harmless
        c.will_set(f"{self.p}/p/{self.me}", json.dumps({"state": "offline"}), qos=1, retain=True)
        c.reconnect_delay_set(min_delay=1, max_delay=8)
        c.max_queued_messages_set(0)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        self.c = c

    # ------------------------------------------------------------------ output

    def prompt(self) -> str:
        with self.lock:
            conv = self.convs.get(self.current) if self.current else None
            return f"{conv.title(self.me)}> " if conv else "> "

    def show(self, line: str) -> None:
        """Prints a line above the input line (which readline keeps intact)."""
        with self.print_lock:
            if self.tty:
                buf = readline.get_line_buffer()
                self.out.write("\r\x1b[K" + line + "\n" + self.prompt() + buf)
            else:
                self.out.write(line + "\n")
            self.out.flush()

    def show_message(self, conv: Conv, m: dict) -> None:
        t = fmt_time(m["ts"])
        if m.get("type") == "system":
            what = m.get("event", "?")
            users = ", ".join(m.get("users", []))
            extra = f" {users}" if users else ""
            name = f" \"{m['name']}\"" if m.get("name") else ""
            self.show(f"[{conv.title(self.me)}] {t} * {m['from']} {what}{extra}{name} (#{m['seq']})")
        else:
            reply = f" (re #{m['reply_to']})" if m.get("reply_to") else ""
            self.show(f"[{conv.title(self.me)}] {t} {m['from']}: {m.get('body', '')}{reply} (#{m['seq']})")

    # ------------------------------------------------------------------ MQTT callbacks (network thread)

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self.show(f"! connection refused: {reason_code}")
            return
        with self.lock:
            self.subscribed.clear()    # clean start: the broker holds none of them now
        self.connected.set()
        self.subscribe([f"{self.p}/u/{self.me}/+"])
        client.publish(f"{self.p}/p/{self.me}", json.dumps({"state": "online"}), qos=1, retain=True)
        self.work.put(("resync",))

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.connected.clear()
        if not self.stopping:
            self.show(f"! disconnected ({reason_code}); reconnecting…")

    def _on_message(self, client, userdata, msg):
        try:
            data = json.loads(msg.payload) if msg.payload else None
        except ValueError:
            return
        parts = msg.topic.split("/")[len(self.p.split("/")):]
        if parts[:1] == ["u"] and len(parts) == 3:
            if parts[2] == "reply":
                with self.reply_cond:
                    self.replies[str(data.get("req_id"))] = data
                    self.reply_cond.notify_all()
            elif parts[2] == "event":
                self._on_event(data)
        elif parts[:1] == ["c"] and len(parts) == 3 and isinstance(data, dict):
            kind = parts[2]
            if kind == "m":
                self.deliver(parts[1], [data])
            elif kind == "typing":
                self._on_typing(parts[1], data)
            elif kind == "receipt":
                self._on_receipt(parts[1], data)
        elif parts[:1] == ["p"] and len(parts) == 2 and isinstance(data, dict):
            self._on_presence(parts[1], data)

    def _on_event(self, ev: dict) -> None:
        kind = ev.get("event")
        if kind == "send_failed":
            self.show(f"! send failed ({ev.get('code')}): {ev.get('message')}")
        elif kind == "conv.added":
            self.show(f"* {ev.get('by')} added you to {ev.get('conv')}")
            self.work.put(("added", ev["conv"]))
        elif kind == "conv.removed":
            with self.lock:
                conv = self.convs.pop(ev.get("conv"), None)
                if self.current == ev.get("conv"):
                    self.current = None
            if conv:
                self.show(f"* {ev.get('by')} removed you from {conv.title(self.me)}")

    def _on_typing(self, conv_id: str, ev: dict) -> None:
        who = ev.get("from")
        if who == self.me:
            return
        with self.lock:
            conv = self.convs.get(conv_id)
            was = self.typing.get((conv_id, who), 0) > time.time()
            if ev.get("state") == "typing":
                self.typing[(conv_id, who)] = time.time() + ev.get("ttl_ms", 6000) / 1000
            else:
                self.typing.pop((conv_id, who), None)
            now = self.typing.get((conv_id, who), 0) > time.time()
        if conv and now and not was:
            self.show(f"[{conv.title(self.me)}] {who} is typing…")
        elif conv and was and not now and conv_id == self.current:
            self.show(f"[{conv.title(self.me)}] {who} stopped typing")

    def _on_receipt(self, conv_id: str, r: dict) -> None:
        with self.lock:
            conv = self.convs.get(conv_id)
        if conv and r.get("from") != self.me and conv_id == self.current and r.get("read"):
            self.show(f"[{conv.title(self.me)}] {r['from']} read up to #{r['read']}")

    def _on_presence(self, user: str, st: dict) -> None:
        with self.lock:
            old = self.presence.get(user, {}).get("state")
            self.presence[user] = st
            cur = self.convs.get(self.current) if self.current else None
        if user != self.me and old is not None and old != st.get("state") and cur and user in cur.members:
            self.show(f"* {user} is {st.get('state')}")

    # ------------------------------------------------------------------ messages in sequence

    def deliver(self, conv_id: str, msgs: list[dict]) -> int:
        """Takes messages (live or from history) and shows those that continue the sequence;
        a hole left behind is queued for a history fill. Returns how many were new."""
        shown: list[dict] = []
        gap = False
        with self.lock:
            conv = self.convs.get(conv_id)
            if conv is None:
                self.work.put(("added", conv_id))
                return 0
            for m in msgs:
                if m["seq"] > conv.seen:
                    conv.pending[m["seq"]] = m
            while conv.seen + 1 in conv.pending:
                conv.seen += 1
                shown.append(conv.pending.pop(conv.seen))
            conv.last_seq = max(conv.last_seq, conv.seen)
            gap = bool(conv.pending)
            is_current = conv_id == self.current
            if not is_current:
                conv.unread += sum(1 for m in shown if m["from"] != self.me)
            if shown and conv.oldest_shown is None and is_current:
                conv.oldest_shown = shown[0]["seq"]
        news = [m for m in shown if m["from"] != self.me]
        if is_current:
            for m in shown:
                self.show_message(conv, m)
        elif news:
            self.show(f"* new message in {conv.title(self.me)} from {news[-1]['from']} "
                      f"({conv.unread} unread; /open to read)")
        if is_current and shown:
            self.mark_read(conv)
        if gap:
            self.work.put(("fill", conv_id))
        return len(shown)

    def fill(self, conv_id: str) -> int:
        """history after the last seq held, page by page, until nothing is missing; returns
        how many messages it found."""
        found = 0
        while True:
            with self.lock:
                conv = self.convs.get(conv_id)
                if conv is None:
                    return found
                after = conv.seen
            r = self.request("history", conv=conv_id, after=after, limit=PAGE)
            found += self.deliver(conv_id, r["messages"])
            if not r["has_more"]:
                return found

    def mark_read(self, conv: Conv) -> None:
        with self.lock:
            seq = conv.seen
            if seq <= conv.read_sent:
                return
            conv.read_sent = seq
            conv.unread = 0
        self.c.publish(f"{self.p}/receipt/{conv.id}", json.dumps({"read": seq}), qos=1)

    # ------------------------------------------------------------------ requests

    def request(self, op: str, **args) -> dict:
        rid = f"r{next(self.req_ids)}-{uuid.uuid4().hex[:6]}"
        payload = json.dumps({"op": op, "req_id": rid, **args})
        if not self.connected.wait(REQUEST_TIMEOUT):
            raise RequestError("offline", "not connected to the broker")
        self.c.publish(f"{self.p}/req", payload, qos=1)
        deadline = time.monotonic() + REQUEST_TIMEOUT
        with self.reply_cond:
            while rid not in self.replies:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise RequestError("timeout", f"no reply to {op} within {REQUEST_TIMEOUT:.0f}s")
                self.reply_cond.wait(left)
            r = self.replies.pop(rid)
        if not r.get("ok"):
            err = r.get("error") or {}
            raise RequestError(err.get("code", "?"), err.get("message", ""))
        return r

    def add_conv(self, info: dict) -> Conv:
        """Knows (or refreshes) a conversation and subscribes to it and its members' presence."""
        with self.lock:
            conv = self.convs.get(info["conv"])
            if conv is None:
                conv = self.convs[info["conv"]] = Conv(info)
            else:
                conv.set_members(info.get("members", conv.members))
                conv.name = info.get("name", conv.name)
        self.subscribe([f"{self.p}/c/{conv.id}/+"] + [f"{self.p}/p/{u}" for u in conv.members if u != self.me])
        return conv

    def subscribe(self, filters: list[str]) -> None:
        """Subscribes to the filters this connection does not have yet, in one SUBSCRIBE."""
        with self.lock:
            new = [f for f in filters if f not in self.subscribed]
            self.subscribed.update(new)
        if new:
            self.c.subscribe([(f, 1) for f in new])

    def resync(self) -> None:
        """After a (re)connect: conversations, subscriptions, and every gap filled."""
        convs = self.request("conv.list")["conversations"]
        self.show(f"* connected as {self.me}: {len(convs)} conversation(s), "
                  f"{sum(c['unread'] for c in convs)} unread (/list, /open, /help)")
        for info in convs:
            known = info["conv"] in self.convs
            conv = self.add_conv(info)
            if not known:
                conv.unread = info["unread"]
            if known and info["last_seq"] > conv.seen:
                n = self.fill(conv.id)
                self.show(f"* caught up: {n} missed message(s) in {conv.title(self.me)}")

    def worker(self) -> None:
        while True:
            job = self.work.get()
            if job is None:
                return
            try:
                if job[0] == "resync":
                    self.resync()
                elif job[0] == "fill":
                    self.fill(job[1])
                elif job[0] == "added":
                    if job[1] not in self.convs:
                        conv = self.add_conv(self.request("conv.get", conv=job[1])["conv"])
                        conv.seen = 0     # new to us: every message in it is news
                        self.fill(conv.id)
            except RequestError as e:
                if not self.stopping:
                    self.show(f"! {job[0]} failed: {e}")

    # ------------------------------------------------------------------ commands

    def find_conv(self, key: str) -> Conv | None:
        with self.lock:
            if key.isdigit() and 1 <= int(key) <= len(self.order):
                return self.convs.get(self.order[int(key) - 1])
            if key in self.convs:
                return self.convs[key]
            for c in self.convs.values():
                if key in (c.name, c.title(self.me), c.title(self.me)[1:]):
                    return c
        return None

    def cmd_list(self, _args: list[str]) -> None:
        convs = self.request("conv.list")["conversations"]
        with self.lock:
            self.order = [c["conv"] for c in convs]
        if not convs:
            self.show("no conversations yet: /dm <user> or /group <name> <user…>")
        for i, info in enumerate(convs, 1):
            conv = self.add_conv(info)
            last = info.get("last") or {}
            preview = f" — {last.get('from')}: {last.get('body', '*' + str(last.get('event')))[:40]}" if last else ""
            unread = info["unread"]
            self.show(f"{i:3}) {conv.title(self.me):24} {conv.id}  unread {unread}{preview}")

    def open_conv(self, conv: Conv) -> None:
        with self.lock:
            self.current = conv.id
        r = self.request("history", conv=conv.id, limit=self.args.history)
        msgs = r["messages"]
        self.show(f"--- {conv.title(self.me)} ({conv.id}, members: {', '.join(conv.members)}) ---")
        if r["has_more"]:
            self.show("    (older messages: /history)")
        with self.lock:
            conv.oldest_shown = msgs[0]["seq"] if msgs else None
            if msgs and msgs[-1]["seq"] > conv.seen:
                conv.seen = msgs[-1]["seq"]
            for s in [s for s in conv.pending if s <= conv.seen]:
                del conv.pending[s]
        for m in msgs:
            self.show_message(conv, m)
        self.mark_read(conv)

    def cmd_open(self, args: list[str]) -> None:
        if not args:
            raise RequestError("usage", "/open <n|conv|name>")
        conv = self.find_conv(args[0])
        if conv is None:
            self.cmd_list([])
            conv = self.find_conv(args[0])
        if conv is None:
            raise RequestError("not_found", f"no conversation {args[0]!r} (see /list)")
        self.open_conv(conv)

    def cmd_dm(self, args: list[str]) -> None:
        if len(args) != 1:
            raise RequestError("usage", "/dm <user>")
        self.open_conv(self.add_conv(self.request("conv.create", type="direct", **{"with": args[0]})["conv"]))

    def cmd_group(self, args: list[str]) -> None:
        if len(args) < 2:
            raise RequestError("usage", "/group <name> <user…>")
        members = [u for a in args[1:] for u in a.split(",") if u]
        self.open_conv(self.add_conv(self.request("conv.create", type="group", name=args[0],
                                                  members=members)["conv"]))

    def current_conv(self) -> Conv:
        with self.lock:
            conv = self.convs.get(self.current) if self.current else None
        if conv is None:
            raise RequestError("no_conv", "no open conversation: /open, /dm or /group first")
        return conv

    def cmd_history(self, args: list[str]) -> None:
        conv = self.current_conv()
        n = int(args[0]) if args and args[0].isdigit() else 20
        if conv.oldest_shown is not None and conv.oldest_shown <= 1:
            self.show("--- (the beginning) ---")
            return
        before = conv.oldest_shown if conv.oldest_shown is not None else conv.seen + 1
        r = self.request("history", conv=conv.id, before=before, limit=max(1, min(n, PAGE)))
        if not r["messages"]:
            self.show("--- (the beginning) ---")
            return
        self.show(f"--- {len(r['messages'])} older message(s) ---")
        for m in r["messages"]:
            self.show_message(conv, m)
        conv.oldest_shown = r["messages"][0]["seq"]
        self.show("--- end of older messages ---" + ("" if r["has_more"] else " (the beginning)"))

    def cmd_who(self, _args: list[str]) -> None:
        conv = self.current_conv()
        for u in conv.members:
            st = self.presence.get(u, {})
            since = f" since {fmt_time(st['ts'])}" if st.get("ts") else ""
            state = "online" if u == self.me else st.get("state", "unknown")
            self.show(f"  {u}: {state}{since}")

    def cmd_typing(self, _args: list[str]) -> None:
        self.set_typing(self.current_conv().id, True)

    def set_typing(self, conv_id: str, typing: bool) -> None:
        """Publishes "typing" (refreshed every TYPING_REFRESH s) or "idle" (once, after typing)."""
        now = time.monotonic()
        with self.lock:
            last = self.typing_sent
            if typing:
                if last and last[0] == conv_id and now - last[1] < TYPING_REFRESH:
                    return
                self.typing_sent = (conv_id, now)
            else:
                if not last:
                    return
                self.typing_sent = None
                conv_id = last[0]
        self.c.publish(f"{self.p}/typing/{conv_id}", json.dumps({"state": "typing" if typing else "idle"}), qos=0)

    def typing_watch(self) -> None:
        """In a terminal: watches the line being edited (readline's buffer) and says "typing"
        while it holds text that is not a command, "idle" when it is cleared."""
        while not self.stopping:
            time.sleep(TYPING_POLL)
            try:
                buf = readline.get_line_buffer()
            except Exception:  # noqa: BLE001
                continue
            cur = self.current
            if cur and buf.strip() and not buf.startswith("/") and self.connected.is_set():
                self.set_typing(cur, True)
            elif not buf.strip():
                self.set_typing(cur or "", False)

    def cmd_read(self, _args: list[str]) -> None:
        self.mark_read(self.current_conv())

    def cmd_help(self, _args: list[str]) -> None:
        for line in __doc__.split("\n\n")[2].splitlines()[1:]:
            self.show(line)

    def send_text(self, text: str) -> None:
        conv = self.current_conv()
        payload = json.dumps({"cmid": uuid.uuid4().hex, "body": text})
        self.c.publish(f"{self.p}/send/{conv.id}", payload, qos=1)   # queued by paho while offline
        self.set_typing(conv.id, False)

    COMMANDS = {"list": cmd_list, "open": cmd_open, "dm": cmd_dm, "group": cmd_group, "history": cmd_history,
                "who": cmd_who, "typing": cmd_typing, "read": cmd_read, "help": cmd_help}

    def handle(self, line: str) -> bool:
        line = line.strip()
        if not line:
            return True
        if line.startswith("/"):
            name, *args = line[1:].split()
            if name in ("quit", "exit"):
                return False
            fn = self.COMMANDS.get(name)
            if fn is None:
                self.show(f"! unknown command /{name} (/help)")
                return True
            try:
                fn(self, args)
            except RequestError as e:
                self.show(f"! {e}")
            return True
        try:
            self.send_text(line)
        except RequestError as e:
            self.show(f"! {e}")
        return True

    # ------------------------------------------------------------------ main loop

    def run(self) -> int:
        threading.Thread(target=self.worker, name="chatcli-worker", daemon=True).start()
        if self.tty:
            threading.Thread(target=self.typing_watch, name="chatcli-typing", daemon=True).start()
        self.show(f"* connecting to {self.args.host}:{self.args.port} as {self.me}…")
        self.c.connect_async(self.args.host, self.args.port, keepalive=self.args.keepalive,
                             clean_start=True)
        self.c.loop_start()
        try:
            while True:
                try:
                    line = input(self.prompt()) if self.tty else sys.stdin.readline()
                except EOFError:
                    break
                if not self.tty and line == "":
                    break
                if not self.handle(line):
                    break
        except KeyboardInterrupt:
            pass
        finally:
            self.stopping = True
            self.work.put(None)
            self.c.disconnect()
            self.c.loop_stop()
            self.out.write("\nbye\n")
            self.out.flush()
        return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="mosquitto-chat terminal client")
    ap.add_argument("--host", default="localhost")
    ap.add_argument("--port", type=int, default=1883)
    ap.add_argument("--user", required=True, help="your MQTT username (the chat user)")
    ap.add_argument("--password", default=os.environ.get("CHAT_PASSWORD"),
                    help="MQTT password (or CHAT_PASSWORD in the environment)")
    ap.add_argument("--client-id", default=None, help="MQTT client id (default: USER-cli-<random>)")
    ap.add_argument("--prefix", default="chat", help="plugin_opt_prefix of the broker")
    ap.add_argument("--history", type=int, default=20, help="messages shown when opening a conversation")
    ap.add_argument("--keepalive", type=int, default=30)
    return ChatCLI(ap.parse_args(argv)).run()


if __name__ == "__main__":
    sys.exit(main())
