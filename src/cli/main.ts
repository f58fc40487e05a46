#!/usr/bin/env node
/** The `gravity` command line: dispatches to the commands in ./commands.ts and turns errors into one line. */
import { GravityError } from '../errors.js';
import { COMMANDS } from './commands.js';
import { UsageError } from './args.js';

function mainUsage(): string {
  const w = Math.max(...COMMANDS.map((c) => c.name.length));
  const lines = COMMANDS.map((c) => `  ${c.name.padEnd(w)}  ${c.summary}`);
  return `usage: gravity <command> [options]

Gravity-attention language models: load, run and inspect Hugging Face checkpoints.

commands:
${lines.join('\n')}

Run 'gravity <command> --help' for a command's options.
Set GRAVITY_DEBUG=1 to see stack traces.
`;
}

async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    (name === undefined ? process.stderr : process.stdout).write(mainUsage());
    return name === undefined ? 1 : 0;
  }
  if (name === '--version' || name === '-v') {
    const { packageRoot } = await import('./model-args.js');
    const { readFileSync } = await import('node:fs');
    process.stdout.write(JSON.parse(readFileSync(`${packageRoot()}/package.json`, 'utf8')).version + '\n');
    return 0;
  }
  const entry = COMMANDS.find((c) => c.name === name);
  if (!entry) throw new UsageError(`unknown command '${name}'`, mainUsage());
  const mod = await entry.load();
  return mod.run(rest);
}

function report(e: unknown): number {
  const debug = process.env.GRAVITY_DEBUG === '1';
  if (e instanceof GravityError) {
    process.stderr.write(`gravity: ${e.message}\n`);
    if (e instanceof UsageError) process.stderr.write('\n' + e.usage.replace(/\n?$/, '\n'));
    if (debug && e.stack) process.stderr.write(e.stack + '\n');
    return 1;
  }
  // not a user error: a bug or an environment problem; say so, with the stack only on request
  const err = e as Error;
  process.stderr.write(`gravity: internal error: ${err?.message ?? String(e)}\n`);
  if (debug && err?.stack) process.stderr.write(err.stack + '\n');
  else process.stderr.write('(set GRAVITY_DEBUG=1 for the stack trace)\n');
  return 1;
}

// stdout closed early (e.g. `gravity generate ... | head`) is not an error
process.stdout.on('error', (e: NodeJS.ErrnoException) => {
  if (e.code === 'EPIPE') process.exit(0);
});

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (e) => {
    process.exitCode = report(e);
  },
);
