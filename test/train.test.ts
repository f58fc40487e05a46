/**
 * Training against PyTorch + PEFT (float64 fixtures from reference/make_fixtures.py, make_training): loss,
 * logits with the adapter, the gradient of every LoRA tensor and every mass, one SGD step, an AdamW loss curve,
 * resume, and the NaN stop.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Trainer, type Batch, type TrainerOptions } from '../src/train/trainer.js';
import { createCpuBackend } from '../src/backend/cpu/index.js';
import { openSafetensors } from '../src/io/safetensors.js';
import { loadMasses } from '../src/io/masses.js';
import { toF32 } from '../src/tensor/dtype.js';
import { FIXTURES, loadExpected, relErr } from './helpers/fixtures.js';
import { lrAt } from '../src/train/schedule.js';

const be = createCpuBackend({ threads: 1 });
const TRAIN_FIXTURES = ['train-qwen2-qkvo', 'train-llama-all'];

function batchOf(meta: { input_ids: number[][]; labels: number[][] }): Batch {
  return { ids: Int32Array.from(meta.input_ids.flat()), labels: Int32Array.from(meta.labels.flat()), B: meta.input_ids.length, T: meta.input_ids[0].length };
}

async function trainer(name: string, o: Partial<TrainerOptions>): Promise<Trainer> {
  const dir = path.join(FIXTURES, name);
  return Trainer.create(dir, { initAdapter: path.join(dir, 'adapter'), trainMasses: true, maxGradNorm: 0, warmupSteps: 0, weightDecay: 0, ...o }, { backend: be });
}

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'gravity-train-'));
}

for (const name of TRAIN_FIXTURES) {
  const exp = loadExpected(name);
  const batch = batchOf(exp.meta);
  const grads = [...exp.tensors].filter(([k]) => k.startsWith('grad.'));

  test(`${name}: loss, logits with the adapter and every LoRA / mass gradient match PyTorch`, async () => {
    const tr = await trainer(name, { optimizer: 'sgd', lr: 0 });
    const logits = await tr.logits(batch);
    const eL = relErr(logits, exp.tensors.get('logits')!.data);
    assert.ok(eL <= 1e-4, `logits rel err ${eL.toExponential(2)}`);
    const r = await tr.trainStep([batch]);
    const eLoss = Math.abs(r.loss - exp.meta.loss) / Math.abs(exp.meta.loss);
    assert.ok(eLoss <= 1e-6, `loss ${r.loss} vs ${exp.meta.loss}: rel err ${eLoss.toExponential(2)}`);
    // every trainable tensor has an expected gradient and vice versa
    assert.deepEqual(tr.params.map((p) => `grad.${p.name}`).sort(), grads.map(([k]) => k).sort());
    assert.ok(grads.some(([k]) => k.endsWith('gravity_mass_log')));
    for (const [k, g] of grads) {
      const e = relErr(tr.grad(k.slice(5)), g.data);
      assert.ok(e <= 1e-3, `${k}: rel err ${e.toExponential(2)}`);
    }
    // predicted tokens: every label after the first of its sequence that is not -100
    const labelled = exp.meta.labels.reduce((n: number, row: number[]) => n + row.slice(1).filter((l) => l !== -100).length, 0);
    assert.equal(r.tokens, labelled);
    assert.ok(Object.keys(r.moduleGradNorms).includes('layers.0.mass'));
  });

  test(`${name}: one plain SGD step moves every tensor by -lr x PyTorch's gradient`, async () => {
    const lr = 0.05;
    const tr = await trainer(name, { optimizer: 'sgd', lr, totalSteps: 1 });
    const before = new Map(tr.params.map((p) => [p.name, Float64Array.from(p.data)]));
    const r = await tr.trainStep([batch]);
    assert.equal(r.lr, lr);
    for (const [k, g] of grads) {
      const n = k.slice(5);
      const p = tr.params.find((q) => q.name === n)!;
      const delta = p.data.map((v, i) => v - before.get(n)![i]);
      const want = g.data.map((v) => -lr * v);
      const e = relErr(delta, want);
      assert.ok(e <= 1e-3, `${n}: step rel err ${e.toExponential(2)}`);
    }
    // the saved adapter and masses hold the stepped values (float32, as the adapter was read)
    const dir = tmpDir();
    try {
      tr.save(dir);
      const f = openSafetensors(path.join(dir, 'adapter_model.safetensors'));
      for (const p of tr.params.filter((q) => q.name.includes('lora_'))) {
        const t = f.read(`base_model.model.${p.name}`);
        assert.equal(t.dtype, 'F32');
        const v = toF32(t);
        for (let i = 0; i < v.length; i++) assert.equal(v[i], Math.fround(p.data[i]));
      }
      f.close();
      for (const file of ['gravity_mass_log.safetensors', 'gravity_mass_log.pt']) {
        const m = loadMasses(path.join(dir, file), tr.config.numLayers, tr.config.numHeads);
        m.forEach((v, l) => v.forEach((x, h) => assert.equal(x, Math.fround(tr.masses[l][h]))));
      }
    } finally {
      fs.rmSync(dir, { recursive: true, force: true });
    }
  });

  test(`${name}: 5 AdamW steps follow PyTorch's loss curve`, async () => {
    const hp = exp.meta.adamw;
    // constant lr (minLrRatio 1) as in the reference loop, weight decay on every tensor, masses included.
    // 1e-5, tighter than the 1e-4: ours follows to ~1e-7, and dropping weight decay shows up at 6e-6
    const tr = await trainer(name, { optimizer: 'adamw', lr: hp.lr, betas: hp.betas, adamEps: hp.eps, weightDecay: hp.weight_decay, minLrRatio: 1, totalSteps: 5 });
    const want: number[] = exp.meta.adamw_losses;
    for (let s = 0; s < want.length; s++) {
      const r = await tr.trainStep([batch]);
      const e = Math.abs(r.loss - want[s]) / Math.abs(want[s]);
      assert.ok(e <= 1e-5, `step ${s}: loss ${r.loss} vs ${want[s]} (rel err ${e.toExponential(2)})`);
    }
  });
}

test('gradient accumulation: two micro-batches equal one batch holding both', async () => {
  const exp = loadExpected('train-llama-all');
  const full = batchOf(exp.meta);
  const half = (b: number): Batch => ({ ids: full.ids.slice(b * 16, b * 16 + 16), labels: full.labels.slice(b * 16, b * 16 + 16), B: 1, T: 16 });
  const a = await trainer('train-llama-all', { optimizer: 'sgd', lr: 0.01 });
  const b = await trainer('train-llama-all', { optimizer: 'sgd', lr: 0.01 });
  const ra = await a.trainStep([full]);
  const rb = await b.trainStep([half(0), half(1)]);
  assert.ok(Math.abs(ra.loss - rb.loss) < 1e-9 * ra.loss);
  assert.equal(ra.tokens, rb.tokens);
  for (let i = 0; i < a.params.length; i++) assert.ok(relErr(b.params[i].grad, a.params[i].grad) < 1e-5, a.params[i].name);
});

test('save + resume continues exactly (AdamW moments, step count, f64 parameters)', async () => {
  const exp = loadExpected('train-qwen2-qkvo');
  const batch = batchOf(exp.meta);
  const o: Partial<TrainerOptions> = { optimizer: 'adamw', lr: 1e-2, weightDecay: 0.01, maxGradNorm: 1, warmupSteps: 1, totalSteps: 4 };
  const a = await trainer('train-qwen2-qkvo', o);
  await a.trainStep([batch]);
  await a.trainStep([batch]);
  const dir = tmpDir();
  try {
    a.save(dir);
    const ra = await a.trainStep([batch]);
    const b = await trainer('train-qwen2-qkvo', o);
    b.resume(dir);
    const rb = await b.trainStep([batch]);
    assert.equal(rb.loss, ra.loss);
    assert.equal(rb.lr, ra.lr);
    for (let i = 0; i < a.params.length; i++) assert.deepEqual(b.params[i].data, a.params[i].data);
    const state = JSON.parse(fs.readFileSync(path.join(dir, 'trainer_state.json'), 'utf8'));
    assert.equal(state.step, 2);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('clipping scales the gradient to max norm; the reported norm is the one before clipping', async () => {
  const exp = loadExpected('train-qwen2-qkvo');
  const tr = await trainer('train-qwen2-qkvo', { optimizer: 'sgd', lr: 0, maxGradNorm: 0.5 });
  const r = await tr.trainStep([batchOf(exp.meta)]);
  let s = 0;
  for (const p of tr.params) for (const g of p.grad) s += g * g;
  assert.ok(r.gradNorm > 0.5);
  assert.ok(Math.abs(Math.sqrt(s) - 0.5) < 1e-6);
});

test('fresh LoRA starts at the base model (B = 0) and dropout changes the training loss only', async () => {
  const exp = loadExpected('train-qwen2-qkvo');
  const batch = batchOf(exp.meta);
  const dir = path.join(FIXTURES, 'train-qwen2-qkvo');
  const tr = await Trainer.create(dir, { loraR: 4, loraAlpha: 8, loraDropout: 0.3, loraTargets: ['all'], seed: 7, optimizer: 'sgd', lr: 0 }, { backend: be });
  const base = await Trainer.create(dir, { loraTargets: [], trainMasses: true, optimizer: 'sgd', lr: 0 }, { backend: be });
  const ev = await tr.evaluate([batch]);
  const evBase = await base.evaluate([batch]);
  assert.ok(Math.abs(ev.loss - evBase.loss) < 1e-9 * evBase.loss);
  const A = tr.params.find((p) => p.name.endsWith('q_proj.lora_A.weight'))!;
  const bound = 1 / Math.sqrt(A.shape[1]);
  assert.ok(A.data.every((v) => Math.abs(v) <= bound) && A.data.some((v) => v !== 0));
  const r = await tr.trainStep([batch]); // B = 0: loss is the base loss even with dropout
  assert.ok(Math.abs(r.loss - evBase.loss) < 1e-9 * evBase.loss);
  assert.ok(tr.params.filter((p) => p.name.includes('lora_A')).every((p) => p.grad.every((g) => g === 0)));
  assert.ok(tr.params.filter((p) => p.name.includes('lora_B')).some((p) => p.grad.some((g) => g !== 0)));
});

test('NaN loss stops training with a message; empty targets and bad ids are clear errors', async () => {
  const exp = loadExpected('train-qwen2-qkvo');
  const batch = batchOf(exp.meta);
  const tr = await trainer('train-qwen2-qkvo', { optimizer: 'sgd', lr: 0.1 });
  const ignored: Batch = { ...batch, labels: new Int32Array(batch.labels.length).fill(-100) };
  await assert.rejects(tr.trainStep([ignored]), /no predicted tokens/);
  await assert.rejects(tr.trainStep([{ ...batch, ids: batch.ids.map((v, i) => (i === 3 ? 999 : v)) }]), /token id 999 .*outside the vocabulary/);
  tr.params[0].data[0] = NaN;
  await assert.rejects(tr.trainStep([batch]), /loss is NaN at step 1.*stopping/);
});

test('trainable norms: whole-model gradients match finite differences of the loss; saved as modules_to_save', async () => {
  const exp = loadExpected('train-llama-all');
  const batch = batchOf(exp.meta);
  const tr = await trainer('train-llama-all', { optimizer: 'sgd', lr: 0, trainNorms: true, precision: 'f64' });
  await tr.trainStep([batch]);
  const names = ['model.layers.0.input_layernorm.weight', 'model.layers.1.post_attention_layernorm.weight', 'model.norm.weight'];
  for (const n of names) {
    const p = tr.params.find((q) => q.name === n)!;
    const got: number[] = [];
    const num: number[] = [];
    for (const i of [0, 7, 31]) {
      const keep = p.data[i];
      const h = 1e-3; // the forward rounds RMSNorm through float32 like transformers: a step well above 1e-7
      p.data[i] = keep + h;
      const lp = (await tr.evaluate([batch])).loss;
      p.data[i] = keep - h;
      const lm = (await tr.evaluate([batch])).loss;
      p.data[i] = keep;
      num.push((lp - lm) / (2 * h));
      got.push(p.grad[i]);
    }
    assert.ok(relErr(got, num) < 1e-2, `${n}: ${got} vs ${num}`);
  }
  const dir = tmpDir();
  try {
    tr.save(dir);
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8'));
    assert.deepEqual(cfg.modules_to_save, ['input_layernorm', 'post_attention_layernorm', 'norm']);
    const f = openSafetensors(path.join(dir, 'adapter_model.safetensors'));
    assert.ok(f.tensors.has('base_model.model.model.norm.weight'));
    f.close();
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('schedule: linear warmup then cosine to minLrRatio', () => {
  const o = { lr: 1, warmupSteps: 4, totalSteps: 14, minLrRatio: 0.1 };
  assert.equal(lrAt(0, o), 0);
  assert.equal(lrAt(2, o), 0.5);
  assert.equal(lrAt(4, o), 1);
  assert.ok(Math.abs(lrAt(9, o) - 0.55) < 1e-12);
  assert.ok(Math.abs(lrAt(14, o) - 0.1) < 1e-12);
  assert.ok(Math.abs(lrAt(100, o) - 0.1) < 1e-12);
});
