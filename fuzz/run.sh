#!/usr/bin/env bash
# Runs every cargo-fuzz target for a bounded time; fails if any target finds
# a crash (the input is left in fuzz/artifacts/<target>/).
#
#   fuzz/run.sh [SECONDS_PER_TARGET]     (default 20)
#
# Works on a stable toolchain: cargo-fuzz passes nightly-only flags
# (-Zsanitizer=address, ...), which RUSTC_BOOTSTRAP=1 allows. Set
# FUZZ_SANITIZER=none to build without AddressSanitizer.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${1:-20}"
sanitizer="${FUZZ_SANITIZER:-address}"
targets=(parse_message handshake_consume transport_decrypt offload)

if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

export RUSTC_BOOTSTRAP=1

# Seeds: one per mode of each target (the corpus directories are not committed).
seed() { # seed TARGET NAME BYTES...
    local dir="fuzz/corpus/$1" name="$2"
    shift 2
    mkdir -p "$dir"
    [[ -e "$dir/$name" ]] || printf "$@" >"$dir/$name"
}
for i in 0 1 2 3 4 5 6; do
    seed handshake_consume "seed-mode-$i" "\\x0$i"
    seed handshake_consume "seed-mode-$i-cut" "\\x8$i"
    seed transport_decrypt "seed-mode-$i" "\\x0$i"
done
seed parse_message seed-initiation '\x01\x00\x00\x00%0144d' 0
seed parse_message seed-response '\x02\x00\x00\x00%088d' 0
seed parse_message seed-cookie-reply '\x03\x00\x00\x00%060d' 0
seed parse_message seed-transport '\x04\x00\x00\x00%028d' 0
# offload: a TCP/IPv4 train, a UDP/IPv6 train with UDP coalescing on, one raw read.
seed offload seed-tcp-train '\x01\x00\xc8\x00\x00\x00\xc8\x00\x00\x00\x64\x00\x00'
seed offload seed-udp-train '\x03\x03\xc8\x00\x00\x03\xc8\x00\x00\x03\x10\x00\x00'
seed offload seed-read '\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x45'

cargo fuzz build --sanitizer "$sanitizer"

failed=()
for t in "${targets[@]}"; do
    echo "=== fuzz $t for ${seconds}s"
    if ! cargo fuzz run --sanitizer "$sanitizer" "$t" -- -max_total_time="$seconds" -print_final_stats=1; then
        failed+=("$t")
    fi
done

if ((${#failed[@]})); then
    echo "fuzzing found crashes in: ${failed[*]} (inputs in fuzz/artifacts/)" >&2
    exit 1
fi
echo "fuzzing: no crashes"
