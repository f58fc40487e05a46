/**
 * GGUF models (llama.cpp's format) in and out, on Node. Reading: the metadata and tensor table through
 * @huggingface/gguf, described by gguf-model.ts (qwen2 / llama; F32 / F16 / BF16 kept, Q4_0, Q4_1, Q5_0, Q8_0,
 * Q4_K, Q5_K, Q6_K dequantized to BF16, Q8_0 linears also offered raw (readQ8) to a backend that keeps them;
 * llama's q/k rows un-permuted, as llama.cpp's converter interleaves them for
 * its RoPE), tensor data by positioned reads. Gravity files carry the masses in the metadata key gravity.mass_log
 * (f32 [layers x heads], layer-major: llama.cpp refuses tensors it does not expect, keys it ignores) with
 * gravity.attention / gravity.eps; files without them (llama.cpp's own) load like any folder without masses
 * (--masses, --mass-init or --attn dot).
 * Writing (`gravity export`): a file llama.cpp loads (it runs dot-product attention: the card's "useless GGUF"),
 * which this runtime loads back with gravity.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { gguf } from '@huggingface/gguf';
import { fail } from '../errors.js';
import { fromF32, toF32, type DType } from '../tensor/dtype.js';
import { BLOCK, GGML, quantizeQ8_0 } from './gguf-quants.js';
import { tokenizerToGguf } from './gguf-tokenizer.js';
import { writeGguf, type GgufTensorOut, type GgufValue } from './gguf-write.js';
import { decodeTensor, describeGguf, entryDtype, ggufName, permuteTensor, permutedHeads, q8Rows, type GgufEntry, type GgufParsed } from './gguf-model.js';
import { readFully } from './safetensors.js';
import type { WeightStore } from './safetensors-header.js';
import type { ModelConfig } from '../model/config.js';
import type { ModelDefaults } from './model-files.js';

export { ggufName } from './gguf-model.js';

/** a path that names a GGUF file (not a model folder) */
export function isGgufFile(p: string): boolean {
  return p.toLowerCase().endsWith('.gguf') && (!fs.existsSync(p) || fs.statSync(p).isFile());
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

/** Parses a GGUF file's metadata and tensor table and opens its tensors by their Hugging Face names. */
export async function openGgufModel(file: string): Promise<GgufModelFiles> {
  const label = path.basename(file);
  if (!fs.existsSync(file)) fail(`${file}: file does not exist`);
  const size = fs.statSync(file).size;
  let parsed: GgufParsed;
  try {
    parsed = (await gguf(path.resolve(file), { allowLocalFile: true })) as unknown as GgufParsed;
  } catch (e) {
    return fail(`${label}: not a readable GGUF file (${(e as Error).message})`);
  }
  const m = describeGguf(parsed, label, size);
  const fd = fs.openSync(file, 'r');
  const entry = (n: string) => m.tensors.get(n) ?? fail(`${label}: no tensor ${ggufName(n) ?? n} (for ${n})`);
  const bytes = (e: GgufEntry) => {
    const b = new Uint8Array(e.bytes);
    readFully(fd, b, e.offset, label);
    return b;
  };
  const weights: WeightStore = {
    dir: file,
    label,
    names: () => [...m.tensors.keys()],
    has: (n) => m.tensors.has(n),
    info: (n) => {
      const e = entry(n);
      const blk = BLOCK[e.type];
      return { dtype: entryDtype(e), shape: e.shape, file, ...(blk.n > 1 ? { stored: blk.name } : {}) };
    },
    read: (n) => decodeTensor(m, n, bytes(entry(n))),
    readQ8: (n) => {
      const e = entry(n);
      return e.type === GGML.Q8_0 && e.shape.length === 2 ? q8Rows(m, n, bytes(e)) : null;
    },
    close: () => fs.closeSync(fd),
  };
  return { config: m.config, weights, masses: m.masses, defaults: m.defaults, eosTokenIds: m.config.eosTokenIds, tokenizerJson: m.tokenizerJson, tokenizerConfig: m.tokenizerConfig };
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
    for (const [key, v] of tokenizerToGguf(src.tokenizerJson, src.tokenizerConfig, c.vocabSize)) meta.set(key, v);
  } else {
    // llama.cpp sizes the embedding by the vocabulary, so a model without a tokenizer gets placeholder tokens (one per
    // id, no merges), marked so that reading the file back gives no tokenizer
    meta.set('tokenizer.ggml.model', { t: 'str', v: 'gpt2' });
    meta.set('tokenizer.ggml.pre', { t: 'str', v: 'default' });
    meta.set('tokenizer.ggml.tokens', { t: 'str[]', v: Array.from({ length: c.vocabSize }, (_, i) => `[TOKEN${i}]`) });
    meta.set('tokenizer.ggml.token_type', { t: 'i32[]', v: new Array(c.vocabSize).fill(1) });
    meta.set('tokenizer.ggml.merges', { t: 'str[]', v: [] });
    meta.set('gravity.placeholder_vocab', { t: 'bool', v: true });
  }
  if (src.eosTokenIds.length) meta.set('tokenizer.ggml.eos_token_id', { t: 'u32', v: src.eosTokenIds[0] });
  if (c.bosTokenId !== null) meta.set('tokenizer.ggml.bos_token_id', { t: 'u32', v: c.bosTokenId });
  const tensors: GgufTensorOut[] = [];
  for (const hf of src.weights.names()) {
    const name = ggufName(hf);
    if (!name) continue;
    const info = src.weights.info(hf);
    const matrix = info.shape.length === 2;
    let want = !matrix ? 'F32' : type === 'keep' ? info.dtype : type.toUpperCase();
    if (want === 'Q8_0' && info.shape[1] % 32 !== 0) want = 'F16'; // rows that are not whole blocks, as llama.cpp falls back
    if (!['F32', 'F16', 'BF16', 'Q8_0'].includes(want)) fail(`export: ${hf} is ${info.dtype}, which GGUF export does not take`);
    const ggType = GGML[want as 'F32' | 'F16' | 'BF16' | 'Q8_0'];
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
  if (src.eosTokenIds.length > 1) meta.set('gravity.eos_token_ids', { t: 'i32[]', v: src.eosTokenIds });
  writeGguf(out, meta, tensors);
}
