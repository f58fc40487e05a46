/**
 * Training data: reads plain text or JSONL, tokenizes, packs into fixed-length windows, splits off validation
 * and schedules batches so that the batch of a step is a pure function of (seed, step) (resume = same order).
 *
 * Formats (chosen by extension: `.jsonl` / `.json` are JSON lines, anything else is plain text):
 *  - plain text: the whole file is one document (tokenized with the tokenizer's special tokens, e.g. Llama BOS);
 *  - `{"text": "..."}`: one document per line;
 *  - `{"messages": [{role, content}, ...]}`: rendered with the chat template; loss only on assistant turns;
 *  - `{"input_ids": [...], "labels"?: [...]}`: ids as given (labels -100 = no loss; default: every token).
 *
 * Packing: records are laid end to end in file order, each followed by the eos separator, into windows of
 * `seqLen` tokens. Text documents are a stream: a long document simply continues in the next window (nothing is
 * lost). Chat and input_ids records are kept whole inside one window (a record that would straddle the border
 * starts a new window; the rest of the old one is padding with label -100); one longer than `seqLen` is
 * TRUNCATED to `seqLen` with a warning that names its line (truncating keeps training going on a long-tail
 * record; the warning says how many). `--seq-len` above the model's max_position_embeddings is an error.
 * Windows are not attention-masked per document (the usual packing): the eos separator marks the border.
 *
 * Assistant-only labels: HF chat templates have no portable "generation" marker, so the assistant spans are found
 * by rendering the template prefix by prefix: for an assistant message i, its text is what render(m[0..i],
 * no generation prompt) adds after render(m[0..i-1], generation prompt). Every prefix render must be a prefix of
 * the full render (true of ChatML/Qwen2.5/Llama-3 templates); a template that rewrites earlier turns (Qwen3
 * dropping old <think> blocks) is reported as an error naming the line. The text is tokenized segment by segment
 * (each segment without added special tokens, as HF does for rendered templates), so every token is wholly inside
 * or outside an assistant span; the segment borders fall after a newline or a special token, where the
 * pre-tokenizer splits anyway. Trailing whitespace after an assistant turn (the "\n" after <|im_end|>) gets no loss.
 */
import { readFileSync, statSync } from 'node:fs';
import { fail } from '../errors.js';
import type { ChatMessage, TextTokenizer } from '../tokenizer/tokenizer.js';
import type { Batch } from './trainer.js';

export const IGNORE = -100;

export interface DataOptions {
  seqLen: number;
  /** separator (and padding) token */
  eosId: number;
  /** model vocabulary size: input_ids are checked against it */
  vocabSize: number;
  /** needed for text and messages records */
  tokenizer: TextTokenizer | null;
  /** the tokenizer's source, for the error when it is missing */
  tokenizerHint?: string;
}

/** A tokenized record before packing. `stream` records (text) may span windows; others stay whole. */
interface Item {
  ids: number[];
  labels: number[];
  stream: boolean;
  /** label of the eos separator that follows: the eos itself (learn to stop) or IGNORE */
  sepLabel: number;
  where: string;
}

/** Packed windows: ids and labels [count * seqLen], row-major. */
export class PackedData {
  constructor(readonly ids: Int32Array, readonly labels: Int32Array, readonly seqLen: number) {}
  get count(): number {
    return this.ids.length / this.seqLen;
  }
  /** tokens that carry loss (label != -100 at positions 1..T-1: position 0 has no previous logit) */
  lossTokens(): number {
    let n = 0;
    for (let i = 0; i < this.labels.length; i++) if (i % this.seqLen !== 0 && this.labels[i] !== IGNORE) n++;
    return n;
  }
  subset(indices: number[]): PackedData {
    const T = this.seqLen;
    const ids = new Int32Array(indices.length * T);
    const labels = new Int32Array(indices.length * T);
    indices.forEach((w, i) => {
      ids.set(this.ids.subarray(w * T, (w + 1) * T), i * T);
      labels.set(this.labels.subarray(w * T, (w + 1) * T), i * T);
    });
    return new PackedData(ids, labels, T);
  }
  batch(indices: number[]): Batch {
    const b = this.subset(indices);
    return { ids: b.ids, labels: b.labels, B: indices.length, T: this.seqLen };
  }
}

export interface LoadedData {
  data: PackedData;
  records: number;
  warnings: string[];
}

// ---------------------------------------------------------------------------------------------- reading

function isJsonLines(file: string): boolean {
  return /\.jsonl?$/i.test(file);
}

function readText(file: string): string {
  let st;
  try {
    st = statSync(file);
  } catch {
    fail(`${file}: data file does not exist`);
  }
  if (st.isDirectory()) fail(`${file}: is a folder; --data takes a .jsonl or text file`);
  return readFileSync(file, 'utf8');
}

function needTokenizer(opts: DataOptions, where: string, what: string): TextTokenizer {
  if (!opts.tokenizer) fail(`${where}: ${what} records need a tokenizer (${opts.tokenizerHint ?? 'the model folder has no tokenizer.json'}); use {"input_ids": [...]} records instead`);
  return opts.tokenizer;
}

/** Tokenizes a long text in pieces cut at blank lines (the tokenizer is slow on one huge string). */
function encodeLong(tok: TextTokenizer, text: string): number[] {
  const PIECE = 1 << 16;
  if (text.length <= PIECE) return tok.encode(text);
  const out: number[] = [];
  let start = 0;
  while (start < text.length) {
    let end = Math.min(text.length, start + PIECE);
    if (end < text.length) {
      const cut = text.lastIndexOf('\n\n', end);
      if (cut > start) end = cut + 2;
    }
    // special tokens (a Llama BOS) belong only at the start of the document
    for (const id of tok.encode(text.slice(start, end), { addSpecialTokens: start === 0 })) out.push(id);
    start = end;
  }
  return out;
}

function checkMessages(v: unknown, where: string): ChatMessage[] {
  if (!Array.isArray(v) || v.length === 0) fail(`${where}: "messages" must be a non-empty array of {"role", "content"}`);
  v.forEach((m, i) => {
    if (!m || typeof m !== 'object' || Array.isArray(m)) fail(`${where}: messages[${i}] is not an object`);
    const o = m as Record<string, unknown>;
    if (typeof o.role !== 'string') fail(`${where}: messages[${i}] has no string "role"`);
    if (typeof o.content !== 'string') fail(`${where}: messages[${i}] ("${o.role}") has no string "content"`);
  });
  return v as ChatMessage[];
}

/** Tokenizes a conversation; labels are the ids inside assistant turns, -100 elsewhere (see the file comment). */
export function tokenizeChat(tok: TextTokenizer, messages: ChatMessage[], where: string): { ids: number[]; labels: number[] } {
  if (!tok.hasChatTemplate) fail(`${where}: "messages" records need a chat template (the tokenizer has none)`);
  const render = (n: number, gen: boolean) => {
    try {
      return tok.applyChatTemplate(messages.slice(0, n), { addGenerationPrompt: gen });
    } catch (e) {
      fail(`${where}: chat template failed on the first ${n} messages (${(e as Error).message})`);
    }
  };
  const full = render(messages.length, false);
  const spans: Array<[number, number]> = [];
  messages.forEach((m, i) => {
    if (m.role !== 'assistant') return;
    if (i === 0) fail(`${where}: messages[0] is an assistant turn; a conversation must start with a system or user message`);
    const before = render(i, true);
    const upto = render(i + 1, false);
    if (!full.startsWith(upto) || !upto.startsWith(before)) {
      fail(`${where}: the chat template renders earlier turns differently once later ones are added, so assistant turns cannot be located; use {"input_ids", "labels"} records`);
    }
    let end = upto.length;
    while (end > before.length && /\s/.test(upto[end - 1])) end--;
    if (end > before.length) spans.push([before.length, end]);
  });
  const ids: number[] = [];
  const labels: number[] = [];
  let pos = 0;
  const push = (a: number, b: number, train: boolean) => {
    if (b <= a) return;
    for (const id of tok.encode(full.slice(a, b), { addSpecialTokens: false })) {
      ids.push(id);
      labels.push(train ? id : IGNORE);
    }
  };
  for (const [a, b] of spans) {
    push(pos, a, false);
    push(a, b, true);
    pos = b;
  }
  push(pos, full.length, false);
  return { ids, labels };
}

function idArray(v: unknown, key: string, where: string, check: (x: number) => boolean, what: string): number[] {
  if (!Array.isArray(v) || v.length === 0) fail(`${where}: "${key}" must be a non-empty array of integers`);
  v.forEach((x, i) => {
    if (typeof x !== 'number' || !Number.isInteger(x) || !check(x)) fail(`${where}: ${key}[${i}] = ${JSON.stringify(x)} is not ${what}`);
  });
  return v as number[];
}

function parseRecord(line: string, where: string, opts: DataOptions): Item | null {
  let rec: unknown;
  try {
    rec = JSON.parse(line);
  } catch (e) {
    fail(`${where}: not valid JSON (${(e as Error).message.split('\n')[0]})`);
  }
  if (!rec || typeof rec !== 'object' || Array.isArray(rec)) fail(`${where}: expected a JSON object with "text", "messages" or "input_ids"`);
  const o = rec as Record<string, unknown>;
  const inVocab = (x: number) => x >= 0 && x < opts.vocabSize;
  if (o.input_ids !== undefined) {
    const ids = idArray(o.input_ids, 'input_ids', where, inVocab, `a token id in [0, ${opts.vocabSize})`);
    if (o.labels === undefined || o.labels === null) return { ids, labels: ids.slice(), stream: false, sepLabel: opts.eosId, where };
    const labels = idArray(o.labels, 'labels', where, (x) => x === IGNORE || inVocab(x), `-100 or a token id in [0, ${opts.vocabSize})`);
    if (labels.length !== ids.length) fail(`${where}: "labels" has ${labels.length} entries, "input_ids" has ${ids.length}`);
    return { ids, labels, stream: false, sepLabel: IGNORE, where };
  }
  if (o.messages !== undefined) {
    const tok = needTokenizer(opts, where, '"messages"');
    const { ids, labels } = tokenizeChat(tok, checkMessages(o.messages, where), where);
    return { ids, labels, stream: false, sepLabel: IGNORE, where };
  }
  if (o.text !== undefined) {
    if (typeof o.text !== 'string') fail(`${where}: "text" must be a string`);
    if (o.text.length === 0) return null;
    const ids = needTokenizer(opts, where, '"text"').encode(o.text);
    return { ids, labels: ids.slice(), stream: true, sepLabel: opts.eosId, where };
  }
  const keys = Object.keys(o);
  fail(`${where}: record has none of "text", "messages", "input_ids" (keys: ${keys.length ? keys.map((k) => `"${k}"`).join(', ') : 'none'})`);
}

/** Reads and tokenizes one data file into items (not yet packed). */
function readItems(file: string, opts: DataOptions, warnings: string[]): Item[] {
  const text = readText(file);
  if (!isJsonLines(file)) {
    if (text.trim().length === 0) return [];
    const ids = encodeLong(needTokenizer(opts, file, 'plain text'), text);
    return [{ ids, labels: ids.slice(), stream: true, sepLabel: opts.eosId, where: file }];
  }
  const items: Item[] = [];
  let noLoss = 0;
  let firstNoLoss = '';
  const lines = text.split('\n');
  for (let i = 0; i < lines.length; i++) {
    const line = lines[i].trim();
    if (line.length === 0) continue;
    const where = `${file}:${i + 1}`;
    const item = parseRecord(line, where, opts);
    if (!item || item.ids.length === 0) continue;
    if (!item.labels.some((l, t) => l !== IGNORE && t > 0) && item.sepLabel === IGNORE) {
      if (noLoss++ === 0) firstNoLoss = where;
      continue;
    }
    items.push(item);
  }
  if (noLoss > 0) warnings.push(`${noLoss} record(s) have no tokens to learn (no assistant turn / all labels -100), skipped; first: ${firstNoLoss}`);
  return items;
}

// ---------------------------------------------------------------------------------------------- packing

function pack(items: Item[], opts: DataOptions, warnings: string[]): PackedData {
  const T = opts.seqLen;
  const ids: number[] = [];
  const labels: number[] = [];
  let fill = 0; // tokens in the current window
  const put = (id: number, label: number) => {
    ids.push(id);
    labels.push(label);
    fill = (fill + 1) % T;
  };
  const padWindow = () => {
    while (fill !== 0) put(opts.eosId, IGNORE);
  };
  let truncated = 0;
  let firstTruncated = '';
  for (const it of items) {
    if (it.stream) {
      for (let t = 0; t < it.ids.length; t++) put(it.ids[t], it.labels[t]);
      put(opts.eosId, it.sepLabel);
      continue;
    }
    let n = it.ids.length;
    if (n > T) {
      if (truncated++ === 0) firstTruncated = `${it.where} (${n} tokens)`;
      n = T;
    }
    if (fill > 0 && fill + n + 1 > T) padWindow(); // the record and its separator must fit
    for (let t = 0; t < n; t++) put(it.ids[t], it.labels[t]);
    if (fill !== 0) put(opts.eosId, it.sepLabel); // a record that filled the window exactly needs no separator
  }
  padWindow();
  if (truncated > 0) warnings.push(`${truncated} record(s) longer than --seq-len ${T} were truncated to ${T} tokens; first: ${firstTruncated}`);
  return new PackedData(Int32Array.from(ids), Int32Array.from(labels), T);
}

/** Reads, tokenizes and packs a data file. Throws a GravityError when nothing is left to train on. */
export function loadData(file: string, opts: DataOptions): LoadedData {
  if (!Number.isInteger(opts.seqLen) || opts.seqLen < 2) fail(`--seq-len ${opts.seqLen}: must be a whole number >= 2`);
  const warnings: string[] = [];
  const items = readItems(file, opts, warnings);
  if (items.length === 0) fail(`${file}: no training examples (the file is empty or every record was skipped)`);
  const data = pack(items, opts, warnings);
  if (data.lossTokens() === 0) fail(`${file}: no tokens to learn from (every label is -100)`);
  return { data, records: items.length, warnings };
}

// ---------------------------------------------------------------------------------------------- order

/** mulberry32 over a 32-bit hash of (seed, stream): small, fast, and identical on every platform. */
function rng(seed: number, stream: number): () => number {
  let s = (Math.imul(seed ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul(stream + 0x632be5ab, 0xc2b2ae35)) >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

export function permutation(n: number, seed: number, stream: number): number[] {
  const p = Array.from({ length: n }, (_, i) => i);
  const r = rng(seed, stream);
  for (let i = n - 1; i > 0; i--) {
    const j = Math.floor(r() * (i + 1));
    [p[i], p[j]] = [p[j], p[i]];
  }
  return p;
}

const SPLIT_STREAM = 0x7fffffff;

/**
 * Seeded split of windows into train and validation (disjoint by construction: each window goes to exactly one
 * side). At least one window stays on each side.
 */
export function splitValidation(data: PackedData, fraction: number, seed: number): { train: PackedData; val: PackedData } {
  if (!(fraction > 0 && fraction < 1)) fail(`--val-fraction ${fraction}: must be between 0 and 1`);
  if (data.count < 2) fail(`--val-fraction: the data packs into ${data.count} window of --seq-len ${data.seqLen} tokens; need at least 2 to split off validation (use --val-data)`);
  const nVal = Math.min(data.count - 1, Math.max(1, Math.round(data.count * fraction)));
  const p = permutation(data.count, seed, SPLIT_STREAM);
  const val = p.slice(0, nVal).sort((a, b) => a - b);
  const train = p.slice(nVal).sort((a, b) => a - b);
  return { train: data.subset(train), val: data.subset(val) };
}

/** Number of validation windows that are token-for-token identical to a training window (duplicated data). */
export function overlapCount(train: PackedData, val: PackedData): number {
  const T = train.seqLen;
  const seen = new Set<string>();
  for (let w = 0; w < train.count; w++) seen.add(train.ids.subarray(w * T, (w + 1) * T).join(','));
  let n = 0;
  for (let w = 0; w < val.count; w++) if (seen.has(val.ids.subarray(w * T, (w + 1) * T).join(','))) n++;
  return n;
}

/**
 * The batch order: epoch e visits the training windows in permutation(seed, e); sample g of the run (counting
 * micro-batches of every step) is window perm_{g / N}[g mod N]. So the micro-batches of step s depend only on
 * (seed, s), and a resumed run sees exactly the batches it would have seen.
 */
export class BatchSchedule {
  private cachedEpoch = -1;
  private perm: number[] = [];

  constructor(readonly data: PackedData, readonly batchSize: number, readonly gradAccum: number, readonly seed: number) {
    if (!Number.isInteger(batchSize) || batchSize < 1) fail(`--batch-size ${batchSize}: must be a whole number >= 1`);
    if (!Number.isInteger(gradAccum) || gradAccum < 1) fail(`--grad-accum ${gradAccum}: must be a whole number >= 1`);
  }

  get samplesPerStep(): number {
    return this.batchSize * this.gradAccum;
  }

  /** optimizer steps for `epochs` passes over the training windows (at least 1) */
  stepsFor(epochs: number): number {
    return Math.max(1, Math.ceil((epochs * this.data.count) / this.samplesPerStep));
  }

  /** epoch (fractional) reached after `steps` steps */
  epochAt(steps: number): number {
    return (steps * this.samplesPerStep) / this.data.count;
  }

  private windowAt(g: number): number {
    const n = this.data.count;
    const e = Math.floor(g / n);
    if (e !== this.cachedEpoch) {
      this.perm = permutation(n, this.seed, e);
      this.cachedEpoch = e;
    }
    return this.perm[g % n];
  }

  /** micro-batches for the step that follows `stepsDone` completed steps */
  microBatches(stepsDone: number): Batch[] {
    const out: Batch[] = [];
    for (let m = 0; m < this.gradAccum; m++) {
      const base = (stepsDone * this.gradAccum + m) * this.batchSize;
      const idx: number[] = [];
      for (let b = 0; b < this.batchSize; b++) idx.push(this.windowAt(base + b));
      out.push(this.data.batch(idx));
    }
    return out;
  }
}

/** All validation windows in order, in batches of `batchSize` (the last one may be smaller). */
export function evalBatches(val: PackedData, batchSize: number): Batch[] {
  const out: Batch[] = [];
  for (let i = 0; i < val.count; i += batchSize) {
    out.push(val.batch(Array.from({ length: Math.min(batchSize, val.count - i) }, (_, k) => i + k)));
  }
  return out;
}

