#!/usr/bin/env bash
# The gravity-mini experiment (issue 5): data, one shared init, phase 1 (from scratch, in parallel), phase 2 (LoRA
# conversions of base-dot to gravity, in parallel), test-set accuracy of every model, figures, results.json and the
# best gravity model packed for models/gravity-mini. Runs from the BUILT dist/ with plain `node` (no tsx).
#
#   bash scripts/gravity-mini/run.sh OUT [--phase1-s S] [--phase2-s S] [--deadline-s S] [--steps1 N] [--steps2 N] [--parallel P]
#                                        [--threads T] [--digits D] [--train N] [--lr X] [--only NAME,NAME]
#                                        [--work DIR] [--tiny] [--calibrate]
# --only runs a subset of the table below, e.g. one longer run for the bundled model:
#   bash scripts/gravity-mini/run.sh OUT2 --only gravity-scratch --phase1-s 420 --threads 8
#
# OUT receives only a few files (the GPU machine returns at most 8 files from $OUT):
#   results.json  run.log  runs.tar.gz (per run: metrics, run.json, eval.json, logs, figures)  best-model.tar.gz
# Then, here: node scripts/gravity-mini/report.mjs OUT   (docs/EXPERIMENTS.md, docs/figures, models/gravity-mini).
#
# Without --steps1/--steps2 the step counts come from a calibration: every phase-1 run takes a few steps under the
# same parallel load, and steps = 0.85 (phase budget - start-up - evaluations) / slowest seconds per step. Phase 2
# is then re-sized from phase 1's measured step times and overheads (same load: as many runs at once) and the time
# left before the deadline. A run still going at 1.4x its phase budget (or too close to the deadline) gets SIGINT:
# it saves a checkpoint, which is then used as its result and reported as timed out.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CLI="$ROOT/dist/src/cli/main.js"
HERE="$ROOT/scripts/gravity-mini"
[ -f "$CLI" ] || { echo "run.sh: $CLI missing: build first (npm run build)" >&2; exit 2; }

OUT=""
PHASE1_S=200       # wall seconds of phase 1 (7 runs at once)
PHASE2_S=140       # wall seconds of phase 2 (7 runs at once)
DEADLINE_S=520     # the whole script, from its start: runs are stopped (and evaluation cut) to end by then
STEPS1=""
STEPS2=""
PARALLEL=8
THREADS=2
DIGITS=2
NTRAIN=20000
NVAL=500
NTEST=500
SEQ=128
BATCH=8
LR_FULL=3e-3
LR_LORA=3e-3
CAL_STEPS=8
EVAL_LIMIT=""      # only the first N test problems (tiny runs)
WORK=""
TINY=0
FORCE_CAL=0
ONLY=""
while [ $# -gt 0 ]; do
  case "$1" in
    --phase1-s) PHASE1_S=$2; shift 2 ;;
    --phase2-s) PHASE2_S=$2; shift 2 ;;
    --deadline-s) DEADLINE_S=$2; shift 2 ;;
    --steps1) STEPS1=$2; shift 2 ;;
    --steps2) STEPS2=$2; shift 2 ;;
    --parallel) PARALLEL=$2; shift 2 ;;
    --threads) THREADS=$2; shift 2 ;;
    --digits) DIGITS=$2; shift 2 ;;
    --train) NTRAIN=$2; shift 2 ;;
    --work) WORK=$2; shift 2 ;;
    --tiny) TINY=1; shift ;;
    --calibrate) FORCE_CAL=1; shift ;;
    --only) ONLY=$2; shift 2 ;;
    --lr) LR_FULL=$2; LR_LORA=$2; shift 2 ;;
    -h|--help) sed -n 2,16p "$0"; exit 0 ;;
    -*) echo "run.sh: unknown option $1" >&2; exit 2 ;;
    *) [ -z "$OUT" ] || { echo "run.sh: one OUT folder only" >&2; exit 2; }; OUT=$1; shift ;;
  esac
done
[ -n "$OUT" ] || { echo "usage: bash scripts/gravity-mini/run.sh OUT [options] (--help)" >&2; exit 2; }
if [ "$TINY" = 1 ]; then
  # a smoke test of the whole pipeline: tiny data, a few steps, 20 test problems
  NTRAIN=${NTRAIN_TINY:-300}; NVAL=40; NTEST=40; STEPS1=${STEPS1:-3}; STEPS2=${STEPS2:-2}; EVAL_LIMIT=20; BATCH=4
fi
[ "$FORCE_CAL" = 1 ] && { STEPS1=""; STEPS2=""; }
MAXTOK=$(( DIGITS <= 2 ? 96 : 64 * DIGITS ))
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
WORK=${WORK:-$(mktemp -d /tmp/gravity-mini.XXXXXX)}
mkdir -p "$WORK"
WORK=$(cd "$WORK" && pwd)
LOG="$OUT/run.log"
: > "$LOG"
say() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$LOG" >&2; }
T0=$(date +%s)
left() { echo $(( DEADLINE_S - ($(date +%s) - T0) )); }
clamp() { local v=$1 lo=$2 hi=$3; [ "$v" -lt "$lo" ] && v=$lo; [ "$v" -gt "$hi" ] && v=$hi; echo "$v"; }
gravity() { node "$CLI" "$@"; }
export GRAVITY_NO_PROGRESS=1

say "gravity-mini: out $OUT, work $WORK, $(nproc) cores, node $(node --version), parallel $PARALLEL x $THREADS threads"

# ---- (a) data, (b) the shared init
DATA="$WORK/data"
gravity task make --out "$DATA" --train "$NTRAIN" --val "$NVAL" --test "$NTEST" --digits "$DIGITS" --seed 0 \
  --tokenizer "$ROOT/models/gravity-mini" 2>&1 | tee -a "$LOG"
INIT="$WORK/init"
gravity init-random --config gravity-mini --init train --dtype f32 --seed 0 --out "$INIT" --force 2>&1 | tee -a "$LOG"
cp "$ROOT/models/gravity-mini/tokenizer.json" "$ROOT/models/gravity-mini/tokenizer_config.json" "$INIT/"

# ---- run table: name | phase | base (init or base-dot) | method | seed | gravity train flags
# LoRA: r 16, alpha 32 on q,k,v,o (the card's stage 1), masses trained; every from-scratch run starts from $INIT.
RUNS=(
  "base-dot|1|init|full|0|--attn dot"
  "gravity-scratch|1|init|full|0|--attn gravity --train-masses --mass-init raw:0.5 --eps 0.1"
  "gravity-scratch-mass0.5|1|init|full|0|--attn gravity --train-masses --mass-init mass:0.5 --eps 0.1"
  "gravity-scratch-group|1|init|full|0|--attn gravity --train-masses --mass-init raw:0.5 --eps 0.1 --mass-per-group"
  "gravity-scratch-pure|1|init|full|0|--attn gravity-pure --train-masses --mass-init raw:0.5 --eps 0.1"
  "gravity-scratch-seed1|1|init|full|1|--attn gravity --train-masses --mass-init raw:0.5 --eps 0.1"
  "base-dot-seed1|1|init|full|1|--attn dot"
  "stage1|2|base-dot|lora|0|--attn gravity --train-masses --mass-init raw:0.5 --eps 0.1"
  "stage1-mass0.5|2|base-dot|lora|0|--attn gravity --train-masses --mass-init mass:0.5 --eps 0.1"
  "stage1-group|2|base-dot|lora|0|--attn gravity --train-masses --mass-init raw:0.5 --eps 0.1 --mass-per-group"
  "stage1-eps0.01|2|base-dot|lora|0|--attn gravity --train-masses --mass-init raw:0.5 --eps 0.01"
  "stage1-eps1|2|base-dot|lora|0|--attn gravity --train-masses --mass-init raw:0.5 --eps 1.0"
  "stage1-pure|2|base-dot|lora|0|--attn gravity-pure --train-masses --mass-init raw:0.5 --eps 0.1"
  "stage1-seed1|2|base-dot|lora|1|--attn gravity --train-masses --mass-init raw:0.5 --eps 0.1"
)
field() { echo "$1" | cut -d'|' -f"$2"; }
if [ -n "$ONLY" ]; then
  KEEP=()
  for r in "${RUNS[@]}"; do [[ ",$ONLY," == *",$(field "$r" 1),"* ]] && KEEP+=("$r"); done
  [ "${#KEEP[@]}" -gt 0 ] || { echo "run.sh: --only $ONLY matches no run" >&2; exit 2; }
  RUNS=("${KEEP[@]}")
fi
runs_of_phase() { for r in "${RUNS[@]}"; do [ "$(field "$r" 2)" = "$1" ] && echo "$r"; done; return 0; }
[ -n "$(runs_of_phase 2)" ] || PHASE2_S=0

# the gravity train arguments of a run (without --out/--steps/--eval-every), relative to $WORK so the
# commands read the same in docs/EXPERIMENTS.md; $2 = 0 leaves out the validation data (calibration)
train_args() {
  local r=$1 val=${2:-1} base method seed flags
  base=$(field "$r" 3); method=$(field "$r" 4); seed=$(field "$r" 5); flags=$(field "$r" 6)
  local model=init; [ "$base" = base-dot ] && model=runs/base-dot
  local v=""; [ "$val" = 1 ] && v=" --val-data data/val.jsonl"
  echo -n "--model $model --data data/train.jsonl$v --seq-len $SEQ --batch-size $BATCH --seed $seed $flags "
  if [ "$method" = full ]; then echo -n "--full --lr $LR_FULL --weight-decay 0.01"; else echo -n "--lora-r 16 --lora-alpha 32 --lora-targets q_proj,k_proj,v_proj,o_proj --lr $LR_LORA"; fi
  echo -n " --warmup-steps $(( $3 / 20 )) --min-lr-ratio 0.1"
}

# pool FUNC ITEM...: FUNC ITEM in the background (in $WORK), at most $PARALLEL at a time; waits for all
pool() {
  local fn=$1 item; shift
  for item in "$@"; do
    while [ "$(jobs -rp | wc -l)" -ge "$PARALLEL" ]; do wait -n || true; done
    ( cd "$WORK" && "$fn" "$item" ) &
  done
  wait || true
}
ms() { echo $(( $(date +%s%N) / 1000000 )); }

# one training run in DIR/NAME (model or adapter, metrics.jsonl), with train.log, cmd.txt and status.json;
# TR_STEPS, TR_DIR, TR_VAL, TR_LIMIT (hard stop in seconds) set by the caller
do_train() {
  local r=$1 name; name=$(field "$r" 1)
  local ev=0; [ "$TR_VAL" = 1 ] && ev=$(eval_every "$TR_STEPS")
  local args="$(train_args "$r" "$TR_VAL" "$TR_STEPS") --out $TR_DIR/$name --steps $TR_STEPS --eval-every $ev --save-every 0 --log-every 10 --no-figures"
  mkdir -p "$TR_DIR/$name"
  echo "gravity train $args" > "$TR_DIR/$name/cmd.txt"
  local s rc=0; s=$(ms)
  # shellcheck disable=SC2086
  GRAVITY_THREADS=$THREADS timeout -s INT -k 20 "$TR_LIMIT" node "$CLI" train $args > "$TR_DIR/$name/train.log" 2>&1 || rc=$?
  echo "{\"exit_code\": $rc, \"wall_ms\": $(( $(ms) - s ))}" > "$TR_DIR/$name/status.json"
}

EVAL_PER_RUN=3   # validation at step 0, halfway and the end (each costs ~10 steps: they are not free)
eval_every() { local e=$(( ($1 + 1) / 2 )); [ "$e" -lt 1 ] && e=1; echo "$e"; }

cd "$WORK"
mkdir -p runs
printf '%s\n' "${RUNS[@]}" > runs/table.txt
STEPS2_AUTO=0
[ "$PHASE2_S" = 0 ] && STEPS2=${STEPS2:-0}
if [ -z "$STEPS1" ] || [ -z "$STEPS2" ]; then
  # calibration: every phase-1 run for a few steps, all at once (the real load), no validation
  mapfile -t P1 < <(runs_of_phase 1)
  say "calibrating: ${#P1[@]} runs x $CAL_STEPS steps at once"
  TR_STEPS=$CAL_STEPS TR_DIR=calib TR_VAL=0 TR_LIMIT=300 pool do_train "${P1[@]}"
  read -r STEPS1_C STEPS2_C < <(node "$HERE/helper.mjs" steps "$WORK/calib" "$CAL_STEPS" "$PHASE1_S" "$PHASE2_S" "$NVAL" "$NTRAIN" "$BATCH" "$EVAL_PER_RUN" 2>>"$LOG")
  say "calibration: $(cat "$WORK/calib/summary.txt" 2>/dev/null)"
  STEPS1=${STEPS1:-$STEPS1_C}
  [ -z "$STEPS2" ] && STEPS2_AUTO=1
  STEPS2=${STEPS2:-$STEPS2_C}
  rm -rf "$WORK/calib"
fi
say "steps: phase 1 $STEPS1, phase 2 $STEPS2 (batch $BATCH x seq $SEQ)"

# ---- (c) phase 1, (d) phase 2; a run still going at twice its budget is stopped (reported as timed out)
phase() {
  local p=$1 r
  mapfile -t PR < <(runs_of_phase "$p")
  say "phase $p: ${#PR[@]} runs x $TR_STEPS steps"
  TR_DIR=runs TR_VAL=1 pool do_train "${PR[@]}"
  for r in "${PR[@]}"; do
    r=$(field "$r" 1)
    say "  $r: $(cat runs/$r/status.json) $(tail -1 runs/$r/train.log)"
    # a run stopped by the time limit saved a checkpoint on SIGINT but no final folder: promote the checkpoint
    local ck; ck=$(ls -d runs/$r/checkpoint-* 2>/dev/null | sort -t- -k2 -n | tail -1 || true)
    if [ -n "$ck" ] && [ ! -f runs/$r/model.safetensors ] && [ ! -f runs/$r/adapter_config.json ]; then
      say "  $r: using $ck (the run did not finish)"
      find "$ck" -maxdepth 1 -type f ! -name optimizer.safetensors -exec mv {} runs/$r/ \;
    fi
    rm -rf runs/$r/checkpoint-* runs/$r/optimizer.safetensors
  done
}
TR_STEPS=$STEPS1 TR_LIMIT=$(clamp $(( $(left) - PHASE2_S - 90 )) 30 $(( PHASE1_S * 14 / 10 ))) phase 1
if [ "$PHASE2_S" = 0 ]; then
  say "no phase-2 run selected"
elif [ -f runs/base-dot/model.safetensors ]; then
  P2=$(clamp $(( $(left) - 90 )) 20 "$PHASE2_S")
  if [ "$STEPS2_AUTO" = 1 ]; then
    STEPS2=$(node "$HERE/helper.mjs" resize "$WORK/runs" "$P2" 2>>"$LOG" || echo "$STEPS2")
    say "phase 2 re-sized from phase 1's step times: $STEPS2 steps in ${P2} s"
  fi
  TR_STEPS=$STEPS2 TR_LIMIT=$(clamp $(( $(left) - 80 )) 20 $(( P2 * 14 / 10 ))) phase 2
else
  say "base-dot has no model: phase 2 cannot start"
fi

# ---- (e) test-set accuracy of every model (one thread each: decoding a 2.5M model is latency-bound)
do_eval() {
  local r=$1 name method flags attn eps
  name=$(field "$r" 1); method=$(field "$r" 4); flags=$(field "$r" 6)
  [ -f "runs/$name/adapter_config.json" ] || [ -f "runs/$name/model.safetensors" ] || return 0
  attn=$(echo "$flags" | sed -E 's/.*--attn ([a-z-]+).*/\1/'); eps=$(echo "$flags" | sed -nE 's/.*--eps ([0-9.e-]+).*/\1/p')
  local model="--model runs/$name"
  [ "$method" = lora ] && model="--model runs/base-dot --adapter runs/$name"
  local args="$model --attn $attn${eps:+ --eps $eps} --data data/test.jsonl --max-tokens $MAXTOK --json${EVAL_LIMIT:+ --limit $EVAL_LIMIT}"
  echo "gravity task eval $args" > "runs/$name/eval-cmd.txt"
  # shellcheck disable=SC2086
  GRAVITY_THREADS=1 timeout -k 5 "$EV_LIMIT" node "$CLI" task eval $args > "runs/$name/eval.json" 2> "runs/$name/eval.log" || rm -f "runs/$name/eval.json"
}
say "evaluating ${#RUNS[@]} models on data/test.jsonl${EVAL_LIMIT:+ (first $EVAL_LIMIT)}"
TRAIN_PARALLEL=$PARALLEL
PARALLEL=$(( $(nproc) > 2 ? $(nproc) - 1 : 2 ))
EV_LIMIT=$(clamp $(( $(left) - 35 )) 20 600) pool do_eval "${RUNS[@]}"
PARALLEL=$TRAIN_PARALLEL

# ---- (f) figures
for r in "${RUNS[@]}"; do
  n=$(field "$r" 1)
  [ -f "runs/$n/metrics.jsonl" ] && gravity plot "runs/$n" > /dev/null 2>> "$LOG" || say "  no figures for $n"
done

# ---- (g) results.json, the best gravity model
node "$HERE/helper.mjs" collect "$WORK" "$OUT/results.json" \
  "{\"digits\":$DIGITS,\"train\":$NTRAIN,\"val\":$NVAL,\"test\":$NTEST,\"task_seed\":0,\"init_seed\":0,\"seq_len\":$SEQ,\"batch_size\":$BATCH,\"lr_full\":$LR_FULL,\"lr_lora\":$LR_LORA,\"threads\":$THREADS,\"parallel\":$PARALLEL,\"steps1\":$STEPS1,\"steps2\":$STEPS2,\"phase1_s\":$PHASE1_S,\"phase2_s\":$PHASE2_S,\"max_tokens\":$MAXTOK,\"eval_limit\":${EVAL_LIMIT:-null},\"tiny\":$TINY,\"only\":\"$ONLY\",\"cores\":$(nproc),\"node\":\"$(node --version)\"}" 2>&1 | tee -a "$LOG"
BEST=$(node "$HERE/helper.mjs" best "$OUT/results.json")
if [ -n "$BEST" ]; then
  say "best gravity model: $BEST"
  rm -rf best
  node "$HERE/helper.mjs" export "$WORK" "$BEST" "$WORK/best" 2>&1 | tee -a "$LOG"
  # check the exported folder answers like the run did (no --model flags beyond the folder itself)
  timeout -k 5 "$(clamp $(( $(left) - 10 )) 15 300)" node "$CLI" task eval --model best --data data/test.jsonl --max-tokens "$MAXTOK" --json --limit "${EVAL_LIMIT:-100}" > best/eval.json 2>> "$LOG" || say "exported model failed its evaluation"
  say "exported: $(cat best/eval.json 2>/dev/null | head -c 200)"
  tar -C "$WORK" -czf "$OUT/best-model.tar.gz" best
else
  say "no gravity model finished: nothing to export"
fi

# ---- pack the per-run files (the GPU machine returns few files)
tar -C "$WORK" -czf "$OUT/runs.tar.gz" \
  $(cd "$WORK" && ls -d runs/*/{metrics.jsonl,run.json,trainer_state.json,cmd.txt,eval-cmd.txt,eval.json,train.log,eval.log,status.json,*.png,*.svg} runs/table.txt data/*.jsonl 2>/dev/null | grep -v 'data/train.jsonl')
say "done in $(( $(date +%s) - T0 )) s: $(ls "$OUT" | tr '\n' ' ')"
