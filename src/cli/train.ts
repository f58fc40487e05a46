/** `gravity train`: LoRA / mass / norm fine-tuning, or full training (--full), of a model folder on a text, chat or token-id dataset. */
import { existsSync, readFileSync, realpathSync } from 'node:fs';
import { join } from 'node:path';
import { parseAttentionKind } from '../attention/registry.js';
import { fail } from '../errors.js';
import { parseConfig } from '../io/config.js';
import { isGgufFile } from '../io/gguf.js';
import { openModelSource } from '../io/model-source.js';
import type { ModelConfig } from '../model/config.js';
import { modelDefaults } from '../model/load.js';
import { crc32 } from '../io/zip.js';
import { TextTokenizer } from '../tokenizer/tokenizer.js';
import { BatchSchedule, evalBatches, loadData, overlapCount, splitValidation, type DataOptions, type PackedData } from '../train/data.js';
import { runTraining } from '../train/loop.js';
import { writeRunFigures } from '../viz/figures.js';
import { UsageError, flag, int, num, parseCommand, required, str, type Values } from './args.js';

export const usage = `usage: gravity train --model DIR --data FILE --out DIR [options]

Fine-tunes LoRA adapters (and optionally the gravity masses and RMSNorm weights) of a Qwen2/Llama model folder,
or trains every weight (--full; start from scratch with gravity init-random --config FILE.json --out DIR).
Writes OUT/metrics.jsonl, OUT/checkpoint-<step>/, the final adapter (PEFT layout) or, with --full, a complete
model folder (config.json, model.safetensors, tokenizer, masses) and figures into OUT.

data:
  --data FILE            .jsonl ({"text"}, {"messages"} (loss on assistant turns only), {"input_ids", "labels"?})
                         or a plain text file; packed into --seq-len windows with eos separators
  --val-data FILE        validation data (same formats)
  --val-fraction F       or: hold out this fraction of the packed windows (seeded; never in training)
  --seq-len L            tokens per window (default min(512, max_position_embeddings)); longer chat / input_ids
                         records are truncated with a warning
  --batch-size B         windows per micro-batch (default 4)
  --grad-accum K         micro-batches per optimizer step (default 1)
  --steps N | --epochs E length of the run (default 1 epoch)
  --seed S               shuffling, validation split, LoRA init, dropout (default 0)

what to train:
  --lora-r R             LoRA rank (default 16)
  --lora-alpha A         LoRA alpha; scaling = alpha / r (default 32)
  --lora-dropout P       dropout on the LoRA input (default 0)
  --lora-targets LIST    q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj or all (default q,k,v,o)
  --init-adapter DIR     start from a PEFT adapter (its r, alpha and targets are used)
  --train-masses         also train the gravity masses (mass_log per head)
  --train-norms          also train the RMSNorm weights
  --full                 train every weight (embeddings, linears, biases, norms, lm_head) with f32 masters;
                         no LoRA; weight decay only on the matrices (not norms, biases, masses)
  --save-dtype f32|bf16  --full: dtype of the saved model.safetensors (default f32)
  --mass-per-group       one mass per KV group instead of one per query head (saved as [layers, kv_heads])

optimizer:
  --optimizer adamw|sgd  (default adamw)
  --lr X                 peak learning rate (default 2e-4); linear warmup then cosine decay
  --warmup-steps W       (default 0)
  --min-lr-ratio R       final lr / peak lr (default 0)
  --weight-decay D       (default 0)
  --max-grad-norm G      clip the global gradient norm, 0 = off (default 1)

model:
  --model DIR            model folder (config.json, *.safetensors, masses, tokenizer.json)
  --attn KIND            gravity, dot or gravity-pure (gravity scores / their sum, no softmax; the mass
                         cancels there); default: the model's config.json gravity_attention, else gravity
  --masses FILE          gravity masses overriding the folder's
  --mass-init SPEC       masses when the folder has none (with --full: replacing the folder's): raw:0.5 or mass:0.5
  --eps E                gravity softening epsilon (default: config.json gravity_eps, else 0.1); saved with
                         the run and, with --full, into the saved config.json
  --device cpu|webgpu    (default cpu)

run:
  --out DIR              output folder
  --eval-every N         validation loss every N steps (default 100; also at the start and the end)
  --save-every N         checkpoint every N steps (default 100; also at the end and on Ctrl-C)
  --log-every N          without a terminal: one log line every N steps (default 10)
  --resume               continue from the newest OUT/checkpoint-<step> (same data order)
  --no-figures           skip the figures (loss.png/svg, masses.png/svg, grad_norms.png/svg)
`;

const OPTIONS = {
  model: { type: 'string', short: 'm' },
  data: { type: 'string' },
  'val-data': { type: 'string' },
  'val-fraction': { type: 'string' },
  'init-adapter': { type: 'string' },
  'lora-r': { type: 'string' },
  'lora-alpha': { type: 'string' },
  'lora-dropout': { type: 'string' },
  'lora-targets': { type: 'string' },
  'train-masses': { type: 'boolean' },
  'train-norms': { type: 'boolean' },
  full: { type: 'boolean' },
  'save-dtype': { type: 'string' },
  'mass-per-group': { type: 'boolean' },
  optimizer: { type: 'string' },
  lr: { type: 'string' },
  steps: { type: 'string' },
  epochs: { type: 'string' },
  'batch-size': { type: 'string' },
  'seq-len': { type: 'string' },
  'grad-accum': { type: 'string' },
  'max-grad-norm': { type: 'string' },
  'warmup-steps': { type: 'string' },
  'min-lr-ratio': { type: 'string' },
  'weight-decay': { type: 'string' },
  attn: { type: 'string' },
  masses: { type: 'string' },
  'mass-init': { type: 'string' },
  eps: { type: 'string' },
  seed: { type: 'string' },
  'eval-every': { type: 'string' },
  'save-every': { type: 'string' },
  'log-every': { type: 'string' },
  resume: { type: 'boolean' },
  device: { type: 'string' },
  out: { type: 'string', short: 'o' },
  'no-figures': { type: 'boolean' },
} as const;

function nonNeg(v: Values, name: string, dflt: number, integer = true): number {
  const x = integer ? int(v, name) : num(v, name);
  if (x === undefined) return dflt;
  if (x < 0) fail(`--${name} ${x}: must be >= 0`);
  return x;
}

function positive(v: Values, name: string, dflt: number, integer = true): number {
  const x = nonNeg(v, name, dflt, integer);
  if (x === 0) fail(`--${name} 0: must be > 0`);
  return x;
}

function sameFile(a: string, b: string): boolean {
  try {
    return realpathSync(a) === realpathSync(b);
  } catch {
    return false;
  }
}

function dataCrc(d: PackedData): number {
  return crc32(new Uint8Array(d.ids.buffer, d.ids.byteOffset, d.ids.byteLength), crc32(new Uint8Array(d.labels.buffer, d.labels.byteOffset, d.labels.byteLength)));
}

export async function run(argv: string[]): Promise<number> {
  const v = parseCommand(argv, OPTIONS, usage);
  if (!v) return 0;
  const modelDir = required(v, 'model', usage);
  const dataFile = required(v, 'data', usage);
  const out = required(v, 'out', usage);
  const say = (s: string) => process.stderr.write(s + '\n');

  // ---- model facts the data needs (without loading weights)
  let cfg: ModelConfig;
  let tokenizer: TextTokenizer | null;
  if (isGgufFile(modelDir)) {
    // a GGUF base: its metadata has the config and the tokenizer
    const src = await openModelSource(modelDir);
    src.weights.close();
    cfg = src.config;
    tokenizer = src.tokenizerJson ? TextTokenizer.fromObjects(src.tokenizerJson, src.tokenizerConfig) : null;
  } else {
    const cfgPath = join(modelDir, 'config.json');
    if (!existsSync(cfgPath)) fail(`${modelDir}: no config.json (is --model a model folder or a .gguf file?)`);
    let cfgJson: unknown;
    try {
      cfgJson = JSON.parse(readFileSync(cfgPath, 'utf8'));
    } catch (e) {
      fail(`${cfgPath}: invalid JSON (${(e as Error).message})`);
    }
    cfg = parseConfig(cfgJson, cfgPath);
    tokenizer = TextTokenizer.hasTokenizer(modelDir) ? TextTokenizer.fromDir(modelDir) : null;
  }
  const eosFromTok = tokenizer?.eosToken ? tokenizer.tokenToId(tokenizer.eosToken) : undefined;
  const eosId = eosFromTok ?? cfg.eosTokenIds[0];
  if (eosId === undefined) fail(`${modelDir}: no eos token (neither tokenizer_config.json eos_token nor config.json eos_token_id); packing needs a separator`);

  const seqLen = positive(v, 'seq-len', Math.min(512, cfg.maxPositionEmbeddings));
  if (seqLen > cfg.maxPositionEmbeddings) fail(`--seq-len ${seqLen} is longer than the model's max_position_embeddings ${cfg.maxPositionEmbeddings}`);
  const batchSize = positive(v, 'batch-size', 4);
  const gradAccum = positive(v, 'grad-accum', 1);
  const seed = nonNeg(v, 'seed', 0);
  const dopts: DataOptions = { seqLen, eosId, vocabSize: cfg.vocabSize, tokenizer, tokenizerHint: `${modelDir} has no tokenizer.json` };

  // ---- data
  const loaded = loadData(dataFile, dopts);
  for (const w of loaded.warnings) say(`warning: ${w}`);
  let train = loaded.data;
  let val: PackedData | null = null;
  const valData = str(v, 'val-data');
  const valFraction = num(v, 'val-fraction');
  if (valData !== undefined && valFraction !== undefined) throw new UsageError('give --val-data or --val-fraction, not both', usage);
  if (valData !== undefined) {
    if (sameFile(valData, dataFile)) fail(`--val-data ${valData} is the training file; validation must not overlap training (use --val-fraction to split it)`);
    const lv = loadData(valData, dopts);
    for (const w of lv.warnings) say(`warning: ${w}`);
    val = lv.data;
  } else if (valFraction !== undefined && valFraction > 0) {
    ({ train, val } = splitValidation(train, valFraction, seed));
  }
  if (val) {
    const dup = overlapCount(train, val);
    if (dup > 0) say(`warning: ${dup} of ${val.count} validation windows are identical to training windows (duplicated data)`);
  }

  const schedule = new BatchSchedule(train, batchSize, gradAccum, seed);
  const stepsArg = int(v, 'steps');
  const epochsArg = num(v, 'epochs');
  if (stepsArg !== undefined && epochsArg !== undefined) throw new UsageError('give --steps or --epochs, not both', usage);
  if (stepsArg !== undefined && stepsArg < 1) fail(`--steps ${stepsArg}: must be >= 1`);
  if (epochsArg !== undefined && !(epochsArg > 0)) fail(`--epochs ${epochsArg}: must be > 0`);
  const totalSteps = stepsArg ?? schedule.stepsFor(epochsArg ?? 1);

  // ---- trainer
  const device = str(v, 'device') ?? 'cpu';
  if (device !== 'cpu' && device !== 'webgpu') fail(`--device '${device}': expected cpu or webgpu`);
  const optimizer = str(v, 'optimizer') ?? 'adamw';
  if (optimizer !== 'adamw' && optimizer !== 'sgd') fail(`--optimizer '${optimizer}': expected adamw or sgd`);
  const defaults = modelDefaults(modelDir);
  const attnName = str(v, 'attn');
  const attention = attnName === undefined ? (defaults.attention ?? 'gravity') : parseAttentionKind(attnName);
  const eps = num(v, 'eps') ?? defaults.eps;
  if (eps !== undefined && !(eps > 0)) fail(`--eps must be > 0, got ${eps}`);
  const full = flag(v, 'full');
  const saveDtype = str(v, 'save-dtype');
  if (saveDtype !== undefined && saveDtype !== 'f32' && saveDtype !== 'bf16') fail(`--save-dtype '${saveDtype}': expected f32 or bf16`);
  if (saveDtype !== undefined && !full) throw new UsageError('--save-dtype needs --full (adapters are saved in f32)', usage);
  const targets = (str(v, 'lora-targets') ?? 'q_proj,k_proj,v_proj,o_proj').split(',').map((s) => s.trim()).filter(Boolean);
  const opts = {
    loraR: positive(v, 'lora-r', 16),
    loraAlpha: positive(v, 'lora-alpha', 32, false),
    loraDropout: nonNeg(v, 'lora-dropout', 0, false),
    loraTargets: targets,
    trainMasses: flag(v, 'train-masses'),
    trainNorms: flag(v, 'train-norms'),
    optimizer: optimizer as 'adamw' | 'sgd',
    lr: nonNeg(v, 'lr', 2e-4, false),
    weightDecay: nonNeg(v, 'weight-decay', 0, false),
    maxGradNorm: nonNeg(v, 'max-grad-norm', 1, false),
    warmupSteps: nonNeg(v, 'warmup-steps', 0),
    minLrRatio: nonNeg(v, 'min-lr-ratio', 0, false),
    totalSteps,
    gradAccum,
    seed,
    attention,
    ...(eps !== undefined ? { eps } : {}),
    full,
    ...(saveDtype !== undefined ? { saveDtype: saveDtype as 'f32' | 'bf16' } : {}),
    massPerGroup: flag(v, 'mass-per-group'),
    massInit: str(v, 'mass-init'),
    masses: str(v, 'masses'),
    initAdapter: str(v, 'init-adapter'),
  };
  const { Trainer } = await import('../train/trainer.js');
  say(`loading ${modelDir}`);
  const trainer = await Trainer.create(modelDir, opts, { device });

  const lossTokens = train.lossTokens();
  say(
    `data: ${loaded.records} records -> ${train.count} windows of ${seqLen} tokens (${lossTokens} with loss)` +
      (val ? `; validation ${val.count} windows` : '') +
      `\nrun: ${totalSteps} steps of ${batchSize}x${gradAccum} windows (${schedule.epochAt(totalSteps).toFixed(2)} epochs), ` +
      `${opts.optimizer} lr ${opts.lr}, ${attention}${attention !== 'dot' ? ` eps ${trainer.options.eps}` : ''}, ${opts.trainMasses ? `masses${opts.massPerGroup ? ' per KV group' : ''}, ` : ''}` +
      (full ? `all ${trainer.params.reduce((n, p) => n + p.data.length, 0).toLocaleString('en-US')} parameters` :
        `${opts.trainNorms ? 'norms, ' : ''}LoRA r=${trainer.options.loraR} on ${trainer.options.loraTargets.join(',') || 'nothing'}`),
  );

  const evalEvery = nonNeg(v, 'eval-every', 100);
  const result = await runTraining(trainer, {
    outDir: out,
    totalSteps,
    schedule,
    val: val ? evalBatches(val, batchSize) : null,
    evalEvery,
    saveEvery: nonNeg(v, 'save-every', 100),
    logEvery: positive(v, 'log-every', 10),
    resume: flag(v, 'resume'),
    runInfo: {
      order: { seed, seq_len: seqLen, batch_size: batchSize, grad_accum: gradAccum, train_windows: train.count, data_crc32: dataCrc(train) },
      model: modelDir,
      data: dataFile,
      val_data: valData ?? null,
      val_fraction: valFraction ?? null,
      total_steps: totalSteps,
      options: opts,
      started_at: new Date().toISOString(),
    },
  });
  if (!flag(v, 'no-figures')) {
    try {
      const files = writeRunFigures(out);
      if (files.length) say(`figures: ${files.filter((f) => f.endsWith('.png')).join(', ')}`);
    } catch (e) {
      say(`warning: could not draw the figures (${(e as Error).message})`);
    }
  }
  say(result.message);
  return result.status === 'done' ? 0 : result.status === 'interrupted' ? 130 : 1;
}
