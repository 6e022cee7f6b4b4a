#!/usr/bin/env python3
"""Prometheus exporter for mosquitto-chat's operator stats.

Subscribes (paho-mqtt 2.x) to the retained {prefix}/stats topic as an *observer* user
(plugin_opt_observers) and serves the latest report on http://LISTEN/metrics in the Prometheus
text exposition format (stdlib http.server). Nothing is computed here: totals become counters,
the rest gauges; Prometheus's rate() does the rates.

    tools/prometheus_exporter.py --mqtt-host localhost --mqtt-port 1883 --user observer \\
        --listen 127.0.0.1:9883

chat_up is 1 while a report arrived within --stale-factor (3) of its interval, else 0 (the
broker, the plugin's stats or the MQTT link is gone); the other samples are then left out.
"""
from __future__ import annotations

import argparse
import json
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import paho.mqtt.client as mqtt


def _esc(v: str) -> str:
    return str(v).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


class Metrics:
    """Builds the exposition text from one stats object."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def family(self, name: str, kind: str, help_: str, samples: list[tuple[dict, float]], suffix: str = "") -> None:
        self.lines.append(f"# HELP {name} {help_}")
        self.lines.append(f"# TYPE {name} {kind}")
        for labels, value in samples:
            lab = ",".join(f'{k}="{_esc(v)}"' for k, v in labels.items())
            self.lines.append(f"{name}{suffix}{{{lab}}} {value}" if lab else f"{name}{suffix} {value}")

    def gauge(self, name: str, help_: str, value: float) -> None:
        self.family(name, "gauge", help_, [({}, value)])

    def counter(self, name: str, help_: str, value: float, labels: dict | None = None) -> None:
        self.family(name, "counter", help_, [(labels or {}, value)], suffix="_total")

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def render(stats: dict | None, received: float | None, now: float, stale_factor: float) -> str:
    m = Metrics()
    up = 0
    if stats is not None and received is not None:
        interval = max(float(stats.get("interval_ms") or 0) / 1000.0, 1.0)
        up = 1 if now - received <= stale_factor * interval else 0
    m.gauge("chat_up", "1 while mosquitto-chat's stats are fresh", up)
    if not up:
        return m.text()
    st = stats["store"]
    m.gauge("chat_stats_age_seconds", "seconds since the plugin published the stats", round(now - received, 3))
    m.family("chat_info", "gauge", "plugin version", [({"version": stats["version"]}, 1)])
    m.gauge("chat_uptime_seconds", "seconds since the plugin started", stats["uptime_s"])
    m.gauge("chat_devices", "connected devices (connections that made a chat action)", stats["devices"])
    m.gauge("chat_users_online", "users with at least one connected device", stats["users_online"])
    m.counter("chat_messages_stored", "messages sent by clients and stored since start", stats["messages"]["total"])
    m.counter("chat_requests", "requests on chat/req since start", stats["requests"]["total"])
    m.counter("chat_history_requests", "history requests since start", stats["history_requests"]["total"])
    m.family("chat_refusals", "counter", "publishes refused with a send_failed event, by code",
             [({"code": c}, n) for c, n in sorted(stats["refusals"]["by_code"].items())], suffix="_total")
    m.family("chat_request_errors", "counter", "requests answered ok:false, by code",
             [({"code": c}, n) for c, n in sorted(stats["request_errors"]["by_code"].items())], suffix="_total")
    m.counter("chat_kicked", "connections dropped for publishing on while rate-limited", stats.get("kicked", 0))
    m.gauge("chat_store_file_bytes", "size of the LMDB data file", st["file_bytes"])
    m.gauge("chat_store_disk_bytes", "disk space the LMDB data file uses", st["disk_bytes"])
    m.gauge("chat_store_map_bytes", "LMDB map size (plugin_opt_map_size)", st["map_bytes"])
    m.gauge("chat_store_map_used_bytes", "bytes of the LMDB map in use", st["map_used_bytes"])
    m.gauge("chat_store_map_used_ratio", "share of the LMDB map in use (0..1)", round(st["map_used_pct"] / 100.0, 6))
    m.gauge("chat_push_outbox_jobs", "push jobs waiting for the bridge", st["push_outbox"])
    c = st["cache"]
    m.counter("chat_cache_hits", "read cache lookups answered from memory since start", c["hits"])
    m.counter("chat_cache_misses", "read cache lookups that read LMDB since start", c["misses"])
    m.counter("chat_cache_clears", "read cache tables cleared whole for being full since start", c["clears"])
    m.gauge("chat_cache_entries", "conversations and memberships in the read cache", c["entries"])
    m.gauge("chat_cache_bytes", "memory the read cache holds", c["bytes"])
    return m.text()


class Exporter:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.lock = threading.Lock()
        self.stats: dict | None = None
        self.received: float | None = None
        self.topic = f"{args.prefix}/stats"
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=args.client_id,
                                  protocol=mqtt.MQTTv311)
        self.client.username_pw_set(args.user, args.password)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_message = self._on_message
        self.client.reconnect_delay_set(1, 30)

    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            print(f"exporter: CONNECT refused: {reason_code}", file=sys.stderr, flush=True)
            return
        client.subscribe(self.topic, qos=0)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties):
        if any(rc.is_failure for rc in reason_codes):
            print(f"exporter: subscription to {self.topic} refused: is {self.args.user!r} in "
                  "plugin_opt_observers?", file=sys.stderr, flush=True)

    def _on_message(self, client, userdata, msg):
        try:
            stats = json.loads(msg.payload)
            stats["store"], stats["messages"]  # the fields render() needs
        except (ValueError, KeyError, TypeError):
            print(f"exporter: ignoring a payload that is not a stats object: {msg.payload[:200]!r}",
                  file=sys.stderr, flush=True)
            return
        with self.lock:
            self.stats, self.received = stats, time.monotonic()

    def metrics(self) -> str:
        with self.lock:
            return render(self.stats, self.received, time.monotonic(), self.args.stale_factor)

    def serve(self) -> None:
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404, "only /metrics here")
                    return
                body = exporter.metrics().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, fmt, *a):
                pass

        host, _, port = self.args.listen.rpartition(":")
        server = ThreadingHTTPServer((host or "0.0.0.0", int(port)), Handler)
        self.client.connect_async(self.args.mqtt_host, self.args.mqtt_port, keepalive=30)
        self.client.loop_start()
        print(f"exporter: serving http://{host or '0.0.0.0'}:{server.server_address[1]}/metrics "
              f"from {self.topic} on {self.args.mqtt_host}:{self.args.mqtt_port}", flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()
            self.client.loop_stop()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mqtt-host", default="localhost")
    ap.add_argument("--mqtt-port", type=int, default=1883)
    ap.add_argument("--user", default="observer", help="an observer user (plugin_opt_observers)")
    ap.add_argument("--password", default=None)
    ap.add_argument("--client-id", default="chat-prometheus-exporter")
    ap.add_argument("--prefix", default="chat", help="plugin_opt_prefix")
    ap.add_argument("--listen", default="127.0.0.1:9883", help="host:port of the /metrics endpoint")
    ap.add_argument("--stale-factor", type=float, default=3.0,
                    help="chat_up turns 0 when no report came for this many intervals")
    Exporter(ap.parse_args(argv)).serve()
    return 0


if __name__ == "__main__":
    sys.exit(main())
