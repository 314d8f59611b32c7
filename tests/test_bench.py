"`marco bench`: each report ends with its summary line, measures the product's path, and does equal work on every path."
import re
import shutil
from pathlib import Path

import pytest

from marco_lib import bench as mb

RATIO = re.compile(r"^ratio: \d+\.\d\d \(min \d+\.\d\d, max \d+\.\d\d, n (\d+)\)")


@pytest.fixture(scope="module")
def bench_env(tmp_path_factory, tiny_models, assembled):
    "A MARCO_CACHE whose benchmark pool is the samples with fixture answers (no generator to build), and the tiny models."
    cache = tmp_path_factory.mktemp("marco-cache")
    with pytest.MonkeyPatch.context() as m:
        m.setenv("MARCO_CACHE", str(cache))
        shutil.copytree(assembled((1.0, 0.0, 0.0)), mb.pool_dir(0) / "data")
    return {"MARCO_CACHE": str(cache), "MARCO_TINY_DIR": str(Path(tiny_models["minerva"]).parent)}


def test_bench_train_ends_with_the_ratio_over_the_strongest_baseline(marco, bench_env):
    r = marco("bench", "train", "--rows", "36", "--repeats", "2", env=bench_env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    m = RATIO.match(lines[-1])
    assert m and m.group(1) == "2", lines[-1]
    assert lines[-1].endswith("= marco_lib / common default, answer tokens/s")
    assert any("(equal work)" in line for line in lines), r.stdout  # every path trained on the same real tokens
    assert "repeat 2: common default" in r.stderr  # progress goes to stderr, interleaved


def test_training_bench_runs_the_products_trainer_and_the_default(bench_env, monkeypatch, tiny_models, tmp_path):
    from datasets import Dataset
    from transformers import Trainer
    from marco_lib.train import MarcoTrainer
    for k, v in bench_env.items(): monkeypatch.setenv(k, v)
    rows = mb.real_length_rows(mb.bench_pool(), mb.target_mix(18), 0)
    ds = Dataset.from_list([{k: r[k] for k in ("input_ids", "attention_mask", "labels")} for r in rows])
    project = mb.project_trainer(mb.bench_config(tiny_models["minerva"], tmp_path, "L4"), ds)
    default = mb.default_trainer(mb.bench_config(tiny_models["minerva"], tmp_path, "L4"), ds)
    assert isinstance(project, MarcoTrainer) and type(default) is Trainer
    for t in (project, default):  # the L4 profile's batch and accumulation on both sides
        assert (t.args.per_device_train_batch_size, t.args.gradient_accumulation_steps) == (3, 3)
    assert project._get_train_sampler().group_size == 3 * 3  # the product groups one optimizer step's rows
    res = mb.bench_training(rows, tiny_models["minerva"], "L4", repeats=1)
    assert res["marco_lib"][0]["pad_share"] < res["common default"][0]["pad_share"]
    assert res["marco_lib"][0]["real_tokens"] == res["common default"][0]["real_tokens"]


def test_bench_padding_ends_with_the_limit(marco, bench_env):
    r = marco("bench", "padding", "--n", "3000", "--seeds", "2", env=bench_env)
    assert r.returncode == 0, r.stderr
    last = r.stdout.strip().splitlines()[-1]
    m = re.match(r"^limit: (\d\.\d{3}) \(min \d\.\d{3}, max \d\.\d{3}, n 2\)", last)
    assert m and 1.0 <= float(m.group(1)) < 1.2, last


def test_padding_limit_is_the_sorted_batching():
    import random
    rng = random.Random(1)
    lengths = [rng.randint(10, 500) for _ in range(300)]
    best = mb.fewest_tokens(lengths, 4)
    for s in range(20):  # no order does better than sorting the whole set
        order = list(range(300)); rng.shuffle(order)
        assert mb.computed_tokens(lengths, order, 4) >= best
    assert best >= sum(lengths)


def test_bench_generate_reports_finish_reasons_and_ratio(marco, bench_env, tiny_models):
    r = marco("bench", "generate", "--model", tiny_models["qwen"], "--questions", "4", "--batch-size", "2", "--repeats", "1", env=bench_env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert RATIO.match(lines[-1]) and "answers/s" in lines[-1], lines[-1]
    assert any(line.startswith("over one at a time: ") for line in lines)
    assert "finish" in r.stdout and "answers whose length differs from one at a time" in r.stdout


def test_bench_gpu_says_it_was_skipped_without_a_gpu(marco):
    r = marco("bench", "gpu", env={"CUDA_VISIBLE_DEVICES": ""})  # no GPU even on a machine that has one
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1].startswith("skipped: no CUDA GPU"), r.stdout + r.stderr


@pytest.mark.parametrize("args", [("train", "--repeats", "0"), ("padding", "--seeds", "0"), ("generate", "--questions", "0")])
def test_bench_refuses_counts_below_one(marco, args):
    r = marco("bench", *args)
    assert r.returncode == 2 and r.stderr.startswith("marco bench: error: --") and "Traceback" not in r.stderr, r.stderr


def test_bench_options_are_report_parameters_with_their_docments():
    "Every `marco bench` option reaches its report function as a keyword, and its help is that parameter's docments comment."
    import inspect
    from fastcore.docments import docments
    from marco_lib.cli import parser
    bench = parser()._subparsers._group_actions[0].choices["bench"]
    for what, sp in bench._subparsers._group_actions[0].choices.items():
        report = mb.REPORTS[what]
        params, docs = inspect.signature(report).parameters, docments(report)
        for a in (a for a in sp._actions if a.dest != "help"):
            assert a.dest in params and a.default is None, (what, a.dest)  # passed on only when given
            assert a.help.startswith(f"{docs[a.dest]} ("), (what, a.dest, a.help, docs[a.dest])
