"""Processes and clients for the bridge tests, importable from other conftests.

- ``free_port()``, ``Mosquitto``   a plain mosquitto broker on a free loopback port;
- ``bridge_binary()``              which bridge to run (env CHAT_BRIDGE, else by CHAT_SANITIZE);
- ``Bridge``                       writes a config for the given providers, runs the bridge
                                   (under valgrind when CHAT_SANITIZE=valgrind), stops it,
                                   and checks its exit and its log for sanitizer reports;
- ``PluginStandIn``                an MQTT client playing the plugin: publishes jobs on
                                   chat/push/jobs (QoS 1), collects acks and status;
- ``make_job()``                   a job payload as docs/push.md describes it.
"""
from __future__ import annotations

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
from pathlib import Path
from typing import Any, Callable

import paho.mqtt.client as mqtt

ROOT = Path(__file__).resolve().parents[2]
MOSQUITTO = os.environ.get("CHAT_MOSQUITTO", "/usr/sbin/mosquitto")
SANITIZER_RE = re.compile(r"ERROR: (AddressSanitizer|LeakSanitizer)|runtime error:|==\d+== ERROR SUMMARY: [1-9]"
                          r"|definitely lost: [1-9]")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port: int, timeout: float = 10.0) -> None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port}")


def sanitize_mode() -> str:
    return os.environ.get("CHAT_SANITIZE", "none")


def bridge_binary() -> Path:
    env = os.environ.get("CHAT_BRIDGE")
    if env:
        return Path(env).resolve()
    build = "build-asan" if sanitize_mode() == "asan" else "build"
    return ROOT / build / "bridge" / "mosquitto-chat-bridge"


def slow_factor() -> float:
    """Timeouts scale with the bridge's speed: valgrind is ~20x slower."""
    return 6.0 if sanitize_mode() == "valgrind" else 1.0


class Mosquitto:
    """A plain broker (no plugin) on a free port; ``extra`` lines go into its config."""

    def __init__(self, directory: Path, port: int | None = None, extra: str = ""):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.extra = extra
        self.proc: subprocess.Popen | None = None
        self.log_path = self.dir / "mosquitto.log"

    def start(self) -> "Mosquitto":
        conf = self.dir / "mosquitto.conf"
        lines = [f"listener {self.port} 127.0.0.1", "allow_anonymous true", "persistence false",
                 "log_dest stderr", "log_type error", "log_type warning", "log_type notice", self.extra]
        if os.geteuid() == 0:
            lines.insert(0, "user root")
        conf.write_text("\n".join(lines) + "\n")
        self.log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([MOSQUITTO, "-c", str(conf)], stdout=self.log, stderr=subprocess.STDOUT)
        wait_port(self.port)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        if getattr(self, "log", None):
            self.log.close()
            self.log = None


class Bridge:
    """The bridge under test. ``providers`` maps fcm/apns/webhook to their stand-in servers."""

    _serial = itertools.count(1)

    def __init__(self, directory: Path, broker_port: int, *, fcm=None, apns=None, webhook=None, pki=None,
                 username: str = "push-bridge", prefix: str = "chat", **overrides):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.n = next(self._serial)
        self.config_path = self.dir / f"bridge-{self.n}.conf"
        self.log_path = self.dir / f"bridge-{self.n}.log"
        self.proc: subprocess.Popen | None = None
        self.returncode: int | None = None
        settings: dict[str, Any] = {
            "mqtt_host": "127.0.0.1",
            "mqtt_port": broker_port,
            "mqtt_username": username,
            "mqtt_client_id": f"bridge-test-{os.getpid()}-{self.n}",
            "prefix": prefix,
            "concurrency": 16,
            "max_tries": 4,
            "backoff_base_ms": 50,
            "backoff_max_ms": 200,
            "connect_timeout_ms": 2000,
            "request_timeout_ms": 5000,
            "shutdown_grace_ms": 5000,
            "status_interval_ms": 200,
        }
        if fcm is not None:
            sa = fcm.write_service_account(self.dir / "service-account.json")
            settings.update(fcm_enabled="true", fcm_service_account=sa, fcm_send_url=fcm.send_url,
                            fcm_ca_file=fcm.pki.ca_file)
        if apns is not None:
            settings.update(apns_enabled="true", apns_key_file=apns.pki.apns_key_file, apns_key_id=apns.key_id,
                            apns_team_id=apns.team_id, apns_topic=apns.topic, apns_push_type=apns.push_type,
                            apns_host=apns.url, apns_ca_file=apns.pki.ca_file)
        if webhook is not None:
            settings.update(webhook_enabled="true", webhook_url=webhook.url, webhook_secret=webhook.secret)
        settings.update(overrides)
        self.settings = settings
        self.write_config()

    def write_config(self) -> None:
        lines = ["# written by tests/bridge/harness.py"]
        lines += [f"{k} = {v}" for k, v in self.settings.items() if v is not None]
        self.config_path.write_text("\n".join(lines) + "\n")

    def command(self) -> list[str]:
        cmd = [str(bridge_binary()), "-c", str(self.config_path)]
        if sanitize_mode() == "valgrind":
            cmd = ["valgrind", "--quiet", "--error-exitcode=99", "--leak-check=full",
                   "--errors-for-leak-kinds=definite", "--show-leak-kinds=definite"] + cmd
        return cmd

    def env(self) -> dict:
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=1:abort_on_error=0")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        return env

    def start(self) -> "Bridge":
        self.log_file = open(self.log_path, "ab")
        self.proc = subprocess.Popen(self.command(), stdout=self.log_file, stderr=subprocess.STDOUT, env=self.env())
        self.returncode = None
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def wait_log(self, pattern: str, timeout: float = 10.0) -> re.Match:
        rx = re.compile(pattern)
        end = time.monotonic() + timeout * slow_factor()
        while time.monotonic() < end:
            m = rx.search(self.log())
            if m:
                return m
            if self.proc and self.proc.poll() is not None:
                break
            time.sleep(0.05)
        raise AssertionError(f"bridge log never matched {pattern!r}:\n{self.log()[-4000:]}")

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 15.0) -> int:
        assert self.proc is not None
        try:
            self.returncode = self.proc.wait(timeout * slow_factor())
        finally:
            self._close_log()
        return self.returncode

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait; asserts a clean exit (0, no sanitizer report)."""
        if self.proc is None:
            return self.returncode or 0
        if self.proc.poll() is None:
            self.signal(signal.SIGTERM)
        rc = self.wait(timeout)
        self.check_clean(rc)
        return rc

    def kill(self) -> None:
        """SIGKILL, as a crash would."""
        if self.proc and self.proc.poll() is None:
            # valgrind: kill the tool process itself, which is the bridge
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)
        self.returncode = self.proc.returncode if self.proc else None
        self._close_log()

    def check_clean(self, rc: int) -> None:
        log = self.log()
        bad = SANITIZER_RE.search(log)
        assert not bad, f"sanitizer/valgrind report in the bridge log:\n{log[-6000:]}"
        assert rc == 0, f"bridge exited with {rc}:\n{log[-4000:]}"

    def _close_log(self) -> None:
        if getattr(self, "log_file", None):
            self.log_file.close()
            self.log_file = None

    def cleanup(self) -> None:
        """Fixture teardown: stop whatever still runs, checking it stops cleanly."""
        if self.proc and self.proc.poll() is None:
            self.stop()


class PluginStandIn:
    """Plays the plugin: publishes jobs, reads acks and status."""

    def __init__(self, port: int, prefix: str = "chat", client_id: str | None = None):
        self.prefix = prefix
        self.cond = threading.Condition()
        self.acks: list[dict] = []
        self.ack_times: dict[Any, list[float]] = {}
        self.statuses: list[dict] = []
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2,
                                  client_id=client_id or f"plugin-standin-{os.getpid()}-{time.monotonic_ns()}",
                                  protocol=mqtt.MQTTv311)
        self.client.username_pw_set("mosquitto-chat-plugin")
        self.client.on_message = self._on_message
        self._subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: self._subscribed.set()
        self.client.connect("127.0.0.1", port, keepalive=30)
        self.client.loop_start()
        r, _ = self.client.subscribe([(f"{prefix}/push/ack", 1), (f"{prefix}/push/status", 1)])
        assert r == mqtt.MQTT_ERR_SUCCESS
        assert self._subscribed.wait(5), "no SUBACK"

    def close(self) -> None:
        self.client.disconnect()     # first: loop_stop then returns at once
        self.client.loop_stop()

    def _on_message(self, client, userdata, msg):
        try:
            payload = json.loads(msg.payload)
        except ValueError:
            payload = {"_raw": msg.payload}
        with self.cond:
            if msg.topic.endswith("/push/ack"):
                self.acks.append(payload)
                self.ack_times.setdefault(payload.get("id"), []).append(time.monotonic())
            else:
                payload["_retained"] = bool(msg.retain)
                self.statuses.append(payload)
            self.cond.notify_all()

    def publish_job(self, job: dict | bytes | str) -> None:
        data = job if isinstance(job, (bytes, str)) else json.dumps(job)
        info = self.client.publish(f"{self.prefix}/push/jobs", data, qos=1)
        info.wait_for_publish(5)
        assert info.is_published()

    def acks_for(self, job_id) -> list[dict]:
        with self.cond:
            return [a for a in self.acks if a.get("id") == job_id]

    def acked_ids(self) -> set:
        with self.cond:
            return {a.get("id") for a in self.acks}

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout * slow_factor()
        with self.cond:
            while not predicate():
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.1))
            return True

    def wait_ack(self, job_id, timeout: float = 10.0) -> dict:
        assert self.wait_for(lambda: any(a.get("id") == job_id for a in self.acks), timeout), \
            f"no ack for job {job_id!r}; acks so far: {self.acks}"
        return self.acks_for(job_id)[0]

    def wait_acks(self, ids, timeout: float = 10.0) -> None:
        ids = set(ids)
        assert self.wait_for(lambda: ids <= {a.get("id") for a in self.acks}, timeout), \
            f"missing acks for {sorted(ids - self.acked_ids(), key=str)}"

    def last_status(self) -> dict | None:
        with self.cond:
            return self.statuses[-1] if self.statuses else None

    def wait_status(self, predicate: Callable[[dict], bool], timeout: float = 10.0) -> dict:
        found: list[dict] = []

        def check():
            for s in reversed(self.statuses):
                if predicate(s):
                    found.append(s)
                    return True
            return False
        assert self.wait_for(check, timeout), f"no status matching; last: {self.last_status()}"
        return found[0]


_job_ids = itertools.count(int(time.time()) % 100000 * 1000)


def next_job_id() -> int:
    return next(_job_ids)


def make_job(devices: list[tuple[str, str]], *, job_id: int | None = None, user: str = "bob",
             conv: str = "g_7Hq2", conv_name: str | None = "team", type: str = "group",  # noqa: A002
             sender: str = "alice", seq: int = 42, count: int = 1, preview: str | None = "hello",
             badge: int | None = 5, locale: str = "en") -> dict:
    job = {
        "id": next_job_id() if job_id is None else job_id,
        "user": user, "conv": conv, "conv_name": conv_name, "type": type, "from": sender,
        "seq": seq, "count": count, "preview": preview, "badge": badge,
        "ts": int(time.time() * 1000),
        "devices": [{"platform": p, "token": t, "locale": locale} for p, t in devices],
    }
    if badge is None:
        del job["badge"]
    return job


def which(cmd: str) -> bool:
    return shutil.which(cmd) is not None
