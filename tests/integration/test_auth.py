"""plugin_opt_auth jwt: the MQTT password is a JWT (HS256, RS256 or ES256) whose `sub` is the
username. Valid tokens (made by PyJWT) log in over MQTT 5 and 3.1.1 and chat; every kind of
bad token is refused with a CONNACK (MQTT 5: 0x87 Not authorized; 3.1.1: 5 Not authorized,
read from the raw packet) and one broker log line naming the reason but never the token.
SIGHUP re-reads the key files. The default (auth none) beside password_file and the
dynamic-security plugin is in test_acl.py."""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import socket
import struct
import time
from pathlib import Path

import jwt as pyjwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

import os

from helpers import ACCEPTED, DYNSEC_PLUGIN, ConnectRefused, dynsec_config, mosquitto_passwd, wait_until

ISSUER = "https://id.chat.test"
AUDIENCE = "chat"
NOT_AUTHORIZED_V5 = 0x87
NOT_AUTHORIZED_V311 = 5


# --------------------------------------------------------------------------- keys and tokens

def _pub_pem(key) -> bytes:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)


class Keys:
    """An HS256 secret, an RSA and an EC P-256 key pair, written as the plugin reads them."""

    def __init__(self, d: Path):
        self.dir = d
        self.secret = b"integration-secret-" + hashlib.sha256(str(d).encode()).hexdigest().encode()
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        self.secret_file = d / "hs256.secret"
        self.secret_file.write_bytes(self.secret + b"\n")
        self.pub_file = d / "public.pem"
        self.pub_file.write_bytes(_pub_pem(self.rsa) + _pub_pem(self.ec))

    def opts(self, **more) -> dict:
        o = {"auth": "jwt", "jwt_hs256_secret_file": str(self.secret_file),
             "jwt_public_key_file": str(self.pub_file), "jwt_issuer": ISSUER, "jwt_audience": AUDIENCE}
        o.update(more)
        return o

    def key_for(self, alg: str):
        return {"HS256": self.secret, "RS256": self.rsa, "ES256": self.ec}[alg]


def claims(user: str, **over) -> dict:
    now = int(time.time())
    c = {"sub": user, "iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def token(keys: Keys, user: str, alg: str = "HS256", **over) -> str:
    return pyjwt.encode(claims(user, **over), keys.key_for(alg), algorithm=alg)


def b64(b: bytes) -> str:
    return base64.urlsafe_b64encode(b).rstrip(b"=").decode()


def hand_token(header: dict, body: dict, key: bytes | None) -> str:
    """A token built by hand (for what PyJWT refuses to make): HS256 over key, or no signature."""
    signing = b64(json.dumps(header).encode()) + "." + b64(json.dumps(body).encode())
    sig = b64(hmac.new(key, signing.encode(), hashlib.sha256).digest()) if key is not None else ""
    return signing + "." + sig


def raw_connect_v311(port: int, user: str | None, password: str | None) -> int:
    """A bare MQTT 3.1.1 CONNECT; returns the CONNACK return code byte (paho reports 3.1.1
    codes translated to MQTT 5 reason codes)."""
    def s(x: bytes) -> bytes:
        return struct.pack("!H", len(x)) + x
    flags = 0x02 | (0x80 if user is not None else 0) | (0x40 if password is not None else 0)
    var = s(b"MQTT") + bytes([4, flags]) + struct.pack("!H", 30)
    pl = s(f"raw-{time.monotonic_ns()}".encode())
    if user is not None:
        pl += s(user.encode())
    if password is not None:
        pl += s(password.encode())
    body = var + pl
    rl = bytearray()
    n = len(body)
    while True:
        b, n = n % 128, n // 128
        rl.append(b | (0x80 if n else 0))
        if not n:
            break
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sk:
        sk.sendall(bytes([0x10]) + bytes(rl) + body)
        ack = b""
        while len(ack) < 4:
            chunk = sk.recv(4 - len(ack))
            if not chunk:
                raise AssertionError(f"connection closed without a CONNACK (got {ack!r})")
            ack += chunk
    assert ack[0] == 0x20 and ack[1] == 2, ack
    return ack[3]


@pytest.fixture(scope="module")
def keys(tmp_path_factory) -> Keys:
    return Keys(tmp_path_factory.mktemp("jwt-keys"))


@pytest.fixture(scope="module")
def jwt_broker(keys, tmp_path_factory):
    from conftest import _new_broker
    # allow_anonymous true: with auth jwt the plugin decides every login anyway
    b = _new_broker(tmp_path_factory, "broker-auth", opts=keys.opts())
    b.start()
    yield b
    b.finalize()


def refused_lines(br, user: str) -> list[str]:
    return [ln for ln in br.all_output().splitlines() if f"login refused for user '{user}'" in ln]


# --------------------------------------------------------------------------- valid logins

@pytest.mark.parametrize("alg", ["HS256", "RS256", "ES256"])
@pytest.mark.parametrize("proto", [5, 4])
def test_valid_tokens_chat(jwt_broker, keys, users, alg, proto):
    a, b = users("alice", "bob")
    alice = jwt_broker.client(a, password=token(keys, a, alg), protocol=proto)
    bob = jwt_broker.client(b, password=token(keys, b, "ES256" if alg != "ES256" else "RS256"),
                            protocol=9 - proto)
    d = alice.create_direct(b)
    bob.sub_conv(d)
    r = alice.send(d, f"signed with {alg}")
    assert r.rc in alice.ok_codes
    m = bob.expect_message(d)
    assert m["from"] == a and m["body"] == f"signed with {alg}"
    assert refused_lines(jwt_broker, a) == [] and refused_lines(jwt_broker, b) == []


def test_audience_array_and_leeway(jwt_broker, keys, users):
    a, b, c = users("alice", "bob", "carol")
    jwt_broker.client(a, password=token(keys, a, aud=["web", AUDIENCE]))
    # expired 10 s ago / valid in 10 s: inside the default 30 s leeway
    now = int(time.time())
    jwt_broker.client(b, password=token(keys, b, "RS256", exp=now - 10))
    jwt_broker.client(c, password=token(keys, c, "ES256", nbf=now + 10))


# --------------------------------------------------------------------------- refusals

REFUSALS = {
    # name: (token maker(keys, user), log reason)
    "expired": (lambda k, u: token(k, u, exp=int(time.time()) - 120), "expired"),
    "not_yet_valid": (lambda k, u: token(k, u, "RS256", nbf=int(time.time()) + 600), "not yet valid"),
    "no_exp": (lambda k, u: token(k, u, exp=None), "no \"exp\""),
    "wrong_iss": (lambda k, u: token(k, u, "ES256", iss="https://evil.test"), "wrong issuer"),
    "no_iss": (lambda k, u: token(k, u, iss=None), "wrong issuer"),
    "wrong_aud": (lambda k, u: token(k, u, aud="other-service"), "wrong audience"),
    "wrong_aud_array": (lambda k, u: token(k, u, "RS256", aud=["a", "b"]), "wrong audience"),
    "sub_not_username": (lambda k, u: token(k, u, "ES256", sub="mallory"), "subject is not the username"),
    "bad_signature_hs": (lambda k, u: pyjwt.encode(claims(u), b"another-secret-that-is-long-enough-123",
                                                   algorithm="HS256"), "bad signature"),
    "bad_signature_rs": (lambda k, u: pyjwt.encode(claims(u), rsa.generate_private_key(65537, 2048),
                                                   algorithm="RS256"), "bad signature"),
    "bad_signature_es": (lambda k, u: pyjwt.encode(claims(u), ec.generate_private_key(ec.SECP256R1()),
                                                   algorithm="ES256"), "bad signature"),
    "tampered_payload": (lambda k, u: (lambda t: t.split(".")[0] + "." + b64(json.dumps(
        claims(u, exp=int(time.time()) + 10 ** 8)).encode()) + "." + t.split(".")[2])(token(k, u)),
        "bad signature"),
    "alg_none": (lambda k, u: hand_token({"alg": "none", "typ": "JWT"}, claims(u), None), "alg none"),
    "alg_confusion": (lambda k, u: hand_token({"alg": "HS256"}, claims(u), k.pub_file.read_bytes()),
                      "bad signature"),
    "alg_hs512": (lambda k, u: pyjwt.encode(claims(u), k.secret * 2, algorithm="HS512"), "algorithm not accepted"),
    "garbage": (lambda k, u: "not-a-jwt-at-all", "malformed token"),
    "padded": (lambda k, u: token(k, u) + "=", "malformed token"),
    "too_long": (lambda k, u: token(k, u, pad="x" * 9000), "longer than 8192"),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_bad_tokens_refused_v5(jwt_broker, keys, users, case):
    make, reason = REFUSALS[case]
    (u,) = users("victim")
    tok = make(keys, u)
    with pytest.raises(ConnectRefused) as ei:
        jwt_broker.client(u, password=tok, protocol=5)
    assert ei.value.code == NOT_AUTHORIZED_V5
    lines = wait_until(lambda: refused_lines(jwt_broker, u), what="the refusal log line")
    assert len(lines) == 1, lines
    assert reason in lines[0], lines[0]
    # never the token, nor any of its segments
    log = jwt_broker.all_output()
    for seg in tok.split("."):
        if len(seg) >= 8:
            assert seg not in log


@pytest.mark.parametrize("case", ["expired", "wrong_aud", "sub_not_username", "alg_none", "garbage"])
def test_bad_tokens_refused_v311(jwt_broker, keys, users, case):
    (u,) = users("victim")
    assert raw_connect_v311(jwt_broker.port, u, REFUSALS[case][0](keys, u)) == NOT_AUTHORIZED_V311
    assert REFUSALS[case][1] in wait_until(lambda: refused_lines(jwt_broker, u))[0]
    # and a good token over the same raw path is accepted
    assert raw_connect_v311(jwt_broker.port, u, token(keys, u)) == 0


def test_missing_credentials_refused(jwt_broker, keys, users):
    (u,) = users("nopw")
    with pytest.raises(ConnectRefused) as ei:
        jwt_broker.client(u, password=None)
    assert ei.value.code == NOT_AUTHORIZED_V5
    assert "no password" in wait_until(lambda: refused_lines(jwt_broker, u))[0]
    # anonymous: refused although allow_anonymous is true
    with pytest.raises(ConnectRefused) as ei:
        jwt_broker.client(None)
    assert ei.value.code == NOT_AUTHORIZED_V5
    assert raw_connect_v311(jwt_broker.port, None, None) == NOT_AUTHORIZED_V311
    assert raw_connect_v311(jwt_broker.port, u, None) == NOT_AUTHORIZED_V311
    assert raw_connect_v311(jwt_broker.port, u, "") == NOT_AUTHORIZED_V311


def test_token_of_another_user_is_useless(jwt_broker, keys, users):
    a, b = users("alice", "bob")
    tok = token(keys, a)
    alice = jwt_broker.client(a, password=tok)
    with pytest.raises(ConnectRefused):
        jwt_broker.client(b, password=tok)
    assert alice.ok("conv.list")["conversations"] == []


# --------------------------------------------------------------------------- SIGHUP

def reloads(br) -> int:
    return br.all_output().count("reload: JWT keys re-read")


def test_sighup_rereads_keys(make_broker, tmp_path, users):
    keys = Keys(tmp_path)
    br = make_broker(opts={"auth": "jwt", "jwt_hs256_secret_file": str(keys.secret_file),
                           "jwt_public_key_file": str(keys.pub_file)})
    a, b, c = users("alice", "bob", "carol")
    old_hs, old_es = token(keys, a), token(keys, a, "ES256")
    alice = br.client(a, password=old_hs)
    bob = br.client(b, password=token(keys, b, "RS256"), protocol=4)

    # rotate: new secret and a new EC key; the RSA key stays
    new_secret = b"rotated-secret-0123456789abcdef0123456789"
    new_ec = ec.generate_private_key(ec.SECP256R1())
    keys.secret_file.write_bytes(new_secret)
    keys.pub_file.write_bytes(_pub_pem(keys.rsa) + _pub_pem(new_ec))
    br.reload()
    wait_until(lambda: reloads(br) == 1, what="the reload log line")
    assert "2 RSA" not in br.all_output() and "HS256 secret, 1 RSA key(s), 1 EC P-256 key(s)" in br.all_output()

    # mosquitto re-checks connected clients after a reload: alice's token no longer verifies
    assert alice.disconnected.wait(10), "a client whose key was removed stayed connected"
    for old in (old_hs, old_es):
        with pytest.raises(ConnectRefused):
            br.client(a, password=old)
    alice = br.client(a, password=pyjwt.encode(claims(a, iss=None, aud=None), new_secret, algorithm="HS256"))
    carol = br.client(c, password=pyjwt.encode(claims(c), new_ec, algorithm="ES256"))
    assert not bob.disconnected.is_set(), "an RS256 client was dropped although its key stayed"

    # a bad replacement keeps the keys in use
    keys.secret_file.write_bytes(b"short")
    br.reload()
    wait_until(lambda: "keeping the JWT keys in use" in br.all_output(), what="the bad-reload log line")
    assert "secret is 5 bytes" in br.all_output()
    assert reloads(br) == 1
    br.client(c, password=pyjwt.encode(claims(c, iss=None), new_secret, algorithm="HS256"),
              client_id="carol-2")
    keys.pub_file.write_text("-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n")
    keys.secret_file.write_bytes(new_secret)
    br.reload()
    wait_until(lambda: br.all_output().count("keeping the JWT keys in use") == 2)
    br.client(c, password=pyjwt.encode(claims(c), new_ec, algorithm="ES256"), client_id="carol-3")

    # the clients that stayed can still chat
    d = carol.create_direct(b)
    bob.sub_conv(d)
    assert carol.send(d, "after reloads").rc in ACCEPTED
    assert bob.expect_message(d)["body"] == "after reloads"
    assert alice.ok("conv.list")["conversations"] == []


# --------------------------------------------------------------------------- start-up checks

@pytest.mark.parametrize("opts,needle", [
    ({"auth": "jwt"}, "jwt_hs256_secret_file or plugin_opt_jwt_public_key_file"),
    ({"auth": "token"}, "plugin_opt_auth"),
    ({"auth": "jwt", "jwt_hs256_secret_file": "/nonexistent/secret"}, "/nonexistent/secret"),
    ({"auth": "jwt", "jwt_public_key_file": "SECRET"}, "jwt_public_key_file"),
    ({"auth": "jwt", "jwt_hs256_secret_file": "SHORT"}, "jwt_hs256_secret_file"),
    ({"auth": "jwt", "jwt_hs256_secret_file": "SECRET", "jwt_leeway_s": "-5"}, "jwt_leeway_s"),
    ({"auth": "jwt", "jwt_hs256_secret_file": "SECRET", "jwt_lee_way": "5"}, "jwt_lee_way"),
    ({"jwt_issuer": "x"}, "plugin_opt_auth"),
    ({"auth": "none", "jwt_defer_users": "bridge"}, "plugin_opt_auth"),
])
def test_bad_auth_options_stop_the_broker(make_broker, tmp_path, opts, needle):
    secret = tmp_path / "secret"
    secret.write_bytes(b"s" * 40)
    short = tmp_path / "short"
    short.write_bytes(b"s" * 31)
    opts = {k: {"SECRET": str(secret), "SHORT": str(short)}.get(v, v) for k, v in opts.items()}
    br = make_broker(opts=opts, start=False)
    rc, log = br.start_expect_exit()
    assert rc != 0
    assert [ln for ln in log.splitlines() if "mosquitto-chat" in ln and needle in ln], log[-3000:]


# --------------------------------------------------------------------------- beside mosquitto's auth

def test_defer_users_to_password_file(make_broker, tmp_path, users):
    """jwt_defer_users: e.g. the push bridge keeps a password_file login."""
    keys = Keys(tmp_path)
    a, bridge = users("alice", "bridge")
    pw = tmp_path / "passwd"
    mosquitto_passwd(pw, {bridge: "bridge-pw", a: "alice-pw"})
    br = make_broker(allow_anonymous=False, extra_conf=[f"password_file {pw}"],
                     opts={"auth": "jwt", "jwt_hs256_secret_file": str(keys.secret_file),
                           "jwt_defer_users": bridge})
    br.client(bridge, password="bridge-pw", protocol=4)
    with pytest.raises(ConnectRefused):
        br.client(bridge, password="wrong")
    with pytest.raises(ConnectRefused):  # the password file is not asked for alice
        br.client(a, password="alice-pw")
    br.client(a, password=token(keys, a, iss=None, aud=None))


def test_jwt_beside_dynamic_security(make_broker, tmp_path, users):
    """auth jwt with dynamic-security loaded after the plugin: chat users log in by JWT, the
    deferred admin by its dynsec password; a dynsec password is no JWT for anyone else."""
    keys = Keys(tmp_path)
    a, b = users("alice", "bob")
    cfg = tmp_path / "dynsec.json"
    dynsec_config(cfg, admin=("admin", "admin-pw"), clients={a: "dyn-a"}, role="app-user",
                  acls=[{"acltype": "subscribePattern", "topic": "app/#", "allow": True}])
    assert os.path.exists(DYNSEC_PLUGIN)
    br = make_broker(allow_anonymous=False,
                     opts={"auth": "jwt", "jwt_public_key_file": str(keys.pub_file), "jwt_defer_users": "admin"},
                     extra_conf=[f"plugin {DYNSEC_PLUGIN}", f"plugin_opt_config_file {cfg}"])
    admin = br.client("admin", password="admin-pw", auto_sub=False)
    assert admin.subscribe("$CONTROL/dynamic-security/v1/response") == [1]
    admin.publish("$CONTROL/dynamic-security/v1", {"commands": [{"command": "listClients"}]})
    resp = json.loads(admin.expect_msg("$CONTROL/dynamic-security/v1/response").payload)
    assert a in resp["responses"][0]["data"]["clients"]
    with pytest.raises(ConnectRefused):
        br.client("admin", password="wrong")
    with pytest.raises(ConnectRefused):
        br.client(a, password="dyn-a")
    alice = br.client(a, password=token(keys, a, "RS256", iss=None, aud=None))
    bob = br.client(b, password=token(keys, b, "ES256", iss=None, aud=None), protocol=4)
    g = alice.create_group("G", [b])
    bob.sub_conv(g)
    assert alice.send(g, "jwt + dynsec").rc in ACCEPTED
    assert bob.expect_message(g)["body"] == "jwt + dynsec"


@pytest.mark.parametrize("auth", [None, "none"])
def test_auth_none_leaves_anonymous_logins_alone(make_broker, users, auth):
    """auth none registers no BASIC_AUTH callback: with allow_anonymous true, any username with
    any (or no) password and anonymous clients get in, as with no plugin at all. (A registered
    callback that deferred would make mosquitto refuse every client with a username.)"""
    br = make_broker(opts={"auth": auth})
    a, b = users("alice", "bob")
    alice = br.client(a, password="whatever")
    bob = br.client(b, protocol=4)
    br.client(None)
    assert raw_connect_v311(br.port, None, None) == 0
    d = alice.create_direct(b)
    bob.sub_conv(d)
    assert alice.send(d, "no auth").rc in ACCEPTED
    assert bob.expect_message(d)["body"] == "no auth"
    assert "auth jwt" not in br.all_output() and "login refused" not in br.all_output()
