/** What generation, the CLI and the server see of a loaded model. Implemented by model/qwen2.ts. */
import type { AttentionKind, Backend, KVCache } from '../backend/backend.js';
import type { ModelConfig } from './config.js';
import type { DrawFilters } from '../generate/sampling.js';

export interface Session {
  readonly batch: number;
  readonly maxLen: number;
  readonly cache: KVCache;
  /** real (non-padding) tokens seen so far per sequence: the next token's RoPE position */
  readonly positions: Int32Array;
}

export interface ForwardOptions {
  /** [batch][T], 1 = real token, 0 = padding (left padding only). Default: all ones. */
  attentionMask?: number[][];
  /**
   * 'last' (default): logits of the last position of each sequence, [batch, vocab]; 'all': [batch, T, vocab];
   * 'argmax': the greedy token id of each sequence's last position, [batch] (ids as floats; on a GPU only these
   * few bytes are read back).
   */
  logits?: 'last' | 'all' | 'argmax';
  /** collect each layer's attention probabilities [batch, heads, T, start+T] (slow; research tool) */
  attentionMaps?: Float32Array[];
}

export interface CausalLM {
  readonly config: ModelConfig;
  readonly backend: Backend;
  /** which score function the attention layers use; may be switched between calls */
  attention: AttentionKind;
  /** gravity softening length ε */
  eps: number;
  /** raw gravity_mass_log per layer, [numLayers][numHeads] */
  readonly massLog: Float32Array[];
  newSession(batch: number, maxLen: number): Session;
  /** Frees the session's KV cache now (long-running servers create many sessions). */
  closeSession(session: Session): void;
  /** Runs ids [batch][T] after what the session already holds; returns logits as chosen by opts.logits. */
  forward(session: Session, ids: number[][], opts?: ForwardOptions): Promise<Float32Array>;
  /**
   * Greedy decoding from `first` (one id per sequence): yields each step's argmax ids. May run a few steps ahead
   * on the device; stopping the iteration leaves the session as a step-by-step loop would (see model/qwen2.ts).
   */
  greedyStream?(session: Session, first: readonly number[], lookahead?: number, penalty?: StreamPenalty): AsyncGenerator<Int32Array, void, void>;
  /**
   * The same for sampling: a token per row and step drawn with u = random() at a temperature, or with top-k / top-p /
   * min-p too (see model/qwen2.ts).
   */
  sampleStream?(session: Session, first: readonly number[], sampling: number | StreamSampling, random: () => number, lookahead?: number, penalty?: StreamPenalty): AsyncGenerator<Int32Array, void, void>;
  dispose(): void;
}

/** sampleStream's draw: a temperature, with optional top-k / top-p / min-p (no repetition penalty) */
export interface StreamSampling extends DrawFilters {
  temperature: number;
}

/** a stream's repetition penalty (HF's): the value and each row's ids so far (prompt and output, the fed ids included) */
export interface StreamPenalty {
  value: number;
  history: readonly (readonly number[])[];
}
