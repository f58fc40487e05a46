/**
 * Accuracy of the opt-in int8 prefill linears (GRAVITY_WEBGPU_Q8) against the PyTorch fixtures, next to the exact
 * f32 path: `node --import tsx bench/q8-fixtures.ts` (any adapter; DP4A GEMM, the tensor-core one gives the same integers).
 */
import * as path from 'node:path';
import { createWebGPUBackend } from '../src/backend/webgpu/index.js';
import { loadModel } from '../src/model/load.js';
import { FIXTURES, INFERENCE_FIXTURES, argmax, loadExpected, relErr } from '../test/helpers/fixtures.js';
for (const q8 of [false, 'dp4a'] as const) {
  const be = await createWebGPUBackend({ q8 });
  for (const name of INFERENCE_FIXTURES) {
    const exp = loadExpected(name);
    const m = await loadModel(path.join(FIXTURES, name), { attention: 'gravity', backend: be });
    const ids: number[][] = exp.meta.input_ids;
    const lg = await m.forward(m.newSession(ids.length, ids[0].length), ids, { logits: 'all' });
    const ref = exp.tensors.get('gravity.logits')!.data;
    const V = m.config.vocabSize;
    let agree = 0, rows = lg.length / V;
    for (let r = 0; r < rows; r++) if (argmax(lg, r * V, V) === argmax(ref, r * V, V)) agree++;
    console.log(`${q8 || 'f32'} ${name}: rel err ${relErr(lg, ref).toExponential(2)}, top-1 agree ${agree}/${rows}`);
    m.dispose();
  }
  be.destroy();
}
process.exit(0);
