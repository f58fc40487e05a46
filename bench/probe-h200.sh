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
pp parts0 512 GRAVITY_DECODE_KEYS_PER_PART=0
pp parts256 512 GRAVITY_DECODE_KEYS_PER_PART=256
pp parts171 512 GRAVITY_DECODE_KEYS_PER_PART=171
pp parts256-vs4 512 GRAVITY_DECODE_KEYS_PER_PART=256 GRAVITY_DECODE_VSPLIT=4
pp parts256-vs1 512 GRAVITY_DECODE_KEYS_PER_PART=256 GRAVITY_DECODE_VSPLIT=1
pp parts256 1000 GRAVITY_DECODE_KEYS_PER_PART=256
pp parts334 1000 GRAVITY_DECODE_KEYS_PER_PART=334
pp parts500 1000 GRAVITY_DECODE_KEYS_PER_PART=500
pp split-kernel 2048 GRAVITY_DECODE_KEYS_PER_PART=0
pp parts1024 2048 GRAVITY_DECODE_KEYS_PER_PART=1024 GRAVITY_DECODE_SHORT_KEYS=4096
pp parts512 2048 GRAVITY_DECODE_KEYS_PER_PART=512 GRAVITY_DECODE_SHORT_KEYS=4096
pp parts256-again 512 GRAVITY_DECODE_KEYS_PER_PART=256
} > "$OUT/probe.txt" 2>&1
grep -E "==|GPU busy" "$OUT/probe.txt"
