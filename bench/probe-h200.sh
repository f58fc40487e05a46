#!/usr/bin/env bash
# Decode experiments on the GPU machine (settings as env vars), judged by the GPU's busy time per token (compute-pass
# timestamps), which is steady between processes where the wall time is not:
#   source .device/setup.sh >/dev/null && bash bench/probe-h200.sh
set -u
[ -f /tmp/q3b/config.json ] || timeout 120 python3 reference/bench_torch.py --dir /tmp/q3b --json /tmp/q3b.json --make-only > /dev/null 2>&1
timeout 60 node dist/bench/gpu-check.js 2>&1 | tail -3
# pp NAME CONTEXT VAR=value ...: busy time per token (and tok/s) of greedy decode after CONTEXT tokens
pp() { local name=$1 ctx=$2; shift 2; echo "== $name (after $ctx)"; env "$@" timeout 60 node dist/bench/gpu.js --dir /tmp/q3b --skip attn --prefill 512 --context "$ctx" --decode 64 --profile-passes 2>&1 | grep -E 'GPU busy|^decode after [0-9]+, (gravity|dot|gravity sampled) \(' | sort; }
pp default 512 X=1
pp split-K 512 GRAVITY_DECODE_SHORT_KEYS=0
pp per-head 2048 GRAVITY_DECODE_SHORT_KEYS=4096
pp split-K 2048 GRAVITY_DECODE_SHORT_KEYS=0
pp default-again 512 X=1
echo "== wall clock, default settings, no profiling"
for i in 1 2; do timeout 60 node dist/bench/gpu.js --dir /tmp/q3b --skip attn --prefill 512 --decode 64 2>&1 | grep -E '^\| decode after'; done
