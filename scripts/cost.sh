#!/usr/bin/env bash
# Instructions and heap allocations per event on the in-memory bus, counted by callgrind and by
# the cost bench's counting allocator: stable on a noisy machine, unlike timings.
#
#   bash scripts/cost.sh            # every path, 1000 and 3000 events
#   N1=2000 N2=6000 bash scripts/cost.sh consume
#
# Each path runs at two sizes; the difference divided by the difference in events is the cost of
# one event, with fixed costs (start-up, starting a consumer) cancelled out. Needs valgrind.
set -euo pipefail
cd "$(dirname "$0")/.."

command -v valgrind >/dev/null || { echo "error: valgrind is missing (apt-get install valgrind)" >&2; exit 1; }
n1=${N1:-1000}
n2=${N2:-3000}
paths=("$@")
[ ${#paths[@]} -gt 0 ] || paths=(publish send consume runner runner-bare runner-alone runner-waiting floor)

bin=$(cargo bench --locked -p eventbus-testkit --features conformance --bench cost --no-run 2>&1 \
    | sed -n 's/.*Executable .*(\(.*\))$/\1/p' | tail -n 1)
[ -x "$bin" ] || { echo "error: the cost bench did not build" >&2; exit 1; }

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

# Prints "<instructions> <allocations>" for one run.
count() {
    local path=$1 n=$2 file="$out/$1-$2.out"
    local said
    said=$(valgrind --tool=callgrind --callgrind-out-file="$file" \
        --toggle-collect='cost::measured*' "$bin" "$path" "$n" 2>/dev/null)
    local ir allocations
    ir=$(sed -n 's/^summary: \([0-9]*\).*/\1/p' "$file")
    allocations=$(printf '%s\n' "$said" | sed -n 's/.*allocations=\([0-9]*\).*/\1/p')
    echo "$ir $allocations"
}

echo "| path | instructions per event | allocations per event |"
echo "|---|---|---|"
for path in "${paths[@]}"; do
    read -r ir1 al1 < <(count "$path" "$n1")
    read -r ir2 al2 < <(count "$path" "$n2")
    awk -v p="$path" -v i1="$ir1" -v i2="$ir2" -v a1="$al1" -v a2="$al2" -v n1="$n1" -v n2="$n2" \
        'BEGIN { printf "| %s | %.0f | %.1f |\n", p, (i2 - i1) / (n2 - n1), (a2 - a1) / (n2 - n1) }'
done
echo "(callgrind instruction counts, differences between $n1 and $n2 events)"
