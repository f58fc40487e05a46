// Bundles the browser build (src/web/index.ts) into dist/web/gravity.js, one ES module. platform 'browser' makes a
// static import of a Node module anywhere below the entry a build error; `webgpu` (Dawn for Node) stays a dynamic
// import that a browser never reaches (navigator.gpu comes first).
import { build } from 'esbuild';
import { fileURLToPath } from 'node:url';

// @huggingface/gguf's "exports" name its Node build (which reads local files with fs); its browser build is the
// same parser over fetch
const ggufBrowser = {
  name: 'gguf-browser',
  setup(b) {
    const path = fileURLToPath(new URL('../node_modules/@huggingface/gguf/dist/browser/index.mjs', import.meta.url));
    b.onResolve({ filter: /^@huggingface\/gguf$/ }, () => ({ path }));
  },
};

export async function buildWeb({ outfile = 'dist/web/gravity.js', minify = true } = {}) {
  return build({
    entryPoints: ['src/web/index.ts'],
    bundle: true,
    format: 'esm',
    platform: 'browser',
    target: 'es2022',
    external: ['webgpu'],
    outfile,
    minify,
    sourcemap: false,
    logLevel: 'silent',
    plugins: [ggufBrowser],
  });
}

if (import.meta.url === `file://${process.argv[1]}`) {
  await buildWeb();
  console.log('dist/web/gravity.js');
}
