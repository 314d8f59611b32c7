"""`marco bench padding` as a script: pad share of the project's length grouping vs random order vs padding to 1,024,
on real-length rows, for every padded GPU profile; the last line is `limit: X`. See benchmarks/README.md."""
import sys

from marco_lib.cli import main

if __name__ == "__main__":
    sys.exit(main(["bench", "padding", *sys.argv[1:]]))
