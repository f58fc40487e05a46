/**
 * GGML tensor types: ids, block sizes, and dequantization of the block formats found in llama.cpp's GGUF files (the
 * layouts of ggml-common.h: Q4_0, Q4_1, Q5_0, Q8_0, and the 256-value super-blocks Q2_K .. Q6_K), plus Q8_0
 * quantization for the writer (llama.cpp's reference rounding). Little-endian bytes in, f32 out.
 */
import { f16ToF32, f32ToF16 } from '../tensor/dtype.js';

export const GGML = { F32: 0, F16: 1, Q4_0: 2, Q4_1: 3, Q5_0: 6, Q8_0: 8, Q2_K: 10, Q3_K: 11, Q4_K: 12, Q5_K: 13, Q6_K: 14, BF16: 30 } as const;
export type GgmlTypeName = keyof typeof GGML;

/** values per block and bytes per block of each type we read */
export const BLOCK: Record<number, { n: number; bytes: number; name: GgmlTypeName }> = {
  [GGML.F32]: { n: 1, bytes: 4, name: 'F32' },
  [GGML.F16]: { n: 1, bytes: 2, name: 'F16' },
  [GGML.BF16]: { n: 1, bytes: 2, name: 'BF16' },
  [GGML.Q4_0]: { n: 32, bytes: 18, name: 'Q4_0' },
  [GGML.Q4_1]: { n: 32, bytes: 20, name: 'Q4_1' },
  [GGML.Q5_0]: { n: 32, bytes: 22, name: 'Q5_0' },
  [GGML.Q8_0]: { n: 32, bytes: 34, name: 'Q8_0' },
  [GGML.Q2_K]: { n: 256, bytes: 84, name: 'Q2_K' },
  [GGML.Q3_K]: { n: 256, bytes: 110, name: 'Q3_K' },
  [GGML.Q4_K]: { n: 256, bytes: 144, name: 'Q4_K' },
  [GGML.Q5_K]: { n: 256, bytes: 176, name: 'Q5_K' },
  [GGML.Q6_K]: { n: 256, bytes: 210, name: 'Q6_K' },
};

const half = (b: Uint8Array, o: number) => f16ToF32(b[o] | (b[o + 1] << 8));

/** the 6-bit scale and min j of a K-quant super-block (12 packed bytes at s) */
function scaleMin(b: Uint8Array, s: number, j: number): [number, number] {
  if (j < 4) return [b[s + j] & 63, b[s + j + 4] & 63];
  return [(b[s + j + 4] & 0xf) | ((b[s + j - 4] >> 6) << 4), (b[s + j + 4] >> 4) | ((b[s + j] >> 6) << 4)];
}

function q4_0(b: Uint8Array, o: number, y: Float32Array, at: number): void {
  const d = half(b, o);
  for (let j = 0; j < 16; j++) {
    const q = b[o + 2 + j];
    y[at + j] = ((q & 0xf) - 8) * d;
    y[at + j + 16] = ((q >> 4) - 8) * d;
  }
}

function q4_1(b: Uint8Array, o: number, y: Float32Array, at: number): void {
  const d = half(b, o);
  const m = half(b, o + 2);
  for (let j = 0; j < 16; j++) {
    const q = b[o + 4 + j];
    y[at + j] = (q & 0xf) * d + m;
    y[at + j + 16] = (q >> 4) * d + m;
  }
}

function q5_0(b: Uint8Array, o: number, y: Float32Array, at: number): void {
  const d = half(b, o);
  const qh = (b[o + 2] | (b[o + 3] << 8) | (b[o + 4] << 16) | (b[o + 5] << 24)) >>> 0;
  for (let j = 0; j < 16; j++) {
    const q = b[o + 6 + j];
    const h0 = ((qh >>> j) << 4) & 0x10;
    const h1 = (qh >>> (j + 12)) & 0x10;
    y[at + j] = (((q & 0xf) | h0) - 16) * d;
    y[at + j + 16] = (((q >> 4) | h1) - 16) * d;
  }
}

function q8_0(b: Uint8Array, o: number, y: Float32Array, at: number): void {
  const d = half(b, o);
  for (let j = 0; j < 32; j++) y[at + j] = ((b[o + 2 + j] << 24) >> 24) * d;
}

/** scales[16] (low nibble scale, high nibble min), qs[64] (2 bits), d, dmin */
function q2_k(b: Uint8Array, o: number, y: Float32Array, at: number): void {
  const d = half(b, o + 80);
  const dmin = half(b, o + 82);
  let q = o + 16;
  let is = o;
  for (let n = 0; n < 2; n++) {
    for (let shift = 0; shift < 8; shift += 2) {
      for (let h = 0; h < 2; h++) {
        const sc = b[is++];
        const dl = d * (sc & 0xf);
        const ml = dmin * (sc >> 4);
        for (let l = 0; l < 16; l++) y[at++] = dl * ((b[q + l + 16 * h] >> shift) & 3) - ml;
      }
    }
    q += 32;
  }
}

/** hmask[32] (high bit, set = no offset), qs[64] (2 bits), scales[12] (16 x 6 bits, packed), d */
function q3_k(b: Uint8Array, o: number, y: Float32Array, at: number): void {
  const d = half(b, o + 108);
  const s = o + 96;
  // the 16 six-bit scales: low 4 bits from bytes 0..7 (low then high nibbles), top 2 bits from bytes 8..11
  const sc = new Int8Array(16);
  for (let i = 0; i < 16; i++) {
    const lo = i < 8 ? b[s + i] & 0xf : b[s + i - 8] >> 4;
    const hi = (b[s + 8 + (i % 4)] >> (2 * Math.floor(i / 4))) & 3;
    sc[i] = (lo | (hi << 4)) - 32;
  }
  let q = o + 32;
  let m = 1;
  let is = 0;
  for (let n = 0; n < 2; n++) {
    for (let shift = 0; shift < 8; shift += 2, m <<= 1) {
      for (let h = 0; h < 2; h++) {
        const dl = d * sc[is++];
        for (let l = 0; l < 16; l++) {
          const i = l + 16 * h;
          y[at++] = dl * (((b[q + i] >> shift) & 3) - (b[o + i] & m ? 0 : 4));
        }
      }
    }
    q += 32;
  }
}

/**
 * Q4_K and Q5_K: d, dmin, 12 bytes of 6-bit scales and mins, (Q5_K: 32 bytes of high bits), 128 bytes of low
 * nibbles; each 64 values are two sub-blocks of 32 (low, then high nibbles), x = d * scale * q - dmin * min.
 */
function kQuant(five: boolean): (b: Uint8Array, o: number, y: Float32Array, at: number) => void {
  return (b, o, y, at) => {
    const d = half(b, o);
    const dmin = half(b, o + 2);
    const s = o + 4;
    const qh = o + 16;
    let ql = o + (five ? 48 : 16);
    for (let j = 0, u = 1; j < 8; j += 2, u <<= 2) {
      const [sc1, m1] = scaleMin(b, s, j);
      const [sc2, m2] = scaleMin(b, s, j + 1);
      for (let l = 0; l < 32; l++) {
        const h1 = five && b[qh + l] & u ? 16 : 0;
        const h2 = five && b[qh + l] & (u << 1) ? 16 : 0;
        y[at + l] = d * sc1 * ((b[ql + l] & 0xf) + h1) - dmin * m1;
        y[at + 32 + l] = d * sc2 * ((b[ql + l] >> 4) + h2) - dmin * m2;
      }
      ql += 32;
      at += 64;
    }
  };
}

function q6_k(b: Uint8Array, o: number, y: Float32Array, at: number): void {
  let ql = o;
  let qh = o + 128;
  let sc = o + 192;
  const d = half(b, o + 208);
  const s8 = (i: number) => (b[i] << 24) >> 24;
  for (let n = 0; n < 256; n += 128) {
    for (let l = 0; l < 32; l++) {
      const is = l >> 4;
      const h = b[qh + l];
      y[at + l] = d * s8(sc + is) * (((b[ql + l] & 0xf) | ((h & 3) << 4)) - 32);
      y[at + l + 32] = d * s8(sc + is + 2) * (((b[ql + l + 32] & 0xf) | (((h >> 2) & 3) << 4)) - 32);
      y[at + l + 64] = d * s8(sc + is + 4) * (((b[ql + l] >> 4) | (((h >> 4) & 3) << 4)) - 32);
      y[at + l + 96] = d * s8(sc + is + 6) * (((b[ql + l + 32] >> 4) | (((h >> 6) & 3) << 4)) - 32);
    }
    ql += 64;
    qh += 32;
    sc += 8;
    at += 128;
  }
}

const BLOCK_FN: Record<number, (b: Uint8Array, o: number, y: Float32Array, at: number) => void> = {
  [GGML.Q4_0]: q4_0, [GGML.Q4_1]: q4_1, [GGML.Q5_0]: q5_0, [GGML.Q8_0]: q8_0, [GGML.Q2_K]: q2_k, [GGML.Q3_K]: q3_k, [GGML.Q4_K]: kQuant(false), [GGML.Q5_K]: kQuant(true), [GGML.Q6_K]: q6_k,
};

/** the n values of a quantized tensor's bytes (n a multiple of the block size; the caller checks the byte count) */
export function dequantize(type: number, bytes: Uint8Array, n: number): Float32Array {
  const f = BLOCK_FN[type];
  const blk = BLOCK[type];
  if (!f || !blk) throw new Error(`dequantize: GGML type ${type} is not a block format we read`);
  const y = new Float32Array(n);
  for (let i = 0; i < n / blk.n; i++) f(bytes, i * blk.bytes, y, i * blk.n);
  return y;
}

/** llama.cpp's quantize_row_q8_0_ref: per 32 values d = amax / 127 (as f16), q = round(x / d) */
export function quantizeQ8_0(x: Float32Array): Uint8Array {
  if (x.length % 32 !== 0) throw new Error(`quantizeQ8_0: ${x.length} values is not a multiple of 32`);
  const out = new Uint8Array((x.length / 32) * 34);
  for (let i = 0; i < x.length / 32; i++) {
    let amax = 0;
    for (let j = 0; j < 32; j++) amax = Math.max(amax, Math.abs(x[i * 32 + j]));
    // in f32, as the C code computes
    const d = Math.fround(amax / 127);
    const id = d ? Math.fround(1 / d) : 0;
    const h = f32ToF16(d);
    const o = i * 34;
    out[o] = h & 0xff;
    out[o + 1] = h >> 8;
    for (let j = 0; j < 32; j++) {
      const v = Math.fround(x[i * 32 + j] * id);
      out[o + 2 + j] = Math.sign(v) * Math.round(Math.abs(v)) & 0xff; // roundf: halves away from zero
    }
  }
  return out;
}
