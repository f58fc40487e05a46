/**
 * The OpenAI API's request and response shapes for /v1/completions and /v1/chat/completions: a request body becomes
 * prompt ids + GenerateOptions (or an ApiError naming the field), a generation becomes the response object or its
 * stream chunks. Sampling fields the body leaves out come from the model's generation_config.json (as vLLM does),
 * then the API's defaults (temperature 1, as many tokens as the context has left). Extensions also found in vLLM:
 * top_k, min_p, repetition_penalty, return_token_ids.
 */
import { GravityError } from '../errors.js';
import { fillGenerationDefaults } from '../generate/defaults.js';
import type { FinishReason, GenerateOptions } from '../generate/generate.js';
import { validateSampling } from '../generate/sampling.js';
import type { LoadedModel } from '../model/load.js';
import type { ChatMessage, TextTokenizer } from '../tokenizer/tokenizer.js';

/** An error answered as {"error": {message, type, param, code}} with an HTTP status. */
export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly param: string | null = null,
    readonly type = status >= 500 ? 'server_error' : 'invalid_request_error',
  ) {
    super(message);
  }

  body(): object {
    return { error: { message: this.message, type: this.type, param: this.param, code: null } };
  }
}

/** What the server serves: one model, its tokenizer (may be null) and the stop ids of chat-formatted prompts. */
export interface Served {
  id: string;
  model: LoadedModel;
  tokenizer: TextTokenizer | null;
  chatEosIds: number[];
  created: number;
}

export type Endpoint = 'completion' | 'chat';

export interface ApiRequest {
  endpoint: Endpoint;
  promptIds: number[];
  opts: GenerateOptions;
  stream: boolean;
  includeUsage: boolean;
  returnTokenIds: boolean;
  /** top alternatives to report with each token's log-probability; null = no log-probabilities */
  logprobs: number | null;
  /** completions: the prompt comes back in front of the answer (with its log-probabilities where asked) */
  echo: boolean;
  /** the prompt as text, for echo */
  promptText: string | null;
}

/** most alternatives a request may ask log-probabilities for */
export const MAX_LOGPROBS = 20;

const bad = (message: string, param: string | null = null) => new ApiError(400, message, param);

type Body = Record<string, unknown>;

function optNumber(b: Body, k: string): number | undefined {
  const v = b[k];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v)) throw bad(`'${k}' must be a number, got ${JSON.stringify(v)}`, k);
  return v;
}

function optInt(b: Body, k: string): number | undefined {
  const v = optNumber(b, k);
  if (v !== undefined && !Number.isInteger(v)) throw bad(`'${k}' must be a whole number, got ${v}`, k);
  return v;
}

function optBool(b: Body, k: string): boolean {
  const v = b[k];
  if (v === undefined || v === null) return false;
  if (typeof v !== 'boolean') throw bad(`'${k}' must be true or false, got ${JSON.stringify(v)}`, k);
  return v;
}

/** fields of the API this server does not implement: refused when set to anything but their no-op value */
function refuseUnsupported(b: Body): void {
  const n = b.n;
  if (n !== undefined && n !== null && n !== 1) throw bad(`'n' must be 1 (one choice per request), got ${JSON.stringify(n)}`, 'n');
  for (const k of ['frequency_penalty', 'presence_penalty']) {
    const v = b[k];
    if (v !== undefined && v !== null && v !== 0) throw bad(`'${k}' is not supported (use repetition_penalty)`, k);
  }
  for (const k of ['best_of', 'suffix', 'logit_bias', 'tools', 'functions', 'response_format']) {
    const v = b[k];
    if (v !== undefined && v !== null && v !== false && !(k === 'best_of' && v === 1)) throw bad(`'${k}' is not supported by this server`, k);
  }
}

function stopStrings(b: Body): string[] {
  const v = b.stop;
  if (v === undefined || v === null) return [];
  const list = typeof v === 'string' ? [v] : v;
  if (!Array.isArray(list) || list.some((s) => typeof s !== 'string')) throw bad(`'stop' must be a string or an array of strings`, 'stop');
  return list as string[];
}

/** a token id array, as the completions prompt may be */
function isIds(v: unknown): v is number[] {
  return Array.isArray(v) && v.length > 0 && v.every((x) => typeof x === 'number');
}

function completionPrompt(b: Body, s: Served): number[] {
  let p = b.prompt;
  if (p === undefined || p === null) throw bad(`'prompt' is required`, 'prompt');
  // a batch of one is the same request
  if (Array.isArray(p) && p.length === 1 && (typeof p[0] === 'string' || isIds(p[0]))) p = p[0];
  if (typeof p === 'string') {
    if (!s.tokenizer) throw bad(`the model has no tokenizer.json: give 'prompt' as an array of token ids`, 'prompt');
    return s.tokenizer.encode(p);
  }
  if (isIds(p)) return p;
  if (Array.isArray(p) && p.length > 1) throw bad(`'prompt' holds ${p.length} prompts; this server takes one per request`, 'prompt');
  throw bad(`'prompt' must be a string or an array of token ids`, 'prompt');
}

function chatPrompt(b: Body, s: Served): number[] {
  const msgs = b.messages;
  if (!Array.isArray(msgs) || msgs.length === 0) throw bad(`'messages' must be a non-empty array`, 'messages');
  const out: ChatMessage[] = msgs.map((m, i) => {
    const param = `messages[${i}]`;
    if (typeof m !== 'object' || m === null) throw bad(`${param} must be an object with 'role' and 'content'`, param);
    const { role, content } = m as Body;
    if (typeof role !== 'string' || !['system', 'developer', 'user', 'assistant'].includes(role)) {
      throw bad(`${param}.role must be system, developer, user or assistant, got ${JSON.stringify(role)}`, `${param}.role`);
    }
    let text: string;
    if (typeof content === 'string') text = content;
    else if (Array.isArray(content) && content.every((c) => typeof c === 'object' && c !== null && (c as Body).type === 'text' && typeof (c as Body).text === 'string')) {
      text = content.map((c) => (c as Body).text as string).join('');
    } else throw bad(`${param}.content must be a string or an array of {"type": "text", "text": ...} parts`, `${param}.content`);
    return { role: role === 'developer' ? 'system' : role, content: text };
  });
  if (!s.tokenizer?.hasChatTemplate) throw bad(`the model has no chat template: use /v1/completions`, 'messages');
  return s.tokenizer.encode(s.tokenizer.applyChatTemplate(out, { addGenerationPrompt: true }), { addSpecialTokens: false });
}

/** A request body as prompt ids and generation options; every problem is an ApiError naming the field. */
export function parseRequest(endpoint: Endpoint, body: unknown, s: Served): ApiRequest {
  if (typeof body !== 'object' || body === null || Array.isArray(body)) throw bad('the request body must be a JSON object');
  const b = body as Body;
  if (b.model !== undefined && b.model !== null && b.model !== s.id) {
    throw new ApiError(404, `the model '${String(b.model)}' does not exist; this server serves '${s.id}'`, 'model', 'not_found_error');
  }
  refuseUnsupported(b);
  const promptIds = endpoint === 'chat' ? chatPrompt(b, s) : completionPrompt(b, s);
  const maxTokens = optInt(b, endpoint === 'chat' && b.max_completion_tokens !== undefined ? 'max_completion_tokens' : 'max_tokens');
  const echo = endpoint === 'completion' && optBool(b, 'echo');
  // max_tokens 0 with echo scores the prompt alone
  if (maxTokens !== undefined && maxTokens < (echo ? 0 : 1)) throw bad(`'max_tokens' must be at least ${echo ? 0 : 1}, got ${maxTokens}`, 'max_tokens');
  let logprobs: number | null = null;
  if (endpoint === 'completion') {
    const n = optInt(b, 'logprobs');
    if (n !== undefined) logprobs = n;
  } else if (optBool(b, 'logprobs')) logprobs = optInt(b, 'top_logprobs') ?? 0;
  else if (b.top_logprobs !== undefined && b.top_logprobs !== null) throw bad(`'top_logprobs' needs 'logprobs': true`, 'top_logprobs');
  if (logprobs !== null && !(logprobs >= 0 && logprobs <= MAX_LOGPROBS)) throw bad(`log-probabilities for 0 to ${MAX_LOGPROBS} alternatives, got ${logprobs}`, endpoint === 'chat' ? 'top_logprobs' : 'logprobs');
  const stop = stopStrings(b);
  if (stop.length > 0 && !s.tokenizer) throw bad(`'stop' needs a tokenizer and the model has none`, 'stop');
  const asked: GenerateOptions = {
    maxTokens,
    temperature: optNumber(b, 'temperature'),
    topP: optNumber(b, 'top_p'),
    topK: optInt(b, 'top_k'),
    minP: optNumber(b, 'min_p'),
    repetitionPenalty: optNumber(b, 'repetition_penalty'),
    seed: optInt(b, 'seed'),
  };
  // OpenAI's top_k -1 is vLLM's "off"
  if (asked.topK === -1) asked.topK = 0;
  try {
    validateSampling(asked);
  } catch (e) {
    throw bad((e as Error).message);
  }
  const limit = s.model.config.maxPositionEmbeddings;
  if (promptIds.length >= limit) throw bad(`the prompt has ${promptIds.length} tokens; the model's context is ${limit}`, endpoint === 'chat' ? 'messages' : 'prompt');
  let opts: GenerateOptions;
  try {
    opts = fillGenerationDefaults(asked, s.model.generation, 'generation_config.json', { temperature: 1, maxTokens: limit - promptIds.length });
  } catch (e) {
    throw new ApiError(500, (e as Error).message);
  }
  opts.stop = stop;
  opts.tokenizer = s.tokenizer;
  if (endpoint === 'chat') opts.eosTokenIds = s.chatEosIds;
  const so = b.stream_options;
  if (so !== undefined && so !== null && (typeof so !== 'object' || Array.isArray(so))) throw bad(`'stream_options' must be an object`, 'stream_options');
  return {
    endpoint,
    promptIds,
    opts,
    stream: optBool(b, 'stream'),
    includeUsage: so ? optBool(so as Body, 'include_usage') : false,
    returnTokenIds: optBool(b, 'return_token_ids') || !s.tokenizer,
    logprobs,
    echo,
    promptText: typeof b.prompt === 'string' ? b.prompt : Array.isArray(b.prompt) && typeof b.prompt[0] === 'string' ? b.prompt[0] : null,
  };
}

/** OpenAI's finish reasons: an eos token and a stop string are both 'stop' */
export function finishReason(f: FinishReason): 'stop' | 'length' {
  return f === 'length' ? 'length' : 'stop';
}

export function usage(prompt: number, completion: number) {
  return { prompt_tokens: prompt, completion_tokens: completion, total_tokens: prompt + completion };
}

/** the response object of a finished request */
export function responseBody(
  r: ApiRequest, s: Served, id: string, created: number, text: string, ids: number[], finish: FinishReason, logprobs: object | null = null,
): object {
  const extra = r.returnTokenIds ? { token_ids: ids } : {};
  const choice = r.endpoint === 'chat'
    ? { index: 0, message: { role: 'assistant', content: text }, logprobs, finish_reason: finishReason(finish), ...extra }
    : { index: 0, text, logprobs, finish_reason: finishReason(finish), ...extra };
  return {
    id, object: r.endpoint === 'chat' ? 'chat.completion' : 'text_completion', created, model: s.id,
    choices: [choice], usage: usage(r.promptIds.length, ids.length),
    ...(r.returnTokenIds ? { prompt_token_ids: r.promptIds } : {}),
  };
}

/** one stream chunk: new text (and ids), the finish reason on the last one; `first` opens a chat message */
export function chunkBody(
  r: ApiRequest, s: Served, id: string, created: number, text: string, ids: number[], finish: FinishReason | null, first = false, logprobs: object | null = null,
): object {
  const extra = r.returnTokenIds ? { token_ids: ids } : {};
  const fr = finish ? finishReason(finish) : null;
  const choice = r.endpoint === 'chat'
    ? { index: 0, delta: first ? { role: 'assistant', content: text } : text || !finish ? { content: text } : {}, logprobs, finish_reason: fr, ...extra }
    : { index: 0, text, logprobs, finish_reason: fr, ...extra };
  return { id, object: r.endpoint === 'chat' ? 'chat.completion.chunk' : 'text_completion', created, model: s.id, choices: [choice] };
}

/** the usage chunk that ends a stream with stream_options.include_usage */
export function usageChunk(r: ApiRequest, s: Served, id: string, created: number, completion: number): object {
  return { id, object: r.endpoint === 'chat' ? 'chat.completion.chunk' : 'text_completion', created, model: s.id, choices: [], usage: usage(r.promptIds.length, completion) };
}

/** a GravityError from generation (bad ids, a prompt over the context) is the client's; anything else is ours */
export function asApiError(e: unknown): ApiError {
  if (e instanceof ApiError) return e;
  if (e instanceof GravityError) return new ApiError(400, e.message);
  return new ApiError(500, `internal error: ${(e as Error)?.message ?? String(e)}`);
}
