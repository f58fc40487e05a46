/**
 * A byte-level BPE tokenizer (Qwen2, Llama 3, GPT-2 style) between tokenizer.json and GGUF's tokenizer.ggml.* keys,
 * as llama.cpp's converter writes them: tokens by id, token types (1 normal, 3 control, 4 user-defined, 5 unused),
 * merges as "a b", the pre-tokenizer by name (tokenizer.ggml.pre).
 */
import { fail } from '../errors.js';
import type { GgufValue } from './gguf-write.js';

/** the split regexes of the pre-tokenizers llama.cpp names (llama-vocab.cpp) that we read and write */
const PRE: Record<string, { regex: string; nfc: boolean; ignoreMerges: boolean }> = {
  qwen2: {
    regex: "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    nfc: true,
    ignoreMerges: false,
  },
  'llama-bpe': {
    regex: "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+",
    nfc: false,
    ignoreMerges: true,
  },
  gpt2: {
    regex: "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
    nfc: false,
    ignoreMerges: false,
  },
};

type Json = Record<string, any>;

const BYTE_LEVEL = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false };

/** the split regex of a tokenizer.json pre-tokenizer (Sequence[Split, ByteLevel] or a ByteLevel with its own regex) */
function splitRegex(pre: Json | null): string | null {
  if (!pre) return null;
  if (pre.type === 'ByteLevel' && pre.use_regex !== false) return PRE.gpt2.regex;
  if (pre.type !== 'Sequence') return null;
  const split = (pre.pretokenizers ?? []).find((p: Json) => p.type === 'Split');
  return typeof split?.pattern?.Regex === 'string' ? split.pattern.Regex : null;
}

/**
 * tokenizer.json (+ tokenizer_config.json) as GGUF metadata for a vocabulary of `vocabSize` ids (ids past the
 * tokenizer's are written as unused "[PAD<id>]", as llama.cpp does). Only byte-level BPE tokenizers whose
 * pre-tokenizer is one llama.cpp names can be written.
 */
export function tokenizerToGguf(tj: Json, tc: Json | null, vocabSize: number): Map<string, GgufValue> {
  const model = tj.model ?? {};
  if (model.type !== 'BPE' || tj.decoder?.type !== 'ByteLevel') fail(`tokenizer.json: only byte-level BPE tokenizers can go into a GGUF file (this one is ${model.type ?? 'unknown'} with a ${tj.decoder?.type ?? 'missing'} decoder)`);
  const regex = splitRegex(tj.pre_tokenizer);
  const pre = Object.entries(PRE).find(([, p]) => p.regex === regex)?.[0];
  if (!pre) fail(`tokenizer.json: its pre-tokenizer (${regex ?? 'none'}) is not one llama.cpp names (qwen2, llama-bpe, gpt2), so a GGUF file could not say how to split text`);
  const tokens: string[] = new Array(vocabSize).fill('');
  const types: number[] = new Array(vocabSize).fill(0);
  for (const [tok, id] of Object.entries(model.vocab as Record<string, number>)) {
    if (id < vocabSize) { tokens[id] = tok; types[id] = 1; }
  }
  for (const a of (tj.added_tokens ?? []) as Json[]) {
    if (a.id < vocabSize) { tokens[a.id] = a.content; types[a.id] = a.special ? 3 : 4; }
  }
  for (let i = 0; i < vocabSize; i++) if (types[i] === 0) { tokens[i] = `[PAD${i}]`; types[i] = 5; }
  const merges = (model.merges as (string | string[])[]).map((m) => (Array.isArray(m) ? m.join(' ') : m));
  const meta = new Map<string, GgufValue>([
    ['tokenizer.ggml.model', { t: 'str', v: 'gpt2' }],
    ['tokenizer.ggml.pre', { t: 'str', v: pre }],
    ['tokenizer.ggml.tokens', { t: 'str[]', v: tokens }],
    ['tokenizer.ggml.token_type', { t: 'i32[]', v: types }],
    ['tokenizer.ggml.merges', { t: 'str[]', v: merges }],
    ['tokenizer.ggml.add_bos_token', { t: 'bool', v: tc?.add_bos_token === true }],
  ]);
  const pad = typeof tc?.pad_token === 'string' ? tokens.indexOf(tc.pad_token) : -1;
  if (pad >= 0) meta.set('tokenizer.ggml.padding_token_id', { t: 'u32', v: pad });
  if (typeof tc?.chat_template === 'string') meta.set('tokenizer.chat_template', { t: 'str', v: tc.chat_template });
  return meta;
}

/** GGUF tokenizer metadata as tokenizer.json and tokenizer_config.json objects; null where the file has no gpt2 vocabulary */
export function tokenizerFromGguf(meta: Record<string, unknown>, label: string): { json: Json; config: Json } | null {
  const kind = meta['tokenizer.ggml.model'];
  if (kind === undefined || kind === 'no_vocab') return null;
  if (kind !== 'gpt2') fail(`${label}: tokenizer.ggml.model is '${String(kind)}'; only byte-level BPE ('gpt2') vocabularies are read`);
  const tokens = meta['tokenizer.ggml.tokens'];
  const types = meta['tokenizer.ggml.token_type'];
  const merges = meta['tokenizer.ggml.merges'];
  if (!Array.isArray(tokens) || !tokens.every((t) => typeof t === 'string')) fail(`${label}: tokenizer.ggml.tokens is missing or not a list of strings`);
  if (!Array.isArray(merges)) fail(`${label}: tokenizer.ggml.merges is missing`);
  if (types !== undefined && (!Array.isArray(types) || types.length !== tokens.length)) fail(`${label}: tokenizer.ggml.token_type does not have one entry per token`);
  const preName = String(meta['tokenizer.ggml.pre'] ?? 'gpt2');
  const pre = PRE[preName === 'default' ? 'gpt2' : preName];
  if (!pre) fail(`${label}: tokenizer.ggml.pre '${preName}' is not a pre-tokenizer we know (qwen2, llama-bpe, gpt2)`);
  const vocab: Record<string, number> = {};
  const added: Json[] = [];
  (tokens as string[]).forEach((t, id) => {
    const type = Array.isArray(types) ? Number(types[id]) : 1;
    if (type === 3 || type === 4) added.push({ id, content: t, single_word: false, lstrip: false, rstrip: false, normalized: type === 4, special: type === 3 });
    else if (type !== 5) vocab[t] = id;
  });
  const json = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: added,
    normalizer: pre.nfc ? { type: 'NFC' } : null,
    pre_tokenizer: { type: 'Sequence', pretokenizers: [{ type: 'Split', pattern: { Regex: pre.regex }, behavior: 'Isolated', invert: false }, BYTE_LEVEL] },
    post_processor: BYTE_LEVEL,
    decoder: BYTE_LEVEL,
    model: {
      type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: '', end_of_word_suffix: '', fuse_unk: false,
      byte_fallback: false, ignore_merges: pre.ignoreMerges, vocab, merges: (merges as string[]).map((m) => String(m).split(' ')),
    },
  };
  const tokenAt = (k: string) => {
    const id = meta[k];
    return typeof id === 'number' && id >= 0 && id < tokens.length ? (tokens as string[])[id] : null;
  };
  const config: Json = { add_bos_token: meta['tokenizer.ggml.add_bos_token'] === true, bos_token: tokenAt('tokenizer.ggml.bos_token_id'), eos_token: tokenAt('tokenizer.ggml.eos_token_id'), pad_token: tokenAt('tokenizer.ggml.padding_token_id') };
  if (typeof meta['tokenizer.chat_template'] === 'string') config.chat_template = meta['tokenizer.chat_template'];
  return { json, config };
}
