/**
 * Qwen2 / Llama decoder (one file per architecture family; Llama is Qwen2 without q/k/v bias, so it lives here
 * with the bias flags of ModelConfig). Embedding -> N x [RMSNorm, attention, residual, RMSNorm, SwiGLU MLP,
 * residual] -> RMSNorm -> lm_head. The attention score function comes from the registry in attention/.
 */
import type { Backend, Tensor } from '../backend/backend.js';
import type { AttentionKind } from '../backend/backend.js';
import { fail } from '../errors.js';
import type { HostTensor } from '../tensor/dtype.js';
import { attentionParams } from '../attention/registry.js';
import type { ModelConfig } from './config.js';
import type { CausalLM, ForwardOptions, Session, StreamPenalty, StreamSampling } from './types.js';
import { applyRepetitionPenalty, deviceDraws, drawToken, sample } from '../generate/sampling.js';

export interface LayerWeights {
  inputNorm: Tensor; // [C]
  q: Tensor; k: Tensor; v: Tensor; o: Tensor; // [Hq*D, C], [Hkv*D, C], [Hkv*D, C], [C, Hq*D]
  qb: Tensor | null; kb: Tensor | null; vb: Tensor | null; ob: Tensor | null;
  postNorm: Tensor; // [C]
  gate: Tensor; up: Tensor; down: Tensor; // [I, C], [I, C], [C, I]
  gateb: Tensor | null; upb: Tensor | null; downb: Tensor | null;
}

export interface ModelWeights {
  embed: Tensor; // [V, C]
  layers: LayerWeights[];
  norm: Tensor; // [C]
  lmHead: Tensor; // [V, C] (the embedding itself when tied)
}

/** The weights a config needs, in upload order, with the backend's layout hint (optional biases only when present). */
export function weightPlan(cfg: ModelConfig): { name: string; hint: 'linear' | 'other' }[] {
  const plan: { name: string; hint: 'linear' | 'other' }[] = [];
  const add = (name: string, hint: 'linear' | 'other', has = true) => {
    if (has) plan.push({ name, hint });
  };
  for (let i = 0; i < cfg.numLayers; i++) {
    const p = `model.layers.${i}.`;
    add(p + 'input_layernorm.weight', 'other');
    for (const n of ['q', 'k', 'v', 'o']) add(`${p}self_attn.${n}_proj.weight`, 'linear');
    for (const n of ['q', 'k', 'v']) add(`${p}self_attn.${n}_proj.bias`, 'other', cfg.qkvBias);
    add(p + 'self_attn.o_proj.bias', 'other', cfg.oBias);
    add(p + 'post_attention_layernorm.weight', 'other');
    for (const n of ['gate', 'up', 'down']) add(`${p}mlp.${n}_proj.weight`, 'linear');
    for (const n of ['gate', 'up', 'down']) add(`${p}mlp.${n}_proj.bias`, 'other', cfg.mlpBias);
  }
  add('model.embed_tokens.weight', 'other');
  add('model.norm.weight', 'other');
  add('lm_head.weight', 'linear', !cfg.tieWordEmbeddings);
  return plan;
}

/** The model's weight structure from uploaded tensors by HF name (see weightPlan). */
export function assembleWeights(cfg: ModelConfig, t: (name: string) => Tensor): ModelWeights {
  const opt = (has: boolean, name: string) => (has ? t(name) : null);
  const layers: LayerWeights[] = [];
  for (let i = 0; i < cfg.numLayers; i++) {
    const p = `model.layers.${i}.`;
    layers.push({
      inputNorm: t(p + 'input_layernorm.weight'),
      q: t(p + 'self_attn.q_proj.weight'),
      k: t(p + 'self_attn.k_proj.weight'),
      v: t(p + 'self_attn.v_proj.weight'),
      o: t(p + 'self_attn.o_proj.weight'),
      qb: opt(cfg.qkvBias, p + 'self_attn.q_proj.bias'),
      kb: opt(cfg.qkvBias, p + 'self_attn.k_proj.bias'),
      vb: opt(cfg.qkvBias, p + 'self_attn.v_proj.bias'),
      ob: opt(cfg.oBias, p + 'self_attn.o_proj.bias'),
      postNorm: t(p + 'post_attention_layernorm.weight'),
      gate: t(p + 'mlp.gate_proj.weight'),
      up: t(p + 'mlp.up_proj.weight'),
      down: t(p + 'mlp.down_proj.weight'),
      gateb: opt(cfg.mlpBias, p + 'mlp.gate_proj.bias'),
      upb: opt(cfg.mlpBias, p + 'mlp.up_proj.bias'),
      downb: opt(cfg.mlpBias, p + 'mlp.down_proj.bias'),
    });
  }
  const embed = t('model.embed_tokens.weight');
  return { embed, layers, norm: t('model.norm.weight'), lmHead: cfg.tieWordEmbeddings ? embed : t('lm_head.weight') };
}

/** Reads tensors by HF name and uploads them, one at a time; `get` is called once per name. */
/**
 * Uploads every weight the config needs. `getQ8` (GGUF files): a linear weight's raw Q8_0 blocks, which a backend
 * with uploadQ8 keeps at 8 bits (null: take `get`'s widened tensor).
 */
export function uploadWeights(
  be: Backend, cfg: ModelConfig, get: (name: string) => HostTensor, onTensor?: (name: string) => void,
  getQ8?: (name: string) => { blocks: Uint8Array; shape: [number, number] } | null,
): ModelWeights {
  const up = new Map<string, Tensor>();
  for (const { name, hint } of weightPlan(cfg)) {
    const q8 = hint === 'linear' && be.uploadQ8 && getQ8 ? getQ8(name) : null;
    up.set(name, q8 ? be.uploadQ8!(q8.blocks, q8.shape) : be.upload(get(name), hint));
    onTensor?.(name);
  }
  return assembleWeights(cfg, (n) => up.get(n)!);
}

class Qwen2Session implements Session {
  readonly positions: Int32Array;
  constructor(readonly batch: number, readonly maxLen: number, readonly cache: ReturnType<Backend['createKVCache']>) {
    this.positions = new Int32Array(batch);
  }
}

export class Qwen2Model implements CausalLM {
  attention: AttentionKind = 'gravity';
  eps = 0.1;
  constructor(
    readonly config: ModelConfig,
    readonly backend: Backend,
    readonly weights: ModelWeights,
    readonly massLog: Float32Array[],
  ) {}

  newSession(batch: number, maxLen: number): Session {
    const c = this.config;
    return new Qwen2Session(batch, maxLen, this.backend.createKVCache(c.numLayers, batch, maxLen, c.numKVHeads, c.headDim));
  }

  closeSession(session: Session): void {
    this.backend.dispose(session.cache);
  }

  async forward(session: Session, ids: number[][], opts: ForwardOptions = {}): Promise<Float32Array> {
    const be = this.backend;
    const c = this.config;
    const B = session.batch;
    if (ids.length !== B) fail(`forward: ${ids.length} sequences given to a session of batch ${B}`);
    const T = ids[0]?.length ?? 0;
    if (T === 0) fail('forward: no tokens given');
    const cache = session.cache;
    const start = cache.length;
    if (start + T > session.maxLen) fail(`context full: ${start + T} tokens > ${session.maxLen} (the session's limit)`);
    const flat = new Int32Array(B * T); // [B*T]
    const pos = new Int32Array(B * T); // [B*T]
    for (let b = 0; b < B; b++) {
      if (ids[b].length !== T) fail(`forward: sequence ${b} has ${ids[b].length} tokens, expected ${T} (pad to a rectangle)`);
      const mask = opts.attentionMask?.[b];
      for (let t = 0; t < T; t++) {
        const id = ids[b][t];
        if (!Number.isInteger(id) || id < 0 || id >= c.vocabSize) fail(`token id ${id} at position ${t} is out of the vocabulary (${c.vocabSize})`);
        flat[b * T + t] = id;
        const real = mask ? mask[t] !== 0 : true;
        cache.keyValid[b * session.maxLen + start + t] = real ? 1 : 0;
        // RoPE positions count real tokens only (as generate() does): padded rows then equal unpadded ones exactly
        pos[b * T + t] = real ? session.positions[b]++ : 0;
      }
    }

    const x = await this.layers(be.embedding(flat, this.weights.embed), pos, session, start, T, opts); // [B*T, C]
    let last = x;
    const mode = opts.logits ?? 'last';
    if (mode !== 'all') {
      const rows = new Int32Array(B);
      for (let b = 0; b < B; b++) rows[b] = b * T + T - 1;
      last = be.gatherRows(x, rows); // [B, C]
      be.dispose(x);
    }
    const logits = this.head(last); // [B or B*T, V]
    if (mode === 'argmax') {
      let ids: Int32Array;
      if (be.argmaxRows) ids = await be.argmaxRows(logits);
      else {
        const all = await be.read(logits); // [B, V]
        const V = c.vocabSize;
        ids = new Int32Array(B);
        for (let b = 0; b < B; b++) {
          let best = 0;
          for (let j = 0; j < V; j++) {
            const v = all[b * V + j];
            if (!Number.isFinite(v)) fail(`the logits hold ${v} (token ${j}): the model produced non-finite values (check the weights and masses)`);
            if (v > all[b * V + best]) best = j;
          }
          ids[b] = best;
        }
      }
      be.dispose(logits);
      return Float32Array.from(ids);
    }
    const out = await be.read(logits);
    be.dispose(logits);
    return out;
  }

  /** final RMSNorm and lm_head; consumes x [R, C], returns logits [R, V] */
  private head(x: Tensor): Tensor {
    const hn = this.backend.rmsnorm(x, this.weights.norm, this.config.rmsNormEps);
    this.backend.dispose(x);
    const logits = this.backend.linear(hn, this.weights.lmHead, null); // [R, V]
    this.backend.dispose(hn);
    return logits;
  }

  /**
   * Greedy decoding kept on the device: feeds `first` (one token per sequence), yields the argmax ids of each
   * step. With a backend that has argmaxDevice/embeddingDevice/readIds, the next step's kernels are recorded while
   * the previous ids are still being read back (`lookahead` steps in flight), so the GPU never waits for the host.
   * When the caller stops (return()), the session is rolled back to exactly what a step-by-step loop would hold:
   * `first` and every yielded id but the last, fed; the steps computed ahead are forgotten.
   */
  greedyStream(session: Session, first: readonly number[], lookahead = 3, penalty?: StreamPenalty): AsyncGenerator<Int32Array, void, void> {
    const be = this.backend;
    const pen = this.penaltyState(session, penalty);
    if (!pen) {
      const pick = be.argmaxDevice ? (logits: Tensor) => be.argmaxDevice!(logits) : null;
      return this.deviceStream(session, first, 'greedyStream', pick, async (ids) => Int32Array.from(await this.forward(session, ids, { logits: 'argmax' })), lookahead);
    }
    const pick = be.argmaxDevice && pen.device ? (logits: Tensor, fed: Tensor | null) => be.argmaxDevice!(pen.apply(logits, fed)) : null;
    const host = (ids: number[][]) => this.hostDraws(session, ids, pen, (row) => sample(row, { temperature: 0 }));
    return this.withCleanup(this.deviceStream(session, first, 'greedyStream', pick, host, lookahead), pen.dispose);
  }

  /**
   * A stream's repetition penalty: on the device, a mask of seen ids (made at the first step from the histories, then
   * marked with each step's fed ids); on the host, the histories themselves, extended with each draw.
   */
  private penaltyState(session: Session, penalty?: StreamPenalty) {
    if (!penalty || penalty.value === 1) return null;
    const be = this.backend;
    const value = penalty.value;
    if (!(value > 0 && Number.isFinite(value))) fail(`repetition penalty must be > 0, got ${value}`);
    if (penalty.history.length !== session.batch) fail(`repetition penalty: ${penalty.history.length} histories for a batch of ${session.batch}`);
    const hist = penalty.history.map((h) => h.slice());
    let seen: Tensor | null = null;
    return {
      value,
      hist,
      device: !!(be.seenMaskDevice && be.penalizeDevice),
      apply: (logits: Tensor, fed: Tensor | null): Tensor => {
        seen ??= be.seenMaskDevice!(this.config.vocabSize, hist);
        be.penalizeDevice!(logits, seen, fed, value);
        return logits;
      },
      dispose: () => {
        if (seen) be.dispose(seen);
        seen = null;
      },
    };
  }

  /** a host step of a stream: each row's logits (penalised by its history, which records the draw) drawn */
  private async hostDraws(session: Session, ids: number[][], pen: ReturnType<Qwen2Model['penaltyState']>, draw: (row: Float32Array, b: number) => number): Promise<Int32Array> {
    const logits = await this.forward(session, ids, { logits: 'last' }); // [B, V]
    const V = this.config.vocabSize;
    return Int32Array.from({ length: session.batch }, (_, b) => {
      if (!pen) return draw(logits.subarray(b * V, (b + 1) * V), b);
      const row = logits.slice(b * V, (b + 1) * V);
      applyRepetitionPenalty(row, pen.value, pen.hist[b]);
      const id = draw(row, b);
      pen.hist[b].push(id);
      return id;
    });
  }

  private async *withCleanup<T>(gen: AsyncGenerator<T, void, void>, cleanup: () => void): AsyncGenerator<T, void, void> {
    try {
      yield* gen;
    } finally {
      cleanup();
    }
  }

  /**
   * Sampling kept on the device, as greedyStream: each step's token of row b is the draw of sampleDevice with
   * u = random() (one call per row and step, in step order, also for the steps computed ahead), at a temperature and
   * with optional top-k / top-p / min-p. Without device sampling (or for filters it does not take, see deviceDraws),
   * the logits come to the host and the same draw is made there (drawToken).
   */
  sampleStream(session: Session, first: readonly number[], sampling: number | StreamSampling, random: () => number, lookahead = 3, penalty?: StreamPenalty): AsyncGenerator<Int32Array, void, void> {
    const be = this.backend;
    const { temperature, ...filters } = typeof sampling === 'number' ? { temperature: sampling } : sampling;
    if (!(temperature > 0 && Number.isFinite(temperature))) fail(`sampleStream: temperature must be > 0, got ${temperature}`);
    const B = session.batch;
    const draws = () => Array.from({ length: B }, random);
    const pen = this.penaltyState(session, penalty);
    // the device takes f32 uniforms, kept below 1 (the host path uses the float64 draws as the CPU sampler does);
    // filters it cannot apply (top-p / min-p without top-k) take the host path
    const pick = be.sampleDevice && deviceDraws(filters, this.config.vocabSize) && (!pen || pen.device)
      ? (logits: Tensor, fed: Tensor | null) => be.sampleDevice!(pen ? pen.apply(logits, fed) : logits, temperature, Float32Array.from(draws(), (u) => Math.min(u, 0.99999994)), filters)
      : null;
    const host = (ids: number[][]) => {
      const u = draws();
      return this.hostDraws(session, ids, pen, (row, b) => drawToken(row, temperature, u[b], filters));
    };
    const gen = this.deviceStream(session, first, 'sampleStream', pick, host, lookahead);
    return pen ? this.withCleanup(gen, pen.dispose) : gen;
  }

  private async *deviceStream(
    session: Session, first: readonly number[], what: string, pick: ((logits: Tensor, fed: Tensor | null) => Tensor) | null,
    host: (ids: number[][]) => Promise<Int32Array>, lookahead: number,
  ): AsyncGenerator<Int32Array, void, void> {
    const be = this.backend;
    const B = session.batch;
    if (first.length !== B) fail(`${what}: ${first.length} tokens given to a session of batch ${B}`);
    const cache = session.cache;
    const start0 = cache.length;
    const pos0 = session.positions.slice();
    let consumed = 0;
    if (!pick || !be.embeddingDevice || !be.readIds) {
      try {
        let ids: Int32Array = Int32Array.from(first);
        for (;;) {
          ids = await host([...ids].map((t) => [t]));
          consumed++;
          yield ids;
        }
      } finally {
        this.rollback(session, start0, pos0, consumed);
      }
    }
    const inflight: Promise<Int32Array>[] = [];
    let idT: Tensor | null = null;
    try {
      for (;;) {
        if (cache.length < session.maxLen) {
          const fed: number[][] | Tensor = idT ?? first.map((t) => [t]);
          const next = await this.deviceStep(session, fed, pick);
          if (idT) be.dispose(idT); // the pool hands it out again only to work recorded after this step's read
          idT = next;
          const p = be.readIds(next);
          p.catch(() => {}); // a step computed ahead may never be awaited
          inflight.push(p);
          if (inflight.length < lookahead) continue;
        } else if (inflight.length === 0) fail(`context full: ${cache.length + 1} tokens > ${session.maxLen} (the session's limit)`);
        const ids = await inflight.shift()!;
        consumed++;
        yield ids;
      }
    } finally {
      if (idT) be.dispose(idT);
      this.rollback(session, start0, pos0, consumed);
    }
  }

  private rollback(session: Session, start0: number, pos0: Int32Array, consumed: number): void {
    session.cache.length = Math.min(session.cache.length, start0 + consumed);
    for (let b = 0; b < session.batch; b++) session.positions[b] = pos0[b] + consumed;
  }

  /** one decode step whose input ids are host ids or the device tensor of the previous step; returns its argmax tensor */
  private async deviceStep(session: Session, ids: number[][] | Tensor, pick: (logits: Tensor, fed: Tensor | null) => Tensor): Promise<Tensor> {
    const be = this.backend;
    const B = session.batch;
    const cache = session.cache;
    const start = cache.length;
    const pos = new Int32Array(B); // [B]
    for (let b = 0; b < B; b++) {
      cache.keyValid[b * session.maxLen + start] = 1;
      pos[b] = session.positions[b]++;
    }
    const x0 = Array.isArray(ids) ? be.embedding(Int32Array.from(ids, (r) => r[0]), this.weights.embed) : be.embeddingDevice!(ids, this.weights.embed);
    const x = await this.layers(x0, pos, session, start, 1, {}); // [B, C]
    const logits = this.head(x); // [B, V]
    const next = pick(logits, Array.isArray(ids) ? null : ids); // [B] on the device
    be.dispose(logits);
    return next;
  }

  /** the decoder layers on x [B*T, C] (consumed) for slots [start, start + T); sets the cache length */
  private async layers(x: Tensor, pos: Int32Array, session: Session, start: number, T: number, opts: ForwardOptions): Promise<Tensor> {
    const be = this.backend;
    const c = this.config;
    const cache = session.cache;
    if (be.fused) x = await this.fusedLayers(x, pos, session, start, T, opts);
    else for (let l = 0; l < c.numLayers; l++) {
      const w = this.weights.layers[l];
      const h = be.rmsnorm(x, w.inputNorm, c.rmsNormEps); // [B*T, C]
      const q0 = be.linear(h, w.q, w.qb); // [B*T, Hq*D]
      const k0 = be.linear(h, w.k, w.kb); // [B*T, Hkv*D]
      const v = be.linear(h, w.v, w.vb); // [B*T, Hkv*D]
      be.dispose(h);
      const q = be.rope(q0, pos, c.numHeads, c.headDim, c.ropeTheta);
      const k = be.rope(k0, pos, c.numKVHeads, c.headDim, c.ropeTheta);
      be.dispose(q0);
      be.dispose(k0);
      be.writeKV(cache, l, k, v, start, T);
      be.dispose(k);
      be.dispose(v);
      const p = attentionParams(this.attention, c, this.massLog[l], this.eps);
      if (opts.attentionMaps) opts.attentionMaps.push(await be.attentionProbs(q, cache, l, start, T, p));
      const a = be.attention(q, cache, l, start, T, p); // [B*T, Hq*D]
      be.dispose(q);
      const o = be.linear(a, w.o, w.ob); // [B*T, C]
      be.dispose(a);
      const x1 = be.add(x, o);
      be.dispose(x);
      be.dispose(o);
      const h2 = be.rmsnorm(x1, w.postNorm, c.rmsNormEps);
      const g = be.linear(h2, w.gate, w.gateb); // [B*T, I]
      const u = be.linear(h2, w.up, w.upb); // [B*T, I]
      be.dispose(h2);
      const m = be.swiglu(g, u);
      be.dispose(g);
      be.dispose(u);
      const d = be.linear(m, w.down, w.downb); // [B*T, C]
      be.dispose(m);
      x = be.add(x1, d);
      be.dispose(x1);
      be.dispose(d);
    }
    cache.length = start + T;
    return x;
  }

  /**
   * The decoder layers through the backend's fused ops (same results, fewer kernel launches): each RMSNorm goes
   * with the projections that read it (q/k/v + RoPE + KV write; gate/up + SwiGLU), each residual add with the
   * projection whose output it adds (o, down). Returns x [B*T, C].
   */
  private async fusedLayers(x: Tensor, pos: Int32Array, session: Session, start: number, T: number, opts: ForwardOptions): Promise<Tensor> {
    const be = this.backend;
    const f = be.fused!;
    const c = this.config;
    const eps = c.rmsNormEps;
    for (let l = 0; l < c.numLayers; l++) {
      const w = this.weights.layers[l];
      const q = f.qkvRope(x, w, pos, c.ropeTheta, c.numHeads, session.cache, l, start, T, { w: w.inputNorm, eps }); // [B*T, Hq*D]
      const p = attentionParams(this.attention, c, this.massLog[l], this.eps);
      if (opts.attentionMaps) opts.attentionMaps.push(await be.attentionProbs(q, session.cache, l, start, T, p));
      const x1 = f.attentionOut(q, session.cache, l, start, T, p, w.o, w.ob, x); // [B*T, C]
      be.dispose(q);
      be.dispose(x);
      const m = f.gateUp(x1, w.gate, w.gateb, w.up, w.upb, { w: w.postNorm, eps }); // [B*T, I]
      x = f.linearAdd(m, w.down, w.downb, x1); // [B*T, C]
      be.dispose(m);
      be.dispose(x1);
    }
    return x;
  }

  dispose(): void {
    const seen = new Set<Tensor>();
    const drop = (t: Tensor | null) => {
      if (t && !seen.has(t)) {
        seen.add(t);
        this.backend.dispose(t);
      }
    };
    for (const l of this.weights.layers) for (const t of Object.values(l)) drop(t as Tensor | null);
    drop(this.weights.embed);
    drop(this.weights.norm);
    drop(this.weights.lmHead);
  }
}
