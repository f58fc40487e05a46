/** Sampling defaults from a model's generation_config.json, under what the caller asked for (CLI flags, HTTP fields). */
import { fail } from '../errors.js';
import type { GenerationDefaults } from '../io/model-files.js';
import type { GenerateOptions } from './generate.js';
import { validateSampling } from './sampling.js';

/**
 * Fills what `opts` leaves undefined from generation_config.json `g` as transformers' generate() would take them
 * (do_sample false = greedy; top_k 0, top_p 1, min_p 0 = off; max_new_tokens), then from `fallback`. A value of the
 * file that the sampler cannot take is an error naming `file` (with `hint` appended).
 */
export function fillGenerationDefaults(
  opts: GenerateOptions, g: GenerationDefaults | null, file: string, fallback: { temperature: number; maxTokens?: number }, hint = '',
): GenerateOptions {
  const out = { ...opts };
  if (g) {
    const given = (k: keyof GenerateOptions) => opts[k] !== undefined;
    if (!given('temperature')) out.temperature = g.doSample === false ? 0 : g.temperature;
    const sampled = (out.temperature ?? fallback.temperature) > 0;
    if (!given('topK') && sampled && g.topK !== undefined && g.topK !== 0) out.topK = g.topK;
    if (!given('topP') && sampled && g.topP !== undefined && g.topP !== 1) out.topP = g.topP;
    if (!given('minP') && sampled && g.minP !== undefined && g.minP !== 0) out.minP = g.minP;
    if (!given('repetitionPenalty') && g.repetitionPenalty !== undefined) out.repetitionPenalty = g.repetitionPenalty;
    if (!given('maxTokens') && g.maxNewTokens !== undefined) out.maxTokens = g.maxNewTokens;
    try {
      validateSampling(out);
      if (out.maxTokens !== undefined && !(Number.isInteger(out.maxTokens) && out.maxTokens >= 0)) fail(`max_new_tokens must be a whole number >= 0, got ${out.maxTokens}`);
    } catch (e) {
      fail(`${file}: ${(e as Error).message}${hint ? ` ${hint}` : ''}`);
    }
  }
  out.temperature ??= fallback.temperature;
  if (fallback.maxTokens !== undefined) out.maxTokens ??= fallback.maxTokens;
  return out;
}
