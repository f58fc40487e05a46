/**
 * The training GEMM: C[M, N] = Σ_k A[m, k] · B[k, n], with either operand stored transposed, B in any stored
 * width (frozen bf16/f16 weights packed two per u32). The forward product x·Wᵀ uses the inference kernel
 * (src/backend/webgpu/linear.ts); this one covers the two backward products:
 *   dx [N, IN]  = dy [N, OUT] · W [OUT, IN]          A row-major (k contiguous), B row-major (n contiguous)
 *   dW [OUT, IN] = dyᵀ [OUT, N] · x [N, IN]           A transposed (m contiguous), B row-major
 * 64x64 output tiles, 16-deep k slices staged in workgroup memory, 4x4 outputs per thread. The loader walks
 * each operand along its contiguous axis, so global reads stay coalesced whichever way it is stored.
 * Long k with few output tiles (LoRA factor gradients: k = tokens) is split over k into partial sums that a
 * second pass adds, so that a [896, 16] gradient over 32k tokens still spreads over the GPU.
 */
import { Params, type GpuContext } from '../../backend/webgpu/context.js';
import { scalarLoad, type WDType } from '../../backend/webgpu/wgsl.js';

const TM = 64;
const TK = 16;
const MT = 4;
/** split k when fewer output tiles than this */
const SPLIT_BELOW_TILES = 128;
const MIN_K_PER_SPLIT = 256;

export interface GemmArgs {
  M: number;
  N: number;
  K: number;
  /** A is stored [K, M] (element (m, k) at k * M + m) instead of [M, K] */
  aT: boolean;
  /** B is stored [N, K] (element (k, n) at n * K + k) instead of [K, N] */
  bT: boolean;
  bdt: WDType;
}

function gemmShader(aT: boolean, bT: boolean, bdt: WDType): string {
  const L = (TM * TK) / 256; // elements each thread loads per operand per k slice
  // a thread's e-th element: (row, k) of the tile, walking memory order
  const aIdx = aT
    ? `let kk = e / ${TM}u; let mm = e % ${TM}u; let gi = (k0 + kk) * p.M + (m0 + mm); let ok = (k0 + kk) < kEnd && (m0 + mm) < p.M;`
    : `let mm = e / ${TK}u; let kk = e % ${TK}u; let gi = (m0 + mm) * p.K + (k0 + kk); let ok = (k0 + kk) < kEnd && (m0 + mm) < p.M;`;
  const bIdx = bT
    ? `let nn = e / ${TK}u; let kk = e % ${TK}u; let gi = (n0 + nn) * p.K + (k0 + kk); let ok = (k0 + kk) < kEnd && (n0 + nn) < p.N;`
    : `let kk = e / ${TM}u; let nn = e % ${TM}u; let gi = (k0 + kk) * p.N + (n0 + nn); let ok = (k0 + kk) < kEnd && (n0 + nn) < p.N;`;
  return `struct P { M: u32, N: u32, K: u32, kps: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> a: array<f32>;
${scalarLoad('b', 2, bdt)}
@group(0) @binding(3) var<storage, read_write> c: array<f32>;
var<workgroup> As: array<vec4<f32>, ${(TK * TM) / 4}>;   // [k][m], 4 m a vector
var<workgroup> Bs: array<vec4<f32>, ${(TK * TM) / 4}>;   // [k][n]
@compute @workgroup_size(16, 16)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(local_invocation_id) li: vec3<u32>) {
  let n0 = wid.x * ${TM}u;
  let m0 = wid.y * ${TM}u;
  let kBeg = wid.z * p.kps;
  let kEnd = min(p.K, kBeg + p.kps);
  var acc: array<array<f32, ${MT}>, ${MT}>;
  for (var k0 = kBeg; k0 < kEnd; k0 += ${TK}u) {
    for (var c = 0u; c < ${L}u; c++) {
      let e = lid * ${L}u + c;
      {
        ${aIdx}
        var v = 0.0;
        if (ok) { v = a[gi]; }
        let si = kk * ${TM}u + mm;
        As[si / 4u][si % 4u] = v;
      }
      {
        ${bIdx}
        var v = 0.0;
        if (ok) { v = ld_b(gi); }
        let si = kk * ${TM}u + nn;
        Bs[si / 4u][si % 4u] = v;
      }
    }
    workgroupBarrier();
    for (var kk = 0u; kk < ${TK}u; kk++) {
      let av = As[kk * ${TM / 4}u + li.y];
      let bv = Bs[kk * ${TM / 4}u + li.x];
      for (var i = 0u; i < ${MT}u; i++) {
        for (var j = 0u; j < ${MT}u; j++) { acc[i][j] = fma(av[i], bv[j], acc[i][j]); }
      }
    }
    workgroupBarrier();
  }
  let base = wid.z * p.M * p.N;
  for (var i = 0u; i < ${MT}u; i++) {
    let m = m0 + li.y * ${MT}u + i;
    if (m >= p.M) { continue; }
    for (var j = 0u; j < ${MT}u; j++) {
      let n = n0 + li.x * ${MT}u + j;
      if (n < p.N) { c[base + m * p.N + n] = acc[i][j]; }
    }
  }
}`;
}

const SUM_SHADER = `struct P { n: u32, parts: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = (wid.y * nwg.x + wid.x) * 256u + lid;
  if (i >= p.n) { return; }
  var s = 0.0;
  for (var q = 0u; q < p.parts; q++) { s += part[q * p.n + i]; }
  c[i] = s;
}`;

/** c [M, N] (f32) = A · B as described by `g`. */
export function gemm(ctx: GpuContext, a: GPUBuffer, b: GPUBuffer, c: GPUBuffer, g: GemmArgs): void {
  const { M, N, K } = g;
  const gx = Math.ceil(N / TM);
  const gy = Math.ceil(M / TM);
  if (gx > ctx.maxGroups || gy > ctx.maxGroups) throw new Error(`gemm: [${M}, ${N}] output is too large for one dispatch`);
  const pl = ctx.pipeline(`train-gemm:${g.aT}:${g.bT}:${g.bdt}`, () => gemmShader(g.aT, g.bT, g.bdt));
  let splits = 1;
  if (gx * gy < SPLIT_BELOW_TILES && K > 2 * MIN_K_PER_SPLIT) {
    splits = Math.min(Math.ceil(SPLIT_BELOW_TILES / (gx * gy)), Math.floor(K / MIN_K_PER_SPLIT), 64);
  }
  const kps = Math.ceil(Math.ceil(K / splits) / TK) * TK;
  splits = Math.ceil(K / kps);
  if (splits <= 1) {
    ctx.dispatch(pl, new Params().u(M, N, K, Math.max(K, 1)), [a, b, c], [gx, gy, 1]);
    return;
  }
  const part = ctx.alloc(splits * M * N * 4, 'gemm partial sums');
  ctx.dispatch(pl, new Params().u(M, N, K, kps), [a, b, part], [gx, gy, splits]);
  const sp = ctx.pipeline('train-gemm-sum', () => SUM_SHADER);
  ctx.dispatch(sp, new Params().u(M * N, splits), [part, c], ctx.grid(Math.ceil((M * N) / 256)));
  ctx.release(part);
}
