#!/usr/bin/env bash
# One call's worth of GPU work for a session that is lent a device (see ../.library/device):
# the CUDA tests on the real device, compute-sanitizer, the forest bench grid of issue 2 and mctx
# on the same GPU, with every result written under $OUT (or ./gpu-out).
#
# Prepare on the build machine (the device machine has no registries, so carry binaries):
#   cargo build --release --tests
#   mkdir -p .gpu && cp target/release/rstar-gpu .gpu/
#   for t in cuda_backend differential golden toy bad_input; do
#     cp "$(ls -t target/release/deps/$t-* | grep -v '\.d$' | head -1)" ".gpu/$t"; done
#   echo /.gpu/ >> .git/info/exclude
#   # mctx for the side-by-side (JAX is on the device image): see the device README on wheels
#   python3 -m pip download --no-deps -d .whl mctx chex  # plus what `pip show` says is missing
# Then run (device tool): carry [".gpu", ".whl"], command `bash benches/gpu_session.sh .gpu`
set -uo pipefail
bin="${1:-.gpu}"
out="${OUT:-./gpu-out}"
mkdir -p "$out"
export RSTAR_REQUIRE_CUDA=1 RUST_LOG=info
log() { echo "::: $*" | tee -a "$out/session.log"; }

log "device"
nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv 2>&1 | tee -a "$out/session.log"
ldconfig -p | grep -E "libnvrtc|libcuda" | tee -a "$out/session.log"

log "CUDA tests on the device (fail instead of skipping: RSTAR_REQUIRE_CUDA=1)"
for t in cuda_backend differential golden toy bad_input; do
  [ -x "$bin/$t" ] && "$bin/$t" --test-threads 1 2>&1 | tail -n 30 | tee -a "$out/tests.log"
done

log "compute-sanitizer (memcheck, racecheck) on a small search"
for tool in memcheck racecheck; do
  compute-sanitizer --tool "$tool" "$bin/rstar-gpu" bench forest --backend cuda --trees 256 --sims 32 \
    --leaves-per-step 4 --reps 1 --json 2>&1 | tail -n 5 | tee -a "$out/sanitizer.log"
done

log "forest bench grid (cuda)"
for s in 64 800; do
  for b in 1024 4096 16384; do
    "$bin/rstar-gpu" bench forest --backend cuda --trees "$b" --sims "$s" --reps 5 --json \
      2>>"$out/bench.err" | tee -a "$out/bench.jsonl"
  done
done

log "mctx on the same GPU"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
fi
python3 benches/mctx_toy.py --trees 1024 4096 16384 --sims 64 800 2>>"$out/mctx.err" | tee -a "$out/mctx.jsonl"

log "summary"
python3 - "$out" <<'PY'
import json, sys, pathlib
out = pathlib.Path(sys.argv[1])
ours = [json.loads(l) for l in (out / "bench.jsonl").read_text().splitlines() if l.startswith("{")] if (out / "bench.jsonl").exists() else []
mctx = {(d["trees"], d["sims"]): d for d in (json.loads(l) for l in (out / "mctx.jsonl").read_text().splitlines() if l.startswith("{"))} if (out / "mctx.jsonl").exists() else {}
print("| B | S | rstar-gpu cuda sims/s | mctx sims/s | ratio | checksum equal |")
print("|---|---|---|---|---|---|")
for d in ours:
    m = mctx.get((d["trees"], d["sims"]))
    r = f"{d['sims_per_sec'] / m['sims_per_sec']:.1f}x" if m else "-"
    same = (m["checksum"] == d["checksum"]) if m else "-"
    print(f"| {d['trees']} | {d['sims']} | {d['sims_per_sec']:.3e} | {m['sims_per_sec']:.3e} | {r} | {same} |" if m else f"| {d['trees']} | {d['sims']} | {d['sims_per_sec']:.3e} | - | - | - |")
PY
