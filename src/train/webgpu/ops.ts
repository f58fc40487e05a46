/**
 * TrainOps on the WebGPU backend. Activations and gradients are f32 GpuTensors (pooled buffers); frozen weights
 * stay in their stored width (bf16/f16 packed in u32, read by the kernels as the inference ones do); trainable
 * tensors (LoRA factors, norms, full-training copies) come in as f32 through fromHost. Every op only records
 * dispatches; work is submitted when something is read back (losses, gradients) or every few dozen dispatches.
 *
 * Reused from the inference backend: the forward product x·Wᵀ (GEMV/GEMM of linear.ts), the embedding gather,
 * swiglu and the RoPE kernel (whose negative positions rotate backwards: that is ropeBackward). Dropout masks
 * are drawn on the host with the cpu ops' generator, so both backends make the same mask from a seed.
 */
import type { Tensor } from '../../backend/backend.js';
import type { TrainAttentionParams, TrainOps } from '../../backend/train-ops.js';
import { GravityError } from '../../errors.js';
import { Rng } from '../../generate/sampling.js';
import { numel } from '../../tensor/dtype.js';
import { GpuTensor } from '../../backend/webgpu/context.js';
import { gatherKernel, ropeKernel, swigluKernel } from '../../backend/webgpu/elementwise.js';
import { linearKernel } from '../../backend/webgpu/linear.js';
import { asWeightType } from '../../backend/webgpu/wgsl.js';
import type { WebGPUBackend } from '../../backend/webgpu/index.js';
import { gemm } from './gemm.js';
import {
  addScaledKernel, crossEntropyKernel, embeddingBackwardKernel, mulKernel, rmsnormBackwardKernel, rmsnormTrainKernel, swigluBackwardKernel,
} from './kernels.js';
import { attentionBackwardKernel, attentionForwardKernel } from './attention.js';

function shapeStr(s: readonly number[]): string {
  return `[${s.join(', ')}]`;
}

export class WebGPUTrainOps implements TrainOps {
  readonly precision = 'f32' as const;

  constructor(readonly backend: WebGPUBackend) {}

  private get ctx() {
    return this.backend.ctx;
  }

  private g(x: Tensor): GpuTensor {
    if (!(x instanceof GpuTensor)) throw new GravityError('webgpu train: tensor does not belong to the webgpu backend');
    return x;
  }

  /** an f32 activation's buffer */
  private a(x: Tensor, op: string): GPUBuffer {
    const t = this.g(x);
    if (t.dtype !== 'F32') throw new GravityError(`${op}: expected an f32 activation, got ${t.dtype} ${shapeStr(t.shape)}`);
    return t.buf;
  }

  private out(shape: number[]): GpuTensor {
    const bytes = numel(shape) * 4;
    return new GpuTensor(shape, 'F32', this.ctx.alloc(bytes, `activation ${shapeStr(shape)} f32`), bytes, true);
  }

  fromHost(data: Float32Array | Float64Array, shape: number[]): Tensor {
    if (data.length !== numel(shape)) throw new GravityError(`fromHost: ${data.length} values for shape ${shapeStr(shape)}`);
    const f = data instanceof Float32Array ? data : Float32Array.from(data);
    const bytes = f.length * 4;
    return new GpuTensor([...shape], 'F32', this.ctx.createFilled(f, `tensor ${shapeStr(shape)} f32`), bytes, false);
  }

  async read(t: Tensor): Promise<Float64Array> {
    return Float64Array.from(await this.backend.read(t));
  }

  dispose(t: Tensor): void {
    this.backend.dispose(t);
  }

  embedding(ids: Int32Array, table: Tensor): Tensor {
    const tb = this.g(table);
    const [V, C] = tb.shape;
    for (const id of ids) if (id < 0 || id >= V) throw new GravityError(`embedding: id ${id} outside [0, ${V})`);
    const y = this.out([ids.length, C]);
    gatherKernel(this.ctx, ids, tb.buf, asWeightType(tb.dtype, 'embedding table'), y.buf, C);
    return y;
  }

  embeddingBackward(ids: Int32Array, dy: Tensor, vocab: number): Tensor {
    const C = dy.shape[1];
    for (const id of ids) if (id < 0 || id >= vocab) throw new GravityError(`embeddingBackward: id ${id} outside [0, ${vocab})`);
    const y = this.out([vocab, C]);
    embeddingBackwardKernel(this.ctx, ids, this.a(dy, 'embeddingBackward'), y.buf, vocab, C);
    return y;
  }

  rmsnorm(x: Tensor, w: Tensor, eps: number): { y: Tensor; rstd: Tensor } {
    const [N, C] = x.shape;
    const wt = this.g(w);
    if (numel(wt.shape) !== C) throw new GravityError(`rmsnorm: weight ${shapeStr(wt.shape)} does not match x ${shapeStr(x.shape)}`);
    const y = this.out([N, C]);
    const rstd = this.out([N]);
    rmsnormTrainKernel(this.ctx, this.a(x, 'rmsnorm'), wt.buf, asWeightType(wt.dtype, 'rmsnorm weight'), y.buf, rstd.buf, N, C, eps);
    return { y, rstd };
  }

  rmsnormBackward(dy: Tensor, x: Tensor, w: Tensor, rstd: Tensor): { dx: Tensor; dw: Tensor } {
    const [N, C] = x.shape;
    const wt = this.g(w);
    const dx = this.out([N, C]);
    const dw = this.out([C]);
    rmsnormBackwardKernel(
      this.ctx, this.a(dy, 'rmsnormBackward'), this.a(x, 'rmsnormBackward'), wt.buf, asWeightType(wt.dtype, 'rmsnorm weight'),
      this.a(rstd, 'rmsnormBackward'), dx.buf, dw.buf, N, C,
    );
    return { dx, dw };
  }

  linear(x: Tensor, w: Tensor, b: Tensor | null): Tensor {
    const [N, IN] = x.shape;
    const wt = this.g(w);
    if (wt.shape.length !== 2 || wt.shape[1] !== IN) throw new GravityError(`linear: x ${shapeStr(x.shape)} does not match weight ${shapeStr(wt.shape)}`);
    const OUT = wt.shape[0];
    const bt = b ? this.g(b) : null;
    const y = this.out([N, OUT]);
    if (N === 0) return y;
    linearKernel(
      this.ctx, this.a(x, 'linear'), wt.buf, asWeightType(wt.dtype, 'linear weight'),
      bt ? bt.buf : null, bt ? asWeightType(bt.dtype, 'bias') : null, y.buf, N, IN, OUT,
    );
    return y;
  }

  linearBackwardInput(dy: Tensor, w: Tensor): Tensor {
    const N = dy.shape[0];
    const wt = this.g(w);
    const [OUT, IN] = wt.shape;
    if (dy.shape[1] !== OUT) throw new GravityError(`linearBackwardInput: dy ${shapeStr(dy.shape)} does not match weight ${shapeStr(wt.shape)}`);
    const dx = this.out([N, IN]);
    // dx [N, IN] = dy [N, OUT] · W [OUT, IN]
    gemm(this.ctx, this.a(dy, 'linearBackwardInput'), wt.buf, dx.buf, { M: N, N: IN, K: OUT, aT: false, bT: false, bdt: asWeightType(wt.dtype, 'linear weight') });
    return dx;
  }

  linearBackwardWeight(dy: Tensor, x: Tensor): Tensor {
    const [N, OUT] = dy.shape;
    const IN = x.shape[1];
    if (x.shape[0] !== N) throw new GravityError(`linearBackwardWeight: dy has ${N} rows, x has ${x.shape[0]}`);
    const dw = this.out([OUT, IN]);
    // dW [OUT, IN] = dyᵀ [OUT, N] · x [N, IN]: A = dy read transposed
    gemm(this.ctx, this.a(dy, 'linearBackwardWeight'), this.a(x, 'linearBackwardWeight'), dw.buf, { M: OUT, N: IN, K: N, aT: true, bT: false, bdt: 'F32' });
    return dw;
  }

  sliceRows(x: Tensor, start: number, count: number): Tensor {
    const C = x.shape[1];
    if (start < 0 || start + count > x.shape[0]) throw new GravityError(`sliceRows: rows [${start}, ${start + count}) of ${shapeStr(x.shape)}`);
    const y = this.out([count, C]);
    if (count > 0) this.ctx.copy(this.a(x, 'sliceRows'), start * C * 4, y.buf, 0, count * C * 4);
    return y;
  }

  concatRows(parts: Tensor[]): Tensor {
    const C = parts[0].shape[1];
    const N = parts.reduce((n, p) => n + p.shape[0], 0);
    const y = this.out([N, C]);
    let off = 0;
    for (const p of parts) {
      if (p.shape[1] !== C) throw new GravityError(`concatRows: ${shapeStr(p.shape)} does not have ${C} columns`);
      const bytes = p.shape[0] * C * 4;
      if (bytes > 0) this.ctx.copy(this.a(p, 'concatRows'), 0, y.buf, off, bytes);
      off += bytes;
    }
    return y;
  }

  private same(a: Tensor, b: Tensor, op: string): number {
    const n = numel(a.shape);
    if (numel(b.shape) !== n) throw new GravityError(`${op}: shapes ${shapeStr(a.shape)} and ${shapeStr(b.shape)} differ`);
    return n;
  }

  addScaled(a: Tensor, b: Tensor, alpha: number): Tensor {
    const n = this.same(a, b, 'addScaled');
    const y = this.out([...a.shape]);
    addScaledKernel(this.ctx, this.a(a, 'addScaled'), this.a(b, 'addScaled'), y.buf, n, alpha);
    return y;
  }

  mul(a: Tensor, b: Tensor): Tensor {
    const n = this.same(a, b, 'mul');
    const y = this.out([...a.shape]);
    mulKernel(this.ctx, this.a(a, 'mul'), this.a(b, 'mul'), y.buf, n);
    return y;
  }

  dropoutMask(shape: number[], p: number, seed: number): Tensor {
    const out = new Float32Array(numel(shape));
    const rng = new Rng(seed);
    const keep = 1 / (1 - p);
    for (let i = 0; i < out.length; i++) out[i] = rng.next() < p ? 0 : keep;
    return this.fromHost(out, shape);
  }

  private ropeApply(x: Tensor, positions: Int32Array, heads: number, headDim: number, theta: number, sign: 1 | -1): Tensor {
    const [N, HD] = x.shape;
    if (HD !== heads * headDim || positions.length !== N || headDim % 2 !== 0) {
      throw new GravityError(`rope: x ${shapeStr(x.shape)} with ${positions.length} positions, ${heads} heads of ${headDim}`);
    }
    let maxPos = 0;
    for (const p of positions) maxPos = Math.max(maxPos, Math.abs(p));
    const table = this.backend.ropeTable(headDim, theta, maxPos);
    const y = this.out([N, HD]);
    // the kernel rotates a negative position by the negative angle: the transpose of the rotation
    const pos = sign === 1 ? positions : positions.map((p) => -p);
    ropeKernel(this.ctx, this.a(x, 'rope'), y.buf, pos, table, heads, headDim);
    return y;
  }

  rope(x: Tensor, positions: Int32Array, heads: number, headDim: number, theta: number): Tensor {
    return this.ropeApply(x, positions, heads, headDim, theta, 1);
  }

  ropeBackward(dy: Tensor, positions: Int32Array, heads: number, headDim: number, theta: number): Tensor {
    return this.ropeApply(dy, positions, heads, headDim, theta, -1);
  }

  swiglu(gate: Tensor, up: Tensor): Tensor {
    const n = this.same(gate, up, 'swiglu');
    const y = this.out([...gate.shape]);
    swigluKernel(this.ctx, this.a(gate, 'swiglu'), this.a(up, 'swiglu'), y.buf, n);
    return y;
  }

  swigluBackward(dy: Tensor, gate: Tensor, up: Tensor): { dgate: Tensor; dup: Tensor } {
    const n = this.same(gate, up, 'swigluBackward');
    this.same(dy, gate, 'swigluBackward');
    const dgate = this.out([...gate.shape]);
    const dup = this.out([...gate.shape]);
    swigluBackwardKernel(this.ctx, this.a(dy, 'swigluBackward'), this.a(gate, 'swigluBackward'), this.a(up, 'swigluBackward'), dgate.buf, dup.buf, n);
    return { dgate, dup };
  }

  attentionForwardTrain(q: Tensor, k: Tensor, v: Tensor, B: number, T: number, p: TrainAttentionParams): { out: Tensor; lse: Tensor } {
    checkAttention(q, k, v, B, T, p);
    const out = this.out([...q.shape]);
    const lse = this.out([B * T, p.numHeads]);
    if (B * T > 0) attentionForwardKernel(this.ctx, this.a(q, 'attention'), this.a(k, 'attention'), this.a(v, 'attention'), out.buf, lse.buf, B, T, p);
    return { out, lse };
  }

  attentionBackward(
    dout: Tensor, q: Tensor, k: Tensor, v: Tensor, out: Tensor, lse: Tensor, B: number, T: number, p: TrainAttentionParams,
  ): { dq: Tensor; dk: Tensor; dv: Tensor; dMassLog: Tensor | null } {
    checkAttention(q, k, v, B, T, p);
    const dq = this.out([...q.shape]);
    const dk = this.out([...k.shape]);
    const dv = this.out([...v.shape]);
    const dm = p.kind !== 'dot' ? this.out([p.numHeads]) : null;
    const f = (t: Tensor) => this.a(t, 'attentionBackward');
    attentionBackwardKernel(this.ctx, f(dout), f(q), f(k), f(v), f(out), f(lse), dq.buf, dk.buf, dv.buf, dm ? dm.buf : null, B, T, p);
    return { dq, dk, dv, dMassLog: dm };
  }

  crossEntropy(logits: Tensor, targets: Int32Array, scale: number): { loss: Tensor; dlogits: Tensor } {
    const [N, V] = logits.shape;
    if (targets.length !== N) throw new GravityError(`crossEntropy: ${targets.length} targets for ${N} rows`);
    for (const t of targets) if (t !== -100 && (t < 0 || t >= V)) throw new GravityError(`crossEntropy: target ${t} outside [0, ${V})`);
    const loss = this.out([N]);
    const dlogits = this.out([N, V]);
    if (N > 0) crossEntropyKernel(this.ctx, this.a(logits, 'crossEntropy'), targets, loss.buf, dlogits.buf, N, V, scale);
    return { loss, dlogits };
  }

  /** Nothing of its own to free: the rope tables are the backend's, and the backend belongs to the caller. */
  destroy(): void {}
}

function checkAttention(q: Tensor, k: Tensor, v: Tensor, B: number, T: number, p: TrainAttentionParams): void {
  const { numHeads: Hq, numKVHeads: Hkv, headDim: D } = p;
  if (Hq % Hkv !== 0) throw new GravityError(`attention: ${Hq} query heads are not a multiple of ${Hkv} KV heads`);
  if (q.shape[0] !== B * T || q.shape[1] !== Hq * D) throw new GravityError(`attention: q is ${shapeStr(q.shape)}, expected [${B * T}, ${Hq * D}]`);
  for (const [n, t] of [['k', k], ['v', v]] as const) {
    if (t.shape[0] !== B * T || t.shape[1] !== Hkv * D) throw new GravityError(`attention: ${n} is ${shapeStr(t.shape)}, expected [${B * T}, ${Hkv * D}]`);
  }
  if (p.kind !== 'dot' && (!p.massLog || p.massLog.length !== Hq)) throw new GravityError(`attention: ${p.kind} needs ${Hq} mass_log values (one per query head)`);
}

export function createWebGPUTrainOps(backend: WebGPUBackend): WebGPUTrainOps {
  return new WebGPUTrainOps(backend);
}
