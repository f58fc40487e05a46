/**
 * gravity_mass_log values from tensors already read (files or fetched bytes): per layer, one per query head or one
 * per KV group; checks counts and finiteness, names the file and layer in errors. Node's file readers: masses.ts.
 */
import { fail } from '../errors.js';
import { isHostTensor, toF32, type HostTensor } from '../tensor/dtype.js';

export function massName(layer: number): string {
  return `model.layers.${layer}.self_attn.gravity_mass_log`;
}

const LAYER_KEY = /^(?:base_model\.model\.)?model\.layers\.(\d+)\.self_attn\.gravity_mass_log$/;
const FLOAT_DTYPES = new Set(['F32', 'BF16', 'F16', 'F64']);


/** Collects per-layer tensors from a name -> tensor lookup; errors name the file and layer. */
export function fromNamed(
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
export interface Counts {
  heads: number;
  kvHeads: number;
}

function allowed(c: Counts): string {
  return c.kvHeads === c.heads ? `${c.heads} (one per query head)` : `${c.heads} (one per query head) or ${c.kvHeads} (one per KV group)`;
}

export function layerValues(label: string, layer: number, t: HostTensor, c: Counts): Float32Array {
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

export function fromStacked(label: string, t: HostTensor, numLayers: number, c: Counts): Float32Array[] {
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


/** Per-layer raw masses in the form asked for: [numHeads] (group masses repeated) or [numKVHeads] (per-head averaged). */
export function shapeMasses(raw: Float32Array[], numHeads: number, kv: number, form: LoadMassesOptions['form']): Float32Array[] {
  return raw.map((v) => {
    if (form === 'groups') {
      if (v.length === kv) return v;
      const g = numHeads / kv;
      const out = new Float32Array(kv);
      for (let h = 0; h < numHeads; h++) out[Math.floor(h / g)] += v[h] / g;
      return out;
    }
    return v.length === numHeads ? v : expandGroupMasses(v, numHeads);
  });
}

/** The query/group head counts checked, then `read`'s per-layer masses in the form asked for (see shapeMasses). */
export function readShaped(label: string, numHeads: number, opts: LoadMassesOptions, read: (c: Counts) => Float32Array[]): Float32Array[] {
  const kv = opts.numKVHeads ?? numHeads;
  if (numHeads % kv !== 0) fail(`${label}: ${numHeads} query heads are not a multiple of ${kv} KV heads`);
  return shapeMasses(read({ heads: numHeads, kvHeads: kv }), numHeads, kv, opts.form);
}

/** Masses from named tensors (a safetensors file's, by the per-layer names or one stacked `gravity_mass_log`). */
export function massesFromTensors(
  label: string, names: string[], get: (name: string) => HostTensor, numLayers: number, numHeads: number, opts: LoadMassesOptions = {},
): Float32Array[] {
  return readShaped(label, numHeads, opts, (c) => fromNamed(label, names, get, numLayers, c));
}

/** Masses from an unpickled torch.save object: a dict of per-layer tensors, a list of them, or one [layers, heads]. */
export function fromTorchObject(label: string, obj: unknown, numLayers: number, numHeads: Counts): Float32Array[] {
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

/** massesFromTensors for an unpickled gravity_mass_log.pt (see fromTorchObject). */
export function massesFromTorch(label: string, obj: unknown, numLayers: number, numHeads: number, opts: LoadMassesOptions = {}): Float32Array[] {
  return readShaped(label, numHeads, opts, (c) => fromTorchObject(label, obj, numLayers, c));
}
