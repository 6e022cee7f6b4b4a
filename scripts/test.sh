#!/usr/bin/env bash
# Quick start, step 2 (and what CI runs): every test.
#  1. installs what is missing;
#  2. builds the plugin and the unit tests with AddressSanitizer + UBSan;
#  3. runs the C unit tests (ctest);
#  4. runs the pytest suites (tests/integration: real mosquitto brokers that load
#     the sanitized plugin, ASan runtime preloaded; tests/bridge: the sanitized push
#     bridge against loopback FCM/APNs/webhook stand-ins); any ASan/UBSan/leak report
#     fails the test that produced it. tests/web: the web page in headless Chromium against a
#     real broker that serves it (about 90 s).
#     tests/clients: the example clients and the
#     operator stats against real brokers (about 1 minute).
#  5. runs the benchmark's smoke run (plain mosquitto vs the plugin, tiny sizes).
#  6. fuzzes every parser of client input, 15 s per target (scripts/fuzz.sh,
#     12 targets, ~4-5 minutes with the clang build); CHAT_FUZZ_SECONDS changes it, 0 skips it.
# CHAT_SANITIZE=valgrind runs the brokers under valgrind instead (slower);
# CHAT_SANITIZE=none runs the plain build.
set -euo pipefail
cd "$(dirname "$0")/.."

scripts/install-deps.sh

mode=${CHAT_SANITIZE:-asan}
if [ "$mode" = asan ]; then
	build=build-asan
	cmake -S . -B "$build" -G Ninja -DENABLE_SANITIZERS=ON -DCMAKE_BUILD_TYPE=Debug >/dev/null
else
	build=build
	cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
fi
cmake --build "$build"

echo "==> unit tests ($build)"
ctest --test-dir "$build" --output-on-failure

echo "==> integration tests (sanitizer: $mode)"
export CHAT_PLUGIN="$PWD/$build/plugin/mosquitto_chat.so"
export CHAT_SANITIZE="$mode"
python3 -m pytest tests/integration tests/bridge tests/clients tests/web "$@"

# The benchmark's smoke run: the same harness at tiny sizes, figures printed,
# no time assertions (bench/README.md). It needs the unsanitized build.
echo "==> benchmark smoke run"
cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build build
python3 bench/run.py --smoke --workdir "${TMPDIR:-/tmp}" --results "$(mktemp -d)"

# Bounded fuzzing: the saved crashes in fuzz/regressions/ first, then every
# libFuzzer target for CHAT_FUZZ_SECONDS (fuzz/README.md).
if [ "${CHAT_FUZZ_SECONDS:-15}" != 0 ]; then
	echo "==> fuzzing (${CHAT_FUZZ_SECONDS:-15} s per target)"
	scripts/fuzz.sh "${CHAT_FUZZ_SECONDS:-15}"
fi
