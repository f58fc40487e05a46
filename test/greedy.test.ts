/**
 * Greedy decoding kept on the device (CausalLM.greedyStream): on the GPU the next token's kernels are recorded
 * while the previous token id is still being read back, and the steps computed ahead are rolled back when the
 * caller stops. Checked against the PyTorch fixture's greedy tokens and against a step-by-step loop on the same
 * backend (tokens, session state after stopping, logits of a forward that continues the session).
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { createWebGPUBackend, type WebGPUBackend } from '../src/backend/webgpu/index.js';
import { loadModel } from '../src/model/load.js';
import type { CausalLM } from '../src/model/types.js';
import { generate } from '../src/generate/generate.js';
import { GravityError } from '../src/errors.js';
import { FIXTURES, argmax, loadExpected, relErr } from './helpers/fixtures.js';

const NAME = 'qwen2-gqa-f32';

async function stepByStep(m: CausalLM, prompt: number[], n: number): Promise<{ tokens: number[]; next: Float32Array }> {
  const s = m.newSession(1, 64);
  let lg = await m.forward(s, [prompt]);
  const tokens: number[] = [];
  for (let i = 0; i < n; i++) {
    tokens.push(argmax(lg));
    if (i < n - 1) lg = await m.forward(s, [[tokens[i]]]);
  }
  // what the session holds now: prompt + tokens[0..n-2]; continue with the last token
  const next = await m.forward(s, [[tokens[n - 1]]]);
  m.closeSession(s);
  return { tokens, next };
}

async function viaStream(m: CausalLM, prompt: number[], n: number, lookahead?: number): Promise<{ tokens: number[]; next: Float32Array; length: number; pos: number }> {
  const s = m.newSession(1, 64);
  const lg = await m.forward(s, [prompt]);
  const tokens = [argmax(lg)];
  const it = m.greedyStream!(s, [tokens[0]], lookahead);
  while (tokens.length < n) {
    const r = await it.next();
    assert.ok(!r.done);
    tokens.push(r.value[0]);
  }
  await it.return();
  const length = s.cache.length;
  const pos = s.positions[0];
  const next = await m.forward(s, [[tokens[n - 1]]]);
  m.closeSession(s);
  return { tokens, next, length, pos };
}

function checkBackend(label: string, make: () => Promise<CausalLM>, nanMasses: boolean) {
  describe(label, () => {
    let m: CausalLM;
    before(async () => {
      m = await make();
    });
    after(() => m?.dispose());

    test('tokens equal the step-by-step loop and PyTorch; stopping rolls the session back exactly', async () => {
      const exp = loadExpected(NAME);
      const g = exp.meta.gravity_greedy;
      for (const n of [1, 2, 7, 16]) {
        const ref = await stepByStep(m, g.prompt, n);
        for (const la of [1, 3]) {
          const got = await viaStream(m, g.prompt, n, la);
          assert.deepEqual(got.tokens, ref.tokens, `n=${n} lookahead=${la}`);
          assert.equal(got.length, g.prompt.length + n - 1, `cache length after n=${n} lookahead=${la}`);
          assert.equal(got.pos, g.prompt.length + n - 1, 'RoPE position');
          assert.ok(relErr(got.next, ref.next) <= 1e-6, `logits after rollback n=${n} lookahead=${la}`);
        }
        assert.deepEqual(ref.tokens, g.tokens.slice(0, n), 'PyTorch greedy tokens');
      }
    });

    test('generate(): device greedy and host greedy give the same ids; the context limit holds', async () => {
      const g = loadExpected(NAME).meta.gravity_greedy;
      const a = await generate(m, g.prompt, { temperature: 0, maxTokens: 12 });
      const b = await generate(m, g.prompt, { temperature: 0, maxTokens: 12, noDeviceGreedy: true });
      assert.deepEqual(a.outputIds, b.outputIds);
      assert.deepEqual(a.outputIds, g.tokens.slice(0, 12));
      const c = await generate(m, g.prompt, { temperature: 0, maxTokens: 50, maxContext: g.prompt.length + 5 });
      assert.equal(c.outputIds.length, 5);
      assert.equal(c.finishReason, 'length');
      assert.deepEqual(c.outputIds, g.tokens.slice(0, 5));
    });

    test('sampleStream: generate() at temperature > 0 (also with top-k / top-p / min-p) gives the host loop\'s tokens for a seed; stopping rolls back', async () => {
      const g = loadExpected(NAME).meta.gravity_greedy;
      for (const [seed, temperature] of [[1, 0.8], [2, 1.3], [3, 0.5]] as const) {
        const a = await generate(m, g.prompt, { temperature, seed, maxTokens: 16 });
        const b = await generate(m, g.prompt, { temperature, seed, maxTokens: 16, noDeviceGreedy: true });
        assert.deepEqual(a.outputIds, b.outputIds, `seed ${seed}, temperature ${temperature}`);
      }
      // with top-k (and top-p / min-p): the stream draws on the device too (webgpu/sample-topk.ts)
      // (top-p or min-p alone: drawn on the host inside the stream)
      for (const [seed, f] of [[4, { topK: 5 }], [5, { topK: 40, topP: 0.7 }], [6, { topK: 200, topP: 0.95, minP: 0.02 }], [10, { topP: 0.8 }], [11, { minP: 0.1 }]] as const) {
        const a = await generate(m, g.prompt, { temperature: 1.1, seed, maxTokens: 16, ...f });
        const b = await generate(m, g.prompt, { temperature: 1.1, seed, maxTokens: 16, noDeviceGreedy: true, ...f });
        assert.deepEqual(a.outputIds, b.outputIds, `seed ${seed}, ${JSON.stringify(f)}`);
      }
      // a repetition penalty goes with the stream (a mask of seen ids on the device): greedy, sampled, top-k
      for (const [seed, o] of [[7, { temperature: 0 }], [8, { temperature: 0.9 }], [9, { temperature: 1.2, topK: 30, topP: 0.9 }]] as const) {
        for (const repetitionPenalty of [1.25, 1.8]) {
          const a = await generate(m, g.prompt, { seed, maxTokens: 16, repetitionPenalty, ...o });
          const b = await generate(m, g.prompt, { seed, maxTokens: 16, repetitionPenalty, noDeviceGreedy: true, ...o });
          assert.deepEqual(a.outputIds, b.outputIds, `seed ${seed}, ${JSON.stringify(o)}, penalty ${repetitionPenalty}`);
        }
      }
      // the penalty changes the greedy continuation of this fixture (so the check above is not vacuous)
      const pen = await generate(m, g.prompt, { temperature: 0, maxTokens: 16, repetitionPenalty: 1.8 });
      assert.notDeepEqual(pen.outputIds, g.tokens.slice(0, 16));
      // a seed's draws are not all the greedy token (the stream really samples)
      const many = await generate(m, g.prompt, { temperature: 2, seed: 9, maxTokens: 16 });
      assert.notDeepEqual(many.outputIds, g.tokens.slice(0, 16));
      // stop after 5 of lookahead 3: the session holds prompt + 4 fed tokens, as a step loop would
      const s = m.newSession(1, 64);
      await m.forward(s, [g.prompt]);
      let u = 0;
      const it = m.sampleStream!(s, [g.tokens[0]], 1, () => (u = (u + 0.37) % 1), 3);
      const got: number[] = [];
      for (let i = 0; i < 5; i++) got.push((await it.next()).value![0]);
      await it.return();
      assert.equal(s.cache.length, g.prompt.length + 5);
      assert.equal(s.positions[0], g.prompt.length + 5);
      m.closeSession(s);
      assert.throws(() => m.sampleStream!(m.newSession(1, 8), [1], 0, () => 0.5), /temperature must be > 0/);
      assert.throws(() => m.greedyStream!(m.newSession(1, 8), [1], 3, { value: 0, history: [[1]] }), /repetition penalty must be > 0, got 0/);
      assert.throws(() => m.sampleStream!(m.newSession(1, 8), [1], 1, () => 0.5, 3, { value: 1.2, history: [[1], [2]] }), /repetition penalty: 2 histories for a batch of 1/);
    });

    // (the GPU kernels' NaN propagation is the hardware's min/max semantics; the op test below covers the GPU check)
    if (nanMasses) test('non-finite logits stop greedy decoding with an error', async () => {
      const g = loadExpected(NAME).meta.gravity_greedy;
      const s = m.newSession(1, 16);
      await m.forward(s, [g.prompt.slice(0, 3)]);
      // a new array: the squared masses are cached by array identity
      const masses = m.massLog as Float32Array[];
      const saved = masses[0];
      masses[0] = new Float32Array(saved.length).fill(NaN);
      try {
        const it = m.greedyStream!(s, [g.prompt[3]]);
        await assert.rejects(() => it.next(), (e: Error) => e instanceof GravityError && /non-finite|NaN/.test(e.message));
      } finally {
        masses[0] = saved;
        m.closeSession(s);
      }
    });
  });
}

checkBackend('cpu (step loop behind greedyStream)', () => loadModel(path.join(FIXTURES, NAME), { attention: 'gravity', device: 'cpu' }), true);

let gpu: WebGPUBackend;
after(() => gpu?.destroy());
checkBackend('webgpu (pipelined on the device)', async () => {
  gpu = await createWebGPUBackend();
  return loadModel(path.join(FIXTURES, NAME), { attention: 'gravity', backend: gpu });
}, false);

test('webgpu argmaxDevice: first index of the row maximum; a row with NaN or inf is an error at readIds', async () => {
  const row = (vals: number[]) => gpu.fromF32(Float32Array.from(vals), [1, vals.length]);
  const ids = gpu.argmaxDevice(gpu.fromF32(Float32Array.from([1, 5, 5, -2, 3, 5, 0, 4]), [2, 4]));
  assert.deepEqual([...(await gpu.readIds(ids))], [1, 1]);
  // a long row is reduced in chunks (two passes): ties across chunks keep the first, a NaN in any chunk is seen
  const V = 5000;
  const long = new Float32Array(3 * V).map((_, i) => Math.sin(i) - 3);
  long[1500] = 2;
  long[3200] = 2;
  long[V + 4999] = 1;
  long[2 * V + 10] = 5;
  long[2 * V + 4999] = NaN;
  const lt = gpu.argmaxDevice(gpu.fromF32(long.subarray(0, 2 * V), [2, V]));
  assert.deepEqual([...(await gpu.readIds(lt))], [1500, 4999]);
  await assert.rejects(() => gpu.readIds(gpu.argmaxDevice(gpu.fromF32(long, [3, V]))), /NaN or infinity/);
  for (const bad of [NaN, Infinity, -Infinity]) {
    const t = gpu.argmaxDevice(row([0, 1, bad, 2]));
    await assert.rejects(() => gpu.readIds(t), (e: Error) => e instanceof GravityError && /NaN or infinity/.test(e.message));
  }
});

test('errors: greedyStream with the wrong number of tokens or a full session; device ids of the wrong type', async () => {
  const m = await loadModel(path.join(FIXTURES, NAME), { attention: 'gravity', backend: gpu });
  const s = m.newSession(1, 4);
  await m.forward(s, [[1, 2, 3]]);
  await assert.rejects(() => m.greedyStream!(s, [1, 2]).next(), (e: Error) => e instanceof GravityError && /2 tokens given to a session of batch 1/.test(e.message));
  // one slot left: the first step fits, the second finds the context full
  const it = m.greedyStream!(s, [4]);
  assert.equal((await it.next()).done, false);
  await assert.rejects(() => it.next(), (e: Error) => e instanceof GravityError && /context full: 5 tokens > 4/.test(e.message));
  m.closeSession(s);
  const f = gpu.fromF32(Float32Array.of(1, 2), [2]);
  assert.throws(() => gpu.embeddingDevice(f, gpu.fromF32(new Float32Array(8), [4, 2])), /device ids must be I32 \[N\], got F32 \[2\]/);
  assert.throws(() => gpu.readIds(f), /readIds: expected an I32 tensor, got F32/);
});
