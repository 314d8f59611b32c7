"""`marco bench generate` as a script: answers/s of the project's length-sorted batches vs batches in reading order vs
one question at a time, with per-question seeds (equal work); the last line is `ratio: X (min A, max B, n N)`.
See benchmarks/README.md."""
import sys

from marco_lib.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "generate", *sys.argv[1:]]))
