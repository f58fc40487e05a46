"""Makes the PyTorch fixtures under test/fixtures/ (run on the GPU machine, CPU is enough):

    python3 reference/make_fixtures.py OUT_DIR

Each inference fixture is a tiny random Hugging Face checkpoint (config.json, safetensors, masses .pt) plus
`expected.safetensors` (float64) and `expected.json`, computed by transformers' own Qwen2/Llama with the card's
gravity patch (reference/gravity_ref.py) in float64 from exactly the weights the checkpoint stores.
Training fixtures add a PEFT adapter with random non-zero A and B and the float64 gradient of every LoRA tensor
and every mass.
"""
import json, os, sys, shutil
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gravity_ref  # noqa: E402
import transformers  # noqa: E402
from transformers import Qwen2Config, Qwen2ForCausalLM, LlamaConfig, LlamaForCausalLM  # noqa: E402

OUT = sys.argv[1] if len(sys.argv) > 1 else "test/fixtures"
torch.manual_seed(0)
VOCAB = 256


def randomize(model, qk_std, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("gravity_mass_log"):
                continue
            if "norm" in name:
                p.copy_(1.0 + 0.2 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.05 * torch.randn(p.shape, generator=g))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=g))
            elif "q_proj" in name or "k_proj" in name:
                p.copy_(qk_std * torch.randn(p.shape, generator=g))
            else:
                p.copy_(torch.randn(p.shape, generator=g) / p.shape[1] ** 0.5)


def masses_for(cfg, seed):
    g = torch.Generator().manual_seed(seed)
    # raw mass_log in [-0.5, 2.0] so M = softplus ranges ~0.47..2.1 and differs per head
    return (torch.rand(cfg.num_hidden_layers, cfg.num_attention_heads, generator=g) * 2.5 - 0.5).float()


def build(kind, cfg_kwargs):
    if kind == "qwen2":
        cfg = Qwen2Config(**cfg_kwargs)
        return cfg, Qwen2ForCausalLM(cfg)
    cfg = LlamaConfig(**cfg_kwargs)
    return cfg, LlamaForCausalLM(cfg)


def save_masses(path, mass, fmt, dtype):
    m = mass.to(dtype)
    if fmt == "dict":
        obj = {f"model.layers.{i}.self_attn.gravity_mass_log": m[i].clone() for i in range(m.shape[0])}
    elif fmt == "stacked":
        obj = m.clone()
    else:
        obj = [m[i].clone() for i in range(m.shape[0])]
    torch.save(obj, path)
    return m.to(torch.float32)


def dot64_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' eager attention, but the softmax stays in float64: eager casts to float32, where the
    float64 mask minimum becomes -inf and fully padded rows turn NaN (and spread to every row after layer 0)."""
    n_rep = query.shape[1] // key.shape[1]
    key = gravity_ref.repeat_kv(key, n_rep)
    value = gravity_ref.repeat_kv(value, n_rep)
    scores = (query @ key.transpose(-1, -2)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask[:, :, :, : key.shape[-2]]
    probs = torch.softmax(scores, dim=-1, dtype=scores.dtype)
    return (probs @ value).transpose(1, 2).contiguous(), probs


def register_dot64():
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, eager_mask
    AttentionInterface.register("dot64", dot64_attention)
    AttentionMaskInterface.register("dot64", eager_mask)


def set_attn(model, impl):
    if hasattr(model, "set_attn_implementation"):
        model.set_attn_implementation(impl)
    else:
        model.config._attn_implementation = impl


def greedy(model, prompt, n):
    out = model.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                         max_new_tokens=n, do_sample=False, use_cache=True, output_scores=True,
                         return_dict_in_generate=True, pad_token_id=0, eos_token_id=None)
    toks = out.sequences[0, len(prompt):].tolist()
    gaps = []
    for s in out.scores:
        top = torch.topk(s[0], 2).values
        gaps.append(float(top[0] - top[1]))
    return toks, min(gaps)


def make_inference(name, kind, cfg_kwargs, store_dtype, mass_fmt, mass_dtype, qk_std, seed, shard=None, old_rope=False):
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    torch.manual_seed(seed)
    cfg, model = build(kind, cfg_kwargs)
    randomize(model, qk_std, seed)
    model = model.to(store_dtype)
    kw = {"safe_serialization": True}
    if shard:
        kw["max_shard_size"] = shard
    model.save_pretrained(d, **kw)
    if old_rope:  # older releases keep rope_theta at the top level
        cj = json.load(open(os.path.join(d, "config.json")))
        rp = cj.pop("rope_parameters", None) or {}
        cj["rope_theta"] = rp.get("rope_theta", cfg_kwargs.get("rope_theta", 10000.0))
        json.dump(cj, open(os.path.join(d, "config.json"), "w"), indent=2)
    mass = save_masses(os.path.join(d, "gravity_mass_log.pt"), masses_for(cfg, seed + 1), mass_fmt, mass_dtype)
    model = model.to(torch.float64).eval()
    gravity_ref.patch_qwen_with_gravity(model, mass_log=mass)
    model = model.to(torch.float64)  # masses in float64 too: the reference is exact to the stored values

    g = torch.Generator().manual_seed(seed + 2)
    ids = torch.randint(1, VOCAB, (2, 12), generator=g)
    lens = [12, 7, 3]
    pad_ids = torch.zeros(3, 12, dtype=torch.long)
    pad_mask = torch.zeros(3, 12, dtype=torch.long)
    for b, L in enumerate(lens):
        pad_ids[b, 12 - L:] = torch.randint(1, VOCAB, (L,), generator=g)
        pad_mask[b, 12 - L:] = 1
    long_ids = torch.randint(1, VOCAB, (1, 96), generator=g)
    tensors = {}
    meta = {"long_input_ids": long_ids.tolist(), "long_logits_positions": "last 16","name": name, "architecture": kind, "store_dtype": str(store_dtype).replace("torch.", ""),
            "mass_format": mass_fmt, "mass_dtype": str(mass_dtype).replace("torch.", ""), "eps": gravity_ref.EPS,
            "input_ids": ids.tolist(), "padded_input_ids": pad_ids.tolist(), "padded_attention_mask": pad_mask.tolist(),
            "transformers": transformers.__version__, "torch": torch.__version__}
    for attn in ("gravity", "dot"):
        set_attn(model, "gravity" if attn == "gravity" else "dot64")
        with torch.no_grad():
            out = model(ids, output_attentions=True)
            tensors[f"{attn}.logits"] = out.logits.contiguous()
            tensors[f"{attn}.attn0"] = out.attentions[0].contiguous()
            probs = out.attentions[0]
            meta[f"{attn}_mean_max_prob_layer0"] = float(probs.max(-1).values.mean())
            outp = model(pad_ids, attention_mask=pad_mask)
            tensors[f"{attn}.padded_logits"] = outp.logits.contiguous()
            # a longer sequence: many keys per query exercise the online softmax's rescaling
            outl = model(long_ids)
            tensors[f"{attn}.long_logits"] = outl.logits[:, -16:].contiguous()
        # greedy continuation with the KV cache; pick a prompt with no near-ties so float32 engines can match
        best = None
        for t in range(8):
            prompt = torch.randint(1, VOCAB, (5,), generator=g).tolist()
            toks, gap = greedy(model, prompt, 16)
            if best is None or gap > best[2]:
                best = (prompt, toks, gap)
            if gap > 2e-3:
                break
        meta[f"{attn}_greedy"] = {"prompt": best[0], "tokens": best[1], "min_top2_gap": best[2]}
    save_file(tensors, os.path.join(d, "expected.safetensors"))
    json.dump(meta, open(os.path.join(d, "expected.json"), "w"), indent=1)
    print(name, {k: v for k, v in meta.items() if "mean_max" in k or "greedy" in k})


def make_training(name, kind, cfg_kwargs, targets, r, alpha, qk_std, seed, ignore_prefix=0):
    from peft import LoraConfig, get_peft_model
    d = os.path.join(OUT, name)
    shutil.rmtree(d, ignore_errors=True)
    os.makedirs(d)
    torch.manual_seed(seed)
    cfg, model = build(kind, cfg_kwargs)
    randomize(model, qk_std, seed)
    model = model.float()
    model.save_pretrained(d, safe_serialization=True)
    mass = save_masses(os.path.join(d, "gravity_mass_log.pt"), masses_for(cfg, seed + 1), "dict", torch.float32)
    gravity_ref.patch_qwen_with_gravity(model, mass_log=mass)
    lcfg = LoraConfig(r=r, lora_alpha=alpha, target_modules=targets, lora_dropout=0.0, bias="none")
    pm = get_peft_model(model, lcfg)
    g = torch.Generator().manual_seed(seed + 5)
    with torch.no_grad():
        for n, p in pm.named_parameters():
            if "lora_A" in n or "lora_B" in n:
                p.copy_(0.2 * torch.randn(p.shape, generator=g))
    pm.save_pretrained(os.path.join(d, "adapter"))
    pm = pm.double()
    for n, p in pm.named_parameters():
        if n.endswith("gravity_mass_log"):
            p.requires_grad_(True)
    ids = torch.randint(1, VOCAB, (2, 16), generator=g)
    labels = ids.clone()
    if ignore_prefix:
        labels[:, :ignore_prefix] = -100
    out = pm(input_ids=ids, labels=labels)
    out.loss.backward()
    tensors = {"logits": out.logits.detach().contiguous()}
    for n, p in pm.named_parameters():
        if p.requires_grad:
            key = n.replace("base_model.model.", "", 1).replace(".default", "")
            tensors["grad." + key] = p.grad.detach().contiguous()
    # a few AdamW steps on the same batch: the loss curve ours must follow
    hp = {"lr": 1e-2, "betas": [0.9, 0.999], "eps": 1e-8, "weight_decay": 0.01}
    params = [p for p in pm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=hp["lr"], betas=tuple(hp["betas"]), eps=hp["eps"], weight_decay=hp["weight_decay"])
    losses = []
    pm.zero_grad()
    for step in range(5):
        o = pm(input_ids=ids, labels=labels)
        losses.append(float(o.loss))
        o.loss.backward()
        opt.step()
        opt.zero_grad()
    save_file(tensors, os.path.join(d, "expected.safetensors"))
    meta = {"name": name, "architecture": kind, "input_ids": ids.tolist(), "labels": labels.tolist(), "loss": float(out.loss),
            "lora": {"r": r, "alpha": alpha, "targets": targets}, "adamw": hp, "adamw_losses": losses,
            "loss_definition": "mean cross-entropy over shifted tokens whose label is not -100"}
    json.dump(meta, open(os.path.join(d, "expected.json"), "w"), indent=1)
    print(name, "loss", meta["loss"], "adamw", losses)


register_dot64()
base = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, num_hidden_layers=2, max_position_embeddings=256,
            rms_norm_eps=1e-6, bos_token_id=1, eos_token_id=2)
make_inference("qwen2-gqa-f32", "qwen2", dict(base, num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0,
               tie_word_embeddings=False), torch.float32, "dict", torch.float32, 0.02, 10)
make_inference("qwen2-mha-tied-bf16", "qwen2", dict(base, num_attention_heads=4, num_key_value_heads=4, rope_theta=1000000.0,
               tie_word_embeddings=True, num_hidden_layers=3), torch.bfloat16, "stacked", torch.bfloat16, 0.03, 20, shard="100KB")
make_inference("llama-gqa-f16", "llama", dict(base, hidden_size=48, num_attention_heads=4, num_key_value_heads=1, head_dim=8,
               rope_theta=500000.0, tie_word_embeddings=False, attention_bias=False, mlp_bias=False, rms_norm_eps=1e-5),
               torch.float16, "list", torch.float16, 0.12, 30, old_rope=True)
make_training("train-qwen2-qkvo", "qwen2", dict(base, num_attention_heads=4, num_key_value_heads=2, rope_theta=10000.0,
              tie_word_embeddings=False), ["q_proj", "k_proj", "v_proj", "o_proj"], 4, 8, 0.02, 40)
make_training("train-llama-all", "llama", dict(base, hidden_size=48, num_attention_heads=4, num_key_value_heads=2, head_dim=12,
              rope_theta=10000.0, tie_word_embeddings=True, attention_bias=False, mlp_bias=False),
              ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], 2, 4, 0.05, 50, ignore_prefix=4)
print("done", transformers.__version__, torch.__version__)
