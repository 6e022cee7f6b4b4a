#!/usr/bin/env bash
# Installs everything mosquitto-chat needs on Debian 12: build tools, the
# mosquitto broker and its plugin headers, LMDB, cJSON (apt), and the Python
# test tools (pip, into the `python3` found on PATH). Idempotent and quiet
# when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PKGS=(build-essential cmake ninja-build pkg-config
	mosquitto mosquitto-clients mosquitto-dev libmosquitto-dev
	liblmdb-dev lmdb-utils libcjson-dev uthash-dev
	libcurl4-openssl-dev libssl-dev openssl valgrind
	nodejs chromium
	strace    # bench/pages_per_commit.sh
	clang-14 libclang-rt-14-dev)   # scripts/fuzz.sh: clang + libFuzzer/ASan/UBSan runtimes (libclang_rt.*)

SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi

missing=()
for p in "${APT_PKGS[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "==> apt-get install ${missing[*]}"
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
	if command -v systemctl >/dev/null && systemctl is-active --quiet mosquitto 2>/dev/null; then
		echo "note: Debian's mosquitto package started its own broker service on port 1883."
		echo "      scripts/run.sh needs that port: 'systemctl disable --now mosquitto' stops it,"
		echo "      or run on other ports with CHAT_MQTT_PORT=1884 CHAT_WS_PORT=9002 scripts/run.sh"
	fi
fi

# Python test tools go to the python3 on PATH (here: pyenv's 3.11), not /usr/bin/python3.
if ! python3 -c 'import paho.mqtt, pytest, pytest_mqtt, jsonschema, referencing, yaml, matplotlib, cryptography, h2, jwt, pexpect, prometheus_client' 2>/dev/null; then
	echo "==> pip install -r tests/requirements.txt ($(command -v python3))"
	python3 -m pip install -q --disable-pip-version-check -r tests/requirements.txt
fi

# The web page (web/) and its browser tests (tests/web/): mqtt.js and playwright-core from
# npm, pinned by package-lock.json. The page's copy of mqtt.js (web/vendor/, not committed)
# is refreshed from node_modules. Debian's nodejs bundles no npm (NodeSource's does).
if ! command -v npm >/dev/null; then
	echo "==> apt-get install npm"
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends npm >/dev/null
fi
lock_sum=$(sha256sum package-lock.json | cut -d' ' -f1)
if [ "$(cat node_modules/.chat-lock-sum 2>/dev/null)" != "$lock_sum" ]; then
	echo "==> npm ci"
	npm ci --no-audit --no-fund --loglevel=error
	echo "$lock_sum" > node_modules/.chat-lock-sum
fi
mkdir -p web/vendor
cmp -s node_modules/mqtt/dist/mqtt.min.js web/vendor/mqtt.min.js ||
	cp node_modules/mqtt/dist/mqtt.min.js web/vendor/mqtt.min.js
