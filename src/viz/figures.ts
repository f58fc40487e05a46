/**
 * The run figures: loss curve, mass heatmap, gradient-norm heatmap (from metrics.jsonl) and the attention field of
 * one layer/head (from `gravity forward --attention-maps` output). Each is written as NAME.svg and NAME.png.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fail } from '../errors.js';
import { openSafetensors } from '../io/safetensors.js';
import { toF32 } from '../tensor/dtype.js';
import { heatmap, lineChart } from './charts.js';
import { gradGrid, readMetrics, type RunMetrics } from './metrics.js';
import { toPng, toSvg, type Scene } from './scene.js';

export function lossFigure(m: RunMetrics): Scene | null {
  if (m.train.length === 0 && m.val.length === 0) return null;
  const last = m.val.at(-1);
  return lineChart({
    title: last ? `Training loss (final validation ${last[1].toFixed(4)})` : 'Training loss',
    xLabel: 'step',
    integerX: true,
    yLabel: 'loss (cross-entropy, nats)',
    series: [
      { name: 'train', points: m.train },
      { name: 'validation', points: m.val, markers: true },
    ],
  });
}

export function massFigure(m: RunMetrics): Scene | null {
  const snap = m.masses.at(-1);
  if (!snap || snap.mass.length === 0) return null;
  const first = m.masses[0];
  const moved = first !== snap && first.mass.some((l, i) => l.some((v, h) => v !== snap.mass[i]?.[h]));
  const heads = snap.mass[0].length;
  return heatmap({
    title: `Gravity masses M = softplus(mass_log), step ${snap.step}${moved ? ` (trained from step ${first.step})` : ''}`,
    xLabel: 'query head',
    yLabel: 'layer',
    values: snap.mass,
    rowLabels: snap.mass.map((_, i) => String(i)),
    colLabels: Array.from({ length: heads }, (_, h) => String(h)),
    colorLabel: 'M',
  });
}

const SHORT: Record<string, string> = { q_proj: 'q', k_proj: 'k', v_proj: 'v', o_proj: 'o', gate_proj: 'gate', up_proj: 'up', down_proj: 'down' };

export function gradFigure(m: RunMetrics): Scene | null {
  const g = gradGrid(m);
  if (!g) return null;
  return heatmap({
    title: `Gradient norm by layer and module (mean over steps ${g.steps[0]}-${g.steps[1]}, log scale)`,
    xLabel: 'module (LoRA A+B, or mass)',
    yLabel: 'layer',
    values: g.values,
    rowLabels: g.values.map((_, i) => String(i)),
    colLabels: g.modules.map((x) => SHORT[x] ?? x),
    colorLabel: '|grad|',
    log: true,
  });
}

/** One [query x key] probability matrix from a forward --attention-maps file (attention.{layer} [batch, heads, q, k]). */
export function attentionFigure(file: string, layer: number, head: number, batch = 0): Scene {
  const f = openSafetensors(file);
  try {
    const name = `attention.${layer}`;
    const info = f.tensors.get(name);
    if (!info) fail(`${path.basename(file)}: no tensor "${name}" (written by gravity forward --attention-maps; found ${[...f.tensors.keys()].filter((k) => k.startsWith('attention.')).length} attention layers)`);
    if (info.shape.length !== 4) fail(`${path.basename(file)}: "${name}" has shape ${JSON.stringify(info.shape)}, expected [batch, heads, q, k]`);
    const [B, H, Q, K] = info.shape;
    if (batch < 0 || batch >= B) fail(`--batch ${batch}: "${name}" has ${B} rows`);
    if (head < 0 || head >= H) fail(`--head ${head}: "${name}" has ${H} heads`);
    const all = toF32(f.read(name));
    const off = (batch * H + head) * Q * K;
    // future keys are masked (probability 0): shown grey so the causal triangle is visible
    const values = Array.from({ length: Q }, (_, q) => Array.from({ length: K }, (_, k) => (k - (K - Q) > q ? NaN : all[off + q * K + k])));
    const every = (n: number) => Array.from({ length: n }, (_, i) => String(i));
    return heatmap({
      title: `Attention probabilities, layer ${layer} head ${head}${B > 1 ? ` (batch row ${batch})` : ''}`,
      xLabel: 'key position',
      yLabel: 'query position',
      values,
      rowLabels: every(Q),
      colLabels: every(K),
      colorLabel: 'p',
      range: [0, Math.max(1e-6, ...values.flat().filter(Number.isFinite))],
      width: 900,
      height: 820,
    });
  } finally {
    f.close();
  }
}

export function writeFigure(scene: Scene, outDir: string, name: string): string[] {
  fs.mkdirSync(outDir, { recursive: true });
  const files: string[] = [];
  for (const [ext, data] of [['svg', toSvg(scene)], ['png', toPng(scene)]] as const) {
    const p = path.join(outDir, `${name}.${ext}`);
    const tmp = `${p}.tmp-${process.pid}`;
    fs.writeFileSync(tmp, data);
    fs.renameSync(tmp, p);
    files.push(p);
  }
  return files;
}

/** loss, masses, grad_norms (.svg + .png) from RUN/metrics.jsonl into outDir; returns the files written. */
export function writeRunFigures(runDir: string, outDir = runDir): string[] {
  const m = readMetrics(path.join(runDir, 'metrics.jsonl'));
  const files: string[] = [];
  const figs: Array<[string, Scene | null]> = [['loss', lossFigure(m)], ['masses', massFigure(m)], ['grad_norms', gradFigure(m)]];
  for (const [name, scene] of figs) if (scene) files.push(...writeFigure(scene, outDir, name));
  return files;
}
