/**
 * Log-probabilities for the OpenAI API: of each generated token under the model's own distribution (log-softmax of
 * the raw logits, before temperature, penalties or filters, as vLLM reports them), of each prompt token for echo,
 * and the top alternatives; in the legacy completions shape and the chat shape.
 */
import type { CausalLM } from '../model/types.js';
import type { TextTokenizer } from '../tokenizer/tokenizer.js';

export interface TokenLogprob {
  id: number;
  logprob: number;
  /** the k most likely tokens of that step, most likely first */
  top: { id: number; logprob: number }[];
}

/** token `id`'s log-probability in a row of logits, and the row's k most likely tokens (log-sum-exp in float64) */
export function pickLogprob(row: Float32Array, id: number, k: number): TokenLogprob {
  let mx = -Infinity;
  for (let i = 0; i < row.length; i++) if (row[i] > mx) mx = row[i];
  let sum = 0;
  for (let i = 0; i < row.length; i++) sum += Math.exp(row[i] - mx);
  const lse = mx + Math.log(sum);
  const top: { id: number; logprob: number }[] = [];
  if (k > 0) {
    // k is small: keep a sorted list of the best k
    for (let i = 0; i < row.length; i++) {
      const v = row[i];
      if (top.length === k && v <= top[k - 1].logprob) continue;
      let at = top.length;
      while (at > 0 && top[at - 1].logprob < v) at--;
      top.splice(at, 0, { id: i, logprob: v });
      if (top.length > k) top.pop();
    }
    for (const t of top) t.logprob -= lse;
  }
  return { id, logprob: row[id] - lse, top };
}

/** the prompt's tokens' log-probabilities (the first has none) from one forward pass over it */
export async function promptLogprobs(model: CausalLM, ids: number[], k: number): Promise<(TokenLogprob | null)[]> {
  const V = model.config.vocabSize;
  const s = model.newSession(1, ids.length);
  try {
    const logits = await model.forward(s, [ids], { logits: 'all' }); // [T, V]
    return ids.map((id, t) => (t === 0 ? null : pickLogprob(logits.subarray((t - 1) * V, t * V), id, k)));
  } finally {
    model.closeSession?.(s);
  }
}

export type TokenText = (id: number) => string;

/** a token's text: decoded with special tokens kept, or its id where the model has no tokenizer */
export function tokenText(tok: TextTokenizer | null): TokenText {
  return tok ? (id) => tok.decode([id], { skipSpecialTokens: false }) : (id) => String(id);
}

/** the completions API's logprobs object; text offsets count from `offset0` in the returned text */
export function completionLogprobs(items: (TokenLogprob | null)[], ids: number[], text: TokenText, offset0 = 0) {
  const tokens = ids.map(text);
  const text_offset: number[] = [];
  let at = offset0;
  for (const t of tokens) {
    text_offset.push(at);
    at += t.length;
  }
  return {
    tokens,
    token_logprobs: items.map((x) => (x ? x.logprob : null)),
    top_logprobs: items.map((x) => (x ? Object.fromEntries(x.top.map((t) => [text(t.id), t.logprob])) : null)),
    text_offset,
  };
}

const bytesOf = (s: string) => Array.from(new TextEncoder().encode(s));

/** the chat API's logprobs object */
export function chatLogprobs(items: TokenLogprob[], text: TokenText) {
  return {
    content: items.map((x) => ({
      token: text(x.id), logprob: x.logprob, bytes: bytesOf(text(x.id)),
      top_logprobs: x.top.map((t) => ({ token: text(t.id), logprob: t.logprob, bytes: bytesOf(text(t.id)) })),
    })),
  };
}
