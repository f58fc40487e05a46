// AssemblyScript source of the CPU matmul kernels (compiled by scripts/build-wasm.mjs into
// src/backend/cpu/wasm-binary.ts). All pointers are byte offsets into the imported shared memory; the
// caller splits the work between threads by output rows (forward) or input columns (backward).
// Weight dtype codes: 0 = f32, 1 = bf16, 2 = f16 (16-bit weights are widened in registers, never in memory),
// 3 = Q8_0 (8-bit blocks with f32 scales, forward only; see fwdQ8).
// The kernels are generic over a marker type W (f32 = f32, u16 = bf16, i16 = f16) so every dtype gets its own
// compiled loop: a runtime dtype test inside the inner loop is what binaryen left when they were merged.

// K-block of the forward pass: 512 f32 per x row keeps a 128-row activation tile in L2 while the 4 weight
// rows of a tile (4 x 512 x 2 bytes) sit in L1.
const KB: usize = 512;
// O-block of the backward pass: 256 weight rows x 64-byte lines = 16 KB of lines stay in L1 while the
// column chunks of 8 walk across them.
const OB: usize = 256;

// f16 bits (zero-extended in i32 lanes) -> f32, branch-free (F. Giesen's half_to_float_fast): subnormals are
// renormalised by a float subtraction so no denormal arithmetic happens; inf/nan keep their payload.
@inline function f16x4(h: v128): v128 {
  let u = i32x4.shl(v128.and(h, i32x4.splat(0x7fff)), 13);
  const e = v128.and(u, i32x4.splat(0x0f800000));
  u = i32x4.add(u, i32x4.splat(0x38000000));
  u = i32x4.add(u, v128.and(i32x4.eq(e, i32x4.splat(0x0f800000)), i32x4.splat(0x38000000)));
  const sub = f32x4.sub(i32x4.add(u, i32x4.splat(0x00800000)), i32x4.splat(0x38800000));
  u = v128.bitselect(sub, u, i32x4.eq(e, i32x4.splat(0)));
  return v128.or(u, i32x4.shl(v128.and(h, i32x4.splat(0x8000)), 16));
}

@inline function f16s(h: u32): f32 {
  let u: u32 = (h & 0x7fff) << 13;
  const e = u & 0x0f800000;
  u += 0x38000000;
  if (e == 0x0f800000) u += 0x38000000;
  else if (e == 0) u = reinterpret<u32>(reinterpret<f32>(u + 0x00800000) - reinterpret<f32>(<u32>0x38800000));
  return reinterpret<f32>(u | ((h & 0x8000) << 16));
}

/** 4 consecutive weights at byte address p, as f32x4. */
@inline function ldw<W>(p: usize): v128 {
  if (isFloat<W>()) return v128.load(p);
  const h = v128.load_ext<u16>(p);
  if (isSigned<W>()) return f16x4(h);
  return i32x4.shl(h, 16);
}

@inline function ldw1<W>(p: usize): f32 {
  if (isFloat<W>()) return load<f32>(p);
  const h = <u32>load<u16>(p);
  if (isSigned<W>()) return f16s(h);
  return reinterpret<f32>(h << 16);
}

/** [sum(a0), sum(a1), sum(a2), sum(a3)] */
@inline function hsum4(a0: v128, a1: v128, a2: v128, a3: v128): v128 {
  const t0 = f32x4.add(v128.shuffle<f32>(a0, a1, 0, 4, 2, 6), v128.shuffle<f32>(a0, a1, 1, 5, 3, 7));
  const t1 = f32x4.add(v128.shuffle<f32>(a2, a3, 0, 4, 2, 6), v128.shuffle<f32>(a2, a3, 1, 5, 3, 7));
  return f32x4.add(v128.shuffle<f32>(t0, t1, 0, 1, 4, 5), v128.shuffle<f32>(t0, t1, 2, 3, 6, 7));
}

@inline function hsum(a: v128): f32 {
  return f32x4.extract_lane(a, 0) + f32x4.extract_lane(a, 1) + f32x4.extract_lane(a, 2) + f32x4.extract_lane(a, 3);
}

/** y[n, o..o+4] += x[n, k0..k1] · w[0..4, k0..k1] for all n; weight row j starts at wj, element k at
 * wj + (k - wk0) * sizeof<V>() (V = f32 for a packed tile, else the stored type). */
@inline function rows4<V>(x: usize, N: usize, IN: usize, OUT: usize, y: usize, o: usize,
  w0: usize, w1: usize, w2: usize, w3: usize, wk0: usize, k0: usize, kv: usize, k1: usize): void {
  const esz: usize = sizeof<V>();
  const xrow = IN << 2;
  const yrow = OUT << 2;
  let n: usize = 0;
  // 4 weight rows x 2 activation rows: 8 accumulators + 2 x + 1 w fit the 16 xmm registers
  for (; n + 2 <= N; n += 2) {
    const xa = x + n * xrow;
    const xb = xa + xrow;
    let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
    let b0 = f32x4.splat(0), b1 = f32x4.splat(0), b2 = f32x4.splat(0), b3 = f32x4.splat(0);
    for (let k = k0; k < kv; k += 4) {
      const va = v128.load(xa + (k << 2));
      const vb = v128.load(xb + (k << 2));
      const ke = (k - wk0) * esz;
      let wv = ldw<V>(w0 + ke);
      a0 = f32x4.add(a0, f32x4.mul(wv, va));
      b0 = f32x4.add(b0, f32x4.mul(wv, vb));
      wv = ldw<V>(w1 + ke);
      a1 = f32x4.add(a1, f32x4.mul(wv, va));
      b1 = f32x4.add(b1, f32x4.mul(wv, vb));
      wv = ldw<V>(w2 + ke);
      a2 = f32x4.add(a2, f32x4.mul(wv, va));
      b2 = f32x4.add(b2, f32x4.mul(wv, vb));
      wv = ldw<V>(w3 + ke);
      a3 = f32x4.add(a3, f32x4.mul(wv, va));
      b3 = f32x4.add(b3, f32x4.mul(wv, vb));
    }
    const ya = y + n * yrow + (o << 2);
    const yb = ya + yrow;
    v128.store(ya, f32x4.add(v128.load(ya), hsum4(a0, a1, a2, a3)));
    v128.store(yb, f32x4.add(v128.load(yb), hsum4(b0, b1, b2, b3)));
    for (let k = kv; k < k1; k++) {
      const sa = load<f32>(xa + (k << 2));
      const sb = load<f32>(xb + (k << 2));
      const ke = (k - wk0) * esz;
      const s0 = ldw1<V>(w0 + ke), s1 = ldw1<V>(w1 + ke), s2 = ldw1<V>(w2 + ke), s3 = ldw1<V>(w3 + ke);
      store<f32>(ya, load<f32>(ya) + s0 * sa);
      store<f32>(ya + 4, load<f32>(ya + 4) + s1 * sa);
      store<f32>(ya + 8, load<f32>(ya + 8) + s2 * sa);
      store<f32>(ya + 12, load<f32>(ya + 12) + s3 * sa);
      store<f32>(yb, load<f32>(yb) + s0 * sb);
      store<f32>(yb + 4, load<f32>(yb + 4) + s1 * sb);
      store<f32>(yb + 8, load<f32>(yb + 8) + s2 * sb);
      store<f32>(yb + 12, load<f32>(yb + 12) + s3 * sb);
    }
  }
  for (; n < N; n++) {
    const xa = x + n * xrow;
    let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
    let k = k0;
    if (!isFloat<V>() && !isSigned<V>()) {
      // bf16, 8 at a time: one 16-byte load per row; as i32 lanes, << 16 gives the even elements as f32
      // and & 0xffff0000 the odd ones, so x is split into evens and odds once for the 4 rows
      const hi = i32x4.splat(0xffff0000);
      for (; k + 8 <= kv; k += 8) {
        const x0 = v128.load(xa + (k << 2));
        const x1 = v128.load(xa + (k << 2), 16);
        const xe = v128.shuffle<f32>(x0, x1, 0, 2, 4, 6);
        const xo = v128.shuffle<f32>(x0, x1, 1, 3, 5, 7);
        const ke = (k - wk0) << 1;
        let h = v128.load(w0 + ke);
        a0 = f32x4.add(a0, f32x4.add(f32x4.mul(i32x4.shl(h, 16), xe), f32x4.mul(v128.and(h, hi), xo)));
        h = v128.load(w1 + ke);
        a1 = f32x4.add(a1, f32x4.add(f32x4.mul(i32x4.shl(h, 16), xe), f32x4.mul(v128.and(h, hi), xo)));
        h = v128.load(w2 + ke);
        a2 = f32x4.add(a2, f32x4.add(f32x4.mul(i32x4.shl(h, 16), xe), f32x4.mul(v128.and(h, hi), xo)));
        h = v128.load(w3 + ke);
        a3 = f32x4.add(a3, f32x4.add(f32x4.mul(i32x4.shl(h, 16), xe), f32x4.mul(v128.and(h, hi), xo)));
      }
    }
    for (; k < kv; k += 4) {
      const va = v128.load(xa + (k << 2));
      const ke = (k - wk0) * esz;
      a0 = f32x4.add(a0, f32x4.mul(ldw<V>(w0 + ke), va));
      a1 = f32x4.add(a1, f32x4.mul(ldw<V>(w1 + ke), va));
      a2 = f32x4.add(a2, f32x4.mul(ldw<V>(w2 + ke), va));
      a3 = f32x4.add(a3, f32x4.mul(ldw<V>(w3 + ke), va));
    }
    const ya = y + n * yrow + (o << 2);
    v128.store(ya, f32x4.add(v128.load(ya), hsum4(a0, a1, a2, a3)));
    for (let k = kv; k < k1; k++) {
      const sa = load<f32>(xa + (k << 2));
      const ke = (k - wk0) * esz;
      store<f32>(ya, load<f32>(ya) + ldw1<V>(w0 + ke) * sa);
      store<f32>(ya + 4, load<f32>(ya + 4) + ldw1<V>(w1 + ke) * sa);
      store<f32>(ya + 8, load<f32>(ya + 8) + ldw1<V>(w2 + ke) * sa);
      store<f32>(ya + 12, load<f32>(ya + 12) + ldw1<V>(w3 + ke) * sa);
    }
  }
}

/** y[n, o] = bias[o] + sum_k x[n, k] w[o, k] for o in [o0, o1); x [N, IN] f32, w [OUT, IN], y [N, OUT] f32. */
function fwdT<W>(x: usize, N: usize, w: usize, IN: usize, OUT: usize, bias: usize, y: usize, o0: usize, o1: usize, tmp: usize): void {
  const esz: usize = sizeof<W>();
  const wrow = IN * esz;
  const xrow = IN << 2;
  const yrow = OUT << 2;
  for (let n: usize = 0; n < N; n++) {
    const yp = y + n * yrow;
    for (let o = o0; o < o1; o++) store<f32>(yp + (o << 2), bias != 0 ? load<f32>(bias + (o << 2)) : 0);
  }
  // small N (decode): x fits in cache anyway, and whole-row streams let the prefetcher run ahead in DRAM
  // (512-element segments cut every row into short streams: 5.6 -> ? GB/s)
  // (the packed 16-bit GEMM path below needs k-blocks of at most KB: its tile buffer is 4 x KB f32)
  const kb: usize = N * IN <= 65536 && (isFloat<W>() || N < 4) ? IN : KB;
  for (let k0: usize = 0; k0 < IN; k0 += kb) {
    const k1 = min<usize>(k0 + kb, IN);
    const kv = k0 + ((k1 - k0) & ~(<usize>3));
    let o = o0;
    for (; o + 4 <= o1; o += 4) {
      const w0 = w + o * wrow;
      const w1 = w0 + wrow;
      const w2 = w1 + wrow;
      const w3 = w2 + wrow;
      if (!isFloat<W>() && N >= 4) {
        // GEMM: widen the 4 x (k1 - k0) weight tile once into this thread's f32 buffer, reuse it for all N rows
        const len = k1 - k0;
        for (let j: usize = 0; j < 4; j++) {
          const src = w0 + j * wrow + k0 * esz;
          const dst = tmp + j * (KB << 2);
          let k: usize = 0;
          for (; k + 4 <= len; k += 4) v128.store(dst + (k << 2), ldw<W>(src + k * esz));
          for (; k < len; k++) store<f32>(dst + (k << 2), ldw1<W>(src + k * esz));
        }
        rows4<f32>(x, N, IN, OUT, y, o, tmp, tmp + (KB << 2), tmp + (KB << 3), tmp + 3 * (KB << 2), k0, k0, kv, k1);
      } else rows4<W>(x, N, IN, OUT, y, o, w0, w1, w2, w3, 0, k0, kv, k1);
    }
    for (; o < o1; o++) {
      const w0 = w + o * wrow;
      for (let n: usize = 0; n < N; n++) {
        const xa = x + n * xrow;
        let a0 = f32x4.splat(0);
        for (let k = k0; k < kv; k += 4) a0 = f32x4.add(a0, f32x4.mul(ldw<W>(w0 + k * esz), v128.load(xa + (k << 2))));
        let s = hsum(a0);
        for (let k = kv; k < k1; k++) s += ldw1<W>(w0 + k * esz) * load<f32>(xa + (k << 2));
        const ya = y + n * yrow + (o << 2);
        store<f32>(ya, load<f32>(ya) + s);
      }
    }
  }
}

/** dx[n, i] = sum_o dy[n, o] w[o, i] for i in [i0, i1); dy [N, OUT], w [OUT, IN], dx [N, IN]. */
function bwdT<W>(dy: usize, N: usize, w: usize, IN: usize, OUT: usize, dx: usize, i0: usize, i1: usize): void {
  const esz: usize = sizeof<W>();
  const wrow = IN * esz;
  const dyrow = OUT << 2;
  const dxrow = IN << 2;
  for (let n: usize = 0; n < N; n++) memory.fill(dx + n * dxrow + (i0 << 2), 0, (i1 - i0) << 2);
  for (let ob: usize = 0; ob < OUT; ob += OB) {
    const oe = min<usize>(ob + OB, OUT);
    let i = i0;
    for (; i + 8 <= i1; i += 8) {
      const wc = w + i * esz;
      let n: usize = 0;
      // 4 activation rows x 8 columns: 8 accumulators, the 2 weight vectors are shared by the 4 rows
      for (; n + 4 <= N; n += 4) {
        const p0 = dx + n * dxrow + (i << 2);
        const p1 = p0 + dxrow;
        const p2 = p1 + dxrow;
        const p3 = p2 + dxrow;
        let a0 = v128.load(p0), a1 = v128.load(p0 + 16);
        let b0 = v128.load(p1), b1 = v128.load(p1 + 16);
        let c0 = v128.load(p2), c1 = v128.load(p2 + 16);
        let d0 = v128.load(p3), d1 = v128.load(p3 + 16);
        const g0 = dy + n * dyrow;
        const g1 = g0 + dyrow;
        const g2 = g1 + dyrow;
        const g3 = g2 + dyrow;
        for (let o = ob; o < oe; o++) {
          const wp = wc + o * wrow;
          const w0 = ldw<W>(wp);
          const w1 = ldw<W>(wp + 4 * esz);
          const oo = o << 2;
          let s = v128.load_splat<f32>(g0 + oo);
          a0 = f32x4.add(a0, f32x4.mul(s, w0));
          a1 = f32x4.add(a1, f32x4.mul(s, w1));
          s = v128.load_splat<f32>(g1 + oo);
          b0 = f32x4.add(b0, f32x4.mul(s, w0));
          b1 = f32x4.add(b1, f32x4.mul(s, w1));
          s = v128.load_splat<f32>(g2 + oo);
          c0 = f32x4.add(c0, f32x4.mul(s, w0));
          c1 = f32x4.add(c1, f32x4.mul(s, w1));
          s = v128.load_splat<f32>(g3 + oo);
          d0 = f32x4.add(d0, f32x4.mul(s, w0));
          d1 = f32x4.add(d1, f32x4.mul(s, w1));
        }
        v128.store(p0, a0); v128.store(p0 + 16, a1);
        v128.store(p1, b0); v128.store(p1 + 16, b1);
        v128.store(p2, c0); v128.store(p2 + 16, c1);
        v128.store(p3, d0); v128.store(p3 + 16, d1);
      }
      for (; n < N; n++) {
        const p0 = dx + n * dxrow + (i << 2);
        let a0 = v128.load(p0), a1 = v128.load(p0 + 16);
        const g0 = dy + n * dyrow;
        for (let o = ob; o < oe; o++) {
          const wp = wc + o * wrow;
          const s = v128.load_splat<f32>(g0 + (o << 2));
          a0 = f32x4.add(a0, f32x4.mul(s, ldw<W>(wp)));
          a1 = f32x4.add(a1, f32x4.mul(s, ldw<W>(wp + 4 * esz)));
        }
        v128.store(p0, a0); v128.store(p0 + 16, a1);
      }
    }
    for (; i < i1; i++) {
      const wc = w + i * esz;
      for (let n: usize = 0; n < N; n++) {
        const p = dx + n * dxrow + (i << 2);
        const g = dy + n * dyrow;
        let s = load<f32>(p);
        for (let o = ob; o < oe; o++) s += load<f32>(g + (o << 2)) * ldw1<W>(wc + o * wrow);
        store<f32>(p, s);
      }
    }
  }
}

// Q8_0 weights (GGUF's 8-bit blocks), repacked by the host: int8 quants [OUT, IN] at w, then one f32 scale per
// 32 values [OUT, IN / 32] at the next 16-byte boundary. IN is a multiple of 32.
@inline function q8Scales(w: usize, IN: usize, OUT: usize): usize {
  return (w + OUT * IN + 15) & ~(<usize>15);
}

/** weights [k0, k1) of a Q8_0 row (quants at wr, scales at sr) as f32 at dst: q * scale, 32 at a time */
@inline function q8Row(wr: usize, sr: usize, k0: usize, k1: usize, dst: usize): void {
  for (let k = k0; k < k1; k += 32) {
    const s = v128.load_splat<f32>(sr + ((k >> 5) << 2));
    const d = dst + ((k - k0) << 2);
    for (let h: usize = 0; h < 32; h += 16) {
      const q = v128.load(wr + k + h);
      const lo = i16x8.extend_low_i8x16_s(q);
      const hi = i16x8.extend_high_i8x16_s(q);
      v128.store(d + (h << 2), f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(lo)), s));
      v128.store(d + (h << 2) + 16, f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(lo)), s));
      v128.store(d + (h << 2) + 32, f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(hi)), s));
      v128.store(d + (h << 2) + 48, f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(hi)), s));
    }
  }
}

// the Q8_0 decode kernel's int16 copy of x (2 bytes an input) and its f32 scales (one per 32) fit the thread's
// 32 KB tmp up to this many inputs
const Q8_MAX_IN: usize = 14336;

/** 32 f32 of x at p as int16 at q (round to nearest of x * 32767 / max|x|), the block's scale max|x| / 32767 at s */
@inline function q16Block(p: usize, q: usize, s: usize): void {
  const v0 = v128.load(p), v1 = v128.load(p, 16), v2 = v128.load(p, 32), v3 = v128.load(p, 48);
  const v4 = v128.load(p, 64), v5 = v128.load(p, 80), v6 = v128.load(p, 96), v7 = v128.load(p, 112);
  let m = f32x4.max(f32x4.max(f32x4.abs(v0), f32x4.abs(v1)), f32x4.max(f32x4.abs(v2), f32x4.abs(v3)));
  m = f32x4.max(m, f32x4.max(f32x4.max(f32x4.abs(v4), f32x4.abs(v5)), f32x4.max(f32x4.abs(v6), f32x4.abs(v7))));
  const amax = max(max(f32x4.extract_lane(m, 0), f32x4.extract_lane(m, 1)), max(f32x4.extract_lane(m, 2), f32x4.extract_lane(m, 3)));
  const inv = f32x4.splat(amax > 0 ? <f32>32767 / amax : 0);
  store<f32>(s, amax / <f32>32767);
  v128.store(q, i16x8.narrow_i32x4_s(q16(v0, inv), q16(v1, inv)));
  v128.store(q, i16x8.narrow_i32x4_s(q16(v2, inv), q16(v3, inv)), 16);
  v128.store(q, i16x8.narrow_i32x4_s(q16(v4, inv), q16(v5, inv)), 32);
  v128.store(q, i16x8.narrow_i32x4_s(q16(v6, inv), q16(v7, inv)), 48);
}

@inline function q16(v: v128, inv: v128): v128 {
  return i32x4.trunc_sat_f32x4_s(f32x4.nearest(f32x4.mul(v, inv)));
}

function q16Row(x: usize, IN: usize, q: usize, s: usize): void {
  for (let k: usize = 0; k < IN; k += 32) q16Block(x + (k << 2), q + (k << 1), s + ((k >> 5) << 2));
}

/** the i32 lane sums of 32 int8 weights at wp times 32 int16 x (x0..x3): pairs multiplied and added exactly */
@inline function q8dotI(wp: usize, x0: v128, x1: v128, x2: v128, x3: v128): v128 {
  const q0 = v128.load(wp);
  const q1 = v128.load(wp, 16);
  let d = i32x4.dot_i16x8_s(i16x8.extend_low_i8x16_s(q0), x0);
  d = i32x4.add(d, i32x4.dot_i16x8_s(i16x8.extend_high_i8x16_s(q0), x1));
  d = i32x4.add(d, i32x4.dot_i16x8_s(i16x8.extend_low_i8x16_s(q1), x2));
  return i32x4.add(d, i32x4.dot_i16x8_s(i16x8.extend_high_i8x16_s(q1), x3));
}

/** acc + the products of 16 int8 weights (q) with 16 f32 (x0..x3), widened in registers */
@inline function q8dot16(acc: v128, q: v128, x0: v128, x1: v128, x2: v128, x3: v128): v128 {
  const lo = i16x8.extend_low_i8x16_s(q);
  const hi = i16x8.extend_high_i8x16_s(q);
  acc = f32x4.add(acc, f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(lo)), x0));
  acc = f32x4.add(acc, f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(lo)), x1));
  acc = f32x4.add(acc, f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_low_i16x8_s(hi)), x2));
  return f32x4.add(acc, f32x4.mul(f32x4.convert_i32x4_s(i32x4.extend_high_i16x8_s(hi)), x3));
}

/**
 * y = bias + x · wᵀ for Q8_0 weights, rows [o0, o1). Decode (N < 4): x as int16 per 32-block, integer dot
 * products with the int8 weights (exact in i32), 4 rows at a time, whole rows streamed (a bit over half the bytes of
 * bf16); past Q8_MAX_IN inputs the weights are widened to f32 in registers instead. GEMM: 4-row tiles of KB columns
 * widened (q * scale) into tmp once and multiplied by all N rows with rows4<f32>, as the 16-bit path does.
 */
function fwdQ8(x: usize, N: usize, w: usize, IN: usize, OUT: usize, bias: usize, y: usize, o0: usize, o1: usize, tmp: usize): void {
  const xrow = IN << 2;
  const yrow = OUT << 2;
  const srow = (IN >> 5) << 2;
  const sc = q8Scales(w, IN, OUT);
  for (let n: usize = 0; n < N; n++) {
    const yp = y + n * yrow;
    for (let o = o0; o < o1; o++) store<f32>(yp + (o << 2), bias != 0 ? load<f32>(bias + (o << 2)) : 0);
  }
  if (N < 4 && IN <= Q8_MAX_IN) {
    // decode: x row n as int16 per 32-block (scale = the block's max |x| / 32767) in tmp, then integer dot products
    // of the int8 weights with it (i32x4.dot_i16x8_s: exact in i32), 4 rows sharing each x vector; a block's
    // integer sum times (weight scale * x scale) in f32
    const xq = tmp;
    const xs = tmp + (IN << 1);
    for (let n: usize = 0; n < N; n++) {
      q16Row(x + n * xrow, IN, xq, xs);
      let o = o0;
      for (; o + 4 <= o1; o += 4) {
        const w0 = w + o * IN, w1 = w0 + IN, w2 = w1 + IN, w3 = w2 + IN;
        const s0 = sc + o * srow, s1 = s0 + srow, s2 = s1 + srow, s3 = s2 + srow;
        let a0 = f32x4.splat(0), a1 = f32x4.splat(0), a2 = f32x4.splat(0), a3 = f32x4.splat(0);
        for (let k: usize = 0; k < IN; k += 32) {
          const xp = xq + (k << 1);
          const x0 = v128.load(xp), x1 = v128.load(xp, 16), x2 = v128.load(xp, 32), x3 = v128.load(xp, 48);
          const kb = (k >> 5) << 2;
          const sx = load<f32>(xs + kb);
          a0 = f32x4.add(a0, f32x4.mul(f32x4.convert_i32x4_s(q8dotI(w0 + k, x0, x1, x2, x3)), f32x4.splat(load<f32>(s0 + kb) * sx)));
          a1 = f32x4.add(a1, f32x4.mul(f32x4.convert_i32x4_s(q8dotI(w1 + k, x0, x1, x2, x3)), f32x4.splat(load<f32>(s1 + kb) * sx)));
          a2 = f32x4.add(a2, f32x4.mul(f32x4.convert_i32x4_s(q8dotI(w2 + k, x0, x1, x2, x3)), f32x4.splat(load<f32>(s2 + kb) * sx)));
          a3 = f32x4.add(a3, f32x4.mul(f32x4.convert_i32x4_s(q8dotI(w3 + k, x0, x1, x2, x3)), f32x4.splat(load<f32>(s3 + kb) * sx)));
        }
        const ya = y + n * yrow + (o << 2);
        v128.store(ya, f32x4.add(v128.load(ya), hsum4(a0, a1, a2, a3)));
      }
      for (; o < o1; o++) {
        const wr = w + o * IN;
        const sr = sc + o * srow;
        let a0 = f32x4.splat(0);
        for (let k: usize = 0; k < IN; k += 32) {
          const xp = xq + (k << 1);
          const kb = (k >> 5) << 2;
          const d = q8dotI(wr + k, v128.load(xp), v128.load(xp, 16), v128.load(xp, 32), v128.load(xp, 48));
          a0 = f32x4.add(a0, f32x4.mul(f32x4.convert_i32x4_s(d), f32x4.splat(load<f32>(sr + kb) * load<f32>(xs + kb))));
        }
        const ya = y + n * yrow + (o << 2);
        store<f32>(ya, load<f32>(ya) + hsum(a0));
      }
    }
    return;
  }
  if (N < 4) {
    // rows too long for the int16 copy of x in tmp: widen the weights in registers, f32 products
    for (let o = o0; o < o1; o++) {
      const wr = w + o * IN;
      const sr = sc + o * srow;
      for (let n: usize = 0; n < N; n++) {
        const xa = x + n * xrow;
        let a0 = f32x4.splat(0);
        for (let k: usize = 0; k < IN; k += 32) {
          let b = f32x4.splat(0);
          for (let h: usize = 0; h < 32; h += 16) {
            const xp = xa + ((k + h) << 2);
            b = q8dot16(b, v128.load(wr + k + h), v128.load(xp), v128.load(xp, 16), v128.load(xp, 32), v128.load(xp, 48));
          }
          a0 = f32x4.add(a0, f32x4.mul(b, v128.load_splat<f32>(sr + ((k >> 5) << 2))));
        }
        const ya = y + n * yrow + (o << 2);
        store<f32>(ya, load<f32>(ya) + hsum(a0));
      }
    }
    return;
  }
  for (let k0: usize = 0; k0 < IN; k0 += KB) {
    const k1 = min<usize>(k0 + KB, IN);
    let o = o0;
    for (; o + 4 <= o1; o += 4) {
      for (let j: usize = 0; j < 4; j++) q8Row(w + (o + j) * IN, sc + (o + j) * srow, k0, k1, tmp + j * (KB << 2));
      rows4<f32>(x, N, IN, OUT, y, o, tmp, tmp + (KB << 2), tmp + (KB << 3), tmp + 3 * (KB << 2), k0, k0, k1, k1);
    }
    for (; o < o1; o++) {
      q8Row(w + o * IN, sc + o * srow, k0, k1, tmp);
      for (let n: usize = 0; n < N; n++) {
        const xa = x + n * xrow;
        let a0 = f32x4.splat(0);
        for (let k = k0; k < k1; k += 4) a0 = f32x4.add(a0, f32x4.mul(v128.load(tmp + ((k - k0) << 2)), v128.load(xa + (k << 2))));
        const ya = y + n * yrow + (o << 2);
        store<f32>(ya, load<f32>(ya) + hsum(a0));
      }
    }
  }
}

/** tmp: this thread's 4 x 512 f32 (8 KB) buffer for widened weight tiles. dt 3: Q8_0 (see fwdQ8). */
export function fwd(dt: i32, x: usize, N: usize, w: usize, IN: usize, OUT: usize, bias: usize, y: usize, o0: usize, o1: usize, tmp: usize): void {
  if (dt == 1) fwdT<u16>(x, N, w, IN, OUT, bias, y, o0, o1, tmp);
  else if (dt == 0) fwdT<f32>(x, N, w, IN, OUT, bias, y, o0, o1, tmp);
  else if (dt == 3) fwdQ8(x, N, w, IN, OUT, bias, y, o0, o1, tmp);
  else fwdT<i16>(x, N, w, IN, OUT, bias, y, o0, o1, tmp);
}

export function bwd(dt: i32, dy: usize, N: usize, w: usize, IN: usize, OUT: usize, dx: usize, i0: usize, i1: usize): void {
  if (dt == 1) bwdT<u16>(dy, N, w, IN, OUT, dx, i0, i1);
  else if (dt == 0) bwdT<f32>(dy, N, w, IN, OUT, dx, i0, i1);
  else bwdT<i16>(dy, N, w, IN, OUT, dx, i0, i1);
}

// N-block of the weight-gradient pass: 128 activation rows x IN f32 stay in L2 while every 4-row block of dW
// walks over them (dW itself is loaded and stored once per N-block, 1/128 of the multiply-adds).
const NB: usize = 128;

/**
 * dW[o, i] (+)= sum_n dy[n, o] x[n, i] for o in [o0, o1); dy [N, OUT], x [N, IN], dW [OUT, IN], all f32.
 * acc = 0 overwrites dW rows [o0, o1), else adds to them (the host accumulates over chunks of N).
 * 4 dW rows x 8 columns per register tile: one 16-byte dy load gives the 4 row scales of a step of n.
 */
export function dw(dy: usize, N: usize, OUT: usize, x: usize, IN: usize, dW: usize, o0: usize, o1: usize, acc: i32): void {
  const dyrow = OUT << 2;
  const xrow = IN << 2;
  const wrow = IN << 2;
  if (acc == 0) for (let o = o0; o < o1; o++) memory.fill(dW + o * wrow, 0, IN << 2);
  for (let nb: usize = 0; nb < N; nb += NB) {
    const ne = min<usize>(nb + NB, N);
    let o = o0;
    for (; o + 4 <= o1; o += 4) {
      const r0 = dW + o * wrow;
      const r1 = r0 + wrow;
      const r2 = r1 + wrow;
      const r3 = r2 + wrow;
      let i: usize = 0;
      for (; i + 8 <= IN; i += 8) {
        const ib = i << 2;
        let a0 = v128.load(r0 + ib), a1 = v128.load(r0 + ib, 16);
        let b0 = v128.load(r1 + ib), b1 = v128.load(r1 + ib, 16);
        let c0 = v128.load(r2 + ib), c1 = v128.load(r2 + ib, 16);
        let d0 = v128.load(r3 + ib), d1 = v128.load(r3 + ib, 16);
        let gp = dy + nb * dyrow + (o << 2);
        let xp = x + nb * xrow + ib;
        for (let n = nb; n < ne; n++) {
          const g = v128.load(gp);
          const x0 = v128.load(xp);
          const x1 = v128.load(xp, 16);
          let s = v128.shuffle<f32>(g, g, 0, 0, 0, 0);
          a0 = f32x4.add(a0, f32x4.mul(s, x0));
          a1 = f32x4.add(a1, f32x4.mul(s, x1));
          s = v128.shuffle<f32>(g, g, 1, 1, 1, 1);
          b0 = f32x4.add(b0, f32x4.mul(s, x0));
          b1 = f32x4.add(b1, f32x4.mul(s, x1));
          s = v128.shuffle<f32>(g, g, 2, 2, 2, 2);
          c0 = f32x4.add(c0, f32x4.mul(s, x0));
          c1 = f32x4.add(c1, f32x4.mul(s, x1));
          s = v128.shuffle<f32>(g, g, 3, 3, 3, 3);
          d0 = f32x4.add(d0, f32x4.mul(s, x0));
          d1 = f32x4.add(d1, f32x4.mul(s, x1));
          gp += dyrow;
          xp += xrow;
        }
        v128.store(r0 + ib, a0); v128.store(r0 + ib, a1, 16);
        v128.store(r1 + ib, b0); v128.store(r1 + ib, b1, 16);
        v128.store(r2 + ib, c0); v128.store(r2 + ib, c1, 16);
        v128.store(r3 + ib, d0); v128.store(r3 + ib, d1, 16);
      }
      for (; i < IN; i++) {
        const ib = i << 2;
        let s0: f32 = load<f32>(r0 + ib), s1: f32 = load<f32>(r1 + ib), s2: f32 = load<f32>(r2 + ib), s3: f32 = load<f32>(r3 + ib);
        for (let n = nb; n < ne; n++) {
          const xv = load<f32>(x + n * xrow + ib);
          const gp = dy + n * dyrow + (o << 2);
          s0 += load<f32>(gp) * xv;
          s1 += load<f32>(gp, 4) * xv;
          s2 += load<f32>(gp, 8) * xv;
          s3 += load<f32>(gp, 12) * xv;
        }
        store<f32>(r0 + ib, s0); store<f32>(r1 + ib, s1); store<f32>(r2 + ib, s2); store<f32>(r3 + ib, s3);
      }
    }
    // tail rows one at a time
    for (; o < o1; o++) {
      const r0 = dW + o * wrow;
      let i: usize = 0;
      for (; i + 8 <= IN; i += 8) {
        const ib = i << 2;
        let a0 = v128.load(r0 + ib), a1 = v128.load(r0 + ib, 16);
        for (let n = nb; n < ne; n++) {
          const s = v128.load_splat<f32>(dy + n * dyrow + (o << 2));
          const xp = x + n * xrow + ib;
          a0 = f32x4.add(a0, f32x4.mul(s, v128.load(xp)));
          a1 = f32x4.add(a1, f32x4.mul(s, v128.load(xp, 16)));
        }
        v128.store(r0 + ib, a0); v128.store(r0 + ib, a1, 16);
      }
      for (; i < IN; i++) {
        const ib = i << 2;
        let s: f32 = load<f32>(r0 + ib);
        for (let n = nb; n < ne; n++) s += load<f32>(dy + n * dyrow + (o << 2)) * load<f32>(x + n * xrow + ib);
        store<f32>(r0 + ib, s);
      }
    }
  }
}
