/** A model folder's files: config, weights, masses, generation defaults, tokenizer. No tensor data is read here. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fail } from '../errors.js';
import type { ModelConfig } from '../model/config.js';
import { parseConfig, tokenIds } from './config.js';
import { findMassesFile, massName } from './masses.js';
import { openWeights, type WeightStore } from './safetensors.js';

export interface GenerationDefaults {
  eosTokenIds: number[];
  bosTokenId?: number;
  padTokenId?: number;
  doSample?: boolean;
  temperature?: number;
  topP?: number;
  topK?: number;
  minP?: number;
  repetitionPenalty?: number;
  maxNewTokens?: number;
}

export interface CheckpointFiles {
  dir: string;
  config: ModelConfig;
  weights: WeightStore;
  /** a masses file (.pt / .safetensors), the weights file holding gravity_mass_log tensors, or null */
  massesPath: string | null;
  generation: GenerationDefaults | null;
  tokenizerJson: object | null;
  tokenizerConfig: object | null;
}

function readJson(file: string): unknown {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    fail(`${file}: not valid JSON (${(e as Error).message})`);
  }
}

function optionalJson(file: string): object | null {
  if (!fs.existsSync(file)) return null;
  const v = readJson(file);
  if (!v || typeof v !== 'object') fail(`${file}: expected a JSON object`);
  return v;
}

function parseGeneration(json: unknown, file: string, config: ModelConfig): GenerationDefaults {
  const g = (json ?? {}) as Record<string, unknown>;
  const eos = tokenIds(g.eos_token_id, 'eos_token_id', file);
  const out: GenerationDefaults = { eosTokenIds: eos.length ? eos : config.eosTokenIds.slice() };
  const num = (k: string): number | undefined => {
    const v = g[k];
    if (v === undefined || v === null) return undefined;
    if (typeof v !== 'number' || !Number.isFinite(v)) fail(`${file}: "${k}" must be a number, found ${JSON.stringify(v)}`);
    return v;
  };
  const set = <K extends keyof GenerationDefaults>(k: K, v: GenerationDefaults[K] | undefined) => {
    if (v !== undefined) out[k] = v;
  };
  set('bosTokenId', num('bos_token_id'));
  set('padTokenId', tokenIds(g.pad_token_id, 'pad_token_id', file)[0]);
  if (typeof g.do_sample === 'boolean') out.doSample = g.do_sample;
  set('temperature', num('temperature'));
  set('topP', num('top_p'));
  set('topK', num('top_k'));
  set('minP', num('min_p'));
  set('repetitionPenalty', num('repetition_penalty'));
  set('maxNewTokens', num('max_new_tokens'));
  return out;
}

/** Locates and parses everything in a model folder; checks the weights' names and shapes against the config. */
export function loadCheckpointFiles(dir: string, opts: { masses?: string } = {}): CheckpointFiles {
  if (!fs.existsSync(dir)) fail(`${dir}: model folder does not exist`);
  if (!fs.statSync(dir).isDirectory()) fail(`${dir}: is not a folder (expected a model folder with config.json and *.safetensors)`);
  const cfgPath = path.join(dir, 'config.json');
  if (!fs.existsSync(cfgPath)) fail(`${dir}: no config.json in the model folder`);
  const config = parseConfig(readJson(cfgPath), 'config.json');
  const weights = openWeights(dir);
  try {
    checkWeights(weights, config);
    let massesPath: string | null = null;
    if (opts.masses) {
      if (!fs.existsSync(opts.masses)) fail(`${opts.masses}: masses file does not exist`);
      massesPath = opts.masses;
    } else {
      massesPath = findMassesFile(dir);
      // A model saved with its gravity parameters keeps them among the weights.
      if (!massesPath && weights.has(massName(0))) {
        const idx = path.join(dir, 'model.safetensors.index.json');
        massesPath = fs.existsSync(idx) ? idx : weights.info(massName(0)).file;
      }
    }
    const genPath = path.join(dir, 'generation_config.json');
    const generation = fs.existsSync(genPath) ? parseGeneration(readJson(genPath), 'generation_config.json', config) : null;
    return {
      dir,
      config,
      weights,
      massesPath,
      generation,
      tokenizerJson: optionalJson(path.join(dir, 'tokenizer.json')),
      tokenizerConfig: optionalJson(path.join(dir, 'tokenizer_config.json')),
    };
  } catch (e) {
    weights.close();
    throw e;
  }
}

/** Every Hugging Face tensor name this config needs, with its shape ([out, in] for Linear weights). */
export function expectedWeightShapes(cfg: ModelConfig): Map<string, number[]> {
  const m = new Map<string, number[]>();
  const C = cfg.hiddenSize;
  const qDim = cfg.numHeads * cfg.headDim;
  const kvDim = cfg.numKVHeads * cfg.headDim;
  const I = cfg.intermediateSize;
  m.set('model.embed_tokens.weight', [cfg.vocabSize, C]);
  for (let i = 0; i < cfg.numLayers; i++) {
    const p = `model.layers.${i}`;
    m.set(`${p}.input_layernorm.weight`, [C]);
    const proj: [string, number, number, boolean][] = [
      ['q_proj', qDim, C, cfg.qkvBias],
      ['k_proj', kvDim, C, cfg.qkvBias],
      ['v_proj', kvDim, C, cfg.qkvBias],
      ['o_proj', C, qDim, cfg.oBias],
    ];
    for (const [n, out, inp, bias] of proj) {
      m.set(`${p}.self_attn.${n}.weight`, [out, inp]);
      if (bias) m.set(`${p}.self_attn.${n}.bias`, [out]);
    }
    m.set(`${p}.post_attention_layernorm.weight`, [C]);
    const mlp: [string, number, number][] = [
      ['gate_proj', I, C],
      ['up_proj', I, C],
      ['down_proj', C, I],
    ];
    for (const [n, out, inp] of mlp) {
      m.set(`${p}.mlp.${n}.weight`, [out, inp]);
      if (cfg.mlpBias) m.set(`${p}.mlp.${n}.bias`, [out]);
    }
  }
  m.set('model.norm.weight', [C]);
  if (!cfg.tieWordEmbeddings) m.set('lm_head.weight', [cfg.vocabSize, C]);
  return m;
}

const FLOAT_DTYPES = new Set(['F32', 'BF16', 'F16', 'F64']);

/** Errors on the first missing tensor, wrong shape or non-float dtype. Extra tensors are ignored. */
export function checkWeights(store: WeightStore, cfg: ModelConfig): void {
  const fmt = (s: number[]) => `[${s.join(',')}]`;
  for (const [name, shape] of expectedWeightShapes(cfg)) {
    if (!store.has(name)) fail(`${store.label}: tensor "${name}" is missing (expected ${fmt(shape)} for this config)`);
    const info = store.info(name);
    const file = path.basename(info.file);
    if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
      fail(`${file}: tensor "${name}" has shape ${fmt(info.shape)}, expected ${fmt(shape)} for this config`);
    }
    if (!FLOAT_DTYPES.has(info.dtype)) fail(`${file}: tensor "${name}" has dtype ${info.dtype}, expected F32, BF16, F16 or F64`);
  }
}
