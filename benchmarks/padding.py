"""Share of pad tokens per batch: the project's length-grouped batching vs random order padded to the longest row
(the usual default, e.g. TRL's) vs padding every row to the maximum length (1,024).

Lengths come from an assembled dataset (`--dataset DIR`, its tokenized train split) or, by default, from a synthetic
set with the user's level distribution (17,913 conversations, A1 4,000 ... C2 1,212): a prompt of 40-220 tokens and
an answer of 35-100% of the level's max_new_tokens, plus EOS. Batch sizes are those of the GPU profiles; in training,
rows are grouped over batch x accumulation (the rows of one optimizer step), as the Trainer's sampler groups them.
Prints a table and ratios measured in this run; asserts nothing.
"""
import argparse
import random

from marco_lib import dataset as md
from marco_lib.config import GPU_PROFILES
from marco_lib.levels import LEVELS, target_counts


def synthetic_lengths(seed=0):
    rng, out = random.Random(seed), []
    for level in LEVELS:
        for _ in range(target_counts()[level.code]):
            out.append(rng.randint(40, 220) + int(level.max_new_tokens * rng.uniform(0.35, 1.0)) + 1)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", help="a folder written by `marco assemble --tokenizer ...`")
    ap.add_argument("--max-length", type=int, default=1024)
    a = ap.parse_args()
    if a.dataset:
        from datasets import load_from_disk
        lengths, what = [len(x) for x in load_from_disk(f"{a.dataset}/tokenized")["train"]["input_ids"]], a.dataset
    else:
        lengths, what = synthetic_lengths(), "synthetic, the user's level distribution"
    # (profile, phase, per-device batch, accumulation): the Trainer groups batch x accumulation rows when it trains,
    # and one batch at a time when it evaluates
    cases = sorted({(n, "train", p.settings["per_device_train_batch_size"], p.settings["gradient_accumulation_steps"]) for n, p in GPU_PROFILES.items()}
                   | {(n, "eval", p.settings["per_device_eval_batch_size"], 1) for n, p in GPU_PROFILES.items()})
    order = list(range(len(lengths))); random.Random(0).shuffle(order)
    print(f"{len(lengths):,} conversations ({what}); mean length {sum(lengths) / len(lengths):.0f} tokens")
    print(f"{'profile':>7} {'phase':>5} {'batch x accum':>13} {'grouped (marco_lib)':>20} {'random, pad to longest':>23} "
          f"{'pad to ' + str(a.max_length):>12} {'random/grouped':>15}")
    for name, phase, b, acc in cases:
        if b == 1: continue
        g = md.pad_share(lengths, md.length_grouped_order(lengths, b, acc, seed=0), b)
        r = md.pad_share(lengths, order, b)
        m = md.pad_share(lengths, order, b, pad_to=a.max_length)
        print(f"{name:>7} {phase:>5} {f'{b} x {acc}':>13} {g:>20.1%} {r:>23.1%} {m:>12.1%} {r / g if g else float('inf'):>14.1f}x")
    print("(batch size 1, the T4 and CPU profiles' training batch, pads nothing in any scheme)")


if __name__ == "__main__":
    main()
