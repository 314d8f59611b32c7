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


def run(data, tiny_models, out, overrides=OVERRIDES, **kw):
    return mt.train(data, str(tiny_models["minerva"]), out, gpu="CPU", preset="debug", overrides=overrides, report_to="none", log=quiet, **kw)


@pytest.fixture
def rows_seen(monkeypatch, data):
    "The train-split row indices the collator batches, in order: what the model was really trained on (eval batches left out)."
    from datasets import load_from_disk
    index = {tuple(ids): i for i, ids in enumerate(load_from_disk(str(data / "tokenized"))["train"]["input_ids"])}
    seen, collate = [], mt.collate
    def recording(rows, pad_id):
        seen.extend(index[tuple(r["input_ids"])] for r in rows if tuple(r["input_ids"]) in index)
        return collate(rows, pad_id)
    monkeypatch.setattr(mt, "collate", recording)
    return seen


def weights(path):
    from safetensors.torch import load_file
    return load_file(str(Path(path) / "adapter_model.safetensors"))


def same_weights(a, b):
    "Whether two saved adapters hold bit-identical tensors."
    import torch
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def baseline(data, tiny_models, tmp_path_factory):
    out = tmp_path_factory.mktemp("baseline") / "run"
    return out, run(data, tiny_models, out)


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
    assert same_weights(out / "adapter", baseline[0] / "adapter")  # bit for bit the uninterrupted run's adapter
    # the kill came after the evaluation at step 6 wrote its samples; the resume evaluates step 6 again: written once, as uninterrupted
    assert (out / "samples.jsonl").read_text() == (baseline[0] / "samples.jsonl").read_text()


def test_a_corrupt_checkpoint_is_skipped_with_a_message(baseline, tmp_path):
    ckpts = tmp_path / "checkpoints"
    shutil.copytree(baseline[0] / "checkpoints", ckpts)
    newest = max(ckpts.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    w = newest / "adapter_model.safetensors"; w.write_bytes(w.read_bytes()[:100])  # a write cut short
    lines = []
    found = mt.find_checkpoint(ckpts, lines.append)
    assert found is not None and found != newest and (ckpts / f"{newest.name}.corrupt").is_dir()
    assert "skipping" in lines[0] and "adapter weights unreadable" in lines[0]


def test_out_of_memory_keeps_batch_times_accumulation_and_the_rows_of_each_step(data, tiny_models, tmp_path, monkeypatch, rows_seen):
    "The L4's 3 x 3 backs off to 1 x 9, not 1 x 6: every step still trains the 9 rows an uninterrupted run would."
    from datasets import load_from_disk
    from marco_lib.dataset import length_grouped_order
    monkeypatch.setenv("MARCO_TEST_FAULT", "oom@3")
    l4 = {**OVERRIDES, "per_device_train_batch_size": 3, "gradient_accumulation_steps": 3}
    m = run(data, tiny_models, tmp_path / "run", l4)
    assert m["status"] == "completed" and m["oom_recoveries"] == [{"batch": [3, 1], "accumulation": [3, 9], "at_step": 2}]
    assert m["resumed_from"] == ["checkpoint-2"] and m["global_step"] == 9  # ceil(78 / 9)
    t = m["config"]["train"]
    assert (t["per_device_train_batch_size"], t["gradient_accumulation_steps"]) == (1, 9)
    lengths = [len(x) for x in load_from_disk(str(data / "tokenized"))["train"]["input_ids"]]
    order = length_grouped_order(lengths, 3, accumulation=3, seed=42)  # the order an uninterrupted 3 x 3 run trains in
    assert rows_seen[:2 * 9] == order[:2 * 9]  # the two steps before checkpoint-2, at 3 x 3
    assert rows_seen[-(len(order) - 2 * 9):] == order[2 * 9:]  # the rest at 1 x 9: same rows, same order, none twice


def test_the_uninterrupted_order_is_the_documented_one(data, tiny_models, tmp_path, rows_seen):
    from datasets import load_from_disk
    from marco_lib.dataset import length_grouped_order
    run(data, tiny_models, tmp_path / "run", {**OVERRIDES, "num_train_epochs": 2, "eval_strategy": "no", "load_best_model_at_end": False,
                                             "save_steps": 100})
    lengths = [len(x) for x in load_from_disk(str(data / "tokenized"))["train"]["input_ids"]]
    assert rows_seen == length_grouped_order(lengths, 4, 2, seed=42, epoch=0) + length_grouped_order(lengths, 4, 2, seed=42, epoch=1)


def test_out_of_memory_at_batch_one_says_what_to_change(marco, data, tiny_models, tmp_path):
    r = marco("train", "--dataset", data, "--model", tiny_models["minerva"], "--out", tmp_path / "run", *QUICK, "--set", "per_device_train_batch_size=1",
              "--set", "gradient_accumulation_steps=8", "--set", "gradient_checkpointing=false", env={"MARCO_TEST_FAULT": "oom@2"})
    assert r.returncode == 2 and "Traceback" not in r.stderr and "out of memory at per-device batch 1" in r.stderr
    assert "--4bit" in r.stderr and "gradient_checkpointing=true" in r.stderr and "--max-length 512" in r.stderr


def test_a_nan_stop_leaves_only_finite_checkpoints_and_the_printed_remedy_works(marco, data, tiny_models, tmp_path):
    import torch
    out = tmp_path / "run"
    args = ["train", "--dataset", data, "--model", tiny_models["minerva"], "--out", out, *QUICK]
    r = marco(*args, env={"MARCO_TEST_FAULT": "nan@3"})  # the adapter is poisoned after step 3; checkpoints every 2 steps
    assert r.returncode == 3 and "the loss became NaN" in r.stderr and mt.REMEDIES["nan_loss"] in r.stderr
    assert "--stability conservative" in r.stderr and "resumes from checkpoint-2" in r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "stopped: nan loss" and manifest["health"][0]["kind"] == "nan_loss"
    ckpts = sorted((out / "checkpoints").glob("checkpoint-*"))
    assert [c.name for c in ckpts] == ["checkpoint-2"] and not (out / "adapter").exists()  # checkpoint-4 would hold NaN
    assert all(torch.isfinite(w).all() for w in weights(ckpts[0]).values())
    r = marco(*args, "--stability", "conservative")  # the remedy, as printed
    assert r.returncode == 0, r.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["resumed_from"] == ["checkpoint-2"]
    assert manifest["resume_changes"][0]["changes"]["learning_rate"] == [2e-4, 1e-4]
    assert all(torch.isfinite(w).all() for w in weights(out / "adapter").values())


def test_a_checkpoint_with_nan_weights_is_never_resumed_from(baseline, tmp_path):
    import torch
    from safetensors.torch import save_file
    ckpts = tmp_path / "checkpoints"
    shutil.copytree(baseline[0] / "checkpoints", ckpts)
    newest = max(ckpts.glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    w = weights(newest)
    w[next(iter(w))][0, 0] = float("nan")  # one poisoned value, in a file that is otherwise complete
    save_file(w, str(newest / "adapter_model.safetensors"))
    lines = []
    found = mt.find_checkpoint(ckpts, lines.append)
    assert found is not None and found != newest and (ckpts / f"{newest.name}.corrupt").is_dir()
    assert "1 adapter weights are NaN or infinite" in lines[0]


def test_the_adapter_that_ships_is_the_best_evaluated_one(data, tiny_models, tmp_path):
    "Evaluations every step, checkpoints every 4: the best step need not be a save step, yet its weights are what ships."
    out = tmp_path / "run"
    m = run(data, tiny_models, out, {**OVERRIDES, "eval_steps": 1, "save_steps": 4})
    evals = {e["step"]: e["eval_loss"] for e in m["eval_history"]}
    best_step = min(evals, key=evals.get)
    assert m["best"]["step"] == best_step and m["best"]["value"] == evals[best_step]
    assert m["best"]["checkpoint"] == m["adapter_weights"]["checkpoint"] == f"checkpoint-{best_step}"
    assert same_weights(out / "adapter", out / "checkpoints" / f"checkpoint-{best_step}")
    assert abs(eval_loss(out / "adapter", tiny_models, data) - m["best"]["value"]) < 1e-5  # the shipped weights evaluate at the best value


def eval_loss(adapter, tiny_models, data):
    "The validation loss of a saved adapter, evaluated as the Trainer evaluates during training."
    from datasets import load_from_disk
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer, Trainer, TrainingArguments
    from marco_lib.config import resolve, to_training_arguments
    cfg = resolve("CPU", "debug", overrides={**OVERRIDES, "report_to": "none"})
    args = TrainingArguments(**to_training_arguments(cfg) | {"output_dir": str(Path(adapter).parent / "eval")})
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_models["minerva"]), str(adapter))
    tok = AutoTokenizer.from_pretrained(str(adapter))
    trainer = Trainer(model=model, args=args, eval_dataset=load_from_disk(str(data / "tokenized"))["validation"],
                      data_collator=lambda rows: mt.collate(rows, tok.pad_token_id), processing_class=tok)
    return trainer.evaluate()["eval_loss"]


def test_a_resume_in_the_second_epoch_trains_the_rows_and_weights_of_an_uninterrupted_run(data, tiny_models, tmp_path, monkeypatch, rows_seen):
    two = {**OVERRIDES, "num_train_epochs": 2, "eval_strategy": "no", "load_best_model_at_end": False, "save_steps": 11}
    run(data, tiny_models, tmp_path / "whole", two)
    whole = list(rows_seen); rows_seen.clear()
    monkeypatch.setenv("MARCO_TEST_FAULT", "crash@13")  # an epoch is 10 steps: checkpoint-11 is one step into epoch 2
    with pytest.raises(RuntimeError, match="crash injected"): run(data, tiny_models, tmp_path / "run", two)
    first = list(rows_seen); rows_seen.clear()
    monkeypatch.delenv("MARCO_TEST_FAULT")
    m = run(data, tiny_models, tmp_path / "run", two)
    assert m["resumed_from"] == ["checkpoint-11"]
    done = 78 + 8  # rows trained by checkpoint-11: all of epoch 1 and one step of 8
    assert first[:done] == whole[:done] and rows_seen == whole[done:]  # nothing replayed, nothing skipped
    assert sorted(whole[:78]) == sorted(whole[78:]) == list(range(78))
    assert same_weights(tmp_path / "run" / "adapter", tmp_path / "whole" / "adapter")


def test_changed_optimisation_settings_on_resume_are_applied(data, tiny_models, baseline, tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv("MARCO_TEST_FAULT", "crash@5")
    with pytest.raises(RuntimeError, match="crash injected"): run(data, tiny_models, out)
    monkeypatch.delenv("MARCO_TEST_FAULT")
    m = run(data, tiny_models, out, {**OVERRIDES, "learning_rate": 1e-3})
    assert m["resumed_from"] == ["checkpoint-4"] and m["resume_changes"][0]["changes"] == {"learning_rate": [2e-4, 1e-3]}
    lr = lambda d: {h["step"]: h["learning_rate"] for h in json.loads((d / "checkpoints" / "checkpoint-10" / "trainer_state.json").read_text())["log_history"] if "learning_rate" in h}
    new, old = lr(out), lr(baseline[0])
    for step in range(5, 11):  # the steps after the resume follow the new peak on the same schedule
        assert new[step] == pytest.approx(5 * old[step], rel=1e-9, abs=1e-15)


def test_settings_that_would_mix_two_runs_are_refused_on_resume(marco, data, tiny_models, tmp_path):
    out = tmp_path / "run"
    args = ["train", "--dataset", data, "--model", tiny_models["minerva"], "--out", out, *QUICK]
    assert marco(*args, env={"MARCO_TEST_FAULT": "kill@4"}).returncode == -9
    manifest = (out / "manifest.json").read_bytes()
    r = marco(*args, "--set", "lora_r=8", "--set", "gradient_accumulation_steps=3")
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "lora_r 16 -> 8" in r.stderr and "batch x accumulation 8 -> 12" in r.stderr and "another --out" in r.stderr
    assert (out / "manifest.json").read_bytes() == manifest and (out / "checkpoints" / "checkpoint-2").is_dir()


def losses(run_dir):
    "The training loss at every logged step, from the newest checkpoint's trainer_state.json (it holds the whole history)."
    newest = max((Path(run_dir) / "checkpoints").glob("checkpoint-*"), key=lambda p: int(p.name.split("-")[1]))
    return {h["step"]: h["loss"] for h in json.loads((newest / "trainer_state.json").read_text())["log_history"] if "loss" in h}


def test_two_uninterrupted_runs_log_the_same_losses_and_ship_the_same_adapter(marco, data, tiny_models, baseline, tmp_path):
    "The same command again, in a fresh process: the same loss at every logged step, and the adapter file byte for byte."
    out = tmp_path / "again"
    r = marco("train", "--dataset", data, "--model", tiny_models["minerva"], "--out", out, *QUICK)
    assert r.returncode == 0, r.stderr
    first, again = losses(baseline[0]), losses(out)
    assert len(first) == baseline[1]["global_step"] and again == first  # logging_steps=1: every step, exactly equal
    assert (out / "adapter" / "adapter_model.safetensors").read_bytes() == (baseline[0] / "adapter" / "adapter_model.safetensors").read_bytes()
    assert json.loads((out / "manifest.json").read_text())["deterministic"] is True  # the CPU: PyTorch's deterministic algorithms


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
    assert b"eval/A1_loss" in run or b"eval_A1_loss" in run  # the per-level validation loss reached the tracker
    tables = glob.glob(str(out / "wandb" / "offline-run-*" / "files" / "media" / "table" / "eval" / "samples_*.table.json"))
    assert tables and {r[1] for r in json.loads(Path(max(tables, key=lambda t: int(t.split("_")[-2]))).read_text())["data"]} == \
        {json.loads(l)["level"] for l in (out / "samples.jsonl").read_text().splitlines()}  # the wandb table has every level's answers
    for f in [p for p in tmp_path.rglob("*") if p.is_file()]:
        assert secret.encode() not in f.read_bytes(), f
    assert secret not in r.stdout + r.stderr


def marco_in(cwd, *args, env=None, unset=()):
    "The `marco` command run from the folder `cwd`, with `env` added to the environment and the variables in `unset` removed."
    import os, subprocess, sys
    exe = os.path.join(os.path.dirname(sys.executable), "marco")
    environ = {k: v for k, v in {**os.environ, **(env or {})}.items() if k not in unset}
    return subprocess.run([exe, *map(str, args)], capture_output=True, text=True, timeout=300, cwd=cwd, env=environ)


def test_a_wandb_key_that_does_not_work_trains_offline_with_one_warning(data, tiny_models, tmp_path):
    "A set but unusable key (here: a server that cannot be reached) is checked before training: one line, offline, no traceback."
    out, key = tmp_path / "run", "0123456789abcdef0123456789abcdef01234567"
    env = {"WANDB_API_KEY": key, "WANDB_BASE_URL": "http://127.0.0.1:9", "HOME": str(tmp_path / "home")}
    args = [a for a in QUICK if a not in ("--report-to", "none")]
    r = marco_in(tmp_path, "train", "--dataset", data, "--model", tiny_models["minerva"], "--out", out, *args, "--set", "max_steps=2",
                 "--report-to", "wandb", env=env, unset=("WANDB_MODE",))
    assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr[-3000:]
    tracking = json.loads(r.stdout)["tracking"]
    assert tracking.startswith("offline (login failed: http://127.0.0.1:9 unreachable") and json.loads((out / "manifest.json").read_text())["tracking"] == tracking
    warnings = [l for l in r.stderr.splitlines() if l.startswith("[marco] wandb:")]
    assert len(warnings) == 1 and "tracking offline in" in warnings[0] and "wandb sync" in warnings[0]
    assert len(glob.glob(str(out / "wandb" / "offline-run-*" / "run-*.wandb"))) == 1
    for f in [p for p in tmp_path.rglob("*") if p.is_file()]:
        assert key.encode() not in f.read_bytes(), f
    assert key not in r.stdout + r.stderr


def test_a_base_model_that_cannot_be_loaded_leaves_a_failed_manifest(marco, data, tmp_path):
    out = tmp_path / "run"
    r = marco("train", "--dataset", data, "--model", tmp_path / "no-such-model", "--out", out, *QUICK)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "failed" and m["error"].startswith("TrainError: cannot load the base model") and m["ended"] >= m["started"]
    assert f"cannot load the base model '{tmp_path / 'no-such-model'}'" in r.stderr and f"no folder {tmp_path / 'no-such-model'}" in r.stderr


def test_an_exception_during_training_leaves_a_failed_manifest(data, tiny_models, tmp_path, monkeypatch):
    out = tmp_path / "run"
    monkeypatch.setenv("MARCO_TEST_FAULT", "crash@3")
    with pytest.raises(RuntimeError, match="crash injected"): run(data, tiny_models, out)
    m = json.loads((out / "manifest.json").read_text())
    assert (m["status"], m["error"]) == ("failed", "RuntimeError: crash injected by MARCO_TEST_FAULT at step 3") and m["ended"] >= m["started"]
    assert "global_step" not in m  # no outcome is claimed for a run that did not finish




def test_a_relative_model_path_is_recorded_absolute_and_the_adapter_loads_from_any_folder(data, tiny_models, tmp_path, monkeypatch):
    import os
    from marco_lib.evaluate import load_marco
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir(); elsewhere.mkdir()
    relative = os.path.relpath(tiny_models["minerva"], work)
    r = marco_in(work, "train", "--dataset", data, "--model", relative, "--out", "run", *QUICK, "--set", "max_steps=2")
    assert r.returncode == 0, r.stderr[-3000:]
    absolute = str(Path(tiny_models["minerva"]).resolve())
    assert json.loads((work / "run" / "adapter" / "adapter_config.json").read_text())["base_model_name_or_path"] == absolute
    assert json.loads((work / "run" / "manifest.json").read_text())["config"]["model"]["base_model"] == absolute
    monkeypatch.chdir(elsewhere)
    model, tok = load_marco(work / "run")
    assert type(model).__name__ == "PeftModelForCausalLM" and tok.chat_template


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


def test_marco_train_runs_the_configuration_the_form_saved(marco, data, tiny_models, tmp_path):
    "What the form saves is what `marco train --config` trains with: its layers, its edits (max_steps, lora_r), and flags on top."
    from marco_lib.widgets import config_form
    form = config_form(gpu="CPU", preset="debug")
    edits = dict(OVERRIDES, max_steps=3, lora_r=4, lora_alpha=8, report_to="none", learning_rate=1e-3)
    for k, v in edits.items(): form.fields[k].value = v
    saved = form.save(tmp_path / "train_config.yaml")
    r = marco("train", "--dataset", data, "--model", tiny_models["minerva"], "--out", tmp_path / "run", "--config", saved, "--set", "lora_dropout=0.2")
    assert r.returncode == 0, r.stderr
    m = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert m["global_step"] == 3  # max_steps, a setting like any other
    assert (m["config"]["gpu"], m["config"]["preset"]) == ("CPU", "debug")
    assert (m["config"]["lora"]["lora_r"], m["config"]["lora"]["lora_dropout"], m["config"]["train"]["learning_rate"]) == (4, 0.2, 1e-3)
    adapter = json.loads((tmp_path / "run" / "adapter" / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"]) == (4, 8)


def test_max_steps_below_eval_steps_still_evaluates_and_ships_the_evaluated_weights(data, tiny_models, tmp_path):
    quick = {k: v for k, v in OVERRIDES.items() if k not in ("eval_steps", "save_steps")}  # the debug preset's: every 10 and 50
    m = run(data, tiny_models, tmp_path / "run", overrides=dict(quick, max_steps=3))
    assert m["global_step"] == 3 and [h["step"] for h in m["eval_history"]] == [3]
    assert m["best"]["step"] == 3 and m["adapter_weights"]["checkpoint"] == "checkpoint-3"


def packed_trainer(data, tiny_models, tmp_path, **overrides):
    "The Trainer `train` builds for a CPU run on the tiny model, with `overrides`."
    from datasets import load_from_disk
    from marco_lib.config import resolve
    cfg = resolve("CPU", "debug", overrides={**OVERRIDES, "base_model": str(tiny_models["minerva"]), "output_dir": str(tmp_path / "ckpt"),
                                             "report_to": "none", **overrides})
    splits = load_from_disk(str(data / "tokenized"))
    trainer, tok, _ = mt.build_trainer(cfg, splits, data / "tokenizer", record={}, log=quiet)
    return trainer, tok, splits


def loss_and_grads(trainer, batch):
    "The training loss of one batch (normalised by its labelled tokens, as the Trainer does) and the LoRA gradients it gives."
    model = trainer.model
    model.zero_grad()
    n = int((batch["labels"][..., 1:] != -100).sum())
    loss = trainer.compute_loss(model, batch, num_items_in_batch=n)
    loss.backward()
    return n, loss.item(), {k: p.grad.clone() for k, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("attn", ["sdpa", "eager"])  # sdpa: what the CPU profile runs; eager: the reference kernel
def test_a_padding_free_batch_has_the_padded_batchs_loss_and_lora_gradients(data, tiny_models, tmp_path, attn):
    import torch
    trainer, tok, splits = packed_trainer(data, tiny_models, tmp_path, padding_free=True, lora_dropout=0.0, attn_implementation=attn)
    assert trainer.model.config._attn_implementation == attn
    by_length = {len(r["input_ids"]): r for r in splits["train"]}
    rows = [by_length[n] for n in sorted(by_length)[::len(by_length) // 4][:4]]  # four rows of very different lengths
    assert len({len(r["input_ids"]) for r in rows}) == 4
    flat, padded = trainer.data_collator(rows), mt.collate(rows, tok.pad_token_id)
    assert flat["input_ids"].shape == (1, sum(len(r["input_ids"]) for r in rows)) and "attention_mask" not in flat
    assert padded["input_ids"].numel() > flat["input_ids"].numel()  # the padded batch computes pad tokens
    torch.manual_seed(0)
    with torch.no_grad():  # a trained-looking adapter: B is zero at the start, and would leave A without a gradient
        for k, p in trainer.model.named_parameters():
            if "lora_B" in k: p.normal_(0, 0.05)
    trainer.model.train()
    n_pad, loss_pad, g_pad = loss_and_grads(trainer, padded)
    n_flat, loss_flat, g_flat = loss_and_grads(trainer, flat)
    assert n_pad == n_flat > 0  # the same labelled tokens: no row's first label is predicted from the row before it
    assert abs(loss_flat - loss_pad) <= 1e-5 * abs(loss_pad)
    assert g_pad.keys() == g_flat.keys() and len(g_pad) == 2 * 7 * 2  # A and B of 7 projections in 2 layers
    for k in g_pad:
        assert g_pad[k].norm() > 0 and (g_flat[k] - g_pad[k]).norm() <= 1e-5 * g_pad[k].norm(), k


def test_the_token_count_is_the_real_tokens_in_both_modes(data, tiny_models, tmp_path):
    for padding_free in (False, True):
        trainer, tok, splits = packed_trainer(data, tiny_models, tmp_path / str(padding_free), padding_free=padding_free)
        rows = [splits["train"][i] for i in range(4)]
        before = trainer.monitor.tokens
        batch = trainer.data_collator(rows)
        trainer.training_step(trainer.model, batch, num_items_in_batch=int((batch["labels"][..., 1:] != -100).sum()))
        assert trainer.monitor.tokens - before == sum(len(r["input_ids"]) for r in rows), padding_free


def test_a_padding_free_run_trains_the_same_rows_to_the_same_losses_as_a_padded_run(data, tiny_models, tmp_path, monkeypatch, rows_seen):
    """Without dropout the two runs are the same computation: the same rows in the same steps, losses equal to rounding.
    With dropout (the default 0.1) they cannot be: the masks are drawn over tensors of different shapes (rows x longest
    row, padding included, against one row of all tokens), so the same seed drops different activations."""
    from datasets import load_from_disk
    from marco_lib.dataset import length_grouped_order
    flatten = mt.flatten
    index = {tuple(ids): i for i, ids in enumerate(load_from_disk(str(data / "tokenized"))["train"]["input_ids"])}
    def recording(rows):
        rows_seen.extend(index[tuple(r["input_ids"])] for r in rows if tuple(r["input_ids"]) in index)
        return flatten(rows)
    monkeypatch.setattr(mt, "flatten", recording)
    quick = {**OVERRIDES, "eval_steps": 5, "save_steps": 5, "lora_dropout": 0.0}
    padded = run(data, tiny_models, tmp_path / "padded", quick)
    padded_rows = list(rows_seen); rows_seen.clear()
    packed = run(data, tiny_models, tmp_path / "packed", {**quick, "padding_free": True})
    assert (packed["status"], packed["padding_free"], padded["padding_free"]) == ("completed", True, False)
    assert packed["attn_implementation"] == padded["attn_implementation"] == "sdpa"  # what the CPU profile loads
    lengths = [len(x) for x in load_from_disk(str(data / "tokenized"))["train"]["input_ids"]]
    assert rows_seen == padded_rows == length_grouped_order(lengths, 4, 2, seed=42)  # the same length-grouped order
    a, b = losses(tmp_path / "padded"), losses(tmp_path / "packed")
    assert a.keys() == b.keys() and len(a) == packed["global_step"] == 10
    assert all(abs(a[s] - b[s]) <= 1e-4 * a[s] for s in a), (a, b)
    ea, eb = ({e["step"]: e["eval_loss"] for e in m["eval_history"]} for m in (padded, packed))
    assert ea.keys() == eb.keys() == {5, 10} and all(abs(ea[s] - eb[s]) <= 1e-4 * ea[s] for s in ea)  # evaluation, padding-free too
    assert packed["best"]["step"] == padded["best"]["step"] and (tmp_path / "packed" / "adapter" / "adapter_model.safetensors").exists()


def test_padding_free_is_refused_where_the_attention_lets_the_rows_mix(data, tiny_models, tmp_path, monkeypatch):
    "A transformers that does not find the restarting positions (older ones) would let each conversation attend to the one before."
    import transformers.masking_utils as masking
    monkeypatch.setattr(masking, "find_packed_sequence_indices", lambda position_ids: None)
    out = tmp_path / "run"
    with pytest.raises(mt.TrainError, match=r"padding_free=true, but with attn_implementation='sdpa' \(as loaded\) the conversations "
                                            r"joined into one row attend to each other.*Set padding_free=false"):
        run(data, tiny_models, out, {**OVERRIDES, "padding_free": True})
    m = json.loads((out / "manifest.json").read_text())
    assert m["status"] == "failed" and m["error"].startswith("TrainError: padding_free=true") and not list(out.glob("checkpoints/checkpoint-*"))
    assert run(data, tiny_models, tmp_path / "padded", {**OVERRIDES, "max_steps": 1})["status"] == "completed"  # padded batches are unaffected


def test_loss_not_decreasing_counts_only_steps_past_the_schedulers_warmup(tmp_path):
    "5% warmup of 10 steps is 1 step for the scheduler (ceil): step 1 is still warmup, so five flat losses after it are not yet six."
    from types import SimpleNamespace as NS
    from transformers import TrainerControl, TrainingArguments
    args = TrainingArguments(output_dir=str(tmp_path), warmup_steps=0.05, report_to="none")
    assert args.get_warmup_steps(10) == 1
    def kinds(steps):
        mon = mt.HealthMonitor()
        for s in steps: mon.on_log(args, NS(global_step=s, max_steps=10), TrainerControl(), {"loss": 1.0})
        return [e["kind"] for e in mon.events]
    assert kinds(range(1, 7)) == [] and kinds(range(1, 8)) == ["loss_not_decreasing"]


def test_out_of_memory_is_recognised_from_every_allocator():
    import torch
    for e in (torch.OutOfMemoryError("CUDA out of memory (injected)"), RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB"),
              RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 8589934592 bytes."),
              RuntimeError("MPS backend out of memory (MPS allocated: 1.00 GB)"),
              RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling cublasCreate(handle)")):
        assert mt.is_oom(e), e
    assert not mt.is_oom(RuntimeError("expected scalar type Half but found Float")) and not mt.is_oom(ValueError("out of memory."))


def validation_levels(data):
    return sorted({json.loads(l)["level"] for l in (Path(data) / "conversations" / "validation.jsonl").read_text().splitlines()})


@pytest.mark.parametrize("padding_free", [False, True])
def test_each_levels_validation_loss_is_logged_at_every_evaluation_and_is_that_levels_real_loss(data, tiny_models, tmp_path, padding_free):
    "eval_<L>_loss for every level in the split at every evaluation, in the trainer state and the manifest; at the last step it is the "
    "token-weighted answer loss `evaluate.level_losses` computes on the same rows with the shipped weights."
    from datasets import load_from_disk
    from marco_lib import evaluate as me
    over = {**OVERRIDES, "load_best_model_at_end": False, "padding_free": padding_free, "attn_implementation": "eager"}
    m = run(data, tiny_models, tmp_path / "run", over)
    levels = validation_levels(data)
    assert len(levels) >= 4 and len(m["eval_history"]) >= 4
    for e in m["eval_history"]:
        assert sorted(k[5:7] for k in e if k.endswith("_loss") and k != "eval_loss") == levels
    state = json.loads((tmp_path / "run" / "checkpoints" / m["checkpoints"][-1] / "trainer_state.json").read_text())
    assert all(f"eval_{l}_loss" in h for h in state["log_history"] if "eval_loss" in h for l in levels)
    last = m["eval_history"][-1]
    assert last["step"] == m["global_step"]  # the shipped weights are the last evaluated ones
    model, tok = me.load_marco(tmp_path / "run")
    direct = me.level_losses(model, list(load_from_disk(str(data / "tokenized"))["validation"]), tok.pad_token_id)
    for l in levels:
        assert abs(direct[l]["loss"] - last[f"eval_{l}_loss"]) < 2e-3, (l, direct[l], last)
    assert (tmp_path / "run" / "levels.png").read_bytes()[:4] == b"\x89PNG"


def test_the_per_level_losses_cost_no_extra_forward_pass(data, tiny_models):
    "An evaluation runs the model once per validation batch, exactly as the Trainer alone does."
    from datasets import load_from_disk
    from marco_lib.config import resolve
    splits = load_from_disk(str(data / "tokenized"))
    cfg = resolve("CPU", "debug", overrides={"base_model": str(tiny_models["minerva"]), "output_dir": str(data.parent / "fw"), "report_to": "none",
                                             "per_device_eval_batch_size": 4})
    trainer, _, _ = mt.build_trainer(cfg, splits, data / "tokenizer", {}, log=quiet)
    calls = []
    trainer.model.register_forward_hook(lambda *a: calls.append(1))
    metrics = trainer.evaluate()
    assert len(calls) == -(-len(splits["validation"]) // 4)
    assert {k for k in metrics if k.endswith("_loss")} == {"eval_loss"} | {f"eval_{l}_loss" for l in validation_levels(data)}


def test_samples_answer_every_level_at_every_evaluation_greedily_within_each_levels_cap(data, tiny_models, baseline):
    from marco_lib.levels import get_level
    out, m = baseline
    rows = [json.loads(l) for l in (out / "samples.jsonl").read_text().splitlines()]
    levels = validation_levels(data)
    steps = [e["step"] for e in m["eval_history"]]
    assert sorted({r["step"] for r in rows}) == steps
    for s in steps:
        at = [r for r in rows if r["step"] == s]
        assert sorted({r["level"] for r in at}) == levels and len(at) == m["samples"]["questions"] <= 2 * len(levels)
        assert [r["question"] for r in at] == [r["question"] for r in rows if r["step"] == steps[0]]  # the same questions every time
    assert all(set(r) == {"step", "level", "question", "answer", "finish_reason", "tokens"} for r in rows)
    for r in rows:  # each level's own cap: an answer cut there has exactly the cap's tokens, one that stopped fewer
        cap = get_level(r["level"]).max_new_tokens
        assert r["tokens"] <= cap and (r["finish_reason"] == "stop" or r["tokens"] == cap), r
    assert {r["finish_reason"] for r in rows} == {"stop", "length"}  # the tiny model does both: each was checked
    assert m["samples"]["seconds"] > 0


def test_samples_can_be_turned_off(data, tiny_models, tmp_path):
    m = run(data, tiny_models, tmp_path / "run", {**OVERRIDES, "num_train_epochs": 0.3}, samples_per_level=0)
    assert not (tmp_path / "run" / "samples.jsonl").exists() and "samples" not in m


def test_a_level_left_behind_is_warned_about_with_the_guides_remedy():
    from types import SimpleNamespace as NS
    mon = mt.HealthMonitor()
    for step, (overall, c1) in enumerate([(2.0, 1.5), (1.9, 1.6), (1.8, 1.7)], 1):
        logs = {"eval_loss": overall, "eval_A1_loss": overall, "eval_C1_loss": c1}
        mon.on_log(None, NS(global_step=step), None, logs)
    assert [(e["kind"], e["step"]) for e in mon.events] == [("level_diverging", 3)] and logs["health/level_diverging"] == 1.0
    assert "C1" in mon.events[0]["value"] and mon.events[0]["remedy"] == mt.REMEDIES["level_diverging"]
