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
import { drawToken } from '../src/generate/sampling.js';

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
// sampling on the device against the CPU sampler's float64 draw, at Qwen's vocabulary size (draws within f32
// rounding of a boundary are not counted, as in the tests)
{
  const V = 151936;
  let seed = 12345;
  const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
  const x = Float32Array.from({ length: 2 * V }, () => (rnd() + rnd() + rnd() - 1.5) * 6);
  const xt = be.fromF32(x, [2, V]);
  let checked = 0;
  let wrong = 0;
  for (const f of [{}, { topK: 50 }, { topK: 20, topP: 0.8 }, { topK: 256, topP: 0.95, minP: 0.05 }]) {
    for (let k = 0; k < 20; k++) {
      const u = Float32Array.from([(k * 0.618034 + 0.013) % 1, (k * 0.414214 + 0.5) % 1]);
      const ids = await be.readIds(be.sampleDevice!(xt, 0.8, u, f));
      for (let r = 0; r < 2; r++) {
        const row = x.subarray(r * V, (r + 1) * V);
        const ref = drawToken(row, 0.8, u[r], f);
        if ([-2e-6, 2e-6].some((d) => drawToken(row, 0.8, Math.min(Math.max(u[r] + d, 0), 0.9999999), f) !== ref)) continue;
        checked++;
        if (ids[r] !== ref) wrong++;
      }
    }
  }
  if (wrong) bad++;
  console.log(`${wrong ? 'BAD' : 'ok '} device sampling (temperature; top-k; top-k + top-p; + min-p) at V=${V}: ${checked - wrong}/${checked} draws equal the CPU's`);
}
console.log(bad ? `${bad} mismatches` : 'all fixtures match on this adapter');
process.exit(bad ? 1 : 0);
