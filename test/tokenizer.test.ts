import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { TextTokenizer, StreamDecoder } from '../src/tokenizer/tokenizer.js';
import { GravityError } from '../src/errors.js';

const DIR = 'test/fixtures/tokenizer-tiny';
const tokJson = JSON.parse(readFileSync(`${DIR}/tokenizer.json`, 'utf8'));
const tokConfig = JSON.parse(readFileSync(`${DIR}/tokenizer_config.json`, 'utf8'));
const tok = TextTokenizer.fromObjects(tokJson, tokConfig);

// make.mjs puts the 80 merges at 256..335 and the specials right after them
const ENDOFTEXT = 336;
const IM_START = 337;
const IM_END = 338;

test('byte-level ids: single bytes are their own id, merges apply', () => {
  assert.equal(tok.vocabSize, 339);
  // 'H' 'e' 'l' 'l' 'o' merged into one token by the fixture's BPE; '!' (0x21) is byte 33
  const ids = tok.encode('Hello world!');
  assert.equal(ids.at(-1), 33);
  assert.equal(tok.idToToken(ids[0]), 'Hello');
  assert.deepEqual(tok.encode('~'), [126]);
  assert.deepEqual(tok.encode('\n'), [10]);
});

test('encode/decode round trip on mixed text', () => {
  const texts = [
    'The quick brown fox jumps over the lazy dog.',
    '  leading spaces, tabs\tand\nnew lines\r\n',
    '你好世界, 今天天气 🙂🚀 café naïve ',
    "it's what we'll do; x=3.14159 [a]{b}",
    '',
  ];
  for (const t of texts) {
    const ids = tok.encode(t);
    for (const id of ids) assert.ok(id >= 0 && id < 339);
    assert.equal(tok.decode(ids), t);
  }
});

test('special tokens: one id each, kept or skipped on decode', () => {
  assert.deepEqual(tok.encode('<|im_start|>'), [IM_START]);
  const ids = tok.encode('<|im_start|>user\nhi<|im_end|><|endoftext|>');
  assert.equal(ids[0], IM_START);
  assert.deepEqual(ids.slice(-2), [IM_END, ENDOFTEXT]);
  assert.equal(tok.decode(ids), '<|im_start|>user\nhi<|im_end|><|endoftext|>');
  assert.equal(tok.decode(ids, { skipSpecialTokens: true }), 'user\nhi');
  assert.deepEqual([...tok.specialIds].sort(), [ENDOFTEXT, IM_START, IM_END]);
  assert.equal(tok.eosToken, '<|im_end|>');
  // Qwen has no BOS post-processor: addSpecialTokens changes nothing
  assert.deepEqual(tok.encode('hi', { addSpecialTokens: true }), tok.encode('hi', { addSpecialTokens: false }));
});

test('chat template: ChatML output, default system prompt, generation prompt', () => {
  assert.ok(tok.hasChatTemplate);
  const s = tok.applyChatTemplate([{ role: 'user', content: 'Hi there' }]);
  assert.equal(
    s,
    '<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n',
  );
  const s2 = tok.applyChatTemplate(
    [
      { role: 'system', content: 'Be brief.' },
      { role: 'user', content: 'a' },
      { role: 'assistant', content: 'b' },
    ],
    { addGenerationPrompt: false },
  );
  assert.equal(s2, '<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\na<|im_end|>\n<|im_start|>assistant\nb<|im_end|>\n');
  const ids = tok.encode(s, { addSpecialTokens: false });
  assert.equal(ids.filter((i) => i === IM_START).length, 3);
  assert.equal(tok.decode(ids), s);
});

test('chat template: tools, list-of-templates form, bos/eos variables, errors', () => {
  const withTools = tok.applyChatTemplate([{ role: 'user', content: 'x' }], {
    tools: [{ type: 'function', function: { name: 'f' } }],
  });
  assert.match(withTools, /# Tools\n\n<tools>\n\{"type": ?"function", ?"function": ?\{"name": ?"f"\}\}\n<\/tools><\|im_end\|>/);
  const listCfg = {
    ...tokConfig,
    bos_token: { content: '<|endoftext|>' },
    chat_template: [
      { name: 'default', template: '{{ bos_token }}{% for m in messages %}[{{ m.content }}]{% endfor %}{{ eos_token }}' },
      { name: 'tool_use', template: 'TOOLS{{ tools | length }}' },
    ],
  };
  const t2 = TextTokenizer.fromObjects(tokJson, listCfg);
  assert.equal(t2.applyChatTemplate([{ role: 'user', content: 'q' }]), '<|endoftext|>[q]<|im_end|>');
  assert.equal(t2.applyChatTemplate([{ role: 'user', content: 'q' }], { tools: [{}, {}] }), 'TOOLS2');
  const none = TextTokenizer.fromObjects(tokJson, { ...tokConfig, chat_template: undefined });
  assert.equal(none.hasChatTemplate, false);
  assert.throws(() => none.applyChatTemplate([{ role: 'user', content: 'q' }]), GravityError);
  const raising = TextTokenizer.fromObjects(tokJson, {
    ...tokConfig,
    chat_template: "{{ raise_exception('roles must alternate') }}",
  });
  assert.throws(() => raising.applyChatTemplate([]), /roles must alternate/);
});

test('fromDir reads the folder', () => {
  const t = TextTokenizer.fromDir(DIR);
  assert.deepEqual(t.encode('Hello'), tok.encode('Hello'));
  assert.throws(() => TextTokenizer.fromDir('test/fixtures/qwen2-gqa-f32'), /no tokenizer\.json/);
});

function streamAll(ids: number[]): string[] {
  const s = tok.stream({ skipSpecialTokens: false });
  const parts = ids.map((id) => s.push(id));
  parts.push(s.flush());
  return parts;
}

test('streaming: only whole characters, concatenation equals decode', () => {
  const text = 'Hi 🙂! 你好世界 café 🚀🚀 end';
  const ids = tok.encode(text);
  const parts = streamAll(ids);
  assert.equal(parts.join(''), text);
  for (const p of parts) assert.ok(!p.includes('\uFFFD'), `broken character in ${JSON.stringify(p)}`);
  // the 4 bytes of 🙂 are 4 separate byte tokens in this vocabulary: the first three emit nothing
  const emoji = tok.encode('🙂');
  assert.equal(emoji.length, 4);
  const s = tok.stream();
  assert.deepEqual(emoji.map((id) => s.push(id)), ['', '', '', '🙂']);
  assert.equal(s.flush(), '');
});

test('streaming: specials skipped by default, incomplete tail flushed as U+FFFD, reset', () => {
  const s = tok.stream();
  assert.equal(s.push(IM_START), '');
  const ids = tok.encode('ok 世');
  let out = '';
  for (const id of ids) out += s.push(id);
  assert.equal(out, 'ok 世');
  const partial = tok.encode('界').slice(0, 2);
  for (const id of partial) assert.equal(s.push(id), '');
  assert.equal(s.flush(), '\uFFFD');
  s.reset();
  assert.equal(s.push(tok.encode('A')[0]), 'A');
});

test('StreamDecoder keeps leading spaces that a decoder strips at the start (Metaspace-like)', () => {
  // a decoder that drops the leading space of whatever it decodes, as SentencePiece decoders do
  const pieces = ['▁Hello', '▁world', '!'];
  const decode = (ids: number[]) => ids.map((i) => pieces[i]).join('').replaceAll('▁', ' ').replace(/^ /, '');
  const s = new StreamDecoder(decode);
  assert.equal([0, 1, 2].map((i) => s.push(i)).join(''), 'Hello world!');
});
