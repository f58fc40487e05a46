/** `gravity plot`: the run figures (loss curve, mass and gradient heatmaps) and attention fields, as SVG + PNG. */
import { attentionFigure, writeFigure, writeRunFigures } from '../viz/figures.js';
import { UsageError, int, parseCommand, str } from './args.js';

export const usage = `usage: gravity plot RUN_DIR [--out DIR]
       gravity plot [RUN_DIR] --attention FILE --layer L --head H [--batch B] --out DIR

Draws from RUN_DIR/metrics.jsonl (written by gravity train): loss.{svg,png} (train + validation loss),
masses.{svg,png} (softplus(mass_log), layers x heads) and grad_norms.{svg,png} (mean gradient norm, layer x module).
With --attention: the [query x key] probabilities of one layer and head from a gravity forward --attention-maps
file, as attention_l<L>_h<H>.{svg,png}.

  --out DIR              where to write (default RUN_DIR)
  --attention FILE       safetensors from gravity forward --attention-maps
  --layer L              layer of the attention figure (default 0)
  --head H               head of the attention figure (default 0)
  --batch B              batch row of the attention figure (default 0)
`;

const OPTIONS = {
  out: { type: 'string', short: 'o' },
  attention: { type: 'string' },
  layer: { type: 'string' },
  head: { type: 'string' },
  batch: { type: 'string' },
} as const;

export async function run(argv: string[]): Promise<number> {
  // the run folder is the one positional argument (parseCommand takes flags only)
  const runDir = argv.length > 0 && !argv[0].startsWith('-') ? argv[0] : undefined;
  const v = parseCommand(runDir === undefined ? argv : argv.slice(1), OPTIONS, usage);
  if (!v) return 0;
  const attention = str(v, 'attention');
  const out = str(v, 'out') ?? runDir;
  if (runDir === undefined && attention === undefined) throw new UsageError('give a RUN_DIR (a gravity train --out folder) or --attention FILE', usage);
  if (out === undefined) throw new UsageError('missing --out', usage);
  const files: string[] = [];
  if (runDir !== undefined) files.push(...writeRunFigures(runDir, out));
  if (attention !== undefined) {
    const layer = int(v, 'layer') ?? 0;
    const head = int(v, 'head') ?? 0;
    files.push(...writeFigure(attentionFigure(attention, layer, head, int(v, 'batch') ?? 0), out, `attention_l${layer}_h${head}`));
  }
  for (const f of files) process.stdout.write(f + '\n');
  return 0;
}
