/**
 * Decode-only paths of the WebGPU backend against references: the split-K GEMV over long rows (2 warps per row by
 * default) against a float64 product, the GPU key mask and split-K decode attention (1 to 7 splits) against the CPU
 * backend's attention.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createWebGPUBackend, type WebGPUBackend } from '../src/backend/webgpu/index.js';
import { attentionParams } from '../src/attention/registry.js';
import type { Backend } from '../src/backend/backend.js';
import { headDecodeCfg } from '../src/backend/webgpu/attention-decode.js';
import { fromF32 } from '../src/tensor/dtype.js';
import { relErr } from './helpers/fixtures.js';
import { applyRepetitionPenalty, drawToken } from '../src/generate/sampling.js';
import { rand } from './helpers/random.js';

let be: WebGPUBackend;
before(async () => {
  be = await createWebGPUBackend();
});
after(() => be?.destroy());

test('GEMV over long rows (split-K: 2 warps a row by default, GRAVITY_GEMV_KSPLIT): N = 1..8, bf16 and f32, bias, residual', async () => {
  const IN = 8192 + 8 * 5; // ragged against every split's 32-vector chunks
  const OUT = 37;
  for (const dt of ['BF16', 'F32'] as const) {
    const wv = rand(OUT * IN, 21, 0.2);
    const host = fromF32(wv, [OUT, IN], dt);
    const w = be.upload(host);
    // the weights as the kernel sees them: bf16 widens to f32 by a 16-bit shift
    const bits = host.data as Uint16Array;
    const wExact = dt === 'F32' ? wv : new Float32Array(new Uint32Array(bits.length).map((_, i) => bits[i] << 16).buffer);
    const bv = rand(OUT, 22);
    const b = be.fromF32(bv, [OUT]);
    for (const N of [1, 3, 8]) {
      const xv = rand(N * IN, 23 + N);
      const rv = rand(N * OUT, 24 + N);
      const want = new Float64Array(N * OUT);
      for (let n = 0; n < N; n++) for (let o = 0; o < OUT; o++) {
        let acc = 0;
        for (let i = 0; i < IN; i++) acc += wExact[o * IN + i] * xv[n * IN + i];
        want[n * OUT + o] = rv[n * OUT + o] + acc + bv[o];
      }
      const got = await be.read(be.fused.linearAdd(be.fromF32(xv, [N, IN]), w, b, be.fromF32(rv, [N, OUT])));
      const e = relErr(got, want);
      assert.ok(e <= 1e-5, `${dt} N=${N}: rel err ${e.toExponential(2)}`);
    }
  }
});

test('GEMV over short rows: 2 warps a row for small outputs (the o projection), 1 for large ones (lm_head)', async () => {
  const IN = 328; // 41 bf16 vectors of 8: the second warp takes the ragged 9 past the first one's 32
  for (const OUT of [40, 16400]) {
    const wv = rand(OUT * IN, 31, 0.2);
    const host = fromF32(wv, [OUT, IN], 'BF16');
    const bits = host.data as Uint16Array;
    const wExact = new Float32Array(new Uint32Array(bits.length).map((_, i) => bits[i] << 16).buffer);
    const w = be.upload(host);
    for (const N of [1, 3]) {
      const xv = rand(N * IN, 32 + N);
      const want = new Float64Array(N * OUT);
      for (let n = 0; n < N; n++) for (let o = 0; o < OUT; o++) {
        let acc = 0;
        for (let i = 0; i < IN; i++) acc += wExact[o * IN + i] * xv[n * IN + i];
        want[n * OUT + o] = acc;
      }
      const e = relErr(await be.read(be.linear(be.fromF32(xv, [N, IN]), w, null)), want);
      assert.ok(e <= 1e-5, `OUT=${OUT} N=${N}: rel err ${e.toExponential(2)}`);
    }
  }
});

/** the same random K/V (seeds s, s + 1) in a one-layer cache of each backend: [webgpu, cpu] */
async function twinCaches(Hkv: number, D: number, maxLen: number, seed: number) {
  const { createCpuBackend } = await import('../src/backend/cpu/index.js');
  const cpu = createCpuBackend();
  const k = rand(maxLen * Hkv * D, seed, 0.5);
  const v = rand(maxLen * Hkv * D, seed + 1);
  const caches = [be, cpu].map((b) => {
    const c = b.createKVCache(1, 1, maxLen, Hkv, D);
    b.writeKV(c, 0, b.fromF32(k, [maxLen, Hkv * D]), b.fromF32(v, [maxLen, Hkv * D]), 0, maxLen);
    return c;
  });
  return { cpu, caches };
}

test('the key mask on the GPU follows the host mask: whole uploads (> 4096 changed slots) and scattered slots', async () => {
  const Hq = 4, Hkv = 2, D = 16, maxLen = 4300;
  const cfg = { numHeads: Hq, numKVHeads: Hkv, headDim: D } as never;
  const { cpu, caches } = await twinCaches(Hkv, D, maxLen, 31);
  const q = rand(Hq * D, 33, 0.5);
  const p = attentionParams('gravity', cfg, new Float32Array(Hq).fill(0.5), 0.1);
  const steps: [string, (m: Uint8Array) => void][] = [
    ['all 4300 slots valid (a whole upload)', (m) => m.fill(1)],
    ['100 slots masked (scattered)', (m) => m.fill(0, 1000, 1100)],
    ['one slot back (scattered)', (m) => (m[1050] = 1)],
    ['half masked (a whole upload)', (m) => m.fill(0, 0, 4200)],
  ];
  for (const [what, change] of steps) {
    for (const c of caches) change(c.keyValid);
    const got = await be.read(be.attention(be.fromF32(q, [1, Hq * D]), caches[0], 0, maxLen - 1, 1, p));
    const want = await cpu.read(cpu.attention(cpu.fromF32(q, [1, Hq * D]), caches[1], 0, maxLen - 1, 1, p));
    const e = relErr(got, want);
    assert.ok(e <= 1e-5, `${what}: rel err ${e.toExponential(2)}`);
  }
});

test('decode attention split-K over 1 to 7 splits (the combine reads 4 splits a step): gravity fixed and running max, dot', async () => {
  const Hq = 8, Hkv = 2, D = 32, maxLen = 240;
  const cfg = { numHeads: Hq, numKVHeads: Hkv, headDim: D } as never;
  const { cpu, caches } = await twinCaches(Hkv, D, maxLen, 41);
  for (const c of caches) {
    c.keyValid.fill(1);
    c.keyValid[7] = 0;
  }
  const kinds: [string, ReturnType<typeof attentionParams>][] = [
    ['gravity fixed max', attentionParams('gravity', cfg, new Float32Array(Hq).fill(0.5), 0.1)],
    ['gravity running max', attentionParams('gravity', cfg, Float32Array.from({ length: Hq }, (_, h) => 1 + h), 0.1)],
    ['dot', attentionParams('dot', cfg, new Float32Array(Hq), 0.1)],
  ];
  // 32 keys a split: 20 keys is one split, 50 two, 90 three, 150 five, 220 seven (the one-dispatch kernel off)
  const short = be.ctx.decodeTuning.shortKeys;
  be.ctx.decodeTuning.shortKeys = 0;
  try {
    for (const keys of [20, 50, 90, 150, 220]) {
      const q = rand(Hq * D, 43 + keys, 0.5);
      for (const [what, p] of kinds) {
        const got = await be.read(be.attention(be.fromF32(q, [1, Hq * D]), caches[0], 0, keys - 1, 1, p));
        const want = await cpu.read(cpu.attention(cpu.fromF32(q, [1, Hq * D]), caches[1], 0, keys - 1, 1, p));
        const e = relErr(got, want);
        assert.ok(e <= 1e-5, `${what}, ${keys} keys: rel err ${e.toExponential(2)}`);
      }
    }
  } finally {
    be.ctx.decodeTuning.shortKeys = short;
  }
});

/** one-layer caches of the same random K/V (seeds seed, seed + 1) per backend, slots first, first + step, ... masked */
function maskedCaches(bks: Backend[], B: number, maxLen: number, Hkv: number, D: number, seed: number, first: number, step: number) {
  const k = rand(B * maxLen * Hkv * D, seed, 0.5);
  const v = rand(B * maxLen * Hkv * D, seed + 1);
  return bks.map((bk) => {
    const c = bk.createKVCache(1, B, maxLen, Hkv, D);
    // rows [B * maxLen, Hkv * D] in (batch, slot) order
    bk.writeKV(c, 0, bk.fromF32(k, [B * maxLen, Hkv * D]), bk.fromF32(v, [B * maxLen, Hkv * D]), 0, maxLen);
    c.keyValid.fill(1);
    for (let s = first; s < B * maxLen; s += step) c.keyValid[s] = 0;
    return c;
  });
}

/** gravity with a fixed max (small masses) and a running max, gravity-pure and dot */
function everyKind(cfg: never, Hq: number): [string, ReturnType<typeof attentionParams>][] {
  return [
    ['gravity fixed max', attentionParams('gravity', cfg, new Float32Array(Hq).fill(0.5), 0.1)],
    ['gravity running max', attentionParams('gravity', cfg, Float32Array.from({ length: Hq }, (_, h) => 1 + h), 0.1)],
    ['gravity-pure', attentionParams('gravity-pure', cfg, new Float32Array(Hq).fill(0.3), 0.1)],
    ['dot', attentionParams('dot', cfg, new Float32Array(Hq), 0.1)],
  ];
}

test('decode attention in one dispatch (workgroups per query head): every kind, ragged key counts, masked keys, value slices, head dims 32 and 128, batch 2', async () => {
  const { createCpuBackend } = await import('../src/backend/cpu/index.js');
  const cpu = createCpuBackend();
  const tuning = { ...be.ctx.decodeTuning };
  be.ctx.decodeTuning.shortKeys = 1 << 20;
  try {
    for (const [Hq, Hkv, D, B] of [[8, 2, 32, 1], [4, 1, 128, 2]]) {
      const maxLen = 300;
      assert.ok(headDecodeCfg(be.ctx, D) || be.ctx.sg < 4, `the kernel applies to head dim ${D} with subgroups of ${be.ctx.sg}`);
      const cfg = { numHeads: Hq, numKVHeads: Hkv, headDim: D } as never;
      const caches = maskedCaches([be, cpu], B, maxLen, Hkv, D, 61 + D, 3, 17);
      const kinds = everyKind(cfg, Hq);
      // value slices per head: 1 (all columns), 2, and 8 (fewer vec4 columns than the team's lanes where D = 32)
      for (const vsplit of [1, 2, 8]) {
        be.ctx.decodeTuning.vsplit = vsplit;
        for (const keys of vsplit === 1 ? [1, 5, 33, 130, 300] : [5, 130]) {
          const q = rand(B * Hq * D, 63 + keys, 0.5);
          for (const [what, p] of kinds) {
            const got = await be.read(be.attention(be.fromF32(q, [B, Hq * D]), caches[0], 0, keys - 1, 1, p));
            const want = await cpu.read(cpu.attention(cpu.fromF32(q, [B, Hq * D]), caches[1], 0, keys - 1, 1, p));
            const e = relErr(got, want);
            assert.ok(e <= 1e-5, `D=${D} B=${B} ${what}, ${keys} keys, ${vsplit} value slices: rel err ${e.toExponential(2)}`);
          }
        }
      }
    }
  } finally {
    be.ctx.decodeTuning = tuning;
  }
});

test('decode attention + o projection with key-split partials merged by the o GEMV: every kind, splits 1 to 8, value slices, masked keys, bias, batch 2, bf16 and f32 weights', async () => {
  const { createCpuBackend } = await import('../src/backend/cpu/index.js');
  const cpu = createCpuBackend();
  const tuning = { ...be.ctx.decodeTuning };
  be.ctx.decodeTuning.shortKeys = 1 << 20;
  try {
    // the second shape stages 2 x 1024 inputs, more vec4 than the GEMV workgroup has threads
    for (const [Hq, Hkv, D, B, C] of [[8, 2, 32, 1, 48], [8, 2, 128, 2, 40]]) {
      const maxLen = 300;
      const cfg = { numHeads: Hq, numKVHeads: Hkv, headDim: D } as never;
      const caches = maskedCaches([be, cpu], B, maxLen, Hkv, D, 71 + D, 5, 13);
      const kinds = everyKind(cfg, Hq);
      for (const dt of ['BF16', 'F32'] as const) {
        const host = fromF32(rand(C * Hq * D, 73, 0.2), [C, Hq * D], dt);
        const w = [be.upload(host), cpu.upload(host)];
        const bias = [be.fromF32(rand(C, 74), [C]), cpu.fromF32(rand(C, 74), [C])];
        // [parts, value slices, keys, staged merge]: at least 4 keys a part (5 keys: one part, no split), ragged last
        // parts, 8 parts (the cap), the merge staged in workgroup memory and at every load
        for (const [parts, vsplit, keys, stage] of [[2, 1, 5, 1], [2, 1, 40, 1], [5, 1, 130, 1], [3, 2, 130, 0], [8, 1, 250, 1], [2, 1, 299, 0], [7, 2, 300, 1], [16, 2, 300, 0]]) {
          Object.assign(be.ctx.decodeTuning, { parts, vsplit, stage: stage === 1, partMinKeys: 4, partKeys: 1 << 20 });
          const q = rand(B * Hq * D, 75 + keys, 0.5);
          const res = rand(B * C, 76 + keys);
          for (const [what, p] of kinds) {
            const got = await be.read(be.fused.attentionOut(be.fromF32(q, [B, Hq * D]), caches[0], 0, keys - 1, 1, p, w[0], bias[0], be.fromF32(res, [B, C])));
            const a = cpu.attention(cpu.fromF32(q, [B, Hq * D]), caches[1], 0, keys - 1, 1, p);
            const want = await cpu.read(cpu.add(cpu.fromF32(res, [B, C]), cpu.linear(a, w[1], bias[1])));
            const e = relErr(got, want);
            assert.ok(e <= 1e-5, `D=${D} B=${B} ${dt} ${what}, ${keys} keys, ${parts} parts, ${vsplit} value slices, staged ${stage}: rel err ${e.toExponential(2)}`);
          }
        }
      }
    }
  } finally {
    be.ctx.decodeTuning = tuning;
  }
});

/** the CPU draw in float64: first id whose running sum of exp((x - max) / T) passes u * sum; also how close u was to a boundary */
function drawRef(x: Float32Array, T: number, u: number): { id: number; margin: number } {
  let max = -Infinity;
  for (const v of x) max = Math.max(max, v);
  const w = Array.from(x, (v) => Math.exp((v - max) / T));
  const total = w.reduce((a, b) => a + b, 0);
  const target = u * total;
  let acc = 0;
  for (let i = 0; i < w.length; i++) {
    const prev = acc;
    acc += w[i];
    if (acc > target) return { id: i, margin: Math.min(target - prev, acc - target) / total };
  }
  return { id: w.length - 1, margin: 0 };
}

test('sampleDevice: temperature draws equal the float64 inverse-CDF draw for the same uniforms; NaN rows are an error', async () => {
  const V = 5000; // 5 chunks of 1000: the draw crosses chunk boundaries
  const R = 3;
  const x = rand(R * V, 51, 3);
  for (let i = 0; i < V; i += 7) x[V + i] = -Infinity; // row 1: -inf logits weigh 0
  const xt = be.fromF32(x, [R, V]);
  let checked = 0;
  for (const T of [0.7, 1.5]) {
    for (let k = 0; k < 40; k++) {
      const u = Float32Array.from({ length: R }, (_, r) => ((k * 0.618034 + r * 0.25) % 1));
      const ids = await be.readIds(be.sampleDevice(xt, T, u));
      for (let r = 0; r < R; r++) {
        const ref = drawRef(x.subarray(r * V, (r + 1) * V), T, u[r]);
        if (ref.margin < 1e-5) continue; // within f32 rounding of a boundary: either side is a right answer
        assert.equal(ids[r], ref.id, `T=${T} u=${u[r]} row ${r}`);
        checked++;
      }
    }
  }
  assert.ok(checked > 200, `${checked} draws checked`);
  // u = 0 takes the first token with a non-zero weight; u just below 1 the last
  const y = be.fromF32(Float32Array.from([-Infinity, -1, 0.5, 2, -Infinity]), [1, 5]);
  assert.deepEqual([...(await be.readIds(be.sampleDevice(y, 1, Float32Array.of(0))))], [1]);
  assert.deepEqual([...(await be.readIds(be.sampleDevice(y, 1, Float32Array.of(0.99999994))))], [3]);
  const bad = be.fromF32(Float32Array.from([0, NaN, 1, 2]), [1, 4]);
  await assert.rejects(be.readIds(be.sampleDevice(bad, 1, Float32Array.of(0.5))), /NaN or infinity/);
  assert.throws(() => be.sampleDevice(y, 0, Float32Array.of(0.5)), /temperature must be > 0/);
  assert.throws(() => be.sampleDevice(y, 1, Float32Array.of(1)), /uniforms must be in \[0, 1\)/);
  assert.throws(() => be.sampleDevice(xt, 1, Float32Array.of(0.5)), /sampleDevice: 1 uniforms for 3 rows/);
});

test('sampleDevice with top-k / top-p / min-p: the CPU sampler\'s draw (drawToken) for the same uniforms, ties at the boundary included', async () => {
  const V = 5000;
  const R = 3;
  const x = rand(R * V, 71, 3);
  for (let i = 0; i < V; i += 7) x[V + i] = -Infinity;
  // row 2: 300 tokens tie at 0.25 just below 9 higher ones (a top-k boundary inside the ties, which the sort keeps)
  for (let i = 0; i < V; i++) x[2 * V + i] = i % 16 === 3 && i < 4800 ? 0.25 : i % 500 === 7 ? 2 + i / 1000 : -1 - (i % 13) / 7;
  const xt = be.fromF32(x, [R, V]);
  const filters = [{ topK: 1 }, { topK: 5 }, { topK: 50, topP: 0.8 }, { topK: 256, topP: 0.9, minP: 0.05 }, { topK: 20, minP: 0.1 }];
  let checked = 0;
  for (const f of filters) {
    for (const T of [0.7, 1.5]) {
      for (let k = 0; k < 12; k++) {
        const u = Float32Array.from({ length: R }, (_, r) => ((k * 0.618034 + r * 0.25 + 0.01) % 1));
        const ids = await be.readIds(be.sampleDevice(xt, T, u, f));
        for (let r = 0; r < R; r++) {
          const row = x.subarray(r * V, (r + 1) * V);
          const ref = drawToken(row, T, u[r], f);
          // near a boundary (of the draw or of the top-p cut) f32 may fall on the other side: not checked there
          const near = [-2e-6, 2e-6].some((d) => drawToken(row, T, Math.min(Math.max(u[r] + d, 0), 0.9999999), f) !== ref)
            || (f.topP !== undefined && [-1e-5, 1e-5].some((d) => drawToken(row, T, u[r], { ...f, topP: f.topP + d }) !== ref));
          if (near) continue;
          assert.equal(ids[r], ref, `${JSON.stringify(f)} T=${T} u=${u[r]} row ${r}`);
          checked++;
        }
      }
    }
  }
  assert.ok(checked > 300, `${checked} draws checked`);
  // more ties at the boundary than the workgroup holds: drawn as one block in vocabulary order
  const flat = new Float32Array(V).fill(0);
  for (let i = 0; i < 6; i++) flat[100 + 700 * i] = 1 + i / 10;
  const ft = be.fromF32(flat, [1, V]);
  for (const f of [{ topK: 10 }, { topK: 10, topP: 0.5 }, { topK: 30, minP: 0.2 }]) {
    for (const uu of [0, 0.1, 0.3, 0.55, 0.8, 0.999]) {
      const [id] = await be.readIds(be.sampleDevice(ft, 1, Float32Array.of(uu), f));
      assert.equal(id, drawToken(flat, 1, uu, f), `flat row ${JSON.stringify(f)} u=${uu}`);
    }
  }
  const bad = be.fromF32(Float32Array.from([0, 1, NaN, 2]), [1, 4]);
  await assert.rejects(be.readIds(be.sampleDevice(bad, 1, Float32Array.of(0.5), { topK: 2 })), /NaN or infinity/);
  assert.throws(() => be.sampleDevice(xt, 1, new Float32Array(R), { topP: 0.9 }), /filters need a top-k in \[1, 256\] on the device, got top-k 0/);
  assert.throws(() => be.sampleDevice(xt, 1, new Float32Array(R), { topK: 257 }), /top-k in \[1, 256\]/);
  assert.throws(() => be.sampleDevice(xt, 1, new Float32Array(R), { topK: 5, topP: 1.5 }), /top-p must be in \(0, 1\], got 1.5/);
});

test('penalizeDevice: the repetition penalty of the CPU sampler, with a mask that marks each step\'s fed ids on the device', async () => {
  const V = 1000;
  const R = 2;
  const x = rand(R * V, 81, 2);
  const hist = [[3, 5, 5, 999, 31, 32, 33], [0, 64, 500]];
  const seen = be.seenMaskDevice(V, hist);
  const prev = be.argmaxDevice(be.fromF32(Float32Array.from({ length: R * V }, (_, i) => (i % V === 77 + (i >= V ? 100 : 0) ? 1 : 0)), [R, V])); // ids 77, 177
  const want = (ids: number[][], p: number) => {
    const out = x.slice();
    ids.forEach((h, r) => applyRepetitionPenalty(out.subarray(r * V, (r + 1) * V), p, h));
    return out;
  };
  // 1.25 is exact in f32 (no rounding difference from the CPU's float64 penalty)
  const t1 = be.fromF32(x, [R, V]);
  be.penalizeDevice(t1, seen, prev, 1.25);
  assert.deepEqual(await be.read(t1), want([[...hist[0], 77], [...hist[1], 177]], 1.25));
  // the marks stay: the next step (no new ids) penalises 77 and 177 too
  const t2 = be.fromF32(x, [R, V]);
  be.penalizeDevice(t2, seen, null, 1.25);
  assert.deepEqual(await be.read(t2), want([[...hist[0], 77], [...hist[1], 177]], 1.25));
  assert.throws(() => be.penalizeDevice(t2, seen, null, 0), /penalty must be > 0/);
  assert.throws(() => be.penalizeDevice(be.fromF32(new Float32Array(3 * V), [3, V]), seen, null, 1.5), /mask \[2, 32\] for 3 rows of 1000 logits/);
  const seen3 = be.seenMaskDevice(V, [[], [], []]);
  assert.throws(() => be.penalizeDevice(be.fromF32(new Float32Array(3 * V), [3, V]), seen3, prev, 1.5), /penalizeDevice: 2 previous ids for 3 rows/);
});
