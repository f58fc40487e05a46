/**
 * LoRA / masses / norms training of a Qwen2 or Llama checkpoint. The base weights are frozen and uploaded in
 * their stored width (model/qwen2.ts layout); trainable parameters live on the host as f64 master copies
 * (optimizer state too) and are uploaded as working-precision tensors each step; gradients come back to the
 * host. The forward/backward pass is written out layer by layer over TrainOps (./model-pass.ts).
 *
 * Weight decay applies to every trainable parameter by default, masses included, as torch.optim.AdamW does
 * with one parameter group (what the reference fixtures use); `massWeightDecay` gives masses their own.
 *
 * Full-parameter training (`full: true`): every base weight (embedding, all linears and their biases, norms,
 * lm_head; a tied lm_head is the embedding, which then gets both gradients) is a parameter with an f32 master
 * copy, f32 gradient and f32 optimizer moments, uploaded each step. Weight decay then applies only to the
 * 2-D weights (embedding, linears, lm_head), not to norms, biases or masses (masses: `massWeightDecay`, default
 * 0 here), the usual GPT-style grouping. save() writes a complete model folder (./full-save.ts).
 */
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { AttentionKind, Backend } from '../backend/backend.js';
import { createCpuBackend, type CpuBackend } from '../backend/cpu/index.js';
import type { TrainOps } from '../backend/train-ops.js';
import { DEFAULT_EPS, parseMassInit } from '../attention/registry.js';
import { fail } from '../errors.js';
import { expectedWeightShapes } from '../io/checkpoint.js';
import { openModelSource } from '../io/model-source.js';
import { loadMasses, massName, saveMasses } from '../io/masses.js';
import { atomicWrite, openSafetensors, writeSafetensors } from '../io/safetensors.js';
import type { ModelConfig } from '../model/config.js';
import { uploadWeights, type LayerWeights, type ModelWeights } from '../model/qwen2.js';
import { toF32, type HostTensor } from '../tensor/dtype.js';
import { readAdapter, writeAdapter } from './adapter.js';
import { createCpuTrainOps } from './cpu-train-ops.js';
import { initLora, parseTargets, type LoraModule } from './lora.js';
import { checkBatch, countTargets, shiftTargets, type Batch } from './loss.js';
import { ModelPass, type ParamTensors } from './model-pass.js';
import { AdamW, SGD, clipGradNorm, type Optimizer, type Param, type ParamArray } from './optim.js';
import { saveFullModel } from './full-save.js';
import { lrAt } from './schedule.js';

export type { Batch } from './loss.js';

export interface TrainerOptions {
  loraR: number;
  loraAlpha: number;
  loraDropout: number;
  /** q_proj, k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj, or 'all'; [] = no LoRA */
  loraTargets: string[];
  trainMasses: boolean;
  trainNorms: boolean;
  optimizer: 'adamw' | 'sgd';
  lr: number;
  weightDecay: number;
  betas: [number, number];
  adamEps: number;
  /** 0 = no clipping */
  maxGradNorm: number;
  warmupSteps: number;
  totalSteps: number;
  minLrRatio: number;
  /** micro-batches per optimizer step (the caller passes that many to trainStep) */
  gradAccum: number;
  seed: number;
  attention: AttentionKind;
  eps: number;
  /** train every base weight (f32 masters); LoRA is off, norms are included */
  full?: boolean;
  /** full: stored dtype of the saved model.safetensors (default f32) */
  saveDtype?: 'f32' | 'bf16';
  /** one mass per KV group ([numKVHeads] per layer) instead of one per query head */
  massPerGroup?: boolean;
  /** masses when the folder has none (with `full`: also replacing the folder's): 'raw:X' or 'mass:X' */
  massInit?: string;
  /** masses file overriding the folder's */
  masses?: string;
  /** PEFT adapter to start from (its r, alpha and targets win over loraR / loraAlpha / loraTargets) */
  initAdapter?: string;
  /** weight decay of the masses (default: weightDecay) */
  massWeightDecay?: number;
  /** lr multiplier of the masses (default 1) */
  massLrScale?: number;
  /** working precision of activations and gradients (cpu: 'f64' for reference checks) */
  precision?: 'f32' | 'f64';
}

export const DEFAULT_TRAINER_OPTIONS: TrainerOptions = {
  loraR: 8, loraAlpha: 16, loraDropout: 0, loraTargets: ['q_proj', 'k_proj', 'v_proj', 'o_proj'],
  trainMasses: false, trainNorms: false, optimizer: 'adamw', lr: 1e-4, weightDecay: 0.01, betas: [0.9, 0.999],
  adamEps: 1e-8, maxGradNorm: 1, warmupSteps: 0, totalSteps: 1000, minLrRatio: 0, gradAccum: 1, seed: 0,
  attention: 'gravity', eps: DEFAULT_EPS,
};

export interface StepResult {
  loss: number;
  tokens: number;
  /** global gradient norm before clipping */
  gradNorm: number;
  lr: number;
  /** 'layers.{i}.{q_proj|...|mass|input_layernorm|post_attention_layernorm}', 'norm' */
  moduleGradNorms: Record<string, number>;
}

export interface TrainerCreateOptions {
  backend?: CpuBackend;
  /** a TrainOps over another backend (WebGPU); default: cpu */
  ops?: TrainOps;
  /** without `ops`: 'webgpu' makes the WebGPU TrainOps (src/train/webgpu) on a new device; default cpu */
  device?: 'cpu' | 'webgpu';
}

const STATE_FILE = 'trainer_state.json';
const OPTIM_FILE = 'optimizer.safetensors';

function checkOptions(o: TrainerOptions): void {
  const num = (k: keyof TrainerOptions, ok: (v: number) => boolean, what: string) => {
    const v = o[k] as number;
    if (typeof v !== 'number' || !ok(v)) fail(`trainer: ${String(k)} must be ${what}, got ${v}`);
  };
  num('lr', (v) => v >= 0 && Number.isFinite(v), 'a number >= 0');
  num('weightDecay', (v) => v >= 0, 'a number >= 0');
  num('maxGradNorm', (v) => v >= 0, 'a number >= 0 (0 = off)');
  num('warmupSteps', (v) => Number.isInteger(v) && v >= 0, 'an integer >= 0');
  num('totalSteps', (v) => Number.isInteger(v) && v >= 1, 'an integer >= 1');
  num('minLrRatio', (v) => v >= 0 && v <= 1, 'in [0, 1]');
  num('gradAccum', (v) => Number.isInteger(v) && v >= 1, 'an integer >= 1');
  num('loraDropout', (v) => v >= 0 && v < 1, 'in [0, 1)');
  num('adamEps', (v) => v > 0, '> 0');
  if (!['adamw', 'sgd'].includes(o.optimizer)) fail(`trainer: optimizer must be adamw or sgd, got '${o.optimizer}'`);
  if (!(o.betas[0] >= 0 && o.betas[0] < 1 && o.betas[1] >= 0 && o.betas[1] < 1)) fail(`trainer: betas must be in [0, 1), got ${o.betas}`);
  if (o.trainMasses && o.attention === 'dot') fail('trainer: --train-masses needs gravity attention (masses do nothing with --attn dot)');
  if (!['gravity', 'dot', 'gravity-pure'].includes(o.attention)) fail(`trainer: attention must be gravity, dot or gravity-pure, got '${o.attention}'`);
  if (!(o.eps > 0)) fail(`trainer: eps must be > 0, got ${o.eps}`);
  if (o.full && o.initAdapter) fail('trainer: --full trains every weight; it cannot start from --init-adapter (merge the adapter first)');
  if (o.saveDtype !== undefined && o.saveDtype !== 'f32' && o.saveDtype !== 'bf16') fail(`trainer: saveDtype must be f32 or bf16, got '${o.saveDtype}'`);
}

/** a 32-bit seed from the run seed and a position in the run (dropout masks are reproducible on resume) */
function mixSeed(...xs: number[]): number {
  let h = 0x811c9dc5;
  for (const x of xs) {
    h = Math.imul(h ^ (x >>> 0), 0x01000193);
    h = Math.imul(h ^ (h >>> 15), 0x2c1b3c6d);
    h ^= h >>> 12;
  }
  return h >>> 0;
}

export class Trainer {
  readonly params: Param[] = [];
  readonly modules: LoraModule[];
  readonly optimizer: Optimizer;
  /** optimizer steps taken */
  step = 0;
  private readonly pass: ModelPass;
  private adapterConfig: Record<string, unknown> | undefined;

  private constructor(
    readonly dir: string,
    readonly config: ModelConfig,
    readonly options: TrainerOptions,
    readonly ops: TrainOps,
    weights: ModelWeights,
    /** raw mass_log per layer (f64 masters; trained in place when trainMasses) */
    readonly masses: Float64Array[],
    modules: LoraModule[],
    adapterConfig: Record<string, unknown> | undefined,
    private readonly norms: Map<string, Float64Array>,
    /** full training: every base weight by name (f32 masters, in expectedWeightShapes order) */
    private readonly fullWeights: Map<string, { shape: number[]; data: Float32Array }> | null,
  ) {
    this.modules = modules;
    this.adapterConfig = adapterConfig;
    const o = options;
    for (const m of modules) {
      this.params.push({ name: `${m.path}.lora_A.weight`, shape: [m.r, m.inF], data: m.A, grad: new Float64Array(m.A.length), weightDecay: o.weightDecay, lrScale: 1 });
      this.params.push({ name: `${m.path}.lora_B.weight`, shape: [m.outF, m.r], data: m.B, grad: new Float64Array(m.B.length), weightDecay: o.weightDecay, lrScale: 1 });
    }
    if (fullWeights) {
      for (const [name, w] of fullWeights) {
        // decay the matrices only: norms and biases are 1-D
        this.params.push({ name, shape: w.shape, data: w.data, grad: new Float32Array(w.data.length), weightDecay: w.shape.length === 2 ? o.weightDecay : 0, lrScale: 1 });
      }
    }
    if (o.trainMasses) {
      const wd = o.massWeightDecay ?? (fullWeights ? 0 : o.weightDecay);
      masses.forEach((v, i) => this.params.push({ name: massName(i), shape: [v.length], data: v, grad: new Float64Array(v.length), weightDecay: wd, lrScale: o.massLrScale ?? 1 }));
    }
    if (o.trainNorms) for (const [name, v] of norms) this.params.push({ name, shape: [v.length], data: v, grad: new Float64Array(v.length), weightDecay: o.weightDecay, lrScale: 1 });
    if (this.params.length === 0) fail('trainer: nothing to train (no LoRA targets, no --train-masses, no --train-norms)');
    this.optimizer = o.optimizer === 'adamw' ? new AdamW(o.betas[0], o.betas[1], o.adamEps) : new SGD();
    this.pass = new ModelPass(ops, config, fullWeights ? null : weights, modules, o.attention, o.eps);
  }

  static async create(dir: string, options: Partial<TrainerOptions> = {}, deps: TrainerCreateOptions = {}): Promise<Trainer> {
    const o: TrainerOptions = { ...DEFAULT_TRAINER_OPTIONS, ...options };
    checkOptions(o);
    if (!deps.ops && deps.device === 'webgpu') {
      if (o.precision === 'f64') fail('trainer: --device webgpu trains in f32 (f64 is for cpu reference checks)');
      const { createWebGPUBackend } = await import('../backend/webgpu/index.js');
      const { createWebGPUTrainOps } = await import('./webgpu/ops.js');
      deps = { ...deps, ops: createWebGPUTrainOps(await createWebGPUBackend()) };
    }
    const files = await openModelSource(dir, { masses: o.masses });
    const cfg = files.config;
    let masses: Float64Array[];
    const massOpts = { numKVHeads: cfg.numKVHeads, form: o.massPerGroup ? 'groups' as const : 'heads' as const };
    const massCount = o.massPerGroup ? cfg.numKVHeads : cfg.numHeads;
    try {
      // from scratch (--full), --mass-init replaces the random masses that init-random wrote
      const initWins = o.full && o.massInit !== undefined && !o.masses;
      if (files.massesPath && !initWins) masses = loadMasses(files.massesPath, cfg.numLayers, cfg.numHeads, massOpts).map((v) => Float64Array.from(v));
      else if (files.masses && !initWins && !o.massPerGroup) masses = files.masses.map((v) => Float64Array.from(v));
      else if (o.massInit !== undefined) {
        const raw = parseMassInit(o.massInit);
        masses = Array.from({ length: cfg.numLayers }, () => new Float64Array(massCount).fill(raw));
      } else if (o.attention !== 'dot') {
        return fail(`${dir}: no gravity_mass_log.pt or gravity_mass_log.safetensors; pass --masses FILE or --mass-init raw:0.5 to train gravity from untrained masses, or --attn dot`);
      } else masses = [];

      let modules: LoraModule[];
      let adapterConfig: Record<string, unknown> | undefined;
      const norms = new Map<string, Float64Array>();
      if (o.initAdapter) {
        const a = readAdapter(o.initAdapter, { cfg });
        modules = a.modules;
        adapterConfig = a.config.raw;
        o.loraR = a.config.r;
        o.loraAlpha = a.config.alpha;
        o.loraTargets = a.config.targets;
        if (a.massesPath && !o.masses) masses = loadMasses(a.massesPath, cfg.numLayers, cfg.numHeads, massOpts).map((v) => Float64Array.from(v));
        for (const [name, t] of a.saved) norms.set(name, Float64Array.from(toF64(t)));
      } else if (o.full) {
        modules = [];
        o.loraTargets = [];
      } else {
        modules = o.loraTargets.length ? initLora(cfg, parseTargets(o.loraTargets), o.loraR, o.loraAlpha, o.seed) : [];
      }
      let fullWeights: Map<string, { shape: number[]; data: Float32Array }> | null = null;
      if (o.full) {
        fullWeights = new Map();
        for (const [name, shape] of expectedWeightShapes(cfg)) {
          const t = files.weights.read(name);
          if (t.data.length !== shape.reduce((a, b) => a * b, 1)) fail(`${dir}: tensor "${name}" has shape [${t.shape}], expected [${shape}]`);
          fullWeights.set(name, { shape, data: Float32Array.from(toF32(t)) });
        }
      }
      if (o.trainNorms && !o.full) {
        const names = [...Array(cfg.numLayers).keys()].flatMap((i) => [`model.layers.${i}.input_layernorm.weight`, `model.layers.${i}.post_attention_layernorm.weight`]);
        names.push('model.norm.weight');
        for (const n of names) if (!norms.has(n)) norms.set(n, Float64Array.from(toF64(files.weights.read(n))));
      }
      // norms saved with an adapter but not trained now still replace the base norms (not trained)

      const precision = deps.ops?.precision ?? o.precision ?? 'f32';
      const ops = deps.ops ?? createCpuTrainOps(deps.backend ?? createCpuBackend(), precision);
      // f64 loops read weights on the host: keep the host copy instead of moving it into kernel memory
      const be = ops.backend;
      const uploader = precision === 'f64' ? ({ upload: (t: HostTensor) => be.upload(t, 'other') } as unknown as Backend) : be;
      const weights = fullWeights ? (null as unknown as ModelWeights) : uploadWeights(uploader, cfg, (name) => files.weights.read(name));
      return new Trainer(dir, cfg, o, ops, weights, masses, modules, adapterConfig, norms, fullWeights);
    } finally {
      files.weights.close();
    }
  }

  /** raw mass_log per layer as f32 (what saveMasses writes) */
  massLog(): Float32Array[] {
    return this.masses.map((v) => Float32Array.from(v));
  }

  private uploadParams(): ParamTensors {
    const ops = this.ops;
    const lora = new Map<string, { A: ReturnType<TrainOps['fromHost']>; B: ReturnType<TrainOps['fromHost']> }>();
    for (const m of this.modules) lora.set(m.path, { A: ops.fromHost(m.A, [m.r, m.inF]), B: ops.fromHost(m.B, [m.outF, m.r]) });
    const norms = new Map<string, ReturnType<TrainOps['fromHost']>>();
    for (const [n, v] of this.norms) norms.set(n, ops.fromHost(v, [v.length]));
    const pt: ParamTensors = { lora, norms, masses: this.masses };
    if (this.fullWeights) pt.weights = this.uploadFull(this.fullWeights);
    return pt;
  }

  /** this step's copies of every weight, in the layout of model/qwen2.ts */
  private uploadFull(fw: Map<string, { shape: number[]; data: Float32Array }>): ModelWeights {
    const c = this.config;
    const up = (name: string) => {
      const w = fw.get(name)!;
      return this.ops.fromHost(w.data, w.shape);
    };
    const opt = (has: boolean, name: string) => (has ? up(name) : null);
    const layers: LayerWeights[] = [];
    for (let i = 0; i < c.numLayers; i++) {
      const p = `model.layers.${i}.`;
      layers.push({
        inputNorm: up(p + 'input_layernorm.weight'),
        q: up(p + 'self_attn.q_proj.weight'), k: up(p + 'self_attn.k_proj.weight'), v: up(p + 'self_attn.v_proj.weight'), o: up(p + 'self_attn.o_proj.weight'),
        qb: opt(c.qkvBias, p + 'self_attn.q_proj.bias'), kb: opt(c.qkvBias, p + 'self_attn.k_proj.bias'), vb: opt(c.qkvBias, p + 'self_attn.v_proj.bias'),
        ob: opt(c.oBias, p + 'self_attn.o_proj.bias'),
        postNorm: up(p + 'post_attention_layernorm.weight'),
        gate: up(p + 'mlp.gate_proj.weight'), up: up(p + 'mlp.up_proj.weight'), down: up(p + 'mlp.down_proj.weight'),
        gateb: opt(c.mlpBias, p + 'mlp.gate_proj.bias'), upb: opt(c.mlpBias, p + 'mlp.up_proj.bias'), downb: opt(c.mlpBias, p + 'mlp.down_proj.bias'),
      });
    }
    const embed = up('model.embed_tokens.weight');
    return { embed, layers, norm: up('model.norm.weight'), lmHead: c.tieWordEmbeddings ? embed : up('lm_head.weight') };
  }

  private releaseParams(p: ParamTensors): void {
    if (p.weights) {
      const w = p.weights;
      const all = [w.embed, w.norm, w.lmHead, ...w.layers.flatMap((l) => Object.values(l))];
      for (const t of new Set(all)) if (t) this.ops.dispose(t);
    }
    for (const { A, B } of p.lora.values()) {
      this.ops.dispose(A);
      this.ops.dispose(B);
    }
    for (const t of p.norms.values()) this.ops.dispose(t);
  }

  /** One optimizer step over the micro-batches; the loss is the mean CE over all their predicted tokens. */
  async trainStep(micro: Batch[]): Promise<StepResult> {
    if (micro.length === 0) fail('trainStep: no micro-batches given');
    const V = this.config.vocabSize;
    micro.forEach((b, i) => checkBatch(b, V, `micro-batch ${i}`));
    const targets = micro.map(shiftTargets);
    const tokens = targets.reduce((n, t) => n + countTargets(t), 0);
    if (tokens === 0) fail('trainStep: the batch has no predicted tokens (every shifted label is -100)');
    for (const p of this.params) p.grad.fill(0);
    const pt = this.uploadParams();
    const grads = new Map(this.params.map((p) => [p.name, p.grad]));
    let lossSum = 0;
    try {
      for (let i = 0; i < micro.length; i++) {
        const dropoutSeed = mixSeed(this.options.seed, this.step, i);
        const r = await this.pass.run(micro[i], targets[i], 1 / tokens, pt, {
          dropout: this.options.loraDropout, dropoutSeed, grads, trainMasses: this.options.trainMasses,
        });
        lossSum += r.lossSum;
        if (!Number.isFinite(lossSum)) fail(`training loss is ${lossSum} at step ${this.step + 1} (micro-batch ${i}): stopping; lower --lr or check the data`);
      }
    } finally {
      this.releaseParams(pt);
    }
    const loss = lossSum / tokens;
    const moduleGradNorms = this.moduleGradNorms();
    const gradNorm = clipGradNorm(this.params, this.options.maxGradNorm);
    if (!Number.isFinite(gradNorm)) fail(`gradient norm is ${gradNorm} at step ${this.step + 1}: stopping; lower --lr or check the data`);
    const lr = lrAt(this.step, this.options);
    this.optimizer.step(this.params, lr);
    this.step++;
    return { loss, tokens, gradNorm, lr, moduleGradNorms };
  }

  private moduleGradNorms(): Record<string, number> {
    const sq: Record<string, number> = {};
    for (const p of this.params) {
      const m = /^model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+?)(?:\.lora_[AB])?\.(?:weight|bias)$/.exec(p.name)
        ?? /^model\.layers\.(\d+)\.(input_layernorm|post_attention_layernorm)\.weight$/.exec(p.name);
      let key: string;
      if (m) key = `layers.${m[1]}.${m[2]}`;
      else if (p.name.endsWith('gravity_mass_log')) key = `layers.${p.name.split('.')[2]}.mass`;
      else key = p.name.replace(/^model\./, '').replace(/\.weight$/, '');
      let s = 0;
      for (const g of p.grad) s += g * g;
      sq[key] = (sq[key] ?? 0) + s;
    }
    for (const k of Object.keys(sq)) sq[k] = Math.sqrt(sq[k]);
    return sq;
  }

  /** Mean CE over the predicted tokens of all batches, no gradients, no dropout. */
  async evaluate(batches: Batch[]): Promise<{ loss: number; tokens: number }> {
    const pt = this.uploadParams();
    let lossSum = 0;
    let tokens = 0;
    try {
      for (const [i, b] of batches.entries()) {
        checkBatch(b, this.config.vocabSize, `eval batch ${i}`);
        const t = shiftTargets(b);
        tokens += countTargets(t);
        lossSum += (await this.pass.run(b, t, 1, pt, { dropout: 0, dropoutSeed: 0, grads: null, trainMasses: false })).lossSum;
      }
    } finally {
      this.releaseParams(pt);
    }
    return { loss: tokens ? lossSum / tokens : NaN, tokens };
  }

  /** Logits [B*T, V] of a batch with the current parameters (tests, forward checks). */
  async logits(b: Batch): Promise<Float64Array> {
    checkBatch(b, this.config.vocabSize);
    const pt = this.uploadParams();
    try {
      return await this.pass.logits(b, pt);
    } finally {
      this.releaseParams(pt);
    }
  }

  /** Gradient of a parameter from the last trainStep (after clipping), by name. */
  grad(name: string): ParamArray {
    const p = this.params.find((q) => q.name === name);
    if (!p) fail(`trainer: no trainable parameter "${name}"`);
    return p.grad;
  }

  /**
   * Writes a PEFT adapter (adapter_config.json + adapter_model.safetensors), the masses when trained
   * (gravity_mass_log.safetensors + .pt), and trainer_state.json + optimizer.safetensors for resume().
   */
  save(dir: string): void {
    fs.mkdirSync(dir, { recursive: true });
    const o = this.options;
    if (this.fullWeights) {
      saveFullModel(dir, {
        // a dot-product run's masses are the untrained ones it started with: leave them out, so converting the
        // model to gravity later asks for --mass-init instead of silently using random masses
        sourceDir: this.dir, config: this.config, masses: o.attention === 'dot' ? [] : this.massLog(), dtype: o.saveDtype ?? 'f32',
        weights: [...this.fullWeights].map(([name, w]) => ({ name, shape: w.shape, data: w.data })),
        attention: o.attention, eps: o.eps, massPerGroup: !!o.massPerGroup,
      });
    } else {
      const saved = new Map<string, HostTensor>();
      for (const [n, v] of this.norms) saved.set(n, { dtype: 'F32', shape: [v.length], data: Float32Array.from(v) });
      if (this.modules.length || saved.size) {
        writeAdapter(dir, this.modules, { r: o.loraR, alpha: o.loraAlpha, dropout: o.loraDropout, baseConfig: this.adapterConfig, baseModel: path.resolve(this.dir), saved });
      }
      if (o.trainMasses) saveMasses(dir, this.massLog());
    }
    const tensors = new Map<string, HostTensor>();
    // f32 masters stay f32 (a full run's optimizer file would double otherwise); f64 ones stay f64
    const t = (p: Param, a: ParamArray): HostTensor => (a instanceof Float32Array ? { dtype: 'F32', shape: p.shape, data: a } : { dtype: 'F64', shape: p.shape, data: Float64Array.from(a) });
    for (const p of this.params) {
      tensors.set(`param.${p.name}`, t(p, p.data));
      if (p.expAvg) tensors.set(`exp_avg.${p.name}`, t(p, p.expAvg));
      if (p.expAvgSq) tensors.set(`exp_avg_sq.${p.name}`, t(p, p.expAvgSq));
    }
    writeSafetensors(path.join(dir, OPTIM_FILE), tensors, { format: 'pt' });
    const state = {
      step: this.step,
      optimizer: this.optimizer.kind,
      optimizer_t: this.optimizer.t,
      params: this.params.map((p) => p.name),
      options: o,
      base_model: path.resolve(this.dir),
    };
    atomicWrite(path.join(dir, STATE_FILE), (tmp) => fs.writeFileSync(tmp, JSON.stringify(state, null, 2) + '\n'));
  }

  /** Continues a run saved by save(): parameters (f64), optimizer moments and the step count. */
  resume(dir: string): void {
    const sf = path.join(dir, STATE_FILE);
    if (!fs.existsSync(sf)) fail(`${dir}: no ${STATE_FILE} (not a folder written by a training run)`);
    let state: { step: number; optimizer: string; optimizer_t: number; params: string[] };
    try {
      state = JSON.parse(fs.readFileSync(sf, 'utf8'));
    } catch (e) {
      return fail(`${sf}: not valid JSON (${(e as Error).message})`);
    }
    if (state.optimizer !== this.optimizer.kind) fail(`${STATE_FILE}: the run used ${state.optimizer}, this trainer uses ${this.optimizer.kind}`);
    const f = openSafetensors(path.join(dir, OPTIM_FILE));
    try {
      for (const p of this.params) {
        const key = `param.${p.name}`;
        if (!f.tensors.has(key)) fail(`${OPTIM_FILE}: no "${key}": the saved run trained other parameters (${state.params.slice(0, 3).join(', ')}, ...)`);
        const load = (k: string): ParamArray => {
          const t = f.read(k);
          if (t.data.length !== p.data.length) fail(`${OPTIM_FILE}: tensor "${k}" has shape [${t.shape}], expected [${p.shape}]`);
          return p.data instanceof Float32Array ? Float32Array.from(toF32(t)) : Float64Array.from(toF64(t));
        };
        p.data.set(load(key));
        if (f.tensors.has(`exp_avg.${p.name}`)) p.expAvg = load(`exp_avg.${p.name}`);
        if (f.tensors.has(`exp_avg_sq.${p.name}`)) p.expAvgSq = load(`exp_avg_sq.${p.name}`);
      }
    } finally {
      f.close();
    }
    this.step = state.step;
    this.optimizer.t = state.optimizer_t;
  }
}

function toF64(t: HostTensor): Float64Array {
  // every stored float width is exactly representable in f32
  return t.dtype === 'F64' ? (t.data as Float64Array) : Float64Array.from(toF32(t));
}
