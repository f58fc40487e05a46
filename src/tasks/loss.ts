/**
 * Validation-loss glue for task data: one problem per row (no packing, so a loss can be attributed to a
 * category), ids and labels built by train/data.ts's tokenizeChat (labels = the id on assistant tokens, -100
 * elsewhere, aligned with ids as the trainer expects: it shifts), rows padded to the longest in the batch.
 * The trainer's evaluate(batches) -> {loss, tokens} does the forward passes; this file only batches and sums.
 */
import { fail } from '../errors.js';
import { IGNORE, tokenizeChat } from '../train/data.js';
import type { TextTokenizer } from '../tokenizer/tokenizer.js';
import type { EvalProblem } from './dataset.js';

/** Same shape as train/trainer.ts's Batch: ids and labels [B * T], row-major. */
export interface TaskBatch {
  ids: Int32Array;
  labels: Int32Array;
  B: number;
  T: number;
}

export interface BatchOptions {
  batchSize: number;
  /** padding id (labels -100 there) */
  padId: number;
  /** rows longer than this are an error (the model's context) */
  maxLen: number;
}

/** Rows of (ids, labels) for problems, in order. */
export function tokenizeProblems(problems: EvalProblem[], tok: TextTokenizer): { ids: number[]; labels: number[] }[] {
  return problems.map((p, i) => tokenizeChat(tok, p.messages, `problem ${i + 1}`));
}

export function toBatches(rows: { ids: number[]; labels: number[] }[], opts: BatchOptions): TaskBatch[] {
  if (!Number.isInteger(opts.batchSize) || opts.batchSize < 1) fail(`batch size must be a whole number >= 1, got ${opts.batchSize}`);
  const out: TaskBatch[] = [];
  for (let s = 0; s < rows.length; s += opts.batchSize) {
    const group = rows.slice(s, s + opts.batchSize);
    const T = Math.max(...group.map((r) => r.ids.length));
    if (T > opts.maxLen) fail(`problem ${s + group.findIndex((r) => r.ids.length === T) + 1} has ${T} tokens, more than the context ${opts.maxLen}`);
    const ids = new Int32Array(group.length * T).fill(opts.padId);
    const labels = new Int32Array(group.length * T).fill(IGNORE);
    group.forEach((r, b) => {
      ids.set(r.ids, b * T);
      labels.set(r.labels, b * T);
    });
    out.push({ ids, labels, B: group.length, T });
  }
  return out;
}

export interface LossReport {
  /** token-weighted mean cross-entropy over assistant tokens (nats) */
  loss: number;
  perplexity: number;
  tokens: number;
  perCategory: Record<string, { loss: number; perplexity: number; tokens: number }>;
}

/**
 * Validation loss of the problems overall and per category. `evaluateBatches` is the trainer's evaluate():
 * mean loss over the label tokens of the batches, and how many tokens that was.
 */
export function validationLoss(
  evaluateBatches: (batches: TaskBatch[]) => { loss: number; tokens: number },
  problems: EvalProblem[],
  tok: TextTokenizer,
  opts: BatchOptions,
): LossReport {
  const rows = tokenizeProblems(problems, tok);
  const byCat = new Map<string, { ids: number[]; labels: number[] }[]>();
  problems.forEach((p, i) => {
    const list = byCat.get(p.category) ?? [];
    list.push(rows[i]);
    byCat.set(p.category, list);
  });
  let sum = 0;
  let tokens = 0;
  const perCategory: LossReport['perCategory'] = {};
  for (const cat of [...byCat.keys()].sort()) {
    const r = evaluateBatches(toBatches(byCat.get(cat)!, opts));
    perCategory[cat] = { loss: r.loss, perplexity: Math.exp(r.loss), tokens: r.tokens };
    sum += r.loss * r.tokens;
    tokens += r.tokens;
  }
  const loss = tokens > 0 ? sum / tokens : NaN;
  return { loss, perplexity: Math.exp(loss), tokens, perCategory };
}
