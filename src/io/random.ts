/** Seeded random checkpoints (config.json, safetensors, generation_config.json, masses), generated and written one
 * tensor at a time so a 3B preset needs about one tensor's worth of memory, not the whole model. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fail } from '../errors.js';
import type { ModelConfig } from '../model/config.js';
import { DTYPE_BYTES, f32ToF16, numel, type HostTensor } from '../tensor/dtype.js';
import { expectedWeightShapes } from './checkpoint.js';
import { configToJson } from './config.js';
import { saveMasses } from './masses.js';
import { atomicWrite, writeSafetensorsStreaming, type TensorSpec } from './safetensors.js';

export type RandomDType = 'BF16' | 'F32' | 'F16';

const qwen25 = {
  architecture: 'qwen2',
  vocabSize: 151936,
  ropeTheta: 1e6,
  rmsNormEps: 1e-6,
  tieWordEmbeddings: true,
  qkvBias: true,
  oBias: false,
  mlpBias: false,
  maxPositionEmbeddings: 32768,
  bosTokenId: 151643,
  eosTokenIds: [151643],
  attnImplementation: null,
  dtype: 'bfloat16',
} as const;

export const PRESETS: Record<string, ModelConfig> = {
  'qwen2.5-0.5b': {
    ...qwen25,
    eosTokenIds: [151643],
    hiddenSize: 896,
    intermediateSize: 4864,
    numLayers: 24,
    numHeads: 14,
    numKVHeads: 2,
    headDim: 64,
  },
  // the bundled default model's shape: 6 layers, GQA 6/2, head_dim 32, ~2.5M parameters, the 512-token
  // arithmetic tokenizer of models/gravity-mini (510 tokens padded to 512); <|im_end|> (507) ends a turn
  'gravity-mini': {
    ...qwen25,
    vocabSize: 512,
    hiddenSize: 192,
    intermediateSize: 512,
    numLayers: 6,
    numHeads: 6,
    numKVHeads: 2,
    headDim: 32,
    ropeTheta: 10000,
    maxPositionEmbeddings: 512,
    bosTokenId: 505,
    eosTokenIds: [507, 505],
    dtype: 'float32',
  },
  'qwen2.5-3b': {
    ...qwen25,
    eosTokenIds: [151643],
    hiddenSize: 2048,
    intermediateSize: 11008,
    numLayers: 36,
    numHeads: 16,
    numKVHeads: 2,
    headDim: 128,
  },
};

/** xoshiro128** seeded through splitmix32: fast, and each tensor gets its own stream from (seed, name). */
class Rng {
  private s = new Uint32Array(4);
  private spare: number | null = null;
  constructor(seed: number, name: string) {
    let h = (seed >>> 0) ^ 0x9e3779b9;
    for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 0x01000193);
    for (let i = 0; i < 4; i++) {
      h = (h + 0x9e3779b9) | 0;
      let z = h;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
      this.s[i] = (z ^ (z >>> 16)) >>> 0;
    }
    if (!(this.s[0] | this.s[1] | this.s[2] | this.s[3])) this.s[0] = 1;
  }
  /** uniform in [0, 1) */
  next(): number {
    const s = this.s;
    const r = Math.imul(((Math.imul(s[1], 5) << 7) | (Math.imul(s[1], 5) >>> 25)), 9) >>> 0;
    const t = s[1] << 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = (s[3] << 11) | (s[3] >>> 21);
    return r / 4294967296;
  }
  /** standard normal (Box-Muller, both values used) */
  normal(): number {
    if (this.spare !== null) {
      const v = this.spare;
      this.spare = null;
      return v;
    }
    const u = 1 - this.next();
    const v = this.next();
    const r = Math.sqrt(-2 * Math.log(u));
    this.spare = r * Math.sin(2 * Math.PI * v);
    return r * Math.cos(2 * Math.PI * v);
  }
}

/** mean + std * N(0,1) values of one tensor, written straight into its stored dtype in chunks. */
function randomTensor(spec: TensorSpec, seed: number, mean: number, std: number): HostTensor {
  const n = numel(spec.shape);
  const rng = new Rng(seed, spec.name);
  const CH = 65536;
  const tmp = new Float32Array(CH);
  const tmpBits = new Uint32Array(tmp.buffer);
  const data = spec.dtype === 'F32' ? new Float32Array(n) : new Uint16Array(n);
  for (let off = 0; off < n; off += CH) {
    const m = Math.min(CH, n - off);
    for (let i = 0; i < m; i++) tmp[i] = mean + std * rng.normal();
    if (data instanceof Float32Array) data.set(tmp.subarray(0, m), off);
    else if (spec.dtype === 'BF16') {
      // round to nearest even (values are finite)
      for (let i = 0; i < m; i++) {
        const u = tmpBits[i];
        data[off + i] = (u + 0x7fff + ((u >>> 16) & 1)) >>> 16;
      }
    } else for (let i = 0; i < m; i++) data[off + i] = f32ToF16(tmp[i]);
  }
  return { dtype: spec.dtype, shape: spec.shape.slice(), data };
}

/**
 * 'test': fixture-like values (norms and biases visibly non-trivial, embedding std 1) that exercise every code path.
 * 'train': a start to train from: GPT-2-like (embedding and linears std 0.02, the residual projections o_proj and
 * down_proj scaled by 1/√(2·layers), norms 1, biases 0), with q/k such that ‖q − k‖² ≈ 1 so gravity scores
 * M²/(‖q − k‖² + ε) start O(1) and not saturated; a tied head then starts near ln(vocab) (embedding std 1 gave ~125).
 */
export type RandomInit = 'test' | 'train';

/** (mean, std) per tensor of a training start (see RandomInit). */
function trainInitOf(name: string, cfg: ModelConfig): [number, number] {
  if (name.endsWith('layernorm.weight') || name === 'model.norm.weight') return [1, 0];
  if (name.endsWith('.bias')) return [0, 0];
  // normed input has ~unit entries: q has per-entry variance C·σ², ‖q − k‖² ≈ 2·d·C·σ², so σ = 1/√(2dC) gives ≈ 1
  if (name.endsWith('q_proj.weight') || name.endsWith('k_proj.weight')) return [0, 1 / Math.sqrt(2 * cfg.headDim * cfg.hiddenSize)];
  if (name.endsWith('o_proj.weight') || name.endsWith('down_proj.weight')) return [0, 0.02 / Math.sqrt(2 * cfg.numLayers)];
  return [0, 0.02];
}

/** (mean, std) per tensor: fixture-like init, with q/k scaled so ‖q − k‖² is about 1 at any width. */
function initOf(name: string, shape: number[], cfg: ModelConfig, init: RandomInit = 'test'): [number, number] {
  if (init === 'train') return trainInitOf(name, cfg);
  if (name.endsWith('layernorm.weight') || name === 'model.norm.weight') return [1, 0.2];
  if (name.endsWith('.bias')) return [0, 0.05];
  if (name === 'model.embed_tokens.weight') return [0, 1];
  // Normed input has ~unit entries, so q has per-entry variance C·σ² and ‖q − k‖² ≈ 2·d·C·σ²: σ = 0.9/√(2dC)
  // gives ≈ 0.8 (σ ≈ 0.02 at the fixtures' C = 64, d = 16).
  if (name.endsWith('q_proj.weight') || name.endsWith('k_proj.weight')) return [0, 0.9 / Math.sqrt(2 * cfg.headDim * cfg.hiddenSize)];
  return [0, 1 / Math.sqrt(shape[1])];
}

const TORCH_DTYPE: Record<RandomDType, string> = { BF16: 'bfloat16', F32: 'float32', F16: 'float16' };
export const MAX_SHARD_BYTES = 2 * 1024 ** 3;

function writeJson(file: string, obj: unknown): void {
  atomicWrite(file, (tmp) => fs.writeFileSync(tmp, JSON.stringify(obj, null, 2) + '\n'));
}

/** Writes a complete random model folder. Returns the safetensors files written. */
export function writeRandomCheckpoint(
  dir: string,
  cfg: ModelConfig,
  opts: { seed: number; dtype: RandomDType; init?: RandomInit; maxShardBytes?: number; onProgress?: (done: number, total: number, name: string) => void },
): string[] {
  if (!(opts.dtype in TORCH_DTYPE)) fail(`init-random: dtype ${JSON.stringify(opts.dtype)} is not one of BF16, F32, F16`);
  const init = opts.init ?? 'test';
  if (init !== 'test' && init !== 'train') fail(`init-random: init ${JSON.stringify(init)} is not one of test, train`);
  fs.mkdirSync(dir, { recursive: true });
  const conf = { ...cfg, dtype: TORCH_DTYPE[opts.dtype] };
  writeJson(path.join(dir, 'config.json'), { ...configToJson(conf), transformers_version: '5.0.0' });
  const gen: Record<string, unknown> = { bos_token_id: cfg.bosTokenId, eos_token_id: cfg.eosTokenIds.length === 1 ? cfg.eosTokenIds[0] : cfg.eosTokenIds };
  writeJson(path.join(dir, 'generation_config.json'), gen);

  const specs: TensorSpec[] = [...expectedWeightShapes(cfg)].map(([name, shape]) => ({ name, dtype: opts.dtype, shape }));
  const bytes = (s: TensorSpec) => numel(s.shape) * DTYPE_BYTES[s.dtype];
  const total = specs.reduce((a, s) => a + bytes(s), 0);
  const maxShard = opts.maxShardBytes ?? MAX_SHARD_BYTES;
  const shards: TensorSpec[][] = [];
  let cur: TensorSpec[] = [];
  let curBytes = 0;
  for (const s of specs) {
    if (cur.length && curBytes + bytes(s) > maxShard) {
      shards.push(cur);
      cur = [];
      curBytes = 0;
    }
    cur.push(s);
    curBytes += bytes(s);
  }
  shards.push(cur);
  let done = 0;
  const produce = (s: TensorSpec): HostTensor => {
    const [mean, std] = initOf(s.name, s.shape, cfg, init);
    const t = randomTensor(s, opts.seed, mean, std);
    opts.onProgress?.(++done, specs.length, s.name);
    return t;
  };
  const written: string[] = [];
  const md = { format: 'pt' };
  if (shards.length === 1) {
    const f = path.join(dir, 'model.safetensors');
    writeSafetensorsStreaming(f, shards[0], produce, md);
    written.push(f);
    fs.rmSync(path.join(dir, 'model.safetensors.index.json'), { force: true });
  } else {
    const n = shards.length;
    const pad = (k: number) => String(k).padStart(5, '0');
    const weightMap: Record<string, string> = {};
    shards.forEach((sh, k) => {
      const name = `model-${pad(k + 1)}-of-${pad(n)}.safetensors`;
      writeSafetensorsStreaming(path.join(dir, name), sh, produce, md);
      written.push(path.join(dir, name));
      for (const s of sh) weightMap[s.name] = name;
    });
    const params = specs.reduce((a, s) => a + numel(s.shape), 0);
    writeJson(path.join(dir, 'model.safetensors.index.json'), { metadata: { total_parameters: params, total_size: total }, weight_map: weightMap });
    fs.rmSync(path.join(dir, 'model.safetensors'), { force: true });
  }
  const rng = new Rng(opts.seed, 'gravity_mass_log');
  const masses: Float32Array[] = [];
  for (let i = 0; i < cfg.numLayers; i++) {
    const v = new Float32Array(cfg.numHeads);
    // train: the card's raw 0.5 everywhere (training runs usually replace it with --mass-init anyway)
    for (let h = 0; h < cfg.numHeads; h++) v[h] = init === 'train' ? 0.5 : -0.5 + 2.5 * rng.next();
    masses.push(v);
  }
  saveMasses(dir, masses);
  return written;
}
