#!/usr/bin/env bash
# Side-by-side CPU throughput of the toy forest workload: toy_forest.c (one thread, the reference
# loop) and `rstar-gpu bench forest --backend cpu` (1 thread and all threads), alternating runs in
# one session so both see the same machine state. Prints a markdown table (median of ROUNDS runs).
#
#   bash benches/compare_cpu.sh            # B ∈ {64, 1024, 4096, 16384}, S=64, plus B=4096 S=800
#   ROUNDS=5 SHAPES="4096:64" bash benches/compare_cpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${ROUNDS:-3}"
SHAPES="${SHAPES:-64:64 1024:64 4096:64 16384:64 4096:800}"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
cc -O2 -o "$tmp/toy_forest" tests/reference/toy_forest.c -lm
cargo build --release --quiet
bin=target/release/rstar-gpu
threads="$(nproc)"
# Parse after the run ends: a parser started in the same pipeline would compete for the cores.
rate() { "$@" > "$tmp/out.json"; python3 -c "import json,sys; d=json.load(open(sys.argv[1])); print(d['sims_per_sec'], d['checksum'])" "$tmp/out.json"; }
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo "| B | S | toy_forest.c 1 thread (sims/s) | rstar-gpu cpu 1 thread | rstar-gpu cpu $threads threads | ratio ($threads threads / toy) | checksums equal |"
echo "|---|---|---|---|---|---|---|"
for shape in $SHAPES; do
  b="${shape%%:*}"; s="${shape##*:}"
  : > "$tmp/c"; : > "$tmp/one"; : > "$tmp/all"; same=yes
  for _ in $(seq "$ROUNDS"); do
    read -r c cs < <(rate "$tmp/toy_forest" "$b" "$s"); echo "$c" >> "$tmp/c"
    read -r o os < <(rate env RUST_LOG=off "$bin" bench forest --backend cpu --trees "$b" --sims "$s" --threads 1 --json); echo "$o" >> "$tmp/one"
    read -r a as < <(rate env RUST_LOG=off "$bin" bench forest --backend cpu --trees "$b" --sims "$s" --json); echo "$a" >> "$tmp/all"
    [ "$cs" = "$os" ] && [ "$cs" = "$as" ] || same=no
  done
  c=$(median < "$tmp/c"); o=$(median < "$tmp/one"); a=$(median < "$tmp/all")
  python3 -c "print(f'| $b | $s | {$c/1e6:.2f} M | {$o/1e6:.2f} M | {$a/1e6:.2f} M | {$a/$c:.2f}× | $same |')"
done
