/**
 * WebGPU backend against straightforward CPU references, on whatever adapter Dawn finds (in CI: Mesa's
 * llvmpipe, installed by scripts/install-vulkan.sh). F16/BF16 weights go through the packed-u32 path the
 * NVIDIA driver needs (the kernels never use shader-f16). No adapter = failure, not a skip.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createWebGPUBackend, webgpuAvailable, type WebGPUBackend } from '../src/backend/webgpu/index.js';
import type { AttentionParams, Tensor } from '../src/backend/backend.js';
import { fromF32, toF32, type DType, type HostTensor } from '../src/tensor/dtype.js';
import { ropeForward, ropeInvFreq } from '../src/backend/cpu/ops.js';
import { attentionForward, attentionProbs, type CpuKVLayer } from '../src/backend/cpu/attention.js';
import { GravityError } from '../src/errors.js';
import { legacyTile as gemmTile } from '../src/backend/webgpu/gemm.js';
import { gravityFixedMax } from '../src/backend/webgpu/attention.js';
import * as path from 'node:path';
import { loadModel } from '../src/model/load.js';
import { FIXTURES, INFERENCE_FIXTURES, argmax, loadExpected, relErr as fixtureErr } from './helpers/fixtures.js';
import { rand } from './helpers/random.js';

let be: WebGPUBackend;

before(async () => {
  be = await createWebGPUBackend();
});
after(() => be?.destroy());

/** max |got - want| / max |want| */
function relErr(got: Float32Array, want: ArrayLike<number>): number {
  assert.equal(got.length, want.length, 'length');
  let num = 0;
  let den = 0;
  for (let i = 0; i < got.length; i++) {
    if (!Number.isFinite(got[i])) return Infinity;
    num = Math.max(num, Math.abs(got[i] - want[i]));
    den = Math.max(den, Math.abs(want[i]));
  }
  return den === 0 ? num : num / den;
}

function close(got: Float32Array, want: ArrayLike<number>, what: string, tol = 1e-4): void {
  const e = relErr(got, want);
  if (process.env.WEBGPU_TEST_VERBOSE) console.log(`${what}: ${e.toExponential(2)}`);
  assert.ok(e <= tol, `${what}: relative error ${e.toExponential(2)} > ${tol}`);
}

/** a weight in the given width, and its exact f32 values (what the kernel must compute with) */
function weight(values: Float32Array, shape: number[], dt: DType): { host: HostTensor; f32: Float32Array } {
  const host = fromF32(values, shape, dt);
  return { host, f32: toF32(host) };
}

const DTYPES: DType[] = ['F32', 'F16', 'BF16'];

describe('webgpu backend', () => {
  test('adapter is found', async () => {
    assert.equal(await webgpuAvailable(), true);
    assert.equal(be.name, 'webgpu');
  });

  test('upload / read round trip in every width, odd length', async () => {
    const v = rand(7, 1);
    for (const dt of DTYPES) {
      const w = weight(v, [7], dt);
      const t = be.upload(w.host);
      assert.equal(t.dtype, dt);
      assert.deepEqual(await be.read(t), w.f32);
      be.dispose(t);
    }
  });

  test('linear: GEMV and GEMM paths, F32/F16/BF16, odd sizes, with and without bias', async () => {
    // each distinct (path, N, width, bias) is its own pipeline, and llvmpipe takes ~1 s to compile one, so the
    // cases cover every path, width and bias form without the full cross product, mostly in the forms the
    // fixture models below use too (pipelines are cached per backend)
    type Case = { N: number; IN: number; OUT: number; dt: DType; bias: DType | null };
    const cases: Case[] = [
      { N: 1, IN: 64, OUT: 67, dt: 'F32', bias: null }, // gemv, vector loads
      { N: 1, IN: 64, OUT: 67, dt: 'BF16', bias: 'BF16' },
      { N: 1, IN: 64, OUT: 67, dt: 'F16', bias: null },
      { N: 1, IN: 1000, OUT: 40, dt: 'BF16', bias: null }, // gemv, 4x unrolled main loop + tail
      { N: 2, IN: 1000, OUT: 40, dt: 'F32', bias: 'F32' },
      { N: 3, IN: 37, OUT: 5, dt: 'F16', bias: null }, // gemv, scalar loads (odd IN)
      { N: 3, IN: 37, OUT: 5, dt: 'BF16', bias: null },
      { N: 5, IN: 72, OUT: 33, dt: 'F32', bias: 'F16' }, // gemv, N rounded up to 8 (guarded)
      { N: 8, IN: 72, OUT: 33, dt: 'F32', bias: 'F16' }, // gemv at its largest N; 72 % 8 = 0, 72 % 16 != 0
      { N: 9, IN: 37, OUT: 67, dt: 'BF16', bias: 'BF16' }, // gemm, everything ragged
      { N: 70, IN: 64, OUT: 130, dt: 'F16', bias: null }, // gemm, several tiles each way
      { N: 70, IN: 64, OUT: 130, dt: 'F32', bias: 'F32' },
      { N: 260, IN: 37, OUT: 11270, dt: 'BF16', bias: null }, // gemm with 128x128 tiles (3 x 89 tiles), ragged
    ];
    assert.equal(gemmTile(260, 11270), 128);
    assert.equal(gemmTile(70, 130), 64);
    let seed = 10;
    for (const { N, IN, OUT, dt, bias } of cases) {
      {
        {
          const withBias = bias !== null;
          const x = rand(N * IN, seed++);
          const w = weight(rand(OUT * IN, seed++), [OUT, IN], dt);
          const b = bias ? weight(rand(OUT, seed++), [OUT], bias) : null;
          const want = new Float64Array(N * OUT);
          for (let n = 0; n < N; n++) for (let o = 0; o < OUT; o++) {
            let s = b ? b.f32[o] : 0;
            for (let k = 0; k < IN; k++) s += x[n * IN + k] * w.f32[o * IN + k];
            want[n * OUT + o] = s;
          }
          const xt = be.fromF32(x, [N, IN]);
          const wt = be.upload(w.host, 'linear');
          const bt = b ? be.upload(b.host) : null;
          const y = be.linear(xt, wt, bt);
          assert.deepEqual(y.shape, [N, OUT]);
          close(await be.read(y), want, `linear N=${N} IN=${IN} OUT=${OUT} ${dt} bias=${withBias}`);
          for (const t of [xt, wt, y, ...(bt ? [bt] : [])]) be.dispose(t);
        }
      }
    }
  });

  test('rmsnorm, add, swiglu', async () => {
    const N = 3;
    const C = 300; // more than one 256-thread pass per row
    const x = rand(N * C, 31, 3);
    for (const dt of DTYPES) {
      const w = weight(rand(C, 32), [C], dt);
      const want = new Float64Array(N * C);
      for (let n = 0; n < N; n++) {
        let ss = 0;
        for (let i = 0; i < C; i++) ss += x[n * C + i] ** 2;
        const r = 1 / Math.sqrt(ss / C + 1e-6);
        for (let i = 0; i < C; i++) want[n * C + i] = x[n * C + i] * r * w.f32[i];
      }
      const y = be.rmsnorm(be.fromF32(x, [N, C]), be.upload(w.host), 1e-6);
      close(await be.read(y), want, `rmsnorm ${dt}`);
    }
    const n = 1000;
    const a = rand(n, 33, 12);
    const b = rand(n, 34, 2);
    const at = be.fromF32(a, [n]);
    const bt = be.fromF32(b, [n]);
    close(await be.read(be.add(at, bt)), Array.from(a, (v, i) => v + b[i]), 'add');
    close(await be.read(be.swiglu(at, bt)), Array.from(a, (v, i) => (v / (1 + Math.exp(-v))) * b[i]), 'swiglu');
  });

  test('embedding in every width, gatherRows', async () => {
    const V = 11;
    const C = 13;
    const ids = Int32Array.from([3, 0, 10, 3, 7]);
    for (const dt of DTYPES) {
      const tb = weight(rand(V * C, 40), [V, C], dt);
      const want = new Float32Array(ids.length * C);
      ids.forEach((id, n) => want.set(tb.f32.subarray(id * C, id * C + C), n * C));
      const y = be.embedding(ids, be.upload(tb.host));
      assert.deepEqual(await be.read(y), want, `embedding ${dt}`);
    }
    const x = rand(6 * C, 41);
    const rows = Int32Array.from([5, 1]);
    const g = be.gatherRows(be.fromF32(x, [6, C]), rows);
    assert.deepEqual(await be.read(g), Float32Array.from([...x.subarray(5 * C, 6 * C), ...x.subarray(C, 2 * C)]));
    assert.throws(() => be.embedding(Int32Array.from([V]), be.upload(weight(rand(V * C, 1), [V, C], 'F32').host)), GravityError);
  });

  test('rope: HF rotate_half, large and negative positions, matches the cpu code', async () => {
    const H = 3;
    const D = 8;
    const pos = Int32Array.from([0, 1, 7, 5000, -3, 40000]);
    const N = pos.length;
    const x = rand(N * H * D, 50);
    const want = new Float32Array(N * H * D);
    ropeForward(want, x, pos, H, D, ropeInvFreq(D, 1e6));
    const y = be.rope(be.fromF32(x, [N, H * D]), pos, H, D, 1e6);
    close(await be.read(y), want, 'rope', 2e-6);
    // independent check of the convention on one pair: position 1, i = 0 has angle 1 rad
    const one = be.rope(be.fromF32(Float32Array.from([1, 0, 0, 0, 0, 0, 0, 0]), [1, 8]), Int32Array.from([1]), 1, 8, 10000);
    const r = await be.read(one);
    assert.ok(Math.abs(r[0] - Math.cos(1)) < 1e-6 && Math.abs(r[4] - Math.sin(1)) < 1e-6, `rope pair: ${r}`);
  });

  test('many dispatches across submits keep per-dispatch data apart', async () => {
    // 150 ropes with different positions: the parameter arena is flushed several times along the way
    const H = 2;
    const D = 4;
    let x = rand(3 * H * D, 60);
    let t: Tensor = be.fromF32(x, [3, H * D]);
    const inv = ropeInvFreq(D, 100);
    for (let i = 0; i < 150; i++) {
      const pos = Int32Array.from([i, 2 * i, 3 + i]);
      const next = be.rope(t, pos, H, D, 100);
      be.dispose(t);
      t = next;
      const y = new Float32Array(x.length);
      ropeForward(y, x, pos, H, D, inv);
      x = y;
    }
    close(await be.read(t), x, 'chained rope', 1e-4);
  });

  describe('fused layer ops equal the op sequences they replace', () => {
    /** the cache layer's k and v as [slots * D] each (they share one buffer: k, then v) */
    async function readKV(c: ReturnType<WebGPUBackend['createKVCache']>): Promise<Float32Array> {
      const L = (c as unknown as { layers: { kv: GPUBuffer }[] }).layers[0];
      return new Float32Array(await be.ctx.readBuffer(L.kv, 0, 2 * c.batch * c.numKVHeads * c.maxLen * c.headDim * 4));
    }
    const up = (x: Float32Array, shape: number[], dt: DType) => be.upload(fromF32(x, shape, dt));
    for (const dt of DTYPES) {
      // N = 1, 3 (GEMV bucket 4), 8 (largest GEMV), 12 (GEMM path); D = 16 and the 3B's D = 128
      for (const [N, D, bias] of [[1, 16, true], [3, 16, false], [8, 16, true], [12, 16, true], [1, 128, true], [2, 128, false]] as const) {
        test(`qkvRope, gateUp (with and without the norm prologue), linearAdd: ${dt}, ${N} rows, D=${D}, ${bias ? '' : 'no '}bias`, async () => {
          const B = N === 12 ? 2 : N; // 12 rows = batch 2 x 6 tokens
          const T = N / B;
          const Hq = 4, Hkv = 2, C = 64, I = 40, maxLen = 16, start = 5;
          const seed = N * 1000 + D + (bias ? 7 : 0) + DTYPES.indexOf(dt) * 100000;
          const h = be.fromF32(rand(N * C, seed, 2), [N, C]);
          const w = {
            q: up(rand(Hq * D * C, seed + 1, 0.3), [Hq * D, C], dt),
            k: up(rand(Hkv * D * C, seed + 2, 0.3), [Hkv * D, C], dt),
            v: up(rand(Hkv * D * C, seed + 3, 0.3), [Hkv * D, C], dt),
            qb: bias ? up(rand(Hq * D, seed + 4), [Hq * D], dt) : null,
            kb: bias ? up(rand(Hkv * D, seed + 5), [Hkv * D], dt) : null,
            vb: bias ? up(rand(Hkv * D, seed + 6), [Hkv * D], dt) : null,
          };
          const pos = Int32Array.from({ length: N }, (_, i) => (i % 3 === 0 ? 40000 + i : i * 7));
          const c1 = be.createKVCache(1, B, maxLen, Hkv, D);
          const c2 = be.createKVCache(1, B, maxLen, Hkv, D);
          // unfused
          const q0 = be.linear(h, w.q, w.qb);
          const k0 = be.linear(h, w.k, w.kb);
          const v0 = be.linear(h, w.v, w.vb);
          const qr = be.rope(q0, pos, Hq, D, 1e6);
          const kr = be.rope(k0, pos, Hkv, D, 1e6);
          be.writeKV(c1, 0, kr, v0, start, T);
          // fused
          const qf = be.fused.qkvRope(h, w, pos, 1e6, Hq, c2, 0, start, T);
          close(await be.read(qf), await be.read(qr), 'q', 1e-6);
          close(await readKV(c2), await readKV(c1), 'k, v in the cache', 1e-6);

          const gate = up(rand(I * C, seed + 7, 0.3), [I, C], dt);
          const upw = up(rand(I * C, seed + 8, 0.3), [I, C], dt);
          const gb = bias ? up(rand(I, seed + 9), [I], dt) : null;
          const ub = bias ? up(rand(I, seed + 10), [I], dt) : null;
          const gt = be.linear(h, gate, gb);
          const ut = be.linear(h, upw, ub);
          close(await be.read(be.fused.gateUp(h, gate, gb, upw, ub)), await be.read(be.swiglu(gt, ut)), 'gate/up + swiglu', 1e-6);

          // the norm prologue: x is the residual stream, the projections read rmsnorm(x) * g
          const nw = up(rand(C, seed + 11), [C], dt);
          const hn = be.rmsnorm(h, nw, 1e-6);
          const c3 = be.createKVCache(1, B, maxLen, Hkv, D);
          const c4 = be.createKVCache(1, B, maxLen, Hkv, D);
          const qn = be.fused.qkvRope(h, w, pos, 1e6, Hq, c3, 0, start, T, { w: nw, eps: 1e-6 });
          const qu = be.fused.qkvRope(hn, w, pos, 1e6, Hq, c4, 0, start, T);
          close(await be.read(qn), await be.read(qu), 'q of the norm prologue', 1e-5);
          close(await readKV(c3), await readKV(c4), 'k, v of the norm prologue', 1e-5);
          close(await be.read(be.fused.gateUp(h, gate, gb, upw, ub, { w: nw, eps: 1e-6 })), await be.read(be.fused.gateUp(hn, gate, gb, upw, ub)), 'gate/up of the norm prologue', 1e-5);

          // the residual epilogue: res + linear(x, w, b), the same f32 operations as linear then add
          const wo = up(rand(C * I, seed + 12, 0.3), [C, I], dt);
          const bo = bias ? up(rand(C, seed + 13), [C], dt) : null;
          const xi = be.fromF32(rand(N * I, seed + 14), [N, I]);
          assert.deepEqual(await be.read(be.fused.linearAdd(xi, wo, bo, h)), await be.read(be.add(h, be.linear(xi, wo, bo))));
          for (const c of [c1, c2, c3, c4]) be.dispose(c);
        });
      }
    }

    test('argmaxRows: per row, first index on ties, negative values', async () => {
      const R = 3, V = 1000;
      const x = rand(R * V, 99, 5).map((v) => v - 10);
      x[1 * V + 17] = 3;
      x[1 * V + 500] = 3; // tie: the first wins
      x[2 * V + V - 1] = 7;
      const want = Int32Array.from({ length: R }, (_, r) => argmax(x.subarray(r * V, (r + 1) * V)));
      assert.deepEqual(await be.argmaxRows(be.fromF32(x, [R, V])), want);
      assert.deepEqual([...want.slice(1)], [17, V - 1]);
    });
  });

  describe('attention', () => {
    /** host mirror of the cache, in the cpu backend's layout */
    function hostLayer(B: number, Hkv: number, maxLen: number, D: number): CpuKVLayer {
      const n = B * Hkv * maxLen;
      return { k: new Float32Array(n * D), v: new Float32Array(n * D), kn: new Float64Array(n) };
    }
    function hostWrite(L: CpuKVLayer, k: Float32Array, v: Float32Array, B: number, T: number, Hkv: number, D: number, maxLen: number, start: number): void {
      for (let b = 0; b < B; b++) for (let t = 0; t < T; t++) for (let h = 0; h < Hkv; h++) {
        const src = ((b * T + t) * Hkv + h) * D;
        const slot = (b * Hkv + h) * maxLen + start + t;
        L.k.set(k.subarray(src, src + D), slot * D);
        L.v.set(v.subarray(src, src + D), slot * D);
        let s = 0;
        for (let d = 0; d < D; d++) s += k[src + d] * k[src + d];
        L.kn[slot] = s;
      }
    }

    const shapes = [
      { Hq: 4, Hkv: 2, D: 16, label: 'GQA 4/2' },
      { Hq: 2, Hkv: 2, D: 16, label: 'MHA 2' },
    ];
    for (const kind of ['gravity', 'dot', 'gravity-pure'] as const) {
      // 14/2 at D = 64 is Qwen2.5-0.5B's shape: 7 heads per group, so 28-row query tiles (not a power of two)
      // 16/2 at D = 128 is Qwen2.5-3B's (the benchmark's): 8 heads per group, 32-row tiles, 16-key tiles here
      const extra = kind === 'gravity' ? [{ Hq: 14, Hkv: 2, D: 64, label: 'GQA 14/2 D=64' }, { Hq: 16, Hkv: 2, D: 128, label: 'GQA 16/2 D=128' }] : [];
      for (const { Hq, Hkv, D, label } of kind === 'gravity-pure' ? shapes.slice(0, 1) : [...shapes, ...extra]) {
        test(`${kind} ${label}: padded batch of 2, prefill, chunked prefill, decode (split-K)`, async () => {
          const B = 2;
          const maxLen = 160;
          const pad = 3; // sequence 1 starts with 3 padding slots
          const p: AttentionParams = {
            kind, numHeads: Hq, numKVHeads: Hkv, headDim: D,
            massSq: kind !== 'dot' ? Float32Array.from({ length: Hq }, (_, h) => 0.5 + 0.7 * h) : null,
            eps: 0.1, scale: 1 / Math.sqrt(D),
          };
          const layers = 2;
          const cache = be.createKVCache(layers, B, maxLen, Hkv, D);
          const host = [hostLayer(B, Hkv, maxLen, D), hostLayer(B, Hkv, maxLen, D)];
          let seed = 100 + Hq * 7 + (kind === 'dot' ? 1 : 0);
          // prefill 13, chunk of 5, a long chunk to push decode past 64 keys per split, then 3 decode steps
          const steps = [13, 5, 120, 1, 1, 1];
          let start = 0;
          for (const T of steps) {
            for (let b = 0; b < B; b++) for (let t = 0; t < T; t++) cache.keyValid[b * maxLen + start + t] = b === 1 && start + t < pad ? 0 : 1;
            const layer = T === 1 ? 1 : start % 2; // both layers get used; decode goes to layer 1
            const scaleQK = kind !== 'dot' ? 0.6 : 1.5;
            const q = rand(B * T * Hq * D, seed++, scaleQK);
            const k = rand(B * T * Hkv * D, seed++, scaleQK);
            const v = rand(B * T * Hkv * D, seed++);
            const kt = be.fromF32(k, [B * T, Hkv * D]);
            const vt = be.fromF32(v, [B * T, Hkv * D]);
            const qt = be.fromF32(q, [B * T, Hq * D]);
            if (T === 1 && start === steps.slice(0, 3).reduce((a, b) => a + b)) {
              // the decode layer has seen no prefill: fill layer 1 with what layer 0 would hold
              for (let s = 0; s < start; s++) {
                const kk = rand(B * Hkv * D, 7000 + s, scaleQK);
                const vv = rand(B * Hkv * D, 8000 + s);
                be.writeKV(cache, 1, be.fromF32(kk, [B, Hkv * D]), be.fromF32(vv, [B, Hkv * D]), s, 1);
                hostWrite(host[1], kk, vv, B, 1, Hkv, D, maxLen, s);
              }
            }
            be.writeKV(cache, layer, kt, vt, start, T);
            hostWrite(host[layer], k, v, B, T, Hkv, D, maxLen, start);
            const want = new Float32Array(B * T * Hq * D);
            attentionForward(want, q, host[layer], cache.keyValid, B, T, start, maxLen, p);
            const y = be.attention(qt, cache, layer, start, T, p);
            close(await be.read(y), want, `${kind} ${label} start=${start} T=${T}`);
            if (T === 5 || T === 1) {
              const probs = await be.attentionProbs(qt, cache, layer, start, T, p);
              close(probs, attentionProbs(q, host[layer], cache.keyValid, B, T, start, maxLen, p), `probs start=${start} T=${T}`);
            }
            for (const t of [kt, vt, qt, y]) be.dispose(t);
            start += T;
            cache.length = start;
          }
          be.dispose(cache);
        });
      }
    }

    test('gravity decode: fixed max (M²/eps <= 60) and running max (larger masses) both match the cpu, split-K and not', async () => {
      const B = 1, Hq = 8, Hkv = 2, D = 32, maxLen = 300;
      const cache = be.createKVCache(1, B, maxLen, Hkv, D);
      const host = hostLayer(B, Hkv, maxLen, D);
      cache.keyValid.fill(1);
      cache.keyValid[5] = 0; // one padding key
      const n = 290; // decode over 290 keys: split-K; q at slot 290 (the last)
      const k = rand(n * Hkv * D, 300, 0.5);
      const v = rand(n * Hkv * D, 301);
      be.writeKV(cache, 0, be.fromF32(k, [n, Hkv * D]), be.fromF32(v, [n, Hkv * D]), 0, n);
      hostWrite(host, k, v, B, n, Hkv, D, maxLen, 0);
      const cases: [string, number[], boolean][] = [
        ['fixed', [0.3, 1, 2, 3, 4, 5, 5.5, 6], true], // max M²/eps = 60: the limit itself
        ['running', [0.3, 1, 2, 3, 4, 5, 6, 7], false], // 70 > 60
        ['running, huge', [1, 50, 200, 400, 900, 20, 3, 0.01], false],
      ];
      for (const T of [1, 3]) {
        const start = n - T;
        const q = rand(T * Hq * D, 302 + T, 0.5);
        for (const [label, masses, fixed] of cases) {
          const p: AttentionParams = { kind: 'gravity', numHeads: Hq, numKVHeads: Hkv, headDim: D, massSq: Float32Array.from(masses), eps: 0.1, scale: 0 };
          assert.equal(gravityFixedMax(p), fixed, label);
          const want = new Float32Array(T * Hq * D);
          attentionForward(want, q, host, cache.keyValid, B, T, start, maxLen, p);
          const qt = be.fromF32(q, [T, Hq * D]);
          const y = be.attention(qt, cache, 0, start, T, p);
          close(await be.read(y), want, `gravity ${label} T=${T}`);
          be.dispose(qt);
          be.dispose(y);
        }
      }
      assert.equal(gravityFixedMax({ kind: 'dot', numHeads: 1, numKVHeads: 1, headDim: 4, massSq: null, eps: 0.1, scale: 1 }), false);
      be.dispose(cache);
    });

    test('register-tiled prefill: forced tile shapes (subgroup and workgroup-memory row reductions), fixed and running max', async () => {
      // 16x16x32 reduces rows over 8 lanes (subgroup shuffles where the adapter's subgroups have >= 8 lanes), 16x32x64
      // over 16 (workgroup memory on llvmpipe's 8-lane subgroups); G = 3 leaves a padding row in each 16-row tile
      const B = 2, Hq = 6, Hkv = 2, D = 64, maxLen = 48, start = 9, T = 30;
      const cache = be.createKVCache(1, B, maxLen, Hkv, D);
      const host = hostLayer(B, Hkv, maxLen, D);
      for (let b = 0; b < B; b++) for (let s = 0; s < start + T; s++) cache.keyValid[b * maxLen + s] = b === 1 && (s < 2 || s === 20) ? 0 : 1;
      const k = rand(B * (start + T) * Hkv * D, 500, 0.4);
      const v = rand(B * (start + T) * Hkv * D, 501);
      // slots 0..start+T of both sequences, written as one chunk of start+T rows per sequence
      be.writeKV(cache, 0, be.fromF32(k, [B * (start + T), Hkv * D]), be.fromF32(v, [B * (start + T), Hkv * D]), 0, start + T);
      hostWrite(host, k, v, B, start + T, Hkv, D, maxLen, 0);
      const q = rand(B * T * Hq * D, 502, 0.4);
      const qt = be.fromF32(q, [B * T, Hq * D]);
      const cases: [string, AttentionParams][] = [
        ['gravity fixed', { kind: 'gravity', numHeads: Hq, numKVHeads: Hkv, headDim: D, massSq: Float32Array.from({ length: Hq }, (_, h) => 0.5 + h), eps: 0.1, scale: 0 }],
        ['gravity running', { kind: 'gravity', numHeads: Hq, numKVHeads: Hkv, headDim: D, massSq: Float32Array.from({ length: Hq }, (_, h) => 2 + 4 * h), eps: 0.1, scale: 0 }],
        ['dot', { kind: 'dot', numHeads: Hq, numKVHeads: Hkv, headDim: D, massSq: null, eps: 0.1, scale: 1 / 8 }],
        ['gravity-pure', { kind: 'gravity-pure', numHeads: Hq, numKVHeads: Hkv, headDim: D, massSq: Float32Array.from({ length: Hq }, (_, h) => 1 + h), eps: 0.1, scale: 0 }],
      ];
      const saved = process.env.GRAVITY_ATTN_PREFILL;
      try {
        for (const shape of ['16,16,32', '16,32,64']) {
          process.env.GRAVITY_ATTN_PREFILL = shape;
          for (const [label, p] of cases) {
            const want = new Float32Array(B * T * Hq * D);
            attentionForward(want, q, host, cache.keyValid, B, T, start, maxLen, p);
            const y = be.attention(qt, cache, 0, start, T, p);
            close(await be.read(y), want, `prefill ${shape} ${label}`);
            be.dispose(y);
          }
        }
      } finally {
        if (saved === undefined) delete process.env.GRAVITY_ATTN_PREFILL;
        else process.env.GRAVITY_ATTN_PREFILL = saved;
      }
      be.dispose(qt);
      be.dispose(cache);
    });

    test('gravity: a query equal to a key (the cancellation case) stays accurate', async () => {
      const B = 1, Hq = 2, Hkv = 1, D = 16, maxLen = 8, T = 4;
      const p: AttentionParams = { kind: 'gravity', numHeads: Hq, numKVHeads: Hkv, headDim: D, massSq: Float32Array.from([4, 9]), eps: 0.1, scale: 0 };
      const k = rand(T * D, 90, 20); // large norms: |k|² ~ 2000
      const v = rand(T * D, 91);
      const q = new Float32Array(T * Hq * D);
      for (let t = 0; t < T; t++) for (let h = 0; h < Hq; h++) q.set(k.subarray(t * D, t * D + D), (t * Hq + h) * D);
      const cache = be.createKVCache(1, B, maxLen, Hkv, D);
      cache.keyValid.fill(1);
      be.writeKV(cache, 0, be.fromF32(k, [T, D]), be.fromF32(v, [T, D]), 0, T);
      const host = hostLayer(B, Hkv, maxLen, D);
      hostWrite(host, k, v, B, T, Hkv, D, maxLen, 0);
      const want = new Float32Array(T * Hq * D);
      attentionForward(want, q, host, cache.keyValid, B, T, 0, maxLen, p);
      close(await be.read(be.attention(be.fromF32(q, [T, Hq * D]), cache, 0, 0, T, p)), want, 'q = k gravity');
    });
  });

  describe('whole model against the PyTorch fixtures', () => {
    // every fixture once (F32 GQA with biases, BF16 tied MHA, F16 Llama GQA 4:1), gravity on two, dot on one:
    // each extra run costs llvmpipe shader compiles (~1 s per pipeline)
    assert.equal(INFERENCE_FIXTURES.length, 3);
    const runs = [
      { name: 'qwen2-mha-tied-bf16', attn: 'gravity' as const },
      { name: 'llama-gqa-f16', attn: 'gravity' as const },
      { name: 'qwen2-gqa-f32', attn: 'dot' as const },
    ];
    for (const { name, attn } of runs) {
      test(`${name} ${attn}: batch logits, left-padded batch, 16-token greedy decode`, async () => {
        const exp = loadExpected(name);
        const m = await loadModel(path.join(FIXTURES, name), { attention: attn, backend: be });
        const ids: number[][] = exp.meta.input_ids;
        const logits = await m.forward(m.newSession(ids.length, ids[0].length), ids, { logits: 'all' });
        const e = fixtureErr(logits, exp.tensors.get(`${attn}.logits`)!.data);
        if (process.env.WEBGPU_TEST_VERBOSE) console.log(`${name} ${attn} logits: ${e.toExponential(2)}`);
        assert.ok(e <= 1e-4, `logits rel err ${e.toExponential(2)}`);

        const pids: number[][] = exp.meta.padded_input_ids;
        const mask: number[][] = exp.meta.padded_attention_mask;
        const [B, T, V] = [pids.length, pids[0].length, m.config.vocabSize];
        const pl = await m.forward(m.newSession(B, T), pids, { logits: 'all', attentionMask: mask });
        const ref = exp.tensors.get(`${attn}.padded_logits`)!.data;
        for (let b = 0; b < B; b++) {
          const first = mask[b].indexOf(1);
          const ep = fixtureErr(pl.subarray((b * T + first) * V, (b + 1) * T * V), ref.subarray((b * T + first) * V, (b + 1) * T * V));
          assert.ok(ep <= 1e-4, `row ${b}: padded logits rel err ${ep.toExponential(2)}`);
        }

        // greedy decode without decode attention's partials, and split into 3 parts that the o projection merges (by
        // default at least 32 keys a part, more than these prompts have): the same tokens, and step logits
        // within f32 rounding of each other (the tokens of these tiny models barely depend on attention)
        const g = exp.meta[`${attn}_greedy`];
        const tuning = { ...be.ctx.decodeTuning };
        const steps: Float32Array[][] = [];
        try {
          for (const parts of [0, 3]) {
            Object.assign(be.ctx.decodeTuning, { parts, partMinKeys: 1 });
            const s = m.newSession(1, 64);
            let lg = await m.forward(s, [g.prompt]);
            const out: number[] = [];
            const seen: Float32Array[] = [];
            for (let i = 0; i < 16; i++) {
              const next = argmax(lg);
              out.push(next);
              lg = await m.forward(s, [[next]]);
              seen.push(lg);
            }
            assert.deepEqual(out, g.tokens, `${parts} parts`);
            steps.push(seen);
          }
        } finally {
          be.ctx.decodeTuning = tuning;
        }
        for (let i = 0; i < 16; i++) {
          const e = fixtureErr(steps[1][i], steps[0][i]);
          assert.ok(e <= 1e-5, `decode step ${i}: logits with attention partials differ by ${e.toExponential(2)}`);
        }
      });
    }
  });

  test('errors: a tensor over the binding limit names its size and the limit', () => {
    const N = 64;
    const OUT = Math.ceil(be.ctx.maxBinding / 4 / N) + 1;
    const w = be.upload({ dtype: 'BF16', shape: [OUT, 1], data: new Uint16Array(OUT) });
    const x = be.fromF32(new Float32Array(N), [N, 1]);
    assert.throws(() => be.linear(x, w, null), (e: Error) => e instanceof GravityError && /MiB, more than this device's max(StorageBufferBindingSize|BufferSize)/.test(e.message));
    assert.throws(() => be.linear(x, be.fromF32(new Float32Array(6), [3, 2]), null), GravityError);
  });

  test('errors: no adapter gives the one-line install hint', async () => {
    // a browser-style navigator.gpu without adapters takes precedence over Dawn
    const saved = Object.getOwnPropertyDescriptor(globalThis, 'navigator');
    Object.defineProperty(globalThis, 'navigator', { value: { gpu: { requestAdapter: async () => null } }, configurable: true, writable: true });
    try {
      await assert.rejects(createWebGPUBackend(), (e: Error) => e instanceof GravityError && e.message === 'WebGPU: no adapter found (install a Vulkan driver, or use --device cpu)');
      assert.equal(await webgpuAvailable(), false);
    } finally {
      if (saved) Object.defineProperty(globalThis, 'navigator', saved);
      else delete (globalThis as { navigator?: unknown }).navigator;
    }
  });

  test('profiling: per-kernel GPU time through timestamp queries', async () => {
    const pb = await createWebGPUBackend({ profile: true });
    try {
      const x = pb.fromF32(rand(3 * 64, 5), [3, 64]);
      const w = pb.upload(fromF32(rand(40 * 64, 6), [40, 64], 'BF16'));
      const want = await pb.read(pb.linear(x, w, null));
      for (let i = 0; i < 70; i++) pb.dispose(pb.add(pb.linear(x, w, null), pb.linear(x, w, null))); // > one submit of queries
      const rep = await pb.profileReport();
      if (!pb.features.includes('timestamp-query')) return assert.equal(rep, null);
      assert.ok(rep, 'a report');
      const gemv = rep.find((r) => r.kernel.startsWith('gemv:4:BF16'));
      assert.ok(gemv && gemv.calls === 141 && gemv.ms > 0, JSON.stringify(rep));
      assert.equal(rep.find((r) => r.kernel === 'add')?.calls, 70);
      // profiling changes timing only, not results
      assert.deepEqual(await pb.read(pb.linear(x, w, null)), want);
    } finally {
      pb.destroy();
    }
  });

  test("profiling 'pass': GPU time per compute pass, dispatches kept in one pass", async () => {
    const pb = await createWebGPUBackend({ profile: 'pass' });
    try {
      const x = pb.fromF32(rand(3 * 64, 5), [3, 64]);
      const w = pb.upload(fromF32(rand(40 * 64, 6), [40, 64], 'BF16'));
      const want = await pb.read(pb.linear(x, w, null));
      for (let i = 0; i < 70; i++) pb.dispose(pb.add(pb.linear(x, w, null), pb.linear(x, w, null))); // 210 dispatches
      const rep = await pb.profileReport();
      if (!pb.features.includes('timestamp-query')) return assert.equal(rep, null);
      assert.ok(rep, 'a report');
      // one entry for all passes: 210 dispatches in passes of at most 64 (FLUSH_EVERY), not one pass per dispatch
      assert.equal(rep.length, 1, JSON.stringify(rep));
      assert.equal(rep[0].kernel, 'compute pass (whole)');
      assert.ok(rep[0].calls >= 4 && rep[0].calls <= 6 && rep[0].ms > 0, JSON.stringify(rep));
      assert.deepEqual(await pb.read(pb.linear(x, w, null)), want);
    } finally {
      pb.destroy();
    }
  });

  test('device loss rejects pending reads instead of hanging', async () => {
    const other = await createWebGPUBackend();
    const t = other.fromF32(rand(16, 3), [16]);
    const pending = other.read(other.add(t, t));
    other.ctx.device.destroy();
    await assert.rejects(
      Promise.race([pending.then(() => 'resolved'), new Promise((r) => setTimeout(() => r('timeout'), 5000))]).then((v) => {
        if (v === 'timeout') throw new Error('read hung');
        // the read may have completed before the loss landed; a new one must then fail
        return other.read(t);
      }),
    );
  });
});
