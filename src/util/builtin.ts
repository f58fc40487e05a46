/**
 * Node built-in modules for code that must also load in a browser: looked up at run time through
 * process.getBuiltinModule (Node >= 20.16), so no static `import 'node:…'` ties the module to Node. Synchronous on
 * purpose: a top-level await would stop the module from loading wherever it is required as CommonJS.
 */
type NodeProcess = { getBuiltinModule?(id: string): unknown };

/** the built-in module `id` (e.g. 'node:fs'), or null outside Node */
export function nodeBuiltin<T>(id: string): T | null {
  try {
    return ((globalThis as { process?: NodeProcess }).process?.getBuiltinModule?.(id) as T | undefined) ?? null;
  } catch {
    return null;
  }
}
