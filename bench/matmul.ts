/**
 * CPU matmul speed: decode (GEMV, N=1) and prefill (GEMM, N=128) on the Qwen2.5-0.5B MLP shapes in bf16, for the
 * plain-JS engine and the WASM SIMD engine on 1 and 2 threads, plus the backward-to-input product.
 * Run: node --import tsx bench/matmul.ts [--quick]
 */
import { availableParallelism } from 'node:os';
import { createMatmulEngine, type MatmulEngine } from '../src/backend/cpu/matmul.js';
import { f32ToBf16, type HostTensor } from '../src/tensor/dtype.js';

const quick = process.argv.includes('--quick');

function randBf16(rows: number, cols: number): HostTensor {
  const d = new Uint16Array(rows * cols);
  for (let i = 0; i < d.length; i++) d[i] = f32ToBf16(Math.random() - 0.5);
  return { dtype: 'BF16', shape: [rows, cols], data: d };
}

function randF32(n: number): Float32Array {
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = Math.random() - 0.5;
  return a;
}

/** Seconds per call: repeats until `budget` seconds have passed (after one warm-up call). */
function time(fn: () => void, budget: number): number {
  fn();
  let reps = 0;
  const t0 = performance.now();
  let t = t0;
  while (t - t0 < budget * 1000 || reps < 2) {
    fn();
    reps++;
    t = performance.now();
  }
  return (t - t0) / 1000 / reps;
}

const shapes: [string, number, number][] = [
  ['up   896->4864', 896, 4864],
  ['down 4864->896', 4864, 896],
];

const engines: [string, () => MatmulEngine][] = [
  ['js', () => createMatmulEngine({ prefer: 'js' })],
  ['wasm 1 thread', () => createMatmulEngine({ threads: 1 })],
  ['wasm 2 threads', () => createMatmulEngine({ threads: 2 })],
];

console.log(`cpu matmul, bf16 weights, ${availableParallelism()} cores visible, node ${process.version}`);
const budget = quick ? 0.15 : 0.5;
const weights = shapes.map(([, IN, OUT]) => randBf16(OUT, IN));
for (const [ename, make] of engines) {
  const e = make();
  // workers boot in the background; time them only once they are up
  const ready = (e as unknown as { workersReady?(): number }).workersReady;
  while (ready && ready.call(e) < e.threads - 1) await new Promise((r) => setTimeout(r, 10));
  for (let s = 0; s < shapes.length; s++) {
    const [sname, IN, OUT] = shapes[s];
    const pw = e.prepare(weights[s]);
    const macs = IN * OUT;
    const bytes = macs * 2;
    const x1 = randF32(IN);
    const y1 = new Float32Array(OUT);
    const tDec = time(() => e.linear(x1, 1, pw, null, y1), budget);
    const N = 128;
    const xN = randF32(N * IN);
    const yN = new Float32Array(N * OUT);
    const tPre = time(() => e.linear(xN, N, pw, null, yN), ename === 'js' ? 0.1 : budget);
    const dy = randF32(N * OUT);
    const dx = new Float32Array(N * IN);
    const tBwd = time(() => e.linearBackwardInput(dy, N, pw, dx), ename === 'js' ? 0.1 : budget);
    console.log(
      `${ename.padEnd(15)} ${sname}  decode N=1: ${(tDec * 1e6).toFixed(0).padStart(6)} us ` +
        `${((2 * macs) / tDec / 1e9).toFixed(2).padStart(6)} GFLOP/s ${(bytes / tDec / 1e9).toFixed(2).padStart(6)} GB/s weights | ` +
        `prefill N=${N}: ${((2 * macs * N) / tPre / 1e9).toFixed(2).padStart(6)} GFLOP/s | ` +
        `backward N=${N}: ${((2 * macs * N) / tBwd / 1e9).toFixed(2).padStart(6)} GFLOP/s`,
    );
    e.release(pw);
  }
  if (ename !== 'js') {
    // decode as in a real model: 24 distinct up-projections (209 MB) so the weights stream from DRAM, not L3
    const [, IN, OUT] = shapes[0];
    const many = Array.from({ length: 24 }, () => e.prepare(weights[0]));
    const x1 = randF32(IN);
    const y1 = new Float32Array(OUT);
    const t = time(() => {
      for (const pw of many) e.linear(x1, 1, pw, null, y1);
    }, budget * 2) / many.length;
    console.log(`${ename.padEnd(15)} up   896->4864  decode N=1 from DRAM (24 weights, 209 MB): ${(t * 1e6).toFixed(0)} us ` +
      `${((2 * IN * OUT) / t / 1e9).toFixed(2)} GFLOP/s ${((IN * OUT * 2) / t / 1e9).toFixed(2)} GB/s weights`);
    for (const pw of many) e.release(pw);
  }
  e.close();
}
