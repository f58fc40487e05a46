/**
 * GGUF models without a file system (shared by the Node reader io/gguf.ts and the browser loader web/load.ts): the
 * config from llama.cpp's metadata keys (qwen2, llama), the tensor table under Hugging Face names with every
 * tensor's extent checked against the file size, tensor bytes decoded (F32 / F16 / BF16 as stored, block formats
 * dequantized to BF16, llama's q/k rows un-permuted), the gravity masses and defaults, and the tokenizer.
 */
import { fail } from '../errors.js';
import type { ModelConfig } from '../model/config.js';
import { fromF32, numel, type DType, type HostTensor } from '../tensor/dtype.js';
import { BLOCK, GGML, dequantize } from './gguf-quants.js';
import { tokenizerFromGguf } from './gguf-tokenizer.js';
import { expectedWeightShapes, type ModelDefaults } from './model-files.js';
import { ATTENTION_KINDS } from '../attention/registry.js';
import type { AttentionKind } from '../backend/backend.js';

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

export function permuteTensor(t: HostTensor, heads: number, undo: boolean): HostTensor {
  const rows = t.shape[0];
  const rowLen = numel(t.shape) / rows;
  if (t.data instanceof Float32Array) return { ...t, data: permuteRows(t.data, rows, rowLen, heads, undo, (n) => new Float32Array(n)) };
  if (t.data instanceof Uint16Array) return { ...t, data: permuteRows(t.data, rows, rowLen, heads, undo, (n) => new Uint16Array(n)) };
  return fail(`GGUF: cannot reorder ${t.dtype} q/k rows`);
}

/** heads whose rows a llama q/k tensor (weight or bias) interleaves, or 0 */
export function permutedHeads(cfg: ModelConfig, hf: string): number {
  if (cfg.architecture !== 'llama') return 0;
  if (/self_attn\.q_proj\./.test(hf)) return cfg.numHeads;
  if (/self_attn\.k_proj\./.test(hf)) return cfg.numKVHeads;
  return 0;
}

/** the metadata and tensor table as @huggingface/gguf parses them */
export interface GgufParsed {
  metadata: unknown;
  tensorInfos: { name: string; shape: (number | bigint)[]; dtype: number; offset: number | bigint }[];
  tensorDataOffset: number | bigint;
  littleEndian?: boolean;
}

/** one tensor's place in the file */
export interface GgufEntry {
  name: string;
  type: number;
  /** PyTorch order */
  shape: number[];
  offset: number;
  bytes: number;
}

export interface GgufModel {
  label: string;
  config: ModelConfig;
  /** by Hugging Face name */
  tensors: Map<string, GgufEntry>;
  masses: Float32Array[] | null;
  defaults: ModelDefaults;
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

/** Checks a parsed GGUF file of `size` bytes and describes it as a model (no tensor data is read). */
export function describeGguf(parsed: GgufParsed, label: string, size: number): GgufModel {
  const meta = parsed.metadata as unknown as Record<string, unknown>;
  if (parsed.littleEndian === false) fail(`${label}: a big-endian GGUF file; only little-endian files are read`);
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
    // every stop id where the file lists them (our key; llama.cpp files name one eos)
    eosTokenIds: Array.isArray(meta['gravity.eos_token_ids']) ? (meta['gravity.eos_token_ids'] as number[]).map(Number) : typeof eos === 'number' ? [eos] : [],
    attnImplementation: null,
    dtype: null,
  };
  if (Array.isArray(tokens) && tokens.length > config.vocabSize) fail(`${label}: ${tokens.length} tokens for an embedding of ${config.vocabSize} rows`);
  const dataStart = Number(parsed.tensorDataOffset);
  // the HF names this config needs (its biases and tied head read off the file's tensors above), by GGUF name
  const hfByGguf = new Map([...expectedWeightShapes(config).keys()].map((n) => [ggufName(n)!, n]));
  // HF name -> tensor info; every tensor's bytes must lie inside the file
  const byHf = new Map<string, GgufEntry>();
  for (const t of parsed.tensorInfos) {
    const shape = t.shape.map(Number).reverse();
    const blk = BLOCK[t.dtype];
    if (!blk) fail(`${label}: tensor ${t.name} has GGML type ${t.dtype}, which is not read here (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K)`);
    if (shape[shape.length - 1] % blk.n !== 0) fail(`${label}: tensor ${t.name}: rows of ${shape[shape.length - 1]} are not whole ${blk.name} blocks`);
    const bytes = (numel(shape) / blk.n) * blk.bytes;
    const offset = dataStart + Number(t.offset);
    if (offset + bytes > size) fail(`${label}: tensor ${t.name} ends at byte ${offset + bytes}, past the end of the file (${size} bytes): truncated?`);
    const entry: GgufEntry = { name: t.name, type: t.dtype, shape, offset, bytes };
    const hf = hfByGguf.get(t.name);
    if (hf) byHf.set(hf, entry);
  }
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
  if ((ATTENTION_KINDS as readonly unknown[]).includes(att)) defaults.attention = att as AttentionKind;
  const eps = meta['gravity.eps'];
  if (typeof eps === 'number' && eps > 0) defaults.eps = eps;
  const tok = meta['gravity.placeholder_vocab'] === true ? null : tokenizerFromGguf(meta, label);
  return { label, config, tensors: byHf, masses, defaults, tokenizerJson: tok?.json ?? null, tokenizerConfig: tok?.config ?? null };
}

/** the dtype a tensor has once read: as stored, or BF16 for the block formats */
export function entryDtype(e: GgufEntry): DType {
  return e.type === GGML.F32 ? 'F32' : e.type === GGML.F16 ? 'F16' : 'BF16';
}

/** tensor `hf`'s raw Q8_0 bytes with its rows in HF order (llama's q/k un-permuted), for Backend.uploadQ8 */
export function q8Rows(m: GgufModel, hf: string, b: Uint8Array): Uint8Array {
  const e = m.tensors.get(hf)!;
  const heads = permutedHeads(m.config, hf);
  if (!heads) return b;
  const rowBytes = b.length / e.shape[0];
  return permuteRows(b, e.shape[0], rowBytes, heads, true, (n) => new Uint8Array(n));
}

/** tensor `hf`'s bytes (as read from the file at its entry) as a host tensor in HF layout */
export function decodeTensor(m: GgufModel, hf: string, b: Uint8Array): HostTensor {
  const e = m.tensors.get(hf)!;
  let t: HostTensor;
  // a copy the typed arrays can view at offset 0 (ranged reads may hand back unaligned views)
  const own = b.byteOffset % 4 === 0 ? b : b.slice();
  if (e.type === GGML.F32) t = { dtype: 'F32', shape: e.shape, data: new Float32Array(own.buffer, own.byteOffset, own.length / 4) };
  else if (e.type === GGML.F16 || e.type === GGML.BF16) t = { dtype: entryDtype(e), shape: e.shape, data: new Uint16Array(own.buffer, own.byteOffset, own.length / 2) };
  else t = fromF32(dequantize(e.type, own, numel(e.shape)), e.shape, 'BF16');
  const heads = permutedHeads(m.config, hf);
  return heads ? permuteTensor(t, heads, true) : t;
}


