/**
 * The safetensors format without files: header parsing (8-byte LE length, JSON header) and a reader over bytes
 * already in memory (a fetched file in a browser). Node's file reader (safetensors.ts) shares the header checks.
 */
import { fail } from '../errors.js';
import { DTYPE_BYTES, numel, type DType, type HostTensor, type TypedArray } from '../tensor/dtype.js';

export interface TensorInfo {
  dtype: DType;
  shape: number[];
  /** absolute file offsets of the data, [start, end) */
  start: number;
  end: number;
}

export interface SafetensorsFile {
  readonly path: string;
  readonly tensors: Map<string, TensorInfo>;
  readonly metadata: Record<string, string>;
  read(name: string): HostTensor;
  /** GGUF: a 2-D tensor's raw Q8_0 blocks (rows in HF order), for a backend that keeps them (Backend.uploadQ8); null for other types */
  readQ8?(name: string): Uint8Array | null;
  close(): void;
}

export interface WeightStore {
  readonly dir: string;
  /** the file to name in messages: model.safetensors or model.safetensors.index.json */
  readonly label: string;
  names(): string[];
  has(name: string): boolean;
  /** `stored`: the file's own type where it is not a DType (GGUF blocks: 'Q4_K', ...), the tensor reads as `dtype` */
  info(name: string): { dtype: DType; shape: number[]; file: string; stored?: string };
  read(name: string): HostTensor;
  /** GGUF: a 2-D tensor's raw Q8_0 blocks (rows in HF order), for a backend that keeps them (Backend.uploadQ8); null for other types */
  readQ8?(name: string): Uint8Array | null;
  close(): void;
}

export const KNOWN_DTYPES = new Set<string>(['F64', 'F32', 'F16', 'BF16', 'I64', 'I32']);

/** A typed array of `dtype` viewing `buf` (which must be aligned to the element size). */
export function typedView(dtype: DType, buf: ArrayBuffer, byteOffset = 0, length?: number): TypedArray {
  const n = length ?? (buf.byteLength - byteOffset) / DTYPE_BYTES[dtype];
  switch (dtype) {
    case 'F64': return new Float64Array(buf, byteOffset, n);
    case 'F32': return new Float32Array(buf, byteOffset, n);
    case 'F16':
    case 'BF16': return new Uint16Array(buf, byteOffset, n);
    case 'I64': return new BigInt64Array(buf, byteOffset, n);
    case 'I32': return new Int32Array(buf, byteOffset, n);
  }
}

export function isIntArray(v: unknown): v is number[] {
  return Array.isArray(v) && v.every((x) => Number.isInteger(x) && x >= 0);
}

/** Checks the JSON header of a file of `size` bytes: every tensor's dtype, shape and data range. */
export function parseSafetensorsHeader(headerBytes: Uint8Array, size: number, label: string): { tensors: Map<string, TensorInfo>; metadata: Record<string, string> } {
  let header: unknown;
  try {
    header = JSON.parse(new TextDecoder().decode(headerBytes));
  } catch (e) {
    fail(`${label}: header is not valid JSON (${(e as Error).message})`);
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) fail(`${label}: header is not a JSON object`);
  const dataStart = 8 + headerBytes.length;
  const tensors = new Map<string, TensorInfo>();
  const metadata: Record<string, string> = {};
  for (const [name, raw] of Object.entries(header as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (raw && typeof raw === 'object') {
        for (const [k, v] of Object.entries(raw as Record<string, unknown>)) metadata[k] = String(v);
      }
      continue;
    }
    const t = raw as { dtype?: unknown; shape?: unknown; data_offsets?: unknown } | null;
    if (!t || typeof t !== 'object') fail(`${label}: tensor "${name}" has no header entry object`);
    if (typeof t.dtype !== 'string' || !KNOWN_DTYPES.has(t.dtype)) {
      fail(`${label}: tensor "${name}" has unknown or unsupported dtype ${JSON.stringify(t.dtype)} (supported: F64, F32, F16, BF16, I64, I32)`);
    }
    const dtype = t.dtype as DType;
    if (!isIntArray(t.shape)) fail(`${label}: tensor "${name}" shape ${JSON.stringify(t.shape)} is not an array of non-negative integers`);
    const offs = t.data_offsets;
    if (!isIntArray(offs) || offs.length !== 2 || offs[1] < offs[0]) {
      fail(`${label}: tensor "${name}" data_offsets ${JSON.stringify(offs)} are not two increasing integers`);
    }
    const start = dataStart + offs[0];
    const end = dataStart + offs[1];
    if (end > size) fail(`${label}: tensor "${name}" data [${start}, ${end}) overruns the file (${size} bytes)`);
    const want = numel(t.shape) * DTYPE_BYTES[dtype];
    if (end - start !== want) {
      fail(`${label}: tensor "${name}" has ${end - start} data bytes, expected ${want} for ${dtype} ${JSON.stringify(t.shape)}`);
    }
    tensors.set(name, { dtype, shape: t.shape.slice(), start, end });
  }
  return { tensors, metadata };
}

/** A safetensors file held in memory; `read` copies a tensor out (aligned for its element type). */
export function safetensorsFromBytes(bytes: Uint8Array, label: string): SafetensorsFile {
  if (bytes.length < 8) fail(`${label}: file is ${bytes.length} bytes, too short for a safetensors header`);
  const headerLen = Number(new DataView(bytes.buffer, bytes.byteOffset, 8).getBigUint64(0, true));
  if (headerLen > bytes.length - 8) fail(`${label}: header length ${headerLen} overruns the file (${bytes.length} bytes)`);
  const { tensors, metadata } = parseSafetensorsHeader(bytes.subarray(8, 8 + headerLen), bytes.length, label);
  return {
    path: label,
    tensors,
    metadata,
    read(name: string): HostTensor {
      const info = tensors.get(name);
      if (!info) fail(`${label}: no tensor named "${name}"`);
      const buf = bytes.slice(info.start, info.end).buffer;
      return { dtype: info.dtype, shape: info.shape.slice(), data: typedView(info.dtype, buf) };
    },
    close() {},
  };
}

/** The weight_map of a model.safetensors.index.json as [tensor, shard file] pairs; `label` names the index in errors. */
export function weightMapEntries(index: unknown, label: string): [string, string][] {
  const wm = (index as { weight_map?: unknown } | null)?.weight_map;
  if (!wm || typeof wm !== 'object' || Array.isArray(wm)) fail(`${label}: has no "weight_map" object`);
  return Object.entries(wm as Record<string, unknown>).map(([name, shard]) => {
    if (typeof shard !== 'string') fail(`${label}: weight_map entry for "${name}" is not a file name`);
    return [name, shard];
  });
}

/** A file read in pieces (HTTP Range requests): `read(start, end)` gives exactly the bytes [start, end), or throws. */
export interface RangedFile {
  readonly size: number;
  read(start: number, end: number): Promise<Uint8Array>;
}

/** A safetensors file read tensor by tensor: the header first, then each tensor's bytes when asked for. */
export interface RangedSafetensors {
  readonly path: string;
  readonly tensors: Map<string, TensorInfo>;
  readAsync(name: string): Promise<HostTensor>;
}

export async function openSafetensorsRanged(f: RangedFile, label: string): Promise<RangedSafetensors> {
  if (f.size < 8) fail(`${label}: file is ${f.size} bytes, too short for a safetensors header`);
  const len = await f.read(0, 8);
  const headerLen = Number(new DataView(len.buffer, len.byteOffset, 8).getBigUint64(0, true));
  if (headerLen > f.size - 8) fail(`${label}: header length ${headerLen} overruns the file (${f.size} bytes)`);
  const { tensors } = parseSafetensorsHeader(await f.read(8, 8 + headerLen), f.size, label);
  return {
    path: label,
    tensors,
    async readAsync(name) {
      const info = tensors.get(name);
      if (!info) fail(`${label}: no tensor named "${name}"`);
      const b = await f.read(info.start, info.end);
      // a copy when the bytes are not aligned for the element type
      const buf = b.byteOffset % 8 === 0 && b.byteLength === b.buffer.byteLength ? b.buffer : b.slice().buffer;
      return { dtype: info.dtype, shape: info.shape.slice(), data: typedView(info.dtype, buf as ArrayBuffer) };
    },
  };
}
