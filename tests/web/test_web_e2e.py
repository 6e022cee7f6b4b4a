"""End-to-end tests of the web page (web/) in a real browser.

One real mosquitto with the plugin (tests/integration/helpers.py Broker) whose WebSocket
listener also serves web/ (`http_dir`, as in mosquitto.conf.example); for each scenario,
tests/web/e2e.mjs drives Debian's Chromium through playwright-core with two browser contexts
as two users. Screenshots go to tests/web/artifacts/ (not committed).

Needs: `scripts/install-deps.sh` (chromium, node, `npm ci`, web/vendor/mqtt.min.js).
About 30 s for all scenarios on 2 cores.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(ROOT / "tests" / "integration"))

from helpers import Broker  # noqa: E402

WEB = (ROOT / "web").resolve()   # mosquitto compares real paths with http_dir: no symlinks
ARTIFACTS = HERE / "artifacts"
CHROMIUM = os.environ.get("CHROMIUM", "/usr/bin/chromium")
SCENARIOS = ["chat", "typing", "ticks", "presence", "reload", "reconnect", "keyboard", "errors"]
# a scenario that hangs is a failure, not a stuck suite (the scenarios bound their own waits)
NODE_TIMEOUT_S = 180


def _missing() -> str | None:
    if not shutil.which("node"):
        return "node"
    if not Path(CHROMIUM).exists():
        return CHROMIUM
    if not (ROOT / "node_modules" / "playwright-core").is_dir():
        return "node_modules/playwright-core (npm ci)"
    if not (WEB / "vendor" / "mqtt.min.js").exists():
        return "web/vendor/mqtt.min.js"
    return None


@pytest.fixture(scope="module")
def web_broker(tmp_path_factory):
    missing = _missing()
    if missing:
        # scripts/install-deps.sh installs all of these; CI runs it first
        pytest.fail(f"{missing} is missing: run scripts/install-deps.sh", pytrace=False)
    b = Broker(
        tmp_path_factory.mktemp("web-broker"),
        # a short grace so that "last seen" shows soon after a page closes
        opts={"presence_grace_ms": 300},
        extra_conf=[f"http_dir {WEB}"],   # applies to the last listener: the WebSocket one
        name="web-broker",
    )
    b.start()
    yield b
    b.finalize()


def test_page_served_by_mosquitto(web_broker):
    """mosquitto's own http_dir serves the page and the vendored mqtt.js on the WebSocket port."""
    import urllib.request

    base = f"http://127.0.0.1:{web_broker.ws_port}"
    with urllib.request.urlopen(base + "/") as r:
        html = r.read().decode()
    assert "<title>mosquitto-chat</title>" in html
    for f in ("app.js", "style.css", "vendor/mqtt.min.js"):
        with urllib.request.urlopen(f"{base}/{f}") as r:
            assert r.read() == (WEB / f).read_bytes()


def run_scenario(broker: Broker, scenario: str, **env: str) -> None:
    ARTIFACTS.mkdir(exist_ok=True)
    tag = uuid.uuid4().hex[:6]
    proc = subprocess.run(
        ["node", str(HERE / "e2e.mjs"), scenario, f"http://127.0.0.1:{broker.ws_port}/", str(ARTIFACTS), tag],
        cwd=ROOT, capture_output=True, text=True, timeout=NODE_TIMEOUT_S,
        env={**os.environ, "CHROMIUM": CHROMIUM, **env},
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert lines, f"e2e.mjs gave no result (exit {proc.returncode})\n{proc.stdout}\n{proc.stderr}"
    result = json.loads(lines[-1][len("RESULT "):])
    assert result["ok"], (f"scenario {scenario} failed (screenshots in {ARTIFACTS}):\n{result.get('error')}\n"
                          f"{proc.stderr[-4000:]}")
    assert proc.returncode == 0


@pytest.mark.parametrize("scenario", SCENARIOS)
def test_web_scenario(web_broker, scenario):
    run_scenario(web_broker, scenario)


class WillLeakBroker(Broker):
    """mosquitto 2.0.11 leaks the Last Will of a client whose login is refused: handle__connect
    stores the will in the context, then on MOSQ_ERR_AUTH from the password check sets
    context->will = NULL without freeing it (src/handle_connect.c). The page always sets a will
    (the contract's presence pattern), so a refused login here leaks ~110 bytes inside
    handle__connect. Only this broker's LeakSanitizer (or valgrind) run suppresses leaks under
    handle__connect; every other broker keeps the suite's suppressions as they are."""

    def _command(self):
        cmd, env = super()._command()
        if "LSAN_OPTIONS" in env:
            supp = self.dir / "lsan.supp"
            base = ROOT / "tests" / "lsan.supp"
            supp.write_text((base.read_text() if base.exists() else "") + "leak:handle__connect\n")
            env["LSAN_OPTIONS"] = f"suppressions={supp}:print_suppressions=0"
        if cmd[0] == "valgrind":
            supp = self.dir / "valgrind.supp"
            supp.write_text("{\n   mosquitto-2.0.11-refused-login-will\n   Memcheck:Leak\n   match-leak-kinds: definite\n"
                            "   fun:calloc\n   fun:mosquitto__calloc\n   fun:handle__connect\n}\n")
            cmd.insert(1, f"--suppressions={supp}")
        return cmd, env


def test_web_jwt_login(tmp_path_factory):
    """With `plugin_opt_auth jwt` the page's password field carries the token."""
    import time

    import jwt as pyjwt

    missing = _missing()
    if missing:
        pytest.fail(f"{missing} is missing: run scripts/install-deps.sh", pytrace=False)
    d = tmp_path_factory.mktemp("web-jwt-broker")
    secret = uuid.uuid4().hex.encode() * 2
    (d / "secret").write_bytes(secret)
    b = WillLeakBroker(d, opts={"auth": "jwt", "jwt_hs256_secret_file": str(d / "secret")},
                       extra_conf=[f"http_dir {WEB}"], name="web-jwt-broker")
    b.start()
    try:
        user = f"jwt{uuid.uuid4().hex[:6]}"
        now = int(time.time())
        token = pyjwt.encode({"sub": user, "exp": now + 600}, secret, algorithm="HS256")
        bad = pyjwt.encode({"sub": user, "exp": now + 600}, b"x" * 64, algorithm="HS256")
        run_scenario(b, "jwt", E2E_JWT=json.dumps({"user": user, "token": token, "bad": bad}))
    finally:
        b.finalize()
