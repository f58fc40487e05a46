#!/usr/bin/env bash
# Decode settings side by side on the GPU machine, one process per setting (see bench/run-h200.sh for the whole
# benchmark; bench/RESULTS.md has the settings tried in earlier calls):
#   source .device/setup.sh >/dev/null && bash bench/run-h200-decode.sh   (needs /tmp/q3b from bench_torch.py)
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
# one file per setting would overrun the 8 files the device returns: everything goes to decode-settings.txt
dec() { local name=$1; shift; echo "== $name"; env "$@" timeout 40 node dist/bench/gpu.js --dir /tmp/q3b --skip attn --prefill 512 --decode 64 2>&1 | grep -E 'step loop|^decode after'; }
{
dec default X=1
dec attn-old GRAVITY_DECODE_ATTN=old
dec unroll8 GRAVITY_GEMV_UNROLL=8
dec flush4096 GRAVITY_WEBGPU_FLUSH_EVERY=4096
} > "$OUT/decode-settings.txt"
grep -E '^==|^decode after 512, (gravity|dot) \(tok/s\)' "$OUT/decode-settings.txt"
exit 0
