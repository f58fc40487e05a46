/**
 * Per-kernel GPU time through timestamp queries (opt-in: createWebGPUBackend({ profile: true }) or
 * GRAVITY_WEBGPU_PROFILE=1). Each profiled dispatch gets its own compute pass with begin/end timestamps, so
 * the numbers include a pass boundary each; they are for finding the kernel that dominates, not for totals.
 */
import { USAGE } from './context.js';

const QUERY_RESOLVE = 0x200; // GPUBufferUsage.QUERY_RESOLVE
const MAP_READ_MODE = 1;

export interface KernelTime {
  kernel: string;
  calls: number;
  ms: number;
}

export class Profiler {
  private readonly capacity: number;
  private querySet: GPUQuerySet;
  private resolve: GPUBuffer;
  private names: string[] = [];
  private pending: Promise<void>[] = [];
  private readbacks: GPUBuffer[] = [];
  private stats = new Map<string, { calls: number; ns: number }>();

  constructor(private device: GPUDevice, maxDispatches: number) {
    this.capacity = maxDispatches;
    this.querySet = device.createQuerySet({ type: 'timestamp', count: 2 * maxDispatches });
    this.resolve = device.createBuffer({ size: 16 * maxDispatches, usage: QUERY_RESOLVE | USAGE.COPY_SRC });
  }

  /** timestampWrites for the next dispatch, or null when this submit's query slots are used up */
  next(kernel: string): GPUComputePassTimestampWrites | null {
    const i = this.names.length;
    if (i >= this.capacity) return null;
    this.names.push(kernel);
    return { querySet: this.querySet, beginningOfPassWriteIndex: 2 * i, endOfPassWriteIndex: 2 * i + 1 };
  }

  /** Called with the encoder about to be submitted: resolves this submit's queries into a readback buffer. */
  beforeSubmit(encoder: GPUCommandEncoder): (() => void) | null {
    const n = this.names.length;
    if (n === 0) return null;
    const names = this.names;
    this.names = [];
    encoder.resolveQuerySet(this.querySet, 0, 2 * n, this.resolve, 0);
    const rb = this.readbacks.pop() ?? this.device.createBuffer({ size: 16 * this.capacity, usage: USAGE.MAP_READ | USAGE.COPY_DST });
    encoder.copyBufferToBuffer(this.resolve, 0, rb, 0, 16 * n);
    return () => {
      this.pending.push(
        rb.mapAsync(MAP_READ_MODE, 0, 16 * n).then(
          () => {
            const t = new BigUint64Array(rb.getMappedRange(0, 16 * n));
            for (let i = 0; i < n; i++) {
              const ns = Number(t[2 * i + 1] - t[2 * i]);
              const s = this.stats.get(names[i]) ?? { calls: 0, ns: 0 };
              s.calls++;
              s.ns += ns > 0 ? ns : 0;
              this.stats.set(names[i], s);
            }
            rb.unmap();
            this.readbacks.push(rb);
          },
          () => undefined, // device lost: the numbers are gone, nothing waits on them
        ),
      );
    };
  }

  /** Kernel times since the last report, largest first. */
  async report(): Promise<KernelTime[]> {
    await Promise.all(this.pending);
    this.pending = [];
    const out = [...this.stats].map(([kernel, s]) => ({ kernel, calls: s.calls, ms: s.ns / 1e6 }));
    this.stats.clear();
    return out.sort((a, b) => b.ms - a.ms);
  }

  destroy(): void {
    this.querySet.destroy();
    this.resolve.destroy();
    for (const b of this.readbacks) b.destroy();
  }
}
