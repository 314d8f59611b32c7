"""Answers/s of batched, length-sorted generation vs batched in arrival order vs one question at a time.

Same model, same questions, same sampling parameters per level; only the batching changes. Default model: the tiny
Qwen-shaped model (CPU); pass --model Qwen/Qwen2.5-3B-Instruct (or a local folder) on a GPU for the real figure.
Prints a table and the speed-up ratios measured in this run; asserts nothing.
Usage: python benchmarks/generation_speed.py [--model DIR] [--questions N] [--batch-size B]
"""
import argparse
import platform
import time

from marco_lib import generate as mg
from marco_lib.corpora import collect_questions, sample_paths
from marco_lib.levels import LEVEL_CODES
from marco_lib.tiny import tiny_models


def run(model, tok, batches, seed=0):
    t = time.perf_counter()
    tokens = 0
    for b in batches:
        tokens += sum(r["new_tokens"] for r in mg.generate_batch_hf(model, tok, b, seed))
    return time.perf_counter() - t, tokens


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", help="generator (default: the tiny Qwen-shaped model)")
    ap.add_argument("--questions", type=int, default=48)
    ap.add_argument("--batch-size", type=int, default=8)
    a = ap.parse_args()
    model_path = a.model or str(tiny_models()["qwen"])
    qs = [q for q in collect_questions(**sample_paths())[0] if mg.needs_answer(q)][: a.questions]
    model, tok = mg.load_generator(model_path)
    lens = [len(x) for x in tok(mg.prompt_texts(tok, qs), add_special_tokens=False)["input_ids"]]
    sorted_batches = mg.plan_batches(list(zip(qs, lens)), a.batch_size)
    arrival = []  # one level per batch (sampling is per level) but in reading order, not sorted by length
    for lvl in LEVEL_CODES:
        mine = [q for q in qs if q.level == lvl]
        arrival += [mine[i:i + a.batch_size] for i in range(0, len(mine), a.batch_size)]
    single = [[q] for q in qs]
    length_of = {q.id: n for q, n in zip(qs, lens)}
    pad = lambda bs: mg.padding_share([[length_of[q.id] for q in b] for b in bs])
    run(model, tok, sorted_batches[:1])  # warm-up
    rows = []
    for name, batches in [("batched, length-sorted (marco_lib)", sorted_batches), ("batched, arrival order", arrival),
                          ("one question at a time", single)]:
        secs, tokens = run(model, tok, batches)
        rows.append((name, len(batches), pad(batches), secs, len(qs) / secs, tokens / secs))
    print(f"model: {model_path} on {model.device}; {len(qs)} questions, batch size {a.batch_size}; "
          f"{platform.processor() or platform.machine()}, Python {platform.python_version()}")
    print(f"{'path':<36} {'batches':>7} {'pad share':>9} {'seconds':>8} {'answers/s':>9} {'new tok/s':>9}")
    for name, nb, p, s, aps, tps in rows:
        print(f"{name:<36} {nb:>7} {p:>9.3f} {s:>8.2f} {aps:>9.2f} {tps:>9.0f}")
    print(f"speed-up of the sorted batched path: {rows[0][4] / rows[2][4]:.2f}x over one at a time, "
          f"{rows[0][4] / rows[1][4]:.2f}x over batches in arrival order")


if __name__ == "__main__":
    main()
