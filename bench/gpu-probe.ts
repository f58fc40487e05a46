/**
 * How far can WebGPU reach the tensor cores here? (issue 3's question)
 *   GRAVITY_DAWN_FLAGS='enable-dawn-features=allow_unsafe_apis' node dist/bench/gpu-probe.js
 * Prints the adapter's features and subgroup-matrix configurations, tries to compile a subgroup-matrix
 * multiply for each element type (f16, f32, i8, u8), and times a naive int8 subgroup-matrix GEMM (each subgroup
 * one M×N output tile straight from global memory) against an f32 FMA loop of the same shape.
 */
const flags = (process.env.GRAVITY_DAWN_FLAGS ?? '').split(/\s+/).filter(Boolean);
const mod = await import('webgpu');
const g = globalThis as Record<string, unknown>;
for (const [k, v] of Object.entries(mod.globals as Record<string, unknown>)) if (!(k in g)) g[k] = v;
const gpu = mod.create(flags);
const adapter = await gpu.requestAdapter({ powerPreference: 'high-performance' });
if (!adapter) {
  console.log('no adapter');
  process.exit(1);
}
const info = adapter.info as unknown as Record<string, unknown>;
console.log('flags:', flags.join(' ') || '(none)');
console.log('adapter:', info.vendor, info.architecture, info.device, info.description);
console.log('features:', [...adapter.features].sort().join(', '));
const cfgs = (info.subgroupMatrixConfigs ?? []) as Array<Record<string, unknown>>;
console.log('subgroupMatrixConfigs:', JSON.stringify(cfgs));
const feats = [...adapter.features].filter((f) => ['shader-f16', 'subgroups', 'chromium-experimental-subgroup-matrix', 'timestamp-query'].includes(f)) as GPUFeatureName[];
const device = await adapter.requestDevice({ requiredFeatures: feats, requiredLimits: { maxStorageBufferBindingSize: adapter.limits.maxStorageBufferBindingSize, maxBufferSize: adapter.limits.maxBufferSize } });
if (!adapter.features.has('chromium-experimental-subgroup-matrix' as GPUFeatureName)) {
  console.log('no subgroup-matrix feature: tensor cores are not reachable through this adapter/flags');
  process.exit(0);
}

async function compiles(code: string): Promise<string> {
  device.pushErrorScope('validation');
  const m = device.createShaderModule({ code });
  const ci = await m.getCompilationInfo();
  const err = await device.popErrorScope();
  const msgs = ci.messages.filter((x) => x.type === 'error').map((x) => x.message);
  return err ? err.message.split('\n')[0] : msgs.length ? msgs[0] : 'ok';
}
const typeOf: Record<string, [string, string, string]> = {
  // component, result, storage element
  f16: ['f16', 'f16', 'f16'],
  f32: ['f32', 'f32', 'f32'],
  i8: ['i8', 'i32', 'i32'],
  u8: ['u8', 'u32', 'u32'],
};
const shapes = cfgs.length ? cfgs.map((c) => [Number(c.M), Number(c.N), Number(c.K)]) : [[8, 8, 8], [16, 16, 16], [16, 16, 32], [16, 8, 32]];
for (const [t, [ct, rt, st]] of Object.entries(typeOf)) {
  for (const [M, N, K] of shapes) {
    const code = `enable chromium_experimental_subgroup_matrix;${t === 'f16' ? '\nenable f16;' : ''}
@group(0) @binding(0) var<storage, read> a: array<${st}>;
@group(0) @binding(1) var<storage, read_write> c: array<${rt === 'f16' ? 'f16' : rt}>;
@compute @workgroup_size(32) fn main() {
  let l = subgroupMatrixLoad<subgroup_matrix_left<${ct}, ${K}, ${M}>>(&a, 0, false, ${K});
  let r = subgroupMatrixLoad<subgroup_matrix_right<${ct}, ${N}, ${K}>>(&a, 0, false, ${N});
  var acc = subgroup_matrix_result<${rt}, ${N}, ${M}>();
  acc = subgroupMatrixMultiplyAccumulate(l, r, acc);
  subgroupMatrixStore(&c, 0, acc, false, ${N});
}`;
    console.log(`compile ${t} ${M}x${N}x${K}: ${await compiles(code)}`);
  }
}

// naive int8 GEMM via subgroup matrices (A [n x k] row-major int8 packed in i32, B [k x n]), vs f32 FMA
const cfgList = cfgs.map((c) => ({ componentType: String(c.componentType), resultComponentType: String(c.resultComponentType), M: Number(c.M), N: Number(c.N), K: Number(c.K) }));
console.log('subgroupMatrixConfigs (fields):', JSON.stringify(cfgList));
const int8cfg = cfgList.find((c) => c.componentType.includes('i8')) ?? cfgList.find((c) => c.componentType.includes('u8')) ?? { componentType: 'i8', M: 16, N: 16, K: 32 };
const n = 4096;
async function time(code: string, bindSizes: number[], groups: [number, number]): Promise<number> {
  const m = device.createShaderModule({ code });
  const ci = await m.getCompilationInfo();
  const errs = ci.messages.filter((x) => x.type === 'error');
  if (errs.length) throw new Error(errs[0].message);
  const p = device.createComputePipeline({ layout: 'auto', compute: { module: m, entryPoint: 'main' } });
  const bufs = bindSizes.map((s) => device.createBuffer({ size: s, usage: GPUBufferUsage.STORAGE }));
  const bg = device.createBindGroup({ layout: p.getBindGroupLayout(0), entries: bufs.map((b, i) => ({ binding: i, resource: { buffer: b } })) });
  const run = async (reps: number) => {
    const e = device.createCommandEncoder();
    for (let r = 0; r < reps; r++) {
      const pass = e.beginComputePass();
      pass.setPipeline(p);
      pass.setBindGroup(0, bg);
      pass.dispatchWorkgroups(groups[0], groups[1]);
      pass.end();
    }
    device.queue.submit([e.finish()]);
    await device.queue.onSubmittedWorkDone();
  };
  await run(1);
  const t = performance.now();
  await run(5);
  bufs.forEach((b) => b.destroy());
  return (performance.now() - t) / 5;
}
if (int8cfg) {
  const [M, N, K] = [Number(int8cfg.M), Number(int8cfg.N), Number(int8cfg.K)];
  const ct = String(int8cfg.componentType).includes('u8') ? 'u8' : 'i8';
  const rt = ct === 'u8' ? 'u32' : 'i32';
  const code = `enable chromium_experimental_subgroup_matrix;
@group(0) @binding(0) var<storage, read> a: array<${rt}>;
@group(0) @binding(1) var<storage, read> b: array<${rt}>;
@group(0) @binding(2) var<storage, read_write> c: array<${rt}>;
@compute @workgroup_size(32) fn main(@builtin(workgroup_id) wg: vec3<u32>) {
  let row = wg.y * ${M}u;
  let col = wg.x * ${N}u;
  var acc = subgroup_matrix_result<${rt}, ${N}, ${M}>();
  for (var k = 0u; k < ${n}u; k += ${K}u) {
    let l = subgroupMatrixLoad<subgroup_matrix_left<${ct}, ${K}, ${M}>>(&a, row * ${n}u + k, false, ${n}u);
    let r = subgroupMatrixLoad<subgroup_matrix_right<${ct}, ${N}, ${K}>>(&b, k * ${n}u + col, false, ${n}u);
    acc = subgroupMatrixMultiplyAccumulate(l, r, acc);
  }
  subgroupMatrixStore(&c, row * ${n}u + col, acc, false, ${n}u);
}`;
  try {
    const ms = await time(code, [n * n, n * n, n * n * 4], [n / N, n / M]);
    console.log(`naive ${ct} subgroup-matrix GEMM ${n}^3 (${M}x${N}x${K} tiles): ${ms.toFixed(2)} ms = ${((2 * n ** 3) / ms / 1e9).toFixed(1)} TOP/s`);
  } catch (e) {
    console.log(`int8 GEMM failed: ${(e as Error).message.split('\n')[0]}`);
  }
  // f32 subgroup matrices compile too: are they tensor cores (tf32) or an emulation? time the same loop
  for (const K of [8, 32]) {
    const f32sm = `enable chromium_experimental_subgroup_matrix;
@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@compute @workgroup_size(32) fn main(@builtin(workgroup_id) wg: vec3<u32>) {
  let row = wg.y * ${M}u;
  let col = wg.x * ${N}u;
  var acc = subgroup_matrix_result<f32, ${N}, ${M}>();
  for (var k = 0u; k < ${n}u; k += ${K}u) {
    let l = subgroupMatrixLoad<subgroup_matrix_left<f32, ${K}, ${M}>>(&a, row * ${n}u + k, false, ${n}u);
    let r = subgroupMatrixLoad<subgroup_matrix_right<f32, ${N}, ${K}>>(&b, k * ${n}u + col, false, ${n}u);
    acc = subgroupMatrixMultiplyAccumulate(l, r, acc);
  }
  subgroupMatrixStore(&c, row * ${n}u + col, acc, false, ${n}u);
}`;
    try {
      const ms = await time(f32sm, [n * n * 4, n * n * 4, n * n * 4], [n / N, n / M]);
      console.log(`naive f32 subgroup-matrix GEMM ${n}^3 (${M}x${N}x${K}): ${ms.toFixed(2)} ms = ${((2 * n ** 3) / ms / 1e9).toFixed(1)} TFLOP/s`);
    } catch (e) {
      console.log(`f32 subgroup-matrix GEMM K=${K} failed: ${(e as Error).message.split('\n')[0]}`);
    }
  }
}
const f32code = `@group(0) @binding(0) var<storage, read> a: array<f32>;
@group(0) @binding(1) var<storage, read> b: array<f32>;
@group(0) @binding(2) var<storage, read_write> c: array<f32>;
@compute @workgroup_size(16, 16) fn main(@builtin(global_invocation_id) gid: vec3<u32>) {
  var s = 0.0;
  for (var k = 0u; k < ${n}u; k++) { s = fma(a[gid.y * ${n}u + k], b[k * ${n}u + gid.x], s); }
  c[gid.y * ${n}u + gid.x] = s;
}`;
const msf = await time(f32code, [n * n * 4, n * n * 4, n * n * 4], [n / 16, n / 16]);
console.log(`naive f32 FMA GEMM ${n}^3: ${msf.toFixed(2)} ms = ${((2 * n ** 3) / msf / 1e9).toFixed(1)} TFLOP/s`);
process.exit(0);
