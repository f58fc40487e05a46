/**
 * Optimizers over host f64 parameters, written to match torch.optim exactly:
 *  - AdamW: p ← p·(1 − lr·wd) first (decoupled decay), then m, v updates, step = lr / (1 − β1^t),
 *    p ← p − step · m / (sqrt(v) / sqrt(1 − β2^t) + eps)
 *  - SGD (no momentum): p ← p − lr·(g + wd·p)   (torch's SGD weight decay is L2, coupled to the gradient)
 * Clipping is torch.nn.utils.clip_grad_norm_: coef = max / (‖g‖ + 1e-6), applied when coef < 1.
 */
/** f64 masters for LoRA / masses / norms; f32 masters (and f32 grads and moments) for full-parameter training */
export type ParamArray = Float32Array | Float64Array;

function like(a: ParamArray): ParamArray {
  return a instanceof Float32Array ? new Float32Array(a.length) : new Float64Array(a.length);
}

export interface Param {
  /** PEFT-style name, e.g. model.layers.0.self_attn.q_proj.lora_A.weight */
  name: string;
  shape: number[];
  data: ParamArray;
  grad: ParamArray;
  /** per-parameter weight decay (groups: LoRA, masses, norms) */
  weightDecay: number;
  /** multiplies the scheduled lr (1 for every group unless asked) */
  lrScale: number;
  /** AdamW moments, allocated on first use */
  expAvg?: ParamArray;
  expAvgSq?: ParamArray;
}

export interface Optimizer {
  readonly kind: 'adamw' | 'sgd';
  /** number of steps taken (AdamW's t) */
  t: number;
  step(params: Param[], lr: number): void;
}

export class AdamW implements Optimizer {
  readonly kind = 'adamw';
  t = 0;
  constructor(readonly beta1: number, readonly beta2: number, readonly eps: number) {}

  step(params: Param[], lr: number): void {
    this.t++;
    const bc1 = 1 - this.beta1 ** this.t;
    const bc2Sqrt = Math.sqrt(1 - this.beta2 ** this.t);
    for (const p of params) {
      const plr = lr * p.lrScale;
      const m = (p.expAvg ??= like(p.data));
      const v = (p.expAvgSq ??= like(p.data));
      const stepSize = plr / bc1;
      const decay = 1 - plr * p.weightDecay;
      const { data, grad } = p;
      for (let i = 0; i < data.length; i++) {
        const g = grad[i];
        data[i] *= decay;
        m[i] = this.beta1 * m[i] + (1 - this.beta1) * g;
        v[i] = this.beta2 * v[i] + (1 - this.beta2) * g * g;
        data[i] -= (stepSize * m[i]) / (Math.sqrt(v[i]) / bc2Sqrt + this.eps);
      }
    }
  }
}

export class SGD implements Optimizer {
  readonly kind = 'sgd';
  t = 0;
  step(params: Param[], lr: number): void {
    this.t++;
    for (const p of params) {
      const plr = lr * p.lrScale;
      const { data, grad } = p;
      for (let i = 0; i < data.length; i++) data[i] -= plr * (grad[i] + p.weightDecay * data[i]);
    }
  }
}

/** Global L2 norm of all gradients (f64). */
export function gradNorm(params: Param[]): number {
  let s = 0;
  for (const p of params) for (const g of p.grad) s += g * g;
  return Math.sqrt(s);
}

/** Scales gradients so the global norm is at most maxNorm (0 = off). Returns the norm before clipping. */
export function clipGradNorm(params: Param[], maxNorm: number): number {
  const norm = gradNorm(params);
  if (maxNorm > 0) {
    const coef = maxNorm / (norm + 1e-6);
    if (coef < 1) for (const p of params) for (let i = 0; i < p.grad.length; i++) p.grad[i] *= coef;
  }
  return norm;
}
