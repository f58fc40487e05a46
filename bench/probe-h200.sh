#!/usr/bin/env bash
# Decode experiments on the GPU machine (settings as env vars), judged by the GPU's busy time per token (compute-pass
# timestamps), which is steady between processes where the wall time is not:
#   source .device/setup.sh >/dev/null && bash bench/probe-h200.sh
# This round: decode attention as key-split partials merged by the o projection (GRAVITY_DECODE_PARTS, 0 = off, the
# previous default), defaults against the whole-head and split kernels, up to 4096 keys.
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
[ -f /tmp/q3b/config.json ] || timeout 120 python3 reference/bench_torch.py --dir /tmp/q3b --json /tmp/q3b.json --make-only > /dev/null 2>&1
timeout 60 node dist/bench/gpu-check.js > "$OUT/check.txt" 2>&1; tail -3 "$OUT/check.txt"
# the fixtures' prompts are short: split every 4 keys so that the partials path runs on this card too
GRAVITY_DECODE_PARTS=3 GRAVITY_DECODE_PART_MIN_KEYS=1 timeout 60 node dist/bench/gpu-check.js > "$OUT/check-parts.txt" 2>&1; tail -3 "$OUT/check-parts.txt"
# pp NAME CONTEXT VAR=value ...: busy time per token (and tok/s) of greedy decode after CONTEXT tokens
pp() { local name=$1 ctx=$2; shift 2; echo "== $name (after $ctx)"; env "$@" timeout 60 node dist/bench/gpu.js --dir /tmp/q3b --skip attn --prefill 512 --context "$ctx" --decode 64 --profile-passes 2>&1 | grep -E 'GPU busy|^decode after [0-9]+, (gravity|dot)' | sort; }
{
pp default 512 X=1
pp parts4 512 GRAVITY_DECODE_PARTS=4
pp default 2048 X=1
pp default-2 512 X=1
} > "$OUT/probe.txt" 2>&1
grep -E "==|GPU busy" "$OUT/probe.txt"
