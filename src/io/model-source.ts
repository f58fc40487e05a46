/** A model given as a folder (config.json + safetensors) or as one GGUF file, opened the same way. */
import * as fs from 'node:fs';
import { fail } from '../errors.js';
import { loadCheckpointFiles, type CheckpointFiles } from './checkpoint.js';
import { isGgufFile, openGgufModel } from './gguf.js';
import type { ModelDefaults } from './model-files.js';

export interface ModelSource extends CheckpointFiles {
  /** masses read from the model file itself (GGUF's gravity.mass_log); folders name theirs in massesPath */
  masses: Float32Array[] | null;
  /** attention / eps recorded in the file (GGUF); null for folders (config.json's, see model/load.ts modelDefaults) */
  defaults: ModelDefaults | null;
  gguf: boolean;
}

/** Opens `dir` (a model folder or a .gguf file); `masses` is a masses file that takes precedence over the model's. */
export async function openModelSource(dir: string, opts: { masses?: string | null } = {}): Promise<ModelSource> {
  if (!isGgufFile(dir)) return { ...loadCheckpointFiles(dir, { masses: opts.masses ?? undefined }), masses: null, defaults: null, gguf: false };
  // as loadCheckpointFiles checks it, before the file is opened
  if (opts.masses && !fs.existsSync(opts.masses)) fail(`${opts.masses}: masses file does not exist`);
  const g = await openGgufModel(dir);
  return {
    dir, config: g.config, weights: g.weights, massesPath: opts.masses ?? null, generation: { eosTokenIds: g.eosTokenIds },
    tokenizerJson: g.tokenizerJson, tokenizerConfig: g.tokenizerConfig, masses: opts.masses ? null : g.masses, defaults: g.defaults, gguf: true,
  };
}
