/**
 * Train / validation / test sets of arithmetic problems that never overlap, and their JSONL form.
 *
 * Which split a problem belongs to is a pure function of its mathematical key (hash bucket out of 100: 0..9 test,
 * 10..19 validation, the rest train), independent of the seed and of the requested sizes. So no question can be
 * in two splits of one run, and the test set of any run is disjoint from the training set of any other run made
 * with this code. Within a split, problems are deduplicated by the canonical question string (lower case,
 * single spaces): paraphrases of one key may repeat in train, exact repeats never.
 */
import { readFileSync } from 'node:fs';
import { fail } from '../errors.js';
import type { ChatMessage } from '../tokenizer/tokenizer.js';
import { ArithmeticGenerator, CATEGORIES, toMessages, type Category, type GenOptions, type Problem } from './arithmetic.js';

export type SplitName = 'train' | 'val' | 'test';
export const SPLITS: readonly SplitName[] = ['train', 'val', 'test'];
const TEST_BUCKETS = 10;
const VAL_BUCKETS = 10;
/** changing the salt reshuffles every split: bump only with the task version */
const SALT = 'gravity-arith-v1:';

/** FNV-1a over UTF-16 units with a murmur3 finaliser (FNV's low bits alone are weak for bucketing). */
export function hash32(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  h ^= h >>> 16;
  h = Math.imul(h, 0x85ebca6b);
  h ^= h >>> 13;
  h = Math.imul(h, 0xc2b2ae35);
  h ^= h >>> 16;
  return h >>> 0;
}

export function splitOf(key: string): SplitName {
  const bucket = hash32(SALT + key) % 100;
  return bucket < TEST_BUCKETS ? 'test' : bucket < TEST_BUCKETS + VAL_BUCKETS ? 'val' : 'train';
}

export function canonicalQuestion(q: string): string {
  return q.trim().toLowerCase().replace(/\s+/g, ' ');
}

export type SplitCounts = Record<SplitName, number>;
export type Splits = Record<SplitName, Problem[]>;

/**
 * Draws problems from one seeded stream and files each under its key's split until every split has its count.
 * Fails when the problem space (small `digits`) cannot fill a split within a generous number of draws.
 */
export function makeSplits(counts: SplitCounts, seed: number, opts: GenOptions = {}): Splits {
  for (const s of SPLITS) {
    if (!Number.isInteger(counts[s]) || counts[s] < 0) fail(`--${s} must be a whole number >= 0, got ${counts[s]}`);
  }
  const out: Splits = { train: [], val: [], test: [] };
  const seen = new Set<string>();
  const gen = new ArithmeticGenerator(seed, opts);
  const want = counts.train + counts.val + counts.test;
  // the smallest split gets 10% of draws; 40x its share covers it with a wide margin unless the space runs dry
  const maxDraws = 40 * Math.max(counts.train / 0.8, counts.val / 0.1, counts.test / 0.1) + 10_000;
  let have = 0;
  for (let draws = 0; have < want; draws++) {
    if (draws >= maxDraws) {
      const got = SPLITS.map((s) => `${s} ${out[s].length}/${counts[s]}`).join(', ');
      fail(`only found ${got} distinct problems after ${draws} draws: the problem space is too small for these counts; raise --digits or lower the counts`);
    }
    const p = gen.next();
    const split = splitOf(p.key);
    if (out[split].length >= counts[split]) continue;
    const cq = canonicalQuestion(p.question);
    if (seen.has(cq)) continue;
    seen.add(cq);
    out[split].push(p);
    have++;
  }
  return out;
}

/** One JSONL line: the chat record the trainer reads plus the fields the evaluator needs. */
export function toRecord(p: Problem): string {
  return JSON.stringify({ messages: toMessages(p), answer: p.answer, category: p.category, key: p.key });
}

/** What the evaluator needs of a problem. */
export interface EvalProblem {
  /** the conversation; a trailing assistant turn (the reference solution) is dropped for prompting */
  messages: ChatMessage[];
  answer: string;
  category: string;
}

/** Reads a task JSONL file (records from `gravity task make`, or any {"messages", "answer"} lines). */
export function readProblems(file: string, limit = Infinity): EvalProblem[] {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (e) {
    fail(`${file}: cannot read (${(e as Error).message})`);
  }
  const out: EvalProblem[] = [];
  const lines = text.split('\n');
  for (let i = 0; i < lines.length && out.length < limit; i++) {
    const line = lines[i].trim();
    if (line === '') continue;
    const where = `${file}:${i + 1}`;
    let o: Record<string, unknown>;
    try {
      o = JSON.parse(line);
    } catch (e) {
      fail(`${where}: not valid JSON (${(e as Error).message.split('\n')[0]})`);
    }
    if (!o || typeof o !== 'object' || Array.isArray(o)) fail(`${where}: expected a JSON object`);
    const msgs = o.messages;
    if (!Array.isArray(msgs) || msgs.length === 0 || !msgs.every((m) => m && typeof m.role === 'string' && typeof m.content === 'string')) {
      fail(`${where}: "messages" must be a non-empty array of {"role", "content"} strings`);
    }
    const answer = typeof o.answer === 'number' ? String(o.answer) : o.answer;
    if (typeof answer !== 'string' || !/^-?\d+$/.test(answer.trim())) fail(`${where}: "answer" must be an integer (string or number)`);
    const category = typeof o.category === 'string' ? o.category : 'all';
    out.push({ messages: msgs as ChatMessage[], answer: answer.trim(), category });
  }
  if (out.length === 0) fail(`${file}: no problems`);
  return out;
}

export function isCategory(s: string): s is Category {
  return (CATEGORIES as readonly string[]).includes(s);
}
