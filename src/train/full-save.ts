/**
 * Writes a fully trained model as a complete Hugging Face model folder that loadModel / `gravity generate`
 * read directly: config.json (the source folder's, with the stored dtype and our gravity_* keys),
 * model.safetensors (F32 or BF16), generation_config.json, the source folder's tokenizer files and
 * gravity_mass_log.{safetensors,pt}. Each file is written atomically (temporary name, then rename); the
 * training loop additionally saves into a temporary folder that is renamed into place.
 *
 * config.json keys added for models trained here (read back by model/load.ts as defaults):
 *   gravity_attention: 'gravity' | 'dot' | 'gravity-pure'   the attention the model was trained with
 *   gravity_eps: number                                     the softening ε it was trained with
 *   gravity_mass_per_group: boolean                         the masses file holds one mass per KV group
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { AttentionKind } from '../backend/backend.js';
import { fail } from '../errors.js';
import { saveMasses } from '../io/masses.js';
import { atomicWrite, writeSafetensors } from '../io/safetensors.js';
import type { ModelConfig } from '../model/config.js';
import { f32ToBf16, type HostTensor } from '../tensor/dtype.js';

/** tokenizer and chat-template files copied from the source folder when present */
const TOKENIZER_FILES = [
  'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json', 'vocab.json', 'merges.txt',
  'added_tokens.json', 'chat_template.jinja', 'tokenizer.model',
];

export interface FullSaveOptions {
  /** the folder training started from (config.json, generation_config.json, tokenizer files) */
  sourceDir: string;
  config: ModelConfig;
  /** every base weight by Hugging Face name, f32 masters */
  weights: { name: string; shape: number[]; data: Float32Array }[];
  /** raw mass_log per layer ([numHeads] or [numKVHeads]); empty = none */
  masses: Float32Array[];
  dtype: 'f32' | 'bf16';
  attention: AttentionKind;
  eps: number;
  massPerGroup: boolean;
}

function readJson(file: string): Record<string, unknown> | null {
  if (!fs.existsSync(file)) return null;
  try {
    const v = JSON.parse(fs.readFileSync(file, 'utf8'));
    return v && typeof v === 'object' ? v : null;
  } catch (e) {
    return fail(`${file}: not valid JSON (${(e as Error).message})`);
  }
}

function writeJson(file: string, v: unknown): void {
  atomicWrite(file, (tmp) => fs.writeFileSync(tmp, JSON.stringify(v, null, 2) + '\n'));
}

export function saveFullModel(dir: string, o: FullSaveOptions): void {
  fs.mkdirSync(dir, { recursive: true });
  const src = path.resolve(o.sourceDir);
  const cfgJson = readJson(path.join(src, 'config.json'));
  if (!cfgJson) fail(`${src}: no config.json to base the saved model's config on`);
  const torchDtype = o.dtype === 'bf16' ? 'bfloat16' : 'float32';
  const config: Record<string, unknown> = { ...cfgJson, gravity_attention: o.attention, gravity_eps: o.eps, gravity_mass_per_group: o.massPerGroup };
  if ('torch_dtype' in config) config.torch_dtype = torchDtype;
  config.dtype = torchDtype;

  const tensors = new Map<string, HostTensor>();
  for (const w of o.weights) {
    for (let i = 0; i < w.data.length; i++) {
      if (!Number.isFinite(w.data[i])) fail(`save: tensor "${w.name}" has a non-finite value (${w.data[i]}) at index ${i}; not writing a broken model`);
    }
    if (o.dtype === 'bf16') {
      const bits = new Uint16Array(w.data.length);
      for (let i = 0; i < bits.length; i++) bits[i] = f32ToBf16(w.data[i]);
      tensors.set(w.name, { dtype: 'BF16', shape: w.shape, data: bits });
    } else tensors.set(w.name, { dtype: 'F32', shape: w.shape, data: w.data });
  }
  // one file: a sharded index left from an earlier save would win over it, so remove that
  writeSafetensors(path.join(dir, 'model.safetensors'), tensors, { format: 'pt' });
  fs.rmSync(path.join(dir, 'model.safetensors.index.json'), { force: true });
  if (o.masses.length) saveMasses(dir, o.masses);

  const gen = readJson(path.join(src, 'generation_config.json'));
  const c = o.config;
  writeJson(path.join(dir, 'generation_config.json'), gen ?? { bos_token_id: c.bosTokenId, eos_token_id: c.eosTokenIds.length === 1 ? c.eosTokenIds[0] : c.eosTokenIds });
  if (path.resolve(dir) !== src) {
    for (const f of TOKENIZER_FILES) {
      const from = path.join(src, f);
      if (fs.existsSync(from)) atomicWrite(path.join(dir, f), (tmp) => fs.copyFileSync(from, tmp));
    }
  }
  // config.json last: a folder with a config but no weights would look loadable
  writeJson(path.join(dir, 'config.json'), config);
}
