import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { inflateSync } from 'node:zlib';
import { crc32 } from '../src/io/zip.js';
import { writeSafetensors } from '../src/io/safetensors.js';
import { run as plotRun } from '../src/cli/plot.js';
import { fmtTick, heatmap, lineChart, niceTicks, viridis } from '../src/viz/charts.js';
import { glyph, textWidth } from '../src/viz/font.js';
import { attentionFigure, writeRunFigures } from '../src/viz/figures.js';
import { gradGrid, readMetrics } from '../src/viz/metrics.js';
import { encodePng } from '../src/viz/png.js';
import { Raster, rasterize, toPng, toSvg } from '../src/viz/scene.js';

const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'gravity-viz-'));
process.on('exit', () => fs.rmSync(tmp, { recursive: true, force: true }));

/** Parses a PNG: checks signature and every chunk CRC, inflates IDAT, undoes the row filters; returns RGBA. */
function decodePng(buf: Buffer): { width: number; height: number; rgba: Uint8Array; rawLength: number } {
  assert.deepEqual([...buf.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], 'signature');
  let off = 8;
  let width = 0;
  let height = 0;
  const idat: Buffer[] = [];
  const types: string[] = [];
  while (off < buf.length) {
    const len = buf.readUInt32BE(off);
    const type = buf.toString('latin1', off + 4, off + 8);
    const crc = buf.readUInt32BE(off + 8 + len);
    assert.equal(crc, crc32(buf.subarray(off + 4, off + 8 + len)), `${type} CRC`);
    const data = buf.subarray(off + 8, off + 8 + len);
    if (type === 'IHDR') {
      assert.equal(len, 13);
      width = data.readUInt32BE(0);
      height = data.readUInt32BE(4);
      assert.deepEqual([...data.subarray(8)], [8, 6, 0, 0, 0], 'RGBA 8-bit, no interlace');
    } else if (type === 'IDAT') idat.push(data);
    types.push(type);
    off += 12 + len;
  }
  assert.equal(off, buf.length);
  assert.equal(types[0], 'IHDR');
  assert.equal(types.at(-1), 'IEND');
  const raw = inflateSync(Buffer.concat(idat));
  const stride = width * 4;
  assert.equal(raw.length, (stride + 1) * height, 'inflated size');
  const rgba = new Uint8Array(stride * height);
  for (let y = 0; y < height; y++) {
    const f = raw[y * (stride + 1)];
    for (let i = 0; i < stride; i++) {
      const x = raw[y * (stride + 1) + 1 + i];
      const a = i >= 4 ? rgba[y * stride + i - 4] : 0;
      const b = y > 0 ? rgba[(y - 1) * stride + i] : 0;
      assert.ok(f === 0 || f === 1 || f === 2, `filter ${f}`);
      rgba[y * stride + i] = (x + (f === 1 ? a : f === 2 ? b : 0)) & 0xff;
    }
  }
  return { width, height, rgba, rawLength: raw.length };
}

test('png: round trip of an RGBA buffer (signature, IHDR, CRCs, inflate size, pixels)', () => {
  const w = 37;
  const h = 11;
  const rgba = new Uint8Array(w * h * 4);
  for (let i = 0; i < rgba.length; i++) rgba[i] = (i * 131 + (i >> 7)) & 0xff;
  const d = decodePng(encodePng(w, h, rgba));
  assert.deepEqual([d.width, d.height], [w, h]);
  assert.deepEqual(d.rgba, rgba);
  assert.throws(() => encodePng(2, 2, new Uint8Array(15)), /15 bytes for 2x2/);
});

test('font: every printable ASCII character has a glyph inside its 5x9 cell', () => {
  for (let c = 32; c < 127; c++) {
    const g = glyph(String.fromCharCode(c));
    if (c !== 32) assert.ok(g.length > 0, `glyph ${String.fromCharCode(c)}`);
    for (const [x, y] of g) assert.ok(x >= 0 && x < 5 && y >= 0 && y < 9, `${String.fromCharCode(c)} pixel ${x},${y}`);
  }
  assert.notDeepEqual(glyph('0'), glyph('O'));
  assert.equal(textWidth('abc', 2), (3 * 6 - 1) * 2);
  // text actually inks pixels, rotated text too (bottom to top)
  const r = new Raster(40, 40);
  r.text(2, 2, 'E', 1, [0, 0, 0]);
  const ink = (x: number, y: number) => r.data[(y * 40 + x) * 4] === 0;
  assert.ok(ink(2, 2) && ink(6, 2) && ink(2, 8) && !ink(3, 3));
  const v = new Raster(40, 40);
  v.text(2, 30, 'E', 1, [0, 0, 0], 'start', true);
  const vink = (x: number, y: number) => v.data[(y * 40 + x) * 4] === 0;
  assert.ok(vink(2, 30) && vink(2, 26) && vink(8, 30), 'E rotated: top bar runs up from the anchor');
});

test('ticks and colours', () => {
  assert.deepEqual(niceTicks(0, 10, 5), [0, 2, 4, 6, 8, 10]);
  const t = niceTicks(2.05, 2.31, 5);
  assert.deepEqual(t.map((x) => +x.toFixed(6)), [2.05, 2.1, 2.15, 2.2, 2.25, 2.3]);
  assert.deepEqual(niceTicks(0, 3, 8, 1), [0, 1, 2, 3]);
  assert.equal(fmtTick(2.5, 0.5), '2.5');
  assert.equal(fmtTick(100, 50), '100');
  assert.deepEqual(viridis(0), [0x44, 0x01, 0x54]);
  assert.deepEqual(viridis(1), [0xfd, 0xe7, 0x25]);
  // perceptual order: brightness grows along the map
  const lum = (c: number[]) => 0.2126 * c[0] + 0.7152 * c[1] + 0.0722 * c[2];
  for (let i = 1; i <= 20; i++) assert.ok(lum(viridis(i / 20)) > lum(viridis((i - 1) / 20)));
});

test('line chart: SVG has title, axis labels, ticks, legend; PNG decodes at the scene size', () => {
  const scene = lineChart({
    title: 'Training loss',
    xLabel: 'step',
    yLabel: 'loss',
    integerX: true,
    series: [
      { name: 'train', points: Array.from({ length: 50 }, (_, i) => [i + 1, 3 - i * 0.02] as [number, number]) },
      { name: 'validation', points: [[0, 3.1], [50, 2.2]], markers: true },
    ],
  });
  const svg = toSvg(scene);
  assert.match(svg, /^<svg xmlns="http:\/\/www.w3.org\/2000\/svg" width="960" height="600"/);
  for (const s of ['>Training loss</text>', '>step</text>', '>loss</text>', '>train</text>', '>validation</text>', '>50</text>', 'rotate(-90', '<polyline']) {
    assert.ok(svg.includes(s), s);
  }
  assert.ok(svg.trim().endsWith('</svg>'));
  const d = decodePng(toPng(scene));
  assert.deepEqual([d.width, d.height], [960, 600]);
  // the train line colour appears in the raster
  const has = (c: number[]) => {
    for (let i = 0; i < d.rgba.length; i += 4) if (d.rgba[i] === c[0] && d.rgba[i + 1] === c[1] && d.rgba[i + 2] === c[2]) return true;
    return false;
  };
  assert.ok(has([31, 119, 180]) && has([214, 39, 40]));
});

test('heatmap: cells in colormap colours, grey for missing, colour bar with labelled ticks; big ones as an image', () => {
  const scene = heatmap({ title: 'Masses', xLabel: 'head', yLabel: 'layer', values: [[1, 2], [NaN, 4]], rowLabels: ['0', '1'], colLabels: ['0', '1'], colorLabel: 'M' });
  const svg = toSvg(scene);
  for (const s of ['>Masses</text>', '>head</text>', '>layer</text>', '>M</text>', '>1.0</text>', '>4.0</text>', '#440154', '#fde725', '#c8c8c8']) assert.ok(svg.includes(s), s);
  const r = rasterize(scene);
  assert.equal(r.width, 960);
  const logScene = heatmap({ title: 'g', xLabel: 'x', yLabel: 'y', values: [[1e-4, 1e-2], [1, 0]], rowLabels: ['0', '1'], colLabels: ['a', 'b'], colorLabel: 'g', log: true });
  const ls = toSvg(logScene);
  for (const s of ['>1e-4</text>', '>1e-2</text>', '>1e0</text>']) assert.ok(ls.includes(s), s);
  const big = heatmap({ title: 'big', xLabel: 'k', yLabel: 'q', values: Array.from({ length: 100 }, (_, i) => Array.from({ length: 100 }, (_, j) => i + j)), rowLabels: Array.from({ length: 100 }, (_, i) => String(i)), colLabels: Array.from({ length: 100 }, (_, i) => String(i)), colorLabel: 'v' });
  const bs = toSvg(big);
  assert.ok(bs.includes('href="data:image/png;base64,'));
  assert.ok(bs.length < 200_000, `svg ${bs.length} bytes`);
  decodePng(toPng(big));
});

test('run figures from metrics.jsonl; gravity plot; attention field from forward output', async () => {
  const run = path.join(tmp, 'run');
  fs.mkdirSync(run);
  const lines = [
    { type: 'mass', step: 0, mass: [[0.9, 0.9], [0.9, 0.9]] },
    { type: 'eval', step: 0, val_loss: 3.2, val_ppl: 24.5 },
    { type: 'modules', keys: ['layers.0.q_proj', 'layers.0.v_proj', 'layers.1.q_proj', 'layers.1.v_proj', 'layers.0.mass', 'layers.1.mass', 'norm'] },
    ...[1, 2, 3].map((s) => ({ type: 'train', step: s, loss: 3 - s * 0.1, lr: 1e-3, grad_norm: 1, tokens: 10, tokens_per_s: 5, elapsed_s: s, gn: [0.1 * s, 0.2, 0.3, 0.4, 0.01, 0.02, 0.5] })),
    { type: 'mass', step: 3, mass: [[1.0, 0.8], [0.7, 1.2]] },
    { type: 'eval', step: 3, val_loss: 2.9, val_ppl: 18.2 },
  ];
  fs.writeFileSync(path.join(run, 'metrics.jsonl'), lines.map((l) => JSON.stringify(l)).join('\n') + '\n');
  const m = readMetrics(path.join(run, 'metrics.jsonl'));
  assert.deepEqual(m.train, [[1, 2.9], [2, 2.8], [3, 2.7]]);
  assert.deepEqual(m.val, [[0, 3.2], [3, 2.9]]);
  const g = gradGrid(m)!;
  assert.deepEqual(g.modules, ['q_proj', 'v_proj', 'mass']);
  assert.ok(Math.abs(g.values[0][0] - 0.2) < 1e-12); // mean of 0.1, 0.2, 0.3
  g.values[1].forEach((x, i) => assert.ok(Math.abs(x - [0.3, 0.4, 0.02][i]) < 1e-12));
  const files = writeRunFigures(run, path.join(tmp, 'figs'));
  assert.deepEqual(files.map((f) => path.basename(f)), ['loss.svg', 'loss.png', 'masses.svg', 'masses.png', 'grad_norms.svg', 'grad_norms.png']);
  for (const f of files.filter((f) => f.endsWith('.png'))) decodePng(fs.readFileSync(f));
  assert.match(fs.readFileSync(path.join(tmp, 'figs', 'masses.svg'), 'utf8'), /Gravity masses M = softplus\(mass_log\), step 3 \(trained from step 0\)/);
  assert.match(fs.readFileSync(path.join(tmp, 'figs', 'grad_norms.svg'), 'utf8'), />mass<\/text>/);

  // the CLI: run folder as the positional argument, attention file with layer/head
  const att = path.join(tmp, 'fwd.safetensors');
  const Q = 6;
  const data = new Float32Array(1 * 2 * Q * Q);
  for (let h = 0; h < 2; h++) for (let q = 0; q < Q; q++) for (let k = 0; k <= q; k++) data[(h * Q + q) * Q + k] = 1 / (q + 1);
  writeSafetensors(att, new Map([['attention.1', { dtype: 'F32', shape: [1, 2, Q, Q], data }]]));
  const out = path.join(tmp, 'plotout');
  const write = process.stdout.write;
  let printed = '';
  process.stdout.write = ((s: string) => ((printed += s), true)) as typeof process.stdout.write;
  try {
    assert.equal(await plotRun([run, '--out', out, '--attention', att, '--layer', '1', '--head', '1']), 0);
  } finally {
    process.stdout.write = write;
  }
  assert.equal(printed.trim().split('\n').length, 8);
  const asvg = fs.readFileSync(path.join(out, 'attention_l1_h1.svg'), 'utf8');
  assert.match(asvg, /Attention probabilities, layer 1 head 1/);
  assert.match(asvg, />query position</);
  assert.ok(asvg.includes('#c8c8c8'), 'masked future keys drawn grey');
  decodePng(fs.readFileSync(path.join(out, 'attention_l1_h1.png')));
  assert.throws(() => attentionFigure(att, 0, 0), /fwd\.safetensors: no tensor "attention\.0"/);
  assert.throws(() => attentionFigure(att, 1, 2), /--head 2: "attention\.1" has 2 heads/);
  await assert.rejects(plotRun([]), /give a RUN_DIR/);
  assert.throws(() => readMetrics(path.join(tmp, 'nope.jsonl')), /no metrics file/);
});
