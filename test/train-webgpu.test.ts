/**
 * WebGPU TrainOps: every method against the cpu TrainOps (f64 loops, the reference) on odd small shapes, then
 * the PyTorch + PEFT training fixtures on webgpu (loss, every LoRA / mass gradient, one SGD step). Runs on
 * whatever adapter Dawn finds (here: Mesa llvmpipe from scripts/install-vulkan.sh); no adapter = failure.
 */
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { createCpuBackend } from '../src/backend/cpu/index.js';
import { createWebGPUBackend, type WebGPUBackend } from '../src/backend/webgpu/index.js';
import type { AttentionKind, Tensor } from '../src/backend/backend.js';
import type { TrainAttentionParams, TrainOps } from '../src/backend/train-ops.js';
import { createCpuTrainOps } from '../src/train/cpu-train-ops.js';
import { createWebGPUTrainOps, type WebGPUTrainOps } from '../src/train/webgpu/ops.js';
import { Trainer, type Batch, type TrainerOptions } from '../src/train/trainer.js';
import { Rng } from '../src/generate/sampling.js';
import { fromF32, type DType } from '../src/tensor/dtype.js';
import { FIXTURES, loadExpected, relErr } from './helpers/fixtures.js';

const cbe = createCpuBackend({ threads: 1 });
const ref = createCpuTrainOps(cbe, 'f64');
let gbe: WebGPUBackend;
let gpu: WebGPUTrainOps;

before(async () => {
  gbe = await createWebGPUBackend();
  gpu = createWebGPUTrainOps(gbe);
});
after(() => {
  gpu?.destroy();
  gbe?.destroy();
});

function rand(n: number, seed: number, scale = 1): Float64Array {
  const r = new Rng(seed);
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) out[i] = Math.fround(scale * (2 * r.next() - 1));
  return out;
}

const TOL = 1e-4;
const verbose = !!process.env.WEBGPU_TEST_VERBOSE;

/** reads a webgpu result and the cpu one and compares them */
async function same(what: string, g: Tensor, c: Tensor, tol = TOL): Promise<void> {
  const a = await gpu.read(g);
  const b = await ref.read(c);
  assert.deepEqual([...g.shape], [...c.shape], `${what}: shape`);
  const e = relErr(a, b);
  if (verbose) console.log(`${what}: ${e.toExponential(2)}`);
  assert.ok(e <= tol, `${what}: rel err ${e.toExponential(2)} > ${tol}`);
  gpu.dispose(g);
}

/** the same host values as a tensor of each TrainOps */
function both(v: Float64Array, shape: number[]): [Tensor, Tensor] {
  return [gpu.fromHost(v, shape), ref.fromHost(v, shape)];
}

/** a frozen weight in a stored width, uploaded to both backends (cpu keeps the host copy for its f64 loops) */
function frozen(v: Float64Array, shape: number[], dt: DType): [Tensor, Tensor] {
  const h = fromF32(Float32Array.from(v), shape, dt);
  return [gbe.upload(h), cbe.upload(h, 'other')];
}

describe('webgpu TrainOps against the cpu TrainOps', () => {
  test('embedding forward (bf16 table) and backward (repeated ids)', async () => {
    const [V, C] = [11, 7];
    const ids = Int32Array.from([3, 0, 10, 3, 5]);
    const [tg, tc] = frozen(rand(V * C, 1), [V, C], 'BF16');
    await same('embedding', gpu.embedding(ids, tg), ref.embedding(ids, tc));
    const [dg, dc] = both(rand(ids.length * C, 2), [ids.length, C]);
    await same('embeddingBackward', gpu.embeddingBackward(ids, dg, V), ref.embeddingBackward(ids, dc, V));
  });

  test('rmsnorm forward (rstd) and backward (dx, dw) over 300 rows', async () => {
    const [N, C] = [300, 37];
    const [xg, xc] = both(rand(N * C, 3), [N, C]);
    for (const dt of ['F32', 'BF16'] as DType[]) {
      const [wg, wc] = dt === 'F32' ? both(rand(C, 4), [C]) : frozen(rand(C, 4), [C], dt);
      const fg = gpu.rmsnorm(xg, wg, 1e-6);
      const fc = ref.rmsnorm(xc, wc, 1e-6);
      const [dg, dc] = both(rand(N * C, 5), [N, C]);
      const bg = gpu.rmsnormBackward(dg, xg, wg, fg.rstd);
      const bc = ref.rmsnormBackward(dc, xc, wc, fc.rstd);
      await same(`rmsnorm y ${dt}`, fg.y, fc.y);
      await same(`rmsnorm rstd ${dt}`, fg.rstd, fc.rstd);
      await same(`rmsnorm dx ${dt}`, bg.dx, bc.dx);
      await same(`rmsnorm dw ${dt}`, bg.dw, bc.dw);
    }
  });

  test('linear forward / dx through frozen f32, f16, bf16 weights; dW = dyᵀx (split over k)', async () => {
    for (const [N, IN, OUT] of [[5, 13, 9], [70, 33, 67], [600, 20, 3]]) {
      const [xg, xc] = both(rand(N * IN, 6), [N, IN]);
      const [dyg, dyc] = both(rand(N * OUT, 7), [N, OUT]);
      // the forward is the inference kernel (test/webgpu.test.ts covers its widths): bf16 + bias here; every
      // width for dx (few variants: each shader compile costs seconds on llvmpipe)
      for (const dt of ['F32', 'F16', 'BF16'] as DType[]) {
        const [wg, wc] = frozen(rand(OUT * IN, 8), [OUT, IN], dt);
        if (dt === 'BF16') {
          const [bg, bc] = both(rand(OUT, 9), [OUT]);
          await same(`linear ${N}x${IN}x${OUT} ${dt}`, gpu.linear(xg, wg, bg), ref.linear(xc, wc, bc));
        }
        await same(`dx ${N}x${IN}x${OUT} ${dt}`, gpu.linearBackwardInput(dyg, wg), ref.linearBackwardInput(dyc, wc));
      }
      await same(`dW ${N}x${IN}x${OUT}`, gpu.linearBackwardWeight(dyg, xg), ref.linearBackwardWeight(dyc, xc));
      // a trainable (f32, fromHost) weight in the forward, as LoRA factors are
      const [ag, ac] = both(rand(OUT * IN, 10), [OUT, IN]);
      await same(`linear trainable ${N}x${IN}x${OUT}`, gpu.linear(xg, ag, null), ref.linear(xc, ac, null));
    }
  });

  test('slice, concat, addScaled, mul, dropout mask (same mask as cpu)', async () => {
    const [N, C] = [9, 5];
    const [xg, xc] = both(rand(N * C, 11), [N, C]);
    const [yg, yc] = both(rand(N * C, 12), [N, C]);
    await same('sliceRows', gpu.sliceRows(xg, 2, 5), ref.sliceRows(xc, 2, 5));
    await same('concatRows', gpu.concatRows([gpu.sliceRows(xg, 0, 4), yg]), ref.concatRows([ref.sliceRows(xc, 0, 4), yc]));
    await same('addScaled', gpu.addScaled(xg, yg, -0.7), ref.addScaled(xc, yc, -0.7));
    await same('mul', gpu.mul(xg, yg), ref.mul(xc, yc));
    await same('dropoutMask', gpu.dropoutMask([N, C], 0.3, 42), ref.dropoutMask([N, C], 0.3, 42), 1e-7);
  });

  test('rope forward / backward and swiglu forward / backward', async () => {
    const [N, H, D] = [7, 3, 10];
    const pos = Int32Array.from([0, 1, 2, 3, 900, 5, 6]);
    const [xg, xc] = both(rand(N * H * D, 13), [N, H * D]);
    await same('rope', gpu.rope(xg, pos, H, D, 10000), ref.rope(xc, pos, H, D, 10000));
    await same('ropeBackward', gpu.ropeBackward(xg, pos, H, D, 10000), ref.ropeBackward(xc, pos, H, D, 10000));
    const n = 1001;
    const [gg, gc] = both(rand(n, 14, 6), [n]);
    const [ug, uc] = both(rand(n, 15), [n]);
    const [dg, dc] = both(rand(n, 16), [n]);
    await same('swiglu', gpu.swiglu(gg, ug), ref.swiglu(gc, uc));
    const bg = gpu.swigluBackward(dg, gg, ug);
    const bc = ref.swigluBackward(dc, gc, uc);
    await same('swiglu dgate', bg.dgate, bc.dgate);
    await same('swiglu dup', bg.dup, bc.dup);
  });

  test('cross-entropy: per-row loss and dlogits, ignored rows', async () => {
    const [N, V] = [6, 301];
    const targets = Int32Array.from([5, -100, 0, 300, 17, -100]);
    const [lg, lc] = both(rand(N * V, 17, 8), [N, V]);
    const g = gpu.crossEntropy(lg, targets, 0.25);
    const c = ref.crossEntropy(lc, targets, 0.25);
    await same('ce loss', g.loss, c.loss, 1e-6);
    await same('ce dlogits', g.dlogits, c.dlogits);
  });

  for (const kind of ['gravity', 'dot', 'gravity-pure'] as AttentionKind[]) {
    test(`attention ${kind}: forward (out, lse) and fused backward (dq, dk, dv, dmass), GQA, 2 sequences of 77`, async () => {
      const [B, T, Hq, Hkv, D] = [2, 77, 6, 2, 8];
      const p: TrainAttentionParams = {
        kind, numHeads: Hq, numKVHeads: Hkv, headDim: D, eps: 0.1, scale: 1 / Math.sqrt(D),
        massLog: kind === 'dot' ? null : Float64Array.from({ length: Hq }, (_, h) => -0.4 + 0.3 * h),
      };
      const N = B * T;
      const [qg, qc] = both(rand(N * Hq * D, 18, 0.5), [N, Hq * D]);
      const [kg, kc] = both(rand(N * Hkv * D, 19, 0.5), [N, Hkv * D]);
      const [vg, vc] = both(rand(N * Hkv * D, 20), [N, Hkv * D]);
      const fg = gpu.attentionForwardTrain(qg, kg, vg, B, T, p);
      const fc = ref.attentionForwardTrain(qc, kc, vc, B, T, p);
      const [dg, dc] = both(rand(N * Hq * D, 21), [N, Hq * D]);
      const bg = gpu.attentionBackward(dg, qg, kg, vg, fg.out, fg.lse, B, T, p);
      const bc = ref.attentionBackward(dc, qc, kc, vc, fc.out, fc.lse, B, T, p);
      await same(`${kind} out`, fg.out, fc.out);
      await same(`${kind} lse`, fg.lse, fc.lse);
      await same(`${kind} dq`, bg.dq, bc.dq);
      await same(`${kind} dk`, bg.dk, bc.dk);
      await same(`${kind} dv`, bg.dv, bc.dv);
      if (kind === 'dot') assert.equal(bg.dMassLog, null);
      else if (kind === 'gravity-pure') assert.ok((await gpu.read(bg.dMassLog!)).every((x) => x === 0));
      else await same(`${kind} dmass`, bg.dMassLog!, bc.dMassLog!);
    });
  }
});

const TRAIN_FIXTURES = ['train-qwen2-qkvo', 'train-llama-all'];

function batchOf(meta: { input_ids: number[][]; labels: number[][] }): Batch {
  return { ids: Int32Array.from(meta.input_ids.flat()), labels: Int32Array.from(meta.labels.flat()), B: meta.input_ids.length, T: meta.input_ids[0].length };
}

async function trainer(name: string, o: Partial<TrainerOptions>, ops: TrainOps): Promise<Trainer> {
  const dir = path.join(FIXTURES, name);
  return Trainer.create(dir, { initAdapter: path.join(dir, 'adapter'), trainMasses: true, maxGradNorm: 0, warmupSteps: 0, weightDecay: 0, ...o }, { ops });
}

describe('webgpu training against PyTorch + PEFT', () => {
  for (const name of TRAIN_FIXTURES) {
    const exp = loadExpected(name);
    const batch = batchOf(exp.meta);
    const grads = [...exp.tensors].filter(([k]) => k.startsWith('grad.'));

    test(`${name}: loss, every LoRA / mass gradient, one SGD step`, async () => {
      const lr = 0.05;
      const tr = await trainer(name, { optimizer: 'sgd', lr, totalSteps: 1 }, gpu);
      const before = new Map(tr.params.map((p) => [p.name, Float64Array.from(p.data)]));
      const r = await tr.trainStep([batch]);
      const eLoss = Math.abs(r.loss - exp.meta.loss) / Math.abs(exp.meta.loss);
      if (verbose) console.log(`${name} loss rel err ${eLoss.toExponential(2)}`);
      assert.ok(eLoss <= 1e-6, `loss ${r.loss} vs ${exp.meta.loss}: rel err ${eLoss.toExponential(2)}`);
      assert.deepEqual(tr.params.map((p) => `grad.${p.name}`).sort(), grads.map(([k]) => k).sort());
      let worst = 0;
      for (const [k, g] of grads) {
        const n = k.slice(5);
        const e = relErr(tr.grad(n), g.data);
        worst = Math.max(worst, e);
        assert.ok(e <= 1e-3, `${k}: rel err ${e.toExponential(2)}`);
        const p = tr.params.find((q) => q.name === n)!;
        const delta = p.data.map((v, i) => v - before.get(n)![i]);
        const es = relErr(delta, g.data.map((v) => -lr * v));
        assert.ok(es <= 1e-3, `${n}: step rel err ${es.toExponential(2)}`);
      }
      if (verbose) console.log(`${name} worst grad rel err ${worst.toExponential(2)}`);
    });
  }
});

test('Trainer.create with device webgpu trains on its own WebGPU device (what `gravity train --device webgpu` uses)', async () => {
  const name = 'train-llama-all';
  const exp = loadExpected(name);
  const dir = path.join(FIXTURES, name);
  const tr = await Trainer.create(dir, { initAdapter: path.join(dir, 'adapter'), trainMasses: true, optimizer: 'sgd', lr: 0, maxGradNorm: 0 }, { device: 'webgpu' });
  try {
    assert.equal(tr.ops.backend.name, 'webgpu');
    const r = await tr.trainStep([batchOf(exp.meta)]);
    assert.ok(Math.abs(r.loss - exp.meta.loss) <= 1e-6 * Math.abs(exp.meta.loss), `loss ${r.loss} vs ${exp.meta.loss}`);
  } finally {
    (tr.ops.backend as WebGPUBackend).destroy();
  }
  await assert.rejects(Trainer.create(dir, { precision: 'f64' }, { device: 'webgpu' }), /webgpu trains in f32/);
});

test('full training (--full) on webgpu: loss and every weight / bias / norm / embedding / mass gradient match the cpu trainer', async () => {
  const cbeT = createCpuBackend({ threads: 1 });
  for (const name of TRAIN_FIXTURES) {
    const exp = loadExpected(name);
    const dir = path.join(FIXTURES, name);
    const o: Partial<TrainerOptions> = { full: true, optimizer: 'sgd', lr: 0, maxGradNorm: 0, trainMasses: true };
    const c = await Trainer.create(dir, o, { backend: cbeT });
    const g = await Trainer.create(dir, o, { ops: gpu });
    const rc = await c.trainStep([batchOf(exp.meta)]);
    const rg = await g.trainStep([batchOf(exp.meta)]);
    const eLoss = Math.abs(rg.loss - rc.loss) / Math.abs(rc.loss);
    assert.ok(eLoss <= 1e-6, `${name}: loss ${rg.loss} vs ${rc.loss}`);
    assert.ok(c.params.some((p) => p.name === 'model.embed_tokens.weight'));
    for (const p of c.params) {
      const e = relErr(g.grad(p.name), p.grad);
      assert.ok(e <= 1e-4, `${name} ${p.name}: rel err ${e.toExponential(2)}`);
    }
  }
});

test('attention gravity with the Qwen2.5-0.5B grouping (14 / 2 heads; head dim 32: 64 costs a minute of llvmpipe compiling), 150 tokens', async () => {
  const [B, T, Hq, Hkv, D] = [1, 150, 14, 2, 32];
  const p: TrainAttentionParams = {
    kind: 'gravity', numHeads: Hq, numKVHeads: Hkv, headDim: D, eps: 0.1, scale: 1 / Math.sqrt(D),
    massLog: Float64Array.from({ length: Hq }, (_, h) => -0.5 + 0.18 * h),
  };
  const N = B * T;
  const [qg, qc] = both(rand(N * Hq * D, 31, 0.2), [N, Hq * D]);
  const [kg, kc] = both(rand(N * Hkv * D, 32, 0.2), [N, Hkv * D]);
  const [vg, vc] = both(rand(N * Hkv * D, 33), [N, Hkv * D]);
  const fg = gpu.attentionForwardTrain(qg, kg, vg, B, T, p);
  const fc = ref.attentionForwardTrain(qc, kc, vc, B, T, p);
  const [dg, dc] = both(rand(N * Hq * D, 34), [N, Hq * D]);
  const bg = gpu.attentionBackward(dg, qg, kg, vg, fg.out, fg.lse, B, T, p);
  const bc = ref.attentionBackward(dc, qc, kc, vc, fc.out, fc.lse, B, T, p);
  await same('qwen-shape out', fg.out, fc.out);
  await same('qwen-shape lse', fg.lse, fc.lse);
  await same('qwen-shape dq', bg.dq, bc.dq);
  await same('qwen-shape dk', bg.dk, bc.dk);
  await same('qwen-shape dv', bg.dv, bc.dv);
  await same('qwen-shape dmass', bg.dMassLog!, bc.dMassLog!);
});
