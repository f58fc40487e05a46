/**
 * gravity-mini: the preset and `init: 'train'` start of scripts/gravity-mini/run.sh, and the bundled default
 * model in models/gravity-mini (installed by scripts/gravity-mini/report.mjs with its accuracy.json).
 */
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { expectedWeightShapes, loadCheckpointFiles } from '../src/io/checkpoint.js';
import { loadMasses } from '../src/io/masses.js';
import { PRESETS, writeRandomCheckpoint } from '../src/io/random.js';
import { loadModel } from '../src/model/load.js';
import { numel, toF32 } from '../src/tensor/dtype.js';
import { TextTokenizer } from '../src/tokenizer/tokenizer.js';
import { makeSplits } from '../src/tasks/dataset.js';
import { toMessages } from '../src/tasks/arithmetic.js';
import { evaluate } from '../src/tasks/evaluate.js';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const MODEL = path.join(ROOT, 'models', 'gravity-mini');
const made: string[] = [];
after(() => {
  for (const d of made) fs.rmSync(d, { recursive: true, force: true });
});

function std(v: Float32Array, mean = 0): number {
  let s = 0;
  for (const x of v) s += (x - mean) ** 2;
  return Math.sqrt(s / v.length);
}

test('gravity-mini preset: Qwen2 shape of 2,462,016 parameters over the bundled 512-token tokenizer', () => {
  const cfg = PRESETS['gravity-mini'];
  const params = [...expectedWeightShapes(cfg).values()].reduce((a, s) => a + numel(s), 0);
  assert.equal(params, 2_462_016);
  assert.equal(cfg.tieWordEmbeddings, true);
  assert.deepEqual([cfg.hiddenSize, cfg.numLayers, cfg.numHeads, cfg.numKVHeads, cfg.headDim, cfg.intermediateSize], [192, 6, 6, 2, 32, 512]);
  const tok = TextTokenizer.fromDir(MODEL);
  assert.ok(tok.vocabSize <= cfg.vocabSize, `tokenizer has ${tok.vocabSize} tokens, more than the preset's ${cfg.vocabSize}`);
  assert.equal(tok.tokenToId('<|im_end|>'), cfg.eosTokenIds[0]);
});

test("init-random init 'train': GPT-2-like std, unit norms, zero biases, raw masses 0.5, and a tied head that starts near ln(vocab)", async () => {
  const cfg = PRESETS['gravity-mini'];
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gravity-mini-'));
  made.push(dir);
  writeRandomCheckpoint(dir, cfg, { seed: 3, dtype: 'F32', init: 'train' });
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) fs.copyFileSync(path.join(MODEL, f), path.join(dir, f));
  const files = loadCheckpointFiles(dir);
  const get = (n: string) => toF32(files.weights.read(n));
  assert.ok(Math.abs(std(get('model.embed_tokens.weight')) - 0.02) < 0.001);
  assert.ok(Math.abs(std(get('model.layers.0.mlp.up_proj.weight')) - 0.02) < 0.001);
  assert.ok(Math.abs(std(get('model.layers.2.self_attn.o_proj.weight')) - 0.02 / Math.sqrt(12)) < 0.0005);
  // ‖q − k‖² ≈ 2·d·C·σ² = 1 for unit-RMS input
  const sq = std(get('model.layers.1.self_attn.q_proj.weight'));
  assert.ok(Math.abs(2 * cfg.headDim * cfg.hiddenSize * sq * sq - 1) < 0.05, `q_proj std ${sq}`);
  assert.ok(get('model.layers.0.input_layernorm.weight').every((x) => x === 1));
  assert.ok(get('model.layers.0.self_attn.q_proj.bias').every((x) => x === 0));
  assert.ok(loadMasses(files.massesPath!, cfg.numLayers, cfg.numHeads).every((l) => l.every((x) => x === 0.5)));
  files.weights.close();

  const tok = TextTokenizer.fromDir(dir);
  const p = makeSplits({ train: 0, val: 0, test: 1 }, 0, { digits: 2 }).test[0];
  const ids = tok.encode(tok.applyChatTemplate(toMessages(p), { addGenerationPrompt: false }), { addSpecialTokens: false });
  const m = await loadModel(dir);
  try {
    const logits = await m.forward(m.newSession(1, ids.length), [ids], { logits: 'all' });
    const V = cfg.vocabSize;
    let loss = 0;
    for (let t = 0; t + 1 < ids.length; t++) {
      const row = logits.subarray(t * V, (t + 1) * V);
      let mx = -Infinity;
      for (const x of row) mx = Math.max(mx, x);
      let s = 0;
      for (const x of row) s += Math.exp(x - mx);
      loss += mx + Math.log(s) - row[ids[t + 1]];
    }
    loss /= ids.length - 1;
    assert.ok(Math.abs(loss - Math.log(V)) < 0.3, `starting loss ${loss.toFixed(3)}, ln(${V}) = ${Math.log(V).toFixed(3)}`);
  } finally {
    m.dispose();
  }
});

test("init-random without init keeps the 'test' values (embedding std 1, varied masses)", () => {
  const cfg = { ...PRESETS['gravity-mini'], numLayers: 1 };
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gravity-mini-'));
  made.push(dir);
  writeRandomCheckpoint(dir, cfg, { seed: 3, dtype: 'F32' });
  const files = loadCheckpointFiles(dir);
  assert.ok(Math.abs(std(toF32(files.weights.read('model.embed_tokens.weight'))) - 1) < 0.02);
  files.weights.close();
});

// The bundled model. report.mjs installs the weights together with accuracy.json, so accuracy.json is the claim:
// once it is there, missing or worse weights FAIL. GATE: until a trained model is committed (no accuracy.json and no
// model.safetensors), the check below was that nothing half-installed is there. The README now claims the bundled
// model, so `claimed` is fixed to true: a clone without the weights fails instead of passing.
const claimed: boolean = true;

test('bundled models/gravity-mini: a trained gravity model <= 20 MB that reaches its recorded accuracy on a fixed sample', async () => {
  if (!claimed) {
    assert.ok(!fs.existsSync(path.join(MODEL, 'config.json')), 'models/gravity-mini has a config.json but no weights / accuracy.json');
    return;
  }
  for (const f of ['model.safetensors', 'config.json', 'accuracy.json', 'tokenizer.json', 'tokenizer_config.json']) {
    assert.ok(fs.existsSync(path.join(MODEL, f)), `models/gravity-mini/${f} is missing`);
  }
  const bytes = fs.readdirSync(MODEL).reduce((a, f) => a + fs.statSync(path.join(MODEL, f)).size, 0);
  assert.ok(bytes <= 20e6, `models/gravity-mini is ${(bytes / 1e6).toFixed(1)} MB`);
  const cfgJson = JSON.parse(fs.readFileSync(path.join(MODEL, 'config.json'), 'utf8'));
  assert.notEqual(cfgJson.gravity_attention ?? 'gravity', 'dot', 'the bundled model must run gravity attention by default');
  const acc = JSON.parse(fs.readFileSync(path.join(MODEL, 'accuracy.json'), 'utf8'));
  const n: number = acc.sample.n;
  const problems = makeSplits({ train: 0, val: 0, test: n }, acc.task.seed, { digits: acc.task.digits }).test.map((p) => ({
    messages: toMessages(p),
    answer: p.answer,
    category: p.category,
  }));
  const m = await loadModel(MODEL);
  try {
    const tok = TextTokenizer.fromDir(MODEL);
    const r = await evaluate(m, tok, problems, { maxTokens: acc.sample.max_tokens });
    // greedy decoding is deterministic here; the margin covers near-ties that another CPU's rounding may flip
    const margin = Math.max(2, Math.ceil(0.05 * n));
    assert.ok(r.correct >= acc.sample.correct - margin, `${r.correct}/${n} correct, accuracy.json records ${acc.sample.correct}/${n}`);
  } finally {
    m.dispose();
  }
});

test('gravity generate --prompt without --model answers through the chat template and stops at <|im_end|>', () => {
  if (!claimed) {
    const r = (() => {
      try {
        execFileSync(process.execPath, ['--import', 'tsx', path.join(ROOT, 'src/cli/main.ts'), 'generate', '--prompt', 'What is 2 + 3?'], { cwd: ROOT, stdio: 'pipe' });
        return '';
      } catch (e) {
        return String((e as { stderr?: Buffer }).stderr ?? '');
      }
    })();
    assert.match(r, /no --model given and the bundled default model/);
    return;
  }
  const out = execFileSync(
    process.execPath,
    ['--import', 'tsx', path.join(ROOT, 'src/cli/main.ts'), 'generate', '--prompt', 'What is 12 + 34?', '--temperature', '0', '--max-tokens', '96', '--json'],
    { cwd: ROOT, encoding: 'utf8' },
  );
  const res = JSON.parse(out.trim().split('\n').pop()!);
  const imEnd = TextTokenizer.fromDir(MODEL).tokenToId('<|im_end|>');
  assert.ok(res.prompt_ids.includes(TextTokenizer.fromDir(MODEL).tokenToId('<|im_start|>')), 'the prompt went through the chat template');
  assert.ok(!res.text.includes('<|im_end|>') && !res.text.includes('<|im_start|>'), `the answer ran past its turn: ${JSON.stringify(res.text)}`);
  assert.ok(res.output_ids.length < 96 || res.output_ids.at(-1) === imEnd, 'generation did not stop at <|im_end|>');
});
