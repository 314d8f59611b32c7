"Training: a real LoRA run on the tiny model, kill-and-resume, corrupt checkpoints, OOM recovery, NaN stop, wandb offline, secrets, the dual-LLM rule."
import glob
import json
import shutil
from pathlib import Path

import pytest

from marco_lib import train as mt

QUICK = ["--gpu", "CPU", "--preset", "debug", "--report-to", "none", "--set", "eval_steps=2", "--set", "save_steps=2",
         "--set", "logging_steps=1", "--set", "per_device_train_batch_size=4", "--set", "gradient_accumulation_steps=2",
         "--set", "per_device_eval_batch_size=4", "--set", "num_train_epochs=1"]
OVERRIDES = dict(eval_steps=2, save_steps=2, logging_steps=1, per_device_train_batch_size=4, gradient_accumulation_steps=2,
                 per_device_eval_batch_size=4, num_train_epochs=1)
quiet = lambda *_: None


@pytest.fixture(scope="module")
def data(assembled):
    return assembled((0.8, 0.1, 0.1))


@pytest.fixture(scope="module")
def baseline(data, tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("baseline") / "run"
    return out, mt.train(data, str(tiny_models["minerva"]), out, gpu="CPU", preset="debug", overrides=OVERRIDES, report_to="none", log=quiet)


def test_a_run_completes_logs_eval_loss_and_the_adapter_generates(baseline, tiny_models):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    out, m = baseline
    assert m["status"] == "completed" and m["global_step"] >= 8 and m["last_eval"]["eval_loss"] > 0
    assert m["best"]["checkpoint"] and len(m["checkpoints"]) <= 3  # save_total_limit
    assert m["dataset"]["generators"] == {"Qwen/Qwen2.5-3B-Instruct": m["dataset"]["conversations"] - 11}  # 11 authentic CIMA
    tok = AutoTokenizer.from_pretrained(out / "adapter")
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_models["minerva"]), out / "adapter").eval()
    enc = tok.apply_chat_template([{"role": "system", "content": "You are Marco."}, {"role": "user", "content": "Ciao?"}],
                                  add_generation_prompt=True, return_tensors="pt", return_dict=True)
    with torch.no_grad(): ids = model.generate(**enc, max_new_tokens=5, do_sample=False)
    assert ids.shape[1] > enc["input_ids"].shape[1]
    assert not list((out / "adapter").glob("*.bin")) and (out / "adapter" / "adapter_model.safetensors").exists()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["versions"]["transformers"] and len(manifest["dataset"]["fingerprint"]) == 64


def test_a_killed_run_resumes_and_ends_at_the_same_step(marco, data, tiny_models, baseline, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--dataset", data, "--model", tiny_models["minerva"], "--out", out, *QUICK]
    r = marco(*args, env={"MARCO_TEST_FAULT": "kill@6"})
    assert r.returncode == -9  # SIGKILL at step 6
    assert (out / "checkpoints" / "checkpoint-4").is_dir() and not (out / "adapter").exists()
    r = marco(*args)
    assert r.returncode == 0, r.stderr
    summary = json.loads(r.stdout)
    assert summary["resumed_from"] == ["checkpoint-4"]
    assert summary["global_step"] == baseline[1]["global_step"]


def test_a_corrupt_checkpoint_is_skipped_with_a_message(baseline, tmp_path):
    ckpts = tmp_path / "checkpoints"
    shutil.copytree(baseline[0] / "checkpoints", ckpts)
    newest = max(ckpts.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    w = newest / "adapter_model.safetensors"; w.write_bytes(w.read_bytes()[:100])  # a write cut short
    lines = []
    found = mt.find_checkpoint(ckpts, lines.append)
    assert found is not None and found != newest and (ckpts / f"{newest.name}.corrupt").is_dir()
    assert "skipping" in lines[0] and "adapter weights unreadable" in lines[0]


def test_out_of_memory_halves_the_batch_keeps_the_effective_batch_and_resumes(data, tiny_models, baseline, tmp_path, monkeypatch):
    monkeypatch.setenv("MARCO_TEST_FAULT", "oom@3")
    m = mt.train(data, str(tiny_models["minerva"]), tmp_path / "run", gpu="CPU", preset="debug", overrides=OVERRIDES,
                 report_to="none", log=quiet)
    assert m["status"] == "completed" and m["global_step"] == baseline[1]["global_step"]
    assert m["oom_recoveries"] == [{"batch": [4, 2], "accumulation": [2, 4], "at_step": 2}]
    assert m["resumed_from"] == ["checkpoint-2"]
    assert m["config"]["train"]["per_device_train_batch_size"] * m["config"]["train"]["gradient_accumulation_steps"] == 8


def test_out_of_memory_at_batch_one_gives_up_clearly(data, tiny_models, tmp_path, monkeypatch):
    monkeypatch.setenv("MARCO_TEST_FAULT", "oom@2")
    with pytest.raises(mt.TrainError, match="per-device batch 1"):
        mt.train(data, str(tiny_models["minerva"]), tmp_path / "run", gpu="CPU", preset="debug", report_to="none", log=quiet,
                 overrides={**OVERRIDES, "per_device_train_batch_size": 1, "gradient_accumulation_steps": 8})


def test_a_nan_loss_stops_with_a_checkpoint_and_the_documented_message(marco, data, tiny_models, tmp_path):
    out = tmp_path / "run"
    r = marco("train", "--dataset", data, "--model", tiny_models["minerva"], "--out", out, *QUICK, env={"MARCO_TEST_FAULT": "nan@3"})
    assert r.returncode == 3 and "the loss became NaN" in r.stderr and mt.REMEDIES["nan_loss"] in r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "stopped: nan loss" and manifest["health"][0]["kind"] == "nan_loss"
    assert list((out / "checkpoints").glob("checkpoint-*")) and not (out / "adapter").exists()


def test_wandb_goes_offline_without_a_key_and_no_secret_lands_in_a_file(marco, data, tiny_models, tmp_path):
    out, secret = tmp_path / "run", "hf_PLANTEDsecret4242"
    env = {"WANDB_MODE": "", "WANDB_API_KEY": "", "HOME": str(tmp_path / "home"), "HF_TOKEN": secret}
    args = [a for a in QUICK if a not in ("--report-to", "none")]
    r = marco("train", "--dataset", data, "--model", tiny_models["minerva"], "--out", out, *args, "--report-to", "wandb", env=env)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["tracking"] == "offline"
    runs = glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb"))
    run = Path(runs[0]).read_bytes() if len(runs) == 1 else b""
    assert run.count(b"train/loss") >= 2  # the loss history is in the run
    assert b"train_tokens_per_s" in run and b"card_levels" in run  # throughput, and the dataset figures in the run config
    for f in [p for p in tmp_path.rglob("*") if p.is_file()]:
        assert secret.encode() not in f.read_bytes(), f
    assert secret not in r.stdout + r.stderr


def test_the_dual_llm_rule_refuses_the_generator_as_base(marco, data, tmp_path):
    r = marco("train", "--dataset", data, "--model", "qwen/qwen2.5-3b-instruct", "--out", tmp_path / "run", *QUICK)
    assert r.returncode == 2 and "circular" in r.stderr and "--allow-circular" in r.stderr
    assert not (tmp_path / "run").exists()


def test_missing_tokenized_splits_and_bad_settings_fail_cleanly(marco, tmp_path, data):
    (tmp_path / "ds").mkdir(); (tmp_path / "ds" / "card.json").write_text("{}")
    r = marco("train", "--dataset", tmp_path / "ds", "--out", tmp_path / "run", *QUICK)
    assert r.returncode == 2 and "assemble with --tokenizer" in r.stderr
    r = marco("train", "--dataset", data, "--out", tmp_path / "run", *QUICK, "--set", "save_steps=3")
    assert r.returncode == 2 and "save_steps" in r.stderr and "Traceback" not in r.stderr


def test_two_processes_under_torchrun_share_one_run(data, tiny_models, tmp_path):
    "The distributed path (what `accelerate launch` runs on GPUs), on CPU with gloo: two ranks, one manifest, one summary."
    import os, subprocess, sys
    bindir = os.path.dirname(sys.executable)
    out = tmp_path / "run"
    cmd = [os.path.join(bindir, "torchrun"), "--nproc_per_node", "2", "--master_port", "29517", os.path.join(bindir, "marco"), "train",
           "--dataset", str(data), "--model", str(tiny_models["minerva"]), "--out", str(out), *QUICK]
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    summary = json.loads(r.stdout)  # exactly one JSON document: rank 0's
    manifest = json.loads((out / "manifest.json").read_text())
    assert summary["status"] == manifest["status"] == "completed" and manifest["world_size"] == 2
    assert (out / "adapter" / "adapter_model.safetensors").exists()
