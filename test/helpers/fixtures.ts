/** Shared helpers for tests that compare against the PyTorch fixtures in test/fixtures/. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { openSafetensors } from '../../src/io/safetensors.js';
import { toF32 } from '../../src/tensor/dtype.js';

export const FIXTURES = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'fixtures');
export const INFERENCE_FIXTURES = ['qwen2-gqa-f32', 'qwen2-mha-tied-bf16', 'llama-gqa-f16'];

export interface Expected {
  tensors: Map<string, { shape: number[]; data: Float64Array }>;
  meta: any;
}

export function loadExpected(name: string): Expected {
  const dir = path.join(FIXTURES, name);
  const f = openSafetensors(path.join(dir, 'expected.safetensors'));
  const tensors = new Map<string, { shape: number[]; data: Float64Array }>();
  for (const [k, info] of f.tensors) {
    const t = f.read(k);
    tensors.set(k, { shape: info.shape, data: t.dtype === 'F64' ? (t.data as Float64Array) : Float64Array.from(toF32(t)) });
  }
  f.close();
  return { tensors, meta: JSON.parse(fs.readFileSync(path.join(dir, 'expected.json'), 'utf8')) };
}

/** max |a - b| / max |b|: the relative error the issues' tolerances refer to. */
export function relErr(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) throw new Error(`length ${a.length} vs ${b.length}`);
  let num = 0;
  let den = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= num)) num = d; // NaN propagates as a failure
    den = Math.max(den, Math.abs(b[i]));
  }
  return num / den;
}

export function argmax(x: ArrayLike<number>, off = 0, n = x.length): number {
  let best = off;
  for (let i = off + 1; i < off + n; i++) if (x[i] > x[best]) best = i;
  return best - off;
}
