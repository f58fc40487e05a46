/**
 * Decode attention at short contexts in one dispatch: VS workgroups per (batch, query head), each reading all of its
 * kv head's keys and 1/VS of the value columns (VS = 2 by default), so no split of the key axis and no combine pass
 * (the split-K kernel in attention.ts needs both, two dependent dispatches of a few microseconds each, which at a few
 * hundred keys cost more than the attention's own work). H200, Qwen2.5-3B shape, 512 keys, kernels alone: 9.2 vs
 * 11.8 µs (gravity, fixed max), 10.5 vs 15.7 (running max), 9.2 vs 14.4 (dot); at 2048 keys the split kernel wins,
 * hence SHORT_KEYS (bench/RESULTS.md).
 *
 * The workgroup is TEAMS teams of TL lanes (TL = D/4 vec4 columns, at most a subgroup): a team takes keys
 * base + team + TEAMS * u (u < U, U keys' K and V rows loaded before any arithmetic), each lane its DV vec4 of the row;
 * the team's score comes from a subgroup xor-shuffle sum over its lanes. Every team keeps an online softmax (m, l, o)
 * over its keys; at the end the teams' partials are merged in workgroup memory with weights exp(m_t - max m), as the
 * split kernel's combine does. Same masking as attention.ts: a key counts when its slot is valid and <= the query's.
 *
 * The 8 query heads of a kv group read the same keys: the first pulls them into L2, the others hit it. Past a few
 * thousand keys the per-workgroup key stream (a single SM) is the limit and the split kernel is faster.
 *
 * Before the o projection (the model's decode) the kernel also splits the key axis into PARTS parts, each
 * workgroup writing its unnormalised (o, m, l): 3x the workgroups, 1/3 of the keys each, and no combine dispatch,
 * because the o projection's GEMV merges the parts as it loads its input (partsLoad; linear.ts stages the merged
 * input in workgroup memory once per workgroup).
 */
import type { AttentionKind, AttentionParams } from '../backend.js';
import { Params, type GpuContext } from './context.js';
import type { GpuKVCache } from './kvcache.js';
import { attentionBindings } from './wgsl.js';

/** keys up to which decode takes this kernel (GRAVITY_DECODE_SHORT_KEYS to experiment; 0 = never) */
export const SHORT_KEYS = Number((typeof process !== 'undefined' && process.env?.GRAVITY_DECODE_SHORT_KEYS) ?? 1024);
/** threads per workgroup (GRAVITY_DECODE_HEAD_WG), capped by the device and by workgroup memory */
const HEAD_WG = Number((typeof process !== 'undefined' && process.env?.GRAVITY_DECODE_HEAD_WG) || 1024);
/** keys per team loaded ahead of the arithmetic (GRAVITY_DECODE_UNROLL) */
const UNROLL = Number((typeof process !== 'undefined' && process.env?.GRAVITY_DECODE_UNROLL) || 4);
/** workgroups per query head, each with a 1/VSPLIT slice of the value columns (GRAVITY_DECODE_VSPLIT) */
export const VSPLIT = Number((typeof process !== 'undefined' && process.env?.GRAVITY_DECODE_VSPLIT) || 2);
/**
 * Decode attention before the o projection splits its key axis into this many parts (GRAVITY_DECODE_PARTS; 0 or 1 =
 * no split), which the o projection's GEMV merges as it loads its input (attention.ts attentionPartsKernel). H200,
 * Qwen2.5-3B shape, GPU time per token after 512 tokens (bench/RESULTS.md): 3 parts 2.505-2.531 ms, 4 parts
 * 2.513-2.522, 2 parts 2.570-2.589, 5 and 8 parts 2.57 and 2.59, no split (the whole-head kernel) 2.67-2.71; after
 * 2048, 3 parts 2.81-2.85 vs 2.93-3.21 with the split kernel and its combine dispatch; after 4096 the split kernel
 * (3.14) beat 2 parts (3.70), hence PART_KEYS.
 */
export const PARTS = Number((typeof process !== 'undefined' && process.env?.GRAVITY_DECODE_PARTS) ?? 3);
/** the partials path takes at most this many keys (GRAVITY_DECODE_PART_KEYS); measured up to 2048 + 70 */
export const PART_KEYS = Number((typeof process !== 'undefined' && process.env?.GRAVITY_DECODE_PART_KEYS) || 2560);
/** and at least this many keys per part (GRAVITY_DECODE_PART_MIN_KEYS): after 128 tokens 2 parts gained 0.02 ms, 4 lost 0.08 */
export const PART_MIN_KEYS = Number((typeof process !== 'undefined' && process.env?.GRAVITY_DECODE_PART_MIN_KEYS) || 32);
/** at most this many parts (the o projection's merge reads every part of every input element) */
export const MAX_PARTS = 8;

interface HeadCfg {
  D: number;
  TL: number;
  WS: number;
  U: number;
  /** workgroups per head, each reading all of K and 1/VS of V */
  VS: number;
}

/** the kernel's shape on this device, or null where it does not apply (no subgroups, odd head dims) */
export function headDecodeCfg(ctx: GpuContext, D: number): HeadCfg | null {
  if (ctx.sg < 4 || D % 4 !== 0) return null;
  const D4 = D / 4;
  let TL = 1;
  while (TL * 2 <= Math.min(ctx.sg, D4) && D4 % (TL * 2) === 0) TL *= 2;
  if (TL < 4) return null;
  let WS = Math.min(HEAD_WG, ctx.maxInvocations);
  WS -= WS % 32;
  // team partials: (D + 2) floats per team
  while (WS >= 64 && (WS / TL) * (D + 2) * 4 > ctx.maxWorkgroupMem) WS /= 2;
  if (WS < 64 || WS % TL !== 0) return null;
  let VS = Math.max(1, ctx.decodeTuning.vsplit);
  while (VS > 1 && D4 % VS !== 0) VS /= 2;
  return { D, TL, WS, U: Math.max(1, UNROLL), VS: Math.floor(VS) };
}

/**
 * split: workgroup z = value slice + VS * key split; the split takes keys [s * p.kps, (s + 1) * p.kps) and writes its
 * unnormalised partial (o, and m, l per row) for the reader to merge (partsLoad), instead of o / l.
 */
export function headDecodeShader(c: HeadCfg, kind: AttentionKind, fixed: boolean, split = false): string {
  const gravity = kind !== 'dot';
  const pure = kind === 'gravity-pure';
  const running = !pure && !fixed;
  const D4 = c.D / 4;
  const DV = D4 / c.TL;
  const TEAMS = c.WS / c.TL;
  // value columns of this workgroup: VL vec4 from wid.z * VL; lane takes VL / TL of them (or one, lanes < VL)
  const VL = D4 / c.VS;
  const DVV = Math.max(1, VL / c.TL);
  const vGuard = VL < c.TL ? 'lane < VL' : 'true';
  const shuffles: string[] = [];
  for (let x = c.TL / 2; x >= 1; x /= 2) shuffles.push(`a += subgroupShuffleXor(a, ${x}u);`);
  const part = gravity ? `let df = qv[i] - kk[u * DV + i]; a += dot(df, df);` : `a += dot(qv[i], kk[u * DV + i]);`;
  const scoreOf = gravity ? `mass[h] / (a + p.eps)` : `p.scale * a`;
  // fixed max: weights exp(s - M²/eps) are final at once; running: the batch's max rescales l and o once
  const accumulate = running
    ? `var mt = m;
      for (var u = 0u; u < U; u++) { if (ok[u]) { mt = max(mt, s[u]); } }
      let alpha = exp(m - mt);
      m = mt;
      l *= alpha;
      for (var i = 0u; i < DVV; i++) { o[i] *= alpha; }
      for (var u = 0u; u < U; u++) {
        let pj = select(0.0, exp(s[u] - m), ok[u]);
        l += pj;
        for (var i = 0u; i < DVV; i++) { o[i] = fma(vec4<f32>(pj), vv[u * DVV + i], o[i]); }
      }`
    : `for (var u = 0u; u < U; u++) {
        let pj = select(0.0, ${pure ? 's[u]' : 'exp(s[u] - m)'}, ok[u]);
        l += pj;
        for (var i = 0u; i < DVV; i++) { o[i] = fma(vec4<f32>(pj), vv[u * DVV + i], o[i]); }
      }`;
  const merge = running
    ? `var M = -1.0e30;
    for (var t = 0u; t < TEAMS; t++) { M = max(M, red[t * RS + VD]); }
    var L = 0.0;
    var O = 0.0;
    for (var t = 0u; t < TEAMS; t++) { let w = exp(red[t * RS + VD] - M); L += red[t * RS + VD + 1u] * w; O += red[t * RS + d] * w; }`
    : `var L = 0.0;
    var O = 0.0;
    for (var t = 0u; t < TEAMS; t++) { L += red[t * RS + VD + 1u]; O += red[t * RS + d]; }`;
  return `enable subgroups;
struct P { maxLen: u32, Hq: u32, Hkv: u32, keys: u32, eps: f32, scale: f32, vOff4: u32, kps: u32, rows: u32 }
@group(0) @binding(0) var<uniform> p: P;
${attentionBindings()}
${split ? '@group(0) @binding(6) var<storage, read_write> ml: array<vec2<f32>>;   // (m, l) per split and row' : ''}
const D = ${c.D}u;
const D4 = ${D4}u;
const TL = ${c.TL}u;
const DV = ${DV}u;
const TEAMS = ${TEAMS}u;
const U = ${c.U}u;
const VL = ${VL}u;
const DVV = ${DVV}u;
const VD = ${VL * 4}u;    // value columns of this workgroup
const RS = ${VL * 4 + 2}u;   // a team's partial: o[VD], m, l
var<workgroup> red: array<f32, ${TEAMS * (VL * 4 + 2)}>;
@compute @workgroup_size(${c.WS})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let h = wid.x;
  let b = wid.y;
  let bh = b * p.Hkv + h / (p.Hq / p.Hkv);
  let team = lid / TL;
  let lane = lid % TL;
  var qv: array<vec4<f32>, DV>;
  for (var i = 0u; i < DV; i++) { qv[i] = q[(b * p.Hq + h) * D4 + lane + TL * i]; }
  var m = ${pure ? '0.0' : fixed ? 'mass[h] / p.eps' : '-1.0e30'};
  var l = 0.0;
  var o: array<vec4<f32>, DVV>;
  let v0 = (wid.z % ${c.VS}u) * VL;
  let split = wid.z / ${c.VS}u;
  let k0 = split * p.kps;
  let k1 = min(k0 + p.kps, p.keys);
  // a uniform loop (the shuffles need every lane): keys past k1 are loaded clamped and masked
  for (var base = k0; base < k1; base += TEAMS * U) {
    var kk: array<vec4<f32>, ${c.U * DV}>;
    var vv: array<vec4<f32>, ${c.U * DVV}>;
    var ok: array<bool, U>;
    for (var u = 0u; u < U; u++) {
      let j = base + team + TEAMS * u;
      let row = (bh * p.maxLen + min(j, k1 - 1u)) * D4 + lane;
      for (var i = 0u; i < DV; i++) { kk[u * DV + i] = kv[row + TL * i]; }
      if (${vGuard}) {
        for (var i = 0u; i < DVV; i++) { vv[u * DVV + i] = kv[p.vOff4 + row + v0 + TL * i]; }
      }
      ok[u] = j < k1 && valid[b * p.maxLen + min(j, k1 - 1u)] != 0u;
    }
    var s: array<f32, U>;
    for (var u = 0u; u < U; u++) {
      var a = 0.0;
      for (var i = 0u; i < DV; i++) { ${part} }
      ${shuffles.join(' ')}
      s[u] = ${scoreOf};
    }
    ${accumulate}
  }
  if (${vGuard}) {
    for (var i = 0u; i < DVV; i++) {
      let d = (lane + TL * i) * 4u;
      red[team * RS + d] = o[i].x; red[team * RS + d + 1u] = o[i].y; red[team * RS + d + 2u] = o[i].z; red[team * RS + d + 3u] = o[i].w;
    }
  }
  if (lane == 0u) { red[team * RS + VD] = m; red[team * RS + VD + 1u] = l; }
  workgroupBarrier();
  for (var d = lid; d < VD; d += ${c.WS}u) {
    ${merge}
    ${split
      ? `let r = split * p.rows + b * p.Hq + h;
    out[r * D + v0 * 4u + d] = O;
    if (d == 0u && v0 == 0u) { ml[r] = vec2<f32>(${running ? 'M' : 'm'}, L); }`
      : 'out[(b * p.Hq + h) * D + v0 * 4u + d] = select(0.0, O / L, L > 0.0);'}
  }
}`;
}

/** decode (T = 1) attention of every (batch, query head) in one dispatch; keys = start + 1 */
export function headDecodeKernel(
  ctx: GpuContext, c: HeadCfg, q: GPUBuffer, cache: GpuKVCache, kvBuf: GPUBuffer, start: number, p: AttentionParams, fixed: boolean,
  mass: { data: Float32Array }, out: GPUBuffer, parts: { n: number; kps: number; ml: GPUBuffer } | null = null,
): void {
  const split = parts !== null;
  const key = `attn-head:${p.kind}:${fixed}:${c.D}:${c.TL}:${c.WS}:${c.U}:${c.VS}:${split}`;
  const pl = ctx.pipeline(key, () => headDecodeShader(c, p.kind, fixed, split));
  const keys = start + 1;
  const params = new Params().u(cache.maxLen, p.numHeads, p.numKVHeads, keys).f(p.eps, p.scale).u(cache.vOff / 4, parts?.kps ?? keys, cache.batch * p.numHeads);
  const binds = [q, kvBuf, cache.valid, mass, out];
  if (parts) binds.push(parts.ml);
  ctx.dispatch(pl, params, binds, [p.numHeads, cache.batch, c.VS * (parts?.n ?? 1)]);
}

/**
 * How decode attention over `keys` keys splits its key axis for the o projection (parts wanted, at least minKeys keys
 * each, ragged last part): null = no split (one o / l per row).
 */
export function decodeParts(keys: number, parts: number, minKeys: number): { n: number; kps: number } | null {
  const n0 = Math.min(MAX_PARTS, Math.floor(parts), Math.floor(keys / Math.max(1, minKeys)));
  if (!(n0 >= 2)) return null;
  const kps = Math.ceil(keys / n0);
  return { n: Math.ceil(keys / kps), kps };
}

/**
 * WGSL for a GEMV input that is decode attention's split partials (headDecodeShader with split): `xin(i)` is vec4 i
 * of the merged output, rows of D per (batch, query head): o = sum_s w_s o_s / sum_s w_s l_s, w_s = exp(m_s - max m)
 * (sums: every split shares one fixed m, the weights are 1). Bindings: the partials [S][rows][D] as array<vec4<f32>>
 * at `binding`, (m, l) [S][rows] at `mlBinding`; `rows` is the WGSL expression of the row count.
 */
export function partsLoad(S: number, D: number, sums: boolean, binding: number, mlBinding: number, rows: string): string {
  const splits = Array.from({ length: S }, (_, s) => s);
  const ml = splits.map((s) => `let e${s} = ml[${s}u * R + r];`).join(' ');
  const merge = sums
    ? `${splits.map((s) => `let o${s} = part[${s}u * R * D4 + i];`).join(' ')}
  let O = ${splits.map((s) => `o${s}`).join(' + ')};
  let L = ${splits.map((s) => `e${s}.y`).join(' + ')};`
    : `${splits.map((s) => `let o${s} = part[${s}u * R * D4 + i];`).join(' ')}
  let M = max(${splits.map((s) => `e${s}.x`).reduce((a, b) => `max(${a}, ${b})`)}, -1.0e30);
  ${splits.map((s) => `let w${s} = exp(e${s}.x - M);`).join(' ')}
  let O = ${splits.map((s) => `o${s} * w${s}`).join(' + ')};
  let L = ${splits.map((s) => `e${s}.y * w${s}`).join(' + ')};`;
  return `@group(0) @binding(${binding}) var<storage, read> part: array<vec4<f32>>;
@group(0) @binding(${mlBinding}) var<storage, read> ml: array<vec2<f32>>;
fn xin(i: u32) -> vec4<f32> {
  let D4 = ${D / 4}u;
  let R = ${rows};
  let r = i / D4;
  ${ml}
  ${merge}
  return select(vec4<f32>(0.0), O / L, L > 0.0);
}
`;
}
