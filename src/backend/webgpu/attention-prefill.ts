/**
 * Fused prefill attention (T > 1), register-tiled flash style: the [T x keys] scores never leave the chip.
 *
 * A workgroup of NT threads takes R rows = TQ queries x all G heads of one (batch, kv head) (rows past TQ * G are
 * idle padding when G does not divide R), keeps their q in workgroup memory and walks the causal key range in
 * tiles of BK keys. Per tile, like a GEMM micro-kernel:
 *  - scores: thread (rg, kg) computes a 4-row x TN-key block of S = f(Q, K) in registers, from Q and the K tile in
 *    workgroup memory, with vec4 accumulators (4 FMAs per vec4 of d, the horizontal sum once per score). The KG
 *    threads of a row group are consecutive lanes of one warp, so the running row max (dot, gravity with large
 *    masses) is an xor-shuffle butterfly over KG lanes (subgroups), or a small workgroup-memory table without them.
 *  - weights P (4 rows as one vec4 per key) go to workgroup memory, then thread (rgo, cgo) adds P·V for its 4 rows x
 *    TD4 vec4 columns of the output accumulator (registers), reading V from workgroup memory.
 * The V tile is fetched into registers while the scores are computed, and the next K tile while P·V runs, so the
 * global loads overlap the arithmetic (one K/V buffer in workgroup memory: 48 KiB is the device limit on the H200).
 *
 * Scores are in log2 units (exp2): dot prescales q by scale * log2(e) when it is loaded, gravity multiplies M² by
 * log2(e). Gravity sums (q - k)² directly (see attention.ts: |q|² + |k|² - 2 q·k cancels in f32 exactly where the
 * score is largest), which costs a subtract per FMA, so gravity's score phase does twice dot's arithmetic.
 * Fixed max (gravityFixedMax): the row max is the bound M²/eps, no running max. Row sums l are kept per thread
 * over its own keys and summed over the KG lanes once, at the end.
 */
import type { AttentionKind } from '../backend.js';
import { attentionBindings } from './wgsl.js';

export interface PrefillCfg {
  D: number;
  G: number;
  /** rows per workgroup (a multiple of 4) */
  R: number;
  /** keys per tile */
  BK: number;
  /** threads per workgroup */
  NT: number;
  /** fetch the next K/V tile into registers during the arithmetic (1) or right before its store (0) */
  PF?: number;
  /** score accumulators: vec4 (1: four independent FMA chains, 4x the registers) or scalar (0) */
  AV?: number;
}

interface Derived {
  TQ: number; KG: number; TN: number; RG: number; RGo: number; CG: number; TD4: number; D4: number; DP4: number;
}

function derive(c: PrefillCfg): Derived | null {
  const D4 = c.D / 4;
  if (c.D % 4 !== 0 || c.R % 4 !== 0) return null;
  const TQ = Math.floor(c.R / c.G);
  const RG = c.R / 4;
  const KG = c.NT / RG;
  const RGo = RG;
  const CG = c.NT / RGo;
  if (TQ < 1 || !Number.isInteger(KG) || KG > 32 || (KG & (KG - 1)) !== 0 || c.BK % KG !== 0) return null;
  if (D4 % CG !== 0) return null;
  return { TQ, KG, TN: c.BK / KG, RG, RGo, CG, TD4: D4 / CG, D4, DP4: D4 + 1 };
}

export function prefillSharedBytes(c: PrefillCfg, sg: number): number {
  const d = derive(c);
  if (!d) return Infinity;
  const red = sg >= d.KG ? 0 : c.R * d.KG * 4;
  return 16 * (c.R * d.DP4 + c.BK * d.DP4 + c.BK * d.RG + 2 * d.RG) + red;
}

/**
 * Workgroup shapes tried in order (GRAVITY_ATTN_PREFILL=R,BK,NT[,PF[,AV]] picks one; =old keeps the previous kernel).
 * H200, 16/2 heads, D=128, ms at 1k/4k/16k (bench/attn-gpu.ts): 64x16x256 gravity 0.37/3.6/51, dot 0.35/3.5/50;
 * 32x32x128 gravity 0.34/4.1/61, dot 0.28/3.3/49; 48x32x192 59 / 48.6 at 16k; the previous kernel 114 / 128 at 16k.
 * 64 threads per workgroup (4x4 score blocks) ran 2x slower. The smaller shapes are for devices with 32 KiB.
 */
const CANDIDATES: number[][] = [[64, 16, 256], [32, 32, 128], [64, 16, 128], [16, 32, 64], [16, 16, 32], [8, 16, 16], [4, 8, 8]];

/** the prefill tile for this shape, or null when none fits (the caller falls back to the older kernel) */
export function choosePrefillCfg(D: number, G: number, maxMem: number, sg: number, env = envCfg()): PrefillCfg | null {
  if (env === 'old') return null;
  const list = env ? [env] : CANDIDATES;
  for (const [R, BK, NT, PF = 1, AV = 1] of list) {
    const c = { D, G, R, BK, NT, PF, AV };
    if (derive(c) && prefillSharedBytes(c, sg) <= maxMem) return c;
  }
  return null;
}

function envCfg(): number[] | 'old' | null {
  const s = typeof process !== 'undefined' ? process.env?.GRAVITY_ATTN_PREFILL : undefined;
  if (!s) return null;
  if (s === 'old') return 'old';
  const v = s.split(',').map(Number);
  return v.length >= 3 && v.length <= 5 && v.every((x) => x >= 0) ? v : null;
}

export function prefillKey(c: PrefillCfg, kind: AttentionKind, fixed: boolean, sg: number): string {
  return `attn-prefill:${kind}:${fixed}:${c.D}:${c.G}:${c.R}:${c.BK}:${c.NT}:${c.PF ?? 1}:${c.AV ?? 1}:${sg >= derive(c)!.KG ? 'sg' : 'wg'}`;
}

const range = (n: number) => Array.from({ length: n }, (_, i) => i);

/**
 * Bindings as the older kernel: p, q, kv (k then v from vec4 p.vOff4), valid, mass, out (vec4). One split only.
 */
export function prefillShader(c: PrefillCfg, kind: AttentionKind, fixed: boolean, sg: number): string {
  const d = derive(c)!;
  const { TQ, KG, TN, RG, RGo, CG, TD4, D4, DP4 } = d;
  const { R, BK, NT, G } = c;
  const gravity = kind !== 'dot';
  const pure = kind === 'gravity-pure';
  const running = !pure && !fixed;
  const useSg = sg >= KG && KG > 1;
  const pf = (c.PF ?? 1) !== 0;
  const I = range(4);
  const J = range(TN);
  const C = range(TD4);
  const LD = Math.ceil((BK * D4) / NT); // vec4 per thread per K or V tile
  const acc = (i: number, j: number) => `a${i}_${j}`;
  const av = (c.AV ?? 1) !== 0;
  const fmaS = av
    ? gravity
      ? (i: number, j: number) => `{ let e = q${i} - kk${j}; ${acc(i, j)} = fma(e, e, ${acc(i, j)}); }`
      : (i: number, j: number) => `${acc(i, j)} = fma(q${i}, kk${j}, ${acc(i, j)});`
    : gravity
    ? (i: number, j: number) => `{ let e = q${i} - kk${j}; ${acc(i, j)} = fma(e.w, e.w, fma(e.z, e.z, fma(e.y, e.y, fma(e.x, e.x, ${acc(i, j)})))); }`
    : (i: number, j: number) => `${acc(i, j)} = fma(q${i}.w, kk${j}.w, fma(q${i}.z, kk${j}.z, fma(q${i}.y, kk${j}.y, fma(q${i}.x, kk${j}.x, ${acc(i, j)}))));`;
  // score in log2 units (pure: the weight itself) from the reduced accumulator x of row i
  const score = (i: number, x: string) => (pure ? `ms${i} / (${x} + p.eps)` : gravity ? `ms${i} / (${x} + p.eps)` : x);
  // reduction of a per-thread row value over the KG lanes of its row group
  const reduce = (v: string, op: 'max' | 'add', tag: string): string => {
    if (KG === 1) return '';
    if (useSg) {
      const steps: string[] = [];
      for (let s = KG / 2; s >= 1; s /= 2) steps.push(op === 'max' ? `${v} = max(${v}, subgroupShuffleXor(${v}, ${s}u));` : `${v} += subgroupShuffleXor(${v}, ${s}u);`);
      return steps.join(' ');
    }
    return `/* ${tag} */`;
  };
  // workgroup-memory fallback for a vec4 (4 rows) over the KG lanes: one barrier; callers add the trailing one
  const reduceWg = (v: string, op: 'max' | 'add'): string => {
    if (KG === 1 || useSg) return '';
    return `Red[(rg * KG + kg)] = ${v};
    workgroupBarrier();
    ${v} = Red[rg * KG];
    for (var g = 1u; g < KG; g++) { let x = Red[rg * KG + g]; ${op === 'max' ? `${v} = max(${v}, x);` : `${v} += x;`} }`;
  };
  const regLoad = (dst: string, off: string, cond: string) =>
    range(LD).map((u) => `{ let e = lid + ${u * NT}u; let slot = kb2 + e / D4; ${dst}${u} = vec4<f32>(); if (${cond} && e < BK * D4 && slot < k1) { ${dst}${u} = kv[${off}(bh * p.maxLen + slot) * D4 + e % D4]; } }`).join('\n    ');
  const regStore = (src: string) =>
    range(LD).map((u) => `{ let e = lid + ${u * NT}u; if (e < BK * D4) { KVs[(e / D4) * DP4 + e % D4] = ${src}${u}; } }`).join('\n    ');

  return `${useSg ? 'enable subgroups;\n' : ''}struct P { T: u32, start: u32, maxLen: u32, Hq: u32, Hkv: u32, kps: u32, nsplit: u32, eps: f32, scale: f32, vOff4: u32 }
@group(0) @binding(0) var<uniform> p: P;
${attentionBindings('vec4<f32>')}
const D4 = ${D4}u;
const DP4 = ${DP4}u;  // padded row stride (vec4): rows of a warp's reads fall in different banks
const G = ${G}u;
const TQ = ${TQ}u;
const R4 = ${RG}u;    // rows / 4: P is [key][row] as vec4 of 4 rows
const BK = ${BK}u;
const KG = ${KG}u;
const CG = ${CG}u;
const LOG2E = 1.4426950408889634;
var<workgroup> Qs: array<vec4<f32>, ${R * DP4}>;
var<workgroup> KVs: array<vec4<f32>, ${BK * DP4}>;
var<workgroup> Ps: array<vec4<f32>, ${BK * RG}>;
var<workgroup> As: array<vec4<f32>, ${RG}>;   // per-tile rescale of the rows (running max)
var<workgroup> Ls: array<vec4<f32>, ${RG}>;   // row sums, at the end
${KG > 1 && !useSg ? `var<workgroup> Red: array<vec4<f32>, ${RG * KG}>;` : ''}
@compute @workgroup_size(${NT})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let t0 = wid.x * TQ;
  let bh = wid.z;                 // b * Hkv + kvh
  let b = bh / p.Hkv;
  let kvh = bh % p.Hkv;
  let qscale = ${gravity ? '1.0' : 'p.scale * LOG2E'};
  // row r = (query t0 + r / G, head kvh * G + r % G); rows past TQ * G or T are zeros and never stored
  for (var e = lid; e < ${R}u * D4; e += ${NT}u) {
    let r = e / D4;
    let t = t0 + r / G;
    var v = vec4<f32>();
    if (r < TQ * G && t < p.T) { v = q[((b * p.T + t) * p.Hq + kvh * G + r % G) * D4 + e % D4] * qscale; }
    Qs[r * DP4 + e % D4] = v;
  }
  let k1 = p.start + min(t0 + TQ, p.T);   // exclusive end of the causal key range of this tile's last query
  // score-phase thread: rows 4 rg + i, keys kg + KG j of each tile
  let kg = lid % KG;
  let rg = lid / KG;
  ${I.map((i) => `let r${i} = rg * 4u + ${i}u;
  let lim${i} = select(0u, p.start + t0 + r${i} / G + 1u, r${i} < TQ * G && t0 + r${i} / G < p.T);   // keys < lim are causal
  let ms${i} = ${gravity ? `mass[kvh * G + r${i} % G]${pure ? '' : ' * LOG2E'}` : '0.0'};`).join('\n  ')}
  ${fixed ? I.map((i) => `let mf${i} = ms${i} / p.eps;`).join(' ') : ''}
  ${running ? I.map((i) => `var m${i} = -1.0e30;`).join(' ') : ''}
  var lsum = vec4<f32>();
  // output-phase thread: rows 4 rgo + i, vec4 columns cgo + CG c
  let rgo = lid % R4;
  let cgo = lid / R4;
  ${I.map((i) => C.map((cc) => `var o${i}_${cc} = vec4<f32>();`).join(' ')).join('\n  ')}
  ${range(LD).map((u) => `var kr${u}: vec4<f32>; var vr${u}: vec4<f32>;`).join(' ')}
  var kb2 = 0u;
  ${regLoad('kr', '', 'true')}
  ${regStore('kr')}
  workgroupBarrier();
  for (var kb = 0u; kb < k1; kb += BK) {
    kb2 = kb;
    ${pf ? regLoad('vr', 'p.vOff4 + ', 'true') : ''}
    ${I.map((i) => J.map((j) => `var ${acc(i, j)} = ${av ? 'vec4<f32>()' : '0.0'};`).join(' ')).join('\n    ')}
    for (var d4 = 0u; d4 < D4; d4++) {
      ${I.map((i) => `let q${i} = Qs[(rg * 4u + ${i}u) * DP4 + d4];`).join(' ')}
      ${J.map((j) => `let kk${j} = KVs[(kg + ${j * KG}u) * DP4 + d4];`).join(' ')}
      ${I.map((i) => J.map((j) => fmaS(i, j)).join(' ')).join('\n      ')}
    }
    ${J.map((j) => `let slot${j} = kb + kg + ${j * KG}u;
    var ok${j} = false;
    if (slot${j} < k1) { ok${j} = valid[b * p.maxLen + slot${j}] != 0u; }`).join('\n    ')}
    ${running ? `var mx = vec4<f32>(m0, m1, m2, m3);
    ${I.map((i) => J.map((j) => `let s${i}_${j} = select(-3.0e38, ${score(i, av ? `dot(${acc(i, j)}, vec4<f32>(1.0))` : acc(i, j))}, ok${j} && slot${j} < lim${i});`).join(' ')).join('\n    ')}
    ${I.map((i) => J.map((j) => `mx[${i}] = max(mx[${i}], s${i}_${j});`).join(' ')).join('\n    ')}
    ${reduce('mx', 'max', 'wg')}
    ${reduceWg('mx', 'max')}
    let al = exp2(vec4<f32>(m0, m1, m2, m3) - mx);
    m0 = mx[0]; m1 = mx[1]; m2 = mx[2]; m3 = mx[3];
    lsum *= al;
    if (kg == 0u) { As[rg] = al; }
    ${J.map((j) => `let p${j} = select(vec4<f32>(), exp2(vec4<f32>(${I.map((i) => `s${i}_${j}`).join(', ')}) - mx), vec4<bool>(${I.map((i) => `s${i}_${j} > -1.0e38`).join(', ')}));`).join('\n    ')}`
    : J.map((j) => `let p${j} = vec4<f32>(${I.map((i) => `select(0.0, ${pure ? score(i, av ? `dot(${acc(i, j)}, vec4<f32>(1.0))` : acc(i, j)) : `exp2(${score(i, av ? `dot(${acc(i, j)}, vec4<f32>(1.0))` : acc(i, j))} - mf${i})`}, ok${j} && slot${j} < lim${i})`).join(', ')});`).join('\n    ')}
    ${J.map((j) => `lsum += p${j}; Ps[(kg + ${j * KG}u) * R4 + rg] = p${j};`).join('\n    ')}
    workgroupBarrier();
    ${pf ? '' : regLoad('vr', 'p.vOff4 + ', 'true')}
    ${regStore('vr')}
    workgroupBarrier();
    kb2 = kb + BK;
    ${pf ? regLoad('kr', '', 'kb2 < k1') : ''}
    ${running ? `let ao = As[rgo];
    ${I.map((i) => C.map((cc) => `o${i}_${cc} *= ao[${i}];`).join(' ')).join('\n    ')}` : ''}
    for (var j = 0u; j < BK; j++) {
      let pv = Ps[j * R4 + rgo];
      ${C.map((cc) => `let v${cc} = KVs[j * DP4 + cgo + ${cc * CG}u];`).join(' ')}
      ${I.map((i) => C.map((cc) => `o${i}_${cc} = fma(vec4<f32>(pv[${i}]), v${cc}, o${i}_${cc});`).join(' ')).join('\n      ')}
    }
    workgroupBarrier();
    ${pf ? '' : regLoad('kr', '', 'kb2 < k1')}
    ${regStore('kr')}
    workgroupBarrier();
  }
  ${reduce('lsum', 'add', 'wg')}
  ${reduceWg('lsum', 'add')}
  if (kg == 0u) { Ls[rg] = lsum; }
  workgroupBarrier();
  let lv = Ls[rgo];
  ${I.map((i) => `{
    let r = rgo * 4u + ${i}u;
    let t = t0 + r / G;
    if (r < TQ * G && t < p.T) {
      let inv = select(0.0, 1.0 / lv[${i}], lv[${i}] > 0.0);
      let base = ((b * p.T + t) * p.Hq + kvh * G + r % G) * D4;
      ${C.map((cc) => `out[base + cgo + ${cc * CG}u] = o${i}_${cc} * inv;`).join(' ')}
    }
  }`).join('\n  ')}
}`;
}
