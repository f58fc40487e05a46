/**
 * Fused pieces of a decoder layer (Backend.fused). Decode pays per dispatch twice: the host records each one
 * (Dawn's node binding plus our JS, ~15 µs on the H200's host) and the GPU drains between dependent ones, so a
 * token's ~620 unfused dispatches took ~18 ms for ~6 ms of GPU work. These kernels cut a layer from 17 dispatches
 * to 6 (q/k/v, attention and its split-K merge, o, gate/up, down; 221 per token for Qwen2.5-3B):
 *  - the RMSNorm before q/k/v and before gate/up, inside those GEMVs: W·(rmsnorm(x)·g) = (W·(x·g)) / rms(x), so each
 *    warp's dot loop reads x·g and also sums x² of the same elements, and the result is scaled after the reduction
 *    (NORM_MODE 'inline': the weight loads start at once; 'stage', the earlier way kept to compare, puts
 *    rmsnorm(x)·g in workgroup memory first, two barriers and an L2 round trip before the first weight load).
 *  - the residual adds after o and down: in the GEMV's epilogue (linear.ts, `res`).
 *  - qkv GEMV (N <= GEMV_MAX_N): the q, k and v projections (+ bias) in ONE dispatch; each q/k workgroup owns
 *    4 RoPE pairs (i, i + D/2) of one head, so the rotation is done in the epilogue, and k, v are written
 *    straight into the cache slots. Replaces 3 GEMVs, 2 ropes and writeKV.
 *  - gate/up GEMV with the SwiGLU epilogue: each warp reads the gate row and the up row of one output.
 *  - prefill (N > GEMV_MAX_N): the GEMMs stay, then one kernel does RoPE on q and k and the KV write.
 * Results equal the unfused ops' up to f32 rounding (the norm's sum of squares adds in another order and 1/rms
 * multiplies after the dot instead of before, ~1e-7 relative).
 */
import { Params, type Binding, type GpuContext } from './context.js';
import { FLAT_WG, NORM_MODE, NORM_STAGE_CAP, enableSubgroups, gemvDot, normPrologue, normVecLoad, scalarLoad, vectorLoad, warpSums, type WDType } from './wgsl.js';
import { UNROLL } from './linear.js';

const LANES = 32;
const WARPS = 8;
const WG = LANES * WARPS;

/** true when the fused GEMV can read x and the weights with vector loads */
export function fusedGemvFits(IN: number, dt: WDType): boolean {
  return IN % (dt === 'F32' ? 4 : 8) === 0;
}

/**
 * The pieces of a one-row-per-warp GEMV shader over M weight matrices read together that depend on how an RMSNorm of
 * x is applied (NORM_MODE): `accN` accumulators per thread (M * NB dot products, plus NB sums of x² when inline) and
 * their warp sums `red`, the norm weight's declaration `gDecl(binding)`, the staging prologue `np` (stage),
 * `rs(n, w)`, warp w's factor 1/rms of row n to multiply its sums by (inline: acc[M * NB + n] summed x² of the same
 * row, every warp read all of x), and `dot(ws)`, the dot loop over the M matrices `ws`.
 */
function normPlan(NB: number, dt: WDType, sg: number, norm: WDType | null, M: number) {
  const inl = !!norm && NORM_MODE === 'inline';
  const accN = (inl ? M + 1 : M) * NB;
  const red = warpSums(accN, WARPS, sg);
  const np = norm && !inl ? normPrologue(NB, sg) : null;
  const gDecl = (binding: number) => (!norm ? '' : inl ? normVecLoad('g', binding, norm) : scalarLoad('g', binding, norm));
  const rs = (n: string, w: string) => (inl ? ` * (1.0 / sqrt(${red.sum(`${M * NB}u + ${n}`, w)} / f32(p.IN) + p.eps))` : '');
  const dot = (ws: string[]) => gemvDot(ws, dt, NB, UNROLL, np ? 'xs' : 'x', inl);
  return { accN, red, np, gDecl, rs, dot };
}

/**
 * q/k/v GEMV + bias + RoPE + KV write. Workgroups: Rq/8 for q, Rk/8 for k, Rk/8 for v (Rq = Hq*D, Rk = Hkv*D).
 * In a q or k workgroup, warp r computes row head*D + blk*4 + (r & 3) + (r >> 2) * D/2: warps r and r + 4 hold
 * a RoPE pair. Bindings: x, wq, wk, wv, cs (cos, sin per row and pair, from the arena), q out, kv cache[, bias].
 */
function qkvShader(NB: number, dt: WDType, bias: WDType | null, D: number, sg: number, norm: WDType | null): string {
  const half = D / 2;
  const b = (i: string) => (bias ? ` + ld_bias(${i})` : '');
  const { accN, red, np, gDecl, rs, dot } = normPlan(NB, dt, sg, norm, 1);
  return `${enableSubgroups(sg)}struct P { IN: u32, N: u32, Rq: u32, Rk: u32, T: u32, maxLen: u32, start: u32, Hkv: u32, vOff: u32, groups: u32, eps: f32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
${vectorLoad('wq', 2, dt)}${vectorLoad('wk', 3, dt)}${vectorLoad('wv', 4, dt)}
@group(0) @binding(5) var<storage, read> cs: array<vec2<f32>>;
@group(0) @binding(6) var<storage, read_write> q: array<f32>;
@group(0) @binding(7) var<storage, read_write> kv: array<f32>;
${bias ? scalarLoad('bias', 8, bias) : ''}
${gDecl(bias ? 9 : 8)}
${np ? np.decl : ''}
const D = ${D}u;
const HALF = ${half}u;
${red.decl}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  ${FLAT_WG}
  if (wg >= p.groups) { return; }
  let lane = lid % ${LANES}u;
  let r = lid / ${LANES}u;
  let gq = p.Rq / 8u;
  let gk = p.Rk / 8u;
  var seg = 0u;
  var s = wg;
  if (wg >= gq + gk) { seg = 2u; s = wg - gq - gk; } else if (wg >= gq) { seg = 1u; s = wg - gq; }
  var row = s * 8u + r;
  if (seg < 2u) { row = (s / (D / 8u)) * D + (s % (D / 8u)) * 4u + (r & 3u) + (r >> 2u) * HALF; }
  let K4 = p.IN / 4u;
  ${dt === 'F32' ? '' : 'let K8 = p.IN / 8u;'}
  ${np ? np.code : ''}
  var acc: array<f32, ${accN}>;
  if (seg == 0u) ${dot(['wq'])} else if (seg == 1u) ${dot(['wk'])} else ${dot(['wv'])}
  ${red.code}
  if (lane != 0u) { return; }
  let bo = select(select(0u, p.Rq, seg == 1u), p.Rq + p.Rk, seg == 2u);   // bias offset of the segment
  for (var n = 0u; n < ${NB}u; n++) {
    if (n >= p.N) { break; }
    let bb = n / p.T;
    let t = n - bb * p.T;
    let val = ${red.sum('n', 'r')}${rs('n', 'r')}${b('bo + row')};
    let hd = row / D;
    let slot = (bb * p.Hkv + hd) * p.maxLen + p.start + t;
    if (seg == 2u) {
      kv[p.vOff + slot * D + row % D] = val;
    } else if (r < 4u) {
      let x2 = ${red.sum('n', 'r + 4u')}${rs('n', 'r + 4u')}${b('bo + row + HALF')};
      let i = row % D;
      let c = cs[n * HALF + i];
      let y1 = val * c.x - x2 * c.y;
      let y2 = x2 * c.x + val * c.y;
      if (seg == 0u) {
        q[n * p.Rq + row] = y1;
        q[n * p.Rq + row + HALF] = y2;
      } else {
        kv[slot * D + i] = y1;
        kv[slot * D + i + HALF] = y2;
      }
    }
  }
}`;
}

export interface QKVArgs {
  x: GPUBuffer; wq: GPUBuffer; wk: GPUBuffer; wv: GPUBuffer; dt: WDType;
  /** [bq; bk; bv] in one buffer, or null */
  bias: GPUBuffer | null; bdt: WDType | null;
  /** (cos, sin) [N, D/2] of each row's position */
  cs: Float32Array;
  q: GPUBuffer; kv: GPUBuffer;
  N: number; IN: number; Hq: number; Hkv: number; D: number; T: number; maxLen: number; start: number; vOff: number;
  /** x is the residual stream and the GEMV input is rmsnorm(x) * g (see normFits) */
  norm?: { g: GPUBuffer; dt: WDType; eps: number };
}

/** whether a GEMV can take rmsnorm(x) of N rows of IN (staged: in workgroup memory) and bind one more buffer */
export function normFits(ctx: GpuContext, NB: number, IN: number, buffers: number): boolean {
  if (IN % 4 !== 0 || buffers > ctx.maxStorageBuffers) return false;
  return NORM_MODE === 'inline' || (NB * IN <= 4 * NORM_STAGE_CAP && ctx.maxWorkgroupMem >= 16 * NORM_STAGE_CAP + 8192);
}

export function qkvRopeGemv(ctx: GpuContext, a: QKVArgs, NB: number): void {
  const Rq = a.Hq * a.D;
  const Rk = a.Hkv * a.D;
  const groups = (Rq + 2 * Rk) / 8;
  const nd = a.norm ? a.norm.dt : null;
  const pl = ctx.pipeline(`qkv-rope:${NB}:${a.dt}:${a.bdt}:${a.D}:sg${ctx.sg}:norm${nd}`, () => qkvShader(NB, a.dt, a.bias ? a.bdt : null, a.D, ctx.sg, nd));
  const params = new Params().u(a.IN, a.N, Rq, Rk, a.T, a.maxLen, a.start, a.Hkv, a.vOff, groups).f(a.norm?.eps ?? 0);
  const binds: Binding[] = [a.x, a.wq, a.wk, a.wv, { data: a.cs }, a.q, a.kv];
  if (a.bias) binds.push(a.bias);
  if (a.norm) binds.push(a.norm.g);
  ctx.dispatch(pl, params, binds, ctx.grid(groups));
}

/**
 * gate/up GEMV + SwiGLU: workgroup owns outputs 8 wg .. 8 wg + 7; warp r reads the gate row and the up row of output
 * 8 wg + r, x loaded once for both and twice the loads in flight (on the H200 28.8 -> 24.9 µs against 4 warps on
 * gate rows and 4 on up rows, which the short 2048-wide rows left with too few bytes in flight; two outputs per
 * warp, to fit the 1376 workgroups in one wave, measured slower: 32.8 µs).
 */
function gateUpShader(NB: number, dt: WDType, bias: WDType | null, sg: number, norm: WDType | null): string {
  const { accN, red, np, gDecl, rs, dot } = normPlan(NB, dt, sg, norm, 2);
  return `${enableSubgroups(sg)}struct P { IN: u32, N: u32, I: u32, eps: f32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
${vectorLoad('wgate', 2, dt)}${vectorLoad('wup', 3, dt)}
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
${bias ? scalarLoad('bias', 5, bias) : ''}
${gDecl(bias ? 6 : 5)}
${np ? np.decl : ''}
${red.decl}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  ${FLAT_WG}
  let lane = lid % ${LANES}u;
  let r = lid / ${LANES}u;
  let K4 = p.IN / 4u;
  ${dt === 'F32' ? '' : 'let K8 = p.IN / 8u;'}
  ${np ? np.code : ''}
  let row = wg * ${WARPS}u + r;
  var acc: array<f32, ${accN}>;
  if (row < p.I) ${dot(['wgate', 'wup'])}
  ${red.code}
  if (lane != 0u || row >= p.I) { return; }
  for (var n = 0u; n < ${NB}u; n++) {
    if (n >= p.N) { break; }
    let g = ${red.sum('n', 'r')}${rs('n', 'r')}${bias ? ' + ld_bias(row)' : ''};
    let u = ${red.sum(`${NB}u + n`, 'r')}${rs('n', 'r')}${bias ? ' + ld_bias(p.I + row)' : ''};
    y[n * p.I + row] = g / (1.0 + exp(-g)) * u;
  }
}`;
}

export function gateUpGemv(
  ctx: GpuContext, x: GPUBuffer, wg: GPUBuffer, wu: GPUBuffer, dt: WDType, bias: GPUBuffer | null, bdt: WDType | null,
  y: GPUBuffer, N: number, NB: number, IN: number, I: number, norm: { g: GPUBuffer; dt: WDType; eps: number } | null = null,
): void {
  const nd = norm ? norm.dt : null;
  const pl = ctx.pipeline(`gateup-swiglu:${NB}:${dt}:${bias ? bdt : null}:sg${ctx.sg}:norm${nd}`, () => gateUpShader(NB, dt, bias ? bdt : null, ctx.sg, nd));
  const binds: Binding[] = [x, wg, wu, y];
  if (bias) binds.push(bias);
  if (norm) binds.push(norm.g);
  ctx.dispatch(pl, new Params().u(IN, N, I).f(norm?.eps ?? 0), binds, ctx.grid(Math.ceil(I / WARPS)));
}

/**
 * Prefill: q0 [N, Hq*D], k0, v0 [N, Hkv*D] from the GEMMs -> q = rope(q0), cache k = rope(k0), cache v = v0.
 * One 64-thread workgroup per (row, head of q, k or v). cos/sin from the backend's rope table, as ropeKernel.
 */
export function ropeWriteKVKernel(
  ctx: GpuContext, q0: GPUBuffer, k0: GPUBuffer, v0: GPUBuffer, positions: Int32Array, table: GPUBuffer,
  q: GPUBuffer, kv: GPUBuffer, N: number, Hq: number, Hkv: number, D: number, T: number, maxLen: number, start: number, vOff: number,
): void {
  const pl = ctx.pipeline(`rope-writekv:${D}`, () => `struct P { Hq: u32, Hkv: u32, T: u32, maxLen: u32, start: u32, vOff: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> q0: array<f32>;
@group(0) @binding(2) var<storage, read> k0: array<f32>;
@group(0) @binding(3) var<storage, read> v0: array<f32>;
@group(0) @binding(4) var<storage, read> pos: array<i32>;
@group(0) @binding(5) var<storage, read> cs: array<vec2<f32>>;
@group(0) @binding(6) var<storage, read_write> q: array<f32>;
@group(0) @binding(7) var<storage, read_write> kv: array<f32>;
const D = ${D}u;
const HALF = ${D / 2}u;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  ${FLAT_WG}
  let HT = p.Hq + 2u * p.Hkv;
  let hh = wg % HT;
  let row = wg / HT;
  let bb = row / p.T;
  let t = row - bb * p.T;
  let ps = pos[row];
  if (hh >= p.Hq + p.Hkv) {
    let h = hh - p.Hq - p.Hkv;
    let slot = (bb * p.Hkv + h) * p.maxLen + p.start + t;
    for (var d = lid; d < D; d += 64u) { kv[p.vOff + slot * D + d] = v0[(row * p.Hkv + h) * D + d]; }
    return;
  }
  for (var i = lid; i < HALF; i += 64u) {
    let c = cs[u32(abs(ps)) * HALF + i];
    let sn = select(c.y, -c.y, ps < 0);
    if (hh < p.Hq) {
      let o = (row * p.Hq + hh) * D + i;
      let x1 = q0[o];
      let x2 = q0[o + HALF];
      q[o] = x1 * c.x - x2 * sn;
      q[o + HALF] = x2 * c.x + x1 * sn;
    } else {
      let h = hh - p.Hq;
      let o = (row * p.Hkv + h) * D + i;
      let x1 = k0[o];
      let x2 = k0[o + HALF];
      let slot = (bb * p.Hkv + h) * p.maxLen + p.start + t;
      kv[slot * D + i] = x1 * c.x - x2 * sn;
      kv[slot * D + i + HALF] = x2 * c.x + x1 * sn;
    }
  }
}`);
  const params = new Params().u(Hq, Hkv, T, maxLen, start, vOff);
  ctx.dispatch(pl, params, [q0, k0, v0, { data: positions }, table, q, kv], ctx.grid(N * (Hq + 2 * Hkv)));
}

/** Workgroups per row in the first argmax pass: a 152k vocabulary in one workgroup took ~230 µs on the H200. */
const ARGMAX_SPLIT = 128;

/**
 * Index of the largest value of each row of x [R, V] (the first one on ties, as a host loop with `>` finds), or
 * 0xffffffff (-1) when the row holds NaN or infinity. Two passes: ARGMAX_SPLIT workgroups per row each reduce a
 * chunk to (value, index, bad), then one workgroup per row reduces those partials with the same rules.
 */
export function argmaxKernel(ctx: GpuContext, x: GPUBuffer, out: GPUBuffer, R: number, V: number): void {
  const G = Math.max(1, Math.min(ARGMAX_SPLIT, Math.ceil(V / 1024)));
  const chunk = Math.ceil(V / G);
  const part = ctx.alloc(R * G * 12, 'argmax partials');
  const shader = (stage: 1 | 2) => `struct P { V: u32, G: u32, chunk: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> ${stage === 1 ? 'x: array<f32>' : 'part: array<u32>'};
@group(0) @binding(2) var<storage, read_write> out: array<u32>;
var<workgroup> bv: array<f32, 256>;
var<workgroup> bi: array<u32, 256>;
var<workgroup> bad: atomic<u32>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  var best = -3.4e38;
  var idx = 0xffffffffu;
  var finite = true;
  ${stage === 1 ? `let row = wid.y;
  let lo = wid.x * p.chunk;
  let hi = min(lo + p.chunk, p.V);
  for (var i = lo + lid; i < hi; i += 256u) {
    let v = x[row * p.V + i];
    // NaN fails every comparison, so this also catches NaN
    finite = finite && abs(v) <= 3.40282346e38;
    if (v > best || idx == 0xffffffffu) { best = v; idx = i; }
  }` : `let row = wid.x;
  for (var g = lid; g < p.G; g += 256u) {
    let o = (row * p.G + g) * 3u;
    let v = bitcast<f32>(part[o]);
    let j = part[o + 1u];
    finite = finite && part[o + 2u] == 0u;
    // partials come in index order, so a later equal value never wins
    if (j != 0xffffffffu && (idx == 0xffffffffu || v > best)) { best = v; idx = j; }
  }`}
  bv[lid] = best;
  bi[lid] = idx;
  if (!finite) { atomicStore(&bad, 1u); }
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (lid < s) {
      let v = bv[lid + s];
      let j = bi[lid + s];
      if (j != 0xffffffffu && (bi[lid] == 0xffffffffu || v > bv[lid] || (v == bv[lid] && j < bi[lid]))) { bv[lid] = v; bi[lid] = j; }
    }
    workgroupBarrier();
  }
  let anyBad = atomicLoad(&bad);
  if (lid == 0u) {
    ${stage === 1 ? `let o = (row * p.G + wid.x) * 3u;
    out[o] = bitcast<u32>(bv[0]);
    out[o + 1u] = bi[0];
    out[o + 2u] = anyBad;` : `out[row] = select(select(bi[0], 0u, bi[0] == 0xffffffffu), 0xffffffffu, anyBad != 0u);`}
  }
}`;
  const params = new Params().u(V, G, chunk);
  ctx.dispatch(ctx.pipeline('argmax:1', () => shader(1)), params, [x, part], [G, R]);
  ctx.dispatch(ctx.pipeline('argmax:2', () => shader(2)), params, [part, out], [R]);
  ctx.release(part); // reused only by work recorded later, which the GPU runs after these two passes
}
