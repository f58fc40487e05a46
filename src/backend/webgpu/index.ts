/**
 * The WebGPU backend: weights live on the GPU in their stored width (F16/BF16 packed two per u32), activations
 * are f32, and every op only records a dispatch; work is submitted at read()/sync() or every few dozen
 * dispatches (see context.ts), so a forward pass is not one round trip per op.
 */
import type { AttentionParams, Backend, FusedLayerOps, KVCache, NormArg, QKVWeights, Tensor } from '../backend.js';
import { GravityError } from '../../errors.js';
import { numel, toF32, type HostTensor } from '../../tensor/dtype.js';
import { ropeInvFreq } from '../cpu/ops.js';
import { attentionProbs as cpuAttentionProbs } from '../cpu/attention.js';
import { GpuContext, GpuTensor } from './context.js';
import { createDevice } from './device.js';
import { addKernel, gatherKernel, rmsnormKernel, ropeKernel, swigluKernel } from './elementwise.js';
import { GEMV_MAX_N, PARTS_STAGE, gemvBucket, linearKernel } from './linear.js';
import { Q8Cache, linearQ8, q8Wanted, type Q8Kind } from './linear-q8.js';
import { sampleKernel } from './sample.js';
import { argmaxKernel, fusedGemvFits, gateUpGemv, normFits, qkvRopeGemv, ropeWriteKVKernel } from './fused.js';
import { GpuKVCache, writeKVKernel } from './kvcache.js';
import { attentionKernel, attentionPartsKernel } from './attention.js';
import { PARTS, PART_KEYS, PART_MIN_KEYS, SHORT_KEYS, VSPLIT } from './attention-decode.js';
import { sampleTopKKernel } from './sample-topk.js';
import { penalizeKernel } from './penalty.js';
import { DEVICE_TOPK_MAX, deviceDraws, validateSampling, type DrawFilters } from '../../generate/sampling.js';
import { asWeightType, vecWidth, type WDType } from './wgsl.js';
import type { KernelTime } from './profile.js';

export { webgpuAvailable } from './device.js';

function g(x: Tensor): GpuTensor {
  if (!(x instanceof GpuTensor)) throw new GravityError('WebGPU: tensor does not belong to the webgpu backend');
  return x;
}

function shapeStr(s: readonly number[]): string {
  return `[${s.join(', ')}]`;
}

function needF32(x: Tensor, op: string, what: string): GpuTensor {
  const t = g(x);
  if (t.dtype !== 'F32') throw new GravityError(`${op}: ${what} must be an f32 activation, got ${t.dtype} ${shapeStr(t.shape)}`);
  return t;
}

interface RopeTable {
  buffer: GPUBuffer;
  len: number;
}

export class WebGPUBackend implements Backend {
  readonly name = 'webgpu' as const;
  private ropeTables = new Map<string, RopeTable>();
  /** concatenated biases of fused GEMVs, by the first weight of the group; retired when that weight is disposed */
  private biasCat = new Map<GpuTensor, { buf: GPUBuffer; dt: WDType } | null>();
  /** (cos, sin) per row of the last positions array the fused q/k/v GEMV saw (one forward = same array for every layer) */
  private csCache: { pos: Int32Array; D: number; theta: number; copy: Int32Array; cs: Float32Array } | null = null;
  readonly fused: FusedLayerOps = {
    qkvRope: (h, w, pos, theta, H, cache, layer, start, T, norm) => this.qkvRope(h, w, pos, theta, H, cache, layer, start, T, norm),
    gateUp: (h, g, gb, u, ub, norm) => this.gateUp(h, g, gb, u, ub, norm),
    linearAdd: (x, w, b, res) => this.linearAdd(x, w, b, res),
    attentionOut: (q, cache, layer, start, T, p, w, b, res) => this.attentionOut(q, cache, layer, start, T, p, w, b, res),
  };

  /** int8 prefill linears (linear-q8.ts; GRAVITY_WEBGPU_Q8): which GEMM, null = off; weights quantized on first use */
  q8: Q8Kind | null = null;
  private q8w: Q8Cache<GpuTensor> | null = null;

  constructor(readonly ctx: GpuContext, readonly adapterName: string, readonly features: string[]) {}

  private out(shape: number[]): GpuTensor {
    const bytes = numel(shape) * 4;
    return new GpuTensor(shape, 'F32', this.ctx.alloc(bytes, `activation ${shapeStr(shape)} f32`), bytes, true);
  }

  upload(h: HostTensor, _hint?: 'linear' | 'other'): Tensor {
    const n = numel(h.shape);
    if (h.data.length !== n) throw new GravityError(`upload: ${h.data.length} values for shape ${shapeStr(h.shape)}`);
    if (h.dtype === 'F16' || h.dtype === 'BF16') {
      const data = h.data as Uint16Array;
      const buf = this.ctx.createFilled(data, `tensor ${shapeStr(h.shape)} ${h.dtype}`);
      return new GpuTensor([...h.shape], h.dtype, buf, n * 2, false);
    }
    const f = h.dtype === 'F32' ? (h.data as Float32Array) : toF32(h);
    const buf = this.ctx.createFilled(f, `tensor ${shapeStr(h.shape)} ${h.dtype === 'F32' ? 'F32' : `${h.dtype} (as F32)`}`);
    return new GpuTensor([...h.shape], 'F32', buf, n * 4, false);
  }

  fromF32(data: Float32Array, shape: number[]): Tensor {
    if (data.length !== numel(shape)) throw new GravityError(`fromF32: ${data.length} values for shape ${shapeStr(shape)}`);
    const buf = this.ctx.createFilled(data, `tensor ${shapeStr(shape)} f32`);
    return new GpuTensor([...shape], 'F32', buf, data.length * 4, false);
  }

  async read(x: Tensor): Promise<Float32Array> {
    const t = g(x);
    const raw = await this.ctx.readBuffer(t.buf, 0, t.bytes);
    if (t.dtype === 'F32') return new Float32Array(raw);
    return toF32({ dtype: t.dtype, shape: [...t.shape], data: new Uint16Array(raw) });
  }

  dispose(x: Tensor | KVCache): void {
    if (x instanceof GpuKVCache) return x.destroy();
    const t = g(x as Tensor);
    this.q8w?.drop(t);
    const cat = this.biasCat.get(t);
    if (cat !== undefined) {
      if (cat) this.ctx.retire(cat.buf);
      this.biasCat.delete(t);
    }
    if (!t.buffer) return;
    if (t.pooled) this.ctx.release(t.buffer);
    else this.ctx.retire(t.buffer); // destroyed after the dispatches recorded so far are submitted
    t.buffer = null;
  }

  embedding(ids: Int32Array, table: Tensor): Tensor {
    const tb = g(table);
    if (tb.shape.length !== 2) throw new GravityError(`embedding: table must be [V, C], got ${shapeStr(tb.shape)}`);
    const [V, C] = tb.shape;
    for (const id of ids) if (id < 0 || id >= V) throw new GravityError(`embedding: token id ${id} outside [0, ${V})`);
    const y = this.out([ids.length, C]);
    gatherKernel(this.ctx, ids, tb.buf, asWeightType(tb.dtype, 'embedding table'), y.buf, C);
    return y;
  }

  gatherRows(x: Tensor, rows: Int32Array): Tensor {
    const t = needF32(x, 'gatherRows', 'x');
    const [N, C] = t.shape;
    for (const r of rows) if (r < 0 || r >= N) throw new GravityError(`gatherRows: row ${r} outside [0, ${N})`);
    const y = this.out([rows.length, C]);
    gatherKernel(this.ctx, rows, t.buf, 'F32', y.buf, C);
    return y;
  }

  rmsnorm(x: Tensor, w: Tensor, eps: number): Tensor {
    const t = needF32(x, 'rmsnorm', 'x');
    const wt = g(w);
    const [N, C] = t.shape;
    if (numel(wt.shape) !== C) throw new GravityError(`rmsnorm: weight ${shapeStr(wt.shape)} does not match x ${shapeStr(t.shape)}`);
    const y = this.out([N, C]);
    rmsnormKernel(this.ctx, t.buf, wt.buf, asWeightType(wt.dtype, 'rmsnorm weight'), y.buf, N, C, eps);
    return y;
  }

  /** `res` (internal, decode sizes only): y = res + linear(x, w, b) in the GEMV's epilogue (linearAdd) */
  linear(x: Tensor, w: Tensor, b: Tensor | null, res: GpuTensor | null = null): Tensor {
    const t = needF32(x, 'linear', 'x');
    const wt = g(w);
    const [N, IN] = t.shape;
    if (wt.shape.length !== 2 || wt.shape[1] !== IN) {
      throw new GravityError(`linear: x ${shapeStr(t.shape)} does not match weight ${shapeStr(wt.shape)} (expected [OUT, ${IN}])`);
    }
    const OUT = wt.shape[0];
    const bt = b ? g(b) : null;
    if (bt && numel(bt.shape) !== OUT) throw new GravityError(`linear: bias ${shapeStr(bt.shape)} does not match ${OUT} outputs`);
    const y = this.out([N, OUT]);
    if (N === 0) return y;
    const wdt = asWeightType(wt.dtype, 'linear weight');
    if (this.q8 && N > GEMV_MAX_N) {
      const q = (this.q8w ??= new Q8Cache(this.ctx)).get(wt, wt.buf, wdt, OUT, IN);
      linearQ8(this.ctx, t.buf, q, bt ? bt.buf : null, bt ? asWeightType(bt.dtype, 'bias') : null, y.buf, N, this.q8);
      return y;
    }
    linearKernel(this.ctx, t.buf, wt.buf, wdt, bt ? bt.buf : null, bt ? asWeightType(bt.dtype, 'bias') : null, y.buf, N, IN, OUT, res?.buf ?? null);
    return y;
  }

  add(a: Tensor, b: Tensor): Tensor {
    const x = needF32(a, 'add', 'a');
    const z = needF32(b, 'add', 'b');
    const n = numel(x.shape);
    if (numel(z.shape) !== n) throw new GravityError(`add: shapes ${shapeStr(x.shape)} and ${shapeStr(z.shape)} differ`);
    const y = this.out([...x.shape]);
    addKernel(this.ctx, x.buf, z.buf, y.buf, n);
    return y;
  }

  swiglu(gate: Tensor, up: Tensor): Tensor {
    const x = needF32(gate, 'swiglu', 'gate');
    const z = needF32(up, 'swiglu', 'up');
    const n = numel(x.shape);
    if (numel(z.shape) !== n) throw new GravityError(`swiglu: shapes ${shapeStr(x.shape)} and ${shapeStr(z.shape)} differ`);
    const y = this.out([...x.shape]);
    swigluKernel(this.ctx, x.buf, z.buf, y.buf, n);
    return y;
  }

  rope(x: Tensor, positions: Int32Array, heads: number, headDim: number, theta: number): Tensor {
    const t = needF32(x, 'rope', 'x');
    const [N, HD] = t.shape;
    if (HD !== heads * headDim || positions.length !== N || headDim % 2 !== 0) {
      throw new GravityError(`rope: x ${shapeStr(t.shape)} with ${positions.length} positions, ${heads} heads of ${headDim}`);
    }
    let maxPos = 0;
    for (const p of positions) maxPos = Math.max(maxPos, Math.abs(p));
    const table = this.ropeTable(headDim, theta, maxPos);
    const y = this.out([N, HD]);
    ropeKernel(this.ctx, t.buf, y.buf, positions, table, heads, headDim);
    return y;
  }

  /** (cos, sin) [len, D/2] of HF's f32 angle pos * inv_freq, grown by doubling as positions grow (shared with training). */
  ropeTable(D: number, theta: number, maxPos: number): GPUBuffer {
    const key = `${D}:${theta}`;
    const cur = this.ropeTables.get(key);
    if (cur && maxPos < cur.len) return cur.buffer;
    let len = Math.max(256, cur ? cur.len : 0);
    while (len <= maxPos) len *= 2;
    const inv = ropeInvFreq(D, theta);
    const half = D / 2;
    const data = new Float32Array(len * half * 2);
    for (let p = 0; p < len; p++) {
      for (let i = 0; i < half; i++) {
        const a = Math.fround(p * inv[i]);
        data[2 * (p * half + i)] = Math.cos(a);
        data[2 * (p * half + i) + 1] = Math.sin(a);
      }
    }
    if (cur) this.ctx.retire(cur.buffer);
    const buffer = this.ctx.createFilled(data, `rope table [${len}, ${half}]`);
    this.ropeTables.set(key, { buffer, len });
    return buffer;
  }

  /**
   * res + linear(attention(q, ...), w, b). Decode with enough keys: attention as key-split partials that the o GEMV
   * merges as it loads them (attentionPartsKernel), two dispatches; elsewhere attention then linearAdd.
   */
  private attentionOut(q: Tensor, cache: KVCache, layer: number, start: number, T: number, p: AttentionParams, w: Tensor, b: Tensor | null, res: Tensor): Tensor {
    const c = this.cache(cache);
    const wt = g(w);
    const r = needF32(res, 'attentionOut', 'res');
    const IN = p.numHeads * p.headDim;
    const bt = b ? g(b) : null;
    const fits = T === 1 && c.batch <= GEMV_MAX_N && wt.shape.length === 2 && wt.shape[1] === IN && IN % vecWidth(asWeightType(wt.dtype, 'linear weight')) === 0 &&
      numel(r.shape) === c.batch * wt.shape[0] && (!bt || numel(bt.shape) === wt.shape[0]) && numel(q.shape) === c.batch * IN && layer >= 0 && layer < c.numLayers;
    const parts = fits ? attentionPartsKernel(this.ctx, needF32(q, 'attention', 'q').buf, c, layer, start, p) : null;
    if (!parts) {
      const a = this.attention(q, cache, layer, start, T, p);
      const y = this.linearAdd(a, w, b, res);
      this.dispose(a);
      return y;
    }
    const OUT = wt.shape[0];
    const y = this.out([c.batch, OUT]);
    linearKernel(this.ctx, parts.part, wt.buf, asWeightType(wt.dtype, 'linear weight'), bt ? bt.buf : null, bt ? asWeightType(bt.dtype, 'bias') : null, y.buf, c.batch, IN, OUT, r.buf, parts);
    this.ctx.release(parts.part);
    this.ctx.release(parts.ml);
    return y;
  }

  /** res + linear(x, w, b): in the GEMV's epilogue for decode, linear then add for prefill */
  private linearAdd(x: Tensor, w: Tensor, b: Tensor | null, res: Tensor): Tensor {
    const r = needF32(res, 'linearAdd', 'res');
    const t = needF32(x, 'linearAdd', 'x');
    const wt = g(w);
    const N = t.shape[0];
    if (N > GEMV_MAX_N || wt.shape.length !== 2 || numel(r.shape) !== N * wt.shape[0]) {
      const y = this.linear(x, w, b);
      const z = this.add(res, y);
      this.dispose(y);
      return z;
    }
    return this.linear(x, w, b, r);
  }

  /** the fused ops' NormArg as a kernel binding, or null when it is absent or does not fit the GEMV */
  private normBinding(x: GpuTensor, norm: NormArg | undefined, NB: number, buffers: number): { g: GPUBuffer; dt: WDType; eps: number } | null {
    if (!norm) return null;
    const wt = g(norm.w);
    const [N, C] = x.shape;
    if (numel(wt.shape) !== C) throw new GravityError(`rmsnorm: weight ${shapeStr(wt.shape)} does not match x ${shapeStr(x.shape)}`);
    if (N > GEMV_MAX_N || !normFits(this.ctx, NB, C, buffers)) return null;
    return { g: wt.buf, dt: asWeightType(wt.dtype, 'rmsnorm weight'), eps: norm.eps };
  }

  /**
   * One buffer [b0; b1; ...] of biases in one width (missing ones as zeros), made once per weight group with
   * GPU copies; null when there are no biases, undefined when their widths differ (then the caller does not fuse).
   */
  private concatBias(key: GpuTensor, parts: { b: Tensor | null; rows: number }[]): { buf: GPUBuffer; dt: WDType } | null | undefined {
    const hit = this.biasCat.get(key);
    if (hit !== undefined) return hit;
    const present = parts.filter((p) => p.b).map((p) => g(p.b!));
    if (present.length === 0) {
      this.biasCat.set(key, null);
      return null;
    }
    const dt = asWeightType(present[0].dtype, 'bias');
    if (present.some((t) => t.dtype !== dt)) return undefined;
    const w = dt === 'F32' ? 4 : 2;
    if (parts.some((p) => (p.rows * w) % 4 !== 0)) return undefined;
    const total = parts.reduce((a, p) => a + p.rows, 0);
    const buf = this.ctx.createFilled(new Uint8Array(total * w), 'concatenated biases');
    let off = 0;
    for (const p of parts) {
      if (p.b) this.ctx.copy(g(p.b).buf, 0, buf, off * w, p.rows * w);
      off += p.rows;
    }
    const r = { buf, dt };
    this.biasCat.set(key, r);
    return r;
  }

  /** (cos, sin) [N, D/2] of HF's f32 angles, in f64 like the rope table, reused across a forward's layers */
  private ropeCS(pos: Int32Array, D: number, theta: number): Float32Array {
    const c = this.csCache;
    if (c && c.pos === pos && c.D === D && c.theta === theta && c.copy.length === pos.length && c.copy.every((v, i) => v === pos[i])) return c.cs;
    const inv = ropeInvFreq(D, theta);
    const half = D / 2;
    const cs = new Float32Array(pos.length * D);
    for (let n = 0; n < pos.length; n++) {
      for (let i = 0; i < half; i++) {
        const a = Math.fround(pos[n] * inv[i]);
        cs[2 * (n * half + i)] = Math.cos(a);
        cs[2 * (n * half + i) + 1] = Math.sin(a);
      }
    }
    this.csCache = { pos, D, theta, copy: pos.slice(), cs };
    return cs;
  }

  private qkvRope(h: Tensor, w: QKVWeights, positions: Int32Array, theta: number, Hq: number, cache: KVCache, layer: number, start: number, T: number, norm?: NormArg): Tensor {
    const c = this.cache(cache);
    let x = needF32(h, 'qkvRope', 'h');
    const [N, IN] = x.shape;
    const D = c.headDim;
    const Hkv = c.numKVHeads;
    const wq = g(w.q), wk = g(w.k), wv = g(w.v);
    const dt = asWeightType(wq.dtype, 'linear weight');
    const shapesOk = wq.shape[0] === Hq * D && wk.shape[0] === Hkv * D && wv.shape[0] === Hkv * D && wq.shape[1] === IN && wk.shape[1] === IN && wv.shape[1] === IN;
    if (!shapesOk) throw new GravityError(`qkvRope: weights ${shapeStr(wq.shape)}, ${shapeStr(wk.shape)}, ${shapeStr(wv.shape)} do not match ${Hq}/${Hkv} heads of ${D} over ${IN} inputs`);
    if (positions.length !== N || N !== c.batch * T) throw new GravityError(`qkvRope: ${N} rows, ${positions.length} positions, batch ${c.batch} x ${T} tokens`);
    if (layer < 0 || layer >= c.numLayers) throw new GravityError(`qkvRope: layer ${layer} outside [0, ${c.numLayers})`);
    if (start < 0 || start + T > c.maxLen) throw new GravityError(`KV cache full: ${start + T} > ${c.maxLen} slots`);
    const L = c.layers[layer];
    const q = this.out([N, Hq * D]);
    const sameDt = wk.dtype === wq.dtype && wv.dtype === wq.dtype;
    const bias = N <= GEMV_MAX_N && sameDt && D % 8 === 0 && fusedGemvFits(IN, dt)
      ? this.concatBias(wq, [{ b: w.qb, rows: Hq * D }, { b: w.kb, rows: Hkv * D }, { b: w.vb, rows: Hkv * D }])
      : undefined;
    const NB = gemvBucket(N);
    const nb = bias !== undefined ? this.normBinding(x, norm, NB, bias ? 9 : 8) : null;
    if (norm && !nb) {
      // the norm does not fit the GEMV's prologue (or this is a prefill): its own kernel first
      x = g(this.rmsnorm(x, norm.w, norm.eps));
      try {
        return this.qkvRope(x, w, positions, theta, Hq, cache, layer, start, T);
      } finally {
        this.dispose(x);
      }
    }
    if (bias !== undefined) {
      qkvRopeGemv(this.ctx, {
        x: x.buf, wq: wq.buf, wk: wk.buf, wv: wv.buf, dt, bias: bias?.buf ?? null, bdt: bias?.dt ?? null,
        cs: this.ropeCS(positions, D, theta), q: q.buf, kv: L.kv,
        N, IN, Hq, Hkv, D, T, maxLen: c.maxLen, start, vOff: c.vOff, norm: nb ?? undefined,
      }, NB);
      return q;
    }
    // prefill (or shapes the GEMV does not take): the projections, then RoPE and the KV write in one kernel
    const q0 = g(this.linear(h, w.q, w.qb));
    const k0 = g(this.linear(h, w.k, w.kb));
    const v0 = g(this.linear(h, w.v, w.vb));
    let maxPos = 0;
    for (const p of positions) maxPos = Math.max(maxPos, Math.abs(p));
    const table = this.ropeTable(D, theta, maxPos);
    ropeWriteKVKernel(this.ctx, q0.buf, k0.buf, v0.buf, positions, table, q.buf, L.kv, N, Hq, Hkv, D, T, c.maxLen, start, c.vOff);
    this.dispose(q0);
    this.dispose(k0);
    this.dispose(v0);
    return q;
  }

  private gateUp(h: Tensor, gate: Tensor, gateb: Tensor | null, up: Tensor, upb: Tensor | null, norm?: NormArg): Tensor {
    const x = needF32(h, 'gateUp', 'h');
    const [N, IN] = x.shape;
    const wg = g(gate), wu = g(up);
    const I = wg.shape[0];
    const dt = asWeightType(wg.dtype, 'linear weight');
    const ok = N <= GEMV_MAX_N && wu.dtype === wg.dtype && wu.shape[0] === I && wg.shape[1] === IN && wu.shape[1] === IN && fusedGemvFits(IN, dt);
    const bias = ok ? this.concatBias(wg, [{ b: gateb, rows: I }, { b: upb, rows: I }]) : undefined;
    const NB = gemvBucket(N);
    const nb = bias !== undefined ? this.normBinding(x, norm, NB, bias ? 6 : 5) : null;
    if (norm && !nb) {
      const hn = this.rmsnorm(x, norm.w, norm.eps);
      try {
        return this.gateUp(hn, gate, gateb, up, upb);
      } finally {
        this.dispose(hn);
      }
    }
    if (bias === undefined) {
      const gt = this.linear(h, gate, gateb);
      const ut = this.linear(h, up, upb);
      const y = this.swiglu(gt, ut);
      this.dispose(gt);
      this.dispose(ut);
      return y;
    }
    const y = this.out([N, I]);
    gateUpGemv(this.ctx, x.buf, wg.buf, wu.buf, dt, bias?.buf ?? null, bias?.dt ?? null, y.buf, N, NB, IN, I, nb);
    return y;
  }

  /** Greedy ids: argmax of each row of x [R, V] on the GPU; only R * 4 bytes come back. */
  async argmaxRows(x: Tensor): Promise<Int32Array> {
    const ids = this.argmaxDevice(x);
    try {
      return await this.readIds(ids);
    } finally {
      this.dispose(ids);
    }
  }

  /** argmax ids of each row of x [R, V] as an I32 tensor [R] that stays on the GPU (-1 for a non-finite row) */
  argmaxDevice(x: Tensor): Tensor {
    const t = needF32(x, 'argmaxRows', 'x');
    const V = t.shape[t.shape.length - 1];
    const R = numel(t.shape) / V;
    const out = new GpuTensor([R], 'I32', this.ctx.alloc(R * 4, 'argmax ids'), R * 4, true);
    argmaxKernel(this.ctx, t.buf, out.buf, R, V);
    return out;
  }

  /**
   * Temperature draws of each row of x [R, V] as an I32 tensor [R] on the GPU (-1 for a non-finite row): sample.ts,
   * or with top-k (and top-p / min-p) sample-topk.ts.
   */
  sampleDevice(x: Tensor, temperature: number, u: Float32Array, filters: DrawFilters = {}): Tensor {
    const t = needF32(x, 'sampleDevice', 'x');
    const V = t.shape[t.shape.length - 1];
    const R = numel(t.shape) / V;
    if (!(temperature > 0 && Number.isFinite(temperature))) throw new GravityError(`sampleDevice: temperature must be > 0, got ${temperature}`);
    if (u.length !== R) throw new GravityError(`sampleDevice: ${u.length} uniforms for ${R} rows`);
    for (const v of u) if (!(v >= 0 && v < 1)) throw new GravityError(`sampleDevice: uniforms must be in [0, 1), got ${v}`);
    const f = validateSampling({ temperature, ...filters });
    if (!deviceDraws(f, V)) {
      throw new GravityError(`sampleDevice: filters need a top-k in [1, ${Math.min(DEVICE_TOPK_MAX, V - 1)}] on the device, got top-k ${f.topK} (top-p ${f.topP}, min-p ${f.minP})`);
    }
    const out = new GpuTensor([R], 'I32', this.ctx.alloc(R * 4, 'sampled ids'), R * 4, true);
    if (f.topK === 0) sampleKernel(this.ctx, t.buf, out.buf, R, V, 1 / temperature, u);
    else sampleTopKKernel(this.ctx, t.buf, out.buf, R, V, 1 / temperature, f, u);
    return out;
  }

  seenMaskDevice(vocab: number, history: readonly (readonly number[])[]): Tensor {
    const W = Math.ceil(vocab / 32);
    const bits = new Uint32Array(history.length * W);
    history.forEach((h, r) => {
      for (const id of h) if (Number.isInteger(id) && id >= 0 && id < vocab) bits[r * W + (id >>> 5)] |= 1 << (id & 31);
    });
    return new GpuTensor([history.length, W], 'I32', this.ctx.createFilled(bits, 'seen ids'), bits.byteLength, false);
  }

  /** the repetition penalty on the device, in place (penalty.ts) */
  penalizeDevice(x: Tensor, seen: Tensor, prev: Tensor | null, penalty: number): void {
    const t = needF32(x, 'penalizeDevice', 'x');
    const V = t.shape[t.shape.length - 1];
    const R = numel(t.shape) / V;
    const s = g(seen);
    if (!(penalty > 0 && Number.isFinite(penalty))) throw new GravityError(`penalizeDevice: the penalty must be > 0, got ${penalty}`);
    if (s.dtype !== 'I32' || s.shape[0] !== R || s.shape[1] !== Math.ceil(V / 32)) throw new GravityError(`penalizeDevice: mask ${shapeStr(s.shape)} for ${R} rows of ${V} logits`);
    if (prev && (g(prev).dtype !== 'I32' || numel(g(prev).shape) !== R)) throw new GravityError(`penalizeDevice: ${numel(g(prev).shape)} previous ids for ${R} rows`);
    penalizeKernel(this.ctx, t.buf, s.buf, prev ? g(prev).buf : null, R, V, penalty);
  }

  embeddingDevice(ids: Tensor, table: Tensor): Tensor {
    const it = g(ids);
    const tb = g(table);
    if (it.dtype !== 'I32' || it.shape.length !== 1) throw new GravityError(`embedding: device ids must be I32 [N], got ${it.dtype} ${shapeStr(it.shape)}`);
    if (tb.shape.length !== 2) throw new GravityError(`embedding: table must be [V, C], got ${shapeStr(tb.shape)}`);
    const y = this.out([it.shape[0], tb.shape[1]]);
    gatherKernel(this.ctx, it.buf, tb.buf, asWeightType(tb.dtype, 'embedding table'), y.buf, tb.shape[1], it.shape[0]);
    return y;
  }

  /** The copy to the host is recorded and submitted before this returns (the wait is the caller's to overlap). */
  readIds(ids: Tensor): Promise<Int32Array> {
    const t = g(ids);
    if (t.dtype !== 'I32') throw new GravityError(`readIds: expected an I32 tensor, got ${t.dtype}`);
    return this.ctx.readBuffer(t.buf, 0, t.bytes).then((raw) => {
      const out = new Int32Array(raw);
      if (out.includes(-1)) throw new GravityError('the logits hold NaN or infinity: the model produced non-finite values (check the weights and masses)');
      return out;
    });
  }

  createKVCache(numLayers: number, batch: number, maxLen: number, numKVHeads: number, headDim: number): KVCache {
    return new GpuKVCache(this.ctx, numLayers, batch, maxLen, numKVHeads, headDim);
  }

  private cache(c: KVCache): GpuKVCache {
    if (!(c instanceof GpuKVCache)) throw new GravityError('WebGPU: KV cache does not belong to the webgpu backend');
    return c;
  }

  writeKV(cache: KVCache, layer: number, k: Tensor, v: Tensor, start: number, T: number): void {
    const c = this.cache(cache);
    const kt = needF32(k, 'writeKV', 'k');
    const vt = needF32(v, 'writeKV', 'v');
    const want = c.batch * T * c.numKVHeads * c.headDim;
    if (numel(kt.shape) !== want || numel(vt.shape) !== want) {
      throw new GravityError(`writeKV: k ${shapeStr(kt.shape)} / v ${shapeStr(vt.shape)}, expected [${c.batch * T}, ${c.numKVHeads * c.headDim}]`);
    }
    writeKVKernel(this.ctx, c, layer, kt.buf, vt.buf, start, T);
  }

  attention(q: Tensor, cache: KVCache, layer: number, start: number, T: number, p: AttentionParams): Tensor {
    const c = this.cache(cache);
    const qt = needF32(q, 'attention', 'q');
    if (numel(qt.shape) !== c.batch * T * p.numHeads * p.headDim) {
      throw new GravityError(`attention: q ${shapeStr(qt.shape)}, expected [${c.batch * T}, ${p.numHeads * p.headDim}]`);
    }
    if (layer < 0 || layer >= c.numLayers) throw new GravityError(`attention: layer ${layer} outside [0, ${c.numLayers})`);
    const y = this.out([...qt.shape]);
    attentionKernel(this.ctx, qt.buf, c, layer, start, T, p, y.buf);
    return y;
  }

  /** Debug path: reads q and the layer's keys back and uses the CPU code (identical semantics). */
  async attentionProbs(q: Tensor, cache: KVCache, layer: number, start: number, T: number, p: AttentionParams): Promise<Float32Array> {
    const c = this.cache(cache);
    const L = c.layers[layer];
    const slots = c.batch * c.numKVHeads * c.maxLen;
    const qh = await this.read(q);
    const k = new Float32Array(await this.ctx.readBuffer(L.kv, 0, slots * c.headDim * 4));
    // |k|² in f64 from the keys themselves, as the CPU cache keeps it
    const D = c.headDim;
    const kn = new Float64Array(slots);
    for (let s = 0; s < slots; s++) {
      let n = 0;
      for (let d = 0; d < D; d++) n += k[s * D + d] * k[s * D + d];
      kn[s] = n;
    }
    return cpuAttentionProbs(qh, { k, v: new Float32Array(0), kn }, c.keyValid, c.batch, T, start, c.maxLen, p);
  }

  async sync(): Promise<void> {
    await this.ctx.sync();
  }

  /**
   * GPU milliseconds per kernel (key = kernel and its specialisation, e.g. `gemv:1:BF16:true:null`) since the
   * last call, largest first; null unless the backend was created with `profile`.
   */
  async profileReport(): Promise<KernelTime[] | null> {
    return this.ctx.profileReport();
  }

  /** Frees every GPU buffer and the device (tests, CLI exit). The backend is unusable afterwards. */
  destroy(): void {
    for (const t of this.ropeTables.values()) t.buffer.destroy();
    this.ropeTables.clear();
    this.ctx.destroy();
  }
}

export interface WebGPUBackendOptions {
  powerPreference?: GPUPowerPreference;
  /**
   * Time every kernel with timestamp queries (also GRAVITY_WEBGPU_PROFILE=1); read with profileReport().
   * Each dispatch then gets its own pass, which costs a little time of its own. 'pass' (GRAVITY_WEBGPU_PROFILE=pass):
   * timestamps around each compute pass only, i.e. the GPU's busy time with the dispatches as they normally run.
   */
  profile?: boolean | 'pass';
  /** GEMV reductions with subgroup shuffles when the adapter has `subgroups` (default; GRAVITY_WEBGPU_SUBGROUPS=0 turns it off) */
  subgroups?: boolean;
  /** int8 prefill linears (also GRAVITY_WEBGPU_Q8=1|sm|dp4a): tensor cores where the device has subgroup matrices, else DP4A */
  q8?: boolean | 'auto' | Q8Kind;
}

export async function createWebGPUBackend(opts: WebGPUBackendOptions = {}): Promise<WebGPUBackend> {
  const env = typeof process !== 'undefined' ? process.env?.GRAVITY_WEBGPU_PROFILE : undefined;
  const profile = opts.profile ?? (env === 'pass' ? 'pass' : env === '1');
  const q8 = q8Wanted(opts.q8);
  const { device, adapterName, features, timestamps, subgroupLanes, subgroupMatrix } = await createDevice({ timestamps: !!profile, powerPreference: opts.powerPreference, subgroups: opts.subgroups, subgroupMatrix: q8 === 'auto' || q8 === 'sm' });
  const be = new WebGPUBackend(new GpuContext(device, timestamps ? profile : false, subgroupLanes), adapterName, features);
  if (q8 === 'sm' && !subgroupMatrix) throw new GravityError('WebGPU: Q8 tensor-core GEMM asked for, but the device has no i8 subgroup matrices (GRAVITY_DAWN_FLAGS=enable-dawn-features=allow_unsafe_apis?)');
  be.q8 = q8 === 'auto' ? (subgroupMatrix ? 'sm' : 'dp4a') : q8;
  be.ctx.decodeTuning = { shortKeys: SHORT_KEYS, vsplit: VSPLIT, parts: PARTS, partKeys: PART_KEYS, partMinKeys: PART_MIN_KEYS, stage: PARTS_STAGE };
  return be;
}
