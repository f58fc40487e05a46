import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { TextTokenizer } from '../src/tokenizer/tokenizer.js';
import { BatchSchedule, IGNORE, evalBatches, loadData, overlapCount, permutation, splitValidation, tokenizeChat, type DataOptions } from '../src/train/data.js';
import { FIXTURES } from './helpers/fixtures.js';

const tok = TextTokenizer.fromDir(path.join(FIXTURES, 'tokenizer-tiny'));
const EOS = tok.tokenToId('<|im_end|>')!;
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'gravity-data-'));
process.on('exit', () => fs.rmSync(tmp, { recursive: true, force: true }));

function file(name: string, content: string): string {
  const p = path.join(tmp, name);
  fs.writeFileSync(p, content);
  return p;
}
const jsonl = (recs: unknown[]) => recs.map((r) => JSON.stringify(r)).join('\n') + '\n';
const opts = (o: Partial<DataOptions> = {}): DataOptions => ({ seqLen: 8, eosId: EOS, vocabSize: 339, tokenizer: tok, ...o });
const rows = (a: Int32Array, T: number) => Array.from({ length: a.length / T }, (_, i) => [...a.subarray(i * T, (i + 1) * T)]);

test('input_ids records pack whole into windows with eos separators and padding', () => {
  const f = file('ids.jsonl', jsonl([{ input_ids: [1, 2, 3] }, { input_ids: [4, 5, 6, 7] }, { input_ids: [8, 9, 10, 11, 12, 13] }]));
  const { data, records, warnings } = loadData(f, opts());
  assert.equal(records, 3);
  assert.deepEqual(warnings, []);
  const E = EOS;
  // [1,2,3,E] + [4,5,6,7,E] does not fit 8 -> window 0 padded; record 3 (6 + eos) fits window 1 after record 2
  assert.deepEqual(rows(data.ids, 8), [
    [1, 2, 3, E, E, E, E, E],
    [4, 5, 6, 7, E, E, E, E],
    [8, 9, 10, 11, 12, 13, E, E],
  ]);
  const I = IGNORE;
  assert.deepEqual(rows(data.labels, 8), [
    [1, 2, 3, E, I, I, I, I],
    [4, 5, 6, 7, E, I, I, I],
    [8, 9, 10, 11, 12, 13, E, I],
  ]);
});

test('explicit labels are kept; their separator gets no loss', () => {
  const f = file('lab.jsonl', jsonl([{ input_ids: [1, 2, 3, 4], labels: [-100, -100, 3, 4] }]));
  const { data } = loadData(f, opts());
  assert.deepEqual([...data.labels], [-100, -100, 3, 4, -100, -100, -100, -100]);
});

test('text records stream across windows; plain text files too', () => {
  const f = file('t.jsonl', jsonl([{ text: 'The quick brown fox jumps over the lazy dog.' }, { text: 'Hello world!' }]));
  const a = tok.encode('The quick brown fox jumps over the lazy dog.');
  const b = tok.encode('Hello world!');
  const { data } = loadData(f, opts({ seqLen: 5 }));
  const stream = [...a, EOS, ...b, EOS];
  assert.deepEqual([...data.ids].slice(0, stream.length), stream);
  assert.deepEqual([...data.labels].slice(0, stream.length), stream);
  assert.equal(data.count, Math.ceil(stream.length / 5));
  const p = file('plain.txt', 'The quick brown fox jumps over the lazy dog.');
  const d2 = loadData(p, opts({ seqLen: 4 })).data;
  assert.deepEqual([...d2.ids].slice(0, a.length + 1), [...a, EOS]);
});

test('chat records: loss only on assistant turns (content + <|im_end|>)', () => {
  const msgs = [
    { role: 'user', content: 'Hello there' },
    { role: 'assistant', content: 'Hello world!' },
    { role: 'user', content: 'how are you' },
    { role: 'assistant', content: 'I am fine' },
  ];
  const { ids, labels } = tokenizeChat(tok, msgs, 'x:1');
  const full = tok.applyChatTemplate(msgs, { addGenerationPrompt: false });
  // segment-wise tokenization equals tokenizing the whole render on this template
  assert.deepEqual(ids, tok.encode(full, { addSpecialTokens: false }));
  // the trained tokens, grouped in runs, decode to exactly the two assistant turns
  const runs: number[][] = [];
  labels.forEach((l, t) => {
    if (l === IGNORE) return;
    assert.equal(l, ids[t]);
    if (t > 0 && labels[t - 1] !== IGNORE) runs[runs.length - 1].push(l);
    else runs.push([l]);
  });
  assert.deepEqual(runs.map((r) => tok.decode(r)), ['Hello world!<|im_end|>', 'I am fine<|im_end|>']);
  // packed: the separator after a chat record carries no loss
  const f = file('chat.jsonl', jsonl([{ messages: msgs }]));
  const { data } = loadData(f, opts({ seqLen: 256 }));
  assert.equal(data.ids[ids.length], EOS);
  assert.equal(data.labels[ids.length], IGNORE);
  assert.deepEqual([...data.labels].slice(0, ids.length), labels);
});

test('chat records without an assistant turn are skipped with a warning', () => {
  const f = file('noasst.jsonl', jsonl([{ messages: [{ role: 'user', content: 'hi' }] }, { input_ids: [5, 6] }]));
  const { records, warnings } = loadData(f, opts());
  assert.equal(records, 1);
  assert.match(warnings[0], /1 record\(s\) have no tokens to learn.*noasst\.jsonl:1/);
});

test('records longer than --seq-len are truncated with a warning naming the line', () => {
  const f = file('long.jsonl', jsonl([{ input_ids: [1, 2] }, { input_ids: Array.from({ length: 12 }, (_, i) => i) }]));
  const { data, warnings } = loadData(f, opts());
  assert.match(warnings[0], /1 record\(s\) longer than --seq-len 8 were truncated.*long\.jsonl:2 \(12 tokens\)/);
  assert.deepEqual(rows(data.ids, 8)[1], [0, 1, 2, 3, 4, 5, 6, 7]);
});

test('bad input: each error names the file and line', () => {
  const cases: Array<[string, string, RegExp]> = [
    ['bad.jsonl', '{"input_ids": [1]}\n\n{"input_ids": [1,\n', /bad\.jsonl:3: not valid JSON \(/],
    ['nokey.jsonl', '{"input_ids": [1]}\n{"prompt": "x"}\n', /nokey\.jsonl:2: record has none of "text", "messages", "input_ids" \(keys: "prompt"\)/],
    ['arr.jsonl', '[1, 2]\n', /arr\.jsonl:1: expected a JSON object/],
    ['vocab.jsonl', '{"input_ids": [1, 400]}\n', /vocab\.jsonl:1: input_ids\[1\] = 400 is not a token id in \[0, 339\)/],
    ['float.jsonl', '{"input_ids": [1.5]}\n', /float\.jsonl:1: input_ids\[0\] = 1\.5/],
    ['lablen.jsonl', '{"input_ids": [1, 2], "labels": [1]}\n', /lablen\.jsonl:1: "labels" has 1 entries, "input_ids" has 2/],
    ['labval.jsonl', '{"input_ids": [1, 2], "labels": [1, -5]}\n', /labval\.jsonl:1: labels\[1\] = -5 is not -100 or a token id/],
    ['msg.jsonl', '{"messages": [{"role": "user"}]}\n', /msg\.jsonl:1: messages\[0\] \("user"\) has no string "content"/],
    ['msg0.jsonl', '{"messages": [{"role": "assistant", "content": "x"}]}\n', /msg0\.jsonl:1: messages\[0\] is an assistant turn/],
    ['text.jsonl', '{"text": 5}\n', /text\.jsonl:1: "text" must be a string/],
    ['empty.jsonl', '\n\n', /empty\.jsonl: no training examples/],
    ['empty.txt', '  \n', /empty\.txt: no training examples/],
    ['allmasked.jsonl', '{"input_ids": [1, 2], "labels": [-100, -100]}\n', /allmasked\.jsonl: no training examples/],
  ];
  for (const [name, content, re] of cases) {
    const f = file(name, content);
    assert.throws(() => loadData(f, opts()), (e: Error) => e.name === 'GravityError' && re.test(e.message), name);
  }
  assert.throws(() => loadData(path.join(tmp, 'missing.jsonl'), opts()), /missing\.jsonl: data file does not exist/);
  const t = file('needtok.jsonl', '{"input_ids": [1]}\n{"text": "hi"}\n');
  assert.throws(() => loadData(t, opts({ tokenizer: null })), /needtok\.jsonl:2: "text" records need a tokenizer/);
  assert.throws(() => loadData(t, opts({ seqLen: 1 })), /--seq-len 1: must be a whole number >= 2/);
});

test('validation split: seeded, disjoint, at least one window each side', () => {
  const recs = Array.from({ length: 20 }, (_, i) => ({ input_ids: [i + 1, i + 2, i + 3] }));
  const { data } = loadData(file('split.jsonl', jsonl(recs)), opts({ seqLen: 4 }));
  assert.equal(data.count, 20);
  const a = splitValidation(data, 0.2, 7);
  const b = splitValidation(data, 0.2, 7);
  assert.equal(a.val.count, 4);
  assert.equal(a.train.count, 16);
  assert.deepEqual([...a.val.ids], [...b.val.ids]);
  const key = (d: typeof data) => rows(d.ids, 4).map((r) => r.join(','));
  const trainKeys = new Set(key(a.train));
  for (const k of key(a.val)) assert.ok(!trainKeys.has(k), `val window ${k} also in train`);
  assert.equal(new Set([...key(a.train), ...key(a.val)]).size, 20);
  assert.equal(overlapCount(a.train, a.val), 0);
  assert.equal(overlapCount(data, a.val), 4);
  assert.notDeepEqual([...splitValidation(data, 0.2, 8).val.ids], [...a.val.ids]);
  assert.equal(splitValidation(data, 0.001, 1).val.count, 1);
  assert.equal(splitValidation(data, 0.999, 1).train.count, 1);
  const one = loadData(file('one.jsonl', jsonl([{ input_ids: [1] }])), opts()).data;
  assert.throws(() => splitValidation(one, 0.1, 1), /need at least 2/);
  assert.throws(() => splitValidation(data, 1.5, 1), /--val-fraction 1.5/);
});

test('batch schedule: a function of (seed, step); each epoch visits every window once', () => {
  const recs = Array.from({ length: 10 }, (_, i) => ({ input_ids: [i + 1] }));
  const { data } = loadData(file('sched.jsonl', jsonl(recs)), opts({ seqLen: 2 }));
  assert.equal(data.count, 10);
  const s1 = new BatchSchedule(data, 2, 1, 42);
  const s2 = new BatchSchedule(data, 2, 1, 42);
  assert.equal(s1.stepsFor(1), 5);
  assert.equal(s1.stepsFor(1.5), 8);
  // visit steps in a different order on the second schedule: the batches must still agree
  const firsts = (s: BatchSchedule, step: number) => s.microBatches(step).flatMap((b) => rows(b.ids, 2).map((r) => r[0]));
  const seq = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9].map((st) => firsts(s1, st));
  for (const st of [9, 3, 7, 0, 5]) assert.deepEqual(firsts(s2, st), seq[st]);
  const epoch0 = seq.slice(0, 5).flat().sort((a, b) => a - b);
  const epoch1 = seq.slice(5, 10).flat().sort((a, b) => a - b);
  assert.deepEqual(epoch0, [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]);
  assert.deepEqual(epoch1, epoch0);
  assert.notDeepEqual(seq.slice(0, 5).flat(), seq.slice(5, 10).flat()); // reshuffled per epoch
  assert.notDeepEqual(firsts(new BatchSchedule(data, 2, 1, 43), 0).concat(firsts(new BatchSchedule(data, 2, 1, 43), 1)), seq[0].concat(seq[1]));
  // grad accumulation: K micro-batches of B each
  const acc = new BatchSchedule(data, 3, 2, 42).microBatches(0);
  assert.equal(acc.length, 2);
  assert.deepEqual([acc[0].B, acc[0].T, acc[0].ids.length], [3, 2, 6]);
  const ev = evalBatches(data, 4);
  assert.deepEqual(ev.map((b) => b.B), [4, 4, 2]);
  assert.deepEqual(permutation(5, 1, 0), permutation(5, 1, 0));
});
