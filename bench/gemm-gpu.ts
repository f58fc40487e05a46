/**
 * Prefill GEMM variants (src/backend/webgpu/gemm.ts) against the legacy kernel, on the Qwen2.5-3B linear shapes:
 *   node dist/bench/gemm-gpu.js [--n 2048,8192] [--shapes 2048x2048,256x2048,11008x2048,2048x11008,151936x2048]
 *                               [--variants auto,128x128x32/8x8,...] [--wdt BF16|F16|F32] [--budget 170]
 * (or GEMM_VARIANTS=... for --variants). A shape is OUTxIN; y[N, OUT] = x[N, IN] · w[OUT, IN]^T, x f32, w in --wdt,
 * filled on the GPU with hashed values. Per shape and variant: wall time per call (after a warm-up, repeated to
 * ~150 ms), TFLOP/s, and max |y - y_legacy| (absolute, and relative to max |y_legacy|; f32 sums in another order
 * differ by ~1e-6 relative). "auto" is what linear() picks (gemmChoose; GRAVITY_GEMM=<config> overrides it).
 * Ends with each variant's time for one Qwen2.5-3B layer's linears (q, k, v, o, gate, up, down) at each N, and the
 * fastest variant per shape. Stops starting new measurements after --budget seconds.
 */
import { parseArgs } from 'node:util';
import { createWebGPUBackend } from '../src/backend/webgpu/index.js';
import { Params, USAGE } from '../src/backend/webgpu/context.js';
import { gemmChoose, gemmKernel, gemmName, gemmSharedBytes, legacyTile, parseGemm, type GemmChoice } from '../src/backend/webgpu/gemm.js';
import type { WDType } from '../src/backend/webgpu/wgsl.js';

const DEFAULT_VARIANTS = [
  'legacy', 'auto', '128x128x32/8x8', '128x128x16/8x8', '128x128x32/8x8/nopf', '128x64x32/8x4', '64x128x32/4x8',
  '64x64x32/4x4', '64x64x16/4x4', '128x128x8/8x8', '128x128x16/8x8/db', '128x64x16/8x4/db', '64x64x32/4x4/db',
];
const { values } = parseArgs({
  options: {
    n: { type: 'string', default: '2048,8192' },
    shapes: { type: 'string', default: '2048x2048,256x2048,11008x2048,2048x11008,151936x2048' },
    variants: { type: 'string', default: process.env.GEMM_VARIANTS ?? DEFAULT_VARIANTS.join(',') },
    wdt: { type: 'string', default: 'BF16' },
    budget: { type: 'string', default: '170' },
  },
});
const t0 = performance.now();
const budgetMs = Number(values.budget) * 1000;
const wdt = values.wdt as WDType;
const Ns = values.n!.split(',').map(Number);
const shapes = values.shapes!.split(',').map((s) => s.split('x').map(Number) as [number, number]);
const variants = values.variants!.split(',').filter(Boolean);

const be = await createWebGPUBackend();
const ctx = be.ctx;
const log = (...a: unknown[]) => console.log(...a);
log(`adapter: ${be.adapterName}`);
log(`maxComputeWorkgroupStorageSize ${ctx.maxWorkgroupMem} B, maxStorageBufferBindingSize ${(ctx.maxBinding / 2 ** 30).toFixed(2)} GiB, weights ${wdt}, GRAVITY_DAWN_FLAGS=${process.env.GRAVITY_DAWN_FLAGS ?? ''}, GRAVITY_GEMM=${process.env.GRAVITY_GEMM ?? ''}`);

// hashed fills on the GPU: mode 0 = f32 in [-1, 1), 1 = packed bf16 / 2 = packed f16 of 0.05·[-1, 1), 3 = the bits `v`
const fill = ctx.pipeline('bench:fill', () => `struct P { n: u32, seed: u32, mode: u32, v: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> o: array<u32>;
fn h(i: u32) -> u32 { let v = i * 747796405u + 2891336453u + p.seed * 2654435761u; let w = ((v >> ((v >> 28u) + 4u)) ^ v) * 277803737u; return (w >> 22u) ^ w; }
fn uf(i: u32) -> f32 { return f32(h(i) >> 8u) / 8388608.0 - 1.0; }
@compute @workgroup_size(256) fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
  for (var i = g.x; i < p.n; i += nw.x * 256u) {
    if (p.mode == 0u) { o[i] = bitcast<u32>(uf(i)); }
    else if (p.mode == 1u) { o[i] = (bitcast<u32>(0.05 * uf(2u * i)) >> 16u) | (bitcast<u32>(0.05 * uf(2u * i + 1u)) & 0xffff0000u); }
    else if (p.mode == 2u) { o[i] = pack2x16float(vec2<f32>(0.05 * uf(2u * i), 0.05 * uf(2u * i + 1u))); }
    else { o[i] = p.v; }
  }
}`);
function fillBuf(buf: GPUBuffer, words: number, seed: number, mode: number, v = 0): void {
  ctx.dispatch(fill, new Params().u(words, seed, mode, v), [buf], [4096]);
}
// max |a - b| and max |b| as f32 bits (non-negative floats order like their bits); NaN / inf count as 3e38
const diff = ctx.pipeline('bench:diff', () => `struct P { n: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> r: array<atomic<u32>, 2>;
@compute @workgroup_size(256) fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) nw: vec3<u32>) {
  var d = 0.0;
  var m = 0.0;
  for (var i = g.x; i < p.n; i += nw.x * 256u) {
    let e = abs(a[i] - b[i]);
    d = max(d, select(3e38, e, e <= 3e38));
    m = max(m, abs(b[i]));
  }
  atomicMax(&r[0], bitcast<u32>(d));
  atomicMax(&r[1], bitcast<u32>(m));
}`);
const diffOut = ctx.device.createBuffer({ size: 256, usage: USAGE.STORAGE | USAGE.COPY_SRC | USAGE.COPY_DST });
async function maxDiff(a: GPUBuffer, b: GPUBuffer, n: number): Promise<[number, number]> {
  ctx.writeNow(diffOut, 0, new Uint32Array(2));
  ctx.dispatch(diff, new Params().u(n), [a, b, diffOut], [4096]);
  const r = new Float32Array(await ctx.readBuffer(diffOut, 0, 8));
  return [r[0], r[1]];
}

const mk = (bytes: number) => ctx.device.createBuffer({ size: Math.ceil(bytes / 16) * 16, usage: USAGE.STORAGE | USAGE.COPY_SRC | USAGE.COPY_DST });
const remaining = () => budgetMs - (performance.now() - t0);

function resolve(v: string, N: number, IN: number, OUT: number): GemmChoice | string {
  if (v === 'legacy') return { legacy: legacyTile(N, OUT) };
  if (v === 'auto') return gemmChoose(ctx, N, IN, OUT, wdt);
  let c: GemmChoice;
  try {
    c = parseGemm(v);
  } catch (e) {
    return (e as Error).message;
  }
  if (!('legacy' in c) && gemmSharedBytes(c) > ctx.maxWorkgroupMem) return `needs ${gemmSharedBytes(c)} B of workgroup memory`;
  return c;
}

/** ms per call, timed to ~150 ms after one warm-up call (which compiles) */
async function timeIt(f: () => void): Promise<number> {
  f();
  await ctx.sync();
  let t = performance.now();
  f();
  await ctx.sync();
  const one = performance.now() - t;
  const reps = Math.max(2, Math.min(200, Math.ceil(150 / Math.max(one, 1e-3))));
  t = performance.now();
  for (let r = 0; r < reps; r++) f();
  await ctx.sync();
  return (performance.now() - t) / reps;
}

/** ms[variant][N][shape] */
const ms = new Map<string, Map<number, Map<string, number>>>();
const best = new Map<string, { v: string; ms: number }>();
for (const N of Ns) {
  for (const [OUT, IN] of shapes) {
    const key = `${OUT}x${IN}`;
    const yBytes = N * OUT * 4;
    const wBytes = (OUT * IN * (wdt === 'F32' ? 4 : 2));
    if (Math.max(yBytes, wBytes, N * IN * 4) > Math.min(ctx.maxBinding, ctx.maxBuffer)) {
      log(`\nN=${N} ${key}: skipped (a buffer exceeds the device's binding limit)`);
      continue;
    }
    const flop = 2 * N * OUT * IN;
    log(`\nN=${N} OUT=${OUT} IN=${IN} (${(flop / 1e9).toFixed(0)} GFLOP)`);
    const x = mk(N * IN * 4);
    const w = mk(wBytes);
    const yRef = mk(yBytes);
    const y = mk(yBytes);
    fillBuf(x, N * IN, 1, 0);
    fillBuf(w, wdt === 'F32' ? OUT * IN : (OUT * IN) / 2, 2, wdt === 'F32' ? 0 : wdt === 'BF16' ? 1 : 2);
    gemmKernel(ctx, x, w, wdt, null, null, yRef, N, IN, OUT, { legacy: legacyTile(N, OUT) });
    fillBuf(y, N * OUT, 0, 3, 0x7fc00000);
    const [nanD] = await maxDiff(y, yRef, N * OUT);
    if (nanD < 1e38) throw new Error(`bench: the difference check missed NaN outputs (${nanD})`);
    for (const v of variants) {
      if (remaining() < 0) {
        log(`  ${v.padEnd(22)} skipped: out of --budget`);
        continue;
      }
      const c = resolve(v, N, IN, OUT);
      if (typeof c === 'string') {
        log(`  ${v.padEnd(22)} skipped: ${c}`);
        continue;
      }
      fillBuf(y, N * OUT, 0, 3, 0x7fc00000); // NaN: an output the kernel never writes shows as an error
      const t = await timeIt(() => gemmKernel(ctx, x, w, wdt, null, null, y, N, IN, OUT, c));
      const [d, m] = await maxDiff(y, yRef, N * OUT);
      const name = v === 'auto' || v === 'legacy' ? `${v} (${gemmName(c)})` : v;
      log(`  ${name.padEnd(30)} ${t.toFixed(3).padStart(9)} ms ${(flop / t / 1e9).toFixed(1).padStart(6)} TFLOP/s   max|dy| ${d.toExponential(2)} (rel ${(d / m).toExponential(2)})${d / m > 1e-4 ? '  <-- MISMATCH' : ''}`);
      if (!ms.has(v)) ms.set(v, new Map());
      if (!ms.get(v)!.has(N)) ms.get(v)!.set(N, new Map());
      ms.get(v)!.get(N)!.set(key, t);
      const bk = `N=${N} ${key}`;
      if (d / m <= 1e-4 && (!best.has(bk) || best.get(bk)!.ms > t)) best.set(bk, { v, ms: t });
    }
    for (const b of [x, w, yRef, y]) b.destroy();
  }
}

// one Qwen2.5-3B layer: q and o are 2048x2048, k and v 256x2048, gate and up 11008x2048, down 2048x11008
const LAYER: Record<string, number> = { '2048x2048': 2, '256x2048': 2, '11008x2048': 2, '2048x11008': 1 };
log('\none layer of linears (q, k, v, o, gate, up, down), ms; x36 layers for the prefill:');
for (const [v, byN] of ms) {
  const parts: string[] = [];
  for (const [N, byShape] of byN) {
    let s = 0;
    let ok = true;
    for (const [k, c] of Object.entries(LAYER)) {
      const t = byShape.get(k);
      if (t === undefined) ok = false;
      else s += c * t;
    }
    if (ok) parts.push(`N=${N}: ${s.toFixed(2)} ms/layer (${(36 * s / 1000).toFixed(3)} s/36 layers)`);
  }
  if (parts.length) log(`  ${v.padEnd(22)} ${parts.join('   ')}`);
}
log('\nfastest correct variant per shape:');
for (const [k, b] of best) log(`  ${k.padEnd(20)} ${b.v.padEnd(22)} ${b.ms.toFixed(3)} ms`);
log(`\ntotal ${((performance.now() - t0) / 1000).toFixed(1)} s`);
be.destroy();
