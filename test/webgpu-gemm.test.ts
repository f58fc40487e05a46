/**
 * The prefill GEMM's kernel variants (gemm.ts) against a float64 reference: every staging layout (swizzled BK = 32,
 * padded BK = 16 / 8), with and without register prefetch, one or two staging buffers, tiles whose loaders do and do not divide evenly, a K tail,
 * ragged N / OUT, bias, and F32 / F16 / BF16 weights; plus the legacy kernel (IN not a multiple of 8).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createWebGPUBackend, type WebGPUBackend } from '../src/backend/webgpu/index.js';
import { gemmChoose, gemmKernel, gemmName, gemmSharedBytes, parseGemm, type GemmChoice } from '../src/backend/webgpu/gemm.js';
import { fromF32, toF32, type DType } from '../src/tensor/dtype.js';
import type { GpuTensor } from '../src/backend/webgpu/context.js';
import { rand } from './helpers/random.js';

let be: WebGPUBackend;
before(async () => {
  be = await createWebGPUBackend();
});
after(() => be?.destroy());

describe('webgpu gemm variants', () => {
  test('config parsing and the default choice', () => {
    assert.equal(gemmName(parseGemm('128x128x32/8x8')), '128x128x32/8x8');
    assert.equal(gemmName(parseGemm('64x64x16/4x4/nopf')), '64x64x16/4x4/nopf');
    assert.equal(gemmName(parseGemm('legacy:64')), 'legacy:64');
    assert.equal(gemmName(parseGemm('128x128x16/8x8/db')), '128x128x16/8x8/db');
    assert.equal(gemmSharedBytes(parseGemm('64x64x32/4x4/db') as never), 32768);
    assert.throws(() => parseGemm('128x128x12/8x8'));
    assert.throws(() => parseGemm('big'), /gemm config 'big': expected BMxBNxBK\/TMxTN/);
    assert.throws(() => parseGemm('256x256x32/4x4')); // 4096 threads
    assert.equal(gemmSharedBytes(parseGemm('128x128x32/8x8') as never), 32768);
    assert.equal(gemmName(gemmChoose(null, 8192, 2048, 11008, 'BF16')), '128x128x32/8x8');
    assert.equal(gemmName(gemmChoose(null, 2048, 2048, 256, 'BF16')), '64x64x32/4x4');
    assert.equal(gemmName(gemmChoose(null, 2048, 36, 256, 'BF16')), 'legacy:64'); // IN % 8 != 0
    assert.equal(gemmName(gemmChoose(null, 9000, 1004, 11008, 'F32')), '128x128x32/8x8'); // F32 needs IN % 4 only
  });

  test('every variant matches a float64 reference', async () => {
    type Case = { cfg: string; N: number; IN: number; OUT: number; dt: DType; bias: DType | null };
    const cases: Case[] = [
      { cfg: '128x128x32/8x8', N: 130, IN: 72, OUT: 135, dt: 'BF16', bias: 'BF16' }, // swizzled, K tail, ragged
      { cfg: '128x128x32/8x8', N: 128, IN: 64, OUT: 128, dt: 'F16', bias: null }, // exact tiles, no tail
      { cfg: '128x64x32/8x4', N: 70, IN: 48, OUT: 100, dt: 'F32', bias: 'F32' }, // F32 weights as vec4<f32>
      { cfg: '64x64x32/4x4/nopf', N: 65, IN: 96, OUT: 64, dt: 'BF16', bias: null }, // loads done in the slice
      { cfg: '64x64x16/4x4', N: 9, IN: 40, OUT: 67, dt: 'F16', bias: 'F16' }, // padded rows, half the threads load w
      { cfg: '64x32x8/4x2', N: 33, IN: 24, OUT: 37, dt: 'BF16', bias: null }, // stride 3, 256 threads, tiny slices
      { cfg: '64x64x32/4x4/db', N: 70, IN: 104, OUT: 66, dt: 'BF16', bias: 'F32' }, // two stages, 4 slices, tail
      { cfg: '64x32x16/4x2/db', N: 17, IN: 16, OUT: 40, dt: 'F32', bias: null }, // two stages, a single slice
      { cfg: 'legacy:64', N: 20, IN: 37, OUT: 30, dt: 'BF16', bias: 'BF16' },
    ];
    let seed = 100;
    for (const { cfg, N, IN, OUT, dt, bias } of cases) {
      const x = rand(N * IN, seed++);
      const wh = fromF32(rand(OUT * IN, seed++), [OUT, IN], dt);
      const wf = toF32(wh);
      const bh = bias ? fromF32(rand(OUT, seed++), [OUT], bias) : null;
      const bf = bh ? toF32(bh) : null;
      const want = new Float64Array(N * OUT);
      let den = 0;
      for (let n = 0; n < N; n++) for (let o = 0; o < OUT; o++) {
        let s = bf ? bf[o] : 0;
        for (let k = 0; k < IN; k++) s += x[n * IN + k] * wf[o * IN + k];
        want[n * OUT + o] = s;
        den = Math.max(den, Math.abs(s));
      }
      const xt = be.fromF32(x, [N, IN]) as GpuTensor;
      const wt = be.upload(wh, 'linear') as GpuTensor;
      const bt = bh ? (be.upload(bh) as GpuTensor) : null;
      const yt = be.fromF32(new Float32Array(N * OUT).fill(NaN), [N, OUT]) as GpuTensor;
      const choice: GemmChoice = parseGemm(cfg);
      gemmKernel(be.ctx, xt.buf, wt.buf, dt as 'F32', bt ? bt.buf : null, bias as 'F32' | null, yt.buf, N, IN, OUT, choice);
      const got = await be.read(yt);
      let err = 0;
      for (let i = 0; i < got.length; i++) err = Math.max(err, Number.isFinite(got[i]) ? Math.abs(got[i] - want[i]) : Infinity);
      const what = `${cfg} N=${N} IN=${IN} OUT=${OUT} ${dt} bias=${bias}`;
      if (process.env.WEBGPU_TEST_VERBOSE) console.log(`${what}: ${(err / den).toExponential(2)}`);
      assert.ok(err / den <= 1e-5, `${what}: relative error ${(err / den).toExponential(2)}`);
      for (const t of [xt, wt, yt, ...(bt ? [bt] : [])]) be.dispose(t);
    }
  });
});
