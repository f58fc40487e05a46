#!/usr/bin/env bash
# Decode settings side by side on the GPU machine, one process per setting (see bench/run-h200.sh for the whole
# benchmark; bench/RESULTS.md has the settings tried in earlier calls):
#   source .device/setup.sh >/dev/null && bash bench/run-h200-decode.sh
# Writes the random 3B checkpoint if /tmp/q3b is missing, checks the kernels against the PyTorch fixtures, then
# times greedy decode after 512 tokens per setting; the first setting also prints the GPU's busy time per token
# (compute-pass timestamps) next to the wall time, which says whether the GPU or the host's recording is the limit.
set -u
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
[ -f /tmp/q3b/config.json ] || timeout 120 python3 reference/bench_torch.py --dir /tmp/q3b --json /tmp/q3b.json --make-only > "$OUT/make.txt" 2>&1
timeout 60 node dist/bench/gpu-check.js > "$OUT/check.txt" 2>&1
tail -3 "$OUT/check.txt"
GRAVITY_PREFETCH_MB=24 timeout 60 node dist/bench/gpu-check.js > "$OUT/check-warm.txt" 2>&1
tail -3 "$OUT/check-warm.txt"
# one file per setting would overrun the 8 files the device returns: everything goes to decode-settings.txt
# dec NAME [VAR=value ...] [-- gpu.js options]
dec() {
  local name=$1; shift; local vars=(); while [ $# -gt 0 ] && [ "$1" != "--" ]; do vars+=("$1"); shift; done; [ $# -gt 0 ] && shift
  echo "== $name"; env "${vars[@]}" timeout 45 node dist/bench/gpu.js --dir /tmp/q3b --skip attn --prefill 512 --decode 64 "$@" 2>&1 | grep -E 'step loop|^decode after|GPU busy'
}
{
dec warm0-profiled GRAVITY_PREFETCH_MB=0 -- --profile-passes
dec warm24-profiled GRAVITY_PREFETCH_MB=24 -- --profile-passes
for mb in 0 8 16 32; do dec warm$mb GRAVITY_PREFETCH_MB=$mb; done
dec warm24-wg48 GRAVITY_PREFETCH_MB=24 GRAVITY_PREFETCH_WG=48
dec warm24-wg160 GRAVITY_PREFETCH_MB=24 GRAVITY_PREFETCH_WG=160
dec warm0-again GRAVITY_PREFETCH_MB=0
dec warm24-again GRAVITY_PREFETCH_MB=24
} > "$OUT/decode-settings.txt"
grep -E '^==|^decode after 512, (gravity|dot|gravity sampled) \(tok/s\)|GPU busy' "$OUT/decode-settings.txt"
[ -n "${HOST_COSTS:-}" ] || exit 0
# the host side alone: cost per dispatch against bare Dawn calls, and a token's recording on a 36-layer, 128-wide model
{
timeout 60 node dist/bench/gpu-dispatch.js 2>&1 | grep -v Warning
echo '{"architectures":["Qwen2ForCausalLM"],"model_type":"qwen2","hidden_size":128,"intermediate_size":256,"num_hidden_layers":36,"num_attention_heads":16,"num_key_value_heads":2,"vocab_size":1024,"max_position_embeddings":4096,"rms_norm_eps":1e-6,"rope_theta":1000000,"tie_word_embeddings":true,"torch_dtype":"bfloat16"}' > /tmp/m36.json
[ -d /tmp/m36 ] || node dist/src/cli/main.js init-random --config /tmp/m36.json --out /tmp/m36 > /dev/null
timeout 60 node dist/bench/gpu-record.js --dir /tmp/m36 --tokens 60 --reps 2 2>&1 | grep -v Warning
} > "$OUT/host.txt" 2>&1
cat "$OUT/host.txt"
exit 0
