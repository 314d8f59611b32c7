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


FIDELITY_KEYS = {"n", "estimated", "exact", "within_one", "mean_offset", "words", "gulpease", "length_band", "band"}


def test_marco_evaluate_reports_level_fidelity_for_every_sampled_level(marco, run, tmp_path):
    r = marco("evaluate", "--adapter", run / "run", "--dataset", run / "data", "--per-level", "2", "--max-new-tokens", "12",
              "--report", tmp_path)
    assert r.returncode == 0, r.stderr
    assert "level fidelity" in r.stdout and "trust" in r.stdout
    report = json.loads((tmp_path / "report.json").read_text())
    sampled = [l for l in me.LEVEL_CODES if l in {s["level"] for s in report["samples"]}]
    assert [f["level"] for f in report["fidelity"]] == sampled != []
    for f in report["fidelity"]:
        assert f["trust"]["grade"] == "prior"  # no estimator given: the uncalibrated prior
        for k in ("base", "tuned"):
            x = f[k]
            assert set(x) == FIDELITY_KEYS and x["n"] == sum(s["level"] == f["level"] for s in report["samples"])
            assert sum(x["estimated"].values()) == x["n"] and set(x["estimated"]) - {"none"} == set(me.LEVEL_CODES)
            assert 0 <= x["exact"] <= x["within_one"] <= 1 and abs(sum(x["band"].values()) - 1) < 1e-3
            assert x["mean_offset"] is None or -5 <= x["mean_offset"] <= 5
            assert x["gulpease"] is None or 0 <= x["gulpease"] <= 100
            assert x["length_band"] == dict(zip(("min", "max"), me.length_band(f["level"])))
    assert report["estimator"]["cuts"] == [0.5, 1.5, 2.5, 3.5, 4.5]


def test_marco_evaluate_uses_the_estimator_file(marco, run, tmp_path):
    f = tmp_path / "estimator.json"  # the runbooks' shape: cut points that put every text at C2, and a calibration report
    f.write_text(json.dumps({"estimator": {"cuts": [-100, -99, -98, -97, -96], "calibrated_on": "test"},
                             "calibration": {"levels": {"A1": 40, "C2": 5}, "cross_validated": {"within_one": 0.8}}}))
    r = marco("evaluate", "--adapter", run / "run", "--dataset", run / "data", "--per-level", "1", "--max-new-tokens", "12",
              "--estimator", f, "--report", tmp_path / "eval", "--json")
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["estimator"]["cuts"] == [-100, -99, -98, -97, -96] and "estimator.json" in report["estimator"]["source"]
    for x in report["fidelity"]:
        for k in ("base", "tuned"):
            assert x[k]["estimated"]["C2"] + x[k]["estimated"].get("none", 0) == x[k]["n"]  # every answer with words at C2
        assert x["trust"]["grade"] == {"A1": "calibrated", "C2": "thin"}.get(x["level"], "extrapolated")
    assert sum(x["tuned"]["estimated"]["C2"] for x in report["fidelity"]) > 0


def test_a_bad_estimator_file_fails_in_one_line(marco, run, tmp_path):
    f = tmp_path / "bad-estimator.json"
    f.write_text('{"cuts": [3, 2, 1]}')
    for cmd in (("evaluate", "--dataset", run / "data", "--report", tmp_path / "eval"), ("chat", "Ciao")):
        r = marco(*cmd, "--adapter", run / "run", "--estimator", f)
        assert r.returncode == 2 and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr, r.stderr
        assert "bad-estimator.json: not a level estimator file" in r.stderr
    assert not (tmp_path / "eval").exists()


def test_marco_chat_show_level(marco, run):
    r = marco("chat", "--adapter", run / "run", "--level", "A2", "--max-new-tokens", "6", "--show-level", "Ciao, come stai?")
    assert r.returncode == 0, r.stderr
    assert "[estimated level" not in r.stdout and r.stdout.count("\n") >= 1  # one question: stdout is the reply alone
    line = [l for l in r.stderr.splitlines() if l.startswith("[estimated level")]
    assert len(line) == 1 and "(asked A2)" in line[0] and "(band 12-180)" in line[0] and line[0].endswith("trust: prior]"), r.stderr
    import os, sys
    exe = os.path.join(os.path.dirname(sys.executable), "marco")
    p = subprocess.run([exe, "chat", "--adapter", str(run / "run"), "--max-new-tokens", "5", "--show-level"], input="Ciao\nCome stai?\nexit\n",
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    assert p.stdout.count("marco> ") == 2 and p.stdout.count("[estimated level") == 2 and "(asked A1)" in p.stdout
