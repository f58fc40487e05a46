/**
 * Does an int8 path (Q8 weights x int8 activations) make prefill faster on WebGPU? (linear-q8.ts)
 *   GRAVITY_DAWN_FLAGS=enable-dawn-features=allow_unsafe_apis node dist/bench/q8-gpu.js [--dir DIR] [--n 2048,8192]
 *     [--sm 128x128:2x4:64,...] [--prefill 8192] [--reps 10]
 * Per shape (N tokens, OUT, IN), bf16 weights: the f32 GEMM (be.linear, Q8 off), the DP4A GEMM and each
 * subgroup-matrix (int8 tensor core) tiling in --sm, alone and with the activation-quantize kernel; TOP/s and errors
 * (max |y - y_f32| / max |y_f32|; the tensor-core result against DP4A must be exact up to f32 rounding). First it
 * finds out, on a small shape, whether subgroupMatrixLoad counts i8 offsets in bytes or in i32 words.
 * With --dir (a Qwen2-shaped checkpoint): a full prefill of --prefill tokens with Q8 off / tensor cores / DP4A, and
 * the logits of 16 further tokens against the f32 run (max |diff|, top-1 agreement).
 */
import { parseArgs } from 'node:util';
import { createWebGPUBackend } from '../src/backend/webgpu/index.js';
import { GpuTensor } from '../src/backend/webgpu/context.js';
import { freeWeight, parseSmConfig, q8Gemm, quantizeActs, quantizeWeight, releaseActs, smConfigKey, smShader, type Q8Acts, type Q8Weight, type SmConfig } from '../src/backend/webgpu/linear-q8.js';
import { loadModel } from '../src/model/load.js';
import { rand } from '../test/helpers/random.js';
import { relErr } from '../test/helpers/fixtures.js';

const { values } = parseArgs({
  options: {
    dir: { type: 'string' },
    n: { type: 'string', default: '2048,8192' },
    shapes: { type: 'string', default: '2048x2048,11008x2048,2048x11008' }, // OUTxIN
    sm: { type: 'string', default: '128x128:2x2:64,128x128:2x4:64,128x128:2x4:128,128x128:4x2:64,128x128:4x2:128,64x128:2x4:64,128x128:2x4:64:direct' },
    prefill: { type: 'string', default: '8192' },
    reps: { type: 'string', default: '10' },
  },
});
const log = (...a: unknown[]) => console.log(...a);
const be = await createWebGPUBackend({ q8: 'auto' });
const ctx = be.ctx;
const hasSm = be.q8 === 'sm';
log(`adapter: ${be.adapterName}; Q8 GEMM by default: ${be.q8}; subgroup matrices: ${hasSm ? 'yes' : 'no (run with GRAVITY_DAWN_FLAGS=enable-dawn-features=allow_unsafe_apis)'}`);
be.q8 = null;
const reps = Number(values.reps);

/** f32 -> bf16 by truncation (the benchmark needs bf16-shaped data, not a rounding study) */
function bf16(f: Float32Array): Uint16Array {
  const u = new Uint32Array(f.buffer, f.byteOffset, f.length);
  const h = new Uint16Array(f.length);
  for (let i = 0; i < f.length; i++) h[i] = u[i] >>> 16;
  return h;
}
/** ms per call of f: the best of 3 batches of `reps` calls recorded back to back (one sync a batch) */
async function time(f: () => void, n = reps): Promise<number> {
  f();
  await be.sync();
  let best = Infinity;
  for (let b = 0; b < 3; b++) {
    const t = performance.now();
    for (let r = 0; r < n; r++) f();
    await be.sync();
    best = Math.min(best, (performance.now() - t) / n);
  }
  return best;
}
const out = (N: number, OUT: number) => ctx.alloc(N * OUT * 4, 'bench output');
const read = async (b: GPUBuffer, n: number) => new Float32Array(await ctx.readBuffer(b, 0, n * 4));

const warned = new Set<string>();
/** compile messages of a tensor-core shader (errors stop that config; warnings are shown once) */
async function smCompiles(c: SmConfig): Promise<string | null> {
  const m = ctx.device.createShaderModule({ code: smShader(c, null) });
  const info = await m.getCompilationInfo();
  const errs = info.messages.filter((x) => x.type === 'error');
  const warn = new Set(info.messages.filter((x) => x.type !== 'error').map((x) => x.message.split('\n')[0]));
  if (warn.size && !warned.has(smConfigKey(c))) log(`   [${smConfigKey(c)}] compiler warnings: ${[...warn].join('; ')}`);
  warned.add(smConfigKey(c));
  return errs.length ? errs.map((e) => `${e.lineNum}:${e.linePos} ${e.message.split('\n')[0]}`).join('; ') : null;
}

/** runs the GEMM `f` into y and returns y read back, or the error message */
async function tryRun(f: () => void, y: GPUBuffer, n: number): Promise<Float32Array | string> {
  try {
    f();
    return await read(y, n);
  } catch (e) {
    return (e as Error).message.split('\n')[0].slice(0, 300);
  }
}

const smCfgs: SmConfig[] = values.sm!.split(',').filter(Boolean).map(parseSmConfig);

// 1. offset units of subgroupMatrixLoad for i8 (bytes per the proposal; words if the implementation says so)
if (hasSm) {
  const N = 256, OUT = 256, IN = 512;
  const x = be.fromF32(rand(N * IN, 1, 1), [N, IN]) as GpuTensor;
  const wt = be.upload({ dtype: 'BF16', shape: [OUT, IN], data: bf16(rand(OUT * IN, 2, 0.05)) }) as GpuTensor;
  const w = quantizeWeight(ctx, wt.buf, 'BF16', OUT, IN);
  const a = quantizeActs(ctx, x.buf, N, IN);
  const yd = out(N, OUT);
  q8Gemm(ctx, a, w, null, null, yd, 'dp4a');
  const ref = await read(yd, N * OUT);
  let unit: 1 | 4 | null = null;
  for (const u of [1, 4] as const) {
    const c = { ...smCfgs[0], unit: u };
    const ce = await smCompiles(c);
    if (ce) {
      log(`subgroup-matrix ${smConfigKey(c)}: does not compile: ${ce}`);
      continue;
    }
    const ys = out(N, OUT);
    const got = await tryRun(() => q8Gemm(ctx, a, w, null, null, ys, 'sm', c), ys, N * OUT);
    const e = typeof got === 'string' ? got : relErr(got, ref).toExponential(2);
    log(`subgroup-matrix ${smConfigKey(c)} vs DP4A on ${N}x${OUT}x${IN}: ${e}`);
    ctx.release(ys);
    if (typeof got !== 'string' && relErr(got, ref) < 1e-5 && unit === null) unit = u;
  }
  log(unit ? `=> i8 offsets/strides of subgroupMatrixLoad count ${unit === 1 ? 'bytes (i8 elements)' : 'i32 words'}` : '=> no subgroup-matrix variant matched DP4A: tensor-core timings below are of wrong results');
  if (unit) for (const c of smCfgs) c.unit = unit;
  releaseActs(ctx, a);
  freeWeight(ctx, w);
  ctx.release(yd);
  be.dispose(x);
  be.dispose(wt);
}

// 2. GEMMs per shape
const table: string[] = [];
/** per tiling, the summed tensor-core GEMM time over all shapes (the fastest is used for the prefill) */
const smTotal = new Map<string, number>();
for (const N of values.n!.split(',').map(Number)) {
  for (const sh of values.shapes!.split(',')) {
    const [OUT, IN] = sh.split('x').map(Number);
    const ops = 2 * N * OUT * IN;
    const tops = (ms: number) => (ops / ms / 1e9).toFixed(1);
    const x = be.fromF32(rand(N * IN, N + IN, 1), [N, IN]) as GpuTensor;
    const wt = be.upload({ dtype: 'BF16', shape: [OUT, IN], data: bf16(rand(OUT * IN, OUT + 3 * IN, 0.05)) }) as GpuTensor;
    const head = `N=${N} [${OUT}x${IN}]`;
    // f32 GEMM through the backend (Q8 off)
    const msF = await time(() => be.dispose(be.linear(x, wt, null)));
    const yF = be.linear(x, wt, null) as GpuTensor;
    const ref = await read(yF.buf, N * OUT);
    table.push(`${head} f32 GEMM                       ${msF.toFixed(3).padStart(8)} ms ${tops(msF).padStart(6)} TFLOP/s`);
    log(table[table.length - 1]);
    const w: Q8Weight = quantizeWeight(ctx, wt.buf, 'BF16', OUT, IN);
    let a: Q8Acts = quantizeActs(ctx, x.buf, N, IN);
    const msQ = await time(() => releaseActs(ctx, quantizeActs(ctx, x.buf, N, IN)));
    table.push(`${head} activation quantize alone      ${msQ.toFixed(3).padStart(8)} ms`);
    log(table[table.length - 1]);
    const yD = out(N, OUT);
    q8Gemm(ctx, a, w, null, null, yD, 'dp4a');
    const dp = await read(yD, N * OUT);
    const msD = await time(() => q8Gemm(ctx, a, w, null, null, yD, 'dp4a'));
    table.push(`${head} DP4A GEMM                      ${msD.toFixed(3).padStart(8)} ms ${tops(msD).padStart(6)} TOP/s; +quantize ${(msD + msQ).toFixed(3)} ms = ${(msF / (msD + msQ)).toFixed(2)}x f32; err vs f32 ${relErr(dp, ref).toExponential(2)}`);
    log(table[table.length - 1]);
    if (hasSm) {
      for (const c of smCfgs) {
        const key = smConfigKey(c).padEnd(26);
        const ce = await smCompiles(c);
        if (ce) {
          smTotal.set(smConfigKey(c), Infinity);
          table.push(`${head} SM ${key} does not compile: ${ce}`);
          log(table[table.length - 1]);
          continue;
        }
        const yS = out(N, OUT);
        const got = await tryRun(() => q8Gemm(ctx, a, w, null, null, yS, 'sm', c), yS, N * OUT);
        if (typeof got === 'string') {
          smTotal.set(smConfigKey(c), Infinity);
          table.push(`${head} SM ${key} failed: ${got}`);
          log(table[table.length - 1]);
          ctx.release(yS);
          // a failed submit may leave pooled buffers in an unknown state: start this shape's operands afresh
          a = quantizeActs(ctx, x.buf, N, IN);
          continue;
        }
        const msS = await time(() => q8Gemm(ctx, a, w, null, null, yS, 'sm', c));
        const msSQ = await time(() => {
          const aa = quantizeActs(ctx, x.buf, N, IN);
          q8Gemm(ctx, aa, w, null, null, yS, 'sm', c);
          releaseActs(ctx, aa);
        });
        smTotal.set(smConfigKey(c), (smTotal.get(smConfigKey(c)) ?? 0) + msS);
        table.push(`${head} SM ${key}${msS.toFixed(3).padStart(8)} ms ${tops(msS).padStart(6)} TOP/s; +quantize ${msSQ.toFixed(3)} ms = ${(msF / msSQ).toFixed(2)}x f32; err vs f32 ${relErr(got, ref).toExponential(2)}, vs DP4A ${relErr(got, dp).toExponential(2)}`);
        log(table[table.length - 1]);
        ctx.release(yS);
      }
    }
    releaseActs(ctx, a);
    freeWeight(ctx, w);
    ctx.release(yD);
    for (const t of [x, wt, yF]) be.dispose(t);
    await be.sync();
  }
}

// 3. full prefill with and without Q8
const prefillRows: string[] = [];
if (values.dir) {
  const t0 = performance.now();
  const model = await loadModel(values.dir, { backend: be });
  log(`loaded ${values.dir} in ${((performance.now() - t0) / 1000).toFixed(1)} s`);
  const V = model.config.vocabSize;
  const ids = (n: number, s: number) => Array.from({ length: n }, (_, i) => (V > 30000 ? 1000 : 1) + ((i * 7919 + s * 104729) % Math.min(29000, V - 1)));
  const best = [...smTotal].filter(([, t]) => Number.isFinite(t)).sort((p, q) => p[1] - q[1])[0]?.[0];
  if (best) process.env.GRAVITY_WEBGPU_Q8_SM = best; // read by linearQ8 at its first call
  log(`prefill tensor-core tiling: ${best ?? '(none worked)'}`);
  const kinds: (null | 'sm' | 'dp4a')[] = [null, ...(best ? (['sm'] as const) : []), 'dp4a'];
  for (const n of values.prefill!.split(',').map(Number)) {
    const prompt = ids(n, 1);
    const tail = ids(16, 2);
    let f32Tail: Float32Array | null = null;
    let f32Ms = 0;
    for (const kind of kinds) {
      be.q8 = kind;
      const run = async () => {
        const s = model.newSession(1, n + 16);
        const t = performance.now();
        await model.forward(s, [prompt]);
        const ms = performance.now() - t;
        return { s, ms };
      };
      const w = await run(); // warm-up: pipelines, and the int8 weights are made here
      model.closeSession(w.s);
      const r1 = await run();
      model.closeSession(r1.s);
      const r2 = await run();
      const ms = Math.min(r1.ms, r2.ms);
      // 16 more tokens after the prompt, all their logits (N = 16 > GEMV_MAX_N: the same linears as the prefill)
      const logits = await model.forward(r2.s, [tail], { logits: 'all' });
      model.closeSession(r2.s);
      let line = `prefill ${n} tokens, ${kind === null ? 'f32 GEMM' : kind === 'sm' ? 'Q8 tensor cores' : 'Q8 DP4A'}: ${ms.toFixed(1)} ms`;
      if (f32Tail === null) {
        f32Tail = logits;
        f32Ms = ms;
      } else {
        let maxd = 0;
        let maxl = 0;
        let agree = 0;
        for (let r = 0; r < 16; r++) {
          let b0 = 0;
          let b1 = 0;
          for (let j = 0; j < V; j++) {
            const i = r * V + j;
            maxd = Math.max(maxd, Math.abs(logits[i] - f32Tail[i]));
            maxl = Math.max(maxl, Math.abs(f32Tail[i]));
            if (f32Tail[i] > f32Tail[r * V + b0]) b0 = j;
            if (logits[i] > logits[r * V + b1]) b1 = j;
          }
          if (b0 === b1) agree++;
        }
        line += ` (${(f32Ms / ms).toFixed(2)}x f32); last 16 rows vs f32: max |logit diff| ${maxd.toFixed(3)} (max |logit| ${maxl.toFixed(2)}), top-1 agree ${agree}/16`;
      }
      prefillRows.push(line);
      log(line);
    }
  }
  be.q8 = null;
}

log(`\n== summary (${be.adapterName}) ==`);
for (const l of [...table, ...prefillRows]) log(l);
process.exit(0);
