/**
 * Next-token selection from a logits row, with Hugging Face `generate()` semantics and order:
 * repetition penalty -> temperature -> top-k -> top-p -> min-p -> draw (or argmax when temperature is 0).
 */
import { fail } from '../errors.js';

export interface SamplingOptions {
  /** 0 = greedy (argmax). Default 1. */
  temperature?: number;
  /** keep the k highest logits (ties with the k-th are kept, as HF does); 0/undefined = off */
  topK?: number;
  /** nucleus: keep the smallest top set whose probability reaches p; 1/undefined = off */
  topP?: number;
  /** drop tokens whose probability is below minP * (top probability); 0/undefined = off */
  minP?: number;
  /** HF CTRL penalty over tokens already in prompt + output: logit > 0 divided, < 0 multiplied; 1 = off */
  repetitionPenalty?: number;
}

/**
 * xoshiro128** (Blackman & Vigna) seeded through splitmix32: fast, 128-bit state, good equidistribution, and
 * reproducible across platforms because it is all 32-bit integer math. A seed gives the same stream everywhere.
 */
export class Rng {
  private s = new Uint32Array(4);

  constructor(seed: number) {
    if (!Number.isFinite(seed)) fail(`seed must be a finite number, got ${seed}`);
    // splitmix32 expands the (possibly small) seed into a non-zero 128-bit state
    let x = (Math.trunc(seed) ^ Math.trunc(seed / 2 ** 32)) >>> 0;
    for (let i = 0; i < 4; i++) {
      x = (x + 0x9e3779b9) >>> 0;
      let z = x;
      z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
      z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
      this.s[i] = (z ^ (z >>> 16)) >>> 0;
    }
  }

  /** Next 32 random bits. */
  nextU32(): number {
    const s = this.s;
    const result = Math.imul(rotl(Math.imul(s[1], 5) >>> 0, 7), 9) >>> 0;
    const t = (s[1] << 9) >>> 0;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return result;
  }

  /** Uniform in [0, 1) with 53 random bits. */
  next(): number {
    const hi = this.nextU32() >>> 5; // 27 bits
    const lo = this.nextU32() >>> 6; // 26 bits
    return (hi * 67108864 + lo) / 9007199254740992;
  }
}

function rotl(x: number, k: number): number {
  return ((x << k) | (x >>> (32 - k))) >>> 0;
}

/** Checks options once (GravityError on nonsense) and fills defaults. */
export function validateSampling(opts: SamplingOptions): Required<SamplingOptions> {
  const t = opts.temperature ?? 1;
  if (!Number.isFinite(t) || t < 0) fail(`temperature must be >= 0 (0 = greedy), got ${t}`);
  const k = opts.topK ?? 0;
  if (!Number.isInteger(k) || k < 0) fail(`top-k must be a whole number >= 0 (0 = off), got ${k}`);
  const p = opts.topP ?? 1;
  if (!(p > 0 && p <= 1)) fail(`top-p must be in (0, 1], got ${p}`);
  const m = opts.minP ?? 0;
  if (!(m >= 0 && m <= 1)) fail(`min-p must be in [0, 1], got ${m}`);
  const r = opts.repetitionPenalty ?? 1;
  if (!(Number.isFinite(r) && r > 0)) fail(`repetition penalty must be > 0 (1 = off), got ${r}`);
  return { temperature: t, topK: k, topP: p, minP: m, repetitionPenalty: r };
}

function checkFinite(logits: Float32Array): void {
  for (let i = 0; i < logits.length; i++) {
    const v = logits[i];
    if (v !== v) fail(`the model produced NaN logits (token ${i}); the weights or masses may be broken`);
  }
}

/** HF RepetitionPenaltyLogitsProcessor on a copy: each distinct token of `history` is penalised once. */
export function applyRepetitionPenalty(logits: Float32Array, penalty: number, history: Iterable<number>): void {
  if (penalty === 1) return;
  const seen = new Set<number>();
  for (const id of history) {
    if (seen.has(id) || id < 0 || id >= logits.length) continue;
    seen.add(id);
    const v = logits[id];
    logits[id] = v < 0 ? v * penalty : v / penalty;
  }
}

/** The k-th largest value (1-based) by quickselect on a copy: O(V) instead of a full sort. */
function kthLargest(values: Float32Array, k: number): number {
  const a = Float32Array.from(values);
  let lo = 0;
  let hi = a.length - 1;
  const target = k - 1; // index in descending order
  while (lo < hi) {
    const pivot = a[(lo + hi) >>> 1];
    let i = lo;
    let j = hi;
    while (i <= j) {
      while (a[i] > pivot) i++;
      while (a[j] < pivot) j--;
      if (i <= j) {
        const t = a[i];
        a[i] = a[j];
        a[j] = t;
        i++;
        j--;
      }
    }
    if (target <= j) hi = j;
    else if (target >= i) lo = i;
    else break;
  }
  return a[target];
}

function argmax(logits: Float32Array): number {
  let best = 0;
  let bestV = -Infinity;
  for (let i = 0; i < logits.length; i++) {
    if (logits[i] > bestV) {
      bestV = logits[i];
      best = i;
    }
  }
  if (bestV === -Infinity) fail('every token has logit -inf; nothing can be sampled');
  return best;
}

/**
 * The candidate set after temperature, top-k, top-p and min-p, with unnormalised weights, sorted by logit
 * descending (in vocabulary order when no filter is on). Exposed for tests: `ids` are exactly the tokens that
 * keep a non-zero probability.
 */
export function candidates(logitsIn: Float32Array, o: Required<SamplingOptions>): { ids: Int32Array; weights: Float64Array } {
  const V = logitsIn.length;
  const invT = 1 / o.temperature;
  let max = -Infinity;
  for (let i = 0; i < V; i++) if (logitsIn[i] > max) max = logitsIn[i];
  if (max === -Infinity) fail('every token has logit -inf; nothing can be sampled');

  // unnormalised probabilities of the whole vocabulary at this temperature (float64 for the long tail)
  const w = new Float64Array(V);
  let total = 0;
  for (let i = 0; i < V; i++) {
    const e = Math.exp((logitsIn[i] - max) * invT);
    w[i] = e;
    total += e;
  }

  // top-k (HF keeps every token whose logit is >= the k-th largest, so ties at the boundary survive). Found by
  // selection, not by sorting all of V (151k for Qwen).
  let inSet = V; // size of the set top-p sees
  let kept = total; // its unnormalised mass (HF renormalises between warpers)
  let kth = -Infinity;
  if (o.topK > 0 && o.topK < V) {
    kth = kthLargest(logitsIn, o.topK);
    inSet = 0;
    kept = 0;
    for (let i = 0; i < V; i++) {
      if (logitsIn[i] >= kth) {
        inSet++;
        kept += w[i];
      }
    }
  }

  // Only the head of the sorted set can survive top-p / min-p; drop the tail before sorting. top-p removes a
  // token when the mass of it and everything below it is <= (1-p) * kept; that mass is at most inSet * q for
  // a token of weight q, so q <= (1-p) * kept / inSet is removed for sure. min-p's bound is exact (w(top) = 1).
  let floor = 0;
  if (o.topP < 1) floor = ((1 - o.topP) * kept) / inSet * (1 - 1e-9);
  if (o.minP > 0) floor = Math.max(floor, o.minP);
  let n = 0;
  for (let i = 0; i < V; i++) if (logitsIn[i] >= kth && w[i] > 0 && w[i] >= floor) n++;
  let ids = new Int32Array(n);
  n = 0;
  for (let i = 0; i < V; i++) if (logitsIn[i] >= kth && w[i] > 0 && w[i] >= floor) ids[n++] = i;
  // Without filters nothing depends on the order: skip sorting the whole vocabulary (~40 ms for 151k).
  if (o.topK === 0 && o.topP === 1 && o.minP === 0) {
    const weights = new Float64Array(ids.length);
    for (let j = 0; j < ids.length; j++) weights[j] = w[ids[j]];
    return { ids, weights };
  }
  // descending logit; ties by id so the order (and the draw) is deterministic
  ids.sort((a, b) => logitsIn[b] - logitsIn[a] || a - b);

  // top-p: keep a token while the mass strictly before it in the sorted order is < p; the top token stays.
  // (The dropped tail sits after every candidate, so `before` is exact.)
  if (o.topP < 1) {
    let before = 0;
    let end = 0;
    while (end < ids.length && (end === 0 || before < o.topP * kept)) {
      before += w[ids[end]];
      end++;
    }
    ids = ids.subarray(0, end);
  }

  // min-p against the top surviving token (the top token is never removed, so its probability is unchanged
  // relative to the others: the ratio test is the same before or after renormalising)
  if (o.minP > 0) {
    const thr = o.minP * w[ids[0]];
    let end = 1;
    while (end < ids.length && w[ids[end]] >= thr) end++;
    ids = ids.subarray(0, end);
  }

  const weights = new Float64Array(ids.length);
  for (let j = 0; j < ids.length; j++) weights[j] = w[ids[j]];
  return { ids, weights };
}

/**
 * Picks the next token. `logits` is one row [vocab] (not modified); `history` = prompt + generated ids so far
 * (for the repetition penalty). Greedy when temperature is 0, which ignores the rng.
 */
export function sample(
  logits: Float32Array,
  opts: SamplingOptions,
  history: readonly number[] = [],
  rng?: Rng,
): number {
  const o = validateSampling(opts);
  checkFinite(logits);
  let row = logits;
  if (o.repetitionPenalty !== 1) {
    row = new Float32Array(logits);
    applyRepetitionPenalty(row, o.repetitionPenalty, history);
  }
  if (o.temperature === 0) return argmax(row);
  if (!rng) fail('sampling with temperature > 0 needs a random generator (seed)');
  const { ids, weights } = candidates(row, o);
  let total = 0;
  for (let j = 0; j < weights.length; j++) total += weights[j];
  let u = rng.next() * total;
  for (let j = 0; j < ids.length; j++) {
    u -= weights[j];
    if (u < 0) return ids[j];
  }
  return ids[ids.length - 1]; // rounding left a sliver of u
}

/** top-k / top-p / min-p, the filters a device draw applies (no repetition penalty) */
export interface DrawFilters {
  topK?: number;
  topP?: number;
  minP?: number;
}

/** top-k up to which a GPU backend draws on the device (its candidates sort in workgroup memory; webgpu/sample-topk.ts) */
export const DEVICE_TOPK_MAX = 256;

/**
 * Whether a device draw (Backend.sampleDevice) takes these filters over a vocabulary of V: none, or a top-k in
 * [1, min(DEVICE_TOPK_MAX, V - 1)] with any top-p / min-p. Top-p or min-p alone need the host.
 */
export function deviceDraws(f: DrawFilters, V: number): boolean {
  const k = f.topK ?? 0;
  if (k === 0) return (f.topP ?? 1) === 1 && (f.minP ?? 0) === 0;
  return Number.isInteger(k) && k >= 1 && k <= DEVICE_TOPK_MAX && k < V;
}

/**
 * The draw for a given uniform u in [0, 1) at `temperature`, with optional top-k / top-p / min-p (no penalty): what
 * `sample` draws with those options and rng.next() = u, in float64, and what a GPU backend's sampleDevice computes
 * in f32. Without filters: the first id whose running sum of exp((x - max) / temperature) passes u * sum.
 */
export function drawToken(logits: Float32Array, temperature: number, u: number, filters: DrawFilters = {}): number {
  checkFinite(logits);
  const o = validateSampling({ temperature, topK: filters.topK ?? 0, topP: filters.topP ?? 1, minP: filters.minP ?? 0 });
  const { ids, weights } = candidates(logits, o);
  let total = 0;
  for (let j = 0; j < weights.length; j++) total += weights[j];
  let r = u * total;
  for (let j = 0; j < ids.length; j++) {
    r -= weights[j];
    if (r < 0) return ids[j];
  }
  return ids[ids.length - 1];
}

/** Stateful convenience: validated options + its own rng. */
export class Sampler {
  readonly options: Required<SamplingOptions>;
  readonly rng: Rng;

  constructor(opts: SamplingOptions & { seed?: number }) {
    this.options = validateSampling(opts);
    this.rng = new Rng(opts.seed ?? Math.floor(Math.random() * 2 ** 32));
  }

  sample(logits: Float32Array, history: readonly number[]): number {
    return sample(logits, this.options, history, this.rng);
  }
}
