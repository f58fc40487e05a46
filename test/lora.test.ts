/** PEFT adapters: round trip, shape errors, --adapter inference (folded at load) vs merge, merged folders load. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { createCpuBackend } from '../src/backend/cpu/index.js';
import { loadCheckpointFiles } from '../src/io/checkpoint.js';
import { openSafetensors } from '../src/io/safetensors.js';
import { loadModel } from '../src/model/load.js';
import { readAdapter, writeAdapter } from '../src/train/adapter.js';
import { mergeAdapter, parseSize } from '../src/train/merge.js';
import { Trainer } from '../src/train/trainer.js';
import { FIXTURES, loadExpected, relErr } from './helpers/fixtures.js';

const be = createCpuBackend({ threads: 1 });
const QWEN = path.join(FIXTURES, 'train-qwen2-qkvo');
const LLAMA = path.join(FIXTURES, 'train-llama-all');

function tmpDir(): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), 'gravity-lora-'));
}

function configOf(dir: string) {
  const f = loadCheckpointFiles(dir);
  f.weights.close();
  return f.config;
}

test('PEFT adapter round trip: same names, same float32 bits, same r / alpha / targets', () => {
  const a = readAdapter(path.join(QWEN, 'adapter'), { cfg: configOf(QWEN) });
  assert.equal(a.config.r, 4);
  assert.equal(a.config.alpha, 8);
  assert.equal(a.modules.length, 8);
  assert.equal(a.modules[0].scaling, 2);
  const dir = tmpDir();
  try {
    writeAdapter(dir, a.modules, { alpha: a.config.alpha, dropout: a.config.dropout, baseConfig: a.config.raw });
    const b = readAdapter(dir, { cfg: configOf(QWEN) });
    assert.deepEqual(b.config.targets.slice().sort(), a.config.targets.slice().sort());
    assert.equal(b.config.r, 4);
    assert.equal(b.config.alpha, 8);
    const src = openSafetensors(path.join(QWEN, 'adapter', 'adapter_model.safetensors'));
    const dst = openSafetensors(path.join(dir, 'adapter_model.safetensors'));
    assert.deepEqual([...dst.tensors.keys()].sort(), [...src.tensors.keys()].sort());
    for (const k of src.tensors.keys()) {
      const x = src.read(k);
      const y = dst.read(k);
      assert.equal(y.dtype, x.dtype);
      assert.deepEqual(y.shape, x.shape);
      assert.deepEqual(y.data, x.data, k);
    }
    src.close();
    dst.close();
    const cfg = JSON.parse(fs.readFileSync(path.join(dir, 'adapter_config.json'), 'utf8'));
    assert.equal(cfg.peft_type, 'LORA');
    assert.equal(cfg.lora_alpha, 8);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('an adapter whose shapes do not fit the model is a clear error naming the tensor', async () => {
  assert.throws(
    () => readAdapter(path.join(LLAMA, 'adapter'), { cfg: configOf(QWEN) }),
    /adapter_model\.safetensors: tensor "base_model\.model\.model\.layers\.0\.mlp\.down_proj\.lora_B\.weight" has shape \[48,2\], expected \[64,2\]/,
  );
  // through --adapter (the loader only knows the layer count: the check happens when a weight is folded)
  await assert.rejects(loadModel(QWEN, { adapter: path.join(LLAMA, 'adapter'), backend: be }), /LoRA for "model\.layers\.0\.[\w.]+_proj\.weight" is \[\d+, 2\]·\[2, \d+\] but the weight is \[\d+,\d+\]/);
  await assert.rejects(loadModel(QWEN, { adapter: path.join(QWEN, 'no-such-adapter'), backend: be }), /adapter folder does not exist/);
});

for (const [name, dir] of [['train-qwen2-qkvo', QWEN], ['train-llama-all', LLAMA]] as const) {
  test(`${name}: --adapter inference equals PyTorch+PEFT and the merged model; the merged folder loads`, async () => {
    const exp = loadExpected(name);
    const ids: number[][] = exp.meta.input_ids;
    const withAdapter = await loadModel(dir, { adapter: path.join(dir, 'adapter'), backend: be });
    const la = await withAdapter.forward(withAdapter.newSession(ids.length, ids[0].length), ids, { logits: 'all' });
    const e = relErr(la, exp.tensors.get('logits')!.data);
    assert.ok(e <= 1e-4, `--adapter logits vs PyTorch rel err ${e.toExponential(2)}`);
    const base = await loadModel(dir, { backend: be });
    const lb = await base.forward(base.newSession(ids.length, ids[0].length), ids, { logits: 'all' });
    assert.ok(relErr(lb, la) > 1e-3, 'the adapter changes the logits');

    const out = tmpDir();
    try {
      const files = mergeAdapter(dir, path.join(dir, 'adapter'), out, { shardSize: '40KB', overwrite: true });
      assert.ok(files.length > 1, 'sharded');
      assert.ok(fs.existsSync(path.join(out, 'model.safetensors.index.json')));
      for (const f of ['config.json', 'generation_config.json', 'gravity_mass_log.safetensors', 'gravity_mass_log.pt']) assert.ok(fs.existsSync(path.join(out, f)), f);
      assert.deepEqual(fs.readdirSync(path.dirname(out)).filter((f) => f.startsWith(path.basename(out) + '.tmp')), []);
      const merged = await loadModel(out, { backend: be });
      const lm = await merged.forward(merged.newSession(ids.length, ids[0].length), ids, { logits: 'all' });
      const em = relErr(lm, la);
      assert.ok(em <= 1e-6, `merged vs --adapter rel err ${em.toExponential(2)}`);
      // stored width kept
      const st = openSafetensors(files[0]);
      const first = [...st.tensors.values()][0];
      st.close();
      assert.equal(first.dtype, 'F32');
      assert.throws(() => mergeAdapter(dir, path.join(dir, 'adapter'), out), /exists and is not empty/);
    } finally {
      fs.rmSync(out, { recursive: true, force: true });
    }
  });
}

test('a trained adapter with masses: --adapter + its masses and merge both reproduce the trainer', async () => {
  const exp = loadExpected('train-qwen2-qkvo');
  const ids: number[][] = exp.meta.input_ids;
  const batch = { ids: Int32Array.from(ids.flat()), labels: Int32Array.from(exp.meta.labels.flat()), B: 2, T: 16 };
  const tr = await Trainer.create(QWEN, { loraR: 2, loraAlpha: 4, loraTargets: ['q_proj', 'down_proj'], trainMasses: true, optimizer: 'adamw', lr: 0.05, seed: 3 }, { backend: be });
  await tr.trainStep([batch]);
  await tr.trainStep([batch]);
  const want = await tr.logits(batch);
  const adapter = tmpDir();
  const out = tmpDir();
  try {
    tr.save(adapter);
    const cfg = JSON.parse(fs.readFileSync(path.join(adapter, 'adapter_config.json'), 'utf8'));
    assert.deepEqual(cfg.target_modules, ['q_proj', 'down_proj']);
    assert.equal(cfg.r, 2);
    const m = await loadModel(QWEN, { adapter, masses: path.join(adapter, 'gravity_mass_log.safetensors'), backend: be });
    const got = await m.forward(m.newSession(2, 16), ids, { logits: 'all' });
    assert.ok(relErr(got, want) <= 1e-5, `--adapter rel err ${relErr(got, want).toExponential(2)}`);
    mergeAdapter(QWEN, adapter, out, { overwrite: true });
    const merged = await loadModel(out, { backend: be });
    const gm = await merged.forward(merged.newSession(2, 16), ids, { logits: 'all' });
    assert.ok(relErr(gm, want) <= 1e-5, `merged rel err ${relErr(gm, want).toExponential(2)}`);
    // the trainer can start again from what it saved
    const again = await Trainer.create(QWEN, { initAdapter: adapter, trainMasses: true }, { backend: be });
    assert.ok(relErr(await again.logits(batch), want) <= 1e-6);
  } finally {
    fs.rmSync(adapter, { recursive: true, force: true });
    fs.rmSync(out, { recursive: true, force: true });
  }
});

test('shard sizes parse', () => {
  assert.equal(parseSize('2GB'), 2e9);
  assert.equal(parseSize('100KB'), 1e5);
  assert.equal(parseSize('1GiB'), 1024 ** 3);
  assert.throws(() => parseSize('lots'), /--shard-size/);
});

test('merge: the merged config carries the attention and ε the adapter was trained with', async () => {
  const dir = path.join(FIXTURES, 'train-qwen2-qkvo');
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'gravity-merge-defaults-'));
  try {
    const adapter = path.join(tmp, 'adapter');
    fs.cpSync(path.join(dir, 'adapter'), adapter, { recursive: true });
    fs.writeFileSync(path.join(adapter, 'trainer_state.json'), JSON.stringify({ options: { attention: 'gravity-pure', eps: 0.5 } }));
    const out = path.join(tmp, 'merged');
    mergeAdapter(dir, adapter, out);
    const cfg = JSON.parse(fs.readFileSync(path.join(out, 'config.json'), 'utf8'));
    assert.equal(cfg.gravity_attention, 'gravity-pure');
    assert.equal(cfg.gravity_eps, 0.5);
    const m = await loadModel(out, { backend: createCpuBackend() });
    assert.equal(m.attention, 'gravity-pure');
    assert.equal(m.eps, 0.5);
    m.dispose();
  } finally {
    fs.rmSync(tmp, { recursive: true, force: true });
  }
});
