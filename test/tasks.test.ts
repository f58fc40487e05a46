import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { CATEGORIES, generateProblems, toMessages, type Problem } from '../src/tasks/arithmetic.js';
import { canonicalQuestion, makeSplits, readProblems, splitOf, SPLITS, toRecord } from '../src/tasks/dataset.js';
import { canonicalInt, evaluate, parseAnswer } from '../src/tasks/evaluate.js';
import { toBatches, tokenizeProblems, validationLoss, type TaskBatch } from '../src/tasks/loss.js';
import { trainByteLevelBpe } from '../src/tasks/bpe.js';
import { TextTokenizer } from '../src/tokenizer/tokenizer.js';
import { GravityError } from '../src/errors.js';
import type { CausalLM, Session } from '../src/model/types.js';
import type { ModelConfig } from '../src/model/config.js';

const tok = TextTokenizer.fromDir('models/gravity-mini');

test('generator: same seed, same problems; another seed, others', () => {
  const a = generateProblems(300, 42, { digits: 4 });
  const b = generateProblems(300, 42, { digits: 4 });
  const c = generateProblems(300, 43, { digits: 4 });
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, c);
  assert.deepEqual(makeSplits({ train: 200, val: 30, test: 30 }, 5), makeSplits({ train: 200, val: 30, test: 30 }, 5));
  // every category appears with the default mix
  assert.deepEqual(new Set(a.map((p) => p.category)), new Set(CATEGORIES));
  // the digits knob bounds the operands
  for (const p of generateProblems(500, 1, { digits: 2 })) {
    for (const n of p.key.split(':').pop()!.split(',')) assert.ok(n.length <= 2, `${p.key}`);
  }
  assert.throws(() => generateProblems(1, 1, { digits: 0 }), GravityError);
  assert.throws(() => generateProblems(1, 1, { weights: { add: 0 } }), GravityError);
});

test('splits: disjoint by question and by mathematical key, across seeds too', () => {
  const s1 = makeSplits({ train: 3000, val: 300, test: 300 }, 1, { digits: 2 });
  const s2 = makeSplits({ train: 3000, val: 300, test: 300 }, 2, { digits: 2 });
  for (const s of SPLITS) {
    // no exact repeats inside a split, and each problem sits where its key hashes
    const qs = s1[s].map((p) => canonicalQuestion(p.question));
    assert.equal(new Set(qs).size, qs.length, `${s} has a repeated question`);
    for (const p of s1[s]) assert.equal(splitOf(p.key), s);
  }
  assert.equal(s1.train.length, 3000);
  assert.equal(s1.test.length, 300);
  for (const [x, y] of [['train', 'val'], ['train', 'test'], ['val', 'test']] as const) {
    for (const [A, B] of [[s1, s1], [s1, s2], [s2, s1]]) {
      const keys = new Set(A[x].map((p) => p.key));
      const questions = new Set(A[x].map((p) => canonicalQuestion(p.question)));
      for (const p of B[y]) {
        assert.ok(!keys.has(p.key), `${p.key} in both ${x} and ${y}`);
        assert.ok(!questions.has(canonicalQuestion(p.question)), `question in both ${x} and ${y}`);
      }
    }
  }
  // the space of 1-digit problems cannot fill a big test split: a clear error, not a hang
  assert.throws(() => makeSplits({ train: 0, val: 0, test: 5000 }, 1, { digits: 1, weights: { add: 1 } }), /too small/);
});

/** The answer from the key alone, with BigInt (independent of the generator's digit-string arithmetic). */
function answerFromKey(key: string): bigint {
  const [op, ...rest] = key.split(':');
  const nums = rest.pop()!.split(',').map((s) => BigInt(s));
  switch (op) {
    case 'add': return nums[0] + nums[1];
    case 'sub': return nums[0] - nums[1];
    case 'mul': return nums[0] * nums[1];
    case 'chain': return nums[0] + nums[1] - nums[2];
    case 'cmp': return rest[0] === 'max' ? (nums[0] > nums[1] ? nums[0] : nums[1]) : nums[0] < nums[1] ? nums[0] : nums[1];
  }
  throw new Error(`unknown key ${key}`);
}

/** Every worked line that states arithmetic must be true. Returns how many lines were checked. */
function checkSteps(p: Problem): number {
  let n = 0;
  for (const line of p.solution.split('\n')) {
    let m;
    if ((m = /^(\d)\+(\d)(\+1)?=(\d+) -> (\d+)( c1)?$/.exec(line))) {
      const s = Number(m[1]) + Number(m[2]) + (m[3] ? 1 : 0);
      assert.equal(Number(m[4]), s, line);
      if (m[6]) assert.ok(s >= 10, line);
      n++;
    } else if ((m = /^(1?\d)-(\d)(-1)?=(\d) -> (\d+)( b1)?$/.exec(line))) {
      assert.equal(Number(m[1]) - Number(m[2]) - (m[3] ? 1 : 0), Number(m[4]), line);
      assert.equal(m[1].length === 2, m[6] !== undefined, `borrow marks disagree: ${line}`);
      n++;
    } else if ((m = /^(\d+)\*(\d+)=(\d+)( -> (\d+))?$/.exec(line))) {
      assert.equal(BigInt(m[1]) * BigInt(m[2]), BigInt(m[3]), line);
      if (m[5]) assert.ok(m[5].startsWith(m[3]) && /^0+$/.test(m[5].slice(m[3].length)), line);
      n++;
    } else if ((m = /^(\d+)\+(\d+)=(\d+)$/.exec(line))) {
      assert.equal(BigInt(m[1]) + BigInt(m[2]), BigInt(m[3]), line);
      n++;
    } else if ((m = /^(\d+)([=<>])(\d+)$/.exec(line))) {
      // comparison steps: a digit pair or the final relation
      const [x, y] = [BigInt(m[1]), BigInt(m[3])];
      assert.ok(m[2] === '=' ? x === y : m[2] === '<' ? x < y : x > y, line);
      n++;
    } else if ((m = /^(\d+) digits < (\d+) digits$/.exec(line))) {
      assert.ok(Number(m[1]) < Number(m[2]), line);
      n++;
    }
  }
  return n;
}

test('answers: every generated answer recomputed with BigInt; every worked step is true', () => {
  let steps = 0;
  let count = 0;
  for (const digits of [1, 2, 3, 4, 6, 9]) {
    for (const p of generateProblems(600, 100 + digits, { digits })) {
      const want = answerFromKey(p.key).toString();
      assert.equal(p.answer, want, `${p.key}: ${p.answer}`);
      assert.ok(p.solution.startsWith('<think>\n'), p.solution);
      assert.ok(p.solution.endsWith(`\n</think>\nAnswer: ${want}`), p.solution);
      assert.equal(parseAnswer(p.solution), want);
      // the operands are in the question
      for (const x of p.key.split(':').pop()!.split(',')) assert.ok(p.question.includes(x), `${p.question} lacks ${x}`);
      // add/sub: the last running result (leading zeros aside) is the answer
      if (p.category === 'add' || (p.category === 'sub' && !p.answer.startsWith('-'))) {
        const last = p.solution.split('\n').filter((l) => l.includes(' -> ')).pop()!;
        assert.equal(canonicalInt(last.split(' -> ')[1].split(' ')[0]), p.answer, last);
      }
      steps += checkSteps(p);
      count++;
    }
  }
  assert.ok(steps > 2 * count, `only ${steps} worked lines were checked for ${count} problems`);
});

test('mini tokenizer: exact round trip on 1000 chat examples, digits are single tokens, chat markers are one token', () => {
  assert.ok(tok.vocabSize >= 300 && tok.vocabSize <= 2048, `vocab ${tok.vocabSize}`);
  assert.equal(tok.eosToken, '<|im_end|>');
  for (const t of ['<|endoftext|>', '<|im_start|>', '<|im_end|>', '<think>', '</think>']) assert.equal(tok.encode(t, { addSpecialTokens: false }).length, 1, t);
  const problems = generateProblems(1000, 9, { digits: 5 });
  let total = 0;
  for (const p of problems) {
    const text = tok.applyChatTemplate(toMessages(p), { addGenerationPrompt: false });
    assert.ok(text.startsWith(`<|im_start|>user\n${p.question}<|im_end|>\n<|im_start|>assistant\n<think>\n`));
    const ids = tok.encode(text, { addSpecialTokens: false });
    assert.equal(tok.decode(ids), text);
    total += ids.length;
    for (const id of ids) {
      const piece = tok.decode([id]);
      if (/\d/.test(piece)) assert.match(piece, /^\d$/, `token ${id} '${piece}' joins a digit with something`);
    }
  }
  assert.ok(total / problems.length < 128, `mean ${total / problems.length} tokens`);
  // the generation prompt ends the prompt with the assistant header
  assert.ok(tok.applyChatTemplate([{ role: 'user', content: '1+1=?' }]).endsWith('<|im_end|>\n<|im_start|>assistant\n'));
  // byte-level: anything round-trips, even text the tokenizer never saw
  for (const s of ['Grüße, 世界! ∑ 🚀\t\r\n', 'The cat sat on 12,345 mats.']) assert.equal(tok.decode(tok.encode(s)), s);
});

test('BPE trainer: deterministic, respects the vocab cap, never merges digits', () => {
  const texts = ['hello hello world 123 456', 'hello there world 1234', 'held help hello 99'];
  const added = [{ content: '<|im_end|>', special: true }];
  const a = trainByteLevelBpe(texts, { vocabSize: 270, added });
  assert.deepEqual(a, trainByteLevelBpe(texts, { vocabSize: 270, added }));
  assert.equal(a.vocabSize, 256 + a.merges + 1);
  assert.ok(a.vocabSize <= 270);
  const t = TextTokenizer.fromObjects(a.tokenizerJson, {});
  assert.equal(t.vocabSize, a.vocabSize);
  assert.equal(t.idToToken(t.encode('hello')[0]), 'hello');
  assert.deepEqual(t.encode('1234').map((id) => t.decode([id])), ['1', '2', '3', '4']);
  assert.equal(t.encode('<|im_end|>')[0], a.addedIds['<|im_end|>']);
  assert.throws(() => trainByteLevelBpe(texts, { vocabSize: 100, added }), GravityError);
});

test('parseAnswer: last "Answer: n", canonical form, missing = null', () => {
  assert.equal(parseAnswer('<think>\n3+9=12\n</think>\nAnswer: 12'), '12');
  assert.equal(parseAnswer('Answer: 3\nAnswer: 012'), '12');
  assert.equal(parseAnswer('Answer:-7'), '-7');
  assert.equal(parseAnswer('Answer: -0'), '0');
  assert.equal(parseAnswer('the answer is 12'), null);
  assert.equal(parseAnswer('Answer: twelve'), null);
  assert.equal(parseAnswer(''), null);
});

/** A fake model that writes a fixed text per session (one session per problem), token by token. */
class ScriptedLM {
  readonly config: ModelConfig;
  attention: 'gravity' | 'dot' = 'gravity';
  eps = 0.1;
  readonly massLog: Float32Array[] = [];
  readonly backend = null as unknown as CausalLM['backend'];
  private script: number[] = [];
  private step = 0;

  constructor(vocab: number, private readonly scripts: number[][]) {
    this.config = {
      architecture: 'qwen2', vocabSize: vocab, hiddenSize: 8, intermediateSize: 8, numLayers: 1, numHeads: 1,
      numKVHeads: 1, headDim: 8, ropeTheta: 1e4, rmsNormEps: 1e-6, tieWordEmbeddings: false, qkvBias: true,
      oBias: false, mlpBias: false, maxPositionEmbeddings: 512, bosTokenId: null, eosTokenIds: [],
      attnImplementation: null, dtype: 'float32',
    };
  }

  newSession(batch: number, maxLen: number): Session {
    this.script = this.scripts.shift() ?? [];
    this.step = 0;
    const cache = { numLayers: 1, batch, maxLen, numKVHeads: 1, headDim: 8, keyValid: new Uint8Array(maxLen), length: 0 };
    return { batch, maxLen, cache, positions: new Int32Array(batch) };
  }

  async forward(): Promise<Float32Array> {
    const V = this.config.vocabSize;
    const logits = new Float32Array(V).fill(-5);
    logits[this.script[Math.min(this.step++, this.script.length - 1)]] = 5;
    return logits;
  }

  dispose(): void {}
}

test('evaluate: exact match of the final answer, missing answer is wrong, per-category tallies', async () => {
  const imEnd = tok.tokenToId('<|im_end|>')!;
  const say = (s: string) => [...tok.encode(s, { addSpecialTokens: false }), imEnd];
  const problems = [
    { messages: [{ role: 'user', content: '5+7=?' }, { role: 'assistant', content: 'ref' }], answer: '12', category: 'add' },
    { messages: [{ role: 'user', content: '9-3=?' }], answer: '6', category: 'sub' },
    { messages: [{ role: 'user', content: '9-4=?' }], answer: '5', category: 'sub' },
    { messages: [{ role: 'user', content: '2*3=?' }], answer: '6', category: 'mul' },
  ];
  const model = new ScriptedLM(tok.vocabSize, [
    say('<think>\n5+7=12\n</think>\nAnswer: 12'), // right
    say('<think>\n9-3=6\n</think>\nAnswer: 7'), // wrong number
    say('<think>\n9-4=5\n</think>\nthe answer is 5'), // no Answer line: wrong
    [...tok.encode('Answer: 6', { addSpecialTokens: false }), imEnd, ...tok.encode('Answer: 9', { addSpecialTokens: false })], // stops at <|im_end|>
  ]);
  const r = await evaluate(model as unknown as CausalLM, tok, problems, { maxTokens: 64, keepOutputs: true });
  assert.equal(r.total, 4);
  assert.equal(r.correct, 2);
  assert.equal(r.accuracy, 0.5);
  assert.equal(r.missing, 1);
  assert.deepEqual(r.perCategory, {
    add: { total: 1, correct: 1, accuracy: 1 },
    mul: { total: 1, correct: 1, accuracy: 1 },
    sub: { total: 2, correct: 0, accuracy: 0 },
  });
  assert.equal(r.outputs![0].text, '<think>\n5+7=12\n</think>\nAnswer: 12');
  assert.equal(r.outputs![1].got, '7');
  assert.equal(r.outputs![2].got, null);
});

test('JSONL records round-trip through readProblems; bad lines name file and line', () => {
  const dir = mkdtempSync(join(tmpdir(), 'gravity-task-'));
  try {
    const ps = generateProblems(20, 3);
    const file = join(dir, 'x.jsonl');
    writeFileSync(file, ps.map((p) => toRecord(p) + '\n').join('') + '\n');
    const back = readProblems(file);
    assert.equal(back.length, 20);
    back.forEach((b, i) => {
      assert.deepEqual(b.messages, toMessages(ps[i]));
      assert.equal(b.answer, ps[i].answer);
      assert.equal(b.category, ps[i].category);
    });
    assert.equal(readProblems(file, 5).length, 5);
    writeFileSync(file, toRecord(ps[0]) + '\n{"messages": [{"role": "user", "content": "hi"}]}\n');
    assert.throws(() => readProblems(file), (e: Error) => e instanceof GravityError && e.message.includes('x.jsonl:2') && e.message.includes('answer'));
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('validation-loss glue: labels only on assistant tokens, padded rows, token-weighted per-category mean', () => {
  const ps = generateProblems(7, 11, { digits: 2 }).map((p) => ({ messages: toMessages(p), answer: p.answer, category: p.category }));
  const rows = tokenizeProblems(ps, tok);
  rows.forEach((r, i) => {
    const learned = r.labels.filter((l) => l !== -100);
    assert.equal(tok.decode(learned), ps[i].messages[1].content + '<|im_end|>');
  });
  const pad = tok.tokenToId('<|endoftext|>')!;
  const batches = toBatches(rows, { batchSize: 3, padId: pad, maxLen: 256 });
  assert.deepEqual(batches.map((b) => b.B), [3, 3, 1]);
  const b0 = batches[0];
  assert.equal(b0.T, Math.max(...rows.slice(0, 3).map((r) => r.ids.length)));
  assert.equal(b0.ids[b0.T - 1] === pad || rows.slice(0, 3).every((r) => r.ids.length === b0.T), true);
  assert.throws(() => toBatches(rows, { batchSize: 3, padId: pad, maxLen: 10 }), /more than the context 10/);
  // a fake trainer evaluate(): constant loss 2 over the label tokens it was given
  const fakeEval = (bs: TaskBatch[]) => {
    let tokens = 0;
    for (const b of bs) for (const l of b.labels) if (l !== -100) tokens++;
    return { loss: 2, tokens };
  };
  const r = validationLoss(fakeEval, ps, tok, { batchSize: 2, padId: pad, maxLen: 256 });
  assert.equal(r.tokens, rows.reduce((n, row) => n + row.labels.filter((l) => l !== -100).length, 0));
  assert.ok(Math.abs(r.loss - 2) < 1e-12);
  assert.ok(Math.abs(r.perplexity - Math.exp(2)) < 1e-9);
  assert.deepEqual(Object.keys(r.perCategory), [...new Set(ps.map((p) => p.category))].sort());
});

test('gravity task make writes three disjoint JSONL splits', async () => {
  const { run } = await import('../src/cli/task.js');
  const dir = mkdtempSync(join(tmpdir(), 'gravity-task-'));
  const write = process.stdout.write;
  try {
    process.stdout.write = (() => true) as typeof process.stdout.write;
    try {
      assert.equal(await run(['make', '--out', dir, '--train', '300', '--val', '40', '--test', '50', '--seed', '3', '--digits', '2']), 0);
    } finally {
      process.stdout.write = write;
    }
    const keys: Record<string, Set<string>> = {};
    for (const [s, n] of [['train', 300], ['val', 40], ['test', 50]] as const) {
      const lines = readFileSync(join(dir, `${s}.jsonl`), 'utf8').trim().split('\n');
      assert.equal(lines.length, n);
      keys[s] = new Set(lines.map((l) => JSON.parse(l).key));
      assert.ok(lines.every((l) => Array.isArray(JSON.parse(l).messages)));
    }
    for (const k of keys.test) assert.ok(!keys.train.has(k) && !keys.val.has(k));
    await assert.rejects(run(['make', '--out', dir, '--mix', 'add=1,div=2']), /unknown category 'div'/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('models/gravity-mini tokenizer files are exactly what scripts/make-mini-tokenizer.ts makes', async () => {
  const { execFileSync } = await import('node:child_process');
  const dir = mkdtempSync(join(tmpdir(), 'gravity-tok-'));
  try {
    const out = execFileSync(process.execPath, ['--import', 'tsx', 'scripts/make-mini-tokenizer.ts', '--out', dir], { encoding: 'utf8' });
    assert.match(out, /510 tokens/);
    for (const f of ['tokenizer.json', 'tokenizer_config.json']) {
      assert.equal(readFileSync(join(dir, f), 'utf8'), readFileSync(join('models/gravity-mini', f), 'utf8'), `${f} differs: rerun the script`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
