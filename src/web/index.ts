/**
 * The browser build's entry (bundled to dist/web/gravity.js by scripts/build-web.mjs): nothing here or below imports
 * a Node module, which the bundle build checks. Load a model served over HTTP, then generate with it:
 *
 *   const model = await loadModelFrom(urlFiles('/model/'), { device: 'auto' });
 *   const ids = model.tokenizer!.encode('What is 48 + 37?');
 *   const res = await generate(model, ids, { temperature: 0, maxNewTokens: 32, eosTokenIds: model.eosTokenIds });
 */
export { loadGgufFrom, loadModelFrom, urlFiles, type FileGetter, type WebLoadOptions, type WebModel } from './load.js';
export { generate, generateStream, type GenerateOptions, type GenerateResult } from '../generate/generate.js';
export { TextTokenizer } from '../tokenizer/tokenizer.js';
export { createCpuBackend } from '../backend/cpu/index.js';
export { createWebGPUBackend, webgpuAvailable } from '../backend/webgpu/index.js';
export { GravityError } from '../errors.js';
