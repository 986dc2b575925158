#!/usr/bin/env bash
# Fuzzes every decoder of outside bytes (issue 15) with cargo-fuzz and libFuzzer: builds the
# targets of fuzz/ (one per function of crates/eventbus-fuzz), runs each for SECONDS, and prints
# one line per target. Exits non-zero when any target found a crash, a timeout or an
# out-of-memory; the input is then in fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]    run (default 600 s each, every target)
#   scripts/fuzz.sh --merge [TARGET...]      minimise the committed corpora (see below)
#
# Toolchain: cargo-fuzz passes nightly flags (-Zsanitizer, -Cpasses=sancov…). A stable rustc
# accepts them with RUSTC_BOOTSTRAP=1, which this script sets for its own builds only; the
# address sanitizer's runtime ships with stable's rust-std on x86_64 Linux. Other sanitizers:
# FUZZ_SANITIZER=none (faster, but libFuzzer's -malloc_limit_mb then goes unchecked).
#
# Each run starts from the committed corpus (fuzz/corpus/<target>/) and the inputs of past
# findings (fuzz/regressions/<target>/), and grows a work corpus in fuzz/target/corpus/<target>/
# that later runs continue from. `--merge` (needs python3) folds the work corpus into
# fuzz/corpus/<target>/: the seeds, plus the inputs that add the most edges, at most
# FUZZ_CORPUS_MAX (40) files per target, so that the committed corpus stays small;
# `cargo test -p eventbus-fuzz` replays it.
set -euo pipefail
cd "$(dirname "$0")/.."

export RUSTC_BOOTSTRAP=1
sanitizer=${FUZZ_SANITIZER:-address}
triple=$(rustc -vV | sed -n 's/^host: //p')
bin_dir="fuzz/target/$triple/release"
# libFuzzer: a 10 s input is a hang, 2 GiB of RSS is a leak, and no input may make the process
# ask for 64 MiB at once (inputs are at most 64 KiB; only a length read from the input and
# trusted could ask for that much).
flags=(-rss_limit_mb=2048 -malloc_limit_mb=64 -timeout=10 -max_len=65536 -print_final_stats=1)
if [ "$sanitizer" != "none" ]; then
    # Leaks are not a finding of these targets (process-wide caches live until exit).
    export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=0}
fi

merge=""
if [ "${1:-}" = "--merge" ]; then
    merge=1
    shift
    seconds=0
else
    seconds=${1:-600}
    shift || true
fi
case "$seconds" in
    '' | *[!0-9]*)
        echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...] | --merge [TARGET...]" >&2
        exit 2
        ;;
esac
if [ $# -gt 0 ]; then
    targets=("$@")
else
    targets=()
    for f in fuzz/fuzz_targets/*.rs; do
        targets+=("$(basename "$f" .rs)")
    done
fi

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "== installing cargo-fuzz"
    nice -n 15 cargo install --locked cargo-fuzz
fi

echo "== building ${#targets[@]} targets (sanitizer: $sanitizer)"
# Debug assertions on: integer overflow is a finding too.
(cd fuzz && nice -n 15 cargo fuzz build -s "$sanitizer" -a -O)

if [ -n "$merge" ]; then
    # A libFuzzer merge run records the edges each input covers (its control file); the seeds
    # (`seed-*`, written by crates/eventbus-fuzz/tests/seeds.rs) stay, and the inputs that add
    # the most edges to them are picked greedily, up to FUZZ_CORPUS_MAX files per target.
    max=${FUZZ_CORPUS_MAX:-40}
    for t in "${targets[@]}"; do
        work="fuzz/target/corpus/$t"
        mkdir -p "$work" "fuzz/corpus/$t"
        scratch=$(mktemp -d)
        nice -n 15 "$bin_dir/$t" -merge=1 -use_counters=0 -merge_control_file="$scratch/control" \
            "${flags[@]}" "$scratch" "fuzz/corpus/$t" "$work" >"fuzz/target/merge-$t.log" 2>&1
        python3 - "$scratch/control" "fuzz/corpus/$t" "$max" <<'PY'
import hashlib, os, shutil, sys
control, corpus, limit = sys.argv[1], sys.argv[2], int(sys.argv[3])
lines = open(control).read().splitlines()
count = int(lines[0])
paths = lines[2:2 + count]
edges = {}
for line in lines[2 + count:]:
    if line.startswith("COV "):
        _, i, *cov = line.split()
        edges[int(i)] = set(cov)
data = {i: open(p, "rb").read() for i, p in enumerate(paths)}
seeds = [i for i, p in enumerate(paths)
         if os.path.basename(p).startswith("seed-") and os.path.dirname(p) == corpus]
covered = set().union(*(edges.get(i, set()) for i in seeds))
chosen = list(seeds)
while len(chosen) < limit:
    best = max((i for i in edges if i not in chosen),
               key=lambda i: (len(edges[i] - covered), -len(data[i])), default=None)
    if best is None or not edges[best] - covered:
        break
    chosen.append(best)
    covered |= edges[best]
everything = set().union(*edges.values()) if edges else set()
kept = {os.path.basename(paths[i]): data[i] for i in seeds}
for i in chosen[len(seeds):]:
    kept[hashlib.sha1(data[i]).hexdigest()] = data[i]
shutil.rmtree(corpus)
os.makedirs(corpus)
for name, content in kept.items():
    with open(os.path.join(corpus, name), "wb") as f:
        f.write(content)
print(f"{os.path.basename(corpus)}: {len(kept)} inputs ({len(seeds)} seeds), "
      f"{sum(map(len, kept.values()))} bytes, {len(covered)} of {len(everything)} edges")
PY
        rm -rf "$scratch"
    done
    exit 0
fi

status=0
printf '%-20s %8s %12s %8s %8s %9s  %s\n' target seconds execs execs/s corpus peak_rss outcome
for t in "${targets[@]}"; do
    work="fuzz/target/corpus/$t"
    artifacts="fuzz/artifacts/$t"
    log="fuzz/target/fuzz-$t.log"
    mkdir -p "$work" "$artifacts"
    seeds=("fuzz/corpus/$t")
    [ -d "fuzz/regressions/$t" ] && seeds+=("fuzz/regressions/$t")
    start=$(date +%s)
    rc=0
    nice -n 15 "$bin_dir/$t" "$work" "${seeds[@]}" "${flags[@]}" \
        -max_total_time="$seconds" -artifact_prefix="$artifacts/" >"$log" 2>&1 || rc=$?
    elapsed=$(($(date +%s) - start))
    stat() { sed -n "s/^stat::$1: *//p" "$log" | tail -n 1; }
    execs=$(stat number_of_executed_units)
    rate=$(stat average_exec_per_sec)
    rss=$(stat peak_rss_mb)
    # libFuzzer's own count of its corpus at the end (the work directory also keeps inputs that
    # later ones made redundant).
    corpus=$(grep -o -E 'corp: [0-9]+' "$log" | tail -n 1 | cut -d' ' -f2)
    if [ "$rc" -eq 0 ]; then
        outcome=none
    else
        status=1
        if grep -q 'ERROR: libFuzzer: timeout' "$log"; then
            outcome=timeout
        elif grep -q -E 'out-of-memory|malloc limit|allocation-size-too-big' "$log"; then
            outcome=oom
        else
            outcome=crash
        fi
        outcome="$outcome ($(grep -o -E "Test unit written to [^ ]+" "$log" | tail -n 1 \
            | sed 's/Test unit written to //'); log $log)"
    fi
    printf '%-20s %8s %12s %8s %8s %7sMB  %s\n' "$t" "$elapsed" "${execs:-?}" "${rate:-?}" \
        "${corpus:-?}" "${rss:-?}" "$outcome"
done
exit "$status"
