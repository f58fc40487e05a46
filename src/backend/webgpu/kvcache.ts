/**
 * The KV cache on the GPU: per layer k, v [B, Hkv, maxLen, D] f32 and squared key norms kn [B, Hkv, maxLen]
 * (the cache layout of backend.ts). The GPU attention does not read kn: it sums |q - k|² directly, which
 * does not cancel in f32 the way |q|² + |k|² - 2 q·k does; kn costs one float per slot and keeps the layout
 * the same as the cpu backend's. The host keyValid mask is uploaded only when it differs from the last upload.
 */
import { GravityError } from '../../errors.js';
import type { KVCache } from '../backend.js';
import { Params, USAGE, type GpuContext } from './context.js';
import { FLAT_WG } from './wgsl.js';

export interface GpuKVLayer {
  k: GPUBuffer;
  v: GPUBuffer;
  kn: GPUBuffer;
}

export class GpuKVCache implements KVCache {
  length = 0;
  readonly keyValid: Uint8Array;
  readonly layers: GpuKVLayer[] = [];
  readonly valid: GPUBuffer; // u32 [B, maxLen]
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
    ctx.checkSize(slots * headDim * 4, `KV cache layer [${batch}, ${numKVHeads}, ${maxLen}, ${headDim}] f32`);
    const dev = ctx.device;
    for (let l = 0; l < numLayers; l++) {
      // new buffers are zero-filled by WebGPU, matching the all-invalid mask
      this.layers.push({
        k: dev.createBuffer({ size: slots * headDim * 4, usage }),
        v: dev.createBuffer({ size: slots * headDim * 4, usage }),
        kn: dev.createBuffer({ size: Math.max(slots * 4, 16), usage }),
      });
    }
    this.valid = dev.createBuffer({ size: Math.max(batch * maxLen * 4, 16), usage });
  }

  /** Uploads the mask if the host copy changed since the last upload. */
  syncMask(): void {
    const kv = this.keyValid;
    let same = true;
    for (let i = 0; i < kv.length; i++) if (kv[i] !== this.uploaded[i]) { same = false; break; }
    if (same) return;
    this.ctx.writeNow(this.valid, 0, Uint32Array.from(kv));
    this.uploaded.set(kv);
  }

  destroy(): void {
    this.ctx.flush();
    for (const l of this.layers) l.k.destroy(), l.v.destroy(), l.kn.destroy();
    this.layers.length = 0;
    this.valid.destroy();
  }
}

/** k, v [B*T, Hkv*D] -> slots [start, start+T): one 64-thread workgroup per (row, kv head), |k|² reduced on the way. */
export function writeKVKernel(ctx: GpuContext, c: GpuKVCache, layer: number, k: GPUBuffer, v: GPUBuffer, start: number, T: number): void {
  if (layer < 0 || layer >= c.numLayers) throw new GravityError(`writeKV: layer ${layer} outside [0, ${c.numLayers})`);
  if (start < 0 || start + T > c.maxLen) throw new GravityError(`KV cache full: ${start + T} > ${c.maxLen} slots`);
  const L = c.layers[layer];
  const pl = ctx.pipeline('writekv', () => `struct P { T: u32, H: u32, D: u32, maxLen: u32, start: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> k: array<f32>;
@group(0) @binding(2) var<storage, read> v: array<f32>;
@group(0) @binding(3) var<storage, read_write> kc: array<f32>;
@group(0) @binding(4) var<storage, read_write> vc: array<f32>;
@group(0) @binding(5) var<storage, read_write> kn: array<f32>;
var<workgroup> red: array<f32, 64>;
@compute @workgroup_size(64)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(num_workgroups) nwg: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  ${FLAT_WG}
  let h = wg % p.H;
  let row = wg / p.H;             // b * T + t
  let b = row / p.T;
  let t = row - b * p.T;
  let src = (row * p.H + h) * p.D;
  let slot = (b * p.H + h) * p.maxLen + p.start + t;
  var ss = 0.0;
  for (var d = lid; d < p.D; d += 64u) {
    let kv = k[src + d];
    kc[slot * p.D + d] = kv;
    vc[slot * p.D + d] = v[src + d];
    ss += kv * kv;
  }
  red[lid] = ss;
  workgroupBarrier();
  for (var s = 32u; s > 0u; s >>= 1u) {
    if (lid < s) { red[lid] += red[lid + s]; }
    workgroupBarrier();
  }
  if (lid == 0u) { kn[slot] = red[0]; }
}`);
  const params = new Params().u(T, c.numKVHeads, c.headDim, c.maxLen, start);
  ctx.dispatch(pl, params, [k, v, L.k, L.v, L.kn], ctx.grid(c.batch * T * c.numKVHeads));
}
