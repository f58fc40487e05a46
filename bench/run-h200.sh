#!/usr/bin/env bash
# The whole GPU benchmark in one call on the GPU machine (after bash ../shared/device/pack.sh here):
#   run with carry [.device, dist]:  source .device/setup.sh >/dev/null && bash bench/run-h200.sh
# Every step is time-boxed so that the call fits the device's 10-minute limit; results go to $OUT (6 files: the
# device returns at most 8).
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
step() { local t=$1 name=$2; shift 2; echo "== $name" >&2; ( time timeout "$t" "$@" ) > "$OUT/$name.txt" 2>&1; }
# PyTorch reference (transformers + the card's patch, eager) on a random Qwen2.5-3B bf16 checkpoint it writes
step 200 torch python3 reference/bench_torch.py --dir /tmp/q3b --json "$OUT/torch.json"
step 60 check node dist/bench/gpu-check.js
step 150 gpu node dist/bench/gpu.js --dir /tmp/q3b --torch "$OUT/torch.json" --decode 48
# int8 tensor-core prefill linears (opt-in, lossy): same table, prefill rows
step 90 gpu-q8 env GRAVITY_WEBGPU_Q8=sm GRAVITY_DAWN_FLAGS=enable-dawn-features=allow_unsafe_apis node dist/bench/gpu.js --dir /tmp/q3b --torch "$OUT/torch.json" --skip attn --decode 8
# each decode kernel alone (GPU timestamps); bench/run-h200-decode.sh compares decode settings
step 40 gemv node dist/bench/gpu.js --gemv --dir /tmp/q3b
exit 0
