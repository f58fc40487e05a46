/**
 * Host cost of recording dispatches (Dawn's node binding + our GpuContext.dispatch), the bound on decode speed when
 * the GPU work per dispatch is a few microseconds: `node dist/bench/gpu-host.js`.
 */
import { createWebGPUBackend } from '../src/backend/webgpu/index.js';
import { Params } from '../src/backend/webgpu/context.js';
const be = await createWebGPUBackend();
const ctx = be.ctx, dev = ctx.device;
const code = `struct P { n: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> a: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) { if (g.x < p.n) { y[g.x] = a[g.x] + 1.0; } }`;
const a = ctx.alloc(4096), y = ctx.alloc(4096);
const k = ctx.pipeline('probe', () => code);
const N = 2000;
for (let rep = 0; rep < 4; rep++) {
  let t = performance.now();
  for (let i = 0; i < N; i++) ctx.dispatch(k, new Params().u(64), [a, y], [1]);
  const ours = (performance.now() - t) / N * 1000;
  await ctx.sync();
  // raw dawn: same pipeline and bind group, dynamic offset
  const bgl = k.layout!;
  const arena = dev.createBuffer({ size: 1 << 20, usage: 64 | 8 });
  const bg = dev.createBindGroup({ layout: bgl, entries: [{ binding: 0, resource: { buffer: arena, offset: 0, size: 64 } }, { binding: 1, resource: { buffer: a } }, { binding: 2, resource: { buffer: y } }] });
  const enc = dev.createCommandEncoder();
  const pass = enc.beginComputePass();
  const offs = [0];
  t = performance.now();
  for (let i = 0; i < N; i++) { pass.setPipeline(k.pipeline!); offs[0] = (i % 1000) * 256; pass.setBindGroup(0, bg, offs); pass.dispatchWorkgroups(1); }
  const raw = (performance.now() - t) / N * 1000;
  t = performance.now();
  for (let i = 0; i < N; i++) { pass.dispatchWorkgroups(1); }
  const dispOnly = (performance.now() - t) / N * 1000;
  t = performance.now();
  for (let i = 0; i < N; i++) { pass.setBindGroup(0, bg, offs); }
  const bgOnly = (performance.now() - t) / N * 1000;
  t = performance.now();
  const u32 = new Uint32Array(1);
  for (let i = 0; i < N; i++) { pass.setBindGroup(0, bg, u32, 0, 1); }
  const bgTyped = (performance.now() - t) / N * 1000;
  t = performance.now();
  for (let i = 0; i < N; i++) { pass.setPipeline(k.pipeline!); }
  const plOnly = (performance.now() - t) / N * 1000;
  pass.end();
  t = performance.now();
  dev.queue.submit([enc.finish()]);
  const sub = (performance.now() - t) * 1000;
  await dev.queue.onSubmittedWorkDone();
  console.log(`ours ${ours.toFixed(2)} µs/dispatch; raw set+bg+dispatch ${raw.toFixed(2)}; dispatch ${dispOnly.toFixed(2)}; setBindGroup(array) ${bgOnly.toFixed(2)}; setBindGroup(u32array) ${bgTyped.toFixed(2)}; setPipeline ${plOnly.toFixed(2)}; finish+submit of ${4*N} cmds ${sub.toFixed(0)} µs`);
}
be.destroy();
process.exit(0);
