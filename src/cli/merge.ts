/** `gravity merge`: folds a PEFT LoRA adapter (and its masses / norms) into a copy of the base model. */
import { mergeAdapter } from '../train/merge.js';
import { flag, parseCommand, required, str } from './args.js';
import { progress } from './progress.js';

export const usage = `usage: gravity merge --model BASE --adapter DIR --out OUT [options]

Writes a standalone model folder: base weights with W + (alpha / r) * B @ A folded in, the adapter's masses
(or the base's) and norms, config and tokenizer files. OUT is written beside itself and renamed into place.

  --model DIR            the base model folder the adapter was trained on
  --adapter DIR          PEFT adapter folder (adapter_config.json + adapter_model.safetensors), e.g. a gravity train --out
  --out DIR              the merged model folder (must not exist or be empty)
  --shard-size SIZE      safetensors shard size, e.g. 2GB, 500MB (default 2GB)
  --overwrite            replace a non-empty OUT
`;

const OPTIONS = {
  model: { type: 'string', short: 'm' },
  adapter: { type: 'string' },
  out: { type: 'string', short: 'o' },
  'shard-size': { type: 'string' },
  overwrite: { type: 'boolean' },
} as const;

export async function run(argv: string[]): Promise<number> {
  const v = parseCommand(argv, OPTIONS, usage);
  if (!v) return 0;
  const base = required(v, 'model', usage);
  const adapter = required(v, 'adapter', usage);
  const out = required(v, 'out', usage);
  const bar = progress('merging');
  let files: string[];
  try {
    files = mergeAdapter(base, adapter, out, {
      shardSize: str(v, 'shard-size'),
      overwrite: flag(v, 'overwrite'),
      onProgress: (d, t, name) => bar.update(d, t, name),
    });
  } finally {
    bar.done();
  }
  process.stderr.write(`merged ${adapter} into ${base} -> ${out} (${files.length} files)\n`);
  return 0;
}
