// Spawns the real CLI (`node --import tsx src/cli/main.ts`); each spawn costs a fraction of a second, so few.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { copyFileSync, cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openSafetensors } from '../src/io/safetensors.js';
import { TextTokenizer } from '../src/tokenizer/tokenizer.js';

const FIX = 'test/fixtures/qwen2-gqa-f32';
const expected = JSON.parse(readFileSync(`${FIX}/expected.json`, 'utf8'));
const tmp = mkdtempSync(join(tmpdir(), 'gravity-cli-'));
process.on('exit', () => rmSync(tmp, { recursive: true, force: true }));

function gravity(args: string[], input?: string) {
  const r = spawnSync(process.execPath, ['--import', 'tsx', 'src/cli/main.ts', ...args], {
    encoding: 'utf8',
    input,
    env: { ...process.env, GRAVITY_DEBUG: '' },
  });
  return { code: r.status, out: r.stdout, err: r.stderr };
}

test('main and command --help; unknown command and flags print the error and usage', () => {
  const main = gravity(['--help']);
  assert.equal(main.code, 0);
  for (const c of ['generate', 'chat', 'forward', 'inspect', 'init-random']) assert.match(main.out, new RegExp(`\\n  ${c} `));
  const help = gravity(['generate', '--help']);
  assert.equal(help.code, 0);
  assert.match(help.out, /^usage: gravity generate/);
  assert.match(help.out, /--repetition-penalty/);
  const bad = gravity(['generate', '--bogus', '1']);
  assert.equal(bad.code, 1);
  assert.match(bad.err, /^gravity: unknown option '--bogus'\n\nusage: gravity generate/);
  assert.doesNotMatch(bad.err, /at .*\.ts:\d+/); // no stack trace
});

test('generate: greedy --json reproduces the PyTorch greedy tokens (gravity and dot)', () => {
  for (const attn of ['gravity', 'dot']) {
    const g = expected[`${attn}_greedy`];
    const r = gravity(['generate', '--model', FIX, '--prompt-ids', g.prompt.join(','), '--max-tokens', '16',
      '--temperature', '0', '--attn', attn, '--json']);
    assert.equal(r.code, 0, r.err);
    const last = JSON.parse(r.out.trim().split('\n').at(-1)!);
    assert.deepEqual(last, { prompt_ids: g.prompt, output_ids: g.tokens });
  }
});

test('generate: sampling defaults from generation_config.json (do_sample false = greedy, max_new_tokens), flags win, bad values name the file', () => {
  const dir = join(tmp, 'gen-defaults');
  cpSync(FIX, dir, { recursive: true });
  const cfgFile = join(dir, 'generation_config.json');
  const base = JSON.parse(readFileSync(cfgFile, 'utf8'));
  const g = expected.gravity_greedy;
  const run = (extra: string[]) => gravity(['generate', '--model', dir, '--prompt-ids', g.prompt.join(','), '--json', ...extra]);
  // greedy from the file: no --temperature, no --max-tokens; the file's 16 tokens are PyTorch's greedy tokens
  writeFileSync(cfgFile, JSON.stringify({ ...base, do_sample: false, max_new_tokens: 16 }));
  const a = run([]);
  assert.equal(a.code, 0, a.err);
  assert.deepEqual(JSON.parse(a.out.trim()), { prompt_ids: g.prompt, output_ids: g.tokens });
  // a flag overrides the file
  const b = run(['--max-tokens', '4']);
  assert.equal(b.code, 0, b.err);
  assert.deepEqual(JSON.parse(b.out.trim()).output_ids, g.tokens.slice(0, 4));
  // a value the sampler cannot take: an error naming the file, unless the flag replaces it
  writeFileSync(cfgFile, JSON.stringify({ ...base, do_sample: true, temperature: 0.8, top_p: 1.5 }));
  const c = run(['--max-tokens', '2']);
  assert.equal(c.code, 1);
  assert.match(c.err, /generation_config\.json: top-p must be in \(0, 1\], got 1\.5 \(override it with the flag\)/);
  const d = run(['--max-tokens', '2', '--top-p', '0.9', '--seed', '1']);
  assert.equal(d.code, 0, d.err);
});

test('generate --stats: prompt and decode speed on stderr, "timings" in --json; tokens unchanged', () => {
  const g = expected.gravity_greedy;
  const args = ['generate', '--model', FIX, '--prompt-ids', g.prompt.join(','), '--max-tokens', '16', '--temperature', '0', '--stats'];
  const r = gravity([...args, '--json']);
  assert.equal(r.code, 0, r.err);
  const last = JSON.parse(r.out.trim().split('\n').at(-1)!);
  assert.deepEqual([last.prompt_ids, last.output_ids], [g.prompt, g.tokens]);
  assert.ok(last.timings.prefill_ms > 0 && last.timings.decode_ms > 0, JSON.stringify(last.timings));
  const re = new RegExp(`^prompt ${g.prompt.length} tok, first token after [\\d.]+ ms \\([\\d.]+ tok/s\\); 16 tok generated, 15 decode steps in [\\d.]+ ms \\([\\d.]+ tok/s\\), length\\n$`);
  assert.match(r.err, re);
  const plain = gravity(args);
  assert.equal(plain.code, 0, plain.err);
  assert.equal(plain.out.trim(), g.tokens.join(' '));
  assert.match(plain.err, re);
});

test('generate --device webgpu: the PyTorch greedy tokens; --int8-prefill runs there and is refused on the cpu', () => {
  const g = expected.gravity_greedy;
  const args = ['generate', '--model', FIX, '--prompt-ids', g.prompt.join(','), '--max-tokens', '16', '--temperature', '0', '--json'];
  const r = gravity([...args, '--device', 'webgpu']);
  assert.equal(r.code, 0, r.err);
  assert.deepEqual(JSON.parse(r.out.trim().split('\n').at(-1)!), { prompt_ids: g.prompt, output_ids: g.tokens });
  // int8 prefill is not exact: only its shape is checked here (test/webgpu-q8.test.ts checks the numbers)
  // a 20-token prompt, so that the prefill is a GEMM (more than 8 rows) and takes the int8 path
  const long = Array.from({ length: 20 }, (_, i) => (i * 37 + 11) % 256).join(',');
  const q = gravity(['generate', '--model', FIX, '--prompt-ids', long, '--max-tokens', '16', '--temperature', '0', '--json', '--device', 'webgpu', '--int8-prefill']);
  assert.equal(q.code, 0, q.err);
  assert.equal(JSON.parse(q.out.trim().split('\n').at(-1)!).output_ids.length, 16);
  const c = gravity([...args, '--int8-prefill']);
  assert.equal(c.code, 1);
  assert.match(c.err, /--int8-prefill is a WebGPU option/);
});

test('generate: an out-of-vocabulary id is a one-line error', () => {
  const r = gravity(['generate', '--model', FIX, '--prompt-ids', '999999', '--temperature', '0']);
  assert.equal(r.code, 1);
  assert.equal(r.err, 'gravity: token id 999999 at position 0 is out of the vocabulary (256)\n');
});

test('forward: logits and attention maps match the PyTorch expectations; bad ids files are named', () => {
  const ids = join(tmp, 'ids.json');
  const out = join(tmp, 'out.safetensors');
  writeFileSync(ids, JSON.stringify({ input_ids: expected.input_ids }));
  const r = gravity(['forward', '--model', FIX, '--input', ids, '--out', out, '--attention-maps']);
  assert.equal(r.code, 0, r.err);
  const got = openSafetensors(out);
  const want = openSafetensors(`${FIX}/expected.safetensors`);
  for (const [g, w] of [['logits', 'gravity.logits'], ['attention.0', 'gravity.attn0']]) {
    const a = got.read(g);
    const b = want.read(w);
    assert.equal(a.dtype, 'F32');
    assert.deepEqual(a.shape, b.shape);
    let maxErr = 0;
    for (let i = 0; i < a.data.length; i++) maxErr = Math.max(maxErr, Math.abs(Number(a.data[i]) - Number(b.data[i])));
    assert.ok(maxErr < 1e-4, `${g}: max abs error ${maxErr}`);
  }
  assert.deepEqual(got.read('attention.1').shape, [2, 4, 12, 12]);
  got.close();
  want.close();

  writeFileSync(ids, JSON.stringify({ input_ids: [[1, 2, 3], [4, 5, 300]], attention_mask: [[0, 1, 1], [1, 1, 1]] }));
  const bad = gravity(['forward', '--model', FIX, '--input', ids, '--out', out]);
  assert.equal(bad.code, 1);
  assert.equal(bad.err, 'gravity: ids.json: input_ids[1][2] = 300 is out of the vocabulary (256)\n');
  writeFileSync(ids, JSON.stringify({ input_ids: [[1, 2, 3], [4, 5]] }));
  const ragged = gravity(['forward', '--model', FIX, '--input', ids, '--out', out]);
  assert.match(ragged.err, /^gravity: ids\.json: input_ids\[1\] has 2 entries, input_ids\[0\] has 3/);
});

test('init-random + tokenizer: --prompt applies the chat template, chat answers piped lines, inspect', () => {
  const cfg = JSON.parse(readFileSync(`${FIX}/config.json`, 'utf8'));
  cfg.vocab_size = 339; // the tiny tokenizer's size
  cfg.eos_token_id = 338;
  writeFileSync(join(tmp, 'cfg.json'), JSON.stringify(cfg));
  const dir = join(tmp, 'm');
  const init = gravity(['init-random', '--config', join(tmp, 'cfg.json'), '--out', dir, '--seed', '5', '--dtype', 'f32']);
  assert.equal(init.code, 0, init.err);
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) copyFileSync(`test/fixtures/tokenizer-tiny/${f}`, join(dir, f));

  const gen = gravity(['generate', '--model', dir, '--prompt', 'Hello', '--max-tokens', '5', '--temperature', '0', '--json']);
  assert.equal(gen.code, 0, gen.err);
  const res = JSON.parse(gen.out.trim().split('\n').at(-1)!);
  const tok = TextTokenizer.fromDir('test/fixtures/tokenizer-tiny');
  const templ = tok.applyChatTemplate([{ role: 'user', content: 'Hello' }]);
  assert.deepEqual(res.prompt_ids, tok.encode(templ, { addSpecialTokens: false }));
  assert.ok(res.output_ids.length >= 1 && res.output_ids.length <= 5);
  assert.equal(res.text, tok.decode(res.output_ids, { skipSpecialTokens: true }));

  const chat = gravity(['chat', '--model', dir, '--max-tokens', '4', '--temperature', '0'], 'hi\n/reset\nagain\n/exit\nnot read\n');
  assert.equal(chat.code, 0, chat.err);
  assert.equal(chat.out.split('\n').length, 3); // two answers, each ended by a newline

  const ins = gravity(['inspect', '--model', dir, '--json']);
  assert.equal(ins.code, 0, ins.err);
  const info = JSON.parse(ins.out);
  assert.equal(info.config.vocabSize, 339);
  assert.equal(info.tokenizer.chatTemplate, true);
  assert.equal(info.masses.length, 2);
  assert.equal(info.masses[0].length, 4);
});
