/**
 * A figure as a flat list of shapes, rendered two ways: an SVG string and an RGBA raster (then PNG). Text is laid
 * out with the bitmap font's metrics in both, so the layouts agree (SVG uses a monospace font sized to match).
 */
import { ADVANCE, ASCENT, glyph, textWidth } from './font.js';
import { encodePng } from './png.js';

export type RGB = [number, number, number];

export type Shape =
  | { kind: 'rect'; x: number; y: number; w: number; h: number; fill: RGB; stroke?: RGB }
  | { kind: 'line'; points: Array<[number, number]>; color: RGB; width: number; dash?: boolean }
  | { kind: 'text'; x: number; y: number; text: string; scale: number; color?: RGB; anchor?: 'start' | 'middle' | 'end'; vertical?: boolean; bold?: boolean }
  /** a cols x rows grid of colours stretched over the box (nearest neighbour): big heatmaps */
  | { kind: 'image'; x: number; y: number; w: number; h: number; cols: number; rows: number; rgb: Uint8Array };

export interface Scene {
  width: number;
  height: number;
  shapes: Shape[];
}

const hex = (c: RGB) => '#' + c.map((v) => Math.round(v).toString(16).padStart(2, '0')).join('');
const esc = (s: string) => s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
const BLACK: RGB = [0, 0, 0];

// ---------------------------------------------------------------------------------------------- SVG

export function toSvg(scene: Scene): string {
  const out: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${scene.width}" height="${scene.height}" viewBox="0 0 ${scene.width} ${scene.height}">`,
    `<rect x="0" y="0" width="${scene.width}" height="${scene.height}" fill="#ffffff"/>`,
  ];
  for (const s of scene.shapes) {
    if (s.kind === 'rect') {
      out.push(`<rect x="${s.x}" y="${s.y}" width="${s.w}" height="${s.h}" fill="${hex(s.fill)}"${s.stroke ? ` stroke="${hex(s.stroke)}"` : ''}/>`);
    } else if (s.kind === 'line') {
      const pts = s.points.map(([x, y]) => `${+x.toFixed(2)},${+y.toFixed(2)}`).join(' ');
      out.push(`<polyline points="${pts}" fill="none" stroke="${hex(s.color)}" stroke-width="${s.width}"${s.dash ? ' stroke-dasharray="6 4"' : ''} stroke-linejoin="round"/>`);
    } else if (s.kind === 'text') {
      // the bitmap font: advance 6*scale, cap height 7*scale; a monospace font at 10*scale px matches that
      const anchor = s.anchor === 'middle' ? 'middle' : s.anchor === 'end' ? 'end' : 'start';
      const size = 10 * s.scale;
      const common = `font-family="DejaVu Sans Mono, Menlo, Consolas, monospace" font-size="${size}" text-anchor="${anchor}" fill="${hex(s.color ?? BLACK)}"${s.bold ? ' font-weight="bold"' : ''}`;
      if (s.vertical) {
        // (x, y) is the centre line's left edge in raster terms: rotate about the point
        const bx = s.x + ASCENT * s.scale;
        out.push(`<text x="${bx}" y="${s.y}" ${common} transform="rotate(-90 ${bx} ${s.y})">${esc(s.text)}</text>`);
      } else {
        out.push(`<text x="${s.x}" y="${s.y + ASCENT * s.scale}" ${common}>${esc(s.text)}</text>`);
      }
    } else {
      const png = encodePng(s.cols, s.rows, rgbToRgba(s.rgb, s.cols * s.rows));
      out.push(`<image x="${s.x}" y="${s.y}" width="${s.w}" height="${s.h}" preserveAspectRatio="none" style="image-rendering:pixelated" href="data:image/png;base64,${png.toString('base64')}"/>`);
    }
  }
  out.push('</svg>');
  return out.join('\n') + '\n';
}

function rgbToRgba(rgb: Uint8Array, n: number): Uint8Array {
  const out = new Uint8Array(n * 4);
  for (let i = 0; i < n; i++) {
    out[i * 4] = rgb[i * 3];
    out[i * 4 + 1] = rgb[i * 3 + 1];
    out[i * 4 + 2] = rgb[i * 3 + 2];
    out[i * 4 + 3] = 255;
  }
  return out;
}

// ---------------------------------------------------------------------------------------------- raster

export class Raster {
  readonly data: Uint8Array;
  constructor(readonly width: number, readonly height: number) {
    this.data = new Uint8Array(width * height * 4).fill(255);
  }
  px(x: number, y: number, c: RGB): void {
    x = Math.round(x);
    y = Math.round(y);
    if (x < 0 || y < 0 || x >= this.width || y >= this.height) return;
    const o = (y * this.width + x) * 4;
    this.data[o] = c[0];
    this.data[o + 1] = c[1];
    this.data[o + 2] = c[2];
    this.data[o + 3] = 255;
  }
  fillRect(x: number, y: number, w: number, h: number, c: RGB): void {
    const x0 = Math.max(0, Math.round(x));
    const y0 = Math.max(0, Math.round(y));
    const x1 = Math.min(this.width, Math.round(x + w));
    const y1 = Math.min(this.height, Math.round(y + h));
    for (let yy = y0; yy < y1; yy++) for (let xx = x0; xx < x1; xx++) this.px(xx, yy, c);
  }
  /** a segment stamped with a width x width square (thick lines without gaps) */
  line(x0: number, y0: number, x1: number, y1: number, c: RGB, width: number, dash = false): void {
    const n = Math.max(1, Math.ceil(Math.max(Math.abs(x1 - x0), Math.abs(y1 - y0))));
    const r = (width - 1) / 2;
    for (let i = 0; i <= n; i++) {
      if (dash && Math.floor(i / 5) % 2 === 1) continue;
      const x = x0 + ((x1 - x0) * i) / n;
      const y = y0 + ((y1 - y0) * i) / n;
      for (let dy = -r; dy <= r; dy++) for (let dx = -r; dx <= r; dx++) this.px(x + dx, y + dy, c);
    }
  }
  text(x: number, y: number, text: string, scale: number, c: RGB, anchor: 'start' | 'middle' | 'end' = 'start', vertical = false, bold = false): void {
    const w = textWidth(text, scale);
    const shift = anchor === 'middle' ? w / 2 : anchor === 'end' ? w : 0;
    for (let i = 0; i < text.length; i++) {
      for (const [gx, gy] of glyph(text[i])) {
        for (let b = 0; b <= (bold ? 1 : 0); b++) {
          const along = i * ADVANCE * scale + (gx + b * 0.5) * scale - shift; // along the text direction
          const across = gy * scale; // down from the top of the cell
          for (let sy = 0; sy < scale; sy++) {
            for (let sx = 0; sx < scale; sx++) {
              // vertical text reads bottom to top: "along" runs up from y, the cell top faces left
              if (vertical) this.px(Math.round(x + across + sy), Math.round(y - along - sx), c);
              else this.px(Math.round(x + along + sx), Math.round(y + across + sy), c);
            }
          }
        }
      }
    }
  }
}

export function rasterize(scene: Scene): Raster {
  const r = new Raster(scene.width, scene.height);
  for (const s of scene.shapes) {
    if (s.kind === 'rect') {
      r.fillRect(s.x, s.y, s.w, s.h, s.fill);
      if (s.stroke) {
        r.line(s.x, s.y, s.x + s.w, s.y, s.stroke, 1);
        r.line(s.x + s.w, s.y, s.x + s.w, s.y + s.h, s.stroke, 1);
        r.line(s.x, s.y + s.h, s.x + s.w, s.y + s.h, s.stroke, 1);
        r.line(s.x, s.y, s.x, s.y + s.h, s.stroke, 1);
      }
    } else if (s.kind === 'line') {
      for (let i = 1; i < s.points.length; i++) r.line(s.points[i - 1][0], s.points[i - 1][1], s.points[i][0], s.points[i][1], s.color, s.width, s.dash);
      if (s.points.length === 1) r.fillRect(s.points[0][0] - s.width, s.points[0][1] - s.width, 2 * s.width + 1, 2 * s.width + 1, s.color);
    } else if (s.kind === 'text') {
      r.text(s.x, s.y, s.text, s.scale, s.color ?? BLACK, s.anchor, s.vertical, s.bold);
    } else {
      const x0 = Math.round(s.x);
      const y0 = Math.round(s.y);
      const w = Math.round(s.w);
      const h = Math.round(s.h);
      for (let yy = 0; yy < h; yy++) {
        const row = Math.min(s.rows - 1, Math.floor((yy * s.rows) / h));
        for (let xx = 0; xx < w; xx++) {
          const col = Math.min(s.cols - 1, Math.floor((xx * s.cols) / w));
          const o = (row * s.cols + col) * 3;
          r.px(x0 + xx, y0 + yy, [s.rgb[o], s.rgb[o + 1], s.rgb[o + 2]]);
        }
      }
    }
  }
  return r;
}

export function toPng(scene: Scene): Buffer {
  const r = rasterize(scene);
  return encodePng(r.width, r.height, r.data);
}
