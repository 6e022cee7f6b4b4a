"""Real local servers standing in for the push providers, on loopback.

Nothing here mocks the bridge: each class is a real server speaking the
provider's protocol, checking what it receives the way the provider would,
recording every request, and answering from a script.

- ``Pki``            a test CA, a server certificate for 127.0.0.1/localhost, an FCM
                     service-account JSON (RSA key) and an APNs .p8 key (P-256), all
                     generated at test time with ``cryptography``;
- ``ApnsServer``     HTTP/2 over TLS (ALPN h2, ``h2`` package on asyncio): checks the
                     ES256 provider token (signature, kid, iss, iat), the headers
                     (:path /3/device/<token>, apns-topic, apns-push-type, …) and the
                     JSON payload;
- ``FcmServer``      HTTPS (HTTP/1.1): the OAuth token endpoint checking the RS256 JWT
                     grant, and the FCM v1 send endpoint checking the bearer token and
                     the message shape;
- ``WebhookServer``  plain HTTP: checks the HMAC-SHA256 signature and the timestamp.

Scripting: ``server.script(token, [500, 200])`` makes the next requests for that
device token answer 500 then 200 (then the default, 200). An entry is a status or a
``Reply(status, body=…, headers=…, delay=…)``. ``server.delay`` slows every answer.

Records: ``server.requests`` (a list of ``Request``), ``server.errors`` (what failed a
check: a test asserts it stays empty), ``server.wait_for(predicate, timeout)``.

Importable from any conftest: ``from providers import Pki, ApnsServer, …`` with
tests/bridge on sys.path.
"""
from __future__ import annotations

import asyncio
import base64
import datetime
import hashlib
import hmac
import http.server
import ipaddress
import json
import ssl
import threading
import time
import urllib.parse
import uuid
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import h2.config
import h2.connection
import h2.events
import h2.exceptions
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import NameOID

FCM_SCOPE = "https://www.googleapis.com/auth/firebase.messaging"
JWT_BEARER = "urn:ietf:params:oauth:grant-type:jwt-bearer"


# ---------------------------------------------------------------------------
# Keys and certificates
# ---------------------------------------------------------------------------

class Pki:
    """Test CA, server certificate and provider keys, written under ``directory``."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        now = datetime.datetime.now(datetime.timezone.utc)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "mosquitto-chat test CA")])
        ca_cert = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
                   .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
                   .not_valid_before(now - datetime.timedelta(minutes=5))
                   .not_valid_after(now + datetime.timedelta(days=2))
                   .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
                   .add_extension(x509.KeyUsage(digital_signature=True, key_cert_sign=True, crl_sign=True,
                                                content_commitment=False, key_encipherment=False,
                                                data_encipherment=False, key_agreement=False,
                                                encipher_only=False, decipher_only=False), critical=True)
                   .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
                   .sign(ca_key, hashes.SHA256()))
        srv_key = ec.generate_private_key(ec.SECP256R1())
        srv_cert = (x509.CertificateBuilder()
                    .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
                    .issuer_name(ca_name).public_key(srv_key.public_key())
                    .serial_number(x509.random_serial_number())
                    .not_valid_before(now - datetime.timedelta(minutes=5))
                    .not_valid_after(now + datetime.timedelta(days=2))
                    .add_extension(x509.SubjectAlternativeName([
                        x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
                        critical=False)
                    .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
                    .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
                                   critical=False)
                    .sign(ca_key, hashes.SHA256()))
        self.ca_file = self.dir / "ca.pem"
        self.cert_file = self.dir / "server.pem"
        self.key_file = self.dir / "server-key.pem"
        self.ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
        self.cert_file.write_bytes(srv_cert.public_bytes(serialization.Encoding.PEM))
        self.key_file.write_bytes(srv_key.private_bytes(serialization.Encoding.PEM,
                                                        serialization.PrivateFormat.PKCS8,
                                                        serialization.NoEncryption()))
        # FCM service account (RSA 2048) and APNs key (P-256).
        self.fcm_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.apns_key = ec.generate_private_key(ec.SECP256R1())
        self.apns_key_file = self.dir / "AuthKey_TESTKEY123.p8"
        self.apns_key_file.write_bytes(self.apns_key.private_bytes(serialization.Encoding.PEM,
                                                                   serialization.PrivateFormat.PKCS8,
                                                                   serialization.NoEncryption()))

    def server_context(self, alpn: list[str] | None = None) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(self.cert_file, self.key_file)
        if alpn:
            ctx.set_alpn_protocols(alpn)
        return ctx

    def write_service_account(self, path: Path, *, client_email: str, project_id: str, token_uri: str) -> Path:
        pem = self.fcm_key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()).decode()
        doc = {
            "type": "service_account",
            "project_id": project_id,
            "private_key_id": "0123456789abcdef",
            "private_key": pem,
            "client_email": client_email,
            "client_id": "1234567890",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": token_uri,
        }
        path = Path(path)
        path.write_text(json.dumps(doc, indent=2))
        return path


# ---------------------------------------------------------------------------
# JWT helpers (the checks a provider makes)
# ---------------------------------------------------------------------------

def b64url_decode(s: str) -> bytes:
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def split_jwt(token: str) -> tuple[dict, dict, bytes, bytes]:
    """(header, claims, signing input, signature); raises ValueError when malformed."""
    parts = token.split(".")
    if len(parts) != 3:
        raise ValueError("JWT is not three dot-separated parts")
    if any(c in p for p in parts for c in "=+/"):
        raise ValueError("JWT is not base64url without padding")
    header = json.loads(b64url_decode(parts[0]))
    claims = json.loads(b64url_decode(parts[1]))
    return header, claims, f"{parts[0]}.{parts[1]}".encode(), b64url_decode(parts[2])


def verify_es256(token: str, public_key: ec.EllipticCurvePublicKey) -> tuple[dict, dict]:
    header, claims, signing_input, sig = split_jwt(token)
    if header.get("alg") != "ES256":
        raise ValueError(f"alg is {header.get('alg')!r}, not ES256")
    if len(sig) != 64:
        raise ValueError(f"ES256 signature is {len(sig)} bytes, not the 64-byte raw r||s")
    der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
    public_key.verify(der, signing_input, ec.ECDSA(hashes.SHA256()))
    return header, claims


def verify_rs256(token: str, public_key: rsa.RSAPublicKey) -> tuple[dict, dict]:
    header, claims, signing_input, sig = split_jwt(token)
    if header.get("alg") != "RS256":
        raise ValueError(f"alg is {header.get('alg')!r}, not RS256")
    public_key.verify(sig, signing_input, padding.PKCS1v15(), hashes.SHA256())
    return header, claims


# ---------------------------------------------------------------------------
# Scripts and records
# ---------------------------------------------------------------------------

@dataclass
class Reply:
    status: int = 200
    body: Any = None            # dict/list (sent as JSON), bytes, str, or None (provider default)
    headers: dict = field(default_factory=dict)
    delay: float | None = None  # seconds before answering (None: the server's delay)


@dataclass
class Request:
    token: str | None
    path: str
    headers: dict
    body: bytes
    json: Any
    received: float             # time.monotonic()
    status: int = 0             # the answer's status, once decided (before any delay)
    answered: float | None = None   # time.monotonic() when the answer was written
    auth: str | None = None     # the bearer / provider token presented
    connection: int = 0         # which connection carried it (per server)


class Recorder:
    """Common bookkeeping: scripts per token, records, waiting."""

    def __init__(self):
        self.cond = threading.Condition()
        self.requests: list[Request] = []
        self.errors: list[str] = []
        self.scripts: dict[str, deque] = {}
        self.delay = 0.0
        self.connections = 0

    def script(self, token: str, replies: list) -> None:
        with self.cond:
            self.scripts[token] = deque(r if isinstance(r, Reply) else Reply(r) for r in replies)

    def _next_reply(self, token: str | None) -> Reply:
        with self.cond:
            q = self.scripts.get(token or "")
            if q:
                return q.popleft()
        return Reply(200)

    def _error(self, text: str) -> None:
        with self.cond:
            self.errors.append(text)
            self.cond.notify_all()

    def _record(self, req: Request) -> None:
        with self.cond:
            self.requests.append(req)
            self.cond.notify_all()

    def _decided(self, req: Request, status: int) -> None:
        """The status is known (the answer may still wait for a delay)."""
        with self.cond:
            req.status = status
            self.cond.notify_all()

    def _answered(self, req: Request, status: int) -> None:
        with self.cond:
            req.status = status
            req.answered = time.monotonic()
            self.cond.notify_all()

    def wait_for(self, predicate: Callable[[], bool], timeout: float = 10.0) -> bool:
        end = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.1))
            return True

    def for_token(self, token: str) -> list[Request]:
        with self.cond:
            return [r for r in self.requests if r.token == token]

    def accepted(self, token: str) -> list[Request]:
        """Requests for token answered 2xx (answer written)."""
        with self.cond:
            return [r for r in self.requests if r.token == token and r.answered and 200 <= r.status < 300]

    def reset(self) -> None:
        with self.cond:
            self.requests.clear()
            self.errors.clear()
            self.scripts.clear()
            self.delay = 0.0


def _json_or_none(body: bytes):
    try:
        return json.loads(body)
    except ValueError:
        return None


# ---------------------------------------------------------------------------
# APNs: HTTP/2 over TLS
# ---------------------------------------------------------------------------

class _H2Protocol(asyncio.Protocol):
    def __init__(self, server: "ApnsServer"):
        self.server = server
        self.conn = h2.connection.H2Connection(
            config=h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        self.streams: dict[int, dict] = {}
        self.transport = None
        self.closed = False
        self.number = 0

    def connection_made(self, transport):
        self.transport = transport
        with self.server.cond:
            self.server.connections += 1
            self.number = self.server.connections
        ssl_obj = transport.get_extra_info("ssl_object")
        alpn = ssl_obj.selected_alpn_protocol() if ssl_obj else None
        if alpn != "h2":
            self.server._error(f"connection without ALPN h2 (got {alpn!r})")
        self.conn.initiate_connection()
        transport.write(self.conn.data_to_send())

    def connection_lost(self, exc):
        self.closed = True

    def data_received(self, data: bytes):
        try:
            events = self.conn.receive_data(data)
        except h2.exceptions.ProtocolError as e:
            self.server._error(f"HTTP/2 protocol error: {e}")
            self.transport.write(self.conn.data_to_send())
            self.transport.close()
            return
        for ev in events:
            if isinstance(ev, h2.events.RequestReceived):
                self.streams[ev.stream_id] = {"headers": dict(ev.headers), "data": bytearray()}
            elif isinstance(ev, h2.events.DataReceived):
                st = self.streams.get(ev.stream_id)
                if st is not None:
                    st["data"] += ev.data
                self.conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
            elif isinstance(ev, h2.events.StreamEnded):
                st = self.streams.pop(ev.stream_id, None)
                if st is not None:
                    asyncio.ensure_future(self._answer(ev.stream_id, st))
            elif isinstance(ev, h2.events.StreamReset):
                self.streams.pop(ev.stream_id, None)
            elif isinstance(ev, h2.events.ConnectionTerminated):
                self.transport.close()
        self.transport.write(self.conn.data_to_send())

    async def _answer(self, stream_id: int, st: dict):
        req, reply = self.server._handle(st["headers"], bytes(st["data"]), self.number)
        self.server._decided(req, reply.status)
        delay = reply.delay if reply.delay is not None else self.server.delay
        if delay:
            await asyncio.sleep(delay)
        if self.closed:
            return
        body = reply.body
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        elif isinstance(body, str):
            body = body.encode()
        headers = [(":status", str(reply.status)), ("apns-id", str(uuid.uuid4()).upper())]
        headers += [(k.lower(), str(v)) for k, v in reply.headers.items()]
        if body:
            headers += [("content-type", "application/json"), ("content-length", str(len(body)))]
        try:
            self.conn.send_headers(stream_id, headers, end_stream=not body)
            if body:
                self.conn.send_data(stream_id, body, end_stream=True)
            self.transport.write(self.conn.data_to_send())
        except (h2.exceptions.StreamClosedError, h2.exceptions.ProtocolError):
            return
        self.server._answered(req, reply.status)


class _AsyncServerThread:
    """An asyncio loop in a thread, for servers written as asyncio protocols."""

    def __init__(self):
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def call(self, coro, timeout=10):
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def stop(self):
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(5)
        self.loop.close()


class ApnsServer(Recorder):
    """APNs stand-in. ``url`` is what the bridge's apns_host is set to."""

    def __init__(self, pki: Pki, *, key_id: str = "TESTKEY123", team_id: str = "TEAM123456",
                 topic: str = "org.example.chat", push_type: str = "alert"):
        super().__init__()
        self.pki = pki
        self.key_id, self.team_id, self.topic, self.push_type = key_id, team_id, topic, push_type
        self.public_key = pki.apns_key.public_key()
        self.jwts: list[str] = []       # distinct provider tokens seen, in order
        self._async = _AsyncServerThread()
        ctx = pki.server_context(alpn=["h2"])

        async def start():
            return await self._async.loop.create_server(lambda: _H2Protocol(self), "127.0.0.1", 0, ssl=ctx)
        self._server = self._async.call(start())
        self.port = self._server.sockets[0].getsockname()[1]
        self.url = f"https://127.0.0.1:{self.port}"

    def close(self):
        async def stop():
            self._server.close()
        try:
            self._async.call(stop())
        finally:
            self._async.stop()

    def _check(self, headers: dict, body: bytes) -> tuple[str | None, str | None, Any, list[str]]:
        """Returns (token, provider token, payload, problems)."""
        problems = []
        path = headers.get(":path", "")
        token = path[len("/3/device/"):] if path.startswith("/3/device/") else None
        if headers.get(":method") != "POST":
            problems.append(f":method {headers.get(':method')}")
        if not token:
            problems.append(f":path {path!r} is not /3/device/<token>")
        if headers.get(":scheme") != "https":
            problems.append(f":scheme {headers.get(':scheme')}")
        auth = headers.get("authorization", "")
        jwt = auth[len("bearer "):] if auth.startswith("bearer ") else None
        if jwt is None:
            problems.append(f"authorization {auth!r} is not 'bearer <jwt>'")
        else:
            try:
                h, c = verify_es256(jwt, self.public_key)
                if h.get("kid") != self.key_id:
                    problems.append(f"JWT kid {h.get('kid')!r}")
                if c.get("iss") != self.team_id:
                    problems.append(f"JWT iss {c.get('iss')!r}")
                if not isinstance(c.get("iat"), int) or abs(c["iat"] - time.time()) > 3600:
                    problems.append(f"JWT iat {c.get('iat')!r} is not within the hour")
            except Exception as e:     # noqa: BLE001 — any failure is a refusal
                problems.append(f"JWT does not verify: {e!r}")
        if headers.get("apns-topic") != self.topic:
            problems.append(f"apns-topic {headers.get('apns-topic')!r}")
        if headers.get("apns-push-type") != self.push_type:
            problems.append(f"apns-push-type {headers.get('apns-push-type')!r}")
        want_prio = "5" if self.push_type == "background" else "10"
        if headers.get("apns-priority") != want_prio:
            problems.append(f"apns-priority {headers.get('apns-priority')!r}")
        payload = _json_or_none(body)
        if not isinstance(payload, dict):
            problems.append("body is not a JSON object")
        else:
            aps = payload.get("aps")
            if not isinstance(aps, dict):
                problems.append("no aps")
            elif self.push_type == "alert":
                alert = aps.get("alert")
                if not (isinstance(alert, dict) and isinstance(alert.get("title"), str)
                        and isinstance(alert.get("body"), str)):
                    problems.append(f"aps.alert {alert!r}")
                if "badge" in aps and not isinstance(aps["badge"], int):
                    problems.append(f"aps.badge {aps['badge']!r}")
                if aps.get("thread-id") != payload.get("conv"):
                    problems.append("aps.thread-id is not conv")
                if aps.get("sound") != "default":
                    problems.append(f"aps.sound {aps.get('sound')!r}")
            elif self.push_type == "background" and aps != {"content-available": 1}:
                problems.append(f"background push with aps {aps!r}: only content-available is allowed")
            if not isinstance(payload.get("conv"), str) or not isinstance(payload.get("seq"), int):
                problems.append("conv/seq missing")
            if headers.get("apns-collapse-id") != payload.get("conv"):
                problems.append(f"apns-collapse-id {headers.get('apns-collapse-id')!r}")
        if len(body) > 4096:
            problems.append(f"payload of {len(body)} bytes is over APNs' 4096")
        return token, jwt, payload, problems

    def _handle(self, headers: dict, body: bytes, conn_no: int) -> tuple[Request, Reply]:
        token, jwt, payload, problems = self._check(headers, body)
        req = Request(token=token, path=headers.get(":path", ""), headers=headers, body=body, json=payload,
                      received=time.monotonic(), auth=jwt, connection=conn_no)
        with self.cond:
            if jwt and jwt not in self.jwts:
                self.jwts.append(jwt)
        self._record(req)
        if problems:
            self._error(f"APNs request for {token}: " + "; ".join(problems))
            reason = "InvalidProviderToken" if any("JWT" in p for p in problems) else "BadRequest"
            return req, Reply(403 if reason == "InvalidProviderToken" else 400, {"reason": reason}, delay=0)
        reply = self._next_reply(token)
        if reply.status != 200 and reply.body is None:
            default = {410: "Unregistered", 429: "TooManyRequests", 500: "InternalServerError",
                       503: "ServiceUnavailable", 400: "BadDeviceToken", 403: "ExpiredProviderToken"}
            reply = Reply(reply.status, {"reason": default.get(reply.status, "BadRequest")}, reply.headers,
                          reply.delay)
            if reply.status == 410:
                reply.body["timestamp"] = int(time.time() * 1000)
        return req, reply


# ---------------------------------------------------------------------------
# HTTP/1.1 servers (FCM + OAuth over TLS, webhook in clear)
# ---------------------------------------------------------------------------

class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"      # keep-alive: the bridge reuses connections

    def log_message(self, fmt, *args):  # quiet
        pass

    def setup(self):
        super().setup()
        owner = self.server.owner
        with owner.cond:
            owner.connections += 1
            self.number = owner.connections

    def do_POST(self):
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        req, reply = self.server.owner._handle(self, body)
        if req is not None:
            self.server.owner._decided(req, reply.status)
        delay = reply.delay if reply.delay is not None else self.server.owner.delay
        if delay:
            time.sleep(delay)
        data = reply.body
        if isinstance(data, (dict, list)):
            data = json.dumps(data).encode()
        elif isinstance(data, str):
            data = data.encode()
        elif data is None:
            data = b""
        try:
            self.send_response(reply.status)
            for k, v in reply.headers.items():
                self.send_header(k, str(v))
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            self.wfile.flush()
        except OSError:
            return
        if req is not None:
            self.server.owner._answered(req, reply.status)

    def do_GET(self):
        self.send_error(405)


class _ThreadingServer(http.server.ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False


class _HttpServerBase(Recorder):
    def __init__(self, ssl_context: ssl.SSLContext | None):
        super().__init__()
        self.httpd = _ThreadingServer(("127.0.0.1", 0), _Handler)
        self.httpd.owner = self
        if ssl_context is not None:
            self.httpd.socket = ssl_context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                                       daemon=True)
        self.thread.start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def fcm_error(status: int, code: str, message: str = "", error_code: str | None = None) -> Reply:
    """An FCM v1 error answer, e.g. fcm_error(404, "NOT_FOUND", error_code="UNREGISTERED")."""
    err = {"code": status, "message": message or code, "status": code}
    if error_code:
        err["details"] = [{"@type": "type.googleapis.com/google.firebase.fcm.v1.FcmError", "errorCode": error_code}]
    return Reply(status, {"error": err})


class FcmServer(_HttpServerBase):
    """OAuth 2 token endpoint (``token_url``) and FCM v1 send endpoint (``send_url``), over TLS."""

    def __init__(self, pki: Pki, *, client_email: str = "bridge@test-project.iam.gserviceaccount.com",
                 project_id: str = "test-project", expires_in: int = 3599):
        super().__init__(pki.server_context())
        self.pki = pki
        self.client_email, self.project_id, self.expires_in = client_email, project_id, expires_in
        self.public_key = pki.fcm_key.public_key()
        self.token_url = f"https://127.0.0.1:{self.port}/token"
        self.send_url = f"https://127.0.0.1:{self.port}"
        self.grants: list[dict] = []        # JWT claims of every accepted grant
        self.issued: list[str] = []         # access tokens handed out
        self.revoked: set[str] = set()

    def write_service_account(self, path: Path) -> Path:
        return self.pki.write_service_account(path, client_email=self.client_email, project_id=self.project_id,
                                              token_uri=self.token_url)

    def revoke_all(self):
        with self.cond:
            self.revoked.update(self.issued)

    def _handle(self, h: _Handler, body: bytes):
        if h.path == "/token":
            return None, self._grant(h, body)
        return self._send(h, body)

    def _grant(self, h: _Handler, body: bytes) -> Reply:
        problems = []
        if not h.headers.get("Content-Type", "").startswith("application/x-www-form-urlencoded"):
            problems.append(f"Content-Type {h.headers.get('Content-Type')!r}")
        form = urllib.parse.parse_qs(body.decode(errors="replace"))
        if form.get("grant_type") != [JWT_BEARER]:
            problems.append(f"grant_type {form.get('grant_type')!r}")
        claims = {}
        try:
            header, claims = verify_rs256((form.get("assertion") or [""])[0], self.public_key)
            if header.get("typ") not in (None, "JWT"):
                problems.append(f"typ {header.get('typ')!r}")
            now = time.time()
            if claims.get("iss") != self.client_email:
                problems.append(f"iss {claims.get('iss')!r}")
            if claims.get("scope") != FCM_SCOPE:
                problems.append(f"scope {claims.get('scope')!r}")
            if claims.get("aud") != self.token_url:
                problems.append(f"aud {claims.get('aud')!r}")
            iat, exp = claims.get("iat"), claims.get("exp")
            if not isinstance(iat, int) or abs(iat - now) > 60:
                problems.append(f"iat {iat!r}")
            if not isinstance(exp, int) or not isinstance(iat, int) or exp - iat != 3600:
                problems.append(f"exp {exp!r} is not iat + 3600")
        except Exception as e:     # noqa: BLE001
            problems.append(f"assertion does not verify: {e!r}")
        if problems:
            self._error("OAuth grant: " + "; ".join(problems))
            return Reply(400, {"error": "invalid_grant", "error_description": "; ".join(problems)}, delay=0)
        with self.cond:
            token = f"ya29.test-{len(self.issued) + 1}-{uuid.uuid4().hex}"
            self.issued.append(token)
            self.grants.append(claims)
            self.cond.notify_all()
        return Reply(200, {"access_token": token, "expires_in": self.expires_in, "token_type": "Bearer"}, delay=0)

    def _send(self, h: _Handler, body: bytes):
        problems = []
        payload = _json_or_none(body)
        msg = payload.get("message") if isinstance(payload, dict) else None
        token = msg.get("token") if isinstance(msg, dict) else None
        auth = h.headers.get("Authorization", "")
        bearer = auth[len("Bearer "):] if auth.startswith("Bearer ") else None
        req = Request(token=token, path=h.path, headers=dict(h.headers.items()), body=body, json=payload,
                      received=time.monotonic(), auth=bearer, connection=h.number)
        self._record(req)
        if h.path != f"/v1/projects/{self.project_id}/messages:send":
            self._error(f"FCM path {h.path!r}")
            return req, fcm_error(404, "NOT_FOUND", "Requested entity was not found.")
        with self.cond:
            known, revoked = bearer in self.issued, bearer in self.revoked
        if not known or revoked:
            if not revoked:
                self._error(f"FCM bearer {auth[:40]!r} was never issued")
            return req, Reply(401, {"error": {"code": 401, "status": "UNAUTHENTICATED",
                                              "message": "Request had invalid authentication credentials."}},
                              delay=0)
        if not h.headers.get("Content-Type", "").startswith("application/json"):
            problems.append(f"Content-Type {h.headers.get('Content-Type')!r}")
        if not isinstance(msg, dict):
            problems.append("no message object")
        else:
            if not isinstance(token, str) or not token:
                problems.append("message.token")
            n = msg.get("notification")
            if not (isinstance(n, dict) and isinstance(n.get("title"), str) and isinstance(n.get("body"), str)):
                problems.append(f"message.notification {n!r}")
            data = msg.get("data")
            if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
                problems.append(f"message.data must map to strings: {data!r}")
            elif not {"conv", "seq", "count"} <= data.keys():
                problems.append(f"message.data lacks conv/seq/count: {data!r}")
            android = msg.get("android")
            if not isinstance(android, dict) or android.get("collapse_key") != (data or {}).get("conv"):
                problems.append(f"message.android {android!r}")
            apns = msg.get("apns")
            if apns is not None and not isinstance(apns.get("payload", {}).get("aps", {}).get("badge"), int):
                problems.append(f"message.apns {apns!r}")
        if problems:
            self._error(f"FCM message for {token}: " + "; ".join(problems))
            return req, fcm_error(400, "INVALID_ARGUMENT", "; ".join(problems))
        reply = self._next_reply(token)
        if reply.status != 200 and reply.body is None:
            defaults = {
                404: fcm_error(404, "NOT_FOUND", "Requested entity was not found.", "UNREGISTERED"),
                400: fcm_error(400, "INVALID_ARGUMENT", "The registration token is not a valid FCM registration token",
                               "INVALID_ARGUMENT"),
                429: fcm_error(429, "RESOURCE_EXHAUSTED", "Quota exceeded.", "QUOTA_EXCEEDED"),
                500: fcm_error(500, "INTERNAL", "Internal error.", "INTERNAL"),
                503: fcm_error(503, "UNAVAILABLE", "The service is unavailable.", "UNAVAILABLE"),
            }
            d = defaults.get(reply.status, fcm_error(reply.status, "UNKNOWN"))
            reply = Reply(reply.status, d.body, reply.headers, reply.delay)
        elif reply.status == 200 and reply.body is None:
            reply = Reply(200, {"name": f"projects/{self.project_id}/messages/{uuid.uuid4().int % 10**16}"},
                          reply.headers, reply.delay)
        return req, reply


class WebhookServer(_HttpServerBase):
    """The operator's endpoint: verifies X-Chat-Signature over X-Chat-Timestamp + "." + body."""

    def __init__(self, secret: str = "s3cret#with=odd chars", *, max_skew: int = 300):
        super().__init__(None)
        self.secret = secret
        self.max_skew = max_skew
        self.url = f"http://127.0.0.1:{self.port}/push"

    def _handle(self, h: _Handler, body: bytes):
        problems = []
        payload = _json_or_none(body)
        devices = payload.get("devices") if isinstance(payload, dict) else None
        token = devices[0].get("token") if isinstance(devices, list) and len(devices) == 1 \
            and isinstance(devices[0], dict) else None
        req = Request(token=token, path=h.path, headers=dict(h.headers.items()), body=body, json=payload,
                      received=time.monotonic(), connection=h.number)
        self._record(req)
        ts = h.headers.get("X-Chat-Timestamp", "")
        sig = h.headers.get("X-Chat-Signature", "")
        want = "sha256=" + hmac.new(self.secret.encode(), ts.encode() + b"." + body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(sig, want):
            problems.append(f"signature {sig!r} does not match")
        if not ts.isdigit() or abs(int(ts) - time.time()) > self.max_skew:
            problems.append(f"timestamp {ts!r} is stale or malformed")
        if not h.headers.get("Content-Type", "").startswith("application/json"):
            problems.append(f"Content-Type {h.headers.get('Content-Type')!r}")
        if token is None:
            problems.append(f"devices is not one device: {devices!r}")
        elif devices[0].get("platform") != "webhook":
            problems.append(f"device platform {devices[0].get('platform')!r}")
        note = payload.get("notification") if isinstance(payload, dict) else None
        if not (isinstance(note, dict) and isinstance(note.get("title"), str) and isinstance(note.get("body"), str)):
            problems.append(f"notification {note!r}")
        if problems:
            self._error(f"webhook for {token}: " + "; ".join(problems))
            return req, Reply(401, {"error": "; ".join(problems)}, delay=0)
        return req, self._next_reply(token)
