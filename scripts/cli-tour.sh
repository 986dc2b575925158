#!/usr/bin/env bash
# The README's terminal tour of the `eventbus` command, run as written: against the bus that
# EVENT_BUS_URL names (scripts/test.sh runs it on a redis-server from the testkit fixture), with
# the `eventbus` binary on PATH. Fails at the first command that fails or prints the unexpected.
set -euo pipefail
cd "$(dirname "$0")/.."
: "${EVENT_BUS_URL:?set EVENT_BUS_URL, e.g. redis://127.0.0.1:6379}"
tour=$(mktemp -d)
trap 'rm -rf "$tour"' EXIT
topic="orders-tour-$$"

# --- the tour, as in the README ---
S="--type org.example.order.placed.v1 --schema crates/eventbus-cli/examples/order.avsc --key-field order_id"
printf '%s\n' \
  '{"order_id": 1, "customer": "ada", "total_cents": 1200, "coupon": null}' \
  '{"order_id": 2, "customer": "grace", "total_cents": 800, "coupon": "WELCOME"}' \
  | eventbus produce "$topic" $S >"$tour/produced"
eventbus tail "$topic" --from earliest --max 2 $S --format table >"$tour/table"
eventbus tail "$topic" --from earliest --max 2 $S >"$tour/lines"
start=$(date -u +%Y-%m-%dT%H:%M:%S.%3NZ)
sleep 1
eventbus simulate "$topic" $S --rate 100 --duration 2s --keys 10 >"$tour/simulated"
eventbus replay "$topic" --from "$start" --into "$topic-copy" --idle 2s >"$tour/replayed"
eventbus dlq list "$topic.dlq" --idle 1s >"$tour/dead"
eventbus asyncapi --format json >"$tour/asyncapi.json"
# --- end of the tour ---

grep -q "^$topic " "$tour/produced"
grep -q '^POSITION' "$tour/table" && grep -q 'grace' "$tour/table"
[ "$(wc -l <"$tour/lines")" -eq 2 ]
grep -q '"order_id":2' "$tour/lines"
grep -q '^sent 200 event(s)' "$tour/simulated"
grep -q '^replayed 200 event(s)' "$tour/replayed"
[ ! -s "$tour/dead" ]
grep -q '"asyncapi": "3.0.0"' "$tour/asyncapi.json"
echo "cli tour: every command ran and printed what the README says"
