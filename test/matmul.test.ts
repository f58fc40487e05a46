import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createMatmulEngine, type MatmulEngine } from '../src/backend/cpu/matmul.js';
import { bf16ToF32, f16ToF32, f32ToBf16, f32ToF16, type HostTensor } from '../src/tensor/dtype.js';
import { GravityError } from '../src/errors.js';

// deterministic PRNG so a failure reproduces
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296 - 0.5;
  };
}

type WDtype = 'F32' | 'BF16' | 'F16' | 'F64';

/** A weight tensor and the exact values the kernel must see (decoded from its stored bits), as f64. */
function makeWeight(dtype: WDtype, rows: number, cols: number, seed: number): { t: HostTensor; ref: Float64Array } {
  const r = rng(seed);
  const n = rows * cols;
  const ref = new Float64Array(n);
  if (dtype === 'F32' || dtype === 'F64') {
    const d = dtype === 'F32' ? new Float32Array(n) : new Float64Array(n);
    for (let i = 0; i < n; i++) d[i] = r() * 2;
    for (let i = 0; i < n; i++) ref[i] = dtype === 'F64' ? Math.fround(d[i]) : d[i];
    return { t: { dtype, shape: [rows, cols], data: d }, ref };
  }
  const d = new Uint16Array(n);
  for (let i = 0; i < n; i++) {
    // every 7th f16 value is tiny so the subnormal path of the SIMD conversion is exercised
    const v = dtype === 'F16' && i % 7 === 3 ? r() * 1e-5 : r() * 2;
    d[i] = dtype === 'BF16' ? f32ToBf16(v) : f32ToF16(v);
    ref[i] = dtype === 'BF16' ? bf16ToF32(d[i]) : f16ToF32(d[i]);
  }
  return { t: { dtype, shape: [rows, cols], data: d }, ref };
}

function randF32(n: number, seed: number): Float32Array {
  const r = rng(seed);
  const a = new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = r() * 2;
  return a;
}

/** Asserts |got - want| <= tol * scale per element, where scale = sum |terms| (the f32 accumulation bound). */
function close(got: Float32Array, want: Float64Array, scale: Float64Array, what: string, tol = 1e-5): void {
  assert.ok(got.length >= want.length, `${what}: length ${got.length} < ${want.length}`);
  let worst = 0;
  for (let i = 0; i < want.length; i++) {
    const e = Math.abs(got[i] - want[i]) / Math.max(scale[i], 1e-30);
    if (!(e <= worst)) worst = Number.isNaN(e) ? Infinity : e;
  }
  assert.ok(worst <= tol, `${what}: relative error ${worst.toExponential(2)} > ${tol}`);
}

function refLinear(x: Float32Array, N: number, w: Float64Array, OUT: number, IN: number, bias: Float32Array | null) {
  const y = new Float64Array(N * OUT);
  const s = new Float64Array(N * OUT);
  for (let n = 0; n < N; n++)
    for (let o = 0; o < OUT; o++) {
      let acc = bias ? bias[o] : 0;
      let mag = bias ? Math.abs(bias[o]) : 0;
      for (let i = 0; i < IN; i++) {
        const p = x[n * IN + i] * w[o * IN + i];
        acc += p;
        mag += Math.abs(p);
      }
      y[n * OUT + o] = acc;
      s[n * OUT + o] = mag;
    }
  return { y, s };
}

function refBackward(dy: Float32Array, N: number, w: Float64Array, OUT: number, IN: number) {
  const dx = new Float64Array(N * IN);
  const s = new Float64Array(N * IN);
  for (let n = 0; n < N; n++)
    for (let o = 0; o < OUT; o++) {
      const g = dy[n * OUT + o];
      for (let i = 0; i < IN; i++) {
        const p = g * w[o * IN + i];
        dx[n * IN + i] += p;
        s[n * IN + i] += Math.abs(p);
      }
    }
  return { dx, s };
}

const engines: [string, () => MatmulEngine][] = [
  ['js', () => createMatmulEngine({ prefer: 'js' })],
  ['wasm t1', () => createMatmulEngine({ threads: 1 })],
  // threshold 0: even the tiny shapes are split between the two threads
  ['wasm t2', () => createMatmulEngine({ threads: 2, parallelThreshold: 0 })],
];

// odd shapes: tails of the 4-row, 8-column and 4-wide vector tiles; 600x300 crosses the 512 k-block and the
// 256-row block of the backward pass
const SHAPES: [number, number][] = [[37, 53], [53, 37], [5, 3], [600, 300]];
const NS = [1, 3, 17, 64];
const DTYPES: WDtype[] = ['F32', 'BF16', 'F16', 'F64'];

for (const [name, make] of engines) {
  test(`matmul ${name}: linear and linearBackwardInput match a float64 reference`, async () => {
    const e = make();
    if (name === 'wasm t2') {
      // calls never wait for a worker to boot; wait here so the worker's share is really tested
      const ready = () => (e as unknown as { workersReady(): number }).workersReady();
      for (let i = 0; i < 500 && ready() < 1; i++) await new Promise((r) => setTimeout(r, 10));
      assert.equal(ready(), 1, 'the worker thread did not start within 5 s');
    }
    if (name !== 'js') assert.equal(e.kind, 'wasm-simd');
    assert.equal(e.threads, name === 'wasm t2' ? 2 : 1);
    let seed = 1;
    for (const dtype of DTYPES)
      for (const [IN, OUT] of SHAPES) {
        const { t, ref } = makeWeight(dtype, OUT, IN, seed++);
        const pw = e.prepare(t);
        assert.deepEqual([pw.dtype, pw.rows, pw.cols], [dtype === 'F64' ? 'F32' : dtype, OUT, IN]);
        for (const N of NS) {
          if (IN * OUT > 10000 && N > 17 && dtype !== 'BF16') continue; // keep the f64 reference fast
          const x = randF32(N * IN, seed++);
          const bias = randF32(OUT, seed++);
          for (const b of [null, bias]) {
            const want = refLinear(x, N, ref, OUT, IN, b);
            close(e.linear(x, N, pw, b), want.y, want.s, `${name} linear ${dtype} N=${N} ${IN}->${OUT} bias=${!!b}`);
          }
          const dy = randF32(N * OUT, seed++);
          const want = refBackward(dy, N, ref, OUT, IN);
          close(e.linearBackwardInput(dy, N, pw), want.dx, want.s, `${name} backward ${dtype} N=${N} ${IN}->${OUT}`);
          // out= is overwritten, not accumulated into
          const out = new Float32Array(N * IN + 5).fill(123);
          e.linearBackwardInput(dy, N, pw, out);
          close(out, want.dx, want.s, `${name} backward out= ${dtype} N=${N}`);
          assert.equal(out[N * IN], 123, 'backward wrote past N*IN');
        }
        e.release(pw);
      }
    if (name === 'wasm t2') {
      const chunks = (e as unknown as { workerChunks(): number }).workerChunks();
      assert.ok(chunks > 0, 'the worker thread computed no chunk: the 2-thread results did not test it');
    }
    e.close();
  });
}

test('matmul wasm: activations wider than the scratch are chunked over N; weights share and reuse arena space', () => {
  const e = createMatmulEngine({ threads: 2, parallelThreshold: 0 });
  const IN = 3, OUT = 300_001, N = 64; // 64 rows x 1.2 MB per row > 32 MB scratch
  const { t, ref } = makeWeight('BF16', OUT, IN, 77);
  const small = makeWeight('F32', 9, 5, 78);
  const ps = e.prepare(small.t);
  const pw = e.prepare(t);
  const x = randF32(N * IN, 79);
  const bias = randF32(OUT, 80);
  const want = refLinear(x, N, ref, OUT, IN, bias);
  const out = new Float32Array(N * OUT).fill(NaN);
  close(e.linear(x, N, pw, bias, out), want.y, want.s, 'chunked linear');
  const dy = randF32(N * OUT, 81);
  const wb = refBackward(dy, N, ref, OUT, IN);
  close(e.linearBackwardInput(dy, N, pw), wb.dx, wb.s, 'chunked backward');
  // released space is reused and the other weight is untouched
  e.release(pw);
  const again = makeWeight('F16', 40, 41, 82);
  const pa = e.prepare(again.t);
  const xa = randF32(2 * 41, 83);
  const wa = refLinear(xa, 2, again.ref, 40, 41, null);
  close(e.linear(xa, 2, pa, null), wa.y, wa.s, 'reused space');
  const xs = randF32(5, 84);
  const wsm = refLinear(xs, 1, small.ref, 9, 5, null);
  close(e.linear(xs, 1, ps, null), wsm.y, wsm.s, 'first weight intact');
  e.close();
});

test('matmul: bad input gives one-line GravityErrors', () => {
  for (const e of [createMatmulEngine({ threads: 1 }), createMatmulEngine({ prefer: 'js' })]) {
    const other = createMatmulEngine({ prefer: 'js' });
    assert.throws(() => e.prepare({ dtype: 'I32', shape: [2, 2], data: new Int32Array(4) }), GravityError);
    assert.throws(() => e.prepare({ dtype: 'F32', shape: [4], data: new Float32Array(4) }), GravityError);
    assert.throws(() => e.prepare({ dtype: 'F32', shape: [2, 3], data: new Float32Array(5) }), GravityError);
    const pw = e.prepare({ dtype: 'F32', shape: [2, 3], data: new Float32Array(6) });
    assert.throws(() => e.linear(new Float32Array(5), 2, pw, null), /needs N\*3 = 6/);
    assert.throws(() => e.linear(new Float32Array(6), 2, pw, new Float32Array(3)), /bias has 3 values/);
    assert.throws(() => e.linear(new Float32Array(6), 2, pw, null, new Float32Array(3)), /out has 3/);
    assert.throws(() => other.linear(new Float32Array(6), 2, pw, null), /not prepared by this engine/);
    e.release(pw);
    assert.throws(() => e.linear(new Float32Array(6), 2, pw, null), /released/);
    e.close();
  }
});

test('matmul wasm: every finite f16 and bf16 bit pattern widens exactly (SIMD and scalar paths)', () => {
  const e = createMatmulEngine({ threads: 1 });
  for (const dtype of ['F16', 'BF16'] as const) {
    const bits: number[] = [];
    for (let h = 0; h < 65536; h++) {
      const v = dtype === 'F16' ? f16ToF32(h) : bf16ToF32(h);
      if (Number.isFinite(v)) bits.push(h);
    }
    // IN = 9: columns 0-7 go through the 4-wide SIMD loads, column 8 through the scalar tail
    const IN = 9;
    const OUT = Math.ceil(bits.length / IN);
    const data = new Uint16Array(OUT * IN);
    for (let i = 0; i < bits.length; i++) data[i] = bits[i];
    const pw = e.prepare({ dtype, shape: [OUT, IN], data });
    const x = new Float32Array(IN * IN);
    for (let j = 0; j < IN; j++) x[j * IN + j] = 1; // identity: y[j, o] = w[o, j]
    const y = e.linear(x, IN, pw, null);
    let bad = 0;
    for (let o = 0; o < OUT; o++)
      for (let j = 0; j < IN; j++) {
        const h = data[o * IN + j];
        const want = dtype === 'F16' ? f16ToF32(h) : bf16ToF32(h);
        if (y[j * OUT + o] !== want && !(want === 0 && y[j * OUT + o] === 0)) bad++;
      }
    assert.equal(bad, 0, `${dtype}: ${bad} values widened wrongly`);
  }
  e.close();
});

/** dW [OUT, IN] = dyᵀ x in f64, with the magnitude bound; only the entries in `pick` (all when null) */
function refWeightGrad(dy: Float32Array, x: Float32Array, N: number, OUT: number, IN: number, pick: number[] | null) {
  const dw = new Float64Array(OUT * IN);
  const s = new Float64Array(OUT * IN);
  const idx = pick ?? [...Array(OUT * IN).keys()];
  for (const e of idx) {
    const o = Math.floor(e / IN), i = e % IN;
    let a = 0, m = 0;
    for (let n = 0; n < N; n++) {
      const p = dy[n * OUT + o] * x[n * IN + i];
      a += p;
      m += Math.abs(p);
    }
    dw[e] = a;
    s[e] = m;
  }
  return { dw, s };
}

for (const [name, make] of engines) {
  test(`matmul ${name}: linearBackwardWeight matches a float64 reference on odd shapes`, async () => {
    const e = make();
    if (name === 'wasm t2') {
      const ready = () => (e as unknown as { workersReady(): number }).workersReady();
      for (let i = 0; i < 500 && ready() < 1; i++) await new Promise((r) => setTimeout(r, 10));
    }
    let seed = 500;
    // tails of the 4-row and 8-column tiles, N crossing the 128-row block, a single row / column
    const cases: [number, number, number][] = [[1, 1, 1], [3, 5, 7], [17, 37, 53], [129, 53, 37], [300, 9, 130], [64, 256, 96], [7, 1, 9], [5, 13, 1]];
    for (const [N, OUT, IN] of cases) {
      const dy = randF32(N * OUT, seed++);
      const x = randF32(N * IN, seed++);
      const want = refWeightGrad(dy, x, N, OUT, IN, null);
      close(e.linearBackwardWeight(dy, x, N, OUT, IN), want.dw, want.s, `${name} dW N=${N} OUT=${OUT} IN=${IN}`);
      const out = new Float32Array(OUT * IN + 3).fill(123);
      e.linearBackwardWeight(dy, x, N, OUT, IN, out);
      close(out, want.dw, want.s, `${name} dW out= N=${N}`);
      assert.equal(out[OUT * IN], 123, 'dW wrote past OUT*IN');
    }
    assert.deepEqual([...e.linearBackwardWeight(new Float32Array(0), new Float32Array(0), 0, 2, 2, new Float32Array(4).fill(7))], [0, 0, 0, 0]);
    assert.throws(() => e.linearBackwardWeight(new Float32Array(5), new Float32Array(6), 2, 3, 3), /dy has 5 values, needs N\*OUT = 6/);
    if (name === 'wasm t2') {
      // The cases above are small: on a loaded machine the main thread may take every chunk before the worker is
      // scheduled. Keep giving it a bigger call (checked against the reference too) until it has done a share.
      const chunks = () => (e as unknown as { workerChunks(): number }).workerChunks();
      const [N, OUT, IN] = [256, 192, 160];
      const dy = randF32(N * OUT, 900);
      const x = randF32(N * IN, 901);
      const want = refWeightGrad(dy, x, N, OUT, IN, null);
      for (let i = 0; i < 200 && chunks() === 0; i++) {
        close(e.linearBackwardWeight(dy, x, N, OUT, IN), want.dw, want.s, `${name} dW (worker share) N=${N}`);
        if (chunks() === 0) await new Promise((r) => setTimeout(r, 5));
      }
      assert.ok(chunks() > 0, 'the worker computed no dW chunk');
    }
    e.close();
  });
}

test('matmul wasm: linearBackwardWeight larger than the scratch is chunked over OUT and N', () => {
  const e = createMatmulEngine({ threads: 2, parallelThreshold: 0 });
  const N = 1000, OUT = 5003, IN = 1001; // dW 20 MB > half the 32 MB scratch; dy + x chunks of ~800 rows
  const dy = randF32(N * OUT, 601);
  const x = randF32(N * IN, 602);
  const r = rng(603);
  const pick = Array.from({ length: 300 }, () => Math.floor((r() + 0.5) * OUT * IN));
  pick.push(0, OUT * IN - 1, 4188 * IN, 4187 * IN + IN - 1); // first/last entries and the first chunk boundary
  const want = refWeightGrad(dy, x, N, OUT, IN, pick);
  const got = e.linearBackwardWeight(dy, x, N, OUT, IN);
  const g = new Float32Array(pick.length), w = new Float64Array(pick.length), s = new Float64Array(pick.length);
  pick.forEach((p, k) => { g[k] = got[p]; w[k] = want.dw[p]; s[k] = want.s[p]; });
  close(g, w, s, 'chunked dW');
  e.close();
});

/** Q8_0 blocks (f16 scale + 32 int8) of random values, and the exact f32 values they stand for, as f64 */
function makeQ8(rows: number, cols: number, seed: number): { blocks: Uint8Array; ref: Float64Array } {
  const r = rng(seed);
  const nb = (rows * cols) / 32;
  const blocks = new Uint8Array(nb * 34);
  const ref = new Float64Array(rows * cols);
  for (let b = 0; b < nb; b++) {
    const h = f32ToF16(0.001 + Math.abs(r()) * 0.05);
    blocks[b * 34] = h & 255;
    blocks[b * 34 + 1] = h >> 8;
    const d = f16ToF32(h);
    for (let j = 0; j < 32; j++) {
      const q = Math.round(r() * 254); // -127 .. 127, both signs
      blocks[b * 34 + 2 + j] = q & 255;
      ref[b * 32 + j] = Math.fround(q * d);
    }
  }
  return { blocks, ref };
}

for (const [name, make] of engines) {
  test(`matmul ${name}: Q8_0 weights (prepareQ8) match a float64 reference; decode and GEMM paths, odd rows, 2 k-blocks`, async () => {
    const e = make();
    if (name === 'wasm t2') {
      const ready = () => (e as unknown as { workersReady(): number }).workersReady();
      for (let i = 0; i < 500 && ready() < 1; i++) await new Promise((r) => setTimeout(r, 10));
    }
    let seed = 900;
    // 544 and 1056 columns cross the 512 k-block of the GEMM path; 5 and 13 rows leave tails of the 4-row tile;
    // 14,368 columns are past the int16 copy of x that decode keeps in tmp (its f32 fallback)
    for (const [IN, OUT] of [[32, 5], [96, 13], [544, 7], [1056, 4], [14368, 5]] as const) {
      const { blocks, ref } = makeQ8(OUT, IN, seed++);
      const pw = e.prepareQ8(blocks, OUT, IN);
      assert.deepEqual([pw.dtype, pw.rows, pw.cols], [name === 'js' ? 'F32' : 'Q8_0', OUT, IN]);
      for (const N of [1, 3, 4, 9]) {
        const x = randF32(N * IN, seed++);
        const bias = randF32(OUT, seed++);
        for (const b of [null, bias]) {
          const want = refLinear(x, N, ref, OUT, IN, b);
          close(e.linear(x, N, pw, b), want.y, want.s, `${name} Q8_0 linear N=${N} ${IN}->${OUT} bias=${!!b}`);
        }
      }
      if (name !== 'js') assert.throws(() => e.linearBackwardInput(randF32(OUT, 1), 1, pw), /Q8_0 weights are for inference/);
      e.release(pw);
    }
    assert.throws(() => e.prepareQ8(new Uint8Array(34), 1, 30), /rows of 30 values are not whole Q8_0 blocks of 32/);
    assert.throws(() => e.prepareQ8(new Uint8Array(33), 1, 32), /33 bytes for \[1, 32\] Q8_0 \(34 expected\)/);
    e.close();
  });
}
