/**
 * GGUF in and out (src/io/gguf*.ts): every fixture exported and loaded back gives PyTorch's logits (gravity and dot,
 * masses carried in the file, llama's q/k rows in llama.cpp's interleaved order), q8_0 within its quantization
 * error, the block formats against a per-element reading of ggml's layouts, the bundled model's tokenizer and chat
 * template through the file, and damaged files refused with the file named.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadModel } from '../src/model/load.js';
import { loadCheckpointFiles } from '../src/io/checkpoint.js';
import { loadMasses } from '../src/io/masses.js';
import { exportGguf, openGgufModel } from '../src/io/gguf.js';
import { BLOCK, GGML, dequantize, quantizeQ8_0 } from '../src/io/gguf-quants.js';
import { writeGguf } from '../src/io/gguf-write.js';
import { f16ToF32, f32ToF16, toF32 } from '../src/tensor/dtype.js';
import { generate } from '../src/generate/generate.js';
import { FIXTURES, INFERENCE_FIXTURES, loadExpected, relErr } from './helpers/fixtures.js';
import { rand } from './helpers/random.js';
import { tokenizerOf } from '../src/cli/model-args.js';
import { exportFolder } from './helpers/gguf.js';

const tmp = fs.mkdtempSync(join(tmpdir(), 'gravity-gguf-'));
process.on('exit', () => fs.rmSync(tmp, { recursive: true, force: true }));

for (const name of INFERENCE_FIXTURES) {
  test(`${name}: exported to GGUF and loaded back, PyTorch's logits (gravity and dot) and greedy tokens`, async () => {
    const file = join(tmp, `${name}.gguf`);
    exportFolder(join(FIXTURES, name), file);
    const exp = loadExpected(name);
    const ids: number[][] = exp.meta.input_ids;
    for (const attn of ['gravity', 'dot'] as const) {
      const m = await loadModel(file, { attention: attn });
      try {
        const logits = await m.forward(m.newSession(ids.length, ids[0].length), ids, { logits: 'all' });
        const e = relErr(logits, exp.tensors.get(`${attn}.logits`)!.data);
        assert.ok(e <= 1e-4, `${attn} logits rel err ${e.toExponential(2)}`);
        const g = exp.meta[`${attn}_greedy`];
        const r = await generate(m, g.prompt, { temperature: 0, maxTokens: g.tokens.length, eosTokenIds: [] });
        assert.deepEqual(r.outputIds, g.tokens);
      } finally {
        m.dispose();
      }
    }
  });
}

test('llama q/k rows are stored interleaved per head, as llama.cpp\'s converter permutes them', async () => {
  const dir = join(FIXTURES, 'llama-gqa-f16');
  const file = join(tmp, 'llama-perm.gguf');
  exportFolder(dir, file);
  const f = loadCheckpointFiles(dir);
  const g = await openGgufModel(file);
  try {
    const c = f.config;
    for (const [hf, heads] of [['model.layers.0.self_attn.q_proj.weight', c.numHeads], ['model.layers.1.self_attn.k_proj.weight', c.numKVHeads]] as const) {
      const src = toF32(f.weights.read(hf));
      const [rows, cols] = f.weights.info(hf).shape;
      // the file's raw rows: reading through a store that does not undo the permutation
      const raw = rawRows(file, hf === 'model.layers.0.self_attn.q_proj.weight' ? 'blk.0.attn_q.weight' : 'blk.1.attn_k.weight', rows * cols);
      const D = rows / heads;
      // numpy: w.reshape(heads, 2, D/2, cols).swapaxes(1, 2).reshape(rows, cols)
      for (let h = 0; h < heads; h++) for (let i = 0; i < D / 2; i++) for (let j = 0; j < 2; j++) {
        const to = h * D + i * 2 + j;
        const from = h * D + j * (D / 2) + i;
        for (let k = 0; k < cols; k++) assert.equal(raw[to * cols + k], src[from * cols + k], `${hf} row ${to}`);
      }
      assert.deepEqual(toF32(g.weights.read(hf)), src); // and read back in HF order
    }
  } finally {
    f.weights.close();
    g.weights.close();
  }
});

/** the f16 values of a tensor straight from a GGUF file (located by scanning for its name in the header) */
function rawRows(file: string, name: string, n: number): Float32Array {
  const buf = fs.readFileSync(file);
  const at = buf.indexOf(Buffer.from(name)) + name.length;
  const nd = buf.readUInt32LE(at);
  const off = Number(buf.readBigUInt64LE(at + 4 + 8 * nd + 4));
  // data starts at the first 32-byte boundary after the header: the end of the last tensor info
  const infoEnd = lastInfoEnd(buf);
  const start = Math.ceil(infoEnd / 32) * 32 + off;
  return Float32Array.from({ length: n }, (_, i) => f16ToF32(buf.readUInt16LE(start + 2 * i)));
}

function lastInfoEnd(buf: Buffer): number {
  // walk the header: magic, version, counts, key-values, tensor infos
  let p = 8;
  const nt = Number(buf.readBigUInt64LE(p));
  const nkv = Number(buf.readBigUInt64LE(p + 8));
  p += 16;
  const str = () => { const l = Number(buf.readBigUInt64LE(p)); p += 8 + l; };
  const size: Record<number, number> = { 0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8 };
  const val = (t: number) => {
    if (t === 8) return str();
    if (t === 9) { const et = buf.readUInt32LE(p); const n = Number(buf.readBigUInt64LE(p + 4)); p += 12; for (let i = 0; i < n; i++) val(et); return; }
    p += size[t];
  };
  for (let i = 0; i < nkv; i++) { str(); const t = buf.readUInt32LE(p); p += 4; val(t); }
  for (let i = 0; i < nt; i++) { str(); const nd = buf.readUInt32LE(p); p += 4 + 8 * nd + 4 + 8; }
  return p;
}

test('q8_0 export: llama.cpp\'s block rounding, logits within the quantization error; the CPU keeps Q8_0 weights at 8 bits, exactly', async () => {
  const x = rand(32 * 40, 5, 2);
  x[3] = 0; // a zero and a block of zeros
  x.fill(0, 64, 96);
  const q = quantizeQ8_0(x);
  assert.equal(q.length, 40 * 34);
  const y = dequantize(GGML.Q8_0, q, x.length);
  for (let b = 0; b < 40; b++) {
    let amax = 0;
    for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[b * 32 + j]));
    // C: d = amax / 127 and id = 1 / d in f32, q = roundf(x * id) (halves away from zero), d stored as f16
    const d32 = Math.fround(amax / 127);
    const id = d32 ? Math.fround(1 / d32) : 0;
    const d = f16ToF32(f32ToF16(d32));
    for (let j = 0; j < 32; j++) {
      const i = b * 32 + j;
      const v = Math.fround(x[i] * id);
      const want = Math.sign(v) * Math.round(Math.abs(v)) * d;
      assert.ok(Math.abs(y[i] - want) <= 1e-6 * Math.abs(want) + 1e-12, `value ${i}: ${y[i]} vs ${want}`);
      // half a step, plus what rounding d to f16 moves the largest code
      assert.ok(Math.abs(y[i] - x[i]) <= d32 / 2 + 127 * Math.abs(d - d32) + 1e-6, `value ${i} off by more than half a step`);
    }
  }
  const file = join(tmp, 'q8.gguf');
  exportFolder(join(FIXTURES, 'qwen2-gqa-f32'), file, 'q8_0');
  const exp = loadExpected('qwen2-gqa-f32');
  const m = await loadModel(file);
  try {
    const ids: number[][] = exp.meta.input_ids;
    const logits = await m.forward(m.newSession(ids.length, ids[0].length), ids, { logits: 'all' });
    const e = relErr(logits, exp.tensors.get('gravity.logits')!.data);
    assert.ok(e > 1e-5 && e <= 2e-2, `q8_0 logits rel err ${e.toExponential(2)}`);
    // on the CPU the linears stay Q8_0 (8 bits a weight) and compute exactly what the widened f32 values give
    const q = (m.weights.layers[0].q as unknown as { prepared: { dtype: string } }).prepared;
    assert.equal(q.dtype, 'Q8_0');
    const { createCpuBackend } = await import('../src/backend/cpu/index.js');
    const f32 = await loadModel(file, { backend: createCpuBackend({ matmul: 'js' }) }); // widens Q8_0 to f32
    const bf16 = await loadModel(file, { keepQ8: false });
    try {
      const want = await f32.forward(f32.newSession(ids.length, ids[0].length), ids, { logits: 'all' });
      assert.ok(relErr(logits, want) <= 1e-5, `kept Q8_0 vs widened f32: ${relErr(logits, want).toExponential(2)}`);
      const viaBf16 = await bf16.forward(bf16.newSession(ids.length, ids[0].length), ids, { logits: 'all' });
      assert.ok(relErr(viaBf16, want) > 1e-4, 'widening to bf16 rounds the Q8_0 values (else the comparison above proves nothing)');
    } finally {
      f32.dispose();
      bf16.dispose();
    }
  } finally {
    m.dispose();
  }
  // llama: the kept Q8_0 rows of q/k are un-permuted as the widened ones are (a random llama whose rows are whole
  // blocks; the fixture's 48 are not)
  const { writeRandomCheckpoint } = await import('../src/io/random.js');
  const ldir = join(tmp, 'llama-rand');
  const base = loadCheckpointFiles(join(FIXTURES, 'llama-gqa-f16'));
  base.weights.close();
  writeRandomCheckpoint(ldir, { ...base.config, hiddenSize: 64, numHeads: 4, numKVHeads: 2, headDim: 16, intermediateSize: 96 }, { seed: 3, dtype: 'F32' });
  const lfile = join(tmp, 'llama-q8.gguf');
  exportFolder(ldir, lfile, 'q8_0');
  const a = await loadModel(lfile);
  const b = await loadModel(lfile, { keepQ8: false }); // widened to bf16 through the un-permuting reader
  try {
    assert.equal((a.weights.layers[0].k as unknown as { prepared: { dtype: string } }).prepared.dtype, 'Q8_0');
    const lids = [[5, 9, 2, 77, 31, 4, 18, 200]];
    const la = await a.forward(a.newSession(lids.length, lids[0].length), lids, { logits: 'all' });
    const lb = await b.forward(b.newSession(lids.length, lids[0].length), lids, { logits: 'all' });
    assert.ok(relErr(la, lb) <= 1e-2, `llama kept Q8_0 vs widened to bf16: ${relErr(la, lb).toExponential(2)}`);
  } finally {
    a.dispose();
    b.dispose();
  }
});

/** ggml-common.h's layouts read one value at a time (a different walk than gguf-quants.ts's loops) */
function refValue(type: number, b: Uint8Array, i: number): number {
  const blk = BLOCK[type];
  const o = Math.floor(i / blk.n) * blk.bytes;
  const e = i % blk.n;
  const h = (at: number) => f16ToF32(b[at] | (b[at + 1] << 8));
  const sm = (s: number, j: number) => (j < 4 ? [b[s + j] & 63, b[s + j + 4] & 63] : [(b[s + j + 4] & 15) | ((b[s + j - 4] >> 6) << 4), (b[s + j + 4] >> 4) | ((b[s + j] >> 6) << 4)]);
  switch (type) {
    case GGML.Q4_0: return h(o) * (((b[o + 2 + (e % 16)] >> (e < 16 ? 0 : 4)) & 15) - 8);
    case GGML.Q4_1: return h(o) * ((b[o + 4 + (e % 16)] >> (e < 16 ? 0 : 4)) & 15) + h(o + 2);
    case GGML.Q5_0: {
      const hi = (b.readUInt32LE?.(o + 2) ?? new DataView(b.buffer, b.byteOffset).getUint32(o + 2, true)) >>> e & 1;
      return h(o) * ((((b[o + 6 + (e % 16)] >> (e < 16 ? 0 : 4)) & 15) | (hi << 4)) - 16);
    }
    case GGML.Q8_0: return h(o) * ((b[o + 2 + e] << 24) >> 24);
    case GGML.Q2_K: { // CUDA's element-wise form: n = half of 128, k = 32-value quarter, l = lane
      const n = Math.floor(e / 128);
      const k = Math.floor((e % 128) / 32);
      const l = e % 32;
      const sc = b[o + 8 * n + Math.floor(l / 16) + 2 * k];
      return h(o + 80) * (sc & 15) * ((b[o + 16 + 32 * n + l] >> (2 * k)) & 3) - h(o + 82) * (sc >> 4);
    }
    case GGML.Q3_K: {
      const n = Math.floor(e / 128);
      const j = Math.floor((e % 128) / 32);
      const l = e % 32;
      const is = 8 * n + 2 * j + (l >= 16 ? 1 : 0);
      const S = o + 96;
      const us = is < 4 ? (b[S + is] & 15) | ((b[S + is + 8] & 3) << 4)
        : is < 8 ? (b[S + is] & 15) | (((b[S + is + 4] >> 2) & 3) << 4)
          : is < 12 ? (b[S + is - 8] >> 4) | (((b[S + is] >> 4) & 3) << 4)
            : (b[S + is - 8] >> 4) | (((b[S + is - 4] >> 6) & 3) << 4);
      const q = (b[o + 32 + 32 * n + l] >> (2 * j)) & 3;
      return h(o + 108) * (us - 32) * (q - (b[o + l] & (1 << (4 * n + j)) ? 0 : 4));
    }
    case GGML.Q4_K: case GGML.Q5_K: {
      const sub = Math.floor(e / 32); // 8 sub-blocks of 32
      const [sc, mn] = sm(o + 4, sub);
      const pair = Math.floor(sub / 2); // each 32 bytes of qs hold two sub-blocks: low then high nibbles
      const qs = o + (type === GGML.Q4_K ? 16 : 48);
      let q = (b[qs + pair * 32 + (e % 32)] >> (sub % 2 ? 4 : 0)) & 15;
      if (type === GGML.Q5_K) q += ((b[o + 16 + (e % 32)] >> sub) & 1) << 4;
      return h(o) * sc * q - h(o + 2) * mn;
    }
    case GGML.Q6_K: {
      const half = Math.floor(e / 128); // two halves of 128: 64 bytes of ql, 32 of qh, 8 scales each
      const r = e % 128;
      const quarter = Math.floor(r / 32); // 0: ql low, 1: ql+32 low, 2: ql high, 3: ql+32 high
      const l = r % 32;
      const lo = (b[o + half * 64 + l + (quarter % 2) * 32] >> (quarter >= 2 ? 4 : 0)) & 15;
      const hi = (b[o + 128 + half * 32 + l] >> (2 * quarter)) & 3;
      const scale = (b[o + 192 + half * 8 + Math.floor(l / 16) + 2 * quarter] << 24) >> 24;
      return h(o + 208) * scale * ((lo | (hi << 4)) - 32);
    }
  }
  throw new Error(`no reference for ${type}`);
}

test('block formats (Q4_0, Q4_1, Q5_0, Q8_0, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K): every value as ggml\'s layout defines it', () => {
  for (const type of [GGML.Q4_0, GGML.Q4_1, GGML.Q5_0, GGML.Q8_0, GGML.Q2_K, GGML.Q3_K, GGML.Q4_K, GGML.Q5_K, GGML.Q6_K]) {
    const blk = BLOCK[type];
    const nb = 3;
    const bytes = Uint8Array.from({ length: nb * blk.bytes }, (_, i) => (i * 2654435761 + type * 97) >>> 13 & 255);
    // sane f16 scales (random bytes could be NaN / inf): the d (and dmin / m) fields of every block
    const scales: Record<number, number[]> = { [GGML.Q4_K]: [0, 2], [GGML.Q5_K]: [0, 2], [GGML.Q6_K]: [208], [GGML.Q4_1]: [0, 2], [GGML.Q2_K]: [80, 82], [GGML.Q3_K]: [108] };
    for (let k = 0; k < nb; k++) {
      for (const at of scales[type] ?? [0]) {
        const hbits = f32ToF16(0.01 * (k + 1) * (at ? -0.5 : 1));
        bytes[k * blk.bytes + at] = hbits & 255;
        bytes[k * blk.bytes + at + 1] = hbits >> 8;
      }
    }
    const y = dequantize(type, bytes, nb * blk.n);
    for (let i = 0; i < y.length; i++) {
      const want = refValue(type, bytes, i);
      assert.ok(Math.abs(y[i] - want) <= 1e-6 * Math.abs(want) + 1e-9, `${blk.name} value ${i}: ${y[i]} vs ${want}`);
    }
  }
});

test('the bundled model through GGUF: tokenizer, special tokens and chat template survive; its answer is unchanged', async () => {
  const file = join(tmp, 'mini.gguf');
  exportFolder('models/gravity-mini', file);
  const a = await loadModel('models/gravity-mini');
  const b = await loadModel(file);
  try {
    const ta = tokenizerOf(a)!;
    const tb = tokenizerOf(b)!;
    for (const s of ['What is 48 + 37?', '<|im_start|>user\n12+30<|im_end|>\n', '  spaces\tand\nnewlines  ', 'é ü 中文 🙂']) {
      assert.deepEqual(tb.encode(s), ta.encode(s), JSON.stringify(s));
      assert.equal(tb.decode(ta.encode(s)), ta.decode(ta.encode(s)));
    }
    const msgs = [{ role: 'user', content: 'What is 48 + 37?' }];
    const prompt = ta.encode(ta.applyChatTemplate(msgs, { addGenerationPrompt: true }), { addSpecialTokens: false });
    assert.deepEqual(tb.encode(tb.applyChatTemplate(msgs, { addGenerationPrompt: true }), { addSpecialTokens: false }), prompt);
    assert.deepEqual(b.eosTokenIds, a.eosTokenIds); // all of generation_config.json's stop ids ([507, 505])
    assert.equal(a.eosTokenIds.length, 2);
    const ra = await generate(a, prompt, { temperature: 0, maxTokens: 48, tokenizer: ta });
    const rb = await generate(b, prompt, { temperature: 0, maxTokens: 48, tokenizer: tb });
    assert.deepEqual(rb.outputIds, ra.outputIds);
    assert.match(rb.text!, /Answer: 85/);
  } finally {
    a.dispose();
    b.dispose();
  }
});

test('bad GGUF files: garbage, truncated, unknown architecture, unknown tensor type, no masses for gravity; an export never leaves a half-written file', async () => {
  const good = join(tmp, 'qwen2-gqa-f32.gguf');
  if (!fs.existsSync(good)) exportFolder(join(FIXTURES, 'qwen2-gqa-f32'), good);
  const bytes = fs.readFileSync(good);
  const garbage = join(tmp, 'garbage.gguf');
  fs.writeFileSync(garbage, Buffer.from('this is not a gguf file at all, just text'));
  await assert.rejects(loadModel(garbage), /garbage\.gguf: not a readable GGUF file/);
  const cut = join(tmp, 'cut.gguf');
  fs.writeFileSync(cut, bytes.subarray(0, bytes.length - 1000));
  await assert.rejects(loadModel(cut), /cut\.gguf: tensor .* past the end of the file .*truncated/);
  const arch = join(tmp, 'arch.gguf');
  writeGguf(arch, new Map([['general.architecture', { t: 'str', v: 'mamba' }]]), []);
  await assert.rejects(loadModel(arch), /arch\.gguf: architecture 'mamba' is not supported/);
  const odd = join(tmp, 'odd.gguf');
  writeGguf(odd, new Map([['general.architecture', { t: 'str', v: 'qwen2' }], ['qwen2.embedding_length', { t: 'u32', v: 8 }], ['qwen2.attention.head_count', { t: 'u32', v: 2 }]]), []);
  await assert.rejects(loadModel(odd), /odd\.gguf: no token_embd\.weight/);
  await assert.rejects(loadModel(join(tmp, 'missing.gguf')), /missing\.gguf: file does not exist/);
  // a tensor type we do not read (IQ2_XXS = 16) in place of the embedding's F32
  const q2 = Buffer.from(bytes);
  const at = q2.indexOf(Buffer.from('token_embd.weight')) + 'token_embd.weight'.length;
  q2.writeUInt32LE(16, at + 4 + 8 * q2.readUInt32LE(at));
  const q2File = join(tmp, 'q2.gguf');
  fs.writeFileSync(q2File, q2);
  await assert.rejects(loadModel(q2File), /q2\.gguf: tensor token_embd\.weight has GGML type 16, which is not read here/);
  // a file without masses: gravity needs them, dot does not
  const plain = join(tmp, 'plain.gguf');
  const f = loadCheckpointFiles(join(FIXTURES, 'qwen2-gqa-f32'));
  try {
    exportGguf({ config: f.config, weights: f.weights, masses: null, defaults: {}, eosTokenIds: [], tokenizerJson: null, tokenizerConfig: null, name: 'plain' }, plain);
    // a write that fails (a tensor whose data does not match its shape) keeps the old file and no temporary
    const before = fs.readFileSync(plain);
    assert.throws(() => writeGguf(plain, new Map(), [{ name: 'x', shape: [2, 32], type: GGML.F32, data: () => new Uint8Array(7) }]), /x: 7 bytes of data, its shape and type need 256/);
    assert.deepEqual(fs.readFileSync(plain), before);
    assert.deepEqual(fs.readdirSync(tmp).filter((n) => n.includes('.tmp')), []);
  } finally {
    f.weights.close();
  }
  await assert.rejects(loadModel(plain), /plain\.gguf: no gravity masses in the file .*--masses FILE/);
  const dot = await loadModel(plain, { attention: 'dot' });
  dot.dispose();
});

test('CLI: export, then inspect, generate and train (LoRA + masses) take the .gguf file as --model; export --adapter writes the trained model as one file', async () => {
  const { spawnSync } = await import('node:child_process');
  const gravity = (args: string[]) => {
    const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], { encoding: 'utf8' });
    return { code: r.status, out: r.stdout, err: r.stderr };
  };
  const file = join(tmp, 'cli.gguf');
  const ex = gravity(['export', '--model', join(FIXTURES, 'qwen2-gqa-f32'), '--out', file, '--type', 'bf16']);
  assert.equal(ex.code, 0, ex.err);
  const bad = gravity(['export', '--model', join(FIXTURES, 'qwen2-gqa-f32'), '--out', join(tmp, 'x.bin')]);
  assert.match(bad.err, /--out 'x?.*x\.bin': the file name must end in \.gguf/);
  const text = gravity(['inspect', '--model', file]);
  assert.equal(text.code, 0, text.err);
  assert.match(text.out, /masses {6}M = softplus\(mass_log\), from the file \(gravity\.mass_log\)/);
  assert.match(text.out, /model\.layers\.N\.self_attn\.q_proj\.weight +BF16 \[/);
  const ins = gravity(['inspect', '--model', file, '--json']);
  assert.equal(ins.code, 0, ins.err);
  const info = JSON.parse(ins.out);
  const ref = loadCheckpointFiles(join(FIXTURES, 'qwen2-gqa-f32'));
  const c = ref.config;
  const want = loadMasses(ref.massesPath!, c.numLayers, c.numHeads);
  ref.weights.close();
  assert.equal(info.config.numLayers, c.numLayers);
  assert.equal(info.masses.length, c.numLayers);
  assert.ok(Math.abs(info.masses[1][2] - Math.log1p(Math.exp(want[1][2]))) < 1e-6);
  assert.deepEqual(Object.values(info.parameters_by_dtype).length, 2); // bf16 matrices, f32 norms and biases
  const data = join(tmp, 'd.jsonl');
  fs.writeFileSync(data, Array.from({ length: 6 }, (_, i) => JSON.stringify({ input_ids: Array.from({ length: 12 }, (_, j) => 3 + ((i * 31 + j * 7) % 200)) })).join('\n') + '\n');
  const run = join(tmp, 'run');
  const tr = gravity(['train', '--model', file, '--data', data, '--seq-len', '16', '--batch-size', '2', '--steps', '2', '--train-masses', '--out', run]);
  assert.equal(tr.code, 0, tr.err);
  const gen = gravity(['generate', '--model', file, '--adapter', run, '--prompt-ids', '1,2,3', '--max-tokens', '6', '--temperature', '0', '--json']);
  assert.equal(gen.code, 0, gen.err);
  assert.equal(JSON.parse(gen.out).output_ids.length, 6);
  // the trained model (adapter folded in, trained masses) as one file: the same tokens and logits
  const merged = join(tmp, 'merged.gguf');
  const mx = gravity(['export', '--model', file, '--adapter', run, '--out', merged, '--type', 'f32']);
  assert.equal(mx.code, 0, mx.err);
  const again = gravity(['generate', '--model', merged, '--prompt-ids', '1,2,3', '--max-tokens', '6', '--temperature', '0', '--json']);
  assert.deepEqual(JSON.parse(again.out).output_ids, JSON.parse(gen.out).output_ids);
  const a = await loadModel(file, { adapter: run });
  const b = await loadModel(merged);
  try {
    const la = await a.forward(a.newSession(1, 5), [[1, 2, 3, 4, 5]], { logits: 'all' });
    const lb = await b.forward(b.newSession(1, 5), [[1, 2, 3, 4, 5]], { logits: 'all' });
    assert.ok(relErr(lb, la) <= 1e-6, `merged logits differ by ${relErr(lb, la)}`);
    const base = await loadModel(file);
    const l0 = await base.forward(base.newSession(1, 5), [[1, 2, 3, 4, 5]], { logits: 'all' });
    base.dispose();
    assert.ok(relErr(l0, la) > 1e-4, 'the adapter changes the logits (else this check proves nothing)');
  } finally {
    a.dispose();
    b.dispose();
  }
});

test('--q8 quantizes a folder\'s linears to Q8_0 on load: the kernels give the f32-widened quantized model, near the exact one', async () => {
  const { createCpuBackend } = await import('../src/backend/cpu/index.js');
  const exact = await loadModel('models/gravity-mini');
  const q8 = await loadModel('models/gravity-mini', { q8: true });
  const widened = await loadModel('models/gravity-mini', { q8: true, backend: createCpuBackend({ matmul: 'js' }) }); // Q8_0 widened to f32
  try {
    for (const n of ['q', 'k', 'v', 'o', 'gate', 'up', 'down'] as const) {
      assert.equal((q8.weights.layers[2][n] as unknown as { prepared: { dtype: string } }).prepared.dtype, 'Q8_0', n);
    }
    const ids = [[506, 10, 20, 30, 40, 50, 60, 70]];
    const run = async (m: typeof exact) => m.forward(m.newSession(1, ids[0].length), ids, { logits: 'all' });
    const [a, b, c] = [await run(exact), await run(q8), await run(widened)];
    assert.ok(relErr(b, c) <= 1e-5, `q8 kernels vs the widened quantized model: ${relErr(b, c).toExponential(2)}`);
    const e = relErr(b, a);
    assert.ok(e > 1e-5 && e < 3e-2, `q8 vs exact: ${e.toExponential(2)}`);
    await assert.rejects(loadModel('models/gravity-mini', { q8: true, device: 'webgpu' }), /--q8 keeps Q8_0 weights on the CPU backend only \(--device cpu\); webgpu has no Q8_0 kernels/);
  } finally {
    exact.dispose();
    q8.dispose();
    widened.dispose();
  }
});

test('GGUF refusals named: big-endian, RoPE scaling, a missing key, masses of the wrong size, vocabularies and tokenizers it cannot carry, a masses file that is not there, an export type it cannot write', async () => {
  const { gguf } = await import('@huggingface/gguf');
  const { describeGguf } = await import('../src/io/gguf-model.js');
  const { tokenizerFromGguf, tokenizerToGguf } = await import('../src/io/gguf-tokenizer.js');
  const file = join(tmp, 'refusals.gguf');
  exportFolder(join(FIXTURES, 'qwen2-gqa-f32'), file);
  const parsed = await gguf(file, { allowLocalFile: true });
  const size = fs.statSync(file).size;
  const withMeta = (change: Record<string, unknown>, extra: object = {}) =>
    ({ ...parsed, ...extra, metadata: { ...parsed.metadata, ...change } }) as never;
  assert.doesNotThrow(() => describeGguf(withMeta({}), 'f.gguf', size));
  assert.throws(() => describeGguf(withMeta({}, { littleEndian: false }), 'f.gguf', size), /f\.gguf: a big-endian GGUF file; only little-endian files are read/);
  assert.throws(() => describeGguf(withMeta({ 'qwen2.rope.scaling.type': 'yarn' }), 'f.gguf', size), /f\.gguf: RoPE scaling 'yarn' is not supported/);
  assert.throws(() => describeGguf(withMeta({ 'qwen2.block_count': undefined }), 'f.gguf', size), /f\.gguf: metadata key qwen2\.block_count is missing/);
  assert.throws(() => describeGguf(withMeta({ 'qwen2.feed_forward_length': 'wide' }), 'f.gguf', size), /f\.gguf: metadata key qwen2\.feed_forward_length is "wide", not a number/);
  assert.throws(() => describeGguf(withMeta({ 'gravity.mass_log': [0.5, 0.5] }), 'f.gguf', size), /f\.gguf: gravity\.mass_log must hold \d+ layers x \d+ heads = \d+ numbers, found 2/);
  // vocabularies
  const vocab = { 'tokenizer.ggml.tokens': ['a', 'b'], 'tokenizer.ggml.merges': [] };
  assert.throws(() => tokenizerFromGguf({ ...vocab, 'tokenizer.ggml.model': 'llama' }, 'v.gguf'), /v\.gguf: tokenizer\.ggml\.model is 'llama'; only byte-level BPE \('gpt2'\) vocabularies are read/);
  assert.throws(() => tokenizerFromGguf({ 'tokenizer.ggml.model': 'gpt2', 'tokenizer.ggml.merges': [] }, 'v.gguf'), /v\.gguf: tokenizer\.ggml\.tokens is missing or not a list of strings/);
  assert.throws(() => tokenizerFromGguf({ ...vocab, 'tokenizer.ggml.model': 'gpt2', 'tokenizer.ggml.pre': 'deepseek-coder' }, 'v.gguf'), /v\.gguf: tokenizer\.ggml\.pre 'deepseek-coder' is not a pre-tokenizer we know/);
  assert.throws(() => tokenizerFromGguf({ ...vocab, 'tokenizer.ggml.model': 'gpt2', 'tokenizer.ggml.token_type': [1] }, 'v.gguf'), /v\.gguf: tokenizer\.ggml\.token_type does not have one entry per token/);
  const mini = JSON.parse(fs.readFileSync('models/gravity-mini/tokenizer.json', 'utf8'));
  assert.throws(() => tokenizerToGguf({ ...mini, model: { ...mini.model, type: 'Unigram' } }, null, 600), /tokenizer\.json: only byte-level BPE tokenizers can go into a GGUF file \(this one is Unigram with a ByteLevel decoder\)/);
  const otherSplit = { ...mini, pre_tokenizer: { type: 'Sequence', pretokenizers: [{ type: 'Split', pattern: { Regex: '\\s+' } }] } };
  assert.throws(() => tokenizerToGguf(otherSplit, null, 600), /tokenizer\.json: its pre-tokenizer \(\\s\+\) is not one llama\.cpp names/);
  // a masses file named but missing, before the GGUF is opened
  await assert.rejects(loadModel(file, { masses: join(tmp, 'none.pt') }), /none\.pt: masses file does not exist/);
  // export: an unknown --type
  const { spawnSync } = await import('node:child_process');
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', 'export', '--out', join(tmp, 'x.gguf'), '--type', 'q4_k'], { encoding: 'utf8' });
  assert.equal(r.status, 1);
  assert.match(r.stderr, /--type 'q4_k': expected keep, f32, f16, bf16, q8_0/);
});
