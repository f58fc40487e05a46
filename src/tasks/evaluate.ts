/**
 * Task accuracy: greedy generation on each problem's prompt (the conversation up to its first assistant turn,
 * rendered with the chat template plus the generation prompt), then exact match of the final `Answer: <n>`.
 * An output without an `Answer:` line is wrong (counted separately as `missing`).
 */
import { generate } from '../generate/generate.js';
import type { CausalLM } from '../model/types.js';
import type { TextTokenizer } from '../tokenizer/tokenizer.js';
import { fail } from '../errors.js';
import type { EvalProblem } from './dataset.js';

export interface EvalOptions {
  /** most generated tokens per problem (default 192: longer than any digits<=4 solution) */
  maxTokens?: number;
  /** keep every output in the report (default false) */
  keepOutputs?: boolean;
  onProgress?: (done: number, total: number) => void;
}

export interface Tally {
  total: number;
  correct: number;
  accuracy: number;
}

export interface EvalOutput {
  category: string;
  expected: string;
  got: string | null;
  correct: boolean;
  text: string;
}

export interface EvalReport extends Tally {
  /** outputs with no parsable `Answer:` line */
  missing: number;
  perCategory: Record<string, Tally>;
  /** mean generated tokens per problem */
  meanTokens: number;
  outputs?: EvalOutput[];
}

/** Canonical integer string: no leading zeros, no "-0", no plus sign. */
export function canonicalInt(s: string): string {
  const m = /^([+-]?)0*(\d+)$/.exec(s.trim());
  if (!m) return s.trim();
  const digits = m[2];
  return m[1] === '-' && digits !== '0' ? `-${digits}` : digits;
}

/** The last `Answer: <integer>` in the text (canonical form), or null. */
export function parseAnswer(text: string): string | null {
  let last: string | null = null;
  for (const m of text.matchAll(/Answer:[ \t]*([+-]?\d+)/g)) last = m[1];
  return last === null ? null : canonicalInt(last);
}

/** The conversation up to (not including) the first assistant turn. */
export function promptMessages(p: EvalProblem): EvalProblem['messages'] {
  const i = p.messages.findIndex((m) => m.role === 'assistant');
  const msgs = i < 0 ? p.messages : p.messages.slice(0, i);
  if (msgs.length === 0) fail('a problem starts with an assistant turn: nothing to prompt with');
  return msgs;
}

function tally(correct: number, total: number): Tally {
  return { total, correct, accuracy: total > 0 ? correct / total : 0 };
}

export async function evaluate(model: CausalLM, tokenizer: TextTokenizer, problems: EvalProblem[], opts: EvalOptions = {}): Promise<EvalReport> {
  const maxTokens = opts.maxTokens ?? 192;
  // stop at the end of the assistant turn as well as at the model's own eos ids
  const eos = new Set((model as { eosTokenIds?: readonly number[] }).eosTokenIds ?? model.config.eosTokenIds);
  const turnEnd = tokenizer.eosToken !== null ? tokenizer.tokenToId(tokenizer.eosToken) : undefined;
  if (turnEnd !== undefined && turnEnd < model.config.vocabSize) eos.add(turnEnd);
  const perCat = new Map<string, { correct: number; total: number }>();
  const outputs: EvalOutput[] = [];
  let correct = 0;
  let missing = 0;
  let tokens = 0;
  for (let i = 0; i < problems.length; i++) {
    const p = problems[i];
    const prompt = tokenizer.applyChatTemplate(promptMessages(p), { addGenerationPrompt: true });
    const ids = tokenizer.encode(prompt, { addSpecialTokens: false });
    const res = await generate(model, ids, { temperature: 0, maxTokens, tokenizer, eosTokenIds: [...eos] });
    tokens += res.outputIds.length;
    const text = res.text ?? '';
    const got = parseAnswer(text);
    const expected = canonicalInt(p.answer);
    const ok = got !== null && got === expected;
    if (got === null) missing++;
    if (ok) correct++;
    const c = perCat.get(p.category) ?? { correct: 0, total: 0 };
    c.total++;
    if (ok) c.correct++;
    perCat.set(p.category, c);
    if (opts.keepOutputs) outputs.push({ category: p.category, expected, got, correct: ok, text });
    opts.onProgress?.(i + 1, problems.length);
  }
  const perCategory: Record<string, Tally> = {};
  for (const k of [...perCat.keys()].sort()) perCategory[k] = tally(perCat.get(k)!.correct, perCat.get(k)!.total);
  const report: EvalReport = {
    ...tally(correct, problems.length),
    missing,
    perCategory,
    meanTokens: problems.length > 0 ? tokens / problems.length : 0,
  };
  if (opts.keepOutputs) report.outputs = outputs;
  return report;
}
