/**
 * GPU benchmark (run on the GPU machine, after reference/bench_torch.py wrote the checkpoint and its timings):
 *   node dist/bench/gpu.js --dir /tmp/q3b --torch torch.json [--prefill 512,2048,8192] [--attn-lens 1024,4096,16384]
 * Prints our WebGPU numbers next to PyTorch's (same checkpoint, same card) and the ratios, as a markdown table.
 * Decode: greedy (greedyStream), sampled at temperature 0.7 (sampleStream; also with top-k 40 + top-p 0.9, and with a
 * repetition penalty of 1.1 on top) and the step loop with a logits readback per
 * token; it also logs, per run, the wall time per token next to the host's recording time inside the stream;
 * --profile-passes adds the GPU's busy time per token (pass timestamps), --lookahead N the greedyStream depth (3).
 *   node dist/bench/gpu.js --gemv [--dir /tmp/q3b]
 * times each decode GEMV shape (GPU time per call over 50 dependent calls in the stream: GB/s of weight bytes) and the
 * decode attention (gravity with the fixed max, gravity with the running max, dot), then exits. Shapes from --dir's config.json, else Qwen2.5-3B.
 */
import * as fs from 'node:fs';
import { parseArgs } from 'node:util';
import { loadModel } from '../src/model/load.js';
import { createWebGPUBackend, type WebGPUBackend } from '../src/backend/webgpu/index.js';
import { attentionParams } from '../src/attention/registry.js';
import type { AttentionKind } from '../src/backend/backend.js';
import type { StreamPenalty, StreamSampling } from '../src/model/types.js';
import { loadCheckpointFiles } from '../src/io/checkpoint.js';
import { DTYPE_BYTES, numel } from '../src/tensor/dtype.js';

const { values } = parseArgs({
  options: {
    dir: { type: 'string' },
    torch: { type: 'string' },
    prefill: { type: 'string', default: '512,2048,8192' },
    'attn-lens': { type: 'string', default: '1024,4096,16384' },
    decode: { type: 'string', default: '64' },
    /** prompt length before the timed decode */
    context: { type: 'string', default: '512' },
    skip: { type: 'string', default: '' },
    profile: { type: 'boolean', default: false },
    'profile-passes': { type: 'boolean', default: false },
    lookahead: { type: 'string', default: '3' },
    gemv: { type: 'boolean', default: false },
  },
});
const torch = values.torch && fs.existsSync(values.torch) ? JSON.parse(fs.readFileSync(values.torch, 'utf8')) : null;
const skip = new Set(values.skip!.split(','));
// --profile-passes: timestamps around each compute pass, so the decode prints the GPU's busy time per token next to
// the wall time per token (if they are close the GPU is the limit, else the host's recording)
// --gemv: the same pass timestamps around 50 back-to-back calls of one kernel, so each figure is its cost inside the
// command stream (dependent dispatches, as decode runs them), not alone in a pass of its own
const be = (await createWebGPUBackend({ profile: values['profile-passes'] || values.gemv ? 'pass' : values.profile })) as WebGPUBackend;
/** per-kernel GPU time of what ran since the last call (only with --profile: timestamps slow every dispatch) */
async function profile(what: string): Promise<void> {
  const rep = await be.profileReport();
  if (!rep) return;
  const total = rep.reduce((a, k) => a + k.ms, 0);
  log(`-- kernel time, ${what}: ${total.toFixed(2)} ms GPU in total`);
  for (const k of rep.slice(0, 16)) log(`   ${k.kernel.padEnd(56)} ${String(k.calls).padStart(6)} calls ${k.ms.toFixed(3).padStart(10)} ms ${((1000 * k.ms) / k.calls).toFixed(1).padStart(8)} µs/call`);
}
const device = be.ctx.device;
const rows: string[][] = [];
const log = (...a: unknown[]) => console.error(...a);

/** read+write bandwidth of a plain vec4 copy kernel: the roofline's denominator */
async function copyBandwidth(): Promise<number> {
  const unit = 16 * 256 * 4096; // one vec4 per thread, 256 threads a group, 4096 groups a row of the grid
  const bytes = Math.max(unit, Math.floor(Math.min(1 << 30, be.ctx.maxBinding, be.ctx.maxBuffer) / unit) * unit);
  const mk = () => device.createBuffer({ size: bytes, usage: 0x80 /* STORAGE */ });
  const a = mk();
  const b = mk();
  const mod = device.createShaderModule({
    code: `@group(0) @binding(0) var<storage, read> src: array<vec4<f32>>;
@group(0) @binding(1) var<storage, read_write> dst: array<vec4<f32>>;
@compute @workgroup_size(256) fn main(@builtin(global_invocation_id) g: vec3<u32>, @builtin(num_workgroups) n: vec3<u32>) {
  let i = g.x + g.y * n.x * 256u;
  if (i < arrayLength(&src)) { dst[i] = src[i]; }
}`,
  });
  const pipe = device.createComputePipeline({ layout: 'auto', compute: { module: mod, entryPoint: 'main' } });
  const bg = device.createBindGroup({ layout: pipe.getBindGroupLayout(0), entries: [{ binding: 0, resource: { buffer: a } }, { binding: 1, resource: { buffer: b } }] });
  const groups = bytes / 16 / 256;
  const run = async (reps: number) => {
    const enc = device.createCommandEncoder();
    for (let r = 0; r < reps; r++) {
      const p = enc.beginComputePass();
      p.setPipeline(pipe);
      p.setBindGroup(0, bg);
      p.dispatchWorkgroups(4096, groups / 4096);
      p.end();
    }
    device.queue.submit([enc.finish()]);
    await device.queue.onSubmittedWorkDone();
  };
  await run(2);
  const t = performance.now();
  await run(20);
  const s = (performance.now() - t) / 1000;
  a.destroy();
  b.destroy();
  return (2 * bytes * 20) / s;
}

const bw = await copyBandwidth();
log(`copy bandwidth ${(bw / 1e12).toFixed(2)} TB/s`);
if (values.gemv) {
  await gemvBench();
  process.exit(0);
}

/** the decode's weight-read kernels one shape at a time, bf16 weights, N = 1; GPU time per call from pass timestamps */
async function gemvBench(): Promise<void> {
  const cfgPath = values.dir ? `${values.dir}/config.json` : '';
  const hf = cfgPath && fs.existsSync(cfgPath) ? JSON.parse(fs.readFileSync(cfgPath, 'utf8')) : {};
  const C: number = hf.hidden_size ?? 2048, Hq: number = hf.num_attention_heads ?? 16, Hkv: number = hf.num_key_value_heads ?? 2;
  const D = C / Hq, I: number = hf.intermediate_size ?? 11008, V: number = hf.vocab_size ?? 151936;
  log(`subgroup lanes for the GEMV reductions: ${be.ctx.sg || 'none (workgroup memory)'}; features: ${be.features.includes('subgroups') ? 'subgroups' : 'no subgroups'}`);
  const W = (o: number, i: number, seed: number) => {
    // bf16 bits straight from an integer hash (the lm_head alone is 311M values: no f32 copy)
    const n = o * i;
    const bits = new Uint16Array(n);
    let h = (seed * 2654435761) >>> 0;
    for (let j = 0; j < n; j++) {
      h = (Math.imul(h ^ (h >>> 15), 2246822519) + 1) >>> 0;
      bits[j] = 0x3c00 + (h & 0x7f) + ((h >>> 7) & 1) * 0x8000; // ±[0.0078, 0.0155)
    }
    return be.upload({ dtype: 'BF16', shape: [o, i], data: bits });
  };
  const act = (n: number) => be.fromF32(new Float32Array(n).map((_, i) => Math.cos(i) * 0.5), [1, n]);
  const reps = 50;
  const out: string[] = [];
  const timeIt = async (label: string, bytes: number, f: () => void) => {
    f();
    await be.sync();
    await be.profileReport(); // drop the warm-up
    const t = performance.now();
    for (let r = 0; r < reps; r++) f();
    await be.sync();
    const wall = (performance.now() - t) / reps;
    const rep = (await be.profileReport()) ?? [];
    const gpu = rep.reduce((a, k) => a + k.ms, 0) / reps;
    const line = `${label.padEnd(60)} ${(gpu * 1000).toFixed(1).padStart(8)} µs GPU ${bytes ? `${(bytes / gpu / 1e6).toFixed(0).padStart(6)} GB/s (${((100 * bytes) / gpu / 1e3 / bw).toFixed(0)}% of copy)` : ''}  wall ${(wall * 1000).toFixed(1)} µs/call  [${rep.map((k) => k.kernel).join(', ')}]`;
    out.push(line);
    log(line);
  };
  const x = act(C);
  const wq = W(Hq * D, C, 1), wk = W(Hkv * D, C, 2), wv = W(Hkv * D, C, 3), wo = W(C, Hq * D, 4);
  const wg = W(I, C, 5), wu = W(I, C, 6), wd = W(C, I, 7), wl = W(V, C, 8);
  const cache = be.createKVCache(1, 1, 4200, Hkv, D);
  cache.keyValid.fill(1);
  const pos = Int32Array.of(512);
  const drop = (t: any) => be.dispose(t);
  await timeIt(`q/k/v+rope [${(Hq + 2 * Hkv) * D}x${C}]`, (Hq + 2 * Hkv) * D * C * 2, () => drop(be.fused!.qkvRope(x, { q: wq, k: wk, v: wv, qb: null, kb: null, vb: null }, pos, 1e6, Hq, cache, 0, 512, 1)));
  const nw = W(1, C, 9);
  await timeIt(`q/k/v+rope with rmsnorm [${(Hq + 2 * Hkv) * D}x${C}]`, (Hq + 2 * Hkv) * D * C * 2, () => drop(be.fused!.qkvRope(x, { q: wq, k: wk, v: wv, qb: null, kb: null, vb: null }, pos, 1e6, Hq, cache, 0, 512, 1, { w: nw, eps: 1e-6 })));
  const a = act(Hq * D);
  await timeIt(`o [${C}x${Hq * D}]`, C * Hq * D * 2, () => drop(be.linear(a, wo, null)));
  await timeIt(`gate/up+swiglu [2x${I}x${C}]`, 2 * I * C * 2, () => drop(be.fused!.gateUp(x, wg, null, wu, null)));
  await timeIt(`gate/up+swiglu with rmsnorm [2x${I}x${C}]`, 2 * I * C * 2, () => drop(be.fused!.gateUp(x, wg, null, wu, null, { w: nw, eps: 1e-6 })));
  await timeIt(`o + residual [${C}x${Hq * D}]`, C * Hq * D * 2, () => drop(be.fused!.linearAdd(a, wo, null, x)));
  const m = act(I);
  await timeIt(`down [${C}x${I}]`, C * I * 2, () => drop(be.linear(m, wd, null)));
  await timeIt(`lm_head [${V}x${C}]`, V * C * 2, () => drop(be.linear(x, wl, null)));
  const logits = be.linear(x, wl, null);
  await timeIt(`argmax [${V}] (incl. 4-byte readback)`, V * 4, () => void be.argmaxRows!(logits));
  // decode attention, one layer: keys already in the cache (values do not matter for the time)
  const kk = be.fromF32(new Float32Array(4096 * Hkv * D).map((_, i) => Math.sin(i) * 0.3), [4096, Hkv * D]);
  be.writeKV(cache, 0, kk, kk, 0, 4096);
  const qd = be.fromF32(new Float32Array(Hq * D).map((_, i) => Math.cos(i) * 0.3), [1, Hq * D]);
  const acfg = { numHeads: Hq, numKVHeads: Hkv, headDim: D } as any;
  // both decode kernels: one dispatch with a workgroup per query head (attention-decode.ts), split-K + combine
  const tuning = { ...be.ctx.decodeTuning };
  for (const keys of [512, 1024, 2048, 4096]) {
    for (const [label, kind, massLog] of [['gravity fixed max', 'gravity', 0.5], ['gravity running max', 'gravity', 3], ['dot', 'dot', 0]] as const) {
      const p = attentionParams(kind, acfg, new Float32Array(Hq).fill(massLog), 0.1);
      for (const [how, limit, vsplit] of [['per head', 1 << 30, 1], ['per head, 2 value slices', 1 << 30, 2], ['per head, 4 value slices', 1 << 30, 4], ['split-K', 0, 1]] as const) {
        be.ctx.decodeTuning = { ...tuning, shortKeys: limit, vsplit };
        await timeIt(`attention ${keys} keys, ${label}, ${how}`, 0, () => drop(be.attention(qd, cache, 0, keys - 1, 1, p)));
      }
      // attention + o projection (+ residual): whole-head attention then the GEMV, or key-split partials merged by it
      if (keys > 1024) continue;
      for (const parts of [0, 2, 4]) {
        be.ctx.decodeTuning = { ...tuning, parts };
        await timeIt(`attention ${keys} keys + o, ${label}, ${parts ? `${parts} parts` : 'no parts'}`, 0, () => drop(be.fused.attentionOut(qd, cache, 0, keys - 1, 1, p, wo, null, x)));
      }
    }
  }
  be.ctx.decodeTuning = tuning;
  console.log(`\nGEMV / decode kernels alone (${be.adapterName}), copy kernel ${(bw / 1e12).toFixed(2)} TB/s, ${reps} calls each:`);
  for (const l of out) console.log(l);
}

// fused attention, one layer of the 3B shape: 16 q heads, 2 KV heads, head_dim 128, causal
if (!skip.has('attn')) {
  const Hq = 16, Hkv = 2, D = 128;
  const cfg = { numHeads: Hq, numKVHeads: Hkv, headDim: D } as any;
  const mass = new Float32Array(Hq).map((_, i) => -0.5 + (2.5 * i) / Hq);
  for (const n of values['attn-lens']!.split(',').map(Number)) {
    const rnd = (len: number, s: number) => { const x = new Float32Array(len); for (let i = 0; i < len; i++) x[i] = (Math.sin(i * 12.9898 + s) * 43758.5453 % 1) * s; return x; };
    const q = be.fromF32(rnd(n * Hq * D, 0.1), [n, Hq * D]);
    const k = be.fromF32(rnd(n * Hkv * D, 0.1), [n, Hkv * D]);
    const v = be.fromF32(rnd(n * Hkv * D, 1), [n, Hkv * D]);
    const cache = be.createKVCache(1, 1, n, Hkv, D);
    cache.keyValid.fill(1);
    be.writeKV(cache, 0, k, v, 0, n);
    cache.length = n;
    const res: Record<string, number> = {};
    // interleaved (g, d, d, g), best of two per kind: the first kernel timed in a run would otherwise also pay for
    // the GPU's clocks ramping up (gravity at 1k looked 2x dot that way)
    for (const kind of ['gravity', 'dot', 'dot', 'gravity'] as AttentionKind[]) {
      const p = attentionParams(kind, cfg, mass, 0.1);
      be.dispose(be.attention(q, cache, 0, 0, n, p));
      await be.sync();
      const reps = n >= 16384 ? 3 : 10;
      const t = performance.now();
      for (let r = 0; r < reps; r++) be.dispose(be.attention(q, cache, 0, 0, n, p));
      await be.sync();
      res[kind] = Math.min(res[kind] ?? Infinity, (performance.now() - t) / reps);
      await profile(`attention ${kind} ${n} x${reps + 1}`);
    }
    const pt = torch?.attn_ms?.[n] ?? null;
    rows.push([`attention fwd ${n} tok (ms)`, res.gravity.toFixed(3), res.dot.toFixed(3), pt === null ? 'n/a' : String(pt),
      pt === null ? '' : `${(pt / res.gravity).toFixed(2)}× PyTorch speed; gravity/dot time ${(res.gravity / res.dot).toFixed(2)}`]);
    log(rows[rows.length - 1].join(' | '));
    for (const t of [q, k, v]) be.dispose(t);
    (be as any).dispose(cache);
  }
}

if (values.dir) {
  const t0 = performance.now();
  const model = await loadModel(values.dir, { backend: be });
  log(`loaded in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  const files = loadCheckpointFiles(values.dir);
  let weightBytes = 0;
  for (const name of files.weights.names()) {
    const info = files.weights.info(name);
    if (name === 'model.embed_tokens.weight' && !model.config.tieWordEmbeddings) continue; // only one row is read per token
    weightBytes += numel(info.shape) * DTYPE_BYTES[info.dtype];
  }
  files.weights.close();
  const V = model.config.vocabSize;
  const ids = (n: number, s: number) => Array.from({ length: n }, (_, i) => (V > 30000 ? 1000 : 1) + ((i * 7919 + s * 104729) % Math.min(29000, V - 1)));
  for (const n of values.prefill!.split(',').map(Number)) {
    const run = async () => { const s = model.newSession(1, n); const t = performance.now(); await model.forward(s, [ids(n, n)]); return performance.now() - t; };
    await run();
    await profile('warm-up');
    const ms = Math.min(await run(), await run());
    await profile(`prefill ${n} x2`);
    const pt = torch?.prefill_ms?.[n] ?? null;
    rows.push([`prefill ${n} tok (ms)`, ms.toFixed(1), '', pt === null ? 'n/a' : String(pt), pt === null ? '' : `${(pt / ms).toFixed(2)}× PyTorch speed`]);
    log(rows[rows.length - 1].join(' | '));
  }
  const nDec = Number(values.decode);
  const ctxLen = Number(values.context);
  // best of two runs per kind, interleaved (g, d, d, g), so neither kind pays alone for warm-up or a noisy moment
  const best: Record<string, number> = {};
  for (const kind of ['gravity', 'dot', 'dot', 'gravity'] as AttentionKind[]) {
    model.attention = kind;
    const s = model.newSession(1, ctxLen + 5 * nDec + 80);
    // greedy: the backend's argmax (only the token id is read back, as a generation loop would)
    let tok = (await model.forward(s, [ids(ctxLen, 3)], { logits: 'argmax' }))[0];
    // two untimed tokens: the decode kernels' pipelines are compiled at their first dispatch
    for (let i = 0; i < 2; i++) tok = (await model.forward(s, [[tok]], { logits: 'argmax' }))[0];
    let t = performance.now();
    let host = 0; // ms spent recording (the synchronous part of forward), the rest is waiting for the GPU
    for (let i = 0; i < nDec; i++) {
      const h = performance.now();
      const p = model.forward(s, [[tok]], { logits: 'argmax' });
      host += performance.now() - h;
      tok = (await p)[0];
    }
    const stepMs = (performance.now() - t) / nDec;
    best[`${kind} step loop`] = Math.max(best[`${kind} step loop`] ?? 0, 1000 / stepMs);
    log(`${kind}: step loop ${stepMs.toFixed(2)} ms/token, of which ${(host / nDec).toFixed(2)} ms recording on the host`);
    // what generate() does for greedy: the model's greedyStream, the next token recorded while the last is read back
    // the host's recording inside the stream: the time spent in each step's synchronous part (deviceStep up to its
    // first await returns the recorded token), against the wall time per token
    const m = model as unknown as { deviceStep: (...a: unknown[]) => Promise<unknown> };
    const step0 = m.deviceStep;
    let rec = 0;
    m.deviceStep = function (this: unknown, ...a: unknown[]) {
      const h = performance.now();
      const r = step0.apply(this, a);
      rec += performance.now() - h;
      return r;
    };
    const it = model.greedyStream!(s, [tok], Number(values.lookahead));
    for (let i = 0; i < 3; i++) await it.next();
    if (values['profile-passes']) await be.profileReport();
    rec = 0;
    t = performance.now();
    for (let i = 0; i < nDec; i++) await it.next();
    const wallMs = (performance.now() - t) / nDec;
    m.deviceStep = step0;
    log(`${kind}: greedyStream (lookahead ${values.lookahead}) ${wallMs.toFixed(3)} ms/token wall, ${(rec / nDec).toFixed(3)} ms/token recording the layers`);
    best[kind] = Math.max(best[kind] ?? 0, 1000 / wallMs);
    if (values['profile-passes']) {
      const busy = ((await be.profileReport()) ?? []).reduce((a, k) => a + k.ms, 0) / nDec;
      log(`${kind}: greedyStream ${wallMs.toFixed(3)} ms/token wall, GPU busy ${busy.toFixed(3)} ms/token (pass timestamps)`);
    }
    await it.return();
    // what generate() does for sampling: sampleStream, the draws made on the device: plain temperature, top-k 40 +
    // top-p 0.9 (webgpu/sample-topk.ts), and a repetition penalty of 1.1 on top (penalty.ts)
    let u = 0;
    const sampled: [string, StreamSampling, StreamPenalty | undefined][] = [
      ['sampled', { temperature: 0.7 }, undefined],
      ['sampled top-k', { temperature: 0.7, topK: 40, topP: 0.9 }, undefined],
      ['sampled top-k + penalty', { temperature: 0.7, topK: 40, topP: 0.9 }, { value: 1.1, history: [[...ids(ctxLen, 3), tok]] }],
    ];
    for (const [row, sampling, penalty] of sampled) {
      const st = model.sampleStream!(s, [tok], sampling, () => (u = (u + 0.618034) % 1), Number(values.lookahead), penalty);
      for (let i = 0; i < 3; i++) await st.next();
      t = performance.now();
      for (let i = 0; i < nDec; i++) await st.next();
      best[`${kind} ${row}`] = Math.max(best[`${kind} ${row}`] ?? 0, nDec / ((performance.now() - t) / 1000));
      await st.return();
    }
    model.closeSession(s);
    await profile(`prefill 512 + decode ${nDec} (${kind})`);
  }
  for (const kind of ['gravity', 'dot', 'gravity sampled', 'dot sampled', 'gravity sampled top-k', 'dot sampled top-k', 'gravity sampled top-k + penalty', 'dot sampled top-k + penalty', 'gravity step loop', 'dot step loop']) {
    const tps = best[kind];
    const pt = torch?.decode_tok_s ?? null;
    const roof = bw / weightBytes;
    rows.push([`decode after ${ctxLen}, ${kind} (tok/s)`, tps.toFixed(1), '', kind === 'gravity' && pt !== null ? String(pt) : '',
      `${kind === 'gravity' && pt !== null ? `${(tps / pt).toFixed(2)}× PyTorch; ` : ''}${((100 * tps) / roof).toFixed(0)}% of roofline (${roof.toFixed(0)} tok/s at ${(bw / 1e12).toFixed(2)} TB/s, ${(weightBytes / 2 ** 30).toFixed(2)} GiB/token)`]);
    log(rows[rows.length - 1].join(' | '));
  }
}

console.log(`\nWebGPU (${be.adapterName}) vs PyTorch ${torch?.torch ?? ''} + transformers ${torch?.transformers ?? ''} eager gravity on ${torch?.device ?? 'same card'}; copy kernel ${(bw / 1e12).toFixed(2)} TB/s`);
console.log('| measure | ours (gravity) | ours (dot) | PyTorch eager gravity | ratio |');
console.log('|---|---|---|---|---|');
for (const r of rows) console.log(`| ${r.join(' | ')} |`);
process.exit(0);
