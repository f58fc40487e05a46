/** torch.save files (zip with <prefix>/data.pkl + <prefix>/data/<key> storages): read with pickleparser, write as
 * pickle protocol 2 of an OrderedDict of tensors that torch.load(weights_only=True) accepts. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { NameRegistry, Parser } from 'pickleparser';
import { fail, GravityError } from '../errors.js';
import { DTYPE_BYTES, numel, type DType, type HostTensor } from '../tensor/dtype.js';
import { atomicWrite, checkHostTensor, typedView } from './safetensors.js';
import { openZip, writeZipEntries, type ZipInput, type ZipReader } from './zip.js';

const STORAGE_DTYPES: Record<string, DType> = {
  FloatStorage: 'F32',
  DoubleStorage: 'F64',
  HalfStorage: 'F16',
  BFloat16Storage: 'BF16',
  LongStorage: 'I64',
  IntStorage: 'I32',
};
const DTYPE_STORAGE: Record<DType, string> = Object.fromEntries(
  Object.entries(STORAGE_DTYPES).map(([k, v]) => [v, k]),
) as Record<DType, string>;

/** What a storage class resolves to while unpickling: a marker carrying its dtype (or the unsupported name). */
interface StorageType {
  storageName: string;
  dtype: DType | null;
}

interface Storage {
  key: string;
  dtype: DType;
  numel: number;
}

function storageMarker(name: string): StorageType {
  const marker = function () {
    return undefined;
  } as unknown as StorageType & (() => void);
  marker.storageName = name;
  marker.dtype = STORAGE_DTYPES[name] ?? null;
  return marker;
}

/** Finds the single folder prefix every entry shares ("archive/", "gravity_mass_log/"). */
function archivePrefix(zip: ZipReader, label: string): string {
  const pkl = [...zip.entries.keys()].filter((n) => n.endsWith('data.pkl') && n.split('/').length === 2);
  if (pkl.length !== 1) fail(`${label}: not a torch.save file (expected one <folder>/data.pkl entry, found ${pkl.length})`);
  return pkl[0].slice(0, -'data.pkl'.length);
}

function isContiguous(size: number[], stride: number[]): boolean {
  let expect = 1;
  for (let i = size.length - 1; i >= 0; i--) {
    if (size[i] !== 1 && stride[i] !== expect) return false;
    expect *= size[i];
  }
  return true;
}

function toInts(v: unknown, what: string, label: string): number[] {
  if (!Array.isArray(v) || !v.every((x) => typeof x === 'number' && Number.isInteger(x))) {
    fail(`${label}: tensor ${what} ${JSON.stringify(v)} is not a tuple of integers`);
  }
  return v as number[];
}

/**
 * Reads a torch.save file. Tensors become HostTensor (copied into fresh aligned buffers); dicts and OrderedDicts
 * become Map; lists and tuples become arrays. Only contiguous tensors of f64/f32/f16/bf16/i64/i32 are supported.
 */
export function readTorchFile(file: string): unknown {
  const label = path.basename(file);
  const zip = openZip(file);
  try {
    const prefix = archivePrefix(zip, label);
    const storages = new Map<string, Storage>();
    const reg = new NameRegistry();
    reg.onMissingName = (module: string, name: string) => {
      fail(`${label}: unsupported object ${module}.${name} in data.pkl (only tensors, dicts, lists and numbers are read)`);
    };
    for (const name of [...Object.keys(STORAGE_DTYPES), 'ByteStorage', 'CharStorage', 'ShortStorage', 'BoolStorage']) {
      reg.register('torch', name, storageMarker(name) as unknown as () => void);
    }
    reg.register('collections', 'OrderedDict', () => new Map());
    const rebuild = (storage: Storage, offset: unknown, sizeRaw: unknown, strideRaw: unknown): HostTensor => {
      if (!storage || typeof storage !== 'object' || !('key' in storage)) fail(`${label}: tensor without a storage in data.pkl`);
      const size = toInts(sizeRaw, 'size', label);
      const stride = toInts(strideRaw, 'stride', label);
      if (typeof offset !== 'number') fail(`${label}: tensor storage_offset is not a number`);
      if (!isContiguous(size, stride)) {
        fail(`${label}: tensor in storage ${storage.key} has size ${JSON.stringify(size)} and stride ${JSON.stringify(stride)}: only contiguous tensors are supported`);
      }
      const n = numel(size);
      if (offset + n > storage.numel) {
        fail(`${label}: tensor [${offset}, ${offset + n}) overruns its storage ${storage.key} (${storage.numel} elements)`);
      }
      const es = DTYPE_BYTES[storage.dtype];
      const buf = zip.readRange(`${prefix}data/${storage.key}`, offset * es, n * es);
      return { dtype: storage.dtype, shape: size.slice(), data: typedView(storage.dtype, buf) };
    };
    reg.register('torch._utils', '_rebuild_tensor_v2', rebuild);
    reg.register('torch._utils', '_rebuild_tensor', rebuild);
    // nn.Parameter wraps a tensor: keep the tensor.
    reg.register('torch._utils', '_rebuild_parameter', (data: unknown) => data);
    reg.register('torch._utils', '_rebuild_parameter_with_state', (data: unknown) => data);
    const parser = new Parser({
      nameResolver: reg,
      unpicklingTypeOfDictionary: 'Map',
      persistentResolver: {
        resolve(pid: unknown): Storage {
          const [tag, cls, key, , count] = pid as [unknown, StorageType, unknown, unknown, unknown];
          if (tag !== 'storage' || typeof key !== 'string' || typeof count !== 'number') {
            fail(`${label}: unexpected persistent id ${JSON.stringify(pid)} in data.pkl`);
          }
          if (!cls || !cls.dtype) fail(`${label}: storage ${key} has unsupported type ${cls?.storageName ?? String(cls)}`);
          const entry = zip.entries.get(`${prefix}data/${key}`);
          if (!entry) fail(`${label}: storage ${key} (${prefix}data/${key}) is missing from the archive`);
          if (entry.size < count * DTYPE_BYTES[cls.dtype]) {
            fail(`${label}: storage ${key} has ${entry.size} bytes, ${count} ${cls.dtype} elements need ${count * DTYPE_BYTES[cls.dtype]}`);
          }
          let s = storages.get(key);
          if (!s) storages.set(key, (s = { key, dtype: cls.dtype, numel: count }));
          return s;
        },
      },
    });
    const pkl = zip.read(`${prefix}data.pkl`);
    try {
      return parser.parse(pkl);
    } catch (e) {
      if (e instanceof GravityError) throw e;
      fail(`${label}: cannot parse data.pkl (${(e as Error).message})`);
    }
  } finally {
    zip.close();
  }
}

/** Reads a torch.save file holding a flat dict of tensors (a state dict). */
export function readTorchTensors(file: string): Map<string, HostTensor> {
  const obj = readTorchFile(file);
  const label = path.basename(file);
  if (!(obj instanceof Map)) fail(`${label}: expected a dict of tensors, found ${Array.isArray(obj) ? 'a list' : typeof obj}`);
  const out = new Map<string, HostTensor>();
  for (const [k, v] of obj) {
    if (typeof k !== 'string' || !isHostTensor(v)) fail(`${label}: entry ${JSON.stringify(String(k))} is not a tensor`);
    out.set(k, v);
  }
  return out;
}

export function isHostTensor(v: unknown): v is HostTensor {
  return !!v && typeof v === 'object' && 'dtype' in v && 'shape' in v && 'data' in v && ArrayBuffer.isView((v as HostTensor).data);
}

/** Builds pickle protocol 2 bytes. */
class PickleWriter {
  private parts: number[] = [];
  private enc = new TextEncoder();
  op(...bytes: number[]) {
    for (const b of bytes) this.parts.push(b);
  }
  raw(b: Uint8Array) {
    for (const x of b) this.parts.push(x);
  }
  u32(v: number) {
    this.op(v & 0xff, (v >>> 8) & 0xff, (v >>> 16) & 0xff, (v >>> 24) & 0xff);
  }
  str(s: string) {
    const b = this.enc.encode(s);
    this.op(0x58); // BINUNICODE
    this.u32(b.length);
    this.raw(b);
  }
  global(module: string, name: string) {
    this.op(0x63); // GLOBAL
    this.raw(this.enc.encode(`${module}\n${name}\n`));
  }
  int(v: number) {
    if (!Number.isSafeInteger(v)) throw new Error(`pickle int ${v} is not a safe integer`);
    if (v >= 0 && v < 256) this.op(0x4b, v); // BININT1
    else if (v >= 0 && v < 65536) this.op(0x4d, v & 0xff, v >>> 8); // BININT2
    else if (v >= -(2 ** 31) && v < 2 ** 31) {
      this.op(0x4a); // BININT
      this.u32(v >>> 0);
    } else {
      // LONG1: little-endian two's complement, 8 bytes is plenty for a safe integer.
      let b = BigInt.asUintN(64, BigInt(v));
      this.op(0x8a, 8);
      for (let i = 0; i < 8; i++) {
        this.op(Number(b & 0xffn));
        b >>= 8n;
      }
    }
  }
  tuple(items: number[]) {
    if (items.length === 0) return this.op(0x29); // EMPTY_TUPLE
    if (items.length > 3) this.op(0x28); // MARK
    for (const x of items) this.int(x);
    this.op([0, 0x85, 0x86, 0x87][items.length] ?? 0x74); // TUPLE1/2/3 or TUPLE
  }
  bytes(): Uint8Array {
    return Uint8Array.from(this.parts);
  }
}

function tensorPickle(names: string[], tensors: HostTensor[]): Uint8Array {
  const w = new PickleWriter();
  w.op(0x80, 2); // PROTO 2
  w.global('collections', 'OrderedDict');
  w.op(0x29, 0x52); // EMPTY_TUPLE, REDUCE -> OrderedDict()
  if (names.length) w.op(0x28); // MARK
  names.forEach((name, i) => {
    const t = tensors[i];
    w.str(name);
    w.global('torch._utils', '_rebuild_tensor_v2');
    w.op(0x28); // MARK (args)
    w.op(0x28); // MARK (persistent id)
    w.str('storage');
    w.global('torch', DTYPE_STORAGE[t.dtype]);
    w.str(String(i));
    w.str('cpu');
    w.int(t.data.length);
    w.op(0x74, 0x51); // TUPLE, BINPERSID
    w.int(0); // storage_offset
    w.tuple(t.shape);
    const stride = new Array<number>(t.shape.length);
    let s = 1;
    for (let d = t.shape.length - 1; d >= 0; d--) {
      stride[d] = s;
      s *= t.shape[d];
    }
    w.tuple(stride);
    w.op(0x89); // NEWFALSE (requires_grad)
    w.global('collections', 'OrderedDict');
    w.op(0x29, 0x52); // backward_hooks = OrderedDict()
    w.op(0x74, 0x52); // TUPLE, REDUCE -> tensor
  });
  if (names.length) w.op(0x75); // SETITEMS
  w.op(0x2e); // STOP
  return w.bytes();
}

/**
 * Writes tensors as torch.save would write an OrderedDict state dict: archive/data.pkl, archive/data/<i>,
 * archive/version, archive/byteorder, 64-byte aligned stored entries. Atomic (temp file + rename).
 */
export function writeTorchFile(
  file: string,
  tensors: Record<string, HostTensor> | Map<string, HostTensor>,
  opts: { archiveName?: string } = {},
): void {
  const label = path.basename(file);
  const entries = tensors instanceof Map ? [...tensors.entries()] : Object.entries(tensors);
  for (const [name, t] of entries) checkHostTensor(t, name, label);
  const names = entries.map(([n]) => n);
  const ts = entries.map(([, t]) => t);
  const pre = `${opts.archiveName ?? 'archive'}/`;
  const text = (s: string) => new TextEncoder().encode(s);
  function* items(): Generator<ZipInput> {
    yield { name: `${pre}data.pkl`, data: tensorPickle(names, ts) };
    yield { name: `${pre}.format_version`, data: text('1') };
    yield { name: `${pre}.storage_alignment`, data: text('64') };
    yield { name: `${pre}byteorder`, data: text('little') };
    for (let i = 0; i < ts.length; i++) {
      const d = ts[i].data;
      yield { name: `${pre}data/${i}`, data: new Uint8Array(d.buffer, d.byteOffset, d.byteLength) };
    }
    yield { name: `${pre}version`, data: text('3\n') };
  }
  atomicWrite(file, (tmp) => {
    const fd = fs.openSync(tmp, 'w');
    try {
      writeZipEntries(fd, items(), label);
    } finally {
      fs.closeSync(fd);
    }
  });
}
