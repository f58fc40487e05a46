/** `gravity init-random`: a seeded random checkpoint (config, weights, masses) from a preset or a config.json. */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { fail } from '../errors.js';
import { parseConfig } from '../io/config.js';
import { PRESETS, writeRandomCheckpoint, type RandomDType, type RandomInit } from '../io/random.js';
import type { ModelConfig } from '../model/config.js';
import { numel } from '../tensor/dtype.js';
import { expectedWeightShapes } from '../io/checkpoint.js';
import { flag, int, parseCommand, required, str } from './args.js';
import { progress } from './progress.js';

export const usage = `usage: gravity init-random --config PRESET|FILE.json --out DIR [--seed S] [--dtype bf16|f32|f16] [--init test|train]

Writes a complete model folder with seeded random weights and gravity masses (same seed, same files).

  --config NAME|FILE     preset (${Object.keys(PRESETS).join(', ')}) or a Hugging Face config.json
  --out DIR              folder to write (created; must be empty unless --force)
  --seed S               random seed (default 0)
  --dtype bf16|f32|f16   stored weight dtype (default bf16)
  --init test|train      test (default): varied norms/biases, embedding std 1, for exercising the engine;
                         train: a start for training (GPT-2-like std 0.02, norms 1, biases 0, q/k with
                         ‖q − k‖² ≈ 1, masses raw 0.5): a tied head starts near ln(vocab)
  --force                write into a non-empty folder
`;

const OPTIONS = {
  config: { type: 'string', short: 'c' },
  out: { type: 'string', short: 'o' },
  seed: { type: 'string' },
  dtype: { type: 'string' },
  init: { type: 'string' },
  force: { type: 'boolean' },
} as const;

const DTYPES: Record<string, RandomDType> = { bf16: 'BF16', f32: 'F32', f16: 'F16' };

function configFrom(spec: string): ModelConfig {
  if (spec in PRESETS) return PRESETS[spec];
  if (!existsSync(spec)) fail(`--config '${spec}': not a preset (${Object.keys(PRESETS).join(', ')}) and no such file`);
  let json: unknown;
  try {
    json = JSON.parse(readFileSync(spec, 'utf8'));
  } catch (e) {
    fail(`${spec}: invalid JSON (${(e as Error).message})`);
  }
  return parseConfig(json, spec);
}

export async function run(argv: string[]): Promise<number> {
  const v = parseCommand(argv, OPTIONS, usage);
  if (!v) return 0;
  const cfg = configFrom(required(v, 'config', usage));
  const out = required(v, 'out', usage);
  const seed = int(v, 'seed') ?? 0;
  const dtypeName = (str(v, 'dtype') ?? 'bf16').toLowerCase();
  const dtype = DTYPES[dtypeName];
  if (!dtype) fail(`--dtype '${dtypeName}': expected bf16, f32 or f16`);
  const init = str(v, 'init') ?? 'test';
  if (init !== 'test' && init !== 'train') fail(`--init '${init}': expected test or train`);
  if (existsSync(out) && readdirSync(out).length > 0 && !flag(v, 'force')) {
    fail(`${out}: folder is not empty (pass --force to write into it)`);
  }
  let params = 0;
  for (const shape of expectedWeightShapes(cfg).values()) params += numel(shape);
  const bar = progress(`writing ${out}`);
  let shards: string[];
  try {
    shards = writeRandomCheckpoint(out, cfg, { seed, dtype, init: init as RandomInit, onProgress: (d, t, name) => bar.update(d, t, name) });
  } finally {
    bar.done();
  }
  process.stdout.write(`${out}: ${cfg.architecture}, ${params.toLocaleString('en-US')} parameters (${dtype}), seed ${seed}, init ${init}, ${shards.length} weight file(s)\n`);
  return 0;
}
