import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { BatchSchedule, PackedData } from '../src/train/data.js';
import { latestCheckpoint, runTraining, type LoopOptions, type TrainerLike } from '../src/train/loop.js';
import type { Batch, StepResult } from '../src/train/trainer.js';
import { GravityError } from '../src/errors.js';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const ROOT = path.join(HERE, '..');

/** A trainer stand-in: remembers the first id of every batch row it trained on; save/resume a small JSON. */
class FakeTrainer implements TrainerLike {
  step = 0;
  seen: number[][] = [];
  saves = 0;
  constructor(private readonly cfg: { nanAt?: number; throwAt?: number; failSaveAt?: number; sleepMs?: number } = {}) {}
  trainStep(micro: Batch[]): StepResult {
    if (this.cfg.sleepMs) Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, this.cfg.sleepMs);
    if (this.step + 1 === this.cfg.throwAt) throw new GravityError(`training loss is NaN at step ${this.step + 1} (micro-batch 0): stopping`);
    this.step++;
    this.seen[this.step] = micro.flatMap((b) => Array.from({ length: b.B }, (_, i) => b.ids[i * b.T]));
    const loss = this.step === this.cfg.nanAt ? NaN : 3 / this.step;
    return { loss, tokens: micro.length * 7, gradNorm: 0.5, lr: 1e-3, moduleGradNorms: { 'layers.0.q_proj': 0.1 * this.step, 'layers.1.v_proj': 0.2, 'layers.0.mass': 1e-3 } };
  }
  evaluate(batches: Batch[]) {
    return { loss: 2 + 1 / (this.step + 1), tokens: batches.length * 10 };
  }
  save(dir: string): void {
    this.saves++;
    if (this.step === this.cfg.failSaveAt) {
      fs.writeFileSync(path.join(dir, 'partial.bin'), 'x');
      throw Object.assign(new Error('ENOSPC: no space left on device, write'), { code: 'ENOSPC' });
    }
    fs.writeFileSync(path.join(dir, 'adapter_model.safetensors'), JSON.stringify({ step: this.step }));
    fs.writeFileSync(path.join(dir, 'adapter_config.json'), '{}');
  }
  resume(dir: string): void {
    this.step = JSON.parse(fs.readFileSync(path.join(dir, 'adapter_model.safetensors'), 'utf8')).step;
  }
  massLog(): Float32Array[] {
    return [Float32Array.from([0, 1]), Float32Array.from([-1, 2 + this.step * 0.1])];
  }
}

function data(n: number, T = 4): PackedData {
  const ids = new Int32Array(n * T);
  for (let w = 0; w < n; w++) for (let t = 0; t < T; t++) ids[w * T + t] = w * 100 + t;
  return new PackedData(ids, ids.slice(), T);
}

const sink = { write: (_s: string) => true, isTTY: false } as unknown as NodeJS.WritableStream;
function loopOpts(out: string, o: Partial<LoopOptions> = {}): LoopOptions {
  return {
    outDir: out,
    totalSteps: 6,
    schedule: new BatchSchedule(data(5), 2, 1, 3),
    val: [data(1).batch([0])],
    evalEvery: 3,
    saveEvery: 2,
    logEvery: 1,
    resume: false,
    runInfo: { order: { seed: 3, batch_size: 2 } },
    stderr: sink,
    handleSignals: false,
    ...o,
  };
}
const made: string[] = [];
const tmpdir = () => {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'gravity-loop-'));
  made.push(d);
  return d;
};
process.on('exit', () => made.forEach((d) => fs.rmSync(d, { recursive: true, force: true })));
const readMetrics = (out: string): any[] => fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));

// SIGINT test (below): this file, started with GRAVITY_LOOP_CHILD=OUT, is the child that runs a slow loop
if (process.env.GRAVITY_LOOP_CHILD) {
  const out = process.env.GRAVITY_LOOP_CHILD;
  const r = await runTraining(new FakeTrainer({ sleepMs: 40 }), { ...loopOpts(out, { totalSteps: 10000, saveEvery: 0, evalEvery: 0, handleSignals: true }), stderr: process.stderr });
  process.stderr.write(r.message + '\n');
  process.exit(r.status === 'interrupted' ? 130 : 1);
}

test('loop: checkpoints, metrics.jsonl, final adapter', async () => {
  const out = tmpdir();
  const tr = new FakeTrainer();
  const r = await runTraining(tr, loopOpts(out));
  assert.equal(r.status, 'done');
  assert.equal(r.step, 6);
  for (const s of [2, 4, 6]) assert.ok(fs.existsSync(path.join(out, `checkpoint-${s}`, 'loop-state.json')), `checkpoint-${s}`);
  assert.ok(!fs.existsSync(path.join(out, 'checkpoint-1')));
  assert.equal(latestCheckpoint(out)!.step, 6);
  assert.equal(JSON.parse(fs.readFileSync(path.join(out, 'adapter_model.safetensors'), 'utf8')).step, 6);
  assert.deepEqual(fs.readdirSync(out).filter((f) => f.startsWith('.tmp')), []);
  const m = readMetrics(out);
  const train = m.filter((x) => x.type === 'train');
  assert.deepEqual(train.map((x) => x.step), [1, 2, 3, 4, 5, 6]);
  for (const k of ['loss', 'lr', 'grad_norm', 'tokens', 'tokens_per_s', 'elapsed_s']) assert.equal(typeof train[0][k], 'number', k);
  assert.equal(train[1].loss, 1.5);
  assert.deepEqual(m.filter((x) => x.type === 'eval').map((x) => x.step), [0, 3, 6]);
  assert.equal(m.find((x) => x.type === 'eval').val_ppl, Number(Math.exp(3).toPrecision(5)));
  assert.deepEqual(m.filter((x) => x.type === 'modules').map((x) => x.keys), [['layers.0.q_proj', 'layers.1.v_proj', 'layers.0.mass']]);
  assert.deepEqual(train[2].gn, [0.3, 0.2, 0.001]);
  const mass = m.filter((x) => x.type === 'mass');
  assert.equal(mass[0].step, 0);
  assert.deepEqual(mass[0].mass[0], [Number(Math.log(2).toPrecision(5)), Number(Math.log1p(Math.E).toPrecision(5))]);
  assert.equal(mass.at(-1).step, 6);
  assert.equal(JSON.parse(fs.readFileSync(path.join(out, 'run.json'), 'utf8')).order.seed, 3);
});

test('loop: NaN stops at that step and keeps the last checkpoint; --resume continues with the same batches', async () => {
  const ref = new FakeTrainer();
  await runTraining(ref, loopOpts(tmpdir()));
  const out = tmpdir();
  const bad = new FakeTrainer({ nanAt: 5 });
  const r = await runTraining(bad, loopOpts(out));
  assert.equal(r.status, 'stopped');
  assert.match(r.message, /^step 5: loss is NaN; stopped without saving; the last good checkpoint is .*checkpoint-4/);
  assert.equal(latestCheckpoint(out)!.step, 4);
  assert.ok(!fs.existsSync(path.join(out, 'checkpoint-5')));
  assert.ok(!fs.existsSync(path.join(out, 'adapter_model.safetensors')));
  // a new run without --resume refuses to overwrite
  await assert.rejects(runTraining(new FakeTrainer(), loopOpts(out)), /already has checkpoint-4; pass --resume/);
  await assert.rejects(
    runTraining(new FakeTrainer(), loopOpts(out, { resume: true, runInfo: { order: { seed: 4, batch_size: 2 } } })),
    /--resume: seed was 3 in .*run\.json, now 4/,
  );
  const again = new FakeTrainer();
  const r2 = await runTraining(again, loopOpts(out, { resume: true }));
  assert.equal(r2.status, 'done');
  assert.equal(again.seen[4], undefined); // started after step 4
  assert.deepEqual(again.seen.slice(5), ref.seen.slice(5));
  assert.deepEqual(bad.seen.slice(1, 5), ref.seen.slice(1, 5));
  const train = readMetrics(out).filter((x) => x.type === 'train');
  assert.deepEqual(train.map((x) => x.step), [1, 2, 3, 4, 5, 6]);
  assert.ok(train.every((x) => typeof x.loss === 'number'));
  await assert.rejects(runTraining(new FakeTrainer(), loopOpts(tmpdir(), { resume: true })), /--resume: .* has no checkpoint-<step> folder/);
});

test('loop: a step the trainer refuses (thrown GravityError) stops and keeps the last checkpoint', async () => {
  const out = tmpdir();
  const r = await runTraining(new FakeTrainer({ throwAt: 3 }), loopOpts(out));
  assert.equal(r.status, 'stopped');
  assert.equal(r.step, 2);
  assert.match(r.message, /^step 3: training loss is NaN at step 3 \(micro-batch 0\): stopping; the last good checkpoint is .*checkpoint-2/);
  assert.equal(latestCheckpoint(out)!.step, 2);
  const r0 = await runTraining(new FakeTrainer({ throwAt: 1 }), loopOpts(tmpdir()));
  assert.match(r0.message, /no checkpoint was saved before it/);
});

test('loop: a failed save (ENOSPC) leaves the previous checkpoint intact', async () => {
  const out = tmpdir();
  await assert.rejects(
    runTraining(new FakeTrainer({ failSaveAt: 4 }), loopOpts(out)),
    /could not save checkpoint-4 in .* \(no space left on device\); the previous checkpoint .*checkpoint-2 is intact/,
  );
  assert.equal(latestCheckpoint(out)!.step, 2);
  assert.deepEqual(fs.readdirSync(path.join(out, 'checkpoint-2')).sort(), ['adapter_config.json', 'adapter_model.safetensors', 'loop-state.json']);
  assert.deepEqual(fs.readdirSync(out).filter((f) => f.startsWith('.tmp')), []);
});

test('loop: SIGINT saves a checkpoint and exits cleanly', async () => {
  const out = tmpdir();
  const child = spawn(process.execPath, ['--import', 'tsx', path.join(HERE, 'train-cli.test.ts')], {
    cwd: ROOT,
    env: { ...process.env, GRAVITY_LOOP_CHILD: out, NODE_TEST_CONTEXT: '' },
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let stderr = '';
  child.stderr.on('data', (d) => (stderr += d));
  const metrics = path.join(out, 'metrics.jsonl');
  const t0 = Date.now();
  while (!(fs.existsSync(metrics) && fs.readFileSync(metrics, 'utf8').split('"type":"train"').length > 3)) {
    if (Date.now() - t0 > 15000) throw new Error(`child made no progress: ${stderr}`);
    await new Promise((r) => setTimeout(r, 50));
  }
  child.kill('SIGINT');
  const code = await new Promise<number | null>((r) => child.on('exit', (c) => r(c)));
  assert.equal(code, 130, stderr);
  const m = /interrupted at step (\d+)\/10000; saved (\S+) \(continue with --resume\)/.exec(stderr);
  assert.ok(m, stderr);
  assert.ok(Number(m[1]) >= 3);
  assert.equal(latestCheckpoint(out)!.step, Number(m[1]));
  assert.ok(fs.existsSync(path.join(m[2], 'adapter_model.safetensors')));
});


// ----- end to end with the real Trainer on the tiny training fixture (input_ids data: the fixture has no tokenizer)
const FIXTURE = path.join(ROOT, 'test', 'fixtures', 'train-qwen2-qkvo');

function gravity(args: string[]): Promise<{ code: number | null; stderr: string; stdout: string }> {
  return new Promise((resolve) => {
    const child = spawn(process.execPath, ['--import', 'tsx', path.join(ROOT, 'src', 'cli', 'main.ts'), ...args], { cwd: ROOT, env: { ...process.env, GRAVITY_NO_PROGRESS: '1' } });
    let stderr = '';
    let stdout = '';
    child.stderr.on('data', (d) => (stderr += d));
    child.stdout.on('data', (d) => (stdout += d));
    child.on('exit', (code) => resolve({ code, stderr, stdout }));
  });
}

function idsFile(dir: string): string {
  let s = 12345;
  const rnd = () => ((s = (Math.imul(s, 1103515245) + 12345) >>> 0) >>> 8) / 2 ** 24;
  const lines = Array.from({ length: 12 }, () => JSON.stringify({ input_ids: Array.from({ length: 5 + Math.floor(rnd() * 20) }, () => 3 + Math.floor(rnd() * 250)) }));
  const f = path.join(dir, 'd.jsonl');
  fs.writeFileSync(f, lines.join('\n') + '\n');
  return f;
}

test('gravity train end to end: metrics, checkpoints, adapter, figures; resume matches an uninterrupted run; merge', async () => {
  const dir = tmpdir();
  const data = idsFile(dir);
  const common = ['--model', FIXTURE, '--data', data, '--val-fraction', '0.2', '--seq-len', '32', '--batch-size', '2', '--lr', '1e-2', '--min-lr-ratio', '1', '--train-masses', '--eval-every', '2', '--save-every', '1', '--log-every', '1'];
  const a = path.join(dir, 'a');
  const ra = await gravity(['train', ...common, '--steps', '3', '--out', a]);
  assert.equal(ra.code, 0, ra.stderr);
  assert.match(ra.stderr, /data: 12 records -> \d+ windows of 32 tokens/);
  assert.match(ra.stderr, /step 3\/3 loss \d/);
  assert.match(ra.stderr, /done: 3 steps/);
  const m = readMetrics(a);
  const train = m.filter((x) => x.type === 'train');
  assert.deepEqual(train.map((x) => x.step), [1, 2, 3]);
  for (const t of train) assert.ok(Number.isFinite(t.loss) && t.loss > 0 && t.tokens > 0 && t.tokens_per_s > 0, JSON.stringify(t));
  assert.deepEqual(m.filter((x) => x.type === 'eval').map((x) => x.step), [0, 2, 3]);
  const keys = m.find((x) => x.type === 'modules').keys as string[];
  assert.ok(keys.includes('layers.0.q_proj') && keys.includes('layers.1.mass'), keys.join());
  const mass = m.filter((x) => x.type === 'mass');
  assert.notDeepEqual(mass[0].mass, mass.at(-1).mass); // masses trained
  for (const f of ['adapter_config.json', 'adapter_model.safetensors', 'gravity_mass_log.safetensors', 'loss.png', 'loss.svg', 'masses.png', 'masses.svg', 'grad_norms.png', 'grad_norms.svg', 'run.json']) {
    assert.ok(fs.existsSync(path.join(a, f)), f);
  }
  assert.deepEqual([...fs.readFileSync(path.join(a, 'loss.png')).subarray(1, 4)], [0x50, 0x4e, 0x47]);
  for (const s of [1, 2, 3]) assert.ok(fs.existsSync(path.join(a, `checkpoint-${s}`, 'loop-state.json')));

  // the same run in two parts: 2 steps, then --resume to 3 (constant lr, so the schedule agrees)
  const b = path.join(dir, 'b');
  const rb1 = await gravity(['train', ...common, '--steps', '2', '--out', b]);
  assert.equal(rb1.code, 0, rb1.stderr);
  const again = await gravity(['train', ...common, '--steps', '3', '--out', b]);
  assert.equal(again.code, 1);
  assert.match(again.stderr, /already has checkpoint-2; pass --resume/);
  const rb2 = await gravity(['train', ...common, '--steps', '3', '--resume', '--out', b]);
  assert.equal(rb2.code, 0, rb2.stderr);
  assert.match(rb2.stderr, /resuming from .*checkpoint-2 \(step 2\)/);
  const tb = readMetrics(b).filter((x) => x.type === 'train');
  assert.deepEqual(tb.map((x) => x.step), [1, 2, 3]);
  assert.equal(tb[2].loss, train[2].loss, 'step 3 loss after resume equals the uninterrupted run');
  assert.deepEqual(tb[2].gn, train[2].gn);

  // merge the adapter (+ trained masses) into a standalone model folder
  const merged = path.join(dir, 'merged');
  const rm = await gravity(['merge', '--model', FIXTURE, '--adapter', a, '--out', merged]);
  assert.equal(rm.code, 0, rm.stderr);
  assert.ok(fs.readdirSync(merged).some((f) => f.endsWith('.safetensors')));
  assert.ok(fs.existsSync(path.join(merged, 'config.json')));
});

test('gravity train: bad arguments and bad data give one-line errors', async () => {
  const dir = tmpdir();
  const data = idsFile(dir);
  const base = ['train', '--model', FIXTURE, '--out', path.join(dir, 'o'), '--seq-len', '32'];
  const same = await gravity([...base, '--data', data, '--val-data', data]);
  assert.equal(same.code, 1);
  assert.match(same.stderr, /gravity: --val-data .*d\.jsonl is the training file; validation must not overlap training/);
  const bad = path.join(dir, 'bad.jsonl');
  fs.writeFileSync(bad, '{"input_ids": [5, 6]}\n{"input_ids": [5,\n');
  const rbad = await gravity([...base, '--data', bad]);
  assert.equal(rbad.code, 1);
  assert.match(rbad.stderr, /^gravity: .*bad\.jsonl:2: not valid JSON \(/m);
  const both = await gravity([...base, '--data', data, '--steps', '2', '--epochs', '1']);
  assert.match(both.stderr, /gravity: give --steps or --epochs, not both/);
  const long = await gravity([...base.slice(0, -2), '--data', data, '--seq-len', '1000']);
  assert.match(long.stderr, /gravity: --seq-len 1000 is longer than the model's max_position_embeddings 256/);
});
