/**
 * y[N, OUT] = x[N, IN] · w[OUT, IN]^T (+ b), weights in their stored width.
 *
 * GEMV (N <= GEMV_MAX_N, decode): memory bound, so the point is reading w once, coalesced: 32 lanes walk one
 * weight row along IN in vector loads (vec4<f32>, or vec4<u32> = 8 halves), UNROLL loads per lane issued before
 * the FMAs, each lane keeps N partial sums, and the 32 lanes reduce with subgroup shuffles where the device has
 * `subgroups` (else in workgroup memory), see warpSums. 8 rows per 256-thread workgroup. The shader is specialised for
 * N in {1, 2, 4, 8} (unrolled accumulators); other N use the next size up with uniform guards.
 *
 * GEMM (prefill): 64x64 output tiles (128x128 for big prefills), 16-deep K slices staged in workgroup memory,
 * 4x4 (8x8) adjacent outputs per thread whose operands are read as vec4 from workgroup memory.
 */
import { Params, type GpuContext } from './context.js';
import { FLAT_WG, enableSubgroups, gemvDotBody, scalarLoad, vectorLoad, vecWidth, warpSums, type WDType } from './wgsl.js';

export const GEMV_MAX_N = 8;
const LANES = 32;
const ROWS = 8;
/** 16-byte loads in flight per lane: 8 x 32 lanes cover a 2048-wide bf16 row in one step */
export const UNROLL = 4;

/** Row counts are bucketed to 1, 2, 4, 8 (guarded by the runtime N) so that few pipelines get compiled. */
function gemvBucket(N: number): number {
  return N <= 1 ? 1 : N <= 2 ? 2 : N <= 4 ? 4 : 8;
}

function gemvShader(N: number, dt: WDType, vec: boolean, bias: WDType | null, sg: number): string {
  // with N = bucket size, `if (n < p.N)` is uniform control flow; for N = 1 it is left out
  const guard = N === 1 ? '' : 'if (n < p.N) ';
  const xDecl = vec
    ? `@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;`
    : `@group(0) @binding(1) var<storage, read> x: array<f32>;`;
  const body = vec
    ? `let K4 = p.IN / 4u;
    ${dt === 'F32' ? '' : 'let K8 = p.IN / 8u;'}
    let row = o;
    ${gemvDotBody('w', dt, N, UNROLL)}`
    : `for (var k = lane; k < p.IN; k += ${LANES}u) {
      let wv = ld_w(o * p.IN + k);
      for (var n = 0u; n < ${N}u; n++) { ${guard}{ acc[n] += wv * x[n * p.IN + k]; } }
    }`;
  const red = warpSums(N, ROWS, sg);
  return `${enableSubgroups(sg)}struct P { IN: u32, OUT: u32, N: u32 }
@group(0) @binding(0) var<uniform> p: P;
${xDecl}
${vec ? vectorLoad('w', 2, dt) : scalarLoad('w', 2, dt)}
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
${bias ? scalarLoad('bias', 4, bias) : ''}
${red.decl}
@compute @workgroup_size(${LANES * ROWS})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  ${FLAT_WG}
  let lane = lid % ${LANES}u;
  let o = wg * ${ROWS}u + lid / ${LANES}u;
  var acc: array<f32, ${N}>;
  if (o < p.OUT) {
    ${body}
  }
  ${red.code}
  if (lane == 0u && o < p.OUT) {
    for (var n = 0u; n < ${N}u; n++) { ${guard}{ y[n * p.OUT + o] = ${red.sum('n', 'lid / 32u')}${bias ? ' + ld_bias(o)' : ''}; } }
  }
}`;
}

const TK = 16;
/** big prefills: 128x128 tiles with 8x8 outputs per thread, once there are this many tiles to fill the GPU */
const BIG_TILE_MIN_GROUPS = 264;

/**
 * TM x TM output tile, 256 threads as 16 x 16, each computing an MT x MT block (MT = TM/16) of adjacent rows
 * and columns, so that its operands come out of workgroup memory as vec4 loads: per k, MT/2 vector loads feed
 * MT² FMAs (scalar loads would be 2 MT, which on NVIDIA saturates the shared-memory pipe before the FMA units).
 */
function gemmShader(dt: WDType, bias: WDType | null, TM: number): string {
  const MT = TM / 16; // outputs per thread along each axis
  const L = (TM * TK) / 256; // elements each thread loads per matrix per K slice
  const TPRW = TK / L; // threads sharing one tile row in the loader
  return `struct P { N: u32, IN: u32, OUT: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
${scalarLoad('w', 2, dt)}
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
${bias ? scalarLoad('bias', 4, bias) : ''}
var<workgroup> As: array<vec4<f32>, ${(TK * TM) / 4}>;   // [k][row of x], 4 rows a vector
var<workgroup> Bs: array<vec4<f32>, ${(TK * TM) / 4}>;   // [k][row of w]
@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(local_invocation_id) li: vec3<u32>) {
  let o0 = wid.x * ${TM}u;
  let m0 = wid.y * ${TM}u;
  let tx = li.x;
  let ty = li.y;
  // loader: ${TPRW} consecutive threads read ${TK} consecutive k of one row (${L} each)
  let lr = lid / ${TPRW}u;
  let lk = (lid % ${TPRW}u) * ${L}u;
  let xm = m0 + lr;
  let wo = o0 + lr;
  var acc: array<array<f32, ${MT}>, ${MT}>;
  for (var k0 = 0u; k0 < p.IN; k0 += ${TK}u) {
    for (var c = 0u; c < ${L}u; c++) {
      let k = k0 + lk + c;
      var av = 0.0;
      var bv = 0.0;
      if (k < p.IN) {
        if (xm < p.N) { av = x[xm * p.IN + k]; }
        if (wo < p.OUT) { bv = ld_w(wo * p.IN + k); }
      }
      let si = (lk + c) * ${TM}u + lr;
      As[si / 4u][si % 4u] = av;
      Bs[si / 4u][si % 4u] = bv;
    }
    workgroupBarrier();
    for (var kk = 0u; kk < ${TK}u; kk++) {
      var a: array<vec4<f32>, ${MT / 4}>;
      var b: array<vec4<f32>, ${MT / 4}>;
      for (var q = 0u; q < ${MT / 4}u; q++) {
        a[q] = As[kk * ${TM / 4}u + ty * ${MT / 4}u + q];
        b[q] = Bs[kk * ${TM / 4}u + tx * ${MT / 4}u + q];
      }
      for (var i = 0u; i < ${MT}u; i++) {
        let ai = a[i / 4u][i % 4u];
        for (var j = 0u; j < ${MT}u; j++) { acc[i][j] = fma(ai, b[j / 4u][j % 4u], acc[i][j]); }
      }
    }
    workgroupBarrier();
  }
  for (var i = 0u; i < ${MT}u; i++) {
    let m = m0 + ty * ${MT}u + i;
    if (m >= p.N) { continue; }
    for (var j = 0u; j < ${MT}u; j++) {
      let o = o0 + tx * ${MT}u + j;
      if (o < p.OUT) { y[m * p.OUT + o] = acc[i][j]${bias ? ' + ld_bias(o)' : ''}; }
    }
  }
}`;
}

/** 128-wide tiles only when there are enough of them; otherwise 64 (more workgroups for mid-size prefills). */
export function gemmTile(N: number, OUT: number): number {
  return Math.ceil(N / 128) * Math.ceil(OUT / 128) >= BIG_TILE_MIN_GROUPS ? 128 : 64;
}

export function linearKernel(
  ctx: GpuContext, x: GPUBuffer, w: GPUBuffer, wdt: WDType, b: GPUBuffer | null, bdt: WDType | null,
  y: GPUBuffer, N: number, IN: number, OUT: number,
): void {
  const binds = b ? [x, w, y, b] : [x, w, y];
  const bias = b ? bdt : null;
  if (N <= GEMV_MAX_N) {
    const vec = IN % vecWidth(wdt) === 0;
    const NB = gemvBucket(N);
    const pl = ctx.pipeline(`gemv:${NB}:${wdt}:${vec}:${bias}:sg${ctx.sg}`, () => gemvShader(NB, wdt, vec, bias, ctx.sg));
    ctx.dispatch(pl, new Params().u(IN, OUT, N), binds, ctx.grid(Math.ceil(OUT / ROWS)));
    return;
  }
  const TM = gemmTile(N, OUT);
  const gx = Math.ceil(OUT / TM);
  const gy = Math.ceil(N / TM);
  if (gx > ctx.maxGroups || gy > ctx.maxGroups) throw new Error(`linear: [${N}, ${OUT}] output is too large for one dispatch`);
  const pl = ctx.pipeline(`gemm:${TM}:${wdt}:${bias}`, () => gemmShader(wdt, bias, TM));
  ctx.dispatch(pl, new Params().u(N, IN, OUT), binds, [gx, gy]);
}
