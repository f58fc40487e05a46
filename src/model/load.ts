/** Loads a model folder into a CausalLM on a backend. (Lead-owned; implementation lands with model/qwen2.ts.) */
import type { AttentionKind } from '../backend/backend.js';
import type { CausalLM } from './types.js';

export type DeviceName = 'cpu' | 'webgpu' | 'auto';

export interface LoadOptions {
  device?: DeviceName;
  /** default 'gravity' */
  attention?: AttentionKind;
  /** masses file overriding the one found in the folder */
  masses?: string;
  /**
   * What to do when gravity runs and no masses file exists: undefined = refuse with an error;
   * 'raw:0.5' = every raw mass_log is 0.5 (M = softplus(0.5) ≈ 0.974); 'mass:0.5' = M = 0.5 exactly.
   */
  massInit?: string;
  /** gravity softening ε, default 0.1 */
  eps?: number;
  /** PEFT adapter folder applied without merging */
  adapter?: string;
  onProgress?: (done: number, total: number, what: string) => void;
}

export interface LoadedModel extends CausalLM {
  readonly dir: string;
  /** tokenizer.json / tokenizer_config.json contents when the folder has them */
  readonly tokenizerJson: object | null;
  readonly tokenizerConfig: object | null;
  /** eos ids from generation_config.json, else config.json */
  readonly eosTokenIds: number[];
}

export declare function loadModel(dir: string, opts?: LoadOptions): Promise<LoadedModel>;
