/** Element types as safetensors names them, and conversions between 16-bit floats and f32. */
export type DType = 'F64' | 'F32' | 'F16' | 'BF16' | 'I64' | 'I32';

export type TypedArray = Float64Array | Float32Array | Uint16Array | BigInt64Array | Int32Array;

/** A tensor on the host in its stored width: F16 and BF16 keep their raw bits in a Uint16Array. */
export interface HostTensor {
  dtype: DType;
  shape: number[];
  data: TypedArray;
}

export function isHostTensor(v: unknown): v is HostTensor {
  return !!v && typeof v === 'object' && 'dtype' in v && 'shape' in v && 'data' in v && ArrayBuffer.isView((v as HostTensor).data);
}

export const DTYPE_BYTES: Record<DType, number> = { F64: 8, F32: 4, F16: 2, BF16: 2, I64: 8, I32: 4 };

export function numel(shape: readonly number[]): number {
  let n = 1;
  for (const s of shape) n *= s;
  return n;
}

const f32buf = new Float32Array(1);
const u32buf = new Uint32Array(f32buf.buffer);

/** bf16 bits -> f32 is the top half of the f32 bits. */
export function bf16ToF32(bits: number): number {
  u32buf[0] = bits << 16;
  return f32buf[0];
}

/** f32 -> bf16 bits with round-to-nearest-even (what torch does), NaN kept quiet. */
export function f32ToBf16(x: number): number {
  f32buf[0] = x;
  const u = u32buf[0];
  if ((u & 0x7fffffff) > 0x7f800000) return ((u >>> 16) | 0x40) & 0xffff;
  return ((u + 0x7fff + ((u >>> 16) & 1)) >>> 16) & 0xffff;
}

let F16_TABLE: Float32Array | null = null;
/** 64K lookup table: ~30x faster than computing each half float. */
export function f16Table(): Float32Array {
  if (F16_TABLE) return F16_TABLE;
  const t = new Float32Array(65536);
  for (let h = 0; h < 65536; h++) {
    const s = h & 0x8000 ? -1 : 1;
    const e = (h >>> 10) & 0x1f;
    const m = h & 0x3ff;
    if (e === 0) t[h] = s * m * 2 ** -24;
    else if (e === 31) t[h] = m ? NaN : s * Infinity;
    else t[h] = s * (1 + m / 1024) * 2 ** (e - 15);
  }
  F16_TABLE = t;
  return t;
}

export function f16ToF32(bits: number): number {
  return f16Table()[bits];
}

/** f32 -> f16 bits, round-to-nearest-even, overflow to inf. */
export function f32ToF16(x: number): number {
  f32buf[0] = x;
  const u = u32buf[0];
  const sign = (u >>> 16) & 0x8000;
  const exp = (u >>> 23) & 0xff;
  let mant = u & 0x7fffff;
  if (exp === 0xff) return sign | 0x7c00 | (mant ? 0x200 : 0);
  let e = exp - 127 + 15;
  if (e >= 31) return sign | 0x7c00;
  if (e <= 0) {
    if (e < -10) return sign;
    mant |= 0x800000;
    const shift = 14 - e;
    const half = 1 << (shift - 1);
    let r = mant >>> shift;
    const rem = mant & ((1 << shift) - 1);
    if (rem > half || (rem === half && r & 1)) r++;
    return sign | r;
  }
  let r = mant >>> 13;
  const rem = mant & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && r & 1)) {
    r++;
    if (r === 0x400) {
      r = 0;
      e++;
      if (e >= 31) return sign | 0x7c00;
    }
  }
  return sign | (e << 10) | r;
}

/** Widens any float tensor to a fresh Float32Array. */
export function toF32(t: HostTensor): Float32Array {
  const n = numel(t.shape);
  const out = new Float32Array(n);
  const d = t.data;
  if (t.dtype === 'F32') out.set(d as Float32Array);
  else if (t.dtype === 'F64') for (let i = 0; i < n; i++) out[i] = (d as Float64Array)[i];
  else if (t.dtype === 'BF16') {
    const o32 = new Uint32Array(out.buffer);
    const s = d as Uint16Array;
    for (let i = 0; i < n; i++) o32[i] = s[i] << 16;
  } else if (t.dtype === 'F16') {
    const tab = f16Table();
    const s = d as Uint16Array;
    for (let i = 0; i < n; i++) out[i] = tab[s[i]];
  } else if (t.dtype === 'I32') for (let i = 0; i < n; i++) out[i] = (d as Int32Array)[i];
  else for (let i = 0; i < n; i++) out[i] = Number((d as BigInt64Array)[i]);
  return out;
}

/** Narrows f32 values to a HostTensor of the given float dtype. */
export function fromF32(values: Float32Array | Float64Array, shape: number[], dtype: DType): HostTensor {
  const n = values.length;
  if (dtype === 'F32') return { dtype, shape, data: values instanceof Float32Array ? values : Float32Array.from(values) };
  if (dtype === 'F64') return { dtype, shape, data: Float64Array.from(values) };
  if (dtype === 'BF16' || dtype === 'F16') {
    const out = new Uint16Array(n);
    const conv = dtype === 'BF16' ? f32ToBf16 : f32ToF16;
    for (let i = 0; i < n; i++) out[i] = conv(values[i]);
    return { dtype, shape, data: out };
  }
  throw new Error(`fromF32: ${dtype} is not a float dtype`);
}
