/**
 * Training attention on the CPU, gravity or dot, causal over a [B, T] batch, GQA. The forward streams keys
 * with an online softmax and saves only the per-row log-sum-exp; the backward recomputes each probability
 * from q, k and lse (FlashAttention-2), so no [T x T] matrix ever exists.
 *
 * gravity: s = M²·u, u = 1/(d² + ε), d² = max(|q|² + |k|² − 2q·k, 0), M = softplus(mass_log)
 *   ∂s/∂q_i = −2M²u²(q_i − k_j),  ∂s/∂k_j = +2M²u²(q_i − k_j)   (0 where d² was clamped)
 *   ∂s/∂mass_log = 2M·sigmoid(mass_log)·u                       (torch softplus: linear above 20)
 * dot: s = scale·q·k
 * softmax backward: D_i = dO_i·O_i, dP_ij = dO_i·v_j, dS_ij = P_ij(dP_ij − D_i)
 * gravity-pure: P_ij = s_ij / S_i with S_i = Σ_j s_ij (no softmax); "lse" holds log S_i, and
 *   dS_ij = (dP_ij − D_i) / S_i. Σ_j P_ij(dP_ij − D_i) = 0 makes the mass gradient exactly 0 (M² cancels).
 */
import type { TrainAttentionParams } from '../backend/train-ops.js';
import type { KernelHost } from '../backend/cpu/matmul.js';
import { attentionBackwardWasm, attentionForwardTrainWasm, wasmAttentionFits } from '../backend/cpu/attention-wasm.js';
import type { Arr } from './ops-backward.js';

/** f32 arrays with a WASM engine go to the SIMD kernels (../backend/cpu/attention-wasm.ts); f64 stays here */
function useWasm(host: KernelHost | null | undefined, p: TrainAttentionParams, arrs: Arr[]): host is KernelHost {
  return !!host && wasmAttentionFits(p.headDim) && arrs.every((a) => a instanceof Float32Array);
}

function softplus(x: number): number {
  return x > 20 ? x : Math.log1p(Math.exp(x));
}

function dSoftplus(x: number): number {
  return x > 20 ? 1 : 1 / (1 + Math.exp(-x));
}

/** out [B*T, Hq*D], lse [B*T, Hq]; `host`: the WASM engine for f32 arrays (else plain loops) */
export function attentionForwardTrain(
  out: Arr, lse: Arr, q: Arr, k: Arr, v: Arr, B: number, T: number, p: TrainAttentionParams, host?: KernelHost | null,
): void {
  if (useWasm(host, p, [out, lse, q, k, v])) {
    if (attentionForwardTrainWasm(host, out as Float32Array, lse as Float32Array, q as Float32Array, k as Float32Array, v as Float32Array, B, T, p)) return;
  }
  const { numHeads: Hq, numKVHeads: Hkv, headDim: D } = p;
  const group = Hq / Hkv;
  const pure = p.kind === 'gravity-pure';
  const gravity = p.kind === 'gravity' || pure;
  const acc = new Float64Array(D);
  const kn = keyNorms(k, B * T * Hkv, D);
  for (let b = 0; b < B; b++) for (let h = 0; h < Hq; h++) {
    const kvh = (h / group) | 0;
    const m = gravity ? softplus(p.massLog![h]) : 0;
    const m2 = m * m;
    for (let i = 0; i < T; i++) {
      const qo = ((b * T + i) * Hq + h) * D;
      let qn = 0;
      for (let d = 0; d < D; d++) qn += q[qo + d] * q[qo + d];
      let mx = -Infinity;
      let sum = 0;
      acc.fill(0);
      for (let j = 0; j <= i; j++) {
        const kr = (b * T + j) * Hkv + kvh;
        const ko = kr * D;
        let dot = 0;
        for (let d = 0; d < D; d++) dot += q[qo + d] * k[ko + d];
        const s = gravity ? m2 / (Math.max(qn + kn[kr] - 2 * dot, 0) + p.eps) : p.scale * dot;
        if (pure) {
          sum += s;
          for (let d = 0; d < D; d++) acc[d] += s * v[ko + d];
          continue;
        }
        let e: number;
        if (s > mx) {
          const c = Math.exp(mx - s);
          sum *= c;
          for (let d = 0; d < D; d++) acc[d] *= c;
          mx = s;
          e = 1;
        } else e = Math.exp(s - mx);
        sum += e;
        for (let d = 0; d < D; d++) acc[d] += e * v[ko + d];
      }
      for (let d = 0; d < D; d++) out[qo + d] = acc[d] / sum;
      lse[(b * T + i) * Hq + h] = pure ? Math.log(sum) : mx + Math.log(sum);
    }
  }
}

function keyNorms(k: Arr, rows: number, D: number): Float64Array {
  const kn = new Float64Array(rows);
  for (let r = 0; r < rows; r++) {
    let s = 0;
    for (let d = 0; d < D; d++) s += k[r * D + d] * k[r * D + d];
    kn[r] = s;
  }
  return kn;
}

/** dq [B*T, Hq*D], dk / dv [B*T, Hkv*D] (overwritten); dMassLog [Hq] (overwritten) for gravity. */
export function attentionBackward(
  dq: Arr, dk: Arr, dv: Arr, dMassLog: Arr | null,
  dout: Arr, q: Arr, k: Arr, v: Arr, out: Arr, lse: Arr, B: number, T: number, p: TrainAttentionParams, host?: KernelHost | null,
): void {
  if (useWasm(host, p, [dq, dk, dv, dout, q, k, v, out, lse])) {
    const f = (a: Arr) => a as Float32Array;
    if (attentionBackwardWasm(host, f(dq), f(dk), f(dv), dMassLog, f(dout), f(q), f(k), f(v), f(out), f(lse), B, T, p)) return;
  }
  const { numHeads: Hq, numKVHeads: Hkv, headDim: D } = p;
  const group = Hq / Hkv;
  const pure = p.kind === 'gravity-pure';
  const gravity = p.kind === 'gravity' || pure;
  const kn = keyNorms(k, B * T * Hkv, D);
  // f64 accumulators: dk / dv sum over many queries and heads
  const dkAcc = new Float64Array(dk.length);
  const dvAcc = new Float64Array(dv.length);
  const dqRow = new Float64Array(D);
  for (let h = 0; h < Hq; h++) {
    const kvh = (h / group) | 0;
    const ml = gravity ? p.massLog![h] : 0;
    const m = gravity ? softplus(ml) : 0;
    const m2 = m * m;
    let dm2 = 0; // ∂L/∂(M²)
    for (let b = 0; b < B; b++) for (let i = 0; i < T; i++) {
      const row = (b * T + i) * Hq + h;
      const qo = row * D;
      let Di = 0;
      for (let d = 0; d < D; d++) Di += dout[qo + d] * out[qo + d];
      let qn = 0;
      for (let d = 0; d < D; d++) qn += q[qo + d] * q[qo + d];
      const L = lse[row];
      const invS = Math.exp(-L); // gravity-pure: 1 / S_i
      dqRow.fill(0);
      for (let j = 0; j <= i; j++) {
        const kr = (b * T + j) * Hkv + kvh;
        const ko = kr * D;
        let dot = 0;
        let dp = 0;
        for (let d = 0; d < D; d++) {
          dot += q[qo + d] * k[ko + d];
          dp += dout[qo + d] * v[ko + d];
        }
        let s: number;
        let u = 0;
        let clamped = false;
        if (gravity) {
          let d2 = qn + kn[kr] - 2 * dot;
          if (d2 < 0) {
            d2 = 0;
            clamped = true;
          }
          u = 1 / (d2 + p.eps);
          s = m2 * u;
        } else s = p.scale * dot;
        const P = pure ? s * invS : Math.exp(s - L);
        for (let d = 0; d < D; d++) dvAcc[ko + d] += P * dout[qo + d];
        const dS = pure ? (dp - Di) * invS : P * (dp - Di);
        if (gravity) {
          dm2 += dS * u;
          if (clamped) continue;
          // ∂s/∂q_i = g·(q_i − k_j), ∂s/∂k_j = −g·(q_i − k_j)
          const g = -2 * m2 * u * u * dS;
          for (let d = 0; d < D; d++) {
            const diff = g * (q[qo + d] - k[ko + d]);
            dqRow[d] += diff;
            dkAcc[ko + d] -= diff;
          }
        } else {
          const g = p.scale * dS;
          for (let d = 0; d < D; d++) {
            dqRow[d] += g * k[ko + d];
            dkAcc[ko + d] += g * q[qo + d];
          }
        }
      }
      for (let d = 0; d < D; d++) dq[qo + d] = dqRow[d];
    }
    if (dMassLog) dMassLog[h] = gravity ? dm2 * 2 * m * dSoftplus(ml) : 0;
  }
  dk.set(dkAcc);
  dv.set(dvAcc);
}
