/**
 * CPU benchmark: prefill and decode tokens/s, gravity and dot-product attention side by side on the same
 * weights (one load, the attention switched between runs), plus peak RSS.
 *   node dist/bench/cpu.js [--preset qwen2.5-0.5b] [--dir /tmp/gravity-bench] [--prefill 128,1024] [--decode-prompt 512] [--decode 32]
 * A random checkpoint of the preset's shape is written once into --dir and reused. Where node-llama-cpp is installed
 * (not a dependency: `npm i --no-save -E node-llama-cpp@3.21.1 @node-llama-cpp/linux-x64@3.21.1 --omit=optional`),
 * the same checkpoint exported to GGUF (bf16) also runs in llama.cpp on as many threads (dot-product attention only).
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
    /** bf16: the checkpoint folder; q8_0: the checkpoint exported to a Q8_0 GGUF, its linears kept at 8 bits */
    weights: { type: 'string', default: 'bf16' },
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
const wtype = values.weights === 'q8_0' ? 'q8_0' : 'bf16';
/** the checkpoint as a GGUF file of `type` (written once) */
async function ggufOf(type: 'bf16' | 'q8_0'): Promise<string> {
  const file = path.join(dir, `model-${type}.gguf`);
  if (!fs.existsSync(file)) {
    const { exportGguf } = await import('../src/io/gguf.js');
    const { loadCheckpointFiles } = await import('../src/io/checkpoint.js');
    const { loadMasses } = await import('../src/io/masses.js');
    const f = loadCheckpointFiles(dir);
    const c = f.config;
    const masses = f.massesPath ? loadMasses(f.massesPath, c.numLayers, c.numHeads, { numKVHeads: c.numKVHeads }) : null;
    exportGguf({ config: c, weights: f.weights, masses, defaults: {}, eosTokenIds: [], tokenizerJson: null, tokenizerConfig: null, name: preset }, file, type);
    f.weights.close();
  }
  return file;
}
const t0 = performance.now();
const model = await loadModel(wtype === 'q8_0' ? await ggufOf('q8_0') : dir, { backend: be });
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

const cpp = await llamaCpp(rows.length);

console.log(`\n${preset} ${wtype} (ours and llama.cpp's), cpu (${be.engine.kind} matmul, ${be.engine.threads} threads), ${os.cpus()[0]?.model ?? ''}`);
console.log(`| measure | gravity | dot | gravity / dot |${cpp ? ' llama.cpp (dot) | gravity / llama.cpp |' : ''}`);
console.log(`|---|---|---|---|${cpp ? '---|---|' : ''}`);
rows.forEach(([name, gv, dv], i) => console.log(`| ${name} | ${gv.toFixed(2)} | ${dv.toFixed(2)} | ${(gv / dv).toFixed(3)} |${cpp ? ` ${cpp[i].toFixed(2)} | ${(gv / cpp[i]).toFixed(3)} |` : ''}`));
/** llama.cpp's tok/s for the same rows (prefills, then the decode), best of two; null without node-llama-cpp */
async function llamaCpp(n: number): Promise<number[] | null> {
  let mod: any;
  try {
    const spec = 'node-llama-cpp';
    mod = await import(spec);
  } catch {
    console.error('node-llama-cpp is not installed: no llama.cpp column');
    return null;
  }
  const file = await ggufOf(wtype);
  const llama = await mod.getLlama({ gpu: false, logLevel: 'error' });
  const m = await llama.loadModel({ modelPath: file });
  const ctx = await m.createContext({ contextSize: 2048, threads: be.engine.threads, batchSize: 1024 });
  const seq = ctx.getSequence();
  const out: number[] = [];
  const best2 = async (f: () => Promise<number>) => Math.max(await f(), await f());
  for (const np of values.prefill!.split(',').map(Number)) {
    out.push(await best2(async () => {
      await seq.clearHistory();
      const t = performance.now();
      await seq.evaluateWithoutGeneratingNewTokens(ids(np, np));
      return np / ((performance.now() - t) / 1000);
    }));
  }
  out.push(await best2(async () => {
    await seq.clearHistory();
    await seq.evaluateWithoutGeneratingNewTokens(ids(dp, 7));
    let k = 0;
    let t = 0;
    for await (const _ of seq.evaluate([1000], { temperature: 0 })) {
      if (k === 0) t = performance.now(); // the first token pays for the one fed
      if (++k > dn) break;
    }
    return dn / ((performance.now() - t) / 1000);
  }));
  await ctx.dispose();
  await m.dispose();
  return out.length === n ? out : null;
}

console.log(`peak RSS ${(process.resourceUsage().maxRSS / 1024 / 1024).toFixed(2)} GiB`);
process.exit(0);
