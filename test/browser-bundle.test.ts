/**
 * The WebGPU backend and the model code must load in a browser (navigator.gpu) as well as in Node: bundled for the
 * browser platform, they may not pull in a Node built-in at module level. (The `webgpu` npm package is imported
 * dynamically, only when no navigator.gpu exists, so it is left external; the file loaders are Node's.)
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { fileURLToPath } from 'node:url';

test('src/backend/webgpu + src/model/qwen2 bundle for the browser without Node built-ins', async () => {
  const esbuild = await import('esbuild'); // tsx's own bundler
  const root = fileURLToPath(new URL('..', import.meta.url));
  const r = await esbuild.build({
    stdin: {
      contents: `export { createWebGPUBackend } from './src/backend/webgpu/index.ts';
export { Qwen2Model, uploadWeights } from './src/model/qwen2.ts';
export { generate } from './src/generate/generate.ts';`,
      resolveDir: root,
      loader: 'ts',
    },
    bundle: true,
    platform: 'browser',
    format: 'esm',
    external: ['webgpu'],
    write: false,
    logLevel: 'silent',
  });
  assert.equal(r.errors.length, 0);
  const code = r.outputFiles[0].text;
  assert.ok(code.includes('createWebGPUBackend'), 'the bundle exports the backend');
  assert.doesNotMatch(code, /from\s+["']node:/, 'no static import of a Node built-in');
});
