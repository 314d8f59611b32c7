"""`marco bench gpu` as a script: LoRA training of the real Minerva-3B shape under each GPU profile (tokens/s, MFU,
peak memory next to the estimate); says it was skipped without a CUDA GPU. See benchmarks/README.md."""
import sys

from marco_lib.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "gpu", *sys.argv[1:]]))
