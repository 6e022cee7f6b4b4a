"""Topic ACL (docs/protocol.md, "Topics and ACL"), observers, and the plugin beside
mosquitto's own authentication (password_file) and the dynamic-security plugin.

The module broker has an acl_file granting everything outside our prefix, so a `#`
subscription is granted by mosquitto and the plugin's per-delivery read check is what keeps
chat traffic away from it."""
from __future__ import annotations

import json
import os
import threading
import time

import pytest

from helpers import (
    ACCEPTED,
    DYNSEC_PLUGIN,
    OBSERVER,
    ConnectRefused,
    dynsec_config,
    mosquitto_passwd,
    schema_problem,
    uname,
    wait_until,
)

BROKER_ACL = ["pattern readwrite #"]  # `pattern` lines apply to every client

# `observer_broker` and `mqtt_settings` (pytest-mqtt's capmqtt -> our observer broker) come from
# conftest.py.


def capmqtt_barrier(capmqtt, timeout=5.0):
    """capmqtt subscribes to `#` without waiting for the SUBACK; SUBACKs come in order, so one
    more SUBSCRIBE acknowledged means `#` is in place."""
    cl = capmqtt.mqtt_client.client
    done: dict[int, list] = {}
    cond = threading.Condition()

    def on_sub(client, userdata, mid, reason_codes, properties):
        with cond:
            done[mid] = [getattr(r, "value", r) for r in reason_codes]
            cond.notify_all()

    cl.on_subscribe = on_sub
    rc, mid = cl.subscribe("capmqtt/barrier")
    assert rc == 0
    deadline = time.monotonic() + timeout
    with cond:
        while mid not in done:
            left = deadline - time.monotonic()
            assert left > 0, "capmqtt never got its SUBACK"
            cond.wait(left)


# --------------------------------------------------------------------------- subscribe checks

@pytest.mark.parametrize("proto", [5, 4])
def test_subscribe_conversation_members_only(broker, users, proto):
    a, b, d = users("alice", "bob", "dave")
    alice = broker.client(a)
    bob = broker.client(b, protocol=proto)
    dave = broker.client(d, protocol=proto)
    g = alice.create_group("G", [b])
    other = alice.create_group("Other", [d])
    no = dave.sub_refused

    for t in (f"chat/c/{g}/+", f"chat/c/{g}/m", f"chat/c/{g}/typing", f"chat/c/{g}/receipt", f"chat/c/{g}/#"):
        assert dave.subscribe(t) == [no], t
    # one SUBSCRIBE, one granted and one refused filter
    assert bob.subscribe(f"chat/c/{g}/+", f"chat/c/{other}/+") == [1, no]
    assert bob.subscribe(f"chat/c/g_000000000000/+") == [no]

    r = alice.send(g, "members only")
    assert bob.expect_message(g)["cmid"] == r.cmid
    dave.expect_none("#", wait=0.3, pred=lambda j: isinstance(j, dict) and j.get("conv") == g)
    alice.send(other, "for dave")
    bob.expect_none(f"chat/c/{other}/m", wait=0.3)


@pytest.mark.parametrize("proto", [5, 4])
def test_inbound_topics_cannot_be_subscribed(broker, users, proto):
    a, b = users("alice", "bob")
    alice = broker.client(a, protocol=proto)
    g = alice.create_group("G", [b])
    no = alice.sub_refused
    for t in (f"chat/send/{g}", "chat/send/+", "chat/send/#", f"chat/typing/{g}", f"chat/receipt/{g}",
              "chat/req", "chat/typing/+", "chat/receipt/#"):
        assert alice.subscribe(t) == [no], t


def test_inbound_topics_never_reach_observers(observer_broker):
    """Observers may subscribe to any filter, but nobody, observers included, receives
    inbound topics."""
    obs = observer_broker.client(OBSERVER)
    obs.subscribe("chat/send/+", "chat/send/#", "chat/req", "chat/typing/+", "chat/receipt/+")
    a, b = uname("alice"), uname("bob")
    alice = observer_broker.client(a)
    g = alice.create_group("G", [b])
    assert obs.subscribe(f"chat/c/{g}/m") == [1]
    r = alice.send(g, "inbound copy?")
    alice.publish(f"chat/typing/{g}", {"state": "typing"})
    assert obs.expect_message(g, pred=lambda m: m.get("cmid") == r.cmid)
    obs.expect_none("chat/send/#", wait=0.3)
    obs.expect_none("chat/req", wait=0.0)
    obs.expect_none("chat/typing/#", wait=0.0)


@pytest.mark.parametrize("proto", [5, 4])
def test_other_users_topics(broker, users, proto):
    a, b = users("alice", "bob")
    alice = broker.client(a, protocol=proto)
    bob = broker.client(b)
    no = alice.sub_refused
    for t in (f"chat/u/{b}/+", f"chat/u/{b}/event", f"chat/u/{b}/reply", f"chat/u/{b}/#", f"chat/u/{b}/custom"):
        assert alice.subscribe(t) == [no], t
    assert alice.subscribe(f"chat/u/{a}/event", f"chat/u/{a}/#") == [1, 1]
    # bob's replies and events never reach alice, even through wildcards she may hold
    alice.subscribe("chat/u/+/reply", "chat/u/+/event")
    bob.ok("conv.list")
    bob.create_group("bob's", [uname("x")])
    alice.expect_none(f"chat/u/{b}/#", wait=0.4)


@pytest.mark.parametrize("proto", [5, 4])
def test_wildcards_inside_prefix_never_leak(broker, users, proto):
    a, b, d = users("alice", "bob", "dave")
    alice = broker.client(a)
    bob = broker.client(b)
    dave = broker.client(d, protocol=proto)
    g = alice.create_group("G", [b])
    bob.sub_conv(g)
    dave.subscribe("chat/#", "chat/c/+/m", "chat/c/#", "chat/u/+/+", "chat/p/+")
    alice.publish(f"chat/p/{a}", {"state": "online"}, retain=True)
    r = alice.send(g, "private")
    alice.ok("conv.list")
    assert bob.expect_message(g)["cmid"] == r.cmid
    dave.expect_none("chat/#", wait=0.3, msg_pred=lambda m: not m.topic.startswith(f"chat/u/{d}/"))


# --------------------------------------------------------------------------- publish checks

def test_outbound_topics_cannot_be_published(broker, users):
    a, b = users("alice", "bob")
    alice = broker.client(a, protocol=5)
    bob = broker.client(b, protocol=5)
    bob3 = broker.client(b, protocol=4)
    g = alice.create_group("G", [b])
    bob.sub_conv(g)
    bob3.sub_conv(g)
    for cl in (bob, bob3):
        cl.expect_event(pred=lambda e: e["event"] == "conv.added")
    forged = {"conv": g, "seq": 99, "id": f"{g}:99", "ts": 1, "from": a, "cmid": "x", "type": "text",
              "body": "forged"}
    for t in (f"chat/c/{g}/m", f"chat/c/{g}/typing", f"chat/c/{g}/receipt", f"chat/u/{b}/event",
              f"chat/u/{b}/reply", f"chat/u/{a}/reply", f"chat/u/{a}/event", "chat/whatever", f"chat/c/{g}"):
        assert alice.publish(t, forged) == 0x87, t
        assert bob3.publish(t, forged) == 0, t  # MQTT 3.1.1: a plain PUBACK, nothing delivered
    bob.expect_none("#", wait=0.4)
    bob3.expect_none("#", wait=0.0)
    assert alice.conv_get(g)["last_seq"] == 1


def test_will_cannot_forge_outbound_or_inbound(broker, users):
    """A Last Will bypasses the message hook; the ACL still keeps it away from members."""
    a, b = users("alice", "bob")
    alice = broker.client(a)
    bob = broker.client(b)
    g = alice.create_group("G", [b])
    bob.sub_conv(g)
    forged = json.dumps({"conv": g, "seq": 2, "id": f"{g}:2", "ts": 1, "from": a, "cmid": "w", "type": "text",
                         "body": "will"}).encode()
    for will in ((f"chat/c/{g}/m", forged, 1, False),
                 (f"chat/u/{b}/event", b'{"event":"conv.removed","conv":"%s","by":"%s"}' % (g.encode(), a.encode()),
                  1, False),
                 (f"chat/send/{g}", b'{"cmid":"will1","body":"from a will"}', 1, False)):
        try:
            evil = broker.client(a, will=will, auto_sub=False)
        except ConnectRefused:
            continue  # refusing the will's topic at CONNECT is fine too
        evil.kill_socket()
    bob.expect_event(pred=lambda e: e["event"] == "conv.added")
    bob.expect_none(f"chat/c/{g}/m", wait=0.6)
    bob.expect_none(f"chat/u/{b}/event", wait=0.0)
    assert alice.conv_get(g)["last_seq"] == 1


# --------------------------------------------------------------------------- removal

@pytest.mark.parametrize("proto", [5, 4])
def test_removed_member_stops_receiving_at_once(broker, users, proto):
    a, b, c = users("alice", "bob", "carol")
    alice = broker.client(a)
    bob = broker.client(b, protocol=proto)
    carol = broker.client(c)
    g = alice.create_group("G", [b, c])
    bob.sub_conv(g)
    carol.sub_conv(g)
    m1 = alice.send(g, "one")
    assert bob.expect_message(g)["cmid"] == m1.cmid
    assert carol.expect_message(g)["cmid"] == m1.cmid
    bob.expect_event(pred=lambda e: e["event"] == "conv.added")

    alice.ok("members.remove", {"conv": g, "users": [b]})
    assert bob.expect_event() == {"event": "conv.removed", "conv": g, "by": a}
    m2 = alice.send(g, "after removal")
    assert carol.expect_message(g, pred=lambda m: m.get("cmid") == m2.cmid)
    bob.expect_none(f"chat/c/{g}/m", wait=0.5, pred=lambda m: m.get("cmid") == m2.cmid)
    # bob's subscription is still there, his writes are refused
    r = bob.send(g, "let me in")
    assert r.rc == bob.refused_code
    assert bob.expect_event(pred=lambda e: e["event"] == "send_failed")["code"] == "not_member"

    # re-added: the same old subscription delivers again
    alice.ok("members.add", {"conv": g, "users": [b]})
    assert bob.expect_event(pred=lambda e: e["event"] == "conv.added") == {"event": "conv.added", "conv": g,
                                                                           "by": a}
    m3 = alice.send(g, "welcome back")
    got = bob.expect_message(g, pred=lambda m: m.get("cmid") == m3.cmid)
    assert got["body"] == "welcome back"
    bob.expect_none(f"chat/c/{g}/m", wait=0.0, pred=lambda m: m.get("cmid") == m2.cmid)


# --------------------------------------------------------------------------- identities

@pytest.mark.parametrize("proto", [5, 4])
@pytest.mark.parametrize("user", [None, "bad name", "x" * 65, "a/b", "a+b"], ids=["none", "space", "65", "slash",
                                                                                  "plus"])
def test_connection_without_valid_username_gets_nothing(broker, users, proto, user):
    a, b = users("alice", "bob")
    alice = broker.client(a)
    bob = broker.client(b)
    g = alice.create_group("G", [b])
    bob.sub_conv(g)
    anon = broker.client(user, protocol=proto)
    no = anon.sub_refused
    for t in (f"chat/c/{g}/+", f"chat/u/{a}/+", f"chat/p/{a}", "chat/#"):
        assert anon.subscribe(t) == [no], t
    assert anon.subscribe("#") == [1], "granted by the acl_file (outside our decision)"
    assert anon.publish(f"chat/send/{g}", {"cmid": "x", "body": "anon"}) == anon.refused_code
    assert anon.publish("chat/req", {"op": "conv.list", "req_id": "1"}) == anon.refused_code
    assert anon.publish(f"chat/p/{a}", {"state": "online"}) == anon.refused_code

    alice.publish(f"chat/p/{a}", {"state": "online"}, retain=True)
    r = alice.send(g, "not for anonymous eyes")
    assert bob.expect_message(g)["cmid"] == r.cmid
    alice.ok("conv.list")
    anon.expect_none("chat/#", wait=0.3)
    assert bob.history(g)["messages"][-1]["cmid"] == r.cmid, "the anonymous send stored nothing"


def test_hash_subscriber_without_observer_role_sees_no_chat_traffic(broker, users):
    """The module broker has no observers; its acl_file grants `#`."""
    a, b, d = users("alice", "bob", "dave")
    dave = broker.client(d, protocol=4)
    assert dave.subscribe("#") == [1]
    dave.publish("outside/probe", b"probe")
    assert dave.expect_msg("outside/probe").payload == b"probe", "the `#` subscription is live"

    alice = broker.client(a)
    bob = broker.client(b, protocol=4)
    g = alice.create_group("G", [b])
    bob.sub_conv(g)
    alice.publish(f"chat/p/{a}", {"state": "online"}, retain=True)
    r = alice.send(g, "secret")
    bob.publish(f"chat/send/{g}", b"refused")
    assert bob.expect_message(g)["cmid"] == r.cmid
    assert bob.expect_event(pred=lambda e: e["event"] == "send_failed")
    alice.ok("conv.list")
    dave.expect_none("chat/#", wait=0.3, msg_pred=lambda m: not m.topic.startswith(f"chat/u/{d}/"))


def test_hash_subscriber_without_acl_file(make_broker, users):
    """No acl_file, no observers: `#` may be refused outright; either way no chat traffic."""
    br = make_broker()
    a, b, d = users("alice", "bob", "dave")
    dave = br.client(d)
    dave.subscribe("#")
    alice = br.client(a)
    bob = br.client(b)
    g = alice.create_group("G", [b])
    bob.sub_conv(g)
    r = alice.send(g, "secret")
    assert bob.expect_message(g)["cmid"] == r.cmid
    dave.expect_none("chat/#", wait=0.3, msg_pred=lambda m: not m.topic.startswith(f"chat/u/{d}/"))


# --------------------------------------------------------------------------- observers

def test_observer_sees_outbound_traffic_capmqtt(observer_broker, capmqtt):
    capmqtt_barrier(capmqtt)
    a, b = uname("alice"), uname("bob")
    alice = observer_broker.client(a)
    bob = observer_broker.client(b, protocol=4)
    g = alice.create_group("observed", [b])
    bob.sub_conv(g)
    r = alice.send(g, "seen by the observer")
    assert bob.expect_message(g)["cmid"] == r.cmid
    bob.publish(f"chat/send/{g}", b"not json")
    bob.expect_event(pred=lambda e: e["event"] == "send_failed")
    alice.publish(f"chat/p/{a}", {"state": "online"}, retain=True)
    alice.ok("conv.list")

    def seen(topic, pred=lambda j: True):
        for m in list(capmqtt.messages):
            if m.topic == topic:
                try:
                    j = json.loads(m.payload)
                except ValueError:
                    continue
                if pred(j):
                    return j
        return None

    wait_until(lambda: seen(f"chat/c/{g}/m", lambda j: j.get("cmid") == r.cmid), what="observer sees the message")
    # (replies and send_failed go to the requesting/sending device only, not to a topic)
    wait_until(lambda: seen(f"chat/u/{b}/event", lambda j: j.get("event") == "conv.added"), what="conv.added")
    wait_until(lambda: seen(f"chat/p/{a}"), what="presence")
    created = seen(f"chat/c/{g}/m", lambda j: j.get("seq") == 1)
    assert created and created["type"] == "system" and created["event"] == "created"

    topics = [m.topic for m in capmqtt.messages]
    inbound = [t for t in topics if t.split("/")[:2] in (["chat", "send"], ["chat", "typing"], ["chat", "receipt"])
               or t == "chat/req"]
    assert inbound == [], "nobody, observers included, receives inbound topics"
    for m in capmqtt.messages:
        kind = None
        parts = m.topic.split("/")
        if parts[0] == "chat" and parts[1] == "c" and parts[-1] == "m":
            kind = "message"
        elif parts[0] == "chat" and parts[1] == "u":
            kind = "event" if parts[-1] == "event" else "reply"
        if kind:
            problem = schema_problem(kind, json.loads(m.payload))
            assert problem is None, f"{m.topic}: {problem}"


def test_observer_cannot_publish(observer_broker):
    a = uname("alice")
    alice = observer_broker.client(a)
    obs = observer_broker.client(OBSERVER, protocol=5)
    g = alice.create_group("with observer", [OBSERVER])
    obs.sub_conv(g)
    assert obs.publish(f"chat/send/{g}", {"cmid": "obs1", "body": "observer speaking"}) == 0x87
    assert obs.publish("chat/req", {"op": "conv.list"}) == 0x87
    assert obs.publish(f"chat/p/{OBSERVER}", {"state": "online"}) == 0x87
    assert obs.publish(f"chat/c/{g}/m", {"forged": True}) == 0x87
    obs.expect_none(f"chat/c/{g}/m", wait=0.3)
    assert alice.conv_get(g)["last_seq"] == 1
    assert alice.history(g)["messages"][-1]["seq"] == 1


def test_hash_subscriber_not_observer_on_observer_broker(observer_broker):
    """Tested both ways on one broker: the non-observer's `#` gets nothing."""
    a, b, d = uname("alice"), uname("bob"), uname("dave")
    dave = observer_broker.client(d)
    dave.subscribe("#")
    watcher = observer_broker.client("audit")  # the second configured observer
    assert watcher.subscribe("#") == [1]
    alice = observer_broker.client(a)
    g = alice.create_group("G", [b])
    r = alice.send(g, "x")
    assert watcher.expect_message(g, pred=lambda m: m.get("cmid") == r.cmid)
    dave.expect_none("chat/#", wait=0.3, msg_pred=lambda m: not m.topic.startswith(f"chat/u/{d}/"))


# --------------------------------------------------------------------------- presence

@pytest.mark.parametrize("proto", [5, 4])
def test_presence_acl(broker, users, proto):
    a, b, c, d = users("alice", "bob", "carol", "dave")
    alice = broker.client(a, protocol=proto)
    bob = broker.client(b, protocol=proto)
    dave = broker.client(d, protocol=proto)
    alice.create_direct(b)
    alice.create_group("G", [c])

    rc = alice.publish(f"chat/p/{a}", {"state": "online"}, retain=True)
    assert rc < 0x80 and rc != 0x87
    assert alice.subscribe(f"chat/p/{a}") == [1], "one reads one's own presence"
    assert alice.expect(f"chat/p/{a}")["state"] == "online"

    assert bob.subscribe(f"chat/p/{a}") == [1], "bob shares a conversation with alice"
    m = bob.expect_msg(f"chat/p/{a}")
    assert m.retain is True and m.json["state"] == "online"
    assert dave.subscribe(f"chat/p/{a}") == [dave.sub_refused], "dave shares nothing with alice"

    # only the owner writes it
    assert bob.publish(f"chat/p/{a}", {"state": "offline"}, retain=True) == bob.refused_code
    assert dave.publish(f"chat/p/{a}", {"state": "offline"}, retain=True) == dave.refused_code
    bob.expect_none(f"chat/p/{a}", wait=0.4)
    carol = broker.client(c)
    assert carol.subscribe(f"chat/p/{a}") == [1]
    assert carol.expect(f"chat/p/{a}")["state"] == "online", "the forged offline was not retained"


# --------------------------------------------------------------------------- other auth

# auth: plugin_opt_auth left out (the default) or set to "none" explicitly: either way the
# plugin registers no login callback and mosquitto's own authentication decides
@pytest.mark.parametrize("auth", [None, "none"])
@pytest.mark.parametrize("proto", [5, 4])
def test_with_password_file(make_broker, users, tmp_path, proto, auth):
    a, b = users("alice", "bob")
    pw = tmp_path / "passwd"
    mosquitto_passwd(pw, {a: "secret-a", b: "secret-b"})
    br = make_broker(allow_anonymous=False, extra_conf=[f"password_file {pw}"], opts={"auth": auth})

    for user, password in ((a, "wrong"), (a, None), (None, None), (uname("stranger"), "secret-a")):
        with pytest.raises(ConnectRefused) as ei:
            br.client(user, password=password, protocol=proto)
        assert ei.value.code >= 0x80

    alice = br.client(a, password="secret-a", protocol=proto)
    bob = br.client(b, password="secret-b", protocol=9 - proto)
    d = alice.create_direct(b)
    bob.sub_conv(d)
    r = alice.send(d, "authenticated")
    assert r.rc in alice.ok_codes
    m = bob.expect_message(d)
    assert m["from"] == a and m["cmid"] == r.cmid


@pytest.mark.parametrize("auth", [None, "none"])
def test_beside_dynamic_security(make_broker, users, tmp_path, auth):
    a, b, d = users("alice", "bob", "dave")
    cfg = tmp_path / "dynsec.json"
    dynsec_config(
        cfg,
        admin=("admin", "admin-pw"),
        clients={a: "pw-a", b: "pw-b", d: "pw-d"},
        role="app-user",
        acls=[
            {"acltype": "publishClientSend", "topic": "app/#", "allow": True},
            {"acltype": "publishClientReceive", "topic": "app/#", "allow": True},
            {"acltype": "subscribePattern", "topic": "app/#", "allow": True},
        ],
    )
    assert os.path.exists(DYNSEC_PLUGIN), f"mosquitto's dynamic-security plugin is not at {DYNSEC_PLUGIN}"
    br = make_broker(allow_anonymous=False, opts={"auth": auth},
                     extra_conf=[f"plugin {DYNSEC_PLUGIN}", f"plugin_opt_config_file {cfg}"])
    # our plugin is loaded first
    conf = br.conf_path.read_text()
    assert conf.index(f"plugin {br.plugin}") < conf.index(f"plugin {DYNSEC_PLUGIN}")

    # login is dynsec's
    for user, password in ((a, "wrong"), (uname("stranger"), "pw-a"), (None, None)):
        with pytest.raises(ConnectRefused):
            br.client(user, password=password)
    alice = br.client(a, password="pw-a")
    bob = br.client(b, password="pw-b", protocol=4)
    dave = br.client(d, password="pw-d")

    # chat topics are ours: dynsec's default would refuse every subscription
    g = alice.create_group("G", [b])
    assert bob.subscribe(f"chat/c/{g}/+") == [1]
    assert dave.subscribe(f"chat/c/{g}/+") == [0x87]
    r = alice.send(g, "via two plugins")
    assert r.rc in ACCEPTED
    assert bob.expect_message(g)["cmid"] == r.cmid
    dave.expect_none(f"chat/c/{g}/m", wait=0.2)

    # everything else is dynsec's
    assert alice.subscribe("app/news") == [1]
    assert bob.publish("app/news", b"extra!") == 0
    assert alice.expect_msg("app/news").payload == b"extra!"
    assert alice.publish("other/topic", b"x") == 0x87
    assert alice.subscribe("other/#") == [0x87]
