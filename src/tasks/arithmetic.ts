/**
 * Seeded generator of arithmetic problems with worked solutions, as chat messages: the user asks, the assistant
 * answers `<think>\n<steps>\n</think>\nAnswer: <n>`. Categories: add, sub, mul, cmp (which is larger/smaller),
 * word (one-step word problems) and chain (two operations). `digits` is the difficulty knob: every operand draws
 * its digit count uniformly from 1..digits (the multiplier of a product from 1..ceil(digits/2), chain operands
 * from 1..max(1, digits-1) so that the worked answer stays short).
 *
 * Every problem has a `key`: its mathematics without the wording (`add:37,48`; operands sorted where the
 * operation commutes). Splits partition by a hash of the key (see dataset.ts), so a paraphrase, a word-problem
 * version or a swapped-operand version of a test question can never sit in the training set.
 */
import { Rng } from '../generate/sampling.js';
import type { ChatMessage } from '../tokenizer/tokenizer.js';
import { addSteps, compareDec, mulSteps, subSteps } from './digits.js';
import { fail } from '../errors.js';

export const CATEGORIES = ['add', 'sub', 'mul', 'cmp', 'word', 'chain'] as const;
export type Category = (typeof CATEGORIES)[number];

export interface Problem {
  category: Category;
  /** the mathematics without wording; equal keys = same problem for splitting */
  key: string;
  question: string;
  /** the assistant turn: reasoning then `Answer: <n>` */
  solution: string;
  /** the final answer as a canonical integer string */
  answer: string;
}

export interface GenOptions {
  /** most digits per operand (default 3) */
  digits?: number;
  /** category weights (default DEFAULT_WEIGHTS); missing or 0 = never */
  weights?: Partial<Record<Category, number>>;
}

export const DEFAULT_WEIGHTS: Record<Category, number> = { add: 0.25, sub: 0.2, mul: 0.2, cmp: 0.1, word: 0.15, chain: 0.1 };
export const MAX_DIGITS = 12;

export function toMessages(p: Problem): ChatMessage[] {
  return [
    { role: 'user', content: p.question },
    { role: 'assistant', content: p.solution },
  ];
}

function solution(steps: string[], answer: string): string {
  return `<think>\n${steps.join('\n')}\n</think>\nAnswer: ${answer}`;
}

const NAMES = ['Ana', 'Ben', 'Cara', 'Dev', 'Eli', 'Fay', 'Gus', 'Hana', 'Ivo', 'Jun', 'Kim', 'Leo', 'Mia', 'Noor', 'Omar', 'Pia'];
const ITEMS = ['apples', 'marbles', 'stamps', 'coins', 'books', 'pens', 'shells', 'cards', 'eggs', 'stickers', 'beads', 'nails'];
const CONTAINERS = ['boxes', 'bags', 'rows', 'shelves', 'baskets', 'packs'];

export class ArithmeticGenerator {
  private readonly rng: Rng;
  private readonly digits: number;
  private readonly cats: Category[];
  private readonly cum: number[];

  constructor(seed: number, opts: GenOptions = {}) {
    this.rng = new Rng(seed);
    this.digits = opts.digits ?? 3;
    if (!Number.isInteger(this.digits) || this.digits < 1 || this.digits > MAX_DIGITS) {
      fail(`digits must be a whole number from 1 to ${MAX_DIGITS}, got ${this.digits}`);
    }
    const w = opts.weights ?? DEFAULT_WEIGHTS;
    this.cats = [];
    this.cum = [];
    let total = 0;
    for (const c of CATEGORIES) {
      const x = w[c] ?? 0;
      if (!(x >= 0) || !Number.isFinite(x)) fail(`category weight for ${c} must be >= 0, got ${x}`);
      if (x > 0) {
        total += x;
        this.cats.push(c);
        this.cum.push(total);
      }
    }
    if (total === 0) fail('no category has a positive weight');
    this.cum = this.cum.map((c) => c / total);
  }

  private int(n: number): number {
    return Math.floor(this.rng.next() * n);
  }

  private pick<T>(xs: readonly T[]): T {
    return xs[this.int(xs.length)];
  }

  /** A number whose digit count is uniform in [1, maxDigits], then uniform among those numbers. */
  private num(maxDigits: number, minValue = 0): string {
    for (;;) {
      const k = 1 + this.int(maxDigits);
      let s = k === 1 ? String(this.int(10)) : String(1 + this.int(9));
      for (let i = 1; i < k; i++) s += String(this.int(10));
      if (k > 1 || Number(s) >= minValue) return s;
    }
  }

  next(): Problem {
    const r = this.rng.next();
    let i = 0;
    while (i < this.cum.length - 1 && r >= this.cum[i]) i++;
    switch (this.cats[i]) {
      case 'add': return this.add();
      case 'sub': return this.sub();
      case 'mul': return this.mul();
      case 'cmp': return this.cmp();
      case 'word': return this.word();
      case 'chain': return this.chain();
    }
  }

  private add(): Problem {
    const a = this.num(this.digits);
    const b = this.num(this.digits);
    const w = addSteps(a, b);
    const q = this.pick([`What is ${a} + ${b}?`, `${a}+${b}=?`, `Compute ${a} + ${b}.`, `Add ${a} and ${b}.`]);
    return { category: 'add', key: addKey(a, b), question: q, solution: solution([`${a}+${b}`, ...w.lines], w.result), answer: w.result };
  }

  private sub(): Problem {
    const a = this.num(this.digits);
    const b = this.num(this.digits);
    const q = this.pick([`What is ${a} - ${b}?`, `${a}-${b}=?`, `Compute ${a} - ${b}.`, `Subtract ${b} from ${a}.`]);
    const { steps, answer } = subWorked(a, b);
    return { category: 'sub', key: `sub:${a},${b}`, question: q, solution: solution(steps, answer), answer };
  }

  private mul(): Problem {
    const a = this.num(this.digits);
    const b = this.num(Math.max(1, Math.ceil(this.digits / 2)));
    const w = mulSteps(a, b);
    const q = this.pick([`What is ${a} * ${b}?`, `${a}*${b}=?`, `What is ${a} times ${b}?`, `Multiply ${a} by ${b}.`]);
    return { category: 'mul', key: mulKey(a, b), question: q, solution: solution([`${a}*${b}`, ...w.lines], w.result), answer: w.result };
  }

  private cmp(): Problem {
    let a = this.num(this.digits);
    let b = this.num(this.digits);
    while (a === b) b = this.num(this.digits);
    const larger = this.rng.next() < 0.5;
    const q = larger
      ? this.pick([`Which is larger: ${a} or ${b}?`, `Which number is bigger, ${a} or ${b}?`])
      : this.pick([`Which is smaller: ${a} or ${b}?`, `Which number is less, ${a} or ${b}?`]);
    const c = compareDec(a, b);
    const [lo, hi] = c < 0 ? [a, b] : [b, a];
    const steps = [`${a} vs ${b}`];
    if (a.length !== b.length) steps.push(`${lo.length} digits < ${hi.length} digits`);
    else {
      // the first differing digit from the left decides; equal leading digits are shown
      for (let i = 0; i < a.length; i++) {
        if (a[i] === b[i]) steps.push(`${a[i]}=${b[i]}`);
        else {
          steps.push(`${a[i]}${a[i] < b[i] ? '<' : '>'}${b[i]}`);
          break;
        }
      }
    }
    steps.push(larger ? `${hi}>${lo}` : `${lo}<${hi}`);
    const answer = larger ? hi : lo;
    const [s1, s2] = c < 0 ? [a, b] : [b, a];
    return { category: 'cmp', key: `cmp:${larger ? 'max' : 'min'}:${s1},${s2}`, question: q, solution: solution(steps, answer), answer };
  }

  private word(): Problem {
    const name = this.pick(NAMES);
    let other = this.pick(NAMES);
    while (other === name) other = this.pick(NAMES);
    const item = this.pick(ITEMS);
    const kind = this.int(5);
    if (kind <= 1) {
      const a = this.num(this.digits, 1);
      const b = this.num(this.digits, 1);
      const q = kind === 0
        ? `${name} has ${a} ${item} and buys ${b} more. How many ${item} does ${name} have now?`
        : `${name} has ${a} ${item} and ${other} has ${b}. How many ${item} do they have together?`;
      const w = addSteps(a, b);
      return { category: 'word', key: addKey(a, b), question: q, solution: solution([`${a}+${b}`, ...w.lines], w.result), answer: w.result };
    }
    if (kind <= 3) {
      let a = this.num(this.digits, 1);
      let b = this.num(this.digits, 1);
      if (compareDec(a, b) < 0) [a, b] = [b, a];
      const q = kind === 2
        ? `${name} has ${a} ${item} and gives ${b} away. How many ${item} are left?`
        : `${name} has ${a} ${item} and ${other} has ${b}. How many more ${item} does ${name} have?`;
      const w = subSteps(a, b);
      return { category: 'word', key: `sub:${a},${b}`, question: q, solution: solution([`${a}-${b}`, ...w.lines], w.result), answer: w.result };
    }
    const each = this.num(this.digits, 2);
    const count = this.num(Math.max(1, Math.ceil(this.digits / 2)), 2);
    const q = `There are ${count} ${this.pick(CONTAINERS)} with ${each} ${item} each. How many ${item} are there?`;
    const w = mulSteps(each, count);
    return { category: 'word', key: mulKey(each, count), question: q, solution: solution([`${each}*${count}`, ...w.lines], w.result), answer: w.result };
  }

  private chain(): Problem {
    const d = Math.max(1, this.digits - 1);
    const a = this.num(d);
    const b = this.num(d);
    const c = this.num(d);
    const s = addSteps(a, b);
    const t = subWorked(s.result, c);
    const q = this.pick([`What is ${a} + ${b} - ${c}?`, `${a}+${b}-${c}=?`, `Compute ${a} + ${b} - ${c}.`]);
    const steps = [`${a}+${b}`, ...s.lines, ...t.steps];
    return { category: 'chain', key: `chain:${addKey(a, b).slice(4)},${c}`, question: q, solution: solution(steps, t.answer), answer: t.answer };
  }
}

function addKey(a: string, b: string): string {
  return compareDec(a, b) <= 0 ? `add:${a},${b}` : `add:${b},${a}`;
}

function mulKey(a: string, b: string): string {
  return compareDec(a, b) <= 0 ? `mul:${a},${b}` : `mul:${b},${a}`;
}

/** a - b with the steps; a < b is done as -(b - a) with a line that says so. */
function subWorked(a: string, b: string): { steps: string[]; answer: string } {
  if (compareDec(a, b) >= 0) {
    const w = subSteps(a, b);
    return { steps: [`${a}-${b}`, ...w.lines], answer: w.result };
  }
  const w = subSteps(b, a);
  return { steps: [`${a}-${b}`, `${a}<${b}, so -(${b}-${a})`, ...w.lines], answer: `-${w.result}` };
}

/** Generates `n` problems (duplicates possible; see dataset.ts for splits). */
export function generateProblems(n: number, seed: number, opts: GenOptions = {}): Problem[] {
  const g = new ArithmeticGenerator(seed, opts);
  return Array.from({ length: n }, () => g.next());
}
