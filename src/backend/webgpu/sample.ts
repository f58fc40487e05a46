/**
 * Temperature sampling on the GPU, so that sampled decoding can stay on the device like greedy decoding (the next
 * token's embedding reads the id straight from GPU memory, no logits readback per token).
 *
 * Same draw as the CPU sampler (src/generate/sampling.ts) with no top-k / top-p / min-p / repetition penalty: weights
 * w_i = exp((x_i - max) / T), target = u * sum(w), the token is the first id (in vocabulary order) whose running sum
 * of weights exceeds the target. u comes from the host's seeded generator, one per row and step, so a seed gives the
 * same stream of draws as on the CPU; the sums are f32 here (float64 there), so a draw within ~1e-6 of a boundary
 * between two tokens may fall on the other side.
 *
 * Three passes over a row of V logits split in G chunks: (1) chunk maxima, NaN / +inf flagged; (2) the chunk sums of
 * w with the row max; (3) one workgroup per row: the chunk where the running sum crosses the target, then the token
 * inside it. A non-finite row gives -1, which readIds reports.
 */
import { Params, type GpuContext } from './context.js';

/** chunks per row: enough workgroups to read a 152k vocabulary at full bandwidth (as the argmax) */
const SPLIT = 128;

export function sampleKernel(ctx: GpuContext, x: GPUBuffer, out: GPUBuffer, R: number, V: number, invT: number, u: Float32Array): void {
  const G = Math.max(1, Math.min(SPLIT, Math.ceil(V / 1024)));
  const chunk = Math.ceil(V / G);
  const part = ctx.alloc(R * G * 3 * 4, 'sampling partials'); // per chunk: max, weight sum, bad
  const head = `struct P { V: u32, G: u32, chunk: u32, invT: f32 }
@group(0) @binding(0) var<uniform> p: P;`;
  // pass 1: chunk max; bad when a logit is NaN or +inf (-inf is a weight of 0)
  const max = `${head}
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> part: array<u32>;
var<workgroup> red: array<f32, 256>;
var<workgroup> bad: atomic<u32>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = wid.y;
  let lo = wid.x * p.chunk;
  let hi = min(lo + p.chunk, p.V);
  var m = -3.4e38;
  var ok = true;
  for (var i = lo + lid; i < hi; i += 256u) {
    let v = x[row * p.V + i];
    ok = ok && v <= 3.40282346e38;   // false for NaN and +inf
    m = max(m, v);
  }
  red[lid] = m;
  if (!ok) { atomicStore(&bad, 1u); }
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (lid < s) { red[lid] = max(red[lid], red[lid + s]); }
    workgroupBarrier();
  }
  let b = atomicLoad(&bad);
  if (lid == 0u) {
    let o = (row * p.G + wid.x) * 3u;
    part[o] = bitcast<u32>(red[0]);
    part[o + 2u] = b;
  }
}`;
  // pass 2: the row max from the chunk maxima, then this chunk's sum of weights
  const sum = `${head}
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> part: array<u32>;
var<workgroup> red: array<f32, 256>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = wid.y;
  var m = -3.4e38;
  for (var g = lid; g < p.G; g += 256u) { m = max(m, bitcast<f32>(part[(row * p.G + g) * 3u])); }
  red[lid] = m;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (lid < s) { red[lid] = max(red[lid], red[lid + s]); }
    workgroupBarrier();
  }
  let rowMax = red[0];
  workgroupBarrier();
  let lo = wid.x * p.chunk;
  let hi = min(lo + p.chunk, p.V);
  var acc = 0.0;
  for (var i = lo + lid; i < hi; i += 256u) { acc += exp((x[row * p.V + i] - rowMax) * p.invT); }
  red[lid] = acc;
  workgroupBarrier();
  for (var s = 128u; s > 0u; s >>= 1u) {
    if (lid < s) { red[lid] += red[lid + s]; }
    workgroupBarrier();
  }
  if (lid == 0u) { part[(row * p.G + wid.x) * 3u + 1u] = bitcast<u32>(red[0]); }
}`;
  // pass 3: one workgroup per row picks the token. Each thread takes a contiguous run of the chosen chunk, so the
  // run sums in thread order follow vocabulary order.
  const pick = `${head}
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> part: array<u32>;
@group(0) @binding(3) var<storage, read> u: array<f32>;
@group(0) @binding(4) var<storage, read_write> out: array<u32>;
var<workgroup> scan: array<f32, 256>;
var<workgroup> rowMaxS: f32;
var<workgroup> pickC: atomic<u32>;
var<workgroup> pickT: atomic<u32>;
var<workgroup> lastPos: atomic<u32>;
var<workgroup> anyBad: atomic<u32>;
fn inclusiveScan(lid: u32) {
  for (var s = 1u; s < 256u; s <<= 1u) {
    var add = 0.0;
    if (lid >= s) { add = scan[lid - s]; }
    workgroupBarrier();
    scan[lid] += add;
    workgroupBarrier();
  }
}
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = wid.x;
  if (lid == 0u) {
    atomicStore(&pickC, 0xffffffffu);
    atomicStore(&pickT, 0xffffffffu);
    atomicStore(&lastPos, 0u);
    var m = -3.4e38;
    for (var g = 0u; g < p.G; g++) {
      let o = (row * p.G + g) * 3u;
      m = max(m, bitcast<f32>(part[o]));
      if (part[o + 2u] != 0u) { atomicStore(&anyBad, 1u); }
    }
    rowMaxS = m;
  }
  // chunk sums in chunk order (G <= 256), prefix-summed
  var cs = 0.0;
  if (lid < p.G) { cs = bitcast<f32>(part[(row * p.G + lid) * 3u + 1u]); }
  scan[lid] = cs;
  workgroupBarrier();
  inclusiveScan(lid);
  let total = scan[p.G - 1u];
  let goal = min(u[row] * total, total * 0.99999994);
  // the first chunk whose running sum passes the target
  if (lid < p.G && scan[lid] > goal && (lid == 0u || scan[lid - 1u] <= goal)) { atomicMin(&pickC, lid); }
  workgroupBarrier();
  var c = atomicLoad(&pickC);
  if (c == 0xffffffffu) { c = p.G - 1u; }
  var before = 0.0;
  if (c > 0u) { before = scan[c - 1u]; }
  let t2 = goal - before;
  let rowMax = rowMaxS;
  workgroupBarrier();
  // this thread's run of chunk c
  let lo = c * p.chunk;
  let hi = min(lo + p.chunk, p.V);
  let per = (p.chunk + 255u) / 256u;
  let a = min(lo + lid * per, hi);
  let e = min(a + per, hi);
  var run = 0.0;
  for (var i = a; i < e; i++) {
    let w = exp((x[row * p.V + i] - rowMax) * p.invT);
    run += w;
    if (w > 0.0) { atomicMax(&lastPos, i + 1u); }
  }
  scan[lid] = run;
  workgroupBarrier();
  inclusiveScan(lid);
  var start = 0.0;
  if (lid > 0u) { start = scan[lid - 1u]; }
  if (scan[lid] > t2 && start <= t2) {
    var acc = start;
    for (var i = a; i < e; i++) {
      acc += exp((x[row * p.V + i] - rowMax) * p.invT);
      if (acc > t2) { atomicMin(&pickT, i); break; }
    }
  }
  workgroupBarrier();
  if (lid == 0u) {
    var id = atomicLoad(&pickT);
    // rounding left the target past the chunk's own sum: its last token with a non-zero weight (a sliver of u)
    if (id == 0xffffffffu) { id = atomicLoad(&lastPos) - 1u; }
    out[row] = select(id, 0xffffffffu, atomicLoad(&anyBad) != 0u || !(total > 0.0));
  }
}`;
  const params = new Params().u(V, G, chunk).f(invT);
  ctx.dispatch(ctx.pipeline('sample:max', () => max), params, [x, part], [G, R]);
  ctx.dispatch(ctx.pipeline('sample:sum', () => sum), params, [x, part], [G, R]);
  ctx.dispatch(ctx.pipeline('sample:pick', () => pick), params, [x, part, { data: u }, out], [R]);
  ctx.release(part);
}
