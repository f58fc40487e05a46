/** `gravity export`: a model folder as one GGUF file (llama.cpp's format) with the gravity masses and keys. */
import { existsSync, readFileSync } from 'node:fs';
import { basename, join } from 'node:path';
import { fail } from '../errors.js';
import { openModelSource } from '../io/model-source.js';
import { exportGguf, type ExportType } from '../io/gguf.js';
import { adapterDefaults, adapterTransformFor, modelDefaults, type WeightTransform } from '../model/load.js';
import { findMassesFile, loadMasses } from '../io/masses.js';
import type { WeightStore } from '../io/safetensors-header.js';
import { parseAttentionKind } from '../attention/registry.js';
import { num, parseCommand, str } from './args.js';
import { resolveModelDir } from './model-args.js';

export const usage = `usage: gravity export [--model DIR] --out FILE.gguf [--type keep|f32|f16|bf16|q8_0] [options]

Writes the model folder as one GGUF file: config, weights, tokenizer and chat template as llama.cpp's converter
names them, plus the gravity masses and the attention / eps defaults as metadata keys (gravity.mass_log,
gravity.attention, gravity.eps), which llama.cpp ignores. \`gravity generate --model FILE.gguf\` loads it back with gravity attention;
llama.cpp loads it too, but runs dot-product attention (it has no gravity kernel).

  --model DIR        model folder or GGUF file (default: the bundled models/gravity-mini): a GGUF file can be
                     written again, e.g. as q8_0 or with --masses added
  --out FILE.gguf    the file to write (written to a temporary file, then renamed)
  --type T           2-D weights as stored (keep, default), or f32 / f16 / bf16 / q8_0 (8-bit blocks, llama.cpp's
                     rounding); norms, biases and masses stay f32
  --adapter DIR      a LoRA adapter (gravity train's output) folded into the weights, its masses and attention
                     included: the trained gravity model as one file
  --masses FILE      masses to include instead of the folder's (or the adapter's)
  --attn KIND        attention to record as the file's default (default: the folder's, if it names one)
  --eps E            gravity epsilon to record`;

const TYPES: ExportType[] = ['keep', 'f32', 'f16', 'bf16', 'q8_0'];

/** a store whose tensors come out through `f` (a LoRA adapter folded in) */
function withTransform(w: WeightStore, f: WeightTransform): WeightStore {
  return { ...w, names: () => w.names(), has: (n) => w.has(n), info: (n) => w.info(n), read: (n) => f(n, w.read(n)), close: () => w.close() };
}

export async function run(argv: string[]): Promise<number> {
  const v = parseCommand(argv, { model: { type: 'string', short: 'm' }, out: { type: 'string', short: 'o' }, type: { type: 'string' }, masses: { type: 'string' }, adapter: { type: 'string' }, attn: { type: 'string' }, eps: { type: 'string' } }, usage);
  if (!v) return 0;
  const out = str(v, 'out');
  if (!out) fail('--out FILE.gguf is required');
  if (!out.toLowerCase().endsWith('.gguf')) fail(`--out '${out}': the file name must end in .gguf`);
  const type = (str(v, 'type') ?? 'keep') as ExportType;
  if (!TYPES.includes(type)) fail(`--type '${type}': expected ${TYPES.join(', ')}`);
  const dir = resolveModelDir(v);
  const adapter = str(v, 'adapter');
  // masses trained with an adapter live in its folder and take precedence over the base's, as when loading
  const files = await openModelSource(dir, { masses: str(v, 'masses') ?? (adapter ? findMassesFile(adapter) : null) });
  try {
    const c = files.config;
    const masses = files.massesPath ? loadMasses(files.massesPath, c.numLayers, c.numHeads, { numKVHeads: c.numKVHeads }) : files.masses;
    const defaults = { ...(files.defaults ?? modelDefaults(dir)), ...(adapter ? adapterDefaults(adapter) : {}) };
    const weights = adapter ? withTransform(files.weights, await adapterTransformFor(adapter, c.numLayers)) : files.weights;
    const attn = str(v, 'attn');
    if (attn !== undefined) defaults.attention = parseAttentionKind(attn);
    const eps = num(v, 'eps');
    if (eps !== undefined) {
      if (!(eps > 0)) fail(`--eps must be > 0, got ${eps}`);
      defaults.eps = eps;
    }
    // newer transformers keep the chat template beside tokenizer_config.json
    const jinja = join(dir, 'chat_template.jinja');
    const tokenizerConfig = !files.gguf && existsSync(jinja) ? { ...(files.tokenizerConfig ?? {}), chat_template: readFileSync(jinja, 'utf8') } : files.tokenizerConfig;
    exportGguf({
      config: c, weights, masses, defaults, tokenizerJson: files.tokenizerJson, tokenizerConfig,
      eosTokenIds: files.generation?.eosTokenIds ?? c.eosTokenIds, name: basename(dir).replace(/\.gguf$/i, ''),
    }, out, type);
  } finally {
    files.weights.close();
  }
  process.stdout.write(`wrote ${out}\n`);
  return 0;
}
