/**
 * Training kernels other than the GEMM and attention: element-wise (a + αb, a∘b, swiglu backward), RMSNorm
 * forward with saved rstd and its backward (dx per row; dw as per-chunk column partial sums, then a sum over
 * chunks, no atomics), the embedding backward (scatter-add as a gather: the host groups rows by token id),
 * and the cross-entropy over vocab rows. All f32; weights in their stored width via scalarLoad.
 */
import { Params, type GpuContext } from '../../backend/webgpu/context.js';
import { FLAT_WG, scalarLoad, type WDType } from '../../backend/webgpu/wgsl.js';

const WG = 256;
const BUILTINS = `@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32`;

/** y = f(x, z) over n elements; `alpha` is a parameter */
function mapShader(expr: string, outs: string[]): string {
  return `struct P { n: u32, alpha: f32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read> b: array<f32>;
${outs.map((o, i) => `@group(0) @binding(${3 + i}) var<storage, read_write> ${o}: array<f32>;`).join('\n')}
@compute @workgroup_size(${WG})
fn main(${BUILTINS}) {
  ${FLAT_WG}
  let i = wg * ${WG}u + lid;
  if (i >= p.n) { return; }
  let x = a[i];
  let z = b[i];
  ${expr}
}`;
}

export function addScaledKernel(ctx: GpuContext, a: GPUBuffer, b: GPUBuffer, y: GPUBuffer, n: number, alpha: number): void {
  const pl = ctx.pipeline('train-axpy', () => mapShader('y[i] = x + p.alpha * z;', ['y']));
  ctx.dispatch(pl, new Params().u(n).f(alpha), [a, b, y], ctx.grid(Math.ceil(n / WG)));
}

export function mulKernel(ctx: GpuContext, a: GPUBuffer, b: GPUBuffer, y: GPUBuffer, n: number): void {
  const pl = ctx.pipeline('train-mul', () => mapShader('y[i] = x * z;', ['y']));
  ctx.dispatch(pl, new Params().u(n).f(0), [a, b, y], ctx.grid(Math.ceil(n / WG)));
}

/** dg = dy·u·σ(g)(1 + g(1 − σ(g))), du = dy·g·σ(g); a = gate, b = up, dy in binding 3 */
export function swigluBackwardKernel(ctx: GpuContext, dy: GPUBuffer, g: GPUBuffer, u: GPUBuffer, dg: GPUBuffer, du: GPUBuffer, n: number): void {
  const pl = ctx.pipeline('train-swiglu-bwd', () => `struct P { n: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> g: array<f32>;
@group(0) @binding(3) var<storage, read> u: array<f32>;
@group(0) @binding(4) var<storage, read_write> dg: array<f32>;
@group(0) @binding(5) var<storage, read_write> du: array<f32>;
@compute @workgroup_size(${WG})
fn main(${BUILTINS}) {
  ${FLAT_WG}
  let i = wg * ${WG}u + lid;
  if (i >= p.n) { return; }
  let x = g[i];
  let s = 1.0 / (1.0 + exp(-x));
  du[i] = dy[i] * x * s;
  dg[i] = dy[i] * u[i] * s * (1.0 + x * (1.0 - s));
}`);
  ctx.dispatch(pl, new Params().u(n), [dy, g, u, dg, du], ctx.grid(Math.ceil(n / WG)));
}

const ROW_REDUCE = `  red[lid] = acc;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (lid < s) { red[lid] += red[lid + s]; }
    workgroupBarrier();
  }`;

/** One workgroup per row: y = x·r·w with r = 1/sqrt(mean(x²) + eps) saved into rstd. */
export function rmsnormTrainKernel(ctx: GpuContext, x: GPUBuffer, w: GPUBuffer, wdt: WDType, y: GPUBuffer, rstd: GPUBuffer, N: number, C: number, eps: number): void {
  const pl = ctx.pipeline(`train-rmsnorm:${wdt}`, () => `struct P { C: u32, eps: f32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
${scalarLoad('w', 2, wdt)}
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
@group(0) @binding(4) var<storage, read_write> rstd: array<f32>;
var<workgroup> red: array<f32, ${WG}>;
@compute @workgroup_size(${WG})
fn main(${BUILTINS}) {
  ${FLAT_WG}
  let base = wg * p.C;
  var acc = 0.0;
  for (var i = lid; i < p.C; i += ${WG}u) { let v = x[base + i]; acc += v * v; }
${ROW_REDUCE}
  let r = 1.0 / sqrt(red[0] / f32(p.C) + p.eps);
  if (lid == 0u) { rstd[wg] = r; }
  for (var i = lid; i < p.C; i += ${WG}u) { y[base + i] = (x[base + i] * r) * ld_w(i); }
}`);
  ctx.dispatch(pl, new Params().u(C).f(eps), [x, w, y, rstd], ctx.grid(N));
}

/** rows per partial sum of dw */
const DW_CHUNK = 128;

/**
 * dx = r·(dy∘w) − r³/C · x · Σ(dy∘w∘x) per row; dw = Σ_n dy∘x·r as partial sums over DW_CHUNK rows
 * (workgroups over (column block, row chunk)) added up by a second pass.
 */
export function rmsnormBackwardKernel(
  ctx: GpuContext, dy: GPUBuffer, x: GPUBuffer, w: GPUBuffer, wdt: WDType, rstd: GPUBuffer, dx: GPUBuffer, dw: GPUBuffer, N: number, C: number,
): void {
  const pl = ctx.pipeline(`train-rmsnorm-dx:${wdt}`, () => `struct P { C: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
${scalarLoad('w', 3, wdt)}
@group(0) @binding(4) var<storage, read> rstd: array<f32>;
@group(0) @binding(5) var<storage, read_write> dx: array<f32>;
var<workgroup> red: array<f32, ${WG}>;
@compute @workgroup_size(${WG})
fn main(${BUILTINS}) {
  ${FLAT_WG}
  let base = wg * p.C;
  var acc = 0.0;
  for (var i = lid; i < p.C; i += ${WG}u) { acc += dy[base + i] * ld_w(i) * x[base + i]; }
${ROW_REDUCE}
  let r = rstd[wg];
  let c = r * r * r * red[0] / f32(p.C);
  for (var i = lid; i < p.C; i += ${WG}u) { dx[base + i] = r * dy[base + i] * ld_w(i) - c * x[base + i]; }
}`);
  ctx.dispatch(pl, new Params().u(C), [dy, x, w, rstd, dx], ctx.grid(N));
  const chunks = Math.ceil(N / DW_CHUNK);
  const part = ctx.alloc(chunks * C * 4, 'rmsnorm dw partials');
  const pp = ctx.pipeline('train-rmsnorm-dw', () => `struct P { N: u32, C: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> dy: array<f32>;
@group(0) @binding(2) var<storage, read> x: array<f32>;
@group(0) @binding(3) var<storage, read> rstd: array<f32>;
@group(0) @binding(4) var<storage, read_write> part: array<f32>;
@compute @workgroup_size(${WG})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let i = wid.x * ${WG}u + lid;
  if (i >= p.C) { return; }
  let n0 = wid.y * ${DW_CHUNK}u;
  let n1 = min(p.N, n0 + ${DW_CHUNK}u);
  var s = 0.0;
  for (var n = n0; n < n1; n++) { s += dy[n * p.C + i] * x[n * p.C + i] * rstd[n]; }
  part[wid.y * p.C + i] = s;
}`);
  if (chunks > ctx.maxGroups) throw new Error(`rmsnorm backward: ${N} rows is too many for one dispatch`);
  ctx.dispatch(pp, new Params().u(N, C), [dy, x, rstd, part], [Math.ceil(C / WG), chunks]);
  columnSum(ctx, part, dw, chunks, C);
  ctx.release(part);
}

/** out [C] = Σ_r part [R, C] */
export function columnSum(ctx: GpuContext, part: GPUBuffer, out: GPUBuffer, R: number, C: number): void {
  const pl = ctx.pipeline('train-colsum', () => `struct P { R: u32, C: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> part: array<f32>;
@group(0) @binding(2) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(${WG})
fn main(${BUILTINS}) {
  ${FLAT_WG}
  let i = wg * ${WG}u + lid;
  if (i >= p.C) { return; }
  var s = 0.0;
  for (var r = 0u; r < p.R; r++) { s += part[r * p.C + i]; }
  out[i] = s;
}`);
  ctx.dispatch(pl, new Params().u(R, C), [part, out], ctx.grid(Math.ceil(C / WG)));
}

/**
 * dTable [V, C]: row v = Σ dy rows n with ids[n] = v. The host lists, per vocab row, the dy rows that hit it
 * (CSR: start [V + 1], rows [N]), so each output element is one thread's sum and rows never collide.
 */
export function embeddingBackwardKernel(ctx: GpuContext, ids: Int32Array, dy: GPUBuffer, out: GPUBuffer, V: number, C: number): void {
  const start = new Uint32Array(V + 1);
  for (const id of ids) start[id + 1]++;
  for (let v = 0; v < V; v++) start[v + 1] += start[v];
  const fill = start.slice(0, V);
  const rows = new Uint32Array(ids.length);
  ids.forEach((id, n) => (rows[fill[id]++] = n));
  const pl = ctx.pipeline('train-embed-bwd', () => `struct P { n: u32, C: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> start: array<u32>;
@group(0) @binding(2) var<storage, read> rows: array<u32>;
@group(0) @binding(3) var<storage, read> dy: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<f32>;
@compute @workgroup_size(${WG})
fn main(${BUILTINS}) {
  ${FLAT_WG}
  let e = wg * ${WG}u + lid;
  if (e >= p.n) { return; }
  let v = e / p.C;
  let i = e % p.C;
  var s = 0.0;
  for (var q = start[v]; q < start[v + 1u]; q++) { s += dy[rows[q] * p.C + i]; }
  out[e] = s;
}`);
  const n = V * C;
  ctx.dispatch(pl, new Params().u(n, C), [{ data: start }, { data: rows.length ? rows : new Uint32Array(1) }, dy, out], ctx.grid(Math.ceil(n / WG)));
}

/**
 * One workgroup per row of logits [N, V]: max, Σ exp, then loss = lse − logit[t] and
 * dlogits = scale·(softmax − onehot). Ignored rows (-100) get loss 0 and a zero gradient.
 */
export function crossEntropyKernel(ctx: GpuContext, logits: GPUBuffer, targets: Int32Array, loss: GPUBuffer, dl: GPUBuffer, N: number, V: number, scale: number): void {
  const pl = ctx.pipeline('train-ce', () => `struct P { V: u32, scale: f32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> tg: array<i32>;
@group(0) @binding(3) var<storage, read_write> loss: array<f32>;
@group(0) @binding(4) var<storage, read_write> dl: array<f32>;
var<workgroup> red: array<f32, ${WG}>;
@compute @workgroup_size(${WG})
fn main(${BUILTINS}) {
  ${FLAT_WG}
  let base = wg * p.V;
  let t = tg[wg];
  if (t < 0) {
    for (var i = lid; i < p.V; i += ${WG}u) { dl[base + i] = 0.0; }
    if (lid == 0u) { loss[wg] = 0.0; }
    return;
  }
  var mx = -3.0e38;
  for (var i = lid; i < p.V; i += ${WG}u) { mx = max(mx, x[base + i]); }
  red[lid] = mx;
  workgroupBarrier();
  for (var s = ${WG / 2}u; s > 0u; s >>= 1u) {
    if (lid < s) { red[lid] = max(red[lid], red[lid + s]); }
    workgroupBarrier();
  }
  let m = red[0];
  workgroupBarrier();
  var acc = 0.0;
  for (var i = lid; i < p.V; i += ${WG}u) { acc += exp(x[base + i] - m); }
${ROW_REDUCE}
  let lse = m + log(red[0]);
  for (var i = lid; i < p.V; i += ${WG}u) {
    var g = p.scale * exp(x[base + i] - lse);
    if (i == u32(t)) { g -= p.scale; }
    dl[base + i] = g;
  }
  if (lid == 0u) { loss[wg] = lse - x[base + u32(t)]; }
}`);
  ctx.dispatch(pl, new Params().u(V).f(scale), [logits, { data: targets }, loss, dl], ctx.grid(N));
}
