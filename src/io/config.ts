/** config.json <-> ModelConfig for Qwen2 and Llama checkpoints (transformers 4 and 5 spellings). */
import { fail } from '../errors.js';
import type { Architecture, ModelConfig } from '../model/config.js';

const ARCH_CLASSES: Record<string, Architecture> = { Qwen2ForCausalLM: 'qwen2', LlamaForCausalLM: 'llama' };
const CLASS_OF: Record<Architecture, string> = { qwen2: 'Qwen2ForCausalLM', llama: 'LlamaForCausalLM' };

type Json = Record<string, unknown>;

function posInt(c: Json, key: string, file: string, fallback?: number): number {
  const v = c[key] ?? fallback;
  if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) {
    fail(`${file}: "${key}" must be a positive integer, found ${JSON.stringify(c[key])}`);
  }
  return v;
}

function posNum(v: unknown, key: string, file: string): number {
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) fail(`${file}: "${key}" must be a positive number, found ${JSON.stringify(v)}`);
  return v;
}

function bool(c: Json, key: string, file: string, fallback: boolean): boolean {
  const v = c[key];
  if (v === undefined || v === null) return fallback;
  if (typeof v !== 'boolean') fail(`${file}: "${key}" must be true or false, found ${JSON.stringify(v)}`);
  return v;
}

/** eos_token_id as number | number[] | null -> number[]. */
export function tokenIds(v: unknown, key: string, file: string): number[] {
  if (v === undefined || v === null) return [];
  const arr = Array.isArray(v) ? v : [v];
  if (!arr.every((x) => Number.isInteger(x) && x >= 0)) fail(`${file}: "${key}" must be a token id or a list of them, found ${JSON.stringify(v)}`);
  return arr as number[];
}

function architectureOf(c: Json, file: string): Architecture {
  const archs = c.architectures;
  const supported = Object.keys(ARCH_CLASSES).join(', ');
  if (Array.isArray(archs) && archs.length > 0) {
    const a = String(archs[0]);
    const arch = ARCH_CLASSES[a];
    if (!arch) fail(`${file}: architecture '${a}' is not supported (supported: ${supported})`);
    return arch;
  }
  const mt = c.model_type;
  if (mt === 'qwen2' || mt === 'llama') return mt;
  fail(`${file}: model_type ${JSON.stringify(mt ?? null)} with no "architectures" is not supported (supported: ${supported})`);
}

/** Refuses RoPE variants the engine does not implement (yarn, llama3, linear, dynamic, ...). */
function checkRope(c: Json, file: string): void {
  for (const key of ['rope_parameters', 'rope_scaling']) {
    const r = c[key];
    if (r === undefined || r === null) continue;
    if (typeof r !== 'object') fail(`${file}: "${key}" must be an object`);
    const type = (r as Json).rope_type ?? (r as Json).type;
    if (type !== undefined && type !== null && type !== 'default') fail(`${file}: rope type '${String(type)}' is not supported`);
  }
}

export function parseConfig(json: unknown, file: string): ModelConfig {
  if (!json || typeof json !== 'object' || Array.isArray(json)) fail(`${file}: expected a JSON object`);
  const c = json as Json;
  const architecture = architectureOf(c, file);
  checkRope(c, file);
  if (c.use_sliding_window === true) fail(`${file}: use_sliding_window is true; sliding-window attention is not supported`);
  if (Array.isArray(c.layer_types) && c.layer_types.some((t) => t !== 'full_attention')) {
    fail(`${file}: layer_types has ${JSON.stringify(c.layer_types.find((t) => t !== 'full_attention'))} layers; only full_attention is supported`);
  }
  const act = c.hidden_act ?? 'silu';
  if (act !== 'silu') fail(`${file}: hidden_act '${String(act)}' is not supported (only silu)`);
  const hiddenSize = posInt(c, 'hidden_size', file);
  const numHeads = posInt(c, 'num_attention_heads', file);
  const numKVHeads = posInt(c, 'num_key_value_heads', file, numHeads);
  if (numHeads % numKVHeads !== 0) fail(`${file}: num_attention_heads ${numHeads} is not a multiple of num_key_value_heads ${numKVHeads}`);
  let headDim: number;
  if (c.head_dim !== undefined && c.head_dim !== null) headDim = posInt(c, 'head_dim', file);
  else {
    if (hiddenSize % numHeads !== 0) fail(`${file}: hidden_size ${hiddenSize} is not a multiple of num_attention_heads ${numHeads} and no head_dim is given`);
    headDim = hiddenSize / numHeads;
  }
  if (headDim % 2 !== 0) fail(`${file}: head_dim ${headDim} must be even for RoPE`);
  const rp = c.rope_parameters as Json | null | undefined;
  const ropeTheta = posNum(c.rope_theta ?? rp?.rope_theta ?? 10000, 'rope_theta', file);
  const rmsNormEps = posNum(c.rms_norm_eps ?? 1e-6, 'rms_norm_eps', file);
  const attnBias = bool(c, 'attention_bias', file, false);
  const bos = c.bos_token_id;
  if (bos !== undefined && bos !== null && !(Number.isInteger(bos) && (bos as number) >= 0)) fail(`${file}: "bos_token_id" must be a token id, found ${JSON.stringify(bos)}`);
  const dtype = c.dtype ?? c.torch_dtype ?? null;
  const attn = c._attn_implementation ?? c.attn_implementation ?? null;
  return {
    architecture,
    vocabSize: posInt(c, 'vocab_size', file),
    hiddenSize,
    intermediateSize: posInt(c, 'intermediate_size', file),
    numLayers: posInt(c, 'num_hidden_layers', file),
    numHeads,
    numKVHeads,
    headDim,
    ropeTheta,
    rmsNormEps,
    tieWordEmbeddings: bool(c, 'tie_word_embeddings', file, false),
    qkvBias: architecture === 'qwen2' ? true : attnBias,
    oBias: architecture === 'qwen2' ? false : attnBias,
    mlpBias: architecture === 'qwen2' ? false : bool(c, 'mlp_bias', file, false),
    maxPositionEmbeddings: posInt(c, 'max_position_embeddings', file, 32768),
    bosTokenId: typeof bos === 'number' ? bos : null,
    eosTokenIds: tokenIds(c.eos_token_id, 'eos_token_id', file),
    attnImplementation: typeof attn === 'string' ? attn : null,
    dtype: typeof dtype === 'string' ? dtype.replace(/^torch\./, '') : null,
  };
}

/** A config.json transformers 5 (and 4, via the top-level rope_theta) loads back to the same model shape. */
export function configToJson(cfg: ModelConfig): Json {
  if (cfg.architecture === 'qwen2' && (!cfg.qkvBias || cfg.oBias || cfg.mlpBias)) {
    fail(`config: qwen2 always has q/k/v biases and no o_proj/MLP biases; use architecture llama for other bias layouts`);
  }
  if (cfg.architecture === 'llama' && cfg.qkvBias !== cfg.oBias) {
    fail(`config: llama's attention_bias covers q/k/v and o_proj together; qkvBias and oBias must match`);
  }
  const eos = cfg.eosTokenIds.length === 1 ? cfg.eosTokenIds[0] : cfg.eosTokenIds.length ? cfg.eosTokenIds : null;
  const out: Json = {
    architectures: [CLASS_OF[cfg.architecture]],
    model_type: cfg.architecture,
    attention_dropout: 0.0,
    bos_token_id: cfg.bosTokenId,
    eos_token_id: eos,
    dtype: cfg.dtype ?? 'bfloat16',
    head_dim: cfg.headDim,
    hidden_act: 'silu',
    hidden_size: cfg.hiddenSize,
    initializer_range: 0.02,
    intermediate_size: cfg.intermediateSize,
    max_position_embeddings: cfg.maxPositionEmbeddings,
    num_attention_heads: cfg.numHeads,
    num_hidden_layers: cfg.numLayers,
    num_key_value_heads: cfg.numKVHeads,
    rms_norm_eps: cfg.rmsNormEps,
    rope_parameters: { rope_theta: cfg.ropeTheta, rope_type: 'default' },
    rope_theta: cfg.ropeTheta,
    tie_word_embeddings: cfg.tieWordEmbeddings,
    use_cache: true,
    vocab_size: cfg.vocabSize,
  };
  if (cfg.architecture === 'qwen2') {
    out.use_sliding_window = false;
    out.sliding_window = null;
    out.max_window_layers = cfg.numLayers;
    out.layer_types = new Array(cfg.numLayers).fill('full_attention');
  } else {
    out.attention_bias = cfg.qkvBias;
    out.mlp_bias = cfg.mlpBias;
  }
  if (cfg.attnImplementation) out._attn_implementation = cfg.attnImplementation;
  return out;
}
