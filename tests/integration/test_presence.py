"""Presence: retained chat/p/{user}, stamped by the plugin, online while any device is connected,
"offline" only from the plugin, no stale "online" after a broker restart, readable only by users
sharing a conversation (docs/protocol.md, "Presence"; README, "Presence, and what the 2.0 API
forced").

Devices are dropped with kill_socket (an unclean loss: the broker would send the Last Will) unless a
test says otherwise; every device sets the usual retained Last Will {"state":"offline"}."""
from __future__ import annotations

import pytest

from helpers import check_outgoing, now_ms, wait_until

TS_SLACK_MS = 50
OFFLINE_WILL = b'{"state":"offline"}'


def ptopic(user: str) -> str:
    return f"chat/p/{user}"


def will(user: str) -> tuple[str, bytes, int, bool]:
    return (ptopic(user), OFFLINE_WILL, 1, True)


def device(br, user: str, protocol: int = 5, transport: str = "tcp", **kw):
    """A device as the protocol describes it: retained offline will, subscribed to its own topics."""
    return br.client(user, protocol=protocol, transport=transport, will=will(user), **kw)


def go_online(cl) -> None:
    payload = {"state": "online"}
    check_outgoing("presence", payload)
    rc = cl.publish(ptopic(cl.user), payload, retain=True)
    assert rc < 0x80, f"{cl.user}: online refused with {rc:#x}"


def assert_state(p: dict, state: str, t0: int | None = None) -> int:
    assert set(p) == {"state", "ts"}, f"a delivered state always carries ts: {p}"
    assert p["state"] == state, p
    assert isinstance(p["ts"], int) and p["ts"] <= now_ms() + TS_SLACK_MS, p
    if t0 is not None:
        assert p["ts"] >= t0 - TS_SLACK_MS, f"ts {p['ts']} is before {t0}: {p}"
    return p["ts"]


def retained(br, viewer: str, user: str, protocol: int = 5):
    """What a brand-new subscriber (a fresh connection of `viewer`) gets for chat/p/{user}."""
    cl = br.client(viewer, protocol=protocol)
    assert cl.subscribe(ptopic(user)) == [1]
    m = cl.expect_msg(ptopic(user))
    assert m.retain, f"a new subscriber gets the retained state: {m!r}"
    cl.expect_none(ptopic(user), wait=0.1)
    cl.disconnect()
    return m


def watch(br, viewer: str, user: str, protocol: int = 5, **kw):
    cl = br.client(viewer, protocol=protocol, **kw)
    assert cl.subscribe(ptopic(user)) == [1]
    return cl


# --------------------------------------------------------------------------- stamping

@pytest.mark.parametrize("proto", [4, 5], ids=["mqtt311", "mqtt5"])
def test_online_is_stamped_with_server_time_and_retained(broker, users, proto):
    a, b, c = users("alice", "bob", "carol")
    alice = device(broker, a, protocol=proto)
    alice.create_direct(b)
    alice.create_group("G", [c])
    bob = watch(broker, b, a, protocol=4)
    bob.expect_none(ptopic(a), wait=0.1)  # nothing retained before alice's first state

    t0 = now_ms()
    go_online(alice)
    m = bob.expect_msg(ptopic(a))
    assert not m.retain and m.qos == 1, m
    ts = assert_state(m.json, "online", t0)
    bob.expect_none(ptopic(a), wait=0.2)

    # the retained value a new subscriber gets carries the same server time
    for viewer, p in ((c, 5), (b, 4), (a, 5)):
        r = retained(broker, viewer, a, protocol=p)
        assert r.payload == m.payload, (r, m)
        assert r.json == {"state": "online", "ts": ts}


def test_a_client_ts_is_not_accepted(broker, users):
    a, b = users("alice", "bob")
    alice = device(broker, a)
    alice.create_direct(b)
    go_online(alice)
    bob = watch(broker, b, a)
    ts = assert_state(bob.expect(ptopic(a)), "online")
    for bad, code in (({"state": "online", "ts": 1}, "unknown_field"), ({"state": "away"}, "invalid_field"),
                      ({"state": "online", "from": b}, "unknown_field"), ({}, "invalid_field")):
        assert alice.publish(ptopic(a), bad, retain=True) == 0x87, bad
        ev = alice.expect_event(pred=lambda e: e["event"] == "send_failed")
        assert {k: v for k, v in ev.items() if k != "message"} == {"event": "send_failed", "code": code}, (bad, ev)
    assert alice.publish(ptopic(a), b"online", retain=True) == 0x87
    assert alice.expect_event(pred=lambda e: e["event"] == "send_failed")["code"] == "invalid_json"
    bob.expect_none(ptopic(a), wait=0.2)
    assert retained(broker, b, a).json == {"state": "online", "ts": ts}


# --------------------------------------------------------------------------- several devices

@pytest.mark.parametrize("order", [("v4", "v5", "ws"), ("ws", "v5", "v4")], ids=["ws-last", "v4-last"])
def test_several_devices_offline_only_when_the_last_one_drops(broker, users, order):
    a, b, c, e = users("alice", "bob", "carol", "eve")
    devs = {
        "v4": device(broker, a, protocol=4),
        "v5": device(broker, a, protocol=5),
        "ws": device(broker, a, protocol=5, transport="websockets"),
    }
    devs["v4"].create_group("G", [b, c, e])
    watchers = [watch(broker, b, a, protocol=5), watch(broker, c, a, protocol=4, transport="websockets")]
    t0 = now_ms()
    for d in devs.values():
        go_online(d)
    for w in watchers:
        for p in w.expect_n(ptopic(a), 3):
            assert_state(p, "online", t0)
        w.expect_none(ptopic(a), wait=0.1)

    for name in order[:-1]:
        devs[name].kill_socket()
        # no will, no offline: two (then one) devices are still connected
        watchers[0].expect_none(ptopic(a), wait=0.5)
        watchers[1].expect_none(ptopic(a), wait=0.0)
        assert retained(broker, e, a).json["state"] == "online"

    t_drop = now_ms()
    devs[order[-1]].kill_socket()
    offline = []
    for w in watchers:
        m = w.expect_msg(ptopic(a))
        assert not m.retain, m
        assert_state(m.json, "offline", t_drop)
        offline.append(m.payload)
    assert offline[0] == offline[1]
    # exactly one: the last device's will is not delivered either
    watchers[0].expect_none(ptopic(a), wait=0.5)
    watchers[1].expect_none(ptopic(a), wait=0.0)
    assert retained(broker, e, a).payload == offline[0], "the last-seen time is retained"


@pytest.mark.parametrize("proto", [4, 5], ids=["mqtt311", "mqtt5"])
def test_clean_disconnect_of_the_last_device_publishes_offline(broker, users, proto):
    a, b = users("alice", "bob")
    phone = device(broker, a, protocol=proto)
    tab = device(broker, a, protocol=9 - proto, transport="websockets")
    phone.create_direct(b)
    go_online(phone)
    go_online(tab)
    bob = watch(broker, b, a)
    assert_state(bob.expect(ptopic(a)), "online")
    tab.disconnect()
    bob.expect_none(ptopic(a), wait=0.4)
    t_drop = now_ms()
    phone.disconnect()
    ts = assert_state(bob.expect(ptopic(a)), "offline", t_drop)
    bob.expect_none(ptopic(a), wait=0.4)
    assert retained(broker, b, a).json == {"state": "offline", "ts": ts}

    # and back: online again, with a new server time
    t1 = now_ms()
    go_online(device(broker, a, protocol=proto))
    assert assert_state(bob.expect(ptopic(a)), "online", t1) >= ts


def test_a_device_counts_from_its_first_chat_action(broker, users):
    """A connection that never touched a chat topic is not a device: only the one that did keeps
    the user online."""
    a, b = users("alice", "bob")
    phone = device(broker, a)
    phone.create_direct(b)
    go_online(phone)
    idle = broker.client(a, auto_sub=False, will=will(a))  # connected, no chat action
    bob = watch(broker, b, a)
    assert_state(bob.expect(ptopic(a)), "online")
    t_drop = now_ms()
    phone.kill_socket()
    assert_state(bob.expect(ptopic(a)), "offline", t_drop)
    idle.kill_socket()  # its will is refused like every client "offline"
    bob.expect_none(ptopic(a), wait=0.4)


# --------------------------------------------------------------------------- session take-over

@pytest.mark.parametrize("proto", [4, 5], ids=["mqtt311", "mqtt5"])
def test_session_takeover_with_another_device_never_shows_offline(broker, users, proto):
    a, b = users("alice", "bob")
    cid = f"{a}-phone"
    laptop = device(broker, a, protocol=5)
    phone = device(broker, a, protocol=proto, client_id=cid)
    laptop.create_direct(b)
    go_online(laptop)
    go_online(phone)
    bob = watch(broker, b, a, protocol=4)
    assert_state(bob.expect(ptopic(a)), "online")

    phone2 = device(broker, a, protocol=proto, client_id=cid)  # same client id, clean session
    assert phone.disconnected.wait(5), "the broker closes the old connection"
    go_online(phone2)
    laptop.kill_socket()
    bob.expect_none(ptopic(a), wait=0.5, pred=lambda p: p["state"] != "online")
    assert retained(broker, b, a).json["state"] == "online"
    bob.drain(ptopic(a))  # phone2's "online"

    t_drop = now_ms()
    phone2.kill_socket()
    assert_state(bob.expect(ptopic(a)), "offline", t_drop)
    bob.expect_none(ptopic(a), wait=0.3)


@pytest.mark.parametrize("proto", [4, 5], ids=["mqtt311", "mqtt5"])
def test_session_takeover_of_the_only_device_never_shows_offline(broker, users, proto):
    a, b = users("alice", "bob")
    cid = f"{a}-phone"
    phone = device(broker, a, protocol=proto, client_id=cid)
    phone.create_direct(b)
    go_online(phone)
    bob = watch(broker, b, a, protocol=5)
    t_online = assert_state(bob.expect(ptopic(a)), "online")

    phone2 = device(broker, a, protocol=proto, client_id=cid)  # same client id, clean session, a will
    assert phone.disconnected.wait(5), "the broker closes the old connection"
    go_online(phone2)
    # (expect_none also looks at what already arrived)
    bob.expect_none(ptopic(a), wait=0.5, pred=lambda p: p["state"] != "online")
    r = retained(broker, b, a).json
    assert r["state"] == "online" and r["ts"] >= t_online, r


# --------------------------------------------------------------------------- forgeries

@pytest.mark.parametrize("proto", [4, 5], ids=["mqtt311", "mqtt5"])
def test_someone_elses_presence_is_refused(broker, users, proto):
    a, b, c, d = users("alice", "bob", "carol", "dave")
    alice = device(broker, a)
    alice.create_group("G", [b, c])
    go_online(alice)
    carol = watch(broker, c, a)
    before = carol.expect_msg(ptopic(a))
    bob = broker.client(b, protocol=proto)     # shares a conversation with alice
    dave = broker.client(d, protocol=proto)    # shares nothing
    for forger in (bob, dave):
        for payload in ({"state": "online"}, {"state": "offline"}, {"state": "offline", "ts": 1}):
            rc = forger.publish(ptopic(a), payload, retain=True)
            assert rc == forger.refused_code, f"{forger.user} -> {ptopic(a)} {payload}: {rc:#x}"
    carol.expect_none(ptopic(a), wait=0.3)
    assert retained(broker, c, a).payload == before.payload, "the retained state is unchanged"
    # and alice is still online for real: her last device going still flips it
    t_drop = now_ms()
    alice.kill_socket()
    assert_state(carol.expect(ptopic(a)), "offline", t_drop)


@pytest.mark.parametrize("proto", [4, 5], ids=["mqtt311", "mqtt5"])
def test_publishing_offline_yourself_is_refused(broker, users, proto):
    a, b = users("alice", "bob")
    alice = device(broker, a, protocol=proto)
    alice.create_direct(b)
    go_online(alice)
    bob = watch(broker, b, a)
    before = bob.expect_msg(ptopic(a))
    for retain in (True, False):
        rc = alice.publish(ptopic(a), {"state": "offline"}, retain=retain)
        assert rc == alice.refused_code, f"{rc:#x}"
    bob.expect_none(ptopic(a), wait=0.3)
    assert retained(broker, b, a).payload == before.payload
    # the refusal changes nothing: alice is still connected and online, and reaches bob
    d = alice.create_direct(b)
    assert alice.send(d, "still here").rc in alice.ok_codes


@pytest.mark.parametrize(
    "payload",
    [b'{"state":"online","state":"offline"}', b"not json", b"", b'{"state":"online","ts":1}', b'{"state":"away"}'],
    ids=["duplicate-state", "not-json", "empty", "extra-field", "unknown-state"],
)
def test_a_will_cannot_leave_junk_in_the_retained_presence(broker, users, payload):
    """Wills skip the message hook: the write ACL alone keeps a malformed will (which would be
    retained unchecked, or an empty one, which would clear the state) off chat/p/{me}."""
    a, b = users("alice", "bob")
    phone = device(broker, a)
    phone.create_direct(b)
    go_online(phone)
    bob = watch(broker, b, a)
    before = bob.expect_msg(ptopic(a))
    junk = broker.client(a, auto_sub=False, will=(ptopic(a), payload, 1, True))
    junk.kill_socket()
    bob.expect_none(ptopic(a), wait=0.5)
    assert retained(broker, b, a).payload == before.payload


# --------------------------------------------------------------------------- who may read

@pytest.mark.parametrize("proto", [4, 5], ids=["mqtt311", "mqtt5"])
def test_only_users_sharing_a_conversation_may_subscribe(broker, users, proto):
    a, b, c, d = users("alice", "bob", "carol", "dave")
    alice = device(broker, a)
    go_online(alice)
    stranger = broker.client(d, protocol=proto)
    bob = broker.client(b, protocol=proto)
    carol = broker.client(c, protocol=proto)
    # oneself, always (alice is in no conversation at all)
    assert alice.subscribe(ptopic(a)) == [1]
    assert_state(alice.expect(ptopic(a)), "online")
    # nobody shares anything with alice yet
    for cl in (stranger, bob, carol):
        assert cl.subscribe(ptopic(a)) == [cl.sub_refused], cl.user
    alice.create_direct(b)
    g = alice.create_group("G", [c])
    assert bob.subscribe(ptopic(a)) == [1]
    assert carol.subscribe(ptopic(a)) == [1]
    assert stranger.subscribe(ptopic(a)) == [stranger.sub_refused]
    for cl in (bob, carol):
        assert_state(cl.expect(ptopic(a)), "online")
    stranger.expect_none(ptopic(a), wait=0.0)
    # the other direction too: alice may read those she shares with
    assert alice.subscribe(ptopic(b), ptopic(d)) == [1, alice.sub_refused]

    # carol leaves the only conversation she shared with alice: her subscription goes quiet
    carol.ok("members.remove", {"conv": g, "users": [c]})
    t_drop = now_ms()
    alice.kill_socket()
    assert_state(bob.expect(ptopic(a)), "offline", t_drop)
    carol.expect_none(ptopic(a), wait=0.3)
    stranger.expect_none(ptopic(a), wait=0.0)
    assert carol.subscribe(ptopic(a)) == [carol.sub_refused]


# --------------------------------------------------------------------------- broker restarts

PERSIST = "persist"


@pytest.mark.parametrize("how", ["kill", "kill-" + PERSIST, "stop-" + PERSIST])
def test_no_stale_online_after_a_broker_restart(make_broker, users, tmp_path, how):
    a, b, c = users("alice", "bob", "carol")
    extra = []
    if PERSIST in how:
        pdir = tmp_path / "persist"
        pdir.mkdir()
        extra = ["persistence true", f"persistence_location {pdir}/", "autosave_interval 1",
                 "autosave_on_changes true"]
    # no grace period here: carol's offline must be stored before the restart
    br = make_broker(opts={"presence_grace_ms": "0"}, extra_conf=extra)
    alice = device(br, a, protocol=5)
    carol = device(br, c, protocol=4)
    alice.create_group("G", [b, c])
    go_online(carol)
    t_carol = now_ms()
    carol.disconnect()  # carol: offline (last seen) before the restart
    go_online(alice)
    bob = watch(br, b, a)
    assert_state(bob.expect(ptopic(a)), "online")
    carol_off = retained(br, b, c).json
    assert_state(carol_off, "offline", t_carol)
    if PERSIST in how:
        # mosquitto's own store holds the retained "online": only the plugin can fix it at start
        db = pdir / "mosquitto.db"
        wait_until(lambda: db.exists() and b'"state":"online"' in db.read_bytes(), timeout=5,
                   what="mosquitto to save alice's retained online state")

    t_restart = now_ms()
    if how.startswith("kill"):
        br.kill()
    else:
        br.stop()
    br.start()
    bob = br.client(b, protocol=5)
    assert bob.subscribe(ptopic(a), ptopic(c)) == [1, 1]
    got = {}
    for _ in range(2):
        m = bob.expect_msg("chat/p/+")
        assert m.retain, m
        got[m.topic] = m.json
    assert sorted(got) == sorted([ptopic(a), ptopic(c)]), got
    assert_state(got[ptopic(a)], "offline", t_restart)
    assert got[ptopic(c)] == carol_off, "a stored offline state is republished as it was (last seen kept)"
    bob.expect_none("chat/p/+", wait=0.3)

    # the stored state follows: alice's new device makes her online again
    t1 = now_ms()
    go_online(device(br, a))
    assert_state(bob.expect(ptopic(a)), "online", t1)
