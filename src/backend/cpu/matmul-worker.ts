/** Worker threads for the WASM matmul kernels. The API above is synchronous, so the main thread does not
 * post messages per call: it writes the job into a shared control block, wakes the workers with
 * Atomics.notify, runs its own share, and sleeps in Atomics.wait until every worker has reported. */
import type { Worker as NodeWorker, MessagePort as NodeMessagePort } from 'node:worker_threads';

type WorkerThreads = typeof import('node:worker_threads');

/** Work is handed out in chunks claimed with Atomics.add, so a worker that the OS does not schedule in time
 * (the machine is shared) costs nothing: the main thread claims the rest, closes the job, and waits only for
 * the workers that joined it. A worker joins by a compare-exchange on JOIN while the job is open; the job's
 * fields are not rewritten until every joined worker has reported, so a joined worker always reads one job.
 *
 * Control block (Int32 slots). Pointers above 2 GiB wrap negative here; the kernels read them as u32. */
export const CTL = {
  GEN: 0, // bumped by the main thread for each job
  DONE: 1, // workers that finished the current job
  OP: 2, // 0 forward, 1 backward, 2 weight gradient, 3 attention, -1 exit
  ARENA: 3,
  DT: 4,
  A: 5, // x (forward) or dy (backward)
  N: 6,
  W: 7, // the weight (forward / backward) or x (weight gradient)
  IN: 8,
  OUT: 9,
  BIAS: 10, // bias pointer, or the accumulate flag of the weight gradient
  Y: 11, // y (forward) or dx (backward)
  ERR: 12, // set to 1 by a worker whose kernel threw
  TOTAL: 13, // rows (forward, weight gradient) or columns (backward) to compute
  CHUNK: 14, // claimed per grab, a multiple of the kernel's tile width
  NEXT: 15, // next unclaimed row / column
  JOIN: 16, // workers that joined the current job, -1 once the main thread has closed it
  WORKER_CHUNKS: 17, // chunks computed by workers since start (for tests and benchmarks)
  READY: 18, // workers that have started
  SIZE: 19,
} as const;

/** Each thread's buffer where the GEMM kernel widens 16-bit weight tiles (4 x 512 f32) and the Q8_0 decode
 * kernel keeps x as int16 (up to 14,336 inputs): thread 0 is the main thread. Lies in [64 KB, 64 KB + 16 x 32 KB) of
 * every arena, below the activation scratch. */
export const MAX_THREADS = 16;
export const TMP_BYTES = 32768;
export function tmpOf(thread: number): number {
  return 65536 + thread * TMP_BYTES;
}

/** Busy-poll this many times before sleeping: a decode step issues ~170 matmuls back to back and the
 * futex wake-up alone costs tens of microseconds. */
const SPIN = 20000;

// Plain JS (no TS): runs through `new Worker(src, { eval: true })`, so it works the same from src/ under tsx
// and from dist/ without resolving a file path.
const WORKER_SOURCE = `
const { workerData, receiveMessageOnPort } = require('node:worker_threads');
const { module, ctlBuf, port, tmp } = workerData;
const ctl = new Int32Array(ctlBuf);
const kernels = [];
let seen = 0;
Atomics.add(ctl, ${CTL.READY}, 1);
for (;;) {
  let g = Atomics.load(ctl, ${CTL.GEN});
  for (let s = 0; g === seen && s < ${SPIN}; s++) g = Atomics.load(ctl, ${CTL.GEN});
  while (g === seen) { Atomics.wait(ctl, ${CTL.GEN}, seen); g = Atomics.load(ctl, ${CTL.GEN}); }
  seen = g;
  let joined = false;
  for (;;) {
    const j = Atomics.load(ctl, ${CTL.JOIN});
    if (j < 0) break;
    if (Atomics.compareExchange(ctl, ${CTL.JOIN}, j, j + 1) === j) { joined = true; break; }
  }
  if (!joined) continue; // too late: the main thread already did this job
  const op = ctl[${CTL.OP}];
  if (op < 0) break;
  try {
    const a = ctl[${CTL.ARENA}];
    // arenas are announced on the port before the first job that uses them
    for (let tries = 0; kernels[a] === undefined; tries++) {
      const m = receiveMessageOnPort(port);
      if (m) kernels[m.message.id] = new WebAssembly.Instance(module, { env: { memory: m.message.memory } }).exports;
      else if (tries > 1e7) throw new Error('matmul worker: arena ' + a + ' never arrived');
    }
    const k = kernels[a];
    const total = ctl[${CTL.TOTAL}], chunk = ctl[${CTL.CHUNK}];
    for (;;) {
      const r0 = Atomics.add(ctl, ${CTL.NEXT}, chunk);
      if (r0 >= total) break;
      const r1 = Math.min(r0 + chunk, total);
      if (op === 0) k.fwd(ctl[${CTL.DT}], ctl[${CTL.A}], ctl[${CTL.N}], ctl[${CTL.W}], ctl[${CTL.IN}], ctl[${CTL.OUT}], ctl[${CTL.BIAS}], ctl[${CTL.Y}], r0, r1, tmp);
      else if (op === 1) k.bwd(ctl[${CTL.DT}], ctl[${CTL.A}], ctl[${CTL.N}], ctl[${CTL.W}], ctl[${CTL.IN}], ctl[${CTL.OUT}], ctl[${CTL.Y}], r0, r1);
      else if (op === 2) k.dw(ctl[${CTL.A}], ctl[${CTL.N}], ctl[${CTL.OUT}], ctl[${CTL.W}], ctl[${CTL.IN}], ctl[${CTL.Y}], r0, r1, ctl[${CTL.BIAS}]);
      else k.attn(ctl[${CTL.A}], r0, r1, tmp); // op 3: attention tasks, the job descriptor at A (attention-wasm.ts)
      Atomics.add(ctl, ${CTL.WORKER_CHUNKS}, 1);
    }
  } catch (e) {
    Atomics.store(ctl, ${CTL.ERR}, 1);
  }
  Atomics.add(ctl, ${CTL.DONE}, 1);
  Atomics.notify(ctl, ${CTL.DONE});
}
`;

export class ThreadPool {
  readonly ctl: Int32Array;
  private readonly workers: NodeWorker[] = [];
  private readonly ports: NodeMessagePort[] = [];
  private closed = false;

  /** nWorkers helpers besides the main thread. */
  constructor(wt: WorkerThreads, module: WebAssembly.Module, readonly nWorkers: number) {
    this.ctl = new Int32Array(new SharedArrayBuffer(CTL.SIZE * 4));
    for (let t = 1; t <= nWorkers; t++) {
      const { port1, port2 } = new wt.MessageChannel();
      const w = new wt.Worker(WORKER_SOURCE, {
        eval: true,
        workerData: { module, ctlBuf: this.ctl.buffer, port: port2, tmp: tmpOf(t) },
        transferList: [port2],
      });
      // helpers sleep in Atomics.wait between jobs: they must not keep the process alive
      w.unref();
      port1.unref();
      this.workers.push(w);
      this.ports.push(port1);
    }
  }

  /** Hands a new kernel memory to every worker; they instantiate the module on it when first used. */
  addArena(id: number, memory: WebAssembly.Memory): void {
    for (const p of this.ports) p.postMessage({ id, memory });
  }

  /** Runs the job whose fields are already in ctl over [0, total) in chunks; `own(r0, r1)` computes a chunk
   * on this thread. Returns when every chunk is done. */
  run(total: number, chunk: number, own: (r0: number, r1: number) => void): void {
    const ctl = this.ctl;
    ctl[CTL.TOTAL] = total;
    ctl[CTL.CHUNK] = chunk;
    Atomics.store(ctl, CTL.NEXT, 0);
    Atomics.store(ctl, CTL.DONE, 0);
    Atomics.store(ctl, CTL.ERR, 0);
    Atomics.store(ctl, CTL.JOIN, 0);
    Atomics.add(ctl, CTL.GEN, 1);
    Atomics.notify(ctl, CTL.GEN);
    let error: unknown = null;
    try {
      for (;;) {
        const r0 = Atomics.add(ctl, CTL.NEXT, chunk);
        if (r0 >= total) break;
        own(r0, Math.min(r0 + chunk, total));
      }
    } catch (e) {
      error = e;
      Atomics.store(ctl, CTL.NEXT, total); // stop the workers claiming more
    }
    // every chunk is claimed; close the job and wait for the workers that joined (they share the scratch)
    const joined = Atomics.exchange(ctl, CTL.JOIN, -1);
    let spins = 0;
    for (;;) {
      const d = Atomics.load(ctl, CTL.DONE);
      if (d >= joined) break;
      if (spins++ < SPIN) continue;
      Atomics.wait(ctl, CTL.DONE, d, 50);
    }
    if (error) throw error;
    if (Atomics.load(ctl, CTL.ERR)) throw new Error('matmul: a worker thread failed inside the wasm kernel');
  }

  close(): void {
    if (this.closed) return;
    this.closed = true;
    Atomics.store(this.ctl, CTL.OP, -1);
    Atomics.store(this.ctl, CTL.JOIN, 0);
    Atomics.add(this.ctl, CTL.GEN, 1);
    Atomics.notify(this.ctl, CTL.GEN);
    for (const p of this.ports) p.close();
  }
}
