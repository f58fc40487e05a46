/**
 * PEFT LoRA adapters on disk: adapter_config.json + adapter_model.safetensors with PEFT's tensor names
 * `base_model.model.<module path>.lora_A.weight` / `lora_B.weight` (trainable norms, PEFT's modules_to_save,
 * as `base_model.model.<module path>.weight`). Importing this file registers the loader that `--adapter`
 * uses: each targeted weight becomes W + scaling·B·A while loading, kept in its stored width.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fail } from '../errors.js';
import { findMassesFile } from '../io/masses.js';
import { atomicWrite, openSafetensors, writeSafetensors } from '../io/safetensors.js';
import { registerAdapterLoader, type WeightTransform } from '../model/load.js';
import type { ModelConfig } from '../model/config.js';
import { fromF32, toF32, type HostTensor } from '../tensor/dtype.js';
import { LORA_TARGETS, loraScaling, moduleDims, type LoraModule, type LoraTarget } from './lora.js';

export const ADAPTER_CONFIG = 'adapter_config.json';
export const ADAPTER_WEIGHTS = 'adapter_model.safetensors';
const PREFIX = 'base_model.model.';
const LORA_KEY = /^(?:base_model\.model\.)?(model\.layers\.(\d+)\.(self_attn|mlp)\.([a-z_]+))\.lora_([AB])(?:\.default)?\.weight$/;
const SAVED_KEY = /^(?:base_model\.model\.)?(model\.(?:layers\.\d+\.(?:input_layernorm|post_attention_layernorm)|norm)\.weight)$/;

export interface AdapterConfig {
  r: number;
  alpha: number;
  dropout: number;
  targets: LoraTarget[];
  rslora: boolean;
  /** the whole JSON as read, kept so that a re-save preserves fields we do not interpret */
  raw: Record<string, unknown>;
}

export interface Adapter {
  dir: string;
  config: AdapterConfig;
  modules: LoraModule[];
  /** full (non-LoRA) tensors saved with the adapter, by model tensor name (trainable norms) */
  saved: Map<string, HostTensor>;
  /** gravity_mass_log file stored with the adapter, if any */
  massesPath: string | null;
}

function patternValue(patterns: unknown, modPath: string): number | undefined {
  if (!patterns || typeof patterns !== 'object') return undefined;
  for (const [k, v] of Object.entries(patterns as Record<string, unknown>)) {
    let re: RegExp;
    try {
      re = new RegExp(`(^|\\.)${k}$`);
    } catch {
      continue;
    }
    if (re.test(modPath) && typeof v === 'number') return v;
  }
  return undefined;
}

export function parseAdapterConfig(json: unknown, file: string): AdapterConfig {
  if (!json || typeof json !== 'object' || Array.isArray(json)) fail(`${file}: expected a JSON object`);
  const c = json as Record<string, unknown>;
  if (c.peft_type !== undefined && c.peft_type !== 'LORA') fail(`${file}: peft_type is ${JSON.stringify(c.peft_type)}, only LORA adapters are supported`);
  if (c.use_dora === true) fail(`${file}: DoRA adapters (use_dora) are not supported`);
  if (c.fan_in_fan_out === true) fail(`${file}: fan_in_fan_out adapters (Conv1D layers) are not supported`);
  if (c.bias !== undefined && c.bias !== 'none') fail(`${file}: bias "${String(c.bias)}" is not supported (only "none")`);
  if (c.lora_bias === true) fail(`${file}: lora_bias adapters are not supported`);
  const r = c.r;
  if (typeof r !== 'number' || !Number.isInteger(r) || r < 1) fail(`${file}: "r" must be a positive integer, found ${JSON.stringify(r)}`);
  const alpha = c.lora_alpha ?? r;
  if (typeof alpha !== 'number' || !(alpha > 0)) fail(`${file}: "lora_alpha" must be a number > 0, found ${JSON.stringify(alpha)}`);
  const dropout = c.lora_dropout ?? 0;
  if (typeof dropout !== 'number' || dropout < 0 || dropout >= 1) fail(`${file}: "lora_dropout" must be in [0, 1), found ${JSON.stringify(dropout)}`);
  let tm = c.target_modules;
  if (typeof tm === 'string') tm = tm === 'all-linear' ? [...LORA_TARGETS] : [tm];
  if (!Array.isArray(tm) || tm.some((t) => typeof t !== 'string')) fail(`${file}: "target_modules" must be a list of module names`);
  const targets = (tm as string[]).map((t) => t.split('.').pop()!);
  for (const t of targets) {
    if (!(LORA_TARGETS as readonly string[]).includes(t)) fail(`${file}: target module '${t}' is not supported (${LORA_TARGETS.join(', ')})`);
  }
  return { r, alpha, dropout, targets: targets as LoraTarget[], rslora: c.use_rslora === true, raw: c };
}

/**
 * Reads an adapter folder. With `cfg`, every tensor is checked against the model (layer count, [r, in] and
 * [out, r] shapes); without, only the layer count when given, and shapes are checked when the transform runs.
 */
export function readAdapter(dir: string, check: { cfg?: ModelConfig; numLayers?: number } = {}): Adapter {
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) fail(`${dir}: adapter folder does not exist`);
  const cfgFile = path.join(dir, ADAPTER_CONFIG);
  if (!fs.existsSync(cfgFile)) fail(`${dir}: no ${ADAPTER_CONFIG} in the adapter folder`);
  let json: unknown;
  try {
    json = JSON.parse(fs.readFileSync(cfgFile, 'utf8'));
  } catch (e) {
    fail(`${cfgFile}: not valid JSON (${(e as Error).message})`);
  }
  const config = parseAdapterConfig(json, ADAPTER_CONFIG);
  const wFile = path.join(dir, ADAPTER_WEIGHTS);
  if (!fs.existsSync(wFile)) fail(`${dir}: no ${ADAPTER_WEIGHTS} in the adapter folder (only safetensors adapters are read)`);
  const f = openSafetensors(wFile);
  const parts = new Map<string, { layer: number; target: string; A?: HostTensor; B?: HostTensor; nameA?: string }>();
  const saved = new Map<string, HostTensor>();
  const numLayers = check.cfg?.numLayers ?? check.numLayers;
  try {
    for (const name of f.tensors.keys()) {
      const m = LORA_KEY.exec(name);
      if (!m) {
        const s = SAVED_KEY.exec(name);
        if (s) {
          saved.set(s[1], f.read(name));
          continue;
        }
        if (name.endsWith('gravity_mass_log')) continue; // masses stored inside the adapter: read by loadMasses
        fail(`${ADAPTER_WEIGHTS}: tensor "${name}" is not a LoRA factor of q/k/v/o/gate/up/down_proj (PEFT name base_model.model.<module>.lora_A.weight)`);
      }
      const [, modPath, layerS, , target, ab] = m;
      if (!(LORA_TARGETS as readonly string[]).includes(target)) fail(`${ADAPTER_WEIGHTS}: tensor "${name}": LoRA on ${target} is not supported`);
      const layer = Number(layerS);
      if (numLayers !== undefined && layer >= numLayers) fail(`${ADAPTER_WEIGHTS}: tensor "${name}" is for layer ${layer}, the model has ${numLayers} layers`);
      const t = f.read(name);
      if (t.shape.length !== 2) fail(`${ADAPTER_WEIGHTS}: tensor "${name}" has shape [${t.shape}], expected a 2-D matrix`);
      if (!['F32', 'F16', 'BF16', 'F64'].includes(t.dtype)) fail(`${ADAPTER_WEIGHTS}: tensor "${name}" has dtype ${t.dtype}, expected a float type`);
      const e = parts.get(modPath) ?? { layer, target };
      if (ab === 'A') {
        e.A = t;
        e.nameA = name;
      } else e.B = t;
      parts.set(modPath, e);
    }
  } finally {
    f.close();
  }
  if (parts.size === 0 && saved.size === 0) fail(`${ADAPTER_WEIGHTS}: no LoRA tensors (base_model.model.<module>.lora_A.weight) found`);
  const modules: LoraModule[] = [];
  for (const [modPath, e] of parts) {
    const nm = (ab: 'A' | 'B') => `${PREFIX}${modPath}.lora_${ab}.weight`;
    if (!e.A) fail(`${ADAPTER_WEIGHTS}: "${nm('B')}" has no matching "${nm('A')}"`);
    if (!e.B) fail(`${ADAPTER_WEIGHTS}: "${nm('A')}" has no matching "${nm('B')}"`);
    const [r, inF] = e.A.shape;
    const [outF, rB] = e.B.shape;
    if (rB !== r) fail(`${ADAPTER_WEIGHTS}: "${nm('B')}" has shape [${e.B.shape}] but "${nm('A')}" has rank ${r} (expected [${outF}, ${r}])`);
    const rCfg = patternValue(config.raw.rank_pattern, modPath) ?? config.r;
    if (rCfg !== r) fail(`${ADAPTER_WEIGHTS}: "${nm('A')}" has rank ${r}, ${ADAPTER_CONFIG} says r = ${rCfg}`);
    const target = e.target as LoraTarget;
    if (check.cfg) {
      const [o, i] = moduleDims(check.cfg, target);
      if (inF !== i) fail(`${ADAPTER_WEIGHTS}: tensor "${nm('A')}" has shape [${e.A.shape}], expected [${r},${i}]: the model's ${target} takes ${i} inputs (adapter made for another model?)`);
      if (outF !== o) fail(`${ADAPTER_WEIGHTS}: tensor "${nm('B')}" has shape [${e.B.shape}], expected [${o},${r}]: the model's ${target} has ${o} outputs (adapter made for another model?)`);
    }
    const alpha = patternValue(config.raw.alpha_pattern, modPath) ?? config.alpha;
    const dtype = e.A.dtype as LoraModule['dtype'];
    modules.push({
      layer: e.layer, target, path: modPath, r, inF, outF, scaling: loraScaling(alpha, r, config.rslora),
      A: Float64Array.from(toF32(e.A)), B: Float64Array.from(toF32(e.B)), dtype,
    });
  }
  modules.sort((a, b) => a.layer - b.layer || LORA_TARGETS.indexOf(a.target) - LORA_TARGETS.indexOf(b.target));
  return { dir, config, modules, saved, massesPath: findMassesFile(dir) };
}

export interface WriteAdapterOptions {
  alpha: number;
  /** rank written when there are no modules (norms only) */
  r?: number;
  dropout: number;
  /** fields of a config that was read (initAdapter), kept unless we set them */
  baseConfig?: Record<string, unknown>;
  baseModel?: string | null;
  /** full tensors saved as modules_to_save (trainable norms), by model tensor name */
  saved?: Map<string, HostTensor>;
}

/** Writes adapter_config.json + adapter_model.safetensors (each atomically). All modules share r and alpha. */
export function writeAdapter(dir: string, modules: LoraModule[], o: WriteAdapterOptions): void {
  if (modules.length === 0 && !o.saved?.size) fail('writeAdapter: no LoRA modules or saved tensors to write');
  fs.mkdirSync(dir, { recursive: true });
  const r = modules[0]?.r ?? o.r ?? 8;
  const targets = LORA_TARGETS.filter((t) => modules.some((m) => m.target === t));
  const tensors = new Map<string, HostTensor>();
  for (const m of modules) {
    const dt = m.dtype;
    tensors.set(`${PREFIX}${m.path}.lora_A.weight`, fromF32(m.A, [m.r, m.inF], dt));
    tensors.set(`${PREFIX}${m.path}.lora_B.weight`, fromF32(m.B, [m.outF, m.r], dt));
  }
  const savedNames = [...(o.saved?.keys() ?? [])];
  for (const [name, t] of o.saved ?? []) tensors.set(PREFIX + name, t);
  const modulesToSave = savedNames.length
    ? [...new Set(savedNames.map((n) => n.split('.').slice(-2, -1)[0]))]
    : null;
  const config: Record<string, unknown> = {
    alpha_pattern: {},
    auto_mapping: null,
    base_model_name_or_path: o.baseModel ?? null,
    bias: 'none',
    fan_in_fan_out: false,
    inference_mode: true,
    init_lora_weights: true,
    layers_pattern: null,
    layers_to_transform: null,
    lora_dropout: o.dropout,
    modules_to_save: modulesToSave,
    peft_type: 'LORA',
    rank_pattern: {},
    revision: null,
    task_type: 'CAUSAL_LM',
    use_dora: false,
    use_rslora: false,
    ...(o.baseConfig ?? {}),
  };
  Object.assign(config, { r, lora_alpha: o.alpha, lora_dropout: o.dropout, target_modules: targets, modules_to_save: modulesToSave });
  if (o.baseModel !== undefined) config.base_model_name_or_path = o.baseModel;
  writeSafetensors(path.join(dir, ADAPTER_WEIGHTS), tensors, { format: 'pt' });
  atomicWrite(path.join(dir, ADAPTER_CONFIG), (tmp) => fs.writeFileSync(tmp, JSON.stringify(config, null, 2) + '\n'));
}

/** W + scaling·B·A for one base weight [out, in], computed in f64 and narrowed back to the stored dtype. */
export function foldLora(w: HostTensor, m: LoraModule, name: string): HostTensor {
  const [out, inF] = w.shape;
  if (w.shape.length !== 2 || inF !== m.inF || out !== m.outF) {
    fail(`${ADAPTER_WEIGHTS}: LoRA for "${name}" is [${m.outF}, ${m.r}]·[${m.r}, ${m.inF}] but the weight is [${w.shape}] (adapter made for another model?)`);
  }
  const base = toF32(w);
  const res = new Float64Array(out * inF);
  for (let o = 0; o < out; o++) {
    for (let i = 0; i < inF; i++) {
      let s = 0;
      for (let k = 0; k < m.r; k++) s += m.B[o * m.r + k] * m.A[k * inF + i];
      res[o * inF + i] = base[o * inF + i] + m.scaling * s;
    }
  }
  return fromF32(res, [out, inF], w.dtype);
}

/** The load-time transform: folds each module into its weight; saved norms replace the base ones. */
export function adapterTransform(a: Adapter): WeightTransform {
  const byWeight = new Map(a.modules.map((m) => [`${m.path}.weight`, m]));
  return (name, t) => {
    const m = byWeight.get(name);
    if (m) return foldLora(t, m, name);
    const s = a.saved.get(name);
    if (s) {
      if (s.shape.length !== t.shape.length || s.shape.some((d, i) => d !== t.shape[i])) {
        fail(`${ADAPTER_WEIGHTS}: tensor "${PREFIX}${name}" has shape [${s.shape}], the model's is [${t.shape}]`);
      }
      return fromF32(toF32(s), t.shape.slice(), t.dtype);
    }
    return t;
  };
}

registerAdapterLoader(async (dir, numLayers) => adapterTransform(readAdapter(dir, { numLayers })));
