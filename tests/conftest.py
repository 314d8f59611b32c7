import os
import subprocess
import sys

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")  # no test may reach a tracker or prompt for a login
os.environ.setdefault("HF_HUB_OFFLINE", "1")
# One PyTorch thread per process (the tests' own and the `marco` commands they start): the tiny models' operations are
# too small to gain from more, and on a small shared machine extra threads stall at every operation's barrier.
os.environ.setdefault("OMP_NUM_THREADS", "1")


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory):
    "The tiny Minerva- and Qwen-shaped models, built once per test session."
    from marco_lib.tiny import build_tiny_models
    return build_tiny_models(tmp_path_factory.mktemp("tiny-models"))


@pytest.fixture
def marco():
    "Run the installed `marco` console command; returns the CompletedProcess."
    def run(*args, env=None):
        exe = os.path.join(os.path.dirname(sys.executable), "marco")
        return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=300,
                              env={**os.environ, **(env or {})})
    return run


@pytest.fixture(scope="session")
def assembled(tmp_path_factory, tiny_models):
    "A tokenized dataset from the bundled samples with audit-clean fixture answers, built once per split fractions."
    cache = {}

    def build(fractions=(0.8, 0.1, 0.1)):
        if fractions not in cache:
            from marco_lib.corpora import collect_questions, sample_paths
            from marco_lib.io import write_jsonl
            from marco_lib.dataset import assemble
            from marco_lib.tiny import fixture_answers
            d = tmp_path_factory.mktemp("assembled")
            qs, _ = collect_questions(**sample_paths())
            write_jsonl(fixture_answers(qs, "Qwen/Qwen2.5-3B-Instruct"), d / "answers.jsonl")
            assemble(qs, [d / "answers.jsonl"], d / "data", tokenizer=tiny_models["minerva"], targets="all", fractions=fractions, seed=0)
            cache[fractions] = d / "data"
        return cache[fractions]
    return build
