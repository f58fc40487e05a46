import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { expectedWeightShapes, loadCheckpointFiles } from '../src/io/checkpoint.js';
import { configToJson, parseConfig } from '../src/io/config.js';
import { loadMasses } from '../src/io/masses.js';
import { PRESETS, writeRandomCheckpoint } from '../src/io/random.js';
import { numel, toF32 } from '../src/tensor/dtype.js';
import type { ModelConfig } from '../src/model/config.js';

const made: string[] = [];
after(() => {
  for (const d of made) fs.rmSync(d, { recursive: true, force: true });
});

function tmpDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'gravity-rand-'));
  made.push(d);
  return d;
}

const TINY: ModelConfig = {
  architecture: 'qwen2', vocabSize: 300, hiddenSize: 64, intermediateSize: 96, numLayers: 3, numHeads: 4, numKVHeads: 2,
  headDim: 16, ropeTheta: 1e6, rmsNormEps: 1e-6, tieWordEmbeddings: false, qkvBias: true, oBias: false, mlpBias: false,
  maxPositionEmbeddings: 512, bosTokenId: 1, eosTokenIds: [2, 3], attnImplementation: null, dtype: null,
};

function std(v: Float32Array, mean = 0): number {
  let s = 0;
  for (const x of v) s += (x - mean) ** 2;
  return Math.sqrt(s / v.length);
}

test('presets have the published Qwen2.5 parameter counts', () => {
  const count = (c: ModelConfig) => [...expectedWeightShapes(c).values()].reduce((a, s) => a + numel(s), 0);
  assert.equal(count(PRESETS['qwen2.5-0.5b']), 494_032_768);
  assert.equal(count(PRESETS['qwen2.5-3b']), 3_085_938_688);
});

test('configToJson round-trips through parseConfig for qwen2, llama and presets', () => {
  const llama: ModelConfig = { ...TINY, architecture: 'llama', qkvBias: true, oBias: true, mlpBias: true, headDim: 24, tieWordEmbeddings: true };
  for (const cfg of [TINY, llama, PRESETS['qwen2.5-0.5b'], PRESETS['qwen2.5-3b']]) {
    const back = parseConfig(JSON.parse(JSON.stringify(configToJson(cfg))), 'config.json');
    assert.deepEqual(back, { ...cfg, dtype: cfg.dtype ?? 'bfloat16' });
  }
});

test('random checkpoint: loads, seeded, sharded with an index, init scales and masses in range', () => {
  const a = tmpDir();
  const files = writeRandomCheckpoint(a, TINY, { seed: 7, dtype: 'BF16', maxShardBytes: 60_000 });
  assert.ok(files.length > 1, `sharded into ${files.length}`);
  assert.ok(fs.existsSync(path.join(a, 'model.safetensors.index.json')));
  const ck = loadCheckpointFiles(a); // checks every name and shape
  assert.deepEqual(ck.config, { ...TINY, dtype: 'bfloat16' });
  assert.deepEqual(ck.generation?.eosTokenIds, [2, 3]);
  assert.equal(ck.massesPath, path.join(a, 'gravity_mass_log.safetensors'));
  const m = loadMasses(ck.massesPath!, 3, 4);
  const flat = m.flatMap((v) => Array.from(v));
  assert.ok(flat.every((x) => x >= -0.5 && x <= 2));
  assert.ok(Math.max(...flat) - Math.min(...flat) > 1, 'masses spread over the range');
  assert.deepEqual(loadMasses(path.join(a, 'gravity_mass_log.pt'), 3, 4), m);
  const emb = toF32(ck.weights.read('model.embed_tokens.weight'));
  assert.ok(Math.abs(std(emb) - 1) < 0.05, `embed std ${std(emb)}`);
  const q = toF32(ck.weights.read('model.layers.1.self_attn.q_proj.weight'));
  const want = 0.9 / Math.sqrt(2 * 16 * 64);
  assert.ok(Math.abs(std(q) / want - 1) < 0.05, `q std ${std(q)} vs ${want}`);
  const down = toF32(ck.weights.read('model.layers.2.mlp.down_proj.weight'));
  assert.ok(Math.abs(std(down) * Math.sqrt(96) - 1) < 0.05, `down std ${std(down)}`);
  const norm = toF32(ck.weights.read('model.norm.weight'));
  assert.ok(Math.abs(norm.reduce((s, x) => s + x, 0) / norm.length - 1) < 0.1);
  assert.ok(toF32(ck.weights.read('model.layers.0.self_attn.k_proj.bias')).every((x) => Math.abs(x) < 0.3));
  ck.weights.close();

  // same seed -> same bytes (also unsharded), another seed -> different values
  const b = tmpDir();
  writeRandomCheckpoint(b, TINY, { seed: 7, dtype: 'BF16' });
  const c = tmpDir();
  writeRandomCheckpoint(c, TINY, { seed: 8, dtype: 'BF16' });
  const sb = loadCheckpointFiles(b).weights;
  const sc = loadCheckpointFiles(c).weights;
  const sa = loadCheckpointFiles(a).weights;
  assert.equal(sb.label, 'model.safetensors');
  for (const n of sa.names()) assert.deepEqual(sa.read(n).data, sb.read(n).data, n);
  assert.notDeepEqual(sa.read('model.embed_tokens.weight').data, sc.read('model.embed_tokens.weight').data);
  for (const s of [sa, sb, sc]) s.close();
});

test('random checkpoint in F32 and F16 with a llama config', () => {
  for (const dtype of ['F32', 'F16'] as const) {
    const d = tmpDir();
    const cfg: ModelConfig = { ...TINY, architecture: 'llama', qkvBias: false, oBias: false, tieWordEmbeddings: true, eosTokenIds: [2] };
    writeRandomCheckpoint(d, cfg, { seed: 1, dtype });
    const ck = loadCheckpointFiles(d);
    assert.equal(ck.weights.info('model.layers.0.mlp.up_proj.weight').dtype, dtype);
    assert.equal(ck.weights.has('lm_head.weight'), false);
    assert.equal(ck.weights.has('model.layers.0.self_attn.q_proj.bias'), false);
    const up = toF32(ck.weights.read('model.layers.0.mlp.up_proj.weight'));
    assert.ok(Math.abs(std(up) * 8 - 1) < 0.05, `${dtype} up std ${std(up)}`);
    ck.weights.close();
  }
});
