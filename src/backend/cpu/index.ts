/**
 * The cpu backend: tensors are typed arrays on the host; matrix products go to the MatmulEngine
 * (WASM SIMD + worker threads, ./matmul.ts); attention runs in the same engine's WASM kernels over a KV cache kept
 * in its shared memory (./attention-wasm.ts), or in the plain loops of ./attention.ts with the 'js' engine or
 * attention: 'js'; everything else is plain loops in ./ops.ts.
 */
import type { AttentionParams, Backend, KVCache, Tensor } from '../backend.js';
import { numel, toF32, type DType, type HostTensor } from '../../tensor/dtype.js';
import { embeddingForward, rmsnormForward, ropeForward, ropeInvFreq, swigluForward } from './ops.js';
import { attentionForward, attentionProbs, type CpuKVLayer } from './attention.js';
import { createMatmulEngine, kernelHost, type KernelHost, type MatmulEngine, type PreparedWeight } from './matmul.js';
import { allocKVLayer, attentionForwardWasm, wasmAttentionFits } from './attention-wasm.js';

export class CpuTensor implements Tensor {
  prepared: PreparedWeight | null = null;
  constructor(
    readonly shape: number[],
    readonly dtype: DType,
    /** F32 activations, or a weight in its stored width; null once a linear-only weight moved into the engine */
    public host: HostTensor | null,
  ) {}
  get f32(): Float32Array {
    if (!this.host || this.host.dtype !== 'F32') throw new Error('cpu: expected an f32 tensor');
    return this.host.data as Float32Array;
  }
}

// a cache's blocks in the kernel arenas go back to the engine once the cache is unreachable
const kvBlocks = new FinalizationRegistry<{ host: KernelHost; blocks: { arena: number; off: number }[] }>((r) => {
  for (const b of r.blocks) r.host.freeShared(b.arena, b.off);
});

class CpuKVCache implements KVCache {
  length = 0;
  readonly keyValid: Uint8Array;
  readonly layers: CpuKVLayer[] = [];
  /** host: the WASM engine when attention runs in its kernels; k / v then live in its arenas (no copies per call) */
  constructor(readonly numLayers: number, readonly batch: number, readonly maxLen: number, readonly numKVHeads: number, readonly headDim: number, host: KernelHost | null) {
    this.keyValid = new Uint8Array(batch * maxLen);
    const n = batch * numKVHeads * maxLen;
    for (let l = 0; l < numLayers; l++) {
      if (host) this.layers.push(allocKVLayer(host, batch, numKVHeads, maxLen, headDim));
      else this.layers.push({ k: new Float32Array(n * headDim), v: new Float32Array(n * headDim), kn: new Float64Array(n) });
    }
    if (host) {
      this.release = { host, blocks: this.layers.map((l) => l.wasm!) };
      kvBlocks.register(this, this.release, this);
    }
  }
  private release: { host: KernelHost; blocks: { arena: number; off: number }[] } | null = null;
  destroy(): void {
    if (!this.release) return;
    kvBlocks.unregister(this);
    for (const b of this.release.blocks) this.release.host.freeShared(b.arena, b.off);
    this.release = null;
    this.layers.length = 0;
  }
}

function act(data: Float32Array, shape: number[]): CpuTensor {
  return new CpuTensor(shape, 'F32', { dtype: 'F32', shape, data });
}

function t(x: Tensor): CpuTensor {
  return x as CpuTensor;
}

export interface CpuBackendOptions {
  threads?: number;
  /** 'js' forces the plain JavaScript matmul (for tests and comparisons); it also means JS attention */
  matmul?: 'wasm' | 'js';
  /** 'js' forces the plain JavaScript attention with the WASM matmul (for tests and comparisons) */
  attention?: 'wasm' | 'js';
}

export class CpuBackend implements Backend {
  readonly name = 'cpu' as const;
  readonly engine: MatmulEngine;
  private invFreqCache = new Map<string, Float64Array>();

  /** the engine's kernel memory and threads when attention runs in WASM, else null (plain JS attention) */
  readonly attentionHost: KernelHost | null;

  constructor(opts: CpuBackendOptions = {}) {
    this.engine = createMatmulEngine({ threads: opts.threads, prefer: opts.matmul });
    this.attentionHost = opts.attention === 'js' ? null : kernelHost(this.engine);
  }

  upload(h: HostTensor, hint: 'linear' | 'other' = 'other'): Tensor {
    const host = h.dtype === 'F32' || h.dtype === 'F16' || h.dtype === 'BF16' ? h : { dtype: 'F32' as const, shape: h.shape, data: toF32(h) };
    const ct = new CpuTensor([...h.shape], host.dtype, host);
    if (hint === 'linear' && h.shape.length === 2) {
      ct.prepared = this.engine.prepare(host);
      ct.host = null; // the engine holds the only copy: a 3B model must not be in memory twice
    }
    return ct;
  }

  uploadQ8(blocks: Uint8Array, shape: [number, number]): Tensor {
    const ct = new CpuTensor([...shape], 'BF16', null);
    ct.prepared = this.engine.prepareQ8(blocks, shape[0], shape[1]);
    return ct;
  }

  fromF32(data: Float32Array, shape: number[]): Tensor {
    if (data.length !== numel(shape)) throw new Error(`fromF32: ${data.length} values for shape [${shape}]`);
    return act(data, shape);
  }

  async read(x: Tensor): Promise<Float32Array> {
    return t(x).f32;
  }

  dispose(x: Tensor | KVCache): void {
    if (x instanceof CpuKVCache) return x.destroy();
    const ct = t(x as Tensor);
    if (ct.prepared) this.engine.release(ct.prepared);
    ct.prepared = null;
    ct.host = null;
  }

  embedding(ids: Int32Array, table: Tensor): Tensor {
    const tb = t(table);
    const [V, C] = tb.shape;
    if (!tb.host) throw new Error('cpu: embedding table was uploaded as linear-only');
    for (const id of ids) if (id < 0 || id >= V) throw new Error(`embedding: id ${id} outside [0, ${V})`);
    const out = new Float32Array(ids.length * C); // [N, C]
    embeddingForward(out, ids, tb.host, C);
    return act(out, [ids.length, C]);
  }

  rmsnorm(x: Tensor, w: Tensor, eps: number): Tensor {
    const [N, C] = x.shape;
    const out = new Float32Array(N * C);
    rmsnormForward(out, t(x).f32, this.f32Of(w), N, C, eps);
    return act(out, [N, C]);
  }

  linear(x: Tensor, w: Tensor, b: Tensor | null): Tensor {
    const [N, IN] = x.shape;
    const wt = t(w);
    const [OUT, WIN] = wt.shape;
    if (WIN !== IN) throw new Error(`linear: x has ${IN} columns, weight expects ${WIN}`);
    if (!wt.prepared) wt.prepared = this.engine.prepare(wt.host!);
    const out = this.engine.linear(t(x).f32, N, wt.prepared, b ? this.f32Of(b) : null); // [N, OUT]
    return act(out, [N, OUT]);
  }

  gatherRows(x: Tensor, rows: Int32Array): Tensor {
    const [, C] = x.shape;
    const src = t(x).f32;
    const out = new Float32Array(rows.length * C);
    for (let i = 0; i < rows.length; i++) out.set(src.subarray(rows[i] * C, rows[i] * C + C), i * C);
    return act(out, [rows.length, C]);
  }

  add(a: Tensor, b: Tensor): Tensor {
    const x = t(a).f32;
    const y = t(b).f32;
    const out = new Float32Array(x.length);
    for (let i = 0; i < x.length; i++) out[i] = x[i] + y[i];
    return act(out, [...a.shape]);
  }

  swiglu(gate: Tensor, up: Tensor): Tensor {
    const out = new Float32Array(numel(gate.shape));
    swigluForward(out, t(gate).f32, t(up).f32);
    return act(out, [...gate.shape]);
  }

  rope(x: Tensor, positions: Int32Array, heads: number, headDim: number, theta: number): Tensor {
    const key = `${headDim}:${theta}`;
    let inv = this.invFreqCache.get(key);
    if (!inv) this.invFreqCache.set(key, (inv = ropeInvFreq(headDim, theta)));
    const out = new Float32Array(numel(x.shape));
    ropeForward(out, t(x).f32, positions, heads, headDim, inv);
    return act(out, [...x.shape]);
  }

  createKVCache(numLayers: number, batch: number, maxLen: number, numKVHeads: number, headDim: number): KVCache {
    const host = this.attentionHost && wasmAttentionFits(headDim) ? this.attentionHost : null;
    return new CpuKVCache(numLayers, batch, maxLen, numKVHeads, headDim, host);
  }

  writeKV(cache: KVCache, layer: number, k: Tensor, v: Tensor, start: number, T: number): void {
    const c = cache as CpuKVCache;
    const L = c.layers[layer];
    const { batch: B, numKVHeads: H, headDim: D, maxLen } = c;
    if (start + T > maxLen) throw new Error(`KV cache full: ${start + T} > ${maxLen} slots`);
    const ks = t(k).f32; // [B*T, H*D]
    const vs = t(v).f32;
    for (let b = 0; b < B; b++) for (let tt = 0; tt < T; tt++) for (let h = 0; h < H; h++) {
      const src = ((b * T + tt) * H + h) * D;
      const slot = (b * H + h) * maxLen + start + tt;
      L.k.set(ks.subarray(src, src + D), slot * D);
      L.v.set(vs.subarray(src, src + D), slot * D);
      let n = 0;
      for (let d = 0; d < D; d++) n += ks[src + d] * ks[src + d];
      L.kn[slot] = n;
    }
  }

  attention(q: Tensor, cache: KVCache, layer: number, start: number, T: number, p: AttentionParams): Tensor {
    const c = cache as CpuKVCache;
    const out = new Float32Array(numel(q.shape)); // [B*T, Hq*D]
    const L = c.layers[layer];
    if (L.wasm && this.attentionHost) attentionForwardWasm(this.attentionHost, out, t(q).f32, L, c.keyValid, c.batch, T, start, c.maxLen, p);
    else attentionForward(out, t(q).f32, L, c.keyValid, c.batch, T, start, c.maxLen, p);
    return act(out, [...q.shape]);
  }

  async attentionProbs(q: Tensor, cache: KVCache, layer: number, start: number, T: number, p: AttentionParams): Promise<Float32Array> {
    const c = cache as CpuKVCache;
    return attentionProbs(t(q).f32, c.layers[layer], c.keyValid, c.batch, T, start, c.maxLen, p);
  }

  async sync(): Promise<void> {}

  /** small vectors (norm weights, biases) as f32, widened once and kept */
  private f32Of(x: Tensor): Float32Array {
    const ct = t(x);
    if (!ct.host) throw new Error('cpu: tensor was released');
    if (ct.host.dtype !== 'F32') ct.host = { dtype: 'F32', shape: ct.host.shape, data: toF32(ct.host) };
    return ct.host.data as Float32Array;
  }
}

export function createCpuBackend(opts: CpuBackendOptions = {}): CpuBackend {
  return new CpuBackend(opts);
}
