"""Every command, fed a table of bad inputs: exit 2, one line naming the file or argument, no traceback, nothing written.

A workspace with good outputs of every stage (questions, answers, a dataset, a trained run) is built once. Each case runs
one `marco` command with one thing wrong and checks the outcome, then that every file in the workspace is byte for byte
what it was, with no file added (no temporary file left behind, no output replaced by a worse one)."""
import hashlib
import json
import shutil
from pathlib import Path

import pytest

from marco_lib.corpora import collect_questions, sample_paths
from marco_lib.io import write_jsonl
from marco_lib.tiny import fixture_answers


@pytest.fixture(scope="module")
def ws(tmp_path_factory, tiny_models):
    "A workspace with a good output of every stage, and broken files to feed the commands."
    from marco_lib.dataset import assemble
    from marco_lib.train import train
    w = tmp_path_factory.mktemp("ws")
    qs, _ = collect_questions(**sample_paths())
    write_jsonl([q.to_dict() for q in qs], w / "questions.jsonl")
    write_jsonl(fixture_answers(qs, "Qwen/Qwen2.5-3B-Instruct"), w / "answers.jsonl")
    assemble(w / "questions.jsonl", [w / "answers.jsonl"], w / "data", tokenizer=tiny_models["minerva"], targets="all",
             fractions=(0.6, 0.2, 0.2), seed=0)
    train(w / "data", str(tiny_models["minerva"]), w / "run", gpu="CPU", preset="debug", report_to="none", log=lambda *_: None,
          overrides=dict(max_steps=2, per_device_train_batch_size=4, per_device_eval_batch_size=4, gradient_accumulation_steps=2))
    bad = w / "bad"; bad.mkdir()
    (bad / "cima.json").write_text('{"prepDataset": {"0": {"past_convo": ["Ciao"', encoding="utf-8")  # cut short
    (bad / "empty-merlin").mkdir()
    (bad / "questions.jsonl").write_text((w / "questions.jsonl").read_text().splitlines()[0] + "\n{not json}\n", encoding="utf-8")
    (bad / "config.yaml").write_text("train:\n  save_steps: often\n", encoding="utf-8")
    shutil.copytree(w / "run" / "adapter", bad / "adapter")
    (bad / "adapter" / "adapter_config.json").write_text('{"base_model_name_or_path": "', encoding="utf-8")  # cut short
    shutil.copytree(w / "run" / "adapter", bad / "moved-base")
    cfg = json.loads((bad / "moved-base" / "adapter_config.json").read_text())
    (bad / "moved-base" / "adapter_config.json").write_text(json.dumps(cfg | {"base_model_name_or_path": str(w / "gone" / "minerva")}))
    shutil.copytree(w / "data", bad / "untokenized")
    shutil.rmtree(bad / "untokenized" / "tokenized")
    shutil.copytree(w / "data", bad / "no-train-split")
    shutil.rmtree(bad / "no-train-split" / "tokenized" / "train")
    return w


def snapshot(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


# (case id, arguments with {w} for the workspace, what the one error line must name)
CASES = [
    ("questions: truncated CIMA", "questions --cima {w}/bad/cima.json --out {w}/questions.jsonl", "cima.json"),
    ("questions: missing file", "questions --cima {w}/nothing.json --out {w}/questions.jsonl", "nothing.json"),
    ("questions: MERLIN folder without texts", "questions --merlin {w}/bad/empty-merlin --out {w}/questions.jsonl", "empty-merlin"),
    ("questions: --out is a folder", "questions --cima {w}/bad/cima.json --out {w}/data", "--out"),
    ("generate: corrupt questions line", "generate --questions {w}/bad/questions.jsonl --model {w}/x --out {w}/answers.jsonl", "line 2"),
    ("generate: --out is a folder", "generate --questions {w}/questions.jsonl --model {w}/x --out {w}/data", "--out"),
    ("generate: bad shard", "generate --questions {w}/questions.jsonl --model {w}/x --out {w}/answers.jsonl --shard 3/3", "--shard"),
    ("generate: batch size 0", "generate --questions {w}/questions.jsonl --model {w}/x --out {w}/answers.jsonl --batch-size 0", "--batch-size"),
    ("generate: scale above 1", "generate --questions {w}/questions.jsonl --model {w}/x --out {w}/answers.jsonl --scale 2", "--scale"),
    ("assemble: answers file missing", "assemble --questions {w}/questions.jsonl --answers {w}/nothing.jsonl --out {w}/data", "nothing.jsonl"),
    ("train: unknown setting", "train --dataset {w}/data --out {w}/run --set lora_rank=8", "lora_rank"),
    ("train: ill-typed config file", "train --dataset {w}/data --out {w}/run --config {w}/bad/config.yaml", "config.yaml"),
    ("train: dataset not tokenized", "train --dataset {w}/bad/untokenized --out {w}/run", "untokenized"),
    ("train: tokenized/train missing (not the model's fault)", "train --dataset {w}/bad/no-train-split --out {w}/run", "no tokenized train split"),
    ("train: negative samples per level", "train --dataset {w}/data --out {w}/run --samples-per-level -1", "--samples-per-level"),
    ("train: a Hub name without an owner", "train --dataset {w}/data --out {w}/run --push-to-hub marco", "owner/name"),
    ("evaluate: --limit 0", "evaluate --adapter {w}/run --dataset {w}/data --limit 0", "--limit"),
    ("evaluate: corrupt adapter_config.json", "evaluate --adapter {w}/bad/adapter --dataset {w}/data --report {w}/bad/report", "adapter_config.json"),
    ("evaluate: dataset without tokenized splits", "evaluate --adapter {w}/run --dataset {w}/bad/untokenized", "tokenized"),
    ("evaluate: recorded base model gone", "evaluate --adapter {w}/bad/moved-base --dataset {w}/data --report {w}/bad/report", "--base-model"),
    ("evaluate: --estimator not an estimator", "evaluate --adapter {w}/run --dataset {w}/data --estimator {w}/bad/config.yaml --report {w}/bad/report", "config.yaml"),
    ("chat: unknown level", "chat --adapter {w}/run --level X9 hello", "X9"),
    ("chat: corrupt adapter_config.json", "chat --adapter {w}/bad/adapter hello", "adapter_config.json"),
    ("config: unknown preset", "config --preset fastest", "fastest"),
]


@pytest.mark.parametrize("args,names", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_exits_2_with_one_line_and_writes_nothing(ws, marco, args, names):
    before = snapshot(ws)
    r = marco(*args.format(w=ws).split())
    errors = [l for l in r.stderr.splitlines() if l.startswith("marco ") and ": error: " in l]
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr and len(errors) == 1, r.stderr[-2000:]
    assert names in errors[0], errors[0]
    assert snapshot(ws) == before  # no output replaced, nothing left behind


def test_levels_are_case_insensitive_in_chat(ws, marco):
    r = marco("chat", "--adapter", ws / "run", "--level", "b1", "--max-new-tokens", "4", "Ciao!")
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-2000:]
