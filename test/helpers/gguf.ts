import { loadCheckpointFiles } from '../../src/io/checkpoint.js';
import { exportGguf, type ExportType } from '../../src/io/gguf.js';
import { loadMasses } from '../../src/io/masses.js';

/** a model folder written as GGUF with its masses, tokenizer and eos ids, as `gravity export` does */
export function exportFolder(dir: string, out: string, type: ExportType = 'keep'): void {
  const f = loadCheckpointFiles(dir);
  try {
    const c = f.config;
    const masses = f.massesPath ? loadMasses(f.massesPath, c.numLayers, c.numHeads, { numKVHeads: c.numKVHeads }) : null;
    exportGguf({ config: c, weights: f.weights, masses, defaults: {}, eosTokenIds: f.generation?.eosTokenIds ?? c.eosTokenIds, tokenizerJson: f.tokenizerJson, tokenizerConfig: f.tokenizerConfig, name: 'test' }, out, type);
  } finally {
    f.weights.close();
  }
}
