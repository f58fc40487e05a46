/**
 * Cross-entropy bookkeeping on the host, Hugging Face semantics: labels are unshifted, logits[t] predicts
 * labels[t + 1], -100 is ignored, and the loss is the mean over all predicted tokens of everything that is
 * accumulated into one optimizer step (not a mean of per-batch means).
 */
import { fail } from '../errors.js';
import { IGNORE_INDEX } from './ops-backward.js';

export interface Batch {
  ids: Int32Array; // [B*T]
  labels: Int32Array; // [B*T], -100 ignored, unshifted (HF semantics)
  B: number;
  T: number;
}

/** targets[b*T + t] = labels[b*T + t + 1]; the last position of each sequence predicts nothing. */
export function shiftTargets(b: Batch): Int32Array {
  const out = new Int32Array(b.B * b.T).fill(IGNORE_INDEX);
  for (let s = 0; s < b.B; s++) for (let t = 0; t + 1 < b.T; t++) out[s * b.T + t] = b.labels[s * b.T + t + 1];
  return out;
}

export function countTargets(targets: Int32Array): number {
  let n = 0;
  for (const t of targets) if (t !== IGNORE_INDEX) n++;
  return n;
}

/** Errors name the batch, sequence and position of the first bad entry. */
export function checkBatch(b: Batch, vocab: number, what = 'batch'): void {
  if (!Number.isInteger(b.B) || !Number.isInteger(b.T) || b.B < 1 || b.T < 1) fail(`${what}: B and T must be positive integers, got B=${b.B} T=${b.T}`);
  if (b.ids.length !== b.B * b.T) fail(`${what}: ids has ${b.ids.length} entries, expected B*T = ${b.B * b.T}`);
  if (b.labels.length !== b.B * b.T) fail(`${what}: labels has ${b.labels.length} entries, expected B*T = ${b.B * b.T}`);
  for (let i = 0; i < b.ids.length; i++) {
    const id = b.ids[i];
    if (id < 0 || id >= vocab) fail(`${what}: token id ${id} (sequence ${Math.floor(i / b.T)}, position ${i % b.T}) is outside the vocabulary (${vocab})`);
    const l = b.labels[i];
    if (l !== IGNORE_INDEX && (l < 0 || l >= vocab)) fail(`${what}: label ${l} (sequence ${Math.floor(i / b.T)}, position ${i % b.T}) is neither -100 nor a token id < ${vocab}`);
  }
}
