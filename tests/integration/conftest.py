"""Fixtures for the mosquitto-chat integration suite.

- `broker`: one mosquitto + plugin per test module (module attributes BROKER_OPTS,
  BROKER_EXTRA_CONF and BROKER_ACL may customise it).
- `make_broker(**opts)`: a fresh broker for tests that need special options or kill it.
- `users(...)`: fresh unique user names.
- `observer_broker`: a module broker with `plugin_opt_observers observer,audit`.
- `mqtt_settings` / `mosquitto`: pytest-mqtt's fixtures, overridden so that `capmqtt` connects
  to `observer_broker` as the observer (pytest-mqtt would otherwise want a broker on
  localhost:1883 or Docker).

Environment: CHAT_PLUGIN (path of mosquitto_chat.so), CHAT_SANITIZE=asan|valgrind.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from pytest_mqtt.model import MqttSettings

sys.path.insert(0, str(Path(__file__).resolve().parent))

import helpers  # noqa: E402
from helpers import ACTIVE_BROKERS, ALL_CLIENTS, OBSERVER, SCHEMA_FAILURES, Broker, uname  # noqa: E402


def _new_broker(tmp_path_factory, name: str, opts=None, extra_conf=(), acl_lines=None, **kw) -> Broker:
    d = tmp_path_factory.mktemp(name)
    extra = list(extra_conf)
    if acl_lines is not None:
        acl = d / "acl"
        acl.write_text("\n".join(acl_lines) + "\n")
        extra.append(f"acl_file {acl}")
    return Broker(d, opts=opts, extra_conf=extra, name=name, **kw)


@pytest.fixture(scope="module")
def broker(request, tmp_path_factory):
    """One broker for the whole module, default options unless the module says otherwise."""
    mod = request.module
    b = _new_broker(
        tmp_path_factory,
        "broker-" + mod.__name__.rsplit(".", 1)[-1],
        opts=getattr(mod, "BROKER_OPTS", None),
        extra_conf=getattr(mod, "BROKER_EXTRA_CONF", ()),
        acl_lines=getattr(mod, "BROKER_ACL", None),
    )
    b.start()
    yield b
    b.finalize()


@pytest.fixture(scope="module")
def observer_broker(tmp_path_factory):
    b = _new_broker(tmp_path_factory, "observer-broker", opts={"observers": f"{OBSERVER},audit"})
    b.start()
    yield b
    b.finalize()


@pytest.fixture
def mqtt_settings(observer_broker):
    """pytest-mqtt's capmqtt connects (MQTT 3.1.1, subscribes to `#`) to our observer broker as
    the configured observer."""
    return MqttSettings(host=observer_broker.host, port=observer_broker.port, username=OBSERVER, password="",
                        subscribe_all=True)


@pytest.fixture
def mosquitto(observer_broker):
    """pytest-mqtt's `mosquitto` fixture: our broker, never Docker."""
    return observer_broker.host, observer_broker.port


@pytest.fixture
def make_broker(tmp_path_factory, request):
    """Factory for fresh brokers: make_broker(opts={...}, extra_conf=[...], acl_lines=[...],
    allow_anonymous=..., start=True). All are stopped (and sanitizer-checked) at teardown."""
    made: list[Broker] = []

    def factory(opts=None, extra_conf=(), acl_lines=None, start=True, name=None, **kw) -> Broker:
        safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.name)[:48]
        b = _new_broker(tmp_path_factory, name or f"b-{safe}", opts=opts,
                        extra_conf=extra_conf, acl_lines=acl_lines, **kw)
        made.append(b)
        if start:
            b.start()
        return b

    yield factory
    errors = []
    for b in made:
        try:
            b.finalize()
        except AssertionError as e:
            errors.append(str(e))
    if errors:
        pytest.fail("\n\n".join(errors), pytrace=False)


@pytest.fixture
def users():
    """users("alice", "bob") -> ["alice12", "bob13"]; users(3) -> three names."""

    def make(*bases):
        if len(bases) == 1 and isinstance(bases[0], int):
            return [uname("u") for _ in range(bases[0])]
        return [uname(b) for b in bases]

    return make


@pytest.fixture(autouse=True)
def _client_and_schema_guard():
    """Disconnect every client a test made; fail the test if any received payload
    violated the schema (also ones the test never looked at)."""
    helpers.schema_validator()  # raises once schema/ exists but schema_check is unusable
    start = len(SCHEMA_FAILURES)
    yield
    for c in list(ALL_CLIENTS):
        try:
            c.disconnect()
        except Exception:  # noqa: BLE001
            pass
    ALL_CLIENTS.clear()
    new = SCHEMA_FAILURES[start:]
    if new:
        pytest.fail("payloads violating the schema:\n" + "\n".join(new[:20]), pytrace=False)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and rep.when in ("setup", "call", "teardown"):
        for b in list(ACTIVE_BROKERS):
            rep.sections.append((f"mosquitto log: {b.name} ({b.dir})", b.log_tail(80)))
