"Evaluation and chat: per-level losses with and without the adapter, samples, stop rates, plots, the CLI."
import json
import subprocess

import pytest

from marco_lib import evaluate as me
from marco_lib.train import train


@pytest.fixture(scope="module")
def run(tmp_path_factory, tiny_models, assembled):
    d = tmp_path_factory.mktemp("eval")
    (d / "data").symlink_to(assembled((0.6, 0.1, 0.3)))
    train(d / "data", str(tiny_models["minerva"]), d / "run", gpu="CPU", preset="debug", report_to="none", log=lambda *_: None,
          overrides=dict(eval_steps=2, save_steps=2, logging_steps=1, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                         per_device_eval_batch_size=4, learning_rate=5e-3))
    return d


def test_chat_returns_the_new_turn_and_leaves_history_alone(run):
    model, tok = me.load_marco(run / "run")
    history = [{"role": "user", "content": "Ciao"}, {"role": "assistant", "content": "Ciao!"}]
    snapshot = json.dumps(history)
    reply, new = me.chat(model, tok, "Come stai?", history, level="B2", max_new_tokens=6)
    assert json.dumps(history) == snapshot and new is not history
    assert new[:2] == history and new[2:] == [{"role": "user", "content": "Come stai?"}, {"role": "assistant", "content": reply}]


def test_the_base_view_is_the_base_model(run, tiny_models):
    from datasets import load_from_disk
    from transformers import AutoModelForCausalLM
    model, tok = me.load_marco(run / "run")
    rows = list(load_from_disk(str(run / "data" / "tokenized"))["test"])
    with model.disable_adapter(): via_peft = me.level_losses(model, rows, tok.pad_token_id)
    plain = me.level_losses(AutoModelForCausalLM.from_pretrained(tiny_models["minerva"]).eval(), rows, tok.pad_token_id)
    assert via_peft.keys() == plain.keys()
    assert all(abs(via_peft[l]["loss"] - plain[l]["loss"]) < 1e-3 for l in plain)
    tuned = me.level_losses(model, rows, tok.pad_token_id)
    assert any(abs(tuned[l]["loss"] - plain[l]["loss"]) > 1e-4 for l in plain)  # the adapter changes something


def test_marco_evaluate_reports_every_test_level_and_draws_the_plots(marco, run):
    r = marco("evaluate", "--adapter", run / "run", "--dataset", run / "data", "--per-level", "1", "--max-new-tokens", "12", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    test_levels = {json.loads(l)["level"] for l in (run / "data" / "conversations" / "test.jsonl").read_text().splitlines()}
    assert [x["level"] for x in report["levels"]] == [l for l in me.LEVEL_CODES if l in test_levels]
    for x in report["levels"]:
        assert x["base_loss"] > 0 and x["tuned_loss"] > 0 and "loss_change" in x
    assert set(report["stop_rate"]) == {"base", "tuned"} and all(0 <= v <= 1 for v in report["stop_rate"].values())
    assert len(report["samples"]) == len(test_levels)
    png = (run / "run" / "eval" / "report.png").read_bytes()
    assert png[:4] == b"\x89PNG" and json.loads((run / "run" / "eval" / "report.json").read_text())["levels"] == report["levels"]


def test_marco_chat_one_question_and_interactive(marco, run):
    r = marco("chat", "--adapter", run / "run", "--level", "A2", "--max-new-tokens", "6", "How do I say hello?")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("\n") >= 1
    import os, sys
    exe = os.path.join(os.path.dirname(sys.executable), "marco")
    p = subprocess.run([exe, "chat", "--adapter", str(run / "run"), "--max-new-tokens", "5"], input="Ciao\nCome stai?\nexit\n",
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("marco> ") == 2


def test_bad_paths_and_levels_fail_cleanly(marco, run, tmp_path):
    r = marco("chat", "--adapter", tmp_path / "nothing", "Ciao")
    assert r.returncode == 2 and "no such folder" in r.stderr and "Traceback" not in r.stderr
    r = marco("chat", "--adapter", run / "run", "--level", "D9", "Ciao")
    assert r.returncode == 2 and "unknown CEFR level" in r.stderr
    r = marco("evaluate", "--adapter", run / "run", "--dataset", tmp_path / "no-data")
    assert r.returncode == 2 and "Traceback" not in r.stderr
