/**
 * Full-parameter training on tiny random models (init-random): the loss falls on a repeated batch, every
 * weight's gradient (embedding incl. the tied lm_head, linears, biases, norms, masses per group) matches finite
 * differences, the saved model folder loads with loadModel and gives the trainer's logits (gravity, dot,
 * gravity-pure, ε from config.json), resume equals an uninterrupted run, and `gravity train --full` runs end to end.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { Trainer, type Batch, type TrainerOptions } from '../src/train/trainer.js';
import { createCpuBackend } from '../src/backend/cpu/index.js';
import { writeRandomCheckpoint } from '../src/io/random.js';
import { loadMasses, massName } from '../src/io/masses.js';
import { openSafetensors } from '../src/io/safetensors.js';
import { loadModel } from '../src/model/load.js';
import type { ModelConfig } from '../src/model/config.js';
import type { AttentionKind } from '../src/backend/backend.js';

const be = createCpuBackend({ threads: 2 });

const base: ModelConfig = {
  architecture: 'qwen2', vocabSize: 40, hiddenSize: 16, intermediateSize: 24, numLayers: 2, numHeads: 4, numKVHeads: 2, headDim: 4,
  ropeTheta: 10000, rmsNormEps: 1e-6, tieWordEmbeddings: true, qkvBias: true, oBias: false, mlpBias: false, maxPositionEmbeddings: 64,
  bosTokenId: 1, eosTokenIds: [2], attnImplementation: null, dtype: 'float32',
};
// untied, with o_proj and MLP biases
const llama: ModelConfig = { ...base, architecture: 'llama', tieWordEmbeddings: false, qkvBias: true, oBias: true, mlpBias: true };

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'gravity-full-'));
}

function model(cfg: ModelConfig, seed = 3): string {
  const dir = tmpDir();
  writeRandomCheckpoint(dir, cfg, { seed, dtype: 'F32' });
  fs.writeFileSync(path.join(dir, 'tokenizer_config.json'), '{"eos_token": null}\n');
  return dir;
}

function batch(B: number, T: number, V: number, seed: number): Batch {
  const ids = new Int32Array(B * T);
  let s = seed;
  for (let i = 0; i < ids.length; i++) {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    ids[i] = 3 + (s >>> 8) % (V - 3);
  }
  const labels = Int32Array.from(ids);
  labels[T - 1] = -100;
  return { ids, labels, B, T };
}

const FULL: Partial<TrainerOptions> = { full: true, weightDecay: 0, maxGradNorm: 0, warmupSteps: 0, totalSteps: 100 };

test('full training reduces the loss on a repeated batch (20 AdamW steps, f32 engine)', async () => {
  const dir = model(base);
  const tr = await Trainer.create(dir, { ...FULL, lr: 1e-2, trainMasses: true }, { backend: be });
  const b = batch(4, 12, base.vocabSize, 1);
  const losses: number[] = [];
  for (let i = 0; i < 20; i++) losses.push((await tr.trainStep([b])).loss);
  assert.ok(losses[19] < 0.5 * losses[0], `loss ${losses[0].toFixed(3)} -> ${losses[19].toFixed(3)}`);
  // every base weight is a parameter; the tied model has no lm_head.weight
  const names = tr.params.map((p) => p.name);
  for (const n of ['model.embed_tokens.weight', 'model.layers.1.self_attn.q_proj.bias', 'model.layers.0.mlp.down_proj.weight', 'model.norm.weight', massName(1)]) assert.ok(names.includes(n), n);
  assert.ok(!names.includes('lm_head.weight'));
  assert.ok(tr.params.find((p) => p.name === 'model.embed_tokens.weight')!.data instanceof Float32Array, 'f32 masters');
  // decay only on matrices
  const wd = await Trainer.create(dir, { ...FULL, weightDecay: 0.1 }, { backend: be });
  assert.equal(wd.params.find((p) => p.name === 'model.norm.weight')!.weightDecay, 0);
  assert.equal(wd.params.find((p) => p.name === 'model.layers.0.self_attn.k_proj.bias')!.weightDecay, 0);
  assert.equal(wd.params.find((p) => p.name === 'model.layers.0.self_attn.k_proj.weight')!.weightDecay, 0.1);
});

/** a few entries of a parameter: analytic gradient vs central differences of the f64 loss */
async function fdParam(tr: Trainer, name: string, b: Batch, picks: number, h: number): Promise<number> {
  const p = tr.params.find((q) => q.name === name)!;
  await tr.trainStep([b]); // lr 0: gradients only
  const g = Float64Array.from(tr.grad(name));
  const loss = async () => (await tr.evaluate([b])).loss;
  let worst = 0;
  let gmax = 0;
  for (const v of g) gmax = Math.max(gmax, Math.abs(v));
  assert.ok(gmax > 0, `${name}: gradient is all zero`);
  // the entries with the largest gradients plus spread ones (embedding rows of unused ids are 0)
  const order = [...g.keys()].sort((a, c) => Math.abs(g[c]) - Math.abs(g[a]));
  const idx = [...order.slice(0, picks), ...Array.from({ length: picks }, (_, k) => Math.floor((k * g.length) / picks))];
  for (const i of idx) {
    const keep = p.data[i];
    p.data[i] = keep + h;
    const up = p.data[i];
    const lp = await loss();
    p.data[i] = keep - h;
    const dn = p.data[i];
    const lm = await loss();
    p.data[i] = keep;
    const num = (lp - lm) / (up - dn);
    worst = Math.max(worst, Math.abs(num - g[i]) / gmax);
  }
  return worst;
}

for (const [label, cfg] of [['qwen2 tied', base], ['llama untied + biases', llama]] as const) {
  test(`full training gradients (${label}) match finite differences: embedding, linears, biases, norms, lm_head, group masses`, async () => {
    const dir = model(cfg, 5);
    const tr = await Trainer.create(dir, { ...FULL, lr: 0, trainMasses: true, massPerGroup: true, precision: 'f64', optimizer: 'sgd' }, { backend: be });
    const b = batch(2, 6, cfg.vocabSize, 7);
    const names = ['model.embed_tokens.weight', 'model.layers.0.self_attn.q_proj.weight', 'model.layers.1.self_attn.v_proj.bias',
      'model.layers.0.mlp.down_proj.weight', 'model.layers.1.post_attention_layernorm.weight', 'model.norm.weight', massName(0)];
    if (!cfg.tieWordEmbeddings) names.push('lm_head.weight', 'model.layers.0.self_attn.o_proj.bias', 'model.layers.1.mlp.up_proj.bias');
    assert.equal(tr.params.find((p) => p.name === massName(0))!.data.length, cfg.numKVHeads, 'one mass per KV group');
    for (const n of names) {
      // f32 masters: a step of 1e-3 is exact to ~1e-7 relative; the loss is f64
      const e = await fdParam(tr, n, b, 4, n.includes('mass') ? 1e-4 : 1e-3);
      assert.ok(e < 2e-3, `${n}: relative error ${e.toExponential(2)}`);
    }
  });
}

test('gravity-pure: the mass gradient is 0 (M² cancels in s / Σs) and the loss falls with full training', async () => {
  const dir = model(base, 8);
  const tr = await Trainer.create(dir, { ...FULL, lr: 1e-2, attention: 'gravity-pure', trainMasses: true }, { backend: be });
  const b = batch(2, 10, base.vocabSize, 9);
  const first = await tr.trainStep([b]);
  for (const v of tr.grad(massName(0))) assert.ok(Math.abs(v) < 1e-9 * Math.max(1, first.gradNorm), `pure mass grad ${v}`);
  let last = first;
  for (let i = 0; i < 10; i++) last = await tr.trainStep([b]);
  assert.ok(last.loss < first.loss, `${first.loss} -> ${last.loss}`);
});

for (const attention of ['gravity', 'dot', 'gravity-pure'] as AttentionKind[]) {
  test(`full save (${attention}) writes a model folder that loadModel runs with the trainer's logits and ε`, async () => {
    const src = model(llama, 11);
    const tr = await Trainer.create(src, { ...FULL, lr: 5e-3, attention, eps: 0.3, trainMasses: attention !== 'dot', massPerGroup: true }, { backend: be });
    const b = batch(2, 8, llama.vocabSize, 12);
    for (let i = 0; i < 3; i++) await tr.trainStep([b]);
    const out = tmpDir();
    tr.save(out);
    for (const f of ['config.json', 'model.safetensors', 'generation_config.json', 'tokenizer_config.json', 'trainer_state.json', 'optimizer.safetensors']) {
      assert.ok(fs.existsSync(path.join(out, f)), f);
    }
    // a dot run's masses are untrained: not saved (converting to gravity then needs --mass-init)
    assert.equal(fs.existsSync(path.join(out, 'gravity_mass_log.safetensors')), attention !== 'dot');
    if (attention === 'dot') {
      assert.equal((await loadModel(out, { backend: be })).attention, 'dot');
      await assert.rejects(loadModel(out, { backend: be, attention: 'gravity' }), /mass-init/);
      return;
    }
    const cfgJson = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
    assert.equal(cfgJson.gravity_eps, 0.3);
    assert.equal(cfgJson.gravity_attention, attention);
    // the masses file holds the per-group form; loading expands it over the query heads
    const groups = loadMasses(path.join(out, 'gravity_mass_log.safetensors'), 2, 4, { numKVHeads: 2, form: 'groups' });
    assert.equal(groups[0].length, 2);
    const heads = loadMasses(path.join(out, 'gravity_mass_log.pt'), 2, 4, { numKVHeads: 2 });
    assert.deepEqual([...heads[1]], [groups[1][0], groups[1][0], groups[1][1], groups[1][1]]);

    const want = await tr.logits(b);
    const m = await loadModel(out, { backend: be }); // attention and ε from config.json
    assert.equal(m.attention, attention);
    assert.equal(m.eps, 0.3);
    const ids = Array.from({ length: b.B }, (_, i) => [...b.ids.subarray(i * b.T, (i + 1) * b.T)]);
    const got = await m.forward(m.newSession(b.B, b.T), ids, { logits: 'all' });
    let worst = 0;
    for (let i = 0; i < want.length; i++) worst = Math.max(worst, Math.abs(got[i] - want[i]));
    assert.ok(worst < 1e-4, `max |logit diff| ${worst}`);
    // bf16 save: same names, 16-bit data, still loadable
    const out16 = tmpDir();
    (tr.options as TrainerOptions).saveDtype = 'bf16';
    tr.save(out16);
    const f = openSafetensors(path.join(out16, 'model.safetensors'));
    assert.equal(f.tensors.get('lm_head.weight')?.dtype, 'BF16');
    f.close();
    await loadModel(out16, { backend: be });
  });
}

test('full training resumes to the same parameters as an uninterrupted run', async () => {
  const dir = model(base, 13);
  const o = { ...FULL, lr: 1e-2, trainMasses: true, weightDecay: 0.05 };
  const b = [batch(2, 8, base.vocabSize, 14), batch(2, 8, base.vocabSize, 15)];
  const a = await Trainer.create(dir, o, { backend: be });
  for (let i = 0; i < 4; i++) await a.trainStep([b[i % 2]]);
  const c = await Trainer.create(dir, o, { backend: be });
  for (let i = 0; i < 2; i++) await c.trainStep([b[i % 2]]);
  const ck = tmpDir();
  c.save(ck);
  const d = await Trainer.create(dir, o, { backend: be });
  d.resume(ck);
  assert.equal(d.step, 2);
  for (let i = 2; i < 4; i++) await d.trainStep([b[i % 2]]);
  for (const p of a.params) {
    const q = d.params.find((x) => x.name === p.name)!;
    assert.deepEqual(q.data, p.data, p.name);
  }
});

test('gravity train --full end to end: a loadable model folder in OUT with ε and attention in config.json', async () => {
  const dir = model(base, 16);
  const data = path.join(tmpDir(), 'd.jsonl');
  const lines: string[] = [];
  for (let r = 0; r < 12; r++) lines.push(JSON.stringify({ input_ids: Array.from({ length: 9 }, (_, i) => 3 + ((r * 7 + i * 3) % 30)) }));
  fs.writeFileSync(data, lines.join('\n') + '\n');
  const out = tmpDir();
  const { run } = await import('../src/cli/train.js');
  const err = process.stderr.write;
  process.stderr.write = (() => true) as typeof process.stderr.write;
  let rc: number;
  try {
    rc = await run(['--model', dir, '--data', data, '--out', out, '--full', '--steps', '4', '--seq-len', '16', '--batch-size', '2',
      '--lr', '1e-2', '--eps', '0.2', '--mass-init', 'mass:0.5', '--train-masses', '--mass-per-group', '--save-dtype', 'bf16', '--no-figures', '--eval-every', '0']);
  } finally {
    process.stderr.write = err;
  }
  assert.equal(rc, 0);
  const cfgJson = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
  assert.equal(cfgJson.gravity_eps, 0.2);
  assert.equal(cfgJson.gravity_attention, 'gravity');
  assert.equal(cfgJson.dtype, 'bfloat16');
  const m = await loadModel(out, { backend: be });
  assert.equal(m.eps, 0.2);
  const logits = await m.forward(m.newSession(1, 4), [[3, 4, 5, 6]]);
  assert.ok(logits.every(Number.isFinite));
  assert.ok(fs.existsSync(path.join(out, 'checkpoint-4', 'model.safetensors')));
});

test('gravity-pure inference (cpu): left padding changes nothing, attention maps are s / Σs rows', async () => {
  const dir = model(base, 21);
  const m = await loadModel(dir, { backend: be, attention: 'gravity-pure' });
  const seq = [5, 9, 11, 4, 20];
  const one = await m.forward(m.newSession(1, 5), [seq], { logits: 'all' });
  const maps: Float32Array[] = [];
  const padded = await m.forward(m.newSession(2, 7), [[0, 0, ...seq], [...seq, 7, 8]], { logits: 'all', attentionMask: [[0, 0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1, 1]], attentionMaps: maps });
  const V = base.vocabSize;
  let worst = 0;
  for (let t = 0; t < 5; t++) for (let v = 0; v < V; v++) {
    worst = Math.max(worst, Math.abs(padded[(2 + t) * V + v] - one[t * V + v]), Math.abs(padded[(7 + t) * V + v] - one[t * V + v]));
  }
  assert.ok(worst < 1e-5, `padding changed the logits by ${worst}`);
  // layer 0, sequence 0, head 0: padded keys get 0, each real row sums to 1
  const p = maps[0];
  for (let t = 2; t < 7; t++) {
    const row = p.subarray(t * 7, t * 7 + 7);
    assert.equal(row[0], 0);
    assert.equal(row[1], 0);
    assert.ok(Math.abs(row.reduce((a, c) => a + c, 0) - 1) < 1e-5);
  }
  // the mass cancels: other masses, same logits (up to rounding); plain gravity does change
  const changed = async (kind: AttentionKind) => {
    const mm = await loadModel(dir, { backend: be, attention: kind });
    const a = await mm.forward(mm.newSession(1, 5), [seq], { logits: 'all' });
    for (let l = 0; l < mm.massLog.length; l++) mm.massLog[l] = mm.massLog[l].map((x, h) => x + 1 + h);
    const b = await mm.forward(mm.newSession(1, 5), [seq], { logits: 'all' });
    return a.reduce((w, x, i) => Math.max(w, Math.abs(x - b[i])), 0);
  };
  assert.ok((await changed('gravity-pure')) < 1e-5, 'gravity-pure depends on the mass');
  assert.ok((await changed('gravity')) > 1e-3, 'gravity should depend on the mass');
});

test('conversion: a dot base + a gravity LoRA/mass adapter loads as gravity with the adapter run\'s ε', async () => {
  const src = model(base, 31);
  const dotTr = await Trainer.create(src, { ...FULL, lr: 1e-2, attention: 'dot' }, { backend: be });
  const b = batch(2, 8, base.vocabSize, 32);
  await dotTr.trainStep([b]);
  const dotDir = tmpDir();
  dotTr.save(dotDir);
  await assert.rejects(Trainer.create(dotDir, { attention: 'gravity', trainMasses: true }, { backend: be }), /mass-init/);
  const conv = await Trainer.create(dotDir, { attention: 'gravity', eps: 0.25, trainMasses: true, massInit: 'raw:0.5', lr: 1e-2, loraR: 2, loraAlpha: 4 }, { backend: be });
  for (let i = 0; i < 2; i++) await conv.trainStep([b]);
  const ad = tmpDir();
  conv.save(ad);
  const m = await loadModel(dotDir, { backend: be, adapter: ad });
  assert.equal(m.attention, 'gravity');
  assert.equal(m.eps, 0.25);
  const want = await conv.logits(b);
  const ids = Array.from({ length: b.B }, (_, i) => [...b.ids.subarray(i * b.T, (i + 1) * b.T)]);
  const got = await m.forward(m.newSession(b.B, b.T), ids, { logits: 'all' });
  assert.ok(want.every((w, i) => Math.abs(w - got[i]) < 1e-4), 'adapter logits differ from the trainer');
});
