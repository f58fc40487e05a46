/**
 * The training run loop around a Trainer: progress on stderr, metrics.jsonl, periodic evaluation, atomic
 * checkpoints, --resume, Ctrl-C and non-finite losses.
 *
 * OUT layout:
 *   run.json                   the run's settings (written at the start; `order` must match on --resume)
 *   metrics.jsonl              one JSON object a line (see MetricsLine in viz/metrics.ts):
 *                              {"type":"train","step","loss","lr","grad_norm","tokens","input_tokens","tokens_per_s","elapsed_s","epoch","gn":[...]}
 *                              {"type":"eval","step","val_loss","val_ppl","val_tokens"}
 *                              {"type":"modules","keys":[...]}   the order of the "gn" arrays that follow
 *                              {"type":"mass","step","mass":[[softplus(mass_log) per head] per layer]}
 *   checkpoint-<step>/         trainer.save() + loop-state.json (written last: its presence marks a whole checkpoint)
 *   adapter files, masses      the final trainer.save(), moved into OUT at the end
 *
 * Every save goes to a temporary folder that is renamed into place, so a failed save (ENOSPC, a crash) leaves the
 * previous checkpoint as it was. The batches of step s are a function of (seed, s) (data.ts BatchSchedule), so a
 * resumed run continues with exactly the batches the interrupted one would have used.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { GravityError, fail } from '../errors.js';
import type { BatchSchedule } from './data.js';
import type { Batch, StepResult } from './trainer.js';

/** The part of Trainer the loop uses (a fake one in the tests). */
export interface TrainerLike {
  trainStep(micro: Batch[]): StepResult | Promise<StepResult>;
  evaluate(batches: Batch[]): { loss: number; tokens: number } | Promise<{ loss: number; tokens: number }>;
  save(dir: string): void;
  resume(dir: string): void;
  massLog(): Float32Array[];
  readonly step: number;
}

export interface LoopOptions {
  outDir: string;
  totalSteps: number;
  schedule: BatchSchedule;
  /** validation batches; null = no evaluation */
  val: Batch[] | null;
  /** evaluate every N steps (0: only at the start and the end) */
  evalEvery: number;
  /** checkpoint every N steps (0: only at the end) */
  saveEvery: number;
  /** without a TTY: one log line every N steps */
  logEvery: number;
  resume: boolean;
  /** saved as run.json; `order` (seed, batch size, ...) must be unchanged on --resume */
  runInfo: { order: Record<string, unknown>; [key: string]: unknown };
  stderr?: NodeJS.WritableStream & { isTTY?: boolean; columns?: number };
  /** install the SIGINT handler (default true) */
  handleSignals?: boolean;
}

/** stopped: a non-finite loss / gradient norm, or the trainer refused a step (its message says why) */
export type LoopStatus = 'done' | 'interrupted' | 'stopped';

export interface LoopResult {
  status: LoopStatus;
  /** steps completed (and kept) */
  step: number;
  lastCheckpoint: string | null;
  message: string;
}

export const STATE_FILE = 'loop-state.json';
const CHECKPOINT_RE = /^checkpoint-(\d+)$/;

/** The newest complete checkpoint folder in `out` (one with loop-state.json), or null. */
export function latestCheckpoint(out: string): { dir: string; step: number } | null {
  if (!fs.existsSync(out)) return null;
  let best: { dir: string; step: number } | null = null;
  for (const name of fs.readdirSync(out)) {
    const m = CHECKPOINT_RE.exec(name);
    if (!m) continue;
    const dir = path.join(out, name);
    if (!fs.existsSync(path.join(dir, STATE_FILE))) continue;
    const step = Number(m[1]);
    if (!best || step > best.step) best = { dir, step };
  }
  return best;
}

const sig = (x: number) => (Number.isFinite(x) ? Number(x.toPrecision(5)) : null);
const softplus = (x: number) => (x > 20 ? x : Math.log1p(Math.exp(x)));

/** rename, replacing a folder that is in the way (rename cannot replace a non-empty folder) */
function renameOver(src: string, dst: string): void {
  if (fs.existsSync(dst)) {
    const old = `${dst}.old-${process.pid}`;
    fs.renameSync(dst, old);
    fs.renameSync(src, dst);
    fs.rmSync(old, { recursive: true, force: true });
  } else fs.renameSync(src, dst);
}

function describe(e: unknown): string {
  const err = e as NodeJS.ErrnoException;
  if (err?.code === 'ENOSPC') return 'no space left on device';
  return err?.message ?? String(e);
}

function fmtTime(s: number): string {
  if (!Number.isFinite(s) || s < 0) return '?';
  if (s < 60) return `${s.toFixed(0)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(Math.floor(s % 60)).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

class Reporter {
  private readonly tty: boolean;
  private drawn = false;
  constructor(private readonly stream: NonNullable<LoopOptions['stderr']>, private readonly logEvery: number) {
    this.tty = stream.isTTY === true && process.env.GRAVITY_NO_PROGRESS !== '1';
  }
  step(step: number, total: number, r: StepResult, tokPerS: number, eta: number): void {
    const stats = `loss ${r.loss.toFixed(4)} lr ${r.lr.toExponential(2)} ${tokPerS.toFixed(0)} tok/s`;
    if (this.tty) {
      const w = 20;
      const fill = Math.round((step / total) * w);
      const line = `step ${step}/${total} [${'█'.repeat(fill)}${'·'.repeat(w - fill)}] ${stats} ETA ${fmtTime(eta)}`;
      const width = Math.max(20, (this.stream.columns || 100) - 1);
      this.stream.write('\r\x1b[2K' + (line.length > width ? line.slice(0, width - 1) + '…' : line));
      this.drawn = true;
    } else if (step % this.logEvery === 0 || step === total) {
      this.stream.write(`step ${step}/${total} ${stats} grad_norm ${r.gradNorm.toPrecision(3)} eta ${fmtTime(eta)}\n`);
    }
  }
  line(text: string): void {
    if (this.drawn) this.stream.write('\r\x1b[2K');
    this.drawn = false;
    this.stream.write(text + '\n');
  }
  end(): void {
    if (this.drawn) this.stream.write('\n');
    this.drawn = false;
  }
}

/** Keeps the metrics lines of steps <= `step` (a resumed run rewrites what came after its checkpoint). */
function truncateMetrics(file: string, step: number): string[] | null {
  if (!fs.existsSync(file)) return null;
  const kept: string[] = [];
  let keys: string[] | null = null;
  for (const line of fs.readFileSync(file, 'utf8').split('\n')) {
    if (!line.trim()) continue;
    let o: { type?: string; step?: number; keys?: string[] };
    try {
      o = JSON.parse(line);
    } catch {
      continue; // a line cut short by a crash
    }
    if (typeof o.step === 'number' && o.step > step) continue;
    if (o.type === 'modules') keys = o.keys ?? null;
    kept.push(line);
  }
  const tmp = `${file}.tmp-${process.pid}`;
  fs.writeFileSync(tmp, kept.map((l) => l + '\n').join(''));
  fs.renameSync(tmp, file);
  return keys;
}

export async function runTraining(trainer: TrainerLike, o: LoopOptions): Promise<LoopResult> {
  const out = o.outDir;
  const err = o.stderr ?? process.stderr;
  const rep = new Reporter(err, Math.max(1, o.logEvery));
  fs.mkdirSync(out, { recursive: true });
  const metricsFile = path.join(out, 'metrics.jsonl');
  const runFile = path.join(out, 'run.json');

  let elapsed = 0; // seconds of training (excluding evaluation and saving), continued across resumes
  let lastCheckpoint: string | null = null;
  let moduleKeys: string[] | null = null;
  const existing = latestCheckpoint(out);
  if (o.resume) {
    if (!existing) fail(`--resume: ${out} has no checkpoint-<step> folder to resume from`);
    if (fs.existsSync(runFile)) {
      const before = JSON.parse(fs.readFileSync(runFile, 'utf8')) as { order?: Record<string, unknown> };
      for (const [k, v] of Object.entries(o.runInfo.order)) {
        const was = before.order?.[k];
        if (was !== undefined && JSON.stringify(was) !== JSON.stringify(v)) {
          fail(`--resume: ${k} was ${JSON.stringify(was)} in ${runFile}, now ${JSON.stringify(v)}; the data order would differ (use the same settings or a new --out)`);
        }
      }
    }
    trainer.resume(existing.dir);
    if (trainer.step !== existing.step) fail(`${existing.dir}: the trainer resumed at step ${trainer.step}, the folder says ${existing.step}`);
    const state = JSON.parse(fs.readFileSync(path.join(existing.dir, STATE_FILE), 'utf8')) as { elapsed_s?: number };
    elapsed = state.elapsed_s ?? 0;
    lastCheckpoint = existing.dir;
    moduleKeys = truncateMetrics(metricsFile, existing.step);
    rep.line(`resuming from ${existing.dir} (step ${existing.step})`);
  } else if (existing) {
    fail(`${out} already has ${path.basename(existing.dir)}; pass --resume to continue that run or choose another --out`);
  } else if (fs.existsSync(metricsFile)) {
    fs.rmSync(metricsFile); // a run that never checkpointed: start its metrics afresh
  }
  fs.writeFileSync(runFile, JSON.stringify(o.runInfo, null, 2) + '\n');
  const metrics = fs.openSync(metricsFile, 'a');
  const emit = (obj: Record<string, unknown>) => fs.writeSync(metrics, JSON.stringify(obj) + '\n');

  const total = o.totalSteps;
  const schedule = o.schedule;
  const snapEvery = Math.max(1, Math.ceil(total / 100)); // ~100 mass snapshots whatever the run length
  const snapMasses = (step: number) => emit({ type: 'mass', step, mass: trainer.massLog().map((l) => Array.from(l, (x) => sig(softplus(x)))) });
  const runEval = async (step: number) => {
    if (!o.val || o.val.length === 0) return;
    const r = await trainer.evaluate(o.val);
    emit({ type: 'eval', step, val_loss: sig(r.loss), val_ppl: sig(Math.exp(r.loss)), val_tokens: r.tokens });
    rep.line(`step ${step}: val_loss ${r.loss.toFixed(4)} val_ppl ${Math.exp(r.loss).toFixed(3)} (${r.tokens} tokens)`);
  };

  const save = (step: number): string => {
    const final = path.join(out, `checkpoint-${step}`);
    const tmp = path.join(out, `.tmp-checkpoint-${step}-${process.pid}`);
    try {
      fs.rmSync(tmp, { recursive: true, force: true });
      fs.mkdirSync(tmp);
      trainer.save(tmp);
      const state = { step, epoch: schedule.epochAt(step), elapsed_s: elapsed, total_steps: total, saved_at: new Date().toISOString() };
      fs.writeFileSync(path.join(tmp, STATE_FILE), JSON.stringify(state, null, 2) + '\n');
      renameOver(tmp, final);
    } catch (e) {
      fs.rmSync(tmp, { recursive: true, force: true });
      const prev = lastCheckpoint ? `the previous checkpoint ${lastCheckpoint} is intact` : 'no earlier checkpoint exists';
      throw new GravityError(`could not save checkpoint-${step} in ${out} (${describe(e)}); ${prev}`);
    }
    lastCheckpoint = final;
    return final;
  };

  let interrupted = 0;
  const onSigint = () => {
    if (++interrupted > 1) {
      err.write('\nsecond Ctrl-C: exiting without saving\n');
      process.exit(130);
    }
  };
  const signals = o.handleSignals ?? true;
  if (signals) process.on('SIGINT', onSigint);

  try {
    const start = trainer.step;
    if (start === 0) {
      snapMasses(0);
      await runEval(0);
    }
    let rate = 0; // smoothed input tokens/s
    let stepTime = 0; // smoothed seconds/step
    for (let s = start; s < total; s++) {
      const micro = schedule.microBatches(s);
      const inputTokens = micro.reduce((n, b) => n + b.B * b.T, 0);
      const t0 = performance.now();
      const step = s + 1;
      const keep = () => (lastCheckpoint ? `the last good checkpoint is ${lastCheckpoint} (continue from it with --resume, e.g. with a lower --lr)` : 'no checkpoint was saved before it');
      let r: StepResult;
      try {
        r = await trainer.trainStep(micro);
      } catch (e) {
        if (!(e instanceof GravityError)) throw e;
        // the trainer refuses a step whose loss or gradient is not finite (before updating anything)
        rep.end();
        return { status: 'stopped', step: s, lastCheckpoint, message: `step ${step}: ${e.message}; ${keep()}` };
      }
      const dt = (performance.now() - t0) / 1000;
      if (!Number.isFinite(r.loss) || Number.isNaN(r.gradNorm)) {
        const what = !Number.isFinite(r.loss) ? `loss is ${r.loss}` : `gradient norm is ${r.gradNorm}`;
        emit({ type: 'train', step, loss: null, nonfinite: what });
        rep.end();
        return { status: 'stopped', step: s, lastCheckpoint, message: `step ${step}: ${what}; stopped without saving; ${keep()}` };
      }
      elapsed += dt;
      const tps = inputTokens / Math.max(dt, 1e-9);
      rate = s === start ? tps : 0.8 * rate + 0.2 * tps;
      stepTime = s === start ? dt : 0.8 * stepTime + 0.2 * dt;
      const keys = Object.keys(r.moduleGradNorms);
      if (!moduleKeys || moduleKeys.length !== keys.length || moduleKeys.some((k, i) => k !== keys[i])) {
        moduleKeys = keys;
        emit({ type: 'modules', keys });
      }
      emit({
        type: 'train',
        step,
        loss: sig(r.loss),
        lr: sig(r.lr),
        grad_norm: sig(r.gradNorm),
        tokens: r.tokens,
        input_tokens: inputTokens,
        tokens_per_s: Math.round(tps),
        elapsed_s: Number(elapsed.toFixed(3)),
        epoch: Number(schedule.epochAt(step).toFixed(4)),
        gn: keys.map((k) => sig(r.moduleGradNorms[k])),
      });
      rep.step(step, total, r, rate, (total - step) * stepTime);
      if (step % snapEvery === 0 || step === total) snapMasses(step);
      if (o.evalEvery > 0 && step % o.evalEvery === 0 && step !== total) await runEval(step);
      if (o.saveEvery > 0 && step % o.saveEvery === 0 && step !== total) save(step);

      // let a pending SIGINT reach its handler (trainStep is synchronous)
      await new Promise((res) => setImmediate(res));
      if (interrupted) {
        rep.end();
        const dir = lastCheckpoint === path.join(out, `checkpoint-${step}`) ? lastCheckpoint : save(step);
        return { status: 'interrupted', step, lastCheckpoint: dir, message: `interrupted at step ${step}/${total}; saved ${dir} (continue with --resume)` };
      }
    }
    rep.end();
    if (trainer.step > 0 && (start < total || !fs.existsSync(path.join(out, `checkpoint-${total}`)))) {
      await runEval(total);
      save(total);
    }
    // the final adapter also goes directly into OUT (saved beside it, then moved file by file)
    const tmp = path.join(out, `.tmp-final-${process.pid}`);
    try {
      fs.rmSync(tmp, { recursive: true, force: true });
      fs.mkdirSync(tmp);
      trainer.save(tmp);
      for (const f of fs.readdirSync(tmp)) renameOver(path.join(tmp, f), path.join(out, f));
    } catch (e) {
      throw new GravityError(`could not save the final adapter into ${out} (${describe(e)}); ${lastCheckpoint} has it`);
    } finally {
      fs.rmSync(tmp, { recursive: true, force: true });
    }
    return { status: 'done', step: trainer.step, lastCheckpoint, message: `done: ${trainer.step} steps in ${fmtTime(elapsed)}; adapter in ${out}` };
  } finally {
    if (signals) process.off('SIGINT', onSigint);
    fs.closeSync(metrics);
  }
}
