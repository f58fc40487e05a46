/**
 * A backend by device name, for the Node loader (model/load.ts) and the browser loader (web/load.ts): nothing here
 * imports a Node module, and the WebGPU backend loads only when asked for.
 */
import type { Backend } from './backend.js';
import { createCpuBackend } from './cpu/index.js';
import { fail } from '../errors.js';

export type DeviceName = 'cpu' | 'webgpu' | 'auto';

/**
 * `int8Prefill`: on WebGPU, prefill linears in int8 (per-row int8 weights x int8 activations, i32 sums; tensor
 * cores where the adapter has i8 subgroup matrices, else DP4A). Faster prefill, not exact (~1e-2 relative logits).
 */
export async function createBackend(device: DeviceName = 'cpu', opts: { int8Prefill?: boolean } = {}): Promise<Backend> {
  if (opts.int8Prefill && device === 'cpu') fail('--int8-prefill is a WebGPU option: add --device webgpu (or auto)');
  if (device === 'cpu') return createCpuBackend();
  const wg = await import('./webgpu/index.js');
  const wopts = opts.int8Prefill ? { q8: 'auto' as const } : {};
  if (device === 'webgpu') return wg.createWebGPUBackend(wopts);
  if (device === 'auto') return (await wg.webgpuAvailable()) ? wg.createWebGPUBackend(wopts) : createCpuBackend();
  return fail(`unknown device '${device}' (cpu, webgpu, auto)`);
}

