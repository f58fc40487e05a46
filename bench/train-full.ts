/**
 * Full-parameter training throughput on the cpu: tokens/s of Trainer.trainStep on a small Qwen2-shaped model
 * (default ~3M parameters: hidden 256, 6 layers, 4 heads / 2 KV heads, intermediate 768, vocab 1024, tied),
 * seq 128 x batch 16, per attention kind, with a per-op time split of one step.
 *   npx tsx bench/train-full.ts [--steps 3] [--attn gravity,dot] [--threads N]
 */
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { parseArgs } from 'node:util';
import { writeRandomCheckpoint } from '../src/io/random.js';
import { createCpuBackend } from '../src/backend/cpu/index.js';
import { Trainer } from '../src/train/trainer.js';
import type { ModelConfig } from '../src/model/config.js';
import type { AttentionKind } from '../src/backend/backend.js';

const { values } = parseArgs({
  options: {
    steps: { type: 'string', default: '3' },
    attn: { type: 'string', default: 'gravity,dot' },
    threads: { type: 'string' },
    batch: { type: 'string', default: '16' },
    seq: { type: 'string', default: '128' },
  },
});

const cfg: ModelConfig = {
  architecture: 'qwen2', vocabSize: 1024, hiddenSize: 256, intermediateSize: 768, numLayers: 6, numHeads: 4, numKVHeads: 2, headDim: 64,
  ropeTheta: 10000, rmsNormEps: 1e-6, tieWordEmbeddings: true, qkvBias: true, oBias: false, mlpBias: false, maxPositionEmbeddings: 512,
  bosTokenId: 1, eosTokenIds: [2], attnImplementation: null, dtype: 'float32',
};
const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gravity-bench-train-'));
writeRandomCheckpoint(dir, cfg, { seed: 0, dtype: 'F32' });
const B = Number(values.batch);
const T = Number(values.seq);
const ids = new Int32Array(B * T).map((_, i) => (i * 7919 + 13) % cfg.vocabSize);
const batch = { ids, labels: Int32Array.from(ids), B, T };
const be = createCpuBackend(values.threads ? { threads: Number(values.threads) } : {});
await new Promise((r) => setTimeout(r, 300)); // let the worker threads boot

for (const attention of values.attn!.split(',') as AttentionKind[]) {
  const tr = await Trainer.create(dir, { full: true, attention, trainMasses: attention !== 'dot', lr: 1e-3, totalSteps: 100 }, { backend: be });
  const params = tr.params.reduce((n, p) => n + p.data.length, 0);
  await tr.trainStep([batch]); // warm-up (JIT, arena growth)
  const steps = Number(values.steps);
  const t0 = performance.now();
  let loss = 0;
  for (let i = 0; i < steps; i++) loss = (await tr.trainStep([batch])).loss;
  const s = (performance.now() - t0) / 1000 / steps;
  console.log(`${attention}: ${params.toLocaleString('en-US')} params, ${B}x${T} tokens/step, ${s.toFixed(2)} s/step, ${(B * T / s).toFixed(0)} tokens/s (${be.engine.threads} threads, loss ${loss.toFixed(3)})`);
}
be.engine.close();
fs.rmSync(dir, { recursive: true, force: true });
