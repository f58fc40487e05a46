/** Reads a run's metrics.jsonl (written by train/loop.ts) into series for the figures. */
import { existsSync, readFileSync } from 'node:fs';
import { fail } from '../errors.js';

export interface RunMetrics {
  train: Array<[number, number]>;
  val: Array<[number, number]>;
  /** grad-norm module keys ('layers.{i}.{module}') and per-step values aligned with them */
  gradKeys: string[];
  grads: Array<{ step: number; gn: number[] }>;
  /** softplus masses per layer per head, by step */
  masses: Array<{ step: number; mass: number[][] }>;
}

export function readMetrics(file: string): RunMetrics {
  if (!existsSync(file)) fail(`${file}: no metrics file (is this a gravity train output folder?)`);
  const m: RunMetrics = { train: [], val: [], gradKeys: [], grads: [], masses: [] };
  let keys: string[] = [];
  readFileSync(file, 'utf8').split('\n').forEach((line, i) => {
    if (!line.trim()) return;
    let o: Record<string, any>;
    try {
      o = JSON.parse(line);
    } catch (e) {
      fail(`${file}:${i + 1}: not valid JSON (${(e as Error).message})`);
    }
    if (o.type === 'modules' && Array.isArray(o.keys)) keys = o.keys;
    else if (o.type === 'train' && typeof o.loss === 'number') {
      m.train.push([o.step, o.loss]);
      if (Array.isArray(o.gn) && o.gn.length === keys.length) {
        if (m.gradKeys !== keys) {
          // a key change mid-run (not expected) restarts the gradient series
          m.gradKeys = keys;
          m.grads = [];
        }
        m.grads.push({ step: o.step, gn: o.gn.map((x: unknown) => (typeof x === 'number' ? x : NaN)) });
      }
    } else if (o.type === 'eval' && typeof o.val_loss === 'number') m.val.push([o.step, o.val_loss]);
    else if (o.type === 'mass' && Array.isArray(o.mass)) m.masses.push({ step: o.step, mass: o.mass.map((l: unknown[]) => l.map((x) => (typeof x === 'number' ? x : NaN))) });
  });
  return m;
}

export const MODULE_ORDER = ['q_proj', 'k_proj', 'v_proj', 'o_proj', 'gate_proj', 'up_proj', 'down_proj', 'mass'];
const KEY_RE = /^layers\.(\d+)\.(.+)$/;

/** Mean gradient norm per (layer, module) over the logged steps; modules in MODULE_ORDER first. */
export function gradGrid(m: RunMetrics): { values: number[][]; layers: number; modules: string[]; steps: [number, number] } | null {
  if (m.grads.length === 0) return null;
  const parsed = m.gradKeys.map((k) => KEY_RE.exec(k));
  const present = new Set(parsed.filter((p) => p).map((p) => p![2]));
  const modules = [...MODULE_ORDER.filter((x) => present.has(x)), ...[...present].filter((x) => !MODULE_ORDER.includes(x)).sort()];
  const layers = Math.max(-1, ...parsed.filter((p) => p).map((p) => Number(p![1]))) + 1;
  if (layers === 0) return null;
  const sum = Array.from({ length: layers }, () => new Array(modules.length).fill(0));
  const cnt = Array.from({ length: layers }, () => new Array(modules.length).fill(0));
  for (const g of m.grads) {
    parsed.forEach((p, i) => {
      if (!p || !Number.isFinite(g.gn[i])) return;
      const c = modules.indexOf(p[2]);
      sum[Number(p[1])][c] += g.gn[i];
      cnt[Number(p[1])][c]++;
    });
  }
  const values = sum.map((row, l) => row.map((s, c) => (cnt[l][c] ? s / cnt[l][c] : NaN)));
  return { values, layers, modules, steps: [m.grads[0].step, m.grads[m.grads.length - 1].step] };
}
