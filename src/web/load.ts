/**
 * Loading a model without a file system: every file comes from a getter (fetch in a browser, or any other source),
 * so the same checks and messages as the Node loader (model/load.ts) apply to a model served over HTTP. Reads
 * config.json, model.safetensors (or model.safetensors.index.json and its shards), the masses
 * (gravity_mass_log.safetensors, gravity_mass_log.pt, or gravity_mass_log tensors among the weights), generation_config.json,
 * tokenizer.json, tokenizer_config.json and chat_template.jinja.
 */
import type { AttentionKind, Backend } from '../backend/backend.js';
import { DEFAULT_EPS, parseMassInit, usesMasses } from '../attention/registry.js';
import { fail } from '../errors.js';
import { parseConfig } from '../io/config.js';
import { checkWeights, defaultsFromConfig, parseGeneration, type GenerationDefaults } from '../io/model-files.js';
import { massName, massesFromTensors, massesFromTorch } from '../io/masses-parse.js';
import { readTorchBytes } from '../io/torch-read.js';
import { safetensorsFromBytes, type SafetensorsFile, type WeightStore } from '../io/safetensors-header.js';
import { Qwen2Model, uploadWeights } from '../model/qwen2.js';
import type { CausalLM } from '../model/types.js';
import { TextTokenizer } from '../tokenizer/tokenizer.js';

/** A model file's bytes, or null when the model has no such file (an error for any other failure). */
export type FileGetter = (name: string) => Promise<Uint8Array | null>;

/** Files under a base URL (a folder served over HTTP): 404 means absent, any other failure is an error. */
export function urlFiles(base: string, fetchFn: typeof fetch = fetch): FileGetter {
  const root = base.endsWith('/') ? base : `${base}/`;
  return async (name) => {
    let res: Response;
    try {
      res = await fetchFn(root + name);
    } catch (e) {
      return fail(`${root}${name}: cannot fetch (${(e as Error).message})`);
    }
    if (res.status === 404) return null;
    if (!res.ok) fail(`${root}${name}: HTTP ${res.status} ${res.statusText}`);
    return new Uint8Array(await res.arrayBuffer());
  };
}

export interface WebLoadOptions {
  /** 'auto' (default): WebGPU where an adapter exists, else the CPU */
  device?: 'cpu' | 'webgpu' | 'auto';
  backend?: Backend;
  attention?: AttentionKind;
  eps?: number;
  /** as LoadOptions.massInit: run gravity without a masses file ('raw:0.5' or 'mass:0.5') */
  massInit?: string;
  /** a name for the model in messages (default 'model') */
  label?: string;
  onProgress?: (done: number, total: number, what: string) => void;
}

export interface WebModel extends CausalLM {
  readonly tokenizer: TextTokenizer | null;
  readonly eosTokenIds: number[];
  readonly generation: GenerationDefaults | null;
  /** 'cpu' or 'webgpu' */
  readonly device: string;
}

const text = (b: Uint8Array) => new TextDecoder().decode(b);

async function json(get: FileGetter, name: string, label: string, required: true): Promise<Record<string, unknown>>;
async function json(get: FileGetter, name: string, label: string, required: false): Promise<Record<string, unknown> | null>;
async function json(get: FileGetter, name: string, label: string, required: boolean): Promise<Record<string, unknown> | null> {
  const b = await get(name);
  if (!b) return required ? fail(`${label}: no ${name}`) : null;
  let v: unknown;
  try {
    v = JSON.parse(text(b));
  } catch (e) {
    return fail(`${label}/${name}: not valid JSON (${(e as Error).message})`);
  }
  if (!v || typeof v !== 'object' || Array.isArray(v)) fail(`${label}/${name}: expected a JSON object`);
  return v as Record<string, unknown>;
}

/** The weights as a WeightStore over fetched safetensors files (one, or the shards an index names). */
async function fetchWeights(get: FileGetter, label: string): Promise<WeightStore> {
  const index = await json(get, 'model.safetensors.index.json', label, false);
  const where = new Map<string, SafetensorsFile>();
  let storeLabel = 'model.safetensors';
  if (index) {
    storeLabel = 'model.safetensors.index.json';
    const wm = index.weight_map;
    if (!wm || typeof wm !== 'object' || Array.isArray(wm)) fail(`${label}/${storeLabel}: has no "weight_map" object`);
    const shards = new Map<string, SafetensorsFile>();
    for (const [name, shard] of Object.entries(wm as Record<string, unknown>)) {
      if (typeof shard !== 'string') fail(`${label}/${storeLabel}: weight_map entry for "${name}" is not a file name`);
      let f = shards.get(shard);
      if (!f) {
        const b = await get(shard);
        if (!b) fail(`${label}/${storeLabel}: shard file ${shard} (holding "${name}") is missing`);
        f = safetensorsFromBytes(b, shard);
        shards.set(shard, f);
      }
      if (!f.tensors.has(name)) fail(`${shard}: tensor "${name}" is listed in ${storeLabel} but not in the shard`);
      where.set(name, f);
    }
  } else {
    const b = await get('model.safetensors');
    if (!b) fail(`${label}: no model.safetensors or model.safetensors.index.json`);
    const f = safetensorsFromBytes(b, 'model.safetensors');
    for (const n of f.tensors.keys()) where.set(n, f);
  }
  const at = (n: string) => where.get(n) ?? fail(`${storeLabel}: no tensor named "${n}"`);
  return {
    dir: label,
    label: storeLabel,
    names: () => [...where.keys()],
    has: (n) => where.has(n),
    info(n) {
      const f = at(n);
      const t = f.tensors.get(n)!;
      return { dtype: t.dtype, shape: t.shape.slice(), file: f.path };
    },
    read: (n) => at(n).read(n),
    close() {},
  };
}

async function createBackend(device: WebLoadOptions['device']): Promise<Backend> {
  const { createCpuBackend } = await import('../backend/cpu/index.js');
  if (device === 'cpu') return createCpuBackend();
  const wg = await import('../backend/webgpu/index.js');
  if (device === 'webgpu') return wg.createWebGPUBackend();
  if (device === undefined || device === 'auto') return (await wg.webgpuAvailable()) ? wg.createWebGPUBackend() : createCpuBackend();
  return fail(`unknown device '${String(device)}' (cpu, webgpu, auto)`);
}

/** Loads a model whose files come from `get` (see urlFiles), with its tokenizer and generation defaults. */
export async function loadModelFrom(get: FileGetter, opts: WebLoadOptions = {}): Promise<WebModel> {
  const label = opts.label ?? 'model';
  const cfgJson = await json(get, 'config.json', label, true);
  const cfg = parseConfig(cfgJson, 'config.json');
  const weights = await fetchWeights(get, label);
  checkWeights(weights, cfg);
  const defaults = defaultsFromConfig(cfgJson, 'config.json');
  const attention = opts.attention ?? defaults.attention ?? 'gravity';

  // the masses as the Node loader finds them: gravity_mass_log.safetensors, gravity_mass_log.pt, then among the weights
  let massLog: Float32Array[];
  const massOpts = { numKVHeads: cfg.numKVHeads };
  const stBytes = await get('gravity_mass_log.safetensors');
  const ptBytes = stBytes ? null : await get('gravity_mass_log.pt');
  if (stBytes) {
    const f = safetensorsFromBytes(stBytes, 'gravity_mass_log.safetensors');
    massLog = massesFromTensors(f.path, [...f.tensors.keys()], (k) => f.read(k), cfg.numLayers, cfg.numHeads, massOpts);
  } else if (ptBytes) {
    massLog = massesFromTorch('gravity_mass_log.pt', readTorchBytes(ptBytes, 'gravity_mass_log.pt'), cfg.numLayers, cfg.numHeads, massOpts);
  } else if (weights.has(massName(0))) {
    massLog = massesFromTensors(weights.label, weights.names(), (k) => weights.read(k), cfg.numLayers, cfg.numHeads, massOpts);
  } else if (opts.massInit !== undefined) {
    massLog = Array.from({ length: cfg.numLayers }, () => new Float32Array(cfg.numHeads).fill(parseMassInit(opts.massInit!)));
  } else if (usesMasses(attention)) {
    return fail(`${label}: no gravity_mass_log.pt or gravity_mass_log.safetensors; pass massInit ('raw:0.5' / 'mass:0.5') to run gravity with untrained masses, or attention 'dot'`);
  } else massLog = [];

  const generationJson = await json(get, 'generation_config.json', label, false);
  const generation = generationJson ? parseGeneration(generationJson, 'generation_config.json', cfg) : null;
  const tokJson = await json(get, 'tokenizer.json', label, false);
  const tokConfig = await json(get, 'tokenizer_config.json', label, false);
  const template = await get('chat_template.jinja');
  const tokenizer = tokJson ? TextTokenizer.fromObjects(tokJson, tokConfig, template ? text(template) : undefined) : null;

  const be = opts.backend ?? (await createBackend(opts.device));
  const names = weights.names();
  let done = 0;
  const w = uploadWeights(be, cfg, (n) => weights.read(n), (n) => opts.onProgress?.(++done, names.length, n));
  const model = new Qwen2Model(cfg, be, w, massLog);
  model.attention = attention;
  model.eps = opts.eps ?? defaults.eps ?? DEFAULT_EPS;
  const eos = generation?.eosTokenIds?.length ? generation.eosTokenIds : cfg.eosTokenIds;
  return Object.assign(model, { tokenizer, eosTokenIds: eos, generation, device: be.name });
}
