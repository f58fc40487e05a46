#!/usr/bin/env bash
# Decode experiments on the GPU machine (settings as env vars), judged by the GPU's busy time per token (compute-pass
# timestamps), which is steady between processes where the wall time is not:
#   source .device/setup.sh >/dev/null && bash bench/probe-h200.sh
set -u
[ -f /tmp/q3b/config.json ] || timeout 120 python3 reference/bench_torch.py --dir /tmp/q3b --json /tmp/q3b.json --make-only > /dev/null 2>&1
timeout 60 node dist/bench/gpu-check.js 2>&1 | tail -2
GRAVITY_DECODE_SHORT_KEYS=0 timeout 60 node dist/bench/gpu-check.js 2>&1 | tail -1
echo "== decode kernels alone"
timeout 120 node dist/bench/gpu.js --gemv --dir /tmp/q3b 2>&1 | grep -E "^attention"
pp() { local name=$1; shift; echo "== $name"; env "$@" timeout 45 node dist/bench/gpu.js --dir /tmp/q3b --skip attn --prefill 512 --decode 64 --profile-passes 2>&1 | grep -E 'GPU busy|^decode after 512, (gravity|dot|gravity sampled) \(' | sort; }
pp base X=1
pp vs2 GRAVITY_DECODE_VSPLIT=2
pp vs4 GRAVITY_DECODE_VSPLIT=4
pp vs4-u2 GRAVITY_DECODE_VSPLIT=4 GRAVITY_DECODE_UNROLL=2
pp vs2-u2 GRAVITY_DECODE_VSPLIT=2 GRAVITY_DECODE_UNROLL=2
pp u2 GRAVITY_DECODE_UNROLL=2
pp u1 GRAVITY_DECODE_UNROLL=1
pp vs4-u2-gemv2 GRAVITY_DECODE_VSPLIT=4 GRAVITY_DECODE_UNROLL=2 GRAVITY_GEMV_UNROLL=2
pp split-K GRAVITY_DECODE_SHORT_KEYS=0
