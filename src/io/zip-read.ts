/**
 * Reading the zip subset torch.save uses (stored entries, found through the central directory, zip64 aware) from
 * any byte source: a file's positioned reads (zip.ts) or bytes in memory (a fetched file in a browser).
 */
import { fail } from '../errors.js';

export interface ZipEntry {
  name: string;
  /** absolute offset of the entry's data */
  dataStart: number;
  size: number;
  crc32: number;
}

export interface ZipReader {
  readonly path: string;
  readonly entries: Map<string, ZipEntry>;
  read(name: string): Uint8Array;
  /** reads `length` bytes of an entry starting `offset` bytes into it, into a fresh aligned buffer */
  readRange(name: string, offset: number, length: number): ArrayBuffer;
  close(): void;
}

export const SIG_LOCAL = 0x04034b50;
export const SIG_CENTRAL = 0x02014b50;
export const SIG_EOCD = 0x06054b50;
export const SIG_EOCD64 = 0x06064b50;
export const SIG_EOCD64_LOC = 0x07064b50;

let CRC_TABLE: Uint32Array | null = null;
export function crc32(data: Uint8Array, crc = 0): number {
  if (!CRC_TABLE) {
    CRC_TABLE = new Uint32Array(256);
    for (let n = 0; n < 256; n++) {
      let c = n;
      for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
      CRC_TABLE[n] = c >>> 0;
    }
  }
  const t = CRC_TABLE;
  let c = ~crc >>> 0;
  for (let i = 0; i < data.length; i++) c = t[(c ^ data[i]) & 0xff] ^ (c >>> 8);
  return ~c >>> 0;
}

function u64(dv: DataView, off: number): number {
  return Number(dv.getBigUint64(off, true));
}

/** Random access to a file's bytes: `read` fills dst from position pos (failing, naming the file, if short). */
export interface ByteSource {
  readonly size: number;
  read(dst: Uint8Array, pos: number): void;
  close(): void;
}

export function readZipDirectory(src: ByteSource, file: string, label: string): ZipReader {
  const size = src.size;
  const notZip = (why: string): never => fail(`${label}: not a torch.save zip file (${why})`);
  if (size < 22) notZip(`${size} bytes is too short`);
  // The end record sits in the last 22 + up to 65535 (comment) bytes.
  const tailLen = Math.min(size, 22 + 65535 + 20);
  const tail = new Uint8Array(tailLen);
  src.read(tail, size - tailLen);
  const tv = new DataView(tail.buffer);
  let eocd = -1;
  for (let i = tailLen - 22; i >= 0; i--) {
    if (tv.getUint32(i, true) === SIG_EOCD) {
      eocd = i;
      break;
    }
  }
  if (eocd < 0) notZip('no end-of-central-directory record');
  let count = tv.getUint16(eocd + 10, true);
  let cdSize = tv.getUint32(eocd + 12, true);
  let cdOff = tv.getUint32(eocd + 16, true);
  if (count === 0xffff || cdSize === 0xffffffff || cdOff === 0xffffffff) {
    // zip64: the locator sits right before the classic end record.
    const loc = eocd - 20;
    if (loc < 0 || tv.getUint32(loc, true) !== SIG_EOCD64_LOC) notZip('zip64 locator missing');
    const e64Off = u64(tv, loc + 8);
    const e64 = new Uint8Array(56);
    if (e64Off + 56 > size) notZip('zip64 end record overruns the file');
    src.read(e64, e64Off);
    const ev = new DataView(e64.buffer);
    if (ev.getUint32(0, true) !== SIG_EOCD64) notZip('bad zip64 end record');
    count = u64(ev, 32);
    cdSize = u64(ev, 40);
    cdOff = u64(ev, 48);
  }
  if (cdOff + cdSize > size) notZip('central directory overruns the file');
  const cd = new Uint8Array(cdSize);
  src.read(cd, cdOff);
  const cv = new DataView(cd.buffer);
  const entries = new Map<string, ZipEntry>();
  const dec = new TextDecoder();
  let p = 0;
  const local = new Uint8Array(30);
  const lv = new DataView(local.buffer);
  for (let i = 0; i < count; i++) {
    if (p + 46 > cdSize || cv.getUint32(p, true) !== SIG_CENTRAL) notZip(`central directory entry ${i} is corrupt`);
    const method = cv.getUint16(p + 10, true);
    const crc = cv.getUint32(p + 16, true);
    let csize = cv.getUint32(p + 20, true);
    let usize = cv.getUint32(p + 24, true);
    const nameLen = cv.getUint16(p + 28, true);
    const extraLen = cv.getUint16(p + 30, true);
    const commentLen = cv.getUint16(p + 32, true);
    let localOff = cv.getUint32(p + 42, true);
    const name = dec.decode(cd.subarray(p + 46, p + 46 + nameLen));
    // zip64 extra field: only the fields whose classic value is all ones are present, in this order.
    let e = p + 46 + nameLen;
    const eEnd = e + extraLen;
    while (e + 4 <= eEnd) {
      const id = cv.getUint16(e, true);
      const len = cv.getUint16(e + 2, true);
      if (id === 0x0001) {
        let q = e + 4;
        if (usize === 0xffffffff) (usize = u64(cv, q)), (q += 8);
        if (csize === 0xffffffff) (csize = u64(cv, q)), (q += 8);
        if (localOff === 0xffffffff) localOff = u64(cv, q);
      }
      e += 4 + len;
    }
    p = eEnd + commentLen;
    if (method !== 0) fail(`${label}: entry "${name}" is compressed (method ${method}); only stored entries (what torch.save writes) are supported`);
    if (csize !== usize) notZip(`entry "${name}" sizes disagree`);
    if (localOff + 30 > size) notZip(`entry "${name}" local header overruns the file`);
    src.read(local, localOff);
    if (lv.getUint32(0, true) !== SIG_LOCAL) notZip(`entry "${name}" has a bad local header`);
    const dataStart = localOff + 30 + lv.getUint16(26, true) + lv.getUint16(28, true);
    if (dataStart + usize > size) fail(`${label}: entry "${name}" data overruns the file (${size} bytes)`);
    entries.set(name, { name, dataStart, size: usize, crc32: crc });
  }
  let closed = false;
  const get = (name: string): ZipEntry => {
    if (closed) fail(`${label}: read of "${name}" after close`);
    const en = entries.get(name);
    if (!en) fail(`${label}: has no entry "${name}"`);
    return en;
  };
  return {
    path: file,
    entries,
    read(name) {
      const en = get(name);
      const out = new Uint8Array(en.size);
      src.read(out, en.dataStart);
      if (crc32(out) !== en.crc32) fail(`${label}: entry "${name}" fails its CRC check (corrupt file)`);
      return out;
    },
    readRange(name, offset, length) {
      const en = get(name);
      if (offset < 0 || offset + length > en.size) fail(`${label}: bytes [${offset}, ${offset + length}) are outside entry "${name}" (${en.size} bytes)`);
      const buf = new ArrayBuffer(length);
      src.read(new Uint8Array(buf), en.dataStart + offset);
      return buf;
    },
    close() {
      if (!closed) src.close();
      closed = true;
    },
  };
}

/** A zip archive held in memory. */
export function zipFromBytes(bytes: Uint8Array, label: string): ZipReader {
  return readZipDirectory({
    size: bytes.length,
    read(dst, pos) {
      if (pos + dst.length > bytes.length) fail(`${label}: read past the end of the file`);
      dst.set(bytes.subarray(pos, pos + dst.length));
    },
    close() {},
  }, label, label);
}
