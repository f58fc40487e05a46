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
console.log(bad ? `${bad} mismatches` : 'all fixtures match on this adapter');
process.exit(bad ? 1 : 0);
