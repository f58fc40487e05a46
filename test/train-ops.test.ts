/**
 * Finite-difference checks of every backward in the cpu TrainOps: f64 ops, central differences of
 * L = Σ r ∘ f(inputs) for a random r, compared with the analytic gradient (relative to its max).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createCpuBackend } from '../src/backend/cpu/index.js';
import type { Tensor } from '../src/backend/backend.js';
import type { TrainAttentionParams } from '../src/backend/train-ops.js';
import { createCpuTrainOps } from '../src/train/cpu-train-ops.js';
import { Rng } from '../src/generate/sampling.js';

const be = createCpuBackend({ threads: 1 });
const ops = createCpuTrainOps(be, 'f64');
const ops32 = createCpuTrainOps(be, 'f32');

function rand(n: number, seed: number, scale = 1): Float64Array {
  const r = new Rng(seed);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = scale * (2 * r.next() - 1);
  return out;
}

function data(t: Tensor): Float64Array {
  return (t as unknown as { host: { data: Float64Array } }).host.data;
}

function dot(a: ArrayLike<number>, b: ArrayLike<number>): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i] * b[i];
  return s;
}

/** max |analytic - numeric| / max |numeric| over every entry of `x` */
function fdCheck(x: Float64Array, analytic: ArrayLike<number>, loss: () => number, h = 1e-5): number {
  let num = 0;
  let den = 0;
  for (let i = 0; i < x.length; i++) {
    const keep = x[i];
    x[i] = keep + h;
    const lp = loss();
    x[i] = keep - h;
    const lm = loss();
    x[i] = keep;
    const g = (lp - lm) / (2 * h);
    num = Math.max(num, Math.abs(g - analytic[i]));
    den = Math.max(den, Math.abs(g));
  }
  assert.ok(den > 0, 'numeric gradient is all zero: the check would be vacuous');
  return num / den;
}

const TOL = 1e-6;

test('rmsnorm backward (dx, dw) matches finite differences', () => {
  const [N, C] = [5, 8];
  const x = rand(N * C, 1);
  const w = rand(C, 2);
  const r = rand(N * C, 3);
  const X = ops.fromHost(x, [N, C]);
  const W = ops.fromHost(w, [C]);
  const loss = () => dot(r, data(ops.rmsnorm(ops.fromHost(x, [N, C]), ops.fromHost(w, [C]), 1e-6).y));
  const { rstd } = ops.rmsnorm(X, W, 1e-6);
  const { dx, dw } = ops.rmsnormBackward(ops.fromHost(r, [N, C]), X, W, rstd);
  // the forward rounds through float32 like transformers: use a step large enough to see past it
  assert.ok(fdCheck(x, data(dx), loss, 1e-3) < 1e-4, 'dx');
  assert.ok(fdCheck(w, data(dw), loss, 1e-3) < 1e-4, 'dw');
});

test('linear backward (input, weight) and LoRA factors match finite differences', () => {
  const [N, IN, OUT, R] = [4, 6, 5, 3];
  const x = rand(N * IN, 4);
  const w = rand(OUT * IN, 5);
  const A = rand(R * IN, 6);
  const Bm = rand(OUT * R, 7);
  const rr = rand(N * OUT, 8);
  const s = 1.7;
  const mask = data(ops.dropoutMask([N, IN], 0.3, 9));
  // y = x Wᵀ + s·((x∘mask) Aᵀ) Bᵀ
  const fwd = () => {
    const X = ops.fromHost(x, [N, IN]);
    const base = ops.linear(X, ops.fromHost(w, [OUT, IN]), null);
    const u = ops.linear(ops.mul(X, ops.fromHost(mask, [N, IN])), ops.fromHost(A, [R, IN]), null);
    const l = ops.linear(u, ops.fromHost(Bm, [OUT, R]), null);
    return { y: ops.addScaled(base, l, s), u };
  };
  const loss = () => dot(rr, data(fwd().y));
  const { u } = fwd();
  const dy = ops.fromHost(rr, [N, OUT]);
  const dB = ops.linearBackwardWeight(dy, u); // times s
  const du = ops.linearBackwardInput(dy, ops.fromHost(Bm, [OUT, R])); // times s
  const xm = ops.mul(ops.fromHost(x, [N, IN]), ops.fromHost(mask, [N, IN]));
  const dA = ops.linearBackwardWeight(du, xm);
  const dxBase = ops.linearBackwardInput(dy, ops.fromHost(w, [OUT, IN]));
  const dxLora = ops.mul(ops.linearBackwardInput(du, ops.fromHost(A, [R, IN])), ops.fromHost(mask, [N, IN]));
  const dx = ops.addScaled(dxBase, dxLora, s);
  assert.ok(fdCheck(x, data(dx), loss) < TOL, 'dx');
  assert.ok(fdCheck(w, data(ops.linearBackwardWeight(dy, ops.fromHost(x, [N, IN]))), loss) < TOL, 'dW');
  assert.ok(fdCheck(A, data(dA).map((v) => v * s), loss) < TOL, 'dA');
  assert.ok(fdCheck(Bm, data(dB).map((v) => v * s), loss) < TOL, 'dB');
  assert.ok(mask.some((m) => m === 0) && mask.some((m) => m > 1), 'dropout mask has both kinds of entries');
});

test('linear through a frozen bf16 weight: f32 engine path equals the f64 loops', async () => {
  const [N, IN, OUT] = [3, 16, 8];
  const w = new Uint16Array(OUT * IN);
  const r = new Rng(3);
  for (let i = 0; i < w.length; i++) w[i] = 0x3c00 + (r.nextU32() & 0x3ff) - 0x200; // bf16 values near ±1
  const W = be.upload({ dtype: 'BF16', shape: [OUT, IN], data: w }, 'other');
  const x = rand(N * IN, 10);
  const y64 = await ops.read(ops.linear(ops.fromHost(x, [N, IN]), W, null));
  const y32 = await ops32.read(ops32.linear(ops32.fromHost(x, [N, IN]), W, null));
  for (let i = 0; i < y64.length; i++) assert.ok(Math.abs(y64[i] - y32[i]) < 1e-4 * (1 + Math.abs(y64[i])));
  const dy = rand(N * OUT, 11);
  const d64 = await ops.read(ops.linearBackwardInput(ops.fromHost(dy, [N, OUT]), W));
  const d32 = await ops32.read(ops32.linearBackwardInput(ops32.fromHost(dy, [N, OUT]), W));
  for (let i = 0; i < d64.length; i++) assert.ok(Math.abs(d64[i] - d32[i]) < 1e-4 * (1 + Math.abs(d64[i])));
});

test('rope backward matches finite differences', () => {
  const [N, H, D] = [4, 3, 8];
  const pos = Int32Array.from([0, 3, 7, 100]);
  const x = rand(N * H * D, 12);
  const r = rand(N * H * D, 13);
  const loss = () => dot(r, data(ops.rope(ops.fromHost(x, [N, H * D]), pos, H, D, 10000)));
  const dx = ops.ropeBackward(ops.fromHost(r, [N, H * D]), pos, H, D, 10000);
  assert.ok(fdCheck(x, data(dx), loss) < TOL);
});

test('swiglu backward matches finite differences', () => {
  const n = 20;
  const g = rand(n, 14, 3);
  const u = rand(n, 15);
  const r = rand(n, 16);
  const loss = () => dot(r, data(ops.swiglu(ops.fromHost(g, [n]), ops.fromHost(u, [n]))));
  const { dgate, dup } = ops.swigluBackward(ops.fromHost(r, [n]), ops.fromHost(g, [n]), ops.fromHost(u, [n]));
  assert.ok(fdCheck(g, data(dgate), loss) < TOL, 'dgate');
  assert.ok(fdCheck(u, data(dup), loss) < TOL, 'dup');
});

test('embedding backward scatters rows (repeated ids add up)', () => {
  const [V, C] = [6, 4];
  const ids = Int32Array.from([2, 5, 2, 0]);
  const table = rand(V * C, 17);
  const r = rand(ids.length * C, 18);
  const loss = () => dot(r, data(ops.embedding(ids, ops.fromHost(table, [V, C]))));
  const d = ops.embeddingBackward(ids, ops.fromHost(r, [ids.length, C]), V);
  assert.ok(fdCheck(table, data(d), loss) < TOL);
});

for (const kind of ['gravity', 'dot', 'gravity-pure'] as const) {
  for (const [Hq, Hkv] of [[4, 2], [3, 3]]) {
    test(`attention backward ${kind} ${Hq === Hkv ? 'MHA' : 'GQA'}: dq, dk, dv${kind !== 'dot' ? ', dmass_log' : ''} match finite differences`, () => {
      const [B, T, D] = [2, 7, 4];
      const q = rand(B * T * Hq * D, 20, 0.6);
      const k = rand(B * T * Hkv * D, 21, 0.6);
      const v = rand(B * T * Hkv * D, 22);
      const ml = rand(Hq, 23, 1.5);
      const r = rand(B * T * Hq * D, 24);
      const p = (): TrainAttentionParams => ({ kind, numHeads: Hq, numKVHeads: Hkv, headDim: D, massLog: kind !== 'dot' ? ml : null, eps: 0.1, scale: 1 / Math.sqrt(D) });
      const run = () => ops.attentionForwardTrain(ops.fromHost(q, [B * T, Hq * D]), ops.fromHost(k, [B * T, Hkv * D]), ops.fromHost(v, [B * T, Hkv * D]), B, T, p());
      const loss = () => dot(r, data(run().out));
      const { out, lse } = run();
      const Q = ops.fromHost(q, [B * T, Hq * D]);
      const Kt = ops.fromHost(k, [B * T, Hkv * D]);
      const Vt = ops.fromHost(v, [B * T, Hkv * D]);
      const g = ops.attentionBackward(ops.fromHost(r, [B * T, Hq * D]), Q, Kt, Vt, out, lse, B, T, p());
      assert.ok(fdCheck(q, data(g.dq), loss) < 1e-5, 'dq');
      assert.ok(fdCheck(k, data(g.dk), loss) < 1e-5, 'dk');
      assert.ok(fdCheck(v, data(g.dv), loss) < 1e-5, 'dv');
      if (kind === 'gravity') assert.ok(fdCheck(ml, data(g.dMassLog!), loss) < 1e-5, 'dmass_log');
      else if (kind === 'gravity-pure') {
        // M² cancels in s / Σ s: the loss does not depend on the mass, analytically or numerically
        for (const dm of data(g.dMassLog!)) assert.ok(Math.abs(dm) < 1e-12, `pure dmass_log ${dm}`);
        const l0 = loss();
        ml[0] += 0.7;
        assert.ok(Math.abs(loss() - l0) < 1e-12 * Math.max(1, Math.abs(l0)), 'pure output changed with the mass');
        ml[0] -= 0.7;
      } else assert.equal(g.dMassLog, null);
      // causal: the last key of each sequence only gets gradient from the last query
      const lse2 = data(lse);
      assert.ok(lse2.every(Number.isFinite));
    });
  }
}

test('attention forward is causal and per-sequence: changing a later token leaves earlier rows unchanged', () => {
  const [B, T, H, D] = [2, 5, 2, 4];
  const p: TrainAttentionParams = { kind: 'gravity', numHeads: H, numKVHeads: H, headDim: D, massLog: Float64Array.from([0.3, 1.2]), eps: 0.1, scale: 0.5 };
  const q = rand(B * T * H * D, 30);
  const k = rand(B * T * H * D, 31);
  const v = rand(B * T * H * D, 32);
  const o1 = data(ops.attentionForwardTrain(ops.fromHost(q, [B * T, H * D]), ops.fromHost(k, [B * T, H * D]), ops.fromHost(v, [B * T, H * D]), B, T, p).out).slice();
  const row = (0 * T + 3) * H * D; // sequence 0, token 3
  for (let i = 0; i < H * D; i++) {
    k[row + i] += 1;
    v[row + i] -= 1;
  }
  const o2 = data(ops.attentionForwardTrain(ops.fromHost(q, [B * T, H * D]), ops.fromHost(k, [B * T, H * D]), ops.fromHost(v, [B * T, H * D]), B, T, p).out);
  for (let i = 0; i < row; i++) assert.equal(o2[i], o1[i]);
  assert.notEqual(o2[row], o1[row]);
  for (let i = T * H * D; i < o1.length; i++) assert.equal(o2[i], o1[i]); // sequence 1 untouched
});

test('cross-entropy with ignored labels matches finite differences; ignored rows give 0', () => {
  const [N, V] = [5, 7];
  const logits = rand(N * V, 40, 3);
  const targets = Int32Array.from([3, -100, 0, 6, -100]);
  const scale = 1 / 3;
  const loss = () => data(ops.crossEntropy(ops.fromHost(logits, [N, V]), targets, scale).loss).reduce((a, b) => a + b, 0) * scale;
  const { loss: l, dlogits } = ops.crossEntropy(ops.fromHost(logits, [N, V]), targets, scale);
  assert.ok(fdCheck(logits, data(dlogits), loss) < TOL);
  assert.equal(data(l)[1], 0);
  assert.equal(data(l)[4], 0);
  for (let i = V; i < 2 * V; i++) assert.equal(data(dlogits)[i], 0);
  // the loss of one row is logsumexp - logit[target]
  let s = 0;
  for (let i = 0; i < V; i++) s += Math.exp(logits[i]);
  assert.ok(Math.abs(data(l)[0] - (Math.log(s) - logits[3])) < 1e-12);
});

test('gravity-pure forward: weights are s / Σ s over the causal keys (explicit reference)', () => {
  const [B, T, Hq, Hkv, D] = [2, 5, 4, 2, 3];
  const q = rand(B * T * Hq * D, 50);
  const k = rand(B * T * Hkv * D, 51);
  const v = rand(B * T * Hkv * D, 52);
  const ml = rand(Hq, 53);
  const eps = 0.05;
  const p: TrainAttentionParams = { kind: 'gravity-pure', numHeads: Hq, numKVHeads: Hkv, headDim: D, massLog: ml, eps, scale: 1 };
  const got = data(ops.attentionForwardTrain(ops.fromHost(q, [B * T, Hq * D]), ops.fromHost(k, [B * T, Hkv * D]), ops.fromHost(v, [B * T, Hkv * D]), B, T, p).out);
  let worst = 0;
  for (let b = 0; b < B; b++) for (let h = 0; h < Hq; h++) for (let i = 0; i < T; i++) {
    const kv = Math.floor(h / (Hq / Hkv));
    const m = Math.log1p(Math.exp(ml[h]));
    const s: number[] = [];
    for (let j = 0; j <= i; j++) {
      let d2 = 0;
      for (let d = 0; d < D; d++) d2 += (q[((b * T + i) * Hq + h) * D + d] - k[((b * T + j) * Hkv + kv) * D + d]) ** 2;
      s.push((m * m) / (d2 + eps));
    }
    const S = s.reduce((a, c) => a + c, 0);
    for (let d = 0; d < D; d++) {
      let o = 0;
      for (let j = 0; j <= i; j++) o += (s[j] / S) * v[((b * T + j) * Hkv + kv) * D + d];
      worst = Math.max(worst, Math.abs(o - got[((b * T + i) * Hq + h) * D + d]));
    }
  }
  assert.ok(worst < 1e-12, `max error ${worst}`);
});
