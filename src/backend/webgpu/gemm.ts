/**
 * Prefill GEMM: y[N, OUT] = x[N, IN] · w[OUT, IN]^T (+ b), f32 accumulation, w in its stored width (F32, or F16/BF16
 * packed two per u32). Both operands are K-contiguous ("NT"), so one loader scheme serves both.
 *
 * Tiled kernel (the default when IN is a multiple of the vector width):
 *  - a BM x BN output tile per workgroup of (BN/TN) x (BM/TM) threads, each owning TM x TN outputs on a strided
 *    grid (rows ty + TY*i, columns tx + TX*j): the 16 columns a half-warp reads from workgroup memory are adjacent
 *    rows of the B tile, which the swizzle / padding below spreads over distinct banks, and the final stores of a
 *    warp are contiguous runs;
 *  - global loads are 16 bytes: vec4<f32> of x (4 k) and vec4<u32> of a 16-bit weight row (8 k), consecutive threads
 *    on consecutive k of one row (full cache lines). 16-bit weights are widened once, when staged, not per FMA;
 *  - tiles are staged k-contiguous, [row][k] as vec4 along k, so the inner loop reads one vec4 per operand row per
 *    4 k (TM + TN 16-byte loads feed 4·TM·TN FMAs). Rows of 8 vec4 (BK = 32) are XOR-swizzled (k4 ^ row % 8),
 *    other depths padded to an odd stride: either way 8 adjacent rows at one k hit 8 distinct 16-byte bank groups;
 *  - `prefetch`: the next K slice is loaded into registers while the current one is multiplied (one shared buffer,
 *    two barriers a slice: 32 KiB of workgroup memory is all some adapters give); `/db`: two shared buffers, one
 *    barrier a slice, where the adapter has the memory;
 *  - ragged edges: row indices are clamped (rows past N / OUT load a real row; their outputs are never stored), so
 *    only a K tail (IN % BK != 0) needs a guarded load, compiled in only when needed.
 *
 * Legacy kernel (the previous one: scalar global loads, [k][row] staging): IN not a multiple of the vector width, and
 * the benchmark's baseline.
 */
import { GravityError } from '../../errors.js';
import { Params, type GpuContext } from './context.js';
import { scalarLoad, tileMain, tileProduct, vecWidth, type WDType } from './wgsl.js';

export interface GemmConfig {
  /** output tile rows (of x) and columns (rows of w) */
  BM: number;
  BN: number;
  /** K slice depth: a multiple of 8 */
  BK: number;
  /** outputs per thread along rows / columns */
  TM: number;
  TN: number;
  /** load the next K slice into registers during the current one's FMAs */
  prefetch: boolean;
  /** two staging buffers (implies prefetch): one barrier a slice instead of two, twice the workgroup memory */
  double?: boolean;
}

/** `legacy:64` / `legacy:128` select the old kernel with that tile */
export type GemmChoice = GemmConfig | { legacy: number };

const BIG = { BM: 128, BN: 128, BK: 32, TM: 8, TN: 8, prefetch: true };
const MID = { BM: 128, BN: 64, BK: 32, TM: 8, TN: 4, prefetch: true };
const SMALL = { BM: 64, BN: 64, BK: 32, TM: 4, TN: 4, prefetch: true };
/** enough workgroups for about two per SM on a big GPU (132 SMs on an H100/H200) */
const MIN_GROUPS = 264;

/** `BMxBNxBK/TMxTN[/nopf|/db]`, e.g. 128x128x32/8x8, or legacy:64 */
export function parseGemm(s: string): GemmChoice {
  const l = /^legacy:(64|128)$/.exec(s);
  if (l) return { legacy: Number(l[1]) };
  const m = /^(\d+)x(\d+)x(\d+)\/(\d+)x(\d+)(\/nopf|\/db)?$/.exec(s);
  if (!m) throw new GravityError(`gemm config '${s}': expected BMxBNxBK/TMxTN[/nopf|/db] or legacy:64|128`);
  const c = { BM: +m[1], BN: +m[2], BK: +m[3], TM: +m[4], TN: +m[5], prefetch: m[6] !== '/nopf', double: m[6] === '/db' };
  checkConfig(c);
  return c;
}

export function gemmName(c: GemmChoice): string {
  return 'legacy' in c ? `legacy:${c.legacy}` : `${c.BM}x${c.BN}x${c.BK}/${c.TM}x${c.TN}${c.double ? '/db' : c.prefetch ? '' : '/nopf'}`;
}

function checkConfig(c: GemmConfig): void {
  const TX = c.BN / c.TN;
  const TY = c.BM / c.TM;
  const ok =
    Number.isInteger(TX) && Number.isInteger(TY) && TX * TY <= 256 && TX * TY >= 32 && c.BK % 8 === 0 && c.BK >= 8 &&
    (TX * TY) % (c.BK / 4) === 0 && c.TM >= 1 && c.TN >= 1;
  if (!ok) throw new GravityError(`gemm config ${gemmName(c)} is not supported (threads = (BN/TN)·(BM/TM) in 32..256, BK % 8 = 0)`);
}

/** vec4 slots per staged row, and whether rows are swizzled (8 vec4 a row) or padded (odd stride) */
function layout(c: GemmConfig): { S: number; swz: boolean } {
  const KV = c.BK / 4;
  const swz = KV === 8 && (c.BN / c.TN) % 8 === 0 && (c.BM / c.TM) % 8 === 0;
  return { S: swz ? KV : KV % 2 === 0 ? KV + 1 : KV, swz };
}

/** workgroup memory of a tiled config, bytes */
export function gemmSharedBytes(c: GemmConfig): number {
  return (c.BM + c.BN) * layout(c).S * 16 * (c.double ? 2 : 1);
}

/** The kernel for this shape: the widest tile that still gives MIN_GROUPS workgroups (else the smallest). */
export function gemmChoose(ctx: GpuContext | null, N: number, IN: number, OUT: number, wdt: WDType): GemmChoice {
  if (IN % vecWidth(wdt) !== 0) return { legacy: legacyTile(N, OUT) };
  const env = typeof process !== 'undefined' ? process.env?.GRAVITY_GEMM : undefined;
  if (env) return parseGemm(env);
  const fits = (c: GemmConfig) => !ctx || gemmSharedBytes(c) <= ctx.maxWorkgroupMem;
  for (const c of [BIG, MID]) if (fits(c) && Math.ceil(N / c.BM) * Math.ceil(OUT / c.BN) >= MIN_GROUPS) return c;
  return fits(SMALL) ? SMALL : { ...SMALL, BK: 16 };
}

/** y[N, OUT] = x[N, IN] · w[OUT, IN]^T (+ b) with the chosen (or given) kernel. */
export function gemmKernel(
  ctx: GpuContext, x: GPUBuffer, w: GPUBuffer, wdt: WDType, b: GPUBuffer | null, bdt: WDType | null,
  y: GPUBuffer, N: number, IN: number, OUT: number, choice?: GemmChoice,
): void {
  const c = choice ?? gemmChoose(ctx, N, IN, OUT, wdt);
  const binds = b ? [x, w, y, b] : [x, w, y];
  const bias = b ? bdt : null;
  const BM = 'legacy' in c ? c.legacy : c.BM;
  const BN = 'legacy' in c ? c.legacy : c.BN;
  const gx = Math.ceil(OUT / BN);
  const gy = Math.ceil(N / BM);
  if (gx > ctx.maxGroups || gy > ctx.maxGroups) throw new GravityError(`linear: [${N}, ${OUT}] output is too large for one dispatch`);
  if ('legacy' in c) {
    const pl = ctx.pipeline(`gemm:${c.legacy}:${wdt}:${bias}`, () => legacyShader(wdt, bias, c.legacy));
    ctx.dispatch(pl, new Params().u(N, IN, OUT), binds, [gx, gy]);
    return;
  }
  if (IN % vecWidth(wdt) !== 0) throw new Error(`gemm: tiled kernel needs IN % ${vecWidth(wdt)} = 0 (IN = ${IN})`);
  const kTail = IN % c.BK !== 0;
  const pl = ctx.pipeline(`gemmt:${gemmName(c)}:${wdt}:${bias}:${kTail}`, () => tiledShader(c, wdt, bias, kTail));
  ctx.dispatch(pl, new Params().u(N, IN, OUT), binds, [gx, gy]);
}

function tiledShader(c: GemmConfig, dt: WDType, bias: WDType | null, kTail: boolean): string {
  checkConfig(c);
  const { BM, BN, BK, TM, TN } = c;
  const db = !!c.double;
  const prefetch = c.prefetch || db;
  const TX = BN / TN;
  const TY = BM / TM;
  const WG = TX * TY;
  const KV = BK / 4; // vec4 of k per staged row
  const { S, swz } = layout(c);
  const half = dt !== 'F32';
  const KW = half ? BK / 8 : KV; // weight vectors per row per slice
  const LA = Math.ceil((BM * KV) / WG); // x vectors each thread loads per slice
  const LB = Math.ceil((BN * KW) / WG);
  const exactA = (BM * KV) % WG === 0;
  const exactB = (BN * KW) % WG === 0;
  const wv = half ? 'vec4<u32>' : 'vec4<f32>';
  // staged index of (row, k4): swizzled within rows of 8 vec4, else padded
  const at = (row: string, k4: string) => (swz ? `(${row}) * ${S}u + ((${k4}) ^ ((${row}) & 7u))` : `(${row}) * ${S}u + (${k4})`);
  const widen =
    dt === 'F16'
      ? (p: string) => `vec4<f32>(unpack2x16float(${p}.x), unpack2x16float(${p}.y))`
      : (p: string) => `vec4<f32>(bitcast<f32>(${p}.x << 16u), bitcast<f32>(${p}.x & 0xffff0000u), bitcast<f32>(${p}.y << 16u), bitcast<f32>(${p}.y & 0xffff0000u))`;

  // loader: element e = lid + WG*l of the tile, row e / KV (KW), vector e % KV; WG is a multiple of KV, so the vector
  // index is the same for all l and the row steps by WG / KV
  const lines: string[] = [];
  const loadA: string[] = [];
  const loadB: string[] = [];
  const storeA: string[] = [];
  const storeB: string[] = [];
  for (let l = 0; l < LA; l++) {
    const cond = [exactA ? '' : `lid + ${WG * l}u < ${BM * KV}u`, kTail ? `kv0 + ak < K4` : ''].filter(Boolean).join(' && ');
    loadA.push(`${cond ? `if (${cond}) ` : ''}{ ra[${l}] = x[xr${l} + kv0 + ak]; }`);
    const live = exactA ? '' : `if (lid + ${WG * l}u < ${BM * KV}u) `;
    storeA.push(`${live}{ As[soA + ${at(`ar + ${(WG / KV) * l}u`, 'ak')}] = ra[${l}]; }`);
    lines.push(`let xr${l} = min(r0 + ar + ${(WG / KV) * l}u, p.N - 1u) * K4;`);
  }
  for (let l = 0; l < LB; l++) {
    const cond = [exactB ? '' : `lid + ${WG * l}u < ${BN * KW}u`, kTail ? `kw0 + bk < KW` : ''].filter(Boolean).join(' && ');
    loadB.push(`${cond ? `if (${cond}) ` : ''}{ rb[${l}] = w[wr${l} + kw0 + bk]; }`);
    const live = exactB ? '' : `if (lid + ${WG * l}u < ${BN * KW}u) `;
    const row = `br + ${(WG / KW) * l}u`;
    storeB.push(
      half
        ? `${live}{ let v = rb[${l}]; Bs[soB + ${at(row, '2u * bk')}] = ${widen('v')}; Bs[soB + ${at(row, '2u * bk + 1u')}] = ${widen('v.zw')}; }`
        : `${live}{ Bs[soB + ${at(row, 'bk')}] = rb[${l}]; }`,
    );
    lines.push(`let wr${l} = min(c0 + br + ${(WG / KW) * l}u, p.OUT - 1u) * KW;`);
  }
  // with a K tail the registers must read 0 where nothing was loaded
  const zero = kTail ? `for (var l = 0u; l < ${LA}u; l++) { ra[l] = vec4<f32>(); }\n    for (var l = 0u; l < ${LB}u; l++) { rb[l] = ${wv}(); }\n    ` : '';
  const load = (kvar: string) => `{
    let kv0 = ${kvar} / 4u;
    let kw0 = ${kvar} / ${half ? 8 : 4}u;
    ${zero}${loadA.join('\n    ')}
    ${loadB.join('\n    ')}
  }`;
  const store = `${storeA.join('\n    ')}
    ${storeB.join('\n    ')}`;

  // inner product of one staged slice: per 4 k, TN vec4 of B then, row by row, one vec4 of A and 4·TN FMAs
  const fma: string[] = [];
  for (let j = 0; j < TN; j++) fma.push(`let b${j} = Bs[bbS + ${j * TX * S}u + kb];`);
  for (let i = 0; i < TM; i++) {
    fma.push(`{ let a = As[abS + ${i * TY * S}u + ka];`);
    for (const q of ['x', 'y', 'z', 'w']) {
      fma.push('  ' + Array.from({ length: TN }, (_, j) => `acc[${i * TN + j}] = fma(a.${q}, b${j}.${q}, acc[${i * TN + j}]);`).join(' '));
    }
    fma.push('}');
  }
  const swA = swz ? ' ^ (ty & 7u)' : '';
  const swB = swz ? ' ^ (tx & 7u)' : '';

  const epi: string[] = [];
  for (let j = 0; j < TN; j++) epi.push(`let o${j} = c0 + tx + ${j * TX}u;${bias ? ` let bv${j} = ld_bias(min(o${j}, p.OUT - 1u));` : ''}`);
  for (let i = 0; i < TM; i++) {
    epi.push(`{ let m = r0 + ty + ${i * TY}u; if (m < p.N) { let r = m * p.OUT;`);
    for (let j = 0; j < TN; j++) epi.push(`  if (o${j} < p.OUT) { y[r + o${j}] = acc[${i * TN + j}]${bias ? ` + bv${j}` : ''}; }`);
    epi.push('} }');
  }

  const inner = `for (var k4 = 0u; k4 < ${KV}u; k4++) {
      let ka = k4${swA};
      let kb = k4${swB};
      ${fma.join('\n      ')}
    }`;
  const next = `k0 + ${BK}u < p.IN`;
  // one staging buffer: store, barrier, (prefetch the next slice,) multiply, barrier
  const loop1 = `${prefetch ? load('0u') : ''}
  let soA = 0u;
  let soB = 0u;
  let abS = ab;
  let bbS = bb;
  for (var k0 = 0u; k0 < p.IN; k0 += ${BK}u) {
    ${prefetch ? '' : load('k0')}
    ${store}
    workgroupBarrier();
    ${prefetch ? `if (${next}) ${load(`(k0 + ${BK}u)`)}` : ''}
    ${inner}
    workgroupBarrier();
  }`;
  // two: the slice in stage st is multiplied while the next is loaded and stored into stage 1 - st; the one barrier
  // both publishes the stores and ends the reads of stage st before the next iteration overwrites it
  const loop2 = `${load('0u')}
  {
    let soA = 0u;
    let soB = 0u;
    ${store}
  }
  workgroupBarrier();
  var st = 0u;
  for (var k0 = 0u; k0 < p.IN; k0 += ${BK}u) {
    let abS = ab + st * ${BM * S}u;
    let bbS = bb + st * ${BN * S}u;
    if (${next}) ${load(`(k0 + ${BK}u)`)}
    ${inner}
    if (${next}) {
      let soA = (1u - st) * ${BM * S}u;
      let soB = (1u - st) * ${BN * S}u;
      ${store}
    }
    workgroupBarrier();
    st = 1u - st;
  }`;

  return `struct P { N: u32, IN: u32, OUT: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<vec4<f32>>;
@group(0) @binding(2) var<storage, read> w: array<${wv}>;
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
${bias ? scalarLoad('bias', 4, bias) : ''}
var<workgroup> As: array<vec4<f32>, ${BM * S * (db ? 2 : 1)}>; // [stage][row of x][k / 4]${swz ? ', swizzled' : ''}
var<workgroup> Bs: array<vec4<f32>, ${BN * S * (db ? 2 : 1)}>; // [stage][row of w][k / 4]
@compute @workgroup_size(${TX}, ${TY})
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32, @builtin(local_invocation_id) li: vec3<u32>) {
  let c0 = wid.x * ${BN}u;
  let r0 = wid.y * ${BM}u;
  let tx = li.x;
  let ty = li.y;
  let K4 = p.IN / 4u;
  let KW = p.IN / ${half ? 8 : 4}u;
  let ar = lid / ${KV}u;
  let ak = lid % ${KV}u;
  let br = lid / ${KW}u;
  let bk = lid % ${KW}u;
  ${lines.join('\n  ')}
  let ab = ty * ${S}u;
  let bb = tx * ${S}u;
  var acc: array<f32, ${TM * TN}>;
  var ra: array<vec4<f32>, ${LA}>;
  var rb: array<${wv}, ${LB}>;
  ${db ? loop2 : loop1}
  ${epi.join('\n  ')}
}`;
}

// ---- legacy kernel ----

const LTK = 16;
const LEGACY_BIG_MIN_GROUPS = 264;

/** the legacy kernel's tile: 128 once there are enough 128x128 tiles to fill the GPU, else 64 */
export function legacyTile(N: number, OUT: number): number {
  return Math.ceil(N / 128) * Math.ceil(OUT / 128) >= LEGACY_BIG_MIN_GROUPS ? 128 : 64;
}

/**
 * TM x TM output tile, 256 threads as 16 x 16, each computing an MT x MT block (MT = TM/16) of adjacent rows
 * and columns, so that its operands come out of workgroup memory as vec4 loads; scalar global loads (any IN).
 */
function legacyShader(dt: WDType, bias: WDType | null, TM: number): string {
  const MT = TM / 16; // outputs per thread along each axis
  const L = (TM * LTK) / 256; // elements each thread loads per matrix per K slice
  const TPRW = LTK / L; // threads sharing one tile row in the loader
  return `struct P { N: u32, IN: u32, OUT: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
${scalarLoad('w', 2, dt)}
@group(0) @binding(3) var<storage, read_write> y: array<f32>;
${bias ? scalarLoad('bias', 4, bias) : ''}
var<workgroup> As: array<vec4<f32>, ${(LTK * TM) / 4}>;   // [k][row of x], 4 rows a vector
var<workgroup> Bs: array<vec4<f32>, ${(LTK * TM) / 4}>;   // [k][row of w]
${tileMain(TM)}
  let lr = lid / ${TPRW}u;
  let lk = (lid % ${TPRW}u) * ${L}u;
  let xm = m0 + lr;
  let wo = o0 + lr;
  var acc: array<array<f32, ${MT}>, ${MT}>;
  for (var k0 = 0u; k0 < p.IN; k0 += ${LTK}u) {
    for (var c = 0u; c < ${L}u; c++) {
      let k = k0 + lk + c;
      var av = 0.0;
      var bv = 0.0;
      if (k < p.IN) {
        if (xm < p.N) { av = x[xm * p.IN + k]; }
        if (wo < p.OUT) { bv = ld_w(wo * p.IN + k); }
      }
      let si = (lk + c) * ${TM}u + lr;
      As[si / 4u][si % 4u] = av;
      Bs[si / 4u][si % 4u] = bv;
    }
    workgroupBarrier();
    ${tileProduct('f32', LTK, MT, TM, (c, a, b) => `${c} = fma(${a}, ${b}, ${c});`)}
    workgroupBarrier();
  }
  for (var i = 0u; i < ${MT}u; i++) {
    let m = m0 + ty * ${MT}u + i;
    if (m >= p.N) { continue; }
    for (var j = 0u; j < ${MT}u; j++) {
      let o = o0 + tx * ${MT}u + j;
      if (o < p.OUT) { y[m * p.OUT + o] = acc[i][j]${bias ? ' + ld_bias(o)' : ''}; }
    }
  }
}`;
}
