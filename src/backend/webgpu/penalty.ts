/**
 * The repetition penalty on the device (HF's RepetitionPenaltyLogitsProcessor, as generate/sampling.ts applies it on
 * the host): each row keeps a bit per vocabulary id of the tokens it has seen; a logit of a seen token is divided by
 * the penalty when positive and multiplied by it when negative, in place, before the draw. The dispatch first marks
 * the ids fed to this step (the previous step's draws, still on the device), so the mask follows the stream without
 * a readback.
 */
import { Params, type GpuContext } from './context.js';

const shader = `struct P { V: u32, W: u32, penalty: f32, marks: u32 }
@group(0) @binding(0) var<uniform> p: P;
@group(0) @binding(1) var<storage, read_write> x: array<f32>;
@group(0) @binding(2) var<storage, read_write> seen: array<atomic<u32>>;
@group(0) @binding(3) var<storage, read> prev: array<u32>;
@compute @workgroup_size(256)
fn main(@builtin(workgroup_id) wid: vec3<u32>, @builtin(local_invocation_index) lid: u32) {
  let row = wid.y;
  let i = wid.x * 256u + lid;
  if (i >= p.V) { return; }
  let w = row * p.W + i / 32u;
  let bit = 1u << (i % 32u);
  var s = (atomicLoad(&seen[w]) & bit) != 0u;
  // the fed id: its thread alone sets the bit (others read only their own bits of the word)
  if (p.marks != 0u && prev[row] == i) {
    s = true;
    atomicOr(&seen[w], bit);
  }
  if (s) {
    let v = x[row * p.V + i];
    x[row * p.V + i] = select(v / p.penalty, v * p.penalty, v < 0.0);
  }
}`;

/** logits x [R, V] in place; seen [R, W] bits (W = ceil(V / 32)); prev [R] ids to mark first, or null */
export function penalizeKernel(ctx: GpuContext, x: GPUBuffer, seen: GPUBuffer, prev: GPUBuffer | null, R: number, V: number, penalty: number): void {
  const W = Math.ceil(V / 32);
  const params = new Params().u(V, W).f(penalty).u(prev ? 1 : 0);
  const key = prev ? 'penalize:dev' : 'penalize:none';
  ctx.dispatch(ctx.pipeline(key, () => shader), params, [x, seen, prev ?? { data: new Uint32Array(R) }], [Math.ceil(V / 256), R]);
}
