#!/usr/bin/env python3
"""Writes the seed corpus fuzz/corpus/<target>/ and the dictionaries
fuzz/dict/<target>.dict from the contract (PROTOCOL.md, schema/) and the unit
tests' cases. Re-run after changing it; the files are committed.

Session inputs (session.h): chunks [ctl][sel]payload separated by 0xFF.
ctl: bits 0-2 device (0 alice, 1 bob, 2 carol, 3 eve, 4 bridge, 5 ops, 6 no
username, 7 alice's 2nd device), bit 3 MQTT 5, bits 4-5 response topic
(1 own, 2 someone else's, 3 wildcard), bits 6-7 afterwards (1 +1 s tick,
2 disconnect, 3 +120 s tick). sel: bits 0-3 topic, bit 4 skip the write ACL,
bit 5 restart the core afterwards.
"""
import hashlib
import json
import os
import shutil

HERE = os.path.dirname(os.path.abspath(__file__))
G, D, H = "g_000000000000", "d_111111111111", "g_222222222222"
ALICE, BOB, CAROL, EVE, BRIDGE, OPS, ANON, ALICE2 = range(8)
V5 = 8
RT_OWN, RT_OTHER, RT_WILD = 16, 32, 48
TICK, DISC, LONGTICK = 64, 128, 192
NOACL = 16
RESTART = 32


def chunk(ctl, sel, payload):
    if isinstance(payload, (dict, list)):
        payload = json.dumps(payload, separators=(",", ":"))
    if isinstance(payload, str):
        payload = payload.encode()
    assert 0xFF not in payload and ctl != 0xFF and sel != 0xFF
    return bytes([ctl, sel]) + payload


def session(*chunks):
    return b"\xff".join(chunks)


def write(target, inputs):
    d = os.path.join(HERE, "corpus", target)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    for data in inputs:
        name = hashlib.sha1(data).hexdigest()[:16]
        with open(os.path.join(d, name), "wb") as f:
            f.write(data)


def write_dict(target, tokens):
    os.makedirs(os.path.join(HERE, "dict"), exist_ok=True)
    with open(os.path.join(HERE, "dict", target + ".dict"), "w") as f:
        for t in tokens:
            if isinstance(t, str):
                t = t.encode("latin-1")   # "\xff" means the byte 0xFF
            esc = "".join(chr(b) if 0x20 <= b < 0x7F and b not in (0x22, 0x5C) else "\\x%02x" % b for b in t)
            f.write('"%s"\n' % esc)


JSON_TOKENS = ["{", "}", "[", "]", ":", ",", '"', "null", "true", "false", "-0", "1e999", "0.5",
               "9007199254740993", "\\u0000", "\\ud800", "\\\\", "\\u00e9", "\xc3\xa9", "\xf0\x9f\x98\x80"]
IDS = [G, D, H, "alice", "bob", "carol", "eve", "nope"]
OPS_ = ["conv.create", "conv.list", "conv.get", "conv.update", "members.add", "members.remove", "history",
        "receipts.get", "receipts.counts", "devices.register", "devices.unregister", "devices.list",
        "conv.mute", "conv.preview"]
KEYS = ["op", "req_id", "type", "with", "name", "members", "conv", "users", "before", "after", "limit", "seq",
        "platform", "token", "locale", "muted", "preview", "cmid", "body", "reply_to", "delivered", "read",
        "state", "id", "result", "unregister"]
WORDS = ["direct", "group", "text", "system", "typing", "idle", "online", "offline", "delivered", "failed",
         "dead", "fcm", "apns", "webhook"]


def quoted(xs):
    return ['"%s"' % x for x in xs]


def requests():
    r = [
        {"op": "conv.create", "type": "direct", "with": "carol"},
        {"op": "conv.create", "type": "direct", "with": "bob", "req_id": 7},
        {"op": "conv.create", "type": "direct", "with": "alice"},
        {"op": "conv.create", "type": "group", "name": "new", "members": ["bob", "eve"]},
        {"op": "conv.create", "type": "group", "name": "x" * 129, "members": []},
        {"op": "conv.create", "type": "group", "name": "big", "members": ["u%d" % i for i in range(8)]},
        {"op": "conv.list"},
        {"op": "conv.list", "req_id": "r-1"},
        {"op": "conv.get", "conv": G},
        {"op": "conv.get", "conv": H},
        {"op": "conv.update", "conv": G, "name": "renamed"},
        {"op": "conv.update", "conv": D, "name": "nope"},
        {"op": "members.add", "conv": G, "users": ["eve", "dave"]},
        {"op": "members.remove", "conv": G, "users": ["bob"]},
        {"op": "members.remove", "conv": G, "users": ["alice"]},
        {"op": "history", "conv": D},
        {"op": "history", "conv": D, "before": 3, "limit": 1},
        {"op": "history", "conv": G, "after": 0, "limit": 200},
        {"op": "receipts.get", "conv": G, "seq": 2},
        {"op": "receipts.counts", "conv": D, "after": 1, "limit": 2},
        {"op": "devices.register", "platform": "apns", "token": "t" * 64, "locale": "de-DE"},
        {"op": "devices.unregister", "platform": "fcm", "token": "tok-bob"},
        {"op": "devices.list"},
        {"op": "conv.mute", "conv": D, "muted": True},
        {"op": "conv.preview", "conv": G, "preview": False},
        {"op": "nope"},
        {"op": 5, "req_id": 1.5},
    ]
    # alice is the admin of G and a member of D; bob a member of G, D and H
    bob_ops = {"conv.create": 1, "conv.list": 7, "history": 16, "devices.unregister": 21, "devices.list": 22}
    out = []
    for i, p in enumerate(r):
        dev = BOB if bob_ops.get(p["op"]) == i else ALICE
        ctl = dev | (V5 | RT_OWN if i % 4 == 0 else 0)
        out.append(session(chunk(ctl, 0, p)))
    for p in ({"op": "members.add", "conv": G, "users": ["u1", "u2", "u3", "u4"]},
              {"op": "members.add", "conv": G, "users": []},
              {"op": "conv.update", "conv": G, "name": "team"},
              {"op": "conv.create", "type": "group", "name": "", "members": ["bob"]},
              {"op": "history", "conv": G, "before": 2, "after": 1}):
        out.append(session(chunk(ALICE, 0, p)))
    out.append(b"\x00\x00" + b'{"op":"conv.list"} x')
    out.append(session(chunk(ALICE | V5 | RT_WILD, 0, {"op": "conv.list"})))
    out.append(session(chunk(ALICE | V5 | RT_OTHER, 0, {"op": "conv.list"})))
    # a sequence: create, add, remove, history, as two users with ticks
    out.append(session(
        chunk(ALICE, 0, {"op": "conv.create", "type": "group", "name": "s", "members": ["bob"]}),
        chunk(ALICE | TICK, 0, {"op": "members.add", "conv": "g_333333333333", "users": ["carol"]}),
        chunk(BOB, 0, {"op": "members.remove", "conv": "g_333333333333", "users": ["bob"]}),
        chunk(CAROL | V5 | RT_OWN, 0, {"op": "history", "conv": "g_333333333333"})))
    return out


def main():
    # pure targets
    write("fuzz_json", [s.encode("latin-1") for s in [
        '{}', '{"op":"conv.list","req_id":7}', '{"a":{"b":[1,2,{"c":null}]}}', '{"x":"\\u0000"}',
        '{"x":"\\\\u0000"}', '{"a":1,"a":2}', '{"body":"h\\u00e9 \xc3\xa9 \xf0\x9f\x98\x80"}', '[]', '"s"',
        '{"reply_to":1e999}', '{"reply_to":-0}', '{"limit":7.0}', '{"conv":"g_1"} ', '{} {}',
        '{"conv":"' + "a" * 65 + '"}', '\xed\xa0\x80', '{"cmid":"a:b"}']] + [b'{"x":"\xc0\x80"}', b''])
    write_dict("fuzz_json", JSON_TOKENS + quoted(KEYS))
    write("fuzz_ids", [s.encode("latin-1") for s in ["alice", "a" * 64, "a" * 65, "g_7Hq2", "c:1", "bad id", "a/b",
                                            "\xc3\xa9", "\xf4\x8f\xbf\xbf", "\xed\x9f\xbf"]]
          + [b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe0\x80\x80", b"\xc1\xbf", b"a\x00b", b"\xf0\x90\x80"])
    write("fuzz_topic", [s.encode() for s in [
        "chat/send/" + G, "chat/typing/g", "chat/receipt/d_1", "chat/req", "chat/req/x", "chat/c/g/m",
        "chat/c/+/m", "chat/u/alice/reply", "chat/u/alice/#", "chat/p/bob", "chat/p/+", "chat/push/jobs",
        "chat/push/ack", "chat/push/status", "chat/#", "+/send/x", "#", "chat", "chat/", "chatter/send/x",
        "chat/send/" + "a" * 65, "chat/send/a/b", "chat/send/", "chat//", "a.b-c_d@e/send/x"]])
    write_dict("fuzz_topic", ["chat/", "a.b-c_d@e/", "send/", "typing/", "receipt/", "req", "c/", "u/", "p/",
                              "push/", "jobs", "ack", "status", "+", "#", "/", "/m", "/reply"])

    # jwt: mode byte (even: raw token; odd: header \n claims, signed HS256; +2: signature broken)
    hs = '{"alg":"HS256","typ":"JWT"}'
    good = {"sub": "alice", "exp": 1700000100, "iss": "https://id.example", "aud": "chat"}
    jwt = [b"\x01" + (hs + "\n" + json.dumps(c, separators=(",", ":"))).encode() for c in [
        good, dict(good, exp=1699999000), dict(good, nbf=1700000500), dict(good, aud=["x", "chat"]),
        dict(good, aud=["x"]), dict(good, iss="other"), dict(good, sub="bob"), {"sub": "alice"},
        dict(good, exp="1700000100"), dict(good, exp=1e999), dict(good, nbf=-1, iat=0)]]
    jwt += [b"\x01" + (h + "\n" + json.dumps(good)).encode() for h in [
        '{"alg":"none"}', '{"alg":"RS256"}', '{"alg":"ES256","kid":"x"}', '{"alg":"HS256","crit":["b64"]}', '[]', '']]
    jwt += [b"\x03" + (hs + "\n" + json.dumps(good)).encode()]
    jwt += [b"\x00" + t for t in [b"a.b.c", b"..", b"eyJhbGciOiJub25lIn0.e30.", b"a.b", b"a.b.c.d", b"=.=.=",
                                   b"eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.AAAA"]]
    write("fuzz_jwt", jwt)
    write_dict("fuzz_jwt", quoted(["alg", "typ", "kid", "crit", "sub", "exp", "nbf", "iat", "iss", "aud", "jti",
                                   "HS256", "RS256", "ES256", "none", "JWT", "alice", "chat", "https://id.example"])
               + JSON_TOKENS + [".", "-", "_", "=", "eyJ", "\n"])

    # session targets
    write("fuzz_request", requests())
    sends = [
        {"cmid": "c1", "body": "hello"}, {"cmid": "c2", "type": "text", "body": "x", "reply_to": 2},
        {"cmid": "a1", "body": "hello team"}, {"cmid": "x", "body": ""}, {"cmid": 5, "body": "a"},
        {"cmid": "x" * 65, "body": "a"}, {"cmid": "x", "body": "a", "from": "eve"},
        {"cmid": "x", "body": "a", "type": "system"}, {"cmid": "x", "body": "a", "reply_to": 99},
        {"cmid": "x", "body": "y" * 301}, {"cmid": "x:y@z", "body": "\u00e9\U0001F600"},
        # past the push preview's 200 bytes, a character across the cut
        {"cmid": "long", "body": "y" * 199 + "\u00e9" * 20}, {"cmid": "long2", "body": "z" * 198 + "\U0001F600" * 10},
    ]
    out = []
    for i, p in enumerate(sends):
        out.append(session(chunk([ALICE, BOB, CAROL, EVE][i % 4] | (V5 if i % 2 else 0), i % 8, p)))
    out.append(session(chunk(ALICE, 0, sends[0]), chunk(ALICE | TICK, 0, sends[0]),
                       chunk(BOB | DISC, 1, {"cmid": "c1", "body": "again"}), chunk(EVE, NOACL, sends[0])))
    out.append(b"\x00\x00not json")
    # alice's bucket holds 2 more sends after the seeding: the rest are rate_limited (cmid echoed or not)
    out.append(session(*[chunk(ALICE, 1, {"cmid": "r%d" % i, "body": "x"}) for i in range(4)],
                       chunk(ALICE, 1, '{"body":"x", "cmid" :\t"echo-\u00e9"}'), chunk(ALICE | TICK, 1, '"cmid":"x"'),
                       chunk(ALICE, 1, {"cmid": "after-refill", "body": "x"})))
    for p in sends[-2:] + sends[:2]:   # alice to D and G, bob and carol offline: push jobs with previews
        out.append(session(chunk(ALICE, 1, p), chunk(ALICE | TICK, 0, p)))
    write("fuzz_send", out)
    write_dict("fuzz_send", JSON_TOKENS + quoted(["cmid", "type", "body", "reply_to", "text"]) + ["\xff"])

    out = [session(chunk(dev, c, p)) for dev, c, p in [
        (ALICE, 0, {"read": 2}), (BOB, 1, {"delivered": 3}), (BOB, 1, {"delivered": 2, "read": 4}),
        (ALICE, 0, {"read": 99}), (ALICE, 0, {}), (ALICE, 0, {"read": 0}), (ALICE, 0, {"read": "1"}),
        (EVE, 2 | NOACL, {"read": 1}), (ALICE, 4 | NOACL, {"read": 1}), (ALICE, 1, {"read": 1, "x": 1})]]
    out.append(session(chunk(ALICE, 1, {"delivered": 2}), chunk(ALICE2, 1, {"read": 3}),
                       chunk(BOB | TICK, 1, {"read": 4})))
    write("fuzz_receipt", out)
    write_dict("fuzz_receipt", JSON_TOKENS + quoted(["delivered", "read"]) + ["\xff"])

    out = [session(chunk(dev, c, p)) for dev, c, p in [
        (ALICE, 1, {"state": "typing"}), (BOB, 1, {"state": "idle"}), (ALICE, 0, {"state": "typing"}),
        (ALICE, 1, {"state": "away"}), (ALICE, 1, {}), (EVE, 1 | NOACL, {"state": "typing"})]]
    out.append(session(chunk(BOB, 1, {"state": "typing"}), chunk(BOB | TICK, 1, {"state": "typing"}),
                       chunk(BOB | LONGTICK, 1, {"state": "typing"}), chunk(BOB | DISC, 1, {"state": "idle"})))
    write("fuzz_typing", out)
    write_dict("fuzz_typing", JSON_TOKENS + quoted(["state", "typing", "idle"]) + ["\xff"])

    out = [session(chunk(dev, c, p)) for dev, c, p in [
        (ALICE, 0, {"state": "online"}), (ALICE, 0, {"state": "offline"}), (ALICE, 2, {"state": "online"}),
        (ALICE, 2 | NOACL, {"state": "online"}), (ALICE, 0, {"state": "online", "ts": 1}), (ANON, 0, {"state": "online"}),
        (ALICE, 4 | NOACL, {"state": "online"})]]
    out.append(session(chunk(ALICE, 0, {"state": "online"}), chunk(ALICE2, 0, {"state": "online"}),
                       chunk(ALICE | DISC, 0, {"state": "online"}), chunk(ALICE2 | TICK, 0, {"state": "offline"}),
                       chunk(ALICE2 | DISC, 0, {"state": "online"})))
    out.append(session(chunk(ALICE, RESTART, {"state": "online"}), chunk(ALICE | DISC, RESTART, {"state": "online"})))
    write("fuzz_presence", out)
    write_dict("fuzz_presence", JSON_TOKENS + quoted(["state", "online", "offline", "ts"]) + ["\xff"])

    out = [session(chunk(dev, 0, p)) for dev, p in [
        (BRIDGE, {"id": 1, "result": "delivered"}), (BRIDGE, {"id": 2, "result": "failed"}),
        (BRIDGE, {"id": 3, "result": "dead", "unregister": [{"platform": "fcm", "token": "tok-bob"}]}),
        (BRIDGE, {"id": 99, "result": "delivered"}), (BRIDGE, {"id": 0, "result": "delivered"}),
        (BRIDGE, {"id": 1}), (BRIDGE, {"id": 1, "result": "delivered", "unregister": {}}),
        (BRIDGE, {"id": 1, "result": "delivered", "unregister": [1, {"platform": 2}]}),
        (ALICE, {"id": 1, "result": "delivered"})]]
    out.append(session(chunk(BRIDGE | LONGTICK, 0, {"id": 4, "result": "delivered"}),
                       chunk(BRIDGE, 0, {"id": 4, "result": "delivered"})))
    write("fuzz_push_ack", out)
    write_dict("fuzz_push_ack", JSON_TOKENS + quoted(["id", "result", "unregister", "platform", "token",
                                                      "delivered", "failed", "dead", "fcm", "apns", "webhook"])
               + ["\xff"])

    # acl: ctl bits 3-4 pick read/write/subscribe/unsubscribe; payload = topic \n write payload
    acl = []
    topics = ["chat/c/%s/m" % G, "chat/c/%s/+" % H, "chat/c/+/m", "chat/u/alice/#", "chat/u/bob/reply",
              "chat/p/bob", "chat/p/eve", "chat/p/+", "chat/send/" + G, "chat/req", "chat/push/jobs",
              "chat/push/ack", "chat/push/status", "chat/#", "#", "+/c/x/m", "other/topic", "chat/x"]
    for i, t in enumerate(topics):
        acl.append(session(chunk((i % 8) | ((i % 4) << 3), 0, t)))
    acl.append(session(chunk(ALICE | (1 << 3), 0, 'chat/p/alice\n{"state":"offline"}')))
    acl.append(session(chunk(ALICE | (1 << 3), 0, 'chat/p/alice\n{"state":"online"}')))
    write("fuzz_acl", acl)
    write_dict("fuzz_acl", ["chat/", "c/", "u/", "p/", "send/", "typing/", "receipt/", "req", "push/", "jobs",
                            "ack", "status", "+", "#", "/", "/m", "\n", '{"state":"offline"}'] + IDS + ["\xff"])

    # session: everything, mixed
    mixed = []
    for target in ("fuzz_request", "fuzz_send", "fuzz_receipt", "fuzz_typing", "fuzz_presence", "fuzz_push_ack"):
        sel = {"fuzz_request": 3, "fuzz_send": 0, "fuzz_receipt": 6, "fuzz_typing": 5, "fuzz_presence": 8,
               "fuzz_push_ack": 10}[target]
        d = os.path.join(HERE, "corpus", target)
        for name in sorted(os.listdir(d))[:4]:
            data = open(os.path.join(d, name), "rb").read()
            mixed.append(b"\xff".join(c[:1] + bytes([(c[1] & 16) | sel]) + c[2:] if len(c) >= 2 else c
                                      for c in data.split(b"\xff")))
    mixed.append(session(chunk(ALICE, 15, "chat/c/%s/m\n{}" % G), chunk(ALICE, 15, "chat/u/bob/x\n{}"),
                         chunk(BOB, 15, "chat/push/status\n{}"), chunk(ALICE, 15, "chat/send/%s/x\n{}" % G)))
    mixed.append(session(chunk(ALICE | V5, 8 | RESTART, {"state": "online"}),
                         chunk(BOB, 1 | RESTART, {"cmid": "r1", "body": "after a restart"}),
                         chunk(BRIDGE, 10, {"id": 1, "result": "delivered"})))
    write("fuzz_session", mixed)
    all_tokens = JSON_TOKENS + quoted(KEYS) + quoted(OPS_) + quoted(WORDS) + quoted(IDS) + ["\xff", "\n"]
    write_dict("fuzz_session", all_tokens)
    write_dict("fuzz_request", JSON_TOKENS + quoted(KEYS) + quoted(OPS_) + quoted(WORDS) + quoted(IDS) + ["\xff"])


if __name__ == "__main__":
    main()
