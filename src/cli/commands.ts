/**
 * The command table. To add a command (train, merge, plot, serve, bench, ...): write src/cli/<name>.ts exporting
 * `usage: string` and `run(argv: string[]): Promise<number>` (use parseCommand from ./args.js so --help and
 * flag errors behave like the others), then add one entry here. Modules load lazily so `gravity --help` and
 * each command's startup stay fast.
 */
export interface CommandModule {
  usage: string;
  /** returns the exit code; throw GravityError for user errors (main prints `gravity: <message>`) */
  run(argv: string[]): Promise<number>;
}

export interface CommandEntry {
  name: string;
  summary: string;
  load: () => Promise<CommandModule>;
}

export const COMMANDS: CommandEntry[] = [
  { name: 'generate', summary: 'generate text from a prompt (streams to stdout)', load: () => import('./generate.js') },
  { name: 'chat', summary: 'interactive chat with a model that has a chat template', load: () => import('./chat.js') },
  { name: 'forward', summary: 'run a forward pass on ids from JSON, write logits (and attention maps) to safetensors', load: () => import('./forward.js') },
  { name: 'inspect', summary: 'describe a model folder: architecture, shapes, parameters, masses, tokenizer', load: () => import('./inspect.js') },
  { name: 'init-random', summary: 'write a seeded random checkpoint from a preset or config.json', load: () => import('./init-random.js') },
  { name: 'train', summary: 'fine-tune LoRA adapters / gravity masses on a dataset; checkpoints, metrics, figures', load: () => import('./train.js') },
  { name: 'merge', summary: 'fold a LoRA adapter into a copy of its base model', load: () => import('./merge.js') },
  { name: 'plot', summary: 'draw loss / mass / gradient figures of a train run, or an attention field', load: () => import('./plot.js') },
  { name: 'export', summary: 'write a model folder as one GGUF file (llama.cpp\'s format) with its gravity masses', load: () => import('./export.js') },
  { name: 'serve', summary: 'serve the model over an OpenAI-compatible HTTP API (completions, chat, streaming)', load: () => import('./serve.js') },
  { name: 'web', summary: 'serve a page that runs the model in the browser (WebGPU, else WebAssembly)', load: () => import('./web.js') },
  { name: 'task', summary: 'arithmetic task: make train/val/test JSONL, evaluate a model\'s answer accuracy', load: () => import('./task.js') },
];
