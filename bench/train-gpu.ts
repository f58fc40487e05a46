/**
 * Training benchmark on WebGPU against PyTorch + PEFT on the same card (run on the GPU machine):
 *   python3 reference/bench_torch.py --preset qwen2.5-0.5b --dir /tmp/q05 --json /dev/null --make-only
 *   python3 reference/bench_train_torch.py --dir /tmp/q05 --json train_torch.json
 *   node dist/bench/train-gpu.js --dir /tmp/q05 --torch train_torch.json [--lens 1024,4096,8192,16384,32768]
 * Same setup as the torch side: bf16 base, LoRA r=16 alpha=32 on q,k,v,o + trainable masses, AdamW, batch 1,
 * random tokens as labels. Each length runs in a child process with a time limit (a lost device or an
 * out-of-memory at one length does not end the run); prints a markdown table with the ratios.
 * Memory: "held" is the peak of live GPU buffers this process created (weights, activations, the buffer
 * pool); "nvidia-smi" is the peak device memory in use minus the value at the start, where nvidia-smi exists.
 */
import { execFile, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import { parseArgs } from 'node:util';
import { createWebGPUBackend } from '../src/backend/webgpu/index.js';
import { createWebGPUTrainOps } from '../src/train/webgpu/ops.js';
import { Trainer, type Batch } from '../src/train/trainer.js';

const { values } = parseArgs({
  options: {
    dir: { type: 'string' },
    torch: { type: 'string' },
    lens: { type: 'string', default: '1024,4096,8192,16384,32768' },
    steps: { type: 'string', default: '3' },
    'budget-s': { type: 'string', default: '40' },
    'timeout-s': { type: 'string', default: '150' },
    one: { type: 'string' },
    profile: { type: 'boolean', default: false },
  },
});
const log = (...a: unknown[]) => console.error(...a);
if (!values.dir) {
  log('usage: node dist/bench/train-gpu.js --dir CHECKPOINT [--torch train_torch.json] [--lens 1024,4096,...] [--steps 3]');
  process.exit(2);
}

interface Result {
  T: number;
  tok_s?: number;
  step_s?: number;
  held_gib?: number;
  smi_gib?: number | null;
  loss?: number;
  error?: string;
  adapter?: string;
}

/** polls nvidia-smi for the device memory in use (MiB); null values where it is missing */
function smiPoller(): { stop: () => Promise<number | null> } {
  let base: number | null = null;
  let peak: number | null = null;
  let alive = true;
  const poll = () =>
    new Promise<void>((resolve) => {
      execFile('nvidia-smi', ['--query-gpu=memory.used', '--format=csv,noheader,nounits'], { timeout: 2000 }, (err, out) => {
        if (!err) {
          const v = Number(out.trim().split('\n')[0]);
          if (Number.isFinite(v)) {
            if (base === null) base = v;
            peak = Math.max(peak ?? v, v);
          }
        }
        resolve();
      });
    });
  const loop = (async () => {
    while (alive) {
      await poll();
      await new Promise((r) => setTimeout(r, 200));
    }
  })();
  return {
    stop: async () => {
      alive = false;
      await loop;
      return base === null || peak === null ? null : (peak - base) / 1024;
    },
  };
}

async function one(T: number): Promise<Result> {
  const smi = smiPoller();
  const be = await createWebGPUBackend({ profile: values.profile });
  // count live buffer bytes: WebGPU has no memory query
  const dev = be.ctx.device;
  const create = dev.createBuffer.bind(dev);
  let live = 0;
  let peak = 0;
  dev.createBuffer = (d: GPUBufferDescriptor) => {
    const b = create(d);
    live += b.size;
    peak = Math.max(peak, live);
    const destroy = b.destroy.bind(b);
    let dead = false;
    b.destroy = () => {
      if (!dead) live -= b.size;
      dead = true;
      destroy();
    };
    return b;
  };
  const ops = createWebGPUTrainOps(be);
  const tr = await Trainer.create(values.dir!, {
    loraR: 16, loraAlpha: 32, loraTargets: ['q_proj', 'k_proj', 'v_proj', 'o_proj'], trainMasses: true,
    optimizer: 'adamw', lr: 1e-4, weightDecay: 0, maxGradNorm: 1, totalSteps: 1000,
  }, { ops });
  const V = tr.config.vocabSize;
  let s = 12345;
  const ids = Int32Array.from({ length: T }, () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) >>> 8) % V);
  const batch: Batch = { ids, labels: ids, B: 1, T };
  let t0 = performance.now();
  let r = await tr.trainStep([batch]);
  const warm = (performance.now() - t0) / 1000;
  log(`T=${T}: warm-up step ${warm.toFixed(2)} s, loss ${r.loss.toFixed(4)}`);
  const budget = Number(values['budget-s']);
  const n = Math.max(1, Math.min(Number(values.steps), Math.floor(budget / Math.max(warm, 1e-3))));
  if (values.profile) await be.profileReport();
  t0 = performance.now();
  for (let i = 0; i < n; i++) r = await tr.trainStep([batch]);
  const dt = (performance.now() - t0) / 1000 / n;
  if (values.profile) {
    const rep = (await be.profileReport()) ?? [];
    const total = rep.reduce((a, k) => a + k.ms, 0);
    log(`-- kernel time of ${n} steps: ${total.toFixed(1)} ms GPU`);
    for (const k of rep.slice(0, 15)) log(`   ${k.kernel.padEnd(40)} ${String(k.calls).padStart(6)} calls ${k.ms.toFixed(2).padStart(10)} ms`);
  }
  const smiGib = await smi.stop();
  be.destroy();
  return { T, tok_s: T / dt, step_s: dt, held_gib: peak / 2 ** 30, smi_gib: smiGib, loss: r.loss, adapter: be.adapterName };
}

if (values.one) {
  const T = Number(values.one);
  try {
    console.log('RESULT ' + JSON.stringify(await one(T)));
    process.exit(0);
  } catch (e) {
    console.log('RESULT ' + JSON.stringify({ T, error: ((e as Error).message ?? String(e)).split('\n')[0].slice(0, 200) }));
    process.exit(1);
  }
}

/** one length in a child process, killed after --timeout-s */
function runChild(T: number): Promise<Result> {
  return new Promise((resolve) => {
    const args = [...process.execArgv, process.argv[1], '--dir', values.dir!, '--one', String(T), '--steps', values.steps!, '--budget-s', values['budget-s']!];
    if (values.profile) args.push('--profile');
    const child = spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    child.stdout.on('data', (d) => (out += d));
    const timer = setTimeout(() => child.kill('SIGKILL'), Number(values['timeout-s']) * 1000);
    child.on('exit', (code, sig) => {
      clearTimeout(timer);
      const line = out.split('\n').find((l) => l.startsWith('RESULT '));
      if (line) resolve(JSON.parse(line.slice(7)));
      else resolve({ T, error: sig ? `killed (${sig}) after ${values['timeout-s']} s` : `exit code ${code}, no result` });
    });
  });
}

const torch = values.torch && fs.existsSync(values.torch) ? JSON.parse(fs.readFileSync(values.torch, 'utf8')) : null;
const lens = values.lens!.split(',').map(Number);
const fmt = (v: number | null | undefined, d = 0) => (v === null || v === undefined ? '—' : v.toFixed(d));
const rows: string[] = [];
const header = () => {
  console.log(`\nTraining, Qwen2.5-0.5B shape, LoRA r=16 q,k,v,o + masses, AdamW, batch 1${torch ? ` — torch on ${torch.device} (torch ${torch.torch}, peft ${torch.peft})` : ''}\n`);
  console.log('| seq | ours tok/s | torch tok/s | ours / torch | ours s/step | torch s/step | ours held GiB | ours nvidia-smi GiB | torch peak GiB |');
  console.log('|---:|---:|---:|---:|---:|---:|---:|---:|---:|');
  for (const r of rows) console.log(r);
};
let adapter = '';
for (const T of lens) {
  const r = await runChild(T);
  if (r.adapter) adapter = r.adapter;
  const tt: number | null = torch?.tok_s?.[T] ?? null;
  const ratio = r.tok_s && tt ? `${(r.tok_s / tt).toFixed(2)}x` : '—';
  const ours = r.error ? `failed: ${r.error}` : fmt(r.tok_s);
  const tcell = tt ? fmt(tt) : torch?.error?.[T] ? `failed: ${torch.error[T]}` : '—';
  rows.push(`| ${T} | ${ours} | ${tcell} | ${ratio} | ${fmt(r.step_s, 3)} | ${fmt(torch?.step_s?.[T], 3)} | ${fmt(r.held_gib, 3)} | ${fmt(r.smi_gib, 2)} | ${fmt(torch?.peak_gib?.[T], 2)} |`);
  log(rows.at(-1)); // partial results as they come
}
header();
if (adapter) console.log(`\nours on: ${adapter}`);
