import os
import subprocess
import sys

import pytest

os.environ.setdefault("WANDB_MODE", "disabled")  # no test may reach a tracker or prompt for a login
os.environ.setdefault("HF_HUB_OFFLINE", "1")


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
