import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { checkWeights, expectedWeightShapes, loadCheckpointFiles } from '../src/io/checkpoint.js';
import { parseConfig } from '../src/io/config.js';
import { findMassesFile, loadMasses, massName, saveMasses } from '../src/io/masses.js';
import { openSafetensors, openWeights, writeSafetensors, writeSafetensorsStreaming } from '../src/io/safetensors.js';
import { readTorchFile, readTorchTensors, writeTorchFile } from '../src/io/torch.js';
import { openZip } from '../src/io/zip.js';
import { GravityError } from '../src/errors.js';
import { numel, type DType, type HostTensor } from '../src/tensor/dtype.js';

const FIX = path.join(import.meta.dirname, 'fixtures');
const FIXTURES = ['qwen2-gqa-f32', 'qwen2-mha-tied-bf16', 'llama-gqa-f16', 'train-qwen2-qkvo', 'train-llama-all'];
const STORE_DTYPE: Record<string, DType> = { float32: 'F32', bfloat16: 'BF16', float16: 'F16' };

const made: string[] = [];
after(() => {
  for (const d of made) fs.rmSync(d, { recursive: true, force: true });
});

function tmpDir(): string {
  const d = fs.mkdtempSync(path.join(os.tmpdir(), 'gravity-io-'));
  made.push(d);
  return d;
}

/** Asserts fn throws a GravityError whose one-line message contains every fragment. */
function throwsWith(fn: () => unknown, ...fragments: string[]): void {
  assert.throws(fn, (e: unknown) => {
    assert.ok(e instanceof GravityError, `expected GravityError, got ${String(e)}`);
    assert.ok(!e.message.includes('\n'), `message is one line: ${e.message}`);
    for (const f of fragments) assert.ok(e.message.includes(f), `message "${e.message}" should contain "${f}"`);
    return true;
  });
}

function sample(dtype: DType, shape: number[]): HostTensor {
  const n = numel(shape);
  const vals = Array.from({ length: n }, (_, i) => (i * 7) % 13 - 6);
  switch (dtype) {
    case 'F64': return { dtype, shape, data: Float64Array.from(vals, (v) => v / 3) };
    case 'F32': return { dtype, shape, data: Float32Array.from(vals, (v) => v / 3) };
    case 'F16':
    case 'BF16': return { dtype, shape, data: Uint16Array.from(vals, (v) => (v * 977) & 0xffff) };
    case 'I64': return { dtype, shape, data: BigInt64Array.from(vals, (v) => BigInt(v) * 10000000000n) };
    case 'I32': return { dtype, shape, data: Int32Array.from(vals, (v) => v * 100000) };
  }
}

const ALL_DTYPES: DType[] = ['F64', 'F32', 'F16', 'BF16', 'I64', 'I32'];

test('every fixture: weights match config names, shapes and stored dtype', () => {
  for (const name of FIXTURES) {
    const dir = path.join(FIX, name);
    const ck = loadCheckpointFiles(dir);
    const raw = JSON.parse(fs.readFileSync(path.join(dir, 'config.json'), 'utf8'));
    const want = expectedWeightShapes(ck.config);
    assert.equal(ck.weights.names().length, want.size, `${name}: tensor count`);
    for (const [n, shape] of want) {
      const t = ck.weights.read(n);
      assert.deepEqual(t.shape, shape, `${name}: ${n}`);
      assert.equal(t.dtype, STORE_DTYPE[raw.dtype], `${name}: ${n} dtype`);
      assert.equal(t.data.length, numel(shape));
      // fresh, aligned buffer per tensor
      assert.equal(t.data.byteOffset, 0);
      assert.equal(t.data.buffer.byteLength, t.data.byteLength);
    }
    assert.deepEqual(ck.generation?.eosTokenIds, [2]);
    assert.equal(ck.generation?.bosTokenId, 1);
    assert.equal(ck.massesPath, path.join(dir, 'gravity_mass_log.pt'));
    ck.weights.close();
  }
});

test('sharded fixture reads through the index from three files; tied has no lm_head', () => {
  const store = openWeights(path.join(FIX, 'qwen2-mha-tied-bf16'));
  assert.equal(store.label, 'model.safetensors.index.json');
  const files = new Set(store.names().map((n) => path.basename(store.info(n).file)));
  assert.deepEqual([...files].sort(), ['model-00001-of-00003.safetensors', 'model-00002-of-00003.safetensors', 'model-00003-of-00003.safetensors']);
  assert.equal(store.has('lm_head.weight'), false);
  assert.deepEqual(store.info('model.layers.2.mlp.down_proj.weight').shape, [64, 96]);
  // 64x64 bf16 q_proj: std ~0.03 (fixture qk_std), decoded independently of toF32
  const q = store.read('model.layers.0.self_attn.q_proj.weight').data as Uint16Array;
  const f = new Float32Array(new Uint32Array(Array.from(q, (b) => b << 16)).buffer);
  const std = Math.sqrt(f.reduce((a, v) => a + v * v, 0) / f.length);
  assert.ok(std > 0.025 && std < 0.035, `q std ${std}`);
  store.close();
});

test('configs parse: qwen2 biases, llama old top-level rope_theta, explicit head_dim, tied', () => {
  const cfg = (n: string) => loadCheckpointFiles(path.join(FIX, n)).config;
  const q = cfg('qwen2-gqa-f32');
  assert.equal(q.architecture, 'qwen2');
  assert.deepEqual([q.qkvBias, q.oBias, q.mlpBias, q.tieWordEmbeddings], [true, false, false, false]);
  assert.deepEqual([q.numHeads, q.numKVHeads, q.headDim, q.ropeTheta, q.dtype], [4, 2, 16, 10000, 'float32']);
  const t = cfg('qwen2-mha-tied-bf16');
  assert.deepEqual([t.tieWordEmbeddings, t.ropeTheta, t.numLayers], [true, 1e6, 3]);
  const l = cfg('llama-gqa-f16');
  assert.deepEqual([l.architecture, l.headDim, l.numKVHeads, l.ropeTheta, l.rmsNormEps], ['llama', 8, 1, 500000, 1e-5]);
  assert.deepEqual([l.qkvBias, l.oBias, l.mlpBias], [false, false, false]);
  assert.deepEqual(cfg('train-llama-all').headDim, 12);
});

test('masses: dict f32, stacked bf16, list f16 (values checked against Python zipfile+struct decoding)', () => {
  const m1 = loadMasses(path.join(FIX, 'qwen2-gqa-f32', 'gravity_mass_log.pt'), 2, 4);
  assert.equal(m1.length, 2);
  assert.deepEqual(Array.from(m1[0]), [-0.12739571928977966, 0.7163828611373901, 1.96415376663208, -0.0789964497089386]);
  assert.deepEqual(Array.from(m1[1]), [0.9598585367202759, 1.2339979410171509, 0.9577121734619141, -0.17890560626983643]);
  const m2 = loadMasses(path.join(FIX, 'qwen2-mha-tied-bf16', 'gravity_mass_log.pt'), 3, 4);
  assert.deepEqual(m2.map((v) => Array.from(v)), [
    [0.68359375, 1.03125, -0.470703125, -0.400390625],
    [0.91796875, 0.134765625, 0.8359375, 1.0234375],
    [1.2890625, 1.0078125, 1.9921875, -0.138671875],
  ]);
  const m3 = loadMasses(path.join(FIX, 'llama-gqa-f16', 'gravity_mass_log.pt'), 2, 4);
  assert.deepEqual(Array.from(m3[0]), [0.074462890625, 0.5546875, 0.1876220703125, 0.79296875]);
  assert.deepEqual(Array.from(m3[1]), [0.0002739429473876953, 0.81884765625, 1.0966796875, 0.7109375]);
  for (const name of FIXTURES) {
    const ck = loadCheckpointFiles(path.join(FIX, name));
    const m = loadMasses(ck.massesPath!, ck.config.numLayers, ck.config.numHeads);
    assert.equal(m.length, ck.config.numLayers);
    for (const v of m) {
      assert.equal(v.length, ck.config.numHeads);
      for (const x of v) assert.ok(x >= -0.5 && x <= 2, `${name}: mass ${x} in [-0.5, 2]`);
    }
    ck.weights.close();
  }
  // raw torch structures: dict -> Map, stacked -> tensor, list -> array
  assert.ok(readTorchFile(path.join(FIX, 'qwen2-gqa-f32', 'gravity_mass_log.pt')) instanceof Map);
  assert.deepEqual((readTorchFile(path.join(FIX, 'qwen2-mha-tied-bf16', 'gravity_mass_log.pt')) as HostTensor).shape, [3, 4]);
  assert.equal((readTorchFile(path.join(FIX, 'llama-gqa-f16', 'gravity_mass_log.pt')) as unknown[]).length, 2);
});

test('masses: PEFT prefix, safetensors names, stacked safetensors, f64; saveMasses writes both forms', () => {
  const d = tmpDir();
  const peft = path.join(d, 'peft.pt');
  writeTorchFile(peft, {
    [`base_model.model.${massName(1)}`]: { dtype: 'F64', shape: [3], data: Float64Array.from([1, 2, 0.5]) },
    [`base_model.model.${massName(0)}`]: { dtype: 'F64', shape: [3], data: Float64Array.from([0, -0.5, 0.25]) },
  });
  assert.deepEqual(loadMasses(peft, 2, 3).map((v) => Array.from(v)), [[0, -0.5, 0.25], [1, 2, 0.5]]);
  const st = path.join(d, 'stacked.safetensors');
  writeSafetensors(st, { gravity_mass_log: { dtype: 'F32', shape: [2, 2], data: Float32Array.from([1, 2, 3, 4]) } });
  assert.deepEqual(loadMasses(st, 2, 2).map((v) => Array.from(v)), [[1, 2], [3, 4]]);
  const m = [Float32Array.from([0.5, 1.5, -0.25]), Float32Array.from([2, 0, 1])];
  assert.equal(findMassesFile(d), null);
  saveMasses(d, m);
  assert.equal(findMassesFile(d), path.join(d, 'gravity_mass_log.safetensors'));
  for (const f of ['gravity_mass_log.safetensors', 'gravity_mass_log.pt']) {
    assert.deepEqual(loadMasses(path.join(d, f), 2, 3).map((v) => Array.from(v)), m.map((v) => Array.from(v)));
  }
  assert.deepEqual([...readTorchTensors(path.join(d, 'gravity_mass_log.pt')).keys()], [massName(0), massName(1)]);
  assert.deepEqual(fs.readdirSync(d).filter((f) => f.includes('.tmp-')), []);
});

test('safetensors round trip for every dtype, metadata, 0-d and empty tensors, 8-byte aligned data', () => {
  const d = tmpDir();
  const f = path.join(d, 'rt.safetensors');
  const tensors = new Map<string, HostTensor>();
  for (const dt of ALL_DTYPES) tensors.set(`t.${dt}`, sample(dt, [3, 5]));
  tensors.set('scalar', sample('F32', []));
  tensors.set('empty', sample('BF16', [0, 4]));
  tensors.set('odd', sample('F16', [3])); // 6 bytes: later tensors still read back aligned
  tensors.set('after', sample('F64', [2]));
  writeSafetensors(f, tensors, { format: 'pt', note: 'hi' });
  const raw = fs.readFileSync(f);
  assert.equal(Number(raw.readBigUInt64LE(0)) % 8, 0);
  const s = openSafetensors(f);
  assert.deepEqual(s.metadata, { format: 'pt', note: 'hi' });
  assert.deepEqual([...s.tensors.keys()], [...tensors.keys()]);
  for (const [n, t] of tensors) {
    const r = s.read(n);
    assert.equal(r.dtype, t.dtype);
    assert.deepEqual(r.shape, t.shape);
    assert.equal(r.data.constructor, t.data.constructor, n);
    assert.deepEqual(Array.from(r.data as ArrayLike<number>), Array.from(t.data as ArrayLike<number>), n);
  }
  s.close();
  throwsWith(() => s.read('scalar'), 'rt.safetensors', 'after close');
});

test('torch zip round trip for every dtype; entries 64-byte aligned; torch records present', () => {
  const d = tmpDir();
  const f = path.join(d, 'rt.pt');
  const tensors: Record<string, HostTensor> = {};
  for (const dt of ALL_DTYPES) tensors[`w.${dt}`] = sample(dt, [4, 3, 2]);
  tensors.scalar = sample('F64', []);
  tensors.big = sample('F32', [70000]); // BININT sizes
  tensors.wide = sample('BF16', [1, 300, 1, 2]); // 4-d: MARK..TUPLE, BININT2
  writeTorchFile(f, tensors);
  const back = readTorchTensors(f);
  assert.deepEqual([...back.keys()], Object.keys(tensors));
  for (const [n, t] of Object.entries(tensors)) {
    const r = back.get(n)!;
    assert.equal(r.dtype, t.dtype, n);
    assert.deepEqual(r.shape, t.shape, n);
    assert.deepEqual(Array.from(r.data as ArrayLike<number>), Array.from(t.data as ArrayLike<number>), n);
  }
  const zip = openZip(f);
  for (const e of zip.entries.values()) assert.equal(e.dataStart % 64, 0, `${e.name} aligned`);
  assert.equal(new TextDecoder().decode(zip.read('archive/version')), '3\n');
  assert.equal(new TextDecoder().decode(zip.read('archive/byteorder')), 'little');
  assert.ok(zip.entries.has('archive/data/8'));
  zip.close();
  // the fixtures written by torch itself are aligned the same way
  const tz = openZip(path.join(FIX, 'qwen2-gqa-f32', 'gravity_mass_log.pt'));
  for (const e of tz.entries.values()) assert.equal(e.dataStart % 64, 0);
  tz.close();
});

test('bad safetensors: truncated, header overrun, bad JSON, unknown dtype, overrunning / mismatched data, bad shape', () => {
  const d = tmpDir();
  const mk = (name: string, header: unknown, dataBytes: number, rawHeader?: string): string => {
    const json = Buffer.from(rawHeader ?? JSON.stringify(header));
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(json.length));
    const p = path.join(d, name);
    fs.writeFileSync(p, Buffer.concat([len, json, Buffer.alloc(dataBytes)]));
    return p;
  };
  const q = 'model.layers.0.self_attn.q_proj.weight';
  const short = path.join(d, 'short.safetensors');
  fs.writeFileSync(short, Buffer.from([1, 2, 3]));
  throwsWith(() => openSafetensors(short), 'short.safetensors', 'too short');
  const over = path.join(d, 'hdr.safetensors');
  const b = Buffer.alloc(16);
  b.writeBigUInt64LE(1000n);
  fs.writeFileSync(over, b);
  throwsWith(() => openSafetensors(over), 'hdr.safetensors', 'header length 1000 overruns');
  throwsWith(() => openSafetensors(mk('json.safetensors', null, 0, '{"a": [1,')), 'json.safetensors', 'not valid JSON');
  throwsWith(() => openSafetensors(mk('dt.safetensors', { [q]: { dtype: 'F8_E4M3', shape: [2], data_offsets: [0, 2] } }, 2)), 'dt.safetensors', q, 'F8_E4M3');
  throwsWith(
    () => openSafetensors(mk('model.safetensors', { [q]: { dtype: 'F32', shape: [4, 4], data_offsets: [0, 64] } }, 60)),
    `model.safetensors: tensor "${q}" data [`, 'overruns the file (',
  );
  throwsWith(() => openSafetensors(mk('n.safetensors', { [q]: { dtype: 'F32', shape: [4, 4], data_offsets: [0, 60] } }, 60)), 'n.safetensors', q, '60 data bytes, expected 64');
  throwsWith(() => openSafetensors(mk('s.safetensors', { [q]: { dtype: 'F32', shape: [4, 1.5], data_offsets: [0, 24] } }, 24)), 's.safetensors', q, 'shape');
  throwsWith(() => openSafetensors(mk('s2.safetensors', { [q]: { dtype: 'F32', shape: 'x', data_offsets: [0, 4] } }, 4)), 's2.safetensors', q, 'shape');
});

test('bad torch files: not a zip, compressed entry, corrupt CRC, missing storage', () => {
  const d = tmpDir();
  const notZip = path.join(d, 'masses.pt');
  fs.writeFileSync(notZip, 'this is not a zip file at all, just some text'.repeat(3));
  throwsWith(() => readTorchFile(notZip), 'masses.pt', 'not a torch.save zip');
  throwsWith(() => loadMasses(notZip, 2, 4), 'masses.pt');
  const good = path.join(d, 'good.pt');
  writeTorchFile(good, { a: sample('F32', [4]) });
  const bytes = fs.readFileSync(good);
  // central directory entry of data.pkl: set method 8 (deflate)
  const cd = bytes.indexOf(Buffer.from([0x50, 0x4b, 0x01, 0x02]));
  const comp = Buffer.from(bytes);
  comp.writeUInt16LE(8, cd + 10);
  fs.writeFileSync(path.join(d, 'comp.pt'), comp);
  throwsWith(() => readTorchFile(path.join(d, 'comp.pt')), 'comp.pt', 'compressed');
  const pklAt = bytes.indexOf(Buffer.from('collections'));
  const bad = Buffer.from(bytes);
  bad[pklAt] ^= 0xff;
  fs.writeFileSync(path.join(d, 'crc.pt'), bad);
  throwsWith(() => readTorchFile(path.join(d, 'crc.pt')), 'crc.pt', 'CRC');
  // rename the storage entry in both headers so data/0 is missing
  const miss = Buffer.from(bytes.toString('latin1').replaceAll('archive/data/0', 'archive/data/9'), 'latin1');
  fs.writeFileSync(path.join(d, 'miss.pt'), miss);
  throwsWith(() => readTorchFile(path.join(d, 'miss.pt')), 'miss.pt', 'storage 0');
});

test('bad masses: NaN, wrong layer count, wrong head count, missing layer', () => {
  const d = tmpDir();
  const f = (n: string) => path.join(d, n);
  writeTorchFile(f('nan.pt'), { [massName(0)]: sample('F32', [4]), [massName(1)]: { dtype: 'F32', shape: [4], data: Float32Array.from([0, 1, NaN, 2]) } });
  throwsWith(() => loadMasses(f('nan.pt'), 2, 4), 'nan.pt', 'layer 1 head 2', 'NaN');
  writeTorchFile(f('inf.pt'), { gravity_mass_log: { dtype: 'BF16', shape: [1, 2], data: Uint16Array.from([0x3f80, 0x7f80]) } });
  throwsWith(() => loadMasses(f('inf.pt'), 1, 2), 'inf.pt', 'layer 0 head 1', 'Infinity');
  throwsWith(() => loadMasses(path.join(FIX, 'qwen2-gqa-f32', 'gravity_mass_log.pt'), 3, 4), 'gravity_mass_log.pt', 'layer 2');
  throwsWith(() => loadMasses(path.join(FIX, 'qwen2-gqa-f32', 'gravity_mass_log.pt'), 1, 4), 'gravity_mass_log.pt', 'layer 1', '1 layers');
  throwsWith(() => loadMasses(path.join(FIX, 'qwen2-gqa-f32', 'gravity_mass_log.pt'), 2, 8), 'gravity_mass_log.pt', 'layer 0', 'expected 8');
  throwsWith(() => loadMasses(path.join(FIX, 'qwen2-mha-tied-bf16', 'gravity_mass_log.pt'), 2, 4), 'gravity_mass_log.pt', '3 layers');
  throwsWith(() => loadMasses(path.join(FIX, 'qwen2-mha-tied-bf16', 'gravity_mass_log.pt'), 3, 5), 'gravity_mass_log.pt', 'expected 5');
  throwsWith(() => loadMasses(path.join(FIX, 'llama-gqa-f16', 'gravity_mass_log.pt'), 3, 4), 'gravity_mass_log.pt', '2 layers');
  writeSafetensors(f('gap.safetensors'), { [massName(0)]: sample('F32', [4]), [massName(2)]: sample('F32', [4]) });
  throwsWith(() => loadMasses(f('gap.safetensors'), 3, 4), 'gap.safetensors', 'layer 1 has no mass entry');
});

function copyFixture(name: string): string {
  const d = tmpDir();
  fs.cpSync(path.join(FIX, name), d, { recursive: true });
  return d;
}

test('bad weights: wrong shape and missing tensor name the file and tensor; missing shard', () => {
  const d = copyFixture('qwen2-gqa-f32');
  const src = openWeights(d);
  const q = 'model.layers.0.self_attn.q_proj.weight';
  const all = new Map<string, HostTensor>();
  for (const n of src.names()) all.set(n, src.read(n));
  src.close();
  const qt = all.get(q)!;
  all.set(q, { dtype: 'F32', shape: [64, 32], data: (qt.data as Float32Array).slice(0, 64 * 32) });
  writeSafetensors(path.join(d, 'model.safetensors'), all);
  throwsWith(() => loadCheckpointFiles(d), `model.safetensors: tensor "${q}" has shape [64,32], expected [64,64] for this config`);
  all.delete(q);
  writeSafetensors(path.join(d, 'model.safetensors'), all);
  throwsWith(() => loadCheckpointFiles(d), 'model.safetensors', `"${q}" is missing`);
  const s = copyFixture('qwen2-mha-tied-bf16');
  fs.rmSync(path.join(s, 'model-00002-of-00003.safetensors'));
  throwsWith(() => openWeights(s), 'model.safetensors.index.json', 'model-00002-of-00003.safetensors', 'missing');
  // an untied config demands lm_head
  const t = copyFixture('qwen2-mha-tied-bf16');
  const cfg = JSON.parse(fs.readFileSync(path.join(t, 'config.json'), 'utf8'));
  const store = openWeights(t);
  throwsWith(() => checkWeights(store, parseConfig({ ...cfg, tie_word_embeddings: false }, 'config.json')), '"lm_head.weight" is missing');
  store.close();
  throwsWith(() => loadCheckpointFiles(path.join(d, 'nope')), 'nope', 'does not exist');
  fs.rmSync(path.join(d, 'config.json'));
  throwsWith(() => loadCheckpointFiles(d), 'no config.json');
});

test('bad configs: unknown architecture, rope scaling types, sliding window, act, head ratio', () => {
  const base = JSON.parse(fs.readFileSync(path.join(FIX, 'qwen2-gqa-f32', 'config.json'), 'utf8'));
  const p = (over: Record<string, unknown>) => () => parseConfig({ ...base, ...over }, 'config.json');
  throwsWith(p({ architectures: ['GPT2LMHeadModel'] }), "config.json: architecture 'GPT2LMHeadModel' is not supported (supported: Qwen2ForCausalLM, LlamaForCausalLM)");
  throwsWith(p({ rope_parameters: { rope_theta: 1e6, rope_type: 'yarn', factor: 4 } }), 'config.json', "rope type 'yarn' is not supported");
  throwsWith(p({ rope_scaling: { type: 'linear', factor: 2 } }), "rope type 'linear' is not supported");
  throwsWith(p({ rope_scaling: { rope_type: 'llama3' } }), "rope type 'llama3' is not supported");
  throwsWith(p({ use_sliding_window: true }), 'config.json', 'sliding');
  throwsWith(p({ hidden_act: 'gelu' }), 'config.json', "'gelu'");
  throwsWith(p({ num_key_value_heads: 3 }), 'config.json', 'multiple of num_key_value_heads 3');
  throwsWith(p({ hidden_size: 'x' }), 'config.json', 'hidden_size');
  // accepted spellings
  assert.equal(parseConfig({ ...base, rope_parameters: undefined, rope_theta: 123, rope_scaling: null }, 'c').ropeTheta, 123);
  assert.deepEqual(parseConfig({ ...base, eos_token_id: [5, 7], dtype: undefined, torch_dtype: 'bfloat16' }, 'c').eosTokenIds, [5, 7]);
  assert.equal(parseConfig({ ...base, dtype: undefined, torch_dtype: 'bfloat16' }, 'c').dtype, 'bfloat16');
  const llama = parseConfig({ ...base, architectures: ['LlamaForCausalLM'], model_type: 'llama', attention_bias: true, mlp_bias: true }, 'c');
  assert.deepEqual([llama.qkvBias, llama.oBias, llama.mlpBias], [true, true, true]);
});

test('atomic writes: a failing write leaves the existing file intact and no temp file', () => {
  const d = tmpDir();
  const f = path.join(d, 'model.safetensors');
  writeSafetensors(f, { a: sample('F32', [4]) });
  const before = fs.readFileSync(f);
  throwsWith(() => writeSafetensors(f, { a: sample('F32', [4]), b: { dtype: 'F32', shape: [3, 3], data: new Float32Array(8) } }), 'model.safetensors', '"b"', '8 values');
  throwsWith(() => writeSafetensors(f, { b: { dtype: 'BF16', shape: [2], data: new Float32Array(2) } }), '"b"', 'Float32Array');
  // fails midway: the first tensor is already on disk when the second one is produced wrong
  throwsWith(
    () => writeSafetensorsStreaming(f, [{ name: 'x', dtype: 'F32', shape: [1000] }, { name: 'y', dtype: 'F32', shape: [4] }],
      (s) => (s.name === 'x' ? sample('F32', [1000]) : sample('F32', [5]))),
    'model.safetensors', '"y"',
  );
  assert.ok(fs.readFileSync(f).equals(before));
  const pt = path.join(d, 'm.pt');
  writeTorchFile(pt, { a: sample('F32', [2]) });
  const ptBefore = fs.readFileSync(pt);
  throwsWith(() => writeTorchFile(pt, { a: { dtype: 'F32', shape: [3], data: new Float32Array(2) } }), 'm.pt', '"a"');
  assert.ok(fs.readFileSync(pt).equals(ptBefore));
  assert.deepEqual(fs.readdirSync(d).sort(), ['m.pt', 'model.safetensors']);
});

test('masses found among the weights when no masses file exists; --masses override', () => {
  const d = copyFixture('qwen2-gqa-f32');
  const masses = loadMasses(path.join(d, 'gravity_mass_log.pt'), 2, 4);
  fs.rmSync(path.join(d, 'gravity_mass_log.pt'));
  const src = openWeights(d);
  const all = new Map<string, HostTensor>();
  for (const n of src.names()) all.set(n, src.read(n));
  src.close();
  let ck = loadCheckpointFiles(d);
  assert.equal(ck.massesPath, null);
  ck.weights.close();
  masses.forEach((v, i) => all.set(massName(i), { dtype: 'F32', shape: [4], data: v }));
  writeSafetensors(path.join(d, 'model.safetensors'), all);
  ck = loadCheckpointFiles(d);
  assert.equal(ck.massesPath, path.join(d, 'model.safetensors'));
  assert.deepEqual(loadMasses(ck.massesPath!, 2, 4), masses);
  ck.weights.close();
  const other = path.join(FIX, 'train-qwen2-qkvo', 'gravity_mass_log.pt');
  ck = loadCheckpointFiles(d, { masses: other });
  assert.equal(ck.massesPath, other);
  ck.weights.close();
  throwsWith(() => loadCheckpointFiles(d, { masses: path.join(d, 'none.pt') }), 'none.pt', 'does not exist');
});
