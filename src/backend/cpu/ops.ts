/**
 * Elementwise and row-wise CPU kernels as plain functions over Float32Arrays (llm.c style: explicit sizes,
 * caller-owned outputs). Backward passes live next to them in train code; these are the forward halves.
 */
import { f16Table, type HostTensor } from '../../tensor/dtype.js';

/** Row `r` of a [rows, C] table in any float width, widened into out[offset..offset+C). */
export function readRow(t: HostTensor, r: number, C: number, out: Float32Array, offset: number): void {
  const base = r * C;
  if (t.dtype === 'F32') out.set((t.data as Float32Array).subarray(base, base + C), offset);
  else if (t.dtype === 'BF16') {
    const src = t.data as Uint16Array;
    const o32 = new Uint32Array(out.buffer, out.byteOffset + offset * 4, C);
    for (let i = 0; i < C; i++) o32[i] = src[base + i] << 16;
  } else if (t.dtype === 'F16') {
    const src = t.data as Uint16Array;
    const tab = f16Table();
    for (let i = 0; i < C; i++) out[offset + i] = tab[src[base + i]];
  } else if (t.dtype === 'F64') {
    const src = t.data as Float64Array;
    for (let i = 0; i < C; i++) out[offset + i] = src[base + i];
  } else throw new Error(`readRow: ${t.dtype} is not a float tensor`);
}

/** out[N, C] = rows ids[N] of table [V, C] */
export function embeddingForward(out: Float32Array, ids: Int32Array, table: HostTensor, C: number): void {
  for (let n = 0; n < ids.length; n++) readRow(table, ids[n], C, out, n * C);
}

/** out[N, C] = x / sqrt(mean(x²) + eps) * w; rstd[N] saved for the backward pass when given. */
export function rmsnormForward(out: Float32Array, x: Float32Array, w: Float32Array, N: number, C: number, eps: number, rstd?: Float32Array): void {
  for (let n = 0; n < N; n++) {
    const o = n * C;
    let ss = 0;
    for (let i = 0; i < C; i++) ss += x[o + i] * x[o + i];
    const r = 1 / Math.sqrt(ss / C + eps);
    if (rstd) rstd[n] = r;
    for (let i = 0; i < C; i++) out[o + i] = Math.fround(x[o + i] * r) * w[i];
  }
}

/** HF's inv_freq, computed in float32 as transformers does: 1 / theta^(2i/D). */
export function ropeInvFreq(headDim: number, theta: number): Float64Array {
  const half = headDim / 2;
  const f = new Float64Array(half);
  for (let i = 0; i < half; i++) f[i] = Math.fround(1 / Math.fround(theta ** Math.fround((2 * i) / headDim)));
  return f;
}

/**
 * Rotary embedding, rotate_half convention: pairs (i, i + D/2). x, out [N, H * D]; positions [N].
 * `sign` = -1 applies the inverse rotation (the backward pass of RoPE is its transpose).
 */
export function ropeForward(out: Float32Array | Float64Array, x: Float32Array | Float64Array, positions: Int32Array, H: number, D: number, invFreq: Float64Array, sign = 1): void {
  const half = D / 2;
  const cos = new Float32Array(half);
  const sin = new Float32Array(half);
  for (let n = 0; n < positions.length; n++) {
    const p = positions[n];
    for (let i = 0; i < half; i++) {
      // HF forms the angle in float32
      const a = Math.fround(p * invFreq[i]);
      cos[i] = Math.cos(a);
      sin[i] = sign * Math.sin(a);
    }
    for (let h = 0; h < H; h++) {
      const o = (n * H + h) * D;
      for (let i = 0; i < half; i++) {
        const x1 = x[o + i];
        const x2 = x[o + i + half];
        out[o + i] = x1 * cos[i] - x2 * sin[i];
        out[o + i + half] = x2 * cos[i] + x1 * sin[i];
      }
    }
  }
}

/** out = silu(gate) * up */
export function swigluForward(out: Float32Array | Float64Array, gate: Float32Array | Float64Array, up: Float32Array | Float64Array): void {
  for (let i = 0; i < out.length; i++) {
    const g = gate[i];
    out[i] = (g / (1 + Math.exp(-g))) * up[i];
  }
}

/** softplus as torch computes it (threshold 20: linear above). */
export function softplus(x: number): number {
  return x > 20 ? x : Math.log1p(Math.exp(x));
}
