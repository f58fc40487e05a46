/**
 * Prefill attention kernels, one layer (default: Qwen2.5-3B, 16 q heads, 2 kv heads, head_dim 128, causal, batch 1):
 * each variant's output against a float64 JS reference on sampled rows and against the first variant, then ms/call.
 *   node dist/bench/attn-gpu.js [--lens 1024,4096,16384] [--kinds gravity,gravity-run,dot,gravity-pure]
 *        [--variants old,32x32x128,64x16x128,32x32x64] [--hq 16 --hkv 2 --d 128] [--reps N] [--start S]
 * A variant is `old` (the previous kernel) or RxBKxNT[xPF[xAV]] (rows per workgroup, keys per tile, threads; PF=0: no
 * register prefetch of the next tile; AV=0: scalar score accumulators; see attention-prefill.ts). Times: best of 3 batches.
 * gravity: masses with M²/eps <= 60 (fixed max); gravity-run: larger masses (running max).
 * --start S: prefill the last n - S tokens after S cached ones (chunked prefill).
 */
import { parseArgs } from 'node:util';
import { createWebGPUBackend, type WebGPUBackend } from '../src/backend/webgpu/index.js';
import type { AttentionKind, AttentionParams, Tensor } from '../src/backend/backend.js';
import { massSquared } from '../src/attention/registry.js';
import { choosePrefillCfg } from '../src/backend/webgpu/attention-prefill.js';

const { values } = parseArgs({
  options: {
    lens: { type: 'string', default: '1024,4096,16384' },
    kinds: { type: 'string', default: 'gravity,dot' },
    variants: { type: 'string', default: 'old,32x32x128,64x16x128,32x32x64' },
    hq: { type: 'string', default: '16' },
    hkv: { type: 'string', default: '2' },
    d: { type: 'string', default: '128' },
    reps: { type: 'string', default: '0' },
    start: { type: 'string', default: '0' },
    'check-queries': { type: 'string', default: '6' },
  },
});
const Hq = Number(values.hq), Hkv = Number(values.hkv), D = Number(values.d);
const G = Hq / Hkv;
const be = (await createWebGPUBackend()) as WebGPUBackend;
const log = (...a: unknown[]) => console.log(...a);
log(`adapter: ${be.adapterName}; subgroup lanes ${be.ctx.sg}; workgroup memory ${be.ctx.maxWorkgroupMem} B; ${Hq}/${Hkv} heads, D=${D}`);

function rnd(len: number, seed: number, scale: number): Float32Array {
  const x = new Float32Array(len);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < len; i++) {
    s ^= s << 13; s ^= s >>> 17; s ^= s << 5;
    x[i] = ((s >>> 0) / 2 ** 32 * 2 - 1) * scale;
  }
  return x;
}

/** float64 attention output of rows (query t, all heads) over keys 0..start+t */
function reference(p: AttentionParams, q: Float32Array, k: Float32Array, v: Float32Array, T: number, start: number, t: number): Float64Array {
  const out = new Float64Array(Hq * D);
  const n = start + t + 1;
  const s = new Float64Array(n);
  for (let h = 0; h < Hq; h++) {
    const kvh = Math.floor(h / G);
    const qo = (t * Hq + h) * D;
    let mx = -Infinity;
    for (let j = 0; j < n; j++) {
      const ko = (j * Hkv + kvh) * D;
      let acc = 0;
      if (p.kind === 'dot') { for (let d = 0; d < D; d++) acc += q[qo + d] * k[ko + d]; s[j] = acc * p.scale; }
      else { for (let d = 0; d < D; d++) { const e = q[qo + d] - k[ko + d]; acc += e * e; } s[j] = p.massSq![h] / (acc + p.eps); }
      mx = Math.max(mx, s[j]);
    }
    let l = 0;
    for (let j = 0; j < n; j++) { s[j] = p.kind === 'gravity-pure' ? s[j] : Math.exp(s[j] - mx); l += s[j]; }
    for (let j = 0; j < n; j++) {
      const w = s[j] / l;
      const vo = (j * Hkv + kvh) * D;
      for (let d = 0; d < D; d++) out[h * D + d] += w * v[vo + d];
    }
  }
  return out;
}

const variants = values.variants!.split(',');
const start0 = Number(values.start);
for (const n of values.lens!.split(',').map(Number)) {
  const start = Math.min(start0, n - 2);
  const T = n - start;
  const q = rnd(T * Hq * D, 11 + n, 0.6);
  const k = rnd(n * Hkv * D, 12 + n, 0.6);
  const v = rnd(n * Hkv * D, 13 + n, 1);
  const qt = be.fromF32(q, [T, Hq * D]);
  const cache = be.createKVCache(1, 1, n, Hkv, D);
  cache.keyValid.fill(1);
  be.writeKV(cache, 0, be.fromF32(k, [n, Hkv * D]), be.fromF32(v, [n, Hkv * D]), 0, n);
  cache.length = n;
  const nq = Number(values['check-queries']);
  const rows = [...new Set([0, 1, T - 1, ...Array.from({ length: Math.max(0, nq - 3) }, (_, i) => Math.floor(((i + 1) * T) / (nq - 1)))])].filter((t) => t < T);
  for (const kindArg of values.kinds!.split(',')) {
    const kind = (kindArg === 'gravity-run' ? 'gravity' : kindArg) as AttentionKind;
    // softplus masses: gravity M² up to ~5.4 (M²/eps <= 60, fixed max); gravity-run up to ~17 (running max)
    const top = kindArg === 'gravity-run' ? 4 : 2;
    const massLog = Float32Array.from({ length: Hq }, (_, i) => -0.5 + ((top + 0.5) * i) / Math.max(1, Hq - 1));
    const p: AttentionParams = { kind, numHeads: Hq, numKVHeads: Hkv, headDim: D, massSq: kind === 'dot' ? null : massSquared(massLog), eps: 0.1, scale: 1 / Math.sqrt(D) };
    const refs = rows.map((t) => reference(p, q, k, v, T, start, t));
    let first: Float32Array | null = null;
    for (const variant of variants) {
      process.env.GRAVITY_ATTN_PREFILL = variant === 'old' ? 'old' : variant.replace(/x/g, ',');
      if (variant !== 'old' && !choosePrefillCfg(D, G, be.ctx.maxWorkgroupMem, be.ctx.sg)) {
        log(`n=${n} ${kindArg} ${variant}: does not fit this device (or shape), skipped`);
        continue;
      }
      let y: Tensor;
      try {
        y = be.attention(qt, cache, 0, start, T, p);
        be.ctx.takeErrors();
      } catch (e) {
        log(`n=${n} ${kindArg} ${variant}: ${(e as Error).message.slice(0, 300)}`);
        continue;
      }
      const got = await be.read(y);
      be.dispose(y);
      let refErr = 0, refMax = 0;
      rows.forEach((t, i) => {
        for (let e = 0; e < Hq * D; e++) {
          refErr = Math.max(refErr, Math.abs(got[t * Hq * D + e] - refs[i][e]));
          refMax = Math.max(refMax, Math.abs(refs[i][e]));
        }
      });
      let vsFirst = 0;
      if (first) for (let e = 0; e < got.length; e++) vsFirst = Math.max(vsFirst, Math.abs(got[e] - first[e]));
      else first = got;
      if (!got.every(Number.isFinite)) refErr = Infinity;
      const reps = Number(values.reps) || (n >= 16384 ? 3 : n >= 4096 ? 10 : 30);
      let ms = Infinity;
      for (let batch = 0; batch < 3; batch++) { // best of 3 batches: the first ones also pay for clocks ramping up
        await be.sync();
        const t0 = performance.now();
        for (let r = 0; r < reps; r++) be.dispose(be.attention(qt, cache, 0, start, T, p));
        await be.sync();
        ms = Math.min(ms, (performance.now() - t0) / reps);
      }
      const flops = 4 * Hq * D * (T * start + (T * (T + 1)) / 2);
      const ok = refErr / refMax <= 1e-4 ? 'ok' : 'BAD';
      log(`n=${String(n).padStart(5)} ${kindArg.padEnd(12)} ${variant.padEnd(10)} ${ms.toFixed(3).padStart(9)} ms  ${(flops / ms / 1e9).toFixed(1).padStart(6)} TFLOP/s  ` +
        `ref err ${(refErr / refMax).toExponential(2)} ${ok}  vs ${variants[0]} ${vsFirst.toExponential(2)}`);
    }
  }
  be.dispose(qt);
  be.dispose(cache);
}
be.destroy();
