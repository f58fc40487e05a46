/**
 * `gravity web`: serves the browser page (web/index.html, web/app.js), the browser build (dist/web/gravity.js) and
 * one model folder under /model/, so `gravity web` then opening the printed URL runs the model in the browser
 * (WebGPU where the browser has it, else WebAssembly on the CPU). Read-only: GET and HEAD of those files only.
 */
import * as fs from 'node:fs';
import * as http from 'node:http';
import { basename, join } from 'node:path';
import { fail } from '../errors.js';
import { parseCommand, str } from './args.js';
import { packageRoot, resolveModelDir } from './model-args.js';

export const usage = `usage: gravity web [--model DIR] [--port N] [--host ADDR]

Serves a page that runs the model in the browser: WebGPU kernels where the browser has WebGPU, else the CPU
(WebAssembly). Open the printed URL; the page loads the model from /model/.

  --model DIR     model folder or .gguf file to serve (default: the bundled models/gravity-mini)
  --port N        port (default 8080; 0 = any free port)
  --host ADDR     address to listen on (default 127.0.0.1)`;

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.json': 'application/json; charset=utf-8',
  '.jinja': 'text/plain; charset=utf-8',
};

export interface WebServer {
  url: string;
  close(): Promise<void>;
}

/** Starts the server; resolves once it listens. */
export async function startWebServer(opts: { modelDir: string; port?: number; host?: string; bundle?: string }): Promise<WebServer> {
  const root = packageRoot();
  const bundle = opts.bundle ?? join(root, 'dist', 'web', 'gravity.js');
  if (!fs.existsSync(bundle)) fail(`${bundle} is missing: run \`npm run build\` first (it bundles the browser build)`);
  // a GGUF file is served alone, as /model/<its name>
  const ggufFile = /\.gguf$/i.test(opts.modelDir) && fs.existsSync(opts.modelDir) && fs.statSync(opts.modelDir).isFile() ? opts.modelDir : null;
  if (!ggufFile && !fs.existsSync(join(opts.modelDir, 'config.json'))) fail(`${opts.modelDir}: no config.json (not a model folder or a .gguf file)`);
  const pages: Record<string, string> = {
    '/': join(root, 'web', 'index.html'),
    '/index.html': join(root, 'web', 'index.html'),
    '/app.js': join(root, 'web', 'app.js'),
    '/gravity.js': bundle,
  };
  const server = http.createServer((req, res) => {
    const send = (code: number, msg: string) => {
      res.writeHead(code, { 'content-type': 'text/plain; charset=utf-8' });
      res.end(msg + '\n');
    };
    if (req.method !== 'GET' && req.method !== 'HEAD') return send(405, `method ${req.method} not allowed`);
    let path: string;
    try {
      path = decodeURIComponent(new URL(req.url ?? '/', 'http://x').pathname);
    } catch {
      return send(400, 'bad URL');
    }
    let file: string | undefined = pages[path];
    if (!file && path.startsWith('/model/')) {
      const name = path.slice('/model/'.length);
      // a plain file name of the folder: no subfolders, no dotfiles, nothing outside it
      if (!/^[A-Za-z0-9_][A-Za-z0-9_.-]*$/.test(name)) return send(404, 'not found');
      file = ggufFile ? (name === basename(ggufFile) ? ggufFile : undefined) : join(opts.modelDir, name);
    }
    if (!file) return send(404, 'not found');
    fs.stat(file, (err, st) => {
      if (err || !st.isFile()) return send(404, 'not found');
      const ext = file!.slice(file!.lastIndexOf('.'));
      const type = TYPES[ext] ?? 'application/octet-stream';
      // one byte range (the browser loader reads weights tensor by tensor): bytes=a-b, a-, or -n
      const range = req.headers.range;
      let start = 0;
      let end = st.size - 1;
      if (range !== undefined) {
        const m = /^bytes=(\d*)-(\d*)$/.exec(range.trim());
        if (m && (m[1] || m[2])) {
          if (m[1]) {
            start = Number(m[1]);
            if (m[2]) end = Math.min(end, Number(m[2]));
          } else start = Math.max(0, st.size - Number(m[2]));
        }
        if (!m || (!m[1] && !m[2]) || start > end || start >= st.size) {
          res.writeHead(416, { 'content-range': `bytes */${st.size}` });
          return res.end();
        }
      }
      const headers: Record<string, string | number> = { 'content-type': type, 'content-length': end - start + 1, 'accept-ranges': 'bytes', 'cache-control': 'no-cache' };
      if (range !== undefined) headers['content-range'] = `bytes ${start}-${end}/${st.size}`;
      res.writeHead(range !== undefined ? 206 : 200, headers);
      if (req.method === 'HEAD' || st.size === 0) return res.end();
      fs.createReadStream(file!, { start, end }).on('error', () => res.destroy()).pipe(res);
    });
  });
  const host = opts.host ?? '127.0.0.1';
  await new Promise<void>((resolve, reject) => {
    server.once('error', (e: NodeJS.ErrnoException) => reject(e.code === 'EADDRINUSE' ? new Error(`port ${opts.port} is in use: pass --port N (0 = any free port)`) : e));
    server.listen(opts.port ?? 8080, host, () => resolve());
  });
  const addr = server.address();
  const port = typeof addr === 'object' && addr ? addr.port : opts.port;
  return {
    url: `http://${host.includes(':') ? `[${host}]` : host}:${port}/${ggufFile ? `?model=model/${encodeURIComponent(basename(ggufFile))}` : ''}`,
    close: () => new Promise<void>((resolve) => { server.closeAllConnections?.(); server.close(() => resolve()); }),
  };
}

export async function run(argv: string[]): Promise<number> {
  const v = parseCommand(argv, { model: { type: 'string' }, port: { type: 'string' }, host: { type: 'string' } }, usage);
  if (!v) return 0;
  const portStr = str(v, 'port') ?? '8080';
  const port = Number(portStr);
  if (!Number.isInteger(port) || port < 0 || port > 65535) fail(`--port must be a whole number in [0, 65535], got '${portStr}'`);
  let s: WebServer;
  try {
    s = await startWebServer({ modelDir: resolveModelDir(v), port, host: str(v, 'host') });
  } catch (e) {
    return fail((e as Error).message);
  }
  process.stdout.write(`serving the browser page on ${s.url} (Ctrl-C to stop)\n`);
  await new Promise(() => {}); // until interrupted
  return 0;
}
