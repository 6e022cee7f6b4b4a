"""Test harness for the mosquitto-chat integration suite.

`Broker` runs a real /usr/sbin/mosquitto with the plugin on free loopback ports;
`Client` wraps paho-mqtt (CallbackAPIVersion.VERSION2) with synchronous helpers.
Every JSON payload received on the outbound message/receipt/typing/event/reply and
presence topics is checked against the project's schema (schema_check.validate) as soon as that exists.
"""
from __future__ import annotations

import glob
import itertools
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Iterable

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]  # repository root (tests/integration/ -> repo)
PLUGIN = os.environ.get("CHAT_PLUGIN") or str(ROOT / "build" / "plugin" / "mosquitto_chat.so")
MOSQUITTO = os.environ.get("MOSQUITTO_BIN", "/usr/sbin/mosquitto")
# Every test broker gets per-user rate limits too high to refuse anything, so the limiter runs in every
# test without pacing tests that send fast; test_limits.py tests the limits (opts {"rate_send": None}
# gives the plugin's default).
RELAXED_RATES = {f"rate_{k}{b}": 1000000 for k in ("send", "request", "receipt", "typing") for b in ("", "_burst")}
SANITIZE = os.environ.get("CHAT_SANITIZE", "").strip().lower()
DYNSEC_PLUGIN = os.environ.get("DYNSEC_PLUGIN", "/usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so")
OBSERVER = "observer"  # the observer user of the `observer_broker` fixture

# MQTT reason codes used throughout the suite
RC_SUCCESS = 0x00
RC_NO_MATCHING_SUBSCRIBERS = 0x10
# an accepted MQTT 5 send (see Client.ok_codes)
ACCEPTED = (0x00, RC_NO_MATCHING_SUBSCRIBERS)
RC_NOT_AUTHORIZED = 0x87
SUBACK_V4_FAILURE = 0x80

ID_RE = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
DIRECT_RE = re.compile(r"^d_[A-Za-z0-9]{12}$")
GROUP_RE = re.compile(r"^g_[A-Za-z0-9]{12}$")

# Errors found by the schema check in the paho callback threads; the autouse fixture
# in conftest.py fails the test that produced them.
SCHEMA_FAILURES: list[str] = []
ALL_CLIENTS: list["Client"] = []
ACTIVE_BROKERS: list["Broker"] = []

_counter = itertools.count(1)
_run_tag = uuid.uuid4().hex[:4]


def uname(base: str = "u") -> str:
    """A fresh, valid user name (unique within this test run)."""
    return f"{base}{next(_counter)}"


def new_cmid() -> str:
    return "c-" + uuid.uuid4().hex


def now_ms() -> int:
    return int(time.time() * 1000)


# --------------------------------------------------------------------------- schema

_schema_state: dict[str, Any] = {"loaded": False, "validate": None, "error": None}


def schema_required() -> bool:
    sdir = ROOT / "schema"
    if (HERE / "schema_check.py").exists():
        return True
    return sdir.is_dir() and any(sdir.iterdir())


def schema_validator() -> Callable[[str, Any], Any] | None:
    """Import schema_check lazily. Returns None only while no schema exists yet."""
    st = _schema_state
    if not st["loaded"]:
        st["loaded"] = True
        try:
            import sys

            if str(HERE) not in sys.path:
                sys.path.insert(0, str(HERE))
            import schema_check  # type: ignore

            st["validate"] = schema_check.validate
        except Exception as e:  # noqa: BLE001
            st["error"] = f"{type(e).__name__}: {e}"
    if st["validate"] is None and schema_required():
        raise RuntimeError(f"schema/ exists but tests/integration/schema_check.py cannot be used: {st['error']}")
    return st["validate"]


def schema_problem(kind: str, obj: Any) -> str | None:
    """None if obj validates as `kind` (or no schema exists yet), else a description."""
    try:
        v = schema_validator()
    except RuntimeError as e:
        return str(e)
    if v is None:
        return None
    try:
        res = v(kind, obj)
    except Exception as e:  # noqa: BLE001  (jsonschema.ValidationError and friends)
        msg = getattr(e, "message", None) or str(e)
        path = "/".join(str(p) for p in getattr(e, "absolute_path", []) or [])
        return f"{type(e).__name__}: {msg[:1500]}" + (f" (at /{path})" if path else "")
    if res is False or (isinstance(res, (list, tuple)) and len(res) > 0) or isinstance(res, str):
        return f"schema_check.validate({kind!r}) returned {res!r}"
    return None


def check_outgoing(kind: str, obj: Any) -> None:
    """Payloads the tests believe valid must be valid per the schema too."""
    p = schema_problem(kind, obj)
    if p:
        raise AssertionError(f"outgoing {kind} payload rejected by schema: {p}\npayload: {obj!r}")


# --------------------------------------------------------------------------- broker

def free_port() -> int:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def _mqtt_probe(port: int, timeout: float = 1.0) -> bool:
    """Send a bare MQTT 3.1.1 CONNECT; any CONNACK means the broker is serving."""
    cid = b"ready-probe-" + uuid.uuid4().hex[:6].encode()
    var = b"\x00\x04MQTT\x04\x02\x00\x0a"
    rem = var + len(cid).to_bytes(2, "big") + cid
    pkt = b"\x10" + bytes([len(rem)]) + rem
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.settimeout(timeout)
            s.sendall(pkt)
            data = b""
            while len(data) < 4:
                chunk = s.recv(4 - len(data))
                if not chunk:
                    return False
                data += chunk
            if data[0] != 0x20:
                return False
            try:
                s.sendall(b"\xe0\x00")
            except OSError:
                pass
            return True
    except OSError:
        return False


def _tcp_probe(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0):
            return True
    except OSError:
        return False


class BrokerError(Exception):
    pass


class Broker:
    """A real mosquitto process with the chat plugin.

    opts: plugin_opt_* values for our plugin (key without the prefix). A value of None
    leaves the option out (e.g. db_path=None). extra_conf: raw config lines appended at
    the end (a second plugin and its options, acl_file, password_file, ...).
    """

    def __init__(
        self,
        workdir: Path,
        opts: dict[str, Any] | None = None,
        extra_conf: Iterable[str] = (),
        allow_anonymous: bool = True,
        name: str = "broker",
        plugin: str | None = None,
        load_plugin: bool = True,
    ):
        self.dir = Path(workdir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.db_dir = self.dir / "db"
        self.db_dir.mkdir(exist_ok=True)
        self.opts = {"db_path": str(self.db_dir)}
        self.opts.update(RELAXED_RATES)
        self.opts.update(opts or {})
        self.extra_conf = list(extra_conf)
        self.allow_anonymous = allow_anonymous
        self.plugin = plugin or PLUGIN
        self.load_plugin = load_plugin
        self.port = free_port()
        self.ws_port = free_port()
        while self.ws_port == self.port:
            self.ws_port = free_port()
        self.conf_path = self.dir / "mosquitto.conf"
        self.log_path = self.dir / "mosquitto.log"
        self.out_path = self.dir / "stdout.log"
        self.proc: subprocess.Popen | None = None
        self.returncodes: list[int] = []
        self.runs: list[dict] = []  # one per process: pid, how it ended
        self.problems: list[str] = []
        self.starts = 0

    # -- config
    @property
    def prefix(self) -> str:
        p = self.opts.get("prefix")
        return "chat" if p is None else str(p)

    @property
    def host(self) -> str:
        return "127.0.0.1"

    def config_text(self) -> str:
        lines = [
            "# generated by tests/integration/helpers.py",
            "per_listener_settings false",
            f"allow_anonymous {'true' if self.allow_anonymous else 'false'}",
            "persistence false",
            f"log_dest file {self.log_path}",
            "log_type all",
            "connection_messages true",
            "log_timestamp_format %H:%M:%S",
        ]
        if os.geteuid() == 0:
            # otherwise mosquitto drops to the `mosquitto` user and cannot use our tmp dirs
            lines.append("user root")
        lines += [
            f"listener {self.port} 127.0.0.1",
            f"listener {self.ws_port} 127.0.0.1",
            "protocol websockets",
        ]
        if self.load_plugin:
            lines.append(f"plugin {self.plugin}")
            for k, v in self.opts.items():
                if v is None:
                    continue
                lines.append(f"plugin_opt_{k} {v}")
        lines += self.extra_conf
        return "\n".join(lines) + "\n"

    # -- process control
    def _command(self) -> tuple[list[str], dict[str, str]]:
        env = os.environ.copy()
        cmd = [MOSQUITTO, "-c", str(self.conf_path)]
        if SANITIZE == "asan":
            libasan = subprocess.run(
                ["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True, check=True
            ).stdout.strip()
            env["LD_PRELOAD"] = libasan
            # fast_unwind_on_malloc=0: the Debian mosquitto binary has no frame pointers, and
            # the suppressions (tests/lsan.supp) name its internal functions
            env["ASAN_OPTIONS"] = (f"detect_leaks=1:log_path={self.dir / 'asan'}:abort_on_error=0"
                                   ":fast_unwind_on_malloc=0")
            supp = ROOT / "tests" / "lsan.supp"
            if supp.exists():
                env["LSAN_OPTIONS"] = f"suppressions={supp}:print_suppressions=0"
            # a plugin built with -fsanitize=undefined reports here (and stops, with
            # -fno-sanitize-recover) instead of on stderr
            env["UBSAN_OPTIONS"] = f"print_stacktrace=1:log_path={self.dir / 'ubsan'}"
        elif SANITIZE == "valgrind":
            cmd = [
                "valgrind",
                "--error-exitcode=99",
                "--leak-check=full",
                "--errors-for-leak-kinds=definite",
                f"--log-file={self.dir / 'vg.%p'}",
            ]
            for supp in (HERE / "mosquitto.valgrind.supp", ROOT / "tests" / "valgrind.supp"):
                if supp.exists():
                    cmd.append(f"--suppressions={supp}")
            cmd += [MOSQUITTO, "-c", str(self.conf_path)]
        return cmd, env

    @property
    def ready_timeout(self) -> float:
        # A wait, not a time assertion: a sanitized broker loading the system CA bundle
        # took 4-8 s to start on a loaded 2-core machine.
        return 60.0 if SANITIZE == "valgrind" else 30.0

    def _spawn(self) -> None:
        if self.load_plugin and not Path(self.plugin).exists():
            raise BrokerError(f"plugin not found: {self.plugin} (build it or set CHAT_PLUGIN)")
        self.conf_path.write_text(self.config_text())
        cmd, env = self._command()
        out = open(self.out_path, "ab")
        try:
            self.proc = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, cwd=str(self.dir)
            )
        finally:
            out.close()
        self.starts += 1
        self.runs.append({"pid": self.proc.pid, "end": None})

    def start(self) -> "Broker":
        if self.proc is not None and self.proc.poll() is None:
            raise BrokerError("broker already running")
        self._spawn()
        if self not in ACTIVE_BROKERS:
            ACTIVE_BROKERS.append(self)
        deadline = time.monotonic() + self.ready_timeout
        while True:
            rc = self.proc.poll()
            if rc is not None:
                self.returncodes.append(rc)
                self.runs[-1]["end"] = "exited"
                self.proc = None
                raise BrokerError(f"mosquitto exited with {rc} during start-up\n{self.log_tail()}")
            if _mqtt_probe(self.port) and _tcp_probe(self.ws_port):
                return self
            if time.monotonic() > deadline:
                self.kill()
                raise BrokerError(f"mosquitto not ready after {self.ready_timeout}s\n{self.log_tail()}")
            time.sleep(0.05)

    def start_expect_exit(self, timeout: float | None = None) -> tuple[int, str]:
        """Start a broker that is expected to refuse its configuration.
        Returns (exit code, log file + stdout text)."""
        self._spawn()
        timeout = timeout or self.ready_timeout
        try:
            rc = self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"mosquitto kept running with a bad configuration\n{self.log_tail()}")
        self.returncodes.append(rc)
        self.runs[-1]["end"] = "exited"
        self.proc = None
        return rc, self.all_output()

    def reload(self) -> None:
        """SIGHUP: mosquitto re-reads its config file, plugins get MOSQ_EVT_RELOAD, and every
        connected client's login is checked again."""
        if self.proc is None or self.proc.poll() is not None:
            raise BrokerError("broker not running")
        self.proc.send_signal(signal.SIGHUP)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL, no clean shutdown (crash simulation)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
        rc = self.proc.wait()
        self.returncodes.append(rc)
        self.runs[-1]["end"] = "killed"
        self.proc = None

    def stop(self, timeout: float | None = None) -> int | None:
        """SIGTERM and wait; records a problem if the broker had died or exits non-zero."""
        if self.proc is None:
            return None
        timeout = timeout or (120.0 if SANITIZE == "valgrind" else 20.0)
        rc = self.proc.poll()
        if rc is not None:
            self.problems.append(f"mosquitto had already exited with code {rc} before stop()")
            self.runs[-1]["end"] = "died"
        else:
            self.runs[-1]["end"] = "sigterm"
            self.proc.send_signal(signal.SIGTERM)
            try:
                rc = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                rc = self.proc.wait()
                self.problems.append(f"mosquitto did not exit within {timeout}s of SIGTERM")
            if SANITIZE == "valgrind" and rc == 99:
                self.problems.append("valgrind reported errors:\n" + self._read_files("vg.*"))
            elif rc != 0:
                self.problems.append(f"mosquitto exited with code {rc} after SIGTERM")
        self.returncodes.append(rc)
        self.proc = None
        return rc

    def _read_files(self, pattern: str) -> str:
        out = []
        for f in sorted(glob.glob(str(self.dir / pattern))):
            try:
                txt = Path(f).read_text(errors="replace")
            except OSError:
                continue
            if txt.strip():
                out.append(f"==> {f} <==\n{txt[-20000:]}")
        return "\n".join(out)

    def sanitizer_report(self) -> str:
        """AddressSanitizer output that fails the test: everything a cleanly stopped (SIGTERM)
        broker wrote, leaks included; for runs that were killed, died or refused their
        configuration (no orderly shutdown, so leak reports mean nothing) only real memory
        errors."""
        if SANITIZE != "asan":
            return ""
        out = []
        for run in self.runs:
            txt = self._read_files(f"asan.{run['pid']}")
            if not txt:
                continue
            if run["end"] == "sigterm" or "ERROR: AddressSanitizer" in txt:
                out.append(txt)
        # files of processes we did not start ourselves (should not exist) count too
        known = {f"asan.{r['pid']}" for r in self.runs}
        for f in sorted(glob.glob(str(self.dir / "asan*"))):
            if Path(f).name not in known:
                out.append(self._read_files(Path(f).name))
        # UndefinedBehaviorSanitizer: every report is a real error
        out.append(self._read_files("ubsan*"))
        return "\n".join(x for x in out if x)

    def finalize(self) -> None:
        """Stop (if running) and raise if the broker crashed or a sanitizer complained."""
        try:
            self.stop()
        finally:
            if self in ACTIVE_BROKERS:
                ACTIVE_BROKERS.remove(self)
        rep = self.sanitizer_report()
        if rep:
            self.problems.append("sanitizer report:\n" + rep)
        if self.problems:
            raise AssertionError(
                f"broker {self.name}: " + "\n".join(self.problems) + "\n--- log tail ---\n" + self.log_tail()
            )

    # -- logs
    def all_output(self) -> str:
        txt = ""
        for p in (self.log_path, self.out_path):
            if p.exists():
                txt += p.read_text(errors="replace")
        return txt

    def log_tail(self, n: int = 60) -> str:
        parts = []
        for p in (self.log_path, self.out_path):
            if p.exists():
                lines = p.read_text(errors="replace").splitlines()
                if lines:
                    parts.append(f"==> {p.name} (last {min(n, len(lines))} lines) <==\n" + "\n".join(lines[-n:]))
        return "\n".join(parts) or "(no log output)"

    # -- clients
    def client(self, user: str | None, **kw) -> "Client":
        return Client(self, user, **kw)


# --------------------------------------------------------------------------- client

class Msg:
    __slots__ = ("topic", "payload", "qos", "retain", "props", "json", "schema_error", "t")

    def __init__(self, m: mqtt.MQTTMessage):
        self.topic = m.topic
        self.payload = bytes(m.payload)
        self.qos = m.qos
        self.retain = bool(m.retain)
        self.props = getattr(m, "properties", None)
        self.t = time.time()
        self.schema_error: str | None = None
        try:
            self.json = json.loads(self.payload.decode("utf-8"))
        except Exception:  # noqa: BLE001
            self.json = None

    @property
    def correlation(self) -> bytes | None:
        if self.props is None:
            return None
        return getattr(self.props, "CorrelationData", None)

    def __repr__(self) -> str:
        return f"Msg({self.topic!r}, {self.payload[:300]!r})"


class ConnectionLost(Exception):
    pass


class ConnectRefused(Exception):
    def __init__(self, code: int, text: str):
        super().__init__(f"CONNECT refused: {code:#x} {text}")
        self.code = code


def _rc_int(rc: Any) -> int:
    if rc is None:
        return 0
    v = getattr(rc, "value", rc)
    return int(v)


class Client:
    """A paho-mqtt client with synchronous helpers.

    protocol: 5 or 4 (3.1.1). transport: "tcp" or "websockets". With auto_sub (default)
    a client with a valid user name subscribes to {prefix}/u/{user}/+ at connect.
    """

    def __init__(
        self,
        broker: Broker,
        user: str | None,
        protocol: int = 5,
        transport: str = "tcp",
        client_id: str | None = None,
        clean: bool = True,
        password: str | None = None,
        auto_sub: bool = True,
        session_expiry: int | None = None,
        will: tuple[str, bytes, int, bool] | None = None,
        connect: bool = True,
        timeout: float = 10.0,
    ):
        self.broker = broker
        self.user = user
        self.protocol = protocol
        self.transport = transport
        self.prefix = broker.prefix
        self.client_id = client_id or f"{user or 'anon'}-{uuid.uuid4().hex[:8]}"
        self.clean = clean
        self._cond = threading.Condition()
        self._msgs: list[Msg] = []
        self.all_msgs: list[Msg] = []
        self._acks: dict[int, int] = {}
        self._subacks: dict[int, list[int]] = {}
        self._connack: int | None = None
        self._connected = threading.Event()
        self.disconnected = threading.Event()
        self.disconnect_rc: int | None = None
        self.closed = False
        self._password = password
        self._will = will
        self._session_expiry = session_expiry
        self.c = self._new_paho()
        ALL_CLIENTS.append(self)
        if connect:
            self.connect(timeout=timeout)
            if auto_sub and user is not None and ID_RE.match(user):
                rcs = self.subscribe(f"{self.prefix}/u/{user}/+")
                assert rcs == [1], f"{user}: subscribe to own {self.prefix}/u/{user}/+ refused: {rcs}"

    def _new_paho(self) -> mqtt.Client:
        proto = mqtt.MQTTv5 if self.protocol == 5 else mqtt.MQTTv311
        kw: dict[str, Any] = {}
        if self.protocol != 5:
            kw["clean_session"] = self.clean
        c = mqtt.Client(
            mqtt.CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=proto,
            transport=self.transport,
            reconnect_on_failure=False,
            **kw,
        )
        if self.transport == "websockets":
            c.ws_set_options(path="/mqtt")
        if self.user is not None:
            c.username_pw_set(self.user, self._password)
        if self._will is not None:
            c.will_set(*self._will)
        c.max_inflight_messages_set(100)
        c.max_queued_messages_set(0)
        c.on_connect = self._on_connect
        c.on_disconnect = self._on_disconnect
        c.on_message = self._on_message
        c.on_publish = self._on_publish
        c.on_subscribe = self._on_subscribe
        c.on_unsubscribe = self._on_unsubscribe
        return c

    # -- callbacks (paho network thread)
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        self._connack = _rc_int(reason_code)
        self._connack_text = str(reason_code)
        self._connected.set()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        self.disconnect_rc = _rc_int(reason_code)
        self.disconnected.set()
        with self._cond:
            self._cond.notify_all()

    def _on_message(self, client, userdata, m):
        msg = Msg(m)
        kind = self._schema_kind(msg.topic)
        if kind is not None:
            if msg.json is None:
                msg.schema_error = f"payload on {msg.topic} is not JSON: {msg.payload[:200]!r}"
            else:
                msg.schema_error = schema_problem(kind, msg.json)
            if msg.schema_error:
                SCHEMA_FAILURES.append(f"{msg.topic}: {msg.schema_error}\npayload: {msg.payload[:2000]!r}")
        with self._cond:
            self._msgs.append(msg)
            self.all_msgs.append(msg)
            self._cond.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties):
        with self._cond:
            self._acks[mid] = _rc_int(reason_code)
            self._cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        with self._cond:
            self._subacks[mid] = [_rc_int(r) for r in reason_codes]
            self._cond.notify_all()

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties):
        with self._cond:
            self._subacks[mid] = [_rc_int(r) for r in (reason_codes or [])]
            self._cond.notify_all()

    def _schema_kind(self, topic: str) -> str | None:
        parts = topic.split("/")
        pre = self.prefix.split("/")
        if parts[: len(pre)] != pre:
            return None
        rest = parts[len(pre):]
        if len(rest) == 3 and rest[0] == "c":
            return {"m": "message", "receipt": "receipt", "typing": "typing"}.get(rest[2])
        if len(rest) == 2 and rest[0] == "p":
            return "presence"
        if len(rest) >= 3 and rest[0] == "u":
            if rest[2] == "event" and len(rest) == 3:
                return "event"
            return "reply"  # default reply topic and custom response topics under u/{me}/
        return None

    # -- connection
    @property
    def ok_codes(self) -> tuple:
        """PUBACK reason codes of an accepted send: on MQTT 5 0x00, or 0x10 (no matching subscribers) when no
        member device was subscribed or the stamped copy went out as a separate publish; 3.1.1 has only the
        plain PUBACK."""
        return ACCEPTED if self.protocol == 5 else (RC_SUCCESS,)

    @property
    def refused_code(self) -> int:
        return RC_NOT_AUTHORIZED if self.protocol == 5 else RC_SUCCESS

    @property
    def sub_refused(self) -> int:
        return RC_NOT_AUTHORIZED if self.protocol == 5 else SUBACK_V4_FAILURE

    def connect(self, timeout: float = 10.0) -> None:
        self._connected.clear()
        self.disconnected.clear()
        port = self.broker.ws_port if self.transport == "websockets" else self.broker.port
        if self.protocol == 5:
            props = None
            if self._session_expiry is not None:
                props = Properties(PacketTypes.CONNECT)
                props.SessionExpiryInterval = self._session_expiry
            self.c.connect(self.broker.host, port, keepalive=60, clean_start=self.clean, properties=props)
        else:
            self.c.connect(self.broker.host, port, keepalive=60)
        self.c.loop_start()
        if not self._connected.wait(timeout):
            self.c.loop_stop()
            raise AssertionError(f"{self.client_id}: no CONNACK within {timeout}s")
        if self._connack != 0:
            code = self._connack
            self.c.loop_stop()
            try:
                self.c.disconnect()
            except Exception:  # noqa: BLE001
                pass
            self.closed = True
            raise ConnectRefused(code, self._connack_text)
        self.closed = False

    def disconnect(self) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            self.c.disconnect()
        except Exception:  # noqa: BLE001
            pass
        self.c.loop_stop()

    def kill_socket(self) -> None:
        """Drop the TCP connection without DISCONNECT (the broker sees an unclean loss)."""
        if self.closed:
            return
        self.closed = True
        sock = self.c.socket()
        raw = getattr(sock, "_socket", sock)
        if raw is not None:
            try:
                raw.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        # the network thread sees the dead socket and ends (reconnect_on_failure=False)
        self.disconnected.wait(5)
        self.c.loop_stop()
        if raw is not None:
            try:
                raw.close()
            except OSError:
                pass

    def reconnect(self, timeout: float = 10.0, auto_sub: bool = True) -> None:
        """A new network connection with the same client id (a fresh paho object)."""
        self.disconnect()
        self.c = self._new_paho()
        self.connect(timeout)
        if auto_sub and self.user is not None and ID_RE.match(self.user):
            assert self.subscribe(f"{self.prefix}/u/{self.user}/+") == [1]

    # -- waiting primitives
    def _wait_for(self, table: dict, mid: int, timeout: float, what: str, fail_on_disconnect: bool = False):
        deadline = time.monotonic() + timeout
        with self._cond:
            while mid not in table:
                if fail_on_disconnect and self.disconnected.is_set():
                    raise ConnectionLost(f"{self.client_id}: connection lost while waiting for {what}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(f"{self.client_id}: no {what} for mid {mid} within {timeout}s")
                self._cond.wait(left)
            return table.pop(mid)

    def wait_puback(self, info: mqtt.MQTTMessageInfo, timeout: float = 5.0, fail_on_disconnect: bool = True) -> int:
        return self._wait_for(self._acks, info.mid, timeout, "PUBACK", fail_on_disconnect)

    def subscribe(self, *topics: str, qos: int = 1, timeout: float = 5.0) -> list[int]:
        """SUBSCRIBE (one packet for all topics); returns the SUBACK codes as ints."""
        rc, mid = self.c.subscribe([(t, qos) for t in topics])
        assert rc == mqtt.MQTT_ERR_SUCCESS, f"subscribe failed locally: {rc}"
        return self._wait_for(self._subacks, mid, timeout, "SUBACK")

    def unsubscribe(self, *topics: str, timeout: float = 5.0) -> list[int]:
        rc, mid = self.c.unsubscribe(list(topics))
        assert rc == mqtt.MQTT_ERR_SUCCESS
        return self._wait_for(self._subacks, mid, timeout, "UNSUBACK")

    def publish(
        self,
        topic: str,
        payload: Any,
        qos: int = 1,
        retain: bool = False,
        props: Properties | None = None,
        timeout: float = 5.0,
        wait: bool = True,
    ) -> int | mqtt.MQTTMessageInfo:
        """Publish and wait for the PUBACK; returns its reason code (0 on MQTT 3.1.1)."""
        if isinstance(payload, (dict, list)):
            payload = json.dumps(payload, separators=(",", ":")).encode()
        elif isinstance(payload, str):
            payload = payload.encode()
        info = self.c.publish(topic, payload, qos=qos, retain=retain, properties=props)
        assert info.rc == mqtt.MQTT_ERR_SUCCESS, f"publish failed locally: {info.rc}"
        if not wait:
            return info
        return self._wait_for(self._acks, info.mid, timeout, "PUBACK")

    def expect_msg(
        self, topic: str, timeout: float = 5.0, pred: Callable[[Msg], bool] | None = None
    ) -> Msg:
        """The next (oldest unconsumed) message whose topic matches the filter `topic` and pred."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for i, m in enumerate(self._msgs):
                    if mqtt.topic_matches_sub(topic, m.topic) and (pred is None or pred(m)):
                        del self._msgs[i]
                        if m.schema_error:
                            raise AssertionError(f"schema violation on {m.topic}: {m.schema_error}")
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    pending = [m for m in self._msgs][-15:]
                    raise AssertionError(
                        f"{self.user}/{self.client_id}: nothing on {topic} within {timeout}s; "
                        f"unconsumed (last 15): {pending}"
                    )
                self._cond.wait(left)

    def expect(self, topic: str, timeout: float = 5.0, pred: Callable[[Any], bool] | None = None) -> Any:
        """Like expect_msg but returns the parsed JSON payload; pred gets the parsed JSON."""
        p = None
        if pred is not None:
            p = lambda m: m.json is not None and pred(m.json)  # noqa: E731
        m = self.expect_msg(topic, timeout, p)
        assert m.json is not None, f"payload on {m.topic} is not JSON: {m.payload[:200]!r}"
        return m.json

    def expect_n(self, topic: str, n: int, timeout: float = 10.0) -> list[Any]:
        deadline = time.monotonic() + timeout
        out = []
        for _ in range(n):
            out.append(self.expect(topic, timeout=max(0.01, deadline - time.monotonic())))
        return out

    def expect_none(self, topic: str, wait: float = 0.5, pred: Callable[[Any], bool] | None = None,
                    msg_pred: Callable[[Msg], bool] | None = None) -> None:
        """Assert that no (matching) message arrives on `topic` within `wait` seconds
        (messages already received count too). pred gets the parsed JSON, msg_pred the Msg."""
        deadline = time.monotonic() + wait
        with self._cond:
            while True:
                for m in self._msgs:
                    if (mqtt.topic_matches_sub(topic, m.topic) and (pred is None or pred(m.json))
                            and (msg_pred is None or msg_pred(m))):
                        raise AssertionError(f"{self.user}: unexpected message {m!r}")
                left = deadline - time.monotonic()
                if left <= 0:
                    return
                self._cond.wait(left)

    def pending(self, topic: str = "#") -> list[Msg]:
        with self._cond:
            return [m for m in self._msgs if mqtt.topic_matches_sub(topic, m.topic)]

    def drain(self, topic: str = "#") -> list[Msg]:
        with self._cond:
            out = [m for m in self._msgs if mqtt.topic_matches_sub(topic, m.topic)]
            self._msgs = [m for m in self._msgs if not mqtt.topic_matches_sub(topic, m.topic)]
            return out

    # -- chat requests
    @property
    def reply_topic(self) -> str:
        return f"{self.prefix}/u/{self.user}/reply"

    @property
    def event_topic(self) -> str:
        return f"{self.prefix}/u/{self.user}/event"

    def request(
        self,
        op: str | None,
        args: dict | None = None,
        *,
        raw: bytes | None = None,
        response_topic: str | None = None,
        expect_topic: str | None = None,
        correlation: bytes | None = None,
        req_id: Any = None,
        timeout: float = 10.0,
        schema: bool = True,
        **kw,
    ) -> dict:
        """Publish a request on {prefix}/req and return the parsed reply.

        MQTT 5: Response Topic + random Correlation Data, matched on the echoed property.
        MQTT 3.1.1: a random req_id (unless given), matched on the reply's req_id.
        raw: send these bytes as the payload instead (MQTT 3.1.1: matched as the next
        reply that has no req_id)."""
        payload: dict | None = None
        if raw is None:
            payload = {} if op is None else {"op": op}
            payload.update(args or {})
            payload.update(kw)
            if req_id is not None:
                payload["req_id"] = req_id
            elif self.protocol != 5:
                req_id = "r-" + uuid.uuid4().hex[:12]
                payload["req_id"] = req_id
            if schema:
                check_outgoing("request", payload)
            data = json.dumps(payload, separators=(",", ":")).encode()
        else:
            data = raw
        props = None
        pred: Callable[[Msg], bool]
        if self.protocol == 5:
            corr = correlation if correlation is not None else uuid.uuid4().bytes
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = response_topic or self.reply_topic
            props.CorrelationData = corr
            pred = lambda m: m.correlation == corr  # noqa: E731
            wait_topic = expect_topic or response_topic or self.reply_topic
        else:
            wait_topic = expect_topic or self.reply_topic
            if raw is None or req_id is not None:
                rid = req_id
                pred = lambda m: isinstance(m.json, dict) and m.json.get("req_id") == rid  # noqa: E731
            else:
                pred = lambda m: isinstance(m.json, dict) and "req_id" not in m.json  # noqa: E731
        self.last_request_puback = self.publish(f"{self.prefix}/req", data, qos=1, props=props)
        m = self.expect_msg(wait_topic, timeout=timeout, pred=pred)
        self.last_reply_msg = m
        assert isinstance(m.json, dict), f"reply is not a JSON object: {m.payload[:300]!r}"
        return m.json

    def ok(self, op: str, args: dict | None = None, **kw) -> dict:
        r = self.request(op, args, **kw)
        assert r.get("ok") is True, f"{op} {str(args or kw)[:300]} failed: {str(r)[:600]}"
        assert r.get("op") == op, r
        return r

    def err(self, op: str | None, args: dict | None = None, code: str | None = None, **kw) -> dict:
        r = self.request(op, args, **kw)
        assert r.get("ok") is False, f"{op} {str(args or kw)[:300]} should fail with {code}: {str(r)[:600]}"
        assert isinstance(r.get("error"), dict), r
        if code is not None:
            assert r["error"].get("code") == code, f"expected {code}, got {r}"
        assert isinstance(r["error"].get("message"), str) and r["error"]["message"], r
        return r

    # -- chat conveniences
    def create_group(self, name: str, members: list[str]) -> str:
        r = self.ok("conv.create", {"type": "group", "name": name, "members": members})
        return r["conv"]["conv"]

    def create_direct(self, other: str) -> str:
        r = self.ok("conv.create", {"type": "direct", "with": other})
        return r["conv"]["conv"]

    def conv_get(self, conv: str) -> dict:
        return self.ok("conv.get", {"conv": conv})["conv"]

    def sub_conv(self, *convs: str) -> None:
        topics = [f"{self.prefix}/c/{c}/+" for c in convs]
        rcs = self.subscribe(*topics)
        assert rcs == [1] * len(convs), f"{self.user}: subscribe {topics} -> {rcs}"

    def send(
        self,
        conv: str,
        body: str = "hello",
        cmid: str | None = None,
        qos: int = 1,
        retain: bool = False,
        schema: bool = True,
        **fields,
    ) -> "SendResult":
        cmid = cmid if cmid is not None else new_cmid()
        payload: dict[str, Any] = {"cmid": cmid, "body": body}
        payload.update(fields)
        if schema:
            check_outgoing("send", payload)
        rc = self.publish(f"{self.prefix}/send/{conv}", payload, qos=qos, retain=retain)
        return SendResult(rc, cmid)

    def expect_message(self, conv: str, timeout: float = 5.0, pred=None) -> dict:
        return self.expect(f"{self.prefix}/c/{conv}/m", timeout=timeout, pred=pred)

    def expect_event(self, timeout: float = 5.0, pred=None) -> dict:
        return self.expect(self.event_topic, timeout=timeout, pred=pred)

    def history(self, conv: str, **args) -> dict:
        a = {"conv": conv}
        a.update(args)
        return self.ok("history", a)

    def history_all(self, conv: str, page: int = 50) -> list[dict]:
        out: list[dict] = []
        after = 0
        while True:
            r = self.history(conv, after=after, limit=page)
            out += r["messages"]
            if not r["has_more"]:
                return out
            assert r["messages"], r
            after = r["messages"][-1]["seq"]


class SendResult:
    __slots__ = ("rc", "cmid")

    def __init__(self, rc: int, cmid: str):
        self.rc = rc
        self.cmid = cmid

    def __repr__(self) -> str:
        return f"SendResult(rc={self.rc:#x}, cmid={self.cmid!r})"


def wait_until(pred: Callable[[], Any], timeout: float = 5.0, interval: float = 0.02, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


def assert_stamped(m: dict, conv: str, seq: int, sender: str, cmid: str | None = None, body: str | None = None,
                   reply_to: int | None = None, tolerance_ms: int = 10_000) -> None:
    """Exact shape of a stamped text message."""
    expected_keys = {"conv", "seq", "id", "ts", "from", "cmid", "type", "body"}
    if reply_to is not None:
        expected_keys.add("reply_to")
    assert set(m) == expected_keys, f"fields {sorted(m)} != {sorted(expected_keys)}: {m}"
    assert m["conv"] == conv, m
    assert m["seq"] == seq, f"seq {m['seq']} != {seq}: {m}"
    assert m["id"] == f"{conv}:{seq}", m
    assert m["from"] == sender, m
    assert m["type"] == "text", m
    assert isinstance(m["ts"], int) and not isinstance(m["ts"], bool), m
    assert abs(m["ts"] - now_ms()) < tolerance_ms, f"ts {m['ts']} not near now {now_ms()}"
    if cmid is not None:
        assert m["cmid"] == cmid, m
    if body is not None:
        assert m["body"] == body, m
    if reply_to is not None:
        assert m["reply_to"] == reply_to, m


def assert_system(m: dict, conv: str, seq: int, actor: str, event: str, users: list[str] | None = None,
                  name: Any = "__absent__") -> None:
    assert m["conv"] == conv, m
    assert m["seq"] == seq, f"seq {m['seq']} != {seq}: {m}"
    assert m["id"] == f"{conv}:{seq}", m
    assert m["type"] == "system", m
    assert m["from"] == actor, m
    assert m["event"] == event, m
    assert isinstance(m["ts"], int), m
    if users is not None:
        assert sorted(m.get("users", [])) == sorted(users), f"users {m.get('users')} != {sorted(users)}: {m}"
    if name != "__absent__":
        assert m.get("name") == name, m
    assert "body" not in m or m["type"] == "system", m


def mosquitto_passwd(path: Path, users: dict[str, str]) -> None:
    first = True
    for u, pw in users.items():
        args = ["mosquitto_passwd", "-b"] + (["-c"] if first else []) + [str(path), u, pw]
        subprocess.run(args, check=True, capture_output=True)
        first = False


def dynsec_config(path: Path, admin: tuple[str, str], clients: dict[str, str], role: str,
                  acls: list[dict]) -> None:
    """Write a dynamic-security JSON config: `mosquitto_ctrl dynsec init` makes the admin
    (and hashes every password); the chat users get `role` with `acls`."""
    tmp = path.parent / "dynsec-tmp"
    tmp.mkdir(exist_ok=True)

    def init(fname: Path, user: str, pw: str) -> dict:
        if fname.exists():
            fname.unlink()
        subprocess.run(["mosquitto_ctrl", "dynsec", "init", str(fname), user, pw], check=True,
                       capture_output=True)
        return json.loads(fname.read_text())

    cfg = init(path, *admin)
    for u, pw in clients.items():
        c = init(tmp / f"{u}.json", u, pw)["clients"][0]
        c["textName"] = u
        c["roles"] = [{"rolename": role}]
        cfg["clients"].append(c)
    cfg["roles"].append({"rolename": role, "acls": acls})
    path.write_text(json.dumps(cfg, indent=2))
    shutil.rmtree(tmp, ignore_errors=True)
