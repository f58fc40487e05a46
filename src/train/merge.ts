/**
 * `gravity merge`: folds a PEFT adapter into its base model and writes a complete model folder: config.json,
 * sharded safetensors + index (weights in their stored width), generation config and tokenizer files copied,
 * masses (the adapter's when it has them, else the base's). Written into a temp folder, renamed at the end.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fail } from '../errors.js';
import { expectedWeightShapes, loadCheckpointFiles } from '../io/checkpoint.js';
import { loadMasses, saveMasses } from '../io/masses.js';
import { writeSafetensorsStreaming, type TensorSpec } from '../io/safetensors.js';
import { DTYPE_BYTES, numel } from '../tensor/dtype.js';
import { adapterTransform, readAdapter } from './adapter.js';
import { adapterDefaults } from '../model/load.js';

export interface MergeOptions {
  /** bytes per shard, or a size like '2GB', '500MB', '100KB' (default 2GB) */
  shardSize?: number | string;
  /** replace an existing output folder */
  overwrite?: boolean;
  onProgress?: (done: number, total: number, name: string) => void;
}

/** Files copied as they are when present. */
const SIDE_FILES = [
  'config.json', 'generation_config.json', 'tokenizer.json', 'tokenizer_config.json', 'special_tokens_map.json',
  'added_tokens.json', 'vocab.json', 'merges.txt', 'tokenizer.model', 'chat_template.jinja', 'chat_template.json',
];

export function parseSize(s: number | string): number {
  if (typeof s === 'number') {
    if (!(s > 0)) fail(`--shard-size must be > 0 bytes, got ${s}`);
    return Math.floor(s);
  }
  const m = /^\s*(\d+(?:\.\d+)?)\s*([KMG]i?B|B)?\s*$/i.exec(s);
  if (!m) return fail(`--shard-size '${s}': expected a size like 2GB, 500MB or 100KB`);
  const unit = (m[2] ?? 'B').toUpperCase();
  const mult: Record<string, number> = { B: 1, KB: 1e3, MB: 1e6, GB: 1e9, KIB: 1024, MIB: 1024 ** 2, GIB: 1024 ** 3 };
  const v = Math.floor(Number(m[1]) * mult[unit]);
  if (!(v > 0)) fail(`--shard-size '${s}' must be > 0`);
  return v;
}

/** Returns the safetensors files written (in outDir). */
export function mergeAdapter(baseDir: string, adapterDir: string, outDir: string, opts: MergeOptions = {}): string[] {
  const maxShard = parseSize(opts.shardSize ?? '2GB');
  const files = loadCheckpointFiles(baseDir);
  const out = path.resolve(outDir);
  if (fs.existsSync(out) && !opts.overwrite && fs.readdirSync(out).length > 0) fail(`${outDir}: output folder exists and is not empty (pass --overwrite to replace it)`);
  if (path.resolve(baseDir) === out) fail(`${outDir}: the merged model cannot be written over its base`);
  const tmp = `${out}.tmp-${process.pid}`;
  fs.rmSync(tmp, { recursive: true, force: true });
  try {
    const cfg = files.config;
    const adapter = readAdapter(adapterDir, { cfg });
    const transform = adapterTransform(adapter);
    fs.mkdirSync(tmp, { recursive: true });
    for (const f of SIDE_FILES) {
      const src = path.join(baseDir, f);
      if (fs.existsSync(src)) fs.copyFileSync(src, path.join(tmp, f));
    }
    // a gravity adapter trained on a dot-product base: the merged model must default to what it was trained with
    const trained = adapterDefaults(adapterDir);
    const cfgPath = path.join(tmp, 'config.json');
    if ((trained.attention || trained.eps) && fs.existsSync(cfgPath)) {
      const json = JSON.parse(fs.readFileSync(cfgPath, 'utf8'));
      if (trained.attention) json.gravity_attention = trained.attention;
      if (trained.eps) json.gravity_eps = trained.eps;
      fs.writeFileSync(cfgPath, JSON.stringify(json, null, 2) + '\n');
    }
    // model tensors in the config's order, then anything else the checkpoint holds (masses are written apart)
    const wanted = [...expectedWeightShapes(cfg).keys()];
    const names = [...wanted, ...files.weights.names().filter((n) => !wanted.includes(n) && !n.endsWith('gravity_mass_log'))];
    const specs: TensorSpec[] = names.map((name) => {
      const i = files.weights.info(name);
      return { name, dtype: i.dtype, shape: i.shape };
    });
    const bytes = (s: TensorSpec) => numel(s.shape) * DTYPE_BYTES[s.dtype];
    const shards: TensorSpec[][] = [[]];
    let cur = 0;
    for (const s of specs) {
      if (shards[shards.length - 1].length && cur + bytes(s) > maxShard) {
        shards.push([]);
        cur = 0;
      }
      shards[shards.length - 1].push(s);
      cur += bytes(s);
    }
    let done = 0;
    const produce = (s: TensorSpec) => {
      const t = transform(s.name, files.weights.read(s.name));
      opts.onProgress?.(++done, specs.length, s.name);
      return t;
    };
    const written: string[] = [];
    const md = { format: 'pt' };
    if (shards.length === 1) {
      writeSafetensorsStreaming(path.join(tmp, 'model.safetensors'), shards[0], produce, md);
      written.push('model.safetensors');
    } else {
      const pad = (k: number) => String(k).padStart(5, '0');
      const weightMap: Record<string, string> = {};
      shards.forEach((sh, k) => {
        const name = `model-${pad(k + 1)}-of-${pad(shards.length)}.safetensors`;
        writeSafetensorsStreaming(path.join(tmp, name), sh, produce, md);
        written.push(name);
        for (const s of sh) weightMap[s.name] = name;
      });
      const total = specs.reduce((a, s) => a + bytes(s), 0);
      fs.writeFileSync(path.join(tmp, 'model.safetensors.index.json'), JSON.stringify({ metadata: { total_size: total }, weight_map: weightMap }, null, 2) + '\n');
    }
    const massesPath = adapter.massesPath ?? files.massesPath;
    if (massesPath) saveMasses(tmp, loadMasses(massesPath, cfg.numLayers, cfg.numHeads, { numKVHeads: cfg.numKVHeads }));
    files.weights.close();
    if (fs.existsSync(out)) fs.rmSync(out, { recursive: true, force: true });
    fs.renameSync(tmp, out);
    return written.map((f) => path.join(out, f));
  } catch (e) {
    fs.rmSync(tmp, { recursive: true, force: true });
    throw e;
  } finally {
    files.weights.close();
  }
}
