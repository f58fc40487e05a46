/**
 * Chart builders: a line chart (loss curves) and a heatmap with a colour bar (masses, gradient norms, attention),
 * as Scenes (scene.ts renders them to SVG and PNG). Colours: viridis (perceptually uniform, readable in grey).
 */
import { ASCENT, textWidth } from './font.js';
import type { RGB, Scene, Shape } from './scene.js';

// matplotlib's viridis at 11 evenly spaced stops; linear interpolation between them
const VIRIDIS: RGB[] = ['440154', '482475', '414487', '355f8d', '2a788e', '21918c', '22a884', '44bf70', '7ad151', 'bddf26', 'fde725'].map(
  (h) => [parseInt(h.slice(0, 2), 16), parseInt(h.slice(2, 4), 16), parseInt(h.slice(4, 6), 16)],
);
export const MISSING_COLOR: RGB = [200, 200, 200];
const AXIS: RGB = [60, 60, 60];
const GRID: RGB = [228, 228, 228];
export const SERIES_COLORS: RGB[] = [[31, 119, 180], [214, 39, 40], [44, 160, 44], [255, 127, 14]];

export function viridis(t: number): RGB {
  if (!Number.isFinite(t)) return MISSING_COLOR;
  const x = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const f = x - i;
  return [0, 1, 2].map((c) => Math.round(VIRIDIS[i][c] * (1 - f) + VIRIDIS[i + 1][c] * f)) as RGB;
}

/** About `n` round tick values (1, 2, 5 x 10^k) covering [lo, hi]. */
export function niceTicks(lo: number, hi: number, n = 6, minStep = 0): number[] {
  if (!(hi > lo)) return [lo];
  const raw = (hi - lo) / n;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const norm = raw / mag;
  const step = Math.max(minStep, (norm < 1.5 ? 1 : norm < 3 ? 2 : norm < 7 ? 5 : 10) * mag);
  const out: number[] = [];
  for (let v = Math.ceil(lo / step - 1e-9) * step; v <= hi + step * 1e-9; v += step) out.push(Math.abs(v) < step * 1e-9 ? 0 : v);
  return out;
}

export function fmtTick(v: number, step: number): string {
  if (v === 0) return '0';
  const a = Math.abs(v);
  if (a >= 1e5 || a < 1e-3) return v.toExponential(Math.max(0, Math.min(3, -Math.floor(Math.log10(step / a)) ))).replace('e+', 'e');
  const decimals = Math.max(0, Math.min(6, -Math.floor(Math.log10(step) + 1e-9)));
  return v.toFixed(decimals);
}

const S = 2; // text scale for labels and ticks
const TITLE_S = 2;

function frame(shapes: Shape[], width: number, title: string): void {
  shapes.push({ kind: 'text', x: width / 2, y: 14, text: title, scale: TITLE_S, anchor: 'middle', bold: true });
}

export interface Series {
  name: string;
  points: Array<[number, number]>;
  /** draw markers at the points (sparse series such as validation) */
  markers?: boolean;
}

export interface LineChartSpec {
  title: string;
  xLabel: string;
  yLabel: string;
  series: Series[];
  /** x values are whole numbers (steps): no fractional ticks */
  integerX?: boolean;
  width?: number;
  height?: number;
}

export function lineChart(spec: LineChartSpec): Scene {
  const width = spec.width ?? 960;
  const height = spec.height ?? 600;
  const shapes: Shape[] = [];
  frame(shapes, width, spec.title);
  const left = 110;
  const right = width - 30;
  const top = 50;
  const bottom = height - 80;
  const pts = spec.series.flatMap((s) => s.points).filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y));
  let [x0, x1] = pts.length ? [Math.min(...pts.map((p) => p[0])), Math.max(...pts.map((p) => p[0]))] : [0, 1];
  let [y0, y1] = pts.length ? [Math.min(...pts.map((p) => p[1])), Math.max(...pts.map((p) => p[1]))] : [0, 1];
  if (x1 <= x0) [x0, x1] = [x0 - 1, x1 + 1];
  if (y1 <= y0) [y0, y1] = [y0 - Math.max(0.5, Math.abs(y0) * 0.1), y1 + Math.max(0.5, Math.abs(y1) * 0.1)];
  const pad = (y1 - y0) * 0.05;
  y0 -= pad;
  y1 += pad;
  const X = (x: number) => left + ((x - x0) / (x1 - x0)) * (right - left);
  const Y = (y: number) => bottom - ((y - y0) / (y1 - y0)) * (bottom - top);
  const xt = niceTicks(x0, x1, 8, spec.integerX ? 1 : 0).filter((v) => v >= x0 && v <= x1);
  const yt = niceTicks(y0, y1, 6).filter((v) => v >= y0 && v <= y1);
  const xStep = xt.length > 1 ? xt[1] - xt[0] : 1;
  const yStep = yt.length > 1 ? yt[1] - yt[0] : 1;
  for (const v of yt) {
    shapes.push({ kind: 'line', points: [[left, Y(v)], [right, Y(v)]], color: GRID, width: 1 });
    shapes.push({ kind: 'line', points: [[left - 6, Y(v)], [left, Y(v)]], color: AXIS, width: 1 });
    shapes.push({ kind: 'text', x: left - 10, y: Y(v) - (ASCENT * S) / 2, text: fmtTick(v, yStep), scale: S, anchor: 'end' });
  }
  for (const v of xt) {
    shapes.push({ kind: 'line', points: [[X(v), top], [X(v), bottom]], color: GRID, width: 1 });
    shapes.push({ kind: 'line', points: [[X(v), bottom], [X(v), bottom + 6]], color: AXIS, width: 1 });
    shapes.push({ kind: 'text', x: X(v), y: bottom + 12, text: fmtTick(v, xStep), scale: S, anchor: 'middle' });
  }
  shapes.push({ kind: 'line', points: [[left, top], [left, bottom], [right, bottom]], color: AXIS, width: 2 });
  shapes.push({ kind: 'text', x: (left + right) / 2, y: height - 34, text: spec.xLabel, scale: S, anchor: 'middle' });
  shapes.push({ kind: 'text', x: 14, y: (top + bottom) / 2, text: spec.yLabel, scale: S, anchor: 'middle', vertical: true });
  spec.series.forEach((s, i) => {
    const color = SERIES_COLORS[i % SERIES_COLORS.length];
    const p = s.points.filter(([x, y]) => Number.isFinite(x) && Number.isFinite(y)).map(([x, y]) => [X(x), Y(y)] as [number, number]);
    if (p.length === 0) return;
    if (p.length > 1) shapes.push({ kind: 'line', points: p, color, width: 2 });
    if (s.markers || p.length === 1) for (const q of p) shapes.push({ kind: 'rect', x: q[0] - 3, y: q[1] - 3, w: 7, h: 7, fill: color });
  });
  // legend, top right inside the plot
  const named = spec.series.filter((s) => s.points.length > 0);
  const lw = Math.max(...named.map((s) => textWidth(s.name, S)), 0) + 44;
  named.forEach((s, i) => {
    const color = SERIES_COLORS[spec.series.indexOf(s) % SERIES_COLORS.length];
    const y = top + 12 + i * 24;
    shapes.push({ kind: 'line', points: [[right - lw, y + 7], [right - lw + 28, y + 7]], color, width: 3 });
    shapes.push({ kind: 'text', x: right - lw + 36, y, text: s.name, scale: S });
  });
  return { width, height, shapes };
}

export interface HeatmapSpec {
  title: string;
  xLabel: string;
  yLabel: string;
  /** values[row][col]; NaN = no value (grey) */
  values: number[][];
  rowLabels: string[];
  colLabels: string[];
  colorLabel: string;
  /** colour by log10(value) (values <= 0 count as missing) */
  log?: boolean;
  /** fixed colour range (in value units) */
  range?: [number, number];
  width?: number;
  height?: number;
}

export function heatmap(spec: HeatmapSpec): Scene {
  const rows = spec.values.length;
  const cols = rows ? spec.values[0].length : 0;
  const width = spec.width ?? 960;
  const height = spec.height ?? 640;
  const shapes: Shape[] = [];
  frame(shapes, width, spec.title);
  const tf = (v: number) => (spec.log ? (v > 0 ? Math.log10(v) : NaN) : v);
  const all = spec.values.flat().map(tf).filter(Number.isFinite);
  let lo = spec.range ? tf(spec.range[0]) : all.length ? Math.min(...all) : 0;
  let hi = spec.range ? tf(spec.range[1]) : all.length ? Math.max(...all) : 1;
  if (!(hi > lo)) [lo, hi] = [lo - (spec.log ? 0.5 : Math.max(Math.abs(lo) * 0.05, 1e-3)), hi + (spec.log ? 0.5 : Math.max(Math.abs(hi) * 0.05, 1e-3))];
  const color = (v: number) => viridis((tf(v) - lo) / (hi - lo));

  const rowLabelW = Math.max(...spec.rowLabels.map((l) => textWidth(l, S)), 0);
  const left = 50 + rowLabelW;
  const top = 50;
  const barW = 24;
  const right = width - 150; // room for the colour bar and its labels
  const bottom = height - 90;
  const cw = (right - left) / Math.max(1, cols);
  const ch = (bottom - top) / Math.max(1, rows);
  if (rows * cols <= 4096) {
    spec.values.forEach((row, r) => row.forEach((v, c) => shapes.push({ kind: 'rect', x: left + c * cw, y: top + r * ch, w: cw + 0.5, h: ch + 0.5, fill: color(v) })));
  } else {
    const rgb = new Uint8Array(rows * cols * 3);
    spec.values.forEach((row, r) => row.forEach((v, c) => rgb.set(color(v), (r * cols + c) * 3)));
    shapes.push({ kind: 'image', x: left, y: top, w: right - left, h: bottom - top, cols, rows, rgb });
  }
  shapes.push({ kind: 'line', points: [[left, top], [right, top], [right, bottom], [left, bottom], [left, top]], color: AXIS, width: 1 });
  // labels: thin out so that they never overlap
  const rowEvery = Math.max(1, Math.ceil((ASCENT * S + 4) / ch));
  spec.rowLabels.forEach((l, r) => {
    if (r % rowEvery !== 0) return;
    shapes.push({ kind: 'text', x: left - 8, y: top + (r + 0.5) * ch - (ASCENT * S) / 2, text: l, scale: S, anchor: 'end' });
  });
  const colW = Math.max(...spec.colLabels.map((l) => textWidth(l, S)), 1) + 8;
  const colEvery = Math.max(1, Math.ceil(colW / cw));
  spec.colLabels.forEach((l, c) => {
    if (c % colEvery !== 0) return;
    shapes.push({ kind: 'text', x: left + (c + 0.5) * cw, y: bottom + 10, text: l, scale: S, anchor: 'middle' });
  });
  shapes.push({ kind: 'text', x: (left + right) / 2, y: height - 40, text: spec.xLabel, scale: S, anchor: 'middle' });
  shapes.push({ kind: 'text', x: 14, y: (top + bottom) / 2, text: spec.yLabel, scale: S, anchor: 'middle', vertical: true });

  // colour bar: a vertical gradient, low at the bottom, with ticks in value units
  const bx = right + 24;
  const steps = 128;
  const rgb = new Uint8Array(steps * 3);
  for (let i = 0; i < steps; i++) rgb.set(viridis(1 - i / (steps - 1)), i * 3);
  shapes.push({ kind: 'image', x: bx, y: top, w: barW, h: bottom - top, cols: 1, rows: steps, rgb });
  shapes.push({ kind: 'line', points: [[bx, top], [bx + barW, top], [bx + barW, bottom], [bx, bottom], [bx, top]], color: AXIS, width: 1 });
  const BY = (t: number) => bottom - ((t - lo) / (hi - lo)) * (bottom - top);
  let ticks: Array<[number, string]>;
  if (spec.log) {
    const span = hi - lo;
    const stepExp = Math.max(1, Math.ceil(span / 6));
    ticks = [];
    for (let e = Math.ceil(lo); e <= Math.floor(hi); e += stepExp) ticks.push([e, `1e${e}`]);
    if (ticks.length < 2) ticks = niceTicks(lo, hi, 4).filter((t) => t >= lo && t <= hi).map((t) => [t, (10 ** t).toPrecision(2)]);
  } else {
    const t = niceTicks(lo, hi, 6).filter((v) => v >= lo - 1e-12 && v <= hi + 1e-12);
    const st = t.length > 1 ? t[1] - t[0] : 1;
    ticks = t.map((v) => [v, fmtTick(v, st)]);
  }
  for (const [t, label] of ticks) {
    shapes.push({ kind: 'line', points: [[bx + barW, BY(t)], [bx + barW + 5, BY(t)]], color: AXIS, width: 1 });
    shapes.push({ kind: 'text', x: bx + barW + 9, y: BY(t) - (ASCENT * S) / 2, text: label, scale: S });
  }
  shapes.push({ kind: 'text', x: bx + barW / 2, y: bottom + 14, text: spec.colorLabel, scale: S, anchor: 'middle' });
  return { width, height, shapes };
}
