import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { generate, generateStream, checkTokenIds, type GeneratedToken } from '../src/generate/generate.js';
import { TextTokenizer } from '../src/tokenizer/tokenizer.js';
import { GravityError } from '../src/errors.js';
import type { CausalLM, Session, ForwardOptions } from '../src/model/types.js';
import type { ModelConfig } from '../src/model/config.js';

const tok = TextTokenizer.fromDir('test/fixtures/tokenizer-tiny');

/**
 * A fake model: the next token is `script[position]` if a script is given (position = tokens seen so far
 * minus the prompt length), else (last * 7 + 3) % V. It checks that the loop uses the KV cache properly:
 * every forward call must stay inside the session's maxLen and feed only new tokens.
 */
class FakeLM {
  readonly config: ModelConfig;
  attention: 'gravity' | 'dot' = 'gravity';
  eps = 0.1;
  readonly massLog: Float32Array[] = [];
  readonly backend = null as unknown as CausalLM['backend'];
  calls: number[][] = [];
  sessions: number[] = [];
  /** set by the test to the prompt length, so `script` is indexed by output position */
  prefillTotal = 0;

  constructor(vocab: number, maxPos: number, private readonly script?: number[], eos: number[] = []) {
    this.config = {
      architecture: 'qwen2', vocabSize: vocab, hiddenSize: 8, intermediateSize: 8, numLayers: 1, numHeads: 1,
      numKVHeads: 1, headDim: 8, ropeTheta: 1e4, rmsNormEps: 1e-6, tieWordEmbeddings: false, qkvBias: true,
      oBias: false, mlpBias: false, maxPositionEmbeddings: maxPos, bosTokenId: null, eosTokenIds: eos,
      attnImplementation: null, dtype: 'float32',
    };
  }

  newSession(batch: number, maxLen: number): Session {
    assert.equal(batch, 1);
    this.sessions.push(maxLen);
    const cache = { numLayers: 1, batch, maxLen, numKVHeads: 1, headDim: 8, keyValid: new Uint8Array(maxLen), length: 0 };
    return { batch, maxLen, cache, positions: new Int32Array(batch) };
  }

  async forward(session: Session, ids: number[][], opts?: ForwardOptions): Promise<Float32Array> {
    assert.equal(opts?.logits ?? 'last', 'last');
    const T = ids[0].length;
    assert.ok(session.cache.length + T <= session.maxLen, `cache overflow: ${session.cache.length}+${T} > ${session.maxLen}`);
    session.cache.length += T;
    (session.positions as Int32Array)[0] += T;
    this.calls.push(ids[0].slice());
    const V = this.config.vocabSize;
    const last = ids[0][T - 1];
    const step = session.cache.length - this.prefillTotal;
    const next = this.script ? this.script[Math.min(step, this.script.length - 1)] : (last * 7 + 3) % V;
    const logits = new Float32Array(V).fill(-5);
    logits[next] = 5;
    return logits;
  }

  dispose(): void {}
}

async function run(m: FakeLM, prompt: number[], opts: Parameters<typeof generate>[2]) {
  m.prefillTotal = prompt.length;
  const events: GeneratedToken[] = [];
  const res = await generate(m as unknown as CausalLM, prompt, { ...opts, onToken: (e) => events.push(e) });
  return { res, events };
}

test('greedy loop follows the model, feeds one token at a time, stops at maxTokens', async () => {
  const m = new FakeLM(50, 1000);
  const { res, events } = await run(m, [1, 2, 3], { temperature: 0, maxTokens: 5 });
  // (3*7+3)%50 = 24, (24*7+3)%50 = 21, 0, 3, 24
  assert.deepEqual(res.outputIds, [24, 21, 0, 3, 24]);
  assert.deepEqual(res.promptIds, [1, 2, 3]);
  assert.equal(res.finishReason, 'length');
  assert.equal(res.text, undefined);
  assert.deepEqual(events.map((e) => [e.id, e.index]), [[24, 0], [21, 1], [0, 2], [3, 3], [24, 4]]);
  // prefill once, then the first four outputs fed back (the last is never fed)
  assert.deepEqual(m.calls, [[1, 2, 3], [24], [21], [0], [3]]);
  assert.deepEqual(m.sessions, [7]); // prompt 3 + 5 outputs - 1
});

test('eos stops with the eos id included; default eos from config', async () => {
  const m = new FakeLM(50, 1000, undefined, [0]);
  const { res } = await run(m, [1, 2, 3], { temperature: 0, maxTokens: 50 });
  assert.deepEqual(res.outputIds, [24, 21, 0]);
  assert.equal(res.finishReason, 'eos');
  const m2 = new FakeLM(50, 1000, undefined, [0]);
  const r2 = await run(m2, [1, 2, 3], { temperature: 0, maxTokens: 50, eosTokenIds: [21] });
  assert.deepEqual(r2.res.outputIds, [24, 21]);
});

test('context limit: prompt + output never exceed maxPositionEmbeddings / maxContext', async () => {
  const m = new FakeLM(50, 8);
  const { res } = await run(m, [1, 2, 3], { temperature: 0, maxTokens: 100 });
  assert.equal(res.outputIds.length, 5);
  assert.equal(res.finishReason, 'length');
  assert.deepEqual(m.sessions, [7]);
  const m2 = new FakeLM(50, 1000);
  const r2 = await run(m2, [1, 2, 3], { temperature: 0, maxTokens: 100, maxContext: 6 });
  assert.equal(r2.res.outputIds.length, 3);
  await assert.rejects(run(new FakeLM(50, 3), [1, 2, 3], {}), /prompt has 3 tokens; the context limit is 3/);
});

test('prefill is chunked; sampling with a seed is reproducible', async () => {
  const m = new FakeLM(50, 1000);
  const prompt = [1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
  await run(m, prompt, { temperature: 0, maxTokens: 2, prefillChunk: 4 });
  assert.deepEqual(m.calls.map((c) => c.length), [4, 4, 2, 1]);
  const a = await run(new FakeLM(50, 1000), [1], { temperature: 50, maxTokens: 20, seed: 9 });
  const b = await run(new FakeLM(50, 1000), [1], { temperature: 50, maxTokens: 20, seed: 9 });
  const c = await run(new FakeLM(50, 1000), [1], { temperature: 50, maxTokens: 20, seed: 10 });
  assert.deepEqual(a.res.outputIds, b.res.outputIds);
  assert.notDeepEqual(a.res.outputIds, c.res.outputIds);
});

test('text streaming: deltas add up to the text, multibyte characters arrive whole', async () => {
  const script = tok.encode('Hi 🙂 你好!');
  const m = new FakeLM(tok.vocabSize, 1000, script);
  const { res, events } = await run(m, [1], { temperature: 0, maxTokens: script.length, tokenizer: tok });
  assert.deepEqual(res.outputIds, script);
  assert.equal(res.text, 'Hi 🙂 你好!');
  assert.equal(events.map((e) => e.text).join(''), 'Hi 🙂 你好!');
  for (const e of events) assert.ok(!e.text.includes('\uFFFD'));
  assert.ok(events.some((e) => e.text === '🙂' || e.text.endsWith('🙂')));
});

test('stop strings: text cut before the stop, never streamed, held-back prefix released if no match', async () => {
  const script = tok.encode('Hello world! The end of the text');
  const m = new FakeLM(tok.vocabSize, 1000, script);
  const { res, events } = await run(m, [1], { temperature: 0, maxTokens: 100, tokenizer: tok, stop: ['! The', 'zzz'] });
  assert.equal(res.finishReason, 'stop');
  assert.equal(res.text, 'Hello world');
  assert.equal(events.map((e) => e.text).join(''), 'Hello world');
  // a partial match ("!" could start "! The") that never completes is emitted in the end
  const m2 = new FakeLM(tok.vocabSize, 1000, tok.encode('a! b'));
  const r2 = await run(m2, [1], { temperature: 0, maxTokens: tok.encode('a! b').length, tokenizer: tok, stop: ['! c'] });
  assert.equal(r2.res.finishReason, 'length');
  assert.equal(r2.events.map((e) => e.text).join(''), 'a! b');
  // special tokens: skipped from text by default; <|im_end|> as eos ends with 'eos'
  const imEnd = tok.tokenToId('<|im_end|>')!;
  const m3 = new FakeLM(tok.vocabSize, 1000, [...tok.encode('ok'), imEnd]);
  const r3 = await run(m3, [1], { temperature: 0, maxTokens: 10, tokenizer: tok, eosTokenIds: [imEnd] });
  assert.equal(r3.res.finishReason, 'eos');
  assert.equal(r3.res.text, 'ok');
});

test('async iterator form yields tokens and returns the result; break stops early', async () => {
  const m = new FakeLM(50, 1000);
  m.prefillTotal = 1;
  const it = generateStream(m as unknown as CausalLM, [1], { temperature: 0, maxTokens: 3 });
  const ids: number[] = [];
  let r = await it.next();
  while (!r.done) {
    ids.push(r.value.id);
    r = await it.next();
  }
  assert.deepEqual(ids, r.value.outputIds);
  const m2 = new FakeLM(50, 1000);
  let n = 0;
  for await (const _ of generateStream(m2 as unknown as CausalLM, [1], { temperature: 0, maxTokens: 100 })) {
    if (++n === 2) break;
  }
  assert.equal(m2.calls.length, 2); // prefill + one fed token, nothing after the break
});

test('bad input: out-of-vocabulary ids, empty prompt, stop without tokenizer, bad options', async () => {
  const m = () => new FakeLM(256, 1000);
  await assert.rejects(run(m(), [999999], {}), { message: 'token id 999999 at position 0 is out of the vocabulary (256)' });
  await assert.rejects(run(m(), [1, 2, -1], {}), /token id -1 at position 2 is out of the vocabulary/);
  await assert.rejects(run(m(), [1, 2.5], {}), /at position 1 is not an integer/);
  await assert.rejects(run(m(), [], {}), /prompt is empty/);
  await assert.rejects(run(m(), [1], { stop: ['x'] }), /stop strings need a tokenizer/);
  await assert.rejects(run(m(), [1], { topP: 2 }), GravityError);
  await assert.rejects(run(m(), [1], { maxTokens: -1 }), /max tokens/);
  assert.throws(() => checkTokenIds([0, 300], 256, 'input id'), /input id 300 at position 1/);
  const zero = await run(m(), [1], { maxTokens: 0, tokenizer: tok });
  assert.deepEqual(zero.res, { promptIds: [1], outputIds: [], finishReason: 'length', text: '', timings: { prefillMs: 0, decodeMs: 0 } });
});
