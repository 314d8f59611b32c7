"Pushing to the Hub: the pre-training checks, the Trainer's checkpoint pushes, the model card, the final upload and the resume from the pushed checkpoint, against a local stand-in for the Hub (no network here)."
import json
import shutil
from concurrent.futures import Future
from fnmatch import fnmatch
from pathlib import Path
from types import SimpleNamespace

import httpx2
import pytest
from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError
from huggingface_hub.utils import validate_repo_id

from marco_lib import hub as mh

SECRET = "hf_dummy_token_that_must_never_land_in_a_file"
quiet = lambda *_: None


def _error(cls, status: int, message: str):
    "A huggingface_hub HTTP error as the client raises it: with the response it answers."
    return cls(message, response=httpx2.Response(status, request=httpx2.Request("GET", "https://huggingface.co/api")))


def _patterns(p) -> list | None:  # huggingface_hub's reading: a str is one pattern, 'folder/' means 'folder/*'
    if p is None: return None
    return [x + "*" if x.endswith("/") else x for x in ([p] if isinstance(p, str) else p)]


def _copy(src: Path, dest: Path, keep) -> list:
    "Copy the files under `src` whose relative path `keep` accepts into `dest`; their relative paths."
    done = []
    for f in sorted(p for p in src.rglob("*") if p.is_file()):
        rel = f.relative_to(src).as_posix()
        if keep(rel):
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dest / rel); done.append(rel)
    return done


class LocalHub:
    "A stand-in for `huggingface_hub.HfApi` (the calls the Trainer and marco_lib.hub make): repositories are folders root/owner/name."
    def __init__(self, root):
        self.root, self.private, self.commits = Path(root), {}, []

    def create_repo(self, repo_id, token=None, private=None, exist_ok=False, **kw):
        validate_repo_id(repo_id)
        repo = self.root / repo_id
        if repo.exists() and not exist_ok: raise _error(HfHubHTTPError, 409, f"{repo_id}: you already created this model repo")
        if not repo.exists(): repo.mkdir(parents=True); self.private[repo_id] = private
        return SimpleNamespace(repo_id=repo_id, url=f"local://{repo_id}")

    def upload_folder(self, repo_id, folder_path, path_in_repo=None, commit_message=None, token=None, run_as_future=False,
                      ignore_patterns=None, revision=None, **kw):
        if not (self.root / repo_id).is_dir(): raise _error(RepositoryNotFoundError, 404, f"{repo_id}: repository not found")
        ignore = _patterns(ignore_patterns) or []
        files = _copy(Path(folder_path), self.root / repo_id / (path_in_repo or ""), lambda rel: not any(fnmatch(rel, p) for p in ignore))
        self.commits.append({"repo_id": repo_id, "path_in_repo": path_in_repo, "message": commit_message, "files": files})
        info = SimpleNamespace(commit_url=f"local://{repo_id}/commit/{len(self.commits)}")
        if not run_as_future: return info
        done = Future(); done.set_result(info)
        return done

    def snapshot_download(self, repo_id, allow_patterns=None, local_dir=None, token=None, **kw):
        if not (self.root / repo_id).is_dir(): raise _error(RepositoryNotFoundError, 404, f"{repo_id}: repository not found")
        allow = _patterns(allow_patterns)
        _copy(self.root / repo_id, Path(local_dir), lambda rel: allow is None or any(fnmatch(rel, p) for p in allow))
        return str(local_dir)


def files(folder) -> dict:
    "Relative path -> bytes of every file under `folder`."
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(Path(folder).rglob("*")) if p.is_file()}


# --- before training: push_problem and hub_token ---

@pytest.fixture
def no_saved_login(monkeypatch, tmp_path):
    "No token anywhere: no HF_TOKEN, an empty HF_HOME (huggingface_hub reads its token path once, at import: patched too), online."
    import huggingface_hub.constants as hc
    for v in ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_OIDC_RESOURCE", "TRANSFORMERS_OFFLINE"): monkeypatch.delenv(v, raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setattr(hc, "HF_TOKEN_PATH", str(tmp_path / "hf-home" / "token"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    return tmp_path / "hf-home" / "token"


def test_without_a_token_the_push_is_refused_before_training_with_the_way_to_add_one(no_saved_login):
    assert mh.hub_token() is None
    problem = mh.push_problem("me/marco")
    assert problem == mh.NO_TOKEN and "\n" not in problem
    assert "HF_TOKEN" in problem and "Colab" in problem and "drop --push-to-hub" in problem


def test_a_saved_login_or_HF_TOKEN_is_found_and_HF_TOKEN_wins(no_saved_login, monkeypatch):
    no_saved_login.parent.mkdir(parents=True); no_saved_login.write_text("hf_saved_login\n")
    assert mh.hub_token() == "hf_saved_login" and mh.push_problem("me/marco") is None
    monkeypatch.setenv("HF_TOKEN", SECRET)
    assert mh.hub_token() == SECRET and mh.push_problem("me/marco") is None


@pytest.mark.parametrize("repo", ["marco", "me/marco/v1", "me/ma rco", "me/-marco", "", "/marco"])
def test_a_repository_id_that_is_not_owner_slash_name_is_refused(no_saved_login, repo):
    problem = mh.push_problem(repo, token="hf_x")
    assert problem and "'owner/name'" in problem and repr(repo) in problem and "\n" not in problem


def test_offline_the_push_is_refused(no_saved_login, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert "HF_HUB_OFFLINE=1" in mh.push_problem("me/marco", token="hf_x")
    monkeypatch.delenv("HF_HUB_OFFLINE"); monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")
    assert "TRANSFORMERS_OFFLINE=1" in mh.push_problem("me/marco", token="hf_x")
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # huggingface_hub reads HF_HUB_OFFLINE first
    assert mh.push_problem("me/marco", token="hf_x") is None


# --- while training: hub_arguments and the Trainer's own pushes ---

def test_hub_arguments_build_training_arguments_that_push_checkpoints_privately_without_a_token(tmp_path, monkeypatch):
    from transformers import TrainingArguments
    from transformers.trainer_utils import HubStrategy
    monkeypatch.setenv("HF_TOKEN", SECRET)
    kw = mh.hub_arguments("me/marco")
    assert SECRET not in json.dumps(kw) and "hub_token" not in kw
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", **kw)
    assert (args.push_to_hub, args.hub_model_id, args.hub_strategy, args.hub_private_repo, args.hub_token) == \
           (True, "me/marco", HubStrategy.CHECKPOINT, True, None)
    assert TrainingArguments(output_dir=str(tmp_path), report_to="none", **mh.hub_arguments("me/marco", private=False)).hub_private_repo is False


@pytest.fixture
def local_hub(tmp_path, monkeypatch):
    "A LocalHub standing in for the HfApi both the Trainer (`transformers.trainer.hf_api`) and marco_lib.hub use."
    import transformers.trainer
    import transformers.utils.hub
    hub = LocalHub(tmp_path / "hub")
    monkeypatch.setattr(transformers.trainer, "hf_api", lambda: hub)
    monkeypatch.setattr(transformers.utils.hub, "hf_api", lambda: hub)
    return hub


def tiny_trainer(tiny_models, out, max_steps=4):
    "A LoRA Trainer on the tiny Minerva that saves every 2 steps and pushes to me/marco with `hub_arguments`."
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, Trainer, TrainingArguments
    model = AutoModelForCausalLM.from_pretrained(str(tiny_models["minerva"]))
    model = get_peft_model(model, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    rows = [{"input_ids": ids, "labels": ids} for ids in ([5 + i, 9 + i, 13 + i, 17 + i] for i in range(8))]
    args = TrainingArguments(output_dir=str(out), save_steps=2, max_steps=max_steps, per_device_train_batch_size=2, logging_steps=1,
                             report_to="none", use_cpu=True, seed=0, **mh.hub_arguments("me/marco"))
    return Trainer(model=model, args=args, train_dataset=rows)


@pytest.fixture
def pushed_run(tiny_models, tmp_path, local_hub, monkeypatch):
    """A 4-step run that pushed as it saved: (its checkpoints folder, the hub). The Trainer asks for no token itself (the real Hub
    refuses a missing one at `create_repo`); one is set here to prove it is written nowhere."""
    monkeypatch.setenv("HF_TOKEN", SECRET)
    trainer = tiny_trainer(tiny_models, tmp_path / "run" / "checkpoints")
    trainer.train()
    trainer._finish_current_push()
    return tmp_path / "run" / "checkpoints", local_hub


def test_the_trainer_pushes_each_checkpoint_to_last_checkpoint_in_a_private_repository(pushed_run):
    ckpts, hub = pushed_run
    repo = hub.root / "me/marco"
    assert hub.private == {"me/marco": True}
    assert json.loads((repo / "last-checkpoint" / "trainer_state.json").read_text())["global_step"] == 4
    assert files(repo / "last-checkpoint") == files(ckpts / "checkpoint-4")  # the whole checkpoint, optimizer and all
    assert [c["path_in_repo"] for c in hub.commits] == [None, "last-checkpoint"] * 2  # steps 2 and 4: model files, then the checkpoint
    assert (repo / "adapter_model.safetensors").is_file() and not list(repo.glob("checkpoint-*"))


def test_no_token_lands_in_a_pushed_or_saved_file(pushed_run):
    ckpts, hub = pushed_run
    for folder in (ckpts, hub.root):
        leaks = [p for p, data in files(folder).items() if SECRET.encode() in data]
        assert not leaks, leaks


# --- after a lost runtime: fetch_checkpoint ---

def test_a_run_that_lost_its_disk_resumes_from_the_pushed_checkpoint(pushed_run, tiny_models, tmp_path):
    from marco_lib.train import find_checkpoint
    ckpts, hub = pushed_run
    fresh = tmp_path / "fresh-runtime" / "checkpoints"
    got = mh.fetch_checkpoint("me/marco", fresh, api=hub)
    assert got == fresh / "checkpoint-4" and files(got) == files(ckpts / "checkpoint-4")  # byte for byte
    assert [p.name for p in fresh.iterdir()] == ["checkpoint-4"]  # no temporary folder left
    assert find_checkpoint(fresh, log=quiet) == got  # whole and finite by the resume's own checks
    trainer = tiny_trainer(tiny_models, fresh, max_steps=6)
    trainer.train(resume_from_checkpoint=str(got))
    assert trainer.state.global_step == 6 and [h["step"] for h in trainer.state.log_history if "loss" in h] == [1, 2, 3, 4, 5, 6]


def test_the_default_api_is_the_trainers(pushed_run, tmp_path):
    assert mh.fetch_checkpoint("me/marco", tmp_path / "again") == tmp_path / "again" / "checkpoint-4"


def test_nothing_to_fetch_gives_none(local_hub, tmp_path):
    assert mh.fetch_checkpoint("me/unknown", tmp_path / "a", api=local_hub) is None
    local_hub.create_repo("me/marco")  # a repository without last-checkpoint/
    assert mh.fetch_checkpoint("me/marco", tmp_path / "b", api=local_hub) is None
    assert [p.name for p in (tmp_path / "b").iterdir()] == []


def test_offline_the_real_hub_gives_none_without_the_network(tmp_path, monkeypatch):
    import huggingface_hub.constants as hc
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    assert mh.fetch_checkpoint("me/marco", tmp_path / "c") is None


def test_other_errors_propagate_and_a_broken_download_leaves_nothing(pushed_run, tmp_path):
    _, hub = pushed_run

    class Refusing(LocalHub):
        def snapshot_download(self, repo_id, **kw): raise _error(HfHubHTTPError, 401, "Invalid credentials")

    class Torn(LocalHub):
        def snapshot_download(self, repo_id, allow_patterns=None, local_dir=None, **kw):
            (Path(local_dir) / "last-checkpoint").mkdir(parents=True)
            shutil.copy2(hub.root / repo_id / "last-checkpoint" / "trainer_state.json", Path(local_dir) / "last-checkpoint")
            raise OSError("connection reset")

    for api, error in ((Refusing(hub.root), HfHubHTTPError), (Torn(hub.root), OSError)):
        with pytest.raises(error): mh.fetch_checkpoint("me/marco", tmp_path / "d", api=api)
        assert list((tmp_path / "d").iterdir()) == []


def test_a_torn_local_checkpoint_of_the_same_step_is_replaced(pushed_run, tmp_path):
    ckpts, hub = pushed_run
    torn = tmp_path / "e" / "checkpoint-4"
    torn.mkdir(parents=True); (torn / "optimizer.pt").write_bytes(b"torn")
    assert files(mh.fetch_checkpoint("me/marco", tmp_path / "e", api=hub)) == files(ckpts / "checkpoint-4")
    assert [p.name for p in (tmp_path / "e").iterdir()] == ["checkpoint-4"]


# --- at the end: the model card and push_adapter ---

def sample_manifest(config: dict) -> dict:
    "A finished run's manifest, as `train` writes it, with per-level validation losses; the best checkpoint at step 4."
    return {"status": "completed", "config": config, "global_step": 6, "device": {"name": "cpu", "memory_gb": 0, "capability": None},
            "best": {"metric": "eval_loss", "value": 2.25, "step": 4, "checkpoint": "checkpoint-4"},
            "adapter_weights": {"checkpoint": "checkpoint-4", "step": 4}, "last_eval": {"eval_loss": 2.5},
            "eval_history": [{"step": 2, "eval_loss": 2.75, "eval_A1_loss": 2.625, "eval_B2_loss": 2.875},
                             {"step": 4, "eval_loss": 2.25, "eval_A1_loss": 2.125, "eval_B2_loss": 2.375},
                             {"step": 6, "eval_loss": 2.5, "eval_A1_loss": 2.375, "eval_B2_loss": 2.625}]}


@pytest.fixture(scope="module")
def real_card(assembled):
    return json.loads((assembled((0.8, 0.1, 0.1)) / "card.json").read_text(encoding="utf-8"))


@pytest.fixture
def marco_config():
    from marco_lib.config import config_dict, resolve
    return config_dict(resolve("L4", "production", overrides={"learning_rate": 1e-4, "lora_r": 8}))


def test_the_model_card_parses_and_carries_the_run_and_the_datas_numbers(real_card, marco_config):
    from huggingface_hub import ModelCard
    results = {"split": "test", "rows": 9, "levels": [{"level": "A1", "base_loss": 3.5, "tuned_loss": 2.0}, {"level": "B2", "base_loss": 3.25, "tuned_loss": 2.5}]}
    text = mh.model_card(sample_manifest(marco_config), real_card, results, repo="me/marco")
    data = ModelCard(text).data
    assert (data.base_model, data.library_name, data.language, data.pipeline_tag) == ("sapienzanlp/Minerva-3B-base-v1.0", "peft", ["it"], "text-generation")
    assert data.license is None and "Not redistributable" in text  # the samples hold CELI conversations: no licence is claimed
    from marco_lib.dataset import sharing_terms
    without_celi = {**real_card, **sharing_terms({s: n for s, n in real_card["source_totals"].items() if s != "celi"}, real_card["generators"])}
    open_data = ModelCard(mh.model_card(sample_manifest(marco_config), without_celi)).data
    assert (open_data.license, open_data.license_name) == ("other", "qwen-research")  # the fixture answers are Qwen's
    assert {"lora", "italian", "cefr", "education"} <= set(data.tags)
    for l, n in real_card["level_totals"].items():
        assert f"| {l} | " + " | ".join(f"{real_card['levels'][s].get(l, 0):,}" for s in ("train", "validation", "test")) + f" | {n:,} |" in text
    for src, lic in real_card["licences"].items():
        assert lic["title"] in text and lic["name"] in text and f"{real_card['source_totals'][src]:,}" in text
    assert "Qwen Research License" in text and real_card["share_under"] in text
    for row in ("| LoRA rank r | 8 | user |", "| learning rate | 0.0001 | user |", "| precision | bf16 + tf32 | gpu:L4 |", "| seed | 42 | default |"):
        assert row in text, row
    assert "### Validation loss at step 4" in text and "| A1 | 2.1250 |" in text and "| B2 | 2.3750 |" in text and "| all levels | 2.2500 |" in text
    assert "2.6250" not in text and "2.8750" not in text  # other steps' losses are not the shipped weights'
    assert "| A1 | 3.5000 | 2.0000 | -1.5000 |" in text and "| B2 | 3.2500 | 2.5000 | -0.7500 |" in text
    assert 'PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained("sapienzanlp/Minerva-3B-base-v1.0"), "me/marco")' in text
    assert "None" not in text


def test_missing_pieces_are_left_out(real_card, marco_config, tiny_models):
    from huggingface_hub import ModelCard
    bare = {"config": marco_config}  # a run that never evaluated; no evaluation report
    text = mh.model_card(bare, real_card)
    assert "## Results" not in text and "Validation loss" not in text and "None" not in text
    local = {"config": {**marco_config, "model": {**marco_config["model"], "base_model": str(tiny_models["minerva"])}}}
    assert ModelCard(mh.model_card(local, real_card)).data.base_model is None  # a local folder is no Hub id
    assert (ModelCard(mh.model_card({}, {})).data.library_name, "None" in mh.model_card({}, {})) == ("peft", False)
    no_levels = sample_manifest(marco_config)
    no_levels["eval_history"] = [{"step": 4, "eval_loss": 2.25}]  # before per-level losses were logged
    assert "| all levels | 2.2500 |" in mh.model_card(no_levels, real_card) and "| A1 | 2." not in mh.model_card(no_levels, real_card)


def test_push_adapter_writes_the_card_and_uploads_the_folder_privately(local_hub, tmp_path):
    adapter = tmp_path / "adapter"; adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"\x00weights\xff"); (adapter / "adapter_config.json").write_text('{"r": 16}')
    (adapter / "tokenizer.json").write_text("{}")
    url = mh.push_adapter(adapter, "me/marco", "---\nlibrary_name: peft\n---\n# Marco\n")  # the default api: the Trainer's
    assert url == "local://me/marco/commit/1" and local_hub.private == {"me/marco": True}
    assert (adapter / "README.md").read_text() == "---\nlibrary_name: peft\n---\n# Marco\n"
    assert files(local_hub.root / "me/marco") == files(adapter)
    mh.push_adapter(adapter, "me/public-marco", "# Marco\n", private=False, api=local_hub)
    mh.push_adapter(adapter, "me/marco", "# Marco, again\n", private=False, api=local_hub)  # an existing repository keeps its visibility
    assert local_hub.private == {"me/marco": True, "me/public-marco": False}
    assert (local_hub.root / "me/marco/README.md").read_text() == "# Marco, again\n"


# --- marco train --push-to-hub: the whole run against the stand-in ---

@pytest.fixture
def hub(monkeypatch, tmp_path):
    "Every Hub call of the Trainer and of marco_lib.hub goes to one LocalHub; a (dummy) token is set and the Hub is online."
    import transformers.trainer as tt
    local = LocalHub(tmp_path / "hub")
    monkeypatch.setattr(tt, "hf_api", lambda: local)
    monkeypatch.setattr(mh, "_hf_api", lambda: local)
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    return local


TRAIN = dict(eval_steps=2, save_steps=2, logging_steps=1, per_device_train_batch_size=4, gradient_accumulation_steps=2,
             per_device_eval_batch_size=4, num_train_epochs=1)


def train_run(data, tiny_models, out, overrides=TRAIN, **kw):
    from marco_lib.train import train
    return train(data, str(tiny_models["minerva"]), out, gpu="CPU", preset="debug", overrides=overrides, report_to="none", log=quiet, **kw)


def test_a_pushed_run_puts_each_checkpoint_then_the_shipped_adapter_and_its_card_in_a_private_repository(hub, assembled, tiny_models, tmp_path):
    data, out = assembled((0.8, 0.1, 0.1)), tmp_path / "run"
    m = train_run(data, tiny_models, out, push_to_hub="me/marco")
    repo = hub.root / "me" / "marco"
    assert hub.private == {"me/marco": True} and m["hub"]["repo"] == "me/marco" and m["hub"]["private"] is True
    last = json.loads((repo / "last-checkpoint" / "trainer_state.json").read_text())
    assert last["global_step"] == m["global_step"]  # every save was pushed, the newest last
    assert json.loads((repo / "last-checkpoint" / "marco_run.json").read_text())["dataset_fingerprint"] == m["dataset"]["fingerprint"]
    assert files(out / "adapter") == {k: v for k, v in files(repo).items() if "/" not in k and k in files(out / "adapter")}
    assert (repo / "adapter_model.safetensors").read_bytes() == (out / "checkpoints" / m["best"]["checkpoint"] / "adapter_model.safetensors").read_bytes()
    card = (repo / "README.md").read_text()
    levels = {json.loads(l)["level"] for l in (data / "conversations" / "validation.jsonl").read_text().splitlines()}
    best = next(e for e in m["eval_history"] if e["step"] == m["best"]["step"])
    assert all(f"| {l} | {best[f'eval_{l}_loss']:.4f} |" in card for l in levels)  # the shipped weights' loss per level
    assert all(SECRET.encode() not in p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())


def test_a_run_that_lost_its_disk_resumes_from_the_hub_and_ends_as_an_uninterrupted_run(hub, assembled, tiny_models, tmp_path, monkeypatch):
    "A Colab runtime gone without Drive: the rerun finds no checkpoint on disk, fetches the Hub's last one and loses no step."
    import torch
    from safetensors.torch import load_file
    data, over = assembled((0.8, 0.1, 0.1)), {**TRAIN, "load_best_model_at_end": False}
    whole = train_run(data, tiny_models, tmp_path / "whole", over)
    monkeypatch.setenv("MARCO_TEST_FAULT", "crash@7")
    with pytest.raises(RuntimeError, match="crash injected"): train_run(data, tiny_models, tmp_path / "lost", over, push_to_hub="me/marco")
    shutil.rmtree(tmp_path / "lost")
    monkeypatch.delenv("MARCO_TEST_FAULT")
    m = train_run(data, tiny_models, tmp_path / "lost", over, push_to_hub="me/marco")
    assert m["resumed_from"] == ["checkpoint-6"] and m["global_step"] == whole["global_step"]
    a, b = (load_file(str(tmp_path / r / "adapter" / "adapter_model.safetensors")) for r in ("lost", "whole"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_marco_train_without_a_token_or_with_a_bad_name_stops_before_anything_loads(marco, assembled, tmp_path):
    data = assembled((0.8, 0.1, 0.1))
    env = {"HF_TOKEN": "", "HUGGING_FACE_HUB_TOKEN": "", "HF_HOME": str(tmp_path / "empty-home"), "HF_HUB_OFFLINE": "0"}
    for repo, says in (("me/marco", "HF_TOKEN"), ("marco", "owner/name")):
        r = marco("train", "--dataset", data, "--model", "no/such-model", "--out", tmp_path / "run", "--push-to-hub", repo, env=env)
        assert r.returncode == 2 and says in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
