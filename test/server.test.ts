/**
 * The OpenAI-compatible server (src/server): greedy completions over HTTP give PyTorch's tokens, chat answers equal
 * generate()'s for the same template, streams equal the whole answers, and every bad request gets an OpenAI error
 * with a 4xx status while the server keeps serving.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as http from 'node:http';
import { loadModel, type LoadedModel } from '../src/model/load.js';
import { generate } from '../src/generate/generate.js';
import { startApiServer, type ApiServer } from '../src/server/http.js';
import type { Served } from '../src/server/openai.js';
import { chatEosIds, tokenizerOf } from '../src/cli/model-args.js';
import { loadExpected } from './helpers/fixtures.js';

const FIX = 'test/fixtures/qwen2-gqa-f32';
const MINI = 'models/gravity-mini';
let fixture: LoadedModel, mini: LoadedModel;
let fx: ApiServer, mn: ApiServer;
const logLines: string[] = [];

function served(model: LoadedModel, id: string): Served {
  const tokenizer = tokenizerOf(model);
  return { id, model, tokenizer, chatEosIds: tokenizer ? chatEosIds(model, tokenizer) : model.eosTokenIds, created: 1 };
}

before(async () => {
  fixture = await loadModel(FIX);
  mini = await loadModel(MINI);
  fx = await startApiServer(served(fixture, 'fixture'), { port: 0, maxBodyBytes: 1 << 16 });
  mn = await startApiServer(served(mini, 'gravity-mini'), { port: 0, log: (l) => logLines.push(l) });
});
after(async () => {
  await fx?.close();
  await mn?.close();
  fixture?.dispose();
  mini?.dispose();
});

async function post(s: ApiServer, path: string, body: unknown): Promise<{ status: number; json: any; text: string }> {
  const r = await fetch(s.url + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body: typeof body === 'string' ? body : JSON.stringify(body) });
  const text = await r.text();
  let json: any = null;
  try {
    json = JSON.parse(text);
  } catch {
    /* a stream */
  }
  return { status: r.status, json, text };
}

/** the JSON events of a server-sent event stream, which must end with [DONE] */
function events(text: string): any[] {
  const lines = text.split('\n\n').filter((l) => l.length > 0);
  assert.equal(lines.at(-1), 'data: [DONE]');
  return lines.slice(0, -1).map((l) => {
    assert.ok(l.startsWith('data: '), l);
    return JSON.parse(l.slice(6));
  });
}

test('completions: greedy token ids over HTTP are PyTorch\'s (gravity fixture, no tokenizer), streamed and whole', async () => {
  const g = loadExpected('qwen2-gqa-f32').meta.gravity_greedy;
  const whole = await post(fx, '/v1/completions', { model: 'fixture', prompt: g.prompt, max_tokens: 16, temperature: 0 });
  assert.equal(whole.status, 200, whole.text);
  assert.equal(whole.json.object, 'text_completion');
  assert.deepEqual(whole.json.choices[0].token_ids, g.tokens);
  assert.deepEqual(whole.json.prompt_token_ids, g.prompt);
  assert.equal(whole.json.choices[0].finish_reason, 'length');
  assert.deepEqual(whole.json.usage, { prompt_tokens: g.prompt.length, completion_tokens: 16, total_tokens: g.prompt.length + 16 });
  const st = await post(fx, '/v1/completions', { prompt: [g.prompt], max_tokens: 16, temperature: 0, stream: true, stream_options: { include_usage: true } });
  assert.equal(st.status, 200);
  const ev = events(st.text);
  assert.deepEqual(ev.flatMap((e) => e.choices[0]?.token_ids ?? []), g.tokens);
  assert.equal(ev.at(-2).choices[0].finish_reason, 'length');
  assert.deepEqual(ev.at(-1).usage, whole.json.usage);
});

test('chat: the answer of generate() with the chat template, whole and streamed; stop strings, seeds, models list', async () => {
  const tok = tokenizerOf(mini)!;
  const messages = [{ role: 'user', content: 'What is 48 + 37?' }];
  const ids = tok.encode(tok.applyChatTemplate(messages, { addGenerationPrompt: true }), { addSpecialTokens: false });
  const ref = await generate(mini, ids, { temperature: 0, maxTokens: 64, tokenizer: tok, eosTokenIds: chatEosIds(mini, tok) });
  assert.match(ref.text!, /Answer: 85/);
  const whole = await post(mn, '/v1/chat/completions', { model: 'gravity-mini', messages, temperature: 0, max_tokens: 64 });
  assert.equal(whole.status, 200, whole.text);
  assert.equal(whole.json.object, 'chat.completion');
  assert.deepEqual(whole.json.choices[0].message, { role: 'assistant', content: ref.text });
  assert.equal(whole.json.choices[0].finish_reason, 'stop');
  assert.equal(whole.json.usage.completion_tokens, ref.outputIds.length);
  // content as parts, a developer message as the system's
  const parts = await post(mn, '/v1/chat/completions', { messages: [{ role: 'user', content: [{ type: 'text', text: 'What is 48 + ' }, { type: 'text', text: '37?' }] }], temperature: 0, max_tokens: 64 });
  assert.equal(parts.json.choices[0].message.content, ref.text);
  const st = await post(mn, '/v1/chat/completions', { messages, temperature: 0, max_tokens: 64, stream: true });
  const ev = events(st.text);
  assert.deepEqual(ev[0].choices[0].delta, { role: 'assistant', content: '' });
  assert.equal(ev.map((e) => e.choices[0].delta.content ?? '').join(''), ref.text);
  assert.equal(ev.at(-1).choices[0].finish_reason, 'stop');
  assert.ok(ev.every((e) => e.object === 'chat.completion.chunk' && e.id === ev[0].id));
  // a stop string cuts the text before it
  const stop = await post(mn, '/v1/chat/completions', { messages, temperature: 0, max_tokens: 64, stop: 'Answer' });
  assert.equal(stop.json.choices[0].message.content, ref.text!.slice(0, ref.text!.indexOf('Answer')));
  // sampled with a seed: repeatable
  const s1 = await post(mn, '/v1/completions', { prompt: 'What is 12 + 30?', max_tokens: 12, seed: 7, temperature: 1.2, top_k: 20 });
  const s2 = await post(mn, '/v1/completions', { prompt: 'What is 12 + 30?', max_tokens: 12, seed: 7, temperature: 1.2, top_k: 20 });
  assert.equal(s1.status, 200, s1.text);
  assert.equal(s1.json.choices[0].text, s2.json.choices[0].text);
  const models = await (await fetch(mn.url + '/v1/models')).json();
  assert.deepEqual(models.data.map((m: any) => [m.id, m.max_model_len]), [['gravity-mini', mini.config.maxPositionEmbeddings]]);
  assert.deepEqual(await (await fetch(mn.url + '/health')).json(), { status: 'ok' });
  // the access log: a line per request with its status
  assert.ok(logLines.some((l) => /^POST \/v1\/chat\/completions 200 \d+ ms$/.test(l)), logLines.join('\n'));
});

test('log-probabilities: generated and echoed prompt tokens equal log-softmax of a teacher-forced forward pass; chat shape; streamed per token', async () => {
  const g = loadExpected('qwen2-gqa-f32').meta.gravity_greedy;
  const r = await post(fx, '/v1/completions', { prompt: g.prompt, max_tokens: 6, temperature: 0, logprobs: 3, echo: true });
  assert.equal(r.status, 200, r.text);
  const lp = r.json.choices[0].logprobs;
  const all = [...g.prompt, ...g.tokens.slice(0, 6)];
  assert.deepEqual(lp.tokens, all.map(String)); // no tokenizer: token ids as text
  assert.equal(lp.token_logprobs[0], null);
  // the reference: one forward pass over prompt + answer, log-softmax in float64
  const V = fixture.config.vocabSize;
  const logits = await fixture.forward(fixture.newSession(1, all.length), [all], { logits: 'all' });
  for (let t = 1; t < all.length; t++) {
    const row = logits.subarray((t - 1) * V, t * V);
    let mx = -Infinity;
    for (const v of row) mx = Math.max(mx, v);
    let sum = 0;
    for (const v of row) sum += Math.exp(v - mx);
    const want = row[all[t]] - mx - Math.log(sum);
    assert.ok(Math.abs(lp.token_logprobs[t] - want) < 1e-4, `token ${t}: ${lp.token_logprobs[t]} vs ${want}`);
    // (a JSON object: numeric keys come back in numeric order, so sort by value)
    const top = (Object.entries(lp.top_logprobs[t]) as [string, number][]).sort((a, b) => b[1] - a[1]);
    assert.equal(top.length, 3);
    assert.ok(top[0][1] >= lp.token_logprobs[t] - 1e-12, 'the best alternative is at least as likely as the token');
    if (t >= g.prompt.length) assert.equal(top[0][0], String(all[t]), `greedy token ${t} is the most likely`);
  }
  // scoring a prompt alone: echo with max_tokens 0
  const score = await post(fx, '/v1/completions', { prompt: g.prompt, max_tokens: 0, echo: true, logprobs: 0 });
  assert.equal(score.status, 200, score.text);
  assert.deepEqual(score.json.choices[0].logprobs.token_logprobs.slice(1), lp.token_logprobs.slice(1, g.prompt.length));
  // chat: the content's tokens with their log-probabilities and alternatives, bytes included
  const chat = await post(mn, '/v1/chat/completions', { messages: [{ role: 'user', content: 'What is 4 + 5?' }], temperature: 0, max_tokens: 8, logprobs: true, top_logprobs: 2 });
  assert.equal(chat.status, 200, chat.text);
  const content = chat.json.choices[0].logprobs.content;
  assert.equal(content.length, chat.json.usage.completion_tokens);
  for (const c of content) {
    assert.equal(c.top_logprobs.length, 2);
    assert.equal(c.top_logprobs[0].token, c.token); // greedy
    assert.ok(c.logprob <= 0 && Math.abs(c.top_logprobs[0].logprob - c.logprob) < 1e-12);
    assert.deepEqual(c.bytes, Array.from(new TextEncoder().encode(c.token)));
  }
  // streamed: each token's chunk carries its log-probability
  const st = await post(fx, '/v1/completions', { prompt: g.prompt, max_tokens: 6, temperature: 0, logprobs: 1, stream: true });
  const got = events(st.text).flatMap((e) => e.choices[0]?.logprobs?.token_logprobs ?? []);
  assert.equal(got.length, 6);
  for (let i = 0; i < 6; i++) assert.ok(Math.abs(got[i] - lp.token_logprobs[g.prompt.length + i]) < 1e-9);
});

test('bad requests: OpenAI errors naming the field, 4xx statuses, and the server keeps serving', async () => {
  const cases: [string, ApiServer, unknown, number, RegExp, string | null][] = [
    ['/v1/completions', fx, '{not json', 400, /not valid JSON/, null],
    ['/v1/completions', fx, [1, 2], 400, /must be a JSON object/, null],
    ['/v1/completions', fx, {}, 400, /'prompt' is required/, 'prompt'],
    ['/v1/completions', fx, { prompt: 'text' }, 400, /no tokenizer\.json/, 'prompt'],
    ['/v1/completions', fx, { prompt: [[1, 2], [3]] }, 400, /2 prompts/, 'prompt'],
    ['/v1/completions', fx, { prompt: [1, 2], model: 'gpt-4' }, 404, /'gpt-4' does not exist/, 'model'],
    ['/v1/completions', fx, { prompt: [1, 2], temperature: -1 }, 400, /temperature must be >= 0/, null],
    ['/v1/completions', fx, { prompt: [1, 2], top_p: 0 }, 400, /top-p must be in/, null],
    ['/v1/completions', fx, { prompt: [1, 2], max_tokens: 0 }, 400, /at least 1/, 'max_tokens'],
    ['/v1/completions', fx, { prompt: [1, 2], max_tokens: 'many' }, 400, /must be a number/, 'max_tokens'],
    ['/v1/completions', fx, { prompt: [1, 2], n: 3 }, 400, /'n' must be 1/, 'n'],
    ['/v1/completions', fx, { prompt: [1, 2], logprobs: 21 }, 400, /log-probabilities for 0 to 20 alternatives, got 21/, 'logprobs'],
    ['/v1/completions', fx, { prompt: [1, 2], suffix: 'x' }, 400, /'suffix' is not supported/, 'suffix'],
    ['/v1/chat/completions', mn, { messages: [{ role: 'user', content: 'hi' }], top_logprobs: 2 }, 400, /'top_logprobs' needs 'logprobs': true/, 'top_logprobs'],
    ['/v1/completions', fx, { prompt: [1, 2], presence_penalty: 0.5 }, 400, /repetition_penalty/, 'presence_penalty'],
    ['/v1/completions', fx, { prompt: [1, 2], stream: 'yes' }, 400, /true or false/, 'stream'],
    ['/v1/completions', fx, { prompt: [1, 1e9] }, 400, /out of the vocabulary/, null],
    ['/v1/completions', fx, { prompt: [1, 2.5] }, 400, /not an integer/, null],
    ['/v1/completions', fx, { prompt: Array(fixture.config.maxPositionEmbeddings).fill(1) }, 400, /context is/, 'prompt'],
    ['/v1/completions', fx, { prompt: Array(40000).fill(1) }, 413, /over 65536 bytes/, null],
    ['/v1/completions', fx, { prompt: [1, 1e9], stream: true }, 400, /out of the vocabulary/, null],
    ['/v1/chat/completions', fx, { messages: [{ role: 'user', content: 'hi' }] }, 400, /no chat template/, 'messages'],
    ['/v1/chat/completions', mn, { messages: [] }, 400, /non-empty array/, 'messages'],
    ['/v1/chat/completions', mn, { messages: [{ role: 'robot', content: 'hi' }] }, 400, /role must be/, 'messages[0].role'],
    ['/v1/chat/completions', mn, { messages: [{ role: 'user', content: 5 }] }, 400, /content must be/, 'messages[0].content'],
    ['/v1/chat/completions', mn, { messages: [{ role: 'user', content: 'hi' }], stop: [1] }, 400, /'stop' must be/, 'stop'],
  ];
  for (const [path, s, body, status, message, param] of cases) {
    const r = await post(s, path, body);
    const what = `${path} ${JSON.stringify(body).slice(0, 80)}`;
    assert.equal(r.status, status, `${what}: ${r.text}`);
    assert.match(r.json.error.message, message, what);
    assert.equal(r.json.error.param, param, what);
    assert.equal(r.json.error.type, status === 404 ? 'not_found_error' : 'invalid_request_error', what);
  }
  const get = await fetch(fx.url + '/v1/completions');
  assert.equal(get.status, 405);
  const nope = await fetch(fx.url + '/v2/whatever', { method: 'POST' });
  assert.equal(nope.status, 404);
  assert.match((await nope.json()).error.message, /no route POST \/v2\/whatever/);
  const ok = await post(fx, '/v1/completions', { prompt: [1, 2, 3], max_tokens: 2, temperature: 0 });
  assert.equal(ok.status, 200, ok.text);
});

test('concurrent requests (queued, one decoding at a time) each get their own answer; after a client hangs up mid-stream the next request is served', async () => {
  const g = loadExpected('qwen2-gqa-f32').meta;
  const bodies = [g.gravity_greedy.prompt, [5, 6, 7, 8], g.gravity_greedy.prompt].map((prompt) => ({ prompt, max_tokens: 16, temperature: 0 }));
  const alone = [];
  for (const b of bodies) alone.push((await post(fx, '/v1/completions', b)).json.choices[0].token_ids);
  const together = await Promise.all(bodies.map((b) => post(fx, '/v1/completions', b)));
  assert.deepEqual(together.map((r) => r.json.choices[0].token_ids), alone);
  // a stream the client abandons after its first event
  await new Promise<void>((resolve, reject) => {
    const req = http.request(fx.url + '/v1/completions', { method: 'POST', headers: { 'content-type': 'application/json' } }, (res) => {
      res.once('data', () => {
        req.destroy();
        resolve();
      });
    });
    req.on('error', (e) => ((e as NodeJS.ErrnoException).code === 'ECONNRESET' ? resolve() : reject(e)));
    req.end(JSON.stringify({ prompt: [1, 2, 3], max_tokens: 400, temperature: 0, stream: true }));
  });
  const next = await post(fx, '/v1/completions', bodies[0]);
  assert.deepEqual(next.json.choices[0].token_ids, alone[0]);
});
