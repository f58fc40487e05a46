/**
 * CPU benchmark: prefill and decode tokens/s, gravity and dot-product attention side by side on the same
 * weights (one load, the attention switched between runs), plus peak RSS.
 *   node dist/bench/cpu.js [--preset qwen2.5-0.5b] [--dir /tmp/gravity-bench] [--prefill 128,1024] [--decode-prompt 512] [--decode 32]
 * A random checkpoint of the preset's shape is written once into --dir and reused.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as os from 'node:os';
import { parseArgs } from 'node:util';
import { PRESETS, writeRandomCheckpoint } from '../src/io/random.js';
import { loadModel } from '../src/model/load.js';
import { createCpuBackend } from '../src/backend/cpu/index.js';
import type { AttentionKind } from '../src/backend/backend.js';

const { values } = parseArgs({
  options: {
    preset: { type: 'string', default: 'qwen2.5-0.5b' },
    dir: { type: 'string', default: path.join(os.tmpdir(), 'gravity-bench') },
    prefill: { type: 'string', default: '128,1024' },
    'decode-prompt': { type: 'string', default: '512' },
    decode: { type: 'string', default: '32' },
    threads: { type: 'string' },
  },
});

const preset = values.preset!;
const cfg = PRESETS[preset];
if (!cfg) throw new Error(`unknown preset ${preset}`);
const dir = path.join(values.dir!, preset);
if (!fs.existsSync(path.join(dir, 'config.json'))) {
  console.error(`writing a random ${preset} checkpoint to ${dir} ...`);
  writeRandomCheckpoint(dir, cfg, { seed: 1, dtype: 'BF16' });
}
const be = createCpuBackend({ threads: values.threads ? Number(values.threads) : undefined });
const t0 = performance.now();
const model = await loadModel(dir, { backend: be });
console.error(`loaded in ${((performance.now() - t0) / 1000).toFixed(1)} s; matmul ${be.engine.kind} x${be.engine.threads} threads`);

function ids(n: number, seed: number): number[] {
  const out: number[] = [];
  let s = seed;
  for (let i = 0; i < n; i++) {
    s = (s * 1103515245 + 12345) % 2147483648;
    out.push(1000 + (s % 30000));
  }
  return out;
}

async function prefill(kind: AttentionKind, n: number): Promise<number> {
  model.attention = kind;
  const s = model.newSession(1, n);
  const t = performance.now();
  await model.forward(s, [ids(n, n)]);
  return n / ((performance.now() - t) / 1000);
}

async function decode(kind: AttentionKind, prompt: number, n: number): Promise<number> {
  model.attention = kind;
  const s = model.newSession(1, prompt + n + 1);
  let logits = await model.forward(s, [ids(prompt, 7)]);
  const t = performance.now();
  for (let i = 0; i < n; i++) {
    let best = 0;
    for (let j = 1; j < logits.length; j++) if (logits[j] > logits[best]) best = j;
    logits = await model.forward(s, [[best]]);
  }
  return n / ((performance.now() - t) / 1000);
}

// warm up (JIT, worker start, first touch of the weight arenas) so that neither kind pays for it
await prefill('gravity', 32);
await prefill('dot', 32);

/** best of two runs per kind, interleaved, so a noisy neighbour hurts both sides alike */
async function pair(f: (k: AttentionKind) => Promise<number>): Promise<[number, number]> {
  const g1 = await f('gravity');
  const d1 = await f('dot');
  const d2 = await f('dot');
  const g2 = await f('gravity');
  return [Math.max(g1, g2), Math.max(d1, d2)];
}

const rows: [string, number, number][] = [];
for (const n of values.prefill!.split(',').map(Number)) {
  const [g, d] = await pair((k) => prefill(k, n));
  rows.push([`prefill ${n} tok/s`, g, d]);
}
const dp = Number(values['decode-prompt']);
const dn = Number(values.decode);
const [g, d] = await pair((k) => decode(k, dp, dn));
rows.push([`decode after ${dp} tok/s`, g, d]);

console.log(`\n${preset} bf16, cpu (${be.engine.kind} matmul, ${be.engine.threads} threads), ${os.cpus()[0]?.model ?? ''}`);
console.log('| measure | gravity | dot | gravity / dot |');
console.log('|---|---|---|---|');
for (const [name, gv, dv] of rows) console.log(`| ${name} | ${gv.toFixed(2)} | ${dv.toFixed(2)} | ${(gv / dv).toFixed(3)} |`);
console.log(`peak RSS ${(process.resourceUsage().maxRSS / 1024 / 1024).toFixed(2)} GiB`);
process.exit(0);
