/**
 * A byte-level BPE trainer that writes a Hugging Face tokenizer.json (the Qwen2 layout: NFC, the Qwen split
 * regex, ByteLevel without its own regex). Small and exact rather than fast: words are counted once, then each
 * merge recounts pairs over the distinct words, which is cheap for templated task text.
 *
 * The Qwen regex isolates every `\p{N}` character, so numbers are always split into single digits and no merge
 * can join two digits: the property that makes column arithmetic learnable.
 */
import { fail } from '../errors.js';

export const QWEN_SPLIT =
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
// JS has no inline (?i:...) group; the contractions are lower case in our text and the splits differ only there
const JS_SPLIT = new RegExp(QWEN_SPLIT.replace('(?i:', '(?:'), 'gu');

/** GPT-2 bytes_to_unicode: every byte gets a printable character so BPE never sees raw control bytes. */
export function bytesToUnicode(): string[] {
  const bs: number[] = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n);
      n++;
    }
  }
  const map = new Array<string>(256);
  bs.forEach((b, i) => {
    map[b] = String.fromCodePoint(cs[i]);
  });
  return map;
}

export interface AddedToken {
  content: string;
  /** special tokens are dropped by decode(skipSpecialTokens) (eos, chat markers); <think> is not special */
  special: boolean;
}

export interface BpeOptions {
  /** most tokens in all: 256 bytes + merges + added tokens */
  vocabSize: number;
  /** a pair must occur at least this often to be merged (default 2) */
  minFrequency?: number;
  /** tokens matched before pre-tokenization, with ids after the merges, in this order */
  added: AddedToken[];
}

export interface BpeResult {
  tokenizerJson: Record<string, unknown>;
  merges: number;
  vocabSize: number;
  /** id of each added token */
  addedIds: Record<string, number>;
}

/** Cuts the added tokens out of the training text (they are never learned by BPE). */
function splitOnAdded(text: string, added: AddedToken[]): string[] {
  let parts = [text];
  for (const t of added) parts = parts.flatMap((p) => p.split(t.content));
  return parts.filter((p) => p.length > 0);
}

export function trainByteLevelBpe(texts: Iterable<string>, opts: BpeOptions): BpeResult {
  const numMerges = opts.vocabSize - 256 - opts.added.length;
  if (numMerges < 0) fail(`vocab size ${opts.vocabSize} is below 256 bytes + ${opts.added.length} added tokens`);
  const minFreq = opts.minFrequency ?? 2;
  const byteMap = bytesToUnicode();
  const enc = new TextEncoder();

  const wordFreq = new Map<string, number>();
  for (const text of texts) {
    for (const part of splitOnAdded(text.normalize('NFC'), opts.added)) {
      for (const piece of part.match(JS_SPLIT) ?? []) wordFreq.set(piece, (wordFreq.get(piece) ?? 0) + 1);
    }
  }
  // words as symbol arrays, in a fixed order so the result never depends on Map iteration quirks
  const words = [...wordFreq.entries()]
    .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
    .map(([w, f]) => ({ syms: [...enc.encode(w)].map((b) => byteMap[b]), f }));

  const vocab: Record<string, number> = {};
  for (let b = 0; b < 256; b++) vocab[byteMap[b]] = b;
  const merges: [string, string][] = [];
  while (merges.length < numMerges) {
    const counts = new Map<string, number>();
    for (const w of words) {
      for (let i = 0; i + 1 < w.syms.length; i++) {
        const k = w.syms[i] + '\u0000' + w.syms[i + 1];
        counts.set(k, (counts.get(k) ?? 0) + w.f);
      }
    }
    let best: string | null = null;
    let bestCount = 0;
    for (const [k, c] of counts) {
      // ties go to the smaller pair string: deterministic
      if (c > bestCount || (c === bestCount && best !== null && k < best)) {
        best = k;
        bestCount = c;
      }
    }
    if (best === null || bestCount < minFreq) break;
    const [a, b] = best.split('\u0000');
    const ab = a + b;
    if (vocab[ab] !== undefined) fail(`BPE: merge ${a} + ${b} repeats a token`);
    merges.push([a, b]);
    vocab[ab] = 255 + merges.length;
    for (const w of words) {
      if (w.syms.length < 2) continue;
      const out: string[] = [];
      for (let i = 0; i < w.syms.length; i++) {
        if (i + 1 < w.syms.length && w.syms[i] === a && w.syms[i + 1] === b) {
          out.push(ab);
          i++;
        } else out.push(w.syms[i]);
      }
      w.syms = out;
    }
  }

  const first = 256 + merges.length;
  const addedIds: Record<string, number> = {};
  const addedTokens = opts.added.map((t, i) => {
    addedIds[t.content] = first + i;
    return { id: first + i, content: t.content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: t.special };
  });
  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false };
  const tokenizerJson = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: addedTokens,
    normalizer: { type: 'NFC' },
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [{ type: 'Split', pattern: { Regex: QWEN_SPLIT }, behavior: 'Isolated', invert: false }, byteLevel],
    },
    post_processor: byteLevel,
    decoder: byteLevel,
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: '',
      end_of_word_suffix: '',
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab,
      merges,
    },
  };
  return { tokenizerJson, merges: merges.length, vocabSize: first + opts.added.length, addedIds };
}

/**
 * A ChatML template (Qwen style: `<|im_start|>role\ncontent<|im_end|>\n`, generation prompt
 * `<|im_start|>assistant\n`) without Qwen's default system message, which would cost every short example
 * ~10 tokens of nothing; a system message is rendered when given.
 */
export const CHATML_TEMPLATE =
  "{%- for message in messages %}{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}{%- endfor %}" +
  "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";

/** tokenizer_config.json for a ChatML tokenizer whose added tokens are `added` (ids from BpeResult). */
export function chatmlTokenizerConfig(res: BpeResult, added: AddedToken[], modelMaxLength: number): Record<string, unknown> {
  const decoder: Record<string, unknown> = {};
  for (const t of added) {
    decoder[String(res.addedIds[t.content])] = { content: t.content, single_word: false, lstrip: false, rstrip: false, normalized: false, special: t.special };
  }
  return {
    add_bos_token: false,
    add_prefix_space: false,
    added_tokens_decoder: decoder,
    additional_special_tokens: ['<|im_start|>', '<|im_end|>'],
    bos_token: null,
    chat_template: CHATML_TEMPLATE,
    clean_up_tokenization_spaces: false,
    eos_token: '<|im_end|>',
    errors: 'replace',
    model_max_length: modelMaxLength,
    pad_token: '<|endoftext|>',
    split_special_tokens: false,
    tokenizer_class: 'Qwen2Tokenizer',
    unk_token: null,
  };
}
