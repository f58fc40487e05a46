/**
 * Host cost of recording one dispatch, ours against Dawn's bare calls, on any adapter (decode records ~185 dispatches
 * a token, so a microsecond here is ~0.2 ms a token):
 *   node dist/bench/gpu-dispatch.js
 * Rows: GpuContext.dispatch (parameters into the arena, cached bind group, submit every FLUSH_EVERY); the three Dawn
 * calls with one bind group made beforehand and a submit every 64; each Dawn call alone (never submitted); a submit
 * of an empty pass per 64 dispatches. The heap growth column is the garbage a call leaves for the collector.
 */
import { getHeapStatistics } from 'node:v8';
import { createWebGPUBackend } from '../src/backend/webgpu/index.js';
import { Params } from '../src/backend/webgpu/context.js';

const be = await createWebGPUBackend();
const ctx = be.ctx;
const dev = ctx.device;
const k = ctx.pipeline('bench-dispatch', () => `struct P { a: u32, b: u32, c: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> y: array<f32>;
@compute @workgroup_size(64) fn main(@builtin(global_invocation_id) g: vec3<u32>) { if (g.x < p.a) { y[g.x] = x[g.x]; } }`);
const x = ctx.alloc(1024);
const y = ctx.alloc(1024);
ctx.dispatch(k, new Params().u(1, 2, 3), [x, y], [1]);
await ctx.sync();
const arena = (ctx as unknown as { arena: GPUBuffer }).arena;
const bg = dev.createBindGroup({ layout: k.layout!, entries: [{ binding: 0, resource: { buffer: arena, offset: 0, size: 64 } }, { binding: 1, resource: { buffer: x } }, { binding: 2, resource: { buffer: y } }] });
const offs = [0];
const N = 20000;
const inPass = (f: (pass: GPUComputePassEncoder) => void) => () => {
  const pass = dev.createCommandEncoder().beginComputePass();
  for (let i = 0; i < N; i++) f(pass);
  pass.end();
};
const variants: Record<string, () => void> = {
  'GpuContext.dispatch': () => { for (let i = 0; i < N; i++) ctx.dispatch(k, new Params().u(1, 2, 3), [x, y], [1]); },
  'Dawn: 3 calls + submit/64': () => {
    let enc = dev.createCommandEncoder();
    let pass = enc.beginComputePass();
    for (let i = 0; i < N; i++) {
      pass.setPipeline(k.pipeline!);
      pass.setBindGroup(0, bg, offs);
      pass.dispatchWorkgroups(1, 1, 1);
      if (i % 64 === 63) { pass.end(); dev.queue.submit([enc.finish()]); enc = dev.createCommandEncoder(); pass = enc.beginComputePass(); }
    }
    pass.end();
    dev.queue.submit([enc.finish()]);
  },
  'Dawn: setBindGroup alone': inPass((p) => p.setBindGroup(0, bg, offs)),
  'Dawn: setPipeline alone': inPass((p) => p.setPipeline(k.pipeline!)),
  'Dawn: dispatchWorkgroups alone': inPass((p) => p.dispatchWorkgroups(1, 1, 1)),
  'Dawn: empty submit per 64': () => { for (let i = 0; i < N / 64; i++) { const e = dev.createCommandEncoder(); e.beginComputePass().end(); dev.queue.submit([e.finish()]); } },
};
console.log(`host cost per dispatch (${be.adapterName}), ${N} each, best of 3`);
const best = new Map<string, { us: number; bytes: number }>();
for (let rep = 0; rep < 3; rep++) {
  for (const [name, f] of Object.entries(variants)) {
    const before = getHeapStatistics().used_heap_size;
    const t = performance.now();
    f();
    const us = ((performance.now() - t) / N) * 1000;
    const bytes = (getHeapStatistics().used_heap_size - before) / N;
    await ctx.sync();
    const b = best.get(name);
    if (!b || us < b.us) best.set(name, { us, bytes });
  }
}
for (const [name, b] of best) console.log(`${name.padEnd(32)} ${b.us.toFixed(2).padStart(7)} µs   heap +${b.bytes.toFixed(0)} B (unless a GC ran)`);
be.destroy();
process.exit(0);
