/**
 * Int8 linears (src/backend/webgpu/linear-q8.ts) on whatever adapter Dawn finds (CI: llvmpipe, so the DP4A GEMM;
 * the tensor-core GEMM is checked against it by bench/q8-gpu.ts on the GPU machine). The JS reference quantizes
 * exactly as the kernels do (f32 absmax, inv = 127/absmax, round half to even, integer dot products), so the
 * result must match up to the f32 rounding of the final scale products.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createWebGPUBackend, type WebGPUBackend } from '../src/backend/webgpu/index.js';
import { fromF32, toF32, type DType } from '../src/tensor/dtype.js';
import { parseSmConfig, q8Wanted, quantizeWeight, freeWeight, smShader, SM_DEFAULT } from '../src/backend/webgpu/linear-q8.js';
import { rand } from './helpers/random.js';

let be: WebGPUBackend;
before(async () => {
  be = await createWebGPUBackend({ q8: false });
});
after(() => be?.destroy());

function roundEven(x: number): number {
  const f = Math.floor(x);
  const d = x - f;
  return d > 0.5 ? f + 1 : d < 0.5 ? f : f % 2 === 0 ? f : f + 1;
}

/** per-row symmetric int8 as the kernels do it: [rows, IN] -> int8 values and f32 scales */
function quantRows(v: Float32Array, rows: number, IN: number): { q: Int8Array; s: Float32Array } {
  const q = new Int8Array(rows * IN);
  const s = new Float32Array(rows);
  for (let r = 0; r < rows; r++) {
    let amax = 0;
    for (let k = 0; k < IN; k++) amax = Math.max(amax, Math.abs(v[r * IN + k]));
    const inv = amax > 0 ? Math.fround(127 / amax) : 0;
    s[r] = amax > 0 ? Math.fround(amax / 127) : 0;
    for (let k = 0; k < IN; k++) q[r * IN + k] = Math.max(-127, Math.min(127, roundEven(Math.fround(v[r * IN + k] * inv))));
  }
  return { q, s };
}

/** y = f32(int dot) * sx * sw + b, and a bound on the f32 rounding of those last products (a fused multiply-add may differ) */
function reference(x: Float32Array, w: Float32Array, b: Float32Array | null, N: number, IN: number, OUT: number): { y: Float32Array; tol: Float32Array } {
  const xq = quantRows(x, N, IN);
  const wq = quantRows(w, OUT, IN);
  const y = new Float32Array(N * OUT);
  const tol = new Float32Array(N * OUT);
  for (let m = 0; m < N; m++) {
    for (let o = 0; o < OUT; o++) {
      let acc = 0;
      for (let k = 0; k < IN; k++) acc += xq.q[m * IN + k] * wq.q[o * IN + k];
      const prod = Math.fround(Math.fround(Math.fround(acc) * xq.s[m]) * wq.s[o]);
      const bias = b ? b[o] : 0;
      y[m * OUT + o] = Math.fround(prod + bias);
      tol[m * OUT + o] = 4 * 2 ** -24 * (Math.abs(prod) + Math.abs(bias)) + 1e-30;
    }
  }
  return { y, tol };
}

interface Case { N: number; IN: number; OUT: number; dt: DType; bias: DType | null; zeroRows?: boolean }

async function runCase(c: Case, seed: number): Promise<{ got: Float32Array; f32: Float32Array; ref: ReturnType<typeof reference> }> {
  const { N, IN, OUT, dt } = c;
  const x = rand(N * IN, seed, 2);
  const wv = rand(OUT * IN, seed + 1, 0.1);
  if (c.zeroRows) {
    x.fill(0, 0, IN); // an all-zero activation row: scale 0, outputs = bias
    wv.fill(0, IN, 2 * IN); // and an all-zero weight row
  }
  const wh = fromF32(wv, [OUT, IN], dt);
  const wf = toF32(wh); // the values the kernel sees
  const bh = c.bias ? fromF32(rand(OUT, seed + 2, 0.5), [OUT], c.bias) : null;
  const bf = bh ? toF32(bh) : null;
  const xt = be.fromF32(x, [N, IN]);
  const wt = be.upload(wh);
  const bt = bh ? be.upload(bh) : null;
  be.q8 = null;
  const yf = be.linear(xt, wt, bt);
  be.q8 = 'dp4a';
  const yq = be.linear(xt, wt, bt);
  const yq2 = be.linear(xt, wt, bt); // the cached int8 weight
  be.q8 = null;
  const got = await be.read(yq);
  assert.deepEqual(await be.read(yq2), got, 'second call (cached int8 weight) differs');
  const f32 = await be.read(yf);
  for (const t of [xt, wt, yf, yq, yq2, ...(bt ? [bt] : [])]) be.dispose(t);
  return { got, f32, ref: reference(x, wf, bf, N, IN, OUT) };
}

function maxRel(a: Float32Array, b: Float32Array): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    num = Math.max(num, Math.abs(a[i] - b[i]));
    den = Math.max(den, Math.abs(b[i]));
  }
  return num / den;
}

const CASES: Case[] = [
  { N: 13, IN: 37, OUT: 19, dt: 'F32', bias: 'F32', zeroRows: true }, // ragged everything, IN not a multiple of 4
  { N: 70, IN: 200, OUT: 130, dt: 'BF16', bias: 'BF16' }, // two row tiles of weights, 16-bit bias
  { N: 9, IN: 64, OUT: 8, dt: 'F16', bias: null },
  { N: 2050, IN: 40, OUT: 2112, dt: 'BF16', bias: 'F32' }, // enough tiles for the 128x128 DP4A tiling
];

describe('webgpu int8 linears (DP4A GEMM)', () => {
  for (const [i, c] of CASES.entries()) {
    test(`N=${c.N} IN=${c.IN} OUT=${c.OUT} ${c.dt}${c.bias ? ` bias ${c.bias}` : ''}: exact vs the JS int8 reference, near the f32 linear`, async () => {
      const { got, f32, ref } = await runCase(c, 100 + 10 * i);
      let bad = 0;
      let first = '';
      for (let j = 0; j < got.length; j++) {
        if (!(Math.abs(got[j] - ref.y[j]) <= ref.tol[j])) {
          if (!bad) first = `[${Math.floor(j / c.OUT)}, ${j % c.OUT}]: ${got[j]} vs ${ref.y[j]}`;
          bad++;
        }
      }
      assert.equal(bad, 0, `${bad} of ${got.length} outputs differ from the int8 reference, first ${first}`);
      // per-row int8 of uniform values: a few tenths of a percent of the largest output; never 0 (the int8 path ran)
      const e = maxRel(got, f32);
      if (process.env.WEBGPU_TEST_VERBOSE) console.log(`q8 vs f32: ${e.toExponential(2)}`);
      assert.ok(e > 1e-5 && e < 0.03, `int8 vs f32 linear: relative error ${e.toExponential(2)}`);
    });
  }

  test('dispose drops the cached int8 weight; decode-sized N stays on the f32 GEMV', async () => {
    const IN = 16, OUT = 8;
    const wt = be.upload({ dtype: 'F32', shape: [OUT, IN], data: rand(OUT * IN, 7) });
    const x = rand(4 * IN, 8);
    const xt = be.fromF32(x, [4, IN]);
    be.q8 = 'dp4a';
    const y = be.linear(xt, wt, null); // N = 4 <= GEMV_MAX_N: no quantization
    be.q8 = null;
    const yf = be.linear(xt, wt, null);
    assert.deepEqual(await be.read(y), await be.read(yf));
    for (const t of [xt, wt, y, yf]) be.dispose(t);
    await be.sync();
  });

  test('weight quantization: packed bytes and scales', async () => {
    const OUT = 3, IN = 6;
    const w = new Float32Array([1, -2, 0.5, 0, 127, -127, 0, 0, 0, 0, 0, 0, 0.25, 0.75, -1, 1, 0.5, 0.125]);
    const wt = be.upload({ dtype: 'F32', shape: [OUT, IN], data: w });
    const q = quantizeWeight(be.ctx, wt.buffer!, 'F32', OUT, IN);
    const bytes = new Int8Array(await be.ctx.readBuffer(q.wq, 0, OUT * 128));
    const s = new Float32Array(await be.ctx.readBuffer(q.sw, 0, 4 * 4));
    const ref = quantRows(w, OUT, IN);
    for (let o = 0; o < OUT; o++) {
      assert.deepEqual([...bytes.subarray(o * 128, o * 128 + IN)], [...ref.q.subarray(o * IN, (o + 1) * IN)], `row ${o}`);
      assert.ok(bytes.subarray(o * 128 + IN, (o + 1) * 128).every((v) => v === 0), `row ${o} padding`);
      assert.equal(s[o], ref.s[o]);
    }
    assert.deepEqual([...bytes.subarray(0, 6)], [1, -2, 0, 0, 127, -127]); // 0.5 rounds to even
    assert.equal(s[3], 0, 'padding row scale');
    freeWeight(be.ctx, q);
    be.dispose(wt);
  });

  test('subgroup-matrix configs: parsing and generated WGSL (compiled only on adapters with the feature)', () => {
    assert.deepEqual(parseSmConfig(undefined), SM_DEFAULT);
    assert.deepEqual(parseSmConfig('64x128:2x2:128:direct:u4'), { BM: 64, BN: 128, SGM: 2, SGN: 2, BK: 128, stage: false, unit: 4 });
    assert.throws(() => parseSmConfig('128x128:3x4:64'), /tile/);
    assert.throws(() => parseSmConfig('256x128:2x4:64'), /tile/);
    assert.throws(() => parseSmConfig('128x128'), /Q8 subgroup-matrix config '128x128': expected BMxBN:SGMxSGN:BK/);
    assert.equal(q8Wanted('auto'), 'auto');
    assert.equal(q8Wanted(false), null);
    assert.throws(() => q8Wanted('fast' as never), /GRAVITY_WEBGPU_Q8='fast': expected 0, 1, auto, sm or dp4a/);
    const code = smShader(SM_DEFAULT, 'BF16');
    assert.match(code, /enable chromium_experimental_subgroup_matrix;/);
    assert.equal(code.match(/subgroupMatrixMultiplyAccumulate/g)?.length, 16); // 4 x 4 accumulators per subgroup
    assert.match(code, /@workgroup_size\(128\)/);
  });
});
