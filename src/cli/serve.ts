/** `gravity serve`: the OpenAI-compatible HTTP server (src/server/http.ts) for one model. */
import { basename } from 'node:path';
import { fail } from '../errors.js';
import { startApiServer } from '../server/http.js';
import type { Served } from '../server/openai.js';
import { parseCommand, str } from './args.js';
import { chatEosIds, loadFromArgs, MODEL_OPTIONS, MODEL_USAGE, tokenizerOf } from './model-args.js';

export const usage = `usage: gravity serve [--model DIR] [--port N] [--host ADDR] [--name ID] [options]

Serves the model over an OpenAI-compatible HTTP API: GET /v1/models, POST /v1/completions and
/v1/chat/completions (JSON or "stream": true server-sent events), GET /health. One request decodes at a time;
others wait in order. Sampling fields a request leaves out come from the model's generation_config.json, then the
API's defaults (temperature 1, as many tokens as the context has left). Also accepted: top_k, min_p,
repetition_penalty, seed, stop, return_token_ids.

  --port N        port (default 8000; 0 = any free port)
  --host ADDR     address to listen on (default 127.0.0.1)
  --name ID       the model id clients send and /v1/models lists (default: the folder's name)
${MODEL_USAGE}
`;

const OPTIONS = { ...MODEL_OPTIONS, port: { type: 'string' }, host: { type: 'string' }, name: { type: 'string' } } as const;

export async function run(argv: string[]): Promise<number> {
  const v = parseCommand(argv, OPTIONS, usage);
  if (!v) return 0;
  const portStr = str(v, 'port') ?? '8000';
  const port = Number(portStr);
  if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`--port must be a whole number in [0, 65535], got '${portStr}'`);
  const model = await loadFromArgs(v);
  const tokenizer = tokenizerOf(model);
  const served: Served = {
    id: str(v, 'name') ?? basename(model.dir).replace(/\.gguf$/i, ''),
    model,
    tokenizer,
    chatEosIds: tokenizer ? chatEosIds(model, tokenizer) : model.eosTokenIds,
    created: Math.floor(Date.now() / 1000),
  };
  try {
    const s = await startApiServer(served, { port, host: str(v, 'host'), log: (l) => process.stderr.write(`${new Date().toISOString()} ${l}\n`) });
    process.stdout.write(`serving '${served.id}' on ${s.url}/v1 (OpenAI API; Ctrl-C to stop)\n`);
  } catch (e) {
    model.dispose();
    const err = e as NodeJS.ErrnoException;
    return fail(err.code === 'EADDRINUSE' ? `port ${port} is in use: pass --port N (0 = any free port)` : err.message);
  }
  await new Promise(() => {}); // until interrupted
  return 0;
}
