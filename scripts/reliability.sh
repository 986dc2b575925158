#!/usr/bin/env bash
# The reliability campaign (RELIABILITY.md): every scenario on every backend, against brokers the
# testkit fixtures start, one table row each. Extra arguments go to the runner, e.g.
#   scripts/reliability.sh --scale reduced --backend redis --scenario kill
# Needs what scripts/test.sh installs (redis-server, tansu, pulsar-lite, protoc, a C++ compiler).
set -euo pipefail
cd "$(dirname "$0")/.."
# Both binaries (a debug build: the figures count events, not speed): the runner starts
# `reliability-worker` processes for the crash scenario.
cargo build --locked -p eventbus-reliability --bins
exec target/debug/reliability "$@"
