"""PyTorch side of the training benchmark (bench/train-gpu.ts runs ours on the same checkpoint and prints ratios).

    python3 reference/bench_torch.py --preset qwen2.5-0.5b --dir /tmp/q05 --json /dev/null --make-only
    python3 reference/bench_train_torch.py --dir /tmp/q05 --json train_torch.json [--lens 1024,4096,8192,16384,32768]

transformers + PEFT LoRA (r=16, alpha=32 on q,k,v,o; adapters in f32 as PEFT makes them) + the trainable gravity
masses of reference/gravity_ref.py (eager, the card's implementation), bf16 base weights, AdamW, batch 1. Per
sequence length: one warm-up step, then timed steps (fewer when a step is slow, so that each case stays near a
minute); training tokens/s and peak allocated memory. An out-of-memory case is recorded as null and the run goes
on; the JSON is rewritten after every case, so partial results survive a crash.
"""
import argparse, json, os, sys, time
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gravity_ref  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dir", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--lens", default="1024,4096,8192,16384,32768")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per length (at most)")
    ap.add_argument("--budget-s", type=float, default=45.0, help="timed seconds per length (at most, after the warm-up)")
    a = ap.parse_args()
    from transformers import AutoModelForCausalLM
    import transformers
    from peft import LoraConfig, get_peft_model
    import peft
    res = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "transformers": transformers.__version__,
           "peft": peft.__version__, "setup": "bf16 base, LoRA r=16 alpha=32 q,k,v,o (f32), masses, AdamW, batch 1, eager gravity",
           "tok_s": {}, "step_s": {}, "peak_gib": {}, "error": {}}

    def save():
        with open(a.json, "w") as f:
            json.dump(res, f, indent=1)

    model = AutoModelForCausalLM.from_pretrained(a.dir, dtype=torch.bfloat16).cuda()
    raw = torch.load(os.path.join(a.dir, "gravity_mass_log.pt"))
    mass = torch.stack([raw[f"model.layers.{i}.self_attn.gravity_mass_log"] for i in range(len(raw))])
    gravity_ref.patch_qwen_with_gravity(model, mass_log=mass)
    model.config.use_cache = False
    pm = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules=["q_proj", "k_proj", "v_proj", "o_proj"],
                                          lora_dropout=0.0, bias="none"))
    for n, p in pm.named_parameters():
        if n.endswith("gravity_mass_log"):
            p.requires_grad_(True)
    params = [p for p in pm.parameters() if p.requires_grad]
    res["trainable_params"] = sum(p.numel() for p in params)
    opt = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0)
    pm.train()
    V = model.config.vocab_size
    g = torch.Generator().manual_seed(1)

    def step(ids):
        out = pm(input_ids=ids, labels=ids)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        return out.loss.item()

    for T in [int(x) for x in a.lens.split(",")]:
        ids = torch.randint(0, V, (1, T), generator=g).cuda()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
        try:
            t0 = time.perf_counter()
            step(ids)
            torch.cuda.synchronize()
            warm = time.perf_counter() - t0
            n = max(1, min(a.steps, int(a.budget_s / max(warm, 1e-3))))
            t0 = time.perf_counter()
            for _ in range(n):
                step(ids)
            torch.cuda.synchronize()
            dt = (time.perf_counter() - t0) / n
            res["tok_s"][T] = round(T / dt, 1)
            res["step_s"][T] = round(dt, 4)
            res["peak_gib"][T] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
            print(f"T={T}: {T / dt:.0f} tok/s, {dt * 1000:.1f} ms/step, peak {res['peak_gib'][T]} GiB", file=sys.stderr, flush=True)
        except torch.OutOfMemoryError:
            res["tok_s"][T] = None
            res["error"][T] = "out of memory"
            print(f"T={T}: out of memory", file=sys.stderr, flush=True)
        except RuntimeError as e:  # e.g. cuBLAS / CUDA errors from allocation failures
            res["tok_s"][T] = None
            res["error"][T] = str(e).splitlines()[0][:200]
            print(f"T={T}: {res['error'][T]}", file=sys.stderr, flush=True)
        opt.zero_grad(set_to_none=True)
        ids = None
        torch.cuda.empty_cache()
        save()
    print(json.dumps(res))


if __name__ == "__main__":
    main()
