/**
 * Fast CPU matrix products for the cpu backend: y = x·Wᵀ (+ bias) and dx = dy·W, with W [OUT, IN] kept in its
 * stored width (f32 / bf16 / f16). Two engines behind one interface:
 *  - 'wasm-simd': AssemblyScript kernels (wasm/matmul.ts, embedded as base64 in ./wasm-binary.ts) over shared
 *    WebAssembly memories ("arenas", up to 3 GiB each since wasm32 addresses stop at 4 GiB). prepare() copies a
 *    weight into an arena once; each call copies only the activations into that arena's scratch region, so
 *    decode reads every weight byte exactly once. Worker threads (./matmul-worker.ts) instantiate the same
 *    module on the same memories and split the output rows (or input columns for the backward pass).
 *  - 'js': plain loops with 4x4 register blocking, for hosts without WebAssembly SIMD or shared memory.
 */
import { fail } from '../../errors.js';
import { nodeBuiltin } from '../../util/builtin.js';
import { f16Table, type HostTensor } from '../../tensor/dtype.js';
import { MATMUL_WASM_BASE64 } from './wasm-binary.js';
import { ThreadPool, CTL, MAX_THREADS, TMP_BYTES, tmpOf } from './matmul-worker.js';

export interface PreparedWeight {
  /** Q8_0: GGUF's 8-bit blocks (forward only), see prepareQ8 */
  readonly dtype: 'F32' | 'F16' | 'BF16' | 'Q8_0';
  readonly rows: number; // OUT
  readonly cols: number; // IN
}

export interface MatmulEngine {
  /** Copies a weight [OUT, IN] (F32/F16/BF16; F64 is stored as F32) into kernel memory once, in its stored width. */
  prepare(w: HostTensor): PreparedWeight;
  /**
   * A weight [rows, cols] in GGUF's Q8_0 blocks (per 32 values an f16 scale and 32 int8; cols a multiple of 32),
   * kept at 8 bits: the WASM engine repacks it into int8 quants + f32 scales (1.125 bytes a weight) for a forward
   * kernel that widens in registers; the JS engine widens it to f32 once. Forward only (linear): the backward
   * passes refuse it.
   */
  prepareQ8(blocks: Uint8Array, rows: number, cols: number): PreparedWeight;
  /** Frees the weight's memory for later prepare() calls (arenas never shrink). */
  release(w: PreparedWeight): void;
  /** y[N, OUT] = x[N, IN] · Wᵀ (+ bias[OUT]); `out` (length >= N*OUT) is overwritten. */
  linear(x: Float32Array, N: number, w: PreparedWeight, bias: Float32Array | null, out?: Float32Array): Float32Array;
  /** dx[N, IN] = dy[N, OUT] · W (backward to the input); `out` (length >= N*IN) is overwritten. */
  linearBackwardInput(dy: Float32Array, N: number, w: PreparedWeight, out?: Float32Array): Float32Array;
  /**
   * dW[OUT, IN] = dy[N, OUT]ᵀ · x[N, IN] (the weight gradient of y = x·Wᵀ) on plain f32 arrays; `out`
   * (length >= OUT*IN) is overwritten. Training calls it once per trainable linear per micro-batch.
   */
  linearBackwardWeight(dy: Float32Array, x: Float32Array, N: number, OUT: number, IN: number, out?: Float32Array): Float32Array;
  /** Stops the worker threads (optional: they never keep the process alive). The engine is unusable after. */
  close(): void;
  readonly threads: number;
  readonly kind: 'wasm-simd' | 'js';
}

export interface MatmulOptions {
  /** total threads including the calling one; default min(availableParallelism, 8) */
  threads?: number;
  prefer?: 'wasm' | 'js';
  /** multiply-adds below which a call runs on the calling thread alone (waking workers costs ~10-50 µs) */
  parallelThreshold?: number;
}

type WorkerThreads = typeof import('node:worker_threads');
// Node modules are optional so the file also loads in a browser (no workers there: one thread or 'js').
const workerThreads = nodeBuiltin<WorkerThreads>('node:worker_threads');
const nodeOs = nodeBuiltin<typeof import('node:os')>('node:os');

const DT_CODE = { F32: 0, BF16: 1, F16: 2, Q8_0: 3 } as const;

function checkQ8(blocks: Uint8Array, rows: number, cols: number): void {
  if (!Number.isInteger(rows) || !Number.isInteger(cols) || rows < 1 || cols < 1) fail(`matmul.prepareQ8: bad shape [${rows}, ${cols}]`);
  if (cols % 32 !== 0) fail(`matmul.prepareQ8: rows of ${cols} values are not whole Q8_0 blocks of 32`);
  if (blocks.length !== (rows * cols / 32) * 34) fail(`matmul.prepareQ8: ${blocks.length} bytes for [${rows}, ${cols}] Q8_0 (${(rows * cols / 32) * 34} expected)`);
}

/** the f32 values of Q8_0 blocks (scale as f16, then 32 int8), as gguf-quants.ts dequantizes them */
function q8ToF32(blocks: Uint8Array, n: number): Float32Array {
  const out = new Float32Array(n);
  const f16 = f16Table();
  for (let b = 0; b < n / 32; b++) {
    const o = b * 34;
    const d = f16[blocks[o] | (blocks[o + 1] << 8)];
    for (let j = 0; j < 32; j++) out[b * 32 + j] = ((blocks[o + 2 + j] << 24) >> 24) * d;
  }
  return out;
}

function checkWeight(w: HostTensor): { dtype: 'F32' | 'F16' | 'BF16'; rows: number; cols: number } {
  if (w.shape.length !== 2) fail(`matmul: weight must be 2-D [OUT, IN], got shape [${w.shape.join(', ')}]`);
  const [rows, cols] = w.shape;
  if (w.data.length !== rows * cols) fail(`matmul: weight data has ${w.data.length} values for shape [${rows}, ${cols}]`);
  if (w.dtype === 'F32' || w.dtype === 'F16' || w.dtype === 'BF16') return { dtype: w.dtype, rows, cols };
  if (w.dtype === 'F64') return { dtype: 'F32', rows, cols };
  return fail(`matmul: weight dtype ${w.dtype} is not a float type (F32/F16/BF16/F64)`);
}

function checkWeightGradCall(dy: Float32Array, x: Float32Array, N: number, OUT: number, IN: number, out: Float32Array | undefined): void {
  for (const [k, v] of [['N', N], ['OUT', OUT], ['IN', IN]] as const) {
    if (!Number.isInteger(v) || v < 0) fail(`matmul.linearBackwardWeight: ${k} must be a non-negative integer, got ${v}`);
  }
  if (dy.length < N * OUT) fail(`matmul.linearBackwardWeight: dy has ${dy.length} values, needs N*OUT = ${N * OUT}`);
  if (x.length < N * IN) fail(`matmul.linearBackwardWeight: x has ${x.length} values, needs N*IN = ${N * IN}`);
  if (out && out.length < OUT * IN) fail(`matmul.linearBackwardWeight: out has ${out.length} values, needs OUT*IN = ${OUT * IN}`);
}

function checkCall(a: Float32Array, N: number, aCols: number, out: Float32Array | undefined, outCols: number, what: string): void {
  if (!Number.isInteger(N) || N < 0) fail(`matmul.${what}: N must be a non-negative integer, got ${N}`);
  if (a.length < N * aCols) fail(`matmul.${what}: input has ${a.length} values, needs N*${aCols} = ${N * aCols}`);
  if (out && out.length < N * outCols) fail(`matmul.${what}: out has ${out.length} values, needs ${N * outCols}`);
}

// ---------------------------------------------------------------------------------------------------------
// WASM engine

const PAGE = 65536;
// low 64 KB left to the module (it has no data today, but stays out of harm's way), then the threads' 8 KB
// tile buffers (tmpOf), then the activation scratch and the weights
const RESERVED = PAGE + MAX_THREADS * TMP_BYTES;
const SCRATCH = 32 << 20; // activations of one call (chunked over N when larger)
const ARENA_MAX_PAGES = 49152; // 3 GiB
const ARENA_MAX = ARENA_MAX_PAGES * PAGE;
const HEAP_BASE = RESERVED + SCRATCH;
const ALIGN = 64;

/**
 * Shared-memory services of the WASM engine for the other kernels compiled into its module (the attention
 * kernels, ./attention-wasm.ts): blocks in the arenas (e.g. a KV cache the kernels read in place), each arena's
 * scratch region, and the worker threads.
 */
export interface KernelHost {
  readonly threads: number;
  /** `bytes` in some arena, 64-byte aligned; the memory is not cleared */
  allocShared(bytes: number): { arena: number; off: number };
  freeShared(arena: number, off: number): void;
  memory(arena: number): WebAssembly.Memory;
  /** [scratchOff, scratchOff + scratchBytes) of every arena is free between calls (the matmuls reuse it) */
  readonly scratchOff: number;
  readonly scratchBytes: number;
  /** attn(desc, r0, r1, tmp) over tasks [0, total) in chunks, on every thread when `parallel` */
  runAttention(arena: number, desc: number, total: number, chunk: number, parallel: boolean): void;
}

/** The engine's KernelHost, or null for the plain-JS engine. */
export function kernelHost(e: MatmulEngine): KernelHost | null {
  return e instanceof WasmEngine ? e : null;
}

interface Kernels {
  attn(desc: number, r0: number, r1: number, tmp: number): void;
  fwd(dt: number, x: number, N: number, w: number, IN: number, OUT: number, bias: number, y: number, o0: number, o1: number, tmp: number): void;
  bwd(dt: number, dy: number, N: number, w: number, IN: number, OUT: number, dx: number, i0: number, i1: number): void;
  dw(dy: number, N: number, OUT: number, x: number, IN: number, dW: number, o0: number, o1: number, acc: number): void;
}

class Arena {
  readonly memory: WebAssembly.Memory;
  readonly k: Kernels;
  f32!: Float32Array;
  u16!: Uint16Array;
  /** live allocations, sorted by offset */
  private allocs: { off: number; size: number }[] = [];

  constructor(readonly id: number, module: WebAssembly.Module) {
    this.memory = new WebAssembly.Memory({ initial: HEAP_BASE / PAGE, maximum: ARENA_MAX_PAGES, shared: true });
    this.k = new WebAssembly.Instance(module, { env: { memory: this.memory } }).exports as unknown as Kernels;
    this.views();
  }

  private views(): void {
    const buf = this.memory.buffer;
    this.f32 = new Float32Array(buf);
    this.u16 = new Uint16Array(buf);
  }

  /** First fit between live allocations; grows the memory as needed. Returns -1 when the arena is full. */
  alloc(bytes: number): number {
    let off = HEAP_BASE;
    let at = 0;
    for (; at < this.allocs.length; at++) {
      const a = this.allocs[at];
      if (a.off - off >= bytes) break;
      off = Math.ceil((a.off + a.size) / ALIGN) * ALIGN;
    }
    const end = off + bytes;
    if (end > ARENA_MAX) return -1;
    const have = this.memory.buffer.byteLength;
    if (end > have) {
      this.memory.grow(Math.ceil((end - have) / PAGE));
      this.views();
    }
    this.allocs.splice(at, 0, { off, size: bytes });
    return off;
  }

  free(off: number): void {
    const i = this.allocs.findIndex((a) => a.off === off);
    if (i >= 0) this.allocs.splice(i, 1);
  }
}

class WasmWeight implements PreparedWeight {
  released = false;
  constructor(
    readonly dtype: 'F32' | 'F16' | 'BF16' | 'Q8_0',
    readonly rows: number,
    readonly cols: number,
    readonly owner: WasmEngine,
    readonly arena: Arena,
    readonly off: number,
  ) {}
}

let cachedModule: WebAssembly.Module | null = null;
function wasmModule(): WebAssembly.Module {
  if (!cachedModule) {
    const bin = atob(MATMUL_WASM_BASE64);
    const bytes = new Uint8Array(bin.length);
    for (let i = 0; i < bin.length; i++) bytes[i] = bin.charCodeAt(i);
    cachedModule = new WebAssembly.Module(bytes);
  }
  return cachedModule;
}

class WasmEngine implements MatmulEngine, KernelHost {
  readonly kind = 'wasm-simd' as const;
  private readonly arenas: Arena[] = [];
  private readonly pool: ThreadPool | null;
  /** the pool's control block (a private dummy without workers) */
  private readonly ctl: Int32Array;

  constructor(private readonly module: WebAssembly.Module, readonly threads: number, private readonly threshold: number) {
    this.pool = threads > 1 && workerThreads ? new ThreadPool(workerThreads, module, threads - 1) : null;
    if (!this.pool) this.threads = 1;
    this.ctl = this.pool ? this.pool.ctl : new Int32Array(CTL.SIZE);
  }

  prepare(w: HostTensor): PreparedWeight {
    const { dtype, rows, cols } = checkWeight(w);
    const esz = dtype === 'F32' ? 4 : 2;
    const { arena, off } = this.place(rows * cols * esz, `[${rows}, ${cols}] ${w.dtype}`);
    if (esz === 4) arena.f32.set(w.data as Float32Array | Float64Array, off / 4);
    else arena.u16.set(w.data as Uint16Array, off / 2);
    return new WasmWeight(dtype, rows, cols, this, arena, off);
  }

  prepareQ8(blocks: Uint8Array, rows: number, cols: number): PreparedWeight {
    checkQ8(blocks, rows, cols);
    // int8 quants [rows, cols], then f32 scales [rows, cols / 32] from the next 16-byte boundary (wasm/matmul.ts)
    const n = rows * cols;
    const scalesAt = Math.ceil(n / 16) * 16;
    const { arena, off } = this.place(scalesAt + (n / 32) * 4, `[${rows}, ${cols}] Q8_0`);
    const mem = new Uint8Array(arena.memory.buffer);
    const f16 = f16Table();
    const s0 = (off + scalesAt) / 4;
    for (let b = 0; b < n / 32; b++) {
      const o = b * 34;
      arena.f32[s0 + b] = f16[blocks[o] | (blocks[o + 1] << 8)];
      mem.set(blocks.subarray(o + 2, o + 34), off + b * 32);
    }
    return new WasmWeight('Q8_0', rows, cols, this, arena, off);
  }

  /** `bytes` in the first arena with room, or a new one */
  private place(bytes: number, what: string): { arena: Arena; off: number } {
    if (bytes > ARENA_MAX - HEAP_BASE) fail(`matmul: weight ${what} is larger than one ${ARENA_MAX >> 30} GiB arena`);
    let arena: Arena | null = null;
    let off = -1;
    for (const a of this.arenas) {
      off = a.alloc(bytes);
      if (off >= 0) {
        arena = a;
        break;
      }
    }
    if (!arena) {
      arena = new Arena(this.arenas.length, this.module);
      this.arenas.push(arena);
      this.pool?.addArena(arena.id, arena.memory);
      off = arena.alloc(bytes);
    }
    return { arena, off };
  }

  release(w: PreparedWeight): void {
    const ww = this.own(w, 'release');
    if (ww.released) return;
    ww.released = true;
    ww.arena.free(ww.off);
  }

  private own(w: PreparedWeight, what: string): WasmWeight {
    if (!(w instanceof WasmWeight) || w.owner !== this) fail(`matmul.${what}: weight was not prepared by this engine`);
    if (w.released && what !== 'release') fail(`matmul.${what}: weight [${w.rows}, ${w.cols}] was released`);
    return w;
  }

  linear(x: Float32Array, N: number, w: PreparedWeight, bias: Float32Array | null, out?: Float32Array): Float32Array {
    const ww = this.own(w, 'linear');
    const { rows: OUT, cols: IN, arena } = ww;
    checkCall(x, N, IN, out, OUT, 'linear');
    if (bias && bias.length !== OUT) fail(`matmul.linear: bias has ${bias.length} values, weight has ${OUT} rows`);
    const y = out ?? new Float32Array(N * OUT);
    if (N === 0) return y;
    const biasOff = RESERVED;
    const xOff = biasOff + Math.ceil((OUT * 4) / ALIGN) * ALIGN;
    const chunk = this.chunkRows(SCRATCH - (xOff - RESERVED), IN + OUT, 'linear', ww);
    const f32 = arena.f32;
    if (bias) f32.set(bias, biasOff / 4);
    for (let n0 = 0; n0 < N; n0 += chunk) {
      const n = Math.min(chunk, N - n0);
      const yOff = xOff + Math.ceil((n * IN * 4) / ALIGN) * ALIGN;
      f32.set(x.subarray(n0 * IN, (n0 + n) * IN), xOff / 4);
      this.dispatch(0, ww, xOff, n, bias ? biasOff : 0, yOff, OUT, 4);
      y.set(f32.subarray(yOff / 4, yOff / 4 + n * OUT), n0 * OUT);
    }
    return y;
  }

  linearBackwardInput(dy: Float32Array, N: number, w: PreparedWeight, out?: Float32Array): Float32Array {
    const ww = this.own(w, 'linearBackwardInput');
    if (ww.dtype === 'Q8_0') fail('matmul.linearBackwardInput: Q8_0 weights are for inference (load the model without keeping Q8_0 to train it)');
    const { rows: OUT, cols: IN, arena } = ww;
    checkCall(dy, N, OUT, out, IN, 'linearBackwardInput');
    const dx = out ?? new Float32Array(N * IN);
    if (N === 0) return dx;
    const dyOff = RESERVED;
    const chunk = this.chunkRows(SCRATCH, IN + OUT, 'linearBackwardInput', ww);
    const f32 = arena.f32;
    for (let n0 = 0; n0 < N; n0 += chunk) {
      const n = Math.min(chunk, N - n0);
      const dxOff = dyOff + Math.ceil((n * OUT * 4) / ALIGN) * ALIGN;
      f32.set(dy.subarray(n0 * OUT, (n0 + n) * OUT), dyOff / 4);
      this.dispatch(1, ww, dyOff, n, 0, dxOff, IN, 8);
      dx.set(f32.subarray(dxOff / 4, dxOff / 4 + n * IN), n0 * IN);
    }
    return dx;
  }

  /** The arena whose scratch the weight-gradient pass uses (the first; made when no weight was prepared yet). */
  private scratchArena(): Arena {
    if (this.arenas.length === 0) {
      const a = new Arena(0, this.module);
      this.arenas.push(a);
      this.pool?.addArena(0, a.memory);
    }
    return this.arenas[0];
  }

  linearBackwardWeight(dy: Float32Array, x: Float32Array, N: number, OUT: number, IN: number, out?: Float32Array): Float32Array {
    checkWeightGradCall(dy, x, N, OUT, IN, out);
    const dW = out ?? new Float32Array(OUT * IN);
    if (OUT * IN === 0) return dW;
    if (N === 0) {
      dW.fill(0, 0, OUT * IN);
      return dW;
    }
    const arena = this.scratchArena();
    const space = SCRATCH - 4 * ALIGN;
    // dW rows resident per pass: at most half the scratch, a multiple of 4 (the kernel's row tile)
    let oc = Math.min(OUT, Math.floor(space / 2 / (IN * 4)));
    if (oc < OUT) oc = Math.max(4, oc - (oc % 4));
    const nc = Math.floor((space - oc * IN * 4) / ((IN + oc) * 4));
    if (oc < 1 || nc < 1) fail(`matmul.linearBackwardWeight: rows of ${IN} values are too wide for the ${SCRATCH >> 20} MB scratch`);
    const f32 = arena.f32;
    const dwOff = RESERVED;
    const xOff = dwOff + Math.ceil((oc * IN * 4) / ALIGN) * ALIGN;
    for (let o0 = 0; o0 < OUT; o0 += oc) {
      const m = Math.min(oc, OUT - o0);
      for (let n0 = 0; n0 < N; n0 += nc) {
        const n = Math.min(nc, N - n0);
        const dyOff = xOff + Math.ceil((n * IN * 4) / ALIGN) * ALIGN;
        f32.set(x.subarray(n0 * IN, (n0 + n) * IN), xOff / 4);
        if (m === OUT) f32.set(dy.subarray(n0 * OUT, (n0 + n) * OUT), dyOff / 4);
        else for (let r = 0; r < n; r++) f32.set(dy.subarray((n0 + r) * OUT + o0, (n0 + r) * OUT + o0 + m), dyOff / 4 + r * m);
        this.dispatchDw(arena, dyOff, n, m, xOff, IN, dwOff, n0 > 0 ? 1 : 0);
      }
      dW.set(f32.subarray(dwOff / 4, dwOff / 4 + m * IN), o0 * IN);
    }
    return dW;
  }

  private dispatchDw(arena: Arena, dy: number, N: number, OUT: number, x: number, IN: number, dW: number, acc: number): void {
    const k = arena.k;
    if (this.pool === null || N * OUT * IN < this.threshold || OUT <= 4) {
      k.dw(dy, N, OUT, x, IN, dW, 0, OUT, acc);
      return;
    }
    const ctl = this.ctl;
    ctl[CTL.OP] = 2;
    ctl[CTL.ARENA] = arena.id;
    ctl[CTL.A] = dy;
    ctl[CTL.N] = N;
    ctl[CTL.W] = x;
    ctl[CTL.IN] = IN;
    ctl[CTL.OUT] = OUT;
    ctl[CTL.BIAS] = acc;
    ctl[CTL.Y] = dW;
    const chunk = Math.ceil(OUT / (4 * this.threads) / 4) * 4;
    this.pool.run(OUT, chunk, (r0, r1) => k.dw(dy, N, OUT, x, IN, dW, r0, r1, acc));
  }

  private chunkRows(space: number, floatsPerRow: number, what: string, w: WasmWeight): number {
    const rows = Math.floor((space - 2 * ALIGN) / (floatsPerRow * 4));
    if (rows < 1) fail(`matmul.${what}: weight [${w.rows}, ${w.cols}] is too wide for the ${SCRATCH >> 20} MB scratch`);
    return rows;
  }

  /** Fills the job fields and runs it on one or all threads; `total` is split in multiples of `step`. */
  private dispatch(op: 0 | 1, w: WasmWeight, a: number, N: number, bias: number, y: number, total: number, step: number): void {
    const ctl = this.ctl;
    const dt = DT_CODE[w.dtype];
    const k = w.arena.k;
    const parallel = this.pool !== null && N * w.rows * w.cols >= this.threshold && total > step;
    if (!parallel) {
      if (op === 0) k.fwd(dt, a, N, w.off, w.cols, w.rows, bias, y, 0, total, tmpOf(0));
      else k.bwd(dt, a, N, w.off, w.cols, w.rows, y, 0, total);
      return;
    }
    ctl[CTL.OP] = op;
    ctl[CTL.ARENA] = w.arena.id;
    ctl[CTL.DT] = dt;
    ctl[CTL.A] = a;
    ctl[CTL.N] = N;
    ctl[CTL.W] = w.off | 0;
    ctl[CTL.IN] = w.cols;
    ctl[CTL.OUT] = w.rows;
    ctl[CTL.BIAS] = bias;
    ctl[CTL.Y] = y;
    // ~4 chunks per thread: small enough to rebalance when a thread is descheduled, big enough to stream rows
    const chunk = Math.ceil(total / (4 * this.threads) / step) * step;
    this.pool!.run(total, chunk, (r0, r1) => {
      if (op === 0) k.fwd(dt, a, N, w.off, w.cols, w.rows, bias, y, r0, r1, tmpOf(0));
      else k.bwd(dt, a, N, w.off, w.cols, w.rows, y, r0, r1);
    });
  }

  readonly scratchOff = RESERVED;
  readonly scratchBytes = SCRATCH;

  allocShared(bytes: number): { arena: number; off: number } {
    if (bytes > ARENA_MAX - HEAP_BASE) fail(`cpu: a block of ${bytes} bytes is larger than one ${ARENA_MAX >> 30} GiB arena`);
    for (const a of this.arenas) {
      const off = a.alloc(bytes);
      if (off >= 0) return { arena: a.id, off };
    }
    const a = new Arena(this.arenas.length, this.module);
    this.arenas.push(a);
    this.pool?.addArena(a.id, a.memory);
    return { arena: a.id, off: a.alloc(bytes) };
  }

  freeShared(arena: number, off: number): void {
    this.arenas[arena]?.free(off);
  }

  memory(arena: number): WebAssembly.Memory {
    return arena === 0 ? this.scratchArena().memory : this.arenas[arena].memory;
  }

  runAttention(arena: number, desc: number, total: number, chunk: number, parallel: boolean): void {
    const k = this.arenas[arena].k;
    if (!this.pool || !parallel || total <= chunk) {
      k.attn(desc, 0, total, tmpOf(0));
      return;
    }
    this.ctl[CTL.OP] = 3;
    this.ctl[CTL.ARENA] = arena;
    this.ctl[CTL.A] = desc;
    this.pool.run(total, chunk, (r0, r1) => k.attn(desc, r0, r1, tmpOf(0)));
  }

  /** Chunks the worker threads have computed so far (not part of MatmulEngine: tests check the workers work). */
  workerChunks(): number {
    return this.pool ? Atomics.load(this.ctl, CTL.WORKER_CHUNKS) : 0;
  }

  /** Worker threads that have started (they boot in the background; calls never wait for them). */
  workersReady(): number {
    return this.pool ? Atomics.load(this.ctl, CTL.READY) : 0;
  }

  close(): void {
    this.pool?.close();
  }
}

// ---------------------------------------------------------------------------------------------------------
// Plain-JS engine: 16-bit weights are widened one row at a time (4 rows per block), reused across all x rows.

class JsWeight implements PreparedWeight {
  released = false;
  constructor(
    readonly dtype: 'F32' | 'F16' | 'BF16',
    readonly rows: number,
    readonly cols: number,
    readonly owner: JsEngine,
    readonly data: Float32Array | Uint16Array,
  ) {}
}

class JsEngine implements MatmulEngine {
  readonly kind = 'js' as const;
  readonly threads = 1;
  private buf = new Float32Array(0);

  prepare(w: HostTensor): PreparedWeight {
    const { dtype, rows, cols } = checkWeight(w);
    const data = dtype === 'F32' ? Float32Array.from(w.data as Float32Array | Float64Array) : (w.data as Uint16Array).slice();
    return new JsWeight(dtype, rows, cols, this, data);
  }

  prepareQ8(blocks: Uint8Array, rows: number, cols: number): PreparedWeight {
    checkQ8(blocks, rows, cols);
    return new JsWeight('F32', rows, cols, this, q8ToF32(blocks, rows * cols));
  }

  release(w: PreparedWeight): void {
    this.own(w, 'release').released = true;
  }

  close(): void {}

  private own(w: PreparedWeight, what: string): JsWeight {
    if (!(w instanceof JsWeight) || w.owner !== this) fail(`matmul.${what}: weight was not prepared by this engine`);
    if (w.released && what !== 'release') fail(`matmul.${what}: weight [${w.rows}, ${w.cols}] was released`);
    return w;
  }

  /** Row o of W as f32 (a view for F32 weights, else widened into slot `slot` of the row buffer). */
  private row(w: JsWeight, o: number, slot: number): Float32Array {
    const I = w.cols;
    if (w.dtype === 'F32') return (w.data as Float32Array).subarray(o * I, o * I + I);
    if (this.buf.length < 4 * I) this.buf = new Float32Array(4 * I);
    const dst = this.buf.subarray(slot * I, slot * I + I);
    const src = (w.data as Uint16Array).subarray(o * I, o * I + I);
    if (w.dtype === 'BF16') {
      const d32 = new Uint32Array(dst.buffer, dst.byteOffset, I);
      for (let i = 0; i < I; i++) d32[i] = src[i] << 16;
    } else {
      const tab = f16Table();
      for (let i = 0; i < I; i++) dst[i] = tab[src[i]];
    }
    return dst;
  }

  linear(x: Float32Array, N: number, w: PreparedWeight, bias: Float32Array | null, out?: Float32Array): Float32Array {
    const jw = this.own(w, 'linear');
    const { rows: OUT, cols: IN } = jw;
    checkCall(x, N, IN, out, OUT, 'linear');
    if (bias && bias.length !== OUT) fail(`matmul.linear: bias has ${bias.length} values, weight has ${OUT} rows`);
    const y = out ?? new Float32Array(N * OUT);
    for (let o = 0; o < OUT; o += 4) {
      const m = Math.min(4, OUT - o);
      // missing rows of a tail block repeat row o; their sums are discarded
      const r0 = this.row(jw, o, 0);
      const r1 = m > 1 ? this.row(jw, o + 1, 1) : r0;
      const r2 = m > 2 ? this.row(jw, o + 2, 2) : r0;
      const r3 = m > 3 ? this.row(jw, o + 3, 3) : r0;
      const b0 = bias ? bias[o] : 0;
      const b1 = bias && m > 1 ? bias[o + 1] : 0;
      const b2 = bias && m > 2 ? bias[o + 2] : 0;
      const b3 = bias && m > 3 ? bias[o + 3] : 0;
      let n = 0;
      for (; n + 4 <= N; n += 4) {
        const xa = n * IN, xb = xa + IN, xc = xb + IN, xd = xc + IN;
        let a0 = 0, a1 = 0, a2 = 0, a3 = 0, b0_ = 0, b1_ = 0, b2_ = 0, b3_ = 0;
        let c0 = 0, c1 = 0, c2 = 0, c3 = 0, d0 = 0, d1 = 0, d2 = 0, d3 = 0;
        for (let k = 0; k < IN; k++) {
          const w0 = r0[k], w1 = r1[k], w2 = r2[k], w3 = r3[k];
          const va = x[xa + k], vb = x[xb + k], vc = x[xc + k], vd = x[xd + k];
          a0 += va * w0; a1 += va * w1; a2 += va * w2; a3 += va * w3;
          b0_ += vb * w0; b1_ += vb * w1; b2_ += vb * w2; b3_ += vb * w3;
          c0 += vc * w0; c1 += vc * w1; c2 += vc * w2; c3 += vc * w3;
          d0 += vd * w0; d1 += vd * w1; d2 += vd * w2; d3 += vd * w3;
        }
        const rows4 = [[a0, a1, a2, a3], [b0_, b1_, b2_, b3_], [c0, c1, c2, c3], [d0, d1, d2, d3]];
        for (let r = 0; r < 4; r++) {
          const yp = (n + r) * OUT + o;
          const s = rows4[r];
          y[yp] = s[0] + b0;
          if (m > 1) y[yp + 1] = s[1] + b1;
          if (m > 2) y[yp + 2] = s[2] + b2;
          if (m > 3) y[yp + 3] = s[3] + b3;
        }
      }
      for (; n < N; n++) {
        const xa = n * IN;
        let a0 = 0, a1 = 0, a2 = 0, a3 = 0;
        for (let k = 0; k < IN; k++) {
          const va = x[xa + k];
          a0 += va * r0[k]; a1 += va * r1[k]; a2 += va * r2[k]; a3 += va * r3[k];
        }
        const yp = n * OUT + o;
        y[yp] = a0 + b0;
        if (m > 1) y[yp + 1] = a1 + b1;
        if (m > 2) y[yp + 2] = a2 + b2;
        if (m > 3) y[yp + 3] = a3 + b3;
      }
    }
    return y;
  }

  linearBackwardWeight(dy: Float32Array, x: Float32Array, N: number, OUT: number, IN: number, out?: Float32Array): Float32Array {
    checkWeightGradCall(dy, x, N, OUT, IN, out);
    const dW = out ?? new Float32Array(OUT * IN);
    dW.fill(0, 0, OUT * IN);
    for (let n = 0; n < N; n++) {
      const xr = x.subarray(n * IN, n * IN + IN);
      for (let o = 0; o < OUT; o++) {
        const g = dy[n * OUT + o];
        if (g === 0) continue;
        const base = o * IN;
        for (let i = 0; i < IN; i++) dW[base + i] += g * xr[i];
      }
    }
    return dW;
  }

  linearBackwardInput(dy: Float32Array, N: number, w: PreparedWeight, out?: Float32Array): Float32Array {
    const jw = this.own(w, 'linearBackwardInput');
    const { rows: OUT, cols: IN } = jw;
    checkCall(dy, N, OUT, out, IN, 'linearBackwardInput');
    const dx = out ?? new Float32Array(N * IN);
    dx.fill(0, 0, N * IN);
    // 4 weight rows per pass: each dx element is read and written once per 4 rows
    for (let o = 0; o < OUT; o += 4) {
      const m = Math.min(4, OUT - o);
      const r0 = this.row(jw, o, 0);
      const r1 = m > 1 ? this.row(jw, o + 1, 1) : r0;
      const r2 = m > 2 ? this.row(jw, o + 2, 2) : r0;
      const r3 = m > 3 ? this.row(jw, o + 3, 3) : r0;
      for (let n = 0; n < N; n++) {
        const g = n * OUT + o;
        const s0 = dy[g], s1 = m > 1 ? dy[g + 1] : 0, s2 = m > 2 ? dy[g + 2] : 0, s3 = m > 3 ? dy[g + 3] : 0;
        const base = n * IN;
        for (let i = 0; i < IN; i++) dx[base + i] += s0 * r0[i] + s1 * r1[i] + s2 * r2[i] + s3 * r3[i];
      }
    }
    return dx;
  }
}

// ---------------------------------------------------------------------------------------------------------

function wasmUsable(): boolean {
  try {
    if (typeof WebAssembly !== 'object' || typeof SharedArrayBuffer !== 'function') return false;
    wasmModule();
    new WebAssembly.Memory({ initial: 1, maximum: 1, shared: true });
    return true;
  } catch {
    return false;
  }
}

/** The fastest engine this host supports: WASM SIMD with worker threads, else single-thread WASM, else 'js'. */
export function createMatmulEngine(opts: MatmulOptions = {}): MatmulEngine {
  // GRAVITY_THREADS caps a process's threads when several share one host (parallel training runs)
  const want = opts.threads ?? (Number(globalThis.process?.env?.GRAVITY_THREADS) || Math.min(nodeOs?.availableParallelism?.() ?? 1, 8));
  if (!Number.isInteger(want) || want < 1 || want > MAX_THREADS) fail(`matmul: threads must be an integer in [1, ${MAX_THREADS}], got ${opts.threads ?? `GRAVITY_THREADS=${want}`}`);
  if (opts.prefer === 'js' || !wasmUsable()) return new JsEngine();
  return new WasmEngine(wasmModule(), want, opts.parallelThreshold ?? 100_000);
}
