/**
 * Text <-> token ids for Hugging Face tokenizers (tokenizer.json + tokenizer_config.json), plus the chat template.
 * Wraps @huggingface/tokenizers (exact ids for Qwen/Llama BPE) and @huggingface/jinja (the template language HF
 * chat templates are written in).
 */
import { Tokenizer } from '@huggingface/tokenizers';
import { Template } from '@huggingface/jinja';
import { GravityError, fail } from '../errors.js';
import { nodeBuiltin } from '../util/builtin.js';

/** node:fs for fromDir (this file also loads in a browser, where tokenizers come from fromObjects) */
function fs(): typeof import('node:fs') {
  const m = nodeBuiltin<typeof import('node:fs')>('node:fs');
  if (!m) fail('TextTokenizer.fromDir reads files: in a browser use TextTokenizer.fromObjects');
  return m;
}
const join = (dir: string, name: string) => `${dir.replace(/[\\/]+$/, '')}/${name}`;
const existsSync = (p: string) => fs().existsSync(p);

export interface ChatMessage {
  role: string;
  content: string;
  [key: string]: unknown;
}

export interface ChatTemplateOptions {
  /** append the assistant turn header so the model answers (default true) */
  addGenerationPrompt?: boolean;
  /** tool definitions (JSON schema objects) for templates that support them */
  tools?: object[];
  /** extra variables for the template (e.g. enable_thinking) */
  extra?: Record<string, unknown>;
}

type Json = Record<string, unknown>;

/** tokenizer_config.json writes special tokens either as strings or as AddedToken objects {content, ...}. */
function tokenString(v: unknown): string | null {
  if (typeof v === 'string') return v;
  if (v && typeof v === 'object' && typeof (v as Json).content === 'string') return (v as Json).content as string;
  return null;
}

function readJson(path: string): Json {
  let text: string;
  try {
    text = fs().readFileSync(path, 'utf8');
  } catch (e) {
    fail(`${path}: cannot read (${(e as Error).message})`);
  }
  try {
    const v = JSON.parse(text);
    if (!v || typeof v !== 'object' || Array.isArray(v)) fail(`${path}: expected a JSON object`);
    return v as Json;
  } catch (e) {
    if (e instanceof GravityError) throw e;
    fail(`${path}: invalid JSON (${(e as Error).message})`);
  }
}

export class TextTokenizer {
  private readonly tok: Tokenizer;
  private readonly templates = new Map<string, Template>();
  private readonly templateSources: Map<string, string>;
  /** ids of tokens marked special (skipped by decode({skipSpecialTokens: true})) */
  readonly specialIds: ReadonlySet<number>;
  readonly bosToken: string | null;
  readonly eosToken: string | null;
  readonly vocabSize: number;

  private constructor(private readonly tokenizerJson: Json, private readonly config: Json, templateFile?: string) {
    try {
      this.tok = new Tokenizer(tokenizerJson, config);
    } catch (e) {
      fail(`tokenizer.json: unsupported or malformed tokenizer (${(e as Error).message})`);
    }
    this.templateSources = new Map();
    const ct = config.chat_template ?? templateFile;
    if (typeof ct === 'string') {
      this.templateSources.set('default', ct);
    } else if (Array.isArray(ct)) {
      // newer configs: [{name: 'default', template: '...'}, {name: 'tool_use', template: '...'}]
      for (const entry of ct) {
        if (entry && typeof entry.name === 'string' && typeof entry.template === 'string') {
          this.templateSources.set(entry.name, entry.template);
        }
      }
    }
    const special = new Set<number>();
    for (const [id, t] of this.tok.get_added_tokens_decoder()) if (t.special) special.add(id);
    this.specialIds = special;
    this.bosToken = tokenString(config.bos_token);
    this.eosToken = tokenString(config.eos_token);
    this.vocabSize = this.tok.get_vocab(true).size;
  }

  static fromObjects(tokenizerJson: object, tokenizerConfig: object | null, chatTemplate?: string): TextTokenizer {
    return new TextTokenizer(tokenizerJson as Json, (tokenizerConfig ?? {}) as Json, chatTemplate);
  }

  /** Reads tokenizer.json, tokenizer_config.json (optional) and chat_template.jinja (optional) from a folder. */
  static fromDir(dir: string): TextTokenizer {
    const tjPath = join(dir, 'tokenizer.json');
    if (!existsSync(tjPath)) fail(`${dir}: no tokenizer.json`);
    const tcPath = join(dir, 'tokenizer_config.json');
    const config = existsSync(tcPath) ? readJson(tcPath) : {};
    const jinjaPath = join(dir, 'chat_template.jinja');
    const template = existsSync(jinjaPath) ? fs().readFileSync(jinjaPath, 'utf8') : undefined;
    return new TextTokenizer(readJson(tjPath), config, template);
  }

  static hasTokenizer(dir: string): boolean {
    return existsSync(join(dir, 'tokenizer.json'));
  }

  get hasChatTemplate(): boolean {
    return this.templateSources.size > 0;
  }

  encode(text: string, opts: { addSpecialTokens?: boolean } = {}): number[] {
    return this.tok.encode(text, { add_special_tokens: opts.addSpecialTokens ?? true }).ids;
  }

  decode(ids: readonly number[], opts: { skipSpecialTokens?: boolean } = {}): string {
    if (ids.length === 0) return ''; // the library rejects empty input
    return this.tok.decode(ids as number[], { skip_special_tokens: opts.skipSpecialTokens ?? false });
  }

  tokenToId(token: string): number | undefined {
    return this.tok.token_to_id(token);
  }

  idToToken(id: number): string | undefined {
    return this.tok.id_to_token(id);
  }

  /** Renders the chat template to a prompt string (encode it with addSpecialTokens: false, as HF does). */
  applyChatTemplate(messages: ChatMessage[], opts: ChatTemplateOptions = {}): string {
    if (!this.hasChatTemplate) fail('tokenizer_config.json has no chat_template');
    const useTools = opts.tools !== undefined && opts.tools.length > 0;
    const name = useTools && this.templateSources.has('tool_use')
      ? 'tool_use'
      : this.templateSources.has('default') ? 'default' : [...this.templateSources.keys()][0];
    let tpl = this.templates.get(name);
    if (!tpl) {
      try {
        tpl = new Template(this.templateSources.get(name)!);
      } catch (e) {
        fail(`chat_template '${name}': cannot parse (${(e as Error).message})`);
      }
      this.templates.set(name, tpl);
    }
    const vars: Record<string, unknown> = {
      messages,
      add_generation_prompt: opts.addGenerationPrompt ?? true,
      bos_token: this.bosToken ?? '',
      eos_token: this.eosToken ?? '',
      pad_token: tokenString(this.config.pad_token) ?? '',
      unk_token: tokenString(this.config.unk_token) ?? '',
      ...opts.extra,
    };
    if (useTools) vars.tools = opts.tools;
    try {
      return tpl.render(vars);
    } catch (e) {
      fail(`chat_template '${name}': ${(e as Error).message}`);
    }
  }

  /** A streaming detokenizer bound to this tokenizer. */
  stream(opts: { skipSpecialTokens?: boolean } = {}): StreamDecoder {
    return new StreamDecoder((ids) => this.decode(ids, { skipSpecialTokens: opts.skipSpecialTokens ?? true }));
  }
}

/**
 * Incremental detokenizer: push ids one by one, get back only text that is final.
 *
 * Decoding a token alone is wrong in two ways: a multibyte UTF-8 character may be split over several byte-level
 * tokens (decoding gives U+FFFD until the last byte arrives), and decoders such as Metaspace strip the leading
 * space of the first token of whatever they decode. So we decode a short window that starts a few tokens back
 * (`prefixStart`), compare it with the decode of the window without the new tokens, and emit only the new tail,
 * holding it back while it ends in an incomplete character. (Same scheme as HF's TextStreamer / vLLM.)
 */
export class StreamDecoder {
  private ids: number[] = [];
  private prefixStart = 0;
  private readStart = 0;

  constructor(private readonly decodeFn: (ids: number[]) => string) {}

  /** Adds a token; returns the newly completed text ('' if nothing is final yet). */
  push(id: number): string {
    this.ids.push(id);
    const prefix = this.decodeFn(this.ids.slice(this.prefixStart, this.readStart));
    const full = this.decodeFn(this.ids.slice(this.prefixStart));
    if (full.length > prefix.length && !full.endsWith('\uFFFD')) {
      this.prefixStart = this.readStart;
      this.readStart = this.ids.length;
      return full.slice(prefix.length);
    }
    return '';
  }

  /** Text still held back (an incomplete character at the end decodes as U+FFFD). Resets the window. */
  flush(): string {
    const prefix = this.decodeFn(this.ids.slice(this.prefixStart, this.readStart));
    const full = this.decodeFn(this.ids.slice(this.prefixStart));
    this.prefixStart = this.readStart = this.ids.length;
    return full.length > prefix.length ? full.slice(prefix.length) : '';
  }

  /** Forgets everything (e.g. a new chat turn). */
  reset(): void {
    this.ids = [];
    this.prefixStart = this.readStart = 0;
  }
}
