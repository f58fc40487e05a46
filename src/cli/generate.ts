/** `gravity generate`: one completion, streamed to stdout, or a JSON summary with --json. */
import { fail } from '../errors.js';
import { generate, type GenerateResult } from '../generate/generate.js';
import { flag, parseCommand, parseIdList, str, UsageError } from './args.js';
import { chatEosIds, loadFromArgs, MODEL_OPTIONS, MODEL_USAGE, tokenizerOf } from './model-args.js';
import { SAMPLING_OPTIONS, SAMPLING_USAGE, samplingFromArgs, withGenerationDefaults } from './sampling-args.js';

export const usage = `usage: gravity generate [--model DIR] (--prompt TEXT | --prompt-ids 1,2,3) [options]

Generates a continuation of the prompt and streams it to stdout.

  --prompt TEXT          prompt text (needs a tokenizer); with a chat template it becomes a user message
  --prompt-ids IDS       prompt as comma-separated token ids
  --chat                 require and apply the chat template
  --raw                  feed --prompt as plain text even if the model has a chat template
  --system TEXT          system message for the chat template
  --json                 print only a final JSON line {"prompt_ids", "output_ids", "text"}
  --stats                print prompt and decode speed to stderr (with --json: a "timings" field)
${SAMPLING_USAGE}
${MODEL_USAGE}
`;

const OPTIONS = {
  ...MODEL_OPTIONS,
  ...SAMPLING_OPTIONS,
  prompt: { type: 'string', short: 'p' },
  'prompt-ids': { type: 'string' },
  chat: { type: 'boolean' },
  raw: { type: 'boolean' },
  system: { type: 'string' },
  json: { type: 'boolean' },
  stats: { type: 'boolean' },
} as const;

/** `prompt 12 tok in 40.1 ms (299 tok/s); 64 tok, decode 180.2 ms (349 tok/s after the first)` */
function statsLine(res: GenerateResult): string {
  const { prefillMs, decodeMs } = res.timings;
  const rate = (n: number, ms: number) => (ms > 0 ? `${((1000 * n) / ms).toFixed(1)} tok/s` : 'n/a');
  const steps = Math.max(0, res.outputIds.length - 1);
  return `prompt ${res.promptIds.length} tok, first token after ${prefillMs.toFixed(1)} ms (${rate(res.promptIds.length, prefillMs)}); ` +
    `${res.outputIds.length} tok generated, ${steps} decode steps in ${decodeMs.toFixed(1)} ms (${rate(steps, decodeMs)}), ${res.finishReason}\n`;
}

export async function run(argv: string[]): Promise<number> {
  const v = parseCommand(argv, OPTIONS, usage);
  if (!v) return 0;
  const text = str(v, 'prompt');
  const idsArg = str(v, 'prompt-ids');
  if ((text === undefined) === (idsArg === undefined)) throw new UsageError('give exactly one of --prompt or --prompt-ids', usage);
  if (flag(v, 'chat') && flag(v, 'raw')) throw new UsageError('--chat and --raw contradict each other', usage);
  const flags = samplingFromArgs(v);
  const promptIdsArg = idsArg !== undefined ? parseIdList(idsArg, '--prompt-ids') : null;

  const model = await loadFromArgs(v);
  try {
    const gen = withGenerationDefaults(flags, model.generation, model.dir);
    const tok = tokenizerOf(model);
    let promptIds: number[];
    let eosTokenIds = model.eosTokenIds;
    if (promptIdsArg) {
      promptIds = promptIdsArg;
    } else {
      if (!tok) fail(`--prompt needs a tokenizer and ${model.dir} has no tokenizer.json; use --prompt-ids`);
      const useTemplate = !flag(v, 'raw') && (flag(v, 'chat') || tok.hasChatTemplate);
      if (useTemplate) {
        if (!tok.hasChatTemplate) fail(`--chat: ${model.dir} has no chat template in tokenizer_config.json`);
        const system = str(v, 'system');
        const messages = [...(system !== undefined ? [{ role: 'system', content: system }] : []), { role: 'user', content: text! }];
        promptIds = tok.encode(tok.applyChatTemplate(messages, { addGenerationPrompt: true }), { addSpecialTokens: false });
        eosTokenIds = chatEosIds(model, tok);
      } else {
        promptIds = tok.encode(text!);
      }
    }
    if ((gen.stop?.length ?? 0) > 0 && !tok) fail(`--stop needs a tokenizer and ${model.dir} has no tokenizer.json`);

    const json = flag(v, 'json');
    const out = process.stdout;
    let firstId = true;
    const res = await generate(model, promptIds, {
      ...gen,
      tokenizer: tok,
      eosTokenIds,
      onToken: json
        ? undefined
        : (t) => {
            if (tok) {
              if (t.text) out.write(t.text);
            } else {
              out.write((firstId ? '' : ' ') + t.id); // no tokenizer: stream the ids
              firstId = false;
            }
          },
    });
    if (json) {
      const obj: Record<string, unknown> = { prompt_ids: res.promptIds, output_ids: res.outputIds };
      if (res.text !== undefined) obj.text = res.text;
      if (flag(v, 'stats')) obj.timings = { prefill_ms: res.timings.prefillMs, decode_ms: res.timings.decodeMs };
      out.write(JSON.stringify(obj) + '\n');
    } else {
      out.write('\n');
      if (process.env.GRAVITY_DEBUG === '1') process.stderr.write(`[${res.outputIds.length} tokens, ${res.finishReason}]\n`);
    }
    if (flag(v, 'stats')) process.stderr.write(statsLine(res));
    return 0;
  } finally {
    model.dispose();
  }
}
