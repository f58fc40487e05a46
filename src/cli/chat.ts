/**
 * `gravity chat`: a conversation through the model's chat template. Interactive on a terminal; with piped
 * stdin every line is one user turn and each answer is printed on its own line(s).
 */
import { createInterface } from 'node:readline';
import { fail } from '../errors.js';
import { generate } from '../generate/generate.js';
import type { ChatMessage } from '../tokenizer/tokenizer.js';
import { parseCommand, str } from './args.js';
import { chatEosIds, loadFromArgs, MODEL_OPTIONS, MODEL_USAGE, tokenizerOf } from './model-args.js';
import { SAMPLING_OPTIONS, SAMPLING_USAGE, samplingFromArgs, withGenerationDefaults } from './sampling-args.js';

export const usage = `usage: gravity chat [--model DIR] [options]

Chat with a model through its chat template. Type a message and press enter.
Commands: /reset (forget the conversation), /exit (quit; also Ctrl-D).
When stdin is not a terminal, each input line is a user message and each answer is printed after it.

  --system TEXT          system message
${SAMPLING_USAGE}
${MODEL_USAGE}
`;

const OPTIONS = { ...MODEL_OPTIONS, ...SAMPLING_OPTIONS, system: { type: 'string' } } as const;

export async function run(argv: string[]): Promise<number> {
  const v = parseCommand(argv, OPTIONS, usage);
  if (!v) return 0;
  const flags = samplingFromArgs(v);
  const system = str(v, 'system');
  const model = await loadFromArgs(v);
  try {
    const gen = withGenerationDefaults(flags, model.generation, model.dir);
    const tok = tokenizerOf(model);
    if (!tok) fail(`chat needs a tokenizer and ${model.dir} has no tokenizer.json`);
    if (!tok.hasChatTemplate) fail(`chat needs a chat template and ${model.dir}'s tokenizer_config.json has none; use generate --prompt`);
    const tty = process.stdin.isTTY === true && process.stdout.isTTY === true;
    const out = process.stdout;
    const fresh = (): ChatMessage[] => (system !== undefined ? [{ role: 'system', content: system }] : []);
    let messages = fresh();
    const eosTokenIds = chatEosIds(model, tok);
    const rl = createInterface({ input: process.stdin, output: tty ? out : undefined, terminal: tty });
    if (tty) out.write(`chatting with ${model.dir} (/reset, /exit)\n`);
    const ask = () => tty && rl.prompt();
    rl.setPrompt('> ');
    ask();
    for await (const raw of rl) {
      const line = raw.trim();
      if (line === '') {
        ask();
        continue;
      }
      if (line === '/exit' || line === '/quit') break;
      if (line === '/reset') {
        messages = fresh();
        if (tty) out.write('(conversation cleared)\n');
        ask();
        continue;
      }
      messages.push({ role: 'user', content: raw });
      const prompt = tok.encode(tok.applyChatTemplate(messages, { addGenerationPrompt: true }), { addSpecialTokens: false });
      const res = await generate(model, prompt, {
        ...gen,
        tokenizer: tok,
        eosTokenIds,
        onToken: (t) => t.text && out.write(t.text),
      });
      out.write('\n');
      messages.push({ role: 'assistant', content: res.text ?? '' });
      if (res.finishReason === 'length' && tty) out.write('(answer cut at the token limit)\n');
      ask();
    }
    rl.close();
    return 0;
  } finally {
    model.dispose();
  }
}
