/**
 * Opt-in int8 prefill linears (GRAVITY_WEBGPU_Q8): y[N, OUT] = (xq · wqᵀ) * sx[row] * sw[col] + b, with
 *  - weights quantized once on the GPU, per output row, symmetric int8 (scale = absmax / 127), from F32/F16/BF16;
 *  - activations quantized per input row on every call (one kernel: absmax, then 4 int8 packed per u32);
 *  - an i32-accumulating GEMM: tensor cores through `chromium-experimental-subgroup-matrix` (i8 16x16x32, the only
 *    matrix type the NVIDIA/Vulkan adapter offers: no f16/tf32 configurations) or, everywhere else, dot4I8Packed
 *    (packed_4x8_integer_dot_product; DP4A on NVIDIA), register-tiled like the f32 GEMM.
 * Why int8: it is the one tensor-core type WebGPU reaches here; the error is that of per-row int8 (about 1% of a
 * row's absmax per product term, mostly averaging out over IN).
 *
 * Layout: packed rows are KP bytes (IN rounded up to KPAD, zero-filled), row counts are rounded up to RPAD with zero
 * rows, so neither GEMM guards its loads; only the f32 store is guarded.
 */
import { GravityError } from '../../errors.js';
import { Params, roundUp, type GpuContext } from './context.js';
import { FLAT_WG, scalarLoad, tileMain, tileProduct, type WDType } from './wgsl.js';

/** bytes (int8 values) per packed row are a multiple of this: any BK in {32, 64, 128} divides it */
export const KPAD = 128;
/** packed row counts (tokens, weight rows) are a multiple of this: any tile of <= 128 rows divides it */
export const RPAD = 128;

export type Q8Kind = 'dp4a' | 'sm';

export interface Q8Weight {
  /** [OUTP, KP/4] u32, 4 int8 a word (little-endian: element 4j in the low byte) */
  wq: GPUBuffer;
  /** [OUTP] f32 (0 for padding rows) */
  sw: GPUBuffer;
  OUT: number;
  IN: number;
}

export interface Q8Acts {
  xq: GPUBuffer; // [NP, KP/4] u32
  sx: GPUBuffer; // [NP] f32
  N: number;
  IN: number;
}

/**
 * Subgroup-matrix GEMM tiling: a workgroup computes BM x BN outputs with SGM x SGN subgroups of 32 lanes, each
 * subgroup (BM/SGM) x (BN/SGN) as 16x16 i32 accumulators; K advances BK bytes a stage. `stage`: A/B tiles copied
 * to workgroup memory (global -> registers -> shared, the next stage's loads issued before this stage's math);
 * otherwise every subgroup loads its fragments straight from global memory (L1/L2 serve the reuse).
 * `unit`: 1 if subgroupMatrixLoad counts offsets and strides in i8 elements (the spec's reading), 4 if in i32 words.
 */
export interface SmConfig {
  BM: number;
  BN: number;
  SGM: number;
  SGN: number;
  BK: number;
  stage: boolean;
  unit: 1 | 4;
}

/** fastest of the tilings bench/q8-gpu.ts tried on the H200 for every prefill shape (114-219 TOP/s, 4 subgroups x 16 accumulators) */
export const SM_DEFAULT: SmConfig = { BM: 128, BN: 128, SGM: 2, SGN: 2, BK: 64, stage: true, unit: 1 };

/** "128x128:2x4:64[:direct][:u4]" */
export function parseSmConfig(s: string | undefined): SmConfig {
  if (!s) return SM_DEFAULT;
  const m = /^(\d+)x(\d+):(\d+)x(\d+):(\d+)(.*)$/.exec(s);
  if (!m) throw new GravityError(`Q8 subgroup-matrix config '${s}': expected BMxBN:SGMxSGN:BK[:direct][:u4]`);
  const c: SmConfig = { BM: +m[1], BN: +m[2], SGM: +m[3], SGN: +m[4], BK: +m[5], stage: !m[6].includes('direct'), unit: m[6].includes('u4') ? 4 : 1 };
  const fm = c.BM / c.SGM / 16, fn = c.BN / c.SGN / 16;
  if (c.BM > RPAD || c.BN > RPAD || RPAD % c.BM || RPAD % c.BN || !Number.isInteger(fm) || !Number.isInteger(fn) || fm < 1 || fn < 1 || KPAD % c.BK || c.BK % 32) {
    throw new GravityError(`Q8 subgroup-matrix config '${s}' does not tile ${RPAD}-row / ${KPAD}-byte padded operands in 16x16x32 steps`);
  }
  return c;
}

export function smConfigKey(c: SmConfig): string {
  return `${c.BM}x${c.BN}:${c.SGM}x${c.SGN}:${c.BK}${c.stage ? '' : ':direct'}${c.unit === 4 ? ':u4' : ''}`;
}

const WG = 256;

/** per-row absmax over the workgroup, then inv = 127 / absmax (0 for an all-zero row) and the row's scale */
const ROW_SCALE = `var<workgroup> red: array<f32, ${WG}>;
fn rowScale(lid: u32, m: f32) -> vec2<f32> {
  red[lid] = m;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (lid < s) { red[lid] = max(red[lid], red[lid + s]); }
    workgroupBarrier();
  }
  let amax = red[0];
  // inv and scale as the JS reference computes them (f32 division, then f32 products)
  return select(vec2<f32>(0.0, 0.0), vec2<f32>(127.0 / amax, amax / 127.0), amax > 0.0);
}
fn q4(v: vec4<f32>, inv: f32) -> u32 {
  return pack4xI8(vec4<i32>(clamp(round(v * inv), vec4<f32>(-127.0), vec4<f32>(127.0))));
}`;

/** One workgroup per (padded) weight row: absmax, then the packed row; rows >= OUT are zeros. */
function quantWeightShader(dt: WDType): string {
  return `struct P { OUT: u32, IN: u32, K4: u32 }
@group(0) @binding(0) var<uniform> p: P;
${scalarLoad('w', 1, dt)}
@group(0) @binding(2) var<storage, read_write> wq: array<u32>;
@group(0) @binding(3) var<storage, read_write> sw: array<f32>;
${ROW_SCALE}
fn ld4(o: u32, j: u32) -> vec4<f32> {
  var v = vec4<f32>();
  if (o < p.OUT) {
    for (var c = 0u; c < 4u; c++) { let k = 4u * j + c; if (k < p.IN) { v[c] = ld_w(o * p.IN + k); } }
  }
  return v;
}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  ${FLAT_WG}
  let o = wg;
  var m = 0.0;
  for (var j = lid; j < p.K4; j += ${WG}u) { let v = abs(ld4(o, j)); m = max(m, max(max(v.x, v.y), max(v.z, v.w))); }
  let s = rowScale(lid, m);
  for (var j = lid; j < p.K4; j += ${WG}u) { wq[o * p.K4 + j] = q4(ld4(o, j), s.x); }
  if (lid == 0u) { sw[o] = s.y; }
}`;
}

/**
 * One workgroup per (padded) activation row, the row held in registers between the absmax and the packing
 * (R vec4 a thread: one read of x). Rows >= N are written as zeros.
 */
function quantActShader(R: number): string {
  return `struct P { N: u32, IN: u32, K4: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> xq: array<u32>;
@group(0) @binding(3) var<storage, read_write> sx: array<f32>;
${ROW_SCALE}
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  ${FLAT_WG}
  let n = wg;
  var v: array<vec4<f32>, ${R}>;
  var m = 0.0;
  let aligned = p.IN % 4u == 0u;
  for (var r = 0u; r < ${R}u; r++) {
    let j = lid + r * ${WG}u;
    if (n < p.N && j < p.K4) {
      let k = 4u * j;
      if (aligned && k < p.IN) {
        v[r] = vec4<f32>(x[n * p.IN + k], x[n * p.IN + k + 1u], x[n * p.IN + k + 2u], x[n * p.IN + k + 3u]);
      } else {
        for (var c = 0u; c < 4u; c++) { if (k + c < p.IN) { v[r][c] = x[n * p.IN + k + c]; } }
      }
      let a = abs(v[r]);
      m = max(m, max(max(a.x, a.y), max(a.z, a.w)));
    }
  }
  let s = rowScale(lid, m);
  for (var r = 0u; r < ${R}u; r++) {
    let j = lid + r * ${WG}u;
    if (j < p.K4) { xq[n * p.K4 + j] = q4(v[r], s.x); }
  }
  if (lid == 0u) { sx[n] = s.y; }
}`;
}

/** bias and the f32 store, shared by both GEMMs */
function epilogueDecl(bias: WDType | null, binding: number): string {
  return `${bias ? scalarLoad('bias', binding, bias) : ''}
fn put(m: u32, o: u32, acc: i32) {
  if (m < p.N && o < p.OUT) { y[m * p.OUT + o] = f32(acc) * sx[m] * sw[o]${bias ? ' + ld_bias(o)' : ''}; }
}`;
}

const TKW = 16; // u32 words (64 int8) per K stage of the DP4A GEMM

/**
 * DP4A GEMM, the f32 GEMM's scheme on packed words: TM x TM outputs per 256 threads, each an MT x MT block whose
 * operands come from workgroup memory as vec4<u32> (4 rows x 4 int8), MT² dot4I8Packed per 4 words loaded / 2.
 */
function dp4aShader(bias: WDType | null, TM: number): string {
  const MT = TM / 16;
  const LV = (TM * TKW) / 4 / WG; // vec4 loads per thread per matrix per stage
  return `struct P { N: u32, OUT: u32, K4: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> xq: array<vec4<u32>>;
@group(0) @binding(2) var<storage, read> sx: array<f32>;
@group(0) @binding(3) var<storage, read> wq: array<vec4<u32>>;
@group(0) @binding(4) var<storage, read> sw: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
${epilogueDecl(bias, 6)}
var<workgroup> As: array<vec4<u32>, ${(TKW * TM) / 4}>;   // [word k][row], 4 rows a vector
var<workgroup> Bs: array<vec4<u32>, ${(TKW * TM) / 4}>;
${tileMain(TM)}
  let K16 = p.K4 / 4u; // vec4 per packed row
  var acc: array<array<i32, ${MT}>, ${MT}>;
  for (var k0 = 0u; k0 < K16; k0 += ${TKW / 4}u) {
    for (var c = 0u; c < ${LV}u; c++) {
      let i = lid + c * ${WG}u;
      let r = i / ${TKW / 4}u;
      let q = i % ${TKW / 4}u;
      let av = xq[(m0 + r) * K16 + k0 + q];
      let bv = wq[(o0 + r) * K16 + k0 + q];
      for (var e = 0u; e < 4u; e++) {
        let si = (4u * q + e) * ${TM}u + r;
        As[si / 4u][si % 4u] = av[e];
        Bs[si / 4u][si % 4u] = bv[e];
      }
    }
    workgroupBarrier();
    ${tileProduct('u32', TKW, MT, TM, (c, a, b) => `${c} += dot4I8Packed(${a}, ${b});`)}
    workgroupBarrier();
  }
  for (var i = 0u; i < ${MT}u; i++) {
    for (var j = 0u; j < ${MT}u; j++) { put(m0 + ty * ${MT}u + i, o0 + tx * ${MT}u + j, acc[i][j]); }
  }
}`;
}

/**
 * Tensor-core GEMM through subgroup matrices (see SmConfig). Generated fully unrolled: the accumulators and
 * fragments are separate variables, never a dynamically indexed array. The epilogue goes through a 16x16 i32
 * scratch tile per subgroup (results cannot be converted or scaled as matrices), 8 outputs a lane.
 */
export function smShader(c: SmConfig, bias: WDType | null): string {
  const { BM, BN, SGM, SGN, BK, stage, unit } = c;
  const FM = BM / SGM / 16, FN = BN / SGN / 16, NSG = SGM * SGN, T = 32 * NSG;
  const SA = BK + 16; // bytes per row of a staged tile: 16 bytes of padding against bank conflicts
  const u = (e: string) => (unit === 1 ? e : `(${e}) / 4u`);
  const I = [...Array(FM).keys()], J = [...Array(FN).keys()];
  const LV = (BM * BK) / 16 / T; // vec4 global loads per thread per stage (A; B likewise with BN)
  const LVB = (BN * BK) / 16 / T;
  const left = `subgroup_matrix_left<i8, 32, 16>`, right = `subgroup_matrix_right<i8, 16, 32>`;
  let loads: string;
  if (stage) {
    loads = `${I.map((i) => `let l${i} = subgroupMatrixLoad<${left}>(&As, ${u(`(rm + ${i * 16}u) * ${SA}u + kk`)}, false, ${u(`${SA}u`)});`).join('\n      ')}
      ${J.map((j) => `let r${j} = subgroupMatrixLoad<${right}>(&Bs, ${u(`(rn + ${j * 16}u) * ${SA}u + kk`)}, true, ${u(`${SA}u`)});`).join('\n      ')}`;
  } else {
    loads = `${I.map((i) => `let l${i} = subgroupMatrixLoad<${left}>(&xq, ${u(`(m0 + rm + ${i * 16}u) * p.KB + k0 + kk`)}, false, ${u('p.KB')});`).join('\n      ')}
      ${J.map((j) => `let r${j} = subgroupMatrixLoad<${right}>(&wq, ${u(`(o0 + rn + ${j * 16}u) * p.KB + k0 + kk`)}, true, ${u('p.KB')});`).join('\n      ')}`;
  }
  const mma = I.flatMap((i) => J.map((j) => `a${i}_${j} = subgroupMatrixMultiplyAccumulate(l${i}, r${j}, a${i}_${j});`)).join('\n      ');
  const fetch = (v: string, src: string, rows0: string, n: number) =>
    [...Array(n).keys()].map((t) => `{ let i = lid + ${t * T}u; ${v}${t} = ${src}[((${rows0} + i / ${BK / 16}u) * p.KB + k0) / 16u + i % ${BK / 16}u]; }`).join('\n    ');
  const put = (v: string, dst: string, n: number) =>
    [...Array(n).keys()].map((t) => `{ let i = lid + ${t * T}u; let b = (i / ${BK / 16}u) * ${SA / 4}u + (i % ${BK / 16}u) * 4u; ${dst}[b] = ${v}${t}.x; ${dst}[b + 1u] = ${v}${t}.y; ${dst}[b + 2u] = ${v}${t}.z; ${dst}[b + 3u] = ${v}${t}.w; }`).join('\n    ');
  const decl = (v: string, n: number) => [...Array(n).keys()].map((t) => `var ${v}${t}: vec4<i32>;`).join(' ');
  const body = stage
    ? `${decl('pa', LV)} ${decl('pb', LVB)}
  var k0 = 0u;
  ${fetch('pa', 'xg', 'm0', LV)}
  ${fetch('pb', 'wg4', 'o0', LVB)}
  loop {
    ${put('pa', 'As', LV)}
    ${put('pb', 'Bs', LVB)}
    workgroupBarrier();
    k0 += ${BK}u;
    if (k0 < p.KB) {
      ${fetch('pa', 'xg', 'm0', LV)}
      ${fetch('pb', 'wg4', 'o0', LVB)}
    }
    for (var kk = 0u; kk < ${BK}u; kk += 32u) {
      ${loads}
      ${mma}
    }
    workgroupBarrier();
    if (k0 >= p.KB) { break; }
  }`
    : `for (var k0 = 0u; k0 < p.KB; k0 += ${BK}u) {
    for (var kk = 0u; kk < ${BK}u; kk += 32u) {
      ${loads}
      ${mma}
    }
  }`;
  const epi = I.flatMap((i) => J.map((j) => `subgroupMatrixStore(&Cs, sg * 256u, a${i}_${j}, false, 16u);
  workgroupBarrier();
  for (var e = lane * 8u; e < lane * 8u + 8u; e++) { put(m0 + rm + ${i * 16}u + e / 16u, o0 + rn + ${j * 16}u + e % 16u, Cs[sg * 256u + e]); }
  workgroupBarrier();`)).join('\n  ');
  const xs = stage
    ? `@group(0) @binding(1) var<storage, read> xg: array<vec4<i32>>;
@group(0) @binding(3) var<storage, read> wg4: array<vec4<i32>>;
var<workgroup> As: array<i32, ${(BM * SA) / 4}>;
var<workgroup> Bs: array<i32, ${(BN * SA) / 4}>;`
    : `@group(0) @binding(1) var<storage, read> xq: array<i32>;
@group(0) @binding(3) var<storage, read> wq: array<i32>;`;
  return `enable chromium_experimental_subgroup_matrix;
diagnostic(off, chromium.subgroup_matrix_uniformity);
diagnostic(off, chromium_experimental.subgroup_matrix_uniformity);
struct P { N: u32, OUT: u32, KB: u32 }
@group(0) @binding(0) var<uniform> p: P;
${xs}
@group(0) @binding(2) var<storage, read> sx: array<f32>;
@group(0) @binding(4) var<storage, read> sw: array<f32>;
@group(0) @binding(5) var<storage, read_write> y: array<f32>;
${epilogueDecl(bias, 6)}
var<workgroup> Cs: array<i32, ${NSG * 256}>;
@compute @workgroup_size(${T})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let o0 = wid.x * ${BN}u;
  let m0 = wid.y * ${BM}u;
  let sg = lid / 32u;
  let lane = lid % 32u;
  let rm = (sg / ${SGN}u) * ${BM / SGM}u;
  let rn = (sg % ${SGN}u) * ${BN / SGN}u;
  ${I.flatMap((i) => J.map((j) => `var a${i}_${j} = subgroup_matrix_result<i32, 16, 16>();`)).join(' ')}
  ${body}
  ${epi}
}`;
}

/** Quantizes a weight [OUT, IN] (F32/F16/BF16) to int8 rows on the GPU; the buffers belong to the caller. */
export function quantizeWeight(ctx: GpuContext, w: GPUBuffer, dt: WDType, OUT: number, IN: number): Q8Weight {
  const K4 = roundUp(IN, KPAD) / 4;
  const OUTP = roundUp(OUT, RPAD);
  const wq = ctx.alloc(OUTP * K4 * 4, `int8 weight [${OUT}, ${IN}]`);
  const sw = ctx.alloc(OUTP * 4, 'int8 weight scales');
  const pl = ctx.pipeline(`q8w:${dt}`, () => quantWeightShader(dt));
  ctx.dispatch(pl, new Params().u(OUT, IN, K4), [w, wq, sw], ctx.grid(OUTP));
  return { wq, sw, OUT, IN };
}

export function freeWeight(ctx: GpuContext, q: Q8Weight): void {
  ctx.retire(q.wq);
  ctx.retire(q.sw);
}

/** x [N, IN] f32 -> packed int8 rows and scales (pooled buffers: releaseActs when the GEMM is recorded) */
export function quantizeActs(ctx: GpuContext, x: GPUBuffer, N: number, IN: number): Q8Acts {
  const K4 = roundUp(IN, KPAD) / 4;
  const NP = roundUp(N, RPAD);
  const xq = ctx.alloc(NP * K4 * 4, `int8 activation [${N}, ${IN}]`);
  const sx = ctx.alloc(NP * 4, 'int8 activation scales');
  const R = Math.ceil(K4 / WG);
  const pl = ctx.pipeline(`q8x:${R}`, () => quantActShader(R));
  ctx.dispatch(pl, new Params().u(N, IN, K4), [x, xq, sx], ctx.grid(NP));
  return { xq, sx, N, IN };
}

export function releaseActs(ctx: GpuContext, a: Q8Acts): void {
  ctx.release(a.xq);
  ctx.release(a.sx);
}

/** y [N, OUT] f32 (+ bias) from quantized operands */
export function q8Gemm(ctx: GpuContext, a: Q8Acts, w: Q8Weight, b: GPUBuffer | null, bdt: WDType | null, y: GPUBuffer, kind: Q8Kind, sm: SmConfig = SM_DEFAULT): void {
  if (a.IN !== w.IN) throw new Error(`q8Gemm: activations have ${a.IN} columns, the weight ${w.IN}`);
  const N = a.N, OUT = w.OUT, KB = roundUp(a.IN, KPAD);
  const bias = b ? bdt : null;
  const binds = [a.xq, a.sx, w.wq, w.sw, y, ...(b ? [b] : [])];
  let gx: number;
  let gy: number;
  if (kind === 'sm') {
    gx = Math.ceil(OUT / sm.BN);
    gy = Math.ceil(N / sm.BM);
    const pl = ctx.pipeline(`q8sm:${smConfigKey(sm)}:${bias}`, () => smShader(sm, bias));
    checkGrid(ctx, gx, gy, N, OUT);
    ctx.dispatch(pl, new Params().u(N, OUT, KB), binds, [gx, gy]);
  } else {
    const TM = Math.ceil(N / 128) * Math.ceil(OUT / 128) >= 264 ? 128 : 64;
    gx = Math.ceil(OUT / TM);
    gy = Math.ceil(N / TM);
    const pl = ctx.pipeline(`q8dp4a:${TM}:${bias}`, () => dp4aShader(bias, TM));
    checkGrid(ctx, gx, gy, N, OUT);
    ctx.dispatch(pl, new Params().u(N, OUT, KB / 4), binds, [gx, gy]);
  }
}

function checkGrid(ctx: GpuContext, gx: number, gy: number, N: number, OUT: number): void {
  if (gx > ctx.maxGroups || gy > ctx.maxGroups) throw new GravityError(`q8Gemm: [${N}, ${OUT}] output is too large for one dispatch`);
}

let envSm: SmConfig | null = null;
/** the tiling of the tensor-core GEMM: GRAVITY_WEBGPU_Q8_SM (see parseSmConfig), else SM_DEFAULT */
function smFromEnv(): SmConfig {
  return (envSm ??= parseSmConfig(typeof process !== 'undefined' ? process.env?.GRAVITY_WEBGPU_Q8_SM : undefined));
}

/** the whole int8 linear: quantize x, GEMM, release the packed activations */
export function linearQ8(ctx: GpuContext, x: GPUBuffer, w: Q8Weight, b: GPUBuffer | null, bdt: WDType | null, y: GPUBuffer, N: number, kind: Q8Kind, sm?: SmConfig): void {
  const a = quantizeActs(ctx, x, N, w.IN);
  q8Gemm(ctx, a, w, b, bdt, y, kind, sm ?? smFromEnv());
  releaseActs(ctx, a);
}

/**
 * Q8 mode asked for by GRAVITY_WEBGPU_Q8 (or the backend option): '1'/'auto' = tensor cores if the device got
 * the subgroup-matrix feature, else DP4A; 'sm' / 'dp4a' force one; unset/'0' = off.
 */
export function q8Wanted(opt: boolean | 'auto' | Q8Kind | undefined): 'auto' | Q8Kind | null {
  const env = typeof process !== 'undefined' ? process.env?.GRAVITY_WEBGPU_Q8 : undefined;
  const v = opt ?? env;
  if (v === undefined || v === false || v === '0' || v === '') return null;
  if (v === true || v === '1' || v === 'auto') return 'auto';
  if (v === 'sm' || v === 'dp4a') return v;
  throw new GravityError(`GRAVITY_WEBGPU_Q8='${v}': expected 0, 1, auto, sm or dp4a`);
}

/** Weights quantized on first use, by weight tensor; dropped with it. */
export class Q8Cache<K> {
  private map = new Map<K, Q8Weight>();
  constructor(private ctx: GpuContext) {}
  get(key: K, w: GPUBuffer, dt: WDType, OUT: number, IN: number): Q8Weight {
    let q = this.map.get(key);
    if (!q) this.map.set(key, (q = quantizeWeight(this.ctx, w, dt, OUT, IN)));
    return q;
  }
  drop(key: K): void {
    const q = this.map.get(key);
    if (q) freeWeight(this.ctx, q);
    this.map.delete(key);
  }
}
