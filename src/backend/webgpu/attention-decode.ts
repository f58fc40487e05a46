/**
 * Decode attention (one query row per sequence) without workgroup memory or barriers: one subgroup per query head.
 *
 * A workgroup takes one (batch, kv head) and a range of keys; its G subgroups are the G query heads of that kv
 * head, so each key/value row is read from memory once and then served to the other heads from cache. Inside a
 * subgroup of S lanes, lane i owns D/S consecutive dimensions (D/S/4 vec4s) of q, of every key and value row and
 * of the output: per key, each lane loads its slice of k and v (a coalesced row read), the score's sum over the
 * D dimensions is an xor butterfly of subgroup shuffles, and the online softmax update is the same on every lane.
 * UNROLL keys' loads are issued before their arithmetic. The old kernel (attention.ts) staged key tiles and scores
 * in workgroup memory with four barriers per tile; at 512 keys that was ~29 µs of the ~92 µs of a 3B layer's
 * decode on the H200.
 *
 * Output: the same split-K partials [o (D), m, l] per (row, split) as attention.ts's decode kernel, merged by its
 * combine pass, or (one split) the normalised output directly. Semantics as flashShader: masked keys (keyValid = 0)
 * are skipped, gravity sums (q - k)² directly, the fixed max M²/eps where gravityFixedMax allows it, gravity-pure
 * weights are the scores themselves.
 */
import type { AttentionKind } from '../backend.js';

/** keys whose loads one lane issues before using them */
const UNROLL = 4;

/** whether the kernel takes this shape: S lanes split D into whole vec4s, and the G subgroups fit a workgroup */
export function decodeFits(D: number, G: number, S: number): boolean {
  return S >= 4 && D % (4 * S) === 0 && G * S <= 256;
}

export function decodeShader(D: number, G: number, S: number, kind: AttentionKind, fixed: boolean, split: boolean): string {
  const gravity = kind !== 'dot';
  const pure = kind === 'gravity-pure';
  const V4 = D / S / 4; // vec4 per lane
  const range = (f: (i: number) => string) => Array.from({ length: V4 }, (_, i) => f(i)).join(' ');
  const butterfly = Array.from({ length: Math.log2(S) }, (_, i) => `d2 += subgroupShuffleXor(d2, ${S >> (i + 1)}u);`).join(' ');
  const partial = (u: number) => range((i) => gravity
    ? `{ let df = qv[${i}] - kk${u}[${i}]; d2 += dot(df, df); }`
    : `d2 += dot(qv[${i}], kk${u}[${i}]);`);
  // the score s and the weight w of the key, from its squared distance (gravity) or dot product
  const score = pure ? `let w = mass[h] / (d2 + p.eps);`
    : fixed ? `let w = exp(mass[h] / (d2 + p.eps) - m);`
    : `let s = ${gravity ? 'mass[h] / (d2 + p.eps)' : 'p.scale * d2'};
        let mn = max(m, s);
        let c = exp(m - mn);
        let w = exp(s - mn);
        m = mn;
        l *= c;
        ${range((i) => `o[${i}] *= c;`)}`;
  // the shuffles stay in uniform control flow: the sum is made for a masked key too, and then not used
  const use = (u: number) => `{
      var d2 = 0.0;
      ${partial(u)}
      ${butterfly}
      if (ok${u}) {
        ${score}
        l += w;
        ${range((i) => `o[${i}] += w * vv${u}[${i}];`)}
      }
    }`;
  const U = Array.from({ length: UNROLL }, (_, u) => u);
  const store = split
    ? `let base = (row * p.nsplit + split) * (D + 2u);
  ${range((i) => `{ let e = base + (lane * ${V4}u + ${i}u) * 4u; out[e] = o[${i}].x; out[e + 1u] = o[${i}].y; out[e + 2u] = o[${i}].z; out[e + 3u] = o[${i}].w; }`)}
  if (lane == 0u) { out[base + D] = m; out[base + D + 1u] = l; }`
    : `let inv = select(0.0, 1.0 / l, l > 0.0);
  ${range((i) => `{ let e = row * D + (lane * ${V4}u + ${i}u) * 4u; let v = o[${i}] * inv; out[e] = v.x; out[e + 1u] = v.y; out[e + 2u] = v.z; out[e + 3u] = v.w; }`)}`;
  return `enable subgroups;
struct P { T: u32, start: u32, maxLen: u32, Hq: u32, Hkv: u32, kps: u32, nsplit: u32, eps: f32, scale: f32, vOff4: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> q: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> kv: array<vec4<f32>>;   // k, then v from vec4 p.vOff4
@group(0) @binding(3) var<storage, read> valid: array<u32>;
@group(0) @binding(4) var<storage, read> mass: array<f32>;
@group(0) @binding(5) var<storage, read_write> out: array<f32>;
const D = ${D}u;
const D4 = ${D / 4}u;
@compute @workgroup_size(${G * S})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let split = wid.x;
  let bh = wid.y;                       // b * Hkv + kvh
  let b = bh / p.Hkv;
  let h = (bh % p.Hkv) * ${G}u + lid / ${S}u;
  let lane = lid % ${S}u;
  let row = b * p.Hq + h;               // (b * T + t) * Hq + h with T = 1
  var qv: array<vec4<f32>, ${V4}>;
  ${range((i) => `qv[${i}] = q[row * D4 + lane * ${V4}u + ${i}u];`)}
  // keys [k0, k1) of this split; the query is at slot p.start, so every key up to it is causal
  let k0 = split * p.kps;
  let k1 = min(p.start + 1u, k0 + p.kps);
  var m = ${pure ? '0.0' : fixed ? 'mass[h] / p.eps' : '-1.0e30'};
  var l = 0.0;
  var o: array<vec4<f32>, ${V4}>;
  for (var k = k0; k < k1; k += ${UNROLL}u) {
    ${U.map((u) => `let s${u} = min(k + ${u}u, k1 - 1u);
    let ok${u} = k + ${u}u < k1 && valid[b * p.maxLen + s${u}] != 0u;
    let kb${u} = (bh * p.maxLen + s${u}) * D4 + lane * ${V4}u;
    var kk${u}: array<vec4<f32>, ${V4}>;
    var vv${u}: array<vec4<f32>, ${V4}>;
    ${range((i) => `kk${u}[${i}] = kv[kb${u} + ${i}u]; vv${u}[${i}] = kv[p.vOff4 + kb${u} + ${i}u];`)}`).join('\n    ')}
    ${U.map(use).join('\n    ')}
  }
  ${store}
}`;
}
