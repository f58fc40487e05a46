/**
 * An OpenAI-compatible HTTP server for one loaded model (`gravity serve`): GET /v1/models, POST /v1/completions and
 * /v1/chat/completions (JSON, or server-sent events with "stream": true), GET /health. The model decodes one request
 * at a time: requests wait in arrival order, and a client that disconnects stops its generation (its KV cache is
 * freed) or leaves the queue. Errors are OpenAI's {"error": {...}} with a 4xx status for the client's mistakes.
 */
import * as http from 'node:http';
import { randomUUID } from 'node:crypto';
import { generateStream, type GeneratedToken, type GenerateResult } from '../generate/generate.js';
import { chatLogprobs, completionLogprobs, pickLogprob, promptLogprobs, tokenText, type TokenLogprob } from './logprobs.js';
import { ApiError, asApiError, chunkBody, parseRequest, responseBody, usageChunk, type ApiRequest, type Endpoint, type Served } from './openai.js';

/** largest request body accepted (a long prompt in JSON is well under this) */
export const MAX_BODY_BYTES = 4 << 20;

export interface ApiServer {
  url: string;
  server: http.Server;
  close(): Promise<void>;
}

const CORS = {
  'access-control-allow-origin': '*',
  'access-control-allow-methods': 'GET, POST, OPTIONS',
  'access-control-allow-headers': 'content-type, authorization',
};

function sendJson(res: http.ServerResponse, status: number, body: object): void {
  res.writeHead(status, { 'content-type': 'application/json; charset=utf-8', ...CORS, ...(status === 413 ? { connection: 'close' } : {}) });
  res.end(JSON.stringify(body) + '\n');
}

function readBody(req: http.IncomingMessage, limit: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const parts: Buffer[] = [];
    let size = 0;
    const onData = (c: Buffer) => {
      size += c.length;
      if (size > limit) {
        // answered at once; the rest of the body is read and dropped, so the client gets the answer, not a reset
        req.off('data', onData);
        req.resume();
        reject(new ApiError(413, `the request body is over ${limit} bytes`));
        return;
      }
      parts.push(c);
    };
    req.on('data', onData);
    req.on('end', () => resolve(Buffer.concat(parts).toString('utf8')));
    req.on('error', reject);
  });
}

/** One generation at a time on the model: each job starts when the previous one has settled. */
class Queue {
  private tail: Promise<void> = Promise.resolve();

  run<T>(job: () => Promise<T>): Promise<T> {
    const p = this.tail.then(job);
    this.tail = p.then(() => undefined, () => undefined);
    return p;
  }
}

const ROUTES: Record<string, Endpoint> = { '/v1/completions': 'completion', '/v1/chat/completions': 'chat' };

export interface ApiServerOptions {
  maxBodyBytes?: number;
  /** one line per answered request: method, path, status, milliseconds */
  log?: (line: string) => void;
}

export function createApiServer(s: Served, opts: ApiServerOptions = {}): http.Server {
  const queue = new Queue();
  const limit = opts.maxBodyBytes ?? MAX_BODY_BYTES;

  async function complete(req: http.IncomingMessage, res: http.ServerResponse, endpoint: Endpoint): Promise<void> {
    const raw = await readBody(req, limit);
    let body: unknown;
    try {
      body = JSON.parse(raw);
    } catch (e) {
      throw new ApiError(400, `the request body is not valid JSON (${(e as Error).message})`);
    }
    const r = parseRequest(endpoint, body, s);
    let gone = false;
    res.on('close', () => {
      if (!res.writableFinished) gone = true;
    });
    await queue.run(async () => {
      if (gone) return; // left the queue
      await (r.stream ? streamOut(r, res, () => gone) : jsonOut(r, res, () => gone));
    });
  }

  /** the generation's steps with each token's log-probability where the request asks for them */
  function steps(r: ApiRequest): { it: AsyncGenerator<GeneratedToken, GenerateResult, void>; lp: (id: number) => TokenLogprob | null } {
    if (r.logprobs === null) return { it: generateStream(s.model, r.promptIds, r.opts), lp: () => null };
    let last: Float32Array | null = null;
    const it = generateStream(s.model, r.promptIds, { ...r.opts, onLogits: (row) => (last = row) });
    return { it, lp: (id) => pickLogprob(last!, id, r.logprobs!) };
  }

  /** echo: the prompt's text, and its tokens' log-probabilities where asked */
  async function echoed(r: ApiRequest): Promise<{ text: string; items: (TokenLogprob | null)[] }> {
    if (!r.echo) return { text: '', items: [] };
    const text = r.promptText ?? (s.tokenizer ? s.tokenizer.decode(r.promptIds, { skipSpecialTokens: false }) : '');
    return { text, items: r.logprobs === null ? [] : await promptLogprobs(s.model, r.promptIds, r.logprobs) };
  }

  function logprobsOf(r: ApiRequest, items: (TokenLogprob | null)[], ids: number[], offset0 = 0): object | null {
    if (r.logprobs === null) return null;
    const text = tokenText(s.tokenizer);
    return r.endpoint === 'chat' ? chatLogprobs(items as TokenLogprob[], text) : completionLogprobs(items, ids, text, offset0);
  }

  async function jsonOut(r: ApiRequest, res: http.ServerResponse, gone: () => boolean): Promise<void> {
    const echo = await echoed(r);
    const { it, lp } = steps(r);
    let result: GenerateResult | null = null;
    const items: (TokenLogprob | null)[] = [];
    try {
      for (;;) {
        const step = await it.next();
        if (step.done) {
          result = step.value;
          break;
        }
        items.push(lp(step.value.id));
        if (gone()) return;
      }
    } finally {
      if (!result) await it.return(undefined as never);
    }
    const id = `${r.endpoint === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomUUID()}`;
    const logprobs = logprobsOf(r, [...echo.items, ...items], [...(r.echo ? r.promptIds : []), ...result.outputIds]);
    sendJson(res, 200, responseBody(r, s, id, Math.floor(Date.now() / 1000), echo.text + (result.text ?? ''), result.outputIds, result.finishReason, logprobs));
  }

  async function streamOut(r: ApiRequest, res: http.ServerResponse, gone: () => boolean): Promise<void> {
    const id = `${r.endpoint === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomUUID()}`;
    const created = Math.floor(Date.now() / 1000);
    const send = (o: object) => res.write(`data: ${JSON.stringify(o)}\n\n`);
    const echo = await echoed(r);
    const { it, lp } = steps(r);
    let headers = false;
    let offset = echo.text.length;
    let done = false;
    let n = 0;
    try {
      for (;;) {
        const step = await it.next();
        if (gone()) return;
        if (!headers) {
          // the first token is out: the request was good, so the status can be 200
          res.writeHead(200, { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', connection: 'keep-alive', ...CORS });
          headers = true;
          if (r.endpoint === 'chat') send(chunkBody(r, s, id, created, '', [], null, true));
          if (r.echo) send(chunkBody(r, s, id, created, echo.text, r.promptIds, null, false, logprobsOf(r, echo.items, r.promptIds)));
        }
        if (step.done) {
          done = true;
          send(chunkBody(r, s, id, created, '', [], step.value.finishReason));
          if (r.includeUsage) send(usageChunk(r, s, id, created, n));
          res.end('data: [DONE]\n\n');
          return;
        }
        n++;
        const t = step.value;
        const item = lp(t.id);
        if (t.text || r.returnTokenIds || item) send(chunkBody(r, s, id, created, t.text, [t.id], null, false, item ? logprobsOf(r, [item], [t.id], offset) : null));
        offset += t.text.length;
      }
    } catch (e) {
      if (!headers) throw e;
      // mid-stream: the status is sent, so the error goes in the stream
      send(asApiError(e).body());
      res.end('data: [DONE]\n\n');
    } finally {
      if (!done) await it.return(undefined as never);
    }
  }

  return http.createServer((req, res) => {
    if (opts.log) {
      const t0 = performance.now();
      res.on('close', () => opts.log!(`${req.method} ${req.url} ${res.headersSent ? res.statusCode : '-'} ${(performance.now() - t0).toFixed(0)} ms${res.writableFinished ? '' : ' (client gone)'}`));
    }
    let path: string;
    try {
      path = new URL(req.url ?? '/', 'http://x').pathname;
    } catch {
      return sendJson(res, 400, new ApiError(400, 'bad URL').body());
    }
    const fail = (e: unknown) => {
      const err = asApiError(e);
      if (!res.headersSent) sendJson(res, err.status, err.body());
      else res.end();
    };
    if (req.method === 'OPTIONS') {
      res.writeHead(204, CORS);
      return res.end();
    }
    const endpoint = ROUTES[path];
    if (endpoint) {
      if (req.method !== 'POST') return fail(new ApiError(405, `${path} takes POST, not ${req.method}`));
      complete(req, res, endpoint).catch(fail);
      return;
    }
    if (path === '/v1/models' || path === '/health') {
      if (req.method !== 'GET') return fail(new ApiError(405, `${path} takes GET, not ${req.method}`));
      if (path === '/health') return sendJson(res, 200, { status: 'ok' });
      return sendJson(res, 200, {
        object: 'list',
        data: [{ id: s.id, object: 'model', created: s.created, owned_by: 'gravity-lm', max_model_len: s.model.config.maxPositionEmbeddings }],
      });
    }
    fail(new ApiError(404, `no route ${req.method} ${path} (there are /v1/models, /v1/completions, /v1/chat/completions, /health)`, null, 'not_found_error'));
  });
}

/** Starts the server; resolves once it listens (port 0 = any free port). */
export async function startApiServer(s: Served, opts: ApiServerOptions & { port?: number; host?: string } = {}): Promise<ApiServer> {
  const server = createApiServer(s, opts);
  const host = opts.host ?? '127.0.0.1';
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(opts.port ?? 8000, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const addr = server.address() as { port: number };
  return {
    url: `http://${host.includes(':') ? `[${host}]` : host}:${addr.port}`,
    server,
    close: () => new Promise<void>((resolve) => {
      server.closeAllConnections?.();
      server.close(() => resolve());
    }),
  };
}
