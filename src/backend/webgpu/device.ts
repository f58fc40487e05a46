/**
 * Finding a WebGPU adapter and creating the device: navigator.gpu in a browser, the `webgpu` npm package
 * (Dawn) in Node. The device is created with the adapter's largest limits, because the defaults (128 MiB
 * storage bindings, 16 KiB workgroup memory) are far below what model weights and attention tiles need.
 */
import { GravityError } from '../../errors.js';

/**
 * Dawn's GPU object. It must stay reachable for the life of the process: if it is garbage-collected while a
 * device is alive, Dawn crashes (SIGSEGV, futex errors or hangs).
 */
let nodeGpu: GPU | null = null;

/** Dawn options for experiments, e.g. GRAVITY_DAWN_FLAGS='enable-dawn-features=allow_unsafe_apis,disable_robustness' */
function dawnFlags(unsafe: boolean): string[] {
  const f = process.env.GRAVITY_DAWN_FLAGS;
  const flags = f ? f.split(/\s+/).filter((s) => s) : [];
  // the int8 subgroup matrices (tensor cores) are behind Dawn's allow_unsafe_apis
  if (unsafe && !flags.some((s) => s.includes('allow_unsafe_apis'))) flags.push('enable-dawn-features=allow_unsafe_apis');
  return flags;
}

/** `unsafe`: ask Dawn for allow_unsafe_apis (only effective when this is the process's first Dawn instance) */
async function getGpu(unsafe = false): Promise<GPU | null> {
  const nav = (globalThis as { navigator?: { gpu?: GPU } }).navigator;
  if (nav?.gpu) return nav.gpu;
  if (typeof process === 'undefined' || !process.versions?.node) return null;
  if (!nodeGpu) {
    const mod = await import('webgpu');
    // the GPUBufferUsage-style constants etc., without overwriting anything the host already defines
    const g = globalThis as Record<string, unknown>;
    for (const [k, v] of Object.entries(mod.globals as Record<string, unknown>)) if (!(k in g)) g[k] = v;
    nodeGpu = mod.create(dawnFlags(unsafe));
  }
  return nodeGpu;
}

async function getAdapter(powerPreference: GPUPowerPreference = 'high-performance', unsafe = false): Promise<GPUAdapter | null> {
  const gpu = await getGpu(unsafe);
  if (!gpu) return null;
  return gpu.requestAdapter({ powerPreference });
}

/** true iff a WebGPU adapter can be found (for `--device auto`); never throws. */
export async function webgpuAvailable(): Promise<boolean> {
  try {
    return (await getAdapter()) !== null;
  } catch {
    return false;
  }
}

const WANTED_LIMITS = [
  'maxStorageBufferBindingSize',
  'maxBufferSize',
  'maxComputeWorkgroupStorageSize',
  'maxComputeInvocationsPerWorkgroup',
  'maxComputeWorkgroupSizeX',
  'maxComputeWorkgroupSizeY',
  'maxComputeWorkgroupsPerDimension',
  'maxStorageBuffersPerShaderStage',
] as const;

export interface DeviceInfo {
  device: GPUDevice;
  adapterName: string;
  features: string[];
  /** timestamp-query was enabled (asked for and available) */
  timestamps: boolean;
  /** lanes the GEMV reductions combine with subgroup shuffles (GpuContext.sg); 0 without the `subgroups` feature */
  subgroupLanes: number;
  /** `chromium-experimental-subgroup-matrix` was enabled (asked for by subgroupMatrix and offered with i8 16x16x32) */
  subgroupMatrix: boolean;
}

/**
 * min(smallest subgroup size, 32) when `subgroups` can be used for the GEMV reductions, else 0. Off with
 * subgroups: false or GRAVITY_WEBGPU_SUBGROUPS=0 (the workgroup-memory fallback).
 */
function subgroupLanes(adapter: GPUAdapter, want: boolean | undefined): number {
  const env = typeof process !== 'undefined' ? process.env?.GRAVITY_WEBGPU_SUBGROUPS : undefined;
  if (want === false || (want === undefined && env === '0')) return 0;
  if (!adapter.features.has('subgroups')) return 0;
  const min = (adapter.info as unknown as { subgroupMinSize?: number })?.subgroupMinSize ?? 0;
  const lanes = Math.min(32, min);
  // a power of two of at least 4: the butterfly pairs lanes within aligned runs of that size
  return lanes >= 4 && (lanes & (lanes - 1)) === 0 ? lanes : 0;
}

export async function createDevice(opts: { timestamps?: boolean; powerPreference?: GPUPowerPreference; subgroups?: boolean; subgroupMatrix?: boolean } = {}): Promise<DeviceInfo> {
  let adapter: GPUAdapter | null;
  try {
    adapter = await getAdapter(opts.powerPreference, !!opts.subgroupMatrix);
  } catch (e) {
    throw new GravityError(`WebGPU: no adapter found (install a Vulkan driver, or use --device cpu): ${(e as Error).message}`);
  }
  if (!adapter) {
    // in a browser the fix is the browser's, not a driver install
    const browser = typeof process === 'undefined' || !process.versions?.node;
    throw new GravityError(browser ? "WebGPU: this browser offers no WebGPU adapter (not supported or turned off): use device 'cpu'" : 'WebGPU: no adapter found (install a Vulkan driver, or use --device cpu)');
  }
  const requiredLimits: Record<string, number> = {};
  const al = adapter.limits as unknown as Record<string, number>;
  for (const k of WANTED_LIMITS) if (typeof al[k] === 'number') requiredLimits[k] = al[k];
  const timestamps = !!opts.timestamps && adapter.features.has('timestamp-query');
  // no shader-f16 on purpose: the NVIDIA driver lacks it, so 16-bit weights are unpacked from u32 everywhere
  const sg = subgroupLanes(adapter, opts.subgroups);
  const requiredFeatures: GPUFeatureName[] = [];
  if (timestamps) requiredFeatures.push('timestamp-query');
  if (sg) requiredFeatures.push('subgroups' as GPUFeatureName);
  // int8 tensor cores for the Q8 linears (linear-q8.ts); the adapter offers it only with allow_unsafe_apis
  const cfgs = ((adapter.info as unknown as { subgroupMatrixConfigs?: { componentType: string; M: number; N: number; K: number }[] }).subgroupMatrixConfigs ?? []);
  const sm = !!opts.subgroupMatrix && adapter.features.has('chromium-experimental-subgroup-matrix' as GPUFeatureName) && adapter.features.has('subgroups')
    && cfgs.some((c) => String(c.componentType) === 'i8' && Number(c.M) === 16 && Number(c.N) === 16 && Number(c.K) === 32);
  if (sm) requiredFeatures.push(...(['chromium-experimental-subgroup-matrix', ...(sg ? [] : ['subgroups'])] as GPUFeatureName[]));
  const device = await adapter.requestDevice({ requiredLimits, requiredFeatures });
  const info = adapter.info;
  const adapterName = [info?.vendor, info?.architecture, info?.device, info?.description].filter((s) => s).join(' ') || 'unknown';
  return { device, adapterName, features: [...adapter.features], timestamps, subgroupLanes: sg, subgroupMatrix: sm };
}
