/** The zip subset torch.save uses: reading through zip-read.ts over positioned file reads; writing 64-byte aligned
 * stored entries like PyTorch does. */
import * as fs from 'node:fs';
import { fail } from '../errors.js';
import { openWith, readFully, writeFully } from './safetensors.js';
import { SIG_CENTRAL, SIG_EOCD, SIG_LOCAL, crc32, readZipDirectory, type ZipReader } from './zip-read.js';

export { crc32, zipFromBytes, type ZipEntry, type ZipReader } from './zip-read.js';

export function openZip(file: string): ZipReader {
  return openWith(file, (fd, f, label) => readZipDirectory({
    size: fs.fstatSync(fd).size,
    read: (dst, pos) => readFully(fd, dst, pos, label),
    close: () => fs.closeSync(fd),
  }, f, label));
}

export interface ZipInput {
  name: string;
  data: Uint8Array;
}

const ALIGN = 64;

/**
 * Writes stored entries to an open fd with each entry's data 64-byte aligned (padding goes in a local extra field
 * tagged "FB", as PyTorch's writer does, so torch can mmap the storages). Classic zip only: fails past 4 GiB.
 */
export function writeZipEntries(fd: number, entries: Iterable<ZipInput>, label: string): void {
  const enc = new TextEncoder();
  const central: Uint8Array[] = [];
  let pos = 0;
  let count = 0;
  for (const { name, data } of entries) {
    const nameBytes = enc.encode(name);
    const base = pos + 30 + nameBytes.length;
    // The extra field needs at least its 4-byte tag; pad to the next 64-byte boundary after that.
    let extraLen = (ALIGN - ((base + 4) % ALIGN)) % ALIGN + 4;
    const crc = crc32(data);
    if (pos + 30 + nameBytes.length + extraLen + data.length > 0xfffffffe) {
      fail(`${label}: more than 4 GiB; zip64 output is not supported`);
    }
    const lh = new Uint8Array(30 + nameBytes.length + extraLen);
    const lv = new DataView(lh.buffer);
    lv.setUint32(0, SIG_LOCAL, true);
    lv.setUint16(4, 20, true); // version needed
    lv.setUint16(6, 0x0800, true); // utf-8 names
    lv.setUint16(8, 0, true); // stored
    lv.setUint16(10, 0, true);
    lv.setUint16(12, 0x21, true); // 1980-01-01
    lv.setUint32(14, crc, true);
    lv.setUint32(18, data.length, true);
    lv.setUint32(22, data.length, true);
    lv.setUint16(26, nameBytes.length, true);
    lv.setUint16(28, extraLen, true);
    lh.set(nameBytes, 30);
    const ex = 30 + nameBytes.length;
    lv.setUint16(ex, 0x4246, true); // "FB"
    lv.setUint16(ex + 2, extraLen - 4, true);
    lh.fill(0x5a, ex + 4); // "Z"
    writeFully(fd, lh);
    writeFully(fd, data);
    const ch = new Uint8Array(46 + nameBytes.length);
    const cv = new DataView(ch.buffer);
    cv.setUint32(0, SIG_CENTRAL, true);
    cv.setUint16(4, 20, true); // made by
    cv.setUint16(6, 20, true); // needed
    cv.setUint16(8, 0x0800, true);
    cv.setUint16(10, 0, true);
    cv.setUint16(12, 0, true);
    cv.setUint16(14, 0x21, true);
    cv.setUint32(16, crc, true);
    cv.setUint32(20, data.length, true);
    cv.setUint32(24, data.length, true);
    cv.setUint16(28, nameBytes.length, true);
    cv.setUint32(42, pos, true);
    ch.set(nameBytes, 46);
    central.push(ch);
    pos += lh.length + data.length;
    count++;
  }
  if (count > 0xfffe) fail(`${label}: too many zip entries (${count})`);
  const cdOff = pos;
  let cdSize = 0;
  for (const ch of central) {
    writeFully(fd, ch);
    cdSize += ch.length;
  }
  const end = new Uint8Array(22);
  const ev = new DataView(end.buffer);
  ev.setUint32(0, SIG_EOCD, true);
  ev.setUint16(8, count, true);
  ev.setUint16(10, count, true);
  ev.setUint32(12, cdSize, true);
  ev.setUint32(16, cdOff, true);
  writeFully(fd, end);
}
