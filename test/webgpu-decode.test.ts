/**
 * Decode-only fused paths of the WebGPU backend against the op sequences they replace: the o projection that
 * merges the attention's split-K partials in its prologue (attentionOut), for every attention kind, batch 1 and 2,
 * with the key axis split (hundreds of keys) and not split (a few keys).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { createWebGPUBackend, type WebGPUBackend } from '../src/backend/webgpu/index.js';
import { attentionParams } from '../src/attention/registry.js';
import type { AttentionKind } from '../src/backend/backend.js';
import { fromF32 } from '../src/tensor/dtype.js';
import { relErr } from './helpers/fixtures.js';

let be: WebGPUBackend;
before(async () => {
  be = await createWebGPUBackend();
});
after(() => be?.destroy());

function rand(n: number, seed: number, scale = 1): Float32Array {
  let s = seed >>> 0 || 1;
  const out = new Float32Array(n);
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    out[i] = ((s >>> 0) / 2 ** 32 * 2 - 1) * scale;
  }
  return out;
}

test('attentionOut (split-K merge in the o projection) equals attention, linear, add', async () => {
  const Hq = 4, Hkv = 2, D = 16, C = 24, maxLen = 320;
  const cfg = { numHeads: Hq, numKVHeads: Hkv, headDim: D } as never;
  const cases: [AttentionKind, number][] = [['gravity', 0.5], ['gravity', 4], ['dot', 0], ['gravity-pure', 0.5]];
  for (const B of [1, 2]) {
    for (const keys of [300, 5]) {
      const cache = be.createKVCache(1, B, maxLen, Hkv, D);
      cache.keyValid.fill(1);
      if (B === 2) cache.keyValid.fill(0, maxLen, maxLen + 3); // the second sequence is left-padded
      const kv = be.fromF32(rand(B * keys * Hkv * D, 7 + keys, 0.5), [B * keys, Hkv * D]);
      be.writeKV(cache, 0, kv, be.fromF32(rand(B * keys * Hkv * D, 8 + keys), [B * keys, Hkv * D]), 0, keys);
      const q = be.fromF32(rand(B * Hq * D, 9, 0.5), [B, Hq * D]);
      const wo = be.upload(fromF32(rand(C * Hq * D, 10, 0.3), [C, Hq * D], 'BF16'));
      const bo = be.upload(fromF32(rand(C, 11), [C], 'BF16'));
      const res = be.fromF32(rand(B * C, 12), [B, C]);
      for (const [kind, massLog] of cases) {
        const p = attentionParams(kind, cfg, new Float32Array(Hq).fill(massLog).map((v, h) => v + 0.1 * h), 0.1);
        const want = await be.read(be.add(res, be.linear(be.attention(q, cache, 0, keys - 1, 1, p), wo, bo)));
        const got = await be.read(be.fused.attentionOut(q, cache, 0, keys - 1, 1, p, wo, bo, res));
        const e = relErr(got, want);
        assert.ok(e <= 1e-5, `${kind} mass ${massLog}, batch ${B}, ${keys} keys: rel err ${e.toExponential(2)}`);
      }
      be.dispose(cache);
    }
  }
});
