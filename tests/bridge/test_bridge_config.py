"""The bridge's config file: strict parsing, errors naming the line, -t."""
from __future__ import annotations

import subprocess

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from harness import Bridge, bridge_binary, slow_factor

EXIT_CONFIG = 78


def run(config_path, *args):
    b = Bridge.__new__(Bridge)      # only for its command/env helpers
    b.config_path = config_path
    cmd = b.command() + list(args)
    return subprocess.run(cmd, capture_output=True, text=True, timeout=20 * slow_factor(), env=b.env())


GOOD = """\
# a minimal valid config
mqtt_host = 127.0.0.1
mqtt_port = 1883
mqtt_username = push-bridge
webhook_enabled = true
webhook_url = http://127.0.0.1:9/push
webhook_secret = s3cret # not a comment: part of the secret
"""


def test_good_config_checks_out(tmp_path):
    p = tmp_path / "bridge.conf"
    p.write_text(GOOD)
    r = run(p, "-t")
    assert r.returncode == 0, r.stderr
    assert "configuration OK" in r.stdout


@pytest.mark.parametrize("extra, line, message", [
    ("colour = blue", 8, "unknown key 'colour'"),
    ("concurrency = 0", 8, "concurrency: '0' is not an integer from 1 to 10000"),
    ("max_tries = 3x", 8, "max_tries: '3x' is not an integer"),
    ("mqtt_keepalive = -1", 8, "mqtt_keepalive: '-1' is not an integer from 5 to 3600"),
    ("fcm_enabled = maybe", 8, "fcm_enabled: 'maybe' is not true or false"),
    ("just some words", 8, "expected 'key = value'"),
    ("= 5", 8, "missing key before '='"),
    ("mqtt_port = 1884", 8, "'mqtt_port' was already set on line 3"),
    ("mqtt_password =", 8, "empty value for 'mqtt_password'"),
    ("apns_host = staging", 8, "apns_host must be production, sandbox or an http(s):// URL"),
    ("apns_push_type = loud", 8, "apns_push_type 'loud' is not an APNs push type"),
    ("prefix = chat/x", 8, "prefix 'chat/x' must be one topic level"),
    ("fcm_send_url = ftp://example.com", 8, "'ftp://example.com' is not an http:// or https:// URL"),
    ("apns_enabled = true", 8, "apns_enabled = true needs apns_key_file"),
    ("fcm_enabled = yes", 8, "fcm_enabled = true needs fcm_service_account"),
    ("apns_enabled = true\napns_key_file = /nonexistent/key.p8\napns_key_id = K\napns_team_id = T\n"
     "apns_topic = org.example", 9, "apns_key_file: cannot open /nonexistent/key.p8"),
    ("fcm_enabled = true\nfcm_service_account = /nonexistent/sa.json", 9, "fcm_service_account: cannot open"),
])
def test_bad_config_names_the_line(tmp_path, extra, line, message):
    p = tmp_path / "bridge.conf"
    p.write_text(GOOD + extra + "\n")
    r = run(p)
    assert r.returncode == EXIT_CONFIG, (r.returncode, r.stderr)
    assert f"{p}:{line}: " in r.stderr, r.stderr
    assert message in r.stderr, r.stderr
    assert "Sanitizer" not in r.stderr and "runtime error" not in r.stderr


@pytest.mark.parametrize("text, message", [
    ("webhook_enabled = true\nwebhook_url = http://x/\nwebhook_secret = s\n", "mqtt_username is required"),
    ("mqtt_username = u\n", "no provider enabled"),
    ("mqtt_username = u\nbackoff_base_ms = 500\nbackoff_max_ms = 100\nwebhook_enabled = true\n"
     "webhook_url = http://x/\nwebhook_secret = s\n", "backoff_max_ms (100) is less than backoff_base_ms (500)"),
])
def test_bad_config_as_a_whole(tmp_path, text, message):
    p = tmp_path / "bridge.conf"
    p.write_text(text)
    r = run(p)
    assert r.returncode == EXIT_CONFIG and message in r.stderr, r.stderr


def test_wrong_key_types_are_refused(tmp_path, pki):
    rsa_p8 = tmp_path / "rsa.p8"
    rsa_p8.write_bytes(rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()))
    p = tmp_path / "bridge.conf"
    p.write_text(GOOD + f"apns_enabled = true\napns_key_file = {rsa_p8}\napns_key_id = K\napns_team_id = T\n"
                 "apns_topic = org.example\n")
    r = run(p)
    assert r.returncode == EXIT_CONFIG and f"{p}:9: apns_key_file" in r.stderr and "P-256" in r.stderr, r.stderr

    sa = tmp_path / "sa.json"
    sa.write_text('{"client_email": "x@y", "private_key": "-----BEGIN PRIVATE KEY-----\\nAAAA\\n'
                  '-----END PRIVATE KEY-----\\n", "token_uri": "https://127.0.0.1/token", "project_id": "p"}')
    p.write_text(GOOD + f"fcm_enabled = true\nfcm_service_account = {sa}\n")
    r = run(p)
    assert r.returncode == EXIT_CONFIG and f"{p}:9: fcm_service_account" in r.stderr, r.stderr


def test_usage_errors(tmp_path):
    r = subprocess.run([str(bridge_binary())], capture_output=True, text=True, timeout=10)
    assert r.returncode == EXIT_CONFIG and "usage:" in r.stderr
    r = subprocess.run([str(bridge_binary()), "-c", str(tmp_path / "missing.conf")], capture_output=True,
                       text=True, timeout=10)
    assert r.returncode == EXIT_CONFIG and "cannot open" in r.stderr


def test_example_config_is_valid(tmp_path, pki):
    """mosquitto-chat-bridge.conf.example (top level) passes -t once a provider is on and its files exist."""
    from harness import ROOT
    text = (ROOT / "mosquitto-chat-bridge.conf.example").read_text()
    sa = pki.write_service_account(tmp_path / "sa.json", client_email="b@p.iam.gserviceaccount.com",
                                   project_id="p", token_uri="https://oauth2.googleapis.com/token")
    text = (text.replace("webhook_enabled = false", "webhook_enabled = true")
                .replace("fcm_enabled = false", "fcm_enabled = true")
                .replace("/etc/mosquitto-chat/firebase-service-account.json", str(sa))
                .replace("apns_enabled = false", "apns_enabled = true")
                .replace("/etc/mosquitto-chat/AuthKey_ABC123DEFG.p8", str(pki.apns_key_file)))
    p = tmp_path / "bridge.conf"
    p.write_text(text)
    r = run(p, "-t")
    assert r.returncode == 0, r.stderr
    assert "fcm: project p as b@p.iam.gserviceaccount.com" in r.stderr
