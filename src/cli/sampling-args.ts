/** Sampling / stopping flags shared by `generate` and `chat`. */
import { fail } from '../errors.js';
import type { GenerateOptions } from '../generate/generate.js';
import { validateSampling } from '../generate/sampling.js';
import type { GenerationDefaults } from '../io/model-files.js';
import { fillGenerationDefaults } from '../generate/defaults.js';
import { int, num, strs, type Values } from './args.js';

export const SAMPLING_OPTIONS = {
  'max-tokens': { type: 'string' },
  temperature: { type: 'string', short: 't' },
  'top-k': { type: 'string' },
  'top-p': { type: 'string' },
  'min-p': { type: 'string' },
  'repetition-penalty': { type: 'string' },
  seed: { type: 'string' },
  stop: { type: 'string', multiple: true },
} as const;

export const SAMPLING_USAGE = `  --max-tokens N         most new tokens (default 128)
  --temperature T        0 = greedy (default 0.7)
  --top-k K              keep the K most likely tokens (default off)
  --top-p P              nucleus sampling, P in (0, 1] (default off)
  --min-p P              drop tokens below P x the top probability (default off)
  --repetition-penalty R HF repetition penalty, 1 = off (default 1)
                         (defaults: the model's generation_config.json where it sets them, do_sample false = greedy)
  --seed S               random seed (default: random)
  --stop STR             stop when the text contains STR (repeatable; STR is not printed)`;

/** The flags as given: options the user left out stay undefined (see withGenerationDefaults). */
export function samplingFromArgs(v: Values): GenerateOptions {
  const opts: GenerateOptions = {
    maxTokens: int(v, 'max-tokens'),
    temperature: num(v, 'temperature'),
    topK: int(v, 'top-k'),
    topP: num(v, 'top-p'),
    minP: num(v, 'min-p'),
    repetitionPenalty: num(v, 'repetition-penalty'),
    seed: int(v, 'seed'),
    stop: strs(v, 'stop'),
  };
  validateSampling(opts); // fail before the (slow) model load
  if (opts.maxTokens !== undefined && opts.maxTokens < 0) fail(`--max-tokens must be >= 0, got ${opts.maxTokens}`);
  return opts;
}

/** generation_config.json's defaults under the flags, then the CLI's own (temperature 0.7, 128 new tokens) */
export function withGenerationDefaults(opts: GenerateOptions, g: GenerationDefaults | null, dir: string): GenerateOptions {
  return fillGenerationDefaults(opts, g, `${dir}/generation_config.json`, { temperature: 0.7, maxTokens: 128 }, '(override it with the flag)');
}
