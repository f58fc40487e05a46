// Turns what scripts/gravity-mini/run.sh left in OUT into docs/EXPERIMENTS.md (tables, figures, the commands that
// reproduce them) and installs the best gravity model into models/gravity-mini with its accuracy.json. Plain node;
// needs the built dist/ (for the accuracy check of the installed model) and `tar`.
//
//   node scripts/gravity-mini/report.mjs OUT [--bundle OUT2] [--docs FILE] [--figures DIR] [--models DIR] [--no-model] [--sample N]
// --bundle OUT2: install the best model of another run.sh OUT (e.g. one longer `--only` run) instead of OUT's.
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const CLI = path.join(ROOT, 'dist/src/cli/main.js');

const argv = process.argv.slice(2);
const opt = (name, dflt) => {
  const i = argv.indexOf(name);
  return i >= 0 ? argv[i + 1] : dflt;
};
const VALUED = ['--docs', '--figures', '--models', '--sample', '--bundle'];
const OUT = argv.find((a, i) => !a.startsWith('--') && !(i > 0 && VALUED.includes(argv[i - 1])));
if (!OUT) {
  process.stderr.write('usage: node scripts/gravity-mini/report.mjs OUT [--bundle OUT2] [--docs FILE] [--figures DIR] [--models DIR] [--no-model] [--sample N]\n');
  process.exit(2);
}
const DOCS = path.resolve(opt('--docs', path.join(ROOT, 'docs/EXPERIMENTS.md')));
const FIGS = path.resolve(opt('--figures', path.join(ROOT, 'docs/figures/gravity-mini')));
const MODELS = path.resolve(opt('--models', path.join(ROOT, 'models/gravity-mini')));
const SAMPLE = Number(opt('--sample', '40'));
const installModel = !argv.includes('--no-model');
const BUNDLE = opt('--bundle', OUT);

const results = JSON.parse(fs.readFileSync(path.join(OUT, 'results.json'), 'utf8'));
const S = results.settings;
const runs = new Map(results.runs.map((r) => [r.name, r]));
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'gravity-mini-report-'));
execFileSync('tar', ['-xzf', path.join(OUT, 'runs.tar.gz'), '-C', tmp]);

// ---- figures: loss and masses of every run (dot runs have no masses)
fs.mkdirSync(FIGS, { recursive: true });
const figs = new Map();
for (const r of results.runs) {
  const got = [];
  for (const kind of ['loss', 'masses']) {
    const src = path.join(tmp, 'runs', r.name, `${kind}.png`);
    if (!fs.existsSync(src) || (kind === 'masses' && r.attention === 'dot')) continue;
    const dst = path.join(FIGS, `${r.name}-${kind}.png`);
    fs.copyFileSync(src, dst);
    got.push([kind, path.relative(path.dirname(DOCS), dst).split(path.sep).join('/')]);
  }
  figs.set(r.name, Object.fromEntries(got));
}

// ---- the bundled model (from OUT, or from --bundle OUT2)
let bundled = null;
const bres = BUNDLE === OUT ? results : JSON.parse(fs.readFileSync(path.join(BUNDLE, 'results.json'), 'utf8'));
const btmp = BUNDLE === OUT ? tmp : fs.mkdtempSync(path.join(os.tmpdir(), 'gravity-mini-bundle-'));
if (BUNDLE !== OUT) execFileSync('tar', ['-xzf', path.join(BUNDLE, 'runs.tar.gz'), '-C', btmp]);
if (installModel && bres.best && fs.existsSync(path.join(BUNDLE, 'best-model.tar.gz'))) {
  execFileSync('tar', ['-xzf', path.join(BUNDLE, 'best-model.tar.gz'), '-C', btmp]);
  const src = path.join(btmp, 'best');
  const BS = bres.settings;
  fs.mkdirSync(MODELS, { recursive: true });
  for (const f of fs.readdirSync(MODELS)) if (!f.startsWith('tokenizer')) fs.rmSync(path.join(MODELS, f), { recursive: true, force: true });
  for (const f of ['config.json', 'generation_config.json', 'model.safetensors', 'gravity_mass_log.safetensors', 'gravity_mass_log.pt', 'tokenizer.json', 'tokenizer_config.json', 'training.json']) {
    if (fs.existsSync(path.join(src, f))) fs.copyFileSync(path.join(src, f), path.join(MODELS, f));
  }
  // the sample the test re-creates: the first SAMPLE test problems of `gravity task make --seed 0 --digits D`
  const { makeSplits, toRecord } = await import(pathToFileURL(path.join(ROOT, 'dist/src/tasks/dataset.js')).href);
  const sample = makeSplits({ train: 0, val: 0, test: SAMPLE }, BS.task_seed, { digits: BS.digits }).test.map(toRecord);
  const shipped = fs.readFileSync(path.join(btmp, 'data/test.jsonl'), 'utf8').split('\n').filter(Boolean).slice(0, SAMPLE);
  if (sample.join('\n') !== shipped.join('\n')) throw new Error('the regenerated sample differs from the first test problems of the run: the generator changed');
  const sampleFile = path.join(tmp, 'sample.jsonl');
  fs.writeFileSync(sampleFile, sample.join('\n') + '\n');
  const ev = JSON.parse(execFileSync(process.execPath, [CLI, 'task', 'eval', '--model', MODELS, '--data', sampleFile, '--max-tokens', String(BS.max_tokens), '--json'], { encoding: 'utf8', env: { ...process.env, GRAVITY_NO_PROGRESS: '1' } }));
  const r = bres.runs.find((x) => x.name === bres.best);
  const bytes = fs.readdirSync(MODELS).reduce((a, f) => a + fs.statSync(path.join(MODELS, f)).size, 0);
  bundled = {
    run: r.name,
    method: r.method,
    attention: r.attention,
    eps: r.eps,
    task: { command: 'gravity task make', seed: BS.task_seed, digits: BS.digits },
    sample: { n: ev.total, correct: ev.correct, accuracy: ev.accuracy, max_tokens: BS.max_tokens, problems: `the first ${SAMPLE} test problems of gravity task make --seed ${BS.task_seed} --digits ${BS.digits}` },
    test: { n: r.total, correct: r.correct, accuracy: r.accuracy },
    val_loss: r.val_loss,
    steps: r.steps,
    input_tokens: r.input_tokens,
    command: r.command,
    separate_run: BUNDLE !== OUT ? { only: BS.only, threads: BS.threads, phase1_s: BS.phase1_s, steps1: BS.steps1 } : null,
    bytes,
  };
  fs.writeFileSync(path.join(MODELS, 'accuracy.json'), JSON.stringify(bundled, null, 2) + '\n');
  process.stderr.write(`installed ${r.name} into ${MODELS} (${(bytes / 1e6).toFixed(1)} MB): sample ${ev.correct}/${ev.total}, test ${r.correct}/${r.total}\n`);
}

// ---- EXPERIMENTS.md
const pct = (x) => (x === null || x === undefined ? '–' : `${(100 * x).toFixed(1)}%`);
const num = (x, d = 3) => (x === null || x === undefined || !Number.isFinite(x) ? '–' : x.toFixed(d));
const yes = (r) => (r.diverged ? `**yes** (${r.diverged_reason})` : r.status === 'done' ? 'no' : `no (${r.status})`);
const settingOf = (r) => {
  const parts = [r.method === 'full' ? 'full, from init' : 'LoRA r16 from base-dot', r.attention];
  if (r.attention !== 'dot') parts.push(r.mass_init === 'mass:0.5' ? 'M = 0.5' : 'raw 0.5', r.mass_per_group ? 'mass per KV group' : 'mass per head', `ε ${r.eps}`);
  return parts.join(', ');
};
const row = (r, label = r.name) =>
  `| ${label} | ${settingOf(r)} | ${r.steps} | ${(r.input_tokens / 1000).toFixed(0)}k | ${num(r.train_s, 0)} s | ${num(r.val_loss)}${r.val_loss_step !== null && r.val_loss_step < r.steps ? ` (step ${r.val_loss_step})` : ''} | ${pct(r.accuracy)} (${r.correct ?? '–'}/${r.total ?? '–'}) | ${yes(r)} | ${r.seed} |`;
const HEAD = '| run | setting | steps | tokens | train time | val loss | test accuracy | diverged | seed |\n|---|---|---|---|---|---|---|---|---|';
const pick = (...names) => names.map((n) => runs.get(n)).filter(Boolean);

const md = [];
md.push('# Experiments: gravity-mini', '');
md.push(
  `Generated by \`scripts/gravity-mini/report.mjs\` from the results of \`scripts/gravity-mini/run.sh\` (${results.created.slice(0, 10)}, ` +
    `${S.cores} CPU cores, Node ${S.node}; training runs on the CPU with the WASM engine, ${S.parallel} runs at a time, ${S.threads} threads each).` +
    (S.tiny ? ' **This is a smoke-test run (--tiny): the numbers mean nothing.**' : ''),
  '',
);
md.push('## Set-up', '');
md.push(
  `- Task: \`gravity task make --seed ${S.task_seed} --digits ${S.digits} --train ${S.train} --val ${S.val} --test ${S.test}\`: arithmetic with worked solutions ` +
    '(add, sub, mul, cmp, word problems, two-step chains), splits disjoint by the mathematics of each problem. Accuracy = exact match of the final ' +
    `\`Answer: <n>\` under greedy decoding (${S.max_tokens} tokens at most)` +
    (S.eval_limit ? ` on the first ${S.eval_limit} test problems.` : ` on all ${S.test} test problems.`),
  '- Model: the `gravity-mini` preset of `gravity init-random` (Qwen2 shape: hidden 192, 6 layers, 6 query / 2 KV heads, head_dim 32, intermediate 512, ' +
    'vocab 512, tied embeddings, 2,462,016 parameters), one shared start `gravity init-random --config gravity-mini --init train --seed 0` for every run from scratch.',
  `- Training: AdamW, windows of ${S.seq_len} tokens (whole problems packed, loss on the assistant turns), batch ${S.batch_size}, ` +
    `lr ${S.lr_full} (full) / ${S.lr_lora} (LoRA r 16, alpha 32 on q,k,v,o; masses trained), 5% warm-up then cosine to 10%, ` +
    `weight decay 0.01 on the matrices of full runs. Phase 1 (from scratch): ${S.steps1} steps; phase 2 (conversions of base-dot): ${S.steps2} steps.`,
  '- Validation loss: mean cross-entropy over the assistant tokens of the validation split, at the end of training (measured at step 0, halfway and at the end; a run stopped early shows the step of its last measurement).',
  "- Diverged: the run stopped on a non-finite loss, or its train loss over the last tenth of the steps rose more than 0.5 nats above its best tenth, or the final validation loss is above the one at step 0.",
  '- Seed: the order of the data and the LoRA initialisation (`gravity train --seed`); the weights of every from-scratch run start from the same seed-0 init.',
  '',
);
if (results.calibration) {
  const c = results.calibration;
  md.push(`Step counts came from a calibration under the full parallel load: ${c.s_step_phase1} s/step (slowest phase-1 run), ${c.overhead_s} s start-up.`, '');
}

md.push('## The three models', '');
md.push('1. **base-dot**: dot-product attention, trained from scratch. 2. **stage1**: the model card\'s stage 1: base-dot converted to gravity with LoRA + learnable masses (raw 0.5, ε 0.1). 3. **gravity-scratch**: gravity trained from scratch. The seed-1 rows repeat each with another data order.', '');
md.push(HEAD);
for (const r of pick('base-dot', 'stage1', 'gravity-scratch', 'base-dot-seed1', 'stage1-seed1', 'gravity-scratch-seed1')) md.push(row(r));
md.push('');
const cats = [...new Set(results.runs.flatMap((r) => Object.keys(r.per_category ?? {})))].sort();
if (cats.length) {
  md.push('Test accuracy per category:', '');
  md.push(`| run | ${cats.join(' | ')} |`, `|---|${cats.map(() => '---').join('|')}|`);
  for (const r of results.runs) if (r.per_category) md.push(`| ${r.name} | ${cats.map((c) => pct(r.per_category[c])).join(' | ')} |`);
  md.push('');
}
for (const n of ['base-dot', 'stage1', 'gravity-scratch']) {
  const f = figs.get(n);
  if (f?.loss) md.push(`**${n}**: ![${n} loss](${f.loss})${f.masses ? ` ![${n} masses](${f.masses})` : ''}`, '');
}

md.push('## The card\'s open questions', '');
md.push('Each pair differs in one setting from its reference row (gravity-scratch from scratch, stage1 for the conversion).', '');
const Q = [
  ['mass initialisation: raw 0.5 (M = softplus(0.5) ≈ 0.974) vs M = 0.5', ['gravity-scratch', 'gravity-scratch-mass0.5', 'stage1', 'stage1-mass0.5']],
  ['one mass per query head vs one per KV group', ['gravity-scratch', 'gravity-scratch-group', 'stage1', 'stage1-group']],
  ['ε (softening)', ['stage1-eps0.01', 'stage1', 'stage1-eps1']],
  ['pure gravity (weights M²/(d²+ε) / their sum, no softmax)', ['gravity-scratch', 'gravity-scratch-pure', 'stage1', 'stage1-pure']],
];
for (const [q, names] of Q) {
  md.push(`### ${q}`, '', HEAD);
  for (const r of pick(...names)) md.push(row(r));
  md.push('');
}
const pureRuns = pick('gravity-scratch-pure', 'stage1-pure');
if (pureRuns.length) {
  md.push(
    'Pure gravity: ' +
      pureRuns.map((r) => `${r.name} ${r.diverged ? `diverged (${r.diverged_reason})` : `did not diverge in ${r.steps} steps (val loss ${num(r.val_loss)})`}`).join('; ') +
      '. Its masses cancel in the ratio, so their gradient is exactly 0 and they stay at their initial value.',
    '',
  );
}
const massesNow = results.runs.filter((r) => r.mass_final);
if (massesNow.length) {
  md.push('Final masses M = softplus(mass_log) over all layers and heads:', '', '| run | mean | min | max |', '|---|---|---|---|');
  for (const r of massesNow) md.push(`| ${r.name} | ${num(r.mass_final.mean)} | ${num(r.mass_final.min)} | ${num(r.mass_final.max)} |`);
  md.push('');
}

md.push('## Figures', '', 'Made by `gravity plot RUN_DIR` (loss: train and validation; masses: softplus(mass_log), layers × heads, over training).', '');
md.push('| run | loss | masses |', '|---|---|---|');
for (const r of results.runs) {
  const f = figs.get(r.name) ?? {};
  md.push(`| ${r.name} | ${f.loss ? `![loss](${f.loss})` : '–'} | ${f.masses ? `![masses](${f.masses})` : '–'} |`);
}
md.push('');

md.push('## The bundled model', '');
if (bundled) {
  md.push(
    `\`models/gravity-mini\` is **${bundled.run}** (${bundled.method === 'lora' ? 'LoRA merged into base-dot with `gravity merge`' : 'trained from scratch'}, ` +
      `${bundled.attention}, ε ${bundled.eps}; f32, ${(bundled.bytes / 1e6).toFixed(1)} MB with tokenizer and masses): the gravity model with the highest test accuracy ` +
      `that did not diverge. Test accuracy ${pct(bundled.test.accuracy)} (${bundled.test.correct}/${bundled.test.n}); on ${bundled.sample.problems}: ` +
      `${bundled.sample.correct}/${bundled.sample.n} (\`test/gravity-mini.test.ts\` checks this, minus a small margin). \`gravity chat\` and ` +
      '`gravity generate --prompt "What is 12 + 34?"` use it when --model is not given.',
    '',
  );
  if (bundled.separate_run) {
    const b = bundled.separate_run;
    md.push(
      `It comes from a separate, longer run: \`bash scripts/gravity-mini/run.sh OUT2 --only ${b.only} --phase1-s ${b.phase1_s} --threads ${b.threads} --steps1 ${b.steps1}\` ` +
        `(${bundled.steps} steps, ${(bundled.input_tokens / 1000).toFixed(0)}k tokens), then \`node scripts/gravity-mini/report.mjs OUT --bundle OUT2\`. Its command:`,
      '',
      '```sh',
      bundled.command,
      '```',
      '',
    );
  }
} else md.push(`Best gravity run: ${results.best ?? 'none'} (not installed by this report).`, '');

md.push('## Reproduce', '');
md.push('On a machine with enough cores (the numbers above: the GPU machine\'s 16 cores; the GPU itself is not used):', '');
md.push('```sh', 'npm ci && npm run build', `bash scripts/gravity-mini/run.sh OUT${S.tiny ? ' --tiny' : ''}    # about 9 minutes; OUT gets results.json, runs.tar.gz, best-model.tar.gz`, 'node scripts/gravity-mini/report.mjs OUT   # this file, docs/figures/gravity-mini, models/gravity-mini', '```', '');
md.push(
  `run.sh chose ${S.steps1} / ${S.steps2} steps from its calibration; \`--steps1 ${S.steps1} --steps2 ${S.steps2}\` repeats them exactly. The individual commands (in run.sh's work folder; \`gravity\` = \`node dist/src/cli/main.js\`, GRAVITY_THREADS=${S.threads}):`,
  '',
);
md.push('```sh');
md.push(`gravity task make --out data --train ${S.train} --val ${S.val} --test ${S.test} --digits ${S.digits} --seed ${S.task_seed}`);
md.push('gravity init-random --config gravity-mini --init train --dtype f32 --seed 0 --out init && cp models/gravity-mini/tokenizer*.json init/');
for (const r of results.runs) if (r.command) md.push(r.command);
for (const r of results.runs) if (r.eval_command) md.push(r.eval_command);
md.push('gravity plot runs/NAME', '```', '');

fs.mkdirSync(path.dirname(DOCS), { recursive: true });
fs.writeFileSync(DOCS, md.join('\n'));
fs.rmSync(tmp, { recursive: true, force: true });
if (btmp !== tmp) fs.rmSync(btmp, { recursive: true, force: true });
process.stderr.write(`wrote ${DOCS} and ${figs.size} runs' figures into ${FIGS}\n`);
