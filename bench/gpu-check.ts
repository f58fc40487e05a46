/**
 * Correctness on a real GPU (the test suite runs the WebGPU kernels on a software adapter; this runs the same
 * fixture comparisons on whatever adapter Dawn finds, from dist/ with plain node):
 *   node dist/bench/gpu-check.js
 * Prints, per fixture and attention kind, the logits' relative error against PyTorch and whether the 16 greedy
 * tokens (KV cache) are identical; exits 1 on a mismatch.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { loadModel } from '../src/model/load.js';
import { createWebGPUBackend } from '../src/backend/webgpu/index.js';
import { openSafetensors } from '../src/io/safetensors.js';
import { attentionParams } from '../src/attention/registry.js';
import { decodeImpl } from '../src/backend/webgpu/attention.js';

const root = process.argv[2] ?? 'test/fixtures';
const be = await createWebGPUBackend();
let bad = 0;
for (const name of ['qwen2-gqa-f32', 'qwen2-mha-tied-bf16', 'llama-gqa-f16']) {
  const dir = path.join(root, name);
  const meta = JSON.parse(fs.readFileSync(path.join(dir, 'expected.json'), 'utf8'));
  const exp = openSafetensors(path.join(dir, 'expected.safetensors'));
  for (const attn of ['gravity', 'dot'] as const) {
    const m = await loadModel(dir, { attention: attn, backend: be });
    const ids: number[][] = meta.long_input_ids;
    const T = ids[0].length;
    const V = m.config.vocabSize;
    const logits = await m.forward(m.newSession(1, T), ids, { logits: 'all' });
    const ref = exp.read(`${attn}.long_logits`).data as Float64Array;
    let num = 0;
    let den = 0;
    for (let i = 0; i < ref.length; i++) {
      num = Math.max(num, Math.abs(logits[(T - 16) * V + i] - ref[i]));
      den = Math.max(den, Math.abs(ref[i]));
    }
    const g = meta[`${attn}_greedy`];
    const s = m.newSession(1, 64);
    let l = await m.forward(s, [g.prompt]);
    const out: number[] = [];
    for (let i = 0; i < 16; i++) {
      let b = 0;
      for (let j = 1; j < l.length; j++) if (l[j] > l[b]) b = j;
      out.push(b);
      l = await m.forward(s, [[b]]);
    }
    // and through greedyStream, the pipelined device-side loop generate() uses
    const s2 = m.newSession(1, 64);
    const first = await m.forward(s2, [g.prompt], { logits: 'argmax' });
    const streamed = [first[0]];
    const it = m.greedyStream!(s2, [first[0]]);
    while (streamed.length < 16) streamed.push((await it.next()).value![0]);
    await it.return();
    const same = JSON.stringify(out) === JSON.stringify(g.tokens) && JSON.stringify(streamed) === JSON.stringify(g.tokens);
    const rel = num / den;
    const ok = same && rel <= 5e-4;
    if (!ok) bad++;
    console.log(`${ok ? 'ok ' : 'BAD'} ${name} ${attn}: 96-token logits rel err ${rel.toExponential(2)}, greedy ${same ? 'identical' : `differs: ${out}`}`);
    m.dispose();
  }
  exp.close();
}
// the decode attention kernels on this adapter's subgroup size, at the Qwen2.5-3B shape: subgroup kernel vs tiled
{
  const Hq = 16, Hkv = 2, D = 128, maxLen = 4100;
  const cfg = { numHeads: Hq, numKVHeads: Hkv, headDim: D } as never;
  const rnd = (n: number, seed: number, sc: number) => Float32Array.from({ length: n }, (_, i) => ((Math.sin(i * 12.9898 + seed) * 43758.5453) % 1) * sc);
  for (const B of [1, 2]) {
    const cache = be.createKVCache(1, B, maxLen, Hkv, D);
    cache.keyValid.fill(1);
    if (B === 2) cache.keyValid.fill(0, maxLen, maxLen + 5);
    const kvt = (seed: number, sc: number) => be.fromF32(rnd(B * maxLen * Hkv * D, seed, sc), [B * maxLen, Hkv * D]);
    be.writeKV(cache, 0, kvt(1, 0.3), kvt(2, 1), 0, maxLen);
    const q = be.fromF32(rnd(B * Hq * D, 3, 0.3), [B, Hq * D]);
    let worst = 0;
    for (const keys of [1, 37, 512, 4096]) {
      for (const [kind, ml] of [['gravity', 0.5], ['gravity', 4], ['dot', 0], ['gravity-pure', 0.5]] as const) {
        const p = attentionParams(kind, cfg, new Float32Array(Hq).map((_, h) => ml + 0.1 * h), 0.1);
        decodeImpl.kernel = 'old';
        const want = await be.read(be.attention(q, cache, 0, keys - 1, 1, p));
        decodeImpl.kernel = 'subgroup';
        const got = await be.read(be.attention(q, cache, 0, keys - 1, 1, p));
        let num = 0, den = 0;
        for (let i = 0; i < want.length; i++) { num = Math.max(num, Math.abs(got[i] - want[i])); den = Math.max(den, Math.abs(want[i])); }
        worst = Math.max(worst, num / den);
      }
    }
    const ok = worst <= 1e-5;
    if (!ok) bad++;
    console.log(`${ok ? 'ok ' : 'BAD'} decode attention, subgroup kernel vs tiled (batch ${B}, 1..4096 keys, 4 kinds): rel err ${worst.toExponential(2)}`);
    be.dispose(cache);
  }
}
console.log(bad ? `${bad} mismatches` : 'all fixtures match on this adapter');
process.exit(bad ? 1 : 0);
