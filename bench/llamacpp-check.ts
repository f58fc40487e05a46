/**
 * Do our GGUF files load in llama.cpp, and does it compute what PyTorch does? Exports each PyTorch fixture with
 * `gravity export`, runs it in llama.cpp (node-llama-cpp, CPU; it has dot-product attention only) and compares its
 * greedy tokens with PyTorch's dot-product greedy tokens, and its next-token probabilities with ours (--attn dot on
 * the same file). node-llama-cpp is not a dependency (83 MB); install it next to the repo first:
 *   npm i --no-save -E node-llama-cpp@3.21.1 @node-llama-cpp/linux-x64@3.21.1 --omit=optional
 *   npm run build && node dist/bench/llamacpp-check.js
 */
import * as fs from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { loadCheckpointFiles } from '../src/io/checkpoint.js';
import { exportGguf } from '../src/io/gguf.js';
import { loadMasses } from '../src/io/masses.js';
import { loadModel } from '../src/model/load.js';

const FIXTURES = 'test/fixtures';
const NAMES = ['qwen2-gqa-f32', 'qwen2-mha-tied-bf16', 'llama-gqa-f16'];
const spec = 'node-llama-cpp';
const { getLlama } = (await import(spec)) as any;
const llama = await getLlama({ gpu: false, logLevel: process.env.LLAMA_LOG ?? 'error' });
const tmp = fs.mkdtempSync(join(tmpdir(), 'gguf-llamacpp-'));
let bad = 0;
for (const name of NAMES) {
  const dir = join(FIXTURES, name);
  const file = join(tmp, `${name}.gguf`);
  const f = loadCheckpointFiles(dir);
  const c = f.config;
  exportGguf({ config: c, weights: f.weights, masses: f.massesPath ? loadMasses(f.massesPath, c.numLayers, c.numHeads, { numKVHeads: c.numKVHeads }) : null, defaults: {}, eosTokenIds: [], tokenizerJson: null, tokenizerConfig: null, name }, file);
  f.weights.close();
  const exp = JSON.parse(fs.readFileSync(join(dir, 'expected.json'), 'utf8'));
  const g = exp.dot_greedy;
  const model = await llama.loadModel({ modelPath: file });
  const ctx = await model.createContext({ contextSize: 64 });
  const seq = ctx.getSequence();
  const tokens: number[] = [];
  let probs: Map<number, number> | null = null;
  for await (const out of seq.evaluateWithMetadata(g.prompt, { probabilities: true }, { temperature: 0 })) {
    probs ??= out.probabilities;
    tokens.push(out.token);
    if (tokens.length === g.tokens.length) break;
  }
  // ours on the same file, dot-product attention: the first step's distribution
  const ours = await loadModel(file, { attention: 'dot' });
  const logits = await ours.forward(ours.newSession(1, g.prompt.length), [g.prompt], { logits: 'last' });
  ours.dispose();
  let mx = -Infinity;
  for (const v of logits) mx = Math.max(mx, v);
  let sum = 0;
  for (const v of logits) sum += Math.exp(v - mx);
  let maxDiff = 0;
  for (let i = 0; i < logits.length; i++) maxDiff = Math.max(maxDiff, Math.abs(Math.exp(logits[i] - mx) / sum - (probs!.get(i) ?? 0)));
  const same = JSON.stringify(tokens) === JSON.stringify(g.tokens);
  if (!same || maxDiff > 1e-3) bad++;
  console.log(`${name}: llama.cpp greedy ${same ? '=' : '!='} PyTorch dot greedy (${tokens.length} tokens); next-token probabilities, max |llama.cpp - ours| = ${maxDiff.toExponential(2)}`);
  await ctx.dispose();
  await model.dispose();
}
// the bundled model's tokenizer written into the GGUF: llama.cpp's tokenization of texts (special tokens included)
// equals ours on the original folder
{
  const file = join(tmp, 'gravity-mini.gguf');
  const f = loadCheckpointFiles('models/gravity-mini');
  const c = f.config;
  exportGguf({ config: c, weights: f.weights, masses: null, defaults: {}, eosTokenIds: f.generation?.eosTokenIds ?? [], tokenizerJson: f.tokenizerJson, tokenizerConfig: f.tokenizerConfig, name: 'gravity-mini' }, file);
  f.weights.close();
  const ours = await loadModel('models/gravity-mini', { attention: 'dot' });
  const { tokenizerOf } = await import('../src/cli/model-args.js');
  const tok = tokenizerOf(ours)!;
  const model = await llama.loadModel({ modelPath: file });
  let diff = 0;
  const texts = ['What is 48 + 37?', '<|im_start|>user\n12+30<|im_end|>\n<|im_start|>assistant\n', '  spaces\tand\nnewlines  ', 'é ü 中文 🙂 -> 1000'];
  for (const t of texts) {
    const a = Array.from(model.tokenize(t, true) as number[]);
    const b = tok.encode(t, { addSpecialTokens: false });
    if (JSON.stringify(a) !== JSON.stringify(b)) {
      diff++;
      console.log(`gravity-mini tokenizer: ${JSON.stringify(t)}: llama.cpp ${JSON.stringify(a)} vs ours ${JSON.stringify(b)}`);
    }
  }
  console.log(`gravity-mini tokenizer through GGUF: ${texts.length - diff} of ${texts.length} texts tokenized alike by llama.cpp and us`);
  if (diff) bad++;
  ours.dispose();
  await model.dispose();
}
fs.rmSync(tmp, { recursive: true, force: true });
console.log(bad ? `${bad} of ${NAMES.length} differ` : 'llama.cpp reads every exported fixture as PyTorch and we do');
process.exit(bad ? 1 : 0);
