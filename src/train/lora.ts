/**
 * LoRA parameters per target module, PEFT's layout and math: A [r, in], B [out, r],
 * y = W x + b + scaling · B A dropout(x), scaling = alpha / r (alpha / sqrt(r) with rslora).
 * Fresh adapters start like PEFT: A ~ kaiming_uniform(a = sqrt(5)) = U(−1/sqrt(in), 1/sqrt(in)), B = 0
 * (so the model starts exactly at the base); the random stream is ours (seeded), not torch's.
 */
import { fail } from '../errors.js';
import { Rng } from '../generate/sampling.js';
import type { ModelConfig } from '../model/config.js';

export const LORA_TARGETS = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj'] as const;
export type LoraTarget = (typeof LORA_TARGETS)[number];

export function parseTargets(list: readonly string[]): LoraTarget[] {
  const out: LoraTarget[] = [];
  for (const raw of list) {
    const t = raw.trim();
    if (t === 'all') return [...LORA_TARGETS];
    if (!(LORA_TARGETS as readonly string[]).includes(t)) fail(`LoRA target '${t}' is not one of ${LORA_TARGETS.join(', ')} (or 'all')`);
    if (!out.includes(t as LoraTarget)) out.push(t as LoraTarget);
  }
  if (out.length === 0) fail('LoRA needs at least one target module (q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj)');
  return out;
}

/** Hugging Face module path, e.g. model.layers.3.self_attn.q_proj */
export function modulePath(layer: number, target: LoraTarget): string {
  const group = target === 'gate_proj' || target === 'up_proj' || target === 'down_proj' ? 'mlp' : 'self_attn';
  return `model.layers.${layer}.${group}.${target}`;
}

/** [out, in] of a target's base weight */
export function moduleDims(cfg: ModelConfig, target: LoraTarget): [number, number] {
  const C = cfg.hiddenSize;
  const q = cfg.numHeads * cfg.headDim;
  const kv = cfg.numKVHeads * cfg.headDim;
  const I = cfg.intermediateSize;
  switch (target) {
    case 'q_proj': return [q, C];
    case 'k_proj':
    case 'v_proj': return [kv, C];
    case 'o_proj': return [C, q];
    case 'gate_proj':
    case 'up_proj': return [I, C];
    case 'down_proj': return [C, I];
  }
}

export interface LoraModule {
  layer: number;
  target: LoraTarget;
  /** module path, e.g. model.layers.0.self_attn.q_proj */
  path: string;
  r: number;
  inF: number;
  outF: number;
  scaling: number;
  A: Float64Array; // [r, in]
  B: Float64Array; // [out, r]
  /** dtype the factors were read in (saved back in it), F32 for fresh adapters */
  dtype: 'F32' | 'F16' | 'BF16' | 'F64';
}

export function loraScaling(alpha: number, r: number, rslora = false): number {
  return rslora ? alpha / Math.sqrt(r) : alpha / r;
}

/** Fresh modules for every layer x target, in layer-major order. */
export function initLora(cfg: ModelConfig, targets: readonly LoraTarget[], r: number, alpha: number, seed: number): LoraModule[] {
  if (!Number.isInteger(r) || r < 1) fail(`LoRA rank must be a positive integer, got ${r}`);
  if (!(alpha > 0)) fail(`LoRA alpha must be > 0, got ${alpha}`);
  const rng = new Rng(seed);
  const out: LoraModule[] = [];
  for (let l = 0; l < cfg.numLayers; l++) {
    for (const t of LORA_TARGETS) {
      if (!targets.includes(t)) continue;
      const [o, i] = moduleDims(cfg, t);
      const bound = 1 / Math.sqrt(i);
      const A = new Float64Array(r * i);
      for (let k = 0; k < A.length; k++) A[k] = Math.fround((2 * rng.next() - 1) * bound);
      out.push({ layer: l, target: t, path: modulePath(l, t), r, inF: i, outF: o, scaling: loraScaling(alpha, r), A, B: new Float64Array(o * r), dtype: 'F32' });
    }
  }
  return out;
}
