#!/usr/bin/env bash
# Decode experiments on the GPU machine (settings as env vars), judged by the GPU's busy time per token (compute-pass
# timestamps), which is steady between processes where the wall time is not:
#   source .device/setup.sh >/dev/null && bash bench/probe-h200.sh
# This round: decode attention as key-split partials merged by the o projection (GRAVITY_DECODE_KEYS_PER_PART,
# 0 = off, the previous default) against the whole-head kernel, at 512 and 1024 keys.
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
[ -f /tmp/q3b/config.json ] || timeout 120 python3 reference/bench_torch.py --dir /tmp/q3b --json /tmp/q3b.json --make-only > /dev/null 2>&1
timeout 60 node dist/bench/gpu-check.js > "$OUT/check.txt" 2>&1; tail -3 "$OUT/check.txt"
# the fixtures' prompts are short: split every 4 keys so that the partials path runs on this card too
GRAVITY_DECODE_KEYS_PER_PART=4 timeout 60 node dist/bench/gpu-check.js > "$OUT/check-parts.txt" 2>&1; tail -3 "$OUT/check-parts.txt"
# pp NAME CONTEXT VAR=value ...: busy time per token (and tok/s) of greedy decode after CONTEXT tokens
pp() { local name=$1 ctx=$2; shift 2; echo "== $name (after $ctx)"; env "$@" timeout 60 node dist/bench/gpu.js --dir /tmp/q3b --skip attn --prefill 512 --context "$ctx" --decode 64 --profile-passes 2>&1 | grep -E 'GPU busy|^decode after [0-9]+, (gravity|dot)' | sort; }
{
pp parts256-stage 512 GRAVITY_DECODE_KEYS_PER_PART=256
pp parts256-inline 512 GRAVITY_DECODE_KEYS_PER_PART=256 GRAVITY_GEMV_PARTS_STAGE=0
pp parts128-stage 512 GRAVITY_DECODE_KEYS_PER_PART=128
pp parts64-stage 512 GRAVITY_DECODE_KEYS_PER_PART=64
pp parts128-stage-rows16 512 GRAVITY_DECODE_KEYS_PER_PART=128 GRAVITY_GEMV_PARTS_ROWS=16
pp parts0 128 GRAVITY_DECODE_KEYS_PER_PART=0
pp parts64-stage 128 GRAVITY_DECODE_KEYS_PER_PART=64
pp parts32-stage 128 GRAVITY_DECODE_KEYS_PER_PART=32
pp parts1024-stage 2048 GRAVITY_DECODE_KEYS_PER_PART=1024 GRAVITY_DECODE_SHORT_KEYS=4096
pp parts512-stage 2048 GRAVITY_DECODE_KEYS_PER_PART=512 GRAVITY_DECODE_SHORT_KEYS=4096
pp parts256-stage 2048 GRAVITY_DECODE_KEYS_PER_PART=256 GRAVITY_DECODE_SHORT_KEYS=4096
pp parts0 512 GRAVITY_DECODE_KEYS_PER_PART=0
} > "$OUT/probe.txt" 2>&1
grep -E "==|GPU busy" "$OUT/probe.txt"
