/** Sampling / stopping flags shared by `generate` and `chat`. */
import { fail } from '../errors.js';
import type { GenerateOptions } from '../generate/generate.js';
import { validateSampling } from '../generate/sampling.js';
import type { GenerationDefaults } from '../io/model-files.js';
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

/**
 * Fills what the flags left out from the model's generation_config.json (as transformers' generate() would take
 * them: do_sample false = greedy, top_k 0 and top_p 1 = off), then the CLI's own defaults (temperature 0.7, 128 new
 * tokens). A value in the file that the sampler cannot take is an error naming the file.
 */
export function withGenerationDefaults(opts: GenerateOptions, g: GenerationDefaults | null, dir: string): GenerateOptions {
  const out = { ...opts };
  if (g) {
    const file = `${dir}/generation_config.json`;
    const given = (k: keyof GenerateOptions) => opts[k] !== undefined;
    if (!given('temperature')) out.temperature = g.doSample === false ? 0 : g.temperature;
    const sampled = (out.temperature ?? 0.7) > 0;
    if (!given('topK') && sampled && g.topK !== undefined && g.topK !== 0) out.topK = g.topK;
    if (!given('topP') && sampled && g.topP !== undefined && g.topP !== 1) out.topP = g.topP;
    if (!given('minP') && sampled && g.minP !== undefined && g.minP !== 0) out.minP = g.minP;
    if (!given('repetitionPenalty') && g.repetitionPenalty !== undefined) out.repetitionPenalty = g.repetitionPenalty;
    if (!given('maxTokens') && g.maxNewTokens !== undefined) out.maxTokens = g.maxNewTokens;
    try {
      validateSampling(out);
      if (out.maxTokens !== undefined && !(Number.isInteger(out.maxTokens) && out.maxTokens >= 0)) fail(`max_new_tokens must be a whole number >= 0, got ${out.maxTokens}`);
    } catch (e) {
      fail(`${file}: ${(e as Error).message} (override it with the flag)`);
    }
  }
  out.temperature ??= 0.7;
  out.maxTokens ??= 128;
  return out;
}
