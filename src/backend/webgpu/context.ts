/**
 * The command stream of the WebGPU backend: kernels cached by key (explicit layouts, bind groups cached by the
 * buffers they bind, parameters at dynamic offsets), buffers pooled by size, dispatches
 * recorded into one open compute pass and submitted lazily (at a read, a sync, or every FLUSH_EVERY
 * dispatches), and small per-dispatch data (kernel parameters, token ids, positions) packed into one
 * "arena" buffer that is written once per submit.
 *
 * Why an arena: queue.writeBuffer runs before the not-yet-submitted commands recorded earlier, so writing
 * a pooled buffer that an earlier, still unsubmitted dispatch reads would change what that dispatch sees.
 * The arena is written right before the submit that uses it and never reused within one submit.
 */
import { GravityError } from '../../errors.js';
import type { DType } from '../../tensor/dtype.js';
import type { Tensor } from '../backend.js';
import { Profiler, type KernelTime } from './profile.js';

/** GPUBufferUsage / GPUMapMode values (spec constants), so no global has to exist */
export const USAGE = { MAP_READ: 1, COPY_SRC: 4, COPY_DST: 8, UNIFORM: 64, STORAGE: 128 } as const;
const MAP_READ_MODE = 1;

const ARENA_BYTES = 1 << 20;
const SLOT = 256; // min{Uniform,Storage}BufferOffsetAlignment on every adapter we know
/**
 * Dispatches per submit while recording (GRAVITY_WEBGPU_FLUSH_EVERY to experiment), so that an idle GPU starts on a
 * long forward early. While a read is in flight the GPU still has earlier work queued (greedy decoding records the
 * next token during the last one's readback): then only every FLUSH_BUSY dispatches, as each submit costs the host
 * a new encoder and pass (~0.1 ms per submit in Dawn's node binding; on the H200, submitting every 4096 cut the
 * recording of a 3B token from 2.3–4.4 to 1.7–2.8 ms; here, with a read in flight, 1024 instead of 64 took a
 * 36-layer token's recording from 2.0–3.2 to 1.7–2.3 ms).
 */
const FLUSH_EVERY = Number((typeof process !== 'undefined' && process.env?.GRAVITY_WEBGPU_FLUSH_EVERY) || 64);
const FLUSH_BUSY = 1024;
/** bind groups are cached by the buffers they bind; the cache is simply dropped when it grows past this */
const MAX_BIND_GROUPS = 8192;
/** free buffers kept for reuse, at most; past it released buffers are destroyed (prefills of many lengths) */
const POOL_MAX_BYTES = 2 ** 31;

export class GpuTensor implements Tensor {
  constructor(
    readonly shape: readonly number[],
    readonly dtype: DType,
    public buffer: GPUBuffer | null,
    /** bytes of data (the buffer may be larger) */
    readonly bytes: number,
    /** pooled buffers go back to the pool on dispose; weights are destroyed */
    readonly pooled: boolean,
  ) {}
  get buf(): GPUBuffer {
    if (!this.buffer) throw new GravityError(`WebGPU: tensor [${this.shape}] was already disposed`);
    return this.buffer;
  }
}

/** A kernel: WGSL source plus, after its first dispatch, its pipeline and explicit bind group layout. */
export interface Kernel {
  readonly key: string;
  readonly code: string;
  readonly id: number;
  pipeline: GPUComputePipeline | null;
  layout?: GPUBindGroupLayout;
  /** bit i set: binding i + 1 is arena data (it gets a dynamic offset); fixed at the first dispatch */
  dataMask: number;
}

function dataMask(bindings: Binding[]): number {
  let m = 0;
  for (let i = 0; i < bindings.length; i++) if ('data' in bindings[i]) m |= 1 << i;
  return m;
}

export type Binding = GPUBuffer | GPUBufferBinding | { data: ArrayBufferView };

export function roundUp(n: number, m: number): number {
  return Math.ceil(n / m) * m;
}

function mb(n: number): string {
  return `${(n / 2 ** 20).toFixed(1)} MiB`;
}

/** A little-endian parameter block: u32 and f32 fields in declaration order. */
export class Params {
  private words: number[] = [];
  private kinds: ('u' | 'i' | 'f')[] = [];
  u(...v: number[]): this {
    for (const x of v) this.words.push(x), this.kinds.push('u');
    return this;
  }
  i(...v: number[]): this {
    for (const x of v) this.words.push(x), this.kinds.push('i');
    return this;
  }
  f(...v: number[]): this {
    for (const x of v) this.words.push(x), this.kinds.push('f');
    return this;
  }
  writeTo(view: DataView, offset: number): number {
    for (let k = 0; k < this.words.length; k++) {
      const o = offset + 4 * k;
      if (this.kinds[k] === 'f') view.setFloat32(o, this.words[k], true);
      else if (this.kinds[k] === 'i') view.setInt32(o, this.words[k], true);
      else view.setUint32(o, this.words[k] >>> 0, true);
    }
    return this.words.length * 4;
  }
}

export class GpuContext {
  readonly maxBinding: number;
  readonly maxBuffer: number;
  readonly maxWorkgroupMem: number;
  readonly maxGroups: number;
  readonly maxStorageBuffers: number;
  readonly maxInvocations: number;
  private kernels = new Map<string, Kernel>();
  /** bind groups by the hash of their signature (see dispatch), with the signature to tell collisions apart */
  private bindGroups = new Map<number, { sig: Int32Array; bg: GPUBindGroup }[]>();
  private bindGroupCount = 0;
  private sig = new Int32Array(256);
  /** setBindGroup's dynamic offsets, one reused array per binding count (Dawn copies them at the call) */
  private offsetArrays: number[][] = [];
  private bufIds = new WeakMap<GPUBuffer, number>();
  private nextBufId = 0;
  private pool = new Map<number, GPUBuffer[]>();
  private staging = new Map<number, GPUBuffer[]>();
  private poolBytes = 0;
  private encoder: GPUCommandEncoder | null = null;
  private pass: GPUComputePassEncoder | null = null;
  private pending = 0;
  /** readBuffer calls whose data has not come back yet */
  private readsInFlight = 0;
  private arena: GPUBuffer;
  private arenaHost = new ArrayBuffer(ARENA_BYTES);
  private arenaView = new DataView(this.arenaHost);
  private arenaUsed = 0;
  /** buffers to destroy once the submit that last uses them is queued */
  private retired: GPUBuffer[] = [];
  private lostError: Error | null = null;
  private waiters = new Set<(e: Error) => void>();
  private errors: string[] = [];
  private destroyed = false;

  /** per-kernel timestamps, when the device was created with timestamp-query and profiling was asked for */
  private profiler: Profiler | null = null;

  /**
   * @param sg lanes the GEMV reductions may combine with subgroup shuffles (the `subgroups` feature is enabled and
   *   every subgroup has at least this many invocations); 0 = workgroup-memory reductions only
   */
  /** 'pass': timestamps around each compute pass (a pass holds up to FLUSH_EVERY dispatches) instead of each dispatch */
  private profilePasses = false;
  /**
   * decode attention (attention-decode.ts): at most shortKeys keys take the one-dispatch kernel (0 = never), with
   * vsplit workgroups per query head; before the o projection (attentionOut) up to partKeys keys take it in `parts`
   * key splits of at least partMinKeys keys, merged by the o GEMV (staged in workgroup memory where it fits, unless
   * stage is false)
   */
  decodeTuning = { shortKeys: 0, vsplit: 1, parts: 0, partKeys: 0, partMinKeys: 1, stage: true };

  constructor(readonly device: GPUDevice, profile: boolean | 'pass' = false, readonly sg = 0) {
    if (profile) this.profiler = new Profiler(device, FLUSH_EVERY);
    this.profilePasses = profile === 'pass';
    const l = device.limits;
    this.maxBinding = l.maxStorageBufferBindingSize;
    this.maxBuffer = l.maxBufferSize;
    this.maxWorkgroupMem = l.maxComputeWorkgroupStorageSize;
    this.maxGroups = l.maxComputeWorkgroupsPerDimension;
    this.maxStorageBuffers = l.maxStorageBuffersPerShaderStage;
    this.maxInvocations = Math.min(l.maxComputeInvocationsPerWorkgroup, l.maxComputeWorkgroupSizeX);
    this.arena = device.createBuffer({ size: ARENA_BYTES, usage: USAGE.UNIFORM | USAGE.STORAGE | USAGE.COPY_DST });
    device.lost.then((info) => {
      if (this.destroyed) return;
      const err = new GravityError(`WebGPU: device lost (${info.reason}${info.message ? ': ' + info.message : ''})`);
      this.lostError = err;
      for (const w of this.waiters) w(err);
      this.waiters.clear();
    });
    // shader/validation errors would otherwise only show up as silently wrong numbers
    device.addEventListener('uncapturederror', (ev) => {
      const msg = (ev as GPUUncapturedErrorEvent).error.message;
      if (this.errors.length < 8) this.errors.push(msg.split('\n').slice(0, 6).join(' | '));
    });
  }

  check(): void {
    if (this.lostError) throw this.lostError;
    if (this.destroyed) throw new GravityError('WebGPU: backend was destroyed');
  }

  /** Throws the first GPU validation error seen since the last call. */
  takeErrors(): void {
    if (this.errors.length) {
      const e = this.errors.join(' ;; ');
      this.errors = [];
      throw new GravityError(`WebGPU: ${e}`);
    }
  }

  /** Refuses a buffer the device cannot bind, naming the tensor. */
  checkSize(bytes: number, what: string): void {
    if (bytes > this.maxBinding || bytes > this.maxBuffer) {
      const lim = Math.min(this.maxBinding, this.maxBuffer);
      const name = bytes > this.maxBinding ? 'maxStorageBufferBindingSize' : 'maxBufferSize';
      throw new GravityError(`WebGPU: ${what} is ${mb(bytes)}, more than this device's ${name} (${mb(lim)}); use --device cpu`);
    }
  }

  /** The kernel for `key`; its WGSL is generated once, the GPU pipeline at its first dispatch. */
  pipeline(key: string, code: () => string): Kernel {
    let k = this.kernels.get(key);
    if (!k) {
      k = { key, code: code(), id: this.kernels.size, pipeline: null, dataMask: -1 };
      this.kernels.set(key, k);
    }
    return k;
  }

  /**
   * Explicit layout read off the WGSL declarations: the parameter block and the arena data bindings get dynamic
   * offsets, so that a bind group depends only on which buffers are bound and can be cached across tokens.
   */
  private build(k: Kernel, bindings: Binding[]): GPUComputePipeline {
    const types = new Map<number, GPUBufferBindingType>();
    for (const m of k.code.matchAll(/@binding\((\d+)\)\s*var<\s*(uniform|storage\s*,\s*read_write|storage\s*,\s*read|storage)\s*>/g)) {
      types.set(Number(m[1]), m[2] === 'uniform' ? 'uniform' : m[2].includes('read_write') ? 'storage' : 'read-only-storage');
    }
    const entries: GPUBindGroupLayoutEntry[] = [];
    for (let i = 0; i <= bindings.length; i++) {
      const type = types.get(i);
      if (!type) throw new Error(`webgpu: kernel ${k.key} declares no binding ${i}`);
      const dynamic = i === 0 || 'data' in bindings[i - 1];
      entries.push({ binding: i, visibility: 4 /* COMPUTE */, buffer: { type, hasDynamicOffset: dynamic } });
    }
    const bgl = this.device.createBindGroupLayout({ entries, label: k.key });
    const module = this.device.createShaderModule({ code: k.code, label: k.key });
    k.layout = bgl;
    k.dataMask = dataMask(bindings);
    k.pipeline = this.device.createComputePipeline({
      layout: this.device.createPipelineLayout({ bindGroupLayouts: [bgl] }),
      compute: { module, entryPoint: 'main' },
      label: k.key,
    });
    return k.pipeline;
  }

  private bufId(b: GPUBuffer): number {
    let id = this.bufIds.get(b);
    if (id === undefined) this.bufIds.set(b, (id = this.nextBufId++));
    return id;
  }

  /** A pooled storage buffer of at least `bytes` (rounded to 256 so that decode sizes hit the same bucket). */
  alloc(bytes: number, what = 'activation'): GPUBuffer {
    this.check();
    const size = roundUp(Math.max(bytes, 4), SLOT);
    this.checkSize(size, what);
    const list = this.pool.get(size);
    if (list && list.length) {
      this.poolBytes -= size;
      return list.pop()!;
    }
    return this.device.createBuffer({ size, usage: USAGE.STORAGE | USAGE.COPY_SRC | USAGE.COPY_DST });
  }

  release(buf: GPUBuffer): void {
    if (this.poolBytes + buf.size > POOL_MAX_BYTES) return this.retire(buf);
    this.poolBytes += buf.size;
    const list = this.pool.get(buf.size);
    if (list) list.push(buf);
    else this.pool.set(buf.size, [buf]);
  }

  /** A fresh buffer holding `data`; fresh, so no pending dispatch can be reading it. */
  createFilled(data: ArrayBufferView, what: string): GPUBuffer {
    this.check();
    const size = roundUp(Math.max(data.byteLength, 4), 16);
    this.checkSize(size, what);
    const buf = this.device.createBuffer({ size, usage: USAGE.STORAGE | USAGE.COPY_SRC | USAGE.COPY_DST, mappedAtCreation: true });
    new Uint8Array(buf.getMappedRange()).set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
    buf.unmap();
    return buf;
  }

  /** Destroys `buf` after everything recorded so far has been submitted. */
  retire(buf: GPUBuffer): void {
    this.retired.push(buf);
  }

  private reserve(bytes: number): number {
    const off = this.arenaUsed;
    this.arenaUsed += roundUp(bytes, SLOT);
    return off;
  }

  /**
   * Records one dispatch. Binding 0 is the parameter block, `bindings` are 1..n in order; `{ data }` entries
   * (token ids, positions, masses) go into the arena next to the parameters, so they are written by the same
   * submit as the dispatch that reads them.
   */
  dispatch(k: Kernel, params: Params, bindings: Binding[], groups: [number, number?, number?]): void {
    this.check();
    const pipeline = k.pipeline ?? this.build(k, bindings);
    let need = SLOT;
    let mask = 0;
    for (let i = 0; i < bindings.length; i++) {
      const b = bindings[i];
      if (!('data' in b)) continue;
      mask |= 1 << i;
      if (b.data.byteLength <= ARENA_BYTES / 4) need += roundUp(Math.max(b.data.byteLength, 4), SLOT);
    }
    if (mask !== k.dataMask) throw new Error(`webgpu: kernel ${k.key} dispatched with another binding pattern`);
    if (this.arenaUsed + need > ARENA_BYTES) this.flush();
    const off = this.reserve(64);
    params.writeTo(this.arenaView, off);
    // the bind group's signature (kernel, then buffer id, offset, size per binding) in a scratch array, hashed: the
    // cache lookup of a decode dispatch allocates nothing (a string key cost ~1 KB of garbage per dispatch)
    const nb = bindings.length;
    const offsets = this.offsetArrays[nb] ?? (this.offsetArrays[nb] = []);
    offsets.length = 0;
    offsets.push(off);
    const sig = this.sig;
    let n = 0;
    sig[n++] = k.id;
    let dataBufs: GPUBuffer[] | null = null; // uploads too large for the arena, in binding order
    for (let i = 0; i < nb; i++) {
      const b = bindings[i];
      if ('data' in b) {
        const data = b.data;
        const bytes = roundUp(Math.max(data.byteLength, 4), 4);
        let buf = this.arena;
        if (data.byteLength > ARENA_BYTES / 4) {
          buf = this.createFilled(data, 'upload');
          this.retire(buf);
          (dataBufs ??= []).push(buf);
          offsets.push(0);
        } else {
          const o = this.reserve(bytes);
          new Uint8Array(this.arenaHost, o, data.byteLength).set(new Uint8Array(data.buffer, data.byteOffset, data.byteLength));
          offsets.push(o);
        }
        sig[n++] = this.bufId(buf);
        sig[n++] = -1;
        sig[n++] = bytes;
      } else if ('buffer' in b) {
        sig[n++] = this.bufId(b.buffer);
        sig[n++] = b.offset ?? 0;
        sig[n++] = b.size ?? -2;
      } else {
        sig[n++] = this.bufId(b);
        sig[n++] = 0;
        sig[n++] = -2;
      }
    }
    let h = 0x811c9dc5;
    for (let i = 0; i < n; i++) h = Math.imul(h ^ sig[i], 0x01000193);
    let bucket = this.bindGroups.get(h);
    let bg: GPUBindGroup | null = null;
    if (bucket) {
      for (const e of bucket) {
        if (e.sig.length !== n) continue;
        let same = true;
        for (let i = 0; i < n && same; i++) same = e.sig[i] === sig[i];
        if (same) {
          bg = e.bg;
          break;
        }
      }
    }
    if (!bg) {
      const entries: GPUBindGroupEntry[] = [{ binding: 0, resource: { buffer: this.arena, offset: 0, size: 64 } }];
      let d = 0;
      for (let i = 0; i < nb; i++) {
        const b = bindings[i];
        let r: GPUBufferBinding;
        if ('data' in b) {
          const bytes = roundUp(Math.max(b.data.byteLength, 4), 4);
          r = { buffer: b.data.byteLength > ARENA_BYTES / 4 ? dataBufs![d++] : this.arena, offset: 0, size: bytes };
        } else r = 'buffer' in b ? b : { buffer: b };
        entries.push({ binding: i + 1, resource: r });
      }
      bg = this.device.createBindGroup({ layout: k.layout!, entries });
      if (this.bindGroupCount >= MAX_BIND_GROUPS) {
        this.bindGroups.clear();
        this.bindGroupCount = 0;
      }
      if (!bucket) this.bindGroups.set(h, (bucket = []));
      bucket.push({ sig: sig.slice(0, n), bg });
      this.bindGroupCount++;
    }
    const tw = this.profilePasses ? null : (this.profiler?.next(k.key) ?? null);
    let pass: GPUComputePassEncoder;
    if (tw) {
      // a pass of its own, so that its begin/end timestamps bracket exactly this dispatch
      this.openEncoder();
      pass = this.pass = this.encoder!.beginComputePass({ timestampWrites: tw });
    } else pass = this.openPass();
    pass.setPipeline(pipeline);
    pass.setBindGroup(0, bg, offsets);
    pass.dispatchWorkgroups(groups[0], groups[1] ?? 1, groups[2] ?? 1);
    if (++this.pending >= (this.readsInFlight > 0 ? FLUSH_BUSY : FLUSH_EVERY)) this.flush();
  }

  /** 2-D grid for `n` workgroups (a dimension is limited to maxComputeWorkgroupsPerDimension). */
  grid(n: number): [number, number] {
    if (n <= this.maxGroups) return [n, 1]; // 0 workgroups is a valid, empty dispatch
    const y = Math.ceil(n / this.maxGroups);
    return [Math.ceil(n / y), y];
  }

  private openPass(): GPUComputePassEncoder {
    if (!this.encoder) this.encoder = this.device.createCommandEncoder();
    if (!this.pass) {
      const tw = this.profilePasses ? this.profiler!.next('compute pass (whole)') : null;
      this.pass = this.encoder.beginComputePass(tw ? { timestampWrites: tw } : undefined);
    }
    return this.pass;
  }

  private openEncoder(): GPUCommandEncoder {
    if (this.pass) {
      this.pass.end();
      this.pass = null;
    }
    if (!this.encoder) this.encoder = this.device.createCommandEncoder();
    return this.encoder;
  }

  copy(src: GPUBuffer, srcOff: number, dst: GPUBuffer, dstOff: number, bytes: number): void {
    this.openEncoder().copyBufferToBuffer(src, srcOff, dst, dstOff, bytes);
  }

  /** Writes host data into a buffer, after all recorded work (flushes first so earlier dispatches see the old data). */
  writeNow(buf: GPUBuffer, offset: number, data: ArrayBufferView): void {
    this.flush();
    this.device.queue.writeBuffer(buf, offset, data.buffer, data.byteOffset, data.byteLength);
  }

  flush(): void {
    if (this.destroyed) return;
    if (this.pass) {
      this.pass.end();
      this.pass = null;
    }
    if (this.arenaUsed > 0) this.device.queue.writeBuffer(this.arena, 0, this.arenaHost, 0, this.arenaUsed);
    const afterSubmit = this.encoder && this.profiler ? this.profiler.beforeSubmit(this.encoder) : null;
    if (this.encoder) this.device.queue.submit([this.encoder.finish()]);
    afterSubmit?.();
    this.encoder = null;
    this.arenaUsed = 0;
    this.pending = 0;
    for (const b of this.retired) b.destroy();
    this.retired = [];
  }

  /** Rejects when the device is lost, so no caller waits forever. */
  private guard<T>(p: Promise<T>): Promise<T> {
    if (this.lostError) return Promise.reject(this.lostError);
    return new Promise<T>((resolve, reject) => {
      const w = (e: Error) => reject(e);
      this.waiters.add(w);
      p.then(
        (v) => (this.waiters.delete(w), resolve(v)),
        (e) => (this.waiters.delete(w), reject(this.lostError ?? new GravityError(`WebGPU: ${(e as Error).message}`))),
      );
    });
  }

  /** Copies `bytes` of `src` to the host. */
  async readBuffer(src: GPUBuffer, offset: number, bytes: number): Promise<ArrayBuffer> {
    this.check();
    const size = roundUp(Math.max(bytes, 4), 4);
    const list = this.staging.get(size);
    const st = list && list.length ? list.pop()! : this.device.createBuffer({ size, usage: USAGE.MAP_READ | USAGE.COPY_DST });
    this.copy(src, offset, st, 0, size);
    this.flush();
    this.readsInFlight++;
    try {
      await this.guard(st.mapAsync(MAP_READ_MODE));
    } finally {
      this.readsInFlight--;
    }
    const out = st.getMappedRange().slice(0, bytes);
    st.unmap();
    if (list) list.push(st);
    else this.staging.set(size, [st]);
    this.takeErrors();
    return out;
  }

  async sync(): Promise<void> {
    this.check();
    this.flush();
    await this.guard(this.device.queue.onSubmittedWorkDone());
    this.takeErrors();
  }

  /** GPU time per kernel since the last call (null unless profiling is on). */
  async profileReport(): Promise<KernelTime[] | null> {
    if (!this.profiler) return null;
    this.flush();
    return this.profiler.report();
  }

  destroy(): void {
    if (this.destroyed) return;
    this.flush();
    this.destroyed = true;
    this.profiler?.destroy();
    for (const l of [...this.pool.values(), ...this.staging.values()]) for (const b of l) b.destroy();
    this.pool.clear();
    this.staging.clear();
    this.arena.destroy();
    this.device.destroy();
  }
}
