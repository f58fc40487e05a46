/**
 * WGSL snippets shared by the kernels: typed loads of weights in their stored width. F16 and BF16 are packed
 * two per u32 (element 2k in the low half, as the little-endian host bytes lie) and widened in the shader with
 * core builtins only: the NVIDIA driver exposes no `shader-f16`.
 */
import type { DType } from '../../tensor/dtype.js';

export type WDType = 'F32' | 'F16' | 'BF16';

/** `var<storage, read> NAME` plus `fn ld_NAME(i: u32) -> f32` reading element i. */
export function scalarLoad(name: string, binding: number, dt: WDType): string {
  if (dt === 'F32') {
    return `@group(0) @binding(${binding}) var<storage, read> ${name}: array<f32>;
fn ld_${name}(i: u32) -> f32 { return ${name}[i]; }\n`;
  }
  const widen =
    dt === 'F16'
      ? `unpack2x16float(w >> ((i & 1u) * 16u)).x`
      : `bitcast<f32>(select(w << 16u, w & 0xffff0000u, (i & 1u) == 1u))`;
  return `@group(0) @binding(${binding}) var<storage, read> ${name}: array<u32>;
fn ld_${name}(i: u32) -> f32 { let w = ${name}[i >> 1u]; return ${widen}; }\n`;
}

/** Elements per vector load: 4 f32 (one vec4<f32>) or 8 halves (one vec4<u32>). */
export function vecWidth(dt: WDType): number {
  return dt === 'F32' ? 4 : 8;
}

/**
 * Vector loads for the GEMV. F32: the binding is array<vec4<f32>> (4 elements per load). F16/BF16: array<vec4<u32>>
 * (8 halves per load), widened by `lo_NAME(p)` / `hi_NAME(p)` into the first / last four as vec4<f32>.
 */
export function vectorLoad(name: string, binding: number, dt: WDType): string {
  if (dt === 'F32') {
    return `@group(0) @binding(${binding}) var<storage, read> ${name}: array<vec4<f32>>;\n`;
  }
  const pair =
    dt === 'F16'
      ? (w: string) => `unpack2x16float(${w})`
      : (w: string) => `vec2<f32>(bitcast<f32>(${w} << 16u), bitcast<f32>(${w} & 0xffff0000u))`;
  return `@group(0) @binding(${binding}) var<storage, read> ${name}: array<vec4<u32>>;
fn lo_${name}(p: vec4<u32>) -> vec4<f32> { return vec4<f32>(${pair('p.x')}, ${pair('p.y')}); }
fn hi_${name}(p: vec4<u32>) -> vec4<f32> { return vec4<f32>(${pair('p.z')}, ${pair('p.w')}); }\n`;
}

export function asWeightType(dt: DType, what: string): WDType {
  if (dt === 'F32' || dt === 'F16' || dt === 'BF16') return dt;
  throw new Error(`WebGPU: ${what} has dtype ${dt}; expected F32, F16 or BF16`);
}

/** Flat workgroup index for a 2-D grid made by GpuContext.grid. */
export const FLAT_WG = `let wg = wid.y * nwg.x + wid.x;`;
