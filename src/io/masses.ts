/**
 * gravity_mass_log files: raw (pre-softplus) masses per layer, from .pt or .safetensors: one per query head
 * ([numHeads] per layer), or one per KV group ([numKVHeads] per layer, written by `gravity train
 * --mass-per-group`), which is expanded to the query heads of each group on load.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fail } from '../errors.js';
import type { HostTensor } from '../tensor/dtype.js';
import { openSafetensors, openWeights, writeSafetensors } from './safetensors.js';
import { readTorchFile, writeTorchFile } from './torch.js';
import { fromNamed, fromTorchObject, massName, readShaped, type Counts, type LoadMassesOptions } from './masses-parse.js';

export { expandGroupMasses, massName, massesFromTensors, massesFromTorch, type LoadMassesOptions } from './masses-parse.js';

export const MASS_FILES = ['gravity_mass_log.safetensors', 'gravity_mass_log.pt'];

/** Returns the masses file in a model folder (safetensors first), or null. */
export function findMassesFile(dir: string): string | null {
  for (const f of MASS_FILES) {
    const p = path.join(dir, f);
    if (fs.existsSync(p)) return p;
  }
  return null;
}

/**
 * Loads raw mass_log per layer ([numHeads] each, or [numKVHeads] with form 'groups'). Accepts .pt (dict of per-layer tensors, optionally with a
 * PEFT `base_model.model.` prefix; stacked [layers, heads]; list/tuple of per-layer tensors), .safetensors
 * (same names, or one `gravity_mass_log` [layers, heads]), or a model.safetensors.index.json whose shards hold them.
 */
export function loadMasses(file: string, numLayers: number, numHeads: number, opts: LoadMassesOptions = {}): Float32Array[] {
  return readShaped('loadMasses', numHeads, opts, (c) => readMasses(file, numLayers, c));
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
  return fromTorchObject(label, readTorchFile(file), numLayers, numHeads);
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
