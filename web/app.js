// The page's logic: load a model folder over HTTP with the browser build (gravity.js), stream generated text.
// window.gravity exposes the same steps for scripted use (the browser test drives the page through it).
import { loadGgufFrom, loadModelFrom, urlFiles, generateStream } from './gravity.js';

const $ = (id) => document.getElementById(id);
let model = null;
let stopped = false;

function status(text, error = false) {
  $('status').textContent = text;
  $('status').className = error ? 'err' : '';
}

async function load(opts = {}) {
  const url = opts.model ?? $('model').value;
  const device = opts.device ?? $('device').value;
  const attention = opts.attention ?? ($('attention').value || undefined);
  model?.dispose?.();
  model = null;
  $('go').disabled = true;
  status(`loading ${url} …`);
  const t0 = performance.now();
  const href = new URL(url, location.href).href;
  const lopts = {
    device,
    attention,
    label: url,
    onProgress: (done, total) => { if (done % 16 === 0 || done === total) status(`loading ${url}: ${done}/${total} tensors`); },
  };
  // a folder (config.json, safetensors, ...) or one GGUF file
  model = await (/\.gguf$/i.test(new URL(href).pathname) ? loadGgufFrom(href, lopts) : loadModelFrom(urlFiles(href), lopts));
  const c = model.config;
  status(`${url}: ${c.numLayers} layers × ${c.hiddenSize}, ${model.attention} attention, on ${model.device} (${((performance.now() - t0) / 1000).toFixed(1)} s)`);
  $('go').disabled = false;
  return { device: model.device, attention: model.attention, layers: c.numLayers };
}

/** prompt ids: through the chat template when asked and available, as `gravity generate` does */
function promptIds(text, chat) {
  const tok = model.tokenizer;
  if (!tok) throw new Error('this model has no tokenizer.json');
  if (chat && tok.hasChatTemplate) {
    const eos = new Set(model.eosTokenIds);
    const id = tok.eosToken !== null ? tok.tokenToId(tok.eosToken) : undefined;
    if (id !== undefined && id < model.config.vocabSize) eos.add(id);
    return { ids: tok.encode(tok.applyChatTemplate([{ role: 'user', content: text }]), { addSpecialTokens: false }), eos: [...eos] };
  }
  return { ids: tok.encode(text), eos: model.eosTokenIds };
}

async function run(opts = {}) {
  if (!model) throw new Error('load a model first');
  const text = opts.prompt ?? $('prompt').value;
  const { ids, eos } = opts.ids ? { ids: opts.ids, eos: model.eosTokenIds } : promptIds(text, opts.chat ?? $('chat').checked);
  const temperature = opts.temperature ?? Number($('temp').value);
  const maxTokens = opts.maxTokens ?? Number($('max').value);
  const topK = opts.topK ?? Number($('topk').value);
  const topP = opts.topP ?? Number($('topp').value);
  const seed = opts.seed ?? Number($('seed').value);
  $('out').textContent = '';
  $('go').disabled = true;
  $('stop').disabled = false;
  stopped = false;
  const it = generateStream(model, ids, { maxTokens, temperature, topK, topP, seed, eosTokenIds: eos, tokenizer: model.tokenizer });
  let r;
  try {
    while (!(r = await it.next()).done) {
      $('out').textContent += r.value.text;
      if (stopped) { await it.return(undefined); break; }
    }
  } finally {
    $('go').disabled = false;
    $('stop').disabled = true;
  }
  const res = r?.done ? r.value : null;
  if (res) {
    const dec = res.outputIds.length > 1 ? ((res.outputIds.length - 1) / (res.timings.decodeMs / 1000)).toFixed(1) : '–';
    status(`${res.promptIds.length} prompt tokens in ${res.timings.prefillMs.toFixed(0)} ms, ${res.outputIds.length} new at ${dec} tok/s on ${model.device} (${res.finishReason})`);
  }
  return res && { promptIds: res.promptIds, outputIds: res.outputIds, text: res.text, device: model.device };
}

const fail = (e) => status(String(e?.message ?? e), true);
// ?model=URL picks the model (gravity web sets it for a GGUF file)
const asked = new URLSearchParams(location.search).get('model');
if (asked) $('model').value = asked;
$('load').onclick = () => load().catch(fail);
$('go').onclick = () => run().catch(fail);
$('stop').onclick = () => { stopped = true; };
window.gravity = { load, run };
if (new URLSearchParams(location.search).has('autoload')) load().catch(fail);
