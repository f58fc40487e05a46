/**
 * Element-wise and row-wise kernels: add, swiglu, rmsnorm, embedding, gatherRows, rope. Each takes and
 * returns GPU buffers; shapes are checked by the caller (index.ts).
 */
import { Params, type GpuContext } from './context.js';
import { FLAT_WG, scalarLoad, type WDType } from './wgsl.js';

const WG = 256;
const BUILTINS = `@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32`;

function binaryShader(expr: string): string {
  return `struct P { n: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(${WG})
fn main(${BUILTINS}) {
  ${FLAT_WG}
  let i = wg * ${WG}u + lid;
  if (i >= p.n) { return; }
  let x = a[i];
  let z = b[i];
  y[i] = ${expr};
}`;
}

export function addKernel(ctx: GpuContext, a: GPUBuffer, b: GPUBuffer, y: GPUBuffer, n: number): void {
  const pl = ctx.pipeline('add', () => binaryShader('x + z'));
  ctx.dispatch(pl, new Params().u(n), [a, b, y], ctx.grid(Math.ceil(n / WG)));
}

/** silu(gate) * up; silu(x) = x / (1 + e^-x), which goes to -0 (not NaN) for very negative x */
export function swigluKernel(ctx: GpuContext, gate: GPUBuffer, up: GPUBuffer, y: GPUBuffer, n: number): void {
  const pl = ctx.pipeline('swiglu', () => binaryShader('x / (1.0 + exp(-x)) * z'));
  ctx.dispatch(pl, new Params().u(n), [gate, up, y], ctx.grid(Math.ceil(n / WG)));
}

/** One workgroup per row: sum of squares reduced in workgroup memory, then x * rstd * w. */
export function rmsnormKernel(ctx: GpuContext, x: GPUBuffer, w: GPUBuffer, wdt: WDType, y: GPUBuffer, N: number, C: number, eps: number): void {
  const pl = ctx.pipeline(`rmsnorm:${wdt}`, () => `struct P { C: u32, eps: f32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
${scalarLoad('w', 2, wdt)}
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
var<workgroup> red: array<f32, ${WG}>;
@compute @workgroup_size(${WG})
fn main(${BUILTINS}) {
  ${FLAT_WG}
  let base = wg * p.C;
  var ss = 0.0;
  for (var i = lid; i < p.C; i += ${WG}u) { let v = x[base + i]; ss += v * v; }
  red[lid] = ss;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (lid < s) { red[lid] += red[lid + s]; }
    workgroupBarrier();
  }
  let r = 1.0 / sqrt(red[0] / f32(p.C) + p.eps);
  for (var i = lid; i < p.C; i += ${WG}u) { y[base + i] = (x[base + i] * r) * ld_w(i); }
}`);
  ctx.dispatch(pl, new Params().u(C).f(eps), [x, w, y], ctx.grid(N));
}

/**
 * Row gather from a table in any width: y[n, :] = table[ids[n], :] (embedding, gatherRows). `ids` comes from the
 * host, or is a GPU buffer of `rows` ids (greedy decoding feeds the argmax of the last token without a readback).
 */
export function gatherKernel(ctx: GpuContext, ids: Int32Array | GPUBuffer, table: GPUBuffer, tdt: WDType, y: GPUBuffer, C: number, rows = 0): void {
  const onHost = ids instanceof Int32Array;
  const n = (onHost ? ids.length : rows) * C;
  const pl = ctx.pipeline(`gather:${tdt}:${onHost ? 'host' : 'buf'}`, () => `struct P { n: u32, C: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> ids: array<u32>;
${scalarLoad('t', 2, tdt)}
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(${WG})
fn main(${BUILTINS}) {
  ${FLAT_WG}
  let i = wg * ${WG}u + lid;
  if (i >= p.n) { return; }
  let row = i / p.C;
  y[i] = ld_t(ids[row] * p.C + (i - row * p.C));
}`);
  ctx.dispatch(pl, new Params().u(n, C), [onHost ? { data: ids } : ids, table, y], ctx.grid(Math.ceil(n / WG)));
}

/**
 * Rotary embedding, rotate_half pairs (i, i + D/2). cos/sin come from a host-made table [P, D/2] of
 * (cos, sin) of the f32 angle HF forms (pos * inv_freq in f32), computed in f64: the GPU's own sin/cos are
 * only accurate near [-pi, pi] and positions reach thousands of radians. Negative positions use symmetry.
 */
export function ropeKernel(ctx: GpuContext, x: GPUBuffer, y: GPUBuffer, positions: Int32Array, table: GPUBuffer, heads: number, D: number): void {
  const half = D / 2;
  const n = positions.length * heads * half;
  const pl = ctx.pipeline('rope', () => `struct P { n: u32, H: u32, half: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> pos: array<i32>;
@group(0) @binding(3) var<storage, read> cs: array<vec2<f32>>;
@group(0) @binding(4) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(${WG})
fn main(${BUILTINS}) {
  ${FLAT_WG}
  let e = wg * ${WG}u + lid;
  if (e >= p.n) { return; }
  let i = e % p.half;
  let nh = e / p.half;           // row * H + head
  let row = nh / p.H;
  let ps = pos[row];
  let c = cs[u32(abs(ps)) * p.half + i];
  let sn = select(c.y, -c.y, ps < 0);
  let o = nh * 2u * p.half + i;
  let x1 = x[o];
  let x2 = x[o + p.half];
  y[o] = x1 * c.x - x2 * sn;
  y[o + p.half] = x2 * c.x + x1 * sn;
}`);
  ctx.dispatch(pl, new Params().u(n, heads, half), [x, { data: positions }, table, y], ctx.grid(Math.ceil(n / WG)));
}
