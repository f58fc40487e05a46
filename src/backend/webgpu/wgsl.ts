/**
 * WGSL snippets shared by the kernels: typed loads of weights in their stored width. F16 and BF16 are packed
 * two per u32 (element 2k in the low half, as the little-endian host bytes lie) and widened in the shader with
 * core builtins only: the NVIDIA driver exposes no `shader-f16`.
 */
import type { DType } from '../../tensor/dtype.js';

export type WDType = 'F32' | 'F16' | 'BF16';

/** `var<storage, read> NAME` plus `fn ld_NAME(i: u32) -> f32` reading element i. */
export function scalarLoad(name: string, binding: number, dt: WDType): string {
  if (dt === 'F32') {
    return `@group(0) @binding(${binding}) var<storage, read> ${name}: array<f32>;
fn ld_${name}(i: u32) -> f32 { return ${name}[i]; }\n`;
  }
  const widen =
    dt === 'F16'
      ? `unpack2x16float(w >> ((i & 1u) * 16u)).x`
      : `bitcast<f32>(select(w << 16u, w & 0xffff0000u, (i & 1u) == 1u))`;
  return `@group(0) @binding(${binding}) var<storage, read> ${name}: array<u32>;
fn ld_${name}(i: u32) -> f32 { let w = ${name}[i >> 1u]; return ${widen}; }\n`;
}

/** Elements per vector load: 4 f32 (one vec4<f32>) or 8 halves (one vec4<u32>). */
export function vecWidth(dt: WDType): number {
  return dt === 'F32' ? 4 : 8;
}

/**
 * Vector loads for the GEMV. F32: the binding is array<vec4<f32>> (4 elements per load). F16/BF16: array<vec4<u32>>
 * (8 halves per load), widened by `lo_NAME(p)` / `hi_NAME(p)` into the first / last four as vec4<f32>.
 */
export function vectorLoad(name: string, binding: number, dt: WDType): string {
  if (dt === 'F32') {
    return `@group(0) @binding(${binding}) var<storage, read> ${name}: array<vec4<f32>>;\n`;
  }
  const pair =
    dt === 'F16'
      ? (w: string) => `unpack2x16float(${w})`
      : (w: string) => `vec2<f32>(bitcast<f32>(${w} << 16u), bitcast<f32>(${w} & 0xffff0000u))`;
  return `@group(0) @binding(${binding}) var<storage, read> ${name}: array<vec4<u32>>;
fn lo_${name}(p: vec4<u32>) -> vec4<f32> { return vec4<f32>(${pair('p.x')}, ${pair('p.y')}); }
fn hi_${name}(p: vec4<u32>) -> vec4<f32> { return vec4<f32>(${pair('p.z')}, ${pair('p.w')}); }\n`;
}

export function asWeightType(dt: DType, what: string): WDType {
  if (dt === 'F32' || dt === 'F16' || dt === 'BF16') return dt;
  throw new Error(`WebGPU: ${what} has dtype ${dt}; expected F32, F16 or BF16`);
}

/** Flat workgroup index for a 2-D grid made by GpuContext.grid. */
export const FLAT_WG = `let wg = wid.y * nwg.x + wid.x;`;

/** `enable subgroups;` when the reductions use subgroup shuffles (sg > 0) */
export function enableSubgroups(sg: number): string {
  return sg > 0 ? 'enable subgroups;\n' : '';
}

/**
 * Per-warp sums for the GEMVs: the workgroup is `warps` groups of 32 consecutive invocations (lane = lid % 32), each
 * holding partial sums acc[0..NB). `code` sums every acc[n] over its 32 lanes and ends with a barrier, after which
 * `sum(n, w)` is warp w's total of acc[n] (any thread may read it).
 *  - sg > 0 (the `subgroups` feature, sg = the adapter's smallest subgroup size capped at 32): an xor butterfly of
 *    subgroup shuffles inside each aligned run of sg lanes (subgroups are runs of consecutive invocations on the
 *    drivers we know; the tests check it), then 32/sg partials per warp in workgroup memory: one barrier.
 *  - sg = 0: a tree in workgroup memory, 5 barriers. For sg = 32 both add in the same order (bitwise equal).
 */
export function warpSums(NB: number, warps: number, sg: number): { decl: string; code: string; sum: (n: string, w: string) => string } {
  const WG = warps * 32;
  if (sg <= 0) {
    return {
      decl: `var<workgroup> red: array<f32, ${NB * WG}>;`,
      code: `for (var n = 0u; n < ${NB}u; n++) { red[n * ${WG}u + lid] = acc[n]; }
  workgroupBarrier();
  for (var s = 16u; s > 0u; s >>= 1u) {
    if (lid % 32u < s) {
      for (var n = 0u; n < ${NB}u; n++) { red[n * ${WG}u + lid] += red[n * ${WG}u + lid + s]; }
    }
    workgroupBarrier();
  }`,
      sum: (n, w) => `red[(${n}) * ${WG}u + (${w}) * 32u]`,
    };
  }
  const C = 32 / sg; // partials per warp
  const shuffles: string[] = [];
  for (let s = sg / 2; s >= 1; s /= 2) shuffles.push(`v += subgroupShuffleXor(v, ${s}u);`);
  return {
    decl: `var<workgroup> red: array<f32, ${NB * warps * C}>;`,
    code: `for (var n = 0u; n < ${NB}u; n++) {
    var v = acc[n];
    ${shuffles.join(' ')}
    if (lid % ${sg}u == 0u) { red[(n * ${warps}u + lid / 32u) * ${C}u + (lid % 32u) / ${sg}u] = v; }
  }
  workgroupBarrier();`,
    sum: (n, w) => {
      const i = `((${n}) * ${warps}u + (${w})) * ${C}u`;
      // the same pairing as the tree: (c0 + c2) + (c1 + c3) for 4 partials, etc.
      const tree = (lo: number, len: number): string => (len === 1 ? `red[${i} + ${lo}u]` : `(${tree(lo, len / 2)} + ${tree(lo + len / 2, len / 2)})`);
      return C === 1 ? `red[${i}]` : tree(0, C);
    },
  };
}

/**
 * One warp's dot products of weight row `row` of each matrix in `ws` (bindings, see vectorLoad; all of one shape)
 * with the N rows of x (array<vec4<f32>>, row length K4 = IN/4 vec4): matrix j accumulates into acc[j * NB + n]. The
 * caller defines row, lane, K4 (and K8 for 16-bit weights). UNROLL independent 16-byte loads per lane and matrix are
 * issued before any arithmetic (more bytes in flight per warp: a row of 2048 bf16 is one step of 8 x 32 loads), and
 * each lane's x vectors are loaded once for all matrices; the last partial step is one guarded unrolled step, not a
 * serial loop of single loads.
 * norm: x is the residual stream; the dot takes x * g (gv4, see normVecLoad) and acc[M * NB + n] (M = ws.length)
 * collects sum(x²) of the same elements, so the caller scales by 1/rms after the reduction (no staging, no barrier
 * before the loads).
 * range: the warp takes only the part [from, to) of the row (split-K GEMV); the caller sums the parts.
 * xs: the x binding's name, or a function giving the WGSL of x's vec4 at an index (an input computed on load).
 */
export function gemvDot(
  ws: string[], dt: WDType, NB: number, unroll: number, xs: string | ((i: string) => string) = 'x', norm = false, range: { from: string; to: string } | null = null,
): string {
  const x = typeof xs === 'string' ? (i: string) => `${xs}[${i}]` : xs;
  const M = ws.length;
  const guard = NB === 1 ? '' : 'if (n < p.N) ';
  const f32 = dt === 'F32';
  const KV = f32 ? 'K4' : 'K8';
  const U = Array.from({ length: unroll }, (_, u) => u);
  const J = Array.from({ length: M }, (_, j) => j);
  const accum = (u: number) => {
    if (f32) {
      return `{ ${norm ? `let gw = gv4(k${u});` : ''}
        for (var n = 0u; n < ${NB}u; n++) { ${guard}{ let xv = ${x(`n * K4 + k${u}`)}${norm ? ' * gw' : ''};
          ${J.map((j) => `acc[${j * NB}u + n] += dot(w${u}_${j}, xv);`).join(' ')}
          ${norm ? `let xr = ${x(`n * K4 + k${u}`)}; acc[${M * NB}u + n] += dot(xr, xr);` : ''} } } }`;
    }
    return `{ ${norm ? `let ga = gv4(2u * k${u}); let gb = gv4(2u * k${u} + 1u);` : ''}
        for (var n = 0u; n < ${NB}u; n++) { ${guard}{ let xa0 = ${x(`n * K4 + 2u * k${u}`)}; let xb0 = ${x(`n * K4 + 2u * k${u} + 1u`)};
          let xa = xa0${norm ? ' * ga' : ''}; let xb = xb0${norm ? ' * gb' : ''};
          ${J.map((j) => `acc[${j * NB}u + n] += dot(lo_${ws[j]}(w${u}_${j}), xa) + dot(hi_${ws[j]}(w${u}_${j}), xb);`).join('\n          ')}
          ${norm ? `acc[${M * NB}u + n] += dot(xa0, xa0) + dot(xb0, xb0);` : ''} } } }`;
  };
  const loads = (u: number) => J.map((j) => `let w${u}_${j} = ${ws[j]}[base + k${u}];`).join(' ');
  const end = range ? range.to : KV;
  return `{
    let base = row * ${KV};
    var k = ${range ? `${range.from} + ` : ''}lane;
    for (; k + ${(unroll - 1) * 32}u < ${end}; k += ${unroll * 32}u) {
      ${U.map((u) => `let k${u} = k + ${u * 32}u; ${loads(u)}`).join('\n      ')}
      ${U.map(accum).join('\n      ')}
    }
    for (; k < ${end}; k += 32u) {
      let k0 = k;
      ${loads(0)}
      ${accum(0)}
    }
  }`;
}

/** `var<storage, read> NAME` (a norm weight) plus `fn gv4(i: u32) -> vec4<f32>`: its elements 4i .. 4i + 3 */
export function normVecLoad(name: string, binding: number, dt: WDType): string {
  if (dt === 'F32') return `@group(0) @binding(${binding}) var<storage, read> ${name}: array<vec4<f32>>;
fn gv4(i: u32) -> vec4<f32> { return ${name}[i]; }\n`;
  const pair = dt === 'F16' ? (w: string) => `unpack2x16float(${w})` : (w: string) => `vec2<f32>(bitcast<f32>(${w} << 16u), bitcast<f32>(${w} & 0xffff0000u))`;
  return `@group(0) @binding(${binding}) var<storage, read> ${name}: array<vec2<u32>>;
fn gv4(i: u32) -> vec4<f32> { let p = ${name}[i]; return vec4<f32>(${pair('p.x')}, ${pair('p.y')}); }\n`;
}

/**
 * How the decode GEMVs apply an RMSNorm to their input (GRAVITY_NORM=stage to experiment): 'inline' (default) scales
 * x by g in the dot loop and the result by 1/rms(x) after it; 'stage' computes rmsnorm(x) * g into workgroup memory
 * first (normPrologue: two barriers and an L2 round trip before the first weight load).
 */
export const NORM_MODE: 'inline' | 'stage' = (typeof process !== 'undefined' && process.env?.GRAVITY_NORM) === 'stage' ? 'stage' : 'inline';

/** vec4 (x * r) * g of the 4 elements from 4 * i: the rmsnorm formula of rmsnormKernel, on a vec4 of x */
export const NORM_STAGE_CAP = 1024; // vec4 = 16 KiB of workgroup memory: N * IN <= 4096

/**
 * Prologue of a GEMV whose input is rmsnorm(x) * g: every workgroup computes the N row norms of x (array<vec4<f32>>,
 * K4 vec4 per row; NB rows with a guard on p.N) and stages h = (x * r) * g in workgroup memory `xs`, which the dot
 * loop then reads instead of x. Needs `p.eps`, `lid`, K4, and a `ld_g` load of the norm weight. 256 threads.
 */
export function normPrologue(NB: number, sg: number): { decl: string; code: string } {
  const parts = sg > 0 ? 256 / sg : 256;
  const reduce = sg > 0
    ? Array.from({ length: Math.log2(sg) }, (_, i) => `ss += subgroupShuffleXor(ss, ${sg >> (i + 1)}u);`).join(' ') + `
      if (lid % ${sg}u == 0u) { nred[n * ${parts}u + lid / ${sg}u] = ss; }`
    : `nred[n * ${parts}u + lid] = ss;`;
  return {
    decl: `var<workgroup> xs: array<vec4<f32>, ${NORM_STAGE_CAP}>;
var<workgroup> nred: array<f32, ${NB * parts}>;`,
    code: `for (var n = 0u; n < ${NB}u; n++) {
      var ss = 0.0;
      if (n < p.N) { for (var i = lid; i < K4; i += 256u) { let v = x[n * K4 + i]; ss += dot(v, v); } }
      ${reduce}
    }
    workgroupBarrier();
    for (var n = 0u; n < ${NB}u; n++) {
      if (n >= p.N) { break; }
      var tot = 0.0;
      for (var j = 0u; j < ${parts}u; j++) { tot += nred[n * ${parts}u + j]; }
      let r = 1.0 / sqrt(tot / f32(p.IN) + p.eps);
      for (var i = lid; i < K4; i += 256u) {
        let e = 4u * i;
        xs[n * K4 + i] = (x[n * K4 + i] * r) * vec4<f32>(ld_g(e), ld_g(e + 1u), ld_g(e + 2u), ld_g(e + 3u));
      }
    }
    workgroupBarrier();`,
  };
}

/**
 * The entry of a register-tiled GEMM (16 x 16 threads): output tile origins o0 (weight rows, x) and m0 (input rows,
 * y) of a TM x TM tile, and the thread's (tx, ty) in it.
 */
export function tileMain(TM: number): string {
  return `@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(local_invocation_id) li: vec3<u32>) {
  let o0 = wid.x * ${TM}u;
  let m0 = wid.y * ${TM}u;
  let tx = li.x;
  let ty = li.y;`;
}

/**
 * The k loop of a register-tiled GEMM: per step kk, this thread's MT values of A and of B (vec4 rows of the
 * workgroup tiles As / Bs, TM wide, k-major) go to registers, then acc[i][j] takes mac(acc[i][j], a_i, b_j) for the
 * MT x MT block. `vec` is the tiles' vec4 element type: f32 for the float GEMM, u32 for packed int8 (DP4A).
 */
export function tileProduct(vec: 'f32' | 'u32', kSteps: number, MT: number, TM: number, mac: (acc: string, a: string, b: string) => string): string {
  return `for (var kk = 0u; kk < ${kSteps}u; kk++) {
      var a: array<vec4<${vec}>, ${MT / 4}>;
      var b: array<vec4<${vec}>, ${MT / 4}>;
      for (var q = 0u; q < ${MT / 4}u; q++) {
        a[q] = As[kk * ${TM / 4}u + ty * ${MT / 4}u + q];
        b[q] = Bs[kk * ${TM / 4}u + tx * ${MT / 4}u + q];
      }
      for (var i = 0u; i < ${MT}u; i++) {
        let ai = a[i / 4u][i % 4u];
        for (var j = 0u; j < ${MT}u; j++) { ${mac('acc[i][j]', 'ai', 'b[j / 4u][j % 4u]')} }
      }
    }`;
}

/**
 * The bindings every attention kernel takes after its params (binding 0): q, the layer's cache (k, then v from vec4
 * p.vOff4), the key mask, the heads' M² and the output (array of `out`).
 */
export function attentionBindings(out: 'f32' | 'vec4<f32>' = 'f32'): string {
  return `@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> kv: array<vec4<f32>>;   // k, then v from vec4 p.vOff4
@group(0) @binding(3) var<storage, read> valid: array<u32>;
@group(0) @binding(4) var<storage, read> mass: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<${out}>;`;
}
