"""`marco bench train` as a script: answer tokens/s of training through `Trainer.train`, the project's batching vs the
common default, medians of interleaved repeats; the last line is `ratio: X (min A, max B, n N)`. See benchmarks/README.md."""
import sys

from marco_lib.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "train", *sys.argv[1:]]))
