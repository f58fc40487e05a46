/**
 * Host side of the WASM SIMD attention kernels (wasm/attention.ts, compiled into the matmul module so the matmul
 * engine's worker threads run them too). The inference KV cache lives in an arena of the engine (allocKVLayer),
 * so a call copies only q in and out back; training copies q, k, v (and the gradients' inputs) into the arena's
 * scratch, a block of whole sequences at a time.
 *
 * Work split: forward tasks are (sequence, kv head, block of queries), backward tasks (sequence, kv head); each
 * output row and each dk / dv row belongs to one task, so threads never add into the same memory.
 */
import type { AttentionParams } from '../backend.js';
import type { TrainAttentionParams } from '../train-ops.js';
import type { KernelHost } from './matmul.js';
import type { CpuKVLayer } from './attention.js';

// descriptor slots (i32), as in wasm/attention.ts
const OP = 0, KIND = 1, TQ = 2, START = 3, HQ = 4, HKV = 5, DIM = 6, QP = 7, KP = 8, VP = 9, KBS = 10, KHS = 11, KRS = 12;
const VALID = 13, VSTRIDE = 14, OUTP = 15, LSEP = 16, MASS = 17, EPS = 18, SCALE = 19, QBLOCK = 20, NQB = 21;
const DOUT = 22, DQ = 23, DK = 24, DV = 25, DM = 26, BOFF = 27, NSPLIT = 28, SPLITLEN = 29, PART = 30;
const DESC_BYTES = 256;
const ALIGN = 64;
/** multiply-adds below which one thread does the whole call (waking the workers costs ~10-50 µs) */
const PARALLEL_WORK = 200_000;
/** queries per forward task in a prefill: enough tasks to balance the causal rows over the threads */
const QBLOCK_ROWS = 8;

/**
 * Flash-decoding: when a call has fewer tasks than 2 per thread (decode: one per sequence and kv head), the keys
 * of each task are split into blocks of at least `minBlockKeys` (calls with fewer than `minKeys` keys never split);
 * each block leaves (max, sum, acc) and the host combines them. Mutable for tests.
 */
export const flashDecoding = { minKeys: 256, minBlockKeys: 128 };

const KIND_CODE = { gravity: 0, dot: 1, 'gravity-pure': 2 } as const;

function up(n: number): number {
  return Math.ceil(n / ALIGN) * ALIGN;
}

/** Bump allocator over an arena's scratch region. */
class Scratch {
  private at: number;
  constructor(private readonly base: number, private readonly end: number) {
    this.at = base;
  }
  take(bytes: number): number {
    const off = this.at;
    this.at += up(bytes);
    if (this.at > this.end) throw new Error('attention-wasm: scratch overflow');
    return off;
  }
}

/** KV storage of one layer in an arena of the engine: k then v, each [B, Hkv, maxLen, D] f32, zeroed. */
export function allocKVLayer(host: KernelHost, B: number, Hkv: number, maxLen: number, D: number): CpuKVLayer {
  const n = B * Hkv * maxLen * D;
  const kBytes = up(n * 4);
  const { arena, off } = host.allocShared(2 * kBytes || ALIGN);
  const memory = host.memory(arena);
  const buf = memory.buffer;
  const k = new Float32Array(buf, off, n);
  const v = new Float32Array(buf, off + kBytes, n);
  k.fill(0);
  v.fill(0);
  return { k, v, kn: new Float64Array(B * Hkv * maxLen), wasm: { memory, arena, off } };
}

/** The same checks as the JS path's callers rely on; D a multiple of 4 (the kernels' vector width). */
export function wasmAttentionFits(headDim: number): boolean {
  return headDim % 4 === 0 && headDim > 0 && headDim * 4 + 20 <= 8192;
}

function fillCommon(d: Int32Array, f: Float32Array, kind: AttentionParams['kind'], Hq: number, Hkv: number, D: number, eps: number, scale: number): void {
  d.fill(0, 0, DESC_BYTES / 4);
  d[KIND] = KIND_CODE[kind];
  d[NSPLIT] = 1;
  d[HQ] = Hq;
  d[HKV] = Hkv;
  d[DIM] = D;
  f[EPS] = eps;
  f[SCALE] = scale;
}

/**
 * Inference attention over a KV layer made by allocKVLayer; the same contract as attentionForward in
 * ./attention.ts (q / out [B*T, Hq*D], keyValid [B, maxLen], optional lse [B*T, Hq]).
 */
export function attentionForwardWasm(
  host: KernelHost, out: Float32Array, q: Float32Array, layer: CpuKVLayer, keyValid: Uint8Array,
  B: number, T: number, start: number, maxLen: number, p: AttentionParams, lse?: Float32Array,
): void {
  const w = layer.wasm;
  if (!w) throw new Error('attention-wasm: the KV layer is not in kernel memory');
  if (host.memory(w.arena) !== w.memory) throw new Error('attention-wasm: the KV layer belongs to another engine');
  const { numHeads: Hq, numKVHeads: Hkv, headDim: D } = p;
  const buf = host.memory(w.arena).buffer;
  const i32 = new Int32Array(buf);
  const f32 = new Float32Array(buf);
  const u8 = new Uint8Array(buf);
  const base = host.scratchOff;
  const desc = base;
  const fixed = DESC_BYTES + up(Hq * 4) + up(B * maxLen + 16);
  const rowBytes = Hq * D * 4 * 2 + (lse ? Hq * 4 : 0);
  const fitRows = Math.floor((host.scratchBytes - fixed - 4 * ALIGN) / rowBytes);
  if (fitRows < 1) throw new Error(`attention-wasm: a row of ${Hq}x${D} does not fit the scratch`);
  const d = i32.subarray(desc / 4, desc / 4 + DESC_BYTES / 4);
  const df = f32.subarray(desc / 4, desc / 4 + DESC_BYTES / 4);
  fillCommon(d, df, p.kind, Hq, Hkv, D, p.eps, p.scale);
  const sc = new Scratch(base + DESC_BYTES, base + host.scratchBytes);
  const massOff = sc.take(Hq * 4);
  if (p.kind !== 'dot') f32.set(p.massSq!, massOff / 4);
  const validOff = sc.take(B * maxLen + 16);
  u8.set(keyValid.subarray(0, B * maxLen), validOff);
  d[MASS] = massOff;
  d[VALID] = validOff;
  d[VSTRIDE] = maxLen;
  d[KP] = w.off;
  d[VP] = w.off + up(B * Hkv * maxLen * D * 4);
  d[KBS] = Hkv * maxLen * D * 4;
  d[KHS] = maxLen * D * 4;
  d[KRS] = D * 4;
  const qRow = Hq * D;
  // one call for everything when it fits, else one sequence and a block of its queries at a time
  const whole = B * T <= fitRows;
  const calls: [number, number, number, number][] = []; // [b0, nb, t0, nt]
  if (whole) calls.push([0, B, 0, T]);
  else for (let b = 0; b < B; b++) for (let t0 = 0; t0 < T; t0 += fitRows) calls.push([b, 1, t0, Math.min(fitRows, T - t0)]);
  const after = sc.take(0);
  for (const [b0, nb, t0, nt] of calls) {
    const s2 = new Scratch(after, base + host.scratchBytes);
    const rows = nb * nt;
    const qOff = s2.take(rows * qRow * 4);
    const oOff = s2.take(rows * qRow * 4);
    const lOff = lse ? s2.take(rows * Hq * 4) : 0;
    // rows [b0*T + t0, +nt) of each sequence are contiguous; a whole call is one block
    if (whole) f32.set(q.subarray(0, B * T * qRow), qOff / 4);
    else f32.set(q.subarray((b0 * T + t0) * qRow, (b0 * T + t0 + nt) * qRow), qOff / 4);
    d[OP] = 0;
    d[TQ] = nt;
    d[START] = start + t0;
    d[BOFF] = b0;
    d[QP] = qOff;
    d[OUTP] = oOff;
    d[LSEP] = lOff;
    const qblock = nt > QBLOCK_ROWS ? QBLOCK_ROWS : nt;
    const nqb = Math.ceil(nt / qblock);
    d[QBLOCK] = qblock;
    d[NQB] = nqb;
    const keys = start + t0 + nt;
    const work = rows * Hq * keys * D;
    const tasks = nb * Hkv * nqb;
    let nsplit = 1;
    if (host.threads > 1 && tasks < 2 * host.threads && keys >= flashDecoding.minKeys && work >= PARALLEL_WORK) {
      nsplit = Math.max(1, Math.min(Math.ceil((2 * host.threads) / tasks), Math.floor(keys / flashDecoding.minBlockKeys)));
    }
    const splitLen = Math.ceil(keys / nsplit / 4) * 4;
    nsplit = Math.ceil(keys / splitLen);
    const partFloats = rows * Hq * nsplit * (D + 4);
    if (nsplit > 1 && s2.take(0) + up(partFloats * 4) > base + host.scratchBytes) nsplit = 1;
    d[NSPLIT] = nsplit;
    d[SPLITLEN] = splitLen;
    d[PART] = nsplit > 1 ? s2.take(partFloats * 4) : 0;
    host.runAttention(w.arena, desc, tasks * nsplit, 1, work >= PARALLEL_WORK);
    if (nsplit > 1) combine(f32, d[PART] / 4, oOff / 4, lOff / 4, rows * Hq, nsplit, D, p.kind === 'gravity-pure');
    const o0 = whole ? 0 : (b0 * T + t0) * qRow;
    out.set(f32.subarray(oOff / 4, oOff / 4 + rows * qRow), o0);
    if (lse) lse.set(f32.subarray(lOff / 4, lOff / 4 + rows * Hq), whole ? 0 : (b0 * T + t0) * Hq);
  }
}

/** Merges the key blocks' (max, sum, acc) of each row into out (and lse when lOff > 0); f32 indices. */
function combine(f32: Float32Array, part: number, oOff: number, lOff: number, rows: number, nsplit: number, D: number, pure: boolean): void {
  const stride = D + 4;
  const acc = new Float64Array(D);
  for (let r = 0; r < rows; r++) {
    const p0 = part + r * nsplit * stride;
    let M = -Infinity;
    for (let s = 0; s < nsplit; s++) if (f32[p0 + s * stride + 1] > 0) M = Math.max(M, f32[p0 + s * stride]);
    let total = 0;
    acc.fill(0);
    for (let s = 0; s < nsplit; s++) {
      const ps = p0 + s * stride;
      const sum = f32[ps + 1];
      if (!(sum > 0)) continue;
      // gravity-pure sums plain scores: no max to align
      const c = pure ? 1 : Math.exp(f32[ps] - M);
      total += c * sum;
      for (let d = 0; d < D; d++) acc[d] += c * f32[ps + 4 + d];
    }
    const inv = total > 0 ? 1 / total : 0;
    for (let d = 0; d < D; d++) f32[oOff + r * D + d] = acc[d] * inv;
    if (lOff) f32[lOff + r] = total > 0 ? (pure ? Math.log(total) : M + Math.log(total)) : -Infinity;
  }
}

function softplus(x: number): number {
  return x > 20 ? x : Math.log1p(Math.exp(x));
}

function dSoftplus(x: number): number {
  return x > 20 ? 1 : 1 / (1 + Math.exp(-x));
}

interface TrainLayout {
  buf: ArrayBufferLike;
  f32: Float32Array;
  d: Int32Array;
  sc0: number;
  /** sequences per call */
  bc: number;
}

/** Sets the descriptor fields shared by the training forward and backward; chooses sequences per call. */
function trainLayout(host: KernelHost, B: number, T: number, p: TrainAttentionParams, floatsPerSeq: number): TrainLayout | null {
  const { numHeads: Hq, numKVHeads: Hkv, headDim: D } = p;
  const buf = host.memory(0).buffer;
  const i32 = new Int32Array(buf);
  const f32 = new Float32Array(buf);
  const base = host.scratchOff;
  const d = i32.subarray(base / 4, base / 4 + DESC_BYTES / 4);
  fillCommon(d, f32.subarray(base / 4, base / 4 + DESC_BYTES / 4), p.kind, Hq, Hkv, D, p.eps, p.scale);
  const massOff = base + DESC_BYTES;
  if (p.kind !== 'dot') {
    for (let h = 0; h < Hq; h++) {
      const m = softplus(p.massLog![h]);
      f32[massOff / 4 + h] = m * m;
    }
  }
  d[MASS] = massOff;
  const sc0 = massOff + up(Hq * 4);
  const perSeq = floatsPerSeq * 4 + 12 * ALIGN + Hq * 8;
  const bc = Math.min(B, Math.floor((base + host.scratchBytes - sc0) / perSeq));
  if (bc < 1) return null;
  d[TQ] = T;
  d[START] = 0;
  d[KBS] = T * Hkv * D * 4;
  d[KHS] = D * 4;
  d[KRS] = Hkv * D * 4;
  return { buf, f32, d, sc0, bc };
}

/**
 * Training forward on f32 arrays (the contract of attentionForwardTrain in src/train/attention-backward.ts).
 * Returns false when one sequence does not fit the scratch (the caller falls back to the JS loops).
 */
export function attentionForwardTrainWasm(
  host: KernelHost, out: Float32Array, lse: Float32Array, q: Float32Array, k: Float32Array, v: Float32Array,
  B: number, T: number, p: TrainAttentionParams,
): boolean {
  const { numHeads: Hq, numKVHeads: Hkv, headDim: D } = p;
  const L = trainLayout(host, B, T, p, T * (2 * Hq * D + 2 * Hkv * D + Hq));
  if (!L) return false;
  const { f32, d, sc0, bc } = L;
  const qn = T * Hq * D;
  const kn = T * Hkv * D;
  for (let b0 = 0; b0 < B; b0 += bc) {
    const nb = Math.min(bc, B - b0);
    const sc = new Scratch(sc0, host.scratchOff + host.scratchBytes);
    const qOff = sc.take(nb * qn * 4), kOff = sc.take(nb * kn * 4), vOff = sc.take(nb * kn * 4);
    const oOff = sc.take(nb * qn * 4), lOff = sc.take(nb * T * Hq * 4);
    f32.set(q.subarray(b0 * qn, (b0 + nb) * qn), qOff / 4);
    f32.set(k.subarray(b0 * kn, (b0 + nb) * kn), kOff / 4);
    f32.set(v.subarray(b0 * kn, (b0 + nb) * kn), vOff / 4);
    d[OP] = 0;
    d[QP] = qOff;
    d[KP] = kOff;
    d[VP] = vOff;
    d[OUTP] = oOff;
    d[LSEP] = lOff;
    d[VALID] = 0;
    d[BOFF] = 0;
    const qblock = T > QBLOCK_ROWS * 2 ? QBLOCK_ROWS * 2 : T;
    d[QBLOCK] = qblock;
    d[NQB] = Math.ceil(T / qblock);
    const work = nb * T * T * Hq * D;
    host.runAttention(0, host.scratchOff, nb * Hkv * d[NQB], 1, work >= PARALLEL_WORK);
    out.set(f32.subarray(oOff / 4, oOff / 4 + nb * qn), b0 * qn);
    lse.set(f32.subarray(lOff / 4, lOff / 4 + nb * T * Hq), b0 * T * Hq);
  }
  return true;
}

/** Training backward on f32 arrays (the contract of attentionBackward); false when a sequence does not fit. */
export function attentionBackwardWasm(
  host: KernelHost, dq: Float32Array, dk: Float32Array, dv: Float32Array, dMassLog: Float32Array | Float64Array | null,
  dout: Float32Array, q: Float32Array, k: Float32Array, v: Float32Array, out: Float32Array, lse: Float32Array,
  B: number, T: number, p: TrainAttentionParams,
): boolean {
  const { numHeads: Hq, numKVHeads: Hkv, headDim: D } = p;
  const L = trainLayout(host, B, T, p, T * (4 * Hq * D + 4 * Hkv * D + Hq));
  if (!L) return false;
  const { f32, d, sc0, bc } = L;
  const qn = T * Hq * D;
  const kn = T * Hkv * D;
  const dm2 = new Float64Array(Hq);
  for (let b0 = 0; b0 < B; b0 += bc) {
    const nb = Math.min(bc, B - b0);
    const sc = new Scratch(sc0, host.scratchOff + host.scratchBytes);
    const qOff = sc.take(nb * qn * 4), kOff = sc.take(nb * kn * 4), vOff = sc.take(nb * kn * 4);
    const oOff = sc.take(nb * qn * 4), doOff = sc.take(nb * qn * 4), lOff = sc.take(nb * T * Hq * 4);
    const dqOff = sc.take(nb * qn * 4), dkOff = sc.take(nb * kn * 4), dvOff = sc.take(nb * kn * 4);
    const dmOff = sc.take(nb * Hq * 8);
    f32.set(q.subarray(b0 * qn, (b0 + nb) * qn), qOff / 4);
    f32.set(k.subarray(b0 * kn, (b0 + nb) * kn), kOff / 4);
    f32.set(v.subarray(b0 * kn, (b0 + nb) * kn), vOff / 4);
    f32.set(out.subarray(b0 * qn, (b0 + nb) * qn), oOff / 4);
    f32.set(dout.subarray(b0 * qn, (b0 + nb) * qn), doOff / 4);
    f32.set(lse.subarray(b0 * T * Hq, (b0 + nb) * T * Hq), lOff / 4);
    f32.fill(0, dkOff / 4, dkOff / 4 + nb * kn);
    f32.fill(0, dvOff / 4, dvOff / 4 + nb * kn);
    const dmv = new Float64Array(L.buf, dmOff, nb * Hq);
    dmv.fill(0);
    d[OP] = 1;
    d[QP] = qOff;
    d[KP] = kOff;
    d[VP] = vOff;
    d[OUTP] = oOff;
    d[LSEP] = lOff;
    d[DOUT] = doOff;
    d[DQ] = dqOff;
    d[DK] = dkOff;
    d[DV] = dvOff;
    d[DM] = dmOff;
    const work = nb * T * T * Hq * D * 2;
    host.runAttention(0, host.scratchOff, nb * Hkv, 1, work >= PARALLEL_WORK);
    dq.set(f32.subarray(dqOff / 4, dqOff / 4 + nb * qn), b0 * qn);
    dk.set(f32.subarray(dkOff / 4, dkOff / 4 + nb * kn), b0 * kn);
    dv.set(f32.subarray(dvOff / 4, dvOff / 4 + nb * kn), b0 * kn);
    for (let b = 0; b < nb; b++) for (let h = 0; h < Hq; h++) dm2[h] += dmv[b * Hq + h];
  }
  if (dMassLog) {
    for (let h = 0; h < Hq; h++) {
      // gravity-pure: P = M²u / Σ M²u does not depend on M, so the gradient is exactly 0; the f32 sum of
      // dS·u only approximates that 0 (~1e-7 of the gradient norm), so the exact value is written
      if (p.kind !== 'gravity') {
        dMassLog[h] = 0;
        continue;
      }
      const ml = p.massLog![h];
      dMassLog[h] = dm2[h] * 2 * softplus(ml) * dSoftplus(ml);
    }
  }
  return true;
}
