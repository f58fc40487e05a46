/**
 * The compute interface the model code is written against. Two implementations: cpu (typed arrays, WASM SIMD)
 * and webgpu (WGSL). Ops take and return opaque Tensor handles; nothing is read back to the host until
 * `read()`, so a GPU backend can queue a whole forward pass without round trips.
 *
 * Conventions: activations are f32, row-major, the last dim contiguous. Weights keep their stored width
 * (F32, F16 or BF16) and are widened inside the kernels. `N` = rows = batch * tokens.
 */
import type { DType, HostTensor } from '../tensor/dtype.js';
import type { DrawFilters } from '../generate/sampling.js';

export interface Tensor {
  readonly shape: readonly number[];
  readonly dtype: DType;
}

/**
 * gravity: softmax of M²/(d² + ε); dot: softmax of scaled q·k; gravity-pure: the same gravity scores normalised
 * by their sum (no softmax, no exponential). See attention/registry.ts.
 */
export type AttentionKind = 'gravity' | 'dot' | 'gravity-pure';

export interface AttentionParams {
  kind: AttentionKind;
  numHeads: number;
  numKVHeads: number;
  headDim: number;
  /** gravity, gravity-pure: per query head M_h² = softplus(mass_log[h])², length numHeads. Unused for dot. */
  massSq: Float32Array | null;
  /** gravity softening ε (card: 0.1). */
  eps: number;
  /** dot: score scale, 1/sqrt(headDim) for standard attention. */
  scale: number;
}

/**
 * Per-layer key/value storage for `batch` sequences of up to `maxLen` slots: k and v as
 * [batch, numKVHeads, maxLen, headDim] plus cached squared key norms [batch, numKVHeads, maxLen] for gravity.
 * Slot t of sequence b is a real token iff keyValid[b * maxLen + t] = 1 (0 = left padding).
 */
export interface KVCache {
  readonly numLayers: number;
  readonly batch: number;
  readonly maxLen: number;
  readonly numKVHeads: number;
  readonly headDim: number;
  /** host copy of the padding mask; the backend uploads it when it changes */
  readonly keyValid: Uint8Array;
  /** number of slots filled (the same for every sequence of the batch) */
  length: number;
}

/** The input projections of one attention block (torch Linear layout), as model/qwen2.ts's LayerWeights has them. */
export interface QKVWeights {
  q: Tensor; k: Tensor; v: Tensor; // [Hq*D, C], [Hkv*D, C], [Hkv*D, C]
  qb: Tensor | null; kb: Tensor | null; vb: Tensor | null;
}

/**
 * Optional fused pieces of a decoder layer. Each gives the result of the op sequence it names; a backend whose
 * cost is per kernel launch (webgpu) offers them so that the model issues fewer launches per token (decode: the
 * norms go into the prologue of the GEMV that reads them, the residual adds into the epilogue of o and down).
 */
export interface FusedLayerOps {
  /**
   * q = rope(linear(h, w.q, w.qb)), k = rope(linear(h, w.k, w.kb)), v = linear(h, w.v, w.vb) (positions,
   * theta, `numHeads` query heads and the cache's kv heads / head dim); k and v go into the cache as
   * writeKV(cache, layer, k, v, start, T) puts them. Returns q [N, numHeads * headDim]. With `norm`, `h` is the
   * residual stream and the projections take rmsnorm(h, norm.w, norm.eps).
   */
  qkvRope(h: Tensor, w: QKVWeights, positions: Int32Array, theta: number, numHeads: number, cache: KVCache, layer: number, start: number, T: number, norm?: NormArg): Tensor;
  /** swiglu(linear(h, gate, gateb), linear(h, up, upb)), of rmsnorm(h, norm.w, norm.eps) when `norm` is given */
  gateUp(h: Tensor, gate: Tensor, gateb: Tensor | null, up: Tensor, upb: Tensor | null, norm?: NormArg): Tensor;
  /** add(res, linear(x, w, b)): the residual add of a decoder layer */
  linearAdd(x: Tensor, w: Tensor, b: Tensor | null, res: Tensor): Tensor;
  /** add(res, linear(attention(q, cache, layer, start, T, p), w, b)): attention and the o projection of a layer */
  attentionOut(q: Tensor, cache: KVCache, layer: number, start: number, T: number, p: AttentionParams, w: Tensor, b: Tensor | null, res: Tensor): Tensor;
}

/** an RMSNorm to apply to a fused op's input first */
export interface NormArg {
  w: Tensor;
  eps: number;
}

export interface Backend {
  readonly name: 'cpu' | 'webgpu';
  /** optional fused layer ops (see FusedLayerOps); the model uses them when present */
  readonly fused?: FusedLayerOps;
  /** optional: index of the largest value of each row of x [R, V] (first on ties), without reading x back */
  argmaxRows?(x: Tensor): Promise<Int32Array>;
  /**
   * Optional trio for greedy decoding that stays on the device (a GPU backend): the argmax ids of x [R, V] as an
   * I32 tensor [R] (a row holding NaN/inf gives -1), an embedding lookup whose ids are such a tensor, and a
   * read of it whose copy is queued at once, so the caller can record the next token while it completes.
   */
  argmaxDevice?(x: Tensor): Tensor;
  /**
   * Like argmaxDevice, a temperature draw instead: row r's token is the first id whose running sum of
   * exp((x - max) / temperature) passes u[r] * (the row's sum), u[r] in [0, 1) from the caller's generator; with
   * filters, the draw of generate/sampling.ts's drawToken (top-k required, 1..DEVICE_TOPK_MAX, for top-p / min-p).
   */
  sampleDevice?(x: Tensor, temperature: number, u: Float32Array, filters?: DrawFilters): Tensor;
  /**
   * A repetition penalty kept on the device: seenMaskDevice makes each row's mask of seen ids ([R, ceil(V/32)] bits)
   * from its history; penalizeDevice first marks the ids `prev` (a previous step's device ids, or null) and then
   * applies the penalty to the logits of seen ids in place (x > 0: x / penalty; x < 0: x * penalty).
   */
  seenMaskDevice?(vocab: number, history: readonly (readonly number[])[]): Tensor;
  penalizeDevice?(x: Tensor, seen: Tensor, prev: Tensor | null, penalty: number): void;
  embeddingDevice?(ids: Tensor, table: Tensor): Tensor;
  readIds?(ids: Tensor): Promise<Int32Array>;

  /**
   * Upload a host tensor; F16/BF16 stay 16-bit (weights), other floats become F32. `hint` 'linear' says the
   * tensor is only ever a `linear` weight, so a backend may move it into kernel memory and drop the host copy.
   */
  upload(t: HostTensor, hint?: 'linear' | 'other'): Tensor;
  /**
   * Optional: a linear-only weight [rows, cols] kept in GGUF's Q8_0 blocks (8 bits a weight plus a scale per 32)
   * instead of widened; forward only. The tensor's dtype reads 'BF16' (its values are not stored in any DType).
   */
  uploadQ8?(blocks: Uint8Array, shape: [number, number]): Tensor;
  fromF32(data: Float32Array, shape: number[]): Tensor;
  read(t: Tensor): Promise<Float32Array>;
  /** Frees a tensor, or a KV cache (sessions end with this; otherwise memory waits for garbage collection). */
  dispose(t: Tensor | KVCache): void;

  /** ids [N] -> [N, C]; rows of a [V, C] table. */
  embedding(ids: Int32Array, table: Tensor): Tensor;
  /** x [N, C], w [C] -> x / rms(x) * w */
  rmsnorm(x: Tensor, w: Tensor, eps: number): Tensor;
  /** x [N, IN], w [OUT, IN] (torch Linear layout), b [OUT] | null -> [N, OUT] */
  linear(x: Tensor, w: Tensor, b: Tensor | null): Tensor;
  /** rows of x [N, C] -> [rows.length, C] (e.g. the last position of each sequence before lm_head) */
  gatherRows(x: Tensor, rows: Int32Array): Tensor;
  /** a + b, same shape */
  add(a: Tensor, b: Tensor): Tensor;
  /** silu(gate) * up, same shape */
  swiglu(gate: Tensor, up: Tensor): Tensor;
  /** Rotary embedding (HF rotate_half convention) on x [N, heads * headDim]; positions [N]. Returns a new tensor. */
  rope(x: Tensor, positions: Int32Array, heads: number, headDim: number, theta: number): Tensor;

  createKVCache(numLayers: number, batch: number, maxLen: number, numKVHeads: number, headDim: number): KVCache;
  /** Write k, v [batch * T, numKVHeads * headDim] into slots [start, start + T) of `layer`. */
  writeKV(cache: KVCache, layer: number, k: Tensor, v: Tensor, start: number, T: number): void;
  /**
   * q [batch * T, numHeads * headDim] for the tokens in slots [start, start + T). Each query attends causally to
   * the valid slots <= its own. Streams over keys with an online softmax (no [T x keys] matrix).
   * Returns [batch * T, numHeads * headDim].
   */
  attention(q: Tensor, cache: KVCache, layer: number, start: number, T: number, p: AttentionParams): Tensor;
  /**
   * Debug/research: the full probability matrix of `layer` for queries in slots [start, start+T) against
   * slots [0, start+T): [batch, numHeads, T, start + T]. Masked entries are 0.
   */
  attentionProbs(q: Tensor, cache: KVCache, layer: number, start: number, T: number, p: AttentionParams): Promise<Float32Array>;

  /** Wait for queued work (no-op on cpu). */
  sync(): Promise<void>;
}
