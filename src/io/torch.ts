/** torch.save files on disk: read through torch-read.ts (pickleparser), written as pickle protocol 2 of an
 * OrderedDict of tensors that torch.load(weights_only=True) accepts. */
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fail } from '../errors.js';
import { type HostTensor, isHostTensor } from '../tensor/dtype.js';
import { atomicWrite, checkHostTensor } from './safetensors.js';
import { openZip, writeZipEntries, type ZipInput } from './zip.js';
import { DTYPE_STORAGE, readTorchZip } from './torch-read.js';

export { readTorchBytes, readTorchZip } from './torch-read.js';

/** Reads a torch.save file (see readTorchZip). */
export function readTorchFile(file: string): unknown {
  return readTorchZip(openZip(file), path.basename(file));
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

export { isHostTensor };

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
