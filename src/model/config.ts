/** The decoder shape every architecture file reads. Parsed from config.json by io/config.ts. */
export type Architecture = 'qwen2' | 'llama';

export interface ModelConfig {
  architecture: Architecture;
  vocabSize: number;
  hiddenSize: number;
  intermediateSize: number;
  numLayers: number;
  numHeads: number;
  numKVHeads: number;
  headDim: number;
  ropeTheta: number;
  rmsNormEps: number;
  tieWordEmbeddings: boolean;
  /** q/k/v projections carry a bias (Qwen2: true; Llama: attention_bias). */
  qkvBias: boolean;
  /** o_proj carries a bias (Llama attention_bias; never in Qwen2). */
  oBias: boolean;
  /** gate/up/down carry a bias (Llama mlp_bias). */
  mlpBias: boolean;
  maxPositionEmbeddings: number;
  bosTokenId: number | null;
  eosTokenIds: number[];
  /** `_attn_implementation` as written in config.json, if any (informational). */
  attnImplementation: string | null;
  /** Stored dtype as written in config.json (`dtype` or `torch_dtype`), informational. */
  dtype: string | null;
}
