/**
 * The decoding loop: prefill the prompt into a session's KV cache, then one token per forward call until an
 * eos id, a stop string, the token budget or the context limit. Batch 1; text only when a tokenizer is given.
 */
import { fail } from '../errors.js';
import type { CausalLM } from '../model/types.js';
import type { TextTokenizer } from '../tokenizer/tokenizer.js';
import { Sampler, type SamplingOptions } from './sampling.js';

export type FinishReason = 'stop' | 'length' | 'eos';

export interface GenerateOptions extends SamplingOptions {
  /** most new tokens (default 128) */
  maxTokens?: number;
  /** rng seed for sampling (default: random) */
  seed?: number;
  /** ids that end generation (included in outputIds, like HF). Default: the model's eosTokenIds (LoadedModel:
   * generation_config.json), else config.eosTokenIds. */
  eosTokenIds?: readonly number[];
  /** strings that end generation; the text is cut before the stop string, which is never streamed. */
  stop?: readonly string[];
  /** needed for text and stop strings */
  tokenizer?: TextTokenizer | null;
  /** drop special tokens from the text (default true) */
  skipSpecialTokens?: boolean;
  /** cap on prompt + output tokens (default and upper bound: config.maxPositionEmbeddings) */
  maxContext?: number;
  /** prompt tokens per forward call while prefilling, bounding activation memory (default 512) */
  prefillChunk?: number;
  /**
   * greedy decoding and plain temperature sampling read every token's logits to the host instead of decoding on the
   * device (the model's greedyStream / sampleStream)
   */
  noDeviceGreedy?: boolean;
  /**
   * each step's logits [vocab] before the draw (read to the host every step, so no device-side decoding); every step
   * has its own array, which generate does not modify, so the callback may keep it
   */
  onLogits?: (logits: Float32Array) => void;
  /** called for every generated token (the callback form of generateStream) */
  onToken?: (t: GeneratedToken) => void;
}

export interface GeneratedToken {
  id: number;
  /** index in outputIds */
  index: number;
  /** newly final text ('' while a multibyte character or a possible stop-string prefix is held back) */
  text: string;
}

export interface GenerateResult {
  promptIds: number[];
  outputIds: number[];
  /** decoded output (special tokens skipped unless asked), cut before a stop string; absent without tokenizer */
  text?: string;
  finishReason: FinishReason;
  /**
   * Wall times: prefillMs from the call to the first output token (the prompt's forward pass and the first sample),
   * decodeMs from there to the last token (outputIds.length - 1 decode steps).
   */
  timings: { prefillMs: number; decodeMs: number };
}

/** Rejects non-integers and ids outside [0, vocabSize) naming the first bad position. */
export function checkTokenIds(ids: readonly number[], vocabSize: number, what = 'token id'): void {
  for (let i = 0; i < ids.length; i++) {
    const id = ids[i];
    if (!Number.isInteger(id)) fail(`${what} ${id} at position ${i} is not an integer`);
    if (id < 0 || id >= vocabSize) fail(`${what} ${id} at position ${i} is out of the vocabulary (${vocabSize})`);
  }
}

/** Length of the longest suffix of `text` that is a proper prefix of some stop string (must be held back). */
function heldBack(text: string, stops: readonly string[]): number {
  let best = 0;
  for (const s of stops) {
    for (let n = Math.min(s.length - 1, text.length); n > best; n--) {
      if (text.endsWith(s.slice(0, n))) {
        best = n;
        break;
      }
    }
  }
  return best;
}

/**
 * Yields every generated token as it is produced and returns the summary. Breaking out of the loop early
 * (return()) simply stops decoding.
 */
export async function* generateStream(
  model: CausalLM,
  promptIds: readonly number[],
  opts: GenerateOptions = {},
): AsyncGenerator<GeneratedToken, GenerateResult, void> {
  const cfg = model.config;
  const V = cfg.vocabSize;
  const maxTokens = opts.maxTokens ?? 128;
  if (!Number.isInteger(maxTokens) || maxTokens < 0) fail(`max tokens must be a whole number >= 0, got ${maxTokens}`);
  const maxContext = Math.min(cfg.maxPositionEmbeddings, opts.maxContext ?? Infinity);
  if (promptIds.length === 0) fail('the prompt is empty: give at least one token');
  checkTokenIds(promptIds, V);
  if (promptIds.length >= maxContext) {
    fail(`the prompt has ${promptIds.length} tokens; the context limit is ${maxContext}`);
  }
  const stops = (opts.stop ?? []).filter((s) => s.length > 0);
  const tok = opts.tokenizer ?? null;
  if (stops.length > 0 && !tok) fail('stop strings need a tokenizer (the model folder has no tokenizer.json)');
  const prefillChunk = opts.prefillChunk ?? 512;
  if (!Number.isInteger(prefillChunk) || prefillChunk < 1) fail(`prefill chunk must be >= 1, got ${prefillChunk}`);
  const sampler = new Sampler(opts);
  // a LoadedModel knows generation_config.json's eos ids, which may differ from config.json's
  const modelEos = (model as { eosTokenIds?: readonly number[] }).eosTokenIds;
  const eos = new Set(opts.eosTokenIds ?? modelEos ?? cfg.eosTokenIds);

  const prompt = [...promptIds];
  const t0 = performance.now();
  let tFirst = -1;
  const result: GenerateResult = { promptIds: prompt, outputIds: [], finishReason: 'length', timings: { prefillMs: 0, decodeMs: 0 } };
  if (maxTokens === 0) {
    if (tok) result.text = '';
    return result;
  }

  // Total tokens (prompt + output) never exceed maxContext; the last output token is never fed back, so the
  // cache needs one slot less than that.
  const total = Math.min(maxContext, prompt.length + maxTokens);
  const session = model.newSession(1, total - 1);
  const readRow = (logits: Float32Array): Float32Array => {
    if (logits.length < V) fail(`the model returned ${logits.length} logits, expected ${V}`);
    return logits.subarray(0, V); // [1, vocab] -> [vocab]
  };

  // the session's KV cache is freed however the loop ends (finished, thrown, or the caller stopped iterating)
  let greedy: AsyncGenerator<Int32Array, void, void> | null = null;
  try {
    let logits: Float32Array | null = null;
    for (let s = 0; s < prompt.length; s += prefillChunk) {
      logits = await model.forward(session, [prompt.slice(s, s + prefillChunk)], { logits: 'last' });
    }
    let row: Float32Array | null = readRow(logits!);
    // greedy, or sampling (temperature, top-k with top-p / min-p), with or without a repetition penalty: the model may
    // keep decoding on the device a few tokens ahead (no logits readback); sampling draws the same uniforms from the
    // sampler's generator, in order
    const o = sampler.options;
    const plain = !opts.noDeviceGreedy && !opts.onLogits;
    // the repetition penalty goes with the stream: each row's ids so far (the model keeps a mask of them on the device)
    const penalty = () => (o.repetitionPenalty === 1 ? undefined : { value: o.repetitionPenalty, history: [history.slice()] });
    const onDevice = plain && o.temperature === 0 && !!model.greedyStream;
    // (the stream draws on the host what the device cannot: top-p / min-p without top-k)
    const sampleOnDevice = plain && o.temperature > 0 && !!model.sampleStream;

    const stream = tok?.stream({ skipSpecialTokens: opts.skipSpecialTokens ?? true }) ?? null;
    const history = prompt.slice();
    const out = result.outputIds;
    let text = '';
    let emitted = 0; // chars of `text` already streamed
    const maxStop = stops.reduce((m, s) => Math.max(m, s.length), 0);

    for (;;) {
      let id: number;
      if (row) {
        opts.onLogits?.(row);
        id = sampler.sample(row, history);
      }
      else {
        const r = await greedy!.next();
        if (r.done) fail('greedy decoding ended early');
        id = r.value[0];
      }
      out.push(id);
      history.push(id);
      const now = performance.now();
      if (tFirst < 0) tFirst = now;
      result.timings = { prefillMs: tFirst - t0, decodeMs: now - tFirst };
      let finish: FinishReason | null = null;
      if (eos.has(id)) finish = 'eos';
      else if (out.length >= maxTokens || history.length >= total) finish = 'length';

      let delta = '';
      if (stream) {
        const before = text.length;
        text += stream.push(id);
        if (finish) text += stream.flush();
        let cut = -1;
        if (stops.length > 0 && text.length > before) {
          // a stop string that completes now must end inside the new text
          const from = Math.max(0, before - maxStop + 1);
          for (const s of stops) {
            const at = text.indexOf(s, from);
            if (at >= 0 && (cut < 0 || at < cut)) cut = at;
          }
        }
        if (cut >= 0) {
          text = text.slice(0, cut);
          finish = 'stop';
        }
        const safe = finish ? text.length : text.length - heldBack(text, stops);
        if (safe > emitted) {
          delta = text.slice(emitted, safe);
          emitted = safe;
        }
      }

      const ev: GeneratedToken = { id, index: out.length - 1, text: delta };
      opts.onToken?.(ev);
      yield ev;
      if (finish) {
        result.finishReason = finish;
        if (stream) result.text = text;
        return result;
      }
      if (onDevice) {
        greedy ??= model.greedyStream!(session, [id], undefined, penalty());
        row = null;
      } else if (sampleOnDevice) {
        greedy ??= model.sampleStream!(session, [id], { temperature: o.temperature, topK: o.topK, topP: o.topP, minP: o.minP }, () => sampler.rng.next(), undefined, penalty());
        row = null;
      } else row = readRow(await model.forward(session, [[id]], { logits: 'last' }));
    }
  } finally {
    await greedy?.return();
    model.closeSession?.(session);
  }
}

/** Runs generateStream to the end (use opts.onToken to stream). */
export async function generate(
  model: CausalLM,
  promptIds: readonly number[],
  opts: GenerateOptions = {},
): Promise<GenerateResult> {
  const it = generateStream(model, promptIds, opts);
  for (;;) {
    const r = await it.next();
    if (r.done) return r.value;
  }
}
