#!/usr/bin/env bash
# The whole test suite, on a fresh machine or this one: installs what is missing (idempotent),
# then runs format and lint checks, every test and doc test, and the examples. Brokers the tests
# need are started by the testkit fixtures on free loopback ports and stopped when tests end.
set -euo pipefail
cd "$(dirname "$0")/.."

have() { command -v "$1" >/dev/null 2>&1; }

apt_updated=""
apt_install() {
    if ! have apt-get; then
        echo "error: '$1' is missing and there is no apt-get here; install it and rerun" >&2
        exit 1
    fi
    if [ -z "$apt_updated" ]; then
        apt-get update -qq
        apt_updated=1
    fi
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@" >/dev/null
}

if ! have cargo; then
    echo "error: cargo is missing; install the Rust toolchain (rustup) first" >&2
    exit 1
fi
# Before anything is installed: the README's first command must build and run with cargo alone.
# Stand-ins for protoc, g++/c++ and cmake that fail shadow any real ones, so this holds even on a
# machine that has them; the unit list (`Compiling`/`Fresh` lines name every unit) must hold no
# broker client and no test fixture.
echo "== the quickstart with nothing but cargo"
no_tools=$(mktemp -d)
trap 'rm -rf "$no_tools"' EXIT
for tool in protoc g++ c++ clang++ cmake; do
    printf '#!/bin/sh\necho "%s is not available on a cargo-only machine" >&2\nexit 127\n' "$tool" \
        >"$no_tools/$tool"
    chmod +x "$no_tools/$tool"
done
quickstart_log="$no_tools/quickstart-build.log"
if ! env -u PROTOC PATH="$no_tools:$PATH" cargo build -v --locked --example quickstart \
    >"$quickstart_log" 2>&1; then
    tail -n 40 "$quickstart_log" >&2
    echo "error: the quickstart does not build with cargo alone (log above)" >&2
    exit 1
fi
forbidden=$(grep -E '^ +(Compiling|Fresh) ' "$quickstart_log" | awk '{print $2}' \
    | grep -E -x 'rdkafka|rdkafka-sys|pulsar|redis|reqwest|prost-build|tempfile|crc|axum|eventbus-(redis|kafka|pulsar)' \
    | sort -u || true)
if [ -n "$forbidden" ]; then
    echo "error: the quickstart's build compiles broker clients or test machinery:" $forbidden >&2
    exit 1
fi
# The same for what an application that depends on `eventbus` (default features) compiles.
test_only=$(cargo tree --locked -p eventbus -e normal --prefix none \
    | awk '{print $1}' \
    | grep -E -x 'rdkafka|pulsar|redis|reqwest|tempfile|crc|axum|eventbus-(redis|kafka|pulsar)' \
    | sort -u || true)
if [ -n "$test_only" ]; then
    echo "error: eventbus with default features depends on:" $test_only >&2
    exit 1
fi
units=$(grep -c -E '^ +(Compiling|Fresh) ' "$quickstart_log")
env -u PROTOC PATH="$no_tools:$PATH" cargo run --quiet --locked --example quickstart >/dev/null
echo "quickstart: built from $units units with cargo alone, and ran"

if have rustup; then
    rustup component list --installed 2>/dev/null | grep -q '^rustfmt' || rustup component add rustfmt
    rustup component list --installed 2>/dev/null | grep -q '^clippy' || rustup component add clippy
fi
# redis-server: the broker fixture's tests and the Redis backend run against a real one.
have redis-server || apt_install redis-server
# rdkafka builds librdkafka from source: a C and C++ compiler, make and perl's configure helpers.
have make || apt_install make
have g++ || apt_install g++
have perl || apt_install perl
# protoc: the `pulsar` crate compiles Pulsar's protocol definitions when it builds.
have protoc || apt_install protobuf-compiler
# pulsar-lite: a Pulsar-protocol broker shipped as a Python package, for the Pulsar backend's
# tests (the testkit fixture finds its binary inside the package).
if ! have pulsar-lite && ! python3 -c 'import pulsar_lite' >/dev/null 2>&1; then
    have python3 || apt_install python3 python3-pip
    python3 -m pip install --quiet pulsar-lite==0.2.0 \
        || python3 -m pip install --quiet --break-system-packages pulsar-lite==0.2.0
fi
# tansu: a Kafka-protocol broker for the Kafka backend's tests (about 10 minutes to build once).
have tansu || cargo install --locked tansu --version 0.6.0 --features dynostore
# PostgreSQL's server binaries: the journal's tests start their own server (initdb into a temp
# directory, a free port) through the testkit fixture; nothing uses a system cluster.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! have initdb; then
    apt_install postgresql
fi
# Debian's Chromium and its WebDriver: the journal dashboard's browser test drives them headless.
have chromium || apt_install chromium
have chromedriver || apt_install chromium-driver
# The official AsyncAPI 3.0 JSON schema (npm package @asyncapi/specs), which the CLI's generated
# documents are validated against.
have npm || apt_install npm
EVENTBUS_ASYNCAPI_SCHEMA=$(bash scripts/asyncapi-specs.sh)
export EVENTBUS_ASYNCAPI_SCHEMA

echo "== cargo fmt"
cargo fmt --all -- --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test (unit, integration, conformance, doc tests)"
cargo test --workspace --locked
echo "== examples"
for example in quickstart retries_and_dead_letters alert_service; do
    cargo run --quiet --locked --example "$example" >/dev/null
    echo "example $example: ok"
done
cargo run --quiet --locked --example observability --features telemetry >/dev/null
echo "example observability: ok"
# The same quickstart, unchanged, against a real redis-server that the testkit fixture starts
# on a free port (and stops afterwards).
cargo run --quiet --locked -p eventbus-testkit --features fixtures --bin with-broker -- redis -- \
    cargo run --quiet --locked --example quickstart --features redis >/dev/null
echo "example quickstart on redis: ok"
# The README's terminal tour of the `eventbus` command, as written, on a fixture redis-server.
cargo build --quiet --locked -p eventbus-cli --features redis --bin eventbus
PATH="$PWD/target/debug:$PATH" cargo run --quiet --locked -p eventbus-testkit --features fixtures \
    --bin with-broker -- redis -- bash scripts/cli-tour.sh
# And against tansu with the schema-registry fixture.
cargo run --quiet --locked -p eventbus-testkit --features registry --bin with-broker -- kafka -- \
    cargo run --quiet --locked --example quickstart --features kafka >/dev/null
echo "example quickstart on kafka: ok"
# And against pulsar-lite, through the testkit's frame proxy.
cargo run --quiet --locked -p eventbus-testkit --features fixtures --bin with-broker -- pulsar -- \
    cargo run --quiet --locked --example quickstart --features pulsar >/dev/null
echo "example quickstart on pulsar: ok"
