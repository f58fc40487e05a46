/**
 * The browser build: the bundle has no Node module in it (esbuild, platform browser), the fetch-based loader
 * (src/web/load.ts) matches PyTorch on the fixtures (sharded weights, .pt masses, f32/bf16/f16) and fails clearly on
 * bad input, `gravity web` serves the page read-only, and the page itself runs the bundled model in Chromium on the
 * CPU and on WebGPU with the same tokens as the Node CLI (Debian's chromium: scripts/install-chromium.sh).
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadModelFrom, urlFiles, type FileGetter } from '../src/web/load.js';
import { createCpuBackend } from '../src/backend/cpu/index.js';
import { generate } from '../src/generate/generate.js';
import { loadModel } from '../src/model/load.js';
import { FIXTURES, INFERENCE_FIXTURES, argmax, loadExpected, relErr } from './helpers/fixtures.js';
import { GravityError } from '../src/errors.js';
import { exportFolder } from './helpers/gguf.js';

const be = createCpuBackend();
const MINI = 'models/gravity-mini';

/** a FileGetter over a folder (what urlFiles gives for a served folder), with files left out or replaced */
function folderFiles(dir: string, change: Record<string, Uint8Array | null> = {}): FileGetter {
  return async (name) => {
    if (name in change) return change[name];
    const p = path.join(dir, name);
    return fs.existsSync(p) ? new Uint8Array(fs.readFileSync(p)) : null;
  };
}

/** the browser bundle of the current sources (not whatever dist/ holds), built once for the tests below */
let bundle: Promise<string> | null = null;
function bundleOnce(): Promise<string> {
  bundle ??= (async () => {
    const { buildWeb } = await import('../scripts/build-web.mjs');
    const out = path.join(fs.mkdtempSync(path.join(os.tmpdir(), 'gravity-web-')), 'gravity.js');
    await buildWeb({ outfile: out });
    return out;
  })();
  return bundle;
}

test('the browser bundle builds with no Node module in it', async () => {
  const js = fs.readFileSync(await bundleOnce(), 'utf8');
  assert.ok(js.length > 100_000, 'the bundle holds the engine');
  assert.doesNotMatch(js, /from\s*["']node:/, 'no static import of a Node module');
  assert.match(js, /loadModelFrom/);
});

for (const name of INFERENCE_FIXTURES) {
  test(`${name}: the fetch-based loader matches PyTorch (logits, 16 greedy tokens) for gravity and dot`, async () => {
    const exp = loadExpected(name);
    for (const attn of ['gravity', 'dot'] as const) {
      const m = await loadModelFrom(folderFiles(path.join(FIXTURES, name)), { attention: attn, backend: be, label: name });
      const ids: number[][] = exp.meta.input_ids;
      const logits = await m.forward(m.newSession(ids.length, ids[0].length), ids, { logits: 'all' });
      const e = relErr(logits, exp.tensors.get(`${attn}.logits`)!.data);
      assert.ok(e <= 1e-4, `${attn}: logits rel err ${e.toExponential(2)}`);
      const g = exp.meta[`${attn}_greedy`];
      const s = m.newSession(1, 64);
      let l = await m.forward(s, [g.prompt]);
      const out: number[] = [];
      for (let i = 0; i < 16; i++) {
        out.push(argmax(l));
        l = await m.forward(s, [[out[i]]]);
      }
      assert.deepEqual(out, g.tokens, `${attn}: greedy tokens`);
    }
  });
}

test('the fetch-based loader gives the bundled model, its tokenizer and eos ids as the Node loader does', async () => {
  const web = await loadModelFrom(folderFiles(MINI), { backend: be });
  const node = await loadModel(MINI, { backend: be });
  assert.deepEqual(web.eosTokenIds, node.eosTokenIds);
  assert.equal(web.attention, node.attention);
  assert.equal(web.eps, node.eps);
  const tok = web.tokenizer!;
  const ids = tok.encode(tok.applyChatTemplate([{ role: 'user', content: 'What is 48 + 37?' }]), { addSpecialTokens: false });
  const opts = { temperature: 0, maxTokens: 64, tokenizer: tok };
  const a = await generate(web, ids, opts);
  const b = await generate(node, ids, opts);
  assert.deepEqual(a.outputIds, b.outputIds);
  assert.match(a.text!, /85/);
  // .pt masses when no .safetensors masses are served (the card's gravity_mass_log.pt)
  const pt = await loadModelFrom(folderFiles(MINI, { 'gravity_mass_log.safetensors': null }), { backend: be });
  assert.deepEqual(pt.massLog, web.massLog);
});

test('the fetch-based loader names the problem: missing config, corrupt or truncated weights, no masses, bad masses, HTTP errors', async () => {
  const dir = path.join(FIXTURES, 'qwen2-gqa-f32');
  const weights = new Uint8Array(fs.readFileSync(path.join(dir, 'model.safetensors')));
  const cases: [string, FileGetter, RegExp, object?][] = [
    ['no config.json', folderFiles(dir, { 'config.json': null }), /no config\.json/],
    ['config not JSON', folderFiles(dir, { 'config.json': new TextEncoder().encode('{oops') }), /config\.json: not valid JSON/],
    ['no weights', folderFiles(dir, { 'model.safetensors': null }), /no model\.safetensors or model\.safetensors\.index\.json/],
    ['truncated weights', folderFiles(dir, { 'model.safetensors': weights.subarray(0, weights.length - 100) }), /model\.safetensors: tensor ".*" data .* overruns the file/],
    ['garbage weights', folderFiles(dir, { 'model.safetensors': new Uint8Array(64).fill(255) }), /model\.safetensors: header length .* overruns the file/],
    ['no masses', folderFiles(dir, { 'gravity_mass_log.pt': null }), /no gravity_mass_log\.pt or gravity_mass_log\.safetensors/],
    ['corrupt .pt masses', folderFiles(dir, { 'gravity_mass_log.pt': new Uint8Array(100) }), /gravity_mass_log\.pt: not a torch\.save zip file/],
    ['missing shard', folderFiles(path.join(FIXTURES, 'qwen2-mha-tied-bf16'), { 'model-00002-of-00003.safetensors': null }), /shard file model-00002-of-00003\.safetensors .* is missing/],
  ];
  for (const [what, get, re] of cases) {
    await assert.rejects(loadModelFrom(get, { backend: be }), (e: Error) => e instanceof GravityError && re.test(e.message), what);
  }
  // no masses is fine for dot attention, and massInit runs gravity with untrained masses
  await loadModelFrom(folderFiles(dir, { 'gravity_mass_log.pt': null }), { backend: be, attention: 'dot' });
  const mi = await loadModelFrom(folderFiles(dir, { 'gravity_mass_log.pt': null }), { backend: be, massInit: 'raw:0.5' });
  assert.equal(mi.massLog[0][0], 0.5);
  // HTTP: 404 is an absent file, anything else an error naming the URL
  const fake = (status: number) => (async () => new Response('x', { status })) as typeof fetch;
  assert.equal(await urlFiles('http://h/m', fake(404))('config.json'), null);
  await assert.rejects(urlFiles('http://h/m/', fake(500))('config.json'), /http:\/\/h\/m\/config\.json: HTTP 500/);
  // ranged reads: a server that answers the probe with 206 but a range with 200, or with too few bytes
  const ranged = (status: number, body: number) => (async (_u: string | URL | Request, init?: RequestInit) => {
    const range = new Headers(init?.headers).get('range');
    if (range === 'bytes=0-0') return new Response(new Uint8Array(1), { status: 206, headers: { 'content-range': 'bytes 0-0/100' } });
    return new Response(new Uint8Array(body), { status });
  }) as typeof fetch;
  const f200 = (await urlFiles('http://h/m', ranged(200, 8)).open!('model.safetensors'))!;
  assert.equal(f200.size, 100);
  await assert.rejects(f200.read(0, 8), /http:\/\/h\/m\/model\.safetensors: bytes 0-7: HTTP 200 .*\(expected 206 Partial Content\)/);
  const fShort = (await urlFiles('http://h/m', ranged(206, 5)).open!('model.safetensors'))!;
  await assert.rejects(fShort.read(0, 8), /http:\/\/h\/m\/model\.safetensors: bytes 0-7: got 5 bytes/);
  const down = (async () => { throw new TypeError('fetch failed'); }) as typeof fetch;
  await assert.rejects(urlFiles('http://h/m', down)('config.json'), /http:\/\/h\/m\/config\.json: cannot fetch \(fetch failed\)/);
});

let server: { url: string; close(): Promise<void> } | null = null;
before(async () => {
  const { startWebServer } = await import('../src/cli/web.js');
  server = await startWebServer({ modelDir: MINI, port: 0, bundle: await bundleOnce() });
});
after(async () => server?.close());

test('gravity web serves the page, the bundle and the model folder, read-only', async () => {
  const url = server!.url;
  const get = (p: string, init?: RequestInit) => fetch(url + p, init);
  assert.match(await (await get('')).text(), /<title>gravity-lm/);
  assert.match(await (await get('app.js')).text(), /loadModelFrom/);
  assert.equal((await get('gravity.js')).headers.get('content-type'), 'text/javascript; charset=utf-8');
  assert.deepEqual(await (await get('model/config.json')).json(), JSON.parse(fs.readFileSync(path.join(MINI, 'config.json'), 'utf8')));
  const st = await get('model/model.safetensors', { method: 'HEAD' });
  assert.equal(Number(st.headers.get('content-length')), fs.statSync(path.join(MINI, 'model.safetensors')).size);
  for (const p of ['model/../package.json', 'model/%2e%2e/package.json', 'model/.git', 'model/', 'model/nothing.json', 'src/cli/web.ts', '../package.json']) {
    assert.equal((await get(p)).status, 404, p);
  }
  assert.equal((await get('model/config.json', { method: 'POST', body: 'x' })).status, 405);
  assert.equal((await get('model/%E0%A4%A')).status, 400);
  const { run } = await import('../src/cli/web.js');
  await assert.rejects(run(['--port', 'abc']), /--port must be a whole number in \[0, 65535\], got 'abc'/);
  await assert.rejects(run(['--model', FIXTURES, '--port', '0']), /no config\.json \(not a model folder or a \.gguf file\)/);
  const { startWebServer } = await import('../src/cli/web.js');
  await assert.rejects(startWebServer({ modelDir: MINI, port: 0, bundle: '/nonexistent/gravity.js' }), /\/nonexistent\/gravity\.js is missing: run `npm run build` first/);
  const port = Number(new URL(url).port);
  await assert.rejects(startWebServer({ modelDir: MINI, port, bundle: await bundleOnce() }), new RegExp(`port ${port} is in use: pass --port N`));
});

test('gravity web answers byte ranges (the loader reads weights tensor by tensor)', async () => {
  const url = server!.url + 'model/model.safetensors';
  const whole = fs.readFileSync(path.join(MINI, 'model.safetensors'));
  const part = async (range: string) => fetch(url, { headers: { Range: range } });
  const r = await part('bytes=0-7');
  assert.equal(r.status, 206);
  assert.equal(r.headers.get('content-range'), `bytes 0-7/${whole.length}`);
  assert.deepEqual(new Uint8Array(await r.arrayBuffer()), new Uint8Array(whole.subarray(0, 8)));
  assert.deepEqual(new Uint8Array(await (await part('bytes=-4')).arrayBuffer()), new Uint8Array(whole.subarray(whole.length - 4)));
  assert.equal((await (await part(`bytes=${whole.length - 3}-`)).arrayBuffer()).byteLength, 3);
  for (const bad of ['bytes=5-2', `bytes=${whole.length}-`, 'bytes=x-1', 'items=0-1']) assert.equal((await part(bad)).status, 416, bad);
});

test('over HTTP the loader fetches weights by ranges (sharded fixture vs PyTorch), and whole files where a server has no ranges', async () => {
  const { startWebServer } = await import('../src/cli/web.js');
  const name = 'qwen2-mha-tied-bf16';
  const s = await startWebServer({ modelDir: path.join(FIXTURES, name), port: 0 });
  try {
    const exp = loadExpected(name);
    const ids: number[][] = exp.meta.input_ids;
    for (const ranges of [true, false]) {
      const seen: { file: string; range: string | null; bytes: number }[] = [];
      const spy = (async (u: string | URL | Request, init?: RequestInit) => {
        const h = new Headers(init?.headers);
        const range = ranges ? h.get('range') : null;
        const res = await fetch(u, range ? { headers: { Range: range } } : undefined);
        const body = new Uint8Array(await res.arrayBuffer());
        seen.push({ file: String(u).split('/').pop()!, range, bytes: body.length });
        return new Response(res.status === 404 ? null : body, { status: res.status, headers: res.headers });
      }) as typeof fetch;
      const m = await loadModelFrom(urlFiles(s.url + 'model/', spy), { backend: be, label: name });
      const logits = await m.forward(m.newSession(ids.length, ids[0].length), ids, { logits: 'all' });
      const e = relErr(logits, exp.tensors.get('gravity.logits')!.data);
      assert.ok(e <= 1e-4, `ranges ${ranges}: logits rel err ${e.toExponential(2)}`);
      const shardReads = seen.filter((x) => /^model-.*\.safetensors$/.test(x.file));
      const shardSize = fs.statSync(path.join(FIXTURES, name, 'model-00001-of-00003.safetensors')).size;
      if (ranges) {
        assert.ok(shardReads.length > 10 && shardReads.every((x) => x.range !== null), 'every weights read is a range');
        assert.ok(shardReads.every((x) => x.bytes < shardSize), 'no read of a whole shard');
      } else {
        assert.ok(shardReads.some((x) => x.file === 'model-00001-of-00003.safetensors' && x.bytes === shardSize), 'whole shards without ranges');
      }
    }
  } finally {
    await s.close();
  }
});

test('a GGUF file over HTTP (gravity web --model x.gguf): the fetch loader reads it by ranges and gives the folder\'s logits and tokenizer; a server without ranges is refused', async () => {
  const { startWebServer } = await import('../src/cli/web.js');
  const { loadGgufFrom } = await import('../src/web/load.js');
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'gravity-web-gguf-'));
  const file = path.join(dir, 'mini.gguf');
  exportFolder(MINI, file, 'q8_0');
  const s = await startWebServer({ modelDir: file, port: 0 });
  try {
    assert.match(s.url, /\?model=model\/mini\.gguf$/);
    const base = s.url.replace(/\?.*$/, '');
    const ranges: string[] = [];
    const spy = (async (u: string | URL | Request, init?: RequestInit) => {
      ranges.push(new Headers(init?.headers).get('range') ?? 'whole');
      return fetch(u, init);
    }) as typeof fetch;
    const web = await loadGgufFrom(base + 'model/mini.gguf', { backend: be, fetch: spy });
    const node = await loadModel(file, { backend: be });
    const ids = web.tokenizer!.encode('What is 48 + 37?');
    assert.deepEqual(ids, (await import('../src/cli/model-args.js')).tokenizerOf(node)!.encode('What is 48 + 37?'));
    const a = await web.forward(web.newSession(1, ids.length), [ids], { logits: 'all' });
    const b = await node.forward(node.newSession(1, ids.length), [ids], { logits: 'all' });
    assert.deepEqual(Array.from(a), Array.from(b));
    assert.ok(!ranges.includes('whole') && ranges.length > 20, `every read a range (${ranges.length} reads)`);
    await assert.rejects(loadGgufFrom(base + 'model/other.gguf', { backend: be }), /other\.gguf: not found, or the server does not answer Range requests/);
    const noRanges = (async (u: string | URL | Request) => fetch(u)) as typeof fetch;
    await assert.rejects(loadGgufFrom(base + 'model/mini.gguf', { backend: be, fetch: noRanges }), /does not answer Range requests/);
  } finally {
    await s.close();
    fs.rmSync(dir, { recursive: true, force: true });
  }
});

test('the page runs the bundled model in Chromium, on the CPU and on WebGPU, with the Node CLI\'s tokens (greedy and top-k sampled); without WebGPU, auto falls back to the CPU', async () => {
  const exe = process.env.GRAVITY_CHROMIUM ?? '/usr/bin/chromium';
  assert.ok(fs.existsSync(exe), `${exe} not found: install Chromium with scripts/install-chromium.sh (or set GRAVITY_CHROMIUM)`);
  const { chromium } = await import('playwright-core');
  // WebGPU on SwiftShader's Vulkan, which Chromium ships: the same page as on a GPU, without one
  const browser = await chromium.launch({
    executablePath: exe,
    args: ['--no-sandbox', '--enable-unsafe-webgpu', '--enable-features=Vulkan', '--use-vulkan=swiftshader', '--use-webgpu-adapter=swiftshader'],
  });
  try {
    const page = await browser.newPage();
    const errors: string[] = [];
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(server!.url);
    // what `gravity generate --prompt ... --temperature 0` does with the chat template
    const node = await loadModel(MINI, { backend: be });
    const { TextTokenizer } = await import('../src/tokenizer/tokenizer.js');
    const { chatEosIds } = await import('../src/cli/model-args.js');
    const t = TextTokenizer.fromDir(MINI);
    const ids = t.encode(t.applyChatTemplate([{ role: 'user', content: 'What is 48 + 37?' }]), { addSpecialTokens: false });
    const want = await generate(node, ids, { temperature: 0, maxTokens: 24, tokenizer: t, eosTokenIds: chatEosIds(node, t) });
    for (const device of ['cpu', 'webgpu']) {
      const loaded = await page.evaluate((d) => (window as any).gravity.load({ device: d }), device);
      assert.equal(loaded.device, device);
      const got = await page.evaluate(() => (window as any).gravity.run({ prompt: 'What is 48 + 37?', chat: true, temperature: 0, maxTokens: 24 }));
      assert.deepEqual(got.promptIds, ids, `${device}: prompt ids`);
      assert.deepEqual(got.outputIds, want.outputIds, `${device}: generated ids`);
      assert.equal(got.text, want.text);
      // sampling with top-k + top-p (on WebGPU drawn on the device) gives the CPU's tokens for the seed
      const opts = { temperature: 0.9, topK: 20, topP: 0.9, seed: 11, maxTokens: 24 };
      const ws = await generate(node, ids, { ...opts, tokenizer: t, eosTokenIds: chatEosIds(node, t) });
      const gs = await page.evaluate((o) => (window as any).gravity.run({ prompt: 'What is 48 + 37?', chat: true, ...o }), opts);
      assert.deepEqual(gs.outputIds, ws.outputIds, `${device}: sampled ids`);
    }
    // the same model as one GGUF file, served by `gravity web --model mini.gguf` (the page takes ?model=)
    const { startWebServer } = await import('../src/cli/web.js');
    const gdir = fs.mkdtempSync(path.join(os.tmpdir(), 'gravity-page-gguf-'));
    const gfile = path.join(gdir, 'mini.gguf');
    exportFolder(MINI, gfile);
    const gs = await startWebServer({ modelDir: gfile, port: 0, bundle: await bundleOnce() });
    try {
      await page.goto(gs.url);
      assert.equal((await page.evaluate(() => (window as any).gravity.load({ device: 'cpu' }))).device, 'cpu');
      const got = await page.evaluate(() => (window as any).gravity.run({ prompt: 'What is 48 + 37?', chat: true, temperature: 0, maxTokens: 24 }));
      assert.deepEqual(got.outputIds, want.outputIds, 'GGUF in the page: generated ids');
    } finally {
      await gs.close();
      fs.rmSync(gdir, { recursive: true, force: true });
    }
    assert.deepEqual(errors, []);
  } finally {
    await browser.close();
  }
  // a browser without WebGPU: device 'webgpu' says so, 'auto' runs on the CPU
  const plain = await chromium.launch({ executablePath: exe, args: ['--no-sandbox'] });
  try {
    const page = await plain.newPage();
    await page.goto(server!.url);
    await assert.rejects(page.evaluate(() => (window as any).gravity.load({ device: 'webgpu' })), /this browser offers no WebGPU adapter \(not supported or turned off\): use device 'cpu'/);
    assert.equal((await page.evaluate(() => (window as any).gravity.load({ device: 'auto' }))).device, 'cpu');
  } finally {
    await plain.close();
  }
});
