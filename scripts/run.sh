#!/usr/bin/env bash
# Quick start, step 1: install what is missing, build, and run mosquitto with the
# chat plugin on 127.0.0.1:1883 (MQTT) and :9001 (MQTT over WebSocket), its LMDB
# under var/db in the project folder. Runs in the foreground; Ctrl-C stops it.
#   CHAT_MQTT_PORT / CHAT_WS_PORT   other ports (default 1883 / 9001)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
MQTT_PORT=${CHAT_MQTT_PORT:-1883}
WS_PORT=${CHAT_WS_PORT:-9001}

scripts/install-deps.sh
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build

port_busy() { ss -Hltn "sport = :$1" 2>/dev/null | grep -q .; }
for port in "$MQTT_PORT" "$WS_PORT"; do
	if port_busy "$port"; then
		echo "error: port $port is already in use:" >&2
		ss -Hltnp "sport = :$port" >&2 || true
		if command -v systemctl >/dev/null && systemctl is-active --quiet mosquitto 2>/dev/null; then
			echo "Debian's own mosquitto service (started when the package was installed) holds it." >&2
			echo "Stop it with: systemctl disable --now mosquitto" >&2
		fi
		echo "Or choose other ports: CHAT_MQTT_PORT=1884 CHAT_WS_PORT=9002 scripts/run.sh" >&2
		exit 1
	fi
done

# The example config, with our ports, run as the current user (mosquitto
# started as root would otherwise drop to the 'mosquitto' user, which may not
# be able to write var/db).
mkdir -p var/db
{
	echo "user $(id -un)"
	sed -e "s/^listener 1883 /listener $MQTT_PORT /" -e "s/^listener 9001 /listener $WS_PORT /" \
		-e "s|^http_dir web\$|http_dir $(realpath web)|" mosquitto.conf.example
} > var/mosquitto.conf

cat <<MSG

mosquitto-chat: starting mosquitto with the chat plugin (database: $ROOT/var/db)
  MQTT       mqtt://127.0.0.1:$MQTT_PORT
  WebSocket  ws://127.0.0.1:$WS_PORT
  Web chat   http://127.0.0.1:$WS_PORT/   (open it in a browser; two windows = two users)
Any username is a chat user in this setup. Try, in two more terminals:
  mosquitto_sub -p $MQTT_PORT -u alice -t 'chat/u/alice/#' -t 'chat/c/+/m' -v
  mosquitto_pub -p $MQTT_PORT -u alice -t chat/req -q 1 \\
      -m '{"op":"conv.create","type":"group","name":"hello","members":["bob"]}'
(the reply goes to the requesting client; see README.md for the full walk-through)
Ctrl-C stops the broker.

MSG
exec mosquitto -c var/mosquitto.conf
