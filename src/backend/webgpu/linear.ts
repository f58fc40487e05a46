/**
 * y[N, OUT] = x[N, IN] · w[OUT, IN]^T (+ b), weights in their stored width.
 *
 * GEMV (N <= GEMV_MAX_N, decode): memory bound, so the point is reading w once, coalesced: 32 lanes walk one
 * weight row along IN in vector loads (vec4<f32>, or vec4<u32> = 8 halves), UNROLL loads per lane issued before
 * the FMAs, each lane keeps N partial sums, and the 32 lanes reduce with subgroup shuffles where the device has
 * `subgroups` (else in workgroup memory), see warpSums. 8 rows per 256-thread workgroup. The shader is specialised for
 * N in {1, 2, 4, 8} (unrolled accumulators); other N use the next size up with uniform guards.
 *
 * GEMM (prefill, N > GEMV_MAX_N): gemm.ts.
 */
import { Params, type GpuContext } from './context.js';
import { FLAT_WG, enableSubgroups, gemvDot, scalarLoad, vectorLoad, vecWidth, warpSums, type WDType } from './wgsl.js';
import { gemmKernel } from './gemm.js';
import { partsLoad } from './attention-decode.js';

export const GEMV_MAX_N = 8;
const LANES = 32;
const ROWS = 8;
/**
 * The GEMV with partials input merges them once per workgroup into workgroup memory (GRAVITY_GEMV_PARTS_STAGE=0: at
 * every load instead, S loads per input vector per row) where N * IN / 4 vec4 fit PARTS_STAGE_CAP (16 KiB). H200,
 * 2 parts after 512 tokens: 2.51-2.52 ms per token staged, 2.56-2.58 merged at every load. (Workgroups of 16 or 32
 * rows, to merge fewer times, gained nothing.)
 */
export const PARTS_STAGE = (typeof process !== 'undefined' && process.env?.GRAVITY_GEMV_PARTS_STAGE) !== '0';
const PARTS_STAGE_CAP = 1024;
/** 16-byte loads in flight per lane (GRAVITY_GEMV_UNROLL to experiment): 8 x 32 lanes cover a 2048-wide bf16 row in one step */
export const UNROLL = Number((typeof process !== 'undefined' && process.env?.GRAVITY_GEMV_UNROLL) || 2);

/** Row counts are bucketed to 1, 2, 4, 8 (guarded by the runtime N) so that few pipelines get compiled. */
export function gemvBucket(N: number): number {
  return N <= 1 ? 1 : N <= 2 ? 2 : N <= 4 ? 4 : 8;
}

/**
 * Warps per weight row for long rows (GRAVITY_GEMV_KSPLIT): a [2048 x 11008] GEMV has only 2048 rows, one warp each
 * is too few loads in flight for the memory system; KS warps each take 1/KS of the row (split-K) and are summed.
 * H200, Qwen2.5-3B decode: 2 warps 262 tok/s, 1 warp 227, 4 warps 228.
 */
const KSPLIT_LONG = Number((typeof process !== 'undefined' && process.env?.GRAVITY_GEMV_KSPLIT) || 2);
/** rows of at least this many elements (IN) get KSPLIT_LONG warps */
const LONG_ROW = 8192;
/**
 * Warps per row for short rows of small outputs (GRAVITY_GEMV_KSPLIT_SHORT; the o projection, [2048 x 2048]). H200,
 * GPU time per decode token: 2 warps 2.672-2.679 ms, 1 warp 2.692-2.696, 4 warps 2.680-2.686. Large outputs (lm_head)
 * have rows enough to fill the GPU.
 */
const KSPLIT_SHORT = Number((typeof process !== 'undefined' && process.env?.GRAVITY_GEMV_KSPLIT_SHORT) || 2);
const SMALL_OUT = 16384;

/** a GEMV input that is decode attention's split partials, merged on load (attention-decode.ts partsLoad) */
export interface PartsInput {
  /** splits */
  S: number;
  /** head dim: rows of the partials */
  D: number;
  /** the splits share one fixed max (gravity with a fixed max, gravity-pure): plain sums */
  sums: boolean;
  ml: GPUBuffer;
  /** vec4 of merged input each workgroup stages in workgroup memory first (N * IN / 4), or 0: merged at every load */
  stage?: number;
}

function gemvShader(N: number, dt: WDType, vec: boolean, bias: WDType | null, sg: number, residual: boolean, KS = 1, parts: Omit<PartsInput, 'ml'> | null = null): string {
  // with N = bucket size, `if (n < p.N)` is uniform control flow; for N = 1 it is left out
  const guard = N === 1 ? '' : 'if (n < p.N) ';
  const mlBinding = 4 + (bias ? 1 : 0) + (residual ? 1 : 0);
  const xDecl = parts
    ? partsLoad(parts.S, parts.D, parts.sums, 1, mlBinding, `p.N * (p.IN / ${parts.D}u)`)
    : vec
      ? `@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;`
      : `@group(0) @binding(1) var<storage, read> x: array<f32>;`;
  const KV = dt === 'F32' ? 'K4' : 'K8';
  const range = KS > 1 ? { from: `min(kpart * kchunk, ${KV})`, to: `min((kpart + 1u) * kchunk, ${KV})` } : null;
  const body = vec
    ? `let K4 = p.IN / 4u;
    ${dt === 'F32' ? '' : 'let K8 = p.IN / 8u;'}
    let row = o;
    ${KS > 1 ? `let kchunk = ((${KV} + ${KS * 32 - 1}u) / ${KS * 32}u) * 32u;` : ''}
    ${gemvDot(['w'], dt, N, UNROLL, parts ? (parts.stage ? 'xs' : (i) => `xin(${i})`) : 'x', false, range)}`
    : `for (var k = lane; k < p.IN; k += ${LANES}u) {
      let wv = ld_w(o * p.IN + k);
      for (var n = 0u; n < ${N}u; n++) { ${guard}{ acc[n] += wv * x[n * p.IN + k]; } }
    }`;
  const red = warpSums(N, ROWS, sg);
  const sumParts = KS === 1 ? red.sum('n', 'lid / 32u') : `(${Array.from({ length: KS }, (_, j) => red.sum('n', `lid / 32u + ${j}u`)).join(' + ')})`;
  return `${enableSubgroups(sg)}struct P { IN: u32, OUT: u32, N: u32 }
@group(0) @binding(0) var<uniform> p: P;
${xDecl}
${vec ? vectorLoad('w', 2, dt) : scalarLoad('w', 2, dt)}
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
${bias ? scalarLoad('bias', 4, bias) : ''}
${residual ? `@group(0) @binding(${bias ? 5 : 4}) var<storage, read> res: array<f32>;` : ''}
${red.decl}
${parts?.stage ? `var<workgroup> xs: array<vec4<f32>, ${parts.stage}>;` : ''}
@compute @workgroup_size(${LANES * ROWS})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  ${FLAT_WG}
  let lane = lid % ${LANES}u;
  let o = wg * ${ROWS / KS}u + lid / ${LANES * KS}u;
  let kpart = (lid / ${LANES}u) % ${KS}u;
  var acc: array<f32, ${N}>;
  ${parts?.stage ? `for (var i = lid; i < ${parts.stage}u; i += ${LANES * ROWS}u) { xs[i] = xin(i); }
  workgroupBarrier();` : ''}
  if (o < p.OUT) {
    ${body}
  }
  ${red.code}
  if (lane == 0u && kpart == 0u && o < p.OUT) {
    for (var n = 0u; n < ${N}u; n++) { ${guard}{ y[n * p.OUT + o] = ${residual ? 'res[n * p.OUT + o] + (' : ''}${sumParts}${bias ? ' + ld_bias(o)' : ''}${residual ? ')' : ''}; } }
  }
}`;
}

/**
 * y = x · w^T (+ b), or with `res` (decode only, N <= GEMV_MAX_N): y = res + (x · w^T + b), the residual add of
 * a decoder layer in the GEMV's epilogue (same f32 operations as linear then add).
 */
export function linearKernel(
  ctx: GpuContext, x: GPUBuffer, w: GPUBuffer, wdt: WDType, b: GPUBuffer | null, bdt: WDType | null,
  y: GPUBuffer, N: number, IN: number, OUT: number, res: GPUBuffer | null = null, parts: PartsInput | null = null,
): void {
  const binds = b ? [x, w, y, b] : [x, w, y];
  const bias = b ? bdt : null;
  if (N <= GEMV_MAX_N) {
    const vec = IN % vecWidth(wdt) === 0;
    if (parts && (!vec || IN % parts.D !== 0)) throw new Error(`linearKernel: partials input needs vector loads and IN = ${IN} a multiple of ${parts.D}`);
    const NB = gemvBucket(N);
    if (res) binds.push(res);
    if (parts) binds.push(parts.ml);
    const KS = !vec ? 1 : IN >= LONG_ROW ? KSPLIT_LONG : OUT <= SMALL_OUT ? KSPLIT_SHORT : 1;
    // staged merge: NB rows of IN in workgroup memory (the guarded rows past N stay unread)
    const stage = parts && ctx.decodeTuning.stage && (NB * IN) / 4 <= PARTS_STAGE_CAP ? (NB * IN) / 4 : 0;
    const pk = parts ? `:parts${parts.S}:${parts.D}:${parts.sums}:st${stage}` : '';
    const pl = ctx.pipeline(`gemv:${NB}:${wdt}:${vec}:${bias}:sg${ctx.sg}${res ? ':res' : ''}:ks${KS}${pk}`, () => gemvShader(NB, wdt, vec, bias, ctx.sg, !!res, KS, parts && { ...parts, stage }));
    ctx.dispatch(pl, new Params().u(IN, OUT, N), binds, ctx.grid(Math.ceil(OUT / (ROWS / KS))));
    return;
  }
  if (res || parts) throw new Error('linearKernel: the residual epilogue and partials input are for the GEMV (N <= GEMV_MAX_N)');
  gemmKernel(ctx, x, w, wdt, b, bdt, y, N, IN, OUT);
}

