/**
 * Reading torch.save files (zip with <prefix>/data.pkl + <prefix>/data/<key> storages) with pickleparser, from any
 * ZipReader: a file (torch.ts) or bytes in memory (a fetched gravity_mass_log.pt in a browser).
 */
import { NameRegistry, Parser } from 'pickleparser';
import { fail, GravityError } from '../errors.js';
import { DTYPE_BYTES, numel, type DType, type HostTensor } from '../tensor/dtype.js';
import { typedView } from './safetensors-header.js';
import { zipFromBytes, type ZipReader } from './zip-read.js';

export const STORAGE_DTYPES: Record<string, DType> = {
  FloatStorage: 'F32',
  DoubleStorage: 'F64',
  HalfStorage: 'F16',
  BFloat16Storage: 'BF16',
  LongStorage: 'I64',
  IntStorage: 'I32',
};
export const DTYPE_STORAGE: Record<DType, string> = Object.fromEntries(
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
 * Reads a torch.save archive. Tensors become HostTensor (copied into fresh aligned buffers); dicts and OrderedDicts
 * become Map; lists and tuples become arrays. Only contiguous tensors of f64/f32/f16/bf16/i64/i32 are supported.
 * Closes the archive.
 */
export function readTorchZip(zip: ZipReader, label: string): unknown {
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

/** A torch.save file held in memory. */
export function readTorchBytes(bytes: Uint8Array, label: string): unknown {
  return readTorchZip(zipFromBytes(bytes, label), label);
}
