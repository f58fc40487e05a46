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
pp o-ksplit2 512 GRAVITY_GEMV_KSPLIT_SHORT=2
pp o-ksplit4 512 GRAVITY_GEMV_KSPLIT_SHORT=4
pp head-wg512 512 GRAVITY_DECODE_HEAD_WG=512
pp vs4 512 GRAVITY_DECODE_VSPLIT=4
pp default-again 512 X=1
pp o-ksplit2-again 512 GRAVITY_GEMV_KSPLIT_SHORT=2
