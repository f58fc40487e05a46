/**
 * Fused attention over the KV cache, flash style: no [T x keys] matrix ever reaches global memory.
 *
 * One workgroup takes one (batch, kv head) and a tile of TQ queries for ALL G query heads of that kv head's
 * group (R = G * TQ rows), so each K/V tile loaded into workgroup memory serves every head of the group.
 * Per key tile: scores S[R, BK] into workgroup memory (threads spread over (row, key)), then each row's
 * TPR threads update the running max m, running sum l and their D/TPR slice of the output accumulator
 * (online softmax). Masked keys (keyValid = 0, or slot > query slot) are skipped; the causal limit also
 * bounds the key loop.
 *
 * Decode (T = 1) has only G rows per (batch, kv head), too little work for a GPU, so the key axis is split
 * (flash-decoding): each split writes (o, m, l) for its key range and a combine pass merges them with
 * weights exp(m_s - max m). Prefill runs with one split and writes the output directly. Decode loads each tile's K and
 * V in one phase (KV1: a split of one tile waits on global memory once), at 32 keys per split.
 *
 * gravity: s = M_h² / (|q - k|² + eps) (the distance summed directly, see flashShader); dot: s = scale * q·k.
 * gravity-pure: no softmax, weights s / sum(s) (m stays 0, so the split combine needs no change).
 *
 * Gravity with a fixed max: the score is bounded, 0 < s <= M_h²/eps, so when every head's M²/eps <= FIXED_MAX_LIMIT
 * the row "max" is the constant M_h²/eps: exp(s - M²/eps) >= exp(-60) cannot underflow f32 and the sum of a row
 * (<= number of keys) cannot overflow. No running max, no rescale of l and o per tile (the per-tile max scan was
 * the work gravity decode did beyond dot's), and the split-K partials combine by plain sums. Larger masses keep
 * the running max.
 */
import type { AttentionKind, AttentionParams } from '../backend.js';
import { GravityError } from '../../errors.js';
import { Params, roundUp, type GpuContext } from './context.js';
import { attentionBindings } from './wgsl.js';
import type { GpuKVCache } from './kvcache.js';
import { choosePrefillCfg, prefillKey, prefillShader } from './attention-prefill.js';
import { decodeParts, headDecodeCfg, headDecodeKernel } from './attention-decode.js';

interface Cfg {
  D: number;
  G: number;
  TQ: number;
  TPR: number;
  BK: number;
  /** K and V tiles loaded in one phase (decode): one global-memory wait per tile instead of two */
  KV1: boolean;
}

/** the largest power of two <= cap that divides D */
function pow2Divisor(D: number, cap: number): number {
  let t = 1;
  while (t * 2 <= cap && D % (t * 2) === 0) t *= 2;
  return t;
}

/** Qs and KVs rows are D/4 vec4 plus one vec4 of padding, which keeps consecutive rows in different banks */
function sharedBytes(c: Cfg): number {
  const R = c.G * c.TQ;
  const DP4 = c.D / 4 + 1;
  return 16 * (R * DP4 + (c.KV1 ? 2 : 1) * c.BK * DP4) + 4 * (R * (c.BK + c.TPR) + c.BK);
}

/** threads per query row in prefill (GRAVITY_ATTN_TPR to experiment): 8 beat 4 on the H200 (16k: 130 vs 172 ms), more warps per SM */
const PREFILL_TPR = Number((typeof process !== 'undefined' && process.env?.GRAVITY_ATTN_TPR) || 8);

function chooseCfg(ctx: GpuContext, D: number, G: number, decode: boolean): Cfg {
  // each of a row's TPR threads owns D/4/TPR of its vec4 output columns
  let TPR = pow2Divisor(D / 4, decode ? 32 : PREFILL_TPR);
  while (G * TPR > 256 && TPR > 1) TPR /= 2;
  if (G * TPR > 256) throw new GravityError(`attention: ${G} query heads per kv head is more than this backend supports (256)`);
  for (let TQ = decode ? 1 : Math.max(1, Math.floor(32 / G)); TQ >= 1; TQ = Math.floor(TQ / 2)) {
    while (G * TQ * TPR > 256) TQ--;
    for (const BK of [32, 16, 8, 4]) {
      const c = { D, G, TQ, TPR, BK, KV1: decode && DECODE_KV1 };
      if (sharedBytes(c) <= ctx.maxWorkgroupMem) return c;
    }
    if (TQ === 1) break;
  }
  throw new GravityError(`attention: head dim ${D} with ${G} heads per group needs more workgroup memory than this device has (${ctx.maxWorkgroupMem} bytes)`);
}

/** exp(-60) ~ 9e-27: far from f32's smallest normal (1.2e-38), so fixed-max weights never underflow */
export const FIXED_MAX_LIMIT = 60;

/** true when this call's gravity scores can use M²/eps as the softmax max (see the header) */
export function gravityFixedMax(p: AttentionParams): boolean {
  if (p.kind !== 'gravity' || !p.massSq) return false;
  let mx = 0;
  for (const m of p.massSq) {
    if (!(m >= 0)) return false;   // NaN or a negative M² (never from softplus): keep the general path
    mx = Math.max(mx, m);
  }
  return p.eps > 0 && mx / p.eps <= FIXED_MAX_LIMIT;
}

function flashShader(c: Cfg, kind: AttentionKind, split: boolean, fixed = false): string {
  const gravity = kind !== 'dot';
  const pure = kind === 'gravity-pure';
  const running = !pure && !fixed; // a running max with per-tile rescaling
  const R = c.G * c.TQ;
  const NT = R * c.TPR;
  const SB = Math.ceil(c.BK / c.TPR); // keys scored per thread per tile
  const partial = SB * c.TPR > c.BK; // some threads' last key is past the tile: clamp their reads
  const kidx = partial ? `min(part + TPR * c, BK - 1u)` : `(part + TPR * c)`;
  // gravity takes |q - k|² directly: |q|² + |k|² - 2 q·k cancels badly in f32 when q is near k, and near
  // k is exactly where the score (up to M²/eps) is largest
  const inner = gravity
    ? `let df = qv - KVs[${kidx} * DP4 + d4]; dts[c] += dot(df, df);`
    : `dts[c] += dot(qv, KVs[${kidx} * DP4 + d4]);`;
  // fixed max: the row's weight exp(s - m) is final when the score is made, so it is computed once by the scoring
  // thread and stored (masked = 0), instead of once per output thread of the row in the P·V loop
  const score = fixed ? `s = exp(mass[h] / (dts[c] + p.eps) - m);` : gravity ? `s = mass[h] / (dts[c] + p.eps);` : `s = p.scale * dts[c];`;
  const store = split
    ? `let base = (((b * p.T + t) * p.Hq + h) * p.nsplit + split) * (D + 2u);
    for (var i = 0u; i < DPT4; i++) {
      let d = (part + TPR * i) * 4u;
      out[base + d] = o[i].x; out[base + d + 1u] = o[i].y; out[base + d + 2u] = o[i].z; out[base + d + 3u] = o[i].w;
    }
    if (part == 0u) { out[base + D] = m; out[base + D + 1u] = l; }`
    : `let inv = select(0.0, 1.0 / l, l > 0.0);
    let base = ((b * p.T + t) * p.Hq + h) * D;
    for (var i = 0u; i < DPT4; i++) {
      let d = (part + TPR * i) * 4u;
      let v = o[i] * inv;
      out[base + d] = v.x; out[base + d + 1u] = v.y; out[base + d + 2u] = v.z; out[base + d + 3u] = v.w;
    }`;
  return `struct P { T: u32, start: u32, maxLen: u32, Hq: u32, Hkv: u32, kps: u32, nsplit: u32, eps: f32, scale: f32, vOff4: u32 }
@group(0) @binding(0) var<uniform> p: P;
${attentionBindings()}
const D = ${c.D}u;
const D4 = ${c.D / 4}u;
const DP4 = ${c.D / 4 + 1}u;   // row stride of Qs and KVs in vec4: one vec4 of padding
const G = ${c.G}u;
const TQ = ${c.TQ}u;
const R = ${R}u;
const TPR = ${c.TPR}u;
const NT = ${NT}u;
const BK = ${c.BK}u;
const SB = ${SB}u;
// score row stride: BK + TPR puts the rows of a warp in different banks (a row stride of BK = 32 made every
// read of a key's scores by the warp's rows an 8-way bank conflict)
const SST = ${c.BK + c.TPR}u;
const DPT4 = ${c.D / 4 / c.TPR}u;  // vec4 output columns per thread
const MASKED = -3.0e38;
var<workgroup> Qs: array<vec4<f32>, ${R * (c.D / 4 + 1)}>;
var<workgroup> KVs: array<vec4<f32>, ${c.BK * (c.D / 4 + 1)}>;
${c.KV1 ? `var<workgroup> Vs: array<vec4<f32>, ${c.BK * (c.D / 4 + 1)}>;` : ''}
var<workgroup> Ss: array<f32, ${R * (c.BK + c.TPR)}>;
var<workgroup> oks: array<u32, BK>;
@compute @workgroup_size(${NT})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let t0 = wid.x * TQ;
  let split = wid.y;
  let bh = wid.z;                 // b * Hkv + kvh
  let b = bh / p.Hkv;
  let kvh = bh % p.Hkv;
  // rows are (query t0 + r / G, head kvh * G + r % G)
  for (var e = lid; e < R * D4; e += NT) {
    let r = e / D4;
    let t = t0 + r / G;
    var v = vec4<f32>();
    if (t < p.T) { v = q[((b * p.T + t) * p.Hq + kvh * G + r % G) * D4 + e % D4]; }
    Qs[r * DP4 + e % D4] = v;
  }
  ${c.KV1 ? '// no barrier: the first tile\'s barrier (after its K/V loads) also covers Qs, one global-memory wait less' : 'workgroupBarrier();'}
  let r = lid / TPR;
  let part = lid % TPR;
  let t = t0 + r / G;             // this thread's row: query t, head h
  let h = kvh * G + r % G;
  let kEnd = p.start + min(t0 + TQ, p.T);   // exclusive: the last query's slot + 1
  let k0 = split * p.kps;
  let k1 = min(kEnd, k0 + p.kps);
  // gravity-pure has no max (its weights are the scores, s / sum(s)); fixed: the bound M²/eps of the row's head
  var m = ${pure ? '0.0' : fixed ? 'mass[h] / p.eps' : '-1.0e30'};
  var l = 0.0;
  var o: array<vec4<f32>, DPT4>;
  for (var kb = k0; kb < k1; kb += BK) {
    for (var e = lid; e < BK * D4; e += NT) {
      let slot = kb + e / D4;
      var v = vec4<f32>();
      ${c.KV1 ? `var w = vec4<f32>();
      if (slot < k1) { v = kv[(bh * p.maxLen + slot) * D4 + e % D4]; w = kv[p.vOff4 + (bh * p.maxLen + slot) * D4 + e % D4]; }
      Vs[(e / D4) * DP4 + e % D4] = w;` : `if (slot < k1) { v = kv[(bh * p.maxLen + slot) * D4 + e % D4]; }`}
      KVs[(e / D4) * DP4 + e % D4] = v;
    }
    for (var j = lid; j < BK; j += NT) {
      let slot = kb + j;
      var ok = 0u;
      if (slot < k1) { ok = valid[b * p.maxLen + slot]; }
      oks[j] = ok;
    }
    workgroupBarrier();
    // scores of this thread's row r for keys part + TPR * c: each q vec4 is read once for all SB keys
    {
      var dts = array<f32, SB>();   // explicit: some compilers keep a loop-scoped var across iterations
      for (var d4 = 0u; d4 < D4; d4++) {
        let qv = Qs[r * DP4 + d4];
        for (var c = 0u; c < SB; c++) { ${inner} }
      }
      for (var c = 0u; c < SB; c++) {
        let j = part + TPR * c;
        ${partial ? 'if (j >= BK) { break; }' : ''}
        var s = ${fixed ? '0.0' : 'MASKED'};
        if (oks[j] != 0u && t < p.T && kb + j <= p.start + t) { ${score} }
        Ss[r * SST + j] = s;
      }
    }
    workgroupBarrier();
    ${!running ? '' : `// masked scores (-3e38) never beat the initial -1e30, so an all-masked tile leaves m, l, o unchanged
    var mt = m;
    for (var j = 0u; j < BK; j++) { mt = max(mt, Ss[r * SST + j]); }
    let alpha = exp(m - mt);
    m = mt;
    l *= alpha;
    for (var i = 0u; i < DPT4; i++) { o[i] *= alpha; }`}
    ${c.KV1 ? '' : `for (var e = lid; e < BK * D4; e += NT) {
      let slot = kb + e / D4;
      var v = vec4<f32>();
      if (slot < k1) { v = kv[p.vOff4 + (bh * p.maxLen + slot) * D4 + e % D4]; }
      KVs[(e / D4) * DP4 + e % D4] = v;
    }
    workgroupBarrier();`}
    ${fixed ? `for (var j = 0u; j < BK; j++) {
      let pj = Ss[r * SST + j];   // 0 for masked keys
      l += pj;
      for (var i = 0u; i < DPT4; i++) { o[i] = fma(vec4<f32>(pj), ${c.KV1 ? 'Vs' : 'KVs'}[j * DP4 + part + TPR * i], o[i]); }
    }` : `for (var j = 0u; j < BK; j++) {
      let s = Ss[r * SST + j];
      if (s > -1.0e38) {
        let pj = ${pure ? 's' : 'exp(s - m)'};
        l += pj;
        for (var i = 0u; i < DPT4; i++) { o[i] = fma(vec4<f32>(pj), ${c.KV1 ? 'Vs' : 'KVs'}[j * DP4 + part + TPR * i], o[i]); }
      }
    }`}
    workgroupBarrier();
  }
  if (t < p.T) {
    ${store}
  }
}`;
}

/** sums: every split's m is the same (fixed max, gravity-pure), so the weights exp(m_s - max m) are all 1 */
function combineShader(D: number, sums: boolean): string {
  // 4 splits per step: their loads are issued together (the split count is a runtime value, so the compiler would
  // not overlap one step's loads with the next); the adds stay in split order, as in a plain loop
  const step = (body: string) => `for (var s0 = 0u; s0 < p.nsplit; s0 += 4u) {
    var lv: array<f32, 4>;
    var mv: array<f32, 4>;
    var ov: array<f32, 4>;
    for (var u = 0u; u < 4u; u++) {
      let o = base + min(s0 + u, p.nsplit - 1u) * (D + 2u);
      mv[u] = part[o + D];
      lv[u] = part[o + D + 1u];
      ov[u] = part[o + e % D];
    }
    for (var u = 0u; u < 4u; u++) {
      if (s0 + u >= p.nsplit) { break; }
      ${body}
    }
  }`;
  const merge = sums
    ? `var L = 0.0;
  var O = 0.0;
  ${step('L += lv[u]; O += ov[u];')}`
    : `var mx = -1.0e30;
  for (var s = 0u; s < p.nsplit; s++) { mx = max(mx, part[base + s * (D + 2u) + D]); }
  var L = 0.0;
  var O = 0.0;
  ${step('let w = exp(mv[u] - mx); L += lv[u] * w; O += ov[u] * w;')}`;
  return `struct P { n: u32, nsplit: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
const D = ${D}u;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let e = (wid.y * nwg.x + wid.x) * 64u + lid;
  if (e >= p.n) { return; }
  let row = e / D;                // (b * T + t) * Hq + h
  let base = row * p.nsplit * (D + 2u);
  ${merge}
  out[e] = select(0.0, O / L, L > 0.0);
}`;
}

/**
 * Target number of workgroups for decode (GRAVITY_DECODE_WORKGROUPS to experiment): about one per SM of a big GPU; more
 * splits make the combine pass read more partials.
 */
const DECODE_WORKGROUPS = Number((typeof process !== 'undefined' && process.env?.GRAVITY_DECODE_WORKGROUPS) || 128);
/** decode loads each K and V tile in one phase (GRAVITY_DECODE_KV=split: K, then V, as prefill's fallback kernel) */
const DECODE_KV1 = (typeof process !== 'undefined' && process.env?.GRAVITY_DECODE_KV) !== 'split';
/**
 * Decode splits the key axis only past this many keys per split (GRAVITY_DECODE_KEYS_PER_SPLIT to experiment).
 */
const MIN_KEYS_PER_SPLIT = Number((typeof process !== 'undefined' && process.env?.GRAVITY_DECODE_KEYS_PER_SPLIT) || 32);

function checkAttention(c: GpuKVCache, start: number, T: number, p: AttentionParams): void {
  const { numHeads: Hq, numKVHeads: Hkv, headDim: D } = p;
  if (Hkv !== c.numKVHeads || D !== c.headDim) {
    throw new GravityError(`attention: params say ${Hkv} kv heads x ${D}, the cache has ${c.numKVHeads} x ${c.headDim}`);
  }
  if (Hq % Hkv !== 0) throw new GravityError(`attention: ${Hq} query heads is not a multiple of ${Hkv} kv heads`);
  if (start + T > c.maxLen) throw new GravityError(`KV cache full: ${start + T} > ${c.maxLen} slots`);
  if (p.kind !== 'dot' && (!p.massSq || p.massSq.length !== Hq)) throw new GravityError(`attention: gravity needs massSq of length ${Hq}`);
  if (D % 4 !== 0) throw new GravityError(`attention: head dim ${D} is not a multiple of 4 (the webgpu kernels read vec4)`);
}

/** decode attention's output as split partials, for a GEMV to merge on load (PartsInput) */
export interface AttentionParts {
  part: GPUBuffer;
  ml: GPUBuffer;
  S: number;
  D: number;
  sums: boolean;
}

/**
 * Decode (T = 1) attention as key-split partials where the one-dispatch kernel applies and the keys are many enough
 * to split (attention-decode.ts decodeParts): the splits run side by side on more SMs, and instead of a combine
 * dispatch the o projection merges them as it loads its input. Returns null (nothing dispatched) elsewhere; the
 * caller releases part and ml.
 */
export function attentionPartsKernel(ctx: GpuContext, q: GPUBuffer, c: GpuKVCache, layer: number, start: number, p: AttentionParams): AttentionParts | null {
  checkAttention(c, start, 1, p);
  const keys = start + 1;
  const t = ctx.decodeTuning;
  const parts = keys <= t.partKeys ? decodeParts(keys, t.parts, t.partMinKeys) : null;
  const hc = parts ? headDecodeCfg(ctx, p.headDim) : null;
  if (!parts || !hc) return null;
  c.syncMask();
  const fixed = gravityFixedMax(p);
  const rows = c.batch * p.numHeads;
  const part = ctx.alloc(parts.n * rows * p.headDim * 4, 'attention partials');
  const ml = ctx.alloc(parts.n * rows * 8, 'attention partial (m, l)');
  const mass = { data: p.kind !== 'dot' ? p.massSq! : new Float32Array(1) };
  headDecodeKernel(ctx, hc, q, c, c.layers[layer].kv, start, p, fixed, mass, part, { ...parts, ml });
  return { part, ml, S: parts.n, D: p.headDim, sums: fixed || p.kind === 'gravity-pure' };
}

export function attentionKernel(
  ctx: GpuContext, q: GPUBuffer, c: GpuKVCache, layer: number, start: number, T: number, p: AttentionParams, out: GPUBuffer,
): void {
  checkAttention(c, start, T, p);
  const { numHeads: Hq, numKVHeads: Hkv, headDim: D } = p;
  const gravity = p.kind !== 'dot';
  const G = Hq / Hkv;
  const B = c.batch;
  const L = c.layers[layer];
  c.syncMask();
  const decode = T === 1;
  const fixed = gravityFixedMax(p);
  const params = (kps: number, nsplit: number) => new Params().u(T, start, c.maxLen, Hq, Hkv, kps, nsplit).f(p.eps, p.scale).u(c.vOff / 4);
  const mass = { data: gravity ? p.massSq! : new Float32Array(1) };
  // prefill: the register-tiled kernel (attention-prefill.ts) where a tile fits, else the one below
  const pc = decode ? null : choosePrefillCfg(D, G, ctx.maxWorkgroupMem, ctx.sg);
  if (pc) {
    const pl = ctx.pipeline(prefillKey(pc, p.kind, fixed, ctx.sg), () => prefillShader(pc, p.kind, fixed, ctx.sg));
    const TQ = Math.floor(pc.R / G);
    ctx.dispatch(pl, params(start + T, 1), [q, L.kv, c.valid, mass, out], [Math.ceil(T / TQ), 1, B * Hkv]);
    return;
  }
  const keys = start + T;
  // short decode: one dispatch, a workgroup per query head (attention-decode.ts)
  const hc = decode && keys <= ctx.decodeTuning.shortKeys ? headDecodeCfg(ctx, D) : null;
  if (hc) {
    headDecodeKernel(ctx, hc, q, c, L.kv, start, p, fixed, mass, out);
    return;
  }
  const cfg = chooseCfg(ctx, D, G, decode);
  let nsplit = 1;
  let kps = keys;
  if (decode) {
    nsplit = Math.max(1, Math.min(Math.ceil(DECODE_WORKGROUPS / (B * Hkv)), Math.ceil(keys / MIN_KEYS_PER_SPLIT)));
    kps = roundUp(Math.ceil(keys / nsplit), cfg.BK);
    nsplit = Math.ceil(keys / kps);
  }
  const split = nsplit > 1;
  const key = `attn:${p.kind}:${fixed}:${split}:${cfg.D}:${cfg.G}:${cfg.TQ}:${cfg.TPR}:${cfg.BK}:${cfg.KV1}`;
  const pl = ctx.pipeline(key, () => flashShader(cfg, p.kind, split, fixed));
  const groups: [number, number, number] = [Math.ceil(T / cfg.TQ), nsplit, B * Hkv];
  if (!split) {
    ctx.dispatch(pl, params(kps, nsplit), [q, L.kv, c.valid, mass, out], groups);
    return;
  }
  const rows = B * T * Hq;
  const partial = ctx.alloc(rows * nsplit * (D + 2) * 4, 'attention partials');
  ctx.dispatch(pl, params(kps, nsplit), [q, L.kv, c.valid, mass, partial], groups);
  const sums = fixed || p.kind === 'gravity-pure';
  const cpl = ctx.pipeline(`attn-combine:${D}:${sums}`, () => combineShader(D, sums));
  ctx.dispatch(cpl, new Params().u(rows * D, nsplit), [partial, out], ctx.grid(Math.ceil((rows * D) / 64)));
  ctx.release(partial);
}
