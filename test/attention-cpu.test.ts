// WASM SIMD attention (src/backend/cpu/attention-wasm.ts + wasm/attention.ts) against the plain-JS loops and an
// f64 reference: inference over the KV cache (prefill, chunked prefill, decode; left padding, rows with no valid
// key) and training forward + backward, gravity / dot / gravity-pure, GQA and MHA, odd sizes, 1 and 2 threads.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createCpuBackend, type CpuBackend } from '../src/backend/cpu/index.js';
import { attentionForward, type CpuKVLayer } from '../src/backend/cpu/attention.js';
import { attentionForwardWasm, flashDecoding } from '../src/backend/cpu/attention-wasm.js';
import type { KernelHost } from '../src/backend/cpu/matmul.js';
import type { AttentionKind, AttentionParams, KVCache } from '../src/backend/backend.js';
import type { TrainAttentionParams } from '../src/backend/train-ops.js';
import { attentionBackward, attentionForwardTrain } from '../src/train/attention-backward.js';

function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 32 - 0.5;
  };
}

function rand(n: number, seed: number, scale = 1): Float32Array {
  const r = rng(seed);
  return Float32Array.from({ length: n }, () => r() * 2 * scale);
}

function maxErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= m)) m = Number.isNaN(d) ? Infinity : d;
  }
  return m;
}

function maxAbs(a: ArrayLike<number>): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]));
  return m;
}

const backends = new Map<number, CpuBackend>();
function backend(threads: number): CpuBackend {
  let be = backends.get(threads);
  if (!be) backends.set(threads, (be = createCpuBackend({ threads })));
  return be;
}

async function workersUp(be: CpuBackend): Promise<void> {
  const e = be.engine as unknown as { workersReady(): number };
  for (let i = 0; i < 200 && e.workersReady() < be.engine.threads - 1; i++) await new Promise((r) => setTimeout(r, 10));
}

/** The same host with a small scratch: forces the chunked paths (a sequence / a block of queries per call). */
function smallScratch(h: KernelHost, bytes: number): KernelHost {
  return {
    threads: h.threads,
    scratchOff: h.scratchOff,
    scratchBytes: bytes,
    allocShared: (n) => h.allocShared(n),
    freeShared: (a, o) => h.freeShared(a, o),
    memory: (a) => h.memory(a),
    runAttention: (a, d, t, c, p) => h.runAttention(a, d, t, c, p),
  };
}

interface Shape { B: number; Hq: number; Hkv: number; D: number }

function params(kind: AttentionKind, s: Shape, bigMass = false): AttentionParams {
  const massSq = Float32Array.from({ length: s.Hq }, (_, h) => (bigMass ? 9 + h : 0.3 + 0.4 * h));
  return { kind, numHeads: s.Hq, numKVHeads: s.Hkv, headDim: s.D, massSq: kind === 'dot' ? null : massSq, eps: 0.1, scale: 1 / Math.sqrt(s.D) };
}

/** f64 reference over the cache: full probabilities, d² = Σ(q − k)² in f64. */
function reference(q: Float32Array, L: CpuKVLayer, valid: Uint8Array, B: number, T: number, start: number, maxLen: number, p: AttentionParams): Float64Array {
  const { numHeads: Hq, numKVHeads: Hkv, headDim: D } = p;
  const out = new Float64Array(B * T * Hq * D);
  for (let b = 0; b < B; b++) for (let t = 0; t < T; t++) for (let h = 0; h < Hq; h++) {
    const qo = ((b * T + t) * Hq + h) * D;
    const kb = (b * Hkv + Math.floor(h / (Hq / Hkv))) * maxLen;
    const s: number[] = [];
    const js: number[] = [];
    for (let j = 0; j <= start + t; j++) {
      if (!valid[b * maxLen + j]) continue;
      let d2 = 0, dot = 0;
      for (let d = 0; d < D; d++) {
        const x = q[qo + d], y = L.k[(kb + j) * D + d];
        d2 += (x - y) * (x - y);
        dot += x * y;
      }
      s.push(p.kind === 'dot' ? p.scale * dot : p.massSq![h] / (d2 + p.eps));
      js.push(j);
    }
    if (s.length === 0) continue;
    const mx = Math.max(...s);
    const w = s.map((x) => (p.kind === 'gravity-pure' ? x : Math.exp(x - mx)));
    const sum = w.reduce((a, x) => a + x, 0);
    for (let i = 0; i < js.length; i++) for (let d = 0; d < D; d++) out[qo + d] += (w[i] / sum) * L.v[(kb + js[i]) * D + d];
  }
  return out;
}

function fillCache(be: CpuBackend, cache: KVCache, s: Shape, T: number, start: number, seed: number): void {
  const k = be.fromF32(rand(s.B * T * s.Hkv * s.D, seed), [s.B * T, s.Hkv * s.D]);
  const v = be.fromF32(rand(s.B * T * s.Hkv * s.D, seed + 1), [s.B * T, s.Hkv * s.D]);
  be.writeKV(cache, 0, k, v, start, T);
}

const SHAPES: Shape[] = [
  { B: 2, Hq: 6, Hkv: 2, D: 8 }, // GQA, group of 3
  { B: 3, Hq: 3, Hkv: 3, D: 64 }, // MHA, real head size
  { B: 1, Hq: 14, Hkv: 2, D: 64 }, // the Qwen2.5-0.5B grouping
];

for (const threads of [1, 2]) {
  for (const kind of ['gravity', 'dot', 'gravity-pure'] as AttentionKind[]) {
    test(`inference ${kind}, ${threads} thread(s): WASM = JS = f64 reference (prefill 13, chunk 7, decode; padding)`, async () => {
      const be = backend(threads);
      await workersUp(be);
      for (const s of SHAPES) {
        for (const bigMass of kind === 'gravity' ? [false, true] : [false]) {
          const p = params(kind, s, bigMass);
          const maxLen = 29;
          const cache = be.createKVCache(1, s.B, maxLen, s.Hkv, s.D);
          const L = (cache as unknown as { layers: CpuKVLayer[] }).layers[0];
          assert.ok(L.wasm, 'the cache lives in kernel memory');
          // sequence 0 fully valid; the last one left-padded by 4 (its first 4 query rows see no valid key)
          cache.keyValid.fill(1);
          if (s.B > 1) cache.keyValid.fill(0, (s.B - 1) * maxLen, (s.B - 1) * maxLen + 4);
          let start = 0;
          for (const [T, tag] of [[13, 'prefill'], [7, 'chunk'], [1, 'decode'], [1, 'decode']] as const) {
            fillCache(be, cache, s, T, start, 100 + start);
            const q = rand(s.B * T * s.Hq * s.D, 7 + start, 1.5);
            const w = new Float32Array(q.length);
            const j = new Float32Array(q.length);
            attentionForwardWasm(be.attentionHost!, w, q, L, cache.keyValid, s.B, T, start, maxLen, p);
            attentionForward(j, q, L, cache.keyValid, s.B, T, start, maxLen, p);
            const ref = reference(q, L, cache.keyValid, s.B, T, start, maxLen, p);
            const scale = Math.max(1, maxAbs(ref));
            const what = `${kind}${bigMass ? ' (M²/ε > 64: online max)' : ''} [${s.B},${s.Hq}/${s.Hkv},${s.D}] ${tag}`;
            assert.ok(maxErr(w, ref) < 2e-6 * scale, `${what}: wasm vs f64 ${maxErr(w, ref)}`);
            assert.ok(maxErr(j, ref) < 2e-6 * scale, `${what}: js vs f64 ${maxErr(j, ref)}`);
            if (s.B > 1 && start === 0) {
              // the padded sequence's first 4 rows have no valid key: zeros
              const row = s.Hq * s.D;
              for (let t = 0; t < 4; t++) assert.equal(maxAbs(w.subarray(((s.B - 1) * T + t) * row, ((s.B - 1) * T + t + 1) * row)), 0);
            }
            // the backend entry point takes the same path
            const viaBackend = await be.read(be.attention(be.fromF32(q, [s.B * T, s.Hq * s.D]), cache, 0, start, T, p));
            assert.equal(maxErr(viaBackend, w), 0);
            start += T;
          }
        }
      }
    });
  }
}

test('inference: lse and the chunked path (small scratch: one sequence and 5 queries per call) equal the JS loops', () => {
  const be = backend(2);
  const s = { B: 3, Hq: 6, Hkv: 2, D: 16 };
  for (const kind of ['gravity', 'dot', 'gravity-pure'] as AttentionKind[]) {
    const p = params(kind, s);
    const maxLen = 23;
    const cache = be.createKVCache(1, s.B, maxLen, s.Hkv, s.D);
    const L = (cache as unknown as { layers: CpuKVLayer[] }).layers[0];
    cache.keyValid.fill(1);
    cache.keyValid.fill(0, maxLen, maxLen + 2);
    fillCache(be, cache, s, 17, 0, 3);
    const q = rand(s.B * 17 * s.Hq * s.D, 11);
    const host = smallScratch(be.attentionHost!, 256 + 64 + 64 + 128 + 5 * (s.Hq * s.D * 8 + s.Hq * 4) + 8 * 64);
    const w = new Float32Array(q.length), j = new Float32Array(q.length);
    const wl = new Float32Array(s.B * 17 * s.Hq), jl = new Float32Array(s.B * 17 * s.Hq);
    attentionForwardWasm(host, w, q, L, cache.keyValid, s.B, 17, 0, maxLen, p, wl);
    attentionForward(j, q, L, cache.keyValid, s.B, 17, 0, maxLen, p, jl);
    assert.ok(maxErr(w, j) < 2e-6, `${kind} out ${maxErr(w, j)}`);
    const finite = (a: Float32Array) => Array.from(a, (x) => (Number.isFinite(x) ? x : -1e9));
    assert.ok(maxErr(finite(wl), finite(jl)) < 2e-6 * Math.max(1, maxAbs(jl.filter(Number.isFinite))), `${kind} lse ${maxErr(finite(wl), finite(jl))}`);
  }
});

test('flash-decoding (2 threads, keys split into blocks, partials combined): = JS = f64, lse too, padding', async () => {
  const be = backend(2);
  await workersUp(be);
  const e = be.engine as unknown as { workerChunks(): number };
  const before = e.workerChunks();
  const saved = { ...flashDecoding };
  try {
    for (const [minKeys, minBlockKeys] of [[256, 128], [8, 4]]) {
      flashDecoding.minKeys = minKeys;
      flashDecoding.minBlockKeys = minBlockKeys;
      for (const s of [{ B: 1, Hq: 14, Hkv: 2, D: 64 }, { B: 1, Hq: 8, Hkv: 1, D: 128 }]) {
        for (const [kind, big] of [['gravity', false], ['gravity', true], ['dot', false], ['gravity-pure', false]] as const) {
          const p = params(kind, s, big);
          const maxLen = 331;
          const cache = be.createKVCache(1, s.B, maxLen, s.Hkv, s.D);
          const L = (cache as unknown as { layers: CpuKVLayer[] }).layers[0];
          cache.keyValid.fill(1);
          cache.keyValid.fill(0, (s.B - 1) * maxLen, (s.B - 1) * maxLen + 9); // left padding
          fillCache(be, cache, s, 327, 0, 21);
          for (const [T, start] of [[1, 326], [2, 327], [1, 329]]) {
            if (start > 327) fillCache(be, cache, s, start - 327, 327, 22);
            if (start === 327) fillCache(be, cache, s, 2, 327, 23);
            const q = rand(s.B * T * s.Hq * s.D, 31 + start, 1.5);
            const w = new Float32Array(q.length), j = new Float32Array(q.length);
            const wl = new Float32Array(s.B * T * s.Hq), jl = new Float32Array(s.B * T * s.Hq);
            attentionForwardWasm(be.attentionHost!, w, q, L, cache.keyValid, s.B, T, start, maxLen, p, wl);
            attentionForward(j, q, L, cache.keyValid, s.B, T, start, maxLen, p, jl);
            const ref = reference(q, L, cache.keyValid, s.B, T, start, maxLen, p);
            const what = `${kind}${big ? ' big' : ''} [${s.B},${s.Hq}/${s.Hkv}] T ${T} at ${start}, blocks >= ${minBlockKeys}`;
            assert.ok(maxErr(w, ref) < 2e-6 * Math.max(1, maxAbs(ref)), `${what}: ${maxErr(w, ref)}`);
            assert.ok(maxErr(wl, jl) < 2e-6 * Math.max(1, maxAbs(jl)), `${what} lse: ${maxErr(wl, jl)}`);
          }
        }
      }
    }
  } finally {
    Object.assign(flashDecoding, saved);
  }
  assert.ok(e.workerChunks() > before, 'no key block ran on a worker');
});

// ---------------------------------------------------------------------------------------------------------
// training

function trainParams(kind: AttentionKind, Hq: number, Hkv: number, D: number): TrainAttentionParams {
  const massLog = Float64Array.from({ length: Hq }, (_, h) => -0.5 + 0.3 * h);
  return { kind, numHeads: Hq, numKVHeads: Hkv, headDim: D, massLog: kind === 'dot' ? null : massLog, eps: 0.1, scale: 1 / Math.sqrt(D) };
}

function trainCase(host: KernelHost | null, B: number, T: number, p: TrainAttentionParams, f64: boolean) {
  const { numHeads: Hq, numKVHeads: Hkv, headDim: D } = p;
  const conv = (a: Float32Array) => (f64 ? Float64Array.from(a) : a);
  const q = conv(rand(B * T * Hq * D, 1, 1.2)), k = conv(rand(B * T * Hkv * D, 2, 1.2)), v = conv(rand(B * T * Hkv * D, 3));
  const dout = conv(rand(B * T * Hq * D, 4));
  const mk = (n: number) => (f64 ? new Float64Array(n) : new Float32Array(n));
  const out = mk(q.length), lse = mk(B * T * Hq);
  attentionForwardTrain(out, lse, q, k, v, B, T, p, host);
  const dq = mk(q.length), dk = mk(k.length), dv = mk(v.length), dm = mk(Hq);
  attentionBackward(dq, dk, dv, dm, dout, q, k, v, out, lse, B, T, p, host);
  return { out, lse, dq, dk, dv, dm };
}

for (const threads of [1, 2]) {
  test(`training ${threads} thread(s): WASM forward + backward = f64 loops (gravity, dot, gravity-pure; GQA, MHA; odd T)`, async () => {
    const be = backend(threads);
    await workersUp(be);
    for (const [B, T, Hq, Hkv, D] of [[3, 11, 6, 2, 16], [2, 9, 3, 3, 8], [1, 37, 4, 2, 64]]) {
      for (const kind of ['gravity', 'dot', 'gravity-pure'] as AttentionKind[]) {
        const p = trainParams(kind, Hq, Hkv, D);
        const ref = trainCase(null, B, T, p, true);
        const got = trainCase(be.attentionHost, B, T, p, false);
        const chunked = trainCase(smallScratch(be.attentionHost!, 256 + 64 + 12 * 64 + Hq * 8 + T * (4 * Hq * D + 4 * Hkv * D + Hq) * 4 + 64), B, T, p, false);
        for (const key of ['out', 'lse', 'dq', 'dk', 'dv', 'dm'] as const) {
          const tol = (key === 'out' || key === 'lse' ? 2e-6 : 2e-5) * Math.max(1, maxAbs(ref[key]));
          const what = `${kind} [${B},${T},${Hq}/${Hkv},${D}] ${key}`;
          assert.ok(maxErr(got[key], ref[key]) < tol, `${what}: ${maxErr(got[key], ref[key])}`);
          assert.ok(maxErr(chunked[key], ref[key]) < tol, `${what} (chunked): ${maxErr(chunked[key], ref[key])}`);
        }
        if (kind === 'gravity') assert.ok(maxAbs(got.dm) > 1e-3, 'the mass gradient is not trivially 0');
        if (kind === 'gravity-pure') assert.ok(maxAbs(got.dm) < 1e-5, 'gravity-pure: the mass cancels');
      }
    }
  });
}

test('2 threads: the worker threads take attention tasks', async () => {
  const be = backend(2);
  await workersUp(be);
  const e = be.engine as unknown as { workerChunks(): number };
  const before = e.workerChunks();
  const p = trainParams('gravity', 4, 2, 64);
  for (let i = 0; i < 5; i++) trainCase(be.attentionHost, 8, 64, p, false);
  assert.ok(e.workerChunks() > before, 'no chunk ran on a worker');
});

test('attention: "js" keeps the cache in plain arrays and the results agree', async () => {
  const js = createCpuBackend({ threads: 1, attention: 'js' });
  const wasm = backend(1);
  const s = { B: 2, Hq: 6, Hkv: 2, D: 8 };
  const p = params('gravity', s);
  const outs: Float32Array[] = [];
  for (const be of [js, wasm]) {
    const cache = be.createKVCache(1, s.B, 9, s.Hkv, s.D);
    cache.keyValid.fill(1);
    fillCache(be, cache, s, 9, 0, 5);
    assert.equal(!!(cache as unknown as { layers: CpuKVLayer[] }).layers[0].wasm, be === wasm);
    outs.push(await be.read(be.attention(be.fromF32(rand(s.B * 9 * s.Hq * s.D, 9), [s.B * 9, s.Hq * s.D]), cache, 0, 0, 9, p)));
  }
  assert.ok(maxErr(outs[0], outs[1]) < 2e-6);
  js.engine.close();
});

test('close the engines', () => {
  for (const be of backends.values()) be.engine.close();
});
