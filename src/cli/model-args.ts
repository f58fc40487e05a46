/** The --model / attention / device flags that every model-running command shares, and loading with progress. */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { fail } from '../errors.js';
import { parseAttentionKind } from '../attention/registry.js';
import { loadModel, type DeviceName, type LoadedModel, type LoadOptions } from '../model/load.js';
import { TextTokenizer } from '../tokenizer/tokenizer.js';
import { num, str, type Values } from './args.js';
import { progress } from './progress.js';

export const MODEL_OPTIONS = {
  model: { type: 'string', short: 'm' },
  attn: { type: 'string' },
  masses: { type: 'string' },
  'mass-init': { type: 'string' },
  eps: { type: 'string' },
  adapter: { type: 'string' },
  device: { type: 'string' },
  'int8-prefill': { type: 'boolean' },
  q8: { type: 'boolean' },
} as const;

export const MODEL_USAGE = `  --model DIR            model folder (config.json, *.safetensors, masses, tokenizer);
                         default: the bundled models/gravity-mini
  --attn gravity|dot     attention score function (default gravity)
  --masses FILE          gravity masses (.pt / .safetensors) overriding the folder's
  --mass-init SPEC       masses when the folder has none: raw:0.5 (mass_log = 0.5) or mass:0.5 (M = 0.5)
  --eps E                gravity softening epsilon (default 0.1)
  --adapter DIR          PEFT LoRA adapter folder applied on load
  --device cpu|webgpu|auto   compute device (default cpu)
  --q8                   CPU: quantize the linear weights to Q8_0 on load (llama.cpp's rounding; a GGUF's Q8_0
                         weights stay so anyway): ~1.5x faster decode, half the weight memory, logits ~1e-2 off
  --int8-prefill         WebGPU: prompt (prefill) linears in int8 (int8 tensor cores where the GPU exposes
                         them): ~2x faster long prompts on an H200, logits ~1e-2 relative off; decode stays exact;
                         keeps an int8 copy of each linear weight (+50% weight memory for bf16 models)`;

/** The package root: the nearest folder above this file whose package.json is gravity-lm (src/ or dist/src/). */
export function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    const pj = join(dir, 'package.json');
    if (existsSync(pj)) {
      try {
        if (JSON.parse(readFileSync(pj, 'utf8')).name === 'gravity-lm') return dir;
      } catch {
        /* keep walking */
      }
    }
    const up = dirname(dir);
    if (up === dir) return fail('cannot find the gravity-lm package root (package.json)');
    dir = up;
  }
}

export function resolveModelDir(v: Values): string {
  const given = str(v, 'model');
  if (given !== undefined) return given;
  const dir = join(packageRoot(), 'models', 'gravity-mini');
  if (!existsSync(join(dir, 'config.json'))) {
    fail(`no --model given and the bundled default model (${relative(process.cwd(), dir) || dir}) is not there; pass --model DIR`);
  }
  return dir;
}

function parseDevice(s: string | undefined): DeviceName | undefined {
  if (s === undefined) return undefined;
  if (s === 'cpu' || s === 'webgpu' || s === 'auto') return s;
  return fail(`--device '${s}': expected cpu, webgpu or auto`);
}

export function loadOptions(v: Values): LoadOptions {
  const attn = str(v, 'attn');
  const eps = num(v, 'eps');
  if (eps !== undefined && !(eps > 0)) fail(`--eps must be > 0, got ${eps}`);
  return {
    attention: attn === undefined ? undefined : parseAttentionKind(attn),
    masses: str(v, 'masses'),
    massInit: str(v, 'mass-init'),
    eps,
    adapter: str(v, 'adapter'),
    device: parseDevice(str(v, 'device')),
    int8Prefill: v['int8-prefill'] === true,
    q8: v.q8 === true,
  };
}

export async function loadFromArgs(v: Values): Promise<LoadedModel> {
  const dir = resolveModelDir(v);
  const opts = loadOptions(v);
  const bar = progress(`loading ${dir}`);
  try {
    return await loadModel(dir, { ...opts, onProgress: (d, t, what) => bar.update(d, t, what) });
  } finally {
    bar.done();
  }
}

export function tokenizerOf(model: LoadedModel): TextTokenizer | null {
  if (!model.tokenizerJson) return null;
  // newer transformers save the template next to the config instead of inside it
  const jinja = join(model.dir, 'chat_template.jinja');
  const template = existsSync(jinja) ? readFileSync(jinja, 'utf8') : undefined;
  return TextTokenizer.fromObjects(model.tokenizerJson, model.tokenizerConfig, template);
}

/**
 * Stop ids for chat-formatted prompts: the model's eos ids plus the tokenizer's eos token (<|im_end|> for Qwen
 * chat models, whose base generation_config may list only <|endoftext|>), so an answer ends at its turn end.
 */
export function chatEosIds(model: LoadedModel, tok: TextTokenizer): number[] {
  const ids = new Set(model.eosTokenIds);
  const id = tok.eosToken !== null ? tok.tokenToId(tok.eosToken) : undefined;
  if (id !== undefined && id < model.config.vocabSize) ids.add(id);
  return [...ids];
}
