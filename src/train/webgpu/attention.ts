/**
 * Training attention on WebGPU, causal over a [B, T] batch, GQA, gravity / gravity-pure / dot. Nothing of size
 * [T x T] is ever stored: the forward keeps each row's log-sum-exp, the backward recomputes probabilities tile
 * by tile from q, k and lse (FlashAttention-2):
 *   forward  workgroup = (b, query head, NT query rows), one thread per row; K/V tiles of BK keys in workgroup
 *            memory; online softmax; writes out and lse.
 *   D_i      = dO_i·O_i per (row, head).
 *   dq pass  same layout as the forward: each thread accumulates its row's dq over the keys <= its position,
 *            and Σ_j dS_ij·u_ij (the mass gradient's share of the row), reduced per workgroup into partials.
 *   dk/dv    workgroup = (b, kv head, NT keys), one thread per key; for every query head of the group it walks
 *            the query tiles (BQ rows of q, dO, lse, D in workgroup memory) after the key and accumulates dk, dv
 *            for the whole group in registers: no atomics, each output written once.
 *   dmass    Σ of the partials per head, times ∂(M²)/∂mass_log = 2M·sigmoid(mass_log) (made on the host in f64).
 * Distances are summed as Σ(q − k)² (no cancellation, never negative), as the inference kernel does.
 * Formulas: see src/train/attention-backward.ts.
 */
import type { TrainAttentionParams } from '../../backend/train-ops.js';
import { GravityError } from '../../errors.js';
import { Params, type GpuContext } from '../../backend/webgpu/context.js';

interface RowCfg { NT: number; BK: number }
interface KeyCfg { NT: number; BQ: number }

function rowCfg(ctx: GpuContext, D: number): RowCfg {
  for (const NT of [64, 32]) for (const BK of [32, 16, 8]) {
    if (2 * BK * D * 4 + NT * 4 <= ctx.maxWorkgroupMem) return { NT, BK };
  }
  throw new GravityError(`attention training: head dim ${D} needs more workgroup memory than this device has (${ctx.maxWorkgroupMem} bytes)`);
}

function keyCfg(ctx: GpuContext, D: number): KeyCfg {
  for (const [NT, BQ] of [[64, 16], [64, 8], [32, 16], [32, 8], [64, 4], [32, 4], [16, 4]]) {
    if (2 * NT * D * 4 + 2 * BQ * D * 4 + 8 * BQ <= ctx.maxWorkgroupMem) return { NT, BQ };
  }
  throw new GravityError(`attention training: head dim ${D} needs more workgroup memory than this device has (${ctx.maxWorkgroupMem} bytes)`);
}

const softplus = (x: number) => (x > 20 ? x : Math.log1p(Math.exp(x)));
const dSoftplus = (x: number) => (x > 20 ? 1 : 1 / (1 + Math.exp(-x)));

const HEADER = `struct P { T: u32, Hq: u32, Hkv: u32, G: u32, eps: f32, scale: f32, ntiles: u32 }
@group(0) @binding(0) var<uniform> p: P;`;

/** WGSL computing `acc` (Σ(q − k)² for gravity, q·k for dot) of vec4 arrays/expressions */
function distTerm(gravity: boolean, qv: string, kv: string): string {
  return gravity ? `{ let df = ${qv} - ${kv}; acc += dot(df, df); }` : `{ acc += dot(${qv}, ${kv}); }`;
}

function scoreExpr(gravity: boolean): string {
  return gravity ? 'm2 / (acc + p.eps)' : 'p.scale * acc';
}

function forwardShader(D4: number, c: RowCfg, kind: TrainAttentionParams['kind']): string {
  const gravity = kind !== 'dot';
  const pure = kind === 'gravity-pure';
  return `${HEADER}
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> msq: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<vec4<f32>>;
@group(0) @binding(6) var<storage, read_write> lse: array<f32>;
const D4 = ${D4}u;
const NT = ${c.NT}u;
const BK = ${c.BK}u;
var<workgroup> Ks: array<vec4<f32>, ${c.BK * D4}>;
var<workgroup> Vs: array<vec4<f32>, ${c.BK * D4}>;
@compute @workgroup_size(${c.NT})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let b = wid.y / p.Hq;
  let h = wid.y % p.Hq;
  let kvh = h / p.G;
  let t0 = wid.x * NT;
  let t = t0 + lid;
  let row = (b * p.T + min(t, p.T - 1u)) * p.Hq + h;
  var qr: array<vec4<f32>, ${D4}>;
  for (var d = 0u; d < D4; d++) { qr[d] = q[row * D4 + d]; }
  let m2 = ${gravity ? 'msq[h]' : '0.0'};
  var m = ${pure ? '0.0' : '-1.0e30'};
  var l = 0.0;
  var o: array<vec4<f32>, ${D4}>;
  let kEnd = min(t0 + NT, p.T);
  for (var kb = 0u; kb < kEnd; kb += BK) {
    for (var e = lid; e < BK * D4; e += NT) {
      let key = kb + e / D4;
      var kv = vec4<f32>();
      var vv = vec4<f32>();
      if (key < p.T) {
        let ko = ((b * p.T + key) * p.Hkv + kvh) * D4 + e % D4;
        kv = k[ko];
        vv = v[ko];
      }
      Ks[e] = kv;
      Vs[e] = vv;
    }
    workgroupBarrier();
    var sc = array<f32, ${c.BK}>();
    var mt = m;
    for (var j = 0u; j < BK; j++) {
      var s = -3.0e38;
      if (kb + j <= t) {
        var acc = 0.0;
        for (var d = 0u; d < D4; d++) ${distTerm(gravity, 'qr[d]', 'Ks[j * D4 + d]')}
        s = ${scoreExpr(gravity)};
      }
      sc[j] = s;
      mt = max(mt, s);
    }
    ${pure ? '' : `let alpha = exp(m - mt);
    m = mt;
    l *= alpha;
    for (var d = 0u; d < D4; d++) { o[d] *= alpha; }`}
    for (var j = 0u; j < BK; j++) {
      if (sc[j] > -1.0e38) {
        let pj = ${pure ? 'sc[j]' : 'exp(sc[j] - m)'};
        l += pj;
        for (var d = 0u; d < D4; d++) { o[d] = fma(vec4<f32>(pj), Vs[j * D4 + d], o[d]); }
      }
    }
    workgroupBarrier();
  }
  if (t < p.T) {
    for (var d = 0u; d < D4; d++) { out[row * D4 + d] = o[d] / l; }
    lse[row] = ${pure ? 'log(l)' : 'm + log(l)'};
  }
}`;
}

function deltaShader(D4: number): string {
  return `struct P { n: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> dout: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> out: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read_write> delta: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let r = (wid.y * nwg.x + wid.x) * 64u + lid;
  if (r >= p.n) { return; }
  var s = 0.0;
  for (var d = 0u; d < ${D4}u; d++) { s += dot(dout[r * ${D4}u + d], out[r * ${D4}u + d]); }
  delta[r] = s;
}`;
}

/** P, dS of one (row, key) pair from acc (distance or dot), dp, L, Di: shared by the dq and dk/dv passes */
function probGrad(kind: TrainAttentionParams['kind'], L: string, Di: string): string {
  const gravity = kind !== 'dot';
  const pure = kind === 'gravity-pure';
  return `${gravity ? 'let u = 1.0 / (acc + p.eps);\n        let s = m2 * u;' : 'let s = p.scale * acc;'}
        let P = ${pure ? `s * exp(-${L})` : `exp(s - ${L})`};
        let dS = ${pure ? `(dp - ${Di}) * exp(-${L})` : `P * (dp - ${Di})`};`;
}

function dqShader(D4: number, c: RowCfg, kind: TrainAttentionParams['kind']): string {
  const gravity = kind !== 'dot';
  return `${HEADER}
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> dout: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> lse: array<f32>;
@group(0) @binding(6) var<storage, read> delta: array<f32>;
@group(0) @binding(7) var<storage, read> msq: array<f32>;
@group(0) @binding(8) var<storage, read_write> dq: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> mpart: array<f32>;
const D4 = ${D4}u;
const NT = ${c.NT}u;
const BK = ${c.BK}u;
var<workgroup> Ks: array<vec4<f32>, ${c.BK * D4}>;
var<workgroup> Vs: array<vec4<f32>, ${c.BK * D4}>;
var<workgroup> red: array<f32, ${c.NT}>;
@compute @workgroup_size(${c.NT})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let b = wid.y / p.Hq;
  let h = wid.y % p.Hq;
  let kvh = h / p.G;
  let t0 = wid.x * NT;
  let t = t0 + lid;
  let row = (b * p.T + min(t, p.T - 1u)) * p.Hq + h;
  var qr: array<vec4<f32>, ${D4}>;
  var dor: array<vec4<f32>, ${D4}>;
  var g: array<vec4<f32>, ${D4}>;
  for (var d = 0u; d < D4; d++) { qr[d] = q[row * D4 + d]; dor[d] = dout[row * D4 + d]; }
  let L = lse[row];
  let Di = delta[row];
  let m2 = ${gravity ? 'msq[h]' : '0.0'};
  var dm2 = 0.0;
  let kEnd = min(t0 + NT, p.T);
  for (var kb = 0u; kb < kEnd; kb += BK) {
    for (var e = lid; e < BK * D4; e += NT) {
      let key = kb + e / D4;
      var kv = vec4<f32>();
      var vv = vec4<f32>();
      if (key < p.T) {
        let ko = ((b * p.T + key) * p.Hkv + kvh) * D4 + e % D4;
        kv = k[ko];
        vv = v[ko];
      }
      Ks[e] = kv;
      Vs[e] = vv;
    }
    workgroupBarrier();
    for (var j = 0u; j < BK; j++) {
      if (kb + j <= t && t < p.T) {
        var acc = 0.0;
        var dp = 0.0;
        for (var d = 0u; d < D4; d++) {
          ${distTerm(gravity, 'qr[d]', 'Ks[j * D4 + d]')}
          dp += dot(dor[d], Vs[j * D4 + d]);
        }
        ${probGrad(kind, 'L', 'Di')}
        ${gravity ? `dm2 += dS * u;
        let gg = -2.0 * m2 * u * u * dS;
        for (var d = 0u; d < D4; d++) { g[d] = fma(vec4<f32>(gg), qr[d] - Ks[j * D4 + d], g[d]); }` : `let gg = p.scale * dS;
        for (var d = 0u; d < D4; d++) { g[d] = fma(vec4<f32>(gg), Ks[j * D4 + d], g[d]); }`}
      }
    }
    workgroupBarrier();
  }
  if (t < p.T) {
    for (var d = 0u; d < D4; d++) { dq[row * D4 + d] = g[d]; }
  }
  red[lid] = dm2;
  workgroupBarrier();
  for (var s = NT / 2u; s > 0u; s >>= 1u) {
    if (lid < s) { red[lid] += red[lid + s]; }
    workgroupBarrier();
  }
  if (lid == 0u) { mpart[wid.y * p.ntiles + wid.x] = red[0]; }
}`;
}

function dkvShader(D4: number, c: KeyCfg, kind: TrainAttentionParams['kind']): string {
  const gravity = kind !== 'dot';
  return `${HEADER}
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> k: array<vec4<f32>>;
@group(0) @binding(3) var<storage, read> v: array<vec4<f32>>;
@group(0) @binding(4) var<storage, read> dout: array<vec4<f32>>;
@group(0) @binding(5) var<storage, read> lse: array<f32>;
@group(0) @binding(6) var<storage, read> delta: array<f32>;
@group(0) @binding(7) var<storage, read> msq: array<f32>;
@group(0) @binding(8) var<storage, read_write> dk: array<vec4<f32>>;
@group(0) @binding(9) var<storage, read_write> dv: array<vec4<f32>>;
const D4 = ${D4}u;
const NT = ${c.NT}u;
const BQ = ${c.BQ}u;
// each thread's own key and value, column-major so that consecutive threads read consecutive vec4s
var<workgroup> Kj: array<vec4<f32>, ${c.NT * D4}>;
var<workgroup> Vj: array<vec4<f32>, ${c.NT * D4}>;
var<workgroup> Qs: array<vec4<f32>, ${c.BQ * D4}>;
var<workgroup> Os: array<vec4<f32>, ${c.BQ * D4}>;
var<workgroup> Ls: array<f32, ${c.BQ}>;
var<workgroup> Ds: array<f32, ${c.BQ}>;
@compute @workgroup_size(${c.NT})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let b = wid.y / p.Hkv;
  let kvh = wid.y % p.Hkv;
  let j0 = wid.x * NT;
  let j = j0 + lid;
  let krow = (b * p.T + min(j, p.T - 1u)) * p.Hkv + kvh;
  for (var d = 0u; d < D4; d++) { Kj[d * NT + lid] = k[krow * D4 + d]; Vj[d * NT + lid] = v[krow * D4 + d]; }
  var gk: array<vec4<f32>, ${D4}>;
  var gv: array<vec4<f32>, ${D4}>;
  for (var gi = 0u; gi < p.G; gi++) {
    let h = kvh * p.G + gi;
    let m2 = ${gravity ? 'msq[h]' : '0.0'};
    for (var qb = j0; qb < p.T; qb += BQ) {
      for (var e = lid; e < BQ * D4; e += NT) {
        let i = qb + e / D4;
        var qv = vec4<f32>();
        var ov = vec4<f32>();
        if (i < p.T) {
          let o = ((b * p.T + i) * p.Hq + h) * D4 + e % D4;
          qv = q[o];
          ov = dout[o];
        }
        Qs[e] = qv;
        Os[e] = ov;
      }
      for (var r = lid; r < BQ; r += NT) {
        let i = min(qb + r, p.T - 1u);
        Ls[r] = lse[(b * p.T + i) * p.Hq + h];
        Ds[r] = delta[(b * p.T + i) * p.Hq + h];
      }
      workgroupBarrier();
      for (var r = 0u; r < BQ; r++) {
        let i = qb + r;
        if (i < p.T && i >= j) {
          var acc = 0.0;
          var dp = 0.0;
          for (var d = 0u; d < D4; d++) {
            ${distTerm(gravity, 'Qs[r * D4 + d]', 'Kj[d * NT + lid]')}
            dp += dot(Os[r * D4 + d], Vj[d * NT + lid]);
          }
          ${probGrad(kind, 'Ls[r]', 'Ds[r]')}
          for (var d = 0u; d < D4; d++) { gv[d] = fma(vec4<f32>(P), Os[r * D4 + d], gv[d]); }
          ${gravity ? `let gg = 2.0 * m2 * u * u * dS;
          for (var d = 0u; d < D4; d++) { gk[d] = fma(vec4<f32>(gg), Qs[r * D4 + d] - Kj[d * NT + lid], gk[d]); }` : `let gg = p.scale * dS;
          for (var d = 0u; d < D4; d++) { gk[d] = fma(vec4<f32>(gg), Qs[r * D4 + d], gk[d]); }`}
        }
      }
      workgroupBarrier();
    }
  }
  if (j < p.T) {
    for (var d = 0u; d < D4; d++) { dk[krow * D4 + d] = gk[d]; dv[krow * D4 + d] = gv[d]; }
  }
}`;
}

function massShader(): string {
  return `struct P { Hq: u32, n: u32, B: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> mpart: array<f32>;
@group(0) @binding(2) var<storage, read> factor: array<f32>;
@group(0) @binding(3) var<storage, read_write> dm: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  let h = gid.x;
  if (h >= p.Hq) { return; }
  var s = 0.0;
  for (var b = 0u; b < p.B; b++) {
    for (var i = 0u; i < p.n; i++) { s += mpart[(b * p.Hq + h) * p.n + i]; }
  }
  dm[h] = s * factor[h];
}`;
}

function headData(p: TrainAttentionParams): { msq: Float32Array; factor: Float32Array } {
  const H = p.numHeads;
  const msq = new Float32Array(H);
  const factor = new Float32Array(H);
  // gravity-pure: the mass cancels (Σ_j P_ij(dP_ij − D_i) = 0), so its gradient is exactly 0 as on the cpu
  if (p.kind === 'gravity') {
    for (let h = 0; h < H; h++) {
      const ml = p.massLog![h];
      const m = softplus(ml);
      msq[h] = m * m;
      factor[h] = 2 * m * dSoftplus(ml);
    }
  } else if (p.kind === 'gravity-pure') {
    for (let h = 0; h < H; h++) msq[h] = softplus(p.massLog![h]) ** 2;
  }
  return { msq, factor };
}

function params(B: number, T: number, p: TrainAttentionParams, ntiles: number): Params {
  return new Params().u(T, p.numHeads, p.numKVHeads, p.numHeads / p.numKVHeads).f(p.eps, p.scale).u(ntiles);
}

function checkShape(ctx: GpuContext, B: number, p: TrainAttentionParams): number {
  const D = p.headDim;
  if (D % 4 !== 0) throw new GravityError(`attention training: head dim ${D} is not a multiple of 4 (the webgpu kernels read vec4)`);
  if (B * p.numHeads > ctx.maxGroups) throw new GravityError(`attention training: ${B} sequences x ${p.numHeads} heads is more workgroups than one dispatch allows`);
  return D / 4;
}

/** out [B*T, Hq*D], lse [B*T, Hq] */
export function attentionForwardKernel(
  ctx: GpuContext, q: GPUBuffer, k: GPUBuffer, v: GPUBuffer, out: GPUBuffer, lse: GPUBuffer, B: number, T: number, p: TrainAttentionParams,
): void {
  const D4 = checkShape(ctx, B, p);
  const c = rowCfg(ctx, p.headDim);
  const pl = ctx.pipeline(`train-attn-fwd:${p.kind}:${D4}:${c.NT}:${c.BK}`, () => forwardShader(D4, c, p.kind));
  const { msq } = headData(p);
  ctx.dispatch(pl, params(B, T, p, 0), [q, k, v, { data: msq }, out, lse], [Math.ceil(T / c.NT), B * p.numHeads]);
}

/** dq [B*T, Hq*D], dk, dv [B*T, Hkv*D], dm [Hq] (gravity kinds) */
export function attentionBackwardKernel(
  ctx: GpuContext, dout: GPUBuffer, q: GPUBuffer, k: GPUBuffer, v: GPUBuffer, out: GPUBuffer, lse: GPUBuffer,
  dq: GPUBuffer, dk: GPUBuffer, dv: GPUBuffer, dm: GPUBuffer | null, B: number, T: number, p: TrainAttentionParams,
): void {
  const D4 = checkShape(ctx, B, p);
  const rows = B * T * p.numHeads;
  const delta = ctx.alloc(rows * 4, 'attention backward D');
  const dpl = ctx.pipeline(`train-attn-delta:${D4}`, () => deltaShader(D4));
  ctx.dispatch(dpl, new Params().u(rows), [dout, out, delta], ctx.grid(Math.ceil(rows / 64)));
  const { msq, factor } = headData(p);
  const rc = rowCfg(ctx, p.headDim);
  const ntiles = Math.ceil(T / rc.NT);
  const mpart = ctx.alloc(B * p.numHeads * ntiles * 4, 'attention mass partials');
  const qpl = ctx.pipeline(`train-attn-dq:${p.kind}:${D4}:${rc.NT}:${rc.BK}`, () => dqShader(D4, rc, p.kind));
  ctx.dispatch(qpl, params(B, T, p, ntiles), [q, k, v, dout, lse, delta, { data: msq }, dq, mpart], [ntiles, B * p.numHeads]);
  const kc = keyCfg(ctx, p.headDim);
  const kpl = ctx.pipeline(`train-attn-dkv:${p.kind}:${D4}:${kc.NT}:${kc.BQ}`, () => dkvShader(D4, kc, p.kind));
  ctx.dispatch(kpl, params(B, T, p, 0), [q, k, v, dout, lse, delta, { data: msq }, dk, dv], [Math.ceil(T / kc.NT), B * p.numKVHeads]);
  if (dm) {
    const mpl = ctx.pipeline('train-attn-mass', massShader);
    ctx.dispatch(mpl, new Params().u(p.numHeads, ntiles, B), [mpart, { data: factor }, dm], [Math.ceil(p.numHeads / 64)]);
  }
  ctx.release(delta);
  ctx.release(mpart);
}
