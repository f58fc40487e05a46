/** safetensors files: 8-byte LE header length, JSON header, raw little-endian tensor data. Read tensor by tensor
 * with positioned reads so a 6 GB checkpoint never sits in one Buffer. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fail } from '../errors.js';
import { DTYPE_BYTES, numel, type DType, type HostTensor } from '../tensor/dtype.js';
import { KNOWN_DTYPES, isIntArray, parseSafetensorsHeader, typedView, weightMapEntries, type SafetensorsFile, type WeightStore } from './safetensors-header.js';

export { typedView, safetensorsFromBytes, type TensorInfo, type SafetensorsFile, type WeightStore } from './safetensors-header.js';

/** readSync takes at most 2 GiB - 1 per call. */
const IO_CHUNK = 1 << 30;

/** The typed array class a dtype must be stored in (so a Float32Array labelled BF16 is caught). */
function expectedArrayName(dtype: DType): string {
  return { F64: 'Float64Array', F32: 'Float32Array', F16: 'Uint16Array', BF16: 'Uint16Array', I64: 'BigInt64Array', I32: 'Int32Array' }[dtype];
}

/** Reads exactly `length` bytes at `position` into `dst`, in chunks; short reads mean the file shrank. */
export function readFully(fd: number, dst: Uint8Array, position: number, file: string): void {
  let done = 0;
  while (done < dst.length) {
    const want = Math.min(IO_CHUNK, dst.length - done);
    const got = fs.readSync(fd, dst, done, want, position + done);
    if (got <= 0) fail(`${file}: unexpected end of file at byte ${position + done}`);
    done += got;
  }
}

export function writeFully(fd: number, src: Uint8Array): void {
  let done = 0;
  while (done < src.length) {
    done += fs.writeSync(fd, src, done, Math.min(IO_CHUNK, src.length - done));
  }
}

/** Opens `file` read-only and hands the descriptor to `parse`; closes it if parsing throws. */
export function openWith<T>(file: string, parse: (fd: number, file: string, label: string) => T): T {
  const label = path.basename(file);
  let fd: number;
  try {
    fd = fs.openSync(file, 'r');
  } catch (e) {
    fail(`${file}: cannot open (${(e as NodeJS.ErrnoException).code ?? String(e)})`);
  }
  try {
    return parse(fd, file, label);
  } catch (e) {
    fs.closeSync(fd);
    throw e;
  }
}

export function openSafetensors(file: string): SafetensorsFile {
  return openWith(file, parseHeader);
}

function parseHeader(fd: number, file: string, label: string): SafetensorsFile {
  const size = fs.fstatSync(fd).size;
  if (size < 8) fail(`${label}: file is ${size} bytes, too short for a safetensors header`);
  const lenBuf = new Uint8Array(8);
  readFully(fd, lenBuf, 0, label);
  const headerLen = Number(new DataView(lenBuf.buffer).getBigUint64(0, true));
  if (headerLen > size - 8) fail(`${label}: header length ${headerLen} overruns the file (${size} bytes)`);
  const headerBytes = new Uint8Array(headerLen);
  readFully(fd, headerBytes, 8, label);
  const { tensors, metadata } = parseSafetensorsHeader(headerBytes, size, label);
  let closed = false;
  return {
    path: file,
    tensors,
    metadata,
    read(name: string): HostTensor {
      if (closed) fail(`${label}: read of tensor "${name}" after close`);
      const info = tensors.get(name);
      if (!info) fail(`${label}: no tensor named "${name}"`);
      // A fresh ArrayBuffer is aligned for every element type, unlike a slice of a shared Buffer.
      const buf = new ArrayBuffer(info.end - info.start);
      readFully(fd, new Uint8Array(buf), info.start, label);
      return { dtype: info.dtype, shape: info.shape.slice(), data: typedView(info.dtype, buf) };
    },
    close() {
      if (!closed) fs.closeSync(fd);
      closed = true;
    },
  };
}

/** What the header needs before any data exists: lets a writer produce tensors one at a time. */
export interface TensorSpec {
  name: string;
  dtype: DType;
  shape: number[];
}

/** Checks a tensor's array against its dtype and shape; `where` names the file for the message. */
export function checkHostTensor(t: HostTensor, name: string, where: string): void {
  if (!KNOWN_DTYPES.has(t.dtype)) fail(`${where}: tensor "${name}" has unknown dtype ${JSON.stringify(t.dtype)}`);
  if (!isIntArray(t.shape)) fail(`${where}: tensor "${name}" shape ${JSON.stringify(t.shape)} is not an array of non-negative integers`);
  if (t.data.constructor.name !== expectedArrayName(t.dtype)) {
    fail(`${where}: tensor "${name}" is ${t.dtype} but its data is a ${t.data.constructor.name}, expected ${expectedArrayName(t.dtype)}`);
  }
  if (t.data.length !== numel(t.shape)) {
    fail(`${where}: tensor "${name}" has ${t.data.length} values, its shape ${JSON.stringify(t.shape)} needs ${numel(t.shape)}`);
  }
}

/** Runs `write(tmpPath)` and renames onto `file` only if it succeeded, so an existing file is never half-written. */
export function atomicWrite(file: string, write: (tmp: string) => void): void {
  const tmp = `${file}.tmp-${process.pid}`;
  try {
    write(tmp);
    fs.renameSync(tmp, file);
  } catch (e) {
    try {
      fs.unlinkSync(tmp);
    } catch {
      /* the temp file may never have been created */
    }
    throw e;
  }
}

function bytesOf(t: HostTensor): Uint8Array {
  return new Uint8Array(t.data.buffer, t.data.byteOffset, t.data.byteLength);
}

/**
 * Writes a safetensors file from specs, asking `produce` for each tensor's data in spec order (one tensor in memory
 * at a time). Atomic: a temp file is renamed over `file` only when everything was written.
 */
export function writeSafetensorsStreaming(
  file: string,
  specs: TensorSpec[],
  produce: (spec: TensorSpec, index: number) => HostTensor,
  metadata?: Record<string, string>,
): void {
  const label = path.basename(file);
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length) {
    const md: Record<string, string> = {};
    for (const [k, v] of Object.entries(metadata)) md[k] = String(v);
    header.__metadata__ = md;
  }
  let off = 0;
  const seen = new Set<string>();
  for (const s of specs) {
    if (seen.has(s.name)) fail(`${label}: tensor "${s.name}" is listed twice`);
    seen.add(s.name);
    if (!KNOWN_DTYPES.has(s.dtype)) fail(`${label}: tensor "${s.name}" has unknown dtype ${JSON.stringify(s.dtype)}`);
    if (!isIntArray(s.shape)) fail(`${label}: tensor "${s.name}" shape ${JSON.stringify(s.shape)} is not an array of non-negative integers`);
    const n = numel(s.shape) * DTYPE_BYTES[s.dtype];
    header[s.name] = { dtype: s.dtype, shape: s.shape, data_offsets: [off, off + n] };
    off += n;
  }
  let json = Buffer.from(JSON.stringify(header), 'utf8');
  // Pad with spaces so the data starts 8-byte aligned (what the reference implementation does).
  const pad = (8 - (json.length % 8)) % 8;
  if (pad) json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const lenBuf = Buffer.alloc(8);
  lenBuf.writeBigUInt64LE(BigInt(json.length));
  atomicWrite(file, (tmp) => {
    const fd = fs.openSync(tmp, 'w');
    try {
      writeFully(fd, lenBuf);
      writeFully(fd, json);
      specs.forEach((s, i) => {
        const t = produce(s, i);
        checkHostTensor(t, s.name, label);
        if (t.dtype !== s.dtype || t.shape.length !== s.shape.length || t.shape.some((d, j) => d !== s.shape[j])) {
          fail(`${label}: tensor "${s.name}" was declared ${s.dtype} ${JSON.stringify(s.shape)} but produced ${t.dtype} ${JSON.stringify(t.shape)}`);
        }
        writeFully(fd, bytesOf(t));
      });
    } finally {
      fs.closeSync(fd);
    }
  });
}

/** Writes tensors (in insertion order) atomically. Every tensor is validated before anything is written. */
export function writeSafetensors(
  file: string,
  tensors: Record<string, HostTensor> | Map<string, HostTensor>,
  metadata?: Record<string, string>,
): void {
  const label = path.basename(file);
  const entries = tensors instanceof Map ? [...tensors.entries()] : Object.entries(tensors);
  for (const [name, t] of entries) checkHostTensor(t, name, label);
  const specs = entries.map(([name, t]) => ({ name, dtype: t.dtype, shape: t.shape }));
  writeSafetensorsStreaming(file, specs, (_s, i) => entries[i][1], metadata);
}

/** A model's weights, whether in one safetensors file or sharded with an index. */
/** File names in a model folder that hold something other than the model's weights. */
function isSideFile(name: string): boolean {
  return /^(gravity_mass_log|adapter_model|expected)\b/.test(name) || name.endsWith('.tmp');
}

export function openWeights(dir: string): WeightStore {
  if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) fail(`${dir}: model folder does not exist`);
  const indexPath = path.join(dir, 'model.safetensors.index.json');
  if (fs.existsSync(indexPath)) return openSharded(dir, indexPath);
  let single = path.join(dir, 'model.safetensors');
  if (!fs.existsSync(single)) {
    const cands = fs.readdirSync(dir).filter((f) => f.endsWith('.safetensors') && !isSideFile(f));
    if (cands.length === 0) fail(`${dir}: no model.safetensors or model.safetensors.index.json in the model folder`);
    if (cands.length > 1) fail(`${dir}: several .safetensors files (${cands.join(', ')}) and no model.safetensors.index.json to say which are weights`);
    single = path.join(dir, cands[0]);
  }
  const f = openSafetensors(single);
  const label = path.basename(single);
  return {
    dir,
    label,
    names: () => [...f.tensors.keys()],
    has: (n) => f.tensors.has(n),
    info(n) {
      const t = f.tensors.get(n);
      if (!t) fail(`${label}: no tensor named "${n}"`);
      return { dtype: t.dtype, shape: t.shape.slice(), file: single };
    },
    read: (n) => f.read(n),
    close: () => f.close(),
  };
}

function openSharded(dir: string, indexPath: string): WeightStore {
  const label = path.basename(indexPath);
  let index: unknown;
  try {
    index = JSON.parse(fs.readFileSync(indexPath, 'utf8'));
  } catch (e) {
    fail(`${label}: not valid JSON (${(e as Error).message})`);
  }
  const entries = weightMapEntries(index, label);
  const files = new Map<string, SafetensorsFile>();
  const where = new Map<string, SafetensorsFile>();
  try {
    for (const [name, shard] of entries) {
      let f = files.get(shard);
      if (!f) {
        const p = path.join(dir, shard);
        if (!fs.existsSync(p)) fail(`${label}: shard file ${shard} (holding "${name}") is missing from ${dir}`);
        f = openSafetensors(p);
        files.set(shard, f);
      }
      if (!f.tensors.has(name)) fail(`${shard}: tensor "${name}" is listed in ${label} but not in the shard`);
      where.set(name, f);
    }
  } catch (e) {
    for (const f of files.values()) f.close();
    throw e;
  }
  const get = (n: string): SafetensorsFile => {
    const f = where.get(n);
    if (!f) fail(`${label}: no tensor named "${n}"`);
    return f;
  };
  return {
    dir,
    label,
    names: () => [...where.keys()],
    has: (n) => where.has(n),
    info(n) {
      const f = get(n);
      const t = f.tensors.get(n)!;
      return { dtype: t.dtype, shape: t.shape.slice(), file: f.path };
    },
    read: (n) => get(n).read(n),
    close: () => {
      for (const f of files.values()) f.close();
    },
  };
}
