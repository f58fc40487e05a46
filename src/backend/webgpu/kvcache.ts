/**
 * The KV cache on the GPU: per layer ONE buffer holding k then v, each [B, Hkv, maxLen, D] f32 (v starts at
 * element `vOff`), so that a kernel needs one binding for both (the fused q/k/v projection already binds 8
 * storage buffers, the WebGPU default limit). No squared key norms: the GPU attention sums |q - k|² directly,
 * which does not cancel in f32 the way |q|² + |k|² - 2 q·k does, and attentionProbs recomputes them from k.
 * The host keyValid mask is uploaded only where it differs from the last upload (see syncMask).
 */
import { GravityError } from '../../errors.js';
import type { KVCache } from '../backend.js';
import { Params, USAGE, type GpuContext } from './context.js';
import { FLAT_WG } from './wgsl.js';

export interface GpuKVLayer {
  /** k [B, Hkv, maxLen, D] at element 0, v at element vOff */
  kv: GPUBuffer;
}

export class GpuKVCache implements KVCache {
  length = 0;
  readonly keyValid: Uint8Array;
  readonly layers: GpuKVLayer[] = [];
  readonly valid: GPUBuffer; // u32 [B, maxLen]
  /** element offset of v in each layer's buffer (= B * Hkv * maxLen * D) */
  readonly vOff: number;
  private uploaded: Uint8Array;

  constructor(
    private ctx: GpuContext,
    readonly numLayers: number, readonly batch: number, readonly maxLen: number,
    readonly numKVHeads: number, readonly headDim: number,
  ) {
    this.keyValid = new Uint8Array(batch * maxLen);
    this.uploaded = new Uint8Array(batch * maxLen);
    const slots = batch * numKVHeads * maxLen;
    const usage = USAGE.STORAGE | USAGE.COPY_SRC | USAGE.COPY_DST;
    this.vOff = slots * headDim;
    ctx.checkSize(2 * slots * headDim * 4, `KV cache layer 2 x [${batch}, ${numKVHeads}, ${maxLen}, ${headDim}] f32`);
    const dev = ctx.device;
    // new buffers are zero-filled by WebGPU, matching the all-invalid mask
    for (let l = 0; l < numLayers; l++) this.layers.push({ kv: dev.createBuffer({ size: Math.max(2 * slots * headDim * 4, 16), usage }) });
    this.valid = dev.createBuffer({ size: Math.max(batch * maxLen * 4, 16), usage });
  }

  /**
   * Uploads what changed in the host mask since the last upload. A few slots (decode: one per sequence and
   * token) go as a scatter dispatch recorded in stream order, so the recording goes on without a submit; many
   * (a prefill) as one write after a flush.
   */
  syncMask(): void {
    const kv = this.keyValid;
    const old = this.uploaded;
    // called once per layer: compare 4 bytes at a time (both arrays are fresh, so 4-aligned)
    const n4 = kv.length >> 2;
    const a = new Uint32Array(kv.buffer, kv.byteOffset, n4);
    const b = new Uint32Array(old.buffer, old.byteOffset, n4);
    const changed: number[] = [];
    for (let i = 0; i < n4 && changed.length <= MAX_SCATTER; i++) {
      if (a[i] === b[i]) continue;
      for (let j = 4 * i; j < 4 * i + 4; j++) if (kv[j] !== old[j]) changed.push(j);
    }
    for (let j = n4 * 4; j < kv.length; j++) if (kv[j] !== old[j]) changed.push(j);
    if (changed.length === 0) return;
    if (changed.length > MAX_SCATTER) this.ctx.writeNow(this.valid, 0, Uint32Array.from(kv));
    else scatterKernel(this.ctx, this.valid, Uint32Array.from(changed.flatMap((j) => [j, kv[j]])));
    old.set(kv);
  }

  destroy(): void {
    this.ctx.flush();
    for (const l of this.layers) l.kv.destroy();
    this.layers.length = 0;
    this.valid.destroy();
  }
}

/** slots beyond which syncMask uploads the whole mask instead of scattering them */
const MAX_SCATTER = 4096;

/** valid[pairs[2i]] = pairs[2i + 1]: a few mask slots, in stream order */
function scatterKernel(ctx: GpuContext, valid: GPUBuffer, pairs: Uint32Array): void {
  const n = pairs.length / 2;
  const pl = ctx.pipeline('mask-scatter', () => `struct P { n: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> pairs: array<u32>;
@group(0) @binding(2) var<storage, read_write> valid: array<u32>;
@compute @workgroup_size(64)
fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  if (gid.x < p.n) { valid[pairs[2u * gid.x]] = pairs[2u * gid.x + 1u]; }
}`);
  ctx.dispatch(pl, new Params().u(n), [{ data: pairs }, valid], [Math.ceil(n / 64)]);
}

/** k, v [B*T, Hkv*D] -> slots [start, start+T): one 64-thread workgroup per (row, kv head). */
export function writeKVKernel(ctx: GpuContext, c: GpuKVCache, layer: number, k: GPUBuffer, v: GPUBuffer, start: number, T: number): void {
  if (layer < 0 || layer >= c.numLayers) throw new GravityError(`writeKV: layer ${layer} outside [0, ${c.numLayers})`);
  if (start < 0 || start + T > c.maxLen) throw new GravityError(`KV cache full: ${start + T} > ${c.maxLen} slots`);
  const L = c.layers[layer];
  const pl = ctx.pipeline('writekv', () => `struct P { T: u32, H: u32, D: u32, maxLen: u32, start: u32, vOff: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read_write> kv: array<f32>;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  ${FLAT_WG}
  let h = wg % p.H;
  let row = wg / p.H;             // b * T + t
  let b = row / p.T;
  let t = row - b * p.T;
  let src = (row * p.H + h) * p.D;
  let slot = (b * p.H + h) * p.maxLen + p.start + t;
  for (var d = lid; d < p.D; d += 64u) {
    kv[slot * p.D + d] = k[src + d];
    kv[p.vOff + slot * p.D + d] = v[src + d];
  }
}`);
  const params = new Params().u(T, c.numKVHeads, c.headDim, c.maxLen, start, c.vOff);
  ctx.dispatch(pl, params, [k, v, L.kv], ctx.grid(c.batch * T * c.numKVHeads));
}
