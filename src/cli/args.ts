/** Argument parsing shared by the commands: node:util parseArgs with one-line errors and per-command --help. */
import { parseArgs, type ParseArgsConfig } from 'node:util';
import { GravityError, fail } from '../errors.js';

/** A bad command line: main prints the message, then the command's usage. */
export class UsageError extends GravityError {
  constructor(message: string, readonly usage: string) {
    super(message);
  }
}

type Options = NonNullable<ParseArgsConfig['options']>;
export type Values = Record<string, string | boolean | string[] | boolean[] | undefined>;

/**
 * Parses argv against `options` (+ --help). Returns null after printing `usage` for --help.
 * Unknown flags, missing values and stray positionals become UsageErrors.
 */
export function parseCommand(argv: string[], options: Options, usage: string): Values | null {
  let parsed;
  try {
    parsed = parseArgs({ args: argv, options: { ...options, help: { type: 'boolean', short: 'h' } }, strict: true, allowPositionals: false });
  } catch (e) {
    const err = e as Error & { code?: string };
    // node's messages are multi-line and mention parseArgs internals; keep the useful first clause
    let msg = err.message.split('\n')[0];
    const unknown = /Unknown option '([^']+)'/.exec(msg);
    if (unknown) msg = `unknown option '${unknown[1]}'`;
    const positional = /Unexpected argument '([^']+)'/.exec(msg);
    if (positional) msg = `unexpected argument '${positional[1]}'`;
    const missing = /Option '([^']+)' argument missing/.exec(msg);
    if (missing) msg = `option '${missing[1].split(',').pop()!.trim().split(' ')[0]}' needs a value`;
    throw new UsageError(msg, usage);
  }
  if (parsed.values.help) {
    process.stdout.write(usage.endsWith('\n') ? usage : usage + '\n');
    return null;
  }
  return parsed.values as Values;
}

export function str(v: Values, name: string): string | undefined {
  const x = v[name];
  return typeof x === 'string' ? x : undefined;
}

export function strs(v: Values, name: string): string[] {
  const x = v[name];
  return Array.isArray(x) ? (x as string[]) : typeof x === 'string' ? [x] : [];
}

export function flag(v: Values, name: string): boolean {
  return v[name] === true;
}

export function required(v: Values, name: string, usage: string): string {
  const x = str(v, name);
  if (x === undefined) throw new UsageError(`missing --${name}`, usage);
  return x;
}

export function num(v: Values, name: string): number | undefined {
  const x = str(v, name);
  if (x === undefined) return undefined;
  const n = Number(x);
  if (x.trim() === '' || !Number.isFinite(n)) fail(`--${name} '${x}': not a number`);
  return n;
}

export function int(v: Values, name: string): number | undefined {
  const n = num(v, name);
  if (n !== undefined && !Number.isInteger(n)) fail(`--${name} '${str(v, name)}': not a whole number`);
  return n;
}

/** "1,2,3" (spaces allowed) -> ids; names the bad position. */
export function parseIdList(s: string, what: string): number[] {
  const parts = s.split(',').map((p) => p.trim());
  if (parts.length === 1 && parts[0] === '') fail(`${what}: no token ids given`);
  return parts.map((p, i) => {
    if (!/^-?\d+$/.test(p)) fail(`${what}: '${p}' at position ${i} is not a token id (whole number)`);
    return Number(p);
  });
}
