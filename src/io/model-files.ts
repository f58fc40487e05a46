/**
 * What a model folder's files mean, without reading any file: generation_config.json, the tensors a config needs
 * and the check of a weight store against them, config.json's gravity defaults. Used by the Node loader
 * (checkpoint.ts, model/load.ts) and by the browser loader (web/load.ts).
 */
import { fail } from '../errors.js';
import type { AttentionKind } from '../backend/backend.js';
import { ATTENTION_KINDS } from '../attention/registry.js';
import type { ModelConfig } from '../model/config.js';
import { tokenIds } from './config.js';
import type { WeightStore } from './safetensors-header.js';

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

export function parseGeneration(json: unknown, file: string, config: ModelConfig): GenerationDefaults {
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
export function checkWeights(store: Pick<WeightStore, 'label' | 'has' | 'info'>, cfg: ModelConfig): void {
  const fmt = (s: number[]) => `[${s.join(',')}]`;
  for (const [name, shape] of expectedWeightShapes(cfg)) {
    if (!store.has(name)) fail(`${store.label}: tensor "${name}" is missing (expected ${fmt(shape)} for this config)`);
    const info = store.info(name);
    const file = info.file.split(/[\\/]/).pop() ?? info.file;
    if (info.shape.length !== shape.length || info.shape.some((d, i) => d !== shape[i])) {
      fail(`${file}: tensor "${name}" has shape ${fmt(info.shape)}, expected ${fmt(shape)} for this config`);
    }
    if (!FLOAT_DTYPES.has(info.dtype)) fail(`${file}: tensor "${name}" has dtype ${info.dtype}, expected F32, BF16, F16 or F64`);
  }
}

export interface ModelDefaults {
  attention?: AttentionKind;
  eps?: number;
}

/** The gravity_attention / gravity_eps keys of config.json (written by full training runs); `file` names it in errors. */
export function defaultsFromConfig(json: Record<string, unknown> | null, file: string): ModelDefaults {
  const out: ModelDefaults = {};
  const a = json?.gravity_attention;
  if (a !== undefined && a !== null) {
    if (typeof a !== 'string' || !(ATTENTION_KINDS as readonly string[]).includes(a)) fail(`${file}: "gravity_attention" must be one of ${ATTENTION_KINDS.join(', ')}, found ${JSON.stringify(a)}`);
    out.attention = a as AttentionKind;
  }
  const e = json?.gravity_eps;
  if (e !== undefined && e !== null) {
    if (typeof e !== 'number' || !(e > 0)) fail(`${file}: "gravity_eps" must be a number > 0, found ${JSON.stringify(e)}`);
    out.eps = e;
  }
  return out;
}
