/**
 * Loads a model folder (config, weights, masses, generation config, tokenizer) into a CausalLM on a backend.
 * Models trained here carry `gravity_attention` and `gravity_eps` in config.json: they are the defaults when
 * the caller gives no attention / eps.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { AttentionKind, Backend } from '../backend/backend.js';
import { createBackend, type DeviceName } from '../backend/create.js';
import { ATTENTION_KINDS, DEFAULT_EPS, parseMassInit, usesMasses } from '../attention/registry.js';
import { defaultsFromConfig, type GenerationDefaults, type ModelDefaults } from '../io/model-files.js';

export type { ModelDefaults } from '../io/model-files.js';
import { fail } from '../errors.js';
import { checkWeights } from '../io/checkpoint.js';
import { openModelSource } from '../io/model-source.js';
import { findMassesFile, loadMasses } from '../io/masses.js';
import { Qwen2Model, uploadWeights } from './qwen2.js';
import type { CausalLM } from './types.js';
import { toF32, type HostTensor } from '../tensor/dtype.js';
import { quantizeQ8_0 } from '../io/gguf-quants.js';

export { createBackend, type DeviceName } from '../backend/create.js';

export interface LoadOptions {
  device?: DeviceName;
  /** default: config.json's gravity_attention, else 'gravity' */
  attention?: AttentionKind;
  /** masses file overriding the one found in the folder */
  masses?: string;
  /**
   * What to do when no masses file exists: undefined = refuse gravity with an error;
   * 'raw:0.5' = every raw mass_log is 0.5 (M = softplus(0.5) ≈ 0.974); 'mass:0.5' = M = 0.5 exactly.
   */
  massInit?: string;
  /** gravity softening ε; default: config.json's gravity_eps, else 0.1 */
  eps?: number;
  /** PEFT adapter folder applied without merging */
  adapter?: string;
  /** WebGPU: int8 prefill linears (see createBackend) */
  int8Prefill?: boolean;
  /** an already created backend (tests, benchmarks) */
  backend?: Backend;
  onProgress?: (done: number, total: number, what: string) => void;
  /** GGUF Q8_0 linear weights kept at 8 bits where the backend can (default true; false: widened to BF16) */
  keepQ8?: boolean;
  /** quantize every linear weight to Q8_0 on load where the backend keeps Q8_0 (the CPU); rows must be whole blocks */
  q8?: boolean;
}

export interface LoadedModel extends CausalLM {
  readonly dir: string;
  readonly tokenizerJson: object | null;
  readonly tokenizerConfig: object | null;
  /** eos ids from generation_config.json, else config.json */
  readonly eosTokenIds: number[];
  /** generation_config.json as parsed (sampling defaults for the CLI), null where the folder has none */
  readonly generation: GenerationDefaults | null;
}

/** Adapter hook: given the base tensors by name, returns the tensor to upload (LoRA folded in memory). */
export type WeightTransform = (name: string, t: HostTensor) => HostTensor;
let adapterLoader: ((dir: string, numLayers: number) => Promise<WeightTransform>) | null = null;
/** Registered by train/ so that model/ does not depend on training code. */
export function registerAdapterLoader(f: (dir: string, numLayers: number) => Promise<WeightTransform>): void {
  adapterLoader = f;
}

/** the weight transform of a PEFT LoRA adapter folder (its deltas folded into the base weights as they are read) */
export async function adapterTransformFor(dir: string, numLayers: number): Promise<WeightTransform> {
  if (!adapterLoader) await import('../train/adapter.js').catch(() => undefined);
  if (!adapterLoader) return fail('--adapter: LoRA adapters are not available in this build');
  return adapterLoader(dir, numLayers);
}

/** The gravity_attention / gravity_eps keys of a folder's config.json (written by full training runs). */
export function modelDefaults(dir: string): ModelDefaults {
  const file = path.join(dir, 'config.json');
  if (!fs.existsSync(file)) return {};
  let json: Record<string, unknown>;
  try {
    json = JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    return fail(`${file}: not valid JSON (${(e as Error).message})`);
  }
  return defaultsFromConfig(json, file);
}

/**
 * The attention and ε an adapter was trained with, from the trainer_state.json that `gravity train` saves beside
 * it (a gravity adapter trained on a dot-product base must not run with the base's default).
 */
export function adapterDefaults(dir: string): ModelDefaults {
  const file = path.join(dir, 'trainer_state.json');
  if (!fs.existsSync(file)) return {};
  try {
    const o = JSON.parse(fs.readFileSync(file, 'utf8'))?.options ?? {};
    const out: ModelDefaults = {};
    if ((ATTENTION_KINDS as readonly string[]).includes(o.attention)) out.attention = o.attention;
    if (typeof o.eps === 'number' && o.eps > 0) out.eps = o.eps;
    return out;
  } catch {
    return {}; // not ours or damaged: the adapter itself is checked when read
  }
}

export async function loadModel(dir: string, opts: LoadOptions = {}): Promise<LoadedModel> {
  // masses trained with an adapter live in the adapter folder and take precedence over the base's
  const adapterMasses = opts.adapter && !opts.masses ? findMassesFile(opts.adapter) : null;
  // a folder, or a .gguf file (llama.cpp's format, io/gguf.ts) with config, weights, tokenizer and maybe masses in one
  const files = await openModelSource(dir, { masses: opts.masses ?? adapterMasses });
  const cfg = files.config;
  checkWeights(files.weights, cfg);
  const defaults = { ...(files.defaults ?? modelDefaults(files.dir)), ...(opts.adapter ? adapterDefaults(opts.adapter) : {}) };
  const attention = opts.attention ?? defaults.attention ?? 'gravity';

  let massLog: Float32Array[];
  if (files.massesPath) massLog = loadMasses(files.massesPath, cfg.numLayers, cfg.numHeads, { numKVHeads: cfg.numKVHeads });
  else if (files.masses) massLog = files.masses;
  else if (opts.massInit !== undefined) {
    const raw = parseMassInit(opts.massInit);
    massLog = Array.from({ length: cfg.numLayers }, () => new Float32Array(cfg.numHeads).fill(raw));
  } else if (usesMasses(attention)) {
    return fail(`${files.dir}: ${files.gguf ? 'no gravity masses in the file (key gravity.mass_log)' : 'no gravity_mass_log.pt or gravity_mass_log.safetensors'}; pass --masses FILE, or --mass-init raw:0.5 / mass:0.5 to run gravity with untrained masses, or --attn dot`);
  } else massLog = [];

  if (opts.q8 && (opts.backend ? !opts.backend.uploadQ8 : (opts.device ?? 'cpu') !== 'cpu')) {
    files.weights.close();
    fail(`--q8 keeps Q8_0 weights on the CPU backend only (--device cpu); ${opts.backend?.name ?? opts.device} has no Q8_0 kernels`);
  }
  const transform = opts.adapter ? await adapterTransformFor(opts.adapter, cfg.numLayers) : null;

  const be = opts.backend ?? (await createBackend(opts.device ?? 'cpu', { int8Prefill: opts.int8Prefill }));
  const names = files.weights.names();
  let done = 0;
  // GGUF Q8_0 linears stay 8-bit on a backend that keeps them (exactly the file's values; a LoRA adapter, folded in
  // f32, needs them widened)
  const w = files.weights;
  const read = (name: string) => (transform ? transform(name, w.read(name)) : w.read(name));
  const keepQ8 = !transform && opts.keepQ8 !== false && w.readQ8 ? (name: string) => {
    const blocks = w.readQ8!(name);
    return blocks ? { blocks, shape: w.info(name).shape as [number, number] } : null;
  } : undefined;
  // --q8: any linear whose rows are whole blocks, quantized after the adapter (if any) is folded in
  const toQ8 = opts.q8 ? (name: string) => {
    const kept = keepQ8?.(name);
    if (kept) return kept;
    const shape = w.info(name).shape as [number, number];
    if (shape.length !== 2 || shape[1] % 32 !== 0) return null;
    return { blocks: quantizeQ8_0(toF32(read(name))), shape };
  } : keepQ8;
  const weights = uploadWeights(
    be, cfg, read,
    (name) => opts.onProgress?.(++done, names.length, name),
    toQ8,
  );
  files.weights.close();
  const model = new Qwen2Model(cfg, be, weights, massLog);
  model.attention = attention;
  model.eps = opts.eps ?? defaults.eps ?? DEFAULT_EPS;
  const eos = files.generation?.eosTokenIds?.length ? files.generation.eosTokenIds : cfg.eosTokenIds;
  return Object.assign(model, {
    dir: files.dir,
    tokenizerJson: files.tokenizerJson,
    tokenizerConfig: files.tokenizerConfig,
    eosTokenIds: eos,
    generation: files.generation,
  });
}
