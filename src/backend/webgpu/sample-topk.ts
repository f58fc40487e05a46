/**
 * Top-k sampling on the GPU (with top-p and min-p on top), so that the usual chat settings (HF's default top_k = 50,
 * Qwen's top_k = 20 + top_p = 0.8) decode on the device like greedy and plain temperature sampling. The same draw as
 * the CPU sampler (src/generate/sampling.ts), whose semantics it follows step by step: the candidates are every token
 * whose logit is >= the k-th largest (ties at the boundary survive), sorted by descending logit and then by id; top-p
 * keeps a token while the weight strictly before it is < p * (weight of all candidates); min-p keeps a token while
 * its weight is >= minP * (the top token's); the token is the first whose running weight passes u * (kept weight).
 * Weights and sums are f32 here (float64 there), so a draw within ~1e-6 of a boundary may fall on the other side.
 *
 * One workgroup per row: the row max, then a ladder of thresholds below it (counts per thread in registers, no
 * atomics) finds one with at least k and at most CAP logits above it, which go to workgroup memory; a bitonic sort;
 * the walk on one thread. Where no rung fits (a flat row), the k-th largest logit comes from a radix select (4
 * rounds of 8 bits over an order-preserving key, counting in a workgroup histogram; its atomics all hit a few bins
 * on real logits: H200, Qwen2.5-3B decode with top-k 40 + top-p 0.9 at 282-285 tok/s with the radix select alone,
 * against 344-366 for plain temperature sampling; the ladder made the kernel 1.9x faster on llvmpipe, not yet timed
 * on the H200). Ties at the boundary beyond the workgroup's room (degenerate rows, e.g. a zero lm_head) stay exact:
 * the walk treats them as one block of equal weights and the drawn one is found in vocabulary order by a last pass.
 * NaN or +inf in a row gives -1, which readIds reports.
 */
import { Params, type GpuContext } from './context.js';
import { DEVICE_TOPK_MAX as TOPK_MAX } from '../../generate/sampling.js';

const WS = 256;
const CAP = 1024;

/** the filters, all given (top-k in [1, TOPK_MAX]) */
export interface DeviceFilters {
  topK: number;
  topP: number;
  minP: number;
}

const shader = `struct P { V: u32, k: u32, invT: f32, topP: f32, minP: f32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read> u: array<f32>;
@group(0) @binding(3) var<storage, read_write> out: array<u32>;
const WS = ${WS}u;
const CAP = ${CAP}u;
const ROOM = ${CAP - TOPK_MAX}u;   // slots for tokens tied with the k-th (those above it are < k <= TOPK_MAX)
var<workgroup> hist: array<atomic<u32>, 256>;
var<workgroup> cx: array<f32, CAP>;
var<workgroup> ci: array<u32, CAP>;
var<workgroup> cw: array<f32, CAP>;
var<workgroup> nAbove: atomic<u32>;
var<workgroup> nTied: atomic<u32>;
var<workgroup> bad: atomic<u32>;
var<workgroup> sel: vec2<u32>;
var<workgroup> counts: vec3<u32>;
var<workgroup> scan: array<u32, WS>;
var<workgroup> tot16: array<u32, 16>;
var<workgroup> redf: array<f32, WS>;
var<workgroup> tieAt: u32;
var<workgroup> picked: u32;

/** larger logit, larger key (NaN never gets here) */
fn keyOf(v: f32) -> u32 {
  let b = bitcast<u32>(v);
  return select(b | 0x80000000u, ~b, (b & 0x80000000u) != 0u);
}
fn valueOf(k: u32) -> f32 {
  return bitcast<f32>(select(~k, k & 0x7fffffffu, (k & 0x80000000u) != 0u));
}
/** the candidates' order: descending logit, then ascending id */
fn first(xa: f32, ia: u32, xb: f32, ib: u32) -> bool {
  return xa > xb || (xa == xb && ia < ib);
}

/** rung i of a threshold ladder below hi: hi - d0 * 2^i (geometric), or hi - (d0 + step * i) */
fn rung(hi: f32, d0: f32, step: f32, geometric: bool, i: u32) -> f32 {
  return hi - select(d0 + step * f32(i), d0 * exp2(f32(i)), geometric);
}

/** how many of the row's logits are >= each of 16 rungs (summed over the workgroup; the same for every thread) */
// (WS * 4 == CAP: four rungs' partial counts fill ci)
fn ladder(base: u32, lid: u32, hi: f32, d0: f32, step: f32, geometric: bool) -> array<u32, 16> {
  var c: array<u32, 16>;
  var t: array<f32, 16>;
  for (var i = 0u; i < 16u; i++) { t[i] = rung(hi, d0, step, geometric, i); }
  for (var j = lid; j < p.V; j += WS) {
    let v = x[base + j];
    for (var i = 0u; i < 16u; i++) { c[i] += select(0u, 1u, v >= t[i]); }
  }
  // summed 4 rungs at a time in ci (free until the candidates are collected): the kernel stays under 16 KiB of
  // workgroup memory, WebGPU's default limit
  for (var g = 0u; g < 4u; g++) {
    for (var i = 0u; i < 4u; i++) { ci[i * WS + lid] = c[g * 4u + i]; }
    workgroupBarrier();
    for (var s = WS / 2u; s > 0u; s >>= 1u) {
      if (lid < s) { for (var i = 0u; i < 4u; i++) { ci[i * WS + lid] += ci[i * WS + lid + s]; } }
      workgroupBarrier();
    }
    if (lid == 0u) { for (var i = 0u; i < 4u; i++) { tot16[g * 4u + i] = ci[i * WS]; } }
    workgroupBarrier();
  }
  return workgroupUniformLoad(&tot16);
}

@compute @workgroup_size(${WS})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = wid.x;
  let base = row * p.V;
  // the row max (and NaN / +inf)
  var mx = -3.4e38;
  for (var i = lid; i < p.V; i += WS) {
    let v = x[base + i];
    if (!(v <= 3.40282346e38)) { atomicStore(&bad, 1u); }
    mx = max(mx, v);
  }
  redf[lid] = mx;
  workgroupBarrier();
  for (var s = WS / 2u; s > 0u; s >>= 1u) {
    if (lid < s) { redf[lid] = max(redf[lid], redf[lid + s]); }
    workgroupBarrier();
  }
  if (lid == 0u) { counts = vec3<u32>(0u, 0u, atomicLoad(&bad)); }
  let hi = redf[0];
  if (workgroupUniformLoad(&counts).z != 0u) {
    if (lid == 0u) { out[row] = 0xffffffffu; }
    return;
  }
  // Usually the top-k lie within a few units of the max, among few enough tokens to sort: the nearest rung of a
  // ladder below the max (16 geometric rungs, 1/64 to 512 below it, then 16 linear ones inside the step that passes
  // k) with >= k logits at or above it and at most CAP of them gives the candidates at once. Else the radix select.
  let D0 = 1.0 / 64.0;
  var ok = false;
  var thr = 0.0;
  let c = ladder(base, lid, hi, D0, 0.0, true);
  var i = 0u;
  while (i < 16u && c[i] < p.k) { i++; }
  if (i < 16u && c[i] <= CAP) {
    ok = true;
    thr = rung(hi, D0, 0.0, true, i);
  } else if (i < 16u && i > 0u) {
    let d0 = D0 * exp2(f32(i - 1u));
    let step = d0 / 16.0;   // rung i is 2 d0 below the max: 16 steps from d0 + step to it
    let cf = ladder(base, lid, hi, d0 + step, step, false);
    var f = 0u;
    while (f < 16u && cf[f] < p.k) { f++; }
    if (f < 16u && cf[f] <= CAP) {
      ok = true;
      thr = rung(hi, d0 + step, step, false, f);
    }
  }
  var n = 0u;
  var block = false;
  var tied = 0u;
  var kth = 0u;   // the radix select's k-th key (the ladder leaves it 0: its list is never empty, it has no block of ties)
  if (ok) {
    for (var j = lid; j < p.V; j += WS) {
      let v = x[base + j];
      if (v >= thr) {
        let q = atomicAdd(&nAbove, 1u);
        if (q < CAP) { cx[q] = v; ci[q] = j; }   // always (the ladder counted them), but never out of bounds
      }
    }
    workgroupBarrier();
    if (lid == 0u) { counts = vec3<u32>(atomicLoad(&nAbove), 0u, 0u); }
    n = min(workgroupUniformLoad(&counts).x, CAP);
  } else {
    // radix select of the k-th largest key, most significant byte first
    var prefix = 0u;
    var mask = 0u;
    var remaining = p.k;
    for (var r = 0u; r < 4u; r++) {
      let shift = 24u - 8u * r;
      atomicStore(&hist[lid], 0u);
      workgroupBarrier();
      for (var j = lid; j < p.V; j += WS) {
        let kk = keyOf(x[base + j]);
        if ((kk & mask) == prefix) { atomicAdd(&hist[(kk >> shift) & 255u], 1u); }
      }
      workgroupBarrier();
      if (lid == 0u) {
        var rem = remaining;
        var b = 255u;
        loop {
          let h = atomicLoad(&hist[b]);
          if (h >= rem || b == 0u) { break; }
          rem -= h;
          b--;
        }
        sel = vec2<u32>(prefix | (b << shift), rem);
      }
      let sl = workgroupUniformLoad(&sel);
      prefix = sl.x;
      remaining = sl.y;
      mask |= 255u << shift;
    }
    kth = prefix;
    // candidates: above the k-th at the front, ties from the back (while they fit)
    for (var j = lid; j < p.V; j += WS) {
      let v = x[base + j];
      let kk = keyOf(v);
      if (kk > kth) {
        let q = atomicAdd(&nAbove, 1u);
        cx[q] = v;
        ci[q] = j;
      } else if (kk == kth) {
        let t = atomicAdd(&nTied, 1u);
        if (t < ROOM) { cx[CAP - 1u - t] = v; ci[CAP - 1u - t] = j; }
      }
    }
    workgroupBarrier();
    if (lid == 0u) { counts = vec3<u32>(atomicLoad(&nAbove), atomicLoad(&nTied), 0u); }
    let cc = workgroupUniformLoad(&counts);
    let above = cc.x;
    tied = cc.y;
    block = tied > ROOM;   // too many ties for the room: they stay one block of equal weights
    let keptTies = select(min(tied, ROOM), 0u, block);
    // the kept ties move from the back to right after the tokens above (through registers: the ranges may overlap)
    var tx: array<f32, ${CAP / WS}>;
    var ti: array<u32, ${CAP / WS}>;
    for (var q = 0u; q < ${CAP / WS}u; q++) {
      let t = lid + q * WS;
      if (t < keptTies) { tx[q] = cx[CAP - 1u - t]; ti[q] = ci[CAP - 1u - t]; }
    }
    workgroupBarrier();
    for (var q = 0u; q < ${CAP / WS}u; q++) {
      let t = lid + q * WS;
      if (t < keptTies) { cx[above + t] = tx[q]; ci[above + t] = ti[q]; }
    }
    n = above + keptTies;
  }
  var N = 1u;
  while (N < n) { N <<= 1u; }
  // padding: -inf with the largest id, after every candidate (made at run time: WGSL constants cannot be infinite)
  let negInf = bitcast<f32>(0xff800000u + min(lid, 0u));
  for (var j = n + lid; j < N; j += WS) { cx[j] = negInf; ci[j] = 0xffffffffu; }
  workgroupBarrier();
  // bitonic sort of [0, N) into the candidates' order
  for (var size = 2u; size <= N; size <<= 1u) {
    for (var stride = size >> 1u; stride > 0u; stride >>= 1u) {
      for (var t = lid; t < N / 2u; t += WS) {
        let a = 2u * t - (t & (stride - 1u));
        let b = a + stride;
        let inOrder = first(cx[a], ci[a], cx[b], ci[b]);
        if (inOrder != ((a & size) == 0u)) {
          let ax = cx[a]; let ai = ci[a];
          cx[a] = cx[b]; ci[a] = ci[b];
          cx[b] = ax; ci[b] = ai;
        }
      }
      workgroupBarrier();
    }
  }
  if (ok) {
    // the ladder's list holds everything >= the k-th largest (cx[k - 1]), ties included, and maybe more below it
    if (lid == 0u) {
      let kv = cx[p.k - 1u];
      var e = p.k;
      while (e < n && cx[e] >= kv) { e++; }
      counts = vec3<u32>(e, 0u, 0u);
    }
    n = workgroupUniformLoad(&counts).x;
  }
  let top = select(valueOf(kth), cx[0], n > 0u);
  for (var j = lid; j < n; j += WS) { cw[j] = exp((cx[j] - top) * p.invT); }
  workgroupBarrier();
  if (lid == 0u) {
    // the list, then (block) the ties: weight wt each, ids in vocabulary order
    let wt = exp((valueOf(kth) - top) * p.invT);
    let L = n + select(0u, tied, block);
    var total = 0.0;
    var m = L;   // tokens of weight 0 (underflow) are not candidates, as on the CPU
    for (var j = 0u; j < L; j++) {
      let w = select(wt, cw[j], j < n);
      if (w == 0.0) { m = j; break; }
      total += w;
    }
    var end = m;
    if (p.topP < 1.0) {
      var before = 0.0;
      end = 0u;
      loop {
        if (end >= m || (end > 0u && !(before < p.topP * total))) { break; }
        before += select(wt, cw[end], end < n);
        end++;
      }
    }
    if (p.minP > 0.0) {
      let thr = p.minP * select(wt, cw[0], n > 0u);
      var e2 = 1u;
      while (e2 < end && select(wt, cw[e2], e2 < n) >= thr) { e2++; }
      end = min(end, e2);
    }
    var sum = 0.0;
    for (var j = 0u; j < end; j++) { sum += select(wt, cw[j], j < n); }
    var r = u[row] * sum;
    var q = end - 1u;
    for (var j = 0u; j < end; j++) {
      r -= select(wt, cw[j], j < n);
      if (r < 0.0) { q = j; break; }
    }
    tieAt = 0xffffffffu;
    if (q < n) { picked = ci[q]; } else { tieAt = q - n; }
  }
  let at = workgroupUniformLoad(&tieAt);
  if (at != 0xffffffffu) {
    // the at-th tied token in vocabulary order: tied counts of contiguous runs, scanned
    let per = (p.V + WS - 1u) / WS;
    let lo = min(lid * per, p.V);
    let hi = min(lo + per, p.V);
    var cnt = 0u;
    for (var i = lo; i < hi; i++) { if (keyOf(x[base + i]) == kth) { cnt++; } }
    scan[lid] = cnt;
    workgroupBarrier();
    for (var s = 1u; s < WS; s <<= 1u) {
      var add = 0u;
      if (lid >= s) { add = scan[lid - s]; }
      workgroupBarrier();
      scan[lid] += add;
      workgroupBarrier();
    }
    let start = scan[lid] - cnt;
    if (at >= start && at < scan[lid]) {
      var k = start;
      for (var i = lo; i < hi; i++) {
        if (keyOf(x[base + i]) == kth) {
          if (k == at) { picked = i; break; }
          k++;
        }
      }
    }
    workgroupBarrier();
  }
  if (lid == 0u) { out[row] = picked; }
}`;

/** one draw per row of x [R, V] into out (u32 ids), u the rows' uniforms in [0, 1) */
export function sampleTopKKernel(ctx: GpuContext, x: GPUBuffer, out: GPUBuffer, R: number, V: number, invT: number, f: DeviceFilters, u: Float32Array): void {
  const params = new Params().u(V, f.topK).f(invT, f.topP, f.minP);
  ctx.dispatch(ctx.pipeline('sample:topk', () => shader), params, [x, { data: u }, out], [R]);
}
