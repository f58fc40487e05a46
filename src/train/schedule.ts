/**
 * Learning rate at an optimizer step: linear warmup then cosine decay to minLrRatio·lr, the formula of
 * transformers' get_cosine_schedule_with_warmup (with its min-lr variant), evaluated at the 0-based index of
 * the step about to be taken, as the HF Trainer does (so with warmup the first step has lr 0).
 */
export interface ScheduleOptions {
  lr: number;
  warmupSteps: number;
  totalSteps: number;
  /** floor of the cosine as a fraction of lr (0 = decay to 0) */
  minLrRatio: number;
}

export function lrAt(step: number, o: ScheduleOptions): number {
  if (step < o.warmupSteps) return (o.lr * step) / Math.max(1, o.warmupSteps);
  const span = Math.max(1, o.totalSteps - o.warmupSteps);
  const progress = Math.min(1, (step - o.warmupSteps) / span);
  const cosine = 0.5 * (1 + Math.cos(Math.PI * progress));
  return o.lr * (o.minLrRatio + (1 - o.minLrRatio) * cosine);
}
