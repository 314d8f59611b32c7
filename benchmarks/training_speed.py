"""Training throughput in answer tokens/s: the project's batching vs the common default vs the earlier recipe.

Same tiny Minerva-shaped model with the same LoRA adapter, same conversations, batch size 4, AdamW; only the
batching and labels change:
- marco_lib: length-grouped batches (transformers' LengthGroupedSampler), padded to each batch's longest row, labels
  on the answer and EOS only;
- common default: random order, padded to each batch's longest row (e.g. TRL's collator), same labels;
- earlier recipe: every row padded to 1,024 tokens, every token labelled (the implementation this design replaces).
Throughput counts answer tokens (what the model is being taught) per second of forward + backward + step.
Prints a table and ratios measured in this run; asserts nothing.
"""
import argparse
import platform
import random
import tempfile
import time
from pathlib import Path

import torch


def build_rows(n_rows):
    from datasets import load_from_disk
    from marco_lib.corpora import collect_questions, sample_paths, write_jsonl
    from marco_lib.dataset import assemble
    from marco_lib.tiny import fixture_answers, tiny_models
    d = Path(tempfile.mkdtemp())
    qs, _ = collect_questions(**sample_paths())
    write_jsonl(fixture_answers(qs), d / "a.jsonl")
    assemble(qs, [d / "a.jsonl"], d / "data", tokenizer=tiny_models()["minerva"], targets="all", fractions=(1.0, 0.0, 0.0))
    rows = list(load_from_disk(str(d / "data" / "tokenized"))["train"])
    return [rows[i % len(rows)] for i in range(n_rows)]


def batches(rows, order, bs, pad_to=None, all_labels=False, pad_id=0):
    for i in range(0, len(order), bs):
        chunk = [rows[j] for j in order[i:i + bs]]
        n = pad_to or max(len(r["input_ids"]) for r in chunk)
        ids = torch.tensor([r["input_ids"] + [pad_id] * (n - len(r["input_ids"])) for r in chunk])
        mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (n - len(r["input_ids"])) for r in chunk])
        if all_labels: labels = ids.clone()  # the earlier recipe: prompt and padding included
        else: labels = torch.tensor([r["labels"] + [-100] * (n - len(r["labels"])) for r in chunk])
        answer_tokens = sum(sum(t != -100 for t in r["labels"]) for r in chunk)
        yield ids, mask, labels, answer_tokens, int(mask.sum()), ids.numel()


def run(rows, order, bs, **kw):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from marco_lib.config import lora_kwargs, resolve
    from marco_lib.tiny import tiny_models
    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_models()["minerva"]), LoraConfig(**lora_kwargs(resolve("CPU"))))
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=2e-4)
    answers = real = slots = 0
    t = time.perf_counter()
    for ids, mask, labels, a, r, s in batches(rows, order, bs, **kw):
        model(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
        opt.step(); opt.zero_grad()
        answers += a; real += r; slots += s
    secs = time.perf_counter() - t
    return secs, answers / secs, 1 - real / slots


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=192)
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--accumulation", type=int, default=2, help="the sampler groups batch x accumulation rows, as in training")
    a = ap.parse_args()
    from marco_lib.dataset import length_grouped_order
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = build_rows(a.rows)
    lengths = [len(r["input_ids"]) for r in rows]
    random_order = list(range(len(rows))); random.Random(0).shuffle(random_order)
    results = [("marco_lib: grouped, answer-only labels", *run(rows, length_grouped_order(lengths, a.batch_size, a.accumulation), a.batch_size)),
               ("common default: random, pad to longest", *run(rows, random_order, a.batch_size)),
               ("earlier recipe: pad to 1024, all labelled", *run(rows, random_order, a.batch_size, pad_to=1024, all_labels=True))]
    print(f"tiny Minerva-shaped model + LoRA r16 on CPU ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads); "
          f"{len(rows)} conversations, mean {sum(lengths) / len(lengths):.0f} tokens, batch {a.batch_size}")
    print(f"{'path':<44} {'seconds':>8} {'answer tok/s':>13} {'pad share':>10}")
    for name, secs, tps, pad in results:
        print(f"{name:<44} {secs:>8.2f} {tps:>13.0f} {pad:>10.1%}")
    print(f"marco_lib is {results[0][2] / results[1][2]:.2f}x the common default and {results[0][2] / results[2][2]:.2f}x the earlier recipe")


if __name__ == "__main__":
    main()
