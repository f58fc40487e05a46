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

export function headDecodeShader(c: HeadCfg, kind: AttentionKind, fixed: boolean): string {
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
struct P { maxLen: u32, Hq: u32, Hkv: u32, keys: u32, eps: f32, scale: f32, vOff4: u32 }
@group(0) @binding(0) var<uniform> p: P;
${attentionBindings()}
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
  let v0 = wid.z * VL;
  // a uniform loop (the shuffles need every lane): keys past p.keys are loaded clamped and masked
  for (var base = 0u; base < p.keys; base += TEAMS * U) {
    var kk: array<vec4<f32>, ${c.U * DV}>;
    var vv: array<vec4<f32>, ${c.U * DVV}>;
    var ok: array<bool, U>;
    for (var u = 0u; u < U; u++) {
      let j = base + team + TEAMS * u;
      let row = (bh * p.maxLen + min(j, p.keys - 1u)) * D4 + lane;
      for (var i = 0u; i < DV; i++) { kk[u * DV + i] = kv[row + TL * i]; }
      if (${vGuard}) {
        for (var i = 0u; i < DVV; i++) { vv[u * DVV + i] = kv[p.vOff4 + row + v0 + TL * i]; }
      }
      ok[u] = j < p.keys && valid[b * p.maxLen + min(j, p.keys - 1u)] != 0u;
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
    out[(b * p.Hq + h) * D + v0 * 4u + d] = select(0.0, O / L, L > 0.0);
  }
}`;
}

/** decode (T = 1) attention of every (batch, query head) in one dispatch; keys = start + 1 */
export function headDecodeKernel(
  ctx: GpuContext, c: HeadCfg, q: GPUBuffer, cache: GpuKVCache, kvBuf: GPUBuffer, start: number, p: AttentionParams, fixed: boolean,
  mass: { data: Float32Array }, out: GPUBuffer,
): void {
  const key = `attn-head:${p.kind}:${fixed}:${c.D}:${c.TL}:${c.WS}:${c.U}:${c.VS}`;
  const pl = ctx.pipeline(key, () => headDecodeShader(c, p.kind, fixed));
  const params = new Params().u(cache.maxLen, p.numHeads, p.numKVHeads, start + 1).f(p.eps, p.scale).u(cache.vOff / 4);
  ctx.dispatch(pl, params, [q, kvBuf, cache.valid, mass, out], [p.numHeads, cache.batch, c.VS]);
}
