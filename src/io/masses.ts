/**
 * gravity_mass_log files: raw (pre-softplus) masses per layer, from .pt or .safetensors: one per query head
 * ([numHeads] per layer), or one per KV group ([numKVHeads] per layer, written by `gravity train
 * --mass-per-group`), which is expanded to the query heads of each group on load.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fail } from '../errors.js';
import { toF32, type HostTensor } from '../tensor/dtype.js';
import { openSafetensors, openWeights, writeSafetensors } from './safetensors.js';
import { isHostTensor, readTorchFile, writeTorchFile } from './torch.js';

export const MASS_FILES = ['gravity_mass_log.safetensors', 'gravity_mass_log.pt'];

export function massName(layer: number): string {
  return `model.layers.${layer}.self_attn.gravity_mass_log`;
}

const LAYER_KEY = /^(?:base_model\.model\.)?model\.layers\.(\d+)\.self_attn\.gravity_mass_log$/;
const FLOAT_DTYPES = new Set(['F32', 'BF16', 'F16', 'F64']);

/** Returns the masses file in a model folder (safetensors first), or null. */
export function findMassesFile(dir: string): string | null {
  for (const f of MASS_FILES) {
    const p = path.join(dir, f);
    if (fs.existsSync(p)) return p;
  }
  return null;
}

/** Collects per-layer tensors from a name -> tensor lookup; errors name the file and layer. */
function fromNamed(
  label: string,
  keys: string[],
  get: (key: string) => HostTensor,
  numLayers: number,
  numHeads: Counts,
): Float32Array[] {
  const byLayer = new Map<number, string>();
  for (const k of keys) {
    const m = LAYER_KEY.exec(k);
    if (!m) continue;
    const layer = Number(m[1]);
    if (byLayer.has(layer)) fail(`${label}: layer ${layer} has two mass entries ("${byLayer.get(layer)}" and "${k}")`);
    byLayer.set(layer, k);
  }
  if (byLayer.size === 0) {
    if (keys.includes('gravity_mass_log')) return fromStacked(label, get('gravity_mass_log'), numLayers, numHeads);
    fail(`${label}: no "model.layers.{i}.self_attn.gravity_mass_log" or "gravity_mass_log" entries (found ${keys.slice(0, 3).map((k) => `"${k}"`).join(', ') || 'nothing'})`);
  }
  const extra = [...byLayer.keys()].filter((l) => l >= numLayers);
  if (extra.length) fail(`${label}: has masses for layer ${Math.max(...extra)} but the model has ${numLayers} layers`);
  const out: Float32Array[] = [];
  for (let i = 0; i < numLayers; i++) {
    const k = byLayer.get(i);
    if (!k) fail(`${label}: layer ${i} has no mass entry ("${massName(i)}"); found ${byLayer.size} layers, the model has ${numLayers}`);
    out.push(layerValues(label, i, get(k), numHeads));
  }
  return out;
}

/** allowed masses per layer: per query head, and per KV group when that differs */
interface Counts {
  heads: number;
  kvHeads: number;
}

function allowed(c: Counts): string {
  return c.kvHeads === c.heads ? `${c.heads} (one per query head)` : `${c.heads} (one per query head) or ${c.kvHeads} (one per KV group)`;
}

function layerValues(label: string, layer: number, t: HostTensor, c: Counts): Float32Array {
  if (!isHostTensor(t)) fail(`${label}: layer ${layer} mass is not a tensor`);
  if (!FLOAT_DTYPES.has(t.dtype)) fail(`${label}: layer ${layer} mass has dtype ${t.dtype}, expected a float dtype`);
  const squeezed = t.shape.filter((d) => d !== 1);
  const n = t.data.length;
  if (squeezed.length > 1 || (n !== c.heads && n !== c.kvHeads)) {
    fail(`${label}: layer ${layer} has ${n} masses (shape ${JSON.stringify(t.shape)}), expected ${allowed(c)}`);
  }
  const v = toF32(t);
  for (let h = 0; h < n; h++) {
    if (!Number.isFinite(v[h])) fail(`${label}: layer ${layer} head ${h} mass_log is ${v[h]}`);
  }
  return v;
}

function fromStacked(label: string, t: HostTensor, numLayers: number, c: Counts): Float32Array[] {
  if (!FLOAT_DTYPES.has(t.dtype)) fail(`${label}: masses have dtype ${t.dtype}, expected a float dtype`);
  if (t.shape.length !== 2) fail(`${label}: stacked masses have shape ${JSON.stringify(t.shape)}, expected [${numLayers}, ${c.heads}] (layers, heads)`);
  if (t.shape[0] !== numLayers) fail(`${label}: has masses for ${t.shape[0]} layers, the model has ${numLayers}`);
  if (t.shape[1] !== c.heads && t.shape[1] !== c.kvHeads) fail(`${label}: layer 0 has ${t.shape[1]} masses, expected ${allowed(c)}`);
  const numHeads = t.shape[1];
  const all = toF32(t);
  const out: Float32Array[] = [];
  for (let i = 0; i < numLayers; i++) {
    const v = all.slice(i * numHeads, (i + 1) * numHeads);
    for (let h = 0; h < numHeads; h++) {
      if (!Number.isFinite(v[h])) fail(`${label}: layer ${i} head ${h} mass_log is ${v[h]}`);
    }
    out.push(v);
  }
  return out;
}

export interface LoadMassesOptions {
  /** KV heads of the model: a file may then hold one mass per KV group */
  numKVHeads?: number;
  /**
   * 'heads' (default): [numHeads] per layer, group masses repeated over their query heads.
   * 'groups': [numKVHeads] per layer (training with one mass per group); a per-head file is averaged per group.
   */
  form?: 'heads' | 'groups';
}

/** [numKVHeads] -> [numHeads]: each group's mass repeated over its numHeads/numKVHeads query heads. */
export function expandGroupMasses(v: ArrayLike<number>, numHeads: number): Float32Array {
  const g = numHeads / v.length;
  const out = new Float32Array(numHeads);
  for (let h = 0; h < numHeads; h++) out[h] = v[Math.floor(h / g)];
  return out;
}

/**
 * Loads raw mass_log per layer ([numHeads] each, or [numKVHeads] with form 'groups'). Accepts .pt (dict of per-layer tensors, optionally with a
 * PEFT `base_model.model.` prefix; stacked [layers, heads]; list/tuple of per-layer tensors), .safetensors
 * (same names, or one `gravity_mass_log` [layers, heads]), or a model.safetensors.index.json whose shards hold them.
 */
export function loadMasses(file: string, numLayers: number, numHeads: number, opts: LoadMassesOptions = {}): Float32Array[] {
  const kv = opts.numKVHeads ?? numHeads;
  if (numHeads % kv !== 0) fail(`loadMasses: ${numHeads} query heads are not a multiple of ${kv} KV heads`);
  const raw = readMasses(file, numLayers, { heads: numHeads, kvHeads: kv });
  return raw.map((v) => {
    if (opts.form === 'groups') {
      if (v.length === kv) return v;
      const g = numHeads / kv;
      const out = new Float32Array(kv);
      for (let h = 0; h < numHeads; h++) out[Math.floor(h / g)] += v[h] / g;
      return out;
    }
    return v.length === numHeads ? v : expandGroupMasses(v, numHeads);
  });
}

function readMasses(file: string, numLayers: number, numHeads: Counts): Float32Array[] {
  const label = path.basename(file);
  if (!fs.existsSync(file)) fail(`${file}: masses file does not exist`);
  if (file.endsWith('.index.json')) {
    const store = openWeights(path.dirname(file));
    try {
      return fromNamed(label, store.names(), (k) => store.read(k), numLayers, numHeads);
    } finally {
      store.close();
    }
  }
  if (file.endsWith('.safetensors')) {
    const f = openSafetensors(file);
    try {
      return fromNamed(label, [...f.tensors.keys()], (k) => f.read(k), numLayers, numHeads);
    } finally {
      f.close();
    }
  }
  const obj = readTorchFile(file);
  if (isHostTensor(obj)) return fromStacked(label, obj, numLayers, numHeads);
  if (Array.isArray(obj)) {
    if (obj.length !== numLayers) fail(`${label}: has masses for ${obj.length} layers, the model has ${numLayers}`);
    return obj.map((t, i) => layerValues(label, i, t as HostTensor, numHeads));
  }
  if (obj instanceof Map) {
    const keys = [...obj.keys()].filter((k): k is string => typeof k === 'string');
    return fromNamed(label, keys, (k) => obj.get(k) as HostTensor, numLayers, numHeads);
  }
  fail(`${label}: expected a dict, list or [layers, heads] tensor of masses, found ${obj === null ? 'None' : typeof obj}`);
}

/** Writes gravity_mass_log.safetensors and gravity_mass_log.pt (dict form, f32) into `dir`, each atomically. */
export function saveMasses(dir: string, massLog: Float32Array[]): void {
  const tensors = new Map<string, HostTensor>();
  massLog.forEach((v, i) => {
    for (let h = 0; h < v.length; h++) {
      if (!Number.isFinite(v[h])) fail(`saveMasses: layer ${i} head ${h} mass_log is ${v[h]}`);
    }
    tensors.set(massName(i), { dtype: 'F32', shape: [v.length], data: Float32Array.from(v) });
  });
  writeSafetensors(path.join(dir, 'gravity_mass_log.safetensors'), tensors, { format: 'pt' });
  writeTorchFile(path.join(dir, 'gravity_mass_log.pt'), tensors, { archiveName: 'gravity_mass_log' });
}
