/** The CPU engine against transformers + the card's gravity patch (float64 fixtures from reference/make_fixtures.py). */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as path from 'node:path';
import { loadModel } from '../src/model/load.js';
import { createCpuBackend } from '../src/backend/cpu/index.js';
import { FIXTURES, INFERENCE_FIXTURES, argmax, loadExpected, relErr } from './helpers/fixtures.js';

const be = createCpuBackend();

for (const name of INFERENCE_FIXTURES) {
  const exp = loadExpected(name);
  for (const attn of ['gravity', 'dot'] as const) {
    test(`${name} ${attn}: logits of a batch match PyTorch`, async () => {
      const m = await loadModel(path.join(FIXTURES, name), { attention: attn, backend: be });
      const ids: number[][] = exp.meta.input_ids;
      const maps: Float32Array[] = [];
      const logits = await m.forward(m.newSession(ids.length, ids[0].length), ids, { logits: 'all', attentionMaps: maps });
      const ref = exp.tensors.get(`${attn}.logits`)!;
      const e = relErr(logits, ref.data);
      assert.ok(e <= 1e-4, `logits rel err ${e.toExponential(2)}`);
      // layer 0 probabilities, as transformers returns them with output_attentions. 5e-4, not 1e-4: inside the
      // float64 reference, transformers still runs RMSNorm and the RoPE tables in float32, and gravity's
      // M²/(d²+ε) amplifies those 1e-7 errors in q and k by up to M²/ε² (an exact float64 JS forward differs
      // from the reference by 4e-5 on qwen2-mha-tied-bf16); the logits after it still match to 1e-4.
      const e0 = relErr(maps[0], exp.tensors.get(`${attn}.attn0`)!.data);
      assert.ok(e0 <= 5e-4, `attention map rel err ${e0.toExponential(2)}`);
    });

    test(`${name} ${attn}: left-padded batch equals PyTorch and the unpadded rows`, async () => {
      const m = await loadModel(path.join(FIXTURES, name), { attention: attn, backend: be });
      const ids: number[][] = exp.meta.padded_input_ids;
      const mask: number[][] = exp.meta.padded_attention_mask;
      const [B, T, V] = [ids.length, ids[0].length, m.config.vocabSize];
      const logits = await m.forward(m.newSession(B, T), ids, { logits: 'all', attentionMask: mask });
      const ref = exp.tensors.get(`${attn}.padded_logits`)!.data;
      for (let b = 0; b < B; b++) {
        const first = mask[b].indexOf(1);
        const ours = logits.subarray((b * T + first) * V, (b + 1) * T * V);
        const theirs = ref.subarray((b * T + first) * V, (b + 1) * T * V);
        const e = relErr(ours, theirs);
        assert.ok(e <= 1e-4, `row ${b}: padded logits rel err ${e.toExponential(2)}`);
        // the same sequence alone, unpadded
        const alone = await m.forward(m.newSession(1, T - first), [ids[b].slice(first)], { logits: 'all' });
        const e2 = relErr(ours, alone);
        assert.ok(e2 <= 1e-5, `row ${b}: padded vs unpadded rel err ${e2.toExponential(2)}`);
      }
    });

    test(`${name} ${attn}: a 96-token sequence (many keys per query) matches PyTorch`, async () => {
      const m = await loadModel(path.join(FIXTURES, name), { attention: attn, backend: be });
      const ids: number[][] = exp.meta.long_input_ids;
      const T = ids[0].length;
      const V = m.config.vocabSize;
      const logits = await m.forward(m.newSession(1, T), ids, { logits: 'all' });
      const e = relErr(logits.subarray((T - 16) * V), exp.tensors.get(`${attn}.long_logits`)!.data);
      // 5e-4: on qwen2-mha-tied-bf16 an exact float64 JS forward (independent of the engine) differs from the
      // reference by 3.5e-4 here, as much as our float32 engine does; the other fixtures stay under 1e-4.
      assert.ok(e <= (name === 'qwen2-mha-tied-bf16' && attn === 'gravity' ? 5e-4 : 1e-4), `long logits rel err ${e.toExponential(2)}`);
    });

    test(`${name} ${attn}: 16-token greedy continuation with the KV cache equals PyTorch`, async () => {
      const m = await loadModel(path.join(FIXTURES, name), { attention: attn, backend: be });
      const g = exp.meta[`${attn}_greedy`];
      const s = m.newSession(1, 64);
      let logits = await m.forward(s, [g.prompt]);
      const out: number[] = [];
      for (let i = 0; i < 16; i++) {
        const next = argmax(logits);
        out.push(next);
        logits = await m.forward(s, [[next]]);
      }
      assert.deepEqual(out, g.tokens);
    });
  }
}

test('gravity differs from dot on the same weights (the test can tell them apart)', async () => {
  const name = INFERENCE_FIXTURES[0];
  const exp = loadExpected(name);
  const m = await loadModel(path.join(FIXTURES, name), { attention: 'dot', backend: be });
  const ids: number[][] = exp.meta.input_ids;
  const logits = await m.forward(m.newSession(2, 12), ids, { logits: 'all' });
  assert.ok(relErr(logits, exp.tensors.get('gravity.logits')!.data) > 1e-2);
});
