"""`marco demo`: quick, quiet and readable cold; a rerun reuses what is done and says so; the demo generator is built once
per recipe, seed and questions, cached under a key, and only a complete build is ever reused."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

NEXT = "Next: the Colab runbooks in notebooks/colab/"


def run_marco_demo(out: Path, env: dict) -> subprocess.CompletedProcess:
    "The installed `marco demo` (as the `marco` fixture runs it), here for a module-scoped fixture; a timeout is a failed run."
    exe = os.path.join(os.path.dirname(sys.executable), "marco")
    try:
        return subprocess.run([exe, "demo", "--out", str(out)], capture_output=True, text=True, timeout=300, env={**os.environ, **env})
    except subprocess.TimeoutExpired as e:
        return subprocess.CompletedProcess(e.cmd, -9, str(e.stdout or ""), f"timed out after {e.timeout}s")


@pytest.fixture(scope="module")
def demo_runs(tmp_path_factory, tiny_models):
    "`marco demo` cold (an empty generator cache, a new --out), then again with the same --out."
    root = tmp_path_factory.mktemp("demo")
    env = {"MARCO_CACHE": str(root / "cache"), "MARCO_TINY_DIR": str(Path(tiny_models["minerva"]).parent)}
    cold = run_marco_demo(root / "out", env)
    again = run_marco_demo(root / "out", env) if cold.returncode == 0 else None
    return {"root": root, "out": root / "out", "cache": root / "cache", "env": env, "cold": cold, "again": again}


def generator_folders(cache: Path) -> list:
    return sorted(p.name for p in cache.iterdir() if "demo-generator" in p.name)


def test_cold_demo_is_quiet_readable_and_complete(demo_runs):
    cold, out = demo_runs["cold"], demo_runs["out"]
    assert cold.returncode == 0, cold.stderr[-3000:]
    for f in ("questions.jsonl", "answers.jsonl", "audit.json", "data/card.json", "data/README.md", "run/manifest.json",
              "run/adapter/adapter_model.safetensors", "run/eval/report.json", "demo.json", "demo.log"):
        assert (out / f).exists(), f
    text = cold.stdout + cold.stderr
    assert "\x1b" not in text and "\r" not in text and "Warning" not in text, text
    lines = text.rstrip("\n").splitlines()
    assert len(lines) <= 30, text
    assert lines[-1].startswith(NEXT) and "marco demo --real" in lines[-1] and "marco bench" in lines[-1], lines[-1]
    assert any(l.startswith("What the figures mean") and "random weights" in l for l in lines)
    reply = next(l for l in lines if "marco>" in l)
    assert all(c.isprintable() for c in reply) and len(reply) <= 200, repr(reply)
    assert "demo generator: built in" in text and "for 150 steps" in text, text
    assert "{'loss'" in (out / "demo.log").read_text()  # the Trainer's log dicts went to demo.log, kept for debugging
    summary = json.loads((out / "demo.json").read_text())
    assert summary["training"]["status"] == "completed" and summary["dataset"]["generated"] > 0
    # the generator's answers stop with <|im_end|> at many lengths, and a good share of them pass the audit
    answers = [json.loads(l) for l in (out / "answers.jsonl").read_text().splitlines()]
    stops = {a["new_tokens"] for a in answers if a["finish_reason"] == "stop"}
    assert len(stops) >= 20, sorted(stops)
    assert summary["audit"]["clean"] >= 0.4 * summary["audit"]["answers"], summary["audit"]
    assert generator_folders(demo_runs["cache"]) == [Path(summary["generator"]["path"]).name]  # no temporary folder left


def test_rerun_reuses_the_generator_answers_and_training_and_says_so(demo_runs):
    again, cache = demo_runs["again"], demo_runs["cache"]
    assert again is not None and again.returncode == 0, again and again.stderr[-3000:]
    text = again.stdout
    assert "demo generator: reusing the cached one in " + str(cache) in text, text
    assert "training the demo generator" not in text and "demo generator: built" not in text, text
    assert re.search(r"generation: all \d+ answers already in answers.jsonl, nothing to generate", text), text
    assert "training: already complete at step " in text, text
    assert "\x1b" not in again.stdout + again.stderr and len(text.splitlines()) <= 30
    folders = generator_folders(cache)
    assert len(folders) == 1, folders
    record = json.loads((cache / folders[0] / "demo_generator.json").read_text())
    assert record["built"][:16].replace("T", " ") in text  # says when it was built


def test_demo_restores_the_process_output_settings(demo_runs, monkeypatch):
    "In-process, a (quick) rerun leaves threads, loggers, progress bars, warnings and stdout as it found them."
    for k, v in demo_runs["env"].items(): monkeypatch.setenv(k, v)
    import logging
    import warnings
    import datasets
    import torch
    from transformers.utils import logging as tl
    from marco_lib.demo import run_demo
    state = lambda: (torch.get_num_threads(), tl.is_progress_bar_enabled(), datasets.is_progress_bar_enabled(), list(warnings.filters),
                     warnings.showwarning, sys.stdout, sys.stderr, [getattr(h, "stream", None) for h in logging.getLogger("transformers").handlers])
    before, lines = state(), []
    run_demo(demo_runs["out"], log=lines.append, cache_dir=demo_runs["cache"])
    assert state() == before
    assert any("reusing the cached one" in l for l in lines) and lines[-1].startswith(NEXT)


def test_generator_cache_key_changes_with_the_seed():
    from marco_lib.corpora import collect_questions, sample_paths
    from marco_lib.demo import demo_generator_key
    qs, _ = collect_questions(**sample_paths())
    assert demo_generator_key(qs, seed=0) == demo_generator_key(qs, seed=0)
    assert demo_generator_key(qs, seed=0) != demo_generator_key(qs, seed=1)
    assert demo_generator_key(qs, seed=0, steps=10) != demo_generator_key(qs, seed=0, steps=11)


def test_half_built_generator_folder_is_not_reused(tmp_path):
    "A folder at the cache path without the completion record (a build from elsewhere, cut short) is rebuilt, not loaded."
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from marco_lib.corpora import collect_questions, sample_paths
    from marco_lib.demo import demo_generator, demo_generator_key
    qs, _ = collect_questions(**sample_paths())
    half = tmp_path / f"demo-generator-{demo_generator_key(qs, steps=2)}"
    half.mkdir()
    (half / "config.json").write_text("{}")
    (half / "model.safetensors").write_bytes(b"cut short")
    said = []
    got = demo_generator(qs, steps=2, cache_dir=tmp_path, log=said.append)
    assert got == half and any("built in" in s for s in said) and not any("reusing" in s for s in said), said
    assert (half / "demo_generator.json").exists()
    AutoModelForCausalLM.from_pretrained(half)  # loads: the junk was replaced
    tok = AutoTokenizer.from_pretrained(half)
    assert tok.eos_token == "<|im_end|>" and tok.chat_template
    assert sorted(p.name for p in tmp_path.iterdir()) == [half.name]  # no temporary sibling left behind


def test_killed_build_leaves_nothing_that_looks_complete(tmp_path, monkeypatch):
    from marco_lib import demo
    from marco_lib.corpora import collect_questions, sample_paths
    qs, _ = collect_questions(**sample_paths())

    def killed(path, *a, **kw):
        (path / "config.json").write_text("{}")
        raise KeyboardInterrupt
    monkeypatch.setattr(demo, "_build_generator", killed)
    with pytest.raises(KeyboardInterrupt):
        demo.demo_generator(qs, steps=2, cache_dir=tmp_path, log=lambda *_: None)
    assert list(tmp_path.iterdir()) == []
