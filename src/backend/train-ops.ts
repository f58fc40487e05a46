/**
 * The training interface: explicit forward/backward pairs over backend Tensors. The cpu implementation is
 * src/train/cpu-train-ops.ts; a WebGPU one implements the same methods. The training forward does not use the
 * KV cache: attention runs over the q, k, v activations of a [B, T] batch directly (causal, no padding mask:
 * pad on the right and give padded labels -100).
 *
 * Conventions: activations are in the ops' working precision (`precision`), row-major, `N` = B * T rows.
 * Frozen weights keep their stored width (whatever Backend.upload made of them); trainable parameters are
 * activation-precision tensors made by `fromHost`. Backward methods return fresh tensors (no accumulation
 * into arguments), so the caller owns every result and disposes it.
 */
import type { AttentionKind, Backend, Tensor } from './backend.js';

export interface TrainAttentionParams {
  kind: AttentionKind;
  numHeads: number;
  numKVHeads: number;
  headDim: number;
  /** gravity / gravity-pure: raw mass_log per query head [numHeads] (M = softplus(mass_log)); null for dot */
  massLog: Float64Array | null;
  /** gravity softening ε */
  eps: number;
  /** dot: score scale (1/sqrt(headDim)) */
  scale: number;
}

export interface TrainOps {
  readonly backend: Backend;
  /** precision of activations and gradients */
  readonly precision: 'f32' | 'f64';

  /** A working-precision tensor from host values (activations, trainable parameters). */
  fromHost(data: Float32Array | Float64Array, shape: number[]): Tensor;
  read(t: Tensor): Promise<Float64Array>;
  dispose(t: Tensor): void;

  /** ids [N] -> rows of table [V, C] */
  embedding(ids: Int32Array, table: Tensor): Tensor;
  /** dTable [V, C] = scatter-add of dy [N, C] into the rows ids[N] */
  embeddingBackward(ids: Int32Array, dy: Tensor, vocab: number): Tensor;

  /** y = x * rstd * w with rstd [N] = 1/sqrt(mean(x²) + eps) saved for the backward pass */
  rmsnorm(x: Tensor, w: Tensor, eps: number): { y: Tensor; rstd: Tensor };
  /** dx [N, C] and dw [C] */
  rmsnormBackward(dy: Tensor, x: Tensor, w: Tensor, rstd: Tensor): { dx: Tensor; dw: Tensor };

  /** y [N, OUT] = x [N, IN] · wᵀ (+ b); w frozen (stored width) or trainable */
  linear(x: Tensor, w: Tensor, b: Tensor | null): Tensor;
  /** dx [N, IN] = dy [N, OUT] · w */
  linearBackwardInput(dy: Tensor, w: Tensor): Tensor;
  /** dw [OUT, IN] = dyᵀ · x */
  linearBackwardWeight(dy: Tensor, x: Tensor): Tensor;

  /** rows [start, start + count) of x [N, C] */
  sliceRows(x: Tensor, start: number, count: number): Tensor;
  /** row-wise concatenation of [Ni, C] tensors */
  concatRows(parts: Tensor[]): Tensor;
  /** a + alpha * b (same shape) */
  addScaled(a: Tensor, b: Tensor, alpha: number): Tensor;
  /** a * b elementwise (dropout masks) */
  mul(a: Tensor, b: Tensor): Tensor;
  /** inverted dropout mask (0 or 1/(1-p)) of `shape`, from a seed: the same seed gives the same mask */
  dropoutMask(shape: number[], p: number, seed: number): Tensor;

  /** RoPE (rotate_half) on x [N, heads * headDim] at positions [N] */
  rope(x: Tensor, positions: Int32Array, heads: number, headDim: number, theta: number): Tensor;
  /** the transpose of rope: rotation by the negative angle */
  ropeBackward(dy: Tensor, positions: Int32Array, heads: number, headDim: number, theta: number): Tensor;

  /** silu(gate) * up */
  swiglu(gate: Tensor, up: Tensor): Tensor;
  swigluBackward(dy: Tensor, gate: Tensor, up: Tensor): { dgate: Tensor; dup: Tensor };

  /**
   * q [B*T, Hq*D], k, v [B*T, Hkv*D] -> out [B*T, Hq*D] and lse [B*T, Hq] (log-sum-exp of each row's scores),
   * causal within each sequence.
   */
  attentionForwardTrain(q: Tensor, k: Tensor, v: Tensor, B: number, T: number, p: TrainAttentionParams): { out: Tensor; lse: Tensor };
  /**
   * FlashAttention-2 style backward: probabilities are recomputed from q, k and lse (no [T x T] matrix kept).
   * dk / dv of a KV head sum over its query heads. dMassLog [Hq] for gravity kinds, null for dot. gravity-pure
   * (no softmax) keeps log Σ_j s_ij in lse.
   */
  attentionBackward(
    dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, B: number, T: number, p: TrainAttentionParams,
  ): { dq: Tensor; dk: Tensor; dv: Tensor; dMassLog: Tensor | null };

  /**
   * Cross-entropy of logits [N, V] against targets [N] (already shifted: targets[t] = labels[t + 1]; -100 is
   * ignored). Returns per-row losses [N] (0 for ignored rows) and dlogits = scale * (softmax - onehot).
   */
  crossEntropy(logits: Tensor, targets: Int32Array, scale: number): { loss: Tensor; dlogits: Tensor };
}
