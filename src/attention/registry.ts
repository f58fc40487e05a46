/**
 * Attention score functions by name, like transformers' AttentionInterface: the model asks the registry for
 * the parameters of the kernel; the kernels themselves (cpu, webgpu) implement each kind.
 *   gravity: softmax_j( M_h² / (|q_i - k_j|² + ε) ),  M_h = softplus(mass_log[h]),  no 1/sqrt(d) scale
 *   dot:     softmax_j( q_i·k_j / sqrt(d) )
 *   gravity-pure: s_ij / Σ_j' s_ij' with s_ij = M_h² / (|q_i - k_j|² + ε)   (the issue's "pure gravity")
 *
 * Finding about gravity-pure: M_h² is one constant per head, so it cancels between numerator and denominator;
 * the output does not depend on the mass at all and the mass gradient is exactly 0. It is implemented as the
 * issue states anyway (masses are still read and saved) so that experiments can show it.
 */
import type { AttentionKind, AttentionParams } from '../backend/backend.js';
import { fail } from '../errors.js';
import type { ModelConfig } from '../model/config.js';
import { softplus } from '../backend/cpu/ops.js';

export const ATTENTION_KINDS: readonly AttentionKind[] = ['gravity', 'dot', 'gravity-pure'];

/** The kinds whose scores use the per-head masses. */
export function usesMasses(kind: AttentionKind): boolean {
  return kind === 'gravity' || kind === 'gravity-pure';
}

/** The card's softening length. */
export const DEFAULT_EPS = 0.1;

export function parseAttentionKind(s: string): AttentionKind {
  if ((ATTENTION_KINDS as readonly string[]).includes(s)) return s as AttentionKind;
  return fail(`unknown attention '${s}' (known: ${ATTENTION_KINDS.join(', ')})`);
}

/** M_h² per query head from the raw mass_log of one layer. */
export function massSquared(massLog: Float32Array): Float32Array {
  const out = new Float32Array(massLog.length);
  for (let h = 0; h < massLog.length; h++) {
    const m = softplus(massLog[h]);
    out[h] = m * m;
  }
  return out;
}

const massSqCache = new WeakMap<Float32Array, Float32Array>();

export function attentionParams(kind: AttentionKind, cfg: ModelConfig, massLog: Float32Array | undefined, eps: number): AttentionParams {
  let massSq: Float32Array | null = null;
  if (usesMasses(kind)) {
    if (!massLog) fail(`${kind} attention needs masses (gravity_mass_log) for every layer`);
    massSq = massSqCache.get(massLog) ?? null;
    if (!massSq) massSqCache.set(massLog, (massSq = massSquared(massLog)));
  }
  return { kind, numHeads: cfg.numHeads, numKVHeads: cfg.numKVHeads, headDim: cfg.headDim, massSq, eps, scale: 1 / Math.sqrt(cfg.headDim) };
}

/**
 * The card says masses are "initialised at 0.5" without saying of what. 'raw:X' sets the raw parameter
 * mass_log = X (so M = softplus(X); raw 0.5 gives M ≈ 0.974, what the reference patch does with init=0.5);
 * 'mass:X' sets M = X exactly (mass_log = log(exp(X) - 1)).
 */
export function parseMassInit(spec: string): number {
  const m = /^(raw|mass):([-+0-9.eE]+)$/.exec(spec.trim());
  if (!m) return fail(`--mass-init '${spec}': expected raw:<number> or mass:<number>, e.g. raw:0.5`);
  const v = Number(m[2]);
  if (!Number.isFinite(v)) return fail(`--mass-init '${spec}': not a number`);
  if (m[1] === 'raw') return v;
  if (v <= 0) return fail(`--mass-init '${spec}': a mass must be > 0`);
  return v > 20 ? v : Math.log(Math.expm1(v));
}
