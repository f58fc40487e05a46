"""PyTorch side of the GPU benchmark (bench/gpu.ts runs ours on the same checkpoint and prints the ratios).

    python3 reference/bench_torch.py --dir /tmp/q3b --json torch.json [--preset qwen2.5-3b]

Writes a random Qwen2.5-shaped bf16 checkpoint with masses into --dir (once), then times transformers 5 + the
card's gravity patch (eager, as the card runs it): prefill at several lengths, greedy decode after a 512-token
prompt, and one layer's gravity attention forward at 1k/4k/16k tokens, with peak memory.
"""
import argparse, json, os, sys, time
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gravity_ref  # noqa: E402

PRESETS = {
    "qwen2.5-0.5b": dict(hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14, num_key_value_heads=2),
    "qwen2.5-3b": dict(hidden_size=2048, intermediate_size=11008, num_hidden_layers=36, num_attention_heads=16, num_key_value_heads=2),
}


def make_checkpoint(d, preset):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    if os.path.exists(os.path.join(d, "config.json")):
        return
    cfg = Qwen2Config(vocab_size=151936, max_position_embeddings=32768, rope_theta=1000000.0, rms_norm_eps=1e-6,
                      tie_word_embeddings=True, bos_token_id=151643, eos_token_id=151645, **PRESETS[preset])
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = Qwen2ForCausalLM(cfg).to(torch.bfloat16)
    model.save_pretrained(d, safe_serialization=True)
    L, H = cfg.num_hidden_layers, cfg.num_attention_heads
    mass = torch.rand(L, H) * 2.5 - 0.5
    torch.save({f"model.layers.{i}.self_attn.gravity_mass_log": mass[i].clone() for i in range(L)}, os.path.join(d, "gravity_mass_log.pt"))


def timed(f, reps=3):
    f()
    torch.cuda.synchronize()
    best = 1e9
    for _ in range(reps):
        t = time.perf_counter()
        f()
        torch.cuda.synchronize()
        best = min(best, time.perf_counter() - t)
    return best


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--preset", default="qwen2.5-3b")
    ap.add_argument("--prefill", default="512,2048,8192")
    ap.add_argument("--attn-lens", default="1024,4096,16384")
    ap.add_argument("--make-only", action="store_true", help="write the checkpoint and stop")
    a = ap.parse_args()
    make_checkpoint(a.dir, a.preset)
    if a.make_only:
        return
    from transformers import AutoModelForCausalLM
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__}
    import transformers
    res["transformers"] = transformers.__version__
    model = AutoModelForCausalLM.from_pretrained(a.dir, dtype=torch.bfloat16).cuda().eval()
    raw = torch.load(os.path.join(a.dir, "gravity_mass_log.pt"))
    mass = torch.stack([raw[f"model.layers.{i}.self_attn.gravity_mass_log"] for i in range(len(raw))])
    gravity_ref.patch_qwen_with_gravity(model, mass_log=mass)
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(1)
    res["prefill_ms"] = {}
    with torch.no_grad():
        for n in [int(x) for x in a.prefill.split(",")]:
            ids = torch.randint(1000, 30000, (1, n), generator=g).cuda()
            torch.cuda.reset_peak_memory_stats()
            try:
                t = timed(lambda: model(ids, logits_to_keep=1), reps=2)
                res["prefill_ms"][n] = round(t * 1000, 2)
            except torch.OutOfMemoryError:
                res["prefill_ms"][n] = None
            torch.cuda.empty_cache()
        ids = torch.randint(1000, 30000, (1, 512), generator=g).cuda()
        n_new = 64
        def dec():
            model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n_new, min_new_tokens=n_new, do_sample=False, pad_token_id=0)
        t_all = timed(dec, reps=1)
        t_pre = timed(lambda: model(ids, logits_to_keep=1), reps=2)
        res["decode_tok_s"] = round(n_new / (t_all - t_pre), 2)
    # one layer's attention: 16 q heads, 2 KV heads, head_dim 128, bf16, causal
    cfg = model.config
    del model
    torch.cuda.empty_cache()
    Hq, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.hidden_size // cfg.num_attention_heads
    res["attn_ms"], res["attn_peak_gib"] = {}, {}

    class M(torch.nn.Module):
        pass
    mod = M()
    mod.gravity_mass_log = torch.nn.Parameter(mass[0].cuda())
    with torch.no_grad():
        for n in [int(x) for x in a.attn_lens.split(",")]:
            q = torch.randn(1, Hq, n, D, device="cuda", dtype=torch.bfloat16) * 0.1
            k = torch.randn(1, Hkv, n, D, device="cuda", dtype=torch.bfloat16) * 0.1
            v = torch.randn(1, Hkv, n, D, device="cuda", dtype=torch.bfloat16)
            mask = torch.full((n, n), torch.finfo(torch.bfloat16).min, device="cuda", dtype=torch.bfloat16).triu(1)[None, None]
            torch.cuda.reset_peak_memory_stats()
            try:
                t = timed(lambda: gravity_ref.gravity_attention(mod, q, k, v, mask))
                res["attn_ms"][n] = round(t * 1000, 3)
                res["attn_peak_gib"][n] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            except torch.OutOfMemoryError:
                res["attn_ms"][n] = None
            del q, k, v, mask
            torch.cuda.empty_cache()
    json.dump(res, open(a.json, "w"), indent=1)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
