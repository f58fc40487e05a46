/**
 * TrainOps for the cpu backend. Tensors are CpuTensors whose host data is F32 or F64 (the working precision);
 * frozen weights keep their stored width. In f32, every matrix product goes to the MatmulEngine (WASM SIMD,
 * threaded): products with frozen weights, with trainable f32 weights (copied into kernel memory on first use
 * and released with the tensor, i.e. once per optimizer step), and weight gradients dW = dyᵀx. Everything
 * else, and all of f64, is plain loops from ./ops-backward.ts with f64 sums.
 */
import { CpuTensor, type CpuBackend } from '../backend/cpu/index.js';
import { ropeInvFreq } from '../backend/cpu/ops.js';
import type { Tensor } from '../backend/backend.js';
import type { TrainAttentionParams, TrainOps } from '../backend/train-ops.js';
import { Rng } from '../generate/sampling.js';
import { numel } from '../tensor/dtype.js';
import * as K from './ops-backward.js';
import { attentionBackward, attentionForwardTrain } from './attention-backward.js';
import type { Arr } from './ops-backward.js';

export class CpuTrainOps implements TrainOps {
  private invFreq = new Map<string, Float64Array>();
  /** f64 copies of small weights (norms, biases) */
  private widened = new WeakMap<CpuTensor, Float64Array>();

  constructor(readonly backend: CpuBackend, readonly precision: 'f32' | 'f64' = 'f32') {}

  /** tensors made here (activations, trainable parameters); anything else is a frozen uploaded weight */
  private mine = new WeakSet<CpuTensor>();

  private make(data: Arr, shape: number[]): CpuTensor {
    const dtype = data instanceof Float64Array ? 'F64' : 'F32';
    const t = new CpuTensor(shape, dtype, { dtype, shape, data });
    this.mine.add(t);
    return t;
  }

  private alloc(shape: number[]): Arr {
    return K.newArr(this.precision, numel(shape));
  }

  /** working-precision data of an activation */
  private a(x: Tensor): Arr {
    const h = (x as CpuTensor).host;
    if (!h) throw new Error('cpu train: tensor was released');
    if (h.dtype === 'F32' || h.dtype === 'F64') return h.data as Arr;
    throw new Error(`cpu train: expected an activation, got a ${h.dtype} tensor`);
  }

  private small(w: Tensor): Float64Array {
    const ct = w as CpuTensor;
    let v = this.widened.get(ct);
    if (!v || v.length !== numel(ct.shape)) {
      if (!ct.host) throw new Error('cpu train: weight was released');
      v = K.widen(ct.host);
      // trainable tensors are fresh each step; only frozen uploaded ones are worth caching
      if (!this.mine.has(ct)) this.widened.set(ct, v);
    }
    return v;
  }

  fromHost(data: Float32Array | Float64Array, shape: number[]): Tensor {
    if (data.length !== numel(shape)) throw new Error(`fromHost: ${data.length} values for shape [${shape}]`);
    const out = this.alloc(shape);
    out.set(data);
    return this.make(out, shape);
  }

  async read(t: Tensor): Promise<Float64Array> {
    return Float64Array.from(this.a(t));
  }

  dispose(t: Tensor): void {
    const ct = t as CpuTensor;
    if (ct.prepared) return this.backend.dispose(t);
    ct.host = null;
  }

  embedding(ids: Int32Array, table: Tensor): Tensor {
    const tb = table as CpuTensor;
    const [V, C] = tb.shape;
    if (!tb.host) throw new Error('cpu train: embedding table was uploaded as linear-only');
    const out = this.alloc([ids.length, C]);
    const row = new Float64Array(C);
    for (let n = 0; n < ids.length; n++) {
      if (ids[n] < 0 || ids[n] >= V) throw new Error(`embedding: id ${ids[n]} outside [0, ${V})`);
      K.weightRow(tb.host, ids[n], C, row);
      out.set(row, n * C);
    }
    return this.make(out, [ids.length, C]);
  }

  embeddingBackward(ids: Int32Array, dy: Tensor, vocab: number): Tensor {
    const C = dy.shape[1];
    const out = this.alloc([vocab, C]);
    K.embeddingBackward(out, ids, this.a(dy), C);
    return this.make(out, [vocab, C]);
  }

  rmsnorm(x: Tensor, w: Tensor, eps: number): { y: Tensor; rstd: Tensor } {
    const [N, C] = x.shape;
    const y = this.alloc([N, C]);
    const rstd = this.alloc([N]);
    K.rmsnormForward(y, rstd, this.a(x), this.small(w), N, C, eps);
    return { y: this.make(y, [N, C]), rstd: this.make(rstd, [N]) };
  }

  rmsnormBackward(dy: Tensor, x: Tensor, w: Tensor, rstd: Tensor): { dx: Tensor; dw: Tensor } {
    const [N, C] = x.shape;
    const dx = this.alloc([N, C]);
    const dw = new Float64Array(C);
    K.rmsnormBackward(dx, dw, this.a(dy), this.a(x), this.small(w), this.a(rstd), N, C);
    return { dx: this.make(dx, [N, C]), dw: this.fromHost(dw, [C]) };
  }

  /** in f32, products go to the engine (weights prepared on first use, e.g. a tied lm_head or a trainable copy) */
  private useEngine(x: Tensor, w: CpuTensor): boolean {
    return this.precision === 'f32' && x.dtype === 'F32' && (w.prepared !== null || w.host?.dtype !== 'F64');
  }

  private hostOf(w: CpuTensor) {
    if (!w.host) throw new Error('cpu train: the f64 path needs weights uploaded with hint "other" (host copy kept)');
    return w.host;
  }

  linear(x: Tensor, w: Tensor, b: Tensor | null): Tensor {
    const [N, IN] = x.shape;
    const wt = w as CpuTensor;
    const [OUT, WIN] = wt.shape;
    if (WIN !== IN) throw new Error(`linear: x has ${IN} columns, weight expects ${WIN}`);
    if (this.useEngine(x, wt)) {
      if (!wt.prepared) wt.prepared = this.backend.engine.prepare(wt.host!);
      const bias = b ? Float32Array.from(this.small(b)) : null;
      return this.make(this.backend.engine.linear(this.a(x) as Float32Array, N, wt.prepared, bias), [N, OUT]);
    }
    const y = this.alloc([N, OUT]);
    K.linearForward(y, this.a(x), this.hostOf(wt), b ? this.small(b) : null, N, IN, OUT);
    return this.make(y, [N, OUT]);
  }

  linearBackwardInput(dy: Tensor, w: Tensor): Tensor {
    const N = dy.shape[0];
    const wt = w as CpuTensor;
    const [OUT, IN] = wt.shape;
    if (this.useEngine(dy, wt)) {
      if (!wt.prepared) wt.prepared = this.backend.engine.prepare(wt.host!);
      return this.make(this.backend.engine.linearBackwardInput(this.a(dy) as Float32Array, N, wt.prepared), [N, IN]);
    }
    const dx = this.alloc([N, IN]);
    K.linearBackwardInput(dx, this.a(dy), this.hostOf(wt), N, IN, OUT);
    return this.make(dx, [N, IN]);
  }

  linearBackwardWeight(dy: Tensor, x: Tensor): Tensor {
    const [N, OUT] = dy.shape;
    const IN = x.shape[1];
    if (x.shape[0] !== N) throw new Error(`linearBackwardWeight: dy has ${N} rows, x has ${x.shape[0]}`);
    const a = this.a(dy);
    const b = this.a(x);
    if (a instanceof Float32Array && b instanceof Float32Array) {
      return this.make(this.backend.engine.linearBackwardWeight(a, b, N, OUT, IN), [OUT, IN]);
    }
    const dw = this.alloc([OUT, IN]);
    K.linearBackwardWeight(dw, this.a(dy), this.a(x), N, IN, OUT);
    return this.make(dw, [OUT, IN]);
  }

  sliceRows(x: Tensor, start: number, count: number): Tensor {
    const C = x.shape[1];
    if (start < 0 || start + count > x.shape[0]) throw new Error(`sliceRows: rows [${start}, ${start + count}) of [${x.shape}]`);
    const out = this.alloc([count, C]);
    out.set(this.a(x).subarray(start * C, (start + count) * C));
    return this.make(out, [count, C]);
  }

  concatRows(parts: Tensor[]): Tensor {
    const C = parts[0].shape[1];
    const N = parts.reduce((n, p) => n + p.shape[0], 0);
    const out = this.alloc([N, C]);
    let off = 0;
    for (const p of parts) {
      if (p.shape[1] !== C) throw new Error(`concatRows: [${p.shape}] does not have ${C} columns`);
      out.set(this.a(p), off);
      off += p.shape[0] * C;
    }
    return this.make(out, [N, C]);
  }

  addScaled(a: Tensor, b: Tensor, alpha: number): Tensor {
    const x = this.a(a);
    const y = this.a(b);
    if (x.length !== y.length) throw new Error(`addScaled: shapes [${a.shape}] and [${b.shape}] differ`);
    const out = this.alloc([...a.shape]);
    for (let i = 0; i < x.length; i++) out[i] = x[i] + alpha * y[i];
    return this.make(out, [...a.shape]);
  }

  mul(a: Tensor, b: Tensor): Tensor {
    const x = this.a(a);
    const y = this.a(b);
    const out = this.alloc([...a.shape]);
    for (let i = 0; i < x.length; i++) out[i] = x[i] * y[i];
    return this.make(out, [...a.shape]);
  }

  dropoutMask(shape: number[], p: number, seed: number): Tensor {
    const out = this.alloc(shape);
    const rng = new Rng(seed);
    const keep = 1 / (1 - p);
    for (let i = 0; i < out.length; i++) out[i] = rng.next() < p ? 0 : keep;
    return this.make(out, shape);
  }

  private inv(D: number, theta: number): Float64Array {
    const key = `${D}:${theta}`;
    let v = this.invFreq.get(key);
    if (!v) this.invFreq.set(key, (v = ropeInvFreq(D, theta)));
    return v;
  }

  rope(x: Tensor, positions: Int32Array, heads: number, headDim: number, theta: number): Tensor {
    const out = this.alloc([...x.shape]);
    K.ropeApply(out, this.a(x), positions, heads, headDim, this.inv(headDim, theta), 1);
    return this.make(out, [...x.shape]);
  }

  ropeBackward(dy: Tensor, positions: Int32Array, heads: number, headDim: number, theta: number): Tensor {
    const out = this.alloc([...dy.shape]);
    K.ropeApply(out, this.a(dy), positions, heads, headDim, this.inv(headDim, theta), -1);
    return this.make(out, [...dy.shape]);
  }

  swiglu(gate: Tensor, up: Tensor): Tensor {
    const out = this.alloc([...gate.shape]);
    K.swigluForward(out, this.a(gate), this.a(up));
    return this.make(out, [...gate.shape]);
  }

  swigluBackward(dy: Tensor, gate: Tensor, up: Tensor): { dgate: Tensor; dup: Tensor } {
    const dg = this.alloc([...gate.shape]);
    const du = this.alloc([...gate.shape]);
    K.swigluBackward(dg, du, this.a(dy), this.a(gate), this.a(up));
    return { dgate: this.make(dg, [...gate.shape]), dup: this.make(du, [...gate.shape]) };
  }

  attentionForwardTrain(q: Tensor, k: Tensor, v: Tensor, B: number, T: number, p: TrainAttentionParams): { out: Tensor; lse: Tensor } {
    checkAttention(q, k, v, B, T, p);
    const out = this.alloc([...q.shape]);
    const lse = this.alloc([B * T, p.numHeads]);
    attentionForwardTrain(out, lse, this.a(q), this.a(k), this.a(v), B, T, p, this.backend.attentionHost);
    return { out: this.make(out, [...q.shape]), lse: this.make(lse, [B * T, p.numHeads]) };
  }

  attentionBackward(
    dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, B: number, T: number, p: TrainAttentionParams,
  ): { dq: Tensor; dk: Tensor; dv: Tensor; dMassLog: Tensor | null } {
    checkAttention(q, k, v, B, T, p);
    const dq = this.alloc([...q.shape]);
    const dk = this.alloc([...k.shape]);
    const dv = this.alloc([...v.shape]);
    const dm = p.kind !== 'dot' ? this.alloc([p.numHeads]) : null;
    attentionBackward(dq, dk, dv, dm, this.a(dout), this.a(q), this.a(k), this.a(v), this.a(out), this.a(lse), B, T, p, this.backend.attentionHost);
    return {
      dq: this.make(dq, [...q.shape]),
      dk: this.make(dk, [...k.shape]),
      dv: this.make(dv, [...v.shape]),
      dMassLog: dm ? this.make(dm, [p.numHeads]) : null,
    };
  }

  crossEntropy(logits: Tensor, targets: Int32Array, scale: number): { loss: Tensor; dlogits: Tensor } {
    const [N, V] = logits.shape;
    if (targets.length !== N) throw new Error(`crossEntropy: ${targets.length} targets for ${N} rows`);
    const loss = new Float64Array(N); // per-row losses stay f64 whatever the precision: the sum is the loss
    const dl = this.alloc([N, V]);
    K.crossEntropy(loss, dl, this.a(logits), targets, N, V, scale);
    return { loss: this.make(loss, [N]), dlogits: this.make(dl, [N, V]) };
  }
}

function checkAttention(q: Tensor, k: Tensor, v: Tensor, B: number, T: number, p: TrainAttentionParams): void {
  const { numHeads: Hq, numKVHeads: Hkv, headDim: D } = p;
  if (Hq % Hkv !== 0) throw new Error(`attention: ${Hq} query heads are not a multiple of ${Hkv} KV heads`);
  if (q.shape[0] !== B * T || q.shape[1] !== Hq * D) throw new Error(`attention: q is [${q.shape}], expected [${B * T}, ${Hq * D}]`);
  for (const [n, t] of [['k', k], ['v', v]] as const) {
    if (t.shape[0] !== B * T || t.shape[1] !== Hkv * D) throw new Error(`attention: ${n} is [${t.shape}], expected [${B * T}, ${Hkv * D}]`);
  }
  if (p.kind !== 'dot' && (!p.massLog || p.massLog.length !== Hq)) throw new Error(`attention: ${p.kind} needs ${Hq} mass_log values (one per query head)`);
}

export function createCpuTrainOps(be: CpuBackend, precision: 'f32' | 'f64' = 'f32'): CpuTrainOps {
  return new CpuTrainOps(be, precision);
}
