/**
 * `gravity forward`: one forward pass over a batch of ids from JSON; writes logits [batch, seq, vocab] F32 and,
 * with --attention-maps, attention.{layer} [batch, heads, seq, seq] F32, to a safetensors file (atomically).
 */
import { readFileSync } from 'node:fs';
import { basename } from 'node:path';
import { GravityError, fail } from '../errors.js';
import { writeSafetensors } from '../io/safetensors.js';
import type { HostTensor } from '../tensor/dtype.js';
import { flag, parseCommand, required } from './args.js';
import { loadFromArgs, MODEL_OPTIONS, MODEL_USAGE } from './model-args.js';
import { progress } from './progress.js';

export const usage = `usage: gravity forward [--model DIR] --input IDS.json --out OUT.safetensors [options]

Runs the model once over every position and saves the logits.
IDS.json: {"input_ids": [[...], ...], "attention_mask": [[...], ...]} (mask optional: 1 = token, 0 = left padding).

  --input FILE           the ids (rectangular: every row the same length)
  --out FILE             safetensors output: logits F32 [batch, seq, vocab]
  --attention-maps       also write attention.{layer} F32 [batch, heads, seq, seq]
${MODEL_USAGE}
`;

const OPTIONS = {
  ...MODEL_OPTIONS,
  input: { type: 'string', short: 'i' },
  out: { type: 'string', short: 'o' },
  'attention-maps': { type: 'boolean' },
} as const;

export interface ForwardInput {
  ids: number[][];
  mask: number[][] | undefined;
}

/** Validates the JSON shape (not yet the vocabulary, which needs the model): rectangular integer rows. */
export function parseForwardInput(text: string, file: string): ForwardInput {
  const label = basename(file);
  let j: unknown;
  try {
    j = JSON.parse(text);
  } catch (e) {
    fail(`${label}: invalid JSON (${(e as Error).message})`);
  }
  if (!j || typeof j !== 'object' || Array.isArray(j)) fail(`${label}: expected an object {"input_ids": [[...]], "attention_mask"?: [[...]]}`);
  const o = j as Record<string, unknown>;
  const matrix = (key: string, check: (x: number) => boolean, what: string): number[][] => {
    const m = o[key];
    if (!Array.isArray(m) || m.length === 0) fail(`${label}: "${key}" must be a non-empty array of rows`);
    let width = -1;
    m.forEach((row, b) => {
      if (!Array.isArray(row)) fail(`${label}: ${key}[${b}] is not an array`);
      if (row.length === 0) fail(`${label}: ${key}[${b}] is empty`);
      if (width < 0) width = row.length;
      else if (row.length !== width) fail(`${label}: ${key}[${b}] has ${row.length} entries, ${key}[0] has ${width} (rows must be the same length; pad on the left and use attention_mask)`);
      row.forEach((x, t) => {
        if (typeof x !== 'number' || !check(x)) fail(`${label}: ${key}[${b}][${t}] = ${JSON.stringify(x)} is not ${what}`);
      });
    });
    return m as number[][];
  };
  const ids = matrix('input_ids', Number.isInteger, 'a token id (integer)');
  let mask: number[][] | undefined;
  if (o.attention_mask !== undefined && o.attention_mask !== null) {
    mask = matrix('attention_mask', (x) => x === 0 || x === 1, '0 or 1');
    if (mask.length !== ids.length || mask[0].length !== ids[0].length) {
      fail(`${label}: attention_mask is [${mask.length}, ${mask[0].length}] but input_ids is [${ids.length}, ${ids[0].length}]`);
    }
    mask.forEach((row, b) => {
      const first = row.indexOf(1);
      if (first < 0) fail(`${label}: attention_mask[${b}] has no real token (all zeros)`);
      const bad = row.indexOf(0, first);
      if (bad >= 0) fail(`${label}: attention_mask[${b}][${bad}] is 0 after a 1; only left padding is supported`);
    });
  }
  for (const key of Object.keys(o)) {
    if (key !== 'input_ids' && key !== 'attention_mask') fail(`${label}: unknown key "${key}" (expected input_ids, attention_mask)`);
  }
  return { ids, mask };
}

export function checkVocab(ids: number[][], vocab: number, label: string): void {
  ids.forEach((row, b) =>
    row.forEach((x, t) => {
      if (x < 0 || x >= vocab) fail(`${label}: input_ids[${b}][${t}] = ${x} is out of the vocabulary (${vocab})`);
    }),
  );
}

export async function run(argv: string[]): Promise<number> {
  const v = parseCommand(argv, OPTIONS, usage);
  if (!v) return 0;
  const inFile = required(v, 'input', usage);
  const outFile = required(v, 'out', usage);
  let text: string;
  try {
    text = readFileSync(inFile, 'utf8');
  } catch (e) {
    throw new GravityError(`${inFile}: cannot read (${(e as NodeJS.ErrnoException).code ?? (e as Error).message})`);
  }
  const { ids, mask } = parseForwardInput(text, inFile);
  const model = await loadFromArgs(v);
  try {
    const cfg = model.config;
    checkVocab(ids, cfg.vocabSize, basename(inFile));
    const B = ids.length;
    const T = ids[0].length;
    if (T > cfg.maxPositionEmbeddings) fail(`${basename(inFile)}: ${T} positions exceed the model's context (${cfg.maxPositionEmbeddings})`);
    const maps: Float32Array[] | undefined = flag(v, 'attention-maps') ? [] : undefined;
    const spin = progress(`forward [${B} x ${T}]`);
    let logits: Float32Array;
    try {
      spin.status('running');
      const session = model.newSession(B, T);
      logits = await model.forward(session, ids, { attentionMask: mask, logits: 'all', attentionMaps: maps }); // [B, T, V]
    } finally {
      spin.done();
    }
    const V = cfg.vocabSize;
    if (logits.length !== B * T * V) fail(`model returned ${logits.length} logits, expected ${B}x${T}x${V}`);
    const tensors = new Map<string, HostTensor>([['logits', { dtype: 'F32', shape: [B, T, V], data: logits }]]);
    if (maps) {
      const H = cfg.numHeads;
      maps.forEach((m, l) => {
        if (m.length !== B * H * T * T) fail(`attention map of layer ${l} has ${m.length} values, expected ${B}x${H}x${T}x${T}`);
        tensors.set(`attention.${l}`, { dtype: 'F32', shape: [B, H, T, T], data: m }); // [batch, heads, seq, seq]
      });
    }
    writeSafetensors(outFile, tensors, { format: 'pt', attention: model.attention });
    return 0;
  } finally {
    model.dispose();
  }
}
