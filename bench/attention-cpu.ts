/**
 * CPU attention alone, plain JS vs WASM SIMD (1 thread and all threads):
 *  - decode: one token against 512 cached keys, Qwen2.5-0.5B heads (14 q / 2 kv, D 64), x24 layers = per token
 *  - prefill: 1024 tokens at once, same heads, one layer (x24 for the model)
 *  - training: forward (with lse) + backward on the bench/train-full.ts shape (4 q / 2 kv heads, D 64,
 *    batch 16 x 128), x6 layers = per step
 *   npx tsx bench/attention-cpu.ts [--kind gravity,dot] [--reps 5]
 * Each number is the best of --reps runs (the machine is shared).
 */
import { parseArgs } from 'node:util';
import { createCpuBackend, type CpuBackend } from '../src/backend/cpu/index.js';
import { attentionForward, type CpuKVLayer } from '../src/backend/cpu/attention.js';
import { attentionForwardWasm } from '../src/backend/cpu/attention-wasm.js';
import type { AttentionKind, AttentionParams } from '../src/backend/backend.js';
import type { TrainAttentionParams } from '../src/backend/train-ops.js';
import { attentionBackward, attentionForwardTrain } from '../src/train/attention-backward.js';

const { values } = parseArgs({ options: { kind: { type: 'string', default: 'gravity,dot' }, reps: { type: 'string', default: '5' } } });
const REPS = Number(values.reps);

function rand(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  return Float32Array.from({ length: n }, () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) / 2 ** 32 - 0.5) * 2);
}

function best(f: () => void): number {
  f(); // warm-up (JIT)
  let b = Infinity;
  for (let r = 0; r < REPS; r++) {
    const t = performance.now();
    f();
    b = Math.min(b, performance.now() - t);
  }
  return b;
}

const be1 = createCpuBackend({ threads: 1 });
const beN = createCpuBackend({});
await new Promise((r) => setTimeout(r, 300)); // worker threads boot
const N = beN.engine.threads;

function inferenceLayer(be: CpuBackend, kind: AttentionKind, keys: number) {
  const Hq = 14, Hkv = 2, D = 64;
  const p: AttentionParams = { kind, numHeads: Hq, numKVHeads: Hkv, headDim: D, massSq: Float32Array.from({ length: Hq }, (_, h) => 0.5 + 0.1 * h), eps: 0.1, scale: 1 / 8 };
  const cache = be.createKVCache(1, 1, keys, Hkv, D);
  cache.keyValid.fill(1);
  be.writeKV(cache, 0, be.fromF32(rand(keys * Hkv * D, 1), [keys, Hkv * D]), be.fromF32(rand(keys * Hkv * D, 2), [keys, Hkv * D]), 0, keys);
  const L = (cache as unknown as { layers: CpuKVLayer[] }).layers[0];
  return { p, L, keyValid: cache.keyValid, Hq, D };
}

for (const kind of values.kind!.split(',') as AttentionKind[]) {
  // decode: 1 query at slot 511
  {
    const { p, L, keyValid, Hq, D } = inferenceLayer(beN, kind, 512);
    const L1 = inferenceLayer(be1, kind, 512).L;
    const q = rand(Hq * D, 3);
    const out = new Float32Array(Hq * D);
    const js = best(() => { for (let l = 0; l < 24; l++) attentionForward(out, q, L, keyValid, 1, 1, 511, 512, p); });
    const w1 = best(() => { for (let l = 0; l < 24; l++) attentionForwardWasm(be1.attentionHost!, out, q, L1, keyValid, 1, 1, 511, 512, p); });
    const wn = best(() => { for (let l = 0; l < 24; l++) attentionForwardWasm(beN.attentionHost!, out, q, L, keyValid, 1, 1, 511, 512, p); });
    console.log(`${kind} decode (512 keys, 14/2 heads, D 64, x24 layers): js ${js.toFixed(2)} ms, wasm x1 ${w1.toFixed(2)} ms, wasm x${N} ${wn.toFixed(2)} ms per token`);
  }
  // prefill: 1024 queries, one layer
  {
    const { p, L, keyValid, Hq, D } = inferenceLayer(beN, kind, 1024);
    const L1 = inferenceLayer(be1, kind, 1024).L;
    const q = rand(1024 * Hq * D, 4);
    const out = new Float32Array(q.length);
    const js = best(() => attentionForward(out, q, L, keyValid, 1, 1024, 0, 1024, p));
    const w1 = best(() => attentionForwardWasm(be1.attentionHost!, out, q, L1, keyValid, 1, 1024, 0, 1024, p));
    const wn = best(() => attentionForwardWasm(beN.attentionHost!, out, q, L, keyValid, 1, 1024, 0, 1024, p));
    console.log(`${kind} prefill 1024 tokens (one layer): js ${js.toFixed(1)} ms, wasm x1 ${w1.toFixed(1)} ms, wasm x${N} ${wn.toFixed(1)} ms (x24 layers: ${(js * 24 / 1000).toFixed(2)} s / ${(wn * 24 / 1000).toFixed(2)} s)`);
  }
  // training: forward + backward, B 16 x T 128, 4/2 heads, D 64
  {
    const B = 16, T = 128, Hq = 4, Hkv = 2, D = 64;
    const p: TrainAttentionParams = { kind, numHeads: Hq, numKVHeads: Hkv, headDim: D, massLog: kind === 'dot' ? null : Float64Array.from({ length: Hq }, (_, h) => 0.2 * h), eps: 0.1, scale: 1 / 8 };
    const q = rand(B * T * Hq * D, 5), k = rand(B * T * Hkv * D, 6), v = rand(B * T * Hkv * D, 7), dout = rand(B * T * Hq * D, 8);
    const out = new Float32Array(q.length), lse = new Float32Array(B * T * Hq);
    const dq = new Float32Array(q.length), dk = new Float32Array(k.length), dv = new Float32Array(v.length), dm = new Float32Array(Hq);
    const run = (be: CpuBackend | null) => {
      const h = be ? be.attentionHost : null;
      const f = best(() => attentionForwardTrain(out, lse, q, k, v, B, T, p, h));
      const b = best(() => attentionBackward(dq, dk, dv, dm, dout, q, k, v, out, lse, B, T, p, h));
      return [f, b];
    };
    const [jf, jb] = run(null);
    const [f1, b1] = run(be1);
    const [fn, bn] = run(beN);
    const fmt = (f: number, b: number) => `fwd ${f.toFixed(1)} + bwd ${b.toFixed(1)} ms`;
    console.log(`${kind} training 16x128, 4/2 heads, D 64 (one layer): js ${fmt(jf, jb)}; wasm x1 ${fmt(f1, b1)}; wasm x${N} ${fmt(fn, bn)} (x6 layers: ${((jf + jb) * 6 / 1000).toFixed(2)} s -> ${((fn + bn) * 6 / 1000).toFixed(2)} s per step)`);
  }
}
be1.engine.close();
beN.engine.close();
