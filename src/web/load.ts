/**
 * Loading a model without a file system: every file comes from a getter (fetch in a browser, or any other source),
 * so the same checks and messages as the Node loader (model/load.ts) apply to a model served over HTTP. Reads
 * config.json, model.safetensors (or model.safetensors.index.json and its shards), the masses
 * (gravity_mass_log.safetensors, gravity_mass_log.pt, or gravity_mass_log tensors among the weights), generation_config.json,
 * tokenizer.json, tokenizer_config.json and chat_template.jinja.
 */
import type { AttentionKind, Backend, Tensor } from '../backend/backend.js';
import { createBackend, type DeviceName } from '../backend/create.js';
import type { HostTensor } from '../tensor/dtype.js';
import { DEFAULT_EPS, parseMassInit, usesMasses } from '../attention/registry.js';
import { fail } from '../errors.js';
import { parseConfig } from '../io/config.js';
import { checkWeights, defaultsFromConfig, parseGeneration, type GenerationDefaults } from '../io/model-files.js';
import { massName, massesFromTensors, massesFromTorch } from '../io/masses-parse.js';
import { readTorchBytes } from '../io/torch-read.js';
import { openSafetensorsRanged, safetensorsFromBytes, weightMapEntries, type RangedFile, type RangedSafetensors, type WeightStore } from '../io/safetensors-header.js';
import { Qwen2Model, assembleWeights, weightPlan } from '../model/qwen2.js';
import type { CausalLM } from '../model/types.js';
import { TextTokenizer } from '../tokenizer/tokenizer.js';
import type { ModelConfig } from '../model/config.js';
import { gguf } from '@huggingface/gguf';
import { decodeTensor, describeGguf, ggufName, q8Rows, type GgufParsed } from '../io/gguf-model.js';
import { GGML } from '../io/gguf-quants.js';

/**
 * A model's files by name: the bytes, or null when the model has no such file (an error for any other failure).
 * `open`, where the source can read pieces of a file, gives ranged access instead: the weights are then fetched
 * tensor by tensor, so no weights file has to fit in memory at once.
 */
export interface FileGetter {
  (name: string): Promise<Uint8Array | null>;
  /** ranged access to a file, or null where the file is absent or the source cannot read ranges of it */
  open?(name: string): Promise<RangedFile | null>;
}

/**
 * Files under a base URL (a folder served over HTTP): 404 means absent, any other failure is an error. Servers that
 * answer Range requests (`gravity web`, most static servers, the Hugging Face hub) are read tensor by tensor.
 */
export function urlFiles(base: string, fetchFn: typeof fetch = fetch): FileGetter {
  const root = base.endsWith('/') ? base : `${base}/`;
  const request = async (name: string, range?: string): Promise<Response> => {
    try {
      return await fetchFn(root + name, range ? { headers: { Range: range } } : undefined);
    } catch (e) {
      return fail(`${root}${name}: cannot fetch (${(e as Error).message})`);
    }
  };
  const get: FileGetter = async (name) => {
    const res = await request(name);
    if (res.status === 404) return null;
    if (!res.ok) fail(`${root}${name}: HTTP ${res.status} ${res.statusText}`);
    return new Uint8Array(await res.arrayBuffer());
  };
  get.open = async (name) => {
    const res = await request(name, 'bytes=0-0');
    const total = /\/(\d+)$/.exec(res.headers.get('content-range') ?? '');
    await res.body?.cancel();
    if (res.status !== 206 || !total) return null; // absent, or no ranges: the caller reads the whole file
    const size = Number(total[1]);
    return {
      size,
      async read(start, end) {
        if (end <= start) return new Uint8Array(0);
        const r = await request(name, `bytes=${start}-${end - 1}`);
        if (r.status !== 206) fail(`${root}${name}: bytes ${start}-${end - 1}: HTTP ${r.status} ${r.statusText} (expected 206 Partial Content)`);
        const b = new Uint8Array(await r.arrayBuffer());
        if (b.length !== end - start) fail(`${root}${name}: bytes ${start}-${end - 1}: got ${b.length} bytes`);
        return b;
      },
    };
  };
  return get;
}

export interface WebLoadOptions {
  /** 'auto' (default): WebGPU where an adapter exists, else the CPU */
  device?: DeviceName;
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

/** The weights, read tensor by tensor: a WeightStore whose reads are asynchronous. */
interface AsyncWeights extends Pick<WeightStore, 'label' | 'names' | 'has' | 'info'> {
  readAsync(name: string): Promise<HostTensor>;
}

/** One weights file: ranged where the source allows it, else its bytes at once. */
async function openWeightsFile(get: FileGetter, name: string, missing: () => never): Promise<RangedSafetensors> {
  const ranged = await get.open?.(name);
  if (ranged) return openSafetensorsRanged(ranged, name);
  const b = await get(name);
  if (!b) return missing();
  const f = safetensorsFromBytes(b, name);
  return { path: name, tensors: f.tensors, readAsync: async (n) => f.read(n) };
}

/** The weights over fetched safetensors files (one, or the shards an index names). */
async function fetchWeights(get: FileGetter, label: string): Promise<AsyncWeights> {
  const index = await json(get, 'model.safetensors.index.json', label, false);
  const where = new Map<string, RangedSafetensors>();
  let storeLabel = 'model.safetensors';
  if (index) {
    storeLabel = 'model.safetensors.index.json';
    const shards = new Map<string, RangedSafetensors>();
    for (const [name, shard] of weightMapEntries(index, `${label}/${storeLabel}`)) {
      let f = shards.get(shard);
      if (!f) {
        f = await openWeightsFile(get, shard, () => fail(`${label}/${storeLabel}: shard file ${shard} (holding "${name}") is missing`));
        shards.set(shard, f);
      }
      if (!f.tensors.has(name)) fail(`${shard}: tensor "${name}" is listed in ${storeLabel} but not in the shard`);
      where.set(name, f);
    }
  } else {
    const f = await openWeightsFile(get, 'model.safetensors', () => fail(`${label}: no model.safetensors or model.safetensors.index.json`));
    for (const n of f.tensors.keys()) where.set(n, f);
  }
  const at = (n: string) => where.get(n) ?? fail(`${storeLabel}: no tensor named "${n}"`);
  return {
    label: storeLabel,
    names: () => [...where.keys()],
    has: (n) => where.has(n),
    info(n) {
      const f = at(n);
      const t = f.tensors.get(n)!;
      return { dtype: t.dtype, shape: t.shape.slice(), file: f.path };
    },
    readAsync: (n) => at(n).readAsync(n),
  };
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
    const names = weights.names().filter((n) => n.endsWith('.gravity_mass_log'));
    const got = new Map<string, HostTensor>();
    for (const n of names) got.set(n, await weights.readAsync(n));
    massLog = massesFromTensors(weights.label, names, (k) => got.get(k)!, cfg.numLayers, cfg.numHeads, massOpts);
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

  const eos = generation?.eosTokenIds?.length ? generation.eosTokenIds : cfg.eosTokenIds;
  return assemble(cfg, (n) => weights.readAsync(n), massLog, attention, opts.eps ?? defaults.eps ?? DEFAULT_EPS, { tokenizer, eosTokenIds: eos, generation }, opts);
}

/** the model on its backend, its weights read and uploaded one tensor at a time (read, upload, drop) */
async function assemble(
  cfg: ModelConfig, read: (name: string) => Promise<HostTensor>, massLog: Float32Array[], attention: AttentionKind, eps: number,
  extra: { tokenizer: TextTokenizer | null; eosTokenIds: number[]; generation: GenerationDefaults | null }, opts: WebLoadOptions,
  readQ8?: (name: string) => Promise<{ blocks: Uint8Array; shape: [number, number] } | null>,
): Promise<WebModel> {
  const be = opts.backend ?? (await createBackend(opts.device ?? 'auto'));
  const plan = weightPlan(cfg);
  const up = new Map<string, Tensor>();
  for (const { name, hint } of plan) {
    // GGUF Q8_0 linears stay 8-bit where the backend keeps them (the CPU), as the Node loader does
    const q8 = hint === 'linear' && be.uploadQ8 && readQ8 ? await readQ8(name) : null;
    up.set(name, q8 ? be.uploadQ8!(q8.blocks, q8.shape) : be.upload(await read(name), hint));
    opts.onProgress?.(up.size, plan.length, name);
  }
  const model = new Qwen2Model(cfg, be, assembleWeights(cfg, (n) => up.get(n)!), massLog);
  model.attention = attention;
  model.eps = eps;
  return Object.assign(model, { ...extra, device: be.name });
}

/**
 * Loads one GGUF file served over HTTP (gguf-model.ts: qwen2 / llama, block formats dequantized, the tokenizer and
 * chat template from its metadata, gravity masses from gravity.mass_log). The server must answer Range requests:
 * the header and then each tensor are fetched by range, so the file never sits in memory whole.
 */
export async function loadGgufFrom(url: string, opts: WebLoadOptions & { fetch?: typeof fetch } = {}): Promise<WebModel> {
  const cut = url.lastIndexOf('/') + 1;
  const name = url.slice(cut);
  const label = opts.label ?? name;
  const file = await urlFiles(url.slice(0, cut), opts.fetch).open!(name);
  if (!file) fail(`${url}: not found, or the server does not answer Range requests (a GGUF file is read by ranges)`);
  let parsed: GgufParsed;
  try {
    parsed = (await gguf(url, { fetch: opts.fetch })) as unknown as GgufParsed;
  } catch (e) {
    return fail(`${label}: not a readable GGUF file (${(e as Error).message})`);
  }
  const m = describeGguf(parsed, label, file.size);
  const cfg = m.config;
  const attention = opts.attention ?? m.defaults.attention ?? 'gravity';
  let massLog: Float32Array[];
  if (m.masses) massLog = m.masses;
  else if (opts.massInit !== undefined) massLog = Array.from({ length: cfg.numLayers }, () => new Float32Array(cfg.numHeads).fill(parseMassInit(opts.massInit!)));
  else if (usesMasses(attention)) return fail(`${label}: no gravity masses in the file (key gravity.mass_log); pass massInit ('raw:0.5' / 'mass:0.5') or attention 'dot'`);
  else massLog = [];
  for (const n of weightPlan(cfg).map((p) => p.name)) if (!m.tensors.has(n)) fail(`${label}: no tensor ${ggufName(n) ?? n} (for ${n})`);
  const tokenizer = m.tokenizerJson ? TextTokenizer.fromObjects(m.tokenizerJson, m.tokenizerConfig) : null;
  const read = async (n: string) => {
    const e = m.tensors.get(n)!;
    return decodeTensor(m, n, await file.read(e.offset, e.offset + e.bytes));
  };
  const readQ8 = async (n: string) => {
    const e = m.tensors.get(n)!;
    if (e.type !== GGML.Q8_0 || e.shape.length !== 2) return null;
    return { blocks: q8Rows(m, n, await file.read(e.offset, e.offset + e.bytes)), shape: e.shape as [number, number] };
  };
  const eosTokenIds = cfg.eosTokenIds;
  const extra = { tokenizer, eosTokenIds, generation: { eosTokenIds } };
  return assemble(cfg, read, massLog, attention, opts.eps ?? m.defaults.eps ?? DEFAULT_EPS, extra, opts, readQ8);
}
