/**
 * Plain-JS CPU attention (the fallback for the 'js' engine and hosts without shared WASM memory, and the reference
 * the WASM SIMD kernels of ./attention-wasm.ts are tested against) over the KV cache, gravity or dot, streaming over keys with an online softmax: each query
 * row keeps a running max, a running sum and a D-wide accumulator, so no [T x keys] matrix exists.
 *
 * gravity: s_ij = M_h² / (max(|q_i|² + |k_j|² - 2 q_i·k_j, 0) + ε)   (|k_j|² cached at writeKV time)
 * dot:     s_ij = scale * q_i·k_j
 * gravity-pure: no softmax: w_ij = s_ij / Σ_j' s_ij' with the gravity s (all s > 0, so a plain running sum)
 */
import type { AttentionParams } from '../backend.js';

export interface CpuKVLayer {
  k: Float32Array; // [B, Hkv, maxLen, D]
  v: Float32Array; // [B, Hkv, maxLen, D]
  kn: Float64Array; // [B, Hkv, maxLen]  squared key norms, f64: an f32 norm would cancel badly in |q|²+|k|²-2q·k
  /** set when k and v are views into a WASM arena (./attention-wasm.ts): the arena and the block's byte offset */
  wasm?: { memory: WebAssembly.Memory; arena: number; off: number };
}

/**
 * q [B*T, Hq*D] for slots [start, start+T); out [B*T, Hq*D]. keyValid [B, maxLen].
 * lse (optional) [B*T, Hq] receives log-sum-exp of the scores per row, saved for the backward pass.
 */
export function attentionForward(
  out: Float32Array, q: Float32Array, layer: CpuKVLayer, keyValid: Uint8Array,
  B: number, T: number, start: number, maxLen: number, p: AttentionParams, lse?: Float32Array,
): void {
  const { numHeads: Hq, numKVHeads: Hkv, headDim: D } = p;
  const group = Hq / Hkv;
  const pure = p.kind === 'gravity-pure';
  const gravity = p.kind === 'gravity' || pure;
  const acc = new Float64Array(D);
  const K = layer.k;
  const V = layer.v;
  const KN = layer.kn;
  const eps = p.eps;
  const scale = p.scale;
  for (let b = 0; b < B; b++) {
    for (let t = 0; t < T; t++) {
      const slot = start + t;
      const row = b * T + t;
      for (let h = 0; h < Hq; h++) {
        const kvh = (h / group) | 0;
        const qo = (row * Hq + h) * D;
        const kvBase = (b * Hkv + kvh) * maxLen;
        let qn = 0;
        for (let d = 0; d < D; d++) qn += q[qo + d] * q[qo + d];
        const m2 = gravity ? p.massSq![h] : 0;
        // The gravity score is bounded, 0 < s <= M²/ε, so M²/ε can stand in for the running max: exp(s - M²/ε)
        // never overflows and, while M²/ε < 600, never underflows to a zero sum. That drops the compare and
        // the rescaling from the inner loop. Otherwise (dot, or huge masses): the classic online softmax.
        const fixedMax = gravity && m2 / p.eps < 600;
        let mx = fixedMax ? m2 / p.eps : -Infinity;
        let sum = 0;
        acc.fill(0);
        const vb = b * maxLen;
        for (let j = 0; j <= slot; j++) {
          if (!keyValid[vb + j]) continue;
          const ko = (kvBase + j) * D;
          let dot = 0;
          for (let d = 0; d < D; d++) dot += q[qo + d] * K[ko + d];
          let s: number;
          if (gravity) {
            let d2 = qn + KN[kvBase + j] - 2 * dot;
            if (d2 < 0) d2 = 0;
            s = m2 / (d2 + eps);
          } else s = scale * dot;
          let e: number;
          if (pure) e = s; // gravity-pure: the weights are the scores themselves, normalised below
          else if (fixedMax) e = Math.exp(s - mx);
          else if (s > mx) {
            const c = Math.exp(mx - s);
            sum *= c;
            for (let d = 0; d < D; d++) acc[d] *= c;
            mx = s;
            e = 1;
          } else e = Math.exp(s - mx);
          sum += e;
          for (let d = 0; d < D; d++) acc[d] += e * V[ko + d];
        }
        // a query with no valid key (a padding row) outputs zeros
        const inv = sum > 0 ? 1 / sum : 0;
        for (let d = 0; d < D; d++) out[qo + d] = acc[d] * inv;
        // gravity-pure: log of the plain sum (the normaliser, as lse is for the softmax kinds)
        if (lse) lse[row * Hq + h] = sum > 0 ? (pure ? Math.log(sum) : mx + Math.log(sum)) : -Infinity;
      }
    }
  }
}

/** Full probabilities [B, Hq, T, start+T] (research tool); masked entries 0. */
export function attentionProbs(
  q: Float32Array, layer: CpuKVLayer, keyValid: Uint8Array, B: number, T: number, start: number, maxLen: number, p: AttentionParams,
): Float32Array {
  const { numHeads: Hq, numKVHeads: Hkv, headDim: D } = p;
  const S = start + T;
  const group = Hq / Hkv;
  const out = new Float32Array(B * Hq * T * S);
  for (let b = 0; b < B; b++) for (let h = 0; h < Hq; h++) for (let t = 0; t < T; t++) {
    const slot = start + t;
    const qo = ((b * T + t) * Hq + h) * D;
    const kvBase = (b * Hkv + ((h / group) | 0)) * maxLen;
    const o = ((b * Hq + h) * T + t) * S;
    let qn = 0;
    for (let d = 0; d < D; d++) qn += q[qo + d] * q[qo + d];
    let mx = -Infinity;
    for (let j = 0; j <= slot; j++) {
      if (!keyValid[b * maxLen + j]) continue;
      let dot = 0;
      const ko = (kvBase + j) * D;
      for (let d = 0; d < D; d++) dot += q[qo + d] * layer.k[ko + d];
      const s = p.kind !== 'dot' ? p.massSq![h] / (Math.max(qn + layer.kn[kvBase + j] - 2 * dot, 0) + p.eps) : p.scale * dot;
      out[o + j] = s;
      if (s > mx) mx = s;
    }
    let sum = 0;
    const pure = p.kind === 'gravity-pure';
    for (let j = 0; j <= slot; j++) {
      if (!keyValid[b * maxLen + j]) { out[o + j] = 0; continue; }
      const e = pure ? out[o + j] : Math.exp(out[o + j] - mx);
      out[o + j] = e;
      sum += e;
    }
    if (sum > 0) for (let j = 0; j <= slot; j++) out[o + j] /= sum;
  }
  return out;
}
