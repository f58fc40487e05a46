#!/usr/bin/env bash
# Decode settings side by side on the GPU machine (one call; see bench/run-h200.sh for the whole benchmark):
#   source .device/setup.sh >/dev/null && bash bench/run-h200-decode.sh   (needs /tmp/q3b from bench_torch.py)
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
dec() { local name=$1; shift; echo "== $name" >&2; env "$@" timeout 40 node dist/bench/gpu.js --dir /tmp/q3b --skip attn --prefill 512 --decode 64 > "$OUT/dec-$name.txt" 2>&1; }
dec default X=1
dec unroll8 GRAVITY_GEMV_UNROLL=8
dec ksplit2 GRAVITY_GEMV_KSPLIT=2
dec ksplit4 GRAVITY_GEMV_KSPLIT=4
dec u8k4 GRAVITY_GEMV_UNROLL=8 GRAVITY_GEMV_KSPLIT=4
dec kps32 GRAVITY_DECODE_KEYS_PER_SPLIT=32
dec nocomb GRAVITY_DECODE_COMBINE_IN_O=0
dec flush4096 GRAVITY_WEBGPU_FLUSH_EVERY=4096
dec u8k4f256 GRAVITY_GEMV_UNROLL=8 GRAVITY_GEMV_KSPLIT=4 GRAVITY_WEBGPU_FLUSH_EVERY=256
timeout 30 node dist/bench/gpu.js --gemv --dir /tmp/q3b > "$OUT/gemv-default.txt" 2>&1
GRAVITY_GEMV_UNROLL=8 GRAVITY_GEMV_KSPLIT=4 timeout 30 node dist/bench/gpu.js --gemv --dir /tmp/q3b > "$OUT/gemv-u8k4.txt" 2>&1
for f in "$OUT"/dec-*.txt; do echo "$(basename "$f" .txt): $(grep -E '^decode after 512, (gravity|dot) \(tok/s\)' "$f" | head -2 | awk -F'|' '{printf "%s ", $2}')"; done
exit 0
