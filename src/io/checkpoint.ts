/** A model folder's files: config, weights, masses, generation defaults, tokenizer. No tensor data is read here. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fail } from '../errors.js';
import type { ModelConfig } from '../model/config.js';
import { parseConfig } from './config.js';
import { findMassesFile, massName } from './masses.js';
import { openWeights, type WeightStore } from './safetensors.js';
import { checkWeights, parseGeneration, type GenerationDefaults } from './model-files.js';

export { checkWeights, expectedWeightShapes, parseGeneration, type GenerationDefaults } from './model-files.js';

export interface CheckpointFiles {
  dir: string;
  config: ModelConfig;
  weights: WeightStore;
  /** a masses file (.pt / .safetensors), the weights file holding gravity_mass_log tensors, or null */
  massesPath: string | null;
  generation: GenerationDefaults | null;
  tokenizerJson: object | null;
  tokenizerConfig: object | null;
}

function readJson(file: string): unknown {
  try {
    return JSON.parse(fs.readFileSync(file, 'utf8'));
  } catch (e) {
    fail(`${file}: not valid JSON (${(e as Error).message})`);
  }
}

function optionalJson(file: string): object | null {
  if (!fs.existsSync(file)) return null;
  const v = readJson(file);
  if (!v || typeof v !== 'object') fail(`${file}: expected a JSON object`);
  return v;
}

/** Locates and parses everything in a model folder; checks the weights' names and shapes against the config. */
export function loadCheckpointFiles(dir: string, opts: { masses?: string } = {}): CheckpointFiles {
  if (!fs.existsSync(dir)) fail(`${dir}: model folder does not exist`);
  if (!fs.statSync(dir).isDirectory()) fail(`${dir}: is not a folder (expected a model folder with config.json and *.safetensors)`);
  const cfgPath = path.join(dir, 'config.json');
  if (!fs.existsSync(cfgPath)) fail(`${dir}: no config.json in the model folder`);
  const config = parseConfig(readJson(cfgPath), 'config.json');
  const weights = openWeights(dir);
  try {
    checkWeights(weights, config);
    let massesPath: string | null = null;
    if (opts.masses) {
      if (!fs.existsSync(opts.masses)) fail(`${opts.masses}: masses file does not exist`);
      massesPath = opts.masses;
    } else {
      massesPath = findMassesFile(dir);
      // A model saved with its gravity parameters keeps them among the weights.
      if (!massesPath && weights.has(massName(0))) {
        const idx = path.join(dir, 'model.safetensors.index.json');
        massesPath = fs.existsSync(idx) ? idx : weights.info(massName(0)).file;
      }
    }
    const genPath = path.join(dir, 'generation_config.json');
    const generation = fs.existsSync(genPath) ? parseGeneration(readJson(genPath), 'generation_config.json', config) : null;
    return {
      dir,
      config,
      weights,
      massesPath,
      generation,
      tokenizerJson: optionalJson(path.join(dir, 'tokenizer.json')),
      tokenizerConfig: optionalJson(path.join(dir, 'tokenizer_config.json')),
    };
  } catch (e) {
    weights.close();
    throw e;
  }
}

