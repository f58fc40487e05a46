// AssemblyScript attention kernels (compiled with wasm/matmul.ts into one module by scripts/build-wasm.mjs, so the
// matmul worker threads can run them on the same shared memories). Host side: src/backend/cpu/attention-wasm.ts.
//
// One exported entry, attn(desc, r0, r1, tmp): runs tasks [r0, r1) of the job described at `desc` (i32 slots
// below); `tmp` is the calling thread's private 8 KB. Forward tasks are (b, kv head, query block), backward tasks
// (b, kv head): every output row (and dk / dv row) belongs to exactly one task, so threads never share a write.
//
// Keys go 4 at a time; the query heads of one KV group are walked inside the key tile, so each K / V row comes
// from memory once per group. The 4 scores of a tile are one f32x4: its exponential is one SIMD exp.
// Gravity uses d² = Σ(q − k)² directly (no |q|² + |k|² − 2q·k cancellation in f32, never negative).
// Lanes of a tile past the causal end read the last in-range row (finite) and are zeroed by the mask.

const OP = 0; // 0 forward, 1 backward
const KIND = 1; // 0 gravity, 1 dot, 2 gravity-pure
const TQ = 2; // queries per sequence in this call
const START = 3; // slot of the first query (key j is visible to query t iff j <= START + t)
const HQ = 4;
const HKV = 5;
const DIM = 6;
const QP = 7; // q [B, TQ, HQ, D] f32 (also the layout of out, dout, dq)
const KP = 8; // k / v / dk / dv: row (b, kvh, j) at base + b*KBS + kvh*KHS + j*KRS (bytes)
const VP = 9;
const KBS = 10;
const KHS = 11;
const KRS = 12;
const VALID = 13; // u8 [.., VSTRIDE] key mask rows (row b + BOFF), or 0: every key valid
const VSTRIDE = 14;
const OUTP = 15;
const LSEP = 16; // f32 [B, TQ, HQ] or 0
const MASS = 17; // f32 [HQ]: M² per query head
const EPS = 18; // f32 bits
const SCALE = 19; // f32 bits
const QBLOCK = 20; // queries per forward task
const NQB = 21; // query blocks per (b, kvh)
const DOUT = 22;
const DQ = 23;
const DK = 24;
const DV = 25;
const DM = 26; // f64 [B, HQ]: ∂L/∂(M²) partial sums (accumulated)
const BOFF = 27; // sequence index of this call's b = 0 in the K / V / mask rows
const NSPLIT = 28; // forward: key blocks per query block (flash-decoding), 1 = none
const SPLITLEN = 29; // keys per block, a multiple of 4
const PART = 30; // f32 partials [B*TQ*HQ, NSPLIT, 4 + D]: max, sum, 0, 0, unnormalised acc (NSPLIT > 1)

// fixed max M²/ε only while exp(s − M²/ε) >= exp(-64) stays a normal f32 (the sum never underflows)
const FIXED_MAX_LIMIT: f32 = 64;

@inline function fld(desc: usize, i: i32): i32 {
  return load<i32>(desc + (<usize>i << 2));
}

@inline function ptr(desc: usize, i: i32): usize {
  return <usize>load<u32>(desc + (<usize>i << 2));
}

@inline function fldf(desc: usize, i: i32): f32 {
  return load<f32>(desc + (<usize>i << 2));
}

/** [sum(a0), sum(a1), sum(a2), sum(a3)] */
@inline function hsum4(a0: v128, a1: v128, a2: v128, a3: v128): v128 {
  const t0 = f32x4.add(v128.shuffle<f32>(a0, a1, 0, 4, 2, 6), v128.shuffle<f32>(a0, a1, 1, 5, 3, 7));
  const t1 = f32x4.add(v128.shuffle<f32>(a2, a3, 0, 4, 2, 6), v128.shuffle<f32>(a2, a3, 1, 5, 3, 7));
  return f32x4.add(v128.shuffle<f32>(t0, t1, 0, 1, 4, 5), v128.shuffle<f32>(t0, t1, 2, 3, 6, 7));
}

@inline function hsum(a: v128): f32 {
  return (f32x4.extract_lane(a, 0) + f32x4.extract_lane(a, 1)) + (f32x4.extract_lane(a, 2) + f32x4.extract_lane(a, 3));
}

@inline function hmax(a: v128): f32 {
  const m = f32x4.max(a, v128.shuffle<f32>(a, a, 2, 3, 0, 1));
  return max(f32x4.extract_lane(m, 0), f32x4.extract_lane(m, 1));
}

/** e^x per lane (Cephes expf: range reduction by ln 2 in two parts + degree-6 polynomial, ~1 ulp). Inputs below
 * -87.3 give ~1e-38 instead of 0 (2^n stays a normal float); NaN stays NaN. */
@inline function exp4(x0: v128): v128 {
  let x = f32x4.min(f32x4.max(x0, f32x4.splat(-87.3)), f32x4.splat(88.3));
  const n = f32x4.nearest(f32x4.mul(x, f32x4.splat(1.44269504088896341)));
  x = f32x4.sub(x, f32x4.mul(n, f32x4.splat(0.693359375)));
  x = f32x4.sub(x, f32x4.mul(n, f32x4.splat(-2.12194440e-4)));
  let y = f32x4.splat(1.9875691500e-4);
  y = f32x4.add(f32x4.mul(y, x), f32x4.splat(1.3981999507e-3));
  y = f32x4.add(f32x4.mul(y, x), f32x4.splat(8.3334519073e-3));
  y = f32x4.add(f32x4.mul(y, x), f32x4.splat(4.1665795894e-2));
  y = f32x4.add(f32x4.mul(y, x), f32x4.splat(1.6666665459e-1));
  y = f32x4.add(f32x4.mul(y, x), f32x4.splat(5.0000001201e-1));
  y = f32x4.add(f32x4.add(f32x4.mul(f32x4.mul(y, x), x), x), f32x4.splat(1));
  const e = i32x4.shl(i32x4.add(i32x4.trunc_sat_f32x4_s(n), i32x4.splat(127)), 23);
  return f32x4.mul(y, e);
}

/** Raw scores of one query row against 4 key rows: Σ(q − k)² (gravity) or q·k (dot). */
@inline function raw4(grav: bool, q: usize, k0: usize, k1: usize, k2: usize, k3: usize, Db: usize): v128 {
  let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
  if (grav) {
    for (let d: usize = 0; d < Db; d += 16) {
      const qv = v128.load(q + d);
      let t = f32x4.sub(qv, v128.load(k0 + d));
      a0 = f32x4.add(a0, f32x4.mul(t, t));
      t = f32x4.sub(qv, v128.load(k1 + d));
      a1 = f32x4.add(a1, f32x4.mul(t, t));
      t = f32x4.sub(qv, v128.load(k2 + d));
      a2 = f32x4.add(a2, f32x4.mul(t, t));
      t = f32x4.sub(qv, v128.load(k3 + d));
      a3 = f32x4.add(a3, f32x4.mul(t, t));
    }
  } else {
    for (let d: usize = 0; d < Db; d += 16) {
      const qv = v128.load(q + d);
      a0 = f32x4.add(a0, f32x4.mul(qv, v128.load(k0 + d)));
      a1 = f32x4.add(a1, f32x4.mul(qv, v128.load(k1 + d)));
      a2 = f32x4.add(a2, f32x4.mul(qv, v128.load(k2 + d)));
      a3 = f32x4.add(a3, f32x4.mul(qv, v128.load(k3 + d)));
    }
  }
  return hsum4(a0, a1, a2, a3);
}

/** lanes j + l <= last, and (with a mask row) key j + l valid */
@inline function laneMask(j: i32, last: i32, vrow: usize): v128 {
  let m = i32x4.le_s(i32x4.add(i32x4.splat(j), i32x4(0, 1, 2, 3)), i32x4.splat(last));
  if (vrow) {
    const bytes = i32x4.extend_low_i16x8_u(i16x8.extend_low_i8x16_u(v128.load32_zero(vrow + <usize>j)));
    m = v128.and(m, i32x4.ne(bytes, i32x4.splat(0)));
  }
  return m;
}

@inline function rowOf(base: usize, j: i32, last: i32, rs: usize): usize {
  return base + <usize>(j <= last ? j : last) * rs;
}

function forwardTask(desc: usize, b: i32, kvh: i32, t0: i32, t1: i32, split: i32, tmp: usize): void {
  const kind = fld(desc, KIND);
  const grav = kind != 1;
  const pure = kind == 2;
  const T = fld(desc, TQ), start = fld(desc, START), Hq = fld(desc, HQ), Hkv = fld(desc, HKV), D = fld(desc, DIM);
  const G = Hq / Hkv;
  const Db = <usize>D << 2;
  const krs = <usize>fld(desc, KRS);
  const koff = <usize>(b + fld(desc, BOFF)) * <usize>fld(desc, KBS) + <usize>kvh * <usize>fld(desc, KHS);
  const kb = ptr(desc, KP) + koff;
  const vb = ptr(desc, VP) + koff;
  const valid = ptr(desc, VALID);
  const vrow = valid ? valid + <usize>(b + fld(desc, BOFF)) * <usize>fld(desc, VSTRIDE) : 0;
  const qp = ptr(desc, QP), outp = ptr(desc, OUTP), lsep = ptr(desc, LSEP), mass = ptr(desc, MASS);
  const eps = fldf(desc, EPS), scale = fldf(desc, SCALE);
  // per head of a chunk: acc [D] f32, then sum lanes (v128) and running max (f32) after all the accs
  const GC = min(G, 8192 / (D * 4 + 20));
  const nsplit = fld(desc, NSPLIT);
  const j0 = split * fld(desc, SPLITLEN);
  const jEnd = nsplit > 1 ? j0 + fld(desc, SPLITLEN) : 0x7fffffff;
  const part = ptr(desc, PART);
  for (let t = t0; t < t1; t++) {
    // this task's keys: [j0, last], the causal end cut at its key block
    const last = min(start + t, jEnd - 1);
    for (let c0 = 0; c0 < G; c0 += GC) {
      const hn = min(GC, G - c0);
      const sumBase = tmp + <usize>hn * Db;
      const mxBase = sumBase + (<usize>hn << 4);
      for (let hi = 0; hi < hn; hi++) {
        const a = tmp + <usize>hi * Db;
        for (let d: usize = 0; d < Db; d += 16) v128.store(a + d, f32x4.splat(0));
        v128.store(sumBase + (<usize>hi << 4), f32x4.splat(0));
        const m2 = load<f32>(mass + (<usize>(kvh * G + c0 + hi) << 2));
        store<f32>(mxBase + (<usize>hi << 2), grav && m2 / eps < FIXED_MAX_LIMIT ? m2 / eps : -Infinity);
      }
      for (let j = j0; j <= last; j += 4) {
        const mask = laneMask(j, last, vrow);
        if (!v128.any_true(mask)) continue;
        const k0 = rowOf(kb, j, last, krs), k1 = rowOf(kb, j + 1, last, krs), k2 = rowOf(kb, j + 2, last, krs), k3 = rowOf(kb, j + 3, last, krs);
        const v0 = rowOf(vb, j, last, krs), v1 = rowOf(vb, j + 1, last, krs), v2 = rowOf(vb, j + 2, last, krs), v3 = rowOf(vb, j + 3, last, krs);
        for (let hi = 0; hi < hn; hi++) {
          const h = kvh * G + c0 + hi;
          const q = qp + <usize>((b * T + t) * Hq + h) * Db;
          const raw = raw4(grav, q, k0, k1, k2, k3, Db);
          const a = tmp + <usize>hi * Db;
          let p: v128;
          if (grav) {
            const m2 = load<f32>(mass + (<usize>h << 2));
            p = f32x4.div(f32x4.splat(m2), f32x4.add(raw, f32x4.splat(eps)));
          } else p = f32x4.mul(raw, f32x4.splat(scale));
          if (!pure) {
            const mp = mxBase + (<usize>hi << 2);
            let mx = load<f32>(mp);
            const fixed = grav && load<f32>(mass + (<usize>h << 2)) / eps < FIXED_MAX_LIMIT;
            if (!fixed) {
              const tm = hmax(v128.bitselect(p, f32x4.splat(-Infinity), mask));
              if (tm > mx) {
                // rescale what was accumulated against the old max
                const c = f32x4.splat(f32x4.extract_lane(exp4(f32x4.splat(mx - tm)), 0));
                for (let d: usize = 0; d < Db; d += 16) v128.store(a + d, f32x4.mul(v128.load(a + d), c));
                const sp = sumBase + (<usize>hi << 4);
                v128.store(sp, f32x4.mul(v128.load(sp), c));
                mx = tm;
                store<f32>(mp, mx);
              }
            }
            p = exp4(f32x4.sub(p, f32x4.splat(mx)));
          }
          p = v128.and(p, mask);
          const sp = sumBase + (<usize>hi << 4);
          v128.store(sp, f32x4.add(v128.load(sp), p));
          const p0 = f32x4.splat(f32x4.extract_lane(p, 0)), p1 = f32x4.splat(f32x4.extract_lane(p, 1));
          const p2 = f32x4.splat(f32x4.extract_lane(p, 2)), p3 = f32x4.splat(f32x4.extract_lane(p, 3));
          for (let d: usize = 0; d < Db; d += 16) {
            let x = v128.load(a + d);
            x = f32x4.add(x, f32x4.mul(p0, v128.load(v0 + d)));
            x = f32x4.add(x, f32x4.mul(p1, v128.load(v1 + d)));
            x = f32x4.add(x, f32x4.mul(p2, v128.load(v2 + d)));
            x = f32x4.add(x, f32x4.mul(p3, v128.load(v3 + d)));
            v128.store(a + d, x);
          }
        }
      }
      for (let hi = 0; hi < hn; hi++) {
        const h = kvh * G + c0 + hi;
        const row = (b * T + t) * Hq + h;
        const o = outp + <usize>row * Db;
        const a = tmp + <usize>hi * Db;
        const sv = v128.load(sumBase + (<usize>hi << 4));
        if (nsplit > 1) {
          // flash-decoding partial: the host combines the key blocks
          const pp = part + (<usize>(row * nsplit + split) * <usize>(D + 4) << 2);
          store<f32>(pp, load<f32>(mxBase + (<usize>hi << 2)));
          store<f32>(pp + 4, hsum(sv));
          store<f32>(pp + 8, 0);
          store<f32>(pp + 12, 0);
          for (let d: usize = 0; d < Db; d += 16) v128.store(pp + 16 + d, v128.load(a + d));
          continue;
        }
        const sum = (<f64>f32x4.extract_lane(sv, 0) + <f64>f32x4.extract_lane(sv, 1)) + (<f64>f32x4.extract_lane(sv, 2) + <f64>f32x4.extract_lane(sv, 3));
        // a query with no valid key (a padding row) outputs zeros
        const inv = f32x4.splat(sum > 0 ? <f32>(1 / sum) : 0);
        for (let d: usize = 0; d < Db; d += 16) v128.store(o + d, f32x4.mul(v128.load(a + d), inv));
        if (lsep) {
          const mx = <f64>load<f32>(mxBase + (<usize>hi << 2));
          store<f32>(lsep + (<usize>row << 2), <f32>(sum > 0 ? (pure ? Math.log(sum) : mx + Math.log(sum)) : -Infinity));
        }
      }
    }
  }
}

/** Backward of one (b, kv head) over all its queries: dq rows written, dk / dv rows and DM accumulated. */
function backwardTask(desc: usize, b: i32, kvh: i32, tmp: usize): void {
  const kind = fld(desc, KIND);
  const grav = kind != 1;
  const pure = kind == 2;
  const T = fld(desc, TQ), Hq = fld(desc, HQ), Hkv = fld(desc, HKV), D = fld(desc, DIM);
  const G = Hq / Hkv;
  const Db = <usize>D << 2;
  const krs = <usize>fld(desc, KRS);
  const koff = <usize>b * <usize>fld(desc, KBS) + <usize>kvh * <usize>fld(desc, KHS);
  const kb = ptr(desc, KP) + koff, vb = ptr(desc, VP) + koff;
  const dkb = ptr(desc, DK) + koff, dvb = ptr(desc, DV) + koff;
  const qp = ptr(desc, QP), outp = ptr(desc, OUTP), lsep = ptr(desc, LSEP), mass = ptr(desc, MASS);
  const doutp = ptr(desc, DOUT), dqp = ptr(desc, DQ), dmp = ptr(desc, DM);
  const eps = fldf(desc, EPS), scale = fldf(desc, SCALE);
  const dq = tmp;
  for (let i = 0; i < T; i++) {
    const last = i;
    for (let hi = 0; hi < G; hi++) {
      const h = kvh * G + hi;
      const row = (b * T + i) * Hq + h;
      const q = qp + <usize>row * Db, o = outp + <usize>row * Db, dO = doutp + <usize>row * Db;
      let di = f32x4.splat(0);
      for (let d: usize = 0; d < Db; d += 16) {
        di = f32x4.add(di, f32x4.mul(v128.load(dO + d), v128.load(o + d)));
        v128.store(dq + d, f32x4.splat(0));
      }
      const Di = f32x4.splat(hsum(di));
      const L = load<f32>(lsep + (<usize>row << 2));
      const Lv = f32x4.splat(L);
      const invS = f32x4.splat(<f32>Math.exp(-<f64>L));
      const m2 = grav ? load<f32>(mass + (<usize>h << 2)) : 0;
      const m2v = f32x4.splat(m2);
      let dm = f32x4.splat(0);
      for (let j = 0; j <= last; j += 4) {
        const mask = laneMask(j, last, 0);
        const k0 = rowOf(kb, j, last, krs), k1 = rowOf(kb, j + 1, last, krs), k2 = rowOf(kb, j + 2, last, krs), k3 = rowOf(kb, j + 3, last, krs);
        const v0 = rowOf(vb, j, last, krs), v1 = rowOf(vb, j + 1, last, krs), v2 = rowOf(vb, j + 2, last, krs), v3 = rowOf(vb, j + 3, last, krs);
        // scores (raw) and dP = dO·v for the 4 keys
        let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
        let e0 = f32x4.splat(0), e1 = f32x4.splat(0), e2 = f32x4.splat(0), e3 = f32x4.splat(0);
        for (let d: usize = 0; d < Db; d += 16) {
          const qv = v128.load(q + d);
          const ov = v128.load(dO + d);
          if (grav) {
            let t = f32x4.sub(qv, v128.load(k0 + d));
            a0 = f32x4.add(a0, f32x4.mul(t, t));
            t = f32x4.sub(qv, v128.load(k1 + d));
            a1 = f32x4.add(a1, f32x4.mul(t, t));
            t = f32x4.sub(qv, v128.load(k2 + d));
            a2 = f32x4.add(a2, f32x4.mul(t, t));
            t = f32x4.sub(qv, v128.load(k3 + d));
            a3 = f32x4.add(a3, f32x4.mul(t, t));
          } else {
            a0 = f32x4.add(a0, f32x4.mul(qv, v128.load(k0 + d)));
            a1 = f32x4.add(a1, f32x4.mul(qv, v128.load(k1 + d)));
            a2 = f32x4.add(a2, f32x4.mul(qv, v128.load(k2 + d)));
            a3 = f32x4.add(a3, f32x4.mul(qv, v128.load(k3 + d)));
          }
          e0 = f32x4.add(e0, f32x4.mul(ov, v128.load(v0 + d)));
          e1 = f32x4.add(e1, f32x4.mul(ov, v128.load(v1 + d)));
          e2 = f32x4.add(e2, f32x4.mul(ov, v128.load(v2 + d)));
          e3 = f32x4.add(e3, f32x4.mul(ov, v128.load(v3 + d)));
        }
        const raw = hsum4(a0, a1, a2, a3);
        const dp = f32x4.sub(hsum4(e0, e1, e2, e3), Di);
        let P: v128, g: v128;
        if (grav) {
          const u = f32x4.div(f32x4.splat(1), f32x4.add(raw, f32x4.splat(eps)));
          const s = f32x4.mul(m2v, u);
          let dS: v128;
          if (pure) {
            P = f32x4.mul(s, invS);
            dS = f32x4.mul(dp, invS);
          } else {
            P = exp4(f32x4.sub(s, Lv));
            dS = f32x4.mul(P, dp);
          }
          dS = v128.and(dS, mask);
          dm = f32x4.add(dm, f32x4.mul(dS, u));
          // ∂s/∂q = −2M²u²(q − k): g multiplies (q − k)
          g = f32x4.mul(f32x4.mul(f32x4.splat(-2), m2v), f32x4.mul(f32x4.mul(u, u), dS));
        } else {
          P = exp4(f32x4.sub(f32x4.mul(raw, f32x4.splat(scale)), Lv));
          g = v128.and(f32x4.mul(f32x4.splat(scale), f32x4.mul(P, dp)), mask);
        }
        P = v128.and(P, mask);
        const P0 = f32x4.splat(f32x4.extract_lane(P, 0)), P1 = f32x4.splat(f32x4.extract_lane(P, 1));
        const P2 = f32x4.splat(f32x4.extract_lane(P, 2)), P3 = f32x4.splat(f32x4.extract_lane(P, 3));
        const g0 = f32x4.splat(f32x4.extract_lane(g, 0)), g1 = f32x4.splat(f32x4.extract_lane(g, 1));
        const g2 = f32x4.splat(f32x4.extract_lane(g, 2)), g3 = f32x4.splat(f32x4.extract_lane(g, 3));
        const dk0 = rowOf(dkb, j, last, krs), dk1 = rowOf(dkb, j + 1, last, krs), dk2 = rowOf(dkb, j + 2, last, krs), dk3 = rowOf(dkb, j + 3, last, krs);
        const dv0 = rowOf(dvb, j, last, krs), dv1 = rowOf(dvb, j + 1, last, krs), dv2 = rowOf(dvb, j + 2, last, krs), dv3 = rowOf(dvb, j + 3, last, krs);
        // clamped lanes repeat the last row with P = g = 0; each lane's read-modify-write ends before the next's
        for (let d: usize = 0; d < Db; d += 16) {
          const qv = v128.load(q + d);
          const ov = v128.load(dO + d);
          let dqv = v128.load(dq + d);
          v128.store(dv0 + d, f32x4.add(v128.load(dv0 + d), f32x4.mul(P0, ov)));
          v128.store(dv1 + d, f32x4.add(v128.load(dv1 + d), f32x4.mul(P1, ov)));
          v128.store(dv2 + d, f32x4.add(v128.load(dv2 + d), f32x4.mul(P2, ov)));
          v128.store(dv3 + d, f32x4.add(v128.load(dv3 + d), f32x4.mul(P3, ov)));
          if (grav) {
            let df = f32x4.mul(g0, f32x4.sub(qv, v128.load(k0 + d)));
            dqv = f32x4.add(dqv, df);
            v128.store(dk0 + d, f32x4.sub(v128.load(dk0 + d), df));
            df = f32x4.mul(g1, f32x4.sub(qv, v128.load(k1 + d)));
            dqv = f32x4.add(dqv, df);
            v128.store(dk1 + d, f32x4.sub(v128.load(dk1 + d), df));
            df = f32x4.mul(g2, f32x4.sub(qv, v128.load(k2 + d)));
            dqv = f32x4.add(dqv, df);
            v128.store(dk2 + d, f32x4.sub(v128.load(dk2 + d), df));
            df = f32x4.mul(g3, f32x4.sub(qv, v128.load(k3 + d)));
            dqv = f32x4.add(dqv, df);
            v128.store(dk3 + d, f32x4.sub(v128.load(dk3 + d), df));
          } else {
            dqv = f32x4.add(dqv, f32x4.mul(g0, v128.load(k0 + d)));
            v128.store(dk0 + d, f32x4.add(v128.load(dk0 + d), f32x4.mul(g0, qv)));
            dqv = f32x4.add(dqv, f32x4.mul(g1, v128.load(k1 + d)));
            v128.store(dk1 + d, f32x4.add(v128.load(dk1 + d), f32x4.mul(g1, qv)));
            dqv = f32x4.add(dqv, f32x4.mul(g2, v128.load(k2 + d)));
            v128.store(dk2 + d, f32x4.add(v128.load(dk2 + d), f32x4.mul(g2, qv)));
            dqv = f32x4.add(dqv, f32x4.mul(g3, v128.load(k3 + d)));
            v128.store(dk3 + d, f32x4.add(v128.load(dk3 + d), f32x4.mul(g3, qv)));
          }
          v128.store(dq + d, dqv);
        }
      }
      const dqo = dqp + <usize>row * Db;
      for (let d: usize = 0; d < Db; d += 16) v128.store(dqo + d, v128.load(dq + d));
      if (grav) {
        const mp = dmp + (<usize>(b * Hq + h) << 3);
        store<f64>(mp, load<f64>(mp) + <f64>hsum(dm));
      }
    }
  }
}

/** Runs tasks [r0, r1) of the job at desc; tmp: this thread's private 8 KB. */
export function attn(desc: usize, r0: i32, r1: i32, tmp: usize): void {
  const Hkv = fld(desc, HKV);
  if (fld(desc, OP) == 0) {
    const nqb = fld(desc, NQB), qblock = fld(desc, QBLOCK), T = fld(desc, TQ), nsplit = fld(desc, NSPLIT);
    for (let r = r0; r < r1; r++) {
      const split = r % nsplit;
      const rq = r / nsplit;
      const qb = nqb - 1 - (rq % nqb); // the longest (last) query blocks of a head first: causal rows grow
      const bk = rq / nqb;
      const t0 = qb * qblock;
      forwardTask(desc, bk / Hkv, bk % Hkv, t0, min(T, t0 + qblock), split, tmp);
    }
  } else {
    for (let r = r0; r < r1; r++) backwardTask(desc, r / Hkv, r % Hkv, tmp);
  }
}
