/** `gravity task make|eval`: the arithmetic task's data sets and its accuracy measurement. */
import { existsSync, mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { fail } from '../errors.js';
import { CATEGORIES, DEFAULT_WEIGHTS, toMessages, type Category } from '../tasks/arithmetic.js';
import { makeSplits, SPLITS, toRecord, readProblems, isCategory, type SplitName } from '../tasks/dataset.js';
import { evaluate } from '../tasks/evaluate.js';
import { TextTokenizer } from '../tokenizer/tokenizer.js';
import { flag, int, parseCommand, required, str, UsageError } from './args.js';
import { loadFromArgs, MODEL_OPTIONS, MODEL_USAGE, packageRoot, tokenizerOf } from './model-args.js';
import { progress } from './progress.js';

export const usage = `usage: gravity task make --out DIR [options]
       gravity task eval [--model DIR] --data FILE.jsonl [options]

make: writes DIR/train.jsonl, val.jsonl, test.jsonl of arithmetic problems with worked solutions, one
{"messages", "answer", "category", "key"} per line. A problem's split is fixed by a hash of its mathematics,
so the splits never share a question (nor a paraphrase of one), whatever the seed or sizes.
  --train N / --val N / --test N   problems per split (default 20000 / 500 / 500)
  --seed S               generator seed (default 0)
  --digits D             most digits per operand, 1-12 (default 3)
  --mix SPEC             category weights, e.g. add=1,sub=1 (default ${Object.entries(DEFAULT_WEIGHTS).map(([k, v]) => `${k}=${v}`).join(',')})
  --tokenizer DIR        report token counts with this tokenizer (default: models/gravity-mini's, if present)

eval: greedy-decodes every problem's answer and reports exact-match accuracy of its final "Answer: <n>",
overall and per category.
  --data FILE            a task JSONL file (e.g. test.jsonl from task make)
  --limit N              only the first N problems
  --max-tokens N         most generated tokens per problem (default 192)
  --show N               print the first N wrong outputs
  --json                 print one JSON object instead of the table
${MODEL_USAGE}
`;

const MAKE_OPTIONS = {
  out: { type: 'string', short: 'o' },
  train: { type: 'string' },
  val: { type: 'string' },
  test: { type: 'string' },
  seed: { type: 'string' },
  digits: { type: 'string' },
  mix: { type: 'string' },
  tokenizer: { type: 'string' },
} as const;

const EVAL_OPTIONS = {
  ...MODEL_OPTIONS,
  data: { type: 'string' },
  limit: { type: 'string' },
  'max-tokens': { type: 'string' },
  show: { type: 'string' },
  json: { type: 'boolean' },
} as const;

function parseMix(spec: string): Partial<Record<Category, number>> {
  const w: Partial<Record<Category, number>> = {};
  for (const part of spec.split(',')) {
    const m = /^\s*([a-z]+)\s*=\s*([0-9.]+)\s*$/.exec(part);
    if (!m || !Number.isFinite(Number(m[2]))) fail(`--mix '${part}': expected category=weight (categories: ${CATEGORIES.join(', ')})`);
    if (!isCategory(m[1])) fail(`--mix: unknown category '${m[1]}' (categories: ${CATEGORIES.join(', ')})`);
    w[m[1]] = Number(m[2]);
  }
  return w;
}

function defaultTokenizer(): TextTokenizer | null {
  const dir = join(packageRoot(), 'models', 'gravity-mini');
  return TextTokenizer.hasTokenizer(dir) ? TextTokenizer.fromDir(dir) : null;
}

async function make(argv: string[]): Promise<number> {
  const v = parseCommand(argv, MAKE_OPTIONS, usage);
  if (!v) return 0;
  const out = required(v, 'out', usage);
  const counts = { train: int(v, 'train') ?? 20000, val: int(v, 'val') ?? 500, test: int(v, 'test') ?? 500 };
  const seed = int(v, 'seed') ?? 0;
  const digits = int(v, 'digits') ?? 3;
  const mix = str(v, 'mix');
  const splits = makeSplits(counts, seed, { digits, weights: mix !== undefined ? parseMix(mix) : undefined });
  mkdirSync(out, { recursive: true });
  const tokDir = str(v, 'tokenizer');
  const tok = tokDir !== undefined ? TextTokenizer.fromDir(tokDir) : defaultTokenizer();
  for (const s of SPLITS) {
    const file = join(out, `${s}.jsonl`);
    writeFileSync(file, splits[s].map((p) => toRecord(p) + '\n').join(''));
    const cats = new Map<string, number>();
    for (const p of splits[s]) cats.set(p.category, (cats.get(p.category) ?? 0) + 1);
    const catList = CATEGORIES.filter((c) => cats.has(c)).map((c) => `${c} ${cats.get(c)}`);
    let line = `${file}: ${splits[s].length} problems (${catList.join(', ')})`;
    if (tok && splits[s].length > 0) line += `, ${tokenStats(tok, s, splits)}`;
    process.stdout.write(line + '\n');
  }
  return 0;
}

function tokenStats(tok: TextTokenizer, s: SplitName, splits: ReturnType<typeof makeSplits>): string {
  let total = 0;
  let max = 0;
  for (const p of splits[s]) {
    const n = tok.encode(tok.applyChatTemplate(toMessages(p), { addGenerationPrompt: false }), { addSpecialTokens: false }).length;
    total += n;
    max = Math.max(max, n);
  }
  return `tokens/example mean ${(total / splits[s].length).toFixed(1)} max ${max}`;
}

async function evalCmd(argv: string[]): Promise<number> {
  const v = parseCommand(argv, EVAL_OPTIONS, usage);
  if (!v) return 0;
  const data = required(v, 'data', usage);
  if (!existsSync(data)) fail(`--data ${data}: no such file`);
  const limit = int(v, 'limit');
  if (limit !== undefined && limit < 1) fail(`--limit must be >= 1, got ${limit}`);
  const maxTokens = int(v, 'max-tokens') ?? 192;
  if (maxTokens < 1) fail(`--max-tokens must be >= 1, got ${maxTokens}`);
  const show = int(v, 'show') ?? 0;
  const problems = readProblems(data, limit ?? Infinity);
  const model = await loadFromArgs(v);
  try {
    const tok = tokenizerOf(model);
    if (!tok) fail(`${model.dir}: no tokenizer.json; task eval needs one`);
    if (!tok.hasChatTemplate) fail(`${model.dir}: the tokenizer has no chat template; task eval needs one`);
    const bar = progress('evaluating');
    const t0 = performance.now();
    let report;
    try {
      report = await evaluate(model, tok, problems, { maxTokens, keepOutputs: show > 0, onProgress: (d, t) => bar.update(d, t, 'problems') });
    } finally {
      bar.done();
    }
    const seconds = (performance.now() - t0) / 1000;
    if (flag(v, 'json')) {
      const { outputs, ...rest } = report;
      process.stdout.write(JSON.stringify({ data, model: model.dir, ...rest, seconds }) + '\n');
    } else {
      const pct = (x: number) => `${(100 * x).toFixed(1)}%`;
      const lines = [`accuracy ${pct(report.accuracy)} (${report.correct}/${report.total}), no answer ${report.missing}, ${report.meanTokens.toFixed(1)} tokens/problem, ${seconds.toFixed(1)} s`];
      for (const [c, t] of Object.entries(report.perCategory)) lines.push(`  ${c.padEnd(6)} ${pct(t.accuracy).padStart(6)} (${t.correct}/${t.total})`);
      process.stdout.write(lines.join('\n') + '\n');
    }
    if (show > 0) {
      const wrong = (report.outputs ?? []).filter((o) => !o.correct).slice(0, show);
      for (const o of wrong) process.stdout.write(`--- ${o.category}: expected ${o.expected}, got ${o.got ?? '(none)'}\n${o.text}\n`);
    }
    return 0;
  } finally {
    model.dispose();
  }
}

export async function run(argv: string[]): Promise<number> {
  const [sub, ...rest] = argv;
  if (sub === undefined || sub === '--help' || sub === '-h') {
    process.stdout.write(usage);
    return 0;
  }
  if (sub === 'make') return make(rest);
  if (sub === 'eval') return evalCmd(rest);
  throw new UsageError(`unknown task subcommand '${sub}' (make, eval)`, usage);
}
