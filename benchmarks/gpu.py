"""GPU figures with the real model shapes (random weights: nothing is downloaded).

For each GPU profile's settings (batch, accumulation, precision, checkpointing) at sequence lengths 512 and 1,024:
LoRA training of a model with Minerva-3B's exact shape: tokens/s, model FLOPs utilisation (MFU), peak memory next
to `marco_lib.config.estimate_memory`, and a verdict on whether the T4 profile fits in 15 GB. Then generation
throughput of a Qwen2.5-3B-shaped model with the HF backend (and vLLM when installed).
Without a CUDA GPU it prints that it was skipped and exits 0. Prints a table; asserts nothing.
Usage: python benchmarks/gpu.py [--steps 6] [--skip-generation]
"""
import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import torch

PEAK_TFLOPS = {"T4": 65, "L4": 121, "A100": 312, "H100": 989, "H200": 989}  # dense fp16/bf16 tensor-core peaks


def peak_tflops(name: str) -> float | None:
    return next((v for k, v in PEAK_TFLOPS.items() if k in name.upper()), None)


def train_profile(model_dir, cfg, seq, steps):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from marco_lib.config import lora_kwargs, torch_dtype
    torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch_dtype(cfg.capability), attn_implementation="sdpa").cuda()
    if cfg.train.gradient_checkpointing:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(**lora_kwargs(cfg)))
    if cfg.train.gradient_checkpointing: model.enable_input_require_grads()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    b, acc = cfg.train.per_device_train_batch_size, cfg.train.gradient_accumulation_steps
    vocab = model.config.vocab_size
    ids = torch.randint(3, vocab, (b, seq), device="cuda")
    times = []
    try:
        for step in range(steps):
            torch.cuda.synchronize(); t = time.perf_counter()
            for _ in range(acc):
                model(input_ids=ids, labels=ids).loss.backward()
            opt.step(); opt.zero_grad()
            torch.cuda.synchronize(); times.append(time.perf_counter() - t)
    except torch.OutOfMemoryError:
        return None
    finally:
        peak = torch.cuda.max_memory_allocated() / 2**30
        del model, opt; torch.cuda.empty_cache()
    per_step = sorted(times[1:])[len(times[1:]) // 2]  # median, first step excluded (warm-up)
    tokens = b * acc * seq
    return {"tokens_per_s": tokens / per_step, "peak_gib": peak, "step_s": per_step}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--skip-generation", action="store_true")
    a = ap.parse_args()
    if not torch.cuda.is_available():
        print("skipped: no CUDA GPU on this machine (the figures need one; see benchmarks/README.md)")
        return
    from transformers import AutoModelForCausalLM
    from marco_lib.config import GPU_PROFILES, detect_device, estimate_memory, resolve, torch_dtype
    from marco_lib.tiny import minerva_3b_config, minerva_tokenizer
    dev = detect_device()
    work = Path(tempfile.mkdtemp())
    tok = minerva_tokenizer()
    shape_cfg = minerva_3b_config()  # the real vocabulary size (32,768): logits memory is part of the figure
    with torch.device("cuda"):
        m = AutoModelForCausalLM.from_config(shape_cfg, dtype=torch_dtype(dev.capability))
    n_params = sum(p.numel() for p in m.parameters())
    m.save_pretrained(work / "minerva3b"); del m; torch.cuda.empty_cache()
    peak = peak_tflops(dev.name)
    print(f"device: {dev.name}, {dev.memory_gb} GiB, capability {dev.capability}; Minerva-3B shape, {n_params / 1e9:.2f}B parameters")
    print(f"{'profile':<8}{'seq':>6}{'batch x acc':>13}{'ckpt':>6}{'tokens/s':>10}{'MFU':>7}{'peak GiB':>10}{'estimate':>10}")
    for name in ("T4", "L4", "A100", "H100"):
        cfg = resolve(name, "production")
        if cfg.capability and dev.capability and cfg.capability[0] >= 8 and dev.capability[0] < 8:
            print(f"{name:<8} skipped: needs bf16 (Ampere or newer)"); continue
        for seq in (512, 1024):
            r = train_profile(work / "minerva3b", cfg, seq, a.steps)
            est = estimate_memory(cfg, seq_len=seq)["total"]
            if r is None:
                print(f"{name:<8}{seq:>6}{cfg.train.per_device_train_batch_size:>7} x {cfg.train.gradient_accumulation_steps:<4}   out of memory; estimate {est:.1f} GiB"); continue
            # LoRA training FLOPs per token: forward 2N, backward through activations 2N (frozen weights get no
            # weight gradients), plus a second forward 2N when checkpointing recomputes activations.
            flops = (6 if cfg.train.gradient_checkpointing else 4) * n_params * r["tokens_per_s"]
            mfu = flops / (peak * 1e12) if peak else float("nan")
            print(f"{name:<8}{seq:>6}{cfg.train.per_device_train_batch_size:>7} x {cfg.train.gradient_accumulation_steps:<4}"
                  f"{str(cfg.train.gradient_checkpointing):>6}{r['tokens_per_s']:>10.0f}{mfu:>7.1%}{r['peak_gib']:>10.1f}{est:>10.1f}")
            if name == "T4":
                print(f"         T4 verdict at {seq}: {'fits' if r['peak_gib'] < 15 else 'does NOT fit'} in 15 GB (peak {r['peak_gib']:.1f} GiB)")
    if a.skip_generation: return
    from marco_lib.tiny import qwen25_3b_config, qwen_tokenizer
    from marco_lib.corpora import collect_questions, sample_paths
    from marco_lib.generate import generate_answers, needs_answer
    qtok = qwen_tokenizer(); qtok.save_pretrained(work / "qwen3b")
    with torch.device("cuda"):
        # the vocabulary is cut to the local tokenizer's (Qwen's own cannot be downloaded here): the output head is smaller
        q = AutoModelForCausalLM.from_config(qwen25_3b_config(vocab_size=len(qtok)), dtype=torch_dtype(dev.capability))
    q.save_pretrained(work / "qwen3b"); del q; torch.cuda.empty_cache()
    qs = [x for x in collect_questions(**sample_paths())[0] if needs_answer(x)]
    backends = ["hf"] + (["vllm"] if importlib.util.find_spec("vllm") else [])
    for backend in backends:
        s = generate_answers(qs, str(work / "qwen3b"), work / f"gen-{backend}.jsonl", batch_size=16, backend=backend, progress=False)
        print(f"generation ({backend}, Qwen2.5-3B shape with a {len(qtok)}-token vocabulary, batch 16): {s['answers_per_s']} answers/s over {s['generated']} answers")


if __name__ == "__main__":
    main()
