/** `gravity inspect`: what a model folder holds, read from its files without building the model. */
import { readdirSync, statSync } from 'node:fs';
import { basename, join, relative } from 'node:path';
import { softplus } from '../backend/cpu/ops.js';
import { openModelSource } from '../io/model-source.js';
import { loadMasses } from '../io/masses.js';
import { numel, type DType } from '../tensor/dtype.js';
import { TextTokenizer } from '../tokenizer/tokenizer.js';
import { flag, parseCommand, str } from './args.js';
import { resolveModelDir } from './model-args.js';

export const usage = `usage: gravity inspect [--model DIR] [--masses FILE] [--json]

Describes a model folder: architecture, tensor shapes, parameter count, dtypes, file sizes,
gravity masses per layer and head (M = softplus(mass_log)), tokenizer and chat template.

  --model DIR            model folder (default: the bundled models/gravity-mini)
  --masses FILE          masses file to show instead of the folder's
  --json                 machine-readable output
`;

const OPTIONS = { model: { type: 'string', short: 'm' }, masses: { type: 'string' }, json: { type: 'boolean' } } as const;

function human(bytes: number): string {
  const units = ['B', 'KB', 'MB', 'GB', 'TB'];
  let i = 0;
  let x = bytes;
  while (x >= 1024 && i < units.length - 1) {
    x /= 1024;
    i++;
  }
  return `${i === 0 ? x : x.toFixed(x < 10 ? 2 : 1)} ${units[i]}`;
}

function count(n: number): string {
  if (n >= 1e9) return `${(n / 1e9).toFixed(2)}B`;
  if (n >= 1e6) return `${(n / 1e6).toFixed(2)}M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(1)}K`;
  return String(n);
}

export async function run(argv: string[]): Promise<number> {
  const v = parseCommand(argv, OPTIONS, usage);
  if (!v) return 0;
  const dir = resolveModelDir(v);
  const files = await openModelSource(dir, { masses: str(v, 'masses') });
  try {
    const cfg = files.config;
    const w = files.weights;
    const tensors: Record<string, { dtype: DType; shape: number[] }> = {};
    let params = 0;
    const byDtype: Record<string, number> = {};
    for (const name of w.names()) {
      const { dtype, shape, stored } = w.info(name);
      // GGUF block formats by their own name (they read as `dtype`)
      const as = (stored ?? dtype) as DType;
      tensors[name] = { dtype: as, shape };
      if (name.startsWith('gravity_mass_log') || name.includes('.gravity_mass_log')) continue; // shown below
      const n = numel(shape);
      params += n;
      byDtype[as] = (byDtype[as] ?? 0) + n;
    }
    const fileList = files.gguf
      ? [{ name: basename(dir), bytes: statSync(dir).size }]
      : readdirSync(dir)
        .filter((f) => statSync(join(dir, f)).isFile())
        .sort()
        .map((f) => ({ name: f, bytes: statSync(join(dir, f)).size }));

    let masses: number[][] | null = files.masses ? files.masses.map((l) => [...l].map(softplus)) : null;
    let massError: string | null = null;
    if (files.massesPath) {
      try {
        masses = loadMasses(files.massesPath, cfg.numLayers, cfg.numHeads, { numKVHeads: cfg.numKVHeads }).map((l) => [...l].map(softplus));
      } catch (e) {
        massError = (e as Error).message; // inspect should still describe a folder with broken masses
      }
    }

    let tokenizer: { vocab: number; chatTemplate: boolean; eos: string | null } | null = null;
    if (files.tokenizerJson) {
      const t = files.gguf ? TextTokenizer.fromObjects(files.tokenizerJson, files.tokenizerConfig) : TextTokenizer.hasTokenizer(dir) ? TextTokenizer.fromDir(dir) : null;
      if (t) tokenizer = { vocab: t.vocabSize, chatTemplate: t.hasChatTemplate, eos: t.eosToken };
    }

    if (flag(v, 'json')) {
      const obj = {
        dir,
        config: cfg,
        parameters: params,
        parameters_by_dtype: byDtype,
        tensors,
        files: fileList,
        masses_file: files.massesPath,
        masses,
        masses_error: massError,
        tokenizer,
        eos_token_ids: files.generation?.eosTokenIds ?? cfg.eosTokenIds,
      };
      process.stdout.write(JSON.stringify(obj) + '\n');
      return 0;
    }

    const L: string[] = [];
    L.push(`model       ${dir}`);
    L.push(`arch        ${cfg.architecture}: ${cfg.numLayers} layers, hidden ${cfg.hiddenSize}, ffn ${cfg.intermediateSize}, vocab ${cfg.vocabSize}, context ${cfg.maxPositionEmbeddings}`);
    L.push(`attention   ${cfg.numHeads} heads, ${cfg.numKVHeads} kv heads${cfg.numKVHeads < cfg.numHeads ? ` (GQA, ${cfg.numHeads / cfg.numKVHeads} per group)` : ''}, head dim ${cfg.headDim}, rope theta ${cfg.ropeTheta}`);
    L.push(`details     rms eps ${cfg.rmsNormEps}, tied embeddings ${cfg.tieWordEmbeddings ? 'yes' : 'no'}, qkv bias ${cfg.qkvBias ? 'yes' : 'no'}, o bias ${cfg.oBias ? 'yes' : 'no'}, mlp bias ${cfg.mlpBias ? 'yes' : 'no'}`);
    const dts = Object.entries(byDtype).map(([d, n]) => `${d} ${count(n)}`).join(', ');
    L.push(`parameters  ${params.toLocaleString('en-US')} (${count(params)}; ${dts})`);
    L.push(`eos ids     ${(files.generation?.eosTokenIds ?? cfg.eosTokenIds).join(', ') || '(none)'}`);
    L.push('shapes');
    // layer 0 stands for every layer; the rest are the non-layer tensors
    const shown = Object.entries(tensors).filter(([n]) => !/\.layers\.\d+\./.test(n) || /\.layers\.0\./.test(n));
    const nameW = Math.max(...shown.map(([n]) => n.length));
    for (const [n, t] of shown) {
      L.push(`  ${n.replace('.layers.0.', '.layers.N.').padEnd(nameW)}  ${t.dtype.padEnd(4)} [${t.shape.join(', ')}]`);
    }
    L.push('files');
    const fw = Math.max(...fileList.map((f) => f.name.length));
    for (const f of fileList) L.push(`  ${f.name.padEnd(fw)}  ${human(f.bytes).padStart(9)}`);
    if (massError) L.push(`masses      unreadable: ${massError}`);
    else if (!masses) L.push('masses      none (gravity needs --masses or --mass-init; --attn dot works)');
    else {
      L.push(`masses      M = softplus(mass_log), from ${files.massesPath ? relative(dir, files.massesPath) || basename(files.massesPath) : 'the file (gravity.mass_log)'}`);
      const heads = Array.from({ length: cfg.numHeads }, (_, h) => `h${h}`.padStart(6));
      L.push(`  layer ${heads.join(' ')}     mean`);
      masses.forEach((row, l) => {
        const mean = row.reduce((a, b) => a + b, 0) / row.length;
        L.push(`  ${String(l).padStart(5)} ${row.map((m) => m.toFixed(3).padStart(6)).join(' ')}   ${mean.toFixed(3).padStart(6)}`);
      });
    }
    if (!tokenizer) L.push('tokenizer   none (use --prompt-ids)');
    else L.push(`tokenizer   ${tokenizer.vocab.toLocaleString('en-US')} tokens, chat template ${tokenizer.chatTemplate ? 'yes' : 'no'}${tokenizer.eos ? `, eos ${tokenizer.eos}` : ''}`);
    process.stdout.write(L.join('\n') + '\n');
    return 0;
  } finally {
    files.weights.close();
  }
}
