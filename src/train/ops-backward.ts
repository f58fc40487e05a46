/**
 * CPU training kernels, forward and backward side by side, as plain loops over Float32Array or Float64Array
 * (the arrays' own width is the working precision; sums run in f64 either way). Attention is in
 * ./attention-backward.ts. Caller-owned outputs, explicit sizes (llm.c style).
 */
import { f16Table, type HostTensor } from '../tensor/dtype.js';
import { ropeForward, swigluForward } from '../backend/cpu/ops.js';

export type Arr = Float32Array | Float64Array;

export function newArr(like: 'f32' | 'f64', n: number): Arr {
  return like === 'f64' ? new Float64Array(n) : new Float32Array(n);
}

/** Row r of a [rows, C] weight in any float width, widened into dst (length C). */
export function weightRow(t: HostTensor, r: number, C: number, dst: Float64Array): void {
  const base = r * C;
  const d = t.data;
  if (t.dtype === 'F32' || t.dtype === 'F64') for (let i = 0; i < C; i++) dst[i] = (d as Arr)[base + i];
  else if (t.dtype === 'BF16') {
    const f = new Float32Array(1);
    const u = new Uint32Array(f.buffer);
    for (let i = 0; i < C; i++) {
      u[0] = (d as Uint16Array)[base + i] << 16;
      dst[i] = f[0];
    }
  } else if (t.dtype === 'F16') {
    const tab = f16Table();
    for (let i = 0; i < C; i++) dst[i] = tab[(d as Uint16Array)[base + i]];
  } else throw new Error(`weightRow: ${t.dtype} is not a float tensor`);
}

/** Whole weight widened to f64 (small tensors: norms, biases, LoRA factors). */
export function widen(t: HostTensor): Float64Array {
  const n = t.data.length;
  const out = new Float64Array(n);
  weightRow(t, 0, n, out);
  return out;
}

// ---------------------------------------------------------------------------------------------------------
// embedding

export function embeddingBackward(dTable: Arr, ids: Int32Array, dy: Arr, C: number): void {
  for (let n = 0; n < ids.length; n++) {
    const o = ids[n] * C;
    for (let i = 0; i < C; i++) dTable[o + i] += dy[n * C + i];
  }
}

// ---------------------------------------------------------------------------------------------------------
// RMSNorm: y = w * x * r, r = 1/sqrt(mean(x²) + eps)

/**
 * Mirrors transformers, which normalises in float32 even inside a float64 model:
 * y = w * fp32(fp32(x) * fp32(rsqrt(mean + eps))). The backward pass differentiates the exact formula.
 */
export function rmsnormForward(y: Arr, rstd: Arr, x: Arr, w: Float64Array, N: number, C: number, eps: number): void {
  const fr = Math.fround;
  for (let n = 0; n < N; n++) {
    const o = n * C;
    let ss = 0;
    for (let i = 0; i < C; i++) {
      const v = fr(x[o + i]);
      ss += v * v;
    }
    const r = fr(1 / Math.sqrt(fr(ss / C) + eps));
    rstd[n] = r;
    for (let i = 0; i < C; i++) y[o + i] = w[i] * fr(fr(x[o + i]) * r);
  }
}

/** dx = r·(dy∘w) − r³/C · x · Σ(dy∘w∘x);  dw += Σ_n dy∘x·r */
export function rmsnormBackward(dx: Arr, dw: Float64Array, dy: Arr, x: Arr, w: Float64Array, rstd: Arr, N: number, C: number): void {
  for (let n = 0; n < N; n++) {
    const o = n * C;
    const r = rstd[n];
    let dot = 0;
    for (let i = 0; i < C; i++) dot += dy[o + i] * w[i] * x[o + i];
    const c = (r * r * r * dot) / C;
    for (let i = 0; i < C; i++) {
      dx[o + i] = r * dy[o + i] * w[i] - c * x[o + i];
      dw[i] += dy[o + i] * x[o + i] * r;
    }
  }
}

// ---------------------------------------------------------------------------------------------------------
// dense products (plain loops; the frozen f32 path goes to the MatmulEngine instead)

/** y [N, OUT] = x [N, IN] · Wᵀ (+ b), W in any width */
export function linearForward(y: Arr, x: Arr, w: HostTensor, b: Float64Array | null, N: number, IN: number, OUT: number): void {
  const row = new Float64Array(IN);
  for (let o = 0; o < OUT; o++) {
    weightRow(w, o, IN, row);
    const bo = b ? b[o] : 0;
    for (let n = 0; n < N; n++) {
      const xo = n * IN;
      let s = 0;
      for (let i = 0; i < IN; i++) s += x[xo + i] * row[i];
      y[n * OUT + o] = s + bo;
    }
  }
}

/** dx [N, IN] = dy [N, OUT] · W */
export function linearBackwardInput(dx: Arr, dy: Arr, w: HostTensor, N: number, IN: number, OUT: number): void {
  const acc = new Float64Array(N * IN);
  const row = new Float64Array(IN);
  for (let o = 0; o < OUT; o++) {
    weightRow(w, o, IN, row);
    for (let n = 0; n < N; n++) {
      const g = dy[n * OUT + o];
      if (g === 0) continue;
      const xo = n * IN;
      for (let i = 0; i < IN; i++) acc[xo + i] += g * row[i];
    }
  }
  dx.set(acc);
}

/** dW [OUT, IN] = dyᵀ [OUT, N] · x [N, IN] */
export function linearBackwardWeight(dw: Arr, dy: Arr, x: Arr, N: number, IN: number, OUT: number): void {
  const acc = new Float64Array(IN);
  for (let o = 0; o < OUT; o++) {
    acc.fill(0);
    for (let n = 0; n < N; n++) {
      const g = dy[n * OUT + o];
      if (g === 0) continue;
      const xo = n * IN;
      for (let i = 0; i < IN; i++) acc[i] += g * x[xo + i];
    }
    for (let i = 0; i < IN; i++) dw[o * IN + i] = acc[i];
  }
}

// ---------------------------------------------------------------------------------------------------------
// RoPE (rotate_half: pairs (i, i + D/2))

/** cos/sin as transformers makes them: angle and cos/sin in float32. sign -1 = inverse rotation. */
/** RoPE and its inverse (sign -1: the backward pass of a rotation is its transpose); the inference kernel. */
export const ropeApply: (out: Arr, x: Arr, positions: Int32Array, H: number, D: number, invFreq: Float64Array, sign: 1 | -1) => void = ropeForward;

// ---------------------------------------------------------------------------------------------------------
// SwiGLU: m = silu(g) * u

export { swigluForward };

/** dg = dy·u·σ(g)(1 + g(1 − σ(g))),  du = dy·silu(g) */
export function swigluBackward(dg: Arr, du: Arr, dy: Arr, g: Arr, u: Arr): void {
  for (let i = 0; i < dy.length; i++) {
    const s = 1 / (1 + Math.exp(-g[i]));
    du[i] = dy[i] * g[i] * s;
    dg[i] = dy[i] * u[i] * s * (1 + g[i] * (1 - s));
  }
}

// ---------------------------------------------------------------------------------------------------------
// cross-entropy

export const IGNORE_INDEX = -100;

/** Per-row loss (f64) and dlogits = scale·(softmax − onehot); ignored rows get 0 and a zero gradient. */
export function crossEntropy(loss: Arr, dlogits: Arr, logits: Arr, targets: Int32Array, N: number, V: number, scale: number): void {
  for (let n = 0; n < N; n++) {
    const o = n * V;
    const t = targets[n];
    if (t === IGNORE_INDEX) {
      loss[n] = 0;
      dlogits.fill(0, o, o + V);
      continue;
    }
    if (t < 0 || t >= V) throw new Error(`crossEntropy: target ${t} outside [0, ${V})`);
    let mx = -Infinity;
    for (let i = 0; i < V; i++) if (logits[o + i] > mx) mx = logits[o + i];
    let sum = 0;
    for (let i = 0; i < V; i++) sum += Math.exp(logits[o + i] - mx);
    const lse = mx + Math.log(sum);
    loss[n] = lse - logits[o + t];
    for (let i = 0; i < V; i++) dlogits[o + i] = scale * Math.exp(logits[o + i] - lse);
    dlogits[o + t] -= scale;
  }
}
