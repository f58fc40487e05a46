/**
 * GGUF writer (version 3, little-endian, 32-byte alignment), hand-written because no package writes whole files:
 * header, metadata, tensor infos, then each tensor's bytes, streamed tensor by tensor into a temporary file that is
 * renamed over the target only when complete.
 */
import * as fs from 'node:fs';
import { fail } from '../errors.js';
import { numel } from '../tensor/dtype.js';
import { BLOCK } from './gguf-quants.js';
import { atomicWrite, writeFully } from './safetensors.js';

export const GGUF_ALIGN = 32;

/** a metadata value with its GGUF type */
export type GgufValue =
  | { t: 'str'; v: string }
  | { t: 'u32' | 'i32' | 'f32'; v: number }
  | { t: 'bool'; v: boolean }
  | { t: 'str[]'; v: string[] }
  | { t: 'i32[]' | 'f32[]'; v: number[] };

export interface GgufTensorOut {
  name: string;
  /** PyTorch order ([out, in]); written reversed, as GGUF lists the innermost dimension first */
  shape: number[];
  /** GGML type id */
  type: number;
  /** the tensor's bytes, produced when it is written */
  data: () => Uint8Array;
}

const VT = { u32: 4, i32: 5, f32: 6, bool: 7, str: 8, arr: 9, u64: 10 } as const;

class Buf {
  private chunks: Uint8Array[] = [];
  size = 0;
  private push(b: Uint8Array) {
    this.chunks.push(b);
    this.size += b.length;
  }
  u32(v: number) { const b = new Uint8Array(4); new DataView(b.buffer).setUint32(0, v, true); this.push(b); }
  i32(v: number) { const b = new Uint8Array(4); new DataView(b.buffer).setInt32(0, v, true); this.push(b); }
  f32(v: number) { const b = new Uint8Array(4); new DataView(b.buffer).setFloat32(0, v, true); this.push(b); }
  u64(v: number) { const b = new Uint8Array(8); new DataView(b.buffer).setBigUint64(0, BigInt(v), true); this.push(b); }
  u8(v: number) { this.push(Uint8Array.of(v)); }
  str(s: string) { const b = new TextEncoder().encode(s); this.u64(b.length); this.push(b); }
  bytes(): Uint8Array {
    const out = new Uint8Array(this.size);
    let o = 0;
    for (const c of this.chunks) { out.set(c, o); o += c.length; }
    return out;
  }
}

function value(b: Buf, x: GgufValue): void {
  switch (x.t) {
    case 'str': b.u32(VT.str); b.str(x.v); return;
    case 'u32': b.u32(VT.u32); b.u32(x.v); return;
    case 'i32': b.u32(VT.i32); b.i32(x.v); return;
    case 'f32': b.u32(VT.f32); b.f32(x.v); return;
    case 'bool': b.u32(VT.bool); b.u8(x.v ? 1 : 0); return;
    case 'str[]': b.u32(VT.arr); b.u32(VT.str); b.u64(x.v.length); for (const s of x.v) b.str(s); return;
    case 'i32[]': b.u32(VT.arr); b.u32(VT.i32); b.u64(x.v.length); for (const v of x.v) b.i32(v); return;
    case 'f32[]': b.u32(VT.arr); b.u32(VT.f32); b.u64(x.v.length); for (const v of x.v) b.f32(v); return;
  }
}

/** bytes of a tensor of `shape` in GGML type `type` (its innermost dimension must hold whole blocks) */
export function tensorBytes(name: string, shape: number[], type: number): number {
  const blk = BLOCK[type];
  if (!blk) fail(`GGUF: ${name}: GGML type ${type} cannot be written`);
  const inner = shape[shape.length - 1];
  if (inner % blk.n !== 0) fail(`GGUF: ${name}: rows of ${inner} values are not whole ${blk.name} blocks of ${blk.n}`);
  return (numel(shape) / blk.n) * blk.bytes;
}

/** Writes `file` atomically. Every tensor's size is checked against its type before anything is written. */
export function writeGguf(file: string, meta: Map<string, GgufValue>, tensors: GgufTensorOut[]): void {
  const head = new Buf();
  head.u32(0x46554747); // "GGUF"
  head.u32(3);
  head.u64(tensors.length);
  head.u64(meta.size);
  for (const [k, v] of meta) {
    head.str(k);
    value(head, v);
  }
  const pad = (n: number) => (GGUF_ALIGN - (n % GGUF_ALIGN)) % GGUF_ALIGN;
  let offset = 0;
  const sizes: number[] = [];
  for (const t of tensors) {
    const size = tensorBytes(t.name, t.shape, t.type);
    sizes.push(size);
    head.str(t.name);
    head.u32(t.shape.length);
    for (let i = t.shape.length - 1; i >= 0; i--) head.u64(t.shape[i]);
    head.u32(t.type);
    head.u64(offset);
    offset += size + pad(size);
  }
  const header = head.bytes();
  atomicWrite(file, (tmp) => {
    const fd = fs.openSync(tmp, 'w');
    try {
      writeFully(fd, header);
      writeFully(fd, new Uint8Array(pad(header.length)));
      tensors.forEach((t, i) => {
        const data = t.data();
        if (data.length !== sizes[i]) fail(`GGUF: ${t.name}: ${data.length} bytes of data, its shape and type need ${sizes[i]}`);
        writeFully(fd, data);
        writeFully(fd, new Uint8Array(pad(data.length)));
      });
    } finally {
      fs.closeSync(fd);
    }
  });
}
