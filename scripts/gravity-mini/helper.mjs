// The gravity-mini pipeline's bookkeeping (plain node, no dependencies), called by run.sh:
//   node helper.mjs steps CALIB_DIR CAL_STEPS PHASE1_S PHASE2_S NVAL NTRAIN BATCH EVALS   -> "STEPS1 STEPS2"
//   node helper.mjs resize RUNS_DIR PHASE2_S                                              -> STEPS2 from phase 1
//   node helper.mjs collect WORK RESULTS.json SETTINGS_JSON                               -> results.json
//   node helper.mjs best RESULTS.json                                                     -> the best gravity run's name
//   node helper.mjs export WORK NAME DEST                                                 -> a standalone model folder
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
const CLI = path.join(ROOT, 'dist/src/cli/main.js');

const readJson = (f, dflt = null) => {
  try {
    return JSON.parse(fs.readFileSync(f, 'utf8'));
  } catch {
    return dflt;
  }
};
const readText = (f) => (fs.existsSync(f) ? fs.readFileSync(f, 'utf8') : '');
const lines = (f) =>
  readText(f)
    .split('\n')
    .filter((l) => l.trim())
    .flatMap((l) => {
      try {
        return [JSON.parse(l)];
      } catch {
        return [];
      }
    });
const mean = (xs) => (xs.length ? xs.reduce((a, b) => a + b, 0) / xs.length : NaN);
const round = (x, d = 4) => (Number.isFinite(x) ? Number(x.toFixed(d)) : null);

/** the run table written by run.sh: name|phase|base|method|seed|flags */
function table(work) {
  return readText(path.join(work, 'runs/table.txt'))
    .split('\n')
    .filter(Boolean)
    .map((l) => {
      const [name, phase, base, method, seed, flags] = l.split('|');
      return { name, phase: Number(phase), base, method, seed: Number(seed), flags };
    });
}

/** seconds per step (after a 2-step warm-up) and fixed overhead (start-up, tokenizing, saving) of a calibration run */
function calibOf(dir, calSteps) {
  const train = lines(path.join(dir, 'metrics.jsonl')).filter((o) => o.type === 'train' && typeof o.elapsed_s === 'number');
  const status = readJson(path.join(dir, 'status.json'));
  const last = train.find((o) => o.step === calSteps);
  const warm = train.find((o) => o.step === 2);
  if (!last || !warm || !status) return null;
  const windows = Number(/-> (\d+) windows/.exec(readText(path.join(dir, 'train.log')))?.[1] ?? NaN);
  return { s_step: (last.elapsed_s - warm.elapsed_s) / (calSteps - 2), overhead_s: status.wall_ms / 1000 - last.elapsed_s, windows };
}

function steps([calib, calSteps, p1, p2, nval, ntrain, batch, evals]) {
  const [C, P1, P2, NV, NT, B, E] = [calSteps, p1, p2, nval, ntrain, batch, evals].map(Number);
  const runs = {};
  for (const name of fs.readdirSync(calib)) {
    const c = calibOf(path.join(calib, name), C);
    if (c) runs[name] = c;
  }
  const all = Object.values(runs);
  if (all.length === 0) throw new Error(`${calib}: no calibration run finished ${C} steps (see its */train.log)`);
  const grav = Object.entries(runs).filter(([n]) => !n.startsWith('base-dot')).map(([, c]) => c);
  const s1 = Math.max(...all.map((c) => c.s_step));
  const s2 = Math.max(...(grav.length ? grav : all).map((c) => c.s_step));
  const overhead = Math.max(...all.map((c) => c.overhead_s)) + 5;
  const windows = Math.max(...all.map((c) => c.windows).filter(Number.isFinite), NT / 2);
  // validation: forward only, ~1/3 of a training step per batch (0.4 for margin)
  const evalS = (s) => Math.ceil((windows * NV) / NT / B) * s * 0.4;
  // 0.85: a margin for slower steps under the full load (evaluations of the others, memory traffic)
  const n1 = Math.max(10, Math.floor((0.85 * (P1 - overhead - E * evalS(s1))) / s1));
  // LoRA steps are a little cheaper than full ones: sizing phase 2 by the full gravity step is conservative
  const n2 = Math.max(10, Math.floor((0.85 * (P2 - overhead - E * evalS(s2))) / s2));
  const summary = {
    per_run: Object.fromEntries(Object.entries(runs).map(([n, c]) => [n, { s_step: round(c.s_step, 3), overhead_s: round(c.overhead_s, 1) }])),
    s_step_phase1: round(s1, 3), s_step_phase2: round(s2, 3), overhead_s: round(overhead, 1), eval_s: round(evalS(s1), 1),
    steps1: n1, steps2: n2,
  };
  fs.writeFileSync(path.join(calib, 'summary.txt'), JSON.stringify(summary));
  fs.writeFileSync(path.join(calib, '..', 'calibration.json'), JSON.stringify(summary, null, 2) + '\n');
  process.stdout.write(`${n1} ${n2}\n`);
}

/** phase 2's steps from what phase 1's gravity runs measured: seconds per step and everything else (start-up, evals) */
function resize([runsDir, p2]) {
  const P2 = Number(p2);
  const work = path.dirname(runsDir);
  const measured = table(work)
    .filter((t) => t.phase === 1 && !t.flags.includes('--attn dot'))
    .map((t) => {
      const dir = path.join(runsDir, t.name);
      const train = lines(path.join(dir, 'metrics.jsonl')).filter((o) => o.type === 'train' && typeof o.elapsed_s === 'number');
      const status = readJson(path.join(dir, 'status.json'));
      if (train.length < 3 || !status || status.exit_code !== 0) return null;
      const last = train[train.length - 1];
      return { s_step: last.elapsed_s / last.step, overhead_s: status.wall_ms / 1000 - last.elapsed_s };
    })
    .filter(Boolean);
  if (measured.length === 0) throw new Error('no finished phase-1 gravity run to size phase 2 from');
  const s = Math.max(...measured.map((m) => m.s_step));
  const o = Math.max(...measured.map((m) => m.overhead_s));
  const n = Math.max(10, Math.floor((0.9 * (P2 - o)) / s));
  process.stderr.write(`resize: phase 1 gravity ${s.toFixed(3)} s/step, ${o.toFixed(1)} s start-up + evaluations -> ${n} steps in ${P2} s\n`);
  process.stdout.write(`${n}\n`);
}

const NONFINITE = /not finite|NaN|Infinity|nonfinite/i;

/** what one run did: settings, tokens, time, losses, divergence, accuracy */
function runResult(work, t) {
  const dir = path.join(work, 'runs', t.name);
  const m = lines(path.join(dir, 'metrics.jsonl'));
  const train = m.filter((o) => o.type === 'train');
  const good = train.filter((o) => typeof o.loss === 'number');
  const evals = m.filter((o) => o.type === 'eval');
  const massLine = m.filter((o) => o.type === 'mass').pop();
  const status = readJson(path.join(dir, 'status.json'), {});
  const runJson = readJson(path.join(dir, 'run.json'), {});
  const ev = readJson(path.join(dir, 'eval.json'));
  const log = readText(path.join(dir, 'train.log'));
  const opts = runJson.options ?? {};
  const last = good[good.length - 1];
  // loss going up: the mean train loss of the last tenth of the steps vs the best tenth (moving windows)
  const w = Math.max(1, Math.floor(good.length / 10));
  let best = Infinity;
  for (let i = 0; i + w <= good.length; i++) best = Math.min(best, mean(good.slice(i, i + w).map((o) => o.loss)));
  const finalTrain = mean(good.slice(-w).map((o) => o.loss));
  const nonfinite = train.some((o) => o.nonfinite) || (status.exit_code === 1 && NONFINITE.test(log.split('\n').slice(-3).join('\n')));
  const rising = Number.isFinite(best) && finalTrain > best + 0.5;
  const valUp = evals.length >= 2 && evals[evals.length - 1].val_loss > evals[0].val_loss;
  const reasons = [];
  if (nonfinite) reasons.push('non-finite loss (stopped)');
  if (rising) reasons.push(`train loss rose from ${best.toFixed(3)} to ${finalTrain.toFixed(3)}`);
  if (valUp) reasons.push('final validation loss above the initial one');
  const exit = status.exit_code;
  const state = exit === 0 ? 'done' : nonfinite ? 'stopped (non-finite)' : exit === 124 || exit === 130 || exit === 137 ? 'timed out' : exit === undefined ? 'not run' : `failed (exit ${exit})`;
  const masses = massLine ? massLine.mass.flat().filter((x) => typeof x === 'number') : [];
  const inputTokens = train.reduce((a, o) => a + (o.input_tokens ?? 0), 0);
  const lossTokens = train.reduce((a, o) => a + (o.tokens ?? 0), 0);
  const trainS = last?.elapsed_s ?? null;
  return {
    name: t.name,
    phase: t.phase,
    from: t.base,
    method: t.method,
    attention: opts.attention ?? null,
    mass_init: opts.massInit ?? null,
    mass_per_group: opts.massPerGroup ?? false,
    eps: opts.attention === 'dot' ? null : (opts.eps ?? readJson(path.join(dir, 'trainer_state.json'), {})?.options?.eps ?? null),
    seed: t.seed,
    lr: opts.lr ?? null,
    steps_planned: runJson.total_steps ?? null,
    steps: last?.step ?? 0,
    status: state,
    exit_code: exit ?? null,
    wall_s: status.wall_ms !== undefined ? round(status.wall_ms / 1000, 1) : null,
    train_s: trainS,
    input_tokens: inputTokens,
    loss_tokens: lossTokens,
    tokens_per_s: trainS ? Math.round(inputTokens / trainS) : null,
    final_train_loss: round(finalTrain),
    val_loss_start: evals.length ? evals[0].val_loss : null,
    val_loss: evals.length ? evals[evals.length - 1].val_loss : null,
    val_loss_step: evals.length ? evals[evals.length - 1].step : null,
    diverged: reasons.length > 0,
    diverged_reason: reasons.join('; ') || null,
    mass_final: masses.length ? { mean: round(mean(masses)), min: round(Math.min(...masses)), max: round(Math.max(...masses)) } : null,
    accuracy: ev ? ev.accuracy : null,
    correct: ev ? ev.correct : null,
    total: ev ? ev.total : null,
    missing: ev ? ev.missing : null,
    per_category: ev ? Object.fromEntries(Object.entries(ev.perCategory).map(([k, v]) => [k, round(v.accuracy, 3)])) : null,
    mean_tokens: ev ? round(ev.meanTokens, 1) : null,
    command: readText(path.join(dir, 'cmd.txt')).trim() || null,
    eval_command: readText(path.join(dir, 'eval-cmd.txt')).trim() || null,
  };
}

function collect([work, out, settingsJson]) {
  const settings = JSON.parse(settingsJson);
  const runs = table(work).map((t) => runResult(work, t));
  const calibration = readJson(path.join(work, 'calibration.json'));
  const results = { version: 1, created: new Date().toISOString(), settings, calibration, runs };
  results.best = bestOf(results);
  fs.writeFileSync(out, JSON.stringify(results, null, 2) + '\n');
  for (const r of runs) {
    const acc = r.accuracy === null ? '-' : `${(100 * r.accuracy).toFixed(1)}%`;
    process.stdout.write(`${r.name.padEnd(24)} ${r.status.padEnd(10)} steps ${String(r.steps).padStart(5)} val ${r.val_loss ?? '-'} acc ${acc}${r.diverged ? ` DIVERGED: ${r.diverged_reason}` : ''}\n`);
  }
}

/** highest test accuracy among gravity runs that finished without diverging; ties: lower validation loss */
function bestOf(results) {
  const ok = results.runs.filter((r) => r.attention && r.attention !== 'dot' && r.accuracy !== null && !r.diverged && (r.status === 'done' || r.status === 'timed out'));
  ok.sort((a, b) => b.accuracy - a.accuracy || (a.val_loss ?? Infinity) - (b.val_loss ?? Infinity));
  return ok.length ? ok[0].name : null;
}

function best([file]) {
  const b = readJson(file)?.best;
  if (b) process.stdout.write(b + '\n');
}

const MODEL_FILES = ['config.json', 'generation_config.json', 'model.safetensors', 'gravity_mass_log.safetensors', 'gravity_mass_log.pt', 'tokenizer.json', 'tokenizer_config.json'];

function exportModel([work, name, dest]) {
  const t = table(work).find((x) => x.name === name);
  if (!t) throw new Error(`no run ${name} in ${work}/runs/table.txt`);
  const dir = path.join(work, 'runs', name);
  const opts = readJson(path.join(dir, 'run.json'), {}).options ?? {};
  fs.rmSync(dest, { recursive: true, force: true });
  if (t.method === 'lora') {
    execFileSync(process.execPath, [CLI, 'merge', '--model', path.join(work, 'runs', t.base), '--adapter', dir, '--out', dest], { stdio: ['ignore', 'inherit', 'inherit'] });
    // merge copies the base's config.json, which says gravity_attention "dot" (base-dot was trained so): the
    // merged model must default to the attention, ε and mass layout the adapter was trained with
    const cfgFile = path.join(dest, 'config.json');
    const cfg = readJson(cfgFile);
    const state = readJson(path.join(dir, 'trainer_state.json'), {});
    cfg.gravity_attention = opts.attention ?? state.options?.attention ?? 'gravity';
    cfg.gravity_eps = opts.eps ?? state.options?.eps ?? 0.1;
    cfg.gravity_mass_per_group = false; // merge writes one mass per query head
    fs.writeFileSync(cfgFile, JSON.stringify(cfg, null, 2) + '\n');
  } else {
    fs.mkdirSync(dest, { recursive: true });
    for (const f of MODEL_FILES) if (fs.existsSync(path.join(dir, f))) fs.copyFileSync(path.join(dir, f), path.join(dest, f));
  }
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) {
    if (!fs.existsSync(path.join(dest, f))) fs.copyFileSync(path.join(ROOT, 'models/gravity-mini', f), path.join(dest, f));
  }
  fs.writeFileSync(path.join(dest, 'training.json'), JSON.stringify({ run: name, method: t.method, from: t.base, command: readText(path.join(dir, 'cmd.txt')).trim(), options: opts }, null, 2) + '\n');
  const bytes = fs.readdirSync(dest).reduce((a, f) => a + fs.statSync(path.join(dest, f)).size, 0);
  process.stdout.write(`exported ${name} -> ${dest} (${(bytes / 1e6).toFixed(1)} MB)\n`);
}

const [cmd, ...args] = process.argv.slice(2);
const cmds = { steps, resize, collect, best, export: exportModel };
if (!cmds[cmd]) {
  process.stderr.write(`usage: node helper.mjs steps|collect|best|export ...\n`);
  process.exit(2);
}
cmds[cmd](args);
