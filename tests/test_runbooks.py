"""The Colab runbooks, run the way a Colab user runs them: Run all, in README order, unchanged.

papermill executes every cell of each README-badged runbook, injecting only the runbook's own parameters (WORK, SCALE,
MAX_STEPS). The real hub ids (`Qwen/Qwen2.5-3B-Instruct`, `sapienzanlp/Minerva-3B-base-v1.0`) are served offline from a
hub cache in which this test has placed small local models; the corpora are generated here, never the bundled samples;
there is no `google.colab` module. What must be left under WORK is checked file by file."""
import hashlib
import json
import os
import re
import shutil
from pathlib import Path

import pytest

from unseen_corpora import write_unseen_corpora

pm = pytest.importorskip("papermill")
ROOT = Path(__file__).resolve().parents[1]
SCALE, MAX_STEPS = 0.005, 4
PLANTED = "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"


def runbooks() -> list:
    "The runbooks the README badges, in the README's order."
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    return [ROOT / p for p in re.findall(r"colab\.research\.google\.com/github/[^/]+/[^/]+/blob/main/(notebooks/colab/[\w.-]+\.ipynb)", readme)]


def put_in_hub_cache(cache: Path, repo_id: str, model_dir: Path) -> None:
    "Lay a model folder out as the hub cache does: refs/main holds a commit hash, snapshots/<hash>/ the files."
    commit = hashlib.sha1(repo_id.encode()).hexdigest()
    root = cache / f"models--{repo_id.replace('/', '--')}"
    shutil.copytree(model_dir, root / "snapshots" / commit)
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)


@pytest.fixture(scope="module")
def colab_like(tmp_path_factory, tiny_models):
    "A hub cache with the tiny models under the real ids, unseen corpora, and an environment like a fresh Colab runtime's."
    from marco_lib.corpora import collect_questions
    from marco_lib.demo import train_demo_generator
    root = tmp_path_factory.mktemp("colab")
    cache = root / "hub"
    # the generator must write some Italian the audit accepts: the demo's small trained generator, briefly trained
    paths = write_unseen_corpora(root / "corpora", seed=3)
    seen, _ = collect_questions(**paths, seed=0)
    generator = train_demo_generator(root / "generator", seen, steps=150, log=lambda *_: None)
    put_in_hub_cache(cache, "Qwen/Qwen2.5-3B-Instruct", generator)
    put_in_hub_cache(cache, "sapienzanlp/Minerva-3B-base-v1.0", tiny_models["minerva"])
    data = root / "data"  # MARCO_DATA_DIR: the files a user would have on Drive, in the layout the runbooks download to
    shutil.copytree(root / "corpora", data)
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "MARCO_DATA_DIR": str(data)}
    return {"root": root, "env": env, "data": data}


def test_readme_badges_the_runbooks_in_run_order():
    names = [p.name for p in runbooks()]
    assert names == ["1_questions_answers.ipynb", "2_dataset.ipynb", "3_train.ipynb", "4_evaluate_chat.ipynb"], names
    for nb in runbooks():
        params = pm.inspect_notebook(str(nb))
        assert set(params) <= {"WORK", "SCALE", "MAX_STEPS", "PUSH_TO_HUB"} and "WORK" in params, (nb.name, params)
        text = nb.read_text(encoding="utf-8")
        assert "#| gpu" not in text and "test_eq" not in text and "tiny" not in text, f"{nb.name}: Run all must do only the real job"


def test_run_all_does_the_real_job_on_unseen_corpora(colab_like, tmp_path, monkeypatch):
    for k, v in colab_like["env"].items(): monkeypatch.setenv(k, v)
    for k in ("WANDB_MODE", "WANDB_API_KEY"): monkeypatch.delenv(k, raising=False)  # a fresh runtime: no tracker set up
    monkeypatch.setenv("HF_TOKEN", PLANTED)  # as `setup` would from the Colab secret: it must never reach a file
    work = tmp_path / "work"
    given = {"WORK": str(work), "SCALE": SCALE, "MAX_STEPS": MAX_STEPS}
    for nb in runbooks():
        wanted = pm.inspect_notebook(str(nb))
        pm.execute_notebook(str(nb), str(tmp_path / nb.name), parameters={k: v for k, v in given.items() if k in wanted},
                            cwd=str(tmp_path), kernel_name="python3", progress_bar=False)
    from marco_lib.generate import load_answers, plan_generation, scaled_targets
    from marco_lib.corpora import read_questions
    questions = read_questions(work / "questions.jsonl")
    assert {q.source for q in questions} == {"cima", "tatoeba", "merlin"}
    _, plan = plan_generation(questions, scaled_targets(None, SCALE))
    needed = sum(r["needed"] for r in plan.values())
    answers, torn = load_answers(work / "answers.jsonl")
    rejected, _ = load_answers(work / "answers.rejected.jsonl")
    assert not torn and 0 < len(answers) and len(answers) + len(rejected) <= 3 * needed, (len(answers), len(rejected), needed)
    assert len({r["question_id"] for r in answers}) == len(answers)  # one answer per question
    card = json.loads((work / "data" / "card.json").read_text())
    assert card["generated"] > 0 and card["authentic"] > 0
    assert set(card["licences"]) == set(card["source_totals"]) == {"cima", "tatoeba", "merlin"}
    assert "CC BY-SA 4.0" in card["share_under"] and "Qwen" in (work / "data" / "README.md").read_text()
    manifest = json.loads((work / "run" / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["global_step"] == MAX_STEPS
    assert manifest["config"]["model"]["base_model"] == "sapienzanlp/Minerva-3B-base-v1.0"
    assert manifest["best"]["step"] == MAX_STEPS and manifest["tracking"] == "offline"
    assert (work / "run" / "adapter" / "adapter_model.safetensors").exists()
    assert (work / "train_config.yaml").exists() and (work / "levels.json").exists()
    report = json.loads((work / "run" / "eval" / "report.json").read_text())
    assert {r["level"] for r in report["levels"]} == {l for l, n in card["levels"]["test"].items() if n} != set()  # every level of the test split
    assert (work / "run" / "eval" / "report.png").stat().st_size > 0
    val = {l for l, n in card["levels"]["validation"].items() if n}
    assert all({f"eval_{l}_loss" for l in val} <= set(e) for e in manifest["eval_history"])  # every level, every evaluation
    samples = [json.loads(l) for l in (work / "run" / "samples.jsonl").read_text().splitlines()]
    assert {r["level"] for r in samples} == val and {r["step"] for r in samples} == {e["step"] for e in manifest["eval_history"]}
    assert [f["level"] for f in report["fidelity"]] and all("base" in f and "tuned" in f for f in report["fidelity"])
    assert (work / "estimator.json").exists() and not report["estimator"]["source"].startswith("default")  # runbook 1's estimator, used
    for nb in runbooks():  # no cell failed quietly
        assert '"output_type": "error"' not in (tmp_path / nb.name).read_text()
    leaks = [p for p in tmp_path.rglob("*") if p.is_file() and PLANTED.encode() in p.read_bytes()]
    assert not leaks, leaks  # not in a notebook output, a config, a manifest, a log or the wandb run


def test_a_gated_model_stops_run_all_with_what_to_do(colab_like, tmp_path, monkeypatch):
    "Minerva missing from the cache (as for a user who has not accepted its terms): one message, no hub traceback."
    for k, v in colab_like["env"].items(): monkeypatch.setenv(k, v)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    nb = next(p for p in runbooks() if p.name == "2_dataset.ipynb")
    with pytest.raises(pm.PapermillExecutionError) as e:
        pm.execute_notebook(str(nb), str(tmp_path / nb.name), parameters={"WORK": str(tmp_path / "w"), "SCALE": SCALE},
                            cwd=str(tmp_path), kernel_name="python3", progress_bar=False)
    assert e.value.ename == "Stop" and "sapienzanlp/Minerva-3B-base-v1.0" in e.value.evalue, (e.value.ename, e.value.evalue)


def test_readme_times_are_the_estimates_the_code_gives():
    from marco_lib.colab import duration, stage_seconds
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    rows = re.findall(r"^\| (\d) \| \[!\[Open In Colab\].*?\| ([^|]+) \| ([^|]+) \| ([^|]+) \|$", readme, re.M)
    assert len(rows) == 4
    for (step, *times), stage in zip(rows, ("answers", "dataset", "train", "evaluate")):
        assert [t.strip() for t in times] == [duration(stage_seconds(stage, g)) for g in ("T4", "L4", "A100")], (step, times)
