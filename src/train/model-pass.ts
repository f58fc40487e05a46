/**
 * One forward + backward pass of the Qwen2/Llama decoder over TrainOps, with LoRA branches on the targeted
 * projections, trainable masses and norms. Every op's saved activations are kept per layer until its
 * backward ran; the head (final norm, lm_head, cross-entropy) runs in row chunks so [N, vocab] logits never
 * exist at once. Positions are 0..T-1 in every sequence (pad on the right, labels -100 there).
 *
 * Full-parameter training: the step's trainable copies of every base weight come in ParamTensors.weights;
 * a weight, bias, norm, embedding or lm_head gets a gradient when o.grads has an entry under its Hugging Face
 * name (a tied lm_head adds its gradient to model.embed_tokens.weight, beside the embedding's own).
 */
import type { AttentionKind, Tensor } from '../backend/backend.js';
import type { TrainAttentionParams, TrainOps } from '../backend/train-ops.js';
import type { ModelConfig } from '../model/config.js';
import type { LayerWeights, ModelWeights } from '../model/qwen2.js';
import { massName } from '../io/masses.js';
import { LORA_TARGETS, type LoraModule, type LoraTarget } from './lora.js';
import type { Batch } from './loss.js';

export interface ParamTensors {
  lora: Map<string, { A: Tensor; B: Tensor }>;
  /** full-parameter training: this step's trainable weights (replacing the frozen ones) */
  weights?: ModelWeights;
  /** trainable or adapter-provided norms by model tensor name; others come from the frozen weights */
  norms: Map<string, Tensor>;
  /** raw mass_log per layer: [numHeads], or [numKVHeads] with one mass per KV group */
  masses: Float64Array[];
}

export type GradArray = Float32Array | Float64Array;

export interface PassOptions {
  dropout: number;
  dropoutSeed: number;
  /** gradients to accumulate into, by parameter name; null = forward only */
  grads: Map<string, GradArray> | null;
  trainMasses: boolean;
}

interface LoraSave {
  mod: LoraModule;
  A: Tensor;
  B: Tensor;
  /** the LoRA branch input: x, or x∘mask with dropout (then owned here) */
  xin: Tensor;
  mask: Tensor | null;
  u: Tensor; // [N, r]
}

interface LayerSave {
  x: Tensor; h: Tensor; rstd1: Tensor;
  q: Tensor; k: Tensor; v: Tensor; att: Tensor; lse: Tensor;
  x1: Tensor; h2: Tensor; rstd2: Tensor; g: Tensor; u: Tensor; m: Tensor;
  lora: LoraSave[];
}

/** rows of the head per chunk: keeps a chunk's logits near 4M values */
const HEAD_CHUNK_VALUES = 1 << 22;

function modulePath(layer: number, target: LoraTarget): string {
  const part = target === 'gate_proj' || target === 'up_proj' || target === 'down_proj' ? 'mlp' : 'self_attn';
  return `model.layers.${layer}.${part}.${target}`;
}

export class ModelPass {
  private readonly byKey = new Map<string, LoraModule>();

  /** the weights of the pass in progress: frozen ones, or the step's trainable copies */
  private w: ModelWeights;

  constructor(
    readonly ops: TrainOps,
    readonly cfg: ModelConfig,
    /** frozen weights (null when every weight is trainable: they come with each call's ParamTensors) */
    private readonly frozen: ModelWeights | null,
    modules: LoraModule[],
    readonly attention: AttentionKind,
    readonly eps: number,
  ) {
    for (const m of modules) this.byKey.set(`${m.layer}.${m.target}`, m);
    this.w = frozen as ModelWeights;
  }

  private use(pt: ParamTensors): void {
    const w = pt.weights ?? this.frozen;
    if (!w) throw new Error('model pass: no weights (full training passes them with the parameters)');
    this.w = w;
  }

  /** mass_log per query head: a layer with one mass per KV group repeats it over the group's heads */
  private headMasses(layer: number, masses: Float64Array[]): Float64Array {
    const c = this.cfg;
    const m = masses[layer];
    if (m.length === c.numHeads) return m;
    const g = c.numHeads / c.numKVHeads;
    const out = new Float64Array(c.numHeads);
    for (let h = 0; h < c.numHeads; h++) out[h] = m[Math.floor(h / g)];
    return out;
  }

  private attnParams(layer: number, masses: Float64Array[]): TrainAttentionParams {
    const c = this.cfg;
    return {
      kind: this.attention, numHeads: c.numHeads, numKVHeads: c.numKVHeads, headDim: c.headDim,
      massLog: this.attention !== 'dot' ? this.headMasses(layer, masses) : null, eps: this.eps, scale: 1 / Math.sqrt(c.headDim),
    };
  }

  private norm(name: string, frozen: Tensor, pt: ParamTensors): Tensor {
    return pt.norms.get(name) ?? frozen;
  }

  /** y = x Wᵀ + b (+ scaling · B A dropout(x)) */
  private proj(x: Tensor, layer: number, target: LoraTarget, w: Tensor, b: Tensor | null, pt: ParamTensors, o: PassOptions, saves: LoraSave[] | null): Tensor {
    const ops = this.ops;
    const y = ops.linear(x, w, b);
    const mod = this.byKey.get(`${layer}.${target}`);
    if (!mod) return y;
    const { A, B } = pt.lora.get(mod.path)!;
    let mask: Tensor | null = null;
    let xin = x;
    if (o.dropout > 0) {
      mask = ops.dropoutMask([...x.shape], o.dropout, (o.dropoutSeed ^ Math.imul(layer * 8 + LORA_TARGETS.indexOf(target) + 1, 0x9e3779b1)) >>> 0);
      xin = ops.mul(x, mask);
    }
    const u = ops.linear(xin, A, null); // [N, r]
    const l = ops.linear(u, B, null); // [N, out]
    const out = ops.addScaled(y, l, mod.scaling);
    ops.dispose(y);
    ops.dispose(l);
    if (saves) saves.push({ mod, A, B, xin, mask, u });
    else {
      ops.dispose(u);
      if (mask) {
        ops.dispose(mask);
        ops.dispose(xin);
      }
    }
    return out;
  }

  /**
   * dx of a projection (W plus its LoRA branch); LoRA factor gradients go into o.grads, and so do W's and its
   * bias's when they are trainable (full training; `x` is the projection's input).
   */
  private async projBack(dy: Tensor, layer: number, target: LoraTarget, w: Tensor, x: Tensor, saves: LoraSave[], o: PassOptions): Promise<Tensor> {
    const ops = this.ops;
    const dx = ops.linearBackwardInput(dy, w);
    const name = modulePath(layer, target);
    if (o.grads?.has(`${name}.weight`)) await this.accumulate(o, `${name}.weight`, ops.linearBackwardWeight(dy, x), 1);
    const db = o.grads?.get(`${name}.bias`);
    if (db) {
      // db = Σ_n dy[n, :]
      const v = await ops.read(dy);
      const OUT = db.length;
      for (let n = 0; n < v.length / OUT; n++) for (let j = 0; j < OUT; j++) db[j] += v[n * OUT + j];
    }
    const s = saves.find((z) => z.mod.layer === layer && z.mod.target === target);
    if (!s) return dx;
    const sc = s.mod.scaling;
    const dB = ops.linearBackwardWeight(dy, s.u); // [out, r]
    const du = ops.linearBackwardInput(dy, s.B); // [N, r]
    const dA = ops.linearBackwardWeight(du, s.xin); // [r, in]
    let dxl = ops.linearBackwardInput(du, s.A); // [N, in]
    if (s.mask) {
      const t = ops.mul(dxl, s.mask);
      ops.dispose(dxl);
      dxl = t;
    }
    const out = ops.addScaled(dx, dxl, sc);
    for (const t of [dx, dxl, du]) ops.dispose(t);
    await this.accumulate(o, `${s.mod.path}.lora_A.weight`, dA, sc);
    await this.accumulate(o, `${s.mod.path}.lora_B.weight`, dB, sc);
    return out;
  }

  private async accumulate(o: PassOptions, name: string, t: Tensor, scale: number): Promise<void> {
    const g = o.grads?.get(name);
    if (g) {
      const v = await this.ops.read(t);
      for (let i = 0; i < g.length; i++) g[i] += scale * v[i];
    }
    this.ops.dispose(t);
  }

  private forwardLayer(x: Tensor, l: number, pos: Int32Array, B: number, T: number, pt: ParamTensors, o: PassOptions, keep: boolean): { y: Tensor; save: LayerSave | null } {
    const ops = this.ops;
    this.use(pt);
    const c = this.cfg;
    const w: LayerWeights = this.w.layers[l];
    const saves: LoraSave[] | null = keep ? [] : null;
    const pre = `model.layers.${l}.`;
    const n1 = ops.rmsnorm(x, this.norm(pre + 'input_layernorm.weight', w.inputNorm, pt), c.rmsNormEps);
    const q0 = this.proj(n1.y, l, 'q_proj', w.q, w.qb, pt, o, saves); // [N, Hq*D]
    const k0 = this.proj(n1.y, l, 'k_proj', w.k, w.kb, pt, o, saves); // [N, Hkv*D]
    const v = this.proj(n1.y, l, 'v_proj', w.v, w.vb, pt, o, saves); // [N, Hkv*D]
    const q = ops.rope(q0, pos, c.numHeads, c.headDim, c.ropeTheta);
    const k = ops.rope(k0, pos, c.numKVHeads, c.headDim, c.ropeTheta);
    ops.dispose(q0);
    ops.dispose(k0);
    const { out: att, lse } = ops.attentionForwardTrain(q, k, v, B, T, this.attnParams(l, pt.masses));
    const ao = this.proj(att, l, 'o_proj', w.o, w.ob, pt, o, saves); // [N, C]
    const x1 = ops.addScaled(x, ao, 1);
    ops.dispose(ao);
    const n2 = ops.rmsnorm(x1, this.norm(pre + 'post_attention_layernorm.weight', w.postNorm, pt), c.rmsNormEps);
    const g = this.proj(n2.y, l, 'gate_proj', w.gate, w.gateb, pt, o, saves); // [N, I]
    const u = this.proj(n2.y, l, 'up_proj', w.up, w.upb, pt, o, saves); // [N, I]
    const m = ops.swiglu(g, u);
    const d = this.proj(m, l, 'down_proj', w.down, w.downb, pt, o, saves); // [N, C]
    const y = ops.addScaled(x1, d, 1);
    ops.dispose(d);
    if (keep) {
      return { y, save: { x, h: n1.y, rstd1: n1.rstd, q, k, v, att, lse, x1, h2: n2.y, rstd2: n2.rstd, g, u, m, lora: saves! } };
    }
    for (const t of [n1.y, n1.rstd, q, k, v, att, lse, x1, n2.y, n2.rstd, g, u, m]) ops.dispose(t);
    return { y, save: null };
  }

  private async backwardLayer(dy: Tensor, l: number, s: LayerSave, pos: Int32Array, B: number, T: number, pt: ParamTensors, o: PassOptions): Promise<Tensor> {
    const ops = this.ops;
    const c = this.cfg;
    const w = this.w.layers[l];
    const pre = `model.layers.${l}.`;
    // MLP
    const dm = await this.projBack(dy, l, 'down_proj', w.down, s.m, s.lora, o);
    const { dgate, dup } = ops.swigluBackward(dm, s.g, s.u);
    ops.dispose(dm);
    const dh2a = await this.projBack(dgate, l, 'gate_proj', w.gate, s.h2, s.lora, o);
    const dh2b = await this.projBack(dup, l, 'up_proj', w.up, s.h2, s.lora, o);
    const dh2 = ops.addScaled(dh2a, dh2b, 1);
    for (const t of [dgate, dup, dh2a, dh2b]) ops.dispose(t);
    const postName = pre + 'post_attention_layernorm.weight';
    const r2 = ops.rmsnormBackward(dh2, s.x1, this.norm(postName, w.postNorm, pt), s.rstd2);
    ops.dispose(dh2);
    await this.accumulate(o, postName, r2.dw, 1);
    const dx1 = ops.addScaled(dy, r2.dx, 1);
    ops.dispose(r2.dx);
    // attention
    const datt = await this.projBack(dx1, l, 'o_proj', w.o, s.att, s.lora, o);
    const p = this.attnParams(l, pt.masses);
    const ga = ops.attentionBackward(datt, s.q, s.k, s.v, s.att, s.lse, B, T, p);
    ops.dispose(datt);
    if (ga.dMassLog) {
      const g = o.grads?.get(massName(l));
      if (g) {
        // one mass per KV group: its gradient is the sum over the group's query heads
        const v = await ops.read(ga.dMassLog);
        const per = v.length / g.length;
        for (let h = 0; h < v.length; h++) g[Math.floor(h / per)] += v[h];
      }
      ops.dispose(ga.dMassLog);
    }
    const dq0 = ops.ropeBackward(ga.dq, pos, c.numHeads, c.headDim, c.ropeTheta);
    const dk0 = ops.ropeBackward(ga.dk, pos, c.numKVHeads, c.headDim, c.ropeTheta);
    ops.dispose(ga.dq);
    ops.dispose(ga.dk);
    const dha = await this.projBack(dq0, l, 'q_proj', w.q, s.h, s.lora, o);
    const dhb = await this.projBack(dk0, l, 'k_proj', w.k, s.h, s.lora, o);
    const dhc = await this.projBack(ga.dv, l, 'v_proj', w.v, s.h, s.lora, o);
    const dhab = ops.addScaled(dha, dhb, 1);
    const dh = ops.addScaled(dhab, dhc, 1);
    for (const t of [dq0, dk0, ga.dv, dha, dhb, dhc, dhab]) ops.dispose(t);
    const inName = pre + 'input_layernorm.weight';
    const r1 = ops.rmsnormBackward(dh, s.x, this.norm(inName, w.inputNorm, pt), s.rstd1);
    ops.dispose(dh);
    await this.accumulate(o, inName, r1.dw, 1);
    const dx = ops.addScaled(dx1, r1.dx, 1);
    ops.dispose(dx1);
    ops.dispose(r1.dx);
    return dx;
  }

  private releaseLayer(s: LayerSave): void {
    const ops = this.ops;
    // x is the previous layer's output (or the embedding): released by its owner
    for (const t of [s.h, s.rstd1, s.q, s.k, s.v, s.att, s.lse, s.x1, s.h2, s.rstd2, s.g, s.u, s.m]) ops.dispose(t);
    for (const z of s.lora) {
      ops.dispose(z.u);
      if (z.mask) {
        ops.dispose(z.mask);
        ops.dispose(z.xin);
      }
    }
  }

  private positions(B: number, T: number): Int32Array {
    const pos = new Int32Array(B * T);
    for (let b = 0; b < B; b++) for (let t = 0; t < T; t++) pos[b * T + t] = t;
    return pos;
  }

  /**
   * Forward, cross-entropy (dlogits scaled by `scale`) and, when o.grads is given, the backward pass.
   * Returns the sum of the per-token losses (f64).
   */
  async run(batch: Batch, targets: Int32Array, scale: number, pt: ParamTensors, o: PassOptions): Promise<{ lossSum: number }> {
    const ops = this.ops;
    const c = this.cfg;
    const { B, T } = batch;
    const N = B * T;
    const pos = this.positions(B, T);
    const train = o.grads !== null;
    this.use(pt);
    const embedName = 'model.embed_tokens.weight';
    const headName = c.tieWordEmbeddings ? embedName : 'lm_head.weight';
    const headGrad = train && o.grads!.has(headName);
    const po: PassOptions = train ? o : { ...o, dropout: 0 };
    const xs: Tensor[] = [ops.embedding(batch.ids, this.w.embed)]; // [N, C]
    const saves: LayerSave[] = [];
    for (let l = 0; l < c.numLayers; l++) {
      const { y, save } = this.forwardLayer(xs[l], l, pos, B, T, pt, po, train);
      if (save) saves.push(save);
      else ops.dispose(xs[l]);
      xs.push(y);
    }
    const xN = xs[c.numLayers];
    const normName = 'model.norm.weight';
    const fn = ops.rmsnorm(xN, this.norm(normName, this.w.norm, pt), c.rmsNormEps);
    const V = c.vocabSize;
    const chunk = Math.max(1, Math.floor(HEAD_CHUNK_VALUES / V));
    let lossSum = 0;
    const dparts: Tensor[] = [];
    for (let r0 = 0; r0 < N; r0 += chunk) {
      const n = Math.min(chunk, N - r0);
      const hc = chunk >= N ? fn.y : ops.sliceRows(fn.y, r0, n);
      const logits = ops.linear(hc, this.w.lmHead, null); // [n, V]
      const ce = ops.crossEntropy(logits, targets.subarray(r0, r0 + n), scale);
      for (const v of await ops.read(ce.loss)) lossSum += v;
      if (train) dparts.push(ops.linearBackwardInput(ce.dlogits, this.w.lmHead)); // [n, C]
      if (headGrad) await this.accumulate(o, headName, ops.linearBackwardWeight(ce.dlogits, hc), 1); // [V, C]
      for (const t of [logits, ce.loss, ce.dlogits]) ops.dispose(t);
      if (hc !== fn.y) ops.dispose(hc);
    }
    if (!train) {
      for (const t of [fn.y, fn.rstd, xN]) ops.dispose(t);
      return { lossSum };
    }
    const dhn = dparts.length === 1 ? dparts[0] : ops.concatRows(dparts);
    if (dparts.length > 1) for (const t of dparts) ops.dispose(t);
    const rf = ops.rmsnormBackward(dhn, xN, this.norm(normName, this.w.norm, pt), fn.rstd);
    for (const t of [dhn, fn.y, fn.rstd]) ops.dispose(t);
    await this.accumulate(o, normName, rf.dw, 1);
    let dx = rf.dx;
    for (let l = c.numLayers - 1; l >= 0; l--) {
      const s = saves[l];
      const dnext = await this.backwardLayer(dx, l, s, pos, B, T, pt, o);
      ops.dispose(dx);
      this.releaseLayer(s);
      ops.dispose(xs[l + 1]);
      dx = dnext;
    }
    const ge = o.grads!.get(embedName);
    if (ge) {
      // scatter-add the rows of dx into the table's gradient (no [V, C] temporary)
      const C = c.hiddenSize;
      const v = await ops.read(dx);
      for (let n = 0; n < N; n++) {
        const row = batch.ids[n] * C;
        for (let i = 0; i < C; i++) ge[row + i] += v[n * C + i];
      }
    }
    ops.dispose(dx);
    ops.dispose(xs[0]);
    return { lossSum };
  }

  /** logits [B*T, V] (no gradients) */
  async logits(batch: Batch, pt: ParamTensors): Promise<Float64Array> {
    const ops = this.ops;
    const c = this.cfg;
    const pos = this.positions(batch.B, batch.T);
    const o: PassOptions = { dropout: 0, dropoutSeed: 0, grads: null, trainMasses: false };
    this.use(pt);
    let x = ops.embedding(batch.ids, this.w.embed);
    for (let l = 0; l < c.numLayers; l++) {
      const { y } = this.forwardLayer(x, l, pos, batch.B, batch.T, pt, o, false);
      ops.dispose(x);
      x = y;
    }
    const fn = ops.rmsnorm(x, this.norm('model.norm.weight', this.w.norm, pt), c.rmsNormEps);
    const logits = ops.linear(fn.y, this.w.lmHead, null);
    const out = await ops.read(logits);
    for (const t of [x, fn.y, fn.rstd, logits]) ops.dispose(t);
    return out;
  }
}
