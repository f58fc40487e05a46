/**
 * GGUF models (llama.cpp's format) in and out. Reading: the metadata and tensor table through @huggingface/gguf,
 * the tensor data by positioned reads; qwen2 and llama architectures; F32 / F16 / BF16 kept as stored, block
 * formats (Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q5_K, Q6_K) dequantized to BF16 at load; llama's q/k rows un-permuted
 * (llama.cpp's converter interleaves them for its RoPE). Gravity files carry the masses in the metadata key
 * gravity.mass_log (f32 [layers x heads], layer-major: llama.cpp refuses tensors it does not expect, keys it
 * ignores) with gravity.attention / gravity.eps; files without them (llama.cpp's own) load like any folder without
 * masses (--masses, --mass-init or --attn dot).
 * Writing (`gravity export`): a file llama.cpp loads (it runs dot-product attention: the card's "useless GGUF"),
 * which this runtime loads back with gravity.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { gguf } from '@huggingface/gguf';
import { fail } from '../errors.js';
import type { ModelConfig } from '../model/config.js';
import { fromF32, numel, toF32, type DType, type HostTensor } from '../tensor/dtype.js';
import { BLOCK, GGML, dequantize, quantizeQ8_0 } from './gguf-quants.js';
import { tokenizerFromGguf, tokenizerToGguf } from './gguf-tokenizer.js';
import { writeGguf, type GgufTensorOut, type GgufValue } from './gguf-write.js';
import { readFully } from './safetensors.js';
import type { WeightStore } from './safetensors-header.js';
import type { ModelDefaults } from './model-files.js';

/** a path that names a GGUF file (not a model folder) */
export function isGgufFile(p: string): boolean {
  return p.toLowerCase().endsWith('.gguf') && (!fs.existsSync(p) || fs.statSync(p).isFile());
}

/** Hugging Face tensor name -> GGUF tensor name (llama.cpp's names for qwen2 / llama) */
export function ggufName(hf: string): string | null {
  const fixed: Record<string, string> = { 'model.embed_tokens.weight': 'token_embd.weight', 'model.norm.weight': 'output_norm.weight', 'lm_head.weight': 'output.weight' };
  if (fixed[hf]) return fixed[hf];
  const m = /^model\.layers\.(\d+)\.(.+)\.(weight|bias)$/.exec(hf);
  if (!m) return null;
  const part: Record<string, string> = {
    input_layernorm: 'attn_norm', post_attention_layernorm: 'ffn_norm', 'self_attn.q_proj': 'attn_q', 'self_attn.k_proj': 'attn_k',
    'self_attn.v_proj': 'attn_v', 'self_attn.o_proj': 'attn_output', 'mlp.gate_proj': 'ffn_gate', 'mlp.up_proj': 'ffn_up', 'mlp.down_proj': 'ffn_down',
  };
  return part[m[2]] ? `blk.${m[1]}.${part[m[2]]}.${m[3]}` : null;
}

/**
 * llama.cpp's converter reorders llama's q/k rows per head from halves (HF's rotate_half RoPE) to interleaved pairs;
 * `undo` maps them back. Rows of `rowLen` values (any element type).
 */
function permuteRows<T extends { length: number; subarray(a: number, b: number): T; set(x: T, o: number): void }>(x: T, rows: number, rowLen: number, heads: number, undo: boolean, make: (n: number) => T): T {
  const out = make(x.length);
  const D = rows / heads;
  const half = D / 2;
  for (let h = 0; h < heads; h++) {
    for (let i = 0; i < half; i++) {
      for (let j = 0; j < 2; j++) {
        const hfRow = h * D + j * half + i; // HF: first half, then second half
        const ggRow = h * D + 2 * i + j; // GGUF: interleaved
        const [from, to] = undo ? [ggRow, hfRow] : [hfRow, ggRow];
        out.set(x.subarray(from * rowLen, (from + 1) * rowLen), to * rowLen);
      }
    }
  }
  return out;
}

function permuteTensor(t: HostTensor, heads: number, undo: boolean): HostTensor {
  const rows = t.shape[0];
  const rowLen = numel(t.shape) / rows;
  if (t.data instanceof Float32Array) return { ...t, data: permuteRows(t.data, rows, rowLen, heads, undo, (n) => new Float32Array(n)) };
  if (t.data instanceof Uint16Array) return { ...t, data: permuteRows(t.data, rows, rowLen, heads, undo, (n) => new Uint16Array(n)) };
  return fail(`GGUF: cannot reorder ${t.dtype} q/k rows`);
}

/** heads whose rows a llama q/k tensor (weight or bias) interleaves, or 0 */
function permutedHeads(cfg: ModelConfig, hf: string): number {
  if (cfg.architecture !== 'llama') return 0;
  if (/self_attn\.q_proj\./.test(hf)) return cfg.numHeads;
  if (/self_attn\.k_proj\./.test(hf)) return cfg.numKVHeads;
  return 0;
}

export interface GgufModelFiles {
  config: ModelConfig;
  weights: WeightStore;
  masses: Float32Array[] | null;
  defaults: ModelDefaults;
  eosTokenIds: number[];
  tokenizerJson: object | null;
  tokenizerConfig: object | null;
}

const num = (meta: Record<string, unknown>, k: string, label: string, dflt?: number): number => {
  const v = meta[k];
  if (v === undefined) {
    if (dflt !== undefined) return dflt;
    return fail(`${label}: metadata key ${k} is missing`);
  }
  const n = typeof v === 'bigint' ? Number(v) : v;
  if (typeof n !== 'number' || !Number.isFinite(n)) fail(`${label}: metadata key ${k} is ${JSON.stringify(String(v))}, not a number`);
  return n;
};

/** Parses a GGUF file's metadata and tensor table and opens its tensors by their Hugging Face names. */
export async function openGgufModel(file: string): Promise<GgufModelFiles> {
  const label = path.basename(file);
  if (!fs.existsSync(file)) fail(`${file}: file does not exist`);
  const size = fs.statSync(file).size;
  let parsed: Awaited<ReturnType<typeof gguf>>;
  try {
    parsed = await gguf(path.resolve(file), { allowLocalFile: true });
  } catch (e) {
    return fail(`${label}: not a readable GGUF file (${(e as Error).message})`);
  }
  const meta = parsed.metadata as unknown as Record<string, unknown>;
  const arch = meta['general.architecture'];
  if (arch !== 'qwen2' && arch !== 'llama') fail(`${label}: architecture '${String(arch)}' is not supported (qwen2, llama)`);
  const k = (s: string) => `${arch}.${s}`;
  const infos = new Map(parsed.tensorInfos.map((t) => [t.name, t]));
  const C = num(meta, k('embedding_length'), label);
  const H = num(meta, k('attention.head_count'), label);
  const rope = meta[k('rope.scaling.type')];
  if (rope !== undefined && rope !== 'none') fail(`${label}: RoPE scaling '${String(rope)}' is not supported`);
  const embd = infos.get('token_embd.weight');
  if (!embd) fail(`${label}: no token_embd.weight tensor`);
  const tokens = meta['tokenizer.ggml.tokens'];
  const eos = meta['tokenizer.ggml.eos_token_id'];
  const bos = meta['tokenizer.ggml.bos_token_id'];
  const config: ModelConfig = {
    architecture: arch,
    vocabSize: Number(embd.shape[1]),
    hiddenSize: C,
    intermediateSize: num(meta, k('feed_forward_length'), label),
    numLayers: num(meta, k('block_count'), label),
    numHeads: H,
    numKVHeads: num(meta, k('attention.head_count_kv'), label, H),
    headDim: num(meta, k('attention.key_length'), label, C / H),
    ropeTheta: num(meta, k('rope.freq_base'), label, 10000),
    rmsNormEps: num(meta, k('attention.layer_norm_rms_epsilon'), label),
    tieWordEmbeddings: !infos.has('output.weight'),
    qkvBias: infos.has('blk.0.attn_q.bias'),
    oBias: infos.has('blk.0.attn_output.bias'),
    mlpBias: infos.has('blk.0.ffn_gate.bias'),
    maxPositionEmbeddings: num(meta, k('context_length'), label),
    bosTokenId: typeof bos === 'number' ? bos : null,
    eosTokenIds: typeof eos === 'number' ? [eos] : [],
    attnImplementation: null,
    dtype: null,
  };
  if (Array.isArray(tokens) && tokens.length > config.vocabSize) fail(`${label}: ${tokens.length} tokens for an embedding of ${config.vocabSize} rows`);
  const dataStart = Number(parsed.tensorDataOffset);
  // HF name -> tensor info; every tensor's bytes must lie inside the file
  const byHf = new Map<string, { name: string; type: number; shape: number[]; offset: number; bytes: number }>();
  for (const t of parsed.tensorInfos) {
    const shape = t.shape.map(Number).reverse();
    const blk = BLOCK[t.dtype];
    if (!blk) fail(`${label}: tensor ${t.name} has GGML type ${t.dtype}, which is not read here (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q8_0, Q4_K, Q5_K, Q6_K)`);
    if (shape[shape.length - 1] % blk.n !== 0) fail(`${label}: tensor ${t.name}: rows of ${shape[shape.length - 1]} are not whole ${blk.name} blocks`);
    const bytes = (numel(shape) / blk.n) * blk.bytes;
    const offset = dataStart + Number(t.offset);
    if (offset + bytes > size) fail(`${label}: tensor ${t.name} ends at byte ${offset + bytes}, past the end of the file (${size} bytes): truncated?`);
    const entry = { name: t.name, type: t.dtype, shape, offset, bytes };
    const hf = hfNames(config).find((n) => ggufName(n) === t.name);
    if (hf) byHf.set(hf, entry);
  }
  const fd = fs.openSync(file, 'r');
  const raw = (e: { offset: number; bytes: number }) => {
    const b = new Uint8Array(e.bytes);
    readFully(fd, b, e.offset, label);
    return b;
  };
  const asDtype = (type: number): DType => (type === GGML.F32 ? 'F32' : type === GGML.F16 ? 'F16' : 'BF16');
  const readHost = (e: { name: string; type: number; shape: number[]; offset: number; bytes: number }): HostTensor => {
    const b = raw(e);
    if (e.type === GGML.F32) return { dtype: 'F32', shape: e.shape, data: new Float32Array(b.buffer) };
    if (e.type === GGML.F16 || e.type === GGML.BF16) return { dtype: asDtype(e.type), shape: e.shape, data: new Uint16Array(b.buffer) };
    return fromF32(dequantize(e.type, b, numel(e.shape)), e.shape, 'BF16');
  };
  const weights: WeightStore = {
    dir: file,
    label,
    names: () => [...byHf.keys()],
    has: (n) => byHf.has(n),
    info: (n) => {
      const e = byHf.get(n);
      if (!e) return fail(`${label}: no tensor ${ggufName(n) ?? n} (for ${n})`);
      return { dtype: asDtype(e.type), shape: e.shape, file };
    },
    read: (n) => {
      const e = byHf.get(n);
      if (!e) return fail(`${label}: no tensor ${ggufName(n) ?? n} (for ${n})`);
      const t = readHost(e);
      const heads = permutedHeads(config, n);
      return heads ? permuteTensor(t, heads, true) : t;
    },
    close: () => fs.closeSync(fd),
  };
  let masses: Float32Array[] | null = null;
  const ml = meta['gravity.mass_log'];
  if (ml !== undefined) {
    const L = config.numLayers;
    if (!Array.isArray(ml) || ml.length !== L * H || !ml.every((x) => typeof x === 'number')) {
      fail(`${label}: gravity.mass_log must hold ${L} layers x ${H} heads = ${L * H} numbers, found ${Array.isArray(ml) ? ml.length : typeof ml}`);
    }
    masses = Array.from({ length: L }, (_, l) => Float32Array.from((ml as number[]).slice(l * H, (l + 1) * H)));
  }
  const defaults: ModelDefaults = {};
  const att = meta['gravity.attention'];
  if (att === 'gravity' || att === 'dot' || att === 'gravity-pure') defaults.attention = att;
  const eps = meta['gravity.eps'];
  if (typeof eps === 'number' && eps > 0) defaults.eps = eps;
  const tok = meta['gravity.placeholder_vocab'] === true ? null : tokenizerFromGguf(meta, label);
  return { config, weights, masses, defaults, eosTokenIds: config.eosTokenIds, tokenizerJson: tok?.json ?? null, tokenizerConfig: tok?.config ?? null };
}

/** every HF tensor name a config can have (weights and biases) */
function hfNames(cfg: ModelConfig): string[] {
  const out = ['model.embed_tokens.weight', 'model.norm.weight', 'lm_head.weight'];
  const parts = ['input_layernorm', 'post_attention_layernorm', 'self_attn.q_proj', 'self_attn.k_proj', 'self_attn.v_proj', 'self_attn.o_proj', 'mlp.gate_proj', 'mlp.up_proj', 'mlp.down_proj'];
  for (let l = 0; l < cfg.numLayers; l++) for (const p of parts) for (const s of ['weight', 'bias']) out.push(`model.layers.${l}.${p}.${s}`);
  return out;
}

export type ExportType = 'keep' | 'f32' | 'f16' | 'bf16' | 'q8_0';

/** what a GGUF file holds, as exportGguf takes it (openGgufModel's result is one, plus a name) */
export interface ExportSource extends GgufModelFiles {
  name: string;
}

/** Writes `src` as a GGUF file llama.cpp can load (plus the gravity keys and masses); `type` for the 2-D weights. */
export function exportGguf(src: ExportSource, out: string, type: ExportType = 'keep'): void {
  const c = src.config;
  const a = c.architecture;
  const meta = new Map<string, GgufValue>([
    ['general.architecture', { t: 'str', v: a }],
    ['general.name', { t: 'str', v: src.name }],
    [`${a}.block_count`, { t: 'u32', v: c.numLayers }],
    [`${a}.context_length`, { t: 'u32', v: c.maxPositionEmbeddings }],
    [`${a}.embedding_length`, { t: 'u32', v: c.hiddenSize }],
    [`${a}.feed_forward_length`, { t: 'u32', v: c.intermediateSize }],
    [`${a}.attention.head_count`, { t: 'u32', v: c.numHeads }],
    [`${a}.attention.head_count_kv`, { t: 'u32', v: c.numKVHeads }],
    [`${a}.rope.freq_base`, { t: 'f32', v: c.ropeTheta }],
    [`${a}.attention.layer_norm_rms_epsilon`, { t: 'f32', v: c.rmsNormEps }],
  ]);
  if (c.headDim !== c.hiddenSize / c.numHeads) {
    meta.set(`${a}.attention.key_length`, { t: 'u32', v: c.headDim });
    meta.set(`${a}.attention.value_length`, { t: 'u32', v: c.headDim });
  }
  if (src.defaults.attention) meta.set('gravity.attention', { t: 'str', v: src.defaults.attention });
  if (src.defaults.eps) meta.set('gravity.eps', { t: 'f32', v: src.defaults.eps });
  if (src.tokenizerJson) {
    for (const [key, v] of tokenizerToGguf(src.tokenizerJson, src.tokenizerConfig, c.vocabSize, src.eosTokenIds, c.bosTokenId)) meta.set(key, v);
  } else {
    // llama.cpp sizes the embedding by the vocabulary, so a model without a tokenizer gets placeholder tokens (one per
    // id, no merges), marked so that reading the file back gives no tokenizer
    meta.set('tokenizer.ggml.model', { t: 'str', v: 'gpt2' });
    meta.set('tokenizer.ggml.pre', { t: 'str', v: 'default' });
    meta.set('tokenizer.ggml.tokens', { t: 'str[]', v: Array.from({ length: c.vocabSize }, (_, i) => `[TOKEN${i}]`) });
    meta.set('tokenizer.ggml.token_type', { t: 'i32[]', v: new Array(c.vocabSize).fill(1) });
    meta.set('tokenizer.ggml.merges', { t: 'str[]', v: [] });
    meta.set('gravity.placeholder_vocab', { t: 'bool', v: true });
    if (src.eosTokenIds.length) meta.set('tokenizer.ggml.eos_token_id', { t: 'u32', v: src.eosTokenIds[0] });
    if (c.bosTokenId !== null) meta.set('tokenizer.ggml.bos_token_id', { t: 'u32', v: c.bosTokenId });
  }
  const tensors: GgufTensorOut[] = [];
  for (const hf of src.weights.names()) {
    const name = ggufName(hf);
    if (!name) continue;
    const info = src.weights.info(hf);
    const matrix = info.shape.length === 2;
    let want = !matrix ? 'F32' : type === 'keep' ? info.dtype : type.toUpperCase();
    if (want === 'Q8_0' && info.shape[1] % 32 !== 0) want = 'F16'; // rows that are not whole blocks, as llama.cpp falls back
    const ggType = want === 'F16' ? GGML.F16 : want === 'BF16' ? GGML.BF16 : want === 'Q8_0' ? GGML.Q8_0 : GGML.F32;
    if (!['F32', 'F16', 'BF16', 'Q8_0'].includes(want)) fail(`export: ${hf} is ${info.dtype}, which GGUF export does not take`);
    tensors.push({
      name,
      shape: info.shape,
      type: ggType,
      data: () => {
        let t = src.weights.read(hf);
        const heads = permutedHeads(c, hf);
        if (heads) t = permuteTensor(t, heads, false);
        if (ggType === GGML.Q8_0) return quantizeQ8_0(toF32(t));
        const host = t.dtype === want ? t : fromF32(toF32(t), t.shape, want as DType);
        const d = host.data as Float32Array | Uint16Array;
        return new Uint8Array(d.buffer, d.byteOffset, d.byteLength);
      },
    });
  }
  if (src.masses) meta.set('gravity.mass_log', { t: 'f32[]', v: src.masses.flatMap((m) => Array.from(m)) });
  writeGguf(out, meta, tensors);
}
