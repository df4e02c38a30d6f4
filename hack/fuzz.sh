#!/usr/bin/env bash
# Runs every coverage-guided fuzz target in fuzz/ for a bounded time and prints,
# per target: executions, executions per second, crashes (new files under
# fuzz/artifacts/<target>/), corpus size and peak RSS.
#
#   hack/fuzz.sh [SECONDS] [TARGET...]     # default: 60 s each, every target
#   FUZZ_RUNS=1000000 hack/fuzz.sh 3600     # each until 1,000,000 executions (at most 1 h)
#
# Needs a nightly toolchain (`rustup toolchain install nightly`) and cargo-fuzz
# (`cargo install cargo-fuzz`). Targets are built with overflow checks and debug
# assertions, without a sanitizer (nodewave has no unsafe code; the sanitizer
# would only slow the 2-core CI machine down and inflate the RSS measured).
# Each target runs under libFuzzer's limits: 2 GiB RSS (more is a crash), 10 s
# per input (longer is a crash), inputs of at most 64 KiB (16 KiB for the YAML
# targets). The corpora stay in
# fuzz/corpus/ between runs (git-ignored); seeds come from the fixtures.
#
# The script starts one libFuzzer process at a time and waits for it; it kills
# nothing it did not start.
set -euo pipefail

cd "$(dirname "$0")/.."
root=$PWD
seconds=${1:-60}
runs=${FUZZ_RUNS:--1}
shift || true
all_targets=(numbers manifest_load policy known_hosts url_redaction webhook record_decode)
if [[ $# -gt 0 ]]; then targets=("$@"); else targets=("${all_targets[@]}"); fi

if ! command -v cargo-fuzz >/dev/null 2>&1; then
    echo "cargo-fuzz is missing: cargo install cargo-fuzz" >&2
    exit 2
fi
if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "a nightly toolchain is missing: rustup toolchain install nightly" >&2
    exit 2
fi

cd fuzz
echo "building fuzz targets (nightly, overflow checks, no sanitizer)..." >&2
cargo +nightly fuzz build -s none >&2

# Seeds: the documented fixtures and the example repository.
seed() {
    local target=$1 dir=corpus/$1
    mkdir -p "$dir"
    [[ -n "$(ls -A "$dir")" ]] && return
    case $target in
    manifest_load)
        find "$root/tests/fixtures/manifests" "$root/examples-repo" -name '*.yaml' \
            -exec cp {} "$dir/" \;
        ;;
    numbers)
        for s in 30s 5m 1h30m 500ms 0 25% 1 4MiB 512KiB 1s18446744073709551615s; do
            printf '%s' "$s" >"$dir/seed-${s//[^a-zA-Z0-9]/_}"
        done
        ;;
    esac
}

log_dir=$(mktemp -d)
trap 'rm -rf "$log_dir"' EXIT
printf '%-15s %12s %10s %8s %8s %12s\n' TARGET EXECUTIONS EXEC/S CRASHES CORPUS PEAK_RSS_MB
status=0
for target in "${targets[@]}"; do
    seed "$target"
    mkdir -p "artifacts/$target"
    before=$(find "artifacts/$target" -type f | wc -l)
    # YAML targets: a dictionary of YAML tokens, and inputs of at most 16 KiB
    # (a few DaemonSets; the size limits themselves are unit-tested).
    dict=()
    max_len=65536
    if [[ $target == manifest_load || $target == policy ]]; then
        dict=(-dict=dicts/yaml.dict)
        max_len=16384
    fi
    log=$log_dir/$target.log
    set +e
    cargo +nightly fuzz run -s none "$target" -- \
        -max_total_time="$seconds" -runs="$runs" -rss_limit_mb=2048 -timeout=10 -max_len="$max_len" \
        -print_final_stats=1 "${dict[@]}" >"$log" 2>&1
    rc=$?
    set -e
    after=$(find "artifacts/$target" -type f | wc -l)
    crashes=$((after - before))
    execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
    rss=$(sed -n 's/^stat::peak_rss_mb: *//p' "$log" | tail -1)
    secs=$(sed -n 's/^Done [0-9]* runs in \([0-9]*\) second.*/\1/p' "$log" | tail -1)
    corpus=$(find "corpus/$target" -type f | wc -l)
    rate=$(( ${execs:-0} / ( ${secs:-$seconds} > 0 ? ${secs:-$seconds} : 1 ) ))
    printf '%-15s %12s %10s %8s %8s %12s\n' "$target" "${execs:-?}" "$rate" "$crashes" "$corpus" "${rss:-?}"
    if [[ $rc -ne 0 || $crashes -ne 0 ]]; then
        status=1
        echo "--- $target exited $rc; last lines of its log:" >&2
        tail -30 "$log" >&2
        find "artifacts/$target" -type f -newer "$log_dir" >&2 || true
    fi
done
exit $status
