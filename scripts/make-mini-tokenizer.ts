// Trains the gravity-mini tokenizer (byte-level BPE, single-digit numbers, ChatML) on generated arithmetic
// training text and writes models/gravity-mini/tokenizer.json + tokenizer_config.json. Deterministic.
// Run: node --import tsx scripts/make-mini-tokenizer.ts [--out DIR] [--vocab N] [--examples N]
import { mkdirSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { toMessages } from '../src/tasks/arithmetic.js';
import { makeSplits } from '../src/tasks/dataset.js';
import { chatmlTokenizerConfig, trainByteLevelBpe, type AddedToken } from '../src/tasks/bpe.js';
import { TextTokenizer } from '../src/tokenizer/tokenizer.js';

const { values } = parseArgs({
  options: {
    out: { type: 'string', default: 'models/gravity-mini' },
    vocab: { type: 'string', default: '1024' },
    examples: { type: 'string', default: '20000' },
  },
});
const out = values.out!;
const vocabSize = Number(values.vocab);
const n = Number(values.examples);

export const ADDED: AddedToken[] = [
  { content: '<|endoftext|>', special: true },
  { content: '<|im_start|>', special: true },
  { content: '<|im_end|>', special: true },
  // not special, as in Qwen3: decode keeps the reasoning markers
  { content: '<think>', special: false },
  { content: '</think>', special: false },
];

// ChatML rendering by hand (identical to the template; the tests check round trips through the real template).
const chatml = (msgs: { role: string; content: string }[]) =>
  msgs.map((m) => `<|im_start|>${m.role}\n${m.content}<|im_end|>\n`).join('');

// training-split problems only, over all difficulty levels the task uses, so every word of the templates is seen
const texts: string[] = [];
for (const digits of [1, 2, 3, 4, 5]) {
  const { train } = makeSplits({ train: Math.ceil(n / 5), val: 0, test: 0 }, 1000 + digits, { digits });
  for (const p of train) texts.push(chatml(toMessages(p)));
}
const res = trainByteLevelBpe(texts, { vocabSize, added: ADDED });
const config = chatmlTokenizerConfig(res, ADDED, 512);
mkdirSync(out, { recursive: true });
writeFileSync(join(out, 'tokenizer.json'), JSON.stringify(res.tokenizerJson, null, 1) + '\n');
writeFileSync(join(out, 'tokenizer_config.json'), JSON.stringify(config, null, 2) + '\n');

// check on fresh examples: exact round trip through the chat template, and length
const tok = TextTokenizer.fromDir(out);
const { test } = makeSplits({ train: 0, val: 0, test: 1000 }, 7, { digits: 3 });
let total = 0;
let max = 0;
for (const p of test) {
  const text = tok.applyChatTemplate(toMessages(p), { addGenerationPrompt: false });
  const ids = tok.encode(text, { addSpecialTokens: false });
  if (tok.decode(ids) !== text) throw new Error(`round trip failed: ${JSON.stringify(text)}`);
  total += ids.length;
  max = Math.max(max, ids.length);
}
console.log(`${out}: ${res.vocabSize} tokens (256 bytes + ${res.merges} merges + ${ADDED.length} added); ` +
  `digits=3 chat examples: mean ${(total / test.length).toFixed(1)} tokens, max ${max}`);
