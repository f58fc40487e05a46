/**
 * Host time to record one decode token on the WebGPU backend (the part of forward() before it waits for the GPU),
 * and submits per token, in the two situations generation meets: nothing in flight (the step loop of sampling) and
 * a read in flight (greedy decoding records the next token while the last one is read back). Decode is bound by
 * this recording when the GPU is fast, so it is measured on its own; any adapter works (llvmpipe too):
 *   node dist/bench/gpu-record.js --dir MODEL [--tokens 30] [--reps 3]
 * A random model of the 3B's depth and small width keeps the GPU work small: `gravity init-random` with a config of
 * 36 layers, hidden 128.
 */
import { parseArgs } from 'node:util';
import { createWebGPUBackend } from '../src/backend/webgpu/index.js';
import { loadModel } from '../src/model/load.js';

const { values } = parseArgs({ options: { dir: { type: 'string' }, tokens: { type: 'string', default: '30' }, reps: { type: 'string', default: '3' } } });
if (!values.dir) throw new Error('--dir MODEL is required');
const gpu = await createWebGPUBackend();
const m = await loadModel(values.dir, { backend: gpu });
const ctx = gpu.ctx;
let submits = 0;
const flush = ctx.flush.bind(ctx);
ctx.flush = () => {
  submits++;
  flush();
};
const s = m.newSession(1, 4096);
let tok = (await m.forward(s, [[1, 2, 3, 4]], { logits: 'argmax' }))[0];
for (let i = 0; i < 5; i++) tok = (await m.forward(s, [[tok]], { logits: 'argmax' }))[0];
const dummy = ctx.alloc(16);
const N = Number(values.tokens);
for (let rep = 0; rep < Number(values.reps); rep++) {
  for (const busy of [false, true]) {
    submits = 0;
    let host = 0;
    const t0 = performance.now();
    for (let i = 0; i < N; i++) {
      const r = busy ? ctx.readBuffer(dummy, 0, 4) : null;
      const h = performance.now();
      const p = m.forward(s, [[tok]], { logits: 'argmax' });
      host += performance.now() - h;
      tok = (await p)[0];
      await r;
    }
    const wall = (performance.now() - t0) / N;
    console.log(`${busy ? 'a read in flight ' : 'nothing in flight'}: recording ${(host / N).toFixed(3)} ms/token, ${(submits / N).toFixed(1)} submits/token, wall ${wall.toFixed(3)} ms/token`);
  }
}
gpu.destroy();
process.exit(0);
