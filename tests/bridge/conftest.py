"""Fixtures of the bridge tests: a plain mosquitto, the provider stand-ins, the bridge,
and the test itself in the plugin's role (publishing jobs, reading acks and status).

Builds nothing: the bridge is build/bridge/mosquitto-chat-bridge, or
build-asan/… with CHAT_SANITIZE=asan, or whatever env CHAT_BRIDGE names.
CHAT_SANITIZE=valgrind runs it under valgrind (slower; timeouts scale).
"""
from __future__ import annotations

import secrets
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import Bridge, Mosquitto, PluginStandIn, bridge_binary  # noqa: E402
from providers import ApnsServer, FcmServer, Pki, WebhookServer  # noqa: E402


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: a test taking several seconds")


@pytest.fixture(scope="session", autouse=True)
def _bridge_built():
    if not bridge_binary().exists():
        pytest.fail(f"{bridge_binary()} does not exist: build it first (cmake --build build), "
                    "or name it in CHAT_BRIDGE", pytrace=False)


@pytest.fixture(scope="session")
def pki(tmp_path_factory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture
def broker(tmp_path):
    b = Mosquitto(tmp_path / "broker").start()
    yield b
    b.stop()


@pytest.fixture
def apns(pki):
    s = ApnsServer(pki)
    yield s
    s.close()


@pytest.fixture
def fcm(pki):
    s = FcmServer(pki)
    yield s
    s.close()


@pytest.fixture
def webhook():
    s = WebhookServer()
    yield s
    s.close()


@pytest.fixture
def plugin(broker):
    p = PluginStandIn(broker.port)
    yield p
    p.close()


@pytest.fixture
def start_bridge(tmp_path, broker, pki, fcm, apns, webhook, plugin):
    """start_bridge(**config overrides) → a running Bridge wired to all three providers,
    returned once its status says it is running (so it is subscribed). Stopped (and
    checked for a clean exit) at teardown."""
    started: list[Bridge] = []

    def start(wait: bool = True, **overrides) -> Bridge:
        b = Bridge(tmp_path / "bridge", broker.port, fcm=fcm, apns=apns, webhook=webhook, pki=pki, **overrides)
        b.start()
        started.append(b)
        if wait:
            b.wait_log(r"mqtt: taking jobs from")
        return b

    yield start
    for b in started:
        b.cleanup()


@pytest.fixture
def tokens():
    """Fresh device tokens, one per platform: APNs hex, FCM opaque, webhook opaque."""
    class Tokens:
        def apns(self):
            return secrets.token_hex(32)

        def fcm(self):
            return "fcm:" + secrets.token_urlsafe(40)

        def webhook(self):
            return "hook-" + secrets.token_hex(8)
    return Tokens()
